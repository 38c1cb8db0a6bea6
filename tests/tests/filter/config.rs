//! The plugin configuration: defaults accepted, mistakes rejected at configure time.

use gateway_tests::Gateway;

use crate::common::*;

fn rejected(config: &str) -> String {
    match Gateway::new(config) {
        Ok(_) => panic!("the filter accepted the configuration {config}"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn an_empty_object_configuration_is_accepted() {
    Gateway::new("{}").unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn an_empty_configuration_is_accepted() {
    Gateway::new("").unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn a_full_configuration_is_accepted() {
    Gateway::new(
        r#"{"models":["a"],"max_models":4,"max_request_body_bytes":1000,"max_response_body_bytes":2000,
            "max_event_bytes":300,"paths":{"/chat/completions":"chat_completions","/generate":"completions"}}"#,
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn an_unknown_field_is_rejected() {
    let err = rejected(r#"{"max_model": 3}"#);
    assert!(err.contains("on_configure returned false"), "{err}");
}

#[test]
fn a_field_of_the_wrong_type_is_rejected() {
    rejected(r#"{"max_models": "32"}"#);
    rejected(r#"{"models": "gpt-4o"}"#);
}

#[test]
fn configuration_that_is_not_json_is_rejected() {
    rejected("max_models: 3");
}

#[test]
fn a_path_mapped_to_an_unknown_api_is_rejected() {
    rejected(r#"{"paths": {"/v1/generate": "generate"}}"#);
}

#[test]
fn the_rejection_is_logged_naming_the_field() {
    // The host keeps no gateway on failure, so check the error text carries the filter's log.
    let err = rejected(r#"{"max_models": "32"}"#);
    assert!(
        err.contains("max_models"),
        "the log should name the bad field: {err}"
    );
}

#[test]
fn an_allow_list_maps_every_other_model_to_other() {
    let gw = Gateway::new(r#"{"models": ["Qwen/Qwen3-1.7B"]}"#).unwrap_or_else(|e| panic!("{e:#}"));
    for model in ["Qwen/Qwen3-1.7B", "gpt-4o", "llama"] {
        let mut s = gw.stream();
        s.post_json(CHAT, &chat_request(model, false));
        s.response_headers(JSON);
        s.response_body(&["{}"]);
        s.end();
    }
    assert_eq!(
        gw.series("llm_requests_total", &[("model", "Qwen/Qwen3-1.7B")]),
        1
    );
    assert_eq!(gw.series("llm_requests_total", &[("model", "other")]), 2);
}

#[test]
fn custom_paths_map_a_suffix_to_an_api() {
    let gw = Gateway::new(r#"{"paths": {"/generate": "completions"}}"#)
        .unwrap_or_else(|e| panic!("{e:#}"));
    let mut s = gw.stream();
    s.post_json("/api/generate", r#"{"model":"m"}"#);
    s.response_headers(JSON);
    s.response_body(&["{}"]);
    s.end();
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &[("model", "m"), ("api", "completions")]
        ),
        1
    );
}

#[test]
fn a_request_body_over_the_limit_is_counted_with_model_unknown() {
    let gw = Gateway::new(r#"{"max_request_body_bytes": 64}"#).unwrap_or_else(|e| panic!("{e:#}"));
    let mut s = gw.stream();
    let body = chat_request(&"m".repeat(10), false) + &" ".repeat(100);
    s.request_headers(&[(":method", "POST"), (":path", CHAT)]);
    s.request_body(&[&body[..50], &body[50..]]);
    s.response_headers(JSON);
    s.response_body(&["{}"]);
    s.end();
    assert_eq!(
        gw.series("llm_filter_errors_total", &[("kind", "request_too_large")]),
        1
    );
    assert_eq!(gw.series("llm_requests_total", &[("model", "unknown")]), 1);
}

#[test]
fn an_sse_event_over_the_limit_is_skipped_and_the_stream_goes_on() {
    let gw = Gateway::new(r#"{"max_event_bytes": 200}"#).unwrap_or_else(|e| panic!("{e:#}"));
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.response_headers(SSE);
    s.response_body(&[
        token(&"x".repeat(500)),
        token("a"),
        token("b"),
        finish(),
        DONE.to_owned(),
    ]);
    s.end();
    assert_eq!(
        gw.series("llm_filter_errors_total", &[("kind", "event_too_large")]),
        1
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[("token_type", "output"), ("source", "estimated")]
        ),
        2
    );
    assert_eq!(
        gw.series("llm_requests_total", &[("outcome", "completed")]),
        1
    );
}
