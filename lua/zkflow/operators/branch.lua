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
}
