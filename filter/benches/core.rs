//! The filter core's CPU cost per request and per stream event, natively (the `.wasm` in Envoy's V8
//! runs the same code somewhat slower; `tests/bench/filter_cost.py` measures it inside Envoy).
//!
//!     cargo bench -p llm-metrics-filter --bench core            # full
//!     cargo bench -p llm-metrics-filter --bench core -- --quick # quick mode

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use llm_metrics_filter::config::Config;
use llm_metrics_filter::exchange::Exchange;
use llm_metrics_filter::labels::ModelId;
use llm_metrics_filter::metrics::Api;

const REQUEST: &[u8] = br#"{"model":"Qwen/Qwen3-1.7B","messages":[{"role":"system","content":"You are a helpful assistant."},{"role":"user","content":"Write a haiku about proxies."}],"stream":true,"stream_options":{"include_usage":true}}"#;

fn stream_events(n: usize) -> Vec<Vec<u8>> {
    let mut v = vec![br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"Qwen/Qwen3-1.7B","choices":[{"index":0,"delta":{"role":"assistant","content":""},"logprobs":null,"finish_reason":null}]}

"#
    .to_vec()];
    for i in 0..n {
        v.push(format!("data: {{\"id\":\"chatcmpl-1\",\"object\":\"chat.completion.chunk\",\"created\":1,\"model\":\"Qwen/Qwen3-1.7B\",\"choices\":[{{\"index\":0,\"delta\":{{\"content\":\"tok{i} \"}},\"logprobs\":null,\"finish_reason\":null}}]}}\n\n").into_bytes());
    }
    v.push(br#"data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"Qwen/Qwen3-1.7B","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}

data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,"model":"Qwen/Qwen3-1.7B","choices":[],"usage":{"prompt_tokens":20,"completion_tokens":256,"total_tokens":276}}

data: [DONE]

"#
    .to_vec());
    v
}

fn bench(c: &mut Criterion) {
    let config = Config::default();
    let events = stream_events(256);
    let bytes: usize = events.iter().map(Vec::len).sum();
    let mut g = c.benchmark_group("stream_256_events");
    g.throughput(Throughput::Elements(events.len() as u64));
    g.bench_function("one_event_per_chunk", |b| {
        b.iter(|| {
            let mut ex = Exchange::new(Api::ChatCompletions, 0);
            ex.request_body(REQUEST, true, &config, &mut |_| ModelId(2));
            ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
            let last = events.len() - 1;
            for (i, e) in events.iter().enumerate() {
                ex.response_body(e, i == last, &config, &mut || i as u64);
            }
            ex.finish(1, &mut || 0)
        })
    });
    let joined: Vec<u8> = events.concat();
    g.bench_function("whole_stream_in_one_chunk", |b| {
        b.iter(|| {
            let mut ex = Exchange::new(Api::ChatCompletions, 0);
            ex.request_body(REQUEST, true, &config, &mut |_| ModelId(2));
            ex.response_headers(Some(200), Some("text/event-stream"), None, false, &config);
            ex.response_body(&joined, true, &config, &mut || 1);
            ex.finish(1, &mut || 0)
        })
    });
    g.finish();
    assert_eq!(joined.len(), bytes);

    let body = format!(
        r#"{{"id":"chatcmpl-1","object":"chat.completion","created":1,"model":"Qwen/Qwen3-1.7B","choices":[{{"index":0,"message":{{"role":"assistant","content":"{}"}},"logprobs":null,"finish_reason":"stop"}}],"usage":{{"prompt_tokens":12,"completion_tokens":160,"total_tokens":172,"prompt_tokens_details":{{"cached_tokens":0}},"completion_tokens_details":{{"reasoning_tokens":0}}}}}}"#,
        "x".repeat(640)
    );
    c.bench_function("nonstream_1KiB_request", |b| {
        b.iter(|| {
            let mut ex = Exchange::new(Api::ChatCompletions, 0);
            ex.request_body(REQUEST, true, &config, &mut |_| ModelId(2));
            ex.response_headers(Some(200), Some("application/json"), None, false, &config);
            ex.response_body(body.as_bytes(), true, &config, &mut || 1);
            ex.finish(1, &mut || 0)
        })
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
