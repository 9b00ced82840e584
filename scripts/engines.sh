#!/usr/bin/env bash
# The many-hosts test fixtures on this machine: a second Docker engine ("host B", its own data
# root, socket and containerd namespace, no images) and a Docker registry on 127.0.0.1:5000
# (Debian's docker-registry, filesystem storage, no auth).
#   scripts/engines.sh start   start what is not running (idempotent); prints the env to use
#   scripts/engines.sh stop    stop both and remove their state
# Exits non-zero when something can't be started: a suite that needs them must fail, not skip.
set -euo pipefail

B_ROOT=${GRANDA_ENGINE_B_ROOT:-/var/lib/granda-engine-b}
B_EXEC=/run/granda-engine-b
B_SOCK=unix:///run/granda-engine-b.sock
B_PID=/run/granda-engine-b.pid
REG_DIR=${GRANDA_REGISTRY_DIR:-/var/lib/granda-registry}
REG_ADDR=127.0.0.1:5000
REG_PID=/run/granda-registry.pid

die() { echo "engines: error: $*" >&2; exit 1; }
alive() { [ -r "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }
# wait_for SECS CMD...
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
reg_up() { curl -fsS "http://$REG_ADDR/v2/" >/dev/null; }

start() {
    command -v dockerd >/dev/null || die "dockerd is not installed (scripts/setup.sh)"
    command -v docker-registry >/dev/null || die "docker-registry is not installed (scripts/setup.sh)"
    if ! alive "$B_PID"; then
        mkdir -p "$B_ROOT" "$B_EXEC"
        nohup dockerd --data-root "$B_ROOT" --exec-root "$B_EXEC" --pidfile "$B_PID" \
            -H "$B_SOCK" --bridge=none --iptables=false --ip-masq=false \
            --containerd-namespace granda-b --containerd-plugins-namespace granda-plugins-b \
            >"$B_ROOT.log" 2>&1 &
    fi
    wait_for 30 env DOCKER_HOST="$B_SOCK" docker info || die "engine B did not start (see $B_ROOT.log)"
    if ! reg_up; then
        mkdir -p "$REG_DIR"
        cat >"$REG_DIR.yml" <<CONF
version: 0.1
storage:
  filesystem:
    rootdirectory: $REG_DIR
  delete:
    enabled: true
http:
  addr: $REG_ADDR
CONF
        nohup docker-registry serve "$REG_DIR.yml" >"$REG_DIR.log" 2>&1 &
        echo $! >"$REG_PID"
    fi
    wait_for 20 reg_up || die "the registry did not start (see $REG_DIR.log)"
    echo "DOCKER_HOST_B=$B_SOCK"
    echo "GRANDA_TEST_REGISTRY=$REG_ADDR"
}

stop() {
    if alive "$B_PID"; then
        kill -TERM "$(cat "$B_PID")"
        wait_for 20 bash -c "! kill -0 $(cat "$B_PID") 2>/dev/null" || true
    fi
    if alive "$REG_PID"; then kill -TERM "$(cat "$REG_PID")"; fi
    rm -rf "$B_ROOT" "$B_EXEC" "$REG_DIR" "$REG_DIR.yml" "$B_PID" "$REG_PID"
}

case "${1:-}" in
    start) start ;;
    stop) stop ;;
    *) die "usage: $0 start|stop" ;;
esac
