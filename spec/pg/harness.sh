#!/bin/bash
# spec/pg/harness.sh - a real PostgreSQL server for the tests, from
# Debian's postgresql package: initdb + pg_ctl into a temporary directory,
# on 127.0.0.1 and a free port (and a unix socket in the same directory).
# No system service, no cluster of postgresql-common's.
#
#   harness.sh start         initdb, start; prints the conninfo
#                            postgresql://zkflow@127.0.0.1:PORT/zkflow
#   harness.sh url           prints the conninfo of what runs
#   harness.sh restart       stops the server (fast: sessions are ended)
#                            and starts it again on the same port
#   harness.sh stop          stops the server and removes its directory
#   harness.sh psql ARGS...  psql on the test database
#   harness.sh run CMD...    start, run CMD with ZKFLOW_TEST_PG set to the
#                            conninfo, stop (also when CMD fails); CMD's
#                            exit status
#
# State lives in $ZKFLOW_PG_DIR (default /tmp/zkflow-pg-$UID): data/,
# log, port.  PostgreSQL refuses to run as root: as root (CI) the server
# runs as $ZKFLOW_PG_USER (default nobody), which owns the directory.
# Authentication is "trust" for the superuser zkflow; the database zkflow
# is created empty (the history store makes its schema).
set -eu

DIR=${ZKFLOW_PG_DIR:-/tmp/zkflow-pg-$(id -u)}
PGBIN=${PGBIN:-$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)}
RUNAS=${ZKFLOW_PG_USER:-nobody}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# as_server CMD...: CMD as the user the server runs as.
as_server() {
    if [ "$(id -u)" = 0 ]; then
        runuser -u "$RUNAS" -- "$@"
    else
        "$@"
    fi
}

url() { echo "postgresql://zkflow@127.0.0.1:$(cat "$DIR/port")/zkflow"; }

pg_start() {
    if ! as_server "$PGBIN/pg_ctl" -D "$DIR/data" -l "$DIR/log" -w -t 30 \
            -o "-p $(cat "$DIR/port") -k $DIR -c listen_addresses=127.0.0.1" \
            start > /dev/null; then
        echo "harness: postgres did not start; last log lines:" >&2
        tail -n 20 "$DIR/log" >&2 || true
        return 1
    fi
}

stop_all() {
    [ -d "$DIR" ] || return 0
    if [ -f "$DIR/data/postmaster.pid" ]; then
        as_server "$PGBIN/pg_ctl" -D "$DIR/data" -m immediate -w -t 10 stop \
            > /dev/null 2>&1 || true
    fi
    # pg_ctl could not stop it (or it is half started): the postmaster's
    # pid is the first line of its pid file.
    if [ -f "$DIR/data/postmaster.pid" ]; then
        kill -9 "$(head -n 1 "$DIR/data/postmaster.pid")" 2>/dev/null || true
    fi
    rm -rf "$DIR"
}

start() {
    if [ ! -x "$PGBIN/initdb" ]; then
        echo "harness: no initdb under /usr/lib/postgresql/*/bin (make deps installs postgresql)" >&2
        return 1
    fi
    stop_all
    mkdir -p "$DIR"
    free_port > "$DIR/port"
    if [ "$(id -u)" = 0 ]; then
        chown "$RUNAS" "$DIR"
    fi
    # The data directory must be the server user's and 0700; the parent
    # holds the socket, the log and the port.
    if ! as_server "$PGBIN/initdb" -D "$DIR/data" -U zkflow --auth=trust \
            --no-locale -E UTF8 --no-sync > "$DIR/initdb.log" 2>&1; then
        echo "harness: initdb failed:" >&2
        tail -n 20 "$DIR/initdb.log" >&2
        return 1
    fi
    # A test server: speed over durability.
    cat >> "$DIR/data/postgresql.conf" <<EOF
fsync = off
synchronous_commit = off
full_page_writes = off
shared_buffers = 16MB
max_connections = 50
log_min_messages = warning
EOF
    pg_start || return 1
    "$PGBIN/psql" -h "$DIR" -p "$(cat "$DIR/port")" -U zkflow -d postgres \
        -qAt -c "CREATE DATABASE zkflow" > /dev/null
    url
}

cmd=${1:-}
case $cmd in
start)
    start || { stop_all; exit 1; } ;;
url) url ;;
restart)
    as_server "$PGBIN/pg_ctl" -D "$DIR/data" -m fast -w -t 30 stop > /dev/null
    pg_start ;;
stop) stop_all ;;
psql)
    shift
    exec "$PGBIN/psql" -h "$DIR" -p "$(cat "$DIR/port")" -U zkflow -d zkflow "$@" ;;
run)
    shift
    trap stop_all EXIT
    trap 'exit 130' INT TERM
    ZKFLOW_TEST_PG=$(start) || { stop_all; exit 1; }
    export ZKFLOW_TEST_PG ZKFLOW_PG_DIR=$DIR
    rc=0
    "$@" || rc=$?
    exit "$rc" ;;
*) sed -n '2,24p' "$0" >&2; exit 2 ;;
esac
