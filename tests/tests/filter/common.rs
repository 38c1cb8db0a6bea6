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

pub use test_kit::wire::{event, finish, role_chunk, token, usage_chunk, DONE};

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
