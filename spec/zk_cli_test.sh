#!/bin/bash
# spec/zk_cli_test.sh - `zkflow zk ls|get|set|rm|dump|restore|health` on the
# embedded store and, when ZKFLOW_TEST_ZK names a server (spec/zk_test.sh
# starts one), on ZooKeeper with --zk; `dags trigger` / `runs list` with
# --zk; bad input: a malformed dump (nothing restored), an unreachable
# ensemble (a clear error at once when every host refuses; a daemon tries
# again), a chroot that does not exist (named; a daemon waits for it).  Ends with "N passed, N
# failed".
set -u
cd "$(dirname "$0")/.." || exit 1
ROOT=$PWD
ZKFLOW=${ZKFLOW:-$ROOT/${B:-build}/zkflow}
T=$(mktemp -d /tmp/zkflow-zkcli.XXXXXX)
trap 'rm -rf "$T"' EXIT
unset ZKFLOW_ZK ZKFLOW_DB
PASS=0
FAIL=0

ok() { PASS=$((PASS + 1)); echo "ok $1"; }
bad() { FAIL=$((FAIL + 1)); echo "not ok $1: $2"; }
# check NAME EXPECTED ACTUAL
check() { if [ "$2" = "$3" ]; then ok "$1"; else bad "$1" "expected '$2', got '$3'"; fi; }

suite() {
    local name=$1; shift
    local Z=("$ZKFLOW" "$@")
    local base=/cli-$$-$RANDOM
    "${Z[@]}" zk set "$base/a" hello
    printf '\377\000\376' | "${Z[@]}" zk set "$base/bin"
    "${Z[@]}" zk set "$base/empty" ""
    "${Z[@]}" zk set "$base/empty/deep" x
    check "$name: ls" "a bin empty" "$("${Z[@]}" zk ls "$base" | tr '\n' ' ' | sed 's/ $//')"
    check "$name: get" "hello" "$("${Z[@]}" zk get "$base/a")"
    "${Z[@]}" zk dump "$base" "$T/$name.json" 2> /dev/null
    check "$name: dump keeps empty data and base64" "utf8 base64 ''" \
        "$(python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))
c=d['children']; print(c['a']['encoding'], c['bin']['encoding'], repr(c['empty']['data']))" "$T/$name.json")"
    "${Z[@]}" zk rm "$base" 2> "$T/err"
    check "$name: rm refuses a node with children" "1 ZNOTEMPTY" "$? $(grep -o ZNOTEMPTY "$T/err")"
    "${Z[@]}" zk rm --recursive "$base"
    check "$name: rm --recursive" "1" "$("${Z[@]}" zk ls "$base" > /dev/null 2>&1; echo $?)"
    check "$name: restore --dry-run" "create $base/empty/deep" \
        "$("${Z[@]}" zk restore "$base" "$T/$name.json" --dry-run 2> /dev/null | tail -1)"
    check "$name: dry run writes nothing" "1" "$("${Z[@]}" zk get "$base" > /dev/null 2>&1; echo $?)"
    "${Z[@]}" zk restore "$base" "$T/$name.json" 2> /dev/null
    check "$name: restore brings binary data back" "$(printf '\377\000\376' | od -An -tx1)" \
        "$("${Z[@]}" zk get "$base/bin" | head -c 3 | od -An -tx1)"
    "${Z[@]}" zk set "$base/a" changed
    "${Z[@]}" zk restore "$base" "$T/$name.json" 2> /dev/null
    check "$name: restore keeps existing data" "changed" "$("${Z[@]}" zk get "$base/a")"
    "${Z[@]}" zk restore "$base" "$T/$name.json" --overwrite 2> /dev/null
    check "$name: restore --overwrite" "hello" "$("${Z[@]}" zk get "$base/a")"
    # A dump whose last node is malformed: an error naming it, nothing written.
    python3 -c "
import json,sys; d=json.load(open(sys.argv[1]))
d['children']['zz'] = {'data': 'x', 'encoding': 'rot13'}
json.dump(d, open(sys.argv[2], 'w'))" "$T/$name.json" "$T/bad.json"
    "${Z[@]}" zk restore /elsewhere-$$ "$T/bad.json" 2> "$T/err"
    check "$name: malformed dump fails" "1" "$?"
    if grep -q "malformed dump: 'encoding' must be \"utf8\" or \"base64\", got \"rot13\" (node /elsewhere-$$/zz" "$T/err"; then
        ok "$name: malformed dump error names the node"
    else
        bad "$name: malformed dump error names the node" "$(cat "$T/err")"
    fi
    check "$name: malformed dump restores nothing" "1" \
        "$("${Z[@]}" zk get /elsewhere-$$ > /dev/null 2>&1; echo $?)"
    echo '{"path": "/x", "children": ' > "$T/cut.json"
    "${Z[@]}" zk restore /x "$T/cut.json" 2> "$T/err"
    check "$name: truncated dump" "1 1" "$? $(grep -c 'malformed dump: json' "$T/err")"
    "${Z[@]}" zk get /bad//path 2> "$T/err"
    check "$name: invalid path" "1 1" "$? $(grep -c ZBADARGUMENTS "$T/err")"
    head -c 1048577 /dev/zero | tr '\0' x | "${Z[@]}" zk set /big 2> "$T/err"
    check "$name: data over 1 MiB" "1 1" "$? $(grep -c ZBADARGUMENTS "$T/err")"
    "${Z[@]}" zk rm --recursive "$base"
}

suite sqlite --db "$T/zkflow.db"

if [ -n "${ZKFLOW_TEST_ZK:-}" ]; then
    suite zk --zk "$ZKFLOW_TEST_ZK"
    out=$("$ZKFLOW" zk health --zk "$ZKFLOW_TEST_ZK")
    check "zk health" "0 ok standalone" "$? $(echo "$out" | awk 'NR == 2 { print $2, $3 }')"
    "$ZKFLOW" zk health "$ZKFLOW_TEST_ZK,127.0.0.1:1" --timeout 1 > "$T/out" 2> "$T/err"
    check "zk health fails when a member does not serve" "1 1" \
        "$? $(grep -c '127.0.0.1:1: connect 127.0.0.1:1: Connection refused' "$T/err")"
    "$ZKFLOW" zk health --json --zk "$ZKFLOW_TEST_ZK" > "$T/h.json"
    check "zk health --json" "True standalone" \
        "$(python3 -c "import json,sys; m=list(json.load(open(sys.argv[1])).values())[0]; print(m['ok'], m['mode'])" "$T/h.json")"
    # the store commands on a ZooKeeper store
    root=/zkflow-cli-$$
    run_id=$("$ZKFLOW" --zk "$ZKFLOW_TEST_ZK" --root "$root" --dags examples/dags dags trigger tutorial)
    check "dags trigger --zk" "0" "$?"
    check "runs list --zk" "$run_id queued" \
        "$("$ZKFLOW" --zk "$ZKFLOW_TEST_ZK" --root "$root" --dags examples/dags runs list tutorial | awk 'NR == 2 { print $2, $3 }')"
    "$ZKFLOW" --zk "$ZKFLOW_TEST_ZK" zk rm --recursive "$root"
    # examples against the real server
    for f in examples/dags/zk_*.lua; do
        if ZKFLOW_ZK=$ZKFLOW_TEST_ZK "$ZKFLOW" dags test "$f" > "$T/out" 2>&1; then
            ok "example $(basename "$f") on ZooKeeper"
        else
            bad "example $(basename "$f") on ZooKeeper" "$(tail -3 "$T/out")"
        fi
    done
    # A chroot that does not exist: a one-shot command names it; a daemon
    # waits for it, and its members register and work once it is made.
    chroot=/zkf-$$
    "$ZKFLOW" --zk "$ZKFLOW_TEST_ZK$chroot" zk ls / 2> "$T/err"
    check "a missing chroot: exit 1 naming it" "1 1" \
        "$? $(grep -c "$chroot does not exist; create it or drop the chroot" "$T/err")"
    mkdir -p "$T/cdags"
    printf 'local flow = require "zkflow"\nreturn flow.dag { id = "chrooted", start_date = "2026-01-01T00:00:00Z",\n  tasks = function(t) t.shell { id = "x", cmd = "true" } end }\n' > "$T/cdags/c.lua"
    (cd "$T" && exec "$ZKFLOW" --zk "$ZKFLOW_TEST_ZK$chroot" standalone "$T/cdags" --no-api --id ch) > "$T/ch.log" 2>&1 &
    chpid=$!
    sleep 1.5
    check "a daemon says once that the chroot is missing, and waits" "1 yes" \
        "$(grep -c "$chroot does not exist; create it or drop the chroot (waiting for it)" "$T/ch.log") $(kill -0 $chpid 2>/dev/null && echo yes)"
    "$ZKFLOW" --zk "$ZKFLOW_TEST_ZK" zk set "$chroot" "" > /dev/null
    registered() {
        "$ZKFLOW" --zk "$ZKFLOW_TEST_ZK$chroot" members --json 2>/dev/null | python3 -c 'import json,sys
m = json.load(sys.stdin)
sys.exit(0 if [s["leader"] for s in m["schedulers"]] == [True] and len(m["workers"]) == 1 else 1)'
    }
    for _ in $(seq 1 50); do registered && break; sleep 0.2; done
    check "once the chroot exists its scheduler leads and its worker registers" "0" "$(registered; echo $?)"
    crun=$("$ZKFLOW" --zk "$ZKFLOW_TEST_ZK$chroot" dags trigger chrooted --dags "$T/cdags" 2>/dev/null)
    cstate() { "$ZKFLOW" --zk "$ZKFLOW_TEST_ZK$chroot" tasks state chrooted "$crun" x 2>/dev/null; }
    for _ in $(seq 1 50); do [ "$(cstate)" = success ] && break; sleep 0.2; done
    check "and its worker runs the tries" "success" "$(cstate)"
    kill -TERM $chpid 2>/dev/null
    wait $chpid 2>/dev/null
    "$ZKFLOW" --zk "$ZKFLOW_TEST_ZK" zk rm --recursive "$chroot" > /dev/null 2>&1
else
    echo "# zk part skipped: no ZKFLOW_TEST_ZK"
fi

start=$(date +%s)
"$ZKFLOW" --zk 127.0.0.1:1 --session-timeout 2 zk ls / 2> "$T/err"
rc=$?
took=$(( $(date +%s) - start ))
if [ "$rc" = 1 ] && grep -q "cannot connect to ZooKeeper at 127.0.0.1:1: ZCONNECTIONLOSS" "$T/err" && [ "$took" -le 5 ]; then
    ok "unreachable ensemble: a clear error after the timeout"
else
    bad "unreachable ensemble" "rc $rc after ${took}s: $(cat "$T/err")"
fi

# Connection refused on every host: said at once, hosts named, not after
# the session timeout (10 s here).
start=$(date +%s%N)
"$ZKFLOW" --zk 127.0.0.1:1,127.0.0.1:2 --session-timeout 10 zk ls / 2> "$T/err"
rc=$?
took=$(( ($(date +%s%N) - start) / 1000000 ))
if [ "$rc" = 1 ] && grep -q "127.0.0.1:1: Connection refused, 127.0.0.1:2: Connection refused" "$T/err" &&
        [ "$took" -le 1500 ]; then
    ok "connection refused on every host: exit 1 within 1.5 s naming them (${took} ms)"
else
    bad "connection refused on every host" "rc $rc after ${took} ms: $(cat "$T/err")"
fi
# A daemon says so once per try, waiting longer each time, and goes on.
mkdir -p "$T/wdags"
(cd "$T" && exec "$ZKFLOW" --zk 127.0.0.1:1 worker --dags "$T/wdags") > "$T/w.log" 2>&1 &
wpid=$!
sleep 4
check "a daemon retries: one line per try, after 1 s, 2 s, 4 s (and runs on)" "1 2 4 yes" \
    "$(grep 'cannot connect to ZooKeeper at 127.0.0.1:1: .*Connection refused' "$T/w.log" |
       sed -n 's/.*trying again in \([0-9]*\) s$/\1/p' | head -3 | tr '\n' ' ')$(kill -0 $wpid 2>/dev/null && echo yes)"
kill -TERM $wpid 2>/dev/null
wait $wpid 2>/dev/null

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
