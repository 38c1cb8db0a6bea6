//! Tests of the gzip/deflate decoder. The compressed data is made here with miniz_oxide's
//! compressor (flushed after every part, the way a streaming server or Envoy's compressor sends it)
//! and a gzip header and trailer built by hand.

use super::*;
use miniz_oxide::deflate::core::{create_comp_flags_from_zip_params, CompressorOxide};
use miniz_oxide::deflate::stream::deflate;
use proptest::prelude::*;

/// Deflate-compresses `parts` (zlib-wrapped or raw), with a sync flush after each part so that every
/// part can be decoded as soon as its bytes arrive; returns the bytes and each part's end offset.
pub(crate) fn deflate_parts(parts: &[&[u8]], zlib: bool) -> (Vec<u8>, Vec<usize>) {
    let bits = if zlib { 15 } else { -15 };
    let mut c = CompressorOxide::new(create_comp_flags_from_zip_params(6, bits, 0));
    let mut out = Vec::new();
    let mut ends = Vec::new();
    let mut buf = [0u8; 4096];
    for (i, part) in parts.iter().enumerate() {
        let flush = if i + 1 == parts.len() {
            MZFlush::Finish
        } else {
            MZFlush::Sync
        };
        let mut input = *part;
        loop {
            let r = deflate(&mut c, input, &mut buf, flush);
            input = &input[r.bytes_consumed..];
            out.extend_from_slice(&buf[..r.bytes_written]);
            let status = r.status.unwrap();
            if input.is_empty() && r.bytes_written < buf.len() {
                assert!(flush != MZFlush::Finish || status == MZStatus::StreamEnd);
                break;
            }
        }
        ends.push(out.len());
    }
    (out, ends)
}

pub(crate) fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// A gzip member of `parts` (flushed after each), with every optional header part when `full_header`;
/// returns the bytes and each part's end offset (the last one's includes the trailer).
pub(crate) fn gzip_parts(parts: &[&[u8]], full_header: bool) -> (Vec<u8>, Vec<usize>) {
    let mut out = vec![0x1f, 0x8b, 8];
    if full_header {
        out.push(FEXTRA | FNAME | FCOMMENT | FHCRC);
        out.extend_from_slice(&[1, 2, 3, 4, 0, 3]);
        out.extend_from_slice(&[5, 0, b'A', b'B', 3, 0, 9]);
        out.extend_from_slice(b"body.json\0a comment\0");
        let crc = crc32(&out) as u16;
        out.extend_from_slice(&crc.to_le_bytes());
    } else {
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0, 255]);
    }
    let (data, ends) = deflate_parts(parts, false);
    let start = out.len();
    out.extend_from_slice(&data);
    let whole: Vec<u8> = parts.concat();
    out.extend_from_slice(&crc32(&whole).to_le_bytes());
    out.extend_from_slice(&(whole.len() as u32).to_le_bytes());
    let mut ends: Vec<usize> = ends.iter().map(|e| e + start).collect();
    *ends.last_mut().unwrap() = out.len();
    (out, ends)
}

pub(crate) fn gzip(data: &[u8]) -> Vec<u8> {
    gzip_parts(&[data], false).0
}

/// Feeds `chunks` to a fresh inflater; returns the decoded bytes, the first error and completeness.
fn decode(coding: Coding, chunks: &[&[u8]], limit: u64) -> (Vec<u8>, Result<(), Stop>, bool) {
    let mut inf = Inflater::new(coding, limit);
    let mut out = Vec::new();
    let mut result = Ok(());
    for c in chunks {
        result = inf.feed(c, &mut |piece| {
            out.extend_from_slice(piece);
            true
        });
        if result.is_err() {
            break;
        }
    }
    (out, result, inf.complete())
}

fn text(n: usize) -> Vec<u8> {
    (0..n)
        .map(|i| format!("data: {{\"n\":{i},\"t\":\"{}\"}}\n\n", "xy".repeat(i % 7)))
        .collect::<String>()
        .into_bytes()
}

#[test]
fn content_encoding_values() {
    use BodyCoding::*;
    for (v, want) in [
        (None, Identity),
        (Some(""), Identity),
        (Some(" identity "), Identity),
        (Some("gzip"), Readable(Coding::Gzip)),
        (Some("GZip"), Readable(Coding::Gzip)),
        (Some("x-gzip"), Readable(Coding::Gzip)),
        (Some("deflate"), Readable(Coding::Deflate)),
        (Some("gzip, identity"), Readable(Coding::Gzip)),
        (Some("identity,deflate"), Readable(Coding::Deflate)),
        (Some("br"), Unreadable),
        (Some("zstd"), Unreadable),
        (Some("gzip, br"), Unreadable),
        (Some("deflate, gzip"), Unreadable),
        (Some("gzip, gzip"), Unreadable),
    ] {
        assert_eq!(body_coding(v), want, "{v:?}");
    }
}

#[test]
fn gzip_decodes_at_every_split_point_and_byte_by_byte() {
    let plain = text(40);
    for full_header in [false, true] {
        let (gz, _) = gzip_parts(&[&plain], full_header);
        for i in 0..=gz.len() {
            let (a, b) = gz.split_at(i);
            let (out, r, complete) = decode(Coding::Gzip, &[a, b], u64::MAX);
            assert_eq!((r, complete), (Ok(()), true), "split at {i}");
            assert_eq!(out, plain, "split at {i}");
        }
        let bytes: Vec<&[u8]> = gz.chunks(1).collect();
        assert_eq!(decode(Coding::Gzip, &bytes, u64::MAX).0, plain);
    }
}

#[test]
fn deflate_decodes_zlib_wrapped_and_raw_bodies() {
    let plain = text(30);
    for zlib in [true, false] {
        let (z, _) = deflate_parts(&[&plain], zlib);
        // The two bytes that tell zlib from raw may arrive apart.
        for i in [0, 1, 2, 3, z.len() / 2, z.len()] {
            let (a, b) = z.split_at(i);
            let (out, r, complete) = decode(Coding::Deflate, &[a, b], u64::MAX);
            assert_eq!((r, complete), (Ok(()), true), "zlib {zlib} split at {i}");
            assert_eq!(out, plain, "zlib {zlib} split at {i}");
        }
    }
}

#[test]
fn a_real_gzip_file_decodes() {
    // Written by a real gzip implementation (not this crate's compressor), with its own header.
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../tests/fixtures/response_gzip_encoded.json.gz");
    let gz = std::fs::read(path).unwrap();
    let (out, r, complete) = decode(Coding::Gzip, &[&gz], u64::MAX);
    assert_eq!((r, complete), (Ok(()), true));
    assert!(out.starts_with(b"{") && out.ends_with(b"}"), "{out:?}");
}

#[test]
fn every_flushed_part_is_decoded_when_its_bytes_arrive() {
    let events: Vec<Vec<u8>> = (0..12).map(|i| text(i + 1)).collect();
    let parts: Vec<&[u8]> = events.iter().map(Vec::as_slice).collect();
    let (gz, ends) = gzip_parts(&parts, true);
    let mut expected = Vec::new();
    let mut inf = Inflater::new(Coding::Gzip, u64::MAX);
    let mut out = Vec::new();
    let mut start = 0;
    for (part, end) in parts.iter().zip(&ends) {
        expected.extend_from_slice(part);
        inf.feed(&gz[start..*end], &mut |p| {
            out.extend_from_slice(p);
            true
        })
        .unwrap();
        assert_eq!(out, expected, "after the part ending at {end}");
        start = *end;
    }
    assert!(inf.complete());
}

#[test]
fn concatenated_members_and_trailing_bytes() {
    let (a, b) = (gzip(b"first "), gzip(b"second"));
    let both = [a.as_slice(), b.as_slice()].concat();
    let (out, r, complete) = decode(Coding::Gzip, &[&both], u64::MAX);
    assert_eq!(
        (out.as_slice(), r, complete),
        (&b"first second"[..], Ok(()), true)
    );
    // Bytes after the last member that do not start a new one are ignored.
    let padded = [a.as_slice(), &[0, 0, 0]].concat();
    let (out, r, complete) = decode(Coding::Gzip, &[&padded], u64::MAX);
    assert_eq!(
        (out.as_slice(), r, complete),
        (&b"first "[..], Ok(()), true)
    );
}

#[test]
fn corrupt_data_is_an_error() {
    let gz = gzip(&text(20));
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("bad magic", [&[0x1f, 0x8c], &gz[2..]].concat()),
        ("bad method", [&gz[..2], &[7], &gz[3..]].concat()),
        ("reserved flag", [&gz[..3], &[0x20], &gz[4..]].concat()),
        ("not gzip at all", b"{\"usage\":{}}".to_vec()),
    ];
    let mut isize = gz.clone();
    let n = isize.len();
    isize[n - 4] ^= 1;
    cases.push(("wrong ISIZE", isize));
    // A deflate block type 3 does not exist.
    cases.push(("bad block type", [&gz[..10], &[0xff, 0xff, 0xff]].concat()));
    for (what, bytes) in &cases {
        let (_, r, _) = decode(Coding::Gzip, &[bytes], u64::MAX);
        assert_eq!(r, Err(Stop::Corrupt), "{what}");
    }
    let (mut z, _) = deflate_parts(&[&text(20)], true);
    let n = z.len();
    z[n - 1] ^= 1;
    assert_eq!(
        decode(Coding::Deflate, &[&z], u64::MAX).1,
        Err(Stop::Corrupt),
        "adler32"
    );
    // After an error nothing more is decoded.
    let mut inf = Inflater::new(Coding::Gzip, u64::MAX);
    assert!(inf.feed(b"\x1f\x8b\x09", &mut |_| true).is_err());
    let mut called = false;
    inf.feed(&gz, &mut |_| {
        called = true;
        true
    })
    .unwrap();
    assert!(!called && !inf.complete());
}

#[test]
fn a_truncated_body_is_incomplete_and_an_empty_one_is_not() {
    let gz = gzip(&text(20));
    for cut in [1, 5, 10, gz.len() / 2, gz.len() - 8, gz.len() - 1] {
        let (_, r, complete) = decode(Coding::Gzip, &[&gz[..cut]], u64::MAX);
        assert_eq!((r, complete), (Ok(()), false), "cut at {cut}");
    }
    assert!(decode(Coding::Gzip, &[], u64::MAX).2);
    assert!(decode(Coding::Deflate, &[b""], u64::MAX).2);
}

#[test]
fn a_decompression_bomb_stops_at_the_limit() {
    let zeros = vec![0u8; 32 << 20];
    let gz = gzip(&zeros);
    assert!(gz.len() < 64 << 10, "{}", gz.len());
    let limit = 1 << 20;
    let mut inf = Inflater::new(Coding::Gzip, limit);
    let mut handed = 0u64;
    let r = inf.feed(&gz, &mut |p| {
        handed += p.len() as u64;
        true
    });
    assert_eq!(r, Err(Stop::TooLarge));
    assert!(handed <= limit, "{handed}");
    assert!(inf.total_out() <= limit + OUT_CHUNK as u64);
}

#[test]
fn the_sink_can_stop_decoding() {
    let gz = gzip(&text(2000));
    let mut pieces = 0;
    let r = Inflater::new(Coding::Gzip, u64::MAX).feed(&gz, &mut |_| {
        pieces += 1;
        false
    });
    assert_eq!((r, pieces), (Err(Stop::Sink), 1));
}

/// Found by the `decompression` fuzz target: a zlib body whose data is not finished when the input
/// ends gave one byte less when cut in two, because decoding stopped after a call that wrote a
/// partly filled buffer, with output still pending in the window.
#[test]
fn everything_decodable_is_handed_out_whatever_the_cut() {
    let input = include_bytes!("../fuzz/seeds/decompression/split_one_byte_behind");
    let body = &input[1..];
    let (whole, r, _) = decode(Coding::Deflate, &[body], 1 << 16);
    assert_eq!(r, Ok(()));
    assert_eq!(whole.len(), 32_769);
    for cut in [1, 100, 336, 700, 1_000, body.len() - 1] {
        let (split, r, _) = decode(Coding::Deflate, &[&body[..cut], &body[cut..]], 1 << 16);
        assert_eq!((split == whole, r), (true, Ok(())), "cut at {cut}");
    }
}

#[test]
fn an_inflater_is_the_documented_size() {
    // Module docs and README: about 43 KiB per encoded response, nothing that grows.
    let size = std::mem::size_of::<Inflater>();
    eprintln!("Inflater: {size} bytes");
    assert_eq!(size, Inflater::SIZE);
    assert!(
        (32 << 10..=44 << 10).contains(&size),
        "Inflater is {size} bytes"
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 128, .. ProptestConfig::default() })]

    #[test]
    fn random_cuts_and_random_data_decode_the_same(
        data in proptest::collection::vec(any::<u8>(), 0..3000),
        cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..10),
        zlib in any::<bool>(),
    ) {
        let (bytes, coding) = if zlib {
            (deflate_parts(&[&data], true).0, Coding::Deflate)
        } else {
            (gzip_parts(&[&data], true).0, Coding::Gzip)
        };
        let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut chunks = Vec::new();
        let mut start = 0;
        for p in points {
            chunks.push(&bytes[start..p]);
            start = p;
        }
        chunks.push(&bytes[start..]);
        let (out, r, complete) = decode(coding, &chunks, u64::MAX);
        prop_assert_eq!((r, complete), (Ok(()), true));
        prop_assert_eq!(out, data);
    }

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..512), gz in any::<bool>()) {
        let coding = if gz { Coding::Gzip } else { Coding::Deflate };
        let _ = decode(coding, &[&data[..data.len() / 2], &data[data.len() / 2..]], 1 << 16);
    }
}
