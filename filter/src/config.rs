//! Plugin configuration: the JSON an operator writes (Envoy `configuration`, Istio `pluginConfig`).
//!
//! Parsing is strict on purpose: an unknown field or a wrong type is an error that names the field, so
//! a typo never silently falls back to a default. The host shell logs the error once and refuses the
//! configuration; deployments use `FAIL_OPEN`, so traffic still flows.

use std::collections::BTreeMap;
use std::fmt;

use serde::Deserialize;

use crate::metrics::Api;
use crate::model::sanitize_model;

/// Largest accepted `max_models`: Envoy never frees a stat, so the label space must stay small.
pub const MAX_MODELS_LIMIT: usize = 1024;
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
                field: unknown_field_name(&inner.to_string()).unwrap_or(path),
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

/// serde reports an unknown field at the parent path; the field's own name is more useful.
fn unknown_field_name(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let end = rest.find('`')?;
    rest.get(..end).map(str::to_owned)
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
                        "{name:?} is not a valid model label (1-64 bytes of A-Z a-z 0-9 . _ / : @ + -)"
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
        })
    }
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
}
