-- The `zk_register` operator: an ephemeral registration for the life of
-- the task.  Either a raw node (`path`, `data`; `sequential` adds a
-- sequence suffix) or a service instance (`service` and `instance` =
-- {id=, address=, port=, payload=...}: Curator's ServiceInstance JSON at
-- /services/<service>/<id>, what zkflow.zk's discover() and Curator read).
-- It registers, runs `run(ctx, registration)` when given, else holds for
-- `duration` seconds, then removes the node, also when `run` fails.
-- XCom: {path=, id=, value= (what run returned)}.
local zkops = require "zkflow.zk.ops"

local function service_path(service, id)
    return "/services/" .. service .. "/" .. id
end

local function execute(task, ctx, rt)
    local t = zkops.rendered(task, ctx)
    if not t.run and not t.duration then
        zkops.fail("zk_register: give 'run' (a function) or 'duration' (seconds)")
    end
    if (t.path == nil) == (t.service == nil) then
        zkops.fail("zk_register: give either 'path' or 'service'")
    end
    return zkops.with(t, rt, function(st)
        local reg = {}
        if t.service then
            if t.service == "" or t.service:find("/", 1, true) then
                zkops.raise("ZBADARGUMENTS", "service must be a name without '/'")
            end
            local zk = require "zkflow.zk"
            local c = zk.wrap(st, { borrowed = true })
            local si = c:register(t.service, t.instance or {})
            reg.id = si.id
            reg.path = service_path(t.service, si.id)
            reg.instance = si
            reg.remove = function() c:unregister(t.service, si.id) end
        else
            zkops.check_path(t.path)
            local p, err = st:create(t.path, t.data or "", {
                ephemeral = true, sequential = t.sequential, parents = true })
            if not p then zkops.raise(err, t.path) end
            if st.flush then st:flush() end
            reg.path = p
            reg.id = p:match("[^/]+$")
            reg.remove = function()
                local ok, derr = st:delete(p, -1)
                if not ok and derr ~= "ZNONODE" then zkops.raise(derr, p) end
                if st.flush then st:flush() end
            end
        end
        rt.log("registered " .. reg.path)
        local ok, value = true, nil
        if t.run then
            ok, value = pcall(t.run, ctx, { path = reg.path, id = reg.id,
                                            instance = reg.instance })
        else
            rt.sleep(t.duration)
        end
        local rok, rerr = pcall(reg.remove)
        rt.log("removed " .. reg.path)
        if not ok then error(value, 0) end
        if not rok then error(rerr, 0) end
        return { path = reg.path, id = reg.id, value = value }
    end)
end

return {
    name      = "zk_register",
    fields    = {
        path            = "string?",
        data            = "string?",
        sequential      = { type = "boolean", default = false },
        service         = "string?",
        instance        = "table?",
        run             = "function?",
        duration        = "number?",
        hosts           = "string?",
        session_timeout = "number?",
        connect_timeout = "number?",
    },
    templated = { "path", "data", "service", "instance", "hosts" },
    sensor    = false,
    execute   = execute,
}
