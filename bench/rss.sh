#!/bin/sh
# bench/rss.sh TMPDIR: benchmark 4, resident memory.
#
# Starts `$B/zkflow standalone DIR --no-api --db TMPDB` on a folder of N
# small DAG files (bench/gen_dags.lua), waits for its "N dags loaded" line,
# reads VmRSS from /proc/PID/status, then stops it with SIGTERM.  The same
# for an empty folder (the fixed cost of the process) and for an idle
# `$LUA` interpreter (a floor to compare with).  Prints
# `RESULT rss_dags=KB rss_empty=KB rss_lua=KB dags=N start_s=S start_inproc_s=S`
# (KB as /proc says; seconds from exec to "dags loaded", with and without
# the child that loads each new DAG file first).
set -u
tmp=$1
B=${B:-build}
LUA=${LUA:-lua5.4}
N=${RSS_DAGS:-1000}
zkflow=$B/zkflow

die() { echo "rss.sh: $*" >&2; exit 1; }

vmrss() { sed -n 's/^VmRSS:[[:space:]]*\([0-9]*\) kB/\1/p' "/proc/$1/status"; }

# standalone_rss DAGDIR NAME: prints the KB of a standalone on DAGDIR.
standalone_rss() {
    out=$tmp/$2.out
    t0=$(date +%s.%N)
    "$zkflow" standalone "$1" --no-api --db "$tmp/$2.db" >"$out" 2>&1 &
    pid=$!
    i=0
    while ! grep -q "dags loaded" "$out" 2>/dev/null; do
        i=$((i + 1))
        if [ "$i" -gt 300 ] || ! kill -0 "$pid" 2>/dev/null; then
            kill "$pid" 2>/dev/null
            wait "$pid" 2>/dev/null
            die "standalone on $1 never said 'dags loaded': $(tail -3 "$out")"
        fi
        sleep 0.02
    done
    echo "$(date +%s.%N) - $t0" | bc >"$tmp/$2.secs"
    kb=$(vmrss "$pid")
    kill -TERM "$pid"
    wait "$pid"
    rc=$?
    # 143 is the shell's "killed by SIGTERM"; a clean exit on TERM is 0.
    [ "$rc" -eq 0 ] || [ "$rc" -eq 143 ] ||
        echo "rss.sh: standalone exited $rc on SIGTERM" >&2
    grep -o "[0-9]* dags loaded" "$out" >"$tmp/$2.count"
    echo "$kb"
}

mkdir -p "$tmp/dags" "$tmp/empty" || die "cannot make $tmp"
"$LUA" bench/gen_dags.lua "$tmp/dags" "$N" || die "cannot generate DAG files"

rss_dags=$(standalone_rss "$tmp/dags" full) || exit 1
loaded=$(sed 's/ .*//' "$tmp/full.count")
[ "$loaded" = "$N" ] || die "standalone loaded $loaded of $N DAG files"
rss_empty=$(standalone_rss "$tmp/empty" empty) || exit 1
# The same start without the child process that loads each new file
# first (dag_load_timeout 0): what that child costs at start-up.
"$zkflow" config set dag_load_timeout 0 --db "$tmp/inproc.db" >/dev/null ||
    die "config set failed"
standalone_rss "$tmp/dags" inproc >/dev/null || exit 1

# An idle interpreter: lua5.4 blocked reading a pipe that stays open.
mkfifo "$tmp/fifo" || die "mkfifo failed"
"$LUA" -e 'io.read()' <"$tmp/fifo" &
lpid=$!
exec 9>"$tmp/fifo"
sleep 0.2
rss_lua=$(vmrss "$lpid")
exec 9>&-
wait "$lpid"

echo "RESULT rss_dags=$rss_dags rss_empty=$rss_empty rss_lua=$rss_lua dags=$loaded" \
     "start_s=$(cat "$tmp/full.secs") start_inproc_s=$(cat "$tmp/inproc.secs")"
