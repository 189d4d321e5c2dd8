#!/bin/sh
# bench/run.sh: zkflow's benchmarks against peers measured in the same run
# (bench/README.md says what each one measures).  `make bench` runs it as
# `B=build LUA=lua5.4 sh bench/run.sh`.
#
# A benchmark prints its figures and ratios; a slow result is reported,
# never a failure.  The exit status is 1 only when something failed to run.
# A missing peer (python3-dask, ninja-build) is "skipped (missing X)".
#
# Environment: B (build dir), LUA (interpreter), PYTHON (default
# /usr/bin/python3, Debian's, where python3-dask lives), NINJA (default
# ninja), REPS (best of, default 5).
set -u

cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
LUA=${LUA:-lua5.4}
PYTHON=${PYTHON:-/usr/bin/python3}
NINJA=${NINJA:-ninja}
REPS=${REPS:-5}
export B LUA
export LUA_PATH="lua/?.lua;lua/?/init.lua;bench/?.lua;;"
export LUA_CPATH="$B/?.so;;"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/zkflow-bench.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT
trap 'exit 130' INT TERM
summary=$tmp/summary
: >"$summary"
failed=0

# field KEY < RESULT-line: the value of KEY=...
field() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p"; }
# calc EXPR: awk arithmetic, printed with FMT (default %.3f).
calc() { awk "BEGIN { printf \"${2:-%.3f}\", $1 }"; }
# row NAME ZKFLOW PEER RESULT: one line of the summary table.
row() { printf '%s\t%s\t%s\t%s\n' "$1" "$2" "$3" "$4" >>"$summary"; }
# run_result NAME CMD...: runs CMD, prints its RESULT line; on failure says
# so with the end of its stderr and returns 1.
run_result() {
    name=$1
    shift
    if ! "$@" >"$tmp/$name.out" 2>"$tmp/$name.err"; then
        echo "$name: FAILED to run: $*" >&2
        tail -5 "$tmp/$name.err" >&2
        return 1
    fi
    grep '^RESULT' "$tmp/$name.out" | tail -1
}
ms() { calc "$1 * 1000" "%.3f"; }

if [ ! -x "$B/zkflow" ] || [ ! -f "$B/zkflow.so" ]; then
    echo "bench: $B/zkflow or $B/zkflow.so missing: run make first" >&2
    exit 1
fi

echo "zkflow benchmarks (best of $REPS; $(nproc) CPUs; $(date -u +%Y-%m-%dT%H:%M:%SZ))"
echo

# ---- 1. 4,000 no-op Lua tasks vs Dask's threaded scheduler --------------

mkdir -p "$tmp/noop"
noop=$(run_result noop "$LUA" bench/dag_bench.lua noop "$tmp/noop" "$REPS") || failed=1
zk_noop=$(echo "$noop" | field best)
if ! "$PYTHON" -c 'import dask.threaded' 2>/dev/null; then
    dask_line="skipped (missing python3-dask for $PYTHON)"
    dk=""
else
    dk=$(run_result dask "$PYTHON" bench/dask_noop.py "$REPS") || failed=1
    dk=$(echo "$dk" | field best)
    [ -n "$dk" ] || dask_line="FAILED (see above)"
fi
if [ -n "$zk_noop" ] && [ -n "$dk" ]; then
    if awk "BEGIN { exit !($zk_noop <= $dk) }"; then
        verdict="zkflow is $(calc "$dk / $zk_noop" %.1f)x faster"
    else
        verdict="zkflow is $(calc "$zk_noop / $dk" %.1f)x slower"
    fi
    speed=$(calc "$dk / $zk_noop" %.2f)
    goal=$(awk "BEGIN { print ($speed >= 10) ? \"aim met\" : ($speed >= 2) ? \"goal met\" : \"below goal\" }")
    echo "noop-4000: zkflow $(calc "$zk_noop") s, dask $(calc "$dk") s, $verdict (goal >= 2x, aim 10x): $goal"
    row "noop-4000 vs dask" "$(calc "$zk_noop") s" "$(calc "$dk") s" "${speed}x speed-up, $goal"
elif [ -n "$zk_noop" ]; then
    echo "noop-4000: zkflow $(calc "$zk_noop") s, dask $dask_line"
    row "noop-4000 vs dask" "$(calc "$zk_noop") s" "-" "$dask_line"
else
    row "noop-4000 vs dask" "FAILED" "-" "see above"
fi

# ---- 2. 400 shell tasks, two at a time, vs ninja -j2 ----------------------

mkdir -p "$tmp/shell" "$tmp/ninja"
shell=$(run_result shell "$LUA" bench/dag_bench.lua shell "$tmp/shell" "$REPS") || failed=1
zk_shell=$(echo "$shell" | field best)
nj=""
if ! command -v "$NINJA" >/dev/null 2>&1; then
    ninja_line="skipped (missing ninja-build)"
elif ! sh bench/ninja_gen.sh "$tmp/ninja" 20 20; then
    ninja_line="FAILED (generating build.ninja)"
    failed=1
else
    nj=$(run_result ninja "$LUA" bench/ninja_bench.lua "$tmp/ninja" "$REPS" "$NINJA") || failed=1
    nj=$(echo "$nj" | field best)
    [ -n "$nj" ] || ninja_line="FAILED (see above)"
fi
if [ -n "$zk_shell" ] && [ -n "$nj" ]; then
    ratio=$(calc "$zk_shell / $nj" %.2f)
    goal=$(awk "BEGIN { print ($ratio <= 1.2) ? \"aim met\" : ($ratio <= 1.5) ? \"goal met\" : \"below goal\" }")
    echo "shell-400 (-j2): zkflow $(calc "$zk_shell") s, ninja $(calc "$nj") s, zkflow takes ${ratio}x ninja's time (goal <= 1.5x, aim 1.2x): $goal"
    row "shell-400 -j2 vs ninja" "$(calc "$zk_shell") s" "$(calc "$nj") s" "${ratio}x ninja's time, $goal"
elif [ -n "$zk_shell" ]; then
    echo "shell-400 (-j2): zkflow $(calc "$zk_shell") s, ninja $ninja_line"
    row "shell-400 -j2 vs ninja" "$(calc "$zk_shell") s" "-" "$ninja_line"
else
    row "shell-400 -j2 vs ninja" "FAILED" "-" "see above"
fi

# ---- 3. task-to-task latency ---------------------------------------------

mkdir -p "$tmp/chain"
chain=$(run_result chain "$LUA" bench/dag_bench.lua chain "$tmp/chain" "$REPS") || failed=1
for pair in "noop-4000:$noop" "chain-200 shell:$chain"; do
    name=${pair%%:*}
    line=${pair#*:}
    p50=$(echo "$line" | field p50)
    p99=$(echo "$line" | field p99)
    n=$(echo "$line" | field edges)
    if [ -z "$p50" ]; then
        row "latency $name" "FAILED" "-" "see above"
        continue
    fi
    goal=$(awk "BEGIN { print ($p50 < 0.001) ? \"p50 aim met\" : \"p50 above aim\" }")
    echo "latency $name: upstream end -> downstream start over $n edges: p50 $(ms "$p50") ms, p99 $(ms "$p99") ms (aim < 1 ms): $goal"
    row "latency $name" "p50 $(ms "$p50") ms, p99 $(ms "$p99") ms" "-" "$goal"
done

# ---- 4. resident memory with 1,000 DAG files -------------------------------

mkdir -p "$tmp/rss"
rss=$(run_result rss sh bench/rss.sh "$tmp/rss") || failed=1
kb=$(echo "$rss" | field rss_dags)
if [ -n "$kb" ]; then
    empty=$(echo "$rss" | field rss_empty)
    lua=$(echo "$rss" | field rss_lua)
    n=$(echo "$rss" | field dags)
    mb=$(calc "$kb / 1024" %.1f)
    goal=$(awk "BEGIN { print ($kb / 1024 < 30) ? \"aim met\" : \"above aim\" }")
    per=$(calc "($kb - $empty) / $n" %.1f)
    echo "rss standalone, $n DAG files: $mb MB (aim < 30 MB): $goal; no DAGs $(calc "$empty / 1024" %.1f) MB, idle $LUA $(calc "$lua / 1024" %.1f) MB; ${per} KB per DAG"
    row "rss $n DAGs" "$mb MB" "$LUA idle $(calc "$lua / 1024" %.1f) MB" "$goal (no DAGs: $(calc "$empty / 1024" %.1f) MB)"
    st=$(echo "$rss" | field start_s)
    sti=$(echo "$rss" | field start_inproc_s)
    echo "start-up, $n DAG files: $(calc "$st" %.2f) s (each new file loaded in a child first; without: $(calc "$sti" %.2f) s)"
    row "start-up $n DAGs" "$(calc "$st" %.2f) s" "no child: $(calc "$sti" %.2f) s" "-"
else
    row "rss 1000 DAGs" "FAILED" "-" "see above"
fi

# ---- 5. ZooKeeper create/set: raw libzookeeper_mt vs zkflow vs kazoo -------

zkb=$(run_result zk sh bench/zk_bench.sh) || failed=1
raw_c=$(echo "$zkb" | field raw_create)
if [ -n "$raw_c" ] && [ "$raw_c" != 0 ]; then
    raw_s=$(echo "$zkb" | field raw_set)
    lua_c=$(echo "$zkb" | field lua_create); lua_s=$(echo "$zkb" | field lua_set)
    ser_c=$(echo "$zkb" | field lua_serial_create)
    kz_c=$(echo "$zkb" | field kazoo_create); kz_s=$(echo "$zkb" | field kazoo_set)
    echo "zk create/s: raw C $raw_c, zkflow $lua_c ($(calc "$lua_c / $raw_c" %.2f)x raw; serial $ser_c), kazoo $kz_c ($(calc "$kz_c / $raw_c" %.2f)x raw)"
    echo "zk set/s:    raw C $raw_s, zkflow $lua_s ($(calc "$lua_s / $raw_s" %.2f)x raw), kazoo $kz_s ($(calc "$kz_s / $raw_s" %.2f)x raw)"
    row "zk create/s vs kazoo" "$lua_c" "kazoo $kz_c" "$(calc "$lua_c / $kz_c" %.2f)x kazoo, $(calc "$lua_c / $raw_c" %.2f)x raw C ($raw_c)"
    row "zk set/s vs kazoo" "$lua_s" "kazoo $kz_s" "$(calc "$lua_s / $kz_s" %.2f)x kazoo, $(calc "$lua_s / $raw_s" %.2f)x raw C ($raw_s)"
elif grep -q skipped "$tmp/zk.out" 2>/dev/null; then
    row "zk create/set" "-" "-" "$(cat "$tmp/zk.out")"
else
    row "zk create/set" "FAILED" "-" "see above"
fi

# ---- 6. noop-4000 under each host: libevent, poll(), nginx ----------------

hosts=$(run_result hosts sh bench/hosts.sh "$tmp/hosts") || failed=1
grep '^hosts ' "$tmp/hosts.out"
h_le=$(echo "$hosts" | field libevent)
for h in libevent poll nginx; do
    v=$(echo "$hosts" | field "$h")
    case $v in
    "" | failed) row "hosts noop-4000 $h" "FAILED" "-" "see above" ;;
    skipped) row "hosts noop-4000 $h" "-" "-" "skipped (no nginx or no module)" ;;
    *)
        if [ "$h" = libevent ] || [ -z "$h_le" ] || [ "$h_le" = failed ]; then
            row "hosts noop-4000 $h" "$(calc "$v") s" "-" "run record end - start, best of 3"
        else
            r=$(calc "$v / $h_le" %.2f)
            goal=$(awk "BEGIN { print ($r <= 1.1) ? \"aim met\" : \"above aim\" }")
            row "hosts noop-4000 $h" "$(calc "$v") s" "libevent $(calc "$h_le") s" "${r}x libevent (aim <= 1.1x): $goal"
        fi
        ;;
    esac
done

# ---- 7. a cluster on ZooKeeper: 400 no-op tries, 1 and 2 workers ----------

cl=$(run_result cluster env PYTHON="$PYTHON" sh bench/cluster.sh) || failed=1
grep '^cluster ' "$tmp/cluster.out"
c_w1=$(echo "$cl" | field w1)
if [ -n "$c_w1" ]; then
    c_w2=$(echo "$cl" | field w2)
    c_n=$(echo "$cl" | field n)
    c_ceil=$(echo "$cl" | field ceiling)
    for w in 1 2; do
        eval "t=\$c_w$w"
        r=$(calc "$c_n / $t" %.0f)
        res="$(calc "100 * $r / $c_ceil" %.1f)% of the ceiling"
        [ "$w" = 2 ] && res="$res, $(calc "$c_w1 / $c_w2" %.2f)x 1 worker"
        name="cluster-$c_n $w worker"
        [ "$w" = 2 ] && name="${name}s"
        row "$name" "$(calc "$t") s, $r tries/s" "ceiling $c_ceil tries/s" "$res"
    done
    z0=$(echo "$cl" | field znodes0); z1=$(echo "$cl" | field znodes1)
    h0=$(echo "$cl" | field heap0); h1=$(echo "$cl" | field heap1)
    c_runs=$(echo "$cl" | field runs)
    if [ -n "$z1" ]; then
        zgoal=$(awk -v a="$z0" -v b="$z1" 'BEGIN { print (b - a <= 20) ? "flat: goal met" : "grows: below goal" }')
        row "cluster zk after $c_runs runs" "znodes $z0 -> $z1" "heap $h0 -> $h1 KB" "$zgoal (finished runs should leave ZooKeeper)"
    fi
elif grep -q skipped "$tmp/cluster.out" 2>/dev/null; then
    row "cluster" "-" "-" "$(cat "$tmp/cluster.out")"
else
    row "cluster" "FAILED" "-" "see above"
fi

# ---- 8. a long history: 10,000 and 1,000,000 finished task instances -------

mkdir -p "$tmp/history"
hist=$(run_result history "$PYTHON" bench/history.py "$PWD/$B/zkflow" "$tmp/history") || failed=1
grep '^history ' "$tmp/history.out"
if [ -n "$hist" ]; then
    for k in start list api_runs metrics create; do
        small=$(echo "$hist" | field "${k}_10000")
        large=$(echo "$hist" | field "${k}_1000000")
        case "$small:$large" in
        *failed*) ratio="-"; goal="failed at some size (see above)" ;;
        *)
            ratio="$(calc "$large / $small" %.1f)x"
            goal=$(awk "BEGIN { print ($large < 0.05 && $large / $small < 2) ? \"goal met\" : \"below goal\" }")
            ;;
        esac
        shown_small=$small shown_large=$large
        [ "$small" = failed ] || shown_small="$(ms "$small") ms"
        [ "$large" = failed ] || shown_large="$(ms "$large") ms"
        row "history $k" "$shown_large at 1M TIs" "$shown_small at 10k" "$ratio (goal < 50 ms, flat): $goal"
    done
else
    row "history" "FAILED" "-" "see above"
fi

# ---- summary -----------------------------------------------------------------

echo
awk -F '\t' '
    { name[NR] = $1; zk[NR] = $2; peer[NR] = $3; res[NR] = $4 }
    END {
        fmt = "%-24s %-28s %-20s %s\n"
        printf fmt, "benchmark", "zkflow", "peer", "result"
        printf fmt, "---------", "------", "----", "------"
        for (i = 1; i <= NR; i++) printf fmt, name[i], zk[i], peer[i], res[i]
    }' "$summary"
[ "$failed" -eq 0 ] || echo "bench: something failed to run (see above)" >&2
exit "$failed"
