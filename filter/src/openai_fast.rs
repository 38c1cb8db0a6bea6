//! A byte-level reader for the event that makes up almost every stream: an OpenAI chat completion
//! chunk with one plain delta (`{"id":…,"object":"chat.completion.chunk",…,"choices":[{"index":0,
//! "delta":{"content":"…"},"finish_reason":null}]}`).
//!
//! Why: inside Envoy the filter's own cost per stream event was dominated by serde_json's generic
//! machinery (a UTF-8 check and a visitor per string, a map visitor per object), for an event of
//! which the filter needs three facts. This reader makes one pass over the bytes and reads only
//! what it must: the dynamic module's own instructions per event of a 256-event stream fell from
//! about 5,600 to 3,800 (`tests/bench/filter_instructions.py`, BENCHMARKS.md).
//!
//! The rule that keeps it honest: it accepts a strict subset of JSON — strings without escapes or
//! control characters, integers, `true`, `false`, `null`, and objects and arrays only where the
//! views read them — and only members whose meaning it knows; for anything else (an escape, a
//! float, a nested value it does not model, a duplicate of a member the views read, a `type`,
//! `usage` that is not `null`, trailing bytes) it returns `None` and the caller parses the event
//! with the serde views. So whenever it returns `Some`, the views would have returned `Ok` with the
//! same [`EventInfo`] (a differential property test below, and the `event_fast_path` fuzz target,
//! check exactly that), and a malformed event is always judged by serde_json.

use super::{event_info, is_error_object, Choices, Content, Delta, EventDelta, EventInfo};

/// The chunk's meaning, or `None` when the serde views must read it.
pub(super) fn chat_chunk<'a>(event_type: &[u8], data: &'a [u8]) -> Option<EventInfo<'a>> {
    // One UTF-8 check for the whole event; strings are then sliced at ASCII quotes (char
    // boundaries).
    let text = std::str::from_utf8(data).ok()?;
    let mut r = Reader { text, at: 0 };
    let mut choices = None;
    let mut object = None;
    let mut usage = false;
    r.object(|r, key| {
        match key {
            "choices" if choices.is_none() => choices = Some(r.choices()?),
            "object" if object.is_none() => object = Some(r.string()?),
            "usage" if !usage => {
                usage = true;
                r.null()?;
            }
            // Members the views read in other shapes (or a duplicate, which they refuse).
            "choices" | "object" | "usage" | "type" | "delta" | "response" | "message"
            | "error" => return None,
            _ => r.scalar()?,
        }
        Some(())
    })?;
    r.space();
    if r.at != data.len() {
        return None;
    }
    Some(event_info(
        event_type,
        choices.unwrap_or_default(),
        "",
        &EventDelta::default(),
        is_error_object(object),
        None,
    ))
}

struct Reader<'a> {
    text: &'a str,
    at: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.text.as_bytes().get(self.at).copied()
    }

    /// Skips JSON whitespace.
    fn space(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Consumes `byte` after optional whitespace.
    fn eat(&mut self, byte: u8) -> Option<()> {
        self.space();
        (self.peek() == Some(byte)).then(|| self.at += 1)
    }

    /// Consumes `word` (a literal) after optional whitespace.
    fn word(&mut self, word: &str) -> Option<()> {
        self.space();
        let rest = self.text.as_bytes().get(self.at..)?;
        rest.starts_with(word.as_bytes())
            .then(|| self.at += word.len())
    }

    fn null(&mut self) -> Option<()> {
        self.word("null")
    }

    /// Whether `null` comes next (consumed if so).
    fn is_null(&mut self) -> bool {
        self.null().is_some()
    }

    /// A string without escapes or control characters.
    fn string(&mut self) -> Option<&'a str> {
        self.eat(b'"')?;
        let start = self.at;
        let rest = self.text.as_bytes().get(start..)?;
        let len = rest
            .iter()
            .position(|&b| b == b'"' || b == b'\\' || b < 0x20)?;
        if rest.get(len) != Some(&b'"') {
            return None;
        }
        self.at = start + len + 1;
        self.text.get(start..start + len)
    }

    /// An integer (no fraction or exponent, at most 18 digits).
    fn integer(&mut self) -> Option<()> {
        self.space();
        if self.peek() == Some(b'-') {
            self.at += 1;
        }
        let rest = self.text.as_bytes().get(self.at..)?;
        let digits = rest.iter().take_while(|b| b.is_ascii_digit()).count();
        // No leading zero, and no fraction or exponent (those go to serde_json).
        if digits == 0
            || digits > 18
            || (digits > 1 && rest.first() == Some(&b'0'))
            || matches!(rest.get(digits), Some(b'.' | b'e' | b'E'))
        {
            return None;
        }
        self.at += digits;
        Some(())
    }

    /// A string, integer, `true`, `false` or `null` whose value does not matter.
    fn scalar(&mut self) -> Option<()> {
        self.space();
        match self.peek()? {
            b'"' => self.string().map(drop),
            b'n' => self.null(),
            b't' => self.word("true"),
            b'f' => self.word("false"),
            _ => self.integer(),
        }
    }

    /// A string's non-emptiness, or `false` for `null` (the views' `NonEmpty` on these two).
    fn non_empty(&mut self) -> Option<bool> {
        if self.is_null() {
            return Some(false);
        }
        self.string().map(|s| !s.is_empty())
    }

    /// `open`, then items separated by commas (none, but no trailing comma), then `close`; `item`
    /// reads one item.
    fn sequence(
        &mut self,
        open: u8,
        close: u8,
        mut item: impl FnMut(&mut Self) -> Option<()>,
    ) -> Option<()> {
        self.eat(open)?;
        self.space();
        if self.peek() == Some(close) {
            self.at += 1;
            return Some(());
        }
        loop {
            item(self)?;
            self.space();
            match self.peek()? {
                b',' => self.at += 1,
                b if b == close => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    /// An object, calling `member` with each key positioned before its value.
    fn object(&mut self, mut member: impl FnMut(&mut Self, &'a str) -> Option<()>) -> Option<()> {
        self.sequence(b'{', b'}', |r| {
            let key = r.string()?;
            r.eat(b':')?;
            member(r, key)
        })
    }

    /// `choices`: `null` or an array of choice objects, folded as the views fold them.
    fn choices(&mut self) -> Option<Choices<'a>> {
        let mut choices = Choices::default();
        if !self.is_null() {
            self.sequence(b'[', b']', |r| {
                let (text, finished, delta) = r.choice()?;
                choices.add(text, finished, delta);
                Some(())
            })?;
        }
        Some(choices)
    }

    /// One choice: its `text` is non-empty, it has a `finish_reason`, its `delta`.
    fn choice(&mut self) -> Option<(bool, bool, Option<Delta<'a>>)> {
        let (mut text, mut finish, mut delta) = (None, None, None);
        self.object(|r, key| {
            match key {
                "text" if text.is_none() => text = Some(r.non_empty()?),
                // Any value but `null` finishes; only a string is read here.
                "finish_reason" if finish.is_none() => {
                    finish = Some(if r.is_null() {
                        false
                    } else {
                        r.string()?;
                        true
                    });
                }
                "delta" if delta.is_none() => {
                    delta = Some(if r.is_null() { None } else { Some(r.delta()?) });
                }
                "text" | "finish_reason" | "delta" => return None,
                _ => r.scalar()?,
            }
            Some(())
        })?;
        Some((
            text.unwrap_or(false),
            finish.unwrap_or(false),
            delta.flatten(),
        ))
    }

    /// A choice's `delta` object.
    fn delta(&mut self) -> Option<Delta<'a>> {
        let (mut content, mut reasoning, mut reasoning_content, mut refusal, mut tool_calls) =
            (None, None, None, None, None);
        self.object(|r, key| {
            match key {
                "content" if content.is_none() => {
                    content = Some(match r.is_null() {
                        true => Content::Empty,
                        false => match r.string()? {
                            "" => Content::Empty,
                            s => Content::Text(s.into()),
                        },
                    });
                }
                "reasoning_content" if reasoning_content.is_none() => {
                    reasoning_content = Some(r.non_empty()?);
                }
                "reasoning" if reasoning.is_none() => reasoning = Some(r.non_empty()?),
                "refusal" if refusal.is_none() => refusal = Some(r.non_empty()?),
                // Tool calls are arrays: only their absence is read here.
                "tool_calls" if tool_calls.is_none() => {
                    r.null()?;
                    tool_calls = Some(false);
                }
                "content" | "reasoning_content" | "reasoning" | "refusal" | "tool_calls" => {
                    return None
                }
                _ => r.scalar()?,
            }
            Some(())
        })?;
        let yes = |flag: Option<bool>| flag.unwrap_or(false);
        Some(Delta {
            content: content.unwrap_or_default(),
            reasoning: yes(reasoning_content) || yes(reasoning),
            answer: yes(refusal) || yes(tool_calls),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::parse_event_views;
    use super::*;
    use proptest::prelude::*;
    use test_kit::fixture as kit;

    /// The fast reader's answer, checked against the views whenever it gives one.
    fn fast(data: &[u8]) -> Option<EventInfo<'_>> {
        let got = chat_chunk(b"", data);
        if let Some(info) = &got {
            let views = parse_event_views(b"", data);
            assert_eq!(
                views.as_ref().ok(),
                Some(info),
                "{:?}: the views give {views:?}",
                String::from_utf8_lossy(data)
            );
        }
        got
    }

    fn info(token: bool, content: Option<&str>, reasoning: bool, end: bool) -> EventInfo<'_> {
        EventInfo {
            token,
            reasoning,
            content: content.map(Into::into),
            end,
            ..EventInfo::default()
        }
    }

    #[test]
    fn the_common_chunks_are_read_here() {
        let cases: [(&str, EventInfo<'_>); 8] = [
            // vLLM
            (
                r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1733000000,"model":"Qwen/Qwen3-8B","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}"#,
                info(true, Some("Hi"), false, false),
            ),
            // OpenAI, with its extra members and a role chunk's empty content
            (
                r#"{"id":"chatcmpl-B","object":"chat.completion.chunk","created":1,"model":"gpt-4o","service_tier":"default","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"role":"assistant","content":"","refusal":null},"logprobs":null,"finish_reason":null}],"usage":null,"obfuscation":"x1"}"#,
                info(false, None, false, false),
            ),
            (
                r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}"#,
                info(false, None, false, true),
            ),
            // reasoning fields (vLLM / SGLang, and the newer `reasoning`)
            (
                r#"{"choices":[{"index":0,"delta":{"reasoning_content":"Let"},"finish_reason":null}]}"#,
                info(true, None, true, false),
            ),
            (
                r#"{"choices":[{"index":0,"delta":{"content":null,"reasoning":"me"}}]}"#,
                info(true, None, true, false),
            ),
            // SGLang: whitespace and a matched_stop
            (
                " {\"id\": \"1\", \"choices\": [{\"index\": 0, \"delta\": {\"role\": null, \"content\": \"ok\", \"tool_calls\": null}, \"finish_reason\": null, \"matched_stop\": null}]}\n",
                info(true, Some("ok"), false, false),
            ),
            // completions
            (
                r#"{"id":"cmpl-1","object":"text_completion","created":1,"model":"m","choices":[{"index":0,"text":" world","logprobs":null,"finish_reason":null}]}"#,
                EventInfo {
                    token: true,
                    answer: true,
                    ..EventInfo::default()
                },
            ),
            (r#"{"choices":[]}"#, info(false, None, false, false)),
        ];
        for (data, want) in cases {
            assert_eq!(fast(data.as_bytes()), Some(want), "{data}");
        }
    }

    #[test]
    fn everything_else_is_left_to_the_views() {
        for data in [
            &br#"{"choices":[{"delta":{"content":"a\nb"}}]}"#[..],
            br#"{"choices":[{"delta":{"content":"\u00e9"}}]}"#,
            br#"{"choices":[{"delta":{"content":"x"}}],"created":1.5}"#,
            br#"{"choices":[{"delta":{"content":"x"}}],"created":1e3}"#,
            br#"{"choices":[{"delta":{"content":"x"}}],"created":01}"#,
            br#"{"choices":[{"delta":{"content":"x"}}],"created":-}"#,
            br#"{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}"#,
            br#"{"choices":[{"delta":{"tool_calls":[{"index":0}]}}]}"#,
            br#"{"choices":[{"delta":{"content":"x"},"logprobs":{"content":[]}}]}"#,
            br#"{"choices":[],"choices":[]}"#,
            br#"{"usage":null,"usage":null}"#,
            br#"{"choices":[{"delta":{"content":"a","content":"b"}}]}"#,
            br#"{"choices":[{"delta":{},"delta":{}}]}"#,
            br#"{"choices":[{"finish_reason":"stop","finish_reason":null}]}"#,
            br#"{"choices":[{"finish_reason":7}]}"#,
            br#"{"choices":[{"delta":{"content":7}}]}"#,
            br#"{"choices":[{"delta":{"content":"x"}}]} x"#,
            br#"{"choices":[{"delta":{"content":"x"}}],}"#,
            br#"{"choices":[{"delta":{"content":"x"}},]}"#,
            br#"{"type":"response.output_text.delta","delta":"x"}"#,
            br#"{"type":"content_block_delta","delta":{"type":"text_delta","text":"x"}}"#,
            br#"{"choices":null,"object":5}"#,
            br#"{"object":null}"#,
            // vLLM's error event (its `message` is read by the views)
            br#"{"object":"error","message":"boom","type":"BadRequestError","code":400}"#,
            b"\xEF\xBB\xBF{\"choices\":[]}",
            b"{\"choices\":[{\"delta\":{\"content\":\"\xff\"}}]}",
            b"{\"choices\":[{\"delta\":{\"content\":\"a\x01\"}}]}",
            br#"[{"choices":[]}]"#,
            br#"{"choices":{}}"#,
            br#"{"choices":[[]]}"#,
            br#"{"cho\u0069ces":[]}"#,
            b"",
            b"{",
            b"{\"choices\":[",
            b"nul",
        ] {
            assert_eq!(
                chat_chunk(b"", data),
                None,
                "{:?}",
                String::from_utf8_lossy(data)
            );
        }
    }

    #[test]
    fn an_sse_error_event_is_an_error_here_too() {
        let data = br#"{"choices":[{"delta":{"content":"x"}}]}"#;
        let got = chat_chunk(b"error", data).map(|i| i.error);
        assert_eq!(got, Some(true));
        assert_eq!(parse_event_views(b"error", data).ok().map(|i| i.error), got);
    }

    /// Every event of every recorded stream: the fast reader agrees with the views wherever it
    /// answers, and it answers for most chat chunks (what it is for).
    #[test]
    fn recorded_streams_read_the_same_and_mostly_here() {
        let all = kit::load_all(&kit::fixtures_dir()).unwrap_or_else(|e| panic!("{e:#}"));
        let (mut events, mut chat_chunks, mut fast_chat_chunks) = (0, 0, 0);
        for f in &all {
            let body = f.response_body().unwrap_or_else(|e| panic!("{e:#}"));
            let mut datas = Vec::new();
            crate::sse::Decoder::new(1 << 20).feed(&body, &mut |item| {
                if let crate::sse::Item::Event { data, .. } = item {
                    datas.push(data.to_vec());
                }
            });
            for data in &datas {
                events += 1;
                let chunk = data
                    .windows(b"chat.completion.chunk".len())
                    .any(|w| w == b"chat.completion.chunk");
                let got = fast(data);
                chat_chunks += usize::from(chunk);
                fast_chat_chunks += usize::from(chunk && got.is_some());
            }
        }
        assert!(events > 500, "only {events} recorded events");
        assert!(
            fast_chat_chunks * 4 >= chat_chunks * 3,
            "{fast_chat_chunks} of {chat_chunks} recorded chat chunks read by the fast reader"
        );
    }

    const KEYS: &[&str] = &[
        "id",
        "object",
        "created",
        "model",
        "choices",
        "usage",
        "type",
        "delta",
        "content",
        "reasoning_content",
        "reasoning",
        "refusal",
        "tool_calls",
        "finish_reason",
        "text",
        "index",
        "role",
        "logprobs",
        "error",
    ];
    const VALUES: &[&str] = &[
        r#""x""#,
        r#""""#,
        r#""chat.completion.chunk""#,
        r#""error""#,
        r#""a\nb""#,
        "null",
        "0",
        "-3",
        "01",
        "1.5",
        "true",
        "false",
        "[]",
        "{}",
        r#"[{"index":0}]"#,
    ];

    /// A random object: members with keys from `KEYS` and values from `VALUES` or, for some
    /// keys, nested choices and deltas.
    fn object(depth: u32) -> BoxedStrategy<String> {
        let value = if depth == 0 {
            prop::sample::select(VALUES).prop_map(str::to_owned).boxed()
        } else {
            prop_oneof![
                3 => prop::sample::select(VALUES).prop_map(str::to_owned),
                1 => object(depth - 1),
                1 => prop::collection::vec(object(depth - 1), 0..3)
                    .prop_map(|v| format!("[{}]", v.join(","))),
            ]
            .boxed()
        };
        prop::collection::vec((prop::sample::select(KEYS), value), 0..6)
            .prop_map(|members| {
                let members: Vec<String> = members
                    .iter()
                    .map(|(k, v)| format!("\"{k}\":{v}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            })
            .boxed()
    }

    /// A recorded-style chunk with a few bytes inserted, removed or replaced.
    fn mutated() -> impl Strategy<Value = Vec<u8>> {
        let base = prop::sample::select(vec![
            r#"{"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"Hi"},"logprobs":null,"finish_reason":null}]}"#,
            r#"{"choices":[{"index":0,"delta":{"reasoning_content":"r","content":null},"finish_reason":"stop"}],"usage":null}"#,
        ]);
        let edit = (
            any::<prop::sample::Index>(),
            0u8..3,
            prop::sample::select(b"\"{}[]:,\\ n0-.e\x01\xff".to_vec()),
        );
        (base, prop::collection::vec(edit, 0..4)).prop_map(|(base, edits)| {
            let mut b = base.as_bytes().to_vec();
            for (at, op, byte) in edits {
                let i = at.index(b.len() + 1);
                match op {
                    0 => b.insert(i, byte),
                    1 if i < b.len() => {
                        b.remove(i);
                    }
                    _ if i < b.len() => b[i] = byte,
                    _ => {}
                }
            }
            b
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 2048, .. ProptestConfig::default() })]

        /// Whatever the fast reader answers, the views answer the same.
        #[test]
        fn random_objects_read_as_the_views_read_them(data in object(2)) {
            fast(data.as_bytes());
        }

        #[test]
        fn damaged_chunks_read_as_the_views_read_them(data in mutated()) {
            fast(&data);
        }
    }
}
