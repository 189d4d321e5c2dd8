#!/usr/bin/env bash
# Hardening probes 10-12 (issue 10): process hygiene and a store that
# cannot commit.
#
#   - a try's background children (`cmd &`, `setsid cmd &`) end with it;
#   - a `kill -9` of zkflow ends its tries' whole trees at once (each try's
#     supervisor has PR_SET_PDEATHSIG), and the try that was running is
#     visible as lost: the restart runs it again as try 2, try 1's log
#     says it was lost;
#   - with the embedded store on a full disk (a small tmpfs, so root only:
#     otherwise "skipped: needs root", counted neither passed nor failed)
#     every failed commit is logged with SQLite's message, the API answers
#     503 to changes, no try starts that the store cannot record, and when
#     space returns the store and memory agree again without a restart.
#
#   spec/hygiene_test.sh        (after `make`; prints "N passed, N failed")
set -u
cd "$(dirname "$0")/.." || exit 2

ZKFLOW=${ZKFLOW:-build/zkflow}
DAGS=spec/fixtures/sched/hygiene
TMP=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-hygiene.XXXXXX")
export HYG_OUT=$TMP
export LUA_PATH="lua/?.lua;lua/?/init.lua;;" LUA_CPATH="build/?.so;;"

passed=0
failed=0
pids=()
mounted=

ok() { passed=$((passed + 1)); echo "ok - $1"; }
not_ok() { failed=$((failed + 1)); echo "not ok - $1"; }
check() { # check DESCRIPTION COMMAND...
    local what=$1
    shift
    if "$@"; then ok "$what"; else not_ok "$what"; fi
}

cleanup() {
    for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null; done
    for f in "$TMP"/*.pids; do
        [ -f "$f" ] && while read -r p; do kill -9 "$p" 2>/dev/null; done < "$f"
    done
    [ -n "$mounted" ] && umount "$mounted" 2>/dev/null
    rm -rf "$TMP"
}
trap cleanup EXIT

wait_for() { # wait_for SECONDS COMMAND...
    local deadline=$((SECONDS + $1))
    shift
    until "$@"; do
        [ "$SECONDS" -ge "$deadline" ] && return 1
        sleep 0.1
    done
}

# A field of a run (r) or of one of its tasks, as `runs show --json` has it.
run_get() { # run_get DB DAG RUN PYTHON_EXPR
    "$ZKFLOW" runs show "$2" "$3" --db "$1" --json 2>/dev/null | python3 -c "import json,sys
try:
    r = json.load(sys.stdin)
    v = $4
    print('' if v is None else v)
except Exception:
    print('')"
}
ti_field() { # ti_field DB DAG RUN TASK FIELD: from the store (live, else history)
    lua5.4 - "$@" <<'LUA'
local core = require "zkflow.core"
local st = core.store(arg[1])
local ti = require("zkflow.state").new(st):get_ti(arg[2], arg[3], arg[4])
if not ti then
  -- A finished run moves to the history, on the same file.
  local ok, h = pcall(function() return require("zkflow.history").new("sqlite:" .. arg[1]) end)
  if ok and h then ti = h:get_ti(arg[2], arg[3], arg[4]) end
end
local v = ti and ti[arg[5]]
if v ~= nil and v ~= core.null then io.write(tostring(v)) end
st:close()
LUA
}
none_running() { # none_running FILE: no pid listed in FILE is alive
    local p
    [ -s "$1" ] || return 1
    while read -r p; do
        [ -n "$p" ] || continue
        if [ -e "/proc/$p/stat" ] && ! awk '{ exit ($3 == "Z") ? 0 : 1 }' "/proc/$p/stat" 2>/dev/null; then
            return 1
        fi
    done < "$1"
    return 0
}
all_running() {
    local p
    while read -r p; do kill -0 "$p" 2>/dev/null || return 1; done < "$1"
}
lines_in() { [ -f "$1" ] && [ "$(wc -l < "$1")" -ge "$2" ]; }

[ -x "$ZKFLOW" ] || { echo "$ZKFLOW: not built (run make)"; echo "0 passed, 1 failed"; exit 1; }

# ---- 11: background children end with their try --------------------------
DB=$TMP/zkflow.db
"$ZKFLOW" standalone "$DAGS" --db "$DB" --no-api >"$TMP/first.out" 2>&1 &
first=$!
pids+=("$first")
"$ZKFLOW" dags trigger bg --dags "$DAGS" --db "$DB" --run-id r1 >/dev/null
check "the run with background children succeeds" \
    wait_for 20 bash -c "[ \"\$(\"$ZKFLOW\" runs show bg r1 --db \"$DB\" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"state\"])' 2>/dev/null)\" = success ]"
check "the try printed its two background pids" lines_in "$TMP/bg.pids" 2
check "its 'sleep &' and 'setsid sleep &' ended with the try" wait_for 2 none_running "$TMP/bg.pids"

# ---- 11 and 12: kill -9 of zkflow while a try runs ---------------------------
"$ZKFLOW" dags trigger hold --dags "$DAGS" --db "$DB" --run-id r1 >/dev/null
check "the hold try is running with its children" wait_for 20 lines_in "$TMP/hold.pids" 3
check "hold is recorded running, try 1" \
    [ "$(ti_field "$DB" hold r1 hold state)/$(ti_field "$DB" hold r1 hold try_number)" = running/1 ]
check "its processes are alive before the kill" all_running "$TMP/hold.pids"
{ kill -9 "$first"; wait "$first"; } 2>/dev/null
check "kill -9 of zkflow ends the try's whole tree at once" wait_for 2 none_running "$TMP/hold.pids"

"$ZKFLOW" standalone "$DAGS" --db "$DB" --no-api >"$TMP/second.out" 2>&1 &
second=$!
pids+=("$second")
check "the restarted instance finishes the run" \
    wait_for 20 bash -c "[ \"\$(\"$ZKFLOW\" runs show hold r1 --db \"$DB\" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"state\"])' 2>/dev/null)\" = success ]"
check "the lost try is counted (lost = 1)" [ "$(ti_field "$DB" hold r1 hold lost)" = 1 ]
check "the try that ran again has the next number (2)" \
    [ "$(ti_field "$DB" hold r1 hold try_number)" = 2 ]
log2=$(ti_field "$DB" hold r1 hold log)
log1=${log2%.2.log}.1.log
check "try 2 has its own log ($log2)" [ -f "$log2" ]
check "try 1's log says it was lost" grep -q "try 1 lost" "$log1"
kill -TERM "$second" 2>/dev/null
wait_for 5 bash -c "! kill -0 $second 2>/dev/null"

# ---- 10: the embedded store on a full disk -----------------------------------
if [ "$(id -u)" != 0 ]; then
    echo "skipped: needs root (the full-disk checks mount a small tmpfs)"
else
    FULL=$TMP/full
    mkdir -p "$FULL"
    if ! mount -t tmpfs -o size=4m tmpfs "$FULL"; then
        not_ok "mount a tmpfs for the full-disk checks"
    else
        mounted=$FULL
        FDB=$FULL/zkflow.db
        PORT=$((20000 + RANDOM % 20000))
        API=http://127.0.0.1:$PORT/api/v1
        "$ZKFLOW" standalone "$DAGS" --db "$FDB" --api "127.0.0.1:$PORT" >"$TMP/full.out" 2>&1 &
        third=$!
        pids+=("$third")
        wait_for 10 curl -sf "$API/health" -o /dev/null
        post() { # post PATH JSON -> status code
            curl -s -o "$TMP/body" -w '%{http_code}' -X "$3" -H 'Content-Type: application/json' \
                -d "$2" "$API$1"
        }
        check "a trigger with space left answers 201" \
            [ "$(post /dags/full/runs '{"dag_run_id":"r1"}' POST)" = 201 ]
        check "t1 runs" wait_for 10 test -f "$FULL/logs/full/r1/t1.1.log"
        dd if=/dev/zero of="$FULL/fill" bs=64k >/dev/null 2>&1
        check "the disk is full" [ "$(df --output=avail "$FULL" | tail -1 | tr -d ' ')" -lt 64 ]
        check "the failed commit is logged with SQLite's message" \
            wait_for 10 grep -q "commit failed.*database or disk is full" "$TMP/full.out"
        check "the store still has r1 running (its end is rolled back)" \
            [ "$(run_get "$FDB" full r1 "r['state']")" = running ]
        check "a trigger answers 503 while the store cannot commit" \
            [ "$(post /dags/full/runs '{"dag_run_id":"r2"}' POST)" = 503 ]
        check "the 503 is a problem naming the store" \
            python3 -c "import json,sys; b=json.load(open('$TMP/body')); sys.exit(0 if b['status']==503 and 'store' in b['detail'] else 1)"
        check "a pause answers 503 too" [ "$(post /dags/full '{"is_paused":true}' PATCH)" = 503 ]
        sleep 2
        check "t2 does not start while its start cannot be committed" [ ! -e "$TMP/t2.ran" ]
        rm -f "$FULL/fill"
        check "when space returns the run ends success in the store, no restart" \
            wait_for 20 bash -c "[ \"\$(\"$ZKFLOW\" runs show full r1 --db \"$FDB\" --json 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"state\"])' 2>/dev/null)\" = success ]"
        check "t1 is success in the store" [ "$(ti_field "$FDB" full r1 t1 state)" = success ]
        check "t2 ran once, after space returned" [ "$(cat "$TMP/t2.ran" 2>/dev/null | wc -l)" = 1 ]
        check "the log says the store commits again" grep -q "commits again" "$TMP/full.out"
        check "a trigger answers 201 again" [ "$(post /dags/full/runs '{"dag_run_id":"r3"}' POST)" = 201 ]
        check "the accepted run is in the store" [ -n "$(run_get "$FDB" full r3 "r['run_id']")" ]
        check "the refused run is not" [ -z "$(run_get "$FDB" full r2 "r['run_id']")" ]
        check "the DAG is not paused (the 503 pause changed nothing)" \
            [ "$("$ZKFLOW" dags list --db "$FDB" --dags "$DAGS" --json 2>/dev/null | python3 -c "import json,sys; print([d['paused'] for d in json.load(sys.stdin)['dags'] if d['dag_id']=='full'][0])" 2>/dev/null)" = False ]
        check "the standalone is still running" kill -0 "$third"
        kill -TERM "$third" 2>/dev/null
        wait_for 5 bash -c "! kill -0 $third 2>/dev/null"
    fi
fi

if [ "$failed" -gt 0 ]; then
    for f in first second full; do
        [ -f "$TMP/$f.out" ] && { echo "--- $f instance output"; tail -40 "$TMP/$f.out"; }
    done
fi
echo "$passed passed, $failed failed"
[ "$failed" -eq 0 ]
