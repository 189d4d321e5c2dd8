-- zkflow.cli.context: what a command runs against.
--
-- The context (ctx) built from the global options: the store (embedded
-- file or ZooKeeper), its state accessor, the log folder and the DAG
-- folder's scan; with it the helpers the command families share: file
-- tests, date arguments, the modules required on first use and the views
-- shared with the HTTP API.

local core   = require "zkflow.core"
local state  = require "zkflow.state"
local time   = require "zkflow.time"
local output = require "zkflow.cli.output"

local _M = {}

local concat, insert, sort = table.concat, table.insert, table.sort
local usage_error, fail, warn = output.usage_error, output.fail, output.warn

-- Modules that load DAGs or run the scheduler are required on first use,
-- so that `--help` and the store commands work even when one of them does
-- not load.
local function need(name)
    return require(name)
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
    -- The environment, ZKFLOW_HOME and the built-in defaults; main()
    -- applies the command line and then the configuration file.
    local fields, sources, problems = need("zkflow.cli.settings").initial(defaults)
    local ctx = setmetatable({
        json    = false,
        opts    = {},
        stores  = {},
        session_listeners = {},
        sources = sources,
        setting_problems = problems,
    }, Ctx)
    for k, v in pairs(fields) do ctx[k] = v end
    return ctx
end

-- The store behind the commands.  With `create` false and no database file
-- yet, returns nil: reading commands then see an empty store instead of
-- leaving a new zkflow.db behind.
function Ctx:store(create)
    if self.st then return self.st end
    if self.zk and self.zk ~= "" then
        local hosts = self.zk:gsub("^zk://", "")
        local st = self:zk_connect(hosts)
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

-- A session with the ensemble at `hosts`.  Every host refusing the
-- connection fails at once with the hosts named (the session's wait would
-- take its whole timeout), and a chroot that does not exist is named as
-- such.  A serving command (ctx.serving) instead says so once per try and
-- tries again, waiting 1, 2, 4 ... 30 s, and waits for the chroot to be
-- created: its members then register as on any start.
function Ctx:zk_connect(hosts)
    local zops = need("zkflow.zk.ops")
    local async = need("zkflow.async")
    local pause = 1
    local function again(msg)
        if not self.serving then fail(msg) end
        core.log("error", ("%s; trying again in %d s"):format(msg, pause))
        async.sleep(pause)
        pause = math.min(pause * 2, 30)
    end
    while true do
        local up, why = zops.reachable(hosts, 1)
        if up then
            local st, err = self:zk_session(hosts)
            if st then
                if self:zk_chroot(st, hosts) then return st end
            else
                again(err)
            end
        else
            again("cannot connect to ZooKeeper at " .. hosts .. ": " .. why)
        end
    end
end

-- The chroot of `hosts` exists, or (serving) once it does; a one-shot
-- command fails naming it.
function Ctx:zk_chroot(st, hosts)
    local chroot = hosts:match("^[^/]*(/.+)$")
    if not chroot then return true end
    local logged = false
    while true do
        local woke = false
        local resume_fn
        local stat, err = st:exists("/", function()
            woke = true
            if resume_fn then resume_fn() end
        end)
        if stat then
            if logged then core.log("info", "ZooKeeper at " .. hosts .. ": " .. chroot .. " exists now") end
            return true
        end
        if err then
            st:close()
            if not self.serving then
                fail("cannot use ZooKeeper at " .. hosts .. ": " .. tostring(err))
            end
            return false
        end
        local msg = chroot .. " does not exist; create it or drop the chroot"
        if not self.serving then
            st:close()
            fail("ZooKeeper at " .. hosts .. ": " .. msg)
        end
        if not logged then
            core.log("error", "ZooKeeper at " .. hosts .. ": " .. msg .. " (waiting for it)")
            logged = true
        end
        if not woke then
            need("zkflow.async").wait(function(resume) resume_fn = resume end)
        end
    end
end

-- One try at a session: the store, or nil and the message.
function Ctx:zk_session(hosts)
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
        return nil, "cannot connect to ZooKeeper at " .. hosts .. ": "
             .. tostring(ok and err or st)
    end
    return st
end

-- The state accessor, or nil when there is no store and `create` is false.
-- Its reads of finished runs go to the history store (Ctx:history).
function Ctx:state(create)
    local st = self:store(create)
    if not st then return nil end
    self.S = self.S or state.new(st, self.root, { history = self:history() })
    return self.S
end

-- The history store (docs/history.md), or nil when there is none: --history
-- URL (ZKFLOW_HISTORY); else the embedded store's own file; else on
-- ZooKeeper /config's history_url.  A history that cannot be opened fails
-- the command.
function Ctx:history()
    if self.hist ~= nil then return self.hist or nil end
    local url = self.history_url
    if not url then
        if self.zk and self.zk ~= "" then
            local st = self:store(false)
            local ok, cfg = pcall(need("zkflow.config").read, st, self.root)
            url = ok and type(cfg) == "table" and type(cfg.history_url) == "string"
                  and cfg.history_url or nil
        elseif is_file(self.db) then
            url = "sqlite:" .. self.db
        end
    end
    if not url then
        self.hist = false
        return nil
    end
    local h, err = need("zkflow.history").new(url)
    if not h then fail(err) end
    self.hist = h
    return h
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
    if self.hist then pcall(self.hist.close, self.hist) end
    self.stores, self.st, self.S, self.hist = {}, nil, nil, nil
end

-- Loads DAG files with the limits the scheduler of this store uses
-- (dag_load_* in /config), for the pushed DAGs as for the folder's.
function Ctx:apply_load_limits()
    local st = self:store(false)
    if st then
        need("zkflow.node").apply_load_limits(need("zkflow.config").read(st, self.root))
    end
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
        self:apply_load_limits()
        local ok, p = pcall(need("zkflow.pushed").load, st, self.root, { dags_dir = dir })
        if ok then pushed = p else warn("pushed DAGs: " .. tostring(p)) end
    end
    local res
    if is_dir(dir) then
        res = need("zkflow.dsl.loader").scan(dir)
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

-- The values of `--xcom TASK=JSON` (a list, the option repeats) as
-- {[TASK] = value}: stand-ins for the XComs of `dag`'s tasks when task
-- `task_id` runs alone.  A usage error names a bad one.
local function xcom_args(list, dag, task_id)
    if list == nil then return nil end
    local xcoms = {}
    local ids = {}
    for id in pairs(dag.tasks) do ids[#ids + 1] = id end
    sort(ids)
    for _, a in ipairs(list) do
        local id, text = a:match("^([^=]+)=(.*)$")
        if not id then
            usage_error("--xcom: expected TASK=JSON, got '" .. a .. "'")
        end
        if id == task_id then
            usage_error("--xcom: '" .. id .. "' is the task under test")
        end
        if not dag.tasks[id] then
            usage_error("--xcom: no task '" .. id .. "' in DAG '" .. dag.id .. "'"
                        .. need("zkflow.dsl.util").suggest(id, ids))
        end
        local v, err = core.json_decode(text)
        if v == nil then
            usage_error("--xcom " .. id .. ": not JSON (" .. tostring(err)
                        .. "); a string is written '\"text\"'")
        end
        xcoms[id] = v
    end
    return xcoms
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

_M.need, _M.new, _M.parse_date = need, new_ctx, parse_date
_M.xcom_args = xcom_args
_M.dirname, _M.is_file, _M.is_dir = dirname, is_file, is_dir
_M.api, _M.task_order = api, task_order

return _M
