#!/usr/bin/env bash
# Builds granda-test/hot-nap (hot/examples/nap.rs as a static binary, FROM scratch) for the
# I/O-bound rows of `granda-bench --scenario scheduler`.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
triple=$(rustc -vV | sed -n 's/^host: //p')
RUSTFLAGS="-C target-feature=+crt-static" cargo build --release -p granda-hot --example nap \
    --target "$triple" --target-dir "$ROOT/target/hot" --manifest-path "$ROOT/Cargo.toml"
ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
cp "$ROOT/tests/images/hot-nap/Dockerfile" "$ctx/"
cp "$ROOT/target/hot/$triple/release/examples/nap" "$ctx/nap"
DOCKER_BUILDKIT=0 docker build --network none -q -t granda-test/hot-nap:latest "$ctx"
