-- zkflow.cli: the `zkflow` command line.
--
-- A git-style command table: one entry {name, fn, help, usage, opts, args}
-- per command, families ("dags", "runs", "tasks", ...) holding their own
-- table of verbs, and one cmd_<noun>_<verb> function each.  core/cli/main.c
-- calls _M.main(argv) in a coroutine on the engine's loop, so commands may
-- wait (a backfill runs its scheduler here) without blocking anything.
--
-- stdout carries data (`--json` for machines), stderr carries errors as
-- "zkflow: <message>".  Exit codes: 0 ok, 1 failed work, 2 usage error.
--
-- This file keeps the command table, the parsing of the command line, the
-- help texts and main(); the commands live in one file per family
-- (serve, dags, runs, config, zk) beside it, with the context they run
-- against (context.lua) and how they report (output.lua).

local core    = require "zkflow.core"
local output  = require "zkflow.cli.output"
local context = require "zkflow.cli.context"
local serve   = require "zkflow.cli.serve"
local dags    = require "zkflow.cli.dags"
local runs    = require "zkflow.cli.runs"
local config  = require "zkflow.cli.config"
local zk      = require "zkflow.cli.zk"
local users   = require "zkflow.cli.users"
local db      = require "zkflow.cli.db"
local settings = require "zkflow.cli.settings"

local _M = {}

local stdout, stderr = io.stdout, io.stderr
local concat = table.concat
local fmt = string.format
local usage_error, warn = output.usage_error, output.warn
local json_out, out = output.json_out, output.out
local new_ctx = context.new

-- Returned by a command that keeps serving (standalone): the host keeps
-- the loop running until a signal instead of exiting.
_M.KEEP_RUNNING = serve.KEEP_RUNNING

-- Stops what a serving command started; the engine's shutdown calls it.
_M.shutdown = serve.shutdown

-- ---- lua ------------------------------------------------------------------

local function cmd_lua(_, args)
    local file = args[1]
    local script_args = { [0] = file }
    for i = 2, #args do script_args[i - 1] = args[i] end
    -- Globals the script sets stay in its own table.
    local env = setmetatable({ arg = script_args }, { __index = _G })
    local fn, err = loadfile(file, "t", env)
    if not fn then
        warn(err)
        return 1
    end
    local ok, e = pcall(fn, table.unpack(script_args))
    if not ok then
        warn(type(e) == "table" and (e.msg or e.message or core.json_encode(e))
             or tostring(e))
        return 1
    end
    return 0
end

-- ---- version ----------------------------------------------------------------

local function cmd_version(ctx)
    if ctx.json then
        json_out({ version = core.version })
    else
        out("zkflow ", tostring(core.version))
    end
    return 0
end

-- ---- the command table ------------------------------------------------------

local JSON = { "json", nil, "print JSON" }

local commands = {
    { name = "standalone", fn = serve.standalone,
      help = "scheduler, executor and HTTP API in one process",
      usage = "standalone [DIR] [--api ADDR:PORT] [--no-api] [--no-auth]",
      args = { 0, 1 },
      more = "With --zk the process joins the cluster as a scheduler (elected) "
             .. "and a worker, and serves the API.",
      opts = { { "api", "ADDR:PORT", "serve the API and page here "
                 .. "(default 127.0.0.1:8080)" },
               { "no-api", nil, "do not serve the HTTP API" },
               { "no-auth", nil, "let the API serve anyone even beyond loopback "
                 .. "(default: users and tokens, zkflow users)" },
               { "id", "ID", "member id with --zk (default scheduler-HOST-PID)" },
               { "log-dir", "DIR", "task logs (default: beside the store; ./logs with --zk)" } } },
    { name = "scheduler", fn = serve.scheduler,
      help = "run the scheduler on --dags DIR (with --zk: elected, tasks go to workers)",
      usage = "scheduler [--dags DIR] [--id ID]", args = { 0, 0 },
      opts = { { "id", "ID", "member id with --zk (default scheduler-HOST-PID)" },
               { "log-dir", "DIR", "task logs (default: beside the store)" } } },
    { name = "api", fn = serve.api, help = "serve the HTTP API and page only",
      usage = "api [--api ADDR:PORT] [--no-auth]", args = { 0, 0 },
      opts = { { "api", "ADDR:PORT", "listen here (default 127.0.0.1:8080)" },
               { "no-auth", nil, "let the API serve anyone even beyond loopback "
                 .. "(default: users and tokens, zkflow users)" } } },
    { name = "worker", fn = serve.worker,
      help = "run tasks from the ZooKeeper queue (needs --zk)",
      usage = "worker [--dags DIR] [--queues Q1,Q2] [--slots N] [--id ID]", args = { 0, 0 },
      opts = { { "queues", "Q1,Q2", "queues to take tasks from (default: default)" },
               { "slots", "N", "tasks to run at once (default: worker_slots of "
                 .. "/config, else 4)" },
               { "id", "ID", "member id (default worker-HOST-PID)" },
               { "log-dir", "DIR", "task logs (default ./logs)" } } },
    { name = "lua", fn = cmd_lua,
      help = "run a Lua script inside zkflow's interpreter",
      usage = "lua FILE [ARGS...]", args = { 1, math.huge }, raw_after = 1 },
    { name = "dags", help = "list, show, test, trigger, pause and backfill DAGs",
      sub = {
        { name = "list", fn = dags.list,
          help = "list the DAGs of the DAG folder and its import errors",
          usage = "dags list [--dags DIR] [--json]", args = { 0, 0 },
          opts = { JSON } },
        { name = "show", fn = dags.show,
          help = "show a DAG's settings and its tasks as a tree",
          usage = "dags show DAG_ID [--json]", args = { 1, 1 },
          opts = { JSON } },
        { name = "test", fn = dags.test,
          help = "run one DAG run to its end in this process",
          usage = "dags test FILE|DAG_ID [--date ISO8601] [--json]",
          args = { 1, 1 },
          opts = { { "date", "ISO8601", "logical date of the run "
                     .. "(default now)" }, JSON } },
        { name = "trigger", fn = dags.trigger,
          help = "queue a manual run of a DAG",
          usage = "dags trigger DAG_ID [--conf JSON] [--run-id ID] "
                  .. "[--date ISO8601] [--wait] [--json]",
          args = { 1, 1 },
          opts = { { "conf", "JSON", "run configuration, a JSON object" },
                   { "run-id", "ID", "the run id (default manual__<date>)" },
                   { "date", "ISO8601", "logical date (default now)" },
                   { "wait", nil, "follow the run to its end (progress on "
                     .. "stderr); exit 0 when it succeeded, 1 when it failed" },
                   JSON } },
        { name = "pause", fn = dags.pause,
          help = "stop scheduling new runs of a DAG",
          usage = "dags pause DAG_ID", args = { 1, 1 }, opts = { JSON } },
        { name = "unpause", fn = dags.unpause,
          help = "resume scheduling a DAG",
          usage = "dags unpause DAG_ID", args = { 1, 1 }, opts = { JSON } },
        { name = "push", fn = dags.push,
          help = "store DAG files in the store (ZooKeeper), where every "
                 .. "scheduler and worker loads them",
          usage = "dags push FILE... [--json] | dags push --remove DAG_ID...",
          args = { 1, math.huge },
          more = "A pushed DAG wins over a DAG folder's file of the same id; "
                 .. "schedulers and workers watch /dags and load a push at once. "
                 .. "A file that does not load is not pushed (exit 1).",
          opts = { { "remove", nil, "take pushed DAGs out (by id)" }, JSON } },
        { name = "backfill", fn = dags.backfill,
          help = "run a DAG for every schedule interval between two dates",
          usage = "dags backfill DAG_ID --start ISO8601 --end ISO8601 [--json]",
          args = { 1, 1 },
          opts = { { "start", "ISO8601", "first logical date (included)" },
                   { "end", "ISO8601", "last logical date (included)" },
                   JSON } },
      } },
    { name = "runs", help = "list and show DAG runs",
      sub = {
        { name = "list", fn = runs.runs_list, help = "list DAG runs",
          usage = "runs list [DAG_ID] [--state STATE] [--limit N] [--offset N] [--json]",
          args = { 0, 1 },
          opts = { { "state", "STATE", "only runs in this state: queued, running, "
                     .. "success or failed" },
                   { "limit", "N", "at most N runs, newest first (default 25, at most 1000)" },
                   { "offset", "N", "skip the N newest runs (the next page: --offset 25)" },
                   JSON } },
        { name = "show", fn = runs.runs_show,
          help = "show a run and the state of its tasks",
          usage = "runs show DAG_ID RUN_ID [--json]", args = { 2, 2 },
          opts = { JSON } },
      } },
    { name = "tasks", help = "test a task; task instance state, logs and "
                             .. "clearing",
      sub = {
        { name = "test", fn = runs.tasks_test,
          help = "run one task instance now, in this process, without its "
                 .. "dependencies and without recording it",
          usage = "tasks test DAG_ID TASK_ID [--date ISO8601] [--xcom TASK=JSON]... "
                  .. "[--json]",
          args = { 2, 2 },
          opts = { { "date", "ISO8601", "logical date of the run "
                     .. "(default now)" },
                   { "xcom", "TASK=JSON", "the XCom (return value) of TASK, "
                     .. "standing in for an upstream's; repeatable", many = true },
                   JSON } },
        { name = "state", fn = runs.tasks_state,
          help = "print the state of a task instance",
          usage = "tasks state DAG_ID RUN_ID TASK_ID [--json]",
          args = { 3, 3 }, opts = { JSON } },
        { name = "logs", fn = runs.tasks_logs,
          help = "print the log of a task instance's try",
          usage = "tasks logs DAG_ID RUN_ID TASK_ID [--try N] [-f]",
          args = { 3, 3 },
          opts = { { "try", "N", "which try (default the last)" },
                   { "follow", nil, "print the log as it grows until the try "
                     .. "ends (on any worker: read where tasks logs reads)", "f" } } },
        { name = "clear", fn = runs.tasks_clear,
          help = "clear task instances so that the scheduler runs them again",
          usage = "tasks clear DAG_ID RUN_ID [TASK_ID...] [--downstream] "
                  .. "[--json]",
          args = { 2, math.huge },
          opts = { { "downstream", nil, "also clear the tasks downstream" },
                   JSON } },
      } },
    { name = "config", help = "read and change the cluster configuration "
                              .. "(<root>/config)",
      sub = {
        { name = "get", fn = config.get,
          help = "print the configuration, or the value of KEY (exit 1 "
                 .. "when it is not set)",
          usage = "config get [KEY] [--json]", args = { 0, 1 },
          opts = { JSON } },
        { name = "set", fn = config.set,
          help = "set KEY (dotted, e.g. pools.db) to VALUE: JSON when it "
                 .. "parses as JSON, else the text as a string",
          usage = "config set KEY VALUE [--json]", args = { 2, 2 },
          more = function() return config.help() end,
          opts = { JSON } },
        { name = "unset", fn = config.unset,
          help = "remove KEY (exit 1 when it is not set)",
          usage = "config unset KEY", args = { 1, 1 } },
      } },
    { name = "users", help = "who may use the HTTP API: users, roles, tokens",
      more = "Roles: viewer reads; operator also triggers, pauses and clears; admin "
             .. "also manages users and configuration.  The API asks for a user "
             .. "(Authorization: Bearer TOKEN, or HTTP basic) whenever it listens "
             .. "beyond loopback, unless started with --no-auth.",
      sub = {
        { name = "add", fn = users.add, help = "add a user with a role",
          usage = "users add NAME [--role ROLE] [--password-stdin] [--replace] [--json]",
          args = { 1, 1 },
          opts = { { "role", "ROLE", "viewer (default), operator or admin" },
                   { "password-stdin", nil, "read a password (for HTTP basic) from "
                     .. "standard input" },
                   { "replace", nil, "change an existing user" }, JSON } },
        { name = "list", fn = users.list, help = "list the users",
          usage = "users list [--json]", args = { 0, 0 }, opts = { JSON } },
        { name = "delete", fn = users.delete, help = "delete a user and its tokens",
          usage = "users delete NAME", args = { 1, 1 } },
        { name = "token", fn = users.token,
          help = "make an API token for a user (printed once; kept only as a hash)",
          usage = "users token NAME [--label TEXT] [--json]", args = { 1, 1 },
          opts = { { "label", "TEXT", "what the token is for" }, JSON } },
      } },
    { name = "db", help = "the history store: remove old runs",
      sub = {
        { name = "clean", fn = db.clean,
          help = "remove finished runs (task instances, XComs, logs) from the history",
          usage = "db clean --before DATE [--dag ID] [--keep-last N] [--dry-run] [--json]",
          args = { 0, 0 },
          more = "Removes the runs that started before DATE, their task instances, "
                 .. "XComs, log copies and log folders, then the DAG versions no run "
                 .. "refers to; prints what it removed.  Runs that have not ended are "
                 .. "never removed.  retention_days in /config does the same continuously.",
          opts = { { "before", "DATE", "remove runs that started before this "
                     .. "(ISO 8601)" },
                   { "dag", "ID", "only this DAG's runs" },
                   { "keep-last", "N", "keep the last N runs of each DAG" },
                   { "dry-run", nil, "only say what would be removed" },
                   JSON } },
      } },
    { name = "members", fn = config.members,
      help = "list the schedulers and workers of the cluster",
      usage = "members [--json]", args = { 0, 0 }, opts = { JSON } },
    { name = "zk", help = "read and write the store's tree (znodes)",
      sub = {
        { name = "ls", fn = zk.ls, help = "list a node's children",
          usage = "zk ls PATH [--json]", args = { 0, 1 }, opts = { JSON } },
        { name = "get", fn = zk.get, help = "print a node's data",
          usage = "zk get PATH [--json]", args = { 1, 1 }, opts = { JSON } },
        { name = "set", fn = zk.set,
          help = "set a node's data (created with its parents if missing)",
          usage = "zk set PATH [DATA]  (DATA from stdin when left out)",
          args = { 1, 2 } },
        { name = "rm", fn = zk.rm, help = "delete a node",
          usage = "zk rm PATH [--recursive]", args = { 1, 1 },
          opts = { { "recursive", nil, "delete its children too" } } },
        { name = "dump", fn = zk.dump,
          help = "write a subtree as JSON to FILE or stdout",
          usage = "zk dump PATH [FILE] [--json]", args = { 1, 2 },
          opts = { JSON } },
        { name = "restore", fn = zk.restore,
          help = "recreate a subtree from a dump (FILE or stdin)",
          usage = "zk restore PATH [FILE] [--overwrite] [--dry-run]",
          args = { 1, 2 },
          opts = { { "overwrite", nil, "replace data of existing nodes" },
                   { "dry-run", nil, "only say what would change" },
                   JSON } },
        { name = "health", fn = zk.health,
          help = "ruok/srvr/mntr of every ensemble member (exit 1 if one "
                 .. "does not serve)",
          usage = "zk health [HOSTS] [--timeout SECONDS] [--json]",
          args = { 0, 1 },
          opts = { { "timeout", "SECONDS", "per member (default 5)" },
                   JSON } },
      } },
    { name = "check-config", fn = config.check,
      help = "show each setting, its value and where it comes from; exit 1 "
             .. "on a problem",
      usage = "check-config [--config FILE] [--json]", args = { 0, 0 },
      more = "A setting comes from the command line, else ZKFLOW_<NAME> in the "
             .. "environment, else the configuration file (--config FILE, "
             .. "ZKFLOW_CONFIG, /etc/zkflow/zkflow.conf: lines 'name = value' "
             .. "naming the global options, e.g. 'dags = /srv/dags'; relative "
             .. "paths are relative to the file), else the DAG folder a "
             .. "standalone recorded in the store, else ZKFLOW_HOME "
             .. "($ZKFLOW_HOME/zkflow.db, $ZKFLOW_HOME/dags), else the default.",
      opts = { JSON } },
    { name = "version", fn = cmd_version, help = "print the version",
      usage = "version [--json]", args = { 0, 0 }, opts = { JSON } },
}

_M.commands = commands

local GLOBAL = {
    { "db", "PATH", "embedded store file (default ./zkflow.db, ZKFLOW_DB)" },
    { "dags", "DIR", "DAG folder (default ./dags, ZKFLOW_DAGS)" },
    { "root", "PATH", "root znode (default /zkflow)" },
    { "zk", "HOSTS", "ZooKeeper ensemble HOST:PORT[,...][/chroot] (ZKFLOW_ZK)" },
    { "db-sync", "MODE", "SQLite synchronous: off, normal, full or extra" },
    { "history", "URL", "history store: sqlite:PATH or postgresql://... "
      .. "(default: the --db file; with --zk history_url of /config) (ZKFLOW_HISTORY)" },
    { "session-timeout", "SECONDS", "ZooKeeper session timeout (default 10)" },
    { "zk-auth", "USER:PASSWORD", "ZooKeeper digest credentials (ZKFLOW_ZK_AUTH)" },
    { "zk-acl", "ACL", "ACL of the nodes created: creator (default with --zk-auth), "
      .. "open, read or scheme:id:perms,... (ZKFLOW_ZK_ACL)" },
    { "log-dir", "DIR", "task logs (default: beside the store; ZKFLOW_LOG_DIR)" },
    { "config", "FILE", "settings file (default /etc/zkflow/zkflow.conf, "
      .. "ZKFLOW_CONFIG; see check-config)" },
    { "json", nil, "print JSON where there is data to print" },
    { "help", nil, "show help (also -h)" },
    { "version", nil, "print the version (also -V)" },
}

local function find(list, name)
    for _, c in ipairs(list) do
        if c.name == name then return c end
    end
end

local function find_opt(list, name)
    for _, o in ipairs(list or {}) do
        if o[1] == name then return o end
    end
end

-- The option whose one-letter name (its 4th field) is `letter`.
local function find_short(list, letter)
    for _, o in ipairs(list or {}) do
        if o[4] == letter then return o end
    end
end

local function opt_lines(list)
    local lines = {}
    for _, o in ipairs(list) do
        local left = (o[4] and ("-" .. o[4] .. ", ") or "") .. "--" .. o[1]
                     .. (o[2] and (" " .. o[2]) or "")
        lines[#lines + 1] = fmt("  %-28s %s", left, o[3])
    end
    return concat(lines, "\n")
end

local function help_text(path, cmd)
    local lines = {}
    local function add(s) lines[#lines + 1] = s end
    if not cmd then
        add("usage: zkflow [OPTIONS] COMMAND [ARGS...]")
        add("")
        add("An Airflow-like workflow scheduler with Lua DAGs.")
        add("")
        add("commands:")
        for _, c in ipairs(commands) do
            add(fmt("  %-12s %s", c.name, c.help))
        end
        add("")
        add("options (anywhere on the line):")
        add(opt_lines(GLOBAL))
        add("")
        add("An option with a value may also come from ZKFLOW_<NAME> or the settings "
            .. "file ('zkflow check-config' shows which).")
        add("'zkflow COMMAND --help' tells more.  Exit codes: 0 ok, "
            .. "1 failed work, 2 usage error.")
    elseif cmd.sub then
        add("usage: zkflow " .. cmd.name .. " COMMAND [ARGS...]")
        add("")
        add(cmd.help)
        add("")
        add("commands:")
        for _, c in ipairs(cmd.sub) do
            add(fmt("  %-12s %s", c.name, c.help))
        end
        add("")
        add("'zkflow " .. cmd.name .. " COMMAND --help' tells more.")
    else
        add("usage: zkflow " .. cmd.usage)
        add("")
        add(cmd.help)
        if cmd.more then
            add("")
            add(type(cmd.more) == "function" and cmd.more() or cmd.more)
        end
        if cmd.opts and #cmd.opts > 0 then
            add("")
            add("options:")
            add(opt_lines(cmd.opts))
        end
        add("")
        add("global options: --db PATH, --dags DIR, --root PATH, --zk HOSTS, "
            .. "--db-sync MODE")
        add("(see 'zkflow --help')")
    end
    local _ = path
    return concat(lines, "\n") .. "\n"
end

-- The table, the global options and the help texts, for the man pages
-- and the completion (zkflow.cli.docs) and their test.
_M.GLOBAL, _M.help_text, _M.settings = GLOBAL, help_text, settings

local function hint_for(path)
    if path and #path > 0 then
        return "Try 'zkflow " .. concat(path, " ") .. " --help'."
    end
    return "Try 'zkflow --help'."
end

-- Applies a global option (name without dashes) to ctx; returns true when
-- it was one, and whether it took the value.  A value is checked by the
-- rule the configuration file's is (zkflow.cli.settings).
local function apply_global(ctx, name, value)
    local o = find_opt(GLOBAL, name)
    if not o then return false end
    if name == "json" then
        ctx.json = true
    elseif name == "help" then
        ctx.help = true
    elseif name == "version" then
        ctx.version = true
    elseif name == "config" then
        ctx.config_flag = value
    else
        local v, err = settings.check(name, value)
        if v == nil then
            usage_error("--" .. name .. ": " .. err)
        end
        ctx[settings.field(name)] = v
        ctx.sources[name] = "flag"
        if name == "db" then ctx.db_given = true end
    end
    return true
end

-- Parses argv into (ctx, cmd, args, path).  Global options are taken
-- anywhere before `--`; a command's own options after its name.
local function parse(ctx, argv)
    local path = {}
    local level = commands
    local cmd
    local args = {}
    local i, n = 1, #argv
    local raw = false
    while i <= n do
        local a = argv[i]
        if raw then
            args[#args + 1] = a
        elseif a == "--" then
            raw = true
        elseif a == "-h" then
            ctx.help = true
        elseif a == "-V" and not cmd then
            ctx.version = true
        elseif a:sub(1, 2) == "--" and #a > 2 then
            local name, value = a:sub(3):match("^([^=]+)=(.*)$")
            name = name or a:sub(3)
            local o = cmd and not cmd.sub and find_opt(cmd.opts, name)
            local g = find_opt(GLOBAL, name)
            local spec = o or g
            if not spec then
                usage_error("unknown option '--" .. name .. "'", path)
            end
            if spec[2] then
                if value == nil then
                    if i == n then
                        usage_error("option '--" .. name .. "' needs a value ("
                                    .. spec[2] .. ")", path)
                    end
                    i = i + 1
                    value = argv[i]
                end
            elseif value ~= nil then
                usage_error("option '--" .. name .. "' takes no value", path)
            end
            if o and o.many then
                ctx.opts[name] = ctx.opts[name] or {}
                table.insert(ctx.opts[name], value)
            elseif o then
                ctx.opts[name] = value == nil and true or value
                if name == "json" then ctx.json = true end
            else
                apply_global(ctx, name, value)
            end
        elseif #a == 2 and a:sub(1, 1) == "-" and cmd and not cmd.sub
                and find_short(cmd.opts, a:sub(2)) then
            -- a command's one-letter option (tasks logs -f): no value
            ctx.opts[find_short(cmd.opts, a:sub(2))[1]] = true
        elseif a:sub(1, 1) == "-" and #a > 1 and not tonumber(a) then
            -- (a negative number is an argument: config set pools.db -1)
            usage_error("unknown option '" .. a .. "'", path)
        elseif not cmd or cmd.sub then
            local c = find(level, a)
            if not c then
                if cmd then
                    usage_error("'" .. a .. "' is not a '" .. cmd.name
                                .. "' command", path)
                end
                usage_error("'" .. a .. "' is not a zkflow command", path)
            end
            cmd = c
            path[#path + 1] = a
            level = c.sub or level
        else
            args[#args + 1] = a
            if cmd.raw_after and #args >= cmd.raw_after then
                raw = true
            end
        end
        i = i + 1
    end
    return cmd, args, path
end

-- Ids enter here as positional arguments named DAG_ID, RUN_ID or TASK_ID
-- in the command's usage (and --run-id): each is checked against
-- zkflow.ids, the rule the API and the DSL use, before a command builds a
-- store path or a file name from it.
local ID_ARGS = { DAG_ID = "dag_id", RUN_ID = "run_id", TASK_ID = "task_id" }

local function check_ids(cmd, args, opts, path)
    local idrule = require "zkflow.ids"
    local words, i = {}, 0
    for w in cmd.usage:gmatch("%S+") do
        if w:sub(1, 2) == "--" or w:sub(1, 3) == "[--" then
            break
        end
        i = i + 1
        if i > #path then
            words[#words + 1] = w
        end
    end
    for n, a in ipairs(args) do
        local w = words[n] or words[#words]
        local many = w and w:find("%.%.%.%]?$")
        if not words[n] and not many then
            break
        end
        local kind = w and ID_ARGS[w:gsub("[%[%]]", ""):gsub("%.%.%.$", "")]
        if kind then
            local ok, err = idrule.check(kind, a)
            if not ok then
                usage_error(err, path)
            end
        end
    end
    if opts["run-id"] then
        local ok, err = idrule.check("run_id", opts["run-id"])
        if not ok then
            usage_error("--run-id: " .. err, path)
        end
    end
end

-- Runs the command line `argv` (the arguments after the program name).
-- `defaults` may carry db, dags, root, zk, db_sync, log_dir (the engine's
-- options).  Returns the exit code, or _M.KEEP_RUNNING when the command
-- keeps serving.
function _M.main(argv, defaults)
    argv = argv or {}
    local ctx = new_ctx(defaults)
    local ok, code = pcall(function()
        local cmd, args, path = parse(ctx, argv)
        if ctx.help then
            stdout:write(help_text(path, cmd))
            return 0
        end
        if ctx.version then
            return cmd_version(ctx)
        end
        settings.apply_file(ctx)
        if #ctx.setting_problems > 0 and not (cmd and cmd.name == "check-config") then
            usage_error(concat(ctx.setting_problems, "\n") .. "\n(zkflow check-config "
                        .. "lists the settings and where each comes from)", {})
        end
        settings.apply_recorded(ctx)
        if not cmd then
            stderr:write(help_text(path, nil))
            return 2
        end
        ctx.path = path
        if cmd.sub then
            stderr:write("zkflow: '" .. cmd.name .. "' needs a command\n")
            stderr:write(help_text(path, cmd))
            return 2
        end
        local min, max = cmd.args[1], cmd.args[2]
        if #args < min then
            usage_error("missing arguments: usage: zkflow " .. cmd.usage, path)
        end
        if #args > max then
            usage_error("too many arguments: usage: zkflow " .. cmd.usage, path)
        end
        check_ids(cmd, args, ctx.opts, path)
        ctx.path = path
        local rc = cmd.fn(ctx, args)
        if rc == nil then rc = 0 end
        return rc
    end)
    stdout:flush()
    if not ok then
        local e = code
        if type(e) == "table" and e.zkflow_exit then
            stderr:write("zkflow: ", tostring(e.msg), "\n")
            if e.zkflow_exit == 2 then
                stderr:write(hint_for(e.cmd or ctx.path), "\n")
            end
            code = e.zkflow_exit
        else
            stderr:write("zkflow: ", type(e) == "table"
                         and (e.msg or core.json_encode(e)) or tostring(e),
                         "\n")
            code = 1
        end
    end
    if code ~= _M.KEEP_RUNNING then
        ctx:close()
    end
    return code
end

return _M
