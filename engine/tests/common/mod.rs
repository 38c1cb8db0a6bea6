//! What the test files that drive a router all do: post a chat completion and read the body; and,
//! for those that start the binary, one plain HTTP/1.1 request on a real socket.

use std::io::{Read as _, Write as _};
use std::net::TcpStream;
use std::time::Duration;

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

/// One HTTP/1.1 request to a running engine (`Connection: close`); the whole raw response.
#[allow(dead_code)] // not every test file that includes this module starts the binary
pub fn http(addr: &str, method: &str, path: &str, body: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(120))).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}
