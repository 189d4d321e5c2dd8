-- zkflow.api.views: what a DAG, a run and a log look like to a client,
-- shared by the HTTP API (zkflow.api) and the command line.
--
-- Owns the JSON shapes of a DAG (dag_entry, dag_list, dag_detail) and of a
-- run (run_summary), where the log of a try is and reading it (log_path,
-- read_log), and which tasks a clear touches (clear_set).  They read the
-- DAGs they are given and the store through a zkflow.state (S); none of
-- them answers a request.  zkflow.api re-exports each under its name
-- (api.dag_list, ...), the names the command line calls.

local core  = require "zkflow.core"
local state = require "zkflow.state"
local time  = require "zkflow.time"
local idrule = require "zkflow.ids"

local _M = {}

local concat, sort = table.concat, table.sort
local fmt = string.format
local array = state.array

local function is_null(v)
    return v == nil or v == core.null
end

local function nullable(v)
    if v == nil then return core.null end
    return v
end
_M.is_null, _M.nullable = is_null, nullable


-- Task ids out of the ways a task may hold its neighbours: a list of ids,
-- a list of tasks, or a set {[id] = true}.  Sorted when it was a set.
function _M.ids(x)
    local out = {}
    if type(x) ~= "table" then return out end
    if #x > 0 then
        for i, v in ipairs(x) do
            out[i] = type(v) == "table" and v.id or v
        end
        return out
    end
    for k, v in pairs(x) do
        if type(k) == "string" then
            out[#out + 1] = k
        elseif type(v) == "table" and v.id then
            out[#out + 1] = v.id
        end
    end
    sort(out)
    return out
end

-- "@hourly", "*/5 * * * *", "@once", "every 300s", or null.
function _M.schedule_string(s)
    if is_null(s) then return core.null end
    if type(s) == "string" then return s end
    if type(s) == "number" then return "every " .. s .. "s" end
    if type(s) == "table" then
        if s.cron then return s.cron end
        if s.every then return "every " .. tostring(s.every) .. "s" end
        if s.expr then return s.expr end
    end
    return tostring(s)
end

local function iso_or_null(t)
    if is_null(t) then return core.null end
    if type(t) == "number" then return time.iso(t) end
    return tostring(t)
end

-- One DAG as the API and `dags list --json` show it.
function _M.dag_entry(dag, S, errors)
    local tags = {}
    for i, t in ipairs(dag.tags or {}) do tags[i] = t end
    return {
        dag_id       = dag.id,
        file         = nullable(dag.file),
        schedule     = _M.schedule_string(dag.schedule),
        paused       = S ~= nil and S:is_paused(dag.id) or false,
        version      = nullable(dag.source_hash or dag.version),
        tags         = array(tags),
        description  = nullable(dag.description),
        import_error = nullable(errors and dag.file and errors[dag.file]),
    }
end

-- Every DAG sorted by id, then one entry (dag_id null) per file whose
-- import failed and that defines no DAG.
function _M.dag_list(scan, S)
    local dags, errors = scan.dags or {}, scan.errors or {}
    local list, files = {}, {}
    local ids = {}
    for id in pairs(dags) do ids[#ids + 1] = id end
    sort(ids)
    for _, id in ipairs(ids) do
        local dag = dags[id]
        list[#list + 1] = _M.dag_entry(dag, S, errors)
        if dag.file then files[dag.file] = true end
    end
    local bad = {}
    for file in pairs(errors) do
        if not files[file] then bad[#bad + 1] = file end
    end
    sort(bad)
    for _, file in ipairs(bad) do
        list[#list + 1] = {
            dag_id = core.null, file = file, schedule = core.null,
            paused = false, version = core.null, tags = array(),
            description = core.null, import_error = tostring(errors[file]),
        }
    end
    return array(list)
end

local function task_order(dag)
    local order = dag.topo or dag.order
    local ids = {}
    if type(order) == "table" and #order > 0 then
        for i, v in ipairs(order) do
            ids[i] = type(v) == "table" and v.id or v
        end
        return ids
    end
    for id in pairs(dag.tasks or {}) do ids[#ids + 1] = id end
    sort(ids)
    return ids
end

-- A DAG with its settings and tasks (topological order).
function _M.dag_detail(dag, S, errors)
    local d = _M.dag_entry(dag, S, errors)
    d.start_date = iso_or_null(dag.start_date)
    d.end_date = iso_or_null(dag.end_date)
    d.catchup = dag.catchup and true or false
    d.max_active_runs = nullable(dag.max_active_runs)
    d.max_active_tasks = nullable(dag.max_active_tasks)
    d.params = dag.params or {}
    local tasks = {}
    for _, id in ipairs(task_order(dag)) do
        local t = (dag.tasks or {})[id] or {}
        tasks[#tasks + 1] = {
            task_id         = id,
            operator        = nullable(t.operator),
            upstream        = array(_M.ids(t.upstream)),
            downstream      = array(_M.ids(t.downstream)),
            retries         = nullable(t.retries),
            trigger_rule    = nullable(t.trigger_rule),
            pool            = nullable(t.pool),
            queue           = nullable(t.queue),
            priority_weight = nullable(t.priority_weight),
        }
    end
    d.tasks = array(tasks)
    return d
end

-- A run record as the run lists show it.
function _M.run_summary(r)
    return {
        dag_id = r.dag_id, run_id = r.run_id,
        state = nullable(r.state), run_type = nullable(r.run_type),
        logical_date = nullable(r.logical_date),
        data_interval_start = nullable(r.data_interval_start),
        data_interval_end = nullable(r.data_interval_end),
        start_date = nullable(r.start_date), end_date = nullable(r.end_date),
        conf = r.conf or {}, version = nullable(r.version),
        external_trigger = r.external_trigger and true or false,
    }
end

-- An absolute, lexically clean form of `p` ("a/./b//c" -> "<cwd>/a/b/c"),
-- or nil when it climbs with "..": the log rules compare paths, never
-- follow them.
local function clean_path(p)
    if p:sub(1, 1) ~= "/" then
        p = (os.getenv("PWD") or ".") .. "/" .. p
    end
    local out = {}
    for seg in p:gmatch("[^/]+") do
        if seg == ".." then
            return nil
        elseif seg ~= "." then
            out[#out + 1] = seg
        end
    end
    return "/" .. concat(out, "/")
end

local function valid_ti_ids(o)
    return idrule.valid("dag_id", o.dag_id) and idrule.valid("run_id", o.run_id)
        and idrule.valid("task_id", o.task_id)
end

-- True when `path` is the log file of try `try` of the task instance
-- o.dag_id/o.run_id/o.task_id, inside o.log_dir when that is given:
-- ".../<dag>/<run>/<task>.<try>.log", no NUL, no "..".  A recorded path
-- comes from the store, which other processes write; it is read only when
-- it passes, so neither a forged record nor a forged id reads another
-- file.
local function log_path_ok(path, o, try)
    if type(path) ~= "string" or path:find("\0", 1, true) then
        return false
    end
    local p = clean_path(path)
    local tail = "/" .. o.dag_id .. "/" .. o.run_id .. "/" .. o.task_id
                 .. "." .. math.tointeger(try) .. ".log"
    if not p or p:sub(-#tail) ~= tail then
        return false
    end
    if o.log_dir then
        local dir = clean_path(o.log_dir)
        if not dir or p:sub(1, #dir + 1) ~= (dir == "/" and "/" or dir .. "/") then
            return false
        end
    end
    return true
end

-- Where the log of a try is: the task instance's `log` for its last try,
-- the same folder for another try, else <log_dir>/<dag>/<run>/<task>.<try>.log.
-- o: dag_id, run_id, task_id, try (nil: the last), log_dir.  Returns nil
-- unless the ids pass zkflow.ids and the path stays inside log_dir (when
-- given) and names that try's file.
function _M.log_path(ti, o)
    if not valid_ti_ids(o) then
        return nil
    end
    local last = ti and math.tointeger(tonumber(ti.try_number))
    local try = o.try or last
    if not try or try < 1 or try % 1 ~= 0 then
        return nil
    end
    if ti and type(ti.log) == "string" and ti.log ~= "" then
        local path = ti.log
        if o.try and o.try ~= last then
            local other, n = ti.log:gsub("%.%d+%.log$", "." .. math.tointeger(try) .. ".log")
            path = n == 1 and other or nil
        end
        if path and log_path_ok(path, o, try) then
            return path
        end
    end
    if not o.log_dir then
        return nil
    end
    return fmt("%s/%s/%s/%s.%d.log", o.log_dir, o.dag_id, o.run_id,
               o.task_id, try)
end

-- The log of a try as text: its file when this machine has it, else the
-- copy a cluster worker left in the store at the try's end
-- (<task instance node>/log.<try>, zkflow.cluster).  o: as log_path, and
-- S (a zkflow.state).  Returns the text, or nil.
function _M.read_log(S, ti, o)
    if not valid_ti_ids(o) then
        return nil
    end
    local path = _M.log_path(ti, o)
    local f = path and io.open(path, "rb")
    if f then
        local data = f:read("a")
        f:close()
        return data
    end
    local try = o.try or (ti and tonumber(ti.try_number))
    if S and try then
        local data = S:log_copy(o.dag_id, o.run_id, o.task_id, try)
        if data then return data end
    end
    return nil, path
end

-- The task ids a clear touches: `wanted` (every task of the run when
-- empty) and, with `downstream`, everything downstream of them in `dag`
-- (may be nil).  `run` is a run object.  Returns a sorted list or nil, err.
function _M.clear_set(run, dag, wanted, downstream)
    local known = {}
    for id in pairs(run.tasks or {}) do known[id] = true end
    if dag then
        for id in pairs(dag.tasks or {}) do known[id] = true end
    end
    local set = {}
    if #wanted == 0 then
        for id in pairs(known) do set[id] = true end
    else
        for _, id in ipairs(wanted) do
            if not known[id] then
                return nil, "no task '" .. tostring(id) .. "' in run '"
                            .. run.run_id .. "' of DAG '" .. run.dag_id .. "'"
            end
            set[id] = true
        end
    end
    if downstream and dag then
        local stack = {}
        for id in pairs(set) do stack[#stack + 1] = id end
        while #stack > 0 do
            local id = table.remove(stack)
            local t = (dag.tasks or {})[id]
            for _, d in ipairs(t and _M.ids(t.downstream) or {}) do
                if not set[d] then
                    set[d] = true
                    stack[#stack + 1] = d
                end
            end
        end
    end
    local list = {}
    for id in pairs(set) do list[#list + 1] = id end
    sort(list)
    return list
end

return _M
