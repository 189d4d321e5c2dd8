-- zkflow.scheduler: runs, task instances and their states, Airflow's way.
--
-- Event-driven: when a task instance ends, its downstream tasks are
-- evaluated at once (zkflow.rules) and the ready ones start in the same
-- loop turn, highest priority first, within their pool, the DAG's
-- max_active_tasks and the scheduler's parallelism.  Timers carry retry
-- delays, execution timeouts, sensor pokes and schedule ticks.  Nothing
-- polls.
--
-- State lives in memory for the runs in progress and is written behind to
-- the store (docs/internals.md has the layout): every task instance whose
-- state changed during a turn is written once at the end of that turn, and
-- the store commits the turn as one transaction.  A restarted scheduler
-- reads the unfinished runs back and re-runs only the tries that had not
-- ended (killing the process groups the dead scheduler left behind);
-- retries waiting on their delay keep the time they had left.
--
-- Airflow semantics kept here (spec/sched_*_spec.lua, spec/scheduler_spec.lua
-- show each): trigger rules decided as TriggerRuleDep does, including the
-- skipped / upstream_failed end of a rule that can no longer be met; the
-- run's state from its leaves; a depends_on_past task whose previous
-- instance did not succeed waits (the run stays running) until that one is
-- cleared and succeeds;
-- dagrun_timeout fails it and skips what had not ended; retries with
-- retry_delay doubled per try by retry_exponential_backoff (no jitter, so
-- delays are predictable) and capped by max_retry_delay; pools with
-- pool_slots (an instance that does not fit lets a smaller one pass);
-- priority_weight first, FIFO among equals.  The in-process executor
-- starts a task the moment it leaves the ready queue, so "queued" is never
-- observed here.
--
-- The seams.  Every mode is this one scheduler composed from the options
-- of scheduler.new; nothing outside this file writes its fields or
-- methods.  What varies is named there:
--
--   executor     where a ready try goes: the in-process executor below
--                (default), or the cluster queue
--                (zkflow.cluster.queue_executor) on a cluster leader.  An
--                executor is an object with
--                  bind(s)       once, from scheduler.new
--                  start(ti)     run the next try of `ti`; its slots are
--                                taken (Sched:take_slots).  It raises
--                                ti.try_number, sets ti.state (running or
--                                queued) and marks it; the try's end comes
--                                back as s:try_ended(ti, ok, res, extra)
--                                (or s:end_try / s:try_lost from the queue)
--                  abort(ti)     stop the try in flight (ti.attempt); the
--                                scheduler gives the slots back
--                  adopt(ti, r)  a record `r` says the try was in flight when
--                                the last scheduler stopped: true when the
--                                executor settles it itself, false to run it
--                                again (the old process group is killed)
--                  logs_elsewhere  true: tries log on other machines
--   records      false: nothing is written to the store (a worker: the
--                leader owns the records)
--   on_try_end   a try's end goes to this callback instead of being applied
--                (a worker reports it to the leader)
--   on_pid       a try's process started (a worker lists process groups)
--   clock        {now=, mono=}: the time stamps and deadlines read
--   reload       "dags": a change of the DAG folder or /dags only reads the
--                DAGs again, nothing is scheduled (a worker); on_reload(s)
--                follows each reload (the leader publishes versions)
--   fence, on_fence_lost   a leader's election node, checked by each write
--
-- and the methods others call: take_slots, end_try, try_lost, store_op,
-- reset_pending (a leader that steps down drops its unwritten writes),
-- prepare_try/start_try (a worker runs one try of a run it does not own),
-- loaded_dags, dag.  docs/internals.md draws the same seam.
local core = require "zkflow.core"
local async = require "zkflow.async"
local rules = require "zkflow.rules"
local state = require "zkflow.state"
local records = require "zkflow.records"
local time = require "zkflow.time"
local operator = require "zkflow.operator"

local json_encode, json_decode, null = core.json_encode, core.json_decode, core.null
local now, mono = core.now, core.mono
local floor, min, max = math.floor, math.min, math.max
local pairs, ipairs, type, tostring, pcall = pairs, ipairs, type, tostring, pcall
local sort, concat = table.sort, table.concat
local iso = time.iso

local _M = {}

local FINISHED = rules.FINISHED
local DEFAULT_POOL_SLOTS = 128
local KILL_GRACE = 5          -- seconds between SIGTERM and SIGKILL
local TURN_BUDGET = 20000     -- task starts per turn before yielding the loop

local Sched = {}
Sched.__index = Sched

local function log(level, msg)
  core.log(level, msg)
end

local function no_mark() end

-- ---- queues of ready task instances (priority desc, then FIFO) ----------
--
-- A bucket per priority_weight, the distinct weights kept sorted: a DAG
-- has few distinct weights, so push and pop cost O(1) in practice where a
-- binary heap pays log n comparisons (Lua calls) per operation.

local function pq_new()
  return { n = 0, prios = {}, buckets = {} }
end

local function pq_push(q, x)
  local p = x.prio
  local b = q.buckets[p]
  if not b then
    b = { first = 1, last = 0 }
    q.buckets[p] = b
    local ps = q.prios
    local i = #ps
    while i > 0 and ps[i] < p do
      ps[i + 1] = ps[i]
      i = i - 1
    end
    ps[i + 1] = p
  end
  local last = b.last + 1
  b.last = last
  b[last] = x
  q.n = q.n + 1
end

local function pq_pop(q)
  if q.n == 0 then return nil end
  local ps, buckets = q.prios, q.buckets
  local p = ps[1]
  local b = buckets[p]
  local first = b.first
  local x = b[first]
  b[first] = nil
  first = first + 1
  if first > b.last then
    -- Empty: drop the bucket so the highest weight stays at ps[1].
    buckets[p] = nil
    table.remove(ps, 1)
  else
    b.first = first
  end
  q.n = q.n - 1
  return x
end

-- ---- construction -----------------------------------------------------------

-- opts: store (required), root ("/zkflow"), dags_dir, dags ({[id]=dag},
-- instead of a folder), log_dir, parallelism (32), schedule (true: create
-- scheduled runs; false in `dags test`), on_event(kind, obj), kill_grace
-- (seconds between SIGTERM and SIGKILL when a shell task times out, 5),
-- id (the member id, "standalone-<pid>"), hot_reload (false: the DAG
-- folder is not watched), pushed (false: DAGs pushed to /dags are not
-- loaded), register (false: no member record), async_store (true: store
-- calls complete on a later turn, as ZooKeeper's: writes are pipelined
-- from coroutines), and the seams of the header: executor (the in-process
-- one), records (true), on_try_end(ti, ok, res, extra), on_pid(ti), clock
-- ({now=core.now, mono=core.mono}), reload ("full" or "dags"),
-- on_reload(s), fence (a node path) and on_fence_lost().
function _M.new(opts)
  assert(opts and opts.store, "scheduler.new: 'store' is required")
  local clock = opts.clock or {}
  local self = setmetatable({
    now = clock.now or now,
    mono = clock.mono or mono,
    worker_id = opts.id,
    executor = opts.executor or _M.inprocess_executor(),
    records = opts.records ~= false,
    on_try_end = opts.on_try_end,
    on_pid = opts.on_pid,
    reload_dags_only = opts.reload == "dags",
    on_reload = opts.on_reload,
    fence = opts.fence,
    on_fence_lost = opts.on_fence_lost,
    store = opts.store,
    root = opts.root or "/zkflow",
    dags_dir = opts.dags_dir,
    log_dir = opts.log_dir or "logs",
    parallelism = opts.parallelism or 32,
    kill_grace = opts.kill_grace or KILL_GRACE,
    schedule_runs = opts.schedule ~= false,
    on_event = opts.on_event,
    dags = opts.dags or {},
    import_errors = {},
    files = {},
    runs = {},              -- "dag\0run" -> run
    runs_by_dag = {},       -- dag_id -> {run, ...} (active, by logical date)
    queued_runs = {},       -- dag_id -> {run, ...} waiting for max_active_runs
    known_runs = {},        -- dag_id -> {run_id = true}
    ready = pq_new(),       -- queue of scheduled task instances
    work = {},              -- task instances to evaluate
    counts = rules.new_counts(0),
    dirty = {},             -- list of task instances / runs to write
    running = 0,
    running_by_dag = {},
    pools = {},             -- name -> {slots, used, blocked (queue)}
    blocked_by_dag = {},    -- dag_id -> queue of instances over max_active_tasks
    paused = {},
    timers = {},            -- dag_id -> schedule timer
    tick_blocked = {},      -- dag_id -> true: due runs wait for max_active_runs
    watched = {},           -- dag_id -> true once its store watches are set
    hot_reload = opts.hot_reload,
    run_waiters = {},       -- run key -> {fn, ...}
    processing = false,
    stopped = false,
    -- A store whose calls complete on a later turn (ZooKeeper): writes go
    -- out pipelined from a coroutine, one flush in flight at a time, and
    -- watch callbacks read inside coroutines, so the loop never waits.
    async_store = opts.async_store,
    extra_ops = {},         -- raw store ops that follow this turn's writes
    register = opts.register ~= false,
    -- DAGs pushed to the store (/dags, zkflow.pushed) load beside the
    -- folder's and are watched; not when the caller hands the DAGs over.
    watch_pushed = opts.pushed ~= false and opts.dags == nil,
    pushed_armed = {},
  }, Sched)
  self.st = state.new(self.store, self.root)
  if not self.records then self.mark = no_mark end
  self.executor:bind(self)
  return self
end

-- The DAGs loaded now, {[dag_id] = dag}: borrowed, replaced on reload.
function Sched:loaded_dags()
  return self.dags
end

function Sched:dag(dag_id)
  return self.dags[dag_id]
end

function Sched:emit(kind, obj)
  if self.on_event then
    local ok, err = pcall(self.on_event, kind, obj)
    if not ok then log("warn", "on_event: " .. tostring(err)) end
  end
end

local function run_key(dag_id, run_id)
  return dag_id .. "\0" .. run_id
end

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

local find = string.find

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

function Sched:flush(sync)
  local d = self.dirty
  local extra = self.extra_ops
  if #d == 0 and #extra == 0 then return end
  if self.async_store and not sync then return self:flush_async() end
  self.dirty = {}
  if #extra > 0 then self.extra_ops = {} end
  local store = self.store
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

-- ---- DAGs -------------------------------------------------------------------

-- The folder's DAGs and the pushed ones (which win): loader.scan's shape.
function Sched:scan_dags()
  local res
  if self.dags_dir then
    res = require("zkflow.dsl.loader").scan(self.dags_dir)
  else
    res = { dags = {}, errors = {}, files = {} }
  end
  if self.watch_pushed then
    local pushed = require "zkflow.pushed"
    local ok, p = pcall(pushed.load, self.store, self.root, {
      watch = function() self:pushed_changed() end,
      armed = self.pushed_armed, dags_dir = self.dags_dir,
    })
    if ok then
      pushed.merge(res, p)
    else
      log("error", "pushed DAGs: " .. tostring(p))
    end
  end
  return res
end

-- A push (or removal) in /dags: load again once the burst is over.
function Sched:pushed_changed()
  if self.stopped or self.pushed_timer then return end
  self.pushed_timer = core.timer(0.05, function()
    self.pushed_timer = nil
    if self.stopped then return end
    self:task(function() self:reload() end)
  end)
end

function Sched:load_dags()
  if not self.dags_dir and not self.watch_pushed then return end
  local res = self:scan_dags()
  self.dags = res.dags or {}
  self.import_errors = res.errors or {}
  self.files = res.files or {}
  for file, err in pairs(self.import_errors) do
    log("error", "import error in " .. file .. ": " .. tostring(err))
  end
end

-- Hot reload: the DAG folder changed (core.watch_tree).  The folder is
-- scanned again; a file whose source did not change keeps its DAG object,
-- a changed one becomes a new version (runs in progress keep the version
-- they started with, in run.dag), a file that stops loading keeps its
-- previous good DAGs and shows the import error, a deleted file's DAGs stop
-- being scheduled (their runs in progress go on).
function Sched:reload()
  if self.stopped or (not self.dags_dir and not self.watch_pushed) then return end
  if self.reload_dags_only then return self:load_dags() end
  local ok, res = pcall(self.scan_dags, self)
  if not ok then
    log("error", "reload of " .. tostring(self.dags_dir) .. ": " .. tostring(res))
    return
  end
  local old_dags, old_files = self.dags, self.files or {}
  local dags, files, errors = {}, res.files or {}, res.errors or {}
  for id, dag in pairs(res.dags or {}) do
    local prev = old_dags[id]
    if prev and prev.source_hash == dag.source_hash and prev.file == dag.file then
      dags[id] = prev
    else
      dags[id] = dag
    end
  end
  for file, err in pairs(errors) do
    local prev = old_files[file]
    if prev and prev.dag_ids and #prev.dag_ids > 0 then
      for _, id in ipairs(prev.dag_ids) do
        if not dags[id] and old_dags[id] then dags[id] = old_dags[id] end
      end
      files[file] = files[file] or {}
      if not files[file].dag_ids or #files[file].dag_ids == 0 then
        files[file].dag_ids = prev.dag_ids
      end
    end
    if self.import_errors[file] ~= err then
      log("error", "import error in " .. file .. ": " .. tostring(err))
    end
  end
  self.dags, self.files, self.import_errors = dags, files, errors
  for id, dag in pairs(old_dags) do
    if not dags[id] then
      if self.timers[id] then self.timers[id]:cancel(); self.timers[id] = nil end
      log("info", "dag " .. id .. " removed: its file is gone")
      self:emit("dag_removed", dag)
    end
  end
  for id, dag in pairs(dags) do
    if old_dags[id] ~= dag then
      log("info", ("dag %s: version %s from %s"):format(id, tostring(dag.source_hash),
                                                     tostring(dag.file)))
      self:emit("dag_loaded", dag)
      if not self.watched[id] then
        self.watched[id] = true
        self:watch_paused(id)
        self:watch_runs(id)
      end
      if not self.paused[id] then self:tick_dag(dag) end
    end
  end
  if self.on_reload then self.on_reload(self) end
  self:process()
end

function Sched:dag_count()
  local n = 0
  for _ in pairs(self.dags) do n = n + 1 end
  return n
end

-- ---- runs -------------------------------------------------------------------

local function new_ti(self, run, task)
  local ti = {
    run = run,
    task = task,
    task_id = task.id,
    state = "none",
    try_number = 0,
    max_tries = task.retries or 0,
    path = self:run_path(run) .. "/" .. task.id,
    persisted = false,
  }
  return ti
end

-- Makes the in-memory run for `rec` (a run record or the fields of a new
-- run) against `dag`; task instances from `tis` (records) when recovering.
function Sched:adopt_run(dag, rec, tis)
  local run = {
    dag_id = dag.id,
    run_id = rec.run_id,
    dag = dag,
    state = rec.state or "queued",
    run_type = rec.run_type or "manual",
    logical_date = rec.logical_date_epoch or records.date(rec.logical_date) or self.now(),
    conf = rec.conf or {},
    version = rec.version or dag.source_hash,
    external_trigger = rec.external_trigger,
    tis = {},
    unfinished = 0,
    persisted = rec.persisted ~= false,
  }
  run.data_interval_start = rec.data_interval_start_epoch
    or records.date(rec.data_interval_start) or run.logical_date
  run.data_interval_end = rec.data_interval_end_epoch
    or records.date(rec.data_interval_end) or run.logical_date
  run.queued_at = records.date(rec.queued_at) or self.now()
  run.start_date = records.date(rec.start_date)
  for _, tid in ipairs(dag.order) do
    local task = dag.tasks[tid]
    local ti = new_ti(self, run, task)
    local r = tis and tis[tid] and records.decode_ti(tis[tid])
    if r then
      ti.persisted = true
      ti.state = r.state or "none"
      ti.try_number = r.try_number or 0
      ti.max_tries = r.max_tries or ti.max_tries
      ti.xcom = r.xcom
      ti.xcoms = r.xcoms
      ti.log = r.log
      ti.first_start = r.first_start
      ti.lost = r.lost
      ti.start_date = r.start_date
      ti.end_date = r.end_date
      if not FINISHED[ti.state] then
        -- A try that was in flight when the last scheduler died did not
        -- finish: it runs again, without costing a retry, unless the
        -- executor settles it (a worker may have it).
        local adopted = false
        if ti.state == "running" or ti.state == "queued" then
          adopted = self.executor:adopt(ti, r)
          if not adopted then
            -- The dead scheduler's child lives on in its own process group
            -- (a worker, which owns no records, reads its own try's).
            if r.pid and self.records then core.killpg(r.pid, 9) end
            ti.lost = (ti.lost or 0) + 1
            ti.max_tries = ti.max_tries + 1
          end
        end
        if adopted then
          ti.first_start = r.first_start
        elseif (ti.state == "up_for_retry" or ti.state == "up_for_reschedule")
            and type(r.next_try_at) == "number" then
          ti.next_try_at = r.next_try_at
        else
          ti.state = "none"
        end
        self:mark(ti)
      end
    end
    run.tis[tid] = ti
    if not FINISHED[ti.state] then run.unfinished = run.unfinished + 1 end
  end
  if tis then
    for tid, r in pairs(tis) do
      if not dag.tasks[tid] and r.state ~= "removed" then
        -- The task left the DAG: Airflow marks its instance removed.
        local ti = { task = { id = tid, operator = r.operator }, task_id = tid,
                     run = run, state = "removed", try_number = r.try_number or 0,
                     max_tries = r.max_tries or 0, persisted = true,
                     path = self:run_path(run) .. "/" .. tid }
        self:mark(ti)
      end
    end
  end
  local key = run_key(run.dag_id, run.run_id)
  self.runs[key] = run
  self.known_runs[run.dag_id] = self.known_runs[run.dag_id] or {}
  self.known_runs[run.dag_id][run.run_id] = true
  return run
end

-- Creates a new run (queued) and starts it when max_active_runs allows.
-- opts: run_type, logical_date, data_interval_start/end, conf, run_id.
function Sched:create_run(dag, opts)
  local ld = opts.logical_date or self.now()
  local run_type = opts.run_type or "manual"
  local rec = {
    run_id = opts.run_id or records.run_id(run_type, ld),
    state = "queued",
    run_type = run_type,
    logical_date_epoch = ld,
    data_interval_start_epoch = opts.data_interval_start or ld,
    data_interval_end_epoch = opts.data_interval_end or ld,
    conf = opts.conf or {},
    version = dag.source_hash,
    external_trigger = run_type == "manual",
    persisted = false,
  }
  local known = self.known_runs[dag.id]
  if known and known[rec.run_id] then
    return nil, "ZNODEEXISTS"
  end
  local run = self:adopt_run(dag, rec, nil)
  run.fresh = true
  self:mark(run)
  self:queue_run(run)
  return run
end

function Sched:queue_run(run)
  local q = self.queued_runs[run.dag_id]
  if not q then
    q = {}
    self.queued_runs[run.dag_id] = q
  end
  q[#q + 1] = run
  self:activate_runs(run.dag_id)
end

function Sched:active_runs(dag_id)
  local list = self.runs_by_dag[dag_id]
  return list and #list or 0
end

-- Moves queued runs to running while the DAG has room (max_active_runs),
-- oldest logical date first.
function Sched:activate_runs(dag_id)
  local q = self.queued_runs[dag_id]
  if not q or #q == 0 then return end
  if self.paused[dag_id] then return end
  sort(q, function(a, b)
    if a.logical_date ~= b.logical_date then return a.logical_date < b.logical_date end
    return a.run_id < b.run_id
  end)
  local active = self.runs_by_dag[dag_id]
  if not active then
    active = {}
    self.runs_by_dag[dag_id] = active
  end
  while #q > 0 do
    local run = q[1]
    local limit = run.dag.max_active_runs or 16
    if #active >= limit then break end
    table.remove(q, 1)
    active[#active + 1] = run
    self:begin_run(run)
  end
end

function Sched:begin_run(run)
  run.state = "running"
  run.start_date = run.start_date or self.now()
  self:mark(run)
  if self.on_event then self:emit("run_started", run) end
  if run.unfinished == 0 then
    self:finish_run(run)
    return
  end
  local dag = run.dag
  local t = self.now()
  local ids = dag.topo or dag.order
  if run.fresh then
    -- Nothing has happened in a new run: every task with upstreams waits
    -- (no rule but `always` is met by upstreams that have not ended), so
    -- only the roots and the `always` tasks need a look.
    run.fresh = nil
    ids = dag.zkf_starts
    if not ids then
      ids = {}
      for _, tid in ipairs(dag.topo or dag.order) do
        local task = dag.tasks[tid]
        if #task.upstream == 0 or task.trigger_rule == "always" then ids[#ids + 1] = tid end
      end
      dag.zkf_starts = ids
    end
  end
  for _, tid in ipairs(ids) do
    local ti = run.tis[tid]
    local st = ti.state
    if st == "none" then
      self:push_work(ti)
    elseif (st == "up_for_retry" or st == "up_for_reschedule") and not ti.wait_timer then
      -- Recovered mid-delay: the delay goes on where it was.
      self:later(ti, max(0, (ti.next_try_at or t) - t))
    end
  end
  if dag.dagrun_timeout and not run.timeout_timer then
    local left = max(0, run.start_date + dag.dagrun_timeout - t)
    run.timeout_timer = core.timer(left, function()
      run.timeout_timer = nil
      self:run_timed_out(run)
      self:process()
    end)
  end
end

-- Stops a try in flight: its process group gets SIGTERM then SIGKILL, a
-- Lua task's coroutine is closed; the slot is given back.
function Sched:abort_try(ti)
  if not ti.attempt then return end
  self.executor:abort(ti)
  self:release(ti)
end

-- dagrun_timeout, as Airflow: the run fails and what had not finished is
-- skipped (a try in flight is stopped first).
function Sched:run_timed_out(run)
  if run.state ~= "running" then return end
  log("error", ("run %s %s: dagrun_timeout after %gs"):format(run.dag_id, run.run_id,
                                                            run.dag.dagrun_timeout))
  for _, tid in ipairs(run.dag.order) do
    local ti = run.tis[tid]
    if not FINISHED[ti.state] then
      if ti.wait_timer then ti.wait_timer:cancel(); ti.wait_timer = nil end
      self:abort_try(ti)
      ti.state = "skipped"
      ti.end_date = self.now()
      run.unfinished = run.unfinished - 1
      self:mark(ti)
    end
  end
  self:finish_run(run, "failed")
end

-- Ends a run.  Its state comes from its leaves, as Airflow's
-- DagRun.update_state decides: failed when a leaf failed or is
-- upstream_failed, else success (every leaf succeeded or was skipped).
-- `forced` ("failed") ends it regardless: dagrun_timeout.
function Sched:finish_run(run, forced)
  if run.state == "success" or run.state == "failed" then return end
  local failed = forced == "failed"
  for _, tid in ipairs(run.dag.leaves or {}) do
    local ti = run.tis[tid]
    if ti and (ti.state == "failed" or ti.state == "upstream_failed") then
      failed = true
    end
  end
  if run.timeout_timer then run.timeout_timer:cancel(); run.timeout_timer = nil end
  run.state = failed and "failed" or "success"
  run.end_date = self.now()
  self:mark(run)
  local key = run_key(run.dag_id, run.run_id)
  self.runs[key] = nil
  local active = self.runs_by_dag[run.dag_id]
  if active then
    for i = #active, 1, -1 do
      if active[i] == run then table.remove(active, i) end
    end
  end
  log("info", ("run %s %s: %s"):format(run.dag_id, run.run_id, run.state))
  self:emit("run_finished", run)
  local cb = failed and run.dag.on_failure or run.dag.on_success
  if cb then
    local ctx = self:run_context(run)
    ctx.reason = failed and "task_failure" or "success"
    async.spawn(cb, function(ok, err)
      if not ok then log("error", "dag " .. run.dag_id .. " callback: " .. tostring(err)) end
    end, ctx)
  end
  local waiters = self.run_waiters[key]
  if waiters then
    -- On the next turn: by then this turn's writes are in the store, so a
    -- waiter that reads the run back sees its end.
    self.run_waiters[key] = nil
    core.timer(0, function()
      for _, fn in ipairs(waiters) do fn(run) end
    end)
  end
  -- depends_on_past: the next run may now evaluate.
  self:wake_past_waiters(run)
  self:activate_runs(run.dag_id)
  if self.tick_blocked[run.dag_id] and not self.timers[run.dag_id] then
    -- Due scheduled runs waited for this one to end (max_active_runs).
    self.tick_blocked[run.dag_id] = nil
    local dag = self.dags[run.dag_id]
    if dag then
      self.timers[run.dag_id] = core.timer(0, function()
        self.timers[run.dag_id] = nil
        self:task(function()
          self:tick_dag(dag)
          self:process()
        end)
      end)
    end
  end
end

-- ---- evaluation ---------------------------------------------------------------

function Sched:push_work(ti)
  local w = self.work
  w[#w + 1] = ti
end

local DONE_FOR_PAST = { success = true, skipped = true }

-- depends_on_past (Airflow's PrevDagrunDep): the same task in the previous
-- run by logical date must have succeeded or been skipped; no previous run,
-- or a previous run without this task, allows it.  Returns "run" or "wait".
-- A previous instance that ended otherwise (failed, upstream_failed) makes
-- this one wait too, as Airflow does (its deadlock check passes over
-- depends_on_past tasks): the run stays running until that instance is
-- cleared and succeeds.  ti.waiting_for says what it waits for.  Only
-- depends_on_past tasks come here, so reading the store is affordable.
function Sched:past_allows(ti)
  local run = ti.run
  local best
  for _, r in ipairs(self.runs_by_dag[run.dag_id] or {}) do
    if r.logical_date < run.logical_date and (not best or r.logical_date > best.logical_date) then
      best = r
    end
  end
  -- Finished runs are no longer in memory: ask the store, after writing
  -- this turn's changes (a run that ended in this turn is in neither).
  self:flush()
  local stored_best_ld, stored_best_id
  for _, rid in ipairs(self.st:run_ids(run.dag_id)) do
    if rid ~= run.run_id and not (best and rid == best.run_id) then
      local rec = self.st:get_run(run.dag_id, rid)
      local ld = rec and records.date(rec.logical_date)
      if ld and ld < run.logical_date and (not stored_best_ld or ld > stored_best_ld) then
        stored_best_ld, stored_best_id = ld, rid
      end
    end
  end
  local prev_id
  if best and (not stored_best_ld or best.logical_date >= stored_best_ld) then
    local pti = best.tis[ti.task_id]
    if not pti or DONE_FOR_PAST[pti.state] then return self:note_wait(ti, nil) end
    -- Woken when that instance ends (Sched:finish), and whenever a run of
    -- this DAG ends: a failed one may be cleared and succeed.
    local pw = pti.past_waiters or {}
    pti.past_waiters = pw
    local listed = false
    for i = 1, #pw do if pw[i] == ti then listed = true end end
    if not listed then pw[#pw + 1] = ti end
    if FINISHED[pti.state] then ti.past_blocked = true end
    prev_id = best.run_id
  elseif stored_best_id then
    local rec = self.st:get_ti(run.dag_id, stored_best_id, ti.task_id)
    if not rec or DONE_FOR_PAST[rec.state] then return self:note_wait(ti, nil) end
    -- A previous run that is not in memory (ended, queued, or another
    -- scheduler's): look again whenever a run of this DAG ends (one that
    -- is cleared runs again here, and ends).
    ti.past_blocked = true
    prev_id = stored_best_id
  else
    return self:note_wait(ti, nil)
  end
  self:note_wait(ti, ("waiting for %s of %s"):format(ti.task_id, prev_id))
  return "wait"
end

-- Records why `ti` waits (nil: it does not), written only when it changes;
-- returns "run" for past_allows.
function Sched:note_wait(ti, why)
  if ti.waiting_for ~= why then
    ti.waiting_for = why
    self:mark(ti)
  end
  return "run"
end

-- A run of the DAG ended: the instances waiting on a past that was not in
-- memory, or that had failed, look again.
function Sched:wake_past_waiters(run)
  for _, r in ipairs(self.runs_by_dag[run.dag_id] or {}) do
    if r.has_past_blocked then
      r.has_past_blocked = nil
      for _, ti in pairs(r.tis) do
        if ti.past_blocked and ti.state == "none" then
          ti.past_blocked = nil
          self:push_work(ti)
        end
      end
    end
  end
end

function Sched:evaluate(ti)
  if ti.state ~= "none" then return end
  local run = ti.run
  if run.state ~= "running" then return end
  local task = ti.task
  local ups = task.upstream
  -- One counts table serves every evaluation: decide() keeps no reference.
  local c = self.counts
  c.total, c.done, c.success, c.skipped, c.failed, c.upstream_failed, c.removed =
    #ups, 0, 0, 0, 0, 0, 0
  local tis = run.tis
  for i = 1, #ups do
    local s = tis[ups[i]].state
    if FINISHED[s] then
      c.done = c.done + 1
      c[s] = c[s] + 1
    end
  end
  local verdict = rules.decide(task.trigger_rule or "all_success", c)
  if verdict == "run" then
    if task.depends_on_past then
      if self:past_allows(ti) ~= "run" then
        if ti.past_blocked then run.has_past_blocked = true end
        return
      end
    end
    self:set_state(ti, "scheduled")
    self:enqueue(ti)
  elseif verdict ~= "wait" then
    self:finish(ti, verdict)
  end
end

function Sched:enqueue(ti)
  ti.prio = ti.task.priority_weight or 1
  pq_push(self.ready, ti)
end

function Sched:set_state(ti, s)
  ti.state = s
  self:mark(ti)
end

-- Ends a task instance in a final state and wakes what depends on it.
function Sched:finish(ti, s, err)
  local run = ti.run
  local was_finished = FINISHED[ti.state]
  ti.state = s
  ti.end_date = ti.end_date or self.now()
  if err then ti.error = tostring(err) end
  self:mark(ti)
  if not was_finished then
    run.unfinished = run.unfinished - 1
  end
  if self.on_event then self:emit("ti_finished", ti) end
  local task = ti.task
  if s == "success" and task.on_success then
    self:callback(ti, task.on_success)
  elseif s == "failed" and task.on_failure then
    self:callback(ti, task.on_failure, err)
  end
  local downs = task.downstream
  for i = 1, #downs do
    local d = run.tis[downs[i]]
    if d and d.state == "none" then self:push_work(d) end
  end
  if ti.past_waiters then
    for _, w in ipairs(ti.past_waiters) do
      if w.state == "none" then self:push_work(w) end
    end
    ti.past_waiters = nil
  end
  if run.unfinished <= 0 and run.state == "running" then
    self:finish_run(run)
  end
end

function Sched:callback(ti, fn, err)
  local ctx = self:context(ti)
  ctx.exception = err and tostring(err) or nil
  async.spawn(fn, function(ok, cerr)
    if not ok then
      self:task_log(ti, "callback failed: " .. tostring(cerr))
      log("error", ("%s.%s callback: %s"):format(ti.run.dag_id, ti.task_id, tostring(cerr)))
    end
  end, ctx)
end

-- ---- the main step ------------------------------------------------------------

-- Evaluates pending work and starts ready tasks until nothing changes, then
-- writes what changed.  Re-entrant calls return at once: the outer call
-- picks their work up.
function Sched:process()
  if self.processing or self.stopped then return end
  if self.async_store and not coroutine.isyieldable() then
    -- On a remote store a pass may read (a pool's size, a past run for
    -- depends_on_past): from a timer or a watch it runs in a coroutine,
    -- where those reads yield instead of blocking the loop.
    return self:task(function() self:process() end)
  end
  self.processing = true
  local budget = TURN_BUDGET
  local ok, err = pcall(function()
    while true do
      local w = self.work
      if #w > 0 then
        self.work = {}
        for i = 1, #w do self:evaluate(w[i]) end
      elseif self.ready.n > 0 and budget > 0 then
        local started = self:start_ready(budget)
        budget = budget - started
        if started == 0 and #self.work == 0 then break end
      else
        break
      end
    end
  end)
  self.processing = false
  if not ok then log("error", "scheduler: " .. tostring(err)) end
  self:flush()
  if budget <= 0 and (self.ready.n > 0 or #self.work > 0) and not self.yield_timer then
    -- Let the loop breathe (HTTP, signals) before the next batch.
    self.yield_timer = core.timer(0, function()
      self.yield_timer = nil
      self:process()
    end)
  end
end

function Sched:pool(name)
  local p = self.pools[name]
  if not p then
    p = { slots = DEFAULT_POOL_SLOTS, used = 0, blocked = pq_new() }
    local rec = self.st:read(self.st:path("pools", name))
    if rec and type(rec.slots) == "number" then p.slots = rec.slots end
    self.pools[name] = p
  end
  return p
end

-- Starts ready task instances within the limits; returns how many started.
-- A task instance that does not fit waits in a queue of its DAG
-- (max_active_tasks) or of its pool, not in the ready queue: a slot freed
-- later moves the best of those back (Sched:release), so a full pool costs
-- nothing per turn however many instances wait for it.
function Sched:start_ready(budget)
  local ready = self.ready
  local started = 0
  local running_by_dag, blocked_by_dag, pools = self.running_by_dag, self.blocked_by_dag, self.pools
  while started < budget and self.running < self.parallelism do
    local ti = pq_pop(ready)
    if not ti then break end
    local run = ti.run
    if ti.state == "scheduled" and run.state == "running" then
      local task = ti.task
      local dag_id = run.dag_id
      local pool = pools[task.pool or "default_pool"] or self:pool(task.pool or "default_pool")
      local slots = task.pool_slots or 1
      if (running_by_dag[dag_id] or 0) >= (run.dag.max_active_tasks or 16) then
        local h = blocked_by_dag[dag_id]
        if not h then
          h = pq_new()
          blocked_by_dag[dag_id] = h
        end
        pq_push(h, ti)
      elseif pool.used + slots > pool.slots then
        pq_push(pool.blocked, ti)
      else
        started = started + 1
        self:start_ti(ti, pool, slots)
      end
    end
  end
  return started
end

-- ---- running one try ------------------------------------------------------------

function Sched:log_path(ti)
  local run = ti.run
  local prefix = run.log_prefix
  if not prefix then
    prefix = ("%s/%s/%s/"):format(self.log_dir, run.dag_id, run.run_id)
    run.log_prefix = prefix
    run.log_prefix_plain = not find(prefix, '[%c"\\\128-\255]')
  end
  -- One file per try beside the run's other logs: a folder per task cost
  -- every shell try a mkdir.
  local path = prefix .. ti.task_id .. "." .. ti.try_number .. ".log"
  -- Task ids are [%w_.-]: the path needs no JSON escaping when the
  -- prefix needs none; records.encode_ti then skips scanning it.
  if run.log_prefix_plain then
    ti.log_json, ti.log_json_of = '"' .. path .. '"', path
  end
  return path
end

function Sched:task_log(ti, msg)
  local path = ti.log
  -- A cluster leader's tries log on their workers' machines.
  if not path or self.executor.logs_elsewhere then return end
  local f = io.open(path, "a")
  if not f and not ti.log_ready then
    -- First line of the run's first log: make the folder, once.
    local dir = path:match("^(.*)/[^/]*$")
    if dir then core.mkdirs(dir) end
    f = io.open(path, "a")
  end
  ti.log_ready = true
  if f then
    f:write(("[%s] %s\n"):format(iso(self.now(), true), msg))
    f:close()
  end
end

-- Starts the next try of `ti` through the executor, its slots taken.
function Sched:start_ti(ti, pool, slots)
  self:take_slots(ti, pool, slots)
  return self.executor:start(ti)
end

-- Counts a try against parallelism, max_active_tasks and `pool` (nil: the
-- task's own; false: none, a worker's try whose leader counted it) until
-- Sched:release.
function Sched:take_slots(ti, pool, slots)
  local dag_id = ti.run.dag_id
  self.running = self.running + 1
  self.running_by_dag[dag_id] = (self.running_by_dag[dag_id] or 0) + 1
  if pool == nil then
    local name = ti.task.pool or "default_pool"
    pool = self.pools[name] or self:pool(name)
    slots = ti.task.pool_slots or 1
  end
  if pool then
    pool.used = pool.used + slots
    ti.slot_pool, ti.slot_n = pool, slots
  end
end

-- ---- the in-process executor: a try runs here, as a coroutine ---------------------

local Inproc = {}
Inproc.__index = Inproc

-- The default executor (the header has the interface).
function _M.inprocess_executor()
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

-- ---- what executors and the cluster call ----------------------------------------------

-- A try has ended: applied here, or handed to on_try_end (a worker reports
-- it to its leader) with the try's slots given back.
function Sched:try_ended(ti, ok, res, extra)
  local on_end = self.on_try_end
  if on_end then
    self:release(ti)
    return on_end(ti, ok, res, extra)
  end
  self:end_try(ti, ok, res, extra)
  self:process()
end

-- A try that has no end (its worker went away): it runs again without
-- costing a retry, as a try lost by a dead scheduler does.
function Sched:try_lost(ti, why)
  log("warn", ("task %s.%s try %d lost: %s"):format(ti.run.dag_id, ti.task_id, ti.try_number,
                                                   tostring(why)))
  self:release(ti)
  ti.lost = (ti.lost or 0) + 1
  ti.max_tries = ti.max_tries + 1
  ti.error = tostring(why)
  ti.end_date = self.now()
  if ti.run.state ~= "running" then
    self:mark(ti)
    return
  end
  self:set_state(ti, "scheduled")
  self:enqueue(ti)
  self:process()
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

-- A worker runs one try of a run it does not own: the run is made from its
-- record `rec` and the records `tis` of the task's ancestors (their
-- XComs), and stays out of this scheduler's runs, so nothing else of it is
-- scheduled here.  Returns the instance, ready for start_try; nil and an
-- error when the DAG has no such task.
function Sched:prepare_try(dag, rec, tis, task_id, try_number)
  local run = self:adopt_run(dag, rec, tis)
  self.runs[run_key(dag.id, rec.run_id)] = nil
  run.state = "running"
  local ti = run.tis[task_id]
  if not ti then return nil, "task '" .. task_id .. "' is not in DAG " .. dag.id end
  ti.try_number = try_number - 1
  ti.state = "scheduled"
  return ti
end

-- Starts a try that prepare_try made: its leader counted it in its pool.
function Sched:start_try(ti)
  self:start_ti(ti, false, 0)
end

function Sched:release(ti)
  local attempt = ti.attempt
  if attempt then
    if attempt.timer then attempt.timer:cancel(); attempt.timer = nil end
    if attempt.kill_timer then attempt.kill_timer:cancel(); attempt.kill_timer = nil end
  end
  ti.attempt = nil
  ti.pid = nil
  self.running = self.running - 1
  local dag_id = ti.run.dag_id
  self.running_by_dag[dag_id] = self.running_by_dag[dag_id] - 1
  local waiting = self.blocked_by_dag[dag_id]
  if waiting and waiting.n > 0 then pq_push(self.ready, pq_pop(waiting)) end
  local pool = ti.slot_pool
  if pool then
    pool.used = pool.used - ti.slot_n
    ti.slot_pool, ti.slot_n = nil, nil
    self:release_pool(pool)
  end
end

-- Slots of `pool` came free (a try ended, or its size grew): the best
-- candidates that fit move back to the ready queue, as Airflow passes over
-- an instance whose pool_slots exceed the open slots to the next one.
function Sched:release_pool(pool)
  local h = pool.blocked
  local free = pool.slots - pool.used
  local too_big
  while free > 0 and h.n > 0 do
    local w = pq_pop(h)
    local need = w.task.pool_slots or 1
    if need <= free then
      free = free - need
      pq_push(self.ready, w)
    else
      too_big = too_big or {}
      too_big[#too_big + 1] = w
    end
  end
  if too_big then
    for i = 1, #too_big do pq_push(h, too_big[i]) end
  end
end

local function errtext(e)
  if type(e) == "table" then return tostring(e.msg or e.message or "error") end
  return tostring(e)
end

function Sched:end_try(ti, ok, res, extra)
  local task = ti.task
  self:release(ti)
  ti.end_date = self.now()
  local op = task.op
  local follow
  if ok then
    if type(res) == "table" and res.zkflow_reschedule then
      -- A sensor in reschedule mode gives its slot back until the next poke;
      -- as in Airflow the poke is not a try.
      ti.state = "up_for_reschedule"
      ti.try_number = ti.try_number - 1
      ti.next_try_at = self.now() + res.zkflow_reschedule
      self:mark(ti)
      self:later(ti, res.zkflow_reschedule)
      return
    end
    if op and op.branch then
      -- Airflow fails a branch that names tasks that are not directly
      -- downstream of it; such a failure retries like any other.
      local berr
      follow, berr = self:branch_targets(ti, res)
      if not follow then ok, res = false, berr end
    end
  end
  if ok then
    ti.xcom = res
    if extra and extra.skip then
      self:task_log(ti, "marked skipped: " .. tostring(extra.skip))
      self:finish(ti, "skipped")
      return
    end
    self:finish(ti, "success")
    if follow then
      self:follow_branch(ti, follow)
    elseif op and op.short_circuit and not res then
      self:short_circuit(ti)
    end
    return
  end
  local err = res
  if type(err) == "table" and err.zkflow_skip then
    self:task_log(ti, "skipped: " .. errtext(err))
    ti.xcom = nil
    self:finish(ti, "skipped")
    return
  end
  local msg = errtext(err)
  self:task_log(ti, "failed: " .. msg)
  -- The traceback goes to the task's log only.
  log("warn", ("task %s.%s try %d failed: %s"):format(ti.run.dag_id, ti.task_id, ti.try_number,
                                                    msg:match("^[^\n]*")))
  if type(err) == "table" and (err.zkflow_soft_fail
      or (err.zkflow_timeout and task.soft_fail and task.op and task.op.sensor)) then
    -- A sensor's execution_timeout with soft_fail skips, as Airflow's
    -- AirflowTaskTimeout does.
    self:finish(ti, "skipped", msg)
    return
  end
  local no_retry = type(err) == "table" and err.zkflow_fail
  if not no_retry and ti.try_number <= ti.max_tries then
    ti.state = "up_for_retry"
    ti.error = msg
    local delay = self:retry_delay(ti)
    ti.next_try_at = self.now() + delay
    self:mark(ti)
    self:task_log(ti, ("up for retry in %gs (try %d of %d)"):format(delay, ti.try_number, ti.max_tries + 1))
    self:emit("ti_retry", ti)
    if task.on_retry then self:callback(ti, task.on_retry, msg) end
    self:later(ti, delay)
    return
  end
  self:finish(ti, "failed", msg)
end

-- Airflow's retry delay: retry_delay, doubled for each try with
-- retry_exponential_backoff, capped by max_retry_delay.
function Sched:retry_delay(ti) -- luacheck: ignore 212/self
  local task = ti.task
  local delay = task.retry_delay or 300
  if task.retry_exponential_backoff then
    local tries = ti.try_number - (ti.lost or 0)
    delay = delay * 2 ^ max(0, tries - 1)
  end
  if task.max_retry_delay then delay = min(delay, task.max_retry_delay) end
  return delay
end

-- After `delay` seconds the instance is scheduled again.
function Sched:later(ti, delay)
  local run = ti.run
  ti.wait_timer = core.timer(delay, function()
    ti.wait_timer = nil
    if ti.run ~= run or run.state ~= "running" then return end
    if ti.state ~= "up_for_retry" and ti.state ~= "up_for_reschedule" then return end
    ti.next_try_at = nil
    self:set_state(ti, "scheduled")
    self:enqueue(ti)
    self:process()
  end)
end

-- The set of task ids a branch task chose (its return value: an id, a
-- task, or a list of them; nil follows nothing), or nil and an error when
-- one of them is not directly downstream of the branch.
function Sched:branch_targets(ti, res) -- luacheck: ignore 212/self
  local follow = {}
  local list = res
  if type(res) ~= "table" or res.id then list = { res } end
  local downs = {}
  for _, did in ipairs(ti.task.downstream) do downs[did] = true end
  for _, id in ipairs(list) do
    if type(id) == "table" then id = id.id end
    if id ~= nil then
      if not downs[id] then
        return nil, ("branch task '%s' returned '%s', which is not directly downstream of it")
                    :format(ti.task_id, tostring(id))
      end
      follow[id] = true
    end
  end
  return follow
end

-- Skips the direct downstream tasks of a branch that are neither chosen
-- nor downstream of a chosen one, as Airflow's SkipMixin.skip_all_except
-- does: in branch >> {a, join}, a >> join, choosing a leaves join to its
-- trigger rule.  What lies after a skipped task follows its own rule.
function Sched:follow_branch(ti, follow)
  local tis = ti.run.tis
  local stack = {}
  for id in pairs(follow) do stack[#stack + 1] = id end
  while #stack > 0 do
    local t = tis[table.remove(stack)].task
    for _, did in ipairs(t.downstream) do
      if not follow[did] then
        follow[did] = true
        stack[#stack + 1] = did
      end
    end
  end
  for _, did in ipairs(ti.task.downstream) do
    local d = tis[did]
    if not follow[did] and d.state == "none" then
      self:finish(d, "skipped")
    end
  end
end

function Sched:short_circuit(ti)
  local run = ti.run
  if ti.task.ignore_downstream_trigger_rules == false then
    for _, did in ipairs(ti.task.downstream) do
      local d = run.tis[did]
      if d.state == "none" then self:finish(d, "skipped") end
    end
    return
  end
  local seen = {}
  local stack = { ti.task_id }
  while #stack > 0 do
    local id = table.remove(stack)
    for _, did in ipairs(run.tis[id].task.downstream) do
      if not seen[did] then
        seen[did] = true
        stack[#stack + 1] = did
        local d = run.tis[did]
        if d.state == "none" or d.state == "scheduled" then
          self:finish(d, "skipped")
        end
      end
    end
  end
end

-- ---- the task context -------------------------------------------------------------

local ds = time.ds

function Sched:variables()
  local st, root = self.store, self.st:path("variables")
  return setmetatable({}, {
    __index = function(_, k)
      local data = st:get(root .. "/" .. tostring(k))
      if data == nil then return nil end
      local v = json_decode(data)
      if v == nil then return data end
      return v
    end,
  })
end

-- The run-level part of the template context, built once per run and
-- shared by its task instances.
function Sched:run_base(run)
  local b = run.ctx_base
  if b then return b end
  local dag = run.dag
  local ld = run.logical_date
  local conf = run.conf or {}
  local d = ds(ld)
  b = {
    ds = d,
    ds_nodash = (d:gsub("-", "")),
    ts = iso(ld),
    ts_nodash = time.ts_nodash(ld),
    logical_date = iso(ld),
    data_interval_start = iso(run.data_interval_start),
    data_interval_end = iso(run.data_interval_end),
    run_id = run.run_id,
    conf = conf,
    var = self:variables(),
    dag = { dag_id = run.dag_id, tags = dag.tags },
    dag_run = { run_id = run.run_id, conf = conf, run_type = run.run_type,
                logical_date = iso(ld) },
  }
  run.ctx_base = b
  return b
end

-- params as a task sees them: the DAG's < default_args' < the task's
-- (merged by zkflow.dag) < the run's conf.
local function params_of(run, task)
  local p = {}
  for k, v in pairs(task and task.params or run.dag.params or {}) do p[k] = v end
  for k, v in pairs(run.conf or {}) do p[k] = v end
  return p
end

-- A context for a DAG-level callback (a fresh table).
function Sched:run_context(run)
  local ctx = {}
  for k, v in pairs(self:run_base(run)) do ctx[k] = v end
  ctx.params = params_of(run, nil)
  return ctx
end

-- The per-instance fields of a task's context, built when first read: most
-- tasks read few of them, and a scheduler starts thousands of tasks a turn.
local CTX_LAZY = {}

function CTX_LAZY.params(_, ti)
  return params_of(ti.run, ti.task)
end

function CTX_LAZY.ti(_, ti)
  local run = ti.run
  return { task_id = ti.task_id, dag_id = run.dag_id, run_id = run.run_id,
           try_number = ti.try_number, max_tries = ti.max_tries, map_index = -1,
           log = ti.log or nil }
end

function CTX_LAZY.task(_, ti)
  return { task_id = ti.task_id, operator = ti.task.operator }
end

function CTX_LAZY.xcom(self, ti)
  local run = ti.run
  local function pull(task_id, key)
    local other = run.tis[task_id or ti.task_id]
    if not other then return nil end
    if key == nil or key == "return_value" then return other.xcom end
    return other.xcoms and other.xcoms[key]
  end
  return setmetatable({
    pull = pull,
    push = function(key, value)
      ti.xcoms = ti.xcoms or {}
      ti.xcoms[key] = value
      self:mark(ti)
    end,
  }, { __call = function(_, task_id, key) return pull(task_id, key) end })
end

function CTX_LAZY.log(self, ti)
  return function(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    self:task_log(ti, concat(parts, " ", 1, parts.n))
  end
end

-- The context of a task instance (`ctx` in Lua tasks, the environment of
-- its templates): the run's shared fields plus its own, made on first use.
-- The instance a context belongs to, under a key no template can name.
local CTX_TI = {}
local CTX_MT = {
  __index = function(ctx, k)
    local f = CTX_LAZY[k]
    local ti = rawget(ctx, CTX_TI)
    if f then
      local v = f(ti.sched, ti)
      rawset(ctx, k, v)
      return v
    end
    return ti.run.ctx_base[k]
  end,
}

function Sched:context(ti)
  self:run_base(ti.run)
  ti.sched = self
  return setmetatable({ [CTX_TI] = ti }, CTX_MT)
end

-- What an executor may ask of the scheduler for one try.
function Sched:runtime(ti, attempt)
  local sched = self
  local rt = { store = self.store, scheduler = self }
  function rt.log(...)
    local parts = table.pack(...)
    for i = 1, parts.n do parts[i] = tostring(parts[i]) end
    sched:task_log(ti, concat(parts, " ", 1, parts.n))
  end
  function rt.sleep(s) return async.sleep(s) end
  -- Runs a child with the try's log as its output; returns code, signal.
  function rt.spawn(spec)
    -- core.spawn makes the log's folder itself.
    spec.log = ti.log
    ti.log_ready = true
    local code, sig, out = async.exec(spec, function(p)
      -- The pid reaches the store with this turn's writes: a scheduler
      -- that dies kills the group of what it had started (recover()).
      attempt.proc = p
      ti.pid = p.pid
      sched:mark(ti)
      if sched.on_pid then sched.on_pid(ti) end
    end)
    attempt.proc = nil
    if attempt.timed_out then
      error({ zkflow_timeout = true,
              msg = "execution timeout after " .. ti.task.execution_timeout .. "s" })
    end
    return code, sig, out
  end
  function rt.env()
    local run = ti.run
    return {
      ZKFLOW_DAG_ID = run.dag_id,
      ZKFLOW_RUN_ID = run.run_id,
      ZKFLOW_TASK_ID = ti.task_id,
      ZKFLOW_TRY_NUMBER = tostring(ti.try_number),
      ZKFLOW_DS = ds(run.logical_date),
      ZKFLOW_TS = iso(run.logical_date),
      ZKFLOW_LOGICAL_DATE = iso(run.logical_date),
      ZKFLOW_DATA_INTERVAL_START = iso(run.data_interval_start),
      ZKFLOW_DATA_INTERVAL_END = iso(run.data_interval_end),
      ZKFLOW_LOG = ti.log,
    }
  end
  function rt.first_start() return ti.first_start end
  function rt.try_number() return ti.try_number end
  -- State of a task (or of the run when task_id is nil) of another DAG's
  -- run at `logical_date` (epoch seconds); nil when there is none.
  function rt.external_state(dag_id, task_id, logical_date)
    for _, r in pairs(sched.runs) do
      if r.dag_id == dag_id and r.logical_date == logical_date then
        if not task_id then return r.state end
        local t = r.tis[task_id]
        return t and t.state
      end
    end
    for _, rid in ipairs(sched.st:run_ids(dag_id)) do
      local rec = sched.st:get_run(dag_id, rid)
      if rec and records.date(rec.logical_date) == logical_date then
        if not task_id then return rec.state end
        local t = sched.st:get_ti(dag_id, rid, task_id)
        return t and t.state
      end
    end
    return nil
  end
  rt.run = { logical_date = ti.run.logical_date,
             data_interval_start = ti.run.data_interval_start,
             data_interval_end = ti.run.data_interval_end }
  return rt
end

-- ---- schedules ----------------------------------------------------------------------

-- A schedule's intervals are zkflow.time's.
local next_interval, last_interval = time.next_interval, time.last_interval
_M.next_interval, _M.last_interval = next_interval, last_interval

function Sched:dag_meta(dag_id)
  return self.st:read(self.st:path("dags", dag_id, "meta")) or {}
end

-- Creates the scheduled runs that are due for `dag` and sets the timer for
-- the next one.  Airflow's rule: the run for an interval starts when the
-- interval has ended; catchup creates every missed one, otherwise only the
-- latest.
function Sched:tick_dag(dag)
  if self.timers[dag.id] then self.timers[dag.id]:cancel(); self.timers[dag.id] = nil end
  if not self.schedule_runs or self.stopped then return end
  local sch = dag.schedule
  if sch == nil then return end
  local t = self.now()
  local meta = self:dag_meta(dag.id)
  if sch == "@once" then
    if meta.last_logical then return end
    local start = dag.start_date or t
    if start > t then
      self.timers[dag.id] = core.timer(start - t, function()
        self:task(function() self:tick_dag(dag); self:process() end)
      end)
      return
    end
    self:create_run(dag, { run_type = "scheduled", logical_date = start,
                           data_interval_start = start, data_interval_end = start })
    self.st:write(self.st:path("dags", dag.id, "meta"), { last_logical = start })
    return
  end
  local from
  if meta.last_logical then
    local _, e = next_interval(dag, meta.last_logical)
    from = e and meta.last_logical + 1
  end
  from = from or dag.start_date or t
  local created, last = 0, meta.last_logical
  local s, e = next_interval(dag, from)
  if not dag.catchup and s and e and e <= t then
    -- Only the latest complete interval runs; computed, not walked to, so
    -- an old start_date costs nothing.
    local ls, le = last_interval(dag, t)
    if ls and ls > s then s, e = ls, le end
  end
  -- Airflow creates no scheduled run while the DAG has max_active_runs
  -- runs active or queued; finish_run() ticks the DAG again.
  local limit = dag.max_active_runs or 16
  local q = self.queued_runs[dag.id]
  local pending = self:active_runs(dag.id) + (q and #q or 0)
  self.tick_blocked[dag.id] = nil
  while s and e and e <= t and (not dag.end_date or s <= dag.end_date) do
    if pending >= limit then
      self.tick_blocked[dag.id] = true
      break
    end
    self:create_run(dag, { run_type = "scheduled", logical_date = s,
                           data_interval_start = s, data_interval_end = e })
    last = s
    created = created + 1
    pending = pending + 1
    s, e = next_interval(dag, e)
  end
  if last ~= meta.last_logical then
    self.st:write(self.st:path("dags", dag.id, "meta"), { last_logical = last })
  end
  if s and e and (not dag.end_date or s <= dag.end_date)
      and not self.tick_blocked[dag.id] then
    local delay = max(0, e - self.now())
    self.timers[dag.id] = core.timer(delay, function()
      self.timers[dag.id] = nil
      self:task(function()
        self:tick_dag(dag)
        self:process()
      end)
    end)
  end
end

-- ---- watching the store: triggers, pauses, requests ------------------------------------

function Sched:watch_runs(dag_id)
  local path = self.st:path("runs", dag_id)
  self.store:create(path, "", { parents = true })
  local list = self.store:children(path, function()
    if self.stopped then return end
    self:task(function()
      self:watch_runs(dag_id)
      self:process()
    end)
  end)
  local known = self.known_runs[dag_id] or {}
  self.known_runs[dag_id] = known
  for _, rid in ipairs(list or {}) do
    if not known[rid] then
      known[rid] = true
      local rec = self.st:get_run(dag_id, rid)
      local dag = self.dags[dag_id]
      if rec and dag and (rec.state == "queued" or rec.state == "running") then
        rec.run_id = rid
        local run = self:adopt_run(dag, rec, self.st:list_tis(dag_id, rid))
        self:queue_run(run)
      end
    end
  end
end

function Sched:watch_paused(dag_id)
  local path = self.st:path("dags", dag_id, "paused")
  local stat = self.store:exists(path, function()
    if self.stopped then return end
    self:task(function()
      self:watch_paused(dag_id)
      self:process()
    end)
  end)
  local was = self.paused[dag_id]
  self.paused[dag_id] = stat ~= nil
  if was and not self.paused[dag_id] then
    log("info", "dag " .. dag_id .. " unpaused")
    self:activate_runs(dag_id)
    local dag = self.dags[dag_id]
    if dag then self:tick_dag(dag) end
  elseif self.paused[dag_id] and not was then
    log("info", "dag " .. dag_id .. " paused")
    if self.timers[dag_id] then self.timers[dag_id]:cancel(); self.timers[dag_id] = nil end
  end
end

function Sched:watch_requests()
  local path = self.st:path("requests")
  self.store:create(path, "", { parents = true })
  local list = self.store:children(path, function()
    if self.stopped then return end
    self:task(function()
      self:watch_requests()
      self:process()
    end)
  end)
  for _, name in ipairs(list or {}) do
    local p = path .. "/" .. name
    local rec = self.st:read(p)
    self.store:delete(p)
    if rec and rec.op == "clear" then
      self:clear(rec.dag_id, rec.run_id, rec.task_ids, rec.downstream)
    elseif rec then
      log("warn", "unknown request " .. p .. ": " .. tostring(rec.op))
    end
  end
end

-- Airflow's clear: the chosen task instances (and with `downstream` every
-- task after them) go back to none and may run again; the run runs again.
function Sched:clear(dag_id, run_id, task_ids, downstream)
  local dag = self.dags[dag_id]
  if not dag then
    log("warn", "clear: no DAG " .. tostring(dag_id))
    return
  end
  local key = run_key(dag_id, run_id)
  local run = self.runs[key]
  if not run then
    local rec = self.st:get_run(dag_id, run_id)
    if not rec then return end
    rec.run_id = run_id
    run = self:adopt_run(dag, rec, self.st:list_tis(dag_id, run_id))
    run.state = "queued"
  end
  local chosen = {}
  local ids = task_ids
  if not ids or #ids == 0 then ids = dag.order end
  local stack = {}
  for _, id in ipairs(ids) do
    if dag.tasks[id] then chosen[id] = true; stack[#stack + 1] = id end
  end
  if downstream then
    while #stack > 0 do
      local id = table.remove(stack)
      for _, d in ipairs(dag.tasks[id].downstream) do
        if not chosen[d] then chosen[d] = true; stack[#stack + 1] = d end
      end
    end
  end
  for id in pairs(chosen) do
    local ti = run.tis[id]
    if ti.state ~= "running" and ti.state ~= "queued" then
      if FINISHED[ti.state] then run.unfinished = run.unfinished + 1 end
      if ti.wait_timer then ti.wait_timer:cancel(); ti.wait_timer = nil end
      ti.state = "none"
      ti.max_tries = ti.try_number + (ti.task.retries or 0)
      ti.end_date = nil
      self:mark(ti)
    end
  end
  log("info", ("cleared %s %s"):format(dag_id, run_id))
  if run.state == "running" then
    for id in pairs(chosen) do self:push_work(run.tis[id]) end
  else
    run.state = "queued"
    run.end_date = nil
    self:mark(run)
    local active = self.runs_by_dag[dag_id]
    local found = false
    for _, r in ipairs(active or {}) do if r == run then found = true end end
    if not found then self:queue_run(run) end
  end
end

-- ---- life cycle ------------------------------------------------------------------------

-- Reads back the runs a previous scheduler left unfinished.
function Sched:recover()
  for _, dag_id in ipairs(self.st:run_dags()) do
    local dag = self.dags[dag_id]
    local known = self.known_runs[dag_id] or {}
    self.known_runs[dag_id] = known
    for _, rid in ipairs(self.st:run_ids(dag_id)) do
      known[rid] = true
      if dag then
        local rec = self.st:get_run(dag_id, rid)
        if rec and (rec.state == "running" or rec.state == "queued") then
          rec.run_id = rid
          local run = self:adopt_run(dag, rec, self.st:list_tis(dag_id, rid))
          log("info", ("resuming run %s %s"):format(dag_id, rid))
          self:queue_run(run)
        end
      end
    end
  end
end

local hostname = state.hostname

-- Registers this scheduler as an ephemeral member (/members/schedulers/<id>):
-- `zkflow members` lists it while the process lives; the store removes it
-- when the process ends, a kill -9 included (the next open reaps it).  A
-- standalone scheduler is its own leader.
function Sched:register_member()
  local path = self.st:path("members", "schedulers", self.worker_id)
  local rec = json_encode({
    id = self.worker_id, host = hostname(), pid = core.getpid(),
    version = core.version, started = iso(self.now(), true), leader = self.leader ~= false,
    role = self.member_role or "standalone",
  })
  self.store:delete(path)
  local ok, err = self.store:create(path, rec, { ephemeral = true, parents = true })
  if not ok then log("warn", "members: " .. path .. ": " .. tostring(err)) end
end

function Sched:start()
  self:load_dags()
  self.worker_id = self.worker_id or ("standalone-" .. tostring(core.getpid and core.getpid() or 0))
  if self.schedule_runs and self.register then self:register_member() end
  self:recover()
  self:watch_requests()
  local ids = {}
  for id in pairs(self.dags) do ids[#ids + 1] = id end
  sort(ids)
  for _, id in ipairs(ids) do
    self.watched[id] = true
    self:watch_paused(id)
    self:watch_runs(id)
    if not self.paused[id] then self:tick_dag(self.dags[id]) end
  end
  if self.dags_dir and self.hot_reload ~= false and core.watch_tree then
    local w, err = core.watch_tree(self.dags_dir, function()
      self:task(function() self:reload() end)
    end, 50)
    if w then
      self.dir_watch = w
    else
      log("warn", "hot reload is off: " .. tostring(err))
    end
  end
  self:process()
  return self
end

-- Stops scheduling; running tasks are terminated (their process groups get
-- SIGTERM, Lua tasks are closed) and their runs stay "running" in the
-- store, so the next scheduler resumes them.
function Sched:stop()
  if self.stopped then return end
  self.stopped = true
  if self.dir_watch then self.dir_watch:close(); self.dir_watch = nil end
  if self.pushed_timer then self.pushed_timer:cancel(); self.pushed_timer = nil end
  for _, t in pairs(self.timers) do t:cancel() end
  self.timers = {}
  if self.yield_timer then self.yield_timer:cancel(); self.yield_timer = nil end
  for _, run in pairs(self.runs) do
    if run.timeout_timer then run.timeout_timer:cancel(); run.timeout_timer = nil end
    for _, ti in pairs(run.tis) do
      if ti.wait_timer then ti.wait_timer:cancel(); ti.wait_timer = nil end
      local a = ti.attempt
      if a then
        if a.timer then a.timer:cancel() end
        if a.kill_timer then a.kill_timer:cancel() end
        self.executor:abort(ti)
        ti.attempt = nil
      end
    end
  end
  self:flush(true)
  self.store:flush()
end

-- Waits (inside a coroutine) until every run in `list` ({dag_id, run_id}
-- pairs or run objects) has ended; returns the runs' final states.
function Sched:wait_runs(list)
  local states = {}
  for i, item in ipairs(list) do
    local dag_id = item.dag_id or item[1]
    local run_id = item.run_id or item[2]
    local key = run_key(dag_id, run_id)
    if self.runs[key] then
      states[i] = async.wait(function(resume)
        local w = self.run_waiters[key] or {}
        self.run_waiters[key] = w
        w[#w + 1] = function(run) resume(run.state) end
      end)
    else
      local rec = self.st:get_run(dag_id, run_id)
      states[i] = rec and rec.state
    end
  end
  return states
end

-- ---- dags test ---------------------------------------------------------------------------

local function result_of(self, run)
  local tasks = {}
  for tid, ti in pairs(run.tis) do
    tasks[tid] = { state = ti.state, try_number = ti.try_number,
                   xcom = ti.xcom == nil and null or ti.xcom,
                   log = ti.log or null }
  end
  return { dag_id = run.dag_id, run_id = run.run_id, state = run.state, tasks = tasks,
           logical_date = iso(run.logical_date), db = self.db_path }
end

local function tmpdir()
  local base = os.getenv("TMPDIR") or "/tmp"
  for _ = 1, 100 do
    local p = ("%s/zkflow-test-%d-%d"):format(base, floor(now() * 1000) % 1000000000,
                                             math.random(1, 1e9))
    if not core.stat(p) and core.mkdirs(p) then return p end
  end
  error("dags test: cannot make a temporary directory")
end

-- Resolves `what` (a DAG object, a file path, or a DAG id in opts.dags_dir)
-- to a DAG; nil and an error message otherwise.
local function resolve_dag(what, opts)
  if type(what) == "table" and what.tasks then return what end
  local loader = require "zkflow.dsl.loader"
  if type(what) == "string" and (what:match("%.lua$") or what:find("/", 1, true)) then
    local dags, err = loader.load_file(what, opts)
    if not dags then return nil, err end
    if opts.dag_id then
      for _, d in ipairs(dags) do if d.id == opts.dag_id then return d end end
      return nil, what .. ": no DAG '" .. opts.dag_id .. "'"
    end
    if #dags == 0 then return nil, what .. ": the file defines no DAG" end
    return dags[1]
  end
  local dir = opts.dags_dir or "dags"
  local res = loader.scan(dir)
  local dag = res.dags and res.dags[what]
  if not dag then
    local errs = {}
    for f, e in pairs(res.errors or {}) do errs[#errs + 1] = f .. ": " .. tostring(e) end
    local msg = "no DAG '" .. tostring(what) .. "' in " .. dir
    if #errs > 0 then msg = msg .. " (import errors: " .. concat(errs, "; ") .. ")" end
    return nil, msg
  end
  return dag
end
_M.resolve_dag = resolve_dag

-- `zkflow dags test` / flow.test: runs one DAG run to its end in this
-- process and returns {dag_id, run_id, state, tasks={[id]={state,
-- try_number, xcom}}}.  opts: date (ISO or epoch), db (store file; a
-- temporary one otherwise), dags_dir, conf, log_dir.
function _M.test(what, opts)
  opts = opts or {}
  local dag, err = resolve_dag(what, opts)
  if not dag then error(err, 2) end
  local co, main = coroutine.running()
  if main or not co then
    return async.run(_M.test, dag, opts)
  end
  local dir
  local db = opts.db
  if not db then
    dir = tmpdir()
    db = dir .. "/zkflow.db"
  end
  local store = core.store(db, { sync = "off" })
  -- zk.default() in the DAG's tasks is the test's store while it runs.
  local zk = require "zkflow.zk"
  local prev_default = zk.default_store()
  zk.set_default(store, { root = "/" })
  local ld = opts.date
  if type(ld) == "string" then
    local t, perr = time.parse(ld)
    if not t then error("dags test: --date: " .. perr, 2) end
    ld = t
  end
  ld = ld or now()
  local s = _M.new { store = store, dags = { [dag.id] = dag }, schedule = false,
                     log_dir = opts.log_dir or ((dir or db:match("^(.*)/[^/]*$") or ".") .. "/logs"),
                     root = opts.root, id = "test" }
  s.db_path = db
  -- A manual run's data interval, as Airflow infers it: the last complete
  -- interval of the schedule at the logical date.
  local s_, e_ = last_interval(dag, ld)
  local run = s:create_run(dag, { run_type = "manual", logical_date = ld,
                                  run_id = "manual__" .. iso(ld, true),
                                  data_interval_start = s_ or ld,
                                  data_interval_end = e_ or ld,
                                  conf = opts.conf })
  s:process()
  if run.state ~= "success" and run.state ~= "failed" then
    s:wait_runs({ run })
  end
  local res = result_of(s, run)
  s:stop()
  zk.set_default(prev_default, { root = "/" })
  store:close()
  return res
end

_M.Sched = Sched
return _M
