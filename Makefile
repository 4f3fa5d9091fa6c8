# Switchboard: `make demo` runs the main job, `make test` installs what the
# tests need and runs every test, `make bench` runs the benchmarks.

SHELL := /bin/bash
CARGO ?= cargo

.PHONY: all build test test-deps demo bench lint fmt crds fuzz

all: build

build:
	$(CARGO) build --workspace --bins

# Installs the test dependencies (idempotent; cached outside the clone).
test-deps:
	bash scripts/test-deps.sh

test: test-deps
	$(CARGO) build --workspace --bins
	$(CARGO) test --workspace --no-fail-fast
	bash scripts/fuzz.sh $(TEST_FUZZ_SECONDS)

# Coverage-guided fuzzing of every parser (fuzz/, libFuzzer on stable Rust): a bounded run per
# target that fails on any crash. `make test` runs it for TEST_FUZZ_SECONDS per target; longer:
# `make fuzz FUZZ_SECONDS=600`, or one target: `bash scripts/fuzz.sh 3600 sip_stream`.
TEST_FUZZ_SECONDS ?= 20
FUZZ_SECONDS ?= 60
fuzz:
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

# Regenerates crds/ from the Rust types (a test fails when they drift) and
# copies them into the Helm chart (a test fails when the copies differ).
crds:
	$(CARGO) run -q -p switchboard-operator --bin crdgen -- crds
	cp crds/*.yaml charts/switchboard/crds/

# A local fleet fed by examples/: the operator programs two media nodes over
# gRPC, SIPp calls both numbers and the call API places an outbound call to a
# SIPp carrier; the demo agent answers. Ends with one DEMO OK / DEMO FAILED
# line (exit 1 on failure) and stops everything it started.
# `make demo ARGS=--keep` leaves the fleet up; ARGS=--no-agent shows a failure.
demo:
	$(CARGO) build -q -p switchboard-media-node -p switchboard-operator -p switchboard-demo-agent -p switchboard-tests --bins
	$(CARGO) run -q -p switchboard-tests --bin switchboard-demo -- $(ARGS)

bench:
	bash scripts/bench.sh
