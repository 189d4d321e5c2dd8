-- zkflow.dsl.schedule: a DAG's `schedule` value, checked and normalized.
--
-- Owns the cron presets (@daily, ...) and normalize_schedule(), which
-- turns what a DAG file may write (nil, "@once", a preset, a cron string,
-- flow.every(s)) into what the scheduler reads: nil | "@once" | {cron=} |
-- {every=}.

local util = require "zkflow.dsl.util"
util.mark_internal()

local _M = {}

local type, pairs, tostring, pcall = type, pairs, tostring, pcall
local sfmt = string.format
local show, suggest = util.show, util.suggest

_M.PRESETS = {
    ["@hourly"]   = "0 * * * *",
    ["@daily"]    = "0 0 * * *",
    ["@midnight"] = "0 0 * * *",
    ["@weekly"]   = "0 0 * * 0",
    ["@monthly"]  = "0 0 1 * *",
    ["@yearly"]   = "0 0 1 1 *",
    ["@annually"] = "0 0 1 1 *",
}

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
return _M
