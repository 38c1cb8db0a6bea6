//! `qwen3-engine`: an OpenAI-compatible Qwen3 server on candle and axum.
//!
//! It exists so the gateway has a real upstream that speaks what production servers speak:
//! OpenAI's chat/completions API with server-sent events, Qwen3's thinking mode split into
//! `reasoning_content` like vLLM's Qwen3 parser, a continuous-batching scheduler, and vLLM's
//! Prometheus metric names and buckets. Its `usage` counts are exact and serve as the ground
//! truth the gateway's numbers are checked against.
//!
//! Without `--model` the weights are random, and random weights never open a think block, so the
//! scheduler gives thinking requests Qwen3's `<think>…</think>` shape through a constraint on
//! sampling ([`sampling::ThinkingConstraint`]) and the reasoning path is exercised end to end.
//! Loaded weights are never steered.
//!
//! Weights: a Hugging Face snapshot (safetensors, run as f32), a GGUF file as llama.cpp writes it
//! (Q8_0, Q4_K and the other GGML block types through candle's quantized kernels: CPU users run
//! quantized models, and a CPU decode step is bound by the bytes of weight it reads), or random
//! presets with real Qwen3 shapes, optionally quantized in process (`--dtype`) to benchmark those
//! kernels.
//!
//! Layout: [`qwen3`] (the batched Qwen3 forward pass), [`gguf`] (GGUF metadata and tensor names, read and written),
//! [`chat`] (tokenizer and chat template),
//! [`sampling`], [`scheduler`] (continuous batching, cancellation, reasoning split, stop strings),
//! [`kv`] (the KV budget in blocks and how caches grow),
//! [`metrics`] (vLLM series), [`api`] (HTTP handlers), [`server`] (flags and assembly), and
//! `scripted` (a weight-free backend for the API tests, built only with the `scripted` feature,
//! which the crate's tests enable).
//!
//! ```no_run
//! // Serve the tiny random-weight preset on 127.0.0.1:8000, as `qwen3-engine` does.
//! use clap::Parser;
//! # async fn run() -> anyhow::Result<()> {
//! qwen3_engine::server::serve(qwen3_engine::server::Args::parse_from(["qwen3-engine"])).await
//! # }
//! ```

pub mod api;
pub mod chat;
pub mod gguf;
pub mod kv;
pub mod matvec;
pub mod metrics;
pub mod qwen3;
pub mod sampling;
pub mod scheduler;
#[cfg(feature = "scripted")]
pub mod scripted;
pub mod server;
