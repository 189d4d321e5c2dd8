-- The `file` sensor: succeeds once `filepath` exists.
local core = require "zkflow.core"
local operator = require "zkflow.operator"

return {
    name      = "file",
    fields    = {
        filepath = "string",
    },
    templated = { "filepath" },
    sensor    = true,
    poke      = function(task, ctx)
        local t = operator.rendered(task, ctx)
        return core.stat(t.filepath) ~= nil
    end,
}
