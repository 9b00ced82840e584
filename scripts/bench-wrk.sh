#!/usr/bin/env bash
# What an external load generator sees: `granda up` with default settings against the same build
# pinned at a fixed concurrency (GRANDA_MIN_CONCURRENCY = GRANDA_MAX_CONCURRENCY = PIN), each
# driven by wrk (closed-loop: CLIENTS connections, one request at a time each) on POST /fn/<name>,
# back to back, and the ratios. Uses target/release/granda when built, else target/debug/granda.
#
# usage: scripts/bench-wrk.sh [rows...]   rows: hot-nap-100 hot-nap-20 warm-nap echo (default: all)
# env:   CLIENTS (8), DURATION (10s), PIN (8), PORT (18480)
# needs: wrk (apt-get install wrk), curl, psql; granda-test/hot-nap (scripts/bench-images.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"
CLIENTS=${CLIENTS:-8} DURATION=${DURATION:-10s} PIN=${PIN:-8} PORT=${PORT:-18480}
BIN=$ROOT/target/release/granda
[ -x "$BIN" ] || BIN=$ROOT/target/debug/granda
command -v wrk >/dev/null || { echo "bench-wrk: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
KEY=gk_bench-wrk-admin-key-0123456789
PG=${GRANDA_TEST_POSTGRES:-postgres://root@127.0.0.1:5432}
rows=("$@")
[ ${#rows[@]} -gt 0 ] || rows=(hot-nap-100 hot-nap-20 warm-nap echo)

spec() { # name -> registration JSON
    case "$1" in
        hot-nap-100) echo '{"name":"hot-nap-100","image":"granda-test/hot-nap","mode":"hot","memory_mb":64,"env":{"NAP_MS":"100"}}' ;;
        hot-nap-20) echo '{"name":"hot-nap-20","image":"granda-test/hot-nap","mode":"hot","memory_mb":64,"env":{"NAP_MS":"20"}}' ;;
        warm-nap) echo '{"name":"warm-nap","image":"granda-test/sleep","mode":"warm","memory_mb":64,"env":{"SLEEP_SECONDS":"0.2"}}' ;;
        echo) echo '{"name":"echo","image":"granda-test/echo","memory_mb":64}' ;;
        *) echo "bench-wrk: unknown row $1" >&2; exit 2 ;;
    esac
}

lua=$(mktemp /tmp/granda-wrk.XXXXXX.lua)
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -f "$lua"; }
trap cleanup EXIT
cat >"$lua" <<LUA
wrk.method = "POST"
wrk.body = "ping"
wrk.headers["Authorization"] = "Bearer $KEY"
LUA

# One measurement: prints "<requests/s> <p50 ms>".
measure() { # row pinned(0|1)
    local tag db out
    tag=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
    db=granda_wrk_$tag
    local env=(GRANDA_LISTEN=127.0.0.1:$PORT GRANDA_DATABASE_URL=$PG/$db GRANDA_AMQP_PREFIX=granda-wrk-$tag
        GRANDA_WORKER_ID=wrk-$tag GRANDA_ADMIN_KEY=$KEY GRANDA_STATE_DIR=/tmp/granda-wrk-state RUST_LOG=warn)
    [ "$2" = 1 ] && env+=(GRANDA_MIN_CONCURRENCY=$PIN GRANDA_MAX_CONCURRENCY=$PIN)
    bench_start "$BIN" "/tmp/granda-wrk-$tag.log" "${env[@]}"
    bench_register "$PORT" "$KEY" "$(spec "$1")" "$1"
    out=$(wrk -t2 -c"$CLIENTS" -d"$DURATION" --latency -s "$lua" "http://127.0.0.1:$PORT/fn/$1")
    bench_stop "$PG" "$db" "granda-wrk-$tag"
    rm -f /tmp/granda-wrk-$tag.log
    local rps p50
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    p50=$(wrk_p50 <<<"$out")
    grep -q "Non-2xx" <<<"$out" && echo "bench-wrk: $1 had non-2xx answers" >&2
    echo "$rps $p50"
}

echo "| function | defaults (req/s, p50 ms) | pinned at $PIN (req/s, p50 ms) | throughput ratio | p50 ratio |"
echo "|---|---:|---:|---:|---:|"
for row in "${rows[@]}"; do
    read -r d_rps d_p50 < <(measure "$row" 0)
    read -r p_rps p_p50 < <(measure "$row" 1)
    awk -v r="$row" -v a="$d_rps" -v b="$d_p50" -v c="$p_rps" -v d="$p_p50" \
        'BEGIN { printf "| %s | %.1f, %.0f | %.1f, %.0f | %.2f | %.2f |\n", r, a, b, c, d, a/c, b/d }'
done
