-- zkflow.cli.dags: the `zkflow dags` commands.
--
-- list, show, test, trigger, pause, unpause, push and backfill: the DAGs
-- of the DAG folder and of the store, their runs started from here.

local core    = require "zkflow.core"
local state   = require "zkflow.state"
local output  = require "zkflow.cli.output"
local context = require "zkflow.cli.context"

local _M = {}

local stderr = io.stderr
local concat, sort = table.concat, table.sort
local fmt = string.format
local usage_error, fail = output.usage_error, output.fail
local json_out, out = output.json_out, output.out
local print_table, print_rows = output.print_table, output.print_rows
local is_null, show = output.is_null, output.show
local need, parse_date = context.need, context.parse_date
local is_file, is_dir = context.is_file, context.is_dir
local api, task_order = context.api, context.task_order

local function cmd_dags_list(ctx)
    local scan = ctx:scan()
    local S = ctx:state(false)
    local entries = api().dag_list(scan, S)
    if ctx.json then
        json_out({ dags = entries })
        return 0
    end
    local rows, errors = {}, {}
    for _, d in ipairs(entries) do
        if not is_null(d.dag_id) then
            rows[#rows + 1] = {
                d.dag_id, show(d.file), show(d.schedule),
                d.paused and "yes" or "no",
                is_null(d.version) and "-" or tostring(d.version):sub(1, 12),
            }
        end
        if not is_null(d.import_error) then
            errors[#errors + 1] = d
        end
    end
    if #rows > 0 then
        print_table({ "DAG_ID", "FILE", "SCHEDULE", "PAUSED", "VERSION" }, rows)
    else
        out("no DAGs in ", ctx.dags)
    end
    if #errors > 0 then
        out("")
        out("import errors:")
        for _, d in ipairs(errors) do
            out("  ", show(d.file), ": ", tostring(d.import_error))
        end
    end
    return 0
end

local function print_tree(dag)
    local tasks = dag.tasks or {}
    local ids = api().ids
    local seen = {}
    local function walk(id, prefix, last, top)
        local t = tasks[id] or {}
        local label = id .. " (" .. tostring(t.operator or "?") .. ")"
        local line
        if top then
            line = label
        else
            line = prefix .. (last and "└── " or "├── ") .. label
        end
        local down = ids(t.downstream)
        if seen[id] and #down > 0 then
            out(line, " ...")
            return
        end
        out(line)
        seen[id] = true
        local child_prefix = top and "" or (prefix .. (last and "    " or "│   "))
        for i, d in ipairs(down) do
            walk(d, child_prefix, i == #down, false)
        end
    end
    for _, id in ipairs(task_order(dag)) do
        local t = tasks[id] or {}
        if #ids(t.upstream) == 0 then
            walk(id, "", true, true)
        end
    end
end

-- dags push FILE... : the files' DAGs into /dags, where every scheduler and
-- worker of the store loads them from; --remove DAG_ID... takes them out.
local function cmd_dags_push(ctx, args)
    local pushed = need("zkflow.pushed")
    local st = ctx:store(true)
    local done = {}
    if ctx.opts.remove then
        for _, id in ipairs(args) do
            local ok, err = pushed.remove(st, ctx.root, id)
            if not ok then fail(err) end
            done[#done + 1] = { dag_id = id, removed = true }
        end
    else
        -- Every file must load before anything is written, with the
        -- limits the scheduler will load it with.
        ctx:apply_load_limits()
        local loader = need("zkflow.dsl.loader")
        for _, file in ipairs(args) do
            if not is_file(file) then fail("no such file: " .. file) end
            local dags, err = loader.load_file(file, { root = is_dir(ctx.dags) and ctx.dags or nil })
            if not dags then fail("not pushed: " .. tostring(err)) end
            if #dags == 0 then fail("not pushed: " .. file .. ": the file defines no DAG") end
        end
        for _, file in ipairs(args) do
            local res, err = pushed.push(st, ctx.root, file,
                                         { dags_dir = is_dir(ctx.dags) and ctx.dags or nil })
            if not res then fail("not pushed: " .. tostring(err)) end
            for _, r in ipairs(res) do
                done[#done + 1] = { dag_id = r.dag_id, version = r.version, file = file }
            end
        end
    end
    if ctx.json then
        json_out({ dags = state.array(done) })
        return 0
    end
    for _, r in ipairs(done) do
        if r.removed then
            out("removed pushed DAG " .. r.dag_id)
        else
            out(fmt("pushed %s version %s from %s", r.dag_id, r.version, r.file))
        end
    end
    return 0
end

local function cmd_dags_show(ctx, args)
    local dag, scan = ctx:dag(args[1])
    local detail = api().dag_detail(dag, ctx:state(false), scan.errors)
    if ctx.json then
        json_out(detail)
        return 0
    end
    out("dag_id:      ", detail.dag_id)
    out("file:        ", show(detail.file))
    out("schedule:    ", show(detail.schedule))
    out("start_date:  ", show(detail.start_date))
    out("catchup:     ", show(detail.catchup))
    out("paused:      ", detail.paused and "yes" or "no")
    out("version:     ", show(detail.version))
    if not is_null(detail.description) then
        out("description: ", show(detail.description))
    end
    if detail.tags and #detail.tags > 0 then
        out("tags:        ", concat(detail.tags, ", "))
    end
    out("tasks:")
    print_tree(dag)
    return 0
end

-- Streams the logs of a test run's tasks to `w` as they grow, each line
-- prefixed by its task id ("[load] ..."), as Airflow's `dags test` shows
-- its tasks' logs; says each try's end, and for a failure its reason and
-- log.  Returns the scheduler's on_event, and stop() for the end.
local function log_streamer(w)
    local open = {}        -- task_id -> {path, pos, partial}
    local reasons = {}     -- task_id -> {error, log} of its failed try
    local function pump(id, final)
        local o = open[id]
        if not o then return end
        local f = io.open(o.path, "rb")
        if f then
            f:seek("set", o.pos)
            local data = f:read("a") or ""
            f:close()
            o.pos = o.pos + #data
            data = o.partial .. data
            local last = 1
            for line, e in data:gmatch("([^\n]*)\n()") do
                w:write("[", id, "] ", line, "\n")
                last = e
            end
            o.partial = data:sub(last)
        end
        if final and o.partial ~= "" then
            w:write("[", id, "] ", o.partial, "\n")
            o.partial = ""
        end
        w:flush()
    end
    local done = false
    local function on_event(kind, ti)
        if type(ti) ~= "table" or not ti.task_id then return end
        local id = ti.task_id
        if kind == "ti_started" and type(ti.log) == "string" then
            open[id] = { path = ti.log, pos = 0, partial = "" }
        elseif kind == "ti_finished" or kind == "ti_retry" then
            pump(id, true)
            local o = open[id]
            open[id] = nil
            local st = kind == "ti_retry" and "up_for_retry" or tostring(ti.state)
            local failed = st == "failed" or st == "up_for_retry"
            local why = failed and ti.error and tostring(ti.error):match("^[^\n]*")
            w:write("[", id, "] ", st, " (try ", tostring(ti.try_number or 0), ")",
                    why and (": " .. why) or "", "\n")
            if failed and o then
                w:write("[", id, "] log: ", o.path, "\n")
                reasons[id] = { error = why, log = o.path }
            end
            w:flush()
        end
    end
    need("zkflow.async").spawn(function()
        while not done do
            for id in pairs(open) do pump(id, false) end
            need("zkflow.async").sleep(0.1)
        end
    end)
    return on_event, function() done = true end, reasons
end

-- Removes `path` and what it holds.  os.remove first: it unlinks a file
-- or a symbolic link (never following it) and removes an empty folder;
-- only a folder it could not remove is entered.
local function rm_tree(path)
    if os.remove(path) then return end
    local names = core.listdir(path)
    if not names then return end
    for _, n in ipairs(names) do rm_tree(path .. "/" .. n) end
    os.remove(path)
end

-- Removes what is below `path` but the files in `keep` (paths), and the
-- folders left empty.
local function prune(path, keep)
    local names = core.listdir(path)
    if not names then
        if not keep[path] then os.remove(path) end
        return
    end
    for _, n in ipairs(names) do prune(path .. "/" .. n, keep) end
    os.remove(path)     -- only when empty
end

-- A new folder under $TMPDIR for a test's store.
local function test_tmpdir()
    local base = os.getenv("TMPDIR") or "/tmp"
    for _ = 1, 100 do
        local p = fmt("%s/zkflow-test-%d-%d", base, core.getpid(), math.random(1, 1e9))
        if not core.stat(p) and core.mkdirs(p) then return p end
    end
    fail("dags test: cannot make a temporary folder in " .. base)
end

local function cmd_dags_test(ctx, args)
    local target = args[1]
    local opts = { dags_dir = ctx.dags }
    if ctx.opts.date then
        parse_date(ctx.opts.date, "--date")
        opts.date = ctx.opts.date
    end
    if ctx.db_given then opts.db = ctx.db end
    if not is_file(target) and not is_dir(ctx.dags) then
        fail("no file '" .. target .. "' and no DAG folder '" .. ctx.dags
             .. "' to find a DAG of that id in")
    end
    -- Without --db the run's store and logs live in a temporary folder
    -- that goes when the test ends: passed, failed, or stopped by a signal
    -- (the guard's finalizer runs when the engine closes its Lua state).
    local tmp, logs, guard
    if not ctx.db_given then
        tmp = test_tmpdir()
        logs = tmp .. "-logs"
        opts.db, opts.log_dir = tmp .. "/zkflow.db", logs
        guard = setmetatable({}, { __gc = function() rm_tree(tmp); rm_tree(logs) end })
    end
    local sched = need("zkflow.scheduler")
    local stop, reasons
    opts.on_event, stop, reasons = log_streamer(ctx.json and stderr or io.stdout)
    local ok, res, err = pcall(need("zkflow.node").test, target, opts)
    stop()
    if guard then
        -- The store and the logs go; the log of a task that failed stays
        -- (the output names it), and nothing else.
        local keep = {}
        if ok and type(res) == "table" and res.state ~= "success" then
            for id, r in pairs(reasons or {}) do
                local ti = res.tasks and res.tasks[id]
                if ti and ti.state ~= "success" and r.log then keep[r.log] = true end
            end
        end
        rm_tree(tmp)
        prune(logs, keep)
        setmetatable(guard, nil)
        if ok and type(res) == "table" then
            res.db = nil
            for _, ti in pairs(res.tasks or {}) do
                if not keep[ti.log] then ti.log = nil end
            end
        end
    end
    if not ok then
        fail(type(res) == "table" and (res.msg or core.json_encode(res))
             or tostring(res))
    end
    if not res then
        fail(tostring(err))
    end
    if ctx.json then
        json_out(res)
    else
        -- Tasks in the DAG's order when the DAG resolves again, else by id.
        local ids, seen = {}, {}
        local rok, dag = pcall(sched.resolve_dag or error, target, opts)
        if rok and type(dag) == "table" then
            for _, id in ipairs(task_order(dag)) do
                if res.tasks and res.tasks[id] then
                    ids[#ids + 1] = id
                    seen[id] = true
                end
            end
        end
        local rest = {}
        for id in pairs(res.tasks or {}) do
            if not seen[id] then rest[#rest + 1] = id end
        end
        sort(rest)
        for _, id in ipairs(rest) do ids[#ids + 1] = id end
        local rows = {}
        for _, id in ipairs(ids) do
            local ti = res.tasks[id] or {}
            rows[#rows + 1] = { id, show(ti.state),
                                "try " .. tostring(ti.try_number or 0) }
        end
        print_rows(rows)
        for _, id in ipairs(ids) do
            local r = reasons[id]
            if r and res.tasks[id].state ~= "success" then
                out(id, ": ", r.error or "failed", " (log: ", r.log, ")")
            end
        end
        out("run ", tostring(res.run_id), ": ", tostring(res.state))
    end
    return res.state == "success" and 0 or 1
end

-- Whether a scheduler runs the runs of ctx's store: a cluster's leader,
-- or the process that holds an embedded store's lock.
local function has_owner(ctx)
    if ctx.zk and ctx.zk ~= "" then
        return need("zkflow.node").zk_owner(ctx:store(true), ctx.root) and true or false
    end
    local lock, _, busy = need("zkflow.node").own(ctx.db)
    if lock then
        lock:close()
        return false
    end
    return busy and true or nil
end

local function cmd_dags_trigger(ctx, args)
    local conf = {}
    if ctx.opts.conf then
        local v, err = core.json_decode(ctx.opts.conf)
        local mt = type(v) == "table" and getmetatable(v)
        if type(v) ~= "table" or (mt and mt.__jsontype == "array") then
            usage_error("--conf: expected a JSON object, "
                        .. (err and ("got invalid JSON: " .. tostring(err))
                            or "got " .. ctx.opts.conf))
        end
        conf = v
    end
    local ld
    if ctx.opts.date then ld = parse_date(ctx.opts.date, "--date") end
    local dag = ctx:dag(args[1])
    local S = ctx:state(true)
    local run, err = S:trigger(dag, {
        conf = conf, run_id = ctx.opts["run-id"], logical_date = ld,
    })
    if not run then
        fail(err)
    end
    if not ctx.opts.wait then
        if ctx.json then
            json_out({ dag_id = run.dag_id, run_id = run.run_id })
        else
            out(run.run_id)
        end
        return 0
    end
    -- The run id first, so that a script has it while the run goes on.
    if not ctx.json then
        out(run.run_id)
        io.stdout:flush()
    end
    -- Committed now: the scheduler sees the run while this one waits.
    local st = ctx:store(true)
    local cok, cerr = st:flush()
    if not cok then fail("store: commit: " .. tostring(cerr)) end
    local end_state = need("zkflow.cli.follow").run(S, run.dag_id, run.run_id,
                                                     has_owner(ctx))
    if ctx.json then
        json_out({ dag_id = run.dag_id, run_id = run.run_id, state = end_state })
    end
    return end_state == "success" and 0 or 1
end

local function set_paused(ctx, id, paused)
    ctx:dag(id)
    local S = ctx:state(true)
    local changed = S:set_paused(id, paused)
    if ctx.json then
        json_out({ dag_id = id, paused = paused })
    else
        out(fmt("DAG %s %s%s", id, changed and "" or "was already ",
                paused and "paused" or "unpaused"))
    end
    return 0
end

local function cmd_dags_pause(ctx, args) return set_paused(ctx, args[1], true) end
local function cmd_dags_unpause(ctx, args) return set_paused(ctx, args[1], false) end

-- The schedule intervals whose start lies in [first, last], as Airflow's
-- backfill takes them (both ends included): list of {start, stop}.
local function intervals(dag, first, last)
    local sch = dag.schedule
    local list = {}
    if sch == nil or sch == core.null then
        return nil, "DAG '" .. dag.id .. "' has no schedule to backfill"
    end
    if sch == "@once" then
        return { { first, first } }
    end
    if type(sch) == "string" then
        sch = { cron = sch }
    end
    if sch.every then
        local every = tonumber(sch.every)
        local base = dag.start_date
        if type(base) == "string" then base = state.parse_time(base) end
        base = tonumber(base) or first
        local k = math.ceil((first - base) / every)
        local t = base + k * every
        while t <= last do
            list[#list + 1] = { t, t + every }
            t = t + every
        end
        return list
    end
    if sch.cron then
        local c = core.cron(sch.cron)
        local t = c:next(math.floor(first) - 1)
        while t <= last do
            local nxt = c:next(t)
            list[#list + 1] = { t, nxt }
            t = nxt
        end
        return list
    end
    return nil, "DAG '" .. dag.id .. "': unknown schedule"
end

local function cmd_dags_backfill(ctx, args)
    local id = args[1]
    if not ctx.opts.start then usage_error("--start is required") end
    if not ctx.opts["end"] then usage_error("--end is required") end
    local first = parse_date(ctx.opts.start, "--start")
    local last = parse_date(ctx.opts["end"], "--end")
    if last < first then
        usage_error("--end is before --start")
    end
    local dag = ctx:dag(id)
    local ivs, err = intervals(dag, first, last)
    if not ivs then fail(err) end
    local S = ctx:state(true)
    -- One owner per store: a live scheduler on it (a standalone, an nginx
    -- worker, a cluster's leader) gets the runs; otherwise this process
    -- owns the store until its runs end.
    local node = need("zkflow.node")
    local lock, owner
    if ctx.zk and ctx.zk ~= "" then
        if node.zk_owner(ctx:store(true), ctx.root) then
            owner = "a scheduler leads on ZooKeeper"
        end
    else
        local busy
        lock, owner, busy = node.own(ctx.db)
        if not lock and not busy then fail(owner) end
    end
    local runs = {}
    for _, iv in ipairs(ivs) do
        local rid = state.run_id("backfill", iv[1])
        if not S:get_run(id, rid) then
            local _, terr = S:trigger(dag, {
                run_type = "backfill", run_id = rid, logical_date = iv[1],
                data_interval_start = iv[1], data_interval_end = iv[2],
            })
            if terr then fail(terr) end
        end
        runs[#runs + 1] = { id, rid, dag_id = id, run_id = rid }
    end
    local function finished()
        local n, failed = 0, 0
        for _, r in ipairs(runs) do
            local run = S:get_run(id, r.run_id)
            if run and state.RUN_FINISHED[run.state] then
                n = n + 1
                if run.state ~= "success" then failed = failed + 1 end
            end
        end
        return n, failed
    end
    local total = #runs
    local async = need("zkflow.async")
    local function progress(last_n)
        local n = finished()
        if n ~= last_n then
            stderr:write(fmt("backfill: %d/%d runs done\n", n, total))
        end
        return n
    end
    if total > 0 and finished() < total and owner then
        -- The store's owner runs them, as it runs a triggered run.
        stderr:write("backfill: " .. owner .. "; that scheduler runs these runs\n")
        local last_n
        while true do
            last_n = progress(last_n)
            if last_n >= total then break end
            async.sleep(0.5)
        end
    elseif total > 0 and finished() < total then
        local sched = need("zkflow.scheduler")
        local s = sched.new {
            store    = ctx:store(true),
            root     = ctx.root,
            dags_dir = ctx.dags,
            log_dir  = ctx:logs_dir(),
            schedule = false,
            on_event = function() end,
            history  = ctx:history(),
        }
        s:start()
        local done = false
        async.spawn(function()
            local last_n
            while not done do
                last_n = progress(last_n)
                async.sleep(0.5)
            end
        end)
        s:wait_runs(runs)
        done = true
        s:stop()
    end
    if lock then lock:close() end
    local n, failed = finished()
    stderr:write(fmt("backfill: %d/%d runs done, %d failed\n", n, total, failed))
    local list = {}
    for _, r in ipairs(runs) do
        local run = S:get_run(id, r.run_id) or {}
        list[#list + 1] = { run_id = r.run_id, state = run.state or core.null,
                            logical_date = run.logical_date or core.null }
    end
    if ctx.json then
        json_out({ dag_id = id, runs = state.array(list),
                   state = failed == 0 and "success" or "failed" })
    else
        local rows = {}
        for _, r in ipairs(list) do
            rows[#rows + 1] = { r.run_id, show(r.state) }
        end
        if #rows > 0 then print_table({ "RUN_ID", "STATE" }, rows) end
    end
    return (failed == 0 and n == total) and 0 or 1
end

_M.list, _M.show, _M.test, _M.trigger = cmd_dags_list, cmd_dags_show,
    cmd_dags_test, cmd_dags_trigger
_M.pause, _M.unpause, _M.push, _M.backfill = cmd_dags_pause, cmd_dags_unpause,
    cmd_dags_push, cmd_dags_backfill

return _M
