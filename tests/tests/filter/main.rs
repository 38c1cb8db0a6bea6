//! The behavioural suite: the real `llm_metrics_filter.wasm` driven through the wasmtime host as
//! Envoy drives it. Build the filter first:
//! `cargo build --release --target wasm32-wasip1 -p llm-metrics-filter`.
//!
//! One test binary (one module compilation, one link) with a module per concern.

mod chunking;
mod common;
mod config;
mod envoy_config;
mod fixtures;
mod host_calls;
mod inject;
mod lifecycle;
mod timing;
mod traffic;
