#!/usr/bin/env bash
# spec/cluster_test.sh - zkflow as a cluster on a real ZooKeeper server:
# two schedulers (one elected leader, one standby) and two workers, all
# `build/zkflow` processes started with --zk.  Covers: membership and
# leadership in `zkflow members`; runs whose tries go through the queue to
# the workers, with XComs passed between workers; each try run once;
# retries; /config applied live (a pool's size holds across workers); a
# worker killed with SIGKILL (its try runs again elsewhere); the leader
# killed with SIGKILL and frozen past its session (the standby takes over
# without re-running finished tasks, and there is one leader after the old
# one comes back); bad input (a malformed queue node, a DAG a worker does
# not have, `worker` without --zk).
#
#   spec/cluster_test.sh        (after `make`; prints "N passed, N failed")
#
# ZKFLOW_TEST_HISTORY=URL (spec/pg_test.sh: a database of its PostgreSQL
# server) makes URL the history store of the cluster, named in /config
# before any member starts; finished runs then leave ZooKeeper for it, and
# a few more checks read them back from there.
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
ZKFLOW=${ZKFLOW:-$ROOT/build/zkflow}
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-cluster.XXXXXX")
export ZKFLOW_ZK_DIR=${ZKFLOW_ZK_DIR:-$TMP/zk}
export CLUSTER_OUT=$TMP/out
export ZKFLOW_LOG_LEVEL=info
mkdir -p "$CLUSTER_OUT" "$TMP/wdags" "$TMP/sdags"
cp spec/fixtures/cluster/*.lua "$TMP/wdags/"
cp spec/fixtures/cluster/*.lua "$TMP/sdags/"
# Examples whose runs the cluster must end exactly as `dags test` does.
SAME_AS_TEST="tutorial trigger_rules file_sensor pools_priority"
for f in cluster_members $SAME_AS_TEST; do
    cp "examples/dags/$f.lua" "$TMP/wdags/"
    cp "examples/dags/$f.lua" "$TMP/sdags/"
done
# Triggered by hand only: a scheduled run at a cron boundary would run
# beside the checks that count claims and running tries.
sed -i 's/^\(  schedule *= *\).*/\1nil,/' "$TMP"/wdags/*.lua "$TMP"/sdags/*.lua
# A DAG only the schedulers have: its tries fail on the workers.
cat > "$TMP/sdags/only_sched.lua" <<'EOF'
local flow = require "zkflow"
return flow.dag { id = "cl_only_sched", start_date = "2026-01-01T00:00:00Z",
  tasks = function(t) t.shell { id = "x", cmd = "true" } end }
EOF

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
    for p in "${pid[@]}"; do kill -CONT "$p" 2>/dev/null; kill -9 "$p" 2>/dev/null; done
    # Shell tasks of killed workers live on in their own process groups.
    pkill -9 -f "$CLUSTER_OUT" 2>/dev/null
    bash spec/zk/harness.sh stop > /dev/null 2>&1
    ZKFLOW_ZK_DIR=$TMP/zk3 bash spec/zk/harness.sh stop > /dev/null 2>&1
    if [ -n "${KEEP:-}" ]; then echo "kept $TMP"; return; fi
    rm -rf "$TMP"
}
trap cleanup EXIT

if ! command -v java > /dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
    echo "cluster: no java or zookeeper.jar (make deps installs them)"
    echo "0 passed, 1 failed"
    exit 1
fi
HOSTS=$(bash spec/zk/harness.sh start1) || {
    echo "cluster: the ZooKeeper server did not start"
    echo "0 passed, 1 failed"
    exit 1
}
echo "cluster: server at $HOSTS"
Z=("$ZKFLOW" --zk "$HOSTS" --session-timeout 2)
HISTORY=${ZKFLOW_TEST_HISTORY:-}
if [ -n "$HISTORY" ]; then
    echo "cluster: history at $HISTORY"
    "${Z[@]}" config set history_url "$HISTORY" > /dev/null
fi

start() { # start NAME ARGS...  (a member process, logs in $TMP/NAME.log)
    local name=$1
    shift
    (cd "$TMP" && exec "${Z[@]}" "$@" --id "$name") > "$TMP/$name.log" 2>&1 &
    pid[$name]=$!
    disown "$!"   # no "Killed" notices from the kills below
}

members() { "${Z[@]}" members --json 2>/dev/null; }
py() { /usr/bin/python3 -c "$@"; }

# The leader's id ("" when none).
leader() {
    members | py 'import json,sys
m = json.load(sys.stdin)
print(",".join(s["id"] for s in m["schedulers"] if s.get("leader")))' 2>/dev/null
}

leader_is() { test "$(leader)" = "$1"; }
wait_for() { # wait_for SECONDS COMMAND...  (true once COMMAND succeeds)
    local n=$(( $1 * 10 ))
    shift
    for _ in $(seq 1 "$n"); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    return 1
}

run_state() { # run_state DAG RUN
    "${Z[@]}" runs show "$1" "$2" --json 2>/dev/null | py 'import json,sys
print(json.load(sys.stdin)["state"])' 2>/dev/null
}
run_ended() { local s; s=$(run_state "$1" "$2"); [ "$s" = success ] || [ "$s" = failed ]; }
# With a history store a run has ended once it has also left ZooKeeper:
# the checks after it then read one copy, the history's.
in_zk() { "${Z[@]}" zk ls "/zkflow/runs/$1" 2>/dev/null | grep -qxF "$2"; }
if [ -n "$HISTORY" ]; then
    run_ended() {
        local s
        s=$(run_state "$1" "$2")
        { [ "$s" = success ] || [ "$s" = failed ]; } && ! in_zk "$1" "$2"
    }
fi
trigger() { "${Z[@]}" dags trigger "$1" --dags "$TMP/sdags" 2>/dev/null; }
# A field of the run object through python: run_py DAG RUN EXPR (on `r`).
run_py() {
    "${Z[@]}" runs show "$1" "$2" --json 2>/dev/null | py "import json,sys
r = json.load(sys.stdin)
v = $3
print('' if v is None else v)" 2>/dev/null
}

# ---- the cluster comes up ---------------------------------------------------------

start s1 scheduler --dags "$TMP/sdags"
wait_for 10 leader_is s1
start s2 scheduler --dags "$TMP/sdags"
start w1 worker --dags "$TMP/wdags" --slots 2
start w2 worker --dags "$TMP/wdags" --slots 2
API=127.0.0.1:$(/usr/bin/python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$TMP" && exec "${Z[@]}" api --dags "$TMP/sdags" --api "$API") > "$TMP/api1.log" 2>&1 &
pid[api1]=$!
disown "$!"
has_members() {
    members | py 'import json,sys
m = json.load(sys.stdin)
s = sorted(x["id"] for x in m["schedulers"]); w = sorted(x["id"] for x in m["workers"])
sys.exit(0 if s == ["s1", "s2"] and w == ["w1", "w2"] else 1)'
}
check "members: two schedulers and two workers register" wait_for 10 has_members
check "members: s1 (started first) leads, s2 stands by" test "$(leader)" = s1
check "members --json: workers carry pid, slots and running" \
    sh -c "'$ZKFLOW' --zk '$HOSTS' members --json | /usr/bin/python3 -c 'import json,sys
m = json.load(sys.stdin)
w = {x[\"id\"]: x for x in m[\"workers\"]}
assert w[\"w1\"][\"slots\"] == 2 and isinstance(w[\"w1\"][\"pid\"], int)
assert w[\"w1\"][\"running\"] == [] and w[\"w1\"][\"queues\"] == [\"default\"]
assert all(isinstance(s[\"pid\"], int) for s in m[\"schedulers\"])'"

check "members (text): the leader and the standby say so" \
    sh -c "'$ZKFLOW' --zk '$HOSTS' members | grep -E '^scheduler +s1 .* leader\$' >/dev/null &&
           '$ZKFLOW' --zk '$HOSTS' members | grep -E '^scheduler +s2 .* standby\$' >/dev/null"
check "members (text): a worker shows its slots and queues" \
    sh -c "'$ZKFLOW' --zk '$HOSTS' members | grep -E '^worker +w1 .* 0/2 running, queues default\$' >/dev/null"

# ---- runs go through the queue ---------------------------------------------------

R=$(trigger cl_chain)
check "trigger prints the run id" test -n "$R"
check "cl_chain succeeds on the workers" wait_for 20 run_ended cl_chain "$R"
check "cl_chain: state success" test "$(run_state cl_chain "$R")" = success
check "cl_chain: every task ran on a worker (runs show: worker)" test \
    "$(run_py cl_chain "$R" '",".join(sorted(set(t["worker"] for t in r["tasks"].values()) - {"w1", "w2"})) or "ok"')" = ok
check "cl_chain: the XCom crosses workers (b pulls a, c renders b)" test \
    "$(run_py cl_chain "$R" 'r["tasks"]["c"]["xcom"]')" = value-of-a
check "cl_chain: tasks logs reads a worker's log" \
    sh -c "'$ZKFLOW' --zk '$HOSTS' tasks logs cl_chain '$R' a | grep -q chain-a"
# From another machine the worker's file is not there: the copy in the
# store is read.
"${Z[@]}" tasks clear cl_chain "$R" c > /dev/null 2>&1
c_again() { [ "$(run_py cl_chain "$R" 'r["tasks"]["c"]["try_number"]')" = 2 ] && run_ended cl_chain "$R"; }
check "tasks clear: the leader runs the cleared task again on a worker" wait_for 20 c_again
check "tasks clear: the run succeeds again with the same XCom" test \
    "$(run_py cl_chain "$R" 'r["state"] + "/" + r["tasks"]["c"]["xcom"]')" = success/value-of-a
mv "$TMP/logs" "$TMP/logs.away"
check "cl_chain: without the worker's file, tasks logs reads the store's copy" \
    sh -c "'$ZKFLOW' --zk '$HOSTS' tasks logs cl_chain '$R' a | grep -q chain-a"
check "tasks logs -f of a worker's ended try prints the store's copy and ends" \
    sh -c "timeout 20 '$ZKFLOW' --zk '$HOSTS' tasks logs cl_chain '$R' a -f | grep -q chain-a"
R2=$(trigger cl_chain)
check "tasks logs -f of a cluster task not started yet follows its try to the end" \
    sh -c "timeout 30 '$ZKFLOW' --zk '$HOSTS' --dags '$TMP/sdags' tasks logs cl_chain '$R2' c -f | grep -q value-of-a"
check "dags trigger --wait on the cluster exits 0 when the run succeeds" \
    sh -c "timeout 30 '$ZKFLOW' --zk '$HOSTS' --dags '$TMP/sdags' dags trigger cl_chain --wait > /dev/null 2>&1"
check "the API serves that log too (zkflow api --zk)" \
    sh -c "curl -sf 'http://$API/api/v1/dags/cl_chain/runs/$R/tasks/a/logs' | grep -q chain-a"
CHROMIUM=$(command -v chromium || true)
if [ -n "$CHROMIUM" ]; then
    "$CHROMIUM" --headless=new --no-sandbox --disable-gpu --no-first-run \
        --user-data-dir="$TMP/chromium" --virtual-time-budget=5000 \
        --dump-dom "http://$API/#dag=cl_chain&run=$R&task=a" > "$TMP/page.html" 2>/dev/null
    check "the page (headless Chromium) shows that log through zkflow api --zk" \
        grep -q "chain-a" "$TMP/page.html"
    check "the page's members line names the leader and the workers" \
        grep -qE 'id="members">2 scheduler\(s\), leader s1, 2 worker\(s\)' "$TMP/page.html"
fi
mv "$TMP/logs.away" "$TMP/logs"
curl -sf "http://$API/metrics" > "$TMP/metrics.txt"
check "/metrics: two schedulers and two workers, one leader" \
    sh -c "grep -qx 'zkflow_members{kind=\"scheduler\"} 2' '$TMP/metrics.txt' &&
           grep -qx 'zkflow_members{kind=\"worker\"} 2' '$TMP/metrics.txt' &&
           grep -qx 'zkflow_scheduler_leaders 1' '$TMP/metrics.txt'"
check "/metrics: each worker's slots, and the queue's depth" \
    sh -c "grep -qx 'zkflow_worker_slots{worker=\"w1\"} 2' '$TMP/metrics.txt' &&
           grep -qx 'zkflow_queue_depth{queue=\"default\"} 0' '$TMP/metrics.txt'"
check "API health on ZooKeeper: store zk" \
    sh -c "curl -sf 'http://$API/api/v1/health' | grep -q '\"store\":\"zk\"'"
chain_left() {
    { "${Z[@]}" zk ls /zkflow/queue/default 2>/dev/null |
          while read -r n; do "${Z[@]}" zk get "/zkflow/queue/default/$n" 2>/dev/null; echo; done
      "${Z[@]}" zk ls /zkflow/claims 2>/dev/null
      "${Z[@]}" zk ls /zkflow/results 2>/dev/null; } | grep -c cl_chain
}
check "no queue node, claim or result of the run is left behind" test "$(chain_left)" = 0

# The cluster-management example, run on the cluster: a worker's
# zk.default() is the ensemble.
R=$(trigger cluster_members)
check "example cluster_members runs on the cluster" wait_for 20 run_ended cluster_members "$R"
check "its census: s1 leads, 2 schedulers, 2 workers" test \
    "$(run_py cluster_members "$R" '"%s/%d/%d" % (r["tasks"]["census"]["xcom"]["leader"], r["tasks"]["census"]["xcom"]["schedulers"], r["tasks"]["census"]["xcom"]["workers"])')" = s1/2/2

# The leader decides as a standalone scheduler does: branches, trigger
# rules, retries, sensors in reschedule mode with soft_fail, pools and
# priorities end every task in the state `dags test` gives it.
task_states() { # task_states: {"task": "state", ...} sorted, from a run object on stdin
    /usr/bin/python3 -c 'import json,sys
r = json.load(sys.stdin)
print(r["state"], json.dumps({k: v["state"] for k, v in sorted(r["tasks"].items())}))'
}
for d in $SAME_AS_TEST; do
    want=$(cd "$TMP" && "$ZKFLOW" dags test "$ROOT/examples/dags/$d.lua" --json 2>/dev/null | task_states)
    R=$(trigger "$d")
    if wait_for 30 run_ended "$d" "$R"; then
        got=$("${Z[@]}" runs show "$d" "$R" --json 2>/dev/null | task_states)
        check "example $d on the cluster ends as under dags test" test "$got" = "$want"
        if [ "$got" != "$want" ]; then
            echo "#   cluster: $got"
            echo "#   test:    $want"
        fi
    else
        not_ok "example $d on the cluster ends"
    fi
done

R=$(trigger cl_fan)
check "cl_fan (30 parallel tries) succeeds" wait_for 30 run_ended cl_fan "$R"
check "cl_fan: state success" test "$(run_state cl_fan "$R")" = success
check "cl_fan: each of the 30 tries ran exactly once" \
    test "$(sort "$CLUSTER_OUT/fan.txt" | uniq | wc -l)/$(wc -l < "$CLUSTER_OUT/fan.txt")" = "30/30"
check "cl_fan: both workers took tries" test \
    "$(run_py cl_fan "$R" '",".join(sorted(set(t["worker"] for k, t in r["tasks"].items() if k != "join")))')" = "w1,w2"

# A second queue node for a try that already ran (what a write repeated
# after a lost answer leaves): a worker claims it and does not run it.
KEY="cl_fan~$R~t1~1"
"${Z[@]}" zk set /zkflow/queue/default/ti-9999999990 \
    "{\"key\":\"$KEY\",\"dag_id\":\"cl_fan\",\"run_id\":\"$R\",\"task_id\":\"t1\",\"try_number\":1,\"queue\":\"default\"}" > /dev/null 2>&1
dup_gone() { ! "${Z[@]}" zk ls /zkflow/queue/default 2>/dev/null | grep -q ti-9999999990; }
check "a duplicate queue node of a finished try is taken off the queue" wait_for 10 dup_gone
sleep 0.5
check "and not run again (t1 ran once)" test "$(grep -c '^t1 1$' "$CLUSTER_OUT/fan.txt")" = 1
# (With a history store the run may have left ZooKeeper already: then the
# worker finds no record at all.)
why='not run: its record is success try 1'
[ -n "$HISTORY" ] && why='not run: its record is (success try 1|nil try nil)'
check "the worker says why" sh -c "grep -hE '$why' '$TMP'/w*.log | grep -q ."
check "no claim is left behind" test -z "$("${Z[@]}" zk ls /zkflow/claims 2>/dev/null)"

# Queues: a task with queue = "special" waits for a worker of that queue.
R=$(trigger cl_queues)
special_waits() { [ "$("${Z[@]}" tasks state cl_queues "$R" special 2>/dev/null)" = queued ]; }
check "a try for a queue no worker takes stays queued" wait_for 10 special_waits
start w3 worker --dags "$TMP/wdags" --queues special,other --slots 1
check "a worker of that queue takes it" wait_for 20 run_ended cl_queues "$R"
check "the queue's try ran on that worker, the other on a default one" test \
    "$(run_py cl_queues "$R" 'r["tasks"]["special"]["worker"] + "/" + str(r["tasks"]["plain"]["worker"] in ("w1", "w2"))')" = w3/True
kill -TERM "${pid[w3]}"

R=$(trigger cl_retry)
check "cl_retry ends" wait_for 20 run_ended cl_retry "$R"
check "cl_retry: flaky succeeds at try 2" \
    test "$(run_py cl_retry "$R" 'r["tasks"]["flaky"]["state"] + "/" + str(r["tasks"]["flaky"]["try_number"])')" = success/2
check "cl_retry: flow.fail fails once, the run fails" \
    test "$(run_py cl_retry "$R" 'r["tasks"]["never"]["state"] + "/" + str(r["tasks"]["never"]["try_number"]) + "/" + r["state"]')" = failed/1/failed

# ---- /config: a pool's size, applied live, holds across both workers ---------------------

"${Z[@]}" config set pools.p 1 > /dev/null
sleep 0.5
R=$(trigger cl_pool)
check "cl_pool succeeds" wait_for 20 run_ended cl_pool "$R"
no_overlap() {
    py 'import sys
ev = sorted((float(t), k) for k, t in (l.split() for l in open(sys.argv[1])))
depth = worst = 0
for _, k in ev:
    depth += 1 if k == "start" else -1
    worst = max(worst, depth)
sys.exit(0 if worst == 1 and len(ev) == 8 else 1)' "$CLUSTER_OUT/pool.txt"
}
check "pools.p = 1 from /config: never two of its tries at once" no_overlap

# log_level from /config, live: the leader's info lines stop, then resume.
queued_lines() { grep -c "ti_queued cl_chain" "$TMP/s1.log"; }
"${Z[@]}" config set log_level warn > /dev/null
sleep 0.5
n0=$(queued_lines)
R=$(trigger cl_chain)
wait_for 20 run_ended cl_chain "$R"
check "config log_level=warn: the leader logs no info line for a run" test "$(queued_lines)" = "$n0"
"${Z[@]}" config unset log_level > /dev/null
sleep 0.5
R=$(trigger cl_chain)
wait_for 20 run_ended cl_chain "$R"
check "config unset log_level: its info lines are back" test "$(queued_lines)" -gt "$n0"

# ---- a worker dies with a try in flight -------------------------------------------------

R=$(trigger cl_long)
holder() { # the worker whose running list has the long try of run $R
    members | py 'import json,sys
for w in json.load(sys.stdin)["workers"]:
    if any(k.startswith("cl_long~" + sys.argv[1] + "~long~") for k in w["running"]):
        print(w["id"])
        break' "$R" 2>/dev/null
}
has_holder() { test -n "$(holder)"; }
wait_for 15 has_holder
H=$(holder)
check "members: a worker lists the try it runs" test -n "$H"
kill -9 "${pid[$H]}" 2>/dev/null
check "the run survives its worker's SIGKILL" wait_for 30 run_ended cl_long "$R"
check "cl_long: success after the worker died" test "$(run_state cl_long "$R")" = success
check "the lost try ran again on the other worker" test \
    "$(run_py cl_long "$R" 'r["tasks"]["long"]["worker"]')" = "$( [ "$H" = w1 ] && echo w2 || echo w1)"
check "a try lost with its worker costs no retry (try 2 of max_tries 1)" test \
    "$(run_py cl_long "$R" 'str(r["tasks"]["long"]["try_number"]) + "/" + str(r["tasks"]["long"]["max_tries"])')" = 2/1
check "the dead worker's orphaned shell task was killed (one long-end: the re-run's)" \
    test "$(grep -c "^long-end $R" "$CLUSTER_OUT/long.txt")" = 1
# The try's supervisor (PR_SET_PDEATHSIG) ended its tree with the worker:
# the survivor's kill of the recorded group, the fallback, finds it gone.
check "the dead worker's try died with it: the survivor finds no group to kill" \
    sh -c "! grep -h 'left by dead worker $H' '$TMP'/w*.log | grep -q ."
check "members: the dead worker is gone once its session expired" \
    wait_for 10 sh -c "! '$ZKFLOW' --zk '$HOSTS' members --json | grep -q '\"$H\"'"
start "$H" worker --dags "$TMP/wdags" --slots 2

# ---- a worker frozen past its session (a long pause, a partition) ----------------------

wait_for 10 has_members
: > "$CLUSTER_OUT/long.txt"
R=$(trigger cl_long)
wait_for 15 has_holder
H=$(holder)
kill -STOP "${pid[$H]}"
check "a frozen worker's try runs again on the other worker" wait_for 30 run_ended cl_long "$R"
check "cl_long: success while its first worker is frozen" test "$(run_state cl_long "$R")" = success
check "the try that ran while its worker was frozen was stopped (one long-end)" \
    test "$(grep -c "^long-end $R" "$CLUSTER_OUT/long.txt")" = 1
kill -CONT "${pid[$H]}"
check "the worker comes back as a member once it wakes" wait_for 15 has_members
# Whichever it hears first (its session's expiry, or its try's end), it
# records no result for the try it lost.
check "it says it dropped the try it had lost" wait_for 10 \
    sh -c "grep -hE 'worker $H stopped its tries|result of cl_long~.*~long~1 was not recorded' '$TMP/$H.log' | grep -q ."
R=$(trigger cl_chain)
check "the cluster runs on with it" wait_for 20 run_ended cl_chain "$R"

# ---- the leader dies with a try in flight --------------------------------------------

: > "$CLUSTER_OUT/long.txt"
R=$(trigger cl_long)
wait_for 15 grep -q long-start "$CLUSTER_OUT/long.txt"
kill -9 "${pid[s1]}"
check "the standby takes over after the leader's SIGKILL" wait_for 15 leader_is s2
check "the run goes on under the new leader" wait_for 30 run_ended cl_long "$R"
check "cl_long: success under s2" test "$(run_state cl_long "$R")" = success
check "finished and in-flight tries were not run again (first once, long once)" \
    test "$(grep -c "^first" "$CLUSTER_OUT/long.txt")/$(grep -c "^long-start" "$CLUSTER_OUT/long.txt")/$(grep -c "^after" "$CLUSTER_OUT/long.txt")" = 1/1/1
start s1 scheduler --dags "$TMP/sdags"

# ---- the leader freezes past its session ------------------------------------------------

wait_for 10 has_members
kill -STOP "${pid[s2]}"
check "a frozen leader is replaced" wait_for 15 leader_is s1
kill -CONT "${pid[s2]}"
sleep 3
check "the old leader steps down when it wakes: one leader" test "$(leader)" = s1
check "it stands by again (re-registered)" wait_for 10 has_members
R=$(trigger cl_chain)
check "runs go on after the change" wait_for 20 run_ended cl_chain "$R"
check "cl_chain after the change: success" test "$(run_state cl_chain "$R")" = success

# ---- the leader's election node deleted by hand -----------------------------------------

election_node_of() { # the election node whose data is member $1
    local n
    for n in $("${Z[@]}" zk ls /zkflow/election/scheduler 2>/dev/null); do
        if [ "$("${Z[@]}" zk get "/zkflow/election/scheduler/$n" 2>/dev/null)" = "$1" ]; then
            echo "$n"
        fi
    done
}
N=$(election_node_of s1)
check "the leader's election node carries its id" test -n "$N"
"${Z[@]}" zk rm "/zkflow/election/scheduler/$N" > /dev/null 2>&1
check "its deletion hands leadership to the standby" wait_for 10 leader_is s2
sleep 1
check "the old leader stepped down (one leader)" leader_is s2
s1_contends() { test -n "$(election_node_of s1)"; }
check "and contends again" wait_for 5 s1_contends
R=$(trigger cl_chain)
check "runs go on under the new leader" wait_for 20 run_ended cl_chain "$R"

# ---- DAGs pushed to ZooKeeper ---------------------------------------------------------------

mkdir -p "$TMP/push"
cat > "$TMP/push/pushed.lua" <<'LUA'
local flow = require "zkflow"
return flow.dag { id = "cl_pushed", start_date = "2026-01-01T00:00:00Z",
  tasks = function(t) t.lua { id = "x", run = function() return "version-1" end } end }
LUA
check "dags push: a file in no DAG folder goes to /dags" \
    sh -c "'$ZKFLOW' --zk '$HOSTS' dags push '$TMP/push/pushed.lua' | grep -q 'pushed cl_pushed version'"
pushed_listed() { "${Z[@]}" --dags "$TMP/nowhere" dags list 2>/dev/null | grep -q "cl_pushed *zk:/zkflow/dags/cl_pushed"; }
check "dags list shows it (file zk:/zkflow/dags/cl_pushed), with no folder" pushed_listed
sleep 0.5
R=$("${Z[@]}" --dags "$TMP/nowhere" dags trigger cl_pushed 2>/dev/null)
check "a pushed DAG runs on the workers (they load it from ZooKeeper)" wait_for 20 run_ended cl_pushed "$R"
check "its XCom is version 1's" test "$(run_py cl_pushed "$R" 'r["tasks"]["x"]["xcom"]')" = version-1
sed -i 's/version-1/version-2/' "$TMP/push/pushed.lua"
"${Z[@]}" dags push "$TMP/push/pushed.lua" > /dev/null
sleep 0.5
R=$("${Z[@]}" --dags "$TMP/nowhere" dags trigger cl_pushed 2>/dev/null)
check "a new push is the next run's version" wait_for 20 run_ended cl_pushed "$R"
check "its XCom is version 2's" test "$(run_py cl_pushed "$R" 'r["tasks"]["x"]["xcom"]')" = version-2
printf 'local flow = require "zkflow"\nreturn flow.dag { id = "cl_pushed",\n  tasks = function(t) t.lua { id = "x", run = 42 } end }\n' > "$TMP/push/broken.lua"
out=$("${Z[@]}" dags push "$TMP/push/broken.lua" 2>&1); rc=$?
check "a file that does not load is not pushed: exit 1" test "$rc" = 1
check "the error names the file and line" sh -c "echo \"\$1\" | grep -q 'broken.lua:3'" _ "$out"
pushed_source_has() {
    "${Z[@]}" zk get /zkflow/dags/cl_pushed 2>/dev/null | /usr/bin/python3 -c '
import json, sys
sys.exit(0 if sys.argv[1] in json.load(sys.stdin)["source"] else 1)' "$1"
}
check "the pushed version stays" pushed_source_has version-2
# A run keeps the version it started with, even when a push changes the
# DAG on every worker in the middle of it.
cat > "$TMP/push/versioned.lua" <<'LUA'
local flow = require "zkflow"
return flow.dag { id = "cl_versioned", start_date = "2026-01-01T00:00:00Z",
  tasks = function(t)
    local first = t.shell { id = "first", cmd = "sleep 2" }
    local second = t.lua { id = "second", run = function() return "first-version" end }
    local _ = first >> second
  end }
LUA
"${Z[@]}" dags push "$TMP/push/versioned.lua" > /dev/null
sleep 0.5
R=$("${Z[@]}" --dags "$TMP/nowhere" dags trigger cl_versioned 2>/dev/null)
sleep 0.8
sed -i 's/first-version/second-version/' "$TMP/push/versioned.lua"
"${Z[@]}" dags push "$TMP/push/versioned.lua" > /dev/null
check "a run pushed over mid-way ends" wait_for 20 run_ended cl_versioned "$R"
check "it kept the version it started with (the workers loaded it from the store)" \
    test "$(run_py cl_versioned "$R" 'r["tasks"]["second"]["xcom"]')" = first-version
sleep 0.3
R=$("${Z[@]}" --dags "$TMP/nowhere" dags trigger cl_versioned 2>/dev/null)
check "the next run has the new version" wait_for 20 run_ended cl_versioned "$R"
check "its XCom is the new version's" \
    test "$(run_py cl_versioned "$R" 'r["tasks"]["second"]["xcom"]')" = second-version
"${Z[@]}" dags push --remove cl_pushed > /dev/null 2>&1
gone() { ! "${Z[@]}" --dags "$TMP/nowhere" dags list 2>/dev/null | grep -q cl_pushed; }
check "dags push --remove: the DAG is gone" gone
check "the leader dropped it too" wait_for 5 grep -q "dag cl_pushed removed" "$TMP/s1.log" "$TMP/s2.log"

# ---- digest auth: a cluster whose nodes only its members read ------------------------------

SEC=("${Z[@]}" --root /secure --zk-auth alice:secret)
(cd "$TMP" && exec "${SEC[@]}" standalone "$TMP/sdags" --no-api --id sec) > "$TMP/sec.log" 2>&1 &
pid[sec]=$!
disown "$!"
sec_leads() { "${SEC[@]}" members --json 2>/dev/null | grep -q '"leader":true'; }
check "an authenticated standalone --zk leads under its root" wait_for 10 sec_leads
R=$("${SEC[@]}" dags trigger cl_chain --dags "$TMP/sdags" 2>/dev/null)
sec_ended() {
    "${SEC[@]}" runs show cl_chain "$R" --json 2>/dev/null |
        /usr/bin/python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["state"] == "success" else 1)'
}
check "its run succeeds (scheduler, worker and CLI all authenticated)" wait_for 20 sec_ended
out=$("${Z[@]}" zk get "/secure/runs/cl_chain/$R" 2>&1); rc=$?
check "a client without the credentials cannot read its nodes (ZNOAUTH)" \
    sh -c "[ $rc = 1 ] && echo \"\$1\" | grep -q ZNOAUTH" _ "$out"
out=$("${Z[@]}" --zk-auth alice:wrong zk get "/secure/runs/cl_chain/$R" 2>&1); rc=$?
check "nor one with a wrong password" sh -c "[ $rc = 1 ] && echo \"\$1\" | grep -q ZNOAUTH" _ "$out"
check "with them it can" sh -c "'$ZKFLOW' --zk '$HOSTS' --zk-auth alice:secret zk get '/secure/runs/cl_chain/$R' | grep -q success"
kill -TERM "${pid[sec]}"

# ---- bad input ---------------------------------------------------------------------------

"${Z[@]}" zk set /zkflow/queue/default/ti-9999999999 'not json' > /dev/null 2>&1
check "a malformed queue node is removed by a worker" \
    wait_for 10 sh -c "! '$ZKFLOW' --zk '$HOSTS' zk ls /zkflow/queue/default | grep -q ti-9999999999"
check "the worker names the bad node in its log" \
    sh -c "grep -h 'ti-9999999999: not a queue record' '$TMP'/w*.log | grep -q ."
R=$(trigger cl_only_sched)
check "a DAG only the schedulers have runs on the workers (the leader published its version)" \
    wait_for 20 run_ended cl_only_sched "$R"
check "its run succeeds" test "$(run_state cl_only_sched "$R")" = success
# A run of a version nobody published (made by hand here): the workers
# have nothing to run.
R=bogus_version
"${Z[@]}" zk set "/zkflow/runs/cl_only_sched/$R" \
    '{"dag_id":"cl_only_sched","run_id":"bogus_version","state":"queued","run_type":"manual","logical_date":"2026-01-01T00:00:00+00:00","conf":{},"version":"deadbeef"}' > /dev/null
check "a DAG the workers cannot find: the run ends" wait_for 20 run_ended cl_only_sched "$R"
check "its try fails with an error naming the DAG and the worker" \
    sh -c "{ '$ZKFLOW' --zk '$HOSTS' zk get '/zkflow/runs/cl_only_sched/$R/x'
             '$ZKFLOW' --zk '$HOSTS' runs show cl_only_sched '$R' --json; } 2>/dev/null |
           grep -q \"no DAG 'cl_only_sched' on worker w\""
out=$(cd "$TMP" && "$ZKFLOW" worker --dags "$TMP/wdags" 2>&1); rc=$?
check "worker without --zk: exit 2 naming --zk" sh -c "[ $rc = 2 ] && echo \"\$1\" | grep -q -- --zk" _ "$out"

# ---- a 3-node ensemble loses a member mid-run ------------------------------------------

# Free ports are picked before the servers bind them: a port taken in
# between fails a start, which is tried once more on new ports.
for _ in 1 2; do
    E=$(ZKFLOW_ZK_DIR=$TMP/zk3 bash spec/zk/harness.sh start3 2>"$TMP/zk3.err") && break
    E=
    sed "s/^/#   /" "$TMP/zk3.err"
    ZKFLOW_ZK_DIR=$TMP/zk3 bash spec/zk/harness.sh stop > /dev/null 2>&1
    rm -rf "$TMP/zk3"
done
if [ -n "$E" ]; then
    # A session outlives a server's death when the client finds another
    # within it: a longer timeout than above.
    ZE=("$ZKFLOW" --zk "$E" --session-timeout 6)
    for m in e1 ew1; do
        kind=scheduler
        [ "$m" = ew1 ] && kind=worker
        (cd "$TMP" && exec "${ZE[@]}" "$kind" --dags "$TMP/sdags" --id "$m") > "$TMP/$m.log" 2>&1 &
        pid[$m]=$!
        disown "$!"
    done
    e_leads() { "${ZE[@]}" members --json 2>/dev/null | grep -q '"leader":true'; }
    wait_for 15 e_leads
    : > "$CLUSTER_OUT/long.txt"
    R=$("${ZE[@]}" dags trigger cl_long --dags "$TMP/sdags" 2>/dev/null)
    wait_for 15 grep -q long-start "$CLUSTER_OUT/long.txt"
    ZKFLOW_ZK_DIR=$TMP/zk3 bash spec/zk/harness.sh kill 1
    e_ended() {
        "${ZE[@]}" runs show cl_long "$R" --json 2>/dev/null |
            /usr/bin/python3 -c 'import json,sys; sys.exit(0 if json.load(sys.stdin)["state"] == "success" else 1)'
    }
    check "3-node ensemble: the run goes on while one server is killed" wait_for 30 e_ended
    check "3-node ensemble: nothing ran twice, no try was lost" \
        test "$(grep -c "^first" "$CLUSTER_OUT/long.txt")/$(grep -c "^long-start" "$CLUSTER_OUT/long.txt")/$(grep -c "^after" "$CLUSTER_OUT/long.txt")" = 1/1/1
    e_members() {
        "${ZE[@]}" members --json 2>/dev/null | /usr/bin/python3 -c 'import json,sys
m = json.load(sys.stdin)
sys.exit(0 if [s["id"] for s in m["schedulers"]] == ["e1"] and [w["id"] for w in m["workers"]] == ["ew1"] else 1)'
    }
    check "3-node ensemble: both members kept their sessions" e_members
    kill -TERM "${pid[e1]}" "${pid[ew1]}" 2>/dev/null
    ZKFLOW_ZK_DIR=$TMP/zk3 bash spec/zk/harness.sh stop > /dev/null 2>&1
else
    not_ok "3-node ensemble: the servers did not start"
fi

# ---- the history store (ZKFLOW_TEST_HISTORY) ------------------------------------------

if [ -n "$HISTORY" ]; then
    R=$(trigger cl_chain)
    check "history: a run ends and leaves ZooKeeper" wait_for 20 run_ended cl_chain "$R"
    check "history: its row is in the history database" test \
        "$(psql "$HISTORY" -XqAt -c "SELECT state FROM runs WHERE dag_id = 'cl_chain' AND run_id = '$R'")" = success
    check "history: runs show reads it from there, tasks, workers and XComs" test \
        "$(run_py cl_chain "$R" 'r["state"] + "/" + ",".join(sorted(r["tasks"])) + "/" + str(r["tasks"]["a"]["worker"] in ("w1", "w2")) + "/" + r["tasks"]["c"]["xcom"]')" = success/a,b,c/True/value-of-a
    listed() { "${Z[@]}" runs list cl_chain 2>/dev/null | grep -qF "$R"; }
    check "history: runs list lists it" listed
    check "history: the API serves it" \
        sh -c "curl -sf 'http://$API/api/v1/dags/cl_chain/runs/$R' | grep -q '\"state\": *\"success\"'"
    mv "$TMP/logs" "$TMP/logs.away"
    check "history: tasks logs reads its log copy from there" \
        sh -c "'$ZKFLOW' --zk '$HOSTS' tasks logs cl_chain '$R' a | grep -q chain-a"
    mv "$TMP/logs.away" "$TMP/logs"
    check "history: --history URL on the command line reads it too" test \
        "$(cd "$TMP" && "$ZKFLOW" --zk "$HOSTS" --history "$HISTORY" runs show cl_chain "$R" --json 2>/dev/null |
           py 'import json,sys; print(json.load(sys.stdin)["state"])')" = success
fi

# ---- a worker stops cleanly -----------------------------------------------------------

kill -TERM "${pid[w2]}"
check "SIGTERM: the worker exits" wait_for 10 sh -c "! kill -0 ${pid[w2]} 2>/dev/null"
check "SIGTERM: its member record goes at once" \
    sh -c "! '$ZKFLOW' --zk '$HOSTS' members --json | grep -q '\"w2\"'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
