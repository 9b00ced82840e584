# Helpers the scripts share (setup and benchmarks); source it with `. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.

# Waits up to $1 seconds for the command in "${@:2}" to succeed, trying it every 0.3 s.
wait_for() {
    local secs=$1; shift
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.3
    done
}

# The benchmarks' own (scripts/bench-wrk.sh, scripts/bench-cpu.sh):

# Starts `$1 up` (logging to $2) with the environment assignments in "${@:3}", sets `pid` to its
# process (the binary's own: `env` execs it), and waits up to 30 s for its /healthz on
# GRANDA_LISTEN's port, which the assignments must name.
bench_start() {
    local bin=$1 log=$2 port
    shift 2
    port=$(printf '%s\n' "$@" | sed -n 's/^GRANDA_LISTEN=.*:\([0-9]*\)$/\1/p')
    env "$@" "$bin" up >"$log" 2>&1 &
    pid=$!
    for _ in $(seq 150); do curl -sf "http://127.0.0.1:$port/healthz" >/dev/null && break; sleep 0.2; done
}

# Registers the function JSON $3 as admin key $2 on port $1, and calls it once (`/fn/$4`) so that
# its container or process is up before the load.
bench_register() {
    curl -sf -H "Authorization: Bearer $2" -H 'Content-Type: application/json' \
        -d "$3" "http://127.0.0.1:$1/v1/functions" >/dev/null
    curl -sf -H "Authorization: Bearer $2" -d ping "http://127.0.0.1:$1/fn/$4" >/dev/null
}

# Stops the Granda started by `bench_start`, drops its database $2 (on server $1) and deletes its
# queues (those named with prefix $3).
bench_stop() {
    kill "$pid" 2>/dev/null || true
    for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    pid=""
    psql "$1/postgres" -qc "DROP DATABASE IF EXISTS $2 WITH (FORCE)" >/dev/null 2>&1 || true
    if command -v rabbitmqctl >/dev/null; then
        local q
        for q in $(rabbitmqctl -q list_queues name 2>/dev/null | grep "^$3\." || true); do
            rabbitmqctl -q delete_queue "$q" >/dev/null 2>&1 || true
        done
    fi
}

# The median latency, in ms, of the wrk --latency report on stdin.
wrk_p50() {
    awk '$1 == "50%" {v=$2; if (v ~ /us$/) {sub(/us/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v*=1000}; print v}'
}
