-- The `zk_watch` sensor: waits for the znode `path` to exist (wait_for =
-- "exists", the default), to be gone ("absent") or to change ("changed":
-- created, deleted or its data set since the sensor's first poke); with
-- `value` its data must equal it, with `match` contain the Lua pattern.
-- XCom: the node's data (nil when absent).
--
-- Event-driven: in poke mode the sensor sets a watch and waits for it to
-- fire, for at most poke_interval (a safety net) and never past `timeout`,
-- so a change is seen at once rather than at the next poke.  In reschedule
-- mode each try looks once and gives its slot back; "changed" then means
-- modified (mtime) after the first try started.
local core = require "zkflow.core"
local async = require "zkflow.async"
local zkops = require "zkflow.zk.ops"

local now, min, max = core.now, math.min, math.max

-- Is the condition met?  Returns done, xcom.
local function check(t, st, stat, baseline, first)
    local data
    if stat and (t.value or t.match or t.wait_for ~= "absent") then
        local err
        data, err = st:get(t.path)
        if data == nil and err ~= "ZNONODE" then zkops.raise(err, t.path) end
        if data == nil then stat = nil end
    end
    local ok
    if t.wait_for == "absent" then
        ok = stat == nil
    elseif t.wait_for == "changed" then
        if baseline then
            ok = (stat and stat.mzxid or false) ~= baseline.mzxid
        else
            ok = stat ~= nil and stat.mtime / 1000 > first
        end
    else
        ok = stat ~= nil
    end
    if ok and stat then
        if t.value and data ~= t.value then ok = false end
        if ok and t.match and not data:find(t.match) then ok = false end
    end
    return ok, data
end

local function execute(task, ctx, rt)
    local t = zkops.rendered(task, ctx)
    zkops.check_path(t.path)
    local first = rt.first_start() or now()
    local timeout = task.timeout or 7 * 24 * 3600
    local reschedule = task.mode == "reschedule"
    return zkops.with(t, rt, function(st)
        local baseline
        local armed, fired, wake = false, false, nil
        local function on_event()
            armed, fired = false, true
            if wake then wake() end
        end
        local n = 0
        while true do
            local stat
            if armed or reschedule then
                stat = st:exists(t.path)
            else
                fired = false
                stat = st:exists(t.path, on_event)
                armed = true
            end
            if t.wait_for == "changed" and not reschedule and n == 0 then
                baseline = { mzxid = stat and stat.mzxid or false }
            end
            local done, data = check(t, st, stat, baseline, first)
            if done then return data end
            n = n + 1
            local elapsed = now() - first
            if elapsed >= timeout then
                local msg = ("sensor timed out after %gs"):format(timeout)
                if task.soft_fail then zkops.skip(msg .. " (soft_fail)") end
                zkops.fail(msg)
            end
            local interval = task.poke_interval or 60
            if task.exponential_backoff then
                interval = min(interval * 2 ^ (n - 1), task.max_wait or 3600)
            end
            interval = max(0, min(interval, timeout - elapsed))
            if reschedule then
                rt.log(("not yet; rescheduled in %gs"):format(interval))
                return { zkflow_reschedule = interval }
            end
            if not fired then
                local tm
                async.wait(function(resume)
                    wake = resume
                    tm = core.timer(interval, resume)
                    return function() tm:cancel() end
                end)
                wake = nil
                tm:cancel()
            end
        end
    end)
end

return {
    name      = "zk_watch",
    fields    = {
        path            = "string",
        hosts           = "string?",
        wait_for        = { type = "string", default = "exists",
                            one_of = { "exists", "absent", "changed" } },
        value           = "string?",
        match           = "string?",
        session_timeout = "number?",
        connect_timeout = "number?",
    },
    templated = { "path", "hosts", "value", "match" },
    sensor    = true,
    execute   = execute,
}
