-- zkflow.zk.recipes: the ZooKeeper recipes of zkflow.zk's client.
--
-- Adds lock, Lock, election, semaphore and the service discovery calls
-- (register, unregister, discover, services) to the Client of
-- zkflow.zk.client.  Node names match kazoo's and Curator's so that zkflow,
-- Python and Java processes cooperate on the same paths.
local core = require "zkflow.core"
local client = require "zkflow.zk.client"

local error, ipairs, math, pcall, setmetatable, tonumber, string, table,
      tostring, type =
      error, ipairs, math, pcall, setmetatable, tonumber, string, table,
      tostring, type
local pack, unpack, sort = table.pack, table.unpack, table.sort
local fmt = string.format

local _M = {}

local Client = client.Client
local random_hex, random_uuid, hostname = client.random_hex,
                                          client.random_uuid, client.hostname
local raise, check_path = client.raise, client.check_path
local new_event, fire, wait_event = client.new_event, client.fire,
                                    client.wait_event

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
