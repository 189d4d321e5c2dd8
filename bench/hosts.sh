#!/bin/sh
# bench/hosts.sh TMPDIR: benchmark 6, the same engine under each host.
#
# Writes the noop-4000 DAG (40 layers x 100 no-op Lua tasks, task (l, i)
# after (l-1, i), max_active_tasks 100000) as a DAG file, starts each host
# on that folder with a fresh store (build/examples/host_libevent,
# build/examples/host_poll, and nginx with build/ngx_http_zkflow_module.so
# and worker_processes 1), triggers a run, polls `zkflow runs show` every
# 50 ms until it is over, and takes the run's end_date - start_date from
# the stored record.  Best of HOST_REPS (default 3) runs per host; a host
# stays up between its runs.
#
# Prints one human line and `RESULT libevent=S poll=S nginx=S|skipped`.
# Environment: B (build dir), PYTHON (default /usr/bin/python3), NGINX
# (default /usr/sbin/nginx), HOST_REPS.
set -u
tmp=$1
B=${B:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
NGINX=${NGINX:-/usr/sbin/nginx}
REPS=${HOST_REPS:-3}
ZKFLOW=$B/zkflow
MODULE=$B/ngx_http_zkflow_module.so
DAG=bench_hosts_noop

die() { echo "hosts.sh: $*" >&2; exit 1; }

# The pid of the host being measured; the nginx prefix when nginx runs.
hpid=
nginx_prefix=
stop_host() {
    if [ -n "$hpid" ]; then
        kill -TERM "$hpid" 2>/dev/null
        wait "$hpid" 2>/dev/null
        hpid=
    fi
    if [ -n "$nginx_prefix" ]; then
        npid=$(cat "$nginx_prefix/logs/nginx.pid" 2>/dev/null)
        if [ -n "$npid" ]; then
            kill -QUIT "$npid" 2>/dev/null
            i=0
            while kill -0 "$npid" 2>/dev/null && [ "$i" -lt 100 ]; do
                i=$((i + 1))
                sleep 0.1
            done
            kill -KILL "$npid" 2>/dev/null
        fi
        nginx_prefix=
    fi
}
trap stop_host EXIT
trap 'exit 130' INT TERM

mkdir -p "$tmp" || die "cannot make $tmp"

# dag_dir NAME: a fresh folder holding the DAG file; prints its path.
dag_dir() {
    d=$tmp/$1/dags
    mkdir -p "$d" || return 1
    cat >"$d/noop.lua" <<EOF
local flow = require "zkflow"

local function noop() end

return flow.dag {
  id = "$DAG",
  max_active_tasks = 100000,
  tasks = function(t)
    local prev = {}
    for l = 1, 40 do
      local cur = {}
      for i = 1, 100 do
        local up = prev[i]
        cur[i] = t.lua { id = ("t%d_%d"):format(l, i),
                         after = up and { up } or nil, run = noop }
      end
      prev = cur
    end
  end,
}
EOF
    echo "$d"
}

# wait_run DB RUN_ID: polls `zkflow runs show` every 50 ms (30 s at most)
# until the run is over; prints end_date - start_date in seconds, or fails
# when the run did not succeed.
wait_run() {
    "$PYTHON" - "$ZKFLOW" "$DAG" "$2" "$1" <<'EOF'
import datetime, json, subprocess, sys, time
zkflow, dag, run, db = sys.argv[1:]
deadline = time.monotonic() + 30
while time.monotonic() < deadline:
    p = subprocess.run([zkflow, "runs", "show", dag, run, "--db", db, "--json"],
                       capture_output=True, text=True)
    if p.returncode == 0:
        r = json.loads(p.stdout)
        r = r.get("dag_run", r)
        if r.get("state") == "success" and r.get("end_date"):
            t = datetime.datetime.fromisoformat
            print("%.6f" % (t(r["end_date"]) - t(r["start_date"])).total_seconds())
            sys.exit(0)
        if r.get("state") == "failed":
            sys.exit("run %s failed" % run)
    time.sleep(0.05)
sys.exit("run %s not over after 30 s" % run)
EOF
}

# run_id < trigger JSON
run_id() { "$PYTHON" -c 'import json, sys; print(json.load(sys.stdin)["run_id"])'; }

# best_of NAME DB TRIGGER-CMD...: REPS runs; prints the shortest duration.
best_of() {
    name=$1 db=$2
    shift 2
    best=
    n=0
    while [ "$n" -lt "$REPS" ]; do
        n=$((n + 1))
        run=$("$@" 2>>"$tmp/$name.err" | run_id) ||
            { echo "hosts.sh: $name: trigger failed" >&2; return 1; }
        d=$(wait_run "$db" "$run") || { echo "hosts.sh: $name: $run" >&2; return 1; }
        if [ -z "$best" ] || awk "BEGIN { exit !($d < $best) }"; then best=$d; fi
    done
    echo "$best"
}

# process_host NAME BINARY: host_libevent / host_poll; prints the best time.
process_host() {
    dir=$(dag_dir "$1") || return 1
    db=$tmp/$1/zkflow.db
    [ -x "$2" ] || { echo "hosts.sh: $2 missing" >&2; return 1; }
    "$2" "$dir" "$db" 120 >"$tmp/$1.out" 2>&1 &
    hpid=$!
    # Ready once it has loaded the folder and answered its health probe.
    i=0
    while ! grep -q "health" "$tmp/$1.out" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 100 ] || ! kill -0 "$hpid" 2>/dev/null; then
            echo "hosts.sh: $1 did not start: $(tail -3 "$tmp/$1.out")" >&2
            return 1
        fi
        sleep 0.05
    done
    t=$(best_of "$1" "$db" "$ZKFLOW" dags trigger "$DAG" --db "$db" --dags "$dir" --json)
    rc=$?
    stop_host
    [ "$rc" -eq 0 ] && echo "$t"
}

# nginx_host: the module in Debian's nginx, one worker; prints the best time.
nginx_host() {
    dir=$(dag_dir nginx) || return 1
    p=$tmp/nginx
    db=$p/zkflow.db
    mkdir -p "$p/logs" "$p/tmp" "$p/html"
    # A copy: a rebuild must not rewrite the file under the running nginx.
    cp "$MODULE" "$p/module.so" || return 1
    port=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
    url=http://127.0.0.1:$port/zkflow/api/v1
    user=
    [ "$(id -u)" -eq 0 ] && user="user root;"
    cat >"$p/nginx.conf" <<EOF
load_module $p/module.so;
$user
worker_processes 1;
error_log $p/logs/error.log info;
pid $p/logs/nginx.pid;
events { worker_connections 256; }
http {
    access_log off;
    client_body_temp_path $p/tmp;
    zkflow_dags $dir;
    zkflow_db $db;
    server {
        listen 127.0.0.1:$port;
        root $p/html;
        location /zkflow/ { zkflow_api; }
    }
}
EOF
    nginx_prefix=$p
    if ! "$NGINX" -p "$p" -c "$p/nginx.conf" >"$p/start.out" 2>&1; then
        echo "hosts.sh: nginx did not start: $(tail -3 "$p/start.out")" >&2
        return 1
    fi
    i=0
    while ! curl -sf "$url/health" >/dev/null 2>&1; do
        i=$((i + 1))
        if [ "$i" -gt 100 ]; then
            echo "hosts.sh: nginx never answered: $(tail -3 "$p/logs/error.log")" >&2
            return 1
        fi
        sleep 0.05
    done
    t=$(best_of nginx "$db" curl -sf -X POST -H 'Content-Type: application/json' -d '{}' "$url/dags/$DAG/runs")
    rc=$?
    stop_host
    [ "$rc" -eq 0 ] && echo "$t"
}

failed=0
le=$(process_host libevent "$B/examples/host_libevent") || failed=1
po=$(process_host poll "$B/examples/host_poll") || failed=1
if [ ! -f "$MODULE" ] || [ ! -x "$NGINX" ]; then
    ng=skipped
    ng_text="nginx skipped (no nginx module)"
    [ -x "$NGINX" ] || ng_text="nginx skipped (no $NGINX)"
elif ng=$(nginx_host); then
    ng_text=
else
    ng=failed
    ng_text="nginx FAILED"
    failed=1
fi

# fmt_host NAME S: "NAME S s (Rx)" against libevent, or "NAME S s"
fmt_host() {
    case $2 in
    "") printf '%s FAILED' "$1" ;;
    *)
        if [ -n "$le" ] && [ "$1" != libevent ]; then
            awk -v n="$1" -v t="$2" -v b="$le" \
                'BEGIN { printf "%s %.3f s (%.2fx)", n, t, t / b }'
        else
            awk -v n="$1" -v t="$2" 'BEGIN { printf "%s %.3f s", n, t }'
        fi
        ;;
    esac
}
line="hosts noop-4000: $(fmt_host libevent "$le"), $(fmt_host poll "$po"), "
if [ -n "$ng_text" ]; then
    line="$line$ng_text"
else
    line="$line$(fmt_host nginx "$ng")"
fi
echo "$line (aim within 1.1x)"
echo "RESULT libevent=${le:-failed} poll=${po:-failed} nginx=${ng:-failed}"
exit "$failed"
