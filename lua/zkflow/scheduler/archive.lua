-- zkflow.scheduler.archive: the move of finished runs to the history
-- store, and retention.  A run that ends (success or failed) is written,
-- with its task instances, their XComs and the log copies of its tries,
-- to the history (zkflow.history, scheduler.new's `history` option), then
-- its subtree leaves the live store (/runs/<dag>/<run>).  In that order:
-- a scheduler killed between the two finds the run still live and
-- finished at its next start (recover) and moves it again; the history's
-- upsert makes the second copy the same row.  Runs move in small batches
-- from a timer, in a coroutine, a moment after they end: never inside the
-- turn that ended them.
--
-- Retention: with retention_days set (/config; Sched:set_retention) the
-- runs older than that are removed from the history a batch at a time,
-- their log folders with them, and the DAG versions
-- (/dags/<id>/versions/<hash>) that no run refers to any more are pruned.
-- Sched methods (init.lua says how the files make the class).
local core = require "zkflow.core"
local async = require "zkflow.async"
local state = require "zkflow.state"
local history = require "zkflow.history"
local class = require "zkflow.scheduler.class"
local pairs, ipairs, tostring, tonumber, type = pairs, ipairs, tostring, tonumber, type
local log, run_key = class.log, class.run_key
local RUN_FINISHED = state.RUN_FINISHED
local Sched = class.Sched

local _M = {}

-- A SQLite history writes in the loop's thread: a batch is kept to what
-- takes milliseconds (measured: ~0.13 ms per task instance moved, ~0.45 ms
-- per run removed), and the next batch waits for the next turn.
_M.DELAY = 0.2            -- seconds between a run's end and its move
_M.BATCH = 16             -- runs moved per batch
_M.BATCH_TIS = 256        -- task instances per batch (a bigger run goes alone)
_M.RETENTION_EVERY = 60   -- seconds between two retention passes
_M.RETENTION_BATCH = 20   -- runs removed per pass at most

-- A run that ended: it moves to the history soon.
function Sched:archive(dag_id, run_id)
  if not self.history or not self.records then return end
  local q = self.to_archive
  q[#q + 1] = { dag_id, run_id }
  self:arm_archive()
end

function Sched:arm_archive(delay)
  if self.archive_timer or self.archiving or self.stopped then return end
  self.archive_timer = core.timer(delay or _M.DELAY, function()
    self.archive_timer = nil
    if self.stopped then return end
    self.archiving = true
    async.spawn(function() self:archive_batch() end, function(ok, err)
      self.archiving = false
      if not ok then
        log("error", "history: moving runs: " .. tostring(err))
        -- The history may be down: the runs stay live and are tried again.
        if #self.to_archive > 0 then self:arm_archive(5) end
        return
      end
      if #self.to_archive > 0 then self:arm_archive(0) end
    end)
  end)
end

function Sched:archive_batch()
  local q = self.to_archive
  local batch = {}
  while #batch < _M.BATCH and #q > 0 do
    batch[#batch + 1] = table.remove(q, 1)
  end
  local ok, err = pcall(self.move_runs, self, batch)
  if not ok then
    -- Put back, first in line: tried again later.
    for k = #batch, 1, -1 do table.insert(q, 1, batch[k]) end
    error(err, 0)
  end
end

-- Test hook (docs/history.md): ZKFLOW_FAULT=archive-crash kills this
-- process with SIGKILL between the history write and the live delete.
local function fault(name)
  if os.getenv("ZKFLOW_FAULT") == name then
    log("warn", "ZKFLOW_FAULT=" .. name .. ": killing this process")
    os.execute("kill -9 " .. core.getpid())
  end
end

-- Moves the runs of `batch` ({dag_id, run_id}...) from the live store to
-- the history, in one history transaction, then deletes them from the
-- live store.  A run that is not live or not finished (cleared meanwhile)
-- is left alone.  Inside a coroutine on a remote store.
function Sched:move_runs(batch)
  -- The runs' last writes are in the store before they are read back.
  if self.async_store then self:flush_wait() else self:flush(true) end
  local items, ntis = {}, 0
  for i, item in ipairs(batch) do
    if ntis >= _M.BATCH_TIS then
      -- The rest waits for the next batch, first in line.
      for k = #batch, i, -1 do table.insert(self.to_archive, 1, batch[k]) end
      break
    end
    local it = self:finished_run(item[1], item[2])
    if it then
      items[#items + 1] = it
      for _ in pairs(it.tis) do ntis = ntis + 1 end
    end
  end
  if #items == 0 then return end
  -- The embedded store holds its write lock until the end of the turn: a
  -- SQLite history on the same file waits for it, so the turn commits now.
  -- A commit that fails (a full disk) rolled the runs' last writes back:
  -- they move once the scheduler has written them again.
  local cok, _, cmsg = self.store:flush()
  if not cok then error("the store cannot commit: " .. tostring(cmsg), 0) end
  self.history:put_runs(items)
  fault("archive-crash")
  for _, it in ipairs(items) do
    self:drop_live(it.path, it.nodes)
    local known = self.known_runs[it.run.dag_id]
    if known then known[it.run.run_id] = nil end
    if self.on_event then self:emit("run_archived", it.run) end
  end
end

-- A finished run as the live store has it: {run=, tis=, logs=, path=,
-- nodes= (its subtree, children first)}, or nil.
function Sched:finished_run(dag_id, run_id)
  if self.runs[run_key(dag_id, run_id)] then return nil end
  local st, store = self.st, self.store
  local rp = st:path("runs", dag_id, run_id)
  local rec = st:get_live_run(dag_id, run_id)
  if not rec or not RUN_FINISHED[rec.state] then return nil end
  rec.dag_id, rec.run_id = rec.dag_id or dag_id, rec.run_id or run_id
  local tis, logs, nodes = {}, {}, {}
  for _, tid in ipairs(store:children(rp) or {}) do
    local tp = rp .. "/" .. tid
    local ti = st:read(tp)
    if ti then
      ti.task_id = ti.task_id or tid
      tis[tid] = ti
    end
    for _, name in ipairs(store:children(tp) or {}) do
      local try = tonumber(name:match("^log%.(%d+)$"))
      if try then
        logs[#logs + 1] = { task_id = tid, try_number = try, content = store:get(tp .. "/" .. name) or "" }
      end
      nodes[#nodes + 1] = tp .. "/" .. name
    end
    nodes[#nodes + 1] = tp
  end
  nodes[#nodes + 1] = rp
  return { run = rec, tis = tis, logs = logs, path = rp, nodes = nodes }
end

-- Deletes a finished run's subtree (`nodes`, children first).  A leader's
-- deletes are fenced by its election node, as its writes are: one that
-- lost its place leaves the run to the new leader.
function Sched:drop_live(rp, nodes)
  local store = self.store
  if not self.fence then
    local ok, err = store:delete(rp, -1, { recursive = true })
    if not ok and err ~= "ZNONODE" then log("error", "store: delete " .. rp .. ": " .. tostring(err)) end
    return
  end
  -- In transactions of 500 (ZooKeeper's limit on one request is 1 MB),
  -- children first, so each one leaves a smaller subtree.
  local i, failed = 1, false
  while i <= #nodes and not failed do
    local ops = { { op = "check", path = self.fence, version = 0 } }
    while i <= #nodes and #ops <= 500 do
      ops[#ops + 1] = { op = "delete", path = nodes[i] }
      i = i + 1
    end
    failed = not store:multi(ops)
  end
  if not failed then return end
  if not store:exists(self.fence) then
    log("error", "store: this scheduler's election node " .. self.fence
        .. " is gone: run " .. rp .. " is left to the next leader")
    if self.on_fence_lost then self.on_fence_lost() end
    return
  end
  -- A node appeared meanwhile (a late log copy): the whole subtree goes.
  local ok, err = store:delete(rp, -1, { recursive = true })
  if not ok and err ~= "ZNONODE" then log("error", "store: delete " .. rp .. ": " .. tostring(err)) end
end

-- At start (and on becoming the leader): the finished runs still in the
-- live store move now; the unfinished ones that the history has too (a
-- clear that brought a run back, interrupted) leave the history.
function Sched:archive_recovered(finished, unfinished)
  if not self.history or not self.records then return end
  for _, r in ipairs(unfinished) do
    self:task(function()
      if self.history:has_run(r[1], r[2]) then
        self.history:delete_run(r[1], r[2], { keep_logs = true })
      end
    end)
  end
  for _, r in ipairs(finished) do self:archive(r[1], r[2]) end
end

-- A cleared run came back from the history (Sched:clear): once its records
-- are in the live store (this turn's flush), it leaves the history; its
-- log copies stay there (the tries before the clear read them).
function Sched:unarchive_later(dag_id, run_id)
  core.timer(0, function()
    async.spawn(function()
      if self.async_store then self:flush_wait() else self:flush(true) end
      self.store:flush()
      if self.st:get_live_run(dag_id, run_id) then
        self.history:delete_run(dag_id, run_id, { keep_logs = true })
      end
    end, function(ok, err)
      if not ok then log("error", "history: " .. dag_id .. " " .. run_id .. ": " .. tostring(err)) end
    end)
  end)
end

-- ---- DAG versions --------------------------------------------------------------

-- A reload may have published a version (a cluster's leader) and left an
-- older one unused: the versions no run refers to are pruned a while
-- later, once per burst of reloads.
function Sched:versions_changed()
  if not self.history or not self.records or self.prune_timer or self.stopped then return end
  self.prune_timer = core.timer(_M.RETENTION_EVERY, function()
    self.prune_timer = nil
    if self.stopped then return end
    async.spawn(function()
      _M.prune_versions(self.store, self.root, self.history, self:loaded_dags())
    end, function(ok, err)
      if not ok then log("error", "history: pruning DAG versions: " .. tostring(err)) end
    end)
  end)
end

-- ---- retention ------------------------------------------------------------------

-- retention_days (nil: keep everything): runs whose start is older go.
function Sched:set_retention(days)
  if days == self.retention_days then return false end
  self.retention_days = days
  if self.retention_timer then self.retention_timer:cancel(); self.retention_timer = nil end
  if days and self.history and self.records then self:arm_retention(1) end
  return true
end

function Sched:arm_retention(delay)
  if self.stopped or self.retention_timer then return end
  self.retention_timer = core.timer(delay or _M.RETENTION_EVERY, function()
    self.retention_timer = nil
    if self.stopped or not self.retention_days then return end
    async.spawn(function() return self:retention_pass() end, function(ok, res)
      if not ok then log("error", "history: retention: " .. tostring(res)) end
      -- A full batch: more is due, soon (a pass is small, the loop goes on).
      self:arm_retention(ok and res == _M.RETENTION_BATCH and 0.2 or nil)
    end)
  end)
end

-- One pass: at most RETENTION_BATCH runs; returns how many went.
function Sched:retention_pass()
  local before = self.now() - self.retention_days * 86400
  self.store:flush()
  local removed = self.history:delete_runs { before = before, limit = _M.RETENTION_BATCH }
  _M.remove_logs(self.log_dir, removed.list)
  if removed.runs > 0 then
    log("info", ("history: retention_days %g removed %d runs, %d task instances")
        :format(self.retention_days, removed.runs, removed.task_instances))
    _M.prune_versions(self.store, self.root, self.history, self:loaded_dags())
  end
  return removed.runs
end

-- Removes the log folders of `list` ({dag_id=, run_id=}...) under
-- `log_dir`; returns how many there were.
function _M.remove_logs(log_dir, list)
  local n = 0
  for _, r in ipairs(list or {}) do
    local dir = history.log_folder(log_dir, r.dag_id, r.run_id)
    if core.stat(dir) then
      local ok, err = history.remove_tree(dir)
      if ok then n = n + 1 else log("warn", "history: " .. tostring(err)) end
    end
  end
  return n
end

-- Deletes the DAG versions (/dags/<id>/versions/<hash>) that no live run
-- and no run in the history refers to, but the version each DAG has now
-- (`dags`: {[id] = dag}, the pushed one, the newest).  Returns the paths removed
-- (or that would be, with dry_run).
function _M.prune_versions(store, root, h, dags, dry_run)
  local S = state.new(store, root)
  local removed = {}
  for _, id in ipairs(S:children(S:path("dags"))) do
    local vdir = S:path("dags", id, "versions")
    local hashes = S:children(vdir)
    if #hashes > 0 then
      local keep = {}
      local dag = dags and dags[id]
      if dag and dag.source_hash then keep[dag.source_hash] = true end
      local pushed = S:read(S:path("dags", id))
      if type(pushed) == "table" and pushed.version then keep[pushed.version] = true end
      for _, r in ipairs(S:live_runs(id)) do
        if r.version and r.version ~= core.null then keep[r.version] = true end
      end
      -- The newest version stays too: a reader that does not know the
      -- DAG folder (db clean) cannot tell which one the leader runs now.
      local newest, newest_z
      for _, hash in ipairs(hashes) do
        local stat = store:exists(vdir .. "/" .. hash)
        local z = stat and stat.czxid
        if z and (not newest_z or z > newest_z) then newest, newest_z = hash, z end
      end
      if newest then keep[newest] = true end
      for _, hash in ipairs(hashes) do
        if not keep[hash] and not h:version_used(id, hash) then
          local p = vdir .. "/" .. hash
          if not dry_run then store:delete(p) end
          removed[#removed + 1] = p
        end
      end
    end
  end
  return removed
end

return _M
