-- zkflow.node: the composition root.  One function, node.start, builds a
-- running zkflow from options -- the scheduler (standalone on an embedded
-- store, or a cluster member contending for leadership on ZooKeeper), the
-- cluster worker, the DAG provider the API lists (the scheduler's DAGs, or
-- the folder and the pushed DAGs), the /config watch, the API router -- and
-- every front door calls it: the CLI's standalone, scheduler, worker and
-- api commands (zkflow.cli), the embedded engine of the nginx module and of
-- C hosts (zkflow.engine).  Hot reload and member registration are the
-- scheduler's own (scheduler.new's defaults); two assemblies used to drift,
-- and an nginx-hosted scheduler never saw /config.
--
-- One owner per store: on an embedded store the scheduler runs only while
-- this process holds an flock on "<db>.scheduler.lock" (node.own); on
-- ZooKeeper the leader election gives the one owner.  `zkflow dags backfill`
-- and `dags test` take the same lock, so a store never has two schedulers
-- recovering (and killing) each other's runs.
local core = require "zkflow.core"
local async = require "zkflow.async"

local _M = {}

local log = core.log
local fmt = string.format

-- Seconds between two tries of a standby (busy = "standby") for the lock.
_M.LOCK_RETRY = 1

local function spawn(what, fn)
  async.spawn(fn, function(ok, err)
    if not ok then log("error", what .. ": " .. tostring(err)) end
  end)
end

local function is_dir(p)
  local st = core.stat(p)
  return st ~= nil and st.type == "dir"
end

-- ---- one owner per store ------------------------------------------------------

function _M.lock_path(db)
  return db .. ".scheduler.lock"
end

-- Who holds the lock of `db`, as words for a message.
local function holder(path)
  local f = io.open(path, "r")
  local pid = f and f:read("l")
  if f then f:close() end
  pid = pid and pid:match("^(%d+)$")
  return pid and ("process " .. pid) or "another process"
end

-- Takes the scheduler lock of the embedded store `db`: the lock handle
-- (release it with :close(); the process's end releases it too), or nil and
-- a message naming the owner and true when a live process holds it (nil
-- and a message alone when the lock file cannot be opened).  The owner's pid
-- is written into the lock file for that message (the nginx module writes
-- none).
function _M.own(db)
  local path = _M.lock_path(db)
  local h, err = core.lock_file(path)
  if h == false then
    return nil, fmt("store %s is scheduled by %s (it holds %s)", db, holder(path), path), true
  end
  if not h then return nil, "store " .. db .. ": " .. tostring(err) end
  local f = io.open(path, "w")
  if f then
    f:write(tostring(core.getpid()), "\n")
    f:close()
  end
  return h
end

-- On ZooKeeper: whether a scheduler leads (or contends) on the ensemble,
-- i.e. someone owns the store's runs.
function _M.zk_owner(store, root)
  local state = require "zkflow.state"
  local path = state.new(store, root):path("election", "scheduler")
  local ok, kids = pcall(store.children, store, path)
  return ok and type(kids) == "table" and #kids > 0
end

-- `dags test` / flow.test on a given store (opts.db) owns it while the
-- run lasts: a live scheduler would otherwise pick the test's run up too.
-- Without opts.db the test's store is a temporary one of its own.
function _M.test(what, opts)
  local sched = require "zkflow.scheduler"
  if not (opts and opts.db) then
    return sched.test(what, opts)
  end
  local lock, err = _M.own(opts.db)
  if not lock then
    error(err .. ": a test runs its own scheduler; without --db it uses a "
          .. "temporary store, and 'zkflow dags trigger' hands a run to that one", 0)
  end
  local res = table.pack(pcall(sched.test, what, opts))
  lock:close()
  if not res[1] then error(res[2], 0) end
  return table.unpack(res, 2, res.n)
end

-- ---- /config, watched -----------------------------------------------------------

local function valid_int(v, least)
  return math.type(v) == "integer" and v >= least
end

local LOG_LEVELS = { debug = true, info = true, warn = true, error = true }

-- log_level: the engine drops messages below it (nil: none dropped; the
-- process's own ZKFLOW_LOG_LEVEL still filters after).
local function apply_log_level(cfg)
  local lv = cfg.log_level
  if not LOG_LEVELS[lv] then lv = nil end
  if core.set_log_level then core.set_log_level(lv) end
end

-- dag_load_timeout, dag_load_instructions, dag_load_memory: the limits of
-- a DAG file's load, for the whole Lua state (zkflow.dsl.loader.configure;
-- unset keys fall back to the engine's options, then the defaults).
local LOAD_KEYS = { dag_load_timeout = "timeout", dag_load_instructions = "instruction_limit",
                    dag_load_memory = "memory_limit" }
local function apply_load_limits(cfg)
  if type(cfg) ~= "table" then return end
  local t = {}
  for key, name in pairs(LOAD_KEYS) do t[name] = cfg[key] end
  local ok, err = require("zkflow.dsl.loader").configure(t, "config")
  if not ok then log("error", "config: " .. tostring(err) .. " (the DAG load limits are unchanged)") end
end

_M.apply_load_limits = apply_load_limits

-- watch_config(store, root, apply [, stopped]): calls apply(tbl) now and
-- after every change of <root>/config ({} when the node is missing); a
-- record that is not valid is logged and its valid keys still apply;
-- log_level applies to the whole process.
-- stopped(): true ends the watching.  Inside a coroutine on a remote store.
function _M.watch_config(store, root, apply, stopped)
  local config = require "zkflow.config"
  local path = config.path(root)
  local function look()
    if stopped and stopped() then return end
    local stat = store:exists(path, function()
      if stopped and stopped() then return end
      spawn("config", look)
    end)
    if not stat then
      apply_log_level({})
      apply_load_limits({})
      apply({})
      return
    end
    local tbl, err = config.read(store, root)
    if not tbl then
      log("error", "config: " .. tostring(err) .. " (ignored)")
      return
    end
    local ok, verr = config.validate(tbl)
    if not ok then
      log("error", "config " .. path .. ": " .. tostring(verr) .. " (the valid keys still apply)")
    end
    apply_log_level(tbl)
    apply_load_limits(tbl)
    apply(tbl)
  end
  look()
end

-- /config's scheduler keys on scheduler `s`: parallelism (32 when unset),
-- pools.NAME and retention_days; a pool that grew lets waiting tries go.
-- `quiet`: no log and no scheduling pass (before the scheduler starts).
function _M.apply_sched_config(s, cfg, quiet)
  local par = valid_int(cfg.parallelism, 1) and cfg.parallelism or 32
  if s:set_parallelism(par) and not quiet then
    log("info", "config: parallelism " .. par)
  end
  local days = type(cfg.retention_days) == "number" and cfg.retention_days > 0
               and cfg.retention_days or nil
  if s:set_retention(days) and not quiet then
    log("info", "config: retention_days " .. tostring(days or "unset (keep everything)"))
  end
  if type(cfg.pools) == "table" then
    for name, slots in pairs(cfg.pools) do
      if type(name) == "string" and valid_int(slots, 0)
          and s:set_pool_slots(name, slots) and not quiet then
        log("info", ("config: pool %s has %d slots"):format(name, slots))
      end
    end
  end
  if not quiet then s:process() end
end

-- /config's worker_slots (4 when unset) on worker handle `w`.
function _M.apply_worker_config(w, cfg)
  local n = valid_int(cfg.worker_slots, 1) and cfg.worker_slots or 4
  if w.slots ~= n then
    log("info", "config: worker slots " .. n)
    w:set_slots(n)
  end
end

-- Wires /config to a cluster scheduler handle, live; `box.config` keeps
-- the last one read, which the handle's on_lead option applies when it
-- starts to lead (see start_cluster).
function _M.configure_scheduler(h, stopped, box)
  _M.watch_config(h.store, h.root, function(cfg)
    box.config = cfg
    if h.s then _M.apply_sched_config(h.s, cfg) end
  end, stopped)
end

function _M.configure_worker(w, stopped)
  _M.watch_config(w.store, w.root, function(cfg) _M.apply_worker_config(w, cfg) end, stopped)
end

-- ---- the DAGs the API lists -----------------------------------------------------

-- A scan of the folder `dir` and the DAGs pushed to <root>/dags (these win),
-- at most one a second, so that a request storm does not load every file
-- once per request.
local function scanner(store, root, dir)
  local loader = require "zkflow.dsl.loader"
  local pushed = require "zkflow.pushed"
  local cache, at = nil, -math.huge
  return function()
    local now = core.mono()
    if cache and now - at < 1 then return cache end
    at = now
    local res
    if dir and is_dir(dir) then
      -- a file whose load is slow goes on in the background: this scan
      -- runs inside a request, so it never waits more than probe.SLOW for
      -- a file (a worker's first scan waiting 2 s for a hanging file held
      -- up every request to that worker); the file's DAGs are listed once
      -- its verdict is in, by a later scan
      local ok, r = pcall(loader.scan, dir, { background = true })
      res = ok and r or nil
    end
    res = res or { dags = {}, errors = {}, files = {} }
    res.dags, res.errors = res.dags or {}, res.errors or {}
    local ok, p = pcall(pushed.load, store, root, { dags_dir = dir })
    if ok and p then
      pushed.merge(res, p)
    else
      log("warn", "pushed DAGs: " .. tostring(p))
    end
    cache = res
    return cache
  end
end

-- ---- the history store ------------------------------------------------------------

-- The history store of a node (docs/history.md): o.history (an open
-- zkflow.history, borrowed) or o.history_url (--history); else on the
-- embedded store its own file (o.db); else on ZooKeeper /config's
-- history_url.  On ZooKeeper without one there is none: finished runs
-- stay in ZooKeeper, as before the history existed, and a warning says
-- so -- a SQLite file of its own per scheduler would split the history
-- between machines and hide it from every other one.  Returns the history
-- (the node owns it when it opened it), or nil.
function _M.open_history(o, root)
  if o.history then return o.history end
  local url = o.history_url
  if not url and not o.zk and o.db then url = "sqlite:" .. o.db end
  if not url and o.zk then
    local ok, cfg = pcall(require("zkflow.config").read, o.store, root)
    url = ok and type(cfg) == "table" and type(cfg.history_url) == "string"
          and cfg.history_url or nil
  end
  if not url then
    if o.zk and o.scheduler then
      log("warn", "no history store (--history URL or history_url in /config): "
          .. "finished runs stay in ZooKeeper, which grows with every run")
    end
    return nil
  end
  local h, err = require("zkflow.history").new(url)
  if not h then
    log("error", tostring(err) .. ": finished runs stay in the live store")
    return nil
  end
  return h, true
end

-- ---- the running node -------------------------------------------------------------

local Node = {}
Node.__index = Node

-- The embedded store's scheduler, with /config applied before its first
-- runs start and live after.
function Node:start_scheduler()
  local o = self.o
  local sched = require "zkflow.scheduler"
  local s = sched.new {
    store = o.store, root = self.root, dags_dir = o.dags_dir,
    log_dir = o.log_dir, on_event = o.on_event, history = self.history,
  }
  local first = true
  _M.watch_config(o.store, self.root, function(cfg)
    if self.stopped then return end
    _M.apply_sched_config(s, cfg, first)
    first = false
  end, function() return self.stopped end)
  s:start()
  self.scheduler = s
  self.standby = nil
  return s
end

-- A standby tries the lock every LOCK_RETRY seconds and takes over the
-- store when the owner is gone.
function Node:stand_by(why)
  self.standby = why
  log("info", why .. "; this scheduler stands by and takes over when it ends")
  spawn("scheduler lock", function()
    while not self.stopped and not self.scheduler do
      async.sleep(_M.LOCK_RETRY)
      if self.stopped then return end
      local lock = _M.own(self.o.db)
      if lock then
        self.lock = lock
        log("info", "the store " .. self.o.db .. " is free: this scheduler takes it over")
        self:start_scheduler()
      end
    end
  end)
end

-- Cluster members on ZooKeeper: a scheduler that contends for leadership
-- and/or a worker that takes tries from the queue.
function Node:start_cluster()
  local o = self.o
  local cluster = require "zkflow.cluster"
  local stopped = function() return self.stopped end
  local parts = {}
  self.parts = parts
  if o.scheduler then
    local box = {}
    local h = cluster.scheduler {
      store = o.store, root = self.root, dags_dir = o.dags_dir,
      log_dir = o.log_dir, on_event = o.on_event, id = o.id, history = self.history,
      on_lead = function(s) _M.apply_sched_config(s, box.config or {}, true) end,
    }
    parts.scheduler = h
    if o.listen then o.listen(function(st) h:session(st) end) end
    _M.configure_scheduler(h, stopped, box)
  end
  if o.worker then
    local h = cluster.worker {
      store = o.store, root = self.root, dags_dir = o.dags_dir,
      log_dir = o.log_dir, queues = o.queues, slots = o.slots,
      id = o.worker_id, history = self.history,
    }
    parts.worker = h
    if o.listen then o.listen(function(st) h:session(st) end) end
    -- --slots on the command line wins over /config's worker_slots.
    if not o.slots then _M.configure_worker(h, stopped) end
  end
end

-- node.start(o) builds and starts a zkflow node; returns it, or nil and an
-- error when the store is owned and o.busy is "fail".
--   o.store      the open store (borrowed; the caller closes it)
--   o.zk         true when the store is ZooKeeper (cluster members)
--   o.db         the embedded store's file (the ownership lock sits beside)
--   o.root       "/zkflow" by default
--   o.dags_dir   the DAG folder (nil: pushed DAGs only, on ZooKeeper)
--   o.log_dir    task logs
--   o.scheduler  run a scheduler (standalone, or a cluster contender)
--   o.busy       embedded store owned by another process: "fail" (return
--                nil, err) or "standby" (serve, take over when it ends)
--   o.worker     run a cluster worker (ZooKeeper only); o.queues, o.slots,
--                o.worker_id
--   o.id         the cluster scheduler's member id
--   o.on_event   fn(kind, obj) for the scheduler's events
--   o.listen     fn(fn): subscribes fn to the store's session events
--   o.api        build the API router and make it the served one
--   o.auth       the API asks every request for a user (zkflow.api.auth)
--   o.status     extra fields for /api/v1/health's scheduler object
--   o.history    an open zkflow.history (borrowed), or o.history_url: where
--                finished runs go (_M.open_history says the default)
-- The node has .scheduler (embedded store), .parts.scheduler/.worker
-- (cluster), .api, .dags() (the DAG provider), .history, :stop().
function _M.start(o)
  local self = setmetatable({ o = o, root = o.root or "/zkflow" }, Node)
  if o.scheduler or o.api or o.worker then
    self.history, self.owns_history = _M.open_history(o, self.root)
  end
  local scan = scanner(o.store, self.root, o.dags_dir)
  if o.zk then
    self:start_cluster()
  elseif o.scheduler then
    local lock, err = _M.own(o.db)
    if lock then
      self.lock = lock
      self:start_scheduler()
    elseif o.busy == "standby" then
      self:stand_by(err)
    else
      return nil, err
    end
  end
  -- The API lists the scheduler's DAGs while one runs (leads) here, a scan
  -- of the folder and the pushed DAGs otherwise.
  function self.dags()
    local s = self.scheduler
    if s then
      return { dags = s.dags, errors = s.import_errors or {}, files = s.files }
    end
    local h = self.parts and self.parts.scheduler
    if h and h.s then
      return { dags = h.s.dags, errors = h.s.import_errors or {} }
    end
    return scan()
  end
  if o.api then
    local api = require "zkflow.api"
    local status, connection
    if o.zk then
      -- The connection's state (Curator's names), for health.
      local conn = require("zkflow.cluster.common").steady(o.store)
      if o.listen then o.listen(function(st) conn:session(st) end) end
      connection = function() return conn.state end
    end
    if o.zk and self.parts.scheduler then
      local h, w = self.parts.scheduler, self.parts.worker
      status = { status = function()
        -- Who leads is known only while the connection is: a leader
        -- whose session expired meanwhile does not lead any more.
        local conn = h:connection()
        local known = conn == "connected"
        local st = { status = known and (h.leader and "leader" or "standby") or conn,
                     id = h.id, leader = h.leader, worker = w and w.id }
        if not known then st.leader = core.null end
        for k, v in pairs(o.status or {}) do st[k] = v end
        return st
      end }
    elseif not o.zk and o.scheduler then
      status = { status = function()
        if self.scheduler then return { status = "running" } end
        return { status = "standby", owner = self.standby }
      end }
    end
    -- /metrics reads the counters of the scheduler that runs (leads)
    -- here; elsewhere the router reads the ones the leader saved.
    local function counters()
      local s = self.scheduler
      local h = self.parts and self.parts.scheduler
      if not s and h and h.leader then s = h.s end
      return s and s:counters() or nil
    end
    self.api = api.new {
      store = o.store, root = self.root, scheduler = status,
      connection = connection,
      log_dir = o.log_dir, dags = self.dags, auth = o.auth, counters = counters,
      history = self.history,
    }
    api.serve(self.api)
  end
  return self
end

-- Tells systemd (a unit of Type=notify) that the serving command is up:
-- the store is open, the node started and the API listens.  A no-op
-- outside systemd; a socket that cannot be reached is logged, not fatal.
function _M.notify_ready()
  local ok, err = core.sd_notify("READY=1\nMAINPID=" .. core.getpid())
  if ok == nil then core.log("warn", "sd_notify: " .. tostring(err)) end
  return ok
end

-- Stops what the node started (the members first, whose nodes go) and
-- releases the store's lock; the caller closes the store after.
function Node:stop()
  if self.stopped then return end
  self.stopped = true
  for _, k in ipairs({ "worker", "scheduler" }) do
    local part = self.parts and self.parts[k]
    if part then pcall(part.stop, part) end
  end
  if self.scheduler then pcall(self.scheduler.stop, self.scheduler) end
  if self.lock then self.lock:close(); self.lock = nil end
  if self.owns_history then pcall(self.history.close, self.history) end
end

return _M
