-- A fixed-interval schedule: flow.every(seconds) runs a DAG every N
-- seconds from start_date, without a cron expression.  Useful for checks
-- that must run more often than once a minute.

local flow = require "zkflow"

return flow.dag {
  id              = "every_heartbeat",
  description     = "write a heartbeat file under /tmp every 30 seconds",
  schedule        = flow.every(30),
  start_date      = "2026-01-01T00:00:00Z",
  catchup         = false,
  -- Runs share one file: one at a time, so a slow beat never overlaps the
  -- next one.
  max_active_runs = 1,
  tags            = { "example", "schedule" },

  tasks = function(t)
    -- Write, then rename: a reader never sees a half-written file.
    local beat = t.shell {
      id  = "beat",
      cmd = [[
        f=/tmp/zkflow-heartbeat.{{ dag.dag_id }}
        date -u +%s > "$f.{{ ts_nodash }}" && mv "$f.{{ ts_nodash }}" "$f"
      ]],
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
