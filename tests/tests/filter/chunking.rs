//! Property: however a stream's body is cut into `proxy_on_response_body` calls, the filter
//! produces the same series (driven through the real wasm).

use gateway_tests::fixture::{self, Fixture, FixtureReplay as _, Split};
use proptest::prelude::*;
use std::sync::OnceLock;

fn streaming_fixtures() -> &'static Vec<Fixture> {
    static FIXTURES: OnceLock<Vec<Fixture>> = OnceLock::new();
    FIXTURES.get_or_init(|| {
        fixture::load_all(&fixture::fixtures_dir())
            .unwrap_or_else(|e| panic!("{e:#}"))
            .into_iter()
            .filter(|f| f.response.body_file.is_some())
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn any_chunking_of_a_streaming_fixture_gives_the_same_series(
        index in any::<prop::sample::Index>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..64),
    ) {
        let fixtures = streaming_fixtures();
        prop_assume!(!fixtures.is_empty());
        let f = &fixtures[index.index(fixtures.len())];
        let len = f.response_body().map(|b| b.len()).unwrap_or(0).max(1);
        let points: Vec<usize> = cuts.iter().map(|c| c.index(len)).collect();
        let whole = f.replay(&Split::Whole).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let cut = f.replay(&Split::At(points.clone())).map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let d = fixture::diff(&whole.full_lines(), &cut.full_lines());
        prop_assert!(d.is_empty(), "fixture {} cut at {:?}:\n{}", f.name, points, d);
    }
}

/// A generated chat stream: one token event per entry (`true` = its JSON spread over two `data:`
/// lines), the given line end everywhere, optional comment lines, then a finish chunk and [DONE].
fn generated_stream(contents: &[(String, bool)], line_end: &str, comments: bool) -> String {
    let mut body = String::new();
    for (content, multi_line) in contents {
        if comments {
            body.push_str(&format!(": keep-alive{line_end}"));
        }
        let delta = serde_json::json!({"content": content}).to_string();
        if *multi_line {
            body.push_str(&format!(
                "data: {{\"choices\":[{{\"index\":0,{line_end}data: \"delta\":{delta}}}]}}{line_end}{line_end}"
            ));
        } else {
            body.push_str(&format!(
                "data: {{\"choices\":[{{\"index\":0,\"delta\":{delta}}}]}}{line_end}{line_end}"
            ));
        }
    }
    body.push_str(&format!(
        "data: {{\"choices\":[{{\"index\":0,\"delta\":{{}},\"finish_reason\":\"stop\"}}]}}{line_end}{line_end}"
    ));
    body.push_str(&format!("data: [DONE]{line_end}{line_end}"));
    body
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn a_generated_stream_counts_one_output_token_per_token_event_however_it_is_cut(
        contents in prop::collection::vec(("[a-zé日😀 ]{1,6}", any::<bool>()), 1..12),
        line_end in prop::sample::select(vec!["\n", "\r\n", "\r"]),
        comments in any::<bool>(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..48),
    ) {
        let body = generated_stream(&contents, line_end, comments);
        let points: Vec<usize> = cuts.iter().map(|c| c.index(body.len())).collect();
        let chunks = fixture::split_at_points(body.as_bytes(), &points);
        let gw = gateway_tests::Gateway::new("{}").map_err(|e| TestCaseError::fail(format!("{e:#}")))?;
        let mut s = gw.stream();
        s.post_json("/v1/chat/completions", r#"{"model":"m","stream":true}"#);
        s.response_headers(&[(":status", "200"), ("content-type", "text/event-stream")]);
        s.response_body(&chunks);
        s.end();
        let n = contents.len() as u64;
        let why = || format!("line end {line_end:?}, cut at {points:?}\n{}", gw.render_prometheus());
        prop_assert_eq!(gw.series("llm_filter_errors_total", &[]), 0, "{}", why());
        prop_assert_eq!(
            gw.series("llm_tokens_total", &[("token_type", "output"), ("source", "estimated")]), n, "{}", why()
        );
        prop_assert_eq!(gw.series("llm_requests_total", &[("outcome", "completed")]), 1, "{}", why());
        prop_assert_eq!(gw.histogram("llm_time_to_first_token_ms", &[]).count(), 1, "{}", why());
        prop_assert_eq!(gw.histogram("llm_time_per_output_token_us", &[]).count(), u64::from(n >= 2), "{}", why());
    }
}
