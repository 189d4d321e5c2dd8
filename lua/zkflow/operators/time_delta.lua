-- The `time_delta` sensor: waits until data_interval_end + `delta` seconds.
local core = require "zkflow.core"

return {
    name      = "time_delta",
    fields    = {
        delta = "number",
    },
    templated = {},
    sensor    = true,
    poke      = function(task, _, rt)
        local target = rt.run.data_interval_end + (task.delta or 0)
        return core.now() >= target
    end,
}
