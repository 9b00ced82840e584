#!/usr/bin/env bash
# Builds the local test images granda-test/<name>:latest from tests/images/<name>/Dockerfile.
#
# No registry is reachable, so nothing is pulled: granda-test/busybox is built FROM scratch with Debian's
# static busybox (package busybox-static, /bin/busybox) copied into a temporary build context, and the
# other images are FROM granda-test/busybox. Builds and test runs use --network none.
# granda-test/hot is FROM scratch too: the hot function hot/examples/echo.rs (crate granda-hot),
# compiled here as a static binary (cargo, into target/hot: a few seconds, nothing when unchanged);
# granda-test/hot-web likewise, from hot/examples/web.rs.
#
# An image whose tag already exists is skipped, unless --force is given or its files changed (the
# sha256 of its directory, or of granda-test/hot's binary and Dockerfile, is a label). Every image built is then
# run once to check that it behaves; --verify checks all of them, built now or not.
#
# usage: scripts/build-test-images.sh [--force] [--verify] [--quiet]
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
IMAGES_DIR="$ROOT/tests/images"
PREFIX=granda-test
BUSYBOX=${BUSYBOX:-/bin/busybox}
# The base first: the others are built FROM it.
NAMES=(busybox echo fail sleep big env args sh hot root volume volume-comma symlink sockfill forkbomb diskfill cgi hot-web thief volume-dotdot volume-proc)

force=0 verify_all=0 quiet=0
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --verify) verify_all=1 ;;
        --quiet | -q) quiet=1 ;;
        -h | --help) sed -n '2,14p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
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

tmp="" hot_container=""
cleanup() {
    [ -z "$hot_container" ] || docker rm -f "$hot_container" >/dev/null 2>&1 || true
    [ -z "$tmp" ] || rm -rf "$tmp"
}
trap cleanup EXIT
tmpdir() { [ -n "$tmp" ] || tmp=$(mktemp -d /tmp/granda-test-images.XXXXXX); }

# Compiles granda-test/hot's binary (cheap when nothing changed) and sets hot_bin and hot_sha, the
# sha256 of the binary and the Dockerfile. Returns 1 without cargo.
hot_bin="" hot_sha="" web_bin="" web_sha=""
compile_hot() {
    [ -z "$hot_bin" ] || return 0
    PATH="$HOME/.cargo/bin:$PATH"
    command -v cargo >/dev/null && command -v rustc >/dev/null || return 1
    local triple
    triple=$(rustc -vV | sed -n 's/^host: //p')
    tmpdir
    if ! RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p granda-hot --example echo --example web \
        --target "$triple" --target-dir "$ROOT/target/hot" --manifest-path "$ROOT/Cargo.toml" \
        >"$tmp/hot-cargo.log" 2>&1; then
        cat "$tmp/hot-cargo.log" >&2
        die "cargo build of granda-hot's example echo failed"
    fi
    hot_bin="$ROOT/target/hot/$triple/release/examples/echo"
    # FROM scratch: there is no libc in the image. (Rust links static-pie.)
    if command -v file >/dev/null && ! file -L "$hot_bin" | grep -Eq 'statically linked|static-pie linked'; then
        die "$hot_bin is not statically linked: $(file -L "$hot_bin")"
    fi
    hot_sha=$(cat "$hot_bin" "$IMAGES_DIR/hot/Dockerfile" | sha256sum | cut -d' ' -f1)
    web_bin="$ROOT/target/hot/$triple/release/examples/web"
    web_sha=$(cat "$web_bin" "$IMAGES_DIR/hot-web/Dockerfile" | sha256sum | cut -d' ' -f1)
}
# The sha256 of an image's own files (tests/images/<name>), its label: a changed script or
# Dockerfile rebuilds the image, so no machine keeps a stale one.
dir_sha() { (cd "$IMAGES_DIR/$1" && find . -type f ! -name busybox -print0 | sort -z | xargs -0 sha256sum) | sha256sum | cut -d' ' -f1; }
hot_label() { docker image inspect --format '{{index .Config.Labels "granda.test.sha256"}}' "$PREFIX/${1:-hot}:latest" 2>/dev/null; }

build() {
    local name=$1 dir="$IMAGES_DIR/$1"
    [ -f "$dir/Dockerfile" ] || die "missing $dir/Dockerfile"
    tmpdir
    local ctx="$tmp/$name" labels=()
    mkdir -p "$ctx"
    cp -a "$dir/." "$ctx/"
    rm -f "$ctx/busybox"
    if [ "$name" = hot ]; then
        cp "$hot_bin" "$ctx/echo"
        labels=(--label "granda.test.sha256=$hot_sha")
    fi
    if [ "$name" = hot-web ]; then
        cp "$web_bin" "$ctx/web"
        labels=(--label "granda.test.sha256=$web_sha")
    fi
    if [ "${#labels[@]}" = 0 ]; then
        labels=(--label "granda.test.sha256=$(dir_sha "$name")")
    fi
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
    if ! docker build --network none --rm --force-rm "${labels[@]+"${labels[@]}"}" -t "$PREFIX/$name:latest" "$ctx" >"$log" 2>&1; then
        cat "$log" >&2
        die "docker build of $PREFIX/$name failed"
    fi
}

# Runs an image the way Granda's worker does (no network, no capabilities, read-only root, a /tmp tmpfs).
run() {
    docker run --rm --network none --cap-drop ALL --security-opt no-new-privileges \
        --read-only --tmpfs /tmp --pids-limit 64 --memory 64m "$@"
}

# Sends one request to the hot function listening at socket $1: POST /invoke with the body $2, or
# GET /health without one. Prints "<status> <body>".
hot_request() {
    if command -v curl >/dev/null; then
        local args=(-sS --max-time 10 --unix-socket "$1" -o "$tmp/hot-body" -w '%{http_code}') code
        if [ $# -ge 2 ]; then args+=(--data-binary "$2" http://granda/invoke); else args+=(http://granda/health); fi
        code=$(curl "${args[@]}") || return 1
        printf '%s %s' "$code" "$(cat "$tmp/hot-body")"
    elif command -v python3 >/dev/null; then
        python3 - "$@" <<'PY'
import http.client, socket, sys
class Unix(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.settimeout(10)
        self.sock.connect(sys.argv[1])
c = Unix("granda")
if len(sys.argv) > 2:
    c.request("POST", "/invoke", body=sys.argv[2].encode())
else:
    c.request("GET", "/health")
r = c.getresponse()
sys.stdout.write(f"{r.status} {r.read().decode()}")
PY
    else
        die "curl or python3 is needed to check $PREFIX/hot"
    fi
}

# Starts granda-test/hot the way the worker does, with its socket in a bind-mounted directory, and
# talks to it.
check_hot() {
    local img=$1 dir sock out
    tmpdir
    dir="$tmp/hot-run"
    mkdir -p "$dir"
    chmod 777 "$dir" # the function runs as 65534
    sock="$dir/granda.sock"
    hot_container="granda-test-hot-check-$$"
    run -d --name "$hot_container" --user 65534 -e GRANDA_SOCKET=/run/granda/granda.sock \
        -v "$dir:/run/granda" "$img" >/dev/null
    for _ in $(seq 100); do
        [ -S "$sock" ] && break
        sleep 0.1
    done
    [ -S "$sock" ] || die "$img: no socket at $sock after 10 s: $(docker logs "$hot_container" 2>&1 | tail -5)"
    out=$(hot_request "$sock" hi) || die "$img: the request failed"
    [ "$out" = "200 hi" ] || die "$img: expected '200 hi', got '$out'"
    out=$(hot_request "$sock" count) || die "$img: the request failed"
    [ "$out" = "200 2" ] || die "$img: expected '200 2' (the same process serves both), got '$out'"
    out=$(hot_request "$sock") || die "$img: GET /health failed"
    [ "$out" = "200 " ] || die "$img: GET /health: expected '200 ', got '$out'"
    docker rm -f "$hot_container" >/dev/null
    hot_container=""
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
        hot)
            check_hot "$img" ;;
        cgi)
            # The whole output, then its first line: `| head -1` closes the pipe early, and under
            # pipefail the run's "broken pipe" failed the check now and then.
            out=$(run -e PATH_INFO=/created "$img"); out=${out%%$'\n'*}
            [ "$out" = $'Status: 201 Created\r' ] || die "$img: /created: expected a Status line, got '$out'" ;;
        thief)
            out=$(run -e PATH_INFO=/steal "$img"); out=${out%%$'\n'*}
            [ "$out" = 'Content-Type: text/html' ] || die "$img: /steal: expected an HTML page, got '$out'" ;;
        root)
            out=$(run "$img")
            [ "$out" = 0:0 ] || die "$img: expected '0:0', got '$out'" ;;
        volume | diskfill)
            out=$(run -e MB=2 "$img")
            [ "$out" = 2 ] || die "$img: expected '2' (MB written), got '$out'" ;;
        symlink | sockfill | forkbomb | hot-web | volume-comma | volume-dotdot | volume-proc)
            # Hostile by design: only checked to exist (the tests in tests/it/hostile.rs run them).
            out=$(docker image inspect --format '{{.Id}}' "$img") ;;
        *)
            out=$(run "$img" true) ;;
    esac
    say "  verified $img"
}

built=()
for name in "${NAMES[@]}"; do
    if [ "$name" = hot ]; then
        if ! compile_hot; then
            has_image hot || die "cargo is not installed: granda-test/hot can't be built (run scripts/setup.sh)"
            say "cargo is not installed: keeping $PREFIX/hot as it is"
            continue
        fi
        if [ "$force" = 0 ] && has_image hot && [ "$(hot_label)" = "$hot_sha" ]; then continue; fi
        build hot
        built+=(hot)
    elif [ "$name" = hot-web ]; then
        if ! compile_hot; then
            has_image hot-web || die "cargo is not installed: granda-test/hot-web can't be built (run scripts/setup.sh)"
            continue
        fi
        if [ "$force" = 0 ] && has_image hot-web && [ "$(hot_label hot-web)" = "$web_sha" ]; then continue; fi
        build hot-web
        built+=(hot-web)
    elif [ "$force" = 1 ] || ! has_image "$name" || [ "$(hot_label "$name")" != "$(dir_sha "$name")" ]; then
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
