-- Ensemble health monitoring: every five minutes `health` asks each
-- member of the ensemble ruok, srvr and mntr (ZooKeeper's four-letter
-- words, over plain TCP) and fails when one does not serve; its XCom has
-- one entry per member: ok, mode (leader, follower, standalone), latency
-- (min/avg/max ms), znode count, connections...  `summary` turns it into
-- one line.
--
-- Which ensemble: the variable zk_hosts (`zkflow config`/`/variables`),
-- else ZKFLOW_ZK.  With neither, `health` is skipped (and `summary` with
-- it): the embedded store has no ensemble to monitor, and
-- `zkflow dags test` passes.  The members must allow the words
-- (4lw.commands.whitelist=ruok,srvr,mntr; a refused mntr is reported in
-- mntr_error and does not fail the member).

local flow = require "zkflow"

return flow.dag {
  id          = "zk_ensemble_health",
  description = "ruok / srvr / mntr of every ZooKeeper member",
  schedule    = "*/5 * * * *",
  start_date  = "2026-01-01T00:00:00Z",
  catchup     = false,
  tags        = { "example", "zookeeper", "monitoring" },

  tasks = function(t)
    local health  = t.zk_health { id = "health", hosts = "{{ var.zk_hosts }}",
                                  request_timeout = 3, retries = 1, retry_delay = 5 }
    local summary = t.lua { id = "summary",
                            run = function(ctx)
                              local parts = {}
                              for member, m in pairs(ctx.xcom.pull("health")) do
                                parts[#parts + 1] = ("%s %s avg %sms"):format(
                                  member, m.mode or "?", m.latency and m.latency.avg or "?")
                              end
                              table.sort(parts)
                              return table.concat(parts, ", ")
                            end }
    local _ = health >> summary
  end,
}
