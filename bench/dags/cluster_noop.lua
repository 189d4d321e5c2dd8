-- bench/cluster.sh: 400 independent no-op Lua tasks.  Every try goes
-- through the cluster's queue to a worker and back (queue node, claim,
-- result), so the run's wall time is the protocol's, not the tasks'.
-- CLUSTER_N (default 400) sets the number of tasks.
local flow = require "zkflow"

local n = math.tointeger(tonumber(os.getenv("CLUSTER_N") or "400"))
if not n or n < 1 then
  error("bench/dags/cluster_noop.lua: CLUSTER_N must be a positive integer, got '"
        .. tostring(os.getenv("CLUSTER_N")) .. "'")
end

local function noop() end

return flow.dag {
  id = "bench_cluster_noop",
  start_date = "2026-01-01T00:00:00Z",
  max_active_tasks = 100000,
  tasks = function(t)
    for i = 1, n do
      t.lua { id = ("t%04d"):format(i), run = noop }
    end
  end,
}
