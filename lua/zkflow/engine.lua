-- zkflow.engine: the Lua side of the embedding API (core/engine/engine.c).
--
-- engine.c calls these on the loop thread: main (zkf_engine_main), http
-- (zkf_engine_http), start (zkf_engine_start), shutdown
-- (zkf_engine_shutdown) and close (zkf_engine_free).
local core = require "zkflow.core"
local async = require "zkflow.async"

local _M = {}

local pending_done      -- done(code) of a main() that keeps running
local started           -- what start() made: {store=, node=} or {zk=}
local serving = false   -- main() returned KEEP_RUNNING
local connecting_reply  -- the API's answer until ZooKeeper is there

-- Runs the command line in a coroutine; done(code) when it finishes.
function _M.main(argv, done, options)
  local cli = require "zkflow.cli"
  -- Until the command ends, a shutdown (SIGINT/SIGTERM) completes it.
  pending_done = done
  async.spawn(function()
    return cli.main(argv, options)
  end, function(ok, code)
    if pending_done ~= done then return end   -- already shut down
    pending_done = nil
    if not ok then
      io.stderr:write("zkflow: ", tostring(code), "\n")
      done(1)
      return
    end
    if code == cli.KEEP_RUNNING then
      pending_done = done
      serving = true
      require("zkflow.node").notify_ready()
      return
    end
    io.stdout:flush()
    done(type(code) == "number" and code or 0)
  end)
end

-- One HTTP request; reply(status, content_type, body) exactly once.
-- headers: {lower-case name = value} (zkf_engine_http_headers), or empty.
function _M.http(method, uri, body, reply, headers)
  local api = require "zkflow.api"
  local z = started and started.zk
  if z and z.connecting then
    return connecting_reply(z, uri, reply)
  end
  async.spawn(function()
    api.http(method, uri, body, reply, headers)
  end, function(ok, err)
    if not ok then
      core.log("error", "api: " .. tostring(err))
      reply(500, "application/json", core.json_encode({ error = tostring(err) }))
    end
  end)
end

-- ---- on ZooKeeper ---------------------------------------------------------------

-- Seconds between two attempts to reach the ensemble.  One attempt waits
-- up to the session timeout (ZK_SESSION_TIMEOUT) for a session, so with
-- the ensemble down the engine logs an error about every 15 s; an ensemble
-- that comes up during an attempt is taken at once.
local ZK_RETRY = 5
local ZK_SESSION_TIMEOUT = 10   -- seconds, as `zkflow --session-timeout`

-- HOST:PORT[,HOST:PORT...][/chroot], as the nginx module checks it too.
local function check_hosts(hosts)
  local list, chroot = hosts:match("^([^/]*)(.*)$")
  if list == "" or (chroot ~= "" and (chroot == "/" or chroot:sub(-1) == "/")) then
    return false
  end
  for h in (list .. ","):gmatch("([^,]*),") do
    local port = h:match("^%[[^%]]+%]:(%d+)$") or h:match("^[%w._-]+:(%d+)$")
    port = tonumber(port)
    if not port or port < 1 or port > 65535 then return false end
  end
  return true
end

-- Once the session is there: the scheduler (elected among every zkflow
-- scheduler on the ensemble) and a worker, or only the API; assembled by
-- the composition root as `zkflow standalone --zk` is.
local function serve_zk(z, store, options)
  require("zkflow.zk").set_default(store, { root = "/" })
  local on = options.scheduler ~= "off"
  z.node = require("zkflow.node").start {
    store = store, zk = true, root = options.root or "/zkflow",
    dags_dir = options.dags or "./dags", log_dir = z.log_dir,
    scheduler = on, worker = on, api = true, auth = options.api_auth == "on",
    listen = function(fn) z.listeners[#z.listeners + 1] = fn end,
  }
end

-- What the API answers until the session is there: 503, with the reason.
function connecting_reply(z, uri, reply)
  local msg = "connecting to ZooKeeper at " .. z.hosts
  if z.failed then
    msg = "could not start on ZooKeeper at " .. z.hosts .. ": " .. z.failed
  elseif z.last_error then
    msg = ("%s (attempt %d; the last one failed: %s)"):format(msg, z.attempts, z.last_error)
  end
  local path = (uri or "/"):gsub("[?#].*$", ""):gsub("/+$", "")
  local body = { error = msg }
  if path == "/api/v1/health" then
    body = { status = "connecting", store = "zk", zk = z.hosts, error = msg,
             attempts = z.attempts }
  end
  reply(503, "application/json", core.json_encode(body))
end

-- Connects in a coroutine (core.store yields there instead of blocking the
-- host's thread), retrying every ZK_RETRY seconds until it has a session,
-- then serves.
local function start_zk(options)
  local hosts = tostring(options.zk):gsub("^zk://", "")
  if not check_hosts(hosts) then
    error("zk: invalid address '" .. hosts .. "', expected "
          .. "HOST:PORT[,HOST:PORT...][/chroot]", 0)
  end
  local timeout = ZK_SESSION_TIMEOUT
  local z = { hosts = hosts, connecting = true, attempts = 0, listeners = {},
              log_dir = options.log_dir or "./logs" }
  started = { zk = z }
  local function on_session(st)
    for _, fn in ipairs(z.listeners) do
      local ok, err = pcall(fn, st)
      if not ok then core.log("error", "session: " .. tostring(err)) end
    end
  end
  async.spawn(function()
    local store
    while not z.stopped do
      z.attempts = z.attempts + 1
      local ok, st, err = pcall(core.store, "zk://" .. hosts,
                                { timeout = timeout, on_session = on_session,
                                  auth = options.zk_auth, acl = options.zk_acl })
      if z.stopped then
        if ok and st then st:close() end
        return
      end
      if ok and st then
        store = st
        break
      end
      z.last_error = tostring(ok and err or st)
      core.log("error", ("cannot connect to ZooKeeper at %s: %s (attempt %d; "
                         .. "trying again in %d s)"):format(hosts, z.last_error,
                                                            z.attempts, ZK_RETRY))
      async.sleep(ZK_RETRY)
    end
    if not store then return end
    z.store = store
    core.log("info", ("connected to ZooKeeper at %s (attempt %d)"):format(hosts, z.attempts))
    serve_zk(z, store, options)
    z.connecting = false
  end, function(ok, err)
    if not ok then
      z.failed = tostring(err)
      core.log("error", "zk " .. hosts .. ": " .. z.failed)
    end
  end)
end

-- zkf_engine_start(): an embedded scheduler with the options the host set.
-- With options.scheduler == "off" the engine only serves the API from the
-- store (the nginx module runs one of these in every worker but one); the
-- scheduler that runs elsewhere on the same store notices what it writes.
-- With options.zk the engine is a cluster member on that ensemble: the
-- scheduler contends for leadership there, a worker takes tries from the
-- queue, and the connection is made without blocking (see start_zk).
function _M.start(options)
  -- The DAG load limits of the engine's options: the base that /config's
  -- keys of the same names override.
  local limits = {}
  for opt, name in pairs({ dag_load_timeout = "timeout", dag_load_instructions = "instruction_limit",
                           dag_load_memory = "memory_limit" }) do
    if options[opt] ~= nil then
      local v = tonumber(options[opt])
      if v == nil then error(opt .. ": expected a number, got '" .. tostring(options[opt]) .. "'", 0) end
      if name ~= "timeout" then v = math.tointeger(v) or v end
      limits[name] = v
    end
  end
  local ok, lerr = require("zkflow.dsl.loader").configure(limits, "base")
  if not ok then error(lerr, 0) end
  if options.zk then
    if options.db then
      error("zk: give either 'zk' or 'db', not both", 0)
    end
    return start_zk(options)
  end
  local db = options.db or "./zkflow.db"
  local store, err = core.store(db, { sync = options.db_sync or "normal" })
  if not store then error("store " .. db .. ": " .. tostring(err), 0) end
  -- DAG code that asks for zk.default() works on the engine's own store.
  require("zkflow.zk").set_default(store, { root = "/" })
  local dir = db:match("^(.*)/[^/]*$") or "."
  -- A store that another process schedules (a `zkflow standalone`, the
  -- engine of another nginx worker) makes this one a standby: it serves
  -- the API and takes the store over when the owner ends.
  local n = require("zkflow.node").start {
    store = store, db = db, root = options.root or "/zkflow",
    dags_dir = options.dags or "./dags",
    log_dir = options.log_dir or (dir .. "/logs"),
    scheduler = options.scheduler ~= "off", busy = "standby", api = true,
    auth = options.api_auth == "on",
  }
  started = { store = store, node = n }
end

local function stop_all()
  local ok, cli = pcall(require, "zkflow.cli")
  if ok and cli.shutdown then pcall(cli.shutdown) end
  if started then
    local z = started.zk
    if z then
      -- The members go first (their nodes are deleted), then the session.
      z.stopped = true
      if z.node then z.node:stop() end
      if z.store then pcall(z.store.close, z.store) end
    end
    if started.node then started.node:stop() end
    if started.store then pcall(started.store.close, started.store) end
    started = nil
  end
end

-- zkf_engine_shutdown(): stop serving and complete the pending main().
function _M.shutdown()
  stop_all()
  local done = pending_done
  pending_done = nil
  if done then done(serving and 0 or 130) end
  serving = false
end

-- zkf_engine_free(): last words before the state closes.
function _M.close()
  stop_all()
end

return _M
