# Turnpike: one entry point for building, testing, the demo and the benchmark.
#   make test    install what the tests need, build everything, run every test
#                (ENVOY_VERSION=1.37 make test: against another supported Envoy)
#   make test-matrix  the Envoy-facing tests against every supported Envoy minor
#   make demo    run the whole stack locally with sample tenants and tokens
#                (scripts/demo.sh: DEMO_DIR, PORT_OFFSET, PLANS, ... see its header)
#   make guides  run the guides in docs/ that scripts can run, checking every result
#   make images  build the counter, collector and filter OCI images (needs Docker)
#   make bench   Envoy without vs with Turnpike, same run, ratios printed
SHELL := /bin/bash
CARGO ?= cargo
TARGET_DIR := $(shell $(CARGO) metadata --format-version 1 --no-deps 2>/dev/null | python3 -c 'import json,sys; print(json.load(sys.stdin)["target_directory"])')
WASM := $(TARGET_DIR)/wasm32-wasip1/wasm/turnpike.wasm
BINS := -p turnpike-counter -p turnpike-collector -p turnpike-devtools

.PHONY: all tools build wasm bins test test-matrix unit lint fmt demo demo-stop guides images bench eval clean

all: build

tools:
	scripts/ensure-tools.sh

wasm:
	$(CARGO) build --target wasm32-wasip1 --profile wasm -p turnpike
	@ls -l $(WASM)

bins:
	$(CARGO) build $(BINS) --bins

build: wasm bins

# The README's test command. Integration tests find the binaries and the .wasm that
# `build` made, and Envoy/Redis/PostgreSQL that `tools` installed.
test: tools build
	$(CARGO) test --workspace --no-fail-fast

# The end-to-end tests that exercise Envoy, against the pinned patch of every supported
# Envoy minor in turn, then a table (scripts/test-matrix.sh; MATRIX="1.36 1.40" narrows).
test-matrix:
	scripts/test-matrix.sh $(MATRIX)

unit:
	$(CARGO) test --workspace --lib

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy -p turnpike --target wasm32-wasip1 -- -D warnings
	$(CARGO) fmt --manifest-path bench/floor/Cargo.toml -- --check
	$(CARGO) clippy --manifest-path bench/floor/Cargo.toml --target wasm32-wasip1 \
		--target-dir $(TARGET_DIR)/floor -- -D warnings
	$(CARGO) clippy --manifest-path bench/floor/Cargo.toml --target wasm32-wasip1 \
		--features exact --target-dir $(TARGET_DIR)/floor-exact -- -D warnings

fmt:
	$(CARGO) fmt --all

demo: tools
	scripts/demo.sh

demo-stop:
	scripts/demo.sh stop

# docs/meter-your-own-api.md, step by step (also a test: cargo test -p turnpike-tests --test guides).
guides: tools build
	scripts/guide-own-api.sh

# OCI images from deploy/docker/Dockerfile, tagged $(IMAGE_PREFIX)/<name>:<version>
# (default turnpike/counter:0.1.0, ...). IMAGES="devtools envoy" builds others.
IMAGES ?= counter collector filter
images:
	scripts/build-images.sh $(IMAGES)

# Three rounds: on a shared machine one slow minute should move a median, not decide
# a ratio (ROUNDS=1 make bench for a quick look).
bench: tools
	ROUNDS=$${ROUNDS:-3} bench/run.sh

# The anomaly detector on its synthetic labelled benchmark: recall, false alarms, NAB
# score, replay throughput (docs/anomaly-detection.md).
eval:
	$(CARGO) run --release -q -p turnpike-anomaly --bin turnpike-anomaly-eval

clean:
	$(CARGO) clean
