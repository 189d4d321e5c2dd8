#!/usr/bin/env bash
# spec/restart_test.sh - ZooKeeper restarts under load are invisible to the
# runs (issue 10, item 13).  Two parts, each a number of rounds; a round
# triggers two runs of a 200-task DAG and, while their tries are in
# flight:
#
#   single    `standalone --zk` on one server, which is SIGKILLed and
#             started again ~5 s later (well within the session timeout);
#             /api/v1/health says "suspended" while it is down
#   ensemble  `standalone --zk` and a second worker on a 3-node ensemble
#             whose ZooKeeper leader is SIGKILLed (and started again)
#
# Every run must end success with every task succeeded exactly once: try 1
# in the records, and one line in the file the tasks append to.
#
#   spec/restart_test.sh                          2 rounds of each (make test)
#   RESTARTS=20 KILLS=20 spec/restart_test.sh     the full count
#   TASKS=200 sets the tasks per run; KEEP=1 keeps the logs
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
ZKFLOW=${ZKFLOW:-$ROOT/build/zkflow}
RESTARTS=${RESTARTS:-2}
KILLS=${KILLS:-2}
TASKS=${TASKS:-200}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-restart.XXXXXX")
export ZKFLOW_LOG_LEVEL=info
export RESTART_OUT=$TMP/out.txt
mkdir -p "$TMP/dags"
: > "$RESTART_OUT"
# Tries that overlap with the outage: short shell tasks, 20 wide chains.
{
    echo 'local flow = require "zkflow"'
    echo 'return flow.dag { id = "rs_load", start_date = "2026-01-01T00:00:00Z",'
    echo '  max_active_tasks = 64,'
    echo '  tasks = function(t)'
    echo '    local prev = {}'
    echo "    for i = 1, $TASKS do"
    echo '      local x = t.shell { id = "t" .. i, cmd = "sleep 0.02; echo \"$ZKFLOW_RUN_ID $ZKFLOW_TASK_ID $ZKFLOW_TRY_NUMBER\" >> \"$RESTART_OUT\"" }'
    echo '      if i > 20 then local _ = prev[i - 20] >> x end'
    echo '      prev[i] = x'
    echo '    end'
    echo '  end }'
} > "$TMP/dags/load.lua"

passed=0
failed=0
declare -A pid

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

cleanup() {
    for p in "${pid[@]}"; do kill -9 "$p" 2>/dev/null; done
    ZKFLOW_ZK_DIR=$TMP/zk1 bash spec/zk/harness.sh stop > /dev/null 2>&1
    ZKFLOW_ZK_DIR=$TMP/zk3 bash spec/zk/harness.sh stop > /dev/null 2>&1
    if [ -n "${KEEP:-}" ]; then echo "kept $TMP"; return; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

if ! command -v java > /dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
    echo "restart: no java or zookeeper.jar (make deps installs them)"
    echo "0 passed, 1 failed"
    exit 1
fi

free_port() { /usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
wait_for() { # wait_for SECONDS COMMAND...
    local n=$(( $1 * 10 ))
    shift
    for _ in $(seq 1 "$n"); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    return 1
}

# run_verdict HOSTS RUN: "ok", or what is wrong with the run: its state,
# tasks not succeeded at try 1, tasks whose side effect is not there once.
run_verdict() {
    "$ZKFLOW" --zk "$1" runs show rs_load "$2" --json 2>/dev/null | /usr/bin/python3 -c '
import json, sys
run_id, out, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
try:
    r = json.load(sys.stdin)
except ValueError:
    print("no run"); sys.exit()
bad = []
if r["state"] != "success":
    bad.append("state " + r["state"])
if len(r["tasks"]) != n:
    bad.append("%d tasks" % len(r["tasks"]))
for k, t in sorted(r["tasks"].items()):
    if t["state"] != "success" or t["try_number"] != 1:
        bad.append("%s %s try %s" % (k, t["state"], t["try_number"]))
seen = {}
for line in open(out):
    p = line.split()
    if len(p) == 3 and p[0] == run_id:
        seen[p[1]] = seen.get(p[1], 0) + 1
for i in range(1, n + 1):
    if seen.get("t%d" % i, 0) != 1:
        bad.append("t%d ran %d times" % (i, seen.get("t%d" % i, 0)))
print("ok" if not bad else "; ".join(bad[:8]) + (" ..." if len(bad) > 8 else ""))
' "$2" "$RESTART_OUT" "$TASKS"
}

run_ended() { # run_ended HOSTS RUN
    local s
    s=$("$ZKFLOW" --zk "$1" runs show rs_load "$2" --json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])' 2>/dev/null)
    [ "$s" = success ] || [ "$s" = failed ]
}

# A round: two runs, `disrupt` while their tries are in flight, then both
# must end with every task succeeded once.  round WHAT HOSTS DISRUPT...
round() {
    local what=$1 hosts=$2 r1 r2 v1 v2
    shift 2
    r1=$("$ZKFLOW" --zk "$hosts" dags trigger rs_load --dags "$TMP/dags" 2>/dev/null)
    r2=$("$ZKFLOW" --zk "$hosts" dags trigger rs_load --dags "$TMP/dags" 2>/dev/null)
    if [ -z "$r1" ] || [ -z "$r2" ]; then
        not_ok "$what: the runs are triggered"
        return
    fi
    wait_for 20 sh -c "grep -qc '$r2' '$RESTART_OUT'"
    "$@"
    if wait_for 120 run_ended "$hosts" "$r1" && wait_for 60 run_ended "$hosts" "$r2"; then
        v1=$(run_verdict "$hosts" "$r1")
        v2=$(run_verdict "$hosts" "$r2")
        check "$what: both runs succeed, every task once at try 1" test "$v1/$v2" = ok/ok
        [ "$v1/$v2" = ok/ok ] || echo "#   $v1 / $v2"
    else
        not_ok "$what: both runs end within 3 min (they stalled)"
    fi
}

# ---- one server, restarted -------------------------------------------------

export ZKFLOW_ZK_DIR=$TMP/zk1
HOSTS=$(bash spec/zk/harness.sh start1) || {
    echo "restart: the ZooKeeper server did not start"
    echo "0 passed, 1 failed"
    exit 1
}
echo "restart: server at $HOSTS"
API=127.0.0.1:$(free_port)
(cd "$TMP" && exec "$ZKFLOW" --zk "$HOSTS" standalone "$TMP/dags" --api "$API" --id sa) > "$TMP/sa.log" 2>&1 &
pid[sa]=$!
disown "$!"
"$ZKFLOW" --zk "$HOSTS" config set worker_slots 16 > /dev/null
health() { curl -s -m 2 "http://$API/api/v1/health"; }
leads() { health | grep -q '"status":"leader"'; }
check "standalone --zk leads" wait_for 15 leads

restart_server() {
    bash spec/zk/harness.sh kill 1
    local seen=""
    for _ in $(seq 1 10); do
        sleep 0.5
        health | grep -q '"status":"suspended"' && seen=yes
    done
    bash spec/zk/harness.sh start 1 > /dev/null
    [ -n "$seen" ] && SUSPENDED=$((SUSPENDED + 1))
}
SUSPENDED=0
for i in $(seq 1 "$RESTARTS"); do
    round "server restart $i/$RESTARTS" "$HOSTS" restart_server
done
check "health said suspended while the server was down ($SUSPENDED of $RESTARTS)" \
    test "$SUSPENDED" = "$RESTARTS"
check "health says leader again once it is back" wait_for 10 leads
check "the member kept its session: no expiry, no step-down" \
    sh -c "! grep -qE 'session expired|stops leading' '$TMP/sa.log'"
kill -TERM "${pid[sa]}"
wait_for 10 sh -c "! kill -0 ${pid[sa]} 2>/dev/null"
unset "pid[sa]"
bash spec/zk/harness.sh stop > /dev/null 2>&1

# ---- a 3-node ensemble loses its leader ---------------------------------------

export ZKFLOW_ZK_DIR=$TMP/zk3
for _ in 1 2; do
    E=$(bash spec/zk/harness.sh start3 2> "$TMP/zk3.err") && break
    E=
    sed "s/^/#   /" "$TMP/zk3.err"
    bash spec/zk/harness.sh stop > /dev/null 2>&1
done
if [ -z "$E" ]; then
    not_ok "3-node ensemble: the servers did not start"
    echo "$passed passed, $failed failed"
    exit 1
fi
echo "restart: ensemble at $E"
(cd "$TMP" && exec "$ZKFLOW" --zk "$E" standalone "$TMP/dags" --no-api --id esa) > "$TMP/esa.log" 2>&1 &
pid[esa]=$!
disown "$!"
(cd "$TMP" && exec "$ZKFLOW" --zk "$E" worker --dags "$TMP/dags" --id ew --slots 8) > "$TMP/ew.log" 2>&1 &
pid[ew]=$!
disown "$!"
"$ZKFLOW" --zk "$E" config set worker_slots 8 > /dev/null
e_leads() { "$ZKFLOW" --zk "$E" members --json 2>/dev/null | grep -q '"leader":true'; }
check "standalone --zk on the ensemble leads" wait_for 20 e_leads

zk_leader() { # the ensemble member that leads (1-3), or nothing
    local n
    for n in 1 2 3; do
        if bash spec/zk/harness.sh flw "$n" srvr 2>/dev/null | grep -q '^Mode: leader'; then
            echo "$n"
            return
        fi
    done
}
kill_leader() {
    local n
    n=$(zk_leader)
    [ -n "$n" ] || { wait_for 10 sh -c "[ -n \"\$(bash spec/zk/harness.sh flw 1 srvr; bash spec/zk/harness.sh flw 2 srvr; bash spec/zk/harness.sh flw 3 srvr)\" ]"; n=$(zk_leader); }
    [ -n "$n" ] || n=1
    bash spec/zk/harness.sh kill "$n"
    sleep 3
    bash spec/zk/harness.sh start "$n" > /dev/null
}
for i in $(seq 1 "$KILLS"); do
    round "ensemble leader kill $i/$KILLS" "$E" kill_leader
done
check "the members kept their sessions" \
    sh -c "! grep -qE 'session expired|stops leading' '$TMP/esa.log' '$TMP/ew.log'"

kill -TERM "${pid[esa]}" "${pid[ew]}" 2>/dev/null

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
