//! The metrics contract: every metric name, label name and label value the filter emits, and the one
//! function that encodes labels into an Envoy stat name.
//!
//! Labels travel inside the stat name with Istio's convention, `label=.=value;.;`, placed before the
//! metric name; Envoy's `stats_config.stats_tags` (in `envoy/envoy.yaml`, one regex per label name)
//! strip them out again and turn them into Prometheus labels. The test host applies the same regexes
//! from the same file, so the two cannot drift apart unnoticed.
//!
//! Series are identified by a packed `u64` key so the host shell can cache metric ids without building a
//! name string per request: the name is formatted only the first time a series is seen.

use std::fmt::Write as _;

use crate::model::ModelId;

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
}

/// Most labels any metric has.
pub const MAX_LABELS: usize = 5;

/// The label values of one series (see [`Series::label_values`]); no allocation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LabelValues<'a> {
    values: [&'a str; MAX_LABELS],
    len: usize,
}

impl<'a> LabelValues<'a> {
    fn set<const N: usize>(&mut self, values: [&'a str; N]) {
        for (slot, v) in self.values.iter_mut().zip(values) {
            *slot = v;
        }
        self.len = N.min(MAX_LABELS);
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

/// Every label name, in the order labels appear in stat names. `envoy/envoy.yaml` has one
/// `stats_tags` entry per name.
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

    /// The full Envoy stat name of the proxy-wasm build, labels first
    /// (`model=.=X;.;api=.=Y;.;llm_requests_total`). `model_name` is the label value of this series'
    /// model id.
    pub fn stat_name(&self, model_name: &str) -> String {
        let mut out = String::with_capacity(160);
        let values = self.label_values(model_name);
        for (name, value) in self.metric().label_names().iter().zip(values.as_slice()) {
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
}
