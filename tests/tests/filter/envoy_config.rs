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

/// `envoy/envoy-dynamic-module.yaml` is the same gateway as `envoy/envoy.yaml` with the native
/// filter: once the parts that must differ are set aside (the filter entry, the bucket matchers and
/// tags that follow each build's stat names, the runtime flag), the two documents are equal, so a
/// change to listeners, routes, timeouts or clusters cannot land in one build only.
#[test]
fn the_native_bootstrap_differs_from_the_wasm_one_only_in_the_filter_and_stat_naming() {
    use serde_yaml_ng::Value;
    let load = |name: &str| -> Value {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../envoy")
            .join(name);
        let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{name}: {e}"));
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"))
    };
    // The gateway listener's HTTP filters: [our filter, router].
    fn http_filters(doc: &mut Value) -> &mut Vec<Value> {
        let hcm = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0];
        match &mut hcm["typed_config"]["http_filters"] {
            Value::Sequence(s) => s,
            other => panic!("http_filters is not a list: {other:?}"),
        }
    }
    let (mut wasm, mut native) = (load("envoy.yaml"), load("envoy-dynamic-module.yaml"));
    let wasm_filter = http_filters(&mut wasm).remove(0);
    let native_filter = http_filters(&mut native).remove(0);
    assert_eq!(wasm_filter["name"], "envoy.filters.http.wasm");
    assert_eq!(native_filter["name"], "envoy.filters.http.dynamic_modules");
    let module = &native_filter["typed_config"];
    assert_eq!(
        module["dynamic_module_config"]["name"],
        "llm_metrics_filter"
    );
    assert_eq!(
        module["filter_config"]["value"],
        wasm_filter["typed_config"]["config"]["configuration"]["value"],
        "both builds ship the same filter configuration"
    );
    let flag = &native["layered_runtime"]["layers"][0]["static_layer"]
        ["envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix"];
    assert_eq!(flag, &Value::Bool(true));
    for doc in [&mut wasm, &mut native] {
        if let Value::Mapping(m) = doc {
            m.remove("stats_config");
            m.remove("layered_runtime");
        }
    }
    assert_eq!(wasm, native);
}
