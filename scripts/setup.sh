#!/usr/bin/env bash
# Makes this machine ready to build, run and test Granda (Debian 12, as root, no systemd):
#   - installs what is missing from Debian's packages: docker.io, busybox-static, make, gcc, curl,
#     ca-certificates, chromium and chromium-driver (the dashboard's browser test), and postgresql / rabbitmq-server unless those services already answer on
#     127.0.0.1:5432 / 127.0.0.1:5672;
#   - starts what is down: dockerd, the PostgreSQL cluster, RabbitMQ (never a second copy of any);
#   - makes sure Postgres has a superuser role `root` (the default GRANDA_DATABASE_URL connects as the OS user);
#   - installs pika (PyPI) for the AMQP publishing test, unless python3 already imports it;
#   - installs openapi-spec-validator (PyPI) for the /openapi.json test, likewise;
#   - installs amqplib (npm) in /var/tmp/granda-test-node for the README's Node snippet test;
#   - installs kubernetes-validate (PyPI, pinned) for `make deploy-check`, unless pip shows that version;
#   - installs openapi-python-client, mypy (PyPI) and openapi-typescript, typescript (npm), pinned, for tests/it/sdk.rs;
#   - builds the local test images (scripts/build-test-images.sh).
# Idempotent; takes a few seconds when everything is already there. Prints one line per service.
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export DEBIAN_FRONTEND=noninteractive
# needrestart (a docker.io recommend) must never restart running services from inside apt-get.
export NEEDRESTART_SUSPEND=1 NEEDRESTART_MODE=l
PG_PORT=${GRANDA_SETUP_PG_PORT:-5432}
AMQP_PORT=${GRANDA_SETUP_AMQP_PORT:-5672}

log() { echo "setup: $*" >&2; }
die() { echo "setup: error: $*" >&2; exit 1; }

[ "$(id -u)" = 0 ] || die "run me as root (apt-get, dockerd and the services need it)"

# True when something accepts TCP connections on 127.0.0.1:$1 (bash's /dev/tcp: no network tools needed).
port_open() { timeout 2 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1" 2>/dev/null; }
pkg_installed() { [ "$(dpkg-query -W -f='${db:Status-Status}' "$1" 2>/dev/null)" = installed ]; }
# wait_for SECS CMD...
. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
pg_up() {
    if command -v pg_isready >/dev/null; then pg_isready -q -h 127.0.0.1 -p "$PG_PORT" -t 2; else port_open "$PG_PORT"; fi
}

# Docker: only start an engine when the local default socket is the target. A DOCKER_HOST pointing
# elsewhere is the user's engine: check it, never start one.
docker_local=1
case "${DOCKER_HOST:-}" in
    "" | unix:///var/run/docker.sock | unix:///run/docker.sock) ;;
    *) docker_local=0 ;;
esac

# ---------------------------------------------------------------------------------------------------
# 1. Packages (apt-get update only when something is missing)
# ---------------------------------------------------------------------------------------------------
need=()
pg_answering=0 amqp_answering=0
pg_up && pg_answering=1
port_open "$AMQP_PORT" && amqp_answering=1

if [ "$docker_local" = 1 ] && ! command -v dockerd >/dev/null; then need+=(docker.io); fi
# `docker` may be a client on its own (e.g. /usr/local/bin/docker) with no engine: docker.io brings both.
command -v docker >/dev/null || need+=(docker.io)
# The test images need the static busybox (Debian's `busybox` package is dynamically linked).
pkg_installed busybox-static || need+=(busybox-static)
if [ "$pg_answering" = 0 ] && ! command -v pg_ctlcluster >/dev/null; then need+=(postgresql); fi
command -v psql >/dev/null || need+=(postgresql-client)
if [ "$amqp_answering" = 0 ] && ! command -v rabbitmq-server >/dev/null; then need+=(rabbitmq-server); fi
command -v curl >/dev/null || need+=(curl)
[ -s /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
command -v make >/dev/null || need+=(make)
command -v gcc >/dev/null || need+=(gcc)
# The dashboard's end-to-end test drives headless Chromium through chromedriver.
command -v chromium >/dev/null || need+=(chromium)
command -v chromedriver >/dev/null || need+=(chromium-driver)
# The many-hosts suite (tests/it/hosts.rs, scripts/engines.sh): a registry on loopback, and
# docker-compose to validate docker-compose.yml.
command -v docker-registry >/dev/null || need+=(docker-registry)
command -v docker-compose >/dev/null || need+=(docker-compose)

if [ "${#need[@]}" -gt 0 ]; then
    # De-duplicate, keep order.
    mapfile -t need < <(printf '%s\n' "${need[@]}" | awk '!seen[$0]++')
    fresh_rabbit=0
    [[ " ${need[*]} " == *" rabbitmq-server "* ]] && fresh_rabbit=1
    if [ "$fresh_rabbit" = 1 ] && [ ! -e /etc/rabbitmq/rabbitmq-env.conf ] && [ ! -e /etc/rabbitmq/rabbitmq.conf ]; then
        # Before the package's first start: a node name that needs no DNS, and listeners on loopback only.
        mkdir -p /etc/rabbitmq
        cat >/etc/rabbitmq/rabbitmq-env.conf <<'EOF'
NODENAME=rabbit@localhost
ERL_EPMD_ADDRESS=127.0.0.1
export ERL_FLAGS="-kernel inet_dist_use_interface {127,0,0,1}"
EOF
        echo "listeners.tcp.local = 127.0.0.1:$AMQP_PORT" >/etc/rabbitmq/rabbitmq.conf
    fi
    log "installing: ${need[*]}"
    apt-get update -qq
    # With recommends, as docker.io is known to work here (cgroupfs-mount, apparmor, ...).
    apt-get install -y -qq \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold "${need[@]}" >/dev/null
fi

# ---------------------------------------------------------------------------------------------------
# 2. Docker engine
# ---------------------------------------------------------------------------------------------------
dockerd_running() {
    local pid
    for f in /var/run/docker.pid /run/docker.pid; do
        [ -r "$f" ] || continue
        pid=$(cat "$f" 2>/dev/null || true)
        [ -n "$pid" ] && [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = dockerd ] && return 0
    done
    local comm
    for comm in /proc/[0-9]*/comm; do
        [ "$(cat "$comm" 2>/dev/null)" = dockerd ] && return 0
    done
    return 1
}

if ! docker info >/dev/null 2>&1; then
    [ "$docker_local" = 1 ] || die "the Docker engine at DOCKER_HOST=$DOCKER_HOST does not answer"
    if dockerd_running; then
        log "dockerd is running but not answering yet; waiting"
    else
        # Without systemd nothing may have mounted the cgroup hierarchies that dockerd needs.
        if ! awk '$3 == "cgroup" || $3 == "cgroup2" {found=1} END {exit !found}' /proc/mounts && command -v cgroupfs-mount >/dev/null; then
            log "mounting cgroups (cgroupfs-mount)"
            cgroupfs-mount || true
        fi
        log "starting dockerd (log: /var/log/dockerd.log)"
        # Detached from this shell and its pipes, so that a caller capturing our output is not held open.
        setsid nohup dockerd </dev/null >>/var/log/dockerd.log 2>&1 &
    fi
    wait_for 60 docker info || { tail -n 20 /var/log/dockerd.log >&2 || true; die "dockerd did not answer within 60 s"; }
fi
docker_version=$(docker version --format '{{.Server.Version}} (API {{.Server.APIVersion}})' 2>/dev/null || echo '?')
echo "ok docker $(sed 's/+[^ ]*//' <<<"$docker_version")"

# ---------------------------------------------------------------------------------------------------
# 3. PostgreSQL
# ---------------------------------------------------------------------------------------------------
if ! pg_up; then
    command -v pg_ctlcluster >/dev/null || die "nothing answers on 127.0.0.1:$PG_PORT and PostgreSQL is not installed"
    # The cluster that owns our port, else the first one (Debian creates <version>/main on install).
    read -r pg_version pg_cluster < <(pg_lsclusters -h 2>/dev/null | awk -v p="$PG_PORT" '$3 == p {print $1, $2; exit}') || true
    if [ -z "${pg_version:-}" ]; then
        pg_version=$(ls /etc/postgresql 2>/dev/null | head -n 1) pg_cluster=main
    fi
    [ -n "$pg_version" ] || die "no PostgreSQL cluster under /etc/postgresql (pg_createcluster?)"
    log "starting PostgreSQL $pg_version/$pg_cluster"
    pg_ctlcluster --skip-systemctl-redirect "$pg_version" "$pg_cluster" start </dev/null
    wait_for 60 pg_up || die "PostgreSQL did not answer on 127.0.0.1:$PG_PORT within 60 s"
fi

# Fast path: root already logs in over TCP as a superuser.
pg_root_ok() {
    [ "$(psql -X -h 127.0.0.1 -p "$PG_PORT" -U root -d postgres -Atqc 'select rolsuper from pg_roles where rolname = current_user' 2>/dev/null)" = t ]
}
if ! pg_root_ok; then
    log "creating the Postgres superuser role root"
    sql="DO \$\$ BEGIN
           IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'root') THEN CREATE ROLE root SUPERUSER LOGIN;
           ELSE ALTER ROLE root SUPERUSER LOGIN; END IF;
         END \$\$;"
    # As postgres over TCP when trust allows it, otherwise as the postgres OS user over the local socket (peer).
    if ! psql -X -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -v ON_ERROR_STOP=1 -qc "$sql" >/dev/null 2>&1; then
        (cd / && su postgres -c "psql -X -p $PG_PORT -d postgres -v ON_ERROR_STOP=1 -q -f -" <<<"$sql") >/dev/null \
            || die "could not create the Postgres role root"
    fi
    if ! pg_root_ok; then
        # A fresh install asks for passwords over TCP; this is a local development/CI box: trust loopback.
        hba=$(cd / && su postgres -c "psql -X -p $PG_PORT -Atqc 'show hba_file'")
        log "trusting loopback connections in $hba"
        { printf 'host all all 127.0.0.1/32 trust\nhost all all ::1/128 trust\n'; cat "$hba"; } >"$hba.granda-tmp"
        cat "$hba.granda-tmp" >"$hba" && rm -f "$hba.granda-tmp"
        (cd / && su postgres -c "psql -X -p $PG_PORT -qc 'select pg_reload_conf()'") >/dev/null
        wait_for 10 pg_root_ok || die "root still cannot log in to Postgres over 127.0.0.1"
    fi
    # A database named like the role, so that a bare `psql -h 127.0.0.1` works.
    psql -X -h 127.0.0.1 -p "$PG_PORT" -U root -d postgres -Atqc "select 1 from pg_database where datname = 'root'" | grep -q 1 \
        || psql -X -h 127.0.0.1 -p "$PG_PORT" -U root -d postgres -qc 'create database root' >/dev/null
fi
pg_version=$(psql -X -h 127.0.0.1 -p "$PG_PORT" -U root -d postgres -Atqc 'show server_version' 2>/dev/null | awk '{print $1}')
echo "ok postgres ${pg_version:-?} (127.0.0.1:$PG_PORT, superuser root)"

# ---------------------------------------------------------------------------------------------------
# 4. RabbitMQ
# ---------------------------------------------------------------------------------------------------
# True when RabbitMQ answers the AMQP protocol header with its Connection.Start method frame (first
# byte 1): a node that accepts TCP but is wedged (a full disk earlier, a half-dead Erlang VM) fails it.
amqp_answers() {
    timeout 5 bash -c "exec 3<>/dev/tcp/127.0.0.1/$1 && printf 'AMQP\\x00\\x00\\x09\\x01' >&3 && head -c 1 <&3 | od -An -tu1" 2>/dev/null | grep -qw 1
}
# The machine's own node (user rabbitmq), never the test suites' private cluster nodes (root).
stop_machine_rabbit() {
    timeout 20 rabbitmqctl -q stop >/dev/null 2>&1 || true
    local pids
    pids=$(pgrep -u rabbitmq -f 'beam.smp' || true)
    if [ -n "$pids" ]; then
        # shellcheck disable=SC2086
        kill -9 $pids 2>/dev/null || true
    fi
    wait_for 20 bash -c "! (exec 3<>/dev/tcp/127.0.0.1/$AMQP_PORT) 2>/dev/null" || die "127.0.0.1:$AMQP_PORT stays open after RabbitMQ was stopped"
}
if port_open "$AMQP_PORT" && ! amqp_answers "$AMQP_PORT"; then
    sleep 5
    if ! amqp_answers "$AMQP_PORT"; then
        log "RabbitMQ on 127.0.0.1:$AMQP_PORT accepts connections but does not answer AMQP: restarting it"
        stop_machine_rabbit
    fi
fi
# RabbitMQ's file handle cache is sized from the node's soft fd limit, which `su rabbitmq` leaves at
# 1024: about 300 quorum queues (each test app declares several) use it up, and then every new
# connection hangs before its handshake. The env file is sourced by the node's start script, as
# the rabbitmq user, so this raises the soft limit to the hard one at the node's next start.
if [ -f /etc/rabbitmq/rabbitmq-env.conf ] && ! grep -q 'ulimit -n' /etc/rabbitmq/rabbitmq-env.conf; then
    printf '%s\n' '# Added by Granda scripts/setup.sh: file handles for many quorum queues.' \
        'ulimit -n "$(ulimit -Hn)" 2>/dev/null || true' >>/etc/rabbitmq/rabbitmq-env.conf
fi
if ! port_open "$AMQP_PORT"; then
    command -v rabbitmq-server >/dev/null || die "nothing answers on 127.0.0.1:$AMQP_PORT and RabbitMQ is not installed"
    log "starting RabbitMQ"
    # The Debian wrapper switches to the rabbitmq user; -detached returns once the node is spawned.
    rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
    rabbit_ready() { port_open "$AMQP_PORT" || rabbitmqctl -q await_startup --timeout 5; }
    wait_for 90 rabbit_ready || { tail -n 20 /var/log/rabbitmq/*.log >&2 2>/dev/null || true; die "RabbitMQ did not answer on 127.0.0.1:$AMQP_PORT within 90 s"; }
    # await_startup can return before the listener is bound.
    wait_for 30 port_open "$AMQP_PORT" || die "RabbitMQ started but 127.0.0.1:$AMQP_PORT is closed"
fi
wait_for 30 amqp_answers "$AMQP_PORT" || die "RabbitMQ on 127.0.0.1:$AMQP_PORT does not answer AMQP; see /var/log/rabbitmq/"
# A node started before the line above was added (by the machine's init, say) still has the small
# file handle cache: restart it once so the start script raises the limit. Only the machine's own
# node (user rabbitmq), and only when its limit is below what a full suite needs.
fh_limit() { timeout 20 rabbitmqctl -q eval 'proplists:get_value(total_limit, file_handle_cache:info([total_limit])).' 2>/dev/null | tr -dc '0-9'; }
limit=$(fh_limit || true)
if [ -n "$limit" ] && [ "$limit" -lt 4000 ] && grep -q 'ulimit -n' /etc/rabbitmq/rabbitmq-env.conf 2>/dev/null \
    && pgrep -u rabbitmq -f beam.smp >/dev/null; then
    log "RabbitMQ has room for $limit file handles (too few for the suites' quorum queues): restarting it with the raised limit"
    stop_machine_rabbit
    rabbitmq-server -detached </dev/null >/dev/null 2>&1 || true
    wait_for 90 port_open "$AMQP_PORT" || die "RabbitMQ did not come back on 127.0.0.1:$AMQP_PORT within 90 s"
    wait_for 30 amqp_answers "$AMQP_PORT" || die "RabbitMQ on 127.0.0.1:$AMQP_PORT does not answer AMQP after its restart"
    log "RabbitMQ has room for $(fh_limit || echo '?') file handles now"
fi
# A resource alarm (free disk under the limit, memory over the watermark) blocks every publisher.
if command -v rabbitmq-diagnostics >/dev/null && ! timeout 20 rabbitmq-diagnostics -q check_alarms >/dev/null 2>&1; then
    timeout 20 rabbitmq-diagnostics -q alarms >&2 2>/dev/null || true
    df -h / >&2
    die "RabbitMQ has a resource alarm in effect (publishers are blocked): free disk space or memory"
fi
rabbit_version=$(dpkg-query -W -f='${Version}' rabbitmq-server 2>/dev/null || true)
rabbit_version=${rabbit_version%%-*}
echo "ok rabbitmq ${rabbit_version:-?} (127.0.0.1:$AMQP_PORT)"

# ---------------------------------------------------------------------------------------------------
# 4b. pika (PyPI), the Python AMQP client tests/it/inbound.rs publishes with
# ---------------------------------------------------------------------------------------------------
if ! python3 -c 'import pika' >/dev/null 2>&1; then
    command -v python3 >/dev/null || die "python3 is needed (tests publish to RabbitMQ with pika)"
    log "installing pika from PyPI"
    python3 -m pip install -q --root-user-action=ignore 'pika==1.4.4' 2>/dev/null \
        || python3 -m pip install -q --break-system-packages 'pika==1.4.4' \
        || die "pip could not install pika"
fi
echo "ok pika $(python3 -c 'import pika; print(pika.__version__)')"

# ---------------------------------------------------------------------------------------------------
# 4c. openapi-spec-validator (PyPI), which tests/it/openapi.rs checks /openapi.json with
# ---------------------------------------------------------------------------------------------------
if ! python3 -c 'import openapi_spec_validator' >/dev/null 2>&1; then
    log "installing openapi-spec-validator from PyPI"
    python3 -m pip install -q --root-user-action=ignore 'openapi-spec-validator==0.9.0' 2>/dev/null \
        || python3 -m pip install -q --break-system-packages 'openapi-spec-validator==0.9.0' \
        || die "pip could not install openapi-spec-validator"
fi
echo "ok openapi-spec-validator $(python3 -c 'import importlib.metadata as m; print(m.version("openapi-spec-validator"))')"

# ---------------------------------------------------------------------------------------------------
# 4c2. opentelemetry-proto (PyPI), which tests/otlp/receiver.py decodes OTLP/HTTP spans with
#      (tests/it/tracing.rs), and promtool (Debian's prometheus), which checks /metrics
# ---------------------------------------------------------------------------------------------------
if ! python3 -c 'import opentelemetry.proto.collector.trace.v1.trace_service_pb2' >/dev/null 2>&1; then
    log "installing opentelemetry-proto from PyPI"
    python3 -m pip install -q --root-user-action=ignore 'opentelemetry-proto==1.45.2' 2>/dev/null \
        || python3 -m pip install -q --break-system-packages 'opentelemetry-proto==1.45.2' \
        || die "pip could not install opentelemetry-proto"
fi
echo "ok opentelemetry-proto $(python3 -c 'import importlib.metadata as m; print(m.version("opentelemetry-proto"))')"
if ! command -v promtool >/dev/null; then
    log "installing promtool (Debian's prometheus, without its recommends)"
    apt-get install -y -q --no-install-recommends prometheus >/dev/null \
        || die "apt-get could not install prometheus (for promtool)"
    # Only its promtool is wanted: the server it brings must not run.
    systemctl disable --now prometheus >/dev/null 2>&1 || true
fi
echo "ok $(promtool --version 2>&1 | head -1)"

# ---------------------------------------------------------------------------------------------------
# 4d. amqplib (npm), which tests/it/inbound/snippets.rs runs the README's Node snippet with
# ---------------------------------------------------------------------------------------------------
NODE_DIR=/var/tmp/granda-test-node
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    log "installing nodejs and npm from Debian"
    apt-get install -y -q nodejs npm >/dev/null || die "apt-get could not install nodejs and npm"
fi
if [ ! -f "$NODE_DIR/node_modules/amqplib/package.json" ]; then
    log "installing amqplib from npm into $NODE_DIR"
    mkdir -p "$NODE_DIR"
    npm install --prefix "$NODE_DIR" --no-save --no-audit --no-fund -s 'amqplib@2.3.1' \
        || die "npm could not install amqplib"
fi
echo "ok amqplib $(node -p "require('$NODE_DIR/node_modules/amqplib/package.json').version") (node $(node --version))"

# ---------------------------------------------------------------------------------------------------
# 4e. kubernetes-validate (PyPI), which `make deploy-check` validates deploy/kubernetes/ with
# ---------------------------------------------------------------------------------------------------
K8S_VALIDATE_VERSION=1.37.0
k8s_validate_version() { python3 -m pip show kubernetes-validate 2>/dev/null | sed -n 's/^Version: //p'; }
if [ "$(k8s_validate_version)" != "$K8S_VALIDATE_VERSION" ]; then
    log "installing kubernetes-validate $K8S_VALIDATE_VERSION from PyPI"
    python3 -m pip install -q --root-user-action=ignore "kubernetes-validate==$K8S_VALIDATE_VERSION" 2>/dev/null \
        || python3 -m pip install -q --break-system-packages "kubernetes-validate==$K8S_VALIDATE_VERSION" \
        || die "pip could not install kubernetes-validate"
    command -v pyenv >/dev/null && pyenv rehash || true
fi
[ "$(k8s_validate_version)" = "$K8S_VALIDATE_VERSION" ] || die "kubernetes-validate $K8S_VALIDATE_VERSION is not what python3 -m pip show reports"
echo "ok kubernetes-validate $K8S_VALIDATE_VERSION"

# ---------------------------------------------------------------------------------------------------
# 4f. SDK generators (tests/it/sdk.rs): openapi-python-client and mypy (PyPI), openapi-typescript
#     and typescript (npm, in /var/tmp/granda-test-ts), each pinned
# ---------------------------------------------------------------------------------------------------
SDK_PY=("openapi-python-client==0.29.1" "mypy==2.4.1")
sdk_py_ok() {
    for pin in "${SDK_PY[@]}"; do
        [ "$(python3 -m pip show "${pin%%==*}" 2>/dev/null | sed -n 's/^Version: //p')" = "${pin##*==}" ] || return 1
    done
}
if ! sdk_py_ok; then
    log "installing ${SDK_PY[*]} from PyPI"
    python3 -m pip install -q --root-user-action=ignore "${SDK_PY[@]}" 2>/dev/null \
        || python3 -m pip install -q --break-system-packages "${SDK_PY[@]}" \
        || die "pip could not install ${SDK_PY[*]}"
    command -v pyenv >/dev/null && pyenv rehash || true
fi
sdk_py_ok || die "pip does not show ${SDK_PY[*]}"
echo "ok ${SDK_PY[*]}"
TS_DIR=/var/tmp/granda-test-ts
TS_PINS=("openapi-typescript@7.13.0" "typescript@5.9.3")
ts_ok() {
    for pin in "${TS_PINS[@]}"; do
        [ "$(node -p "require('$TS_DIR/node_modules/${pin%@*}/package.json').version" 2>/dev/null)" = "${pin##*@}" ] || return 1
    done
}
if ! ts_ok; then
    log "installing ${TS_PINS[*]} from npm into $TS_DIR"
    mkdir -p "$TS_DIR"
    npm install --prefix "$TS_DIR" --no-save --no-audit --no-fund -s "${TS_PINS[@]}" \
        || die "npm could not install ${TS_PINS[*]}"
fi
ts_ok || die "$TS_DIR lacks ${TS_PINS[*]}"
echo "ok ${TS_PINS[*]}"

# ---------------------------------------------------------------------------------------------------
# 5. Test images
# ---------------------------------------------------------------------------------------------------
# Prints one line when all are there; progress and checks when it builds.
bash "$ROOT/scripts/build-test-images.sh" || die "building the test images failed"

# ---------------------------------------------------------------------------------------------------
# 6. Runtime base images (build from source works with the default settings, with no registry)
# ---------------------------------------------------------------------------------------------------
bash "$ROOT/scripts/build-runtime-images.sh" --quiet || die "building the runtime base images failed"
echo "ok runtime images granda/runtime-shell, granda/runtime-python3"
