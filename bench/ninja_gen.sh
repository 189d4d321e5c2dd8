#!/bin/sh
# bench/ninja_gen.sh DIR LAYERS WIDTH: writes DIR/build.ninja, the ninja
# side of benchmark 2: LAYERS x WIDTH edges running `true`, edge (l, i)
# depending on (l-1, i), as bench/dag_bench.lua's shell mode.  `true`
# writes no output, so every edge is dirty and all of them run.
set -eu
dir=$1 layers=$2 width=$3
{
    printf 'rule t\n  command = true\n\n'
    l=1
    while [ "$l" -le "$layers" ]; do
        i=1
        while [ "$i" -le "$width" ]; do
            if [ "$l" -eq 1 ]; then
                printf 'build t%d_%d: t\n' "$l" "$i"
            else
                printf 'build t%d_%d: t t%d_%d\n' "$l" "$i" $((l - 1)) "$i"
            fi
            i=$((i + 1))
        done
        l=$((l + 1))
    done
} > "$dir/build.ninja"
