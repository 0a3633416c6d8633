# Build, run and test the gateway filters and the local demo stack.
# Works on a fresh machine: it installs what it needs (wasm32 target, .venv
# with the pinned Envoy and test tools).  `make help` lists the targets.

SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := build
# cargo parallelises by itself; keep the steps in order even under -j.
.NOTPARALLEL:

# Filter crates compiled to wasm (one <name>.wasm each, contract order).
WASM_FILTERS ?= sanitize jwt replay-guard e2ee fds-block passport route-breaker san-authz
# Filters that link another filter's crate (oidc verifies ID tokens with
# jwt's verifier): their own cargo invocation, or cargo would unify jwt's
# `standalone` entry point into them (two `_initialize`).
WASM_LINKED  ?= oidc
WASM_TARGET  := wasm32-wasip1
# Which modules the rendered Envoy configs run: `filters` (one .wasm per
# filter, the default), `suite` (suite.wasm: all seven filters, one VM per
# gateway; docs/performance.md) or `chain` (chain.wasm: ONE Envoy filter per
# gateway running its filters in order; docs/chain.md). Read by
# envoy/render.py, so make run, test, validate and bench all follow it:
# `make run WASM_BUILD=chain`. `native`: the gateways whose filters the
# native dynamic module serves run it (build/native/libgateway_native.so,
# filters/native; docs/native.md), the others keep their wasm modules.
# `native-chain`: the same gateways each as ONE native filter (the chain
# over the native host), the others as wasm chains (docs/native.md).
WASM_BUILD   ?= filters
export WASM_BUILD
# cargo's modules, and the ones Envoy loads: the same after Binaryen's
# wasm-opt (filters/wasm-opt/optimize.sh): ~18 % smaller, as fast,
# a faster start.
CARGO_WASM_DIR := target/$(WASM_TARGET)/release
WASM_DIR       := build/wasm
# Binaryen's wasm-opt from the npm registry, pinned by filters/wasm-opt's
# package-lock.json, installed under build/tools (kept by `make clean`).
BINARYEN_DIR   := build/tools/binaryen
BINARYEN_STAMP := $(BINARYEN_DIR)/.stamp
OPTIMIZE       := filters/wasm-opt/optimize.sh
wasm_files      = $(foreach f,$(1),$(CARGO_WASM_DIR)/$(subst -,_,$(f)).wasm)

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

.PHONY: build-native-module native-pin test-native test-native-chain test-asan
.PHONY: help all build build-wasm build-native wasm-target wasm-opt venv redis run reload test test-rust \
        lint validate browser test-integration test-suite build-suite build-chain test-chain bench bench-verify bench-chain bench-e2ee bench-tools demo-material compose-config render clean distclean \
        istio images image-tools test-istio http2-tools soak test-soak

help: ## list the targets
	@grep -hE '^[a-zA-Z_-]+:.*## ' $(MAKEFILE_LIST) | sort | \
	  awk 'BEGIN {FS = ":.*## "}; {printf "  %-18s %s\n", $$1, $$2}'

all: build venv ## build everything and install the test tools

# ------------------------------------------------------------------ toolchain

wasm-target: ## rustup target add wasm32-wasip1 (idempotent)
	@if ! rustup target list --installed 2>/dev/null | grep -qx '$(WASM_TARGET)'; then \
	  echo "rustup target add $(WASM_TARGET)"; rustup target add $(WASM_TARGET); fi

wasm-opt: $(BINARYEN_STAMP) ## install Binaryen's wasm-opt (npm, pinned) under build/tools

$(BINARYEN_STAMP): filters/wasm-opt/package.json filters/wasm-opt/package-lock.json
	@command -v npm >/dev/null || { echo "installing node and npm (apt-get install nodejs npm) for Binaryen's wasm-opt"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   nodejs npm) >/dev/null || true; }
	@command -v npm >/dev/null || { echo "the wasm build needs node (>= 18) and npm on PATH for Binaryen's wasm-opt" >&2; exit 1; }
	rm -rf $(BINARYEN_DIR)
	mkdir -p $(BINARYEN_DIR)
	cp filters/wasm-opt/package.json filters/wasm-opt/package-lock.json $(BINARYEN_DIR)/
	cd $(BINARYEN_DIR) && npm ci --silent --no-audit --no-fund
	touch $@

# The stack's shared state (one-time jtis, app nonces): Debian's redis-server
# (7.x), installed like node above when it is missing; the stack runs its own
# instance on 127.0.0.1:16379 (envoy/stack.py), never the system's.
redis: ## install redis-server (apt-get) if it is missing
	@command -v redis-server >/dev/null || { echo "installing redis-server (apt-get install redis-server)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   redis-server) >/dev/null || true; }
	@command -v redis-server >/dev/null || { echo "the stack needs redis-server >= 7 on PATH (Debian/Ubuntu: apt-get install redis-server)" >&2; exit 1; }
	@redis-server --version | grep -Eq 'v=([7-9]|[1-9][0-9])\.' || { echo "redis-server >= 7 needed (ACL users, CLIENT PAUSE ALL): $$(redis-server --version)" >&2; exit 1; }

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

build-wasm: wasm-target wasm-opt ## the filters' modules (build/wasm/<name>.wasm, what Envoy loads)
	$(CARGO) build --release --target $(WASM_TARGET) $(addprefix -p ,$(WASM_FILTERS))
	$(CARGO) build --release --target $(WASM_TARGET) $(addprefix -p ,$(WASM_LINKED))
	$(OPTIMIZE) $(WASM_DIR) $(call wasm_files,$(WASM_FILTERS) $(WASM_LINKED))
	@if [ "$(WASM_BUILD)" = suite ]; then $(MAKE) --no-print-directory build-suite; fi
	@if [ "$(WASM_BUILD)" = chain ]; then $(MAKE) --no-print-directory build-chain; fi
	@if [ "$(WASM_BUILD)" = native ]; then $(MAKE) --no-print-directory build-native-module; fi
	@if [ "$(WASM_BUILD)" = native-chain ]; then $(MAKE) --no-print-directory build-chain build-native-module; fi

# Its own cargo invocation: cargo unifies features per build, and the suite
# links the filters WITHOUT their `standalone` entry point.
build-suite: wasm-target wasm-opt ## suite.wasm: all seven filters in one module (filters/suite)
	$(CARGO) build --release --target $(WASM_TARGET) -p suite
	$(OPTIMIZE) $(WASM_DIR) $(call wasm_files,suite)

# Like the suite: its own cargo invocation (the filters without `standalone`).
# Two modules (filters/wasm-opt/callbacks): chain.wasm, without e2ee (Cargo
# feature), exports no response callback (gateways whose filters need none:
# Envoy never enters its VM for a response); chain_response.wasm, with e2ee,
# exports the response steps too (the app gateway). Cargo keeps both builds
# (one per feature set), so an unchanged tree relinks neither.
build-chain: wasm-target wasm-opt ## chain.wasm + chain_response.wasm: one Envoy filter per gateway running its filters in order (filters/chain)
	mkdir -p build/chain
	$(CARGO) build --release --target $(WASM_TARGET) -p chain
	cp -p $(CARGO_WASM_DIR)/chain.wasm build/chain/chain_response.wasm
	$(CARGO) build --release --target $(WASM_TARGET) -p chain --no-default-features
	cp -p $(CARGO_WASM_DIR)/chain.wasm build/chain/chain.wasm
	$(OPTIMIZE) $(WASM_DIR) build/chain/chain.wasm build/chain/chain_response.wasm

build-native:
	$(CARGO) build --release -p demo-services -p gatewayctl -p gateway-store

# The native dynamic module (filters/native, docs/native.md): the filters'
# proxy-wasm glue compiled for x86_64 (--cfg gateway_native) over the native
# host shim, profile `native` (release, panic = unwind). Its own target dir:
# the cfg changes every filter crate's build, and must not invalidate the
# wasm or test builds. Pinned to the Envoy it was written against
# (native-pin): the dynamic-module ABI is tied to the Envoy version, and
# Envoy 1.40 only warns on an ABI version mismatch.
NATIVE_DIR        := build/native
NATIVE_TARGET_DIR := target/native
NATIVE_ABI        := v0.2.0

native-pin: venv ## refuse the native module with any Envoy but ENVOY_VERSION (ABI NATIVE_ABI)
	@$(ENVOY) --version | grep -q '/$(ENVOY_VERSION)/' || \
	  { echo "the native module is pinned to Envoy $(ENVOY_VERSION) (dynamic-module ABI $(NATIVE_ABI)); this Envoy is: $$($(ENVOY) --version)" >&2; exit 1; }

build-native-module: native-pin ## build/native/libgateway_native.so: every filter as one Envoy dynamic module
	RUSTFLAGS="--cfg gateway_native" CARGO_TARGET_DIR=$(NATIVE_TARGET_DIR) $(CARGO) build --profile native -p gateway-native
	@mkdir -p $(NATIVE_DIR)
	@# A new file, renamed over the old one: an Envoy running the old module keeps its mapping.
	cp $(NATIVE_TARGET_DIR)/native/libgateway_native.so $(NATIVE_DIR)/.libgateway_native.so.tmp
	mv -f $(NATIVE_DIR)/.libgateway_native.so.tmp $(NATIVE_DIR)/libgateway_native.so

# ------------------------------------------------------------------------ run

run: build venv redis ## build, then run the whole stack in the foreground (Ctrl-C stops it; filter configs live: make reload)
	$(VPY) envoy/stack.py run

# The running stack takes its filters' configurations by ECDS from watched
# files (docs/operations.md, "Live configuration"): this re-renders them from
# examples/config and pushes them into every running replica, printing each
# one's verdict; exit 1 when a replica refused one (its old config keeps
# serving). RELOAD_ARGS='--override config/sanitize/web.json=/tmp/x.json'
# tries a file without editing examples/.
RELOAD_ARGS ?=
reload: ## push the edited examples/config filter configs into the running `make run` Envoys (live, ECDS); exit 1 on a rejection
	$(VPY) envoy/stack.py reload $(RELOAD_ARGS)

render: ## render the local Envoy config into build/envoy/envoy.yaml
	$(PYTHON) envoy/render.py --profile local

compose-config: ## render the docker-compose Envoy configs into build/compose/envoy.yaml, envoy-2.yaml
	$(PYTHON) envoy/render.py --profile compose
	$(PYTHON) envoy/render.py --profile compose --replica 2 --set STORE_HOST=gateway-store-2 -o build/compose/envoy-2.yaml

# ----------------------------------------------------------------------- test

# The integration suite runs twice: against the per-filter modules and
# against the chain build (docs/chain.md). Each pass is ~4 min on 2 cores,
# well inside CI's budget; the second pass leaves out only what does not
# depend on the build (test_envoy_config.py: the shipped per-filter config's
# shape; test_module_exports.py reads the sources and every built module in
# either pass). The suite build keeps its own target (make test-suite).
# test-native (~5 min: tests/native, then the integration files that cover
# the natively served gateways, egress and web, on WASM_BUILD=native: 207
# tests in 3 min once the stack is up, 2026-12-05) is the third pass; the
# whole suite also passes on WASM_BUILD=native (docs/native.md).
# test-native-chain is the fourth: the same files on WASM_BUILD=native-chain
# (each native gateway ONE native filter), plus its render and load checks:
# 338 tests in 2 min 52 s from the stack's start to its stop, 5 s of
# tests/native, 2026-12-05 (a few minutes more if its modules need building).
test: build venv test-rust lint validate test-integration test-chain test-native test-native-chain test-istio test-ops test-soak ## everything CI runs

# The property tests (proptest: the filters' arbitrary-input tests, the
# breaker model) draw their cases from this seed, so `make test` is
# repeatable; `make test-rust PROPTEST_RNG_SEED=$$RANDOM PROPTEST_CASES=5000`
# explores further (plain `cargo test` picks a random seed).
PROPTEST_RNG_SEED ?= 20261123

# `--workspace` unifies e2ee's features with filters/native's, so e2ee's
# codec is tested there with the native build's AES-GCM (`native-aead`:
# ring); the second run tests it with RustCrypto's, what the wasm modules run.
test-rust: redis ## cargo test --workspace (native; property tests from PROPTEST_RNG_SEED)
	PROPTEST_RNG_SEED=$(PROPTEST_RNG_SEED) $(CARGO) test --workspace
	PROPTEST_RNG_SEED=$(PROPTEST_RNG_SEED) $(CARGO) test -p e2ee

# clippy twice: for the host (every target: tests, examples) and for wasm32,
# where the `#[cfg(target_arch = "wasm32")]` glue that runs inside Envoy's VM
# is compiled at all (the deny list: unwrap, expect, panic, indexing).
lint: wasm-target ## rustfmt --check, clippy -D warnings (host and wasm32)
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	$(CARGO) clippy --target $(WASM_TARGET) --workspace --exclude demo-services --exclude gatewayctl -- -D warnings

# Every shipped Envoy config, rendered from the one template: the local one,
# and the compose one with only its path variables pointed at this checkout
# (the container paths do not exist here). Envoy's validate mode loads the
# wasm modules and runs their on_configure, so the filter JSON configs are
# checked too. Every build: filters (both replicas, compose), suite, chain.
validate: build-wasm build-suite build-chain venv compose-config ## render + envoy --mode validate every shipped config
	@mkdir -p build/validate
	$(PYTHON) envoy/render.py --profile local --wasm-build filters -o build/validate/local.yaml
	$(PYTHON) envoy/render.py --profile local --wasm-build filters --replica 2 -o build/validate/local-2.yaml
	$(PYTHON) envoy/render.py --profile compose --local-paths --wasm-build filters -o build/validate/compose.yaml
	$(VPY) envoy/render.py --profile local --wasm-build suite -o build/validate/suite.yaml
	$(VPY) envoy/render.py --profile local --wasm-build chain -o build/validate/chain.yaml
	@for f in build/validate/local.yaml build/validate/local-2.yaml build/validate/compose.yaml build/validate/suite.yaml build/validate/chain.yaml; do \
	  $(ENVOY) --mode validate --disable-hot-restart --log-level error -c "$$f"; done

test-integration: build venv redis http2-tools browser ## pytest against the real Envoy (tests/integration)
	$(VPY) -m pytest tests/integration $(PYTEST_ARGS)

# The native dynamic module (docs/native.md): its symbols and ABI against
# the shipped Envoy, the native config loading (tests/native), then the
# integration files that cover the gateways the native build serves (every
# shipped one: egress: sanitize, route-breaker; secure: + san-authz; web:
# sanitize, jwt, fds-block, passport, route-breaker, with root ticks and
# callouts: test_native_ticks.py; app: + replay-guard, e2ee; internal: oidc,
# the real-Chromium login included) against WASM_BUILD=native, and e2ee and
# replay-guard natively on the test stack's cut app gateway
# (tests/integration/native_app.py, test_e2ee_native.py). The oidc files
# add about 20 s natively.
NATIVE_TESTS ?= test_sanitize.py test_route_breaker.py test_san_authz.py test_operations.py test_stack.py \
  test_arbitrary_input.py test_jwt.py test_fds_block.py test_passport.py test_native_ticks.py \
  test_e2ee_native.py test_e2ee.py test_replay_guard.py \
  test_oidc.py test_oidc_provider.py test_internal_gateway.py test_oidc_browser.py

test-native: build-wasm build-native build-native-module venv redis http2-tools browser ## native module: symbols/ABI/load checks + the integration subset on WASM_BUILD=native
	@# e2ee's codec with the module's AES-GCM (ring): RFC 8188's vectors, the
	@# property tests, ring against RustCrypto byte for byte.
	PROPTEST_RNG_SEED=$(PROPTEST_RNG_SEED) $(CARGO) test -p e2ee --features native-aead
	$(VPY) -m pytest -c tests/pytest.ini tests/native $(PYTEST_ARGS)
	WASM_BUILD=native $(VPY) -m pytest $(addprefix tests/integration/,$(NATIVE_TESTS)) $(PYTEST_ARGS)

# The native-chain build (docs/native.md, "The chain as one native
# filter"): the gateways the native build converts each run as ONE native
# filter (filters/chain over the native host), the internal gateway as a
# wasm chain. The same integration files as test-native (the chain's
# redirections scoped to its callbacks, its ticks and root callouts on the
# native host, e2ee's response steps, the cut app gateway as a native
# chain), plus the render and load checks of tests/native.
NATIVE_CHAIN_TESTS ?= $(NATIVE_TESTS)

test-native-chain: build-wasm build-chain build-native build-native-module venv redis http2-tools browser ## the integration subset on WASM_BUILD=native-chain (each gateway ONE native filter)
	$(VPY) -m pytest -c tests/pytest.ini tests/native/test_native_render.py tests/native/test_native_symbols.py -k native_chain $(PYTEST_ARGS)
	WASM_BUILD=native-chain $(VPY) -m pytest $(addprefix tests/integration/,$(NATIVE_CHAIN_TESTS)) $(PYTEST_ARGS)

# AddressSanitizer over the native host's pure parts and filter-core (needs
# a nightly toolchain: not part of `make test`; docs/native.md, "Safety").
test-asan: ## the native module's pure parts under AddressSanitizer (nightly toolchain)
	RUSTFLAGS="-Zsanitizer=address" CARGO_TARGET_DIR=target/asan $(CARGO) +nightly test \
	  -p gateway-native -p filter-core --target x86_64-unknown-linux-gnu

http2-tools: ## install nghttp (HTTP/2 requests with trailers, for the tests) if missing
	@command -v nghttp >/dev/null || { echo "installing nghttp (apt-get install nghttp2-client)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   nghttp2-client) >/dev/null; command -v nghttp >/dev/null || { echo "nghttp still missing: install nghttp2-client"; exit 1; }; }

# The SSO browser test (tests/integration/test_oidc_browser.py) drives Debian's
# Chromium through Selenium (from tests/requirements.txt) with Debian's
# chromedriver, never a downloaded one.
browser: ## install Debian's chromium and chromium-driver (the SSO browser test) if missing
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  echo "installing chromium and chromium-driver (apt-get)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   chromium chromium-driver) >/dev/null; \
	  command -v chromium >/dev/null && command -v chromedriver >/dev/null || { echo "chromium/chromedriver still missing"; exit 1; }; fi

# The integration tests against the suite build (every filter block on
# suite.wasm, one VM per gateway). test_envoy_config.py checks the shape of
# the shipped per-filter config, so it is left out here.
test-suite: build build-suite venv redis http2-tools browser ## integration tests against suite.wasm (WASM_BUILD=suite)
	WASM_BUILD=suite $(VPY) -m pytest tests/integration --ignore tests/integration/test_envoy_config.py $(PYTEST_ARGS)

# The integration tests against the chain build (each gateway's filters in
# one Envoy filter, chain.wasm). test_envoy_config.py checks the shape of the
# shipped per-filter config, so it is left out here, as for the suite.
test-chain: build build-chain venv redis http2-tools browser ## integration tests against chain.wasm (WASM_BUILD=chain)
	WASM_BUILD=chain $(VPY) -m pytest tests/integration --ignore tests/integration/test_envoy_config.py \
	  --ignore tests/integration/test_module_exports.py $(PYTEST_ARGS)

bench: build venv redis bench-tools ## gateways vs bare Envoy and a no-op wasm floor; filters, suite, chain and native builds side by side, one interleaved run (docs/performance.md)
	$(CARGO) build --release --target $(WASM_TARGET) -p noop
	$(OPTIMIZE) $(WASM_DIR) $(call wasm_files,noop)
	$(MAKE) --no-print-directory build-suite
	$(MAKE) --no-print-directory build-chain
	$(MAKE) --no-print-directory build-native-module
	$(VPY) tests/bench/run.py $(BENCH_ARGS)

# The pure verifier built for wasm32-wasip1 and run under Node's V8 (the
# engine Envoy embeds): per-step µs of token verification, best of 7 rounds
# (docs/filters/jwt.md, Crypto backend). Needs node >= 18 on PATH.
bench-verify: venv wasm-target wasm-opt ## jwt verification micro-bench in V8 (node), RS256/ES256
	@command -v node >/dev/null || { echo "bench-verify needs node (>= 18) on PATH" >&2; exit 1; }
	@mkdir -p build/bench
	$(VPY) tests/bench/mint_tokens.py 50 > build/bench/tokens.txt
	@# Own target dir: a --no-default-features build of jwt must never replace
	@# target/.../jwt.wasm (the filter needs its `standalone` entry point).
	CARGO_TARGET_DIR=build/bench/target-verify $(CARGO) build --release --target $(WASM_TARGET) -p jwt --no-default-features --example verify_bench
	@# The same wasm-opt pass as the shipped modules.
	$(OPTIMIZE) build/bench build/bench/target-verify/$(WASM_TARGET)/release/examples/verify_bench.wasm
	node --no-warnings tests/bench/wasi-run.mjs build/bench/verify_bench.wasm build/bench/tokens.txt

# The web chain's request logic (sanitize, jwt, fds-block, passport,
# route-breaker) over the fake host, built for wasm32-wasip1 and run under
# Node's V8: each filter's own code per request, without Envoy's host calls
# (docs/performance.md, "Where the web chain's time goes"). Needs node >= 18.
bench-chain: venv wasm-target ## the web chain's wasm-side µs per filter in V8 (node), cached token; host calls per request, per-filter vs chain
	@command -v node >/dev/null || { echo "bench-chain needs node (>= 18) on PATH" >&2; exit 1; }
	@mkdir -p build/bench
	$(VPY) tests/bench/mint_tokens.py 1 > build/bench/chain-tokens.txt
	@# Own target dir: the example links the filters without `standalone`.
	CARGO_TARGET_DIR=build/bench/target-chain $(CARGO) build --release --target $(WASM_TARGET) -p suite --example chain_bench
	node --no-warnings --no-liftoff tests/bench/wasi-run.mjs build/bench/target-chain/$(WASM_TARGET)/release/examples/chain_bench.wasm build/bench/chain-tokens.txt
	@# Host calls per request: per-filter vs the chain build's one request
	@# context (filters/chain/tests/host_calls.rs, over a counting fake host).
	$(CARGO) test -q -p chain --test host_calls -- --nocapture

# e2ee's request decryption and response encryption (filters/e2ee/examples/
# e2ee_bench.rs) built for wasm32-wasip1 and run under Node's V8 (TurboFan,
# like Envoy), then natively with ring (the native build's AES-GCM): µs per
# request for 0/1/16/60 KiB bodies, fixed cost and cost per KiB against the
# budget (docs/filters/e2ee.md, "Performance").
bench-e2ee: venv wasm-target ## e2ee decrypt + re-encrypt µs per request and per KiB in V8 (node) and natively (ring)
	@command -v node >/dev/null || { echo "bench-e2ee needs node (>= 18) on PATH" >&2; exit 1; }
	@# Own target dir: the example links e2ee without `standalone`.
	CARGO_TARGET_DIR=build/bench/target-e2ee $(CARGO) build --release --target $(WASM_TARGET) -p e2ee --no-default-features --example e2ee_bench
	node --no-warnings --no-liftoff tests/bench/wasi-run.mjs build/bench/target-e2ee/$(WASM_TARGET)/release/examples/e2ee_bench.wasm examples/config/e2ee/app.json
	@# The same steps natively with the native build's AES-GCM (ring,
	@# feature native-aead): what libgateway_native.so runs (docs/native.md).
	CARGO_TARGET_DIR=build/bench/target-e2ee $(CARGO) run -q --release -p e2ee --no-default-features --features native-aead --example e2ee_bench -- examples/config/e2ee/app.json

bench-tools: ## install the load generator (wrk) if missing
	@command -v wrk >/dev/null || { echo "installing wrk"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk) >/dev/null; }

# --------------------------------------------------------------------- soak
# The whole stack (both replicas, Redis, sidecars, demo services) under a
# mixed workload over every gateway at SOAK_RATE tasks/s, with a fault
# schedule (demo services restarted, issuer slow then down, FDS down, Redis
# paused then restarted, OIDC provider down, an Envoy replica restarted, a
# valid and an invalid config pushed); per-phase figures, the invariants and
# a chart under build/soak/ (report.md, report.json, soak.png); exits 1 when
# an invariant breaks (docs/soak.md). A long run: make soak SOAK_DURATION=1800.
SOAK_DURATION ?= 180
SOAK_RATE     ?= 40
SOAK_ARGS     ?=
# The short form in `make test`: every fault once, ~2 minutes with the
# stack's start and the replica restart.
SOAK_SHORT_DURATION ?= 60

soak: build venv redis ## soak + chaos for SOAK_DURATION s (default 180) at SOAK_RATE tasks/s; build/soak/ (docs/soak.md)
	$(VPY) tests/soak/run.py --duration $(SOAK_DURATION) --rate $(SOAK_RATE) $(SOAK_ARGS)

test-soak: build venv redis ## the soak's short form (SOAK_SHORT_DURATION s, every fault once; part of make test)
	$(VPY) tests/soak/run.py --duration $(SOAK_SHORT_DURATION) --rate $(SOAK_RATE) $(SOAK_ARGS)

# ---------------------------------------------------------------------- istio
# Istio packaging (docs/istio.md): OCI images of the filters (and of the
# suite and chain builds) and the manifests generated from the Envoy chain,
# the example configs and the built modules.

ISTIO_REGISTRY ?=

istio: build-wasm build-suite build-chain venv gatewayctl ## regenerate istio/generated/ (WasmPlugin, EnvoyFilter, suite EnvoyFilter, chain; ISTIO_REGISTRY=host/path to change registry)
	$(VPY) istio/generate.py $(if $(ISTIO_REGISTRY),--registry $(ISTIO_REGISTRY))

images: build-wasm build-suite build-chain venv ## OCI images (Istio compat shape) of every filter, the suite and the chain build under build/images/, digests and sizes
	$(VPY) istio/oci.py

image-tools: ## install skopeo and docker-registry (apt-get) if missing
	@command -v skopeo >/dev/null && command -v docker-registry >/dev/null || { echo "installing skopeo docker-registry"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   skopeo docker-registry) >/dev/null; }

test-istio: images image-tools gatewayctl http2-tools ## manifests vs Istio CRDs + real Envoy, images, push/pull via a loopback registry
	REQUIRE_REGISTRY_TOOLS=1 $(VPY) -m pytest tests/istio $(PYTEST_ARGS)

# ------------------------------------------------------------------------ ops
# Operations (docs/operations.md): gatewayctl (filters/gatewayctl), alert
# rules checked with promtool (Debian's prometheus package).

.PHONY: gatewayctl token sign test-ops ops-tools

GATEWAYCTL := target/release/gatewayctl
SCOPE ?=
SUB   ?= user-1
KID   ?= demo-rs256
TTL   ?= 300
METHOD ?= GET
URL   ?= http://127.0.0.1:10001/api/v1/users/7
BODY  ?=

gatewayctl: ## build the operator CLI (target/release/gatewayctl)
	@$(CARGO) build --release -q -p gatewayctl

token: gatewayctl ## print a demo JWT: make -s token SCOPE=orders:write [SUB=user-1 KID=demo-es256 TTL=300]
	@$(GATEWAYCTL) token --scope '$(SCOPE)' --sub '$(SUB)' --kid '$(KID)' --ttl '$(TTL)'

sign: gatewayctl ## print app signature headers: make -s sign METHOD=POST URL=http://127.0.0.1:10001/api/v1/orders BODY='{...}'
	@$(GATEWAYCTL) sign '$(METHOD)' '$(URL)' $(if $(BODY),--body '$(BODY)')

ops-tools: ## install promtool (Debian package prometheus) if missing
	@command -v promtool >/dev/null || { echo "installing promtool (apt-get install prometheus)"; \
	  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
	   prometheus) >/dev/null; }

test-ops: ops-tools gatewayctl ## promtool check/test of docs/ops rules, dashboard JSON, gatewayctl validate --all + istio manifests
	promtool check rules docs/ops/prometheus-rules.yaml
	cd docs/ops && promtool test rules prometheus-rules.test.yaml
	$(PYTHON) -c 'import json,sys; d=json.load(open("docs/ops/grafana-gateway.json")); assert d["panels"], "no panels"; print("grafana-gateway.json:", len(d["panels"]), "panels")'
	$(GATEWAYCTL) validate --all
	@if [ -d istio/generated ]; then $(GATEWAYCTL) validate-manifest istio/generated; fi

# ----------------------------------------------------------------------- misc

demo-material: ## regenerate the demo keys and certificates (examples/keys, examples/certs)
	bash examples/gen-demo-material.sh

clean: ## remove build outputs (target/, build/ but its tools)
	$(CARGO) clean
	@if [ -d build ]; then find build -mindepth 1 -maxdepth 1 ! -name tools -exec rm -rf {} +; fi
	rm -rf .pytest_cache

distclean: clean ## also remove .venv and build/tools
	rm -rf $(VENV) build
