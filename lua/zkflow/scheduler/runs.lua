-- zkflow.scheduler.runs: the life of a DAG run.  Creating a run (or
-- adopting one read back from the store), max_active_runs, its start,
-- dagrun_timeout and its end, with the run's state taken from its leaves.
-- Sched methods (init.lua says how the files make the class).
local core = require "zkflow.core"
local async = require "zkflow.async"
local rules = require "zkflow.rules"
local records = require "zkflow.records"
local class = require "zkflow.scheduler.class"
local max = math.max
local pairs, ipairs, type, tostring = pairs, ipairs, type, tostring
local sort = table.sort
local log, run_key = class.log, class.run_key
local FINISHED = rules.FINISHED
local Sched = class.Sched

local _M = {}

-- ---- runs -------------------------------------------------------------------

local function new_ti(self, run, task)
  local ti = {
    run = run,
    task = task,
    task_id = task.id,
    state = "none",
    try_number = 0,
    max_tries = task.retries or 0,
    path = self:run_path(run) .. "/" .. task.id,
    persisted = false,
  }
  return ti
end

-- Makes the in-memory run for `rec` (a run record or the fields of a new
-- run) against `dag`; task instances from `tis` (records) when recovering.
function Sched:adopt_run(dag, rec, tis)
  local run = {
    dag_id = dag.id,
    run_id = rec.run_id,
    dag = dag,
    state = rec.state or "queued",
    run_type = rec.run_type or "manual",
    logical_date = rec.logical_date_epoch or records.date(rec.logical_date) or self.now(),
    conf = rec.conf or {},
    version = rec.version or dag.source_hash,
    external_trigger = rec.external_trigger,
    tis = {},
    unfinished = 0,
    persisted = rec.persisted ~= false,
  }
  run.data_interval_start = rec.data_interval_start_epoch
    or records.date(rec.data_interval_start) or run.logical_date
  run.data_interval_end = rec.data_interval_end_epoch
    or records.date(rec.data_interval_end) or run.logical_date
  run.queued_at = records.date(rec.queued_at) or self.now()
  run.start_date = records.date(rec.start_date)
  for _, tid in ipairs(dag.order) do
    local task = dag.tasks[tid]
    local ti = new_ti(self, run, task)
    local r = tis and tis[tid] and records.decode_ti(tis[tid])
    if r then
      ti.persisted = true
      ti.state = r.state or "none"
      ti.try_number = r.try_number or 0
      ti.max_tries = r.max_tries or ti.max_tries
      ti.xcom = r.xcom
      ti.xcoms = r.xcoms
      ti.log = r.log
      ti.first_start = r.first_start
      ti.lost = r.lost
      ti.start_date = r.start_date
      ti.end_date = r.end_date
      if not FINISHED[ti.state] then
        -- A try that was in flight when the last scheduler died did not
        -- finish: it runs again, without costing a retry, unless the
        -- executor settles it (a worker may have it).
        local adopted = false
        if ti.state == "running" or ti.state == "queued" then
          adopted = self.executor:adopt(ti, r)
          if not adopted then
            -- The dead scheduler's child lives on in its own process group
            -- (a worker, which owns no records, reads its own try's).
            -- Only while that group is still this try's: its number may
            -- belong to an unrelated process by now (core.killpg checks
            -- the environment the try started with).
            if r.pid and self.records then
              local ok, why = core.killpg(r.pid, 9, {
                ZKFLOW_DAG_ID = run.dag_id, ZKFLOW_RUN_ID = run.run_id,
                ZKFLOW_TASK_ID = tid, ZKFLOW_TRY_NUMBER = tostring(r.try_number),
              })
              if not ok and why ~= "gone" then
                log("warn", ("%s/%s/%s: process group %d is not this try's any more (%s): left alone")
                    :format(run.dag_id, run.run_id, tid, r.pid, why))
              end
            end
            ti.lost = (ti.lost or 0) + 1
            ti.max_tries = ti.max_tries + 1
            -- The lost try's own log says so: its process may have run to
            -- its end, and the next try has the next number.
            if ti.state == "running" and self.records then
              self:task_log(ti, ("try %d lost: the scheduler running it died; it runs again as try %d, "
                                 .. "without costing a retry"):format(ti.try_number, ti.try_number + 1))
            end
          end
        end
        if adopted then
          ti.first_start = r.first_start
        elseif (ti.state == "up_for_retry" or ti.state == "up_for_reschedule")
            and type(r.next_try_at) == "number" then
          ti.next_try_at = r.next_try_at
        else
          ti.state = "none"
        end
        self:mark(ti)
      end
    end
    run.tis[tid] = ti
    if not FINISHED[ti.state] then run.unfinished = run.unfinished + 1 end
  end
  if tis then
    for tid, r in pairs(tis) do
      if not dag.tasks[tid] and r.state ~= "removed" then
        -- The task left the DAG: Airflow marks its instance removed.
        local ti = { task = { id = tid, operator = r.operator }, task_id = tid,
                     run = run, state = "removed", try_number = r.try_number or 0,
                     max_tries = r.max_tries or 0, persisted = true,
                     path = self:run_path(run) .. "/" .. tid }
        self:mark(ti)
      end
    end
  end
  self:count(run)
  local key = run_key(run.dag_id, run.run_id)
  self.runs[key] = run
  self.known_runs[run.dag_id] = self.known_runs[run.dag_id] or {}
  self.known_runs[run.dag_id][run.run_id] = true
  return run
end

-- Creates a new run (queued) and starts it when max_active_runs allows.
-- opts: run_type, logical_date, data_interval_start/end, conf, run_id.
function Sched:create_run(dag, opts)
  local ld = opts.logical_date or self.now()
  local run_type = opts.run_type or "manual"
  local rec = {
    run_id = opts.run_id or records.run_id(run_type, ld),
    state = "queued",
    run_type = run_type,
    logical_date_epoch = ld,
    data_interval_start_epoch = opts.data_interval_start or ld,
    data_interval_end_epoch = opts.data_interval_end or ld,
    conf = opts.conf or {},
    version = dag.source_hash,
    external_trigger = run_type == "manual",
    persisted = false,
  }
  local known = self.known_runs[dag.id]
  if known and known[rec.run_id] then
    return nil, "ZNODEEXISTS"
  end
  -- A run that ended has left the live store (and known_runs) for the
  -- history: one indexed look, whatever the number of past runs.
  if self.history and self.history:has_run(dag.id, rec.run_id) then
    return nil, "ZNODEEXISTS"
  end
  local run = self:adopt_run(dag, rec, nil)
  run.fresh = true
  self:mark(run)
  self:queue_run(run)
  return run
end

function Sched:queue_run(run)
  local q = self.queued_runs[run.dag_id]
  if not q then
    q = {}
    self.queued_runs[run.dag_id] = q
  end
  q[#q + 1] = run
  self:activate_runs(run.dag_id)
end

function Sched:active_runs(dag_id)
  local list = self.runs_by_dag[dag_id]
  return list and #list or 0
end

-- Moves queued runs to running while the DAG has room (max_active_runs),
-- oldest logical date first.
function Sched:activate_runs(dag_id)
  local q = self.queued_runs[dag_id]
  if not q or #q == 0 then return end
  if self.paused[dag_id] then return end
  sort(q, function(a, b)
    if a.logical_date ~= b.logical_date then return a.logical_date < b.logical_date end
    return a.run_id < b.run_id
  end)
  local active = self.runs_by_dag[dag_id]
  if not active then
    active = {}
    self.runs_by_dag[dag_id] = active
  end
  while #q > 0 do
    local run = q[1]
    local limit = run.dag.max_active_runs or 16
    if #active >= limit then break end
    table.remove(q, 1)
    active[#active + 1] = run
    self:begin_run(run)
  end
end

function Sched:begin_run(run)
  run.state = "running"
  run.start_date = run.start_date or self.now()
  self:mark(run)
  if self.on_event then self:emit("run_started", run) end
  if run.unfinished == 0 then
    self:finish_run(run)
    return
  end
  local dag = run.dag
  local t = self.now()
  local ids = dag.topo or dag.order
  if run.fresh then
    -- Nothing has happened in a new run: every task with upstreams waits
    -- (no rule but `always` is met by upstreams that have not ended), so
    -- only the roots and the `always` tasks need a look.
    run.fresh = nil
    ids = dag.zkf_starts
    if not ids then
      ids = {}
      for _, tid in ipairs(dag.topo or dag.order) do
        local task = dag.tasks[tid]
        if #task.upstream == 0 or task.trigger_rule == "always" then ids[#ids + 1] = tid end
      end
      dag.zkf_starts = ids
    end
  end
  for _, tid in ipairs(ids) do
    local ti = run.tis[tid]
    local st = ti.state
    if st == "none" then
      self:push_work(ti)
    elseif (st == "up_for_retry" or st == "up_for_reschedule") and not ti.wait_timer then
      -- Recovered mid-delay: the delay goes on where it was.
      self:later(ti, max(0, (ti.next_try_at or t) - t))
    end
  end
  if dag.dagrun_timeout and not run.timeout_timer then
    local left = max(0, run.start_date + dag.dagrun_timeout - t)
    run.timeout_timer = core.timer(left, function()
      run.timeout_timer = nil
      self:run_timed_out(run)
      self:process()
    end)
  end
end

-- Stops a try in flight: its process group gets SIGTERM then SIGKILL, a
-- Lua task's coroutine is closed; the slot is given back.
function Sched:abort_try(ti)
  if not ti.attempt then return end
  self.executor:abort(ti)
  self:release(ti)
end

-- dagrun_timeout, as Airflow: the run fails and what had not finished is
-- skipped (a try in flight is stopped first).
function Sched:run_timed_out(run)
  if run.state ~= "running" then return end
  log("error", ("run %s %s: dagrun_timeout after %gs"):format(run.dag_id, run.run_id,
                                                            run.dag.dagrun_timeout))
  for _, tid in ipairs(run.dag.order) do
    local ti = run.tis[tid]
    if not FINISHED[ti.state] then
      if ti.wait_timer then ti.wait_timer:cancel(); ti.wait_timer = nil end
      self:abort_try(ti)
      ti.state = "skipped"
      ti.end_date = self.now()
      run.unfinished = run.unfinished - 1
      self:mark(ti)
    end
  end
  self:finish_run(run, "failed")
end

-- Ends a run.  Its state comes from its leaves, as Airflow's
-- DagRun.update_state decides: failed when a leaf failed or is
-- upstream_failed, else success (every leaf succeeded or was skipped).
-- `forced` ("failed") ends it regardless: dagrun_timeout.
function Sched:finish_run(run, forced)
  if run.state == "success" or run.state == "failed" then return end
  local failed = forced == "failed"
  for _, tid in ipairs(run.dag.leaves or {}) do
    local ti = run.tis[tid]
    if ti and (ti.state == "failed" or ti.state == "upstream_failed") then
      failed = true
    end
  end
  if run.timeout_timer then run.timeout_timer:cancel(); run.timeout_timer = nil end
  run.state = failed and "failed" or "success"
  run.end_date = self.now()
  self:mark(run)
  local key = run_key(run.dag_id, run.run_id)
  self.runs[key] = nil
  local active = self.runs_by_dag[run.dag_id]
  if active then
    for i = #active, 1, -1 do
      if active[i] == run then table.remove(active, i) end
    end
  end
  log("info", ("run %s %s: %s"):format(run.dag_id, run.run_id, run.state))
  self:emit("run_finished", run)
  self:archive(run.dag_id, run.run_id)
  local cb = failed and run.dag.on_failure or run.dag.on_success
  if cb then
    local ctx = self:run_context(run)
    ctx.reason = failed and "task_failure" or "success"
    async.spawn(cb, function(ok, err)
      if not ok then log("error", "dag " .. run.dag_id .. " callback: " .. tostring(err)) end
    end, ctx)
  end
  local waiters = self.run_waiters[key]
  if waiters then
    -- On the next turn: by then this turn's writes are in the store, so a
    -- waiter that reads the run back sees its end.
    self.run_waiters[key] = nil
    core.timer(0, function()
      for _, fn in ipairs(waiters) do fn(run) end
    end)
  end
  -- depends_on_past: the next run may now evaluate.
  self:wake_past_waiters(run)
  self:activate_runs(run.dag_id)
  if self.tick_blocked[run.dag_id] and not self.timers[run.dag_id] then
    -- Due scheduled runs waited for this one to end (max_active_runs).
    self.tick_blocked[run.dag_id] = nil
    local dag = self.dags[run.dag_id]
    if dag then
      self.timers[run.dag_id] = core.timer(0, function()
        self.timers[run.dag_id] = nil
        self:task(function()
          self:tick_dag(dag)
          self:process()
        end)
      end)
    end
  end
end

return _M
