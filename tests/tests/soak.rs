//! Soak: many streaming and non-streaming requests through real Envoy (`--concurrency 2`), each
//! build of the filter, with random client aborts and upstream resets mixed in. Afterwards every
//! counter equals the ground truth this test kept (requests by outcome, tokens by type), every
//! in-flight gauge is back to 0, and Envoy's memory stayed flat.
//!
//! Quick mode (inside the README test command): `SOAK_REQUESTS` defaults to 600 per build. The
//! documented soak: `SOAK_REQUESTS=20000 cargo test -p gateway-tests --test soak -- --nocapture`
//! (results in `tests/RELIABILITY.md`).

// support.rs allows its own dead code: each suite uses a different part.
#[path = "e2e/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{ensure, Context as _, Result};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::json;
use support::*;
use test_kit::wire;
use tokio::sync::Semaphore;

/// What one request of the mix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    /// A stream with usage, read to its end.
    Stream,
    /// A non-streaming JSON answer with usage.
    Json,
    /// A stream the client leaves after its first token.
    ClientAbort,
    /// A stream the upstream resets after some tokens.
    UpstreamReset,
}

impl Kind {
    fn outcome(self) -> &'static str {
        match self {
            Kind::Stream | Kind::Json => "completed",
            Kind::ClientAbort => "client_abort",
            Kind::UpstreamReset => "upstream_abort",
        }
    }
}

const PROMPT: u64 = 11;
const TOKENS: u64 = 8;

fn scripts(upstream: &Upstream) {
    let sse = vec![("content-type".to_owned(), "text/event-stream".to_owned())];
    let mut stream = wire::role_chunk();
    for i in 0..TOKENS {
        stream.push_str(&wire::token(&format!("t{i} ")));
    }
    stream.push_str(&wire::finish());
    stream.push_str(&wire::usage_chunk(PROMPT, TOKENS));
    stream.push_str(wire::DONE);
    upstream.add(
        "stream",
        Script::chunked(200, sse.clone(), stream.as_bytes(), &[97], Duration::ZERO),
    );
    // Tokens, then silence: the client leaves after the first one.
    let mut hang = Script::chunked(
        200,
        sse.clone(),
        (wire::role_chunk() + &wire::token("a") + &wire::token("b")).as_bytes(),
        &[4096],
        Duration::ZERO,
    );
    hang.end = ScriptEnd::Hang;
    upstream.add("client_abort", hang);
    let mut reset = Script::chunked(
        200,
        sse,
        (wire::role_chunk() + &wire::token("a") + &wire::token("b")).as_bytes(),
        &[4096],
        Duration::ZERO,
    );
    reset.end = ScriptEnd::Reset;
    upstream.add("reset", reset);
    let body = json!({"id": "c", "object": "chat.completion", "created": 1, "model": "soak",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": PROMPT, "completion_tokens": TOKENS, "total_tokens": PROMPT + TOKENS}});
    upstream.add("json", json_script(&body));
}

async fn one(port: u16, kind: Kind) -> Result<()> {
    let (script, stream) = match kind {
        Kind::Stream => ("stream", true),
        Kind::Json => ("json", false),
        Kind::ClientAbort => ("client_abort", true),
        Kind::UpstreamReset => ("reset", true),
    };
    let body = serde_json::to_vec(&json!({"model": "soak", "stream": stream, "messages": []}))?;
    let headers = [
        ("content-type", "application/json"),
        (SCRIPT_HEADER, script),
    ];
    match kind {
        Kind::Stream | Kind::Json => {
            let r = request(port, "POST", "/v1/chat/completions", &headers, body).await?;
            ensure!(r.status == 200, "{kind:?}: status {}", r.status);
            if stream {
                ensure!(r.text().ends_with(wire::DONE), "{kind:?}: stream cut short");
            }
        }
        Kind::ClientAbort => {
            request_then_disconnect(port, "/v1/chat/completions", &headers, body, |b| {
                String::from_utf8_lossy(b).contains("\"a\"")
            })
            .await?;
        }
        Kind::UpstreamReset => {
            let r = request(port, "POST", "/v1/chat/completions", &headers, body).await;
            ensure!(r.is_err(), "{kind:?}: the client read a complete response");
        }
    }
    Ok(())
}

/// Envoy's resident memory in KiB (`VmRSS`).
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmRSS")
}

async fn soak(build: Build, requests: usize) -> Result<()> {
    let upstream = Upstream::start().await?;
    scripts(&upstream);
    let envoy = Envoy::start_build(build, upstream.port, "{}").await?;
    let port = envoy.gateway_port;
    let mut rng = StdRng::seed_from_u64(20_000);
    let kinds: Vec<Kind> = (0..requests)
        .map(|_| match rng.random_range(0..100) {
            0..60 => Kind::Stream,
            60..80 => Kind::Json,
            80..90 => Kind::ClientAbort,
            _ => Kind::UpstreamReset,
        })
        .collect();
    // A warm-up tenth first, so the memory baseline has every stat and connection pool in it.
    let warm = requests / 10;
    let limit = Arc::new(Semaphore::new(32));
    let started = Instant::now();
    let mut baseline = 0;
    for (phase, batch) in [&kinds[..warm], &kinds[warm..]].into_iter().enumerate() {
        let mut tasks = Vec::with_capacity(batch.len());
        for &kind in batch {
            let permit = limit.clone().acquire_owned().await?;
            tasks.push(tokio::spawn(async move {
                let r = one(port, kind).await;
                drop(permit);
                r
            }));
        }
        for t in tasks {
            t.await??;
        }
        if phase == 0 {
            baseline = rss_kib(envoy.proc.pid())?;
        }
    }
    let elapsed = started.elapsed();
    let mut want: BTreeMap<&str, f64> = BTreeMap::new();
    for k in &kinds {
        *want.entry(k.outcome()).or_default() += 1.0;
    }
    let with_usage = kinds
        .iter()
        .filter(|k| matches!(k, Kind::Stream | Kind::Json))
        .count() as u64;
    let s = envoy
        .wait_for(Duration::from_secs(10), |s| {
            for (outcome, n) in &want {
                let got = s.sum(
                    "llm_requests_total",
                    &[("model", "soak"), ("outcome", outcome)],
                );
                if got != *n {
                    return Err(format!("outcome {outcome}: {got}, sent {n}"));
                }
            }
            let all = s.sum("llm_requests_total", &[]);
            if all != requests as f64 {
                return Err(format!("{all} requests counted, {requests} sent"));
            }
            for (ty, per) in [("input", PROMPT), ("output", TOKENS)] {
                let got = s.sum(
                    "llm_tokens_total",
                    &[("token_type", ty), ("source", "usage")],
                );
                if got != (per * with_usage) as f64 {
                    return Err(format!(
                        "{ty} usage tokens {got}, want {}",
                        per * with_usage
                    ));
                }
            }
            let active = s.sum("llm_active_requests", &[]);
            if active != 0.0 {
                return Err(format!("llm_active_requests {active}"));
            }
            Ok(())
        })
        .await
        .with_context(|| format!("{build:?} build after {requests} requests"))?;
    // Aborted streams are estimated from the tokens that passed: at least one each.
    let estimated = s.sum("llm_tokens_total", &[("source", "estimated")]);
    let aborted = (want.get("client_abort").unwrap_or(&0.0)
        + want.get("upstream_abort").unwrap_or(&0.0)) as u64;
    ensure!(
        estimated >= aborted as f64,
        "estimated output {estimated} for {aborted} aborted streams"
    );
    let after = rss_kib(envoy.proc.pid())?;
    eprintln!(
        "soak {build:?}: {requests} requests in {:.1} s ({:.0}/s), outcomes {want:?}, Envoy RSS {} -> {} KiB",
        elapsed.as_secs_f64(),
        requests as f64 / elapsed.as_secs_f64(),
        baseline,
        after
    );
    // Flat: growth after the warm-up stays small whatever the number of requests.
    ensure!(
        after <= baseline + 32 * 1024,
        "Envoy RSS grew from {baseline} to {after} KiB over the soak"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_counts_every_request_and_token_and_leaves_nothing_in_flight() {
    let requests: usize = std::env::var("SOAK_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(600);
    for build in Build::ALL {
        let limit = Duration::from_secs(60 + requests as u64 / 20);
        match tokio::time::timeout(limit, soak(build, requests)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => panic!("{e:#}"),
            Err(_) => panic!("{build:?}: soak did not finish within {limit:?}"),
        }
    }
}
