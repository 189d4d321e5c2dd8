-- The `lua` operator: runs `run(ctx)` as a coroutine; its return value is
-- the task's XCom.  Schema only; execution lives in the scheduler.
return {
    name      = "lua",
    fields    = {
        run = "function",
    },
    templated = {},
    sensor    = false,
}
