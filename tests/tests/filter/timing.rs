//! TTFT, duration and TPOT come from the virtual clock, so they must equal exact values.

use crate::common::*;

const API: (&str, &str) = ("api", "chat_completions");

#[test]
fn ttft_runs_from_the_request_headers_to_the_first_token_event() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true)); // t = 0
    s.at_ms(100);
    s.response_headers(SSE);
    s.response_body_at(&[
        (120, role_chunk()),
        (150, token("Hel")),
        (170, token("lo")),
        (190, finish()),
        (200, DONE.to_owned()),
    ]);
    s.end();
    let ttft = gw.histogram("llm_time_to_first_token_ms", &[("model", "m"), API]);
    assert_eq!(
        ttft.samples,
        vec![150],
        "TTFT counts from the request headers, not the response headers (100 ms)"
    );
}

#[test]
fn tpot_is_the_span_between_first_and_last_token_over_the_estimated_tokens_minus_one() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.at_ms(100);
    s.response_headers(SSE);
    // Ten token events, 20 ms apart, from 150 ms to 330 ms.
    let mut chunks: Vec<(u64, String)> = (0..10).map(|i| (150 + 20 * i, token("x"))).collect();
    chunks.push((340, finish()));
    chunks.push((345, DONE.to_owned()));
    s.response_body_at(&chunks);
    s.end();
    let labels = [("model", "m"), API];
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &labels).samples,
        vec![150]
    );
    // (330 - 150) ms / (10 - 1) = 20 ms = 20000 µs.
    assert_eq!(
        gw.histogram("llm_time_per_output_token_us", &labels)
            .samples,
        vec![20_000]
    );
    assert_eq!(
        gw.histogram(
            "llm_request_duration_ms",
            &[("model", "m"), API, ("streaming", "true")]
        )
        .samples,
        vec![345]
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[
                ("model", "m"),
                ("token_type", "output"),
                ("source", "estimated")
            ]
        ),
        10
    );
}

#[test]
fn tpot_uses_the_usage_output_tokens_with_integer_division_in_microseconds() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.at_ms(50);
    s.response_headers(SSE);
    let mut chunks: Vec<(u64, String)> = (0..10).map(|i| (150 + 20 * i, token("xyz"))).collect();
    chunks.push((340, finish()));
    chunks.push((341, usage_chunk(12, 50)));
    chunks.push((342, DONE.to_owned()));
    s.response_body_at(&chunks);
    s.end();
    // 180 ms between the first and last token events, 50 output tokens: 180000 / 49 = 3673 µs.
    assert_eq!(
        gw.histogram("llm_time_per_output_token_us", &[("model", "m")])
            .samples,
        vec![3673]
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[
                ("model", "m"),
                ("token_type", "output"),
                ("source", "usage")
            ]
        ),
        50
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[("model", "m"), ("token_type", "input"), ("source", "usage")]
        ),
        12
    );
    assert_eq!(gw.series("llm_tokens_total", &[("source", "estimated")]), 0);
}

#[test]
fn a_single_output_token_records_no_tpot() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.respond(
        SSE,
        &[(80, token("yes")), (90, finish()), (91, DONE.to_owned())],
    );
    s.end();
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &[("model", "m")])
            .samples,
        vec![80]
    );
    assert_eq!(gw.histogram("llm_time_per_output_token_us", &[]).count(), 0);
}

#[test]
fn the_first_token_in_the_same_chunk_as_the_role_chunk_is_timed_at_that_chunk() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.respond(
        SSE,
        &[
            (5, String::new()),
            (230, format!("{}{}", role_chunk(), token("a"))),
            (260, format!("{}{}{DONE}", token("b"), finish())),
        ],
    );
    s.end();
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &[("model", "m")])
            .samples,
        vec![230]
    );
    assert_eq!(
        gw.histogram("llm_time_per_output_token_us", &[("model", "m")])
            .samples,
        vec![30_000]
    );
}

#[test]
fn non_streaming_duration_runs_from_the_request_headers_to_the_end_of_the_response() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", false));
    let body = serde_json::json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12},
    })
    .to_string();
    let (head, tail) = body.split_at(body.len() / 2);
    s.at_ms(300);
    s.response_headers(JSON);
    s.response_body_at(&[(420, head), (450, tail)]);
    s.end();
    assert_eq!(
        gw.histogram(
            "llm_request_duration_ms",
            &[("model", "m"), API, ("streaming", "false")]
        )
        .samples,
        vec![450]
    );
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &[]).count(),
        0,
        "no TTFT without streaming"
    );
    assert_eq!(
        gw.histogram("llm_time_per_output_token_us", &[]).count(),
        0,
        "no TPOT without streaming"
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[("token_type", "output"), ("source", "usage")]
        ),
        7
    );
}

#[test]
fn the_duration_of_an_aborted_stream_ends_when_envoy_logs_it() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("m", true));
    s.at_ms(100);
    s.response_headers(SSE);
    s.at_ms(150);
    s.response_chunk(token("a").as_bytes(), false);
    s.at_ms(900);
    s.client_abort();
    assert_eq!(
        gw.histogram("llm_request_duration_ms", &[("model", "m")])
            .samples,
        vec![900]
    );
}

#[test]
fn ttft_of_a_responses_api_stream_is_timed_at_the_first_text_delta() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(
        "/v1/responses",
        r#"{"model":"m","stream":true,"input":"hi"}"#,
    );
    let ev = |kind: &str, data: serde_json::Value| format!("event: {kind}\ndata: {data}\n\n");
    s.respond(
        SSE,
        &[
            (40, ev("response.created", serde_json::json!({"type": "response.created", "response": {"status": "in_progress"}}))),
            (60, ev("response.output_item.added", serde_json::json!({"type": "response.output_item.added"}))),
            (210, ev("response.output_text.delta", serde_json::json!({"type": "response.output_text.delta", "delta": "Hi"}))),
            (250, ev("response.output_text.delta", serde_json::json!({"type": "response.output_text.delta", "delta": " there"}))),
            (290, ev("response.output_text.delta", serde_json::json!({"type": "response.output_text.delta", "delta": "!"}))),
            (300, ev("response.completed", serde_json::json!({
                "type": "response.completed",
                "response": {"status": "completed", "usage": {"input_tokens": 9, "output_tokens": 5, "output_tokens_details": {"reasoning_tokens": 0}}},
            }))),
        ],
    );
    s.end();
    let labels = [("model", "m"), ("api", "responses")];
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &labels).samples,
        vec![210]
    );
    // (290 - 210) ms / (5 usage output tokens - 1) = 20000 µs.
    assert_eq!(
        gw.histogram("llm_time_per_output_token_us", &labels)
            .samples,
        vec![20_000]
    );
    assert_eq!(
        gw.series(
            "llm_tokens_total",
            &[
                ("api", "responses"),
                ("token_type", "output"),
                ("source", "usage")
            ]
        ),
        5
    );
    assert_eq!(
        gw.series(
            "llm_requests_total",
            &[("api", "responses"), ("outcome", "completed")]
        ),
        1
    );
}

#[test]
fn ttft_of_a_legacy_completions_stream_is_timed_at_the_first_text_choice() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(
        "/v1/completions",
        r#"{"model":"m","stream":true,"prompt":"a"}"#,
    );
    let text = |t: &str| {
        event(&serde_json::json!({"choices": [{"index": 0, "text": t, "finish_reason": null}]}))
    };
    s.respond(
        SSE,
        &[
            (70, text("")),
            (95, text("Paris")),
            (105, text(",")),
            (115, event(&serde_json::json!({"choices": [{"index": 0, "text": "", "finish_reason": "length"}]}))),
            (116, DONE.to_owned()),
        ],
    );
    s.end();
    let labels = [("model", "m"), ("api", "completions")];
    assert_eq!(
        gw.histogram("llm_time_to_first_token_ms", &labels).samples,
        vec![95]
    );
    assert_eq!(
        gw.histogram("llm_time_per_output_token_us", &labels)
            .samples,
        vec![10_000]
    );
}
