-- zkflow.scheduler.watch: what the scheduler watches in the store.  Runs
-- triggered by others, pauses, requests (clear, mark ...), and clearing
-- task instances.  Sched methods (init.lua says how the files make the
-- class).
local rules = require "zkflow.rules"
local class = require "zkflow.scheduler.class"
local pairs, ipairs, tostring = pairs, ipairs, tostring
local log, run_key = class.log, class.run_key
local FINISHED = rules.FINISHED
local Sched = class.Sched

local _M = {}

-- ---- watching the store: triggers, pauses, requests ------------------------------------

function Sched:watch_runs(dag_id)
  local path = self.st:path("runs", dag_id)
  self.store:create(path, "", { parents = true })
  local list = self.store:children(path, function()
    if self.stopped then return end
    self:task(function()
      self:watch_runs(dag_id)
      self:process()
    end)
  end)
  local known = self.known_runs[dag_id] or {}
  self.known_runs[dag_id] = known
  for _, rid in ipairs(list or {}) do
    if not known[rid] then
      known[rid] = true
      local rec = self.st:get_run(dag_id, rid)
      local dag = self.dags[dag_id]
      if rec and dag and (rec.state == "queued" or rec.state == "running") then
        rec.run_id = rid
        local run = self:adopt_run(dag, rec, self.st:list_tis(dag_id, rid))
        self:queue_run(run)
      end
    end
  end
end

function Sched:watch_paused(dag_id)
  local path = self.st:path("dags", dag_id, "paused")
  local stat = self.store:exists(path, function()
    if self.stopped then return end
    self:task(function()
      self:watch_paused(dag_id)
      self:process()
    end)
  end)
  local was = self.paused[dag_id]
  self.paused[dag_id] = stat ~= nil
  if was and not self.paused[dag_id] then
    log("info", "dag " .. dag_id .. " unpaused")
    self:activate_runs(dag_id)
    local dag = self.dags[dag_id]
    if dag then self:tick_dag(dag) end
  elseif self.paused[dag_id] and not was then
    log("info", "dag " .. dag_id .. " paused")
    if self.timers[dag_id] then self.timers[dag_id]:cancel(); self.timers[dag_id] = nil end
  end
end

function Sched:watch_requests()
  local path = self.st:path("requests")
  self.store:create(path, "", { parents = true })
  local list = self.store:children(path, function()
    if self.stopped then return end
    self:task(function()
      self:watch_requests()
      self:process()
    end)
  end)
  for _, name in ipairs(list or {}) do
    local p = path .. "/" .. name
    local rec = self.st:read(p)
    self.store:delete(p)
    if rec and rec.op == "clear" then
      self:clear(rec.dag_id, rec.run_id, rec.task_ids, rec.downstream)
    elseif rec then
      log("warn", "unknown request " .. p .. ": " .. tostring(rec.op))
    end
  end
end

-- Airflow's clear: the chosen task instances (and with `downstream` every
-- task after them) go back to none and may run again; the run runs again.
function Sched:clear(dag_id, run_id, task_ids, downstream)
  local dag = self.dags[dag_id]
  if not dag then
    log("warn", "clear: no DAG " .. tostring(dag_id))
    return
  end
  local key = run_key(dag_id, run_id)
  local run = self.runs[key]
  if not run then
    local rec = self.st:get_live_run(dag_id, run_id)
    local archived = false
    if not rec and self.history then
      -- A finished run in the history comes back to the live store (every
      -- instance written there, the cleared ones as none) and leaves the
      -- history once that is written; it moves again when it ends.
      rec = self.history:get_run(dag_id, run_id)
      archived = rec ~= nil
    end
    if not rec then return end
    rec.run_id = run_id
    run = self:adopt_run(dag, rec, self.st:list_tis(dag_id, run_id))
    run.state = "queued"
    if archived then
      run.persisted = false
      self:mark(run)          -- written before its instances: their parent
      for _, ti in pairs(run.tis) do
        ti.persisted = false
        self:mark(ti)
      end
      self:unarchive_later(dag_id, run_id)
    end
  end
  local chosen = {}
  local ids = task_ids
  if not ids or #ids == 0 then ids = dag.order end
  local stack = {}
  for _, id in ipairs(ids) do
    if dag.tasks[id] then chosen[id] = true; stack[#stack + 1] = id end
  end
  if downstream then
    while #stack > 0 do
      local id = table.remove(stack)
      for _, d in ipairs(dag.tasks[id].downstream) do
        if not chosen[d] then chosen[d] = true; stack[#stack + 1] = d end
      end
    end
  end
  for id in pairs(chosen) do
    local ti = run.tis[id]
    if ti.state ~= "running" and ti.state ~= "queued" then
      if FINISHED[ti.state] then run.unfinished = run.unfinished + 1 end
      if ti.wait_timer then ti.wait_timer:cancel(); ti.wait_timer = nil end
      ti.state = "none"
      ti.max_tries = ti.try_number + (ti.task.retries or 0)
      ti.end_date = nil
      self:mark(ti)
    end
  end
  log("info", ("cleared %s %s"):format(dag_id, run_id))
  if run.state == "running" then
    for id in pairs(chosen) do self:push_work(run.tis[id]) end
  else
    run.state = "queued"
    run.end_date = nil
    self:mark(run)
    local active = self.runs_by_dag[dag_id]
    local found = false
    for _, r in ipairs(active or {}) do if r == run then found = true end end
    if not found then self:queue_run(run) end
  end
end

return _M
