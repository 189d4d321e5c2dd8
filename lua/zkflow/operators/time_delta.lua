-- The `time_delta` sensor: waits until data_interval_end + `delta` seconds.
return {
    name      = "time_delta",
    fields    = {
        delta = "number",
    },
    templated = {},
    sensor    = true,
}
