//! What the test files that drive a router all do: post a chat completion and read the body.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use axum::Router;
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// Posts `body` to `/v1/chat/completions`, expects 200 and returns the response body as text.
pub async fn post_chat(router: &Router, body: &Value) -> String {
    let resp = router
        .clone()
        .oneshot(
            Request::post("/v1/chat/completions")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let bytes = resp.into_body().collect().await.unwrap().to_bytes();
    String::from_utf8(bytes.to_vec()).unwrap()
}

/// [`post_chat`] for a non-streaming request: the parsed response.
#[allow(dead_code)] // not every test file that includes this module uses it
pub async fn post_chat_json(router: &Router, body: &Value) -> Value {
    serde_json::from_str(&post_chat(router, body).await).unwrap()
}
