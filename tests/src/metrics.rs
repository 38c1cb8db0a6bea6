//! Envoy's stats as a proxy-wasm filter sees them, and as Prometheus scrapes them.
//!
//! Envoy keeps one stat per full name (`wasmcustom.` + the name the filter defined), shared by every
//! worker's VM: counters only go up (a non-positive increment is rejected), gauges go up and down,
//! histograms record samples. On the way out, `stats_config.stats_tags` regexes turn the label segments
//! the filter encoded into the name (`model=.=X;.;`) into tags. This module does the same with the
//! regexes read from the shipped `envoy/envoy.yaml`, so a disagreement between the config and the
//! filter's tag encoding shows up as a wrong series in a test, not in production.

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{anyhow, bail, Context as _, Result};
use regex::Regex;
use serde_yaml_ng::Value;

use crate::abi::Status;

/// The prefix Envoy puts in front of every stat a wasm filter defines.
pub const WASM_CUSTOM_PREFIX: &str = "wasmcustom.";

/// Envoy's default histogram buckets, used when no `histogram_bucket_settings` entry matches.
pub const ENVOY_DEFAULT_BUCKETS: &[f64] = &[
    0.5, 1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0, 10000.0, 30000.0,
    60000.0, 300000.0, 600000.0, 1800000.0, 3600000.0,
];

/// The three proxy-wasm metric types (`proxy_define_metric`'s first argument).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

impl MetricKind {
    pub fn from_abi(value: i32) -> Option<MetricKind> {
        match value {
            0 => Some(MetricKind::Counter),
            1 => Some(MetricKind::Gauge),
            2 => Some(MetricKind::Histogram),
            _ => None,
        }
    }
}

#[derive(Clone, Debug, PartialEq)]
enum Stat {
    Counter(u64),
    Gauge(i64),
    Histogram(Vec<u64>),
}

impl Stat {
    fn kind(&self) -> MetricKind {
        match self {
            Stat::Counter(_) => MetricKind::Counter,
            Stat::Gauge(_) => MetricKind::Gauge,
            Stat::Histogram(_) => MetricKind::Histogram,
        }
    }
}

/// One process-wide stat store, keyed by the full Envoy stat name (with `wasmcustom.`).
#[derive(Debug, Default)]
pub struct MetricStore {
    stats: BTreeMap<String, Stat>,
    /// Things Envoy would have refused or that no correct filter does (e.g. the same name defined
    /// with two types); tests can assert this stays empty.
    pub anomalies: Vec<String>,
}

impl MetricStore {
    /// `proxy_define_metric`: creates the stat if it does not exist yet.
    pub fn define(&mut self, kind: MetricKind, full_name: &str) -> Status {
        match self.stats.get(full_name) {
            Some(stat) if stat.kind() != kind => {
                self.anomalies.push(format!(
                    "{full_name} defined as {kind:?} but it already is a {:?}",
                    stat.kind()
                ));
                Status::BadArgument
            }
            Some(_) => Status::Ok,
            None => {
                let stat = match kind {
                    MetricKind::Counter => Stat::Counter(0),
                    MetricKind::Gauge => Stat::Gauge(0),
                    MetricKind::Histogram => Stat::Histogram(Vec::new()),
                };
                self.stats.insert(full_name.to_owned(), stat);
                Status::Ok
            }
        }
    }

    /// `proxy_increment_metric`: counters take only positive offsets (Envoy answers BadArgument
    /// otherwise), gauges add or subtract, histograms cannot be incremented.
    pub fn increment(&mut self, full_name: &str, offset: i64) -> Status {
        match self.stats.get_mut(full_name) {
            None => Status::NotFound,
            Some(Stat::Counter(value)) => {
                if offset > 0 {
                    *value += offset as u64;
                    Status::Ok
                } else {
                    Status::BadArgument
                }
            }
            Some(Stat::Gauge(value)) => {
                *value += offset;
                Status::Ok
            }
            Some(Stat::Histogram(_)) => Status::BadArgument,
        }
    }

    /// `proxy_record_metric`: adds to a counter, sets a gauge, records a histogram sample.
    pub fn record(&mut self, full_name: &str, value: u64) -> Status {
        match self.stats.get_mut(full_name) {
            None => Status::NotFound,
            Some(Stat::Counter(current)) => {
                *current += value;
                Status::Ok
            }
            Some(Stat::Gauge(current)) => {
                *current = value as i64;
                Status::Ok
            }
            Some(Stat::Histogram(samples)) => {
                samples.push(value);
                Status::Ok
            }
        }
    }

    /// `proxy_get_metric`: counters and gauges only.
    pub fn get(&self, full_name: &str) -> Result<u64, Status> {
        match self.stats.get(full_name) {
            None => Err(Status::NotFound),
            Some(Stat::Counter(value)) => Ok(*value),
            Some(Stat::Gauge(value)) => Ok(*value as u64),
            Some(Stat::Histogram(_)) => Err(Status::BadArgument),
        }
    }

    /// Every stat as a tagged series, in stat-name order.
    pub fn series(&self, config: &StatsConfig) -> Vec<HostSeries> {
        self.stats
            .iter()
            .map(|(full_name, stat)| {
                let (name, labels) = config.extract_tags(full_name);
                let value = match stat {
                    Stat::Counter(value) => SeriesValue::Counter(*value),
                    Stat::Gauge(value) => SeriesValue::Gauge(*value),
                    Stat::Histogram(samples) => SeriesValue::Histogram(Histogram {
                        samples: samples.clone(),
                        bounds: config.buckets_for(full_name).to_vec(),
                    }),
                };
                HostSeries {
                    stat_name: full_name.clone(),
                    name,
                    labels,
                    value,
                }
            })
            .collect()
    }
}

/// One series of the wasm host's stats as Prometheus shows it (not the filter's `metrics::Series`, an
/// operation on one): metric name, labels in extraction order, and value.
#[derive(Clone, Debug, PartialEq)]
pub struct HostSeries {
    /// The full Envoy stat name, e.g. `wasmcustom.model=.=x;.;llm_requests_total`.
    pub stat_name: String,
    /// The Prometheus metric name, e.g. `llm_requests_total`.
    pub name: String,
    pub labels: Vec<(String, String)>,
    pub value: SeriesValue,
}

impl HostSeries {
    /// True when every `(name, value)` in `wanted` is one of this series' labels.
    pub fn has_labels(&self, wanted: &[(&str, &str)]) -> bool {
        wanted
            .iter()
            .all(|(k, v)| self.labels.iter().any(|(lk, lv)| lk == k && lv == v))
    }

    /// Labels sorted by name, for comparisons that ignore extraction order.
    pub fn sorted_labels(&self) -> BTreeMap<String, String> {
        self.labels.iter().cloned().collect()
    }

    /// `name{a="1",b="2"}` with labels sorted by name.
    pub fn key(&self) -> String {
        series_key(&self.name, &self.sorted_labels())
    }
}

pub use test_kit::fixture::series_key;

#[derive(Clone, Debug, PartialEq)]
pub enum SeriesValue {
    Counter(u64),
    Gauge(i64),
    Histogram(Histogram),
}

/// A histogram's raw samples and its bucket upper bounds.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Histogram {
    pub samples: Vec<u64>,
    pub bounds: Vec<f64>,
}

impl Histogram {
    pub fn count(&self) -> u64 {
        self.samples.len() as u64
    }

    pub fn sum(&self) -> u64 {
        self.samples.iter().sum()
    }

    /// Cumulative count per bucket bound (`value <= le`), then `+Inf`.
    pub fn cumulative_buckets(&self) -> Vec<(String, u64)> {
        let mut out: Vec<(String, u64)> = self
            .bounds
            .iter()
            .map(|le| {
                let n = self.samples.iter().filter(|s| (**s as f64) <= *le).count() as u64;
                (format_number(*le), n)
            })
            .collect();
        out.push(("+Inf".to_owned(), self.count()));
        out
    }

    fn merge(&mut self, other: &Histogram) {
        self.samples.extend_from_slice(&other.samples);
        if self.bounds.is_empty() {
            self.bounds = other.bounds.clone();
        }
    }
}

fn format_number(value: f64) -> String {
    if value.fract() == 0.0 && value.abs() < 1e15 {
        format!("{}", value as i64)
    } else {
        format!("{value}")
    }
}

/// One `stats_tags` entry: Envoy's regex tag extractor.
#[derive(Clone, Debug)]
pub struct TagExtractor {
    pub tag_name: String,
    pub regex: Regex,
}

/// `match` of a `histogram_bucket_settings` entry (Envoy's StringMatcher, the forms we need).
#[derive(Clone, Debug)]
pub enum StringMatcher {
    Exact(String),
    Prefix(String),
    Suffix(String),
    Contains(String),
    Regex(Regex),
}

impl StringMatcher {
    fn matches(&self, name: &str) -> bool {
        match self {
            StringMatcher::Exact(s) => name == s,
            StringMatcher::Prefix(s) => name.starts_with(s.as_str()),
            StringMatcher::Suffix(s) => name.ends_with(s.as_str()),
            StringMatcher::Contains(s) => name.contains(s.as_str()),
            StringMatcher::Regex(re) => re.find(name).is_some_and(|m| m.len() == name.len()),
        }
    }
}

/// The parts of Envoy's `stats_config` that shape what Prometheus sees.
#[derive(Clone, Debug, Default)]
pub struct StatsConfig {
    pub tags: Vec<TagExtractor>,
    pub buckets: Vec<(StringMatcher, Vec<f64>)>,
    /// Extraction results by stat name: tag extraction is a pure function of the name, and
    /// replays ask for the same few names thousands of times.
    cache: Arc<Mutex<HashMap<String, ExtractedName>>>,
}

type ExtractedName = (String, Vec<(String, String)>);

impl StatsConfig {
    /// `envoy/envoy.yaml` of this repository.
    pub fn default_path() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy/envoy.yaml")
    }

    /// Reads `stats_config` from the shipped Envoy bootstrap.
    pub fn load_default() -> Result<StatsConfig> {
        StatsConfig::load(&StatsConfig::default_path())
    }

    pub fn load(path: &Path) -> Result<StatsConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the Envoy config {}", path.display()))?;
        StatsConfig::from_envoy_yaml(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses `stats_config.stats_tags` and `stats_config.histogram_bucket_settings` of an Envoy
    /// bootstrap YAML. Fails, naming the field, on anything it does not understand.
    pub fn from_envoy_yaml(text: &str) -> Result<StatsConfig> {
        let doc: Value = serde_yaml_ng::from_str(text).context("parsing YAML")?;
        let Some(stats_config) = doc.get("stats_config") else {
            bail!("no top-level `stats_config`");
        };
        let mut config = StatsConfig::default();
        if let Some(tags) = stats_config.get("stats_tags") {
            let tags = tags
                .as_sequence()
                .ok_or_else(|| anyhow!("`stats_config.stats_tags` is not a list"))?;
            for (i, tag) in tags.iter().enumerate() {
                let field = |name: &str| -> Result<String> {
                    tag.get(name)
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            anyhow!(
                                "`stats_config.stats_tags[{i}].{name}` is missing or not a string"
                            )
                        })
                };
                let tag_name = field("tag_name")?;
                if tag.get("fixed_value").is_some() {
                    bail!("`stats_config.stats_tags[{i}].fixed_value` is not supported by the test host");
                }
                let pattern = field("regex")?;
                let regex = Regex::new(&pattern).with_context(|| {
                    format!("`stats_config.stats_tags[{i}].regex` {pattern:?} does not compile")
                })?;
                config.tags.push(TagExtractor { tag_name, regex });
            }
        }
        if let Some(settings) = stats_config.get("histogram_bucket_settings") {
            let settings = settings
                .as_sequence()
                .ok_or_else(|| anyhow!("`stats_config.histogram_bucket_settings` is not a list"))?;
            for (i, setting) in settings.iter().enumerate() {
                let at = format!("stats_config.histogram_bucket_settings[{i}]");
                let matcher = setting
                    .get("match")
                    .ok_or_else(|| anyhow!("`{at}.match` is missing"))?;
                let matcher = parse_matcher(matcher).with_context(|| format!("in `{at}.match`"))?;
                let buckets = setting
                    .get("buckets")
                    .and_then(Value::as_sequence)
                    .ok_or_else(|| anyhow!("`{at}.buckets` is missing or not a list"))?
                    .iter()
                    .map(|b| {
                        b.as_f64()
                            .ok_or_else(|| anyhow!("`{at}.buckets` has a non-number"))
                    })
                    .collect::<Result<Vec<f64>>>()?;
                config.buckets.push((matcher, buckets));
            }
        }
        Ok(config)
    }

    /// Envoy's tag extraction: every extractor searches the ORIGINAL stat name; its first capture
    /// group is removed from the name, its second is the tag value (the first if there is no
    /// second). Then the `wasmcustom.` prefix is dropped and the rest sanitised as Envoy's
    /// Prometheus exporter does.
    pub fn extract_tags(&self, full_name: &str) -> (String, Vec<(String, String)>) {
        let mut cache = self.cache.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(hit) = cache.get(full_name) {
            return hit.clone();
        }
        let extracted = self.extract_tags_uncached(full_name);
        cache.insert(full_name.to_owned(), extracted.clone());
        extracted
    }

    fn extract_tags_uncached(&self, full_name: &str) -> ExtractedName {
        let mut labels = Vec::new();
        let mut remove: Vec<(usize, usize)> = Vec::new();
        for extractor in &self.tags {
            let Some(caps) = extractor.regex.captures(full_name) else {
                continue;
            };
            let Some(removed) = caps.get(1) else {
                continue;
            };
            let value = caps.get(2).unwrap_or(removed);
            labels.push((extractor.tag_name.clone(), value.as_str().to_owned()));
            remove.push((removed.start(), removed.end()));
        }
        let mut name = String::with_capacity(full_name.len());
        for (i, ch) in full_name.char_indices() {
            if !remove.iter().any(|(s, e)| i >= *s && i < *e) {
                name.push(ch);
            }
        }
        let name = match name.strip_prefix(WASM_CUSTOM_PREFIX) {
            Some(rest) => rest.to_owned(),
            None => format!("envoy_{name}"),
        };
        (sanitize_metric_name(&name), labels)
    }

    /// The bucket bounds Envoy would use for this stat.
    pub fn buckets_for(&self, full_name: &str) -> &[f64] {
        self.buckets
            .iter()
            .find(|(matcher, _)| matcher.matches(full_name))
            .map(|(_, b)| b.as_slice())
            .unwrap_or(ENVOY_DEFAULT_BUCKETS)
    }
}

fn parse_matcher(value: &Value) -> Result<StringMatcher> {
    let text = |name: &str| value.get(name).and_then(Value::as_str).map(str::to_owned);
    if let Some(s) = text("exact") {
        return Ok(StringMatcher::Exact(s));
    }
    if let Some(s) = text("prefix") {
        return Ok(StringMatcher::Prefix(s));
    }
    if let Some(s) = text("suffix") {
        return Ok(StringMatcher::Suffix(s));
    }
    if let Some(s) = text("contains") {
        return Ok(StringMatcher::Contains(s));
    }
    if let Some(re) = value
        .get("safe_regex")
        .and_then(|r| r.get("regex"))
        .and_then(Value::as_str)
    {
        return Ok(StringMatcher::Regex(Regex::new(re)?));
    }
    bail!("expected one of exact, prefix, suffix, contains, safe_regex.regex")
}

fn sanitize_metric_name(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn escape_label_value(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Prometheus text exposition of the given series, one `# TYPE` per metric name, series with the
/// same name and labels merged (which cannot happen for one store, but keeps the function total).
pub fn render_prometheus(series: &[HostSeries]) -> String {
    let mut by_name: BTreeMap<&str, Vec<&HostSeries>> = BTreeMap::new();
    for s in series {
        by_name.entry(s.name.as_str()).or_default().push(s);
    }
    let mut out = String::new();
    for (name, list) in by_name {
        let kind = match list.first().map(|s| &s.value) {
            Some(SeriesValue::Counter(_)) => "counter",
            Some(SeriesValue::Gauge(_)) => "gauge",
            _ => "histogram",
        };
        let _ = writeln!(out, "# TYPE {name} {kind}");
        for s in list {
            let labels: Vec<String> = s
                .labels
                .iter()
                .map(|(k, v)| format!("{}=\"{}\"", sanitize_metric_name(k), escape_label_value(v)))
                .collect();
            let braces = |extra: Option<String>| {
                let mut all = labels.clone();
                all.extend(extra);
                if all.is_empty() {
                    String::new()
                } else {
                    format!("{{{}}}", all.join(","))
                }
            };
            match &s.value {
                SeriesValue::Counter(v) => {
                    let _ = writeln!(out, "{name}{} {v}", braces(None));
                }
                SeriesValue::Gauge(v) => {
                    let _ = writeln!(out, "{name}{} {v}", braces(None));
                }
                SeriesValue::Histogram(h) => {
                    for (le, n) in h.cumulative_buckets() {
                        let _ = writeln!(
                            out,
                            "{name}_bucket{} {n}",
                            braces(Some(format!("le=\"{le}\"")))
                        );
                    }
                    let _ = writeln!(out, "{name}_sum{} {}", braces(None), h.sum());
                    let _ = writeln!(out, "{name}_count{} {}", braces(None), h.count());
                }
            }
        }
    }
    out
}

/// What happened between two snapshots of one store: counter and gauge differences, and the
/// histogram samples recorded since `before`.
pub fn delta(before: &[HostSeries], after: &[HostSeries]) -> Vec<HostSeries> {
    after
        .iter()
        .map(|s| {
            let old = before
                .iter()
                .find(|b| b.stat_name == s.stat_name)
                .map(|b| &b.value);
            let value = match (&s.value, old) {
                (SeriesValue::Counter(a), Some(SeriesValue::Counter(b))) => {
                    SeriesValue::Counter(a - b)
                }
                (SeriesValue::Gauge(a), Some(SeriesValue::Gauge(b))) => SeriesValue::Gauge(a - b),
                (SeriesValue::Histogram(a), Some(SeriesValue::Histogram(b))) => {
                    SeriesValue::Histogram(Histogram {
                        samples: a
                            .samples
                            .get(b.samples.len()..)
                            .unwrap_or_default()
                            .to_vec(),
                        bounds: a.bounds.clone(),
                    })
                }
                (value, _) => value.clone(),
            };
            HostSeries { value, ..s.clone() }
        })
        .collect()
}

/// Adds up every series named `name` whose labels include `labels`: counters and gauges by value,
/// histograms by merging samples. `None` if no series matches.
pub fn merge_matching(
    series: &[HostSeries],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<SeriesValue> {
    let mut acc: Option<SeriesValue> = None;
    for s in series
        .iter()
        .filter(|s| s.name == name && s.has_labels(labels))
    {
        acc = Some(match (acc, &s.value) {
            (None, v) => v.clone(),
            (Some(SeriesValue::Counter(a)), SeriesValue::Counter(b)) => SeriesValue::Counter(a + b),
            (Some(SeriesValue::Gauge(a)), SeriesValue::Gauge(b)) => SeriesValue::Gauge(a + b),
            (Some(SeriesValue::Histogram(mut a)), SeriesValue::Histogram(b)) => {
                a.merge(b);
                SeriesValue::Histogram(a)
            }
            (Some(a), _) => a,
        });
    }
    acc
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The `stats_tags` of the behaviour contract, inline, so the extraction logic is tested even
    /// without `envoy/envoy.yaml`.
    const CONTRACT_STATS_CONFIG: &str = r#"
stats_config:
  stats_tags:
    - { tag_name: model, regex: "(model=\\.=(.*?);\\.;)" }
    - { tag_name: api, regex: "(api=\\.=(.*?);\\.;)" }
    - { tag_name: streaming, regex: "(streaming=\\.=(.*?);\\.;)" }
    - { tag_name: status_class, regex: "(status_class=\\.=(.*?);\\.;)" }
    - { tag_name: outcome, regex: "(outcome=\\.=(.*?);\\.;)" }
    - { tag_name: token_type, regex: "(token_type=\\.=(.*?);\\.;)" }
    - { tag_name: source, regex: "(source=\\.=(.*?);\\.;)" }
    - { tag_name: kind, regex: "(kind=\\.=(.*?);\\.;)" }
  histogram_bucket_settings:
    - match: { suffix: "llm_time_to_first_token_ms" }
      buckets: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 30000, 60000]
"#;

    fn contract() -> StatsConfig {
        StatsConfig::from_envoy_yaml(CONTRACT_STATS_CONFIG).unwrap()
    }

    #[test]
    fn contract_tag_encoding_becomes_prometheus_labels() {
        let (name, labels) = contract().extract_tags(
            "wasmcustom.model=.=Qwen/Qwen3-1.7B;.;api=.=chat_completions;.;streaming=.=true;.;status_class=.=2xx;.;outcome=.=completed;.;llm_requests_total",
        );
        assert_eq!(name, "llm_requests_total");
        let expected: Vec<(String, String)> = [
            ("model", "Qwen/Qwen3-1.7B"),
            ("api", "chat_completions"),
            ("streaming", "true"),
            ("status_class", "2xx"),
            ("outcome", "completed"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(labels, expected);
    }

    #[test]
    fn an_unextracted_segment_stays_in_the_metric_name() {
        let config = StatsConfig::from_envoy_yaml(
            "stats_config:\n  stats_tags:\n    - { tag_name: model, regex: \"(model=\\\\.=(.*?);\\\\.;)\" }\n",
        )
        .unwrap();
        let (name, labels) =
            config.extract_tags("wasmcustom.model=.=m;.;kind=.=x;.;llm_filter_errors_total");
        assert_eq!(labels, vec![("model".to_owned(), "m".to_owned())]);
        assert_eq!(name, "kind___x___llm_filter_errors_total");
    }

    #[test]
    fn counters_reject_non_positive_increments_and_gauges_go_both_ways() {
        let mut store = MetricStore::default();
        assert_eq!(
            store.define(MetricKind::Counter, "wasmcustom.c"),
            Status::Ok
        );
        assert_eq!(store.define(MetricKind::Gauge, "wasmcustom.g"), Status::Ok);
        assert_eq!(store.increment("wasmcustom.c", 0), Status::BadArgument);
        assert_eq!(store.increment("wasmcustom.c", -1), Status::BadArgument);
        assert_eq!(store.increment("wasmcustom.c", 3), Status::Ok);
        assert_eq!(store.get("wasmcustom.c"), Ok(3));
        assert_eq!(store.increment("wasmcustom.g", 2), Status::Ok);
        assert_eq!(store.increment("wasmcustom.g", -2), Status::Ok);
        assert_eq!(store.get("wasmcustom.g"), Ok(0));
        assert_eq!(store.increment("wasmcustom.missing", 1), Status::NotFound);
    }

    #[test]
    fn redefining_a_name_with_another_type_is_an_anomaly() {
        let mut store = MetricStore::default();
        assert_eq!(
            store.define(MetricKind::Counter, "wasmcustom.x"),
            Status::Ok
        );
        assert_eq!(
            store.define(MetricKind::Counter, "wasmcustom.x"),
            Status::Ok
        );
        assert_eq!(
            store.define(MetricKind::Histogram, "wasmcustom.x"),
            Status::BadArgument
        );
        assert_eq!(store.anomalies.len(), 1);
    }

    #[test]
    fn histograms_render_cumulative_buckets_sum_and_count() {
        let mut store = MetricStore::default();
        let name = "wasmcustom.model=.=m;.;api=.=chat_completions;.;llm_time_to_first_token_ms";
        store.define(MetricKind::Histogram, name);
        store.record(name, 150);
        store.record(name, 3);
        let text = render_prometheus(&store.series(&contract()));
        assert!(
            text.contains("# TYPE llm_time_to_first_token_ms histogram"),
            "{text}"
        );
        assert!(text.contains(
            "llm_time_to_first_token_ms_bucket{model=\"m\",api=\"chat_completions\",le=\"2\"} 0"
        ));
        assert!(text.contains(
            "llm_time_to_first_token_ms_bucket{model=\"m\",api=\"chat_completions\",le=\"5\"} 1"
        ));
        assert!(text.contains(
            "llm_time_to_first_token_ms_bucket{model=\"m\",api=\"chat_completions\",le=\"200\"} 2"
        ));
        assert!(text.contains(
            "llm_time_to_first_token_ms_bucket{model=\"m\",api=\"chat_completions\",le=\"+Inf\"} 2"
        ));
        assert!(text
            .contains("llm_time_to_first_token_ms_sum{model=\"m\",api=\"chat_completions\"} 153"));
        assert!(text
            .contains("llm_time_to_first_token_ms_count{model=\"m\",api=\"chat_completions\"} 2"));
    }

    #[test]
    fn histograms_without_bucket_settings_use_envoys_defaults() {
        assert_eq!(
            contract().buckets_for("wasmcustom.other_ms"),
            ENVOY_DEFAULT_BUCKETS
        );
    }

    #[test]
    fn a_yaml_without_stats_config_is_rejected_by_name() {
        let err = StatsConfig::from_envoy_yaml("static_resources: {}\n").unwrap_err();
        assert!(format!("{err:#}").contains("stats_config"), "{err:#}");
    }
}

#[cfg(test)]
mod shipped_config_tests {
    use super::*;

    #[test]
    fn the_shipped_envoy_yaml_extracts_every_contract_label() {
        let config = StatsConfig::load_default().unwrap();
        let (name, labels) = config.extract_tags(
            "wasmcustom.model=.=m;.;api=.=a;.;streaming=.=s;.;status_class=.=c;.;outcome=.=o;.;token_type=.=t;.;source=.=u;.;kind=.=k;.;x",
        );
        assert_eq!(name, "x");
        let names: Vec<&str> = labels.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(
            names,
            [
                "model",
                "api",
                "streaming",
                "status_class",
                "outcome",
                "token_type",
                "source",
                "kind"
            ]
        );
    }
}
