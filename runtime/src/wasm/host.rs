//! What a guest's store holds: WASI contexts (p1 and p2, with `wasi:http`), the memory
//! cap, stdout and stderr into the CRI log; and how a store is prepared to run.

use std::sync::Arc;

use wasmtime::component::ResourceTable;
use wasmtime::{ResourceLimiter, Store, UpdateDeadline};
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p1::WasiP1Ctx;
use wasmtime_wasi::{FsPerms, WasiCtx, WasiCtxBuilder, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

use super::grants::{Grants, Hooks};
use crate::log::{CriLog, LogWriter, Stream};
use crate::{ContainerConfig, Error, EventSink, Meter, Result};

/// Caps linear memory, remembering whether the cap was hit.
pub(crate) struct MemoryCap {
    pub(crate) limit: Option<usize>,
    pub(crate) hit: bool,
    /// Where the linear memory's size is shown (a run-to-completion guest's).
    pub(crate) meter: Option<Arc<Meter>>,
}

impl MemoryCap {
    pub(crate) fn new(limit: Option<u64>) -> Self {
        MemoryCap { limit: limit.map(|l| l as usize), hit: false, meter: None }
    }
}

impl ResourceLimiter for MemoryCap {
    fn memory_growing(&mut self, current: usize, desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        let ok = self.limit.is_none_or(|l| desired <= l);
        self.hit |= !ok;
        if let Some(m) = &self.meter {
            let now = if ok { desired } else { current };
            m.memory_bytes.store(now as u64, std::sync::atomic::Ordering::Relaxed);
        }
        Ok(ok)
    }

    fn table_growing(&mut self, _current: usize, _desired: usize, _max: Option<usize>) -> wasmtime::Result<bool> {
        Ok(true)
    }
}

pub(crate) struct P1Host {
    pub(crate) wasi: WasiP1Ctx,
    pub(crate) cap: MemoryCap,
}

pub(crate) struct P2Host {
    pub(crate) ctx: WasiCtx,
    pub(crate) table: ResourceTable,
    pub(crate) cap: MemoryCap,
    pub(crate) http: WasiHttpCtx,
    /// Outbound HTTP grants.
    pub(crate) hooks: Hooks,
}

impl WasiView for P2Host {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView { ctx: &mut self.ctx, table: &mut self.table }
    }
}

impl WasiHttpView for P2Host {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView { ctx: &mut self.http, table: &mut self.table, hooks: &mut self.hooks }
    }
}

/// stdout/stderr into the CRI log.
pub(crate) struct LogOutput(pub(crate) LogWriter);

impl IsTerminal for LogOutput {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogOutput {
    fn async_stream(&self) -> Box<dyn tokio::io::AsyncWrite + Send + Sync> {
        Box::new(self.0.clone())
    }
}

pub(crate) fn wasi_builder(config: &ContainerConfig, log: &CriLog, sink: Option<EventSink>) -> Result<WasiCtxBuilder> {
    let mut b = WasiCtxBuilder::new();
    b.args(&config.args);
    b.envs(&config.env);
    b.stdout(LogOutput(LogWriter { log: log.clone(), stream: Stream::Stdout }));
    b.stderr(LogOutput(LogWriter { log: log.clone(), stream: Stream::Stderr }));
    // sockets: TCP only, and only what the pod grants (checked at each host call)
    let grants = Grants::new(config, Some(log.clone()), sink);
    b.allow_tcp(true).allow_udp(false).allow_ip_name_lookup(!config.http.allow_outbound.is_empty());
    b.socket_addr_check(move |addr, use_| {
        let ok = grants.allows(addr, use_);
        Box::pin(async move { ok })
    });
    for m in &config.mounts {
        let perms = if m.read_only { FsPerms::ReadOnly } else { FsPerms::ReadWrite };
        b.preopened_dir(&m.host_path, &m.container_path, perms).map_err(|e| Error::InvalidConfig {
            id: config.id.clone(),
            source: crate::ConfigError::Mount {
                host: m.host_path.clone(),
                container: m.container_path.clone(),
                message: format!("{e:#}"),
            },
        })?;
    }
    Ok(b)
}

/// What ended the guest, in one line: the trap if it was one.
pub(crate) fn first_line(e: &wasmtime::Error) -> String {
    if let Some(trap) = e.downcast_ref::<wasmtime::Trap>() {
        let trap = trap.to_string();
        return if trap.starts_with("wasm trap") { trap } else { format!("wasm trap: {trap}") };
    }
    format!("{e:#}").lines().find(|l| !l.trim().is_empty()).unwrap_or_default().to_string()
}

/// Memory cap and the epoch slice: yield to other tasks at every tick.
pub(crate) fn prepare<T: Send + 'static>(store: &mut Store<T>, cap: fn(&mut T) -> &mut MemoryCap) {
    store.limiter(move |h| cap(h) as &mut dyn ResourceLimiter);
    store.set_epoch_deadline(1);
    store.epoch_deadline_callback(|_| Ok(UpdateDeadline::Yield(1)));
}
