//! The Wasm host: two wasmtime [`Engine`]s per node (one for the built-in pipeline module,
//! one for every module from outside), modules compiled once and cached on disk by
//! SHA-256, one fresh instance per task with a deadline, a memory cap and an output cap,
//! and no ambient authority (no files, sockets, environment or arguments).
//!
//! Deadlines: code from outside (user plugins, other pipeline modules) runs with epoch
//! interruption, a check Cranelift compiles into every function entry and loop back-edge
//! ([`Config::epoch_interruption`]), so even `loop {}` traps within a 10 ms tick of its
//! deadline. Those checks cost the built-in module's tight loops up to a third of their
//! time (the partial-aggregate stage: 1.87 ms with them, 1.17 ms without), so the
//! built-in module, compiled from this repository and embedded in the binary, runs on an
//! engine without them and checks its deadline itself through the `pushdown.check_deadline`
//! host call between record batches (of at most the request's batch size in rows): it
//! traps at the first check past its deadline, as an epoch would.
//!
//! The ABI the host speaks is written down in `pushdown-plugins/ABI.md`.

mod cache;
mod held;
pub use cache::cache_root;
pub(crate) use cache::stamp as file_stamp;
pub use held::{checkpointable, GlobalValue, HeldInstance, InstanceSnapshot};

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use pushdown_protocol::plugin::{
    COMMON_EXPORTS, EXPORT_FINALIZE, EXPORT_MERGE, EXPORT_SCALAR, EXPORT_SIGNATURE, EXPORT_UPDATE,
};
use pushdown_protocol::PluginSignature;
use wasmtime::{
    Caller, Config, Engine, Instance, InstanceAllocationStrategy, InstancePre, Linker, Memory,
    PoolingAllocationConfig, Store, StoreLimits, StoreLimitsBuilder, Trap, TypedFunc,
};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::p2::pipe::MemoryOutputPipe;
use wasmtime_wasi::{Deterministic, HostMonotonicClock, HostWallClock, WasiCtxBuilder};

use crate::error::{Error, Result};

/// The ABI version this host speaks; a module exporting another is refused.
pub const ABI_VERSION: u32 = 1;

/// The bytes `random_get` returns to a plugin, repeated (see `pushdown-plugins/ABI.md`).
pub const RANDOM_STREAM: [u8; 8] = *b"pushdown";

/// The clocks a plugin sees: always 0 (1970-01-01T00:00:00Z, and monotonic time 0).
struct FrozenClock;

impl HostWallClock for FrozenClock {
    fn resolution(&self) -> Duration {
        Duration::from_secs(1)
    }

    fn now(&self) -> Duration {
        Duration::ZERO
    }
}

impl HostMonotonicClock for FrozenClock {
    fn resolution(&self) -> u64 {
        1_000_000_000
    }

    fn now(&self) -> u64 {
        0
    }
}

/// Concurrent instances per engine (each reserves 4 GiB of address space plus guards).
/// Enough for the tasks in flight plus the idle instances kept per module.
const POOL_SLOTS: u32 = 256;

/// The largest linear memory the pool allows: all of wasm32's 4 GiB. The per-call cap is
/// [`SandboxConfig::max_memory_bytes`], enforced by the store's limiter.
const MAX_LINEAR_MEMORY: usize = 4 << 30;

/// Interval of the epoch ticker that enforces deadlines.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Limits applied to every plugin call.
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Wall-clock deadline of one call. Defaults to 60 s.
    pub deadline: Duration,
    /// Cap on an instance's linear memory in bytes. Defaults to 2 GiB.
    pub max_memory_bytes: usize,
    /// Cap on the Wasm stack in bytes. Defaults to 1 MiB.
    pub max_stack_bytes: usize,
    /// Cap on the result a call returns, in bytes. Defaults to 1 GiB.
    pub max_output_bytes: usize,
    /// Cap on captured stdout and stderr, each, in bytes. Defaults to 64 KiB.
    pub max_stdio_bytes: usize,
    /// Cap on the size of a module (binary or text) at load, in bytes. Defaults to 64 MiB.
    pub max_module_bytes: usize,
    /// Folder of the on-disk cache of compiled modules. Defaults to `None`:
    /// `$PUSHDOWN_CACHE_DIR/modules`, else `$XDG_CACHE_HOME/pushdown/modules`, else
    /// `~/.cache/pushdown/modules`.
    pub cache_dir: Option<std::path::PathBuf>,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        Self {
            deadline: Duration::from_secs(60),
            max_memory_bytes: 2 << 30,
            max_stack_bytes: 1 << 20,
            max_output_bytes: 1 << 30,
            max_stdio_bytes: 64 << 10,
            max_module_bytes: 64 << 20,
            cache_dir: None,
        }
    }
}

/// The wasmtime engines, the epoch ticker and the limits.
pub struct Sandbox {
    /// Epoch interruption on: user plugins and pipeline modules from outside; made on
    /// first use ([`Sandbox::engine`]), or the message of why it could not be.
    engine: OnceLock<std::result::Result<Engine, String>>,
    /// No epoch checks: the built-in module alone ([`Sandbox::load_builtin`]), which
    /// checks its deadline between batches (`pushdown.check_deadline`).
    builtin_engine: Engine,
    config: SandboxConfig,
    stop_ticker: Arc<AtomicBool>,
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        self.stop_ticker.store(true, Ordering::Relaxed);
    }
}

struct HostState {
    wasi: WasiP1Ctx,
    limits: StoreLimits,
    /// The user plugins the current call may call through `pushdown.call_plugin`, by name.
    plugins: Arc<HashMap<String, PluginModule>>,
    /// The result or error message of the last `pushdown.call_plugin`, until `take_result`.
    pending: Vec<u8>,
    /// When the current call's deadline passes (`pushdown.check_deadline` traps after
    /// it); `None` when it lies beyond what [`Instant`] represents.
    deadline: Option<Instant>,
}

/// Operations of the `pushdown.call_plugin` host import, by code.
const HOST_OPS: [&str; 4] = [EXPORT_SCALAR, EXPORT_UPDATE, EXPORT_MERGE, EXPORT_FINALIZE];

/// The user-plugin export of `pushdown.call_plugin` operation `op` (ABI.md).
pub(crate) fn host_op_export(op: u32) -> Option<&'static str> {
    HOST_OPS.get(op as usize).copied()
}

/// Adds the host functions the built-in pipeline imports from module `pushdown`:
/// `call_plugin(name_ptr, name_len, op, in_ptr, in_len) -> i64` runs export `HOST_OPS[op]`
/// of the named user plugin over the input bytes and returns the result's length (or, for
/// an error, `-1 - len` of the message); `take_result(dst)` copies that result into linear
/// memory at `dst`. See `pushdown-plugins/ABI.md`.
fn add_host_calls(linker: &mut Linker<HostState>) -> wasmtime::Result<()> {
    fn memory(caller: &mut Caller<'_, HostState>) -> wasmtime::Result<Memory> {
        caller
            .get_export("memory")
            .and_then(|e| e.into_memory())
            .ok_or_else(|| wasmtime::format_err!("no exported memory"))
    }
    linker.func_wrap(
        "pushdown",
        "call_plugin",
        |mut caller: Caller<'_, HostState>,
         name_ptr: u32,
         name_len: u32,
         op: u32,
         in_ptr: u32,
         in_len: u32|
         -> wasmtime::Result<i64> {
            let mem = memory(&mut caller)?;
            let data = mem.data(&caller);
            let slice = |ptr: u32, len: u32| {
                data.get(ptr as usize..ptr as usize + len as usize)
                    .ok_or_else(|| {
                        wasmtime::format_err!(
                            "call_plugin: bytes {ptr}+{len} outside linear memory"
                        )
                    })
            };
            let name = String::from_utf8_lossy(slice(name_ptr, name_len)?).into_owned();
            let input = slice(in_ptr, in_len)?.to_vec();
            let export = HOST_OPS
                .get(op as usize)
                .ok_or_else(|| wasmtime::format_err!("call_plugin: unknown operation {op}"))?;
            let plugin = caller.data().plugins.get(&name).cloned();
            let result = match plugin {
                None => Err(format!("plugin {name} is not available to this task")),
                Some(p) => p
                    .invoke(export, &input, None)
                    .map(|out| out.payload)
                    .map_err(|e| e.to_string()),
            };
            let (code, bytes) = match result {
                Ok(b) => (b.len() as i64, b),
                Err(m) => (-1 - m.len() as i64, m.into_bytes()),
            };
            caller.data_mut().pending = bytes;
            Ok(code)
        },
    )?;
    // A trap like an epoch's once the call's deadline has passed: the built-in module,
    // which runs without epoch checks, calls it between record batches.
    linker.func_wrap(
        "pushdown",
        "check_deadline",
        |caller: Caller<'_, HostState>| -> wasmtime::Result<()> {
            if caller.data().deadline.is_some_and(|d| Instant::now() >= d) {
                return Err(Trap::Interrupt.into());
            }
            Ok(())
        },
    )?;
    linker.func_wrap(
        "pushdown",
        "take_result",
        |mut caller: Caller<'_, HostState>, dst: u32| -> wasmtime::Result<()> {
            let mem = memory(&mut caller)?;
            let pending = std::mem::take(&mut caller.data_mut().pending);
            mem.data_mut(&mut caller)
                .get_mut(dst as usize..dst as usize + pending.len())
                .ok_or_else(|| {
                    wasmtime::format_err!("take_result: destination outside linear memory")
                })?
                .copy_from_slice(&pending);
            Ok(())
        },
    )?;
    Ok(())
}

impl Sandbox {
    /// Creates the engines (Cranelift; epoch interruption on all but the built-in
    /// module's) and starts the epoch ticker.
    ///
    /// # Errors
    /// [`Error::Internal`] when wasmtime rejects the configuration.
    pub fn new(config: SandboxConfig) -> Result<Self> {
        let builtin_engine = new_engine(&config, false)?;
        Ok(Self {
            engine: OnceLock::new(),
            builtin_engine,
            config,
            stop_ticker: Arc::new(AtomicBool::new(false)),
        })
    }

    /// The engine with epoch interruption, made (and its epoch ticker started) the first
    /// time a module from outside is validated or loaded: a node that runs only the
    /// built-in module never reserves its instance pool (4 ms of start-up).
    ///
    /// # Errors
    /// [`Error::Internal`] when wasmtime rejects the configuration or the ticker thread
    /// cannot start.
    fn engine(&self) -> Result<&Engine> {
        self.engine
            .get_or_init(|| {
                let engine = new_engine(&self.config, true).map_err(|e| e.to_string())?;
                let (ticker_engine, stop) = (engine.weak(), self.stop_ticker.clone());
                std::thread::Builder::new()
                    .name("pushdown-epoch".into())
                    .spawn(move || {
                        while !stop.load(Ordering::Relaxed) {
                            std::thread::sleep(EPOCH_TICK);
                            match ticker_engine.upgrade() {
                                Some(engine) => engine.increment_epoch(),
                                None => break,
                            }
                        }
                    })
                    .map_err(|e| format!("epoch thread: {e}"))?;
                Ok(engine)
            })
            .as_ref()
            .map_err(|m| Error::Internal(m.clone()))
    }

    /// The limits in force.
    pub fn config(&self) -> &SandboxConfig {
        &self.config
    }

    /// Compiles (or loads from the on-disk cache) and validates a pipeline module: the
    /// built-in one, or any module with its ABI.
    ///
    /// `bytes` is a binary `.wasm` module or WebAssembly text. The module must export
    /// `memory`, `pushdown_abi_version() -> i32` returning [`ABI_VERSION`], `pushdown_alloc`
    /// and `pushdown_run`, and import nothing but WASI preview 1 and the host calls of
    /// module `pushdown` (`call_plugin`, `take_result`, `check_deadline`).
    ///
    /// # Errors
    /// [`Error::Plugin`] when it does not compile, lacks an export, or has another ABI version.
    pub fn load(&self, name: &str, bytes: &[u8]) -> Result<PluginModule> {
        self.load_pipeline(name, bytes, cache::sha256_hex(bytes), false)
    }

    /// Loads the built-in pipeline module embedded in this binary
    /// ([`crate::BUILTIN_WASM`], hashed when it was built) on the engine without epoch
    /// checks: it checks its deadline itself between record batches (see the module docs).
    ///
    /// # Errors
    /// As [`Sandbox::load`].
    pub fn load_builtin(&self) -> Result<PluginModule> {
        self.load_pipeline(
            crate::BUILTIN_PLUGIN,
            crate::BUILTIN_WASM,
            env!("PUSHDOWN_BUILTIN_WASM_SHA256").to_string(),
            true,
        )
    }

    fn load_pipeline(
        &self,
        name: &str,
        bytes: &[u8],
        sha256: String,
        builtin: bool,
    ) -> Result<PluginModule> {
        let plugin = self.link(name, bytes, true, sha256, builtin)?;
        for export in [
            "memory",
            "pushdown_abi_version",
            "pushdown_alloc",
            "pushdown_run",
        ] {
            plugin.require_export(export)?;
        }
        plugin.check_version()?;
        Ok(plugin)
    }

    /// Compiles (or loads from the on-disk cache) and validates a user plugin, returning it
    /// with its declared signature.
    ///
    /// The module must import nothing but WASI preview 1, export what every plugin exports
    /// ([`COMMON_EXPORTS`]), return [`ABI_VERSION`], declare a well-formed signature, and
    /// export what its kind needs ([`pushdown_protocol::PluginKind::exports`]); see `pushdown-plugins/ABI.md`.
    ///
    /// # Errors
    /// [`Error::Plugin`] saying which of these fails.
    pub fn load_plugin(&self, name: &str, bytes: &[u8]) -> Result<(PluginModule, PluginSignature)> {
        let plugin = self.link(name, bytes, false, cache::sha256_hex(bytes), false)?;
        for export in COMMON_EXPORTS {
            plugin.require_export(export)?;
        }
        plugin.check_version()?;
        let json = plugin.signature_bytes()?;
        let signature = PluginSignature::parse(&json)
            .map_err(|m| plugin.error(format!("declares a malformed signature: {m}")))?;
        for export in signature.kind.exports() {
            plugin.require_export(export).map_err(|_| {
                plugin.error(format!(
                    "declares kind {} but does not export {export}, which a {} plugin needs",
                    signature.kind, signature.kind
                ))
            })?;
        }
        Ok((plugin, signature))
    }

    /// Checks `bytes` (binary or text) before anything is compiled or cached: within the
    /// module size cap, and valid WebAssembly for this engine's features (`wasmtime::Module::validate`, a
    /// linear pass much cheaper than compiling).
    ///
    /// # Errors
    /// [`Error::Plugin`] naming the cap or the validation error.
    pub fn validate_module(&self, name: &str, bytes: &[u8]) -> Result<()> {
        let plugin_err = |message: String| Error::Plugin {
            plugin: name.to_string(),
            message,
        };
        self.check_module_size(name, bytes)?;
        // WebAssembly text is converted first (as compiling would).
        let binary = wat::parse_bytes(bytes).map_err(|e| {
            plugin_err(format!(
                "is neither a Wasm module nor valid WebAssembly text: {e}"
            ))
        })?;
        // Both engines enable the same Wasm features; this one always exists.
        wasmtime::Module::validate(&self.builtin_engine, &binary)
            .map_err(|e| plugin_err(format!("is not a valid WebAssembly module: {e:#}")))
    }

    /// [`Error::Plugin`] when `bytes` are over [`SandboxConfig::max_module_bytes`].
    fn check_module_size(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if bytes.len() > self.config.max_module_bytes {
            return Err(Error::Plugin {
                plugin: name.to_string(),
                message: format!(
                    "the module is {} MiB, over the cap of {} MiB",
                    bytes.len() >> 20,
                    self.config.max_module_bytes >> 20
                ),
            });
        }
        Ok(())
    }

    /// Compiles (or loads from the cache) and links a module: on the built-in module's
    /// engine when `builtin`, else on the one with epoch interruption.
    fn link(
        &self,
        name: &str,
        bytes: &[u8],
        host_calls: bool,
        sha256: String,
        builtin: bool,
    ) -> Result<PluginModule> {
        let engine = if builtin {
            &self.builtin_engine
        } else {
            self.engine()?
        };
        let plugin_err = |message: String| Error::Plugin {
            plugin: name.to_string(),
            message,
        };
        self.check_module_size(name, bytes)?;
        let module = cache::compile_cached(
            engine,
            bytes,
            &sha256,
            self.config.cache_dir.as_deref(),
            || self.validate_module(name, bytes),
        )
        .map_err(|e| match e {
            cache::Compile::Invalid(e) => e,
            cache::Compile::Failed(e) => plugin_err(format!("does not compile: {e:#}")),
        })?;
        let mut linker: Linker<HostState> = Linker::new(engine);
        wasmtime_wasi::p1::add_to_linker_sync(&mut linker, |s: &mut HostState| &mut s.wasi)
            .map_err(|e| Error::Internal(format!("WASI linker: {e:#}")))?;
        if host_calls {
            add_host_calls(&mut linker)
                .map_err(|e| Error::Internal(format!("host calls: {e:#}")))?;
        }
        let instance_pre = linker.instantiate_pre(&module).map_err(|e| {
            plugin_err(format!(
                "cannot be linked (it may import something beyond WASI preview 1): {e:#}"
            ))
        })?;
        Ok(PluginModule {
            name: name.to_string(),
            instance_pre,
            sha256,
            idle: Arc::default(),
            limits: self.config.clone(),
            traps: Arc::default(),
            epochs: !builtin,
            snapshots: Arc::new(if host_calls {
                checkpointable(bytes)
            } else {
                Err("not a pipeline module".into())
            }),
        })
    }
}

/// A module compiled by [`Sandbox::compile_uncached`] of one sandbox, serialized. Only
/// that function makes one, so [`Sandbox::load_precompiled`] never deserializes bytes of
/// unknown origin.
#[derive(Debug, Clone, Default)]
pub struct Precompiled(Vec<u8>);

impl Precompiled {
    /// Size of the serialized artefact in bytes.
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True when nothing was compiled yet.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Start-up steps one by one, for the benchmarks: compile, load precompiled, instantiate.
impl Sandbox {
    /// Compiles `bytes` (binary or text) with the built-in module's engine, bypassing the
    /// on-disk cache, and returns the serialized artefact that [`Sandbox::load_precompiled`]
    /// takes.
    ///
    /// # Errors
    /// [`Error::Plugin`] naming `name` when the module does not compile.
    pub fn compile_uncached(&self, name: &str, bytes: &[u8]) -> Result<Precompiled> {
        let plugin_err = |e: wasmtime::Error| Error::Plugin {
            plugin: name.to_string(),
            message: format!("does not compile: {e:#}"),
        };
        let module = wasmtime::Module::new(&self.builtin_engine, bytes).map_err(plugin_err)?;
        module.serialize().map(Precompiled).map_err(plugin_err)
    }

    /// Loads an artefact from [`Sandbox::compile_uncached`] of this same sandbox (what the
    /// on-disk cache does on a hit) and drops it.
    ///
    /// # Errors
    /// [`Error::Plugin`] naming `name` when wasmtime refuses the artefact.
    pub fn load_precompiled(&self, name: &str, serialized: &Precompiled) -> Result<()> {
        // SAFETY: a `Precompiled` is made only by `compile_uncached`, from wasmtime's own
        // serialization, and wasmtime checks the engine's compatibility hash before use.
        unsafe { wasmtime::Module::deserialize(&self.builtin_engine, &serialized.0) }
            .map(drop)
            .map_err(|e| Error::Plugin {
                plugin: name.to_string(),
                message: format!("precompiled artefact refused: {e:#}"),
            })
    }
}

/// An engine with this sandbox's Wasm stack cap, Cranelift at `Speed`, the pooling
/// instance allocator and copy-on-write memory images; with epoch interruption when
/// `epochs`.
///
/// # Errors
/// [`Error::Internal`] when wasmtime rejects the configuration.
fn new_engine(config: &SandboxConfig, epochs: bool) -> Result<Engine> {
    let mut wasm_config = Config::new();
    wasm_config.epoch_interruption(epochs);
    wasm_config.max_wasm_stack(config.max_stack_bytes);
    wasm_config.cranelift_opt_level(wasmtime::OptLevel::Speed);
    // Instances come from a pool of pre-reserved slots, and linear memory starts as a
    // copy-on-write mapping of the module's data segments, so a task's instance costs
    // microseconds, not a fresh mmap and a copy of the data segments.
    let mut pool = PoolingAllocationConfig::new();
    pool.total_memories(POOL_SLOTS)
        .total_tables(POOL_SLOTS)
        .total_core_instances(POOL_SLOTS)
        .max_memory_size(MAX_LINEAR_MEMORY);
    wasm_config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
    wasm_config.memory_init_cow(true);
    // `PUSHDOWN_WASM_PERFMAP=1`: write /tmp/perf-<pid>.map so `perf report` names the
    // guest's functions (needs wasmtime's `profiling` feature).
    if std::env::var_os("PUSHDOWN_WASM_PERFMAP").is_some() {
        wasm_config.profiler(wasmtime::ProfilingStrategy::PerfMap);
    }
    Engine::new(&wasm_config).map_err(|e| Error::Internal(format!("wasmtime engine: {e:#}")))
}

/// Epoch ticks in `deadline`, at least one.
fn deadline_ticks(deadline: Duration) -> u64 {
    (deadline.as_millis() / EPOCH_TICK.as_millis()).max(1) as u64
}

/// Idle instances kept per module for reuse.
const MAX_IDLE_INSTANCES: usize = 8;

/// An instance whose linear memory grew past this many bytes (256 MiB) is dropped after
/// its call instead of being kept idle, so a node's resident memory falls back after a
/// large task.
pub const MAX_IDLE_MEMORY_BYTES: usize = 256 << 20;

type Alloc = TypedFunc<u32, u32>;
type Free = TypedFunc<(u32, u32), ()>;

/// An instance with its store and the ABI's exports.
struct Live {
    store: Store<HostState>,
    instance: Instance,
    memory: Memory,
    alloc: Alloc,
    free: Option<Free>,
    stdout: MemoryOutputPipe,
    stderr: MemoryOutputPipe,
}

impl Live {
    /// Allocates `len` bytes in the guest and lets `fill` write them; returns the pointer.
    fn write_input(
        &mut self,
        plugin: &PluginModule,
        len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> wasmtime::Result<Result<u32>> {
        let Ok(len32) = u32::try_from(len) else {
            return Ok(Err(
                plugin.error(format!("input of {len} bytes exceeds 4 GiB"))
            ));
        };
        let ptr = self.alloc.call(&mut self.store, len32)?;
        let data = self.memory.data_mut(&mut self.store);
        let Some(slot) = data.get_mut(ptr as usize..ptr as usize + len) else {
            return Ok(Err(plugin.error(format!(
                "pushdown_alloc returned {ptr}, outside linear memory"
            ))));
        };
        Ok(fill(slot).map(|()| ptr))
    }

    /// Reads the result buffer `(ptr << 32) | len` an entry point returned: status byte,
    /// then the payload or an error message.
    fn read_result(&self, plugin: &PluginModule, packed: u64) -> Result<(CallOutput, u32, u32)> {
        let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
        if len > plugin.limits.max_output_bytes {
            return Err(plugin.error(format!(
                "returned {len} bytes, over the output cap of {} bytes",
                plugin.limits.max_output_bytes
            )));
        }
        let data = self.memory.data(&self.store);
        let Some(out) = data.get(ptr..ptr.saturating_add(len)) else {
            return Err(plugin.error(format!(
                "returned bytes {ptr}..{} outside its linear memory of {} bytes",
                ptr.saturating_add(len),
                data.len()
            )));
        };
        let memory_bytes = data.len();
        match out.split_first() {
            Some((0, payload)) => Ok((
                CallOutput {
                    payload: payload.to_vec(),
                    memory_bytes,
                },
                ptr as u32,
                len as u32,
            )),
            Some((1, message)) => Err(plugin.error(String::from_utf8_lossy(message).into_owned())),
            _ => Err(plugin.error("returned a result without a valid status byte".into())),
        }
    }
}

/// A compiled, linked plugin, ready to instantiate per call.
#[derive(Clone)]
pub struct PluginModule {
    name: String,
    instance_pre: InstancePre<HostState>,
    sha256: String,
    idle: Arc<Mutex<Vec<Live>>>,
    limits: SandboxConfig,
    /// When its calls trapped, most recent last (at most [`TRAPS_KEPT`]), and the last
    /// message; shared by the clones of the module.
    traps: Arc<Mutex<TrapLog>>,
    /// Compiled with epoch checks (every module but the built-in one).
    epochs: bool,
    /// Whether its instances can be snapshotted ([`checkpointable`]); checked for pipeline
    /// modules only.
    snapshots: Arc<std::result::Result<(), String>>,
}

/// Traps of one module remembered for quarantine decisions.
pub const TRAPS_KEPT: usize = 64;

/// The recent traps of a module.
#[derive(Debug, Default)]
struct TrapLog {
    times: std::collections::VecDeque<std::time::Instant>,
    total: u64,
    last: String,
}

/// What one call to `pushdown_run` returned.
#[derive(Debug)]
pub struct CallOutput {
    /// The payload on success (status byte removed).
    pub payload: Vec<u8>,
    /// Peak linear memory of the instance in bytes.
    pub memory_bytes: usize,
}

impl PluginModule {
    /// This plugin's limits in place of the node's: deadline, linear memory, output and
    /// stdio caps. (The Wasm stack limit and the module-size cap are the engine's.) Idle
    /// instances made under the old limits are dropped.
    pub fn with_limits(mut self, limits: SandboxConfig) -> Self {
        self.limits = limits;
        self.idle = Arc::default();
        self
    }

    /// The limits its calls run under.
    pub fn limits(&self) -> &SandboxConfig {
        &self.limits
    }

    /// The plugin's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Hex SHA-256 of the module's bytes.
    pub fn sha256(&self) -> &str {
        &self.sha256
    }

    /// The module's imports, as `module::name` (`wasi_snapshot_preview1::fd_write`).
    pub fn imports(&self) -> Vec<String> {
        self.instance_pre
            .module()
            .imports()
            .map(|i| format!("{}::{}", i.module(), i.name()))
            .collect()
    }

    /// How many of its calls have trapped (a deadline, a memory cap, `unreachable`, ...).
    pub fn trap_count(&self) -> u64 {
        self.traps.lock().expect("not poisoned").total
    }

    /// When at least `traps` of its calls trapped within `window` and the last of them
    /// is less than `cool_off` old: the number of those traps and the last one's message.
    /// (A quarantine's condition: the module should not run here for now.)
    pub fn quarantined(
        &self,
        traps: usize,
        window: std::time::Duration,
        cool_off: std::time::Duration,
    ) -> Option<(usize, String)> {
        let log = self.traps.lock().expect("not poisoned");
        let last = *log.times.back()?;
        if traps == 0 || last.elapsed() >= cool_off {
            return None;
        }
        let recent = log
            .times
            .iter()
            .filter(|t| last.duration_since(**t) <= window)
            .count();
        (recent >= traps).then(|| (recent, log.last.clone()))
    }

    /// Whether the module exports `name` (e.g. the optional `pushdown_can_skip`).
    pub fn has_export(&self, name: &str) -> bool {
        self.instance_pre.module().get_export(name).is_some()
    }

    /// The names of the module's exports.
    pub fn exports(&self) -> Vec<String> {
        self.instance_pre
            .module()
            .exports()
            .map(|e| e.name().to_string())
            .collect()
    }

    fn error(&self, message: String) -> Error {
        Error::Plugin {
            plugin: self.name.clone(),
            message,
        }
    }

    fn require_export(&self, export: &str) -> Result<()> {
        match self.instance_pre.module().get_export(export) {
            Some(_) => Ok(()),
            None => Err(self.error(format!(
                "does not export {export}, which the pushdown ABI requires"
            ))),
        }
    }

    fn check_version(&self) -> Result<()> {
        let version = self.abi_version()?;
        if version != ABI_VERSION {
            return Err(self.error(format!(
                "exports ABI version {version}; this host speaks version {ABI_VERSION}"
            )));
        }
        Ok(())
    }

    fn new_store(&self) -> (Store<HostState>, MemoryOutputPipe, MemoryOutputPipe) {
        let stdout = MemoryOutputPipe::new(self.limits.max_stdio_bytes);
        let stderr = MemoryOutputPipe::new(self.limits.max_stdio_bytes);
        // No preopened directories, environment, arguments or network; clocks frozen at the
        // epoch and randomness from a fixed stream, so a task's result depends on its input only.
        let wasi = WasiCtxBuilder::new()
            .stdout(stdout.clone())
            .stderr(stderr.clone())
            .wall_clock(FrozenClock)
            .monotonic_clock(FrozenClock)
            .secure_random(Deterministic::new(RANDOM_STREAM.to_vec()))
            .insecure_random(Deterministic::new(RANDOM_STREAM.to_vec()))
            .insecure_random_seed(0)
            .build_p1();
        let limits = StoreLimitsBuilder::new()
            .memory_size(self.limits.max_memory_bytes)
            .instances(1)
            .tables(4)
            .memories(1)
            .trap_on_grow_failure(true)
            .build();
        let mut store = Store::new(
            self.instance_pre.module().engine(),
            HostState {
                wasi,
                limits,
                plugins: Arc::default(),
                pending: Vec::new(),
                deadline: None,
            },
        );
        store.limiter(|s| &mut s.limits);
        if self.epochs {
            store.epoch_deadline_trap();
        }
        self.arm_deadline(&mut store);
        (store, stdout, stderr)
    }

    /// Starts the deadline of a call on `store`: epoch ticks for a module with epoch
    /// checks, and the instant `pushdown.check_deadline` compares with for every module.
    fn arm_deadline(&self, store: &mut Store<HostState>) {
        if self.epochs {
            store.set_epoch_deadline(deadline_ticks(self.limits.deadline));
        }
        store.data_mut().deadline = Instant::now().checked_add(self.limits.deadline);
    }

    fn abi_version(&self) -> Result<u32> {
        let (mut store, stdout, stderr) = self.new_store();
        let result = (|| -> wasmtime::Result<u32> {
            let instance = self.instance_pre.instantiate(&mut store)?;
            let f = instance.get_typed_func::<(), u32>(&mut store, "pushdown_abi_version")?;
            f.call(&mut store, ())
        })();
        result.map_err(|e| self.describe(e, &stdout, &stderr))
    }

    /// The raw bytes `pushdown_signature` returns (a user plugin's JSON signature).
    fn signature_bytes(&self) -> Result<Vec<u8>> {
        self.with_instance(Arc::default(), |live| {
            let f = live
                .instance
                .get_typed_func::<(), u64>(&mut live.store, EXPORT_SIGNATURE)?;
            let packed = f.call(&mut live.store, ())?;
            let (ptr, len) = ((packed >> 32) as usize, (packed & 0xffff_ffff) as usize);
            let data = live.memory.data(&live.store);
            Ok(match data.get(ptr..ptr.saturating_add(len)) {
                Some(bytes) if len <= 1 << 20 => Ok((
                    CallOutput {
                        payload: bytes.to_vec(),
                        memory_bytes: data.len(),
                    },
                    ptr as u32,
                    len as u32,
                )),
                _ => Err(self.error(format!(
                    "{EXPORT_SIGNATURE} returned bytes {ptr}..{} outside its linear memory or over 1 MiB",
                    ptr.saturating_add(len)
                ))),
            })
        })
        .map(|out| out.payload)
    }

    /// Creates a store (WASI context, limits, deadline) and instantiates the module from its
    /// pre-linked template in a pooled slot, then drops both: the start-up cost of a task
    /// that finds no idle instance. For the benchmarks.
    ///
    /// # Errors
    /// [`Error::Plugin`] when instantiation fails (e.g. every pool slot is taken).
    pub fn instantiate_once(&self) -> Result<()> {
        let (mut store, stdout, stderr) = self.new_store();
        self.instance_pre
            .instantiate(&mut store)
            .map(drop)
            .map_err(|e| self.describe(e, &stdout, &stderr))
    }

    /// Instantiates the module in a new store and looks up the ABI's exports.
    fn instantiate(&self) -> Result<Live> {
        let (mut store, stdout, stderr) = self.new_store();
        let result = (|| -> wasmtime::Result<(Instance, Memory, Alloc, Option<Free>)> {
            let instance = self.instance_pre.instantiate(&mut store)?;
            if let Ok(init) = instance.get_typed_func::<(), ()>(&mut store, "_initialize") {
                init.call(&mut store, ())?;
            }
            let memory = instance
                .get_memory(&mut store, "memory")
                .ok_or_else(|| wasmtime::format_err!("no exported memory"))?;
            let alloc = instance.get_typed_func::<u32, u32>(&mut store, "pushdown_alloc")?;
            let free = instance
                .get_typed_func::<(u32, u32), ()>(&mut store, "pushdown_free")
                .ok();
            Ok((instance, memory, alloc, free))
        })();
        match result {
            Ok((instance, memory, alloc, free)) => Ok(Live {
                store,
                instance,
                memory,
                alloc,
                free,
                stdout,
                stderr,
            }),
            Err(e) => Err(self.describe(e, &stdout, &stderr)),
        }
    }

    /// Runs `f` on an instance: an idle one of this module or a new one, with a fresh
    /// deadline and `plugins` reachable through the host calls. `f` returns the call's
    /// output and the result buffer `(ptr, len)`.
    ///
    /// After a call that succeeded without printing anything, and when the module exports
    /// `pushdown_free`, the result buffer is freed and the instance kept for the next call;
    /// after anything else (a trap, an error, output on stdout or stderr) it is dropped,
    /// never reused.
    fn with_instance(
        &self,
        plugins: Arc<HashMap<String, PluginModule>>,
        f: impl FnOnce(&mut Live) -> wasmtime::Result<Result<(CallOutput, u32, u32)>>,
    ) -> Result<CallOutput> {
        let idle = self.idle.lock().expect("not poisoned").pop();
        let mut live = match idle {
            Some(live) => live,
            None => self.instantiate()?,
        };
        self.arm_deadline(&mut live.store);
        live.store.data_mut().plugins = plugins;
        let result = f(&mut live);
        live.store.data_mut().plugins = Arc::default();
        match result {
            Ok(Ok((output, ptr, len))) => {
                let quiet = live.stdout.contents().is_empty() && live.stderr.contents().is_empty();
                // An instance whose linear memory grew past the threshold is dropped, not
                // kept idle: linear memory never shrinks, and the pool slot's pages go back
                // to the system only when the instance is dropped.
                let small = live.memory.data_size(&live.store) <= MAX_IDLE_MEMORY_BYTES;
                if let (true, true, Some(free)) = (quiet, small, live.free.clone()) {
                    if free.call(&mut live.store, (ptr, len)).is_ok() {
                        let mut idle = self.idle.lock().expect("not poisoned");
                        if idle.len() < MAX_IDLE_INSTANCES {
                            idle.push(live);
                        }
                    }
                }
                Ok(output)
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(self.describe(e, &live.stdout, &live.stderr)),
        }
    }

    /// Runs `pushdown_run`: `request` and the input (written by `fill` straight into linear
    /// memory, `input_len` bytes) go in, the result buffer comes out. Instances are reused
    /// as [`PluginModule::with_instance`] says.
    ///
    /// # Errors
    /// [`Error::Plugin`] when the call traps (deadline, memory cap, panic), returns an
    /// out-of-bounds or over-cap buffer, or reports an error of its own.
    pub fn call(
        &self,
        request: &[u8],
        input_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
    ) -> Result<CallOutput> {
        self.call_with_plugins(request, input_len, fill, Arc::default())
    }

    /// [`PluginModule::call`] with the user plugins the pipeline may call through the
    /// `pushdown.call_plugin` host import, by name.
    ///
    /// # Errors
    /// As [`PluginModule::call`]; a failing user plugin's error comes back through the
    /// pipeline's own.
    pub fn call_with_plugins(
        &self,
        request: &[u8],
        input_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
        plugins: Arc<HashMap<String, PluginModule>>,
    ) -> Result<CallOutput> {
        self.with_instance(plugins, |live| {
            let request_ptr = match live.write_input(self, request.len(), |slot| {
                slot.copy_from_slice(request);
                Ok(())
            })? {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let input_ptr = match live.write_input(self, input_len, fill)? {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let run = live
                .instance
                .get_typed_func::<(u32, u32, u32, u32), u64>(&mut live.store, "pushdown_run")?;
            let packed = run.call(
                &mut live.store,
                (
                    request_ptr,
                    request.len() as u32,
                    input_ptr,
                    input_len as u32,
                ),
            )?;
            Ok(live.read_result(self, packed))
        })
    }

    /// Calls a user plugin's entry point `export` (`pushdown_scalar`,
    /// `pushdown_aggregate_update`, ...; `pushdown_parse` with `first_line`) over `input`.
    ///
    /// # Errors
    /// As [`PluginModule::call`].
    pub fn invoke(
        &self,
        export: &str,
        input: &[u8],
        first_line: Option<u64>,
    ) -> Result<CallOutput> {
        self.invoke_with(
            export,
            input.len(),
            |slot| {
                slot.copy_from_slice(input);
                Ok(())
            },
            first_line,
        )
    }

    /// [`PluginModule::invoke`] with the input written by `fill` straight into linear memory.
    ///
    /// # Errors
    /// As [`PluginModule::call`].
    pub fn invoke_with(
        &self,
        export: &str,
        input_len: usize,
        fill: impl FnOnce(&mut [u8]) -> Result<()>,
        first_line: Option<u64>,
    ) -> Result<CallOutput> {
        self.with_instance(Arc::default(), |live| {
            let ptr = match live.write_input(self, input_len, fill)? {
                Ok(p) => p,
                Err(e) => return Ok(Err(e)),
            };
            let packed = match first_line {
                None => live
                    .instance
                    .get_typed_func::<(u32, u32), u64>(&mut live.store, export)?
                    .call(&mut live.store, (ptr, input_len as u32))?,
                Some(line) => live
                    .instance
                    .get_typed_func::<(u32, u32, u64), u64>(&mut live.store, export)?
                    .call(&mut live.store, (ptr, input_len as u32, line))?,
            };
            Ok(live.read_result(self, packed))
        })
    }

    /// Turns a wasmtime error (usually a trap) into a one-line plugin error with the last
    /// line of the plugin's stderr (a Rust guest prints its panic message there).
    fn describe(
        &self,
        e: wasmtime::Error,
        stdout: &MemoryOutputPipe,
        stderr: &MemoryOutputPipe,
    ) -> Error {
        let reason = match e.downcast_ref::<Trap>() {
            Some(Trap::Interrupt) => {
                format!("trapped: deadline of {:?} exceeded", self.limits.deadline)
            }
            Some(Trap::StackOverflow) => "trapped: stack overflow".to_string(),
            Some(trap) => format!("trapped: {trap}"),
            // The resource limiter refused `memory.grow` (`trap_on_grow_failure`).
            None if e.root_cause().to_string().contains("growing memory") => format!(
                "trapped: linear memory cap of {} MiB reached",
                self.limits.max_memory_bytes >> 20
            ),
            None => format!("failed: {}", e.root_cause()),
        };
        let captured = stderr.contents();
        let said = String::from_utf8_lossy(&captured);
        let last = said
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty() && !l.starts_with("note:"));
        let mut message = match last {
            Some(line) => format!("{reason} ({})", line.trim()),
            None => reason,
        };
        for (name, pipe) in [("stdout", stdout), ("stderr", stderr)] {
            if pipe.contents().len() >= self.limits.max_stdio_bytes {
                let cap = self.limits.max_stdio_bytes >> 10;
                message.push_str(&format!(
                    "; its {name} exceeded the {cap} KiB cap and was cut"
                ));
            }
        }
        log::warn!(
            "plugin {} (sha256 {}) failed: {message}",
            self.name,
            self.sha256
        );
        {
            let mut log = self.traps.lock().expect("not poisoned");
            if log.times.len() == TRAPS_KEPT {
                log.times.pop_front();
            }
            log.times.push_back(std::time::Instant::now());
            log.total += 1;
            log.last = message.clone();
        }
        Error::Plugin {
            plugin: self.name.clone(),
            message,
        }
    }
}
