-- Cluster management: who is in the cluster, who leads, what each worker
-- runs -- read from the membership records every zkflow process keeps in
-- ZooKeeper (/zkflow/members/schedulers/<id>, /zkflow/members/workers/<id>,
-- ephemeral: they vanish with their process's session), the same records
-- `zkflow members` prints.  `census` fails when two schedulers both say
-- they lead (which the election and the write fence rule out) or when fewer
-- workers than params.min_workers are up, so a schedule of this DAG is an
-- alert.  On the embedded store (`dags test`, `standalone`) it sees the
-- standalone scheduler alone, and passes.

local flow = require "zkflow"

local function records(c, path)
  local out = {}
  local ok, kids = pcall(c.children, c, path)
  if not ok then return out end   -- ZNONODE: nobody registered yet
  for _, id in ipairs(kids) do
    local okg, data = pcall(c.get, c, path .. "/" .. id)
    if okg then
      local okd, rec = pcall(require("zkflow.core").json_decode, data)
      out[#out + 1] = okd and type(rec) == "table" and rec or { id = id }
    end
  end
  return out
end

return flow.dag {
  id          = "cluster_members",
  description = "census of the cluster's schedulers and workers; fails on two leaders or too few workers",
  schedule    = "*/10 * * * *",
  start_date  = "2026-01-01T00:00:00Z",
  catchup     = false,
  tags        = { "example", "zookeeper", "cluster" },
  params      = { root = "/zkflow", min_workers = 0 },

  tasks = function(t)
    local census = t.lua { id = "census", run = function(ctx)
      local c = require("zkflow.zk").default()
      local root = ctx.params.root
      local schedulers = records(c, root .. "/members/schedulers")
      local workers = records(c, root .. "/members/workers")
      local leaders, running = {}, 0
      for _, s in ipairs(schedulers) do
        if s.leader then leaders[#leaders + 1] = tostring(s.id) end
      end
      for _, w in ipairs(workers) do
        running = running + (type(w.running) == "table" and #w.running or 0)
      end
      table.sort(leaders)
      if #leaders > 1 then
        flow.fail("more than one scheduler leads: " .. table.concat(leaders, ", "))
      end
      if #workers < ctx.params.min_workers then
        error(("%d workers up, %d wanted"):format(#workers, ctx.params.min_workers))
      end
      return { leader = leaders[1] or "", schedulers = #schedulers,
               workers = #workers, running = running }
    end }
    local report = t.shell { id = "report", after = { census },
      cmd = "echo 'leader {{ xcom(\"census\").leader }}: {{ xcom(\"census\").schedulers }} "
         .. "schedulers, {{ xcom(\"census\").workers }} workers, "
         .. "{{ xcom(\"census\").running }} tries running'",
      do_xcom_push = true }
    local _ = report
  end,
}
