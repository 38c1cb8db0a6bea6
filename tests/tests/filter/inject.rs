//! `inject_stream_usage`: the request gains `stream_options.include_usage`, the metrics get exact
//! usage, and the client receives byte for byte what the upstream would have sent it had the filter
//! not been there — for every streaming golden fixture, however the bodies are cut.
//!
//! The model of the upstream is the one OpenAI documents: asked for usage it sends the stream as
//! recorded in the fixture (an extra chunk with `"choices": []` and the usage, and, from OpenAI
//! itself, `"usage": null` in every other chunk); not asked, the same stream without those. The
//! "not asked" stream is derived here independently of the filter: event by event, checking each
//! cut against the parsed JSON.

use gateway_tests::fixture::{
    self, diff, injectable_path, not_asked, raw_events, request_not_asking_usage, Exchange,
    Fixture, FixtureReplay as _, Split,
};
use gateway_tests::{Action, Gateway};
use serde_json::Value;

use crate::common::{finish, gateway, role_chunk, token, usage_chunk};

fn with_inject(config_text: &str) -> Option<String> {
    let mut config: Value = serde_json::from_str(config_text).ok()?;
    config
        .as_object_mut()?
        .insert("inject_stream_usage".into(), Value::Bool(true));
    Some(config.to_string())
}

struct Case {
    client_request: Value,
    upstream: Vec<u8>,
    direct: Vec<u8>,
    rewritten: bool,
}

/// The exchange a fixture stands for, seen from a client that did not ask for usage.
fn case(f: &Fixture) -> Option<Case> {
    let is_sse = f
        .response
        .headers
        .get("content-type")
        .is_some_and(|ct| ct.starts_with("text/event-stream"));
    let request = f.request.body.clone()?;
    if !is_sse || !request.is_object() {
        return None;
    }
    let upstream = f.response_body().ok()?;
    let default_paths = f.config.as_ref().and_then(|c| c.get("paths")).is_none();
    let watched = default_paths && f.request.method == "POST" && injectable_path(&f.request.path);
    let streaming = request.get("stream") == Some(&Value::Bool(true));
    let options = request.get("stream_options");
    // A body over either bound is not held (nor rewritten): the fixture as it is tells that case.
    let limit = |field: &str, default: u64| {
        f.config
            .as_ref()
            .and_then(|c| c.get(field))
            .and_then(Value::as_u64)
            .unwrap_or(default)
    };
    let fits = (f.request_body().len() as u64)
        <= limit("max_request_body_bytes", 1 << 20)
            .min(limit("inject_max_request_bytes", 256 << 10));
    if let Some(client) = request_not_asking_usage(f).filter(|_| default_paths && fits) {
        // The recorded stream answers a client that asked; ours does not.
        return Some(Case {
            client_request: client,
            direct: not_asked(&upstream),
            upstream,
            rewritten: true,
        });
    }
    // The client's own request: an upstream that ignores the option sends the same either way.
    let decided = options.and_then(|o| o.get("include_usage")).is_some()
        || options.is_some_and(|o| !o.is_object());
    Some(Case {
        client_request: request,
        direct: upstream.clone(),
        upstream,
        rewritten: watched && streaming && !decided && fits,
    })
}

fn check(
    f: &Fixture,
    gw: &Gateway,
    c: &Case,
    request_split: Split,
    content_length: bool,
    split: Split,
) -> Result<(), String> {
    let client_body = serde_json::to_vec(&c.client_request).map_err(|e| e.to_string())?;
    let exchange = Exchange {
        request_body: client_body.clone(),
        request_split,
        content_length,
        response_body: c.upstream.clone(),
        response_split: split.clone(),
    };
    let replay = f
        .replay_exchange(gw, &exchange)
        .map_err(|e| format!("{e:#}"))?;
    let what = format!("{split:?}, content-length {content_length}");
    // The request: rewritten exactly when the client did not decide, otherwise untouched.
    let sent = &replay.report.request_sent;
    if c.rewritten {
        let got: Value = serde_json::from_slice(sent)
            .map_err(|e| format!("{what}: upstream got invalid JSON: {e}"))?;
        let mut want = c.client_request.clone();
        want["stream_options"]["include_usage"] = Value::Bool(true);
        if got != want {
            return Err(format!("{what}: upstream got {got}, want {want}"));
        }
    } else if sent != &client_body {
        return Err(format!(
            "{what}: request changed: {}",
            String::from_utf8_lossy(sent)
        ));
    }
    if let Some((_, v)) = replay
        .report
        .request_headers
        .iter()
        .find(|(k, _)| k == "content-length")
    {
        if v != &sent.len().to_string() {
            return Err(format!(
                "{what}: content-length {v} for a {}-byte body",
                sent.len()
            ));
        }
    }
    // The response: what the upstream would have sent this client directly.
    let got = &replay.report.response_sent;
    if f.end == fixture::End::Complete {
        if got != &c.direct {
            return Err(format!(
                "{what}: client got\n{}\nwant\n{}",
                String::from_utf8_lossy(got),
                String::from_utf8_lossy(&c.direct)
            ));
        }
    } else {
        // A stream cut short: the client has every complete event; only an incomplete last one
        // (which no SSE client can use) may still be held when the stream ends without its end.
        let held = c
            .direct
            .strip_prefix(got.as_slice())
            .ok_or_else(|| format!("{what}: not a prefix"))?;
        if raw_events(held).len() > 1 || held.windows(2).any(|w| w == b"\n\n") {
            return Err(format!(
                "{what}: complete events lost: {}",
                String::from_utf8_lossy(held)
            ));
        }
    }
    // The series: exactly the fixture's, with the usage the upstream reported.
    let d = diff(&f.expected_lines(), &replay.observed_lines());
    if !d.is_empty() {
        return Err(format!("{what}: series differ\n{d}"));
    }
    if replay.report.actions.iter().any(|(cb, a)| {
        *a != Action::Continue
            && !matches!(
                cb,
                gateway_tests::Callback::RequestHeaders | gateway_tests::Callback::RequestBody
            )
    }) {
        return Err(format!(
            "{what}: paused a response callback: {:?}",
            replay.report.actions
        ));
    }
    Ok(())
}

#[test]
fn with_inject_on_every_streaming_fixture_reaches_the_client_as_from_the_upstream_directly() {
    let fixtures = fixture::load_all(&fixture::fixtures_dir()).unwrap_or_else(|e| panic!("{e:#}"));
    let mut failures = Vec::new();
    let (mut checked, mut rewritten) = (0, 0);
    for f in &fixtures {
        let Some(c) = case(f) else { continue };
        let Some(config) = with_inject(&f.config_text()) else {
            continue;
        };
        let gw = Gateway::new(&config).unwrap_or_else(|e| panic!("{e:#}"));
        checked += 1;
        rewritten += usize::from(c.rewritten);
        let mut splits = vec![Split::Whole, Split::ByteByByte];
        splits.extend((0..4u64).map(|seed| Split::Random {
            seed,
            cuts: 1 + seed as usize * 9,
        }));
        for (i, split) in splits.into_iter().enumerate() {
            let request_split = Split::Random {
                seed: i as u64,
                cuts: i,
            };
            if let Err(e) = check(f, &gw, &c, request_split, i % 2 == 0, split) {
                failures.push(format!("fixture {}: {e}", f.name));
                break;
            }
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n\n")
    );
    // The suite covers both kinds: recorded include_usage streams and streams without usage.
    assert!(
        checked >= 30 && rewritten >= 20,
        "checked {checked}, rewritten {rewritten}"
    );
}

#[test]
fn the_independent_not_asked_stream_removes_the_usage_chunk_and_null_members() {
    let with = format!(
        "data: {{\"choices\":[{{\"delta\":{{\"content\":\"a\"}}}}],\"usage\":null}}\n\n{}data: [DONE]\n\n",
        usage_chunk(3, 1)
    );
    assert_eq!(
        String::from_utf8(not_asked(with.as_bytes())).unwrap_or_default(),
        "data: {\"choices\":[{\"delta\":{\"content\":\"a\"}}]}\n\ndata: [DONE]\n\n"
    );
}

const CHAT: &str = "/v1/chat/completions";

fn headers(content_length: Option<usize>) -> Vec<(String, String)> {
    let mut h = vec![
        (":method".to_owned(), "POST".to_owned()),
        (":path".to_owned(), CHAT.to_owned()),
        ("content-type".to_owned(), "application/json".to_owned()),
    ];
    if let Some(n) = content_length {
        h.push(("content-length".to_owned(), n.to_string()));
    }
    h
}

fn borrowed(h: &[(String, String)]) -> Vec<(&str, &str)> {
    h.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect()
}

/// The changes a held request may make: its length goes (the body is sent chunked).
fn only_length_removed(changes: &[String]) -> bool {
    changes
        .iter()
        .all(|c| c == r#"proxy_remove_header_map_value(RequestHeaders, "content-length")"#)
}

/// A stream whose request (with its `content-length`) has been sent whole; no callback paused.
fn sent<'g>(gw: &'g Gateway, body: &str) -> gateway_tests::Stream<'g> {
    let mut s = gw.stream();
    assert_eq!(
        s.request_headers(&borrowed(&headers(Some(body.len())))),
        Action::Continue
    );
    assert_eq!(s.request_chunk(body.as_bytes(), true), Action::Continue);
    s
}

fn inject_gateway(extra: &str) -> Gateway {
    Gateway::new(&format!(r#"{{"inject_stream_usage":true{extra}}}"#))
        .unwrap_or_else(|e| panic!("{e:#}"))
}

#[test]
fn a_request_too_large_to_hold_by_its_content_length_is_never_held() {
    let gw = inject_gateway(r#","inject_max_request_bytes":64"#);
    let body = format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100)
    );
    let s = sent(&gw, &body);
    let report = s.end();
    assert!(report.untouched(), "{:?}", report.changes);
    assert_eq!(report.request_sent, body.as_bytes());
}

#[test]
fn a_stripped_response_loses_its_content_length() {
    let gw = inject_gateway("");
    let body = r#"{"model":"m","stream":true}"#;
    let mut s = sent(&gw, body);
    let stream = format!("{}{}data: [DONE]\n\n", token("Hi"), usage_chunk(2, 1));
    let length = stream.len().to_string();
    s.response_headers(&[
        (":status", "200"),
        ("content-type", "text/event-stream"),
        ("content-length", &length),
    ]);
    s.response_body(&[stream.as_bytes()]);
    let report = s.end();
    assert!(
        report
            .changes
            .iter()
            .any(|c| c.contains("remove") && c.contains("content-length")),
        "{:?}",
        report.changes
    );
    assert_eq!(
        report.response_sent,
        format!("{}data: [DONE]\n\n", token("Hi")).as_bytes()
    );
}

#[test]
fn a_held_request_that_grows_past_the_bound_goes_on_untouched() {
    let gw = inject_gateway(r#","inject_max_request_bytes":64"#);
    let body = format!(
        r#"{{"model":"m","stream":true,"messages":[{{"role":"user","content":"{}"}}]}}"#,
        "x".repeat(100)
    );
    let (a, b) = body.as_bytes().split_at(40);
    let (b, c) = b.split_at(40);
    let mut s = gw.stream();
    // No content-length (a chunked request): held until it is over the bound, then released.
    assert_eq!(
        s.request_headers(&borrowed(&headers(None))),
        Action::Continue
    );
    assert_eq!(s.request_chunk(a, false), Action::Pause);
    assert_eq!(s.request_chunk(b, false), Action::Continue);
    assert_eq!(s.request_chunk(c, true), Action::Continue);
    let report = s.end();
    assert!(only_length_removed(&report.changes), "{:?}", report.changes);
    assert_eq!(report.request_sent, body.as_bytes());
    // The model was still read: the bound on holding is not the bound on reading.
    assert_eq!(gw.series("llm_requests_total", &[("model", "m")]), 1);
}

#[test]
fn a_held_request_that_ends_with_trailers_goes_on_untouched_and_its_response_too() {
    let gw = inject_gateway("");
    let body = r#"{"model":"m","stream":true}"#;
    let mut s = gw.stream();
    assert_eq!(
        s.request_headers(&borrowed(&headers(None))),
        Action::Continue
    );
    assert_eq!(s.request_chunk(body.as_bytes(), false), Action::Pause);
    s.request_trailers(&[("x-end", "1")]);
    s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")]);
    let stream = format!(
        "{}{}{}data: [DONE]\n\n",
        role_chunk(),
        token("Hi"),
        usage_chunk(2, 1)
    );
    s.response_body(&[stream.as_bytes()]);
    let report = s.end();
    assert!(only_length_removed(&report.changes), "{:?}", report.changes);
    assert_eq!(report.response_sent, stream.as_bytes());
}

#[test]
fn a_non_streaming_request_is_held_but_passes_byte_for_byte() {
    let gw = inject_gateway("");
    let body = r#"{"model":"m","messages":[]}"#;
    let s = sent(&gw, body);
    let report = s.end();
    assert!(only_length_removed(&report.changes), "{:?}", report.changes);
    assert_eq!(report.request_sent, body.as_bytes());
}

#[test]
fn an_error_response_to_a_rewritten_request_passes_untouched() {
    let gw = inject_gateway("");
    let body = r#"{"model":"m","stream":true}"#;
    let mut s = sent(&gw, body);
    s.response_headers(&[(":status", "400"), ("content-type", "text/event-stream")]);
    let error = format!("{}{}", usage_chunk(1, 0), finish());
    s.response_body(&[error.as_bytes()]);
    let report = s.end();
    assert_eq!(report.response_sent, error.as_bytes());
    assert!(
        report.request_sent.len() > body.len(),
        "the request was rewritten"
    );
}

#[test]
fn off_by_default_nothing_is_held_or_changed() {
    let gw = gateway();
    let body = r#"{"model":"m","stream":true}"#;
    let mut s = gw.stream();
    assert_eq!(
        s.request_headers(&borrowed(&headers(Some(body.len())))),
        Action::Continue
    );
    s.request_chunk(body.as_bytes(), true);
    s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")]);
    let stream = format!("{}{}data: [DONE]\n\n", token("Hi"), usage_chunk(2, 1));
    s.response_body(&[stream.as_bytes()]);
    let report = s.end();
    assert!(report.untouched());
    assert_eq!(report.response_sent, stream.as_bytes());
}
