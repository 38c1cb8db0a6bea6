//! The test API: a [`Gateway`] is Envoy with the filter loaded on N workers; a [`Stream`] is one
//! HTTP request/response going through it. Time only moves when the test moves it.

use std::collections::BTreeSet;
use std::sync::{Arc, Mutex, OnceLock};

use anyhow::Result;

use crate::abi::{Action, MapType};
use crate::host::{lock, Callback, LogLine, Shared, Vm};
use crate::metrics::{self, merge_matching, Histogram, HostSeries, SeriesValue, StatsConfig};

/// Envoy's `response.flags` bit for "downstream connection terminated" (DC).
pub const FLAG_DOWNSTREAM_DISCONNECT: u64 = 0x4000;
/// Envoy's `response.flags` bit for "upstream protocol error" (UPE): the upstream closed a chunked
/// body without its terminator.
pub const FLAG_UPSTREAM_PROTOCOL_ERROR: u64 = 0x80_0000;

/// `envoy/envoy.yaml`'s stats config, read once per process.
fn shipped_stats_config() -> Result<&'static StatsConfig> {
    static CONFIG: OnceLock<std::result::Result<StatsConfig, String>> = OnceLock::new();
    CONFIG
        .get_or_init(|| StatsConfig::load_default().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow::anyhow!("{e}"))
}

/// Envoy with the filter on `vms` workers, sharing one stat store and one shared-data store.
pub struct Gateway {
    shared: Arc<Shared>,
    stats_config: StatsConfig,
    vms: Vec<Mutex<Vm>>,
}

impl Gateway {
    /// One worker with this plugin configuration (JSON text; empty means none). An error (not a
    /// panic) when the filter rejects the configuration.
    pub fn new(config: &str) -> Result<Gateway> {
        Gateway::with_vms(1, config)
    }

    /// `vms` workers, each with its own VM, configured alike.
    pub fn with_vms(vms: usize, config: &str) -> Result<Gateway> {
        Gateway::with_stats_config(vms, config, shipped_stats_config()?.clone())
    }

    /// As [`Gateway::with_vms`], with an explicit `stats_config` instead of `envoy/envoy.yaml`'s.
    pub fn with_stats_config(
        vms: usize,
        config: &str,
        stats_config: StatsConfig,
    ) -> Result<Gateway> {
        let shared = Arc::new(Shared::default());
        let vms = (0..vms.max(1))
            .map(|i| Vm::start(shared.clone(), i, config.as_bytes()).map(Mutex::new))
            .collect::<Result<Vec<_>>>()?;
        Ok(Gateway {
            shared,
            stats_config,
            vms,
        })
    }

    /// A new stream on the first worker.
    pub fn stream(&self) -> Stream<'_> {
        self.stream_on(0)
    }

    /// A new stream on worker `vm`.
    pub fn stream_on(&self, vm: usize) -> Stream<'_> {
        let ctx = lock(&self.vms[vm])
            .create_stream()
            .unwrap_or_else(|e| panic!("{e:#}"));
        let mut stream = Stream {
            gateway: self,
            vm,
            ctx,
            started_ns: None,
        };
        // Envoy answers `response.flags` in every phase; it is 0 until something goes wrong.
        stream.set_property("response.flags", &0u64.to_le_bytes());
        stream
    }

    /// Calls `proxy_on_tick` on every worker.
    pub fn tick(&self) {
        for vm in &self.vms {
            lock(vm).tick().unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    // --- time ---

    pub fn now_ns(&self) -> u64 {
        self.shared.clock.now_ns()
    }

    pub fn advance_ms(&self, ms: u64) {
        self.shared.clock.advance_ns(ms * 1_000_000);
    }

    pub fn advance_us(&self, us: u64) {
        self.shared.clock.advance_ns(us * 1_000);
    }

    pub fn advance_ns(&self, ns: u64) {
        self.shared.clock.advance_ns(ns);
    }

    // --- stats ---

    /// Every series, tagged with `envoy/envoy.yaml`'s `stats_tags`.
    pub fn all_series(&self) -> Vec<HostSeries> {
        lock(&self.shared.metrics).series(&self.stats_config)
    }

    /// The sum of the counters named `name` whose labels include `labels` (0 if none).
    pub fn series(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        match merge_matching(&self.all_series(), name, labels) {
            None => 0,
            Some(SeriesValue::Counter(v)) => v,
            Some(other) => panic!("{name} is not a counter: {other:?}"),
        }
    }

    /// The sum of the gauges named `name` whose labels include `labels` (0 if none).
    pub fn gauge(&self, name: &str, labels: &[(&str, &str)]) -> i64 {
        match merge_matching(&self.all_series(), name, labels) {
            None => 0,
            Some(SeriesValue::Gauge(v)) => v,
            Some(other) => panic!("{name} is not a gauge: {other:?}"),
        }
    }

    /// The samples of the histograms named `name` whose labels include `labels`, merged.
    pub fn histogram(&self, name: &str, labels: &[(&str, &str)]) -> Histogram {
        match merge_matching(&self.all_series(), name, labels) {
            None => Histogram::default(),
            Some(SeriesValue::Histogram(h)) => h,
            Some(other) => panic!("{name} is not a histogram: {other:?}"),
        }
    }

    /// The distinct values of `label` across the series named `name`.
    pub fn label_values(&self, name: &str, label: &str) -> BTreeSet<String> {
        self.all_series()
            .into_iter()
            .filter(|s| s.name == name)
            .filter_map(|s| {
                s.labels
                    .into_iter()
                    .find(|(k, _)| k == label)
                    .map(|(_, v)| v)
            })
            .collect()
    }

    /// What Envoy's `/stats/prometheus` would show (exact histogram sums, unlike Envoy's).
    pub fn render_prometheus(&self) -> String {
        metrics::render_prometheus(&self.all_series())
    }

    // --- diagnostics ---

    pub fn logs(&self) -> Vec<LogLine> {
        lock(&self.shared.logs).clone()
    }

    /// Things no correct filter causes: stat type conflicts and calls to imports this host answers
    /// with Unimplemented.
    pub fn anomalies(&self) -> Vec<String> {
        let mut out = lock(&self.shared.metrics).anomalies.clone();
        out.extend(
            lock(&self.shared.unimplemented_calls)
                .iter()
                .map(|n| format!("called unimplemented import {n}")),
        );
        out
    }

    /// Makes each of the next `writes` conditional shared-data writes lose a race: another worker
    /// writes the key first, so the filter's write fails with CasMismatch.
    pub fn interfere_with_shared_data_writes(&self, writes: u32) {
        *lock(&self.shared.cas_interference) = writes;
    }

    /// Interfering writes not yet used up (see [`Gateway::interfere_with_shared_data_writes`]).
    pub fn pending_interference(&self) -> u32 {
        *lock(&self.shared.cas_interference)
    }

    /// The tick period the filter asked for on worker `vm`, in ms (0 = none).
    pub fn tick_period_ms(&self, vm: usize) -> u32 {
        lock(&self.vms[vm]).state().tick_period_ms
    }
}

/// What happened to one stream on the host side, returned when it ends.
#[derive(Clone, Debug, Default)]
pub struct StreamReport {
    /// Every callback with the `Action` the filter returned.
    pub actions: Vec<(Callback, Action)>,
    /// Host calls that would have changed the traffic (must stay empty for an observer).
    pub changes: Vec<String>,
    /// What `proxy_on_done` returned.
    pub done: bool,
    /// The request body as passed on to the upstream.
    pub request_sent: Vec<u8>,
    /// The response body as passed on to the client.
    pub response_sent: Vec<u8>,
    /// The request headers as they stood at the end (after any change by the filter).
    pub request_headers: Vec<(String, String)>,
    /// Host calls the filter made for this stream, `proxy_on_log` included.
    pub host_calls: u32,
}

impl StreamReport {
    /// True if the filter let everything through untouched: only `Continue`, no traffic changes.
    pub fn untouched(&self) -> bool {
        self.changes.is_empty() && self.actions.iter().all(|(_, a)| *a == Action::Continue)
    }
}

/// One HTTP stream through the gateway, driven callback by callback.
pub struct Stream<'g> {
    gateway: &'g Gateway,
    vm: usize,
    ctx: u32,
    started_ns: Option<u64>,
}

fn owned_headers(headers: &[(&str, &str)]) -> Vec<(String, String)> {
    headers
        .iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), (*v).to_owned()))
        .collect()
}

impl Stream<'_> {
    fn with_vm<R>(&self, f: impl FnOnce(&mut Vm) -> Result<R>) -> R {
        let mut vm = lock(&self.gateway.vms[self.vm]);
        f(&mut vm).unwrap_or_else(|e| panic!("{e:#}"))
    }

    /// The stream's context id on its worker.
    pub fn context_id(&self) -> u32 {
        self.ctx
    }

    /// `proxy_on_request_headers` with a body to follow; the stream's clock starts here.
    pub fn request_headers(&mut self, headers: &[(&str, &str)]) -> Action {
        self.request_headers_eos(headers, false)
    }

    /// `proxy_on_request_headers` for a request without a body (end_of_stream at the headers).
    pub fn request_headers_only(&mut self, headers: &[(&str, &str)]) -> Action {
        self.request_headers_eos(headers, true)
    }

    fn request_headers_eos(&mut self, headers: &[(&str, &str)], eos: bool) -> Action {
        self.started_ns = Some(self.gateway.now_ns());
        let (ctx, headers) = (self.ctx, owned_headers(headers));
        self.with_vm(|vm| vm.on_headers(ctx, MapType::RequestHeaders, headers, eos))
    }

    /// One `proxy_on_request_body` call.
    pub fn request_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let ctx = self.ctx;
        self.with_vm(|vm| vm.on_body(ctx, true, chunk, end_of_stream))
    }

    /// The request body in these chunks, the last with end_of_stream.
    pub fn request_body<B: AsRef<[u8]>>(&mut self, chunks: &[B]) {
        let n = chunks.len();
        for (i, chunk) in chunks.iter().enumerate() {
            self.request_chunk(chunk.as_ref(), i + 1 == n);
        }
    }

    /// Request headers, then the body in these chunks (headers only if there are none).
    pub fn request<B: AsRef<[u8]>>(&mut self, headers: &[(&str, &str)], body_chunks: &[B]) {
        if body_chunks.is_empty() {
            self.request_headers_only(headers);
        } else {
            self.request_headers(headers);
            self.request_body(body_chunks);
        }
    }

    /// A JSON POST to `path` with `body` as one chunk.
    pub fn post_json(&mut self, path: &str, body: &str) {
        self.request(
            &[
                (":method", "POST"),
                (":path", path),
                ("content-type", "application/json"),
            ],
            &[body],
        );
    }

    /// `proxy_on_response_headers` with a body to follow. Sets the `response.code` property from
    /// `:status`, as Envoy does.
    pub fn response_headers(&mut self, headers: &[(&str, &str)]) -> Action {
        self.response_headers_eos(headers, false)
    }

    /// `proxy_on_response_headers` for a response without a body.
    pub fn response_headers_only(&mut self, headers: &[(&str, &str)]) -> Action {
        self.response_headers_eos(headers, true)
    }

    fn response_headers_eos(&mut self, headers: &[(&str, &str)], eos: bool) -> Action {
        if let Some(code) = headers
            .iter()
            .find(|(k, _)| *k == ":status")
            .and_then(|(_, v)| v.parse::<u64>().ok())
        {
            self.set_property("response.code", &code.to_le_bytes());
        }
        let (ctx, headers) = (self.ctx, owned_headers(headers));
        self.with_vm(|vm| vm.on_headers(ctx, MapType::ResponseHeaders, headers, eos))
    }

    /// One `proxy_on_response_body` call at the current time.
    pub fn response_chunk(&mut self, chunk: &[u8], end_of_stream: bool) -> Action {
        let ctx = self.ctx;
        self.with_vm(|vm| vm.on_body(ctx, false, chunk, end_of_stream))
    }

    /// The response body in these chunks at the current time, the last with end_of_stream.
    pub fn response_body<B: AsRef<[u8]>>(&mut self, chunks: &[B]) {
        let n = chunks.len();
        for (i, chunk) in chunks.iter().enumerate() {
            self.response_chunk(chunk.as_ref(), i + 1 == n);
        }
    }

    /// Each chunk at its time in ms after the request headers, the last with end_of_stream.
    pub fn response_body_at<B: AsRef<[u8]>>(&mut self, chunks: &[(u64, B)]) {
        let n = chunks.len();
        for (i, (at_ms, chunk)) in chunks.iter().enumerate() {
            self.at_ms(*at_ms);
            self.response_chunk(chunk.as_ref(), i + 1 == n);
        }
    }

    /// Response headers, then each chunk at its time (ms after the request headers).
    pub fn respond<B: AsRef<[u8]>>(&mut self, headers: &[(&str, &str)], chunks_at: &[(u64, B)]) {
        if chunks_at.is_empty() {
            self.response_headers_only(headers);
        } else {
            self.response_headers(headers);
            self.response_body_at(chunks_at);
        }
    }

    /// `proxy_on_request_trailers`: the request ends with trailers (no body end_of_stream).
    pub fn request_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        let (ctx, trailers) = (self.ctx, owned_headers(trailers));
        self.with_vm(|vm| vm.on_headers(ctx, MapType::RequestTrailers, trailers, true))
    }

    /// `proxy_on_response_trailers`: the response ends with trailers; as in Envoy, no body
    /// callback carries end_of_stream then.
    pub fn response_trailers(&mut self, trailers: &[(&str, &str)]) -> Action {
        let (ctx, trailers) = (self.ctx, owned_headers(trailers));
        self.with_vm(|vm| vm.on_headers(ctx, MapType::ResponseTrailers, trailers, true))
    }

    /// Moves the gateway clock to `ms` after this stream's request headers.
    pub fn at_ms(&self, ms: u64) {
        let start = self
            .started_ns
            .expect("send the request headers before timing the response");
        self.gateway.shared.clock.set_ns(start + ms * 1_000_000);
    }

    /// Sets a property the filter can read with `proxy_get_property` (`response.flags`, ...).
    pub fn set_property(&mut self, path: &str, value: &[u8]) {
        let ctx = self.ctx;
        self.with_vm(|vm| {
            vm.context(ctx)
                .properties
                .insert(path.to_owned(), value.to_vec());
            Ok(())
        })
    }

    /// Host calls the filter has made for this stream so far.
    pub fn host_calls(&self) -> u32 {
        let ctx = self.ctx;
        self.with_vm(|vm| Ok(vm.context(ctx).host_calls))
    }

    /// Every callback so far with the `Action` the filter returned.
    pub fn actions(&self) -> Vec<(Callback, Action)> {
        let ctx = self.ctx;
        self.with_vm(|vm| Ok(vm.context(ctx).actions.clone()))
    }

    /// The stream is over (normally): `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`.
    pub fn end(self) -> StreamReport {
        self.finish(0, "via_upstream")
    }

    /// The client went away before the response ended: Envoy logs the stream with the DC flag.
    pub fn client_abort(self) -> StreamReport {
        self.finish(FLAG_DOWNSTREAM_DISCONNECT, "downstream_remote_disconnect")
    }

    /// The upstream closed the body without its terminator: Envoy logs the stream with UPE.
    pub fn upstream_abort(self) -> StreamReport {
        self.finish(
            FLAG_UPSTREAM_PROTOCOL_ERROR,
            "upstream_reset_after_response_started{protocol_error}",
        )
    }

    /// Ends the stream with these `response.flags` and `response.code_details`.
    pub fn finish(mut self, flags: u64, details: &str) -> StreamReport {
        self.set_property("response.flags", &flags.to_le_bytes());
        self.set_property("response.code_details", details.as_bytes());
        let ctx = self.ctx;
        let (state, done) = self.with_vm(|vm| vm.finish(ctx));
        let request_headers = state
            .maps
            .get(&MapType::RequestHeaders)
            .cloned()
            .unwrap_or_default();
        StreamReport {
            actions: state.actions,
            changes: state.changes,
            done,
            request_sent: state.request_sent,
            response_sent: state.response_sent,
            request_headers,
            host_calls: state.host_calls,
        }
    }
}
