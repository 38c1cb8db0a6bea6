//! Faults and hostile input through real Envoy 1.40 with each build of the filter (the `.wasm` in V8
//! and the native dynamic module), against the scripted upstream of `e2e/support.rs` or one that
//! writes raw bytes. For every case the client must get byte for byte what the upstream sent, Envoy
//! must stay up (`/ready` answers), the counters must be exactly what happened, the series must stay
//! within the configured bounds and Envoy's memory must not keep what passed through.
//!
//! Needs what `tests/e2e.rs` needs (`bash tests/run.sh` does all of it). Every test is bounded in
//! time; no assertion is about time.

#[path = "e2e/support.rs"]
mod support;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{ensure, Context as _, Result};
use bytes::Bytes;
use serde_json::json;
use support::*;

const CHAT: &str = "/v1/chat/completions";

/// A script's body, all its chunks in order (for scripts small enough to hold twice).
fn script_body(s: &Script) -> Vec<u8> {
    s.chunks
        .iter()
        .flat_map(|(_, b)| b.iter().copied())
        .collect()
}

/// A whole response in one chunk.
fn whole(status: u16, content_type: &str, body: &[u8]) -> Script {
    Script::chunked(
        status,
        vec![("content-type".into(), content_type.into())],
        body,
        &[usize::MAX],
        Duration::ZERO,
    )
}

/// A non-streaming chat completion with usage 3 in, 1 out.
fn completion_script() -> Script {
    let body = json!({"id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 1, "total_tokens": 4}});
    whole(200, "application/json", body.to_string().as_bytes())
}

fn plain_request(model: &str) -> Vec<u8> {
    serde_json::to_vec(&json!({"model": model, "messages": [{"role": "user", "content": "hi"}]}))
        .expect("serialisable")
}

/// A POST through the gateway with the script selector and a JSON content type.
async fn post(
    port: u16,
    script: &str,
    extra: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse> {
    let mut headers = vec![
        ("content-type", "application/json"),
        (SCRIPT_HEADER, script),
    ];
    headers.extend_from_slice(extra);
    request(port, "POST", CHAT, &headers, body).await
}

/// A metric, labels its samples must have, and the sum they must reach.
type Want<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// `llm_requests_total` of `model` that ended with `outcome`.
fn ended<'a>(model: &'a str, outcome: &'a str, n: f64) -> Want<'a> {
    (
        "llm_requests_total",
        vec![("model", model), ("outcome", outcome)],
        n,
    )
}

/// `llm_tokens_total` of `model`'s output from `source` (`usage` or `estimated`).
fn output<'a>(model: &'a str, source: &'a str, n: f64) -> Want<'a> {
    let labels = vec![
        ("model", model),
        ("token_type", "output"),
        ("source", source),
    ];
    ("llm_tokens_total", labels, n)
}

/// Waits until every `(metric, labels, value)` sums to its value; the error lists each that does not.
async fn expect_sums(envoy: &Envoy, want: &[Want<'_>]) -> Result<Scrape> {
    envoy
        .wait_for(Duration::from_secs(10), |s| {
            let bad: Vec<String> = want
                .iter()
                .filter_map(|(name, labels, value)| {
                    let got = s.sum(name, labels);
                    (got != *value).then(|| format!("{name}{labels:?} = {got}, want {value}"))
                })
                .collect();
            if bad.is_empty() {
                Ok(())
            } else {
                Err(bad.join("\n"))
            }
        })
        .await
}

/// `/ready` on the admin port still answers 200 and the process is alive.
async fn still_up(envoy: &mut Envoy) -> Result<()> {
    envoy.proc.check_alive()?;
    let r = get(envoy.admin_port, "/ready").await?;
    ensure!(r.status == 200, "/ready answered {}", r.status);
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// Faults of the scripted upstream and of the client, one Envoy per build: a stream that ends
/// cleanly without `[DONE]` and without a `finish_reason` is `upstream_abort` (the answer was cut
/// short), one whose `finish_reason` passed is `completed`; 429/500/503 with JSON and with non-JSON
/// bodies are `error` with their status class and no parse error; 204 and 304 are `completed` with
/// no parse error; a client that closes while still sending the request body is one `client_abort`
/// with status class `none`. The client gets the upstream's exact bytes in every case.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_and_client_faults_get_their_outcome_and_the_upstreams_bytes() {
    bounded(Duration::from_secs(90), each_build(scripted_faults_with)).await;
}

async fn scripted_faults_with(build: Build) -> Result<()> {
    let upstream = Upstream::start().await?;
    let mut no_done = paced_stream(Duration::ZERO, Duration::from_millis(1), 3, 4);
    no_done.chunks.truncate(4); // role chunk and 3 tokens; the body then ends normally
    let mut finish_no_done = paced_stream(Duration::ZERO, Duration::from_millis(1), 3, 4);
    finish_no_done.chunks.truncate(5); // ... and the finish chunk
    let mut cases: Vec<(String, Script, &str, &str)> = vec![
        ("no-done".into(), no_done, "upstream_abort", "2xx"),
        ("finish-no-done".into(), finish_no_done, "completed", "2xx"),
    ];
    for status in [429u16, 500, 503] {
        let class = if status == 429 { "4xx" } else { "5xx" };
        let json_body =
            json!({"error": {"message": "overloaded", "type": "server_error", "code": status}});
        cases.push((
            format!("s{status}-json"),
            whole(status, "application/json", json_body.to_string().as_bytes()),
            "error",
            class,
        ));
        cases.push((
            format!("s{status}-html"),
            whole(
                status,
                "text/html",
                b"<html><body><h1>Service Unavailable</h1>{not json",
            ),
            "error",
            class,
        ));
    }
    // No body at all, as RFC 9110 has it, even with a JSON content type.
    for (status, class) in [(204u16, "2xx"), (304, "3xx")] {
        let s = whole(status, "application/json", b"");
        cases.push((format!("s{status}"), s, "completed", class));
    }
    for (name, script, _, _) in &cases {
        upstream.add(name, script.clone());
    }
    upstream.add("slow-body", completion_script());
    let mut envoy = Envoy::start_build(build, upstream.port, "{}").await?;
    let port = envoy.gateway_port;
    for (name, script, _, _) in &cases {
        let body = if script.headers.iter().any(|(_, v)| v == "text/event-stream") {
            chat_request(name)
        } else {
            plain_request(name)
        };
        let r = post(port, name, &[], body)
            .await
            .with_context(|| name.clone())?;
        ensure!(r.status == script.status, "{name}: status {}", r.status);
        ensure!(
            r.body == script_body(script),
            "{name}: the client got {:?}, the upstream sent {:?}",
            r.text(),
            String::from_utf8_lossy(&script_body(script))
        );
    }
    // A client that announces 100,000 body bytes, sends 1,000 and closes its connection.
    let partial = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{SCRIPT_HEADER}: slow-body\r\ncontent-length: 100000\r\n\r\n{{\"model\":\"slow-body\",\"messages\":[{{\"role\":\"user\",\"content\":\"{}",
        "x".repeat(1000)
    );
    {
        use tokio::io::AsyncWriteExt as _;
        let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
        tcp.write_all(partial.as_bytes()).await?;
        // Until Envoy has passed the request on to the upstream; then the client goes away.
        let upstream_rq = vec![("envoy_cluster_name", "engine")];
        expect_sums(
            &envoy,
            &[("envoy_cluster_upstream_rq_active", upstream_rq, 1.0)],
        )
        .await?;
    }
    let mut want: Vec<Want<'_>> = Vec::new();
    for (name, _, outcome, class) in &cases {
        want.push((
            "llm_requests_total",
            vec![
                ("model", name.as_str()),
                ("outcome", outcome),
                ("status_class", class),
            ],
            1.0,
        ));
    }
    let n = cases.len() as f64;
    want.extend([
        // The stream cut short keeps the tokens it had, estimated (no usage arrived).
        output("no-done", "estimated", 3.0),
        output("finish-no-done", "estimated", 3.0),
        (
            "llm_requests_total",
            vec![
                ("model", "unknown"),
                ("outcome", "client_abort"),
                ("status_class", "none"),
            ],
            1.0,
        ),
        ("llm_requests_total", vec![], n + 1.0),
        ("llm_active_requests", vec![], 0.0),
        // Error bodies, empty bodies and an unfinished request body are nothing the filter failed
        // to read.
        ("llm_filter_errors_total", vec![], 0.0),
    ]);
    let s = expect_sums(&envoy, &want).await?;
    ensure!(
        s.sum("llm_requests_total", &[("model", "slow-body")]) == 0.0,
        "the unfinished request body was read as if complete"
    );
    still_up(&mut envoy).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// An upstream that lies about its body's length, through Envoy with each build: declaring more
/// than it sends, the client gets the declared length and the bytes that were sent, then the
/// connection ends, and the request is `upstream_abort` (a stream whose `[DONE]` had passed stays
/// `completed`); declaring less, the client gets exactly the declared bytes, the JSON cut there is
/// one `response_parse` error and a stream cut there without its end is `upstream_abort`. Then the
/// upstream stops listening: connection refused is Envoy's own 503, `outcome="error"`, counted under
/// the request's model.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lying_content_length_and_a_refused_connection() {
    bounded(Duration::from_secs(90), each_build(lying_length_with)).await;
}

/// Waits (at most 5 s) until connecting to `port` is refused.
async fn until_refused(port: u16) -> Result<()> {
    for _ in 0..100 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    anyhow::bail!("port {port} still accepts connections")
}

fn raw_response(content_type: &str, declared: usize, sent: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {declared}\r\n\r\n"
    )
    .into_bytes();
    out.extend_from_slice(sent);
    out
}

fn raw_post(script: &str, body: &[u8]) -> Vec<u8> {
    let mut out = format!(
        "POST {CHAT} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n{SCRIPT_HEADER}: {script}\r\nconnection: close\r\ncontent-length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    out.extend_from_slice(body);
    out
}

/// A name, the content type, the declared length, the bytes sent, the bytes the client must get.
type LyingCase<'a> = (&'a str, &'a str, usize, Vec<u8>, Vec<u8>);

async fn lying_length_with(build: Build) -> Result<()> {
    let upstream = RawUpstream::start().await?;
    let json_body = script_body(&completion_script());
    let stream = script_body(&paced_stream(Duration::ZERO, Duration::ZERO, 3, 4));
    let no_usage: Vec<u8> = {
        let mut s = paced_stream(Duration::ZERO, Duration::ZERO, 2, 4);
        s.chunks
            .retain(|(_, b)| !b.windows(7).any(|w| w == b"\"usage\""));
        script_body(&s)
    };
    let at_tok2 = stream
        .windows(4)
        .position(|w| w == b"tok2")
        .context("tok2 in the stream")?;
    let cases: Vec<LyingCase<'_>> = vec![
        (
            "json-more",
            "application/json",
            json_body.len() + 500,
            json_body.clone(),
            json_body.clone(),
        ),
        (
            "json-less",
            "application/json",
            50,
            json_body.clone(),
            json_body[..50].to_vec(),
        ),
        (
            "sse-more",
            "text/event-stream",
            no_usage.len() + 500,
            no_usage.clone(),
            no_usage.clone(),
        ),
        (
            "sse-less",
            "text/event-stream",
            at_tok2,
            stream.clone(),
            stream[..at_tok2].to_vec(),
        ),
    ];
    for (name, ct, declared, sent, _) in &cases {
        upstream.add(name, raw_response(ct, *declared, sent));
    }
    let mut envoy = Envoy::start_build(build, upstream.port, "{}").await?;
    for (name, _, declared, sent, want) in &cases {
        let body = if name.starts_with("sse") {
            chat_request(name)
        } else {
            plain_request(name)
        };
        let direct = raw_request(upstream.port, &raw_post(name, &body)).await?;
        ensure!(
            direct.body == *sent,
            "{name}: the raw upstream did not send its script"
        );
        let via = raw_request(envoy.gateway_port, &raw_post(name, &body))
            .await
            .with_context(|| name.to_string())?;
        ensure!(via.status == 200, "{name}: status {}", via.status);
        ensure!(
            via.header("content-length") == Some(declared.to_string()),
            "{name}: the declared length was not passed on: {}",
            via.head
        );
        ensure!(
            via.body == *want,
            "{name}: the client got {:?}, want {:?}",
            String::from_utf8_lossy(&via.body),
            String::from_utf8_lossy(want)
        );
    }
    let raw_port = upstream.port;
    drop(upstream);
    // The listener closes when its task is dropped, at the runtime's next turn.
    until_refused(raw_port).await?;
    let refused = post(envoy.gateway_port, "none", &[], plain_request("refused")).await?;
    ensure!(
        refused.status == 503,
        "connection refused answered {}",
        refused.status
    );
    expect_sums(
        &envoy,
        &[
            ended("json-more", "upstream_abort", 1.0),
            ended("json-less", "completed", 1.0),
            ended("sse-more", "completed", 1.0),
            ended("sse-less", "upstream_abort", 1.0),
            output("sse-more", "estimated", 2.0),
            output("sse-less", "estimated", 2.0),
            (
                "llm_filter_errors_total",
                vec![("kind", "response_parse")],
                1.0,
            ),
            ("llm_filter_errors_total", vec![], 1.0),
            ended("refused", "error", 1.0),
            (
                "llm_requests_total",
                vec![("model", "refused"), ("status_class", "5xx")],
                1.0,
            ),
            ("llm_requests_total", vec![], 5.0),
            ("llm_active_requests", vec![], 0.0),
        ],
    )
    .await?;
    let s = envoy.scrape().await?;
    ensure!(
        s.sum(
            "envoy_cluster_upstream_cx_connect_fail",
            &[("envoy_cluster_name", "engine")]
        ) >= 1.0,
        "Envoy saw no refused connection"
    );
    still_up(&mut envoy).await?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// 100 concurrent HTTP/2 streams on one client connection through each build: 30 cancelled by the
/// client (RST_STREAM) after three tokens, 30 reset by the upstream after three tokens, 40 complete.
/// Exactly 30 `client_abort` and 30 `upstream_abort`, each with its 3 tokens estimated, and 40
/// `completed` with their usage; every stream got the upstream's bytes (the cancelled ones a prefix
/// of them); the connection's other streams are untouched by the resets.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_http2_streams_some_cancelled_some_reset_are_each_counted_once() {
    bounded(Duration::from_secs(90), each_build(hundred_streams_with)).await;
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum StreamFate {
    Cancelled,
    Reset,
    Complete,
}

async fn hundred_streams_with(build: Build) -> Result<()> {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let upstream = Upstream::start().await?;
    let held = tokens_then_silence(3);
    let mut reset = paced_stream(Duration::from_millis(1), Duration::from_millis(1), 6, 4);
    reset.chunks.truncate(4);
    reset.end = ScriptEnd::Reset;
    let complete = paced_stream(Duration::from_millis(1), Duration::from_millis(1), 3, 4);
    let scripts = [
        (StreamFate::Cancelled, "h2-cancel", held),
        (StreamFate::Reset, "h2-reset", reset),
        (StreamFate::Complete, "h2-whole", complete),
    ];
    for (_, name, s) in &scripts {
        upstream.add(name, s.clone());
    }
    let envoy = Envoy::start_build(build, upstream.port, "{}").await?;
    let port = envoy.gateway_port;
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp)).await?;
    let conn = tokio::spawn(conn);
    let mut tasks = Vec::new();
    for i in 0..100 {
        let (fate, name, script) = match i % 10 {
            0..=2 => &scripts[0],
            3..=5 => &scripts[1],
            _ => &scripts[2],
        };
        let (fate, name, sent) = (*fate, *name, Bytes::from(script_body(script)));
        let mut sender = sender.clone();
        tasks.push(tokio::spawn(async move {
            let req = hyper::Request::post(format!("http://127.0.0.1:{port}{CHAT}"))
                .header("content-type", "application/json")
                .header(SCRIPT_HEADER, name)
                .body(http_body_util::Full::new(Bytes::from(chat_request(name))))?;
            sender.ready().await?;
            let mut resp = sender.send_request(req).await?;
            ensure!(resp.status() == 200, "{name}: status {}", resp.status());
            if fate == StreamFate::Cancelled {
                use http_body_util::BodyExt as _;
                let mut seen = Vec::new();
                while !seen.windows(4).any(|w| w == b"tok2") {
                    let frame = resp.body_mut().frame().await.context("ended early")??;
                    if let Ok(d) = frame.into_data() {
                        seen.extend_from_slice(&d);
                    }
                }
                ensure!(
                    sent.starts_with(&seen),
                    "{name}: bytes not from the upstream"
                );
                return Ok(()); // dropping the body: RST_STREAM(CANCEL)
            }
            let (got, err) = read_body(resp.into_body()).await;
            ensure!(
                (fate == StreamFate::Reset) == err.is_some(),
                "{name}: ended with {err:?}"
            );
            ensure!(
                got == sent,
                "{name}: the client got {:?}",
                String::from_utf8_lossy(&got)
            );
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    expect_sums(
        &envoy,
        &[
            ended("h2-cancel", "client_abort", 30.0),
            ended("h2-reset", "upstream_abort", 30.0),
            ended("h2-whole", "completed", 40.0),
            ("llm_requests_total", vec![], 100.0),
            output("h2-cancel", "estimated", 90.0),
            output("h2-reset", "estimated", 90.0),
            output("h2-whole", "usage", 120.0),
            ("llm_active_requests", vec![], 0.0),
        ],
    )
    .await?;
    drop(sender);
    conn.abort();
    Ok(())
}

// ---------------------------------------------------------------------------------------------

/// `max_models` of the hostile-input gateway.
const MAX_MODELS: usize = 12;
/// How much Envoy's resident memory may grow over the hostile batch, which moves about 120 MB.
const RSS_GROWTH_BOUND: u64 = 64 << 20;
const DISTINCT_NAMES: usize = 10_000;

/// Hostile input through one Envoy per build with `max_models` and a tenant label (`max_values` 4):
/// malformed, truncated and non-UTF-8 request bodies, and 100,000-deep ones (unreadable when cut
/// short, read when valid); a 10 MB request body; model
/// names and tenant values made to break stat names (`;.;`, `=.=`, `.`, a newline, NUL, 10 KB,
/// non-ASCII); an event stream with invalid UTF-8, a NUL byte, 100,000-deep JSON and one 10 MB
/// line; a 100 MiB stream; 10,000 distinct model names over 32 keep-alive connections. The client
/// gets the upstream's bytes and the upstream the client's; every request is counted once and the
/// unreadable ones as such; the label values are sanitised and within `max_models` + `other` and
/// `unknown`; Envoy is up, and its RSS grew by less than [`RSS_GROWTH_BOUND`].
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_passes_unchanged_within_label_and_memory_bounds() {
    bounded(Duration::from_secs(150), each_build(hostile_with)).await;
}

/// An SSE event `data: {"choices":[{"index":0,"delta":{"content":"<content>"}}]}` with raw bytes.
fn raw_content_event(content: &[u8]) -> Bytes {
    let mut e = b"data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"".to_vec();
    e.extend_from_slice(content);
    e.extend_from_slice(b"\"}}]}\n\n");
    Bytes::from(e)
}

/// A stream of `blocks` × 1 MiB of 1 KiB token events, all blocks sharing one buffer, then finish,
/// usage (as many output tokens as events) and `[DONE]`. Returns the script and its event count.
fn huge_stream(blocks: usize) -> (Script, u64) {
    let pad = 1024 - raw_content_event(b"").len();
    let event = raw_content_event(&vec![b'x'; pad]);
    let block = Bytes::from(event.repeat(1024));
    let events = (blocks * 1024) as u64;
    let mut chunks = vec![(
        Duration::ZERO,
        chunk_event(json!({"role": "assistant"}), None),
    )];
    chunks.extend((0..blocks).map(|_| (Duration::ZERO, block.clone())));
    chunks.push((Duration::ZERO, chunk_event(json!({}), Some("stop"))));
    chunks.push((Duration::ZERO, usage_event(5, events)));
    chunks.push((Duration::ZERO, Bytes::from_static(b"data: [DONE]\n\n")));
    let script = Script {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks,
        end: ScriptEnd::Complete,
    };
    (script, events)
}

/// The event stream with what a parser should survive: invalid UTF-8, a raw NUL, JSON nested
/// 100,000 deep and one 10 MiB line (sent in 64 KiB pieces of one buffer), then 3 tokens with usage.
fn hostile_stream() -> Script {
    let mut s = paced_stream(Duration::ZERO, Duration::ZERO, 3, 5);
    let mut deep = b"data: ".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend_from_slice(b"\n\n");
    let line = raw_content_event(&vec![b'y'; 10 << 20]);
    let mut hostile = vec![
        raw_content_event(b"\xff\xfe\xc3("),
        raw_content_event(b"a\x00b"),
        Bytes::from(deep),
    ];
    hostile.extend(
        (0..line.len())
            .step_by(64 << 10)
            .map(|at| line.slice(at..line.len().min(at + (64 << 10)))),
    );
    s.chunks
        .splice(1..1, hostile.into_iter().map(|b| (Duration::ZERO, b)));
    s
}

fn label_ok(v: &str) -> bool {
    !v.is_empty()
        && v.len() <= 64
        && v.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._/:@+-".contains(&b))
}

async fn hostile_with(build: Build) -> Result<()> {
    let upstream = Upstream::start().await?;
    let completion = completion_script();
    let completion_bytes = script_body(&completion);
    upstream.add("json", completion);
    let hostile = hostile_stream();
    upstream.add("hostile-sse", hostile.clone());
    let (huge, huge_events) = huge_stream(100);
    upstream.add("huge", huge.clone());
    let config = json!({"max_models": MAX_MODELS,
        "label_headers": [{"header": "x-tenant", "label": "tenant", "max_values": 4}]});
    let setup = Setup {
        extra_labels: &["tenant"],
        ..Setup::default()
    };
    let mut envoy = Envoy::start_with(build, upstream.port, &config.to_string(), &setup).await?;
    let port = envoy.gateway_port;
    let pid = envoy.proc.pid();
    // Through the gateway: the client gets the completion, the upstream gets `body` as sent.
    let pass = |body: Vec<u8>, extra: Vec<(&'static str, String)>| {
        let (want, upstream) = (completion_bytes.clone(), &upstream);
        async move {
            let extra: Vec<(&str, &str)> = extra.iter().map(|(k, v)| (*k, v.as_str())).collect();
            let r = post(port, "json", &extra, body.clone()).await?;
            ensure!(
                r.status == 200 && r.body == want,
                "the client got {}: {}",
                r.status,
                r.text()
            );
            let got = upstream.received("json").pop().unwrap_or_default();
            ensure!(
                got == body,
                "the upstream got {} bytes, not the {} sent",
                got.len(),
                body.len()
            );
            Ok::<_, anyhow::Error>(())
        }
    };
    pass(plain_request("warmup"), vec![("x-tenant", "acme".into())]).await?;
    envoy.scrape().await?;
    let rss_before = rss_bytes(pid)?;

    // Request bodies the filter cannot read: counted under `unknown`, passed on unchanged.
    let unreadable: Vec<Vec<u8>> = vec![
        b"{\"model\": \"x\",, }".to_vec(),
        b"{\"model\":\"trunc\",\"messages\":[{\"role\":\"user\",\"content\":\"hi".to_vec(),
        vec![b'['; 100_000],
        b"{\"model\":\"bad\xff\xfe\",\"messages\":[]}".to_vec(),
        b"{\"model\":\"nul\x00\",\"messages\":[]}".to_vec(),
    ];
    let n_unreadable = unreadable.len() as f64;
    for body in unreadable {
        pass(body, vec![])
            .await
            .context("an unreadable request body")?;
    }
    // Valid JSON nested 100,000 deep in a field the filter skips: skipped without recursion, so the
    // model is read.
    let mut deep = b"{\"model\":\"deep\",\"messages\":".to_vec();
    deep.extend(std::iter::repeat_n(b'[', 100_000));
    deep.extend(std::iter::repeat_n(b']', 100_000));
    deep.push(b'}');
    pass(deep, vec![])
        .await
        .context("a deeply nested request body")?;
    // 10 MB: over max_request_body_bytes, so `unknown` and `request_too_large`, but passed whole.
    let big = serde_json::to_vec(&json!({"model": "big-request",
        "messages": [{"role": "user", "content": "z".repeat(10 << 20)}]}))?;
    pass(big, vec![]).await.context("a 10 MB request body")?;

    // Names made to break stat names, each with a tenant value made for the same.
    let ten_k_model = "m".repeat(10 << 10);
    let ten_k_tenant = "t".repeat(10 << 10);
    let named: Vec<(&str, &str, &str)> = vec![
        // (model as sent, its label, tenant header)
        (";.;", "_._", ";.;"),
        ("=.=", "_._", "=.="),
        (".", "_", ten_k_tenant.as_str()),
        ("line\nbreak", "line_break", "a\tb"),
        (ten_k_model.as_str(), &ten_k_model[..64], "é"),
        ("nul\u{0}name", "nul_name", ""),
        ("ünï", "_n_", "acme"),
    ];
    for (model, _, tenant) in &named {
        let tenant = if tenant.is_empty() {
            vec![]
        } else {
            vec![("x-tenant", tenant.to_string())]
        };
        pass(plain_request(model), tenant)
            .await
            .with_context(|| format!("model {model:?}"))?;
    }

    // The hostile event stream and 100 MiB of events: the client's bytes are compared as they
    // arrive, nothing of them kept.
    let headers = |script| {
        vec![
            ("content-type", "application/json"),
            (SCRIPT_HEADER, script),
        ]
    };
    for (script, model, s) in [
        ("hostile-sse", "hostile-sse", &hostile),
        ("huge", "huge-stream", &huge),
    ] {
        let expected: Vec<Bytes> = s.chunks.iter().map(|(_, b)| b.clone()).collect();
        let (status, len) =
            request_compare(port, CHAT, &headers(script), chat_request(model), &expected)
                .await
                .with_context(|| format!("stream {script}"))?;
        ensure!(status == 200, "{script}: status {status}");
        eprintln!("{build:?}: {script}: {len} bytes through the gateway, identical");
    }

    // 10,000 distinct names as fast as 32 keep-alive connections carry them.
    let started = std::time::Instant::now();
    let mut tasks = Vec::new();
    for c in 0..32 {
        let want = completion_bytes.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = Connection::open(port).await?;
            for i in (c..DISTINCT_NAMES).step_by(32) {
                let r = conn
                    .request(
                        "POST",
                        CHAT,
                        &headers("json"),
                        plain_request(&format!("distinct-{i}")),
                    )
                    .await?;
                ensure!(
                    r.status == 200 && r.body == want,
                    "distinct-{i}: {}",
                    r.status
                );
            }
            Ok::<_, anyhow::Error>(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!(
        "{build:?}: {DISTINCT_NAMES} distinct model names in {:.1} s",
        started.elapsed().as_secs_f64()
    );

    let total = 1.0 + n_unreadable + 2.0 + named.len() as f64 + 2.0 + DISTINCT_NAMES as f64;
    let already = 1 + 1 + 6 + 2; // warmup, deep, the six distinct labels of `named`, the streams
    let others = (DISTINCT_NAMES - (MAX_MODELS - already)) as f64;
    let s = expect_sums(
        &envoy,
        &[
            ("llm_requests_total", vec![], total),
            (
                "llm_requests_total",
                vec![("model", "unknown")],
                n_unreadable + 1.0,
            ),
            (
                "llm_filter_errors_total",
                vec![("kind", "request_parse")],
                n_unreadable,
            ),
            (
                "llm_filter_errors_total",
                vec![("kind", "request_too_large")],
                1.0,
            ),
            (
                "llm_filter_errors_total",
                vec![("kind", "event_too_large")],
                1.0,
            ),
            // Invalid UTF-8, the NUL and the deep event: one kind, counted once per request.
            (
                "llm_filter_errors_total",
                vec![("kind", "response_parse")],
                1.0,
            ),
            ("llm_requests_total", vec![("model", "_._")], 2.0),
            ended("hostile-sse", "completed", 1.0),
            ended("huge-stream", "completed", 1.0),
            output("hostile-sse", "usage", 3.0),
            output("huge-stream", "usage", huge_events as f64),
            (
                "llm_token_count_mismatch_total",
                vec![("model", "huge-stream")],
                0.0,
            ),
            ("llm_requests_total", vec![("model", "other")], others),
            ("llm_active_requests", vec![], 0.0),
        ],
    )
    .await?;
    let rss_after = rss_bytes(pid)?;
    still_up(&mut envoy).await?;

    let values = |label: &str| -> BTreeSet<String> {
        s.samples
            .iter()
            .filter(|x| x.name.starts_with("llm_"))
            .filter_map(|x| x.labels.get(label).cloned())
            .collect()
    };
    let models = values("model");
    let named_labels: BTreeSet<&str> = named.iter().map(|(_, l, _)| *l).collect();
    for want in named_labels.iter().copied().chain([
        "warmup",
        "hostile-sse",
        "huge-stream",
        "other",
        "unknown",
    ]) {
        ensure!(
            models.contains(want),
            "no model label {want:?} in {models:?}"
        );
    }
    ensure!(
        models.len() <= MAX_MODELS + 2,
        "{} model labels, more than max_models {MAX_MODELS} + other + unknown",
        models.len()
    );
    ensure!(
        models.iter().all(|m| label_ok(m)),
        "unsanitised model labels: {models:?}"
    );
    let tenants = values("tenant");
    let want_tenants: BTreeSet<String> =
        ["acme", "_._", &ten_k_tenant[..64], "a_b", "other", "none"]
            .iter()
            .map(|t| t.to_string())
            .collect();
    ensure!(
        tenants == want_tenants,
        "tenant labels {tenants:?}, want {want_tenants:?}"
    );
    let grew = rss_after.saturating_sub(rss_before);
    eprintln!(
        "{build:?}: Envoy RSS {} MiB before the hostile batch, {} MiB after (+{} KiB); {} model labels",
        rss_before >> 20,
        rss_after >> 20,
        grew >> 10,
        models.len()
    );
    ensure!(
        grew < RSS_GROWTH_BOUND,
        "Envoy's RSS grew by {} MiB over the hostile batch (bound {} MiB)",
        grew >> 20,
        RSS_GROWTH_BOUND >> 20
    );
    Ok(())
}
