-- zkflow.executors.queue: the executor of a cluster leader.  A
-- ready try goes to its queue in the store (/queue/<queue>/ti-<seq>) for a
-- worker instead of running here; zkflow.cluster watches the claims and the
-- results and tells this executor what it saw.
--
-- It is the `executor` option of zkflow.scheduler (that file's header has
-- the interface): bind, start, abort, adopt, logs_elsewhere.  What the
-- cluster code calls, after reading the store:
--
--   q:adopted()              the tries that a record said were in flight when
--                            the scheduler started (a worker may have them):
--                            now counted against the limits, to be settled
--   q:started(key, claim)    a worker claimed the try `key`
--   q:result(key, rec, path) a worker reported the try's end (its /results
--                            node, deleted with the instance's new state)
--   q:lost(key, why)         the try has no worker any more: it runs again
--   q:queued(key, node)      the try waits in the queue at `node`
--   q:entry(key)             the try in flight under `key`: {ti=, key=,
--                            claimed=, queue_node=}, or nil; q.tries maps
--                            every key to its entry
--
-- A try's key is <dag_id>~<run_id>~<task_id>~<try> (_M.ti_key).
local core = require "zkflow.core"
local state = require "zkflow.state"

local json_encode, null = core.json_encode, core.null
local type, tostring, ipairs = type, tostring, ipairs

local _M = {}

local Q = {}
Q.__index = Q

-- Tries log on their workers' machines: the leader writes no log lines.
Q.logs_elsewhere = true

-- A try's name in the queue, the claims and the results:
-- <dag_id>~<run_id>~<task_id>~<try>, each part with what a znode name
-- cannot hold (and '~' and '%') written as %XX.
local function key_part(v)
  return (tostring(v):gsub("[^%w_.:+-]", function(c) return ("%%%02X"):format(c:byte()) end))
end
function _M.ti_key(dag_id, run_id, task_id, try_number)
  return ("%s~%s~%s~%d"):format(key_part(dag_id), key_part(run_id), key_part(task_id), try_number)
end

-- queue_executor.new{store=, root=}: an executor for one scheduler.
function _M.new(opts)
  assert(opts and opts.store, "queue_executor.new: 'store' is required")
  local self = setmetatable({
    tries = {},         -- key -> entry, while a worker may have the try
    pending = {},       -- instances adopted in flight, until adopted()
    queues_made = {},   -- queue -> true once its parent node is written
  }, Q)
  self.st = state.new(opts.store, opts.root or "/zkflow")
  return self
end

-- The scheduler this executor serves (scheduler.new calls this once).
function Q:bind(s)
  self.s = s
end

-- Remembers a try in flight by its key; returns its entry.
function Q:track(ti)
  local run = ti.run
  local key = _M.ti_key(run.dag_id, run.run_id, ti.task_id, ti.try_number)
  local e = { ti = ti, key = key }
  ti.attempt = { key = key }
  self.tries[key] = e
  return e
end

-- The queue record of a try, written after the instance's record in the
-- scheduler's next transaction: what a worker needs to find it.
function Q:queue_op(e)
  local ti = e.ti
  local run, task = ti.run, ti.task
  local q = task.queue or "default"
  local path = self.st:path("queue", q)
  local s = self.s
  if not self.queues_made[q] then
    -- The parent of the sequential nodes: once per queue and process.
    self.queues_made[q] = true
    s:store_op({ op = "create", path = path, data = "" })
  end
  s:store_op({
    op = "create", path = path .. "/ti-", flags = { sequential = true },
    data = json_encode({ key = e.key, dag_id = run.dag_id, run_id = run.run_id,
                         task_id = ti.task_id, try_number = ti.try_number, queue = q,
                         priority_weight = task.priority_weight or 1,
                         version = run.version or null }),
    on_done = function(p) if p and self.tries[e.key] == e then e.queue_node = p end end,
  })
end

-- The try goes to its queue ("queued"); a worker claims it ("running",
-- Q:started) and reports its end (Q:result).  Its slots are taken.
function Q:start(ti)
  local s = self.s
  local t = s.now()
  ti.try_number = ti.try_number + 1
  ti.state = "queued"
  ti.start_date, ti.end_date = nil, nil
  ti.first_start = ti.first_start or t
  ti.log, ti.worker, ti.error, ti.pid = nil, nil, nil, nil
  ti.queued_at = t
  s:mark(ti)
  self:queue_op(self:track(ti))
  s:emit("ti_queued", ti)
end

-- The worker's try goes on; its result will find no taker.
function Q:abort(ti)
  local a = ti.attempt
  local e = a and a.key and self.tries[a.key]
  if e and e.ti == ti then self.tries[a.key] = nil end
end

-- A record says the try was queued or running when the last scheduler
-- stopped: a worker may have it.  zkflow.cluster looks for it in the queue,
-- the claims and the results before deciding (Q:adopted).
function Q:adopt(ti, rec)
  ti.worker = rec.worker ~= null and rec.worker or nil
  self.pending[#self.pending + 1] = ti
  return true
end

-- The tries adopt() took: counted against parallelism, max_active_tasks
-- and their pools as started ones are; returns their entries.
function Q:adopted()
  local list = self.pending
  self.pending = {}
  local out = {}
  for _, ti in ipairs(list) do
    self.s:take_slots(ti)
    out[#out + 1] = self:track(ti)
  end
  return out
end

function Q:entry(key)
  return self.tries[key]
end

-- The try waits in the queue at `node` (found there after a scheduler
-- change).
function Q:queued(key, node)
  local e = self.tries[key]
  if not e then return end
  e.queue_node = node
  if e.ti.state ~= "queued" then
    e.ti.state = "queued"
    self.s:mark(e.ti)
  end
end

-- A worker claimed the try `key` (claim: {worker=, started=, log=}).
-- `adopted`: the try was in flight under the last scheduler, whatever its
-- record says.
function Q:started(key, claim, adopted)
  local e = self.tries[key]
  local ti = e and e.ti
  if not ti or (ti.state ~= "queued" and not adopted) then return end
  local s = self.s
  ti.state = "running"
  e.claimed = true
  ti.worker = claim and claim.worker or ti.worker
  ti.start_date = claim and tonumber(claim.started) or s.now()
  ti.log = claim and claim.log or ti.log
  s:mark(ti)
  s:emit("ti_started", ti)
end

-- A worker's report of a try's end (its /results node at `path`, deleted
-- in the transaction that writes the instance's new state).  False when no
-- try waits for it.
function Q:result(key, rec, path)
  local s = self.s
  if path then s:store_op({ op = "delete", path = path }) end
  local e = self.tries[key]
  local ti = e and e.ti
  if not ti or type(rec) ~= "table" or rec.try_number ~= ti.try_number then
    if path then s:store_op(nil, true) end
    return false
  end
  self.tries[key] = nil
  ti.worker = rec.worker or ti.worker
  ti.log = rec.log or ti.log
  if type(rec.xcoms) == "table" then ti.xcoms = rec.xcoms end
  if type(rec.start_date) == "number" then ti.start_date = rec.start_date end
  local res = rec.result
  if res == null then res = nil end
  local extra = rec.skip and { skip = rec.skip } or nil
  s:end_try(ti, rec.ok == true, res, extra)
  if type(rec.end_date) == "number" then ti.end_date = rec.end_date end
  s:process()
  return true
end

-- The try `key` has no worker any more (its claim went with the worker's
-- session, and it left no result): it runs again, on some worker, without
-- costing a retry, as a try lost by a dead scheduler does.
function Q:lost(key, why)
  local e = self.tries[key]
  if not e then return end
  self.tries[key] = nil
  self.s:try_lost(e.ti, why)
end

return _M
