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
-- of scheduler.new; nothing outside this folder writes its fields or
-- methods.  What varies is named there:
--
--   executor     where a ready try goes: the in-process executor
--                (zkflow.executors.inproc, default), or the cluster queue
--                (zkflow.executors.queue) on a cluster leader.  An
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
--   history      the history store (zkflow.history): a run that ends moves
--                there with its task instances, XComs and log copies and
--                leaves the live store (scheduler/archive.lua); reads of
--                finished runs look there; on_event gets "run_archived"
--                (the run record) once a run has moved.  nil: runs stay
--                in the store
--
-- and the methods others call: take_slots, end_try, try_lost, store_op,
-- reset_pending (a leader that steps down drops its unwritten writes),
-- prepare_try/start_try (a worker runs one try of a run it does not own),
-- loaded_dags, dag.  docs/internals.md draws the same seam.
--
-- The files.  The scheduler is one object: one class table, Sched
-- (scheduler/class.lua), whose methods are spread over the files of this
-- folder by concern.  Each file requires zkflow.scheduler.class, takes
-- `local Sched = class.Sched` and defines its methods on it
-- (`function Sched:name(...)`); this file requires them all once, below,
-- so that `require "zkflow.scheduler"` gives the whole class.  Calls stay
-- as cheap as in one file: a method is one lookup through __index = Sched,
-- and each file caches the functions it calls at its top as locals.
--
--   init.lua       new() and its options, the seams (this comment)
--   class.lua      Sched, and the helpers the files share (ready queues)
--   persist.lua    write-behind: mark, flush, store_op
--   dags.lua       loading and reloading DAGs; schedule ticks
--   runs.lua       a run's life: create, adopt, begin, time out, finish
--   tis.lua        task instances: evaluation, ready queue, pools, process
--   tries.lua      a try's end: release, retries, branches, lost tries
--   context.lua    the task context and the runtime of a try
--   watch.lua      store watches: triggers, pauses, requests, clear
--   lifecycle.lua  recovery, member record, start, stop, wait_runs
--   archive.lua    finished runs move to the history; retention
--   counters.lua   runs and task instances by state (counters(), /metrics)
--   test.lua       `dags test` (test, resolve_dag)
--
-- The executors are zkflow.executors.inproc (the default) and
-- zkflow.executors.queue (a cluster leader's).
local core = require "zkflow.core"
local rules = require "zkflow.rules"
local state = require "zkflow.state"
local time = require "zkflow.time"
local inproc = require "zkflow.executors.inproc"
local class = require "zkflow.scheduler.class"
require "zkflow.scheduler.persist"
require "zkflow.scheduler.dags"
require "zkflow.scheduler.runs"
require "zkflow.scheduler.tis"
require "zkflow.scheduler.tries"
require "zkflow.scheduler.context"
require "zkflow.scheduler.watch"
require "zkflow.scheduler.lifecycle"
require "zkflow.scheduler.archive"
require "zkflow.scheduler.counters"
local test = require "zkflow.scheduler.test"

local now, mono = core.now, core.mono
local tostring, pcall = tostring, pcall
local log, no_mark = class.log, class.no_mark
local pq_new = class.pq_new

local _M = {}

local KILL_GRACE = 5          -- seconds between SIGTERM and SIGKILL

local Sched = class.Sched

-- The default executor (the header has the interface).
_M.inprocess_executor = inproc.new


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
-- on_reload(s), fence (a node path) and on_fence_lost(), history (a
-- zkflow.history, borrowed).
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
    history = opts.history,
    to_archive = {},        -- {dag_id, run_id} of ended runs to move
  }, Sched)
  self.st = state.new(self.store, self.root, { history = opts.history })
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

-- A schedule's intervals are zkflow.time's.
_M.next_interval, _M.last_interval = time.next_interval, time.last_interval

_M.resolve_dag = test.resolve_dag
_M.test = test.test

_M.Sched = Sched
return _M
