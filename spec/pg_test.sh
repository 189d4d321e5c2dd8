#!/bin/bash
# spec/pg_test.sh - the tests that need a real PostgreSQL server: starts
# one (spec/pg/harness.sh, into a temporary directory), runs the SQL
# contract spec against it (and against SQLite, where that driver is
# built), stops the server, also on failure.  Ends with "N passed, N
# failed".
set -u
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
LUA=${LUA:-lua5.4}
export LUA_PATH="lua/?.lua;lua/?/init.lua;;"
export LUA_CPATH="$B/?.so;;"
ZKFLOW_PG_DIR=$(mktemp -d /tmp/zkflow-pg-test.XXXXXX)
export ZKFLOW_PG_DIR
PASS=0
FAIL=0

trap 'bash spec/pg/harness.sh stop' EXIT
trap 'exit 130' INT TERM    # through the EXIT trap: the server stops
ZKFLOW_TEST_PG=$(bash spec/pg/harness.sh start) || {
    echo "pg: the PostgreSQL server did not start (make deps installs postgresql)"
    echo "0 passed, 1 failed"
    exit 1
}
export ZKFLOW_TEST_PG
echo "pg: server at $ZKFLOW_TEST_PG"

for spec in spec/sql_spec.lua; do
    out=$(busted --lua="$LUA" -o TAP "$spec" 2>&1)
    echo "$out" | grep -vE '^\s*(\[C\]|/usr/share/lua|\.\.\.)' | grep -E '^(not )?ok |^#' | head -200
    p=$(echo "$out" | grep -cE '^ok ')
    f=$(echo "$out" | grep -cE '^not ok ')
    [ "$p" -eq 0 ] && f=$((f + 1))
    PASS=$((PASS + p)); FAIL=$((FAIL + f))
done

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
