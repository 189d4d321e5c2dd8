#!/bin/bash
# spec/zk/harness.sh - real ZooKeeper servers for the tests, from Debian's
# zookeeper package, on 127.0.0.1 and free ports.
#
#   harness.sh start1        one server; prints 127.0.0.1:PORT
#   harness.sh start3        a 3-node ensemble; prints the connect string
#   harness.sh hosts         prints the connect string of what runs
#   harness.sh stop          stops every server and removes the state
#   harness.sh kill N        SIGKILLs member N (1-based)
#   harness.sh start N       starts member N again (after kill)
#   harness.sh pause N       SIGSTOPs member N; `resume N` continues it
#   harness.sh flw N WORD    sends a four-letter word to member N
#   harness.sh wait N        waits until member N serves (srvr has a Mode)
#
# State lives in $ZKFLOW_ZK_DIR (default /tmp/zkflow-zk-$UID): one
# directory per member with zoo.cfg, data, pid and log.  A suite starts
# the servers once and stops them at the end.
set -eu

DIR=${ZKFLOW_ZK_DIR:-/tmp/zkflow-zk-$(id -u)}
CP=/etc/zookeeper/conf:/usr/share/java/zookeeper.jar
JAVA=${JAVA:-java}

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# flw PORT WORD: the server's answer to a four-letter word (no nc here).
flw_port() {
    local port=$1 word=$2 out
    out=$( { exec 3<>"/dev/tcp/127.0.0.1/$port" && printf '%s' "$word" >&3 &&
             timeout 2 cat <&3; exec 3<&- ; } 2>/dev/null ) || true
    printf '%s' "$out"
}

port_of() { cat "$DIR/s$1/port"; }

wait_member() {
    local n=$1 port _
    port=$(port_of "$n")
    for _ in $(seq 1 150); do
        if flw_port "$port" srvr | grep -q '^Mode:'; then
            return 0
        fi
        if ! kill -0 "$(cat "$DIR/s$n/pid")" 2>/dev/null; then
            echo "harness: server $n exited; last log lines:" >&2
            tail -n 20 "$DIR/s$n/log" >&2
            return 1
        fi
        sleep 0.1
    done
    echo "harness: server $n did not serve within 15 s" >&2
    return 1
}

launch() {
    local n=$1
    ( cd "$DIR/s$n" &&
      exec "$JAVA" -Xmx256m -XX:+UseSerialGC -XX:TieredStopAtLevel=1 \
           -Djute.maxbuffer=4194304 \
           -Dzookeeper.admin.enableServer=false \
           -cp "$CP" org.apache.zookeeper.server.quorum.QuorumPeerMain \
           "$DIR/s$n/zoo.cfg" > "$DIR/s$n/log" 2>&1 ) &
    echo $! > "$DIR/s$n/pid"
}

# configure COUNT: zoo.cfg (and myid) for COUNT members
configure() {
    local count=$1 n
    rm -rf "$DIR"
    mkdir -p "$DIR"
    for n in $(seq 1 "$count"); do
        mkdir -p "$DIR/s$n/data"
        free_port > "$DIR/s$n/port"
        if [ "$count" -gt 1 ]; then
            free_port > "$DIR/s$n/peer"
            free_port > "$DIR/s$n/elect"
            echo "$n" > "$DIR/s$n/data/myid"
        fi
    done
    for n in $(seq 1 "$count"); do
        {
            echo "tickTime=500"
            echo "initLimit=20"
            echo "syncLimit=10"
            echo "dataDir=$DIR/s$n/data"
            echo "clientPortAddress=127.0.0.1"
            echo "clientPort=$(port_of "$n")"
            echo "maxClientCnxns=0"
            echo "minSessionTimeout=1000"
            echo "4lw.commands.whitelist=*"
            echo "admin.enableServer=false"
            echo "forceSync=no"
            if [ "$count" -gt 1 ]; then
                for m in $(seq 1 "$count"); do
                    echo "server.$m=127.0.0.1:$(cat "$DIR/s$m/peer"):$(cat "$DIR/s$m/elect")"
                done
            fi
        } > "$DIR/s$n/zoo.cfg"
    done
    echo "$count" > "$DIR/count"
}

hosts() {
    local n out=""
    for n in $(seq 1 "$(cat "$DIR/count")"); do
        out="$out${out:+,}127.0.0.1:$(port_of "$n")"
    done
    echo "$out"
}

stop_all() {
    local f
    [ -d "$DIR" ] || return 0
    for f in "$DIR"/s*/pid; do
        [ -f "$f" ] || continue
        kill -CONT "$(cat "$f")" 2>/dev/null || true
        kill "$(cat "$f")" 2>/dev/null || true
    done
    sleep 0.2
    for f in "$DIR"/s*/pid; do
        [ -f "$f" ] || continue
        kill -9 "$(cat "$f")" 2>/dev/null || true
    done
    rm -rf "$DIR"
}

start_n() {
    local count=$1 n
    stop_all
    configure "$count"
    for n in $(seq 1 "$count"); do launch "$n"; done
    for n in $(seq 1 "$count"); do wait_member "$n" || { stop_all; exit 1; }; done
    hosts
}

cmd=${1:-}
case $cmd in
start1) start_n 1 ;;
start3) start_n 3 ;;
hosts) hosts ;;
stop) stop_all ;;
kill) kill -9 "$(cat "$DIR/s$2/pid")" ;;
start) launch "$2"; wait_member "$2" ;;
pause) kill -STOP "$(cat "$DIR/s$2/pid")" ;;
resume) kill -CONT "$(cat "$DIR/s$2/pid")" ;;
flw) flw_port "$(port_of "$2")" "$3" ;;
wait) wait_member "$2" ;;
*) sed -n '2,17p' "$0" >&2; exit 2 ;;
esac
