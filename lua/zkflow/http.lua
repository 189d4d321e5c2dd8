-- zkflow.http: a small HTTP/1.1 client on the loop, for the `http`
-- operator and for Lua tasks (plain http:// only: there is no TLS here).
--
--   local http = require "zkflow.http"
--   local resp, err = http.request { url = "http://127.0.0.1:8080/api/v1/health",
--                                    method = "GET", headers = {}, body = nil,
--                                    timeout = 30 }
--   -- resp = { status = 200, reason = "OK", version = "HTTP/1.1",
--   --          headers = { ["content-type"] = "...", ... }, body = "...",
--   --          url = "...", elapsed = seconds }; resp:json() decodes the body
--
-- One request is one connection: the request says `Connection: close` and
-- the reply is read to the end of the connection (core.tcp_request), then
-- framed by its Content-Length or chunked transfer coding, or taken whole
-- when it has neither.  request() waits (it yields), so it runs inside a
-- coroutine: a task, `zkflow lua`, flow.run or flow.spawn; the loop goes on
-- meanwhile.  `timeout` bounds the whole exchange (connect, send, receive).
-- A host name is resolved with a blocking getaddrinfo() (see
-- core/lua/net.c): give an address where that matters.  Replies are
-- limited to 16 MiB.
--
-- Errors are returned, not raised: nil and "connect 127.0.0.1:1:
-- Connection refused", "read 127.0.0.1:8080: timed out after 30s", or
-- "bad response: ..." for a reply that is not HTTP.  A reply of any status
-- is a response; the caller decides which statuses it accepts.
local core = require "zkflow.core"
local async = require "zkflow.async"

local _M = {}

local type, tostring, tonumber, ipairs, pairs, setmetatable, error =
      type, tostring, tonumber, ipairs, pairs, setmetatable, error
local fmt, concat, sort = string.format, table.concat, table.sort
local byte, char, lower = string.byte, string.char, string.lower

_M.METHODS = { "GET", "POST", "PUT", "DELETE", "HEAD", "PATCH" }
_M.DEFAULT_TIMEOUT = 30
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

-- parse_url(url) → {host=, port=, target= (path and query), host_header=,
-- userinfo=, display= (the URL without its password)}, or nil and why.
function _M.parse_url(url)
    if type(url) ~= "string" then return nil, "must be a string" end
    if url == "" then return nil, "is empty" end
    if url:find("[%s%c]") then
        return nil, "contains whitespace or a control character"
    end
    local scheme, rest = url:match("^(%a[%w+.-]*)://(.*)$")
    if not scheme then return nil, "must start with http://" end
    scheme = lower(scheme)
    if scheme == "https" then
        return nil, "https is not supported (only http://; there is no TLS in zkflow)"
    elseif scheme ~= "http" then
        return nil, "scheme '" .. scheme .. "' is not supported (only http://)"
    end
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
    port = port == "" and 80 or tonumber(port)
    if port < 1 or port > 65535 then
        return nil, "port " .. port .. " is not in 1-65535"
    end
    local hostpart = bracketed and ("[" .. host .. "]") or host
    local display = url
    if userinfo then
        local user = userinfo:match("^([^:]*)")
        display = "http://" .. user .. (userinfo:find(":", 1, true) and ":***" or "")
                  .. "@" .. rest:sub(#userinfo + 2)
    end
    return {
        host = host,
        port = port,
        target = target,
        host_header = port == 80 and hostpart or (hostpart .. ":" .. port),
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
    connection = "zkflow sends 'Connection: close' and reads the reply to the end of the connection",
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

-- build_request(method, u (parse_url), headers (check_headers), body) →
-- the request bytes.  Host, User-Agent, Accept and Authorization (from
-- the URL's user:password) are defaults a user header replaces.
function _M.build_request(method, u, headers, body)
    local given = {}
    for _, h in ipairs(headers) do given[lower(h[1])] = true end
    local lines = { fmt("%s %s HTTP/1.1", method, u.target) }
    local function default(name, value)
        if not given[lower(name)] then lines[#lines + 1] = name .. ": " .. value end
    end
    default("Host", u.host_header)
    default("User-Agent", _M.USER_AGENT)
    default("Accept", "*/*")
    if u.userinfo then
        local user, pass = u.userinfo:match("^([^:]*):?(.*)$")
        default("Authorization", "Basic " .. core.base64_encode(unescape(user) .. ":" .. unescape(pass)))
    end
    for _, h in ipairs(headers) do lines[#lines + 1] = h[1] .. ": " .. h[2] end
    if body and (#body > 0 or method ~= "GET" and method ~= "HEAD" and method ~= "DELETE") then
        lines[#lines + 1] = "Content-Length: " .. #body
    elseif method == "POST" or method == "PUT" or method == "PATCH" then
        lines[#lines + 1] = "Content-Length: 0"
    end
    lines[#lines + 1] = "Connection: close"
    lines[#lines + 1] = ""
    lines[#lines + 1] = body or ""
    return concat(lines, "\r\n")
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

-- The end of the line starting at `pos`: returns the line (without CR)
-- and the position after its LF, or nil when there is no LF.
local function line_at(s, pos)
    local e = s:find("\n", pos, true)
    if not e then return nil end
    local line = s:sub(pos, e - 1)
    if line:sub(-1) == "\r" then line = line:sub(1, -2) end
    return line, e + 1
end

-- Reads header fields from `pos` up to an empty line into `headers`
-- (lower-case names; repeated fields joined with ", ").  Returns the
-- position after the empty line, or nil and why.  At the end of `s`
-- (`eof_ok`: trailers may be cut short by the close) returns #s + 1.
local function read_fields(s, pos, headers, eof_ok)
    local last
    while true do
        local line, nxt = line_at(s, pos)
        if not line then
            if eof_ok then return #s + 1 end
            return nil, "the headers do not end (no empty line)"
        end
        pos = nxt
        if line == "" then return pos end
        if line:find("^[ \t]") and last then
            -- obsolete line folding: a continuation of the previous field
            headers[last] = headers[last] .. " " .. line:match("^%s*(.-)%s*$")
        else
            local name, value = line:match("^([^:%s]+):%s*(.-)%s*$")
            if not name then
                return nil, fmt("bad header line %q", line:sub(1, 80))
            end
            name = lower(name)
            headers[name] = headers[name] and (headers[name] .. ", " .. value) or value
            last = name
        end
    end
end

-- A Content-Length value; repeated fields (joined "5, 5") must agree.
local function content_length(v)
    local n
    for part in (v .. ","):gmatch("%s*([^,]-)%s*,") do
        local m = part:find("^%d+$") and tonumber(part)
        if not m or (n and m ~= n) then return nil end
        n = m
    end
    return n
end

local function dechunk(s, pos, headers)
    local parts = {}
    while true do
        local line, nxt = line_at(s, pos)
        if not line then return nil, "the chunked body ends early (the connection closed)" end
        local hex = line:match("^%s*(%x+)%s*;?")
        if not hex or #hex > 12 then
            return nil, fmt("bad chunk size line %q", line:sub(1, 80))
        end
        local n = tonumber(hex, 16)
        pos = nxt
        if n == 0 then
            -- trailer fields: kept when the header did not have them
            local trailers = {}
            local ok, err = read_fields(s, pos, trailers, true)
            if not ok then return nil, "trailer: " .. err end
            for k, v in pairs(trailers) do
                if headers[k] == nil then headers[k] = v end
            end
            return concat(parts)
        end
        if pos + n - 1 > #s then
            return nil, fmt("the chunked body ends early: a chunk of %d bytes has %d",
                            n, #s - pos + 1)
        end
        parts[#parts + 1] = s:sub(pos, pos + n - 1)
        pos = pos + n
        local crlf = s:match("^\r?\n", pos)
        if not crlf then return nil, "a chunk is not followed by CRLF" end
        pos = pos + #crlf
    end
end

-- parse_response(raw [, method]) → response (see the top), or nil and why.
-- Interim 1xx replies are skipped; a HEAD reply, a 204 and a 304 have no
-- body whatever their headers say.
function _M.parse_response(raw, method)
    if raw == "" then
        return nil, "empty reply (the server closed the connection without answering)"
    end
    local pos = 1
    while true do
        local line, nxt = line_at(raw, pos)
        if not line then
            return nil, fmt("no status line in %q", raw:sub(pos, pos + 79))
        end
        local version, status, reason = line:match("^(HTTP/%d%.%d) (%d%d%d) ?(.*)$")
        if not version then
            return nil, fmt("bad status line %q", line:sub(1, 80))
        end
        status = tonumber(status)
        local headers = {}
        local after, err = read_fields(raw, nxt, headers)
        if not after then return nil, err end
        if status >= 100 and status < 200 and status ~= 101 then
            pos = after   -- interim (100 Continue, 103 Early Hints)
        else
            local body
            local te = headers["transfer-encoding"]
            if method == "HEAD" or status < 200 or status == 204 or status == 304 then
                body = ""
            elseif te and lower(te):match("chunked%s*$") then
                body, err = dechunk(raw, after, headers)
                if not body then return nil, err end
            elseif te then
                body = raw:sub(after)   -- another coding: the body runs to the close
            elseif headers["content-length"] then
                local n = content_length(headers["content-length"])
                if not n then
                    return nil, fmt("bad Content-Length %q", headers["content-length"])
                end
                if #raw - after + 1 < n then
                    return nil, fmt("the body ends early: Content-Length is %d, received %d bytes",
                                    n, #raw - after + 1)
                end
                body = raw:sub(after, after + n - 1)
            else
                body = raw:sub(after)
            end
            return setmetatable({ version = version, status = status, reason = reason,
                                  headers = headers, body = body }, Response)
        end
    end
end

-- request{url=, method="GET", headers={name = value}, body=nil,
-- timeout=30} → response or nil and why.  `url` may be a parse_url()
-- result.  Waits.
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
    local raw = _M.build_request(method, u, headers, opts.body)
    local timeout = opts.timeout or _M.DEFAULT_TIMEOUT
    local started = core.mono()
    local data, terr = async.wait(function(resume)
        local r = core.tcp_request(u.host, u.port, raw, timeout, resume)
        return function() r:cancel() end
    end)
    if not data then return nil, tostring(terr) end
    local resp, perr = _M.parse_response(data, method)
    if not resp then return nil, "bad response: " .. perr end
    resp.url = u.display
    resp.elapsed = core.mono() - started
    return resp
end

-- text(s) → s with every byte that is not part of valid UTF-8 replaced by
-- U+FFFD, as Python's requests does for response.text.
function _M.text(s)
    if utf8.len(s) then return s end
    local out, pos = {}, 1
    while pos <= #s do
        local n, bad = utf8.len(s, pos)
        if n then
            out[#out + 1] = s:sub(pos)
            break
        end
        out[#out + 1] = s:sub(pos, bad - 1)
        out[#out + 1] = "\239\191\189"
        pos = bad + 1
    end
    return concat(out)
end

return _M
