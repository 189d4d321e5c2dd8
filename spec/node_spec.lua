-- zkflow.node: the composition root and the one owner of a store.
local flow = require "zkflow"
local core = require "zkflow.core"
local node = require "zkflow.node"
local H = dofile("spec/fixtures/sched/helpers.lua")

local DAG = [[
local flow = require "zkflow"
return flow.dag { id = "n", tasks = function(t) t.empty { id = "e" } end }
]]

-- Runs body(dir, store, db) on the loop with a DAG folder and a store.
local function with_store(body)
  flow.run(function()
    local dir = H.tmpdir()
    assert(core.mkdirs(dir .. "/dags"))
    local f = assert(io.open(dir .. "/dags/n.lua", "w"))
    f:write(DAG)
    f:close()
    local db = dir .. "/zkflow.db"
    local store = core.store(db)
    local ok, err = pcall(body, dir, store, db)
    store:close()
    os.execute("rm -rf '" .. dir .. "'")
    if not ok then error(err, 0) end
  end)
end

local function within(limit, pred)
  local t0 = core.mono()
  while core.mono() - t0 < limit do
    if pred() then return true end
    flow.sleep(0.02)
  end
  return false
end

describe("node.own", function()
  it("gives the store to one owner at a time and names it", function()
    with_store(function(_, _, db)
      local a = assert(node.own(db))
      local b, err, busy = node.own(db)
      assert.is_nil(b)
      assert.is_true(busy)
      assert.truthy(err:find("is scheduled by process " .. core.getpid(), 1, true))
      a:close()
      local c = assert(node.own(db))
      c:close()
    end)
  end)
end)

describe("node.start", function()
  local function opts(dir, store, db, extra)
    local o = { store = store, db = db, dags_dir = dir .. "/dags",
                log_dir = dir .. "/logs", scheduler = true, api = true }
    for k, v in pairs(extra or {}) do o[k] = v end
    return o
  end

  it("builds the scheduler, the API and the DAG provider", function()
    with_store(function(dir, store, db)
      local n = assert(node.start(opts(dir, store, db)))
      assert.is_truthy(n.scheduler)
      assert.is_truthy(n.dags().dags.n)
      local status = n.api:handle({ method = "GET", path = "/api/v1/health" })
      assert.equal(200, status)
      n:stop()
    end)
  end)

  it("refuses an owned store when busy is 'fail'", function()
    with_store(function(dir, store, db)
      local lock = assert(node.own(db))
      local n, err = node.start(opts(dir, store, db, { busy = "fail" }))
      assert.is_nil(n)
      assert.truthy(err:find("scheduler.lock", 1, true))
      lock:close()
    end)
  end)

  it("stands by on an owned store and takes it over when the owner ends", function()
    with_store(function(dir, store, db)
      local lock = assert(node.own(db))
      local n = assert(node.start(opts(dir, store, db, { busy = "standby" })))
      assert.is_nil(n.scheduler)
      assert.is_truthy(n.dags().dags.n)   -- the API lists the folder meanwhile
      lock:close()
      assert.is_true(within(3, function() return n.scheduler ~= nil end))
      n:stop()
    end)
  end)

  it("applies /config to its scheduler before it starts and live", function()
    with_store(function(dir, store, db)
      local config = require "zkflow.config"
      store:create(config.path("/zkflow"), core.json_encode({ parallelism = 3 }),
                   { parents = true })
      local n = assert(node.start(opts(dir, store, db)))
      assert.equal(3, n.scheduler.parallelism)
      store:set(config.path("/zkflow"), core.json_encode({ parallelism = 5, pools = { p = 2 } }))
      assert.is_true(within(2, function() return n.scheduler.parallelism == 5 end))
      assert.equal(2, n.scheduler:pool("p").slots)
      n:stop()
    end)
  end)
end)
