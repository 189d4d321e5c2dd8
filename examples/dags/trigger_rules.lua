-- Trigger rules decide when a task may start from the states of its
-- upstream tasks.  The default, all_success, is not always what you want:
--
--   cleanup   all_done      runs whatever happened upstream (a finally)
--   alert     one_failed    runs as soon as one upstream failed
--   publish   one_success   runs as soon as one upstream succeeded
--   join      none_failed_min_one_success
--                           the join after a branch: one side is skipped
--
-- `risky` fails on purpose (flow.fail: no retries).  The run still
-- succeeds: a run's state is decided by its leaf tasks, and every leaf
-- here ends in success or skipped.  Trigger it with --conf '{"fail": false}'
-- to see the other paths.

local flow = require "zkflow"

return flow.dag {
  id          = "trigger_rules",
  description = "all_done cleanup, one_failed alert, one_success, a branch join",
  start_date  = "2026-01-01T00:00:00Z",
  tags        = { "example", "trigger_rules" },
  params      = { fail = true },

  tasks = function(t)
    local setup = t.shell {
      id  = "setup",
      cmd = "mkdir -p /tmp/zkflow-trigger-rules && echo scratch > /tmp/zkflow-trigger-rules/{{ ds }}",
    }

    local risky = t.lua {
      id  = "risky",
      run = function(ctx)
        if ctx.params.fail then
          flow.fail("failing on purpose (params.fail)")
        end
        return "risky went fine"
      end,
    }

    local safe = t.lua { id = "safe", run = function() return "safe went fine" end }

    -- Removes the scratch file whether risky failed or not.
    local cleanup = t.shell {
      id           = "cleanup",
      trigger_rule = "all_done",
      cmd          = "rm -f /tmp/zkflow-trigger-rules/{{ ds }}",
    }

    local alert = t.lua {
      id           = "alert",
      trigger_rule = "one_failed",
      run          = function(ctx)
        ctx.log("risky failed; an alert would go out here")
        return "alerted"
      end,
    }

    -- When nothing failed, alert ends skipped; a skipped leaf does not
    -- fail the run.

    local publish = t.lua {
      id           = "publish",
      trigger_rule = "one_success",
      run          = function(ctx)
        return ctx.xcom.pull("safe") or ctx.xcom.pull("risky")
      end,
    }

    -- A branch and its join.
    local pick = t.branch {
      id  = "pick",
      run = function(ctx) return ctx.params.fail and "path_a" or "path_b" end,
    }
    local path_a = t.empty { id = "path_a" }
    local path_b = t.empty { id = "path_b" }
    local join = t.empty { id = "join", trigger_rule = "none_failed_min_one_success" }

    local _ = setup >> { risky, safe }
    _ = risky >> { cleanup, alert }
    _ = { risky, safe } >> publish
    _ = safe >> pick >> { path_a, path_b } >> join
  end,
}
