-- zkflow.dsl.options: the options the DSL accepts and how each is checked.
--
-- Owns the validators ({want, ok, default}) of the options every task
-- accepts (COMMON), of the sensor options (SENSOR) and of the DAG-level
-- options (DAGV), the trigger rules, and the normalization of an operator
-- module's field declarations into a schema (operator_schema), plus the
-- default operator lookup (find_builtin).  Reporting a bad value is the
-- builder's (zkflow.dsl.dag): this file only says what is acceptable.

local util = require "zkflow.dsl.util"
util.mark_internal()

local _M = {}

local type, pairs, ipairs, tostring, pcall = type, pairs, ipairs, tostring, pcall
local math_type, floor = math.type, math.floor
local sfmt, concat, sort = string.format, table.concat, table.sort
local set_of, is_list, sorted_keys = util.set_of, util.is_list, util.sorted_keys

-- Operators that ship with zkflow (lua/zkflow/operators/, a spec keeps the
-- two equal): named when a DAG asks for one that does not exist.
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
_M.SHIPPED = SHIPPED

local TRIGGER_SET = set_of(_M.TRIGGER_RULES)

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
_M.DAGV, _M.DAGV_ORDER = DAGV, DAGV_ORDER

return _M
