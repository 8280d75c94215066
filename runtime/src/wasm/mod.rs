//! The Wasm runtime: wasmtime in-process. One [`Engine`] with the pooling allocator and
//! epoch interruption; every container is a task on the agent's tokio runtime.
//!
//! - wasip1 core modules run `_start`; wasip2 components run `wasi:cli/run`.
//! - argv and env come from the config; the only host paths a guest sees are its
//!   mounts (preopens); it has no sockets.
//! - stdout and stderr go to the container's CRI log.
//! - A guest yields at every epoch tick (10 ms), so a busy loop cannot starve the others,
//!   and stopping one is dropping its task, which takes effect at the next tick or await.
//! - A memory limiter caps linear memory; a guest that hits it ends as `OOMKilled`.
//! - Compiled code is cached on disk under the module digest and the engine's
//!   compatibility hash, and in memory as an `InstancePre`: a cached start never compiles.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use wasmtime::component::{Component, ResourceTable};
use wasmtime::{Engine, InstancePre, Module, Store};
use wasmtime_wasi::I32Exit;
use wasmtime_wasi::p2::bindings::CommandPre;
use wasmtime_wasi_http::WasiHttpCtx;
use wasmtime_wasi_http::p2::bindings::ProxyPre;

mod grants;
mod host;
mod http;

use grants::Hooks;
use host::{MemoryCap, P1Host, P2Host, first_line, prepare, wasi_builder};

use crate::log::CriLog;
use crate::{
    ConfigError, ContainerConfig, ContainerState, Error, EventSink, ExecSession, ExitReason, Meter, Metered, Metrics,
    Result, Runtime, RuntimeKind, SandboxConfig, SandboxStatus, Usage, now_ms,
};

/// How often the epoch advances: the slice a busy guest runs before it yields.
const EPOCH_TICK: Duration = Duration::from_millis(10);
/// Bytes of a freed linear memory kept resident for the next instance in its slot.
const KEEP_RESIDENT: usize = 256 << 10;
/// Exit code reported for a guest that trapped (as for an abort).
const TRAP_EXIT: i32 = 134;
/// Exit code reported for a guest that was stopped (as for SIGKILL).
const KILLED_EXIT: i32 = 137;

/// Sizing of the instance pool.
#[derive(Clone, Debug)]
pub struct WasmConfig {
    /// Live instances the pool has room for.
    pub max_instances: u32,
    /// The largest linear memory any guest may have, whatever its limit.
    pub max_memory: usize,
    /// Where compiled code is cached.
    pub cache_dir: PathBuf,
}

impl WasmConfig {
    pub fn new(cache_dir: PathBuf) -> Self {
        WasmConfig { max_instances: 10_500, max_memory: 4 << 30, cache_dir }
    }
}

/// wasmtime behind the runtime interface.
#[derive(Clone)]
pub struct WasmRuntime {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for WasmRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WasmRuntime").finish_non_exhaustive()
    }
}

struct Inner {
    engine: Engine,
    /// The WASI (and wasi:http) host functions, made with the first guest of each kind:
    /// an agent that runs none, or only Linux containers, never pays for them.
    p1: std::sync::OnceLock<wasmtime::Linker<P1Host>>,
    p2: std::sync::OnceLock<wasmtime::component::Linker<P2Host>>,
    cache_dir: PathBuf,
    compat: String,
    loaded: Mutex<HashMap<String, Loaded>>,
    /// Held while a module is compiled or loaded, so each is compiled once.
    loading: Mutex<()>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Where refused network uses are reported.
    events: std::sync::OnceLock<EventSink>,
    /// HTTP requests refused for being over a container's in-flight cap.
    rejected: Arc<std::sync::atomic::AtomicU64>,
    /// What the pool reserved (None: instances allocated on demand).
    pool: Option<PoolSize>,
    /// Stops the epoch ticker when the runtime goes away.
    _ticker: Ticker,
}

#[derive(Clone)]
enum Loaded {
    Module(InstancePre<P1Host>),
    Component(CommandPre<P2Host>),
    /// A component exporting `wasi:http/incoming-handler`: served, not run.
    Http(ProxyPre<P2Host>),
}

struct Container {
    config: ContainerConfig,
    state: watch::Sender<ContainerState>,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    meter: Arc<Meter>,
    /// The log it writes, once started (to reopen it).
    log: std::sync::OnceLock<CriLog>,
}

struct Ticker(Arc<std::sync::atomic::AtomicBool>);

impl Drop for Ticker {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// The smallest linear-memory reservation a pool slot shrinks to before the pool takes
/// fewer slots than asked.
const MIN_RESERVATION: usize = 256 << 20;

/// What the instance pool reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSize {
    /// Live instances it has room for.
    pub slots: u32,
    /// The largest linear memory a guest may have (each slot's reservation).
    pub memory: usize,
}

/// The engine, with a pool of `config.max_instances` slots. Each slot reserves address
/// space for its memory's whole range (4 GiB and a guard, so that compiled code needs
/// no bounds checks); where the address space cannot hold that many slots, each slot's
/// reservation is halved (down to 256 MiB: code then checks bounds, and a guest's memory
/// is capped at the reservation) until it can, and only then are fewer slots taken.
/// No pool at all: on-demand allocation. Returns what the pool reserved.
fn engine(config: &WasmConfig) -> wasmtime::Result<(Engine, Option<PoolSize>)> {
    let mut c = wasmtime::Config::new();
    c.epoch_interruption(true);
    let pooled = |c: &mut wasmtime::Config, size: PoolSize| {
        let n = size.slots;
        let mut pool = wasmtime::PoolingAllocationConfig::default();
        pool.total_core_instances(n)
            .total_component_instances(n)
            .total_memories(n)
            .total_tables(n)
            .total_stacks(n)
            .max_memory_size(size.memory)
            // Reuse without page faults or TLB shootdowns: a freed slot's dirty pages
            // (found with PAGEMAP_SCAN on Linux ≥ 6.7) are reset with memset up to these
            // sizes, rather than madvised away; decommits that remain are batched. An
            // HTTP component makes an instance per request, so this is its hot path.
            .linear_memory_keep_resident(KEEP_RESIDENT)
            .table_keep_resident(64 << 10)
            .pagemap_scan(wasmtime::Enabled::Auto)
            .decommit_batch_size(16);
        c.memory_reservation(size.memory as u64);
        c.allocation_strategy(wasmtime::InstanceAllocationStrategy::Pooling(pool));
        Engine::new(c)
    };
    let wanted = config.max_instances;
    let mut size = PoolSize { slots: wanted, memory: config.max_memory };
    let first = match pooled(&mut c, size) {
        Ok(e) => return Ok((e, Some(size))),
        Err(e) => e,
    };
    // smaller slots, as many of them
    while size.memory / 2 >= MIN_RESERVATION {
        size.memory /= 2;
        if let Ok(e) = pooled(&mut c, size) {
            tracing::warn!(slots = wanted, memory = size.memory, "Wasm instance pool slots shrunk to fit");
            return Ok((e, Some(size)));
        }
    }
    // the largest pool of the smallest slots: halve until one fits, then search between.
    // Each try's reservation is released before the next (two would not fit together).
    let fits = |n: u32| {
        let mut c = c.clone();
        pooled(&mut c, PoolSize { slots: n, ..size }).is_ok()
    };
    let (mut lo, mut fails) = (0, wanted);
    let mut n = wanted / 2;
    while n > 0 && lo == 0 {
        if fits(n) { lo = n } else { (fails, n) = (n, n / 2) }
    }
    if lo > 0 {
        while fails - lo > (wanted / 64).max(1) {
            let mid = lo + (fails - lo) / 2;
            if fits(mid) { lo = mid } else { fails = mid }
        }
        size.slots = lo;
        let engine = pooled(&mut c, size)?;
        tracing::warn!(wanted, reserved = lo, error = %first, "the Wasm instance pool is smaller than asked");
        return Ok((engine, Some(size)));
    }
    // A machine that cannot reserve any pool still runs guests, one mapping each.
    tracing::warn!(error = %first, "pooling allocator unavailable, using on-demand allocation");
    c.memory_reservation(config.max_memory as u64);
    c.allocation_strategy(wasmtime::InstanceAllocationStrategy::OnDemand);
    Ok((Engine::new(&c)?, None))
}

impl WasmRuntime {
    pub fn new(config: WasmConfig) -> Result<Self> {
        let fail = |e: wasmtime::Error| Error::Wasm {
            id: "wasm runtime".into(),
            context: "engine",
            message: format!("{e:#}"),
        };
        let (engine, pool) = engine(&config).map_err(fail)?;
        std::fs::create_dir_all(&config.cache_dir).map_err(|source| Error::Io {
            context: "create compile cache".into(),
            path: config.cache_dir.clone(),
            source,
        })?;
        let mut h = std::collections::hash_map::DefaultHasher::new();
        engine.precompile_compatibility_hash().hash(&mut h);
        let compat = format!("{:016x}", h.finish());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (ticking, stop2) = (engine.clone(), stop.clone());
        std::thread::Builder::new()
            .name("wasm-epoch".into())
            .spawn(move || {
                while !stop2.load(std::sync::atomic::Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    ticking.increment_epoch();
                }
            })
            .map_err(|source| Error::Io { context: "start epoch ticker".into(), path: PathBuf::new(), source })?;
        Ok(WasmRuntime {
            inner: Arc::new(Inner {
                engine,
                p1: std::sync::OnceLock::new(),
                p2: std::sync::OnceLock::new(),
                cache_dir: config.cache_dir,
                compat,
                loaded: Mutex::new(HashMap::new()),
                loading: Mutex::new(()),
                containers: Mutex::new(HashMap::new()),
                events: std::sync::OnceLock::new(),
                rejected: Default::default(),
                pool,
                _ticker: Ticker(stop),
            }),
        })
    }

    /// What the instance pool reserved: the most Wasm containers that can run at once and
    /// the largest memory each may have (None: no pool could be reserved, instances are
    /// allocated on demand).
    pub fn pool(&self) -> Option<PoolSize> {
        self.inner.pool
    }

    /// The module or component with this digest, if it is loaded.
    fn memo(&self, digest: &str) -> Option<Loaded> {
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).get(digest).cloned()
    }

    /// Compiles (or loads from the cache) and pre-links a module or component.
    fn load(&self, path: &Path, digest: &str) -> Result<Loaded> {
        if let Some(l) = self.memo(digest) {
            return Ok(l);
        }
        // One loader at a time: two pods starting the same new module compile it once.
        let _loading = self.inner.loading.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(l) = self.memo(digest) {
            return Ok(l);
        }
        let fail = |context: &'static str, message: String| Error::Wasm { id: digest.into(), context, message };
        let bytes = std::fs::read(path).map_err(|source| Error::Io {
            context: "read wasm".into(),
            path: path.into(),
            source,
        })?;
        let kind =
            WasmBinary::detect(&bytes).ok_or_else(|| fail("load", "not a WebAssembly module or component".into()))?;
        let hex = digest.rsplit(':').next().unwrap_or(digest);
        let cached = self.inner.cache_dir.join(format!("{hex}-{}.cwasm", self.inner.compat));
        if !cached.is_file() {
            let compiled = match kind {
                WasmBinary::Module => self.inner.engine.precompile_module(&bytes),
                WasmBinary::Component => self.inner.engine.precompile_component(&bytes),
            }
            .map_err(|e| fail("compile", format!("{e:#}")))?;
            let tmp = cached.with_extension(format!("tmp{}-{}", std::process::id(), fastrand::u64(..)));
            std::fs::write(&tmp, &compiled)
                .and_then(|()| std::fs::rename(&tmp, &cached))
                .map_err(|source| Error::Io { context: "write compile cache".into(), path: cached.clone(), source })?;
        }
        let loaded = match kind {
            WasmBinary::Module => {
                // SAFETY: the file was written by `precompile_module` of an engine with the same
                // compatibility hash, into our own state directory, and is never modified.
                #[allow(unsafe_code)]
                let module = unsafe { Module::deserialize_file(&self.inner.engine, &cached) }
                    .map_err(|e| fail("load compiled code", format!("{e:#}")))?;
                let linker = self.p1().map_err(|e| fail("link", format!("{e:#}")))?;
                Loaded::Module(linker.instantiate_pre(&module).map_err(|e| fail("link", format!("{e:#}")))?)
            }
            WasmBinary::Component => {
                // SAFETY: as above, written by `precompile_component` of a compatible engine.
                #[allow(unsafe_code)]
                let component = unsafe { Component::deserialize_file(&self.inner.engine, &cached) }
                    .map_err(|e| fail("load compiled code", format!("{e:#}")))?;
                let linker = self.p2().map_err(|e| fail("link", format!("{e:#}")))?;
                let pre = linker.instantiate_pre(&component).map_err(|e| fail("link", format!("{e:#}")))?;
                match ProxyPre::new(pre.clone()) {
                    Ok(proxy) => Loaded::Http(proxy),
                    Err(_) => Loaded::Component(CommandPre::new(pre).map_err(|e| {
                        fail("link", format!("neither a wasi:cli command nor a wasi:http handler: {e:#}"))
                    })?),
                }
            }
        };
        self.inner.loaded.lock().unwrap_or_else(|e| e.into_inner()).insert(digest.to_string(), loaded.clone());
        Ok(loaded)
    }

    /// The WASI preview 1 host functions (built once; loads run under `loading`).
    fn p1(&self) -> wasmtime::Result<&wasmtime::Linker<P1Host>> {
        if let Some(l) = self.inner.p1.get() {
            return Ok(l);
        }
        let mut l = wasmtime::Linker::new(&self.inner.engine);
        wasmtime_wasi::p1::add_to_linker_async(&mut l, |h: &mut P1Host| &mut h.wasi)?;
        Ok(self.inner.p1.get_or_init(|| l))
    }

    /// The WASI preview 2 and wasi:http host functions (built once, as [`Self::p1`]).
    fn p2(&self) -> wasmtime::Result<&wasmtime::component::Linker<P2Host>> {
        if let Some(l) = self.inner.p2.get() {
            return Ok(l);
        }
        let mut l = wasmtime::component::Linker::new(&self.inner.engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut l)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut l)?;
        Ok(self.inner.p2.get_or_init(|| l))
    }

    fn sink(&self) -> Option<EventSink> {
        self.inner.events.get().cloned()
    }

    fn container(&self, id: &str) -> Result<Arc<Container>> {
        self.inner
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| Error::NotFound(id.into()))
    }
}

/// Runs the guest to its end; returns (exit code, reason, message).
async fn run_guest(
    loaded: Loaded,
    config: ContainerConfig,
    log: CriLog,
    sink: Option<EventSink>,
    meter: Arc<Meter>,
) -> (i32, ExitReason, String) {
    let cap = MemoryCap { meter: Some(meter), ..MemoryCap::new(config.memory_limit) };
    let builder = wasi_builder(&config, &log, sink.clone());
    let (result, hit) = match (loaded, builder) {
        (_, Err(e)) => return (128, ExitReason::StartError, e.to_string()),
        (Loaded::Module(pre), Ok(mut b)) => {
            let mut store = Store::new(pre.module().engine(), P1Host { wasi: b.build_p1(), cap });
            prepare(&mut store, |h| &mut h.cap);
            // (instantiation's future is boxed: it is done with once the guest runs, and
            // would otherwise stay in this one, which lives as long as the guest does)
            let r = async {
                let instance = Box::pin(pre.instantiate_async(&mut store)).await?;
                let start = instance.get_typed_func::<(), ()>(&mut store, "_start")?;
                start.call_async(&mut store, ()).await
            }
            .await;
            (r.map(|()| 0), store.data().cap.hit)
        }
        (Loaded::Http(_), Ok(_)) => unreachable!("HTTP components are served, not run"),
        (Loaded::Component(pre), Ok(mut b)) => {
            let host = P2Host {
                ctx: b.build(),
                table: ResourceTable::new(),
                cap,
                http: WasiHttpCtx::new(),
                hooks: Hooks::new(&config, Some(log.clone()), sink.clone()),
            };
            let mut store = Store::new(pre.engine(), host);
            prepare(&mut store, |h| &mut h.cap);
            let r = async {
                let command = Box::pin(pre.instantiate_async(&mut store)).await?;
                command.wasi_cli_run().call_run(&mut store).await
            }
            .await;
            (r.map(|ok| if ok.is_ok() { 0 } else { 1 }), store.data().cap.hit)
        }
    };
    let _ = log.finish();
    match result {
        Ok(0) => (0, ExitReason::Completed, String::new()),
        Ok(code) => (code, ExitReason::Error, String::new()),
        Err(e) => match e.downcast_ref::<I32Exit>() {
            Some(I32Exit(0)) => (0, ExitReason::Completed, String::new()),
            Some(I32Exit(code)) => (*code, ExitReason::Error, String::new()),
            None if hit => (KILLED_EXIT, ExitReason::OOMKilled, format!("memory limit reached: {}", first_line(&e))),
            None => (TRAP_EXIT, ExitReason::Error, first_line(&e)),
        },
    }
}

impl Runtime for WasmRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Wasm
    }

    async fn create_sandbox(&self, _config: &SandboxConfig) -> Result<SandboxStatus> {
        Ok(SandboxStatus::default()) // guests share nothing but what the pod mounts
    }

    async fn sandbox_status(&self, _id: &str) -> Result<SandboxStatus> {
        Ok(SandboxStatus::default())
    }

    async fn remove_sandbox(&self, _id: &str) -> Result<()> {
        Ok(())
    }

    async fn create_container(&self, config: ContainerConfig) -> Result<()> {
        let crate::Artifact::Wasm { path, digest } = &config.artifact else {
            return Err(Error::InvalidConfig {
                id: config.id.clone(),
                source: ConfigError::WrongArtifact("a filesystem image", RuntimeKind::Wasm),
            });
        };
        // a module already loaded is ready; only reading and compiling one goes to a
        // blocking thread (handing every start to one cost a thread's wake-up, and at
        // times its creation: the slowest part of a start with 30,000 pods live)
        if self.memo(digest).is_none() {
            let (this, path, digest) = (self.clone(), path.clone(), digest.clone());
            tokio::task::spawn_blocking(move || this.load(&path, &digest)).await.expect("load task panicked")?;
        }
        let (state, _) = watch::channel(ContainerState::Created);
        let container = Arc::new(Container {
            config,
            state,
            task: Mutex::new(None),
            meter: Default::default(),
            log: Default::default(),
        });
        self.inner.containers.lock().unwrap_or_else(|e| e.into_inner()).insert(container.config.id.clone(), container);
        Ok(())
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let c = self.container(id)?;
        let crate::Artifact::Wasm { digest, path } = &c.config.artifact else { unreachable!("checked at create") };
        let loaded = self.load(path, digest)?;
        let log = CriLog::open(&c.config.log_path, c.config.log).map_err(|source| Error::Io {
            context: "open container log".into(),
            path: c.config.log_path.clone(),
            source,
        })?;
        let _ = c.log.set(log.clone());
        if let Loaded::Http(pre) = loaded {
            // served on its ports until stopped; a port that cannot be bound is a start error
            let listeners = http::bind(&c.config).await?;
            let started_at = now_ms();
            c.state.send_replace(ContainerState::Running { started_at });
            let rejected = self.inner.rejected.clone();
            let serve = http::serve(pre, c.config.clone(), log, listeners, self.sink(), rejected);
            let task = tokio::spawn(Metered::new(serve, c.meter.clone()));
            *c.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
            return Ok(());
        }
        let started_at = now_ms();
        c.state.send_replace(ContainerState::Running { started_at });
        let (config, state, sink, meter) = (c.config.clone(), c.state.clone(), self.sink(), c.meter.clone());
        let task = tokio::spawn(async move {
            let guest = run_guest(loaded, config, log, sink, meter.clone());
            let (exit_code, reason, message) = Metered::new(guest, meter).await;
            state.send_replace(ContainerState::Exited {
                exit_code,
                reason,
                message,
                started_at,
                finished_at: now_ms(),
            });
        });
        *c.task.lock().unwrap_or_else(|e| e.into_inner()) = Some(task);
        Ok(())
    }

    /// A guest has no signal handlers to run, so stopping is immediate: its task is
    /// dropped at the next epoch tick or host call, well within any grace period.
    async fn stop_container(&self, id: &str, _grace: Duration) -> Result<()> {
        let c = self.container(id)?;
        let task = c.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            task.abort();
            let _ = task.await;
        }
        c.state.send_if_modified(|s| match s {
            ContainerState::Running { started_at } => {
                let started_at = *started_at;
                *s = ContainerState::Exited {
                    exit_code: KILLED_EXIT,
                    reason: ExitReason::Error,
                    message: "stopped".into(),
                    started_at,
                    finished_at: now_ms(),
                };
                true
            }
            _ => false,
        });
        Ok(())
    }

    async fn remove_container(&self, id: &str) -> Result<()> {
        self.stop_container(id, Duration::ZERO).await?;
        self.inner.containers.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
        Ok(())
    }

    async fn container_status(&self, id: &str) -> Result<ContainerState> {
        Ok(self.container(id)?.state.borrow().clone())
    }

    async fn wait_container(&self, id: &str) -> Result<ContainerState> {
        let mut rx = self.container(id)?.state.subscribe();
        let state = rx
            .wait_for(|s| matches!(s, ContainerState::Exited { .. }))
            .await
            .map_err(|_| Error::NotFound(id.into()))?;
        Ok(state.clone())
    }

    fn list_containers(&self) -> Vec<String> {
        self.inner.containers.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    /// A guest's CPU time (charged per poll) and linear memory size.
    fn container_stats(&self, id: &str) -> Option<Usage> {
        self.container(id).ok().map(|c| c.meter.usage())
    }

    /// A guest is one program with no shell or process table to run a command in.
    async fn exec_sync(&self, _id: &str, _command: &[String]) -> Result<i32> {
        Err(Error::Unsupported { what: "exec", runtime: RuntimeKind::Wasm })
    }

    async fn exec(&self, _id: &str, _command: &[String], _tty: bool) -> Result<ExecSession> {
        Err(Error::Unsupported { what: "exec", runtime: RuntimeKind::Wasm })
    }

    /// A guest's memory cap is fixed when its store is made.
    async fn update_resources(&self, id: &str, _resources: &crate::Resources) -> Result<()> {
        self.container(id)?;
        Err(Error::Unsupported { what: "changing a guest's limits in place", runtime: RuntimeKind::Wasm })
    }

    async fn reopen_log(&self, id: &str) -> Result<()> {
        if let Some(log) = self.container(id)?.log.get() {
            log.reopen();
        }
        Ok(())
    }

    /// Sets where refused network uses are reported (once).
    fn set_event_sink(&self, sink: EventSink) {
        let _ = self.inner.events.set(sink);
    }

    fn metrics(&self) -> Metrics {
        Metrics { http_rejected: self.inner.rejected.load(std::sync::atomic::Ordering::Relaxed) }
    }
}

/// Which kind of Wasm binary a file is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum WasmBinary {
    Module,
    Component,
}

impl WasmBinary {
    /// Reads the 8-byte preamble: `\0asm` then version 1 (module) or the component layer.
    fn detect(header: &[u8]) -> Option<WasmBinary> {
        match header.get(..8)? {
            [0, b'a', b's', b'm', 1, 0, 0, 0] => Some(WasmBinary::Module),
            [0, b'a', b's', b'm', _, _, 1, 0] => Some(WasmBinary::Component),
            _ => None,
        }
    }
}
