//! What the filter costs Envoy in host calls. Each call out of the VM costs Envoy 1.40 about
//! 10,000 instructions (BENCHMARKS.md, `tests/bench/filter_instructions.py`), far more than the
//! filter's own parsing of an event, so the budgets below are the product's price list: a change
//! that adds a call on the hot path fails here.

use crate::common::*;

fn json_answer() -> String {
    serde_json::json!({
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello"},
                     "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    })
    .to_string()
}

/// Host calls of one whole non-streaming chat request (after a first one has defined its
/// metrics, which later requests of the same series reuse).
fn non_streaming_calls() -> u32 {
    let gw = gateway();
    let mut total = 0;
    for _ in 0..2 {
        let mut s = gw.stream();
        s.post_json(CHAT, &chat_request("m", false));
        s.response_headers(JSON);
        s.response_chunk(json_answer().as_bytes(), true);
        total = s.end().host_calls;
    }
    total
}

/// Host calls of a streaming request with `tokens` token events, one per chunk.
fn stream_calls(tokens: usize) -> u32 {
    let gw = gateway();
    let mut total = 0;
    for _ in 0..2 {
        let mut s = gw.stream();
        s.post_json(CHAT, &chat_request("m", true));
        s.response_headers(SSE);
        s.response_chunk(role_chunk().as_bytes(), false);
        for i in 0..tokens {
            s.response_chunk(token(&format!("t{i}")).as_bytes(), false);
        }
        s.response_chunk(
            format!("{}{}{DONE}", finish(), usage_chunk(5, tokens as u64)).as_bytes(),
            true,
        );
        total = s.end().host_calls;
    }
    total
}

#[test]
fn a_request_on_another_path_costs_one_header_read() {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json("/healthz", "{}");
    s.response_headers(JSON);
    s.response_chunk(b"{}", true);
    assert_eq!(s.end().host_calls, 1);
}

#[test]
fn a_get_on_a_watched_path_costs_two_header_reads() {
    let gw = gateway();
    let mut s = gw.stream();
    s.request_headers_only(&[(":method", "GET"), (":path", CHAT)]);
    s.response_headers(JSON);
    s.response_chunk(b"{}", true);
    assert_eq!(s.end().host_calls, 2);
}

#[test]
fn a_non_streaming_request_costs_thirteen_host_calls() {
    // Request headers: `:path`, `:method`, the clock (3). Request body: one read, the in-flight
    // gauge up (2). Response headers: one read of the whole map (1). Response body: one read (1).
    // `proxy_on_log`: the clock, then requests, input and output tokens, duration, the gauge
    // down (6).
    assert_eq!(non_streaming_calls(), 13);
}

#[test]
fn each_further_stream_event_costs_a_body_read_and_a_clock_read() {
    let (few, many) = (stream_calls(4), stream_calls(36));
    assert_eq!(
        many - few,
        2 * 32,
        "{few} calls with 4 events, {many} with 36"
    );
}
