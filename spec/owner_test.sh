#!/usr/bin/env bash
# One owner per store: at most one scheduler schedules an embedded store,
# whatever started it.  A backfill beside a running standalone hands its
# runs to it; a second standalone and a `dags test --db` on that store are
# refused; every task of both ran exactly once, no retry spent.
#
#   bash spec/owner_test.sh          (ZKFLOW=path/to/zkflow to test another)
#
# Prints "ok NAME" / "FAIL NAME: why" and ends with "N passed, N failed".

set -u
cd "$(dirname "$0")/.." || exit 1
ZKFLOW=${ZKFLOW:-$PWD/${B:-build}/zkflow}
T=$(mktemp -d /tmp/zkflow-owner.XXXXXX)
mkdir -p "$T/work/dags" "$T/tmp"
export TMPDIR=$T/tmp
PASSED=0
FAILED=0
SA_PID=
unset ZKFLOW_DB ZKFLOW_DAGS ZKFLOW_ZK

cleanup() {
    if [ -n "$SA_PID" ]; then
        kill -KILL "$SA_PID" 2>/dev/null
        wait "$SA_PID" 2>/dev/null
    fi
    rm -rf "$T"
}
trap cleanup EXIT

ok() { PASSED=$((PASSED + 1)); echo "ok $1"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }

# run CMD...: zkflow in $T/work with a time limit; $RC, $T/out, $T/err
run() {
    (cd "$T/work" && timeout -s KILL 60 "$ZKFLOW" "$@") >"$T/out" 2>"$T/err"
    RC=$?
}

# Each task appends "<run_id> <task_id> <try>" to ran.txt, slowly enough
# that the backfill's runs and the standalone's overlap.
cat > "$T/work/dags/owned.lua" <<EOF
local flow = require "zkflow"
return flow.dag { id = "owned", schedule = "@daily",
  start_date = "2026-01-01T00:00:00Z", catchup = false, max_active_runs = 8,
  tasks = function(t)
    local a = t.shell { id = "a",
      cmd = "echo {{ run_id }} a {{ ti.try_number }} >> $T/ran.txt; sleep 0.3" }
    local b = t.shell { id = "b",
      cmd = "echo {{ run_id }} b {{ ti.try_number }} >> $T/ran.txt; sleep 0.3" }
    local _ = a >> b
  end }
EOF

PORT=$((20000 + RANDOM % 20000))
(cd "$T/work" && exec "$ZKFLOW" standalone dags --api "127.0.0.1:$PORT") \
    >"$T/sa.out" 2>"$T/sa.err" &
SA_PID=$!
up=0
for _ in $(seq 1 50); do
    if grep -q "zkflow standalone:" "$T/sa.out" 2>/dev/null; then up=1; break; fi
    sleep 0.1
done
if [ $up = 1 ]; then ok "the standalone starts"; else bad "the standalone starts" "$(cat "$T/sa.err")"; fi

# The standalone's own runs, while the backfill runs beside it.
for i in 1 2 3; do run dags trigger owned --run-id "live$i"; done
run dags backfill owned --start 2026-02-01 --end 2026-02-04 --json
if [ "$RC" = 0 ]; then ok "a backfill beside the standalone succeeds"; else bad "a backfill beside the standalone succeeds" "exit $RC: $(tail -3 "$T/err")"; fi
if grep -q "that scheduler runs these runs" "$T/err"; then
    ok "the backfill hands its runs to the store's owner"
else
    bad "the backfill hands its runs to the store's owner" "$(head -3 "$T/err")"
fi
if grep -q "backfill: 4/4 runs done" "$T/err"; then ok "the backfill follows them with its progress"; else bad "backfill progress" "$(cat "$T/err")"; fi

# Every run of both ends; then each (run, task) ran once, on try 1.
for i in 1 2 3; do
    for _ in $(seq 1 100); do
        run runs show owned "live$i" --json
        if grep -q '"state":"success"' "$T/out" || grep -q '"state":"failed"' "$T/out"; then break; fi
        sleep 0.1
    done
done
# (the standalone's own scheduled run of the latest interval is there too)
lines=$(grep -vc "^scheduled__" "$T/ran.txt" 2>/dev/null || echo 0)
dups=$(awk '{print $1, $2}' "$T/ran.txt" | sort | uniq -d | wc -l)
retries=$(awk '$3 != 1' "$T/ran.txt" | wc -l)
if [ "$lines" = 14 ] && [ "$dups" = 0 ]; then
    ok "every task of both ran exactly once (14 tries)"
else
    bad "every task of both ran exactly once" "$lines lines, $dups twice: $(sort "$T/ran.txt" | tr '\n' ';')"
fi
if [ "$retries" = 0 ]; then ok "no retry was spent"; else bad "no retry was spent" "$(awk '$3 != 1' "$T/ran.txt")"; fi
tries_ok=1
for rid in live1 live2 live3 backfill__2026-02-01T00:00:00+00:00 backfill__2026-02-04T00:00:00+00:00; do
    run runs show owned "$rid" --json
    if ! /usr/bin/python3 -c 'import json, sys
v = json.load(open(sys.argv[1]))
ok = v["state"] == "success" and all(t["try_number"] == 1 for t in v["tasks"].values())
sys.exit(0 if ok else 1)' "$T/out" 2>/dev/null; then
        tries_ok=0
        echo "    $rid: $(head -c 300 "$T/out")"
    fi
done
if [ $tries_ok = 1 ]; then ok "runs show: success, try_number 1 everywhere"; else bad "runs show: try_number 1 everywhere" "see above"; fi

# A second scheduler on the owned store is refused, with the owner named.
run standalone dags --api "127.0.0.1:$((PORT + 1))"
if [ "$RC" = 1 ] && grep -q "is scheduled by process $SA_PID" "$T/err"; then
    ok "a second standalone on the store exits 1 and names the owner"
else
    bad "a second standalone is refused" "exit $RC: $(cat "$T/err")"
fi
run scheduler
if [ "$RC" = 1 ] && grep -q "zkflow.db.scheduler.lock" "$T/err"; then
    ok "zkflow scheduler on the store is refused too"
else
    bad "zkflow scheduler is refused" "exit $RC: $(cat "$T/err")"
fi
run --db zkflow.db dags test owned
if [ "$RC" = 1 ] && grep -q "is scheduled by" "$T/err"; then
    ok "dags test --db on an owned store is refused"
else
    bad "dags test --db on an owned store is refused" "exit $RC: $(cat "$T/err")"
fi
run dags test owned
if [ "$RC" = 0 ]; then ok "dags test without --db runs beside it"; else bad "dags test without --db" "exit $RC: $(tail -3 "$T/err")"; fi
if ! grep -q "resuming run" "$T/sa.err"; then
    ok "the standalone adopted no run"
else
    bad "the standalone adopted no run" "$(grep "resuming run" "$T/sa.err")"
fi

kill -TERM "$SA_PID" 2>/dev/null
wait "$SA_PID" 2>/dev/null
SA_PID=

# Without a live owner the backfill schedules its runs itself.
run dags backfill owned --start 2026-03-01 --end 2026-03-02
if [ "$RC" = 0 ] && ! grep -q "that scheduler runs" "$T/err" \
   && grep -q "backfill: 2/2 runs done" "$T/err"; then
    ok "without an owner the backfill runs its own scheduler"
else
    bad "without an owner the backfill runs its own scheduler" "exit $RC: $(cat "$T/err")"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
