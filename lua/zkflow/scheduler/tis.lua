-- zkflow.scheduler.tis: the state machine of task instances.  Evaluating
-- an instance's trigger rule and depends_on_past, setting its state, the
-- ready queue, pools and max_active_tasks, and the main step (process) that
-- starts what is ready within a turn's budget; a try's log path and start.
-- Sched methods (init.lua says how the files make the class).
local core = require "zkflow.core"
local async = require "zkflow.async"
local rules = require "zkflow.rules"
local records = require "zkflow.records"
local time = require "zkflow.time"
local class = require "zkflow.scheduler.class"
local DEFAULT_POOL_SLOTS = 128
local TURN_BUDGET = 20000     -- task starts per turn before yielding the loop
local find = string.find
local pairs, ipairs, type, tostring, pcall = pairs, ipairs, type, tostring, pcall
local iso = time.iso
local log = class.log
local pq_new, pq_push, pq_pop = class.pq_new, class.pq_push, class.pq_pop
local FINISHED = rules.FINISHED
local Sched = class.Sched

local _M = {}

-- ---- evaluation ---------------------------------------------------------------

function Sched:push_work(ti)
  local w = self.work
  w[#w + 1] = ti
end

local DONE_FOR_PAST = { success = true, skipped = true }

-- depends_on_past (Airflow's PrevDagrunDep): the same task in the previous
-- run by logical date must have succeeded or been skipped; no previous run,
-- or a previous run without this task, allows it.  Returns "run" or "wait".
-- A previous instance that ended otherwise (failed, upstream_failed) makes
-- this one wait too, as Airflow does (its deadlock check passes over
-- depends_on_past tasks): the run stays running until that instance is
-- cleared and succeeds.  ti.waiting_for says what it waits for.  Only
-- depends_on_past tasks come here, so reading the store is affordable.
function Sched:past_allows(ti)
  local run = ti.run
  local best
  for _, r in ipairs(self.runs_by_dag[run.dag_id] or {}) do
    if r.logical_date < run.logical_date and (not best or r.logical_date > best.logical_date) then
      best = r
    end
  end
  -- Finished runs are no longer in memory: ask the store, after writing
  -- this turn's changes (a run that ended in this turn is in neither).
  self:flush()
  local stored_best_ld, stored_best_id
  for _, rid in ipairs(self.st:run_ids(run.dag_id)) do
    if rid ~= run.run_id and not (best and rid == best.run_id) then
      local rec = self.st:get_run(run.dag_id, rid)
      local ld = rec and records.date(rec.logical_date)
      if ld and ld < run.logical_date and (not stored_best_ld or ld > stored_best_ld) then
        stored_best_ld, stored_best_id = ld, rid
      end
    end
  end
  if self.history then
    -- Runs that ended have moved to the history: its latest before this
    -- one, by index.
    local h = self.history:last_run(run.dag_id, run.logical_date)
    local ld = h and records.date(h.logical_date)
    if ld and h.run_id ~= run.run_id and not (best and h.run_id == best.run_id)
        and (not stored_best_ld or ld > stored_best_ld) then
      stored_best_ld, stored_best_id = ld, h.run_id
    end
  end
  local prev_id
  if best and (not stored_best_ld or best.logical_date >= stored_best_ld) then
    local pti = best.tis[ti.task_id]
    if not pti or DONE_FOR_PAST[pti.state] then return self:note_wait(ti, nil) end
    -- Woken when that instance ends (Sched:finish), and whenever a run of
    -- this DAG ends: a failed one may be cleared and succeed.
    local pw = pti.past_waiters or {}
    pti.past_waiters = pw
    local listed = false
    for i = 1, #pw do if pw[i] == ti then listed = true end end
    if not listed then pw[#pw + 1] = ti end
    if FINISHED[pti.state] then ti.past_blocked = true end
    prev_id = best.run_id
  elseif stored_best_id then
    local rec = self.st:get_ti(run.dag_id, stored_best_id, ti.task_id)
    if not rec or DONE_FOR_PAST[rec.state] then return self:note_wait(ti, nil) end
    -- A previous run that is not in memory (ended, queued, or another
    -- scheduler's): look again whenever a run of this DAG ends (one that
    -- is cleared runs again here, and ends).
    ti.past_blocked = true
    prev_id = stored_best_id
  else
    return self:note_wait(ti, nil)
  end
  self:note_wait(ti, ("waiting for %s of %s"):format(ti.task_id, prev_id))
  return "wait"
end

-- Records why `ti` waits (nil: it does not), written only when it changes;
-- returns "run" for past_allows.
function Sched:note_wait(ti, why)
  if ti.waiting_for ~= why then
    ti.waiting_for = why
    self:mark(ti)
  end
  return "run"
end

-- A run of the DAG ended: the instances waiting on a past that was not in
-- memory, or that had failed, look again.
function Sched:wake_past_waiters(run)
  for _, r in ipairs(self.runs_by_dag[run.dag_id] or {}) do
    if r.has_past_blocked then
      r.has_past_blocked = nil
      for _, ti in pairs(r.tis) do
        if ti.past_blocked and ti.state == "none" then
          ti.past_blocked = nil
          self:push_work(ti)
        end
      end
    end
  end
end

function Sched:evaluate(ti)
  if ti.state ~= "none" then return end
  local run = ti.run
  if run.state ~= "running" then return end
  local task = ti.task
  local ups = task.upstream
  -- One counts table serves every evaluation: decide() keeps no reference.
  local c = self.counts
  c.total, c.done, c.success, c.skipped, c.failed, c.upstream_failed, c.removed =
    #ups, 0, 0, 0, 0, 0, 0
  local tis = run.tis
  for i = 1, #ups do
    local s = tis[ups[i]].state
    if FINISHED[s] then
      c.done = c.done + 1
      c[s] = c[s] + 1
    end
  end
  local verdict = rules.decide(task.trigger_rule or "all_success", c)
  if verdict == "run" then
    if task.depends_on_past then
      if self:past_allows(ti) ~= "run" then
        if ti.past_blocked then run.has_past_blocked = true end
        return
      end
    end
    self:set_state(ti, "scheduled")
    self:enqueue(ti)
  elseif verdict ~= "wait" then
    self:finish(ti, verdict)
  end
end

function Sched:enqueue(ti)
  ti.prio = ti.task.priority_weight or 1
  pq_push(self.ready, ti)
end

function Sched:set_state(ti, s)
  ti.state = s
  self:mark(ti)
end

-- Ends a task instance in a final state and wakes what depends on it.
function Sched:finish(ti, s, err)
  local run = ti.run
  local was_finished = FINISHED[ti.state]
  ti.state = s
  ti.end_date = ti.end_date or self.now()
  if err then ti.error = tostring(err) end
  self:mark(ti)
  if not was_finished then
    run.unfinished = run.unfinished - 1
  end
  if self.on_event then self:emit("ti_finished", ti) end
  local task = ti.task
  if s == "success" and task.on_success then
    self:callback(ti, task.on_success)
  elseif s == "failed" and task.on_failure then
    self:callback(ti, task.on_failure, err)
  end
  local downs = task.downstream
  for i = 1, #downs do
    local d = run.tis[downs[i]]
    if d and d.state == "none" then self:push_work(d) end
  end
  if ti.past_waiters then
    for _, w in ipairs(ti.past_waiters) do
      if w.state == "none" then self:push_work(w) end
    end
    ti.past_waiters = nil
  end
  if run.unfinished <= 0 and run.state == "running" then
    self:finish_run(run)
  end
end

function Sched:callback(ti, fn, err)
  local ctx = self:context(ti)
  ctx.exception = err and tostring(err) or nil
  async.spawn(fn, function(ok, cerr)
    if not ok then
      self:task_log(ti, "callback failed: " .. tostring(cerr))
      log("error", ("%s.%s callback: %s"):format(ti.run.dag_id, ti.task_id, tostring(cerr)))
    end
  end, ctx)
end

-- ---- the main step ------------------------------------------------------------

-- Evaluates pending work and starts ready tasks until nothing changes, then
-- writes what changed.  Re-entrant calls return at once: the outer call
-- picks their work up.
function Sched:process()
  if self.processing or self.stopped then return end
  if self.async_store and not coroutine.isyieldable() then
    -- On a remote store a pass may read (a pool's size, a past run for
    -- depends_on_past): from a timer or a watch it runs in a coroutine,
    -- where those reads yield instead of blocking the loop.
    return self:task(function() self:process() end)
  end
  self.processing = true
  local budget = TURN_BUDGET
  local ok, err = pcall(function()
    while true do
      local w = self.work
      if #w > 0 then
        self.work = {}
        for i = 1, #w do self:evaluate(w[i]) end
      elseif self.ready.n > 0 and budget > 0 then
        local started = self:start_ready(budget)
        budget = budget - started
        if started == 0 and #self.work == 0 then break end
      else
        break
      end
    end
  end)
  self.processing = false
  if not ok then log("error", "scheduler: " .. tostring(err)) end
  self:flush()
  if budget <= 0 and (self.ready.n > 0 or #self.work > 0) and not self.yield_timer then
    -- Let the loop breathe (HTTP, signals) before the next batch.
    self.yield_timer = core.timer(0, function()
      self.yield_timer = nil
      self:process()
    end)
  end
end

function Sched:pool(name)
  local p = self.pools[name]
  if not p then
    p = { slots = DEFAULT_POOL_SLOTS, used = 0, blocked = pq_new() }
    local rec = self.st:read(self.st:path("pools", name))
    if rec and type(rec.slots) == "number" then p.slots = rec.slots end
    self.pools[name] = p
  end
  return p
end

-- /config applied live (zkflow.node): how many tries run at once.
-- Returns true when it changed.
function Sched:set_parallelism(n)
  if self.parallelism == n then return false end
  self.parallelism = n
  return true
end

-- /config applied live: pool `name` holds `slots`; a pool that grew lets
-- waiting tries go.  Returns true when it changed.
function Sched:set_pool_slots(name, slots)
  local pool = self:pool(name)
  if pool.slots == slots then return false end
  pool.slots = slots
  self:release_pool(pool)
  return true
end

-- Starts ready task instances within the limits; returns how many started.
-- A task instance that does not fit waits in a queue of its DAG
-- (max_active_tasks) or of its pool, not in the ready queue: a slot freed
-- later moves the best of those back (Sched:release), so a full pool costs
-- nothing per turn however many instances wait for it.
function Sched:start_ready(budget)
  local ready = self.ready
  local started = 0
  local running_by_dag, blocked_by_dag, pools = self.running_by_dag, self.blocked_by_dag, self.pools
  while started < budget and self.running < self.parallelism do
    local ti = pq_pop(ready)
    if not ti then break end
    local run = ti.run
    if ti.state == "scheduled" and run.state == "running" then
      local task = ti.task
      local dag_id = run.dag_id
      local pool = pools[task.pool or "default_pool"] or self:pool(task.pool or "default_pool")
      local slots = task.pool_slots or 1
      if (running_by_dag[dag_id] or 0) >= (run.dag.max_active_tasks or 16) then
        local h = blocked_by_dag[dag_id]
        if not h then
          h = pq_new()
          blocked_by_dag[dag_id] = h
        end
        pq_push(h, ti)
      elseif pool.used + slots > pool.slots then
        pq_push(pool.blocked, ti)
      else
        started = started + 1
        self:start_ti(ti, pool, slots)
      end
    end
  end
  return started
end

-- ---- running one try ------------------------------------------------------------

function Sched:log_path(ti)
  local run = ti.run
  local prefix = run.log_prefix
  if not prefix then
    prefix = ("%s/%s/%s/"):format(self.log_dir, run.dag_id, run.run_id)
    run.log_prefix = prefix
    run.log_prefix_plain = not find(prefix, '[%c"\\\128-\255]')
  end
  -- One file per try beside the run's other logs: a folder per task cost
  -- every shell try a mkdir.
  local path = prefix .. ti.task_id .. "." .. ti.try_number .. ".log"
  -- Task ids are [%w_.-]: the path needs no JSON escaping when the
  -- prefix needs none; records.encode_ti then skips scanning it.
  if run.log_prefix_plain then
    ti.log_json, ti.log_json_of = '"' .. path .. '"', path
  end
  return path
end

function Sched:task_log(ti, msg)
  local path = ti.log
  -- A cluster leader's tries log on their workers' machines.
  if not path or self.executor.logs_elsewhere then return end
  local f = io.open(path, "a")
  if not f and not ti.log_ready then
    -- First line of the run's first log: make the folder, once.
    local dir = path:match("^(.*)/[^/]*$")
    if dir then core.mkdirs(dir) end
    f = io.open(path, "a")
  end
  ti.log_ready = true
  if f then
    f:write(("[%s] %s\n"):format(iso(self.now(), true), msg))
    f:close()
  end
end

-- Starts the next try of `ti` through the executor, its slots taken.
function Sched:start_ti(ti, pool, slots)
  self:take_slots(ti, pool, slots)
  return self.executor:start(ti)
end

-- Counts a try against parallelism, max_active_tasks and `pool` (nil: the
-- task's own; false: none, a worker's try whose leader counted it) until
-- Sched:release.
function Sched:take_slots(ti, pool, slots)
  local dag_id = ti.run.dag_id
  self.running = self.running + 1
  self.running_by_dag[dag_id] = (self.running_by_dag[dag_id] or 0) + 1
  if pool == nil then
    local name = ti.task.pool or "default_pool"
    pool = self.pools[name] or self:pool(name)
    slots = ti.task.pool_slots or 1
  end
  if pool then
    pool.used = pool.used + slots
    ti.slot_pool, ti.slot_n = pool, slots
  end
end

return _M
