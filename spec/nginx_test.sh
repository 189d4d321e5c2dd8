#!/usr/bin/env bash
# The nginx module in Debian's real nginx: `nginx -t` for good and bad
# values, two workers answering the same API, a trigger that runs, a DAG
# scheduled every second that keeps running across `nginx -s reload`, no
# task process and no run stuck in "running" after `nginx -s quit`, and
# ngx_lua answering in the same nginx.  Then on a real ZooKeeper server
# (spec/zk/harness.sh): `zkflow_zk` makes the scheduling worker a cluster
# member (leader and worker in `zkflow members`) whose worker runs the
# tries, `nginx -s quit` removes the members, and an nginx started while
# ZooKeeper is down answers 503 "connecting" until the server comes up.
#
#   bash spec/nginx_test.sh       (MODULE=path/to/ngx_http_zkflow_module.so)
#
# Runs as root (nginx's master); prints "ok NAME" / "FAIL NAME: why" and
# ends with "N passed, N failed".

set -u
cd "$(dirname "$0")/.." || exit 1
MODULE=${MODULE:-$PWD/${B:-build}/ngx_http_zkflow_module.so}
NGINX=${NGINX:-/usr/sbin/nginx}
LUA_MODS=/usr/lib/nginx/modules
T=$(mktemp -d /tmp/zkflow-nginx.XXXXXX)
export ZKFLOW_ZK_DIR=$T/zk
PASSED=0
FAILED=0

ok() { PASSED=$((PASSED + 1)); echo "ok $1"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }

finish() {
    echo "$PASSED passed, $FAILED failed"
    [ "$FAILED" -eq 0 ]
    exit
}

if [ ! -x "$NGINX" ] || [ ! -f "$MODULE" ]; then
    bad setup "needs $NGINX and $MODULE (apt-get install nginx nginx-dev; make)"
    finish
fi

stop_nginx() {
    local pid
    pid=$(cat "$T/logs/nginx.pid" 2>/dev/null) || return 0
    kill -QUIT "$pid" 2>/dev/null
    for _ in $(seq 100); do
        kill -0 "$pid" 2>/dev/null || return 0
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null
}

# shellcheck disable=SC2317  # called through the trap
cleanup() {
    stop_nginx
    pkill -KILL -f "sleep 4.321" 2>/dev/null
    bash spec/zk/harness.sh stop > /dev/null 2>&1
    rm -rf "$T"
}
trap cleanup EXIT

# A copy: a rebuild must not rewrite the file under the running nginx.
cp "$MODULE" "$T/module.so"
MODULE=$T/module.so

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT/zkflow
mkdir -p "$T/dags" "$T/data" "$T/logs" "$T/tmp" "$T/html"

cat > "$T/dags/hello.lua" <<'EOF'
local flow = require "zkflow"
return flow.dag {
  id = "hello",
  tasks = function(t)
    local a = t.shell { id = "a", cmd = "echo hello" }
    local b = t.lua   { id = "b", run = function() return 42 end }
    local _ = a >> b
  end,
}
EOF
# Starts now: a start date far back would be a long catch-up.
cat > "$T/dags/ticker.lua" <<EOF
local flow = require "zkflow"
return flow.dag {
  id = "ticker",
  schedule = flow.every(1),
  start_date = "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  catchup = false,
  tasks = function(t)
    t.shell { id = "tick", cmd = "true" }
  end,
}
EOF
cat > "$T/dags/slow.lua" <<'EOF'
local flow = require "zkflow"
return flow.dag {
  id = "slow",
  tasks = function(t)
    t.shell { id = "nap", cmd = "sleep 4.321" }
  end,
}
EOF

# conf FILE ZKFLOW-LINES: an nginx.conf with the zkflow lines in http{}
conf() {
    cat > "$1" <<EOF
load_module $LUA_MODS/ndk_http_module.so;
load_module $LUA_MODS/ngx_http_lua_module.so;
load_module $MODULE;
user root;
worker_processes 2;
error_log $T/logs/error.log info;
pid $T/logs/nginx.pid;
events { worker_connections 256; }
http {
    log_format pids '\$pid \$status \$request';
    access_log $T/logs/access.log pids;
    client_body_temp_path $T/tmp;
    $2
    server {
        # reuseport: the kernel spreads connections over both workers
        listen 127.0.0.1:$PORT reuseport;
        root $T/html;
        location / { return 200 "site\n"; }
        location /zkflow/ { zkflow_api; }
        location = /lua { content_by_lua_block { ngx.say("lua ok") } }
    }
}
EOF
}

# conftest NAME ZKFLOW-LINES WANT(ok|fail) [TEXT]: nginx -t on that conf
conftest() {
    conf "$T/t.conf" "$2"
    "$NGINX" -p "$T" -c "$T/t.conf" -t > "$T/t.out" 2>&1
    local rc=$?
    if [ "$3" = ok ] && [ "$rc" -eq 0 ]; then
        ok "$1"
    elif [ "$3" = fail ] && [ "$rc" -ne 0 ] && grep -qF -- "$4" "$T/t.out"; then
        ok "$1"
    else
        bad "$1" "nginx -t exit $rc: $(tr '\n' ' ' < "$T/t.out" | head -c 400)"
    fi
}

GOOD="zkflow_dags $T/dags; zkflow_db $T/data/zkflow.db; zkflow_dag_load_timeout 6s;"

conftest "nginx -t accepts a good conf" "$GOOD" ok
conftest "nginx -t rejects a missing DAG folder" \
    "zkflow_dags $T/nope; zkflow_db $T/data/zkflow.db;" fail \
    "zkflow_dags: no DAG folder \"$T/nope\""
conftest "nginx -t rejects a store in a missing folder" \
    "zkflow_dags $T/dags; zkflow_db $T/nope/zkflow.db;" fail \
    "zkflow_db: no folder \"$T/nope\""
mkdir "$T/ro" && touch "$T/ro/zkflow.db" && chmod 000 "$T/ro/zkflow.db"
if [ "$(id -u)" -ne 0 ]; then
    conftest "nginx -t rejects an unreadable store" \
        "zkflow_dags $T/dags; zkflow_db $T/ro/zkflow.db;" fail \
        "zkflow_db: cannot read and write"
fi
conftest "nginx -t rejects a store that is a folder" \
    "zkflow_dags $T/dags; zkflow_db $T/data;" fail "is not a file"
conftest "nginx -t rejects a malformed ZooKeeper address" \
    "zkflow_dags $T/dags; zkflow_zk localhost;" fail \
    "zkflow_zk: invalid address \"localhost\""
conftest "nginx -t rejects a bad ZooKeeper port" \
    "zkflow_dags $T/dags; zkflow_zk a:2181,b:99999/x;" fail "invalid address"
conftest "nginx -t rejects db and zk together" \
    "zkflow_dags $T/dags; zkflow_db $T/data/zkflow.db; zkflow_zk a:2181;" \
    fail "cannot be used with zkflow_db"
conftest "nginx -t rejects zkflow_zk_auth without USER:PASSWORD" \
    "zkflow_dags $T/dags; zkflow_zk a:2181; zkflow_zk_auth alice;" fail \
    "expects USER:PASSWORD"
conftest "nginx -t wants zkflow_dags with zkflow_api" "" fail \
    "\"zkflow_dags\" is not set"
# A good ZooKeeper address passes without asking ZooKeeper (nothing listens
# on port 1): an ensemble that is down must not keep nginx from starting.
conftest "nginx -t accepts a good ZooKeeper address, ZooKeeper down or not" \
    "zkflow_dags $T/dags; zkflow_zk 127.0.0.1:1,[::1]:1/zkflow;" ok
conftest "nginx -t accepts the DAG load limits" \
    "$GOOD zkflow_dag_load_instructions 300000000; zkflow_dag_load_memory 1024m;" ok
conftest "nginx -t rejects a DAG load memory that is not a size" \
    "$GOOD zkflow_dag_load_memory lots;" fail "invalid value"
conftest "nginx -t rejects a zkflow_log_dir that is a file" \
    "zkflow_dags $T/dags; zkflow_zk 127.0.0.1:1; zkflow_log_dir $T/dags/hello.lua;" \
    fail "zkflow_log_dir: \"$T/dags/hello.lua\" is not a directory"

exports=$(nm -D --defined-only "$MODULE" | awk '{ print $3 }' | sort | tr '\n' ' ')
if [ "$exports" = "ngx_http_zkflow_module ngx_module_names ngx_module_order ngx_modules " ]; then
    ok "the module exports only what nginx looks up"
else
    bad "module exports" "$exports"
fi

# ---- workers that cannot open the store ------------------------------------
#
# nginx's workers run as nobody and the store's folder is root's: nginx -t
# warns, each worker logs the path and its user once, the API answers a
# JSON 503, and making the folder writable heals it without a reload.
if [ "$(id -u)" -eq 0 ] && id nobody > /dev/null 2>&1 && getent group nogroup > /dev/null; then
    chmod 711 "$T"
    mkdir -m 700 "$T/rootonly"
    conf "$T/perm.conf" "zkflow_dags $T/dags; zkflow_db $T/rootonly/zkflow.db;"
    sed -i -e 's/^user root;/user nobody nogroup;/' \
        -e "s|^error_log .*|error_log $T/logs/perm.log info;|" "$T/perm.conf"
    "$NGINX" -p "$T" -c "$T/perm.conf" -t > "$T/t.out" 2>&1
    rc=$?
    if [ "$rc" -eq 0 ] && grep -qF "[warn] zkflow: the workers' user \"nobody\" cannot write in the store's folder \"$T/rootonly\"" "$T/t.out"; then
        ok "nginx -t warns that the workers' user cannot write the store's folder"
    else
        bad "nginx -t warns about the workers' user" "exit $rc: $(tr '\n' ' ' < "$T/t.out" | head -c 400)"
    fi
    "$NGINX" -p "$T" -c "$T/perm.conf" > "$T/start.out" 2>&1
    code=
    for _ in $(seq 50); do
        code=$(curl -s -D "$T/perm.head" -o "$T/perm.body" -w '%{http_code} %{content_type}' "$URL/api/v1/health")
        [ "$code" = "503 application/json" ] && break
        sleep 0.1
    done
    if [ "$code" = "503 application/json" ] && grep -qi '^Retry-After: [0-9]' "$T/perm.head" \
        && python3 -c 'import json, sys; assert "cannot open its store" in json.load(open(sys.argv[1]))["error"]' "$T/perm.body"; then
        ok "a worker that cannot open the store answers 503 with a JSON error and Retry-After"
    else
        bad "JSON 503 while the store cannot be opened" "$code $(tr -d '\r' < "$T/perm.head" | tr '\n' ' ') $(head -c 300 "$T/perm.body")"
    fi
    # three retries at least (0.5 s, 1 s, 2 s) before counting the lines
    sleep 4
    n=$(grep -c "running as user \"nobody\" (uid [0-9]*) cannot start its engine: .*store \"$T/rootonly/zkflow.db\"" "$T/logs/perm.log")
    if [ "$n" -eq 2 ]; then
        ok "each worker logs the store's path and its user once"
    else
        bad "the failure is logged once per worker" "$n lines: $(grep zkflow "$T/logs/perm.log" | tail -5 | tr '\n' ' ' | head -c 600)"
    fi
    chmod 777 "$T/rootonly"
    code=
    for _ in $(seq 200); do
        code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/api/v1/health")
        [ "$code" = 200 ] && break
        sleep 0.1
    done
    if [ "$code" = 200 ] && grep -q "started its engine: the store and the log folder can be opened now" "$T/logs/perm.log"; then
        ok "fixing the folder's permissions heals the workers without a reload"
    else
        bad "the workers heal once the folder is writable" "$code $(grep zkflow "$T/logs/perm.log" | tail -3 | tr '\n' ' ')"
    fi
    stop_nginx
    chmod 700 "$T"
fi

# ---- a running nginx ----------------------------------------------------

conf "$T/nginx.conf" "$GOOD"

start_nginx() {
    "$NGINX" -p "$T" -c "$T/nginx.conf" > "$T/start.out" 2>&1 || return 1
    for _ in $(seq 100); do
        curl -sf "$URL/api/v1/health" > /dev/null 2>&1 && return 0
        sleep 0.1
    done
    return 1
}

# runs_in STATE DAG: how many runs of DAG are in STATE
runs_in() {
    curl -s "$URL/api/v1/dags/$2/runs?limit=1000" | python3 -c '
import json, sys
try:
    runs = json.load(sys.stdin)["dag_runs"]
except Exception:
    runs = []
print(sum(1 for r in runs if r["state"] == sys.argv[1]))' "$1"
}

if start_nginx; then
    ok "nginx starts with the module and 2 workers"
else
    bad "nginx starts" "$(cat "$T/start.out"; tail -5 "$T/logs/error.log")"
    finish
fi

# Workers start their engines on their own time: give the slower one a
# moment before counting (a busy CI machine once counted only one).
for _ in $(seq 50); do
    n=$(grep -c "zkflow: engine started in worker" "$T/logs/error.log")
    [ "$n" -ge 2 ] && break
    sleep 0.1
done
s=$(grep -c "zkflow: engine started in worker .* with the scheduler" "$T/logs/error.log")
if [ "$n" -eq 2 ] && [ "$s" -eq 1 ]; then
    ok "an engine in each worker, the scheduler in one"
else
    bad "one scheduler" "$n engines, $s schedulers"
fi

if [ "$(curl -s "http://127.0.0.1:$PORT/lua")" = "lua ok" ]; then
    ok "ngx_lua answers beside zkflow"
else
    bad "ngx_lua answers" "$(curl -s "http://127.0.0.1:$PORT/lua")"
fi

code=$(curl -s -o /dev/null -w '%{http_code} %{redirect_url}' "$URL")
if [ "$code" = "301 $URL/" ]; then
    ok "the location without its slash redirects to the page"
else
    bad "redirect" "$code"
fi
if curl -s "$URL/" | grep -q '<html'; then
    ok "the page is served under the location"
else
    bad "page" "no html at $URL/"
fi

: > "$T/bodies"
codes_ok=1
for _ in $(seq 60); do
    code=$(curl -s -o "$T/body" -w '%{http_code}' "$URL/api/v1/dags")
    [ "$code" = 200 ] || codes_ok=0
    md5sum < "$T/body" >> "$T/bodies"
done
if [ "$codes_ok" -eq 1 ] && [ "$(sort -u "$T/bodies" | wc -l)" -eq 1 ] &&
        grep -q '"dag_id":"hello"' "$T/body"; then
    ok "60 GET /api/v1/dags: all 200, one body"
else
    bad "60 GET /api/v1/dags" "codes ok=$codes_ok, $(sort -u "$T/bodies" | wc -l) bodies"
fi
workers=$(awk '$4 ~ /api\/v1\/dags$/ { print $1 }' "$T/logs/access.log" | sort -u | wc -l)
if [ "$workers" -eq 2 ]; then
    ok "both workers answered the API"
else
    bad "both workers answered" "$workers worker(s) in the access log"
fi

# A trigger on each worker: reuseport sends some of them to the API-only one.
all_ok=1
for i in 1 2 3 4; do
    code=$(curl -s -o "$T/trig$i" -w '%{http_code}' -X POST \
           -H 'Content-Type: application/json' \
           -d '{"conf":{"n":1}}' "$URL/api/v1/dags/hello/runs")
    [ "$code" = 201 ] || all_ok=0
done
if [ "$all_ok" -eq 1 ]; then ok "POST /api/v1/dags/hello/runs: 201"; else bad "trigger" "$code $(cat "$T/trig4")"; fi
# The module passes the request's headers: a forged cross-site POST (the
# hardening issue's probe 3) is refused here as by the evhttp front door.
code=$(curl -s -o "$T/forged" -w '%{http_code}' -X POST -H 'Content-Type: text/plain' \
       -H 'Origin: http://evil.example' -d '{}' "$URL/api/v1/dags/hello/runs")
if [ "$code" = 403 ]; then ok "nginx: a cross-site text/plain POST is refused (403)"; else bad "nginx: a cross-site POST is refused" "$code $(head -c 200 "$T/forged")"; fi
run_id=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' "$T/trig1" 2>/dev/null)
state=
for _ in $(seq 100); do
    state=$(curl -s "$URL/api/v1/dags/hello/runs/$run_id" |
            python3 -c 'import json,sys; print(json.load(sys.stdin).get("state"))' 2>/dev/null)
    [ "$state" = success ] && [ "$(runs_in success hello)" -eq 4 ] && break
    sleep 0.1
done
if [ "$state" = success ] && [ "$(runs_in success hello)" -eq 4 ]; then
    ok "every triggered run reaches success"
else
    bad "triggered runs succeed" "state $state, $(runs_in success hello) of 4 succeeded"
fi

# ---- /config and the store's owner ------------------------------------------

# The scheduling worker's engine watches /config as zkflow standalone does.
ZKFLOW_CLI=${ZKFLOW:-$PWD/${B:-build}/zkflow}
"$ZKFLOW_CLI" --db "$T/data/zkflow.db" config set pools.ngx 1 > /dev/null 2>&1
applied=0
for _ in $(seq 20); do
    grep -q "config: pool ngx has 1 slots" "$T/logs/error.log" && { applied=1; break; }
    sleep 0.1
done
if [ "$applied" -eq 1 ]; then
    ok "the nginx-hosted scheduler applies /config within two seconds"
else
    bad "nginx applies /config" "$(grep zkflow "$T/logs/error.log" | tail -3)"
fi
"$ZKFLOW_CLI" --db "$T/data/zkflow.db" config unset pools > /dev/null 2>&1
# Its engine owns the store: a zkflow standalone on it does not schedule.
(cd "$T" && timeout -s KILL 20 "$ZKFLOW_CLI" --db "$T/data/zkflow.db" \
    standalone "$T/dags" --no-api) > "$T/sa.out" 2>&1
rc=$?
if [ "$rc" -eq 1 ] && grep -q "is scheduled by process" "$T/sa.out"; then
    ok "a zkflow standalone on the nginx's store is refused"
else
    bad "standalone on the nginx's store" "exit $rc: $(head -c 300 "$T/sa.out")"
fi

# ---- every(1) across reload --------------------------------------------

sleep 3
before=$(runs_in success ticker)
if [ "$before" -ge 2 ]; then
    ok "the every(1) DAG runs ($before successful runs in ~3s)"
else
    bad "every(1) runs" "$before successful runs"
fi
old_pids=$(pgrep -P "$(cat "$T/logs/nginx.pid")" | sort)
"$NGINX" -p "$T" -c "$T/nginx.conf" -s reload
for _ in $(seq 50); do
    new_pids=$(pgrep -P "$(cat "$T/logs/nginx.pid")" | sort)
    [ -n "$new_pids" ] && [ -z "$(comm -12 <(echo "$old_pids") <(echo "$new_pids"))" ] && break
    sleep 0.1
done
mid=$(runs_in success ticker)
sleep 4
after=$(runs_in success ticker)
if [ $((after - mid)) -ge 2 ]; then
    ok "the every(1) DAG keeps running across nginx -s reload ($mid -> $after)"
else
    bad "every(1) across reload" "$mid -> $after successful runs in 4s"
fi
stuck=$(runs_in running ticker)
takeovers=$(grep -c "with the scheduler\|takes over the scheduler" "$T/logs/error.log")
if [ "$takeovers" -ge 2 ]; then
    ok "a new worker took the scheduler over after reload"
else
    bad "takeover" "$takeovers scheduler starts in the log"
fi

# ---- the scheduling worker crashes ----------------------------------------

sched_pid=$(grep -E "with the scheduler|takes over the scheduler" "$T/logs/error.log" |
            tail -n 1 | sed -E 's/.* worker ([0-9]+).*/\1/')
if [ -n "$sched_pid" ] && kill -KILL "$sched_pid" 2>/dev/null; then
    sleep 1.5
    mid=$(runs_in success ticker)
    sleep 4
    after=$(runs_in success ticker)
    if [ $((after - mid)) -ge 2 ]; then
        ok "a crashed scheduling worker is replaced ($mid -> $after)"
    else
        bad "crashed worker replaced" "$mid -> $after successful runs in 4s"
    fi
else
    bad "crashed worker replaced" "no scheduling worker found ($sched_pid)"
fi

# ---- a DAG file whose load hangs (zkflow_dag_load_timeout 6s) -------------

cat > "$T/dags/hang.lua" <<'LUA'
local flow = require "zkflow"
local s = string.rep("a", 3000)
s:find(".-.-.-.-b")
return flow.dag { id = "never", tasks = function(t) t.empty { id = "a" } end }
LUA
mid=$(runs_in success ticker)
slow=0
for _ in $(seq 10); do
    curl -s -m 2 -o /dev/null "$URL/api/v1/health" || slow=$((slow + 1))
    sleep 0.2
done
if [ "$slow" -eq 0 ]; then ok "nginx: the API answers while a DAG file hangs"; else bad "API during a hanging load" "$slow of 10 requests took over 2 s"; fi
named=0
for _ in $(seq 100); do
    if curl -s -m 1 "$URL/api/v1/dags" | grep -q "hang.lua: loading took longer than 6 s"; then named=1; break; fi
    sleep 0.1
done
if [ "$named" -eq 1 ]; then ok "nginx: the file is an import error naming the limit"; else bad "hanging file" "no import error naming the limit"; fi
after=$(runs_in success ticker)
if [ "$after" -gt "$mid" ]; then ok "nginx: the other DAGs keep running ($mid -> $after)"; else bad "other DAGs during a hanging load" "$mid -> $after"; fi
rm -f "$T/dags/hang.lua"

# ---- quit with a task running -------------------------------------------

curl -s -o /dev/null -X POST "$URL/api/v1/dags/slow/runs"
for _ in $(seq 50); do
    pgrep -f "sleep 4.321" > /dev/null && break
    sleep 0.1
done
if pgrep -f "sleep 4.321" > /dev/null; then ok "the slow task is running"; else bad "slow task" "not started"; fi
stop_nginx
sleep 0.2
if pgrep -f "sleep 4.321" > /dev/null; then
    bad "no task process survives nginx -s quit" "$(pgrep -af 'sleep 4.321')"
else
    ok "no task process survives nginx -s quit"
fi

if start_nginx; then ok "nginx starts again on the same store"; else bad "restart" "$(tail -5 "$T/logs/error.log")"; fi
left=1
for _ in $(seq 150); do
    left=$(( $(runs_in running slow) + $(runs_in queued slow) + $(runs_in running ticker) ))
    [ "$left" -eq 0 ] && break
    sleep 0.1
done
if [ "$(runs_in success slow)" -eq 1 ] && [ "$(runs_in running slow)" -eq 0 ]; then
    ok "the interrupted run is resumed to success, none left running"
else
    bad "resume after quit" "slow: $(runs_in running slow) running, $(runs_in success slow) success; ticker stuck $stuck"
fi

# the worker killed above is the one alert expected
alerts=$(grep -E '\[(alert|emerg|crit)\]' "$T/logs/error.log" | grep -v "exited on signal 9")
if [ -n "$alerts" ]; then
    bad "no alerts in the error log" "$(echo "$alerts" | head -3)"
else
    ok "no alerts in the error log"
fi

# ---- zkflow_auth on --------------------------------------------------------
#
# zkflow's own users through the module: the 401 names the scheme
# (WWW-Authenticate, a header the module passes on), HTTP basic and a
# token get in, a viewer may not trigger, and the page's session cookie
# is set for the location's API path.

stop_nginx
printf 'operator pass\n' | "$ZKFLOW_CLI" --db "$T/data/zkflow.db" users add ops --role operator \
    --password-stdin > /dev/null 2>&1
printf 'viewer pass\n' | "$ZKFLOW_CLI" --db "$T/data/zkflow.db" users add vic --role viewer \
    --password-stdin > /dev/null 2>&1
conf "$T/nginx.conf" "$GOOD zkflow_auth on;"
if start_nginx; then
    code=$(curl -s -D "$T/h401" -o /dev/null -w '%{http_code}' "$URL/api/v1/dags")
    if [ "$code" = 401 ] && grep -qi '^WWW-Authenticate: Basic realm="zkflow"' "$T/h401"; then
        ok "zkflow_auth on: 401 with WWW-Authenticate through the module"
    else
        bad "zkflow_auth on: 401 with WWW-Authenticate" "$code $(tr -d '\r' < "$T/h401" | tr '\n' ' ')"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -u "vic:viewer pass" "$URL/api/v1/dags")
    if [ "$code" = 200 ]; then ok "zkflow_auth on: a viewer reads with HTTP basic"; else bad "viewer reads" "$code"; fi
    code=$(curl -s -o "$T/o403" -w '%{http_code}' -u "vic:viewer pass" -X POST \
           -H 'Content-Type: application/json' -d '{}' "$URL/api/v1/dags/hello/runs")
    if [ "$code" = 403 ] && grep -q "needs the role operator" "$T/o403"; then
        ok "zkflow_auth on: a viewer may not trigger (403)"
    else
        bad "viewer may not trigger" "$code $(head -c 200 "$T/o403")"
    fi
    code=$(curl -s -D "$T/hlogin" -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
           -d '{"username":"ops","password":"operator pass"}' "$URL/api/v1/session")
    cookie=$(tr -d '\r' < "$T/hlogin" | sed -n 's/^[Ss]et-[Cc]ookie: \(zkflow_session=[^;]*\);.*/\1/p')
    if [ "$code" = 200 ] && grep -qi '^Set-Cookie: zkflow_session=.*; HttpOnly; SameSite=Strict; Path=/zkflow/api/v1' "$T/hlogin"; then
        ok "zkflow_auth on: the page's login sets its cookie for the location's API"
    else
        bad "session login through nginx" "$code $(tr -d '\r' < "$T/hlogin" | tr '\n' ' ')"
    fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -b "$cookie" -X POST -H 'Content-Type: application/json' \
           -d '{}' "$URL/api/v1/dags/hello/runs")
    if [ "$code" = 201 ]; then ok "zkflow_auth on: the session cookie triggers (201)"; else bad "cookie triggers" "$code"; fi
    code=$(curl -s -o /dev/null -w '%{http_code}' -b "$cookie" -X POST -H 'Content-Type: application/json' \
           -H 'Origin: http://evil.example' -d '{}' "$URL/api/v1/dags/hello/runs")
    if [ "$code" = 403 ]; then ok "zkflow_auth on: a cross-site POST with the cookie is refused (403)"; else bad "cookie CSRF" "$code"; fi
else
    bad "nginx starts with zkflow_auth on" "$(tail -5 "$T/logs/error.log")"
fi

# ---- on ZooKeeper ------------------------------------------------------------

stop_nginx
if ! command -v java > /dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
    bad "zk setup" "no java or /usr/share/java/zookeeper.jar (make deps installs them)"
    finish
fi
if ! ZK=$(bash spec/zk/harness.sh start1); then
    bad "zk setup" "the ZooKeeper server did not start"
    finish
fi
ZKFLOW_BIN=${ZKFLOW:-$PWD/${B:-build}/zkflow}
# A log folder of its own for this nginx; the DAG folder has only hello.
mv "$T/logs" "$T/logs.sqlite"
mkdir -p "$T/logs" "$T/zkdags"
cp "$T/dags/hello.lua" "$T/zkdags/"
conf "$T/nginx.conf" "zkflow_dags $T/zkdags; zkflow_zk $ZK;"

members() { "$ZKFLOW_BIN" --zk "$ZK" members --json 2> /dev/null; }

# trigger_and_wait NAME: POSTs a hello run, waits for success; the run
# object lands in $T/zkrun.
trigger_and_wait() {
    local code rid st=
    code=$(curl -s -o "$T/zktrig" -w '%{http_code}' -X POST "$URL/api/v1/dags/hello/runs")
    rid=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["run_id"])' \
          "$T/zktrig" 2>/dev/null)
    for _ in $(seq 100); do
        curl -s "$URL/api/v1/dags/hello/runs/$rid" > "$T/zkrun"
        st=$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1])).get("state"))' \
             "$T/zkrun" 2>/dev/null)
        [ "$st" = success ] && break
        sleep 0.1
    done
    if [ "$code" = 201 ] && [ "$st" = success ]; then
        ok "$1"
    else
        bad "$1" "POST $code $(head -c 200 "$T/zktrig"), state $st"
    fi
}

if start_nginx; then
    ok "nginx starts with zkflow_zk $ZK"
else
    bad "nginx starts on ZooKeeper" "$(cat "$T/start.out"; tail -5 "$T/logs/error.log")"
    finish
fi
# A worker lists a DAG once its file has come back from the loading
# child (docs/dags.md): wait for that first, then every answer must have it.
for _ in $(seq 100); do
    curl -s "$URL/api/v1/dags" | grep -q '"dag_id":"hello"' && break
    sleep 0.1
done
codes_ok=1
for _ in $(seq 20); do
    code=$(curl -s -o "$T/body" -w '%{http_code}' "$URL/api/v1/dags")
    [ "$code" = 200 ] && grep -q '"dag_id":"hello"' "$T/body" || codes_ok=0
done
if [ "$codes_ok" -eq 1 ] && curl -s "$URL/api/v1/health" | grep -q '"store":"zk"'; then
    ok "the API answers from ZooKeeper (20 GET /api/v1/dags: 200)"
else
    bad "the API on ZooKeeper" "$code $(head -c 200 "$T/body")"
fi

sched_pid=$(grep "with the scheduler" "$T/logs/error.log" | tail -n 1 |
            sed -E 's/.* worker ([0-9]+).*/\1/')
# leader pid, worker pid, count of schedulers, count of workers
for _ in $(seq 50); do
    m=$(members | python3 -c '
import json, sys
m = json.load(sys.stdin)
lead = [s["pid"] for s in m["schedulers"] if s["leader"]]
print(lead[0] if lead else "-", m["workers"][0]["pid"] if m["workers"] else "-",
      len(m["schedulers"]), len(m["workers"]))' 2>/dev/null)
    [ "$m" = "$sched_pid $sched_pid 1 1" ] && break
    sleep 0.1
done
if [ -n "$sched_pid" ] && [ "$m" = "$sched_pid $sched_pid 1 1" ]; then
    ok "zkflow members: the scheduling nginx worker leads and is the one worker"
else
    bad "members on ZooKeeper" "want '$sched_pid $sched_pid 1 1', got '$m': $(members)"
fi

trigger_and_wait "a run triggered through nginx on ZooKeeper succeeds"
wid=$(members | python3 -c 'import json,sys; print(json.load(sys.stdin)["workers"][0]["id"])' 2>/dev/null)
tries=$(python3 -c '
import json, sys
run = json.load(open(sys.argv[1]))
print(" ".join(sorted({t["worker"] or "-" for t in run["tasks"].values()})))' "$T/zkrun" 2>/dev/null)
if [ -n "$wid" ] && [ "$tries" = "$wid" ] &&
        [ "$(ps -o ppid= -p "$sched_pid" | tr -d ' ')" = "$(cat "$T/logs/nginx.pid")" ]; then
    ok "its tries ran in the nginx worker process ($wid)"
else
    bad "tries in the nginx worker" "tries by '$tries', worker '$wid', pid $sched_pid"
fi

# After a reload the new workers' engine leads (the old one stepped down).
"$NGINX" -p "$T" -c "$T/nginx.conf" -s reload
m=
for _ in $(seq 100); do
    m=$(members | python3 -c '
import json, sys
m = json.load(sys.stdin)
lead = [s["pid"] for s in m["schedulers"] if s["leader"]]
print(lead[0] if lead else "-", len(m["schedulers"]), len(m["workers"]))' 2>/dev/null)
    case $m in "$sched_pid "*|-*|"") ;; *" 1 1") break ;; esac
    sleep 0.1
done
new_pid=${m%% *}
if [ -n "$m" ] && [ "$new_pid" != "$sched_pid" ] && [ "${m#* }" = "1 1" ] &&
        [ "$(ps -o ppid= -p "$new_pid" | tr -d ' ')" = "$(cat "$T/logs/nginx.pid")" ]; then
    ok "after nginx -s reload a new worker leads, one scheduler and one worker"
else
    bad "leader after reload" "was $sched_pid, now '$m': $(members)"
fi
trigger_and_wait "a run triggered after the reload succeeds"

stop_nginx
left=
for _ in $(seq 50); do
    left=$(members | python3 -c '
import json, sys
m = json.load(sys.stdin)
print(len(m["schedulers"]) + len(m["workers"]))' 2>/dev/null)
    [ "$left" = 0 ] && break
    sleep 0.1
done
if [ "$left" = 0 ]; then
    ok "nginx -s quit removes its members"
else
    bad "members after quit" "$(members)"
fi

# ZooKeeper down when nginx starts: 503 "connecting", a logged error naming
# the hosts, and work once the server is back (same port, same data).
bash spec/zk/harness.sh kill 1
sleep 0.2
if "$NGINX" -p "$T" -c "$T/nginx.conf" > "$T/start.out" 2>&1; then
    ok "nginx starts while ZooKeeper is down"
else
    bad "nginx starts while ZooKeeper is down" "$(cat "$T/start.out")"
fi
code=
for _ in $(seq 50); do
    code=$(curl -s -o "$T/body" -w '%{http_code}' "$URL/api/v1/health")
    [ "$code" = 503 ] && break
    sleep 0.1
done
if [ "$code" = 503 ] && grep -q '"status":"connecting"' "$T/body" &&
        [ "$(curl -s -o "$T/body2" -w '%{http_code}' "$URL/api/v1/dags")" = 503 ] &&
        grep -qF "connecting to ZooKeeper at $ZK" "$T/body2"; then
    ok "while ZooKeeper is down the API answers 503 \"connecting\""
else
    bad "503 connecting" "$code $(head -c 200 "$T/body") / $(head -c 200 "$T/body2")"
fi
# One attempt waits the session timeout (10 s) before it is logged.
for _ in $(seq 150); do
    grep -q "cannot connect to ZooKeeper at $ZK" "$T/logs/error.log" && break
    sleep 0.1
done
if grep -q "\[error\].*zkflow: cannot connect to ZooKeeper at $ZK: .*trying again in 5 s" \
        "$T/logs/error.log"; then
    ok "the failed connection is logged, naming the hosts"
else
    bad "connection error logged" "$(grep zkflow "$T/logs/error.log" | tail -3)"
fi
bash spec/zk/harness.sh start 1
code=
for _ in $(seq 300); do
    code=$(curl -s -o /dev/null -w '%{http_code}' "$URL/api/v1/health")
    [ "$code" = 200 ] && break
    sleep 0.1
done
if [ "$code" = 200 ]; then
    ok "the API answers once ZooKeeper is up"
else
    bad "API after ZooKeeper started" "health $code; $(grep zkflow "$T/logs/error.log" | tail -3)"
fi
trigger_and_wait "a run triggered after ZooKeeper came up succeeds"
stop_nginx

alerts=$(grep -E '\[(alert|emerg|crit)\]' "$T/logs/error.log")
if [ -n "$alerts" ]; then
    bad "no alerts in the error log on ZooKeeper" "$(echo "$alerts" | head -3)"
else
    ok "no alerts in the error log on ZooKeeper"
fi
bash spec/zk/harness.sh stop

finish
