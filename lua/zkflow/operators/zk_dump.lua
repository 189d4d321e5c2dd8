-- The `zk_dump` operator: writes the subtree at `path` as JSON (the format
-- of `zkflow zk dump`, see zkflow.zk.dump) to the file `to` (templated;
-- parent directories created; written atomically), or, without `to`,
-- makes the dump itself the XCom.  With `to` the XCom is
-- {path=, file=, count= (nodes), bytes= (data bytes)}.
local core = require "zkflow.core"
local zkdump = require "zkflow.zk.dump"
local zkops = require "zkflow.zk.ops"

return {
    name      = "zk_dump",
    fields    = {
        path            = "string",
        to              = "string?",
        hosts           = "string?",
        session_timeout = "number?",
        connect_timeout = "number?",
    },
    templated = { "path", "to", "hosts" },
    sensor    = false,
    execute   = function(task, ctx, rt)
        local t = zkops.rendered(task, ctx)
        zkops.check_path(t.path)
        local tree, info = zkops.with(t, rt, function(st)
            local tree, info = zkdump.dump(st, t.path)
            if not tree then error(info, 0) end
            return tree, info
        end)
        if not t.to or t.to == "" then return tree end
        local dir = t.to:match("^(.*)/[^/]*$")
        if dir and dir ~= "" then
            local ok, err = core.mkdirs(dir)
            if not ok then error(tostring(err), 0) end
        end
        local ok, err = core.write_file(t.to, zkdump.encode(tree))
        if not ok then error(tostring(err), 0) end
        if rt and rt.log then
            rt.log(("dumped %d nodes of %s to %s"):format(info.count, t.path, t.to))
        end
        return { path = t.path, file = t.to, count = info.count, bytes = info.bytes }
    end,
}
