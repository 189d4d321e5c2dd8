-- zkflow.cli.db: the `zkflow db` commands -- the history store
-- (docs/history.md).
--
-- `db clean` is Airflow's `airflow db clean` in spirit: finished runs that
-- started before a date leave the history with their task instances,
-- XComs and log copies; their log folders go; then the DAG versions
-- (/dags/<id>/versions/<hash>) that no run refers to any more.  The live
-- store is not touched: a run that has not ended is never removed.

local core    = require "zkflow.core"
local state   = require "zkflow.state"
local time    = require "zkflow.time"
local output  = require "zkflow.cli.output"
local context = require "zkflow.cli.context"

local _M = {}

local fmt = string.format
local usage_error, fail = output.usage_error, output.fail
local json_out, out = output.json_out, output.out
local need, parse_date = context.need, context.parse_date

-- The version each DAG of the folder has now: kept, a run may start with
-- it any moment (a cluster's leader published it for its workers).
local function current_dags(ctx)
    local ok, scan = pcall(ctx.scan, ctx)
    return ok and scan and scan.dags or {}
end

local function cmd_db_clean(ctx)
    local o = ctx.opts
    if not o.before then usage_error("--before is required") end
    local before = parse_date(o.before, "--before")
    local keep_last
    if o["keep-last"] ~= nil then
        keep_last = math.tointeger(tonumber(o["keep-last"]))
        if not keep_last or keep_last < 0 then
            usage_error("--keep-last: expected an integer >= 0, got '"
                        .. tostring(o["keep-last"]) .. "'")
        end
    end
    if o.dag then
        local ok, err = need("zkflow.ids").check("dag_id", o.dag)
        if not ok then usage_error("--dag: " .. err) end
    end
    local st = ctx:store(false)
    local h = ctx:history()
    if not h then
        fail("no history store: give --history URL (or --db PATH of an embedded store; "
             .. "with --zk, history_url in /config)")
    end
    local dry = o["dry-run"] and true or false
    local removed = h:delete_runs { before = before, dag_id = o.dag,
                                    keep_last = keep_last, dry_run = dry }
    local archive = need("zkflow.scheduler.archive")
    local folders = 0
    local logs_dir = ctx:logs_dir()
    for _, r in ipairs(removed.list) do
        if core.stat(need("zkflow.history").log_folder(logs_dir, r.dag_id, r.run_id)) then
            folders = folders + 1
        end
    end
    if not dry then archive.remove_logs(logs_dir, removed.list) end
    local versions = {}
    if st then
        versions = archive.prune_versions(st, ctx.root, h, current_dags(ctx), dry)
    end
    if ctx.json then
        local list = {}
        for i, r in ipairs(removed.list) do
            list[i] = { dag_id = r.dag_id, run_id = r.run_id }
        end
        json_out({
            dry_run = dry, before = time.iso(before), dag_id = o.dag or core.null,
            keep_last = keep_last or core.null,
            runs = removed.runs, task_instances = removed.task_instances,
            xcoms = removed.xcoms, log_copies = removed.logs, log_folders = folders,
            dag_versions = #versions, removed = state.array(list),
            removed_versions = state.array(versions),
        })
        return 0
    end
    local verb = dry and "would remove" or "removed"
    for _, r in ipairs(removed.list) do
        out(fmt("%s run %s %s", verb, r.dag_id, r.run_id))
    end
    for _, p in ipairs(versions) do out(fmt("%s DAG version %s", verb, p)) end
    out(fmt("%s %d runs, %d task instances, %d XComs, %d log copies, %d log folders, "
            .. "%d DAG versions", verb, removed.runs, removed.task_instances, removed.xcoms,
            removed.logs, folders, #versions))
    return 0
end

_M.clean = cmd_db_clean

return _M
