//! What accepted request values mean: ranges, supported options, required fields, the prompt and
//! whether it fits the context.
//!
//! Runs on the typed views of the `request` module and checks in a fixed order, so the error a
//! request gets does not depend on the order of its keys once every value has the right type.
//! Messages are vLLM's and OpenAI's where they exist, and name the field in `param`.

use serde_json::{Map, Value};

use super::fields::{Object, Passthrough, Prompt, Seed, TextOr};
use super::request::{
    view, ChatView, CommonView, CompletionView, MaxTokensView, MessageFields, AUTO_OR_NONE,
    ONLY_TEXT_FORMAT, PART_NEEDS_TYPE,
};
use super::{ApiError, AppState};
use crate::sampling::SamplingParams;

/// Parameters shared by both endpoints.
pub struct Common {
    pub stream: bool,
    pub include_usage: bool,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingParams,
    pub stop: Vec<String>,
}

/// A chat request's prompt, ready for the scheduler.
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// Parse Qwen3's `<tool_call>` blocks out of the output (tools were offered).
    pub parse_tool_calls: bool,
}

fn within(key: &str, v: Option<f64>, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match v {
        Some(x) if !(min..=max).contains(&x) => Err(ApiError::bad(
            key,
            format!("`{key}` must be between {min} and {max}, got {x}"),
        )),
        v => Ok(v),
    }
}

fn at_least(key: &str, v: Option<i64>, min: i64) -> Result<Option<i64>, ApiError> {
    match v {
        Some(x) if x < min => Err(ApiError::bad(
            key,
            format!("`{key}` must be at least {min}, got {x}"),
        )),
        v => Ok(v),
    }
}

pub fn common(body: &Value, st: &AppState) -> Result<Common, ApiError> {
    let v: CommonView = view(body)?;
    if let Some(m) = v.model {
        if m != st.model_name {
            return Err(ApiError::ModelNotFound(m));
        }
    }
    let stream = v.stream.unwrap_or(false);
    let mut include_usage = false;
    if let Some(Object(so)) = v.stream_options {
        if !stream {
            return Err(ApiError::bad(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ));
        }
        include_usage = so.include_usage.unwrap_or(false);
    }
    if let Some(n) = at_least("n", v.n, 1)? {
        if n != 1 {
            return Err(ApiError::bad(
                "n",
                format!("`n` must be 1: this server returns one choice per request (got {n})"),
            ));
        }
    }
    if let Some(b) = at_least("best_of", v.best_of, 1)? {
        if b != 1 {
            return Err(ApiError::bad("best_of", "`best_of` must be 1"));
        }
    }
    if v.logprobs == Some(true) {
        return Err(ApiError::bad("logprobs", "`logprobs` is not supported"));
    }
    if let Some(Object(rf)) = v.response_format {
        if rf.kind.as_deref() != Some("text") {
            return Err(ApiError::bad("response_format", ONLY_TEXT_FORMAT));
        }
    }
    let max_tokens = match at_least("max_completion_tokens", v.max_completion_tokens, 1)? {
        Some(x) => Some(x),
        None => at_least("max_tokens", view::<MaxTokensView>(body)?.max_tokens, 1)?,
    };
    let mut sampling = SamplingParams::default();
    if let Some(t) = within("temperature", v.temperature, 0.0, 2.0)? {
        sampling.temperature = t as f32;
    }
    if let Some(p) = within("top_p", v.top_p, 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::bad("top_p", "`top_p` must be greater than 0"));
        }
        sampling.top_p = p as f32;
    }
    if let Some(k) = v.top_k {
        if k < -1 {
            return Err(ApiError::bad(
                "top_k",
                format!("`top_k` must be -1 (disabled) or at least 0, got {k}"),
            ));
        }
        sampling.top_k = k.max(0) as usize;
    }
    if let Some(Seed(s)) = v.seed {
        sampling.seed = Some(s);
    }
    if let Some(p) = within("presence_penalty", v.presence_penalty, -2.0, 2.0)? {
        sampling.presence_penalty = p as f32;
    }
    if let Some(p) = within("frequency_penalty", v.frequency_penalty, -2.0, 2.0)? {
        sampling.frequency_penalty = p as f32;
    }
    let stop = match v.stop {
        None => Vec::new(),
        Some(TextOr::Text(s)) => vec![s],
        Some(TextOr::List(all)) => all,
    };
    if let Some(i) = stop.iter().position(String::is_empty) {
        return Err(ApiError::bad(
            format!("stop[{i}]"),
            "stop strings must not be empty",
        ));
    }
    Ok(Common {
        stream,
        include_usage,
        max_tokens: max_tokens.map(|x| x as usize),
        sampling,
        stop,
    })
}

/// Renders and tokenizes a chat request's prompt with the model's chat template.
pub fn chat(body: &Value, st: &AppState) -> Result<ChatPrompt, ApiError> {
    let v: ChatView = view(body)?;
    let messages = normalize_messages(v.messages)?;
    let (kwargs_thinking, mut kwargs) = match v.chat_template_kwargs {
        Some(k) => (k.typed.enable_thinking, k.members),
        None => (None, Map::new()),
    };
    if let (None, Some(b)) = (kwargs_thinking, v.enable_thinking) {
        kwargs.insert("enable_thinking".into(), Value::Bool(b));
    }
    let tools = v.tools.map(Value::Array);
    // Tool calls are parsed out of the output (Qwen3 writes Hermes-style `<tool_call>` blocks)
    // when tools are offered, unless `tool_choice` is "none".
    let offers_tools = tools
        .as_ref()
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let parse_tool_calls = match v.tool_choice.as_deref() {
        None | Some("auto") => offers_tools,
        Some("none") => false,
        Some(_) => return Err(ApiError::bad("tool_choice", AUTO_OR_NONE)),
    };
    let add_generation_prompt = v.add_generation_prompt.unwrap_or(true);
    let prompt = st
        .tokenizer
        .apply_chat_template(&messages, tools.as_ref(), add_generation_prompt, &kwargs)
        .map_err(|e| ApiError::bad("messages", format!("{e}")))?;
    let ids = st
        .tokenizer
        .encode(&prompt)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    Ok(ChatPrompt {
        ids,
        parse_tool_calls,
    })
}

/// Checks roles and content and turns content parts into plain strings for the template; every
/// other member of a message reaches the template as sent.
fn normalize_messages(
    messages: Option<Vec<Passthrough<MessageFields>>>,
) -> Result<Value, ApiError> {
    let messages = messages.ok_or_else(|| ApiError::bad("messages", "`messages` is required"))?;
    if messages.is_empty() {
        return Err(ApiError::bad("messages", "`messages` must not be empty"));
    }
    let mut out = Vec::with_capacity(messages.len());
    for (i, m) in messages.into_iter().enumerate() {
        let p = format!("messages[{i}]");
        let Passthrough { typed, mut members } = m;
        let role = typed
            .role
            .ok_or_else(|| ApiError::bad(format!("{p}.role"), format!("`{p}.role` is required")))?;
        let role = match role.as_str() {
            "system" | "user" | "assistant" | "tool" => role,
            // OpenAI's newer name for system instructions.
            "developer" => "system".to_owned(),
            other => {
                return Err(ApiError::bad(
                    format!("{p}.role"),
                    format!("`{p}.role` must be one of system, developer, user, assistant, tool (got {other:?})"),
                ))
            }
        };
        let content = match typed.content {
            Some(TextOr::Text(s)) => s,
            None if role == "assistant" => String::new(),
            None => {
                return Err(ApiError::bad(
                    format!("{p}.content"),
                    format!("`{p}.content` is required"),
                ))
            }
            Some(TextOr::List(parts)) => {
                let mut s = String::new();
                for (j, Object(part)) in parts.iter().enumerate() {
                    let pp = format!("{p}.content[{j}]");
                    match part.kind.as_deref() {
                        Some("text") => s.push_str(
                            part.text.as_ref().and_then(Value::as_str).ok_or_else(|| {
                                ApiError::bad(
                                    format!("{pp}.text"),
                                    "text parts need a string `text`",
                                )
                            })?,
                        ),
                        Some(t) => {
                            return Err(ApiError::bad(
                                format!("{pp}.type"),
                                format!("content part type {t:?} is not supported (text only)"),
                            ))
                        }
                        None => return Err(ApiError::bad(format!("{pp}.type"), PART_NEEDS_TYPE)),
                    }
                }
                s
            }
        };
        members.insert("role".into(), Value::String(role));
        members.insert("content".into(), Value::String(content));
        out.push(Value::Object(members));
    }
    Ok(Value::Array(out))
}

/// Tokenizes a legacy completions request's prompt.
pub fn completion(body: &Value, st: &AppState) -> Result<Vec<u32>, ApiError> {
    let v: CompletionView = view(body)?;
    if v.echo == Some(true) {
        return Err(ApiError::bad("echo", "`echo` is not supported"));
    }
    if v.suffix.is_some() {
        return Err(ApiError::bad("suffix", "`suffix` is not supported"));
    }
    let vocab = st.tokenizer.vocab_size() as u64;
    match v.prompt {
        None => Err(ApiError::bad("prompt", "`prompt` is required")),
        Some(Prompt::Text(s)) => st
            .tokenizer
            .encode(&s)
            .map_err(|e| ApiError::Internal(e.to_string())),
        Some(Prompt::Ids { param, ids }) => ids
            .iter()
            .enumerate()
            .map(|(i, id)| match id {
                Some(t) if *t < vocab => Ok(*t as u32),
                _ => Err(ApiError::bad(
                    format!("{param}[{i}]"),
                    format!("token ids must be integers below {vocab}"),
                )),
            })
            .collect(),
        Some(Prompt::Batch) => Err(ApiError::bad(
            "prompt",
            "`prompt` must be a string, one string, or token ids (batches are not supported)",
        )),
        Some(Prompt::Other) => Err(ApiError::bad("prompt", "`prompt` must be a string")),
    }
}

/// Checks the prompt against the context and resolves `max_tokens` like vLLM.
pub fn fit_context(
    st: &AppState,
    prompt_len: usize,
    max_tokens: Option<usize>,
    prompt_field: &str,
) -> Result<usize, ApiError> {
    let max = st.max_model_len;
    if prompt_len == 0 {
        return Err(ApiError::bad(prompt_field, "the prompt is empty"));
    }
    if prompt_len >= max {
        return Err(ApiError::bad(
            prompt_field,
            format!(
                "This model's maximum context length is {max} tokens. However, your request has \
                 {prompt_len} input tokens. Please reduce the length of `{prompt_field}`."
            ),
        ));
    }
    match max_tokens {
        None => Ok(max - prompt_len),
        Some(m) if prompt_len + m > max => Err(ApiError::bad(
            "max_tokens",
            format!(
                "This model's maximum context length is {max} tokens. However, you requested \
                 {} tokens ({prompt_len} in the input, {m} in the completion). Please reduce the \
                 length of the input or `max_tokens`.",
                prompt_len + m
            ),
        )),
        Some(m) => Ok(m),
    }
}
