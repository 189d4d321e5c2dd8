-- Pools and priorities.  A pool caps how many tasks run at once across
-- every DAG that uses it; pool_slots says how much of it one task takes.
-- When tasks wait for room, the highest priority_weight starts first.
--
-- Pool sizes live in the store, one node per pool (/pools/<name> holding
-- {"slots": N}); a pool nobody sized has 128 slots.  This DAG also sets
-- max_active_tasks = 1, so the order is visible even without a sized
-- pool: the four loaders start one at a time, most important first, and
-- `order` returns the sequence they ran in.

local flow = require "zkflow"

local LOADERS = {
  { id = "load_small",  weight = 1  },
  { id = "load_urgent", weight = 10 },
  { id = "load_normal", weight = 5  },
  { id = "load_bulk",   weight = 2, slots = 2 },
}

return flow.dag {
  id               = "pools_priority",
  description      = "pool slots and priority_weight under max_active_tasks = 1",
  start_date       = "2026-01-01T00:00:00Z",
  max_active_tasks = 1,
  tags             = { "example", "pools" },

  -- weight_rule = "absolute": a task's priority is its own weight, not
  -- the sum over its downstream tasks (Airflow's default rule).
  default_args = {
    pool        = "loaders",
    weight_rule = "absolute",
  },

  tasks = function(t)
    local start = t.shell {
      id  = "start",
      cmd = "rm -f /tmp/zkflow-pools-{{ run_id }}.order",
    }

    local loaders = {}
    for _, l in ipairs(LOADERS) do
      loaders[#loaders + 1] = t.shell {
        id              = l.id,
        priority_weight = l.weight,
        pool_slots      = l.slots or 1,
        cmd             = "echo {{ ti.task_id }} >> /tmp/zkflow-pools-{{ run_id }}.order",
      }
    end

    local order = t.lua {
      id   = "order",
      pool = "default_pool",
      run  = function(ctx)
        local path = "/tmp/zkflow-pools-" .. ctx.run_id .. ".order"
        local seen = {}
        for line in io.lines(path) do
          seen[#seen + 1] = line
        end
        os.remove(path)
        return seen
      end,
    }

    local _ = start >> loaders >> order
  end,
}
