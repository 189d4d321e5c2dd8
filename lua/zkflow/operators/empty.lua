-- The `empty` operator: does nothing and succeeds (a join or a marker).
return {
    name      = "empty",
    fields    = {},
    templated = {},
    sensor    = false,
    runtime   = false,
    execute   = function() return nil end,
}
