-- The `shell` operator: runs `cmd` with /bin/sh -c.  `do_xcom_push` makes
-- the last line of its output the XCom; exit code `skip_on_exit_code`
-- (99, as Airflow's BashOperator) ends the task as skipped.
return {
    name      = "shell",
    fields    = {
        cmd               = "string",
        env               = "table?",
        cwd               = "string?",
        do_xcom_push      = { type = "boolean", default = false },
        skip_on_exit_code = { type = "integer", default = 99 },
    },
    templated = { "cmd", "env", "cwd" },
    sensor    = false,
}
