//! The native host shell: the same core as [`crate::host`] (the proxy-wasm shell), loaded by Envoy
//! 1.40 as a dynamic module (`envoy.filters.http.dynamic_modules`, `libllm_metrics_filter.so`).
//!
//! Why a second shell: a proxy-wasm filter pays V8's per-callback floor and copies every body chunk
//! into the VM. Here Envoy calls plain C functions on its worker threads and the filter reads body
//! slices in place, so the filter's cost is its own parsing plus a few direct calls.
//!
//! It turns Envoy's event hooks (`envoy_dynamic_module_on_*`) into calls on the pure core
//! ([`Exchange`]) and [`Observation`]s into Envoy stats through the callbacks Envoy exports
//! (`envoy_dynamic_module_callback_*`). The declarations in [`abi`] are written from the ABI header
//! of Envoy v1.40.0 (`source/extensions/dynamic_modules/abi/abi.h`); the end-to-end tests prove them
//! against the real binary.
//!
//! What differs from the wasm shell, and why:
//! - Stats are defined once per metric at configuration time with their label names, and each update
//!   passes label values: Envoy tags them natively, no `stats_tags` needed. With the runtime flag
//!   `envoy.reloadable_features.dynamic_modules_strip_custom_stat_prefix` they come out of
//!   `/stats/prometheus` under exactly the wasm build's names (see `envoy/envoy-dynamic-module.yaml`).
//! - The process-wide model cap (and each extra label's cap) lives in this library's memory
//!   ([`PROCESS_LISTS`]), shared by every worker thread and every filter configuration, as
//!   proxy-wasm shared data is for the wasm build.
//! - Extra labels (`label_headers`) are part of each metric's definition (its label names), so
//!   they need no `stats_tags` either.
//! - The clock is the process's monotonic clock: no host call.
//! - End-of-stream accounting runs in the stream-complete hook (in 1.40 `destroy` comes after the
//!   stream is gone).
//! - Nothing may unwind into Envoy: every hook runs behind [`guard`]; a panic (there should be none:
//!   the crate denies unwrap/expect/panic/indexing) drops that stream's observation and nothing else.

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use crate::config::Config;
use crate::exchange::Exchange;
use crate::labels::{admit_to_list, Admission, HeaderLabels, ModelId, ModelLabels, Registry};
use crate::metrics::{LabelIds, Metric, MetricType, Op, Series, MAX_ALL_LABELS, MAX_EXTRA_LABELS};

/// The Envoy 1.40 dynamic-module ABI: the few types, hooks and callbacks this shell uses, declared
/// from the v1.40.0 header. C enums are `int`-sized; statuses are plain integers here so that a value
/// Envoy adds later cannot become an invalid Rust enum.
#[allow(non_camel_case_types)]
pub mod abi {
    use std::ffi::c_void;

    /// The ABI version Envoy 1.40 checks (it logs "Dynamic module ABI version v0.2.0 matched.").
    pub const ABI_VERSION: &std::ffi::CStr = c"v0.2.0";

    pub type FilterConfigEnvoyPtr = *mut c_void;
    pub type FilterConfigModulePtr = *const c_void;
    pub type FilterEnvoyPtr = *mut c_void;
    pub type FilterModulePtr = *const c_void;

    /// A buffer Envoy owns (`envoy_dynamic_module_type_envoy_buffer`).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct EnvoyBuffer {
        pub ptr: *const u8,
        pub length: usize,
    }

    impl EnvoyBuffer {
        pub const EMPTY: EnvoyBuffer = EnvoyBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };

        /// # Safety
        /// The buffer must be one Envoy filled in during the current hook.
        pub unsafe fn as_bytes<'a>(self) -> &'a [u8] {
            if self.ptr.is_null() || self.length == 0 {
                &[]
            } else {
                std::slice::from_raw_parts(self.ptr, self.length)
            }
        }
    }

    /// A buffer the module owns (`envoy_dynamic_module_type_module_buffer`).
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub struct ModuleBuffer {
        pub ptr: *const u8,
        pub length: usize,
    }

    impl ModuleBuffer {
        pub const EMPTY: ModuleBuffer = ModuleBuffer {
            ptr: std::ptr::null(),
            length: 0,
        };

        pub fn of(s: &str) -> ModuleBuffer {
            ModuleBuffer::of_bytes(s.as_bytes())
        }

        pub fn of_bytes(b: &[u8]) -> ModuleBuffer {
            ModuleBuffer {
                ptr: b.as_ptr(),
                length: b.len(),
            }
        }
    }

    /// `envoy_dynamic_module_type_http_header_type`.
    pub const REQUEST_HEADER: u32 = 0;
    pub const RESPONSE_HEADER: u32 = 2;
    /// `envoy_dynamic_module_type_http_body_type`.
    pub const RECEIVED_REQUEST_BODY: u32 = 0;
    pub const BUFFERED_REQUEST_BODY: u32 = 1;
    pub const RECEIVED_RESPONSE_BODY: u32 = 2;
    /// `envoy_dynamic_module_type_attribute_id_ResponseFlags`.
    pub const ATTRIBUTE_RESPONSE_FLAGS: u32 = 17;
    /// `envoy_dynamic_module_type_log_level`.
    pub const LOG_INFO: u32 = 2;
    pub const LOG_ERROR: u32 = 4;
    /// `envoy_dynamic_module_type_metrics_result_Success`.
    pub const METRICS_SUCCESS: u32 = 0;
    /// `..._on_http_filter_*_status_Continue` (every filter status enum starts with it).
    pub const CONTINUE: u32 = 0;
    /// `..._request_headers_status_StopIteration` (`inject_stream_usage` holds the headers).
    pub const STOP_ITERATION: u32 = 1;
    /// `..._request_body_status_StopIterationAndBuffer` (and the body with them).
    pub const STOP_ITERATION_AND_BUFFER: u32 = 1;

    unsafe extern "C" {
        pub fn envoy_dynamic_module_callback_log(level: u32, message: ModuleBuffer);

        pub fn envoy_dynamic_module_callback_http_filter_config_define_counter(
            config: FilterConfigEnvoyPtr,
            name: ModuleBuffer,
            label_names: *const ModuleBuffer,
            label_names_length: usize,
            id: *mut usize,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_define_gauge(
            config: FilterConfigEnvoyPtr,
            name: ModuleBuffer,
            label_names: *const ModuleBuffer,
            label_names_length: usize,
            id: *mut usize,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_config_define_histogram(
            config: FilterConfigEnvoyPtr,
            name: ModuleBuffer,
            label_names: *const ModuleBuffer,
            label_names_length: usize,
            id: *mut usize,
        ) -> u32;

        pub fn envoy_dynamic_module_callback_http_filter_increment_counter(
            filter: FilterEnvoyPtr,
            id: usize,
            label_values: *const ModuleBuffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_increment_gauge(
            filter: FilterEnvoyPtr,
            id: usize,
            label_values: *const ModuleBuffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_decrement_gauge(
            filter: FilterEnvoyPtr,
            id: usize,
            label_values: *const ModuleBuffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;
        pub fn envoy_dynamic_module_callback_http_filter_record_histogram_value(
            filter: FilterEnvoyPtr,
            id: usize,
            label_values: *const ModuleBuffer,
            label_values_length: usize,
            value: u64,
        ) -> u32;

        pub fn envoy_dynamic_module_callback_http_get_header(
            filter: FilterEnvoyPtr,
            header_type: u32,
            key: ModuleBuffer,
            result: *mut EnvoyBuffer,
            index: usize,
            optional_size: *mut usize,
        ) -> bool;

        pub fn envoy_dynamic_module_callback_http_set_header(
            filter: FilterEnvoyPtr,
            header_type: u32,
            key: ModuleBuffer,
            value: ModuleBuffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_append_body(
            filter: FilterEnvoyPtr,
            body_type: u32,
            data: ModuleBuffer,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_drain_body(
            filter: FilterEnvoyPtr,
            body_type: u32,
            number_of_bytes: usize,
        ) -> bool;
        pub fn envoy_dynamic_module_callback_http_get_body_chunks_size(
            filter: FilterEnvoyPtr,
            body_type: u32,
        ) -> usize;
        pub fn envoy_dynamic_module_callback_http_get_body_chunks(
            filter: FilterEnvoyPtr,
            body_type: u32,
            result: *mut EnvoyBuffer,
        ) -> bool;

        pub fn envoy_dynamic_module_callback_http_filter_get_attribute_int(
            filter: FilterEnvoyPtr,
            attribute_id: u32,
            result: *mut u64,
        ) -> bool;
    }
}

use abi::{EnvoyBuffer, FilterEnvoyPtr, ModuleBuffer};

/// Runs a hook body; a panic is caught (it must not unwind into Envoy) and yields `fallback`.
fn guard<T>(fallback: T, body: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(body)).unwrap_or(fallback)
}

fn log(level: u32, message: &str) {
    // SAFETY: the buffer describes a live string for the duration of the call.
    unsafe { abi::envoy_dynamic_module_callback_log(level, ModuleBuffer::of(message)) };
}

/// Nanoseconds on the process's monotonic clock (only differences matter to the core).
fn now_ns() -> u64 {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    u64::try_from(EPOCH.get_or_init(Instant::now).elapsed().as_nanos()).unwrap_or(u64::MAX)
}

/// The process-wide sets of admitted label values by registry key (the model names, and each extra
/// label's values), in the same `\n`-separated format the wasm build keeps in proxy-wasm shared data
/// (see [`crate::labels`]). Every worker and every filter configuration in the process shares them,
/// so `max_models` and `max_values` bound the whole process as in the wasm build.
static PROCESS_LISTS: Mutex<BTreeMap<String, Vec<u8>>> = Mutex::new(BTreeMap::new());

struct ProcessRegistry;

impl Registry for ProcessRegistry {
    fn admit(&mut self, key: &str, name: &str, max: usize) -> Admission {
        let Ok(mut lists) = PROCESS_LISTS.lock() else {
            return Admission::Unavailable;
        };
        if let Some(list) = lists.get_mut(key) {
            return admit_to_list(list, name, max);
        }
        admit_to_list(lists.entry(key.to_owned()).or_default(), name, max)
    }
}

/// One filter configuration (one `filter_config` in Envoy), shared by every worker thread.
struct FilterConfig {
    config: Config,
    labels: Mutex<ModelLabels>,
    /// The extra labels (`label_headers`); `None` when there are none (no lock per request).
    extra: Option<Mutex<HeaderLabels>>,
    /// Envoy's metric id per [`Metric`], in [`Metric::ALL`] order.
    metric_ids: [usize; Metric::ALL.len()],
}

impl FilterConfig {
    fn new(envoy: abi::FilterConfigEnvoyPtr, config: Config) -> Result<FilterConfig, String> {
        let extra = HeaderLabels::new(&config.label_headers);
        let extra_names = extra.names();
        let mut metric_ids = [0usize; Metric::ALL.len()];
        for (slot, metric) in metric_ids.iter_mut().zip(Metric::ALL) {
            let mut names = [ModuleBuffer::EMPTY; MAX_ALL_LABELS];
            let mut count = 0;
            for (b, n) in names
                .iter_mut()
                .zip(metric.label_names_with(extra_names.as_slice()))
            {
                *b = ModuleBuffer::of(n);
                count += 1;
            }
            let define = match metric.metric_type() {
                MetricType::Counter => {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_counter
                }
                MetricType::Gauge => {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_gauge
                }
                MetricType::Histogram => {
                    abi::envoy_dynamic_module_callback_http_filter_config_define_histogram
                }
            };
            // SAFETY: `envoy` is the config pointer Envoy passed to config_new; the name and label
            // buffers outlive the call; `slot` is a live out-value.
            let status = unsafe {
                define(
                    envoy,
                    ModuleBuffer::of(metric.name()),
                    names.as_ptr(),
                    count,
                    slot,
                )
            };
            if status != abi::METRICS_SUCCESS {
                return Err(format!(
                    "cannot define metric {} (status {status})",
                    metric.name()
                ));
            }
        }
        Ok(FilterConfig {
            labels: Mutex::new(ModelLabels::new(&config.models, config.max_models)),
            extra: (!extra.is_empty()).then(|| Mutex::new(extra)),
            config,
            metric_ids,
        })
    }

    fn metric_id(&self, metric: Metric) -> usize {
        let index = Metric::ALL
            .iter()
            .position(|m| *m == metric)
            .unwrap_or_default();
        self.metric_ids.get(index).copied().unwrap_or_default()
    }

    /// The label id and label value for a request's `model`.
    fn resolve_model(&self, raw: Option<&str>) -> (ModelId, Arc<str>) {
        match self.labels.lock() {
            Ok(mut labels) => {
                let id = labels.resolve(raw, &mut ProcessRegistry);
                (id, labels.shared_name(id))
            }
            Err(_) => (ModelId::OTHER, Arc::from("other")),
        }
    }

    /// The extra label ids of a request (one header read per configured entry).
    fn resolve_labels(&self, envoy: FilterEnvoyPtr) -> LabelIds {
        match self.extra.as_ref().map(Mutex::lock) {
            Some(Ok(mut extra)) => extra.resolve(
                |name| header(envoy, abi::REQUEST_HEADER, name),
                &mut ProcessRegistry,
            ),
            Some(Err(_)) | None => LabelIds::default(),
        }
    }

    /// The label values of an exchange's extra label ids (empty without `label_headers`).
    fn label_values(&self, ids: LabelIds) -> [Option<Arc<str>>; MAX_EXTRA_LABELS] {
        match self.extra.as_ref().map(Mutex::lock) {
            Some(Ok(extra)) => extra.shared_values(ids),
            // A panic while the lock was held (there should be none) leaves the names intact.
            Some(Err(poisoned)) => poisoned.into_inner().shared_values(ids),
            None => Default::default(),
        }
    }
}

/// One HTTP stream. `exchange` is `None` for requests the filter does not watch.
struct Filter {
    config: *const FilterConfig,
    exchange: Option<Exchange>,
    /// The label value of the exchange's model, once decided.
    model: Option<Arc<str>>,
}

impl Filter {
    fn config(&self) -> &FilterConfig {
        // SAFETY: Envoy keeps a filter's configuration alive until every filter made from it is
        // destroyed (each filter holds a reference to it), and the pointer came from config_new.
        unsafe { &*self.config }
    }

    /// One stat update; `extra` holds the exchange's extra label values ([`FilterConfig::label_values`]).
    fn apply(
        &self,
        envoy: FilterEnvoyPtr,
        series: Series,
        extra: &[Option<Arc<str>>; MAX_EXTRA_LABELS],
        op: Op,
    ) {
        let config = self.config();
        let model = self.model.as_deref().unwrap_or("unknown");
        let mut extra_values = [""; MAX_EXTRA_LABELS];
        let mut count = 0;
        for (slot, v) in extra_values
            .iter_mut()
            .zip(extra.iter().map_while(Option::as_deref))
        {
            *slot = v;
            count += 1;
        }
        let values = series.label_values_with(model, extra_values.get(..count).unwrap_or(&[]));
        let mut buffers = [ModuleBuffer::EMPTY; MAX_ALL_LABELS];
        for (b, v) in buffers.iter_mut().zip(values.as_slice()) {
            *b = ModuleBuffer::of(v);
        }
        let (ptr, len) = (buffers.as_ptr(), values.as_slice().len());
        let id = config.metric_id(series.metric());
        // Statuses are ignored on purpose: a stat that cannot be updated must not affect traffic.
        // SAFETY: `envoy` is the live filter pointer of the current hook; label buffers outlive the
        // call and match the label names the metric was defined with.
        unsafe {
            match op {
                Op::Add(n) => {
                    abi::envoy_dynamic_module_callback_http_filter_increment_counter(
                        envoy, id, ptr, len, n,
                    );
                }
                Op::GaugeAdd(n) if n >= 0 => {
                    abi::envoy_dynamic_module_callback_http_filter_increment_gauge(
                        envoy,
                        id,
                        ptr,
                        len,
                        n.unsigned_abs(),
                    );
                }
                Op::GaugeAdd(n) => {
                    abi::envoy_dynamic_module_callback_http_filter_decrement_gauge(
                        envoy,
                        id,
                        ptr,
                        len,
                        n.unsigned_abs(),
                    );
                }
                Op::Record(v) => {
                    abi::envoy_dynamic_module_callback_http_filter_record_histogram_value(
                        envoy, id, ptr, len, v,
                    );
                }
            }
        }
    }

    fn request_chunk(&mut self, envoy: FilterEnvoyPtr, chunk: &[u8], end: bool) {
        let config = self.config;
        // SAFETY: as in `Filter::config` (a copy of the pointer, so `self` stays borrowable).
        let config: &FilterConfig = unsafe { &*config };
        let Some(ex) = &mut self.exchange else {
            return;
        };
        let mut name = None;
        let decided = ex.request_body(chunk, end, &config.config, &mut |raw| {
            let (id, label) = config.resolve_model(raw);
            name = Some(label);
            id
        });
        if decided {
            self.model = name;
            let series = Series::ActiveRequests {
                model: ex.model(),
                api: ex.api(),
            };
            let extra = config.label_values(ex.labels());
            self.apply(envoy, series, &extra, Op::GaugeAdd(1));
        }
    }
}

fn header(envoy: FilterEnvoyPtr, map: u32, name: &str) -> Option<&'static [u8]> {
    let mut out = EnvoyBuffer::EMPTY;
    // SAFETY: `envoy` is the live filter pointer; `out` is a live out-value.
    let found = unsafe {
        abi::envoy_dynamic_module_callback_http_get_header(
            envoy,
            map,
            ModuleBuffer::of(name),
            &mut out,
            0,
            std::ptr::null_mut(),
        )
    };
    // SAFETY: Envoy filled `out` in this hook; callers use it before the hook returns.
    (found && !out.ptr.is_null()).then(|| unsafe { out.as_bytes() })
}

fn header_str(envoy: FilterEnvoyPtr, map: u32, name: &str) -> Option<&'static str> {
    header(envoy, map, name).and_then(|v| std::str::from_utf8(v).ok())
}

/// Appends the bytes of a body past its first `skip` to `out`; returns the body's whole length.
fn body_from(envoy: FilterEnvoyPtr, body_type: u32, skip: usize, out: &mut Vec<u8>) -> usize {
    let mut offset = 0;
    for_each_body_slice(envoy, body_type, |slice, _| {
        let from = skip.saturating_sub(offset).min(slice.len());
        out.extend_from_slice(slice.get(from..).unwrap_or_default());
        offset += slice.len();
    });
    offset
}

/// Most body slices read without allocating; a body in more slices (rare) goes through a `Vec`.
const INLINE_SLICES: usize = 8;

/// Calls `f` on each slice of the body Envoy received in this hook, in order, without copying;
/// `f` learns whether a slice is the last one.
fn for_each_body_slice(envoy: FilterEnvoyPtr, body_type: u32, mut f: impl FnMut(&[u8], bool)) {
    // SAFETY: `envoy` is the live filter pointer.
    let n =
        unsafe { abi::envoy_dynamic_module_callback_http_get_body_chunks_size(envoy, body_type) };
    if n == 0 {
        f(&[], true);
        return;
    }
    let mut inline = [EnvoyBuffer::EMPTY; INLINE_SLICES];
    let mut heap = Vec::new();
    let slots: &mut [EnvoyBuffer] = if n <= INLINE_SLICES {
        inline.get_mut(..n).unwrap_or(&mut [])
    } else {
        heap.resize(n, EnvoyBuffer::EMPTY);
        &mut heap
    };
    // SAFETY: `slots` has room for the `n` buffers Envoy reported.
    if !unsafe {
        abi::envoy_dynamic_module_callback_http_get_body_chunks(
            envoy,
            body_type,
            slots.as_mut_ptr(),
        )
    } {
        f(&[], true);
        return;
    }
    let last = slots.len().saturating_sub(1);
    for (i, b) in slots.iter().enumerate() {
        // SAFETY: Envoy filled the buffers in this hook and they stay valid until it returns.
        f(unsafe { b.as_bytes() }, i == last);
    }
}

// ------------------------------------------------------------------------------------------------
// Event hooks Envoy calls. Each one Envoy looks up must be exported, also those this filter does not
// use (HTTP callouts and streams, scheduling, watermarks).

/// # Safety
/// Called by Envoy once when it loads the library.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_program_init() -> *const std::ffi::c_char {
    abi::ABI_VERSION.as_ptr()
}

/// # Safety
/// Called by Envoy on the main thread with its config pointer and two buffers valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: abi::FilterConfigEnvoyPtr,
    _name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> abi::FilterConfigModulePtr {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy passes a buffer valid for this call.
        let bytes = unsafe { config.as_bytes() };
        let parsed = match Config::parse(bytes) {
            Ok(c) => c,
            Err(e) => {
                log(
                    abi::LOG_ERROR,
                    &format!("llm-metrics-filter: invalid configuration: {e}"),
                );
                return std::ptr::null();
            }
        };
        match FilterConfig::new(envoy, parsed) {
            Ok(c) => {
                log(abi::LOG_INFO, "llm-metrics-filter: configured");
                Box::into_raw(Box::new(c)).cast_const().cast()
            }
            Err(e) => {
                log(abi::LOG_ERROR, &format!("llm-metrics-filter: {e}"));
                std::ptr::null()
            }
        }
    })
}

/// # Safety
/// `config` must be a pointer returned by `envoy_dynamic_module_on_http_filter_config_new`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(
    config: abi::FilterConfigModulePtr,
) {
    if !config.is_null() {
        // SAFETY: made by Box::into_raw in config_new; Envoy destroys it once.
        drop(unsafe { Box::from_raw(config.cast::<FilterConfig>().cast_mut()) });
    }
}

/// # Safety
/// `config` must be a pointer returned by `envoy_dynamic_module_on_http_filter_config_new`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: abi::FilterConfigModulePtr,
    _envoy: FilterEnvoyPtr,
) -> abi::FilterModulePtr {
    guard(std::ptr::null(), || {
        Box::into_raw(Box::new(Filter {
            config: config.cast(),
            exchange: None,
            model: None,
        }))
        .cast_const()
        .cast()
    })
}

/// The filter behind a module pointer.
///
/// # Safety
/// `filter` must be a pointer returned by `envoy_dynamic_module_on_http_filter_new` and not yet
/// destroyed; Envoy calls a stream's hooks one at a time on one thread.
unsafe fn filter<'a>(filter: abi::FilterModulePtr) -> Option<&'a mut Filter> {
    filter.cast::<Filter>().cast_mut().as_mut()
}

/// # Safety
/// `module` must be a pointer returned by `envoy_dynamic_module_on_http_filter_new`.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(module: abi::FilterModulePtr) {
    if !module.is_null() {
        // SAFETY: made by Box::into_raw in filter_new; Envoy destroys it once.
        drop(unsafe { Box::from_raw(module.cast::<Filter>().cast_mut()) });
    }
}

/// Runs a stream hook on the module's filter behind `module` (nothing when there is none) and
/// answers Envoy's "continue": the filter never stops, buffers or alters a stream (beyond
/// `inject_stream_usage`, whose hooks use [`on_stream_status`]).
///
/// # Safety
/// `module` must be a live pointer returned by `envoy_dynamic_module_on_http_filter_new`.
unsafe fn on_stream(module: abi::FilterModulePtr, hook: impl FnOnce(&mut Filter)) -> u32 {
    // SAFETY: the same contract.
    unsafe {
        on_stream_status(module, |f| {
            hook(f);
            abi::CONTINUE
        })
    }
}

/// [`on_stream`] for a hook that picks its status; a panic (or no filter) still answers "continue".
///
/// # Safety
/// As for [`on_stream`].
unsafe fn on_stream_status(
    module: abi::FilterModulePtr,
    hook: impl FnOnce(&mut Filter) -> u32,
) -> u32 {
    guard(abi::CONTINUE, || {
        // SAFETY: see the function's contract.
        match unsafe { filter(module) } {
            Some(f) => hook(f),
            None => abi::CONTINUE,
        }
    })
}

/// Replaces the body Envoy holds for this stream (what it buffered, and the chunk of this hook)
/// with `body`, and its `content-length` when it has one (`inject_stream_usage`).
fn replace_request_body(envoy: FilterEnvoyPtr, buffered: usize, received: usize, body: &[u8]) {
    // SAFETY: `envoy` is the live filter pointer; `body` and the header strings outlive the calls.
    unsafe {
        abi::envoy_dynamic_module_callback_http_drain_body(
            envoy,
            abi::BUFFERED_REQUEST_BODY,
            buffered,
        );
        abi::envoy_dynamic_module_callback_http_drain_body(
            envoy,
            abi::RECEIVED_REQUEST_BODY,
            received,
        );
        abi::envoy_dynamic_module_callback_http_append_body(
            envoy,
            abi::RECEIVED_REQUEST_BODY,
            ModuleBuffer::of_bytes(body),
        );
    }
    if header(envoy, abi::REQUEST_HEADER, "content-length").is_some() {
        let length = body.len().to_string();
        // SAFETY: as above.
        unsafe {
            abi::envoy_dynamic_module_callback_http_set_header(
                envoy,
                abi::REQUEST_HEADER,
                ModuleBuffer::of("content-length"),
                ModuleBuffer::of(&length),
            )
        };
    }
}

/// Replaces the response chunk of this hook (`len` bytes) with `data`.
fn replace_response_chunk(envoy: FilterEnvoyPtr, len: usize, data: &[u8]) {
    // SAFETY: `envoy` is the live filter pointer; `data` outlives the calls.
    unsafe {
        abi::envoy_dynamic_module_callback_http_drain_body(envoy, abi::RECEIVED_RESPONSE_BODY, len);
        abi::envoy_dynamic_module_callback_http_append_body(
            envoy,
            abi::RECEIVED_RESPONSE_BODY,
            ModuleBuffer::of_bytes(data),
        );
    }
}

impl Filter {
    /// The configuration and, for a watched request, the exchange, borrowed apart.
    fn parts<'a>(&'a mut self) -> (&'a FilterConfig, Option<&'a mut Exchange>) {
        // SAFETY: as in `Filter::config`; a copy of the pointer, so the exchange stays borrowable.
        let config: &'a FilterConfig = unsafe { &*self.config };
        (config, self.exchange.as_mut())
    }
}

/// # Safety
/// Envoy's filter pointer and this module's filter pointer of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    envoy: FilterEnvoyPtr,
    module: abi::FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    on_stream_status(module, |f| {
        let Some(api) = header_str(envoy, abi::REQUEST_HEADER, ":path")
            .and_then(|p| f.config().config.api_for_path(p))
        else {
            return abi::CONTINUE;
        };
        if header(envoy, abi::REQUEST_HEADER, ":method") != Some(b"POST") {
            return abi::CONTINUE;
        }
        let mut ex = Exchange::new(api, now_ns());
        ex.set_labels(f.config().resolve_labels(envoy));
        let hold = ex.hold_request(&f.config().config, end_of_stream, || {
            header_str(envoy, abi::REQUEST_HEADER, "content-length")
        });
        f.exchange = Some(ex);
        if end_of_stream {
            f.request_chunk(envoy, &[], true);
        }
        if hold {
            // `inject_stream_usage`: the headers wait until the body has been read (and rewritten).
            abi::STOP_ITERATION
        } else {
            abi::CONTINUE
        }
    })
}

/// # Safety
/// Envoy's filter pointer and this module's filter pointer of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    envoy: FilterEnvoyPtr,
    module: abi::FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    on_stream_status(module, |f| {
        let Some(ex) = f.exchange.as_ref() else {
            return abi::CONTINUE;
        };
        if ex.holding_request() {
            // A held body is in two parts: what Envoy buffered (from earlier hooks and, at the end
            // of the stream, also this hook's chunk) and the chunk of this hook. The bytes not yet
            // read are those past what was already read, in that order.
            let seen = ex.held_request_bytes();
            let mut new = Vec::new();
            let buffered = body_from(envoy, abi::BUFFERED_REQUEST_BODY, seen, &mut new);
            let received = body_from(envoy, abi::RECEIVED_REQUEST_BODY, 0, &mut new);
            f.request_chunk(envoy, &new, end_of_stream);
            let Some(ex) = f.exchange.as_mut() else {
                return abi::CONTINUE;
            };
            if let Some(body) = ex.take_rewritten_request() {
                replace_request_body(envoy, buffered, received, &body);
            }
            return if ex.holding_request() {
                abi::STOP_ITERATION_AND_BUFFER
            } else {
                abi::CONTINUE
            };
        }
        if ex.wants_request_body() {
            for_each_body_slice(envoy, abi::RECEIVED_REQUEST_BODY, |chunk, last| {
                f.request_chunk(envoy, chunk, end_of_stream && last);
            });
        }
        abi::CONTINUE
    })
}

/// # Safety
/// Envoy's filter pointer and this module's filter pointer of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    envoy: FilterEnvoyPtr,
    module: abi::FilterModulePtr,
) -> u32 {
    on_stream(module, |f| {
        if let Some(ex) = f.exchange.as_mut() {
            // A held body that ends with trailers goes on as it is.
            ex.release_request();
            if ex.wants_request_body() {
                f.request_chunk(envoy, &[], true);
            }
        }
    })
}

/// # Safety
/// Envoy's filter pointer and this module's filter pointer of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    envoy: FilterEnvoyPtr,
    module: abi::FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    on_stream(module, |f| {
        let (config, Some(ex)) = f.parts() else {
            return;
        };
        let status =
            header_str(envoy, abi::RESPONSE_HEADER, ":status").and_then(|s| s.trim().parse().ok());
        let content_type = header_str(envoy, abi::RESPONSE_HEADER, "content-type");
        let encoding = header_str(envoy, abi::RESPONSE_HEADER, "content-encoding");
        ex.response_headers(
            status,
            content_type,
            encoding,
            end_of_stream,
            &config.config,
        );
        if ex.rewrites_response() {
            // The stream loses bytes on its way: its length (rare on a stream) no longer holds.
            // SAFETY: `envoy` is the live filter pointer; a null value removes the header.
            unsafe {
                abi::envoy_dynamic_module_callback_http_set_header(
                    envoy,
                    abi::RESPONSE_HEADER,
                    ModuleBuffer::of("content-length"),
                    ModuleBuffer::EMPTY,
                )
            };
        }
    })
}

/// # Safety
/// Envoy's filter pointer and this module's filter pointer of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    envoy: FilterEnvoyPtr,
    module: abi::FilterModulePtr,
    end_of_stream: bool,
) -> u32 {
    on_stream(module, |f| {
        let (config, Some(ex)) = f.parts() else {
            return;
        };
        let rewrite = ex.rewrites_response();
        if rewrite || ex.wants_response_body() {
            // A body the exchange no longer reads still ends through `response_body`.
            let (mut len, mut out, mut changed) = (0, Vec::new(), false);
            for_each_body_slice(envoy, abi::RECEIVED_RESPONSE_BODY, |chunk, last| {
                let end = end_of_stream && last;
                ex.response_body(chunk, end, &config.config, &mut now_ns);
                if rewrite {
                    len += chunk.len();
                    match ex.rewrite_response(chunk, end) {
                        Some(bytes) => {
                            changed = true;
                            out.extend_from_slice(&bytes);
                        }
                        None => out.extend_from_slice(chunk),
                    }
                }
            });
            if changed {
                replace_response_chunk(envoy, len, &out);
            }
        } else if end_of_stream {
            ex.response_end();
        }
    })
}

/// # Safety
/// Envoy's filter pointer and this module's filter pointer of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    _envoy: FilterEnvoyPtr,
    module: abi::FilterModulePtr,
) -> u32 {
    on_stream(module, |f| {
        if let Some(ex) = f.exchange.as_mut() {
            ex.response_end();
        }
    })
}

/// The stream is over (completed, aborted by either side, or reset): the exchange's observation
/// becomes stat updates. Envoy calls this once per stream, before `destroy`.
///
/// # Safety
/// Envoy's filter pointer and this module's filter pointer of one live stream.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    envoy: FilterEnvoyPtr,
    module: abi::FilterModulePtr,
) {
    guard((), || {
        // SAFETY: see the function's contract.
        let Some(f) = (unsafe { filter(module) }) else {
            return;
        };
        let Some(mut ex) = f.exchange.take() else {
            return;
        };
        let observation = ex.finish(now_ns(), &mut || {
            let mut flags = 0u64;
            // SAFETY: `envoy` is the live filter pointer; `flags` is a live out-value.
            let ok = unsafe {
                abi::envoy_dynamic_module_callback_http_filter_get_attribute_int(
                    envoy,
                    abi::ATTRIBUTE_RESPONSE_FLAGS,
                    &mut flags,
                )
            };
            if ok {
                flags
            } else {
                0
            }
        });
        let extra = f.config().label_values(observation.labels);
        observation.for_each_op(&mut |series, op| f.apply(envoy, series, &extra, op));
    });
}

/// Exports event hooks Envoy looks up but this filter never needs (it starts no HTTP callouts or
/// streams, schedules nothing and is not a terminal filter): each does nothing.
macro_rules! unused_hooks {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        /// Unused by this filter (Envoy requires the symbol).
        ///
        /// # Safety
        /// Never dereferences its arguments.
        #[no_mangle]
        pub unsafe extern "C" fn $name(_envoy: FilterEnvoyPtr, _module: abi::FilterModulePtr, $($arg: $ty),*) {
            let _ = ($($arg,)*);
        }
    )*};
}

unused_hooks! {
    envoy_dynamic_module_on_http_filter_http_callout_done(
        callout_id: u64, result: u32, headers: *const std::ffi::c_void, headers_size: usize,
        body_chunks: *const EnvoyBuffer, body_chunks_size: usize);
    envoy_dynamic_module_on_http_filter_http_stream_headers(
        stream_id: u64, headers: *const std::ffi::c_void, headers_size: usize, end_stream: bool);
    envoy_dynamic_module_on_http_filter_http_stream_data(
        stream_id: u64, data: *const EnvoyBuffer, data_count: usize, end_stream: bool);
    envoy_dynamic_module_on_http_filter_http_stream_trailers(
        stream_id: u64, trailers: *const std::ffi::c_void, trailers_size: usize);
    envoy_dynamic_module_on_http_filter_http_stream_complete(stream_id: u64);
    envoy_dynamic_module_on_http_filter_http_stream_reset(stream_id: u64, reason: u32);
    envoy_dynamic_module_on_http_filter_scheduled(event_id: u64);
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark();
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark();
}
