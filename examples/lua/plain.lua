-- zkflow from a plain lua5.4 script: no scheduler, no `zkflow` command.
--
--   LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;" \
--     lua5.4 examples/lua/plain.lua
--
-- Three things the library does outside the engine: coroutines on its
-- event loop (flow.run, flow.spawn, flow.sleep), one DAG run to its end
-- (flow.test), and the ZooKeeper client on the embedded store
-- (zk.connect("sqlite:FILE")).  Prints each step; exits 0 when all
-- worked, 1 otherwise.  Everything it writes goes under /tmp.

local flow = require "zkflow"
local zk = require "zkflow.zk"
-- Only for a monotonic clock to time the sleeps with; os.time counts
-- whole seconds.
local mono = require("zkflow.core").mono

local failures = 0

local function check(what, cond, detail)
  if cond then
    print("ok   " .. what)
  else
    failures = failures + 1
    print("FAIL " .. what .. (detail and (": " .. tostring(detail)) or ""))
  end
end

-- 1. The loop.  flow.run drives it until its function returns; the
-- coroutines flow.spawn starts share it, so three sleeps of 0.3 s end
-- together after about 0.3 s, not 0.9 s, and in the order of their length.
local order = {}
local t0 = mono()
flow.run(function()
  local left = 3
  for i, s in ipairs { 0.3, 0.1, 0.2 } do
    flow.spawn(function()
      flow.sleep(s)
      order[#order + 1] = i
      left = left - 1
    end)
  end
  -- flow.run returns when this function does, not when the others do:
  -- wait for them here.
  while left > 0 do flow.sleep(0.05) end
end)
check("flow.spawn: the sleeps end shortest first",
      table.concat(order, ",") == "2,3,1", table.concat(order, ","))
local took = mono() - t0
check("flow.spawn: they sleep at the same time", took < 0.6,
      string.format("%.2f s", took))

-- 2. One DAG run, defined inline.  flow.test returns the table that
-- `zkflow dags test --json` prints; the store is a temporary one.
local dag = flow.dag {
  id         = "plain",
  start_date = "2026-01-01",
  tasks = function(t)
    local hello = t.shell {
      id = "hello", cmd = "echo hello from {{ dag.dag_id }} on {{ ds }}",
      do_xcom_push = true,
    }
    local shout = t.lua {
      id = "shout",
      run = function(ctx) return ctx.xcom.pull("hello"):upper() end,
    }
    local _ = hello >> shout
  end,
}
local res = flow.test(dag, { date = "2026-01-01" })
print("flow.test: run " .. tostring(res.state) .. ", shout returned "
      .. tostring(res.tasks.shout.xcom))
check("flow.test: the run succeeded", res.state == "success", res.state)
check("flow.test: the Lua task pulled the shell task's XCom",
      res.tasks.shout.xcom == "HELLO FROM PLAIN ON 2026-01-01",
      res.tasks.shout.xcom)

-- 3. The ZooKeeper client on the embedded store: the same calls as on a
-- ZooKeeper ensemble, against a SQLite file.
local db = os.tmpname()
local ok, err = pcall(function()
  local c = zk.connect("sqlite:" .. db)
  c:create("/plain/config", "v1", { parents = true })
  c:set("/plain/config", "v2")
  local data, stat = c:get("/plain/config")
  print("zk: /plain/config = " .. data .. " (version " .. stat.version .. ")")
  check("zk: create, set and get a znode", data == "v2" and stat.version == 1)
  c:close()
end)
check("zk: no error", ok, err)
os.remove(db)
os.remove(db .. "-wal")
os.remove(db .. "-shm")

print(failures == 0 and "all ok" or (failures .. " failed"))
os.exit(failures == 0 and 0 or 1)
