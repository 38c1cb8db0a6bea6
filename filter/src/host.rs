//! The host shell: the only module that talks to the proxy (Envoy) through the proxy-wasm ABI.
//!
//! It turns host callbacks into calls on the pure core ([`Exchange`]) and [`Observation`]s into stat
//! operations. Host functions are called through the raw ABI (`sys` below) rather than the SDK's
//! `hostcalls` helpers, because those panic on any status they do not expect and a panic traps the VM
//! (and with it every stream on that worker). Here every status is mapped to a `Result` and a failed
//! host call only loses the data it would have returned.
//!
//! Host calls are the filter's main cost in Envoy (about 10,000 instructions each out of V8, see
//! BENCHMARKS.md), so the data path makes as few as it can: requests on other paths cost one header
//! read; a watched one reads `:method`, and `content-length` only with `inject_stream_usage`; the
//! response headers are read in one call ([`header_pairs`]); the clock is read at the request
//! headers, once per SSE chunk that carries tokens, and in `on_log`; metric ids are cached per
//! series; the shared model registry is read once per new model name per worker; `response.flags`
//! is read only when the response did not end. Configured `label_headers` cost one header read each
//! per watched request, and their shared sets are read once per new value per worker, as for the
//! model. `tests/tests/filter/host_calls.rs` pins these budgets.

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;

use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType};

use crate::config::Config;
use crate::exchange::Exchange;
use crate::header_pairs;
use crate::labels::{
    list_append, list_contains, Admission, HeaderLabels, ModelId, ModelLabels, Registry, MODELS_KEY,
};
use crate::metrics::{LabelIds, MetricType, Op, Series};

proxy_wasm::main! {{
    std::panic::set_hook(Box::new(|info| {
        log(LogLevel::Critical, &format!("llm-metrics-filter panicked: {info}"));
    }));
    proxy_wasm::set_root_context(|_| -> Box<dyn RootContext> { Box::new(Root { vm: None }) });
}}

/// The raw proxy-wasm ABI 0.2.1 imports this filter uses. Statuses are plain `u32`s: a value the
/// host invents must not become an invalid enum.
mod sys {
    #[link(wasm_import_module = "env")]
    unsafe extern "C" {
        pub fn proxy_log(level: u32, data: *const u8, size: usize) -> u32;
        pub fn proxy_get_current_time_nanoseconds(ret: *mut u64) -> u32;
        pub fn proxy_get_buffer_bytes(
            buffer: u32,
            start: usize,
            max: usize,
            ret_data: *mut *mut u8,
            ret_size: *mut usize,
        ) -> u32;
        pub fn proxy_set_buffer_bytes(
            buffer: u32,
            start: usize,
            size: usize,
            data: *const u8,
            data_size: usize,
        ) -> u32;
        pub fn proxy_remove_header_map_value(map: u32, key: *const u8, key_size: usize) -> u32;
        pub fn proxy_get_header_map_pairs(
            map: u32,
            ret_data: *mut *mut u8,
            ret_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_header_map_value(
            map: u32,
            key: *const u8,
            key_size: usize,
            ret_data: *mut *mut u8,
            ret_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_property(
            path: *const u8,
            path_size: usize,
            ret_data: *mut *mut u8,
            ret_size: *mut usize,
        ) -> u32;
        pub fn proxy_get_shared_data(
            key: *const u8,
            key_size: usize,
            ret_data: *mut *mut u8,
            ret_size: *mut usize,
            ret_cas: *mut u32,
        ) -> u32;
        pub fn proxy_set_shared_data(
            key: *const u8,
            key_size: usize,
            data: *const u8,
            size: usize,
            cas: u32,
        ) -> u32;
        pub fn proxy_define_metric(
            kind: u32,
            name: *const u8,
            name_size: usize,
            ret_id: *mut u32,
        ) -> u32;
        pub fn proxy_increment_metric(id: u32, offset: i64) -> u32;
        pub fn proxy_record_metric(id: u32, value: u64) -> u32;
    }
}

const STATUS_OK: u32 = 0;
const STATUS_NOT_FOUND: u32 = 1;
const STATUS_CAS_MISMATCH: u32 = 8;

const BUFFER_HTTP_REQUEST_BODY: u32 = 0;
const BUFFER_HTTP_RESPONSE_BODY: u32 = 1;
const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;
const MAP_HTTP_REQUEST_HEADERS: u32 = 0;
const MAP_HTTP_RESPONSE_HEADERS: u32 = 2;

/// Attempts at the compare-and-set that admits a model name before giving up for this request.
const CAS_ATTEMPTS: usize = 16;

/// A failed host call: the raw status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HostError(u32);

#[derive(Clone, Copy)]
#[repr(u32)]
enum LogLevel {
    Info = 2,
    Error = 4,
    Critical = 5,
}

fn log(level: LogLevel, message: &str) {
    // SAFETY: pointer and length describe a live string.
    unsafe { sys::proxy_log(level as u32, message.as_ptr(), message.len()) };
}

/// Takes ownership of a buffer the host allocated in our memory (via `proxy_on_memory_allocate`).
///
/// # Safety
/// `data`/`size` must be what the host returned for a successful call.
unsafe fn owned(data: *mut u8, size: usize) -> Vec<u8> {
    if data.is_null() {
        Vec::new()
    } else {
        Vec::from_raw_parts(data, size, size)
    }
}

fn now_ns() -> u64 {
    let mut t = 0u64;
    // SAFETY: `t` outlives the call.
    match unsafe { sys::proxy_get_current_time_nanoseconds(&mut t) } {
        STATUS_OK => t,
        _ => 0,
    }
}

fn get_buffer(buffer: u32, size: usize) -> Result<Vec<u8>, HostError> {
    get_buffer_range(buffer, 0, size)
}

fn get_buffer_range(buffer: u32, start: usize, size: usize) -> Result<Vec<u8>, HostError> {
    let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: out-pointers are live; on success the host hands us the allocation.
    match unsafe { sys::proxy_get_buffer_bytes(buffer, start, size, &mut data, &mut len) } {
        // SAFETY: the call succeeded, so `data`/`len` are the allocation the host made for us.
        STATUS_OK => Ok(unsafe { owned(data, len) }),
        STATUS_NOT_FOUND => Ok(Vec::new()),
        s => Err(HostError(s)),
    }
}

fn get_header(map: u32, name: &str) -> Option<Vec<u8>> {
    let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as for `get_buffer`.
    match unsafe {
        sys::proxy_get_header_map_value(map, name.as_ptr(), name.len(), &mut data, &mut len)
    } {
        // SAFETY: the call succeeded, so `data`/`len` are the allocation the host made for us.
        STATUS_OK => Some(unsafe { owned(data, len) }),
        _ => None,
    }
}

/// Replaces `size` bytes of a body buffer (from its start) with `data`. A failure leaves the body
/// as it was.
fn set_buffer(buffer: u32, size: usize, data: &[u8]) {
    // SAFETY: pointer and length describe a live buffer.
    unsafe { sys::proxy_set_buffer_bytes(buffer, 0, size, data.as_ptr(), data.len()) };
}

fn remove_header(map: u32, name: &str) {
    // SAFETY: pointer and length describe a live string.
    unsafe { sys::proxy_remove_header_map_value(map, name.as_ptr(), name.len()) };
}

/// A whole header map in the ABI's serialised form ([`header_pairs`]); empty when it cannot be read.
fn get_header_pairs(map: u32) -> Vec<u8> {
    let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as for `get_buffer`.
    match unsafe { sys::proxy_get_header_map_pairs(map, &mut data, &mut len) } {
        // SAFETY: the call succeeded, so `data`/`len` are the allocation the host made for us.
        STATUS_OK => unsafe { owned(data, len) },
        _ => Vec::new(),
    }
}

fn get_header_str(map: u32, name: &str) -> Option<String> {
    get_header(map, name).and_then(|v| String::from_utf8(v).ok())
}

/// A property as a little-endian integer (how Envoy serialises `response.flags` and friends).
fn get_u64_property(path: &[&str]) -> Option<u64> {
    let serialized = path.join("\0");
    let (mut data, mut len) = (std::ptr::null_mut(), 0usize);
    // SAFETY: as for `get_buffer`.
    let bytes = match unsafe {
        sys::proxy_get_property(serialized.as_ptr(), serialized.len(), &mut data, &mut len)
    } {
        // SAFETY: the call succeeded, so `data`/`len` are the allocation the host made for us.
        STATUS_OK => unsafe { owned(data, len) },
        _ => return None,
    };
    let raw: [u8; 8] = bytes.get(..8)?.try_into().ok()?;
    Some(u64::from_le_bytes(raw))
}

fn get_shared(key: &str) -> Result<(Vec<u8>, u32), HostError> {
    let (mut data, mut len, mut cas) = (std::ptr::null_mut(), 0usize, 0u32);
    // SAFETY: as for `get_buffer`.
    match unsafe {
        sys::proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut len, &mut cas)
    } {
        // SAFETY: the call succeeded, so `data`/`len` are the allocation the host made for us.
        STATUS_OK => Ok((unsafe { owned(data, len) }, cas)),
        STATUS_NOT_FOUND => Ok((Vec::new(), 0)),
        s => Err(HostError(s)),
    }
}

fn set_shared(key: &str, value: &[u8], cas: u32) -> Result<(), HostError> {
    // SAFETY: pointers and lengths describe live buffers.
    match unsafe {
        sys::proxy_set_shared_data(key.as_ptr(), key.len(), value.as_ptr(), value.len(), cas)
    } {
        STATUS_OK => Ok(()),
        s => Err(HostError(s)),
    }
}

/// The process-wide label registries in shared data, one key per label (see [`crate::labels`]).
struct SharedRegistry;

impl Registry for SharedRegistry {
    fn admit(&mut self, key: &str, name: &str, max: usize) -> Admission {
        for _ in 0..CAS_ATTEMPTS {
            let Ok((list, cas)) = get_shared(key) else {
                return Admission::Unavailable;
            };
            match list_contains(&list, name) {
                (true, _) => return Admission::Admitted,
                (false, n) if n >= max => return Admission::Full,
                (false, _) => {}
            }
            match set_shared(key, &list_append(&list, name), cas) {
                // A first write (cas 0) is unconditional in Envoy: check it was not lost to a racing
                // first write from another worker before trusting it.
                Ok(()) if cas != 0 => return Admission::Admitted,
                Ok(()) => continue,
                Err(HostError(STATUS_CAS_MISMATCH)) => continue,
                Err(_) => return Admission::Unavailable,
            }
        }
        Admission::Unavailable
    }
}

/// Creates an (empty) shared label list (the model list, or an extra label's) if no worker has yet.
/// Envoy's first write of a key ignores compare-and-set, so two workers admitting their first values
/// at once could each overwrite the other's entry; with the key created here, at start-up, every
/// later write is a real CAS. Racing creators all write the same empty value, which is harmless.
fn create_registry(key: &str) {
    if let Ok((list, 0)) = get_shared(key) {
        if list.is_empty() {
            let _ = set_shared(key, b"", 0);
        }
    }
}

/// Per-VM state shared by the root context and every HTTP context of one worker.
struct Vm {
    config: Config,
    models: RefCell<ModelLabels>,
    /// The extra labels (`label_headers`).
    extra: RefCell<HeaderLabels>,
    /// Metric ids by series key and extra label ids ([`Series::key_with`]).
    metric_ids: RefCell<HashMap<(u64, LabelIds), u32>>,
}

impl Vm {
    /// The extra label ids of a request (one header read per configured entry).
    fn resolve_labels(&self) -> LabelIds {
        match self.extra.try_borrow_mut() {
            Ok(mut extra) if !extra.is_empty() => extra.resolve(
                |name| get_header(MAP_HTTP_REQUEST_HEADERS, name),
                &mut SharedRegistry,
            ),
            // No extra labels; or (never: contexts run one at a time) a re-entrant call: `none`.
            _ => LabelIds::default(),
        }
    }

    fn resolve_model(&self, raw: Option<&str>) -> ModelId {
        match self.models.try_borrow_mut() {
            Ok(mut models) => models.resolve(raw, &mut SharedRegistry),
            Err(_) => ModelId::OTHER,
        }
    }

    fn metric_id(&self, series: &Series, labels: LabelIds) -> Option<u32> {
        let key = series.key_with(labels);
        if let Some(id) = self.metric_ids.try_borrow().ok()?.get(&key) {
            return Some(*id);
        }
        let name = {
            let models = self.models.try_borrow().ok()?;
            let extra = self.extra.try_borrow().ok()?;
            series.stat_name_with(
                models.name(series.model().unwrap_or(ModelId::UNKNOWN)),
                extra.names().as_slice(),
                extra.values(labels).as_slice(),
            )
        };
        let kind = match series.metric_type() {
            MetricType::Counter => 0,
            MetricType::Gauge => 1,
            MetricType::Histogram => 2,
        };
        let mut id = 0u32;
        // SAFETY: pointers describe a live string and a live out-value.
        if unsafe { sys::proxy_define_metric(kind, name.as_ptr(), name.len(), &mut id) }
            != STATUS_OK
        {
            return None;
        }
        self.metric_ids.try_borrow_mut().ok()?.insert(key, id);
        Some(id)
    }

    fn apply(&self, series: Series, labels: LabelIds, op: Op) {
        let Some(id) = self.metric_id(&series, labels) else {
            return;
        };
        // Statuses are ignored on purpose: a stat that cannot be updated must not affect traffic.
        // SAFETY: plain values.
        unsafe {
            match op {
                Op::Add(n) => sys::proxy_increment_metric(id, i64::try_from(n).unwrap_or(i64::MAX)),
                Op::GaugeAdd(n) => sys::proxy_increment_metric(id, n),
                Op::Record(v) => sys::proxy_record_metric(id, v),
            };
        }
    }
}

struct Root {
    vm: Option<Rc<Vm>>,
}

impl Context for Root {}

impl RootContext for Root {
    fn on_configure(&mut self, size: usize) -> bool {
        let bytes = match get_buffer(BUFFER_PLUGIN_CONFIGURATION, size) {
            Ok(b) => b,
            Err(HostError(s)) => {
                log(
                    LogLevel::Error,
                    &format!(
                        "llm-metrics-filter: cannot read the plugin configuration (status {s})"
                    ),
                );
                return false;
            }
        };
        match Config::parse(&bytes) {
            Ok(config) => {
                if config.models.is_empty() {
                    create_registry(MODELS_KEY);
                }
                let models = ModelLabels::new(&config.models, config.max_models);
                let extra = HeaderLabels::new(&config.label_headers);
                for key in extra.registry_keys() {
                    create_registry(key);
                }
                self.vm = Some(Rc::new(Vm {
                    config,
                    models: RefCell::new(models),
                    extra: RefCell::new(extra),
                    metric_ids: RefCell::new(HashMap::new()),
                }));
                log(LogLevel::Info, "llm-metrics-filter: configured");
                true
            }
            Err(e) => {
                log(
                    LogLevel::Error,
                    &format!("llm-metrics-filter: invalid configuration: {e}"),
                );
                false
            }
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        Some(Box::new(Filter {
            vm: self.vm.clone(),
            exchange: None,
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

/// One HTTP stream. `exchange` is `None` for requests the filter does not watch.
struct Filter {
    vm: Option<Rc<Vm>>,
    exchange: Option<Exchange>,
}

impl Filter {
    fn request_chunk(&mut self, chunk: &[u8], end: bool) {
        let (Some(vm), Some(ex)) = (&self.vm, &mut self.exchange) else {
            return;
        };
        if ex.request_body(chunk, end, &vm.config, &mut |m| vm.resolve_model(m)) {
            vm.apply(
                Series::ActiveRequests {
                    model: ex.model(),
                    api: ex.api(),
                },
                ex.labels(),
                Op::GaugeAdd(1),
            );
        }
    }
}

impl Context for Filter {}

impl HttpContext for Filter {
    fn on_http_request_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let Some(vm) = &self.vm else {
            return Action::Continue;
        };
        let Some(api) = get_header_str(MAP_HTTP_REQUEST_HEADERS, ":path")
            .and_then(|p| vm.config.api_for_path(&p))
        else {
            return Action::Continue;
        };
        if get_header(MAP_HTTP_REQUEST_HEADERS, ":method").as_deref() != Some(b"POST") {
            return Action::Continue;
        }
        let mut ex = Exchange::new(api, now_ns());
        ex.set_labels(vm.resolve_labels());
        if ex.hold_request(&vm.config, end_of_stream, || {
            get_header_str(MAP_HTTP_REQUEST_HEADERS, "content-length")
        }) {
            // `inject_stream_usage`: the body is held and may grow. Envoy turns a paused
            // `on_http_request_headers` into "stop all" (no body callbacks until resumed), so the
            // headers go on now, without a length: the upstream receives the body chunked.
            remove_header(MAP_HTTP_REQUEST_HEADERS, "content-length");
        }
        self.exchange = Some(ex);
        if end_of_stream {
            self.request_chunk(&[], true);
        }
        Action::Continue
    }

    fn on_http_request_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let Some(ex) = self.exchange.as_ref() else {
            return Action::Continue;
        };
        if ex.holding_request() {
            // While the filter pauses, Envoy accumulates the body: `size` is all of it so far, and
            // only the bytes after what was already read are new.
            let seen = ex.held_request_bytes();
            let chunk = get_buffer_range(BUFFER_HTTP_REQUEST_BODY, seen, size.saturating_sub(seen))
                .unwrap_or_default();
            self.request_chunk(&chunk, end_of_stream);
            let Some(ex) = self.exchange.as_mut() else {
                return Action::Continue;
            };
            if let Some(body) = ex.take_rewritten_request() {
                set_buffer(BUFFER_HTTP_REQUEST_BODY, size, &body);
            }
            return if ex.holding_request() {
                Action::Pause
            } else {
                Action::Continue
            };
        }
        if ex.wants_request_body() {
            let chunk = get_buffer(BUFFER_HTTP_REQUEST_BODY, size).unwrap_or_default();
            self.request_chunk(&chunk, end_of_stream);
        }
        Action::Continue
    }

    fn on_http_request_trailers(&mut self, _trailers: usize) -> Action {
        if let Some(ex) = self.exchange.as_mut() {
            // A held body that ends with trailers goes on as it is.
            ex.release_request();
            if ex.wants_request_body() {
                self.request_chunk(&[], true);
            }
        }
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _headers: usize, end_of_stream: bool) -> Action {
        let (Some(vm), Some(ex)) = (&self.vm, &mut self.exchange) else {
            return Action::Continue;
        };
        // One host call for the three headers read here.
        let map = get_header_pairs(MAP_HTTP_RESPONSE_HEADERS);
        let text = |name: &str| {
            header_pairs::first(&map, name.as_bytes()).and_then(|v| std::str::from_utf8(v).ok())
        };
        let status = text(":status").and_then(|s| s.trim().parse().ok());
        ex.response_headers(
            status,
            text("content-type"),
            text("content-encoding"),
            end_of_stream,
            &vm.config,
        );
        if ex.rewrites_response() {
            // The stream loses bytes on its way: its length (rare on a stream) no longer holds.
            remove_header(MAP_HTTP_RESPONSE_HEADERS, "content-length");
        }
        Action::Continue
    }

    fn on_http_response_body(&mut self, size: usize, end_of_stream: bool) -> Action {
        let (Some(vm), Some(ex)) = (&self.vm, &mut self.exchange) else {
            return Action::Continue;
        };
        let rewrite = ex.rewrites_response();
        if ex.wants_response_body() || rewrite {
            let chunk = get_buffer(BUFFER_HTTP_RESPONSE_BODY, size).unwrap_or_default();
            // A body the exchange no longer reads still ends through `response_body`.
            ex.response_body(&chunk, end_of_stream, &vm.config, &mut now_ns);
            if let Some(out) = ex.rewrite_response(&chunk, end_of_stream) {
                set_buffer(BUFFER_HTTP_RESPONSE_BODY, size, &out);
            }
        } else if end_of_stream {
            ex.response_end();
        }
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _trailers: usize) -> Action {
        if let Some(ex) = &mut self.exchange {
            ex.response_end();
        }
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(vm), Some(mut ex)) = (&self.vm, self.exchange.take()) else {
            return;
        };
        let observation = ex.finish(now_ns(), &mut || {
            get_u64_property(&["response", "flags"]).unwrap_or(0)
        });
        observation.for_each_op(&mut |series, op| vm.apply(series, observation.labels, op));
    }
}
