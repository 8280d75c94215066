//! The common runtime interface, shaped after CRI's RuntimeService: pod sandboxes and
//! containers are created, started, stopped with a grace period, waited on and removed.
//!
//! Only wasmlet's own types cross it, all owned and serialisable, so that an
//! implementation could live in another process. The pod manager talks to
//! [`AnyRuntime`], an enum over the implementations chosen per container from the image
//! kind (or `runtimeClassName`); nothing above this module names wasmtime or runc.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[cfg(test)]
mod conformance;
pub mod log;
pub mod wasm;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {id}: {reason}")]
    Create { id: String, reason: String },
    #[error("{what} is not supported by the {runtime} runtime")]
    Unsupported { what: &'static str, runtime: &'static str },
    #[error("{context}: {path}: {source}", path = .path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// Which implementation runs a container.
#[allow(dead_code)] // Linux arrives with the runc runtime
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Wasm,
    Linux,
}

/// The pod-level environment containers share.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Pod UID.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
}

/// What to run: the artifact, argv, environment, mounts and limits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ContainerConfig {
    /// Unique per container instance (pod uid, container name, restart count).
    pub id: String,
    pub sandbox_id: String,
    pub name: String,
    pub artifact: Artifact,
    /// argv, argv[0] included.
    pub args: Vec<String>,
    pub env: Vec<(String, String)>,
    pub mounts: Vec<Mount>,
    /// Bytes; guests that try to grow past it end with reason OOMKilled.
    pub memory_limit: Option<u64>,
    /// CRI-format log file for stdout and stderr.
    pub log_path: PathBuf,
}

/// The executable part of an image, as the image service stored it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub enum Artifact {
    /// A `.wasm` module or component file, named by its digest.
    Wasm { path: PathBuf, digest: String },
    /// Unpacked layer directories (lowest first) and the image's config.
    Rootfs { layers: Vec<PathBuf> },
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Mount {
    pub host_path: PathBuf,
    pub container_path: String,
    pub read_only: bool,
}

/// Why a container ended, with the Kubernetes reason strings.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ExitReason {
    Completed,
    Error,
    OOMKilled,
    StartError,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Completed => "Completed",
            ExitReason::Error => "Error",
            ExitReason::OOMKilled => "OOMKilled",
            ExitReason::StartError => "StartError",
        }
    }
}

/// A container's state as the runtime sees it. Times are Unix milliseconds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum ContainerState {
    Created,
    Running { started_at: u64 },
    Exited { exit_code: i32, reason: ExitReason, message: String, started_at: u64, finished_at: u64 },
}

/// The verbs every implementation provides. `container_status`, `exec` and `KIND` are
/// used by the conformance tests now and by `wasmlet exec` with the Linux runtime. `stop` ends the container within `grace`;
/// `wait` resolves when it has exited.
#[allow(async_fn_in_trait, dead_code)]
pub trait Runtime {
    const KIND: RuntimeKind;
    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<()>;
    async fn remove_sandbox(&self, id: &str) -> Result<()>;
    async fn create_container(&self, config: ContainerConfig) -> Result<()>;
    async fn start_container(&self, id: &str) -> Result<()>;
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    async fn remove_container(&self, id: &str) -> Result<()>;
    async fn container_status(&self, id: &str) -> Result<ContainerState>;
    async fn wait_container(&self, id: &str) -> Result<ContainerState>;
    async fn exec(&self, id: &str, command: &[String]) -> Result<i32>;
}

/// Every runtime wasmlet has, dispatched by kind. The Linux runtime joins here.
#[derive(Debug)]
pub enum AnyRuntime {
    Wasm(wasm::WasmRuntime),
}

macro_rules! dispatch {
    ($self:ident, $r:ident => $e:expr) => {
        match $self {
            AnyRuntime::Wasm($r) => $e,
        }
    };
}

#[allow(dead_code)] // `kind`, `container_status` and `exec` serve the next runtime's callers
impl AnyRuntime {
    pub fn kind(&self) -> RuntimeKind {
        dispatch!(self, _r => RuntimeKind::Wasm)
    }
    pub async fn create_sandbox(&self, config: &SandboxConfig) -> Result<()> {
        dispatch!(self, r => r.create_sandbox(config).await)
    }
    pub async fn remove_sandbox(&self, id: &str) -> Result<()> {
        dispatch!(self, r => r.remove_sandbox(id).await)
    }
    pub async fn create_container(&self, config: ContainerConfig) -> Result<()> {
        dispatch!(self, r => r.create_container(config).await)
    }
    pub async fn start_container(&self, id: &str) -> Result<()> {
        dispatch!(self, r => r.start_container(id).await)
    }
    pub async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        dispatch!(self, r => r.stop_container(id, grace).await)
    }
    pub async fn remove_container(&self, id: &str) -> Result<()> {
        dispatch!(self, r => r.remove_container(id).await)
    }
    pub async fn container_status(&self, id: &str) -> Result<ContainerState> {
        dispatch!(self, r => r.container_status(id).await)
    }
    pub async fn wait_container(&self, id: &str) -> Result<ContainerState> {
        dispatch!(self, r => r.wait_container(id).await)
    }
    pub async fn exec(&self, id: &str, command: &[String]) -> Result<i32> {
        dispatch!(self, r => r.exec(id, command).await)
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
