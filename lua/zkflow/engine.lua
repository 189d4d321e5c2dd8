-- zkflow.engine: the Lua side of the embedding API (core/engine.c).
--
-- engine.c calls these on the loop thread: main (zkf_engine_main), http
-- (zkf_engine_http), start (zkf_engine_start), shutdown
-- (zkf_engine_shutdown) and close (zkf_engine_free).
local core = require "zkflow.core"
local async = require "zkflow.async"

local _M = {}

local pending_done      -- done(code) of a main() that keeps running
local started           -- what start() made: {store=, scheduler=}
local serving = false   -- main() returned KEEP_RUNNING

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
      return
    end
    io.stdout:flush()
    done(type(code) == "number" and code or 0)
  end)
end

-- One HTTP request; reply(status, content_type, body) exactly once.
function _M.http(method, uri, body, reply)
  local api = require "zkflow.api"
  async.spawn(function()
    api.http(method, uri, body, reply)
  end, function(ok, err)
    if not ok then
      core.log("error", "api: " .. tostring(err))
      reply(500, "application/json", core.json_encode({ error = tostring(err) }))
    end
  end)
end

-- The DAGs an engine without a scheduler answers with: a scan of the
-- folder, at most one a second, so that a request storm does not load every
-- file once per request.
local function scanned_dags(dir)
  local loader = require "zkflow.loader"
  local cache, at = nil, -math.huge
  return function()
    local now = core.mono()
    if not cache or now - at >= 1 then
      local ok, res = pcall(loader.scan, dir)
      cache = ok and res or { dags = {}, errors = {} }
      at = now
    end
    return cache
  end
end

-- zkf_engine_start(): an embedded scheduler with the options the host set.
-- With options.scheduler == "off" the engine only serves the API from the
-- store (the nginx module runs one of these in every worker but one); the
-- scheduler that runs elsewhere on the same store notices what it writes.
function _M.start(options)
  local api = require "zkflow.api"
  if options.zk then
    -- core.store("zk://...") waits for a session, which an engine must
    -- not do on its host's thread, and several engines on one ensemble
    -- need the scheduler election: until both are wired here, say so
    -- instead of silently using a file.
    error("zk: embedded engines do not run on the ZooKeeper store yet "
          .. "(use the embedded store, option 'db')", 0)
  end
  local db = options.db or "./zkflow.db"
  local store, err = core.store(db, { sync = options.db_sync or "normal" })
  if not store then error("store " .. db .. ": " .. tostring(err), 0) end
  -- DAG code that asks for zk.default() works on the engine's own store.
  require("zkflow.zk").set_default(store, { root = "/" })
  local dir = db:match("^(.*)/[^/]*$") or "."
  local log_dir = options.log_dir or (dir .. "/logs")
  local dags_dir = options.dags or "./dags"
  local s, dags
  if options.scheduler ~= "off" then
    local sched = require "zkflow.scheduler"
    s = sched.new {
      store = store, root = options.root or "/zkflow",
      dags_dir = dags_dir, log_dir = log_dir,
    }
    s:start()
    dags = function()
      return { dags = s.dags, errors = s.import_errors, files = s.files }
    end
  else
    dags = scanned_dags(dags_dir)
  end
  local h = api.new {
    store = store, root = options.root or "/zkflow", scheduler = s,
    log_dir = log_dir, dags = dags,
  }
  api.serve(h)
  started = { store = store, scheduler = s }
end

local function stop_all()
  local ok, cli = pcall(require, "zkflow.cli")
  if ok and cli.shutdown then pcall(cli.shutdown) end
  if started then
    if started.scheduler then
      pcall(started.scheduler.stop, started.scheduler)
    end
    pcall(started.store.close, started.store)
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
