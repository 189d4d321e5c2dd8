#!/bin/sh
# bench/soak.sh - zkflow standalone with an every-1 s DAG for MINUTES
# (default 10), printing every 30 s its resident memory, the store's size
# and the latency of the API calls the page makes.  Not part of `make
# test` or `make bench`: it takes minutes.  History that scales, item 6:
# RSS and latency should stay flat while the history grows.
#
#   sh bench/soak.sh [MINUTES]        (B=build by default)
set -u
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
ZKFLOW=$PWD/$B/zkflow
MINUTES=${1:-10}
T=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-soak.XXXXXX") || exit 1
PID=
# shellcheck disable=SC2317  # called through the trap
cleanup() {
    [ -n "$PID" ] && kill "$PID" 2>/dev/null && wait "$PID" 2>/dev/null
    rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mkdir -p "$T/dags"
cat > "$T/dags/beat.lua" <<LUA
local flow = require "zkflow"
return flow.dag {
  id = "beat", schedule = flow.every(1), catchup = false,
  start_date = "$(date -u +%Y-%m-%dT%H:%M:%SZ)",
  tasks = function(t)
    local a = t.shell { id = "a", cmd = "true" }
    local b = t.lua   { id = "b", run = function() return 1 end }
    local c = t.empty { id = "c" }
    flow.chain(a, b, c)
  end,
}
LUA
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
URL=http://127.0.0.1:$PORT
(cd "$T" && exec "$ZKFLOW" standalone dags --api "127.0.0.1:$PORT") > "$T/sa.log" 2>&1 &
PID=$!
for _ in $(seq 100); do
    curl -sf "$URL/api/v1/health" > /dev/null 2>&1 && break
    sleep 0.1
done

# ms URL: one request's total time in milliseconds
ms() { curl -s -o /dev/null -w '%{time_total}' "$1" | awk '{ printf "%.1f", $1 * 1000 }'; }
runs() { curl -s "$URL/api/v1/dags/beat/runs?limit=0" | sed -n 's/.*"total_entries":\([0-9]*\).*/\1/p'; }

echo "soak: every-1 s DAG (3 tasks) for $MINUTES min; a line each 30 s"
printf '%6s %8s %9s %9s %12s %12s %10s\n' "t(s)" "runs" "rss(MB)" "store(MB)" "runs?25(ms)" "tasks=1(ms)" "metrics(ms)"
t=0
end=$((MINUTES * 60))
while [ "$t" -le "$end" ]; do
    kill -0 "$PID" 2>/dev/null || { echo "soak: zkflow exited (see $T/sa.log)"; exit 1; }
    rss=$(awk '/^VmRSS/ { printf "%.1f", $2 / 1024 }' "/proc/$PID/status")
    store=$(du -cm "$T"/zkflow.db* 2>/dev/null | awk 'END { print $1 }')
    printf '%6d %8s %9s %9s %12s %12s %10s\n' "$t" "$(runs)" "$rss" "$store" \
        "$(ms "$URL/api/v1/dags/beat/runs?limit=25")" \
        "$(ms "$URL/api/v1/dags/beat/runs?limit=25&tasks=1")" "$(ms "$URL/metrics")"
    [ "$t" -ge "$end" ] && break
    sleep 30
    t=$((t + 30))
done
