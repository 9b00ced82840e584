#!/usr/bin/env bash
# A private 3-node RabbitMQ cluster on loopback, for the cluster tests (tests/it/cluster.rs and
# tests/it/tls.rs). It never touches the machine's own node (5672).
#
#   scripts/rabbit-cluster.sh start            make the cluster (idempotent: starts what is not running)
#   scripts/rabbit-cluster.sh stop             stop the nodes and remove the private directory
#   scripts/rabbit-cluster.sh status           exit 0 when all three nodes run, clustered
#   scripts/rabbit-cluster.sh stop-app a|b|c   stop one node's RabbitMQ application (the node "goes down")
#   scripts/rabbit-cluster.sh start-app a|b|c  start it again
#   scripts/rabbit-cluster.sh ctl a|b|c ARGS   rabbitmqctl against one node
#
# Nodes granda-cluster-{a,b,c}@localhost, AMQP on 127.0.0.1:5681-5683, Erlang distribution on
# 18681-18683, all under $GRANDA_CLUSTER_DIR (default /tmp/granda-rabbit-cluster) with one HOME (one
# Erlang cookie). Node a also has a TLS listener on 127.0.0.1:5691 with a certificate from a CA
# made here ($DIR/tls/ca.pem; server certificate for localhost and 127.0.0.1).
set -euo pipefail

DIR=${GRANDA_CLUSTER_DIR:-/tmp/granda-rabbit-cluster}
BIN=/usr/lib/rabbitmq/bin
NODES=(a b c)

port() { case $1 in a) echo 5681 ;; b) echo 5682 ;; c) echo 5683 ;; esac; }
dist() { case $1 in a) echo 18681 ;; b) echo 18682 ;; c) echo 18683 ;; esac; }
name() { echo "granda-cluster-$1@localhost"; }

env_for() {
    local n=$1 d="$DIR/$1"
    export HOME="$DIR/home"
    export RABBITMQ_NODENAME
    RABBITMQ_NODENAME=$(name "$n")
    export RABBITMQ_NODE_PORT
    RABBITMQ_NODE_PORT=$(port "$n")
    export RABBITMQ_DIST_PORT
    RABBITMQ_DIST_PORT=$(dist "$n")
    export RABBITMQ_CONFIG_FILE="$d/rabbitmq.conf"
    export RABBITMQ_CONF_ENV_FILE="$d/rabbitmq-env.conf"
    export RABBITMQ_MNESIA_BASE="$d/mnesia"
    export RABBITMQ_LOG_BASE="$d/log"
    export RABBITMQ_PID_FILE="$d/rabbit.pid"
    export RABBITMQ_ENABLED_PLUGINS_FILE="$d/enabled_plugins"
    export ERL_EPMD_ADDRESS=127.0.0.1
}

ctl() {
    local n=$1
    shift
    (cd / && env_for "$n" && "$BIN/rabbitmqctl" -n "$(name "$n")" "$@")
}

make_tls() {
    local t="$DIR/tls"
    [ -s "$t/server.pem" ] && return 0
    mkdir -p "$t"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=granda test CA" \
        -keyout "$t/ca.key" -out "$t/ca.pem" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" \
        -keyout "$t/server.key" -out "$t/server.csr" 2>/dev/null
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n' >"$t/ext.cnf"
    openssl x509 -req -in "$t/server.csr" -CA "$t/ca.pem" -CAkey "$t/ca.key" -CAcreateserial \
        -days 3650 -extfile "$t/ext.cnf" -out "$t/server.pem" 2>/dev/null
    chmod 644 "$t"/*.pem "$t"/server.key
}

configure() {
    local n=$1 d="$DIR/$1"
    mkdir -p "$d/mnesia" "$d/log"
    {
        echo "listeners.tcp.local = 127.0.0.1:$(port "$n")"
        echo "loopback_users = none"
        if [ "$n" = a ]; then
            echo "listeners.ssl.local = 127.0.0.1:5691"
            echo "ssl_options.cacertfile = $DIR/tls/ca.pem"
            echo "ssl_options.certfile = $DIR/tls/server.pem"
            echo "ssl_options.keyfile = $DIR/tls/server.key"
            echo "ssl_options.verify = verify_none"
            echo "ssl_options.fail_if_no_peer_cert = false"
        fi
    } >"$d/rabbitmq.conf"
    echo "[]." >"$d/enabled_plugins"
    # Our own env file, else the system's binds 5672 and forces the node name.
    echo "NODENAME=$(name "$n")" >"$d/rabbitmq-env.conf"
}

running() { ctl "$1" -q ping >/dev/null 2>&1; }
app_running() { ctl "$1" -q await_startup --timeout 1 >/dev/null 2>&1; }

start_node() {
    local n=$1
    running "$n" && return 0
    configure "$n"
    (cd / && env_for "$n" && "$BIN/rabbitmq-server" -detached >>"$DIR/$n/log/start.out" 2>&1)
    for _ in $(seq 1 120); do
        running "$n" && break
        sleep 1
    done
    ctl "$n" -q await_startup --timeout 120 >/dev/null
}

# Nodes of this script that no command reaches (their cookie went with a removed directory) still
# hold the ports: stop them by their home directory.
kill_strays() {
    pkill -f -- "-home $DIR/home" 2>/dev/null || return 0
    for _ in $(seq 1 30); do
        pgrep -f -- "-home $DIR/home" >/dev/null || return 0
        sleep 1
    done
    pkill -9 -f -- "-home $DIR/home" 2>/dev/null || true
}

start_app() { ctl "$1" -q start_app >/dev/null && ctl "$1" -q await_startup --timeout 60 >/dev/null; }

clustered() { ctl a -q cluster_status 2>/dev/null | grep -q "$(name "$1")"; }

start() {
    # No node runs: whatever is on disk is a killed run's (a stopped machine, a full disk), and a
    # cluster restarted from it may not form. Start from nothing; the cookie and CA are kept.
    if ! running a && ! running b && ! running c; then
        kill_strays
        rm -rf "${DIR:?}/a" "${DIR:?}/b" "${DIR:?}/c"
    fi
    mkdir -p "$DIR/home"
    [ -s "$DIR/home/.erlang.cookie" ] || {
        head -c 20 /dev/urandom | od -An -tx1 | tr -d ' \n' | tr a-f A-F >"$DIR/home/.erlang.cookie"
        chmod 400 "$DIR/home/.erlang.cookie"
    }
    make_tls
    for n in "${NODES[@]}"; do start_node "$n" & done
    wait
    for n in a b c; do running "$n" || { echo "node $n did not start; see $DIR/$n/log" >&2; exit 1; }; done
    for n in b c; do
        if ! clustered "$n"; then
            ctl "$n" -q stop_app >/dev/null
            ctl "$n" -q reset >/dev/null 2>&1
            ctl "$n" -q join_cluster "$(name a)" >/dev/null 2>&1
            ctl "$n" -q start_app >/dev/null
        fi
        app_running "$n" || start_app "$n"
    done
    app_running a || start_app a
    # A node whose app was stopped (a test that failed half-way) takes a moment to rejoin.
    for _ in $(seq 1 60); do
        status && return 0
        sleep 1
    done
    echo "the cluster did not form" >&2
    exit 1
}

status() {
    for n in "${NODES[@]}"; do app_running "$n" || return 1; done
    local out
    out=$(ctl a -q cluster_status 2>/dev/null) || return 1
    for n in "${NODES[@]}"; do grep -q "$(name "$n")" <<<"$out" || return 1; done
}

stop() {
    for n in "${NODES[@]}"; do
        running "$n" && ctl "$n" -q stop >/dev/null 2>&1 || true
    done
    kill_strays
    rm -rf "$DIR"
}

case "${1:-}" in
start) start ;;
stop) stop ;;
status) status ;;
stop-app) ctl "$2" -q stop_app >/dev/null ;;
start-app) start_app "$2" ;;
ctl)
    shift
    ctl "$@"
    ;;
*)
    echo "usage: $0 start|stop|status|stop-app NODE|start-app NODE" >&2
    exit 2
    ;;
esac
