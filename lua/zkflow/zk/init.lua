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
local core = require "zkflow.core"
local async = require "zkflow.async"

local coroutine, error, io, ipairs, math, pairs, setmetatable, tonumber,
      string, table, tostring, type =
      coroutine, error, io, ipairs, math, pairs, setmetatable, tonumber,
      string, table, tostring, type
local pack, unpack, sort, concat = table.pack, table.unpack, table.sort,
                                   table.concat
local fmt = string.format

local _M = {}

local Client = {}
Client.__index = Client
_M.Client = Client

-- ---- small helpers ----------------------------------------------------------

-- 16 random bytes as 32 hex digits (a uuid4's hex, as kazoo's uuid4().hex).
local function random_hex()
    local f = io.open("/dev/urandom", "rb")
    local bytes = f and f:read(16)
    if f then f:close() end
    if not bytes or #bytes ~= 16 then
        local t = {}
        for i = 1, 16 do t[i] = string.char(math.random(0, 255)) end
        bytes = concat(t)
    end
    -- version 4, variant 10xx: what uuid.uuid4() and UUID.randomUUID() make
    local b = { bytes:byte(1, 16) }
    b[7] = (b[7] & 0x0f) | 0x40
    b[9] = (b[9] & 0x3f) | 0x80
    local out = {}
    for i = 1, 16 do out[i] = fmt("%02x", b[i]) end
    return concat(out)
end
_M.random_hex = random_hex

-- The dashed form, as Java's UUID.toString() (Curator's protected names).
local function random_uuid()
    local h = random_hex()
    return h:sub(1, 8) .. "-" .. h:sub(9, 12) .. "-" .. h:sub(13, 16) .. "-"
           .. h:sub(17, 20) .. "-" .. h:sub(21, 32)
end
_M.random_uuid = random_uuid

local function hostname()
    local f = io.open("/proc/sys/kernel/hostname", "r")
    local h = f and f:read("l")
    if f then f:close() end
    return h or "localhost"
end

-- Raises a ZooKeeper error: the name first, then what it was about.
local function raise(err, what)
    err = tostring(err)
    if what and not err:find(":", 1, true) then
        err = err .. ": " .. what
    end
    error(err, 0)
end

-- ---- waiting ----------------------------------------------------------------

-- wait(register): register(resume) arranges for resume(...) to be called
-- once; returns resume's arguments.  In a coroutine this parks it (the loop
-- goes on); on plain Lua's main thread it runs the loop until resume comes.
local function wait(register)
    local _, main = coroutine.running()
    if not main and coroutine.isyieldable() then
        return async.wait(register)
    end
    if core.in_engine() then
        error("zk: this call waits, so it must run inside a coroutine "
              .. "(a task, `zkflow lua`, flow.run or flow.spawn)", 3)
    end
    local done, res = false, nil
    register(function(...)
        if done then return end
        done, res = true, pack(...)
        core.stop()
    end)
    if not done then
        -- Keeps core.run() from returning for want of anything pending.
        local keep = core.timer(1e6, function() end)
        local ok, err = pcall(function()
            while not done do core.run() end
        end)
        keep:cancel()
        if not ok then
            error("zk: a call that waits on plain Lua's main thread cannot run"
                  .. " inside the loop (" .. tostring(err) .. "); call it from"
                  .. " a coroutine (flow.run, flow.spawn)", 3)
        end
    end
    return unpack(res, 1, res.n)
end

-- An event a recipe waits on: fire() wakes the waiter (or the next one).
local function new_event()
    return { fired = false, waiter = nil }
end

local function fire(ev)
    ev.fired = true
    local w = ev.waiter
    ev.waiter = nil
    if w then w() end
end

-- Waits until `ev` fires or `timeout` seconds (nil: forever) pass; returns
-- true when it fired.  Clears it for the next round.
local function wait_event(ev, timeout)
    if ev.fired then
        ev.fired = false
        return true
    end
    local t
    local fired = wait(function(resume)
        ev.waiter = function() resume(true) end
        if timeout then
            t = core.timer(math.max(timeout, 0), function() resume(false) end)
        end
        return function() if t then t:cancel() end end
    end)
    if t then t:cancel() end
    ev.waiter = nil
    ev.fired = false
    return fired
end
_M._wait = wait

-- ---- the client ---------------------------------------------------------------

local function check_path(path, fname)
    if type(path) ~= "string" then
        error(fmt("zk.%s: path must be a string, got %s", fname, type(path)), 3)
    end
end

-- The store path of a client path.
function Client:_full(path)
    if not self.root then return path end
    if path:sub(1, 1) ~= "/" then raise("ZBADARGUMENTS", path) end
    if path == "/" then return self.root end
    return self.root .. path
end

-- The client path of a store path.
function Client:_rel(path)
    local root = self.root
    if not root or type(path) ~= "string" then return path end
    if path == root then return "/" end
    if path:sub(1, #root + 1) == root .. "/" then return path:sub(#root + 1) end
    return path
end

function Client:_check_open(fname)
    if self.closed then
        error("ZCLOSING: zk." .. fname .. ": the client is closed", 0)
    end
end

-- A connection loss leaves a request's fate unknown; one that is safe to
-- repeat (a read, an unconditional set) is sent again, so a member of the
-- ensemble going away does not reach the caller.  The store holds requests
-- while it reconnects, up to its connect timeout.
local RETRIES = 3

function Client:_retry(method, ...)
    local st = self.store
    local a, b, c
    for _ = 1, RETRIES do
        a, b, c = st[method](st, ...)
        if a ~= nil or b ~= "ZCONNECTIONLOSS" then return a, b, c end
    end
    return a, b, c
end

-- Wraps a watch function so it sees client paths.
function Client:_watch(fn)
    if fn == nil then return nil end
    return function(ev)
        fn({ type = ev.type, path = self:_rel(ev.path) })
    end
end

function Client:_flush()
    if self.autoflush then self.store:flush() end
end

local function data_arg(data, fname)
    if data == nil then return "" end
    local t = type(data)
    if t == "number" then return tostring(data) end
    if t ~= "string" then
        error(fmt("zk.%s: data must be a string, got %s", fname, t), 3)
    end
    return data
end

-- create(path, data, {ephemeral=, sequential=, parents=, acl=, protected=})
-- → the created path (relative to the root)
function Client:create(path, data, opts)
    self:_check_open("create")
    check_path(path, "create")
    data = data_arg(data, "create")
    opts = opts or {}
    if opts.acl ~= nil and opts.acl ~= self.acl and self:backend() == "zk" then
        error("ZUNIMPLEMENTED: zk.create: a node's own 'acl' is not supported"
              .. " by the store yet; give 'acl' to zk.connect", 0)
    end
    local flags = { ephemeral = opts.ephemeral, sequential = opts.sequential,
                    parents = opts.parents }
    if opts.protected then
        return self:_protected_create(path, data, flags)
    end
    local p, err = self.store:create(self:_full(path), data, flags)
    self:_flush()
    if not p then raise(err, path) end
    return self:_rel(p)
end

-- Curator's protected mode: the node's name carries `_c_<guid>-` so that a
-- create whose answer was lost (connection loss) is found again by that
-- prefix instead of being made twice.
function Client:_protected_create(path, data, flags)
    local parent, name = path:match("^(.*)/([^/]*)$")
    if not parent then raise("ZBADARGUMENTS", path) end
    local prefix = "_c_" .. random_uuid() .. "-"
    return self:_create_findable(parent, prefix, prefix .. name, data, flags)
end

-- Creates `parent/name` (sequential or not) and, when the answer is lost,
-- looks for a child of `parent` that starts with `prefix` before trying
-- again.  Returns the created path (client-relative).
function Client:_create_findable(parent, prefix, name, data, flags)
    local st = self.store
    local fparent = self:_full(parent == "" and "/" or parent)
    local base = (fparent == "/" and "" or fparent) .. "/"
    local last
    for _ = 1, 10 do
        local p, err = st:create(base .. name, data, flags)
        self:_flush()
        if p then return self:_rel(p) end
        if err == "ZNONODE" and flags.parents == nil then
            raise(err, parent)
        end
        if err ~= "ZCONNECTIONLOSS" and err ~= "ZOPERATIONTIMEOUT"
           and err ~= "ZSESSIONEXPIRED" then
            raise(err, base .. name)
        end
        last = err
        -- The create may have happened: look for it before trying again.
        if err ~= "ZSESSIONEXPIRED" then
            local kids = st:children(fparent)
            if kids then
                for _, k in ipairs(kids) do
                    if k:sub(1, #prefix) == prefix then
                        return self:_rel(base .. k)
                    end
                end
            end
        end
    end
    raise(last, parent .. "/" .. name)
end

-- get(path [, watch]) → data, stat
function Client:get(path, watch)
    self:_check_open("get")
    check_path(path, "get")
    local data, stat = self:_retry("get", self:_full(path), self:_watch(watch))
    if data == nil then raise(stat, path) end
    return data, stat
end

-- set(path, data [, version]) → stat
function Client:set(path, data, version)
    self:_check_open("set")
    check_path(path, "set")
    data = data_arg(data, "set")
    local stat, err
    if (version or -1) == -1 then
        stat, err = self:_retry("set", self:_full(path), data, -1)
    else
        stat, err = self.store:set(self:_full(path), data, version)
    end
    self:_flush()
    if not stat then raise(err, path) end
    return stat
end

-- delete(path [, version] [, {recursive=true}]) → true
function Client:delete(path, version, opts)
    self:_check_open("delete")
    check_path(path, "delete")
    if type(version) == "table" then version, opts = nil, version end
    local fpath, flags = self:_full(path), { recursive = opts and opts.recursive }
    local ok, err = self.store:delete(fpath, version or -1, flags)
    if not ok and err == "ZCONNECTIONLOSS" then
        -- Sent again; a node gone by then is taken as our delete's work.
        ok, err = self:_retry("delete", fpath, version or -1, flags)
        if not ok and err == "ZNONODE" then ok = true end
    end
    self:_flush()
    if not ok then raise(err, path) end
    return true
end

-- exists(path [, watch]) → stat or nil
function Client:exists(path, watch)
    self:_check_open("exists")
    check_path(path, "exists")
    local stat, err = self:_retry("exists", self:_full(path), self:_watch(watch))
    if stat == nil and err then raise(err, path) end
    return stat
end

-- children(path [, watch]) → sorted list of names
function Client:children(path, watch)
    self:_check_open("children")
    check_path(path, "children")
    local kids, err = self:_retry("children", self:_full(path), self:_watch(watch))
    if not kids then raise(err, path) end
    return kids
end
Client.get_children = Client.children

-- multi(ops) → results (per op: path, stat or true); all or nothing
function Client:multi(ops)
    self:_check_open("multi")
    if type(ops) ~= "table" then
        error("zk.multi: ops must be a list of tables", 2)
    end
    local sops = {}
    for i, op in ipairs(ops) do
        if type(op) ~= "table" or type(op.path) ~= "string" then
            error(fmt("zk.multi: op %d must be a table with a path", i), 2)
        end
        local o = {}
        for k, v in pairs(op) do o[k] = v end
        o.path = self:_full(op.path)
        if o.data ~= nil then o.data = data_arg(o.data, "multi") end
        sops[i] = o
    end
    local res, err, idx = self.store:multi(sops)
    self:_flush()
    if not res then
        raise(err, idx and ops[idx] and fmt("op %d (%s %s)", idx,
              tostring(ops[idx].op), ops[idx].path) or "multi")
    end
    for i, r in ipairs(res) do
        if type(r) == "string" then res[i] = self:_rel(r) end
    end
    return res
end

-- ensure_path(path): creates the path and its ancestors when missing.
function Client:ensure_path(path)
    self:_check_open("ensure_path")
    check_path(path, "ensure_path")
    local full = self:_full(path)
    if full == "/" then return true end
    local p, err = self.store:create(full, "", { parents = true })
    self:_flush()
    if not p and err ~= "ZNODEEXISTS" then raise(err, path) end
    return true
end

-- on_session(fn): fn(state) hears "connected", "lost", "expired", ... (the
-- ZooKeeper backend only).
function Client:on_session(fn)
    self.listeners[#self.listeners + 1] = fn
end

-- Session changes: after an expiry the new session gets back the
-- client's registrations (ephemeral nodes die with their session).
function Client:_session(state)
    if state == "expired" then
        self.expired = true
        for lk in pairs(self.locks) do lk.lost = true end
    elseif state == "connected" and self.expired then
        self.expired = false
        async.spawn(function() self:_restore_ephemerals() end)
    end
    for _, fn in ipairs(self.listeners) do
        local ok, err = pcall(fn, state)
        if not ok then core.log("error", "zk: on_session: " .. tostring(err)) end
    end
end

-- The engine's store reports its session changes here (the client cannot
-- hook a store it did not open): notify_session("expired") then
-- notify_session("connected") brings the registrations back.
Client.notify_session = Client._session

-- backend() → "zk" or "sqlite"
function Client:backend()
    return tostring(self.store):find("(zk://", 1, true) and "zk" or "sqlite"
end

function Client:_restore_ephemerals()
    for fpath, data in pairs(self.ephemerals) do
        if self.closed then return end
        local p, err = self.store:create(fpath, data,
                                         { ephemeral = true, parents = true })
        if not p and err ~= "ZNODEEXISTS" then
            core.log("warn", fmt("zk: re-registering %s: %s", fpath,
                                 tostring(err)))
        else
            core.log("info", "zk: re-registered " .. fpath)
        end
    end
    self:_flush()
    for _, fn in ipairs(self.restored) do pcall(fn) end
end

-- close(): ends the session (its ephemeral nodes go) unless the store is
-- borrowed (zk.default(), zk.wrap(store, {borrowed=true})).
function Client:close()
    if self.closed then return end
    self.closed = true
    self.ephemerals = {}
    for lk in pairs(self.locks) do lk.acquired = false end
    if not self.borrowed then self.store:close() end
end
Client.__close = Client.close

function Client:__tostring()
    return fmt("zkflow.zk client (%s%s)", tostring(self.store),
               self.root and (" root " .. self.root) or "")
end

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

function _M.has_default()
    return default_store ~= nil
end

-- ---- lock (kazoo's Lock; Curator's InterProcessMutex names on request) -------

-- The sequence of a contender's node, or nil when the name is no
-- contender's: kazoo's `(?:__lock__)(-?\d{10})$`, Curator's `-lock-<seq>`.
local SEQ = "(%-?" .. ("%d"):rep(10) .. ")$"
local function contender_seq(name)
    return name:match("__lock__" .. SEQ) or name:match("%-lock%-" .. SEQ)
end
_M.contender_seq = contender_seq

local Lock = {}
Lock.__index = Lock

-- Sorted contenders of the lock path: list of {name=, seq=}.
local function contenders(c, path)
    local kids = c:children(path)
    local list = {}
    for _, k in ipairs(kids) do
        local seq = contender_seq(k)
        if seq then list[#list + 1] = { name = k, seq = seq } end
    end
    -- kazoo sorts the sequence strings; ties (impossible under one parent)
    -- fall back to the name so the order is total.
    sort(list, function(a, b)
        if a.seq ~= b.seq then return a.seq < b.seq end
        return a.name < b.name
    end)
    return list
end

function Lock:_cleanup()
    if self.node then
        pcall(self.client.delete, self.client, self.path .. "/" .. self.node)
    end
    self.node = nil
    self.acquired = false
    self.client.locks[self] = nil
end

-- acquire([timeout]) → true, or nil and "ZOPERATIONTIMEOUT: ..." / when
-- cancelled nil and "cancelled".
function Lock:acquire(timeout)
    local c = self.client
    if self.acquired then return true end
    self.cancelled = false
    local deadline = timeout and (core.mono() + timeout)
    c:ensure_path(self.path)
    local ok, res, err = pcall(function()
        while true do
            if not self.node then
                local p = c:_create_findable(self.path, self.prefix,
                                             self.prefix, self.data,
                                             { ephemeral = true,
                                               sequential = true })
                self.node = p:match("([^/]+)$")
            end
            local list = contenders(c, self.path)
            local pred, found
            for _, e in ipairs(list) do
                if e.name == self.node then found = true; break end
                pred = e.name
            end
            if not found then
                -- Our node went with an expired session: make another.
                self.node = nil
            elseif self.cancelled then
                return nil, "cancelled"
            elseif not pred then
                return true
            else
                local ev = self.wake
                local stat = c:exists(self.path .. "/" .. pred,
                                      function() fire(ev) end)
                if stat then
                    local left = deadline and (deadline - core.mono())
                    if left and left <= 0 then
                        return nil, fmt("ZOPERATIONTIMEOUT: lock %s not "
                                        .. "acquired within %g s", self.path,
                                        timeout)
                    end
                    if not wait_event(ev, left) then
                        if not self.cancelled then
                            return nil, fmt("ZOPERATIONTIMEOUT: lock %s not "
                                            .. "acquired within %g s",
                                            self.path, timeout)
                        end
                    end
                end
            end
        end
    end)
    if not ok then
        self:_cleanup()
        error(res, 0)
    end
    if res then
        self.acquired = true
        self.lost = false
        c.locks[self] = true
        return true
    end
    self:_cleanup()
    return nil, err
end

-- release() → true when it held the lock.
function Lock:release()
    if not self.acquired then return false end
    self:_cleanup()
    return true
end

function Lock:is_acquired()
    return self.acquired and not self.lost
end

-- cancel(): a pending acquire() returns nil, "cancelled".
function Lock:cancel()
    self.cancelled = true
    fire(self.wake)
end

-- contenders() → the identifiers of the contenders, first the holder.
function Lock:contenders()
    local out = {}
    for _, e in ipairs(contenders(self.client, self.path)) do
        local ok, data = pcall(self.client.get, self.client,
                               self.path .. "/" .. e.name)
        if ok then out[#out + 1] = data end
    end
    return out
end

function Lock:__close() self:release() end

local function new_lock(c, path, opts)
    opts = opts or {}
    local prefix
    if opts.style == "curator" then
        prefix = "_c_" .. random_uuid() .. "-lock-"
    elseif opts.style == nil or opts.style == "kazoo" then
        prefix = random_hex() .. "__lock__"
    else
        error("zk.lock: 'style' must be \"kazoo\" or \"curator\", got "
              .. tostring(opts.style), 3)
    end
    return setmetatable({
        client = c, path = path, prefix = prefix,
        data = opts.id and tostring(opts.id) or "",
        wake = new_event(), acquired = false, cancelled = false,
    }, Lock)
end

-- lock(path [, {timeout=s, style="kazoo"|"curator", id=}]) → the held lock
-- (lock:release()), or nil and an error when the timeout passes first.
function Client:lock(path, opts)
    self:_check_open("lock")
    check_path(path, "lock")
    if opts ~= nil and type(opts) ~= "table" then
        error("zk.lock: opts must be a table", 2)
    end
    local lk = new_lock(self, path, opts)
    local ok, err = lk:acquire(opts and opts.timeout)
    if not ok then return nil, err end
    return lk
end

-- Lock(path [, opts]): a lock object not yet acquired (kazoo's zk.Lock).
function Client:Lock(path, opts)
    check_path(path, "Lock")
    return new_lock(self, path, opts)
end

-- ---- election (kazoo's Election: the lowest contender leads) -----------------

local Election = {}
Election.__index = Election

-- run(fn, ...): waits for leadership, calls fn(...) as the leader, then
-- gives leadership up.  Returns fn's results, or nothing when cancelled.
function Election:run(fn, ...)
    if type(fn) ~= "function" then
        error("election:run: leader function is not callable", 2)
    end
    local ok, err = self.lock:acquire()
    if not ok then
        if err == "cancelled" then return end
        error(err, 0)
    end
    local res = pack(pcall(fn, ...))
    self.lock:release()
    if not res[1] then error(res[2], 0) end
    return unpack(res, 2, res.n)
end

function Election:is_leader()
    return self.lock:is_acquired()
end

function Election:cancel()
    self.lock:cancel()
end

function Election:contenders()
    return self.lock:contenders()
end

function Client:election(path, id, opts)
    self:_check_open("election")
    check_path(path, "election")
    local o = { id = id }
    if opts then o.style = opts.style end
    return setmetatable({ lock = new_lock(self, path, o), path = path,
                          id = id }, Election)
end

-- ---- semaphore (kazoo's Semaphore) -------------------------------------------

local Semaphore = {}
Semaphore.__index = Semaphore

-- The leases node holds max_leases as its data; kazoo refuses a mismatch.
function Semaphore:_ensure()
    local c = self.client
    local created = pcall(c.create, c, self.path, "", { parents = true })
    if created then
        c:set(self.path, tostring(self.max_leases))
        return
    end
    local data = c:get(self.path)
    local n = math.tointeger(tonumber(data))
    if n and n ~= self.max_leases then
        error(fmt("zk.semaphore: inconsistent max leases: %d, expected: %d",
                  n, self.max_leases), 0)
    end
end

-- acquire([timeout]) → true, or nil and an error on timeout.
function Semaphore:acquire(timeout)
    local c = self.client
    if self.acquired then return true end
    self:_ensure()
    if c:exists(self.create_path) then
        self.acquired = true
        return true
    end
    local deadline = timeout and (core.mono() + timeout)
    -- kazoo takes the lock at "<path>-__lock__" around the lease grab.
    local lk, err = c:lock(self.path .. "-__lock__",
                           { timeout = timeout, id = self.id })
    if not lk then return nil, err end
    local ok, res, rerr = pcall(function()
        local ev = new_event()
        while true do
            local kids = c:children(self.path, function() fire(ev) end)
            if #kids < self.max_leases then
                pcall(c.create, c, self.create_path, self.id,
                      { ephemeral = true })
            end
            if c:exists(self.create_path) then return true end
            local left = deadline and (deadline - core.mono())
            if (left and left <= 0) or not wait_event(ev, left) then
                return nil, fmt("ZOPERATIONTIMEOUT: semaphore %s not acquired"
                                .. " within %g s", self.path, timeout)
            end
        end
    end)
    lk:release()
    if not ok then error(res, 0) end
    self.acquired = res == true
    return res, rerr
end

function Semaphore:release()
    if not self.acquired then return false end
    pcall(self.client.delete, self.client, self.create_path)
    self.acquired = false
    return true
end

function Semaphore:lease_holders()
    local c = self.client
    if not c:exists(self.path) then return {} end
    local out = {}
    for _, k in ipairs(c:children(self.path)) do
        local ok, data = pcall(c.get, c, self.path .. "/" .. k)
        if ok then out[#out + 1] = data end
    end
    return out
end

function Semaphore:__close() self:release() end

-- semaphore(path, max_leases [, {id=}]) → a semaphore (acquire/release).
function Client:semaphore(path, max_leases, opts)
    self:_check_open("semaphore")
    check_path(path, "semaphore")
    max_leases = max_leases or 1
    if math.type(max_leases) ~= "integer" or max_leases < 1 then
        error("zk.semaphore: max_leases must be an integer >= 1", 2)
    end
    return setmetatable({
        client = self, path = path, max_leases = max_leases,
        id = opts and opts.id and tostring(opts.id) or "",
        create_path = path .. "/" .. random_hex(), acquired = false,
    }, Semaphore)
end

-- ---- service discovery (Curator's ServiceInstance JSON) -----------------------

local SERVICES = "/services"

local function service_name(name, fname)
    if type(name) ~= "string" or name == "" or name:find("/", 1, true) then
        error(fmt("zk.%s: service must be a name without '/'", fname), 3)
    end
end

-- register(service, instance) → the instance as registered (with its id).
-- instance: {id=, address=, port=, ssl_port=, payload=, uri_spec=,
-- service_type=} (Curator's camelCase keys are accepted too).  The node is
-- ephemeral and comes back after a session expiry.
function Client:register(service, instance)
    self:_check_open("register")
    service_name(service, "register")
    instance = instance or {}
    if type(instance) ~= "table" then
        error("zk.register: instance must be a table", 2)
    end
    local null = core.null
    local function pick(a, b)
        local v = instance[a]
        if v == nil and b then v = instance[b] end
        if v == nil then return null end
        return v
    end
    local id = instance.id and tostring(instance.id) or random_uuid()
    local si = {
        name = service,
        id = id,
        address = instance.address or hostname(),
        port = pick("port"),
        sslPort = pick("ssl_port", "sslPort"),
        payload = pick("payload"),
        registrationTimeUTC = math.floor(core.now() * 1000),
        serviceType = instance.service_type or instance.serviceType
                      or "DYNAMIC",
        uriSpec = pick("uri_spec", "uriSpec"),
    }
    local data = core.json_encode(si)
    local path = SERVICES .. "/" .. service .. "/" .. id
    local fpath = self:_full(path)
    local p, err = self.store:create(fpath, data, { ephemeral = true,
                                                    parents = true })
    self:_flush()
    if not p and err == "ZNODEEXISTS" then
        -- Our own earlier registration (or a stale one): take it over.
        local ok, serr = self.store:set(fpath, data, -1)
        self:_flush()
        if not ok then raise(serr, path) end
    elseif not p then
        raise(err, path)
    end
    self:_flush()
    self.ephemerals[fpath] = data
    return si
end

-- unregister(service, id) → true
function Client:unregister(service, id)
    self:_check_open("unregister")
    service_name(service, "unregister")
    local path = SERVICES .. "/" .. service .. "/" .. tostring(id)
    self.ephemerals[self:_full(path)] = nil
    local ok, err = self.store:delete(self:_full(path), -1)
    self:_flush()
    if not ok and err ~= "ZNONODE" then raise(err, path) end
    return true
end

-- discover(service [, watch]) → list of instances (decoded JSON), by id;
-- an unknown service has none.
function Client:discover(service, watch)
    self:_check_open("discover")
    service_name(service, "discover")
    local dir = SERVICES .. "/" .. service
    local kids, err = self.store:children(self:_full(dir), self:_watch(watch))
    if not kids then
        if err == "ZNONODE" then return {} end
        raise(err, dir)
    end
    local out = {}
    for _, id in ipairs(kids) do
        local data = self.store:get(self:_full(dir .. "/" .. id))
        if data then
            local inst = core.json_decode(data)
            if type(inst) == "table" then out[#out + 1] = inst end
        end
    end
    return out
end

-- services() → the names of registered services
function Client:services()
    local kids = self.store:children(self:_full(SERVICES))
    return kids or {}
end

return _M
