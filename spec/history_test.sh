#!/usr/bin/env bash
# spec/history_test.sh - the history store end to end (docs/history.md):
# a standalone's finished runs leave the live store and read as before
# (runs list, runs show --json, tasks logs, the API); a scheduler killed
# with SIGKILL between the history write and the live delete
# (ZKFLOW_FAULT=archive-crash) loses and duplicates nothing; a cleared
# finished run runs again; `db clean` and retention_days; on a real
# ZooKeeper, a cluster with --history keeps the znode count under /runs
# flat while its runs read as before.
#
#   bash spec/history_test.sh     (after `make`; prints "N passed, N failed")
#
# ZKFLOW_TEST_HISTORY=URL puts the cluster's history there instead of a
# SQLite file (spec/pg_test.sh: a database of its PostgreSQL server).
set -u
cd "$(dirname "$0")/.." || exit 2
ROOT=$PWD
ZKFLOW=${ZKFLOW:-$ROOT/${B:-build}/zkflow}
T=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-history.XXXXXX")
export ZKFLOW_ZK_DIR=$T/zk
CH=${ZKFLOW_TEST_HISTORY:-sqlite:$T/h.db}   # the cluster's history
unset ZKFLOW_DB ZKFLOW_DAGS ZKFLOW_ZK ZKFLOW_HISTORY ZKFLOW_FAULT ZKFLOW_TEST_HISTORY
passed=0
failed=0
PIDS=()

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}
cleanup() {
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null; done
    bash spec/zk/harness.sh stop > /dev/null 2>&1
    if [ -n "${KEEP:-}" ]; then echo "kept $T"; return; fi
    rm -rf "$T"
}
trap cleanup EXIT
py() { /usr/bin/python3 -c "$@"; }
wait_for() { # wait_for SECONDS COMMAND...
    local n=$(( $1 * 10 ))
    shift
    for _ in $(seq 1 "$n"); do
        if "$@"; then return 0; fi
        sleep 0.1
    done
    return 1
}

mkdir -p "$T/dags"
cat > "$T/dags/hist.lua" <<'EOF'
local flow = require "zkflow"
return flow.dag {
  id = "hist", start_date = "2026-01-01T00:00:00Z",
  tasks = function(t)
    local a = t.lua { id = "a", run = function(ctx) ctx.xcom.push("k", 7); return { n = 1 } end }
    t.shell { id = "b", after = { a }, cmd = "echo hello from {{ run_id }}" }
  end,
}
EOF

cat > "$T/dags/ext.lua" <<'EOF'
local flow = require "zkflow"
return flow.dag {
  id = "ext", start_date = "2026-01-01T00:00:00Z",
  tasks = function(t)
    t.external_task { id = "wait", external_dag_id = "hist", poke_interval = 0.2, timeout = 25 }
  end,
}
EOF

# ---- one machine: the embedded store ---------------------------------------------

Z=("$ZKFLOW" --db "$T/z.db")
PORT=$(py 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
SA=
start_sa() { # start_sa [ENV=VALUE...]: the standalone, logs in $T/sa.log
    (cd "$T" && exec env "$@" "${Z[@]}" standalone dags --api "127.0.0.1:$PORT") >> "$T/sa.log" 2>&1 &
    SA=$!
    PIDS+=("$SA")
    disown "$SA"
    wait_for 10 "${Z[@]}" runs list > /dev/null 2>&1
}
stop_sa() { kill -TERM "$SA" 2>/dev/null; wait_for 10 sh -c "! kill -0 $SA 2>/dev/null"; }
live_runs() { "${Z[@]}" zk ls /zkflow/runs/hist 2>/dev/null | grep -c . ; }
nruns() { "${Z[@]}" runs list hist --limit 1000 --json 2>/dev/null | py 'import json,sys
print(len(json.load(sys.stdin)["dag_runs"]))'; }
state_of() { "${Z[@]}" runs show hist "$1" --json 2>/dev/null | py 'import json,sys
print(json.load(sys.stdin)["state"])' 2>/dev/null; }
ended() { local s; s=$(state_of "$1"); [ "$s" = success ] || [ "$s" = failed ]; }
live_is() { test "$(live_runs)" = "$1"; }
nruns_is() { test "$(nruns)" = "$1"; }
hist_count() { # runs of hist in the history, read by the history module
    "${Z[@]}" lua /dev/stdin <<EOF
local h = assert(require("zkflow.history").new("sqlite:$T/z.db"))
print(h:count_runs("hist"))
EOF
}

start_sa
for i in 1 2 3 4 5; do "${Z[@]}" dags trigger hist --dags "$T/dags" --run-id "r$i" > /dev/null; done
check "a standalone ends five runs" wait_for 20 ended r5
check "the live store keeps none of them (within seconds)" wait_for 5 live_is 0
check "runs list shows the five" test "$(nruns)" = 5
"${Z[@]}" runs show hist r3 --json > "$T/show.json" 2>/dev/null
check "runs show --json reads a finished run with its XCom" py "import json
r = json.load(open('$T/show.json'))
assert r['state'] == 'success' and r['tasks']['a']['xcom'] == {'n': 1}, r
assert r['tasks']['b']['state'] == 'success'"
check "tasks logs reads a finished run's log" sh -c "'${Z[0]}' --db '$T/z.db' tasks logs hist r3 b 2>/dev/null | grep -q 'hello from r3'"
check "the API reads a finished run" py "import json, urllib.request
r = json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/api/v1/dags/hist/runs/r3'))
assert r['state'] == 'success' and r['tasks']['a']['xcom'] == {'n': 1}, r"
check "a run id in the history stays taken" sh -c "! '${Z[0]}' --db '$T/z.db' dags trigger hist --dags '$T/dags' --run-id r1 2>/dev/null"

# Cleared: back in the live store, run again, moved again.
"${Z[@]}" tasks clear hist r1 b > /dev/null 2>&1
check "a cleared finished run runs again" wait_for 10 sh -c "'${Z[0]}' --db '$T/z.db' runs show hist r1 --json 2>/dev/null | grep -q '\"try_number\":2'"
check "and moves to the history again when it ends" wait_for 10 live_is 0
check "the cleared run is listed once" test "$(nruns)" = 5
stop_sa

# Killed between the history write and the live delete.
start_sa ZKFLOW_FAULT=archive-crash
"${Z[@]}" dags trigger hist --dags "$T/dags" --run-id r6 > /dev/null
check "the fault kills the scheduler after the history write" wait_for 20 sh -c "! kill -0 $SA 2>/dev/null"
check "the run is in the history and still in the live store" test "$(hist_count)/$(live_runs)" = "6/1"
start_sa
check "the next start moves it: nothing live" wait_for 10 live_is 0
check "nothing lost, nothing twice (history)" test "$(hist_count)" = 6
check "nothing lost, nothing twice (runs list)" test "$(nruns)" = 6
check "the moved-again run reads whole" py "import json, urllib.request
r = json.load(urllib.request.urlopen('http://127.0.0.1:$PORT/api/v1/dags/hist/runs/r6'))
assert r['state'] == 'success' and r['tasks']['b']['state'] == 'success', r"
stop_sa

# db clean.
FUTURE=2099-01-01T00:00:00Z
"${Z[@]}" db clean --before "$FUTURE" --keep-last 2 --dry-run --json > "$T/dry.json" 2>"$T/err"
check "db clean --dry-run says what it would remove" py "import json
r = json.load(open('$T/dry.json'))
assert r['dry_run'] and r['runs'] == 4 and r['task_instances'] == 8 and r['log_folders'] == 4, r"
check "--dry-run removes nothing" test "$(nruns)" = 6
check "db clean needs --before (exit 2)" sh -c "'${Z[0]}' --db '$T/z.db' db clean > /dev/null 2>&1; test \$? = 2"
"${Z[@]}" db clean --before "$FUTURE" --keep-last 2 > "$T/clean.out" 2>"$T/err"
check "db clean prints what it removed" grep -q "removed 4 runs, 8 task instances" "$T/clean.out"
check "the last two runs stay" test "$(nruns)" = 2
check "the removed runs' log folders are gone" test "$(ls "$T/logs/hist" | wc -l)" = 2
"${Z[@]}" db clean --before 2000-01-01T00:00:00Z --json > "$T/none.json" 2>"$T/err"
check "runs after --before stay" py "import json
assert json.load(open('$T/none.json'))['runs'] == 0"

# retention_days, applied live by the running scheduler.
start_sa
"${Z[@]}" config set retention_days 0.00001 > /dev/null
check "retention_days removes old runs continuously" wait_for 15 nruns_is 0
no_folders() { test "$(ls "$T/logs/hist" 2>/dev/null | wc -l)" = 0; }
check "and their log folders" wait_for 5 no_folders
stop_sa

# ---- a cluster on ZooKeeper -------------------------------------------------------

if ! command -v java > /dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
    not_ok "no java or zookeeper.jar for the cluster checks (make deps)"
    echo "$passed passed, $failed failed"
    exit 1
fi
HOSTS=$(bash spec/zk/harness.sh start1) || { not_ok "ZooKeeper did not start"; echo "$passed passed, $failed failed"; exit 1; }
C=("$ZKFLOW" --zk "$HOSTS" --session-timeout 4 --history "$CH")
mkdir -p "$T/c"
(cd "$T/c" && exec "${C[@]}" scheduler --dags "$T/dags" --id s1) > "$T/s1.log" 2>&1 &
S1=$!; PIDS+=("$S1"); disown "$S1"
(cd "$T/c" && exec "${C[@]}" worker --dags "$T/dags" --id w1) > "$T/w1.log" 2>&1 &
PIDS+=("$!"); disown "$!"
cruns() { "${C[@]}" runs list hist --limit 1000 --json 2>/dev/null | py 'import json,sys
print(sum(1 for r in json.load(sys.stdin)["dag_runs"] if r["state"] == "success"))'; }
znodes() { # znodes under /zkflow/runs/<dag> (runs, their instances, logs)
    "${C[@]}" zk dump /zkflow/runs 2>/dev/null | py 'import json,sys
def n(t): return 1 + sum(n(c) for c in (t.get("children") or {}).values())
dags = (json.load(sys.stdin).get("children") or {}).values()
print(sum(n(d) - 1 for d in dags))'
}
wait_for 20 sh -c "'${C[0]}' --zk '$HOSTS' members --json 2>/dev/null | grep -q '\"leader\":true'"
cruns_is() { test "$(cruns)" = "$1"; }
znodes_le() { test "$(znodes)" -le "$1"; }
batch() { # batch FROM TO: triggers runs cFROM..cTO and waits for them
    for i in $(seq "$1" "$2"); do "${C[@]}" dags trigger hist --dags "$T/dags" --run-id "c$i" > /dev/null 2>&1; done
    wait_for 60 cruns_is "$2"
}
check "a cluster ends ten runs" batch 1 10
wait_for 10 znodes_le 0
Z10=$(znodes)
check "a cluster ends thirty more" batch 11 40
wait_for 10 znodes_le 0
Z40=$(znodes)
check "the znode count under /runs stays flat ($Z10 after 10 runs, $Z40 after 40)" test "$Z40" -le "$Z10"
if [ "$Z40" -gt "$Z10" ]; then
    # Seen once in CI (40 after 10 runs, 160 after 40: nothing moved):
    # what the leader said, for whoever takes it up.
    tail -n 30 "$T/s1.log" | sed 's/^/# s1: /'
fi
"${C[@]}" runs show hist c7 --json > "$T/c7.json" 2>/dev/null
check "runs show reads a cluster run from the history (worker, XCom)" py "import json
r = json.load(open('$T/c7.json'))
assert r['state'] == 'success' and r['tasks']['a']['xcom'] == {'n': 1}, r
assert r['tasks']['b']['worker'] == 'w1', r"
rm -rf "$T/c/logs"
check "tasks logs reads a worker's log copy from the history" sh -c "'${C[0]}' --zk '$HOSTS' --history '$CH' tasks logs hist c7 b 2>/dev/null | grep -q 'hello from c7'"
# The leader killed between the history write and the live delete: the
# next leader moves the run again.
kill -9 "$S1" 2>/dev/null
(cd "$T/c" && exec env ZKFLOW_FAULT=archive-crash "${C[@]}" scheduler --dags "$T/dags" --id s2) > "$T/s2.log" 2>&1 &
S2=$!; PIDS+=("$S2"); disown "$S2"
"${C[@]}" dags trigger hist --dags "$T/dags" --run-id c41 > /dev/null 2>&1
check "the fault kills the leader after the history write" wait_for 30 sh -c "! kill -0 $S2 2>/dev/null"
live_c41() { "${C[@]}" zk ls /zkflow/runs/hist 2>/dev/null | grep -qx c41; }
check "the run is still in ZooKeeper" live_c41
(cd "$T/c" && exec "${C[@]}" scheduler --dags "$T/dags" --id s3) > "$T/s3.log" 2>&1 &
PIDS+=("$!"); disown "$!"
check "the next leader moves it: nothing left under /runs" wait_for 30 znodes_le 0
check "nothing lost, nothing twice" cruns_is 41
# An external_task sensor runs on a worker: it finds the other DAG's
# finished run in the history.
D=2026-02-01T00:00:00Z
"${C[@]}" dags trigger hist --dags "$T/dags" --run-id cx --date "$D" > /dev/null 2>&1
wait_for 30 cruns_is 42
"${C[@]}" dags trigger ext --dags "$T/dags" --run-id e1 --date "$D" > /dev/null 2>&1
ext_ok() { "${C[@]}" runs show ext e1 --json 2>/dev/null | grep -q '"state":"success"'; }
check "an external_task sensor on a worker reads a finished run from the history" wait_for 30 ext_ok
check "history_url in /config serves readers without --history" sh -c "
    '${ZKFLOW}' --zk '$HOSTS' config set history_url '$CH' > /dev/null &&
    '${ZKFLOW}' --zk '$HOSTS' runs show hist c7 --json 2>/dev/null | grep -q '\"state\":\"success\"'"

echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
