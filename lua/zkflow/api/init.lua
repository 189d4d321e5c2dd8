-- zkflow.api: the HTTP API router (the page it serves at "/" is web/, zkflow.web).
--
--   local api = require "zkflow.api"
--   local h = api.new{store = st, root = "/zkflow", dags = fn, scheduler = s}
--   local status, headers, body = h:handle{method = "GET",
--                                          path = "/api/v1/dags", query = {}}
--
-- The router only reads and writes the store (through zkflow.state) and
-- asks `dags()` for the current DAGs, so the same answers come from the
-- evhttp front door, the nginx module and the specs, which call handle()
-- directly.  handle() never raises: a bug answers 500 with its message.
-- The view helpers (dag_list, dag_detail, log_path, clear_set, ...) are
-- shared with the command line: they live in zkflow.api.views and are
-- re-exported here under their names.  This file is the router, its
-- routes and the checks of a request.

local core  = require "zkflow.core"
local state = require "zkflow.state"
local time  = require "zkflow.time"
local idrule = require "zkflow.ids"
local web    = require "zkflow.web"
local auth   = require "zkflow.api.auth"
local views  = require "zkflow.api.views"

local _M = {}

local concat, sort = table.concat, table.sort
local fmt = string.format
local json_encode, json_decode = core.json_encode, core.json_decode
local array = state.array
local nullable = views.nullable

-- The views (zkflow.api.views) under the names the command line calls.
for _, name in ipairs({ "ids", "schedule_string", "dag_entry", "dag_list", "dag_detail",
                        "run_summary", "log_path", "read_log", "clear_set" }) do
    _M[name] = views[name]
end

-- ---- responses ----------------------------------------------------------------

local JSON_TYPE = { ["content-type"] = "application/json" }
local TEXT_TYPE = { ["content-type"] = "text/plain; charset=utf-8" }
local HTML_TYPE = { ["content-type"] = "text/html; charset=utf-8" }
local PROM_TYPE = { ["content-type"] = "text/plain; version=0.0.4" }

local JSON_OPTS = { sort_keys = true }

local function reply_json(status, v)
    return status, JSON_TYPE, json_encode(v, JSON_OPTS)
end

-- Text that is safe in a JSON answer: a message may quote what a client
-- sent (a path with invalid UTF-8), which JSON cannot carry as is.
local function printable(msg)
    msg = tostring(msg)
    if utf8.len(msg) then
        return msg
    end
    return (msg:gsub("[\128-\255]", function(c)
        return fmt("\\x%02X", c:byte())
    end))
end

local TITLES = {
    [400] = "Bad Request", [403] = "Forbidden", [404] = "Not Found",
    [405] = "Method Not Allowed", [409] = "Conflict",
    [413] = "Request Entity Too Large", [415] = "Unsupported Media Type",
    [500] = "Internal Server Error", [503] = "Service Unavailable",
}

-- An error answer: Airflow's problem object (title, status, detail, type)
-- plus "error", the message zkflow's clients have always read.
local function reply_error(status, msg)
    msg = printable(msg)
    return reply_json(status, {
        error = msg, detail = msg, status = status,
        title = TITLES[status] or "Error", type = "about:blank",
    })
end

-- Raised inside a route to answer with an error status (and headers).
local function http_error(status, msg, headers)
    error({ http_status = status, msg = msg, headers = headers }, 0)
end

-- A 401 names the scheme to use (RFC 9110): HTTP basic, except for the
-- page, whose requests say X-Requested-With (Spring Security's rule): a
-- Basic challenge would make the browser open its own login dialog over
-- the page's form, so the page is told "Session" instead.
local function challenge(req)
    local h = req.headers or {}
    if h["x-requested-with"] then
        return { ["www-authenticate"] = 'Session realm="zkflow"' }
    end
    return { ["www-authenticate"] = 'Basic realm="zkflow"' }
end

local function is_array(v)
    local mt = type(v) == "table" and getmetatable(v)
    return mt and mt.__jsontype == "array" or false
end

local function is_object(v)
    return type(v) == "table" and not is_array(v)
end

-- The largest `conf` a run accepts, encoded: it lives in the run's record,
-- which ZooKeeper caps at 1 MiB with everything else the run holds.
_M.MAX_CONF = 256 * 1024

-- Field checkers of request bodies: each returns nil when `v` is fine,
-- else what was expected.  null means "not given" for every field.
local FIELD = {
    boolean = function(v)
        if type(v) ~= "boolean" then return "a boolean" end
    end,
    string = function(v)
        if type(v) ~= "string" then return "a string" end
    end,
    object = function(v)
        if not is_object(v) then return "an object" end
    end,
    task_ids = function(v)
        if not is_array(v) then return "a list of task ids" end
        for i, id in ipairs(v) do
            if type(id) ~= "string" then
                return "a list of task ids (item " .. i .. " is "
                       .. (type(id) == "table" and "a " .. (is_array(id) and "list" or "object")
                           or type(id)) .. ")"
            end
        end
    end,
}

local function json_type(v)
    if v == core.null then return "null" end
    if type(v) == "table" then return is_array(v) and "a list" or "an object" end
    if type(v) == "string" then return "a string" end
    return type(v) == "boolean" and "a boolean" or "a number"
end

-- The JSON body of `req` checked against `schema` ({field = FIELD kind}):
-- an object, every field of the expected type, no field the route does
-- not know (a typo would otherwise be ignored, and a wrong type act as
-- "everything": {"task_ids": {"a": 1}} once cleared a whole run).
-- Returns the object ({} for an empty body); null fields read as nil.
local function body_json(req, schema)
    local b = req.body
    if b == nil or b:match("^%s*$") then
        return {}
    end
    local v, err = json_decode(b)
    if v == nil then
        http_error(400, "bad JSON body: " .. tostring(err))
    end
    if not is_object(v) then
        http_error(400, "bad JSON body: expected an object, got " .. json_type(v))
    end
    local out, names = {}, {}
    for k in pairs(v) do names[#names + 1] = k end
    sort(names)
    for _, k in ipairs(names) do
        local kind = schema[k]
        if not kind then
            local known = {}
            for n in pairs(schema) do known[#known + 1] = n end
            sort(known)
            http_error(400, fmt("'%s': unknown field (this request takes %s)",
                                k, concat(known, ", ")))
        end
        if v[k] ~= core.null then
            local want = FIELD[kind](v[k])
            if want then
                http_error(400, fmt("'%s': expected %s, got %s", k, want,
                                    json_type(v[k])))
            end
            out[k] = v[k]
        end
    end
    return out
end

-- ---- paging -----------------------------------------------------------------

-- Lists answer a page: ?limit= (default DEFAULT_LIMIT, at most MAX_LIMIT)
-- and ?offset= (default 0), with total_entries, as Airflow's API.  Unlike
-- Airflow, which quietly caps a limit over its maximum, a limit over
-- MAX_LIMIT is a 400 naming the field: a client never gets less than it
-- asked for without being told.
_M.DEFAULT_LIMIT, _M.MAX_LIMIT = 25, 1000

local function whole(q, name, default, max)
    local v = q[name]
    if v == nil or v == "" then
        return default
    end
    local n = math.tointeger(tonumber(v))
    if not n or n < 0 or (max and n > max) then
        http_error(400, fmt("'%s': expected a whole number from 0 to %s, got '%s'",
                            name, max and tostring(max) or "any", printable(v)))
    end
    return n
end

-- The page a list request asks for: limit, offset.
local function page_query(req, default_limit)
    local q = req.query or {}
    return whole(q, "limit", default_limit or _M.DEFAULT_LIMIT, _M.MAX_LIMIT),
           whole(q, "offset", 0)
end

-- Items offset+1 .. offset+limit of `list`.
local function page_of(list, limit, offset)
    local out = {}
    for i = offset + 1, math.min(#list, offset + limit) do
        out[#out + 1] = list[i]
    end
    return array(out)
end

-- ---- the router ---------------------------------------------------------------

local Api = {}
Api.__index = Api

-- Returns a router.  o.store (borrowed), o.root ("/zkflow"), o.dags: a
-- function returning {dags = {[id] = dag}, errors = {[file] = msg}} (or the
-- two tables), o.scheduler: the running scheduler or nil, o.log_dir: where
-- task logs are when a task instance does not say, o.auth: true to ask
-- every request who sent it (users and tokens of zkflow.api.auth in the
-- same store); off by default here, the front doors decide (node.lua);
-- o.history: the history store (zkflow.history) that finished runs are
-- read from; o.connection: a function returning the ZooKeeper
-- connection's state ("connected", "suspended", "lost", "connecting"),
-- which health reports; o.counters: a function returning the running
-- scheduler's counters (zkflow.scheduler.counters) or nil, for /metrics;
-- without them /metrics reads the ones a scheduler saved in the store.
function _M.new(o)
    o = o or {}
    if not o.store then
        error("api.new: 'store' is required", 2)
    end
    local self = setmetatable({
        store = o.store,
        S = state.new(o.store, o.root, { history = o.history }),
        dags_fn = o.dags or function() return { dags = {}, errors = {} } end,
        scheduler = o.scheduler,
        connection = o.connection,
        log_dir = o.log_dir,
        auth = o.auth and auth.new(o.store, o.root) or nil,
        counters_fn = o.counters,
        started = core.now(),
    }, Api)
    return self
end

function Api:current()
    local a, b = self.dags_fn()
    if type(a) ~= "table" then
        return { dags = {}, errors = {} }
    end
    if a.dags or a.errors then
        return { dags = a.dags or {}, errors = a.errors or {} }
    end
    return { dags = a, errors = b or {} }
end

function Api:dag(id)
    local cur = self:current()
    local dag = cur.dags[id]
    if not dag then
        http_error(404, "no DAG '" .. id .. "'")
    end
    return dag, cur
end

function Api:run_object(dag_id, run_id)
    local obj = self.S:run_object(dag_id, run_id)
    if not obj then
        http_error(404, "no run '" .. run_id .. "' of DAG '" .. dag_id .. "'")
    end
    return obj
end

local routes = {}

local RUN_STATES = { queued = true, running = true, success = true, failed = true }

local SAFE_METHODS = { GET = true, HEAD = true, OPTIONS = true }

-- A route; `access`: the role it needs ("viewer" for reads, "operator"
-- for changes by default) or "public" (no credentials: health for load
-- balancers, the page, which then signs in, the login itself).
local function route(method, pattern, fn, access)
    routes[#routes + 1] = { method = method, pattern = pattern, fn = fn,
                            access = access }
end

route("GET", "/api/v1/health", function(self)
    local sched
    local s = self.scheduler
    if s then
        if type(s.status) == "function" then
            local ok, st = pcall(s.status, s)
            sched = ok and st or { status = "error", error = tostring(st) }
        else
            sched = { status = "running" }
        end
    else
        sched = { status = "none" }
    end
    local cur = self:current()
    local n, errs = 0, 0
    for _ in pairs(cur.dags) do n = n + 1 end
    for _ in pairs(cur.errors) do errs = errs + 1 end
    -- While the ZooKeeper connection is down, health says so (Curator's
    -- states), still with 200: the process lives and waits for it.
    local conn = self.connection and self.connection()
    return reply_json(200, {
        status = (conn == nil or conn == "connected") and "ok" or conn,
        zk = conn, scheduler = sched,
        store = tostring(self.store):find("zk://", 1, true) and "zk" or "sqlite",
        dags = n, import_errors = errs,
        version = nullable(core.version),
        uptime = core.now() - self.started,
    })
end, "public")

-- Airflow's default page of DAGs is 100 (the page asks for its own).
route("GET", "/api/v1/dags", function(self, _, req)
    local limit, offset = page_query(req, 100)
    local all = _M.dag_list(self:current(), self.S)
    return reply_json(200, { dags = page_of(all, limit, offset),
                             total_entries = #all })
end)

-- Files whose import failed, by file name (Airflow's importErrors).
route("GET", "/api/v1/importErrors", function(self, _, req)
    local limit, offset = page_query(req)
    local errors = self:current().errors
    local files = {}
    for file in pairs(errors) do files[#files + 1] = file end
    sort(files)
    local list = {}
    for i, file in ipairs(files) do
        list[i] = { filename = file, stack_trace = printable(errors[file]) }
    end
    return reply_json(200, { import_errors = page_of(list, limit, offset),
                             total_entries = #list })
end)

route("GET", "/api/v1/dags/{dag_id}", function(self, p)
    local dag, cur = self:dag(p.dag_id)
    return reply_json(200, _M.dag_detail(dag, self.S, cur.errors))
end)

route("PATCH", "/api/v1/dags/{dag_id}", function(self, p, req)
    local dag, cur = self:dag(p.dag_id)
    local b = body_json(req, { is_paused = "boolean", paused = "boolean" })
    local paused = b.is_paused
    if paused == nil then paused = b.paused end
    if paused == nil then
        http_error(400, "'is_paused': required (true or false)")
    end
    self.S:set_paused(dag.id, paused)
    return reply_json(200, _M.dag_entry(dag, self.S, cur.errors))
end)

-- A page of runs, newest logical date first (Airflow orders by id unless
-- asked: the newest are what a person and the page look at first).
route("GET", "/api/v1/dags/{dag_id}/runs", function(self, p, req)
    local q = req.query or {}
    local limit, offset = page_query(req)
    if q.state and not RUN_STATES[q.state] then
        http_error(400, "'state': expected one of queued, running, success, "
                        .. "failed, got '" .. printable(q.state) .. "'")
    end
    local runs, total = self.S:list_runs(p.dag_id, { state = q.state, order = "desc",
                                                     limit = limit, offset = offset })
    local with_tasks = q.tasks == "1" or q.tasks == "true"
    local list = {}
    for i = 1, math.min(#runs, limit) do
        local r = _M.run_summary(runs[i])
        if with_tasks then
            local tasks = {}
            for tid, ti in pairs(self.S:list_tis(p.dag_id, runs[i].run_id)) do
                tasks[tid] = { state = nullable(ti.state),
                               try_number = ti.try_number or 0,
                               waiting_for = nullable(ti.waiting_for) }
            end
            r.tasks = tasks
        end
        list[#list + 1] = r
    end
    return reply_json(200, { dag_runs = array(list), total_entries = total or #runs })
end)

route("POST", "/api/v1/dags/{dag_id}/runs", function(self, p, req)
    local dag = self:dag(p.dag_id)
    local b = body_json(req, { conf = "object", logical_date = "string",
                               dag_run_id = "string", run_id = "string" })
    local conf = b.conf or {}
    local size = #json_encode(conf)
    if size > _M.MAX_CONF then
        http_error(413, fmt("'conf': %d bytes encoded, over the limit of %d",
                            size, _M.MAX_CONF))
    end
    local ld
    if b.logical_date then
        local err
        ld, err = time.parse(b.logical_date)
        if not ld then http_error(400, "'logical_date': " .. err) end
    end
    local run_id = b.dag_run_id or b.run_id
    if run_id then
        local ok, err = idrule.check("run_id", run_id)
        if not ok then
            http_error(400, (b.dag_run_id and "dag_" or "") .. err)
        end
    end
    local run, err = self.S:trigger(dag, {
        conf = conf, logical_date = ld, run_id = run_id,
    })
    if not run then
        http_error(409, err)
    end
    return reply_json(201, { dag_id = run.dag_id, run_id = run.run_id,
                             state = run.state,
                             logical_date = run.logical_date })
end)

route("GET", "/api/v1/dags/{dag_id}/runs/{run_id}", function(self, p)
    return reply_json(200, self:run_object(p.dag_id, p.run_id))
end)

route("GET", "/api/v1/dags/{dag_id}/runs/{run_id}/tasks", function(self, p, req)
    local limit, offset = page_query(req)
    local obj = self:run_object(p.dag_id, p.run_id)
    local ids = {}
    for id in pairs(obj.tasks) do ids[#ids + 1] = id end
    sort(ids)
    local list = {}
    for _, id in ipairs(ids) do
        local t = obj.tasks[id]
        t.task_id = id
        list[#list + 1] = t
    end
    return reply_json(200, { task_instances = page_of(list, limit, offset),
                             total_entries = #list })
end)

route("GET", "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}",
      function(self, p)
    local obj = self:run_object(p.dag_id, p.run_id)
    local t = obj.tasks[p.task_id]
    if not t then
        http_error(404, "no task instance '" .. p.task_id .. "' in run '"
                        .. p.run_id .. "'")
    end
    t.task_id, t.dag_id, t.run_id = p.task_id, p.dag_id, p.run_id
    return reply_json(200, t)
end)

route("GET", "/api/v1/dags/{dag_id}/runs/{run_id}/tasks/{task_id}/logs",
      function(self, p, req)
    local try = req.query and req.query.try
    if try ~= nil then
        try = tonumber(try)
        if not try or try < 1 or try % 1 ~= 0 then
            http_error(400, "try: expected a number >= 1")
        end
    end
    local ti = self.S:get_ti(p.dag_id, p.run_id, p.task_id)
    if not ti and not self.S:get_run(p.dag_id, p.run_id) then
        http_error(404, "no run '" .. p.run_id .. "' of DAG '"
                        .. p.dag_id .. "'")
    end
    local data = _M.read_log(self.S, ti, {
        dag_id = p.dag_id, run_id = p.run_id, task_id = p.task_id,
        try = try, log_dir = self.log_dir,
    })
    if not data then
        http_error(404, "no log for task '" .. p.task_id .. "'"
                        .. (try and (" try " .. try) or ""))
    end
    return 200, TEXT_TYPE, data
end)

route("POST", "/api/v1/dags/{dag_id}/runs/{run_id}/clear",
      function(self, p, req)
    local b = body_json(req, { task_ids = "task_ids", downstream = "boolean",
                               include_downstream = "boolean" })
    local obj = self:run_object(p.dag_id, p.run_id)
    local wanted = {}
    for i, id in ipairs(b.task_ids or {}) do
        local ok, err = idrule.check("task_id", id)
        if not ok then http_error(400, "'task_ids': " .. err) end
        wanted[i] = id
    end
    local downstream = b.downstream == true or b.include_downstream == true
    local dag = self:current().dags[p.dag_id]
    local ids, err = _M.clear_set(obj, dag, wanted, downstream)
    if not ids then
        http_error(404, err)
    end
    local r = { op = "clear", dag_id = p.dag_id, run_id = p.run_id,
                downstream = downstream }
    if #wanted > 0 then r.task_ids = array(ids) end
    self.S:add_request(r)
    return reply_json(200, { dag_id = p.dag_id, run_id = p.run_id,
                             task_ids = array(ids) })
end)

-- ---- sessions (the page's login) ------------------------------------------

-- The cookie's attributes: HttpOnly (no script reads it), SameSite=Strict
-- (no other site's page sends it), Path the API's own (X-Zkflow-Prefix:
-- what a front door serving under a prefix, nginx's location, stripped).
local function cookie_attrs(req)
    local prefix = (req.headers or {})["x-zkflow-prefix"] or ""
    if not prefix:find("^[%w/._~-]*$") then prefix = "" end
    prefix = prefix:gsub("/+$", "")
    return "; HttpOnly; SameSite=Strict; Path=" .. prefix .. "/api/v1"
end

-- POST {"username": ..., "password": ...}: a session for that user, in a
-- cookie.  Public (it is how one gets in), but like every change it must
-- come from this site in JSON: no other site can sign a browser in.
route("POST", "/api/v1/session", function(self, _, req)
    local b = body_json(req, { username = "string", password = "string" })
    if not b.username or not b.password then
        http_error(400, "'username' and 'password': required")
    end
    if not self.auth then
        http_error(409, "this API does not ask who sends a request (auth is off)")
    end
    local value, user = self.auth:login(b.username, b.password)
    if not value then
        http_error(401, user, challenge(req))
    end
    local st, hd, bd = reply_json(200, {
        user = user.name, role = user.role,
        expires = state.iso(core.now() + auth.SESSION_SECONDS, true),
    })
    hd = { ["content-type"] = hd["content-type"],
           ["set-cookie"] = auth.COOKIE .. "=" .. value .. "; Max-Age="
                            .. auth.SESSION_SECONDS .. cookie_attrs(req) }
    return st, hd, bd
end, "public")

-- Who this request is: {user, role, auth}; user null when auth is off.
route("GET", "/api/v1/session", function(self, _, req)
    local u = req.user
    return reply_json(200, { auth = self.auth ~= nil,
                             user = u and u.name or core.null,
                             role = u and u.role or core.null })
end)

-- Signs out: the session ends in the store and the cookie is cleared.
route("DELETE", "/api/v1/session", function(self, _, req)
    if self.auth then
        self.auth:logout(auth.session_cookie(req.headers))
    end
    local st, hd, bd = reply_json(200, { user = core.null })
    hd = { ["content-type"] = hd["content-type"],
           ["set-cookie"] = auth.COOKIE .. "=; Max-Age=0" .. cookie_attrs(req) }
    return st, hd, bd
end, "public")

-- Each list (schedulers, workers) is paged alike; total_entries counts
-- both, total_schedulers and total_workers each.
route("GET", "/api/v1/members", function(self, _, req)
    local limit, offset = page_query(req)
    local m = self.S:members()
    return reply_json(200, {
        schedulers = page_of(m.schedulers, limit, offset),
        workers = page_of(m.workers, limit, offset),
        total_schedulers = #m.schedulers, total_workers = #m.workers,
        total_entries = #m.schedulers + #m.workers,
    })
end)

local function prom_label(v)
    return (tostring(v):gsub("\\", "\\\\"):gsub("\"", "\\\""):gsub("\n", "\\n"))
end

route("GET", "/metrics", function(self)
    local cur = self:current()
    local ndags, nerr, npaused = 0, 0, 0
    for id in pairs(cur.dags) do
        ndags = ndags + 1
        if self.S:is_paused(id) then npaused = npaused + 1 end
    end
    for _ in pairs(cur.errors) do nerr = nerr + 1 end
    -- Runs and task instances by state: the scheduler's counters
    -- (zkflow.scheduler.counters), never a scan of the runs.  A process
    -- that runs no scheduler (zkflow api, a cluster's standby) answers
    -- with the ones the scheduler last saved in the store.
    local c = self.counters_fn and self.counters_fn()
    if not c then
        local saved = self.S:read(self.S:path("stats", "scheduler"))
        c = type(saved) == "table" and saved or {}
    end
    local runs, tis = {}, {}
    for s, n in pairs(type(c.runs) == "table" and c.runs or {}) do
        runs[tostring(s)] = math.tointeger(n) or 0
    end
    for s, n in pairs(type(c.task_instances) == "table" and c.task_instances or {}) do
        tis[tostring(s)] = math.tointeger(n) or 0
    end
    local lines = {
        "# HELP zkflow_dags DAGs loaded from the DAG folder.",
        "# TYPE zkflow_dags gauge",
        "zkflow_dags " .. ndags,
        "# HELP zkflow_dags_paused DAGs that are paused.",
        "# TYPE zkflow_dags_paused gauge",
        "zkflow_dags_paused " .. npaused,
        "# HELP zkflow_import_errors DAG files that failed to load.",
        "# TYPE zkflow_import_errors gauge",
        "zkflow_import_errors " .. nerr,
        "# HELP zkflow_runs DAG runs by state.",
        "# TYPE zkflow_runs gauge",
    }
    -- Every run state is always reported, so a rate() has a series to read.
    for _, s in ipairs({ "queued", "running", "success", "failed" }) do
        runs[s] = runs[s] or 0
    end
    local keys = {}
    for s in pairs(runs) do keys[#keys + 1] = s end
    sort(keys)
    for _, s in ipairs(keys) do
        lines[#lines + 1] = fmt('zkflow_runs{state="%s"} %d', prom_label(s),
                                runs[s])
    end
    lines[#lines + 1] = "# HELP zkflow_task_instances Task instances by state."
    lines[#lines + 1] = "# TYPE zkflow_task_instances gauge"
    for _, s in ipairs({ "queued", "running", "success", "failed",
                         "up_for_retry", "skipped", "upstream_failed" }) do
        tis[s] = tis[s] or 0
    end
    keys = {}
    for s in pairs(tis) do keys[#keys + 1] = s end
    sort(keys)
    for _, s in ipairs(keys) do
        lines[#lines + 1] = fmt('zkflow_task_instances{state="%s"} %d',
                                prom_label(s), tis[s])
    end
    -- The same per DAG, for the DAGs the counters know.
    local per_dag = type(c.dags) == "table" and c.dags or {}
    local dag_ids = {}
    for id in pairs(per_dag) do dag_ids[#dag_ids + 1] = tostring(id) end
    sort(dag_ids)
    for _, kind in ipairs({ "runs", "task_instances" }) do
        local name = "zkflow_dag_" .. kind
        lines[#lines + 1] = "# HELP " .. name .. " The same by DAG."
        lines[#lines + 1] = "# TYPE " .. name .. " gauge"
        for _, id in ipairs(dag_ids) do
            local d = type(per_dag[id]) == "table" and per_dag[id][kind] or {}
            local states = {}
            for s in pairs(type(d) == "table" and d or {}) do states[#states + 1] = tostring(s) end
            sort(states)
            for _, s in ipairs(states) do
                lines[#lines + 1] = fmt('%s{dag_id="%s",state="%s"} %d', name, prom_label(id),
                                        prom_label(s), math.tointeger(d[s]) or 0)
            end
        end
    end
    -- The cluster: members, leadership, queues (what a cluster's alerting
    -- watches: no leader, no workers, a queue that only grows).
    local m = self.S:members()
    local leaders = 0
    for _, x in ipairs(m.schedulers) do if x.leader then leaders = leaders + 1 end end
    lines[#lines + 1] = "# HELP zkflow_members Registered members by kind."
    lines[#lines + 1] = "# TYPE zkflow_members gauge"
    lines[#lines + 1] = fmt('zkflow_members{kind="scheduler"} %d', #m.schedulers)
    lines[#lines + 1] = fmt('zkflow_members{kind="worker"} %d', #m.workers)
    lines[#lines + 1] = "# HELP zkflow_scheduler_leaders Schedulers that say they lead (1 when healthy)."
    lines[#lines + 1] = "# TYPE zkflow_scheduler_leaders gauge"
    lines[#lines + 1] = "zkflow_scheduler_leaders " .. leaders
    if #m.workers > 0 then
        lines[#lines + 1] = "# HELP zkflow_worker_running Tries a worker runs, against its slots."
        lines[#lines + 1] = "# TYPE zkflow_worker_running gauge"
        for _, w in ipairs(m.workers) do
            lines[#lines + 1] = fmt('zkflow_worker_running{worker="%s"} %d', prom_label(tostring(w.id)),
                                    type(w.running) == "table" and #w.running or 0)
        end
        lines[#lines + 1] = "# HELP zkflow_worker_slots Tries a worker may run at once."
        lines[#lines + 1] = "# TYPE zkflow_worker_slots gauge"
        for _, w in ipairs(m.workers) do
            lines[#lines + 1] = fmt('zkflow_worker_slots{worker="%s"} %d', prom_label(tostring(w.id)),
                                    math.tointeger(tonumber(w.slots) or 0) or 0)
        end
    end
    local qroot = self.S:path("queue")
    local queues = self.S:children(qroot)
    if #queues > 0 then
        sort(queues)
        lines[#lines + 1] = "# HELP zkflow_queue_depth Tries waiting for a worker, by queue."
        lines[#lines + 1] = "# TYPE zkflow_queue_depth gauge"
        for _, q in ipairs(queues) do
            lines[#lines + 1] = fmt('zkflow_queue_depth{queue="%s"} %d', prom_label(q),
                                    #self.S:children(qroot .. "/" .. q))
        end
    end
    return 200, PROM_TYPE, concat(lines, "\n") .. "\n"
end)

route("GET", "/", function()
    local page, err = web.file("index.html")
    if not page then
        http_error(500, err)
    end
    return 200, HTML_TYPE, page
end, "public")

-- ---- matching -------------------------------------------------------------------

local function unescape(s)
    return (s:gsub("%%(%x%x)", function(h)
        return string.char(tonumber(h, 16))
    end))
end

local function split(path)
    local parts = {}
    for seg in path:gmatch("[^/]+") do
        parts[#parts + 1] = unescape(seg)
    end
    return parts
end

for _, r in ipairs(routes) do
    r.parts = split(r.pattern)
end

-- The routes as {method, pattern, role}: role "public", or the one a user
-- needs when auth is on (the specs check every route against it).
function _M.route_list()
    local out = {}
    for i, r in ipairs(routes) do
        out[i] = { method = r.method, pattern = r.pattern,
                   role = r.access or (SAFE_METHODS[r.method] and "viewer" or "operator") }
    end
    return out
end

-- ---- cross-site requests -------------------------------------------------------


-- "http://Host:80" -> "host"; "https://h:8443" -> "h:8443": the form a
-- Host header has, to compare an Origin with it.
local function origin_host(origin)
    local scheme, hostport = origin:lower():match("^(%a[%w+.-]*)://([^/]+)/?$")
    if not hostport then
        return nil
    end
    if (scheme == "http" and hostport:sub(-3) == ":80")
            or (scheme == "https" and hostport:sub(-4) == ":443") then
        hostport = hostport:gsub(":%d+$", "")
    end
    return hostport
end

local function bare_host(host)
    host = host:lower()
    return (host:gsub(":80$", ""))
end

-- A request that changes state must come from this site, and in JSON:
-- a browser sends any page's form or no-cors fetch cross-site with a
-- simple content type (text/plain, a form) and no preflight, so such a
-- request is refused by its Origin (or Sec-Fetch-Site) and by its content
-- type.  A request without those headers (curl, the CLI, a host's own
-- call with zkf_engine_http) is not a browser's cross-site request.
local function check_csrf(method, req)
    if SAFE_METHODS[method] then
        return
    end
    local h = req.headers or {}
    local site = h["sec-fetch-site"]
    if site and site ~= "same-origin" and site ~= "none" then
        http_error(403, "cross-site request refused (Sec-Fetch-Site: "
                        .. site .. ")")
    end
    local origin = h.origin
    if origin and origin ~= "null" and h.host then
        local oh = origin_host(origin)
        if not oh or oh ~= bare_host(h.host) then
            http_error(403, "cross-origin request refused (Origin: " .. origin
                            .. " is not " .. h.host .. ")")
        end
    elseif origin == "null" then
        http_error(403, "cross-origin request refused (Origin: null)")
    end
    local ctype = h["content-type"]
    if ctype and not ctype:lower():find("^%s*application/json%s*;?") then
        http_error(415, "Content-Type: expected application/json, got " .. ctype)
    end
end

-- ---- who may ------------------------------------------------------------------

-- With auth on, the request's user must hold the route's role: 401 names
-- what is missing, 403 who may not do what.  Returns true when a bearer
-- token authenticated it (no browser sends one on its own, so such a
-- request needs no cross-site check; a session cookie or HTTP basic,
-- which a browser does send on its own, does).
local function check_access(self, r, method, req)
    if not self.auth or r.access == "public" then
        return false
    end
    local user, how = self.auth:authenticate(req.headers)
    if not user then
        http_error(401, how, challenge(req))
    end
    req.user = user
    local need = r.access or (SAFE_METHODS[method] and "viewer" or "operator")
    if not auth.allows(user.role, need) then
        http_error(403, fmt("user %s (%s) may not %s %s: it needs the role %s",
                            user.name, user.role, method, req.path, need))
    end
    return how == "bearer"
end

-- Path parameters are ids (dag_id, run_id, task_id): each is checked
-- against zkflow.ids after URL-decoding, so "..%2F" or "%00" never reaches
-- a store path or a file name.
local function check_params(params)
    for name, v in pairs(params) do
        if idrule.kind(name) then
            local ok, err = idrule.check(name, v)
            if not ok then
                http_error(400, err)
            end
        end
    end
end

-- Returns the routes whose pattern matches, with their parameters.
local function match(path)
    local segs = split(path)
    local found = {}
    for _, r in ipairs(routes) do
        if #r.parts == #segs then
            local params, ok = {}, true
            for i, part in ipairs(r.parts) do
                local name = part:match("^{(.+)}$")
                if name then
                    params[name] = segs[i]
                elseif part ~= segs[i] then
                    ok = false
                    break
                end
            end
            if ok then found[#found + 1] = { route = r, params = params } end
        end
    end
    return found
end

-- The router that the module-level handle() and http() use: set by the
-- process that serves (standalone), one per Lua state.
local current

function _M.serve(h)
    current = h
end

-- h:handle(req) or api.handle(req) (the served router).  req = {method=,
-- path=, query = {}, body = string or nil}.  Returns status, headers, body.
function _M.handle(a, b)
    local self, req = a, b
    if getmetatable(a) ~= Api then
        self, req = current, a
    end
    if not self then
        return reply_error(503, "the API is not serving")
    end
    local ok, status, headers, body = xpcall(function()
        if type(req) ~= "table" or type(req.path) ~= "string" then
            http_error(400, "bad request")
        end
        local path = req.path:gsub("%?.*$", "")
        if #path > 1 then path = path:gsub("/+$", "") end
        local method = (req.method or "GET"):upper()
        local found = match(path)
        if #found == 0 then
            http_error(404, "no such path: " .. path)
        end
        local allowed = {}
        for _, f in ipairs(found) do
            local m = f.route.method
            if m == method or (method == "HEAD" and m == "GET") then
                local bearer = check_access(self, f.route, method, req)
                if not bearer then
                    check_csrf(method, req)
                end
                check_params(f.params)
                local st, hd, bd = f.route.fn(self, f.params, req)
                if method ~= "GET" and method ~= "HEAD" and type(st) == "number" and st < 400 then
                    -- A change is answered once it is committed: on a
                    -- full disk the commit fails, the change is rolled
                    -- back, and the client must hear so (503), not 201.
                    local store = self.store
                    local fok, _, fmsg = true, nil, nil
                    if store.flush then fok, _, fmsg = store:flush() end
                    if not fok then
                        http_error(503, "the store cannot commit, nothing was changed: "
                                   .. tostring(fmsg or "commit failed"))
                    end
                end
                if method == "HEAD" then bd = "" end
                return st, hd, bd
            end
            allowed[#allowed + 1] = m
        end
        local st, hd, bd = reply_error(405, "method " .. method
                                       .. " not allowed on " .. path)
        hd = { ["content-type"] = hd["content-type"],
               allow = concat(allowed, ", ") }
        return st, hd, bd
    end, function(e)
        if type(e) == "table" then return e end
        return debug.traceback(tostring(e), 2)
    end)
    if ok then
        return status, headers, body
    end
    local e = status
    if type(e) == "table" and e.http_status then
        local st, hd, bd = reply_error(e.http_status, e.msg)
        if e.headers then
            hd = { ["content-type"] = hd["content-type"] }
            for k, v in pairs(e.headers) do hd[k] = v end
        end
        return st, hd, bd
    end
    -- A bug, not the client's fault: the trace goes to the log, the
    -- client gets no internals (file names, lines, store paths).
    core.log("error", "api: " .. (type(req) == "table" and tostring(req.method) or "?") .. " "
             .. printable(type(req) == "table" and req.path or "?") .. ": "
             .. printable(tostring(e)))
    return reply_error(500, "internal error (the server's log has the details)")
end

Api.handle = _M.handle

-- Parses "/path?a=1&b=x%20y" into path and a query table.
function _M.parse_uri(uri)
    local path, qs = uri:match("^([^?#]*)%??([^#]*)")
    local query = {}
    for pair in (qs or ""):gmatch("[^&]+") do
        local k, v = pair:match("^([^=]*)=?(.*)$")
        k = unescape((k:gsub("+", " ")))
        query[k] = unescape((v:gsub("+", " ")))
    end
    return path, query
end

-- The answer's headers other than its type, as the engine's reply takes
-- them: {name, value, ...} in name order ("Www-Authenticate" ...).
local function header_list(hd)
    local names, list = {}, {}
    for k in pairs(hd or {}) do
        if k ~= "content-type" then names[#names + 1] = k end
    end
    sort(names)
    for _, k in ipairs(names) do
        list[#list + 1] = k:gsub("^%l", string.upper):gsub("%-%l", string.upper)
        list[#list + 1] = tostring(hd[k])
    end
    return list
end

-- The engine's entry: method, raw uri, body; answers through
-- reply(status, content_type, body, headers): headers {name, value, ...}
-- (the front doors that ship with zkflow send them; a host's
-- zkf_reply_fn gets the first three).  Uses the served router.
function _M.http(method, uri, body, reply, headers)
    local path, query = _M.parse_uri(uri or "/")
    local status, hd, out = _M.handle({
        method = method, path = path, query = query, body = body,
        headers = headers,
    })
    reply(status, hd and hd["content-type"] or "application/json",
          out or "", header_list(hd))
end

return _M
