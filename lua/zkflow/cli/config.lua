-- zkflow.cli.config: the `zkflow config` and `zkflow members` commands.
--
-- The cluster configuration (<root>/config, kept by zkflow.config) read
-- and changed from the command line, check-config (the settings of the
-- command itself, zkflow.cli.settings, and that configuration), and the
-- schedulers and workers the store lists as members.

local core    = require "zkflow.core"
local state   = require "zkflow.state"
local output  = require "zkflow.cli.output"
local context = require "zkflow.cli.context"

local _M = {}

local stdout = io.stdout
local concat = table.concat
local fmt = string.format
local usage_error, fail, warn = output.usage_error, output.fail, output.warn
local JSON_OPTS, json_out, out = output.JSON_OPTS, output.json_out, output.out
local print_table = output.print_table
local show = output.show
local need = context.need

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
    -- Any key may be set (users keep their own there), so a near miss of a
    -- known one is a warning, not an error.
    local hint = config.near_miss(key)
    if hint ~= "" then
        warn("'" .. key .. "' is not a key zkflow reads" .. hint
             .. "; set as given")
    end
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

-- ---- check-config -----------------------------------------------------------------

-- Every global setting, its value and where it comes from; exit 1 when
-- the configuration file, the environment or the store's configuration
-- has a problem.
local function cmd_check_config(ctx)
    local settings = need("zkflow.cli.settings")
    local problems = {}
    for _, p in ipairs(ctx.setting_problems) do problems[#problems + 1] = p end
    local list = {}
    for _, o in ipairs(settings.OPTIONS) do
        local v = ctx[o[2]]
        if o[1] == "zk-auth" and v then v = v:gsub(":.*", ":***") end
        list[#list + 1] = { name = o[1], value = v == nil and core.null or v,
                            source = ctx.sources[o[1]] }
    end
    -- The cluster configuration in the store, when there is one to read.
    local cluster = core.null
    if not (ctx.zk and ctx.zk ~= "") then
        local st = ctx:store(false)
        if st then
            local cfg = need("zkflow.config")
            local tbl, err = cfg.read(st, ctx.root)
            if not tbl then
                problems[#problems + 1] = err
            else
                cluster = tbl
                for _, p in ipairs(cfg.problems(tbl)) do
                    problems[#problems + 1] = cfg.path(ctx.root) .. ": " .. p.msg
                end
            end
        end
        if not context.is_dir(ctx.dags) then
            problems[#problems + 1] = "no DAG folder " .. ctx.dags
        end
    end
    if ctx.json then
        json_out({ file = ctx.config_file or core.null,
                   settings = state.array(list),
                   config = cluster,
                   problems = state.array(problems),
                   ok = #problems == 0 })
    else
        out("file: ", ctx.config_file or "none (" .. settings.DEFAULT_FILE
            .. " does not exist)")
        local rows = {}
        for _, x in ipairs(list) do
            rows[#rows + 1] = { x.name, show(x.value), x.source }
        end
        print_table({ "SETTING", "VALUE", "FROM" }, rows)
        for _, p in ipairs(problems) do warn(p) end
        if #problems == 0 then out("ok") end
    end
    return #problems == 0 and 0 or 1
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

_M.get, _M.set, _M.unset, _M.help = cmd_config_get, cmd_config_set,
    cmd_config_unset, config_help
_M.members, _M.check = cmd_members, cmd_check_config

return _M
