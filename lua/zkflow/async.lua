-- zkflow.async: coroutines on the loop.
--
-- Every Lua task, every `zkflow lua` script and every `flow.run` body is a
-- coroutine started here.  A call that waits (sleep, a child process, a
-- ZooKeeper reply) registers a callback with the C core and yields; the loop
-- resumes the coroutine when the callback fires.  Nothing here blocks.
local core = require "zkflow.core"

local coroutine, debug, error, select, setmetatable, table, type =
      coroutine, debug, error, select, setmetatable, table, type
local pack, unpack = table.pack, table.unpack
local sethook = debug.sethook

local _M = {}

-- co -> { cancel = fn or nil } for coroutines parked in wait()
local parked = setmetatable({}, { __mode = "k" })
-- co -> true for coroutines started by spawn()
local ours = setmetatable({}, { __mode = "k" })

local function report(err)
  core.log("error", "coroutine failed: " .. tostring(err))
end

local function step(co, ...)
  -- A late callback after cancel() finds its coroutine closed: nothing to do.
  if coroutine.status(co) == "dead" then return end
  local ok, err = coroutine.resume(co, ...)
  if not ok then
    -- fn runs under xpcall, so this is an error in on_done: say so rather
    -- than lose it.
    report(debug.traceback(co, tostring(err)))
  end
end

-- Starts fn(...) as a coroutine now; it runs until its first wait.
-- on_done(ok, ...) receives fn's results, or false and the error (with
-- a traceback for ordinary errors; error objects that are tables are passed
-- through unchanged, so flow.skip()/flow.fail() survive).
-- The message handler of every spawned function.  A count hook (a task's
-- execution_timeout) belongs to the function: it must not fire here or in
-- on_done, which run on the same coroutine after the function has ended.
local function handler(e)
  sethook()
  if type(e) == "table" then return e end
  return debug.traceback(tostring(e), 2)
end

local function finish(co, on_done, ok, ...)
  sethook()
  parked[co] = nil
  if on_done then
    on_done(ok, ...)
  elseif not ok then
    report((...))
  end
end

function _M.spawn(fn, on_done, ...)
  local co
  local n = select("#", ...)
  -- Up to three arguments ride in upvalues (the scheduler passes task,
  -- ctx, rt); more are packed.
  if n == 0 then
    co = coroutine.create(function()
      return finish(co, on_done, xpcall(fn, handler))
    end)
  elseif n == 1 then
    local a = ...
    co = coroutine.create(function()
      return finish(co, on_done, xpcall(fn, handler, a))
    end)
  elseif n == 3 then
    local a, b, c = ...
    co = coroutine.create(function()
      return finish(co, on_done, xpcall(fn, handler, a, b, c))
    end)
  else
    local args = pack(...)
    co = coroutine.create(function()
      return finish(co, on_done, xpcall(fn, handler, unpack(args, 1, args.n)))
    end)
  end
  ours[co] = true
  step(co)
  return co
end

-- Coroutines that ran a try and wait for the next one.  Creating a
-- coroutine (and collecting it) costs more than a no-op task itself; the
-- scheduler starts thousands per second.
local idle, nidle = {}, 0
local IDLE_MAX = 256
local IDLE = {}   -- what a pooled coroutine yields when it goes idle

local function pooled(fn, on_done, a, b, c)
  local co = coroutine.running()
  while true do
    finish(co, on_done, xpcall(fn, handler, a, b, c))
    if nidle >= IDLE_MAX then return end
    nidle = nidle + 1
    idle[nidle] = co
    fn, on_done, a, b, c = coroutine.yield(IDLE)
  end
end

-- spawn() for a scheduler try: fn(a, b, c) on a pooled coroutine.  The
-- returned coroutine is the try's only until on_done has been called (it
-- may run another try afterwards): cancel it only before that.
function _M.spawn_try(fn, on_done, a, b, c)
  local co
  if nidle > 0 then
    co = idle[nidle]
    idle[nidle] = nil
    nidle = nidle - 1
  else
    co = coroutine.create(pooled)
    ours[co] = true
  end
  step(co, fn, on_done, a, b, c)
  return co
end

-- Inside a coroutine: register(resume) arranges for resume(...) to be
-- called once, later or even at once; wait() returns resume's arguments.
-- register may return a cancel function, used by cancel().
function _M.wait(register)
  local co, main = coroutine.running()
  if main then
    error("zkflow: this call waits, so it must run inside a coroutine " ..
          "(a task, `zkflow lua`, flow.run or flow.spawn)", 3)
  end
  local done, results, yielded = false, nil, false
  local function resume(...)
    if done then return end
    done = true
    results = pack(...)
    parked[co] = nil
    if yielded then step(co) end
  end
  local cancel = register(resume)
  if done then return unpack(results, 1, results.n) end
  parked[co] = { cancel = cancel }
  yielded = true
  -- A hook-driven timeout may resume us with an error; loop until ours.
  while not done do coroutine.yield() end
  return unpack(results, 1, results.n)
end

function _M.sleep(seconds)
  if type(seconds) ~= "number" or seconds < 0 then
    error("sleep: seconds must be a number >= 0", 2)
  end
  return _M.wait(function(resume)
    local t = core.timer(seconds, resume)
    return function() t:cancel() end
  end)
end

-- Runs a child process and waits for it: returns code, signal, output.
function _M.exec(spec, on_start)
  return _M.wait(function(resume)
    local p = core.spawn(spec, resume)
    if on_start then on_start(p) end
    return function() p:kill(9) end
  end)
end

-- Stops a coroutine parked in wait(): cancels what it waits for and closes
-- it (its to-be-closed variables run).  Returns true if it was parked.
function _M.cancel(co)
  local p = parked[co]
  parked[co] = nil
  if p and p.cancel then p.cancel() end
  if coroutine.status(co) == "suspended" then
    coroutine.close(co)
    return true
  end
  return false
end

-- Plain Lua (and `zkflow lua`): runs fn as a coroutine and drives the loop
-- until it returns; returns fn's results or raises its error.
function _M.run(fn, ...)
  local res, looping
  _M.spawn(fn, function(...)
    res = pack(...)
    -- Open handles (a ZooKeeper session, a store watch) keep the loop
    -- alive; the caller asked only for fn.
    if looping then core.stop() end
  end, ...)
  if not res then
    if not core.in_engine() then
      looping = true
      core.run()
      looping = false
    else
      error("flow.run: inside the engine use flow.spawn", 2)
    end
  end
  if not res then error("flow.run: the loop stopped before the function returned", 2) end
  if not res[1] then error(res[2], 0) end
  return select(2, unpack(res, 1, res.n))
end

return _M
