-- zkflow.dsl.probe: does a DAG file's load come back?  Asked in a child
-- process (core.probe_spawn: a fork with a fresh Lua state and the same
-- sandbox) under a wall-clock limit, before the file is loaded in this
-- state, where its tasks' functions must live.
--
-- The instruction hook cannot stop a load that hangs inside C (a pattern
-- such as s:find(".-.-.-.-b") backtracks for ever in one call); a child
-- that hangs is killed, and the file becomes an import error naming the
-- limit.  A file that fails in the child in time is an import error with
-- the child's message; a file that loads there "comes back": the caller
-- then loads it itself, as before.
--
-- Verdicts are kept per file, keyed by its content and by the content of
-- every file its load read from the DAG folder (helper modules, user
-- operators, including ones it looked for and did not find), so an
-- unchanged file is not asked about again.
--
-- One child asks about many files in turn and reports each as it ends, so
-- the caller loads file i while the child already runs file i + 1.  A
-- caller that can wait (the scheduler, the API's scan) gives a file
-- SLOW seconds: past that, the file is left to its child in the
-- background (its verdict comes later, through on_verdict listeners) and
-- a new child takes the files after it.
local core_ok, core = pcall(require, "zkflow.core")
if not core_ok or type(core) ~= "table" then core = nil end

local type, pairs, ipairs, tostring, pcall = type, pairs, ipairs, tostring, pcall
local sfmt = string.format

require("zkflow.dsl.util").mark_internal()

local _M = {}

-- Seconds a file may hold up a caller that can wait in the background.
_M.SLOW = 0.25
-- The child's whole Lua state may hold this much beyond the load's own
-- memory limit before its allocator refuses (a safety net; the limit
-- itself is checked by the loader in the child and exactly in the engine).
local CHILD_SLACK = 256 * 1024 * 1024

local cache = {}        -- path -> { hash=, deps=, verdict= }
local background = {}   -- path -> { hash=, ... } files whose verdict is pending
local listeners = {}    -- fn -> true

local function available()
  return core ~= nil and type(core.probe_spawn) == "function"
end

--- Can this process ask a child (the C module is there)?
function _M.available()
  return available()
end

local function hash_of(path, hash)
  local f = io.open(path, "rb")
  if not f then return false end
  local s = f:read("a")
  f:close()
  return s and hash(s) or false
end

-- Did every file the load read (or looked for) stay as it was?
local function deps_same(deps, hash)
  for p, h in pairs(deps or {}) do
    if hash_of(p, hash) ~= h then return false end
  end
  return true
end

--- Calls fn(path) whenever a verdict asked in the background arrives.
--- Returns a function that removes the listener.
function _M.on_verdict(fn)
  listeners[fn] = true
  return function() listeners[fn] = nil end
end

local function tell(path)
  for fn in pairs(listeners) do
    local ok, err = pcall(fn, path)
    if not ok and core then core.log("error", "dag probe listener: " .. tostring(err)) end
  end
end

local function timeout_msg(path, limit)
  return sfmt("%s: loading took longer than %s s (the dag_load_timeout setting); "
    .. "the file is not loaded", path, tostring(limit))
end

local function died_msg(path)
  return sfmt("%s: the process that loaded it ended without an answer "
    .. "(out of memory, or a crash in a C library the file calls)", path)
end

------------------------------------------------------------------------------
-- The child
------------------------------------------------------------------------------

--- In the child: loads each file of the job with the loader's sandbox and
--- limits, and reports each as one JSON line {i=, ok=, deps=}.
function _M.child(job, write)
  local loader = require "zkflow.dsl.loader"
  -- the files' clocks start now, not at the fork: a busy machine (or
  -- valgrind) may take a while to compile the DSL's modules
  write('{"ready":true}\n')
  local ilimit, mlimit, pos = string.unpack(">i8i8", job)
  if mlimit < 0 then mlimit = false end
  local i = 0
  while pos <= #job do
    local path, root, src
    path, root, src, pos = string.unpack(">s4s4s4", job, pos)
    i = i + 1
    local deps = {}
    local pok, dags, err = pcall(loader.load_source, src, path, {
      root = root, instruction_limit = ilimit, memory_limit = mlimit,
      deps = deps, probe = false,
    })
    if not pok then dags, err = nil, dags end
    local ok = dags ~= nil
    -- names and messages need not be UTF-8, which JSON wants: then the
    -- parent learns less (no cache, or loads the file to see its error)
    local eok, line = pcall(core.json_encode, { i = i, ok = ok, err = not ok and tostring(err) or nil,
                                                deps = deps })
    if not eok then line = core.json_encode({ i = i, ok = ok, nocache = true }) end
    write(line .. "\n")
  end
end

------------------------------------------------------------------------------
-- The parent
------------------------------------------------------------------------------

local Batch = {}
Batch.__index = Batch

local function spawn(b, from)
  if from > #b.todo then return end
  local o = b.o
  -- Sources and names go as they are (length-prefixed): neither need be
  -- UTF-8.
  local parts = { string.pack(">i8i8", o.instruction_limit, o.memory_limit or -1) }
  for k = from, #b.todo do
    local f = b.todo[k]
    parts[#parts + 1] = string.pack(">s4s4s4", f.path, f.root, f.src)
  end
  local job = table.concat(parts)
  local cap = (o.memory_limit or 0) + CHILD_SLACK
  local h, err = core.probe_spawn(job, cap)
  if not h then
    -- Not able to ask (no fork): load as before rather than load nothing.
    core.log("warn", "dag load probe: " .. tostring(err) .. "; loading in process")
    for k = from, #b.todo do b.verdicts[b.todo[k].path] = true end
    return
  end
  b.child = { h = h, base = from, next = from, since = core.mono() }
end

-- Records `verdict` for the batch's file number k (an index into todo).
local function settle(b, k, verdict, deps, nocache)
  local f = b.todo[k]
  b.verdicts[f.path] = verdict
  if not nocache then
    cache[f.path] = { hash = f.hash, deps = deps or {}, verdict = verdict }
  end
end

-- The child `c` of file `f` goes on in the background until it reports
-- on that file or its time is up.
local function detach(b, c, f)
  local entry = { hash = f.hash }
  background[f.path] = entry
  core.log("warn", sfmt("%s: still loading after %s s; it goes on in the background "
    .. "(dag_load_timeout %s s)", f.path, tostring(b.o.slow or _M.SLOW), tostring(b.o.timeout)))
  local deadline = c.since + b.o.timeout
  local function finish(verdict, deps)
    if entry.done then return end
    entry.done = true
    if entry.timer then entry.timer:cancel() end
    c.h:kill()
    if background[f.path] == entry then background[f.path] = nil end
    if verdict ~= nil then
      cache[f.path] = { hash = f.hash, deps = deps or {}, verdict = verdict }
    end
    tell(f.path)
  end
  entry.abandon = function() finish(nil) end
  local want = c.next - c.base + 1
  c.h:watch(function()
    while not entry.done do
      local line, why = c.h:read(0)
      if not line then
        if why == "eof" then finish(died_msg(f.path)) end
        return
      end
      local ok, r = pcall(core.json_decode, line)
      if ok and type(r) == "table" and r.i == want then
        -- an error in time is loaded (and reported) by the next scan
        finish(true, r.deps)
      elseif not ok or type(r) ~= "table" or r.fatal then
        finish(true)    -- the child could not ask: load as before
      end
    end
  end)
  entry.timer = core.timer(math.max(0, deadline - core.mono()), function()
    entry.timer = nil
    finish(timeout_msg(f.path, b.o.timeout))
  end)
end

-- Reads the child's next report, waiting at most until the current
-- file's time (or, when `bg`, its SLOW share) is up.
local function step(b, bg)
  local c = b.child
  local k = c.next
  local f = b.todo[k]
  local now = core.mono()
  local limit = c.since + b.o.timeout
  if bg then limit = math.min(limit, c.since + (b.o.slow or _M.SLOW)) end
  local line, why = c.h:read(math.max(0, limit - now), not bg)
  if line then
    local ok, r = pcall(core.json_decode, line)
    if not ok or type(r) ~= "table" or r.fatal then
      core.log("warn", "dag load probe: the child failed: "
        .. tostring(ok and type(r) == "table" and r.fatal or line) .. "; loading in process")
      c.h:kill()
      b.child = nil
      for j = k, #b.todo do b.verdicts[b.todo[j].path] = true end
      return
    end
    if r.ready then
      c.since = core.mono()
      return
    end
    local idx = c.base + (tonumber(r.i) or 0) - 1
    if idx == k then
      -- A file that failed in time is an import error with the child's
      -- message, not cached: what it failed on may be outside the folder.
      if not r.ok and type(r.err) == "string" then
        settle(b, k, r.err, nil, true)
      else
        settle(b, k, true, r.deps, r.nocache)
      end
      c.next = k + 1
      c.since = core.mono()
      if c.next > #b.todo then
        c.h:kill()
        b.child = nil
      end
    end
    return
  end
  if why == "eof" then
    c.h:kill()
    b.child = nil
    settle(b, k, died_msg(f.path))
    spawn(b, k + 1)
    return
  end
  if why == "interrupted" then
    -- a signal (Ctrl-C) while a command waits: the command ends here
    c.h:kill()
    b.child = nil
    error(sfmt("%s: loading was interrupted by a signal", f.path), 0)
  end
  -- "timeout"
  if core.mono() - c.since >= b.o.timeout then
    c.h:kill()
    b.child = nil
    settle(b, k, timeout_msg(f.path, b.o.timeout))
    spawn(b, k + 1)
  elseif bg then
    b.child = nil
    b.pending[f.path] = true
    detach(b, c, f)
    spawn(b, k + 1)
  end
end

--- The verdict on `path`: true (it comes back: load it), a message (its
--- import error: it did not come back in time, or it failed in the child
--- with that message), or nil when it was left to finish
--- in the background (only when the batch was started with background).
function Batch:await(path)
  while true do
    local v = self.verdicts[path]
    if v ~= nil then return v end
    if self.pending[path] or not self.child then return nil end
    step(self, self.o.background)
  end
end

--- Ends the batch: a child still running is killed.
function Batch:close()
  if self.child then
    self.child.h:kill()
    self.child = nil
  end
end

--- Starts asking about `files` ({ {path=, src=, hash=, root=}, ... }).
--- o: timeout (seconds), instruction_limit, memory_limit, background
--- (the caller copes with files left pending), slow (seconds a file may
--- hold up such a caller, default SLOW), hash (the loader's).
--- Files with a verdict in the cache are answered from it; files already
--- asked in the background are pending.  Returns a batch (Batch:await).
function _M.start(files, o)
  local b = setmetatable({ o = o, verdicts = {}, pending = {}, todo = {} }, Batch)
  for _, f in ipairs(files) do
    local c = cache[f.path]
    local bgf = background[f.path]
    if not available() or not o.timeout or o.timeout <= 0 then
      b.verdicts[f.path] = true
    elseif c and c.hash == f.hash and deps_same(c.deps, o.hash) then
      b.verdicts[f.path] = c.verdict
    elseif bgf and bgf.hash == f.hash and o.background then
      b.pending[f.path] = true
    else
      b.todo[#b.todo + 1] = f
    end
  end
  if #b.todo > 0 then spawn(b, 1) end
  return b
end

--- Forgets every verdict and stops asking in the background (the limits
--- changed): listeners hear of each file that was pending, to ask again.
function _M.reset()
  cache = {}
  local pending = {}
  for _, entry in pairs(background) do pending[#pending + 1] = entry end
  for _, entry in ipairs(pending) do entry.abandon() end
end

return _M
