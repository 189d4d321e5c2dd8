#!/usr/bin/env bash
# `make install` into a staging folder (DESTDIR): the binary, the library,
# its header and pkg-config file, the Lua modules, the nginx module and its
# load snippet, the systemd units and the docs land where their users look
# for them: lua5.4's own default paths under PREFIX, so that an installed
# zkflow needs no LUA_PATH or LUA_CPATH.  The installed zkflow tells systemd
# it is ready (sd_notify) once its API answers.
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
         share/lua/5.4/zkflow/operators/shell.lua lib/lua/5.4/zkflow/core.so \
         lib/pkgconfig/zkflow.pc share/doc/zkflow/README.md \
         share/doc/zkflow/examples/host/host_poll.c share/doc/zkflow/docs/internals.md \
         lib/systemd/system/zkflow-standalone.service lib/systemd/system/zkflow-scheduler.service \
         lib/systemd/system/zkflow-worker.service lib/systemd/system/zkflow-api.service \
         lib/sysusers.d/zkflow.conf share/man/man1/zkflow.1 share/man/man1/zkflow-dags.1 \
         share/man/man1/zkflow-tasks.1 share/bash-completion/completions/zkflow \
         share/doc/zkflow/zkflow.conf.example; do
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

# The man page opens with man(1); the completion completes for bash.
if command -v man > /dev/null; then
    if LC_ALL=C MANWIDTH=200 man -l "$D$PREFIX/share/man/man1/zkflow-dags.1" 2>/dev/null | grep -q "zkflow dags trigger"; then
        ok "man -l zkflow-dags.1 shows the dags commands"
    else
        bad "man -l zkflow-dags.1 shows the dags commands" "$(LC_ALL=C man -l "$D$PREFIX/share/man/man1/zkflow-dags.1" 2>&1 | head -3)"
    fi
fi
got=$(bash -c '. "$1"; COMP_WORDS=(zkflow dags tr); COMP_CWORD=2; _zkflow; echo "${COMPREPLY[*]}"' _ \
      "$D$PREFIX/share/bash-completion/completions/zkflow" 2>&1)
if [ "$got" = "trigger" ]; then ok "the installed completion completes a verb"; else bad "the installed completion completes a verb" "$got"; fi
# The example settings file is one the installed zkflow accepts.
if (cd "$T" && ZKFLOW_CONFIG="$D$PREFIX/share/doc/zkflow/zkflow.conf.example" \
        "$D$PREFIX/bin/zkflow" version > /dev/null 2>"$T/conf.err"); then
    ok "the installed zkflow reads the example settings file"
else
    bad "the installed zkflow reads the example settings file" "$(cat "$T/conf.err")"
fi

if grep -q "^ExecStart=$PREFIX/bin/zkflow standalone" \
        "$D$PREFIX/lib/systemd/system/zkflow-standalone.service"; then
    ok "the units run the installed binary"
else
    bad "the units run the installed binary" "$(grep ExecStart "$D$PREFIX/lib/systemd/system/zkflow-standalone.service")"
fi

# The nginx module, where it is built: outside /usr under PREFIX, and a
# snippet that loads it from there.
if [ -f "$B/ngx_http_zkflow_module.so" ]; then
    if [ -f "$D$PREFIX/lib/nginx/modules/ngx_http_zkflow_module.so" ]; then
        ok "installs lib/nginx/modules/ngx_http_zkflow_module.so"
    else
        bad "installs lib/nginx/modules/ngx_http_zkflow_module.so" "missing"
    fi
    want="load_module $PREFIX/lib/nginx/modules/ngx_http_zkflow_module.so;"
    got=$(cat "$D$PREFIX/share/nginx/modules-available/mod-http-zkflow.conf" 2>&1)
    if [ "$got" = "$want" ]; then ok "mod-http-zkflow.conf loads it"; else bad "mod-http-zkflow.conf loads it" "$got"; fi
    # PREFIX=/usr: Debian's layout, the path relative to nginx's prefix
    make -s install-nginx B="$B" DESTDIR="$T/usr-root" PREFIX=/usr > "$T/ngx.log" 2>&1
    got=$(cat "$T/usr-root/usr/share/nginx/modules-available/mod-http-zkflow.conf" 2>&1)
    if [ -f "$T/usr-root/usr/lib/nginx/modules/ngx_http_zkflow_module.so" ] &&
            [ "$got" = "load_module modules/ngx_http_zkflow_module.so;" ]; then
        ok "PREFIX=/usr installs the module where Debian's nginx loads modules"
    else
        bad "PREFIX=/usr installs the module where Debian's nginx loads modules" "$got $(tail -3 "$T/ngx.log")"
    fi
fi

# A host built with what pkg-config says and nothing else.
export PKG_CONFIG_PATH="$D$PREFIX/lib/pkgconfig"
flags=$(pkg-config --define-prefix --cflags --libs zkflow 2>&1)
if pkg-config --exists zkflow &&
        [ "$(pkg-config --modversion zkflow)" = "$(sed -n 's/^#define ZKF_VERSION "\(.*\)"/\1/p' core/include/zkflow.h)" ]; then
    ok "pkg-config knows zkflow at the library's version"
else
    bad "pkg-config knows zkflow at the library's version" "$flags"
fi
# --define-prefix: the .pc file lies in the staging folder, not in PREFIX
if cc -Wall -Wextra -Werror -o "$T/host_poll" examples/host/host_poll.c \
        $flags > "$T/cc.log" 2>&1; then
    ok "a host builds with \`pkg-config --cflags --libs zkflow\` only"
    mkdir -p "$T/dags"
    cp "$T/dag.lua" "$T/dags/"
    if LD_LIBRARY_PATH="$D$PREFIX/lib" "$T/host_poll" "$T/dags" "$T/h.db" 1 \
            > "$T/host.out" 2>&1 && grep -q '"status":"ok"' "$T/host.out"; then
        ok "that host runs and answers health"
    else
        bad "that host runs and answers health" "$(tail -3 "$T/host.out")"
    fi
else
    bad "a host builds with \`pkg-config --cflags --libs zkflow\` only" "$flags $(tail -5 "$T/cc.log")"
fi

# Type=notify: READY=1 reaches $NOTIFY_SOCKET (a path, then an abstract
# name) once the store is open and the API answers, not before.
if command -v curl > /dev/null && command -v python3 > /dev/null; then
    mkdir -p "$T/sd/dags"
    cp "$T/dag.lua" "$T/sd/dags/"
    for sock in "$T/sd/notify" "@zkflow-install-test-$$"; do
        rm -f "$T/sd/got" "$T/sd/got.bound"
        python3 spec/notify_listen.py "$sock" "$T/sd/got" 30 &
        lpid=$!
        for _ in $(seq 1 50); do [ -f "$T/sd/got.bound" ] && break; sleep 0.1; done
        port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
        (cd "$T/sd" && NOTIFY_SOCKET="$sock" exec "$D$PREFIX/bin/zkflow" --db "$T/sd/z.db" \
            standalone dags --api "127.0.0.1:$port" > "$T/sd/out" 2>&1) &
        zpid=$!
        health=""
        for _ in $(seq 1 100); do
            if grep -qx 'READY=1' "$T/sd/got" 2>/dev/null; then
                # READY=1 came first: the API must answer at once
                health=$(curl -s --max-time 2 "http://127.0.0.1:$port/api/v1/health")
                break
            fi
            sleep 0.1
        done
        case "$health" in
        *'"status":"ok"'*) ok "standalone sends READY=1 to $sock once health answers" ;;
        *) bad "standalone sends READY=1 to $sock once health answers" \
               "got '$(cat "$T/sd/got" 2>/dev/null)' health '$health' $(tail -3 "$T/sd/out")" ;;
        esac
        if grep -qx "MAINPID=$zpid" "$T/sd/got" 2>/dev/null; then
            ok "with MAINPID, the zkflow process's"
        else
            bad "with MAINPID, the zkflow process's" "$(cat "$T/sd/got" 2>/dev/null) (pid $zpid)"
        fi
        kill "$zpid" 2>/dev/null; wait "$zpid" 2>/dev/null
        kill "$lpid" 2>/dev/null; wait "$lpid" 2>/dev/null
    done
    # Outside systemd nothing is sent; an unreachable socket is an answer.
    out=$(cd "$T" && LUA_PATH="$staged_lpath" LUA_CPATH="$staged_cpath" $LUA -e '
      local core = require "zkflow.core"
      print(core.sd_notify("READY=1"))' 2>&1)
    if [ "$out" = "false" ]; then ok "sd_notify without NOTIFY_SOCKET sends nothing"; else bad "sd_notify without NOTIFY_SOCKET sends nothing" "$out"; fi
    out=$(cd "$T" && NOTIFY_SOCKET="$T/none" LUA_PATH="$staged_lpath" LUA_CPATH="$staged_cpath" $LUA -e '
      local core = require "zkflow.core"
      print(core.sd_notify("READY=1"))' 2>&1)
    case "$out" in
    "nil	NOTIFY_SOCKET '$T/none': No such file"*) ok "sd_notify names an unreachable socket" ;;
    *) bad "sd_notify names an unreachable socket" "$out" ;;
    esac
fi

# The rockspec: `luarocks make --local` in a copy of the tree (this tree's
# build/ stays as it is) into a scratch HOME, then plain lua5.4 with the
# paths `luarocks path` gives runs a DAG.
rockspec=$(ls zkflow-*-1.rockspec 2>/dev/null | head -1)
zkf_version=$(sed -n 's/^#define ZKF_VERSION "\(.*\)"/\1/p' core/include/zkflow.h)
if [ "$rockspec" = "zkflow-$zkf_version-1.rockspec" ] &&
        grep -q "^version = \"$zkf_version-1\"" "$rockspec"; then
    ok "the rockspec is at the library's version"
else
    bad "the rockspec is at the library's version" "'$rockspec', ZKF_VERSION $zkf_version"
fi
if [ -z "$rockspec" ]; then
    :
elif command -v luarocks > /dev/null && luarocks --lua-version 5.4 --version > /dev/null 2>&1; then
    mkdir -p "$T/rock/src" "$T/rock/home"
    tar --exclude=./build --exclude=./.git -cf - . | tar -C "$T/rock/src" -xf -
    if (cd "$T/rock/src" && HOME="$T/rock/home" luarocks --lua-version 5.4 make --local "$rockspec") \
            > "$T/rock/log" 2>&1; then
        ok "luarocks make --local $rockspec"
        out=$(cd "$T" && eval "$(HOME="$T/rock/home" luarocks --lua-version 5.4 path)" && $LUA -e '
          local flow = require "zkflow"
          local r = flow.test("dag.lua")
          print(r.state, r.tasks.b.xcom, package.searchpath("zkflow.core", package.cpath))' 2>&1)
        if [ "$out" = "success	installed!	$T/rock/home/.luarocks/lib/lua/5.4/zkflow/core.so" ]; then
            ok "lua5.4 runs a DAG from the rock"
        else
            bad "lua5.4 runs a DAG from the rock" "$out"
        fi
    else
        bad "luarocks make --local $rockspec" "$(tail -5 "$T/rock/log")"
    fi
else
    echo "luarocks for Lua 5.4: not installed (make deps), the rockspec is not checked"
fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
