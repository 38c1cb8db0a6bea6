//! Response bodies and stream events (OpenAI chat/completions, Responses, Anthropic Messages, with
//! the event names the filter tells apart) never panic, whatever the bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::openai::{parse_event, parse_response};

const EVENT_NAMES: [&[u8]; 6] = [
    b"",
    b"message_start",
    b"content_block_delta",
    b"message_delta",
    b"response.output_text.delta",
    b"error",
];

fuzz_target!(|input: &[u8]| {
    let Some((&pick, data)) = input.split_first() else { return };
    let _ = parse_response(data);
    let name = EVENT_NAMES[usize::from(pick) % EVENT_NAMES.len()];
    let _ = parse_event(name, data);
});
