-- Service registration and discovery.  `register` announces an instance
-- of the service "api" (Curator's ServiceInstance JSON, ephemeral, at
-- /services/api/<id>) for as long as it runs (here 1 second); meanwhile
-- `discovered` waits for the registration to appear (a zk_watch sensor:
-- event-driven, it wakes on the watch, not on its poke interval),
-- `lookup` reads the instance (XCom: its address and port), and `gone`
-- waits for the node to vanish when `register` ends.  On a real ensemble
-- the node also vanishes when the registering process dies (its session
-- expires): that is what makes discovery trustworthy.
-- ZKFLOW_ZK, when set, points the operators at a ZooKeeper ensemble.

local flow = require "zkflow"

local ZK = os.getenv("ZKFLOW_ZK")
local NODE = "/services/api/api-1"

return flow.dag {
  id          = "zk_service_discovery",
  description = "register a service instance for the run, discover it, see it go",
  schedule    = nil,
  start_date  = "2026-01-01T00:00:00Z",
  tags        = { "example", "zookeeper" },

  default_args = { poke_interval = 5, timeout = 30 },

  tasks = function(t)
    local register   = t.zk_register { id = "register", hosts = ZK, service = "api",
                                       instance = { id = "api-1", address = "127.0.0.1",
                                                    port = 8080 },
                                       duration = 1 }
    local discovered = t.zk_watch { id = "discovered", hosts = ZK, path = NODE }
    local lookup     = t.zk_get   { id = "lookup", hosts = ZK, path = NODE, json = true }
    local gone       = t.zk_watch { id = "gone", hosts = ZK, path = NODE, wait_for = "absent" }
    local report     = t.lua      { id = "report", after = { register, gone },
                                    run = function(ctx)
                                      local inst = ctx.xcom.pull("lookup")
                                      return ("api at %s:%s"):format(inst.address, inst.port)
                                    end }
    local _ = discovered >> lookup >> gone
    local _ = report
  end,
}
