//! Plugin configuration: the JSON an operator writes (Envoy `configuration`, Istio `pluginConfig`).
//!
//! Parsing is strict on purpose: an unknown field or a wrong type is an error that names the field, so
//! a typo never silently falls back to a default. The host shell logs the error once and refuses the
//! configuration; deployments use `FAIL_OPEN`, so traffic still flows.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::labels::{sanitize_model, HASH_LABEL_HEX_DIGITS};
use crate::metrics::{Api, LABEL_NAMES, MAX_EXTRA_LABELS};

/// Largest accepted `max_models`: Envoy never frees a stat, so the label space must stay small.
pub const MAX_MODELS_LIMIT: usize = 1024;
/// Largest accepted `label_headers[].max_values` and longest `label_headers[].values`.
pub const MAX_LABEL_VALUES_LIMIT: usize = 1024;
/// Default `label_headers[].max_values`.
pub const DEFAULT_MAX_LABEL_VALUES: usize = 32;
/// Longest accepted `label_headers[].label`.
pub const MAX_LABEL_NAME_BYTES: usize = 64;
/// Label values a `label_headers` entry reserves: a missing header, and a value beyond the bound.
pub const RESERVED_LABEL_VALUES: [&str; 2] = ["none", "other"];

/// Largest accepted byte bound for any of the `max_*_bytes` fields (64 MiB).
pub const MAX_BYTES_LIMIT: usize = 64 << 20;

/// The validated configuration the filter runs with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Allowed model labels (sanitised). Empty: the first `max_models` names seen are kept.
    pub models: Vec<String>,
    pub max_models: usize,
    pub max_request_body_bytes: usize,
    pub max_response_body_bytes: usize,
    pub max_event_bytes: usize,
    /// Path suffixes and their API kind, longest suffix first (so `/chat/completions` wins over
    /// `/completions`).
    pub paths: Vec<(String, Api)>,
    /// Extra labels read from request headers (`label_headers`), in configuration order.
    pub label_headers: Vec<LabelHeader>,
    /// Add `stream_options.include_usage` to streaming chat and completions requests that lack it,
    /// and remove what it adds from their responses (see [`crate::inject`]).
    pub inject_stream_usage: bool,
    /// The largest request body held to add the option; larger requests pass untouched. Keep it
    /// well below Envoy's `per_connection_buffer_limit_bytes` (a body held beyond that is a 413).
    pub inject_max_request_bytes: usize,
}

/// One `label_headers` entry: a request header whose value becomes the label `label` on every
/// series that has a `model` label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LabelHeader {
    /// The request header, lowercase.
    pub header: String,
    /// The label name (`[a-z_][a-z0-9_]*`, not a label the filter already has).
    pub label: String,
    /// Allowed label values (for `hash`: allowed hashes). Empty: the first `max_values` distinct
    /// values seen by the process are kept.
    pub values: Vec<String>,
    pub max_values: usize,
    /// Label a hash of the value instead of the value (see [`crate::labels::hash_label`]).
    pub hash: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            models: Vec::new(),
            max_models: 32,
            max_request_body_bytes: 1 << 20,
            max_response_body_bytes: 1 << 20,
            max_event_bytes: 256 << 10,
            paths: sorted_paths(vec![
                ("/chat/completions".to_owned(), Api::ChatCompletions),
                ("/completions".to_owned(), Api::Completions),
                ("/embeddings".to_owned(), Api::Embeddings),
                ("/responses".to_owned(), Api::Responses),
                ("/messages".to_owned(), Api::Messages),
            ]),
            label_headers: Vec::new(),
            inject_stream_usage: false,
            inject_max_request_bytes: 256 << 10,
        }
    }
}

/// A configuration error, naming the field and the offending value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub field: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "field `{}`: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    models: Option<Vec<String>>,
    max_models: Option<usize>,
    max_request_body_bytes: Option<usize>,
    max_response_body_bytes: Option<usize>,
    max_event_bytes: Option<usize>,
    paths: Option<BTreeMap<String, String>>,
    label_headers: Option<Vec<RawLabelHeader>>,
    inject_stream_usage: Option<bool>,
    inject_max_request_bytes: Option<usize>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLabelHeader {
    header: String,
    label: String,
    values: Option<Vec<String>>,
    max_values: Option<usize>,
    #[serde(default)]
    hash: bool,
}

impl Config {
    /// Parses the plugin configuration bytes. Empty (or all-whitespace) input means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Config, ConfigError> {
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Config::default());
        }
        let mut de = serde_json::Deserializer::from_slice(bytes);
        let raw: RawConfig = serde_path_to_error::deserialize(&mut de).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            ConfigError {
                field: match unknown_field_name(&inner.to_string()) {
                    Some(name) if path == "." || path.is_empty() => name,
                    // An empty key is its own path: name it so it reads as one.
                    _ if path.is_empty() => "\"\"".to_owned(),
                    _ => path,
                },
                message: inner.to_string(),
            }
        })?;
        de.end().map_err(|e| ConfigError {
            field: ".".to_owned(),
            message: e.to_string(),
        })?;
        Config::try_from(raw)
    }
}

/// The name of an unknown field, for when the path says only `.` (the path itself already ends in
/// the name, also inside `label_headers[i]`).
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    // serde writes "unknown field `NAME`, expected ...": the name itself may hold a backtick.
    let end = rest.rfind("`, expected").or_else(|| rest.rfind('`'))?;
    let name = rest.get(..end)?;
    // A name that would not read as one (empty, spaces, quotes, backticks) is shown quoted.
    let plain = !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    Some(if plain {
        name.to_owned()
    } else {
        format!("{name:?}")
    })
}

fn bounded(
    field: &str,
    value: Option<usize>,
    default: usize,
    max: usize,
) -> Result<usize, ConfigError> {
    match value {
        None => Ok(default),
        Some(v) if (1..=max).contains(&v) => Ok(v),
        Some(v) => Err(ConfigError {
            field: field.to_owned(),
            message: format!("{v} is out of range 1..={max}"),
        }),
    }
}

fn sorted_paths(mut paths: Vec<(String, Api)>) -> Vec<(String, Api)> {
    paths.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then_with(|| a.0.cmp(&b.0)));
    paths
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Config, ConfigError> {
        let d = Config::default();
        let mut models = Vec::new();
        for name in raw.models.unwrap_or_default() {
            let clean = sanitize_model(&name);
            if clean.as_ref() != name || name.is_empty() {
                return Err(ConfigError {
                    field: "models".to_owned(),
                    message: format!(
                        "{name:?} is not a valid model label (1-64 bytes of A-Z a-z 0-9 . _ / : @ + -, not ending in .)"
                    ),
                });
            }
            if !models.contains(&name) {
                models.push(name);
            }
        }
        if models.len() > MAX_MODELS_LIMIT {
            return Err(ConfigError {
                field: "models".to_owned(),
                message: format!("{} names; at most {MAX_MODELS_LIMIT}", models.len()),
            });
        }
        let paths = match raw.paths {
            None => d.paths,
            Some(map) if map.is_empty() => {
                return Err(ConfigError {
                    field: "paths".to_owned(),
                    message: "must list at least one path suffix".to_owned(),
                })
            }
            Some(map) => {
                let mut paths = Vec::with_capacity(map.len());
                for (suffix, api) in map {
                    let field = format!("paths.{suffix}");
                    if !suffix.starts_with('/') || suffix.contains('?') {
                        return Err(ConfigError {
                            field,
                            message: format!("{suffix:?} must be a path suffix starting with '/'"),
                        });
                    }
                    let api = Api::from_label(&api).ok_or_else(|| ConfigError {
                        field,
                        message: format!(
                            "{api:?} is not one of chat_completions, completions, embeddings, responses, messages"
                        ),
                    })?;
                    paths.push((suffix, api));
                }
                sorted_paths(paths)
            }
        };
        let label_headers = label_headers(raw.label_headers.unwrap_or_default())?;
        Ok(Config {
            models,
            max_models: bounded("max_models", raw.max_models, d.max_models, MAX_MODELS_LIMIT)?,
            max_request_body_bytes: bounded(
                "max_request_body_bytes",
                raw.max_request_body_bytes,
                d.max_request_body_bytes,
                MAX_BYTES_LIMIT,
            )?,
            max_response_body_bytes: bounded(
                "max_response_body_bytes",
                raw.max_response_body_bytes,
                d.max_response_body_bytes,
                MAX_BYTES_LIMIT,
            )?,
            max_event_bytes: bounded(
                "max_event_bytes",
                raw.max_event_bytes,
                d.max_event_bytes,
                MAX_BYTES_LIMIT,
            )?,
            paths,
            label_headers,
            inject_stream_usage: raw.inject_stream_usage.unwrap_or(d.inject_stream_usage),
            inject_max_request_bytes: bounded(
                "inject_max_request_bytes",
                raw.inject_max_request_bytes,
                d.inject_max_request_bytes,
                MAX_BYTES_LIMIT,
            )?,
        })
    }
}

fn config_error(field: String, message: String) -> ConfigError {
    ConfigError { field, message }
}

/// Whether a header name is acceptable: non-empty, lowercase, visible ASCII without separators
/// (a leading `:` allows pseudo-headers such as `:authority`).
fn valid_header(name: &str) -> bool {
    let rest = name.strip_prefix(':').unwrap_or(name);
    !rest.is_empty()
        && rest.bytes().all(|b| {
            b.is_ascii_lowercase()
                || b.is_ascii_digit()
                || matches!(
                    b,
                    b'!' | b'#'
                        | b'$'
                        | b'%'
                        | b'&'
                        | b'\''
                        | b'*'
                        | b'+'
                        | b'-'
                        | b'.'
                        | b'^'
                        | b'_'
                        | b'`'
                        | b'|'
                        | b'~'
                )
        })
}

/// Whether a label name matches `[a-z_][a-z0-9_]*` (and is not too long).
fn valid_label(name: &str) -> bool {
    let mut bytes = name.bytes();
    name.len() <= MAX_LABEL_NAME_BYTES
        && bytes
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b == b'_')
        && bytes.all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// A label name that one of `label` and it ends with the other (e.g. `kind` and `user_kind`, or
/// `type` and `token_type`): the tag regex `(N=\.=(.*?);\.;)` of the shorter would also match
/// inside the longer's segment, and Envoy would cut the wrong label out of the stat name.
fn tag_regex_clash<'a>(label: &str, others: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    others
        .into_iter()
        .find(|o| *o != label && (label.ends_with(*o) || o.ends_with(label)))
}

fn label_headers(raw: Vec<RawLabelHeader>) -> Result<Vec<LabelHeader>, ConfigError> {
    if raw.len() > MAX_EXTRA_LABELS {
        return Err(config_error(
            "label_headers".to_owned(),
            format!("{} entries; at most {MAX_EXTRA_LABELS}", raw.len()),
        ));
    }
    let mut out: Vec<LabelHeader> = Vec::with_capacity(raw.len());
    for (i, entry) in raw.into_iter().enumerate() {
        let field = |name: &str| format!("label_headers[{i}].{name}");
        let RawLabelHeader {
            header,
            label,
            values,
            max_values,
            hash,
        } = entry;
        if !valid_header(&header) {
            return Err(config_error(
                field("header"),
                format!("{header:?} is not a lowercase header name"),
            ));
        }
        if !valid_label(&label) {
            return Err(config_error(
                field("label"),
                format!(
                    "{label:?} is not a label name ([a-z_][a-z0-9_]*, at most {MAX_LABEL_NAME_BYTES} bytes)"
                ),
            ));
        }
        if LABEL_NAMES.contains(&label.as_str()) || matches!(label.as_str(), "le" | "quantile") {
            return Err(config_error(
                field("label"),
                format!("{label:?} is already a label"),
            ));
        }
        if label.starts_with("__") {
            return Err(config_error(
                field("label"),
                format!("{label:?}: names starting with `__` are reserved by Prometheus"),
            ));
        }
        if let Some(j) = out.iter().position(|o| o.label == label) {
            return Err(config_error(
                field("label"),
                format!("{label:?} is already the label of label_headers[{j}]"),
            ));
        }
        let earlier = out.iter().map(|o| o.label.as_str());
        if let Some(other) = tag_regex_clash(&label, LABEL_NAMES.iter().copied().chain(earlier)) {
            return Err(config_error(
                field("label"),
                format!(
                    "{label:?} and the label {other:?}: one ends with the other, so the stats_tags regex of the shorter would also match the longer"
                ),
            ));
        }
        if values.is_some() && max_values.is_some() {
            return Err(config_error(
                field("max_values"),
                "`values` and `max_values` are exclusive: an allowlist is its own bound".to_owned(),
            ));
        }
        let max_values = bounded(
            &field("max_values"),
            max_values,
            DEFAULT_MAX_LABEL_VALUES,
            MAX_LABEL_VALUES_LIMIT,
        )?;
        let mut allowed: Vec<String> = Vec::new();
        if let Some(values) = values {
            if values.is_empty() {
                return Err(config_error(
                    field("values"),
                    "must list at least one value (leave it out to keep the first `max_values`)"
                        .to_owned(),
                ));
            }
            for value in values {
                let ok = if hash {
                    value.len() == HASH_LABEL_HEX_DIGITS
                        && value
                            .bytes()
                            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
                } else {
                    !value.is_empty() && sanitize_model(&value).as_ref() == value
                };
                if !ok {
                    let want = if hash {
                        format!("{HASH_LABEL_HEX_DIGITS} lowercase hex digits, a hashed value")
                    } else {
                        "1-64 bytes of A-Z a-z 0-9 . _ / : @ + -, not ending in .".to_owned()
                    };
                    return Err(config_error(
                        field("values"),
                        format!("{value:?} is not a valid label value ({want})"),
                    ));
                }
                if RESERVED_LABEL_VALUES.contains(&value.as_str()) {
                    return Err(config_error(
                        field("values"),
                        format!("{value:?} is reserved (missing header, value beyond the bound)"),
                    ));
                }
                if !allowed.contains(&value) {
                    allowed.push(value);
                }
            }
            if allowed.len() > MAX_LABEL_VALUES_LIMIT {
                return Err(config_error(
                    field("values"),
                    format!("{} values; at most {MAX_LABEL_VALUES_LIMIT}", allowed.len()),
                ));
            }
        }
        out.push(LabelHeader {
            header,
            label,
            values: allowed,
            max_values,
            hash,
        });
    }
    Ok(out)
}

impl Config {
    /// The API kind of a request path, or `None` when the filter should ignore the request.
    /// The query string is ignored; suffixes are tried longest first.
    pub fn api_for_path(&self, path: &str) -> Option<Api> {
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        self.paths
            .iter()
            .find(|(suffix, _)| path.ends_with(suffix.as_str()))
            .map(|(_, api)| *api)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_and_braces_mean_defaults() {
        assert_eq!(Config::parse(b"").unwrap(), Config::default());
        assert_eq!(Config::parse(b"  \n").unwrap(), Config::default());
        assert_eq!(Config::parse(b"{}").unwrap(), Config::default());
    }

    #[test]
    fn a_full_config_is_accepted() {
        let c = Config::parse(
            br#"{"models":["gpt-4o","Qwen/Qwen3-1.7B"],"max_models":8,"max_request_body_bytes":2048,
                "max_response_body_bytes":4096,"max_event_bytes":1024,
                "paths":{"/v1/chat/completions":"chat_completions","/generate":"completions"}}"#,
        )
        .unwrap();
        assert_eq!(c.models, vec!["gpt-4o", "Qwen/Qwen3-1.7B"]);
        assert_eq!(c.max_models, 8);
        assert_eq!(c.max_request_body_bytes, 2048);
        assert_eq!(c.max_response_body_bytes, 4096);
        assert_eq!(c.max_event_bytes, 1024);
        assert_eq!(
            c.api_for_path("/v1/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(c.api_for_path("/x/generate?a=1"), Some(Api::Completions));
        assert_eq!(c.api_for_path("/v1/embeddings"), None);
    }

    #[test]
    fn an_unknown_field_is_rejected_by_name() {
        let e = Config::parse(br#"{"max_model": 3}"#).unwrap_err();
        assert_eq!(e.field, "max_model");
        assert!(e.to_string().contains("max_model"), "{e}");
    }

    #[test]
    fn a_wrong_type_is_rejected_naming_the_field() {
        let e = Config::parse(br#"{"max_models": "many"}"#).unwrap_err();
        assert_eq!(e.field, "max_models");
        let e = Config::parse(br#"{"models": "gpt-4o"}"#).unwrap_err();
        assert_eq!(e.field, "models");
        let e = Config::parse(br#"{"paths": {"/x": 3}}"#).unwrap_err();
        assert_eq!(e.field, "paths./x");
    }

    #[test]
    fn out_of_range_values_are_rejected_with_the_value() {
        let e = Config::parse(br#"{"max_models": 0}"#).unwrap_err();
        assert_eq!(e.field, "max_models");
        assert!(e.message.contains('0'));
        let e = Config::parse(br#"{"max_event_bytes": 999999999999}"#).unwrap_err();
        assert_eq!(e.field, "max_event_bytes");
    }

    #[test]
    fn bad_paths_and_models_are_rejected() {
        assert_eq!(
            Config::parse(br#"{"paths": {"/x": "chat"}}"#)
                .unwrap_err()
                .field,
            "paths./x"
        );
        assert_eq!(
            Config::parse(br#"{"paths": {"x": "completions"}}"#)
                .unwrap_err()
                .field,
            "paths.x"
        );
        assert_eq!(
            Config::parse(br#"{"paths": {}}"#).unwrap_err().field,
            "paths"
        );
        assert_eq!(
            Config::parse(br#"{"models": ["a b"]}"#).unwrap_err().field,
            "models"
        );
        assert_eq!(
            Config::parse(br#"{"models": [""]}"#).unwrap_err().field,
            "models"
        );
    }

    #[test]
    fn not_json_or_trailing_garbage_is_rejected() {
        assert!(Config::parse(b"{").is_err());
        assert!(Config::parse(b"[]").is_err());
        assert!(Config::parse(b"{} x").is_err());
    }

    #[test]
    fn the_longest_suffix_wins_and_the_query_is_ignored() {
        let c = Config::default();
        assert_eq!(
            c.api_for_path("/v1/chat/completions"),
            Some(Api::ChatCompletions)
        );
        assert_eq!(
            c.api_for_path("/v1/completions?x=/chat/completions"),
            Some(Api::Completions)
        );
        assert_eq!(c.api_for_path("/v1/embeddings"), Some(Api::Embeddings));
        assert_eq!(c.api_for_path("/v1/responses"), Some(Api::Responses));
        assert_eq!(c.api_for_path("/v1/messages"), Some(Api::Messages));
        assert_eq!(
            c.api_for_path("/v1/messages?beta=true"),
            Some(Api::Messages)
        );
        assert_eq!(c.api_for_path("/v1/messages/count_tokens"), None);
        assert_eq!(c.api_for_path("/v1/models"), None);
        assert_eq!(c.api_for_path("/v1/chat/completions/"), None);
    }

    fn label_error(json: &str) -> ConfigError {
        Config::parse(json.as_bytes()).unwrap_err()
    }

    #[test]
    fn label_headers_are_accepted_with_defaults() {
        let c = Config::parse(
            br#"{"label_headers":[{"header":"x-tenant","label":"tenant"},
                {"header":"x-team","label":"team","values":["a","b","a"]},
                {"header":"authorization","label":"api_key","hash":true,"max_values":100}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.label_headers,
            vec![
                LabelHeader {
                    header: "x-tenant".to_owned(),
                    label: "tenant".to_owned(),
                    values: vec![],
                    max_values: 32,
                    hash: false,
                },
                LabelHeader {
                    header: "x-team".to_owned(),
                    label: "team".to_owned(),
                    values: vec!["a".to_owned(), "b".to_owned()],
                    max_values: 32,
                    hash: false,
                },
                LabelHeader {
                    header: "authorization".to_owned(),
                    label: "api_key".to_owned(),
                    values: vec![],
                    max_values: 100,
                    hash: true,
                },
            ]
        );
        assert!(Config::default().label_headers.is_empty());
        assert_eq!(
            Config::parse(br#"{"label_headers":[]}"#).unwrap(),
            Config::default()
        );
    }

    #[test]
    fn a_label_that_already_exists_is_rejected_by_field_and_value() {
        let e = label_error(r#"{"label_headers":[{"header":"x-m","label":"model"}]}"#);
        assert_eq!(
            e.to_string(),
            r#"field `label_headers[0].label`: "model" is already a label"#
        );
        for taken in ["kind", "api", "le", "quantile"] {
            let e = label_error(&format!(
                r#"{{"label_headers":[{{"header":"x-a","label":"{taken}"}}]}}"#
            ));
            assert_eq!(e.field, "label_headers[0].label", "{taken}");
            assert!(e.message.contains(taken), "{e}");
        }
        let e = label_error(
            r#"{"label_headers":[{"header":"x-a","label":"tenant"},{"header":"x-b","label":"tenant"}]}"#,
        );
        assert_eq!(e.field, "label_headers[1].label");
        assert!(e.message.contains("label_headers[0]"), "{e}");
    }

    #[test]
    fn label_names_must_be_prometheus_names_that_tag_regexes_keep_apart() {
        for bad in ["Tenant", "1tenant", "ten-ant", "", "__tenant", "té"] {
            let e = label_error(&format!(
                r#"{{"label_headers":[{{"header":"x-a","label":"{bad}"}}]}}"#
            ));
            assert_eq!(e.field, "label_headers[0].label", "{bad:?}");
        }
        // `type` is the end of `token_type`, `user_kind` ends with `kind`: one label's regex would
        // cut the other's segment out of the stat name.
        for clash in ["type", "user_kind", "class", "e"] {
            let e = label_error(&format!(
                r#"{{"label_headers":[{{"header":"x-a","label":"{clash}"}}]}}"#
            ));
            assert_eq!(e.field, "label_headers[0].label", "{clash}");
            assert!(e.message.contains("ends with"), "{e}");
        }
        let e = label_error(
            r#"{"label_headers":[{"header":"x-a","label":"team"},{"header":"x-b","label":"sub_team"}]}"#,
        );
        assert_eq!(e.field, "label_headers[1].label");
        assert!(e.message.contains("\"team\""), "{e}");
        for ok in ["tenant", "_t", "team2", "user_id"] {
            let c = Config::parse(
                format!(r#"{{"label_headers":[{{"header":"x-a","label":"{ok}"}}]}}"#).as_bytes(),
            );
            assert!(c.is_ok(), "{ok}: {c:?}");
        }
    }

    #[test]
    fn label_headers_must_be_lowercase_names() {
        for bad in ["X-Tenant", "", "x tenant", ":", "x-ténant"] {
            let e = label_error(&format!(
                r#"{{"label_headers":[{{"header":"{bad}","label":"tenant"}}]}}"#
            ));
            assert_eq!(e.field, "label_headers[0].header", "{bad:?}");
            assert!(e.message.contains(&format!("{bad:?}")), "{e}");
        }
        assert!(
            Config::parse(br#"{"label_headers":[{"header":":authority","label":"host"}]}"#).is_ok()
        );
    }

    #[test]
    fn label_header_bounds_and_values_are_checked() {
        let e = label_error(
            r#"{"label_headers":[{"header":"x-a","label":"t","values":["a"],"max_values":3}]}"#,
        );
        assert_eq!(e.field, "label_headers[0].max_values");
        assert!(e.message.contains("exclusive"), "{e}");
        for n in ["0", "1025"] {
            let e = label_error(&format!(
                r#"{{"label_headers":[{{"header":"x-a","label":"t","max_values":{n}}}]}}"#
            ));
            assert_eq!(e.field, "label_headers[0].max_values");
            assert!(e.message.contains(n), "{e}");
        }
        for bad in [
            r#"[]"#,
            r#"["a b"]"#,
            r#"[""]"#,
            r#"["none"]"#,
            r#"["other"]"#,
        ] {
            let e = label_error(&format!(
                r#"{{"label_headers":[{{"header":"x-a","label":"t","values":{bad}}}]}}"#
            ));
            assert_eq!(e.field, "label_headers[0].values", "{bad}");
        }
        // Hashed labels allow hashes, not raw values.
        let e = label_error(
            r#"{"label_headers":[{"header":"x-a","label":"t","hash":true,"values":["sk-secret"]}]}"#,
        );
        assert_eq!(e.field, "label_headers[0].values");
        assert!(
            Config::parse(
                br#"{"label_headers":[{"header":"x-a","label":"t","hash":true,"values":["af63dc4c8601"]}]}"#
            )
            .is_ok()
        );
        let five = r#"{"header":"x-a","label":"a"},{"header":"x-b","label":"b"},{"header":"x-c","label":"c"},{"header":"x-d","label":"d"},{"header":"x-f","label":"f"}"#;
        let e = label_error(&format!(r#"{{"label_headers":[{five}]}}"#));
        assert_eq!(e.field, "label_headers");
        assert!(e.message.contains('5'), "{e}");
    }

    #[test]
    fn label_header_entries_are_strict() {
        let e = label_error(r#"{"label_headers":[{"header":"x-a","label":"t","hsah":true}]}"#);
        assert_eq!(e.field, "label_headers[0].hsah");
        let e = label_error(r#"{"label_headers":[{"label":"t"}]}"#);
        assert_eq!(e.field, "label_headers[0]");
        assert!(e.message.contains("header"), "{e}");
        let e = label_error(r#"{"label_headers":[{"header":"x-a","label":"t","hash":"yes"}]}"#);
        assert_eq!(e.field, "label_headers[0].hash");
    }

    #[test]
    fn inject_stream_usage_is_off_by_default_and_its_fields_are_checked() {
        let d = Config::default();
        assert!(!d.inject_stream_usage);
        assert_eq!(d.inject_max_request_bytes, 256 << 10);
        let c = Config::parse(br#"{"inject_stream_usage":true,"inject_max_request_bytes":4096}"#)
            .unwrap_or_default();
        assert!(c.inject_stream_usage);
        assert_eq!(c.inject_max_request_bytes, 4096);
        let e = Config::parse(br#"{"inject_stream_usage":"yes"}"#).unwrap_err();
        assert_eq!(e.field, "inject_stream_usage");
        let e = Config::parse(br#"{"inject_max_request_bytes":0}"#).unwrap_err();
        assert_eq!(e.field, "inject_max_request_bytes");
        assert!(e.message.contains('0'), "{e}");
    }

    #[test]
    fn an_unknown_field_with_an_empty_name_is_named_quoted() {
        // Found by the `config` fuzz target: an empty key gave the error "field ``".
        let e = Config::parse(br#"{"": 1}"#).unwrap_err();
        assert_eq!(e.field, r#""""#);
        let e = Config::parse(br#"{"max_model": 1}"#).unwrap_err();
        assert_eq!(e.field, "max_model");
    }
}
