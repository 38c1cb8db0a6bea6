//! Non-streaming responses, and the `usage` and tool-call objects that streams share.
//!
//! The response is written once the scheduler reports `Done`, so `usage` holds the exact counts of
//! what was generated (the gateway checks its own numbers against them).

use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::job::{random_id, Job, Kind};
use super::ApiError;
use crate::scheduler::{Event, Usage};

pub fn usage_json(u: &Usage, kind: Kind) -> Value {
    let mut v = json!({
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.prompt_tokens + u.completion_tokens,
    });
    if kind == Kind::Chat {
        v["completion_tokens_details"] = json!({"reasoning_tokens": u.reasoning_tokens});
    }
    v
}

/// One tool call as OpenAI writes it; stream deltas carry the call's `index` first.
pub fn tool_call_json(index: Option<usize>, name: String, arguments: String) -> Value {
    let mut v = Map::new();
    if let Some(i) = index {
        v.insert("index".into(), i.into());
    }
    v.insert("id".into(), random_id("chatcmpl-tool-").into());
    v.insert("type".into(), "function".into());
    v.insert(
        "function".into(),
        json!({"name": name, "arguments": arguments}),
    );
    Value::Object(v)
}

/// Waits for the whole generation. Dropping this future (client gone) drops the receiver, which
/// cancels the request in the scheduler.
pub async fn collect(mut job: Job) -> Response {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    loop {
        match job.rx.recv().await {
            Some(Event::ToolCall {
                name, arguments, ..
            }) => tool_calls.push(tool_call_json(None, name, arguments)),
            Some(Event::Delta {
                reasoning: true,
                text,
            }) => reasoning.push_str(&text),
            Some(Event::Delta {
                reasoning: false,
                text,
            }) => content.push_str(&text),
            Some(Event::Done { reason, usage }) => {
                let choice = match job.kind {
                    Kind::Chat => {
                        let r = (!reasoning.is_empty()).then_some(reasoning);
                        // With tool calls and no text, content is null as in OpenAI's responses.
                        let content =
                            (!content.is_empty() || tool_calls.is_empty()).then_some(content);
                        json!({
                            "index": 0,
                            "message": {
                                "role": "assistant",
                                "content": content,
                                "reasoning_content": r,
                                "reasoning": r,
                                "tool_calls": tool_calls,
                            },
                            "logprobs": null,
                            "finish_reason": reason.as_str(),
                            "stop_reason": null,
                        })
                    }
                    Kind::Completion => json!({
                        "index": 0,
                        "text": content,
                        "logprobs": null,
                        "finish_reason": reason.as_str(),
                        "stop_reason": null,
                    }),
                };
                let mut body = job.envelope();
                body.insert("choices".into(), json!([choice]));
                body.insert("usage".into(), usage_json(&usage, job.kind));
                return axum::Json(Value::Object(body)).into_response();
            }
            Some(Event::Error(e)) => return ApiError::Internal(e).into_response(),
            None => {
                return ApiError::Unavailable("the engine stopped before finishing".into())
                    .into_response()
            }
        }
    }
}
