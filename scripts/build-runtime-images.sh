#!/usr/bin/env bash
# Builds the base images of Granda's build-from-source runtimes, locally and without a registry, so
# that the default settings work on a machine that reaches none:
#   granda/runtime-shell:latest    FROM scratch + Debian's static busybox (/bin/sh and the applets)
#   granda/runtime-python3:latest  a minimal Debian bookworm root (debootstrap, variant minbase) with
#                                  python3 and its whole standard library, from the Debian mirror apt
#                                  uses, imported with `docker import`
# GRANDA_RUNTIME_SHELL_IMAGE and GRANDA_RUNTIME_PYTHON3_IMAGE name these by default. The python root's
# tarball is cached in /var/tmp, so later runs only import it (a few seconds). An image that exists
# is kept unless --force is given.
# Usage: scripts/build-runtime-images.sh [--force] [--quiet] [shell|python3 ...]
set -euo pipefail
SHELL_IMAGE=granda/runtime-shell:latest
PYTHON_IMAGE=granda/runtime-python3:latest
CACHE=${GRANDA_PYTHON_ROOTFS_CACHE:-/var/tmp/granda-runtime-python3-rootfs.tar}
BUSYBOX=${BUSYBOX:-/bin/busybox}
force=0 quiet=0 wanted=()
for arg in "$@"; do
    case "$arg" in
        --force) force=1 ;;
        --quiet | -q) quiet=1 ;;
        shell | python3) wanted+=("$arg") ;;
        -h | --help) sed -n '2,12p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) echo "build-runtime-images: unknown argument: $arg" >&2; exit 2 ;;
    esac
done
[ "${#wanted[@]}" -gt 0 ] || wanted=(shell python3)
log() { [ "$quiet" = 1 ] || echo "build-runtime-images: $*" >&2; }
die() { echo "build-runtime-images: error: $*" >&2; exit 1; }
present() { [ "$force" = 0 ] && docker image inspect "$1" >/dev/null 2>&1; }

# Two callers at once (tests, setup) build each image once.
exec 9>/var/tmp/granda-runtime-images.lock
flock 9

build_shell() {
    if present "$SHELL_IMAGE"; then log "$SHELL_IMAGE is there"; return; fi
    [ -x "$BUSYBOX" ] || die "$BUSYBOX is missing (apt-get install busybox-static)"
    local ctx
    ctx=$(mktemp -d /tmp/granda-runtime-shell.XXXXXX)
    cp -L "$BUSYBOX" "$ctx/busybox"
    cat >"$ctx/Dockerfile" <<'DOCKERFILE'
FROM scratch
COPY busybox /bin/busybox
RUN ["/bin/busybox", "--install", "-s", "/bin"]
ENV PATH=/bin
DOCKERFILE
    log "building $SHELL_IMAGE"
    DOCKER_BUILDKIT=0 docker build -q --network none -t "$SHELL_IMAGE" "$ctx" >/dev/null 2>"$ctx/build.log" \
        || { cat "$ctx/build.log" >&2; rm -rf "$ctx"; die "docker build of $SHELL_IMAGE failed"; }
    rm -rf "$ctx"
    docker run --rm --network none "$SHELL_IMAGE" sh -c 'echo ok' | grep -q ok || die "$SHELL_IMAGE does not run sh"
    log "$SHELL_IMAGE is ready"
}

build_python() {
    if present "$PYTHON_IMAGE"; then log "$PYTHON_IMAGE is there"; return; fi
    if [ ! -s "$CACHE" ]; then
        if ! command -v debootstrap >/dev/null; then
            log "installing debootstrap"
            apt-get install -y -qq debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
        fi
        # The mirror apt is configured with (deb822 or one-line sources).
        local mirror root
        mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
        [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
        [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
        root=$(mktemp -d /var/tmp/granda-python3-root.XXXXXX)
        log "debootstrap bookworm (minbase + python3) from $mirror: a minute or two, once"
        debootstrap --variant=minbase --include=python3 bookworm "$root" "$mirror" >"$root.log" 2>&1 \
            || { tail -20 "$root.log" >&2; rm -rf "$root"; die "debootstrap failed"; }
        rm -f "$root.log"
        # Smaller image: no apt lists, docs or caches.
        rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
        tar -C "$root" -cf "$CACHE.tmp" .
        mv "$CACHE.tmp" "$CACHE"
        rm -rf "$root"
    fi
    log "importing $CACHE as $PYTHON_IMAGE"
    docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'CMD ["python3"]' "$CACHE" "$PYTHON_IMAGE" >/dev/null
    # The standard library is whole: json, sqlite3-free modules, urllib, ...
    docker run --rm --network none "$PYTHON_IMAGE" python3 -c 'import json, urllib.parse, decimal, email; print("ok")' \
        | grep -q ok || die "$PYTHON_IMAGE lacks the standard library"
    log "$PYTHON_IMAGE is ready"
}

command -v docker >/dev/null && docker info >/dev/null 2>&1 || die "the Docker engine does not answer (run scripts/setup.sh)"
for w in "${wanted[@]}"; do
    case "$w" in
        shell) build_shell ;;
        python3) build_python ;;
    esac
done
