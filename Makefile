# Granda: common tasks. `make setup` prepares the machine (Docker, PostgreSQL, RabbitMQ, test images).

SHELL := /bin/bash
# rustup installs cargo here; make it visible even when the login profile has not run.
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
# Arguments for the test binaries, e.g. `make test TEST_ARGS='--test-threads=1 --nocapture'`.
TEST_ARGS ?= --test-threads=4

.PHONY: setup build run test fuzz lint bench images

setup:
	bash scripts/setup.sh

build:
	$(CARGO) build --release --bins

run: setup
	$(CARGO) run --release --bin granda -- up

test: setup
	$(CARGO) test --workspace --all-targets -- $(TEST_ARGS)
	bash scripts/fuzz-api.sh

fuzz: setup
	bash scripts/fuzz-api.sh

lint:
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: setup
	$(CARGO) run --release --bin granda-bench
	$(CARGO) run --release --bin granda-bench -- --scenario hot --concurrency 8

images:
	bash scripts/build-test-images.sh --force
