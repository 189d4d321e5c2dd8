#!/usr/bin/env bash
# `make install` into a staging folder (DESTDIR): the binary, the library
# and its header, and the Lua modules land where their users look for them:
# lua5.4's own default paths under PREFIX, so that an installed zkflow needs
# no LUA_PATH or LUA_CPATH.
#
# Prints "ok NAME" / "FAIL NAME: why" and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
B=${B:-build}
LUA=${LUA:-lua5.4}
T=$(mktemp -d /tmp/zkflow-install.XXXXXX)
trap 'rm -rf "$T"' EXIT
PREFIX=/usr/local
D=$T/root
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok $1"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }

if make -s install B="$B" DESTDIR="$D" PREFIX="$PREFIX" > "$T/install.log" 2>&1; then
    ok "make install DESTDIR=... PREFIX=$PREFIX"
else
    bad "make install" "$(tail -5 "$T/install.log")"
fi

# The staged copies of lua5.4's default search paths for PREFIX.
lpath=$($LUA -e 'print(package.path)')
cpath=$($LUA -e 'print(package.cpath)')
case ";$lpath;" in
*";$PREFIX/share/lua/5.4/?.lua;"*) ok "lua5.4 looks in $PREFIX/share/lua/5.4" ;;
*) bad "lua5.4 looks in $PREFIX/share/lua/5.4" "$lpath" ;;
esac
case ";$cpath;" in
*";$PREFIX/lib/lua/5.4/?.so;"*) ok "lua5.4 looks in $PREFIX/lib/lua/5.4" ;;
*) bad "lua5.4 looks in $PREFIX/lib/lua/5.4" "$cpath" ;;
esac
for f in bin/zkflow lib/libzkflow.a lib/libzkflow.so lib/libzkflow.so.0 include/zkflow.h \
         share/lua/5.4/zkflow/init.lua share/lua/5.4/zkflow/scheduler/init.lua \
         share/lua/5.4/zkflow/operators/shell.lua lib/lua/5.4/zkflow/core.so; do
    if [ -f "$D$PREFIX/$f" ]; then ok "installs $f"; else bad "installs $f" "missing"; fi
done

# lua5.4 with only its default paths, moved under the staging folder.
staged_lpath="$D$PREFIX/share/lua/5.4/?.lua;$D$PREFIX/share/lua/5.4/?/init.lua"
staged_cpath="$D$PREFIX/lib/lua/5.4/?.so"
cat > "$T/dag.lua" <<'LUA'
local flow = require "zkflow"
return flow.dag { id = "installed", tasks = function(t)
  local a = t.shell { id = "a", cmd = "echo installed", do_xcom_push = true }
  local b = t.lua { id = "b", run = function(ctx) return ctx.xcom("a") .. "!" end }
  local _ = a >> b
end }
LUA
out=$(cd "$T" && LUA_PATH="$staged_lpath" LUA_CPATH="$staged_cpath" $LUA -e '
  local flow = require "zkflow"
  local r = flow.test("dag.lua")
  print(r.state, r.tasks.b.xcom)' 2>"$T/lua.err")
if [ "$out" = "success	installed!" ]; then
    ok "plain lua5.4 runs a DAG from the installed modules"
else
    bad "plain lua5.4 runs a DAG from the installed modules" "$out $(tail -3 "$T/lua.err")"
fi

# The page (web/) comes with the installed modules, not from a checkout.
out=$(cd "$T" && LUA_PATH="$staged_lpath" LUA_CPATH="$staged_cpath" $LUA -e '
  local api = require "zkflow.api"
  local st = require("zkflow.core").store("p.db")
  local status, _, body = api.new{ store = st }:handle{ method = "GET", path = "/" }
  print(status, body:match("<title>(.-)</title>"))' 2>"$T/lua.err")
if [ "$out" = "200	zkflow" ]; then
    ok "the installed modules serve the page at /"
else
    bad "the installed modules serve the page at /" "$out $(tail -3 "$T/lua.err")"
fi

if "$D$PREFIX/bin/zkflow" --help > /dev/null 2>&1; then ok "the installed zkflow runs"; else bad "the installed zkflow runs" "exit $?"; fi

# A host built against the installed header and shared library only.
if cc -std=c11 -D_GNU_SOURCE -Wall -Wextra -Werror -o "$T/host_poll" \
        examples/host/host_poll.c -I"$D$PREFIX/include" \
        -L"$D$PREFIX/lib" -lzkflow > "$T/cc.log" 2>&1; then
    ok "a host compiles against the installed zkflow.h and libzkflow.so"
    mkdir -p "$T/dags"
    cp "$T/dag.lua" "$T/dags/"
    if LD_LIBRARY_PATH="$D$PREFIX/lib" "$T/host_poll" "$T/dags" "$T/h.db" 1 \
            > "$T/host.out" 2>&1 && grep -q '"status":"ok"' "$T/host.out"; then
        ok "that host runs and answers health"
    else
        bad "that host runs and answers health" "$(tail -3 "$T/host.out")"
    fi
else
    bad "a host compiles against the installed zkflow" "$(tail -5 "$T/cc.log")"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
