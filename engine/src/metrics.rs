//! Prometheus metrics under vLLM's names, label and bucket boundaries, so dashboards and alerts
//! written for vLLM work unchanged against this engine.
//!
//! Exposed in the OpenMetrics text format by `prometheus-client`: counters registered as
//! `vllm:prompt_tokens` appear as `vllm:prompt_tokens_total`, exactly the series vLLM exports.
//!
//! The five series the Gateway API Inference Extension's endpoint picker (and llm-d) scrape from a
//! vLLM server are here with vLLM's semantics: `vllm:num_requests_waiting`,
//! `vllm:num_requests_running`, `vllm:kv_cache_usage_perc`, and two info gauges whose labels carry
//! the data — `vllm:cache_config_info` (value 1; `block_size`, `num_gpu_blocks` and more of vLLM's
//! `CacheConfig` fields, plus `engine`) and `vllm:lora_requests_info` (value: the Unix time of the
//! scheduler's last update; `max_lora`, `running_lora_adapters`, `waiting_lora_adapters`, adapter
//! names comma-joined). vLLM gives these two no `model_name` label, and neither do we. This engine
//! serves no LoRA adapters, so `max_lora` is `"0"` and both adapter lists are empty; the picker
//! reads that as "no adapters", where a missing series would be a scrape error.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Bucket boundaries taken from vLLM's Prometheus exporter (`vllm/v1/metrics/loggers.py`,
/// `PrometheusStatLogger`): time to first token.
pub const TTFT_BUCKETS: [f64; 22] = [
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
    20.0, 40.0, 80.0, 160.0, 640.0, 2560.0,
];
/// From vLLM's exporter: inter-token latency (same boundaries as its time-per-output-token).
pub const ITL_BUCKETS: [f64; 19] = [
    0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0,
    40.0, 80.0,
];
/// From vLLM's exporter: `request_latency_buckets`, shared by the e2e, queue, prefill and decode
/// time histograms.
pub const REQUEST_LATENCY_BUCKETS: [f64; 21] = [
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0,
    480.0, 960.0, 1920.0, 7680.0,
];

/// vLLM's `build_1_2_5_buckets(max_model_len)`: 1, 2, 5, 10, 20, 50, ... up to the context
/// length, for the per-request token-count histograms.
pub fn buckets_1_2_5(max: usize) -> Vec<f64> {
    let mut out = Vec::new();
    let mut scale = 1usize;
    loop {
        for m in [1, 2, 5] {
            let v = m * scale;
            if v > max {
                return out;
            }
            out.push(v as f64);
        }
        scale *= 10;
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ModelNameLabel {
    model_name: String,
}

/// vLLM's `finished_reason` label on `vllm:request_success_total`: why a request left the engine.
///
/// These are all the values this engine emits. vLLM has no separate value for tool calls, so a
/// request that ends in tool calls counts as `stop`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishedReason {
    /// A stop token or stop string ended generation, or the model finished with tool calls.
    Stop,
    /// `max_tokens` or the context length ended generation.
    Length,
    /// The client went away while the request waited or ran; its slot and KV cache were freed.
    Abort,
    /// The forward pass failed; the client got an error event.
    Error,
}

impl FinishedReason {
    /// The label value, as vLLM writes it.
    pub fn label(self) -> &'static str {
        match self {
            FinishedReason::Stop => "stop",
            FinishedReason::Length => "length",
            FinishedReason::Abort => "abort",
            FinishedReason::Error => "error",
        }
    }
}

/// `vllm:cache_config_info`'s labels: the fields of vLLM's `CacheConfig` that mean something here,
/// written as vLLM writes them (Python's `str()`: `"False"`, `"auto"`), and vLLM's `engine`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CacheConfigLabels {
    block_size: String,
    /// vLLM's `"auto"`: the KV cache has the model's compute dtype.
    cache_dtype: String,
    enable_prefix_caching: String,
    num_gpu_blocks: String,
    engine: String,
}

/// `vllm:lora_requests_info`'s labels, in vLLM's order.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LoraLabels {
    max_lora: String,
    waiting_lora_adapters: String,
    running_lora_adapters: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct FinishLabels {
    model_name: String,
    finished_reason: String,
}

/// Handles to every series; cheap to clone (they share the underlying atomics).
#[derive(Clone)]
pub struct Metrics {
    model_name: String,
    pub num_requests_running: Gauge,
    pub num_requests_waiting: Gauge,
    pub kv_cache_usage_perc: Gauge<f64, AtomicU64>,
    pub prompt_tokens: Counter,
    pub generation_tokens: Counter,
    request_success: Family<FinishLabels, Counter>,
    pub time_to_first_token: Histogram,
    pub inter_token_latency: Histogram,
    pub e2e_request_latency: Histogram,
    pub request_queue_time: Histogram,
    pub request_prefill_time: Histogram,
    pub request_decode_time: Histogram,
    /// vLLM ≤ 0.10's name for inter-token latency, still used by its Grafana dashboard.
    pub time_per_output_token: Histogram,
    pub request_prompt_tokens: Histogram,
    pub request_generation_tokens: Histogram,
    cache_config_info: Family<CacheConfigLabels, Gauge>,
    lora_requests_info: Family<LoraLabels, Gauge<f64, AtomicU64>>,
}

impl Metrics {
    pub fn new(model_name: &str, max_model_len: usize, registry: &mut Registry) -> Self {
        let l = ModelNameLabel {
            model_name: model_name.to_owned(),
        };
        fn gauge(r: &mut Registry, name: &str, help: &str, l: &ModelNameLabel) -> Gauge {
            let f = Family::<ModelNameLabel, Gauge>::default();
            r.register(name, help, f.clone());
            let m = f.get_or_create(l).clone();
            m
        }
        fn counter(r: &mut Registry, name: &str, help: &str, l: &ModelNameLabel) -> Counter {
            let f = Family::<ModelNameLabel, Counter>::default();
            r.register(name, help, f.clone());
            let m = f.get_or_create(l).clone();
            m
        }
        fn histogram(
            r: &mut Registry,
            name: &str,
            help: &str,
            l: &ModelNameLabel,
            buckets: &'static [f64],
        ) -> Histogram {
            let f = Family::<ModelNameLabel, Histogram, _>::new_with_constructor(move || {
                Histogram::new(buckets.iter().copied())
            });
            r.register(name, help, f.clone());
            let m = f.get_or_create(l).clone();
            m
        }
        fn token_histogram(
            r: &mut Registry,
            name: &str,
            help: &str,
            l: &ModelNameLabel,
            max_model_len: usize,
        ) -> Histogram {
            let f = Family::<ModelNameLabel, Histogram, _>::new_with_constructor(move || {
                Histogram::new(buckets_1_2_5(max_model_len))
            });
            r.register(name, help, f.clone());
            let m = f.get_or_create(l).clone();
            m
        }
        let kv = Family::<ModelNameLabel, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            kv.clone(),
        );
        let kv_gauge = kv.get_or_create(&l).clone();
        let request_success = Family::<FinishLabels, Counter>::default();
        registry.register(
            "vllm:request_success",
            "Count of successfully processed requests.",
            request_success.clone(),
        );
        // Info gauges, as vLLM emulates Prometheus' info type (a gauge, so the picker's text
        // parser reads its value).
        let cache_config_info = Family::<CacheConfigLabels, Gauge>::default();
        registry.register(
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            cache_config_info.clone(),
        );
        let lora_requests_info = Family::<LoraLabels, Gauge<f64, AtomicU64>>::default();
        registry.register(
            "vllm:lora_requests_info",
            "Running stats on lora requests.",
            lora_requests_info.clone(),
        );
        Self {
            model_name: model_name.to_owned(),
            num_requests_running: gauge(
                registry,
                "vllm:num_requests_running",
                "Number of requests in model execution batches.",
                &l,
            ),
            num_requests_waiting: gauge(
                registry,
                "vllm:num_requests_waiting",
                "Number of requests waiting to be processed.",
                &l,
            ),
            kv_cache_usage_perc: kv_gauge,
            prompt_tokens: counter(
                registry,
                "vllm:prompt_tokens",
                "Number of prefill tokens processed.",
                &l,
            ),
            generation_tokens: counter(
                registry,
                "vllm:generation_tokens",
                "Number of generation tokens processed.",
                &l,
            ),
            request_success,
            time_to_first_token: histogram(
                registry,
                "vllm:time_to_first_token_seconds",
                "Histogram of time to first token in seconds.",
                &l,
                &TTFT_BUCKETS,
            ),
            inter_token_latency: histogram(
                registry,
                "vllm:inter_token_latency_seconds",
                "Histogram of inter-token latency in seconds.",
                &l,
                &ITL_BUCKETS,
            ),
            e2e_request_latency: histogram(
                registry,
                "vllm:e2e_request_latency_seconds",
                "Histogram of e2e request latency in seconds.",
                &l,
                &REQUEST_LATENCY_BUCKETS,
            ),
            request_queue_time: histogram(
                registry,
                "vllm:request_queue_time_seconds",
                "Histogram of time spent in WAITING phase for request.",
                &l,
                &REQUEST_LATENCY_BUCKETS,
            ),
            request_prefill_time: histogram(
                registry,
                "vllm:request_prefill_time_seconds",
                "Histogram of time spent in PREFILL phase for request.",
                &l,
                &REQUEST_LATENCY_BUCKETS,
            ),
            request_decode_time: histogram(
                registry,
                "vllm:request_decode_time_seconds",
                "Histogram of time spent in DECODE phase for request.",
                &l,
                &REQUEST_LATENCY_BUCKETS,
            ),
            time_per_output_token: histogram(
                registry,
                "vllm:time_per_output_token_seconds",
                "Histogram of time per output token in seconds.",
                &l,
                &ITL_BUCKETS,
            ),
            request_prompt_tokens: token_histogram(
                registry,
                "vllm:request_prompt_tokens",
                "Number of prefill tokens processed.",
                &l,
                max_model_len,
            ),
            request_generation_tokens: token_histogram(
                registry,
                "vllm:request_generation_tokens",
                "Number of generation tokens processed.",
                &l,
                max_model_len,
            ),
            cache_config_info,
            lora_requests_info,
        }
    }

    /// Publishes `vllm:cache_config_info` for the KV budget (set once, when the scheduler starts).
    pub fn set_cache_config(&self, block_size: usize, num_gpu_blocks: usize) {
        self.cache_config_info
            .get_or_create(&CacheConfigLabels {
                block_size: block_size.to_string(),
                cache_dtype: "auto".into(),
                enable_prefix_caching: "False".into(),
                num_gpu_blocks: num_gpu_blocks.to_string(),
                engine: "0".into(),
            })
            .set(1);
    }

    /// Sets `vllm:lora_requests_info` to the current Unix time, as vLLM does on every scheduler
    /// update (`set_to_current_time`); no adapters run or wait here.
    pub fn touch_lora_info(&self) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs_f64())
            .unwrap_or(0.0);
        self.lora_requests_info
            .get_or_create(&LoraLabels {
                max_lora: "0".into(),
                waiting_lora_adapters: String::new(),
                running_lora_adapters: String::new(),
            })
            .set(now);
    }

    /// Counts a finished request under its [`FinishedReason`] label.
    pub fn request_finished(&self, reason: FinishedReason) {
        self.request_success
            .get_or_create(&FinishLabels {
                model_name: self.model_name.clone(),
                finished_reason: reason.label().to_owned(),
            })
            .inc();
    }
}

/// The registry plus handles, as served at `/metrics`.
pub struct MetricsRegistry {
    registry: Registry,
    pub metrics: Metrics,
}

impl MetricsRegistry {
    pub fn new(model_name: &str, max_model_len: usize) -> Self {
        let mut registry = Registry::default();
        let metrics = Metrics::new(model_name, max_model_len, &mut registry);
        Self { registry, metrics }
    }

    /// OpenMetrics text, as served with [`CONTENT_TYPE`].
    pub fn encode(&self) -> String {
        let mut s = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut s, &self.registry);
        s
    }
}

pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exposition_uses_vllm_series_names_and_buckets() {
        assert_eq!(
            buckets_1_2_5(1000),
            vec![1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0]
        );
        let r = MetricsRegistry::new("qwen3-tiny", 8192);
        r.metrics.request_prompt_tokens.observe(9.0);
        r.metrics.prompt_tokens.inc_by(7);
        r.metrics.request_finished(FinishedReason::Stop);
        r.metrics.time_to_first_token.observe(0.03);
        r.metrics.kv_cache_usage_perc.set(0.25);
        let text = r.encode();
        for line in [
            "vllm:prompt_tokens_total{model_name=\"qwen3-tiny\"} 7",
            "vllm:request_success_total{model_name=\"qwen3-tiny\",finished_reason=\"stop\"} 1",
            "vllm:time_to_first_token_seconds_bucket{le=\"0.04\",model_name=\"qwen3-tiny\"} 1",
            "vllm:time_to_first_token_seconds_bucket{le=\"0.02\",model_name=\"qwen3-tiny\"} 0",
            "vllm:kv_cache_usage_perc{model_name=\"qwen3-tiny\"} 0.25",
            "vllm:num_requests_running{model_name=\"qwen3-tiny\"} 0",
            "vllm:request_decode_time_seconds_bucket{le=\"7680.0\",model_name=\"qwen3-tiny\"} 0",
            "vllm:request_prompt_tokens_bucket{le=\"10.0\",model_name=\"qwen3-tiny\"} 1",
            "vllm:request_prompt_tokens_bucket{le=\"5000.0\",model_name=\"qwen3-tiny\"} 1",
            "vllm:time_per_output_token_seconds_count{model_name=\"qwen3-tiny\"} 0",
        ] {
            assert!(text.contains(line), "missing {line:?} in\n{text}");
        }
    }
}
