#!/usr/bin/env bash
# Builds granda-test/python3:latest, the base image of the python3 runtime in the tests, without a
# registry: a minimal Debian bookworm root (debootstrap, variant minbase, plus python3-minimal) from
# the Debian mirror apt uses, imported with `docker import`. The root's tarball is cached in
# /var/tmp/granda-python3-rootfs.tar, so later runs only import it (a few seconds).
# Usage: scripts/build-python-image.sh [--quiet]
set -euo pipefail
IMAGE=granda-test/python3:latest
CACHE=${GRANDA_PYTHON_ROOTFS_CACHE:-/var/tmp/granda-python3-rootfs.tar}
quiet=${1:-}
log() { [ "$quiet" = --quiet ] || echo "build-python-image: $*" >&2; }

if docker image inspect "$IMAGE" >/dev/null 2>&1; then
    log "$IMAGE is there"
    exit 0
fi
exec 9>/var/tmp/granda-python3-rootfs.lock
flock 9
if docker image inspect "$IMAGE" >/dev/null 2>&1; then exit 0; fi

if [ ! -s "$CACHE" ]; then
    if ! command -v debootstrap >/dev/null; then
        log "installing debootstrap"
        apt-get install -y -qq debootstrap >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq debootstrap >/dev/null; }
    fi
    # The mirror apt is configured with (deb822 or one-line sources).
    mirror=$(grep -hoE '^URIs: *\S+' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -1 || true)
    [ -n "$mirror" ] || mirror=$(grep -hoE '^deb +\S+' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | head -1 || true)
    [ -n "$mirror" ] || mirror=http://deb.debian.org/debian
    root=$(mktemp -d /var/tmp/granda-python3-root.XXXXXX)
    trap 'rm -rf "$root"' EXIT
    log "debootstrap bookworm (minbase + python3-minimal) from $mirror"
    debootstrap --variant=minbase --include=python3-minimal bookworm "$root" "$mirror" >"$root.log" 2>&1 \
        || { tail -20 "$root.log" >&2; exit 1; }
    rm -f "$root.log"
    # Smaller image: no apt lists, docs or caches.
    rm -rf "$root"/var/cache/apt/* "$root"/var/lib/apt/lists/* "$root"/usr/share/doc/* "$root"/usr/share/man/*
    tar -C "$root" -cf "$CACHE.tmp" .
    mv "$CACHE.tmp" "$CACHE"
fi
log "importing $CACHE as $IMAGE"
docker import -c 'ENV PATH=/usr/local/bin:/usr/bin:/bin' -c 'CMD ["python3"]' "$CACHE" "$IMAGE" >/dev/null
log "$IMAGE is ready"
