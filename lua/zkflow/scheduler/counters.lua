-- zkflow.scheduler.counters: runs and task instances by state, counted
-- by the scheduler as it writes them, so that /metrics answers in O(1)
-- and never reads the store's history.  Sched methods (init.lua says how
-- the files make the class).
--
--   s:counters() -> {runs = {[state] = n}, task_instances = {[state] = n},
--                    dags = {[dag_id] = {runs = ..., task_instances = ...}},
--                    saved = epoch or nil}
--
-- Each by state, in all and per DAG.  Two kinds of number:
--   in progress  (runs queued or running; task instances none, scheduled,
--                queued, running, up_for_retry, up_for_reschedule): how
--                many there are now, in the runs this scheduler holds;
--   ended        (runs success or failed; task instances success, failed,
--                skipped, upstream_failed, removed): how many reached that
--                state, counted each time one does (a cleared task that
--                succeeds again counts twice) -- a run that ended moves to
--                history (or is removed by retention) and leaves the
--                scheduler's memory, but not its count.
-- The scheduler saves them in the store at <root>/stats/scheduler (JSON,
-- the same object plus `id` and `saved`) with its writes, at most every
-- SAVE_EVERY seconds and when it stops; the next scheduler (a restart, a
-- new cluster leader) starts its ended counts from there, and an API
-- process without a scheduler answers /metrics from that record.
local core = require "zkflow.core"
local state = require "zkflow.state"
local class = require "zkflow.scheduler.class"
local pairs, type = pairs, type
local Sched = class.Sched

local _M = {}

_M.SAVE_EVERY = 15

local ENDED = { runs = state.RUN_FINISHED, task_instances = state.TI_FINISHED }

local function counts(self)
  local c = self.state_counts
  if not c then
    c = { runs = {}, task_instances = {}, dags = {} }
    self.state_counts = c
  end
  return c
end

local function dag_counts(c, dag_id)
  local d = c.dags[dag_id]
  if not d then
    d = { runs = {}, task_instances = {} }
    c.dags[dag_id] = d
  end
  return d
end

local function move(c, prev, s, ended)
  if prev and not ended[prev] then
    c[prev] = (c[prev] or 1) - 1
  end
  c[s] = (c[s] or 0) + 1
end

-- The node the counters are saved at.
function _M.path(st)
  return st:path("stats", "scheduler")
end

-- Counts `obj` (a run or a task instance) in its state, once per change
-- of state: the write-behind calls it for each object it writes, and a
-- run adopted from the store is counted when it is adopted.
function Sched:count(obj)
  local s = obj.state or "none"
  local prev = obj.counted
  if prev == s then return end
  obj.counted = s
  local kind = obj.task and "task_instances" or "runs"
  local ended = ENDED[kind]
  local c = counts(self)
  move(c[kind], prev, s, ended)
  local dag_id = obj.task and obj.run and obj.run.dag_id or obj.dag_id
  if dag_id then move(dag_counts(c, dag_id)[kind], prev, s, ended) end
  if self.schedule_runs and self.mono() - (self.counters_saved or 0) >= _M.SAVE_EVERY then
    self:save_counters()
  end
end

-- The counters now (a copy).
local function copy(c)
  local out = {}
  for s, n in pairs(c) do out[s] = n end
  return out
end

function Sched:counters()
  local c = counts(self)
  local out = { runs = copy(c.runs), task_instances = copy(c.task_instances),
                dags = {}, saved = self.counters_saved_at }
  for id, d in pairs(c.dags) do
    out.dags[id] = { runs = copy(d.runs), task_instances = copy(d.task_instances) }
  end
  return out
end

-- Queues the counters' record after this turn's writes.
function Sched:save_counters()
  self.counters_saved = self.mono()
  self.counters_saved_at = self.now()
  local rec = self:counters()
  rec.saved, rec.id = self.counters_saved_at, self.worker_id
  self:store_op({ op = "set", path = _M.path(self.st), data = core.json_encode(rec) }, true)
end

-- Starts the ended counts from the record the last scheduler saved (the
-- counts in progress are this scheduler's own: it adopts those runs).
function Sched:load_counters()
  local rec = self.st:read(_M.path(self.st))
  if type(rec) ~= "table" then return end
  local c = counts(self)
  local function add(into, from)
    for kind, ended in pairs(ENDED) do
      for s, n in pairs(type(from[kind]) == "table" and from[kind] or {}) do
        if ended[s] and math.tointeger(n) then
          into[kind][s] = (into[kind][s] or 0) + n
        end
      end
    end
  end
  add(c, rec)
  for id, d in pairs(type(rec.dags) == "table" and rec.dags or {}) do
    if type(d) == "table" then add(dag_counts(c, id), d) end
  end
end

return _M
