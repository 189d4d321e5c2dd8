-- The zkflow tutorial: one DAG that shows the everyday pieces.
--
--   zkflow dags test examples/dags/tutorial.lua
--   zkflow dags test examples/dags/tutorial.lua --json --date 2026-01-01
--
-- Reading order: the DAG's own fields, then tasks() from top to bottom.
-- Everything the run writes goes under /tmp.

local flow = require "zkflow"

return flow.dag {
  id          = "tutorial",
  description = "shell and Lua tasks, branching, retries, XCom and templating",
  schedule    = "@daily",
  start_date  = "2026-01-01",
  catchup     = false,
  tags        = { "example", "tutorial" },
  params      = { greeting = "hello", rows = 3 },

  -- Every task gets these unless it says otherwise.  A short retry_delay
  -- keeps `dags test` fast; a real DAG would wait minutes, not a fraction
  -- of a second.
  default_args = {
    retries           = 1,
    retry_delay       = 0.2,
    execution_timeout = 30,
  },

  tasks = function(t)
    -- A shell task.  {{ ds }} and {{ params.x }} are rendered before the
    -- command runs; the same values are in the environment as ZKFLOW_*.
    -- do_xcom_push makes the last line of output the task's XCom.
    local hello = t.shell {
      id           = "hello",
      cmd          = "echo '{{ params.greeting }} from {{ dag.dag_id }} on {{ ds }}'",
      do_xcom_push = true,
    }

    -- A Lua task: its return value is its XCom.  ctx.xcom.push stores
    -- extra values under a key of their own.
    local extract = t.lua {
      id  = "extract",
      run = function(ctx)
        local rows = {}
        for i = 1, ctx.params.rows do
          rows[i] = { id = i, value = i * 10 }
        end
        ctx.xcom.push("row_count", #rows)
        return rows
      end,
    }

    -- Pulls both kinds of XCom: the return value (no key) and a keyed one.
    local total = t.lua {
      id  = "total",
      run = function(ctx)
        local rows = ctx.xcom.pull("extract")
        local sum = 0
        for _, r in ipairs(rows) do
          sum = sum + r.value
        end
        ctx.log("summed", ctx.xcom.pull("extract", "row_count"), "rows")
        return sum
      end,
    }

    -- A task that fails on its first try and succeeds on its second: the
    -- marker file is named after the run, so every run starts fresh.
    -- {{ ti.try_number }} counts from 1.
    local flaky = t.shell {
      id           = "flaky",
      retries      = 2,
      cmd          = [[
        marker="/tmp/zkflow-tutorial-{{ run_id }}.flaky"
        echo "try {{ ti.try_number }}"
        if [ ! -e "$marker" ]; then touch "$marker"; exit 1; fi
        rm -f "$marker"
        echo "try {{ ti.try_number }} ok"
      ]],
      do_xcom_push = true,
    }

    -- A branch returns the id (or ids) of the downstream tasks to follow;
    -- the others are skipped.
    local choose = t.branch {
      id  = "choose",
      run = function(ctx)
        if ctx.xcom.pull("total") > 50 then
          return "big"
        end
        return "small"
      end,
    }
    local big   = t.lua { id = "big",   run = function() return "big total" end }
    local small = t.lua { id = "small", run = function() return "small total" end }

    -- After a branch one side is always skipped, so the join must not use
    -- the default all_success rule.
    t.lua {
      id           = "report",
      after        = { big, small, flaky },
      trigger_rule = "none_failed_min_one_success",
      run          = function(ctx)
        return {
          greeting = ctx.xcom.pull("hello"),
          total    = ctx.xcom.pull("total"),
          branch   = ctx.xcom.pull("big") or ctx.xcom.pull("small"),
          flaky    = ctx.xcom.pull("flaky"),
          ds       = ctx.ds,
        }
      end,
    }

    -- Dependencies, three equivalent ways: `after` in a spec (report,
    -- above), flow.chain, and `>>` (an expression that returns its right
    -- side, hence the `local _ =`; a list works on either side).
    flow.chain(hello, extract, total)
    local _ = total >> choose >> { big, small }
  end,
}
