-- The `branch` operator: `run(ctx)` returns the task id (or list of ids) to
-- follow among its direct downstream tasks; the others are skipped.
return {
    name      = "branch",
    fields    = {
        run = "function",
    },
    templated = {},
    sensor    = false,
    branch    = true,
    runtime   = false,
    -- the scheduler reads the returned ids (Sched:branch_targets)
    execute   = function(task, ctx)
        return task.run(ctx)
    end,
}
