//! The OpenAI-compatible HTTP API.
//!
//! Request bodies are parsed by hand from JSON so that every rejection names the offending field
//! (`messages[1].role`, `temperature`, ...) in OpenAI's error shape. Streaming responses are
//! written byte for byte as OpenAI and vLLM write them (`data: {json}\n\n`, final
//! `data: [DONE]\n\n`), because the gateway's filter parses that stream to count tokens.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::chat::ChatTokenizer;
use crate::metrics::MetricsRegistry;
use crate::sampling::SamplingParams;
use crate::scheduler::{EngineHandle, Event, FinishReason, GenerateRequest, SubmitError, Usage};

/// Everything the handlers share.
pub struct AppState {
    pub engine: EngineHandle,
    pub tokenizer: Arc<ChatTokenizer>,
    pub model_name: String,
    pub max_model_len: usize,
    pub metrics: Arc<MetricsRegistry>,
    /// Interval of SSE comment lines sent while a streaming request waits for its first token.
    pub keepalive: Duration,
    pub created: u64,
}

/// One error type for the whole API, with one HTTP mapping.
#[derive(Debug, Clone, PartialEq)]
pub enum ApiError {
    BadRequest {
        message: String,
        param: Option<String>,
    },
    ModelNotFound(String),
    NotFound(String),
    MethodNotAllowed,
    PayloadTooLarge,
    QueueFull,
    Unavailable(String),
    Internal(String),
}

impl ApiError {
    pub fn bad(param: impl Into<String>, message: impl Into<String>) -> Self {
        ApiError::BadRequest {
            message: message.into(),
            param: Some(param.into()),
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            ApiError::BadRequest { .. } => StatusCode::BAD_REQUEST,
            ApiError::ModelNotFound(_) | ApiError::NotFound(_) => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ApiError::QueueFull => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// OpenAI's `error.type`.
    pub fn error_type(&self) -> &'static str {
        match self {
            ApiError::BadRequest { .. }
            | ApiError::ModelNotFound(_)
            | ApiError::NotFound(_)
            | ApiError::MethodNotAllowed
            | ApiError::PayloadTooLarge => "invalid_request_error",
            ApiError::QueueFull => "rate_limit_error",
            ApiError::Unavailable(_) | ApiError::Internal(_) => "server_error",
        }
    }

    fn code(&self) -> Option<&'static str> {
        match self {
            ApiError::ModelNotFound(_) => Some("model_not_found"),
            ApiError::NotFound(_) => Some("not_found"),
            ApiError::MethodNotAllowed => Some("method_not_allowed"),
            ApiError::PayloadTooLarge => Some("payload_too_large"),
            ApiError::QueueFull => Some("queue_full"),
            ApiError::Unavailable(_) => Some("service_unavailable"),
            ApiError::BadRequest { .. } | ApiError::Internal(_) => None,
        }
    }

    pub fn to_json(&self) -> Value {
        let (message, param) = match self {
            ApiError::BadRequest { message, param } => (message.clone(), param.clone()),
            ApiError::ModelNotFound(m) => (
                format!("The model `{m}` does not exist."),
                Some("model".to_owned()),
            ),
            ApiError::NotFound(p) => (format!("Unknown path: {p}"), None),
            ApiError::MethodNotAllowed => ("Method not allowed".to_owned(), None),
            ApiError::PayloadTooLarge => (
                format!("The request body is larger than {} bytes", MAX_BODY_BYTES),
                None,
            ),
            ApiError::QueueFull => (
                "The server's request queue is full; retry later.".to_owned(),
                None,
            ),
            ApiError::Unavailable(m) | ApiError::Internal(m) => (m.clone(), None),
        };
        json!({"error": {"message": message, "type": self.error_type(), "param": param, "code": self.code()}})
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), axum::Json(self.to_json())).into_response();
        if matches!(self, ApiError::QueueFull | ApiError::Unavailable(_)) {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, header::HeaderValue::from_static("1"));
        }
        resp
    }
}

/// Largest accepted request body (axum's default of 2 MB is small for long chats).
pub const MAX_BODY_BYTES: usize = 16 * 1024 * 1024;

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/models", get(models))
        .route("/health", get(health))
        .route("/metrics", get(metrics))
        .fallback(|uri: axum::http::Uri| async move { ApiError::NotFound(uri.path().to_owned()) })
        .method_not_allowed_fallback(|| async { ApiError::MethodNotAllowed })
        .layer(axum::extract::DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

async fn health(State(st): State<Arc<AppState>>) -> Response {
    if st.engine.is_alive() {
        StatusCode::OK.into_response()
    } else {
        ApiError::Unavailable("the scheduler has stopped".into()).into_response()
    }
}

async fn metrics(State(st): State<Arc<AppState>>) -> Response {
    (
        [(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)],
        st.metrics.encode(),
    )
        .into_response()
}

async fn models(State(st): State<Arc<AppState>>) -> Response {
    axum::Json(json!({
        "object": "list",
        "data": [{
            "id": st.model_name,
            "object": "model",
            "created": st.created,
            "owned_by": "qwen3-engine",
            "root": st.model_name,
            "parent": null,
            "max_model_len": st.max_model_len,
        }]
    }))
    .into_response()
}

// ---------------------------------------------------------------------------------------------
// Field parsing. `null` counts as absent, as in the OpenAI SDKs.

fn field<'a>(o: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    o.get(key).filter(|v| !v.is_null())
}

fn opt_bool(o: &Map<String, Value>, key: &str, name: &str) -> Result<Option<bool>, ApiError> {
    match field(o, key) {
        None => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(_) => Err(ApiError::bad(name, format!("`{name}` must be a boolean"))),
    }
}

fn opt_num(o: &Map<String, Value>, key: &str, min: f64, max: f64) -> Result<Option<f64>, ApiError> {
    match field(o, key) {
        None => Ok(None),
        Some(v) => {
            let x = v
                .as_f64()
                .ok_or_else(|| ApiError::bad(key, format!("`{key}` must be a number")))?;
            if !(min..=max).contains(&x) {
                return Err(ApiError::bad(
                    key,
                    format!("`{key}` must be between {min} and {max}, got {x}"),
                ));
            }
            Ok(Some(x))
        }
    }
}

fn opt_int(o: &Map<String, Value>, key: &str, min: i64) -> Result<Option<i64>, ApiError> {
    match field(o, key) {
        None => Ok(None),
        Some(v) => {
            let x = v
                .as_i64()
                .ok_or_else(|| ApiError::bad(key, format!("`{key}` must be an integer")))?;
            if x < min {
                return Err(ApiError::bad(
                    key,
                    format!("`{key}` must be at least {min}, got {x}"),
                ));
            }
            Ok(Some(x))
        }
    }
}

fn parse_body(body: &Bytes) -> Result<Map<String, Value>, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        message: format!("The request body is not valid JSON: {e}"),
        param: None,
    })?;
    match v {
        Value::Object(o) => Ok(o),
        _ => Err(ApiError::BadRequest {
            message: "The request body must be a JSON object".into(),
            param: None,
        }),
    }
}

/// Parameters shared by both endpoints.
struct Common {
    stream: bool,
    include_usage: bool,
    max_tokens: Option<usize>,
    sampling: SamplingParams,
    stop: Vec<String>,
}

fn parse_common(o: &Map<String, Value>, st: &AppState) -> Result<Common, ApiError> {
    if let Some(m) = field(o, "model") {
        let m = m
            .as_str()
            .ok_or_else(|| ApiError::bad("model", "`model` must be a string"))?;
        if m != st.model_name {
            return Err(ApiError::ModelNotFound(m.to_owned()));
        }
    }
    let stream = opt_bool(o, "stream", "stream")?.unwrap_or(false);
    let mut include_usage = false;
    if let Some(so) = field(o, "stream_options") {
        let so = so
            .as_object()
            .ok_or_else(|| ApiError::bad("stream_options", "`stream_options` must be an object"))?;
        if !stream {
            return Err(ApiError::bad(
                "stream_options",
                "`stream_options` is only allowed when `stream` is true",
            ));
        }
        include_usage =
            opt_bool(so, "include_usage", "stream_options.include_usage")?.unwrap_or(false);
    }
    if let Some(n) = opt_int(o, "n", 1)? {
        if n != 1 {
            return Err(ApiError::bad(
                "n",
                format!("`n` must be 1: this server returns one choice per request (got {n})"),
            ));
        }
    }
    if let Some(b) = opt_int(o, "best_of", 1)? {
        if b != 1 {
            return Err(ApiError::bad("best_of", "`best_of` must be 1"));
        }
    }
    if opt_bool(o, "logprobs", "logprobs")? == Some(true)
        || matches!(field(o, "logprobs"), Some(Value::Number(_)))
    {
        return Err(ApiError::bad("logprobs", "`logprobs` is not supported"));
    }
    if let Some(rf) = field(o, "response_format") {
        if rf.get("type").and_then(Value::as_str) != Some("text") {
            return Err(ApiError::bad(
                "response_format",
                "only `response_format: {\"type\": \"text\"}` is supported",
            ));
        }
    }
    let max_tokens = match opt_int(o, "max_completion_tokens", 1)? {
        Some(x) => Some(x as usize),
        None => opt_int(o, "max_tokens", 1)?.map(|x| x as usize),
    };
    let mut sampling = SamplingParams::default();
    if let Some(t) = opt_num(o, "temperature", 0.0, 2.0)? {
        sampling.temperature = t as f32;
    }
    if let Some(p) = opt_num(o, "top_p", 0.0, 1.0)? {
        if p <= 0.0 {
            return Err(ApiError::bad("top_p", "`top_p` must be greater than 0"));
        }
        sampling.top_p = p as f32;
    }
    if let Some(k) = field(o, "top_k") {
        let k = k
            .as_i64()
            .ok_or_else(|| ApiError::bad("top_k", "`top_k` must be an integer"))?;
        if k < -1 {
            return Err(ApiError::bad(
                "top_k",
                format!("`top_k` must be -1 (disabled) or at least 0, got {k}"),
            ));
        }
        sampling.top_k = k.max(0) as usize;
    }
    if let Some(s) = field(o, "seed") {
        let s = s
            .as_i64()
            .or_else(|| s.as_u64().map(|u| u as i64))
            .ok_or_else(|| ApiError::bad("seed", "`seed` must be an integer"))?;
        sampling.seed = Some(s as u64);
    }
    if let Some(p) = opt_num(o, "presence_penalty", -2.0, 2.0)? {
        sampling.presence_penalty = p as f32;
    }
    if let Some(p) = opt_num(o, "frequency_penalty", -2.0, 2.0)? {
        sampling.frequency_penalty = p as f32;
    }
    let stop = match field(o, "stop") {
        None => Vec::new(),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(a)) => a
            .iter()
            .enumerate()
            .map(|(i, v)| {
                v.as_str().map(str::to_owned).ok_or_else(|| {
                    ApiError::bad(format!("stop[{i}]"), "`stop` entries must be strings")
                })
            })
            .collect::<Result<_, _>>()?,
        Some(_) => {
            return Err(ApiError::bad(
                "stop",
                "`stop` must be a string or an array of strings",
            ))
        }
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
        max_tokens,
        sampling,
        stop,
    })
}

/// Validates `messages` and turns content parts into plain strings for the template.
fn normalize_messages(v: Option<&Value>) -> Result<Value, ApiError> {
    let arr = match v {
        None => return Err(ApiError::bad("messages", "`messages` is required")),
        Some(Value::Array(a)) if a.is_empty() => {
            return Err(ApiError::bad("messages", "`messages` must not be empty"))
        }
        Some(Value::Array(a)) => a,
        Some(_) => return Err(ApiError::bad("messages", "`messages` must be an array")),
    };
    let mut out = Vec::with_capacity(arr.len());
    for (i, m) in arr.iter().enumerate() {
        let p = format!("messages[{i}]");
        let mut m = m
            .as_object()
            .cloned()
            .ok_or_else(|| ApiError::bad(&p, format!("`{p}` must be an object")))?;
        let role = match m.get("role") {
            Some(Value::String(r)) => r.clone(),
            Some(_) => {
                return Err(ApiError::bad(
                    format!("{p}.role"),
                    "`role` must be a string",
                ))
            }
            None => {
                return Err(ApiError::bad(
                    format!("{p}.role"),
                    format!("`{p}.role` is required"),
                ))
            }
        };
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
        let content = match m.get("content") {
            Some(Value::String(s)) => s.clone(),
            None | Some(Value::Null) if role == "assistant" => String::new(),
            None | Some(Value::Null) => {
                return Err(ApiError::bad(
                    format!("{p}.content"),
                    format!("`{p}.content` is required"),
                ))
            }
            Some(Value::Array(parts)) => {
                let mut s = String::new();
                for (j, part) in parts.iter().enumerate() {
                    let pp = format!("{p}.content[{j}]");
                    match part.get("type").and_then(Value::as_str) {
                        Some("text") => s.push_str(
                            part.get("text").and_then(Value::as_str).ok_or_else(|| {
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
                        None => {
                            return Err(ApiError::bad(
                                format!("{pp}.type"),
                                "content parts need a `type`",
                            ))
                        }
                    }
                }
                s
            }
            Some(_) => {
                return Err(ApiError::bad(
                    format!("{p}.content"),
                    "`content` must be a string or an array of content parts",
                ))
            }
        };
        m.insert("role".into(), Value::String(role));
        m.insert("content".into(), Value::String(content));
        out.push(Value::Object(m));
    }
    Ok(Value::Array(out))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

fn random_id(prefix: &str) -> String {
    use rand::Rng;
    let n: u128 = rand::rng().random();
    format!("{prefix}{n:032x}")
}

/// Checks the prompt against the context and resolves `max_tokens` like vLLM.
fn fit_context(
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

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Chat,
    Completion,
}

struct Job {
    kind: Kind,
    id: String,
    created: u64,
    model: String,
    stream: bool,
    include_usage: bool,
    rx: mpsc::UnboundedReceiver<Event>,
    keepalive: Duration,
}

fn submit(
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

type BodyResult = Result<Bytes, axum::extract::rejection::BytesRejection>;

/// Body rejections (too large, unreadable) in OpenAI's shape too.
fn body_or_error(body: BodyResult) -> Result<Bytes, ApiError> {
    body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::PayloadTooLarge
        } else {
            ApiError::BadRequest {
                message: e.body_text(),
                param: None,
            }
        }
    })
}

async fn chat_completions(State(st): State<Arc<AppState>>, body: BodyResult) -> Response {
    match body_or_error(body).and_then(|b| chat_inner(&st, b)) {
        Ok(job) => respond(job).await,
        Err(e) => e.into_response(),
    }
}

fn chat_inner(st: &AppState, body: Bytes) -> Result<Job, ApiError> {
    let o = parse_body(&body)?;
    let common = parse_common(&o, st)?;
    let messages = normalize_messages(o.get("messages"))?;
    let mut kwargs = Map::new();
    if let Some(k) = field(&o, "chat_template_kwargs") {
        kwargs = k.as_object().cloned().ok_or_else(|| {
            ApiError::bad(
                "chat_template_kwargs",
                "`chat_template_kwargs` must be an object",
            )
        })?;
    }
    match (
        opt_bool(
            &kwargs,
            "enable_thinking",
            "chat_template_kwargs.enable_thinking",
        )?,
        opt_bool(&o, "enable_thinking", "enable_thinking")?,
    ) {
        (Some(_), _) => {}
        (None, Some(b)) => {
            kwargs.insert("enable_thinking".into(), Value::Bool(b));
        }
        (None, None) => {}
    }
    // LangChain's extra_body sends it; reasoning is always returned, so it is only validated.
    opt_bool(&o, "return_reasoning", "return_reasoning")?;
    let tools = match field(&o, "tools") {
        None => None,
        Some(t @ Value::Array(_)) => Some(t),
        Some(_) => return Err(ApiError::bad("tools", "`tools` must be an array")),
    };
    // Tool calls are parsed out of the output (Qwen3 writes Hermes-style `<tool_call>` blocks)
    // when tools are offered, unless `tool_choice` is "none".
    let offers_tools = tools
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty());
    let parse_tool_calls =
        match field(&o, "tool_choice") {
            None => offers_tools,
            Some(Value::String(c)) if c == "auto" => offers_tools,
            Some(Value::String(c)) if c == "none" => false,
            Some(_) => return Err(ApiError::bad(
                "tool_choice",
                "`tool_choice` must be \"auto\" or \"none\" (forced tool calls are not supported)",
            )),
        };
    let add_generation_prompt =
        opt_bool(&o, "add_generation_prompt", "add_generation_prompt")?.unwrap_or(true);
    let prompt = st
        .tokenizer
        .apply_chat_template(&messages, tools, add_generation_prompt, &kwargs)
        .map_err(|e| ApiError::bad("messages", format!("{e}")))?;
    let ids = st
        .tokenizer
        .encode(&prompt)
        .map_err(|e| ApiError::Internal(e.to_string()))?;
    let max_tokens = fit_context(st, ids.len(), common.max_tokens, "messages")?;
    submit(st, Kind::Chat, ids, max_tokens, common, parse_tool_calls)
}

async fn completions(State(st): State<Arc<AppState>>, body: BodyResult) -> Response {
    match body_or_error(body).and_then(|b| completions_inner(&st, b)) {
        Ok(job) => respond(job).await,
        Err(e) => e.into_response(),
    }
}

fn completions_inner(st: &AppState, body: Bytes) -> Result<Job, ApiError> {
    let o = parse_body(&body)?;
    let mut common = parse_common(&o, st)?;
    if opt_bool(&o, "echo", "echo")? == Some(true) {
        return Err(ApiError::bad("echo", "`echo` is not supported"));
    }
    if field(&o, "suffix").is_some() {
        return Err(ApiError::bad("suffix", "`suffix` is not supported"));
    }
    let vocab = st.tokenizer.vocab_size() as u64;
    let ids_from = |a: &[Value], p: &str| -> Result<Vec<u32>, ApiError> {
        a.iter()
            .enumerate()
            .map(|(i, v)| match v.as_u64() {
                Some(t) if t < vocab => Ok(t as u32),
                _ => Err(ApiError::bad(
                    format!("{p}[{i}]"),
                    format!("token ids must be integers below {vocab}"),
                )),
            })
            .collect()
    };
    let ids =
        match field(&o, "prompt") {
            None => return Err(ApiError::bad("prompt", "`prompt` is required")),
            Some(Value::String(s)) => st
                .tokenizer
                .encode(s)
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => st
                .tokenizer
                .encode(a[0].as_str().unwrap_or_default())
                .map_err(|e| ApiError::Internal(e.to_string()))?,
            Some(Value::Array(a)) if a.len() == 1 && a[0].is_array() => ids_from(
                a[0].as_array().map(Vec::as_slice).unwrap_or(&[]),
                "prompt[0]",
            )?,
            Some(Value::Array(a)) if a.iter().all(Value::is_number) && !a.is_empty() => {
                ids_from(a, "prompt")?
            }
            Some(Value::Array(_)) => return Err(ApiError::bad(
                "prompt",
                "`prompt` must be a string, one string, or token ids (batches are not supported)",
            )),
            Some(_) => return Err(ApiError::bad("prompt", "`prompt` must be a string")),
        };
    // The legacy completions API defaults to 16 tokens.
    common.max_tokens = Some(common.max_tokens.unwrap_or(16));
    let max_tokens = fit_context(st, ids.len(), common.max_tokens, "prompt")?;
    submit(st, Kind::Completion, ids, max_tokens, common, false)
}

fn usage_json(u: &Usage, kind: Kind) -> Value {
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

async fn respond(job: Job) -> Response {
    if job.stream {
        let stream = futures_util::stream::unfold(SseState::new(job), |mut s| async move {
            s.next().await.map(|b| (Ok::<_, Infallible>(b), s))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| ApiError::Internal("response".into()).into_response())
    } else {
        collect(job).await
    }
}

/// Waits for the whole generation. Dropping this future (client gone) drops the receiver, which
/// cancels the request in the scheduler.
async fn collect(mut job: Job) -> Response {
    let mut content = String::new();
    let mut reasoning = String::new();
    let mut tool_calls = Vec::new();
    loop {
        match job.rx.recv().await {
            Some(Event::ToolCall {
                name, arguments, ..
            }) => tool_calls.push(json!({
                "id": random_id("chatcmpl-tool-"),
                "type": "function",
                "function": {"name": name, "arguments": arguments},
            })),
            Some(Event::Delta {
                reasoning: true,
                text,
            }) => reasoning.push_str(&text),
            Some(Event::Delta {
                reasoning: false,
                text,
            }) => content.push_str(&text),
            Some(Event::Done { reason, usage }) => {
                let body = match job.kind {
                    Kind::Chat => {
                        let r = (!reasoning.is_empty()).then_some(reasoning);
                        // With tool calls and no text, content is null as in OpenAI's responses.
                        let content =
                            (!content.is_empty() || tool_calls.is_empty()).then_some(content);
                        json!({
                            "id": job.id,
                            "object": "chat.completion",
                            "created": job.created,
                            "model": job.model,
                            "choices": [{
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
                            }],
                            "usage": usage_json(&usage, Kind::Chat),
                        })
                    }
                    Kind::Completion => json!({
                        "id": job.id,
                        "object": "text_completion",
                        "created": job.created,
                        "model": job.model,
                        "choices": [{
                            "index": 0,
                            "text": content,
                            "logprobs": null,
                            "finish_reason": reason.as_str(),
                            "stop_reason": null,
                        }],
                        "usage": usage_json(&usage, Kind::Completion),
                    }),
                };
                return axum::Json(body).into_response();
            }
            Some(Event::Error(e)) => return ApiError::Internal(e).into_response(),
            None => {
                return ApiError::Unavailable("the engine stopped before finishing".into())
                    .into_response()
            }
        }
    }
}

struct SseState {
    job: Job,
    started: bool,
    done: bool,
}

impl SseState {
    fn new(job: Job) -> Self {
        Self {
            job,
            started: false,
            done: false,
        }
    }

    fn chunk(&self, choice: Value) -> String {
        let object = match self.job.kind {
            Kind::Chat => "chat.completion.chunk",
            Kind::Completion => "text_completion",
        };
        let mut v = json!({
            "id": self.job.id,
            "object": object,
            "created": self.job.created,
            "model": self.job.model,
            "choices": [choice],
        });
        if self.job.include_usage {
            v["usage"] = Value::Null;
        }
        data(&v)
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

    async fn next(&mut self) -> Option<Bytes> {
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
                    "delta": {"tool_calls": [{
                        "index": index,
                        "id": random_id("chatcmpl-tool-"),
                        "type": "function",
                        "function": {"name": name, "arguments": arguments},
                    }]},
                    "logprobs": null,
                    "finish_reason": null,
                })));
            }
            Some(Event::Done { reason, usage }) => {
                self.start(&mut out);
                out.push_str(&self.delta(false, "", Some(reason)));
                if self.job.include_usage {
                    out.push_str(&data(&json!({
                        "id": self.job.id,
                        "object": if self.job.kind == Kind::Chat { "chat.completion.chunk" } else { "text_completion" },
                        "created": self.job.created,
                        "model": self.job.model,
                        "choices": [],
                        "usage": usage_json(&usage, self.job.kind),
                    })));
                }
                out.push_str("data: [DONE]\n\n");
                self.done = true;
            }
            Some(Event::Error(e)) => {
                out.push_str(&data(&ApiError::Internal(e).to_json()));
                out.push_str("data: [DONE]\n\n");
                self.done = true;
            }
            None => {
                out.push_str(&data(
                    &ApiError::Unavailable("the engine stopped before finishing".into()).to_json(),
                ));
                out.push_str("data: [DONE]\n\n");
                self.done = true;
            }
        }
        Some(Bytes::from(out))
    }
}

fn data(v: &Value) -> String {
    format!("data: {v}\n\n")
}
