#!/usr/bin/env bash
# The Debian packages, built from a copy of the tree (the working tree's
# build/ is untouched), checked with lintian, installed with apt-get, used
# (the README's `zkflow standalone examples/dags`, a C host built with
# pkg-config, plain lua5.4, the units through systemd-analyze, nginx -t with
# the module loaded from modules-enabled), then purged: the machine is left
# as it was.  Needs root (apt-get); prints "skipped (not root)" otherwise.
#
# Prints "ok NAME" / "FAIL NAME: why" and ends with "N passed, N failed".
set -u
cd "$(dirname "$0")/.." || exit 1
PASSED=0
FAILED=0
ok() { PASSED=$((PASSED + 1)); echo "ok $1"; }
bad() { FAILED=$((FAILED + 1)); echo "FAIL $1: $2"; }
PKGS="zkflow libzkflow0 libzkflow-dev lua-zkflow libnginx-mod-http-zkflow"

if [ "$(id -u)" -ne 0 ]; then
    echo "pkg: skipped (not root: apt-get installs the packages)"
    echo "0 passed, 0 failed"
    exit 0
fi
for tool in dpkg-buildpackage dh apt-get; do
    if ! command -v "$tool" > /dev/null; then
        bad "the packaging tools are installed" "no $tool (make deps)"
        echo "$PASSED passed, $FAILED failed"
        exit 1
    fi
done
for p in $PKGS; do
    if dpkg -s "$p" > /dev/null 2>&1; then
        echo "pkg: skipped ($p is installed already: this test would remove it)"
        echo "0 passed, 0 failed"
        exit 0
    fi
done

T=$(mktemp -d /tmp/zkflow-pkg.XXXXXX)
had_user=0
getent passwd zkflow > /dev/null && had_user=1
zpid=""
cleanup() {
    [ -n "$zpid" ] && kill "$zpid" 2>/dev/null
    DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $PKGS > "$T/purge.log" 2>&1
    if [ $had_user = 0 ] && getent passwd zkflow > /dev/null; then
        deluser --quiet --system zkflow > /dev/null 2>&1
        getent group zkflow > /dev/null && delgroup --quiet --system zkflow > /dev/null 2>&1
    fi
    rm -rf "$T"
}
trap cleanup EXIT

# ---- build ------------------------------------------------------------------
mkdir -p "$T/src/zkflow"
tar --exclude=./build --exclude=./.git -cf - . | tar -C "$T/src/zkflow" -xf -
if (cd "$T/src/zkflow" && DEB_BUILD_OPTIONS="nocheck parallel=2" \
        dpkg-buildpackage -us -uc -b) > "$T/build.log" 2>&1; then
    ok "dpkg-buildpackage -us -uc -b"
else
    bad "dpkg-buildpackage -us -uc -b" "$(tail -15 "$T/build.log")"
    echo "$PASSED passed, $FAILED failed"
    exit 1
fi
debs=()
for p in $PKGS; do
    f=$(ls "$T/src/${p}_"*.deb 2>/dev/null | head -1)
    if [ -n "$f" ]; then ok "builds $p"; debs+=("$f"); else bad "builds $p" "no ${p}_*.deb"; fi
done

if command -v lintian > /dev/null; then
    lintian "$T/src/"*.changes > "$T/lintian.log" 2>&1
    rc=$?
    # 0: clean or only warnings, 1: errors, anything else: it did not run
    if [ $rc -gt 1 ]; then
        bad "lintian runs" "exit $rc: $(tail -3 "$T/lintian.log")"
    elif grep -q '^E: ' "$T/lintian.log"; then
        bad "lintian finds no errors" "$(grep '^E: ' "$T/lintian.log" | head -10)"
    else
        ok "lintian finds no errors ($(grep -c '^W: ' "$T/lintian.log") warnings)"
    fi
    grep '^W: ' "$T/lintian.log"
else
    echo "lintian: not installed (make deps), not run"
fi

# ---- install ----------------------------------------------------------------
if DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        "${debs[@]}" > "$T/install.log" 2>&1; then
    ok "apt-get install ./*.deb"
else
    bad "apt-get install ./*.deb" "$(tail -10 "$T/install.log")"
fi
if getent passwd zkflow > /dev/null &&
        [ "$(stat -c %U /var/lib/zkflow/dags 2>&1)" = zkflow ]; then
    ok "postinst makes the zkflow user and its folders"
else
    bad "postinst makes the zkflow user and its folders" "$(getent passwd zkflow; ls -ld /var/lib/zkflow/dags 2>&1)"
fi

# The README's main command against the installed files: the examples from
# /usr/share/doc, the binary from /usr/bin, no LUA_PATH.
unset LUA_PATH LUA_CPATH
mkdir -p "$T/run"
cp -R /usr/share/doc/zkflow/examples "$T/run/"
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
(cd "$T/run" && exec zkflow standalone examples/dags --api "127.0.0.1:$port" > "$T/run/out" 2>&1) &
zpid=$!
health=""
for _ in $(seq 1 100); do
    health=$(curl -s --max-time 2 "http://127.0.0.1:$port/api/v1/health")
    case "$health" in *'"status":"ok"'*) break ;; esac
    sleep 0.1
done
case "$health" in
*'"status":"ok"'*) ok "zkflow standalone examples/dags answers health" ;;
*) bad "zkflow standalone examples/dags answers health" "$health $(tail -5 "$T/run/out")" ;;
esac
if grep -qE '^zkflow standalone: [1-9][0-9]* dags loaded from examples/dags' "$T/run/out"; then
    ok "it loads the examples"
else
    bad "it loads the examples" "$(grep -v ': info: ' "$T/run/out" | head -3)"
fi
kill "$zpid" 2>/dev/null; wait "$zpid" 2>/dev/null; zpid=""

# The standalone unit's command line and environment as its user, by hand
# (no systemd in a container): the folders postinst made are enough, and
# READY=1 reaches the notify socket (abstract: no file permissions).
unit=/lib/systemd/system/zkflow-standalone.service
env_line=$(sed -n 's/^Environment=//p' "$unit")
exec_line=$(sed -n 's/^ExecStart=//p' "$unit" | sed 's/ \$ZKFLOW_STANDALONE_OPTS//')
sock="@zkflow-pkg-test-$$"
rm -f "$T/got" "$T/got.bound"
python3 spec/notify_listen.py "$sock" "$T/got" 30 &
lpid=$!
for _ in $(seq 1 50); do [ -f "$T/got.bound" ] && break; sleep 0.1; done
(cd /var/lib/zkflow && exec runuser -u zkflow -- env $env_line NOTIFY_SOCKET="$sock" \
    $exec_line --api "127.0.0.1:$port" > "$T/unit.out" 2>&1) &
zpid=$!
health=""
for _ in $(seq 1 100); do
    if grep -qx 'READY=1' "$T/got" 2>/dev/null; then
        health=$(curl -s --max-time 2 "http://127.0.0.1:$port/api/v1/health")
        break
    fi
    sleep 0.1
done
case "$health" in
*'"status":"ok"'*) ok "the standalone unit's command runs as zkflow and sends READY=1" ;;
*) bad "the standalone unit's command runs as zkflow and sends READY=1" "$(cat "$T/got" 2>/dev/null) $health $(tail -3 "$T/unit.out")" ;;
esac
kill "$zpid" 2>/dev/null; wait "$zpid" 2>/dev/null; zpid=""
kill "$lpid" 2>/dev/null; wait "$lpid" 2>/dev/null
if [ "$(stat -c %U /var/lib/zkflow/zkflow.db 2>&1)" = zkflow ]; then
    ok "its store is in /var/lib/zkflow, the zkflow user's"
else
    bad "its store is in /var/lib/zkflow, the zkflow user's" "$(ls -l /var/lib/zkflow 2>&1)"
fi

# The man pages (compressed by dh_compress), the completion and the
# settings file, which the installed zkflow reads (all comments: no setting).
for f in /usr/share/man/man1/zkflow.1.gz /usr/share/man/man1/zkflow-dags.1.gz \
         /usr/share/bash-completion/completions/zkflow /etc/zkflow/zkflow.conf; do
    if [ -f "$f" ]; then ok "the zkflow package ships $f"; else bad "the zkflow package ships $f" "missing"; fi
done
if man -w zkflow-tasks > /dev/null 2>&1; then ok "man finds zkflow-tasks"; else bad "man finds zkflow-tasks" "$(man -w zkflow-tasks 2>&1)"; fi
out=$(cd "$T" && zkflow check-config --json 2>&1)
case "$out" in
*'"file":"/etc/zkflow/zkflow.conf"'*) ok "zkflow check-config reads /etc/zkflow/zkflow.conf" ;;
*) bad "zkflow check-config reads /etc/zkflow/zkflow.conf" "$out" ;;
esac

out=$(cd "$T" && lua5.4 -e 'local f = require "zkflow"; print(type(f.dag), package.searchpath("zkflow.core", package.cpath))' 2>&1)
case "$out" in
"function	/usr/lib/"*"/lua/5.4/zkflow/core.so") ok "plain lua5.4 finds lua-zkflow's modules" ;;
*) bad "plain lua5.4 finds lua-zkflow's modules" "$out" ;;
esac

if cc -Wall -Wextra -Werror -o "$T/host_poll" /usr/share/doc/zkflow/examples/host/host_poll.c \
        $(pkg-config --cflags --libs zkflow) > "$T/cc.log" 2>&1; then
    mkdir -p "$T/h/dags"
    if "$T/host_poll" "$T/h/dags" "$T/h/h.db" 1 > "$T/h/out" 2>&1 &&
            grep -q '"status":"ok"' "$T/h/out"; then
        ok "a host built with libzkflow-dev's pkg-config runs on libzkflow0"
    else
        bad "a host built with libzkflow-dev's pkg-config runs on libzkflow0" "$(tail -3 "$T/h/out")"
    fi
else
    bad "a host builds with libzkflow-dev's pkg-config" "$(tail -5 "$T/cc.log")"
fi

# systemd-analyze verify checks the units against this systemd, without
# needing systemd to run (a container).
if command -v systemd-analyze > /dev/null; then
    if systemd-analyze verify /lib/systemd/system/zkflow-*.service > "$T/verify.log" 2>&1 &&
            ! grep -q zkflow "$T/verify.log"; then
        ok "systemd-analyze verify accepts the units"
    else
        bad "systemd-analyze verify accepts the units" "$(head -10 "$T/verify.log")"
    fi
fi

# nginx: the link in modules-enabled loads the module (Debian's nginx.conf
# includes modules-enabled/*.conf); the zkflow directives then parse.
link=/etc/nginx/modules-enabled/50-mod-http-zkflow.conf
if [ "$(readlink "$link")" = /usr/share/nginx/modules-available/mod-http-zkflow.conf ]; then
    ok "modules-enabled links mod-http-zkflow.conf"
else
    bad "modules-enabled links mod-http-zkflow.conf" "$(ls -l /etc/nginx/modules-enabled/ 2>&1)"
fi
if command -v nginx > /dev/null; then
    if nginx -t > "$T/nginx-t.log" 2>&1; then ok "nginx -t with the module enabled"; else bad "nginx -t with the module enabled" "$(tail -3 "$T/nginx-t.log")"; fi
    mkdir -p "$T/ngx/dags" "$T/ngx/data"
    cat > "$T/ngx/nginx.conf" <<CONF
include /etc/nginx/modules-enabled/*.conf;
pid $T/ngx/nginx.pid;
error_log $T/ngx/error.log;
events {}
http {
    zkflow_dags $T/ngx/dags;
    zkflow_db $T/ngx/data/zkflow.db;
    server { listen 127.0.0.1:$port; location /zkflow/ { zkflow_api; } }
}
CONF
    if nginx -t -c "$T/ngx/nginx.conf" > "$T/nginx-t2.log" 2>&1; then
        ok "nginx -t with zkflow directives, the module from modules-enabled"
    else
        bad "nginx -t with zkflow directives, the module from modules-enabled" "$(tail -3 "$T/nginx-t2.log")"
    fi
fi

# ---- purge ------------------------------------------------------------------
if DEBIAN_FRONTEND=noninteractive apt-get purge -y -q $PKGS > "$T/purge.log" 2>&1; then
    ok "apt-get purge"
else
    bad "apt-get purge" "$(tail -5 "$T/purge.log")"
fi
left=""
for p in $PKGS; do dpkg -s "$p" > /dev/null 2>&1 && left="$left $p"; done
for f in "$link" /usr/bin/zkflow /etc/default/zkflow /etc/zkflow /var/log/zkflow /var/lib/zkflow; do
    [ -e "$f" ] || [ -L "$f" ] && left="$left $f"
done
if [ -z "$left" ]; then ok "purge leaves no package, link or folder"; else bad "purge leaves no package, link or folder" "$left"; fi

echo "$PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
