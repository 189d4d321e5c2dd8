#!/bin/sh
# bench/zk_bench.sh: create/set throughput on one ZooKeeper server started
# here by spec/zk/harness.sh, in the same run:
#   raw     libzookeeper_mt's asynchronous C API, pipelined (bench/zk_raw.c)
#   zkflow  core.store_zk from Lua, pipelined (256 coroutines) and serial
#           (bench/zk_bench.lua)
#   kazoo   python3-kazoo's create_async / set_async (bench/zk_kazoo.py)
# N nodes of 100 bytes (ZK_N, default 10000), best of ZK_REPS (default 3).
# Prints each RESULT line, then
#   RESULT raw_create= raw_set= lua_create= lua_set= lua_serial_create=
#          lua_serial_set= kazoo_create= kazoo_set= (ops/s)
# Environment: B, LUA, PYTHON (default /usr/bin/python3), CC (default gcc).
set -u
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
LUA=${LUA:-lua5.4}
PYTHON=${PYTHON:-/usr/bin/python3}
CC=${CC:-gcc}
N=${ZK_N:-10000}
REPS=${ZK_REPS:-3}
export LUA_PATH="lua/?.lua;lua/?/init.lua;;"
export LUA_CPATH="$B/?.so;;"
ZKFLOW_ZK_DIR=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-zkbench.XXXXXX") || exit 1
export ZKFLOW_ZK_DIR

if ! command -v java > /dev/null || [ ! -f /usr/share/java/zookeeper.jar ]; then
    echo "zk_bench: skipped (missing java or zookeeper.jar)"
    exit 0
fi
mkdir -p "$B/bench"
if ! $CC -std=c11 -D_GNU_SOURCE -O2 -Wall -Wextra -o "$B/bench/zk_raw" \
        bench/zk_raw.c -lzookeeper_mt -lpthread; then
    echo "zk_bench: cannot build bench/zk_raw.c" >&2
    exit 1
fi
HOSTS=$(bash spec/zk/harness.sh start1) || { echo "zk_bench: no server" >&2; exit 1; }
trap 'bash spec/zk/harness.sh stop; rm -rf "$ZKFLOW_ZK_DIR"' EXIT
echo "zk_bench: server $HOSTS, $N nodes of 100 bytes, best of $REPS"

# best KEY FILE: the largest value of KEY= over the RESULT lines of FILE.
best() { sed -n "s/.*[ ]$1=\([0-9.]*\).*/\1/p" "$2" | sort -n | tail -1; }

out=$ZKFLOW_ZK_DIR/results
: > "$out"
# A warm-up so that the JVM's JIT is not measured against the first peer.
"$B/bench/zk_raw" "$HOSTS" "$N" > /dev/null || exit 1
i=0
while [ "$i" -lt "$REPS" ]; do
    "$B/bench/zk_raw" "$HOSTS" "$N" | tee -a "$out" || exit 1
    "$LUA" bench/zk_bench.lua "$HOSTS" "$N" | tee -a "$out" || exit 1
    if "$PYTHON" -c 'import kazoo' 2> /dev/null; then
        "$PYTHON" bench/zk_kazoo.py "$HOSTS" "$N" | tee -a "$out" || exit 1
    fi
    i=$((i + 1))
done
line="RESULT"
for k in raw_create raw_set lua_create lua_set lua_serial_create \
         lua_serial_set kazoo_create kazoo_set; do
    v=$(best "$k" "$out")
    line="$line $k=${v:-0}"
done
echo "$line"
