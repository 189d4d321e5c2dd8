-- zkflow.zk.client: the client object of zkflow.zk and what it stands on.
--
-- Owns the Client metatable and its znode operations (create, get, set,
-- delete, exists, children, multi, ensure_path), the root prefix, the retry
-- of idempotent requests after a connection loss, the session listeners and
-- the re-registration of ephemeral nodes after an expiry, and the helpers
-- the recipes (zkflow.zk.recipes) share: ZooKeeper-named errors, random ids
-- and the waiting of a coroutine or of plain Lua's main thread.  The public
-- face (connect, wrap, default) is zkflow.zk.
local core = require "zkflow.core"
local async = require "zkflow.async"

local coroutine, error, io, ipairs, math, pairs, string, table, tostring,
      type =
      coroutine, error, io, ipairs, math, pairs, string, table, tostring,
      type
local pack, unpack, concat = table.pack, table.unpack, table.concat
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
_M.wait = wait
_M.hostname = hostname
_M.raise = raise
_M.new_event = new_event
_M.fire = fire
_M.wait_event = wait_event

-- ---- the client ---------------------------------------------------------------

local function check_path(path, fname)
    if type(path) ~= "string" then
        error(fmt("zk.%s: path must be a string, got %s", fname, type(path)), 3)
    end
end
_M.check_path = check_path

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

return _M
