-- A DAG that uses an operator of its own folder: `t.line_count` is
-- examples/dags/operators/line_count.lua, found because this file is in
-- examples/dags (an operator is looked up among zkflow's own, then on
-- package.path as zkflow.operators.<name>, then in the DAG folder's
-- operators/).  docs/operators.md, "Writing an operator", walks through it.
--
--   write   writes a three-line file under /tmp
--   count   line_count: the file's line count is its XCom (3)
--   check   a Lua task that pulls the count
--   clean   removes the file, whatever happened (all_done)

local flow = require "zkflow"

local FILE = "/tmp/zkflow-line-count-{{ run_id }}.txt"

return flow.dag {
  id          = "custom_operator",
  description = "a task of an operator that the DAG folder brings",
  schedule    = "@daily",
  start_date  = "2026-01-01T00:00:00Z",
  catchup     = false,
  tags        = { "example", "operator" },

  tasks = function(t)
    local write = t.shell { id = "write", cmd = "printf 'one\\ntwo\\nthree\\n' > '" .. FILE .. "'" }

    local count = t.line_count { id = "count", path = FILE, min_lines = 2 }

    local check = t.lua {
      id  = "check",
      run = function(ctx)
        local n = ctx.xcom.pull("count")
        if n ~= 3 then flow.fail("expected 3 lines, got " .. tostring(n)) end
        return "3 lines"
      end,
    }

    local clean = t.shell { id = "clean", cmd = "rm -f '" .. FILE .. "'", trigger_rule = "all_done" }

    local _ = write >> count >> { check, clean }
  end,
}
