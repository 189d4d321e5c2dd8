-- zkflow.cli.follow: commands that watch work another process does.
--
-- `dags trigger --wait` follows a run to its end (progress on stderr);
-- `tasks logs -f` prints a try's log as it grows, until the try ends.
-- Both read the store as every other command does, so they work beside a
-- standalone, an nginx worker or a cluster alike; they poll (a few times a
-- second) because a try's log file is not a store node that can be
-- watched, and one loop for both is simpler than watches for one.

local state   = require "zkflow.state"
local context = require "zkflow.cli.context"

local _M = {}

local stdout, stderr = io.stdout, io.stderr
local fmt = string.format
local need = context.need

-- Seconds between two looks.
_M.INTERVAL = 0.2

local function sleep(s)
    need("zkflow.async").sleep(s)
end

-- Follows run `run_id` of `dag_id` in S until it has finished; writes each
-- task's state change to stderr as "DAG RUN: task TASK STATE".  `owner`
-- says whether a scheduler runs this store's runs (nil: unknown); without
-- one, says once that the run waits for one.  Returns the run's state.
function _M.run(S, dag_id, run_id, owner)
    local seen = {}
    local said_state
    if owner == false then
        stderr:write(fmt("zkflow: no scheduler runs this store's runs yet: run %s "
                         .. "waits for one (zkflow standalone)\n", run_id))
    end
    while true do
        local obj = S:run_object(dag_id, run_id)
        if obj then
            -- in the order they started, as the scheduler ran them
            local ids = {}
            for id in pairs(obj.tasks) do ids[#ids + 1] = id end
            local function started(id)
                local d = obj.tasks[id].start_date
                return type(d) == "string" and d or "~"
            end
            table.sort(ids, function(a, b)
                if started(a) ~= started(b) then return started(a) < started(b) end
                return a < b
            end)
            for _, id in ipairs(ids) do
                local t = obj.tasks[id]
                local st = type(t.state) == "string" and t.state or "none"
                local key = st .. "/" .. tostring(t.try_number)
                if seen[id] ~= key and st ~= "none" then
                    seen[id] = key
                    local why = (st == "failed" or st == "up_for_retry")
                        and type(t.error) == "string" and (": " .. t.error:match("^[^\n]*"))
                    stderr:write(fmt("%s %s: task %s %s%s%s\n", dag_id, run_id, id, st,
                                     (tonumber(t.try_number) or 0) > 1
                                     and (" (try " .. t.try_number .. ")") or "", why or ""))
                end
            end
            if obj.state ~= said_state then
                said_state = obj.state
                stderr:write(fmt("%s %s: run %s\n", dag_id, run_id, tostring(obj.state)))
            end
            if state.RUN_FINISHED[obj.state] then
                return obj.state
            end
        end
        sleep(_M.INTERVAL)
    end
end

-- Whether try `try` of task instance `ti` is over: the task instance has
-- moved on to a later try, or ended (or waits for its next try).
local function try_over(ti, try)
    if not ti then return false end
    local n = tonumber(ti.try_number) or 0
    if n > try then return true end
    if n < try then return false end
    return state.TI_FINISHED[ti.state] or ti.state == "up_for_retry"
        or ti.state == "up_for_reschedule"
end

-- Prints the log of a try as it grows, through read_log (the file where
-- this machine has it, else the copy a cluster's worker leaves in the
-- store when the try ends), until the try is over.  o: dag_id, run_id,
-- task_id, try (nil: the last, once one started), log_dir, task_known
-- (false when the DAG has no such task).  Returns true, or nil when the
-- task instance does not exist and will not.
function _M.log(S, o)
    local read_log = need("zkflow.api").read_log
    local printed = 0
    local said_remote = false
    if not S then return nil end
    local ti
    while true do
        ti = S:get_ti(o.dag_id, o.run_id, o.task_id)
        if not ti then
            -- A task instance appears when the scheduler first looks at
            -- its task: wait while the run is there and not over, unless
            -- the DAG says there is no such task.
            local run = S:get_run(o.dag_id, o.run_id)
            if not run or state.RUN_FINISHED[run.state] or o.task_known == false then
                return nil
            end
        end
        local try = o.try or tonumber(ti and ti.try_number) or 0
        local over = try > 0 and try_over(ti, try)
        if try > 0 then
            local data = read_log(S, ti, {
                dag_id = o.dag_id, run_id = o.run_id, task_id = o.task_id,
                try = try, log_dir = o.log_dir,
            })
            if data and #data > printed then
                stdout:write(data:sub(printed + 1))
                stdout:flush()
                printed = #data
            elseif not data and not over and not said_remote
                    and ti and ti.state == "running" and type(ti.worker) == "string" then
                said_remote = true
                stderr:write(fmt("zkflow: try %d runs on %s, whose log file this machine "
                                 .. "does not have: it is printed when the try ends\n",
                                 try, ti.worker))
            end
        end
        if over then
            return true
        end
        sleep(_M.INTERVAL)
    end
end

return _M
