-- The scheduler's counters of runs and task instances by state, and
-- /metrics answered from them (History that scales, item 3): no read of
-- the runs, whatever the store holds.
local flow = require "zkflow"
local core = require "zkflow.core"
local api = require "zkflow.api"
local H = dofile("spec/fixtures/sched/helpers.lua")

local function dag()
  return flow.dag {
    id = "counted",
    tasks = function(t)
      local a = H.ok(t, "a")
      local b = H.bad(t, "b")
      local _ = a >> b
    end,
  }
end

local function metric(body, name, st)
  return tonumber(body:match(name .. '{state="' .. st .. '"} (%d+)'))
end

describe("scheduler counters", function()
  it("count runs and task instances by state as the scheduler writes them", function()
    local d = dag()
    flow.run(function()
      local s, store = H.scheduler({ d }, { schedule = false })
      s:start()
      local r1 = s:create_run(d, { logical_date = 1767225600 })
      local r2 = s:create_run(d, { logical_date = 1767225601 })
      s:process()
      assert.same({ "failed", "failed" }, s:wait_runs({ r1, r2 }))
      s:flush(true)
      local c = s:counters()
      assert.equal(2, c.runs.failed)
      assert.equal(0, c.runs.running or 0)
      assert.equal(0, c.runs.queued or 0)
      assert.equal(2, c.task_instances.success)
      assert.equal(2, c.task_instances.failed)
      assert.equal(0, c.task_instances.running or 0)
      assert.equal(2, c.dags.counted.runs.failed)
      assert.equal(2, c.dags.counted.task_instances.success)
      s:stop()
      store:close()
    end)
  end)

  it("are saved in the store and the next scheduler goes on from them", function()
    local d = dag()
    local dir = H.tmpdir()
    flow.run(function()
      for round = 1, 2 do
        local store = assert(core.store(dir .. "/z.db"))
        local s = require("zkflow.scheduler").new {
          store = store, root = "/zkflow", dags = { counted = d }, schedule = true,
          register = false, hot_reload = false, log_dir = dir .. "/logs",
        }
        s:start()
        local run = s:create_run(d, { logical_date = 1767225600 + round })
        s:process()
        assert.same({ "failed" }, s:wait_runs({ run }))
        s:stop()
        local saved = core.json_decode(store:get("/zkflow/stats/scheduler"))
        assert.equal(round, saved.runs.failed)
        assert.equal(round, saved.task_instances.success)
        assert.equal(round, saved.dags.counted.runs.failed)
        store:close()
      end
    end)
    os.execute("rm -rf '" .. dir .. "'")
  end)

  it("answer /metrics without reading a run or a task instance", function()
    local d = dag()
    flow.run(function()
      local s, store = H.scheduler({ d }, { schedule = false })
      s:start()
      local run = s:create_run(d, { logical_date = 1767225600 })
      s:process()
      s:wait_runs({ run })
      s:flush(true)
      local h = api.new { store = store, root = "/zkflow",
                          counters = function() return s:counters() end }
      local S = getmetatable(h.S).__index
      local reads = { list_runs = spy.on(S, "list_runs"), list_tis = spy.on(S, "list_tis"),
                      get_run = spy.on(S, "get_run"), run_ids = spy.on(S, "run_ids") }
      local status, _, body = h:handle { method = "GET", path = "/metrics", query = {} }
      for name, sp in pairs(reads) do
        assert.spy(sp).was_not_called(name)
        sp:revert()
      end
      assert.equal(200, status)
      assert.equal(1, metric(body, "zkflow_runs", "failed"))
      assert.equal(0, metric(body, "zkflow_runs", "success"))
      assert.equal(1, metric(body, "zkflow_task_instances", "success"))
      assert.equal(1, metric(body, "zkflow_task_instances", "failed"))
      assert.matches('zkflow_dag_runs{dag_id="counted",state="failed"} 1', body, 1, true)
      assert.matches('zkflow_dag_task_instances{dag_id="counted",state="success"} 1', body, 1, true)
      s:stop()
      store:close()
    end)
  end)
end)
