-- The `http` operator: one HTTP/1.1 request to `url` (http:// or
-- https://), in the spirit of Airflow's HttpOperator.  The request runs on
-- the loop (zkflow.http over libcurl, core/lua/curl.c): the task yields
-- while it waits.
--
--   url              templated; "http[s]://[user:pass@]host[:port]/path?query"
--                    (user:pass becomes Basic authorization)
--   method           GET (default), POST, PUT, DELETE, HEAD, PATCH
--   data             templated.  With GET and HEAD it goes into the query
--                    string (a table as key=value pairs, a string as is),
--                    as Airflow does; with the other methods it is the
--                    body: a string as is, a table as JSON with
--                    Content-Type: application/json
--   headers          templated; a table name = value.  Host, User-Agent,
--                    Accept, Authorization and Content-Type replace
--                    zkflow's; Connection, Content-Length and
--                    Transfer-Encoding are zkflow's own (an error)
--   request_timeout  seconds for the whole exchange (default 30).  Not
--                    `timeout`: that name is the sensors' common option
--   connect_timeout  seconds to connect, TLS handshake included (default:
--                    request_timeout)
--   ca_file          templated; a PEM file of the CA certificates that
--                    https:// trusts instead of the system's (a private CA,
--                    a self-signed server).  Certificates are always
--                    verified
--   follow_redirects follow 3xx redirects (default true; a POST answered
--                    301/302/303 goes on as a GET, as in requests)
--   max_redirects    at most this many (default 30); one more fails the try
--   ok_status        accepted statuses: an integer or a list of them
--                    (`expect` is the same option); default any 2xx
--   response_check   function(response) → truthy; falsy fails the try
--   response_filter  function(response) → the XCom in place of the body
--   json             true: the XCom is the body decoded as JSON (a body
--                    that is not JSON fails the try), whatever the
--                    response's Content-Type says
--   log_response     true: the body goes to the task's log
--
-- XCom: the response body as a string (bytes that are not UTF-8 replaced
-- by U+FFFD, as Airflow's response.text; an XCom is stored as JSON), the
-- decoded JSON with `json = true`, or what response_filter returns.  The
-- XCom's shape never depends on what the server sends.
--
-- `response` (for response_check and response_filter): {status=, reason=,
-- version=, headers = {lower-case name = value}, body = raw bytes, url=
-- (the last URL after redirects), redirects = N, elapsed = seconds}, and
-- response:json() decodes the body.
--
-- Failures: a status not accepted ("http: GET http://h/p answered 500
-- Internal Server Error (accepted: 2xx): <start of the body>"), a refused
-- connection ("http: GET http://h/p: connect h:80: Connection refused"),
-- a timeout ("...: read h:80: timed out after 30s"), a certificate that
-- does not verify ("...: tls h:443: SSL certificate problem: ..."), too
-- many redirects, a reply that is not HTTP or ends early ("...: bad
-- response: ..."), a falsy response_check, a body that is not JSON with
-- json = true: ordinary failures, so `retries` apply.  Bad input (a url
-- that is not http:// or https://, a reserved or malformed header, a bad
-- ok_status, request_timeout or connect_timeout, data that cannot be
-- JSON) fails at once without retries, naming the field.
--
-- Proxies come from the environment as for curl (http_proxy, https_proxy,
-- no_proxy); host names resolve off the loop (libcurl's threaded
-- resolver); the reply is at most 16 MiB.
local core = require "zkflow.core"
local http = require "zkflow.http"
local zkops = require "zkflow.zk.ops"

local type, tostring, ipairs, pairs, error, pcall, math_type =
      type, tostring, ipairs, pairs, error, pcall, math.type
local fmt, concat = string.format, table.concat

-- The try fails without retries: the input is wrong.
local function bad(field, msg)
    zkops.fail(fmt("http: '%s' %s", field, msg))
end

local function show(v)
    return type(v) == "string" and fmt("%q", v) or tostring(v)
end

-- ok_status / expect → a set of statuses and its text, or nil for 2xx.
local function accepted(t)
    local v, field = t.ok_status, "ok_status"
    if t.expect ~= nil then
        if v ~= nil then bad("expect", "and 'ok_status' are the same option: give one") end
        v, field = t.expect, "expect"
    end
    if v == nil then return nil, "2xx" end
    if type(v) ~= "table" then v = { v } end
    local set, list = {}, {}
    for i, s in pairs(v) do
        if math_type(i) ~= "integer" or not (math_type(s) == "integer" or
                (type(s) == "number" and s == math.floor(s))) or s < 100 or s > 599 then
            bad(field, "must be a status code (100-599) or a list of them, got "
                .. show(s))
        end
        set[math.tointeger(s)] = true
    end
    for _, s in ipairs(v) do list[#list + 1] = fmt("%d", s) end
    if #list == 0 then bad(field, "is an empty list") end
    return set, concat(list, ", ")
end

-- The request body, and the URL with GET/HEAD data in its query.
local function body_of(t, method, u, headers)
    local data = t.data
    if data == nil then return nil end
    if method == "GET" or method == "HEAD" then
        local q = type(data) == "table" and http.query_string(data) or data
        if q ~= "" then
            u.target = u.target .. (u.target:find("?", 1, true) and "&" or "?") .. q
        end
        return nil
    end
    if type(data) == "string" then return data end
    local ok, json = pcall(core.json_encode, data)
    if not ok then bad("data", "cannot be sent as JSON: " .. tostring(json)) end
    local has_type = false
    for k in pairs(headers) do
        if type(k) == "string" and k:lower() == "content-type" then has_type = true end
    end
    if not has_type then headers["Content-Type"] = "application/json" end
    return json
end

-- The first 200 characters of a body, on one line, for error messages.
local function excerpt(body)
    if body == "" then return "" end
    local s = http.text(body:sub(1, 200)):gsub("%s+", " ")
    return ": " .. s .. (#body > 200 and " ..." or "")
end

local LOG_MAX = 65536

local function execute(task, ctx, rt)
    local t = zkops.rendered(task, ctx)
    local log = rt and rt.log or function() end
    local method = t.method or "GET"
    local u, uerr = http.parse_url(t.url)
    if not u then bad("url", fmt("%s: %s", show(t.url), uerr)) end
    local headers = {}
    if t.headers ~= nil then
        for k, v in pairs(t.headers) do headers[k] = v end
    end
    local okset, oktext = accepted(t)
    local timeout = t.request_timeout
    if type(timeout) ~= "number" or timeout <= 0 then
        bad("request_timeout", "must be a number > 0 (seconds), got " .. tostring(timeout))
    end
    local ctimeout = t.connect_timeout
    if ctimeout ~= nil and (type(ctimeout) ~= "number" or ctimeout <= 0) then
        bad("connect_timeout", "must be a number > 0 (seconds), got " .. tostring(ctimeout))
    end
    local maxr = t.max_redirects
    if type(maxr) ~= "number" or maxr < 0 or maxr ~= math.floor(maxr) then
        bad("max_redirects", "must be an integer >= 0, got " .. show(t.max_redirects))
    end
    if t.ca_file ~= nil and (type(t.ca_file) ~= "string" or t.ca_file == "") then
        bad("ca_file", "must be the path of a PEM file, got " .. show(t.ca_file))
    end
    local body = body_of(t, method, u, headers)
    local _, herr = http.check_headers(headers)
    if herr then bad("headers", "has " .. herr) end

    local what = method .. " " .. u.display
    log(what .. (body and fmt(" (%d bytes)", #body) or ""))
    local resp, err = http.request { url = u, method = method, headers = headers,
                                     body = body, timeout = timeout,
                                     connect_timeout = ctimeout, ca_file = t.ca_file,
                                     follow_redirects = t.follow_redirects,
                                     max_redirects = t.max_redirects }
    if not resp then error(fmt("http: %s: %s", what, err), 0) end
    log(fmt("%s %d %s (%d bytes in %.3fs%s)", what, resp.status, resp.reason,
            #resp.body, resp.elapsed,
            resp.redirects > 0 and fmt(", %d redirects to %s", resp.redirects, resp.url) or ""))
    if t.log_response then
        local b = http.text(resp.body:sub(1, LOG_MAX))
        log(b .. (#resp.body > LOG_MAX
            and fmt("\n... (%d more bytes)", #resp.body - LOG_MAX) or ""))
    end
    local ok
    if okset then
        ok = okset[resp.status] == true
    else
        ok = resp.status >= 200 and resp.status < 300
    end
    if not ok then
        error(fmt("http: %s answered %d %s (accepted: %s)%s", what, resp.status,
                  resp.reason, oktext, excerpt(resp.body)), 0)
    end
    if t.response_check then
        local cok, res = pcall(t.response_check, resp)
        if not cok then
            error(fmt("http: %s: response_check failed: %s", what, tostring(res)), 0)
        end
        if not res then
            error(fmt("http: %s: response_check returned %s (status %d)%s", what,
                      tostring(res), resp.status, excerpt(resp.body)), 0)
        end
    end
    if t.response_filter then
        local fok, v = pcall(t.response_filter, resp)
        if not fok then
            error(fmt("http: %s: response_filter failed: %s", what, tostring(v)), 0)
        end
        return v
    end
    if t.json then
        local v, jerr = core.json_decode(resp.body)
        if v == nil then
            error(fmt("http: %s: the response is not JSON (json = true): %s%s", what,
                      tostring(jerr), excerpt(resp.body)), 0)
        end
        return v
    end
    return http.text(resp.body)
end

return {
    name      = "http",
    fields    = {
        url             = "string",
        method          = { type = "string", default = "GET", one_of = http.METHODS },
        data            = "string|table?",
        headers         = "table?",
        request_timeout = { type = "number", default = http.DEFAULT_TIMEOUT },
        connect_timeout = "number?",
        ca_file         = "string?",
        follow_redirects = { type = "boolean", default = true },
        max_redirects   = { type = "integer", default = http.DEFAULT_MAX_REDIRECTS },
        ok_status       = "integer|table?",
        expect          = "integer|table?",
        response_check  = "function?",
        response_filter = "function?",
        json            = { type = "boolean", default = false },
        log_response    = { type = "boolean", default = false },
    },
    templated = { "url", "data", "headers", "ca_file" },
    sensor    = false,
    execute   = execute,
}
