-- bench/zk_bench.lua HOSTS N [WORKERS]: zkflow's store over ZooKeeper
-- (core.store_zk), N creates then N sets of 100-byte nodes.  Pipelined:
-- WORKERS coroutines (default 256) each wait on their own request, so up
-- to WORKERS requests are in flight, the way a scheduler's many tasks
-- use one session; serial: one coroutine, one request at a time.
-- Prints "RESULT lua_create=OPS lua_set=OPS lua_serial_create=OPS
-- lua_serial_set=OPS".
local core = require "zkflow.core"
local flow = require "zkflow"
local async = require "zkflow.async"

local hosts, n, workers = arg[1], tonumber(arg[2] or 10000), tonumber(arg[3] or 256)
local value = string.rep("v", 100)

local function timed(st, base, op, parallel)
  local t0 = core.mono()
  local next_i, left, errors = 0, parallel, 0
  async.wait(function(resume)
    for _ = 1, parallel do
      flow.spawn(function()
        while true do
          next_i = next_i + 1
          local i = next_i
          if i > n then break end
          local p = ("%s/n%07d"):format(base, i)
          local ok
          if op == "create" then ok = st:create(p, value) else ok = st:set(p, value) end
          if not ok then errors = errors + 1 end
        end
        left = left - 1
        if left == 0 then resume() end
      end)
    end
  end)
  if errors > 0 then error(("%d %s requests failed"):format(errors, op)) end
  return n / (core.mono() - t0)
end

local res = {}
flow.run(function()
  local st = assert(core.store_zk(hosts, { timeout = 10 }))
  for _, mode in ipairs({ { "lua", workers }, { "lua_serial", 1 } }) do
    local base = ("/bench-lua-%d-%s"):format(core.getpid and core.getpid() or 0, mode[1])
    assert(st:create(base, ""))
    res[mode[1] .. "_create"] = timed(st, base, "create", mode[2])
    res[mode[1] .. "_set"] = timed(st, base, "set", mode[2])
    assert(st:delete(base, -1, { recursive = true }))
  end
  st:close()
end)
print(("RESULT lua_create=%.0f lua_set=%.0f lua_serial_create=%.0f lua_serial_set=%.0f n=%d workers=%d"):format(
  res.lua_create, res.lua_set, res.lua_serial_create, res.lua_serial_set, n, workers))
