-- The `shell` operator: runs `cmd` with /bin/sh -c.  `do_xcom_push` makes
-- the last line of its output the XCom; exit code `skip_on_exit_code`
-- (99, as Airflow's BashOperator) ends the task as skipped.
local operator = require "zkflow.operator"

local pairs, tostring, error, setmetatable = pairs, tostring, error, setmetatable

-- The last line of the file at `path` (of its last 64 KiB), or nil.
local function last_line(path)
    local f = path and io.open(path, "rb")
    if not f then return nil end
    local size = f:seek("end")
    f:seek("set", math.max(0, size - 65536))
    local data = f:read("a")
    f:close()
    local last
    for line in data:gmatch("[^\n]+") do last = line end
    return last
end

local function execute(task, ctx, rt)
    local t = operator.rendered(task, ctx)
    local env = rt.env()
    for k, v in pairs(t.env or {}) do env[k] = tostring(v) end
    rt.log("running: " .. t.cmd)
    local code, sig = rt.spawn { cmd = t.cmd, env = env, cwd = t.cwd }
    if sig and sig ~= 0 then
        error("command killed by signal " .. tostring(sig), 0)
    end
    if code == (task.skip_on_exit_code or 99) then
        error(setmetatable({ zkflow_skip = true,
                             msg = "command exited with code " .. code },
                           { __tostring = function(e) return e.msg end }), 0)
    end
    if code ~= 0 then
        error("command exited with code " .. tostring(code), 0)
    end
    if task.do_xcom_push then return last_line(ctx.ti.log) end
    return nil
end

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
    execute   = execute,
}
