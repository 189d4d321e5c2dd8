-- Sensors wait for something outside the DAG.  Both here are `file`
-- sensors in reschedule mode: between pokes they give their slot back
-- instead of holding it while they sleep.
--
--   wait_ready   the file appears (a task beside it writes it) and the
--                sensor succeeds on a later poke;
--   wait_never   the file never appears; after `timeout` seconds
--                soft_fail ends it as skipped instead of failed, and the
--                downstream task's none_failed rule lets the run go on.
--
-- The intervals are short so `zkflow dags test` ends in about a second;
-- real sensors poke every minute or so.

local flow = require "zkflow"

return flow.dag {
  id          = "file_sensor",
  description = "file sensors in reschedule mode, one with soft_fail",
  schedule    = "@hourly",
  start_date  = "2026-01-01T00:00:00Z",
  catchup     = false,
  tags        = { "example", "sensor" },

  default_args = {
    mode          = "reschedule",
    poke_interval = 0.2,
  },

  tasks = function(t)
    -- Writes the file a little later while the sensor, beside it, pokes
    -- at least once before it is there.  (Not in the background of a task
    -- that ends at once: nothing a try starts outlives it.)
    t.shell {
      id  = "produce",
      cmd = [[
        f="/tmp/zkflow-sensor-{{ run_id }}.ready"
        sleep 0.3
        echo ready > "$f"
      ]],
    }

    local wait_ready = t.file {
      id       = "wait_ready",
      filepath = "/tmp/zkflow-sensor-{{ run_id }}.ready",
      timeout  = 10,
    }

    local wait_never = t.file {
      id        = "wait_never",
      filepath  = "/tmp/zkflow-sensor-{{ run_id }}.never",
      timeout   = 0.6,
      soft_fail = true,
    }

    t.shell {
      id           = "consume",
      after        = { wait_ready, wait_never },
      trigger_rule = "none_failed",
      cmd          = [[
        f="/tmp/zkflow-sensor-{{ run_id }}.ready"
        cat "$f" && rm -f "$f"
      ]],
      do_xcom_push = true,
    }
  end,
}
