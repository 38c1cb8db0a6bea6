//! The server-sent-events writer for streaming responses.
//!
//! Written byte for byte as OpenAI and vLLM write it (`data: {json}\n\n` per chunk, a final
//! `data: [DONE]\n\n`), because the gateway's filter parses this stream to count tokens. Chat
//! streams open with vLLM's role chunk; a failure midway is an OpenAI error object as the last
//! event before `[DONE]`.

use axum::body::Bytes;
use serde_json::{json, Value};

use super::job::{Job, Kind};
use super::response::{tool_call_json, usage_json};
use super::ApiError;
use crate::scheduler::{Event, FinishReason};

pub struct SseState {
    job: Job,
    started: bool,
    done: bool,
}

impl SseState {
    pub fn new(job: Job) -> Self {
        Self {
            job,
            started: false,
            done: false,
        }
    }

    fn chunk(&self, choice: Value) -> String {
        let mut v = self.job.envelope();
        v.insert("choices".into(), json!([choice]));
        if self.job.include_usage {
            v.insert("usage".into(), Value::Null);
        }
        data(&Value::Object(v))
    }

    fn delta(&self, reasoning: bool, text: &str, finish: Option<FinishReason>) -> String {
        let finish = finish.map(FinishReason::as_str);
        match self.job.kind {
            Kind::Chat => {
                let delta = if finish.is_some() {
                    json!({})
                } else if reasoning {
                    json!({"reasoning_content": text, "reasoning": text})
                } else {
                    json!({"content": text})
                };
                self.chunk(
                    json!({"index": 0, "delta": delta, "logprobs": null, "finish_reason": finish}),
                )
            }
            Kind::Completion => self.chunk(
                json!({"index": 0, "text": text, "logprobs": null, "finish_reason": finish}),
            ),
        }
    }

    /// The role chunk that opens a chat stream (vLLM sends it with empty content).
    fn start(&mut self, out: &mut String) {
        if !self.started {
            self.started = true;
            if self.job.kind == Kind::Chat {
                out.push_str(&self.chunk(json!({
                    "index": 0,
                    "delta": {"role": "assistant", "content": ""},
                    "logprobs": null,
                    "finish_reason": null,
                })));
            }
        }
    }

    /// Ends the stream with `last` as its final event.
    fn end(&mut self, out: &mut String, last: &Value) {
        out.push_str(&data(last));
        out.push_str("data: [DONE]\n\n");
        self.done = true;
    }

    /// The next piece of the body; `None` once `[DONE]` has been sent.
    pub async fn next(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let ev = if self.started {
            self.job.rx.recv().await
        } else {
            match tokio::time::timeout(self.job.keepalive, self.job.rx.recv()).await {
                Ok(ev) => ev,
                // Still queued or prefilling: an SSE comment keeps proxies from timing out.
                Err(_) => return Some(Bytes::from_static(b": keep-alive\n\n")),
            }
        };
        let mut out = String::new();
        match ev {
            Some(Event::Delta { reasoning, text }) => {
                self.start(&mut out);
                out.push_str(&self.delta(reasoning, &text, None));
            }
            Some(Event::ToolCall {
                index,
                name,
                arguments,
            }) => {
                // One delta per call, complete (OpenAI clients also accept incremental ones).
                self.start(&mut out);
                out.push_str(&self.chunk(json!({
                    "index": 0,
                    "delta": {"tool_calls": [tool_call_json(Some(index), name, arguments)]},
                    "logprobs": null,
                    "finish_reason": null,
                })));
            }
            Some(Event::Done { reason, usage }) => {
                self.start(&mut out);
                out.push_str(&self.delta(false, "", Some(reason)));
                if self.job.include_usage {
                    let mut v = self.job.envelope();
                    v.insert("choices".into(), json!([]));
                    v.insert("usage".into(), usage_json(&usage, self.job.kind));
                    out.push_str(&data(&Value::Object(v)));
                }
                out.push_str("data: [DONE]\n\n");
                self.done = true;
            }
            Some(Event::Error(e)) => self.end(&mut out, &ApiError::Internal(e).to_json()),
            None => self.end(
                &mut out,
                &ApiError::Unavailable("the engine stopped before finishing".into()).to_json(),
            ),
        }
        Some(Bytes::from(out))
    }
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}
