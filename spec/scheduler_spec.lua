-- The scheduler across tasks and runs: max_active_tasks, pools and
-- pool_slots, priority_weight, depends_on_past, schedules with catchup,
-- start_date/end_date, max_active_runs and data intervals (UTC).
local flow = require "zkflow"
local core = require "zkflow.core"
local H = dofile("spec/fixtures/sched/helpers.lua")

-- Tasks that record how many of them run at once.
local function gauge()
  local g = { now = 0, max = 0, order = {} }
  function g.task(t, id, spec)
    spec = spec or {}
    spec.id = id
    spec.run = function()
      g.now = g.now + 1
      if g.now > g.max then g.max = g.now end
      g.order[#g.order + 1] = id
      flow.sleep(spec.sleep_for or 0.05)
      g.now = g.now - 1
    end
    spec.sleep_for = nil
    return t.lua(spec)
  end
  return g
end

-- Runs `dags` on a fresh scheduler inside flow.run; body(s, st) drives it.
local function with_scheduler(dags, opts, body)
  flow.run(function()
    local s, store, st = H.scheduler(dags, opts)
    if opts and opts.pools then
      for name, slots in pairs(opts.pools) do st:write(st:path("pools", name), { slots = slots }) end
    end
    s:start()
    local ok, err = pcall(body, s, st, store)
    s:stop()
    store:close()
    if not ok then error(err, 0) end
  end)
end

local function run_once(d, opts)
  local g = opts.gauge
  with_scheduler({ d }, { schedule = false, pools = opts.pools, parallelism = opts.parallelism },
    function(s)
      local run = s:create_run(d, { logical_date = 1767225600 })
      s:process()
      assert.same({ "success" }, s:wait_runs({ run }))
    end)
  return g
end

describe("concurrency limits", function()
  it("runs at most max_active_tasks of a DAG at once", function()
    local g = gauge()
    local d = flow.dag {
      id = "mat", max_active_tasks = 2,
      tasks = function(t) for i = 1, 6 do g.task(t, "t" .. i) end end,
    }
    run_once(d, { gauge = g })
    assert.equal(2, g.max)
    assert.equal(6, #g.order)
  end)

  it("counts max_active_tasks across the DAG's runs", function()
    local g = gauge()
    local d = flow.dag {
      id = "mat_runs", max_active_tasks = 3,
      tasks = function(t) for i = 1, 4 do g.task(t, "t" .. i) end end,
    }
    with_scheduler({ d }, { schedule = false }, function(s)
      local r1 = s:create_run(d, { logical_date = 1767225600 })
      local r2 = s:create_run(d, { logical_date = 1767229200 })
      s:process()
      assert.same({ "success", "success" }, s:wait_runs({ r1, r2 }))
    end)
    assert.equal(3, g.max)
  end)

  it("limits a pool to its slots, counting pool_slots", function()
    local g = gauge()
    local d = flow.dag {
      id = "pools",
      tasks = function(t)
        for i = 1, 5 do g.task(t, "p" .. i, { pool = "small" }) end
        g.task(t, "free", {})
      end,
    }
    run_once(d, { gauge = g, pools = { small = 2 } })
    -- two of the pool plus the task outside it
    assert.equal(3, g.max)

    local g2 = gauge()
    local d2 = flow.dag {
      id = "pool_slots",
      tasks = function(t)
        g2.task(t, "big", { pool = "small", pool_slots = 2, priority_weight = 10, weight_rule = "absolute" })
        for i = 1, 3 do g2.task(t, "s" .. i, { pool = "small", weight_rule = "absolute" }) end
      end,
    }
    run_once(d2, { gauge = g2, pools = { small = 2 } })
    assert.equal("big", g2.order[1])
    assert.equal(2, g2.max)
  end)

  it("lets a smaller task take the slot a bigger one cannot use", function()
    local g = gauge()
    local d = flow.dag {
      id = "pool_fit",
      tasks = function(t)
        g.task(t, "one", { pool = "p3", pool_slots = 2, priority_weight = 9, weight_rule = "absolute" })
        g.task(t, "two", { pool = "p3", pool_slots = 2, priority_weight = 8, weight_rule = "absolute" })
        g.task(t, "small", { pool = "p3", pool_slots = 1, priority_weight = 1, weight_rule = "absolute" })
      end,
    }
    run_once(d, { gauge = g, pools = { p3 = 3 } })
    assert.same({ "one", "small", "two" }, g.order)
  end)

  it("starts the highest priority_weight first when slots are scarce", function()
    local g = gauge()
    local d = flow.dag {
      id = "prio", max_active_tasks = 1,
      tasks = function(t)
        for i, w in ipairs({ 3, 9, 1, 7, 5 }) do
          g.task(t, "w" .. w, { priority_weight = w, weight_rule = "absolute", sleep_for = 0.01 })
          local _ = i
        end
      end,
    }
    run_once(d, { gauge = g })
    assert.same({ "w9", "w7", "w5", "w3", "w1" }, g.order)
  end)

  it("uses downstream weights by default (Airflow's weight_rule)", function()
    local g = gauge()
    local d = flow.dag {
      id = "prio_down", max_active_tasks = 1,
      tasks = function(t)
        local lone = g.task(t, "lone", { sleep_for = 0.01 })
        local head = g.task(t, "head", { sleep_for = 0.01 })
        local a = g.task(t, "a", { after = { head }, sleep_for = 0.01 })
        g.task(t, "b", { after = { a }, sleep_for = 0.01 })
        local _ = lone
      end,
    }
    run_once(d, { gauge = g })
    assert.equal("head", g.order[1])
  end)

  it("never runs more than the scheduler's parallelism", function()
    local g = gauge()
    local d = flow.dag {
      id = "par", max_active_tasks = 50,
      tasks = function(t) for i = 1, 8 do g.task(t, "t" .. i) end end,
    }
    run_once(d, { gauge = g, parallelism = 3 })
    assert.equal(3, g.max)
  end)
end)

describe("depends_on_past", function()
  it("waits for the same task of the previous run to succeed", function()
    local ends, starts = {}, {}
    local d = flow.dag {
      id = "dop", max_active_runs = 2,
      tasks = function(t)
        t.lua { id = "a", depends_on_past = true, run = function(ctx)
          starts[ctx.ds] = core.now()
          if ctx.ds == "2026-01-01" then flow.sleep(0.3) end
          ends[ctx.ds] = core.now()
        end }
        t.lua { id = "free", run = function(ctx) starts["free" .. ctx.ds] = core.now() end }
      end,
    }
    with_scheduler({ d }, { schedule = false }, function(s)
      local r1 = s:create_run(d, { logical_date = 1767225600 })
      local r2 = s:create_run(d, { logical_date = 1767312000 })
      s:process()
      assert.same({ "success", "success" }, s:wait_runs({ r1, r2 }))
    end)
    assert.is_true(starts["2026-01-02"] >= ends["2026-01-01"])
    -- a task without depends_on_past does not wait
    assert.is_true(starts["free2026-01-02"] < ends["2026-01-01"])
  end)

  it("waits, with the run running, while the previous instance has failed", function()
    local fail_first = true
    local d = flow.dag {
      id = "dop_fail", max_active_runs = 2,
      tasks = function(t)
        t.lua { id = "a", depends_on_past = true, run = function(ctx)
          if ctx.ds == "2026-01-01" and fail_first then error("bad day") end
        end }
        t.lua { id = "b", run = function() end }
      end,
    }
    with_scheduler({ d }, { schedule = false }, function(s, st)
      local r1 = s:create_run(d, { logical_date = 1767225600 })
      local r2 = s:create_run(d, { logical_date = 1767312000 })
      s:process()
      assert.same({ "failed" }, s:wait_runs({ r1 }))
      assert.is_true(H.wait_until(function() return r2.tis.b.state == "success" end))
      flow.sleep(0.1)
      -- Airflow's deadlock check passes over depends_on_past: r2 waits.
      assert.equal("running", r2.state)
      assert.equal("none", r2.tis.a.state)
      local why = "waiting for a of " .. r1.run_id
      assert.equal(why, r2.tis.a.waiting_for)
      assert.equal(why, st:get_ti("dop_fail", r2.run_id, "a").waiting_for)
      assert.equal(why, st:run_object("dop_fail", r2.run_id).tasks.a.waiting_for)
      -- The earlier instance cleared and successful: the waiting one runs.
      fail_first = false
      s:clear("dop_fail", r1.run_id, { "a" })
      s:process()
      assert.same({ "success", "success" }, s:wait_runs({ r1, r2 }))
      assert.equal("success", r2.tis.a.state)
      assert.is_nil(r2.tis.a.waiting_for)
      assert.equal(core.null, st:run_object("dop_fail", r2.run_id).tasks.a.waiting_for)
    end)
  end)

  it("runs when the previous run is already finished in the store", function()
    local d = flow.dag {
      id = "dop_store",
      tasks = function(t) t.lua { id = "a", depends_on_past = true, run = function() end } end,
    }
    with_scheduler({ d }, { schedule = false }, function(s)
      local r1 = s:create_run(d, { logical_date = 1767225600 })
      s:process()
      assert.same({ "success" }, s:wait_runs({ r1 }))
      local r2 = s:create_run(d, { logical_date = 1767312000 })
      s:process()
      assert.same({ "success" }, s:wait_runs({ r2 }))
    end)
  end)
end)

describe("schedules", function()
  local HOUR = 3600

  -- The scheduled runs of `dag_id` in the store, oldest first.
  local function runs_of(st, dag_id)
    return st:list_runs(dag_id)
  end

  it("creates every missed interval with catchup, each run after its interval ends", function()
    local now = core.now()
    local start = math.floor(now / HOUR) * HOUR - 3 * HOUR
    local d = flow.dag {
      id = "catchup", schedule = "@hourly", start_date = flow.iso(start), catchup = true,
      tasks = function(t) t.lua { id = "a", run = function(ctx) return ctx.data_interval_start end } end,
    }
    with_scheduler({ d }, {}, function(s, st)
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "catchup")
        return #rs == 3 and rs[3].state == "success"
      end, 5))
      local rs = runs_of(st, "catchup")
      for i, r in ipairs(rs) do
        local ld = start + (i - 1) * HOUR
        assert.equal("scheduled", r.run_type)
        assert.equal("scheduled__" .. flow.iso(ld), r.run_id)
        assert.equal(flow.iso(ld), r.data_interval_start)
        assert.equal(flow.iso(ld + HOUR), r.data_interval_end)
        assert.equal(flow.iso(ld), st:get_ti("catchup", r.run_id, "a").xcom)
      end
      assert.is_nil(s.timers.catchup == nil and "no timer for the next interval" or nil)
    end)
  end)

  it("creates only the latest complete interval without catchup", function()
    local now = core.now()
    local start = math.floor(now / HOUR) * HOUR - 5 * HOUR
    local d = flow.dag {
      id = "nocatchup", schedule = "0 * * * *", start_date = flow.iso(start), catchup = false,
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    with_scheduler({ d }, {}, function(_, st)
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "nocatchup")
        return #rs >= 1 and rs[1].state == "success"
      end, 5))
      flow.sleep(0.1)
      local rs = runs_of(st, "nocatchup")
      assert.equal(1, #rs)
      assert.equal(flow.iso(math.floor(now / HOUR) * HOUR - HOUR), rs[1].logical_date)
    end)
  end)

  it("jumps to the latest interval at once, however old start_date is", function()
    -- flow.every(1) from a year ago: walking 31 million intervals (or
    -- creating them) was the bug; one run must appear, quickly.
    local d = flow.dag {
      id = "old_start", schedule = flow.every(1), catchup = false,
      start_date = flow.iso(math.floor(core.now()) - 365 * 86400),
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    with_scheduler({ d }, {}, function(_, st)
      local t0 = core.mono()
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "old_start")
        return #rs >= 1 and rs[1].state == "success"
      end, 5))
      assert.is_true(core.mono() - t0 < 2)
      assert.is_true(#runs_of(st, "old_start") <= 3)
    end)
  end)

  it("creates no more scheduled runs than max_active_runs while catching up", function()
    local now = core.now()
    local start = math.floor(now / HOUR) * HOUR - 50 * HOUR
    local release = false
    local d = flow.dag {
      id = "bounded", schedule = "@hourly", start_date = flow.iso(start), catchup = true,
      max_active_runs = 2,
      tasks = function(t)
        t.lua { id = "a", run = function() while not release do flow.sleep(0.02) end end }
      end,
    }
    with_scheduler({ d }, {}, function(_, st)
      flow.sleep(0.2)
      assert.equal(2, #runs_of(st, "bounded"))
      release = true
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "bounded")
        return #rs == 50 and rs[50].state == "success"
      end, 10))
    end)
  end)

  it("stops at end_date", function()
    local now = core.now()
    local start = math.floor(now / HOUR) * HOUR - 6 * HOUR
    local d = flow.dag {
      id = "ended", schedule = "@hourly", start_date = flow.iso(start),
      end_date = flow.iso(start + 2 * HOUR), catchup = true,
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    with_scheduler({ d }, {}, function(_, st)
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "ended")
        return #rs == 3 and rs[3].state == "success"
      end, 5))
      flow.sleep(0.1)
      assert.equal(3, #runs_of(st, "ended"))
    end)
  end)

  it("creates no run before start_date", function()
    local d = flow.dag {
      id = "future", schedule = "@daily", start_date = flow.iso(core.now() + 86400 * 3),
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    with_scheduler({ d }, {}, function(_, st)
      flow.sleep(0.1)
      assert.equal(0, #runs_of(st, "future"))
    end)
  end)

  it("runs one run at a time with max_active_runs = 1, oldest first", function()
    local now = core.now()
    local start = math.floor(now / HOUR) * HOUR - 3 * HOUR
    local spans = {}
    local d = flow.dag {
      id = "one_at_a_time", schedule = "@hourly", start_date = flow.iso(start), catchup = true,
      max_active_runs = 1,
      tasks = function(t)
        t.lua { id = "a", run = function(ctx)
          local s0 = core.now(); flow.sleep(0.05)
          spans[#spans + 1] = { ctx.ds .. ctx.ts, s0, core.now() }
        end }
      end,
    }
    with_scheduler({ d }, {}, function(_, st)
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "one_at_a_time")
        return #rs == 3 and rs[3].state == "success"
      end, 5))
    end)
    assert.equal(3, #spans)
    for i = 2, 3 do
      assert.is_true(spans[i][2] >= spans[i - 1][3])
      assert.is_true(spans[i][1] > spans[i - 1][1])
    end
  end)

  it("fires flow.every(seconds) intervals as they end", function()
    local start = math.floor(core.now()) - 10
    local d = flow.dag {
      id = "every", schedule = flow.every(1), start_date = flow.iso(start), catchup = false,
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    with_scheduler({ d }, {}, function(_, st)
      assert.is_true(H.wait_until(function() return #runs_of(st, "every") >= 2 end, 3))
      local rs = runs_of(st, "every")
      local a, b = H.t(rs[1].logical_date), H.t(rs[2].logical_date)
      assert.equal(1, b - a)
      assert.equal(rs[1].data_interval_end, rs[2].data_interval_start)
    end)
  end)

  it("creates one run for @once, and none again after a restart", function()
    local d = flow.dag {
      id = "once", schedule = "@once", start_date = flow.iso(core.now() - 86400),
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    flow.run(function()
      local s, store, st = H.scheduler({ d }, {})
      s:start()
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "once")
        return #rs == 1 and rs[1].state == "success"
      end, 5))
      s:stop()
      local s2 = require("zkflow.scheduler").new { store = store, dags = { once = d }, log_dir = "/tmp" }
      s2:start()
      flow.sleep(0.1)
      assert.equal(1, #runs_of(st, "once"))
      s2:stop()
      store:close()
    end)
  end)

  it("does not repeat caught-up intervals after a restart", function()
    local now = core.now()
    local start = math.floor(now / HOUR) * HOUR - 2 * HOUR
    local d = flow.dag {
      id = "restart_catchup", schedule = "@hourly", start_date = flow.iso(start), catchup = true,
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    flow.run(function()
      local s, store, st = H.scheduler({ d }, {})
      s:start()
      assert.is_true(H.wait_until(function()
        local rs = runs_of(st, "restart_catchup")
        return #rs == 2 and rs[2].state == "success"
      end, 5))
      s:stop()
      local s2 = require("zkflow.scheduler").new { store = store, dags = { restart_catchup = d },
                                                   log_dir = "/tmp" }
      s2:start()
      flow.sleep(0.1)
      assert.equal(2, #runs_of(st, "restart_catchup"))
      s2:stop()
      store:close()
    end)
  end)

  it("does not create runs for a paused DAG", function()
    local now = core.now()
    local d = flow.dag {
      id = "paused", schedule = "@hourly", start_date = flow.iso(now - 5 * HOUR), catchup = true,
      tasks = function(t) t.lua { id = "a", run = function() end } end,
    }
    flow.run(function()
      local s, store, st = H.scheduler({ d }, {})
      st:set_paused("paused", true)
      s:start()
      flow.sleep(0.1)
      assert.equal(0, #runs_of(st, "paused"))
      s:stop()
      store:close()
    end)
  end)
end)

describe("dagrun_timeout", function()
  it("fails the run and skips what had not finished", function()
    local d = flow.dag {
      id = "drt", dagrun_timeout = 0.2,
      tasks = function(t)
        local a = t.lua { id = "a", run = function() end }
        local slow = t.lua { id = "slow", after = { a }, run = function() flow.sleep(5) end }
        t.lua { id = "c", after = { slow }, run = function() end }
      end,
    }
    local t0 = core.mono()
    with_scheduler({ d }, { schedule = false }, function(s)
      local run = s:create_run(d, { logical_date = 1767225600 })
      s:process()
      assert.same({ "failed" }, s:wait_runs({ run }))
      assert.equal("success", run.tis.a.state)
      assert.equal("skipped", run.tis.slow.state)
      assert.equal("skipped", run.tis.c.state)
    end)
    assert.is_true(core.mono() - t0 < 2)
  end)
end)
