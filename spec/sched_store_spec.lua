-- What the scheduler writes to the store, the task states as other
-- processes see them, and a scheduler that resumes runs from the store.
local flow = require "zkflow"
local core = require "zkflow.core"
local H = dofile("spec/fixtures/sched/helpers.lua")

local RUN = "manual__2026-01-01T00:00:00+00:00"

describe("states in the store", function()
  it("shows running, scheduled, up_for_retry and the final states while a run goes on", function()
    flow.run(function()
      local d = flow.dag {
        id = "states", max_active_tasks = 1,
        tasks = function(t)
          local a = t.lua { id = "a", priority_weight = 10, weight_rule = "absolute",
                            run = function() flow.sleep(0.2) end }
          t.lua { id = "b", weight_rule = "absolute", retries = 1, retry_delay = 0.3,
                  run = function(ctx) if ctx.ti.try_number == 1 then error("once") end end }
          H.ok(t, "c", { after = { a } })
        end,
      }
      local s, store, st = H.scheduler({ d }, { schedule = false })
      s:start()
      local run = s:create_run(d, { logical_date = 1767225600, run_id = RUN })
      s:process()
      store:flush()
      local function state(id) local r = st:get_ti("states", RUN, id); return r and r.state or "none" end
      assert.equal("running", state("a"))
      assert.equal("scheduled", state("b"))
      assert.equal("none", state("c"))
      assert.equal("running", st:get_run("states", RUN).state)
      assert.is_true(H.wait_until(function() store:flush(); return state("b") == "up_for_retry" end, 3))
      local rec = st:get_ti("states", RUN, "b")
      assert.is_true(rec.next_try_at > core.now())
      assert.same({ "success" }, s:wait_runs({ run }))
      s:stop()
      for _, id in ipairs({ "a", "b", "c" }) do assert.equal("success", state(id)) end
      local r = st:get_run("states", RUN)
      assert.equal("success", r.state)
      assert.is_true(H.t(r.end_date) >= H.t(r.start_date))
      local b = st:get_ti("states", RUN, "b")
      assert.equal(2, b.try_number)
      assert.is_string(b.log)
      store:close()
    end)
  end)
end)

describe("resuming runs from the store", function()
  local function seed(st, tis)
    st:put_run { dag_id = "resume", run_id = RUN, state = "running", run_type = "manual",
                 logical_date = "2026-01-01T00:00:00+00:00",
                 data_interval_start = "2026-01-01T00:00:00+00:00",
                 data_interval_end = "2026-01-01T00:00:00+00:00", conf = {} }
    for id, rec in pairs(tis) do
      rec.task_id = id
      st:put_ti("resume", RUN, rec)
    end
  end

  it("does not re-run finished tasks, re-runs the one in flight, marks removed tasks", function()
    local ran = {}
    local d = flow.dag {
      id = "resume",
      tasks = function(t)
        local a = t.lua { id = "a", run = function() ran[#ran + 1] = "a" end }
        local b = t.lua { id = "b", after = { a }, run = function() ran[#ran + 1] = "b" end }
        t.lua { id = "c", after = { b }, run = function(ctx)
          ran[#ran + 1] = "c"
          return ctx.xcom.pull("a")
        end }
      end,
    }
    flow.run(function()
      local s, store, st = H.scheduler({ d }, { schedule = false })
      seed(st, {
        a = { state = "success", try_number = 1, max_tries = 0, xcom = "from a" },
        b = { state = "running", try_number = 1, max_tries = 0 },
        gone = { state = "success", try_number = 1, max_tries = 0 },
      })
      store:flush()
      s:start()
      assert.same({ "success" }, s:wait_runs({ { "resume", RUN } }))
      s:stop()
      assert.same({ "b", "c" }, ran)
      assert.equal(1, st:get_ti("resume", RUN, "a").try_number)
      assert.equal(2, st:get_ti("resume", RUN, "b").try_number)
      assert.equal("from a", st:get_ti("resume", RUN, "c").xcom)
      assert.equal("removed", st:get_ti("resume", RUN, "gone").state)
      store:close()
    end)
  end)

  it("keeps a retry's remaining delay", function()
    local started
    local d = flow.dag {
      id = "resume",
      tasks = function(t)
        t.lua { id = "a", retries = 2, retry_delay = 10, run = function() started = core.now() end }
      end,
    }
    flow.run(function()
      local s, store, st = H.scheduler({ d }, { schedule = false })
      local t0 = core.now()
      seed(st, { a = { state = "up_for_retry", try_number = 1, max_tries = 2, next_try_at = t0 + 0.3 } })
      store:flush()
      s:start()
      assert.same({ "success" }, s:wait_runs({ { "resume", RUN } }))
      s:stop()
      assert.is_true(started >= t0 + 0.3)
      assert.equal(2, st:get_ti("resume", RUN, "a").try_number)
      store:close()
    end)
  end)
end)

describe("clearing through a request", function()
  it("re-runs the cleared task and its downstream, and the run again", function()
    local tries = 0
    local d = flow.dag {
      id = "clearme",
      tasks = function(t)
        local a = H.ok(t, "a")
        local b = t.lua { id = "b", after = { a }, run = function()
          tries = tries + 1
          if tries == 1 then error("first time") end
        end }
        H.ok(t, "c", { after = { b } })
      end,
    }
    flow.run(function()
      local s, store, st = H.scheduler({ d }, { schedule = false })
      s:start()
      local run = s:create_run(d, { logical_date = 1767225600, run_id = RUN })
      s:process()
      assert.same({ "failed" }, s:wait_runs({ run }))
      assert.equal("upstream_failed", st:get_ti("clearme", RUN, "c").state)
      st:add_request { op = "clear", dag_id = "clearme", run_id = RUN, task_ids = { "b" }, downstream = true }
      assert.is_true(H.wait_until(function()
        store:flush()
        local r = st:get_run("clearme", RUN)
        return r.state == "success"
      end, 5))
      s:stop()
      assert.equal(1, st:get_ti("clearme", RUN, "a").try_number)
      assert.equal(2, st:get_ti("clearme", RUN, "b").try_number)
      assert.equal("success", st:get_ti("clearme", RUN, "c").state)
      store:close()
    end)
  end)
end)
