-- A cron schedule: every five minutes, and no catch-up.
--
-- With catchup = false the scheduler starts only the latest interval when
-- it comes up, not one run for every five minutes since start_date.  Each
-- run appends one line to a file under /tmp; `cat` it to watch the ticks.

local flow = require "zkflow"

return flow.dag {
  id              = "cron_snapshot",
  description     = "append a timestamped line to /tmp every five minutes",
  schedule        = "*/5 * * * *",
  start_date      = "2026-01-01T00:00:00Z",
  catchup         = false,
  -- trim rewrites the shared file: never two runs at once.
  max_active_runs = 1,
  tags            = { "example", "schedule" },

  tasks = function(t)
    local snapshot = t.shell {
      id  = "snapshot",
      cmd = [[
        out=/tmp/zkflow-cron-snapshot.log
        printf '%s %s interval %s..%s\n' "$(date -u +%FT%TZ)" "{{ run_id }}" \
          "{{ data_interval_start }}" "{{ data_interval_end }}" >> "$out"
        tail -n 1 "$out"
      ]],
      do_xcom_push = true,
    }

    -- Keep the file short: a task that only trims.
    local trim = t.shell {
      id  = "trim",
      cmd = [[
        out=/tmp/zkflow-cron-snapshot.log
        tail -n 100 "$out" > "$out.tmp" && mv "$out.tmp" "$out"
      ]],
    }

    local _ = snapshot >> trim
  end,
}
