//! One LLM request/response exchange, as a state machine fed bytes and clock values.
//!
//! The host shell calls, in Envoy's order: [`Exchange::new`] at the request headers,
//! [`Exchange::request_body`] per request chunk, [`Exchange::response_headers`],
//! [`Exchange::response_body`] per response chunk, and [`Exchange::finish`] from `on_log` — which Envoy
//! calls exactly once per stream, also when the client or the upstream went away and no
//! `end_of_stream` ever arrived. `finish` returns the [`Observation`]; nothing here touches the host.
//!
//! Memory per exchange: this struct (248 bytes, at most 256 by test, of which 8 hold the extra label ids, 8 the longest inter-token gap,
//! 32 the first reasoning and first answer chunk times, and 2 the `<think>` tag matcher) plus, while
//! they are being read, the request body (at most `max_request_body_bytes`, freed once parsed), a
//! non-streaming response body (at most `max_response_body_bytes`, freed once parsed) or the SSE
//! decoder (88 bytes) and its partial line and event (each at most `max_event_bytes` of content;
//! with growth slack their allocations stay within 4 × `max_event_bytes`, by test and fuzzing). A gzip or deflate response
//! adds one [`Inflater`] ([`Inflater::SIZE`], 43,328 bytes: a 32 KiB window and the Huffman tables),
//! allocated at its response headers only when the response is encoded and readable, and freed when
//! its body ends; the decoded bytes pass through a 16 KiB stack buffer and are not kept (a JSON body
//! decodes into its bounded buffer). Nothing grows with the number of stream events. Parsing an
//! event allocates only when a chat `content` string has JSON escapes (its unescaped copy, freed with
//! the event).
//!
//! `inject_stream_usage` adds, only on the exchanges it applies to, one boxed state: while the
//! request is held, a count (Envoy holds the body itself, at most `inject_max_request_bytes`); then
//! the rewritten body until the shell takes it (the body plus 39 bytes); then, on a plain event
//! stream, the [`UsageStripper`] and the incomplete event it holds back (at most `max_event_bytes`).

use crate::config::Config;
use crate::encoding::{self, BodyCoding, Inflater, Stop};
use crate::inject::{self, UsageStripper};
use crate::labels::ModelId;
use crate::metrics::{
    Api, ErrorKind, ErrorSet, LabelIds, Op, Outcome, Series, Source, StatusClass, TokenType,
};
use crate::openai::{self, Usage};
use crate::sse::{self, Decoder, Item};
use crate::think::ThinkTags;

const NANOS_PER_MILLI: u64 = 1_000_000;

/// Envoy's response flags (the legacy bit set both hosts report as `response.flags`) this filter
/// reads: "downstream connection terminated" (`DC`, an HTTP/1 client closed its connection).
pub const RESPONSE_FLAG_DOWNSTREAM_DISCONNECT: u64 = 0x4000;
/// "Downstream remote reset" (`DR`): an HTTP/2 or HTTP/3 client reset the stream (RST_STREAM, e.g.
/// CANCEL), keeping its connection.
pub const RESPONSE_FLAG_DOWNSTREAM_REMOTE_RESET: u64 = 0x1000_0000;
/// The client went away, over any protocol.
pub const RESPONSE_FLAGS_CLIENT_GONE: u64 =
    RESPONSE_FLAG_DOWNSTREAM_DISCONNECT | RESPONSE_FLAG_DOWNSTREAM_REMOTE_RESET;
/// Envoy ended the request on a timer: the route timeout (`UT`, 0x4), the stream idle timeout (`SI`,
/// 0x10000), the upstream's max stream duration (`UMSDR`, 0x80000) or the downstream's (`DT`,
/// 0x400000).
pub const RESPONSE_FLAGS_TIMEOUT: u64 = 0x4 | 0x1_0000 | 0x8_0000 | 0x40_0000;
const NANOS_PER_MICRO: u64 = 1_000;

#[derive(Debug)]
enum RequestBody {
    /// Collecting the body (empty until a second chunk arrives: a body that comes in one chunk is
    /// parsed straight from the host's buffer).
    Reading(Vec<u8>),
    /// The model label is decided.
    Done,
}

#[derive(Debug)]
enum ResponseBody {
    /// No response headers yet.
    Waiting,
    /// A JSON body being collected.
    Json(Vec<u8>),
    /// A `text/event-stream` body being decoded.
    Sse(Box<Decoder>),
    /// A body the filter does not read (error status, encoded, over the bound, or already parsed).
    Skip,
}

/// The state of one exchange.
#[derive(Debug)]
pub struct Exchange {
    api: Api,
    start_ns: u64,
    request: RequestBody,
    model: ModelId,
    /// The extra label ids (`label_headers`), set by the shell at the request headers.
    labels: LabelIds,
    stream_requested: Option<bool>,
    status: Option<u16>,
    sse: bool,
    response: ResponseBody,
    /// The decoder of a gzip or deflate body, while it is being read.
    inflater: Option<Box<Inflater>>,
    /// The filter stopped reading the body before its end (an unreadable coding, corrupt compressed
    /// data, a decoded stream over its bound): whether a stream's end marker passed is unknown.
    unread_tail: bool,
    response_ended: bool,
    usage: Option<Usage>,
    token_events: u64,
    first_token_ns: Option<u64>,
    last_token_ns: u64,
    /// The longest gap between two token-bearing chunks so far.
    max_gap_ns: u64,
    /// The chunk of the first reasoning token, when it came before any answer token.
    first_reasoning_ns: Option<u64>,
    /// The chunk of the first token that is not reasoning.
    first_answer_ns: Option<u64>,
    /// Where the stream's chat content is relative to raw `<think>` tags.
    think: ThinkTags,
    stream_end_seen: bool,
    error_seen: bool,
    errors: ErrorSet,
    /// `inject_stream_usage` on this exchange (boxed: absent, 8 bytes, for every other exchange).
    inject: Option<Box<Inject>>,
}

/// Where an exchange is in `inject_stream_usage`.
#[derive(Debug)]
enum Inject {
    /// The shell holds the request body: the bytes held so far.
    Holding(usize),
    /// The request body with `include_usage` added, until the shell takes it.
    Rewritten(Vec<u8>),
    /// The request went out rewritten: the response's additions are to be removed.
    Injected,
    /// Removing them from a readable event stream.
    Stripping(UsageStripper),
}

/// Everything the metrics need about a finished exchange.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Observation {
    pub api: Api,
    pub model: ModelId,
    /// The extra label ids (`label_headers`) of every series with a `model` label.
    pub labels: LabelIds,
    pub streaming: bool,
    pub status: StatusClass,
    pub outcome: Outcome,
    pub usage: Option<Usage>,
    /// Token-bearing stream events (the output estimate when no usage arrived).
    pub token_events: u64,
    pub ttft_ms: Option<u64>,
    pub duration_ms: u64,
    pub tpot_us: Option<u64>,
    /// Streams with ≥ 2 token events: the longest gap between token-bearing chunks (events in one
    /// chunk share its time, so a gap inside a chunk is 0).
    pub max_gap_ms: Option<u64>,
    /// Streams: request headers → the first token that is not reasoning.
    pub ttfat_ms: Option<u64>,
    /// Streams: the first reasoning token → the first answer token, when reasoning came first.
    pub reasoning_ms: Option<u64>,
    /// A stream the filter read ended without any usage (the output is an estimate).
    pub usage_missing: bool,
    /// A stream with token events reported a usage `output` more than 10 % away from their count.
    pub token_count_mismatch: bool,
    pub errors: ErrorSet,
    /// The active-requests gauge was raised for this exchange and must be lowered.
    pub was_active: bool,
}

fn is_event_stream(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.trim_start()
            .get(..17)
            .is_some_and(|p| p.eq_ignore_ascii_case("text/event-stream"))
    })
}

/// A decoded event stream may grow to this many times `max_response_body_bytes` (64 MiB at the
/// defaults, far beyond any real stream) before the rest is left unread: the bound on the work one
/// small compressed body (a decompression bomb) can cause.
pub const DECODED_STREAM_FACTOR: u64 = 64;

impl Exchange {
    /// A new exchange whose request headers were seen at `now_ns`.
    pub fn new(api: Api, now_ns: u64) -> Exchange {
        Exchange {
            api,
            start_ns: now_ns,
            request: RequestBody::Reading(Vec::new()),
            model: ModelId::UNKNOWN,
            labels: LabelIds::default(),
            stream_requested: None,
            status: None,
            sse: false,
            response: ResponseBody::Waiting,
            inflater: None,
            unread_tail: false,
            response_ended: false,
            usage: None,
            token_events: 0,
            first_token_ns: None,
            last_token_ns: 0,
            max_gap_ns: 0,
            first_reasoning_ns: None,
            first_answer_ns: None,
            think: ThinkTags::default(),
            stream_end_seen: false,
            error_seen: false,
            errors: ErrorSet::default(),
            inject: None,
        }
    }

    /// `inject_stream_usage`, at the request headers: whether the shell should hold this request
    /// (stop the headers, buffer the body) so that [`Exchange::take_rewritten_request`] can add
    /// the option. Only chat and completions requests with a body that fits
    /// `inject_max_request_bytes` (by its `content-length`, when it has one) are held.
    /// `content_length` reads the header; it is called only when the option is on (a header read
    /// is a host call).
    pub fn hold_request<L: AsRef<str>>(
        &mut self,
        config: &Config,
        end_of_stream: bool,
        content_length: impl FnOnce() -> Option<L>,
    ) -> bool {
        let hold = config.inject_stream_usage
            && matches!(self.api, Api::ChatCompletions | Api::Completions)
            && !end_of_stream
            && content_length().is_none_or(|v| {
                v.as_ref()
                    .trim()
                    .parse::<u64>()
                    .is_ok_and(|n| n <= config.inject_max_request_bytes as u64)
            });
        self.inject = hold.then(|| Box::new(Inject::Holding(0)));
        hold
    }

    /// Whether the shell still holds the request (it stops holding once the body ends or grows
    /// past `inject_max_request_bytes`: then everything held goes on untouched).
    pub fn holding_request(&self) -> bool {
        matches!(self.inject.as_deref(), Some(Inject::Holding(_)))
    }

    /// Request body bytes held so far (what the shell has already read of a held body).
    pub fn held_request_bytes(&self) -> usize {
        match self.inject.as_deref() {
            Some(Inject::Holding(n)) => *n,
            _ => 0,
        }
    }

    /// Stops holding the request without rewriting it (e.g. it ended with trailers).
    pub fn release_request(&mut self) {
        if matches!(
            self.inject.as_deref(),
            Some(Inject::Holding(_) | Inject::Rewritten(_))
        ) {
            self.inject = None;
        }
    }

    /// The rewritten request body, once, when the held request ended and needed the option: the
    /// shell replaces the body (and `content-length`) with it. From then on the response's
    /// additions are removed.
    pub fn take_rewritten_request(&mut self) -> Option<Vec<u8>> {
        let inject = self.inject.as_deref_mut()?;
        match std::mem::replace(inject, Inject::Injected) {
            Inject::Rewritten(body) => Some(body),
            other => {
                *inject = other;
                None
            }
        }
    }

    /// Whether response body bytes are rewritten (the shell must read and may replace each chunk).
    pub fn rewrites_response(&self) -> bool {
        matches!(self.inject.as_deref(), Some(Inject::Stripping(_)))
    }

    /// The bytes to send in place of a response chunk (after [`Exchange::response_body`] read the
    /// original), or `None` to send it as it is.
    pub fn rewrite_response(&mut self, chunk: &[u8], end: bool) -> Option<Vec<u8>> {
        let Some(Inject::Stripping(stripper)) = self.inject.as_deref_mut() else {
            return None;
        };
        let out = stripper.feed(chunk, end);
        if end {
            self.inject = None;
        }
        out
    }

    /// Whether the request body is still wanted (the shell skips the host copy otherwise).
    pub fn wants_request_body(&self) -> bool {
        matches!(self.request, RequestBody::Reading(_))
    }

    /// Whether response body bytes are still wanted.
    pub fn wants_response_body(&self) -> bool {
        matches!(self.response, ResponseBody::Json(_) | ResponseBody::Sse(_))
    }

    /// The API kind of this exchange.
    pub fn api(&self) -> Api {
        self.api
    }

    /// Sets the extra label ids (resolved by the shell from the request headers).
    pub fn set_labels(&mut self, labels: LabelIds) {
        self.labels = labels;
    }

    /// The extra label ids of this exchange.
    pub fn labels(&self) -> LabelIds {
        self.labels
    }

    /// The model label chosen for this exchange.
    pub fn model(&self) -> ModelId {
        self.model
    }

    /// Feeds a request body chunk. `end` marks the last one. When the model label gets decided (the
    /// body ended, or went over the bound) `resolve` maps the raw model name to a label id, and the
    /// function returns `true`: the exchange is now in flight (raise the active-requests gauge).
    pub fn request_body(
        &mut self,
        chunk: &[u8],
        end: bool,
        config: &Config,
        resolve: &mut dyn FnMut(Option<&str>) -> ModelId,
    ) -> bool {
        let RequestBody::Reading(buf) = &mut self.request else {
            return false;
        };
        if let Some(Inject::Holding(held)) = self.inject.as_deref_mut() {
            *held += chunk.len();
            if *held > config.inject_max_request_bytes {
                self.inject = None;
            }
        }
        if buf.len() + chunk.len() > config.max_request_body_bytes {
            self.errors.insert(ErrorKind::RequestTooLarge);
            return self.decided(resolve(None));
        }
        if !end {
            buf.extend_from_slice(chunk);
            return false;
        }
        let whole;
        let body: &[u8] = if buf.is_empty() {
            chunk
        } else {
            buf.extend_from_slice(chunk);
            whole = std::mem::take(buf);
            &whole
        };
        if self.holding_request() {
            self.inject = inject::rewrite_request(body).map(|b| Box::new(Inject::Rewritten(b)));
        }
        let model = match openai::parse_request(body) {
            Ok(info) => {
                self.stream_requested = info.stream;
                resolve(info.model.as_deref())
            }
            Err(_) => {
                self.errors.insert(ErrorKind::RequestParse);
                resolve(None)
            }
        };
        self.decided(model)
    }

    /// The request ended with trailers: whatever body arrived is complete.
    pub fn request_trailers(
        &mut self,
        config: &Config,
        resolve: &mut dyn FnMut(Option<&str>) -> ModelId,
    ) -> bool {
        self.request_body(&[], true, config, resolve)
    }

    /// The model label is decided: the request body is no longer read, and the exchange is in flight.
    fn decided(&mut self, model: ModelId) -> bool {
        if self.holding_request() {
            self.inject = None;
        }
        self.model = model;
        self.request = RequestBody::Done;
        true
    }

    /// The response headers: status, `content-type`, `content-encoding`; `end` when there is no body.
    pub fn response_headers(
        &mut self,
        status: Option<u16>,
        content_type: Option<&str>,
        content_encoding: Option<&str>,
        end: bool,
        config: &Config,
    ) {
        self.status = status;
        // 1xx, 204 and 304 responses have no body (RFC 9110), whatever their content type says:
        // there is nothing to parse, and no stream whose end marker could be missing.
        let bodiless = matches!(status, Some(100..=199 | 204 | 304));
        self.sse = !bodiless && is_event_stream(content_type);
        let failed = status.is_some_and(|s| s >= 400);
        let coding = encoding::body_coding(content_encoding);
        self.inflater = None;
        // What `include_usage` added is removed from a plain (not encoded) event stream.
        if let Some(inject) = self.inject.as_deref_mut() {
            if matches!(inject, Inject::Injected)
                && self.sse
                && !failed
                && coding == BodyCoding::Identity
            {
                *inject = Inject::Stripping(UsageStripper::new(config.max_event_bytes));
            } else {
                self.inject = None;
            }
        }
        self.response = if bodiless {
            ResponseBody::Skip
        } else if coding == BodyCoding::Unreadable {
            self.errors.insert(ErrorKind::EncodedBody);
            self.unread_tail = true;
            ResponseBody::Skip
        } else if failed {
            // The status already says "error"; an error body is never a parse failure.
            ResponseBody::Skip
        } else {
            if let BodyCoding::Readable(coding) = coding {
                // A JSON body is bounded by the buffer it is collected in; a stream by the factor.
                let limit = config.max_response_body_bytes as u64;
                let limit = if self.sse {
                    limit.saturating_mul(DECODED_STREAM_FACTOR)
                } else {
                    limit
                };
                self.inflater = Some(Inflater::new(coding, limit));
            }
            if self.sse {
                ResponseBody::Sse(Box::new(Decoder::new(config.max_event_bytes)))
            } else {
                ResponseBody::Json(Vec::new())
            }
        };
        if end {
            self.response_end();
        }
    }

    /// Feeds a response body chunk. `now` is called at most once, and only when the chunk carries a
    /// token-bearing event, so the shell reads the clock only when it matters. An encoded body is
    /// decoded here, as far as this chunk's bytes allow; `chunk` itself is never changed.
    pub fn response_body(
        &mut self,
        chunk: &[u8],
        end: bool,
        config: &Config,
        now: &mut dyn FnMut() -> u64,
    ) {
        let mut tokens = ChunkTokens {
            answered: self.first_answer_ns.is_some(),
            ..ChunkTokens::default()
        };
        match self.inflater.take() {
            Some(mut inflater) if self.wants_response_body() => {
                let fed = inflater.feed(chunk, &mut |piece| {
                    self.body_bytes(piece, config, &mut tokens);
                    self.wants_response_body()
                });
                match fed {
                    Ok(()) => self.inflater = Some(inflater),
                    // The sink stopped: the body is no longer read (and the reason is counted).
                    Err(Stop::Sink) => {}
                    Err(stop) => {
                        self.errors.insert(if stop == Stop::TooLarge {
                            ErrorKind::ResponseTooLarge
                        } else {
                            ErrorKind::DecodeError
                        });
                        self.response = ResponseBody::Skip;
                        self.unread_tail = true;
                    }
                }
            }
            Some(_) => {}
            None => self.body_bytes(chunk, config, &mut tokens),
        }
        if tokens.events > 0 {
            let t = now();
            if tokens.reasoning_first {
                self.first_reasoning_ns.get_or_insert(t);
            }
            if tokens.answer {
                self.first_answer_ns.get_or_insert(t);
            }
            if self.first_token_ns.is_some() {
                let gap = t.saturating_sub(self.last_token_ns);
                self.max_gap_ns = self.max_gap_ns.max(gap);
            }
            self.first_token_ns.get_or_insert(t);
            self.last_token_ns = t;
            self.token_events += tokens.events;
        }
        if end {
            self.response_end();
        }
    }

    /// Reads (decoded) body bytes: events into `tokens`, or JSON into the buffer.
    fn body_bytes(&mut self, bytes: &[u8], config: &Config, tokens: &mut ChunkTokens) {
        match &mut self.response {
            ResponseBody::Sse(decoder) => {
                let mut state = StreamState {
                    usage: &mut self.usage,
                    end: &mut self.stream_end_seen,
                    error: &mut self.error_seen,
                    errors: &mut self.errors,
                    think: &mut self.think,
                };
                decoder.feed(bytes, &mut |item| state.item(item, tokens));
            }
            ResponseBody::Json(buf) => {
                if buf.len() + bytes.len() > config.max_response_body_bytes {
                    self.errors.insert(ErrorKind::ResponseTooLarge);
                    self.response = ResponseBody::Skip;
                } else {
                    buf.extend_from_slice(bytes);
                }
            }
            ResponseBody::Waiting | ResponseBody::Skip => {}
        }
    }

    /// The response ended (last body chunk, or trailers).
    pub fn response_end(&mut self) {
        self.response_ended = true;
        let response = std::mem::replace(&mut self.response, ResponseBody::Skip);
        // An encoded body cut short is corrupt: a JSON body from it is not parsed.
        if self.inflater.take().is_some_and(|i| !i.complete())
            && matches!(response, ResponseBody::Json(_) | ResponseBody::Sse(_))
        {
            self.errors.insert(ErrorKind::DecodeError);
            self.unread_tail = true;
            return;
        }
        match response {
            ResponseBody::Json(buf) => match openai::parse_response(&buf) {
                Ok(info) => {
                    self.usage = info.usage;
                    self.error_seen |= info.error;
                }
                Err(_) => self.errors.insert(ErrorKind::ResponseParse),
            },
            ResponseBody::Sse(_) | ResponseBody::Skip | ResponseBody::Waiting => {}
        }
    }

    /// Ends the exchange at `now_ns` (from `on_log` or the stream-complete callback).
    /// `response_flags` reads Envoy's response flags (a bit set, see [`RESPONSE_FLAG_DOWNSTREAM_DISCONNECT`]);
    /// it is asked only when the response did not end by itself or ended with an error status, to tell
    /// a client abort from an upstream one and an Envoy timeout from other failures.
    /// A stream whose end marker (`[DONE]`, a `finish_reason`, a final Responses event) already
    /// passed through is `completed` whether or not the HTTP body's end followed.
    pub fn finish(&mut self, now_ns: u64, response_flags: &mut dyn FnMut() -> u64) -> Observation {
        let failed = self.status.is_some_and(|s| s >= 400) || self.error_seen;
        // The stream's own end passed through: the client has the whole answer, even when it (or
        // the upstream) closes before the HTTP body's end.
        let stream_complete = self.sse && self.stream_end_seen;
        // Envoy's flags say who ended a request that did not end by itself, and whether Envoy's own
        // timeout answered an error status (its 504/408): asked only then (one host call).
        let flags = if !failed && (stream_complete || self.response_ended) {
            0
        } else {
            response_flags()
        };
        let outcome = if flags & RESPONSE_FLAGS_TIMEOUT != 0 {
            Outcome::Timeout
        } else if failed {
            Outcome::Error
        } else if stream_complete {
            Outcome::Completed
        } else if self.response_ended {
            // A stream read to its end without its end marker was cut short; one the filter could
            // not read to its end (`unread_tail`) ended as far as the filter can tell.
            if self.sse && !self.unread_tail {
                Outcome::UpstreamAbort
            } else {
                Outcome::Completed
            }
        } else if flags & RESPONSE_FLAGS_CLIENT_GONE != 0 {
            Outcome::ClientAbort
        } else {
            Outcome::UpstreamAbort
        };
        let ttft_ms = match (self.sse, self.first_token_ns) {
            (true, Some(first)) => Some(first.saturating_sub(self.start_ns) / NANOS_PER_MILLI),
            _ => None,
        };
        let output = self
            .usage
            .and_then(|u| u.output)
            .unwrap_or(self.token_events);
        let tpot_us = match (ttft_ms, output) {
            (Some(_), n) if n >= 2 => self
                .first_token_ns
                .map(|first| self.last_token_ns.saturating_sub(first) / NANOS_PER_MICRO / (n - 1)),
            _ => None,
        };
        // A stream the filter read to its end (an error status or an unreadable body is never read).
        let read_stream = self.sse && self.status.is_none_or(|s| s < 400) && !self.unread_tail;
        let max_gap_ms =
            (self.sse && self.token_events >= 2).then_some(self.max_gap_ns / NANOS_PER_MILLI);
        let token_count_mismatch = match self.usage.and_then(|u| u.output) {
            Some(reported) if self.sse && self.token_events >= 1 => {
                reported.abs_diff(self.token_events).saturating_mul(10) > reported
            }
            _ => false,
        };
        let (ttfat_ms, reasoning_ms) = match (self.sse, self.first_answer_ns) {
            (true, Some(answer)) => (
                Some(answer.saturating_sub(self.start_ns) / NANOS_PER_MILLI),
                self.first_reasoning_ns
                    .map(|r| answer.saturating_sub(r) / NANOS_PER_MILLI),
            ),
            _ => (None, None),
        };
        Observation {
            api: self.api,
            model: self.model,
            labels: self.labels,
            streaming: self.stream_requested.unwrap_or(self.sse),
            status: StatusClass::from_status(self.status),
            outcome,
            usage: self.usage,
            token_events: self.token_events,
            ttft_ms,
            duration_ms: now_ns.saturating_sub(self.start_ns) / NANOS_PER_MILLI,
            tpot_us,
            max_gap_ms,
            ttfat_ms,
            reasoning_ms,
            usage_missing: read_stream && self.usage.is_none(),
            token_count_mismatch,
            errors: self.errors,
            was_active: matches!(self.request, RequestBody::Done),
        }
    }
}

/// The parts of an [`Exchange`] that stream events update (split out to borrow beside the decoder).
struct StreamState<'a> {
    usage: &'a mut Option<Usage>,
    end: &'a mut bool,
    error: &'a mut bool,
    errors: &'a mut ErrorSet,
    think: &'a mut ThinkTags,
}

/// What the events of one chunk carried (they share the chunk's clock reading).
#[derive(Default)]
struct ChunkTokens {
    /// Token-bearing events.
    events: u64,
    /// An answer token came before this chunk, or earlier in it.
    answered: bool,
    /// A reasoning token came before any answer token.
    reasoning_first: bool,
    /// An answer token came in this chunk.
    answer: bool,
}

impl StreamState<'_> {
    fn item(&mut self, item: Item<'_>, tokens: &mut ChunkTokens) {
        match item {
            sse::Item::TooLarge => self.errors.insert(ErrorKind::EventTooLarge),
            sse::Item::Event { event, data } => match openai::parse_event(event, data) {
                Ok(info) => {
                    tokens.events += u64::from(info.token);
                    let (mut reasoning, mut answer) = (info.reasoning, info.answer);
                    if let Some(text) = info.content.as_deref() {
                        let class = self.think.feed(text);
                        reasoning |= class.reasoning;
                        answer |= class.answer;
                    }
                    if answer {
                        self.think.answered();
                    }
                    // Within one event, reasoning is taken to come first.
                    tokens.reasoning_first |= reasoning && !tokens.answered;
                    tokens.answer |= answer;
                    tokens.answered |= answer;
                    *self.end |= info.end;
                    *self.error |= info.error;
                    if let Some(u) = info.usage {
                        // Field by field: the last value of each wins.
                        *self.usage = Some(self.usage.map_or(u, |prev| prev.updated(u)));
                    }
                }
                Err(_) => self.errors.insert(ErrorKind::ResponseParse),
            },
        }
    }
}

impl Observation {
    /// The stat changes this observation makes, in a fixed order. Zero counts are left out: Envoy
    /// rejects a zero counter increment, and an absent series reads as zero anyway.
    pub fn for_each_op(&self, f: &mut dyn FnMut(Series, Op)) {
        let (model, api) = (self.model, self.api);
        f(
            Series::Requests {
                model,
                api,
                streaming: self.streaming,
                status: self.status,
                outcome: self.outcome,
            },
            Op::Add(1),
        );
        let mut tokens = |token, source, n: Option<u64>| {
            if let Some(n) = n.filter(|n| *n > 0) {
                f(
                    Series::Tokens {
                        model,
                        api,
                        token,
                        source,
                    },
                    Op::Add(n),
                );
            }
        };
        match self.usage {
            Some(u) => {
                tokens(TokenType::Input, Source::Usage, u.input);
                tokens(TokenType::Output, Source::Usage, u.output);
                tokens(TokenType::Reasoning, Source::Usage, u.reasoning);
                tokens(TokenType::CachedInput, Source::Usage, u.cached_input);
                tokens(
                    TokenType::CacheCreationInput,
                    Source::Usage,
                    u.cache_creation_input,
                );
            }
            None => tokens(
                TokenType::Output,
                Source::Estimated,
                Some(self.token_events),
            ),
        }
        if let Some(ms) = self.ttft_ms {
            f(Series::TimeToFirstToken { model, api }, Op::Record(ms));
        }
        if let Some(us) = self.tpot_us {
            f(Series::TimePerOutputToken { model, api }, Op::Record(us));
        }
        if let Some(ms) = self.ttfat_ms {
            f(
                Series::TimeToFirstAnswerToken { model, api },
                Op::Record(ms),
            );
        }
        if let Some(ms) = self.reasoning_ms {
            f(Series::ReasoningDuration { model, api }, Op::Record(ms));
        }
        if let Some(ms) = self.max_gap_ms {
            f(Series::MaxInterTokenGap { model, api }, Op::Record(ms));
        }
        if self.usage_missing {
            f(Series::UsageMissing { model, api }, Op::Add(1));
        }
        if self.token_count_mismatch {
            f(Series::TokenCountMismatch { model, api }, Op::Add(1));
        }
        f(
            Series::RequestDuration {
                model,
                api,
                streaming: self.streaming,
            },
            Op::Record(self.duration_ms),
        );
        if self.was_active {
            f(Series::ActiveRequests { model, api }, Op::GaugeAdd(-1));
        }
        for kind in self.errors.iter() {
            f(Series::FilterErrors { kind }, Op::Add(1));
        }
    }
}

#[cfg(test)]
#[path = "exchange_tests.rs"]
mod tests;
