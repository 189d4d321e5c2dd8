-- The `file` sensor: succeeds once `filepath` exists.
return {
    name      = "file",
    fields    = {
        filepath = "string",
    },
    templated = { "filepath" },
    sensor    = true,
}
