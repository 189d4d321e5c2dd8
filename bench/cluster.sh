#!/bin/sh
# bench/cluster.sh: benchmark 7, zkflow as a cluster on one ZooKeeper
# server, against the ceiling of its own protocol, in the same run.
#
# What it measures: the tries per second of a whole cluster, `build/zkflow`
# processes as a user starts them: one ZooKeeper server (spec/zk/harness.sh,
# a directory of its own), one scheduler (the leader) and 1, then 2,
# workers with CLUSTER_SLOTS (32) slots each.  The DAG is
# bench/dags/cluster_noop.lua: CLUSTER_N (400) independent no-op Lua
# tasks, so every try goes leader -> queue -> worker -> result -> leader
# and the task itself costs nothing.  /config sets parallelism and the
# default pool high, so only the workers' slots limit the tries in flight.
# The time of one run is the stored run's end_date - start_date (`zkflow
# runs show --json`): the leader's own clock, from when it picked up the
# trigger to when the run ended.  Best of CLUSTER_REPS (3) runs for 1
# worker, then best of CLUSTER_REPS with a second worker started.
#
# The peer, and why: a cluster run is bound by ZooKeeper, whose writes go
# one at a time through its leader, so the fair yardstick is what the same
# server does with the same protocol and no scheduler at all.
# bench/cluster_raw.c (built here, like bench/zk_bench.sh builds its raw
# libzookeeper_mt client) does each try's four transactions of
# lua/zkflow/cluster/ with the asynchronous C API, pipelined (at most
# CLUSTER_WINDOW, 256, tries in flight): queue (set record + create
# sequential queue node), claim (create ephemeral claim + delete queue
# node), report (create result + delete claim), apply (set record + delete
# result).  Its transactions per second divided by 4 is the protocol's
# ceiling in tries per second; zkflow's tries/s is printed as a fraction of
# it.  zkflow does more than the four (the leader's "running" write, the
# worker's reads of the run and its instances, member records, watches)
# and batches the leader's writes into larger transactions, so the fraction
# says how much of the server's capacity the scheduler and workers turn
# into tries.  The peer runs CLUSTER_PEER_N (2000) tries, best of
# CLUSTER_REPS, interleaved with zkflow's runs so that both see the same
# machine.
#
# Prints one human line and
#   RESULT w1=S w2=S n=N slots=SLOTS raw_tx=TX/S ceiling=TRIES/S runs=R
#          znodes0=Z znodes1=Z data0=B data1=B heap0=KB heap1=KB
# (S: best run time in seconds; znodes, data size and the server's heap in
# use before the first run and after the R runs, History that scales 6;
# finished runs go to a SQLite history, history_url in /config).  Every process it started (server,
# scheduler, workers) is stopped on exit, failure and ^C.
# Environment: B, PYTHON (default /usr/bin/python3), CC (default gcc),
# CLUSTER_N, CLUSTER_SLOTS, CLUSTER_REPS, CLUSTER_PEER_N, CLUSTER_WINDOW,
# CLUSTER_TIMEOUT (seconds a run may take, 300), ZKFLOW_LOG_LEVEL (passed
# to the members; their logs are in the temporary directory, kept with
# CLUSTER_KEEP=1).
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
B=${B:-build}
PYTHON=${PYTHON:-/usr/bin/python3}
CC=${CC:-gcc}
N=${CLUSTER_N:-400}
SLOTS=${CLUSTER_SLOTS:-32}
REPS=${CLUSTER_REPS:-3}
PEER_N=${CLUSTER_PEER_N:-2000}
WINDOW=${CLUSTER_WINDOW:-256}
TIMEOUT=${CLUSTER_TIMEOUT:-300}
ZKFLOW=$ROOT/$B/zkflow
case $B in /*) ZKFLOW=$B/zkflow ;; esac
DAG=bench_cluster_noop
export CLUSTER_N="$N"

die() { echo "cluster.sh: $*" >&2; exit 1; }

for v in N SLOTS REPS PEER_N WINDOW TIMEOUT; do
    eval "x=\$$v"
    case $x in
    "" | *[!0-9]* | 0) die "CLUSTER_$v must be a positive integer, got '$x'" ;;
    esac
done

if ! command -v java >/dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
    echo "cluster: skipped (missing java or zookeeper.jar)"
    exit 0
fi
[ -x "$ZKFLOW" ] || die "$ZKFLOW missing: run make first"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-cluster-bench.XXXXXX") || exit 1
ZKFLOW_ZK_DIR=$tmp/zk
export ZKFLOW_ZK_DIR

# The members started here, "NAME:PID ...".
members=
stop_all() {
    for m in $members; do kill -TERM "${m#*:}" 2>/dev/null; done
    for m in $members; do
        p=${m#*:}
        i=0
        while kill -0 "$p" 2>/dev/null && [ "$i" -lt 50 ]; do
            i=$((i + 1))
            sleep 0.1
        done
        kill -KILL "$p" 2>/dev/null
        wait "$p" 2>/dev/null
    done
    members=
    bash spec/zk/harness.sh stop >/dev/null 2>&1
    if [ "${CLUSTER_KEEP:-0}" = 1 ]; then
        echo "cluster.sh: logs kept in $tmp" >&2
    else
        rm -rf "$tmp"
    fi
}
trap stop_all EXIT
trap 'exit 130' INT TERM

mkdir -p "$B/bench" "$tmp/dags" "$tmp/logs" || exit 1
RAW=$B/bench/cluster_raw
if ! $CC -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -o "$RAW" bench/cluster_raw.c \
        -lzookeeper_mt -lpthread; then
    die "cannot build bench/cluster_raw.c"
fi
cp bench/dags/cluster_noop.lua "$tmp/dags/" || exit 1
# A copy (the Lua modules are inside it): a rebuild during the minutes this
# takes must not change or remove the binary under the members.
cp "$ZKFLOW" "$tmp/zkflow" || exit 1
ZKFLOW=$tmp/zkflow

HOSTS=$(bash spec/zk/harness.sh start1) || die "the ZooKeeper server did not start"
Z="$ZKFLOW --zk $HOSTS"

# start NAME ARGS...: a member process, its log in $tmp/NAME.log.
start() {
    name=$1
    shift
    (cd "$tmp" && exec $Z "$@" --id "$name") >"$tmp/$name.log" 2>&1 &
    members="$members $name:$!"
}

# ready WHAT: true once `members --json` shows it ("leader" or a worker id).
ready() {
    $Z members --json 2>/dev/null | "$PYTHON" -c 'import json, sys
m = json.load(sys.stdin)
want = sys.argv[1]
if want == "leader":
    ok = any(s.get("leader") for s in m["schedulers"])
else:
    ok = any(w["id"] == want for w in m["workers"])
sys.exit(0 if ok else 1)' "$1" 2>/dev/null
}
wait_ready() {
    i=0
    until ready "$1"; do
        i=$((i + 1))
        [ "$i" -le 150 ] || die "$1 not up after 15 s: $(tail -n 3 "$tmp"/*.log)"
        sleep 0.1
    done
}

# one_run: triggers a run, waits for its end (a look at the run's node every
# 0.2 s: one read, so the waiting costs the server next to nothing), then
# prints the stored end_date - start_date from `runs show --json`.
one_run() {
    run=$($Z dags trigger "$DAG" --dags "$tmp/dags" 2>>"$tmp/cli.err") ||
        { echo "cluster.sh: trigger failed: $(tail -n 2 "$tmp/cli.err")" >&2; return 1; }
    "$PYTHON" - "$ZKFLOW" "$HOSTS" "$DAG" "$run" "$TIMEOUT" <<'EOF'
import datetime, json, subprocess, sys, time
zkflow, hosts, dag, run, timeout = sys.argv[1:]
z = [zkflow, "--zk", hosts]
deadline = time.monotonic() + float(timeout)
while True:
    p = subprocess.run(z + ["zk", "get", "/zkflow/runs/%s/%s" % (dag, run)],
                       capture_output=True, text=True)
    if p.returncode != 0:
        # gone from ZooKeeper: the run ended and moved to the history
        p = subprocess.run(z + ["runs", "show", dag, run, "--json"],
                           capture_output=True, text=True)
    state = json.loads(p.stdout).get("state") if p.returncode == 0 else None
    if state in ("success", "failed"):
        break
    if time.monotonic() > deadline:
        sys.exit("cluster.sh: run %s not over after %s s (state %s)" % (run, timeout, state))
    time.sleep(0.2)
p = subprocess.run(z + ["runs", "show", dag, run, "--json"], capture_output=True, text=True)
r = json.loads(p.stdout)
if r["state"] != "success":
    bad = sorted(k for k, t in r["tasks"].items() if t["state"] != "success")
    sys.exit("cluster.sh: run %s %s (%d tasks not success, e.g. %s)" % (run, r["state"], len(bad), bad[:3]))
t = datetime.datetime.fromisoformat
print("%.6f" % (t(r["end_date"]) - t(r["start_date"])).total_seconds())
EOF
}

# peer: one run of the raw protocol; prints its transactions per second.
peer() {
    "$RAW" "$HOSTS" "$PEER_N" "$WINDOW" 2>>"$tmp/raw.err" | sed -n 's/.*raw_tx=\([0-9.]*\).*/\1/p'
}

# zkstat: "ZNODES DATA_BYTES HEAP_KB" of the server: znode count and data
# size from its `mntr`, the JVM heap in use after a full GC (jcmd; "-" if
# the JDK has no jcmd).  The cluster row of History that scales, item 6:
# these should stay flat while runs end (finished runs leave ZooKeeper).
zkstat() {
    heap=-
    zpid=$(cat "$ZKFLOW_ZK_DIR/s1/pid" 2>/dev/null)
    if command -v jcmd >/dev/null && [ -n "$zpid" ]; then
        jcmd "$zpid" GC.run >/dev/null 2>&1
        # the used K of every generation (serial: new + tenured; G1: one)
        heap=$(jcmd "$zpid" GC.heap_info 2>/dev/null | awk '
            /total [0-9]+K, used [0-9]+K/ {
                sub(/.*used /, ""); sub(/K.*/, ""); n += $0; seen = 1 }
            END { if (seen) print n }')
        [ -n "$heap" ] || heap=-
    fi
    "$PYTHON" - "$HOSTS" "$heap" <<'PY'
import socket, sys
host, port = sys.argv[1].split(",")[0].split(":")
s = socket.create_connection((host, int(port)), timeout=10)
s.sendall(b"mntr")
data = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        break
    data += chunk
m = dict(line.split("\t", 1) for line in data.decode().splitlines() if "\t" in line)
print(m.get("zk_znode_count", "-"), m.get("zk_approximate_data_size", "-"), sys.argv[2])
PY
}

min() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 < a + 0) ? b : a }'; }
max() { awk -v a="$1" -v b="$2" 'BEGIN { print (a == "" || b + 0 > a + 0) ? b : a }'; }

# phase: REPS zkflow runs, each followed by a peer run; sets $best, $tx.
phase() {
    best=
    k=0
    while [ "$k" -lt "$REPS" ]; do
        k=$((k + 1))
        d=$(one_run) || return 1
        best=$(min "$best" "$d")
        x=$(peer)
        [ -n "$x" ] || { echo "cluster.sh: $RAW failed: $(tail -n 3 "$tmp/raw.err")" >&2; return 1; }
        tx=$(max "$tx" "$x")
    done
}

$Z config set parallelism 100000 >/dev/null || die "config set parallelism failed"
$Z config set pools.default_pool 100000 >/dev/null || die "config set pools.default_pool failed"
# Finished runs move to a history store (docs/history.md; one machine, so a
# SQLite file serves): ZooKeeper keeps the present only.
$Z config set history_url "sqlite:$tmp/history.db" >/dev/null || die "config set history_url failed"

echo "cluster: server $HOSTS, $N no-op Lua tries per run, $SLOTS slots a worker, best of $REPS;" \
     "peer $PEER_N raw tries, $WINDOW in flight"
start s1 scheduler --dags "$tmp/dags" --log-dir "$tmp/logs"
wait_ready leader
start w1 worker --dags "$tmp/dags" --slots "$SLOTS" --log-dir "$tmp/logs"
wait_ready w1

# A warm-up of the server (its JIT), as bench/zk_bench.sh does; zkflow's
# first run is one of the REPS (best of filters it).
"$RAW" "$HOSTS" "$PEER_N" "$WINDOW" >/dev/null 2>>"$tmp/raw.err" ||
    die "$RAW failed: $(tail -n 3 "$tmp/raw.err")"

stat0=$(zkstat)
tx=
phase || die "1 worker: a run failed (CLUSTER_KEEP=1 keeps the logs)"
w1=$best
start w2 worker --dags "$tmp/dags" --slots "$SLOTS" --log-dir "$tmp/logs"
wait_ready w2
phase || die "2 workers: a run failed (CLUSTER_KEEP=1 keeps the logs)"
w2=$best

ceiling=$(awk -v t="$tx" 'BEGIN { printf "%.0f", t / 4 }')
awk -v n="$N" -v a="$w1" -v b="$w2" -v tx="$tx" -v c="$ceiling" -v s="$SLOTS" 'BEGIN {
    r1 = n / a; r2 = n / b
    printf "cluster noop-%d: 1 worker %.3f s = %.0f tries/s (%.1f%% of ceiling), 2 workers %.3f s = %.0f tries/s (%.1f%% of ceiling, %.2fx 1 worker); ceiling %d tries/s (raw C %.0f tx/s, 4 tx a try)\n",
        n, a, r1, 100 * r1 / c, b, r2, 100 * r2 / c, r2 / r1, c, tx
}'
# The last run moves to the history within seconds: wait for the count to
# settle (10 s at most) before reading it.
stat1=$(zkstat)
i=0
while [ "$i" -lt 20 ]; do
    sleep 0.5
    s2=$(zkstat)
    [ "${s2%% *}" = "${stat1%% *}" ] && break
    stat1=$s2
    i=$((i + 1))
done
# shellcheck disable=SC2086  # three fields each
set -- $stat0 $stat1
runs=$((2 * REPS))
echo "cluster zk after $runs runs of $N tries: znodes $1 -> $4 ($(awk -v a="$1" -v b="$4" -v r="$runs" 'BEGIN { printf "%+.1f", (b - a) / r }') a run), data $2 -> $5 bytes, heap in use $3 -> $6 KB"
echo "RESULT w1=$w1 w2=$w2 n=$N slots=$SLOTS raw_tx=$tx ceiling=$ceiling runs=$runs znodes0=$1 znodes1=$4 data0=$2 data1=$5 heap0=$3 heap1=$6"
