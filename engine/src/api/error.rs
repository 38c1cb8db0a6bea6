//! One error type for the whole API and its one mapping to HTTP.
//!
//! Every rejection, whether from validation, the body limit, the router or the scheduler, leaves
//! as OpenAI's `{"error": {"message", "type", "param", "code"}}` so clients' SDKs can read it; the
//! streaming writer sends the same object as an SSE event when a stream fails midway.

use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::MAX_BODY_BYTES;

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
    /// A 400 naming the offending field as OpenAI's `param`.
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
