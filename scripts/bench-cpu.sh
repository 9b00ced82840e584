#!/usr/bin/env bash
# CPU per recorded hot call, by process: `granda up` with default settings, driven by wrk
# (CLIENTS kept-alive connections, one request at a time each) on POST /fn/echo-hot
# (granda-test/hot, an echo), BODY bytes per call. For each run it reads from /proc the CPU time
# (user + system) that Granda, RabbitMQ (beam.smp) and Postgres (the postmaster and all its
# processes) spent during the load, divides by the calls recorded `succeeded` in Postgres in that
# time, and does the same for Granda alone on a bare GET /healthz (same server, same wrk): the
# floor of an HTTP round trip on this machine.
#
# With two binaries it runs them alternately (A B A B ...), ROUNDS times each, so that both see
# the same machine; ratios B / A are printed at the end. These machines are noisy: compare within
# one run, not across runs.
#
# With FLOOR=1 each round also runs scripts/bench-floor.py (the same CLIENTS and BODY): what
# RabbitMQ and Postgres alone cost for a recorded call's messages and two transactions, driven by
# pika and psycopg2 with no Granda; its rows show RabbitMQ + Postgres in the total column.
#
# usage: scripts/bench-cpu.sh [BIN_A [BIN_B]]   (default: target/release/granda, else debug)
# env:   ROUNDS (3), CLIENTS (8), DURATION (10s), BODY (1024), PORT (18490), FLOOR (0)
# needs: wrk, curl, psql, granda-test/hot (scripts/build-test-images.sh).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
. "$ROOT/scripts/lib.sh"
ROUNDS=${ROUNDS:-3} CLIENTS=${CLIENTS:-8} DURATION=${DURATION:-10s} BODY=${BODY:-1024} PORT=${PORT:-18490}
FLOOR=${FLOOR:-0}
if [ "$FLOOR" = 1 ] && [[ ! $DURATION =~ ^[0-9]+s$ ]]; then
    echo "bench-cpu: FLOOR=1 needs DURATION in seconds (e.g. 10s), not $DURATION" >&2
    exit 1
fi
default_bin=$ROOT/target/release/granda
[ -x "$default_bin" ] || default_bin=$ROOT/target/debug/granda
bins=("${@:-$default_bin}")
command -v wrk >/dev/null || { echo "bench-cpu: wrk is missing (apt-get install -y wrk)" >&2; exit 1; }
KEY=gk_bench-cpu-admin-key-0123456789
PG=${GRANDA_TEST_POSTGRES:-postgres://root@127.0.0.1:5432}
TCK=$(getconf CLK_TCK)

work=$(mktemp -d /tmp/granda-bench-cpu.XXXXXX)
pid=""
cleanup() { [ -z "$pid" ] || kill "$pid" 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
head -c "$BODY" /dev/zero | tr '\0' 'x' >"$work/body"
cat >"$work/post.lua" <<LUA
wrk.method = "POST"
local f = io.open("$work/body", "rb")
wrk.body = f:read("*a")
f:close()
wrk.headers["Authorization"] = "Bearer $KEY"
LUA

# CPU ticks (user + system, all threads) of the given pids, summed; a pid gone counts 0.
ticks() {
    local sum=0 p line
    for p in "$@"; do
        line=$(cat "/proc/$p/stat" 2>/dev/null) || continue
        line=${line##*) }
        # after the comm field: state is field 3; utime and stime are fields 14 and 15
        set -- $line
        sum=$((sum + ${12} + ${13}))
    done
    echo "$sum"
}
# The RabbitMQ node on 5672 (another node a test starts beside it is not this one).
rabbit_pid() { ss -ltnpH 'sport = :5672' | grep -o 'beam.smp",pid=[0-9]*' | head -1 | cut -d= -f2; }
postgres_pids() {
    local master
    master=$(ss -ltnpH 'sport = :5432' | grep -o 'postgres",pid=[0-9]*' | head -1 | cut -d= -f2)
    [ -n "$master" ] || return 0
    echo "$master $(pgrep -P "$master" | tr '\n' ' ')"
}
recorded() { psql "$PG/$1" -tAqc "SELECT count(*) FROM invocations WHERE function = 'echo-hot' AND status = 'succeeded'"; }

# One measurement of binary $1: prints "calls/s granda_ms rabbit_ms postgres_ms healthz_ms p50_ms".
measure() {
    local bin=$1 tag db out
    tag=$(head -c4 /dev/urandom | od -An -tx1 | tr -d ' \n')
    db=granda_cpu_$tag
    bench_start "$bin" "$work/granda-$tag.log" GRANDA_LISTEN=127.0.0.1:$PORT GRANDA_DATABASE_URL=$PG/$db \
        GRANDA_AMQP_PREFIX=granda-cpu-$tag GRANDA_WORKER_ID=cpu-$tag GRANDA_ADMIN_KEY=$KEY \
        GRANDA_STATE_DIR=$work/state
    bench_register "$PORT" "$KEY" '{"name":"echo-hot","image":"granda-test/hot","mode":"hot","memory_mb":64}' echo-hot
    wrk -t1 -c"$CLIENTS" -d2s -s "$work/post.lua" "http://127.0.0.1:$PORT/fn/echo-hot" >/dev/null
    local rabbit pg before_rec g0 r0 p0 g1 r1 p1 after_rec
    rabbit=$(rabbit_pid)
    pg=$(postgres_pids)
    before_rec=$(recorded "$db")
    g0=$(ticks "$pid"); r0=$(ticks $rabbit); p0=$(ticks $pg)
    out=$(wrk -t1 -c"$CLIENTS" -d"$DURATION" --latency -s "$work/post.lua" "http://127.0.0.1:$PORT/fn/echo-hot")
    g1=$(ticks "$pid"); r1=$(ticks $rabbit); p1=$(ticks $(postgres_pids))
    after_rec=$(recorded "$db")
    grep -q "Non-2xx" <<<"$out" && echo "bench-cpu: non-2xx answers in $(basename "$bin")'s run" >&2
    local secs h0 h1 hout hreq
    secs=$(awk '/requests in/ {v=$4; sub(/s,?$/, "", v); print v}' <<<"$out")
    h0=$(ticks "$pid")
    hout=$(wrk -t1 -c"$CLIENTS" -d5s "http://127.0.0.1:$PORT/healthz")
    h1=$(ticks "$pid")
    hreq=$(awk '/requests in/ {print $1}' <<<"$hout")
    local p50
    p50=$(wrk_p50 <<<"$out")
    bench_stop "$PG" "$db" "granda-cpu-$tag"
    awk -v n=$((after_rec - before_rec)) -v s="$secs" -v g=$((g1 - g0)) -v r=$((r1 - r0)) \
        -v p=$((p1 - p0)) -v h=$((h1 - h0)) -v hr="$hreq" -v t="$TCK" -v l="$p50" \
        'BEGIN { ms = 1000 / t; printf "%.0f %.3f %.3f %.3f %.4f %.2f\n", n / s, g * ms / n, r * ms / n, p * ms / n, h * ms / hr, l }'
}

echo "| build | recorded calls/s | Granda ms/call | RabbitMQ ms/call | Postgres ms/call | total ms/call | /healthz ms (Granda) | Granda / healthz | p50 ms |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
declare -A sum
for round in $(seq "$ROUNDS"); do
    for i in "${!bins[@]}"; do
        read -r rate g r p h l < <(measure "${bins[$i]}")
        name=$(basename "$(dirname "${bins[$i]}")")/$(basename "${bins[$i]}")
        awk -v b="$name" -v a="$rate" -v g="$g" -v r="$r" -v p="$p" -v h="$h" -v l="$l" \
            'BEGIN { printf "| %s | %.0f | %.3f | %.3f | %.3f | %.3f | %.4f | %.1f | %.2f |\n", b, a, g, r, p, g + r + p, h, g / h, l }'
        sum[$i,rate]=$(awk -v a="${sum[$i,rate]:-0}" -v b="$rate" 'BEGIN {print a + b}')
        sum[$i,total]=$(awk -v a="${sum[$i,total]:-0}" -v g="$g" -v r="$r" -v p="$p" 'BEGIN {print a + g + r + p}')
        for k in g r p; do
            sum[$i,$k]=$(awk -v a="${sum[$i,$k]:-0}" -v b="${!k}" 'BEGIN {print a + b}')
        done
    done
    if [ "$FLOOR" = 1 ]; then
        read -r rate r p _ < <(python3 "$ROOT/scripts/bench-floor.py" --bare --clients "$CLIENTS" \
            --seconds "${DURATION%s}" --body "$BODY")
        awk -v a="$rate" -v r="$r" -v p="$p" \
            'BEGIN { printf "| floor: pika + psycopg2, no Granda | %.0f | | %.3f | %.3f | %.3f | | | |\n", a, r, p, r + p }'
    fi
done
if [ ${#bins[@]} -eq 2 ]; then
    echo
    echo "| B / A, mean of $ROUNDS rounds | recorded calls/s | Granda | RabbitMQ | Postgres | total CPU per call |"
    echo "|---|---:|---:|---:|---:|---:|"
    awk -v ra="${sum[0,rate]}" -v rb="${sum[1,rate]}" -v ga="${sum[0,g]}" -v gb="${sum[1,g]}" \
        -v qa="${sum[0,r]}" -v qb="${sum[1,r]}" -v pa="${sum[0,p]}" -v pb="${sum[1,p]}" \
        -v ta="${sum[0,total]}" -v tb="${sum[1,total]}" \
        'BEGIN { printf "| ratio | %.2f | %.2f | %.2f | %.2f | %.2f |\n", rb / ra, gb / ga, qb / qa, pb / pa, tb / ta }'
fi
