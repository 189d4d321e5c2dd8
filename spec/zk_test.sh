#!/bin/bash
# spec/zk_test.sh - the tests that need a real ZooKeeper: starts one
# server (spec/zk/harness.sh), runs the C tests of zk.c, the store
# conformance spec against both backends, the zkflow.zk specs (client and
# recipes; they start a 3-node ensemble of their own for one test) and the
# kazoo interop test and `zkflow config --zk`, stops the server.  Ends with
# "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
LUA=${LUA:-lua5.4}
export LUA_PATH="lua/?.lua;lua/?/init.lua;;"
export LUA_CPATH="$B/?.so;;"
export ZKFLOW_ZK_DIR=${ZKFLOW_ZK_DIR:-$(mktemp -d /tmp/zkflow-zk-test.XXXXXX)}
PASS=0
FAIL=0

if ! command -v java > /dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
    echo "zk: no java or zookeeper.jar (make deps installs them)"
    echo "0 passed, 1 failed"
    exit 1
fi
HOSTS=$(bash spec/zk/harness.sh start1) || {
    echo "zk: the ZooKeeper server did not start"
    echo "0 passed, 1 failed"
    exit 1
}
trap 'bash spec/zk/harness.sh stop' EXIT
export ZKFLOW_TEST_ZK=$HOSTS
echo "zk: server at $HOSTS"

if [ -x "$B/test/test_zk" ]; then
    out=$("$B/test/test_zk" 2>&1)
    # Its own summary is renamed so that run-all.sh counts it once.
    echo "$out" | sed -E 's/^([0-9]+ passed, [0-9]+ failed)/test_zk: \1/'
    # shellcheck disable=SC2046  # two numbers, split on purpose
    set -- $(echo "$out" | awk '/^[0-9]+ passed, [0-9]+ failed/ { p = $1; f = $3 } END { print p + 0, f + 0 }')
    PASS=$((PASS + $1)); FAIL=$((FAIL + $2))
    echo "$out" | grep -qE '^[0-9]+ passed' || FAIL=$((FAIL + 1))
else
    echo "zk: $B/test/test_zk is not built"; FAIL=$((FAIL + 1))
fi

for spec in spec/store_spec.lua spec/zk_client_spec.lua spec/zk_recipes_spec.lua; do
    [ -f "$spec" ] || continue
    out=$(busted --lua="$LUA" -o TAP "$spec" 2>&1)
    echo "$out" | grep -vE '^\s*(\[C\]|/usr/share/lua|\.\.\.)' | grep -E '^(not )?ok |^#' | head -200
    p=$(echo "$out" | grep -cE '^ok ')
    f=$(echo "$out" | grep -cE '^not ok ')
    [ "$p" -eq 0 ] && f=$((f + 1))
    PASS=$((PASS + p)); FAIL=$((FAIL + f))
done

# zkflow.zk against python3-kazoo on the same server.
if [ -f spec/zk_interop_test.sh ]; then
    out=$(B="$B" bash spec/zk_interop_test.sh 2>&1)
    echo "$out" | grep -vE '^[0-9]+ passed, [0-9]+ failed'
    # shellcheck disable=SC2046  # two numbers, split on purpose
    set -- $(echo "$out" | awk '/^[0-9]+ passed, [0-9]+ failed/ { p = $1; f = $3 } END { print p + 0, f + 0 }')
    PASS=$((PASS + $1)); FAIL=$((FAIL + $2))
    echo "$out" | grep -qE '^[0-9]+ passed' || FAIL=$((FAIL + 1))
fi

# The ZooKeeper operators (spec/zk_ops_spec.lua, both backends).
out=$(busted --lua="$LUA" -o TAP spec/zk_ops_spec.lua 2>&1)
echo "$out" | grep -E '^(not )?ok |^#' | head -200
p=$(echo "$out" | grep -cE '^ok ')
f=$(echo "$out" | grep -cE '^not ok ')
[ "$p" -eq 0 ] && f=$((f + 1))
PASS=$((PASS + p)); FAIL=$((FAIL + f))

# The `zkflow zk` commands and --zk (spec/zk_cli_test.sh).
out=$(bash spec/zk_cli_test.sh 2>&1)
echo "$out" | sed -E 's/^([0-9]+ passed, [0-9]+ failed)/zk_cli: \1/'
# shellcheck disable=SC2046  # two numbers, split on purpose
set -- $(echo "$out" | awk '/^[0-9]+ passed, [0-9]+ failed/ { p = $1; f = $3 } END { print p + 0, f + 0 }')
PASS=$((PASS + $1)); FAIL=$((FAIL + $2))
echo "$out" | grep -qE '^[0-9]+ passed' || FAIL=$((FAIL + 1))

# `zkflow config` on ZooKeeper: the same node, versions and retries as on
# the embedded store.
zcheck() { if [ "$2" = "$3" ]; then echo "ok $1"; PASS=$((PASS + 1)); else echo "not ok $1: expected '$2', got '$3'"; FAIL=$((FAIL + 1)); fi; }
ZR=/zkflow-config-$$
Z=("$B/zkflow" --zk "$HOSTS" --root "$ZR")
"${Z[@]}" config set parallelism 6 > /dev/null
"${Z[@]}" config set pools.db 3 > /dev/null
zcheck "config --zk: set and get" "6 3" \
    "$("${Z[@]}" config get parallelism) $("${Z[@]}" config get pools.db)"
zcheck "config --zk: one JSON object at <root>/config" '{"parallelism":6,"pools":{"db":3}}' \
    "$("${Z[@]}" zk get "$ZR/config")"
"${Z[@]}" config set parallelism 0 2> /dev/null
zcheck "config --zk: a bad value is refused" "2 6" "$? $("${Z[@]}" config get parallelism)"
"${Z[@]}" config unset pools.db
zcheck "config --zk: unset" "1" "$("${Z[@]}" config get pools.db > /dev/null 2>&1; echo $?)"
zpids=()
for i in 1 2 3 4 5; do
    (for j in 1 2 3; do "${Z[@]}" config set "w$i.k$j" 1 > /dev/null || exit 1; done) &
    zpids+=($!)
done
zrc=0
for p in "${zpids[@]}"; do wait "$p" || zrc=1; done
zcheck "config --zk: five concurrent writers, every key lands" "0 15" \
    "$zrc $("${Z[@]}" config get | grep -c '^w[1-5]\.k[1-3] = 1$')"
"${Z[@]}" zk rm --recursive "$ZR" 2> /dev/null

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
