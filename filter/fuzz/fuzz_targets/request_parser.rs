//! Request bodies never panic the parser; whatever it reads back is a valid label after sanitising.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::labels::{sanitize_model, MAX_MODEL_LABEL_BYTES};
use llm_metrics_filter::openai::parse_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(info) = parse_request(data) {
        if let Some(model) = info.model {
            let label = sanitize_model(&model);
            assert!(label.len() <= MAX_MODEL_LABEL_BYTES);
            assert!(!label.contains(";.;") && !label.contains("=.="));
        }
    }
});
