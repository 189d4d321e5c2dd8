-- The `lua` operator: runs `run(ctx)` as a coroutine; its return value is
-- the task's XCom.
return {
    name      = "lua",
    fields    = {
        run = "function",
    },
    templated = {},
    sensor    = false,
    runtime   = false,
    execute   = function(task, ctx)
        return task.run(ctx)
    end,
}
