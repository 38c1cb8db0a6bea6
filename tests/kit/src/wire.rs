//! Server-sent events as OpenAI-compatible servers write them, for tests that build streams by hand.
//! The chunks carry only the fields the filter reads (servers add `id`, `object`, `created`, ...).

use serde_json::{json, Value};

/// The end of an OpenAI-style stream.
pub const DONE: &str = "data: [DONE]\n\n";

/// One SSE event per JSON payload, LF line ends.
pub fn event(data: &Value) -> String {
    format!("data: {data}\n\n")
}

/// A chat chunk with one choice: this `delta` and `finish_reason`.
pub fn delta_chunk(delta: Value, finish: Option<&str>) -> String {
    event(&json!({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}))
}

/// The role-only first chunk (not token-bearing).
pub fn role_chunk() -> String {
    delta_chunk(json!({"role": "assistant", "content": ""}), None)
}

/// A chunk with one content delta (token-bearing).
pub fn token(text: &str) -> String {
    delta_chunk(json!({ "content": text }), None)
}

/// The finish chunk.
pub fn finish() -> String {
    delta_chunk(json!({}), Some("stop"))
}

/// The include_usage chunk: empty `choices`, totals in `usage`.
pub fn usage_chunk(prompt: u64, completion: u64) -> String {
    event(&json!({
        "choices": [],
        "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
    }))
}

/// A named event (Responses API, Anthropic Messages): `event:` then `data:`.
pub fn named_event(name: &str, data: &str) -> String {
    format!("event: {name}\ndata: {data}\n\n")
}
