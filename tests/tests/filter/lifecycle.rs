//! How streams end, interleave and spread over workers.

use gateway_tests::Gateway;

use crate::common::*;

#[test]
fn a_client_abort_is_counted_with_outcome_client_abort() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.response_headers(SSE);
    s.response_chunk(format!("{}{}", role_chunk(), token("a")).as_bytes(), false);
    s.client_abort();
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &request_labels("m", "true", "2xx", "client_abort")
        ),
        1
    );
    assert_eq!(gw.series("llm_requests_total", &[]), 1);
    assert_eq!(gw.gauge("llm_active_requests", &[]), 0);
}

#[test]
fn an_upstream_abort_is_counted_with_outcome_upstream_abort() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.response_headers(SSE);
    s.response_chunk(token("a").as_bytes(), false);
    s.upstream_abort();
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &request_labels("m", "true", "2xx", "upstream_abort")
        ),
        1
    );
    assert_eq!(gw.series("llm_requests_total", &[]), 1);
    assert_eq!(gw.gauge("llm_active_requests", &[]), 0);
}

#[test]
fn a_client_abort_before_any_response_has_status_class_none() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    gw.advance_ms(40);
    s.client_abort();
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &request_labels("m", "true", "none", "client_abort")
        ),
        1
    );
    assert_eq!(
        gw.histogram("llm_request_duration_ms", &[("model", "m")])
            .samples,
        vec![40]
    );
    assert_eq!(gw.gauge("llm_active_requests", &[]), 0);
}

#[test]
fn a_stream_that_ends_without_its_end_marker_is_an_upstream_abort() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.response_headers(SSE);
    s.response_body(&[token("a"), token("b")]); // end_of_stream, but no [DONE] and no finish_reason
    s.end();
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &request_labels("m", "true", "2xx", "upstream_abort")
        ),
        1
    );
}

#[test]
fn a_gauge_counts_requests_in_flight_and_returns_to_zero() {
    let gw = gateway();
    let mut a = gw.stream();
    a.post_json(CHAT, &chat_request("m", true));
    let mut b = gw.stream();
    b.post_json(CHAT, &chat_request("m", false));
    assert_eq!(
        gw.gauge(
            "llm_active_requests",
            &[("model", "m"), ("api", "chat_completions")]
        ),
        2
    );
    a.response_headers(SSE);
    a.response_body(&[token("a"), finish(), DONE.to_owned()]);
    a.end();
    assert_eq!(gw.gauge("llm_active_requests", &[("model", "m")]), 1);
    b.client_abort();
    assert_eq!(gw.gauge("llm_active_requests", &[("model", "m")]), 0);
}

#[test]
fn interleaved_streams_keep_their_own_state() {
    let gw = gateway();
    let mut a = gw.stream();
    a.post_json(CHAT, &chat_request("model-a", true)); // t = 0
    gw.advance_ms(10);
    let mut b = gw.stream();
    b.post_json(CHAT, &chat_request("model-b", true)); // t = 10
    a.response_headers(SSE);
    b.response_headers(SSE);
    // Each event is cut in the middle and the halves of the two streams alternate.
    let a_events = [
        token("one"),
        token("two"),
        token("three"),
        finish(),
        DONE.to_owned(),
    ];
    let b_events = [
        role_chunk(),
        token("uno"),
        finish(),
        usage_chunk(3, 9),
        DONE.to_owned(),
    ];
    for (i, (ea, eb)) in a_events.iter().zip(b_events.iter()).enumerate() {
        gw.advance_ms(100);
        let (a1, a2) = ea.split_at(ea.len() / 2);
        let (b1, b2) = eb.split_at(eb.len() / 2);
        let last = i + 1 == a_events.len();
        a.response_chunk(a1.as_bytes(), false);
        b.response_chunk(b1.as_bytes(), false);
        a.response_chunk(a2.as_bytes(), last);
        b.response_chunk(b2.as_bytes(), last);
    }
    a.end();
    b.end();
    // a: first token at 110 ms after its start; b: role chunk at 100, first token at 200 (t = 210).
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &[("model", "model-a")])
            .samples,
        vec![110]
    );
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &[("model", "model-b")])
            .samples,
        vec![200]
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[
                ("model", "model-a"),
                ("token_type", "output"),
                ("source", "estimated")
            ]
        ),
        3
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[
                ("model", "model-b"),
                ("token_type", "output"),
                ("source", "usage")
            ]
        ),
        9
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[("model", "model-b"), ("source", "estimated")]
        ),
        0
    );
    assert_eq!(
        gw.series("llm_requests_total", &[("outcome", "completed")]),
        2
    );
}

#[test]
fn two_workers_share_one_stat_store() {
    let gw = Gateway::with_vms(2, "{}").unwrap_or_else(|e| panic!("{e:#}"));
    for vm in [0, 1, 1] {
        let mut s = gw.stream_on(vm);
        s.post_json(CHAT, &chat_request("m", true));
        s.response_headers(SSE);
        s.response_body(&[
            token("a"),
            token("b"),
            finish(),
            usage_chunk(4, 6),
            DONE.to_owned(),
        ]);
        s.end();
    }
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &request_labels("m", "true", "2xx", "completed")
        ),
        3
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[("model", "m"), ("token_type", "output")]
        ),
        18
    );
    assert_eq!(
        gw.histogram("llm_request_duration_ms", &[("model", "m")])
            .count(),
        3
    );
}

#[test]
fn the_model_cap_is_shared_by_all_workers() {
    let gw = Gateway::with_vms(2, r#"{"max_models": 2}"#).unwrap_or_else(|e| panic!("{e:#}"));
    for (vm, model) in [
        (0, "first"),
        (1, "second"),
        (0, "third"),
        (1, "fourth"),
        (1, "first"),
    ] {
        let mut s = gw.stream_on(vm);
        s.post_json(CHAT, &chat_request(model, false));
        s.response_headers(JSON);
        s.response_body(&[r#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":1}}"#]);
        s.end();
    }
    let models = gw.label_values("llm_requests_total", "model");
    assert_eq!(
        models,
        ["first", "other", "second"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(gw.series("llm_requests_total", &[("model", "other")]), 2);
    assert_eq!(gw.series("llm_requests_total", &[("model", "first")]), 2);
}

#[test]
fn ten_thousand_distinct_model_names_stay_under_the_cap() {
    let gw = Gateway::with_vms(2, "{}").unwrap_or_else(|e| panic!("{e:#}"));
    for i in 0..10_000 {
        let mut s = gw.stream_on(i % 2);
        s.post_json(CHAT, &chat_request(&format!("model-{i}"), false));
        s.response_headers(JSON);
        s.response_body(&[r#"{"choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3}}"#]);
        s.end();
    }
    let models = gw.label_values("llm_requests_total", "model");
    assert_eq!(
        models.len(),
        33,
        "32 names (the default max_models) plus `other`: {models:?}"
    );
    assert!(models.contains("other"));
    assert_eq!(gw.series("llm_requests_total", &[]), 10_000);
    assert_eq!(
        gw.series("llm_requests_total", &[("model", "other")]),
        10_000 - 32
    );
    assert_eq!(
        gw.series("llm_tokens_total", &[("token_type", "output")]),
        30_000
    );
    let all_models: std::collections::BTreeSet<String> = gw
        .all_series()
        .into_iter()
        .filter_map(|s| {
            s.labels
                .into_iter()
                .find(|(k, _)| k == "model")
                .map(|(_, v)| v)
        })
        .collect();
    assert!(
        all_models.len() <= 33,
        "every metric stays under the cap: {}",
        all_models.len()
    );
}

#[test]
fn requests_that_are_not_llm_calls_are_not_counted() {
    let gw = gateway();
    let mut get = gw.stream();
    get.request_headers_only(&[(":method", "GET"), (":path", "/v1/models")]);
    get.response_headers(JSON);
    get.response_body(&[r#"{"data":[]}"#]);
    get.end();
    let mut get_chat = gw.stream();
    get_chat.request_headers_only(&[(":method", "GET"), (":path", "/v1/chat/completions")]);
    get_chat.response_headers(JSON);
    get_chat.response_body(&["{}"]);
    get_chat.end();
    let mut other = gw.stream();
    other.post_json("/healthz", r#"{"model":"m"}"#);
    other.response_headers(JSON);
    other.response_body(&["{}"]);
    other.end();
    let counted: Vec<String> = gw
        .all_series()
        .iter()
        .filter(|s| match &s.value {
            gateway_tests::SeriesValue::Counter(v) => *v > 0,
            gateway_tests::SeriesValue::Gauge(v) => *v != 0,
            gateway_tests::SeriesValue::Histogram(h) => h.count() > 0,
        })
        .map(|s| s.key())
        .collect();
    assert!(counted.is_empty(), "{counted:?}");
}

#[test]
fn the_api_is_matched_by_path_suffix_with_the_query_string_stripped() {
    let gw = gateway();
    for path in [
        "/openai/v1/chat/completions?api-version=2024-10-21",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/responses",
    ] {
        let mut s = gw.stream();
        s.post_json(path, r#"{"model":"m"}"#);
        s.response_headers(JSON);
        s.response_body(&["{}"]);
        s.end();
    }
    let apis = gw.label_values("llm_requests_total", "api");
    assert_eq!(
        apis,
        ["chat_completions", "completions", "embeddings", "responses"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
}

#[test]
fn model_names_are_sanitised_and_truncated() {
    let gw = gateway();
    let long = "a".repeat(100);
    for model in [
        "Qwen/Qwen3-1.7B",
        "qwen3:1.7b",
        "bad name\"{}",
        "",
        long.as_str(),
    ] {
        let mut s = gw.stream();
        s.post_json(CHAT, &chat_request(model, false));
        s.response_headers(JSON);
        s.response_body(&["{}"]);
        s.end();
    }
    let models = gw.label_values("llm_requests_total", "model");
    let expected: std::collections::BTreeSet<String> = [
        "Qwen/Qwen3-1.7B",
        "qwen3:1.7b",
        "bad_name___",
        "unknown",
        &"a".repeat(64),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(models, expected);
}

#[test]
fn a_multi_line_data_event_with_crlf_line_ends_is_one_event() {
    // CRLF is ONE line end: a decoder that took CR and LF as two would see an empty line after
    // `data: {..."choices":[...],` and dispatch half a JSON object.
    let body = "data: {\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}],\r\ndata: \"usage\":null}\r\n\r\n\
                data: {\"choices\":[],\r\ndata: \"usage\":{\"prompt_tokens\":3,\"completion_tokens\":4}}\r\n\r\n\
                data: [DONE]\r\n\r\n";
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.response_headers(SSE);
    s.response_body(&[body]);
    s.end();
    assert_eq!(
        gw.series("llm_filter_errors_total", &[]),
        0,
        "{}",
        gw.render_prometheus()
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[("token_type", "output"), ("source", "usage")]
        ),
        4
    );
    assert_eq!(
        gw.series("llm_requests_total", &[("outcome", "completed")]),
        1
    );
}

#[test]
fn the_model_cap_holds_when_workers_race_on_the_shared_registry() {
    let gw = Gateway::with_vms(2, r#"{"max_models": 3}"#).unwrap_or_else(|e| panic!("{e:#}"));
    let call = |vm: usize, model: &str| {
        let mut s = gw.stream_on(vm);
        s.post_json(CHAT, &chat_request(model, false));
        s.response_headers(JSON);
        s.response_body(&["{}"]);
        s.end();
    };
    call(0, "a");
    // Worker 1's registry update loses a race twice: it must re-read and try again.
    gw.interfere_with_shared_data_writes(2);
    call(1, "b");
    assert_eq!(
        gw.pending_interference(),
        0,
        "the filter never made a conditional write"
    );
    gw.interfere_with_shared_data_writes(1);
    call(0, "c");
    assert_eq!(
        gw.pending_interference(),
        0,
        "the filter never made a conditional write"
    );
    call(1, "d");
    call(0, "b");
    let models = gw.label_values("llm_requests_total", "model");
    assert_eq!(
        models,
        ["a", "b", "c", "other"]
            .iter()
            .map(|s| s.to_string())
            .collect()
    );
    assert_eq!(gw.series("llm_requests_total", &[("model", "b")]), 2);
}

#[test]
fn a_response_that_ends_with_trailers_is_completed() {
    // With trailers (HTTP/2 upstreams, chunked trailers) Envoy ends the response in
    // on_response_trailers: no body callback has end_of_stream.
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.response_headers(SSE);
    for chunk in [token("a"), finish(), usage_chunk(2, 1), DONE.to_owned()] {
        s.response_chunk(chunk.as_bytes(), false);
    }
    s.response_trailers(&[("grpc-status", "0")]);
    let report = s.end();
    assert!(report.untouched(), "{report:?}");
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &request_labels("m", "true", "2xx", "completed")
        ),
        1
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[("token_type", "output"), ("source", "usage")]
        ),
        1
    );
}
