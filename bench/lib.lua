-- bench/lib.lua: helpers shared by the zkflow side of the benchmarks.
--
-- Runs DAG runs in-process through zkflow.scheduler, the way
-- `zkflow dags test` does, but with the clock read around the run alone:
-- building the DAG, opening the store and loading modules stay outside
-- the measured interval.
local core = require "zkflow.core"
local flow = require "zkflow"
local sched = require "zkflow.scheduler"

local mono, sort = core.mono, table.sort
local fmt = string.format

local _M = {}

-- A layered DAG: `layers` layers of `width` tasks, task (l, i) after
-- (l-1, i).  `make(t, id, after)` declares one task.
function _M.layered(id, layers, width, make, dag_opts)
    local spec = {
        id = id,
        tasks = function(t)
            local prev = {}
            for l = 1, layers do
                local cur = {}
                for i = 1, width do
                    local up = prev[i]
                    cur[i] = make(t, fmt("t%d_%d", l, i), up and { up } or nil)
                end
                prev = cur
            end
        end,
    }
    for k, v in pairs(dag_opts or {}) do spec[k] = v end
    return flow.dag(spec)
end

-- The value at quantile q (0..1) of a sorted list, nearest rank.
function _M.quantile(sorted, q)
    local n = #sorted
    if n == 0 then return nil end
    local k = math.max(1, math.min(n, math.ceil(q * n)))
    return sorted[k]
end

-- Runs one DAG run to its end; returns seconds (run start to the run's
-- end, its state committed to the store) and the run.  With `events`, the
-- scheduler's ti_started/ti_finished events are timed with core.mono()
-- into events.start[task_id] / events.finish[task_id].  Call inside
-- flow.run.
function _M.run_once(dag, dir, n, events)
    local db = fmt("%s/run%d.db", dir, n)
    local st = assert(core.store(db, { sync = "normal" }))
    local on_event
    if events then
        events.start, events.finish = {}, {}
        on_event = function(kind, ti)
            if kind == "ti_started" then
                events.start[ti.task_id] = mono()
            elseif kind == "ti_finished" then
                events.finish[ti.task_id] = mono()
            end
        end
    end
    local s = sched.new {
        store = st, dags = { [dag.id] = dag }, schedule = false,
        log_dir = dir .. "/logs" .. n, on_event = on_event,
    }
    s.worker_id = "bench"
    local t0 = mono()
    local run = s:create_run(dag, {})
    s:process()
    if run.state ~= "success" and run.state ~= "failed" then
        s:wait_runs { run }
    end
    s:flush()
    assert(st:flush())
    local dt = mono() - t0
    s:stop()
    st:close()
    os.remove(db)
    os.remove(db .. "-wal")
    os.remove(db .. "-shm")
    return dt, run
end

-- Upstream end to downstream start, in seconds, for every edge of `dag`
-- (sorted), from the events run_once recorded.
function _M.latencies(dag, events)
    local out = {}
    for id, task in pairs(dag.tasks) do
        local s = events.start[id]
        for _, up in ipairs(task.upstream) do
            local e = events.finish[up]
            if s and e then out[#out + 1] = s - e end
        end
    end
    sort(out)
    return out
end

-- Best of `reps` runs, then one more run with events for the latencies.
-- Returns best seconds, p50, p99 (seconds), and the last run's state.
function _M.measure(dag, dir, reps)
    local best, state
    for n = 1, reps do
        local dt, run = _M.run_once(dag, dir, n)
        state = run.state
        if state ~= "success" then return nil, "run " .. n .. " ended " .. state end
        if not best or dt < best then best = dt end
    end
    local events = {}
    local _, run = _M.run_once(dag, dir, reps + 1, events)
    if run.state ~= "success" then return nil, "latency run ended " .. run.state end
    local lat = _M.latencies(dag, events)
    return best, _M.quantile(lat, 0.5), _M.quantile(lat, 0.99), #lat
end

return _M
