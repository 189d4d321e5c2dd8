-- zkflow.scheduler.lifecycle: start, recovery and stop.  Reading the
-- unfinished runs back after a restart, the member record, start(), stop()
-- and waiting for runs to end.  Sched methods (init.lua says how the files
-- make the class).
local core = require "zkflow.core"
local async = require "zkflow.async"
local state = require "zkflow.state"
local time = require "zkflow.time"
local class = require "zkflow.scheduler.class"
local json_encode = core.json_encode
local pairs, ipairs, tostring = pairs, ipairs, tostring
local sort = table.sort
local iso = time.iso
local log, run_key = class.log, class.run_key
local Sched = class.Sched

local _M = {}

-- ---- life cycle ------------------------------------------------------------------------

-- Reads back the runs a previous scheduler left unfinished; the finished
-- ones still in the live store move to the history (scheduler/archive.lua).
function Sched:recover()
  local finished, unfinished = {}, {}
  for _, dag_id in ipairs(self.st:run_dags()) do
    local dag = self.dags[dag_id]
    local known = self.known_runs[dag_id] or {}
    self.known_runs[dag_id] = known
    for _, rid in ipairs(self.st:run_ids(dag_id)) do
      local rec = self.history and self.st:get_live_run(dag_id, rid)
      if rec and state.RUN_FINISHED[rec.state] then
        finished[#finished + 1] = { dag_id, rid }
      elseif rec then
        unfinished[#unfinished + 1] = { dag_id, rid }
      end
      -- A DAG whose file is still loading (zkflow.dsl.probe) is not known
      -- yet: its runs are adopted by watch_runs when it arrives.
      if dag then
        known[rid] = true
        rec = rec or self.st:get_run(dag_id, rid)
        if rec and (rec.state == "running" or rec.state == "queued") then
          rec.run_id = rid
          local run = self:adopt_run(dag, rec, self.st:list_tis(dag_id, rid))
          log("info", ("resuming run %s %s"):format(dag_id, rid))
          self:queue_run(run)
        end
      end
    end
  end
  self:archive_recovered(finished, unfinished)
end

local hostname = state.hostname

-- Registers this scheduler as an ephemeral member (/members/schedulers/<id>):
-- `zkflow members` lists it while the process lives; the store removes it
-- when the process ends, a kill -9 included (the next open reaps it).  A
-- standalone scheduler is its own leader.
function Sched:register_member()
  local path = self.st:path("members", "schedulers", self.worker_id)
  local rec = json_encode({
    id = self.worker_id, host = hostname(), pid = core.getpid(),
    version = core.version, started = iso(self.now(), true), leader = self.leader ~= false,
    role = self.member_role or "standalone",
  })
  self.store:delete(path)
  local ok, err = self.store:create(path, rec, { ephemeral = true, parents = true })
  if not ok then log("warn", "members: " .. path .. ": " .. tostring(err)) end
end

function Sched:start()
  self:load_dags(true)
  self.worker_id = self.worker_id or ("standalone-" .. tostring(core.getpid and core.getpid() or 0))
  if self.schedule_runs and self.register then self:register_member() end
  if self.schedule_runs and self.records then self:load_counters() end
  self:recover()
  self:watch_requests()
  local ids = {}
  for id in pairs(self.dags) do ids[#ids + 1] = id end
  sort(ids)
  for _, id in ipairs(ids) do
    self.watched[id] = true
    self:watch_paused(id)
    self:watch_runs(id)
    if not self.paused[id] then self:tick_dag(self.dags[id]) end
  end
  if self.dags_dir and self.hot_reload ~= false and core.watch_tree then
    local w, err = core.watch_tree(self.dags_dir, function()
      self:task(function() self:reload() end)
    end, 50)
    if w then
      self.dir_watch = w
    else
      log("warn", "hot reload is off: " .. tostring(err))
    end
  end
  self:process()
  return self
end

-- Stops scheduling; running tasks are terminated (their process groups get
-- SIGTERM, Lua tasks are closed) and their runs stay "running" in the
-- store, so the next scheduler resumes them.
function Sched:stop()
  if self.stopped then return end
  self.stopped = true
  if self.dir_watch then self.dir_watch:close(); self.dir_watch = nil end
  if self.unprobe then self.unprobe(); self.unprobe = nil end
  if self.pushed_timer then self.pushed_timer:cancel(); self.pushed_timer = nil end
  for _, t in pairs(self.timers) do t:cancel() end
  self.timers = {}
  if self.archive_timer then self.archive_timer:cancel(); self.archive_timer = nil end
  if self.retention_timer then self.retention_timer:cancel(); self.retention_timer = nil end
  if self.prune_timer then self.prune_timer:cancel(); self.prune_timer = nil end
  if self.yield_timer then self.yield_timer:cancel(); self.yield_timer = nil end
  for _, run in pairs(self.runs) do
    if run.timeout_timer then run.timeout_timer:cancel(); run.timeout_timer = nil end
    for _, ti in pairs(run.tis) do
      if ti.wait_timer then ti.wait_timer:cancel(); ti.wait_timer = nil end
      local a = ti.attempt
      if a then
        if a.timer then a.timer:cancel() end
        if a.kill_timer then a.kill_timer:cancel() end
        self.executor:abort(ti)
        ti.attempt = nil
      end
    end
  end
  if self.schedule_runs then self:save_counters() end
  self:flush(true)
  self.store:flush()
end

-- Waits (inside a coroutine) until every run in `list` ({dag_id, run_id}
-- pairs or run objects) has ended; returns the runs' final states.
function Sched:wait_runs(list)
  local states = {}
  for i, item in ipairs(list) do
    local dag_id = item.dag_id or item[1]
    local run_id = item.run_id or item[2]
    local key = run_key(dag_id, run_id)
    if self.runs[key] then
      states[i] = async.wait(function(resume)
        local w = self.run_waiters[key] or {}
        self.run_waiters[key] = w
        w[#w + 1] = function(run) resume(run.state) end
      end)
    else
      local rec = self.st:get_run(dag_id, run_id)
      states[i] = rec and rec.state
    end
  end
  return states
end

return _M
