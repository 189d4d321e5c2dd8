-- The `external_task` sensor: waits for a task (or, without
-- external_task_id, the whole run) of another DAG at the same logical date
-- minus `execution_delta` seconds to reach one of `allowed_states`; any of
-- `failed_states` fails the sensor.
local function set_of(list, default)
    local s = {}
    for _, v in ipairs(list or default) do s[v] = true end
    return s
end

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
    poke      = function(task, _, rt)
        local ld = rt.run.logical_date - (task.execution_delta or 0)
        local st = rt.external_state(task.external_dag_id, task.external_task_id, ld)
        if st and set_of(task.allowed_states, { "success" })[st] then return true end
        if st and set_of(task.failed_states, {})[st] then
            error({ zkflow_fail = true, msg = ("%s.%s is %s"):format(
                task.external_dag_id, tostring(task.external_task_id or "(run)"), st) }, 0)
        end
        return false
    end,
}
