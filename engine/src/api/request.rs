//! Typed views of request bodies, and errors that name the field with the wrong type.
//!
//! A body is first parsed into a `serde_json::Value` (so a syntax error keeps its own message and
//! a repeated key keeps its last value), then read through the serde views below with
//! `serde_path_to_error`, which says where a value had the wrong type; [`type_error`] turns that
//! path into OpenAI's `param` and the message for that field. `null` counts as absent, as in the
//! OpenAI SDKs, except where noted. Unknown fields are ignored, as OpenAI-compatible servers do.
//! What accepted values mean (ranges, supported options, required fields) is checked afterwards in
//! the `validate` module.

use axum::body::Bytes;
use serde::de::{IgnoredAny, MapAccess};
use serde::Deserialize;
use serde_json::Value;
use serde_path_to_error::Segment;

use super::fields::{not_null, Object, Part, Passthrough, Prompt, Seed, TextOr, TypedMembers};
use super::ApiError;

/// The message for a `response_format` other than text (any shape or type value).
pub const ONLY_TEXT_FORMAT: &str = "only `response_format: {\"type\": \"text\"}` is supported";
/// The message for a `tool_choice` other than "auto" or "none" (any shape or value).
pub const AUTO_OR_NONE: &str =
    "`tool_choice` must be \"auto\" or \"none\" (forced tool calls are not supported)";
/// The message for a content part without a string `type`.
pub const PART_NEEDS_TYPE: &str = "content parts need a `type`";

/// Fields both endpoints accept.
#[derive(Deserialize)]
pub struct CommonView {
    pub model: Option<String>,
    pub stream: Option<bool>,
    pub stream_options: Option<Object<StreamOptions>>,
    pub n: Option<i64>,
    pub best_of: Option<i64>,
    pub logprobs: Option<bool>,
    pub response_format: Option<Object<ResponseFormat>>,
    pub max_completion_tokens: Option<i64>,
    pub temperature: Option<f64>,
    pub top_p: Option<f64>,
    pub top_k: Option<i64>,
    pub seed: Option<Seed>,
    pub presence_penalty: Option<f64>,
    pub frequency_penalty: Option<f64>,
    pub stop: Option<TextOr<String>>,
}

/// `max_tokens`, read only when its newer name `max_completion_tokens` is absent: that one wins
/// when both are sent, so a serde alias (which refuses both at once) does not fit.
#[derive(Deserialize)]
pub struct MaxTokensView {
    pub max_tokens: Option<i64>,
}

#[derive(Deserialize)]
pub struct StreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Deserialize)]
pub struct ResponseFormat {
    #[serde(rename = "type")]
    pub kind: Option<String>,
}

/// Fields of `/v1/chat/completions`.
#[derive(Deserialize)]
pub struct ChatView {
    /// `null` is refused as "must be an array", unlike an absent field.
    #[serde(default, deserialize_with = "not_null")]
    pub messages: Option<Vec<Passthrough<MessageFields>>>,
    pub chat_template_kwargs: Option<Passthrough<TemplateKwargs>>,
    /// The top-level switch; `chat_template_kwargs.enable_thinking` wins when both are sent.
    pub enable_thinking: Option<bool>,
    /// LangChain's extra_body sends it; reasoning is always returned, so it is only type-checked.
    #[allow(dead_code)]
    pub return_reasoning: Option<bool>,
    pub tools: Option<Vec<Value>>,
    pub tool_choice: Option<String>,
    pub add_generation_prompt: Option<bool>,
}

/// Fields of `/v1/completions`.
#[derive(Deserialize)]
pub struct CompletionView {
    pub echo: Option<bool>,
    /// Refused whatever its value, so it is not read.
    pub suffix: Option<IgnoredAny>,
    pub prompt: Option<Prompt>,
}

/// `role` and `content` of a chat message; the handler writes both back normalised.
#[derive(Default)]
pub struct MessageFields {
    pub role: Option<String>,
    /// Text, or content parts.
    pub content: Option<TextOr<Object<Part>>>,
}

impl TypedMembers for MessageFields {
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<Option<Value>, A::Error> {
        match key {
            // `null` is a wrong type here, not an absent role.
            "role" => self.role = Some(map.next_value()?),
            "content" => self.content = map.next_value()?,
            _ => return Ok(None),
        }
        // A placeholder that keeps the member's place; the handler overwrites it.
        Ok(Some(Value::Null))
    }
}

/// `chat_template_kwargs`: passed to the template as sent; `enable_thinking` must be a boolean.
#[derive(Default)]
pub struct TemplateKwargs {
    pub enable_thinking: Option<bool>,
}

impl TypedMembers for TemplateKwargs {
    fn read<'de, A: MapAccess<'de>>(
        &mut self,
        key: &str,
        map: &mut A,
    ) -> Result<Option<Value>, A::Error> {
        if key != "enable_thinking" {
            return Ok(None);
        }
        self.enable_thinking = map.next_value()?;
        Ok(Some(Value::from(self.enable_thinking)))
    }
}

/// Parses a body into JSON, which must be an object.
pub fn parse_body(body: &Bytes) -> Result<Value, ApiError> {
    let v: Value = serde_json::from_slice(body).map_err(|e| ApiError::BadRequest {
        message: format!("The request body is not valid JSON: {e}"),
        param: None,
    })?;
    if !v.is_object() {
        return Err(ApiError::BadRequest {
            message: "The request body must be a JSON object".into(),
            param: None,
        });
    }
    Ok(v)
}

/// Reads the typed view `T` of a parsed body.
pub fn view<'a, T: Deserialize<'a>>(body: &'a Value) -> Result<T, ApiError> {
    serde_path_to_error::deserialize(body).map_err(|e| type_error(&e))
}

/// OpenAI's `param` and message for a value of the wrong type, by the field it is in.
fn type_error(e: &serde_path_to_error::Error<serde_json::Error>) -> ApiError {
    let param = e.path().to_string();
    // The field's place without array indices, e.g. `messages[].content[].type`.
    let mut shape = String::new();
    for segment in e.path().iter() {
        match segment {
            Segment::Seq { .. } => shape.push_str("[]"),
            other => {
                if !shape.is_empty() {
                    shape.push('.');
                }
                shape.push_str(&other.to_string());
            }
        }
    }
    let must_be = |what: &str| format!("`{param}` must be {what}");
    let message = match shape.as_str() {
        "model" => must_be("a string"),
        "stream"
        | "stream_options.include_usage"
        | "logprobs"
        | "enable_thinking"
        | "chat_template_kwargs.enable_thinking"
        | "return_reasoning"
        | "add_generation_prompt"
        | "echo" => must_be("a boolean"),
        "temperature" | "top_p" | "presence_penalty" | "frequency_penalty" => must_be("a number"),
        "n" | "best_of" | "max_completion_tokens" | "max_tokens" | "top_k" | "seed" => {
            must_be("an integer")
        }
        "stream_options" | "chat_template_kwargs" | "messages[]" => must_be("an object"),
        "messages" | "tools" => must_be("an array"),
        "stop" => must_be("a string or an array of strings"),
        "stop[]" => "`stop` entries must be strings".into(),
        "messages[].role" => "`role` must be a string".into(),
        "messages[].content" => "`content` must be a string or an array of content parts".into(),
        // A part that is not an object has no `type` either.
        "messages[].content[]" => return ApiError::bad(format!("{param}.type"), PART_NEEDS_TYPE),
        "messages[].content[].type" => PART_NEEDS_TYPE.into(),
        "response_format" | "response_format.type" => {
            return ApiError::bad("response_format", ONLY_TEXT_FORMAT)
        }
        "tool_choice" => AUTO_OR_NONE.into(),
        // Every typed field is listed above; this keeps serde's wording should one be missed.
        _ => format!("`{param}`: {}", e.inner()),
    };
    ApiError::bad(param, message)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rejection<'a, T: Deserialize<'a>>(body: &'a Value) -> (String, String) {
        match view::<T>(body) {
            Err(ApiError::BadRequest { message, param }) => (param.unwrap_or_default(), message),
            Err(e) => panic!("{e:?}"),
            Ok(_) => panic!("accepted {body}"),
        }
    }

    #[test]
    fn a_wrong_type_names_the_field_however_deep() {
        for (body, param, message) in [
            (
                json!({"messages": null}),
                "messages",
                "`messages` must be an array",
            ),
            (
                json!({"messages": [1]}),
                "messages[0]",
                "`messages[0]` must be an object",
            ),
            (
                json!({"messages": [{"role": null}]}),
                "messages[0].role",
                "`role` must be a string",
            ),
            (
                json!({"messages": [{"role": "user", "content": "a"}, {"content": ["a"]}]}),
                "messages[1].content[0].type",
                PART_NEEDS_TYPE,
            ),
            (
                json!({"chat_template_kwargs": {"enable_thinking": 1}}),
                "chat_template_kwargs.enable_thinking",
                "`chat_template_kwargs.enable_thinking` must be a boolean",
            ),
        ] {
            assert_eq!(
                rejection::<ChatView>(&body),
                (param.into(), message.into()),
                "{body}"
            );
        }
        for (body, param, message) in [
            (
                json!({"stop": ["a", 1]}),
                "stop[1]",
                "`stop` entries must be strings",
            ),
            // Derived structs would take an array of field values; an object is required.
            (
                json!({"stream_options": [true]}),
                "stream_options",
                "`stream_options` must be an object",
            ),
            (
                json!({"response_format": {"type": 1}}),
                "response_format",
                ONLY_TEXT_FORMAT,
            ),
            (json!({"n": 1.5}), "n", "`n` must be an integer"),
        ] {
            assert_eq!(
                rejection::<CommonView>(&body),
                (param.into(), message.into()),
                "{body}"
            );
        }
    }

    #[test]
    fn messages_and_template_kwargs_keep_every_member_in_order() {
        let body = json!({
            "messages": [{"name": "a", "role": "user", "extra": [1], "content": "x"}],
            "chat_template_kwargs": {"x": 1, "enable_thinking": null},
        });
        let v: ChatView = view(&body).unwrap();
        let m = &v.messages.unwrap()[0];
        let keys: Vec<&str> = m.members.keys().map(String::as_str).collect();
        assert_eq!(keys, ["name", "role", "extra", "content"]);
        assert_eq!(m.typed.role.as_deref(), Some("user"));
        assert_eq!(m.members["extra"], json!([1]));
        let k = v.chat_template_kwargs.unwrap();
        assert_eq!(k.typed.enable_thinking, None);
        assert_eq!(
            Value::Object(k.members),
            json!({"x": 1, "enable_thinking": null})
        );
    }
}
