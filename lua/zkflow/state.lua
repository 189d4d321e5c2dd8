-- zkflow.state: the run, task instance, pause and request records in the
-- store, in one place, so the scheduler, the CLI and the HTTP API read and
-- write the same layout (docs/internals.md, "The znode layout").
--
--   local state = require "zkflow.state"
--   local S = state.new(st, "/zkflow")      -- st: core.store() or a zk client
--   S:create_run{dag_id=..., run_id=..., state="queued", ...}
--
-- Records are JSON objects.  Reads return nil (and an error name) when a
-- node is missing; writes raise on store errors other than the expected
-- ones, because a store that refuses a write is not something the caller
-- can work around.

local core = require "zkflow.core"
local time = require "zkflow.time"
local records = require "zkflow.records"

local _M = {}

local json_encode, json_decode = core.json_encode, core.json_decode
local concat, sort, insert = table.concat, table.sort, table.insert

-- Every state a DAG run can be in, in the order a run goes through them.
_M.RUN_STATES = { "queued", "running", "success", "failed" }

-- Run states in which the scheduler has nothing left to do.
_M.RUN_FINISHED = { success = true, failed = true }

-- Task instance states after which a try does not change any more.
_M.TI_FINISHED = {
    success = true, failed = true, skipped = true,
    upstream_failed = true, removed = true,
}

local S = {}
S.__index = S

-- Returns a state accessor over `store` (borrowed: it must outlive the
-- accessor) rooted at `root` (default "/zkflow").  opts.history: the
-- history store (zkflow.history, borrowed) where finished runs live once
-- they have left the live store; the reads below look there after the
-- live store, so a caller never sees where a run is.
function _M.new(store, root, opts)
    if not store then
        error("state.new: 'store' is required", 2)
    end
    root = root or "/zkflow"
    if root == "/" then root = "" end
    root = root:gsub("/+$", "")
    return setmetatable({ store = store, root = root,
                          history = opts and opts.history or nil }, S)
end

-- Marks a list so that core.json_encode writes it as an array even when
-- it is empty (docs/internals.md: `__jsontype`).
local ARRAY = { __jsontype = "array" }
function _M.array(t)
    return setmetatable(t or {}, ARRAY)
end

-- Dates are zkflow.time's: these names stay for the modules that have
-- always found them here.
_M.iso = time.iso
_M.parse_time = time.parse

-- This machine's name (members' records), read once.
local host_name
function _M.hostname()
    if not host_name then
        local f = io.open("/proc/sys/kernel/hostname")
        local h = f and f:read("l")
        if f then f:close() end
        host_name = h or os.getenv("HOSTNAME") or "localhost"
    end
    return host_name
end

-- The run id Airflow would give (zkflow.records).
_M.run_id = records.run_id

-- ---- paths ---------------------------------------------------------------

function S:path(...)
    local parts = { self.root }
    for i = 1, select("#", ...) do
        parts[#parts + 1] = "/" .. select(i, ...)
    end
    return concat(parts)
end

-- ---- low level -----------------------------------------------------------

-- Returns the decoded record at `path`, or nil and "ZNONODE" (or the
-- decode error).
function S:read(path)
    local data, err = self.store:get(path)
    if not data then
        return nil, err
    end
    if data == "" then
        return {}
    end
    local v, derr = json_decode(data)
    if v == nil then
        return nil, "bad record at " .. path .. ": " .. tostring(derr)
    end
    return v
end

-- Writes `record` at `path`, creating it (and its parents) when missing.
function S:write(path, record)
    local data = json_encode(record)
    local ok, err = self.store:set(path, data)
    if ok then
        return true
    end
    if err ~= "ZNONODE" then
        error("store: set " .. path .. ": " .. tostring(err), 2)
    end
    local created, cerr = self.store:create(path, data, { parents = true })
    if not created and cerr ~= "ZNODEEXISTS" then
        error("store: create " .. path .. ": " .. tostring(cerr), 2)
    elseif not created then
        -- Lost a race with another writer: last write wins, as set would.
        self.store:set(path, data)
    end
    return true
end

function S:children(path)
    local list = self.store:children(path)
    return list or {}
end

-- ---- paused flags --------------------------------------------------------

function S:is_paused(dag_id)
    return self.store:exists(self:path("dags", dag_id, "paused")) ~= nil
end

-- Pauses (true) or unpauses (false) a DAG.  Returns true when the flag
-- changed, false when it already had that value.
function S:set_paused(dag_id, paused)
    local p = self:path("dags", dag_id, "paused")
    if paused then
        local ok, err = self.store:create(p, "", { parents = true })
        if ok then return true end
        if err == "ZNODEEXISTS" then return false end
        error("store: create " .. p .. ": " .. tostring(err), 2)
    end
    local ok, err = self.store:delete(p)
    if ok then return true end
    if err == "ZNONODE" then return false end
    error("store: delete " .. p .. ": " .. tostring(err), 2)
end

-- Ids of the DAGs that have a node under /dags (paused or pushed).
function S:paused_dags()
    local out = {}
    for _, id in ipairs(self:children(self:path("dags"))) do
        if self:is_paused(id) then out[#out + 1] = id end
    end
    return out
end

-- ---- runs ----------------------------------------------------------------

-- The run record: the live store's, else the history's; nil and
-- "ZNONODE" when neither has it.
function S:get_run(dag_id, run_id)
    local rec, err = self:read(self:path("runs", dag_id, run_id))
    if rec or err ~= "ZNONODE" or not self.history then
        return rec, err
    end
    rec = self.history:get_run(dag_id, run_id)
    if rec then return rec end
    return nil, "ZNONODE"
end

-- The run record from the live store only (nil when it is not live).
function S:get_live_run(dag_id, run_id)
    return self:read(self:path("runs", dag_id, run_id))
end

-- Whether a run with that id exists, live or in history.
function S:has_run(dag_id, run_id)
    if self.store:exists(self:path("runs", dag_id, run_id)) then
        return true
    end
    return self.history ~= nil and self.history:has_run(dag_id, run_id)
end

-- Creates the run node; `run` needs dag_id and run_id.  Returns the run,
-- or nil and "ZNODEEXISTS" when a run with that id exists.
function S:create_run(run)
    assert(run.dag_id and run.run_id, "create_run: dag_id and run_id")
    local p = self:path("runs", run.dag_id, run.run_id)
    local ok, err = self.store:create(p, json_encode(run), { parents = true })
    if not ok then
        if err == "ZNODEEXISTS" then
            return nil, err
        end
        error("store: create " .. p .. ": " .. tostring(err), 2)
    end
    return run
end

-- Replaces the run record (created when missing).
function S:put_run(run)
    assert(run.dag_id and run.run_id, "put_run: dag_id and run_id")
    return self:write(self:path("runs", run.dag_id, run.run_id), run)
end

-- Merges `fields` into the run record; returns the new record or nil, err.
function S:update_run(dag_id, run_id, fields)
    local run, err = self:get_run(dag_id, run_id)
    if not run then
        return nil, err
    end
    for k, v in pairs(fields) do
        run[k] = v
    end
    self:write(self:path("runs", dag_id, run_id), run)
    return run
end

function S:delete_run(dag_id, run_id)
    return self.store:delete(self:path("runs", dag_id, run_id), -1,
                             { recursive = true })
end

-- DAG ids that have runs.
function S:run_dags()
    return self:children(self:path("runs"))
end

-- Ids of the runs of `dag_id`, as stored (sorted by name).
function S:run_ids(dag_id)
    return self:children(self:path("runs", dag_id))
end

local function run_order(a, b)
    local la, lb = a.logical_date or "", b.logical_date or ""
    if la ~= lb then return la < lb end
    return (a.run_id or "") < (b.run_id or "")
end

-- The live runs of `dag_id` (or of every DAG when nil), oldest logical
-- date first; `state` keeps only runs in that state.
function S:live_runs(dag_id, st)
    local dags = dag_id and { dag_id } or self:run_dags()
    local out = {}
    for _, d in ipairs(dags) do
        for _, rid in ipairs(self:run_ids(d)) do
            local run = self:read(self:path("runs", d, rid))
            if run then
                run.dag_id = run.dag_id or d
                run.run_id = run.run_id or rid
                if not st or run.state == st then
                    out[#out + 1] = run
                end
            end
        end
    end
    sort(out, run_order)
    return out
end

-- The sort key of a run record: logical date, run id, DAG id (the
-- history's ORDER BY).
local function key_less(a, b)
    local la, lb = a.logical_date or "", b.logical_date or ""
    if la ~= lb then return la < lb end
    local ra, rb = a.run_id or "", b.run_id or ""
    if ra ~= rb then return ra < rb end
    return (a.dag_id or "") < (b.dag_id or "")
end

-- Runs of `dag_id` (or of every DAG when nil), live and finished (from
-- the history) as one list, oldest logical date first; returns the runs
-- and how many match in all.  filter: state (only runs in that state),
-- order ("asc", default, or "desc": newest first), limit and offset (a
-- page of that order; without limit every run).  A page costs the live
-- runs (few: finished ones move to the history within seconds) plus one
-- indexed query of the history.
function S:list_runs(dag_id, filter)
    filter = filter or {}
    local desc = filter.order == "desc"
    local live = self:live_runs(dag_id, filter.state)
    local h = self.history
    if h then
        -- A finished run between its copy to the history and its removal
        -- from the live store is in both: the history's row counts.
        local only = {}
        for _, r in ipairs(live) do
            if not (_M.RUN_FINISHED[r.state] and h:has_run(r.dag_id, r.run_id)) then
                only[#only + 1] = r
            end
        end
        live = only
    end
    local less = key_less
    if desc then less = function(a, b) return key_less(b, a) end end
    sort(live, less)
    local n = #live
    local limit, offset = filter.limit, math.max(0, filter.offset or 0)
    if not h then
        if not limit then return live, n end
        local page = {}
        for i = offset + 1, math.min(n, offset + limit) do page[#page + 1] = live[i] end
        return page, n
    end
    if not limit then
        local hist, htotal = h:list_runs(dag_id, { state = filter.state, order = filter.order })
        local out = {}
        for _, r in ipairs(live) do out[#out + 1] = r end
        for _, r in ipairs(hist) do out[#out + 1] = r end
        sort(out, less)
        return out, n + htotal
    end
    -- The history's part of the page lies within [offset - n, offset +
    -- limit) of its own order; its first row anchors the merge: the live
    -- runs before it that come before the page are the ones before it.
    local htotal = h:count_runs(dag_id, filter.state)
    local total = n + htotal
    local merged, pos0
    if htotal == 0 then
        merged, pos0 = live, 0
    else
        local a = math.max(0, math.min(offset - n, htotal - 1))
        local window = h:list_runs(dag_id, { state = filter.state, order = filter.order,
                                             limit = math.max(1, offset + limit - a),
                                             offset = a })
        local first = window[1]
        merged = {}
        local before = 0
        for _, r in ipairs(live) do
            if a == 0 or not first or not less(r, first) then
                merged[#merged + 1] = r
            else
                before = before + 1
            end
        end
        for _, r in ipairs(window) do merged[#merged + 1] = r end
        sort(merged, less)
        pos0 = a == 0 and 0 or (a + before)
    end
    local page = {}
    for i = offset - pos0 + 1, offset - pos0 + limit do
        if i >= 1 and merged[i] then page[#page + 1] = merged[i] end
    end
    return page, total
end

-- ---- task instances ------------------------------------------------------

function S:get_ti(dag_id, run_id, task_id)
    local rec, err = self:read(self:path("runs", dag_id, run_id, task_id))
    if rec or err ~= "ZNONODE" or not self.history then
        return rec, err
    end
    rec = self.history:get_ti(dag_id, run_id, task_id)
    if rec then return rec end
    return nil, "ZNONODE"
end

function S:put_ti(dag_id, run_id, ti)
    assert(ti.task_id, "put_ti: task_id")
    return self:write(self:path("runs", dag_id, run_id, ti.task_id), ti)
end

-- Merges `fields` into a task instance (created when missing).
function S:update_ti(dag_id, run_id, task_id, fields)
    local ti = self:get_ti(dag_id, run_id, task_id) or { task_id = task_id }
    for k, v in pairs(fields) do
        ti[k] = v
    end
    self:put_ti(dag_id, run_id, ti)
    return ti
end

-- Every task instance of a run as {[task_id] = ti}: the live store's
-- while the run is live, else the history's.
function S:list_tis(dag_id, run_id)
    local out = {}
    local rp = self:path("runs", dag_id, run_id)
    local kids = self.store:children(rp)
    if not kids and self.history then
        return self.history:list_tis(dag_id, run_id)
    end
    for _, tid in ipairs(kids or {}) do
        local ti = self:read(rp .. "/" .. tid)
        if ti then
            ti.task_id = ti.task_id or tid
            out[tid] = ti
        end
    end
    return out
end

-- The copy of a cluster try's log: the live store's (<task instance
-- node>/log.<try>), else the history's; nil when neither has one.
function S:log_copy(dag_id, run_id, task_id, try)
    local data = self.store:get(self:path("runs", dag_id, run_id, task_id)
                                .. "/log." .. math.tointeger(try))
    if data then return data end
    if self.history then
        return self.history:log(dag_id, run_id, task_id, try)
    end
    return nil
end

local function nullable(v)
    if v == nil then return core.null end
    return v
end

-- The run object of DESIGN.md (`runs show --json`, the API): the run's
-- fields plus tasks = {[task_id] = {state, try_number, xcom, worker, log,
-- start_date, end_date, duration}}.  nil, "ZNONODE" when there is no run.
function S:run_object(dag_id, run_id)
    local run, err = self:get_run(dag_id, run_id)
    if not run then
        return nil, err
    end
    local tasks = {}
    for tid, ti in pairs(self:list_tis(dag_id, run_id)) do
        tasks[tid] = {
            state      = nullable(ti.state),
            try_number = ti.try_number or 0,
            max_tries  = nullable(ti.max_tries),
            xcom       = nullable(ti.xcom),
            worker     = nullable(ti.worker),
            log        = nullable(ti.log),
            start_date = nullable(ti.start_date),
            end_date   = nullable(ti.end_date),
            duration   = nullable(ti.duration),
            operator   = nullable(ti.operator),
            error      = nullable(ti.error),
            -- why a task that may run does not (depends_on_past)
            waiting_for = nullable(ti.waiting_for),
        }
    end
    return {
        dag_id              = dag_id,
        run_id              = run_id,
        state               = nullable(run.state),
        run_type            = nullable(run.run_type),
        logical_date        = nullable(run.logical_date),
        data_interval_start = nullable(run.data_interval_start),
        data_interval_end   = nullable(run.data_interval_end),
        start_date          = nullable(run.start_date),
        end_date            = nullable(run.end_date),
        conf                = run.conf or {},
        version             = nullable(run.version),
        external_trigger    = run.external_trigger and true or false,
        tasks               = tasks,
    }
end

-- ---- triggering ----------------------------------------------------------

-- Creates a queued run of `dag` (a loaded DAG object, or just {id=, ...}).
-- opts: conf (table), run_id, logical_date (epoch seconds; default now),
-- run_type ("manual"), data_interval_start/end (epoch; default the
-- logical date).  Returns the run, or nil and a message.
function _M.new_run(dag, opts)
    return records.new_run(dag, opts or {}, core.now())
end

function S:trigger(dag, opts)
    local run = _M.new_run(dag, opts)
    local ok, err
    if self.history and self.history:has_run(run.dag_id, run.run_id) then
        err = "ZNODEEXISTS"
    else
        ok, err = self:create_run(run)
    end
    if not ok then
        if err == "ZNODEEXISTS" then
            return nil, "run '" .. run.run_id .. "' of DAG '" .. run.dag_id
                        .. "' already exists"
        end
        return nil, err
    end
    return run
end

-- ---- requests (other processes -> the scheduler) -------------------------

-- Queues a request; `req.op` names it.  "clear": {op="clear", dag_id,
-- run_id, task_ids = {...} (absent or empty: every task of the run),
-- downstream = bool}.  Returns the created node's path.
function S:add_request(req)
    local base = self:path("requests")
    local p, err = self.store:create(base .. "/req-", json_encode(req),
                                     { sequential = true, parents = true })
    if not p then
        error("store: create " .. base .. "/req-: " .. tostring(err), 2)
    end
    return p
end

-- Pending requests, oldest first: list of {path=, req=}.  Unreadable ones
-- are returned with req = nil and err set, so the consumer can drop them.
function S:list_requests()
    local base = self:path("requests")
    local out = {}
    for _, name in ipairs(self:children(base)) do
        local p = base .. "/" .. name
        local req, err = self:read(p)
        out[#out + 1] = { path = p, req = req, err = err }
    end
    return out
end

-- Removes a consumed request node.
function S:done_request(path)
    return self.store:delete(path)
end

-- ---- variables -----------------------------------------------------------

function S:get_variable(key)
    local data = self.store:get(self:path("variables", key))
    return data
end

function S:set_variable(key, value)
    local p = self:path("variables", key)
    local ok, err = self.store:set(p, value)
    if not ok and err == "ZNONODE" then
        ok, err = self.store:create(p, value, { parents = true })
    end
    if not ok then
        error("store: " .. p .. ": " .. tostring(err), 2)
    end
    return true
end

function S:delete_variable(key)
    return self.store:delete(self:path("variables", key))
end

function S:variables()
    local out = {}
    for _, k in ipairs(self:children(self:path("variables"))) do
        out[k] = self:get_variable(k)
    end
    return out
end

-- ---- members -------------------------------------------------------------

-- {schedulers = {...}, workers = {...}}: the member records (JSON) with
-- their id, as `zkflow members --json` prints them.
function S:members()
    local out = { schedulers = _M.array(), workers = _M.array() }
    for _, kind in ipairs({ "schedulers", "workers" }) do
        local list = {}
        for _, id in ipairs(self:children(self:path("members", kind))) do
            local m = self:read(self:path("members", kind, id)) or {}
            m.id = m.id or id
            insert(list, m)
        end
        sort(list, function(a, b) return tostring(a.id) < tostring(b.id) end)
        out[kind] = _M.array(list)
    end
    -- A record's "leader" is its member's own last word: believed only
    -- while that member's node heads the election (one that lost its place
    -- and could not say so yet, its connection down, leads no more).
    local head = self:election_head()
    if head ~= nil then
        for _, m in ipairs(out.schedulers) do
            if m.leader == true and m.id ~= head then m.leader = false end
        end
    end
    return out
end

-- The member id in the node that heads the scheduler election; false
-- when nobody contends; nil where there is no election (the embedded
-- store) or it cannot be read.
function S:election_head()
    local dir = self:path("election", "scheduler")
    local kids = self.store:children(dir)
    if not kids then return nil end
    local seq = require("zkflow.zk").contender_seq
    local best, best_seq
    for _, k in ipairs(kids) do
        local n = seq(k)
        if n and (not best_seq or n < best_seq) then best, best_seq = k, n end
    end
    if not best then return false end
    local data = self.store:get(dir .. "/" .. best)
    return data
end

return _M
