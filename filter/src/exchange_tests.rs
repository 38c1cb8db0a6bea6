//! Tests of the exchange state machine, and the golden fixtures of `tests/fixtures` replayed through
//! the native core at every split point (the same fixtures run through the real `.wasm` in the
//! `gateway-tests` crate).

use std::collections::BTreeMap;

use proptest::prelude::*;
use test_kit::fixture as kit;
use test_kit::wire;

use super::*;

const DC: u64 = RESPONSE_FLAG_DOWNSTREAM_DISCONNECT;
use crate::labels::{MemoryRegistry, ModelLabels};

const MS: u64 = 1_000_000;

fn cfg() -> Config {
    Config::default()
}

fn model_two(_: Option<&str>) -> ModelId {
    ModelId(2)
}

fn chat_stream_request(ex: &mut Exchange, config: &Config) {
    assert!(ex.request_body(
        br#"{"model":"m","stream":true}"#,
        true,
        config,
        &mut model_two
    ));
}

fn ops(obs: &Observation) -> Vec<(Series, Op)> {
    let mut v = Vec::new();
    obs.for_each_op(&mut |s, o| v.push((s, o)));
    v
}

fn token_ops(obs: &Observation) -> Vec<(TokenType, Source, u64)> {
    ops(obs)
        .into_iter()
        .filter_map(|(s, o)| match (s, o) {
            (Series::Tokens { token, source, .. }, Op::Add(n)) => Some((token, source, n)),
            _ => None,
        })
        .collect()
}

#[test]
fn a_stream_gives_exact_ttft_tpot_and_duration() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 1_000 * MS);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(
        Some(200),
        Some("text/event-stream; charset=utf-8"),
        None,
        false,
        &config,
    );
    ex.response_body(
        b"data: {\"choices\":[{\"delta\":{\"role\":\"assistant\",\"content\":\"\"}}]}\n\n",
        false,
        &config,
        &mut || panic!("no token yet: the clock must not be read"),
    );
    // 10 token events, 20 ms apart, the first 150 ms after the request headers.
    for i in 0..10u64 {
        let t = 1_150 * MS + i * 20 * MS;
        ex.response_body(wire::token("x").as_bytes(), false, &config, &mut || t);
    }
    ex.response_body(
        b"data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\ndata: [DONE]\n\n",
        true,
        &config,
        &mut || panic!("no token in the final chunk"),
    );
    let obs = ex.finish(1_400 * MS, &mut || {
        panic!("the response ended: no flags needed")
    });
    assert_eq!(obs.outcome, Outcome::Completed);
    assert_eq!(obs.ttft_ms, Some(150));
    // (last - first) / (n - 1) = 180 ms / 9 = 20 ms.
    assert_eq!(obs.tpot_us, Some(20_000));
    assert_eq!(obs.duration_ms, 400);
    assert!(obs.streaming);
    assert_eq!(
        token_ops(&obs),
        vec![(TokenType::Output, Source::Estimated, 10)]
    );
}

#[test]
fn usage_from_the_final_chunk_replaces_the_estimate_and_sets_tpot() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    ex.response_body(wire::token("ab").as_bytes(), false, &config, &mut || {
        100 * MS
    });
    ex.response_body(wire::token("cd").as_bytes(), false, &config, &mut || {
        200 * MS
    });
    let tail = "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n\
                data: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":5,\"prompt_tokens_details\":{\"cached_tokens\":4}}}\n\n\
                data: [DONE]\n\n";
    ex.response_body(tail.as_bytes(), true, &config, &mut || 300 * MS);
    let obs = ex.finish(300 * MS, &mut || 0);
    assert_eq!(
        token_ops(&obs),
        vec![
            (TokenType::Input, Source::Usage, 7),
            (TokenType::Output, Source::Usage, 5),
            (TokenType::CachedInput, Source::Usage, 4)
        ]
    );
    // 100 ms over 5 - 1 tokens.
    assert_eq!(obs.tpot_us, Some(25_000));
    assert_eq!(obs.ttft_ms, Some(100));
}

#[test]
fn the_last_usage_wins_with_continuous_usage() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    for n in 1..=3 {
        let e = format!(
            "data: {{\"choices\":[{{\"delta\":{{\"content\":\"t\"}}}}],\"usage\":{{\"prompt_tokens\":9,\"completion_tokens\":{n}}}}}\n\n"
        );
        ex.response_body(e.as_bytes(), false, &config, &mut || n * MS);
    }
    ex.response_body(b"data: [DONE]\n\n", true, &config, &mut || 0);
    let obs = ex.finish(10 * MS, &mut || 0);
    assert_eq!(
        token_ops(&obs),
        vec![
            (TokenType::Input, Source::Usage, 9),
            (TokenType::Output, Source::Usage, 3)
        ]
    );
}

#[test]
fn a_non_streaming_response_reports_usage_without_reading_the_clock() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 5 * MS);
    assert!(ex.request_body(br#"{"model":"m"}"#, true, &config, &mut model_two));
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    let body = br#"{"choices":[{"message":{"content":"hi"},"finish_reason":"stop"}],"usage":{"prompt_tokens":3,"completion_tokens":2,"completion_tokens_details":{"reasoning_tokens":1}}}"#;
    let (a, b) = body.split_at(40);
    ex.response_body(a, false, &config, &mut || panic!("clock"));
    ex.response_body(b, true, &config, &mut || panic!("clock"));
    let obs = ex.finish(25 * MS, &mut || panic!("flags"));
    assert_eq!(obs.outcome, Outcome::Completed);
    assert!(!obs.streaming);
    assert_eq!(
        (obs.ttft_ms, obs.tpot_us, obs.duration_ms),
        (None, None, 20)
    );
    assert_eq!(
        token_ops(&obs),
        vec![
            (TokenType::Input, Source::Usage, 3),
            (TokenType::Output, Source::Usage, 2),
            (TokenType::Reasoning, Source::Usage, 1)
        ]
    );
}

#[test]
fn an_error_status_is_an_error_and_its_body_is_not_read() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    assert!(ex.request_body(
        br#"{"model":"m","stream":true}"#,
        true,
        &config,
        &mut model_two
    ));
    ex.response_headers(Some(503), Some("text/html"), None, false, &config);
    assert!(!ex.wants_response_body());
    ex.response_body(b"<html>upstream down</html>", true, &config, &mut || 0);
    let obs = ex.finish(MS, &mut || 0);
    assert_eq!(
        (obs.outcome, obs.status),
        (Outcome::Error, StatusClass::S5xx)
    );
    assert!(obs.streaming, "the request asked for a stream");
    assert_eq!(obs.errors, ErrorSet::default());
}

#[test]
fn a_204_or_304_has_no_body_to_read_and_is_completed_without_a_parse_error() {
    let config = cfg();
    for status in [204, 304] {
        for (content_type, stream) in [("application/json", false), ("text/event-stream", true)] {
            for (end_at_headers, encoding) in [
                (true, None),
                (false, None),
                (true, Some("br")),
                (false, Some("gzip")),
            ] {
                let mut ex = Exchange::new(Api::ChatCompletions, 0);
                if stream {
                    chat_stream_request(&mut ex, &config);
                } else {
                    ex.request_body(br#"{"model":"m"}"#, true, &config, &mut model_two);
                }
                ex.response_headers(
                    Some(status),
                    Some(content_type),
                    None,
                    end_at_headers,
                    &config,
                );
                if !end_at_headers {
                    ex.response_body(b"", true, &config, &mut || 0);
                }
                let obs = ex.finish(MS, &mut || 0);
                let case = (status, content_type, end_at_headers, encoding);
                assert_eq!(obs.outcome, Outcome::Completed, "{case:?}");
                assert_eq!(obs.errors, ErrorSet::default(), "{case:?}");
                assert!(!obs.usage_missing, "{case:?}: no stream was read");
            }
        }
    }
}

#[test]
fn a_json_error_in_a_success_body_or_event_is_an_error() {
    let config = cfg();
    let mut ex = Exchange::new(Api::Completions, 0);
    ex.request_body(br#"{"model":"m"}"#, true, &config, &mut model_two);
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    ex.response_body(
        br#"{"error":{"message":"overloaded"}}"#,
        true,
        &config,
        &mut || 0,
    );
    assert_eq!(ex.finish(0, &mut || 0).outcome, Outcome::Error);

    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    ex.response_body(wire::token("a").as_bytes(), false, &config, &mut || MS);
    ex.response_body(
        b"data: {\"error\":{\"message\":\"boom\"}}\n\n",
        true,
        &config,
        &mut || 0,
    );
    let obs = ex.finish(2 * MS, &mut || 0);
    assert_eq!(
        (obs.outcome, obs.status),
        (Outcome::Error, StatusClass::S2xx)
    );
}

#[test]
fn a_stream_that_ends_without_its_end_marker_is_an_upstream_abort() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    ex.response_body(wire::token("a").as_bytes(), true, &config, &mut || MS);
    assert_eq!(ex.finish(2 * MS, &mut || 0).outcome, Outcome::UpstreamAbort);
}

#[test]
fn no_end_of_response_is_a_client_or_upstream_abort_by_the_flags() {
    let config = cfg();
    for (dc, want) in [
        (true, Outcome::ClientAbort),
        (false, Outcome::UpstreamAbort),
    ] {
        let mut ex = Exchange::new(Api::ChatCompletions, 0);
        chat_stream_request(&mut ex, &config);
        ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
        ex.response_body(wire::token("a").as_bytes(), false, &config, &mut || MS);
        let obs = ex.finish(9 * MS, &mut || if dc { DC } else { 0 });
        assert_eq!(obs.outcome, want);
        assert_eq!(obs.duration_ms, 9);
        assert_eq!(
            token_ops(&obs),
            vec![(TokenType::Output, Source::Estimated, 1)]
        );
    }
    // No response at all.
    let mut ex = Exchange::new(Api::Embeddings, 0);
    let obs = ex.finish(MS, &mut || DC);
    assert_eq!(
        (obs.outcome, obs.status, obs.model),
        (Outcome::ClientAbort, StatusClass::None, ModelId::UNKNOWN)
    );
    assert!(!obs.was_active);
}

#[test]
fn a_stream_whose_end_passed_is_completed_even_if_the_body_never_ends() {
    let config = cfg();
    // [DONE], a finish_reason and a final Responses event each end a stream.
    let ends = [
        (Api::ChatCompletions, "data: [DONE]\n\n"),
        (
            Api::ChatCompletions,
            "data: {\"choices\":[{\"delta\":{},\"finish_reason\":\"stop\"}]}\n\n",
        ),
        (
            Api::Responses,
            "event: response.completed\ndata: {\"type\":\"response.completed\",\"response\":{\"usage\":null}}\n\n",
        ),
    ];
    for (api, end) in ends {
        for flags in [DC, 0] {
            let mut ex = Exchange::new(api, 0);
            chat_stream_request(&mut ex, &config);
            ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
            ex.response_body(wire::token("a").as_bytes(), false, &config, &mut || MS);
            ex.response_body(end.as_bytes(), false, &config, &mut || 2 * MS);
            // The client (DC) or the upstream closes before the body's own end.
            let obs = ex.finish(3 * MS, &mut || flags);
            assert_eq!(obs.outcome, Outcome::Completed, "{end} flags {flags}");
        }
    }
}

#[test]
fn an_error_before_the_end_still_wins_over_an_early_close() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    ex.response_body(
        b"data: {\"error\":{\"message\":\"boom\"}}\n\ndata: [DONE]\n\n",
        false,
        &config,
        &mut || 0,
    );
    assert_eq!(ex.finish(MS, &mut || DC).outcome, Outcome::Error);
}

#[test]
fn a_request_body_in_many_chunks_or_with_trailers_is_parsed_once_complete() {
    let config = cfg();
    let body = br#"{"messages":[{"role":"user","content":"hello"}],"model":"Qwen/Qwen3-1.7B","stream":false}"#;
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    let mut seen = Vec::new();
    let mut resolve = |m: Option<&str>| {
        seen.push(m.map(str::to_owned));
        ModelId(5)
    };
    for c in body.chunks(7) {
        assert!(!ex.request_body(c, false, &config, &mut resolve));
    }
    assert!(ex.request_trailers(&config, &mut resolve));
    assert!(!ex.wants_request_body());
    assert_eq!(seen, vec![Some("Qwen/Qwen3-1.7B".to_owned())]);
    assert_eq!(ex.model(), ModelId(5));
}

#[test]
fn an_oversized_request_is_counted_and_gets_the_unknown_model() {
    let config = Config {
        max_request_body_bytes: 16,
        ..cfg()
    };
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    let mut resolve = |m: Option<&str>| {
        assert_eq!(m, None);
        ModelId::UNKNOWN
    };
    assert!(!ex.request_body(b"{\"model\":", false, &config, &mut resolve));
    assert!(ex.request_body(b"\"a-long-model-name\"}", true, &config, &mut resolve));
    assert!(!ex.wants_request_body());
    ex.response_headers(Some(200), Some("text/event-stream"), None, true, &config);
    let obs = ex.finish(0, &mut || 0);
    assert!(obs.errors.contains(ErrorKind::RequestTooLarge));
    assert!(obs.streaming, "falls back to the response's content type");
    assert!(obs.was_active);
}

#[test]
fn an_unreadable_request_is_a_request_parse_error() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    assert!(ex.request_body(b"model=gpt", true, &config, &mut |m| {
        assert_eq!(m, None);
        ModelId::UNKNOWN
    }));
    let obs = ex.finish(0, &mut || 0);
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::RequestParse]
    );
}

#[test]
fn a_response_in_an_unreadable_encoding_is_counted_and_not_read() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.request_body(br#"{"model":"m"}"#, true, &config, &mut model_two);
    ex.response_headers(
        Some(200),
        Some("application/json"),
        Some("br"),
        false,
        &config,
    );
    assert!(!ex.wants_response_body());
    ex.response_end();
    let obs = ex.finish(0, &mut || 0);
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::EncodedBody]
    );
    assert_eq!(obs.outcome, Outcome::Completed);
    assert_eq!(token_ops(&obs), vec![]);
    // identity is readable
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.response_headers(
        Some(200),
        Some("application/json"),
        Some(" Identity "),
        false,
        &config,
    );
    assert!(ex.wants_response_body());
}

#[test]
fn an_oversized_json_response_is_counted_and_dropped() {
    let config = Config {
        max_response_body_bytes: 10,
        ..cfg()
    };
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    ex.response_body(b"{\"usage\":", false, &config, &mut || 0);
    ex.response_body(b"{\"prompt_tokens\":1}}", true, &config, &mut || 0);
    let obs = ex.finish(0, &mut || 0);
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::ResponseTooLarge]
    );
    assert_eq!(obs.usage, None);
}

#[test]
fn an_oversized_event_is_counted_once_and_later_events_still_count() {
    let config = Config {
        max_event_bytes: 128,
        ..cfg()
    };
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    let big = wire::token(&"x".repeat(200));
    ex.response_body(big.as_bytes(), false, &config, &mut || {
        panic!("skipped event")
    });
    ex.response_body(big.as_bytes(), false, &config, &mut || {
        panic!("skipped event")
    });
    ex.response_body(wire::token("y").as_bytes(), false, &config, &mut || MS);
    ex.response_body(b"data: [DONE]\n\n", true, &config, &mut || 0);
    let obs = ex.finish(MS, &mut || 0);
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::EventTooLarge]
    );
    assert_eq!(obs.token_events, 1);
    assert_eq!(obs.outcome, Outcome::Completed);
}

#[test]
fn the_op_list_never_holds_a_zero_counter_and_lowers_the_gauge_once() {
    let config = cfg();
    let mut ex = Exchange::new(Api::Embeddings, 0);
    ex.request_body(
        br#"{"model":"e","input":"x"}"#,
        true,
        &config,
        &mut model_two,
    );
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    ex.response_body(
        br#"{"data":[],"usage":{"prompt_tokens":0,"total_tokens":0}}"#,
        true,
        &config,
        &mut || 0,
    );
    let obs = ex.finish(MS, &mut || 0);
    let all = ops(&obs);
    assert!(all.iter().all(|(_, op)| *op != Op::Add(0)));
    assert_eq!(token_ops(&obs), vec![]);
    let gauges: Vec<_> = all
        .iter()
        .filter(|(s, _)| matches!(s, Series::ActiveRequests { .. }))
        .collect();
    assert_eq!(gauges.len(), 1);
    assert_eq!(gauges[0].1, Op::GaugeAdd(-1));
}

#[test]
fn a_single_token_stream_has_ttft_but_no_tpot() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    ex.response_body(wire::token("x").as_bytes(), false, &config, &mut || 42 * MS);
    ex.response_body(b"data: [DONE]\n\n", true, &config, &mut || 0);
    let obs = ex.finish(50 * MS, &mut || 0);
    assert_eq!((obs.ttft_ms, obs.tpot_us), (Some(42), None));
}

fn has(obs: &Observation, want: fn(&Series) -> bool) -> bool {
    ops(obs).iter().any(|(s, _)| want(s))
}

/// A chat stream: each chunk at its time (ms), then `tail` (usage, end) as the last chunk.
fn stream(chunks: &[(u64, &str)], tail: &str) -> Observation {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    for (t, c) in chunks {
        ex.response_body(c.as_bytes(), false, &config, &mut || t * MS);
    }
    ex.response_body(tail.as_bytes(), true, &config, &mut || 999 * MS);
    ex.finish(1_000 * MS, &mut || 0)
}

/// The usage chunk (3 input tokens, `output` output tokens), then `[DONE]`.
fn usage_chunk(output: u64) -> String {
    wire::usage_chunk(3, output) + wire::DONE
}

#[test]
fn a_stream_without_usage_is_counted_whatever_its_outcome() {
    let x = wire::token("x");
    let obs = stream(&[(1, &x)], "data: [DONE]\n\n");
    assert!(obs.usage_missing);
    assert!(has(&obs, |s| matches!(s, Series::UsageMissing { .. })));
    assert!(!stream(&[(1, &x)], &usage_chunk(1)).usage_missing);
    // Aborted, or ended in an error: still no usage.
    let config = cfg();
    for (tail, flags) in [("", DC), ("data: {\"error\":{\"message\":\"x\"}}\n\n", 0)] {
        let mut ex = Exchange::new(Api::ChatCompletions, 0);
        chat_stream_request(&mut ex, &config);
        ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
        ex.response_body(x.as_bytes(), false, &config, &mut || MS);
        ex.response_body(tail.as_bytes(), false, &config, &mut || MS);
        let obs = ex.finish(2 * MS, &mut || flags);
        assert!(obs.usage_missing, "{:?}", obs.outcome);
    }
    // Not a stream the filter read: JSON, an error status, an encoded body, no response at all.
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    ex.response_body(b"{}", true, &config, &mut || 0);
    assert!(!ex.finish(0, &mut || 0).usage_missing);
    for (status, encoding) in [(Some(500), None), (Some(200), Some("br"))] {
        let mut ex = Exchange::new(Api::ChatCompletions, 0);
        ex.response_headers(status, Some("text/event-stream"), encoding, true, &config);
        assert!(
            !ex.finish(0, &mut || 0).usage_missing,
            "{status:?} {encoding:?}"
        );
    }
    assert!(
        !Exchange::new(Api::ChatCompletions, 0)
            .finish(0, &mut || DC)
            .usage_missing
    );
}

#[test]
fn a_usage_more_than_ten_percent_off_the_event_count_is_a_mismatch() {
    let ten: Vec<(u64, String)> = (0..10).map(|i| (i, wire::token("x"))).collect();
    let chunks: Vec<(u64, &str)> = ten.iter().map(|(t, c)| (*t, c.as_str())).collect();
    // 10 events; a mismatch is |usage - events| * 10 > usage, measured against the usage: 11 is
    // within (10 > 11 is false), 9 is not (10 > 9), nor 12 (20 > 12).
    for (output, mismatch) in [
        (8, true),
        (9, true),
        (10, false),
        (11, false),
        (12, true),
        (100, true),
        (0, true),
    ] {
        let obs = stream(&chunks, &usage_chunk(output));
        assert_eq!(obs.token_count_mismatch, mismatch, "usage {output}");
        assert_eq!(
            has(&obs, |s| matches!(s, Series::TokenCountMismatch { .. })),
            mismatch
        );
        assert!(!obs.usage_missing);
    }
    // No token events (hidden reasoning only), or no usage: no comparison.
    assert!(!stream(&[], &usage_chunk(50)).token_count_mismatch);
    assert!(!stream(&chunks, "data: [DONE]\n\n").token_count_mismatch);
    // A non-streaming response never compares.
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    ex.response_body(
        br#"{"usage":{"completion_tokens":40}}"#,
        true,
        &config,
        &mut || 0,
    );
    assert!(!ex.finish(0, &mut || 0).token_count_mismatch);
}

#[test]
fn the_longest_gap_between_token_chunks_is_recorded() {
    let x = wire::token("x");
    let two = format!("{x}{x}");
    let obs = stream(
        &[(100, &x), (120, &x), (170, &x), (180, &x)],
        "data: [DONE]\n\n",
    );
    assert_eq!(obs.max_gap_ms, Some(50));
    assert!(ops(&obs).contains(&(
        Series::MaxInterTokenGap {
            model: ModelId(2),
            api: Api::ChatCompletions
        },
        Op::Record(50)
    )));
    // A chunk without tokens does not end a gap.
    let role = "data: {\"choices\":[{\"delta\":{\"role\":\"assistant\"}}]}\n\n";
    let obs = stream(&[(10, &x), (500, role), (700, &x)], "data: [DONE]\n\n");
    assert_eq!(obs.max_gap_ms, Some(690));
    // Two events in one chunk: a gap of 0. One event: no gap at all.
    assert_eq!(stream(&[(10, &two)], "").max_gap_ms, Some(0));
    let obs = stream(&[(10, &x)], "data: [DONE]\n\n");
    assert_eq!(obs.max_gap_ms, None);
    assert!(!has(&obs, |s| matches!(s, Series::MaxInterTokenGap { .. })));
}

fn delta_event(field: &str, text: &str) -> String {
    wire::delta_chunk(serde_json::json!({ field: text }), None)
}

fn responses_event(kind: &str, delta: &str) -> String {
    wire::named_event(
        kind,
        &serde_json::json!({"type": kind, "delta": delta}).to_string(),
    )
}

#[test]
fn reasoning_content_then_content_gives_answer_time_and_reasoning_duration() {
    let (r1, r2) = (
        delta_event("reasoning_content", "Let me"),
        delta_event("reasoning_content", " see"),
    );
    let a = delta_event("content", "4");
    let obs = stream(&[(100, &r1), (150, &r2), (300, &a)], "data: [DONE]\n\n");
    assert_eq!(obs.ttft_ms, Some(100));
    assert_eq!(obs.ttfat_ms, Some(300));
    assert_eq!(obs.reasoning_ms, Some(200));
    let all = ops(&obs);
    let (model, api) = (ModelId(2), Api::ChatCompletions);
    assert!(all.contains(&(
        Series::TimeToFirstAnswerToken { model, api },
        Op::Record(300)
    )));
    assert!(all.contains(&(Series::ReasoningDuration { model, api }, Op::Record(200))));
    // `reasoning` (Ollama, vLLM >= 0.10) is reasoning too.
    let r = delta_event("reasoning", "hmm");
    let obs = stream(&[(10, &r), (40, &a)], "data: [DONE]\n\n");
    assert_eq!((obs.ttfat_ms, obs.reasoning_ms), (Some(40), Some(30)));
}

#[test]
fn raw_think_tags_in_content_are_reasoning_until_the_closing_tag() {
    let parts = [
        (50, "<think>"),
        (80, "\nOkay, 2+2"),
        (120, "</think>"),
        (130, "\n\n"),
        (200, "It is 4."),
    ];
    let events: Vec<(u64, String)> = parts
        .iter()
        .map(|(t, p)| (*t, delta_event("content", p)))
        .collect();
    let chunks: Vec<(u64, &str)> = events.iter().map(|(t, e)| (*t, e.as_str())).collect();
    let obs = stream(&chunks, "data: [DONE]\n\n");
    assert_eq!(obs.token_events, 5);
    assert_eq!(obs.ttft_ms, Some(50));
    assert_eq!(obs.ttfat_ms, Some(200));
    assert_eq!(obs.reasoning_ms, Some(150));
    // The tags split across events, and the answer in the closing tag's event.
    let parts = [
        (50, "<th"),
        (60, "ink>hm"),
        (90, "m</thi"),
        (120, "nk>\n\nYes"),
    ];
    let events: Vec<(u64, String)> = parts
        .iter()
        .map(|(t, p)| (*t, delta_event("content", p)))
        .collect();
    let chunks: Vec<(u64, &str)> = events.iter().map(|(t, e)| (*t, e.as_str())).collect();
    let obs = stream(&chunks, "data: [DONE]\n\n");
    assert_eq!((obs.ttfat_ms, obs.reasoning_ms), (Some(120), Some(60)));
    // One event split across two chunks: the event counts when its second half arrives.
    let e = delta_event("content", "<think>x</think>Hi");
    let (a, b) = e.split_at(20);
    let obs = stream(&[(10, a), (70, b)], "data: [DONE]\n\n");
    assert_eq!((obs.ttfat_ms, obs.reasoning_ms), (Some(70), Some(0)));
}

#[test]
fn without_reasoning_the_first_answer_token_is_the_first_token() {
    let x = wire::token("x");
    let obs = stream(&[(42, &x), (50, &x)], "data: [DONE]\n\n");
    assert_eq!(
        (obs.ttft_ms, obs.ttfat_ms, obs.reasoning_ms),
        (Some(42), Some(42), None)
    );
    assert!(!has(&obs, |s| matches!(
        s,
        Series::ReasoningDuration { .. }
    )));
    // A tool call or refusal is an answer too, and ends any think-tag matching.
    let tool = "data: {\"choices\":[{\"delta\":{\"tool_calls\":[{\"index\":0,\"function\":{\"arguments\":\"{\"}}]}}]}\n\n";
    let think = delta_event("content", "<think>");
    let obs = stream(&[(5, tool), (9, &think)], "data: [DONE]\n\n");
    assert_eq!((obs.ttfat_ms, obs.reasoning_ms), (Some(5), None));
}

#[test]
fn reasoning_without_an_answer_or_after_it_gives_no_duration() {
    let r = delta_event("reasoning_content", "hmm");
    let obs = stream(&[(10, &r), (20, &r)], "data: [DONE]\n\n");
    assert_eq!(
        (obs.ttft_ms, obs.ttfat_ms, obs.reasoning_ms),
        (Some(10), None, None)
    );
    assert!(!has(&obs, |s| matches!(
        s,
        Series::TimeToFirstAnswerToken { .. } | Series::ReasoningDuration { .. }
    )));
    // Reasoning that starts after the answer began is not "thinking before answering".
    let a = delta_event("content", "Hi");
    let obs = stream(&[(10, &a), (20, &r)], "data: [DONE]\n\n");
    assert_eq!((obs.ttfat_ms, obs.reasoning_ms), (Some(10), None));
    // Whitespace before anything else is neither: the answer starts at the text.
    let (nl, hi) = (delta_event("content", "\n\n"), delta_event("content", "Hi"));
    let obs = stream(&[(10, &nl), (20, &hi)], "data: [DONE]\n\n");
    assert_eq!((obs.ttft_ms, obs.ttfat_ms), (Some(10), Some(20)));
}

#[test]
fn reasoning_and_answer_in_one_chunk_take_its_time() {
    let both = format!(
        "{}{}",
        delta_event("reasoning_content", "ok"),
        delta_event("content", "Yes")
    );
    let obs = stream(&[(30, &both)], "data: [DONE]\n\n");
    assert_eq!((obs.ttfat_ms, obs.reasoning_ms), (Some(30), Some(0)));
}

#[test]
fn responses_reasoning_deltas_then_output_text() {
    let config = cfg();
    let mut ex = Exchange::new(Api::Responses, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    for (t, e) in [
        (
            100,
            responses_event("response.reasoning_summary_text.delta", "Plan"),
        ),
        (180, responses_event("response.reasoning_text.delta", "x")),
        (400, responses_event("response.output_text.delta", "Hi")),
    ] {
        ex.response_body(e.as_bytes(), false, &config, &mut || t * MS);
    }
    ex.response_body(
        b"data: {\"type\":\"response.completed\",\"response\":{}}\n\n",
        true,
        &config,
        &mut || 0,
    );
    let obs = ex.finish(500 * MS, &mut || 0);
    assert_eq!(
        (obs.ttft_ms, obs.ttfat_ms, obs.reasoning_ms),
        (Some(100), Some(400), Some(300))
    );
}

#[test]
fn non_streaming_responses_have_no_answer_time() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    ex.response_body(
        br#"{"choices":[{"message":{"content":"<think>a</think>b"}}]}"#,
        true,
        &config,
        &mut || panic!("clock"),
    );
    let obs = ex.finish(MS, &mut || 0);
    assert_eq!((obs.ttfat_ms, obs.reasoning_ms), (None, None));
}

const THINK_TEXT: &str =
    "<think>\nThe user asks 2+2. </thinking is no tag> <\n\"quoted\"</think>\n\n2 + 2 = **4**.";

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, .. ProptestConfig::default() })]

    /// Any cut of the text into deltas, and any cut of the stream into chunks, gives the same
    /// observation, with the answer at the chunk that completes the event holding the first
    /// answer byte and the reasoning at the one that completes `<think>`.
    #[test]
    fn random_cuts_of_a_think_stream_give_the_same_observation(
        text_cuts in proptest::collection::vec(1..THINK_TEXT.len(), 0..10),
        byte_cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
    ) {
        let mut cuts = text_cuts;
        cuts.push(THINK_TEXT.len());
        cuts.sort_unstable();
        cuts.dedup();
        let first_answer = THINK_TEXT.find("</think>").unwrap() + "</think>\n\n".len();
        let open_end = "<think>".len() - 1;
        let (mut body, mut start) = (String::new(), 0);
        let (mut answer_event_end, mut think_event_end) = (0, 0);
        for &end in &cuts {
            body.push_str(&delta_event("content", &THINK_TEXT[start..end]));
            if (start..end).contains(&first_answer) {
                answer_event_end = body.len();
            }
            if (start..end).contains(&open_end) {
                think_event_end = body.len();
            }
            start = end;
        }
        body.push_str("data: [DONE]\n\n");
        let mut points: Vec<usize> = byte_cuts.iter().map(|c| c.index(body.len() + 1)).collect();
        points.push(body.len());
        points.sort_unstable();
        // A chunk's clock is its end offset (in ms): an event counts when its last byte arrives.
        let at = |offset: usize| *points.iter().find(|p| **p >= offset).unwrap() as u64;
        let config = cfg();
        let mut ex = Exchange::new(Api::ChatCompletions, 0);
        chat_stream_request(&mut ex, &config);
        ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
        let mut from = 0;
        for &p in &points {
            let end = p == body.len();
            ex.response_body(&body.as_bytes()[from..p], end, &config, &mut || p as u64 * MS);
            from = p;
        }
        let obs = ex.finish(10_000 * MS, &mut || 0);
        prop_assert_eq!(obs.outcome, Outcome::Completed);
        prop_assert_eq!(obs.token_events, cuts.len() as u64);
        prop_assert_eq!(obs.ttfat_ms, Some(at(answer_event_end)));
        prop_assert_eq!(obs.reasoning_ms, Some(at(answer_event_end) - at(think_event_end)));
    }
}

fn anthropic(event: &str, data: &str) -> String {
    wire::named_event(event, data)
}

#[test]
fn an_anthropic_messages_stream_gives_tokens_latencies_and_its_end() {
    let config = cfg();
    let mut ex = Exchange::new(Api::Messages, 0);
    ex.request_body(
        br#"{"model":"claude-sonnet-4-5","max_tokens":1024,"stream":true,"thinking":{"type":"enabled","budget_tokens":512},"messages":[{"role":"user","content":"2+2?"}]}"#,
        true,
        &config,
        &mut model_two,
    );
    ex.response_headers(
        Some(200),
        Some("text/event-stream; charset=utf-8"),
        None,
        false,
        &config,
    );
    let block = |i: u32, delta: &str| {
        anthropic(
            "content_block_delta",
            &format!(r#"{{"type":"content_block_delta","index":{i},"delta":{delta}}}"#),
        )
    };
    let chunks = [
        (
            50,
            anthropic(
                "message_start",
                r#"{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"stop_sequence":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":40,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
            ),
        ),
        (
            60,
            anthropic(
                "content_block_start",
                r#"{"type":"content_block_start","index":0,"content_block":{"type":"thinking","thinking":"","signature":""}}"#,
            ),
        ),
        (
            100,
            block(0, r#"{"type":"thinking_delta","thinking":"2 plus 2"}"#),
        ),
        (
            150,
            block(0, r#"{"type":"thinking_delta","thinking":" is 4."}"#),
        ),
        (
            160,
            block(
                0,
                r#"{"type":"signature_delta","signature":"EqQBCgIYAhIM"}"#,
            ),
        ),
        (
            170,
            anthropic(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":0}"#,
            ),
        ),
        (180, anthropic("ping", r#"{"type": "ping"}"#)),
        (400, block(1, r#"{"type":"text_delta","text":"4"}"#)),
        (420, block(1, r#"{"type":"text_delta","text":"."}"#)),
        (
            430,
            anthropic(
                "content_block_stop",
                r#"{"type":"content_block_stop","index":1}"#,
            ),
        ),
        (
            440,
            anthropic(
                "message_delta",
                r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":18}}"#,
            ),
        ),
        (450, anthropic("message_stop", r#"{"type":"message_stop"}"#)),
    ];
    for (t, c) in &chunks {
        ex.response_body(c.as_bytes(), false, &config, &mut || t * MS);
    }
    // The client closes after message_stop, before the body's end.
    let obs = ex.finish(500 * MS, &mut || DC);
    assert_eq!(obs.outcome, Outcome::Completed);
    assert_eq!(obs.api, Api::Messages);
    assert_eq!(obs.token_events, 4);
    assert_eq!(
        (obs.ttft_ms, obs.ttfat_ms, obs.reasoning_ms, obs.max_gap_ms),
        (Some(100), Some(400), Some(300), Some(250))
    );
    assert_eq!(
        token_ops(&obs),
        vec![
            (TokenType::Input, Source::Usage, 165),
            (TokenType::Output, Source::Usage, 18),
            (TokenType::CachedInput, Source::Usage, 100),
            (TokenType::CacheCreationInput, Source::Usage, 40),
        ]
    );
    // 4 events against 18 reported tokens.
    assert!(obs.token_count_mismatch && !obs.usage_missing);
    let stat = Series::Tokens {
        model: ModelId(2),
        api: Api::Messages,
        token: TokenType::CacheCreationInput,
        source: Source::Usage,
    }
    .stat_name("claude");
    assert_eq!(
        stat,
        "model=.=claude;.;api=.=messages;.;token_type=.=cache_creation_input;.;source=.=usage;.;llm_tokens_total"
    );
}

#[test]
fn an_anthropic_error_event_is_an_error() {
    let config = cfg();
    let mut ex = Exchange::new(Api::Messages, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
    let body = format!(
        "{}{}",
        anthropic(
            "message_start",
            r#"{"type":"message_start","message":{"usage":{"input_tokens":9,"output_tokens":1}}}"#
        ),
        anthropic(
            "error",
            r#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#
        )
    );
    ex.response_body(body.as_bytes(), true, &config, &mut || MS);
    let obs = ex.finish(2 * MS, &mut || 0);
    assert_eq!(obs.outcome, Outcome::Error);
    assert_eq!(
        token_ops(&obs),
        vec![
            (TokenType::Input, Source::Usage, 9),
            (TokenType::Output, Source::Usage, 1)
        ]
    );
}

// ---------------------------------------------------------------------------------------------
// Golden fixtures, replayed natively.

/// A golden fixture (read by the shared [`test_kit::fixture`] reader) as the core replays it.
struct Fixture {
    name: String,
    config: Config,
    method: String,
    path: String,
    request: Vec<u8>,
    status: u16,
    headers: BTreeMap<String, String>,
    response: Vec<u8>,
    end: kit::End,
    expect: BTreeMap<String, u64>,
}

fn load_fixtures() -> Vec<Fixture> {
    let all = kit::load_all(&kit::fixtures_dir()).unwrap_or_else(|e| panic!("{e:#}"));
    assert!(
        all.len() >= 20,
        "expected the golden fixtures in {}",
        kit::fixtures_dir().display()
    );
    all.into_iter()
        .map(|f| Fixture {
            config: Config::parse(f.config_text().as_bytes()).unwrap(),
            method: f.request.method.clone(),
            path: f.request.path.clone(),
            request: f.request_body(),
            status: f.response.status,
            headers: f
                .response
                .headers
                .iter()
                .map(|(k, v)| (k.to_ascii_lowercase(), v.clone()))
                .collect(),
            response: f.response_body().unwrap(),
            end: f.end,
            expect: f
                .expect
                .iter()
                .map(|e| {
                    (
                        kit::series_key(&e.metric, &e.labels),
                        e.value.or(e.count).unwrap(),
                    )
                })
                .collect(),
            name: f.name,
        })
        .collect()
}

/// Replays a fixture with the response body cut into `chunks`; returns the resulting series
/// (counters by value, histograms by sample count; gauges must net to zero).
fn replay(f: &Fixture, chunks: &[&[u8]]) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    let Some(api) = f
        .config
        .api_for_path(&f.path)
        .filter(|_| f.method == "POST")
    else {
        return out;
    };
    let mut labels = ModelLabels::new(&f.config.models, f.config.max_models);
    let mut registry = MemoryRegistry::default();
    let mut ex = Exchange::new(api, 0);
    ex.request_body(&f.request, true, &f.config, &mut |m| {
        labels.resolve(m, &mut registry)
    });
    let header = |n: &str| f.headers.get(n).map(String::as_str);
    ex.response_headers(
        Some(f.status),
        header("content-type"),
        header("content-encoding"),
        false,
        &f.config,
    );
    let last = chunks.len().saturating_sub(1);
    let complete = f.end == kit::End::Complete;
    let mut t = 0;
    for (i, c) in chunks.iter().enumerate() {
        t += MS;
        if ex.wants_response_body() {
            ex.response_body(c, complete && i == last, &f.config, &mut || t);
        }
    }
    if complete && (chunks.is_empty() || !ex.wants_response_body()) {
        ex.response_end();
    }
    let obs = ex.finish(t + MS, &mut || {
        if f.end == kit::End::ClientAbort {
            DC
        } else {
            0
        }
    });
    let mut gauge = 0i64;
    obs.for_each_op(&mut |series, op| {
        let name = series.stat_name(labels.name(series.model().unwrap_or(ModelId::UNKNOWN)));
        let (metric, tags) = split_stat_name(&name);
        match op {
            Op::Add(n) => *out.entry(kit::series_key(metric, &tags)).or_default() += n,
            Op::Record(_) => *out.entry(kit::series_key(metric, &tags)).or_default() += 1,
            Op::GaugeAdd(n) => gauge += n,
        }
    });
    assert_eq!(gauge, -i64::from(obs.was_active));
    out
}

/// Undoes the Istio tag encoding the way Envoy's `stats_tags` regexes do.
fn split_stat_name(name: &str) -> (&str, BTreeMap<String, String>) {
    let mut tags = BTreeMap::new();
    let mut rest = name;
    while let Some((tag, after)) = rest.split_once(";.;") {
        let (k, v) = tag.split_once("=.=").unwrap();
        tags.insert(k.to_owned(), v.to_owned());
        rest = after;
    }
    (rest, tags)
}

#[test]
fn every_golden_fixture_gives_its_expected_series() {
    let mut failures = Vec::new();
    for f in load_fixtures() {
        let got = replay(&f, &[&f.response]);
        if got != f.expect {
            failures.push(format!(
                "{}:\n  want {:?}\n  got  {:?}",
                f.name, f.expect, got
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_fixture_gives_the_same_series_at_the_cuts_every_suite_uses() {
    // The cuts the wasm host suite replays each fixture at, here on the core itself.
    for f in load_fixtures() {
        let whole = replay(&f, &[&f.response]);
        for split in kit::standard_splits() {
            assert_eq!(
                replay(&f, &split.cut(&f.response)),
                whole,
                "{} {split:?}",
                f.name
            );
        }
    }
}

#[test]
fn every_fixture_gives_the_same_series_at_every_split_point_and_byte_by_byte() {
    for f in load_fixtures() {
        let whole = replay(&f, &[&f.response]);
        for i in 0..=f.response.len() {
            let (a, b) = f.response.split_at(i);
            assert_eq!(replay(&f, &[a, b]), whole, "{} split at {i}", f.name);
        }
        let bytes: Vec<&[u8]> = f.response.chunks(1).collect();
        assert_eq!(replay(&f, &bytes), whole, "{} byte by byte", f.name);
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, .. ProptestConfig::default() })]

    #[test]
    fn random_chunking_never_changes_the_series(cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..12)) {
        for f in load_fixtures() {
            let whole = replay(&f, &[&f.response]);
            let points: Vec<usize> = cuts.iter().map(|c| c.index(f.response.len() + 1)).collect();
            let chunks = kit::split_at_points(&f.response, &points);
            prop_assert_eq!(replay(&f, &chunks), whole, "{}", f.name);
        }
    }

    #[test]
    fn arbitrary_response_bytes_never_panic(body in proptest::collection::vec(any::<u8>(), 0..2048), sse in any::<bool>(), cut in any::<prop::sample::Index>()) {
        let config = Config { max_event_bytes: 64, max_response_body_bytes: 512, ..Config::default() };
        let mut ex = Exchange::new(Api::ChatCompletions, 0);
        ex.request_body(&body, true, &config, &mut |_| ModelId::UNKNOWN);
        ex.response_headers(Some(200), Some(if sse { "text/event-stream" } else { "application/json" }), None, false, &config);
        let (a, b) = body.split_at(cut.index(body.len() + 1));
        ex.response_body(a, false, &config, &mut || 1);
        ex.response_body(b, true, &config, &mut || 2);
        let obs = ex.finish(3, &mut || 0);
        obs.for_each_op(&mut |_, op| assert_ne!(op, Op::Add(0)));
    }
}

#[test]
fn per_stream_state_is_small() {
    // The documented bound (the `exchange` module doc and README): at most 256 bytes of state per
    // exchange (248 today) and 160 for the boxed SSE decoder (88), plus what is being read.
    let exchange = std::mem::size_of::<Exchange>();
    let decoder = std::mem::size_of::<Decoder>();
    assert!(exchange <= 256, "Exchange is {exchange} bytes");
    assert!(decoder <= 160, "Decoder is {decoder} bytes");
}

/// A chat stream that has sent one token event (at 1 ms) and not ended.
fn stream_with_one_token(config: &Config) -> Exchange {
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.request_body(br#"{"model":"m","stream":true}"#, true, config, &mut |_| {
        ModelId(2)
    });
    ex.response_headers(Some(200), Some("text/event-stream"), None, false, config);
    ex.response_body(
        b"data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\n",
        false,
        config,
        &mut || MS,
    );
    ex
}

#[test]
fn envoys_own_timeouts_are_timeouts_not_errors_or_aborts() {
    let config = Config::default();
    // The route timeout fired before the upstream answered: Envoy's own 504, flag UT.
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.request_body(
        br#"{"model":"m","stream":true}"#,
        true,
        &config,
        &mut |_| ModelId(2),
    );
    ex.response_headers(Some(504), Some("text/plain"), None, false, &config);
    ex.response_body(b"upstream request timeout", true, &config, &mut || 0);
    assert_eq!(ex.finish(MS, &mut || 0x4).outcome, Outcome::Timeout);
    // The same status from the upstream itself (no flag) is an error.
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.request_body(br#"{"model":"m"}"#, true, &config, &mut |_| ModelId(2));
    ex.response_headers(Some(504), Some("application/json"), None, true, &config);
    assert_eq!(ex.finish(MS, &mut || 0).outcome, Outcome::Error);
    // The stream idle timeout cut a stream mid-way (flag SI): a timeout, with the tokens seen.
    let mut ex = stream_with_one_token(&config);
    let obs = ex.finish(9 * MS, &mut || 0x1_0000);
    assert_eq!(obs.outcome, Outcome::Timeout);
    assert_eq!(obs.token_events, 1);
}

#[test]
fn an_http2_client_resetting_its_stream_is_a_client_abort() {
    let config = Config::default();
    let mut ex = stream_with_one_token(&config);
    // Envoy's flag DR (downstream remote reset): RST_STREAM from an HTTP/2 client.
    assert_eq!(
        ex.finish(2 * MS, &mut || 0x1000_0000).outcome,
        Outcome::ClientAbort
    );
}

#[test]
fn extra_label_ids_set_at_the_request_headers_reach_the_observation() {
    let config = Config::default();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    assert_eq!(ex.labels(), LabelIds::default());
    ex.set_labels(LabelIds([5, 1, 0, 0]));
    ex.request_body(br#"{"model":"m"}"#, true, &config, &mut |_| ModelId(2));
    ex.response_headers(Some(200), Some("application/json"), None, false, &config);
    ex.response_body(
        br#"{"usage":{"prompt_tokens":3}}"#,
        true,
        &config,
        &mut || 0,
    );
    let obs = ex.finish(MS, &mut || 0);
    assert_eq!(obs.labels, LabelIds([5, 1, 0, 0]));
    assert_eq!(ex.labels(), LabelIds([5, 1, 0, 0]));
}

// ---------------------------------------------------------------------------------------------
// Compressed (gzip, deflate) response bodies.

use crate::encoding::tests::{deflate_parts, gzip, gzip_parts};
use crate::encoding::{BodyCoding, Coding};

const USAGE_JSON: &str = r#"{"id":"chatcmpl-1","object":"chat.completion","model":"m","choices":[{"index":0,"message":{"role":"assistant","content":"pong"},"finish_reason":"stop"}],"usage":{"prompt_tokens":11,"completion_tokens":7,"total_tokens":18}}"#;

/// A non-streaming chat exchange whose body comes in `chunks`, the last one ending it.
fn json_exchange(encoding: Option<&str>, chunks: &[&[u8]], config: &Config) -> Observation {
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.request_body(br#"{"model":"m"}"#, true, config, &mut model_two);
    ex.response_headers(Some(200), Some("application/json"), encoding, false, config);
    for (i, c) in chunks.iter().enumerate() {
        if ex.wants_response_body() {
            ex.response_body(c, i + 1 == chunks.len(), config, &mut || 0);
        } else if i + 1 == chunks.len() {
            ex.response_end();
        }
    }
    ex.finish(MS, &mut || 0)
}

fn usage_7_of_11() -> Option<Usage> {
    openai::parse_response(USAGE_JSON.as_bytes()).unwrap().usage
}

#[test]
fn gzip_and_deflate_json_bodies_report_their_usage_at_every_split_point() {
    let config = cfg();
    let plain = USAGE_JSON.as_bytes();
    let bodies = [
        ("gzip", gzip_parts(&[plain], true).0),
        ("gzip", gzip(plain)),
        ("x-gzip, identity", gzip(plain)),
        ("deflate", deflate_parts(&[plain], true).0),
        ("deflate", deflate_parts(&[plain], false).0),
    ];
    for (encoding, body) in &bodies {
        for i in 0..=body.len() {
            let (a, b) = body.split_at(i);
            let obs = json_exchange(Some(encoding), &[a, b], &config);
            assert_eq!(obs.usage, usage_7_of_11(), "{encoding} split at {i}");
            assert_eq!(obs.errors, ErrorSet::default(), "{encoding} split at {i}");
            assert_eq!(obs.outcome, Outcome::Completed);
        }
    }
    assert_eq!(usage_7_of_11().and_then(|u| u.output), Some(7));
}

#[test]
fn corrupt_or_truncated_compressed_json_is_a_decode_error_and_not_read() {
    let config = cfg();
    let gz = gzip(USAGE_JSON.as_bytes());
    let mut flipped = gz.clone();
    flipped[14] ^= 0x55;
    let cases: [(&str, &[u8]); 4] = [
        ("truncated", &gz[..gz.len() - 3]),
        ("no trailer", &gz[..gz.len() - 8]),
        ("not gzip", USAGE_JSON.as_bytes()),
        ("flipped", &flipped),
    ];
    for (what, body) in cases {
        let obs = json_exchange(Some("gzip"), &[body], &config);
        assert_eq!(obs.usage, None, "{what}");
        assert_eq!(
            obs.errors.iter().collect::<Vec<_>>(),
            vec![ErrorKind::DecodeError],
            "{what}"
        );
        assert_eq!(obs.outcome, Outcome::Completed, "{what}");
    }
}

#[test]
fn a_compressed_json_bomb_stops_at_the_body_bound() {
    let config = Config {
        max_response_body_bytes: 64 << 10,
        ..cfg()
    };
    let mut body = USAGE_JSON.as_bytes().to_vec();
    body.extend(std::iter::repeat_n(b' ', 8 << 20));
    let gz = gzip(&body);
    assert!(gz.len() < 32 << 10);
    let obs = json_exchange(
        Some("gzip"),
        &[&gz[..gz.len() / 2], &gz[gz.len() / 2..]],
        &config,
    );
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::ResponseTooLarge]
    );
    assert_eq!(obs.usage, None);
}

#[test]
fn unknown_or_layered_encodings_are_still_encoded_body() {
    let config = cfg();
    for encoding in ["br", "zstd", "gzip, br", "gzip, gzip", "compress"] {
        assert_eq!(
            crate::encoding::body_coding(Some(encoding)),
            BodyCoding::Unreadable
        );
        let obs = json_exchange(Some(encoding), &[USAGE_JSON.as_bytes()], &config);
        assert_eq!(
            obs.errors.iter().collect::<Vec<_>>(),
            vec![ErrorKind::EncodedBody],
            "{encoding}"
        );
        assert_eq!(obs.usage, None);
    }
    // An unreadable stream that ended is not an upstream abort, and not a stream without usage.
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, &config);
    ex.response_headers(
        Some(200),
        Some("text/event-stream"),
        Some("br"),
        false,
        &config,
    );
    assert!(!ex.wants_response_body());
    ex.response_end();
    let obs = ex.finish(MS, &mut || 0);
    assert_eq!(obs.outcome, Outcome::Completed);
    assert!(!obs.usage_missing);
}

/// One SSE event per part: reasoning, then answer tokens, then usage, then `[DONE]`.
fn stream_parts() -> Vec<String> {
    let mut parts = vec![
        delta_event("reasoning_content", "Let me"),
        delta_event("reasoning_content", " think."),
    ];
    for w in [
        "The",
        " answer",
        " is",
        " 42",
        ", with",
        " “quotes”",
        " and ✓.",
    ] {
        parts.push(wire::token(w));
    }
    parts.push(usage_chunk(9).replace("data: [DONE]\n\n", ""));
    parts.push("data: [DONE]\n\n".to_owned());
    parts
}

/// A chat stream fed `chunks` (each at its time in ms), the last one ending the body.
fn sse_exchange(encoding: Option<&str>, chunks: &[(u64, &[u8])], config: &Config) -> Observation {
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    chat_stream_request(&mut ex, config);
    ex.response_headers(
        Some(200),
        Some("text/event-stream"),
        encoding,
        false,
        config,
    );
    for (i, (t, c)) in chunks.iter().enumerate() {
        if ex.wants_response_body() {
            ex.response_body(c, i + 1 == chunks.len(), config, &mut || t * MS);
        } else if i + 1 == chunks.len() {
            ex.response_end();
        }
    }
    ex.finish(1_000 * MS, &mut || 0)
}

/// For each event of a compressed stream: the length of the shortest prefix that completes it
/// (decoded by the inflater and the SSE decoder byte by byte).
fn event_completion_points(coding: Coding, body: &[u8]) -> Vec<usize> {
    let mut inf = crate::encoding::Inflater::new(coding, u64::MAX);
    let mut dec = Decoder::new(1 << 16);
    let mut points = Vec::new();
    for (i, b) in body.iter().enumerate() {
        let mut events = 0;
        inf.feed(std::slice::from_ref(b), &mut |piece| {
            dec.feed(piece, &mut |item| {
                events += usize::from(matches!(item, Item::Event { .. }))
            });
            true
        })
        .unwrap();
        points.extend(std::iter::repeat_n(i + 1, events));
    }
    points
}

/// Checks one chunking of the gzip stream: it must give the observation of the plain stream whose
/// events each arrive at the time of the compressed chunk that completes them.
fn check_gzip_stream_cut_at(cuts: &[usize]) -> Result<(), TestCaseError> {
    let config = cfg();
    let parts = stream_parts();
    let part_bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let (gz, _) = gzip_parts(&part_bytes, true);
    let points = event_completion_points(Coding::Gzip, &gz);
    prop_assert_eq!(points.len(), parts.len());
    let mut chunks = Vec::new();
    let mut start = 0;
    for &p in cuts.iter().chain([gz.len()].iter()) {
        chunks.push((chunks.len() as u64 + 1, &gz[start..p]));
        start = p;
    }
    // Chunk `c` (at time c + 1) holds bytes [bounds[c], bounds[c + 1]).
    let chunk_time = |byte: usize| 1 + cuts.iter().filter(|&&c| c <= byte).count() as u64;
    let plain: Vec<(u64, &[u8])> = points
        .iter()
        .zip(&part_bytes)
        .map(|(p, part)| (chunk_time(p - 1), *part))
        .collect();
    let want = sse_exchange(None, &plain, &config);
    prop_assert_eq!(want.errors, ErrorSet::default());
    prop_assert_eq!(want.token_events, 9);
    let got = sse_exchange(Some("gzip"), &chunks, &config);
    prop_assert_eq!(got, want, "cuts {:?}", cuts);
    Ok(())
}

#[test]
fn a_gzip_stream_cut_at_its_flushes_gives_the_plain_streams_observation() {
    let config = cfg();
    let parts = stream_parts();
    let part_bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let (gz, ends) = gzip_parts(&part_bytes, true);
    // Each event is complete once the compressed bytes up to its flush have arrived.
    let points = event_completion_points(Coding::Gzip, &gz);
    for (i, (p, end)) in points.iter().zip(&ends).enumerate() {
        assert!(
            *p <= *end,
            "event {i} completed at {p}, its flush ends at {end}"
        );
        assert!(
            i == 0 || *p > ends[i - 1],
            "event {i} completed before its bytes"
        );
    }
    let times: Vec<u64> = (0..parts.len() as u64).map(|i| 10 + 7 * i * i).collect();
    let plain: Vec<(u64, &[u8])> = times
        .iter()
        .copied()
        .zip(part_bytes.iter().copied())
        .collect();
    let mut compressed = Vec::new();
    let mut start = 0;
    for (t, end) in times.iter().zip(&ends) {
        compressed.push((*t, &gz[start..*end]));
        start = *end;
    }
    let want = sse_exchange(None, &plain, &config);
    assert_eq!(want.ttft_ms, Some(10));
    assert!(want.reasoning_ms.is_some() && want.max_gap_ms.is_some());
    assert_eq!(sse_exchange(Some("gzip"), &compressed, &config), want);
    // The same stream zlib-wrapped and raw, as `deflate`.
    for zlib in [true, false] {
        let (z, ends) = deflate_parts(&part_bytes, zlib);
        let mut compressed = Vec::new();
        let mut start = 0;
        for (t, end) in times.iter().zip(&ends) {
            compressed.push((*t, &z[start..*end]));
            start = *end;
        }
        assert_eq!(
            sse_exchange(Some("deflate"), &compressed, &config),
            want,
            "zlib {zlib}"
        );
    }
}

#[test]
fn a_gzip_stream_split_at_every_byte_gives_the_same_observation() {
    let parts = stream_parts();
    let part_bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let len = gzip_parts(&part_bytes, true).0.len();
    for i in 0..=len {
        check_gzip_stream_cut_at(&[i]).unwrap();
    }
    check_gzip_stream_cut_at(&(1..len).collect::<Vec<_>>()).unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn random_cuts_of_a_gzip_stream_give_the_plain_observation(
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
    ) {
        let parts = stream_parts();
        let part_bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
        let len = gzip_parts(&part_bytes, true).0.len();
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(len + 1)).collect();
        points.sort_unstable();
        check_gzip_stream_cut_at(&points)?;
    }
}

#[test]
fn a_corrupt_gzip_stream_keeps_what_came_before_and_is_not_an_abort() {
    let config = cfg();
    let parts = stream_parts();
    let part_bytes: Vec<&[u8]> = parts.iter().map(|p| p.as_bytes()).collect();
    let (gz, ends) = gzip_parts(&part_bytes, false);
    // Three reasoning/answer events arrive intact, then garbage (a reserved deflate block type).
    let mut body = gz[..ends[2]].to_vec();
    body.extend_from_slice(&[0xff; 64]);
    let obs = sse_exchange(
        Some("gzip"),
        &[(5, &body[..ends[2]]), (6, &body[ends[2]..])],
        &config,
    );
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::DecodeError]
    );
    assert_eq!((obs.token_events, obs.ttft_ms), (3, Some(5)));
    assert_eq!(obs.outcome, Outcome::Completed);
    assert!(!obs.usage_missing);
    // Cut short: the end marker never came, and the compressed stream did not end either.
    let obs = sse_exchange(Some("gzip"), &[(5, &gz[..ends[2]])], &config);
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::DecodeError]
    );
    assert_eq!(obs.token_events, 3);
}

#[test]
fn a_compressed_stream_bomb_stops_at_its_bound() {
    let config = Config {
        max_response_body_bytes: 1024,
        ..cfg()
    };
    let limit = 1024 * DECODED_STREAM_FACTOR as usize;
    let first = wire::token("a");
    let mut body = first.clone().into_bytes();
    body.extend(b": keep-alive\n".repeat(2 * limit / 13));
    body.extend(usage_chunk(1).into_bytes());
    let gz = gzip(&body);
    let obs = sse_exchange(Some("gzip"), &[(1, &gz)], &config);
    assert_eq!(
        obs.errors.iter().collect::<Vec<_>>(),
        vec![ErrorKind::ResponseTooLarge]
    );
    assert_eq!((obs.token_events, obs.usage), (1, None));
    assert_eq!(obs.outcome, Outcome::Completed);
    assert!(!obs.usage_missing);
    // Under the bound the same stream is read to its end.
    let config = Config {
        max_response_body_bytes: 4096,
        ..cfg()
    };
    let obs = sse_exchange(Some("gzip"), &[(1, &gz)], &config);
    assert_eq!(obs.errors, ErrorSet::default());
    assert_eq!(obs.usage.and_then(|u| u.output), Some(1));
}

#[test]
fn an_encoded_response_holds_one_inflater_until_its_body_ends() {
    let config = cfg();
    let mut ex = Exchange::new(Api::ChatCompletions, 0);
    ex.response_headers(
        Some(200),
        Some("application/json"),
        Some("gzip"),
        false,
        &config,
    );
    assert!(ex.inflater.is_some());
    ex.response_body(&gzip(USAGE_JSON.as_bytes()), true, &config, &mut || 0);
    assert!(ex.inflater.is_none());
    // Identity responses never allocate one, nor do error statuses.
    for (status, encoding) in [(200, None), (500, Some("gzip"))] {
        let mut ex = Exchange::new(Api::ChatCompletions, 0);
        ex.response_headers(
            Some(status),
            Some("application/json"),
            encoding,
            false,
            &config,
        );
        assert!(ex.inflater.is_none());
    }
}
