-- zkflow.cli.runs: the `zkflow runs` and `zkflow tasks` commands.
--
-- DAG runs and their task instances as the store has them (list, show,
-- state, logs, clear), and `tasks test`, which runs one task alone in a
-- temporary store.

local core    = require "zkflow.core"
local state   = require "zkflow.state"
local output  = require "zkflow.cli.output"
local context = require "zkflow.cli.context"

local _M = {}

local stdout = io.stdout
local concat, sort = table.concat, table.sort
local fmt = string.format
local usage_error, fail = output.usage_error, output.fail
local JSON_OPTS, json_out, out = output.JSON_OPTS, output.json_out, output.out
local print_table = output.print_table
local is_null, show = output.is_null, output.show
local need, parse_date = context.need, context.parse_date
local is_file, is_dir = context.is_file, context.is_dir
local api, task_order = context.api, context.task_order

-- ---- runs -------------------------------------------------------------------

-- A whole number option from 0 to `max` (nil: no bound), else `default`.
local function count_opt(ctx, name, default, max)
    local v = ctx.opts[name]
    if v == nil then return default end
    local n = math.tointeger(tonumber(v))
    if not n or n < 0 or (max and n > max) then
        usage_error(fmt("--%s: expected a whole number from 0 to %s, got '%s'",
                        name, max and tostring(max) or "any", tostring(v)))
    end
    return n
end

-- A page of runs, newest logical date first (as Airflow's `dags
-- list-runs`), and how many more there are.
local function cmd_runs_list(ctx, args)
    local want = ctx.opts.state
    if want and not need("zkflow.dsl.util").set_of(state.RUN_STATES)[want] then
        usage_error("--state: '" .. want .. "' is not a run state (one of "
                    .. concat(state.RUN_STATES, ", ") .. ")")
    end
    local limit = count_opt(ctx, "limit", 25, 1000)
    local offset = count_opt(ctx, "offset", 0)
    local S = ctx:state(false)
    local runs, total = {}, 0
    if S then
        runs, total = S:list_runs(args[1], { state = ctx.opts.state, order = "desc",
                                             limit = limit, offset = offset })
        total = total or #runs
    end
    local more = math.max(0, total - offset - #runs)
    if ctx.json then
        local list = {}
        for i, r in ipairs(runs) do list[i] = api().run_summary(r) end
        json_out({ dag_runs = state.array(list), total_entries = total })
        return 0
    end
    if #runs == 0 then
        out(total > 0 and fmt("no runs at offset %d (%d in all)", offset, total)
            or "no runs")
        return 0
    end
    local rows = {}
    for _, r in ipairs(runs) do
        rows[#rows + 1] = { r.dag_id, r.run_id, show(r.state),
                            show(r.run_type), show(r.logical_date),
                            show(r.start_date), show(r.end_date) }
    end
    print_table({ "DAG_ID", "RUN_ID", "STATE", "TYPE", "LOGICAL_DATE",
                  "START", "END" }, rows)
    if more > 0 then
        out(fmt("... %d more (older) run%s of %d: --offset %d", more,
                more == 1 and "" or "s", total, offset + #runs))
    end
    return 0
end

local function get_run_object(ctx, dag_id, run_id)
    local S = ctx:state(false)
    local obj = S and S:run_object(dag_id, run_id)
    if not obj then
        fail("no run '" .. run_id .. "' of DAG '" .. dag_id .. "' in "
             .. ctx.db)
    end
    return obj, S
end

local function cmd_runs_show(ctx, args)
    local obj = get_run_object(ctx, args[1], args[2])
    if ctx.json then
        json_out(obj)
        return 0
    end
    out("dag_id:       ", obj.dag_id)
    out("run_id:       ", obj.run_id)
    out("state:        ", show(obj.state))
    out("run_type:     ", show(obj.run_type))
    out("logical_date: ", show(obj.logical_date))
    out("start_date:   ", show(obj.start_date))
    out("end_date:     ", show(obj.end_date))
    out("conf:         ", show(obj.conf))
    local ids = {}
    for id in pairs(obj.tasks) do ids[#ids + 1] = id end
    sort(ids)
    if #ids == 0 then
        out("tasks:        none yet")
        return 0
    end
    out("")
    local rows = {}
    for _, id in ipairs(ids) do
        local t = obj.tasks[id]
        rows[#rows + 1] = { id, show(t.state), tostring(t.try_number or 0),
                            show(t.worker), show(t.log) }
    end
    print_table({ "TASK", "STATE", "TRY", "WORKER", "LOG" }, rows)
    return 0
end

-- ---- tasks ------------------------------------------------------------------

local function cmd_tasks_state(ctx, args)
    local dag_id, run_id, task_id = args[1], args[2], args[3]
    local obj = get_run_object(ctx, dag_id, run_id)
    local t = obj.tasks[task_id]
    local st = t and not is_null(t.state) and t.state or "none"
    if ctx.json then
        json_out({ dag_id = dag_id, run_id = run_id, task_id = task_id,
                   state = st, try_number = t and t.try_number or 0,
                   waiting_for = t and t.waiting_for or core.null })
    else
        local why = t and not is_null(t.waiting_for) and t.waiting_for
        out(why and (st .. " (" .. why .. ")") or st)
    end
    return 0
end

local function cmd_tasks_logs(ctx, args)
    local dag_id, run_id, task_id = args[1], args[2], args[3]
    local S = ctx:state(false)
    local ti = S and S:get_ti(dag_id, run_id, task_id)
    local try = ctx.opts.try and tonumber(ctx.opts.try)
    if ctx.opts.try and (not try or try < 1 or try % 1 ~= 0) then
        usage_error("--try: expected a number >= 1, got '" .. ctx.opts.try
                    .. "'")
    end
    if ctx.opts.follow then
        local sok, scan = pcall(ctx.scan, ctx)
        local dag = sok and scan.dags[dag_id]
        if not need("zkflow.cli.follow").log(S, { dag_id = dag_id, run_id = run_id,
                task_id = task_id, try = try, log_dir = ctx:logs_dir(),
                task_known = dag and dag.tasks[task_id] ~= nil }) then
            fail("no task '" .. task_id .. "' in run '" .. run_id .. "' (DAG '"
                 .. dag_id .. "')")
        end
        return 0
    end
    local data, path = api().read_log(S, ti, {
        dag_id = dag_id, run_id = run_id, task_id = task_id, try = try,
        log_dir = ctx:logs_dir(),
    })
    if not data and not path then
        fail("no log for task '" .. task_id .. "' of run '" .. run_id
             .. "' (DAG '" .. dag_id .. "')")
    elseif not data then
        fail("no log at " .. path)
    end
    stdout:write(data)
    return 0
end

local function cmd_tasks_clear(ctx, args)
    local dag_id, run_id = args[1], args[2]
    local wanted = {}
    for i = 3, #args do wanted[#wanted + 1] = args[i] end
    local obj, S = get_run_object(ctx, dag_id, run_id)
    -- The DAG, when the folder has it, gives the downstream tasks.
    local dag
    if is_dir(ctx.dags) then
        local ok, scan = pcall(ctx.scan, ctx)
        dag = ok and scan.dags[dag_id] or nil
    end
    local ids, err = api().clear_set(obj, dag, wanted,
                                     ctx.opts.downstream and true or false)
    if not ids then
        fail(err)
    end
    local S2 = ctx:state(true) or S
    local req = { op = "clear", dag_id = dag_id, run_id = run_id,
                  downstream = ctx.opts.downstream and true or false }
    if #wanted > 0 then req.task_ids = state.array(ids) end
    local path = S2:add_request(req)
    if ctx.json then
        json_out({ dag_id = dag_id, run_id = run_id,
                   task_ids = state.array(ids), request = path })
    else
        out(fmt("clearing %d task instance(s) of %s %s:", #ids, dag_id,
                run_id))
        for _, id in ipairs(ids) do
            local t = obj.tasks[id]
            out("  ", id, t and (" (was " .. show(t.state) .. ")") or "")
        end
    end
    return 0
end

-- A copy of `dag` in which task `task_id` runs alone, as Airflow's
-- `tasks test` runs it: no upstream, one try (retries 0, no
-- depends_on_past), no DAG callbacks or dagrun_timeout.  Its direct
-- downstream tasks stand in as `empty` tasks, so that a branch can choose
-- among them and a short-circuit skip them as in the real DAG.  The DAG's
-- settings (params, schedule, tags, ...) are kept for the task's context.
-- `xcoms` ({[task_id] = value}, from --xcom) adds upstream stand-ins, Lua
-- tasks that return those values, so that the task pulls them as it
-- would its real upstreams' XComs; the task then runs whatever they end
-- in (trigger rule always).
local function single_task_dag(dag, task_id, xcoms)
    local task = dag.tasks[task_id]
    local downs = task.downstream or {}
    local ok, skel = pcall(need("zkflow.dsl.dag").new, {
        id = dag.id,
        tasks = function(t)
            local ups = {}
            for id, v in pairs(xcoms or {}) do
                ups[#ups + 1] = t.lua { id = id, run = function() return v end }
            end
            local root = t.empty { id = task_id, after = ups }
            for _, d in ipairs(downs) do
                t.empty { id = d, after = { root } }
            end
        end,
    })
    if not ok then
        fail("tasks test: cannot isolate task '" .. task_id .. "': "
             .. tostring(skel))
    end
    local copy = setmetatable({}, getmetatable(dag))
    for k, v in pairs(dag) do copy[k] = v end
    copy.on_success, copy.on_failure, copy.dagrun_timeout = nil, nil, nil
    copy.tasks, copy.order, copy.topo = skel.tasks, skel.order, skel.topo
    copy.roots, copy.leaves = skel.roots, skel.leaves
    copy.zkf_starts, copy.cron_obj = nil, nil
    local t = setmetatable({}, getmetatable(task))
    for k, v in pairs(task) do t[k] = v end
    t.upstream, t.downstream = skel.tasks[task_id].upstream, skel.tasks[task_id].downstream
    if #t.upstream > 0 then t.trigger_rule = "always" end
    t.retries, t.depends_on_past = 0, false
    t.exe, t.id_json = nil, nil
    copy.tasks[task_id] = t
    return copy
end

local function cmd_tasks_test(ctx, args)
    local dag_id, task_id = args[1], args[2]
    local date
    if ctx.opts.date then
        parse_date(ctx.opts.date, "--date")
        date = ctx.opts.date
    end
    local dag = ctx:dag(dag_id)
    if not dag.tasks[task_id] then
        local ids = task_order(dag)
        fail("no task '" .. task_id .. "' in DAG '" .. dag_id .. "'"
             .. need("zkflow.dsl.dag").suggest(task_id, ids)
             .. " (its tasks: " .. concat(ids, ", ") .. ")")
    end
    local xcoms = context.xcom_args(ctx.opts.xcom, dag, task_id)
    -- A temporary embedded store, whatever --db or --zk say: nothing of
    -- this try is recorded where the scheduler would see it.
    local sched = need("zkflow.scheduler")
    local ok, res = pcall(sched.test, single_task_dag(dag, task_id, xcoms),
                          { date = date, dags_dir = ctx.dags })
    if not ok then
        fail(type(res) == "table" and (res.msg or core.json_encode(res))
             or tostring(res))
    end
    local ti = res.tasks and res.tasks[task_id] or {}
    local st = is_null(ti.state) and "none" or tostring(ti.state)
    local xcom = ti.xcom
    if xcom == nil then xcom = core.null end
    -- null when the try wrote no log (a quiet Lua task)
    local log = (not is_null(ti.log) and is_file(ti.log)) and ti.log
                or core.null
    if ctx.json then
        json_out({ dag_id = dag_id, task_id = task_id, state = st,
                   try_number = ti.try_number or 0, xcom = xcom,
                   log = log })
    else
        out(fmt("%s.%s: %s (try %s, run %s)", dag_id, task_id, st,
                tostring(ti.try_number or 0), tostring(res.run_id)))
        local xok, xs = pcall(core.json_encode, xcom, JSON_OPTS)
        out("xcom: ", xok and xs or tostring(xcom))
        out("log:  ", is_null(log) and "- (the try wrote none)" or log)
    end
    return (st == "success" or st == "skipped") and 0 or 1
end

_M.runs_list, _M.runs_show = cmd_runs_list, cmd_runs_show
_M.tasks_test, _M.tasks_state, _M.tasks_logs, _M.tasks_clear =
    cmd_tasks_test, cmd_tasks_state, cmd_tasks_logs, cmd_tasks_clear

return _M
