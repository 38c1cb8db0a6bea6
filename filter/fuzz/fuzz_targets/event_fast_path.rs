//! The fast reader of chat chunks agrees with the serde views on every input: `parse_event` (fast
//! reader first) and `parse_event_views` (views only) give the same event, or both an error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::openai::{parse_event, parse_event_views};

fuzz_target!(|input: &[u8]| {
    let (name, data): (&[u8], &[u8]) = match input.split_first() {
        Some((0, rest)) => (b"error", rest),
        _ => (b"", input),
    };
    match (parse_event(name, data), parse_event_views(name, data)) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{:?}", String::from_utf8_lossy(data)),
        (Err(_), Err(_)) => {}
        (a, b) => panic!(
            "{:?}: parse_event {a:?}, the views {b:?}",
            String::from_utf8_lossy(data)
        ),
    }
});
