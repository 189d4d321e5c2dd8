-- zkflow.cli.settings: where the global options come from.
--
-- Each global option that takes a value (db, dags, root, zk, ...) is
-- taken, first found wins, from
--
--   1. the command line            --db PATH
--   2. the environment             ZKFLOW_DB (ZKFLOW_<NAME>, '-' as '_')
--   3. the configuration file      db = PATH  (--config FILE, else
--                                  ZKFLOW_CONFIG, else /etc/zkflow/zkflow.conf)
--   4. what the store recorded     the DAG folder a standalone ran on
--   5. ZKFLOW_HOME                 $ZKFLOW_HOME/zkflow.db, $ZKFLOW_HOME/dags
--   6. the built-in default        ./zkflow.db, ./dags, /zkflow
--
-- (the engine's own options, given by a host, count as the command line).
-- The file is lines of `name = value`; '#' or ';' starts a comment line;
-- names are the options' (`session-timeout` or `session_timeout`); a
-- relative path in it is relative to the file's folder.  Values are
-- checked by the same rule as the flags' (check); problems are collected
-- with their line, so that `zkflow check-config` lists every one and other
-- commands refuse to run on a file that has one.

local core    = require "zkflow.core"
local context = require "zkflow.cli.context"

local _M = {}

local concat = table.concat
local fmt = string.format

_M.DEFAULT_FILE = "/etc/zkflow/zkflow.conf"

-- The options a file and the environment may set: {name, ctx field,
-- built-in default, is a path}.
local OPTIONS = {
    { "db",              "db",              "./zkflow.db", true },
    { "dags",            "dags",            "./dags",      true },
    { "root",            "root",            "/zkflow" },
    { "zk",              "zk" },
    { "db-sync",         "db_sync" },
    { "session-timeout", "session_timeout" },
    { "zk-auth",         "zk_auth" },
    { "zk-acl",          "zk_acl" },
    { "log-dir",         "log_dir",         nil,           true },
    { "history",         "history_url" },
}
_M.OPTIONS = OPTIONS

local by_name = {}
for _, o in ipairs(OPTIONS) do by_name[o[1]] = o end

-- The context's field of option `name` (history -> history_url).
function _M.field(name)
    local o = by_name[name]
    return o and o[2] or (name:gsub("-", "_"))
end

local function env_name(name)
    return "ZKFLOW_" .. name:upper():gsub("-", "_")
end
_M.env_name = env_name

-- Checks the value of option `name` (without dashes) wherever it comes
-- from; returns the value to keep (a number for session-timeout), or nil
-- and what is wrong.
function _M.check(name, value)
    if name == "root" then
        if value:sub(1, 1) ~= "/" then
            return nil, "must start with '/'"
        end
    elseif name == "db-sync" then
        local ok = { off = true, normal = true, full = true, extra = true }
        if not ok[value] then
            return nil, "expected off, normal, full or extra, got '" .. value .. "'"
        end
    elseif name == "zk-auth" then
        if not value:find(":", 1, true) then
            return nil, "expected USER:PASSWORD"
        end
    elseif name == "session-timeout" then
        local n = tonumber(value)
        if not n or n <= 0 then
            return nil, "expected seconds, got '" .. value .. "'"
        end
        return n
    elseif value == "" and (name == "db" or name == "dags" or name == "log-dir") then
        return nil, "empty path"
    end
    return value
end

-- Reads configuration file `path`: the settings {name = {value=, line=}}
-- and the problems (a list of "FILE:LINE: message"); nil and a message
-- when the file cannot be read.
function _M.read_file(path)
    local text = core.read_file(path)
    if text == nil then
        return nil, "cannot read " .. path
    end
    local settings, problems = {}, {}
    local names = {}
    for _, o in ipairs(OPTIONS) do names[#names + 1] = o[1] end
    local n = 0
    for line in (text .. "\n"):gmatch("([^\n]*)\n") do
        n = n + 1
        line = line:gsub("\r$", "")
        local s = line:match("^%s*(.-)%s*$")
        if s ~= "" and not s:find("^[#;]") then
            local key, value = s:match("^([%w_%-]+)%s*=%s*(.-)$")
            if not key then
                problems[#problems + 1] = fmt("%s:%d: expected 'name = value', got '%s'",
                                              path, n, s)
            else
                local name = key:lower():gsub("_", "-")
                value = value:match('^"(.*)"$') or value:match("^'(.*)'$") or value
                local o = by_name[name]
                if not o then
                    problems[#problems + 1] = fmt("%s:%d: unknown setting '%s'%s (settings: %s)",
                        path, n, key, require("zkflow.dsl.util").suggest(name, names),
                        concat(names, ", "))
                else
                    local v, err = _M.check(name, value)
                    if v == nil then
                        problems[#problems + 1] = fmt("%s:%d: %s: %s", path, n, key, err)
                    else
                        if o[4] and v:sub(1, 1) ~= "/" then
                            v = context.dirname(path) .. "/" .. v:gsub("^%./", "")
                        end
                        if settings[name] then
                            problems[#problems + 1] = fmt("%s:%d: '%s' is set twice "
                                .. "(first at line %d)", path, n, key, settings[name].line)
                        end
                        settings[name] = { value = v, line = n }
                    end
                end
            end
        end
    end
    return settings, problems
end

-- The built-in and ZKFLOW_HOME defaults, then the environment, over the
-- host's `defaults`: the fields of a new context, with ctx.sources naming
-- where each came from ("engine", "env", "home", "default").  Problems of
-- environment values go to ctx.setting_problems.
function _M.initial(defaults)
    defaults = defaults or {}
    local env = os.getenv
    local home = env("ZKFLOW_HOME")
    if home == "" then home = nil end
    local fields, sources, problems = {}, {}, {}
    for _, o in ipairs(OPTIONS) do
        local name, field = o[1], o[2]
        local ev = env(env_name(name))
        if defaults[field] ~= nil then
            fields[field], sources[name] = defaults[field], "engine"
        elseif ev ~= nil and ev ~= "" then
            local v, err = _M.check(name, ev)
            if v == nil then
                problems[#problems + 1] = env_name(name) .. ": " .. err
            else
                fields[field], sources[name] = v, "env"
            end
        end
        if sources[name] == nil then
            if home and name == "db" then
                fields[field], sources[name] = home .. "/zkflow.db", "home"
            elseif home and name == "dags" then
                fields[field], sources[name] = home .. "/dags", "home"
            else
                fields[field], sources[name] = o[3], "default"
            end
        end
    end
    return fields, sources, problems
end

-- Which configuration file applies: --config, else ZKFLOW_CONFIG (empty:
-- none), else the default when it exists.  Returns the path (or nil) and
-- whether it must exist.
function _M.which(flag)
    if flag then return flag, true end
    local ev = os.getenv("ZKFLOW_CONFIG")
    if ev ~= nil then
        if ev == "" then return nil, false end
        return ev, true
    end
    local st = core.stat(_M.DEFAULT_FILE)
    if st then return _M.DEFAULT_FILE, true end
    return nil, false
end

-- Applies the configuration file to `ctx` (built by initial() and then
-- the command line): every option whose source is "home" or "default"
-- takes the file's value.  Problems go to ctx.setting_problems.
function _M.apply_file(ctx)
    local path, must = _M.which(ctx.config_flag)
    ctx.config_file = path
    if not path then return end
    local st = core.stat(path)
    if not st then
        if must then
            ctx.setting_problems[#ctx.setting_problems + 1] = "no configuration file " .. path
        end
        return
    end
    local settings, problems = _M.read_file(path)
    if not settings then
        ctx.setting_problems[#ctx.setting_problems + 1] = problems
        return
    end
    for _, p in ipairs(problems) do
        ctx.setting_problems[#ctx.setting_problems + 1] = p
    end
    for name, s in pairs(settings) do
        local src = ctx.sources[name]
        if src == "home" or src == "default" then
            ctx[by_name[name][2]] = s.value
            ctx.sources[name] = "file"
        end
    end
end

-- The DAG folder a standalone recorded in the embedded store at ctx.db
-- (<root>/config's dags_folder), when the DAG folder came from no
-- setting (ZKFLOW_HOME or the built-in ./dags) and that folder exists.
function _M.apply_recorded(ctx)
    local src = ctx.sources.dags
    if src ~= "home" and src ~= "default" then return end
    if ctx.zk and ctx.zk ~= "" then return end
    local st = core.stat(ctx.db)
    if not st or st.type ~= "file" then return end
    local ok, store = pcall(core.store, ctx.db)
    if not ok or not store then return end
    local config = require "zkflow.config"
    local tbl = config.read(store, ctx.root)
    pcall(store.close, store)
    local dir = type(tbl) == "table" and tbl.dags_folder
    if type(dir) ~= "string" then return end
    -- The folder the default names already (a standalone run here on
    -- ./dags): keep the name as the user wrote it.
    local cwd = os.getenv("PWD")
    if cwd and cwd .. "/" .. ctx.dags:gsub("^%./", "") == dir then return end
    local dst = core.stat(dir)
    if dst and dst.type == "dir" then
        ctx.dags, ctx.sources.dags = dir, "store"
    end
end

return _M
