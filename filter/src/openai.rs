//! Narrow, borrowed views of OpenAI-compatible JSON: only the fields a metric needs are read, every
//! other field is skipped by the parser without being stored (no `serde_json::Value` tree, no string
//! copies), so a stream event costs one pass over its bytes and no allocation.
//!
//! The same views cover the servers that imitate OpenAI (vLLM, SGLang, llama.cpp, Ollama) and the
//! Responses API, whose field names differ (`input_tokens` for `prompt_tokens`, typed events), and
//! Anthropic's Messages API (`cache_read_input_tokens`, `content_block_delta` events).

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;

#[path = "openai_fast.rs"]
mod fast;

/// What the filter needs from a request body.
#[derive(Debug, PartialEq, Eq)]
pub struct RequestInfo<'a> {
    pub model: Option<Cow<'a, str>>,
    pub stream: Option<bool>,
}

#[derive(Deserialize)]
struct RequestView<'a> {
    #[serde(borrow)]
    model: Option<Cow<'a, str>>,
    stream: Option<bool>,
}

/// Reads `model` and `stream` from a request body. Anything that is not a JSON object with those
/// fields of the right types (when present) is an error.
pub fn parse_request(body: &[u8]) -> Result<RequestInfo<'_>, serde_json::Error> {
    let v: RequestView<'_> = serde_json::from_slice(body)?;
    Ok(RequestInfo {
        model: v.model,
        stream: v.stream,
    })
}

/// Token counts an upstream reported. `None`: the field was absent or null.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    pub input: Option<u64>,
    /// Includes reasoning tokens (OpenAI semantics).
    pub output: Option<u64>,
    pub reasoning: Option<u64>,
    pub cached_input: Option<u64>,
    /// Input written to the prompt cache (Anthropic); a subset of `input`.
    pub cache_creation_input: Option<u64>,
}

impl Usage {
    /// This usage, with every field that `later` reports replaced by it: a stream may report its
    /// usage in parts (Anthropic: input in `message_start`, output in `message_delta`).
    pub fn updated(self, later: Usage) -> Usage {
        Usage {
            input: later.input.or(self.input),
            output: later.output.or(self.output),
            reasoning: later.reasoning.or(self.reasoning),
            cached_input: later.cached_input.or(self.cached_input),
            cache_creation_input: later.cache_creation_input.or(self.cache_creation_input),
        }
    }
}

#[derive(Deserialize)]
struct CachedDetails {
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct ReasoningDetails {
    reasoning_tokens: Option<u64>,
}

/// Chat/completions (`prompt_tokens`...), Responses API (`input_tokens`...) and Anthropic
/// (`input_tokens`, `cache_read_input_tokens`, `cache_creation_input_tokens`) names in one view.
#[derive(Deserialize)]
struct UsageView {
    cache_read_input_tokens: Option<u64>,
    cache_creation_input_tokens: Option<u64>,
    prompt_tokens: Option<u64>,
    completion_tokens: Option<u64>,
    input_tokens: Option<u64>,
    output_tokens: Option<u64>,
    prompt_tokens_details: Option<CachedDetails>,
    input_tokens_details: Option<CachedDetails>,
    completion_tokens_details: Option<ReasoningDetails>,
    output_tokens_details: Option<ReasoningDetails>,
}

impl From<UsageView> for Usage {
    fn from(u: UsageView) -> Usage {
        let cached = |d: Option<CachedDetails>| d.and_then(|d| d.cached_tokens);
        let reasoning = |d: Option<ReasoningDetails>| d.and_then(|d| d.reasoning_tokens);
        // Anthropic's `input_tokens` leaves out the cached and cache-written input; OpenAI's
        // counts include them (and never come with these two fields).
        let cache_read = u.cache_read_input_tokens;
        let cache_creation = u.cache_creation_input_tokens;
        let anthropic_input = u.input_tokens.map(|i| {
            i.saturating_add(cache_read.unwrap_or(0))
                .saturating_add(cache_creation.unwrap_or(0))
        });
        Usage {
            input: u.prompt_tokens.or(anthropic_input),
            output: u.completion_tokens.or(u.output_tokens),
            reasoning: reasoning(u.completion_tokens_details)
                .or(reasoning(u.output_tokens_details)),
            cached_input: cached(u.prompt_tokens_details)
                .or(cached(u.input_tokens_details))
                .or(cache_read),
            cache_creation_input: cache_creation,
        }
    }
}

/// What a non-streaming response body says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ResponseInfo {
    pub usage: Option<Usage>,
    /// The body is a JSON error object (`{"error": ...}`) although the status was a success.
    pub error: bool,
}

#[derive(Deserialize)]
struct ResponseView<'a> {
    usage: Option<UsageView>,
    error: Option<IgnoredAny>,
    #[serde(borrow)]
    object: Option<Cow<'a, str>>,
}

/// vLLM before 0.9 sent errors as `{"object": "error", "message": ...}`, without an `error` key.
fn is_error_object(object: Option<&str>) -> bool {
    object == Some("error")
}

/// Reads `usage` and `error` from a non-streaming response body.
pub fn parse_response(body: &[u8]) -> Result<ResponseInfo, serde_json::Error> {
    let v: ResponseView<'_> = serde_json::from_slice(body)?;
    Ok(ResponseInfo {
        usage: v.usage.map(Usage::from),
        error: v.error.is_some() || is_error_object(v.object.as_deref()),
    })
}

/// What one stream event says.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct EventInfo<'a> {
    /// The event carries generated text, reasoning, a refusal or a tool call.
    pub token: bool,
    /// The event carries reasoning (`reasoning_content`, `reasoning`, a `response.reasoning*`
    /// delta, an Anthropic `thinking_delta`).
    pub reasoning: bool,
    /// The event carries answer output other than chat `content` text: a refusal, a tool call,
    /// completions `text`, a Responses output delta that is not reasoning, an Anthropic
    /// `text_delta` or `input_json_delta`, non-string `content`.
    pub answer: bool,
    /// The non-empty text of a chat delta's `content` (JSON-unescaped; borrowed unless it had
    /// escapes). Whether it is answer or reasoning depends on `<think>` tags, which the caller
    /// tracks across events.
    pub content: Option<Cow<'a, str>>,
    /// The event marks the end of the stream (`[DONE]`, a `finish_reason`, a final Responses event).
    pub end: bool,
    /// The event reports an error.
    pub error: bool,
    pub usage: Option<Usage>,
}

/// Whether a JSON value has content: a non-empty string, array or object, or any number or bool.
/// Used for fields whose type varies between servers (`content` can be null, `tool_calls` an array).
#[derive(Default)]
struct NonEmpty(bool);

impl<'de> Deserialize<'de> for NonEmpty {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = NonEmpty;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<NonEmpty, E> {
                Ok(NonEmpty(!s.is_empty()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<NonEmpty, E> {
                Ok(NonEmpty(true))
            }
            fn visit_unit<E: de::Error>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_none<E: de::Error>(self) -> Result<NonEmpty, E> {
                Ok(NonEmpty(false))
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<NonEmpty, D::Error> {
                NonEmpty::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while seq.next_element::<IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(NonEmpty(any))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<NonEmpty, A::Error> {
                let mut any = false;
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {
                    any = true;
                }
                Ok(NonEmpty(any))
            }
        }
        d.deserialize_any(V)
    }
}

/// A delta's `content`: text (kept, for the `<think>` tags), or any other JSON value (only whether it
/// is non-empty).
#[derive(Default)]
enum Content<'a> {
    #[default]
    Empty,
    Text(Cow<'a, str>),
    Other,
}

impl<'de: 'a, 'a> Deserialize<'de> for Content<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Content<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_borrowed_str<E: de::Error>(self, s: &'de str) -> Result<Content<'de>, E> {
                Ok(if s.is_empty() {
                    Content::Empty
                } else {
                    Content::Text(Cow::Borrowed(s))
                })
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<Content<'de>, E> {
                // Only strings with escapes get here (serde_json borrows the others).
                Ok(if s.is_empty() {
                    Content::Empty
                } else {
                    Content::Text(Cow::Owned(s.to_owned()))
                })
            }
            fn visit_unit<E: de::Error>(self) -> Result<Content<'de>, E> {
                Ok(Content::Empty)
            }
            fn visit_none<E: de::Error>(self) -> Result<Content<'de>, E> {
                Ok(Content::Empty)
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Content<'de>, D::Error> {
                Content::deserialize(d)
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<Content<'de>, E> {
                Ok(Content::Other)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, seq: A) -> Result<Content<'de>, A::Error> {
                let any = NonEmpty::deserialize(de::value::SeqAccessDeserializer::new(seq))?;
                Ok(if any.0 {
                    Content::Other
                } else {
                    Content::Empty
                })
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<Content<'de>, A::Error> {
                let any = NonEmpty::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(if any.0 {
                    Content::Other
                } else {
                    Content::Empty
                })
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct DeltaView<'a> {
    #[serde(default, borrow)]
    content: Content<'a>,
    #[serde(default)]
    reasoning_content: NonEmpty,
    #[serde(default)]
    reasoning: NonEmpty,
    #[serde(default)]
    refusal: NonEmpty,
    #[serde(default)]
    tool_calls: NonEmpty,
}

#[derive(Deserialize)]
struct ChoiceView<'a> {
    #[serde(borrow)]
    delta: Option<DeltaView<'a>>,
    #[serde(default)]
    text: NonEmpty,
    finish_reason: Option<IgnoredAny>,
}

/// The `choices` array folded into a few flags while it is parsed (no Vec of choices is built).
/// Only the first choice's `content` text is kept; any other choice's content counts as answer.
#[derive(Default)]
struct Choices<'a> {
    reasoning: bool,
    answer: bool,
    content: Option<Cow<'a, str>>,
    finished: bool,
}

/// What one choice's `delta` says, folded into [`Choices`].
struct Delta<'a> {
    content: Content<'a>,
    /// `reasoning_content` or `reasoning` is non-empty.
    reasoning: bool,
    /// `refusal` or `tool_calls` is non-empty.
    answer: bool,
}

impl<'a> Choices<'a> {
    /// Folds in one choice: its completions `text` is non-empty, it has a `finish_reason`, its
    /// `delta`.
    fn add(&mut self, text: bool, finished: bool, delta: Option<Delta<'a>>) {
        self.answer |= text;
        self.finished |= finished;
        let Some(delta) = delta else { return };
        self.reasoning |= delta.reasoning;
        self.answer |= delta.answer;
        match delta.content {
            Content::Empty => {}
            Content::Other => self.answer = true,
            Content::Text(t) if self.content.is_none() => self.content = Some(t),
            Content::Text(_) => self.answer = true,
        }
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Choices<'a> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Choices<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of choices")
            }
            fn visit_unit<E: de::Error>(self) -> Result<Choices<'de>, E> {
                Ok(Choices::default())
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Choices<'de>, A::Error> {
                let mut c = Choices::default();
                while let Some(choice) = seq.next_element::<ChoiceView<'de>>()? {
                    c.add(
                        choice.text.0,
                        choice.finish_reason.is_some(),
                        choice.delta.map(|d| Delta {
                            content: d.content,
                            reasoning: d.reasoning_content.0 || d.reasoning.0,
                            answer: d.refusal.0 || d.tool_calls.0,
                        }),
                    );
                }
                Ok(c)
            }
        }
        d.deserialize_any(V)
    }
}

#[derive(Deserialize)]
struct ResponseObjectView {
    usage: Option<UsageView>,
}

#[derive(Deserialize)]
struct EventView<'a> {
    #[serde(default, borrow)]
    choices: Choices<'a>,
    usage: Option<UsageView>,
    error: Option<IgnoredAny>,
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(borrow)]
    object: Option<Cow<'a, str>>,
    #[serde(default)]
    delta: EventDelta,
    response: Option<ResponseObjectView>,
    /// Anthropic `message_start`: the message, with the input usage (vLLM's error events have a
    /// string `message`, which is skipped).
    #[serde(default)]
    message: MessageView,
}

/// A top-level `message`: the usage of an object, nothing from any other value.
#[derive(Default)]
struct MessageView {
    usage: Option<UsageView>,
}

impl<'de> Deserialize<'de> for MessageView {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = MessageView;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<MessageView, A::Error> {
                let v =
                    ResponseObjectView::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(MessageView { usage: v.usage })
            }
            fn visit_str<E: de::Error>(self, _: &str) -> Result<MessageView, E> {
                Ok(MessageView::default())
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<MessageView, E> {
                Ok(MessageView::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<MessageView, E> {
                Ok(MessageView::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<MessageView, E> {
                Ok(MessageView::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<MessageView, E> {
                Ok(MessageView::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<MessageView, E> {
                Ok(MessageView::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<MessageView, E> {
                Ok(MessageView::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<MessageView, D::Error> {
                MessageView::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<MessageView, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(MessageView::default())
            }
        }
        d.deserialize_any(V)
    }
}

/// An Anthropic `content_block_delta`'s `delta` object.
#[derive(Deserialize)]
struct BlockDeltaView<'a> {
    #[serde(rename = "type", borrow)]
    kind: Option<Cow<'a, str>>,
    #[serde(default)]
    text: NonEmpty,
    #[serde(default)]
    thinking: NonEmpty,
    #[serde(default)]
    partial_json: NonEmpty,
}

/// An event's top-level `delta`: a string (Responses API), or an object (Anthropic).
#[derive(Default)]
struct EventDelta {
    /// A non-empty string.
    text: bool,
    /// An object carrying answer output (`text_delta`, `input_json_delta`).
    answer: bool,
    /// An object carrying reasoning (`thinking_delta`).
    reasoning: bool,
}

impl<'de> Deserialize<'de> for EventDelta {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EventDelta;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_str<E: de::Error>(self, s: &str) -> Result<EventDelta, E> {
                Ok(EventDelta {
                    text: !s.is_empty(),
                    ..EventDelta::default()
                })
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<EventDelta, E> {
                Ok(EventDelta::default())
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<EventDelta, E> {
                Ok(EventDelta::default())
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<EventDelta, E> {
                Ok(EventDelta::default())
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<EventDelta, E> {
                Ok(EventDelta::default())
            }
            fn visit_unit<E: de::Error>(self) -> Result<EventDelta, E> {
                Ok(EventDelta::default())
            }
            fn visit_none<E: de::Error>(self) -> Result<EventDelta, E> {
                Ok(EventDelta::default())
            }
            fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<EventDelta, D::Error> {
                EventDelta::deserialize(d)
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<EventDelta, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(EventDelta::default())
            }
            fn visit_map<A: MapAccess<'de>>(self, map: A) -> Result<EventDelta, A::Error> {
                let v = BlockDeltaView::deserialize(de::value::MapAccessDeserializer::new(map))?;
                Ok(match v.kind.as_deref() {
                    Some("text_delta") => EventDelta {
                        answer: v.text.0,
                        ..EventDelta::default()
                    },
                    Some("input_json_delta") => EventDelta {
                        answer: v.partial_json.0,
                        ..EventDelta::default()
                    },
                    Some("thinking_delta") => EventDelta {
                        reasoning: v.thinking.0,
                        ..EventDelta::default()
                    },
                    _ => EventDelta::default(),
                })
            }
        }
        d.deserialize_any(V)
    }
}

/// Whether a Responses API event type carries model output in its `delta`: every
/// `response.<...>.delta` (output text, refusal, reasoning text and summaries, function, custom
/// tool, MCP and code-interpreter arguments or code, and any later kind), except audio: a
/// `response.audio.delta` is a base64 slice of sound cut at arbitrary bytes, not a token, and
/// `response.audio.transcript.delta` is a text rendering of that same audio.
fn is_output_delta(kind: &str) -> bool {
    kind.starts_with("response.")
        && kind.ends_with(".delta")
        && !kind.starts_with("response.audio.")
}

/// Reads one SSE event. `event_type` is the SSE `event:` field (empty when absent).
///
/// The common chat chunk is read by [`fast::chat_chunk`], a byte-level reader that gives exactly
/// what the serde views below give for the shapes it accepts and declines everything else; every
/// other event goes through the views.
pub fn parse_event<'a>(
    event_type: &[u8],
    data: &'a [u8],
) -> Result<EventInfo<'a>, serde_json::Error> {
    if data.trim_ascii() == b"[DONE]" {
        return Ok(EventInfo {
            end: true,
            ..EventInfo::default()
        });
    }
    if let Some(info) = fast::chat_chunk(event_type, data) {
        return Ok(info);
    }
    parse_event_views(event_type, data)
}

/// [`parse_event`] through the serde views only: what the fast reader must agree with (the
/// `event_fast_path` fuzz target compares the two).
pub fn parse_event_views<'a>(
    event_type: &[u8],
    data: &'a [u8],
) -> Result<EventInfo<'a>, serde_json::Error> {
    let v: EventView<'a> = serde_json::from_slice(data)?;
    let kind = v.kind.as_deref().unwrap_or("");
    let usage = v
        .usage
        .or(v.response.and_then(|r| r.usage))
        .or(v.message.usage)
        .map(Usage::from);
    Ok(event_info(
        event_type,
        v.choices,
        kind,
        &v.delta,
        v.error.is_some() || is_error_object(v.object.as_deref()),
        usage,
    ))
}

/// An event's meaning from its parts: the folded `choices`, its `type`, its top-level `delta`,
/// whether it has an `error` member or is an error object, its usage.
fn event_info<'a>(
    event_type: &[u8],
    choices: Choices<'a>,
    kind: &str,
    delta: &EventDelta,
    error: bool,
    usage: Option<Usage>,
) -> EventInfo<'a> {
    let output = delta.text && is_output_delta(kind);
    let output_reasoning = output && kind.starts_with("response.reasoning");
    let block = kind == "content_block_delta";
    let reasoning = choices.reasoning || output_reasoning || (block && delta.reasoning);
    let answer = choices.answer || (output && !output_reasoning) || (block && delta.answer);
    EventInfo {
        token: reasoning || answer || choices.content.is_some(),
        reasoning,
        answer,
        content: choices.content,
        end: choices.finished
            || matches!(
                kind,
                "response.completed" | "response.incomplete" | "response.failed" | "message_stop"
            ),
        error: error || matches!(kind, "error" | "response.failed") || event_type == b"error",
        usage,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(data: &str) -> EventInfo<'_> {
        parse_event(b"", data.as_bytes()).unwrap()
    }

    #[test]
    fn requests_give_model_and_stream() {
        let r = parse_request(br#"{"model":"Qwen/Qwen3-1.7B","messages":[{"role":"user","content":"hi"}],"stream":true}"#)
            .unwrap();
        assert_eq!(r.model.as_deref(), Some("Qwen/Qwen3-1.7B"));
        assert_eq!(r.stream, Some(true));
        let r = parse_request(br#"{"model":"a\/b","stream":null}"#).unwrap();
        assert_eq!(r.model.as_deref(), Some("a/b"));
        assert_eq!(r.stream, None);
        let r = parse_request(br#"{"input":"x"}"#).unwrap();
        assert_eq!(
            r,
            RequestInfo {
                model: None,
                stream: None
            }
        );
    }

    #[test]
    fn unreadable_requests_are_errors() {
        for body in [
            &b""[..],
            b"[]",
            b"{",
            b"{\"model\":3}",
            b"{\"stream\":\"yes\"}",
            b"null",
            b"\xff",
        ] {
            assert!(parse_request(body).is_err(), "{body:?}");
        }
    }

    #[test]
    fn chat_usage_with_details_is_read() {
        let r = parse_response(
            br#"{"id":"x","choices":[{"message":{"content":"hi"}}],"usage":{"prompt_tokens":20,"completion_tokens":12,
            "total_tokens":32,"prompt_tokens_details":{"cached_tokens":8,"audio_tokens":0},
            "completion_tokens_details":{"reasoning_tokens":5}}}"#,
        )
        .unwrap();
        assert_eq!(
            r.usage,
            Some(Usage {
                input: Some(20),
                output: Some(12),
                reasoning: Some(5),
                cached_input: Some(8),
                cache_creation_input: None
            })
        );
        assert!(!r.error);
    }

    #[test]
    fn responses_api_usage_is_read() {
        let r = parse_response(
            br#"{"object":"response","usage":{"input_tokens":9,"input_tokens_details":{"cached_tokens":0},
            "output_tokens":30,"output_tokens_details":{"reasoning_tokens":10},"total_tokens":39}}"#,
        )
        .unwrap();
        assert_eq!(
            r.usage,
            Some(Usage {
                input: Some(9),
                output: Some(30),
                reasoning: Some(10),
                cached_input: Some(0),
                cache_creation_input: None
            })
        );
    }

    #[test]
    fn embeddings_usage_has_input_only() {
        let r = parse_response(
            br#"{"data":[{"embedding":[0.1,0.2]}],"usage":{"prompt_tokens":5,"total_tokens":5}}"#,
        )
        .unwrap();
        assert_eq!(
            r.usage,
            Some(Usage {
                input: Some(5),
                ..Usage::default()
            })
        );
    }

    #[test]
    fn an_error_body_is_an_error_and_null_details_are_absent() {
        let r = parse_response(br#"{"error":{"message":"bad","type":"invalid_request_error"}}"#)
            .unwrap();
        assert!(r.error);
        let r = parse_response(
            br#"{"error":null,"usage":{"prompt_tokens":1,"prompt_tokens_details":null}}"#,
        )
        .unwrap();
        assert!(!r.error);
        assert_eq!(r.usage.unwrap().cached_input, None);
    }

    #[test]
    fn content_reasoning_refusal_tool_calls_and_text_are_tokens() {
        for data in [
            r#"{"choices":[{"index":0,"delta":{"content":"Hi"},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#,
            r#"{"choices":[{"delta":{"reasoning":"hmm"}}]}"#,
            r#"{"choices":[{"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"delta":{"content":null,"tool_calls":[{"index":0,"function":{"arguments":"{"}}]}}]}"#,
            r#"{"choices":[{"text":"Hello","index":0,"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{}},{"delta":{"content":"\u00e9"}}]}"#,
        ] {
            assert!(ev(data).token, "{data}");
        }
    }

    #[test]
    fn role_only_and_empty_deltas_are_not_tokens() {
        for data in [
            r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]}"#,
            r#"{"choices":[{"delta":{"content":null,"tool_calls":[]}}]}"#,
            r#"{"choices":[]}"#,
            r#"{"choices":null}"#,
            r#"{"object":"chat.completion.chunk"}"#,
        ] {
            assert!(!ev(data).token, "{data}");
        }
    }

    #[test]
    fn finish_reason_and_done_end_the_stream() {
        assert!(ev(r#"{"choices":[{"delta":{},"finish_reason":"stop"}]}"#).end);
        assert!(!ev(r#"{"choices":[{"delta":{"content":"x"},"finish_reason":null}]}"#).end);
        assert!(ev("[DONE]").end);
        assert!(ev(" [DONE] ").end);
    }

    #[test]
    fn usage_with_empty_choices_is_read() {
        let e = ev(
            r#"{"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}}"#,
        );
        assert_eq!(
            e.usage,
            Some(Usage {
                input: Some(3),
                output: Some(4),
                ..Usage::default()
            })
        );
        assert!(!e.token);
        assert!(
            ev(r#"{"choices":[{"delta":{"content":"x"}}],"usage":null}"#)
                .usage
                .is_none()
        );
    }

    #[test]
    fn responses_api_events_are_understood() {
        let e = ev(
            r#"{"type":"response.output_text.delta","item_id":"m","output_index":0,"content_index":0,"delta":"Hi","sequence_number":4}"#,
        );
        assert!(e.token && !e.end);
        assert!(ev(r#"{"type":"response.reasoning_summary_text.delta","delta":"think"}"#).token);
        assert!(!ev(r#"{"type":"response.output_text.delta","delta":""}"#).token);
        assert!(!ev(r#"{"type":"response.output_text.done","text":"Hi"}"#).token);
        assert!(!ev(r#"{"type":"response.created","response":{"id":"r","usage":null}}"#).token);
        let e = ev(
            r#"{"type":"response.completed","response":{"id":"r","status":"completed","usage":{"input_tokens":5,"output_tokens":7,"output_tokens_details":{"reasoning_tokens":2}}}}"#,
        );
        assert!(e.end && !e.error);
        assert_eq!(e.usage.unwrap().output, Some(7));
        let e = ev(
            r#"{"type":"response.failed","response":{"status":"failed","error":{"code":"server_error"}}}"#,
        );
        assert!(e.end && e.error);
        assert!(ev(r#"{"type":"error","code":"x","message":"y"}"#).error);
    }

    #[test]
    fn every_responses_output_delta_is_a_token_event() {
        for (kind, reasoning) in [
            ("response.output_text.delta", false),
            ("response.refusal.delta", false),
            ("response.function_call_arguments.delta", false),
            ("response.custom_tool_call_input.delta", false),
            ("response.mcp_call_arguments.delta", false),
            ("response.code_interpreter_call_code.delta", false),
            ("response.reasoning_text.delta", true),
            ("response.reasoning_summary_text.delta", true),
            // A kind this filter has never heard of follows the same rule.
            ("response.some_future_tool_call.delta", false),
        ] {
            let data = format!(
                r#"{{"type":"{kind}","item_id":"i","output_index":0,"delta":"x","sequence_number":3}}"#
            );
            let e = ev(&data);
            assert!(e.token, "{kind}");
            assert_eq!((e.reasoning, e.answer), (reasoning, !reasoning), "{kind}");
            assert!(e.content.is_none() && !e.end && !e.error, "{kind}");
            let empty = format!(r#"{{"type":"{kind}","delta":""}}"#);
            assert!(!ev(&empty).token, "{kind} with an empty delta");
        }
    }

    #[test]
    fn audio_and_non_delta_responses_events_are_not_token_events() {
        for data in [
            r#"{"type":"response.audio.delta","delta":"UklGRiQAAABXQVZF"}"#,
            r#"{"type":"response.audio.transcript.delta","delta":"Hello"}"#,
            r#"{"type":"response.output_text.done","text":"Hi"}"#,
            r#"{"type":"response.function_call_arguments.done","arguments":"{}"}"#,
            r#"{"type":"response.output_item.added","item":{"type":"message"}}"#,
            r#"{"type":"response.reasoning_summary_part.added","part":{"type":"summary_text","text":""}}"#,
            r#"{"type":"response.in_progress","response":{"usage":null}}"#,
            // `.delta` only counts under `response.`
            r#"{"type":"conversation.item.delta","delta":"x"}"#,
        ] {
            assert!(!ev(data).token, "{data}");
        }
    }

    #[test]
    fn chat_deltas_say_reasoning_answer_or_content_text() {
        let e = ev(r#"{"choices":[{"delta":{"reasoning_content":"hmm"}}]}"#);
        assert!(e.token && e.reasoning && !e.answer && e.content.is_none());
        let e = ev(r#"{"choices":[{"delta":{"reasoning":"hmm","content":null}}]}"#);
        assert!(e.token && e.reasoning && !e.answer && e.content.is_none());
        let e = ev(r#"{"choices":[{"delta":{"content":"<think>\nOk"}}]}"#);
        assert!(e.token && !e.reasoning && !e.answer);
        assert_eq!(e.content.as_deref(), Some("<think>\nOk"));
        let e = ev(r#"{"choices":[{"delta":{"content":"plain"}}]}"#);
        assert!(matches!(e.content, Some(Cow::Borrowed("plain"))));
        for data in [
            r#"{"choices":[{"delta":{"refusal":"no"}}]}"#,
            r#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
            r#"{"choices":[{"text":"Hello"}]}"#,
            r#"{"choices":[{"delta":{"content":[{"type":"text","text":"hi"}]}}]}"#,
        ] {
            let e = ev(data);
            assert!(
                e.token && e.answer && !e.reasoning && e.content.is_none(),
                "{data}"
            );
        }
        // A second choice's text is answer; only the first one's is kept.
        let e = ev(r#"{"choices":[{"delta":{"content":"a"}},{"delta":{"content":"b"}}]}"#);
        assert!(e.answer && e.content.as_deref() == Some("a"));
        for data in [
            r#"{"choices":[{"delta":{"content":""}}]}"#,
            r#"{"choices":[{"delta":{"content":[]}}]}"#,
            r#"{"choices":[{"delta":{"content":{}}}]}"#,
        ] {
            assert!(!ev(data).token, "{data}");
        }
    }

    #[test]
    fn anthropic_usage_counts_cached_and_cache_written_input_as_input() {
        let r = parse_response(
            br#"{"id":"msg_01","type":"message","role":"assistant","model":"claude-sonnet-4-5","content":[{"type":"text","text":"Hi"}],
            "stop_reason":"end_turn","stop_sequence":null,"usage":{"input_tokens":12,"cache_creation_input_tokens":200,
            "cache_read_input_tokens":1800,"output_tokens":40,"service_tier":"standard"}}"#,
        )
        .unwrap();
        assert_eq!(
            r.usage,
            Some(Usage {
                input: Some(2012),
                output: Some(40),
                reasoning: None,
                cached_input: Some(1800),
                cache_creation_input: Some(200)
            })
        );
        assert!(!r.error);
        // OpenAI-shaped usage with the same extra fields (LiteLLM): prompt_tokens already has them.
        let r = parse_response(
            br#"{"usage":{"prompt_tokens":50,"completion_tokens":2,"cache_read_input_tokens":30,"cache_creation_input_tokens":0}}"#,
        )
        .unwrap();
        assert_eq!(r.usage.unwrap().input, Some(50));
        let r = parse_response(
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap();
        assert!(r.error);
    }

    #[test]
    fn anthropic_stream_events_are_understood() {
        let start = ev(
            r#"{"type":"message_start","message":{"id":"msg_01","type":"message","role":"assistant","content":[],"model":"claude-sonnet-4-5","stop_reason":null,"usage":{"input_tokens":25,"cache_creation_input_tokens":0,"cache_read_input_tokens":100,"output_tokens":1}}}"#,
        );
        assert!(!start.token && !start.end);
        assert_eq!(start.usage.unwrap().input, Some(125));
        assert_eq!(start.usage.unwrap().cached_input, Some(100));
        for (data, reasoning, answer) in [
            (
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"Hello"}}"#,
                false,
                true,
            ),
            (
                r#"{"type":"content_block_delta","index":0,"delta":{"type":"thinking_delta","thinking":"Let me"}}"#,
                true,
                false,
            ),
            (
                r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":"{\"city\":"}}"#,
                false,
                true,
            ),
        ] {
            let e = ev(data);
            assert!(e.token, "{data}");
            assert_eq!((e.reasoning, e.answer), (reasoning, answer), "{data}");
            assert!(e.content.is_none());
        }
        for data in [
            r#"{"type":"content_block_delta","index":1,"delta":{"type":"input_json_delta","partial_json":""}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"signature_delta","signature":"EqQB"}}"#,
            r#"{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":""}}"#,
            r#"{"type":"content_block_start","index":0,"content_block":{"type":"text","text":""}}"#,
            r#"{"type":"content_block_stop","index":0}"#,
            r#"{"type":"ping"}"#,
        ] {
            assert!(!ev(data).token, "{data}");
        }
        let delta = ev(
            r#"{"type":"message_delta","delta":{"stop_reason":"end_turn","stop_sequence":null},"usage":{"output_tokens":15}}"#,
        );
        assert!(!delta.token && !delta.end);
        assert_eq!(
            delta.usage,
            Some(Usage {
                output: Some(15),
                ..Usage::default()
            })
        );
        assert!(ev(r#"{"type":"message_stop"}"#).end);
        let e = parse_event(
            b"error",
            br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#,
        )
        .unwrap();
        assert!(e.error);
        // vLLM's legacy error events have a string `message`: still an error, not a parse failure.
        assert!(ev(r#"{"object":"error","message":"boom","code":500}"#).error);
    }

    #[test]
    fn usage_in_parts_keeps_what_a_later_part_does_not_report() {
        let start = Usage {
            input: Some(125),
            output: Some(1),
            cached_input: Some(100),
            cache_creation_input: Some(0),
            ..Usage::default()
        };
        let end = Usage {
            output: Some(15),
            ..Usage::default()
        };
        assert_eq!(
            start.updated(end),
            Usage {
                output: Some(15),
                ..start
            }
        );
    }

    #[test]
    fn error_events_are_errors() {
        assert!(ev(r#"{"error":{"message":"boom","type":"server_error"}}"#).error);
        assert!(
            parse_event(b"error", br#"{"message":"boom"}"#)
                .unwrap()
                .error
        );
        assert!(!ev(r#"{"error":null,"choices":[]}"#).error);
        // vLLM < 0.9
        assert!(
            ev(r#"{"object":"error","message":"boom","type":"InternalServerError","code":500}"#)
                .error
        );
        assert!(!ev(r#"{"object":"chat.completion.chunk","choices":[]}"#).error);
        assert!(
            parse_response(br#"{"object":"error","message":"x","code":400}"#)
                .unwrap()
                .error
        );
    }

    #[test]
    fn non_json_events_are_errors() {
        assert!(parse_event(b"", b"hello").is_err());
        assert!(parse_event(b"", b"").is_err());
        assert!(parse_event(b"", b"{\"choices\":[").is_err());
    }
}
