-- Configuration backup: every hour the subtree /app/config is dumped to a
-- JSON file under /tmp/zkflow-backups (one per hour, and latest.json, the
-- one zk_config_restore reads by default).  The dump keeps empty data and
-- writes binary data as base64: the format of `zkflow zk dump`.
--
-- The ZooKeeper operators use the scheduler's own store unless a task
-- names `hosts`: here ZKFLOW_ZK, when set, points them at an ensemble, so
--   zkflow dags test examples/dags/zk_config_backup.lua
-- backs up the embedded store, and
--   ZKFLOW_ZK=127.0.0.1:2181 zkflow dags test examples/dags/zk_config_backup.lua
-- backs up a real ZooKeeper.  `ensure` creates /app/config when it is
-- missing, so the first run on an empty store has something to dump.

local flow = require "zkflow"

local ZK  = os.getenv("ZKFLOW_ZK")
local DIR = "/tmp/zkflow-backups"

return flow.dag {
  id          = "zk_config_backup",
  description = "dump /app/config to a JSON file every hour",
  schedule    = "@hourly",
  start_date  = "2026-01-01T00:00:00Z",
  catchup     = false,
  tags        = { "example", "zookeeper" },

  default_args = { retries = 2, retry_delay = 10, retry_exponential_backoff = true },

  tasks = function(t)
    local ensure = t.zk_create { id = "ensure", hosts = ZK, path = "/app/config",
                                 exist_ok = true }
    local dump   = t.zk_dump   { id = "dump",   hosts = ZK, path = "/app/config",
                                 to = DIR .. "/config-{{ ts_nodash }}.json" }
    local latest = t.shell     { id = "latest",
                                 cmd = "cp " .. DIR .. "/config-{{ ts_nodash }}.json " .. DIR .. "/latest.json.tmp"
                                       .. " && mv " .. DIR .. "/latest.json.tmp " .. DIR .. "/latest.json" }
    local note   = t.lua       { id = "note",
                                 run = function(ctx)
                                   local d = ctx.xcom.pull("dump")
                                   return ("%d nodes of %s in %s"):format(d.count, d.path, d.file)
                                 end }
    flow.chain(ensure, dump, { latest, note })
  end,
}
