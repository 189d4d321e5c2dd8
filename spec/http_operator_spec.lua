-- The `http` operator and zkflow.http, against a real HTTP server: a small
-- /usr/bin/python3 program (written out below) on a free port of
-- 127.0.0.1 that answers fixed, byte-exact replies per path.  DAGs run
-- with flow.test; the operator's requests go over real sockets on the loop.
local core = require "zkflow.core"
local flow = require "zkflow"
local http = require "zkflow.http"

local SERVER = [=[
import json, os, socket, socketserver, sys, threading, time

counts = {}
lock = threading.Lock()

def reply(status, reason, body=b"", headers=()):
    head = "HTTP/1.1 %d %s\r\n" % (status, reason)
    for k, v in headers:
        head += "%s: %s\r\n" % (k, v)
    head += "Content-Length: %d\r\n\r\n" % len(body)
    return head.encode() + body

class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        s = self.request
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = s.recv(65536)
            if not chunk:
                return
            data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ", 2)
        headers = {}
        for line in lines[1:]:
            k, _, v = line.partition(":")
            headers[k.strip().lower()] = v.strip()
        n = int(headers.get("content-length", "0"))
        while len(body) < n:
            chunk = s.recv(65536)
            if not chunk:
                break
            body += chunk
        path, _, query = target.partition("?")
        for part in self.route(method, path, query, headers, body[:n], version):
            if isinstance(part, float):
                time.sleep(part)
            else:
                s.sendall(part)

    def route(self, method, path, query, headers, body, version):
        if path == "/ok":
            return [reply(200, "OK", b"hello", [("Content-Type", "text/plain")])]
        if path.startswith("/status/"):
            code = int(path.split("/")[2])
            return [reply(code, "Internal Server Error" if code == 500 else "Status",
                          b"status %d body" % code)]
        if path == "/json":
            return [reply(200, "OK", b'{"a": 1, "items": ["x", "y"], "ok": true}',
                          [("Content-Type", "application/json")])]
        if path == "/chunked":
            return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
                    b"Content-Type: text/plain\r\n\r\n5\r\nhello\r\n", 0.05,
                    b"7;name=value\r\n, world\r\n", 0.05,
                    b"0\r\nX-Trailer: yes\r\n\r\n"]
        if path == "/close":
            return [b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil ", 0.05,
                    b"the close"]
        if path == "/lf":
            return [b"HTTP/1.0 200 OK\nContent-Length: 2\nX-Folded: a\n  b\n\nok"]
        if path == "/continue":
            return [b"HTTP/1.1 100 Continue\r\n\r\n" + reply(201, "Created", b"made")]
        if path == "/repeated":
            return [b"HTTP/1.1 200 OK\r\nSet-Cookie: a=1\r\nSet-Cookie: b=2\r\n"
                    b"Content-Length: 2\r\n\r\nok"]
        if path == "/notmodified":
            return [b"HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n"]
        if path == "/nocontent":
            return [b"HTTP/1.1 204 No Content\r\n\r\n"]
        if path == "/truncated":
            return [b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"]
        if path == "/badchunk":
            return [b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n10\r\nshort"]
        if path == "/garbage":
            return [b"SSH-2.0-OpenSSH_9.2\r\n\r\n"]
        if path == "/empty":
            return []
        if path == "/binary":
            return [reply(200, "OK", b"ab\xffcd")]
        if path == "/big":
            return [reply(200, "OK", b"x" * int(query))]
        if path == "/slow":
            return [float(query or "5"), reply(200, "OK", b"late")]
        if path.startswith("/flaky/"):
            with lock:
                counts[path] = counts.get(path, 0) + 1
                n = counts[path]
            if n == 1:
                return [reply(503, "Service Unavailable", b"try again")]
            return [reply(200, "OK", b"recovered")]
        if path == "/echo":
            out = {"method": method, "path": path, "query": query, "version": version,
                   "headers": headers, "body": body.decode("utf-8", "replace")}
            return [reply(200, "OK", json.dumps(out).encode(),
                          [("Content-Type", "application/json")])]
        return [reply(404, "Not Found", b"no such path")]

class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True

srv = Server(("127.0.0.1", 0), Handler)
print(srv.server_address[1], os.getpid(), flush=True)
# never outlive the spec by much, whatever happens to it
threading.Timer(300, lambda: os._exit(0)).start()
srv.serve_forever()
]=]

local server = {}

local function start_server()
  local script = os.tmpname()
  local f = assert(io.open(script, "wb"))
  f:write(SERVER)
  f:close()
  server.script = script
  server.pipe = assert(io.popen("exec /usr/bin/python3 " .. script, "r"))
  local line = server.pipe:read("l")
  assert(line, "the test HTTP server did not start")
  local port, pid = line:match("^(%d+) (%d+)$")
  server.port, server.pid = assert(tonumber(port)), assert(tonumber(pid))
  server.base = "http://127.0.0.1:" .. server.port
end

local function stop_server()
  if server.pid then os.execute("kill " .. server.pid .. " 2>/dev/null") end
  if server.pipe then pcall(server.pipe.close, server.pipe) end
  if server.script then os.remove(server.script) end
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

-- The log of a task's last try (its error message is there).
local function log_of(res, id)
  return read(res.tasks[id].log)
end

local function run(tasks, opts)
  return flow.test(flow.dag { id = "http_spec", tasks = tasks, params = opts and opts.params },
                   { date = "2026-01-01T00:00:00Z" })
end

describe("http operator", function()
  local B

  setup(function()
    start_server()
    B = server.base
  end)

  teardown(stop_server)

  it("GETs a body as its XCom, with the status in the log", function()
    local res = run(function(t)
      t.http { id = "get", url = B .. "/ok" }
    end)
    assert.equal("success", res.state)
    assert.equal("hello", res.tasks.get.xcom)
    assert.matches("GET " .. B .. "/ok 200 OK (5 bytes", log_of(res, "get"), 1, true)
  end)

  it("decodes a JSON body only with json = true", function()
    local res = run(function(t)
      t.http { id = "raw", url = B .. "/json" }
      t.http { id = "decoded", url = B .. "/json", json = true }
      t.http { id = "not_json", url = B .. "/ok", json = true }
    end)
    assert.equal('{"a": 1, "items": ["x", "y"], "ok": true}', res.tasks.raw.xcom)
    assert.equal(1, res.tasks.decoded.xcom.a)
    assert.same({ "x", "y" }, { res.tasks.decoded.xcom.items[1], res.tasks.decoded.xcom.items[2] })
    assert.is_true(res.tasks.decoded.xcom.ok)
    assert.equal("failed", res.tasks.not_json.state)
    assert.matches("the response is not JSON (json = true)", log_of(res, "not_json"), 1, true)
  end)

  it("reads chunked, close-delimited, bare-LF, interim-100 and 204 replies", function()
    local res = run(function(t)
      t.http { id = "chunked", url = B .. "/chunked",
               response_check = function(r) return r.headers["x-trailer"] == "yes" end }
      t.http { id = "close", url = B .. "/close" }
      t.http { id = "lf", url = B .. "/lf",
               response_filter = function(r) return { r.body, r.headers["x-folded"], r.version } end }
      t.http { id = "continue", method = "POST", url = B .. "/continue",
               response_filter = function(r) return { r.status, r.body } end }
      t.http { id = "nocontent", url = B .. "/nocontent",
               response_filter = function(r) return r.status end }
      t.http { id = "head", method = "HEAD", url = B .. "/ok",
               response_filter = function(r) return { r.body, r.headers["content-length"] } end }
    end)
    assert.equal("success", res.state)
    assert.equal("hello, world", res.tasks.chunked.xcom)
    assert.equal("until the close", res.tasks.close.xcom)
    assert.same({ "ok", "a b", "HTTP/1.0" }, res.tasks.lf.xcom)
    assert.same({ 201, "made" }, res.tasks.continue.xcom)
    assert.equal(204, res.tasks.nocontent.xcom)
    assert.same({ "", "5" }, res.tasks.head.xcom)
  end)

  it("reads a body of several MiB", function()
    local n = 3 * 1024 * 1024 + 7
    local res = run(function(t)
      t.http { id = "big", url = B .. "/big?" .. n,
               response_filter = function(r) return #r.body end }
    end)
    assert.equal("success", res.state)
    assert.equal(n, res.tasks.big.xcom)
  end)

  it("POSTs a table as JSON with Host and Connection: close, templated", function()
    local res = run(function(t)
      t.http { id = "post", method = "POST", url = B .. "/echo?ds={{ ds }}", json = true,
               headers = { ["X-Run"] = "{{ run_id }}", ["X-Num"] = 7 },
               data = { day = "{{ ds }}", n = 3, list = { "a", "{{ params.who }}" } } }
      t.http { id = "put", method = "PUT", url = B .. "/echo", json = true,
               headers = { ["Content-Type"] = "text/plain" }, data = "raw {{ ds }}" }
      t.http { id = "get", url = B .. "/echo?x=1", json = true,
               data = { b = "two words", a = { "1", "2" } } }
      t.http { id = "del", method = "DELETE", url = B .. "/echo", json = true }
      t.http { id = "patch", method = "PATCH", url = B .. "/echo", json = true }
    end, { params = { who = "me" } })
    assert.equal("success", res.state)
    local post = res.tasks.post.xcom
    assert.equal("POST", post.method)
    assert.equal("HTTP/1.1", post.version)
    assert.equal("ds=2026-01-01", post.query)
    assert.equal("127.0.0.1:" .. server.port, post.headers.host)
    assert.equal("close", post.headers.connection)
    assert.equal("application/json", post.headers["content-type"])
    assert.equal(res.run_id, post.headers["x-run"])
    assert.equal("7", post.headers["x-num"])
    local sent = core.json_decode(post.body)
    assert.equal("2026-01-01", sent.day)
    assert.equal(3, sent.n)
    assert.equal("me", sent.list[2])
    local put = res.tasks.put.xcom
    assert.equal("PUT", put.method)
    assert.equal("raw 2026-01-01", put.body)
    assert.equal("text/plain", put.headers["content-type"])
    local get = res.tasks.get.xcom
    assert.equal("GET", get.method)
    assert.equal("x=1&a=1&a=2&b=two%20words", get.query)
    assert.equal("", get.body)
    assert.is_nil(get.headers["content-length"])
    assert.equal("DELETE", res.tasks.del.xcom.method)
    assert.equal("PATCH", res.tasks.patch.xcom.method)
    assert.equal("0", res.tasks.patch.xcom.headers["content-length"])
  end)

  it("fails on a status not accepted, naming the status and the URL, and retries", function()
    local res = run(function(t)
      t.http { id = "e500", url = B .. "/status/500", retries = 1, retry_delay = 0 }
      t.http { id = "flaky", url = B .. "/flaky/one", retries = 1, retry_delay = 0 }
      t.http { id = "nope", url = B .. "/flaky/two" }
    end)
    assert.equal("failed", res.tasks.e500.state)
    assert.equal(2, res.tasks.e500.try_number)
    assert.matches("http: GET " .. B .. "/status/500 answered 500 Internal Server Error "
                   .. "(accepted: 2xx): status 500 body", log_of(res, "e500"), 1, true)
    assert.equal("success", res.tasks.flaky.state)
    assert.equal(2, res.tasks.flaky.try_number)
    assert.equal("recovered", res.tasks.flaky.xcom)
    assert.equal("failed", res.tasks.nope.state)
    assert.matches("answered 503 Service Unavailable", log_of(res, "nope"), 1, true)
  end)

  it("accepts the statuses of ok_status (or expect) instead of 2xx", function()
    local res = run(function(t)
      t.http { id = "want404", url = B .. "/nothing", ok_status = 404 }
      t.http { id = "list", url = B .. "/status/500", expect = { 500, 503 } }
      t.http { id = "not201", url = B .. "/ok", ok_status = { 201 } }
    end)
    assert.equal("success", res.tasks.want404.state)
    assert.equal("no such path", res.tasks.want404.xcom)
    assert.equal("success", res.tasks.list.state)
    assert.equal("failed", res.tasks.not201.state)
    assert.matches("answered 200 OK (accepted: 201): hello", log_of(res, "not201"), 1, true)
  end)

  it("runs response_check and response_filter on the response", function()
    local res = run(function(t)
      t.http { id = "good", url = B .. "/json",
               response_check = function(r) return r:json().ok == true end,
               response_filter = function(r) return r:json().items[2] end }
      t.http { id = "bad", url = B .. "/ok", retries = 1, retry_delay = 0,
               response_check = function(r) return r.body == "bye" end }
      t.http { id = "raises", url = B .. "/ok",
               response_check = function(r) return r:json() end }
    end)
    assert.equal("success", res.tasks.good.state)
    assert.equal("y", res.tasks.good.xcom)
    assert.equal("failed", res.tasks.bad.state)
    assert.equal(2, res.tasks.bad.try_number)
    assert.matches("response_check returned false (status 200): hello", log_of(res, "bad"), 1, true)
    assert.equal("failed", res.tasks.raises.state)
    assert.matches("response_check failed: .*response body is not JSON", log_of(res, "raises"))
  end)

  it("logs the body with log_response, and keeps non-UTF-8 bytes out of the XCom", function()
    local res = run(function(t)
      t.http { id = "logged", url = B .. "/chunked", log_response = true }
      t.http { id = "binary", url = B .. "/binary" }
    end)
    assert.equal("success", res.state)
    assert.matches("] hello, world\n", log_of(res, "logged"), 1, true)
    assert.equal("ab\239\191\189cd", res.tasks.binary.xcom)
  end)

  it("fails clearly on a refused connection and on a timeout, without blocking the loop", function()
    local ticks = 0
    local t0 = core.mono()
    local res = run(function(t)
      t.http { id = "refused", url = "http://127.0.0.1:1/x" }
      t.http { id = "slow", url = B .. "/slow?5", request_timeout = 0.5 }
      t.http { id = "stopped", url = B .. "/slow?5", execution_timeout = 0.5 }
      t.http { id = "patient", url = B .. "/slow?1", request_timeout = 5,
               response_filter = function(r) return { r.body, core.mono() } end }
      t.lua { id = "ticker", run = function()
        for _ = 1, 5 do flow.sleep(0.05); ticks = ticks + 1 end
        return core.mono()
      end }
    end)
    assert.equal("failed", res.tasks.refused.state)
    assert.matches("http: GET http://127.0.0.1:1/x: connect 127.0.0.1:1: Connection refused",
                   log_of(res, "refused"), 1, true)
    assert.equal("failed", res.tasks.slow.state)
    assert.matches("http: GET " .. B .. "/slow?5: read 127.0.0.1:" .. server.port
                   .. ": timed out after 0.5s", log_of(res, "slow"), 1, true)
    assert.equal("failed", res.tasks.stopped.state)
    assert.matches("execution timeout after 0.5s", log_of(res, "stopped"), 1, true)
    assert.equal("success", res.tasks.patient.state)
    assert.equal("late", res.tasks.patient.xcom[1])
    -- the ticker's five ticks went on while the requests waited: it ended
    -- well before the one-second reply came
    assert.equal("success", res.tasks.ticker.state)
    assert.equal(5, ticks)
    assert.is_true(res.tasks.ticker.xcom < res.tasks.patient.xcom[2] - 0.3)
    assert.is_true(core.mono() - t0 < 4)
  end)

  it("fails on replies that are not HTTP or end early", function()
    local res = run(function(t)
      t.http { id = "truncated", url = B .. "/truncated" }
      t.http { id = "badchunk", url = B .. "/badchunk" }
      t.http { id = "garbage", url = B .. "/garbage" }
      t.http { id = "empty", url = B .. "/empty" }
    end)
    assert.equal("failed", res.state)
    assert.matches("bad response: the body ends early: Content-Length is 100, received 5 bytes",
                   log_of(res, "truncated"), 1, true)
    assert.matches("bad response: the chunked body ends early", log_of(res, "badchunk"), 1, true)
    assert.matches('bad response: bad status line "SSH-2.0-OpenSSH_9.2"', log_of(res, "garbage"), 1, true)
    assert.matches("bad response: empty reply", log_of(res, "empty"), 1, true)
  end)

  it("fails bad input without retries, naming the field", function()
    local res = run(function(t)
      t.http { id = "ftp", url = "ftp://example.com/" }
      t.http { id = "tmpl", url = "{{ params.missing }}" }
      t.http { id = "conn", url = B .. "/ok", headers = { Connection = "keep-alive" } }
      t.http { id = "crlf", url = B .. "/ok", headers = { ["X-A"] = "a\r\nX-B: b" } }
      t.http { id = "status", url = B .. "/ok", ok_status = { "200" } }
      t.http { id = "both", url = B .. "/ok", ok_status = 200, expect = 200 }
      t.http { id = "timeout", url = B .. "/ok", request_timeout = 0 }
      t.http { id = "data", method = "POST", url = B .. "/echo", data = { f = print } }
    end)
    local function failed(id, text)
      assert.equal("failed", res.tasks[id].state, id)
      assert.equal(1, res.tasks[id].try_number, id)
      assert.matches(text, log_of(res, id), 1, true)
    end
    failed("ftp", "http: 'url' \"ftp://example.com/\": scheme 'ftp' is not supported "
                  .. "(only http:// and https://)")
    failed("tmpl", "http: 'url' \"\": is empty")
    failed("conn", "http: 'headers' has 'Connection', which cannot be set")
    failed("crlf", "http: 'headers' has 'X-A' with a line break or NUL in its value")
    failed("status", "http: 'ok_status' must be a status code (100-599) or a list of them, got \"200\"")
    failed("both", "http: 'expect' and 'ok_status' are the same option")
    failed("timeout", "http: 'request_timeout' must be a number > 0")
    failed("data", "http: 'data' cannot be sent as JSON")
  end)

  it("refuses a bad method, a missing url and a misspelt option when the DAG loads", function()
    local ok, err = pcall(flow.dag, { id = "bad_http", tasks = function(t)
      t.http { id = "m", url = B, method = "get" }
      t.http { id = "u" }
      t.http { id = "o", url = B, timeout = 5 }
    end })
    assert.is_false(ok)
    err = tostring(err)
    assert.matches("'method' must be one of GET, POST, PUT, DELETE, HEAD, PATCH", err, 1, true)
    assert.matches("missing required option 'url'", err, 1, true)
    assert.matches("unknown option 'timeout'", err, 1, true)
  end)

  it("is usable from a Lua task through zkflow.http", function()
    local res = run(function(t)
      t.lua { id = "direct", run = function()
        local r = assert(http.request { url = B .. "/json", timeout = 5 })
        local _, err = http.request { url = "http://127.0.0.1:1/", timeout = 5 }
        return { r.status, r:json().a, err }
      end }
    end)
    assert.equal("success", res.state)
    assert.same({ 200, 1, "connect 127.0.0.1:1: Connection refused" }, res.tasks.direct.xcom)
  end)
end)

describe("zkflow.http", function()
  local B

  setup(function()
    start_server()
    B = server.base
  end)

  teardown(stop_server)

  it("parses URLs", function()
    local u = assert(http.parse_url("http://user:p%40ss@example.com:8080/a/b?c=d#frag"))
    assert.equal("example.com", u.host)
    assert.equal(8080, u.port)
    assert.equal("/a/b?c=d", u.target)
    assert.equal("example.com:8080", u.host_header)
    assert.equal("http://user:***@example.com:8080/a/b?c=d#frag", u.display)
    u = assert(http.parse_url("HTTP://[::1]?x=1"))
    assert.equal("::1", u.host)
    assert.equal(80, u.port)
    assert.equal("/?x=1", u.target)
    assert.equal("[::1]", u.host_header)
    u = assert(http.parse_url("https://h/"))
    assert.equal("https", u.scheme)
    assert.equal(443, u.port)
    assert.equal("h", u.host_header)
    assert.same({ nil, "must start with http:// or https://" }, { http.parse_url("example.com/x") })
    assert.same({ nil, "has a bad host or port 'h:'" }, { http.parse_url("http://h:/") })
    assert.same({ nil, "port 70000 is not in 1-65535" }, { http.parse_url("http://h:70000/") })
    assert.same({ nil, "contains whitespace or a control character" },
                { http.parse_url("http://h/a b") })
  end)

  it("sends Basic authorization from the URL unless a header gives one", function()
    local u = assert(http.parse_url("http://user:p%40ss@h/x"))
    local lines = http.header_lines(u, assert(http.check_headers({ Accept = "text/plain" })), "{}")
    assert.same({ "User-Agent: zkflow", "Authorization: Basic " .. core.base64_encode("user:p@ss"),
                  "Accept: text/plain", "Content-Type:", "Expect:", "Connection: close" }, lines)
    lines = http.header_lines(u, assert(http.check_headers({ Authorization = "Bearer t", ["X-E"] = "" })))
    assert.same({ "User-Agent: zkflow", "Authorization: Bearer t", "X-E;", "Expect:", "Connection: close" },
                lines)
  end)

  it("joins repeated headers and reads no body after a 304", function()
    local res = run(function(t)
      t.lua { id = "direct", run = function()
        local r = assert(http.request { url = B .. "/repeated" })
        local n = assert(http.request { url = B .. "/notmodified" })
        return { r.headers["set-cookie"], r.body, n.status, n.body }
      end }
    end)
    assert.equal("success", res.state)
    assert.same({ "a=1, b=2", "ok", 304, "" }, res.tasks.direct.xcom)
  end)
end)
