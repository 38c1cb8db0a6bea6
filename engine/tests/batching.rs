//! The real model through the real scheduler: concurrent greedy requests, batched into shared
//! decode steps at different positions and prefilled in small chunks next to decoding sequences,
//! must produce exactly what each produces alone.

mod common;

use clap::Parser;
use common::post_chat_json;
use serde_json::{json, Value};

async fn chat(router: &axum::Router, text: &str) -> Value {
    let body = json!({
        "messages": [{"role": "user", "content": text}],
        "max_tokens": 12, "temperature": 0, "enable_thinking": false
    });
    post_chat_json(router, &body).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batched_greedy_generation_equals_one_at_a_time() {
    let args = qwen3_engine::server::Args::parse_from([
        "qwen3-engine",
        "--max-num-seqs",
        "4",
        // Small chunks: long prompts prefill over several steps while others decode.
        "--max-num-batched-tokens",
        "8",
    ]);
    let built = tokio::task::spawn_blocking(move || qwen3_engine::server::build(&args))
        .await
        .unwrap()
        .unwrap();
    let prompts = [
        "Hi",
        "Tell me a long story about a dragon and a knight.",
        "What is 2 + 2?",
        "Summarise the plot of a novel you like in one sentence, please.",
    ];
    let mut alone = Vec::new();
    for p in prompts {
        alone.push(chat(&built.router, p).await);
    }
    let together =
        futures_util::future::join_all(prompts.iter().map(|p| chat(&built.router, p))).await;
    for (a, t) in alone.iter().zip(&together) {
        assert_eq!(a["choices"][0]["message"], t["choices"][0]["message"]);
        assert_eq!(a["usage"], t["usage"]);
    }
    // Different prompts gave different outputs (the comparison is not vacuous).
    assert_ne!(
        alone[0]["choices"][0]["message"]["content"],
        alone[1]["choices"][0]["message"]["content"]
    );
}
