-- zkflow.cluster.leader: the scheduler side of the cluster (cluster.scheduler).
--
-- Owns the contention for leadership (the election at
-- <root>/election/scheduler), the scheduler member record, and, while
-- leading, the scheduler whose executor is the queue: it publishes the DAG
-- versions, reconciles the queue, claims and results after a takeover,
-- watches results and claims, settles each try's end into its record and
-- sweeps for tries whose claim vanished.  Standing down on a session expiry
-- and contending again are here too.  The protocol is described in
-- zkflow.cluster (init.lua).
local core = require "zkflow.core"
local async = require "zkflow.async"
local sched = require "zkflow.scheduler"
local queue_executor = require "zkflow.executors.queue"
local state = require "zkflow.state"
local zk = require "zkflow.zk"
local pushed = require "zkflow.pushed"

local json_encode, null = core.json_encode, core.null
local now = core.now
local pairs, ipairs, type, tostring, pcall = pairs, ipairs, type, tostring, pcall
local common = require "zkflow.cluster.common"
local log, hostname, decode, spawn = common.log, common.hostname, common.decode, common.spawn
local set_of, get_all, put_member, ensure = common.set_of, common.get_all, common.put_member, common.ensure

local _M = {}

local SWEEP_INTERVAL = 2        -- seconds between the leader's checks for lost tries
local RELIST_DELAY = 0.002      -- the leader lets claims and results gather this long

local CS = {}
CS.__index = CS

-- cluster.scheduler(opts) inside a coroutine: registers the member, starts
-- contending and returns the handle (handle:stop()).  opts: store (a
-- ZooKeeper store; a remote one gets pipelined writes), root, dags_dir,
-- log_dir, id, on_event, hot_reload, sweep_interval, on_lead(s) (called
-- with the scheduler each time this member starts to lead, before its
-- first scheduling pass), history (zkflow.history: where finished runs
-- move; scheduler.new's option).
function _M.scheduler(opts)
  assert(opts and opts.store, "cluster.scheduler: 'store' is required")
  -- Every request but the election's rides out a lost connection
  -- (common.steady); the election's node is made by the recipe, which
  -- finds a create whose answer was lost by its name instead.
  local steady = common.steady(opts.store)
  local self = setmetatable({
    opts = opts, store = steady, raw_store = opts.store, root = opts.root or "/zkflow",
    id = opts.id or ("scheduler-" .. hostname() .. "-" .. core.getpid()),
    leader = false, stopped = false, gen = 0,
    sweep_interval = opts.sweep_interval or SWEEP_INTERVAL,
  }, CS)
  self.st = state.new(self.store, self.root)
  self.member_path = self.st:path("members", "schedulers", self.id)
  self.election_path = self.st:path("election", "scheduler")
  self.zk = zk.wrap(opts.store, { borrowed = true })
  self.started = state.iso(now(), true)
  self:update_member(true)
  self:contend()
  return self
end

function CS:member_record()
  return json_encode({ id = self.id, host = hostname(), pid = core.getpid(),
                       version = core.version, started = self.started,
                       leader = self.leader, role = "scheduler",
                       dags = self.s and self.s:dag_count() or null })
end

function CS:update_member(create)
  local ok, err = put_member(self.store, self.member_path, self:member_record(), create)
  if not ok then log("warn", "members: " .. self.member_path .. ": " .. tostring(err)) end
end

-- Removes this member's own election nodes: one left by a leadership it
-- stepped down from while its session lived (the recipe's release is
-- not enough when the connection is down), or one whose create answer
-- was lost.  A new node queued behind one of ours would wait for it
-- forever.  Inside a coroutine.
function CS:drop_own_nodes()
  local dir = self.election_path
  local kids = self.store:children(dir) or {}
  local paths = {}
  for _, name in ipairs(kids) do paths[#paths + 1] = dir .. "/" .. name end
  local got = get_all(self.store, paths)
  for _, p in ipairs(paths) do
    if got[p] == self.id then
      local ok, err = self.store:delete(p)
      if ok then
        log("info", "scheduler " .. self.id .. ": removed its old election node " .. p)
      elseif err ~= "ZNONODE" then
        log("warn", "scheduler " .. self.id .. ": its old election node " .. p .. ": " .. tostring(err))
      end
    end
  end
end

-- Waits for leadership in a coroutine of its own, then leads.
function CS:contend()
  local gen = self.gen
  spawn("scheduler election", function()
    while not self.stopped and gen == self.gen do
      self:drop_own_nodes()
      if self.stopped or gen ~= self.gen then return end
      local lock = self.zk:Lock(self.election_path, { id = self.id })
      self.lock = lock
      local ok, got, err = pcall(lock.acquire, lock)
      if self.stopped or gen ~= self.gen then
        if ok and got then pcall(lock.release, lock) end
        return
      end
      if ok and got then
        self:lead()
        return
      end
      log("warn", "scheduler election: " .. tostring(ok and err or got) .. "; trying again")
      async.sleep(1)
    end
  end)
end

-- Runs the scheduler as the leader: resumes every run from the store,
-- accounts for the tries that workers hold, then watches the claims and the
-- results.
function CS:lead()
  self.leader = true
  local gen = self.gen
  log("info", "scheduler " .. self.id .. " is the leader")
  local o = self.opts
  -- The election node fences the leader's writes (Sched:flush_async) and
  -- its deletion ends the leadership at once.
  local fence = self.lock and self.lock.node and (self.election_path .. "/" .. self.lock.node)
  local function lost()
    if gen ~= self.gen or self.stopped then return end
    self:step_down("its election node " .. fence .. " is gone")
    self:contend()
  end
  local q = queue_executor.new { store = self.store, root = self.root }
  local s = sched.new {
    store = self.store, root = self.root, dags_dir = o.dags_dir, log_dir = o.log_dir,
    on_event = o.on_event, hot_reload = o.hot_reload, id = self.id,
    executor = q, async_store = o.async_store ~= false, register = false,
    history = o.history,
    fence = fence, on_fence_lost = fence and lost or nil,
    -- Every version the leader loads is published
    -- (/dags/<id>/versions/<hash>) for the workers: a run keeps its
    -- version even where their files change.
    on_reload = function() if gen == self.gen then self:publish_versions() end end,
  }
  self.s, self.q = s, q
  if self.opts.on_lead then self.opts.on_lead(s) end
  if fence then
    local function watch(ev)
      if gen ~= self.gen then return end
      if ev and ev.type == "deleted" then return lost() end
      spawn("election watch", function()
        if gen ~= self.gen then return end
        local stat, err = self.store:exists(fence, watch)
        if not stat and not err then lost() end
      end)
    end
    local stat, err = self.store:exists(fence, watch)
    if not stat then
      if err then log("warn", "scheduler " .. self.id .. ": " .. fence .. ": " .. tostring(err)) end
      lost()
      return
    end
  end
  ensure(self.store, self.st:path("claims"))
  ensure(self.store, self.st:path("results"))
  ensure(self.store, self.st:path("queue"))
  s:start()
  if gen ~= self.gen then return end
  self:publish_versions()
  self:update_member()
  self.handled = {}
  self:reconcile()
  self:watch_results()
  self:watch_claims()
  self:arm_sweep()
  s:process()
end

function CS:publish_versions()
  local s = self.s
  -- Keyed by the DAG object: a file that goes back to an older source is a
  -- new object, published again (its version node may have been pruned).
  self.published = self.published or setmetatable({}, { __mode = "k" })
  for id, dag in pairs(s and s:loaded_dags() or {}) do
    local hash, file = dag.source_hash, dag.file
    local k = dag
    if hash and not self.published[k] and type(file) == "string" and file:sub(1, 3) ~= "zk:" then
      local f = io.open(file, "rb")
      local src = f and f:read("a")
      if f then f:close() end
      -- A file that changed since it was loaded is published at its reload.
      if src and require("zkflow.dsl.loader").hash(src) == hash then
        local ok, err = pushed.publish(self.store, self.root, id, hash, src)
        if ok then
          self.published[k] = true
        else
          log("warn", "dag " .. id .. " version " .. hash .. ": " .. tostring(err))
        end
      end
    elseif hash and file and file:sub(1, 3) == "zk:" then
      self.published[k] = true      -- dags push published it
    end
  end
end

-- Stops leading without writing anything more: another scheduler may
-- already lead.
function CS:step_down(why)
  self.gen = self.gen + 1
  if self.sweep_timer then self.sweep_timer:cancel(); self.sweep_timer = nil end
  local s = self.s
  self.s, self.q = nil, nil
  if self.lock then pcall(self.lock.cancel, self.lock) end
  if not self.leader then return end
  self.leader = false
  log("warn", "scheduler " .. self.id .. " stops leading: " .. why)
  if s then
    s:reset_pending()
    s:stop()
  end
  if not self.expired then
    spawn("scheduler member", function() self:update_member() end)
  end
end

-- The store's session changed (the zk backend reports this).  A lost
-- connection is a pause (SUSPENDED, in Curator's words): every request
-- waits for it and the election node fences every write, so the leader
-- keeps its state; once it is back (RECONNECTED) the claims, the results
-- and the queue are looked at again, for whatever a watch may have missed.
-- An expiry (LOST) ends the leadership.
function CS:session(st)
  local was = self.store.state
  self.store:session(st)
  pcall(self.zk.notify_session, self.zk, st)
  if st == "expired" then
    self.expired = true
    self:step_down("the ZooKeeper session expired")
  elseif st == "connected" and self.expired and not self.stopped then
    self.expired = false
    spawn("scheduler re-registration", function()
      self:update_member(true)
      self:contend()
    end)
  elseif st == "connected" and was == "suspended" and self.leader and self.s then
    local gen = self.gen
    log("info", "scheduler " .. self.id .. ": the ZooKeeper connection is back; it leads on")
    spawn("scheduler reconnected", function()
      if gen ~= self.gen then return end
      self:watch_results(true)
      if gen ~= self.gen then return end
      self:watch_claims(true)
      if gen ~= self.gen then return end
      self:sweep()
    end)
  end
end

-- The connection's state, as Curator names it (common.steady).
function CS:connection()
  return self.store.state
end

function CS:stop()
  if self.stopped then return end
  self.stopped = true
  self.store:stop()
  self.gen = self.gen + 1
  if self.sweep_timer then self.sweep_timer:cancel(); self.sweep_timer = nil end
  local s = self.s
  self.s, self.q = nil, nil
  if s then s:stop() end
  if self.lock then
    pcall(self.lock.cancel, self.lock)
    if self.leader then pcall(self.lock.release, self.lock) end
  end
  self.leader = false
  self.store:delete(self.member_path)
end

-- The queue nodes: {[key] = path}.
function CS:queued_keys()
  local out, paths = {}, {}
  local qroot = self.st:path("queue")
  for _, q in ipairs(self.store:children(qroot) or {}) do
    local dir = qroot .. "/" .. q
    for _, name in ipairs(self.store:children(dir) or {}) do
      paths[#paths + 1] = dir .. "/" .. name
    end
  end
  local got = get_all(self.store, paths)
  for _, p in ipairs(paths) do
    local rec = decode(got[p])
    if rec and rec.key then out[rec.key] = p end
  end
  return out
end

-- After taking over: every try the last leader left queued or running is
-- found in the queue, the claims or the results (read in that order, the
-- order a try moves in, so a try that moves meanwhile is still seen), or
-- it is lost and runs again.
function CS:reconcile()
  local q, gen = self.q, self.gen
  local pending = q:adopted()
  local queued = self:queued_keys()
  local claims = set_of(self.store:children(self.st:path("claims")))
  local results = set_of(self.store:children(self.st:path("results")))
  -- The store's requests wait out a lost connection (common.steady): one
  -- that still failed ended with this leadership.
  if gen ~= self.gen then return end
  -- What the pending tries' claims and results say, read together.
  local paths = {}
  for _, e in ipairs(pending) do
    local key = e.key
    if results[key] then
      paths[#paths + 1] = self.st:path("results", key)
    elseif claims[key] then
      paths[#paths + 1] = self.st:path("claims", key)
    end
  end
  local got = get_all(self.store, paths)
  if gen ~= self.gen then return end
  for _, e in ipairs(pending) do
    local key = e.key
    if results[key] then
      local p = self.st:path("results", key)
      self.handled[key] = true
      q:result(key, decode(got[p]), p)
    elseif claims[key] then
      q:started(key, decode(got[self.st:path("claims", key)]), true)
    elseif queued[key] then
      q:queued(key, queued[key])
    else
      q:lost(key, "not found in the queue, the claims or the results after a scheduler change")
    end
  end
  -- Results no run waits for: a try that was cleared or whose run ended.
  local s = self.s
  for key in pairs(results) do
    if not q:entry(key) then
      s:store_op({ op = "delete", path = self.st:path("results", key) })
    end
  end
  s:store_op(nil, true)
end

-- Runs self[name](self, arm) for the listing `name`, one at a time: a
-- listing asked for while one runs follows it.  Two at once would judge
-- the claims by an older listing than the one that marked them seen, and
-- take a claim made in between for gone (its try would run twice).
-- `again`: a look that sets no watch (one is set already).
function CS:serial(name, again)
  local gen = self.gen
  local box = self[name .. "_box"]
  if not box or box.gen ~= gen then
    box = { gen = gen }
    self[name .. "_box"] = box
  end
  if not again then box.arm = true end
  if box.busy then
    box.more = true
    return
  end
  box.busy = true
  repeat
    box.more = false
    local arm = box.arm
    box.arm = false
    local ok, err = pcall(self[name], self, arm)
    if not ok then log("error", name .. ": " .. tostring(err)) end
  until not box.more or gen ~= self.gen
  box.busy = false
end

function CS:watch_results(again) self:serial("list_results", again) end
function CS:watch_claims(again) self:serial("list_claims", again) end

-- The children of `dir` (`kind`: "results" or "claims"), with a watch
-- when `arm` that lists again through self[again]; nil when this leadership
-- ended meanwhile or the listing failed.  A failed listing has no answer
-- and no watch, so it is tried again in 1 s: else what it lists would
-- wait for ever.
function CS:watched_children(kind, dir, arm, again)
  local gen = self.gen
  local list, err = self.store:children(dir, arm and function()
    if gen ~= self.gen then return end
    -- A moment's wait lets a burst of tries land: one listing reads them all.
    core.timer(RELIST_DELAY, function()
      spawn(kind, function() if gen == self.gen then self[again](self) end end)
    end)
  end or nil)
  if gen ~= self.gen then return nil end
  if not list then
    log("warn", "scheduler: " .. dir .. ": " .. tostring(err) .. "; looking again in 1 s")
    core.timer(1, function()
      spawn(kind, function() if gen == self.gen then self[again](self, not arm) end end)
    end)
    return nil
  end
  return list
end

function CS:list_results(arm)
  local gen, q = self.gen, self.q
  local dir = self.st:path("results")
  local list = self:watched_children("results", dir, arm, "watch_results")
  if not list then return end
  local seen, fresh = {}, {}
  for _, key in ipairs(list or {}) do
    seen[key] = true
    if not self.handled[key] then
      self.handled[key] = true
      fresh[#fresh + 1] = dir .. "/" .. key
    end
  end
  local got = get_all(self.store, fresh)
  if gen ~= self.gen then return end
  for _, p in ipairs(fresh) do
    local data = got[p]
    if data then
      q:result(p:match("([^/]+)$"), decode(data), p)
    else
      -- Unread (or gone): the next listing reads it again.
      self.handled[p:match("([^/]+)$")] = nil
    end
  end
  for key in pairs(self.handled) do
    if not seen[key] then self.handled[key] = nil end
  end
end

-- A claim that appears: the try runs ("running", with its worker); one that
-- goes: its result is there, or the try is lost.
function CS:list_claims(arm)
  local gen, s, q = self.gen, self.s, self.q
  local dir = self.st:path("claims")
  local list = self:watched_children("claims", dir, arm, "watch_claims")
  if not list then return end
  local present = set_of(list)
  local fresh, entries = {}, {}
  for _, key in ipairs(list) do
    local e = q:entry(key)
    if e and not e.claimed then
      e.claimed = true        -- seen: its going is noticed from now on
      fresh[#fresh + 1] = dir .. "/" .. key
      entries[#entries + 1] = e
    end
  end
  local got, gerr = get_all(self.store, fresh)
  if gen ~= self.gen then return end
  for i, p in ipairs(fresh) do
    local key = p:match("([^/]+)$")
    if q:entry(key) == entries[i] then
      entries[i].claimed = nil
      if got[p] or not gerr then q:started(key, decode(got[p])) end
    end
  end
  local gone = {}
  for key, e in pairs(q.tries) do
    if e.claimed and not present[key] then gone[#gone + 1] = key end
  end
  self:settle(gone)
  s:process()
end

-- Tries whose claim is gone: their result, or lost.
function CS:settle(keys)
  local gen, q = self.gen, self.q
  local paths, entries = {}, {}
  for i, key in ipairs(keys) do
    paths[i] = self.st:path("results", key)
    entries[i] = q:entry(key)
  end
  local got, err = get_all(self.store, paths)
  if gen ~= self.gen then return end
  if err then
    -- A result that could not be read may be there: looked at again in
    -- a second rather than taken for lost (the try would run twice).
    log("warn", "scheduler: reading results: " .. err .. "; looking again in 1 s")
    core.timer(1, function()
      spawn("settle", function() if gen == self.gen then self:settle(keys) end end)
    end)
    return
  end
  for i, key in ipairs(keys) do
    local e, p = entries[i], paths[i]
    local data = got[p]
    if e and q:entry(key) == e then
      if data then
        self.handled[key] = true
        q:result(key, decode(data), p)
      else
        q:lost(key, "worker " .. tostring(e.ti.worker or "?") .. " went away")
      end
    end
  end
end

-- A try claimed and lost between two looks at the claims is seen by this
-- check: its queue node is gone, and it has neither a claim nor a result.
function CS:arm_sweep()
  local gen = self.gen
  self.sweep_timer = core.timer(self.sweep_interval, function()
    self.sweep_timer = nil
    if gen ~= self.gen then return end
    spawn("sweep", function()
      self:sweep()
      if gen == self.gen then self:arm_sweep() end
    end)
  end)
end

function CS:sweep()
  local gen, s, q = self.gen, self.s, self.q
  local candidates = {}
  for key, e in pairs(q.tries) do
    if e.queue_node and not e.claimed then candidates[#candidates + 1] = key end
  end
  if #candidates == 0 then return end
  -- A listing that failed says nothing: the try is not taken for lost
  -- on it (it would run twice); the next sweep looks again.
  local failed
  local function list(path)
    local kids, err = self.store:children(path)
    if not kids and err ~= "ZNONODE" then failed = failed or (path .. ": " .. tostring(err)) end
    return kids or {}
  end
  local qnodes = {}
  local qroot = self.st:path("queue")
  for _, qname in ipairs(list(qroot)) do
    for _, name in ipairs(list(qroot .. "/" .. qname)) do
      qnodes[qroot .. "/" .. qname .. "/" .. name] = true
    end
  end
  local claims = set_of(list(self.st:path("claims")))
  local results = set_of(list(self.st:path("results")))
  if gen ~= self.gen then return end
  if failed then
    log("warn", "scheduler: sweep: " .. failed .. "; the next sweep looks again")
    return
  end
  local gone = {}
  for _, key in ipairs(candidates) do
    local e = q:entry(key)
    if e and e.queue_node and not e.claimed and not qnodes[e.queue_node]
        and not claims[key] then
      if results[key] then
        local p = self.st:path("results", key)
        local data = self.store:get(p)
        if data then
          self.handled[key] = true
          q:result(key, decode(data), p)
        end
      else
        e.claimed = true
        gone[#gone + 1] = key
      end
    end
  end
  self:settle(gone)
  s:process()
end

_M.SWEEP_INTERVAL = SWEEP_INTERVAL
return _M
