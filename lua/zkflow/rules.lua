-- zkflow.rules: Airflow's trigger rules.
--
-- decide(rule, counts) looks at the states of a task's direct upstreams and
-- answers "run" (the rule is met), "wait" (not yet), or the state the task
-- ends in because the rule can no longer be met: "skipped" or
-- "upstream_failed" (Airflow's TriggerRuleDep with flag_upstream_failed).
-- counts = { total, success, skipped, failed, upstream_failed, removed, done }
local _M = {}

_M.FINISHED = {
  success = true, failed = true, skipped = true, upstream_failed = true,
  removed = true,
}

local function new_counts(total)
  return { total = total, success = 0, skipped = 0, failed = 0,
           upstream_failed = 0, removed = 0, done = 0 }
end
_M.new_counts = new_counts

function _M.count(states)
  local c = new_counts(#states)
  for i = 1, #states do
    local s = states[i]
    if _M.FINISHED[s] then
      c.done = c.done + 1
      c[s] = c[s] + 1
    end
  end
  return c
end

local deciders = {}

-- Each decider mirrors the branch of Airflow's TriggerRuleDep
-- (_evaluate_direct_relatives, Airflow 3.1) for its rule: first the state
-- the task ends in when the rule can no longer be met (checked even while
-- other upstreams still run, as Airflow does), then whether it is met.

deciders.all_success = function(c)
  if c.failed + c.upstream_failed > 0 then return "upstream_failed" end
  if c.skipped > 0 then return "skipped" end
  if c.success + c.removed >= c.total then return "run" end
  return "wait"
end

deciders.all_failed = function(c)
  if c.success + c.skipped > 0 then return "skipped" end
  if c.failed + c.upstream_failed + c.removed >= c.total then return "run" end
  return "wait"
end

deciders.all_done = function(c)
  if c.done >= c.total then return "run" end
  return "wait"
end

-- Airflow 3.1: a skipped upstream is not "done" for this rule, so any skip
-- skips the task at once; all the others done without a success is an
-- upstream failure.
deciders.all_done_min_one_success = function(c)
  if c.skipped > 0 then return "skipped" end
  if c.done < c.total then return "wait" end
  if c.success > 0 then return "run" end
  return "upstream_failed"
end

deciders.all_skipped = function(c)
  if c.success + c.failed + c.upstream_failed > 0 then return "skipped" end
  if c.skipped + c.removed >= c.total then return "run" end
  return "wait"
end

-- The one_* rules do not wait for the other upstreams: the first success
-- (failure, end) is enough, even while the rest still run.
deciders.one_success = function(c)
  if c.success > 0 then return "run" end
  if c.done >= c.total then
    if c.skipped >= c.done then return "skipped" end
    return "upstream_failed"
  end
  return "wait"
end

deciders.one_failed = function(c)
  if c.failed + c.upstream_failed > 0 then return "run" end
  if c.done >= c.total then return "skipped" end
  return "wait"
end

deciders.one_done = function(c)
  if c.success + c.failed > 0 then return "run" end
  if c.done >= c.total then return "skipped" end
  return "wait"
end

deciders.none_failed = function(c)
  if c.failed + c.upstream_failed > 0 then return "upstream_failed" end
  if c.done >= c.total then return "run" end
  return "wait"
end

deciders.none_failed_min_one_success = function(c)
  if c.failed + c.upstream_failed > 0 then return "upstream_failed" end
  if c.skipped >= c.total then return "skipped" end
  if c.done >= c.total then return "run" end
  return "wait"
end

deciders.none_skipped = function(c)
  if c.skipped > 0 then return "skipped" end
  if c.done >= c.total then return "run" end
  return "wait"
end

deciders.always = function()
  return "run"
end

_M.NAMES = {}
for name in pairs(deciders) do _M.NAMES[name] = true end

-- A task without upstreams runs whatever its rule (Airflow's
-- TriggerRuleDep passes "did not have any upstream tasks").
function _M.decide(rule, c)
  local f = deciders[rule]
  if not f then error("unknown trigger rule '" .. tostring(rule) .. "'", 2) end
  if c.total == 0 then return "run" end
  return f(c)
end

return _M
