#!/usr/bin/env bash
# Fault recovery of the standalone scheduler: a `zkflow standalone` killed
# with SIGKILL in the middle of a run, started again on the same store,
# finishes the run without re-running the tasks that had ended.  The shell
# tasks of the dead instance die with it (their supervisors' PDEATHSIG);
# a restart also kills the process groups its records name, when they are
# still the tries' own.
#
#   spec/recovery_test.sh        (after `make`; prints "N passed, N failed")
set -u
cd "$(dirname "$0")/.." || exit 2

ZKFLOW=${ZKFLOW:-build/zkflow}
DAGS=spec/fixtures/sched/recovery
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-recovery.XXXXXX")
DB=$TMP/zkflow.db
export RECOVERY_OUT=$TMP
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;"

passed=0
failed=0
pids=()

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    for g in ${old_groups:-}; do kill -9 -- "-$g" 2>/dev/null; done
    rm -rf "$TMP"
}
trap cleanup EXIT

# A field of a task instance record, read straight from the store.
ti_field() { # ti_field TASK FIELD
    lua5.4 - "$DB" "$1" "$2" <<'LUA'
local core = require "zkflow.core"
local db, task, field = arg[1], arg[2], arg[3]
local st = core.store(db)
local ti = require("zkflow.state").new(st):get_ti("recovery", "r1", task)
local v = ti and ti[field]
if v ~= nil and v ~= core.null then io.write(tostring(v)) end
st:close()
LUA
}

# The run object as `runs show --json` prints it, one field through python.
run_json() { "$ZKFLOW" runs show recovery r1 --db "$DB" --json 2>/dev/null; }
json_get() { # json_get PYTHON_EXPR  (on the run object `r`)
    run_json | python3 -c "import json,sys
try:
    r = json.load(sys.stdin)
    v = $1
    print('' if v is None else v)
except Exception:
    print('')"
}

wait_for() { # wait_for SECONDS COMMAND...
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

lines() { if [ -f "$TMP/$1.count" ]; then wc -l < "$TMP/$1.count" | tr -d ' '; else echo 0; fi; }
slow_running() {
    [ "$(ti_field slow1 state)" = running ] && [ "$(ti_field slow2 state)" = running ] &&
        [ -n "$(ti_field slow1 pid)" ] && [ -n "$(ti_field slow2 pid)" ]
}
group_alive() { kill -0 -- "-$1" 2>/dev/null; }
groups_dead() { for g in $old_groups; do group_alive "$g" && return 1; done; return 0; }
run_success() { [ "$(json_get "r['state']")" = success ]; }

[ -x "$ZKFLOW" ] || { echo "$ZKFLOW: not built (run make)"; echo "0 passed, 1 failed"; exit 1; }

"$ZKFLOW" dags trigger recovery --dags "$DAGS" --db "$DB" --run-id r1 >/dev/null
check "the run is triggered" [ "$(json_get "r['state']")" = queued ]

# ---- first instance: killed while slow1 and slow2 run -----------------------
"$ZKFLOW" standalone "$DAGS" --db "$DB" --no-api >"$TMP/first.out" 2>&1 &
first=$!
pids+=("$first")
check "the first instance reaches the slow tasks" wait_for 10 slow_running
old_groups="$(ti_field slow1 pid) $(ti_field slow2 pid)"
check "a and b finished before the crash" \
    [ "$(ti_field a state)/$(ti_field b state)" = success/success ]
# Each try's supervisor has PR_SET_PDEATHSIG: its tree dies with zkflow.
# The restart's kill of the recorded groups stays the fallback (a
# supervisor killed together with zkflow, say), probed below.
{ kill -9 "$first"; wait "$first"; } 2>/dev/null
check "the killed instance's shell tasks die with it" wait_for 3 groups_dead

# Hardening probe 11: slow2's group ends and its number is taken by an
# unrelated process before the restart (a recycled pid); the restart must
# leave that process alone.
slow2_group=$(ti_field slow2 pid)
kill -9 -- "-$slow2_group" 2>/dev/null
unrelated=$(sh -c 'setsid sleep 60 >/dev/null 2>&1 & echo $!')
pids+=("$unrelated")
lua5.4 - "$DB" "$unrelated" <<'LUA'
local core = require "zkflow.core"
local st = core.store(arg[1])
require("zkflow.state").new(st):update_ti("recovery", "r1", "slow2", { pid = tonumber(arg[2]) })
st:flush()
st:close()
LUA
check "slow2's record now names the unrelated process" [ "$(ti_field slow2 pid)" = "$unrelated" ]

# ---- second instance: resumes the run ------------------------------------------
"$ZKFLOW" standalone "$DAGS" --db "$DB" --no-api >"$TMP/second.out" 2>&1 &
second=$!
pids+=("$second")
# The orphans sleep 6 s; the new instance must kill them well before that.
check "the new instance kills the dead instance's process groups" wait_for 3 groups_dead
check "the run finishes" wait_for 20 run_success
check "the run succeeded" [ "$(json_get "r['state']")" = success ]
for t in a b; do
    check "$t is not re-run (try_number 1)" [ "$(json_get "r['tasks']['$t']['try_number']")" = 1 ]
    check "$t ran once (one line in $t.count)" [ "$(lines "$t")" = 1 ]
done
for t in slow1 slow2; do
    check "$t ran again after the crash and succeeded" \
        [ "$(json_get "r['tasks']['$t']['state']")" = success ]
    check "$t has two executions (the lost one and the new one)" [ "$(lines "$t")" = 2 ]
done
check "c ran once after the slow tasks" [ "$(lines c)" = 1 ]
check "c succeeded" [ "$(json_get "r['tasks']['c']['state']")" = success ]
check "no sleep of the first instance survives" groups_dead
check "the unrelated process that took a recorded group id is left alone" kill -0 "$unrelated"
check "the restart says why it left it alone" grep -q "is not this try's any more" "$TMP/second.out"

kill -TERM "$second" 2>/dev/null
wait_for 5 bash -c "! kill -0 $second 2>/dev/null"
check "the second instance stops on SIGTERM" bash -c "! kill -0 $second 2>/dev/null"

if [ "$failed" -gt 0 ]; then
    echo "--- first instance output"; cat "$TMP/first.out"
    echo "--- second instance output"; cat "$TMP/second.out"
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
