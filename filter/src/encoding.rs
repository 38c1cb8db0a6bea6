//! Compressed response bodies: `content-encoding: gzip` (RFC 1952) and `deflate` (RFC 1950, with the
//! raw-deflate bodies some servers send instead), decoded chunk by chunk into a private copy that only
//! the parser sees. The traffic itself is never touched: the host shells pass the original bytes on.
//!
//! Decoding is incremental: every chunk is inflated as far as its bytes allow before the call returns,
//! so an SSE event is parsed in the same body callback whose compressed bytes complete it. A gzip
//! header (magic, method, flags with `FEXTRA`/`FNAME`/`FCOMMENT`/`FHCRC`) may be split anywhere;
//! concatenated gzip members are read one after another; bytes after the last member that do not start
//! a new one are ignored (as `gzip -d` does). The gzip trailer's ISIZE is checked; its CRC-32 is not
//! (the inflater's own checks catch broken deflate data, and the parser validates what comes out).
//! A zlib body's Adler-32 is checked by the inflater.
//!
//! Memory: one [`Inflater`] per encoded response, allocated at the response headers only when the
//! response is encoded, and freed when the body ends: miniz_oxide's `InflateState` (its 32 KiB window
//! plus the Huffman tables; [`Inflater::SIZE`] bytes in all, about 43 KiB). Decoded bytes are produced
//! into a 16 KiB buffer on the stack per call, handed to the sink, and not kept.

use miniz_oxide::inflate::stream::{inflate, InflateState};
use miniz_oxide::{DataFormat, MZError, MZFlush, MZStatus};

/// A body coding the filter can decode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Coding {
    Gzip,
    Deflate,
}

/// What a `content-encoding` header value asks of the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BodyCoding {
    /// No coding (absent, empty or only `identity`).
    Identity,
    /// One coding the filter decodes (`identity` entries around it are ignored).
    Readable(Coding),
    /// Anything else: an unknown coding (`br`, `zstd`, ...) or two codings layered.
    Unreadable,
}

/// Reads a `content-encoding` value: a comma-separated list of codings, applied in order.
pub fn body_coding(header: Option<&str>) -> BodyCoding {
    let mut found = None;
    for token in header.unwrap_or_default().split(',') {
        let token = token.trim();
        let coding = if token.is_empty() || token.eq_ignore_ascii_case("identity") {
            continue;
        } else if token.eq_ignore_ascii_case("gzip") || token.eq_ignore_ascii_case("x-gzip") {
            Coding::Gzip
        } else if token.eq_ignore_ascii_case("deflate") {
            Coding::Deflate
        } else {
            return BodyCoding::Unreadable;
        };
        if found.replace(coding).is_some() {
            return BodyCoding::Unreadable;
        }
    }
    found.map_or(BodyCoding::Identity, BodyCoding::Readable)
}

/// Why decoding stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stop {
    /// The compressed data is corrupt (bad header, bad deflate data, bad checksum or length).
    Corrupt,
    /// The decoded bytes went over the limit given to [`Inflater::new`].
    TooLarge,
    /// The sink asked to stop.
    Sink,
}

const FHCRC: u8 = 0x02;
const FEXTRA: u8 = 0x04;
const FNAME: u8 = 0x08;
const FCOMMENT: u8 = 0x10;
/// Flag bits RFC 1952 reserves: a decoder must reject them.
const FRESERVED: u8 = 0xE0;

/// Where the gzip header reader is; `rest` holds the optional parts still to come.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Header {
    /// The fixed ten bytes (ID1 ID2 CM FLG MTIME×4 XFL OS), `n` of them read.
    Fixed {
        n: u8,
        flags: u8,
    },
    /// `FEXTRA`'s two-byte length, the low byte once read.
    ExtraLen {
        rest: u8,
        low: Option<u8>,
    },
    Extra {
        rest: u8,
        left: u16,
    },
    Name {
        rest: u8,
    },
    Comment {
        rest: u8,
    },
    /// `FHCRC`: two bytes, `left` to go.
    Crc {
        left: u8,
    },
}

impl Header {
    const START: Header = Header::Fixed { n: 0, flags: 0 };

    /// The next optional part, or `None` when the header is complete.
    fn next_part(rest: u8) -> Option<Header> {
        if rest & FEXTRA != 0 {
            Some(Header::ExtraLen { rest, low: None })
        } else if rest & FNAME != 0 {
            Some(Header::Name { rest })
        } else if rest & FCOMMENT != 0 {
            Some(Header::Comment { rest })
        } else if rest & FHCRC != 0 {
            Some(Header::Crc { left: 2 })
        } else {
            None
        }
    }

    /// Reads one header byte: the next state, `Ok(None)` when the header ended with this byte.
    fn step(self, b: u8) -> Result<Option<Header>, Stop> {
        Ok(match self {
            Header::Fixed { n, mut flags } => {
                match (n, b) {
                    (0, 0x1f) | (1, 0x8b) | (2, 8) | (4.., _) => {}
                    (3, _) if b & FRESERVED == 0 => flags = b,
                    _ => return Err(Stop::Corrupt),
                }
                if n == 9 {
                    Header::next_part(flags & (FEXTRA | FNAME | FCOMMENT | FHCRC))
                } else {
                    Some(Header::Fixed { n: n + 1, flags })
                }
            }
            Header::ExtraLen { rest, low: None } => Some(Header::ExtraLen { rest, low: Some(b) }),
            Header::ExtraLen {
                rest,
                low: Some(low),
            } => match u16::from_le_bytes([low, b]) {
                0 => Header::next_part(rest & !FEXTRA),
                left => Some(Header::Extra { rest, left }),
            },
            Header::Extra { rest, left } => match left - 1 {
                0 => Header::next_part(rest & !FEXTRA),
                left => Some(Header::Extra { rest, left }),
            },
            Header::Name { rest } if b == 0 => Header::next_part(rest & !FNAME),
            Header::Comment { rest } if b == 0 => Header::next_part(rest & !FCOMMENT),
            h @ (Header::Name { .. } | Header::Comment { .. }) => Some(h),
            Header::Crc { left } => match left - 1 {
                0 => None,
                left => Some(Header::Crc { left }),
            },
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// `deflate`: the first byte, once seen (two tell a zlib header from raw deflate).
    Sniff(Option<u8>),
    /// A gzip member's header.
    Header(Header),
    /// Compressed data.
    Data,
    /// A gzip member's trailer (CRC-32, ISIZE, little-endian): `n` bytes read.
    Trailer { n: u8, isize: u32 },
    /// A gzip member ended; another may follow.
    BetweenMembers,
    /// The compressed stream ended; later bytes are ignored.
    Done,
    /// Decoding stopped; nothing more is read.
    Stopped,
}

/// Bytes of decoded output per inflate call (a stack buffer, not kept per stream).
const OUT_CHUNK: usize = 16 * 1024;

/// Incremental decoder of one encoded body.
pub struct Inflater {
    state: InflateState,
    coding: Coding,
    stage: Stage,
    /// Decoded bytes of the current gzip member, modulo 2^32 (its trailer's ISIZE).
    member_out: u32,
    /// Decoded bytes so far.
    total_out: u64,
    /// Most decoded bytes handed out.
    limit: u64,
}

impl std::fmt::Debug for Inflater {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflater")
            .field("coding", &self.coding)
            .field("stage", &self.stage)
            .field("total_out", &self.total_out)
            .finish_non_exhaustive()
    }
}

impl Inflater {
    /// Bytes one inflater holds (it is the whole per-stream cost of decoding).
    pub const SIZE: usize = std::mem::size_of::<Inflater>();

    /// A decoder for a body in `coding` that hands out at most `limit` decoded bytes.
    pub fn new(coding: Coding, limit: u64) -> Box<Inflater> {
        let (stage, format) = match coding {
            Coding::Gzip => (Stage::Header(Header::START), DataFormat::Raw),
            Coding::Deflate => (Stage::Sniff(None), DataFormat::Zlib),
        };
        Box::new(Inflater {
            state: InflateState::new(format),
            coding,
            stage,
            member_out: 0,
            total_out: 0,
            limit,
        })
    }

    /// Decoded bytes handed out so far.
    pub fn total_out(&self) -> u64 {
        self.total_out
    }

    /// Whether the body seen so far is a complete encoded body (or no body at all): at the body's
    /// end, `false` means it was cut short.
    pub fn complete(&self) -> bool {
        // `Sniff(None)` and `Header::START` last only until the first byte.
        matches!(
            self.stage,
            Stage::Done | Stage::BetweenMembers | Stage::Sniff(None) | Stage::Header(Header::START)
        )
    }

    /// Decodes one chunk, handing every decoded piece to `sink` (which returns `false` to stop).
    /// On `Err` nothing more is decoded.
    pub fn feed(&mut self, chunk: &[u8], sink: &mut dyn FnMut(&[u8]) -> bool) -> Result<(), Stop> {
        let result = self.feed_inner(chunk, sink);
        if result.is_err() {
            self.stage = Stage::Stopped;
        }
        result
    }

    fn feed_inner(
        &mut self,
        mut input: &[u8],
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<(), Stop> {
        while let Some((&b, rest)) = input.split_first() {
            match self.stage {
                Stage::Sniff(None) => {
                    self.stage = Stage::Sniff(Some(b));
                    input = rest;
                }
                Stage::Sniff(Some(first)) => {
                    if !is_zlib_header(first, b) {
                        self.state.reset(DataFormat::Raw);
                    }
                    self.stage = Stage::Data;
                    self.inflate(&[first], sink)?;
                }
                Stage::Header(h) => {
                    self.stage = match h.step(b)? {
                        Some(h) => Stage::Header(h),
                        None => Stage::Data,
                    };
                    input = rest;
                }
                Stage::Data => input = self.inflate(input, sink)?,
                Stage::Trailer { n, isize } => {
                    let isize = if n >= 4 {
                        isize | u32::from(b) << (8 * (n - 4))
                    } else {
                        isize
                    };
                    self.stage = if n < 7 {
                        Stage::Trailer { n: n + 1, isize }
                    } else if isize == self.member_out {
                        Stage::BetweenMembers
                    } else {
                        return Err(Stop::Corrupt);
                    };
                    input = rest;
                }
                Stage::BetweenMembers if b == 0x1f => {
                    self.state.reset(DataFormat::Raw);
                    self.member_out = 0;
                    self.stage = Stage::Header(Header::START);
                }
                Stage::BetweenMembers | Stage::Done => {
                    self.stage = Stage::Done;
                    return Ok(());
                }
                Stage::Stopped => return Ok(()),
            }
        }
        Ok(())
    }

    /// Inflates from `input` until it is consumed or the deflate stream ends; returns what is left.
    fn inflate<'a>(
        &mut self,
        mut input: &'a [u8],
        sink: &mut dyn FnMut(&[u8]) -> bool,
    ) -> Result<&'a [u8], Stop> {
        let mut out = [0u8; OUT_CHUNK];
        loop {
            let r = inflate(&mut self.state, input, &mut out, MZFlush::None);
            input = input.get(r.bytes_consumed..).unwrap_or_default();
            if r.bytes_written > 0 {
                let piece = out.get(..r.bytes_written).unwrap_or_default();
                self.total_out += piece.len() as u64;
                if self.total_out > self.limit {
                    return Err(Stop::TooLarge);
                }
                // Wrapping on purpose: ISIZE is the length modulo 2^32.
                self.member_out = self.member_out.wrapping_add(piece.len() as u32);
                if !sink(piece) {
                    return Err(Stop::Sink);
                }
            }
            match r.status {
                Ok(MZStatus::StreamEnd) => {
                    self.stage = match self.coding {
                        Coding::Gzip => Stage::Trailer { n: 0, isize: 0 },
                        Coding::Deflate => Stage::Done,
                    };
                    return Ok(input);
                }
                // More output may be waiting in the window: call again until a call with no
                // input left writes nothing.
                Ok(_) if r.bytes_written > 0 => {}
                Ok(_) if input.is_empty() => return Ok(input),
                Ok(_) if r.bytes_consumed == 0 && r.bytes_written == 0 => {
                    return Err(Stop::Corrupt)
                }
                Ok(_) => {}
                // No progress without more input: wait for the next chunk.
                Err(MZError::Buf) if input.is_empty() => return Ok(input),
                Err(_) => return Err(Stop::Corrupt),
            }
        }
    }
}

/// RFC 1950: CM 8, a window of at most 32 KiB, the check bits, and no preset dictionary.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8
        && cmf >> 4 <= 7
        && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
        && flg & 0x20 == 0
}

#[cfg(test)]
#[path = "encoding_tests.rs"]
pub(crate) mod tests;
