-- zkflow: the DAG-facing API (`local flow = require "zkflow"`).
--
-- Building DAGs needs nothing but this file and zkflow.dsl.dag; the loop-driven
-- helpers (sleep, run, spawn, test, cron) reach for the C module and the
-- scheduler only when they are called, so DAG files validate in plain
-- lua5.4 without build/zkflow/core.so.

local dag = require "zkflow.dsl.dag"

local _M = { version = "0.1.0" }

local error, setmetatable, type, tostring = error, setmetatable, type, tostring
local getinfo = debug.getinfo

dag.mark_internal()

--- Builds and validates a DAG; see docs/dsl.md for the fields.  Raises one
--- error that lists every problem with its file and line.
function _M.dag(spec)
    local d = dag.new(spec)
    return d
end

--- Links each argument to the next; arguments are tasks or lists of tasks
--- (Airflow's chain: two adjacent lists are linked pairwise).  Returns the
--- last argument.
_M.chain = dag.chain

local EVERY_MT = {
    __tostring = function(s) return "every " .. tostring(s.every) .. "s" end,
}

--- A fixed-interval schedule: `schedule = flow.every(300)`.
function _M.every(seconds)
    if type(seconds) ~= "number" or seconds ~= seconds or seconds <= 0 then
        error("flow.every: 'seconds' must be a number > 0, got " .. dag.show(seconds), 2)
    end
    return setmetatable({ every = seconds }, EVERY_MT)
end

--- A parsed cron expression from the C module: `flow.cron(expr):next(t)`.
function _M.cron(expr)
    local c = require("zkflow.core").cron(expr)
    return c
end

--- Suspends the calling task's coroutine for `s` seconds (the loop goes on).
function _M.sleep(s)
    return require("zkflow.async").sleep(s)
end

--- Runs `fn` as a coroutine on a loop until it returns (plain lua5.4).
function _M.run(fn)
    return require("zkflow.async").run(fn)
end

--- Starts another coroutine on the running loop.
function _M.spawn(fn)
    return require("zkflow.async").spawn(fn)
end

--- Runs one DAG run to its end; returns the `dags test --json` table.
function _M.test(file_or_dag, opts)
    return require("zkflow.node").test(file_or_dag, opts)
end

-- Control-flow errors raised inside tasks.  They are tables so that the
-- scheduler can tell them from failures by type, not by parsing text; the
-- __tostring keeps them readable in logs and in uncaught tracebacks.
local function where(level)
    local info = getinfo(level + 1, "Sl")
    if info and info.currentline and info.currentline > 0 then
        return info.short_src .. ":" .. info.currentline
    end
    return nil
end

local SKIP_MT = {
    __tostring = function(e)
        local s = e.msg and ("task skipped: " .. tostring(e.msg)) or "task skipped"
        return e.where and (e.where .. ": " .. s) or s
    end,
}

local FAIL_MT = {
    __tostring = function(e)
        local s = "task failed: " .. tostring(e.msg or "flow.fail()")
        return e.where and (e.where .. ": " .. s) or s
    end,
}

--- Ends the running task as skipped.
function _M.skip(msg)
    error(setmetatable({ zkflow_skip = true, msg = msg, where = where(2) }, SKIP_MT), 2)
end

--- Ends the running task as failed, without retries.
function _M.fail(msg)
    error(setmetatable({ zkflow_fail = true, msg = msg, where = where(2) }, FAIL_MT), 2)
end

--- True when `err` was raised by flow.skip().
function _M.is_skip(err)
    return type(err) == "table" and err.zkflow_skip == true
end

--- True when `err` was raised by flow.fail().
function _M.is_fail(err)
    return type(err) == "table" and err.zkflow_fail == true
end

-- Time helpers shared with the scheduler and handy in DAG files.
_M.parse_time = dag.parse_time
_M.iso = dag.iso

return _M
