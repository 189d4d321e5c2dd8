-- zkflow.http: HTTP and HTTPS requests on the loop, for the `http`
-- operator and for Lua tasks.  The transfer is libcurl's (core.http_request,
-- core/lua/curl.c, on the multi socket interface driven by the engine's
-- loop); this module checks the input, frames the request's headers and
-- waits.
--
--   local http = require "zkflow.http"
--   local resp, err = http.request { url = "https://127.0.0.1:8443/api/v1/health",
--                                    method = "GET", headers = {}, body = nil,
--                                    timeout = 30, connect_timeout = nil,
--                                    ca_file = nil, follow_redirects = true,
--                                    max_redirects = 30 }
--   -- resp = { status = 200, reason = "OK", version = "HTTP/1.1",
--   --          headers = { ["content-type"] = "...", ... }, body = "...",
--   --          url = "...", redirects = 0, elapsed = seconds };
--   -- resp:json() decodes the body
--
-- https:// verifies the server's certificate against the system's CAs, or
-- against `ca_file` only when it is given.  Redirects are followed (at
-- most `max_redirects`; a POST answered 301, 302 or 303 goes on as a GET,
-- as browsers and Python's requests do); `resp.url` is then the last URL.
-- Proxies come from the environment as for curl (http_proxy, https_proxy,
-- no_proxy).  Host names resolve off the loop (libcurl's threaded
-- resolver).  One request is one connection (`Connection: close`).
-- request() waits (it yields), so it runs inside a coroutine: a task,
-- `zkflow lua`, flow.run or flow.spawn; the loop goes on meanwhile.
-- `timeout` bounds the whole exchange, `connect_timeout` the connection
-- (TCP and TLS).  Replies are limited to 16 MiB.
--
-- Errors are returned, not raised: nil and "connect 127.0.0.1:1:
-- Connection refused", "read 127.0.0.1:8080: timed out after 30s",
-- "tls h:443: SSL certificate problem: ...", or "bad response: ..." for a
-- reply that is not HTTP.  A reply of any status is a response; the
-- caller decides which statuses it accepts.
local core = require "zkflow.core"
local async = require "zkflow.async"

local _M = {}

local type, tostring, tonumber, ipairs, pairs, setmetatable, error =
      type, tostring, tonumber, ipairs, pairs, setmetatable, error
local fmt, concat, sort = string.format, table.concat, table.sort
local byte, char, lower = string.byte, string.char, string.lower

_M.METHODS = { "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH" }
_M.DEFAULT_TIMEOUT = 30
_M.DEFAULT_MAX_REDIRECTS = 30
_M.USER_AGENT = "zkflow"

-- ---- URLs ------------------------------------------------------------------

local function unescape(s)
    return (s:gsub("%%(%x%x)", function(h) return char(tonumber(h, 16)) end))
end

-- Percent-encodes everything but RFC 3986's unreserved characters.
function _M.escape(s)
    return (tostring(s):gsub("[^%w%-%._~]", function(c)
        return fmt("%%%02X", byte(c))
    end))
end

-- parse_url(url) → {scheme=, host=, port=, target= (path and query),
-- host_header=, userinfo=, display= (the URL without its password)}, or nil
-- and why.
function _M.parse_url(url)
    if type(url) ~= "string" then return nil, "must be a string" end
    if url == "" then return nil, "is empty" end
    if url:find("[%s%c]") then
        return nil, "contains whitespace or a control character"
    end
    local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
    if not scheme then return nil, "must start with http:// or https://" end
    scheme = lower(scheme)
    if scheme ~= "http" and scheme ~= "https" then
        return nil, "scheme '" .. scheme .. "' is not supported (only http:// and https://)"
    end
    local default_port = scheme == "https" and 443 or 80
    local authority, target = rest:match("^([^/?#]*)(.*)$")
    target = target:gsub("#.*$", "")
    if target == "" then
        target = "/"
    elseif target:sub(1, 1) == "?" then
        target = "/" .. target
    end
    local userinfo
    local at = authority:match("^.*()@")
    if at then
        userinfo = authority:sub(1, at - 1)
        authority = authority:sub(at + 1)
    end
    local host, port = authority:match("^%[([%x:.]+)%]:?(%d*)$")
    local bracketed = host ~= nil
    if not host then
        host, port = authority:match("^([^:%[%]]+):?(%d*)$")
    end
    if not host or (authority:sub(-1) == ":" and port == "") then
        return nil, "has a bad host or port '" .. authority .. "'"
    end
    port = port == "" and default_port or tonumber(port)
    if port < 1 or port > 65535 then
        return nil, "port " .. port .. " is not in 1-65535"
    end
    local hostpart = bracketed and ("[" .. host .. "]") or host
    local display = url
    if userinfo then
        local user = userinfo:match("^([^:]*)")
        display = scheme .. "://" .. user .. (userinfo:find(":", 1, true) and ":***" or "")
                  .. "@" .. rest:sub(#userinfo + 2)
    end
    return {
        host = host,
        port = port,
        target = target,
        scheme = scheme,
        host_header = port == default_port and hostpart or (hostpart .. ":" .. port),
        userinfo = userinfo,
        display = display,
    }
end

-- A query string of a table: keys sorted, a list value repeats its key.
function _M.query_string(t)
    local keys = {}
    for k in pairs(t) do keys[#keys + 1] = tostring(k) end
    sort(keys)
    local out = {}
    for _, k in ipairs(keys) do
        local v = t[k]
        if v == nil then v = t[tonumber(k)] end
        if type(v) == "table" then
            for _, x in ipairs(v) do
                out[#out + 1] = _M.escape(k) .. "=" .. _M.escape(x)
            end
        else
            out[#out + 1] = _M.escape(k) .. "=" .. _M.escape(v)
        end
    end
    return concat(out, "&")
end

-- ---- requests --------------------------------------------------------------

-- Headers zkflow sets itself: a user value would break the framing of the
-- request or of the reply.
local RESERVED = {
    connection = "zkflow sends 'Connection: close': one request is one connection",
    ["content-length"] = "zkflow sets it from the body",
    ["transfer-encoding"] = "zkflow sends the body with a Content-Length",
}

-- check_headers(h) → a list of {name, value} sorted by name, or nil and
-- why (naming the header).
function _M.check_headers(h)
    if h == nil then return {} end
    if type(h) ~= "table" then return nil, "must be a table of name = value" end
    local list = {}
    for k, v in pairs(h) do
        if type(k) ~= "string" or not k:find("^[%w!#$%%&'*+%-.^_`|~]+$") then
            return nil, fmt("bad header name %q", tostring(k))
        end
        if RESERVED[lower(k)] then
            return nil, fmt("'%s', which cannot be set: %s", k, RESERVED[lower(k)])
        end
        if type(v) == "number" then
            v = math.type(v) == "float" and v == math.floor(v) and fmt("%d", v) or tostring(v)
        end
        if type(v) ~= "string" then
            return nil, fmt("'%s' = %s: a value must be a string or a number", k, type(v))
        end
        if v:find("[\r\n%z]") then
            return nil, fmt("'%s' with a line break or NUL in its value", k)
        end
        list[#list + 1] = { k, v }
    end
    sort(list, function(a, b) return lower(a[1]) < lower(b[1]) end)
    return list
end

-- header_lines(u (parse_url), headers (check_headers), body) →
-- the list of "Name: value" lines for libcurl.  User-Agent and
-- Authorization (from the URL's user:password) are defaults a user header
-- replaces; libcurl's own Host and Accept give way to a user's too.
-- libcurl's Expect and its form Content-Type are removed ("Name:"), so the
-- request is what the user wrote.
function _M.header_lines(u, headers, body)
    local given = {}
    for _, h in ipairs(headers) do given[lower(h[1])] = true end
    local lines = {}
    local function default(name, value)
        if not given[lower(name)] then lines[#lines + 1] = name .. ": " .. value end
    end
    default("User-Agent", _M.USER_AGENT)
    if u.userinfo then
        local user, pass = u.userinfo:match("^([^:]*):?(.*)$")
        default("Authorization", "Basic " .. core.base64_encode(unescape(user) .. ":" .. unescape(pass)))
    end
    for _, h in ipairs(headers) do
        -- "Name;" is libcurl's way to send a header with an empty value
        lines[#lines + 1] = h[2] == "" and (h[1] .. ";") or (h[1] .. ": " .. h[2])
    end
    if body and not given["content-type"] then lines[#lines + 1] = "Content-Type:" end
    if not given.expect then lines[#lines + 1] = "Expect:" end
    lines[#lines + 1] = "Connection: close"
    return lines
end

-- ---- responses -------------------------------------------------------------

local Response = {}
Response.__index = Response

-- resp:json() → the body decoded as JSON; raises when it is not JSON.
function Response:json()
    local v, err = core.json_decode(self.body)
    if v == nil then error("response body is not JSON: " .. tostring(err), 2) end
    return v
end

-- request{url=, method="GET", headers={name = value}, body=nil, timeout=30,
-- connect_timeout=nil, ca_file=nil, follow_redirects=true,
-- max_redirects=30} → response or nil and why.  `url` may be a
-- parse_url() result.  Waits.
function _M.request(opts)
    local u = opts.url
    if type(u) ~= "table" then
        local err
        u, err = _M.parse_url(u)
        if not u then return nil, "url " .. err end
    end
    local method = opts.method or "GET"
    local headers, herr = _M.check_headers(opts.headers)
    if not headers then return nil, "headers: " .. herr end
    local body = opts.body
    if method == "HEAD" then
        body = nil
    elseif method == "POST" or method == "PUT" or method == "PATCH" then
        body = body or ""     -- Content-Length: 0
    elseif body == "" then
        body = nil
    end
    local hostpart = u.host:find(":", 1, true) and ("[" .. u.host .. "]") or u.host
    local req = {
        url = u.scheme .. "://" .. hostpart .. ":" .. u.port .. u.target,
        method = method,
        headers = _M.header_lines(u, headers, body),
        body = body,
        timeout = opts.timeout or _M.DEFAULT_TIMEOUT,
        connect_timeout = opts.connect_timeout,
        ca_file = opts.ca_file,
        follow = opts.follow_redirects ~= false,
        max_redirects = opts.max_redirects or _M.DEFAULT_MAX_REDIRECTS,
    }
    local started = core.mono()
    local resp, terr = async.wait(function(resume)
        local r = core.http_request(req, resume)
        return function() r:cancel() end
    end)
    if not resp then return nil, tostring(terr) end
    if resp.redirects == 0 then resp.url = u.display end
    resp.elapsed = core.mono() - started
    return setmetatable(resp, Response)
end

-- text(s) → s with every byte that is not part of valid UTF-8 replaced by
-- U+FFFD (zkflow.text).
_M.text = require("zkflow.text").valid

return _M
