//! The filter observes: it never pauses a stream and never changes headers, bodies or replies.

use gateway_tests::fixture::{self, FixtureReplay as _, Split};
use gateway_tests::{Action, Callback, Gateway};

use crate::common::*;

#[test]
fn the_filter_never_pauses_and_never_changes_traffic_in_any_fixture() {
    let fixtures = fixture::load_all(&fixture::fixtures_dir()).unwrap_or_else(|e| panic!("{e:#}"));
    let mut failures = Vec::new();
    for f in &fixtures {
        for split in [Split::Whole, Split::Random { seed: 1, cuts: 9 }] {
            let replay = f
                .replay(&split)
                .unwrap_or_else(|e| panic!("fixture {}: {e:#}", f.name));
            if !replay.report.untouched() {
                failures.push(format!("{} ({split:?}): {:?}", f.name, replay.report));
            }
            if replay.report.actions.is_empty() {
                failures.push(format!("{}: no callbacks recorded", f.name));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn every_callback_of_a_stream_returns_continue() {
    let gw = gateway();
    let mut s = gw.stream();
    s.request_headers(&[(":method", "POST"), (":path", CHAT)]);
    let body = chat_request("m", true);
    let (a, b) = body.split_at(7);
    s.request_body(&[a, b]);
    s.response_headers(SSE);
    s.response_body(&[role_chunk(), token("a"), finish(), DONE.to_owned()]);
    let report = s.end();
    let callbacks: Vec<Callback> = report.actions.iter().map(|(c, _)| *c).collect();
    assert_eq!(
        callbacks,
        [
            Callback::RequestHeaders,
            Callback::RequestBody,
            Callback::RequestBody,
            Callback::ResponseHeaders,
            Callback::ResponseBody,
            Callback::ResponseBody,
            Callback::ResponseBody,
            Callback::ResponseBody,
        ]
    );
    assert!(
        report.actions.iter().all(|(_, a)| *a == Action::Continue),
        "{report:?}"
    );
    assert!(report.changes.is_empty(), "{:?}", report.changes);
    assert!(report.done, "proxy_on_done should return true");
}

#[test]
fn an_oversized_or_broken_request_is_let_through_untouched() {
    let gw = Gateway::new(r#"{"max_request_body_bytes": 16}"#).unwrap_or_else(|e| panic!("{e:#}"));
    for body in ["{\"model\":\"a-very-long-model-name\"}", "not json", ""] {
        let mut s = gw.stream();
        s.request_headers(&[(":method", "POST"), (":path", CHAT)]);
        s.request_body(&[body]);
        s.response_headers(&[
            (":status", "200"),
            ("content-type", "application/json"),
            ("content-encoding", "gzip"),
        ]);
        s.response_body(&[&b"\x1f\x8b\x08\x00garbage"[..]]);
        let report = s.end();
        assert!(report.untouched(), "{body:?}: {report:?}");
    }
    assert!(gw.anomalies().is_empty(), "{:?}", gw.anomalies());
}
