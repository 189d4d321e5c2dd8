-- The `zk_restore` operator: recreates a subtree from a dump (the format of
-- `zkflow zk dump` and zk_dump): from the file `from` (templated), or from
-- the XCom of task `from_task` (a zk_dump without `to`).  `path` puts it
-- somewhere else than the dump's own path.  Existing nodes keep their data
-- unless overwrite; dry_run only reports.  The whole dump is checked
-- before anything is written, and a restore that fails half-way is undone
-- (zkflow.zk.dump), so a malformed dump fails the task (without retries)
-- and leaves the tree as it was.  XCom: {path=, created=, updated=,
-- kept=, actions={"create /a", "update /b", "keep /c", ...}}.
local core = require "zkflow.core"
local zkdump = require "zkflow.zk.dump"
local zkops = require "zkflow.zk.ops"

return {
    name      = "zk_restore",
    fields    = {
        from            = "string?",
        from_task       = "string?",
        path            = "string?",
        hosts           = "string?",
        overwrite       = { type = "boolean", default = false },
        dry_run         = { type = "boolean", default = false },
        session_timeout = "number?",
        connect_timeout = "number?",
    },
    templated = { "from", "path", "hosts" },
    sensor    = false,
    execute   = function(task, ctx, rt)
        local t = zkops.rendered(task, ctx)
        local tree
        if t.from and t.from ~= "" then
            local text, err = core.read_file(t.from)
            if not text then zkops.fail("restore: " .. tostring(err)) end
            local derr
            tree, derr = zkdump.decode(text)
            if not tree then zkops.fail(t.from .. ": " .. derr) end
        elseif t.from_task then
            tree = ctx.xcom.pull(t.from_task)
            if type(tree) ~= "table" then
                zkops.fail("restore: task '" .. t.from_task
                           .. "' has no dump as its XCom")
            end
        else
            zkops.fail("restore: give 'from' (a dump file) or 'from_task'")
        end
        if t.path then zkops.check_path(t.path) end
        local nodes, cerr = zkdump.check(tree, t.path)
        if not nodes then
            zkops.fail((t.from and (t.from .. ": ") or "") .. cerr)
        end
        local res = zkops.with(t, rt, function(st)
            local res, err = zkdump.restore(st, tree, {
                path = t.path, overwrite = t.overwrite, dry_run = t.dry_run,
            })
            if not res then error(err, 0) end
            return res
        end)
        if rt and rt.log then
            rt.log(("restore of %s: %d created, %d updated, %d kept%s"):format(
                res.path, res.created, res.updated, res.kept,
                t.dry_run and " (dry run)" or ""))
            if t.dry_run then
                for _, a in ipairs(res.actions) do rt.log(a) end
            end
        end
        return res
    end,
}
