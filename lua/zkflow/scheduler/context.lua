-- zkflow.scheduler.context: what a task sees.  The template variables and
-- the task context (built lazily: a key is computed when first read) and
-- the runtime of a try (its log, process spawning, XCom and the store).
-- Sched methods (init.lua says how the files make the class).
local core = require "zkflow.core"
local async = require "zkflow.async"
local records = require "zkflow.records"
local time = require "zkflow.time"
local class = require "zkflow.scheduler.class"
local json_decode = core.json_decode
local pairs, ipairs, tostring = pairs, ipairs, tostring
local concat = table.concat
local iso = time.iso
local Sched = class.Sched

local _M = {}

-- ---- the task context -------------------------------------------------------------

local ds = time.ds

function Sched:variables()
  local st, root = self.store, self.st:path("variables")
  return setmetatable({}, {
    __index = function(_, k)
      local data = st:get(root .. "/" .. tostring(k))
      if data == nil then return nil end
      local v = json_decode(data)
      if v == nil then return data end
      return v
    end,
  })
end

-- The run-level part of the template context, built once per run and
-- shared by its task instances.
function Sched:run_base(run)
  local b = run.ctx_base
  if b then return b end
  local dag = run.dag
  local ld = run.logical_date
  local conf = run.conf or {}
  local d = ds(ld)
  b = {
    ds = d,
    ds_nodash = (d:gsub("-", "")),
    ts = iso(ld),
    ts_nodash = time.ts_nodash(ld),
    logical_date = iso(ld),
    data_interval_start = iso(run.data_interval_start),
    data_interval_end = iso(run.data_interval_end),
    run_id = run.run_id,
    conf = conf,
    var = self:variables(),
    dag = { dag_id = run.dag_id, tags = dag.tags },
    dag_run = { run_id = run.run_id, conf = conf, run_type = run.run_type,
                logical_date = iso(ld) },
  }
  run.ctx_base = b
  return b
end

-- params as a task sees them: the DAG's < default_args' < the task's
-- (merged by zkflow.dag) < the run's conf.
local function params_of(run, task)
  local p = {}
  for k, v in pairs(task and task.params or run.dag.params or {}) do p[k] = v end
  for k, v in pairs(run.conf or {}) do p[k] = v end
  return p
end

-- A context for a DAG-level callback (a fresh table).
function Sched:run_context(run)
  local ctx = {}
  for k, v in pairs(self:run_base(run)) do ctx[k] = v end
  ctx.params = params_of(run, nil)
  return ctx
end

-- The per-instance fields of a task's context, built when first read: most
-- tasks read few of them, and a scheduler starts thousands of tasks a turn.
local CTX_LAZY = {}

function CTX_LAZY.params(_, ti)
  return params_of(ti.run, ti.task)
end

function CTX_LAZY.ti(_, ti)
  local run = ti.run
  return { task_id = ti.task_id, dag_id = run.dag_id, run_id = run.run_id,
           try_number = ti.try_number, max_tries = ti.max_tries, map_index = -1,
           log = ti.log or nil }
end

function CTX_LAZY.task(_, ti)
  return { task_id = ti.task_id, operator = ti.task.operator }
end

function CTX_LAZY.xcom(self, ti)
  local run = ti.run
  local function pull(task_id, key)
    local other = run.tis[task_id or ti.task_id]
    if not other then return nil end
    if key == nil or key == "return_value" then return other.xcom end
    return other.xcoms and other.xcoms[key]
  end
  return setmetatable({
    pull = pull,
    push = function(key, value)
      if key == nil or key == "return_value" then
        -- Airflow's return_value key is the task's return value: one slot,
        -- so history (which stores both as rows) never holds two of them.
        ti.xcom, ti.xcom_pushed = value, ti.try_number
      else
        ti.xcoms = ti.xcoms or {}
        ti.xcoms[key] = value
      end
      self:mark(ti)
    end,
  }, { __call = function(_, task_id, key) return pull(task_id, key) end })
end

function CTX_LAZY.log(self, ti)
  return function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    self:task_log(ti, concat(parts, " ", 1, parts.n))
  end
end

-- The context of a task instance (`ctx` in Lua tasks, the environment of
-- its templates): the run's shared fields plus its own, made on first use.
-- The instance a context belongs to, under a key no template can name.
local CTX_TI = {}
local CTX_MT = {
  __index = function(ctx, k)
    local f = CTX_LAZY[k]
    local ti = rawget(ctx, CTX_TI)
    if f then
      local v = f(ti.sched, ti)
      rawset(ctx, k, v)
      return v
    end
    return ti.run.ctx_base[k]
  end,
}

function Sched:context(ti)
  self:run_base(ti.run)
  ti.sched = self
  return setmetatable({ [CTX_TI] = ti }, CTX_MT)
end

-- What an executor may ask of the scheduler for one try.
function Sched:runtime(ti, attempt)
  local sched = self
  local rt = { store = self.store, scheduler = self }
  function rt.log(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    sched:task_log(ti, concat(parts, " ", 1, parts.n))
  end
  function rt.sleep(s) return async.sleep(s) end
  -- Runs a child with the try's log as its output; returns code, signal.
  function rt.spawn(spec)
    -- core.spawn makes the log's folder itself.
    spec.log = ti.log
    -- Nothing the try started outlives it (proc.h, `contain`).
    spec.contain = true
    ti.log_ready = true
    sched:commit_wait()
    if ti.attempt ~= attempt then return nil, 9 end    -- ended meanwhile
    local code, sig, out = async.exec(spec, function(p)
      -- The pid reaches the store with this turn's writes: a scheduler
      -- that dies kills the group of what it had started (recover()).
      attempt.proc = p
      ti.pid = p.pid
      sched:mark(ti)
      sched:flush()
      if sched.on_pid then sched.on_pid(ti) end
    end)
    attempt.proc = nil
    if attempt.timed_out then
      error({ zkflow_timeout = true,
              msg = "execution timeout after " .. ti.task.execution_timeout .. "s" })
    end
    return code, sig, out
  end
  function rt.env()
    local run = ti.run
    return {
      ZKFLOW_DAG_ID = run.dag_id,
      ZKFLOW_RUN_ID = run.run_id,
      ZKFLOW_TASK_ID = ti.task_id,
      ZKFLOW_TRY_NUMBER = tostring(ti.try_number),
      ZKFLOW_DS = ds(run.logical_date),
      ZKFLOW_TS = iso(run.logical_date),
      ZKFLOW_LOGICAL_DATE = iso(run.logical_date),
      ZKFLOW_DATA_INTERVAL_START = iso(run.data_interval_start),
      ZKFLOW_DATA_INTERVAL_END = iso(run.data_interval_end),
      ZKFLOW_LOG = ti.log,
    }
  end
  function rt.first_start() return ti.first_start end
  function rt.try_number() return ti.try_number end
  -- State of a task (or of the run when task_id is nil) of another DAG's
  -- run at `logical_date` (epoch seconds); nil when there is none.
  function rt.external_state(dag_id, task_id, logical_date)
    for _, r in pairs(sched.runs) do
      if r.dag_id == dag_id and r.logical_date == logical_date then
        if not task_id then return r.state end
        local t = r.tis[task_id]
        return t and t.state
      end
    end
    for _, rid in ipairs(sched.st:run_ids(dag_id)) do
      local rec = sched.st:get_run(dag_id, rid)
      if rec and records.date(rec.logical_date) == logical_date then
        if not task_id then return rec.state end
        local t = sched.st:get_ti(dag_id, rid, task_id)
        return t and t.state
      end
    end
    local h = sched.history and sched.history:run_at(dag_id, logical_date)
    if h then
      if not task_id then return h.state end
      local t = sched.history:get_ti(dag_id, h.run_id, task_id)
      return t and t.state
    end
    return nil
  end
  rt.run = { logical_date = ti.run.logical_date,
             data_interval_start = ti.run.data_interval_start,
             data_interval_end = ti.run.data_interval_end }
  return rt
end

return _M
