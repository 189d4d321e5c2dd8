-- The `zk_set` operator: sets the data of `path` (only at `version` when
-- given; the node is created when missing and `create` is true).  XCom:
-- the node's new version.
local zkops = require "zkflow.zk.ops"

return {
    name      = "zk_set",
    fields    = {
        path            = "string",
        data            = "string",
        hosts           = "string?",
        version         = { type = "integer", default = -1 },
        create          = { type = "boolean", default = false },
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
            local stat, err = st:set(t.path, t.data, t.version)
            if not stat and err == "ZNONODE" and t.create then
                local p, cerr = st:create(t.path, t.data, { parents = true })
                if not p then zkops.raise(cerr, t.path) end
                return 0
            end
            if not stat then zkops.raise(err, t.path) end
            return stat.version
        end)
    end,
}
