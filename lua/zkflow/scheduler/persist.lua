-- zkflow.scheduler.persist: the write-behind.  Each task instance or run
-- whose state changed during a loop turn is marked dirty and written once
-- at the end of that turn, in one store transaction (flush), or pipelined
-- from a coroutine on a store whose calls complete later (flush_async);
-- raw store ops of others (store_op) follow the records in the same
-- transaction.  Sched methods (init.lua says how the files make the class).
local core = require "zkflow.core"
local async = require "zkflow.async"
local records = require "zkflow.records"
local class = require "zkflow.scheduler.class"
local pairs, ipairs, tostring = pairs, ipairs, tostring
local log, no_mark = class.log, class.no_mark
local Sched = class.Sched

local _M = {}

function Sched:run_path(run)
  local p = run.path
  if not p then
    p = self.st:path("runs", run.dag_id, run.run_id)
    run.path = p
  end
  return p
end

-- ---- persistence (write-behind, one write per object per turn) ----------------

function Sched:mark(obj)
  if not obj.dirty then
    obj.dirty = true
    local d = self.dirty
    d[#d + 1] = obj
  end
end

local PARENTS = { parents = true }

-- One write of the write-behind: `op` is {op="create"|"set"|"delete",
-- path=, data=, obj=, flags=}.  A create whose parent is missing makes the
-- parents; a create of a node that exists becomes a set; a set of a node
-- that is gone becomes a create.  Returns the created path or true, or nil
-- and the error.
local function apply_op(store, op)
  local kind, path, data = op.op, op.path, op.data
  if kind == "delete" then
    local ok, err = store:delete(path)
    if not ok and err ~= "ZNONODE" then return nil, err end
    return true
  end
  if kind == "set" then
    local ok, err = store:set(path, data)
    if ok or err ~= "ZNONODE" then return ok, err end
  end
  local flags = op.flags
  local ok, err = store:create(path, data, flags)
  if not ok and err == "ZNONODE" then
    local f = { parents = true }
    if flags then for k, v in pairs(flags) do f[k] = v end end
    ok, err = store:create(path, data, f)
  end
  if not ok and err == "ZNODEEXISTS" and not (flags and flags.sequential) then
    ok, err = store:set(path, data)
  end
  return ok, err
end

-- A dirty object's node and record: path, data.
function Sched:encoded(obj)
  obj.dirty = false
  self:count(obj)
  if obj.task then
    local data, err = records.encode_ti(obj)
    if err then log("error", obj.path .. ": " .. err) end
    return obj.path, data
  end
  return self:run_path(obj), records.encode_run(obj)
end

-- The write of one dirty object: {op=, path=, data=, obj=}.
function Sched:write_op(obj)
  local path, data = self:encoded(obj)
  return { op = obj.persisted and "set" or "create", path = path, data = data, obj = obj }
end

-- After a write: what it created is there now; `ok` false logs it.
function Sched:wrote(op, res, err) -- luacheck: ignore 212/self
  local obj = op.obj
  if res then
    if obj then obj.persisted = true end
    if op.on_done then op.on_done(res) end
  else
    if obj and err == "ZNONODE" then obj.persisted = false end
    log("error", ("store: %s %s: %s"):format(op.op, op.path, tostring(err)))
    if op.on_done then op.on_done(nil, err) end
  end
end

-- ---- commits that fail (the embedded store on a full disk) -----------------------

-- The embedded store commits at the end of the turn, after these writes
-- completed; a commit that fails rolls every write of its turn back.  What
-- this scheduler wrote since the last good commit is kept (unconfirmed),
-- and written again when a commit fails: at once with the next flush, and
-- by a timer that backs off from 0.5 to 10 s while the store stays unable
-- to commit.  So when space returns the store catches up with memory
-- without a restart.  (A remote store reports each write's own outcome.)
function Sched:watch_commits()
  self.commits_watched = true
  local store = self.store
  if self.async_store or type(store) ~= "userdata" or not store.on_commit then return end
  if store:on_commit(function(ok, err) self:committed(ok, err) end) then
    self.unconfirmed = {}
  end
end

function Sched:committed(ok, err)
  local u = self.unconfirmed
  if ok then
    if #u > 0 then self.unconfirmed = {} end
    self.commit_backoff = nil
    local w = self.commit_waiters
    if w then
      -- Resumed from the loop, not from inside the store's commit.
      self.commit_waiters = nil
      core.timer(0, function()
        for _, resume in pairs(w) do resume() end
      end)
    end
    return
  end
  if #u == 0 then return end
  self.unconfirmed = {}
  local extra = self.extra_ops
  for i = 1, #u do
    local x = u[i]
    if x.op then
      extra[#extra + 1] = x
    else
      -- Its node may be gone with the rollback: create (an existing node
      -- makes that a set).
      x.persisted = false
      self:mark(x)
    end
  end
  local delay = self.commit_backoff or 0.5
  self.commit_backoff = delay * 2 > 10 and 10 or delay * 2
  log("error", ("store: %d writes of the scheduler were rolled back (%s): written again in %gs")
      :format(#u, tostring(err), delay))
  if self.commit_timer then self.commit_timer:cancel() end
  self.commit_timer = core.timer(delay, function()
    self.commit_timer = nil
    if not self.stopped then self:flush() end
  end)
end

function Sched:flush(sync)
  local d = self.dirty
  local extra = self.extra_ops
  if #d == 0 and #extra == 0 then return end
  if self.async_store and not sync then return self:flush_async() end
  if not self.commits_watched then self:watch_commits() end
  self.dirty = {}
  if #extra > 0 then self.extra_ops = {} end
  local store = self.store
  local u = self.unconfirmed
  if u then
    local n = #u
    for i = 1, #d do u[n + i] = d[i] end
    n = #u
    for i = 1, #extra do u[n + i] = extra[i] end
  end
  -- apply_op's fallbacks inline: this loop runs once per changed object
  -- per turn, and an op table (and options tables) per object cost more
  -- than the write into the embedded store.
  for i = 1, #d do
    local obj = d[i]
    local path, data = self:encoded(obj)
    if obj.persisted then
      local ok, err = store:set(path, data)
      if not ok and err == "ZNONODE" then obj.persisted = false end
      if not ok and err ~= "ZNONODE" then log("error", "store: set " .. path .. ": " .. tostring(err)) end
    end
    if not obj.persisted then
      -- The parent (the run, written before its instances) is normally
      -- there: options cost a table walk per call, so only on ZNONODE.
      local ok, err = store:create(path, data)
      if not ok and err == "ZNONODE" then
        ok, err = store:create(path, data, PARENTS)
      end
      if not ok and err == "ZNODEEXISTS" then
        ok, err = store:set(path, data)
      end
      if ok then
        obj.persisted = true
      else
        log("error", "store: create " .. path .. ": " .. tostring(err))
      end
    end
  end
  for i = 1, #extra do
    local op = extra[i]
    self:wrote(op, apply_op(store, op))
  end
end

-- ZooKeeper's limit on one request is 1 MB: a transaction stays well under.
local MULTI_BYTES, MULTI_OPS = 512 * 1024, 500

-- The write-behind over a remote store: this turn's writes go out as
-- transactions (multi) from a coroutine, in order; while one flush is in
-- flight the next waits, so an older write of an object can never land
-- after a newer one.  A transaction that fails (a node that is not where
-- the scheduler thought) is done again op by op.
function Sched:flush_async()
  if self.flushing then
    self.flush_again = true
    return
  end
  local d, extra = self.dirty, self.extra_ops
  self.dirty, self.extra_ops = {}, {}
  local ops = {}
  for i = 1, #d do ops[#ops + 1] = self:write_op(d[i]) end
  for i = 1, #extra do ops[#ops + 1] = extra[i] end
  self.flushing = true
  local store = self.store
  async.spawn(function()
    local i, n = 1, #ops
    while i <= n do
      local chunk, bytes = {}, 0
      while i <= n and #chunk < MULTI_OPS and (bytes < MULTI_BYTES or #chunk == 0) do
        local op = ops[i]
        chunk[#chunk + 1] = { op = op.op, path = op.path, data = op.data,
                              ephemeral = op.flags and op.flags.ephemeral or nil,
                              sequential = op.flags and op.flags.sequential or nil }
        bytes = bytes + #(op.data or "") + #op.path
        i = i + 1
      end
      local first = i - #chunk
      local fence = self.fence
      if fence then
        -- Written only while this scheduler's election node stands: a
        -- leader that lost its place cannot overwrite the new leader's.
        table.insert(chunk, 1, { op = "check", path = fence, version = 0 })
      end
      local res = store:multi(chunk)
      local base = fence and 1 or 0
      if not res and fence and not store:exists(fence) then
        log("error", "store: this scheduler's election node " .. fence
            .. " is gone: it no longer leads, its writes are dropped")
        if self.on_fence_lost then self.on_fence_lost() end
        return
      end
      if res then
        for k = 1, #chunk - base do self:wrote(ops[first + k - 1], res[k + base]) end
      else
        for k = 1, #chunk - base do
          local op = ops[first + k - 1]
          self:wrote(op, apply_op(store, op))
        end
      end
    end
  end, function(ok, err)
    self.flushing = false
    if not ok then log("error", "store: flush: " .. tostring(err)) end
    if self.flush_again or #self.dirty > 0 or #self.extra_ops > 0 then
      self.flush_again = false
      if not self.stopped then self:flush() end
    end
    local w = self.flush_waiters
    if w and not self.flushing then
      self.flush_waiters = nil
      for _, fn in ipairs(w) do fn() end
    end
  end)
end

-- Inside a try's coroutine: returns once everything marked so far, the
-- try's start among it, is committed, so a process never runs for a try
-- the store does not know (after a kill -9 the try is found running, and
-- runs again under the next try number).  On a store that cannot commit
-- it waits until the store can.
function Sched:commit_wait()
  if self.async_store then return self:flush_wait() end
  self:flush()
  local u = self.unconfirmed
  if not u or #u == 0 then return end
  -- Committed now, not at the turn's end: a loop with nothing else to do
  -- (plain Lua, flow.test) would stop before that end.
  if self.store:flush() then return end
  -- The retry timer writes again until a commit succeeds.
  async.wait(function(resume)
    local w = self.commit_waiters or {}
    self.commit_waiters = w
    w[resume] = resume
    return function() w[resume] = nil end
  end)
end

-- Inside a coroutine: returns when everything marked so far is written.
function Sched:flush_wait()
  self:flush()
  if not self.flushing then return end
  async.wait(function(resume)
    self.flush_waiters = self.flush_waiters or {}
    local w = self.flush_waiters
    w[#w + 1] = resume
  end)
end

-- Runs fn(...) where store calls may wait: in a coroutine when the store
-- is remote, at once otherwise (the embedded store answers in the call).
function Sched:task(fn, ...)
  if not self.async_store then return fn(...) end
  async.spawn(fn, function(ok, err)
    if not ok then log("error", "scheduler: " .. tostring(err)) end
  end, ...)
end


-- `op` (a raw store op: {op=, path=, data=, flags=, on_done=}) is written
-- after this turn's records, in the same transaction on a remote store.
-- `soon`: flush on the next turn even if nothing else changes.
function Sched:store_op(op, soon)
  if self.mark == no_mark then return end
  if op then
    local extra = self.extra_ops
    extra[#extra + 1] = op
  end
  if soon then self:mark_extra() end
end

-- Something for the store with no dirty object: flush on the next turn.
function Sched:mark_extra()
  if not self.extra_timer then
    self.extra_timer = core.timer(0, function()
      self.extra_timer = nil
      self:flush()
    end)
  end
end

-- Drops the writes not made yet and makes no more: a leader that lost its
-- place steps down this way (another may lead already), then stops.
function Sched:reset_pending()
  self.dirty, self.extra_ops = {}, {}
  self.mark = no_mark
end

return _M
