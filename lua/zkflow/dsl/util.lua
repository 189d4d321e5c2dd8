-- zkflow.dsl.util: the DSL's small shared helpers, and the call-site
-- lookup that makes errors point into the DAG file.
--
-- Owns the set of "internal sources": the chunk names of zkflow's own DSL
-- modules.  Every file of the DSL marks itself (mark_internal) when it is
-- loaded, so callsite() skips its frames whatever file of the DSL they are
-- in.  Also here: did-you-mean suggestions, how a value is shown in a
-- message, the id rule, and table helpers the other DSL files share.

local ids = require "zkflow.ids"

local _M = {}

local type, pairs, ipairs, tostring = type, pairs, ipairs, tostring
local math_type = math.type
local sfmt, sort = string.format, table.sort
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

local function set_of(list)
    local s = {}
    for _, v in ipairs(list) do
        s[v] = true
    end
    return s
end
_M.set_of = set_of

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

-- Words that users of other tools type for ours (Airflow's BashOperator
-- takes bash_command, its PythonOperator python_callable): a word within
-- edit distance 2 of one of these suggests ours when ours is a candidate.
local ALIASES = {
    command = "cmd", bash_command = "cmd", python_callable = "run",
    bash = "shell", python = "lua", dummy = "empty",
}

--- Returns " (did you mean 'x'?)" for the closest candidate within edit
--- distance 2 (else for the candidate a near alias stands for), or ""
--- when nothing is close.  `candidates` is a list or a set.  This is the
--- one near-miss rule: DAG options, operators, config keys.
local function suggest(word, candidates)
    if type(word) ~= "string" then
        return ""
    end
    local is_candidate = {}
    if candidates[1] ~= nil then
        for _, c in ipairs(candidates) do is_candidate[c] = true end
    else
        for c in pairs(candidates) do is_candidate[c] = true end
    end
    local best, bestd
    local function consider(c, via)
        if type(c) == "string" and c ~= word and is_candidate[c] then
            local d = distance(word, via or c)
            if d <= 2 and (not bestd or d < bestd or (d == bestd and c < best)) then
                best, bestd = c, d
            end
        end
    end
    for c in pairs(is_candidate) do consider(c) end
    if not best then
        for alias, c in pairs(ALIASES) do consider(c, alias) end
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
_M.is_list, _M.sorted_keys, _M.copy = is_list, sorted_keys, copy
_M.locate_by_functions = locate_by_functions

return _M
