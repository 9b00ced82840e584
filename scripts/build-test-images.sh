#!/usr/bin/env bash
# Builds the local test images granda-test/<name>:latest from tests/images/<name>/Dockerfile.
#
# No registry is reachable, so nothing is pulled: granda-test/busybox is built FROM scratch with Debian's
# static busybox (package busybox-static, /bin/busybox) copied into a temporary build context, and the
# other images are FROM granda-test/busybox. Builds and test runs use --network none.
#
# An image whose tag already exists is skipped, unless --force is given. Every image built is then run
# once to check that it behaves; --verify checks all of them, built now or not.
#
# usage: scripts/build-test-images.sh [--force] [--verify] [--quiet]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR="$ROOT/tests/images"
PREFIX=granda-test
BUSYBOX=${BUSYBOX:-/bin/busybox}
# The base first: the others are built FROM it.
NAMES=(busybox echo fail sleep big env args sh)

force=0 verify_all=0 quiet=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --verify) verify_all=1 ;;
        --quiet | -q) quiet=1 ;;
        -h | --help) sed -n '2,11p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-test-images: unknown argument: $arg" >&2; exit 2 ;;
    esac
done

say() { [ "$quiet" = 1 ] || echo "$@"; }
die() { echo "build-test-images: $*" >&2; exit 1; }

command -v docker >/dev/null || die "docker is not installed (run scripts/setup.sh)"
docker info >/dev/null 2>&1 || die "the Docker engine does not answer (run scripts/setup.sh)"

# The legacy builder: this engine (20.10) has no buildx, and it honours --network none for RUN steps.
export DOCKER_BUILDKIT=0

# One call to learn which tags exist.
existing=" $(docker images --filter "reference=$PREFIX/*:latest" --format '{{.Repository}}' | tr '\n' ' ') "
has_image() { [[ "$existing" == *" $PREFIX/$1 "* ]]; }

tmp=""
cleanup() { [ -z "$tmp" ] || rm -rf "$tmp"; }
trap cleanup EXIT

build() {
    local name=$1 dir="$IMAGES_DIR/$1"
    [ -f "$dir/Dockerfile" ] || die "missing $dir/Dockerfile"
    [ -n "$tmp" ] || tmp=$(mktemp -d /tmp/granda-test-images.XXXXXX)
    local ctx="$tmp/$name"
    mkdir -p "$ctx"
    cp -a "$dir/." "$ctx/"
    rm -f "$ctx/busybox"
    if grep -q '^COPY busybox' "$dir/Dockerfile"; then
        [ -x "$BUSYBOX" ] || die "$BUSYBOX is missing (apt-get install busybox-static)"
        # It must be the static one: the image has no libc.
        if command -v file >/dev/null && ! file -L "$BUSYBOX" | grep -q 'statically linked'; then
            die "$BUSYBOX is not statically linked (apt-get install busybox-static)"
        fi
        cp -L "$BUSYBOX" "$ctx/busybox"
    fi
    say "building $PREFIX/$name"
    local log="$tmp/$name.log"
    if ! docker build --network none --rm --force-rm -t "$PREFIX/$name:latest" "$ctx" >"$log" 2>&1; then
        cat "$log" >&2
        die "docker build of $PREFIX/$name failed"
    fi
}

# Runs an image the way Granda's worker does (no network, no capabilities, read-only root, a /tmp tmpfs).
run() {
    docker run --rm --network none --cap-drop ALL --security-opt no-new-privileges \
        --read-only --tmpfs /tmp --pids-limit 64 --memory 64m "$@"
}

check() {
    local name=$1 img="$PREFIX/$1" out rc
    case "$name" in
        busybox)
            out=$(run "$img" /bin/busybox echo ok) ;;
        echo)
            out=$(printf 'hi\n' | run -i "$img")
            [ "$out" = hi ] || die "$img: expected 'hi', got '$out'" ;;
        fail)
            rc=0
            out=$(printf 'input' | run -i "$img" 2>&1) || rc=$?
            [ "$rc" = 3 ] || die "$img: expected exit 3, got $rc"
            [ "$out" = "something broke" ] || die "$img: expected 'something broke' on stderr, got '$out'" ;;
        sleep)
            out=$(run -e SLEEP_SECONDS=0 "$img")
            [ "$out" = slept ] || die "$img: expected 'slept', got '$out'" ;;
        big)
            out=$(run "$img" | wc -c)
            [ "$out" -eq 10000000 ] || die "$img: expected 10000000 bytes, got $out"
            out=$(run -e BYTES=17 "$img")
            [ "$out" = 0123456789abcdef ] || die "$img: BYTES=17 gave '$out'" ;;
        env)
            out=$(run -e GRANDA_FUNCTION=probe "$img")
            grep -qx 'GRANDA_FUNCTION=probe' <<<"$out" || die "$img: GRANDA_FUNCTION not printed: $out"
            grep -qx 'PATH=/bin' <<<"$out" || die "$img: PATH=/bin not printed: $out" ;;
        args)
            out=$(run "$img" hello 'big world')
            [ "$out" = "hello big world" ] || die "$img: expected 'hello big world', got '$out'" ;;
        sh)
            out=$(run "$img" 'echo $((6 * 7)) >&1; echo err >&2' 2>/dev/null)
            [ "$out" = 42 ] || die "$img: expected 42, got '$out'"
            out=$(printf 'hi\n' | run -i "$img")
            [ "$out" = hi ] || die "$img: expected 'hi' from the default CMD, got '$out'" ;;
        *)
            out=$(run "$img" true) ;;
    esac
    say "  verified $img"
}

built=()
for name in "${NAMES[@]}"; do
    if [ "$force" = 1 ] || ! has_image "$name"; then
        build "$name"
        built+=("$name")
    fi
done

to_check=()
if [ "$verify_all" = 1 ]; then to_check=("${NAMES[@]}"); else to_check=("${built[@]+"${built[@]}"}"); fi
for name in "${to_check[@]+"${to_check[@]}"}"; do
    check "$name"
done

# The summary line is printed even with --quiet.
if [ "${#built[@]}" = 0 ]; then
    echo "ok images $PREFIX/*: all ${#NAMES[@]} present${to_check[0]+, verified} (--force rebuilds)"
else
    echo "ok images $PREFIX/*: built and verified ${#built[@]} of ${#NAMES[@]}: ${built[*]}"
fi
