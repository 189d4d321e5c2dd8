-- The `zk_create` operator: creates the znode `path` with `data`
-- (missing parents too, unless parents = false).  XCom: the created path
-- (with its sequence suffix when sequential).  An existing node fails the
-- task unless exist_ok.  `hosts` connects to an ensemble of its own;
-- without it the scheduler's store is used.
local zkops = require "zkflow.zk.ops"

return {
    name      = "zk_create",
    fields    = {
        path            = "string",
        data            = { type = "string", default = "" },
        hosts           = "string?",
        ephemeral       = { type = "boolean", default = false },
        sequential      = { type = "boolean", default = false },
        parents         = { type = "boolean", default = true },
        exist_ok        = { type = "boolean", default = false },
        session_timeout = "number?",
        connect_timeout = "number?",
    },
    templated = { "path", "data", "hosts" },
    sensor    = false,
    execute   = function(task, ctx, rt)
        local t = zkops.rendered(task, ctx)
        zkops.check_path(t.path)
        zkops.check_data(t.data, t.path)
        return zkops.with(t, rt, function(st)
            local p, err = st:create(t.path, t.data, {
                ephemeral = t.ephemeral, sequential = t.sequential,
                parents = t.parents,
            })
            if not p then
                if err == "ZNODEEXISTS" and t.exist_ok then return t.path end
                zkops.raise(err, t.path)
            end
            return p
        end)
    end,
}
