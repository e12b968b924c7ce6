# The one entry point: CI calls these same targets.
CARGO ?= cargo

.PHONY: build release test test-unit test-e2e lint fmt bench run fuzz

build:
	$(CARGO) build --locked

release:
	$(CARGO) build --locked --release

## Every test: unit, property, in-process integration, then end to end against a real control plane.
test: test-unit test-e2e

test-unit:
	$(CARGO) test --locked

test-e2e:
	e2e/run.sh

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --locked --all-targets -- -D warnings
	$(CARGO) clippy --locked --test e2e -- -D warnings
	cd bench/loadgen && $(CARGO) fmt -- --check && $(CARGO) clippy --locked --target-dir ../../target/loadgen -- -D warnings
	cd fuzz && $(CARGO) fmt -- --check && $(CARGO) clippy --locked --target-dir ../target/fuzz-lint -- -D warnings

fmt:
	$(CARGO) fmt --all
	cd bench/loadgen && $(CARGO) fmt
	cd fuzz && $(CARGO) fmt

## Local demo: control plane + webhook + a sample pod before and after; Ctrl-C cleans up.
run:
	e2e/demo.sh

## Benchmarks: the engine (criterion), the server under TLS load on one core, and end to end through a local
## control plane; prints one table and writes target/bench/results.json. Reports, never fails on a missed target.
bench:
	bench/run.sh

## Coverage-guided fuzzing (cargo-fuzz, installed on first use): the admission path, the policy parser and the
## `mutate` input reader, FUZZ_SECONDS each (default 60). Not part of `make test`.
FUZZ_SECONDS ?= 60
fuzz:
	FUZZ_SECONDS=$(FUZZ_SECONDS) fuzz/run.sh
