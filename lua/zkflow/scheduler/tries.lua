-- zkflow.scheduler.tries: a try's end and what follows.  What executors
-- and the cluster call when a try ends or is lost, a worker's single try
-- (prepare_try/start_try), giving slots back, retries and their delays,
-- branching and short-circuiting.  Sched methods (init.lua says how the
-- files make the class).
local core = require "zkflow.core"
local class = require "zkflow.scheduler.class"
local min, max = math.min, math.max
local pairs, ipairs, type, tostring = pairs, ipairs, type, tostring
local log, run_key = class.log, class.run_key
local pq_push, pq_pop = class.pq_push, class.pq_pop
local Sched = class.Sched

local _M = {}

-- ---- what executors and the cluster call ----------------------------------------------

-- A try has ended: applied here, or handed to on_try_end (a worker reports
-- it to its leader) with the try's slots given back.
function Sched:try_ended(ti, ok, res, extra)
  local on_end = self.on_try_end
  if on_end then
    self:release(ti)
    return on_end(ti, ok, res, extra)
  end
  self:end_try(ti, ok, res, extra)
  self:process()
end

-- A try that has no end (its worker went away): it runs again without
-- costing a retry, as a try lost by a dead scheduler does.
function Sched:try_lost(ti, why)
  log("warn", ("task %s.%s try %d lost: %s"):format(ti.run.dag_id, ti.task_id, ti.try_number,
                                                   tostring(why)))
  self:release(ti)
  ti.lost = (ti.lost or 0) + 1
  ti.max_tries = ti.max_tries + 1
  ti.error = tostring(why)
  ti.end_date = self.now()
  if ti.run.state ~= "running" then
    self:mark(ti)
    return
  end
  self:set_state(ti, "scheduled")
  self:enqueue(ti)
  self:process()
end


-- A worker runs one try of a run it does not own: the run is made from its
-- record `rec` and the records `tis` of the task's ancestors (their
-- XComs), and stays out of this scheduler's runs, so nothing else of it is
-- scheduled here.  Returns the instance, ready for start_try; nil and an
-- error when the DAG has no such task.
function Sched:prepare_try(dag, rec, tis, task_id, try_number)
  local run = self:adopt_run(dag, rec, tis)
  self.runs[run_key(dag.id, rec.run_id)] = nil
  run.state = "running"
  local ti = run.tis[task_id]
  if not ti then return nil, "task '" .. task_id .. "' is not in DAG " .. dag.id end
  ti.try_number = try_number - 1
  ti.state = "scheduled"
  return ti
end

-- Starts a try that prepare_try made: its leader counted it in its pool.
function Sched:start_try(ti)
  self:start_ti(ti, false, 0)
end

function Sched:release(ti)
  local attempt = ti.attempt
  if attempt then
    if attempt.timer then attempt.timer:cancel(); attempt.timer = nil end
    if attempt.kill_timer then attempt.kill_timer:cancel(); attempt.kill_timer = nil end
  end
  ti.attempt = nil
  ti.pid = nil
  self.running = self.running - 1
  local dag_id = ti.run.dag_id
  self.running_by_dag[dag_id] = self.running_by_dag[dag_id] - 1
  local waiting = self.blocked_by_dag[dag_id]
  if waiting and waiting.n > 0 then pq_push(self.ready, pq_pop(waiting)) end
  local pool = ti.slot_pool
  if pool then
    pool.used = pool.used - ti.slot_n
    ti.slot_pool, ti.slot_n = nil, nil
    self:release_pool(pool)
  end
end

-- Slots of `pool` came free (a try ended, or its size grew): the best
-- candidates that fit move back to the ready queue, as Airflow passes over
-- an instance whose pool_slots exceed the open slots to the next one.
function Sched:release_pool(pool)
  local h = pool.blocked
  local free = pool.slots - pool.used
  local too_big
  while free > 0 and h.n > 0 do
    local w = pq_pop(h)
    local need = w.task.pool_slots or 1
    if need <= free then
      free = free - need
      pq_push(self.ready, w)
    else
      too_big = too_big or {}
      too_big[#too_big + 1] = w
    end
  end
  if too_big then
    for i = 1, #too_big do pq_push(h, too_big[i]) end
  end
end

local function errtext(e)
  if type(e) == "table" then return tostring(e.msg or e.message or "error") end
  return tostring(e)
end

function Sched:end_try(ti, ok, res, extra)
  local task = ti.task
  self:release(ti)
  ti.end_date = self.now()
  local op = task.op
  local follow
  if ok then
    if type(res) == "table" and res.zkflow_reschedule then
      -- A sensor in reschedule mode gives its slot back until the next poke;
      -- as in Airflow the poke is not a try.
      ti.state = "up_for_reschedule"
      ti.try_number = ti.try_number - 1
      ti.next_try_at = self.now() + res.zkflow_reschedule
      self:mark(ti)
      self:later(ti, res.zkflow_reschedule)
      return
    end
    if op and op.branch then
      -- Airflow fails a branch that names tasks that are not directly
      -- downstream of it; such a failure retries like any other.
      local berr
      follow, berr = self:branch_targets(ti, res)
      if not follow then ok, res = false, berr end
    end
  end
  if ok then
    -- A try that pushed return_value by key and returned nothing keeps
    -- what it pushed (Airflow pushes a return value only when there is one).
    if res ~= nil or ti.xcom_pushed ~= ti.try_number then ti.xcom = res end
    if extra and extra.skip then
      self:task_log(ti, "marked skipped: " .. tostring(extra.skip))
      self:finish(ti, "skipped")
      return
    end
    self:finish(ti, "success")
    if follow then
      self:follow_branch(ti, follow)
    elseif op and op.short_circuit and not res then
      self:short_circuit(ti)
    end
    return
  end
  local err = res
  if type(err) == "table" and err.zkflow_skip then
    self:task_log(ti, "skipped: " .. errtext(err))
    ti.xcom = nil
    self:finish(ti, "skipped")
    return
  end
  local msg = errtext(err)
  self:task_log(ti, "failed: " .. msg)
  -- The traceback goes to the task's log only.
  log("warn", ("task %s.%s try %d failed: %s"):format(ti.run.dag_id, ti.task_id, ti.try_number,
                                                    msg:match("^[^\n]*")))
  if type(err) == "table" and (err.zkflow_soft_fail
      or (err.zkflow_timeout and task.soft_fail and task.op and task.op.sensor)) then
    -- A sensor's execution_timeout with soft_fail skips, as Airflow's
    -- AirflowTaskTimeout does.
    self:finish(ti, "skipped", msg)
    return
  end
  local no_retry = type(err) == "table" and err.zkflow_fail
  if not no_retry and ti.try_number <= ti.max_tries then
    ti.state = "up_for_retry"
    ti.error = msg
    local delay = self:retry_delay(ti)
    ti.next_try_at = self.now() + delay
    self:mark(ti)
    self:task_log(ti, ("up for retry in %gs (try %d of %d)"):format(delay, ti.try_number, ti.max_tries + 1))
    self:emit("ti_retry", ti)
    if task.on_retry then self:callback(ti, task.on_retry, msg) end
    self:later(ti, delay)
    return
  end
  self:finish(ti, "failed", msg)
end

-- Airflow's retry delay: retry_delay, doubled for each try with
-- retry_exponential_backoff, capped by max_retry_delay.
function Sched:retry_delay(ti) -- luacheck: ignore 212/self
  local task = ti.task
  local delay = task.retry_delay or 300
  if task.retry_exponential_backoff then
    local tries = ti.try_number - (ti.lost or 0)
    delay = delay * 2 ^ max(0, tries - 1)
  end
  if task.max_retry_delay then delay = min(delay, task.max_retry_delay) end
  return delay
end

-- After `delay` seconds the instance is scheduled again.
function Sched:later(ti, delay)
  local run = ti.run
  ti.wait_timer = core.timer(delay, function()
    ti.wait_timer = nil
    if ti.run ~= run or run.state ~= "running" then return end
    if ti.state ~= "up_for_retry" and ti.state ~= "up_for_reschedule" then return end
    ti.next_try_at = nil
    self:set_state(ti, "scheduled")
    self:enqueue(ti)
    self:process()
  end)
end

-- The set of task ids a branch task chose (its return value: an id, a
-- task, or a list of them; nil follows nothing), or nil and an error when
-- one of them is not directly downstream of the branch.
function Sched:branch_targets(ti, res) -- luacheck: ignore 212/self
  local follow = {}
  local list = res
  if type(res) ~= "table" or res.id then list = { res } end
  local downs = {}
  for _, did in ipairs(ti.task.downstream) do downs[did] = true end
  for _, id in ipairs(list) do
    if type(id) == "table" then id = id.id end
    if id ~= nil then
      if not downs[id] then
        return nil, ("branch task '%s' returned '%s', which is not directly downstream of it")
                    :format(ti.task_id, tostring(id))
      end
      follow[id] = true
    end
  end
  return follow
end

-- Skips the direct downstream tasks of a branch that are neither chosen
-- nor downstream of a chosen one, as Airflow's SkipMixin.skip_all_except
-- does: in branch >> {a, join}, a >> join, choosing a leaves join to its
-- trigger rule.  What lies after a skipped task follows its own rule.
function Sched:follow_branch(ti, follow)
  local tis = ti.run.tis
  local stack = {}
  for id in pairs(follow) do stack[#stack + 1] = id end
  while #stack > 0 do
    local t = tis[table.remove(stack)].task
    for _, did in ipairs(t.downstream) do
      if not follow[did] then
        follow[did] = true
        stack[#stack + 1] = did
      end
    end
  end
  for _, did in ipairs(ti.task.downstream) do
    local d = tis[did]
    if not follow[did] and d.state == "none" then
      self:finish(d, "skipped")
    end
  end
end

function Sched:short_circuit(ti)
  local run = ti.run
  if ti.task.ignore_downstream_trigger_rules == false then
    for _, did in ipairs(ti.task.downstream) do
      local d = run.tis[did]
      if d.state == "none" then self:finish(d, "skipped") end
    end
    return
  end
  local seen = {}
  local stack = { ti.task_id }
  while #stack > 0 do
    local id = table.remove(stack)
    for _, did in ipairs(run.tis[id].task.downstream) do
      if not seen[did] then
        seen[did] = true
        stack[#stack + 1] = did
        local d = run.tis[did]
        if d.state == "none" or d.state == "scheduled" then
          self:finish(d, "skipped")
        end
      end
    end
  end
end

return _M
