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
  local self = setmetatable({
    opts = opts, store = opts.store, root = opts.root or "/zkflow",
    id = opts.id or ("scheduler-" .. hostname() .. "-" .. core.getpid()),
    leader = false, stopped = false, gen = 0,
    sweep_interval = opts.sweep_interval or SWEEP_INTERVAL,
  }, CS)
  self.st = state.new(self.store, self.root)
  self.member_path = self.st:path("members", "schedulers", self.id)
  self.election_path = self.st:path("election", "scheduler")
  self.zk = zk.wrap(self.store, { borrowed = true })
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

-- Waits for leadership in a coroutine of its own, then leads.
function CS:contend()
  local gen = self.gen
  spawn("scheduler election", function()
    while not self.stopped and gen == self.gen do
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
        if gen == self.gen and not self.store:exists(fence, watch) then lost() end
      end)
    end
    if not self.store:exists(fence, watch) then
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

-- The store's session changed (the zk backend reports this).
function CS:session(st)
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
  end
end

function CS:stop()
  if self.stopped then return end
  self.stopped = true
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
  local q = self.q
  local pending = q:adopted()
  local queued = self:queued_keys()
  local claims = set_of(self.store:children(self.st:path("claims")))
  local results = set_of(self.store:children(self.st:path("results")))
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

function CS:watch_results()
  local gen, q = self.gen, self.q
  local dir = self.st:path("results")
  local list = self.store:children(dir, function()
    if gen ~= self.gen then return end
    -- A moment's wait lets the results of a burst of tries land: one
    -- listing reads them all.
    core.timer(RELIST_DELAY, function()
      spawn("results", function() if gen == self.gen then self:watch_results() end end)
    end)
  end)
  if gen ~= self.gen then return end
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
    if data then q:result(p:match("([^/]+)$"), decode(data), p) end
  end
  for key in pairs(self.handled) do
    if not seen[key] then self.handled[key] = nil end
  end
end

-- A claim that appears: the try runs ("running", with its worker); one that
-- goes: its result is there, or the try is lost.
function CS:watch_claims()
  local gen, s, q = self.gen, self.s, self.q
  local dir = self.st:path("claims")
  local list = self.store:children(dir, function()
    if gen ~= self.gen then return end
    core.timer(RELIST_DELAY, function()
      spawn("claims", function() if gen == self.gen then self:watch_claims() end end)
    end)
  end)
  if gen ~= self.gen or not list then return end
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
  local got = get_all(self.store, fresh)
  if gen ~= self.gen then return end
  for i, p in ipairs(fresh) do
    local key = p:match("([^/]+)$")
    if q:entry(key) == entries[i] then
      entries[i].claimed = nil
      q:started(key, decode(got[p]))
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
  local got = get_all(self.store, paths)
  if gen ~= self.gen then return end
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
  local qnodes = {}
  local qroot = self.st:path("queue")
  for _, qname in ipairs(self.store:children(qroot) or {}) do
    for _, name in ipairs(self.store:children(qroot .. "/" .. qname) or {}) do
      qnodes[qroot .. "/" .. qname .. "/" .. name] = true
    end
  end
  local claims = set_of(self.store:children(self.st:path("claims")))
  local results = set_of(self.store:children(self.st:path("results")))
  if gen ~= self.gen then return end
  local gone = {}
  for _, key in ipairs(candidates) do
    local e = q:entry(key)
    if e and e.queue_node and not e.claimed and not qnodes[e.queue_node]
        and not claims[key] then
      if results[key] then
        self.handled[key] = true
        local p = self.st:path("results", key)
        q:result(key, decode((self.store:get(p))), p)
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
