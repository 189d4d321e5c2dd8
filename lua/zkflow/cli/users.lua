-- zkflow.cli.users: the `zkflow users` commands, who may use the HTTP API.
--
-- Users and tokens are kept in the store (zkflow.api.auth), so the
-- commands work against a standalone's database or a cluster's ZooKeeper
-- alike, and a running API sees a change at its next request.

local auth    = require "zkflow.api.auth"
local output  = require "zkflow.cli.output"

local _M = {}

local usage_error, fail = output.usage_error, output.fail
local json_out, out = output.json_out, output.out
local print_table = output.print_table

local function users_of(ctx, create)
    local st = ctx:store(create)
    if not st then return nil end
    return auth.new(st, ctx.root)
end

-- The password: from stdin with --password-stdin (one line), else none
-- (a user that signs in with tokens only).
local function password_of(ctx)
    if not ctx.opts["password-stdin"] then return nil end
    local line = io.stdin:read("l")
    if not line or line == "" then
        usage_error("--password-stdin: no password on standard input")
    end
    return line
end

local function cmd_users_add(ctx, args)
    local role = ctx.opts.role or "viewer"
    if not auth.ROLES[role] then
        usage_error("--role: expected viewer, operator or admin, got '" .. role .. "'")
    end
    local A = users_of(ctx, true)
    local rec, err = A:add_user(args[1], role, password_of(ctx), ctx.opts.replace)
    if not rec then fail(err) end
    if ctx.json then
        json_out({ name = rec.name, role = rec.role })
    else
        out("user ", rec.name, " (", rec.role, ")")
    end
    return 0
end

local function cmd_users_list(ctx)
    local A = users_of(ctx, false)
    local list = A and A:list_users() or {}
    if ctx.json then
        json_out({ users = require("zkflow.state").array(list) })
        return 0
    end
    if #list == 0 then
        out("no users (zkflow users add NAME --role admin)")
        return 0
    end
    local rows = {}
    for _, u in ipairs(list) do
        rows[#rows + 1] = { u.name, u.role, u.password and "yes" or "no",
                            tostring(u.tokens), tostring(u.created) }
    end
    print_table({ "NAME", "ROLE", "PASSWORD", "TOKENS", "CREATED" }, rows)
    return 0
end

local function cmd_users_delete(ctx, args)
    local A = users_of(ctx, false)
    if not A then fail("no user " .. args[1]) end
    local ok, err = A:delete_user(args[1])
    if not ok then fail(err) end
    return 0
end

local function cmd_users_token(ctx, args)
    local A = users_of(ctx, false)
    if not A then fail("no user " .. args[1]) end
    local token, id = A:new_token(args[1], ctx.opts.label)
    if not token then fail(id) end
    if ctx.json then
        json_out({ user = args[1], id = id, token = token })
    else
        out(token)
    end
    return 0
end

_M.add, _M.list, _M.delete, _M.token =
    cmd_users_add, cmd_users_list, cmd_users_delete, cmd_users_token

return _M
