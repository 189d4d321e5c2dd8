-- The `zk_health` operator: asks every member of the ensemble `ruok`,
-- `srvr` and `mntr` over plain TCP (ZooKeeper's four-letter words, no
-- session needed) and fails when a member does not serve.  XCom: one
-- table per member, keyed "host:port": {ok=, mode=, latency={min=, avg=,
-- max=}, rtt=, zxid=, node_count=, connections=, outstanding=, mntr={...},
-- error=}.
--
-- `hosts` (templated, e.g. "{{ var.zk_hosts }}") names the ensemble; left
-- out or empty, the ZKFLOW_ZK environment variable is used, and without
-- that the task is skipped: there is nothing to monitor on the embedded
-- store.  `min_ok` (default: all) is how many members must serve.
local zkops = require "zkflow.zk.ops"

local function execute(task, ctx, rt)
    local t = zkops.rendered(task, ctx)
    local hosts = t.hosts
    if hosts == nil or hosts == "" then hosts = os.getenv("ZKFLOW_ZK") end
    if hosts == nil or hosts == "" then
        zkops.skip("no ZooKeeper ensemble configured (hosts or ZKFLOW_ZK)")
    end
    local report, problems = zkops.health(hosts, {
        words = t.words, timeout = t.request_timeout,
    })
    if not report then zkops.fail("zk_health: " .. tostring(problems)) end
    local total, ok = 0, 0
    for _, key in ipairs(zkops.sorted_keys(report)) do
        local m = report[key]
        total = total + 1
        if m.ok then ok = ok + 1 end
        rt.log(("%s: %s%s%s"):format(key, m.ok and "ok" or "FAILED",
            m.mode and (" " .. m.mode) or "",
            m.error and (" (" .. m.error .. ")") or ""))
    end
    local need = t.min_ok or total
    if ok < need then
        error(("zk_health: %d of %d members serve (%d needed): %s"):format(
            ok, total, need, table.concat(problems, "; ")), 0)
    end
    return report
end

return {
    name      = "zk_health",
    fields    = {
        hosts           = "string?",
        words           = { type = "list", default = { "ruok", "srvr", "mntr" } },
        request_timeout = { type = "number", default = 5 },
        min_ok          = "integer?",
    },
    templated = { "hosts" },
    sensor    = false,
    execute   = execute,
}
