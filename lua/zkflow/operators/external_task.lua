-- The `external_task` sensor: waits for a task (or, without
-- external_task_id, the whole run) of another DAG at the same logical date
-- minus `execution_delta` seconds to reach one of `allowed_states`; any of
-- `failed_states` fails the sensor.
return {
    name      = "external_task",
    fields    = {
        external_dag_id  = "string",
        external_task_id = "string?",
        allowed_states   = { type = "list", default = { "success" } },
        failed_states    = "list?",
        execution_delta  = "number?",
    },
    templated = { "external_dag_id", "external_task_id" },
    sensor    = true,
}
