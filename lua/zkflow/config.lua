-- zkflow.config: the cluster configuration, one JSON object at
-- <root>/config (DESIGN.md, "ZooKeeper layout"), read and changed by key.
--
--   local config = require "zkflow.config"
--   local tbl, version = config.read(store, "/zkflow")
--   config.get(tbl, "pools.db")                  --> 4
--   config.set(store, "/zkflow", "pools.db", 4)
--   config.unset(store, "/zkflow", "pools.db")
--
-- A key is a dotted path into the object: "pools.db" is tbl.pools.db.
-- Known keys are validated (config.validate); any other key is kept as the
-- user writes it, so users may keep their own configuration there too.
--
-- `store` is a core.store() handle on either backend (SQLite or ZooKeeper):
-- get/set/create return nil and an error name ("ZNONODE", "ZBADVERSION")
-- instead of raising.  Inside the engine call these from a coroutine (a
-- ZooKeeper store yields there until the answer comes).
--
-- set and unset are safe against concurrent writers: they read the node
-- with its version, change the one key, and write with that version (or
-- create the node when it is missing); on ZBADVERSION, or a create or
-- delete that raced them, they read again and redo the change.  Two
-- processes setting different keys at once both land.

local core = require "zkflow.core"
local state = require "zkflow.state"

local _M = {}

local json_encode, json_decode = core.json_encode, core.json_decode
local concat, sort = table.concat, table.sort
local math_type = math.type
local fmt = string.format

local ENCODE_OPTS = { sort_keys = true }

-- How often set/unset redo their change after losing a race before they
-- give up.  Each lost race means another writer's change landed.
local MAX_ATTEMPTS = 200

-- ---- helpers -----------------------------------------------------------

-- A JSON object as core.json_decode returns it (arrays carry a metatable
-- with __jsontype = "array").
local function is_object(v)
    if type(v) ~= "table" then return false end
    local mt = getmetatable(v)
    return not (mt and mt.__jsontype == "array")
end
_M.is_object = is_object

-- A value as JSON, for messages: got 0, got "loud", got {"a":1}.
local function show(v)
    local ok, s = pcall(json_encode, v, ENCODE_OPTS)
    if ok then return s end
    return tostring(v)
end

-- Integers as JSON writes them: 4, not 4.0 (consumers get a Lua integer).
local function is_int(v)
    return math_type(v) == "integer"
end

-- The node holding the configuration under `root` ("/zkflow" by default;
-- "/" puts it at "/config").
function _M.path(root)
    return state.new({}, root or "/zkflow"):path("config")
end

-- Splits a dotted key into its parts; nil and a message when it is not
-- one ("", "a..b", ".a", "a.").
function _M.parse_key(key)
    if type(key) ~= "string" or key == "" then
        return nil, "a key must be a non-empty string of dotted names "
                    .. "(e.g. 'parallelism' or 'pools.db'), got " .. show(key)
    end
    local parts = {}
    for part in (key .. "."):gmatch("([^.]*)%.") do
        if part == "" then
            return nil, "key '" .. key .. "': empty name between dots "
                        .. "(e.g. 'pools.db')"
        end
        parts[#parts + 1] = part
    end
    return parts
end

-- VALUE of `zkflow config set`: JSON when it parses as JSON (numbers,
-- true/false, null, objects, arrays, "quoted strings"), otherwise the text
-- itself as a string.
function _M.parse_value(text)
    local v = json_decode(text)
    if v == nil then return text end
    return v
end

-- ---- validation --------------------------------------------------------

-- Known keys: check(v) -> true, or what was expected.
local function int_at_least(n, what)
    return function(v)
        if is_int(v) and v >= n then return true end
        return fmt("an integer >= %d (%s)", n, what)
    end
end

local LOG_LEVELS = { "debug", "info", "warn", "error" }

local KNOWN = {
    parallelism  = int_at_least(1, "the most task tries the scheduler "
                                   .. "runs at once"),
    worker_slots = int_at_least(1, "slots of a worker started without "
                                   .. "--slots"),
    dags_folder  = function(v)
        if type(v) == "string" and v:sub(1, 1) == "/" then return true end
        return "an absolute path (the DAG folder of the store's standalone)"
    end,
    dag_load_timeout = function(v)
        if type(v) == "number" and v >= 0 then return true end
        return "a number >= 0 (seconds a DAG file may take to load; 0: no limit)"
    end,
    dag_load_instructions = int_at_least(1000, "Lua instructions a DAG file's "
                                         .. "load may run"),
    dag_load_memory = int_at_least(1048576, "bytes a DAG file's load may "
                                   .. "allocate"),
    log_level    = function(v)
        for _, l in ipairs(LOG_LEVELS) do
            if v == l then return true end
        end
        return "one of \"" .. concat(LOG_LEVELS, "\", \"") .. "\""
    end,
    -- docs/history.md: finished runs older than this many days leave the
    -- history (unset: kept for ever); where the history is (a cluster's).
    retention_days = function(v)
        if type(v) == "number" and v > 0 then return true end
        return "a number of days > 0 (finished runs older than that are removed)"
    end,
    history_url = function(v)
        if type(v) == "string" and v ~= "" then return true end
        return "a history store URL (sqlite:PATH or postgresql://...)"
    end,
}
local pool_slots = int_at_least(0, "slots of the pool")

-- What is wrong with the configuration `tbl`: a list of {key=, msg=},
-- sorted by key; empty when nothing is.
function _M.problems(tbl)
    local list = {}
    local function add(key, expected, v)
        list[#list + 1] = { key = key, msg = fmt("%s: expected %s, got %s",
                                                  key, expected, show(v)) }
    end
    if not is_object(tbl) then
        list[1] = { key = "", msg = "the configuration must be a JSON "
                                    .. "object, got " .. show(tbl) }
        return list
    end
    for key, check in pairs(KNOWN) do
        local v = tbl[key]
        if v ~= nil then
            local ok = check(v)
            if ok ~= true then add(key, ok, v) end
        end
    end
    local pools = tbl.pools
    if pools ~= nil then
        if not is_object(pools) then
            add("pools", "an object of pool name -> slots "
                         .. "(e.g. {\"db\": 4})", pools)
        else
            for name, v in pairs(pools) do
                local key = "pools." .. tostring(name)
                if type(name) ~= "string" or name == "." or name == ".."
                        or name:find("[/%c]") then
                    list[#list + 1] = { key = key, msg = key .. ": a pool "
                        .. "name may not be '.', '..' or hold '/' or "
                        .. "control characters" }
                else
                    local ok = pool_slots(v)
                    if ok ~= true then add(key, ok, v) end
                end
            end
        end
    end
    sort(list, function(a, b) return a.key < b.key end)
    return list
end

-- true, or nil and every problem of `tbl` ("; " between them).
function _M.validate(tbl)
    local list = _M.problems(tbl)
    if #list == 0 then return true end
    local msgs = {}
    for i, p in ipairs(list) do msgs[i] = p.msg end
    return nil, concat(msgs, "; ")
end

-- Whether a problem at key `a` concerns a change of key `b`: the same key,
-- one inside the other.
local function related(a, b)
    return a == "" or a == b or a:sub(1, #b + 1) == b .. "."
        or b:sub(1, #a + 1) == a .. "."
end

-- The problems of `tbl` that concern key `key` (its value, what lies
-- inside it, or the object holding it), as one message or nil.
local function problems_of(tbl, key)
    local msgs = {}
    for _, p in ipairs(_M.problems(tbl)) do
        if related(p.key, key) then msgs[#msgs + 1] = p.msg end
    end
    if #msgs == 0 then return nil end
    return concat(msgs, "; ")
end

-- ---- reading -----------------------------------------------------------

-- The value at dotted `key` in `tbl`, or nil when it is not set (a JSON
-- null that was set is core.null).  A malformed key is nil and a message.
function _M.get(tbl, key)
    local parts, err = _M.parse_key(key)
    if not parts then return nil, err end
    local cur = tbl
    for _, part in ipairs(parts) do
        if not is_object(cur) then return nil end
        cur = cur[part]
        if cur == nil then return nil end
    end
    return cur
end

-- Reads <root>/config: the decoded object and the node's version, `{}` and
-- nil when the node does not exist, or nil and a message naming the node
-- when it cannot be read or does not hold a JSON object.
function _M.read(store, root)
    local path = _M.path(root)
    local data, stat = store:get(path)
    if data == nil then
        if stat == "ZNONODE" then return {}, nil end
        return nil, path .. ": " .. tostring(stat)
    end
    if data == "" then return {}, stat.version end
    local tbl, err = json_decode(data)
    if tbl == nil then
        return nil, path .. ": not JSON (" .. tostring(err) .. "); fix or "
                    .. "remove the node ('zkflow zk set|rm " .. path .. "')"
    end
    if not is_object(tbl) then
        return nil, path .. ": the configuration must be a JSON object, "
                    .. "got " .. show(tbl) .. "; fix or remove the node "
                    .. "('zkflow zk set|rm " .. path .. "')"
    end
    return tbl, stat.version
end

-- Every set key with its value, in key order: {{key, value}, ...}.  Objects
-- are walked (non-empty ones); arrays, scalars and {} are values.
function _M.flatten(tbl)
    local list = {}
    local function walk(prefix, v)
        if is_object(v) and next(v) ~= nil then
            local keys = {}
            for k in pairs(v) do keys[#keys + 1] = tostring(k) end
            sort(keys)
            for _, k in ipairs(keys) do
                walk(prefix == "" and k or (prefix .. "." .. k), v[k])
            end
        elseif prefix ~= "" then
            list[#list + 1] = { prefix, v }
        end
    end
    walk("", tbl)
    return list
end

-- ---- changing ----------------------------------------------------------

-- Reads, applies change(tbl) (which returns nil and a message to stop) and
-- writes with the version read, until a write lands.
local function update(store, root, change)
    local path = _M.path(root)
    for _ = 1, MAX_ATTEMPTS do
        local tbl, version = _M.read(store, root)
        if not tbl then return nil, version end
        local ok, err = change(tbl, version)
        if not ok then return nil, err, version end
        local eok, data = pcall(json_encode, tbl, ENCODE_OPTS)
        if not eok then return nil, path .. ": " .. tostring(data) end
        local res, werr
        if version == nil then
            res, werr = store:create(path, data, { parents = true })
        else
            res, werr = store:set(path, data, version)
        end
        if res then
            local stat = type(res) == "table" and res or nil
            return tbl, stat and stat.version or 0
        end
        -- Another writer got there first: read its result and redo.
        if werr ~= "ZBADVERSION" and werr ~= "ZNODEEXISTS"
                and werr ~= "ZNONODE" then
            return nil, path .. ": " .. tostring(werr)
        end
    end
    return nil, path .. ": gave up after " .. MAX_ATTEMPTS
                .. " concurrent changes"
end

-- Checks one setting on its own, before any store is touched: the key's
-- syntax and, for a known key, its value.  true, or nil and a message
-- naming the key.
function _M.check(key, value)
    local parts, err = _M.parse_key(key)
    if not parts then return nil, err end
    local tbl = {}
    local cur = tbl
    for i = 1, #parts - 1 do
        cur[parts[i]] = {}
        cur = cur[parts[i]]
    end
    cur[parts[#parts]] = value
    local msg = problems_of(tbl, key)
    if msg then return nil, msg end
    return true
end

-- Sets dotted `key` to `value` (any JSON value; objects on the way are
-- created).  Returns the new configuration and the node's version, or nil
-- and a message naming the key: a known key with a bad value, a key under
-- something that is not an object, a store error.
function _M.set(store, root, key, value)
    local parts, perr = _M.parse_key(key)
    if not parts then return nil, perr end
    if value == nil then
        return nil, key .. ": no value (use config.unset to remove a key)"
    end
    return update(store, root, function(tbl)
        local cur = tbl
        for i = 1, #parts - 1 do
            local part = parts[i]
            local nxt = cur[part]
            if nxt == nil then
                nxt = {}
                cur[part] = nxt
            elseif not is_object(nxt) then
                return nil, fmt("cannot set '%s': '%s' is %s, not an object",
                                key, concat(parts, ".", 1, i), show(nxt))
            end
            cur = nxt
        end
        cur[parts[#parts]] = value
        local msg = problems_of(tbl, key)
        if msg then return nil, msg end
        return true
    end)
end

-- Removes dotted `key`, and the objects on its way that it leaves empty.
-- Returns the new configuration and the node's version, or nil, a message
-- and, when the key was not set, "not_set" as a third value.
function _M.unset(store, root, key)
    local parts, perr = _M.parse_key(key)
    if not parts then return nil, perr end
    local not_set = false
    local tbl, err = update(store, root, function(cfg)
        local chain = { cfg }
        local cur = cfg
        for i = 1, #parts - 1 do
            cur = cur[parts[i]]
            if not is_object(cur) then cur = nil break end
            chain[#chain + 1] = cur
        end
        if cur == nil or cur[parts[#parts]] == nil then
            not_set = true
            return nil, "'" .. key .. "' is not set in " .. _M.path(root)
        end
        cur[parts[#parts]] = nil
        for i = #chain, 2, -1 do
            if next(chain[i]) ~= nil then break end
            chain[i - 1][parts[i - 1]] = nil
        end
        return true
    end)
    if not tbl then return nil, err, not_set and "not_set" or nil end
    return tbl, err
end

-- " (did you mean 'x'?)" when the first name of dotted `key` is not a
-- known key but nearly one (paralelism), else "": the DSL's near-miss rule
-- (zkflow.dsl.util.suggest), so that config and DAG options agree on what
-- is near.
function _M.near_miss(key)
    local parts = _M.parse_key(key)
    if not parts then return "" end
    local first = parts[1]
    if KNOWN[first] or first == "pools" then return "" end
    local names = { "pools" }
    for name in pairs(KNOWN) do names[#names + 1] = name end
    return require("zkflow.dsl.util").suggest(first, names)
end

-- The known keys and what they take, for help texts.
_M.KNOWN_KEYS = {
    { "parallelism", "integer >= 1: the most task tries the scheduler runs "
                     .. "at once" },
    { "log_level", "\"debug\", \"info\", \"warn\" or \"error\"" },
    { "dag_load_timeout", "seconds >= 0: a DAG file that takes longer to load "
                          .. "is an import error (default 30; 0: no limit)" },
    { "dag_load_instructions", "integer >= 1000: Lua instructions a DAG file's "
                               .. "load may run (default 200000000)" },
    { "dag_load_memory", "integer >= 1048576: bytes a DAG file's load may "
                         .. "allocate (default 536870912)" },
    { "pools.NAME", "integer >= 0: slots of pool NAME" },
    { "worker_slots", "integer >= 1: slots of workers started without "
                      .. "--slots" },
    { "retention_days", "number > 0: finished runs older than this leave "
                        .. "the history (default: kept for ever)" },
    { "history_url", "sqlite:PATH or postgresql://...: the history store of "
                     .. "a cluster (--history wins)" },
    { "dags_folder", "absolute path: the DAG folder commands use without "
                     .. "--dags (a standalone records its own)" },
}

return _M
