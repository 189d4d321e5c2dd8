-- The `line_count` operator: counts the lines of the file `path` and fails
-- when there are fewer than `min_lines`.  XCom: the count.
--
-- An operator is one module: the schema that zkflow checks a task against
-- when the DAG file loads, and the `execute` that runs each try.  This one
-- lives in the DAG folder's operators/ folder, so `t.line_count { ... }`
-- works in every DAG of the folder (docs/operators.md, "Writing an
-- operator").
local flow = require "zkflow"
local operator = require "zkflow.operator"

-- One try.  `task` has the task's fields (defaults filled in), `ctx` is the
-- template context (ds, run_id, params, xcom, ti, ...), `rt` the try's
-- runtime (log, sleep, spawn, env, store).
local function execute(task, ctx, rt)
    local t = operator.rendered(task, ctx)   -- the templated fields, rendered
    local f, err = io.open(t.path, "rb")
    if not f then
        -- an ordinary error: the try fails and `retries` apply
        error("line_count: " .. tostring(err), 0)
    end
    local n = 0
    for _ in f:lines() do n = n + 1 end
    f:close()
    rt.log(("%s has %d lines"):format(t.path, n))
    if n < task.min_lines then
        -- flow.fail: fails at once, without retries
        flow.fail(("line_count: %s has %d lines, fewer than %d"):format(t.path, n, task.min_lines))
    end
    return n
end

return {
    name      = "line_count",
    fields    = {
        path      = "string",                             -- required
        min_lines = { type = "integer", default = 1 },    -- optional, with a default
    },
    templated = { "path" },
    sensor    = false,
    execute   = execute,
}
