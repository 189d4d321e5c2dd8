-- zkflow.api.auth: the API's users, roles and tokens.
--
-- Users and tokens live in the store, so on a cluster they are in
-- ZooKeeper and every `zkflow api`, standalone and nginx sees the same:
--   <root>/auth/users/<name>   {name, role, created, password = {kdf =
--                               "pbkdf2-sha256", iterations, salt, hash}}
--   <root>/auth/tokens/<id>    {id, user, label, created, hash}
--   <root>/auth/sessions/<id>  {id, user, created, expires, hash}
-- A token is "zkf_<id>_<secret>" (8 and 32 random bytes in hex); the store
-- keeps only the SHA-256 of its secret, so a copy of the store lets no one
-- in.  A password is kept as PBKDF2-HMAC-SHA-256 (ITERATIONS rounds,
-- 16 bytes of salt); a checked password is remembered for CACHE_SECONDS
-- (keyed by a hash of user, password and stored hash) so HTTP basic does
-- not pay the KDF on every request of the loop.
--
-- The page signs in with a session: POST /api/v1/session with a user's
-- name and password sets the cookie "zkflow_session=<id>_<secret>"
-- (HttpOnly, SameSite=Strict); the session lives server-side, in the
-- store beside the tokens and, like them, as the hash of its secret, for
-- SESSION_SECONDS from the login (no sliding renewal).  Kept in the store
-- rather than signed with a secret: signing out (DELETE /api/v1/session)
-- or deleting the user ends it at once, on every API process of a
-- cluster.  Expired sessions are removed when they are presented and by
-- each login.
--
-- Roles, each with everything of the ones before (Airflow's Viewer, Op,
-- Admin): viewer reads; operator also triggers, pauses and clears; admin
-- also manages users, variables and configuration.

local core  = require "zkflow.core"
local state = require "zkflow.state"

local _M = {}

local sfmt = string.format

_M.ROLES = { viewer = 1, operator = 2, admin = 3 }
_M.ITERATIONS = 50000
_M.CACHE_SECONDS = 60
_M.SESSION_SECONDS = 12 * 3600
_M.COOKIE = "zkflow_session"

local NAME_RULE = "^[%w_.@%-]+$"

-- Returns nil when `name` may name a user, else why not.
local function bad_name(name)
    if type(name) ~= "string" or #name == 0 or #name > 64 or not name:find(NAME_RULE) then
        return sfmt("user: invalid name %q: 1-64 characters of [A-Za-z0-9_.@-]",
                    tostring(name))
    end
end

local A = {}
A.__index = A

-- Returns the users and tokens of `store` (borrowed) under `root`.
function _M.new(store, root)
    return setmetatable({ S = state.new(store, root), verified = {}, verified_keys = {} }, A)
end

function A:user_path(name)
    return self.S:path("auth", "users", name)
end

function A:token_path(id)
    return self.S:path("auth", "tokens", id)
end

-- True when a user of role `role` may do what needs `need`.
function _M.allows(role, need)
    return (_M.ROLES[role] or 0) >= (_M.ROLES[need] or math.huge)
end

local function hash_password(password, salt, iterations)
    return core.pbkdf2_sha256(password, salt, iterations)
end

-- Adds (or, with replace, changes) a user.  `password` may be nil (a user
-- who only uses tokens).  Returns the record, or nil and a message.
function A:add_user(name, role, password, replace)
    local err = bad_name(name)
    if err then return nil, err end
    if not _M.ROLES[role] then
        return nil, sfmt("user %s: role must be viewer, operator or admin, got %q",
                         name, tostring(role))
    end
    if not replace and self.S:read(self:user_path(name)) then
        return nil, sfmt("user %s exists (delete it first, or change it with --replace)", name)
    end
    local rec = { name = name, role = role, created = state.iso(core.now(), true),
                  password = core.null }
    if password ~= nil then
        if type(password) ~= "string" or #password < 8 then
            return nil, sfmt("user %s: a password has at least 8 characters", name)
        end
        local salt = core.random_hex(16)
        rec.password = { kdf = "pbkdf2-sha256", iterations = _M.ITERATIONS, salt = salt,
                         hash = hash_password(password, salt, _M.ITERATIONS) }
    end
    self.S:write(self:user_path(name), rec)
    return rec
end

-- The users, sorted by name, without their password hashes.
function A:list_users()
    local out = {}
    local names = self.S:children(self.S:path("auth", "users"))
    table.sort(names)
    local tokens = self:list_tokens()
    for _, n in ipairs(names) do
        local rec = self.S:read(self:user_path(n))
        if rec then
            local count = 0
            for _, t in ipairs(tokens) do
                if t.user == n then count = count + 1 end
            end
            out[#out + 1] = { name = n, role = rec.role, created = rec.created,
                              password = type(rec.password) == "table",
                              tokens = count }
        end
    end
    return out
end

-- The tokens (without their hashes), sorted by id.
function A:list_tokens()
    local out = {}
    local ids = self.S:children(self.S:path("auth", "tokens"))
    table.sort(ids)
    for _, id in ipairs(ids) do
        local rec = self.S:read(self:token_path(id))
        if rec then
            out[#out + 1] = { id = id, user = rec.user, label = rec.label,
                              created = rec.created }
        end
    end
    return out
end

-- Deletes a user and its tokens.  Returns true, or nil and a message.
function A:delete_user(name)
    local err = bad_name(name)
    if err then return nil, err end
    if not self.S:read(self:user_path(name)) then
        return nil, sfmt("no user %s", name)
    end
    for _, t in ipairs(self:list_tokens()) do
        if t.user == name then self.S.store:delete(self:token_path(t.id)) end
    end
    for _, id in ipairs(self.S:children(self.S:path("auth", "sessions"))) do
        local rec = self.S:read(self:session_path(id))
        if type(rec) == "table" and rec.user == name then
            self.S.store:delete(self:session_path(id))
        end
    end
    self.S.store:delete(self:user_path(name))
    self.verified, self.verified_keys = {}, {}
    return true
end

-- A new token for `user`; the token itself is returned once and stored
-- only as a hash.  Returns token, id, or nil and a message.
function A:new_token(user, label)
    local err = bad_name(user)
    if err then return nil, err end
    if not self.S:read(self:user_path(user)) then
        return nil, sfmt("no user %s", user)
    end
    local id, secret = core.random_hex(8), core.random_hex(32)
    self.S:write(self:token_path(id), {
        id = id, user = user, label = label or core.null,
        created = state.iso(core.now(), true), hash = core.sha256(secret),
    })
    return "zkf_" .. id .. "_" .. secret, id
end

-- Deletes a token by id.
function A:delete_token(id)
    if type(id) ~= "string" or not id:find("^%x+$") or not self.S:read(self:token_path(id)) then
        return nil, sfmt("no token %s", tostring(id))
    end
    self.S.store:delete(self:token_path(id))
    return true
end

local function user_of(self, name)
    if bad_name(name) then return nil end
    local rec = self.S:read(self:user_path(name))
    if type(rec) ~= "table" or not _M.ROLES[rec.role] then return nil end
    return rec
end

local function check_password(self, name, password)
    local rec = user_of(self, name)
    local pw = rec and rec.password
    if type(pw) ~= "table" or pw.kdf ~= "pbkdf2-sha256" then
        return nil
    end
    local key = core.sha256(name .. "\0" .. password .. "\0" .. tostring(pw.hash))
    local now = core.mono()
    local seen = self.verified[key]
    if seen and seen > now then
        return rec
    end
    local iterations = math.tointeger(pw.iterations)
    if not iterations or iterations < 1 or iterations > 10000000
            or type(pw.salt) ~= "string" then
        return nil
    end
    if not core.equal_ct(hash_password(password, pw.salt, iterations), tostring(pw.hash)) then
        return nil
    end
    if next(self.verified) and #self.verified_keys >= 1000 then
        self.verified, self.verified_keys = {}, {}
    end
    self.verified[key] = now + _M.CACHE_SECONDS
    self.verified_keys[#self.verified_keys + 1] = key
    return rec
end

local function check_token(self, token)
    local id, secret = token:match("^zkf_(%x+)_(%x+)$")
    if not id then return nil end
    local rec = self.S:read(self:token_path(id))
    if type(rec) ~= "table" or type(rec.hash) ~= "string"
            or not core.equal_ct(core.sha256(secret), rec.hash) then
        return nil
    end
    return user_of(self, rec.user)
end

function A:session_path(id)
    return self.S:path("auth", "sessions", id)
end

-- Removes the sessions whose time is up (a login does it, so sessions
-- nobody presents again do not pile up).
function A:sweep_sessions()
    local now = core.now()
    for _, id in ipairs(self.S:children(self.S:path("auth", "sessions"))) do
        local rec = self.S:read(self:session_path(id))
        if type(rec) ~= "table" or type(rec.expires) ~= "number" or rec.expires <= now then
            self.S.store:delete(self:session_path(id))
        end
    end
end

-- A new session for `name` if `password` is its password: returns the
-- cookie value and the user record, or nil and "bad credentials".
function A:login(name, password)
    local user = type(name) == "string" and type(password) == "string"
                 and check_password(self, name, password)
    if not user then
        return nil, "bad credentials"
    end
    self:sweep_sessions()
    local id, secret = core.random_hex(8), core.random_hex(32)
    local now = core.now()
    self.S:write(self:session_path(id), {
        id = id, user = user.name, created = state.iso(now, true),
        expires = now + _M.SESSION_SECONDS, hash = core.sha256(secret),
    })
    return id .. "_" .. secret, user
end

-- Ends the session of cookie value `value` (nothing when it names none).
function A:logout(value)
    local id = type(value) == "string" and value:match("^(%x+)_%x+$")
    if id then self.S.store:delete(self:session_path(id)) end
end

-- The value of the session cookie in a Cookie header, or nil.
function _M.session_cookie(headers)
    local c = headers and headers.cookie
    if type(c) ~= "string" then return nil end
    for pair in c:gmatch("[^;]+") do
        local k, v = pair:match("^%s*([^=%s]+)%s*=%s*(.-)%s*$")
        if k == _M.COOKIE then return v end
    end
    return nil
end

local function check_session(self, value)
    local id, secret = value:match("^(%x+)_(%x+)$")
    if not id then return nil end
    local rec = self.S:read(self:session_path(id))
    if type(rec) ~= "table" or type(rec.hash) ~= "string"
            or not core.equal_ct(core.sha256(secret), rec.hash) then
        return nil
    end
    if type(rec.expires) ~= "number" or rec.expires <= core.now() then
        self.S.store:delete(self:session_path(id))
        return nil, "session expired: sign in again"
    end
    return user_of(self, rec.user)
end

-- Who sent the request with `headers` ({lower-case name = value}): the
-- user record ({name, role, ...}) and how ("bearer", "basic" or
-- "cookie"), or nil and why (for a 401).  Authorization: Bearer <token>,
-- or Basic base64(user:password); else the session cookie.
function A:authenticate(headers)
    local h = headers and headers.authorization
    if not h then
        local cookie = _M.session_cookie(headers)
        if cookie then
            local user, why = check_session(self, cookie)
            if not user then return nil, why or "bad credentials" end
            return user, "cookie"
        end
        return nil, "authentication required (a bearer token, HTTP basic or a session)"
    end
    local scheme, value = h:match("^%s*(%a+)%s+(%S+)%s*$")
    scheme = scheme and scheme:lower()
    local user
    if scheme == "bearer" then
        user = check_token(self, value)
    elseif scheme == "basic" then
        local raw = core.base64_decode(value)
        local name, password = (raw or ""):match("^([^:]*):(.*)$")
        if name then user = check_password(self, name, password) end
    else
        return nil, "unsupported Authorization scheme (use Bearer or Basic)"
    end
    if not user then
        return nil, "bad credentials"
    end
    return user, scheme
end

return _M
