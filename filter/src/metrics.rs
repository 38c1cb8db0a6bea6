//! The metrics contract: every metric name, label name and label value the filter emits, and the one
//! function that encodes labels into an Envoy stat name.
//!
//! Labels travel inside the stat name with Istio's convention, `label=.=value;.;`, placed before the
//! metric name; Envoy's `stats_config.stats_tags` (in `envoy/envoy.yaml`, one regex per label name)
//! strip them out again and turn them into Prometheus labels. The test host applies the same regexes
//! from the same file, so the two cannot drift apart unnoticed.
//!
//! Extra labels (`label_headers` in the configuration, e.g. `tenant`) follow the static labels of
//! every metric that has a `model` label, in configuration order; their values are per-exchange ids
//! ([`LabelIds`]) that the shell's [`crate::labels::HeaderLabels`] turns back into strings. With none
//! configured every name and series is exactly what it is without the feature.
//!
//! Series are identified by a packed `u64` key so the host shell can cache metric ids without building a
//! name string per request: the name is formatted only the first time a series is seen.

use std::fmt::Write as _;

use crate::labels::ModelId;

/// The API kind, from the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Api {
    ChatCompletions,
    Completions,
    Embeddings,
    Responses,
    /// Anthropic's Messages API (`/v1/messages`).
    Messages,
}

impl Api {
    pub const ALL: [Api; 5] = [
        Api::ChatCompletions,
        Api::Completions,
        Api::Embeddings,
        Api::Responses,
        Api::Messages,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            Api::ChatCompletions => "chat_completions",
            Api::Completions => "completions",
            Api::Embeddings => "embeddings",
            Api::Responses => "responses",
            Api::Messages => "messages",
        }
    }

    pub fn from_label(label: &str) -> Option<Api> {
        Api::ALL.into_iter().find(|a| a.label() == label)
    }
}

/// The response status, by class; `None` when no response headers reached the filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StatusClass {
    None,
    S2xx,
    S3xx,
    S4xx,
    S5xx,
}

impl StatusClass {
    pub fn from_status(status: Option<u16>) -> StatusClass {
        match status {
            None => StatusClass::None,
            Some(s) if s >= 500 => StatusClass::S5xx,
            Some(s) if s >= 400 => StatusClass::S4xx,
            Some(s) if s >= 300 => StatusClass::S3xx,
            // 1xx cannot be final; anything below 300 that reached on_log is treated as success.
            Some(_) => StatusClass::S2xx,
        }
    }

    pub const fn label(self) -> &'static str {
        match self {
            StatusClass::None => "none",
            StatusClass::S2xx => "2xx",
            StatusClass::S3xx => "3xx",
            StatusClass::S4xx => "4xx",
            StatusClass::S5xx => "5xx",
        }
    }
}

/// How a request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    Completed,
    Error,
    ClientAbort,
    UpstreamAbort,
    Timeout,
}

impl Outcome {
    pub const fn label(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Error => "error",
            Outcome::ClientAbort => "client_abort",
            Outcome::UpstreamAbort => "upstream_abort",
            Outcome::Timeout => "timeout",
        }
    }
}

/// Token types. `Output` includes `Reasoning`; `Reasoning`, `CachedInput` and
/// `CacheCreationInput` are subsets (of output, input, input).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TokenType {
    Input,
    Output,
    Reasoning,
    CachedInput,
    /// Input written to the prompt cache (Anthropic `cache_creation_input_tokens`).
    CacheCreationInput,
}

impl TokenType {
    pub const fn label(self) -> &'static str {
        match self {
            TokenType::Input => "input",
            TokenType::Output => "output",
            TokenType::Reasoning => "reasoning",
            TokenType::CachedInput => "cached_input",
            TokenType::CacheCreationInput => "cache_creation_input",
        }
    }
}

/// Where a token count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Source {
    Usage,
    Estimated,
}

impl Source {
    pub const fn label(self) -> &'static str {
        match self {
            Source::Usage => "usage",
            Source::Estimated => "estimated",
        }
    }
}

/// What the filter could not read. Each kind is counted at most once per request.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorKind {
    RequestParse,
    RequestTooLarge,
    ResponseParse,
    ResponseTooLarge,
    EventTooLarge,
    EncodedBody,
    DecodeError,
}

impl ErrorKind {
    pub const ALL: [ErrorKind; 7] = [
        ErrorKind::RequestParse,
        ErrorKind::RequestTooLarge,
        ErrorKind::ResponseParse,
        ErrorKind::ResponseTooLarge,
        ErrorKind::EventTooLarge,
        ErrorKind::EncodedBody,
        ErrorKind::DecodeError,
    ];

    pub const fn label(self) -> &'static str {
        match self {
            ErrorKind::RequestParse => "request_parse",
            ErrorKind::RequestTooLarge => "request_too_large",
            ErrorKind::ResponseParse => "response_parse",
            ErrorKind::ResponseTooLarge => "response_too_large",
            ErrorKind::EventTooLarge => "event_too_large",
            ErrorKind::EncodedBody => "encoded_body",
            ErrorKind::DecodeError => "decode_error",
        }
    }

    const fn bit(self) -> u8 {
        1 << (self as u8)
    }
}

/// A set of [`ErrorKind`]s (one bit each).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorSet(u8);

impl ErrorSet {
    pub fn insert(&mut self, kind: ErrorKind) {
        self.0 |= kind.bit();
    }

    pub fn contains(self, kind: ErrorKind) -> bool {
        self.0 & kind.bit() != 0
    }

    pub fn iter(self) -> impl Iterator<Item = ErrorKind> {
        ErrorKind::ALL
            .into_iter()
            .filter(move |k| self.contains(*k))
    }
}

/// Envoy's three stat types, as proxy-wasm numbers them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricType {
    Counter,
    Gauge,
    Histogram,
}

/// A metric: one name, one type, one fixed list of label names. The dynamic-module build defines
/// each once (with its label names) and passes label values per update; the proxy-wasm build
/// encodes names and values into one stat name per series ([`Series::stat_name`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Metric {
    Requests,
    Tokens,
    TimeToFirstToken,
    RequestDuration,
    TimePerOutputToken,
    ActiveRequests,
    FilterErrors,
    UsageMissing,
    TokenCountMismatch,
    MaxInterTokenGap,
    TimeToFirstAnswerToken,
    ReasoningDuration,
}

impl Metric {
    pub const ALL: [Metric; 12] = [
        Metric::Requests,
        Metric::Tokens,
        Metric::TimeToFirstToken,
        Metric::RequestDuration,
        Metric::TimePerOutputToken,
        Metric::ActiveRequests,
        Metric::FilterErrors,
        Metric::UsageMissing,
        Metric::TokenCountMismatch,
        Metric::MaxInterTokenGap,
        Metric::TimeToFirstAnswerToken,
        Metric::ReasoningDuration,
    ];

    pub const fn name(self) -> &'static str {
        match self {
            Metric::Requests => REQUESTS_TOTAL,
            Metric::Tokens => TOKENS_TOTAL,
            Metric::TimeToFirstToken => TIME_TO_FIRST_TOKEN_MS,
            Metric::RequestDuration => REQUEST_DURATION_MS,
            Metric::TimePerOutputToken => TIME_PER_OUTPUT_TOKEN_US,
            Metric::ActiveRequests => ACTIVE_REQUESTS,
            Metric::FilterErrors => FILTER_ERRORS_TOTAL,
            Metric::UsageMissing => USAGE_MISSING_TOTAL,
            Metric::TokenCountMismatch => TOKEN_COUNT_MISMATCH_TOTAL,
            Metric::MaxInterTokenGap => MAX_INTER_TOKEN_GAP_MS,
            Metric::TimeToFirstAnswerToken => TIME_TO_FIRST_ANSWER_TOKEN_MS,
            Metric::ReasoningDuration => REASONING_DURATION_MS,
        }
    }

    pub const fn metric_type(self) -> MetricType {
        match self {
            Metric::Requests
            | Metric::Tokens
            | Metric::FilterErrors
            | Metric::UsageMissing
            | Metric::TokenCountMismatch => MetricType::Counter,
            Metric::ActiveRequests => MetricType::Gauge,
            Metric::TimeToFirstToken
            | Metric::RequestDuration
            | Metric::TimePerOutputToken
            | Metric::MaxInterTokenGap
            | Metric::TimeToFirstAnswerToken
            | Metric::ReasoningDuration => MetricType::Histogram,
        }
    }

    /// The label names of this metric, in the order they appear in stat names and in
    /// [`Series::label_values`].
    pub const fn label_names(self) -> &'static [&'static str] {
        match self {
            Metric::Requests => &["model", "api", "streaming", "status_class", "outcome"],
            Metric::Tokens => &["model", "api", "token_type", "source"],
            Metric::TimeToFirstToken
            | Metric::TimePerOutputToken
            | Metric::ActiveRequests
            | Metric::UsageMissing
            | Metric::TokenCountMismatch
            | Metric::MaxInterTokenGap
            | Metric::TimeToFirstAnswerToken
            | Metric::ReasoningDuration => &["model", "api"],
            Metric::RequestDuration => &["model", "api", "streaming"],
            Metric::FilterErrors => &["kind"],
        }
    }

    /// Whether the configured extra labels (`label_headers`) apply: every metric with a `model`
    /// label, that is all but `llm_filter_errors_total`.
    pub const fn takes_extra_labels(self) -> bool {
        !matches!(self, Metric::FilterErrors)
    }

    /// The full label names of this metric with the configured extra label names: the static ones
    /// ([`Metric::label_names`]) then, if the metric takes them, `extra` in order.
    pub fn label_names_with<'a>(self, extra: &'a [&'a str]) -> impl Iterator<Item = &'a str> {
        let extra: &[&str] = if self.takes_extra_labels() {
            extra
        } else {
            &[]
        };
        self.label_names()
            .iter()
            .copied()
            .chain(extra.iter().copied())
    }
}

/// Most static labels any metric has.
pub const MAX_LABELS: usize = 5;
/// Most extra labels (`label_headers` entries).
pub const MAX_EXTRA_LABELS: usize = 4;
/// Most labels any series has, extra labels included.
pub const MAX_ALL_LABELS: usize = MAX_LABELS + MAX_EXTRA_LABELS;

/// The extra label ids of one exchange, one per `label_headers` entry in configuration order
/// (VM-local, like [`ModelId`]: 0 is `none`, 1 `other`); unused slots stay 0. Fixed size, so an
/// exchange's memory does not grow with the header values.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct LabelIds(pub [u16; MAX_EXTRA_LABELS]);

/// The label values of one series (see [`Series::label_values`]); no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelValues<'a> {
    values: [&'a str; MAX_ALL_LABELS],
    len: usize,
}

impl<'a> LabelValues<'a> {
    fn set<const N: usize>(&mut self, values: [&'a str; N]) {
        for (slot, v) in self.values.iter_mut().zip(values) {
            *slot = v;
        }
        self.len = N.min(MAX_LABELS);
    }

    fn push(&mut self, value: &'a str) {
        if let Some(slot) = self.values.get_mut(self.len) {
            *slot = value;
            self.len += 1;
        }
    }

    pub fn as_slice(&self) -> &[&'a str] {
        self.values.get(..self.len).unwrap_or(&[])
    }
}

/// One stat series: a metric and its label values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Series {
    /// `llm_requests_total` (counter).
    Requests {
        model: ModelId,
        api: Api,
        streaming: bool,
        status: StatusClass,
        outcome: Outcome,
    },
    /// `llm_tokens_total` (counter).
    Tokens {
        model: ModelId,
        api: Api,
        token: TokenType,
        source: Source,
    },
    /// `llm_time_to_first_token_ms` (histogram, milliseconds).
    TimeToFirstToken { model: ModelId, api: Api },
    /// `llm_request_duration_ms` (histogram, milliseconds).
    RequestDuration {
        model: ModelId,
        api: Api,
        streaming: bool,
    },
    /// `llm_time_per_output_token_us` (histogram, microseconds).
    TimePerOutputToken { model: ModelId, api: Api },
    /// `llm_active_requests` (gauge).
    ActiveRequests { model: ModelId, api: Api },
    /// `llm_filter_errors_total` (counter).
    FilterErrors { kind: ErrorKind },
    /// `llm_usage_missing_total` (counter): a read stream that ended without any usage.
    UsageMissing { model: ModelId, api: Api },
    /// `llm_token_count_mismatch_total` (counter): usage `output` and the token-event count differ
    /// by more than 10 %.
    TokenCountMismatch { model: ModelId, api: Api },
    /// `llm_max_inter_token_gap_ms` (histogram, milliseconds): a stream's longest pause between
    /// token-bearing events.
    MaxInterTokenGap { model: ModelId, api: Api },
    /// `llm_time_to_first_answer_token_ms` (histogram, milliseconds): request headers → first token
    /// that is not reasoning.
    TimeToFirstAnswerToken { model: ModelId, api: Api },
    /// `llm_reasoning_duration_ms` (histogram, milliseconds): first reasoning token → first answer
    /// token.
    ReasoningDuration { model: ModelId, api: Api },
}

pub const REQUESTS_TOTAL: &str = "llm_requests_total";
pub const TOKENS_TOTAL: &str = "llm_tokens_total";
pub const TIME_TO_FIRST_TOKEN_MS: &str = "llm_time_to_first_token_ms";
pub const REQUEST_DURATION_MS: &str = "llm_request_duration_ms";
pub const TIME_PER_OUTPUT_TOKEN_US: &str = "llm_time_per_output_token_us";
pub const ACTIVE_REQUESTS: &str = "llm_active_requests";
pub const FILTER_ERRORS_TOTAL: &str = "llm_filter_errors_total";
pub const USAGE_MISSING_TOTAL: &str = "llm_usage_missing_total";
pub const TOKEN_COUNT_MISMATCH_TOTAL: &str = "llm_token_count_mismatch_total";
pub const MAX_INTER_TOKEN_GAP_MS: &str = "llm_max_inter_token_gap_ms";
pub const TIME_TO_FIRST_ANSWER_TOKEN_MS: &str = "llm_time_to_first_answer_token_ms";
pub const REASONING_DURATION_MS: &str = "llm_reasoning_duration_ms";

/// Every static label name, in the order labels appear in stat names. `envoy/envoy.yaml` has one
/// `stats_tags` entry per name (configured extra labels need one more each, added by the operator).
pub const LABEL_NAMES: [&str; 8] = [
    "model",
    "api",
    "streaming",
    "status_class",
    "outcome",
    "token_type",
    "source",
    "kind",
];

const fn bool_label(b: bool) -> &'static str {
    if b {
        "true"
    } else {
        "false"
    }
}

impl Series {
    pub const fn name(&self) -> &'static str {
        self.metric().name()
    }

    pub const fn metric_type(&self) -> MetricType {
        self.metric().metric_type()
    }

    /// A compact key that identifies the series within one VM (model ids are VM-local).
    /// Bits 0-3: metric; 4-31: the metric's own labels (`api` takes 3 bits); 32-47: model id.
    pub fn key(&self) -> u64 {
        let (metric, model, labels) = match *self {
            Series::Requests {
                model,
                api,
                streaming,
                status,
                outcome,
            } => (
                0u64,
                model,
                api as u64
                    | u64::from(streaming) << 3
                    | (status as u64) << 4
                    | (outcome as u64) << 7,
            ),
            Series::Tokens {
                model,
                api,
                token,
                source,
            } => (
                1,
                model,
                api as u64 | (token as u64) << 3 | (source as u64) << 6,
            ),
            Series::TimeToFirstToken { model, api } => (2, model, api as u64),
            Series::RequestDuration {
                model,
                api,
                streaming,
            } => (3, model, api as u64 | u64::from(streaming) << 3),
            Series::TimePerOutputToken { model, api } => (4, model, api as u64),
            Series::ActiveRequests { model, api } => (5, model, api as u64),
            Series::FilterErrors { kind } => (6, ModelId::UNKNOWN, kind as u64),
            Series::UsageMissing { model, api } => (7, model, api as u64),
            Series::TokenCountMismatch { model, api } => (8, model, api as u64),
            Series::MaxInterTokenGap { model, api } => (9, model, api as u64),
            Series::TimeToFirstAnswerToken { model, api } => (10, model, api as u64),
            Series::ReasoningDuration { model, api } => (11, model, api as u64),
        };
        metric | labels << 4 | u64::from(model.0) << 32
    }

    /// The key of this series with the exchange's extra label ids, for a cache of metric ids: unique
    /// per stat name. `labels` is dropped (zeroed) for a metric that takes no extra labels, so
    /// `llm_filter_errors_total` stays one series per kind.
    pub fn key_with(&self, labels: LabelIds) -> (u64, LabelIds) {
        let labels = if self.metric().takes_extra_labels() {
            labels
        } else {
            LabelIds::default()
        };
        (self.key(), labels)
    }

    /// The metric this series belongs to.
    pub const fn metric(&self) -> Metric {
        match self {
            Series::Requests { .. } => Metric::Requests,
            Series::Tokens { .. } => Metric::Tokens,
            Series::TimeToFirstToken { .. } => Metric::TimeToFirstToken,
            Series::RequestDuration { .. } => Metric::RequestDuration,
            Series::TimePerOutputToken { .. } => Metric::TimePerOutputToken,
            Series::ActiveRequests { .. } => Metric::ActiveRequests,
            Series::FilterErrors { .. } => Metric::FilterErrors,
            Series::UsageMissing { .. } => Metric::UsageMissing,
            Series::TokenCountMismatch { .. } => Metric::TokenCountMismatch,
            Series::MaxInterTokenGap { .. } => Metric::MaxInterTokenGap,
            Series::TimeToFirstAnswerToken { .. } => Metric::TimeToFirstAnswerToken,
            Series::ReasoningDuration { .. } => Metric::ReasoningDuration,
        }
    }

    /// The label values, in the order of [`Metric::label_names`]. `model_name` is the label value of
    /// this series' model id. Unused trailing slots are empty.
    pub fn label_values<'a>(&self, model_name: &'a str) -> LabelValues<'a> {
        let mut v = LabelValues::default();
        match *self {
            Series::Requests {
                api,
                streaming,
                status,
                outcome,
                ..
            } => v.set([
                model_name,
                api.label(),
                bool_label(streaming),
                status.label(),
                outcome.label(),
            ]),
            Series::Tokens {
                api, token, source, ..
            } => v.set([model_name, api.label(), token.label(), source.label()]),
            Series::TimeToFirstToken { api, .. }
            | Series::TimePerOutputToken { api, .. }
            | Series::ActiveRequests { api, .. }
            | Series::UsageMissing { api, .. }
            | Series::TokenCountMismatch { api, .. }
            | Series::MaxInterTokenGap { api, .. }
            | Series::TimeToFirstAnswerToken { api, .. }
            | Series::ReasoningDuration { api, .. } => v.set([model_name, api.label()]),
            Series::RequestDuration { api, streaming, .. } => {
                v.set([model_name, api.label(), bool_label(streaming)])
            }
            Series::FilterErrors { kind } => v.set([kind.label()]),
        }
        v
    }

    /// The label values with the extra labels' values (in the order of
    /// [`Metric::label_names_with`]): `extra` is appended when the metric takes extra labels.
    pub fn label_values_with<'a>(&self, model_name: &'a str, extra: &[&'a str]) -> LabelValues<'a> {
        let mut v = self.label_values(model_name);
        if self.metric().takes_extra_labels() {
            for value in extra {
                v.push(value);
            }
        }
        v
    }

    /// The full Envoy stat name of the proxy-wasm build, labels first
    /// (`model=.=X;.;api=.=Y;.;llm_requests_total`). `model_name` is the label value of this series'
    /// model id.
    pub fn stat_name(&self, model_name: &str) -> String {
        self.stat_name_with(model_name, &[], &[])
    }

    /// [`Series::stat_name`] with extra labels: `extra_names` and their `extra_values`
    /// (`…;.;outcome=.=completed;.;tenant=.=acme;.;llm_requests_total`); ignored for a metric that
    /// takes none.
    pub fn stat_name_with(
        &self,
        model_name: &str,
        extra_names: &[&str],
        extra_values: &[&str],
    ) -> String {
        let mut out = String::with_capacity(160);
        let values = self.label_values_with(model_name, extra_values);
        let names = self.metric().label_names_with(extra_names);
        for (name, value) in names.zip(values.as_slice()) {
            // Writing to a String cannot fail.
            let _ = write!(out, "{name}=.={value};.;");
        }
        out.push_str(self.name());
        out
    }

    /// The model id of the series, if it has a model label.
    pub fn model(&self) -> Option<ModelId> {
        match *self {
            Series::Requests { model, .. }
            | Series::Tokens { model, .. }
            | Series::TimeToFirstToken { model, .. }
            | Series::RequestDuration { model, .. }
            | Series::TimePerOutputToken { model, .. }
            | Series::ActiveRequests { model, .. }
            | Series::UsageMissing { model, .. }
            | Series::TokenCountMismatch { model, .. }
            | Series::MaxInterTokenGap { model, .. }
            | Series::TimeToFirstAnswerToken { model, .. }
            | Series::ReasoningDuration { model, .. } => Some(model),
            Series::FilterErrors { .. } => None,
        }
    }
}

/// What to do to a series: counters and gauges add, histograms record.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// Counter increment; never zero (Envoy rejects a zero offset).
    Add(u64),
    /// Gauge change.
    GaugeAdd(i64),
    /// Histogram sample.
    Record(u64),
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashSet;

    fn all_series() -> Vec<Series> {
        let model = ModelId(7);
        let mut v = Vec::new();
        for api in Api::ALL {
            for streaming in [false, true] {
                for status in [
                    StatusClass::None,
                    StatusClass::S2xx,
                    StatusClass::S3xx,
                    StatusClass::S4xx,
                    StatusClass::S5xx,
                ] {
                    for outcome in [
                        Outcome::Completed,
                        Outcome::Error,
                        Outcome::ClientAbort,
                        Outcome::UpstreamAbort,
                        Outcome::Timeout,
                    ] {
                        v.push(Series::Requests {
                            model,
                            api,
                            streaming,
                            status,
                            outcome,
                        });
                    }
                }
                v.push(Series::RequestDuration {
                    model,
                    api,
                    streaming,
                });
            }
            for token in [
                TokenType::Input,
                TokenType::Output,
                TokenType::Reasoning,
                TokenType::CachedInput,
                TokenType::CacheCreationInput,
            ] {
                for source in [Source::Usage, Source::Estimated] {
                    v.push(Series::Tokens {
                        model,
                        api,
                        token,
                        source,
                    });
                }
            }
            v.push(Series::TimeToFirstToken { model, api });
            v.push(Series::TimePerOutputToken { model, api });
            v.push(Series::ActiveRequests { model, api });
            v.push(Series::UsageMissing { model, api });
            v.push(Series::TokenCountMismatch { model, api });
            v.push(Series::MaxInterTokenGap { model, api });
            v.push(Series::TimeToFirstAnswerToken { model, api });
            v.push(Series::ReasoningDuration { model, api });
        }
        for kind in ErrorKind::ALL {
            v.push(Series::FilterErrors { kind });
        }
        v
    }

    #[test]
    fn keys_and_names_are_unique_per_series() {
        let series = all_series();
        let keys: HashSet<u64> = series.iter().map(Series::key).collect();
        let names: HashSet<String> = series.iter().map(|s| s.stat_name("m")).collect();
        assert_eq!(keys.len(), series.len());
        assert_eq!(names.len(), series.len());
    }

    #[test]
    fn all_series_covers_every_metric() {
        let metrics: HashSet<Metric> = all_series().iter().map(Series::metric).collect();
        assert_eq!(metrics.len(), Metric::ALL.len());
        let names: HashSet<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        assert_eq!(names.len(), Metric::ALL.len());
    }

    #[test]
    fn the_model_id_is_part_of_the_key() {
        let a = Series::ActiveRequests {
            model: ModelId(2),
            api: Api::Responses,
        };
        let b = Series::ActiveRequests {
            model: ModelId(3),
            api: Api::Responses,
        };
        assert_ne!(a.key(), b.key());
    }

    #[test]
    fn stat_names_follow_the_istio_tag_convention() {
        let s = Series::Requests {
            model: ModelId(9),
            api: Api::ChatCompletions,
            streaming: true,
            status: StatusClass::S2xx,
            outcome: Outcome::Completed,
        };
        assert_eq!(
            s.stat_name("Qwen/Qwen3-1.7B"),
            "model=.=Qwen/Qwen3-1.7B;.;api=.=chat_completions;.;streaming=.=true;.;status_class=.=2xx;.;outcome=.=completed;.;llm_requests_total"
        );
        assert_eq!(
            Series::FilterErrors {
                kind: ErrorKind::EventTooLarge
            }
            .stat_name("ignored"),
            "kind=.=event_too_large;.;llm_filter_errors_total"
        );
    }

    #[test]
    fn every_label_in_a_name_is_a_known_label() {
        for s in all_series() {
            let name = s.stat_name("m");
            for segment in name.split(";.;") {
                if let Some((label, _)) = segment.split_once("=.=") {
                    assert!(LABEL_NAMES.contains(&label), "{label} in {name}");
                }
            }
        }
    }

    #[test]
    fn every_series_has_one_value_per_label_of_its_metric() {
        for s in all_series() {
            let names = s.metric().label_names();
            assert_eq!(s.label_values("m").as_slice().len(), names.len(), "{s:?}");
            assert!(names.len() <= MAX_LABELS);
            for n in names {
                assert!(LABEL_NAMES.contains(n), "{n}");
            }
        }
    }

    #[test]
    fn error_sets_hold_each_kind_once() {
        let mut e = ErrorSet::default();
        e.insert(ErrorKind::EncodedBody);
        e.insert(ErrorKind::EncodedBody);
        e.insert(ErrorKind::RequestParse);
        assert_eq!(
            e.iter().collect::<Vec<_>>(),
            vec![ErrorKind::RequestParse, ErrorKind::EncodedBody]
        );
    }

    #[test]
    fn extra_labels_follow_the_static_ones_on_every_model_series() {
        let s = Series::Requests {
            model: ModelId(9),
            api: Api::ChatCompletions,
            streaming: true,
            status: StatusClass::S2xx,
            outcome: Outcome::Completed,
        };
        assert_eq!(
            s.stat_name_with("m", &["tenant", "team"], &["acme", "none"]),
            "model=.=m;.;api=.=chat_completions;.;streaming=.=true;.;status_class=.=2xx;.;outcome=.=completed;.;tenant=.=acme;.;team=.=none;.;llm_requests_total"
        );
        assert_eq!(
            Series::ActiveRequests {
                model: ModelId(2),
                api: Api::Messages
            }
            .stat_name_with("m", &["tenant"], &["acme"]),
            "model=.=m;.;api=.=messages;.;tenant=.=acme;.;llm_active_requests"
        );
        for s in all_series() {
            let names: Vec<&str> = s.metric().label_names_with(&["tenant"]).collect();
            let values = s.label_values_with("m", &["acme"]);
            assert_eq!(names.len(), values.as_slice().len(), "{s:?}");
            if s.model().is_some() {
                assert_eq!(names.last(), Some(&"tenant"), "{s:?}");
                assert_eq!(values.as_slice().last(), Some(&"acme"), "{s:?}");
                assert!(s
                    .stat_name_with("m", &["tenant"], &["acme"])
                    .contains(";.;tenant=.=acme;.;llm_"));
            }
            // Without extra labels, names are byte-identical to the plain ones.
            assert_eq!(s.stat_name_with("m", &[], &[]), s.stat_name("m"));
            assert_eq!(s.label_values_with("m", &[]), s.label_values("m"));
        }
    }

    #[test]
    fn filter_errors_take_no_extra_labels() {
        let s = Series::FilterErrors {
            kind: ErrorKind::EncodedBody,
        };
        assert!(!Metric::FilterErrors.takes_extra_labels());
        assert_eq!(
            s.stat_name_with("m", &["tenant"], &["acme"]),
            "kind=.=encoded_body;.;llm_filter_errors_total"
        );
        assert_eq!(
            Metric::FilterErrors
                .label_names_with(&["tenant"])
                .collect::<Vec<_>>(),
            ["kind"]
        );
        assert_eq!(
            s.key_with(LabelIds([3, 4, 0, 0])),
            s.key_with(LabelIds::default())
        );
        for m in Metric::ALL {
            assert_eq!(
                m.takes_extra_labels(),
                m.label_names().contains(&"model"),
                "{m:?}"
            );
        }
    }

    #[test]
    fn keys_with_extra_label_ids_are_unique_per_stat_name() {
        let ids = [
            LabelIds::default(),
            LabelIds([1, 0, 0, 0]),
            LabelIds([0, 1, 0, 0]),
            LabelIds([2, 3, 0, 0]),
            LabelIds([3, 2, 0, 0]),
        ];
        let tenants = ["none", "other", "acme", "globex"];
        let value = |id: u16| tenants.get(usize::from(id)).copied().unwrap_or("x");
        let mut keys = HashSet::new();
        let mut names = HashSet::new();
        let mut pairs = 0;
        for s in all_series() {
            for l in ids {
                let name =
                    s.stat_name_with("m", &["tenant", "team"], &[value(l.0[0]), value(l.0[1])]);
                let fresh_name = names.insert(name.clone());
                let fresh_key = keys.insert(s.key_with(l));
                assert_eq!(fresh_key, fresh_name, "{name}");
                pairs += usize::from(fresh_name);
            }
        }
        let errors = ErrorKind::ALL.len();
        assert_eq!(pairs, (all_series().len() - errors) * ids.len() + errors);
    }
}
