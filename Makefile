# Granda: common tasks. `make setup` prepares the machine (Docker, PostgreSQL, RabbitMQ, test images).

SHELL := /bin/bash
# rustup installs cargo here; make it visible even when the login profile has not run.
export PATH := $(HOME)/.cargo/bin:$(PATH)

CARGO ?= cargo
# Arguments for the test binaries, e.g. `make test TEST_ARGS='--test-threads=1 --nocapture'`.
TEST_ARGS ?= --test-threads=4

.PHONY: setup build run test fuzz lint bench images deploy-check engines idle

setup:
	bash scripts/setup.sh

build:
	$(CARGO) build --release --bins

run: setup
	@echo "make run: building Granda in release mode (about 6 minutes on 2 cores the first time; cargo shows its progress), then starting granda up on 127.0.0.1:8080"
	$(CARGO) run --release --bin granda -- up

# The cluster tests start a private 3-node RabbitMQ (scripts/rabbit-cluster.sh, ports 5681-5683,
# about 400 MB): stopped after the tests, pass or fail, unless it was running before them.
test: setup
	@if bash scripts/rabbit-cluster.sh status >/dev/null 2>&1; then had_cluster=1; else had_cluster=0; fi; \
	rc=0; $(CARGO) test --workspace --all-targets -- $(TEST_ARGS) || rc=$$?; \
	if [ $$had_cluster = 0 ]; then bash scripts/rabbit-cluster.sh stop; fi; \
	exit $$rc
	bash scripts/fuzz-api.sh

fuzz: setup
	bash scripts/fuzz-api.sh

lint: deploy-check
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# docker-compose.yml (docker-compose config) and deploy/ (kubernetes-validate), offline.
# Installs nothing: scripts/setup.sh (make setup) installs the pinned kubernetes-validate.
deploy-check:
	@command -v kubernetes-validate >/dev/null || { echo "deploy-check: kubernetes-validate is missing: run make setup" >&2; exit 1; }
	bash deploy/check.sh

# Host B's engine and the registry of tests/it/hosts.rs (the suite starts them itself).
engines:
	bash scripts/engines.sh start

bench: setup
	$(CARGO) run --release --bin granda-bench
	$(CARGO) run --release --bin granda-bench -- --scenario hot --concurrency 8

images:
	bash scripts/build-test-images.sh --force

# The worker's idle binary (src/worker/idle/idle.c -> granda-idle, committed): static, no libc.
idle:
	gcc -static -nostdlib -nostartfiles -Os -fno-asynchronous-unwind-tables -fno-stack-protector \
	  -fno-pie -no-pie -fno-builtin -Wall -Wextra -Wl,--build-id=none -s \
	  -o src/worker/idle/granda-idle src/worker/idle/idle.c
