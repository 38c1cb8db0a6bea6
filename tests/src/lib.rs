//! `gateway-tests`: run the shipped `llm_metrics_filter.wasm` exactly as Envoy would, in
//! milliseconds, with a clock the test controls.
//!
//! Why: a proxy-wasm filter is only trustworthy if any traffic can be replayed through the very
//! `.wasm` we ship, deterministically. The proxy-wasm SDK's own test framework is unmaintained and
//! cannot load a wasip1 module, so this crate is a small proxy-wasm ABI 0.2.1 host on wasmtime:
//!
//! - [`host`]: every import the filter links (real ones for logging, properties, header maps,
//!   buffers, metrics, shared data, time; `Unimplemented` for the rest, never a trap), WASI
//!   preview 1, one virtual clock behind both `proxy_get_current_time_nanoseconds` and WASI
//!   `clock_time_get`, and Envoy's call sequence.
//! - [`metrics`]: Envoy's stat store and its `stats_tags` extraction, read from `envoy/envoy.yaml`,
//!   so a series only looks right if the config and the filter's tag encoding agree.
//! - [`gateway`]: the test API.
//! - [`fixture`]: the golden request/response transcripts in `tests/fixtures` and their runner.
//!
//! ```no_run
//! use gateway_tests::Gateway;
//! let gw = Gateway::new("{}").unwrap();
//! let mut s = gw.stream();
//! s.post_json("/v1/chat/completions", r#"{"model":"m","stream":true}"#);
//! s.respond(
//!     &[(":status", "200"), ("content-type", "text/event-stream")],
//!     &[(150, "data: {\"choices\":[{\"delta\":{\"content\":\"hi\"}}]}\n\n"), (170, "data: [DONE]\n\n")],
//! );
//! s.end();
//! assert_eq!(gw.histogram("llm_time_to_first_token_ms", &[("model", "m")]).samples, vec![150]);
//! ```
//!
//! The filter must be built first:
//! `cargo build --release --target wasm32-wasip1 -p llm-metrics-filter`
//! (`LLM_FILTER_WASM` points elsewhere).

pub mod abi;
pub mod fixture;
pub mod gateway;
pub mod host;
pub mod metrics;

pub use abi::Action;
pub use gateway::{Gateway, Stream, StreamReport};
pub use host::Callback;
pub use metrics::{Histogram, HostSeries, SeriesValue};
