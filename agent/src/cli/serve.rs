//! `wasmlet serve`: the daemon. Opens the state database, the image service and the
//! runtimes, resumes every stored pod and serves the local API until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::Global;
use crate::image::ImageService;
use crate::pod::Manager;
use crate::runtime::Runtimes;
use crate::runtime::linux::{LinuxConfig, LinuxRuntime};
use crate::runtime::wasm::{WasmConfig, WasmRuntime};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Live Wasm instances the pool has room for.
    #[arg(long, default_value_t = 10_500)]
    pub max_wasm_instances: u32,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
}

/// How Linux containers are run and networked.
#[derive(Clone, Debug, Args)]
pub struct RuntimeArgs {
    /// The pod subnet, from which CNI's host-local gives each pod its IP.
    #[arg(long, default_value = "10.88.0.0/16", value_name = "CIDR")]
    pub pod_cidr: String,
    /// The host bridge pods are attached to (one per pod CIDR).
    #[arg(long, default_value = "wasmlet0", value_name = "NAME")]
    pub pod_bridge: String,
    /// Where CNI's host-local keeps its address leases (default: STATE_DIR/linux/cni).
    #[arg(long, value_name = "DIR")]
    pub cni_ipam_dir: Option<std::path::PathBuf>,
    /// runc binary (default: from PATH).
    #[arg(long, value_name = "PATH")]
    pub runc: Option<std::path::PathBuf>,
    /// conmon binary (default: from PATH).
    #[arg(long, value_name = "PATH")]
    pub conmon: Option<std::path::PathBuf>,
    /// Where the CNI plugins are.
    #[arg(long, default_value = crate::runtime::cni::DEFAULT_PLUGIN_DIR, value_name = "DIR")]
    pub cni_plugin_dir: std::path::PathBuf,
    /// Run Linux containers with a runc that lacks known CVE fixes (such as Debian
    /// bookworm's 1.1.5). Without it such a runc is refused, and Linux pods wait.
    #[arg(long)]
    pub allow_vulnerable_runtime: bool,
    /// Disk usage (percent) of the state directory's filesystem above which unused
    /// images are removed, least recently used first…
    #[arg(long, default_value_t = 85, value_name = "PERCENT")]
    pub image_gc_high_threshold: u64,
    /// …until usage is below this.
    #[arg(long, default_value_t = 80, value_name = "PERCENT")]
    pub image_gc_low_threshold: u64,
}

/// Builds the agent's parts over `global.state_dir` and resumes its pods.
pub async fn start_agent(global: &Global, max_wasm_instances: u32, rt: &RuntimeArgs) -> anyhow::Result<Arc<Manager>> {
    raise_open_file_limit();
    let dir = &global.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating the state directory {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let store = crate::store::Store::open(dir)
        .context("opening the state database (is another wasmlet using this --state-dir?)")?;
    let images = Arc::new(ImageService::open(dir, global.registry_config()?, global.keychain()?, store.clone())?);
    let wasm = WasmConfig { max_instances: max_wasm_instances, ..WasmConfig::new(dir.join("compiled")) };
    let mut linux = LinuxConfig::new(dir, &rt.pod_cidr);
    if let Some(p) = &rt.runc {
        linux.runc = p.clone();
    }
    if let Some(p) = &rt.conmon {
        linux.conmon = p.clone();
    }
    linux.network.plugin_dir = rt.cni_plugin_dir.clone();
    linux.network.bridge = rt.pod_bridge.clone();
    if let Some(d) = &rt.cni_ipam_dir {
        linux.network.data_dir = d.clone();
    }
    linux.allow_vulnerable_runtime = rt.allow_vulnerable_runtime;
    let linux = LinuxRuntime::new(linux);
    if let Err(why) = &linux {
        tracing::warn!("Linux containers are unavailable: {why}");
        eprintln!("wasmlet: Linux containers are unavailable: {why}");
    }
    let runtime = Arc::new(Runtimes { wasm: WasmRuntime::new(wasm)?, linux });
    tracing::info!("runtime ready; resuming pods");
    let mgr = Manager::start(store, images, runtime, dir).await?;
    let (gc, thresholds) = (Arc::downgrade(&mgr), (rt.image_gc_high_threshold, rt.image_gc_low_threshold));
    tokio::spawn(async move {
        // image garbage collection under disk pressure, as the kubelet's (every 5 min there)
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            let Some(mgr) = gc.upgrade() else { return };
            if let Err(e) = mgr.prune_images(Some(thresholds)).await {
                tracing::warn!(error = %e, "image garbage collection failed");
            }
        }
    });
    Ok(mgr)
}

/// Every container holds its log open: lift the soft limit on open files to the hard one.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

pub async fn run(global: &Global, args: ServeArgs) -> anyhow::Result<()> {
    let manager = start_agent(global, args.max_wasm_instances, &args.runtime).await?;
    let socket = global.socket();
    tracing::info!(socket = %socket.display(), "serving");
    eprintln!("wasmlet: serving on {}", socket.display());
    tokio::select! {
        r = crate::api::serve(&socket, manager) => r.with_context(|| format!("serving on {}", socket.display()))?,
        _ = shutdown_signal() => eprintln!("wasmlet: shutting down"),
    }
    let _ = std::fs::remove_file(&socket);
    Ok(())
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
