use super::*;

fn rewritten(body: &str) -> Option<String> {
    rewrite_request(body.as_bytes()).map(|b| String::from_utf8(b).unwrap_or_default())
}

#[test]
fn adds_the_option_to_a_streaming_request_that_lacks_it() {
    assert_eq!(
        rewritten(r#"{"model":"m","stream":true,"messages":[]}"#).as_deref(),
        Some(
            r#"{"model":"m","stream":true,"messages":[],"stream_options":{"include_usage":true}}"#
        )
    );
    // Whitespace and a trailing newline stay where they were.
    assert_eq!(
        rewritten("{ \"stream\": true }\n").as_deref(),
        Some("{ \"stream\": true ,\"stream_options\":{\"include_usage\":true}}\n")
    );
}

#[test]
fn completes_stream_options_that_lack_include_usage() {
    assert_eq!(
        rewritten(r#"{"stream":true,"stream_options":{}}"#).as_deref(),
        Some(r#"{"stream":true,"stream_options":{"include_usage":true}}"#)
    );
    assert_eq!(
        rewritten(r#"{"stream":true,"stream_options":{"include_obfuscation":false}}"#).as_deref(),
        Some(
            r#"{"stream":true,"stream_options":{"include_usage":true,"include_obfuscation":false}}"#
        )
    );
}

#[test]
fn leaves_requests_it_must_not_or_cannot_edit() {
    for body in [
        // The client decided, either way.
        r#"{"stream":true,"stream_options":{"include_usage":true}}"#,
        r#"{"stream":true,"stream_options":{"include_usage":false}}"#,
        // Not streaming: servers reject stream_options there.
        r#"{"model":"m"}"#,
        r#"{"model":"m","stream":false}"#,
        // Shapes not safe to edit.
        r#"{"stream":true,"stream_options":null}"#,
        r#"{"stream":true,"stream":true}"#,
        r#"[{"stream":true}]"#,
        r#"{"stream":"yes"}"#,
        "not json",
        r#"{"stream":true"#,
    ] {
        assert_eq!(rewritten(body), None, "{body}");
    }
}

#[test]
fn a_body_that_is_not_utf8_is_never_edited() {
    // Found by the `inject` fuzz target: an invalid byte inside a string the probe skips.
    assert_eq!(
        rewrite_request(b"{\"model\":\"m\xc5\",\"stream\":true,\"stream_options\":{}}"),
        None
    );
}

#[test]
fn a_rewritten_request_parses_with_the_option_and_every_other_member() {
    let body = r#"{"model":"qwen","stream":true,"temperature":0.5,"messages":[{"role":"user","content":"}"}]}"#;
    let out = rewrite_request(body.as_bytes()).unwrap_or_default();
    let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
    assert_eq!(v["stream_options"]["include_usage"], true);
    assert_eq!(v["messages"][0]["content"], "}");
    assert_eq!(v["temperature"], 0.5);
}

const CHUNK: &str =
    r#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}],"usage":null}"#;
const CHUNK_NO_USAGE: &str = r#"data: {"id":"c","choices":[{"index":0,"delta":{"content":"Hi"}}]}"#;
const USAGE: &str =
    r#"data: {"id":"c","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1}}"#;

fn strip_all(stream: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut s = UsageStripper::new(1 << 16);
    let mut out = Vec::new();
    let mut last = 0;
    for &cut in cuts.iter().chain([stream.len()].iter()) {
        let piece = &stream[last..cut];
        let end = cut == stream.len();
        match s.feed(piece, end) {
            Some(bytes) => out.extend_from_slice(&bytes),
            None => out.extend_from_slice(piece),
        }
        last = cut;
    }
    out
}

#[test]
fn removes_the_usage_chunk_and_the_null_members() {
    let with = format!("{CHUNK}\n\n{CHUNK}\n\n{USAGE}\n\ndata: [DONE]\n\n");
    let without = format!("{CHUNK_NO_USAGE}\n\n{CHUNK_NO_USAGE}\n\ndata: [DONE]\n\n");
    assert_eq!(
        String::from_utf8(strip_all(with.as_bytes(), &[])).unwrap_or_default(),
        without
    );
}

#[test]
fn every_split_gives_the_same_bytes() {
    let with = format!("{CHUNK}\r\n\r\n{USAGE}\r\n\r\ndata: [DONE]\r\n\r\n");
    let without = format!("{CHUNK_NO_USAGE}\r\n\r\ndata: [DONE]\r\n\r\n");
    for cut in 0..=with.len() {
        assert_eq!(
            strip_all(with.as_bytes(), &[cut]),
            without.as_bytes(),
            "cut at {cut}"
        );
    }
}

#[test]
fn a_chunk_of_complete_events_without_edits_passes_as_it_is() {
    let mut s = UsageStripper::new(1 << 16);
    assert_eq!(
        s.feed(format!("{CHUNK_NO_USAGE}\n\n").as_bytes(), false),
        None
    );
    assert_eq!(s.feed(b"data: [DONE]\n\n", true), None);
}

#[test]
fn an_incomplete_event_waits_only_for_its_own_end() {
    let mut s = UsageStripper::new(1 << 16);
    let first = format!("{CHUNK_NO_USAGE}\n\ndata: {{\"id\"");
    let out = s.feed(first.as_bytes(), false).unwrap_or_default();
    assert_eq!(out, format!("{CHUNK_NO_USAGE}\n\n").as_bytes());
    assert_eq!(s.held(), "data: {\"id\"".len());
    let out = s.feed(b":1}\n\n", false).unwrap_or_default();
    assert_eq!(out, b"data: {\"id\":1}\n\n");
    assert_eq!(s.held(), 0);
}

#[test]
fn the_body_end_flushes_what_is_held() {
    let mut s = UsageStripper::new(1 << 16);
    assert_eq!(s.feed(b"data: {\"a\"", false), Some(Vec::new()));
    assert_eq!(s.feed(b":1}", true), Some(b"data: {\"a\":1}".to_vec()));
}

#[test]
fn an_event_over_the_bound_turns_the_stripper_off() {
    let mut s = UsageStripper::new(8);
    assert_eq!(s.feed(b"data: 0123456789", false), None);
    assert_eq!(s.held(), 0);
    // Off: even a usage chunk now passes.
    let usage = format!("{USAGE}\n\n");
    assert_eq!(s.feed(usage.as_bytes(), false), None);
}

#[test]
fn other_event_shapes_pass_untouched() {
    for event in [
        // Multi-line data, comments, named events, non-JSON data, usage in a choice chunk.
        "data: {\"choices\":[],\ndata: \"usage\":{}}\n\n".to_owned(),
        format!(": keep-alive\n{USAGE}\n\n"),
        format!("event: usage\n{USAGE}\n\n"),
        "data: [DONE]\n\n".to_owned(),
        r#"data: {"choices":[{"delta":{}}],"usage":{"completion_tokens":1}}"#.to_owned() + "\n\n",
        r#"data: {"choices":[],"usage":null}"#.to_owned() + "x\n\n",
        // An escaped key is left alone rather than guessed at.
        r#"data: {"choices":[{}],"us\u0061ge":null}"#.to_owned() + "\n\n",
    ] {
        assert_eq!(
            strip_all(event.as_bytes(), &[]),
            event.as_bytes(),
            "{event}"
        );
    }
}

#[test]
fn a_null_usage_member_is_cut_wherever_it_sits() {
    for (with, without) in [
        (r#"{"usage":null,"choices":[{}]}"#, r#"{"choices":[{}]}"#),
        (
            r#"{"choices":[{}], "usage" : null }"#,
            r#"{"choices":[{}] }"#,
        ),
        (r#"{"usage":null}"#, r#"{}"#),
        (r#"{ "usage": null, "id": 1 }"#, r#"{ "id": 1 }"#),
    ] {
        let event = format!("data: {with}\n\n");
        assert_eq!(
            String::from_utf8(strip_all(event.as_bytes(), &[])).unwrap_or_default(),
            format!("data: {without}\n\n"),
            "{with}"
        );
    }
}
