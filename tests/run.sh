#!/usr/bin/env bash
# The project's test command (the README's second command; .ci/run runs exactly this).
#
#   bash tests/run.sh
#
# Installs what the tests need (envoy/setup.sh --test: wasm target, Envoy 1.40, tokenizer, Prometheus,
# promtool, amtool, the openai client), then: formatting and lints, both builds of the filter (the
# .wasm and the native dynamic module), the engine binary the end-to-end tests start, every cargo test
# in the workspace (filter core, the wasmtime host suite on the real .wasm, the engine, end-to-end
# tests through real Envoy with each build), and the deployment checks.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

step() { printf '\n== %s\n' "$*"; }

step "setup"
bash envoy/setup.sh --test

step "format and lints"
cargo fmt --all -- --check
# Every member and target with the workspace lints; then the filter's two other builds, whose shells
# (the dynamic module, the proxy-wasm host) the plain native build leaves out.
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy -p llm-metrics-filter --features dynamic-module --all-targets -- -D warnings
cargo clippy -p llm-metrics-filter --target wasm32-wasip1 -- -D warnings

step "build the filter (.wasm and native dynamic module) and the engine binary"
cargo build --release --target wasm32-wasip1 -p llm-metrics-filter
cargo build --release -p llm-metrics-filter --features dynamic-module
cargo build -p qwen3-engine --bins

step "cargo tests"
cargo test --workspace

step "deployment checks"
LLM_FILTER_WASM=target/wasm32-wasip1/release/llm_metrics_filter.wasm LLM_FILTER_MODULE_DIR=target/release \
    bash envoy/check.sh
