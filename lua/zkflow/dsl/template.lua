-- zkflow.dsl.template: `{{ expr }}` templating for task fields.
--
-- An expression is a Lua expression evaluated with the task context as its
-- environment: `{{ ds }}`, `{{ params.table }}`, `{{ xcom("extract") }}`,
-- `{{ ti.try_number + 1 }}`, `{{ ds:gsub("-", "") }}` (first value only).
-- Besides the context an expression sees only these helpers (a context
-- field of the same name wins): string, math, table, tostring, tonumber,
-- type, pairs, ipairs, select, and os with date and time only.  There are
-- no Jinja statements ({% %}) or filters: Lua expressions cover both.
--
-- nil renders as "", numbers without a trailing ".0" when integral, other
-- values through tostring.

-- A file of the DSL: its frames are skipped when the DSL looks for the
-- DAG file's call site (zkflow.dsl.util).
require("zkflow.dsl.util").mark_internal()

local _M = {}

local type, tostring, pairs, error, load, setmetatable, pcall =
    type, tostring, pairs, error, load, setmetatable, pcall
local sfmt, concat, find, sub = string.format, table.concat, string.find, string.sub
local math_type = math.type

local HELPERS = {
    string = string, math = math, table = table,
    tostring = tostring, tonumber = tonumber, type = type,
    pairs = pairs, ipairs = ipairs, select = select,
    os = { date = os.date, time = os.time },
}
_M.helpers = HELPERS

-- Compiled expressions by source text.  Expressions come from DAG files,
-- so the set is small; the bound only guards against generated templates.
local cache, cached = {}, 0
local CACHE_MAX = 4096

-- Each expression compiles to a function of its environment: the chunk
-- takes _ENV as its first argument, so one compiled function serves every
-- context.
local function compile(expr, name)
    local fn = cache[expr]
    if fn then
        return fn
    end
    local chunk, err = load("local _ENV = ...; return (" .. expr .. "\n)",
        "=" .. (name or "template"), "t")
    if not chunk then
        err = tostring(err):gsub("^[^:]*:%d+: ", "")
        error(sfmt("template %s: cannot compile '{{%s}}': %s", name or "?", expr, err), 0)
    end
    if cached >= CACHE_MAX then
        cache, cached = {}, 0
    end
    cache[expr] = chunk
    cached = cached + 1
    return chunk
end

local function env_of(ctx)
    return setmetatable({}, {
        __index = function(_, k)
            local v = ctx and ctx[k]
            if v == nil then
                return HELPERS[k]
            end
            return v
        end,
    })
end

local function to_text(v)
    if v == nil then
        return ""
    end
    if math_type(v) == "float" and v == math.floor(v) and v > -2^53 and v < 2^53 then
        return sfmt("%d", v)
    end
    return tostring(v)
end
_M.to_text = to_text

--- Renders the `{{ expr }}` parts of `str` with `ctx`.  `name` (optional)
--- names the template in errors, e.g. "task 'load' field 'cmd'".
--- Raises on an unclosed `{{`, an expression that does not compile, or
--- one that fails while evaluating.
function _M.render(str, ctx, name)
    if type(str) ~= "string" then
        error(sfmt("template.render: expected a string, got %s", type(str)), 2)
    end
    if not find(str, "{{", 1, true) then
        return str
    end
    local label = name or sfmt("%q", #str > 60 and (sub(str, 1, 57) .. "...") or str)
    local out, pos, env = {}, 1, nil
    while true do
        local s = find(str, "{{", pos, true)
        if not s then
            out[#out + 1] = sub(str, pos)
            break
        end
        out[#out + 1] = sub(str, pos, s - 1)
        local e = find(str, "}}", s + 2, true)
        if not e then
            error(sfmt("template %s: '{{' without '}}' in '%s'", label, sub(str, s)), 0)
        end
        local expr = sub(str, s + 2, e - 1)
        if not find(expr, "%S") then
            error(sfmt("template %s: empty expression '{{%s}}'", label, expr), 0)
        end
        local fn = compile(expr, label)
        env = env or env_of(ctx)
        local ok, v = pcall(fn, env)
        if not ok then
            local msg = type(v) == "string" and v:gsub("^[^:]*:%d+: ", "") or tostring(v)
            error(sfmt("template %s: error in '{{%s}}': %s", label, expr, msg), 0)
        end
        out[#out + 1] = to_text(v)
        pos = e + 2
    end
    return concat(out)
end

local function render_value(v, ctx, name, seen)
    local t = type(v)
    if t == "string" then
        return _M.render(v, ctx, name)
    elseif t ~= "table" or getmetatable(v) ~= nil then
        return v
    end
    seen = seen or {}
    if seen[v] then
        return seen[v]
    end
    local out = {}
    seen[v] = out
    for k, x in pairs(v) do
        out[k] = render_value(x, ctx, name, seen)
    end
    return out
end

--- Renders strings, and the values (not keys) of plain tables recursively
--- into a new table; numbers, booleans, functions and objects with a
--- metatable are returned as they are.
function _M.render_value(v, ctx, name)
    return render_value(v, ctx, name)
end

--- Renders a task's templated fields (its operator's `templated` list):
--- returns a table field -> rendered value, for the executor to use in
--- place of the raw fields.
function _M.render_task(task, ctx)
    local out = {}
    local op = task.op
    for _, f in ipairs(op and op.templated or {}) do
        out[f] = render_value(task[f], ctx, sfmt("task '%s' field '%s'", tostring(task.id), f))
    end
    return out
end

return _M
