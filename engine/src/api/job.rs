//! Handing a validated request to the scheduler, and what its response needs from then on.
//!
//! A [`Job`] is the request as the response writers see it: the event receiver (dropping it
//! cancels the request in the scheduler), the id and timestamps, and the OpenAI envelope every
//! response object of the request starts with, built here for all of them.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::validate::Common;
use super::{ApiError, AppState};
use crate::scheduler::{Event, GenerateRequest, SubmitError};

#[derive(Clone, Copy, PartialEq)]
pub enum Kind {
    Chat,
    Completion,
}

pub struct Job {
    pub kind: Kind,
    id: String,
    created: u64,
    model: String,
    pub stream: bool,
    pub include_usage: bool,
    pub rx: mpsc::UnboundedReceiver<Event>,
    pub keepalive: Duration,
}

impl Job {
    /// `id`, `object`, `created` and `model`, in OpenAI's order, for the caller to add `choices`
    /// (and `usage`) to. The same for every chunk of a stream, as OpenAI's clients expect.
    pub fn envelope(&self) -> Map<String, Value> {
        let object = match (self.kind, self.stream) {
            (Kind::Chat, false) => "chat.completion",
            (Kind::Chat, true) => "chat.completion.chunk",
            (Kind::Completion, _) => "text_completion",
        };
        let mut v = Map::new();
        v.insert("id".into(), self.id.clone().into());
        v.insert("object".into(), object.into());
        v.insert("created".into(), self.created.into());
        v.insert("model".into(), self.model.clone().into());
        v
    }
}

/// Seconds since the Unix epoch, OpenAI's `created`.
pub fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// An id like OpenAI's: `prefix` and 128 random bits in hex.
pub fn random_id(prefix: &str) -> String {
    use rand::RngExt;
    let n: u128 = rand::rng().random();
    format!("{prefix}{n:032x}")
}

pub fn submit(
    st: &AppState,
    kind: Kind,
    prompt: Vec<u32>,
    max_tokens: usize,
    common: Common,
    parse_tool_calls: bool,
) -> Result<Job, ApiError> {
    let (tx, rx) = mpsc::unbounded_channel();
    st.engine
        .submit(GenerateRequest {
            prompt,
            max_tokens,
            sampling: common.sampling,
            stop: common.stop,
            split_reasoning: kind == Kind::Chat,
            parse_tool_calls,
            events: tx,
            arrival: Instant::now(),
        })
        .map_err(|e| match e {
            SubmitError::QueueFull => ApiError::QueueFull,
            SubmitError::Stopped => ApiError::Unavailable("the engine is not running".into()),
            SubmitError::TooLarge { blocks, num_blocks } => ApiError::bad(
                "max_tokens",
                format!(
                    "the prompt and `max_tokens` need {blocks} KV-cache blocks, more than the \
                     {num_blocks} this server has. Please reduce the length of the input or \
                     `max_tokens`."
                ),
            ),
        })?;
    Ok(Job {
        kind,
        id: random_id(if kind == Kind::Chat {
            "chatcmpl-"
        } else {
            "cmpl-"
        }),
        created: now_secs(),
        model: st.model_name.clone(),
        stream: common.stream,
        include_usage: common.include_usage,
        rx,
        keepalive: st.keepalive,
    })
}
