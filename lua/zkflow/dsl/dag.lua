-- zkflow.dsl.dag: builds and validates DAG objects from `flow.dag{...}` specs.
--
-- A spec is checked completely before anything is returned: every problem
-- found (unknown options, wrong types, unknown upstreams, cycles, ...) is
-- collected with the file and line of the call that caused it, and all of
-- them are raised together as one newline-separated error, in file order.
-- A user fixing a DAG file sees the whole list at once instead of one error
-- per reload.
--
-- The DAG object (what the scheduler consumes):
--   { id, file, line, schedule = nil | "@once" | {cron=expr} | {every=s},
--     start_date, end_date (integer UTC epoch seconds or nil), catchup,
--     max_active_runs, max_active_tasks, params, tags, default_args,
--     description, doc, on_success, on_failure, on_retry, dagrun_timeout,
--     tasks = {[id]=task}, order (declaration order), roots, leaves,
--     topo (a topological order, ties in declaration order),
--     source_hash (set by the loader) }
-- The task object:
--   { id, dag_id, operator (name), op (operator module), line,
--     upstream, downstream (sorted ids), the common options below,
--     priority_weight (effective, after weight_rule), weight_rule, params
--     (dag < default_args < task), sensor options for sensors, and the
--     operator's own fields by name }
--   Every option reads with its value or default (task.retries is 0 when
--   unset), but the defaults of the common and sensor options live in the
--   task's metatable (_M.TASK_MT, _M.SENSOR_TASK_MT), not in each task:
--   read options by name, pairs() over a task lists only what it sets.
--
-- Decisions where Airflow offers a choice:
--   catchup defaults to true (Airflow's catchup_by_default = True);
--   retry_delay defaults to 300 s; priority_weight to 1 with weight_rule
--   "downstream" (own weight + every distinct descendant's weight);
--   flow.chain links two adjacent lists pairwise, as Airflow's chain();
--   a time without a UTC offset is UTC.
--
-- Operators are modules returning { name, fields = {f = decl}, templated =
-- {f...}, sensor, branch, short_circuit, execute or poke, runtime? }
-- (zkflow.operator says what execute, poke and runtime are); a field decl is
-- "type", "type?" (optional) or { type=, default=, one_of=, required= }
-- with type one of string number integer boolean function table list
-- (of strings) any, alternatives joined by "|".

local ids = require "zkflow.ids"
local time = require "zkflow.time"

local _M = {}

local type, pairs, ipairs, tostring, error, pcall = type, pairs, ipairs, tostring, error, pcall
local setmetatable, getmetatable, rawget = setmetatable, getmetatable, rawget
local math_type, floor = math.type, math.floor
local sfmt, concat, sort = string.format, table.concat, table.sort
local getinfo = debug.getinfo

-- Sources (chunk names) of zkflow's own DSL modules: call-site lookup skips
-- their frames so that errors point into the DAG file, whatever the depth
-- of wrappers (flow.dag, the loader's per-file flow.dag) in between.
local internal = {}
_M.internal_sources = internal
internal[getinfo(1, "S").source] = true

--- Marks the calling module's frames as DSL internals (see above).
function _M.mark_internal(level)
    local info = getinfo((level or 1) + 1, "S")
    if info then
        internal[info.source] = true
    end
end

-- Operators that ship with zkflow; only used for did-you-mean suggestions.
local SHIPPED = {
    "lua", "shell", "http", "branch", "short_circuit", "empty",
    "zk_create", "zk_set", "zk_get", "zk_delete", "zk_dump", "zk_restore",
    "zk_watch", "zk_register", "zk_health", "file", "time_delta",
    "external_task",
}

_M.TRIGGER_RULES = {
    "all_success", "all_failed", "all_done", "all_done_min_one_success",
    "all_skipped", "one_success", "one_failed", "one_done", "none_failed",
    "none_failed_min_one_success", "none_skipped", "always",
}

_M.PRESETS = {
    ["@hourly"]   = "0 * * * *",
    ["@daily"]    = "0 0 * * *",
    ["@midnight"] = "0 0 * * *",
    ["@weekly"]   = "0 0 * * 0",
    ["@monthly"]  = "0 0 1 * *",
    ["@yearly"]   = "0 0 1 1 *",
    ["@annually"] = "0 0 1 1 *",
}

local ID_MAX = ids.MAX

------------------------------------------------------------------------------
-- Small helpers
------------------------------------------------------------------------------

local function set_of(list)
    local s = {}
    for _, v in ipairs(list) do
        s[v] = true
    end
    return s
end

local TRIGGER_SET = set_of(_M.TRIGGER_RULES)

-- Levenshtein distance, bounded use only (option names are short).
local function distance(a, b)
    local la, lb = #a, #b
    local prev, cur = {}, {}
    for j = 0, lb do
        prev[j] = j
    end
    for i = 1, la do
        cur[0] = i
        local ca = a:byte(i)
        for j = 1, lb do
            local cost = (ca == b:byte(j)) and 0 or 1
            local v = prev[j] + 1
            if cur[j - 1] + 1 < v then v = cur[j - 1] + 1 end
            if prev[j - 1] + cost < v then v = prev[j - 1] + cost end
            cur[j] = v
        end
        prev, cur = cur, prev
    end
    return prev[lb]
end
_M.distance = distance

--- Returns " (did you mean 'x'?)" for the closest candidate within edit
--- distance 2, or "" when nothing is close.  `candidates` is a list or a set.
local function suggest(word, candidates)
    if type(word) ~= "string" then
        return ""
    end
    local best, bestd
    local function consider(c)
        if type(c) == "string" and c ~= word then
            local d = distance(word, c)
            if d <= 2 and (not bestd or d < bestd or (d == bestd and c < best)) then
                best, bestd = c, d
            end
        end
    end
    if candidates[1] ~= nil then
        for _, c in ipairs(candidates) do consider(c) end
    else
        for c in pairs(candidates) do consider(c) end
    end
    return best and sfmt(" (did you mean '%s'?)", best) or ""
end
_M.suggest = suggest

-- How a value is shown after "got": strings quoted, scalars as is, the rest
-- by type name (a table's address helps nobody).
local function show(v)
    local t = type(v)
    if t == "string" then
        return sfmt("%q", v)
    elseif t == "number" or t == "boolean" or t == "nil" then
        return tostring(v)
    end
    return t
end
_M.show = show

-- One rule for ids, zkflow.ids; DAG and task ids share it.
local function valid_id(s)
    return ids.valid("dag_id", s)
end
_M.valid_id = valid_id

-- The first stack frame (from `level` up) that is not zkflow's DSL code and
-- not C: the DAG file's line that called flow.dag / t.<op>{...}.  Returns
-- nil when that frame is gone: `return flow.dag {...}` is a tail call, and
-- Lua keeps no record of the caller of a tail call.
local function callsite(level)
    level = (level or 1) + 1
    while true do
        local info = getinfo(level, "Slt")
        if not info then
            return nil
        end
        if info.what ~= "C" and not internal[info.source] then
            local src = info.source
            if src:sub(1, 1) == "@" or src:sub(1, 1) == "=" then
                src = src:sub(2)
            else
                src = info.short_src
            end
            return src, info.currentline or 0
        end
        if info.istailcall then
            return nil
        end
        level = level + 1
    end
end

local function source_name(info)
    local src = info.source
    if src:sub(1, 1) == "@" or src:sub(1, 1) == "=" then
        return src:sub(2)
    end
    return info.short_src
end

-- Where a spec was written when its call site is lost to a tail call: the
-- file of a function inside the spec (`tasks`, `run`, a callback), and the
-- nearest line at or above that function that looks like the constructor
-- call (`pattern`), or the function's own first line.
local function locate_by_functions(spec, keys, pattern, lines_of)
    for _, k in ipairs(keys) do
        local fn = type(spec) == "table" and spec[k]
        if type(fn) == "function" then
            local info = getinfo(fn, "S")
            if info.what == "Lua" then
                local file, line = source_name(info), info.linedefined
                local lines = lines_of(info.source)
                if lines and pattern then
                    for l = line, 1, -1 do
                        if lines[l] and lines[l]:find(pattern) then
                            return file, l
                        end
                    end
                end
                return file, line
            end
        end
    end
    return nil
end

_M.callsite = callsite

local function is_list(v)
    if type(v) ~= "table" then
        return false
    end
    local n = #v
    for k in pairs(v) do
        if math_type(k) ~= "integer" or k < 1 or k > n then
            return false
        end
    end
    return true
end

local function sorted_keys(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = k end
    sort(keys, function(a, b)
        local ta, tb = type(a), type(b)
        if ta ~= tb then return ta < tb end
        if ta == "string" or ta == "number" then return a < b end
        return false
    end)
    return keys
end

local function copy(t)
    local c = {}
    if t then
        for k, v in pairs(t) do c[k] = v end
    end
    return c
end

------------------------------------------------------------------------------
-- Time: zkflow.time's rules, under the names the DSL has always exported
------------------------------------------------------------------------------

--- An ISO 8601 string or epoch seconds as whole UTC epoch seconds, or nil
--- and a reason (zkflow.time.epoch).
_M.parse_time = time.epoch

--- "2026-01-01T00:00:00+00:00" (Airflow's `ts`; zkflow.time.iso).
_M.iso = time.iso

--- "2026-01-01" (Airflow's `ds`; zkflow.time.ds).
_M.ds = time.ds

------------------------------------------------------------------------------
-- Option schemas
------------------------------------------------------------------------------

-- A validator: `ok(v)` says whether v is acceptable, `want` completes
-- "'x' must be ...".
local function V(want, ok, default)
    return { want = want, ok = ok, default = default }
end

local function is_int(v) return math_type(v) == "integer" or (math_type(v) == "float" and v == floor(v) and v == v) end
local function int_ge(n) return function(v) return is_int(v) and v >= n end end
local function num_ge(n) return function(v) return type(v) == "number" and v == v and v >= n end end
local function num_gt(n) return function(v) return type(v) == "number" and v == v and v > n end end
local function of_type(t) return function(v) return type(v) == t end end
local function nonempty(v) return type(v) == "string" and v ~= "" end
local function one_of(list)
    local s = set_of(list)
    return function(v) return s[v] == true end
end

local function is_str_list(v)
    if not is_list(v) then return false end
    for _, x in ipairs(v) do
        if type(x) ~= "string" then return false end
    end
    return true
end

-- Options every operator accepts.  `after` and `id` are handled apart.
local COMMON = {
    retries                   = V("an integer >= 0", int_ge(0), 0),
    retry_delay               = V("a number >= 0 (seconds)", num_ge(0), 300),
    retry_exponential_backoff = V("a boolean", of_type("boolean"), false),
    max_retry_delay           = V("a number >= 0 (seconds)", num_ge(0)),
    execution_timeout         = V("a number > 0 (seconds)", num_gt(0)),
    trigger_rule              = V("one of " .. concat(_M.TRIGGER_RULES, ", "),
                                  function(v) return TRIGGER_SET[v] == true end,
                                  "all_success"),
    depends_on_past           = V("a boolean", of_type("boolean"), false),
    priority_weight           = V("an integer", is_int, 1),
    weight_rule               = V("one of downstream, upstream, absolute",
                                  one_of({ "downstream", "upstream", "absolute" }),
                                  "downstream"),
    pool                      = V("a non-empty string", nonempty, "default_pool"),
    pool_slots                = V("an integer >= 1", int_ge(1), 1),
    queue                     = V("a non-empty string", nonempty, "default"),
    on_success                = V("a function", of_type("function")),
    on_failure                = V("a function", of_type("function")),
    on_retry                  = V("a function", of_type("function")),
    on_execute                = V("a function", of_type("function")),
    doc                       = V("a string", of_type("string")),
    params                    = V("a table", of_type("table")),
}
_M.COMMON = COMMON

-- Options only sensors accept (Airflow's BaseSensorOperator).
local SENSOR = {
    mode                = V("one of poke, reschedule", one_of({ "poke", "reschedule" }), "poke"),
    poke_interval       = V("a number > 0 (seconds)", num_gt(0), 60),
    timeout             = V("a number > 0 (seconds)", num_gt(0), 7 * 24 * 3600),
    soft_fail           = V("a boolean", of_type("boolean"), false),
    exponential_backoff = V("a boolean", of_type("boolean"), false),
    max_wait            = V("a number > 0 (seconds)", num_gt(0)),
}
_M.SENSOR = SENSOR

local TYPE_WANT = {
    string = "a string", number = "a number", integer = "an integer",
    boolean = "a boolean", ["function"] = "a function", table = "a table",
    list = "a list of strings", any = "any value",
}

local TYPE_OK = {
    string = of_type("string"), number = function(v) return type(v) == "number" end,
    integer = is_int, boolean = of_type("boolean"), ["function"] = of_type("function"),
    table = of_type("table"), list = is_str_list, any = function() return true end,
}

-- Turns an operator field declaration into a validator with `required`.
-- Accepted forms: "string", "string?", "string|function?", or a table
-- { type = "boolean", default = true, one_of = {...}, required = false }.
local function field_validator(opname, fname, decl)
    local typ, required, default, choices
    if type(decl) == "string" then
        typ = decl
    elseif type(decl) == "table" then
        typ, default, choices = decl.type or "any", decl.default, decl.one_of
        required = decl.required
    else
        return nil, sfmt("operator '%s': field '%s' has a bad declaration", opname, fname)
    end
    if typ:sub(-1) == "?" then
        typ = typ:sub(1, -2)
        if required == nil then required = false end
    end
    if required == nil then required = (default == nil) end
    local oks, wants = {}, {}
    for alt in typ:gmatch("[^|]+") do
        if not TYPE_OK[alt] then
            return nil, sfmt("operator '%s': field '%s' has unknown type '%s'", opname, fname, alt)
        end
        oks[#oks + 1] = TYPE_OK[alt]
        wants[#wants + 1] = TYPE_WANT[alt]
    end
    local ok = function(v)
        for _, f in ipairs(oks) do
            if f(v) then return true end
        end
        return false
    end
    local want = concat(wants, " or ")
    if choices then
        local s, inner = set_of(choices), ok
        ok = function(v) return inner(v) and s[v] == true end
        want = "one of " .. concat(choices, ", ")
    end
    local v = V(want, ok, default)
    v.required = required
    return v
end

--- Checks an operator module's shape and returns its normalized schema
--- { name, fields = {name = validator}, field_order, templated, sensor },
--- or nil and an error.
function _M.operator_schema(name, mod)
    if type(mod) ~= "table" then
        return nil, sfmt("operator '%s': module must return a table, got %s", name, type(mod))
    end
    local fields = mod.fields or {}
    if type(fields) ~= "table" then
        return nil, sfmt("operator '%s': 'fields' must be a table", name)
    end
    local schema = { name = name, fields = {}, field_order = {}, sensor = mod.sensor == true }
    for fname, decl in pairs(fields) do
        if type(fname) ~= "string" then
            return nil, sfmt("operator '%s': field names must be strings", name)
        end
        if COMMON[fname] or SENSOR[fname] or fname == "id" or fname == "after" then
            return nil, sfmt("operator '%s': field '%s' clashes with a common task option", name, fname)
        end
        local v, err = field_validator(name, fname, decl)
        if not v then return nil, err end
        schema.fields[fname] = v
        schema.field_order[#schema.field_order + 1] = fname
    end
    sort(schema.field_order)
    if mod.templated ~= nil and not is_str_list(mod.templated) then
        return nil, sfmt("operator '%s': 'templated' must be a list of field names", name)
    end
    for _, f in ipairs(mod.templated or {}) do
        if not schema.fields[f] and f ~= "params" then
            return nil, sfmt("operator '%s': templated field '%s' is not a field", name, f)
        end
    end
    return schema
end

------------------------------------------------------------------------------
-- Operator lookup
------------------------------------------------------------------------------

--- Default operator finder: `zkflow.operators.<name>` through `require`.
--- Returns the module, or nil and an error (nil error: not found at all).
function _M.find_builtin(name, req)
    req = req or require
    if type(name) ~= "string" or not name:find("^[%a_][%w_]*$") then
        return nil
    end
    local modname = "zkflow.operators." .. name
    local ok, mod = pcall(req, modname)
    if ok then
        return mod
    end
    local msg = tostring(mod)
    if msg:find("module '" .. modname .. "' not found", 1, true) then
        return nil
    end
    return nil, msg
end

------------------------------------------------------------------------------
-- Building
------------------------------------------------------------------------------

local Build = {}
Build.__index = Build

local task_mt_of = setmetatable({}, { __mode = "k" })   -- task -> build, or a marker once built

local function is_task(v)
    return type(v) == "table" and task_mt_of[v] ~= nil
end
_M.is_task = is_task

local function problem(b, file, line, msg)
    local n = #b.problems + 1
    b.problems[n] = { file = file, line = line, n = n, text = sfmt("%s:%s: %s", file, line, msg) }
end

-- Problems in file order (then in the order found), one per line.
local function report(problems)
    sort(problems, function(a, c)
        if a.file ~= c.file then return a.file < c.file end
        if a.line ~= c.line then return a.line < c.line end
        return a.n < c.n
    end)
    local lines = {}
    for i, p in ipairs(problems) do lines[i] = p.text end
    return concat(lines, "\n")
end

local function task_problem(b, task, msg)
    problem(b, task.file, task.line, sfmt("task '%s': %s", tostring(task.id), msg))
end

-- Flattens a task-or-list argument of >> / chain into a list of tasks.
local function as_tasks(v, what, level)
    if is_task(v) then
        return { v }
    end
    if type(v) == "table" and getmetatable(v) == nil then
        local out = {}
        for i, x in ipairs(v) do
            if not is_task(x) then
                error(sfmt("%s: element %d is not a task, got %s", what, i, show(x)), level + 1)
            end
            out[#out + 1] = x
        end
        return out
    end
    error(sfmt("%s: expected a task or a list of tasks, got %s", what, show(v)), level + 1)
end

--- Records a dependency up -> down (both tasks of the same DAG being built).
--- `level` is the error level of the user call.
function _M.link(up, down, level)
    level = (level or 1) + 1
    local b = task_mt_of[up]
    if b ~= task_mt_of[down] then
        error(sfmt("task '%s' and task '%s' belong to different dags", up.id, down.id), level)
    end
    if b.done then
        error(sfmt("dag '%s': dependencies must be declared inside tasks()", tostring(b.dag.id)), level)
    end
    b.edges[#b.edges + 1] = { up, down }
end

--- Links every task of `left` (a task or list) to every task of `right`.
--- Returns `right` so that `a >> b >> c` chains.
function _M.shift(left, right, level)
    level = (level or 1) + 1
    local ls = as_tasks(left, "'>>' left side", level)
    local rs = as_tasks(right, "'>>' right side", level)
    for _, a in ipairs(ls) do
        for _, b in ipairs(rs) do
            _M.link(a, b, level)
        end
    end
    return right
end

--- Airflow's chain(): consecutive arguments are linked; a task next to a
--- list fans in/out, two adjacent lists must have the same length and are
--- linked pairwise.
function _M.chain(...)
    local args = table.pack(...)
    for i = 1, args.n - 1 do
        local a, b = args[i], args[i + 1]
        local la = as_tasks(a, sfmt("chain argument %d", i), 2)
        local lb = as_tasks(b, sfmt("chain argument %d", i + 1), 2)
        if not is_task(a) and not is_task(b) then
            if #la ~= #lb then
                error(sfmt("chain: adjacent lists must have the same length, got %d and %d",
                    #la, #lb), 2)
            end
            for j = 1, #la do
                _M.link(la[j], lb[j], 2)
            end
        else
            for _, x in ipairs(la) do
                for _, y in ipairs(lb) do
                    _M.link(x, y, 2)
                end
            end
        end
    end
    return args[args.n]
end

-- Defaults of the common (and sensor) options live once, in the tasks'
-- metatable, instead of in every task: a task holds only the options that
-- differ from them.  Reading task.retries is the same either way; pairs()
-- over a task does not list the defaults.
local TASK_DEFAULTS, SENSOR_DEFAULTS = {}, {}
for name, v in pairs(COMMON) do
    if v.default ~= nil and type(v.default) ~= "table" then
        TASK_DEFAULTS[name], SENSOR_DEFAULTS[name] = v.default, v.default
    end
end
for name, v in pairs(SENSOR) do
    if v.default ~= nil and type(v.default) ~= "table" then
        SENSOR_DEFAULTS[name] = v.default
    end
end

local function task_shr(a, b) return _M.shift(a, b, 2) end
local function task_tostring(t)
    return sfmt("task '%s' (%s)", tostring(rawget(t, "id")), tostring(rawget(t, "operator")))
end
local TASK_MT = { __shr = task_shr, __tostring = task_tostring, __index = TASK_DEFAULTS }
local SENSOR_TASK_MT = { __shr = task_shr, __tostring = task_tostring, __index = SENSOR_DEFAULTS }
_M.TASK_MT, _M.SENSOR_TASK_MT = TASK_MT, SENSOR_TASK_MT

local DAG_MT = {
    __tostring = function(d) return sfmt("dag '%s'", tostring(rawget(d, "id"))) end,
}

function _M.is_dag(v)
    return type(v) == "table" and getmetatable(v) == DAG_MT
end

-- Resolves operator `name` for this build, caching the schema.
-- Operator entries ({mod, schema} or {err}) by module, then by name:
-- checking a module's schema is most of the cost of a small DAG, and the
-- shipped operators are the same module table in every build.  Weak keys:
-- a user operator's module goes with the files that loaded it.
local entry_cache = setmetatable({}, { __mode = "k" })

function Build:operator(name)
    local cached = self.ops[name]
    if cached ~= nil then
        return cached
    end
    local mod, err = self.find_operator(name)
    local entry
    if mod == nil then
        entry = { err = err or sfmt("unknown operator '%s'%s", name,
            suggest(name, SHIPPED)) }
    else
        local by_name = entry_cache[mod]
        entry = by_name and by_name[name]
        if not entry then
            local schema, serr = _M.operator_schema(name, mod)
            if schema then
                entry = { mod = mod, schema = schema }
            else
                entry = { err = serr }
            end
            if type(mod) == "table" then
                by_name = by_name or {}
                by_name[name] = entry
                entry_cache[mod] = by_name
            end
        end
    end
    self.ops[name] = entry
    return entry
end

-- Creates the task object for t.<opname>{spec}; problems are recorded, the
-- task is returned even when invalid so that later checks still run.
function Build:new_task(opname, spec, file, line)
    local task = { dag_id = self.dag.id, operator = opname, file = file, line = line }
    task_mt_of[task] = self
    setmetatable(task, TASK_MT)
    local entry = self:operator(opname)
    task.op = entry.mod
    if type(spec) ~= "table" then
        task.id = "?"
        problem(self, file, line, sfmt("t.%s: expected a table of options, got %s", opname, show(spec)))
        return task
    end
    local id = spec.id
    if id == nil then
        task.id = "?"
        problem(self, file, line, sfmt("t.%s: missing task 'id'", opname))
    elseif not valid_id(id) then
        task.id = tostring(id)
        problem(self, file, line, sfmt("t.%s: invalid task id %s: must be 1-%d characters of "
            .. "[A-Za-z0-9_.-], not containing '..'", opname, show(id), ID_MAX))
    else
        task.id = id
    end
    if entry.err then
        task_problem(self, task, entry.err)
        task.invalid = true
    end
    self.tasks_in_order[#self.tasks_in_order + 1] = task
    task.spec = spec
    return task
end

-- Validates one option value; returns true when fine.
local function check_value(b, task, name, v, validator, origin)
    if validator.ok(v) then
        return true
    end
    local extra = ""
    if type(v) == "string" and name == "trigger_rule" then
        extra = suggest(v, _M.TRIGGER_RULES)
    end
    local msg = sfmt("'%s' must be %s, got %s%s", name, validator.want, show(v), extra)
    if origin then
        msg = origin .. ": " .. msg
    end
    if task then
        task_problem(b, task, msg)
    else
        b:dag_problem(msg)
    end
    return false
end

function Build:dag_problem(msg)
    problem(self, self.file, self.line, sfmt("dag '%s': %s", tostring(self.dag.id), msg))
end

-- The option names a task of this operator accepts, built once per
-- operator and build.
local function known_options(entry)
    local known = entry.known
    if not known then
        known = {}
        for k in pairs(COMMON) do known[k] = true end
        if entry.schema.sensor then
            for k in pairs(SENSOR) do known[k] = true end
        end
        for k in pairs(entry.schema.fields) do known[k] = true end
        known.id, known.after = true, true
        entry.known = known
    end
    return known
end

-- The value of option `name` for a task: its spec, else default_args, else
-- the dag's on_retry for on_retry, else the validator's default.
function Build:pick(task, spec, name, validator, is_field)
    local v = spec[name]
    if v == nil then
        local da = self.default_args
        v = da[name]
        -- common/sensor defaults were checked once at the dag level;
        -- operator fields are checked against this operator's type.
        if v ~= nil and is_field and not validator.ok(v) then
            local msg = sfmt("default_args: '%s' must be %s for operator '%s', got %s",
                name, validator.want, task.operator, show(v))
            if not self.reported[msg] then
                self.reported[msg] = true
                self:dag_problem(msg)
            end
        end
        if v == nil and name == "on_retry" then
            v = self.dag.on_retry
        end
        if v == nil then
            v = validator.default
            if type(v) == "table" then v = copy(v) end
        end
    end
    -- 3.0 passes as an integer; store it as one
    if math_type(v) == "float" and validator.want:find("integer", 1, true) and validator.ok(v) then
        v = math.tointeger(v)
    end
    return v
end

-- Fills a task's options from its spec, default_args and defaults.
-- Common and sensor options equal to their default are left to the
-- metatable (TASK_DEFAULTS); operator fields are always stored.
function Build:finish_task(task)
    local spec = task.spec
    task.spec = nil
    if type(spec) ~= "table" or task.invalid then
        task.invalid = nil
        task.upstream, task.downstream = {}, {}
        return
    end
    local entry = self.ops[task.operator]
    local schema = entry.schema
    local fields = schema.fields
    local da = self.default_args
    -- options of the spec itself: a quick pass, and the sorted pass that
    -- reports problems in a stable order only when something is wrong
    local known = known_options(entry)
    local bad = false
    for k, v in pairs(spec) do
        if not known[k] then
            bad = true
            break
        elseif k ~= "id" and k ~= "after" then
            if not (COMMON[k] or SENSOR[k] or fields[k]).ok(v) then
                bad = true
                break
            end
        end
    end
    if bad then
        for _, k in ipairs(sorted_keys(spec)) do
            local v = spec[k]
            if type(k) ~= "string" then
                task_problem(self, task, sfmt("option names must be strings, got %s", show(k)))
            elseif not known[k] then
                task_problem(self, task, sfmt("unknown option '%s'%s", k, suggest(k, known)))
            elseif k ~= "id" and k ~= "after" then
                local validator = COMMON[k] or SENSOR[k] or fields[k]
                check_value(self, task, k, v, validator)
            end
        end
    end
    -- common and sensor options: only those set in the spec or in
    -- default_args can differ from the defaults (on_retry also falls back
    -- to the dag's)
    local defaults, sensor = TASK_DEFAULTS, schema.sensor
    if sensor then
        setmetatable(task, SENSOR_TASK_MT)
        defaults = SENSOR_DEFAULTS
    end
    local function set(name)
        local validator = COMMON[name] or (sensor and SENSOR[name])
        if validator and name ~= "params" then
            local v = self:pick(task, spec, name, validator)
            if v ~= defaults[name] then task[name] = v end
        end
    end
    for name in pairs(spec) do set(name) end
    for name in pairs(da) do
        if spec[name] == nil then set(name) end
    end
    if spec.on_retry == nil and da.on_retry == nil then
        task.on_retry = self.dag.on_retry
    end
    for _, name in ipairs(schema.field_order) do
        local validator = fields[name]
        local v = self:pick(task, spec, name, validator, true)
        if v == nil and validator.required then
            task_problem(self, task, sfmt("missing required option '%s'", name))
        end
        task[name] = v
    end
    -- params: dag params < default_args.params < task params
    local params = copy(self.dag.params)
    if type(da.params) == "table" then
        for k, v in pairs(da.params) do params[k] = v end
    end
    if type(spec.params) == "table" then
        for k, v in pairs(spec.params) do params[k] = v end
    end
    task.params = params
    task.weight = task.priority_weight
    task.after_spec = spec.after
end

-- Resolves `after` lists and >> / chain edges into upstream/downstream.
function Build:resolve_edges()
    local byid = self.dag.tasks
    local ups = {}
    for _, task in ipairs(self.tasks_in_order) do
        ups[task] = {}
    end
    local function add(up, down)
        if up == down then
            task_problem(self, down, "depends on itself")
            return
        end
        ups[down][up] = true
    end
    for _, task in ipairs(self.tasks_in_order) do
        local after = task.after_spec
        task.after_spec = nil
        if after ~= nil then
            if is_task(after) or type(after) == "string" then
                after = { after }
            end
            if not is_list(after) then
                task_problem(self, task, sfmt("'after' must be a list of tasks or task ids, got %s", show(after)))
            else
                for _, ref in ipairs(after) do
                    if is_task(ref) then
                        if task_mt_of[ref] ~= self then
                            task_problem(self, task,
                                sfmt("upstream task '%s' belongs to another dag", tostring(ref.id)))
                        elseif byid[ref.id] then
                            add(byid[ref.id], task)
                        end
                    elseif type(ref) == "string" then
                        if byid[ref] then
                            add(byid[ref], task)
                        else
                            task_problem(self, task, sfmt("unknown upstream '%s'%s", ref, suggest(ref, byid)))
                        end
                    else
                        task_problem(self, task, sfmt("'after' entries must be tasks or task ids, got %s", show(ref)))
                    end
                end
            end
        end
    end
    for _, e in ipairs(self.edges) do
        local up, down = byid[e[1].id], byid[e[2].id]
        if up and down then
            add(up, down)
        end
    end
    for _, task in ipairs(self.tasks_in_order) do
        if byid[task.id] == task then
            local list = {}
            for up in pairs(ups[task]) do
                list[#list + 1] = up.id
            end
            sort(list)
            task.upstream = list
            task.downstream = task.downstream or {}
            for _, uid in ipairs(list) do
                local u = byid[uid]
                u.downstream = u.downstream or {}
                u.downstream[#u.downstream + 1] = task.id
            end
        end
    end
    for _, task in pairs(byid) do
        task.downstream = task.downstream or {}
        sort(task.downstream)
    end
end

-- Finds cycles by depth-first search; each one is reported as a path.
function Build:check_cycles()
    local byid, order = self.dag.tasks, self.dag.order
    local color, stack, found = {}, {}, false
    local function visit(id)
        color[id] = 1
        stack[#stack + 1] = id
        for _, d in ipairs(byid[id].downstream) do
            if color[d] == 1 then
                local path, start = {}, nil
                for i, s in ipairs(stack) do
                    if s == d then start = i end
                    if start then path[#path + 1] = s end
                end
                path[#path + 1] = d
                self:dag_problem("cycle: " .. concat(path, " -> "))
                found = true
            elseif not color[d] then
                visit(d)
            end
        end
        stack[#stack] = nil
        color[id] = 2
    end
    for _, id in ipairs(order) do
        if not color[id] then visit(id) end
    end
    return not found
end

-- Kahn's algorithm; ties broken by declaration order for stable output.
-- The ready set is a binary min-heap on declaration position, so the
-- order is the same as always taking the earliest declared ready task,
-- in O((n + e) log n) instead of re-sorting the ready list at each step.
function Build:toposort()
    local byid, order = self.dag.tasks, self.dag.order
    local pos, indeg = {}, {}
    for i, id in ipairs(order) do
        pos[id] = i
        indeg[id] = #byid[id].upstream
    end
    local heap, n = {}, 0
    local function push(id)
        n = n + 1
        local i, p = n, pos[id]
        while i > 1 do
            local parent = i // 2
            local hp = heap[parent]
            if pos[hp] <= p then break end
            heap[i] = hp
            i = parent
        end
        heap[i] = id
    end
    local function pop()
        local top, last = heap[1], heap[n]
        heap[n] = nil
        n = n - 1
        if n > 0 then
            local i, p = 1, pos[last]
            while true do
                local c = i * 2
                if c > n then break end
                if c < n and pos[heap[c + 1]] < pos[heap[c]] then c = c + 1 end
                if pos[heap[c]] >= p then break end
                heap[i] = heap[c]
                i = c
            end
            heap[i] = last
        end
        return top
    end
    for _, id in ipairs(order) do
        if indeg[id] == 0 then push(id) end
    end
    local topo = {}
    while n > 0 do
        local id = pop()
        topo[#topo + 1] = id
        for _, d in ipairs(byid[id].downstream) do
            local k = indeg[d] - 1
            indeg[d] = k
            if k == 0 then push(d) end
        end
    end
    return topo
end

-- Effective priority weights, as Airflow's weight_rule computes them:
-- downstream/upstream add the weights of every distinct descendant/ancestor.
--
-- All reach sums come from one pass in dependency order (reach_sums), not
-- from a walk per task, which is O(n * e) on a layered DAG.

local function popcount(x)
    x = x - ((x >> 1) & 0x5555555555555555)
    x = (x & 0x3333333333333333) + ((x >> 2) & 0x3333333333333333)
    x = (x + (x >> 4)) & 0x0f0f0f0f0f0f0f0f
    return (x * 0x0101010101010101) >> 56
end

local LOG2 = {}
for b = 0, 63 do LOG2[1 << b] = b end

-- For every task, the sum of `weight` over the distinct tasks reachable
-- through `dir` ("downstream" or "upstream").  Returns {[id] = sum}.
--
-- Tasks are numbered in the order they are visited (reverse topological
-- for downstream), so whatever a task reaches has a smaller number.  A
-- task with one neighbour c reaches {c} + reach(c), so its sum is exact
-- without a set.  A task with several neighbours gets its reach as a
-- bitset: each neighbour is added with what it reaches, following
-- one-neighbour chains and copying stored bitsets, and stopping at a task
-- already present (the set is closed under reach, so the rest is there
-- too).  Tasks with the same neighbours share one set (a fully connected
-- layer costs one union, not one per task).  The sum is a popcount times
-- the weight when every weight is the same, one popcount per weight class
-- when there are a few, and a walk over the set bits otherwise.
local function reach_sums(byid, topo, dir, weight_of)
    local n = #topo
    local proc, step = {}, {}
    for i = 1, n do
        local id = dir == "downstream" and topo[n + 1 - i] or topo[i]
        proc[i], step[id] = id, i
    end
    local w, classes, nclass = {}, {}, 0
    for i = 1, n do
        local x = weight_of(byid[proc[i]])
        w[i] = x
        if not classes[x] then
            nclass = nclass + 1
            classes[x] = nclass
        end
    end
    local total_words = (n - 1) // 64 + 1
    local masks    -- weight -> bitset of the tasks with that weight
    if nclass > 1 and nclass <= 8 then
        masks = {}
        for x in pairs(classes) do
            local m = {}
            for i = 1, total_words do m[i] = 0 end
            masks[x] = m
        end
        for i = 1, n do
            local m = masks[w[i]]
            local wi = (i - 1) // 64 + 1
            m[wi] = m[wi] | (1 << ((i - 1) % 64))
        end
    end
    local uniform = nclass == 1 and w[1] or nil

    local function weigh(set)
        local s = 0
        if uniform then
            local c = 0
            for i = 1, #set do
                local x = set[i]
                if x ~= 0 then c = c + popcount(x) end
            end
            return c * uniform
        elseif masks then
            for x, m in pairs(masks) do
                local c = 0
                for i = 1, #set do
                    local y = set[i] & m[i]
                    if y ~= 0 then c = c + popcount(y) end
                end
                s = s + c * x
            end
            return s
        end
        for i = 1, #set do
            local y = set[i]
            local base = (i - 1) * 64 + 1
            while y ~= 0 do
                local low = y & -y
                s = s + w[base + LOG2[low]]
                y = y ~ low
            end
        end
        return s
    end

    local sum, single, sets, by_key = {}, {}, {}, {}
    local nbs = {}
    for s = 1, n do
        local list = byid[proc[s]][dir]
        local m = #list
        if m == 0 then
            sum[s] = 0
        elseif m == 1 then
            local c = step[list[1]]
            single[s] = c
            sum[s] = w[c] + sum[c]
        else
            -- neighbour lists are sorted ids: equal lists, equal keys
            local key = concat(list, "\0")
            local shared = by_key[key]
            if shared then
                sets[s], sum[s] = sets[shared], sum[shared]
            else
                for i = 1, m do nbs[i] = step[list[i]] end
                for i = m + 1, #nbs do nbs[i] = nil end
                sort(nbs)
                local acc = {}
                for i = 1, (s - 2) // 64 + 1 do acc[i] = 0 end
                -- the latest visited first: it reaches the most of the others
                for i = m, 1, -1 do
                    local c = nbs[i]
                    while c do
                        local wi, bit = (c - 1) // 64 + 1, 1 << ((c - 1) % 64)
                        local word = acc[wi]
                        if word & bit ~= 0 then break end
                        acc[wi] = word | bit
                        local sc = sets[c]
                        if sc then
                            for j = 1, #sc do acc[j] = acc[j] | sc[j] end
                            break
                        end
                        c = single[c]
                    end
                end
                sets[s], sum[s], by_key[key] = acc, weigh(acc), s
            end
        end
    end
    local out = {}
    for s = 1, n do out[proc[s]] = sum[s] end
    return out
end
_M.reach_sums = reach_sums

local function own_weight(task)
    return task.weight or 1
end

function Build:weights()
    local byid, topo = self.dag.tasks, self.dag.topo
    local need = {}
    for _, task in pairs(byid) do
        need[task.weight_rule] = true
    end
    local down = need.downstream and reach_sums(byid, topo, "downstream", own_weight)
    local up = need.upstream and reach_sums(byid, topo, "upstream", own_weight)
    for id, task in pairs(byid) do
        local w = task.weight or 1
        local rule = task.weight_rule
        if rule == "downstream" then
            w = w + down[id]
        elseif rule == "upstream" then
            w = w + up[id]
        end
        task.priority_weight = w
        task.weight = nil
    end
end

------------------------------------------------------------------------------
-- DAG-level fields
------------------------------------------------------------------------------

local DAG_FIELDS = {
    id = true, schedule = true, start_date = true, end_date = true, catchup = true,
    max_active_runs = true, max_active_tasks = true, params = true, tags = true,
    default_args = true, description = true, doc = true, on_success = true,
    on_failure = true, on_retry = true, dagrun_timeout = true, tasks = true,
}
_M.DAG_FIELDS = DAG_FIELDS

-- DAG options checked by validators (table defaults are copied per DAG).
local DAGV = {
    catchup          = V("a boolean", of_type("boolean"), true),
    max_active_runs  = V("an integer >= 1", int_ge(1), 16),
    max_active_tasks = V("an integer >= 1", int_ge(1), 16),
    params           = V("a table", of_type("table"), {}),
    tags             = V("a list of strings", is_str_list, {}),
    default_args     = V("a table", of_type("table"), {}),
    description      = V("a string", of_type("string")),
    doc              = V("a string", of_type("string")),
    on_success       = V("a function", of_type("function")),
    on_failure       = V("a function", of_type("function")),
    on_retry         = V("a function", of_type("function")),
    dagrun_timeout   = V("a number > 0 (seconds)", num_gt(0)),
}
local DAGV_ORDER = sorted_keys(DAGV)

local function cron_checker()
    local ok, core = pcall(require, "zkflow.core")
    if ok and type(core) == "table" and type(core.cron) == "function" then
        return core.cron
    end
    return nil
end

--- Normalizes a schedule value: nil | "@once" | {cron=} | {every=}, or nil
--- and an error.  Cron strings are parsed by the C module when it is
--- present; otherwise only their field count is checked here and the full
--- parse happens when the scheduler first uses them.
function _M.normalize_schedule(s)
    if s == nil or s == "none" or s == "None" then
        return nil
    end
    if s == "@once" then
        return "@once"
    end
    local expr
    if type(s) == "string" then
        expr = _M.PRESETS[s] or s
        if s:sub(1, 1) == "@" and not _M.PRESETS[s] then
            local names = { "@once", "none" }
            for k in pairs(_M.PRESETS) do names[#names + 1] = k end
            return nil, sfmt("unknown schedule preset %s%s", show(s), suggest(s, names))
        end
    elseif type(s) == "table" then
        local n = 0
        for _ in pairs(s) do n = n + 1 end
        if s.every ~= nil and n == 1 then
            if type(s.every) ~= "number" or s.every ~= s.every or s.every <= 0 then
                return nil, sfmt("'every' must be a number of seconds > 0, got %s", show(s.every))
            end
            return { every = s.every }
        elseif type(s.cron) == "string" and n == 1 then
            expr = s.cron
        end
    end
    if not expr then
        return nil, sfmt("'schedule' must be nil, \"@once\", a cron expression, a preset"
            .. " or flow.every(seconds), got %s", show(s))
    end
    local nf = 0
    for _ in expr:gmatch("%S+") do nf = nf + 1 end
    if nf ~= 5 then
        return nil, sfmt("bad cron expression %s: expected 5 fields, got %d", show(expr), nf)
    end
    local cron = cron_checker()
    if cron then
        local ok, err = pcall(cron, expr)
        if not ok then
            return nil, tostring(err):gsub("^[^:]*:%d+: ", "")
        end
    end
    return { cron = expr }
end

------------------------------------------------------------------------------
-- Entry point
------------------------------------------------------------------------------

--- Builds a DAG from a spec table.  `opts` (all optional):
---   find_operator(name) -> module | nil, err   operator lookup
---   level                                      not needed: call sites are
---                                              found by skipping internals
--- Raises one error listing every problem ("file:line: message" per line).
function _M.new(spec, opts)
    opts = opts or {}
    local lines_cache = {}
    local function lines_of(source)
        if lines_cache[source] == nil then
            local text = opts.source_text
            if not (text and source == "@" .. tostring(opts.file)) and source:sub(1, 1) == "@" then
                local f = io.open(source:sub(2), "rb")
                if f then
                    text = f:read("a")
                    f:close()
                end
            end
            local lines = false
            if type(text) == "string" then
                lines = {}
                for l in (text .. "\n"):gmatch("([^\n]*)\n") do lines[#lines + 1] = l end
            end
            lines_cache[source] = lines
        end
        return lines_cache[source] or nil
    end
    local file, line = callsite(2)
    if not file then
        file, line = locate_by_functions(spec, { "tasks", "on_success", "on_failure", "on_retry" },
            "dag%s*[{(]", lines_of)
    end
    if not file then
        file, line = opts.file or "?", 0
    end
    if type(spec) ~= "table" then
        error(sfmt("%s:%d: flow.dag: expected a table, got %s", file, line, show(spec)), 0)
    end
    local dag = setmetatable({ file = file, line = line }, DAG_MT)
    local b = setmetatable({
        dag = dag, file = file, line = line, problems = {}, edges = {},
        tasks_in_order = {}, ops = {}, reported = {},
        find_operator = opts.find_operator or _M.find_builtin,
    }, Build)

    -- id
    if spec.id == nil then
        dag.id = "?"
        problem(b, file, line, "dag: missing 'id'")
    elseif not valid_id(spec.id) then
        dag.id = tostring(spec.id)
        problem(b, file, line, sfmt("dag: invalid id %s: must be 1-%d characters of "
            .. "[A-Za-z0-9_.-], not containing '..'", show(spec.id), ID_MAX))
    else
        dag.id = spec.id
    end
    for _, k in ipairs(sorted_keys(spec)) do
        if not DAG_FIELDS[k] then
            b:dag_problem(sfmt("unknown field %s%s", type(k) == "string" and ("'" .. k .. "'") or show(k),
                suggest(k, DAG_FIELDS)))
        end
    end

    -- schedule
    local sched, serr = _M.normalize_schedule(spec.schedule)
    if serr then
        b:dag_problem(serr)
    end
    dag.schedule = sched

    -- dates
    for _, k in ipairs({ "start_date", "end_date" }) do
        if spec[k] ~= nil then
            local t, err = time.epoch(spec[k])
            if not t and type(spec[k]) == "string" then
                -- the message quotes the value already
                b:dag_problem(sfmt("'%s': %s", k, err))
            elseif not t then
                b:dag_problem(sfmt("'%s' %s: %s", k, show(spec[k]), err))
            end
            dag[k] = t
        end
    end
    if dag.start_date and dag.end_date and dag.start_date > dag.end_date then
        b:dag_problem(sfmt("'start_date' (%s) is after 'end_date' (%s)",
            time.iso(dag.start_date), time.iso(dag.end_date)))
    end

    for _, k in ipairs(DAGV_ORDER) do
        local validator, v = DAGV[k], spec[k]
        if v ~= nil and not check_value(b, nil, k, v, validator) then
            v = nil
        end
        if v == nil then
            v = validator.default
        end
        if type(v) == "table" then v = copy(v) end
        dag[k] = v
    end

    -- default_args: common options are checked once here; operator fields
    -- are checked where they apply (they may differ by operator).
    local da = dag.default_args
    b.default_args = da
    local da_fields = {}
    for _, k in ipairs(sorted_keys(da)) do
        local v = da[k]
        if k == "id" or k == "after" then
            b:dag_problem(sfmt("default_args: '%s' cannot be a default", k))
            da[k] = nil
        elseif COMMON[k] or SENSOR[k] then
            if not check_value(b, nil, k, v, COMMON[k] or SENSOR[k], "default_args") then
                da[k] = nil
            end
        else
            da_fields[#da_fields + 1] = k
        end
    end

    -- tasks
    dag.tasks, dag.order = {}, {}
    local tasks_fn = spec.tasks
    if tasks_fn == nil then
        b:dag_problem("missing 'tasks' (a function(t) that declares the tasks)")
    elseif type(tasks_fn) ~= "function" then
        b:dag_problem(sfmt("'tasks' must be a function(t), got %s", show(tasks_fn)))
    else
        local factories = {}
        local t = setmetatable({}, {
            __index = function(_, name)
                local f = factories[name]
                if not f then
                    f = function(tspec)
                        if b.done then
                            error(sfmt("dag '%s': tasks must be declared inside tasks()",
                                tostring(dag.id)), 2)
                        end
                        local tf, tl = callsite(2)
                        if not tf then
                            tf, tl = locate_by_functions(tspec, { "run", "on_execute", "on_success",
                                "on_failure", "on_retry" }, "%." .. name .. "%s*[{(]", lines_of)
                        end
                        if not tf then
                            tf, tl = file, line
                        end
                        local task = b:new_task(name, tspec, tf, tl)
                        return task
                    end
                    factories[name] = f
                end
                return f
            end,
            __newindex = function() error("the task factory is read-only", 2) end,
        })
        local ok, r1, r2 = pcall(tasks_fn, t)
        if not ok then
            local msg = r1
            if type(msg) ~= "string" then
                msg = tostring(msg)
            end
            b:dag_problem("tasks() raised an error: " .. msg)
        elseif (r1 == nil or r1 == false) and type(r2) == "string" then
            b:dag_problem("tasks() returned an error: " .. r2)
        elseif type(r1) == "string" then
            b:dag_problem("tasks() returned an error: " .. r1)
        end
    end
    b.done = true

    -- register tasks (declaration order), duplicates
    for _, task in ipairs(b.tasks_in_order) do
        if task.id ~= "?" and valid_id(task.id) then
            local prev = dag.tasks[task.id]
            if prev then
                task_problem(b, task, sfmt("duplicate task id (first defined at %s:%d)", prev.file, prev.line))
            else
                dag.tasks[task.id] = task
                dag.order[#dag.order + 1] = task.id
            end
        end
    end
    for _, task in ipairs(b.tasks_in_order) do
        b:finish_task(task)
    end

    -- default_args keys that no operator of this dag accepts
    for _, k in ipairs(da_fields) do
        local accepted = false
        for _, entry in pairs(b.ops) do
            if entry.schema and entry.schema.fields[k] then
                accepted = true
            end
        end
        if not accepted then
            local names = {}
            for n in pairs(COMMON) do names[#names + 1] = n end
            for n in pairs(SENSOR) do names[#names + 1] = n end
            for _, entry in pairs(b.ops) do
                if entry.schema then
                    for n in pairs(entry.schema.fields) do names[#names + 1] = n end
                end
            end
            b:dag_problem(sfmt("default_args: unknown option '%s'%s", tostring(k), suggest(k, names)))
        end
    end

    b:resolve_edges()
    for _, task in ipairs(b.tasks_in_order) do
        task.file = nil
    end
    local acyclic = b:check_cycles()

    if #b.problems > 0 then
        error(report(b.problems), 0)
    end

    dag.topo = acyclic and b:toposort() or {}
    dag.roots, dag.leaves = {}, {}
    for _, id in ipairs(dag.order) do
        local task = dag.tasks[id]
        if #task.upstream == 0 then dag.roots[#dag.roots + 1] = id end
        if #task.downstream == 0 then dag.leaves[#dag.leaves + 1] = id end
    end
    b:weights()
    -- the build (problems, edges, operator schemas) is garbage from here:
    -- the tasks keep only a small marker for link() and is_task()
    local finished = { done = true, dag = dag }
    for _, task in ipairs(b.tasks_in_order) do
        task_mt_of[task] = finished
    end
    return dag
end

return _M
