-- The cluster's compositions of the scheduler, without ZooKeeper: the
-- leader (the queue executor), the worker (in-process executor, no
-- records, each try's end reported) and the seam they share, over the
-- embedded SQLite store, which speaks the same znode API.
-- spec/cluster_test.sh runs the same code against real ZooKeeper servers.
local flow = require "zkflow"
local core = require "zkflow.core"
local cluster = require "zkflow.cluster"
local sched = require "zkflow.scheduler"
local state = require "zkflow.state"
local queue_executor = require "zkflow.executors.queue"
local H = dofile("spec/fixtures/sched/helpers.lua")

local LD = 1767225600   -- 2026-01-01

local function two_step()
  return flow.dag {
    id = "cd",
    tasks = function(t)
      local a = t.lua { id = "a", run = function() return 41 end }
      t.lua { id = "b", after = { a }, run = function(ctx) return ctx.xcom.pull("a") + 1 end }
    end,
  }
end

-- A store in a fresh folder: store, state accessor, folder.
local function fresh_store()
  local dir = H.tmpdir()
  local store = assert(core.store(dir .. "/zkflow.db", { sync = "off" }))
  return store, state.new(store, "/zkflow"), dir
end

-- The queue nodes' records, oldest first.
local function queued(st)
  local out = {}
  local dir = st:path("queue", "default")
  local names = st.store:children(dir) or {}
  table.sort(names)
  for _, n in ipairs(names) do out[#out + 1] = st:read(dir .. "/" .. n) end
  return out
end

-- A leader's scheduler as cluster/leader.lua composes it, without the election.
local function leader(store, dags, opts)
  local q = queue_executor.new { store = store, root = "/zkflow" }
  local o = { store = store, dags = dags, executor = q, register = false, id = "s1",
              schedule = false }
  for k, v in pairs(opts or {}) do o[k] = v end
  return sched.new(o), q
end

describe("a cluster on the embedded store", function()
  it("runs a run's tries on a worker and applies their results", function()
    local store, st, dir = fresh_store()
    core.mkdirs(dir .. "/dags")
    local f = assert(io.open(dir .. "/dags/cd.lua", "w"))
    f:write([[
local flow = require "zkflow"
return flow.dag { id = "cd", tasks = function(t)
  local a = t.lua { id = "a", run = function() return 41 end }
  t.lua { id = "b", after = { a }, run = function(ctx) return ctx.xcom.pull("a") + 1 end }
end }
]])
    f:close()
    flow.run(function()
      local h = cluster.scheduler { store = store, dags_dir = dir .. "/dags", id = "s1",
                                    log_dir = dir .. "/logs", async_store = false }
      local w = cluster.worker { store = store, dags_dir = dir .. "/dags", id = "w1",
                                 log_dir = dir .. "/logs" }
      assert.is_true(H.wait_until(function() return h.s ~= nil end))
      local run = h.s:create_run(h.s:dag("cd"), { logical_date = LD })
      h.s:process()
      local ok = H.wait_until(function() return run.state == "success" or run.state == "failed" end)
      w:stop()
      h:stop()
      assert.is_true(ok)
      assert.equal("success", run.state)
      local b = st:get_ti("cd", run.run_id, "b")
      assert.equal("success", b.state)
      assert.equal(42, b.xcom)
      assert.equal("w1", b.worker)
    end)
    store:close()
  end)
end)

describe("the leader's composition", function()
  local store, st
  before_each(function() store, st = fresh_store() end)
  after_each(function() store:close() end)

  it("sends a ready try to its queue and applies a worker's result", function()
    flow.run(function()
      local d = two_step()
      local s, q = leader(store, { cd = d })
      s:start()
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      local a = run.tis.a
      assert.equal("queued", a.state)
      assert.equal("queued", st:get_ti("cd", run.run_id, "a").state)
      local recs = queued(st)
      assert.equal(1, #recs)
      local key = queue_executor.ti_key("cd", run.run_id, "a", 1)
      assert.same({ key = key, dag_id = "cd", run_id = run.run_id, task_id = "a", try_number = 1,
                    queue = "default", priority_weight = d.tasks.a.priority_weight,
                    version = d.source_hash or core.null },
                  recs[1])
      -- A worker claims it, then reports its end through /results.
      q:started(key, { worker = "w9", started = core.now() })
      assert.equal("running", a.state)
      assert.equal("w9", a.worker)
      local rpath = st:path("results", key)
      assert(store:create(rpath, "{}", { parents = true }))
      assert.is_true(q:result(key, { ok = true, result = 41, try_number = 1, worker = "w9" }, rpath))
      assert.equal("success", a.state)
      assert.equal(41, a.xcom)
      assert.is_nil(store:exists(rpath))
      assert.equal("success", st:get_ti("cd", run.run_id, "a").state)
      -- b is next in the queue.
      assert.equal("queued", run.tis.b.state)
      assert.equal(2, #queued(st))
      s:stop()
    end)
  end)

  it("counts the tries in its queue against parallelism", function()
    flow.run(function()
      local d = flow.dag { id = "wide", tasks = function(t)
        for i = 1, 3 do t.lua { id = "t" .. i, run = function() end } end
      end }
      local s = leader(store, { wide = d }, { parallelism = 2 })
      s:start()
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      local n = 0
      for _, ti in pairs(run.tis) do if ti.state == "queued" then n = n + 1 end end
      assert.equal(2, n)
      assert.equal(2, #queued(st))
      s:stop()
    end)
  end)

  it("queues a lost try again without spending a retry", function()
    flow.run(function()
      local d = two_step()
      local s, q = leader(store, { cd = d })
      s:start()
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      local a = run.tis.a
      local max_tries = a.max_tries
      q:lost(queue_executor.ti_key("cd", run.run_id, "a", 1), "worker w9 went away")
      assert.equal("queued", a.state)
      assert.equal(2, a.try_number)
      assert.equal(max_tries + 1, a.max_tries)
      assert.equal(1, a.lost)
      local recs = queued(st)
      assert.equal(2, #recs)
      assert.equal(2, recs[2].try_number)
      assert.equal(queue_executor.ti_key("cd", run.run_id, "a", 2), recs[2].key)
      s:stop()
    end)
  end)

  it("writes nothing it had pending once it steps down", function()
    flow.run(function()
      local d = two_step()
      local s = leader(store, { cd = d })
      s:start()
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      local before = st:get_ti("cd", run.run_id, "a")
      run.tis.a.state = "running"
      s:mark(run.tis.a)
      s:store_op({ op = "create", path = "/zkflow/stray", data = "" })
      s:reset_pending()
      s:mark(run.tis.a)
      s:stop()
      assert.same(before, st:get_ti("cd", run.run_id, "a"))
      assert.is_nil(store:exists("/zkflow/stray"))
    end)
  end)

  it("settles a try it adopted in flight from the last leader", function()
    flow.run(function()
      local d = two_step()
      local s1 = leader(store, { cd = d })
      s1:start()
      local run = s1:create_run(d, { logical_date = LD })
      s1:process()
      s1:reset_pending()
      s1:stop()
      -- The next leader reads the run back; a is queued, counted, pending.
      local s2, q2 = leader(store, { cd = d })
      s2:start()
      local pending = q2:adopted()
      assert.equal(1, #pending)
      local key = queue_executor.ti_key("cd", run.run_id, "a", 1)
      assert.equal(key, pending[1].key)
      assert.equal(1, s2.running)
      assert.is_true(q2:result(key, { ok = true, result = 41, try_number = 1 }))
      assert.equal("success", st:get_ti("cd", run.run_id, "a").state)
      s2:stop()
    end)
  end)
end)

describe("the worker's composition", function()
  it("runs a try and reports it without writing records", function()
    local store, st, dir = fresh_store()
    core.mkdirs(dir .. "/dags")
    local f = assert(io.open(dir .. "/dags/cd.lua", "w"))
    f:write([[
local flow = require "zkflow"
return flow.dag { id = "cd", tasks = function(t)
  t.lua { id = "a", run = function() return 41 end }
end }
]])
    f:close()
    flow.run(function()
      local d = require("zkflow.dsl.loader").scan(dir .. "/dags").dags.cd
      local s = leader(store, { cd = d })
      s:start()
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      local key = queue_executor.ti_key("cd", run.run_id, "a", 1)
      local before = st:get_ti("cd", run.run_id, "a")
      local w = cluster.worker { store = store, dags_dir = dir .. "/dags", id = "w1",
                                 log_dir = dir .. "/logs", hot_reload = false }
      local rpath = st:path("results", key)
      local ok = H.wait_until(function() return store:exists(rpath) ~= nil end)
      w:stop()
      s:stop()
      assert.is_true(ok)
      local res = st:read(rpath)
      assert.is_true(res.ok)
      assert.equal(41, res.result)
      assert.equal("w1", res.worker)
      assert.equal(1, res.try_number)
      -- The leader owns the records: the worker wrote none.
      assert.same(before, st:get_ti("cd", run.run_id, "a"))
      assert.equal("queued", st:get_ti("cd", run.run_id, "a").state)
      assert.is_nil(store:exists(st:path("claims", key)))
    end)
    store:close()
  end)
end)

describe("the executor seam", function()
  it("hands a ready try to the executor with its slots taken", function()
    local store = fresh_store()
    local started = {}
    local fake = { bind = function(self, s) self.s = s end,
                   adopt = function() return false end,
                   abort = function() end }
    function fake.start(self, ti)
      ti.try_number = ti.try_number + 1
      ti.state = "running"
      ti.attempt = {}
      self.s:mark(ti)
      started[#started + 1] = { id = ti.task_id, running = self.s.running }
    end
    flow.run(function()
      local d = two_step()
      local s = sched.new { store = store, dags = { cd = d }, schedule = false, executor = fake }
      assert.equal(s, fake.s)
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      assert.same({ { id = "a", running = 1 } }, started)
      s:try_ended(run.tis.a, true, 41)
      assert.equal("success", run.tis.a.state)
      assert.equal(1, s.running)   -- b's, a's given back
      assert.same({ id = "b", running = 1 }, started[2])
      s:try_ended(run.tis.b, true, 42)
      assert.equal("success", run.state)
      s:stop()
    end)
    store:close()
  end)

  it("hands a try's end to on_try_end instead of applying it", function()
    local store = fresh_store()
    local ends = {}
    flow.run(function()
      local d = two_step()
      local s = sched.new { store = store, dags = { cd = d }, schedule = false, records = false,
                            on_try_end = function(ti, ok, res)
                              ends[#ends + 1] = { ti.task_id, ok, res }
                            end }
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      assert.is_true(H.wait_until(function() return #ends > 0 end))
      assert.same({ { "a", true, 41 } }, ends)
      assert.equal("running", run.tis.a.state)
      assert.equal(0, s.running)
      s:stop()
    end)
    -- records = false: the run was never written.
    assert.is_nil(store:exists("/zkflow/runs/cd"))
    store:close()
  end)

  it("reads the time from its clock", function()
    local store, st = fresh_store()
    local clock = { now = function() return 1800000000.5 end, mono = core.mono }
    flow.run(function()
      local d = two_step()
      local s = sched.new { store = store, dags = { cd = d }, schedule = false, clock = clock }
      local run = s:create_run(d, { logical_date = LD })
      s:process()
      assert.same({ "success" }, s:wait_runs({ run }))
      assert.equal(1800000000.5, run.tis.a.start_date)
      assert.equal(1800000000.5, H.t(st:get_ti("cd", run.run_id, "b").end_date))
      s:stop()
    end)
    store:close()
  end)
end)
