-- zkflow.dsl.loader: loads DAG files, each in its own environment and within
-- limits on the instructions and memory its loading may spend.
--
-- DAG files are trusted code (as in Airflow): io and os stay available.
-- What the sandbox protects is the engine and the other files: globals a
-- file sets live in its own _ENV, what it stores in a standard library
-- table (`string.x = 1`) stays in its own view of that table, `load`
-- defaults to the file's environment, and a file
-- that loops or allocates forever while loading is stopped instead of
-- stalling or exhausting the scheduler.

local dag = require "zkflow.dsl.dag"

local _M = {}

local type, pairs, ipairs, pcall, error, tostring, setmetatable, next =
    type, pairs, ipairs, pcall, error, tostring, setmetatable, next
local getmetatable_raw = debug.getmetatable
local sfmt, concat, sort = string.format, table.concat, table.sort
local sethook = debug.sethook

dag.mark_internal()

-- string.rep("", 1 << 62) loops 2^62 times inside C, where no hook can stop
-- it, to make an empty string.  The library's own entry is replaced (in
-- this Lua state) rather than the sandbox's view of it, because
-- ("").rep("", n) and (""):rep(n) reach the library through the string
-- metatable.  The result is the same: "" (or the error of a bad argument).
do
    local rep, toint, tonum = string.rep, math.tointeger, tonumber
    string.rep = function(str, n, sep)  -- luacheck: ignore 122
        -- n as rep takes it: an integer, a float with an integral value,
        -- or a string of one
        if str == "" and (sep == nil or sep == "") and toint(tonum(n) or false) then
            return ""
        end
        return rep(str, n, sep)
    end
end

-- The defaults load a DAG of 50,000 tasks (about 600 instructions and
-- 0.8 KB kept per simple task, see docs/dags.md) with room to spare.
_M.DEFAULT_INSTRUCTIONS = 200000000
_M.DEFAULT_MEMORY = 512 * 1024 * 1024
_M.DEFAULT_TIMEOUT = 30

-- The limits in force in this Lua state (one engine): set by the
-- dag_load_* settings (/config, engine options, nginx directives) through
-- configure(); a load's own opts win.
local settings = {
    instruction_limit = _M.DEFAULT_INSTRUCTIONS,
    memory_limit = _M.DEFAULT_MEMORY,
    timeout = _M.DEFAULT_TIMEOUT,
}

local LIMIT_NAMES = { instruction_limit = true, memory_limit = true, timeout = true }

-- Two layers set them: "base" (engine options, nginx directives) and
-- "config" (/config, live); a value of the config layer wins, then the
-- base's, then the default.
local layers = { base = {}, config = {} }

--- Sets the load limits of this state: instruction_limit, memory_limit
--- (bytes; false: none), timeout (seconds of wall clock per file; false or
--- 0: files load in this process without a child asking first), in
--- `layer` ("base" or "config", the default), replacing that layer's
--- previous values (nil: not set there).
--- Returns true, or nil and a message for a bad value (nothing changes).
function _M.configure(t, layer)
    layer = layer or "config"
    if not layers[layer] then
        return nil, "unknown layer '" .. tostring(layer) .. "'"
    end
    local new = {}
    for k, v in pairs(t or {}) do
        if not LIMIT_NAMES[k] then
            return nil, "unknown load limit '" .. tostring(k) .. "'"
        end
        if k == "instruction_limit" and (math.type(v) ~= "integer" or v < 1000) then
            return nil, "instruction_limit must be an integer >= 1000"
        elseif k == "memory_limit" and v ~= false and (math.type(v) ~= "integer" or v < 1048576) then
            return nil, "memory_limit must be an integer >= 1048576 (bytes) or false"
        elseif k == "timeout" and v ~= false and (type(v) ~= "number" or v < 0) then
            return nil, "timeout must be a number of seconds >= 0 or false"
        end
        new[k] = v
    end
    layers[layer] = new
    local defaults = { instruction_limit = _M.DEFAULT_INSTRUCTIONS,
                       memory_limit = _M.DEFAULT_MEMORY, timeout = _M.DEFAULT_TIMEOUT }
    local changed = false
    for k in pairs(LIMIT_NAMES) do
        local v = layers.config[k]
        if v == nil then v = layers.base[k] end
        if v == nil then v = defaults[k] end
        if settings[k] ~= v then changed = true end
        settings[k] = v
    end
    if changed then require("zkflow.dsl.probe").reset() end
    return true
end

--- The limits in force: { instruction_limit=, memory_limit=, timeout= }.
function _M.limits()
    return { instruction_limit = settings.instruction_limit,
             memory_limit = settings.memory_limit, timeout = settings.timeout }
end

-- Instructions between two count-hook calls.  Small enough that the limit
-- is met within 0.1 %, large enough that the hook costs nothing.
local HOOK_STEP = 1000

------------------------------------------------------------------------------
-- Helpers
------------------------------------------------------------------------------

--- FNV-1a, 32 bits, as 8 hex digits: the DAG version the scheduler stores.
--- The low 32 bits of a product depend only on the low 32 bits of its
--- factors, so the mask is applied once at the end, not per byte.
function _M.hash(s)
    local h, P = 0x811c9dc5, 0x01000193
    local byte = string.byte
    local n = #s
    local i = 1
    while i + 7 <= n do
        local a, b, c, d, e, f, g, k = byte(s, i, i + 7)
        h = (h ~ a) * P
        h = (h ~ b) * P
        h = (h ~ c) * P
        h = (h ~ d) * P
        h = (h ~ e) * P
        h = (h ~ f) * P
        h = (h ~ g) * P
        h = (h ~ k) * P
        i = i + 8
    end
    while i <= n do
        h = (h ~ byte(s, i)) * P
        i = i + 1
    end
    return sfmt("%08x", h & 0xffffffff)
end

local function read_file(path)
    local f, err = io.open(path, "rb")
    if not f then
        return nil, err
    end
    local data = f:read("a")
    f:close()
    if not data then
        return nil, path .. ": cannot read"
    end
    return data
end

local function dirname(path)
    local d = path:match("^(.*)/[^/]*$")
    if d == nil then
        return "."
    end
    if d == "" then
        return "/"
    end
    return d
end

local function core_module()
    local ok, core = pcall(require, "zkflow.core")
    if ok and type(core) == "table" then
        return core
    end
    return nil
end

local function shallow(t)
    local c = {}
    for k, v in pairs(t) do c[k] = v end
    return c
end

------------------------------------------------------------------------------
-- The per-file environment
------------------------------------------------------------------------------

-- Every file sees the same standard functions (functions cannot be
-- changed, so sharing them is safe) and a view of the library tables of
-- its own.  A library view is a small table created the first time the
-- file names that library: what the file stores in it stays there (reads
-- fall through to the shared library, which the file cannot reach to
-- modify), so `string.x = 1` in one file is seen by no other file and not
-- by the engine.  Creating views lazily keeps a file that never names a
-- library, or whose DAG keeps no closure over its _ENV, from costing the
-- copies (about 4 KB per file).
local SHARED = {}
for _, k in ipairs({
    "assert", "error", "getmetatable", "ipairs", "next", "pairs", "pcall",
    "print", "rawequal", "rawget", "rawlen", "rawset", "select",
    "setmetatable", "tonumber", "tostring", "type", "xpcall", "_VERSION",
    "warn",
}) do
    SHARED[k] = _G[k]
end
SHARED.collectgarbage = function(opt, ...)
    if opt == nil or opt == "collect" or opt == "count" or opt == "step" then
        return collectgarbage(opt, ...)
    end
    error("collectgarbage('" .. tostring(opt) .. "') is not available while loading DAGs", 2)
end

-- pairs() over a view lists the library's entries and the file's own.
local function view_pairs(view)
    local lib = getmetatable_raw(view).__index
    local merged = {}
    for k, v in next, lib do merged[k] = v end
    for k, v in next, view do merged[k] = v end
    return next, merged, nil
end

-- One metatable per library, shared by every file's view of it; hidden
-- from the file (__metatable) so that the library behind it stays out of
-- reach.  os has no exit: a DAG file must not stop the engine.
local VIEW_MT = {}
for _, k in ipairs({ "string", "table", "math", "utf8", "io", "os", "coroutine" }) do
    local lib = _G[k]
    if k == "os" then
        lib = shallow(os)
        lib.exit = nil
    end
    VIEW_MT[k] = { __index = lib, __pairs = view_pairs, __metatable = false }
end

-- Read-only faces of what files share.  A file may read a metatable or a
-- zkflow module but not change it: a metatable zkflow made (a task's, a
-- DAG's, the string metatable) or a module changed by one file would
-- change every other DAG and the engine.
local readonly_cache = setmetatable({}, { __mode = "k" })

local function refuse_write(_, k)
    error(sfmt("cannot change '%s': DAG files share it with every other DAG "
               .. "(see docs/dags.md, the sandbox)", tostring(k)), 2)
end

-- A read-only face of `t`, all the way down: a table read through it is
-- read-only too (a metatable's __index is the defaults every task
-- shares).  Keys in `hide` read as nil.  Faces without `hide` are made
-- once per table.
local readonly

local function face_of(v)
    if type(v) == "table" then
        return readonly(v)
    end
    return v
end

function readonly(t, hide)
    local p = not hide and readonly_cache[t]
    if p then return p end
    p = setmetatable({}, {
        __index = function(_, k)
            if hide and hide[k] then return nil end
            return face_of(t[k])
        end,
        __newindex = refuse_write,
        __pairs = function()
            return function(_, k)
                local nk, v = next(t, k)
                return nk, face_of(v)
            end, t, nil
        end,
        __len = function() return #t end,
        __metatable = false,
    })
    if not hide then readonly_cache[t] = p end
    return p
end

-- What `require` of a DAG file gives beyond the DAG folder's own modules:
-- the standard libraries are the file's own views (os without exit),
-- debug is refused (it would lift the loader's limits and reach every
-- other file), zkflow.core comes without the switches of the limits, and
-- every other zkflow module read-only.
local STD_LIBS = { string = true, table = true, math = true, utf8 = true,
                   io = true, os = true, coroutine = true }
local CORE_HIDDEN = { mem_limit = true }

local function require_shared(modname, env)
    if STD_LIBS[modname] then
        return env[modname]
    end
    if modname == "debug" then
        error("module 'debug' is not available in DAG files: it could lift the "
              .. "loader's limits and change other DAGs", 3)
    end
    local m = require(modname)
    if modname == "zkflow.core" and type(m) == "table" then
        return readonly(m, CORE_HIDDEN)
    end
    if type(m) == "table" and (modname == "zkflow" or modname:find("^zkflow%.")) then
        return readonly(m)
    end
    return m
end

-- Builds the base of one file's environment: the per-file functions (the
-- ones that must know the file: require is set by load_source, load and
-- friends default to the file's _ENV), with everything else reached
-- through a metatable that makes library views on first use and falls
-- back to SHARED.  debug, os.exit and the package loaders are left out.
local function make_base(env_of, hooks)
    local base = {}
    base.load = function(chunk, name, mode, env)
        if env == nil then env = env_of() end
        return load(chunk, name, mode, env)
    end
    base.loadfile = function(path, mode, env)
        if env == nil then env = env_of() end
        return loadfile(path, mode, env)
    end
    base.dofile = function(path)
        local f = assert(loadfile(path, "t", env_of()))
        return f()
    end
    -- Metatables the file set are its own to read and change; any other
    -- (zkflow's, the string metatable) it sees read-only, strings with its
    -- own view of the string library behind them.
    local own = setmetatable({}, { __mode = "k" })
    local string_mt
    base.setmetatable = function(t, mt)
        if type(mt) == "table" then own[mt] = true end
        return setmetatable(t, mt)
    end
    base.getmetatable = function(o)
        local mt = getmetatable(o)
        if type(mt) ~= "table" or own[mt] then
            return mt
        end
        if type(o) == "string" then
            string_mt = string_mt or readonly(setmetatable({ __index = env_of().string },
                                                           { __index = mt }))
            return string_mt
        end
        return readonly(mt)
    end
    setmetatable(base, { __index = function(t, k)
        local mt = VIEW_MT[k]
        if mt then
            local view = setmetatable({}, mt)
            if k == "coroutine" then
                -- coroutines get the same instruction budget as the main
                -- code while the file loads
                view.create = function(f)
                    local c = coroutine.create(f)
                    hooks.attach(c)
                    return c
                end
                view.wrap = function(f)
                    local c = view.create(f)
                    return function(...)
                        local r = table.pack(coroutine.resume(c, ...))
                        if not r[1] then
                            error(r[2], 0)
                        end
                        return table.unpack(r, 2, r.n)
                    end
                end
            end
            rawset(t, k, view)
            return view
        elseif k == "package" then
            local p = { path = package.path, cpath = package.cpath, config = package.config }
            rawset(t, k, p)
            return p
        end
        return SHARED[k]
    end })
    return base
end

-- A fresh environment over `base`; the metatable is hidden so that the file
-- cannot reach `base` through getmetatable(_ENV).
local function make_env(base)
    local env = setmetatable({}, { __index = base, __metatable = false })
    env._G = env
    return env
end

------------------------------------------------------------------------------
-- Limits
------------------------------------------------------------------------------

-- The instruction budget shared by the loading thread and any coroutine
-- the file creates.  Past the budget the hook fires on every instruction,
-- so a file that catches the error with pcall cannot keep going.
--
-- When the allocator cannot be capped (plain lua5.4: core.mem_limit says
-- false, or no C module at all), the same hook also watches the heap with
-- collectgarbage("count"); a full collection runs before it gives up, so
-- garbage alone never trips the limit.  This is approximate (a single
-- huge allocation is seen after the fact) where the engine's is exact.
local function new_budget(limit, label)
    local b = { used = 0, limit = limit, exceeded = false, threads = {} }
    local function stop(why)
        if not b.exceeded then
            b.exceeded = why
            sethook(b.hook, "", 1)
        end
        if b.exceeded == "memory" then
            error(sfmt("%s: loading exceeded the memory limit (%d bytes)", label, b.mem_limit), 0)
        end
        error(sfmt("%s: loading exceeded the instruction limit (%d)", label, b.limit), 0)
    end
    function b.hook()
        if b.exceeded then
            stop(b.exceeded)
        end
        b.used = b.used + HOOK_STEP
        if b.used > b.limit then
            stop("instructions")
        end
        if b.mem_limit then
            local heap = collectgarbage("count") * 1024 - b.mem_base
            if heap > b.mem_limit then
                collectgarbage()
                if collectgarbage("count") * 1024 - b.mem_base > b.mem_limit then
                    stop("memory")
                end
            end
        end
    end
    function b.watch_memory(bytes)
        b.mem_limit = bytes
        b.mem_base = collectgarbage("count") * 1024
    end
    function b.attach(thread)
        if b.finished then
            return
        end
        b.threads[#b.threads + 1] = thread
        sethook(thread, b.hook, "", b.exceeded and 1 or HOOK_STEP)
    end
    -- The load is over: hooks off, and coroutines a task creates later
    -- (through the file's coroutine view) run without the load's budget.
    function b.finish()
        b.finished = true
        for _, th in ipairs(b.threads) do
            sethook(th)
        end
        b.threads = {}
    end
    return b
end

------------------------------------------------------------------------------
-- Loading one file
------------------------------------------------------------------------------

local load_source

local function is_dag_list(v)
    if type(v) ~= "table" or dag.is_dag(v) then
        return false
    end
    for _, x in ipairs(v) do
        if not dag.is_dag(x) then return false end
    end
    return #v > 0
end

--- Loads DAGs from Lua source text.  `name` is the path used in messages
--- and as `dag.file`.  opts:
---   root              DAG folder: user operators are <root>/operators/*.lua
---                     (default: the directory of `name`)
---   instruction_limit default: the setting (configure), 200 000 000
---   memory_limit      extra bytes the load may allocate, default: the
---                     setting, 512 MiB;
---                     false disables.  Exact inside the engine (its
---                     allocator is capped), approximate in plain lua5.4
--- A file may return one dag, a list of dags, or nothing: every dag it
--- creates with flow.dag is collected either way.
--- Returns a list of dags, or nil and an error naming the file (and line).
function _M.load_source(src, name, opts)
    return load_source(src, name, opts, _M.hash(src))
end

-- load_source with the source's hash already known (scan has it).
function load_source(src, name, opts, hash)
    opts = opts or {}
    local root = opts.root or dirname(name)
    local ilimit = opts.instruction_limit or settings.instruction_limit
    local mlimit = opts.memory_limit
    if mlimit == nil then mlimit = settings.memory_limit end
    -- what the load read (or looked for) from the DAG folder: path -> hash
    -- (false: absent), for zkflow.dsl.probe's cache
    local deps = opts.deps or {}

    local env
    local budget = new_budget(ilimit, name)
    local base = make_base(function() return env end, budget)
    env = make_env(base)

    local collected = {}
    local loading_src = src
    local user_ops = {}       -- name -> module | false (not found)
    local modules = {}        -- modules this file loaded from the DAG folder
    local flow_proxy

    -- Resolution order of t.<name>: zkflow.operators.<name> (shipped or on
    -- package.path), then <root>/operators/<name>.lua.
    local sandbox_require

    local function find_operator(opname)
        local mod, err = dag.find_builtin(opname)
        if mod ~= nil or err then
            return mod, err
        end
        if user_ops[opname] ~= nil then
            return user_ops[opname] or nil
        end
        if not opname:find("^[%a_][%w_]*$") then
            return nil
        end
        local path = root .. "/operators/" .. opname .. ".lua"
        local code = read_file(path)
        deps[path] = code and _M.hash(code) or false
        if not code then
            user_ops[opname] = false
            return nil
        end
        local fn, lerr = load(code, "@" .. path, "t", make_env(base))
        if not fn then
            return nil, sfmt("operator '%s': %s", opname, lerr)
        end
        local ok, m = pcall(fn, opname)
        if not ok then
            return nil, sfmt("operator '%s': %s", opname, tostring(m))
        end
        user_ops[opname] = m
        return m
    end

    flow_proxy = setmetatable({
        dag = function(spec)
            local d = dag.new(spec, { find_operator = find_operator, file = name,
                                      source_text = loading_src })
            collected[#collected + 1] = d
            return d
        end,
    }, { __index = require("zkflow"), __metatable = false })

    sandbox_require = function(modname)
        if type(modname) ~= "string" then
            error("bad argument #1 to 'require' (string expected, got " .. type(modname) .. ")", 2)
        end
        if modname == "zkflow" then
            return flow_proxy
        end
        local om = modname:match("^operators%.([%a_][%w_]*)$")
        if om then
            local m, err = find_operator(om)
            if m == nil then
                error(err or sfmt("module '%s' not found in %s/operators", modname, root), 2)
            end
            return m
        end
        if modules[modname] ~= nil then
            return modules[modname]
        end
        -- helper modules in the DAG folder load in this file's sandbox
        local rel = modname:gsub("%.", "/")
        for _, pat in ipairs({ "%s/%s.lua", "%s/%s/init.lua" }) do
            local path = sfmt(pat, root, rel)
            local code = read_file(path)
            deps[path] = code and _M.hash(code) or false
            if code then
                local fn, lerr = load(code, "@" .. path, "t", make_env(base))
                if not fn then
                    error(lerr, 0)
                end
                local m = fn(modname, path)
                if m == nil then m = true end
                modules[modname] = m
                return m
            end
        end
        local m = require_shared(modname, env)
        return m
    end
    base.require = sandbox_require

    local fn, lerr = load(src, "@" .. name, "t", env)
    if not fn then
        return nil, lerr
    end

    -- The file runs in a coroutine of its own: the instruction hook is set
    -- on that thread only (the caller's hooks, such as a task's execution
    -- timeout, are left alone), and a file that yields while loading comes
    -- back here instead of leaving the limits armed.
    local co = coroutine.create(fn)
    budget.attach(co)
    local core = mlimit and core_module() or nil
    local capped = false
    if core and type(core.mem_limit) == "function" then
        capped = core.mem_limit(mlimit) ~= false
    end
    if mlimit and not capped then
        budget.watch_memory(mlimit)
    end
    local ok, ret = coroutine.resume(co)
    if capped then
        core.mem_limit(nil)
    end
    if ok and coroutine.status(co) ~= "dead" then
        ok, ret = false, sfmt("%s: a DAG file cannot yield while loading "
            .. "(call flow.sleep and zk inside tasks)", name)
        coroutine.close(co)
    end
    budget.finish()
    -- the source text is only needed while the file runs (call sites of
    -- specs whose flow.dag is a tail call); closures that outlive the load
    -- must not keep it
    loading_src = nil

    if not ok then
        local msg = ret
        if budget.exceeded == "instructions" then
            msg = sfmt("%s: loading exceeded the instruction limit (%d)", name, ilimit)
        elseif budget.exceeded == "memory"
            or (capped and tostring(msg):find("not enough memory", 1, true)) then
            msg = sfmt("%s: loading exceeded the memory limit (%d bytes)", name, mlimit)
        elseif type(msg) ~= "string" then
            msg = sfmt("%s: %s", name, tostring(msg))
        end
        return nil, msg
    end
    if ret ~= nil and not dag.is_dag(ret) and not is_dag_list(ret) then
        local hint = ""
        if type(ret) == "table" and ret.tasks ~= nil then
            hint = " (did you forget flow.dag?)"
        end
        return nil, sfmt("%s: the file must return a dag, a list of dags or nothing, got %s%s",
            name, dag.show(ret), hint)
    end

    local seen, out = {}, {}
    for _, d in ipairs(collected) do
        local bad = _M.text_problem(d)
        if bad then
            return nil, sfmt("%s:%d: dag '%s': %s", name, d.line or 0, d.id, bad)
        end
        if seen[d.id] then
            return nil, sfmt("%s:%d: dag '%s' is defined twice in this file (first at line %d)",
                name, d.line, d.id, seen[d.id].line)
        end
        seen[d.id] = d
        d.file = name
        d.source_hash = hash
        out[#out + 1] = d
    end
    return out
end

-- The text a DAG shows (the API, `dags list --json`, the page) must be
-- UTF-8, or one file's byte 0xff would fail the list of every DAG: such a
-- file is an import error naming the field.  Walks strings and keys of
-- tables; functions and other values are not shown.
local function text_problem_in(v, field, depth)
    if type(v) == "string" then
        local ok, pos = utf8.len(v)
        if not ok then
            return sfmt("'%s': not valid UTF-8 (byte 0x%02X at position %d)",
                        field, v:byte(pos), pos)
        end
    elseif type(v) == "table" and depth < 20 then
        for k, x in pairs(v) do
            local p = text_problem_in(k, field, depth + 1)
                or text_problem_in(x, field .. "." .. tostring(k), depth + 1)
            if p then return p end
        end
    end
    return nil
end

local SHOWN_DAG = { "description", "doc", "tags", "params", "owner" }
local SHOWN_TASK = { "pool", "queue", "doc", "owner", "params" }

--- Why a loaded DAG cannot be shown (a field that is not UTF-8), or nil.
function _M.text_problem(d)
    for _, f in ipairs(SHOWN_DAG) do
        local p = text_problem_in(rawget(d, f), f, 0)
        if p then return p end
    end
    for _, id in ipairs(d.order or {}) do
        local t = d.tasks[id]
        for _, f in ipairs(SHOWN_TASK) do
            local p = t and text_problem_in(rawget(t, f), f, 0)
            if p then return sfmt("task '%s': %s", id, p) end
        end
    end
    return nil
end

-- A probe batch (zkflow.dsl.probe) for `files`, or nil when loads are
-- not probed (opts.probe == false, a timeout of 0 or false).
local function probe_batch(files, opts)
    local timeout = opts.timeout
    if timeout == nil then timeout = settings.timeout end
    if opts.probe == false or not timeout or timeout <= 0 then
        return nil
    end
    local probe = require "zkflow.dsl.probe"
    if not probe.available() then
        return nil
    end
    return probe.start(files, {
        timeout = timeout, background = opts.background, slow = opts.slow, hash = _M.hash,
        instruction_limit = opts.instruction_limit or settings.instruction_limit,
        memory_limit = (opts.memory_limit == nil) and settings.memory_limit or opts.memory_limit,
    })
end

--- Loads the DAGs of `src`, named `name` (a file's path, or a pushed
--- DAG's "zk:<node>"), after the same check in a child process that
--- load_file makes.  Without opts.background the caller waits for the
--- verdict, at most the timeout, once per content (verdicts are cached).
function _M.load_checked(src, name, opts)
    opts = opts or {}
    local hash = _M.hash(src)
    local batch = probe_batch({ { path = name, src = src, hash = hash,
                                  root = opts.root or dirname(name) } },
                              { timeout = opts.timeout, probe = opts.probe,
                                instruction_limit = opts.instruction_limit,
                                memory_limit = opts.memory_limit })
    if batch then
        local v = batch:await(name)
        batch:close()
        if v ~= true then
            return nil, v
        end
    end
    return load_source(src, name, opts, hash)
end

--- Loads the DAGs of one file; see load_source.  The file is first loaded
--- in a child process that is killed past opts.timeout seconds (default:
--- the timeout setting, see configure; zkflow.dsl.probe), so a load that
--- hangs inside C becomes an import error instead of a hang.
function _M.load_file(path, opts)
    local src, err = read_file(path)
    if not src then
        return nil, sfmt("%s: %s", path, tostring(err))
    end
    return _M.load_checked(src, path, opts)
end

------------------------------------------------------------------------------
-- Scanning a folder
------------------------------------------------------------------------------

local function shell_quote(s)
    return "'" .. s:gsub("'", "'\\''") .. "'"
end

-- Every *.lua below `dir` with its mtime: { {path=, rel=, mtime=}, ... },
-- skipping hidden and "_" names and the top-level operators/ folder.
local function list_lua(dir)
    local core = core_module()
    local out = {}
    if core and type(core.listdir) == "function" and type(core.stat) == "function" then
        local function walk(d, rel)
            local names = core.listdir(d)
            if not names then return end
            for _, n in ipairs(names) do
                local first = n:sub(1, 1)
                if first ~= "." and first ~= "_" and not (rel == "" and n == "operators") then
                    local p = d .. "/" .. n
                    local st = core.stat(p)
                    if st and st.type == "dir" then
                        walk(p, rel .. n .. "/")
                    elseif st and st.type == "file" and n:sub(-4) == ".lua" then
                        out[#out + 1] = { path = p, rel = rel .. n, mtime = st.mtime }
                    end
                end
            end
        end
        walk(dir, "")
    else
        -- plain lua5.4 without the C module: GNU find does the walk
        local p = io.popen("find " .. shell_quote(dir) .. " -mindepth 1 -name '[._]*' -prune -o"
            .. " -type f -name '*.lua' -printf '%T@ %P\\n' 2>/dev/null")
        if p then
            for line in p:lines() do
                local mt, rel = line:match("^(%S+) (.*)$")
                if rel and not rel:find("^operators/") then
                    out[#out + 1] = { path = dir .. "/" .. rel, rel = rel, mtime = tonumber(mt) }
                end
            end
            p:close()
        end
    end
    sort(out, function(a, b) return a.path < b.path end)
    return out
end

--- Loads every DAG file below `dir` (recursively, sorted by path; names
--- starting with "." or "_" and the operators/ folder are skipped).
--- opts are load_file's, `collect = false` skips the full garbage
--- collection that ends a scan, and `background = true` lets a file whose
--- load takes longer than zkflow.dsl.probe.SLOW finish in the background:
--- it is listed in `pending` (and files[path].pending) instead of waited
--- for, and zkflow.dsl.probe.on_verdict listeners hear when its verdict
--- is in (scan again then); `slow` changes that share of time.  A broken file never affects the others.  When two
--- files define the same dag id the first (by path) wins and the second
--- gets an import error naming both.
--- Returns { dags = {[id]=dag}, errors = {[file]=msg}, pending = {[file]=true},
---           files = {[file]={hash=, mtime=, dag_ids={...}}} }.
function _M.scan(dir, opts)
    dir = dir:gsub("/+$", "")
    if dir == "" then dir = "/" end
    local o = {}
    for k, v in pairs(opts or {}) do o[k] = v end
    o.root = o.root or dir
    local result = { dags = {}, errors = {}, files = {}, pending = {} }
    local owner = {}
    local heap_kb = collectgarbage("count")
    local list = list_lua(dir)
    -- Every file is read first, so that the probe's child can run ahead
    -- of the loads here.
    local asked = {}
    for _, f in ipairs(list) do
        f.src, f.rerr = read_file(f.path)
        if f.src then
            f.hash = _M.hash(f.src)
            asked[#asked + 1] = { path = f.path, src = f.src, hash = f.hash, root = o.root }
        end
    end
    local batch = probe_batch(asked, o)
    for _, f in ipairs(list) do
        local src, rerr = f.src, f.rerr
        f.src = nil
        local entry = { mtime = f.mtime, dag_ids = {} }
        result.files[f.path] = entry
        local verdict = src and (not batch or batch:await(f.path))
        if not src then
            result.errors[f.path] = sfmt("%s: %s", f.path, tostring(rerr))
        elseif verdict == nil then
            entry.hash = f.hash
            entry.pending = true
            result.pending[f.path] = true
        elseif verdict ~= true then
            entry.hash = f.hash
            result.errors[f.path] = verdict
        else
            entry.hash = f.hash
            local dags, err = load_source(src, f.path, o, entry.hash)
            if o.collect ~= false then
                local kb = collectgarbage("count")
                if kb > heap_kb * 1.5 + 2048 then
                    collectgarbage("collect")
                    heap_kb = collectgarbage("count")
                end
            end
            if not dags then
                result.errors[f.path] = err
            else
                local dups = {}
                for _, d in ipairs(dags) do
                    if owner[d.id] then
                        dups[#dups + 1] = sfmt("%s:%d: dag id '%s' is already defined in %s",
                            f.path, d.line, d.id, owner[d.id])
                    end
                end
                if #dups > 0 then
                    result.errors[f.path] = concat(dups, "\n")
                else
                    for _, d in ipairs(dags) do
                        owner[d.id] = f.path
                        result.dags[d.id] = d
                        entry.dag_ids[#entry.dag_ids + 1] = d.id
                    end
                end
            end
        end
    end
    if batch then batch:close() end
    -- Loading leaves garbage of the same order as what it keeps (parsed
    -- sources, builds, task specs).  Collect it now, while the caller is
    -- not serving anything yet, so that it neither stays resident until
    -- the collector's next cycle nor makes that cycle long.
    if o.collect ~= false then
        collectgarbage("collect")
    end
    return result
end

return _M
