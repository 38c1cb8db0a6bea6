//! The OpenAI-compatible HTTP API: routes, and the handlers that take a request through its steps.
//!
//! A body is parsed into typed views (`request`, built from the JSON shapes in `fields`; a value
//! of the wrong type is an error that names the field), checked for meaning and turned into a
//! prompt (`validate`) — these three on tokio's blocking pool, off the async workers —, submitted to the scheduler (`job`), and answered as one JSON response
//! (`response`) or as server-sent events (`sse`). Every failure is an [`ApiError`] in OpenAI's
//! error shape.

mod error;
mod fields;
mod job;
mod request;
mod response;
mod sse;
mod validate;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use serde_json::json;

pub use self::error::ApiError;
pub(crate) use self::job::now_secs;
use self::job::{Job, Kind};
use crate::chat::ChatTokenizer;
use crate::metrics::MetricsRegistry;
use crate::scheduler::EngineHandle;

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
    answer(st, body, prepare_chat).await
}

async fn completions(State(st): State<Arc<AppState>>, body: BodyResult) -> Response {
    answer(st, body, prepare_completion).await
}

/// A request ready for the scheduler: its prompt tokens and settings.
struct Prepared {
    kind: Kind,
    ids: Vec<u32>,
    max_tokens: usize,
    common: validate::Common,
    parse_tool_calls: bool,
}

/// Turns the body into a prompt with `prepare`, submits it and answers it, or answers the error.
///
/// `prepare` (JSON parsing, chat-template rendering, tokenization) runs on tokio's blocking pool:
/// for a body of megabytes it takes long enough to stall every other connection an async worker
/// serves (`/health`, `/metrics`, streams). Submission stays here, so a client that hangs up while
/// its body is being tokenized never reaches the queue.
async fn answer(
    st: Arc<AppState>,
    body: BodyResult,
    prepare: fn(&AppState, Bytes) -> Result<Prepared, ApiError>,
) -> Response {
    let body = match body_or_error(body) {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let prepared = {
        let st = st.clone();
        tokio::task::spawn_blocking(move || prepare(&st, body)).await
    };
    let job = match prepared {
        Ok(Ok(p)) => job::submit(
            &st,
            p.kind,
            p.ids,
            p.max_tokens,
            p.common,
            p.parse_tool_calls,
        ),
        Ok(Err(e)) => Err(e),
        Err(e) => Err(ApiError::Internal(format!(
            "preparing the prompt failed: {e}"
        ))),
    };
    match job {
        Ok(job) => respond(job).await,
        Err(e) => e.into_response(),
    }
}

fn prepare_chat(st: &AppState, body: Bytes) -> Result<Prepared, ApiError> {
    let body = request::parse_body(&body)?;
    let common = validate::common(&body, st)?;
    let prompt = validate::chat(&body, st)?;
    let max_tokens = validate::fit_context(st, prompt.ids.len(), common.max_tokens, "messages")?;
    Ok(Prepared {
        kind: Kind::Chat,
        ids: prompt.ids,
        max_tokens,
        common,
        parse_tool_calls: prompt.parse_tool_calls,
    })
}

fn prepare_completion(st: &AppState, body: Bytes) -> Result<Prepared, ApiError> {
    let body = request::parse_body(&body)?;
    let mut common = validate::common(&body, st)?;
    let ids = validate::completion(&body, st)?;
    // The legacy completions API defaults to 16 tokens.
    common.max_tokens = Some(common.max_tokens.unwrap_or(16));
    let max_tokens = validate::fit_context(st, ids.len(), common.max_tokens, "prompt")?;
    Ok(Prepared {
        kind: Kind::Completion,
        ids,
        max_tokens,
        common,
        parse_tool_calls: false,
    })
}

async fn respond(job: Job) -> Response {
    if job.stream {
        let stream = futures_util::stream::unfold(sse::SseState::new(job), |mut s| async move {
            s.next().await.map(|b| (Ok::<_, Infallible>(b), s))
        });
        Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, "text/event-stream")
            .header(header::CACHE_CONTROL, "no-cache")
            .body(Body::from_stream(stream))
            .unwrap_or_else(|_| ApiError::Internal("response".into()).into_response())
    } else {
        response::collect(job).await
    }
}
