//! The proxy-wasm ABI 0.2.1 host: every import the filter links, on wasmtime, the way Envoy answers.
//!
//! One [`Vm`] is one wasmtime `Store` + `Instance` (Envoy runs one VM per worker thread). All VMs of
//! a gateway share one [`Shared`]: the metric store, the shared-data store, the virtual clock and the
//! log. The module is compiled once per test process.
//!
//! Memory protocol: host calls that return data allocate it in guest memory by calling the guest's
//! `proxy_on_memory_allocate` export, write the bytes there and store the pointer and size at the
//! two out-pointers the guest passed (the guest frees them). Empty data is returned as a null pointer
//! and size 0, as Envoy's `copyToPointerSize` does.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use rand::SeedableRng as _;
use wasmtime::{
    Caller, Config, Engine, ExternType, InstancePre, Linker, Module, Store, TypedFunc, Val, ValType,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::abi::{self, Action, BufferType, MapType, Status};
use crate::metrics::{MetricKind, MetricStore, WASM_CUSTOM_PREFIX};

/// Where the filter is built, relative to this crate; `LLM_FILTER_WASM` overrides it.
pub fn filter_wasm_path() -> PathBuf {
    match std::env::var_os("LLM_FILTER_WASM") {
        Some(path) => PathBuf::from(path),
        None => PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../target/wasm32-wasip1/release/llm_metrics_filter.wasm"),
    }
}

// ---------------------------------------------------------------------------------------------
// The virtual clock

/// One clock behind `proxy_get_current_time_nanoseconds` and WASI's `clock_time_get` (both the
/// realtime and the monotonic clock). Time moves only when a test moves it.
#[derive(Clone, Debug)]
pub struct VirtualClock(Arc<AtomicU64>);

/// 2026-01-01T00:00:00Z: a realistic wall-clock start.
pub const CLOCK_START_NS: u64 = 1_767_225_600 * 1_000_000_000;

impl VirtualClock {
    pub fn new() -> VirtualClock {
        VirtualClock(Arc::new(AtomicU64::new(CLOCK_START_NS)))
    }

    pub fn now_ns(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }

    pub fn advance_ns(&self, ns: u64) {
        self.0.fetch_add(ns, Ordering::SeqCst);
    }

    /// Moves the clock to `ns`; time never goes backwards.
    pub fn set_ns(&self, ns: u64) {
        let now = self.now_ns();
        assert!(
            ns >= now,
            "the virtual clock cannot go back from {now} to {ns} ns"
        );
        self.0.store(ns, Ordering::SeqCst);
    }
}

impl Default for VirtualClock {
    fn default() -> Self {
        VirtualClock::new()
    }
}

impl HostWallClock for VirtualClock {
    fn resolution(&self) -> Duration {
        Duration::from_nanos(1)
    }
    fn now(&self) -> Duration {
        Duration::from_nanos(self.now_ns())
    }
}

impl HostMonotonicClock for VirtualClock {
    fn resolution(&self) -> u64 {
        1
    }
    fn now(&self) -> u64 {
        self.now_ns()
    }
}

// ---------------------------------------------------------------------------------------------
// Process-wide state shared by the VMs of one gateway

/// Envoy's shared data: one key-value map per VM id, each value with a compare-and-swap token.
#[derive(Debug)]
pub struct SharedData {
    entries: HashMap<Vec<u8>, (Vec<u8>, u32)>,
    next_cas: u32,
}

impl Default for SharedData {
    fn default() -> Self {
        SharedData {
            entries: HashMap::new(),
            next_cas: 1,
        }
    }
}

impl SharedData {
    pub fn get(&self, key: &[u8]) -> Option<(Vec<u8>, u32)> {
        self.entries.get(key).cloned()
    }

    /// cas 0 writes unconditionally; otherwise it must equal the current token of an existing
    /// key (a missing key is created whatever the cas, as Envoy does). Every write gets a new token.
    pub fn set(&mut self, key: &[u8], value: &[u8], cas: u32) -> Status {
        if let Some((_, current)) = self.entries.get(key) {
            if cas != 0 && cas != *current {
                return Status::CasMismatch;
            }
        }
        let token = self.next_cas;
        self.next_cas = self.next_cas.wrapping_add(1).max(1);
        self.entries.insert(key.to_vec(), (value.to_vec(), token));
        Status::Ok
    }
}

/// A `proxy_log` line.
#[derive(Clone, Debug)]
pub struct LogLine {
    pub vm: usize,
    pub context: u32,
    pub level: &'static str,
    pub message: String,
}

/// What all VMs of one gateway share.
#[derive(Debug, Default)]
pub struct Shared {
    pub metrics: Mutex<MetricStore>,
    pub shared_data: Mutex<SharedData>,
    pub clock: VirtualClock,
    pub logs: Mutex<Vec<LogLine>>,
    /// Calls to imports this host answers with Unimplemented, by name.
    pub unimplemented_calls: Mutex<Vec<String>>,
    /// How many of the next conditional (cas != 0) writes to an existing shared-data key are
    /// preceded by another worker's write, so that they fail with CasMismatch as they would when
    /// two Envoy workers race.
    pub cas_interference: Mutex<u32>,
}

/// Locks a mutex even if a panicking test thread poisoned it.
pub(crate) fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

// ---------------------------------------------------------------------------------------------
// Per-VM state

/// Stream callbacks whose returned `Action` we record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Callback {
    RequestHeaders,
    RequestBody,
    RequestTrailers,
    ResponseHeaders,
    ResponseBody,
    ResponseTrailers,
}

/// One context (the root context or a stream) as the host sees it.
#[derive(Debug, Default)]
pub struct ContextState {
    /// Header maps the filter can read now.
    pub maps: HashMap<MapType, Vec<(String, String)>>,
    /// Header maps whose callback is over: readable again in on_log only, as in Envoy.
    pub log_maps: HashMap<MapType, Vec<(String, String)>>,
    /// The request body buffer of the current `proxy_on_request_body` call.
    pub request_body: Vec<u8>,
    /// The response body buffer of the current `proxy_on_response_body` call.
    pub response_body: Vec<u8>,
    /// Request body bytes passed on to the upstream (each buffer as it stood when the filter
    /// returned Continue).
    pub request_sent: Vec<u8>,
    /// Response body bytes passed on to the client, likewise.
    pub response_sent: Vec<u8>,
    pub properties: HashMap<String, Vec<u8>>,
    pub actions: Vec<(Callback, Action)>,
    /// Host calls that would change the traffic (header/body writes, local replies, stream
    /// resumption or closing), described in words.
    pub changes: Vec<String>,
    /// Calls the filter made into the host while this context was active (every import, WASI
    /// included): what the filter costs Envoy beyond its own code.
    pub host_calls: u32,
    pub done_called: bool,
}

pub struct VmState {
    wasi: WasiP1Ctx,
    pub shared: Arc<Shared>,
    pub vm_index: usize,
    /// The context host calls act on: the one of the callback being run, or the one the filter
    /// chose with `proxy_set_effective_context`.
    pub active: u32,
    pub plugin_config: Vec<u8>,
    pub vm_config: Vec<u8>,
    pub contexts: HashMap<u32, ContextState>,
    /// Metric ids handed out by this VM: index + 1 -> full stat name.
    metric_ids: Vec<(MetricKind, String)>,
    pub tick_period_ms: u32,
    pub stderr: MemoryOutputPipe,
}

impl VmState {
    /// A fresh VM's host state: WASI with the shared virtual clock, seeded randomness, and the
    /// guest's stdout and stderr captured (a Rust panic message lands there).
    pub fn new(shared: Arc<Shared>, vm_index: usize, plugin_config: &[u8]) -> VmState {
        let stderr = MemoryOutputPipe::new(4 << 20);
        let wasi = WasiCtxBuilder::new()
            .stdout(stderr.clone())
            .stderr(stderr.clone())
            .wall_clock(shared.clock.clone())
            .monotonic_clock(shared.clock.clone())
            .secure_random(rand::rngs::StdRng::seed_from_u64(7 + vm_index as u64))
            .insecure_random(rand::rngs::StdRng::seed_from_u64(11 + vm_index as u64))
            .insecure_random_seed(13)
            .build_p1();
        let mut contexts = HashMap::new();
        contexts.insert(ROOT_CONTEXT_ID, ContextState::default());
        VmState {
            wasi,
            shared,
            vm_index,
            active: ROOT_CONTEXT_ID,
            plugin_config: plugin_config.to_vec(),
            vm_config: Vec::new(),
            contexts,
            metric_ids: Vec::new(),
            tick_period_ms: 0,
            stderr,
        }
    }

    fn active_context(&mut self) -> &mut ContextState {
        self.contexts.entry(self.active).or_default()
    }
}

// ---------------------------------------------------------------------------------------------
// Compiled module and linker, once per process

struct Compiled {
    module: Module,
    pre: InstancePre<VmState>,
    engine: Engine,
}

static COMPILED: OnceLock<std::result::Result<Compiled, String>> = OnceLock::new();

fn compiled() -> Result<&'static Compiled> {
    COMPILED
        .get_or_init(|| compile().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(|e| anyhow!("{e}"))
}

fn compile() -> Result<Compiled> {
    compile_from(&filter_wasm_path())
}

fn compile_from(path: &std::path::Path) -> Result<Compiled> {
    if !path.exists() {
        bail!(
            "the filter is not built: {} is missing. Build it with\n    cargo build --release --target wasm32-wasip1 -p llm-metrics-filter\n(or point LLM_FILTER_WASM at a .wasm)",
            path.display()
        );
    }
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let mut config = Config::new();
    config.cranelift_opt_level(wasmtime::OptLevel::None);
    let engine = Engine::new(&config)?;
    let module = Module::new(&engine, &bytes)
        .map_err(|e| anyhow!("{e:?}"))
        .with_context(|| format!("compiling {}", path.display()))?;
    let linker = linker_for(&engine, &module)?;
    let pre = linker
        .instantiate_pre(&module)
        .map_err(|e| anyhow!("{e:?}"))
        .context("linking the filter's imports")?;
    Ok(Compiled {
        module,
        pre,
        engine,
    })
}

/// The names of the imports this host implements for real.
const IMPLEMENTED: &[&str] = &[
    "proxy_log",
    "proxy_get_log_level",
    "proxy_get_current_time_nanoseconds",
    "proxy_set_tick_period_milliseconds",
    "proxy_get_buffer_bytes",
    "proxy_set_buffer_bytes",
    "proxy_get_header_map_pairs",
    "proxy_set_header_map_pairs",
    "proxy_get_header_map_size",
    "proxy_get_header_map_value",
    "proxy_replace_header_map_value",
    "proxy_add_header_map_value",
    "proxy_remove_header_map_value",
    "proxy_get_property",
    "proxy_set_property",
    "proxy_get_shared_data",
    "proxy_set_shared_data",
    "proxy_continue_stream",
    "proxy_close_stream",
    "proxy_send_local_response",
    "proxy_set_effective_context",
    "proxy_done",
    "proxy_define_metric",
    "proxy_increment_metric",
    "proxy_record_metric",
    "proxy_get_metric",
];

/// The linker: WASI preview 1, the proxy-wasm imports above, and for every other import the
/// module declares, a function of its exact type that answers Unimplemented (12) without trapping.
pub fn linker_for(engine: &Engine, module: &Module) -> Result<Linker<VmState>> {
    let mut linker: Linker<VmState> = Linker::new(engine);
    wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut VmState| &mut s.wasi)
        .map_err(|e| anyhow!("{e:?}"))?;
    add_proxy_wasm(&mut linker).map_err(|e| anyhow!("{e:?}"))?;
    let implemented: HashSet<&str> = IMPLEMENTED.iter().copied().collect();
    for import in module.imports() {
        let ExternType::Func(ty) = import.ty() else {
            continue;
        };
        if import.module() == "wasi_snapshot_preview1"
            || (import.module() == "env" && implemented.contains(import.name()))
        {
            continue;
        }
        let name = format!("{}::{}", import.module(), import.name());
        let results: Vec<ValType> = ty.results().collect();
        linker
            .func_new(
                import.module(),
                import.name(),
                ty.clone(),
                move |caller, _params, out| {
                    lock(&caller.data().shared.unimplemented_calls).push(name.clone());
                    for (slot, ty) in out.iter_mut().zip(results.iter()) {
                        *slot = match ty {
                            ValType::I32 => Val::I32(Status::Unimplemented.code()),
                            ValType::I64 => Val::I64(Status::Unimplemented.code() as i64),
                            ValType::F32 => Val::F32(0),
                            ValType::F64 => Val::F64(0),
                            _ => Val::I32(0),
                        };
                    }
                    Ok(())
                },
            )
            .map_err(|e| anyhow!("{e:?}"))?;
    }
    Ok(linker)
}

// ---------------------------------------------------------------------------------------------
// Guest memory helpers

type Ctx<'a> = Caller<'a, VmState>;
type HostResult = wasmtime::Result<i32>;

fn memory(caller: &mut Ctx<'_>) -> Option<wasmtime::Memory> {
    caller.get_export("memory")?.into_memory()
}

fn read(caller: &mut Ctx<'_>, ptr: i32, len: i32) -> Option<Vec<u8>> {
    let mem = memory(caller)?;
    let mut buf = vec![0u8; len as u32 as usize];
    mem.read(&*caller, ptr as u32 as usize, &mut buf).ok()?;
    Some(buf)
}

fn write(caller: &mut Ctx<'_>, ptr: i32, bytes: &[u8]) -> bool {
    match memory(caller) {
        Some(mem) => mem.write(&mut *caller, ptr as u32 as usize, bytes).is_ok(),
        None => false,
    }
}

fn write_u32(caller: &mut Ctx<'_>, ptr: i32, value: u32) -> bool {
    write(caller, ptr, &value.to_le_bytes())
}

/// Allocates `data` in guest memory and stores its pointer and size at `ptr_ptr` and `size_ptr`.
fn copy_out(
    caller: &mut Ctx<'_>,
    data: &[u8],
    ptr_ptr: i32,
    size_ptr: i32,
) -> wasmtime::Result<Status> {
    let mut pointer = 0u32;
    if !data.is_empty() {
        let alloc = caller
            .get_export("proxy_on_memory_allocate")
            .or_else(|| caller.get_export("malloc"))
            .and_then(|e| e.into_func());
        let Some(alloc) = alloc else {
            return Ok(Status::InternalFailure);
        };
        let alloc = alloc.typed::<i32, i32>(&*caller)?;
        pointer = alloc.call(&mut *caller, data.len() as i32)? as u32;
        if pointer == 0 || !write(caller, pointer as i32, data) {
            return Ok(Status::InvalidMemoryAccess);
        }
    }
    if !write_u32(caller, ptr_ptr, pointer) || !write_u32(caller, size_ptr, data.len() as u32) {
        return Ok(Status::InvalidMemoryAccess);
    }
    Ok(Status::Ok)
}

fn status(s: Status) -> HostResult {
    Ok(s.code())
}

/// The status of a host call whose last step stored a result in guest memory.
fn stored(written: bool) -> HostResult {
    status(if written {
        Status::Ok
    } else {
        Status::InvalidMemoryAccess
    })
}

fn header_value<'m>(map: &'m [(String, String)], key: &str) -> Option<&'m str> {
    map.iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

fn describe_map(map: i32) -> String {
    match MapType::from_abi(map) {
        Some(m) => format!("{m:?}"),
        None => format!("map type {map}"),
    }
}

// ---------------------------------------------------------------------------------------------
// The proxy-wasm imports

fn add_proxy_wasm(linker: &mut Linker<VmState>) -> wasmtime::Result<()> {
    linker.func_wrap(
        "env",
        "proxy_log",
        |mut c: Ctx<'_>, level: i32, ptr: i32, len: i32| -> HostResult {
            let Some(bytes) = read(&mut c, ptr, len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let line = LogLine {
                vm: c.data().vm_index,
                context: c.data().active,
                level: abi::log_level_name(level),
                message: String::from_utf8_lossy(&bytes).into_owned(),
            };
            if std::env::var_os("LLM_HOST_LOG").is_some() {
                eprintln!(
                    "[vm {} ctx {} {}] {}",
                    line.vm, line.context, line.level, line.message
                );
            }
            lock(&c.data().shared.logs).push(line);
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_log_level",
        |mut c: Ctx<'_>, ptr: i32| -> HostResult {
            // Trace: the filter formats every message, so logging paths run in tests too.
            stored(write_u32(&mut c, ptr, 0))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_current_time_nanoseconds",
        |mut c: Ctx<'_>, ptr: i32| -> HostResult {
            let now = c.data().shared.clock.now_ns();
            stored(write(&mut c, ptr, &now.to_le_bytes()))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_tick_period_milliseconds",
        |mut c: Ctx<'_>, period: i32| -> HostResult {
            c.data_mut().tick_period_ms = period as u32;
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_buffer_bytes",
        |mut c: Ctx<'_>,
         buffer: i32,
         start: i32,
         max: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> HostResult {
            let Some(buffer) = BufferType::from_abi(buffer) else {
                return status(Status::NotFound);
            };
            let data = {
                let state = c.data_mut();
                match buffer {
                    BufferType::RequestBody => state.active_context().request_body.clone(),
                    BufferType::ResponseBody => state.active_context().response_body.clone(),
                    BufferType::VmConfiguration => state.vm_config.clone(),
                    BufferType::PluginConfiguration => state.plugin_config.clone(),
                }
            };
            let (start, max) = (start as u32 as usize, max as u32 as usize);
            if start.checked_add(max).is_none() {
                return status(Status::BadArgument);
            }
            // Envoy: never over-read; a zero-length read is Ok with nothing written.
            let end = start.saturating_add(max).min(data.len());
            if start >= end {
                return status(Status::Ok);
            }
            let chunk = data[start..end].to_vec();
            Ok(copy_out(&mut c, &chunk, ptr_ptr, size_ptr)?.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_buffer_bytes",
        |mut c: Ctx<'_>, buffer: i32, start: i32, size: i32, ptr: i32, len: i32| -> HostResult {
            let Some(bytes) = read(&mut c, ptr, len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(kind) = BufferType::from_abi(buffer) else {
                return status(Status::NotFound);
            };
            let ctx = c.data_mut().active_context();
            ctx.changes.push(format!(
                "proxy_set_buffer_bytes({kind:?}, start {start}, size {size}, {} bytes)",
                bytes.len()
            ));
            let body = match kind {
                BufferType::RequestBody => &mut ctx.request_body,
                BufferType::ResponseBody => &mut ctx.response_body,
                _ => return status(Status::BadArgument),
            };
            let (start, size) = (start as u32 as usize, size as u32 as usize);
            if start == 0 && size == 0 {
                body.splice(0..0, bytes);
            } else if start == 0 && size >= body.len() {
                *body = bytes;
            } else if start >= body.len() {
                body.extend_from_slice(&bytes);
            } else {
                return status(Status::BadArgument);
            }
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult {
            let Some(map) = MapType::from_abi(map) else {
                return status(Status::BadArgument);
            };
            let pairs = c
                .data_mut()
                .active_context()
                .maps
                .get(&map)
                .cloned()
                .unwrap_or_default();
            Ok(copy_out(&mut c, &abi::serialize_map(&pairs), ptr_ptr, size_ptr)?.code())
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_header_map_pairs",
        |mut c: Ctx<'_>, map: i32, ptr: i32, len: i32| -> HostResult {
            let Some(bytes) = read(&mut c, ptr, len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(pairs) = abi::deserialize_map(&bytes) else {
                return status(Status::ParseFailure);
            };
            let what = describe_map(map);
            let Some(map) = MapType::from_abi(map) else {
                return status(Status::BadArgument);
            };
            let ctx = c.data_mut().active_context();
            ctx.changes
                .push(format!("proxy_set_header_map_pairs({what}, {pairs:?})"));
            ctx.maps.insert(map, pairs);
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_header_map_size",
        |mut c: Ctx<'_>, map: i32, size_ptr: i32| -> HostResult {
            let Some(map) = MapType::from_abi(map) else {
                return status(Status::BadArgument);
            };
            // Envoy answers the map's byteSize(): the sum of key and value lengths.
            let size: usize = c
                .data_mut()
                .active_context()
                .maps
                .get(&map)
                .map(|pairs| pairs.iter().map(|(k, v)| k.len() + v.len()).sum())
                .unwrap_or(0);
            stored(write_u32(&mut c, size_ptr, size as u32))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_header_map_value",
        |mut c: Ctx<'_>,
         map: i32,
         key_ptr: i32,
         key_len: i32,
         ptr_ptr: i32,
         size_ptr: i32|
         -> HostResult {
            let Some(key) = read(&mut c, key_ptr, key_len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(map) = MapType::from_abi(map) else {
                return status(Status::BadArgument);
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let value = c
                .data_mut()
                .active_context()
                .maps
                .get(&map)
                .and_then(|pairs| header_value(pairs, &key).map(str::to_owned));
            match value {
                None => status(Status::NotFound),
                Some(value) => Ok(copy_out(&mut c, value.as_bytes(), ptr_ptr, size_ptr)?.code()),
            }
        },
    )?;

    for (name, verb) in [
        ("proxy_replace_header_map_value", "replace"),
        ("proxy_add_header_map_value", "add"),
    ] {
        linker.func_wrap(
            "env",
            name,
            move |mut c: Ctx<'_>,
                  map: i32,
                  key_ptr: i32,
                  key_len: i32,
                  value_ptr: i32,
                  value_len: i32|
                  -> HostResult {
                let (Some(key), Some(value)) = (
                    read(&mut c, key_ptr, key_len),
                    read(&mut c, value_ptr, value_len),
                ) else {
                    return status(Status::InvalidMemoryAccess);
                };
                let what = describe_map(map);
                let Some(map) = MapType::from_abi(map) else {
                    return status(Status::BadArgument);
                };
                let key = String::from_utf8_lossy(&key).to_ascii_lowercase();
                let value = String::from_utf8_lossy(&value).into_owned();
                let ctx = c.data_mut().active_context();
                ctx.changes
                    .push(format!("{name}({what}, {key:?}, {value:?})"));
                let pairs = ctx.maps.entry(map).or_default();
                if verb == "replace" {
                    pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
                }
                pairs.push((key, value));
                status(Status::Ok)
            },
        )?;
    }

    linker.func_wrap(
        "env",
        "proxy_remove_header_map_value",
        |mut c: Ctx<'_>, map: i32, key_ptr: i32, key_len: i32| -> HostResult {
            let Some(key) = read(&mut c, key_ptr, key_len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let what = describe_map(map);
            let Some(map) = MapType::from_abi(map) else {
                return status(Status::BadArgument);
            };
            let key = String::from_utf8_lossy(&key).into_owned();
            let ctx = c.data_mut().active_context();
            ctx.changes
                .push(format!("proxy_remove_header_map_value({what}, {key:?})"));
            if let Some(pairs) = ctx.maps.get_mut(&map) {
                pairs.retain(|(k, _)| !k.eq_ignore_ascii_case(&key));
            }
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_property",
        |mut c: Ctx<'_>, path_ptr: i32, path_len: i32, ptr_ptr: i32, size_ptr: i32| -> HostResult {
            let Some(path) = read(&mut c, path_ptr, path_len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let path = abi::property_path(&path);
            let value = c.data_mut().active_context().properties.get(&path).cloned();
            match value {
                None => status(Status::NotFound),
                Some(value) => Ok(copy_out(&mut c, &value, ptr_ptr, size_ptr)?.code()),
            }
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_property",
        |mut c: Ctx<'_>,
         path_ptr: i32,
         path_len: i32,
         value_ptr: i32,
         value_len: i32|
         -> HostResult {
            let (Some(path), Some(value)) = (
                read(&mut c, path_ptr, path_len),
                read(&mut c, value_ptr, value_len),
            ) else {
                return status(Status::InvalidMemoryAccess);
            };
            let path = abi::property_path(&path);
            c.data_mut().active_context().properties.insert(path, value);
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_shared_data",
        |mut c: Ctx<'_>,
         key_ptr: i32,
         key_len: i32,
         ptr_ptr: i32,
         size_ptr: i32,
         cas_ptr: i32|
         -> HostResult {
            let Some(key) = read(&mut c, key_ptr, key_len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let entry = lock(&c.data().shared.shared_data).get(&key);
            let Some((value, cas)) = entry else {
                return status(Status::NotFound);
            };
            let s = copy_out(&mut c, &value, ptr_ptr, size_ptr)?;
            if s != Status::Ok {
                return status(s);
            }
            stored(write_u32(&mut c, cas_ptr, cas))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_shared_data",
        |mut c: Ctx<'_>,
         key_ptr: i32,
         key_len: i32,
         value_ptr: i32,
         value_len: i32,
         cas: i32|
         -> HostResult {
            let (Some(key), Some(value)) = (
                read(&mut c, key_ptr, key_len),
                read(&mut c, value_ptr, value_len),
            ) else {
                return status(Status::InvalidMemoryAccess);
            };
            let shared = c.data().shared.clone();
            let mut data = lock(&shared.shared_data);
            let mut interference = lock(&shared.cas_interference);
            if cas != 0 && *interference > 0 {
                if let Some((current, _)) = data.get(&key) {
                    *interference -= 1;
                    data.set(&key, &current, 0);
                }
            }
            status(data.set(&key, &value, cas as u32))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_continue_stream",
        |mut c: Ctx<'_>, stream: i32| -> HostResult {
            c.data_mut()
                .active_context()
                .changes
                .push(format!("proxy_continue_stream({stream})"));
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_close_stream",
        |mut c: Ctx<'_>, stream: i32| -> HostResult {
            c.data_mut()
                .active_context()
                .changes
                .push(format!("proxy_close_stream({stream})"));
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_send_local_response",
        |mut c: Ctx<'_>,
         code: i32,
         _dp: i32,
         _dl: i32,
         body_ptr: i32,
         body_len: i32,
         _hp: i32,
         _hl: i32,
         _grpc: i32|
         -> HostResult {
            let body = read(&mut c, body_ptr, body_len).unwrap_or_default();
            c.data_mut().active_context().changes.push(format!(
                "proxy_send_local_response({code}, {:?})",
                String::from_utf8_lossy(&body)
            ));
            status(Status::Ok)
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_set_effective_context",
        |mut c: Ctx<'_>, context: i32| -> HostResult {
            let context = context as u32;
            if c.data().contexts.contains_key(&context) {
                c.data_mut().active = context;
                status(Status::Ok)
            } else {
                status(Status::BadArgument)
            }
        },
    )?;

    linker.func_wrap("env", "proxy_done", |mut c: Ctx<'_>| -> HostResult {
        c.data_mut().active_context().done_called = true;
        status(Status::Ok)
    })?;

    linker.func_wrap(
        "env",
        "proxy_define_metric",
        |mut c: Ctx<'_>, kind: i32, name_ptr: i32, name_len: i32, id_ptr: i32| -> HostResult {
            let Some(name) = read(&mut c, name_ptr, name_len) else {
                return status(Status::InvalidMemoryAccess);
            };
            let Some(kind) = MetricKind::from_abi(kind) else {
                return status(Status::BadArgument);
            };
            let full = format!("{WASM_CUSTOM_PREFIX}{}", String::from_utf8_lossy(&name));
            let s = lock(&c.data().shared.metrics).define(kind, &full);
            if s != Status::Ok {
                return status(s);
            }
            let ids = &mut c.data_mut().metric_ids;
            ids.push((kind, full));
            let id = ids.len() as u32;
            stored(write_u32(&mut c, id_ptr, id))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_increment_metric",
        |c: Ctx<'_>, id: i32, offset: i64| -> HostResult {
            let Some((_, name)) = metric_by_id(&c, id) else {
                return status(Status::NotFound);
            };
            status(lock(&c.data().shared.metrics).increment(&name, offset))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_record_metric",
        |c: Ctx<'_>, id: i32, value: i64| -> HostResult {
            let Some((_, name)) = metric_by_id(&c, id) else {
                return status(Status::NotFound);
            };
            status(lock(&c.data().shared.metrics).record(&name, value as u64))
        },
    )?;

    linker.func_wrap(
        "env",
        "proxy_get_metric",
        |mut c: Ctx<'_>, id: i32, ptr: i32| -> HostResult {
            let Some((_, name)) = metric_by_id(&c, id) else {
                return status(Status::NotFound);
            };
            let value = lock(&c.data().shared.metrics).get(&name);
            match value {
                Err(s) => status(s),
                Ok(v) => stored(write(&mut c, ptr, &v.to_le_bytes())),
            }
        },
    )?;

    Ok(())
}

fn metric_by_id(c: &Ctx<'_>, id: i32) -> Option<(MetricKind, String)> {
    let index = (id as u32 as usize).checked_sub(1)?;
    c.data().metric_ids.get(index).cloned()
}

// ---------------------------------------------------------------------------------------------
// One VM

/// The filter's exports that the host drives.
struct Exports {
    on_context_create: TypedFunc<(i32, i32), ()>,
    on_vm_start: TypedFunc<(i32, i32), i32>,
    on_configure: TypedFunc<(i32, i32), i32>,
    on_request_headers: TypedFunc<(i32, i32, i32), i32>,
    on_request_body: TypedFunc<(i32, i32, i32), i32>,
    on_request_trailers: TypedFunc<(i32, i32), i32>,
    on_response_headers: TypedFunc<(i32, i32, i32), i32>,
    on_response_body: TypedFunc<(i32, i32, i32), i32>,
    on_response_trailers: TypedFunc<(i32, i32), i32>,
    on_log: TypedFunc<i32, ()>,
    on_done: TypedFunc<i32, i32>,
    on_delete: TypedFunc<i32, ()>,
    on_tick: Option<TypedFunc<i32, ()>>,
}

/// The root context id of every VM.
pub const ROOT_CONTEXT_ID: u32 = 1;

/// One filter VM (one Envoy worker): its own store and instance, sharing [`Shared`].
pub struct Vm {
    store: Store<VmState>,
    exports: Exports,
    next_context: u32,
}

impl Vm {
    /// Instantiates the filter and runs Envoy's start sequence: `_initialize`, root context,
    /// `proxy_on_vm_start`, `proxy_on_configure`. An error if the filter refuses its configuration.
    pub fn start(shared: Arc<Shared>, vm_index: usize, plugin_config: &[u8]) -> Result<Vm> {
        let compiled = compiled()?;
        let state = VmState::new(shared, vm_index, plugin_config);
        let mut store = Store::new(&compiled.engine, state);
        store.call_hook(|mut c, hook| {
            if matches!(hook, wasmtime::CallHook::CallingHost) {
                c.data_mut().active_context().host_calls += 1;
            }
            Ok(())
        });
        let instance = compiled
            .pre
            .instantiate(&mut store)
            .map_err(|e| anyhow!("{e:?}"))
            .context("instantiating the filter")?;
        if instance
            .get_func(&mut store, "proxy_abi_version_0_2_1")
            .is_none()
        {
            bail!("the filter does not export proxy_abi_version_0_2_1 (Envoy would refuse it)");
        }
        macro_rules! export {
            ($name:literal) => {
                instance
                    .get_typed_func(&mut store, $name)
                    .map_err(|e| anyhow!("{e:?}"))
                    .with_context(|| format!("the filter's export {}", $name))?
            };
        }
        let exports = Exports {
            on_context_create: export!("proxy_on_context_create"),
            on_vm_start: export!("proxy_on_vm_start"),
            on_configure: export!("proxy_on_configure"),
            on_request_headers: export!("proxy_on_request_headers"),
            on_request_body: export!("proxy_on_request_body"),
            on_request_trailers: export!("proxy_on_request_trailers"),
            on_response_headers: export!("proxy_on_response_headers"),
            on_response_body: export!("proxy_on_response_body"),
            on_response_trailers: export!("proxy_on_response_trailers"),
            on_log: export!("proxy_on_log"),
            on_done: export!("proxy_on_done"),
            on_delete: export!("proxy_on_delete"),
            on_tick: instance.get_typed_func(&mut store, "proxy_on_tick").ok(),
        };
        if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
            init.call(&mut store, ())
                .map_err(|e| anyhow!("{e:?}"))
                .context("_initialize")?;
        }
        let mut vm = Vm {
            store,
            exports,
            next_context: ROOT_CONTEXT_ID + 1,
        };
        let root = ROOT_CONTEXT_ID as i32;
        vm.call(ROOT_CONTEXT_ID, "proxy_on_context_create", |e, s| {
            e.on_context_create.call(s, (root, 0))
        })?;
        let vm_config_len = vm.store.data().vm_config.len() as i32;
        let started = vm.call(ROOT_CONTEXT_ID, "proxy_on_vm_start", |e, s| {
            e.on_vm_start.call(s, (root, vm_config_len))
        })?;
        if started == 0 {
            bail!("proxy_on_vm_start returned false{}", vm.recent_logs());
        }
        let config_len = plugin_config.len() as i32;
        let configured = vm.call(ROOT_CONTEXT_ID, "proxy_on_configure", |e, s| {
            e.on_configure.call(s, (root, config_len))
        })?;
        if configured == 0 {
            bail!(
                "proxy_on_configure returned false: the filter rejected its configuration {:?}{}",
                String::from_utf8_lossy(plugin_config),
                vm.recent_logs()
            );
        }
        Ok(vm)
    }

    /// Runs one export with `context` active; a trap becomes an error carrying the filter's
    /// stderr (where a Rust panic message lands) and its recent log lines.
    fn call<R>(
        &mut self,
        context: u32,
        what: &str,
        f: impl FnOnce(&Exports, &mut Store<VmState>) -> wasmtime::Result<R>,
    ) -> Result<R> {
        self.store.data_mut().active = context;
        let result = f(&self.exports, &mut self.store);
        self.store.data_mut().active = context;
        result.map_err(|e| {
            let stderr = self.store.data().stderr.contents();
            anyhow!(
                "the filter trapped in {what} (context {context}): {e:?}\nfilter stderr: {}{}",
                String::from_utf8_lossy(&stderr),
                self.recent_logs()
            )
        })
    }

    fn recent_logs(&self) -> String {
        let logs = lock(&self.store.data().shared.logs);
        let vm = self.store.data().vm_index;
        let lines: Vec<String> = logs
            .iter()
            .filter(|l| l.vm == vm)
            .rev()
            .take(10)
            .map(|l| format!("\n  [{} ctx {}] {}", l.level, l.context, l.message))
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect();
        if lines.is_empty() {
            String::new()
        } else {
            format!("\nfilter log:{}", lines.concat())
        }
    }

    pub fn state(&self) -> &VmState {
        self.store.data()
    }

    pub fn context(&mut self, id: u32) -> &mut ContextState {
        self.store.data_mut().contexts.entry(id).or_default()
    }

    /// `proxy_on_context_create(new, root)`; returns the new stream context id.
    pub fn create_stream(&mut self) -> Result<u32> {
        let id = self.next_context;
        self.next_context += 1;
        self.store
            .data_mut()
            .contexts
            .insert(id, ContextState::default());
        self.call(id, "proxy_on_context_create", |e, s| {
            e.on_context_create
                .call(s, (id as i32, ROOT_CONTEXT_ID as i32))
        })?;
        Ok(id)
    }

    fn record(&mut self, id: u32, callback: Callback, action: i32) -> Action {
        let action = Action::from_abi(action);
        self.context(id).actions.push((callback, action));
        action
    }

    pub fn on_headers(
        &mut self,
        id: u32,
        map: MapType,
        headers: Vec<(String, String)>,
        end_of_stream: bool,
    ) -> Result<Action> {
        let n = headers.len() as i32;
        self.context(id).maps.insert(map, headers);
        let eos = end_of_stream as i32;
        let (callback, action) = match map {
            MapType::RequestHeaders => (
                Callback::RequestHeaders,
                self.call(id, "proxy_on_request_headers", |e, s| {
                    e.on_request_headers.call(s, (id as i32, n, eos))
                })?,
            ),
            MapType::ResponseHeaders => (
                Callback::ResponseHeaders,
                self.call(id, "proxy_on_response_headers", |e, s| {
                    e.on_response_headers.call(s, (id as i32, n, eos))
                })?,
            ),
            MapType::RequestTrailers => (
                Callback::RequestTrailers,
                self.call(id, "proxy_on_request_trailers", |e, s| {
                    e.on_request_trailers.call(s, (id as i32, n))
                })?,
            ),
            MapType::ResponseTrailers => (
                Callback::ResponseTrailers,
                self.call(id, "proxy_on_response_trailers", |e, s| {
                    e.on_response_trailers.call(s, (id as i32, n))
                })?,
            ),
        };
        // Envoy forgets a header map once its callback returns Continue (context.cc sets
        // request_headers_ = nullptr); the access-log phase (on_log) sees them all again.
        if action == 0 {
            let ctx = self.context(id);
            if let Some(headers) = ctx.maps.remove(&map) {
                ctx.log_maps.insert(map, headers);
            }
        }
        Ok(self.record(id, callback, action))
    }

    /// One body chunk: the buffer the filter can read during the call is exactly this chunk
    /// (Envoy's view when the filter never pauses).
    pub fn on_body(
        &mut self,
        id: u32,
        request: bool,
        chunk: &[u8],
        end_of_stream: bool,
    ) -> Result<Action> {
        let eos = end_of_stream as i32;
        // Envoy's body buffer during the call: this chunk, after whatever earlier chunks the
        // filter paused on (Envoy buffers those); it is gone once the filter returns Continue.
        let action = if request {
            let ctx = self.context(id);
            ctx.request_body.extend_from_slice(chunk);
            let len = ctx.request_body.len() as i32;
            let a = self.call(id, "proxy_on_request_body", |e, s| {
                e.on_request_body.call(s, (id as i32, len, eos))
            })?;
            if a == 0 {
                let ctx = self.context(id);
                let sent = std::mem::take(&mut ctx.request_body);
                ctx.request_sent.extend_from_slice(&sent);
            }
            self.record(id, Callback::RequestBody, a)
        } else {
            let ctx = self.context(id);
            ctx.response_body.extend_from_slice(chunk);
            let len = ctx.response_body.len() as i32;
            let a = self.call(id, "proxy_on_response_body", |e, s| {
                e.on_response_body.call(s, (id as i32, len, eos))
            })?;
            if a == 0 {
                let ctx = self.context(id);
                let sent = std::mem::take(&mut ctx.response_body);
                ctx.response_sent.extend_from_slice(&sent);
            }
            self.record(id, Callback::ResponseBody, a)
        };
        Ok(action)
    }

    /// `proxy_on_log`, `proxy_on_done`, `proxy_on_delete`, as Envoy calls them when a stream is
    /// destroyed. Returns the stream's final host-side state.
    pub fn finish(&mut self, id: u32) -> Result<(ContextState, bool)> {
        let ctx = self.context(id);
        let log_maps = std::mem::take(&mut ctx.log_maps);
        ctx.maps.extend(log_maps);
        self.call(id, "proxy_on_log", |e, s| e.on_log.call(s, id as i32))?;
        let done = self.call(id, "proxy_on_done", |e, s| e.on_done.call(s, id as i32))?;
        self.call(id, "proxy_on_delete", |e, s| e.on_delete.call(s, id as i32))?;
        let state = self
            .store
            .data_mut()
            .contexts
            .remove(&id)
            .unwrap_or_default();
        Ok((state, done != 0))
    }

    /// `proxy_on_tick` on the root context, if the filter exports it.
    pub fn tick(&mut self) -> Result<()> {
        let root = ROOT_CONTEXT_ID as i32;
        if self.exports.on_tick.is_some() {
            self.call(ROOT_CONTEXT_ID, "proxy_on_tick", |e, s| match &e.on_tick {
                Some(f) => f.call(s, root),
                None => Ok(()),
            })?;
        }
        Ok(())
    }
}

/// The filter module's imports, `module::name`, for reports and tests.
pub fn filter_imports() -> Result<Vec<String>> {
    Ok(compiled()?
        .module
        .imports()
        .map(|i| format!("{}::{}", i.module(), i.name()))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shared_data_compare_and_swap_behaves_like_envoy() {
        let mut data = SharedData::default();
        assert_eq!(data.get(b"k"), None);
        // A missing key is created whatever the cas.
        assert_eq!(data.set(b"k", b"1", 42), Status::Ok);
        let (value, cas) = data.get(b"k").unwrap();
        assert_eq!(value, b"1");
        assert_eq!(data.set(b"k", b"2", cas + 1), Status::CasMismatch);
        assert_eq!(data.set(b"k", b"2", cas), Status::Ok);
        // The old token is stale now.
        assert_eq!(data.set(b"k", b"3", cas), Status::CasMismatch);
        // cas 0 is unconditional.
        assert_eq!(data.set(b"k", b"4", 0), Status::Ok);
        assert_eq!(data.get(b"k").unwrap().0, b"4");
    }

    /// A hand-written guest that exercises the host's ABI plumbing without the filter.
    const GUEST: &str = r#"
    (module
      (import "env" "proxy_http_call"
        (func $http_call (param i32 i32 i32 i32 i32 i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_header_map_value" (func $get_header (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_set_shared_data" (func $set_shared (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_shared_data" (func $get_shared (param i32 i32 i32 i32 i32) (result i32)))
      (import "env" "proxy_get_current_time_nanoseconds" (func $now (param i32) (result i32)))
      (import "wasi_snapshot_preview1" "clock_time_get" (func $clock (param i32 i64 i32) (result i32)))
      (memory (export "memory") 1)
      (global $heap (mut i32) (i32.const 4096))
      (data (i32.const 0) ":path")
      (data (i32.const 16) "key")
      (data (i32.const 32) "value")
      (func (export "proxy_on_memory_allocate") (param $n i32) (result i32)
        (local $p i32)
        (local.set $p (global.get $heap))
        (global.set $heap (i32.add (global.get $heap) (local.get $n)))
        (local.get $p))
      ;; An import the host does not implement: must answer Unimplemented, not trap.
      (func (export "call_unimplemented") (result i32)
        (call $http_call (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 0)
                         (i32.const 0) (i32.const 0) (i32.const 0) (i32.const 1000) (i32.const 100)))
      ;; Pointer at 100, size at 104.
      (func (export "get_path") (param $map i32) (result i32)
        (call $get_header (local.get $map) (i32.const 0) (i32.const 5) (i32.const 100) (i32.const 104)))
      (func (export "set_shared") (param $cas i32) (result i32)
        (call $set_shared (i32.const 16) (i32.const 3) (i32.const 32) (i32.const 5) (local.get $cas)))
      ;; Pointer at 100, size at 104, cas at 108.
      (func (export "get_shared") (result i32)
        (call $get_shared (i32.const 16) (i32.const 3) (i32.const 100) (i32.const 104) (i32.const 108)))
      ;; Proxy time at 200, WASI realtime at 208, WASI monotonic at 216.
      (func (export "read_clocks")
        (drop (call $now (i32.const 200)))
        (drop (call $clock (i32.const 0) (i64.const 1) (i32.const 208)))
        (drop (call $clock (i32.const 1) (i64.const 1) (i32.const 216))))
    )"#;

    struct Guest {
        store: Store<VmState>,
        instance: wasmtime::Instance,
        shared: Arc<Shared>,
    }

    impl Guest {
        fn new() -> Guest {
            let engine = Engine::default();
            let module = Module::new(&engine, GUEST).unwrap();
            let linker = linker_for(&engine, &module).unwrap();
            let shared = Arc::new(Shared::default());
            let mut store = Store::new(&engine, VmState::new(shared.clone(), 0, b""));
            let instance = linker.instantiate(&mut store, &module).unwrap();
            Guest {
                store,
                instance,
                shared,
            }
        }

        fn call<P: wasmtime::WasmParams, R: wasmtime::WasmResults>(
            &mut self,
            name: &str,
            params: P,
        ) -> R {
            let f = self
                .instance
                .get_typed_func::<P, R>(&mut self.store, name)
                .unwrap();
            f.call(&mut self.store, params).unwrap()
        }

        fn memory(&mut self, at: usize, len: usize) -> Vec<u8> {
            let mem = self.instance.get_memory(&mut self.store, "memory").unwrap();
            mem.data(&self.store)[at..at + len].to_vec()
        }

        fn u32_at(&mut self, at: usize) -> u32 {
            u32::from_le_bytes(self.memory(at, 4).try_into().unwrap())
        }

        fn u64_at(&mut self, at: usize) -> u64 {
            u64::from_le_bytes(self.memory(at, 8).try_into().unwrap())
        }

        /// The (pointer, size) pair at 100/104, read back as bytes.
        fn returned_bytes(&mut self) -> Vec<u8> {
            let (ptr, size) = (self.u32_at(100), self.u32_at(104));
            self.memory(ptr as usize, size as usize)
        }
    }

    #[test]
    fn an_unimplemented_import_answers_status_12_without_trapping() {
        let mut guest = Guest::new();
        let status: i32 = guest.call("call_unimplemented", ());
        assert_eq!(status, Status::Unimplemented.code());
        assert_eq!(
            *lock(&guest.shared.unimplemented_calls),
            vec!["env::proxy_http_call".to_owned()]
        );
    }

    #[test]
    fn returned_data_is_allocated_in_guest_memory_through_proxy_on_memory_allocate() {
        let mut guest = Guest::new();
        guest.store.data_mut().active_context().maps.insert(
            MapType::RequestHeaders,
            vec![(":path".into(), "/v1/chat/completions".into())],
        );
        let status: i32 = guest.call("get_path", 0i32);
        assert_eq!(status, 0);
        assert!(
            guest.u32_at(100) >= 4096,
            "the pointer comes from the guest's allocator"
        );
        assert_eq!(guest.returned_bytes(), b"/v1/chat/completions");
        let missing: i32 = guest.call("get_path", 2i32);
        assert_eq!(missing, Status::NotFound.code());
    }

    #[test]
    fn shared_data_through_the_abi_returns_value_and_cas() {
        let mut guest = Guest::new();
        let missing: i32 = guest.call("get_shared", ());
        assert_eq!(missing, Status::NotFound.code());
        assert_eq!(guest.call::<i32, i32>("set_shared", 0), 0);
        assert_eq!(guest.call::<(), i32>("get_shared", ()), 0);
        assert_eq!(guest.returned_bytes(), b"value");
        let cas = guest.u32_at(108);
        assert_ne!(cas, 0);
        assert_eq!(
            guest.call::<i32, i32>("set_shared", (cas + 1) as i32),
            Status::CasMismatch.code()
        );
        assert_eq!(guest.call::<i32, i32>("set_shared", cas as i32), 0);
    }

    #[test]
    fn proxy_time_and_both_wasi_clocks_read_the_one_virtual_clock() {
        let mut guest = Guest::new();
        guest.shared.clock.advance_ns(1_234_567);
        guest.call::<(), ()>("read_clocks", ());
        let now = guest.shared.clock.now_ns();
        assert_eq!(guest.u64_at(200), now);
        assert_eq!(guest.u64_at(208), now);
        assert_eq!(guest.u64_at(216), now);
    }

    #[test]
    fn a_missing_filter_fails_with_the_build_command() {
        let err = compile_from(std::path::Path::new("/nonexistent/llm_metrics_filter.wasm"))
            .err()
            .map(|e| format!("{e:#}"))
            .unwrap_or_default();
        assert!(
            err.contains("cargo build --release --target wasm32-wasip1 -p llm-metrics-filter"),
            "{err}"
        );
    }

    #[test]
    fn the_virtual_clock_moves_only_when_told() {
        let clock = VirtualClock::new();
        let t0 = clock.now_ns();
        assert_eq!(HostMonotonicClock::now(&clock), t0);
        clock.advance_ns(1_500_000);
        assert_eq!(clock.now_ns(), t0 + 1_500_000);
        assert_eq!(
            HostWallClock::now(&clock),
            Duration::from_nanos(t0 + 1_500_000)
        );
    }

    #[test]
    #[should_panic(expected = "cannot go back")]
    fn the_virtual_clock_never_goes_back() {
        let clock = VirtualClock::new();
        clock.set_ns(clock.now_ns() - 1);
    }
}
