//! `wasmlet serve`: the daemon. Opens the state database, the image service and the
//! runtimes, resumes every stored pod and serves the local API until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::Global;
use crate::image::ImageService;
use crate::pod::Manager;
use crate::runtime::AnyRuntime;
use crate::runtime::wasm::{WasmConfig, WasmRuntime};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Live Wasm instances the pool has room for.
    #[arg(long, default_value_t = 10_500)]
    pub max_wasm_instances: u32,
}

/// Builds the agent's parts over `global.state_dir` and resumes its pods.
pub async fn start_agent(global: &Global, max_wasm_instances: u32) -> anyhow::Result<Arc<Manager>> {
    raise_open_file_limit();
    let dir = &global.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating the state directory {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let store = crate::store::Store::open(dir)
        .context("opening the state database (is another wasmlet using this --state-dir?)")?;
    let images = Arc::new(ImageService::open(dir, global.registry_config()?, global.keychain()?, store.clone())?);
    let wasm = WasmConfig { max_instances: max_wasm_instances, ..WasmConfig::new(dir.join("compiled")) };
    let runtime = Arc::new(AnyRuntime::Wasm(WasmRuntime::new(wasm)?));
    tracing::info!("runtime ready; resuming pods");
    Ok(Manager::start(store, images, runtime, dir).await?)
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
    let manager = start_agent(global, args.max_wasm_instances).await?;
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
