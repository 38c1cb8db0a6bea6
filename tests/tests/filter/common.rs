//! Small builders shared by the suites.

use gateway_tests::Gateway;

pub const SSE: &[(&str, &str)] = &[(":status", "200"), ("content-type", "text/event-stream")];
pub const JSON: &[(&str, &str)] = &[(":status", "200"), ("content-type", "application/json")];
pub const CHAT: &str = "/v1/chat/completions";

/// A gateway with the default configuration on one worker.
pub fn gateway() -> Gateway {
    Gateway::new("{}").unwrap_or_else(|e| panic!("{e:#}"))
}

/// A chat request body.
pub fn chat_request(model: &str, stream: bool) -> String {
    serde_json::json!({
        "model": model,
        "stream": stream,
        "messages": [{"role": "user", "content": "hi"}],
    })
    .to_string()
}

/// One SSE event per JSON payload, LF line ends.
pub fn event(data: &serde_json::Value) -> String {
    format!("data: {data}\n\n")
}

/// The role-only first chunk (not token-bearing).
pub fn role_chunk() -> String {
    event(
        &serde_json::json!({"choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}),
    )
}

/// A chunk with one content delta (token-bearing).
pub fn token(text: &str) -> String {
    event(
        &serde_json::json!({"choices": [{"index": 0, "delta": {"content": text}, "finish_reason": null}]}),
    )
}

/// The finish chunk.
pub fn finish() -> String {
    event(&serde_json::json!({"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}))
}

/// The include_usage chunk: empty `choices`, totals in `usage`.
pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    event(&serde_json::json!({
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }))
}

pub const DONE: &str = "data: [DONE]\n\n";

/// Labels of `llm_requests_total` for a chat request.
pub fn request_labels<'a>(
    model: &'a str,
    streaming: &'a str,
    status_class: &'a str,
    outcome: &'a str,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("model", model),
        ("api", "chat_completions"),
        ("streaming", streaming),
        ("status_class", status_class),
        ("outcome", outcome),
    ]
}
