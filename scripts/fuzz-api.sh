#!/usr/bin/env bash
# Property-based fuzzing of the whole HTTP API with schemathesis, against a live `granda up`.
#
# Starts granda on a free loopback port with a throwaway database, AMQP prefix and worker id and a
# known admin key, registers two functions, then lets schemathesis generate requests from
# /openapi.json with two checks: no 5xx from Granda itself (scripts/fuzz/granda_checks.py) and
# every documented answer conforms to its schema. Prints how many cases ran; cleans up; exits
# non-zero on any failure.
#
# usage: scripts/fuzz-api.sh   (FUZZ_MAX_EXAMPLES=60 FUZZ_MAX_TIME=240 FUZZ_SEED=... to tune;
#        GRANDA_BIN=path/to/granda when cargo builds elsewhere than target/)
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
POSTGRES=${GRANDA_TEST_POSTGRES:-postgres://root@127.0.0.1:5432}
AMQP=${GRANDA_TEST_AMQP_URL:-amqp://guest:guest@127.0.0.1:5672/%2f}
MAX_EXAMPLES=${FUZZ_MAX_EXAMPLES:-60}
MAX_TIME=${FUZZ_MAX_TIME:-240}
SEED=${FUZZ_SEED:-$RANDOM}

if ! "$PYTHON" -m schemathesis.cli --version >/dev/null 2>&1; then
    echo "== installing schemathesis"
    "$PYTHON" -m pip install --quiet --disable-pip-version-check schemathesis
fi

cargo build --quiet --bin granda
tag=$(od -An -N6 -tx1 /dev/urandom | tr -d ' \n')
db="granda_fuzz_$tag"
prefix="granda-fuzz-$tag"
key="gk_fuzz-admin-$tag-0123456789"
port=$("$PYTHON" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
base="http://127.0.0.1:$port"
work=$(mktemp -d /tmp/granda-fuzz.XXXXXX)
pid=""

cleanup() {
    set +e
    if [ -n "$pid" ]; then kill "$pid" 2>/dev/null; wait "$pid" 2>/dev/null; fi
    psql "$POSTGRES/postgres" -qc "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1
    for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$prefix\." ); do
        rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1
    done
    for x in $(rabbitmqctl -q list_exchanges name 2>/dev/null | grep "^$prefix\." ); do
        rabbitmqadmin delete exchange name="$x" >/dev/null 2>&1
    done
    # Containers of this run's worker, if any outlived it.
    ids=$(docker ps -aq --filter "label=granda.worker=fuzz-$tag")
    [ -z "$ids" ] || docker rm -f $ids >/dev/null 2>&1
    rm -rf "$work"
}
trap cleanup EXIT

echo "== granda up on $base (database $db, prefix $prefix)"
GRANDA_LISTEN="127.0.0.1:$port" \
GRANDA_DATABASE_URL="$POSTGRES/$db" \
GRANDA_AMQP_URL="$AMQP" \
GRANDA_AMQP_PREFIX="$prefix" \
GRANDA_WORKER_ID="fuzz-$tag" \
GRANDA_ADMIN_KEY="$key" \
GRANDA_IMAGE_PULL=never \
GRANDA_SYNC_WAIT_MS=10000 \
GRANDA_MAX_CONCURRENCY=2 \
GRANDA_SHUTDOWN_GRACE_MS=5000 \
RUST_LOG=${RUST_LOG:-warn} \
    "${GRANDA_BIN:-target/debug/granda}" up >"$work/granda.log" 2>&1 &
pid=$!
for _ in $(seq 1 100); do
    curl -sf "$base/healthz" >/dev/null 2>&1 && break
    kill -0 "$pid" 2>/dev/null || { cat "$work/granda.log"; echo "granda did not start" >&2; exit 1; }
    sleep 0.2
done
curl -sf "$base/healthz" >/dev/null || { cat "$work/granda.log"; exit 1; }

register() {
    curl -sf -o /dev/null "$base/v1/functions" -H "authorization: Bearer $key" \
        -H 'content-type: application/json' -d "$1"
}
register '{"name": "echo", "image": "granda-test/echo", "timeout_ms": 5000, "memory_mb": 64}'
register '{"name": "open", "image": "granda-test/echo", "timeout_ms": 5000, "memory_mb": 64, "public": true}'

echo "== schemathesis: up to $MAX_EXAMPLES examples per operation, at most ${MAX_TIME}s, seed $SEED"
started=$(date +%s)
rc=0
SCHEMATHESIS_HOOKS=granda_checks PYTHONPATH="$ROOT/scripts/fuzz" \
    "$PYTHON" -m schemathesis.cli run "$base/openapi.json" \
        --checks granda_not_a_server_error,response_schema_conformance \
        --header "Authorization: Bearer $key" \
        --max-examples "$MAX_EXAMPLES" \
        --max-time "$MAX_TIME" \
        --seed "$SEED" \
        --workers 2 \
        --request-timeout 30 \
        --generation-allow-x00 true \
        --report ndjson --report-dir "$work" \
        --no-color 2>&1 | tee "$work/schemathesis.txt" || rc=$?
elapsed=$(( $(date +%s) - started ))

summary=$(grep -A1 '^Test cases:' "$work/schemathesis.txt" | tail -1 | sed 's/^ *//' || true)
echo "== fuzzed for ${elapsed}s; test cases: ${summary:-see above}"
if grep -q 'panicked' "$work/granda.log"; then
    echo "granda panicked:" >&2
    grep -A3 'panicked' "$work/granda.log" >&2
    rc=1
fi
if [ "$rc" != 0 ]; then
    echo "== granda log (tail)"; tail -40 "$work/granda.log"
    echo "FAIL: the API fuzz run found problems (seed $SEED)" >&2
    exit "$rc"
fi
echo "ok api fuzz: no server errors, every answer matched its schema (seed $SEED)"
