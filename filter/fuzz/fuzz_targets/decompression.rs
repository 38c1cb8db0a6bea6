//! Arbitrary bytes as a gzip or deflate body, fed in two pieces: the inflater never panics, never
//! hands out more than its limit, and gives the same bytes however the input is split.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::encoding::{Coding, Inflater};

const LIMIT: u64 = 1 << 16;

fn inflate(coding: Coding, pieces: &[&[u8]]) -> (Vec<u8>, bool) {
    let mut inflater = Inflater::new(coding, LIMIT);
    let mut out = Vec::new();
    let mut ok = true;
    for piece in pieces {
        if inflater.feed(piece, &mut |b| { out.extend_from_slice(b); true }).is_err() {
            ok = false;
            break;
        }
    }
    assert!(out.len() as u64 <= LIMIT, "inflated {} bytes past the limit", out.len());
    (out, ok)
}

fuzz_target!(|input: &[u8]| {
    let Some((&flags, body)) = input.split_first() else { return };
    let coding = if flags & 1 == 0 { Coding::Gzip } else { Coding::Deflate };
    let cut = body.len() * usize::from(flags >> 1) / 128;
    let (a, b) = body.split_at(cut.min(body.len()));
    let (whole, whole_ok) = inflate(coding, &[body]);
    let (split, split_ok) = inflate(coding, &[a, b]);
    if whole_ok && split_ok {
        assert_eq!(whole, split);
    }
});
