-- The `zk_get` operator: reads `path`; its data is the XCom (decoded
-- when json = true).  A missing node fails the task, or gives a nil XCom
-- with missing_ok.
local core = require "zkflow.core"
local zkops = require "zkflow.zk.ops"

return {
    name      = "zk_get",
    fields    = {
        path            = "string",
        hosts           = "string?",
        json            = { type = "boolean", default = false },
        missing_ok      = { type = "boolean", default = false },
        session_timeout = "number?",
        connect_timeout = "number?",
    },
    templated = { "path", "hosts" },
    sensor    = false,
    execute   = function(task, ctx, rt)
        local t = zkops.rendered(task, ctx)
        zkops.check_path(t.path)
        return zkops.with(t, rt, function(st)
            local data, err = st:get(t.path)
            if data == nil then
                if err == "ZNONODE" and t.missing_ok then return nil end
                zkops.raise(err, t.path)
            end
            if t.json then
                local v, jerr = core.json_decode(data)
                if v == nil then
                    zkops.fail(t.path .. ": not JSON: " .. tostring(jerr))
                end
                return v
            end
            return data
        end)
    end,
}
