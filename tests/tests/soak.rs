//! Soak: many streaming and non-streaming requests through real Envoy (`--concurrency 2`), each
//! build of the filter, with random client aborts and upstream resets mixed in. Afterwards every
//! counter equals the ground truth this test kept (requests by outcome, tokens by type), every
//! in-flight gauge is back to 0, and Envoy's memory stayed flat.
//!
//! Two upstreams: a scripted one (exact bytes, resets), and the real `qwen3-engine`, whose own
//! `/metrics` is then a second ground truth next to the usage the clients read.
//!
//! Quick mode (inside the README test command): `SOAK_REQUESTS` defaults to 600 and
//! `SOAK_ENGINE_REQUESTS` to 200 per build. The documented soak:
//! `SOAK_REQUESTS=20000 SOAK_ENGINE_REQUESTS=4000 cargo test -p gateway-tests --test soak -- --nocapture --test-threads 1`
//! (results in `tests/RELIABILITY.md`).

// support.rs allows its own dead code: each suite uses a different part.
#[path = "e2e/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context as _, Result};
use rand::rngs::StdRng;
use rand::{RngExt as _, SeedableRng as _};
use serde_json::{json, Value};
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

/// The request count of a soak: `var` from the environment (the documented long runs), else the
/// quick mode's `default`.
fn requests_from_env(var: &str, default: usize) -> usize {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// Runs `soak` for each build in turn, each under `limit`: only a guard against a hang, nothing
/// here is a timing threshold.
async fn each_build<T, F: Future<Output = Result<T>>>(
    what: &str,
    limit: Duration,
    soak: impl Fn(Build) -> F,
) {
    for build in Build::ALL {
        match tokio::time::timeout(limit, soak(build)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => panic!("{e:#}"),
            Err(_) => panic!("{build:?}: {what} did not finish within {limit:?}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_counts_every_request_and_token_and_leaves_nothing_in_flight() {
    let requests = requests_from_env("SOAK_REQUESTS", 600);
    let limit = Duration::from_secs(60 + requests as u64 / 20);
    each_build("soak", limit, |build| soak(build, requests)).await;
}

// ---------------------------------------------------------------------------------------------
// The engine as the upstream

/// What one request of the engine mix is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Ask {
    /// A chat stream with `include_usage`, read to its end.
    Stream,
    /// A non-streaming chat completion.
    Json,
    /// A chat stream the client leaves after its first token-bearing event.
    ClientAbort,
}

/// Clients at once; the engine decodes as many sequences together (`--max-num-seqs`), so none
/// waits in its queue for long and none is refused (its queue holds 64).
const ENGINE_CLIENTS: usize = 16;
/// `max_tokens` of the requests that run to the end: a few tokens keep the engine fast on 2 cores,
/// and with thinking on they still cover reasoning cut short by `length` as well as answers.
const ENGINE_MAX_TOKENS: std::ops::RangeInclusive<u64> = 4..=16;
/// `max_tokens` of the streams a client leaves. They are greedy and seeded, so each one's whole
/// run is known beforehand: the preflight checks it goes on for all of these tokens
/// (`finish_reason` `length`), so the stream is still running when its client leaves after the
/// first token, and both the gateway (`client_abort`, not `completed`) and the engine (`abort`)
/// must see an abort.
const ABORT_MAX_TOKENS: u64 = 256;
const ABORT_SEED: u64 = 7;
/// User messages; a request picks one, so prompts have different lengths.
const MESSAGES: [&str; 4] = [
    "Hi",
    "What does a gateway measure?",
    "Count the tokens of this sentence, then explain how a proxy would count them too.",
    "Summarise: Envoy forwards requests to an upstream and a filter reads the stream as it passes, \
     counting tokens by type, time to the first token and the outcome of every request.",
];

/// One request of the engine mix.
#[derive(Clone, Copy, Debug)]
struct EngineRequest {
    ask: Ask,
    message: usize,
    thinking: bool,
    /// Whether the thinking switch is sent in `chat_template_kwargs` (else top-level, or, for
    /// thinking on, not at all: the template's default).
    in_kwargs: bool,
    max_tokens: u64,
    seed: Option<u64>,
    /// Whether the request carries a stop string: random weights almost never sample
    /// end-of-sequence within a few tokens, so without one every request would end by `length`.
    stop: bool,
}

impl EngineRequest {
    fn draw(rng: &mut StdRng) -> EngineRequest {
        let ask = match rng.random_range(0..100) {
            0..45 => Ask::Stream,
            45..80 => Ask::Json,
            _ => Ask::ClientAbort,
        };
        let mut r = EngineRequest {
            ask,
            message: rng.random_range(0..MESSAGES.len()),
            thinking: rng.random_bool(0.5),
            in_kwargs: rng.random_bool(0.5),
            max_tokens: rng.random_range(ENGINE_MAX_TOKENS),
            seed: rng.random_bool(0.5).then(|| rng.random_range(0..1_000_000)),
            stop: rng.random_bool(0.3),
        };
        if ask == Ask::ClientAbort {
            r.message = 0;
            r.max_tokens = ABORT_MAX_TOKENS;
            r.seed = Some(ABORT_SEED);
            r.stop = false;
        }
        r
    }

    fn body(&self, model: &str) -> Value {
        let stream = self.ask != Ask::Json;
        let mut body = json!({"model": model, "stream": stream, "max_tokens": self.max_tokens,
            "messages": [{"role": "user", "content": MESSAGES[self.message]}]});
        if stream {
            body["stream_options"] = json!({"include_usage": true});
        }
        match (self.thinking, self.in_kwargs) {
            (t, true) => body["chat_template_kwargs"] = json!({"enable_thinking": t}),
            (false, false) => body["enable_thinking"] = json!(false),
            (true, false) => {} // thinking is the template's default
        }
        if let Some(seed) = self.seed {
            body["seed"] = json!(seed);
        }
        if self.stop {
            // A letter that random Qwen3 tokens often hold: the text ends before it, by `stop`.
            body["stop"] = json!(["e"]);
        }
        if self.ask == Ask::ClientAbort {
            body["temperature"] = json!(0);
        }
        body
    }
}

/// What a client read.
#[derive(Debug)]
enum Seen {
    Completed {
        stream: bool,
        usage: Usage,
        finish: String,
    },
    /// Token-bearing events among the complete events the client read before it left.
    Aborted { thinking: bool, events: u64 },
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Usage {
    prompt: u64,
    completion: u64,
    reasoning: u64,
}

impl Usage {
    fn read(v: &Value) -> Result<Usage> {
        let n = |p: &str| {
            v.pointer(p)
                .and_then(Value::as_u64)
                .with_context(|| format!("usage without {p}: {v}"))
        };
        Ok(Usage {
            prompt: n("/prompt_tokens")?,
            completion: n("/completion_tokens")?,
            reasoning: n("/completion_tokens_details/reasoning_tokens")?,
        })
    }
}

/// Token-bearing chat chunks among the complete SSE events in `bytes`: a delta with text,
/// reasoning, a refusal or tool calls, which is what the filter counts as one estimated token.
fn token_events(bytes: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(bytes);
    let Some(end) = text.rfind("\n\n") else {
        return 0;
    };
    text[..end]
        .split("\n\n")
        .filter_map(|event| event.lines().find_map(|l| l.strip_prefix("data:")))
        .filter_map(|data| serde_json::from_str::<Value>(data.trim()).ok())
        .filter(|v| {
            v["choices"].as_array().is_some_and(|choices| {
                choices.iter().any(|c| {
                    let d = &c["delta"];
                    ["content", "reasoning_content", "reasoning", "refusal"]
                        .iter()
                        .any(|k| d[k].as_str().is_some_and(|t| !t.is_empty()))
                        || d["tool_calls"].as_array().is_some_and(|t| !t.is_empty())
                })
            })
        })
        .count() as u64
}

async fn engine_one(port: u16, model: &str, req: EngineRequest) -> Result<Seen> {
    let body = serde_json::to_vec(&req.body(model))?;
    let headers = [("content-type", "application/json")];
    let path = "/v1/chat/completions";
    match req.ask {
        Ask::Stream => {
            let r = request(port, "POST", path, &headers, body).await?;
            ensure!(
                r.status == 200,
                "{req:?}: status {}: {}",
                r.status,
                r.text()
            );
            ensure!(r.text().ends_with(wire::DONE), "{req:?}: stream cut short");
            let events = r.sse_events()?;
            let usage: Vec<&Value> = events
                .iter()
                .filter(|e| e["choices"].as_array().is_some_and(Vec::is_empty))
                .map(|e| &e["usage"])
                .collect();
            let finish: Vec<&str> = events
                .iter()
                .filter_map(|e| e["choices"][0]["finish_reason"].as_str())
                .collect();
            ensure!(
                usage.len() == 1 && finish.len() == 1,
                "{req:?}: want one usage chunk and one finish_reason: {}",
                r.text()
            );
            Ok(Seen::Completed {
                stream: true,
                usage: Usage::read(usage[0])?,
                finish: finish[0].to_owned(),
            })
        }
        Ask::Json => {
            let r = request(port, "POST", path, &headers, body).await?;
            ensure!(
                r.status == 200,
                "{req:?}: status {}: {}",
                r.status,
                r.text()
            );
            let v = r.json()?;
            Ok(Seen::Completed {
                stream: false,
                usage: Usage::read(&v["usage"])?,
                finish: v["choices"][0]["finish_reason"]
                    .as_str()
                    .with_context(|| format!("{req:?}: no finish_reason: {v}"))?
                    .to_owned(),
            })
        }
        Ask::ClientAbort => {
            let got = request_then_disconnect(port, path, &headers, body, |b| token_events(b) > 0)
                .await
                .with_context(|| format!("{req:?}"))?;
            Ok(Seen::Aborted {
                thinking: req.thinking,
                events: token_events(&got),
            })
        }
    }
}

/// What the clients of one engine phase read, summed: the load tool's ground truth.
#[derive(Debug, Default)]
struct Truth {
    streams: u64,
    json: u64,
    aborts: u64,
    /// Usage of the completed requests, as their clients read it.
    usage: Usage,
    /// `finish_reason` of the completed requests.
    finish: BTreeMap<String, u64>,
    /// Prompt tokens of the aborted requests (known from the preflight: their prompts are fixed).
    abort_prompt: u64,
    /// Token-bearing events the aborting clients read before leaving.
    abort_events: u64,
}

/// The engine's counters that the soak compares, as one scrape shows them.
#[derive(Clone, Debug, Default)]
struct EngineCounters {
    prompt: f64,
    generation: f64,
    /// `vllm:request_prompt_tokens` / `vllm:request_generation_tokens`: observed per request that
    /// finished (`stop`, `length`), not for aborted ones.
    finished_prompt: f64,
    finished_generation: f64,
    finished: f64,
    by_reason: BTreeMap<String, f64>,
}

impl EngineCounters {
    fn read(s: &Scrape, model: &str) -> EngineCounters {
        let l = [("model_name", model)];
        let mut by_reason = BTreeMap::new();
        for sample in s.matching("vllm:request_success_total", &l) {
            if let Some(r) = sample.labels.get("finished_reason") {
                *by_reason.entry(r.clone()).or_default() += sample.value;
            }
        }
        EngineCounters {
            prompt: s.sum("vllm:prompt_tokens_total", &l),
            generation: s.sum("vllm:generation_tokens_total", &l),
            finished_prompt: s.sum("vllm:request_prompt_tokens_sum", &l),
            finished_generation: s.sum("vllm:request_generation_tokens_sum", &l),
            finished: s.sum("vllm:request_generation_tokens_count", &l),
            by_reason,
        }
    }

    fn since(&self, base: &EngineCounters) -> EngineCounters {
        let mut by_reason = self.by_reason.clone();
        for (r, n) in &base.by_reason {
            *by_reason.entry(r.clone()).or_default() -= n;
        }
        by_reason.retain(|_, n| *n != 0.0);
        EngineCounters {
            prompt: self.prompt - base.prompt,
            generation: self.generation - base.generation,
            finished_prompt: self.finished_prompt - base.finished_prompt,
            finished_generation: self.finished_generation - base.finished_generation,
            finished: self.finished - base.finished,
            by_reason,
        }
    }
}

/// What one engine phase measured, for the report line and `tests/RELIABILITY.md`.
struct EngineRun {
    elapsed: Duration,
    truth: Truth,
    estimated: f64,
    aborted_generation: f64,
    envoy_rss: (u64, u64),
    engine_rss: (u64, u64),
}

/// Envoy's RSS may grow by at most this after the warm-up tenth, whatever the number of requests
/// (as in the scripted soak): stats, pools and V8 are all in the baseline.
const ENVOY_RSS_GROWTH_KIB: u64 = 32 * 1024;
/// The engine's RSS may grow by at most this after the warm-up. What can still grow after
/// it: each sequence's KV cache (tiny preset: 512 bytes a token, so 16 sequences of at most
/// ~300 tokens are 2.4 MiB), the step's logits (16 × 151,936 × 4 bytes = 9.3 MiB) and the
/// allocator's arenas for its threads settling; 48 MiB leaves room for those, while a leak of
/// one KV cache or one logits row per request would pass it within the documented run.
const ENGINE_RSS_GROWTH_KIB: u64 = 48 * 1024;

async fn engine_soak(build: Build, requests: usize) -> Result<EngineRun> {
    let max_num_seqs = ENGINE_CLIENTS.to_string();
    let engine = Engine::start_with(&["--max-num-seqs", &max_num_seqs]).await?;
    let model = engine.model.clone();
    // Preflight, straight to the engine: the aborting requests' prompt length for each thinking
    // mode, and proof that, left alone, their stream runs for all ABORT_MAX_TOKENS tokens.
    let mut abort_prompt = BTreeMap::new();
    for thinking in [false, true] {
        let mut req = EngineRequest {
            ask: Ask::Json,
            message: 0,
            thinking,
            in_kwargs: true,
            max_tokens: ABORT_MAX_TOKENS,
            seed: Some(ABORT_SEED),
            stop: false,
        }
        .body(&model);
        req["temperature"] = json!(0);
        let r = post_json(engine.port, "/v1/chat/completions", &req).await?;
        let v = r.json()?;
        let usage = Usage::read(&v["usage"])?;
        ensure!(
            v["choices"][0]["finish_reason"] == "length" && usage.completion == ABORT_MAX_TOKENS,
            "the aborting request (thinking {thinking}) must run for {ABORT_MAX_TOKENS} tokens \
             when left alone, so that its client leaves mid-stream: {v}"
        );
        abort_prompt.insert(thinking, usage.prompt);
    }
    let engine_base = EngineCounters::read(&engine.metrics().await?, &model);

    let envoy = Envoy::start_build(build, engine.port, "{}").await?;
    let port = envoy.gateway_port;
    let mut rng = StdRng::seed_from_u64(10_000 + requests as u64);
    let plan: Vec<EngineRequest> = (0..requests)
        .map(|_| EngineRequest::draw(&mut rng))
        .collect();
    // The memory baseline comes after a warm-up tenth, and at least four rounds of every slot
    // busy at once: the engine's allocator arenas and buffers grow with the batch size first.
    let warm = (requests / 10).max(4 * ENGINE_CLIENTS).min(requests);
    let limit = Arc::new(Semaphore::new(ENGINE_CLIENTS));
    let started = Instant::now();
    let mut seen = Vec::with_capacity(requests);
    let (mut envoy_base, mut engine_rss_base) = (0, 0);
    for (phase, batch) in [&plan[..warm], &plan[warm..]].into_iter().enumerate() {
        let mut tasks = Vec::with_capacity(batch.len());
        for &req in batch {
            let permit = limit.clone().acquire_owned().await?;
            let model = model.clone();
            tasks.push(tokio::spawn(async move {
                let r = engine_one(port, &model, req).await;
                drop(permit);
                r
            }));
        }
        for t in tasks {
            seen.push(t.await??);
        }
        if phase == 0 {
            envoy_base = rss_kib(envoy.proc.pid())?;
            engine_rss_base = rss_kib(engine.proc.pid())?;
        }
    }
    let elapsed = started.elapsed();

    let mut truth = Truth::default();
    for s in &seen {
        match s {
            Seen::Completed {
                stream,
                usage,
                finish,
            } => {
                if *stream {
                    truth.streams += 1;
                } else {
                    truth.json += 1;
                }
                truth.usage.prompt += usage.prompt;
                truth.usage.completion += usage.completion;
                truth.usage.reasoning += usage.reasoning;
                *truth.finish.entry(finish.clone()).or_default() += 1;
            }
            Seen::Aborted { thinking, events } => {
                truth.aborts += 1;
                truth.abort_prompt += abort_prompt[thinking];
                truth.abort_events += events;
            }
        }
    }
    ensure!(
        truth.streams > 0 && truth.json > 0 && truth.aborts > 0,
        "the mix must have every kind: {truth:?}"
    );
    ensure!(
        truth.usage.reasoning > 0,
        "no reasoning tokens although about half the requests think: {truth:?}"
    );

    // The engine first: it notices a client gone at its next step, then frees the slot.
    let completed = (truth.streams + truth.json) as f64;
    let e = engine
        .wait_for(Duration::from_secs(20), |s| {
            let l = [("model_name", model.as_str())];
            for gauge in [
                "vllm:num_requests_running",
                "vllm:num_requests_waiting",
                "vllm:kv_cache_usage_perc",
            ] {
                let v = s.sum(gauge, &l);
                if v != 0.0 {
                    return Err(format!("{gauge} {v}"));
                }
            }
            let d = EngineCounters::read(s, &model).since(&engine_base);
            let mut want: BTreeMap<String, f64> = truth
                .finish
                .iter()
                .map(|(r, n)| (r.clone(), *n as f64))
                .collect();
            want.insert("abort".into(), truth.aborts as f64);
            if d.by_reason != want {
                return Err(format!(
                    "vllm:request_success_total by finished_reason {:?}, clients saw {want:?}",
                    d.by_reason
                ));
            }
            if (d.finished, d.finished_prompt, d.finished_generation)
                != (
                    completed,
                    truth.usage.prompt as f64,
                    truth.usage.completion as f64,
                )
            {
                return Err(format!(
                    "finished requests {} with prompt {} and generation {} tokens; clients read \
                     {completed} with usage {:?}",
                    d.finished, d.finished_prompt, d.finished_generation, truth.usage
                ));
            }
            // Every aborted request got its first token, so its whole prompt was prefilled.
            let prompt = (truth.usage.prompt + truth.abort_prompt) as f64;
            if d.prompt != prompt {
                return Err(format!(
                    "vllm:prompt_tokens_total {}, want {prompt} (completed {} + aborted {})",
                    d.prompt, truth.usage.prompt, truth.abort_prompt
                ));
            }
            Ok(())
        })
        .await
        .with_context(|| format!("{build:?} build: engine after {requests} requests"))?;
    let engine_delta = EngineCounters::read(&e, &model).since(&engine_base);
    // What the engine generated for the aborted requests before it noticed they were gone.
    let aborted_generation = engine_delta.generation - truth.usage.completion as f64;

    let mut estimated = 0.0;
    envoy
        .wait_for(Duration::from_secs(10), |s| {
            let m = ("model", model.as_str());
            let api = ("api", "chat_completions");
            for (streaming, outcome, n) in [
                ("true", "completed", truth.streams),
                ("false", "completed", truth.json),
                ("true", "client_abort", truth.aborts),
            ] {
                let got = s.sum(
                    "llm_requests_total",
                    &[
                        m,
                        api,
                        ("streaming", streaming),
                        ("status_class", "2xx"),
                        ("outcome", outcome),
                    ],
                );
                if got != n as f64 {
                    return Err(format!(
                        "llm_requests_total{{streaming={streaming},outcome={outcome}}} {got}, \
                         clients saw {n}"
                    ));
                }
            }
            let all = s.sum("llm_requests_total", &[]);
            if all != requests as f64 {
                return Err(format!("{all} requests counted, {requests} sent"));
            }
            // Usage: exactly what the clients of completed requests read, which is also what the
            // engine counted for them (checked above). Aborted streams carry none.
            for (ty, want) in [
                ("input", truth.usage.prompt),
                ("output", truth.usage.completion),
                ("reasoning", truth.usage.reasoning),
            ] {
                let got = s.sum(
                    "llm_tokens_total",
                    &[m, api, ("token_type", ty), ("source", "usage")],
                );
                if got != want as f64 {
                    return Err(format!(
                        "llm_tokens_total{{token_type={ty},source=usage}} {got}, want {want}"
                    ));
                }
            }
            // Aborted streams: output estimated from the token-bearing events that passed the
            // filter, nothing else. At least what their clients read (the filter saw those bytes
            // first), at most what the engine generated for them.
            estimated = s.sum("llm_tokens_total", &[m, ("source", "estimated")]);
            let est_output = s.sum(
                "llm_tokens_total",
                &[m, ("token_type", "output"), ("source", "estimated")],
            );
            if estimated != est_output
                || estimated < truth.abort_events as f64
                || estimated > aborted_generation
            {
                return Err(format!(
                    "estimated tokens {estimated} (output {est_output}): want output only, from \
                     {} (events the aborting clients read) to {aborted_generation} (what the \
                     engine generated for them)",
                    truth.abort_events
                ));
            }
            let missing = s.sum("llm_usage_missing_total", &[m]);
            if missing != truth.aborts as f64 {
                return Err(format!(
                    "llm_usage_missing_total {missing}, want {} (the aborted streams)",
                    truth.aborts
                ));
            }
            if s.has("llm_filter_errors_total", &[]) {
                return Err("llm_filter_errors_total has a series".into());
            }
            let active = s.sum("llm_active_requests", &[]);
            if active != 0.0 {
                return Err(format!("llm_active_requests {active}"));
            }
            Ok(())
        })
        .await
        .with_context(|| format!("{build:?} build: gateway after {requests} engine requests"))?;

    let run = EngineRun {
        elapsed,
        truth,
        estimated,
        aborted_generation,
        envoy_rss: (envoy_base, rss_kib(envoy.proc.pid())?),
        engine_rss: (engine_rss_base, rss_kib(engine.proc.pid())?),
    };
    eprintln!(
        "engine soak {build:?}: {requests} requests in {:.1} s ({:.1}/s): {} streams, {} json, {} \
         client aborts; usage {:?}, finish {:?}; aborted: {} events read, {} estimated, {} \
         generated; engine prompt {} generation {}; Envoy RSS {} -> {} KiB, engine RSS {} -> {} KiB",
        run.elapsed.as_secs_f64(),
        requests as f64 / run.elapsed.as_secs_f64(),
        run.truth.streams,
        run.truth.json,
        run.truth.aborts,
        run.truth.usage,
        run.truth.finish,
        run.truth.abort_events,
        run.estimated,
        run.aborted_generation,
        engine_delta.prompt,
        engine_delta.generation,
        run.envoy_rss.0,
        run.envoy_rss.1,
        run.engine_rss.0,
        run.engine_rss.1,
    );
    let ((e0, e1), (g0, g1)) = (run.envoy_rss, run.engine_rss);
    if e1 > e0 + ENVOY_RSS_GROWTH_KIB {
        bail!("{build:?}: Envoy RSS grew from {e0} to {e1} KiB over the engine soak");
    }
    if g1 > g0 + ENGINE_RSS_GROWTH_KIB {
        bail!("{build:?}: engine RSS grew from {g0} to {g1} KiB over the engine soak");
    }
    Ok(run)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_soak_counts_what_the_engine_served_and_leaves_nothing_in_flight() {
    let requests = requests_from_env("SOAK_ENGINE_REQUESTS", 200);
    let limit = Duration::from_secs(120 + requests as u64 / 4);
    each_build("engine soak", limit, |build| engine_soak(build, requests)).await;
}
