#!/bin/sh
# spec/c/abi_test.sh - the public ABI is the header: build/libzkflow.so
# exports exactly the functions that core/include/zkflow.h declares (the
# library is built with -fvisibility=hidden and ZKF_EXPORT), under the
# SONAME libzkflow.so.0.  The declarations are read from the preprocessed
# header, not from the ZKF_EXPORT marks, so a declaration that lost its
# mark fails here too.
#
# Prints "ok NAME" / "FAIL NAME: why" and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/../.." || exit 1
B=${B:-build}
CC=${CC:-cc}
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok $1"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }

T=$(mktemp -d /tmp/zkflow-abi.XXXXXX)
trap 'rm -rf "$T"' EXIT

# Function declarations: split the preprocessed header into statements and
# keep the name before "(" of each that is not a typedef.
$CC -E -P core/include/zkflow.h | tr '\n' ' ' | tr ';' '\n' |
    grep -v '^ *typedef' | grep -oE '\bzkf_[a-z0-9_]+ *\(' | tr -d ' (' |
    sort -u > "$T/declared"
nm -D --defined-only "$B/libzkflow.so" | awk '{ print $3 }' | sort -u \
    > "$T/exported"

if [ -s "$T/declared" ] && cmp -s "$T/declared" "$T/exported"; then
    ok "libzkflow.so exports the $(wc -l < "$T/declared") functions of zkflow.h"
else
    bad "libzkflow.so exports the functions of zkflow.h" \
        "$(diff "$T/declared" "$T/exported" | grep '^[<>]' |
           sed 's/^</declared, not exported:/; s/^>/exported, not declared:/' |
           tr '\n' ' ')"
fi

soname=$(readelf -d "$B/libzkflow.so" | sed -n 's/.*(SONAME).*\[\(.*\)\]/\1/p')
if [ "$soname" = "libzkflow.so.0" ] && [ -f "$B/libzkflow.so.0" ]; then
    ok "libzkflow.so has the SONAME libzkflow.so.0, present beside it"
else
    bad "SONAME libzkflow.so.0" "got '$soname'"
fi

# The Lua C module shows Lua its entry point and nothing of the core.
mod=$(nm -D --defined-only "$B/zkflow.so" | awk '{ print $3 }' | tr '\n' ' ')
if [ "$mod" = "luaopen_zkflow_core " ]; then
    ok "zkflow.so exports luaopen_zkflow_core only"
else
    bad "zkflow.so exports luaopen_zkflow_core only" "$mod"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
