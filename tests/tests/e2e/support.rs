//! What the end-to-end tests run on: real processes (Envoy with the shipped `.wasm`, the engine,
//! Prometheus) on loopback ports picked by the kernel, each killed when its handle drops; a scripted
//! upstream that answers with exact bytes, chunking, delays and resets; a small HTTP client that can
//! drop its connection mid-stream; and a reader for the Prometheus text format.
//!
//! Why not the in-process wasmtime host: these tests check what only real Envoy decides — the stats
//! tag extraction and histogram buckets of `envoy/envoy.yaml`, how response bodies are cut into
//! callbacks, which `response.flags` an abort gets, and two worker VMs sharing one set of stats.

#![allow(dead_code)] // each test uses a different part

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::future::Future;
use std::io::{BufRead as _, BufReader};
use std::net::TcpListener as StdListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, ensure, Context as _, Result};
use bytes::Bytes;
use http_body_util::channel::Channel;
use http_body_util::{BodyExt as _, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The header that names the script the scripted upstream answers a request with.
pub const SCRIPT_HEADER: &str = "x-e2e-script";
/// A script header (not sent) that makes the upstream wait this many milliseconds before answering.
pub const HEADERS_AFTER_MS: &str = "x-e2e-headers-after-ms";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("the tests crate sits in the repository")
        .to_path_buf()
}

/// A path that must exist, or an error saying which command makes it.
fn required(rel: &str, how: &str) -> Result<PathBuf> {
    let path = repo_root().join(rel);
    if path.exists() {
        Ok(path)
    } else {
        bail!("{rel} is missing: run `{how}` from the repository root first")
    }
}

pub fn envoy_bin() -> Result<PathBuf> {
    required(".venv/bin/envoy", "bash envoy/setup.sh")
}

pub fn wasm_file() -> Result<PathBuf> {
    required(
        "target/wasm32-wasip1/release/llm_metrics_filter.wasm",
        "cargo build --release --target wasm32-wasip1 -p llm-metrics-filter",
    )
}

/// The directory holding the native build, `libllm_metrics_filter.so` (Envoy's module search path).
pub fn module_dir() -> Result<PathBuf> {
    required(
        "target/release/libllm_metrics_filter.so",
        "cargo build --release -p llm-metrics-filter --features dynamic-module",
    )?;
    Ok(repo_root().join("target/release"))
}

/// Which build of the filter an Envoy runs: both must give the same series for the same traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    /// The proxy-wasm `.wasm` in V8, `envoy/envoy.yaml`.
    Wasm,
    /// The native dynamic module, `envoy/envoy-dynamic-module.yaml`.
    Native,
}

impl Build {
    pub const ALL: [Build; 2] = [Build::Wasm, Build::Native];
}

pub fn engine_bin() -> Result<PathBuf> {
    required(
        "target/debug/qwen3-engine",
        "cargo build -p qwen3-engine --bins",
    )
}

pub fn venv_python() -> Result<PathBuf> {
    required(".venv/bin/python", "bash envoy/setup.sh --test")
}

pub fn prometheus_bin() -> Result<PathBuf> {
    let out = Command::new("sh")
        .args(["-c", "command -v prometheus"])
        .output()?;
    if !out.status.success() {
        bail!("prometheus is not installed: run `bash envoy/setup.sh --test` first");
    }
    Ok(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
}

/// A free loopback port: bind port 0, read it, release it. Another process could take it before our
/// child binds it; the window is short and the child then fails loudly.
pub fn free_port() -> u16 {
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("binding 127.0.0.1:0")
}

/// Whether a start failed because a port from [`free_port`] was taken meanwhile (Envoy's and
/// Prometheus' words for it, from the log tail in the error).
fn port_clash(e: &anyhow::Error) -> bool {
    format!("{e:#}")
        .to_ascii_lowercase()
        .contains("address already in use")
}

/// A child process that is killed (SIGKILL) and reaped when dropped. Its stderr (and stdout unless
/// the caller reads it) goes to a log file whose tail appears in error messages.
pub struct Proc {
    name: String,
    child: Child,
    log: PathBuf,
}

impl Proc {
    pub fn spawn(name: &str, mut cmd: Command, log: PathBuf, capture_stdout: bool) -> Result<Proc> {
        let file =
            std::fs::File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        cmd.stdin(Stdio::null()).stderr(file.try_clone()?);
        if capture_stdout {
            cmd.stdout(Stdio::piped());
        } else {
            cmd.stdout(file);
        }
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        Ok(Proc {
            name: name.to_owned(),
            child,
            log,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last lines of the process's log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(15);
        format!(
            "--- last lines of {} ({}):\n{}",
            self.name,
            self.log.display(),
            lines[start..].join("\n")
        )
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.child.try_wait()? {
            bail!("{} exited with {status}\n{}", self.name, self.log_tail());
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Polls `probe` every 50 ms until it returns true, the process dies, or `limit` passes.
async fn wait_ready<F, Fut>(
    proc: &mut Proc,
    what: &str,
    limit: Duration,
    mut probe: F,
) -> Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    loop {
        proc.check_alive()?;
        if probe().await {
            return Ok(());
        }
        if start.elapsed() > limit {
            bail!("{what} was not ready after {limit:?}\n{}", proc.log_tail());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Gateway settings beyond the filter's configuration.
#[derive(Debug, Default)]
pub struct Setup<'a> {
    /// Labels from `label_headers`: for the wasm build each gets the `stats_tags` line the README
    /// tells users to add (the native build needs none).
    pub extra_labels: &'a [&'a str],
    /// More `envoy/render.sh` variables, e.g. `ROUTE_TIMEOUT`, `STREAM_IDLE_TIMEOUT`.
    pub render_env: &'a [(&'a str, &'a str)],
}

/// A real Envoy 1.40 with one build of the filter, configured by `envoy/render.sh` from
/// `envoy/envoy.yaml` (wasm) or `envoy/envoy-dynamic-module.yaml` (native).
pub struct Envoy {
    pub proc: Proc,
    pub gateway_port: u16,
    pub admin_port: u16,
    pub metrics_port: u16,
    _dir: tempfile::TempDir,
}

impl Envoy {
    /// Starts Envoy with the wasm build (see [`Envoy::start_build`]).
    pub async fn start(upstream_port: u16, filter_config: &str) -> Result<Envoy> {
        Envoy::start_build(Build::Wasm, upstream_port, filter_config).await
    }

    /// Starts Envoy (`--concurrency 2`, two workers) with `build` of the filter in front of
    /// `upstream_port` with the filter configuration `filter_config`, and waits until it is ready.
    pub async fn start_build(
        build: Build,
        upstream_port: u16,
        filter_config: &str,
    ) -> Result<Envoy> {
        Envoy::start_with(build, upstream_port, filter_config, &Setup::default()).await
    }

    /// As [`Envoy::start_build`], with more of the gateway's settings (see [`Setup`]).
    pub async fn start_with(
        build: Build,
        upstream_port: u16,
        filter_config: &str,
        setup: &Setup<'_>,
    ) -> Result<Envoy> {
        // A port picked by free_port() can be taken by someone else before Envoy binds it; only
        // that failure is retried, with new ports.
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Envoy::start_once(build, upstream_port, filter_config, setup).await {
                Err(e) if attempt < 3 && format!("{e:#}").contains("Address already in use") => {
                    continue
                }
                other => return other,
            }
        }
    }

    async fn start_once(
        build: Build,
        upstream_port: u16,
        filter_config: &str,
        setup: &Setup<'_>,
    ) -> Result<Envoy> {
        let envoy = envoy_bin()?;
        let dir = tempfile::Builder::new().prefix("e2e-envoy-").tempdir()?;
        let (gateway_port, admin_port, metrics_port) = (free_port(), free_port(), free_port());
        let mut render = Command::new(repo_root().join("envoy/render.sh"));
        render
            .env("GATEWAY_PORT", gateway_port.to_string())
            .env("ADMIN_PORT", admin_port.to_string())
            .env("METRICS_PORT", metrics_port.to_string())
            .env("UPSTREAM_PORT", upstream_port.to_string())
            .env("FILTER_CONFIG", filter_config)
            .envs(setup.render_env.iter().copied());
        let mut cmd = Command::new(envoy);
        match build {
            Build::Wasm => {
                render.env("WASM_FILE", wasm_file()?);
            }
            Build::Native => {
                render.arg("dynamic-module");
                cmd.env("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir()?);
            }
        }
        let out = render.output().context("running envoy/render.sh")?;
        if !out.status.success() {
            bail!(
                "envoy/render.sh failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let mut yaml = String::from_utf8(out.stdout).context("render.sh output")?;
        let kind_tag = "    - { tag_name: kind, regex: \"(kind=\\\\.=(.*?);\\\\.;)\" }\n";
        for label in setup.extra_labels.iter().filter(|_| build == Build::Wasm) {
            ensure!(
                yaml.contains(kind_tag),
                "no `kind` stats_tags line in the rendered config"
            );
            let tag =
                format!("    - {{ tag_name: {label}, regex: \"({label}=\\\\.=(.*?);\\\\.;)\" }}\n");
            yaml = yaml.replace(kind_tag, &format!("{kind_tag}{tag}"));
        }
        let config = dir.path().join("envoy.yaml");
        std::fs::write(&config, yaml)?;
        cmd.arg("-c")
            .arg(&config)
            .args([
                "--concurrency",
                "2",
                "--use-dynamic-base-id",
                "-l",
                "warning",
                // The module loader's "ABI version … matched." line (info) stays in the log.
                "--component-log-level",
                "dynamic_modules:info",
            ])
            .current_dir(repo_root());
        let mut proc = Proc::spawn("envoy", cmd, dir.path().join("envoy.log"), false)?;
        wait_ready(&mut proc, "envoy", Duration::from_secs(20), || async move {
            matches!(get(admin_port, "/ready").await, Ok(r) if r.status == 200)
        })
        .await?;
        Ok(Envoy {
            proc,
            gateway_port,
            admin_port,
            metrics_port,
            _dir: dir,
        })
    }

    /// `/stats/prometheus` from the read-only metrics listener.
    pub async fn scrape(&self) -> Result<Scrape> {
        scrape(self.metrics_port, "/stats/prometheus").await
    }

    /// A scrape that includes every histogram sample recorded before the call: the first query
    /// starts a merge of the workers' histograms (stats_flush_on_admin), the second, 0.5 s later,
    /// shows it.
    pub async fn scrape_merged(&self) -> Result<Scrape> {
        self.scrape().await?;
        tokio::time::sleep(Duration::from_millis(500)).await;
        self.scrape().await
    }

    /// Scrapes (each scrape also starts a histogram merge) until `done` accepts one, or fails after
    /// `limit` with what `done` said about the last one.
    pub async fn wait_for<F>(&self, limit: Duration, mut done: F) -> Result<Scrape>
    where
        F: FnMut(&Scrape) -> std::result::Result<(), String>,
    {
        let start = Instant::now();
        loop {
            let s = self.scrape().await?;
            match done(&s) {
                Ok(()) => return Ok(s),
                Err(why) if start.elapsed() > limit => {
                    bail!(
                        "gateway metrics not as expected after {limit:?}:\n{why}\n{}",
                        self.proc.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// The real engine (`qwen3-engine`, random-weight tiny preset) on a free port.
pub struct Engine {
    pub proc: Proc,
    pub port: u16,
    pub model: String,
    _dir: tempfile::TempDir,
}

impl Engine {
    pub async fn start() -> Result<Engine> {
        Engine::start_with(&[]).await
    }

    /// As [`Engine::start`], with more engine flags after `--port 0 --preset tiny` (e.g.
    /// `["--max-num-seqs", "16"]`).
    pub async fn start_with(flags: &[&str]) -> Result<Engine> {
        let bin = engine_bin()?;
        let dir = tempfile::Builder::new().prefix("e2e-engine-").tempdir()?;
        let mut cmd = Command::new(bin);
        cmd.args(["--port", "0", "--preset", "tiny"])
            .args(flags)
            .current_dir(repo_root());
        let mut proc = Proc::spawn("qwen3-engine", cmd, dir.path().join("engine.log"), true)?;
        // The first stdout line names the address: "qwen3-engine serving M on http://127.0.0.1:P".
        let stdout = proc.child.stdout.take().context("engine stdout")?;
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {} // keep draining so the engine never blocks on a full pipe
        });
        let line = match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(Some(Ok(line))) => line,
            _ => bail!("the engine printed no address line\n{}", proc.log_tail()),
        };
        let parsed = regex::Regex::new(r"serving (\S+) on http://127\.0\.0\.1:(\d+)")?
            .captures(&line)
            .map(|c| (c[1].to_owned(), c[2].parse::<u16>()));
        let (model, port) = match parsed {
            Some((model, Ok(port))) => (model, port),
            _ => bail!("unexpected first engine line {line:?}"),
        };
        wait_ready(
            &mut proc,
            "engine",
            Duration::from_secs(60),
            || async move { matches!(get(port, "/health").await, Ok(r) if r.status == 200) },
        )
        .await?;
        Ok(Engine {
            proc,
            port,
            model,
            _dir: dir,
        })
    }

    pub async fn metrics(&self) -> Result<Scrape> {
        scrape(self.port, "/metrics").await
    }

    /// Scrapes `/metrics` until `done` accepts a scrape, or fails after `limit` with what `done`
    /// said about the last one (the engine notices a client gone at its next step, not at once).
    pub async fn wait_for<F>(&self, limit: Duration, mut done: F) -> Result<Scrape>
    where
        F: FnMut(&Scrape) -> std::result::Result<(), String>,
    {
        let start = Instant::now();
        loop {
            let s = self.metrics().await?;
            match done(&s) {
                Ok(()) => return Ok(s),
                Err(why) if start.elapsed() > limit => {
                    bail!(
                        "engine metrics not as expected after {limit:?}:\n{why}\n{}",
                        self.proc.log_tail()
                    )
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }
}

/// A real Prometheus scraping one gateway and one engine every second, configured by
/// `envoy/render.sh prometheus` (so it carries the shipped alert rules too).
pub struct Prometheus {
    pub proc: Proc,
    pub port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    pub async fn start(metrics_port: u16, engine_port: u16) -> Result<Prometheus> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Prometheus::start_once(metrics_port, engine_port).await {
                Err(e) if attempt < 3 && port_clash(&e) => continue,
                other => return other,
            }
        }
    }

    async fn start_once(metrics_port: u16, engine_port: u16) -> Result<Prometheus> {
        let bin = prometheus_bin()?;
        let dir = tempfile::Builder::new()
            .prefix("e2e-prometheus-")
            .tempdir()?;
        let out = Command::new(repo_root().join("envoy/render.sh"))
            .arg("prometheus")
            .env("METRICS_PORT", metrics_port.to_string())
            .env("UPSTREAM_PORT", engine_port.to_string())
            .env("SCRAPE_INTERVAL", "1s")
            // Nothing listens there: alerts have nowhere to go, which Prometheus only logs.
            .env("ALERTMANAGER_PORT", free_port().to_string())
            .output()
            .context("running envoy/render.sh prometheus")?;
        if !out.status.success() {
            bail!(
                "envoy/render.sh prometheus failed: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let config = dir.path().join("prometheus.yml");
        std::fs::write(&config, &out.stdout)?;
        let port = free_port();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn");
        let mut proc = Proc::spawn("prometheus", cmd, dir.path().join("prometheus.log"), false)?;
        wait_ready(
            &mut proc,
            "prometheus",
            Duration::from_secs(30),
            || async move { matches!(get(port, "/-/ready").await, Ok(r) if r.status == 200) },
        )
        .await?;
        Ok(Prometheus {
            proc,
            port,
            _dir: dir,
        })
    }

    /// An instant query through `/api/v1/query`; the `data` object of the answer.
    pub async fn query(&self, promql: &str) -> Result<serde_json::Value> {
        let path = format!("/api/v1/query?query={}", percent_encode(promql));
        let r = get(self.port, &path).await?;
        let v: serde_json::Value = serde_json::from_slice(&r.body)
            .with_context(|| format!("Prometheus answered {} with non-JSON", r.status))?;
        if v["status"] != "success" {
            bail!("{}: {}", v["errorType"], v["error"]);
        }
        Ok(v["data"].clone())
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// HTTP client

/// A whole response.
#[derive(Debug)]
pub struct HttpResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Bytes,
}

impl HttpResponse {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Result<serde_json::Value> {
        serde_json::from_slice(&self.body)
            .with_context(|| format!("response body is not JSON: {}", self.text()))
    }

    /// The JSON payloads of the SSE `data:` lines, `[DONE]` left out.
    pub fn sse_events(&self) -> Result<Vec<serde_json::Value>> {
        self.text()
            .lines()
            .filter_map(|l| l.strip_prefix("data:").map(str::trim))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).with_context(|| format!("SSE data is not JSON: {d}")))
            .collect()
    }
}

async fn connect(port: u16) -> Result<hyper::client::conn::http1::SendRequest<Full<Bytes>>> {
    let stream = TcpStream::connect(("127.0.0.1", port)).await?;
    let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    Ok(sender)
}

fn build_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<Request<Full<Bytes>>> {
    let mut b = Request::builder()
        .method(method)
        .uri(path)
        .header("host", format!("127.0.0.1:{port}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    Ok(b.body(Full::new(Bytes::from(body)))?)
}

/// One request on a new connection, the whole response read (at most 60 s).
pub async fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
) -> Result<HttpResponse> {
    let mut conn = Connection::open(port).await?;
    conn.request(method, path, headers, body).await
}

/// An HTTP/1.1 keep-alive connection: requests one after another on the same socket.
pub struct Connection {
    port: u16,
    sender: hyper::client::conn::http1::SendRequest<Full<Bytes>>,
}

impl Connection {
    pub async fn open(port: u16) -> Result<Connection> {
        Ok(Connection {
            port,
            sender: connect(port).await?,
        })
    }

    /// One request, the whole response read (at most 60 s).
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: Vec<u8>,
    ) -> Result<HttpResponse> {
        let port = self.port;
        let fut = async {
            self.sender.ready().await?;
            let resp = self
                .sender
                .send_request(build_request(port, method, path, headers, body)?)
                .await?;
            let status = resp.status().as_u16();
            let headers = resp
                .headers()
                .iter()
                .map(|(k, v)| {
                    (
                        k.as_str().to_owned(),
                        String::from_utf8_lossy(v.as_bytes()).into_owned(),
                    )
                })
                .collect();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok(HttpResponse {
                status,
                headers,
                body,
            })
        };
        tokio::time::timeout(Duration::from_secs(60), fut)
            .await
            .map_err(|_| {
                anyhow!("{method} {path} on port {port}: no complete response within 60 s")
            })?
    }
}

/// A response body read frame by frame: the bytes that arrived, and the error that ended it early
/// (a reset), if one did.
pub async fn read_body(mut body: Incoming) -> (Vec<u8>, Option<hyper::Error>) {
    let mut got = Vec::new();
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if let Ok(data) = frame.into_data() {
                    got.extend_from_slice(&data);
                }
            }
            Err(e) => return (got, Some(e)),
        }
    }
    (got, None)
}

/// A POST whose response body is compared as it arrives with the concatenation of `expected`
/// (nothing of it is kept, so a response of any size costs one frame of memory). Fails at the first
/// byte that differs, or if the body is shorter or longer; returns the status and the length.
pub async fn request_compare(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    expected: &[Bytes],
) -> Result<(u16, u64)> {
    let fut = async {
        let mut sender = connect(port).await?;
        let resp = sender
            .send_request(build_request(port, "POST", path, headers, body)?)
            .await?;
        let status = resp.status().as_u16();
        let mut body = resp.into_body();
        let mut want = expected.iter().flat_map(|b| {
            // Bytes::slice shares the memory: the expected pieces are walked, not copied.
            (0..b.len())
                .step_by(64 * 1024)
                .map(move |at| b.slice(at..b.len().min(at + 64 * 1024)))
        });
        let mut pending = Bytes::new();
        let mut offset: u64 = 0;
        while let Some(frame) = body.frame().await {
            let Ok(mut data) = frame?.into_data() else {
                continue;
            };
            while !data.is_empty() {
                if pending.is_empty() {
                    match want.next() {
                        Some(next) => pending = next,
                        None => bail!("the body is longer than expected: {offset} bytes expected"),
                    }
                    continue;
                }
                let n = pending.len().min(data.len());
                if pending[..n] != data[..n] {
                    let at = pending[..n]
                        .iter()
                        .zip(&data[..n])
                        .take_while(|(a, b)| a == b)
                        .count();
                    bail!("the body differs at byte {}", offset + at as u64);
                }
                pending = pending.slice(n..);
                data = data.slice(n..);
                offset += n as u64;
            }
        }
        let missing: usize = pending.len() + want.map(|b| b.len()).sum::<usize>();
        ensure!(
            missing == 0,
            "the body ended {missing} bytes early, after {offset}"
        );
        Ok((status, offset))
    };
    tokio::time::timeout(Duration::from_secs(120), fut)
        .await
        .map_err(|_| anyhow!("POST {path} on port {port}: no complete response within 120 s"))?
}

pub async fn get(port: u16, path: &str) -> Result<HttpResponse> {
    request(port, "GET", path, &[], Vec::new()).await
}

pub async fn post_json(port: u16, path: &str, body: &serde_json::Value) -> Result<HttpResponse> {
    request(
        port,
        "POST",
        path,
        &[("content-type", "application/json")],
        serde_json::to_vec(body)?,
    )
    .await
}

/// Sends a request, reads the response body until `enough` accepts what arrived so far, then drops
/// the connection (a client going away mid-stream). Returns the bytes received.
pub async fn request_then_disconnect<F>(
    port: u16,
    path: &str,
    headers: &[(&str, &str)],
    body: Vec<u8>,
    mut enough: F,
) -> Result<Vec<u8>>
where
    F: FnMut(&[u8]) -> bool,
{
    let fut = async {
        let mut sender = connect(port).await?;
        let resp = sender
            .send_request(build_request(port, "POST", path, headers, body)?)
            .await?;
        let mut body = resp.into_body();
        let mut got = Vec::new();
        while !enough(&got) {
            match body.frame().await {
                Some(frame) => {
                    if let Ok(data) = frame?.into_data() {
                        got.extend_from_slice(&data);
                    }
                }
                None => bail!("the response ended before the client meant to disconnect"),
            }
        }
        Ok(got)
        // `sender` and `body` drop here: hyper closes the connection.
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| anyhow!("POST {path}: expected bytes did not arrive within 30 s"))?
}

// ---------------------------------------------------------------------------------------------
// Test scaffolding and scripted streams

/// Runs a test body with a time limit; an error or the limit fails the test with the full message.
pub async fn bounded(limit: Duration, body: impl Future<Output = Result<()>>) {
    match tokio::time::timeout(limit, body).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => panic!("{e:#}"),
        Err(_) => panic!("test did not finish within {limit:?}"),
    }
}

/// Runs `check` with each build of the filter, one after another; an error names the build.
pub async fn each_build<F, Fut>(check: F) -> Result<()>
where
    F: Fn(Build) -> Fut,
    Fut: Future<Output = Result<()>>,
{
    for build in Build::ALL {
        check(build)
            .await
            .with_context(|| format!("{build:?} build"))?;
    }
    Ok(())
}

/// A non-streaming JSON answer, sent whole.
pub fn json_script(body: &serde_json::Value) -> Script {
    Script::chunked(
        200,
        vec![("content-type".into(), "application/json".into())],
        body.to_string().as_bytes(),
        &[4096],
        Duration::ZERO,
    )
}

/// One chat chunk (see [`test_kit::wire`], the one set of SSE builders).
pub fn chunk_event(delta: serde_json::Value, finish: Option<&str>) -> Bytes {
    Bytes::from(test_kit::wire::delta_chunk(delta, finish))
}

/// The include_usage chunk.
pub fn usage_event(prompt: u64, completion: u64) -> Bytes {
    Bytes::from(test_kit::wire::usage_chunk(prompt, completion))
}

/// An OpenAI chat stream: the role chunk at once, `tokens` content chunks, the first at `first`
/// and then every `gap`, the finish chunk, the usage chunk and `[DONE]` right after the last token.
pub fn paced_stream(first: Duration, gap: Duration, tokens: u32, prompt: u64) -> Script {
    let mut chunks = vec![(
        Duration::ZERO,
        chunk_event(
            serde_json::json!({"role": "assistant", "content": ""}),
            None,
        ),
    )];
    for i in 0..tokens {
        chunks.push((
            first + gap * i,
            chunk_event(serde_json::json!({"content": format!("tok{i} ")}), None),
        ));
    }
    let last = first + gap * (tokens - 1);
    chunks.push((last, chunk_event(serde_json::json!({}), Some("stop"))));
    chunks.push((last, usage_event(prompt, u64::from(tokens))));
    chunks.push((last, Bytes::from_static(b"data: [DONE]\n\n")));
    Script {
        status: 200,
        headers: vec![("content-type".into(), "text/event-stream".into())],
        chunks,
        end: ScriptEnd::Complete,
    }
}

/// The role chunk and `tokens` content chunks 1 ms apart, then the upstream holds the stream open
/// and sends nothing more.
pub fn tokens_then_silence(tokens: usize) -> Script {
    let mut s = paced_stream(Duration::from_millis(1), Duration::from_millis(1), 6, 4);
    s.chunks.truncate(1 + tokens);
    s.end = ScriptEnd::Hang;
    s
}

pub fn chat_request(model: &str) -> Vec<u8> {
    serde_json::to_vec(
        &serde_json::json!({"model": model, "stream": true, "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "hi"}]}),
    )
    .expect("serialisable")
}

// ---------------------------------------------------------------------------------------------
// Scripted upstream

/// How a scripted response ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ScriptEnd {
    /// The body ends normally (chunked terminator).
    Complete,
    /// The connection is closed without the chunked terminator (an upstream reset mid-stream).
    Reset,
    /// The body stays open (until the peer goes away, or 60 s).
    Hang,
}

/// One scripted response: status, headers and body chunks, each sent at its offset from the moment
/// the request arrived.
#[derive(Clone, Debug)]
pub struct Script {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub chunks: Vec<(Duration, Bytes)>,
    pub end: ScriptEnd,
}

impl Script {
    /// `body` cut into chunks of the sizes in `pattern` (cycled; the last ~quarter of a long body is
    /// sent in one piece so no fixture takes long), `gap` apart.
    pub fn chunked(
        status: u16,
        headers: Vec<(String, String)>,
        body: &[u8],
        pattern: &[usize],
        gap: Duration,
    ) -> Script {
        let mut chunks = Vec::new();
        let mut at = 0;
        let mut i = 0;
        while at < body.len() {
            let n = if i >= 48 {
                body.len() - at
            } else {
                pattern[i % pattern.len()].min(body.len() - at)
            };
            chunks.push((gap * i as u32, Bytes::copy_from_slice(&body[at..at + n])));
            at += n;
            i += 1;
        }
        Script {
            status,
            headers,
            chunks,
            end: ScriptEnd::Complete,
        }
    }
}

/// An HTTP/1.1 server on a free loopback port that answers each request with the script named by
/// its [`SCRIPT_HEADER`] (404 if none), byte for byte. Stops when dropped.
pub struct Upstream {
    pub port: u16,
    scripts: Arc<Mutex<Scripts>>,
    task: JoinHandle<()>,
}

/// The upstream's scripts by name, and what it received.
#[derive(Default)]
struct Scripts {
    by_name: HashMap<String, Script>,
    /// Scripts for requests that ask for usage (`stream_options.include_usage: true`), by name: an
    /// upstream that honours the option as OpenAI documents.
    asked_usage: HashMap<String, Script>,
    /// Request bodies received, by script name, in order.
    received: HashMap<String, Vec<Bytes>>,
}

impl Upstream {
    pub async fn start() -> Result<Upstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let scripts: Arc<Mutex<Scripts>> = Arc::default();
        let table = scripts.clone();
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let table = table.clone();
                tokio::spawn(async move {
                    let service = service_fn(move |req| respond(table.clone(), req));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Ok(Upstream {
            port,
            scripts,
            task,
        })
    }

    pub fn add(&self, name: &str, script: Script) {
        self.scripts
            .lock()
            .expect("script table")
            .by_name
            .insert(name.to_owned(), script);
    }

    /// The script `name` answers a request that asks for usage with (see [`Scripts::asked_usage`]).
    pub fn add_when_usage_asked(&self, name: &str, script: Script) {
        self.scripts
            .lock()
            .expect("script table")
            .asked_usage
            .insert(name.to_owned(), script);
    }

    /// The request bodies script `name` has answered, in order.
    pub fn received(&self, name: &str) -> Vec<Bytes> {
        let table = self.scripts.lock().expect("script table");
        table.received.get(name).cloned().unwrap_or_default()
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// An upstream that writes raw bytes, framed by no library: for responses that lie about their
/// length. Per connection it reads one request (headers, then a `content-length` body), writes the
/// bytes registered under the request's [`SCRIPT_HEADER`] and closes the connection. Dropping it
/// closes the listening socket: connecting to its port is then refused.
pub struct RawUpstream {
    pub port: u16,
    scripts: Arc<Mutex<HashMap<String, Bytes>>>,
    task: JoinHandle<()>,
}

impl RawUpstream {
    pub async fn start() -> Result<RawUpstream> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let port = listener.local_addr()?.port();
        let scripts: Arc<Mutex<HashMap<String, Bytes>>> = Arc::default();
        let table = scripts.clone();
        let task = tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let table = table.clone();
                tokio::spawn(async move {
                    use tokio::io::AsyncWriteExt as _;
                    let Ok(head) = read_request(&mut stream).await else {
                        return;
                    };
                    let answer = header_value(&head, SCRIPT_HEADER)
                        .and_then(|name| table.lock().expect("raw scripts").get(&name).cloned())
                        .unwrap_or_else(|| {
                            Bytes::from_static(
                                b"HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n",
                            )
                        });
                    let _ = stream.write_all(&answer).await;
                    let _ = stream.shutdown().await;
                });
            }
        });
        Ok(RawUpstream {
            port,
            scripts,
            task,
        })
    }

    /// `bytes` (status line, headers, body: all of it, as written) answer requests for `name`.
    pub fn add(&self, name: &str, bytes: Vec<u8>) {
        self.scripts
            .lock()
            .expect("raw scripts")
            .insert(name.to_owned(), Bytes::from(bytes));
    }
}

impl Drop for RawUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads a request's head and its `content-length` body; returns the head.
async fn read_request(stream: &mut TcpStream) -> Result<String> {
    use tokio::io::AsyncReadExt as _;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 16 * 1024];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i + 4;
        }
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "the connection closed inside the request head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8_lossy(&buf[..head_end]).into_owned();
    let length: usize = header_value(&head, "content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut have = buf.len() - head_end;
    while have < length {
        let n = stream.read(&mut chunk).await?;
        ensure!(n > 0, "the connection closed inside the request body");
        have += n;
    }
    Ok(head)
}

/// The value of header `name` (any case) in an HTTP/1 head.
fn header_value(head: &str, name: &str) -> Option<String> {
    head.lines().skip(1).find_map(|line| {
        let (k, v) = line.split_once(':')?;
        k.trim()
            .eq_ignore_ascii_case(name)
            .then(|| v.trim().to_owned())
    })
}

/// What a raw HTTP/1 client read: the status, the head as text, the bytes after the head, and
/// whether the connection was reset rather than closed.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub head: String,
    pub body: Vec<u8>,
    pub reset: bool,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<String> {
        header_value(&self.head, name)
    }
}

/// Writes `request` (all of it, as given) on a new connection and reads until the peer closes or
/// resets it (at most 30 s). For responses whose framing is itself under test, nothing is
/// interpreted but the status line.
pub async fn raw_request(port: u16, request: &[u8]) -> Result<RawResponse> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let fut = async {
        let mut stream = TcpStream::connect(("127.0.0.1", port)).await?;
        stream.write_all(request).await?;
        let mut got = Vec::new();
        let mut chunk = [0u8; 16 * 1024];
        let reset = loop {
            match stream.read(&mut chunk).await {
                Ok(0) => break false,
                Ok(n) => got.extend_from_slice(&chunk[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => break true,
                Err(e) => return Err(e.into()),
            }
        };
        let head_end = got
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .map(|i| i + 4)
            .with_context(|| format!("no response head in {:?}", String::from_utf8_lossy(&got)))?;
        let head = String::from_utf8_lossy(&got[..head_end]).into_owned();
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .with_context(|| format!("no status in {head:?}"))?;
        Ok(RawResponse {
            status,
            head,
            body: got.split_off(head_end),
            reset,
        })
    };
    tokio::time::timeout(Duration::from_secs(30), fut)
        .await
        .map_err(|_| anyhow!("raw request on port {port}: the connection stayed open 30 s"))?
}

/// The resident set size of process `pid` (`VmRSS` in `/proc/<pid>/status`), in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .context("no VmRSS line")?;
    Ok(kib * 1024)
}

type ScriptBody = Channel<Bytes, std::io::Error>;

fn asks_for_usage(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body).is_ok_and(|v| {
        v.pointer("/stream_options/include_usage") == Some(&serde_json::Value::Bool(true))
    })
}

async fn respond(
    table: Arc<Mutex<Scripts>>,
    req: Request<Incoming>,
) -> Result<Response<ScriptBody>> {
    let start = tokio::time::Instant::now();
    let name = req
        .headers()
        .get(SCRIPT_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Read the whole request body before answering, as a server that parses JSON does.
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let script = {
        let mut table = table.lock().expect("script table");
        let asked = asks_for_usage(&body);
        table.received.entry(name.clone()).or_default().push(body);
        asked
            .then(|| table.asked_usage.get(&name).cloned())
            .flatten()
            .or_else(|| table.by_name.get(&name).cloned())
    };
    let script = script.unwrap_or(Script {
        status: 404,
        headers: vec![("content-type".into(), "text/plain".into())],
        chunks: vec![(
            Duration::ZERO,
            Bytes::from(format!("no script named {name:?}")),
        )],
        end: ScriptEnd::Complete,
    });
    // A script can hold its response headers back (an upstream that is slow to answer at all).
    if let Some((_, ms)) = script.headers.iter().find(|(k, _)| k == HEADERS_AFTER_MS) {
        tokio::time::sleep(Duration::from_millis(ms.parse().unwrap_or(0))).await;
    }
    let (mut tx, body) = Channel::<Bytes, std::io::Error>::new(4);
    let mut resp = Response::builder().status(script.status);
    for (k, v) in &script.headers {
        let k = k.to_ascii_lowercase();
        // Framing is hyper's: the body is always chunked.
        if k != "content-length"
            && k != "transfer-encoding"
            && k != "connection"
            && k != HEADERS_AFTER_MS
        {
            resp = resp.header(k, v);
        }
    }
    tokio::spawn(async move {
        for (at, chunk) in script.chunks {
            tokio::time::sleep_until(start + at).await;
            if tx.send_data(chunk).await.is_err() {
                return; // the peer went away
            }
        }
        match script.end {
            ScriptEnd::Complete => drop(tx),
            ScriptEnd::Reset => {
                // hyper drops what it has not written yet when the body fails: let it take and
                // flush every chunk first, so the reset comes after the last byte, as in the script.
                while tx.capacity() < tx.max_capacity() {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                tx.abort(std::io::Error::other("scripted upstream reset"));
            }
            ScriptEnd::Hang => {
                // Hold the body open without sending anything; the runtime ends this task when the
                // test is over.
                tokio::time::sleep_until(start + Duration::from_secs(60)).await;
                drop(tx);
            }
        }
    });
    Ok(resp.body(body)?)
}

// ---------------------------------------------------------------------------------------------
// Prometheus text format

/// One sample line: metric name, labels, value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A parsed scrape: every sample and each family's `# TYPE`.
#[derive(Clone, Debug, Default)]
pub struct Scrape {
    pub samples: Vec<Sample>,
    pub types: HashMap<String, String>,
}

pub async fn scrape(port: u16, path: &str) -> Result<Scrape> {
    let r = get(port, path).await?;
    if r.status != 200 {
        bail!("GET {path} on port {port}: status {}", r.status);
    }
    Scrape::parse(&r.text()).with_context(|| format!("parsing GET {path} on port {port}"))
}

impl Scrape {
    /// The Prometheus text exposition format (and OpenMetrics, whose `# EOF` and extra comment
    /// lines are skipped): `name{label="value",...} value [timestamp]`.
    pub fn parse(text: &str) -> Result<Scrape> {
        let mut out = Scrape::default();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim_end();
            if line.is_empty() {
                continue;
            }
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut it = rest.split_whitespace();
                if let (Some(name), Some(kind)) = (it.next(), it.next()) {
                    out.types.insert(name.to_owned(), kind.to_owned());
                }
                continue;
            }
            if line.starts_with('#') {
                continue;
            }
            out.samples
                .push(parse_sample(line).with_context(|| format!("line {}: {line}", i + 1))?);
        }
        Ok(out)
    }

    /// Samples named `name` whose labels include every pair of `labels`.
    pub fn matching<'a>(
        &'a self,
        name: &'a str,
        labels: &'a [(&'a str, &'a str)],
    ) -> impl Iterator<Item = &'a Sample> + 'a {
        self.samples.iter().filter(move |s| {
            s.name == name
                && labels
                    .iter()
                    .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
        })
    }

    /// The sum of the matching samples (0 when none match).
    pub fn sum(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.matching(name, labels).map(|s| s.value).sum()
    }

    /// Whether any sample matches.
    pub fn has(&self, name: &str, labels: &[(&str, &str)]) -> bool {
        self.matching(name, labels).next().is_some()
    }

    /// The cumulative count of histogram `name` at bucket bound `le`, over matching series.
    pub fn bucket(&self, name: &str, labels: &[(&str, &str)], le: &str) -> f64 {
        let bucket = format!("{name}_bucket");
        self.matching(&bucket, labels)
            .filter(|s| s.labels.get("le").map(String::as_str) == Some(le))
            .map(|s| s.value)
            .sum()
    }

    /// The `llm_*` series as the fixtures list them, counted since `base`: each counter that grew
    /// (`name{labels} value=N`) and each histogram that got samples (`name{labels} count=N`).
    pub fn llm_lines_since(&self, base: &Scrape) -> BTreeSet<String> {
        let before: HashMap<String, f64> = base.llm_values().into_iter().collect();
        self.llm_values()
            .into_iter()
            .filter_map(|(key, v)| {
                let delta = v - before.get(&key).copied().unwrap_or(0.0);
                (delta != 0.0).then(|| format!("{key}={}", delta.round() as i64))
            })
            .collect()
    }

    /// `("name{labels} value", v)` per llm_* counter, `("name{labels} count", n)` per histogram.
    fn llm_values(&self) -> Vec<(String, f64)> {
        let mut out = Vec::new();
        for s in &self.samples {
            if !s.name.starts_with("llm_") {
                continue;
            }
            if self.types.get(&s.name).map(String::as_str) == Some("counter") {
                out.push((format!("{} value", key(&s.name, &s.labels)), s.value));
            } else if let Some(family) = s.name.strip_suffix("_count") {
                if self.types.get(family).map(String::as_str) == Some("histogram") {
                    out.push((format!("{} count", key(family, &s.labels)), s.value));
                }
            }
        }
        out
    }
}

/// The fixtures' series key: `name{k="v",...}` with labels sorted (as `gateway_tests::metrics::series_key`).
fn key(name: &str, labels: &BTreeMap<String, String>) -> String {
    gateway_tests::metrics::series_key(name, labels)
}

fn parse_sample(line: &str) -> Result<Sample> {
    let (name, rest) = match line.find(['{', ' ']) {
        Some(i) => line.split_at(i),
        None => bail!("no value"),
    };
    let mut labels = BTreeMap::new();
    let mut rest = rest;
    if let Some(mut r) = rest.strip_prefix('{') {
        loop {
            r = r.trim_start_matches([',', ' ']);
            if let Some(after) = r.strip_prefix('}') {
                rest = after;
                break;
            }
            let eq = r.find('=').context("label without '='")?;
            let label = r[..eq].trim().to_owned();
            r = r[eq + 1..]
                .strip_prefix('"')
                .context("label value not quoted")?;
            let mut value = String::new();
            let mut chars = r.char_indices();
            let end = loop {
                match chars.next() {
                    Some((i, '"')) => break i,
                    Some((_, '\\')) => match chars.next() {
                        Some((_, 'n')) => value.push('\n'),
                        Some((_, c)) => value.push(c),
                        None => bail!("unfinished escape"),
                    },
                    Some((_, c)) => value.push(c),
                    None => bail!("unterminated label value"),
                }
            };
            labels.insert(label, value);
            r = &r[end + 1..];
        }
    }
    let value = rest.split_whitespace().next().context("no value")?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        v => v
            .parse::<f64>()
            .with_context(|| format!("bad value {v:?}"))?,
    };
    Ok(Sample {
        name: name.to_owned(),
        labels,
        value,
    })
}

#[test]
fn prometheus_text_parser_reads_labels_escapes_and_types() {
    let s = Scrape::parse(
        "# TYPE llm_requests_total counter\n\
         llm_requests_total{model=\"Qwen/Qwen3-1.7B\",api=\"chat_completions\"} 3\n\
         # TYPE llm_request_duration_ms histogram\n\
         llm_request_duration_ms_bucket{model=\"a\\\"b\\\\c\",le=\"+Inf\"} 2\n\
         llm_request_duration_ms_count{model=\"a\\\"b\\\\c\"} 2\n\
         vllm:prompt_tokens_total{model_name=\"qwen3-tiny\"} 18 1700000000\n\
         # EOF\n",
    )
    .unwrap();
    assert_eq!(
        s.sum("llm_requests_total", &[("model", "Qwen/Qwen3-1.7B")]),
        3.0
    );
    assert_eq!(
        s.bucket("llm_request_duration_ms", &[("model", "a\"b\\c")], "+Inf"),
        2.0
    );
    assert_eq!(s.sum("vllm:prompt_tokens_total", &[]), 18.0);
    let lines = s.llm_lines_since(&Scrape::default());
    assert!(
        lines.contains(
            "llm_requests_total{api=\"chat_completions\",model=\"Qwen/Qwen3-1.7B\"} value=3"
        ),
        "{lines:?}"
    );
    assert!(
        lines.contains("llm_request_duration_ms{model=\"a\\\"b\\\\c\"} count=2"),
        "{lines:?}"
    );
}
