-- zkflow.scheduler.dags: the DAGs a scheduler knows and their schedules.
-- Scanning and reloading the DAG folder and the DAGs pushed to /dags, and
-- each DAG's schedule: the timer that creates its scheduled runs (with
-- catchup).  Sched methods (init.lua says how the files make the class).
local core = require "zkflow.core"
local time = require "zkflow.time"
local class = require "zkflow.scheduler.class"
local max = math.max
local pairs, ipairs, tostring, pcall = pairs, ipairs, tostring, pcall
local log = class.log
local Sched = class.Sched

local _M = {}

-- ---- DAGs -------------------------------------------------------------------

-- The folder's DAGs and the pushed ones (which win): loader.scan's shape.
function Sched:scan_dags(slow)
  local res
  if self.dags_dir then
    -- A file whose load is slow finishes in a child in the background
    -- (zkflow.dsl.probe): the loop goes on, and the verdict reloads.
    if not self.unprobe then
      self.unprobe = require("zkflow.dsl.probe").on_verdict(function()
        self:pushed_changed()
      end)
    end
    res = require("zkflow.dsl.loader").scan(self.dags_dir, { background = true, slow = slow })
  else
    res = { dags = {}, errors = {}, files = {} }
  end
  if self.watch_pushed then
    local pushed = require "zkflow.pushed"
    local ok, p = pcall(pushed.load, self.store, self.root, {
      watch = function() self:pushed_changed() end,
      armed = self.pushed_armed, dags_dir = self.dags_dir,
    })
    if ok then
      pushed.merge(res, p)
    else
      log("error", "pushed DAGs: " .. tostring(p))
    end
  end
  return res
end

-- A push (or removal) in /dags, or the verdict on a file that loaded in
-- the background: load again once the burst is over.
function Sched:pushed_changed()
  if self.stopped or self.pushed_timer then return end
  self.pushed_timer = core.timer(0.05, function()
    self.pushed_timer = nil
    if self.stopped then return end
    self:task(function() self:reload() end)
  end)
end

function Sched:load_dags(first)
  if not self.dags_dir and not self.watch_pushed then return end
  -- Before the first runs are recovered a file may take longer (2 s)
  -- before it is left to the background: its runs wait for it otherwise.
  local res = self:scan_dags(first and 2 or nil)
  local old_dags, old_files = self.dags or {}, self.files or {}
  self.dags = res.dags or {}
  self.import_errors = res.errors or {}
  self.files = res.files or {}
  -- A file still loading in the background keeps its previous DAGs (a
  -- worker's reload comes here).
  for file in pairs(res.pending or {}) do
    local prev = old_files[file]
    if prev and prev.dag_ids and self.files[file] then
      self.files[file].dag_ids = prev.dag_ids
      for _, id in ipairs(prev.dag_ids) do
        if self.dags[id] == nil then self.dags[id] = old_dags[id] end
      end
    end
  end
  for file, err in pairs(self.import_errors) do
    log("error", "import error in " .. file .. ": " .. tostring(err))
  end
end

-- Hot reload: the DAG folder changed (core.watch_tree).  The folder is
-- scanned again; a file whose source did not change keeps its DAG object,
-- a changed one becomes a new version (runs in progress keep the version
-- they started with, in run.dag), a file that stops loading keeps its
-- previous good DAGs and shows the import error, a deleted file's DAGs stop
-- being scheduled (their runs in progress go on).
function Sched:reload()
  if self.stopped or (not self.dags_dir and not self.watch_pushed) then return end
  if self.reload_dags_only then return self:load_dags() end
  local ok, res = pcall(self.scan_dags, self)
  if not ok then
    log("error", "reload of " .. tostring(self.dags_dir) .. ": " .. tostring(res))
    return
  end
  local old_dags, old_files = self.dags, self.files or {}
  local dags, files, errors = {}, res.files or {}, res.errors or {}
  for id, dag in pairs(res.dags or {}) do
    local prev = old_dags[id]
    if prev and prev.source_hash == dag.source_hash and prev.file == dag.file then
      dags[id] = prev
    else
      dags[id] = dag
    end
  end
  -- A file still loading in the background keeps its previous DAGs, as
  -- one that fails does.
  local keep = {}
  for file, err in pairs(errors) do keep[file] = err end
  for file in pairs(res.pending or {}) do keep[file] = false end
  for file, err in pairs(keep) do
    local prev = old_files[file]
    if prev and prev.dag_ids and #prev.dag_ids > 0 then
      for _, id in ipairs(prev.dag_ids) do
        if not dags[id] and old_dags[id] then dags[id] = old_dags[id] end
      end
      files[file] = files[file] or {}
      if not files[file].dag_ids or #files[file].dag_ids == 0 then
        files[file].dag_ids = prev.dag_ids
      end
    end
    if err and self.import_errors[file] ~= err then
      log("error", "import error in " .. file .. ": " .. tostring(err))
    end
  end
  self.dags, self.files, self.import_errors = dags, files, errors
  for id, dag in pairs(old_dags) do
    if not dags[id] then
      if self.timers[id] then self.timers[id]:cancel(); self.timers[id] = nil end
      log("info", "dag " .. id .. " removed: its file is gone")
      self:emit("dag_removed", dag)
    end
  end
  for id, dag in pairs(dags) do
    if old_dags[id] ~= dag then
      log("info", ("dag %s: version %s from %s"):format(id, tostring(dag.source_hash),
                                                     tostring(dag.file)))
      self:emit("dag_loaded", dag)
      if not self.watched[id] then
        self.watched[id] = true
        self:watch_paused(id)
        self:watch_runs(id)
      end
      if not self.paused[id] then self:tick_dag(dag) end
    end
  end
  if self.on_reload then self.on_reload(self) end
  self:versions_changed()
  self:process()
end

function Sched:dag_count()
  local n = 0
  for _ in pairs(self.dags) do n = n + 1 end
  return n
end

-- ---- schedules ----------------------------------------------------------------------

-- A schedule's intervals are zkflow.time's.
local next_interval, last_interval = time.next_interval, time.last_interval


function Sched:dag_meta(dag_id)
  return self.st:read(self.st:path("dags", dag_id, "meta")) or {}
end

-- Creates the scheduled runs that are due for `dag` and sets the timer for
-- the next one.  Airflow's rule: the run for an interval starts when the
-- interval has ended; catchup creates every missed one, otherwise only the
-- latest.
function Sched:tick_dag(dag)
  if self.timers[dag.id] then self.timers[dag.id]:cancel(); self.timers[dag.id] = nil end
  if not self.schedule_runs or self.stopped then return end
  local sch = dag.schedule
  if sch == nil then return end
  local t = self.now()
  local meta = self:dag_meta(dag.id)
  if sch == "@once" then
    if meta.last_logical then return end
    local start = dag.start_date or t
    if start > t then
      self.timers[dag.id] = core.timer(start - t, function()
        self:task(function() self:tick_dag(dag); self:process() end)
      end)
      return
    end
    self:create_run(dag, { run_type = "scheduled", logical_date = start,
                           data_interval_start = start, data_interval_end = start })
    self.st:write(self.st:path("dags", dag.id, "meta"), { last_logical = start })
    return
  end
  local from
  if meta.last_logical then
    local _, e = next_interval(dag, meta.last_logical)
    from = e and meta.last_logical + 1
  end
  from = from or dag.start_date or t
  local created, last = 0, meta.last_logical
  local s, e = next_interval(dag, from)
  if not dag.catchup and s and e and e <= t then
    -- Only the latest complete interval runs; computed, not walked to, so
    -- an old start_date costs nothing.
    local ls, le = last_interval(dag, t)
    if ls and ls > s then s, e = ls, le end
  end
  -- Airflow creates no scheduled run while the DAG has max_active_runs
  -- runs active or queued; finish_run() ticks the DAG again.
  local limit = dag.max_active_runs or 16
  local q = self.queued_runs[dag.id]
  local pending = self:active_runs(dag.id) + (q and #q or 0)
  self.tick_blocked[dag.id] = nil
  while s and e and e <= t and (not dag.end_date or s <= dag.end_date) do
    if pending >= limit then
      self.tick_blocked[dag.id] = true
      break
    end
    self:create_run(dag, { run_type = "scheduled", logical_date = s,
                           data_interval_start = s, data_interval_end = e })
    last = s
    created = created + 1
    pending = pending + 1
    s, e = next_interval(dag, e)
  end
  if last ~= meta.last_logical then
    self.st:write(self.st:path("dags", dag.id, "meta"), { last_logical = last })
  end
  if s and e and (not dag.end_date or s <= dag.end_date)
      and not self.tick_blocked[dag.id] then
    local delay = max(0, e - self.now())
    self.timers[dag.id] = core.timer(delay, function()
      self.timers[dag.id] = nil
      self:task(function()
        self:tick_dag(dag)
        self:process()
      end)
    end)
  end
end

return _M
