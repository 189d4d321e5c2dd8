-- zkflow.zk: the ZooKeeper client that DAGs and scripts use.
--
-- A thin layer over a `zkflow.core` store (ZooKeeper or the embedded SQLite
-- one, same znode semantics): it raises errors named as ZooKeeper names them
-- (`ZNONODE: /a/b`), applies the client's root to every path, keeps the
-- client's service registrations alive across session expiry, and carries
-- the recipes (lock, election, semaphore, service discovery) whose node
-- names match kazoo's and Curator's so that zkflow, Python and Java
-- processes cooperate on the same paths.
--
-- Calls made in a coroutine (a task, `flow.run`, `flow.spawn`) yield while
-- they wait; on plain Lua's main thread the store calls block and the
-- recipes that wait for a watch drive the loop (core.run) until it fires.
--
-- This file is the module's face: the constructors (connect, wrap) and the
-- engine's default client.  The client object lives in zkflow.zk.client,
-- the recipes in zkflow.zk.recipes; callers require zkflow.zk only.
local core = require "zkflow.core"
local zkclient = require "zkflow.zk.client"
local recipes = require "zkflow.zk.recipes"

local error, setmetatable, tostring, type =
      error, setmetatable, tostring, type

local _M = {}

local Client = zkclient.Client
_M.Client = Client
_M.random_hex = zkclient.random_hex
_M.random_uuid = zkclient.random_uuid
_M._wait = zkclient.wait
_M.contender_seq = recipes.contender_seq

local raise = zkclient.raise

-- ---- constructors -------------------------------------------------------------

local function new_client(store, o)
    local c = setmetatable({
        store = store, root = o.root, acl = o.acl, borrowed = o.borrowed,
        autoflush = o.autoflush, ephemerals = {}, listeners = {},
        restored = {}, locks = setmetatable({}, { __mode = "k" }),
        closed = false, expired = false,
    }, Client)
    return c
end

local function check_root(root)
    if root == nil or root == "" or root == "/" then return nil end
    if type(root) ~= "string" or root:sub(1, 1) ~= "/" or root:sub(-1) == "/" then
        error("zk.connect: 'root' must be an absolute path without a "
              .. "trailing '/', got " .. tostring(root), 3)
    end
    return root
end

-- zk.wrap(store [, {root=, borrowed=, autoflush=}]): a client over any
-- `core.store` object.
function _M.wrap(store, opts)
    opts = opts or {}
    if type(store) ~= "userdata" and type(store) ~= "table" then
        error("zk.wrap: store must be a core.store object", 2)
    end
    local c = new_client(store, { root = check_root(opts.root),
                                  borrowed = opts.borrowed,
                                  autoflush = opts.autoflush })
    if c.root then c:ensure_path("/") end
    return c
end

-- zk.connect(hosts [, {timeout=s, root=path, auth={scheme, credential},
-- acl=, connect_timeout=s}]).  hosts: "h:p,h:p[/chroot]", "zk://...", or
-- "sqlite:/path/to.db" for the embedded store.
function _M.connect(hosts, opts)
    if type(hosts) ~= "string" or hosts == "" then
        error("zk.connect: hosts must be a string such as "
              .. "\"127.0.0.1:2181\" or \"sqlite:/path/to.db\"", 2)
    end
    opts = opts or {}
    if type(opts) ~= "table" then error("zk.connect: opts must be a table", 2) end
    local root = check_root(opts.root)
    local sqlite = hosts:match("^sqlite:(.+)$")
    local c
    if sqlite then
        local st, err = core.store(sqlite)
        if not st then error("ZSYSTEMERROR: zk.connect: " .. tostring(err), 0) end
        c = new_client(st, { root = root, autoflush = true })
    else
        hosts = hosts:gsub("^zk://", "")
        local client
        local st, err = core.store_zk(hosts, {
            timeout = opts.timeout,
            connect_timeout = opts.connect_timeout or opts.timeout,
            auth = opts.auth, acl = opts.acl,
            on_session = function(state)
                if client then client:_session(state) end
            end,
        })
        if not st then raise(err or "ZCONNECTIONLOSS", hosts) end
        client = new_client(st, { root = root, acl = opts.acl })
        c = client
    end
    if c.root then c:ensure_path("/") end
    return c
end

local default_store, default_client

-- The engine (or the CLI) hands its own store over; zk.default() wraps it.
-- Returns that client (its notify_session(state) takes the store's session
-- changes), or nil when `store` is nil.
function _M.set_default(store, opts)
    default_store = store
    default_client = nil
    if store then
        opts = opts or {}
        default_client = new_client(store, { root = check_root(opts.root),
                                             borrowed = true })
    end
    return default_client
end

-- zk.default(): the engine's own store as a client.
function _M.default()
    if not default_client then
        error("zk.default: no engine store here (plain Lua has none: use "
              .. "zk.connect(hosts) or zk.connect(\"sqlite:/path/to.db\"))", 2)
    end
    return default_client
end

-- The store behind zk.default() (nil when there is none).
function _M.default_store()
    return default_store
end

return _M
