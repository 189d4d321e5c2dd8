-- Configuration restore, on demand: the recovery path of
-- zk_config_backup.  Trigger it with the dump to restore:
--
--   zkflow dags trigger zk_config_restore \
--       --conf '{"file": "/tmp/zkflow-backups/config-20260101T000000.json"}'
--
-- params (or the run's conf): file (default the latest backup), path
-- (where to restore, default the dump's own path /app/config), overwrite
-- (replace the data of nodes that exist; default false: only missing
-- nodes are created).  `plan` is a dry run whose XCom lists every node as
-- create / update / keep; `restore` then writes.  A malformed dump fails
-- `plan` without retries and nothing is written; a restore that fails
-- half-way is undone.  Without a backup file the run ends at `have_backup`
-- (the rest is skipped), so `zkflow dags test` passes on an empty machine.
-- ZKFLOW_ZK, when set, points the operators at a ZooKeeper ensemble.

local flow = require "zkflow"

local ZK = os.getenv("ZKFLOW_ZK")

return flow.dag {
  id          = "zk_config_restore",
  description = "restore /app/config from a zk_config_backup dump",
  schedule    = nil,
  start_date  = "2026-01-01T00:00:00Z",
  tags        = { "example", "zookeeper" },
  params      = { file = "/tmp/zkflow-backups/latest.json", path = "/app/config" },

  tasks = function(t)
    local have = t.short_circuit {
      id  = "have_backup",
      run = function(ctx)
        local f = io.open(ctx.params.file, "rb")   -- the run's conf wins over params
        if f then f:close() end
        return f ~= nil
      end,
    }
    local plan    = t.zk_restore { id = "plan", hosts = ZK, dry_run = true,
                                   from = "{{ params.file }}", path = "{{ params.path }}" }
    local restore = t.zk_restore { id = "restore", hosts = ZK,
                                   from = "{{ params.file }}", path = "{{ params.path }}" }
    flow.chain(have, plan, restore)
  end,
}
