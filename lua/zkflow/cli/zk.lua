-- zkflow.cli.zk: the `zkflow zk` commands.
--
-- ls, get, set, rm, dump and restore on the store's tree (the embedded
-- store or ZooKeeper alike), and health of a ZooKeeper ensemble.

local core    = require "zkflow.core"
local state   = require "zkflow.state"
local output  = require "zkflow.cli.output"
local context = require "zkflow.cli.context"

local _M = {}

local stdout, stderr = io.stdout, io.stderr
local fmt = string.format
local usage_error, fail, warn = output.usage_error, output.fail, output.warn
local json_out, out = output.json_out, output.out
local print_table = output.print_table
local need = context.need

-- ---- zk (the store's tree) ------------------------------------------------

local function norm_path(ctx, p)
    if p == nil or p == "" then p = "/" end
    if p:sub(1, 1) ~= "/" then
        usage_error("path must start with '/': '" .. p .. "'")
    end
    if #p > 1 then p = p:gsub("/+$", "") end
    local problem = need("zkflow.zk.dump").path_problem(p)
    if problem then
        fail("ZBADARGUMENTS: path '" .. p .. "': " .. problem)
    end
    local _ = ctx
    return p
end

local function cmd_zk_ls(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    local list, err
    if st then list, err = st:children(p) end
    if not list then
        fail(p .. ": " .. tostring(err or "ZNONODE"))
    end
    if ctx.json then
        json_out(state.array(list))
    else
        for _, name in ipairs(list) do out(name) end
    end
    return 0
end

local function cmd_zk_get(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    local data, stat = nil, "ZNONODE"
    if st then data, stat = st:get(p) end
    if not data then
        fail(p .. ": " .. tostring(stat))
    end
    if ctx.json then
        json_out({ path = p, data = data, stat = stat })
    else
        stdout:write(data)
        if data ~= "" and data:sub(-1) ~= "\n" then stdout:write("\n") end
    end
    return 0
end

local function cmd_zk_set(ctx, args)
    local st = ctx:store(true)
    local p = norm_path(ctx, args[1])
    local data = args[2]
    if data == nil then data = io.stdin:read("a") or "" end
    local ok, err = st:set(p, data)
    if not ok and err == "ZNONODE" then
        ok, err = st:create(p, data, { parents = true })
    end
    if not ok then fail(p .. ": " .. tostring(err)) end
    return 0
end

local function cmd_zk_rm(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    local ok, err = nil, "ZNONODE"
    if st then
        ok, err = st:delete(p, -1,
                            { recursive = ctx.opts.recursive and true or nil })
    end
    if not ok then fail(p .. ": " .. tostring(err)) end
    return 0
end

-- The dump format and the restore live in zkflow.zk.dump, shared with the
-- zk_dump and zk_restore operators.
local function cmd_zk_dump(ctx, args)
    local st = ctx:store(false)
    local p = norm_path(ctx, args[1])
    if not st then fail(p .. ": ZNONODE") end
    local tree, info = need("zkflow.zk.dump").dump(st, p)
    if not tree then fail(info) end
    local text = need("zkflow.zk.dump").encode(tree)
    if args[2] and args[2] ~= "-" then
        local ok, werr = core.write_file(args[2], text)
        if not ok then fail(tostring(werr)) end
        if not ctx.json then
            stderr:write(fmt("dump: %d nodes of %s to %s\n", info.count, p,
                             args[2]))
        end
    else
        stdout:write(text)
    end
    if ctx.json and args[2] and args[2] ~= "-" then
        json_out({ path = p, file = args[2], count = info.count,
                   bytes = info.bytes })
    end
    return 0
end

local function cmd_zk_restore(ctx, args)
    local zkdump = need("zkflow.zk.dump")
    local p = norm_path(ctx, args[1])
    local text
    local src = "stdin"
    if args[2] and args[2] ~= "-" then
        local err
        src = args[2]
        text, err = core.read_file(args[2])
        if not text then fail(tostring(err)) end
    else
        text = io.stdin:read("a")
    end
    local tree, derr = zkdump.decode(text or "")
    if not tree then fail(src .. ": " .. derr) end
    local nodes, cerr = zkdump.check(tree, p)
    if not nodes then fail(src .. ": " .. cerr) end
    local dry = ctx.opts["dry-run"] and true or false
    local st = ctx:store(not dry)
    local res, rerr
    if st then
        res, rerr = zkdump.restore(st, tree, {
            path = p, overwrite = ctx.opts.overwrite, dry_run = dry })
        if not res then fail(rerr) end
    else
        -- A dry run without a store file: everything would be created.
        res = { path = p, created = #nodes, updated = 0, kept = 0,
                dry_run = true, actions = {} }
        for i, n in ipairs(nodes) do res.actions[i] = "create " .. n.path end
    end
    if ctx.json then
        json_out(res)
    else
        if dry then
            for _, a in ipairs(res.actions) do out(a) end
        end
        stderr:write(fmt("restore: %d created, %d updated, %d kept%s\n",
                         res.created, res.updated, res.kept,
                         dry and " (dry run)" or ""))
    end
    return 0
end

local function cmd_zk_health(ctx, args)
    local hosts = args[1] or ctx.zk
    if not hosts or hosts == "" then
        usage_error("zk health needs an ensemble: --zk HOSTS, ZKFLOW_ZK or "
                    .. "HOSTS", ctx.path)
    end
    local zkops = need("zkflow.zk.ops")
    local report, problems = zkops.health(hosts, {
        timeout = tonumber(ctx.opts.timeout) or 5 })
    if not report then usage_error("zk health: " .. tostring(problems)) end
    if ctx.json then
        json_out(report)
    else
        local rows = {}
        for _, key in ipairs(zkops.sorted_keys(report)) do
            local m = report[key]
            rows[#rows + 1] = {
                key, m.ok and "ok" or "FAILED", m.mode or "-",
                m.latency and fmt("%s/%s/%s", m.latency.min, m.latency.avg,
                                  m.latency.max) or "-",
                m.node_count and tostring(m.node_count) or "-",
                m.error or "",
            }
        end
        print_table({ "MEMBER", "STATE", "MODE", "LATENCY", "ZNODES", "" },
                    rows)
    end
    if #problems > 0 then
        for _, pr in ipairs(problems) do warn(pr) end
        return 1
    end
    return 0
end

_M.ls, _M.get, _M.set, _M.rm = cmd_zk_ls, cmd_zk_get, cmd_zk_set, cmd_zk_rm
_M.dump, _M.restore, _M.health = cmd_zk_dump, cmd_zk_restore, cmd_zk_health

return _M
