//! The SSE decoder never panics, stays within its memory bound, and hands out the same events however
//! the input is split (the first byte picks the split points).
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::sse::{Decoder, Item};

const MAX: usize = 256;

fn decode(chunks: &[&[u8]]) -> Vec<Option<(Vec<u8>, Vec<u8>)>> {
    let mut d = Decoder::new(MAX);
    let mut out = Vec::new();
    for c in chunks {
        d.feed(c, &mut |item| {
            out.push(match item {
                Item::Event { event, data } => {
                    assert!(data.len() <= MAX);
                    Some((event.to_vec(), data.to_vec()))
                }
                Item::TooLarge => None,
            })
        });
        assert!(d.held_bytes() <= 4 * MAX, "held {}", d.held_bytes());
    }
    out
}

fuzz_target!(|input: &[u8]| {
    let Some((&seed, data)) = input.split_first() else { return };
    let whole = decode(&[data]);
    let step = usize::from(seed % 16) + 1;
    let pieces: Vec<&[u8]> = data.chunks(step).collect();
    assert_eq!(decode(&pieces), whole);
});
