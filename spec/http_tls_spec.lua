-- The `http` operator over TLS, against Debian's nginx started here with a
-- self-signed certificate made here by `openssl req -x509` (for 127.0.0.1
-- and localhost): GET and POST, verification that fails without the CA
-- and passes with ca_file, redirects, timeouts, a refused connection, a
-- proxy from the environment, and the loop going on during a slow reply.
local core = require "zkflow.core"
local flow = require "zkflow"
local http = require "zkflow.http"

local NGINX = os.getenv("NGINX") or "/usr/sbin/nginx"

local function sh(cmd)
  local ok = os.execute(cmd)
  assert(ok, "failed: " .. cmd)
end

local function read(path)
  local f = assert(io.open(path, "rb"))
  local s = f:read("a")
  f:close()
  return s
end

local function write(path, s)
  local f = assert(io.open(path, "wb"))
  f:write(s)
  f:close()
end

local function free_port()
  local p = assert(io.popen("python3 -c 'import socket; s = socket.socket(); "
    .. "s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])'"))
  local port = tonumber(p:read("l"))
  p:close()
  return assert(port)
end

-- 60 bytes and the headers sent at 80 bytes a second: about three seconds.
local SLOW_BODY = string.rep("slow body ", 6)

local srv = {}

local function start_nginx()
  srv.dir = assert(io.popen("mktemp -d /tmp/zkflow-tls.XXXXXX")):read("l")
  srv.tls, srv.plain, srv.closed = free_port(), free_port(), free_port()
  local d = srv.dir
  sh("mkdir -p " .. d .. "/tmp")
  sh("openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=localhost"
     .. " -addext subjectAltName=IP:127.0.0.1,DNS:localhost"
     .. " -keyout " .. d .. "/key.pem -out " .. d .. "/cert.pem > " .. d .. "/openssl.log 2>&1")
  local temp = ""
  for _, k in ipairs { "client_body", "proxy", "fastcgi", "uwsgi", "scgi" } do
    temp = temp .. ("    %s_temp_path %s/tmp/%s;\n"):format(k, d, k)
  end
  write(d .. "/nginx.conf", ([[
worker_processes 1;
error_log %s/error.log info;
pid %s/nginx.pid;
events { worker_connections 64; }
http {
    access_log off;
%s
    server {
        listen 127.0.0.1:%d ssl;
        ssl_certificate %s/cert.pem;
        ssl_certificate_key %s/key.pem;
        location = /ok { return 200 "hello tls"; }
        location = /old { return 302 https://127.0.0.1:%d/ok; }
        location = /loop { return 302 https://127.0.0.1:%d/loop; }
        location = /slow { limit_rate 80; return 200 "%s"; }
        location = /echo {
            proxy_pass http://127.0.0.1:%d/echo;
            proxy_set_header X-Method $request_method;
            proxy_set_header X-Body $request_body;
        }
    }
    server {
        listen 127.0.0.1:%d;
        location = /echo { return 200 "$http_x_method $http_x_body"; }
        # as a forward proxy: the absolute URI's host is $host
        location / { return 200 "via proxy $host$request_uri"; }
    }
}
]]):format(d, d, temp, srv.tls, d, d, srv.tls, srv.tls, SLOW_BODY, srv.plain, srv.plain))
  sh(NGINX .. " -p " .. d .. " -c " .. d .. "/nginx.conf -e " .. d
     .. "/error.log > " .. d .. "/start.log 2>&1")
  -- ready when the TLS port answers
  for _ = 1, 100 do
    if os.execute("python3 -c 'import socket; socket.create_connection((\"127.0.0.1\", "
                  .. srv.tls .. "), 0.2)' 2>/dev/null") then
      srv.base = "https://127.0.0.1:" .. srv.tls
      srv.ca = d .. "/cert.pem"
      return
    end
    os.execute("sleep 0.1")
  end
  error("nginx did not start: " .. read(d .. "/start.log") .. read(d .. "/error.log"))
end

local function stop_nginx()
  if srv.dir then
    os.execute("kill -QUIT $(cat " .. srv.dir .. "/nginx.pid 2>/dev/null) 2>/dev/null; sleep 0.2; rm -rf "
               .. srv.dir)
  end
end

local function log_of(res, id)
  return read(res.tasks[id].log)
end

local function run(tasks)
  return flow.test(flow.dag { id = "tls_spec", tasks = tasks }, { date = "2026-01-01T00:00:00Z" })
end

describe("http operator over TLS", function()
  local B, CA

  setup(function()
    start_nginx()
    B, CA = srv.base, srv.ca
  end)

  teardown(stop_nginx)

  it("resolves host names off the loop (libcurl's threaded resolver)", function()
    local v = core.curl_version()
    assert.is_true(v.asynchdns)
    assert.equal("threaded", v.resolver)
    assert.matches("OpenSSL", v.ssl)
  end)

  it("GETs and POSTs over https:// with the server's CA as ca_file", function()
    local res = run(function(t)
      t.http { id = "get", url = B .. "/ok", ca_file = CA }
      t.http { id = "post", method = "POST", url = B .. "/echo", ca_file = CA,
               data = { day = "{{ ds }}" } }
      t.http { id = "name", url = "https://localhost:" .. srv.tls .. "/ok", ca_file = CA }
    end)
    assert.equal("success", res.state)
    assert.equal("hello tls", res.tasks.get.xcom)
    assert.equal('POST {"day":"2026-01-01"}', res.tasks.post.xcom)
    assert.equal("hello tls", res.tasks.name.xcom)
  end)

  it("fails verification without the CA, naming the certificate problem", function()
    local res = run(function(t)
      t.http { id = "nocafile", url = B .. "/ok" }
      t.http { id = "wrongca", url = B .. "/ok", ca_file = "/etc/ssl/certs/ca-certificates.crt" }
    end)
    assert.equal("failed", res.tasks.nocafile.state)
    assert.matches("http: GET " .. B .. "/ok: tls 127.0.0.1:" .. srv.tls
                   .. ": SSL certificate problem: self-signed certificate",
                   log_of(res, "nocafile"), 1, true)
    assert.equal("failed", res.tasks.wrongca.state)
    assert.matches("SSL certificate problem", log_of(res, "wrongca"), 1, true)
  end)

  it("follows a redirect, up to max_redirects, unless told not to", function()
    local res = run(function(t)
      t.http { id = "follow", url = B .. "/old", ca_file = CA,
               response_filter = function(r) return { r.body, r.url, r.redirects } end }
      t.http { id = "stay", url = B .. "/old", ca_file = CA, follow_redirects = false, ok_status = 302,
               response_filter = function(r) return r.headers.location end }
      t.http { id = "loop", url = B .. "/loop", ca_file = CA, max_redirects = 3 }
    end)
    assert.same({ "hello tls", B .. "/ok", 1 }, res.tasks.follow.xcom)
    assert.matches("GET " .. B .. "/old 200 OK (9 bytes in ", log_of(res, "follow"), 1, true)
    assert.matches("s, 1 redirects to " .. B .. "/ok)", log_of(res, "follow"), 1, true)
    assert.equal(B .. "/ok", res.tasks.stay.xcom)
    assert.equal("failed", res.tasks.loop.state)
    assert.matches("more than 3 redirects (max_redirects)", log_of(res, "loop"), 1, true)
  end)

  it("times out, fails a refused connection, and leaves the loop free meanwhile", function()
    local ticks = 0
    -- a listener that accepts and never answers: the TLS handshake hangs
    local silent = free_port()
    local hold = assert(io.popen("exec python3 -c 'import os, socket, time; s = socket.socket(); "
      .. "s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); "
      .. "s.bind((\"127.0.0.1\", " .. silent .. ")); s.listen(5); print(os.getpid(), flush=True); time.sleep(20)'"))
    local hold_pid = assert(tonumber(hold:read("l")))
    local res = run(function(t)
      t.http { id = "refused", url = "https://127.0.0.1:" .. srv.closed .. "/x", ca_file = CA }
      t.http { id = "slow", url = B .. "/slow", ca_file = CA, request_timeout = 0.5 }
      t.http { id = "handshake", url = "https://127.0.0.1:" .. silent .. "/", ca_file = CA,
               request_timeout = 5, connect_timeout = 0.5 }
      t.http { id = "handshake_total", url = "https://127.0.0.1:" .. silent .. "/", ca_file = CA,
               request_timeout = 0.5 }
      t.http { id = "patient", url = B .. "/slow", ca_file = CA, request_timeout = 10,
               response_filter = function(r) return { r.body, core.mono() } end }
      t.lua { id = "ticker", run = function()
        for _ = 1, 5 do flow.sleep(0.05); ticks = ticks + 1 end
        return core.mono()
      end }
    end)
    os.execute("kill " .. hold_pid)
    hold:close()
    assert.equal("failed", res.tasks.refused.state)
    assert.matches("http: GET https://127.0.0.1:" .. srv.closed .. "/x: connect 127.0.0.1:"
                   .. srv.closed .. ": Connection refused", log_of(res, "refused"), 1, true)
    assert.equal("failed", res.tasks.slow.state)
    assert.matches("read 127.0.0.1:" .. srv.tls .. ": timed out after 0.5s", log_of(res, "slow"), 1, true)
    assert.equal("failed", res.tasks.handshake.state)
    assert.matches("tls handshake 127.0.0.1:" .. silent .. ": timed out after 0.5s",
                   log_of(res, "handshake"), 1, true)
    assert.matches("tls handshake 127.0.0.1:" .. silent .. ": timed out after 0.5s",
                   log_of(res, "handshake_total"), 1, true)
    assert.equal("success", res.tasks.patient.state)
    assert.equal(SLOW_BODY, res.tasks.patient.xcom[1])
    -- the ticker's five ticks went on while the slow reply trickled in
    assert.equal(5, ticks)
    assert.is_true(res.tasks.ticker.xcom < res.tasks.patient.xcom[2] - 1)
  end)

  it("goes through the proxy that http_proxy names", function()
    local script = srv.dir .. "/proxy.lua"
    write(script, [[
local http = require "zkflow.http"
local r, err = http.request { url = "http://example.invalid/via?x=1", timeout = 5 }
print(r and r.body or err)
]])
    local zkflow = (os.getenv("B") or "build") .. "/zkflow"
    local p = assert(io.popen("env http_proxy=http://127.0.0.1:" .. srv.plain .. " no_proxy= "
                              .. zkflow .. " lua " .. script .. " 2>&1"))
    local out = p:read("a")
    p:close()
    assert.equal("via proxy example.invalid/via?x=1\n", out)
  end)

  it("is usable from a Lua task through zkflow.http", function()
    local res = run(function(t)
      t.lua { id = "direct", run = function()
        local r = assert(http.request { url = B .. "/ok", ca_file = CA, timeout = 5 })
        local _, err = http.request { url = B .. "/ok", timeout = 5 }
        return { r.status, r.body, r.version, err }
      end }
    end)
    assert.same({ 200, "hello tls", "HTTP/1.1",
                  "tls 127.0.0.1:" .. srv.tls .. ": SSL certificate problem: self-signed certificate" },
                res.tasks.direct.xcom)
  end)
end)
