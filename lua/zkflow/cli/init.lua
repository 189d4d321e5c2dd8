-- zkflow.cli: the `zkflow` command line.
--
-- A git-style command table: one entry {name, fn, help, usage, opts, args}
-- per command, families ("dags", "runs", "tasks", ...) holding their own
-- table of verbs, and one cmd_<noun>_<verb> function each.  core/cli/main.c
-- calls _M.main(argv) in a coroutine on the engine's loop, so commands may
-- wait (a backfill runs its scheduler here) without blocking anything.
--
-- stdout carries data (`--json` for machines), stderr carries errors as
-- "zkflow: <message>".  Exit codes: 0 ok, 1 failed work, 2 usage error.

local core  = require "zkflow.core"
local state = require "zkflow.state"
local time  = require "zkflow.time"

local _M = {}

local stdout, stderr = io.stdout, io.stderr
local concat, insert, sort = table.concat, table.insert, table.sort
local fmt, rep = string.format, string.rep

-- Returned by a command that keeps serving (standalone): the host keeps
-- the loop running until a signal instead of exiting.
_M.KEEP_RUNNING = setmetatable({}, {
    __tostring = function() return "zkflow.cli.KEEP_RUNNING" end,
})

-- Modules that load DAGs or run the scheduler are required on first use,
-- so that `--help` and the store commands work even when one of them does
-- not load.
local function need(name)
    return require(name)
end

-- ---- errors ---------------------------------------------------------------

-- Raised (as tables) by commands and caught by main(): a usage error names
-- the command whose --help would have helped.
local function usage_error(msg, cmd)
    error({ zkflow_exit = 2, msg = msg, cmd = cmd }, 0)
end

local function fail(msg)
    error({ zkflow_exit = 1, msg = msg }, 0)
end

local JSON_OPTS = { sort_keys = true }

local function json_out(v)
    stdout:write(core.json_encode(v, JSON_OPTS), "\n")
end

local function out(...)
    stdout:write(...)
    stdout:write("\n")
end

local function warn(msg)
    stderr:write("zkflow: ", msg, "\n")
end

-- Prints rows (lists of strings) as aligned columns.
local function print_table(header, rows)
    local widths = {}
    local all = { header }
    for _, r in ipairs(rows) do all[#all + 1] = r end
    for _, r in ipairs(all) do
        for i, cell in ipairs(r) do
            cell = tostring(cell)
            if not widths[i] or #cell > widths[i] then widths[i] = #cell end
        end
    end
    for _, r in ipairs(all) do
        local cells = {}
        for i, cell in ipairs(r) do
            cell = tostring(cell)
            if i < #r then
                cell = cell .. rep(" ", widths[i] - #cell)
            end
            cells[i] = cell
        end
        out((concat(cells, "  "):gsub("%s+$", "")))
    end
end

-- Aligned columns without a header line.
local function print_rows(rows)
    local widths = {}
    for _, r in ipairs(rows) do
        for i, cell in ipairs(r) do
            if not widths[i] or #cell > widths[i] then widths[i] = #cell end
        end
    end
    for _, r in ipairs(rows) do
        local cells = {}
        for i, cell in ipairs(r) do
            cells[i] = i < #r and (cell .. rep(" ", widths[i] - #cell)) or cell
        end
        out(concat(cells, "  "))
    end
end

local function is_null(v)
    return v == nil or v == core.null
end

local function show(v)
    if is_null(v) then return "-" end
    if type(v) == "table" then return core.json_encode(v) end
    return tostring(v)
end

local function dirname(p)
    local d = p:match("^(.*)/[^/]*$")
    if d == nil then return "." end
    if d == "" then return "/" end
    return d
end

local function is_file(p)
    local st = core.stat(p)
    return st ~= nil and st.type == "file"
end

local function is_dir(p)
    local st = core.stat(p)
    return st ~= nil and st.type == "dir"
end

-- ---- context: global options, the store, the DAG folder -------------------

local Ctx = {}
Ctx.__index = Ctx

local function new_ctx(defaults)
    defaults = defaults or {}
    local env = os.getenv
    return setmetatable({
        db      = defaults.db or env("ZKFLOW_DB") or "./zkflow.db",
        dags    = defaults.dags or env("ZKFLOW_DAGS") or "./dags",
        root    = defaults.root or env("ZKFLOW_ROOT") or "/zkflow",
        zk      = defaults.zk or env("ZKFLOW_ZK"),
        -- Digest credentials and the ACL of every node created; the
        -- environment keeps a password out of `ps`.
        zk_auth = defaults.zk_auth or env("ZKFLOW_ZK_AUTH"),
        zk_acl  = defaults.zk_acl or env("ZKFLOW_ZK_ACL"),
        db_sync = defaults.db_sync,
        log_dir = defaults.log_dir,
        json    = false,
        opts    = {},
        stores  = {},
        session_listeners = {},
    }, Ctx)
end

-- The store behind the commands.  With `create` false and no database file
-- yet, returns nil: reading commands then see an empty store instead of
-- leaving a new zkflow.db behind.
function Ctx:store(create)
    if self.st then return self.st end
    if self.zk and self.zk ~= "" then
        local hosts = self.zk:gsub("^zk://", "")
        local ok, st, err = pcall(core.store, "zk://" .. hosts, {
            timeout = self.session_timeout or 10,
            auth = self.zk_auth, acl = self.zk_acl,
            on_session = function(st_)
                for _, fn in ipairs(self.session_listeners) do
                    local cok, cerr = pcall(fn, st_)
                    if not cok then core.log("error", "session: " .. tostring(cerr)) end
                end
            end,
        })
        if not ok or not st then
            fail("cannot connect to ZooKeeper at " .. hosts .. ": "
                 .. tostring(ok and err or st))
        end
        self.st = st
        insert(self.stores, st)
        -- zk.default() in DAG code is this store (with its session events).
        local dc = need("zkflow.zk").set_default(st, { root = "/" })
        insert(self.session_listeners, function(s_) dc:notify_session(s_) end)
        return st
    end
    if not create and not is_file(self.db) then
        return nil
    end
    local ok, st, err = pcall(core.store, self.db, { sync = self.db_sync })
    if not ok or not st then
        fail("cannot open store " .. self.db .. ": "
             .. tostring(ok and err or st))
    end
    self.st = st
    insert(self.stores, st)
    need("zkflow.zk").set_default(st, { root = "/" })
    return st
end

-- The state accessor, or nil when there is no store and `create` is false.
function Ctx:state(create)
    local st = self:store(create)
    if not st then return nil end
    self.S = self.S or state.new(st, self.root)
    return self.S
end

function Ctx:logs_dir()
    return self.opts["log-dir"] or self.log_dir or (dirname(self.db) .. "/logs")
end

-- Commits and closes what the command opened (a one-shot command ends
-- before the loop turn that would commit its writes).
function Ctx:close()
    for _, st in ipairs(self.stores) do
        pcall(st.flush, st)
        pcall(st.close, st)
    end
    self.stores, self.st, self.S = {}, nil, nil
end

-- Scans the DAG folder: {dags = {[id] = dag}, errors = {[file] = msg}}.
-- The DAGs pushed to the store (zkflow.pushed) are part of the scan and
-- win over the folder's; with a store that has some, the folder may be
-- missing.
function Ctx:scan(dir)
    dir = dir or self.dags
    local st = self:store(false)
    local pushed
    if st then
        local ok, p = pcall(need("zkflow.pushed").load, st, self.root, { dags_dir = dir })
        if ok then pushed = p else warn("pushed DAGs: " .. tostring(p)) end
    end
    local res
    if is_dir(dir) then
        res = need("zkflow.loader").scan(dir)
    elseif pushed and next(pushed.files) then
        res = { dags = {}, errors = {}, files = {} }
    else
        fail("no DAG folder '" .. dir .. "' (use --dags DIR or ZKFLOW_DAGS)")
    end
    res.dags = res.dags or {}
    res.errors = res.errors or {}
    if pushed then need("zkflow.pushed").merge(res, pushed) end
    return res
end

-- The DAG `id` from the DAG folder, or exit 1.
function Ctx:dag(id)
    local scan = self:scan()
    local dag = scan.dags[id]
    if dag then
        return dag, scan
    end
    local msg = "no DAG '" .. id .. "' in " .. self.dags
    local files = {}
    for file in pairs(scan.errors) do files[#files + 1] = file end
    if #files > 0 then
        sort(files)
        msg = msg .. " (import errors in " .. concat(files, ", ")
              .. ": see 'zkflow dags list')"
    end
    fail(msg)
end

local function parse_date(s, what)
    local t, err = time.parse(s)
    if not t then
        usage_error(what .. ": " .. err)
    end
    return t
end

-- ---- views shared with the HTTP API ---------------------------------------

local function api()
    return need("zkflow.api")
end

-- Task ids of a dag in topological order.
local function task_order(dag)
    local order = dag.topo or dag.order
    if type(order) == "table" and #order > 0 then
        local ids = {}
        for i, v in ipairs(order) do
            ids[i] = type(v) == "table" and v.id or v
        end
        return ids
    end
    local ids = {}
    for id in pairs(dag.tasks or {}) do ids[#ids + 1] = id end
    sort(ids)
    return ids
end

-- ---- commands: standalone, scheduler, api, worker --------------------------

local function parse_listen(s)
    local addr, port = s:match("^%[?([^%]]*)%]?:(%d+)$")
    if not addr then
        port = s:match("^(%d+)$")
        addr = "127.0.0.1"
    end
    port = tonumber(port)
    if not port or port > 65535 then
        usage_error("--api: expected ADDR:PORT, got '" .. s .. "'")
    end
    if addr == "" then addr = "0.0.0.0" end
    return addr, port
end

-- Formats a scheduler event (kind, run or task instance) for the
-- daemon's log: "ti_finished etl/manual__.../load success try 1".
local function event_line(kind, obj)
    if type(obj) ~= "table" then
        return tostring(kind) .. " " .. tostring(obj)
    end
    if kind == "dag_loaded" or kind == "dag_removed" then
        return fmt("%s %s version %s from %s", kind, tostring(obj.id),
                   tostring(obj.source_hash), tostring(obj.file))
    end
    local run = type(obj.run) == "table" and obj.run or obj
    local where = tostring(run.dag_id) .. "/" .. tostring(run.run_id)
    if obj.task_id then
        where = where .. "/" .. tostring(obj.task_id)
    end
    local line = tostring(kind) .. " " .. where .. " " .. tostring(obj.state)
    if obj.task_id and obj.try_number then
        line = line .. " try " .. tostring(obj.try_number)
    end
    if type(obj.error) == "string" and obj.state ~= "success" then
        -- the first line; the traceback is in the task's log
        line = line .. ": " .. obj.error:match("^[^\n]*")
    end
    return line
end

local function count_dags(provider)
    local n = 0
    for _ in pairs(provider().dags) do n = n + 1 end
    return n
end

local function start_api(h, listen)
    local addr, port = parse_listen(listen)
    if not core.api_listen then
        warn("this build has no HTTP front door; serving without the API")
        return nil
    end
    api().serve(h)
    local ok, err = core.api_listen(addr, port, function(req)
        return h:handle(req)
    end)
    if not ok then
        fail("api: " .. tostring(err))
    end
    return fmt("http://%s:%d/", addr, port)
end

-- Keeps what a serving command started reachable after main() returns,
-- and lets the host's shutdown stop it.
local running = {}

-- The cluster's log folder: --log-dir, else ./logs (there is no database
-- file to sit beside).
local function cluster_logs(ctx)
    local d = ctx.opts["log-dir"] or ctx.log_dir or "logs"
    if d:sub(1, 1) ~= "/" then
        local cwd = os.getenv("PWD")
        if cwd then d = cwd .. "/" .. d:gsub("^%./", "") end
    end
    return d
end

local function positive_int(ctx, name)
    local v = ctx.opts[name]
    if v == nil then return nil end
    local n = tonumber(v)
    if not n or n < 1 or n ~= math.floor(n) then
        usage_error("--" .. name .. ": expected a whole number >= 1, got '"
                    .. tostring(v) .. "'")
    end
    return math.tointeger(n)
end

local function queue_list(ctx)
    local v = ctx.opts.queues
    if v == nil then return nil end
    local list = {}
    for q in tostring(v):gmatch("[^,]+") do
        if not q:match("^[%w_.-]+$") then
            usage_error("--queues: '" .. q .. "' is not a queue name "
                        .. "(letters, digits, '_', '.', '-')")
        end
        list[#list + 1] = q
    end
    if #list == 0 then usage_error("--queues: no queue named") end
    return list
end

-- Builds what a serving command runs through the composition root
-- (zkflow.node), the same assembly as the embedded engine's.
local function serve(ctx, dir, with_sched, with_api, with_worker)
    dir = dir or ctx.dags
    local on_zk = ctx.zk and ctx.zk ~= ""
    if not is_dir(dir) and not on_zk then
        fail("no DAG folder '" .. dir .. "'")
    end
    ctx.dags = dir
    local st = ctx:store(true)
    local folder = dir
    if on_zk and not is_dir(dir) then
        -- A cluster member may live on pushed DAGs alone.
        warn("no DAG folder '" .. dir .. "': only the DAGs pushed to "
             .. "ZooKeeper (zkflow dags push) run here")
        folder = nil
    end
    local slots = with_worker and positive_int(ctx, "slots")
    local n, err = need("zkflow.node").start {
        store = st, zk = on_zk, db = ctx.db, root = ctx.root,
        dags_dir = folder,
        log_dir = on_zk and cluster_logs(ctx) or ctx:logs_dir(),
        scheduler = with_sched, busy = "fail",
        worker = with_worker, slots = slots or nil,
        queues = with_worker and queue_list(ctx) or nil,
        id = ctx.opts.id,
        worker_id = with_sched and ctx.opts.id and (ctx.opts.id .. "-worker")
            or ctx.opts.id,
        on_event = function(kind, obj)
            core.log("info", event_line(kind, obj))
        end,
        listen = function(fn) insert(ctx.session_listeners, fn) end,
        api = with_api,
    }
    if not n then
        fail(err .. ": stop it, or give this one its own --db "
             .. "(zkflow api serves the API of that store)")
    end
    running.node = n
    local url = "none"
    if with_api then
        url = start_api(n.api, ctx.opts.api or "127.0.0.1:8080") or "none"
    end
    running.ctx, running.store = ctx, st
    return n.dags, url
end

local function store_name(ctx)
    if ctx.zk and ctx.zk ~= "" then return "zk://" .. ctx.zk:gsub("^zk://", "") end
    return ctx.db
end

local function cmd_standalone(ctx, args)
    local dir = args[1] or ctx.dags
    local on_zk = ctx.zk and ctx.zk ~= ""
    local provider, url = serve(ctx, dir, true, not ctx.opts["no-api"], on_zk)
    stdout:write(fmt("zkflow standalone: %d dags loaded from %s, store %s, "
                     .. "api %s\n", count_dags(provider), dir, store_name(ctx), url))
    stdout:flush()
    return _M.KEEP_RUNNING
end

local function cmd_scheduler(ctx)
    local provider = serve(ctx, ctx.dags, true, false)
    stdout:write(fmt("zkflow scheduler: %d dags loaded from %s, store %s\n",
                     count_dags(provider), ctx.dags, store_name(ctx)))
    stdout:flush()
    return _M.KEEP_RUNNING
end

local function cmd_api(ctx)
    local _, url = serve(ctx, ctx.dags, false, true)
    stdout:write(fmt("zkflow api: store %s, api %s\n", store_name(ctx), url))
    stdout:flush()
    return _M.KEEP_RUNNING
end

local function cmd_worker(ctx)
    if not ctx.zk or ctx.zk == "" then
        usage_error("a worker takes tries from the ZooKeeper queue: give --zk "
                    .. "HOSTS or ZKFLOW_ZK (on one machine 'zkflow standalone' "
                    .. "runs the tasks itself)")
    end
    -- Bad options are usage errors before any connection is tried.
    positive_int(ctx, "slots")
    queue_list(ctx)
    local provider = serve(ctx, ctx.dags, false, false, true)
    local w = running.node.parts.worker
    stdout:write(fmt("zkflow worker %s: %d dags loaded from %s, queues %s, "
                     .. "%d slots, store %s\n", w.id, count_dags(provider),
                     ctx.dags, concat(w.queues, ","), w.slots, store_name(ctx)))
    stdout:flush()
    return _M.KEEP_RUNNING
end

-- Stops what a serving command started; the engine's shutdown calls it.
function _M.shutdown()
    if running.node then running.node:stop() end
    if core.api_close then pcall(core.api_close) end
    if running.ctx then running.ctx:close() end
    running = {}
end

-- ---- lua ------------------------------------------------------------------

local function cmd_lua(_, args)
    local file = args[1]
    local script_args = { [0] = file }
    for i = 2, #args do script_args[i - 1] = args[i] end
    -- Globals the script sets stay in its own table.
    local env = setmetatable({ arg = script_args }, { __index = _G })
    local fn, err = loadfile(file, "t", env)
    if not fn then
        warn(err)
        return 1
    end
    local ok, e = pcall(fn, table.unpack(script_args))
    if not ok then
        warn(type(e) == "table" and (e.msg or e.message or core.json_encode(e))
             or tostring(e))
        return 1
    end
    return 0
end

-- ---- version ----------------------------------------------------------------

local function cmd_version(ctx)
    if ctx.json then
        json_out({ version = core.version })
    else
        out("zkflow ", tostring(core.version))
    end
end

-- ---- dags -------------------------------------------------------------------

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
        -- Every file must load before anything is written.
        local loader = need("zkflow.loader")
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
    local sched = need("zkflow.scheduler")
    local ok, res, err = pcall(need("zkflow.node").test, target, opts)
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
        out("run ", tostring(res.run_id), ": ", tostring(res.state))
    end
    return res.state == "success" and 0 or 1
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
    if ctx.json then
        json_out({ dag_id = run.dag_id, run_id = run.run_id })
    else
        out(run.run_id)
    end
    return 0
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

-- ---- runs -------------------------------------------------------------------

local function cmd_runs_list(ctx, args)
    local S = ctx:state(false)
    local runs = S and S:list_runs(args[1], { state = ctx.opts.state }) or {}
    if ctx.json then
        local list = {}
        for i, r in ipairs(runs) do list[i] = api().run_summary(r) end
        json_out({ dag_runs = state.array(list) })
        return 0
    end
    if #runs == 0 then
        out("no runs")
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
local function single_task_dag(dag, task_id)
    local task = dag.tasks[task_id]
    local downs = task.downstream or {}
    local ok, skel = pcall(need("zkflow.dag").new, {
        id = dag.id,
        tasks = function(t)
            local root = t.empty { id = task_id }
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
    t.upstream, t.downstream = {}, skel.tasks[task_id].downstream
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
             .. need("zkflow.dag").suggest(task_id, ids)
             .. " (its tasks: " .. concat(ids, ", ") .. ")")
    end
    -- A temporary embedded store, whatever --db or --zk say: nothing of
    -- this try is recorded where the scheduler would see it.
    local sched = need("zkflow.scheduler")
    local ok, res = pcall(sched.test, single_task_dag(dag, task_id),
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

-- ---- config -----------------------------------------------------------------

local function config_key(key)
    local ok, err = need("zkflow.config").parse_key(key)
    if not ok then usage_error(err) end
    return key
end

local function cmd_config_get(ctx, args)
    local config = need("zkflow.config")
    local key = args[1] and config_key(args[1])
    local path = config.path(ctx.root)
    local st = ctx:store(false)
    local tbl = {}
    if st then
        local t, err = config.read(st, ctx.root)
        if not t then fail(err) end
        tbl = t
    end
    if not key then
        if ctx.json then
            json_out(tbl)
            return 0
        end
        local list = config.flatten(tbl)
        if #list == 0 then
            warn("no configuration in " .. path
                 .. " (zkflow config set KEY VALUE)")
        end
        for _, kv in ipairs(list) do
            out(kv[1], " = ", core.json_encode(kv[2], JSON_OPTS))
        end
        return 0
    end
    local v = config.get(tbl, key)
    if v == nil then
        fail("'" .. key .. "' is not set in " .. path)
    end
    if ctx.json then
        json_out(v)
    elseif type(v) == "string" then
        out(v)
    elseif type(v) == "table" then
        stdout:write(core.json_encode(v, { pretty = true, sort_keys = true }),
                     "\n")
    else
        out(core.json_encode(v))
    end
    return 0
end

-- Commits now, so that a write that cannot be committed is reported.
local function commit(st)
    local ok, err, detail = st:flush()
    if not ok then
        fail("store: commit: " .. tostring(err)
             .. (detail and (": " .. tostring(detail)) or ""))
    end
end

-- The known keys for `config set --help`.
local function config_help()
    local lines = { "known keys (checked when set; any other key is kept "
                    .. "as given):" }
    for _, k in ipairs(need("zkflow.config").KNOWN_KEYS) do
        lines[#lines + 1] = fmt("  %-14s %s", k[1], k[2])
    end
    lines[#lines + 1] = ""
    lines[#lines + 1] = "VALUE is JSON when it parses (8, true, null, "
                        .. "{\"a\":1}, [1,2], \"42\"), else text:"
    lines[#lines + 1] = "  zkflow config set pools.db 4          "
                        .. "-> {\"pools\":{\"db\":4}}"
    lines[#lines + 1] = "  zkflow config set team data-eng      "
                        .. "-> the string \"data-eng\""
    lines[#lines + 1] = "  zkflow config set build '\"42\"'       "
                        .. "-> the string \"42\", not the number"
    return concat(lines, "\n")
end

local function cmd_config_set(ctx, args)
    local config = need("zkflow.config")
    local key = config_key(args[1])
    local value = config.parse_value(args[2])
    local ok, err = config.check(key, value)
    if not ok then usage_error(err) end
    local st = ctx:store(true)
    local tbl, serr = config.set(st, ctx.root, key, value)
    if not tbl then fail(serr) end
    commit(st)
    if ctx.json then
        json_out({ key = key, value = value })
    else
        out(key, " = ", core.json_encode(value, JSON_OPTS))
    end
    return 0
end

local function cmd_config_unset(ctx, args)
    local config = need("zkflow.config")
    local key = config_key(args[1])
    local st = ctx:store(false)
    if not st then
        fail("'" .. key .. "' is not set in " .. config.path(ctx.root))
    end
    local tbl, err = config.unset(st, ctx.root, key)
    if not tbl then fail(err) end
    commit(st)
    return 0
end

-- ---- members ----------------------------------------------------------------

local function cmd_members(ctx)
    local S = ctx:state(false)
    local m = S and S:members()
        or { schedulers = state.array(), workers = state.array() }
    if ctx.json then
        json_out(m)
        return 0
    end
    local rows = {}
    for _, kind in ipairs({ "schedulers", "workers" }) do
        for _, x in ipairs(m[kind]) do
            local what
            if kind == "schedulers" then
                what = x.leader and "leader" or "standby"
                if x.role == "standalone" then what = "standalone" end
            else
                local n = type(x.running) == "table" and #x.running or 0
                what = fmt("%d/%s running, queues %s", n, show(x.slots),
                           type(x.queues) == "table" and concat(x.queues, ",") or "-")
            end
            rows[#rows + 1] = { kind:sub(1, -2), tostring(x.id),
                                show(x.host), show(x.pid), show(x.started), what }
        end
    end
    if #rows == 0 then
        out("no members")
    else
        print_table({ "KIND", "ID", "HOST", "PID", "STARTED", "" }, rows)
    end
    return 0
end

-- ---- zk (the store's tree) ------------------------------------------------

local function norm_path(ctx, p)
    if p == nil or p == "" then p = "/" end
    if p:sub(1, 1) ~= "/" then
        usage_error("path must start with '/': '" .. p .. "'")
    end
    if #p > 1 then p = p:gsub("/+$", "") end
    local problem = need("zkflow.zkdump").path_problem(p)
    if problem then
        fail("ZBADARGUMENTS: path '" .. p .. "': " .. problem)
    end
    local _ = ctx
    return p
end

local function cmd_zk_ls(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    local list, err
    if st then list, err = st:children(p) end
    if not list then
        fail(p .. ": " .. tostring(err or "ZNONODE"))
    end
    if ctx.json then
        json_out(state.array(list))
    else
        for _, name in ipairs(list) do out(name) end
    end
    return 0
end

local function cmd_zk_get(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    local data, stat = nil, "ZNONODE"
    if st then data, stat = st:get(p) end
    if not data then
        fail(p .. ": " .. tostring(stat))
    end
    if ctx.json then
        json_out({ path = p, data = data, stat = stat })
    else
        stdout:write(data)
        if data ~= "" and data:sub(-1) ~= "\n" then stdout:write("\n") end
    end
    return 0
end

local function cmd_zk_set(ctx, args)
    local st = ctx:store(true)
    local p = norm_path(ctx, args[1])
    local data = args[2]
    if data == nil then data = io.stdin:read("a") or "" end
    local ok, err = st:set(p, data)
    if not ok and err == "ZNONODE" then
        ok, err = st:create(p, data, { parents = true })
    end
    if not ok then fail(p .. ": " .. tostring(err)) end
    return 0
end

local function cmd_zk_rm(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    local ok, err = nil, "ZNONODE"
    if st then
        ok, err = st:delete(p, -1,
                            { recursive = ctx.opts.recursive and true or nil })
    end
    if not ok then fail(p .. ": " .. tostring(err)) end
    return 0
end

-- The dump format and the restore live in zkflow.zkdump, shared with the
-- zk_dump and zk_restore operators.
local function cmd_zk_dump(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    if not st then fail(p .. ": ZNONODE") end
    local tree, info = need("zkflow.zkdump").dump(st, p)
    if not tree then fail(info) end
    local text = need("zkflow.zkdump").encode(tree)
    if args[2] and args[2] ~= "-" then
        local ok, werr = core.write_file(args[2], text)
        if not ok then fail(tostring(werr)) end
        if not ctx.json then
            stderr:write(fmt("dump: %d nodes of %s to %s\n", info.count, p,
                             args[2]))
        end
    else
        stdout:write(text)
    end
    if ctx.json and args[2] and args[2] ~= "-" then
        json_out({ path = p, file = args[2], count = info.count,
                   bytes = info.bytes })
    end
    return 0
end

local function cmd_zk_restore(ctx, args)
    local zkdump = need("zkflow.zkdump")
    local p = norm_path(ctx, args[1])
    local text
    local src = "stdin"
    if args[2] and args[2] ~= "-" then
        local err
        src = args[2]
        text, err = core.read_file(args[2])
        if not text then fail(tostring(err)) end
    else
        text = io.stdin:read("a")
    end
    local tree, derr = zkdump.decode(text or "")
    if not tree then fail(src .. ": " .. derr) end
    local nodes, cerr = zkdump.check(tree, p)
    if not nodes then fail(src .. ": " .. cerr) end
    local dry = ctx.opts["dry-run"] and true or false
    local st = ctx:store(not dry)
    local res, rerr
    if st then
        res, rerr = zkdump.restore(st, tree, {
            path = p, overwrite = ctx.opts.overwrite, dry_run = dry })
        if not res then fail(rerr) end
    else
        -- A dry run without a store file: everything would be created.
        res = { path = p, created = #nodes, updated = 0, kept = 0,
                dry_run = true, actions = {} }
        for i, n in ipairs(nodes) do res.actions[i] = "create " .. n.path end
    end
    if ctx.json then
        json_out(res)
    else
        if dry then
            for _, a in ipairs(res.actions) do out(a) end
        end
        stderr:write(fmt("restore: %d created, %d updated, %d kept%s\n",
                         res.created, res.updated, res.kept,
                         dry and " (dry run)" or ""))
    end
    return 0
end

local function cmd_zk_health(ctx, args)
    local hosts = args[1] or ctx.zk
    if not hosts or hosts == "" then
        usage_error("zk health needs an ensemble: --zk HOSTS, ZKFLOW_ZK or "
                    .. "HOSTS", ctx.path)
    end
    local zkops = need("zkflow.zkops")
    local report, problems = zkops.health(hosts, {
        timeout = tonumber(ctx.opts.timeout) or 5 })
    if not report then usage_error("zk health: " .. tostring(problems)) end
    if ctx.json then
        json_out(report)
    else
        local rows = {}
        for _, key in ipairs(zkops.sorted_keys(report)) do
            local m = report[key]
            rows[#rows + 1] = {
                key, m.ok and "ok" or "FAILED", m.mode or "-",
                m.latency and fmt("%s/%s/%s", m.latency.min, m.latency.avg,
                                  m.latency.max) or "-",
                m.node_count and tostring(m.node_count) or "-",
                m.error or "",
            }
        end
        print_table({ "MEMBER", "STATE", "MODE", "LATENCY", "ZNODES", "" },
                    rows)
    end
    if #problems > 0 then
        for _, pr in ipairs(problems) do warn(pr) end
        return 1
    end
    return 0
end

-- ---- the command table ------------------------------------------------------

local JSON = { "json", nil, "print JSON" }

local commands = {
    { name = "standalone", fn = cmd_standalone,
      help = "scheduler, executor and HTTP API in one process",
      usage = "standalone [DIR] [--api ADDR:PORT] [--no-api]",
      args = { 0, 1 },
      more = "With --zk the process joins the cluster as a scheduler (elected) "
             .. "and a worker, and serves the API.",
      opts = { { "api", "ADDR:PORT", "serve the API and page here "
                 .. "(default 127.0.0.1:8080)" },
               { "no-api", nil, "do not serve the HTTP API" },
               { "id", "ID", "member id with --zk (default scheduler-HOST-PID)" },
               { "log-dir", "DIR", "task logs (default: beside the store; ./logs with --zk)" } } },
    { name = "scheduler", fn = cmd_scheduler,
      help = "run the scheduler on --dags DIR (with --zk: elected, tasks go to workers)",
      usage = "scheduler [--dags DIR] [--id ID]", args = { 0, 0 },
      opts = { { "id", "ID", "member id with --zk (default scheduler-HOST-PID)" },
               { "log-dir", "DIR", "task logs (default: beside the store)" } } },
    { name = "api", fn = cmd_api, help = "serve the HTTP API and page only",
      usage = "api [--api ADDR:PORT]", args = { 0, 0 },
      opts = { { "api", "ADDR:PORT", "listen here (default 127.0.0.1:8080)" } } },
    { name = "worker", fn = cmd_worker,
      help = "run tasks from the ZooKeeper queue (needs --zk)",
      usage = "worker [--dags DIR] [--queues Q1,Q2] [--slots N] [--id ID]", args = { 0, 0 },
      opts = { { "queues", "Q1,Q2", "queues to take tasks from (default: default)" },
               { "slots", "N", "tasks to run at once (default: worker_slots of "
                 .. "/config, else 4)" },
               { "id", "ID", "member id (default worker-HOST-PID)" },
               { "log-dir", "DIR", "task logs (default ./logs)" } } },
    { name = "lua", fn = cmd_lua,
      help = "run a Lua script inside zkflow's interpreter",
      usage = "lua FILE [ARGS...]", args = { 1, math.huge }, raw_after = 1 },
    { name = "dags", help = "list, show, test, trigger, pause and backfill DAGs",
      sub = {
        { name = "list", fn = cmd_dags_list,
          help = "list the DAGs of the DAG folder and its import errors",
          usage = "dags list [--dags DIR] [--json]", args = { 0, 0 },
          opts = { JSON } },
        { name = "show", fn = cmd_dags_show,
          help = "show a DAG's settings and its tasks as a tree",
          usage = "dags show DAG_ID [--json]", args = { 1, 1 },
          opts = { JSON } },
        { name = "test", fn = cmd_dags_test,
          help = "run one DAG run to its end in this process",
          usage = "dags test FILE|DAG_ID [--date ISO8601] [--json]",
          args = { 1, 1 },
          opts = { { "date", "ISO8601", "logical date of the run "
                     .. "(default now)" }, JSON } },
        { name = "trigger", fn = cmd_dags_trigger,
          help = "queue a manual run of a DAG",
          usage = "dags trigger DAG_ID [--conf JSON] [--run-id ID] "
                  .. "[--date ISO8601] [--json]",
          args = { 1, 1 },
          opts = { { "conf", "JSON", "run configuration, a JSON object" },
                   { "run-id", "ID", "the run id (default manual__<date>)" },
                   { "date", "ISO8601", "logical date (default now)" },
                   JSON } },
        { name = "pause", fn = cmd_dags_pause,
          help = "stop scheduling new runs of a DAG",
          usage = "dags pause DAG_ID", args = { 1, 1 }, opts = { JSON } },
        { name = "unpause", fn = cmd_dags_unpause,
          help = "resume scheduling a DAG",
          usage = "dags unpause DAG_ID", args = { 1, 1 }, opts = { JSON } },
        { name = "push", fn = cmd_dags_push,
          help = "store DAG files in the store (ZooKeeper), where every "
                 .. "scheduler and worker loads them",
          usage = "dags push FILE... [--json] | dags push --remove DAG_ID...",
          args = { 1, math.huge },
          more = "A pushed DAG wins over a DAG folder's file of the same id; "
                 .. "schedulers and workers watch /dags and load a push at once. "
                 .. "A file that does not load is not pushed (exit 1).",
          opts = { { "remove", nil, "take pushed DAGs out (by id)" }, JSON } },
        { name = "backfill", fn = cmd_dags_backfill,
          help = "run a DAG for every schedule interval between two dates",
          usage = "dags backfill DAG_ID --start ISO8601 --end ISO8601 [--json]",
          args = { 1, 1 },
          opts = { { "start", "ISO8601", "first logical date (included)" },
                   { "end", "ISO8601", "last logical date (included)" },
                   JSON } },
      } },
    { name = "runs", help = "list and show DAG runs",
      sub = {
        { name = "list", fn = cmd_runs_list, help = "list DAG runs",
          usage = "runs list [DAG_ID] [--state STATE] [--json]",
          args = { 0, 1 },
          opts = { { "state", "STATE", "only runs in this state" }, JSON } },
        { name = "show", fn = cmd_runs_show,
          help = "show a run and the state of its tasks",
          usage = "runs show DAG_ID RUN_ID [--json]", args = { 2, 2 },
          opts = { JSON } },
      } },
    { name = "tasks", help = "test a task; task instance state, logs and "
                             .. "clearing",
      sub = {
        { name = "test", fn = cmd_tasks_test,
          help = "run one task instance now, in this process, without its "
                 .. "dependencies and without recording it",
          usage = "tasks test DAG_ID TASK_ID [--date ISO8601] [--json]",
          args = { 2, 2 },
          opts = { { "date", "ISO8601", "logical date of the run "
                     .. "(default now)" }, JSON } },
        { name = "state", fn = cmd_tasks_state,
          help = "print the state of a task instance",
          usage = "tasks state DAG_ID RUN_ID TASK_ID [--json]",
          args = { 3, 3 }, opts = { JSON } },
        { name = "logs", fn = cmd_tasks_logs,
          help = "print the log of a task instance's try",
          usage = "tasks logs DAG_ID RUN_ID TASK_ID [--try N]",
          args = { 3, 3 },
          opts = { { "try", "N", "which try (default the last)" } } },
        { name = "clear", fn = cmd_tasks_clear,
          help = "clear task instances so that the scheduler runs them again",
          usage = "tasks clear DAG_ID RUN_ID [TASK_ID...] [--downstream] "
                  .. "[--json]",
          args = { 2, math.huge },
          opts = { { "downstream", nil, "also clear the tasks downstream" },
                   JSON } },
      } },
    { name = "config", help = "read and change the cluster configuration "
                              .. "(<root>/config)",
      sub = {
        { name = "get", fn = cmd_config_get,
          help = "print the configuration, or the value of KEY (exit 1 "
                 .. "when it is not set)",
          usage = "config get [KEY] [--json]", args = { 0, 1 },
          opts = { JSON } },
        { name = "set", fn = cmd_config_set,
          help = "set KEY (dotted, e.g. pools.db) to VALUE: JSON when it "
                 .. "parses as JSON, else the text as a string",
          usage = "config set KEY VALUE [--json]", args = { 2, 2 },
          more = function() return config_help() end,
          opts = { JSON } },
        { name = "unset", fn = cmd_config_unset,
          help = "remove KEY (exit 1 when it is not set)",
          usage = "config unset KEY", args = { 1, 1 } },
      } },
    { name = "members", fn = cmd_members,
      help = "list the schedulers and workers of the cluster",
      usage = "members [--json]", args = { 0, 0 }, opts = { JSON } },
    { name = "zk", help = "read and write the store's tree (znodes)",
      sub = {
        { name = "ls", fn = cmd_zk_ls, help = "list a node's children",
          usage = "zk ls PATH [--json]", args = { 0, 1 }, opts = { JSON } },
        { name = "get", fn = cmd_zk_get, help = "print a node's data",
          usage = "zk get PATH [--json]", args = { 1, 1 }, opts = { JSON } },
        { name = "set", fn = cmd_zk_set,
          help = "set a node's data (created with its parents if missing)",
          usage = "zk set PATH [DATA]  (DATA from stdin when left out)",
          args = { 1, 2 } },
        { name = "rm", fn = cmd_zk_rm, help = "delete a node",
          usage = "zk rm PATH [--recursive]", args = { 1, 1 },
          opts = { { "recursive", nil, "delete its children too" } } },
        { name = "dump", fn = cmd_zk_dump,
          help = "write a subtree as JSON to FILE or stdout",
          usage = "zk dump PATH [FILE] [--json]", args = { 1, 2 },
          opts = { JSON } },
        { name = "restore", fn = cmd_zk_restore,
          help = "recreate a subtree from a dump (FILE or stdin)",
          usage = "zk restore PATH [FILE] [--overwrite] [--dry-run]",
          args = { 1, 2 },
          opts = { { "overwrite", nil, "replace data of existing nodes" },
                   { "dry-run", nil, "only say what would change" },
                   JSON } },
        { name = "health", fn = cmd_zk_health,
          help = "ruok/srvr/mntr of every ensemble member (exit 1 if one "
                 .. "does not serve)",
          usage = "zk health [HOSTS] [--timeout SECONDS] [--json]",
          args = { 0, 1 },
          opts = { { "timeout", "SECONDS", "per member (default 5)" },
                   JSON } },
      } },
    { name = "version", fn = cmd_version, help = "print the version",
      usage = "version [--json]", args = { 0, 0 }, opts = { JSON } },
}

_M.commands = commands

local GLOBAL = {
    { "db", "PATH", "embedded store file (default ./zkflow.db, ZKFLOW_DB)" },
    { "dags", "DIR", "DAG folder (default ./dags, ZKFLOW_DAGS)" },
    { "root", "PATH", "root znode (default /zkflow)" },
    { "zk", "HOSTS", "ZooKeeper ensemble HOST:PORT[,...][/chroot] (ZKFLOW_ZK)" },
    { "db-sync", "MODE", "SQLite synchronous: off, normal, full or extra" },
    { "session-timeout", "SECONDS", "ZooKeeper session timeout (default 10)" },
    { "zk-auth", "USER:PASSWORD", "ZooKeeper digest credentials (ZKFLOW_ZK_AUTH)" },
    { "zk-acl", "ACL", "ACL of the nodes created: creator (default with --zk-auth), "
      .. "open, read or scheme:id:perms,... (ZKFLOW_ZK_ACL)" },
    { "json", nil, "print JSON where there is data to print" },
    { "help", nil, "show help (also -h)" },
}

local function find(list, name)
    for _, c in ipairs(list) do
        if c.name == name then return c end
    end
end

local function find_opt(list, name)
    for _, o in ipairs(list or {}) do
        if o[1] == name then return o end
    end
end

local function opt_lines(list)
    local lines = {}
    for _, o in ipairs(list) do
        local left = "--" .. o[1] .. (o[2] and (" " .. o[2]) or "")
        lines[#lines + 1] = fmt("  %-28s %s", left, o[3])
    end
    return concat(lines, "\n")
end

local function help_text(path, cmd)
    local lines = {}
    local function add(s) lines[#lines + 1] = s end
    if not cmd then
        add("usage: zkflow [OPTIONS] COMMAND [ARGS...]")
        add("")
        add("An Airflow-like workflow scheduler with Lua DAGs.")
        add("")
        add("commands:")
        for _, c in ipairs(commands) do
            add(fmt("  %-12s %s", c.name, c.help))
        end
        add("")
        add("options (anywhere on the line):")
        add(opt_lines(GLOBAL))
        add("")
        add("'zkflow COMMAND --help' tells more.  Exit codes: 0 ok, "
            .. "1 failed work, 2 usage error.")
    elseif cmd.sub then
        add("usage: zkflow " .. cmd.name .. " COMMAND [ARGS...]")
        add("")
        add(cmd.help)
        add("")
        add("commands:")
        for _, c in ipairs(cmd.sub) do
            add(fmt("  %-12s %s", c.name, c.help))
        end
        add("")
        add("'zkflow " .. cmd.name .. " COMMAND --help' tells more.")
    else
        add("usage: zkflow " .. cmd.usage)
        add("")
        add(cmd.help)
        if cmd.more then
            add("")
            add(type(cmd.more) == "function" and cmd.more() or cmd.more)
        end
        if cmd.opts and #cmd.opts > 0 then
            add("")
            add("options:")
            add(opt_lines(cmd.opts))
        end
        add("")
        add("global options: --db PATH, --dags DIR, --root PATH, --zk HOSTS, "
            .. "--db-sync MODE")
        add("(see 'zkflow --help')")
    end
    local _ = path
    return concat(lines, "\n") .. "\n"
end

local function hint_for(path)
    if path and #path > 0 then
        return "Try 'zkflow " .. concat(path, " ") .. " --help'."
    end
    return "Try 'zkflow --help'."
end

-- Applies a global option (name without dashes) to ctx; returns true when
-- it was one, and whether it took the value.
local function apply_global(ctx, name, value)
    local o = find_opt(GLOBAL, name)
    if not o then return false end
    if name == "json" then
        ctx.json = true
    elseif name == "help" then
        ctx.help = true
    elseif name == "db" then
        ctx.db, ctx.db_given = value, true
    elseif name == "dags" then
        ctx.dags = value
    elseif name == "root" then
        if value:sub(1, 1) ~= "/" then
            usage_error("--root must start with '/'")
        end
        ctx.root = value
    elseif name == "zk" then
        ctx.zk = value
    elseif name == "db-sync" then
        local ok = { off = true, normal = true, full = true, extra = true }
        if not ok[value] then
            usage_error("--db-sync: expected off, normal, full or extra, got '"
                        .. value .. "'")
        end
        ctx.db_sync = value
    elseif name == "zk-auth" then
        if not value:find(":", 1, true) then
            usage_error("--zk-auth: expected USER:PASSWORD")
        end
        ctx.zk_auth = value
    elseif name == "zk-acl" then
        ctx.zk_acl = value
    elseif name == "session-timeout" then
        if not tonumber(value) then
            usage_error("--session-timeout: expected seconds, got '"
                        .. value .. "'")
        end
        ctx.session_timeout = tonumber(value)
    end
    return true
end

-- Parses argv into (ctx, cmd, args, path).  Global options are taken
-- anywhere before `--`; a command's own options after its name.
local function parse(ctx, argv)
    local path = {}
    local level = commands
    local cmd
    local args = {}
    local i, n = 1, #argv
    local raw = false
    while i <= n do
        local a = argv[i]
        if raw then
            args[#args + 1] = a
        elseif a == "--" then
            raw = true
        elseif a == "-h" then
            ctx.help = true
        elseif a:sub(1, 2) == "--" and #a > 2 then
            local name, value = a:sub(3):match("^([^=]+)=(.*)$")
            name = name or a:sub(3)
            local o = cmd and not cmd.sub and find_opt(cmd.opts, name)
            local g = find_opt(GLOBAL, name)
            local spec = o or g
            if not spec then
                usage_error("unknown option '--" .. name .. "'", path)
            end
            if spec[2] then
                if value == nil then
                    if i == n then
                        usage_error("option '--" .. name .. "' needs a value ("
                                    .. spec[2] .. ")", path)
                    end
                    i = i + 1
                    value = argv[i]
                end
            elseif value ~= nil then
                usage_error("option '--" .. name .. "' takes no value", path)
            end
            if o then
                ctx.opts[name] = value == nil and true or value
                if name == "json" then ctx.json = true end
            else
                apply_global(ctx, name, value)
            end
        elseif a:sub(1, 1) == "-" and #a > 1 and not tonumber(a) then
            -- (a negative number is an argument: config set pools.db -1)
            usage_error("unknown option '" .. a .. "'", path)
        elseif not cmd or cmd.sub then
            local c = find(level, a)
            if not c then
                if cmd then
                    usage_error("'" .. a .. "' is not a '" .. cmd.name
                                .. "' command", path)
                end
                usage_error("'" .. a .. "' is not a zkflow command", path)
            end
            cmd = c
            path[#path + 1] = a
            level = c.sub or level
        else
            args[#args + 1] = a
            if cmd.raw_after and #args >= cmd.raw_after then
                raw = true
            end
        end
        i = i + 1
    end
    return cmd, args, path
end

-- Ids enter here as positional arguments named DAG_ID, RUN_ID or TASK_ID
-- in the command's usage (and --run-id): each is checked against
-- zkflow.ids, the rule the API and the DSL use, before a command builds a
-- store path or a file name from it.
local ID_ARGS = { DAG_ID = "dag_id", RUN_ID = "run_id", TASK_ID = "task_id" }

local function check_ids(cmd, args, opts, path)
    local idrule = require "zkflow.ids"
    local words, i = {}, 0
    for w in cmd.usage:gmatch("%S+") do
        if w:sub(1, 2) == "--" or w:sub(1, 3) == "[--" then
            break
        end
        i = i + 1
        if i > #path then
            words[#words + 1] = w
        end
    end
    for n, a in ipairs(args) do
        local w = words[n] or words[#words]
        local many = w and w:find("%.%.%.%]?$")
        if not words[n] and not many then
            break
        end
        local kind = w and ID_ARGS[w:gsub("[%[%]]", ""):gsub("%.%.%.$", "")]
        if kind then
            local ok, err = idrule.check(kind, a)
            if not ok then
                usage_error(err, path)
            end
        end
    end
    if opts["run-id"] then
        local ok, err = idrule.check("run_id", opts["run-id"])
        if not ok then
            usage_error("--run-id: " .. err, path)
        end
    end
end

-- Runs the command line `argv` (the arguments after the program name).
-- `defaults` may carry db, dags, root, zk, db_sync, log_dir (the engine's
-- options).  Returns the exit code, or _M.KEEP_RUNNING when the command
-- keeps serving.
function _M.main(argv, defaults)
    argv = argv or {}
    local ctx = new_ctx(defaults)
    local ok, code = pcall(function()
        local cmd, args, path = parse(ctx, argv)
        if ctx.help then
            stdout:write(help_text(path, cmd))
            return 0
        end
        if not cmd then
            stderr:write(help_text(path, nil))
            return 2
        end
        ctx.path = path
        if cmd.sub then
            stderr:write("zkflow: '" .. cmd.name .. "' needs a command\n")
            stderr:write(help_text(path, cmd))
            return 2
        end
        local min, max = cmd.args[1], cmd.args[2]
        if #args < min then
            usage_error("missing arguments: usage: zkflow " .. cmd.usage, path)
        end
        if #args > max then
            usage_error("too many arguments: usage: zkflow " .. cmd.usage, path)
        end
        check_ids(cmd, args, ctx.opts, path)
        ctx.path = path
        local rc = cmd.fn(ctx, args)
        if rc == nil then rc = 0 end
        return rc
    end)
    stdout:flush()
    if not ok then
        local e = code
        if type(e) == "table" and e.zkflow_exit then
            stderr:write("zkflow: ", tostring(e.msg), "\n")
            if e.zkflow_exit == 2 then
                stderr:write(hint_for(e.cmd or ctx.path), "\n")
            end
            code = e.zkflow_exit
        else
            stderr:write("zkflow: ", type(e) == "table"
                         and (e.msg or core.json_encode(e)) or tostring(e),
                         "\n")
            code = 1
        end
    end
    if code ~= _M.KEEP_RUNNING then
        ctx:close()
    end
    return code
end

return _M
