-- zkflow.history.schema: the history store's tables, as migrations
-- numbered from 1.  A migration is a list of statements in the SQL that
-- both SQLite and PostgreSQL accept (docs/history.md draws the tables);
-- `{C}` marks a text column whose order matters (ids sorted as Lua sorts
-- them, byte by byte): PostgreSQL gets COLLATE "C" there, SQLite's
-- default order is already bytewise.  A migration, once released, never
-- changes: the next change is the next migration.
local _M = {}

_M.MIGRATIONS = {
  -- 1: finished runs, their task instances, XComs and log copies; the
  -- run counts by DAG and state (totals without counting rows).
  {
    [[CREATE TABLE runs (
        dag_id TEXT{C} NOT NULL,
        run_id TEXT{C} NOT NULL,
        state TEXT NOT NULL,
        run_type TEXT,
        logical_date TEXT,
        logical_ts DOUBLE PRECISION NOT NULL,
        data_interval_start TEXT,
        data_interval_end TEXT,
        conf TEXT,
        version TEXT,
        queued_at TEXT,
        start_date TEXT,
        end_date TEXT,
        external_trigger BIGINT NOT NULL DEFAULT 0,
        clean_ts DOUBLE PRECISION NOT NULL,
        PRIMARY KEY (dag_id, run_id))]],
    -- A DAG's runs by logical date (runs list DAG, the API, the grid,
    -- depends_on_past, external_task); every DAG's (runs list).
    "CREATE INDEX runs_dag_date ON runs (dag_id, logical_ts, run_id)",
    "CREATE INDEX runs_date ON runs (logical_ts, dag_id, run_id)",
    -- By state (--state, ?state=).
    "CREATE INDEX runs_dag_state ON runs (dag_id, state, logical_ts, run_id)",
    "CREATE INDEX runs_state ON runs (state, logical_ts, dag_id, run_id)",
    -- Retention (db clean --before, retention_days) and version pruning.
    "CREATE INDEX runs_clean ON runs (clean_ts)",
    "CREATE INDEX runs_version ON runs (dag_id, version)",
    [[CREATE TABLE task_instances (
        dag_id TEXT{C} NOT NULL,
        run_id TEXT{C} NOT NULL,
        task_id TEXT{C} NOT NULL,
        state TEXT,
        try_number BIGINT NOT NULL DEFAULT 0,
        max_tries BIGINT,
        operator TEXT,
        start_date TEXT,
        end_date TEXT,
        duration DOUBLE PRECISION,
        log TEXT,
        worker TEXT,
        extra TEXT,
        PRIMARY KEY (dag_id, run_id, task_id))]],
    "CREATE INDEX task_instances_state ON task_instances (dag_id, state)",
    [[CREATE TABLE xcoms (
        dag_id TEXT{C} NOT NULL,
        run_id TEXT{C} NOT NULL,
        task_id TEXT{C} NOT NULL,
        key TEXT{C} NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY (dag_id, run_id, task_id, key))]],
    [[CREATE TABLE logs (
        dag_id TEXT{C} NOT NULL,
        run_id TEXT{C} NOT NULL,
        task_id TEXT{C} NOT NULL,
        try_number BIGINT NOT NULL,
        content TEXT NOT NULL,
        PRIMARY KEY (dag_id, run_id, task_id, try_number))]],
    [[CREATE TABLE run_counts (
        dag_id TEXT{C} NOT NULL,
        state TEXT{C} NOT NULL,
        n BIGINT NOT NULL,
        PRIMARY KEY (dag_id, state))]],
  },
}

-- The statements of migration `v` for `driver` ("sqlite" | "postgresql").
function _M.statements(v, driver)
  local coll = driver == "postgresql" and ' COLLATE "C"' or ""
  local out = {}
  for i, sql in ipairs(_M.MIGRATIONS[v]) do
    out[i] = sql:gsub("{C}", coll)
  end
  return out
end

_M.LATEST = #_M.MIGRATIONS

return _M
