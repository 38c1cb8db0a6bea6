//! `inject_stream_usage` on arbitrary bytes: the request rewrite never panics and, when it edits,
//! yields JSON asking for usage; the stream stripper never panics, gives the same bytes however the
//! stream is cut, and only ever removes bytes (its output is a subsequence of its input).
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::inject::{rewrite_request, UsageStripper};
use serde::Deserialize;

#[derive(Deserialize)]
struct Probe {
    stream_options: Options,
}

#[derive(Deserialize)]
struct Options {
    include_usage: bool,
}

fn strip(pieces: &[&[u8]]) -> Vec<u8> {
    // A bound beyond any input: the stripper never gives up, so every cut must give the same bytes.
    let mut s = UsageStripper::new(1 << 20);
    let mut out = Vec::new();
    for (i, piece) in pieces.iter().enumerate() {
        let end = i + 1 == pieces.len();
        match s.feed(piece, end) {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => out.extend_from_slice(piece),
        }
    }
    out
}

fn is_subsequence(small: &[u8], big: &[u8]) -> bool {
    let mut it = big.iter();
    small.iter().all(|b| it.any(|c| c == b))
}

fuzz_target!(|input: &[u8]| {
    if let Some(body) = rewrite_request(input) {
        // Read leniently (numbers beyond f64 are valid JSON): the rewrite asks for usage.
        let probe: Probe = serde_json::from_slice(&body).expect("a rewrite is JSON");
        assert!(probe.stream_options.include_usage);
    }
    let Some((&cut, stream)) = input.split_first() else { return };
    let whole = strip(&[stream]);
    let at = stream.len() * usize::from(cut) / 256;
    let (a, b) = stream.split_at(at);
    assert_eq!(strip(&[a, b]), whole);
    assert!(is_subsequence(&whole, stream));
});
