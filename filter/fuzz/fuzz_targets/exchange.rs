//! A whole exchange fed arbitrary bytes (request body, response headers, body split in two) never
//! panics and never produces a zero counter increment.
#![no_main]

use libfuzzer_sys::fuzz_target;
use llm_metrics_filter::config::Config;
use llm_metrics_filter::exchange::Exchange;
use llm_metrics_filter::metrics::{Api, Op};
use llm_metrics_filter::labels::ModelId;

fuzz_target!(|input: &[u8]| {
    let Some((&flags, rest)) = input.split_first() else { return };
    let config = Config { max_event_bytes: 128, max_response_body_bytes: 1024, ..Config::default() };
    let cut = rest.len() * usize::from(flags >> 4) / 16;
    let (req, resp) = rest.split_at(rest.len() / 3);
    let mut ex = Exchange::new(Api::ChatCompletions, 10);
    ex.request_body(req, true, &config, &mut |_| ModelId::UNKNOWN);
    let ct = if flags & 1 == 1 { "text/event-stream" } else { "application/json" };
    ex.response_headers(Some(200 + u16::from(flags & 6) * 100), Some(ct), None, false, &config);
    let (a, b) = resp.split_at(cut.min(resp.len()));
    ex.response_body(a, false, &config, &mut || 20);
    ex.response_body(b, flags & 8 == 8, &config, &mut || 30);
    let obs = ex.finish(40, &mut || u64::from(flags) << 10);
    obs.for_each_op(&mut |_, op| assert_ne!(op, Op::Add(0)));
});
