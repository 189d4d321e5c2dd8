-- zkflow.cluster: several zkflow processes as one cluster, through ZooKeeper.
--
-- Schedulers contend for leadership with the election recipe at
-- <root>/election/scheduler (kazoo's lock naming); the leader runs a
-- zkflow.scheduler whose executor is the queue
-- (zkflow.cluster.queue_executor): each try goes to a queue instead of
-- running here; the standbys wait, and the one that wins next resumes every
-- run from the store.  Workers take tries from the queues and run them with
-- a zkflow.scheduler composed for it (the in-process executor, no records,
-- each try's end reported to the leader).  Both are compositions of
-- scheduler.new's options; this file writes no field of a scheduler.
--
-- A try moves through three places, each move one transaction, so at any
-- moment it is in exactly one of them (or nowhere: lost):
--
--   /queue/<queue>/ti-<seq>   the leader: the instance's record "queued" and
--                             this node, in one transaction
--   /claims/<key>             a worker: creates this ephemeral node and
--                             deletes the queue node (two workers racing:
--                             one transaction fails)
--   /results/<key>            the worker: creates this (the try's end, its
--                             XCom, its log's path) and deletes its claim;
--                             the leader deletes it in the transaction that
--                             writes the instance's new state
--
-- <key> is <dag_id>~<run_id>~<task_id>~<try> (queue_executor.ti_key).
-- A claim that vanishes without a result (the worker's session ended) makes
-- the leader run the try again, on any worker, without costing a retry.  A
-- worker whose session expires stops its tries: their claims are gone, so
-- their results could not be written anyway (the transaction deletes the
-- claim, which fails).  A scheduler whose session expires stops leading at
-- once and contends again.
local core = require "zkflow.core"
local async = require "zkflow.async"
local sched = require "zkflow.scheduler"
local queue_executor = require "zkflow.cluster.queue_executor"
local state = require "zkflow.state"
local zk = require "zkflow.zk"
local pushed = require "zkflow.pushed"

local json_encode, json_decode, null = core.json_encode, core.json_decode, core.null
local now = core.now
local pairs, ipairs, type, tostring, pcall = pairs, ipairs, type, tostring, pcall
local sort, concat = table.sort, table.concat

local _M = {}

local LOG_TAIL = 256 * 1024     -- bytes of a try's log copied to the store
local SWEEP_INTERVAL = 2        -- seconds between the leader's checks for lost tries
local MEMBER_DELAY = 0.5        -- a worker's record follows its tries at most this late
local RELIST_DELAY = 0.002      -- the leader lets claims and results gather this long
local RESULT_MAX = 900 * 1024   -- a result node stays under ZooKeeper's 1 MB

local function log(level, msg)
  core.log(level, msg)
end

local hostname = state.hostname

local function decode(data)
  if type(data) ~= "string" or data == "" then return nil end
  local ok, v = pcall(json_decode, data)
  if ok and type(v) == "table" then return v end
  return nil
end

local function spawn(what, fn, ...)
  return async.spawn(fn, function(ok, err)
    if not ok then log("error", what .. ": " .. tostring(err)) end
  end, ...)
end

local function set_of(list)
  local t = {}
  for _, v in ipairs(list or {}) do t[v] = true end
  return t
end

-- Reads `paths` at once (pipelined: one round trip, not one per node);
-- returns {[path] = data} for those that exist.  Inside a coroutine.
local function get_all(store, paths)
  local out, left = {}, #paths
  if left == 0 then return out end
  if left == 1 then
    out[paths[1]] = store:get(paths[1])
    return out
  end
  async.wait(function(resume)
    for _, p in ipairs(paths) do
      async.spawn(function() return store:get(p) end, function(ok, data)
        if ok and data then out[p] = data end
        left = left - 1
        if left == 0 then resume() end
      end)
    end
  end)
  return out
end
_M.get_all = get_all

-- An ephemeral member record: (re)created, or updated in place.
local function put_member(store, path, data, create)
  if not create then
    local ok, err = store:set(path, data)
    if ok then return true end
    if err ~= "ZNONODE" then return nil, err end
  end
  store:delete(path)
  return store:create(path, data, { ephemeral = true, parents = true })
end

local function ensure(store, path)
  local ok, err = store:create(path, "", { parents = true })
  if not ok and err ~= "ZNODEEXISTS" then return nil, err end
  return true
end

-- ---- the scheduler ----------------------------------------------------------------

local CS = {}
CS.__index = CS

-- cluster.scheduler(opts) inside a coroutine: registers the member, starts
-- contending and returns the handle (handle:stop()).  opts: store (a
-- ZooKeeper store; a remote one gets pipelined writes), root, dags_dir,
-- log_dir, id, on_event, hot_reload, sweep_interval.
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
    fence = fence, on_fence_lost = fence and lost or nil,
    -- Every version the leader loads is published
    -- (/dags/<id>/versions/<hash>) for the workers: a run keeps its
    -- version even where their files change.
    on_reload = function() if gen == self.gen then self:publish_versions() end end,
  }
  self.s, self.q = s, q
  if self.on_lead then self.on_lead(s) end
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
  self.published = self.published or {}
  for id, dag in pairs(s and s:loaded_dags() or {}) do
    local hash, file = dag.source_hash, dag.file
    local k = id .. "@" .. tostring(hash)
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

-- ---- the worker ---------------------------------------------------------------------

local function abs_path(p)
  if not p or p:sub(1, 1) == "/" then return p end
  local cwd = os.getenv("PWD")
  return cwd and (cwd .. "/" .. p:gsub("^%./", "")) or p
end

local CW = {}
CW.__index = CW

-- cluster.worker(opts) inside a coroutine: registers the worker and takes
-- tries from its queues.  opts: store, root, dags_dir, log_dir, queues
-- ({"default"}), slots (4), id.
function _M.worker(opts)
  assert(opts and opts.store, "cluster.worker: 'store' is required")
  local self = setmetatable({
    opts = opts, store = opts.store, root = opts.root or "/zkflow",
    id = opts.id or ("worker-" .. hostname() .. "-" .. core.getpid()),
    queues = opts.queues or { "default" }, slots = opts.slots or 4,
    running = {}, nrunning = 0, stopped = false,
    scanning = {}, rescan = {}, armed = {},
    claiming = {}, nclaiming = 0,   -- queue nodes being claimed
    held = {},                      -- queue node -> when its try's claim was found held
    versions = {}, nversions = 0,   -- "dag@hash" -> DAG of another version than ours
  }, CW)
  self.st = state.new(self.store, self.root)
  self.member_path = self.st:path("members", "workers", self.id)
  self.started = state.iso(now(), true)
  -- The worker's scheduler runs tries in process and writes nothing to
  -- the runs' records (the leader owns them): a try's end is reported
  -- (CW:ended), a new process group listed (CW:noted_pid), and a push to
  -- /dags only reads the DAGs again.
  local s = sched.new {
    store = self.store, root = self.root, dags_dir = opts.dags_dir,
    log_dir = opts.log_dir, schedule = false, hot_reload = false, id = self.id,
    records = false, reload = "dags",
    on_try_end = function(ti, ok, res, extra) self:ended(ti, ok, res, extra) end,
    on_pid = function(ti) self:noted_pid(ti) end,
  }
  self.s = s
  s:load_dags()
  if opts.dags_dir and opts.hot_reload ~= false and core.watch_tree then
    self.dir_watch = core.watch_tree(opts.dags_dir, function()
      if not self.stopped then s:load_dags() end
    end, 50)
  end
  ensure(self.store, self.st:path("claims"))
  ensure(self.store, self.st:path("results"))
  self:update_member(true)
  self.groups_dir = opts.log_dir and (abs_path(opts.log_dir) .. "/.workers") or nil
  if self.groups_dir then self:watch_members() end
  for _, q in ipairs(self.queues) do self:scan(q) end
  return self
end

function CW:member_record()
  local running = {}
  for key in pairs(self.running) do running[#running + 1] = key end
  sort(running)
  return json_encode({ id = self.id, host = hostname(), pid = core.getpid(),
                       version = core.version, started = self.started,
                       queues = state.array(self.queues), slots = self.slots,
                       running = state.array(running) })
end

function CW:update_member(create)
  local ok, err = put_member(self.store, self.member_path, self:member_record(), create)
  if not ok then log("warn", "members: " .. self.member_path .. ": " .. tostring(err)) end
end

-- The member record follows the running tries, written at most every
-- MEMBER_DELAY seconds.
function CW:member_changed()
  if self.member_timer or self.stopped then return end
  -- At most one write per MEMBER_DELAY: a record per try start and end
  -- cost more than the try's own transactions.
  self.member_timer = core.timer(MEMBER_DELAY, function()
    self.member_timer = nil
    if self.stopped then return end
    spawn("worker member", function() self:update_member() end)
  end)
end

-- Looks at queue `q` and claims what fits in the free slots, oldest first.
-- One look per queue at a time; a look asked for meanwhile follows it.
function CW:scan(q)
  if self.scanning[q] then
    self.rescan[q] = true
    return
  end
  self.scanning[q] = true
  spawn("worker queue " .. q, function()
    local dir = self.st:path("queue", q)
    local tries = 0
    repeat
      self.rescan[q] = false
      local watch
      if not self.armed[q] then
        self.armed[q] = true
        watch = function()
          self.armed[q] = false
          if not self.stopped then self:scan(q) end
        end
      end
      local list, err = self.store:children(dir, watch)
      if not list then
        self.armed[q] = false
        if err == "ZNONODE" and tries == 0 then
          ensure(self.store, dir)
          self.rescan[q] = true
        else
          log("warn", "worker: queue " .. dir .. ": " .. tostring(err))
        end
      else
        sort(list)
        -- One claim per free slot at once, each in its own coroutine: a
        -- claim costs a few round trips, which run side by side.
        for _, name in ipairs(list) do
          if self.nrunning + self.nclaiming >= self.slots or self.stopped
              or self.expired then
            break
          end
          local node = dir .. "/" .. name
          local held = self.held[node]
          if held and core.mono() - held > 1 then self.held[node], held = nil, nil end
          if not self.claiming[node] and not held then
            self.claiming[node] = true
            self.nclaiming = self.nclaiming + 1
            spawn("worker claim", function()
              local ok, got, why = pcall(self.claim, self, node)
              self.claiming[node] = nil
              self.nclaiming = self.nclaiming - 1
              if not ok then log("error", "worker: claim " .. node .. ": " .. tostring(got)) end
              if ok and not got and why == "ZNODEEXISTS" then
                -- The try's claim is held (a second queue node of a try
                -- that runs): left alone for a second, not hammered.
                self.held[node] = core.mono()
              elseif ok and not got and not self.stopped then
                -- Another worker was first: there may be more to take.
                self:scan(q)
              end
            end)
          end
        end
      end
      tries = tries + 1
    until not self.rescan[q] or self.stopped
    self.scanning[q] = false
  end)
end

-- Claims the try at queue node `node` and starts it; false when another
-- worker was first.
function CW:claim(node)
  local data = self.store:get(node)
  if not data then return false end
  local rec = decode(data)
  if not rec or type(rec.key) ~= "string" or type(rec.dag_id) ~= "string"
      or type(rec.run_id) ~= "string" or type(rec.task_id) ~= "string"
      or math.type(rec.try_number) ~= "integer" then
    log("error", "worker: " .. node .. ": not a queue record, removed: " .. data:sub(1, 200))
    self.store:delete(node)
    return false
  end
  local claim = json_encode({ worker = self.id, host = hostname(), pid = core.getpid(),
                              started = now(), queue_node = node })
  local cpath = self.st:path("claims", rec.key)
  local res, err = self.store:multi({
    { op = "create", path = cpath, data = claim, ephemeral = true },
    { op = "delete", path = node },
  })
  if not res and (err == "ZCONNECTIONLOSS" or err == "ZOPERATIONTIMEOUT") then
    -- The answer was lost, not necessarily the transaction: the claim
    -- says whether it is ours (a claim of ours nobody ran would hold the
    -- try forever).
    local mine = decode((self.store:get(cpath)))
    res = mine and mine.worker == self.id and mine.queue_node == node
  end
  if not res then return false, err end
  self:run(rec)
  return true
end

-- The task and everything upstream of it, transitively: the instances whose
-- XComs a try may pull (a task that is not an ancestor may not have run).
local function ancestors(dag, task_id)
  local seen, list, stack = { [task_id] = true }, { task_id }, { task_id }
  while #stack > 0 do
    local t = dag.tasks[table.remove(stack)]
    for _, up in ipairs(t and t.upstream or {}) do
      if not seen[up] then
        seen[up] = true
        list[#list + 1] = up
        stack[#stack + 1] = up
      end
    end
  end
  return list
end


-- Runs a claimed try: the run and its instances are read from the store (the
-- upstream XComs among them) and the task starts as a standalone scheduler
-- would start it.
function CW:run(rec)
  local key = rec.key
  local slot = { rec = rec, started = now() }
  self.running[key] = slot
  self.nrunning = self.nrunning + 1
  self:member_changed()
  local s = self.s
  local run_path = self.st:path("runs", rec.dag_id, rec.run_id)
  local ti_path = run_path .. "/" .. rec.task_id
  local result_path = self.st:path("results", key)
  local dag = s:dag(rec.dag_id)
  local ids = dag and dag.tasks[rec.task_id] and ancestors(dag, rec.task_id) or {}
  -- The run, the try's own record, its result if any and the records of
  -- the task's ancestors, read together.
  local paths = { run_path, ti_path, result_path }
  for _, id in ipairs(ids) do paths[#paths + 1] = run_path .. "/" .. id end
  local got = get_all(self.store, paths)
  local own = decode(got[ti_path])
  if got[result_path] or not own or own.try_number ~= rec.try_number
      or (own.state ~= "queued" and own.state ~= "running") then
    -- Not a try that waits for a worker: a second queue node of a try
    -- (a transaction repeated after a lost answer) or a try that moved on.
    -- Running it would run it twice.
    log("warn", ("worker: %s not run: its record is %s try %s%s"):format(key,
      tostring(own and own.state), tostring(own and own.try_number),
      got[result_path] and ", and it has a result" or ""))
    self.running[key] = nil
    self.nrunning = self.nrunning - 1
    self.store:delete(self.st:path("claims", key))
    self:member_changed()
    return
  end
  local ok, err = pcall(function()
    local rrec = decode(got[run_path])
    if not rrec then error("run " .. rec.dag_id .. " " .. rec.run_id .. " is not in the store", 0) end
    rrec.run_id = rec.run_id
    -- The run keeps the version it started with: another version than
    -- ours is read from the store (dags push and the leader publish them).
    local want = type(rrec.version) == "string" and rrec.version or nil
    if want and (not dag or dag.source_hash ~= want) then
      local vdag, verr = self:dag_version(rec.dag_id, want)
      if vdag then
        dag = vdag
      elseif dag then
        log("info", ("worker: %s runs DAG %s version %s (the run started with %s: %s)"):format(
          key, rec.dag_id, tostring(dag.source_hash), want, tostring(verr)))
      end
    end
    if not dag then
      error(("no DAG '%s' on worker %s (its DAG folder: %s)"):format(rec.dag_id, self.id,
                                                                tostring(self.opts.dags_dir)), 0)
    end
    if not dag.tasks[rec.task_id] then
      error("task '" .. rec.task_id .. "' is not in DAG " .. rec.dag_id, 0)
    end
    -- Ancestors the first read did not cover (another version's).
    local more = {}
    for _, id in ipairs(ancestors(dag, rec.task_id)) do
      local p = run_path .. "/" .. id
      if got[p] == nil then more[#more + 1] = p end
    end
    if #more > 0 then
      for p, data in pairs(get_all(self.store, more)) do got[p] = data end
    end
    ids = ancestors(dag, rec.task_id)
    local tis = {}
    for _, id in ipairs(ids) do
      local r = decode(got[run_path .. "/" .. id])
      if r then r.task_id = r.task_id or id; tis[id] = r end
    end
    local ti, terr = s:prepare_try(dag, rrec, tis, rec.task_id, rec.try_number)
    if not ti then error(terr, 0) end
    slot.ti = ti
    log("info", ("worker %s: %s.%s try %d of run %s started"):format(
      self.id, rec.dag_id, rec.task_id, rec.try_number, rec.run_id))
    s:start_try(ti)
  end)
  if not ok then
    log("error", "worker: " .. key .. ": " .. tostring(err))
    self:report(key, { ok = false, result = { msg = tostring(err) } }, rec)
  end
end

-- What a result carries for an error: its text and zkflow's markers.
local function error_value(e)
  if type(e) ~= "table" then return tostring(e) end
  local out = { msg = tostring(e.msg or e.message or "error") }
  for k, v in pairs(e) do
    if type(k) == "string" and k:match("^zkflow_") and type(v) ~= "function" then out[k] = v end
  end
  return out
end

-- DAG `id` as version `hash` defined it (pushed.version), cached.
function CW:dag_version(id, hash)
  local k = id .. "@" .. hash
  local d = self.versions[k]
  if d then return d end
  local err
  d, err = pushed.version(self.store, self.root, id, hash, { dags_dir = self.opts.dags_dir })
  if not d then return nil, err end
  self.nversions = self.nversions + 1
  if self.nversions > 64 then self.versions, self.nversions = {}, 1 end
  self.versions[k] = d
  return d
end

-- The slot of the try `ti` runs in, and its key; nil when it has none.
function CW:slot_of(ti)
  for key, slot in pairs(self.running) do
    if slot.ti == ti then return slot, key end
  end
end

-- A try's process started (the scheduler's on_pid): its group is listed
-- for the workers of this host (record_groups).
function CW:noted_pid(ti)
  local slot = self:slot_of(ti)
  if slot and ti.pid and ti.pid ~= slot.noted_pid then
    slot.noted_pid = ti.pid
    self:record_groups()
  end
end

-- The try ended here (the scheduler's on_try_end; its slot is free there).
function CW:ended(ti, ok, res, extra)
  local s = self.s
  local slot, key = self:slot_of(ti)
  if not slot then return end
  if not ok then
    local msg = type(res) == "table" and tostring(res.msg or res.message or "error") or tostring(res)
    s:task_log(ti, "failed: " .. msg)
  end
  local result
  if ok then result = res else result = error_value(res) end
  log(ok and "info" or "warn", ("worker %s: %s.%s try %d of run %s %s%s"):format(
    self.id, ti.run.dag_id, ti.task_id, ti.try_number, ti.run.run_id,
    ok and "succeeded" or "failed", ok and "" or (": " .. tostring(result.msg or result):match("^[^\n]*"))))
  self:copy_log(ti, slot)
  self:report(key, {
    ok = ok and true or false,
    result = result,
    skip = extra and extra.skip and tostring(extra.skip) or nil,
    log = abs_path(ti.log), start_date = ti.start_date, end_date = now(),
    xcoms = ti.xcoms,
  }, slot.rec)
end

-- The end of a try's log goes beside its record (<ti node>/log.<try>), so
-- that `zkflow tasks logs`, the API and the page on any machine read it.
-- Written before the result: when the leader sees the result, the log is
-- there.
function CW:copy_log(ti, slot)
  local path = ti.log
  local f = path and io.open(path, "rb")
  if not f then return end
  local size = f:seek("end")
  local skip = size > LOG_TAIL and size - LOG_TAIL or 0
  f:seek("set", skip)
  local data = f:read("a") or ""
  f:close()
  if skip > 0 then
    data = ("[zkflow: the first %d bytes of this log are on worker %s in %s]\n"):format(
      skip, self.id, path) .. data
  end
  local node = ti.path .. "/log." .. ti.try_number
  slot.log_copy = { node = node, data = data }
end

-- Writes a try's result and gives its claim up, in one transaction; then
-- the slot is free.
function CW:report(key, r, rec)
  r.key, r.worker = key, self.id
  r.dag_id, r.run_id, r.task_id, r.try_number = rec.dag_id, rec.run_id, rec.task_id, rec.try_number
  local okj, data = pcall(json_encode, r)
  if not okj or #data > RESULT_MAX then
    log("error", ("worker: %s: the result cannot be stored (%s): its XCom is dropped"):format(
      key, okj and ("%d bytes"):format(#data) or tostring(data)))
    r.result, r.xcoms = null, nil
    data = json_encode(r)
  end
  local slot = self.running[key]
  local copy = slot and slot.log_copy
  spawn("worker result", function()
    local rpath = self.st:path("results", key)
    local cpath = self.st:path("claims", key)
    local ops = {}
    if copy and #copy.data + #data < RESULT_MAX then
      -- The log's copy in the same transaction: one round trip less.
      ops[1] = { op = "create", path = copy.node, data = copy.data }
    elseif copy then
      local ok, err = self.store:create(copy.node, copy.data)
      if not ok and err == "ZNODEEXISTS" then ok, err = self.store:set(copy.node, copy.data) end
      if not ok then log("warn", "worker: log copy " .. copy.node .. ": " .. tostring(err)) end
    end
    ops[#ops + 1] = { op = "create", path = rpath, data = data }
    ops[#ops + 1] = { op = "delete", path = cpath }
    for _ = 1, 5 do
      local res, err = self.store:multi(ops)
      if res then break end
      if err == "ZCONNECTIONLOSS" or err == "ZOPERATIONTIMEOUT" then
        -- The transaction may have happened: the result says so.
        if self.store:exists(rpath) then break end
      elseif #ops == 3 and self.store:exists(ops[1].path) then
        -- A log copy already there (a try number is never run twice, but
        -- a hand-made node could be): the result without it.
        table.remove(ops, 1)
      else
        log("warn", ("worker: the result of %s was not recorded (%s): the claim "
                     .. "is gone, so the scheduler runs the try again"):format(key, tostring(err)))
        break
      end
    end
    self:free(key)
  end)
end

-- ---- process groups a dead worker leaves behind ----------------------------
--
-- A shell try runs in a process group of its own, which outlives a worker
-- killed with SIGKILL (the try runs again elsewhere; the orphan would go
-- on beside it).  Each worker lists its tries' groups in
-- <log_dir>/.workers/<id>; the workers of the host watch the membership,
-- and when a worker's record goes (its session ended) one of them kills
-- the groups its file lists (each checked in /proc to still be that try's
-- process) and removes the file.

function CW:record_groups()
  local dir = self.groups_dir
  if not dir then return end
  local lines = {}
  for key, slot in pairs(self.running) do
    local ti = slot.ti
    if ti and ti.pid then lines[#lines + 1] = ("%d %s %s"):format(ti.pid, ti.task_id, key) end
  end
  local file = dir .. "/" .. self.id
  if #lines == 0 then
    os.remove(file)
    return
  end
  core.mkdirs(dir)
  local tmp = file .. ".tmp"
  local f = io.open(tmp, "w")
  if not f then return end
  f:write(concat(lines, "\n"), "\n")
  f:close()
  os.rename(tmp, file)
end

-- Is process `pid` still the try of task `task_id` (not a recycled pid)?
local function is_try_process(pid, task_id)
  local f = io.open("/proc/" .. pid .. "/environ", "rb")
  if not f then return false end
  local env = f:read("a") or ""
  f:close()
  return env:find("\0ZKFLOW_TASK_ID=" .. task_id .. "\0", 1, true) ~= nil
      or env:find("^ZKFLOW_TASK_ID=" .. task_id:gsub("%p", "%%%0") .. "%z") ~= nil
end

-- Kills what the workers that are gone left running on this host.
function CW:reap()
  local dir = self.groups_dir
  local names = dir and core.listdir(dir)
  if not names then return end
  for _, id in ipairs(names) do
    if id ~= self.id and not id:find("%.tmp$") and id:sub(1, 1) ~= "." then
      if not self.store:exists(self.st:path("members", "workers", id)) then
        local path = dir .. "/" .. id
        local f = io.open(path)
        if f then
          for line in f:lines() do
            local pid, task_id, key = line:match("^(%d+) (%S+) (%S+)$")
            pid = tonumber(pid)
            if pid and pid > 1 and is_try_process(pid, task_id) then
              core.killpg(pid, 9)
              log("warn", ("worker %s: killed process group %d of %s, left by dead worker %s"):format(
                self.id, pid, key, id))
            end
          end
          f:close()
        end
        os.remove(path)
      end
    end
  end
end

function CW:watch_members()
  if self.stopped then return end
  local list = self.store:children(self.st:path("members", "workers"), function()
    if not self.stopped then spawn("worker members", function() self:watch_members() end) end
  end)
  if list then self:reap() end
end

-- New slots (the worker_slots of /config): more slots take more at once;
-- fewer let the tries in flight finish.
function CW:set_slots(n)
  self.slots = n
  self:member_changed()
  if not self.stopped and not self.expired then
    for _, q in ipairs(self.queues) do self:scan(q) end
  end
end

function CW:free(key)
  if not self.running[key] then return end
  local slot = self.running[key]
  self.running[key] = nil
  if slot.noted_pid then self:record_groups() end
  self.nrunning = self.nrunning - 1
  self:member_changed()
  if not self.stopped and not self.expired then
    for _, q in ipairs(self.queues) do self:scan(q) end
  end
end

-- Stops the tries in flight (their claims are gone or going).
function CW:abandon()
  local s = self.s
  local keys = {}
  for key, slot in pairs(self.running) do
    keys[#keys + 1] = key
    if slot.ti then pcall(s.abort_try, s, slot.ti) end
  end
  for _, key in ipairs(keys) do
    self.running[key] = nil
    self.nrunning = self.nrunning - 1
  end
  self:record_groups()
  if #keys > 0 then
    log("warn", "worker " .. self.id .. " stopped its tries: " .. concat(keys, ", "))
  end
end

function CW:session(st)
  if st == "expired" then
    self.expired = true
    self:abandon()
  elseif st == "connected" and self.expired and not self.stopped then
    self.expired = false
    spawn("worker re-registration", function()
      self.armed = {}
      self:update_member(true)
      for _, q in ipairs(self.queues) do self:scan(q) end
    end)
  end
end

-- Stops taking tries and stops those in flight; closing the session then
-- drops their claims, and the scheduler runs them again elsewhere.
function CW:stop()
  if self.stopped then return end
  self.stopped = true
  if self.dir_watch then self.dir_watch:close(); self.dir_watch = nil end
  if self.member_timer then self.member_timer:cancel(); self.member_timer = nil end
  local s = self.s
  for key, slot in pairs(self.running) do
    if slot.ti then pcall(s.abort_try, s, slot.ti) end
    self.store:delete(self.st:path("claims", key))
  end
  self.running, self.nrunning = {}, 0
  self:record_groups()
  s:stop()
  self.store:delete(self.member_path)
end

_M.SWEEP_INTERVAL = SWEEP_INTERVAL
return _M
