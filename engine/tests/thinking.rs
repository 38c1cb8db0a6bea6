//! Thinking mode on random weights: the tiny random-weight preset, steered by the sampling
//! constraint, answers a thinking request as Qwen3 does (`<think>`, seed-drawn reasoning,
//! `</think>`, answer), and `usage` counts the reasoning the client received. The real tokenizer and
//! chat template make the prompts. (That weights loaded with `--model` are not steered is in
//! `tests/snapshot.rs`, which writes snapshots.)

mod common;

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::Router;
use clap::Parser;
use common::post_chat;
use qwen3_engine::chat::{locate_tokenizer_dir, ChatTokenizer};
use qwen3_engine::sampling::{reasoning_len, REASONING_MIN};
use qwen3_engine::scheduler::SchedulerConfig;
use qwen3_engine::scripted::ScriptedBackend;
use qwen3_engine::server::assemble;
use serde_json::{json, Value};

/// What the two servers are called (the preset's default name, and the scripted one's).
const PRESET: &str = "qwen3-tiny";
const SCRIPTED: &str = "qwen3-test";

/// The random tiny preset, built once (as the binary builds it without `--model`).
async fn preset() -> Router {
    static ROUTER: OnceLock<Router> = OnceLock::new();
    if let Some(r) = ROUTER.get() {
        return r.clone();
    }
    let args = qwen3_engine::server::Args::parse_from(["qwen3-engine", "--max-model-len", "1024"]);
    let built = tokio::task::spawn_blocking(move || qwen3_engine::server::build(&args))
        .await
        .unwrap()
        .unwrap();
    ROUTER.get_or_init(|| built.router).clone()
}

fn tokenizer() -> Arc<ChatTokenizer> {
    static TOK: OnceLock<Arc<ChatTokenizer>> = OnceLock::new();
    TOK.get_or_init(|| {
        let dir = locate_tokenizer_dir(None).unwrap_or_else(|e| panic!("{e}"));
        Arc::new(ChatTokenizer::from_dir(&dir).unwrap())
    })
    .clone()
}

/// A weight-free server whose model would always say " la": what it reasons is visible token by token.
fn scripted(steer_thinking: bool) -> Router {
    let t = tokenizer();
    let backend = ScriptedBackend::new(Vec::new(), t.encode(" la").unwrap()[0], 151_936);
    let cfg = SchedulerConfig {
        max_num_seqs: 4,
        max_queue: 8,
        max_model_len: 512,
        kv_cache_tokens: 4096,
        block_size: 16,
        max_num_batched_tokens: 512,
        steer_thinking,
    };
    assemble(backend, t, SCRIPTED.into(), cfg, Duration::from_secs(1))
        .unwrap()
        .router
}

/// What a streaming client sees: reasoning and content deltas in order, finish reason, usage.
#[derive(Debug)]
struct Stream {
    /// (is reasoning, text) per delta, in arrival order.
    deltas: Vec<(bool, String)>,
    finish: String,
    usage: Value,
}

impl Stream {
    fn reasoning(&self) -> String {
        self.deltas.iter().filter(|d| d.0).map(|d| &*d.1).collect()
    }
    fn content(&self) -> String {
        self.deltas.iter().filter(|d| !d.0).map(|d| &*d.1).collect()
    }
    fn reasoning_tokens(&self) -> u64 {
        self.usage["completion_tokens_details"]["reasoning_tokens"]
            .as_u64()
            .unwrap()
    }
    fn completion_tokens(&self) -> u64 {
        self.usage["completion_tokens"].as_u64().unwrap()
    }
}

async fn stream_chat(router: &Router, model: &str, extra: Value) -> Stream {
    let mut body = json!({
        "model": model,
        "messages": [{"role": "user", "content": "Why is the sky blue?"}],
        "stream": true, "stream_options": {"include_usage": true},
    });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let text = post_chat(router, &body).await;
    assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
    let mut s = Stream {
        deltas: Vec::new(),
        finish: String::new(),
        usage: Value::Null,
    };
    for event in text.split("\n\n").filter(|e| e.starts_with("data: {")) {
        let v: Value = serde_json::from_str(&event["data: ".len()..]).unwrap();
        if let Some(choice) = v["choices"].get(0) {
            let d = &choice["delta"];
            // (The first chunk carries the role with an empty content.)
            if let Some(r) = d["reasoning_content"].as_str().filter(|r| !r.is_empty()) {
                s.deltas.push((true, r.to_owned()));
            }
            if let Some(c) = d["content"].as_str().filter(|c| !c.is_empty()) {
                s.deltas.push((false, c.to_owned()));
            }
            if let Some(f) = choice["finish_reason"].as_str() {
                s.finish = f.to_owned();
            }
        }
        if !v["usage"].is_null() {
            s.usage = v["usage"].clone();
        }
    }
    s
}

#[tokio::test]
async fn the_random_preset_reasons_then_answers() {
    let r = preset().await;
    let s = stream_chat(
        &r,
        PRESET,
        json!({"seed": 7, "max_tokens": 200, "enable_thinking": true}),
    )
    .await;
    let n = reasoning_len(Some(7), 200);
    assert_eq!(s.reasoning_tokens(), n as u64, "{s:?}");
    assert!(s.reasoning_tokens() >= REASONING_MIN as u64);
    assert!(!s.reasoning().is_empty(), "{s:?}");
    assert!(!s.content().is_empty(), "an answer follows: {s:?}");
    // Every reasoning delta comes before the first content delta.
    let first_content = s.deltas.iter().position(|d| !d.0).unwrap();
    assert!(first_content > 0);
    assert!(s.deltas[first_content..].iter().all(|d| !d.0), "{s:?}");
    assert!(!s.content().contains("think>"), "{s:?}");
    // `<think>`, the reasoning, `</think>`, then at least one answer token.
    assert!(s.completion_tokens() > n as u64 + 2, "{s:?}");
}

#[tokio::test]
async fn the_seed_decides_the_reasoning_length() {
    let r = preset().await;
    let ask = |seed: u64| {
        let r = r.clone();
        async move {
            stream_chat(
                &r,
                PRESET,
                json!({"seed": seed, "max_tokens": 160, "chat_template_kwargs": {"enable_thinking": true}}),
            )
            .await
        }
    };
    // The length, not the text: other tests' requests share the model's batches here, and a
    // different batch can move a logit by a rounding error and so a sampled token.
    let a = ask(3).await;
    let b = ask(3).await;
    assert_eq!(a.reasoning_tokens(), b.reasoning_tokens());
    let mut lengths = std::collections::BTreeSet::new();
    for seed in [1, 2, 3, 4] {
        let s = ask(seed).await;
        assert_eq!(s.reasoning_tokens(), reasoning_len(Some(seed), 160) as u64);
        lengths.insert(s.reasoning_tokens());
    }
    assert!(
        lengths.len() > 1,
        "seeds 1-4 all reasoned {lengths:?} tokens"
    );
}

#[tokio::test]
async fn without_a_seed_thinking_leaves_room_for_the_answer() {
    // As the demo asks: thinking on, no seed, a small budget.
    let r = preset().await;
    let s = stream_chat(&r, PRESET, json!({"max_tokens": 48})).await;
    assert!((1..=24).contains(&s.reasoning_tokens()), "{s:?}");
    assert!(!s.content().is_empty(), "{s:?}");
}

#[tokio::test]
async fn thinking_off_has_no_reasoning() {
    let r = preset().await;
    for seed in [1, 2] {
        let s = stream_chat(
            &r,
            PRESET,
            json!({"seed": seed, "max_tokens": 40, "enable_thinking": false}),
        )
        .await;
        assert_eq!(s.reasoning_tokens(), 0, "{s:?}");
        assert!(s.deltas.iter().all(|d| !d.0), "{s:?}");
        assert!(!s.content().is_empty());
        assert!(!s.content().contains("think>"), "{s:?}");
    }
}

#[tokio::test]
async fn a_small_max_tokens_ends_inside_the_reasoning() {
    let r = preset().await;
    let max_tokens = REASONING_MIN - 2;
    let s = stream_chat(
        &r,
        PRESET,
        json!({"seed": 11, "max_tokens": max_tokens, "enable_thinking": true}),
    )
    .await;
    assert_eq!(s.finish, "length", "{s:?}");
    assert_eq!(s.completion_tokens(), max_tokens as u64);
    // All but `<think>` were reasoning; there is no answer.
    assert_eq!(s.reasoning_tokens(), max_tokens as u64 - 1, "{s:?}");
    assert!(s.content().is_empty(), "{s:?}");
}

#[tokio::test]
async fn reasoning_tokens_count_exactly_what_was_sent() {
    // The scripted model says " la" at every step, one token each, so the reasoning text shows how
    // many tokens were sent as reasoning.
    let r = scripted(true);
    let s = stream_chat(&r, SCRIPTED, json!({"seed": 5, "max_tokens": 300})).await;
    let n = reasoning_len(Some(5), 300);
    assert_eq!(s.reasoning(), " la".repeat(n), "{s:?}");
    assert_eq!(s.reasoning_tokens(), n as u64);
    // The model never stops by itself, so the rest is answer up to max_tokens.
    assert_eq!(s.finish, "length");
    assert_eq!(s.content(), " la".repeat(300 - n - 2), "{s:?}");
}

#[tokio::test]
async fn without_steering_the_model_is_sampled_as_it_is() {
    let s = stream_chat(
        &scripted(false),
        SCRIPTED,
        json!({"seed": 5, "max_tokens": 10}),
    )
    .await;
    assert_eq!(s.reasoning_tokens(), 0);
    assert_eq!(s.content(), " la".repeat(10));
}
