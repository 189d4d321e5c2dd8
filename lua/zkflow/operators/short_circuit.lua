-- The `short_circuit` operator: when `run(ctx)` returns a falsy value the
-- downstream tasks are skipped; with ignore_downstream_trigger_rules
-- (default, as Airflow) every descendant is skipped, otherwise only the
-- direct downstream and the rest follow their trigger rules.
return {
    name          = "short_circuit",
    fields        = {
        run                             = "function",
        ignore_downstream_trigger_rules = { type = "boolean", default = true },
    },
    templated     = {},
    sensor        = false,
    short_circuit = true,
    runtime       = false,
    -- the scheduler reads the returned value
    execute       = function(task, ctx)
        return task.run(ctx)
    end,
}
