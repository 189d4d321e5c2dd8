-- zkflow.records: the run and task-instance records, in one place.  The
-- scheduler writes them, the CLI and the HTTP API trigger runs and read
-- them back (through zkflow.state), and a restarted scheduler resumes from
-- them; all of them go through this module, so a field has one name, one
-- default and one way to say "none".
--
-- In memory (the scheduler's objects) a date is UTC epoch seconds; on the
-- store (docs/internals.md, "The znode layout") a record is one JSON object
-- and a date is ISO 8601 text (zkflow.time): the logical date and the data
-- interval to the second, the other dates to the microsecond.
--
-- A run on the store (every field always present):
--   dag_id, run_id, state, run_type, logical_date, data_interval_start,
--   data_interval_end, conf (an object, {} when none), version (or null),
--   queued_at, start_date, end_date (or null), external_trigger (boolean)
-- A task instance on the store:
--   task_id, state, try_number, max_tries, operator, start_date, end_date,
--   duration (seconds, end - start), xcom, log, worker: always present,
--   null when unknown or not yet reached;
--   first_start (epoch seconds of the first try), next_try_at (epoch, a
--   retry or reschedule waiting), xcoms (pushed by key), pid (the try's
--   process group), error (the last failure's text), lost (tries lost
--   with a dead scheduler), waiting_for (why a depends_on_past task that
--   may run does not: "waiting for a of <run>"): present only when set.
--
-- A task instance is written once per state change, thousands a second,
-- so it is encoded by hand (bench/README.md, noop-4000: a table given to
-- the generic encoder makes that benchmark 20-50% slower); a run is
-- written a few times in its life and goes through core.json_encode.

local core = require "zkflow.core"
local time = require "zkflow.time"

local _M = {}

local json_encode, null = core.json_encode, core.null
local iso, iso_parts, parse = time.iso, time.iso_parts, time.parse
local huge, math_type = math.huge, math.type
local sfmt, concat = string.format, table.concat
local pcall, setmetatable, type, tostring = pcall, setmetatable, type, tostring

-- The fields in the order above (for readers and specs).
_M.RUN_FIELDS = {
    "dag_id", "run_id", "state", "run_type", "logical_date",
    "data_interval_start", "data_interval_end", "conf", "version",
    "queued_at", "start_date", "end_date", "external_trigger",
}
_M.TI_FIELDS = {
    "task_id", "state", "try_number", "max_tries", "operator", "start_date",
    "end_date", "duration", "xcom", "log", "worker",
    "first_start", "next_try_at", "xcoms", "pid", "error", "lost",
    "waiting_for",
}

-- ---- runs ----------------------------------------------------------------

--- The run id Airflow gives: "manual__<iso with microseconds>",
--- "scheduled__<iso>", "backfill__<iso>".
function _M.run_id(run_type, logical_date)
    if run_type == "manual" then
        return "manual__" .. iso(logical_date, true)
    end
    return run_type .. "__" .. iso(logical_date)
end

local function date_or_null(t)
    if t == nil or t == null then return null end
    return iso(t, true)
end

--- The store record of `run` (dates in epoch seconds: logical_date and
--- data_interval_start/end required, queued_at/start_date/end_date
--- optional).  Returns a new table.
function _M.run(run)
    return {
        dag_id              = run.dag_id,
        run_id              = run.run_id,
        state               = run.state,
        run_type            = run.run_type,
        logical_date        = iso(run.logical_date),
        data_interval_start = iso(run.data_interval_start),
        data_interval_end   = iso(run.data_interval_end),
        conf                = run.conf or {},
        version             = run.version or null,
        queued_at           = date_or_null(run.queued_at),
        start_date          = date_or_null(run.start_date),
        end_date            = date_or_null(run.end_date),
        external_trigger    = run.external_trigger and true or false,
    }
end

--- The record of `run` as JSON.
function _M.encode_run(run)
    return json_encode(_M.run(run))
end

--- A new queued run of `dag` ({id} or {dag_id}, source_hash or version)
--- as its store record.  opts: conf, run_id, run_type ("manual"),
--- logical_date (epoch; default `now`), data_interval_start/end (epoch;
--- default the logical date); `now` is the clock's time.
function _M.new_run(dag, opts, now)
    local run_type = opts.run_type or "manual"
    local ld = opts.logical_date or now
    return _M.run {
        dag_id              = dag.id or dag.dag_id,
        run_id              = opts.run_id or _M.run_id(run_type, ld),
        state               = "queued",
        run_type            = run_type,
        logical_date        = ld,
        data_interval_start = opts.data_interval_start or ld,
        data_interval_end   = opts.data_interval_end or ld,
        conf                = opts.conf,
        version             = dag.source_hash or dag.version,
        queued_at           = now,
        external_trigger    = run_type == "manual",
    }
end

-- A date field of a record as epoch seconds; nil for null, a missing
-- field or text that is not a date.
local function date_of(v)
    if v == nil or v == null then return nil end
    if type(v) == "number" then return v end
    return (parse(v))
end
_M.date = date_of

local function value_of(v)
    if v == null then return nil end
    return v
end

--- A run record read from the store as the scheduler holds it: dates as
--- epoch seconds, nil for null or missing.  Returns a new table.
function _M.decode_run(rec)
    return {
        dag_id              = rec.dag_id,
        run_id              = rec.run_id,
        state               = rec.state,
        run_type            = rec.run_type,
        logical_date        = date_of(rec.logical_date),
        data_interval_start = date_of(rec.data_interval_start),
        data_interval_end   = date_of(rec.data_interval_end),
        conf                = value_of(rec.conf),
        version             = value_of(rec.version),
        queued_at           = date_of(rec.queued_at),
        start_date          = date_of(rec.start_date),
        end_date            = date_of(rec.end_date),
        external_trigger    = rec.external_trigger == true,
    }
end

-- ---- task instances ------------------------------------------------------

-- core.json_encode (core/json, C) quotes a string faster than a Lua
-- pattern can check that it needs no quoting.
local jstr = json_encode

-- Encoded strings that stay the same for many records (operator names,
-- the worker id), so that each is quoted once.
local jcache = setmetatable({}, { __mode = "k" })
local jcached, JCACHE_MAX = 0, 100000
local function jstr_cached(v)
    local e = jcache[v]
    if e then return e end
    e = jstr(v)
    if jcached >= JCACHE_MAX then
        jcache, jcached = setmetatable({}, { __mode = "k" }), 0
    end
    jcache[v] = e
    jcached = jcached + 1
    return e
end

local function jtime(t)
    if not t then return "null" end
    return sfmt('"%s.%06d+00:00"', iso_parts(t))
end

local function jnum(v)
    if v == nil then return "null" end
    if math_type(v) == "integer" then return sfmt("%d", v) end
    if v ~= v or v == huge or v == -huge then return "null" end
    return sfmt("%.17g", v)
end

local TI_FMT = '{"task_id":%s,"state":"%s","try_number":%d,"max_tries":%d,"operator":%s,'
    .. '"start_date":%s,"end_date":%s,"duration":%s,"xcom":%s,"log":%s,"worker":%s'

-- The common record (started and ended, no optional field but
-- first_start) in one format call: the dates' and numbers' text is made by
-- that one call instead of one call (and one string) each.
local TI_FMT_DONE = '{"task_id":%s,"state":"%s","try_number":%d,"max_tries":%d,"operator":%s,'
    .. '"start_date":"%s.%06d+00:00","end_date":"%s.%06d+00:00","duration":%.6f,"xcom":%s,'
    .. '"log":%s,"worker":%s,"first_start":%.6f}'

-- The record of `ti` as JSON; `no_xcom` writes xcom null and no xcoms.
-- Raises when an XCom is not JSON.
local function ti_json(ti, no_xcom)
    local task = ti.task
    local ij = task.id_json
    if not ij then
        ij = jstr(ti.task_id)
        task.id_json = ij
    end
    local logp = ti.log
    local lj = "null"
    if logp then
        lj = ti.log_json
        if not lj or ti.log_json_of ~= logp then
            lj = jstr(logp)
            ti.log_json, ti.log_json_of = lj, logp
        end
    end
    local sd, ed = ti.start_date, ti.end_date
    local xcom, xcoms = ti.xcom, ti.xcoms
    if no_xcom then xcom, xcoms = nil, nil end
    local xj = xcom == nil and "null" or json_encode(xcom)
    local op = task.operator and jstr_cached(task.operator) or "null"
    local worker = ti.worker and jstr_cached(ti.worker) or "null"
    local first, nta, pid, err, lost, wait =
        ti.first_start, ti.next_try_at, ti.pid, ti.error, ti.lost, ti.waiting_for
    if sd and ed and first and nta == nil and xcoms == nil and pid == nil and err == nil
            and lost == nil and wait == nil and math_type(ti.try_number) == "integer"
            and math_type(ti.max_tries) == "integer" then
        local si, sus = iso_parts(sd)
        local ei, eus = iso_parts(ed)
        return sfmt(TI_FMT_DONE, ij, ti.state, ti.try_number, ti.max_tries, op, si, sus,
                    ei, eus, ed - sd, xj, lj, worker, first)
    end
    local head = sfmt(TI_FMT, ij, ti.state, ti.try_number, ti.max_tries, op,
                      jtime(sd), jtime(ed), (sd and ed) and jnum(ed - sd) or "null",
                      xj, lj, worker)
    local parts = { head }
    if first then parts[#parts + 1] = ',"first_start":' .. jnum(first) end
    if nta then parts[#parts + 1] = ',"next_try_at":' .. jnum(nta) end
    if xcoms ~= nil then parts[#parts + 1] = ',"xcoms":' .. json_encode(xcoms) end
    if pid then parts[#parts + 1] = ',"pid":' .. jnum(pid) end
    if err then parts[#parts + 1] = ',"error":' .. jstr(err) end
    if lost then parts[#parts + 1] = ',"lost":' .. jnum(lost) end
    if wait then parts[#parts + 1] = ',"waiting_for":' .. jstr(wait) end
    parts[#parts + 1] = "}"
    return concat(parts)
end

--- The store record of the task instance `ti`, as the scheduler holds it
--- ({task_id, task = {operator}, state, try_number, max_tries, dates in
--- epoch seconds, ...}), as JSON.  An XCom that JSON cannot carry must not
--- lose the state change: the record is then written with a null xcom
--- and the second result says why.
function _M.encode_ti(ti)
    local ok, data = pcall(ti_json, ti)
    if ok then return data end
    return ti_json(ti, true), "xcom dropped: " .. tostring(data)
end

--- A task-instance record read from the store as the scheduler holds it:
--- dates as epoch seconds, nil for null or missing.  Returns a new table.
function _M.decode_ti(rec)
    return {
        task_id     = rec.task_id,
        state       = rec.state,
        try_number  = rec.try_number,
        max_tries   = rec.max_tries,
        operator    = value_of(rec.operator),
        start_date  = date_of(rec.start_date),
        end_date    = date_of(rec.end_date),
        duration    = value_of(rec.duration),
        xcom        = value_of(rec.xcom),
        log         = value_of(rec.log),
        worker      = value_of(rec.worker),
        first_start = value_of(rec.first_start),
        next_try_at = value_of(rec.next_try_at),
        xcoms       = value_of(rec.xcoms),
        pid         = value_of(rec.pid),
        error       = value_of(rec.error),
        lost        = value_of(rec.lost),
        waiting_for = value_of(rec.waiting_for),
    }
end

return _M
