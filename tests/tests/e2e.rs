//! End-to-end: real Envoy 1.40 (`--concurrency 2`, two worker VMs) with the shipped
//! `llm_metrics_filter.wasm`, configured from `envoy/envoy.yaml` by `envoy/render.sh`, on loopback
//! ports the kernel picks. Envoy sits in front of either a scripted upstream in this process (exact
//! bytes, chunking, delays, resets) or the real `qwen3-engine`; the tests read what the gateway
//! exports on its read-only metrics listener and compare it with what the upstream did.
//!
//! Needs: `bash envoy/setup.sh --test`, `cargo build --release --target wasm32-wasip1 -p
//! llm-metrics-filter` and `cargo build -p qwen3-engine --bins` (each test says which is missing).
//! `bash tests/run.sh` does all of it. Every process a test starts is killed when the test ends, and
//! every test is bounded in time.
//!
//! Timing assertions only use tolerances derived from the scripted delays: a histogram bucket the
//! delay puts the sample in, and `_sum` within a few percent (Envoy keeps two significant digits per
//! bin) plus scheduling slack.

#[path = "e2e/support.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{bail, ensure, Context as _, Result};
use bytes::Bytes;
use gateway_tests::fixture::{self, End, Fixture};
use serde_json::{json, Value};
use support::*;

/// Request headers for a fixture: its own, a JSON content type when it has a JSON body and names
/// none, and the script selector for the scripted upstream.
fn fixture_headers(f: &Fixture) -> Vec<(String, String)> {
    let mut h: Vec<(String, String)> = f
        .request
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    if f.request.body.is_some()
        && !f
            .request
            .headers
            .keys()
            .any(|k| k.eq_ignore_ascii_case("content-type"))
    {
        h.push(("content-type".into(), "application/json".into()));
    }
    h.push((SCRIPT_HEADER.into(), f.name.clone()));
    h
}

/// The fixture's response as a script: its status, headers and exact body bytes, cut into uneven
/// chunks (1 to 500 bytes) 1 ms apart, so Envoy hands the filter the body in many pieces.
fn fixture_script(f: &Fixture) -> Result<Script> {
    let headers = f
        .response
        .headers
        .iter()
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    let body = f.response_body()?;
    let mut script = Script::chunked(
        f.response.status,
        headers,
        &body,
        &[1, 7, 64, 211, 3, 500, 29],
        Duration::from_millis(1),
    );
    script.end = match f.end {
        End::Complete => ScriptEnd::Complete,
        End::UpstreamAbort => ScriptEnd::Reset,
        End::ClientAbort => ScriptEnd::Hang,
    };
    Ok(script)
}

/// Sends one fixture's request through the gateway and waits until the gateway's `llm_*` series
/// grew from `base` (a scrape with every earlier sample merged) by exactly the fixture's `expect`.
/// Returns the scrape that matched, the next fixture's base; on failure, the difference.
async fn replay_fixture(envoy: &Envoy, base: &Scrape, f: &Fixture) -> Result<Scrape> {
    let headers = fixture_headers(f);
    let header_refs: Vec<(&str, &str)> = headers
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    match f.end {
        End::Complete => {
            let r = request(
                envoy.gateway_port,
                &f.request.method,
                &f.request.path,
                &header_refs,
                f.request_body(),
            )
            .await?;
            ensure!(
                r.status == f.response.status,
                "client got status {} instead of {}",
                r.status,
                f.response.status
            );
            ensure!(
                r.body == f.response_body()?,
                "client got a different body than the upstream sent"
            );
        }
        End::ClientAbort => {
            // Read until the whole scripted body has arrived, then go away.
            let want = f.response_body()?.len();
            let got = request_then_disconnect(
                envoy.gateway_port,
                &f.request.path,
                &header_refs,
                f.request_body(),
                |b| b.len() >= want,
            )
            .await?;
            ensure!(
                got == f.response_body()?,
                "client got a different body than the upstream sent"
            );
        }
        End::UpstreamAbort => {
            let r = request(
                envoy.gateway_port,
                &f.request.method,
                &f.request.path,
                &header_refs,
                f.request_body(),
            )
            .await;
            ensure!(
                r.is_err(),
                "the client read a complete response although the upstream reset mid-body: {r:?}"
            );
        }
    }
    expect_series(envoy, base, f).await
}

/// Waits until the gateway's `llm_*` series grew from `base` by exactly the fixture's `expect`.
async fn expect_series(envoy: &Envoy, base: &Scrape, f: &Fixture) -> Result<Scrape> {
    let expected = f.expected_lines();
    let matches = |s: &Scrape| {
        let d = fixture::diff(&expected, &s.llm_lines_since(base));
        if d.is_empty() {
            Ok(())
        } else {
            Err(d)
        }
    };
    let s = envoy.wait_for(Duration::from_secs(5), matches).await?;
    if !expected.iter().any(|l| l.contains(" count=")) {
        // Nothing to wait for proved the request was finalised (an `expect` without histograms,
        // typically an empty one): look again once on_log has surely run and histograms merged.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let again = envoy.scrape_merged().await?;
        matches(&again).map_err(|d| anyhow::anyhow!("series appeared late:\n{d}"))?;
        return Ok(again);
    }
    Ok(s)
}

/// Every golden fixture that ends normally, replayed through real Envoy with the wasm build: the
/// series the gateway exports grow by exactly the fixture's `expect` (counters by value, histograms
/// by sample count).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_fixtures_through_real_envoy_produce_exactly_their_expected_series() {
    bounded(Duration::from_secs(240), golden_fixtures(Build::Wasm)).await;
}

/// The same fixtures through Envoy with the native dynamic module: exactly the same series (names,
/// labels, label values, bucket boundaries) as the wasm build, since both must equal `expect`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn golden_fixtures_through_the_native_module_produce_the_same_series() {
    bounded(Duration::from_secs(240), golden_fixtures(Build::Native)).await;
}

/// Fixtures are grouped by filter configuration, one Envoy per group (the default group shared by
/// three Envoys to keep the run short); the fixtures of one Envoy run one after another.
async fn golden_fixtures(build: Build) -> Result<()> {
    let fixtures = fixture::load_all(&fixture::fixtures_dir())?;
    let upstream = Upstream::start().await?;
    let mut groups: BTreeMap<String, Vec<Fixture>> = BTreeMap::new();
    for f in fixtures.into_iter().filter(|f| f.end == End::Complete) {
        upstream.add(&f.name, fixture_script(&f)?);
        groups.entry(f.config_text()).or_default().push(f);
    }
    ensure!(
        groups.values().map(Vec::len).sum::<usize>() >= 60,
        "too few fixtures found"
    );
    let mut shards: Vec<(String, Vec<Fixture>)> = Vec::new();
    for (config, list) in groups {
        if config == "{}" {
            for i in 0..3 {
                shards.push((
                    config.clone(),
                    list.iter().skip(i).step_by(3).cloned().collect(),
                ));
            }
        } else {
            shards.push((config, list));
        }
    }
    let mut tasks = Vec::new();
    for (config, list) in shards {
        let port = upstream.port;
        tasks.push(tokio::spawn(async move {
            let envoy = Envoy::start_build(build, port, &config).await?;
            let mut failures = Vec::new();
            let mut base = envoy.scrape_merged().await?;
            for f in &list {
                match replay_fixture(&envoy, &base, f).await {
                    Ok(next) => base = next,
                    Err(e) => {
                        failures.push(format!(
                            "fixture {} ({build:?} build, config {config}): {e:#}",
                            f.name
                        ));
                        base = envoy.scrape_merged().await?;
                    }
                }
            }
            Ok::<_, anyhow::Error>((list.len(), failures))
        }));
    }
    let mut failures = Vec::new();
    let mut replayed = 0;
    for t in tasks {
        let (n, f) = t.await??;
        replayed += n;
        failures.extend(f);
    }
    eprintln!(
        "replayed {replayed} golden fixtures through Envoy ({build:?} build), {} failed",
        failures.len()
    );
    ensure!(
        failures.is_empty(),
        "{} of {replayed} fixtures differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
    Ok(())
}

/// First token after 300 ms, then one every 50 ms (10 tokens): TTFT lands in the (200, 500] ms
/// bucket, the duration (≈ 750 ms) in (500, 1000], time per output token (≈ 50 ms) in
/// (25, 100] ms, and each `_sum` is the scripted delay within bin precision and scheduling slack.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripted_delays_put_ttft_duration_and_tpot_in_the_right_buckets() {
    bounded(Duration::from_secs(60), async {
        let upstream = Upstream::start().await?;
        upstream.add(
            "paced",
            paced_stream(Duration::from_millis(300), Duration::from_millis(50), 10, 5),
        );
        let envoy = Envoy::start(upstream.port, "{}").await?;
        let r = request(
            envoy.gateway_port,
            "POST",
            "/v1/chat/completions",
            &[
                ("content-type", "application/json"),
                (SCRIPT_HEADER, "paced"),
            ],
            chat_request("paced-model"),
        )
        .await?;
        ensure!(
            r.status == 200 && r.text().ends_with("data: [DONE]\n\n"),
            "bad response: {}",
            r.text()
        );
        let m = [("model", "paced-model")];
        let s = envoy
            .wait_for(Duration::from_secs(5), |s| {
                let n = s.sum("llm_time_per_output_token_us_count", &m);
                if n == 1.0 {
                    Ok(())
                } else {
                    Err(format!("TPOT count {n}"))
                }
            })
            .await?;
        let check = |name: &str, below: &str, at: &str, lo: f64, hi: f64| -> Result<()> {
            ensure!(
                s.bucket(name, &m, below) == 0.0,
                "{name}: the sample is at or below {below}"
            );
            ensure!(
                s.bucket(name, &m, at) == 1.0,
                "{name}: the sample is above {at}"
            );
            let sum = s.sum(&format!("{name}_sum"), &m);
            ensure!(
                (lo..=hi).contains(&sum),
                "{name}_sum = {sum}, expected {lo}..={hi}"
            );
            eprintln!("{name}_sum = {sum}");
            Ok(())
        };
        check(
            "llm_time_to_first_token_ms",
            "200",
            "500",
            300.0 * 0.95,
            300.0 + 150.0,
        )?;
        check(
            "llm_request_duration_ms",
            "500",
            "1000",
            750.0 * 0.95,
            750.0 + 200.0,
        )?;
        // (last token - first token) / (10 - 1) = 450 ms / 9.
        check(
            "llm_time_per_output_token_us",
            "25000",
            "100000",
            50_000.0 * 0.9,
            50_000.0 * 1.25,
        )?;
        ensure!(
            s.sum(
                "llm_tokens_total",
                &[
                    ("model", "paced-model"),
                    ("token_type", "output"),
                    ("source", "usage")
                ]
            ) == 10.0
        );
        Ok(())
    })
    .await;
}

fn load_fixture(name: &str) -> Result<Fixture> {
    Fixture::load(&fixture::fixtures_dir().join(format!("{name}.json")))
}

/// The client reads part of a stream and drops its connection: `outcome="client_abort"`, output
/// estimated from the token events it saw (golden fixture `stream_client_abort`, the upstream
/// holding the stream open).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_disconnect_mid_stream_is_counted_as_client_abort() {
    bounded(Duration::from_secs(120), async {
        each_build(client_disconnect_mid_stream_is_counted_as_client_abort_with).await
    })
    .await;
}

async fn client_disconnect_mid_stream_is_counted_as_client_abort_with(build: Build) -> Result<()> {
    let f = load_fixture("stream_client_abort")?;
    ensure!(f.end == End::ClientAbort);
    ensure!(f
        .expect
        .iter()
        .any(|e| e.labels.get("outcome").map(String::as_str) == Some("client_abort")));
    replay_alone(build, &f).await?;
    Ok(())
}

/// One fixture through a fresh upstream and Envoy with `build`; both are returned for more traffic.
async fn replay_alone(build: Build, f: &Fixture) -> Result<(Upstream, Envoy)> {
    let upstream = Upstream::start().await?;
    upstream.add(&f.name, fixture_script(f)?);
    let envoy = Envoy::start_build(build, upstream.port, &f.config_text()).await?;
    let base = envoy.scrape_merged().await?;
    replay_fixture(&envoy, &base, f)
        .await
        .with_context(|| format!("fixture {}", f.name))?;
    Ok((upstream, envoy))
}

/// The upstream closes the connection mid-event, without the chunked terminator:
/// `outcome="upstream_abort"`, the partial event not counted (golden fixture `stream_upstream_reset`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_stream_is_counted_as_upstream_abort() {
    bounded(Duration::from_secs(120), async {
        each_build(upstream_reset_mid_stream_is_counted_as_upstream_abort_with).await
    })
    .await;
}

async fn upstream_reset_mid_stream_is_counted_as_upstream_abort_with(build: Build) -> Result<()> {
    let f = load_fixture("stream_upstream_reset")?;
    ensure!(f.end == End::UpstreamAbort);
    let (upstream, envoy) = replay_alone(build, &f).await?;
    // The same with a scripted stream cut after three tokens.
    let mut s = paced_stream(Duration::from_millis(20), Duration::from_millis(10), 6, 4);
    s.chunks.truncate(4); // role chunk + 3 tokens
    s.end = ScriptEnd::Reset;
    upstream.add("reset", s);
    let r = request(
        envoy.gateway_port,
        "POST",
        "/v1/chat/completions",
        &[
            ("content-type", "application/json"),
            (SCRIPT_HEADER, "reset"),
        ],
        chat_request("reset-model"),
    )
    .await;
    ensure!(
        r.is_err(),
        "the client read a complete response after an upstream reset: {r:?}"
    );
    let m = [("model", "reset-model")];
    envoy
        .wait_for(Duration::from_secs(5), |s| {
            let aborted = s.sum(
                "llm_requests_total",
                &[("model", "reset-model"), ("outcome", "upstream_abort")],
            );
            let all = s.sum("llm_requests_total", &m);
            let est = s.sum(
                "llm_tokens_total",
                &[
                    ("model", "reset-model"),
                    ("token_type", "output"),
                    ("source", "estimated"),
                ],
            );
            if (aborted, all, est) == (1.0, 1.0, 3.0) {
                Ok(())
            } else {
                Err(format!(
                    "upstream_abort {aborted}, all {all}, estimated output {est} (want 1, 1, 3)"
                ))
            }
        })
        .await?;
    Ok(())
}

/// 16 streams at once through Envoy's two workers: while they wait for their first token the
/// active-requests gauge (one per worker VM, summed by Envoy) reads 16; afterwards every request,
/// token and histogram sample is counted once and the gauge is back to 0. Both workers took
/// connections, so the totals are sums over the two VMs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_streams_on_two_workers_are_all_counted() {
    bounded(Duration::from_secs(120), async {
        each_build(concurrent_streams_on_two_workers_are_all_counted_with).await
    })
    .await;
}

async fn concurrent_streams_on_two_workers_are_all_counted_with(build: Build) -> Result<()> {
    const N: usize = 16;
    let upstream = Upstream::start().await?;
    upstream.add(
        "slow",
        paced_stream(
            Duration::from_millis(1500),
            Duration::from_millis(10),
            20,
            7,
        ),
    );
    let envoy = Envoy::start_build(build, upstream.port, "{}").await?;
    let port = envoy.gateway_port;
    let mut tasks = Vec::new();
    for _ in 0..N {
        tasks.push(tokio::spawn(async move {
            request(
                port,
                "POST",
                "/v1/chat/completions",
                &[
                    ("content-type", "application/json"),
                    (SCRIPT_HEADER, "slow"),
                ],
                chat_request("concurrent-model"),
            )
            .await
        }));
    }
    let m = [("model", "concurrent-model")];
    envoy
        .wait_for(Duration::from_millis(1200), |s| {
            let active = s.sum("llm_active_requests", &m);
            if active == N as f64 {
                Ok(())
            } else {
                Err(format!("llm_active_requests = {active}, want {N}"))
            }
        })
        .await
        .context("while all streams wait for their first token")?;
    for t in tasks {
        let r = t.await??;
        ensure!(
            r.status == 200 && r.text().ends_with("data: [DONE]\n\n"),
            "bad stream: {}",
            r.text()
        );
    }
    let want = [
        (
            "llm_requests_total",
            vec![("outcome", "completed"), ("streaming", "true")],
            N as f64,
        ),
        (
            "llm_tokens_total",
            vec![("token_type", "input"), ("source", "usage")],
            7.0 * N as f64,
        ),
        (
            "llm_tokens_total",
            vec![("token_type", "output"), ("source", "usage")],
            20.0 * N as f64,
        ),
        ("llm_time_to_first_token_ms_count", vec![], N as f64),
        ("llm_time_per_output_token_us_count", vec![], N as f64),
        ("llm_request_duration_ms_count", vec![], N as f64),
        ("llm_active_requests", vec![], 0.0),
    ];
    let s = envoy
        .wait_for(Duration::from_secs(5), |s| {
            let mut bad = String::new();
            for (name, labels, value) in &want {
                let mut l = labels.clone();
                l.extend(m);
                let got = s.sum(name, &l);
                if got != *value {
                    bad.push_str(&format!("{name}{labels:?} = {got}, want {value}\n"));
                }
            }
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad)
            }
        })
        .await?;
    ensure!(
        s.sum("llm_requests_total", &[]) == N as f64,
        "requests counted under another model or outcome"
    );
    // Envoy's own per-worker listener stats: both workers accepted connections.
    let per_worker: Vec<(String, f64)> = s
        .matching("envoy_listener_worker_downstream_cx_total", &[])
        .filter(|x| x.labels.values().any(|v| v.ends_with(&format!("_{port}"))))
        .map(|x| (format!("{:?}", x.labels), x.value))
        .collect();
    ensure!(
        per_worker.len() == 2,
        "expected two workers' listener stats, got {per_worker:?}"
    );
    ensure!(
        per_worker.iter().all(|(_, v)| *v >= 1.0),
        "one worker took no connection: {per_worker:?}"
    );
    Ok(())
}

/// One usage object from a response: non-streaming `usage`, or the last non-null `usage` of a stream.
fn usage_of(r: &HttpResponse, stream: bool) -> Result<Value> {
    ensure!(r.status == 200, "status {}: {}", r.status, r.text());
    if stream {
        let events = r.sse_events()?;
        ensure!(
            r.text().ends_with("data: [DONE]\n\n"),
            "stream without [DONE]"
        );
        events
            .iter()
            .rev()
            .find_map(|e| e.get("usage").filter(|u| !u.is_null()).cloned())
            .context("stream without usage")
    } else {
        r.json()?
            .get("usage")
            .cloned()
            .context("response without usage")
    }
}

#[derive(Default, Debug)]
struct Totals {
    prompt: u64,
    completion: u64,
    reasoning: u64,
}

impl Totals {
    fn add(&mut self, usage: &Value) -> Result<()> {
        let n = |v: &Value| v.as_u64().context("token count is not a number");
        self.prompt += n(&usage["prompt_tokens"])?;
        self.completion += n(&usage["completion_tokens"])?;
        if let Some(r) = usage.pointer("/completion_tokens_details/reasoning_tokens") {
            self.reasoning += r.as_u64().unwrap_or(0);
        }
        Ok(())
    }
}

/// The gateway's `llm_tokens_total{source="usage"}` for a model and API equals `t`, with no series
/// where `t` is 0 (the filter never reports a zero).
fn tokens_match(s: &Scrape, model: &str, api: &str, t: &Totals) -> std::result::Result<(), String> {
    let mut bad = String::new();
    for (ty, want) in [
        ("input", t.prompt),
        ("output", t.completion),
        ("reasoning", t.reasoning),
    ] {
        let l = [
            ("model", model),
            ("api", api),
            ("token_type", ty),
            ("source", "usage"),
        ];
        let got = s.sum("llm_tokens_total", &l);
        if got != want as f64 || (want == 0 && s.has("llm_tokens_total", &l)) {
            bad.push_str(&format!(
                "llm_tokens_total{{api={api},token_type={ty}}} = {got}, client saw {want}\n"
            ));
        }
    }
    if s.has(
        "llm_tokens_total",
        &[("model", model), ("source", "estimated")],
    ) {
        bad.push_str("estimated tokens although every response had usage\n");
    }
    if bad.is_empty() {
        Ok(())
    } else {
        Err(bad)
    }
}

/// The real engine behind Envoy: chat requests streaming and not, thinking on (the
/// `chat_template_kwargs` form) and off (the top-level form), and a streaming legacy completion.
/// The gateway's token counters, reasoning included, equal the `usage` the client received, summed,
/// and the engine's own `vllm:prompt_tokens_total` / `vllm:generation_tokens_total`; the streamed
/// thinking request gives one reasoning duration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn engine_usage_equals_gateway_token_counters_and_engine_metrics() {
    bounded(Duration::from_secs(120), async {
        let engine = Engine::start().await?;
        let envoy = Envoy::start(engine.port, "{}").await?;
        let model = engine.model.clone();
        let mut chat = Totals::default();
        let mut prompt_by_thinking = BTreeMap::new();
        for stream in [false, true] {
            for thinking in [true, false] {
                let mut body = json!({"model": model, "max_tokens": 12, "temperature": 0, "stream": stream,
                    "messages": [{"role": "user", "content": "What does a gateway measure?"}]});
                if thinking {
                    body["chat_template_kwargs"] = json!({"enable_thinking": true});
                } else {
                    body["enable_thinking"] = json!(false);
                }
                if stream {
                    body["stream_options"] = json!({"include_usage": true});
                }
                let r = post_json(envoy.gateway_port, "/v1/chat/completions", &body).await?;
                let usage = usage_of(&r, stream).with_context(|| format!("chat stream={stream} thinking={thinking}"))?;
                chat.add(&usage)?;
                prompt_by_thinking.insert(thinking, usage["prompt_tokens"].as_u64().unwrap_or(0));
            }
        }
        // Thinking off renders an empty <think></think> block into the prompt: the flag got through.
        ensure!(
            prompt_by_thinking[&false] > prompt_by_thinking[&true],
            "thinking off should add the empty think block to the prompt: {prompt_by_thinking:?}"
        );
        // The random preset reasons in thinking mode, so the reasoning series is exercised too.
        ensure!(chat.reasoning > 0, "no reasoning tokens in thinking mode: {chat:?}");
        let mut legacy = Totals::default();
        let body = json!({"model": model, "prompt": "The gateway counts", "max_tokens": 8, "temperature": 0,
            "stream": true, "stream_options": {"include_usage": true}});
        legacy.add(&usage_of(&post_json(envoy.gateway_port, "/v1/completions", &body).await?, true)?)?;

        envoy
            .wait_for(Duration::from_secs(5), |s| {
                tokens_match(s, &model, "chat_completions", &chat)?;
                tokens_match(s, &model, "completions", &legacy)?;
                let done = s.sum("llm_requests_total", &[("model", &model), ("outcome", "completed"), ("status_class", "2xx")]);
                let all = s.sum("llm_requests_total", &[]);
                if (done, all) != (5.0, 5.0) {
                    return Err(format!("llm_requests_total completed {done}, all {all}; want 5"));
                }
                // The one streamed thinking request reasoned, then answered.
                let reasoned = s.sum("llm_reasoning_duration_ms_count", &[("model", &model)]);
                if reasoned != 1.0 {
                    return Err(format!("llm_reasoning_duration_ms_count = {reasoned}, want 1"));
                }
                Ok(())
            })
            .await?;
        let em = engine.metrics().await?;
        let l = [("model_name", model.as_str())];
        let (prompt, generated) = (em.sum("vllm:prompt_tokens_total", &l), em.sum("vllm:generation_tokens_total", &l));
        ensure!(
            prompt == (chat.prompt + legacy.prompt) as f64 && generated == (chat.completion + legacy.completion) as f64,
            "engine /metrics prompt {prompt} generation {generated}; clients saw {chat:?} + {legacy:?}"
        );
        eprintln!("tokens: chat {chat:?}, completions {legacy:?}; engine prompt {prompt}, generation {generated}");
        Ok(())
    })
    .await;
}

/// The official `openai` Python client (in `.venv`, from `envoy/setup.sh --test`) talks to the
/// engine through the gateway, streaming with include_usage and not; `tests/e2e/openai_client.py`
/// asserts what the client parsed and prints its usage totals, which the gateway's counters equal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_python_client_works_through_the_gateway_and_its_usage_is_counted() {
    bounded(Duration::from_secs(120), async {
        let python = venv_python()?;
        let engine = Engine::start().await?;
        let envoy = Envoy::start(engine.port, "{}").await?;
        let script = repo_root().join("tests/e2e/openai_client.py");
        let base_url = format!("http://127.0.0.1:{}/v1", envoy.gateway_port);
        let model = engine.model.clone();
        let out = tokio::task::spawn_blocking(move || {
            std::process::Command::new(python)
                .arg(script)
                .args(["--base-url", &base_url, "--model", &model])
                .output()
        })
        .await??;
        let stdout = String::from_utf8_lossy(&out.stdout);
        ensure!(
            out.status.success(),
            "openai_client.py failed ({}):\n{stdout}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        let summary: Value = serde_json::from_str(stdout.lines().last().unwrap_or_default())
            .with_context(|| format!("openai_client.py printed no JSON summary: {stdout}"))?;
        let n = |k: &str| {
            summary[k]
                .as_u64()
                .with_context(|| format!("summary without {k}: {summary}"))
        };
        let totals = Totals {
            prompt: n("prompt_tokens")?,
            completion: n("completion_tokens")?,
            reasoning: n("reasoning_tokens")?,
        };
        let (streamed, plain) = (n("streaming_requests")?, n("non_streaming_requests")?);
        ensure!(
            streamed >= 1 && plain >= 1,
            "the script must send both kinds: {summary}"
        );
        let model = engine.model.clone();
        envoy
            .wait_for(Duration::from_secs(5), |s| {
                tokens_match(s, &model, "chat_completions", &totals)?;
                for (streaming, want) in [("true", streamed), ("false", plain)] {
                    let got = s.sum(
                        "llm_requests_total",
                        &[
                            ("model", &model),
                            ("streaming", streaming),
                            ("outcome", "completed"),
                        ],
                    );
                    if got != want as f64 {
                        return Err(format!(
                            "llm_requests_total{{streaming={streaming}}} = {got}, want {want}"
                        ));
                    }
                }
                Ok(())
            })
            .await?;
        Ok(())
    })
    .await;
}

/// Every PromQL query of the Grafana dashboard (`envoy/grafana/queries.py`), run against a real
/// Prometheus that scraped a real gateway and engine under traffic, returns at least one series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_dashboard_query_returns_series_from_a_real_prometheus() {
    bounded(Duration::from_secs(120), async {
        let engine = Engine::start().await?;
        let envoy = Envoy::start(engine.port, "{}").await?;
        let prom = Prometheus::start(envoy.metrics_port, engine.port).await?;
        let model = engine.model.clone();
        let traffic = |wave: u32| {
            let model = model.clone();
            let port = envoy.gateway_port;
            async move {
                for i in 0..4 {
                    let stream = i % 2 == 0;
                    let mut body = json!({"model": model, "max_tokens": 8, "stream": stream,
                        "messages": [{"role": "user", "content": format!("wave {wave} request {i}")}]});
                    if stream {
                        body["stream_options"] = json!({"include_usage": true});
                    }
                    let r = post_json(port, "/v1/chat/completions", &body).await?;
                    ensure!(r.status == 200, "status {}: {}", r.status, r.text());
                }
                // An unknown model: the engine's 404 is an error outcome at the gateway.
                let r = post_json(port, "/v1/chat/completions", &json!({"model": "no-such-model", "messages": [{"role": "user", "content": "x"}]})).await?;
                ensure!(r.status == 404, "unknown model: status {}", r.status);
                Ok::<_, anyhow::Error>(())
            }
        };
        // Both targets up, then traffic in two waves: the second one lands on series Prometheus
        // already knows, so rates and quantiles have increases to work with.
        wait_prom(&prom, "count(up == 1) == 2", Duration::from_secs(20)).await.context("targets up")?;
        traffic(1).await?;
        wait_prom(&prom, "sum(llm_requests_total) >= 5", Duration::from_secs(20)).await.context("first wave scraped")?;
        traffic(2).await?;
        wait_prom(&prom, "sum(llm_requests_total) >= 10", Duration::from_secs(20)).await.context("second wave scraped")?;
        // The histograms of the second wave reach Prometheus a scrape later (merge on scrape).
        wait_prom(&prom, "sum(llm_request_duration_ms_count) >= 10", Duration::from_secs(20))
            .await
            .context("second wave histograms scraped")?;

        let out = std::process::Command::new("python3")
            .arg(repo_root().join("envoy/grafana/queries.py"))
            .args(["--rate-interval", "30s"])
            .output()?;
        ensure!(out.status.success(), "queries.py failed: {}", String::from_utf8_lossy(&out.stderr));
        let queries: Vec<Value> = serde_json::from_slice(&out.stdout)?;
        ensure!(queries.len() >= 10, "queries.py listed only {} queries", queries.len());
        let mut failures = Vec::new();
        for q in &queries {
            let (panel, ref_id, expr) = (q["panel"].as_str().unwrap_or("?"), q["ref_id"].as_str().unwrap_or("?"), q["expr"].as_str().unwrap_or(""));
            match prom.query(expr).await {
                Ok(data) if data["result"].as_array().is_some_and(|r| !r.is_empty()) => {}
                Ok(_) => failures.push(format!("panel {panel:?} {ref_id}: no series for {expr}")),
                Err(e) => failures.push(format!("panel {panel:?} {ref_id}: error {e:#} for {expr}")),
            }
        }
        eprintln!("{} dashboard queries, {} failed", queries.len(), failures.len());
        ensure!(failures.is_empty(), "dashboard queries failed:\n{}", failures.join("\n"));
        Ok(())
    })
    .await;
}

/// Polls an instant query until it returns a non-empty result.
async fn wait_prom(prom: &Prometheus, expr: &str, limit: Duration) -> Result<()> {
    let start = std::time::Instant::now();
    loop {
        let data = prom.query(expr).await?;
        if data["result"].as_array().is_some_and(|r| !r.is_empty()) {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!(
                "`{expr}` still empty after {limit:?}\n{}",
                prom.proc.log_tail()
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The module loads in Envoy with `{}` and with every configuration field set, and one request then
/// appears on the metrics listener under the contract's names, types and exact label sets; with
/// the `models` allowlist an unlisted model becomes `other`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filter_loads_with_default_and_full_config_and_exports_the_contract_names() {
    bounded(Duration::from_secs(120), async {
        each_build(filter_loads_with_default_and_full_config_and_exports_the_contract_names_with)
            .await
    })
    .await;
}

async fn filter_loads_with_default_and_full_config_and_exports_the_contract_names_with(
    build: Build,
) -> Result<()> {
    let upstream = Upstream::start().await?;
    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "smoke-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hello"}, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 9, "completion_tokens": 2, "total_tokens": 11}});
    upstream.add("json", json_script(&body));
    let full = json!({"models": ["smoke-model"], "max_models": 8, "max_request_body_bytes": 65536,
            "max_response_body_bytes": 65536, "max_event_bytes": 16384,
            "inject_stream_usage": true, "inject_max_request_bytes": 32768,
            "paths": {"/v1/chat/completions": "chat_completions", "/v1/completions": "completions",
                      "/v1/embeddings": "embeddings", "/v1/responses": "responses"}});
    for config in ["{}".to_owned(), full.to_string()] {
        let envoy = Envoy::start_build(build, upstream.port, &config)
            .await
            .with_context(|| format!("config {config}"))?;
        let models: &[&str] = if config == "{}" {
            &["smoke-model"]
        } else {
            &["smoke-model", "unlisted-model"]
        };
        for model in models {
            let req = serde_json::to_vec(
                &json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}),
            )?;
            let r = request(
                envoy.gateway_port,
                "POST",
                "/v1/chat/completions",
                &[
                    ("content-type", "application/json"),
                    (SCRIPT_HEADER, "json"),
                ],
                req,
            )
            .await?;
            ensure!(r.status == 200, "status {}", r.status);
        }
        let s = envoy
            .wait_for(Duration::from_secs(5), |s| {
                let n = s.sum("llm_request_duration_ms_count", &[]);
                if n == models.len() as f64 {
                    Ok(())
                } else {
                    Err(format!("duration count {n}"))
                }
            })
            .await?;
        let exact = |name: &str, labels: &[(&str, &str)], value: f64| -> Result<()> {
            let want: BTreeMap<String, String> = labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            let found = s
                .samples
                .iter()
                .find(|x| x.name == name && x.labels == want);
            match found {
                Some(x) if x.value == value => Ok(()),
                Some(x) => bail!(
                    "config {config}: {name}{want:?} = {}, want {value}",
                    x.value
                ),
                None => {
                    let have: Vec<_> = s
                        .samples
                        .iter()
                        .filter(|x| x.name == name)
                        .map(|x| &x.labels)
                        .collect();
                    bail!("config {config}: no {name} with labels exactly {want:?}; present: {have:?}")
                }
            }
        };
        let common = [("model", "smoke-model"), ("api", "chat_completions")];
        exact(
            "llm_requests_total",
            &[
                common[0],
                common[1],
                ("streaming", "false"),
                ("status_class", "2xx"),
                ("outcome", "completed"),
            ],
            1.0,
        )?;
        exact(
            "llm_tokens_total",
            &[
                common[0],
                common[1],
                ("token_type", "input"),
                ("source", "usage"),
            ],
            9.0,
        )?;
        exact(
            "llm_tokens_total",
            &[
                common[0],
                common[1],
                ("token_type", "output"),
                ("source", "usage"),
            ],
            2.0,
        )?;
        exact(
            "llm_request_duration_ms_count",
            &[common[0], common[1], ("streaming", "false")],
            1.0,
        )?;
        exact("llm_active_requests", &common, 0.0)?;
        if models.len() == 2 {
            exact(
                "llm_requests_total",
                &[
                    ("model", "other"),
                    common[1],
                    ("streaming", "false"),
                    ("status_class", "2xx"),
                    ("outcome", "completed"),
                ],
                1.0,
            )?;
        }
        for (family, kind) in [
            ("llm_requests_total", "counter"),
            ("llm_tokens_total", "counter"),
            ("llm_request_duration_ms", "histogram"),
            ("llm_active_requests", "gauge"),
        ] {
            ensure!(
                s.types.get(family).map(String::as_str) == Some(kind),
                "config {config}: {family} is not a {kind}"
            );
        }
    }
    Ok(())
}

/// The native module loads with the ABI version Envoy 1.40 checks ("matched", not "deprecated"),
/// and a configuration it rejects stops Envoy with one log line naming the field and value, the
/// same message the wasm build logs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn native_module_matches_envoys_abi_and_names_a_rejected_config_field() {
    bounded(Duration::from_secs(60), async {
        let upstream = Upstream::start().await?;
        let envoy = Envoy::start_build(Build::Native, upstream.port, "{}").await?;
        let log = envoy.proc.log();
        ensure!(
            log.contains("Dynamic module ABI version v0.2.0 matched."),
            "no ABI match line in Envoy's log:\n{}",
            envoy.proc.log_tail()
        );
        ensure!(
            !log.contains("deprecated"),
            "Envoy warned about the module's ABI version:\n{log}"
        );
        ensure!(
            log.contains("llm-metrics-filter: configured"),
            "the module did not log its configuration"
        );
        drop(envoy);
        let err =
            match Envoy::start_build(Build::Native, upstream.port, r#"{"max_models":0}"#).await {
                Ok(_) => bail!("Envoy started with max_models 0"),
                Err(e) => format!("{e:#}"),
            };
        ensure!(
            err.contains("invalid configuration: field `max_models`: 0 is out of range 1..=1024"),
            "the error does not name the field and value:\n{err}"
        );
        Ok(())
    })
    .await;
}

/// `label_headers` through real Envoy with each build: the tenant header becomes a `tenant` label on
/// every series with a `model` label (not on `llm_filter_errors_total`), bounded process-wide by
/// `max_values` (a third value is `other`), a missing header is `none`, and a hashed API key never
/// appears as itself. The wasm build needs the README's `stats_tags` line for each label.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tenant_labels_from_request_headers_are_bounded_and_identical_in_both_builds() {
    bounded(Duration::from_secs(120), async {
        each_build(tenant_labels_with).await
    })
    .await;
}

async fn tenant_labels_with(build: Build) -> Result<()> {
    let upstream = Upstream::start().await?;
    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    upstream.add("json", json_script(&body));
    let config = json!({"label_headers": [
        {"header": "x-tenant", "label": "tenant", "max_values": 2},
        {"header": "authorization", "label": "api_key", "hash": true}]});
    let setup = Setup {
        extra_labels: &["tenant", "api_key"],
        ..Setup::default()
    };
    let envoy = Envoy::start_with(build, upstream.port, &config.to_string(), &setup).await?;
    let req = serde_json::to_vec(&json!({"model": "tenant-model", "messages": []}))?;
    for tenant in [
        Some("acme"),
        Some("globex"),
        Some("initech"),
        None,
        Some("acme"),
    ] {
        let mut headers = vec![
            ("content-type", "application/json"),
            (SCRIPT_HEADER, "json"),
            ("authorization", "Bearer sk-secret-123"),
        ];
        if let Some(t) = tenant {
            headers.push(("x-tenant", t));
        }
        let r = request(
            envoy.gateway_port,
            "POST",
            "/v1/chat/completions",
            &headers,
            req.clone(),
        )
        .await?;
        ensure!(r.status == 200, "status {}", r.status);
    }
    // One unreadable request: its error counter must carry no tenant label.
    request(
        envoy.gateway_port,
        "POST",
        "/v1/chat/completions",
        &[(SCRIPT_HEADER, "json"), ("x-tenant", "acme")],
        b"{".to_vec(),
    )
    .await?;
    let s = envoy
        .wait_for(Duration::from_secs(5), |s| {
            let n = s.sum("llm_requests_total", &[]);
            if n == 6.0 {
                Ok(())
            } else {
                Err(format!("{n} requests counted, want 6"))
            }
        })
        .await?;
    let per_tenant = |t: &str| {
        s.sum(
            "llm_requests_total",
            &[("model", "tenant-model"), ("tenant", t)],
        )
    };
    ensure!(
        (
            per_tenant("acme"),
            per_tenant("globex"),
            per_tenant("other"),
            per_tenant("none")
        ) == (2.0, 1.0, 1.0, 1.0),
        "requests by tenant: acme {}, globex {}, other {}, none {}",
        per_tenant("acme"),
        per_tenant("globex"),
        per_tenant("other"),
        per_tenant("none")
    );
    // (The unreadable request's usage counts under model `unknown`.)
    let acme_input = s.sum(
        "llm_tokens_total",
        &[
            ("model", "tenant-model"),
            ("tenant", "acme"),
            ("token_type", "input"),
        ],
    );
    ensure!(acme_input == 6.0, "acme input tokens {acme_input}, want 6");
    let keys: std::collections::BTreeSet<&str> = s
        .samples
        .iter()
        .filter(|x| {
            x.name == "llm_requests_total"
                && x.labels.get("model").map(String::as_str) == Some("tenant-model")
        })
        .filter_map(|x| x.labels.get("api_key").map(String::as_str))
        .collect();
    ensure!(keys.len() == 1, "one API key, one hashed label: {keys:?}");
    let key = keys.iter().next().copied().unwrap_or_default();
    ensure!(
        key.len() == 12 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "api_key label {key:?} is not a short hash"
    );
    ensure!(
        !s.samples
            .iter()
            .any(|x| x.labels.values().any(|v| v.contains("sk-secret"))),
        "the raw key became a label"
    );
    let errors: Vec<_> = s
        .samples
        .iter()
        .filter(|x| x.name == "llm_filter_errors_total")
        .collect();
    ensure!(
        !errors.is_empty(),
        "no llm_filter_errors_total for the unreadable request"
    );
    ensure!(
        errors.iter().all(|x| x.labels.keys().eq(["kind"].iter())),
        "llm_filter_errors_total has extra labels: {:?}",
        errors.iter().map(|x| &x.labels).collect::<Vec<_>>()
    );
    Ok(())
}

/// An HTTP/2 client (h2c, prior knowledge) cancels one stream mid-way with RST_STREAM and keeps its
/// connection, as browsers, gRPC and h2 clients do: `outcome="client_abort"` (Envoy's flag `DR`), not
/// `upstream_abort`, with the tokens seen so far; a second stream on the same connection completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http2_stream_cancelled_by_the_client_is_a_client_abort() {
    bounded(Duration::from_secs(120), async {
        each_build(http2_cancel_with).await
    })
    .await;
}

async fn http2_cancel_with(build: Build) -> Result<()> {
    use http_body_util::{BodyExt as _, Full};
    use hyper::Request;
    use hyper_util::rt::{TokioExecutor, TokioIo};
    use tokio::net::TcpStream;
    let upstream = Upstream::start().await?;
    // Three tokens at once, then the stream stays open (the client cancels it).
    upstream.add("held", tokens_then_silence(3));
    upstream.add(
        "whole",
        paced_stream(Duration::from_millis(1), Duration::from_millis(1), 3, 4),
    );
    let envoy = Envoy::start_build(build, upstream.port, "{}").await?;
    let tcp = TcpStream::connect(("127.0.0.1", envoy.gateway_port)).await?;
    let (mut sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let req = |script: &str, model: &str| {
        Request::post(format!(
            "http://127.0.0.1:{}/v1/chat/completions",
            envoy.gateway_port
        ))
        .header("content-type", "application/json")
        .header(SCRIPT_HEADER, script)
        .body(Full::new(Bytes::from(chat_request(model))))
    };
    let mut resp = sender.send_request(req("held", "h2-cancel")?).await?;
    ensure!(resp.status() == 200, "status {}", resp.status());
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains("tok2") {
        match resp.body_mut().frame().await {
            Some(frame) => {
                if let Ok(data) = frame?.into_data() {
                    seen.extend_from_slice(&data);
                }
            }
            None => bail!("the held stream ended before its third token"),
        }
    }
    drop(resp); // RST_STREAM(CANCEL) for this stream only
    let whole = sender.send_request(req("whole", "h2-whole")?).await?;
    let body = whole.into_body().collect().await?.to_bytes();
    ensure!(
        body.ends_with(b"data: [DONE]\n\n"),
        "the second stream on the connection did not complete"
    );
    envoy
        .wait_for(Duration::from_secs(5), |s| {
            let cancelled = s.sum("llm_requests_total", &[("model", "h2-cancel"), ("outcome", "client_abort")]);
            let all = s.sum("llm_requests_total", &[("model", "h2-cancel")]);
            let est = s.sum("llm_tokens_total", &[("model", "h2-cancel"), ("token_type", "output"), ("source", "estimated")]);
            let whole = s.sum("llm_requests_total", &[("model", "h2-whole"), ("outcome", "completed")]);
            if (cancelled, all, est, whole) == (1.0, 1.0, 3.0, 1.0) {
                Ok(())
            } else {
                Err(format!("h2-cancel client_abort {cancelled} of {all}, estimated output {est}; h2-whole completed {whole} (want 1 of 1, 3; 1)"))
            }
        })
        .await?;
    drop(sender);
    conn.abort();
    Ok(())
}

/// Envoy's own timers end requests: the route timeout (Envoy answers 504 itself, flag `UT`) and the
/// stream idle timeout cutting a stream that stopped mid-answer (flag `SI`) are `outcome="timeout"`,
/// not `error` or `upstream_abort`, and the stalled stream keeps the tokens it had. A 504 the upstream
/// sends itself stays an `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn envoys_route_and_idle_timeouts_are_timeouts() {
    bounded(Duration::from_secs(120), async {
        each_build(timeouts_with).await
    })
    .await;
}

async fn timeouts_with(build: Build) -> Result<()> {
    let upstream = Upstream::start().await?;
    // No response at all within the route timeout: Envoy answers 504 itself.
    let mut silent = paced_stream(Duration::from_millis(1), Duration::from_millis(1), 2, 4);
    silent
        .headers
        .push((HEADERS_AFTER_MS.into(), "5000".into()));
    upstream.add("silent", silent);
    // Two tokens, then nothing: the idle timeout ends it.
    upstream.add("stalls", tokens_then_silence(2));
    upstream.add(
        "upstream504",
        Script::chunked(
            504,
            vec![("content-type".into(), "application/json".into())],
            br#"{"error":{"message":"gateway timeout"}}"#,
            &[4096],
            Duration::ZERO,
        ),
    );
    // One gateway with a route timeout, one with a stream idle timeout, so each timer is the one
    // that fires.
    let route = Setup {
        render_env: &[("ROUTE_TIMEOUT", "0.5s")],
        ..Setup::default()
    };
    let idle = Setup {
        render_env: &[("STREAM_IDLE_TIMEOUT", "0.5s")],
        ..Setup::default()
    };
    let route = Envoy::start_with(build, upstream.port, "{}", &route).await?;
    let idle = Envoy::start_with(build, upstream.port, "{}", &idle).await?;
    let send = |envoy: &Envoy, script: &'static str, model: &'static str| {
        let port = envoy.gateway_port;
        async move {
            let headers = [
                ("content-type", "application/json"),
                (SCRIPT_HEADER, script),
            ];
            request(
                port,
                "POST",
                "/v1/chat/completions",
                &headers,
                chat_request(model),
            )
            .await
        }
    };
    let r = send(&route, "silent", "route-timeout").await?;
    ensure!(
        r.status == 504,
        "Envoy's route timeout answered {}",
        r.status
    );
    ensure!(
        send(&route, "upstream504", "upstream-504").await?.status == 504,
        "upstream 504 not passed on"
    );
    ensure!(
        send(&idle, "stalls", "idle-timeout").await.is_err(),
        "a stalled stream ended normally"
    );
    let got = |s: &Scrape, model: &str, outcome: &str| {
        s.sum(
            "llm_requests_total",
            &[("model", model), ("outcome", outcome)],
        )
    };
    route
        .wait_for(Duration::from_secs(5), |s| {
            let found = (
                got(s, "route-timeout", "timeout"),
                got(s, "upstream-504", "error"),
            );
            if found == (1.0, 1.0) {
                Ok(())
            } else {
                Err(format!(
                    "route timeout {}, upstream 504 error {} (want 1, 1)",
                    found.0, found.1
                ))
            }
        })
        .await?;
    idle.wait_for(Duration::from_secs(5), |s| {
        let est = s.sum(
            "llm_tokens_total",
            &[
                ("model", "idle-timeout"),
                ("token_type", "output"),
                ("source", "estimated"),
            ],
        );
        let found = (got(s, "idle-timeout", "timeout"), est);
        if found == (1.0, 2.0) {
            Ok(())
        } else {
            Err(format!(
                "idle timeout {}, its estimated output {} (want 1, 2)",
                found.0, found.1
            ))
        }
    })
    .await?;
    Ok(())
}

/// `inject_stream_usage` through real Envoy, both builds, against an upstream that honours
/// `include_usage` as OpenAI documents: for every recorded include_usage chat or completions
/// stream, a client that does not ask receives byte for byte what the upstream sends it directly,
/// the upstream (through the gateway) was asked, and the gateway counts the exact usage — the
/// fixture's own series.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inject_stream_usage_gives_exact_usage_and_the_client_the_upstreams_own_bytes() {
    bounded(Duration::from_secs(180), async {
        each_build(inject_stream_usage_with).await
    })
    .await;
}

async fn inject_stream_usage_with(build: Build) -> Result<()> {
    let upstream = Upstream::start().await?;
    let mut cases = Vec::new();
    for f in fixture::load_all(&fixture::fixtures_dir())? {
        // Plain recorded include_usage streams with the default configuration, ending normally.
        let Some(request) = fixture::request_not_asking_usage(&f)
            .filter(|_| f.config.is_none() && f.end == End::Complete)
        else {
            continue;
        };
        let asked_script = fixture_script(&f)?;
        let mut direct = asked_script.clone();
        let direct_body = fixture::not_asked(&f.response_body()?);
        direct.chunks = Script::chunked(
            200,
            Vec::new(),
            &direct_body,
            &[1, 7, 64, 211, 3, 500, 29],
            Duration::from_millis(1),
        )
        .chunks;
        upstream.add(&f.name, direct);
        upstream.add_when_usage_asked(&f.name, asked_script);
        cases.push((f, serde_json::to_vec(&request)?, direct_body));
    }
    ensure!(
        cases.len() >= 8,
        "only {} include_usage fixtures",
        cases.len()
    );
    let envoy = Envoy::start_build(build, upstream.port, r#"{"inject_stream_usage":true}"#).await?;
    let mut base = envoy.scrape_merged().await?;
    for (f, body, direct_body) in &cases {
        let headers = fixture_headers(f);
        let headers: Vec<(&str, &str)> = headers
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let direct = request(
            upstream.port,
            "POST",
            &f.request.path,
            &headers,
            body.clone(),
        )
        .await?;
        let via = request(
            envoy.gateway_port,
            "POST",
            &f.request.path,
            &headers,
            body.clone(),
        )
        .await?;
        ensure!(
            direct.body == *direct_body,
            "{}: the upstream did not honour include_usage",
            f.name
        );
        ensure!(
            via.body == direct.body,
            "{}: through the gateway the client got\n{}\ninstead of\n{}",
            f.name,
            via.text(),
            direct.text()
        );
        let received = upstream.received(&f.name);
        let via_gateway: Value =
            serde_json::from_slice(received.last().map(|b| b.as_ref()).unwrap_or_default())
                .with_context(|| format!("{}: the upstream got invalid JSON", f.name))?;
        ensure!(
            via_gateway.pointer("/stream_options/include_usage") == Some(&Value::Bool(true)),
            "{}: the gateway did not ask for usage: {via_gateway}",
            f.name
        );
        base = expect_series(&envoy, &base, f)
            .await
            .with_context(|| format!("fixture {}", f.name))?;
    }
    Ok(())
}

/// `inject_stream_usage` with the official `openai` client and the real engine, both builds: the
/// client streams without asking for usage and sees none of it (no usage chunk, no `usage` field,
/// `tests/e2e/openai_client.py --without-include-usage`), while the gateway counts exact usage for
/// every request: its token counters equal the engine's own `vllm:*_tokens_total`, with no estimate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_client_without_include_usage_gets_exact_usage_counted_and_none_delivered() {
    bounded(Duration::from_secs(180), async {
        let engine = Engine::start().await?;
        let mut engine_before = (0.0, 0.0);
        for build in Build::ALL {
            let envoy =
                Envoy::start_build(build, engine.port, r#"{"inject_stream_usage":true}"#).await?;
            let base_url = format!("http://127.0.0.1:{}/v1", envoy.gateway_port);
            let (python, script, model) = (
                venv_python()?,
                repo_root().join("tests/e2e/openai_client.py"),
                engine.model.clone(),
            );
            let out = tokio::task::spawn_blocking(move || {
                std::process::Command::new(python)
                    .arg(script)
                    .args([
                        "--base-url",
                        &base_url,
                        "--model",
                        &model,
                        "--without-include-usage",
                    ])
                    .output()
            })
            .await??;
            ensure!(
                out.status.success(),
                "{build:?}: openai_client.py failed ({}):\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let em = engine.metrics().await?;
            let l = [("model_name", engine.model.as_str())];
            let now = (
                em.sum("vllm:prompt_tokens_total", &l),
                em.sum("vllm:generation_tokens_total", &l),
            );
            let totals = Totals {
                prompt: (now.0 - engine_before.0) as u64,
                completion: (now.1 - engine_before.1) as u64,
                reasoning: 0,
            };
            engine_before = now;
            let model = engine.model.clone();
            envoy
                .wait_for(Duration::from_secs(5), |s| {
                    for (ty, want) in [("input", totals.prompt), ("output", totals.completion)] {
                        let got = s.sum(
                            "llm_tokens_total",
                            &[("model", &model), ("token_type", ty), ("source", "usage")],
                        );
                        if got != want as f64 || want == 0 {
                            return Err(format!("{ty}: gateway {got}, engine {want}"));
                        }
                    }
                    if s.has("llm_tokens_total", &[("source", "estimated")])
                        || s.has("llm_usage_missing_total", &[])
                    {
                        return Err(
                            "a stream was estimated although the gateway asked for usage".into(),
                        );
                    }
                    Ok(())
                })
                .await
                .with_context(|| format!("{build:?} build"))?;
        }
        Ok(())
    })
    .await;
}
