//! API conformance through the axum router, without sockets (`tower::ServiceExt::oneshot`).
//!
//! The scheduler runs the scripted backend (a fixed token script, no weights), while the real Qwen3
//! tokenizer and chat template produce the prompts, so token counts here are the real ones.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use qwen3_engine::chat::{locate_tokenizer_dir, ChatTokenizer};
use qwen3_engine::scheduler::{GenerateRequest, SchedulerConfig, SubmitError};
use qwen3_engine::scripted::{ScriptedBackend, StepGate};
use qwen3_engine::server::{assemble, Built};
use serde_json::{json, Value};
use tower::ServiceExt;

const MODEL: &str = "qwen3-test";

fn tokenizer() -> Arc<ChatTokenizer> {
    static TOK: std::sync::OnceLock<Arc<ChatTokenizer>> = std::sync::OnceLock::new();
    TOK.get_or_init(|| {
        let dir = locate_tokenizer_dir(None).unwrap_or_else(|e| panic!("{e}"));
        Arc::new(ChatTokenizer::from_dir(&dir).unwrap())
    })
    .clone()
}

struct Script {
    tokens: Vec<u32>,
    reasoning: Vec<u32>,
}

/// `<think>I think about it</think>\n\nHello world, friends!<|im_end|>`
fn thinking_script(t: &ChatTokenizer) -> Script {
    let reasoning = t.encode("I think about it").unwrap();
    let mut tokens = vec![t.think_start.unwrap()];
    tokens.extend(&reasoning);
    tokens.push(t.think_end.unwrap());
    tokens.extend(t.encode("\n\nHello world, friends!").unwrap());
    tokens.push(151645);
    Script { tokens, reasoning }
}

fn sched(max_num_seqs: usize, max_queue: usize) -> SchedulerConfig {
    SchedulerConfig {
        max_num_seqs,
        max_queue,
        max_model_len: 256,
        kv_cache_tokens: 4096,
        block_size: 16,
        max_num_batched_tokens: 512,
        steer_thinking: false,
    }
}

fn backend(script: Vec<u32>, delay: Duration) -> ScriptedBackend {
    let t = tokenizer();
    let mut b = ScriptedBackend::new(script, t.encode(" la").unwrap()[0], 151_936);
    b.step_delay = delay;
    b
}

fn app_with(script: Vec<u32>, cfg: SchedulerConfig, delay: Duration) -> Built {
    app_of(backend(script, delay), cfg)
}

/// The router over a backend the test has set up (failures, probes, delays).
fn app_of(b: ScriptedBackend, cfg: SchedulerConfig) -> Built {
    assemble(
        b,
        tokenizer(),
        MODEL.into(),
        cfg,
        Duration::from_millis(100),
    )
    .unwrap()
}

fn app() -> (Built, Script) {
    let t = tokenizer();
    let s = thinking_script(&t);
    (app_with(s.tokens.clone(), sched(4, 8), Duration::ZERO), s)
}

async fn call(
    router: &Router,
    method: Method,
    path: &str,
    body: Option<Value>,
) -> axum::response::Response {
    let req = Request::builder().method(method).uri(path);
    let req = match body {
        Some(b) => req
            .header("content-type", "application/json")
            .body(Body::from(b.to_string()))
            .unwrap(),
        None => req.body(Body::empty()).unwrap(),
    };
    router.clone().oneshot(req).await.unwrap()
}

async fn post(router: &Router, path: &str, body: Value) -> (StatusCode, Value) {
    let resp = call(router, Method::POST, path, Some(body)).await;
    let status = resp.status();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

async fn post_stream(router: &Router, path: &str, body: Value) -> (String, String) {
    let resp = call(router, Method::POST, path, Some(body)).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_owned();
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    (ct, String::from_utf8(bytes.to_vec()).unwrap())
}

/// Splits an SSE body into `data:` payloads, checking the exact framing on the way.
fn sse_events(body: &str) -> Vec<String> {
    assert!(body.ends_with("data: [DONE]\n\n"), "{body}");
    body.split_terminator("\n\n")
        .filter(|e| !e.starts_with(':'))
        .map(|e| {
            assert!(e.starts_with("data: "), "bad event {e:?}");
            assert!(!e.contains('\n'), "multi-line event {e:?}");
            e["data: ".len()..].to_owned()
        })
        .collect()
}

fn prompt_len(t: &ChatTokenizer, messages: Value, thinking: Option<bool>) -> u64 {
    let mut kw = serde_json::Map::new();
    if let Some(b) = thinking {
        kw.insert("enable_thinking".into(), json!(b));
    }
    let p = t.apply_chat_template(&messages, None, true, &kw).unwrap();
    t.encode(&p).unwrap().len() as u64
}

fn user(text: &str) -> Value {
    json!([{"role": "user", "content": text}])
}

#[tokio::test]
async fn chat_completion_splits_reasoning_and_reports_exact_usage() {
    let (app, script) = app();
    let t = tokenizer();
    let messages = json!([{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]);
    let (status, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": messages}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let msg = &v["choices"][0]["message"];
    assert_eq!(msg["role"], "assistant");
    assert_eq!(msg["content"], "\n\nHello world, friends!");
    assert_eq!(msg["reasoning_content"], "I think about it");
    assert_eq!(msg["reasoning"], "I think about it");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let u = &v["usage"];
    assert_eq!(u["prompt_tokens"], prompt_len(&t, messages, None));
    assert_eq!(u["completion_tokens"], script.tokens.len() as u64);
    assert_eq!(
        u["total_tokens"],
        u["prompt_tokens"].as_u64().unwrap() + script.tokens.len() as u64
    );
    assert_eq!(
        u["completion_tokens_details"]["reasoning_tokens"],
        script.reasoning.len() as u64
    );
}

#[tokio::test]
async fn chat_stream_is_openai_sse_with_role_first_and_usage_last() {
    let (app, script) = app();
    let t = tokenizer();
    let (ct, body) = post_stream(
        &app.router,
        "/v1/chat/completions",
        json!({"model": MODEL, "messages": user("Hi"), "stream": true,
               "stream_options": {"include_usage": true}}),
    )
    .await;
    assert_eq!(ct, "text/event-stream");
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let first = &chunks[0];
    assert_eq!(first["object"], "chat.completion.chunk");
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");
    let id = first["id"].as_str().unwrap();
    assert!(chunks.iter().all(|c| c["id"] == id && c["model"] == MODEL));
    // Every chunk but the last carries `usage: null` when include_usage is set (OpenAI's shape).
    assert!(chunks[..chunks.len() - 1]
        .iter()
        .all(|c| c["usage"].is_null() && c.get("usage").is_some()));
    let mut reasoning = String::new();
    let mut content = String::new();
    for c in &chunks[1..chunks.len() - 2] {
        let d = &c["choices"][0]["delta"];
        assert!(c["choices"][0]["finish_reason"].is_null());
        if let Some(r) = d.get("reasoning_content") {
            assert_eq!(d["reasoning"], *r);
            reasoning.push_str(r.as_str().unwrap());
        } else {
            content.push_str(d["content"].as_str().unwrap());
        }
    }
    assert_eq!(reasoning, "I think about it");
    assert_eq!(content, "\n\nHello world, friends!");
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    assert_eq!(fin["choices"][0]["delta"], json!({}));
    let usage_chunk = chunks.last().unwrap();
    assert_eq!(usage_chunk["choices"], json!([]));
    assert_eq!(
        usage_chunk["usage"]["prompt_tokens"],
        prompt_len(&t, user("Hi"), None)
    );
    assert_eq!(
        usage_chunk["usage"]["completion_tokens"],
        script.tokens.len() as u64
    );
    assert_eq!(
        usage_chunk["usage"]["completion_tokens_details"]["reasoning_tokens"],
        script.reasoning.len() as u64
    );
}

#[tokio::test]
async fn stream_without_include_usage_has_no_usage() {
    let (app, _) = app();
    let (_, body) = post_stream(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "stream": true}),
    )
    .await;
    let events = sse_events(&body);
    for e in &events[..events.len() - 1] {
        let v: Value = serde_json::from_str(e).unwrap();
        assert!(v.get("usage").is_none(), "{e}");
        assert_eq!(v["choices"].as_array().unwrap().len(), 1);
    }
}

#[tokio::test]
async fn enable_thinking_false_is_honoured_top_level_and_in_chat_template_kwargs() {
    let (app, _) = app();
    let t = tokenizer();
    let with = prompt_len(&t, user("Hi"), Some(false));
    assert_eq!(
        with,
        prompt_len(&t, user("Hi"), None)
            + t.encode("<think>\n\n</think>\n\n").unwrap().len() as u64
    );
    for body in [
        json!({"messages": user("Hi"), "enable_thinking": false, "return_reasoning": true}),
        json!({"messages": user("Hi"), "chat_template_kwargs": {"enable_thinking": false}}),
        // chat_template_kwargs wins over the top-level flag.
        json!({"messages": user("Hi"), "enable_thinking": true, "chat_template_kwargs": {"enable_thinking": false}}),
    ] {
        let (status, v) = post(&app.router, "/v1/chat/completions", body).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(v["usage"]["prompt_tokens"], with);
    }
}

#[tokio::test]
async fn max_tokens_and_max_completion_tokens_end_with_length() {
    let (app, _) = app();
    let (_, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "max_tokens": 3}),
    )
    .await;
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    // Two tokens of reasoning after <think>: reasoning_content holds them, content is empty.
    assert_eq!(
        v["usage"]["completion_tokens_details"]["reasoning_tokens"],
        2
    );
    assert_eq!(v["choices"][0]["message"]["content"], "");
    let (_, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "max_tokens": 50, "max_completion_tokens": 5}),
    )
    .await;
    assert_eq!(v["usage"]["completion_tokens"], 5);
}

#[tokio::test]
async fn stop_strings_cut_the_content_and_finish_with_stop() {
    let (app, _) = app();
    for stop in [json!("world"), json!(["xyz", "orld,"])] {
        let (_, v) = post(
            &app.router,
            "/v1/chat/completions",
            json!({"messages": user("Hi"), "stop": stop}),
        )
        .await;
        let content = v["choices"][0]["message"]["content"].as_str().unwrap();
        assert!(
            content == "\n\nHello " || content == "\n\nHello w",
            "{content:?}"
        );
        assert_eq!(v["choices"][0]["finish_reason"], "stop");
    }
    // Streaming never leaks the beginning of a stop string.
    let (_, body) = post_stream(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "stream": true, "stop": "world"}),
    )
    .await;
    let text: String = sse_events(&body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .filter_map(|e| {
            let v: Value = serde_json::from_str(e).unwrap();
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect();
    assert_eq!(text, "\n\nHello ");
}

#[tokio::test]
async fn completions_endpoint_plain_and_streaming() {
    let (app, script) = app();
    let t = tokenizer();
    let (status, v) = post(
        &app.router,
        "/v1/completions",
        json!({"model": MODEL, "prompt": "Once upon a time", "max_tokens": 100}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["object"], "text_completion");
    let expected = t
        .decode(&script.tokens[..script.tokens.len() - 1], true)
        .unwrap();
    assert_eq!(v["choices"][0]["text"], expected.as_str());
    assert_eq!(
        v["usage"]["prompt_tokens"],
        t.encode("Once upon a time").unwrap().len() as u64
    );
    assert_eq!(v["usage"]["completion_tokens"], script.tokens.len() as u64);
    // The legacy default is 16 tokens.
    let (_, v) = post(&app.router, "/v1/completions", json!({"prompt": [1, 2, 3]})).await;
    assert_eq!(v["usage"]["prompt_tokens"], 3);
    assert!(v["usage"]["completion_tokens"].as_u64().unwrap() <= 16);

    let (_, body) = post_stream(
        &app.router,
        "/v1/completions",
        json!({"prompt": "Once", "stream": true, "stream_options": {"include_usage": true}}),
    )
    .await;
    let events = sse_events(&body);
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert!(chunks.iter().all(|c| c["object"] == "text_completion"));
    let text: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["text"].as_str().map(str::to_owned))
        .collect();
    // The script (13 tokens) ends with <|im_end|> before the default 16 tokens.
    assert_eq!(
        text,
        t.decode(&script.tokens[..script.tokens.len() - 1], true)
            .unwrap()
    );
    assert_eq!(
        chunks.last().unwrap()["usage"]["completion_tokens"],
        script.tokens.len() as u64
    );
    assert_eq!(
        chunks[chunks.len() - 2]["choices"][0]["finish_reason"],
        "stop"
    );
}

#[tokio::test]
async fn models_health_and_metrics() {
    let (app, _) = app();
    let resp = call(&app.router, Method::GET, "/health", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = call(&app.router, Method::GET, "/v1/models", None).await;
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["object"], "list");
    assert_eq!(v["data"][0]["id"], MODEL);
    assert_eq!(v["data"][0]["max_model_len"], 256);

    let (_, done) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "max_tokens": 4}),
    )
    .await;
    let resp = call(&app.router, Method::GET, "/metrics", None).await;
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/openmetrics-text"));
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    let l = format!("model_name=\"{MODEL}\"");
    for needle in [
        format!(
            "vllm:prompt_tokens_total{{{l}}} {}",
            done["usage"]["prompt_tokens"]
        ),
        format!("vllm:generation_tokens_total{{{l}}} 4"),
        format!("vllm:request_success_total{{{l},finished_reason=\"length\"}} 1"),
        format!("vllm:num_requests_running{{{l}}} 0"),
        format!("vllm:num_requests_waiting{{{l}}} 0"),
        format!("vllm:e2e_request_latency_seconds_count{{{l}}} 1"),
        format!("vllm:time_to_first_token_seconds_count{{{l}}} 1"),
        format!("vllm:inter_token_latency_seconds_count{{{l}}} 3"),
        format!("vllm:time_per_output_token_seconds_count{{{l}}} 3"),
        format!("vllm:request_generation_tokens_sum{{{l}}} 4.0"),
        format!("vllm:request_prompt_tokens_count{{{l}}} 1"),
        format!("vllm:request_queue_time_seconds_count{{{l}}} 1"),
        format!("vllm:request_prefill_time_seconds_count{{{l}}} 1"),
        format!("vllm:request_decode_time_seconds_count{{{l}}} 1"),
        "# TYPE vllm:kv_cache_usage_perc gauge".to_owned(),
    ] {
        assert!(text.contains(&needle), "missing {needle:?} in\n{text}");
    }
}

async fn expect_error(
    app: &Built,
    path: &str,
    body: Value,
    status: StatusCode,
    param: Option<&str>,
) -> Value {
    let (s, v) = post(&app.router, path, body.clone()).await;
    assert_eq!(s, status, "{body} -> {v}");
    let e = &v["error"];
    assert!(e["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("code").is_some(), "{v}");
    match param {
        Some(p) => {
            assert_eq!(e["param"], p, "{v}");
            assert!(
                e["message"]
                    .as_str()
                    .unwrap()
                    .contains(p.rsplit('.').next().unwrap())
                    || p.contains('['),
                "{v}"
            );
        }
        None => assert!(e["param"].is_null()),
    }
    v
}

#[tokio::test]
async fn bad_requests_get_openai_errors_naming_the_field() {
    let (app, _) = app();
    let c = "/v1/chat/completions";
    let bad = StatusCode::BAD_REQUEST;
    let resp = app
        .router
        .clone()
        .oneshot(Request::post(c).body(Body::from("{not json")).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), bad);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert!(v["error"]["message"].as_str().unwrap().contains("JSON"));

    expect_error(&app, c, json!({}), bad, Some("messages")).await;
    expect_error(&app, c, json!({"messages": []}), bad, Some("messages")).await;
    expect_error(&app, c, json!({"messages": "hi"}), bad, Some("messages")).await;
    expect_error(
        &app,
        c,
        json!({"messages": [{"content": "x"}]}),
        bad,
        Some("messages[0].role"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": [{"role": "robot", "content": "x"}]}),
        bad,
        Some("messages[0].role"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": [{"role": "user"}]}),
        bad,
        Some("messages[0].content"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": [{"role": "user", "content": [{"type": "image_url"}]}]}),
        bad,
        Some("messages[0].content[0].type"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "temperature": 3}),
        bad,
        Some("temperature"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "temperature": "hot"}),
        bad,
        Some("temperature"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "top_p": 0}),
        bad,
        Some("top_p"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "top_k": -5}),
        bad,
        Some("top_k"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "max_tokens": 0}),
        bad,
        Some("max_tokens"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "max_completion_tokens": -1}),
        bad,
        Some("max_completion_tokens"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "n": 2}),
        bad,
        Some("n"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "stop": 5}),
        bad,
        Some("stop"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "stop": ["a", 1]}),
        bad,
        Some("stop[1]"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "seed": "x"}),
        bad,
        Some("seed"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "stream": "yes"}),
        bad,
        Some("stream"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "stream_options": {"include_usage": true}}),
        bad,
        Some("stream_options"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "enable_thinking": "no"}),
        bad,
        Some("enable_thinking"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "chat_template_kwargs": {"enable_thinking": 1}}),
        bad,
        Some("chat_template_kwargs.enable_thinking"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "logprobs": true}),
        bad,
        Some("logprobs"),
    )
    .await;
    let v = expect_error(
        &app,
        c,
        json!({"model": "gpt-4", "messages": user("x")}),
        StatusCode::NOT_FOUND,
        Some("model"),
    )
    .await;
    assert_eq!(v["error"]["code"], "model_not_found");
    // 256-token context: a long prompt and a too-large max_tokens.
    let long = "word ".repeat(300);
    expect_error(
        &app,
        c,
        json!({"messages": user(&long)}),
        bad,
        Some("messages"),
    )
    .await;
    expect_error(
        &app,
        c,
        json!({"messages": user("x"), "max_tokens": 250}),
        bad,
        Some("max_tokens"),
    )
    .await;
    expect_error(
        &app,
        "/v1/completions",
        json!({"prompt": long}),
        bad,
        Some("prompt"),
    )
    .await;
    expect_error(&app, "/v1/completions", json!({}), bad, Some("prompt")).await;
    expect_error(
        &app,
        "/v1/completions",
        json!({"prompt": [1, 9999999]}),
        bad,
        Some("prompt[1]"),
    )
    .await;
    expect_error(
        &app,
        "/v1/completions",
        json!({"prompt": "x", "echo": true}),
        bad,
        Some("echo"),
    )
    .await;

    let big = "x".repeat(qwen3_engine::api::MAX_BODY_BYTES + 1);
    let resp = app
        .router
        .clone()
        .oneshot(Request::post(c).body(Body::from(big)).unwrap())
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "payload_too_large");

    let resp = call(&app.router, Method::GET, "/v1/nope", None).await;
    assert_eq!(resp.status(), StatusCode::NOT_FOUND);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "not_found");
    let resp = call(&app.router, Method::GET, c, None).await;
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    let v: Value =
        serde_json::from_slice(&resp.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["type"], "invalid_request_error");
}

async fn metric(app: &Built, name: &str) -> f64 {
    let resp = call(&app.router, Method::GET, "/metrics", None).await;
    let text = String::from_utf8(
        resp.into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec(),
    )
    .unwrap();
    text.lines()
        .find(|l| l.starts_with(name))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

#[tokio::test]
async fn full_queue_is_refused_with_429() {
    // One slot, one queue place, slow steps: the first request runs, the second waits, the third
    // is refused.
    let app = app_with(vec![], sched(1, 1), Duration::from_millis(20));
    let body = json!({"messages": user("Hi"), "stream": true, "max_tokens": 200});
    let a = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(body.clone()),
    )
    .await;
    assert_eq!(a.status(), StatusCode::OK);
    // Wait until A is running so B is the only one waiting.
    for _ in 0..100 {
        if metric(&app, "vllm:num_requests_running{").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let b = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(body.clone()),
    )
    .await;
    assert_eq!(b.status(), StatusCode::OK);
    assert_eq!(metric(&app, "vllm:num_requests_waiting{").await, 1.0);
    let c = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(body),
    )
    .await;
    assert_eq!(c.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(c.headers()["retry-after"], "1");
    let v: Value =
        serde_json::from_slice(&c.into_body().collect().await.unwrap().to_bytes()).unwrap();
    assert_eq!(v["error"]["code"], "queue_full");
    drop((a, b));
}

#[tokio::test]
async fn disconnect_cancels_and_frees_the_slot_for_the_next_request() {
    let app = app_with(vec![], sched(1, 4), Duration::from_millis(10));
    let long = json!({"messages": user("Hi"), "stream": true, "max_tokens": 240});
    let a = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(long),
    )
    .await;
    let mut body = a.into_body();
    // Read a few frames so A is certainly generating, then hang up.
    for _ in 0..3 {
        body.frame().await.unwrap().unwrap();
    }
    assert_eq!(metric(&app, "vllm:num_requests_running{").await, 1.0);
    drop(body);
    // With A still holding the only slot, B would wait ~2.4 s; cancellation lets it run at once.
    let started = std::time::Instant::now();
    let (status, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(
        metric(
            &app,
            "vllm:request_success_total{model_name=\"qwen3-test\",finished_reason=\"abort\"}"
        )
        .await,
        1.0
    );
    assert_eq!(metric(&app, "vllm:num_requests_running{").await, 0.0);
    assert_eq!(metric(&app, "vllm:kv_cache_usage_perc{").await, 0.0);
}

#[tokio::test]
async fn queued_stream_gets_keepalive_comments_then_its_completion() {
    let app = app_with(vec![], sched(1, 4), Duration::from_millis(20));
    let a = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(json!({"messages": user("Hi"), "stream": true, "max_tokens": 25})),
    )
    .await;
    for _ in 0..100 {
        if metric(&app, "vllm:num_requests_running{").await == 1.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(json!({"messages": user("Hi"), "stream": true, "max_tokens": 2})),
    )
    .await;
    let mut body = b.into_body();
    let first = body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert_eq!(&first[..], b": keep-alive\n\n");
    let rest = body.collect().await.unwrap().to_bytes();
    let rest = String::from_utf8(rest.to_vec()).unwrap();
    let events = sse_events(&rest);
    assert!(events.len() >= 4, "{rest}");
    drop(a);
}

#[tokio::test]
async fn concurrent_requests_are_batched_and_each_gets_its_own_usage() {
    let b = backend(vec![], Duration::from_millis(5));
    let (steps, max_batch) = (b.steps.clone(), b.max_batch.clone());
    let app = app_of(b, sched(4, 8));
    let mut handles = Vec::new();
    for n in 1..=4u64 {
        let r = app.router.clone();
        handles.push(tokio::spawn(async move {
            let (_, v) = post(
                &r,
                "/v1/chat/completions",
                json!({"messages": user("Hi"), "max_tokens": 10 + n * 5}),
            )
            .await;
            (n, v)
        }));
    }
    for h in handles {
        let (n, v) = h.await.unwrap();
        assert_eq!(v["usage"]["completion_tokens"], 10 + n * 5);
    }
    assert_eq!(metric(&app, "vllm:generation_tokens_total{").await, 90.0);
    // 90 tokens in far fewer than 90 steps: sequences shared decode steps.
    let steps = steps.load(std::sync::atomic::Ordering::SeqCst);
    assert!(steps < 60, "{steps} steps");
    assert_eq!(max_batch.load(std::sync::atomic::Ordering::SeqCst), 4);
}

#[tokio::test]
async fn mid_stream_failure_is_a_json_error_event_then_done() {
    let mut b = backend(vec![], Duration::ZERO);
    b.fail_from_step = Some(3);
    let app = app_of(b, sched(2, 4));
    let (_, body) = post_stream(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "stream": true, "max_tokens": 20}),
    )
    .await;
    let events = sse_events(&body);
    assert_eq!(events.last().unwrap(), "[DONE]");
    let chunks: Vec<Value> = events[..events.len() - 1]
        .iter()
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let err = chunks.last().unwrap();
    assert_eq!(err["error"]["type"], "server_error");
    assert!(err["error"]["message"]
        .as_str()
        .unwrap()
        .contains("scripted failure"));
    // The engine survives and the non-streaming path reports a 500 in OpenAI's shape.
    let (status, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi")}),
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(v["error"]["type"], "server_error");
    let resp = call(&app.router, Method::GET, "/health", None).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        metric(
            &app,
            "vllm:request_success_total{model_name=\"qwen3-test\",finished_reason=\"error\"}"
        )
        .await,
        2.0
    );
}

#[tokio::test]
async fn stopped_engine_answers_503() {
    let (app, _) = app();
    app.state.engine.shutdown();
    for _ in 0..100 {
        if !app.state.engine.is_alive() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (status, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi")}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(v["error"]["code"], "service_unavailable");
    let resp = call(&app.router, Method::GET, "/health", None).await;
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
}

#[tokio::test]
async fn tool_calls_are_parsed_from_qwen3_tool_call_blocks() {
    let t = tokenizer();
    let mut script = t.encode("Let me check.").unwrap();
    script.push(t.tool_call_start.unwrap());
    script.extend(
        t.encode("\n{\"name\": \"get_weather\", \"arguments\": {\"city\": \"Paris\"}}\n")
            .unwrap(),
    );
    script.push(t.tool_call_end.unwrap());
    script.push(151645);
    let app = app_with(script.clone(), sched(2, 4), Duration::ZERO);
    let tools = json!([{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]);
    let (status, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Weather in Paris?"), "tools": tools, "enable_thinking": false}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    let choice = &v["choices"][0];
    assert_eq!(choice["finish_reason"], "tool_calls");
    assert_eq!(choice["message"]["content"], "Let me check.");
    let call = &choice["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    assert_eq!(call["function"]["arguments"], "{\"city\": \"Paris\"}");
    assert!(call["id"].as_str().unwrap().starts_with("chatcmpl-tool-"));
    assert_eq!(v["usage"]["completion_tokens"], script.len() as u64);

    // Streaming: the call arrives as one tool_calls delta.
    let (_, body) = post_stream(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Weather?"), "tools": tools, "stream": true}),
    )
    .await;
    let chunks: Vec<Value> = sse_events(&body)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap())
        .collect();
    let calls: Vec<&Value> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"].get("tool_calls"))
        .collect();
    assert_eq!(calls.len(), 1);
    assert_eq!(calls[0][0]["index"], 0);
    assert_eq!(calls[0][0]["function"]["name"], "get_weather");
    assert_eq!(
        chunks.last().unwrap()["choices"][0]["finish_reason"],
        "tool_calls"
    );

    // Without tools (or with tool_choice "none") the block is plain text.
    let (_, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("x")}),
    )
    .await;
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("<tool_call>"));
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    let (_, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("x"), "tools": tools, "tool_choice": "none"}),
    )
    .await;
    assert!(v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .contains("get_weather"));
    expect_error(
        &app,
        "/v1/chat/completions",
        json!({"messages": user("x"), "tools": tools, "tool_choice": "required"}),
        StatusCode::BAD_REQUEST,
        Some("tool_choice"),
    )
    .await;
}

#[tokio::test]
async fn kv_budget_holds_requests_back_until_the_cache_frees() {
    // Four slots but a 256-token KV budget: two requests reserving ~160 tokens each cannot run
    // together, so the second waits although slots are free.
    let mut cfg = sched(4, 4);
    cfg.kv_cache_tokens = 256;
    let app = app_with(vec![], cfg, Duration::from_millis(5));
    let body = json!({"messages": user("Hi"), "stream": true, "max_tokens": 150});
    let a = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(body.clone()),
    )
    .await;
    let mut a_body = a.into_body();
    a_body.frame().await.unwrap().unwrap();
    let b = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(body),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(metric(&app, "vllm:num_requests_running{").await, 1.0);
    assert_eq!(metric(&app, "vllm:num_requests_waiting{").await, 1.0);
    let usage = metric(&app, "vllm:kv_cache_usage_perc{").await;
    assert!(usage > 0.0 && usage < 1.0, "{usage}");
    // Hanging up on A frees its reservation; B starts.
    drop(a_body);
    let mut b_body = b.into_body();
    let first = b_body.frame().await.unwrap().unwrap().into_data().unwrap();
    assert!(first.starts_with(b"data: ") || first.starts_with(b": keep-alive"));
    for _ in 0..100 {
        if metric(&app, "vllm:num_requests_waiting{").await == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(metric(&app, "vllm:num_requests_waiting{").await, 0.0);
    assert_eq!(metric(&app, "vllm:num_requests_running{").await, 1.0);
}

#[tokio::test]
async fn a_panic_in_the_scheduler_loop_fails_health_and_every_request_instead_of_hanging() {
    // A fault outside the forward pass (which has its own guard): admitting a sequence panics.
    let mut b = backend(vec![], Duration::ZERO);
    b.panic_on_admit = true;
    let app = app_of(b, sched(2, 4));
    let answer = tokio::time::timeout(
        Duration::from_secs(10),
        post(
            &app.router,
            "/v1/chat/completions",
            json!({"messages": user("Hi")}),
        ),
    )
    .await
    .expect("the request that met the panic must be answered, not left waiting");
    assert!(answer.0.is_server_error(), "{answer:?}");
    assert_eq!(answer.1["error"]["type"], "server_error", "{answer:?}");
    // The engine is dead and says so (the scheduler thread marks it as it unwinds, which may end
    // just after the request above saw its stream close); new requests are then refused at once.
    let mut health = StatusCode::OK;
    for _ in 0..250 {
        health = call(&app.router, Method::GET, "/health", None)
            .await
            .status();
        if health != StatusCode::OK {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(health, StatusCode::SERVICE_UNAVAILABLE);
    let (status, v) = tokio::time::timeout(
        Duration::from_secs(10),
        post(
            &app.router,
            "/v1/chat/completions",
            json!({"messages": user("Hi"), "stream": true}),
        ),
    )
    .await
    .expect("a request after the panic must be refused, not queued");
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{v}");
}

#[tokio::test]
async fn a_thousand_aborted_streams_leave_no_slot_queue_entry_or_kv_behind() {
    // 8 slots, a deep queue: each stream is dropped after its first frame, running or still queued.
    let app = app_with(vec![], sched(8, 1024), Duration::from_millis(1));
    let mut tasks = Vec::new();
    for i in 0..1000 {
        let router = app.router.clone();
        tasks.push(tokio::spawn(async move {
            let body =
                json!({"messages": user("Hi"), "stream": true, "max_tokens": 200, "seed": i});
            let resp = call(&router, Method::POST, "/v1/chat/completions", Some(body)).await;
            assert_eq!(resp.status(), StatusCode::OK);
            let mut body = resp.into_body();
            let _ = body.frame().await;
            // `body` drops here: the client is gone.
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    // Cancellation reaches the scheduler within a step or two; wait until everything is released.
    let mut left = (f64::NAN, f64::NAN, f64::NAN);
    for _ in 0..200 {
        left = (
            metric(&app, "vllm:num_requests_running{").await,
            metric(&app, "vllm:num_requests_waiting{").await,
            metric(&app, "vllm:kv_cache_usage_perc{").await,
        );
        if left == (0.0, 0.0, 0.0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        left,
        (0.0, 0.0, 0.0),
        "running, waiting, kv usage after 1,000 aborts"
    );
    // Every one of them is accounted for, and the engine still serves.
    // Every one left the engine as an abort (none ran to its 200 tokens).
    let aborted = metric(
        &app,
        "vllm:request_success_total{model_name=\"qwen3-test\",finished_reason=\"abort\"}",
    )
    .await;
    assert_eq!(aborted, 1000.0);
    let (status, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(v["usage"]["completion_tokens"], 3);
}

/// Waits for the scripted backend to hold at its next gated step and returns that step.
async fn held_at(held: &mut tokio::sync::mpsc::UnboundedReceiver<usize>) -> usize {
    // Only a guard against a hang: the gate is reached as soon as the scheduler gets there.
    tokio::time::timeout(Duration::from_secs(60), held.recv())
        .await
        .expect("the backend never reached the gated step")
        .expect("the backend is gone")
}

fn stream_body(max_tokens: usize) -> Value {
    json!({"messages": user("Hi"), "stream": true, "max_tokens": max_tokens})
}

#[tokio::test]
async fn kv_usage_is_the_memory_the_caches_hold_while_sequences_run() {
    // 16 blocks of 16 tokens. The backend stops at the start of steps 1, 20 and 60, before the
    // step grows any cache, so the gauge is read against a cache that cannot move.
    let t = tokenizer();
    assert_eq!(prompt_len(&t, user("Hi"), None), 9);
    let (gate, mut held, release) = StepGate::new(vec![1, 20, 60]);
    let mut b = backend(vec![], Duration::ZERO);
    b.gate = Some(gate);
    let mut cfg = sched(4, 4);
    cfg.kv_cache_tokens = 256;
    let app = app_of(b, cfg);
    let resp = call(
        &app.router,
        Method::POST,
        "/v1/chat/completions",
        Some(stream_body(100)),
    )
    .await;
    // Step n starts with the 9 prompt tokens and n - 1 decoded tokens cached. The cache holds one
    // block for 9 tokens, doubles to 2 blocks for 28, and for 68 stops at its reservation, 7 blocks
    // (9 + 99 tokens rounded up), where doubling alone would have given 8.
    for (step, capacity) in [(1, 16.0), (20, 32.0), (60, 112.0)] {
        assert_eq!(held_at(&mut held).await, step);
        assert_eq!(
            metric(&app, "vllm:kv_cache_usage_perc{").await,
            capacity / 256.0,
            "at step {step}"
        );
        release.send(()).unwrap();
    }
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    assert!(body.ends_with(b"data: [DONE]\n\n"));
    assert_eq!(metric(&app, "vllm:kv_cache_usage_perc{").await, 0.0);
}

#[tokio::test]
async fn admission_reserves_whole_blocks() {
    // 16 blocks of 16 tokens; every prompt is 9 tokens. A reserves 9 + 91 = 100 tokens: 7 blocks.
    // B reserves 9 + 135 = 144 tokens: 9 blocks, exactly what is left. C reserves one block and
    // must wait, although in tokens (100 + 144 + 9 of 256) all three would fit: the caches would
    // then need 17 blocks of memory.
    let (gate, mut held, release) = StepGate::new(vec![0, 1]);
    let mut b = backend(vec![], Duration::ZERO);
    b.gate = Some(gate);
    let mut cfg = sched(4, 4);
    cfg.kv_cache_tokens = 256;
    let app = app_of(b, cfg);
    let post_stream = |max_tokens| {
        call(
            &app.router,
            Method::POST,
            "/v1/chat/completions",
            Some(stream_body(max_tokens)),
        )
    };
    let a = post_stream(92).await;
    assert_eq!(held_at(&mut held).await, 0);
    let b = post_stream(136).await;
    let c = post_stream(1).await;
    release.send(()).unwrap();
    // Step 1 is the first after A's prefill: whatever could be admitted has been.
    assert_eq!(held_at(&mut held).await, 1);
    assert_eq!(metric(&app, "vllm:num_requests_running{").await, 2.0);
    assert_eq!(metric(&app, "vllm:num_requests_waiting{").await, 1.0);
    drop(release);
    // C runs once A and B have finished and given their blocks back.
    let c = c.into_body().collect().await.unwrap().to_bytes();
    assert!(c.ends_with(b"data: [DONE]\n\n"));
    drop((a, b));
}

#[tokio::test]
async fn a_request_larger_than_the_whole_kv_budget_never_enters_the_queue() {
    // 16 blocks of 16 tokens, a 256-token context. Through the API such a request is refused by
    // the context length (400), since a budget must hold one full context; a caller of the
    // scheduler itself gets `TooLarge` and the queue stays as it was.
    let mut cfg = sched(1, 4);
    cfg.kv_cache_tokens = 256;
    let app = app_with(vec![], cfg.clone(), Duration::ZERO);
    let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
    let err = app.state.engine.submit(GenerateRequest {
        prompt: vec![1; 300],
        max_tokens: 1,
        sampling: Default::default(),
        stop: Vec::new(),
        split_reasoning: false,
        parse_tool_calls: false,
        events: tx,
        arrival: std::time::Instant::now(),
    });
    assert_eq!(
        err,
        Err(SubmitError::TooLarge {
            blocks: 19,
            num_blocks: 16
        })
    );
    assert_eq!(metric(&app, "vllm:num_requests_waiting{").await, 0.0);
    let (status, v) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "max_tokens": 3}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{v}");
    assert_eq!(v["usage"]["completion_tokens"], 3);

    // A budget that cannot hold one full context is a configuration error naming the flags.
    cfg.max_model_len = 4096;
    let err = cfg.validate().unwrap_err().to_string();
    assert_eq!(
        err,
        "--kv-cache-tokens (256) holds 16 blocks of --block-size 16; one sequence of \
         --max-model-len (4096) needs 256 blocks (4096 tokens)"
    );
    cfg.block_size = 0;
    assert_eq!(
        cfg.validate().unwrap_err().to_string(),
        "--block-size must be at least 1"
    );
}

/// The families named in `families`, parsed from `/metrics` by a Prometheus text-format parser.
/// Only those lines are handed to it: the parser refuses OpenMetrics counters, whose samples carry
/// a `_total` suffix their `# TYPE` line does not (Prometheus' own parser, which the endpoint
/// picker uses, takes them).
async fn scrape(app: &Built, families: &[&str]) -> prom_text_format_parser::Scrape {
    let resp = call(&app.router, Method::GET, "/metrics", None).await;
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    let text = String::from_utf8(bytes.to_vec()).unwrap();
    let ours = |line: &str| {
        let name = line
            .strip_prefix("# HELP ")
            .or_else(|| line.strip_prefix("# TYPE "))
            .unwrap_or(line);
        families.iter().any(|f| {
            name.strip_prefix(f)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
    };
    let picked: String = text
        .lines()
        .filter(|l| ours(l))
        .map(|l| format!("{l}\n"))
        .collect();
    prom_text_format_parser::Scrape::parse(&picked).unwrap_or_else(|e| panic!("{e:?} in\n{text}"))
}

/// The labels of the one sample of gauge `name`, and its value.
fn gauge(s: &prom_text_format_parser::Scrape, name: &str) -> (Vec<(String, String)>, f64) {
    let m = s
        .metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("no {name}"));
    assert_eq!(m.kind, prom_text_format_parser::Type::Gauge, "{name}");
    assert_eq!(m.samples.len(), 1, "{name}: {:?}", m.samples);
    let sample = &m.samples[0];
    let labels = sample
        .labels
        .iter()
        .map(|l| (l.key.clone(), l.value.clone()))
        .collect();
    (labels, sample.value.value.as_f64())
}

#[tokio::test]
async fn the_series_the_inference_extension_scrapes_parse_with_vllm_labels() {
    // 1,000 tokens are 62 whole blocks of 16.
    let mut cfg = sched(4, 8);
    cfg.kv_cache_tokens = 1000;
    let app = app_with(vec![], cfg, Duration::ZERO);
    let before = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    let (status, _) = post(
        &app.router,
        "/v1/chat/completions",
        json!({"messages": user("Hi"), "max_tokens": 2}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let picked = [
        "vllm:num_requests_waiting",
        "vllm:num_requests_running",
        "vllm:kv_cache_usage_perc",
        "vllm:cache_config_info",
        "vllm:lora_requests_info",
    ];
    let s = scrape(&app, &picked).await;
    assert_eq!(s.metrics.len(), 5, "{:?}", s.metrics);
    let model = vec![("model_name".to_owned(), MODEL.to_owned())];
    for name in &picked[..3] {
        assert_eq!(gauge(&s, name), (model.clone(), 0.0), "{name}");
    }
    let (labels, value) = gauge(&s, "vllm:cache_config_info");
    let get = |k: &str| {
        labels
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(value, 1.0);
    assert_eq!(get("block_size"), Some("16"));
    assert_eq!(get("num_gpu_blocks"), Some("62"));
    assert_eq!(get("engine"), Some("0"));
    assert_eq!(
        get("model_name"),
        None,
        "vLLM's info gauge has no model_name"
    );
    let (labels, value) = gauge(&s, "vllm:lora_requests_info");
    assert_eq!(
        labels,
        [
            ("max_lora".to_owned(), "0".to_owned()),
            ("waiting_lora_adapters".to_owned(), String::new()),
            ("running_lora_adapters".to_owned(), String::new()),
        ]
    );
    // The value is the Unix time of the scheduler's last update, which ran for the request above.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        (before..=now).contains(&value),
        "{before} <= {value} <= {now}"
    );
}

#[tokio::test]
async fn a_huge_body_is_tokenized_off_the_async_worker() {
    // The test runtime has one thread. A 3.6 MB message is far over the 256-token context, so
    // the request ends in a 400 as soon as it is tokenized, with no await after that. Both futures
    // are polled in order, the huge one first: were its tokenization on the async worker, it would
    // be answered inside that first poll, before `/health` is even polled.
    let (app, _) = app();
    let order = std::sync::Mutex::new(Vec::new());
    let huge = async {
        let text = "hello world ".repeat(300_000);
        let answer = post(
            &app.router,
            "/v1/chat/completions",
            json!({"messages": user(&text), "max_tokens": 1}),
        )
        .await;
        order.lock().unwrap().push("huge");
        answer
    };
    let health = async {
        let status = call(&app.router, Method::GET, "/health", None)
            .await
            .status();
        order.lock().unwrap().push("health");
        status
    };
    let ((status, v), health) = futures_util::future::join(huge, health).await;
    assert_eq!(health, StatusCode::OK);
    assert_eq!(*order.lock().unwrap(), ["health", "huge"]);
    // The error is the one it always was.
    assert_eq!(status, StatusCode::BAD_REQUEST, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error");
    assert_eq!(v["error"]["param"], "messages");
}
