//! An incremental, byte-level decoder for `text/event-stream` (the WHATWG "server-sent events" rules).
//!
//! Body chunks can split anywhere: inside a multi-byte UTF-8 character, between `\r` and `\n`, inside
//! a field name. The decoder therefore never decodes UTF-8 (it works on bytes and hands out the raw
//! `data` payload, which the JSON parser validates), carries only the unfinished line between chunks,
//! and treats a trailing `\r` as "line ended; swallow a `\n` if the next chunk starts with one".
//!
//! Rules implemented: line ends `\r\n`, `\n` and `\r`; a leading UTF-8 BOM is skipped; lines starting
//! with `:` are comments; `field:value` with one optional space after the colon, a line without a
//! colon is a field with an empty value; `data` lines are joined with `\n`; an empty line dispatches
//! the event (nothing is dispatched when no `data` line was seen); `event` sets the event type; `id`,
//! `retry` and unknown fields are ignored (they carry nothing a metric needs). At end of stream an
//! unfinished event is dropped, as the standard says.
//!
//! Memory: at most `max_event_bytes` of content for the pending line, the same for the event's data
//! (and its name); with the slack of growing buffers, the allocations stay within 4 ×
//! `max_event_bytes` (`held_memory_stays_within_the_bound`, and the `sse_decoder` fuzz target). A larger
//! event is skipped (its bytes are not kept) and reported once as [`Item::TooLarge`].

/// What the decoder hands out.
#[derive(Debug, PartialEq, Eq)]
pub enum Item<'a> {
    /// A complete event: its `event:` type (empty when none) and its joined `data`.
    Event { event: &'a [u8], data: &'a [u8] },
    /// An event larger than the bound was skipped.
    TooLarge,
}

const BOM: &[u8] = b"\xEF\xBB\xBF";

/// Longest `event:` type kept; longer types are cut (only short names such as `error` matter).
const MAX_EVENT_TYPE: usize = 64;

/// Incremental SSE decoder state for one stream.
#[derive(Debug)]
pub struct Decoder {
    max_event_bytes: usize,
    /// The unfinished line carried over from earlier chunks.
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    event: Vec<u8>,
    /// The last chunk ended in `\r`: a `\n` at the start of the next one belongs to that line end.
    after_cr: bool,
    /// Still at the very start of the stream (a BOM may follow).
    at_start: bool,
    /// The current event (or line) went over the bound and is being skipped.
    oversized: bool,
    /// The current line went over the bound: drop its bytes until its end.
    skipping_line: bool,
}

impl Decoder {
    pub fn new(max_event_bytes: usize) -> Decoder {
        Decoder {
            max_event_bytes,
            line: Vec::new(),
            data: Vec::new(),
            has_data: false,
            event: Vec::new(),
            after_cr: false,
            at_start: true,
            oversized: false,
            skipping_line: false,
        }
    }

    /// Bytes currently held (for the documented memory bound).
    pub fn held_bytes(&self) -> usize {
        self.line.capacity() + self.data.capacity() + self.event.capacity()
    }

    /// Feeds one body chunk; calls `on_item` for every event completed by it.
    pub fn feed(&mut self, mut chunk: &[u8], on_item: &mut dyn FnMut(Item<'_>)) {
        if chunk.is_empty() {
            return;
        }
        if self.after_cr {
            self.after_cr = false;
            if let Some(rest) = chunk.strip_prefix(b"\n") {
                chunk = rest;
            }
        }
        while !chunk.is_empty() {
            let Some(end) = memchr::memchr2(b'\n', b'\r', chunk) else {
                self.carry(chunk);
                return;
            };
            let (head, tail) = chunk.split_at(end);
            let consumed = match tail {
                [b'\r', b'\n', ..] => 2,
                [b'\r'] => {
                    self.after_cr = true;
                    1
                }
                _ => 1,
            };
            chunk = tail.get(consumed..).unwrap_or_default();
            if self.line.is_empty() && !self.skipping_line {
                if head.len() > self.max_event_bytes {
                    // The same verdict as for a line that arrives in pieces and overflows `carry`.
                    self.oversized = true;
                    self.at_start = false;
                } else {
                    self.line_done(head, on_item);
                }
            } else {
                self.carry(head);
                let line = std::mem::take(&mut self.line);
                self.line_done(&line, on_item);
                self.line = line;
                self.line.clear();
            }
        }
    }

    /// Keeps part of an unfinished line, within the bound.
    fn carry(&mut self, part: &[u8]) {
        if self.skipping_line {
            return;
        }
        if self.line.len() + part.len() > self.max_event_bytes {
            self.line = Vec::new();
            self.skipping_line = true;
            self.oversized = true;
            return;
        }
        self.line.extend_from_slice(part);
    }

    fn line_done(&mut self, mut line: &[u8], on_item: &mut dyn FnMut(Item<'_>)) {
        if self.skipping_line {
            // The line's bytes are gone; the event it belonged to is already marked oversized.
            self.skipping_line = false;
            self.at_start = false;
            return;
        }
        if self.at_start {
            self.at_start = false;
            line = line.strip_prefix(BOM).unwrap_or(line);
        }
        if line.is_empty() {
            self.dispatch(on_item);
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(i) => {
                let (f, v) = line.split_at(i);
                let v = v.get(1..).unwrap_or_default();
                (f, v.strip_prefix(b" ").unwrap_or(v))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.oversized {
                    return;
                }
                let extra = value.len() + usize::from(self.has_data);
                if self.data.len() + extra > self.max_event_bytes {
                    self.oversized = true;
                    self.data = Vec::new();
                    return;
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.event.clear();
                self.event
                    .extend_from_slice(value.get(..MAX_EVENT_TYPE).unwrap_or(value));
            }
            _ => {}
        }
    }

    fn dispatch(&mut self, on_item: &mut dyn FnMut(Item<'_>)) {
        if self.oversized {
            on_item(Item::TooLarge);
        } else if self.has_data {
            on_item(Item::Event {
                event: &self.event,
                data: &self.data,
            });
        }
        self.oversized = false;
        self.has_data = false;
        self.data.clear();
        self.event.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, PartialEq, Eq, Clone)]
    enum Owned {
        Event(String, String),
        TooLarge,
    }

    fn decode_chunks(max: usize, chunks: &[&[u8]]) -> Vec<Owned> {
        let mut d = Decoder::new(max);
        let mut out = Vec::new();
        for c in chunks {
            d.feed(c, &mut |item| {
                out.push(match item {
                    Item::Event { event, data } => Owned::Event(
                        String::from_utf8_lossy(event).into_owned(),
                        String::from_utf8_lossy(data).into_owned(),
                    ),
                    Item::TooLarge => Owned::TooLarge,
                })
            });
        }
        out
    }

    fn decode(input: &[u8]) -> Vec<Owned> {
        decode_chunks(1 << 20, &[input])
    }

    fn ev(data: &str) -> Owned {
        Owned::Event(String::new(), data.to_owned())
    }

    #[test]
    fn lf_crlf_and_cr_line_ends_are_equivalent() {
        let want = vec![ev("a"), ev("b")];
        assert_eq!(decode(b"data: a\n\ndata: b\n\n"), want);
        assert_eq!(decode(b"data: a\r\n\r\ndata: b\r\n\r\n"), want);
        assert_eq!(decode(b"data: a\r\rdata: b\r\r"), want);
        assert_eq!(decode(b"data: a\r\n\ndata: b\n\r\n"), want);
    }

    #[test]
    fn crlf_split_between_chunks_is_one_line_end() {
        let got = decode_chunks(
            1 << 20,
            &[b"data: a\r", b"", b"\n\r", b"\ndata: b\r\n", b"\r\n"],
        );
        assert_eq!(got, vec![ev("a"), ev("b")]);
    }

    #[test]
    fn a_cr_at_a_chunk_end_followed_by_another_line_is_one_line_end() {
        let got = decode_chunks(1 << 20, &[b"data: a\r", b"data: b\r", b"\r"]);
        // "data: a" CR, then "data: b" CR, then CR (empty line) -> one event with two data lines.
        assert_eq!(got, vec![ev("a\nb")]);
    }

    #[test]
    fn the_space_after_the_colon_is_optional_and_only_one_is_removed() {
        assert_eq!(decode(b"data:x\n\n"), vec![ev("x")]);
        assert_eq!(decode(b"data:  x\n\n"), vec![ev(" x")]);
    }

    #[test]
    fn multi_line_data_is_joined_with_newlines() {
        assert_eq!(
            decode(b"data: {\"a\":\ndata: 1}\n\n"),
            vec![ev("{\"a\":\n1}")]
        );
    }

    #[test]
    fn comments_ids_retries_and_unknown_fields_are_ignored() {
        let input = b": keep-alive\n\nid: 7\nretry: 100\nfoo: bar\ndata: x\n\n:\n\n";
        assert_eq!(decode(input), vec![ev("x")]);
    }

    #[test]
    fn the_event_type_is_reported_and_reset_after_each_event() {
        let got = decode(b"event: error\ndata: {}\n\ndata: y\n\n");
        assert_eq!(
            got,
            vec![Owned::Event("error".into(), "{}".into()), ev("y")]
        );
    }

    #[test]
    fn a_line_without_colon_is_a_field_with_empty_value() {
        assert_eq!(decode(b"data\n\n"), vec![ev("")]);
        assert_eq!(decode(b"event\ndata: a\n\n"), vec![ev("a")]);
    }

    #[test]
    fn an_event_without_data_is_not_dispatched() {
        assert_eq!(decode(b"event: ping\n\n\n\nid: 3\n\n"), vec![]);
    }

    #[test]
    fn a_leading_bom_is_skipped_even_when_split() {
        assert_eq!(decode(b"\xEF\xBB\xBFdata: a\n\n"), vec![ev("a")]);
        let got = decode_chunks(1 << 20, &[b"\xEF", b"\xBB", b"\xBFdata: a\n\n"]);
        assert_eq!(got, vec![ev("a")]);
        // Only at the very start.
        assert_eq!(
            decode(b"data: a\n\n\xEF\xBB\xBFdata: b\n\n"),
            vec![ev("a")],
            "a BOM later is part of a field name"
        );
    }

    #[test]
    fn an_unfinished_event_at_the_end_is_not_dispatched() {
        assert_eq!(decode(b"data: a\n\ndata: b\n"), vec![ev("a")]);
        assert_eq!(decode(b"data: a\n\ndata: b"), vec![ev("a")]);
    }

    #[test]
    fn multi_byte_utf8_split_inside_a_character_is_kept_intact() {
        let input = "data: {\"c\":\"日本🎉\"}\n\n".as_bytes();
        for cut in 0..input.len() {
            let (a, b) = input.split_at(cut);
            assert_eq!(
                decode_chunks(1 << 20, &[a, b]),
                vec![ev("{\"c\":\"日本🎉\"}")]
            );
        }
    }

    #[test]
    fn done_is_an_ordinary_data_payload() {
        assert_eq!(decode(b"data: [DONE]\n\n"), vec![ev("[DONE]")]);
    }

    #[test]
    fn an_oversized_event_is_skipped_once_and_the_stream_continues() {
        let big = format!("data: {}\n\ndata: ok\n\n", "x".repeat(100));
        assert_eq!(
            decode_chunks(32, &[big.as_bytes()]),
            vec![Owned::TooLarge, ev("ok")]
        );
        // Split so the long line has to be carried between chunks.
        let (a, b) = big.as_bytes().split_at(20);
        assert_eq!(decode_chunks(32, &[a, b]), vec![Owned::TooLarge, ev("ok")]);
        // Many data lines that each fit but together do not.
        let many = "data: 0123456789\n".repeat(10) + "\ndata: ok\n\n";
        assert_eq!(
            decode_chunks(32, &[many.as_bytes()]),
            vec![Owned::TooLarge, ev("ok")]
        );
    }

    #[test]
    fn an_oversized_line_of_any_field_gives_the_same_verdict_whole_or_split() {
        // Found by the sse_decoder fuzz target: a long non-data line was skipped silently when it came
        // in one chunk but reported as too large when it came in pieces.
        let input = format!("{}\n\ndata: ok\n\n", "x".repeat(100));
        let whole = decode_chunks(32, &[input.as_bytes()]);
        assert_eq!(whole, vec![Owned::TooLarge, ev("ok")]);
        let pieces: Vec<&[u8]> = input.as_bytes().chunks(7).collect();
        assert_eq!(decode_chunks(32, &pieces), whole);
    }

    #[test]
    fn held_memory_stays_within_the_bound() {
        let mut d = Decoder::new(64);
        let big = vec![b'x'; 10_000];
        d.feed(b"data: ", &mut |_| {});
        for _ in 0..10 {
            d.feed(&big, &mut |_| {});
            assert!(d.held_bytes() <= 4 * 64, "{}", d.held_bytes());
        }
    }

    #[test]
    fn every_split_point_gives_the_same_events() {
        let input: &[u8] = b"\xEF\xBB\xBF: c\r\nevent: x\r\ndata: a\r\ndata:b\r\r\ndata: \xE6\x97\xA5\n\nid: 1\rdata: [DONE]\r\r";
        let whole = decode(input);
        assert_eq!(
            whole,
            vec![
                Owned::Event("x".into(), "a\nb".into()),
                ev("日"),
                ev("[DONE]")
            ]
        );
        for i in 0..=input.len() {
            for j in i..=input.len() {
                let parts = [&input[..i], &input[i..j], &input[j..]];
                assert_eq!(decode_chunks(1 << 20, &parts), whole, "split at {i},{j}");
            }
        }
        let bytes: Vec<&[u8]> = input.chunks(1).collect();
        assert_eq!(decode_chunks(1 << 20, &bytes), whole);
    }
}
