-- Sensors in the scheduler: poke and reschedule modes, timeout, soft_fail,
-- and the file, time_delta and external_task sensors.
local flow = require "zkflow"
local core = require "zkflow.core"
local H = dofile("spec/fixtures/sched/helpers.lua")

local function touch_later(path, delay)
  core.timer(delay, function()
    local f = assert(io.open(path, "w")); f:write("x"); f:close()
  end)
end

describe("the file sensor", function()
  for _, mode in ipairs({ "poke", "reschedule" }) do
    it("waits in " .. mode .. " mode until the file exists", function()
      local dir = H.tmpdir()
      local path = dir .. "/ready"
      local res = H.test(flow.dag {
        id = "file_" .. mode,
        tasks = function(t)
          local w = t.file { id = "wait", filepath = path, mode = mode, poke_interval = 0.05, timeout = 5 }
          t.lua { id = "after", after = { w }, run = function() return core.stat(path) ~= nil end }
          t.lua { id = "maker", run = function() flow.sleep(0.2); touch_later(path, 0) end }
        end,
      })
      assert.equal("success", res.tasks.wait.state)
      assert.equal(1, res.tasks.wait.try_number)
      assert.is_true(res.tasks.after.xcom)
    end)
  end

  it("is up_for_reschedule between pokes and gives its slot back", function()
    flow.run(function()
      local dir = H.tmpdir()
      local d = flow.dag {
        id = "resched",
        max_active_tasks = 1,
        tasks = function(t)
          t.file { id = "wait", filepath = dir .. "/go", mode = "reschedule", poke_interval = 0.1,
                   timeout = 5, priority_weight = 10 }
          t.lua { id = "other", run = function() return core.now() end }
        end,
      }
      local s, store = H.scheduler({ d }, { schedule = false })
      s:start()
      local run = s:create_run(d, { logical_date = 1767225600 })
      s:process()
      assert.is_true(H.wait_until(function() return run.tis.wait.state == "up_for_reschedule" end, 2))
      -- with the only slot free, the other task ran meanwhile
      assert.is_true(H.wait_until(function() return run.tis.other.state == "success" end, 2))
      touch_later(dir .. "/go", 0)
      assert.same({ "success" }, s:wait_runs({ run }))
      assert.equal(1, run.tis.wait.try_number)
      s:stop()
      store:close()
    end)
  end)

  it("fails on timeout without retrying", function()
    local res = H.test(flow.dag {
      id = "file_timeout",
      tasks = function(t)
        t.file { id = "wait", filepath = "/nonexistent/zkflow", poke_interval = 0.05, timeout = 0.2,
                 retries = 3, retry_delay = 0.01 }
      end,
    })
    assert.equal("failed", res.tasks.wait.state)
    assert.equal(1, res.tasks.wait.try_number)
  end)

  it("ends skipped on timeout with soft_fail", function()
    local res = H.test(flow.dag {
      id = "file_soft",
      tasks = function(t)
        local w = t.file { id = "wait", filepath = "/nonexistent/zkflow", poke_interval = 0.05,
                           timeout = 0.2, soft_fail = true, mode = "reschedule" }
        H.ok(t, "next", { after = { w } })
      end,
    })
    assert.equal("skipped", res.tasks.wait.state)
    assert.equal("skipped", res.tasks.next.state)
    assert.equal("success", res.state)
  end)
end)

describe("soft_fail", function()
  it("skips a sensor whose execution_timeout expires", function()
    local res = H.test(flow.dag {
      id = "soft_exec_timeout",
      tasks = function(t)
        t.file { id = "wait", filepath = "/nonexistent/zkflow", poke_interval = 0.05, timeout = 60,
                 execution_timeout = 0.2, soft_fail = true }
      end,
    })
    assert.equal("skipped", res.tasks.wait.state)
  end)

  it("skips an external_task sensor that sees a failed state", function()
    flow.run(function()
      local up = flow.dag { id = "up3", tasks = function(t) H.bad(t, "load") end }
      local down = flow.dag {
        id = "down3",
        tasks = function(t)
          t.external_task { id = "wait", external_dag_id = "up3", external_task_id = "load",
                            failed_states = { "failed" }, poke_interval = 0.05, timeout = 5,
                            soft_fail = true }
        end,
      }
      local s, store = H.scheduler({ up, down }, { schedule = false })
      s:start()
      local r1 = s:create_run(up, { logical_date = 1767225600 })
      local r2 = s:create_run(down, { logical_date = 1767225600 })
      s:process()
      assert.same({ "failed", "success" }, s:wait_runs({ r1, r2 }))
      assert.equal("skipped", r2.tis.wait.state)
      s:stop()
      store:close()
    end)
  end)
end)

describe("the time_delta sensor", function()
  it("waits until data_interval_end + delta", function()
    local t0 = core.now()
    local res = flow.test(flow.dag {
      id = "td",
      tasks = function(t)
        t.time_delta { id = "wait", delta = 0.3, poke_interval = 0.05 }
      end,
    }, { date = t0 })
    assert.equal("success", res.tasks.wait.state)
    assert.is_true(core.now() - t0 >= 0.3)
  end)
end)

describe("the external_task sensor", function()
  it("waits for a task of another DAG's run at the same logical date", function()
    flow.run(function()
      local up = flow.dag {
        id = "upstream_dag",
        tasks = function(t) H.slow(t, "load", 0.3) end,
      }
      local down = flow.dag {
        id = "downstream_dag",
        tasks = function(t)
          local w = t.external_task { id = "wait", external_dag_id = "upstream_dag",
                                      external_task_id = "load", poke_interval = 0.05, timeout = 5 }
          t.lua { id = "use", after = { w }, run = function() return core.now() end }
        end,
      }
      local s, store = H.scheduler({ up, down }, { schedule = false })
      s:start()
      local ld = 1767225600
      local r2 = s:create_run(down, { logical_date = ld })
      local r1 = s:create_run(up, { logical_date = ld })
      s:process()
      assert.same({ "success", "success" }, s:wait_runs({ r1, r2 }))
      assert.is_true(r2.tis.use.xcom >= r1.tis.load.xcom)
      s:stop()
      store:close()
    end)
  end)

  it("fails when the external task reaches one of failed_states", function()
    flow.run(function()
      local up = flow.dag { id = "up2", tasks = function(t) H.bad(t, "load") end }
      local down = flow.dag {
        id = "down2",
        tasks = function(t)
          t.external_task { id = "wait", external_dag_id = "up2", external_task_id = "load",
                            failed_states = { "failed" }, poke_interval = 0.05, timeout = 5 }
        end,
      }
      local s, store = H.scheduler({ up, down }, { schedule = false })
      s:start()
      local r1 = s:create_run(up, { logical_date = 1767225600 })
      local r2 = s:create_run(down, { logical_date = 1767225600 })
      s:process()
      assert.same({ "failed", "failed" }, s:wait_runs({ r1, r2 }))
      s:stop()
      store:close()
    end)
  end)
end)
