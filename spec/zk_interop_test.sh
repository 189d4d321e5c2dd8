#!/bin/bash
# spec/zk_interop_test.sh - zkflow.zk and python3-kazoo on one ZooKeeper
# server: their locks exclude each other both ways, each sees the other as a
# contender, and what one writes the other reads.  The zkflow side runs as a
# plain lua5.4 script (calls block) and as a `zkflow lua` script (a
# coroutine on the loop).  Uses $ZKFLOW_TEST_ZK when set (spec/zk_test.sh),
# else starts a server of its own.  Ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
export LUA_PATH="lua/?.lua;lua/?/init.lua;;"
export LUA_CPATH="$B/?.so;;"
PY=/usr/bin/python3
PASS=0
FAIL=0
T=$(mktemp -d /tmp/zkflow-interop.XXXXXX)
OWN=""

ok() { echo "ok - $1"; PASS=$((PASS + 1)); }
bad() { echo "not ok - $1${2:+: $2}"; FAIL=$((FAIL + 1)); }
# same GOT WANT NAME: ok when GOT is WANT, else not ok showing GOT
same() { if [ "$1" = "$2" ]; then ok "$3"; else bad "$3" "$1"; fi; }

cleanup() {
    [ -n "$OWN" ] && bash spec/zk/harness.sh stop
    rm -rf "$T"
}
trap cleanup EXIT

if ! $PY -c 'import kazoo.client' 2> /dev/null; then
    echo "zk interop: python3-kazoo is not installed"
    echo "0 passed, 1 failed"
    exit 1
fi
if [ -z "${ZKFLOW_TEST_ZK:-}" ]; then
    export ZKFLOW_ZK_DIR=$T/zk
    OWN=1
    ZKFLOW_TEST_ZK=$(bash spec/zk/harness.sh start1) || {
        echo "zk interop: the ZooKeeper server did not start"
        echo "0 passed, 1 failed"
        exit 1
    }
fi
H=$ZKFLOW_TEST_ZK
P=/zkflow-interop-$$-$RANDOM

cat > "$T/side.lua" <<'LUA'
-- the zkflow side: side.lua HOSTS CMD PATH [ARGS]; the same commands as
-- spec/zk/interop_kazoo.py
local zk = require "zkflow.zk"
local async = require "zkflow.async"
local hosts, cmd, path = arg[1], arg[2], arg[3]
local function pause()
    if coroutine.isyieldable() then async.sleep(0.05) else os.execute("sleep 0.05") end
end
local function exists(f)
    local h = io.open(f, "r")
    if h then h:close() end
    return h ~= nil
end
local c = zk.connect(hosts, { timeout = 5 })
local code = 0
if cmd == "hold" then
    local lk = assert(c:lock(path, { timeout = 10, id = "zkflow" }))
    io.open(arg[4], "w"):close()
    local t0 = os.time()
    while not exists(arg[5]) and os.time() - t0 < 30 do pause() end
    lk:release()
elseif cmd == "try" then
    local lk, err = c:lock(path, { timeout = tonumber(arg[4]), id = "zkflow" })
    if lk then lk:release() else io.stderr:write(err, "\n"); code = 3 end
elseif cmd == "set" then
    c:ensure_path(path)
    c:set(path, (arg[4]:gsub("%x%x", function(h) return string.char(tonumber(h, 16)) end)))
elseif cmd == "get" then
    print((c:get(path):gsub(".", function(ch) return string.format("%02x", ch:byte()) end)))
end
c:close()
if code ~= 0 then os.exit(code) end
LUA

# The two ways to run the zkflow side.
RUNNERS=("lua5.4")
if [ -x "$B/zkflow" ]; then RUNNERS+=("$B/zkflow lua"); fi

wait_file() {
    local f=$1 _
    for _ in $(seq 1 200); do [ -e "$f" ] && return 0; sleep 0.05; done
    return 1
}

for R in "${RUNNERS[@]}"; do
    name=${R%% *}; name=${name##*/}
    L=$P/$name
    # kazoo holds: zkflow times out, then gets the lock once kazoo lets go.
    rm -f "$T/ready" "$T/release"
    $PY spec/zk/interop_kazoo.py "$H" hold "$L/lock1" "$T/ready" "$T/release" &
    KPID=$!
    if wait_file "$T/ready"; then
        start=$(date +%s%N)
        # shellcheck disable=SC2086  # R is a command and its first word
        $R "$T/side.lua" "$H" try "$L/lock1" 1 2> "$T/err"; rc=$?
        ms=$(( ($(date +%s%N) - start) / 1000000 ))
        if [ "$rc" -eq 3 ] && [ "$ms" -ge 950 ] && grep -q ZOPERATIONTIMEOUT "$T/err"; then
            ok "$name: kazoo holds the lock, zkflow's lock(timeout=1) times out (${ms} ms)"
        else
            bad "$name: zkflow's lock while kazoo holds it" "rc=$rc ms=$ms $(head -c 300 "$T/err")"
        fi
        out=$($PY spec/zk/interop_kazoo.py "$H" contenders "$L/lock1")
        same "$out" kazoo "$name: no zkflow contender is left behind"
        touch "$T/release"
        wait "$KPID"
        # shellcheck disable=SC2086
        if $R "$T/side.lua" "$H" try "$L/lock1" 5 2> "$T/err"; then
            ok "$name: zkflow gets the lock after kazoo releases it"
        else
            bad "$name: zkflow after kazoo's release" "$(head -c 300 "$T/err")"
        fi
    else
        bad "$name: kazoo did not take the lock"; kill "$KPID" 2> /dev/null
    fi

    # zkflow holds: kazoo times out, then gets it.
    rm -f "$T/ready" "$T/release"
    # shellcheck disable=SC2086
    $R "$T/side.lua" "$H" hold "$L/lock2" "$T/ready" "$T/release" 2> "$T/hold.err" &
    ZPID=$!
    if wait_file "$T/ready"; then
        out=$($PY spec/zk/interop_kazoo.py "$H" contenders "$L/lock2")
        same "$out" zkflow "$name: kazoo sees zkflow's node as the holder"
        $PY spec/zk/interop_kazoo.py "$H" try "$L/lock2" 1; rc=$?
        same "$rc" 3 "$name: zkflow holds the lock, kazoo's acquire(timeout=1) times out"
        touch "$T/release"
        wait "$ZPID"
        if $PY spec/zk/interop_kazoo.py "$H" try "$L/lock2" 5; then
            ok "$name: kazoo gets the lock after zkflow releases it"
        else
            bad "$name: kazoo after zkflow's release"
        fi
    else
        bad "$name: zkflow did not take the lock" "$(head -c 300 "$T/hold.err")"
        kill "$ZPID" 2> /dev/null
    fi

    # Data both ways, binary bytes included.
    hex=00ff10e282ac0a41
    $PY spec/zk/interop_kazoo.py "$H" set "$L/data1" "$hex"
    # shellcheck disable=SC2086
    out=$($R "$T/side.lua" "$H" get "$L/data1" 2>&1)
    same "$out" "$hex" "$name: zkflow reads what kazoo wrote"
    # shellcheck disable=SC2086
    $R "$T/side.lua" "$H" set "$L/data2" "$hex"
    out=$($PY spec/zk/interop_kazoo.py "$H" get "$L/data2" 2>&1)
    same "$out" "$hex" "$name: kazoo reads what zkflow wrote"
done

echo "$PASS passed, $FAIL failed"
[ "$FAIL" -eq 0 ]
