-- The `zk_delete` operator: deletes `path` (with its subtree when
-- recursive; only at `version` when given).  A missing node is fine
-- unless missing_ok = false.  XCom: true when a node was deleted.
local zkops = require "zkflow.zk.ops"

return {
    name      = "zk_delete",
    fields    = {
        path            = "string",
        hosts           = "string?",
        recursive       = { type = "boolean", default = false },
        version         = { type = "integer", default = -1 },
        missing_ok      = { type = "boolean", default = true },
        session_timeout = "number?",
        connect_timeout = "number?",
    },
    templated = { "path", "hosts" },
    sensor    = false,
    execute   = function(task, ctx, rt)
        local t = zkops.rendered(task, ctx)
        zkops.check_path(t.path)
        if t.path == "/" then zkops.raise("ZBADARGUMENTS", "the root '/' cannot be deleted") end
        return zkops.with(t, rt, function(st)
            local ok, err = st:delete(t.path, t.version,
                                      { recursive = t.recursive or nil })
            if not ok then
                if err == "ZNONODE" and t.missing_ok then return false end
                if err == "ZNOTEMPTY" then
                    zkops.raise(err, t.path .. " has children (recursive = true deletes them)")
                end
                zkops.raise(err, t.path)
            end
            return true
        end)
    end,
}
