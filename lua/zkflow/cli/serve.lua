-- zkflow.cli.serve: the commands that keep serving.
--
-- standalone, scheduler, api and worker build what they run through the
-- composition root (zkflow.node), start the HTTP front door when asked,
-- and return KEEP_RUNNING; shutdown() stops what they started.

local core    = require "zkflow.core"
local output  = require "zkflow.cli.output"
local context = require "zkflow.cli.context"

local _M = {}

local stdout = io.stdout
local concat, insert = table.concat, table.insert
local fmt = string.format
local usage_error, fail, warn = output.usage_error, output.fail, output.warn
local need = context.need
local is_dir = context.is_dir
local api = context.api

-- Returned by a command that keeps serving (standalone): the host keeps
-- the loop running until a signal instead of exiting.
_M.KEEP_RUNNING = setmetatable({}, {
    __tostring = function() return "zkflow.cli.KEEP_RUNNING" end,
})

-- ---- commands: standalone, scheduler, api, worker --------------------------

local function parse_listen(s)
    local addr, port = s:match("^%[?([^%]]*)%]?:(%d+)$")
    if not addr then
        port = s:match("^(%d+)$")
        addr = "127.0.0.1"
    end
    port = tonumber(port)
    if not port or port > 65535 then
        usage_error("--api: expected ADDR:PORT, got '" .. s .. "'")
    end
    if addr == "" then addr = "0.0.0.0" end
    return addr, port
end

-- Formats a scheduler event (kind, run or task instance) for the
-- daemon's log: "ti_finished etl/manual__.../load success try 1".
local function event_line(kind, obj)
    if type(obj) ~= "table" then
        return tostring(kind) .. " " .. tostring(obj)
    end
    if kind == "dag_loaded" or kind == "dag_removed" then
        return fmt("%s %s version %s from %s", kind, tostring(obj.id),
                   tostring(obj.source_hash), tostring(obj.file))
    end
    local run = type(obj.run) == "table" and obj.run or obj
    local where = tostring(run.dag_id) .. "/" .. tostring(run.run_id)
    if obj.task_id then
        where = where .. "/" .. tostring(obj.task_id)
    end
    local line = tostring(kind) .. " " .. where .. " " .. tostring(obj.state)
    if obj.task_id and obj.try_number then
        line = line .. " try " .. tostring(obj.try_number)
    end
    if type(obj.error) == "string" and obj.state ~= "success" then
        -- the first line; the traceback is in the task's log
        line = line .. ": " .. obj.error:match("^[^\n]*")
    end
    return line
end

local function count_dags(provider)
    local n = 0
    for _ in pairs(provider().dags) do n = n + 1 end
    return n
end

-- Is the API asked who sends each request?  Yes whenever it listens on
-- anything but loopback, unless --no-auth says otherwise (Airflow's API
-- has auth on by default too).  Says so, and how to make a user when
-- there is none.
local function api_auth(ctx, listen)
    local addr = parse_listen(listen)
    local loopback = addr == "localhost" or addr == "::1" or addr:find("^127%.") ~= nil
    if ctx.opts["no-auth"] then
        if not loopback then
            warn("the API on " .. listen .. " lets anyone who reaches it in (--no-auth)")
        end
        return false
    end
    if loopback then
        return false
    end
    local A = need("zkflow.api.auth").new(ctx:store(true), ctx.root)
    if #A:list_users() == 0 then
        warn("the API on " .. listen .. " asks for a user, and there is none yet: "
             .. "zkflow users add NAME --role admin, then zkflow users token NAME")
    end
    return true
end

local function start_api(h, listen)
    local addr, port = parse_listen(listen)
    if not core.api_listen then
        warn("this build has no HTTP front door; serving without the API")
        return nil
    end
    api().serve(h)
    local ok, err = core.api_listen(addr, port, function(req)
        return h:handle(req)
    end)
    if not ok then
        fail("api: " .. tostring(err))
    end
    return fmt("http://%s:%d/", addr, port)
end

-- Keeps what a serving command started reachable after main() returns,
-- and lets the host's shutdown stop it.
local running = {}

-- The cluster's log folder: --log-dir, else ./logs (there is no database
-- file to sit beside).
local function cluster_logs(ctx)
    local d = ctx.opts["log-dir"] or ctx.log_dir or "logs"
    if d:sub(1, 1) ~= "/" then
        local cwd = os.getenv("PWD")
        if cwd then d = cwd .. "/" .. d:gsub("^%./", "") end
    end
    return d
end

local function positive_int(ctx, name)
    local v = ctx.opts[name]
    if v == nil then return nil end
    local n = tonumber(v)
    if not n or n < 1 or n ~= math.floor(n) then
        usage_error("--" .. name .. ": expected a whole number >= 1, got '"
                    .. tostring(v) .. "'")
    end
    return math.tointeger(n)
end

local function queue_list(ctx)
    local v = ctx.opts.queues
    if v == nil then return nil end
    local list = {}
    for q in tostring(v):gmatch("[^,]+") do
        if not q:match("^[%w_.-]+$") then
            usage_error("--queues: '" .. q .. "' is not a queue name "
                        .. "(letters, digits, '_', '.', '-')")
        end
        list[#list + 1] = q
    end
    if #list == 0 then usage_error("--queues: no queue named") end
    return list
end

-- Records the DAG folder of a scheduler on the embedded store in its
-- configuration (dags_folder), so that commands run against that store
-- find the folder without --dags.  Only a change is written.
local function record_folder(ctx, st, dir)
    local abs = dir
    if abs:sub(1, 1) ~= "/" then
        local cwd = os.getenv("PWD")
        if not cwd then return end
        abs = cwd .. "/" .. abs:gsub("^%./", "")
    end
    abs = abs:gsub("/+$", "")
    if abs == "" then abs = "/" end
    local config = need("zkflow.config")
    local tbl = config.read(st, ctx.root)
    if type(tbl) == "table" and tbl.dags_folder == abs then return end
    local ok, err = config.set(st, ctx.root, "dags_folder", abs)
    if not ok then warn("cannot record the DAG folder in the store: " .. tostring(err)) end
end

-- Builds what a serving command runs through the composition root
-- (zkflow.node), the same assembly as the embedded engine's.
local function serve(ctx, dir, with_sched, with_api, with_worker)
    dir = dir or ctx.dags
    local on_zk = ctx.zk and ctx.zk ~= ""
    if not is_dir(dir) and not on_zk then
        fail("no DAG folder '" .. dir .. "'")
    end
    ctx.dags = dir
    -- A daemon waits for ZooKeeper (and its chroot) instead of failing.
    ctx.serving = on_zk
    local st = ctx:store(true)
    local folder = dir
    if on_zk and not is_dir(dir) then
        -- A cluster member may live on pushed DAGs alone.
        warn("no DAG folder '" .. dir .. "': only the DAGs pushed to "
             .. "ZooKeeper (zkflow dags push) run here")
        folder = nil
    end
    local slots = with_worker and positive_int(ctx, "slots")
    local listen = ctx.opts.api or "127.0.0.1:8080"
    local auth = with_api and api_auth(ctx, listen)
    local n, err = need("zkflow.node").start {
        store = st, zk = on_zk, db = ctx.db, root = ctx.root,
        dags_dir = folder,
        log_dir = on_zk and cluster_logs(ctx) or ctx:logs_dir(),
        scheduler = with_sched, busy = "fail",
        worker = with_worker, slots = slots or nil,
        queues = with_worker and queue_list(ctx) or nil,
        id = ctx.opts.id,
        worker_id = with_sched and ctx.opts.id and (ctx.opts.id .. "-worker")
            or ctx.opts.id,
        on_event = function(kind, obj)
            core.log("info", event_line(kind, obj))
        end,
        listen = function(fn) insert(ctx.session_listeners, fn) end,
        api = with_api, auth = auth, history_url = ctx.history_url,
    }
    if not n then
        fail(err .. ": stop it, or give this one its own --db "
             .. "(zkflow api serves the API of that store)")
    end
    running.node = n
    if with_sched and not on_zk then record_folder(ctx, st, dir) end
    local url = "none"
    if with_api then
        url = start_api(n.api, listen) or "none"
    end
    running.ctx, running.store = ctx, st
    return n.dags, url
end

local function store_name(ctx)
    if ctx.zk and ctx.zk ~= "" then return "zk://" .. ctx.zk:gsub("^zk://", "") end
    return ctx.db
end

local function cmd_standalone(ctx, args)
    local dir = args[1] or ctx.dags
    local on_zk = ctx.zk and ctx.zk ~= ""
    local provider, url = serve(ctx, dir, true, not ctx.opts["no-api"], on_zk)
    stdout:write(fmt("zkflow standalone: %d dags loaded from %s, store %s, "
                     .. "api %s\n", count_dags(provider), dir, store_name(ctx), url))
    stdout:flush()
    return _M.KEEP_RUNNING
end

local function cmd_scheduler(ctx)
    local provider = serve(ctx, ctx.dags, true, false)
    stdout:write(fmt("zkflow scheduler: %d dags loaded from %s, store %s\n",
                     count_dags(provider), ctx.dags, store_name(ctx)))
    stdout:flush()
    return _M.KEEP_RUNNING
end

local function cmd_api(ctx)
    local _, url = serve(ctx, ctx.dags, false, true)
    stdout:write(fmt("zkflow api: store %s, api %s\n", store_name(ctx), url))
    stdout:flush()
    return _M.KEEP_RUNNING
end

local function cmd_worker(ctx)
    if not ctx.zk or ctx.zk == "" then
        usage_error("a worker takes tries from the ZooKeeper queue: give --zk "
                    .. "HOSTS or ZKFLOW_ZK (on one machine 'zkflow standalone' "
                    .. "runs the tasks itself)")
    end
    -- Bad options are usage errors before any connection is tried.
    positive_int(ctx, "slots")
    queue_list(ctx)
    local provider = serve(ctx, ctx.dags, false, false, true)
    local w = running.node.parts.worker
    stdout:write(fmt("zkflow worker %s: %d dags loaded from %s, queues %s, "
                     .. "%d slots, store %s\n", w.id, count_dags(provider),
                     ctx.dags, concat(w.queues, ","), w.slots, store_name(ctx)))
    stdout:flush()
    return _M.KEEP_RUNNING
end

-- Stops what a serving command started; the engine's shutdown calls it.
function _M.shutdown()
    if running.node then running.node:stop() end
    if core.api_close then pcall(core.api_close) end
    if running.ctx then running.ctx:close() end
    running = {}
end

_M.standalone, _M.scheduler, _M.api, _M.worker =
    cmd_standalone, cmd_scheduler, cmd_api, cmd_worker

return _M
