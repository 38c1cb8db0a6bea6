//! The shipped `envoy/envoy.yaml` and the filter's stat names must agree: every label the filter
//! encodes is extracted by a `stats_tags` regex, and histograms get the contract's buckets.

use gateway_tests::metrics::StatsConfig;

use crate::common::*;

/// A gateway after one request of each kind, so every metric and label exists.
fn busy_gateway() -> gateway_tests::Gateway {
    let gw = gateway();
    let mut s = gw.stream();
    s.post_json(CHAT, &chat_request("Qwen/Qwen3-1.7B", true));
    s.respond(
        SSE,
        &[
            (120, token("a")),
            (140, token("b")),
            (150, finish()),
            (151, usage_chunk(5, 2)),
            (152, DONE.to_owned()),
        ],
    );
    s.end();
    let mut s = gw.stream();
    s.post_json(CHAT, "not json");
    s.response_headers(JSON);
    s.response_body(&["{}"]);
    s.end();
    gw
}

#[test]
fn every_label_the_filter_encodes_is_extracted_by_the_envoy_config() {
    let gw = busy_gateway();
    let series = gw.all_series();
    let names: std::collections::BTreeSet<&str> = series.iter().map(|s| s.name.as_str()).collect();
    for s in &series {
        assert!(
            s.name.starts_with("llm_") && !s.name.contains("___"),
            "{} was not fully tag-extracted into labels: Prometheus name {}",
            s.stat_name,
            s.name
        );
    }
    for expected in [
        "llm_requests_total",
        "llm_tokens_total",
        "llm_time_to_first_token_ms",
        "llm_request_duration_ms",
        "llm_time_per_output_token_us",
        "llm_active_requests",
        "llm_filter_errors_total",
    ] {
        assert!(
            names.contains(expected),
            "{expected} missing from {names:?}"
        );
    }
    let requests = series
        .iter()
        .find(|s| s.name == "llm_requests_total")
        .unwrap();
    let label_names: Vec<&str> = requests.labels.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(
        label_names,
        ["model", "api", "streaming", "status_class", "outcome"]
    );
}

#[test]
fn prometheus_text_has_the_contract_buckets_for_each_histogram() {
    let text = busy_gateway().render_prometheus();
    let ttft =
        "llm_time_to_first_token_ms_bucket{model=\"Qwen/Qwen3-1.7B\",api=\"chat_completions\"";
    assert!(text.contains(&format!("{ttft},le=\"100\"}} 0")), "{text}");
    assert!(text.contains(&format!("{ttft},le=\"200\"}} 1")), "{text}");
    assert!(text.contains(&format!("{ttft},le=\"60000\"}} 1")), "{text}");
    assert!(text.contains("llm_time_to_first_token_ms_sum{model=\"Qwen/Qwen3-1.7B\",api=\"chat_completions\"} 120"), "{text}");
    assert!(text.contains("llm_request_duration_ms_bucket{model=\"Qwen/Qwen3-1.7B\",api=\"chat_completions\",streaming=\"true\",le=\"600000\"} 1"), "{text}");
    // TPOT: (140 - 120) ms / (2 - 1) = 20000 µs.
    assert!(text.contains("llm_time_per_output_token_us_bucket{model=\"Qwen/Qwen3-1.7B\",api=\"chat_completions\",le=\"10000\"} 0"), "{text}");
    assert!(text.contains("llm_time_per_output_token_us_bucket{model=\"Qwen/Qwen3-1.7B\",api=\"chat_completions\",le=\"25000\"} 1"), "{text}");
    assert!(
        text.contains("llm_filter_errors_total{kind=\"request_parse\"} 1"),
        "{text}"
    );
    assert!(text.contains("# TYPE llm_active_requests gauge"), "{text}");
}

#[test]
fn the_envoy_config_sets_buckets_for_the_three_histograms() {
    let config = StatsConfig::load_default().unwrap_or_else(|e| panic!("{e:#}"));
    let first = |name: &str| {
        config
            .buckets_for(&format!("wasmcustom.model=.=m;.;{name}"))
            .to_vec()
    };
    assert_eq!(
        first("llm_time_to_first_token_ms"),
        [
            1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0, 5000.0, 10000.0,
            20000.0, 30000.0, 60000.0
        ]
    );
    assert_eq!(
        first("llm_request_duration_ms"),
        [
            10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
            60000.0, 120000.0, 300000.0, 600000.0
        ]
    );
    assert_eq!(
        first("llm_time_per_output_token_us"),
        [
            100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 25000.0, 50000.0, 100000.0,
            250000.0, 500000.0, 1000000.0, 2000000.0
        ]
    );
}
