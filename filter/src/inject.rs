//! `inject_stream_usage`: exact token counts for streams whose client did not ask for them, without
//! the client seeing a difference.
//!
//! OpenAI-compatible servers report usage in a stream only when the request carries
//! `stream_options.include_usage: true`; then they send one extra chunk before `data: [DONE]` whose
//! `choices` is empty and whose `usage` holds the totals, and OpenAI itself also adds `"usage":null`
//! to every other chunk. Clients that read `choices[0]` of every chunk break on the extra chunk, so
//! a gateway that simply forces the option leaks a side effect.
//!
//! With the option on, the host shell holds a streaming chat or completions request's body (bounded
//! by `inject_max_request_bytes`), and [`rewrite_request`] adds the option when the client did not
//! set it; the response's event stream then goes through a [`UsageStripper`], which removes exactly
//! what the option added — the usage-only chunk and top-level `"usage":null` members — after the
//! exchange has read the original bytes. Everything else passes byte for byte.
//!
//! Nothing is held longer than its own bytes take to arrive: complete events leave in the chunk that
//! completes them; only an event still incomplete at a chunk's end waits (at most `max_event_bytes`,
//! beyond which the stripper gives up and passes the rest of the stream as it comes).

use serde::de::Deserializer;
use serde::Deserialize;
use serde_json::value::RawValue;

/// What the request's `stream_options` says about usage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    /// No `stream_options` member.
    Absent,
    /// `stream_options` is an object without `include_usage`: the byte offset just after its `{`,
    /// and whether it has other members.
    ObjectWithout { after_brace: usize, empty: bool },
    /// `include_usage` is set (to anything): the client decided; the request is left alone.
    Decided,
    /// `stream_options` is something else (`null`, a string...): left alone.
    Other,
}

/// Deserializes any JSON value as its raw text (also `null`, which `Option` would swallow).
fn raw<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

#[derive(Deserialize)]
struct RequestProbe<'a> {
    stream: Option<bool>,
    #[serde(default, borrow, deserialize_with = "raw")]
    stream_options: Option<&'a RawValue>,
}

#[derive(Deserialize)]
struct OptionsProbe<'a> {
    #[serde(default, borrow, deserialize_with = "raw")]
    include_usage: Option<&'a RawValue>,
}

/// Offset of `inner` within `outer` (both borrowed from the same buffer).
fn offset_in(outer: &[u8], inner: &str) -> Option<usize> {
    let start = (inner.as_ptr() as usize).checked_sub(outer.as_ptr() as usize)?;
    (start + inner.len() <= outer.len()).then_some(start)
}

fn asked(body: &[u8], options: Option<&RawValue>) -> Asked {
    let Some(options) = options else {
        return Asked::Absent;
    };
    let text = options.get();
    if !text.starts_with('{') {
        return Asked::Other;
    }
    match serde_json::from_str::<OptionsProbe<'_>>(text) {
        Ok(OptionsProbe {
            include_usage: Some(_),
        }) => Asked::Decided,
        Ok(OptionsProbe {
            include_usage: None,
        }) => match offset_in(body, text) {
            Some(start) => Asked::ObjectWithout {
                after_brace: start + 1,
                empty: text
                    .get(1..text.len().saturating_sub(1))
                    .is_some_and(|inner| inner.bytes().all(|b| b.is_ascii_whitespace())),
            },
            None => Asked::Other,
        },
        // Duplicate keys and the like: not a shape to edit.
        Err(_) => Asked::Other,
    }
}

/// The request body with `stream_options.include_usage: true` added, when it is a streaming
/// request (`"stream": true`) whose client did not set `include_usage`; `None` leaves the request
/// untouched (not a JSON object, not streaming, the client decided, a shape not safe to edit).
///
/// The edit is textual: one member is inserted, every other byte stays as the client sent it.
pub fn rewrite_request(body: &[u8]) -> Option<Vec<u8>> {
    // JSON is UTF-8; the parser skips unread strings without checking them, so check the whole
    // body first (found by the `inject` fuzz target): a body that is not JSON is never edited.
    let text = std::str::from_utf8(body).ok()?;
    let probe: RequestProbe<'_> = serde_json::from_str(text).ok()?;
    if probe.stream != Some(true) {
        return None;
    }
    match asked(body, probe.stream_options) {
        Asked::Absent => {
            // Before the object's closing brace (the last non-whitespace byte of a valid object).
            let close = body.iter().rposition(|b| !b.is_ascii_whitespace())?;
            if body.get(close) != Some(&b'}') {
                return None;
            }
            let inner = body.get(..close)?;
            let empty = inner
                .iter()
                .rev()
                .find(|b| !b.is_ascii_whitespace())
                .is_some_and(|b| *b == b'{');
            let member: &[u8] = if empty {
                br#""stream_options":{"include_usage":true}"#
            } else {
                br#","stream_options":{"include_usage":true}"#
            };
            Some([inner, member, body.get(close..)?].concat())
        }
        Asked::ObjectWithout { after_brace, empty } => {
            let member: &[u8] = if empty {
                br#""include_usage":true"#
            } else {
                br#""include_usage":true,"#
            };
            Some([body.get(..after_brace)?, member, body.get(after_brace..)?].concat())
        }
        Asked::Decided | Asked::Other => None,
    }
}

#[derive(Deserialize)]
struct ChunkProbe<'a> {
    #[serde(default, borrow, deserialize_with = "raw")]
    choices: Option<&'a RawValue>,
    #[serde(default, borrow, deserialize_with = "raw")]
    usage: Option<&'a RawValue>,
}

/// What the option changed in one event's JSON.
#[derive(Debug, PartialEq, Eq)]
enum ChunkEdit {
    Keep,
    /// The usage-only chunk: `"choices": []` and a `usage` object.
    Drop,
    /// A top-level `"usage": null` member to cut: this byte range of the JSON text.
    Cut(usize, usize),
}

fn is_empty_array(raw: &RawValue) -> bool {
    let t = raw.get().as_bytes();
    t.first() == Some(&b'[')
        && t.last() == Some(&b']')
        && t.get(1..t.len().saturating_sub(1))
            .is_some_and(|inner| inner.iter().all(u8::is_ascii_whitespace))
}

fn skip_ws_back(json: &[u8], mut i: usize) -> usize {
    while i > 0 && json.get(i - 1).is_some_and(u8::is_ascii_whitespace) {
        i -= 1;
    }
    i
}

fn skip_ws(json: &[u8], mut i: usize) -> usize {
    while json.get(i).is_some_and(u8::is_ascii_whitespace) {
        i += 1;
    }
    i
}

/// The range of the member `"usage": null` whose value starts at `value`, with one adjacent comma.
fn null_member(json: &[u8], value: usize) -> Option<(usize, usize)> {
    let end = value + 4;
    let colon = skip_ws_back(json, value);
    if json.get(colon.checked_sub(1)?) != Some(&b':') {
        return None;
    }
    let key_end = skip_ws_back(json, colon - 1);
    let key_start = key_end.checked_sub(br#""usage""#.len())?;
    if json.get(key_start..key_end)? != br#""usage""# {
        return None;
    }
    let before = skip_ws_back(json, key_start);
    match json.get(before.checked_sub(1)?)? {
        b',' => Some((before - 1, end)),
        b'{' => {
            // The first member: take the comma after it instead (or none, if it is the only one).
            let after = skip_ws(json, end);
            match json.get(after)? {
                b',' => Some((key_start, skip_ws(json, after + 1))),
                b'}' => Some((key_start, end)),
                _ => None,
            }
        }
        _ => None,
    }
}

fn chunk_edit(json: &[u8]) -> ChunkEdit {
    let Ok(probe) = serde_json::from_slice::<ChunkProbe<'_>>(json) else {
        return ChunkEdit::Keep;
    };
    let Some(usage) = probe.usage else {
        return ChunkEdit::Keep;
    };
    let text = usage.get();
    if text.starts_with('{') && probe.choices.is_some_and(is_empty_array) {
        return ChunkEdit::Drop;
    }
    if text == "null" {
        if let Some((a, b)) = offset_in(json, text).and_then(|start| null_member(json, start)) {
            return ChunkEdit::Cut(a, b);
        }
    }
    ChunkEdit::Keep
}

/// The end of the line starting at `from`, and where the next line starts; `None` when the line's
/// terminator has not arrived (a `\r` at the very end may still be followed by `\n`).
fn line_at(data: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = data.get(from..)?;
    let i = memchr::memchr2(b'\n', b'\r', rest)?;
    let end = from + i;
    match rest.get(i) {
        Some(b'\n') => Some((end, end + 1)),
        _ => match rest.get(i + 1) {
            Some(b'\n') => Some((end, end + 2)),
            Some(_) => Some((end, end + 1)),
            None => None,
        },
    }
}

/// How one complete event (raw bytes, blank line included) leaves the stripper.
fn event_output(event: &[u8], first_line_end: usize, lines: usize, out: &mut Vec<u8>) {
    // Only the plain shape servers send: one `data:` line, then the blank line.
    let edit = match (lines, event.get(..first_line_end)) {
        (1, Some(line)) => match line.strip_prefix(b"data:") {
            Some(payload) => {
                let payload = payload.strip_prefix(b" ").unwrap_or(payload);
                let start = first_line_end - payload.len();
                match chunk_edit(payload) {
                    ChunkEdit::Cut(a, b) => ChunkEdit::Cut(start + a, start + b),
                    other => other,
                }
            }
            None => ChunkEdit::Keep,
        },
        _ => ChunkEdit::Keep,
    };
    match edit {
        ChunkEdit::Keep => out.extend_from_slice(event),
        ChunkEdit::Drop => {}
        ChunkEdit::Cut(a, b) => {
            out.extend_from_slice(event.get(..a).unwrap_or_default());
            out.extend_from_slice(event.get(b..).unwrap_or_default());
        }
    }
}

/// Removes from an event stream what `include_usage` added (see the module doc).
///
/// Memory: the bytes of one incomplete event, at most `max_event_bytes` (then it gives up).
#[derive(Debug)]
pub struct UsageStripper {
    /// The start of an event whose end has not arrived yet.
    pending: Vec<u8>,
    max_event_bytes: usize,
    /// Gave up (an event over the bound): everything passes as it comes.
    off: bool,
}

impl UsageStripper {
    pub fn new(max_event_bytes: usize) -> UsageStripper {
        UsageStripper {
            pending: Vec::new(),
            max_event_bytes,
            off: false,
        }
    }

    /// The bytes to send in place of `chunk`, or `None` to send `chunk` as it is (nothing held,
    /// nothing removed). `end` marks the body's last chunk: whatever is held goes out with it.
    pub fn feed(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        if self.off {
            return None;
        }
        let held = std::mem::take(&mut self.pending);
        let joined;
        let data: &[u8] = if held.is_empty() {
            chunk
        } else {
            joined = [held.as_slice(), chunk].concat();
            &joined
        };
        let mut out = Vec::with_capacity(data.len());
        let mut event_start = 0;
        let mut pos = 0;
        let mut lines = 0usize;
        let mut first_line_end = 0;
        while let Some((line_end, next)) = line_at(data, pos) {
            if line_end == pos {
                // A blank line: the event [event_start, next) is complete.
                if let Some(event) = data.get(event_start..next) {
                    if lines == 0 {
                        out.extend_from_slice(event);
                    } else {
                        event_output(event, first_line_end - event_start, lines, &mut out);
                    }
                }
                event_start = next;
                lines = 0;
            } else {
                if lines == 0 {
                    first_line_end = line_end;
                }
                lines += 1;
            }
            pos = next;
        }
        let tail = data.get(event_start..).unwrap_or_default();
        if end || tail.len() > self.max_event_bytes {
            out.extend_from_slice(tail);
            self.off = !end;
        } else {
            self.pending = tail.to_vec();
        }
        (out.as_slice() != chunk).then_some(out)
    }

    /// Bytes held back (an incomplete event).
    pub fn held(&self) -> usize {
        self.pending.len()
    }
}

#[cfg(test)]
#[path = "inject_tests.rs"]
mod tests;
