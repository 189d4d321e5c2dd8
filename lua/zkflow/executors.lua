-- zkflow.executors: how each shipped operator runs one try.
--
-- An executor is `function(task, ctx, rt)`, called in the try's coroutine:
-- it returns the XCom, raises to fail (flow.skip()/flow.fail() error
-- objects end the try as skipped / failed without retry), or, for a sensor
-- in reschedule mode, returns {zkflow_reschedule = seconds}.  `rt` is the
-- scheduler's runtime for the try (Sched:runtime): spawn, sleep, log, env.
-- A user operator brings its own `execute` (and a sensor its `poke`).
local core = require "zkflow.core"
local template = require "zkflow.template"

local now = core.now
local min, type, tostring, error, pairs, pcall = math.min, type, tostring, error, pairs, pcall

local _M = {}

local function rendered(task, ctx)
  local r = template.render_task(task, ctx)
  return setmetatable(r, { __index = task })
end

local function last_line(path)
  local f = path and io.open(path, "rb")
  if not f then return nil end
  local size = f:seek("end")
  f:seek("set", math.max(0, size - 65536))
  local data = f:read("a")
  f:close()
  local last
  for line in data:gmatch("[^\n]+") do last = line end
  return last
end

local builtin = {}

builtin.lua = function(task, ctx)
  return task.run(ctx)
end

builtin.branch = builtin.lua
builtin.short_circuit = builtin.lua

builtin.empty = function() return nil end

builtin.shell = function(task, ctx, rt)
  local t = rendered(task, ctx)
  local env = rt.env()
  for k, v in pairs(t.env or {}) do env[k] = tostring(v) end
  rt.log("running: " .. t.cmd)
  local code, sig = rt.spawn { cmd = t.cmd, env = env, cwd = t.cwd }
  if sig and sig ~= 0 then
    error("command killed by signal " .. tostring(sig), 0)
  end
  if code == (task.skip_on_exit_code or 99) then
    error(setmetatable({ zkflow_skip = true,
                         msg = "command exited with code " .. code },
                       { __tostring = function(e) return e.msg end }), 0)
  end
  if code ~= 0 then
    error("command exited with code " .. tostring(code), 0)
  end
  if task.do_xcom_push then return last_line(ctx.ti.log) end
  return nil
end

-- ---- sensors ---------------------------------------------------------------

-- Wraps a poke function into Airflow's sensor loop: poke until true, sleep
-- poke_interval between pokes (poke mode) or give the slot back
-- (reschedule mode); past `timeout` fail without retry, or skip with
-- soft_fail.  As in Airflow's BaseSensorOperator, the timeout counts from
-- this try's start in poke mode and from the first poke in reschedule mode,
-- and with soft_fail any error of the poke skips instead of failing.
local function soft(task, msg)
  if task.soft_fail then
    error({ zkflow_skip = true, msg = tostring(msg) .. " (soft_fail)" }, 0)
  end
end

local function sensor(poke)
  return function(task, ctx, rt)
    local first = task.mode == "reschedule" and rt.first_start() or now()
    local n = 0
    while true do
      local ok, done, value = pcall(poke, task, ctx, rt)
      if not ok then
        soft(task, type(done) == "table" and (done.msg or done.message) or done)
        error(done, 0)
      end
      if done then return value end
      n = n + 1
      local elapsed = now() - first
      local timeout = task.timeout or 7 * 24 * 3600
      if elapsed >= timeout then
        local msg = ("sensor timed out after %gs"):format(timeout)
        soft(task, msg)
        error({ zkflow_fail = true, msg = msg }, 0)
      end
      local interval = task.poke_interval or 60
      if task.exponential_backoff then
        interval = min(interval * 2 ^ (n - 1), task.max_wait or 3600)
      end
      interval = min(interval, math.max(0, timeout - elapsed))
      if task.mode == "reschedule" then
        rt.log(("not yet; rescheduled in %gs"):format(interval))
        return { zkflow_reschedule = interval }
      end
      rt.sleep(interval)
    end
  end
end
_M.sensor = sensor

builtin.file = sensor(function(task, ctx)
  local t = rendered(task, ctx)
  return core.stat(t.filepath) ~= nil
end)

builtin.time_delta = sensor(function(task, _, rt)
  local target = rt.run.data_interval_end + (task.delta or 0)
  return now() >= target
end)

local function set_of(list, default)
  local s = {}
  for _, v in ipairs(list or default) do s[v] = true end
  return s
end

builtin.external_task = sensor(function(task, _, rt)
  local ld = rt.run.logical_date - (task.execution_delta or 0)
  local st = rt.external_state(task.external_dag_id, task.external_task_id, ld)
  if st and set_of(task.allowed_states, { "success" })[st] then return true end
  if st and set_of(task.failed_states, {})[st] then
    error({ zkflow_fail = true, msg = ("%s.%s is %s"):format(
      task.external_dag_id, tostring(task.external_task_id or "(run)"), st) }, 0)
  end
  return false
end)

_M.builtin = builtin

-- Executors that never use their `rt` argument (the scheduler skips
-- building one for them).
_M.pure = { [builtin.lua] = true, [builtin.empty] = true }

-- The executor for `task`: its operator module's execute (or poke, wrapped
-- as a sensor), else the built-in one.
function _M.find(task)
  local op = task.op or {}
  if op.execute then return op.execute end
  if op.poke then
    op.execute = sensor(op.poke)
    return op.execute
  end
  local b = builtin[task.operator or op.name]
  if b then return b end
  return function()
    error("operator '" .. tostring(task.operator) .. "' has no execute function", 0)
  end
end

return _M
