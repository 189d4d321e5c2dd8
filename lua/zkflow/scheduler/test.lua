-- zkflow.scheduler.test: `zkflow dags test` and flow.test.  Runs one DAG
-- run to its end in this process, on a temporary store, and returns its
-- result; resolve_dag finds the DAG from an object, a file or an id.
local core = require "zkflow.core"
local async = require "zkflow.async"
local time = require "zkflow.time"
local last_interval = time.last_interval
local null = core.null
local now = core.now
local floor = math.floor
local pairs, ipairs, type, tostring = pairs, ipairs, type, tostring
local concat = table.concat
local iso = time.iso

local _M = {}

-- ---- dags test ---------------------------------------------------------------------------

local function result_of(self, run)
  local tasks = {}
  for tid, ti in pairs(run.tis) do
    tasks[tid] = { state = ti.state, try_number = ti.try_number,
                   xcom = ti.xcom == nil and null or ti.xcom,
                   log = ti.log or null }
  end
  return { dag_id = run.dag_id, run_id = run.run_id, state = run.state, tasks = tasks,
           logical_date = iso(run.logical_date), db = self.db_path }
end

local function tmpdir()
  local base = os.getenv("TMPDIR") or "/tmp"
  for _ = 1, 100 do
    local p = ("%s/zkflow-test-%d-%d"):format(base, floor(now() * 1000) % 1000000000,
                                             math.random(1, 1e9))
    if not core.stat(p) and core.mkdirs(p) then return p end
  end
  error("dags test: cannot make a temporary directory")
end

-- Resolves `what` (a DAG object, a file path, or a DAG id in opts.dags_dir)
-- to a DAG; nil and an error message otherwise.
local function resolve_dag(what, opts)
  if type(what) == "table" and what.tasks then return what end
  local loader = require "zkflow.dsl.loader"
  if type(what) == "string" and (what:match("%.lua$") or what:find("/", 1, true)) then
    local dags, err = loader.load_file(what, opts)
    if not dags then return nil, err end
    if opts.dag_id then
      for _, d in ipairs(dags) do if d.id == opts.dag_id then return d end end
      return nil, what .. ": no DAG '" .. opts.dag_id .. "'"
    end
    if #dags == 0 then return nil, what .. ": the file defines no DAG" end
    return dags[1]
  end
  local dir = opts.dags_dir or "dags"
  local res = loader.scan(dir)
  local dag = res.dags and res.dags[what]
  if not dag then
    local errs = {}
    for f, e in pairs(res.errors or {}) do errs[#errs + 1] = f .. ": " .. tostring(e) end
    local msg = "no DAG '" .. tostring(what) .. "' in " .. dir
    if #errs > 0 then msg = msg .. " (import errors: " .. concat(errs, "; ") .. ")" end
    return nil, msg
  end
  return dag
end
_M.resolve_dag = resolve_dag

-- `zkflow dags test` / flow.test: runs one DAG run to its end in this
-- process and returns {dag_id, run_id, state, tasks={[id]={state,
-- try_number, xcom}}}.  opts: date (ISO or epoch), db (store file; a
-- temporary one otherwise), dags_dir, conf, log_dir, on_event (the
-- scheduler's: `dags test` streams the tasks' logs from it).
function _M.test(what, opts)
  opts = opts or {}
  local dag, err = resolve_dag(what, opts)
  if not dag then error(err, 2) end
  local co, main = coroutine.running()
  if main or not co then
    return async.run(_M.test, dag, opts)
  end
  local dir
  local db = opts.db
  if not db then
    dir = tmpdir()
    db = dir .. "/zkflow.db"
  end
  local store = core.store(db, { sync = "off" })
  -- zk.default() in the DAG's tasks is the test's store while it runs.
  local zk = require "zkflow.zk"
  local prev_default = zk.default_store()
  zk.set_default(store, { root = "/" })
  local ld = opts.date
  if type(ld) == "string" then
    local t, perr = time.parse(ld)
    if not t then error("dags test: --date: " .. perr, 2) end
    ld = t
  end
  ld = ld or now()
  local s = require("zkflow.scheduler").new { store = store, dags = { [dag.id] = dag }, schedule = false,
                     log_dir = opts.log_dir or ((dir or db:match("^(.*)/[^/]*$") or ".") .. "/logs"),
                     root = opts.root, id = "test", on_event = opts.on_event }
  s.db_path = db
  -- A manual run's data interval, as Airflow infers it: the last complete
  -- interval of the schedule at the logical date.
  local s_, e_ = last_interval(dag, ld)
  local run = s:create_run(dag, { run_type = "manual", logical_date = ld,
                                  run_id = "manual__" .. iso(ld, true),
                                  data_interval_start = s_ or ld,
                                  data_interval_end = e_ or ld,
                                  conf = opts.conf })
  s:process()
  if run.state ~= "success" and run.state ~= "failed" then
    s:wait_runs({ run })
  end
  local res = result_of(s, run)
  s:stop()
  zk.set_default(prev_default, { root = "/" })
  store:close()
  return res
end

return _M
