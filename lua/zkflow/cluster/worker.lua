-- zkflow.cluster.worker: the worker side of the cluster (cluster.worker).
--
-- Owns the worker member record and its slots, the scan of its queues and
-- the claim of a try (queue node -> /claims/<key>, one transaction), running
-- the try with an in-process scheduler (reading another DAG version when the
-- leader's differs), reporting its end as /results/<key> with a tail of its
-- log, and stopping the tries in flight when the session expires or the
-- worker stops.  The process groups a dead worker leaves behind are
-- zkflow.cluster.groups'.
local core = require "zkflow.core"
local sched = require "zkflow.scheduler"
local state = require "zkflow.state"
local pushed = require "zkflow.pushed"

local json_encode, null = core.json_encode, core.null
local now = core.now
local pairs, ipairs, type, tostring, pcall = pairs, ipairs, type, tostring, pcall
local sort, concat = table.sort, table.concat
local common = require "zkflow.cluster.common"
local log, hostname, decode, spawn = common.log, common.hostname, common.decode, common.spawn
local get_all, put_member, ensure = common.get_all, common.put_member, common.ensure
local groups = require "zkflow.cluster.groups"

local _M = {}

local LOG_TAIL = 256 * 1024     -- bytes of a try's log copied to the store
local MEMBER_DELAY = 0.5        -- a worker's record follows its tries at most this late
local RESULT_MAX = 900 * 1024   -- a result node stays under ZooKeeper's 1 MB

local function abs_path(p)
  if not p or p:sub(1, 1) == "/" then return p end
  local cwd = os.getenv("PWD")
  return cwd and (cwd .. "/" .. p:gsub("^%./", "")) or p
end

local CW = {}
CW.__index = CW

-- cluster.worker(opts) inside a coroutine: registers the worker and takes
-- tries from its queues.  opts: store, root, dags_dir, log_dir, queues
-- ({"default"}), slots (4), id, history (zkflow.history: what an
-- external_task sensor reads of the runs that ended).
function _M.worker(opts)
  assert(opts and opts.store, "cluster.worker: 'store' is required")
  -- Every request rides out a lost connection (common.steady).
  local self = setmetatable({
    opts = opts, store = common.steady(opts.store), root = opts.root or "/zkflow",
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
    store = opts.store, root = self.root, dags_dir = opts.dags_dir,
    log_dir = opts.log_dir, schedule = false, hot_reload = false, id = self.id,
    records = false, reload = "dags", history = opts.history,
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
          -- No listing and no watch: nothing would look at the queue
          -- again (the tries there would wait for ever).
          log("warn", "worker: queue " .. dir .. ": " .. tostring(err) .. "; looking again in 1 s")
          core.timer(1, function()
            if not self.stopped then self:scan(q) end
          end)
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
  if not res and (err == "ZCONNECTIONLOSS" or err == "ZOPERATIONTIMEOUT"
                  or err == "ZNODEEXISTS") then
    -- The answer was lost, not necessarily the transaction (and when the
    -- store asked again, the second one finds the claim made): the claim
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
  local got, gerr = get_all(self.store, paths)
  if gerr then
    -- The reads failed (the session expired meanwhile, or the worker
    -- stops): the claim is given up, and the leader queues the try again.
    log("warn", ("worker: %s not run: reading its records: %s"):format(key, gerr))
    self.running[key] = nil
    self.nrunning = self.nrunning - 1
    self.store:delete(self.st:path("claims", key))
    self:member_changed()
    return
  end
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
      if err == "ZNODEEXISTS" and self.store:exists(rpath) then
        -- A transaction whose answer a lost connection swallowed did
        -- happen (common.steady asked again): the result is there.
        break
      elseif err == "ZCONNECTIONLOSS" or err == "ZOPERATIONTIMEOUT" then
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
CW.record_groups = groups.record_groups
CW.reap = groups.reap
CW.watch_members = groups.watch_members

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

-- The store's session changed.  A lost connection is a pause: requests
-- wait for it (common.steady); once it is back the queues are looked at
-- again.  An expiry stops the tries (their claims are gone); the new
-- session registers the worker again.
function CW:session(st)
  local was = self.store.state
  self.store:session(st)
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
  elseif st == "connected" and was == "suspended" and not self.stopped and not self.expired then
    for _, q in ipairs(self.queues) do self:scan(q) end
  end
end

-- The connection's state, as Curator names it (common.steady).
function CW:connection()
  return self.store.state
end

-- Stops taking tries and stops those in flight; closing the session then
-- drops their claims, and the scheduler runs them again elsewhere.
function CW:stop()
  if self.stopped then return end
  self.stopped = true
  self.store:stop()
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
return _M
