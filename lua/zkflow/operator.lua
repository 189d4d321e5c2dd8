-- zkflow.operator: what every operator shares.  An operator is one module
-- (lua/zkflow/operators/<name>.lua, or the DAG folder's operators/, or on
-- package.path): its schema (name, fields, templated, sensor, ...; see
-- zkflow.dag) and its behaviour together, one of
--
--   execute(task, ctx, rt)  runs one try, in the try's coroutine: returns
--                           the XCom; raises to fail (flow.skip() and
--                           flow.fail() end it skipped / failed without
--                           retry); a sensor in reschedule mode may return
--                           {zkflow_reschedule = seconds}
--   poke(task, ctx, rt)     a sensor's check: returns done (and the XCom);
--                           the loop around it (poke_interval, timeout,
--                           soft_fail, reschedule mode) is sensor() below
--
-- `rt` is the scheduler's runtime for the try: log, sleep, spawn, env,
-- store, first_start, try_number, run, external_state.  An operator whose
-- execute never looks at it says `runtime = false`, and the scheduler does
-- not build one (the Lua operators start thousands of tries a second).
-- docs/operators.md, "Writing an operator", has a whole example.
local core = require "zkflow.core"
local template = require "zkflow.dsl.template"

local now = core.now
local min, max, type, tostring, error, pcall = math.min, math.max, type, tostring, error, pcall
local setmetatable = setmetatable

local _M = {}

--- A task's fields with its templated ones rendered for this try: index
--- it as the task (`t.cmd`, `t.retries`).
function _M.rendered(task, ctx)
    local r = template.render_task(task, ctx)
    return setmetatable(r, { __index = task })
end

local function soft(task, msg)
    if task.soft_fail then
        error({ zkflow_skip = true, msg = tostring(msg) .. " (soft_fail)" }, 0)
    end
end

--- Wraps a poke function into Airflow's sensor loop: poke until true, sleep
--- poke_interval between pokes (poke mode) or give the slot back
--- (reschedule mode); past `timeout` fail without retry, or skip with
--- soft_fail.  As in Airflow's BaseSensorOperator, the timeout counts from
--- this try's start in poke mode and from the first poke in reschedule
--- mode, and with soft_fail any error of the poke skips instead of failing.
function _M.sensor(poke)
    return function(task, ctx, rt)
        local first = task.mode == "reschedule" and rt.first_start() or now()
        local n = 0
        while true do
            local ok, done, value = pcall(poke, task, ctx, rt)
            if not ok then
                soft(task, type(done) == "table" and (done.msg or done.message) or done)
                error(done, 0)
            end
            if done then return value end
            n = n + 1
            local elapsed = now() - first
            local timeout = task.timeout or 7 * 24 * 3600
            if elapsed >= timeout then
                local msg = ("sensor timed out after %gs"):format(timeout)
                soft(task, msg)
                error({ zkflow_fail = true, msg = msg }, 0)
            end
            local interval = task.poke_interval or 60
            if task.exponential_backoff then
                interval = min(interval * 2 ^ (n - 1), task.max_wait or 3600)
            end
            interval = min(interval, max(0, timeout - elapsed))
            if task.mode == "reschedule" then
                rt.log(("not yet; rescheduled in %gs"):format(interval))
                return { zkflow_reschedule = interval }
            end
            rt.sleep(interval)
        end
    end
end

-- Executors that never use their `rt` argument, and the sensor loop made
-- for each poke function.
local pure = setmetatable({}, { __mode = "k" })
local loops = setmetatable({}, { __mode = "k" })

--- The function that runs a try of `task`: its operator's execute, or its
--- poke inside the sensor loop.
function _M.executor(task)
    local op = task.op or {}
    local fn = op.execute
    if not fn and op.poke then
        fn = loops[op.poke]
        if not fn then
            fn = _M.sensor(op.poke)
            loops[op.poke] = fn
        end
    end
    if not fn then
        return function()
            error("operator '" .. tostring(task.operator) .. "' has no execute function", 0)
        end
    end
    if op.runtime == false then pure[fn] = true end
    return fn
end

--- Whether `fn`, from executor(), needs the try's runtime.
function _M.needs_runtime(fn)
    return not pure[fn]
end

return _M
