-- zkflow.scheduler.class: the scheduler's one class table, Sched, and
-- the few helpers that more than one of its files uses (the log, the mark
-- of a scheduler that writes nothing, run keys, the ready queues).  Each
-- file of zkflow/scheduler/ adds its methods to this table (init.lua
-- explains the mechanism); a scheduler is setmetatable({...}, Sched).
local core = require "zkflow.core"

local _M = {}

local Sched = {}
Sched.__index = Sched
_M.Sched = Sched

local function log(level, msg)
  core.log(level, msg)
end

local function no_mark() end

local function run_key(dag_id, run_id)
  return dag_id .. "\0" .. run_id
end


-- ---- queues of ready task instances (priority desc, then FIFO) ----------
--
-- A bucket per priority_weight, the distinct weights kept sorted: a DAG
-- has few distinct weights, so push and pop cost O(1) in practice where a
-- binary heap pays log n comparisons (Lua calls) per operation.

local function pq_new()
  return { n = 0, prios = {}, buckets = {} }
end

local function pq_push(q, x)
  local p = x.prio
  local b = q.buckets[p]
  if not b then
    b = { first = 1, last = 0 }
    q.buckets[p] = b
    local ps = q.prios
    local i = #ps
    while i > 0 and ps[i] < p do
      ps[i + 1] = ps[i]
      i = i - 1
    end
    ps[i + 1] = p
  end
  local last = b.last + 1
  b.last = last
  b[last] = x
  q.n = q.n + 1
end

local function pq_pop(q)
  if q.n == 0 then return nil end
  local ps, buckets = q.prios, q.buckets
  local p = ps[1]
  local b = buckets[p]
  local first = b.first
  local x = b[first]
  b[first] = nil
  first = first + 1
  if first > b.last then
    -- Empty: drop the bucket so the highest weight stays at ps[1].
    buckets[p] = nil
    table.remove(ps, 1)
  else
    b.first = first
  end
  q.n = q.n - 1
  return x
end

_M.log, _M.no_mark, _M.run_key = log, no_mark, run_key
_M.pq_new, _M.pq_push, _M.pq_pop = pq_new, pq_push, pq_pop

return _M
