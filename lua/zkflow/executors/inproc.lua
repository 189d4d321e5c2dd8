-- zkflow.executors.inproc: the in-process executor, the default
-- `executor` of zkflow.scheduler (scheduler/init.lua has the interface).
-- A try runs here: a Lua task as a coroutine, a shell task as a child
-- process group (the operator's runtime spawns it); execution_timeout is
-- a timer, plus a count hook for Lua code that never yields.
local core = require "zkflow.core"
local async = require "zkflow.async"
local operator = require "zkflow.operator"

local _M = {}

local Inproc = {}
Inproc.__index = Inproc

-- The default executor (zkflow.scheduler's header has the interface).
function _M.new()
  return setmetatable({}, Inproc)
end

function Inproc:bind(s)
  self.s = s
end

-- The dead scheduler's tries run again here.
function Inproc.adopt()
  return false
end

-- Stops a try in flight: its process group gets SIGTERM then SIGKILL, a
-- Lua task's coroutine is closed.
function Inproc.abort(_, ti)
  local a = ti.attempt
  if a.proc then a.proc:kill(15); a.proc:kill(9) end
  if a.co then async.cancel(a.co) end
end

function Inproc:start(ti)
  local s = self.s
  local task = ti.task
  ti.try_number = ti.try_number + 1
  ti.state = "running"
  ti.start_date = s.now()
  ti.end_date = nil
  ti.first_start = ti.first_start or ti.start_date
  ti.log = s:log_path(ti)
  ti.log_ready = false
  ti.worker = s.worker_id
  ti.error = nil
  s:mark(ti)
  local attempt = {}
  ti.attempt = attempt
  if s.on_event then s:emit("ti_started", ti) end

  local exe = task.exe
  if not exe then
    exe = operator.executor(task)
    task.exe = exe
  end
  local ctx = s:context(ti)
  -- Operators that say runtime = false (lua, empty) never look at it.
  local rt = operator.needs_runtime(exe) and s:runtime(ti, attempt) or nil
  local smono = s.mono
  local deadline = task.execution_timeout and (smono() + task.execution_timeout)
  attempt.deadline = deadline

  if task.on_execute then s:callback(ti, task.on_execute) end
  local function on_done(ok, res, extra)
    if ti.attempt ~= attempt then return end    -- this try already ended
    if attempt.expired then
      -- Whatever the task made of the error, the try timed out.
      ok, res = false, { zkflow_timeout = true,
                         msg = "execution timeout after " .. task.execution_timeout .. "s" }
    end
    s:try_ended(ti, ok, res, extra)
  end
  local co
  if not deadline then
    co = async.spawn_try(exe, on_done, task, ctx, rt)
  else
    co = async.spawn(function()
      -- A task that loops without yielding never lets the timer fire: the
      -- count hook stops it.  Past the deadline the hook fires on every
      -- instruction (as the loader's budget does), so a task that catches
      -- the error with pcall cannot keep going; async.spawn removes it when
      -- the function has ended.
      local function hook()
        if attempt.expired or smono() > deadline then
          if not attempt.expired then
            attempt.expired = true
            debug.sethook(hook, "", 1)
          end
          error({ zkflow_timeout = true, msg = "execution timeout after " ..
                  task.execution_timeout .. "s" })
        end
      end
      debug.sethook(hook, "", 1000)
      return exe(task, ctx, rt)
    end, on_done)
  end
  attempt.co = co
  if ti.attempt == attempt and ti.state == "running" and deadline then
    attempt.timer = core.timer(task.execution_timeout, function()
      attempt.timer = nil
      if ti.attempt ~= attempt then return end
      self:timeout(ti, attempt)
    end)
  end
end

function Inproc:timeout(ti, attempt)
  local s = self.s
  local msg = "execution timeout after " .. ti.task.execution_timeout .. "s"
  s:task_log(ti, msg)
  if attempt.proc then
    attempt.timed_out = true
    attempt.proc:kill(15)
    local p = attempt.proc
    attempt.kill_timer = core.timer(s.kill_grace, function() p:kill(9) end)
    return
  end
  if attempt.co then async.cancel(attempt.co) end
  s:try_ended(ti, false, { zkflow_timeout = true, msg = msg })
end

return _M
