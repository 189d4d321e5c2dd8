-- zkflow.history: the history store.  ZooKeeper (or the embedded store)
-- holds the present; a run that has ended moves here, with its task
-- instances, their XComs and the log copies of its tries, and leaves the
-- live store (zkflow.scheduler moves it; docs/history.md tells the whole
-- story).  Written once against the SQL connection contract
-- (core.sqlite_open, core.pg_open: query with $n parameters, exec,
-- driver), so SQLite on one machine and PostgreSQL for a cluster are the
-- same code.
--
--   local history = require "zkflow.history"
--   local h = history.open(conn)          -- conn: core.sqlite_open(path) ...
--   h:migrate()                           -- creates / upgrades the tables
--
-- Records in and out are the live store's (zkflow.records): a run record
-- with ISO dates, conf a table, version and dates null (core.null) when
-- unknown; a task-instance record with xcom / xcoms.  Methods:
--
--   h:migrate() -> version                 schema_version, from 1
--   h:put_run(run, tis, logs)              upsert in one transaction: the
--        run, each task instance given (with its XComs, replaced) and each
--        log copy (by try); instances not given stay.  tis: {[task_id] =
--        record}; logs: a list of {task_id=, try_number=, content=}.
--        Idempotent.
--   h:put_runs({{run=, tis=, logs=}...})   several in one transaction
--   h:get_run(dag_id, run_id) -> record | nil
--   h:has_run(dag_id, run_id) -> bool
--   h:get_ti(dag_id, run_id, task_id) -> record | nil
--   h:list_tis(dag_id, run_id) -> {[task_id] = record}
--   h:list_runs(dag_id | nil, {state=, limit=, offset=, order="asc"|"desc"})
--        -> records, total   (ordered by logical date, then run id, then
--        DAG id; total counts every run that matches, from run_counts)
--   h:count_runs(dag_id | nil, state | nil) -> n
--   h:counts() -> {[dag_id] = {[state] = n}}
--   h:last_run(dag_id [, before]) -> record | nil   the latest by logical
--        date, or the latest strictly before `before` (epoch seconds)
--   h:run_at(dag_id, logical_date) -> record | nil  (epoch seconds)
--   h:log(dag_id, run_id, task_id, try) -> text | nil
--   h:delete_run(dag_id, run_id [, {keep_logs=true}]) -> bool
--   h:delete_runs{before=, dag_id=, keep_last=, dry_run=, limit=}
--        -> {runs=, task_instances=, xcoms=, logs=, list={{dag_id=,
--        run_id=, version=}...}}: runs that started before `before`
--        (epoch seconds; never started: their logical date), but the last
--        `keep_last` runs of each DAG; at most `limit` runs (all when nil)
--   h:version_used(dag_id, version) -> bool
--   h:close()
--
-- One connection serves one coroutine at a time: calls are serialised
-- here (a PostgreSQL query yields; a second caller waits its turn).  A
-- SQLite connection beside the embedded store's on the same file must not
-- write while that store's turn holds the write lock: the scheduler
-- commits the store first (store:flush()).
local core = require "zkflow.core"
local async = require "zkflow.async"
local records = require "zkflow.records"
local schema = require "zkflow.history.schema"

local _M = {}

local null, sql_null = core.null, core.sql_null
local json_encode, json_decode = core.json_encode, core.json_decode
local pairs, ipairs, type, tostring, pcall, error = pairs, ipairs, type, tostring, pcall, error
local tointeger = math.tointeger
local pack, unpack, concat = table.pack, table.unpack, table.concat
local date_of = records.date

_M.LATEST = schema.LATEST

local H = {}
H.__index = H

-- A value as a parameter: nil and JSON null are SQL NULL.
local function p(v)
  if v == nil or v == null then return sql_null end
  return v
end

-- A column as a record field: absent is JSON null.
local function f(v)
  if v == nil then return null end
  return v
end

local function int(v)
  if v == nil then return nil end
  return tointeger(v) or v
end

-- Returns a history over the SQL connection `conn` (owned: h:close()
-- closes it).
function _M.open(conn)
  if type(conn) ~= "userdata" and type(conn) ~= "table" then
    error("history.open: a SQL connection is required", 2)
  end
  return setmetatable({ conn = conn, driver = conn.driver, waiters = {} }, H)
end

-- A connection for a history URL: "sqlite:PATH" (also sqlite://PATH, or
-- a path ending .db), "postgresql://..." / "postgres://..." (core.pg_open,
-- when this build has it).  Returns conn, or nil and a message.
function _M.connect(url)
  if type(url) ~= "string" or url == "" then
    return nil, "history: an URL is required (sqlite:PATH or postgresql://...)"
  end
  local path = url:match("^sqlite://(.+)$") or url:match("^sqlite:(.+)$")
  if not path and not url:find("://", 1, true) and url:match("%.db$") then path = url end
  if path then
    local conn, err = core.sqlite_open(path)
    if not conn then return nil, "history " .. url .. ": " .. tostring(err) end
    return conn
  end
  if url:match("^postgres") then
    if not core.pg_open then
      return nil, "history " .. url .. ": this zkflow was built without PostgreSQL (libpq)"
    end
    local conn, err = core.pg_open(url)
    if not conn then return nil, "history: " .. tostring(err) end
    return conn
  end
  return nil, "history: unknown URL '" .. url .. "' (sqlite:PATH or postgresql://...)"
end

-- history.new(url): connect, open and migrate in one call; h or nil, err.
function _M.new(url)
  local conn, err = _M.connect(url)
  if not conn then return nil, err end
  local h = _M.open(conn)
  local ok, merr = pcall(h.migrate, h)
  if not ok then
    pcall(conn.close, conn)
    return nil, "history " .. url .. ": " .. tostring(merr)
  end
  return h
end

function H:close()
  if self.conn then self.conn:close() end
end

-- ---- serialising the connection ------------------------------------------------

-- Runs fn(self, ...) with the connection to itself: a caller that comes
-- while another's query is in flight (PostgreSQL yields) waits its turn.
local function locked(self, fn, ...)
  if self.busy then
    async.wait(function(resume)
      local w = self.waiters
      w[#w + 1] = resume
    end)
  end
  self.busy = true
  local res = pack(pcall(fn, self, ...))
  local nxt = table.remove(self.waiters, 1)
  if nxt then
    -- The turn passes on, busy stays set; on the next loop turn, so the
    -- waiter does not run inside this caller's frame.
    core.timer(0, function() nxt() end)
  else
    self.busy = false
  end
  if not res[1] then error(res[2], 0) end
  return unpack(res, 2, res.n)
end

local function q(self, sql, params)
  return self.conn:query(sql, params)
end

-- fn(self, ...) in one transaction; rolled back when it raises.
local function tx(self, fn, ...)
  q(self, self.driver == "sqlite" and "BEGIN IMMEDIATE" or "BEGIN")
  local res = pack(pcall(fn, self, ...))
  if not res[1] then
    pcall(q, self, "ROLLBACK")
    error(res[2], 0)
  end
  q(self, "COMMIT")
  return unpack(res, 2, res.n)
end

-- ---- schema -----------------------------------------------------------------------

local function current_version(self)
  local rows = q(self, "SELECT max(version) AS v FROM schema_version")
  return int(rows[1] and rows[1].v) or 0
end

-- The key of PostgreSQL's advisory lock that serialises migrations.
local MIGRATE_LOCK = 7036526011

local function migrate(self)
  -- Only reads when the schema is current: opening the history never
  -- waits for a writer.
  local ok, v = pcall(current_version, self)
  if ok and v >= schema.LATEST then return v end
  local create = "CREATE TABLE IF NOT EXISTS schema_version (version BIGINT NOT NULL, "
                 .. "applied TEXT NOT NULL)"
  if self.driver ~= "postgresql" then q(self, create) end
  tx(self, function()
    if self.driver == "postgresql" then
      -- Processes that start together (a cluster's members) take turns
      -- here: one migrates, the others then find the work done.  The lock
      -- comes before the table exists: two sessions' CREATE TABLE IF NOT
      -- EXISTS at once fail in one of them (a duplicate key in pg_type).
      q(self, "SELECT pg_advisory_xact_lock(" .. MIGRATE_LOCK .. ")")
      q(self, create)
    end
    v = current_version(self)
    for n = v + 1, schema.LATEST do
      for _, sql in ipairs(schema.statements(n, self.driver)) do q(self, sql) end
      q(self, "INSERT INTO schema_version (version, applied) VALUES ($1, $2)",
        { n, records.run_id("manual", core.now()):sub(9) })
    end
  end)
  return schema.LATEST
end

function H:migrate()
  return locked(self, migrate)
end

-- ---- records <-> rows ---------------------------------------------------------------

local RUN_COLS = "dag_id, run_id, state, run_type, logical_date, data_interval_start, "
  .. "data_interval_end, conf, version, queued_at, start_date, end_date, external_trigger"

local function run_record(row)
  local conf = row.conf and json_decode(row.conf)
  if type(conf) ~= "table" then conf = {} end
  return {
    dag_id              = row.dag_id,
    run_id              = row.run_id,
    state               = row.state,
    run_type            = f(row.run_type),
    logical_date        = f(row.logical_date),
    data_interval_start = f(row.data_interval_start),
    data_interval_end   = f(row.data_interval_end),
    conf                = conf,
    version             = f(row.version),
    queued_at           = f(row.queued_at),
    start_date          = f(row.start_date),
    end_date            = f(row.end_date),
    external_trigger    = row.external_trigger == 1 or row.external_trigger == true,
  }
end

local OPTIONAL = { "first_start", "next_try_at", "pid", "error", "lost", "waiting_for" }

local TI_COLS = "task_id, state, try_number, max_tries, operator, start_date, end_date, "
  .. "duration, log, worker, extra"

local function ti_record(row)
  local rec = {
    task_id    = row.task_id,
    state      = f(row.state),
    try_number = int(row.try_number) or 0,
    max_tries  = f(int(row.max_tries)),
    operator   = f(row.operator),
    start_date = f(row.start_date),
    end_date   = f(row.end_date),
    duration   = f(row.duration),
    xcom       = null,
    log        = f(row.log),
    worker     = f(row.worker),
  }
  local extra = row.extra and json_decode(row.extra)
  if type(extra) == "table" then
    for _, k in ipairs(OPTIONAL) do
      if extra[k] ~= nil and extra[k] ~= null then rec[k] = extra[k] end
    end
  end
  return rec
end

-- The XCom rows of a run put back on its records: the return value is
-- `xcom`, keys pushed by name are `xcoms`.
local RETURN_KEY = "return_value"

local function attach_xcoms(tis, rows)
  for _, r in ipairs(rows) do
    local ti = tis[r.task_id]
    if ti then
      local v = json_decode(r.value)
      if r.key == RETURN_KEY then
        ti.xcom = v == nil and null or v
      else
        ti.xcoms = ti.xcoms or {}
        ti.xcoms[r.key] = v
      end
    end
  end
end

local function add_count(self, dag_id, st, n)
  q(self, "INSERT INTO run_counts (dag_id, state, n) VALUES ($1, $2, $3) "
          .. "ON CONFLICT (dag_id, state) DO UPDATE SET n = run_counts.n + excluded.n",
    { dag_id, st, n })
end

local function delete_rows(self, dag_id, run_id, keep_logs)
  local rows = q(self, "SELECT state FROM runs WHERE dag_id = $1 AND run_id = $2",
                 { dag_id, run_id })
  local _, nti = q(self, "DELETE FROM task_instances WHERE dag_id = $1 AND run_id = $2",
                   { dag_id, run_id })
  local _, nx = q(self, "DELETE FROM xcoms WHERE dag_id = $1 AND run_id = $2", { dag_id, run_id })
  local nl = 0
  if not keep_logs then
    _, nl = q(self, "DELETE FROM logs WHERE dag_id = $1 AND run_id = $2", { dag_id, run_id })
  end
  local _, nr = q(self, "DELETE FROM runs WHERE dag_id = $1 AND run_id = $2", { dag_id, run_id })
  if rows[1] then add_count(self, dag_id, rows[1].state, -1) end
  return nr, nti, nx, nl
end

-- A log copy as text for people, valid in every backend: PostgreSQL's
-- text refuses NUL and invalid UTF-8, and one binary byte in a task's
-- output must not keep its run from moving (it stayed in the live store
-- for ever).  NUL is written \0, each invalid byte U+FFFD.
local valid_text = require("zkflow.text").valid
local function as_text(s)
  return valid_text((s:gsub("%z", "\\0")))
end

local function put_run(self, run, tis, logs)
  local dag_id, run_id = run.dag_id, run.run_id
  local ld = date_of(run.logical_date) or 0
  local old = q(self, "SELECT state FROM runs WHERE dag_id = $1 AND run_id = $2",
                { dag_id, run_id })[1]
  q(self, "INSERT INTO runs (" .. RUN_COLS .. ", logical_ts, clean_ts) VALUES "
          .. "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15) "
          .. "ON CONFLICT (dag_id, run_id) DO UPDATE SET state = excluded.state, "
          .. "run_type = excluded.run_type, logical_date = excluded.logical_date, "
          .. "data_interval_start = excluded.data_interval_start, "
          .. "data_interval_end = excluded.data_interval_end, conf = excluded.conf, "
          .. "version = excluded.version, queued_at = excluded.queued_at, "
          .. "start_date = excluded.start_date, end_date = excluded.end_date, "
          .. "external_trigger = excluded.external_trigger, "
          .. "logical_ts = excluded.logical_ts, clean_ts = excluded.clean_ts", {
    dag_id, run_id, p(run.state) == sql_null and "failed" or run.state, p(run.run_type),
    p(run.logical_date), p(run.data_interval_start), p(run.data_interval_end),
    json_encode(type(run.conf) == "table" and run.conf or {}), p(run.version),
    p(run.queued_at), p(run.start_date), p(run.end_date),
    run.external_trigger == true and 1 or 0, ld, date_of(run.start_date) or ld,
  })
  if not old then
    add_count(self, dag_id, run.state, 1)
  elseif old.state ~= run.state then
    add_count(self, dag_id, old.state, -1)
    add_count(self, dag_id, run.state, 1)
  end
  -- Task instances are upserted, never deleted here: a move that a crash
  -- cut short may have deleted some of the run's nodes from the live store
  -- already, and the next move of the rest must not lose them.
  for tid, ti in pairs(tis or {}) do
    tid = ti.task_id or tid
    local extra
    for _, k in ipairs(OPTIONAL) do
      local v = ti[k]
      if v ~= nil and v ~= null then
        extra = extra or {}
        extra[k] = v
      end
    end
    q(self, "DELETE FROM xcoms WHERE dag_id = $1 AND run_id = $2 AND task_id = $3",
      { dag_id, run_id, tid })
    q(self, "INSERT INTO task_instances (dag_id, run_id, " .. TI_COLS .. ") VALUES "
            .. "($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) "
            .. "ON CONFLICT (dag_id, run_id, task_id) DO UPDATE SET state = excluded.state, "
            .. "try_number = excluded.try_number, max_tries = excluded.max_tries, "
            .. "operator = excluded.operator, start_date = excluded.start_date, "
            .. "end_date = excluded.end_date, duration = excluded.duration, log = excluded.log, "
            .. "worker = excluded.worker, extra = excluded.extra", {
      dag_id, run_id, tid, p(ti.state), int(ti.try_number) or 0, p(int(ti.max_tries)),
      p(ti.operator), p(ti.start_date), p(ti.end_date), p(ti.duration), p(ti.log),
      p(ti.worker), extra and json_encode(extra) or sql_null,
    })
    local function xcom(key, v)
      if v == nil or v == null then return end
      local ok, data = pcall(json_encode, v)
      if ok then
        q(self, "INSERT INTO xcoms (dag_id, run_id, task_id, key, value) VALUES "
                .. "($1, $2, $3, $4, $5)", { dag_id, run_id, tid, key, data })
      end
    end
    xcom(RETURN_KEY, ti.xcom)
    if type(ti.xcoms) == "table" then
      for k, v in pairs(ti.xcoms) do
        if type(k) == "string" and k ~= RETURN_KEY then xcom(k, v) end
      end
    end
  end
  for _, l in ipairs(logs or {}) do
    local content = as_text(tostring(l.content or ""))
    q(self, "INSERT INTO logs (dag_id, run_id, task_id, try_number, content) VALUES "
            .. "($1, $2, $3, $4, $5) ON CONFLICT (dag_id, run_id, task_id, try_number) "
            .. "DO UPDATE SET content = excluded.content",
      { dag_id, run_id, l.task_id, int(l.try_number) or 0, content })
  end
end

function H:put_run(run, tis, logs)
  assert(run and run.dag_id and run.run_id, "history: put_run needs dag_id and run_id")
  return locked(self, tx, put_run, run, tis, logs)
end

-- put_run of each of `items` ({run=, tis=, logs=}...) in one transaction.
function H:put_runs(items)
  return locked(self, tx, function()
    for _, it in ipairs(items) do put_run(self, it.run, it.tis, it.logs) end
  end)
end

-- ---- reads ------------------------------------------------------------------------------

local function one_run(self, where, params)
  local rows = q(self, "SELECT " .. RUN_COLS .. " FROM runs WHERE " .. where, params)
  return rows[1] and run_record(rows[1]) or nil
end

function H:get_run(dag_id, run_id)
  return locked(self, one_run, "dag_id = $1 AND run_id = $2", { dag_id, run_id })
end

function H:has_run(dag_id, run_id)
  return locked(self, function()
    return q(self, "SELECT 1 AS x FROM runs WHERE dag_id = $1 AND run_id = $2",
             { dag_id, run_id })[1] ~= nil
  end)
end

function H:get_ti(dag_id, run_id, task_id)
  return locked(self, function()
    local rows = q(self, "SELECT " .. TI_COLS .. " FROM task_instances "
                         .. "WHERE dag_id = $1 AND run_id = $2 AND task_id = $3",
                   { dag_id, run_id, task_id })
    if not rows[1] then return nil end
    local tis = { [task_id] = ti_record(rows[1]) }
    attach_xcoms(tis, q(self, "SELECT task_id, key, value FROM xcoms WHERE dag_id = $1 "
                              .. "AND run_id = $2 AND task_id = $3", { dag_id, run_id, task_id }))
    return tis[task_id]
  end)
end

function H:list_tis(dag_id, run_id)
  return locked(self, function()
    local tis = {}
    for _, row in ipairs(q(self, "SELECT " .. TI_COLS .. " FROM task_instances "
                                 .. "WHERE dag_id = $1 AND run_id = $2", { dag_id, run_id })) do
      tis[row.task_id] = ti_record(row)
    end
    if next(tis) then
      attach_xcoms(tis, q(self, "SELECT task_id, key, value FROM xcoms WHERE dag_id = $1 "
                                .. "AND run_id = $2", { dag_id, run_id }))
    end
    return tis
  end)
end

local function count_runs(self, dag_id, st)
  local where, params = {}, {}
  if dag_id then params[#params + 1] = dag_id; where[#where + 1] = "dag_id = $" .. #params end
  if st then params[#params + 1] = st; where[#where + 1] = "state = $" .. #params end
  local sql = "SELECT sum(n) AS n FROM run_counts"
  if #where > 0 then sql = sql .. " WHERE " .. concat(where, " AND ") end
  local rows = q(self, sql, params)
  local n = rows[1] and rows[1].n
  return n and (tointeger(n) or math.floor(n)) or 0
end

function H:count_runs(dag_id, st)
  return locked(self, count_runs, dag_id, st)
end

function H:counts()
  return locked(self, function()
    local out = {}
    for _, r in ipairs(q(self, "SELECT dag_id, state, n FROM run_counts WHERE n > 0")) do
      out[r.dag_id] = out[r.dag_id] or {}
      out[r.dag_id][r.state] = tointeger(r.n) or r.n
    end
    return out
  end)
end

function H:list_runs(dag_id, filter)
  filter = filter or {}
  return locked(self, function()
    local where, params = {}, {}
    if dag_id then params[#params + 1] = dag_id; where[#where + 1] = "dag_id = $" .. #params end
    if filter.state then
      params[#params + 1] = filter.state
      where[#where + 1] = "state = $" .. #params
    end
    local dir = filter.order == "desc" and " DESC" or ""
    local sql = "SELECT " .. RUN_COLS .. " FROM runs"
    if #where > 0 then sql = sql .. " WHERE " .. concat(where, " AND ") end
    sql = sql .. " ORDER BY logical_ts" .. dir .. ", run_id" .. dir .. ", dag_id" .. dir
    if filter.limit then
      params[#params + 1] = math.floor(filter.limit)
      params[#params + 1] = math.floor(filter.offset or 0)
      sql = sql .. " LIMIT $" .. (#params - 1) .. " OFFSET $" .. #params
    end
    local out = {}
    for i, row in ipairs(q(self, sql, params)) do out[i] = run_record(row) end
    return out, count_runs(self, dag_id, filter.state)
  end)
end

function H:last_run(dag_id, before)
  if before then
    return locked(self, one_run, "dag_id = $1 AND logical_ts < $2 "
                  .. "ORDER BY logical_ts DESC, run_id DESC LIMIT 1", { dag_id, before })
  end
  return locked(self, one_run, "dag_id = $1 ORDER BY logical_ts DESC, run_id DESC LIMIT 1",
                { dag_id })
end

function H:run_at(dag_id, logical_date)
  return locked(self, one_run, "dag_id = $1 AND logical_ts = $2 ORDER BY run_id LIMIT 1",
                { dag_id, logical_date })
end

function H:log(dag_id, run_id, task_id, try)
  return locked(self, function()
    local rows = q(self, "SELECT content FROM logs WHERE dag_id = $1 AND run_id = $2 "
                         .. "AND task_id = $3 AND try_number = $4",
                   { dag_id, run_id, task_id, int(try) or 0 })
    return rows[1] and rows[1].content or nil
  end)
end

function H:version_used(dag_id, version)
  return locked(self, function()
    return q(self, "SELECT 1 AS x FROM runs WHERE dag_id = $1 AND version = $2 LIMIT 1",
             { dag_id, version })[1] ~= nil
  end)
end

-- ---- removal ------------------------------------------------------------------------

function H:delete_run(dag_id, run_id, opts)
  local keep_logs = opts and opts.keep_logs
  return locked(self, tx, function()
    return delete_rows(self, dag_id, run_id, keep_logs) > 0
  end)
end

-- Runs removed per transaction: a writer on the same SQLite file (a
-- running standalone) waits for the write lock that long (~0.45 ms a run).
local BATCH = 50

-- The ids of the last `n` runs of `dag_id` (by logical date): kept.
local function last_ids(self, dag_id, n)
  local keep = {}
  for _, r in ipairs(q(self, "SELECT run_id FROM runs WHERE dag_id = $1 "
                             .. "ORDER BY logical_ts DESC, run_id DESC LIMIT $2", { dag_id, n })) do
    keep[r.run_id] = true
  end
  return keep
end

local function count_of(self, tbl, dag_id, run_id)
  local rows = q(self, "SELECT count(*) AS n FROM " .. tbl .. " WHERE dag_id = $1 AND run_id = $2",
                 { dag_id, run_id })
  return tointeger(rows[1] and rows[1].n or 0) or 0
end

function H:delete_runs(o)
  o = o or {}
  if type(o.before) ~= "number" then
    error("history: delete_runs needs 'before' (epoch seconds)", 2)
  end
  local keep_last = o.keep_last and o.keep_last > 0 and math.floor(o.keep_last) or nil
  local removed = { runs = 0, task_instances = 0, xcoms = 0, logs = 0, list = {} }
  local kept_by_dag = {}
  local skip = 0
  while not o.limit or removed.runs < o.limit do
    local n = BATCH
    if o.limit then n = math.min(n, o.limit - removed.runs) end
    local got = locked(self, function()
      local params, where = { o.before }, "clean_ts < $1"
      if o.dag_id then params[2] = o.dag_id; where = where .. " AND dag_id = $2" end
      params[#params + 1] = n
      params[#params + 1] = skip
      local cands = q(self, "SELECT dag_id, run_id, version FROM runs WHERE " .. where
                            .. " ORDER BY clean_ts, dag_id, run_id LIMIT $" .. (#params - 1)
                            .. " OFFSET $" .. #params, params)
      local chosen = {}
      for _, c in ipairs(cands) do
        local keep = false
        if keep_last then
          local k = kept_by_dag[c.dag_id]
          if not k then
            k = last_ids(self, c.dag_id, keep_last)
            kept_by_dag[c.dag_id] = k
          end
          keep = k[c.run_id]
        end
        if keep then skip = skip + 1 else chosen[#chosen + 1] = c end
      end
      if o.dry_run then
        skip = skip + #chosen
        for _, c in ipairs(chosen) do
          removed.task_instances = removed.task_instances
            + count_of(self, "task_instances", c.dag_id, c.run_id)
          removed.xcoms = removed.xcoms + count_of(self, "xcoms", c.dag_id, c.run_id)
          removed.logs = removed.logs + count_of(self, "logs", c.dag_id, c.run_id)
        end
      elseif #chosen > 0 then
        tx(self, function()
          for _, c in ipairs(chosen) do
            local _, nti, nx, nl = delete_rows(self, c.dag_id, c.run_id, false)
            removed.task_instances = removed.task_instances + nti
            removed.xcoms = removed.xcoms + nx
            removed.logs = removed.logs + nl
          end
        end)
      end
      for _, c in ipairs(chosen) do
        removed.runs = removed.runs + 1
        removed.list[#removed.list + 1] = { dag_id = c.dag_id, run_id = c.run_id,
                                            version = c.version }
      end
      return #cands
    end)
    if got < n then break end
  end
  return removed
end

-- ---- log folders -------------------------------------------------------------------------

-- Removes the file or folder `path` and what it holds (a symbolic link
-- goes, not what it points to).  Returns true, or nil and the error.
function _M.remove_tree(path)
  local ok, err = os.remove(path)
  if ok then return true end
  local st = core.stat(path)
  if not st then return true end
  if st.type ~= "dir" then return nil, err end
  for _, name in ipairs(core.listdir(path) or {}) do
    local sub_ok, sub_err = _M.remove_tree(path .. "/" .. name)
    if not sub_ok then return nil, sub_err end
  end
  return os.remove(path)
end

-- The log folder of a run: <log_dir>/<dag_id>/<run_id> (zkflow.scheduler).
function _M.log_folder(log_dir, dag_id, run_id)
  return log_dir .. "/" .. dag_id .. "/" .. run_id
end

return _M
