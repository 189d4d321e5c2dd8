-- A fixed-interval schedule: flow.every(seconds) runs a DAG every N
-- seconds from start_date, without a cron expression.  Useful for checks
-- that must run more often than once a minute.

local flow = require "zkflow"

return flow.dag {
  id          = "every_heartbeat",
  description = "write a heartbeat file under /tmp every 30 seconds",
  schedule    = flow.every(30),
  start_date  = "2026-01-01T00:00:00Z",
  catchup     = false,
  tags        = { "example", "schedule" },

  tasks = function(t)
    local beat = t.shell {
      id  = "beat",
      cmd = "date -u +%s > /tmp/zkflow-heartbeat.{{ dag.dag_id }}",
    }

    -- Reads the file back in Lua, so the XCom says when the beat was.
    local check = t.lua {
      id  = "check",
      run = function(ctx)
        local f = assert(io.open("/tmp/zkflow-heartbeat." .. ctx.dag.dag_id))
        local stamp = tonumber(f:read("l"))
        f:close()
        if not stamp then
          flow.fail("heartbeat file is empty")
        end
        return stamp
      end,
    }

    flow.chain(beat, check)
  end,
}
