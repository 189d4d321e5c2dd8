-- One task's life in the scheduler: retries and their delays, execution
-- timeouts, flow.skip()/flow.fail(), XCom, the template context, branching,
-- short-circuit and callbacks.
local flow = require "zkflow"
local core = require "zkflow.core"
local H = dofile("spec/fixtures/sched/helpers.lua")

describe("retries", function()
  it("retries a failed task after retry_delay", function()
    local starts = {}
    local res = H.test(flow.dag {
      id = "retry",
      tasks = function(t)
        t.lua { id = "a", retries = 2, retry_delay = 0.1,
                run = function(ctx)
                  starts[#starts + 1] = core.now()
                  if ctx.ti.try_number < 3 then error("not yet") end
                  return ctx.ti.try_number
                end }
      end,
    })
    assert.equal("success", res.tasks.a.state)
    assert.equal(3, res.tasks.a.try_number)
    assert.equal(3, res.tasks.a.xcom)
    assert.equal(3, #starts)
    for i = 2, 3 do
      assert.is_true(starts[i] - starts[i - 1] >= 0.1, "gap " .. (starts[i] - starts[i - 1]))
      assert.is_true(starts[i] - starts[i - 1] < 0.6)
    end
  end)

  it("fails after retries are spent, with try_number retries + 1", function()
    local res = H.test(flow.dag {
      id = "retry_out",
      tasks = function(t) H.bad(t, "a", { retries = 2, retry_delay = 0.01 }) end,
    })
    assert.equal("failed", res.tasks.a.state)
    assert.equal(3, res.tasks.a.try_number)
    assert.equal("failed", res.state)
  end)

  it("doubles the delay with retry_exponential_backoff, capped by max_retry_delay", function()
    local starts, capped = {}, {}
    H.test(flow.dag {
      id = "backoff",
      tasks = function(t)
        t.lua { id = "a", retries = 3, retry_delay = 0.05, retry_exponential_backoff = true,
                run = function() starts[#starts + 1] = core.now(); error("x") end }
        t.lua { id = "b", retries = 3, retry_delay = 0.05, retry_exponential_backoff = true,
                max_retry_delay = 0.08,
                run = function() capped[#capped + 1] = core.now(); error("x") end }
      end,
    })
    assert.equal(4, #starts)
    local g1, g2, g3 = starts[2] - starts[1], starts[3] - starts[2], starts[4] - starts[3]
    assert.is_true(g1 >= 0.05 and g2 >= 0.1 and g3 >= 0.2, ("%g %g %g"):format(g1, g2, g3))
    assert.is_true(g3 / g2 > 1.5 and g3 / g2 < 3, ("%g %g"):format(g2, g3))
    local c3 = capped[4] - capped[3]
    assert.is_true(c3 >= 0.08 and c3 < 0.19, tostring(c3))
  end)

  it("keeps the retry's start at least retry_delay after the failed try's end in the store", function()
    flow.run(function()
      local d = flow.dag {
        id = "retry_store",
        tasks = function(t)
          t.lua { id = "a", retries = 1, retry_delay = 0.2,
                  run = function(ctx)
                    flow.sleep(0.05)
                    if ctx.ti.try_number == 1 then error("first") end
                  end }
        end,
      }
      local s, store, st = H.scheduler({ d }, { schedule = false })
      s:start()
      local run = s:create_run(d, { logical_date = 1767225600 })
      local seen_retry
      s.on_event = function(kind)
        if kind == "ti_retry" then
          s:flush(); store:flush()
          seen_retry = st:get_ti("retry_store", run.run_id, "a")
        end
      end
      s:process()
      assert.same({ "success" }, s:wait_runs({ run }))
      s:stop()
      local last = st:get_ti("retry_store", run.run_id, "a")
      assert.equal("up_for_retry", seen_retry.state)
      assert.equal(1, seen_retry.try_number)
      assert.equal(2, last.try_number)
      assert.is_true(H.t(last.start_date) - H.t(seen_retry.end_date) >= 0.2)
      assert.is_true(H.t(seen_retry.end_date) - H.t(seen_retry.start_date) >= 0.05)
      store:close()
    end)
  end)

  it("does not retry flow.fail()", function()
    local res = H.test(flow.dag {
      id = "fail_now",
      tasks = function(t)
        t.lua { id = "a", retries = 3, retry_delay = 0.01, run = function() flow.fail("bad input") end }
      end,
    })
    assert.equal("failed", res.tasks.a.state)
    assert.equal(1, res.tasks.a.try_number)
  end)

  it("ends flow.skip() as skipped without retries", function()
    local res = H.test(flow.dag {
      id = "skip_now",
      tasks = function(t)
        t.lua { id = "a", retries = 3, run = function() flow.skip("nothing to do") end }
      end,
    })
    assert.equal("skipped", res.tasks.a.state)
    assert.equal(1, res.tasks.a.try_number)
    assert.equal("success", res.state)
  end)
end)

describe("execution_timeout", function()
  -- sleep arguments unique to this process, so that pgrep finds only ours
  local SLEEP_TERM = ("6.%d"):format(core.getpid())
  local SLEEP_KILL = ("7.%d"):format(core.getpid())

  it("stops a Lua task that loops without yielding", function()
    local t0 = core.mono()
    local res = H.test(flow.dag {
      id = "tight",
      tasks = function(t)
        t.lua { id = "spin", execution_timeout = 0.2, run = function() while true do end end }
        t.lua { id = "spin2", execution_timeout = 0.2,
                run = function() local x = 0; while true do x = x + 1 end end }
      end,
    })
    assert.equal("failed", res.tasks.spin.state)
    assert.equal("failed", res.tasks.spin2.state)
    assert.is_true(core.mono() - t0 < 3)
  end)

  it("stops a Lua task that catches the timeout with pcall", function()
    local t0 = core.mono()
    local res = H.test(flow.dag {
      id = "pcall_spin",
      tasks = function(t)
        t.lua { id = "spin", execution_timeout = 0.2, run = function()
          while true do pcall(function() while true do end end) end
        end }
      end,
    })
    assert.equal("failed", res.tasks.spin.state)
    assert.is_true(core.mono() - t0 < 3)
    assert.matches("execution timeout", assert(io.open(res.tasks.spin.log)):read("a"))
  end)

  it("stops a Lua task that waits", function()
    local t0 = core.mono()
    local res = H.test(flow.dag {
      id = "waits",
      tasks = function(t)
        t.lua { id = "a", execution_timeout = 0.2, run = function() flow.sleep(10) end }
      end,
    })
    assert.equal("failed", res.tasks.a.state)
    assert.is_true(core.mono() - t0 < 3)
  end)

  it("retries a timed-out task", function()
    local res = H.test(flow.dag {
      id = "timeout_retry",
      tasks = function(t)
        t.lua { id = "a", execution_timeout = 0.1, retries = 1, retry_delay = 0.01,
                run = function(ctx) if ctx.ti.try_number == 1 then flow.sleep(5) end return "ok" end }
      end,
    })
    assert.equal("success", res.tasks.a.state)
    assert.equal(2, res.tasks.a.try_number)
  end)

  it("sends SIGTERM to a shell task's process group", function()
    local t0 = core.mono()
    local res = H.test(flow.dag {
      id = "shell_timeout",
      tasks = function(t)
        t.shell { id = "a", execution_timeout = 0.3,
                  cmd = ("sleep %s & sleep %s; wait"):format(SLEEP_TERM, SLEEP_TERM) }
      end,
    })
    assert.equal("failed", res.tasks.a.state)
    assert.is_true(core.mono() - t0 < 3)
    local log = assert(io.open(res.tasks.a.log)):read("a")
    assert.matches("execution timeout", log)
    assert.equal("", io.popen("pgrep -f 'slee[p] " .. SLEEP_TERM .. "'"):read("a"))
  end)

  it("sends SIGKILL kill_grace after SIGTERM when the group ignores it", function()
    flow.run(function()
      local d = flow.dag {
        id = "shell_kill",
        tasks = function(t)
          t.shell { id = "a", execution_timeout = 0.2,
                    cmd = ("trap '' TERM; sleep %s & sleep %s; wait"):format(SLEEP_KILL, SLEEP_KILL) }
        end,
      }
      local s, store = H.scheduler({ d }, { schedule = false, kill_grace = 0.3 })
      s:start()
      local t0 = core.mono()
      local run = s:create_run(d, { logical_date = 1767225600 })
      s:process()
      assert.same({ "failed" }, s:wait_runs({ run }))
      local el = core.mono() - t0
      assert.is_true(el >= 0.45 and el < 3, tostring(el))
      s:stop()
      store:close()
    end)
    assert.equal("", io.popen("pgrep -f 'slee[p] " .. SLEEP_KILL .. "'"):read("a"))
  end)
end)

describe("shell tasks", function()
  it("end skipped on skip_on_exit_code (99) and failed on another code", function()
    local res = H.test(flow.dag {
      id = "shell_codes",
      tasks = function(t)
        t.shell { id = "skip", cmd = "exit 99", retries = 2, retry_delay = 0.01 }
        t.shell { id = "custom", cmd = "exit 3", skip_on_exit_code = 3 }
        t.shell { id = "bad", cmd = "echo oops; exit 1" }
      end,
    })
    assert.same({ skip = "skipped", custom = "skipped", bad = "failed" }, H.states(res))
    assert.equal(1, res.tasks.skip.try_number)
    assert.matches("oops", assert(io.open(res.tasks.bad.log)):read("a"))
  end)
end)

describe("XCom", function()
  it("carries a Lua task's return value and values pushed by key", function()
    local res = H.test(flow.dag {
      id = "xcom",
      tasks = function(t)
        local a = t.lua { id = "a", run = function(ctx)
          ctx.xcom.push("extra", { n = 7 })
          return { rows = 3 }
        end }
        t.lua { id = "b", after = { a }, run = function(ctx)
          return ctx.xcom.pull("a").rows + ctx.xcom.pull("a", "extra").n + ctx.xcom("a").rows
        end }
        t.shell { id = "c", after = { a }, do_xcom_push = true,
                  cmd = "echo first; echo 'rows={{ xcom(\"a\").rows }}'" }
      end,
    })
    assert.same({ rows = 3 }, res.tasks.a.xcom)
    assert.equal(13, res.tasks.b.xcom)
    assert.equal("rows=3", res.tasks.c.xcom)
  end)

  it("treats a push under return_value as the return value (one slot, as Airflow)", function()
    local res = H.test(flow.dag {
      id = "xcom_rv",
      tasks = function(t)
        local a = t.lua { id = "a", run = function(ctx) ctx.xcom.push("return_value", 5) end }
        local b = t.lua { id = "b", run = function(ctx)
          ctx.xcom.push("return_value", 1)
          return 2
        end }
        t.lua { id = "c", after = { a, b }, run = function(ctx)
          return ctx.xcom.pull("a", "return_value") * 10 + ctx.xcom.pull("b")
        end }
      end,
    })
    assert.equal(5, res.tasks.a.xcom)
    assert.equal(2, res.tasks.b.xcom)
    assert.equal(52, res.tasks.c.xcom)
  end)
end)

describe("the task context", function()
  it("renders templates and gives Lua tasks the same context", function()
    local dir = H.tmpdir()
    local db = dir .. "/zkflow.db"
    local store = core.store(db)
    require("zkflow.state").new(store):set_variable("region", "eu-west")
    store:close()
    local fields = "{{ ds }}|{{ ts }}|{{ run_id }}|{{ data_interval_start }}|{{ params.x }}|"
      .. "{{ var.region }}|{{ xcom(\"a\") }}|{{ ti.task_id }}|{{ ti.try_number }}|{{ dag.dag_id }}"
    local res = flow.test(flow.dag {
      id = "ctx",
      params = { x = "px" },
      tasks = function(t)
        local a = t.lua { id = "a", run = function(ctx)
          return table.concat({ ctx.ds, ctx.ts, ctx.run_id, ctx.data_interval_start, ctx.params.x,
                                ctx.var.region, "-", ctx.ti.task_id, ctx.ti.try_number, ctx.dag.dag_id }, "|")
        end }
        t.shell { id = "sh", after = { a }, do_xcom_push = true, cmd = "echo '" .. fields .. "'" }
        t.shell { id = "env", after = { a }, do_xcom_push = true,
                  cmd = "echo $ZKFLOW_DS $ZKFLOW_RUN_ID $ZKFLOW_TASK_ID $ZKFLOW_TRY_NUMBER $ZKFLOW_DAG_ID" }
      end,
    }, { date = "2026-03-04T05:06:07Z", db = db })
    local rid = "manual__2026-03-04T05:06:07.000000+00:00"
    assert.equal(rid, res.run_id)
    local base = "2026-03-04|2026-03-04T05:06:07+00:00|" .. rid .. "|2026-03-04T05:06:07+00:00|px|eu-west|"
    assert.equal(base .. "-|a|1|ctx", res.tasks.a.xcom)
    assert.equal(base .. res.tasks.a.xcom .. "|sh|1|ctx", res.tasks.sh.xcom)
    assert.equal("2026-03-04 " .. rid .. " env 1 ctx", res.tasks.env.xcom)
  end)

  it("gives a manual run of a scheduled DAG the last complete interval", function()
    local res = flow.test(flow.dag {
      id = "manual_interval", schedule = "@daily",
      tasks = function(t)
        t.lua { id = "a", run = function(ctx)
          return ctx.ds .. " " .. ctx.data_interval_start .. " " .. ctx.data_interval_end
        end }
      end,
    }, { date = "2026-03-04T05:06:07Z" })
    assert.equal("2026-03-04 2026-03-03T00:00:00+00:00 2026-03-04T00:00:00+00:00", res.tasks.a.xcom)
  end)

  it("lets the run's conf override params", function()
    local res = flow.test(flow.dag {
      id = "conf",
      params = { x = "dag" },
      tasks = function(t)
        t.lua { id = "a", params = { y = "task" },
                run = function(ctx) return ctx.params.x .. "/" .. ctx.params.y end }
      end,
    }, { conf = { x = "conf" } })
    assert.equal("conf/task", res.tasks.a.xcom)
  end)
end)

describe("branching", function()
  local function branch_dag(choice)
    return flow.dag {
      id = "branch",
      tasks = function(t)
        local br = t.branch { id = "br", run = function() return choice end }
        local b = H.ok(t, "b", { after = { br } })
        local c = H.ok(t, "c", { after = { br } })
        local after_c = H.ok(t, "after_c", { after = { c } })
        H.ok(t, "join", { after = { b, after_c }, trigger_rule = "none_failed_min_one_success" })
      end,
    }
  end

  it("follows the returned id and skips the other direct downstream tasks", function()
    local res = H.test(branch_dag("b"))
    assert.same({ br = "success", b = "success", c = "skipped", after_c = "skipped", join = "success" },
                H.states(res))
    assert.equal("b", res.tasks.br.xcom)
  end)

  it("follows a list of ids", function()
    local res = H.test(branch_dag({ "b", "c" }))
    assert.same({ br = "success", b = "success", c = "success", after_c = "success", join = "success" },
                H.states(res))
  end)

  it("skips every direct downstream task when it returns nil", function()
    local res = H.test(branch_dag(nil))
    assert.same({ br = "success", b = "skipped", c = "skipped", after_c = "skipped", join = "skipped" },
                H.states(res))
  end)

  it("fails when it returns a task that is not directly downstream", function()
    local res = H.test(branch_dag("after_c"))
    assert.equal("failed", res.tasks.br.state)
    assert.equal("upstream_failed", res.tasks.b.state)
    assert.equal("failed", res.state)
  end)
end)

describe("short_circuit", function()
  local function sc_dag(value, ignore)
    return flow.dag {
      id = "sc",
      tasks = function(t)
        local sc = t.short_circuit { id = "sc", ignore_downstream_trigger_rules = ignore,
                                     run = function() return value end }
        local a = H.ok(t, "a", { after = { sc } })
        H.ok(t, "cleanup", { after = { a }, trigger_rule = "all_done" })
      end,
    }
  end

  it("lets the downstream tasks run when the condition holds", function()
    assert.same({ sc = "success", a = "success", cleanup = "success" }, H.states(H.test(sc_dag(true))))
  end)

  it("skips every descendant when the condition is false", function()
    assert.same({ sc = "success", a = "skipped", cleanup = "skipped" }, H.states(H.test(sc_dag(false))))
  end)

  it("skips only the direct downstream without ignore_downstream_trigger_rules", function()
    assert.same({ sc = "success", a = "skipped", cleanup = "success" },
                H.states(H.test(sc_dag(false, false))))
  end)
end)

describe("callbacks", function()
  it("calls on_retry, on_failure and on_success with the task context", function()
    local calls = {}
    local res = H.test(flow.dag {
      id = "cb",
      on_success = function() calls[#calls + 1] = "dag success" end,
      on_failure = function(ctx) calls[#calls + 1] = "dag failure " .. ctx.run_id:sub(1, 6) end,
      tasks = function(t)
        t.lua { id = "a", retries = 1, retry_delay = 0.01,
                on_retry = function(ctx) calls[#calls + 1] = "retry " .. ctx.ti.try_number end,
                on_failure = function(ctx)
                  calls[#calls + 1] = "failure " .. ctx.ti.task_id .. " " .. tostring(ctx.exception):match("boom")
                end,
                run = function() error("boom") end }
        t.lua { id = "b", on_success = function(ctx) calls[#calls + 1] = "success " .. ctx.ti.task_id end,
                run = function() end }
      end,
    })
    assert.equal("failed", res.state)
    table.sort(calls)
    assert.same({ "dag failure manual", "failure a boom", "retry 1", "success b" }, calls)
  end)
end)
