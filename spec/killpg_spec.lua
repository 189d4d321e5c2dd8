-- core.killpg with marks: a process group recorded by a dead scheduler is
-- killed only while it is still that try's (the hardening issue's probe
-- 11: a restart killed an unrelated process that had reused the pid).
local core = require "zkflow.core"

-- Starts `sleep 60` as the leader of its own process group, with `env`
-- prefixed ("K=V ..."); returns its pid.
local function start(env)
    local p = assert(io.popen("sh -c '" .. env .. " setsid sleep 60 >/dev/null 2>&1 & echo $!'"))
    local pid = tonumber(p:read("l"))
    p:close()
    -- setsid execs in the background child: wait until it is sleep.
    for _ = 1, 100 do
        local f = io.open("/proc/" .. pid .. "/comm")
        local comm = f and f:read("l")
        if f then f:close() end
        if comm == "sleep" then break end
        os.execute("sleep 0.01")
    end
    return pid
end

local function alive(pid)
    local f = io.open("/proc/" .. pid .. "/stat")
    if not f then return false end
    local stat = f:read("a")
    f:close()
    return not stat:match("^%d+ %b() Z")
end

describe("core.killpg", function()
    it("kills a group whose leader carries the try's marks", function()
        local pid = start("ZKFLOW_TASK_ID=t1 ZKFLOW_RUN_ID=r1")
        assert.is_true(core.killpg(pid, 9, { ZKFLOW_TASK_ID = "t1", ZKFLOW_RUN_ID = "r1" }))
        os.execute("sleep 0.1")
        assert.is_false(alive(pid))
    end)

    it("leaves a process that reused the number alone", function()
        local pid = start("ZKFLOW_TASK_ID=other")
        local ok, why = core.killpg(pid, 9, { ZKFLOW_TASK_ID = "t1" })
        assert.is_false(ok)
        assert.equal("not the try's process", why)
        local plain = start("")
        assert.is_false((core.killpg(plain, 9, { ZKFLOW_TASK_ID = "t1" })))
        os.execute("sleep 0.1")
        assert.is_true(alive(pid))
        assert.is_true(alive(plain))
        core.killpg(pid, 9)
        core.killpg(plain, 9)
    end)

    it("says a group that is gone is gone", function()
        local f = assert(io.open("/proc/sys/kernel/pid_max"))
        local pid = tonumber(f:read("l")) - 1
        f:close()
        while io.open("/proc/" .. pid .. "/stat") do pid = pid - 1 end
        local ok, why = core.killpg(pid, 9, { ZKFLOW_TASK_ID = "t1" })
        assert.is_false(ok)
        assert.equal("gone", why)
    end)

end)
