# Helpers the setup scripts share; source it with `. "$(dirname "${BASH_SOURCE[0]}")/lib.sh"`.

# Waits up to $1 seconds for the command in "${@:2}" to succeed, trying it every 0.3 s.
wait_for() {
    local secs=$1; shift
    local deadline=$((SECONDS + secs))
    until "$@" >/dev/null 2>&1; do
        [ "$SECONDS" -lt "$deadline" ] || return 1
        sleep 0.3
    done
}
