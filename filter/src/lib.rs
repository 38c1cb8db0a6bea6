//! # llm-metrics-filter
//!
//! An HTTP filter for Envoy, built as a proxy-wasm module and as a native Envoy dynamic module, that
//! watches OpenAI-compatible LLM traffic — chat completions, completions, embeddings and the
//! Responses API — and Anthropic's Messages API, streamed (SSE) or not, and reports per-model
//! requests, tokens, time to first token, time per output token, duration, outcomes and requests in
//! flight through Envoy's own stats, which Prometheus scrapes from `/stats/prometheus`.
//!
//! It only observes: it never changes a byte, never pauses a stream, never answers a request itself
//! — except with the opt-in `inject_stream_usage`, which holds a streaming request's body to add
//! `stream_options.include_usage` and removes what that adds from the response (see [`inject`]).
//! What it cannot read (an oversized body, a body in an unknown `content-encoding`, a malformed event) it counts in
//! `llm_filter_errors_total` and lets through.
//!
//! ## Layout: bytes in → events → observations → stats
//! - [`encoding`]: gzip and deflate response bodies, inflated chunk by chunk into a private copy.
//! - [`sse`]: incremental `text/event-stream` decoder (bytes → events), split-safe at any byte.
//! - [`openai`]: narrow JSON views (request → model/stream, body/event → usage, token, end, error).
//! - [`inject`]: `inject_stream_usage` — the request rewrite and the response's usage-chunk removal.
//! - [`think`]: raw `<think>…</think>` tags in chat content (reasoning vs answer), split-safe.
//! - [`exchange`]: one request/response as a state machine fed bytes and clock values → [`exchange::Observation`].
//! - [`metrics`]: the public metrics contract (names, labels, tag encoding) and observation → stat ops.
//! - [`labels`]: the bounded `model` label and `label_headers` labels (sanitising, allowlist, process-wide cap, hashing).
//! - [`config`]: the strict JSON plugin configuration.
//! - [`header_pairs`]: the proxy-wasm ABI's serialised header map (one host call for all response headers).
//! - `host` (wasm32 only): the shell that talks to Envoy through the proxy-wasm ABI.
//! - `dynamic_module` (native, feature `dynamic-module`): the shell that talks to Envoy as a dynamic
//!   module (`libllm_metrics_filter.so`), the lowest-cost build.
//!
//! Both shells feed the same core and emit the same series. Everything except the shells is plain
//! Rust, unit-tested natively:
//!
//! ```
//! use llm_metrics_filter::{config::Config, exchange::Exchange, metrics::{Api, Outcome}, labels::ModelId};
//!
//! let config = Config::default();
//! let mut ex = Exchange::new(Api::ChatCompletions, 0);
//! ex.request_body(br#"{"model":"m","stream":true}"#, true, &config, &mut |_| ModelId(2));
//! ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
//! ex.response_body(b"data: {\"choices\":[{\"delta\":{\"content\":\"Hi\"}}]}\n\n", false, &config, &mut || 150_000_000);
//! ex.response_body(b"data: [DONE]\n\n", true, &config, &mut || 160_000_000);
//! let obs = ex.finish(170_000_000, &mut || 0);
//! assert_eq!(obs.outcome, Outcome::Completed);
//! assert_eq!(obs.ttft_ms, Some(150));
//! ```

// A panic kills the filter's wasm VM, or the whole Envoy process for the dynamic module, so the
// library has no panicking shortcuts: unwrap, expect, panic! and unchecked indexing are errors. They
// are set here rather than in Cargo.toml because the crate takes the workspace lints, which a member
// cannot extend there. Unit tests may still use them (filter/clippy.toml allows them in test code).
#![deny(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    clippy::indexing_slicing
)]

pub mod config;
pub mod encoding;
pub mod exchange;
pub mod header_pairs;
pub mod inject;
pub mod labels;
pub mod metrics;
pub mod openai;
pub mod sse;
pub mod think;

#[cfg(target_arch = "wasm32")]
mod host;

#[cfg(all(feature = "dynamic-module", not(target_arch = "wasm32")))]
pub mod dynamic_module;
