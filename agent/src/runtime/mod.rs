//! The common runtime interface, shaped after CRI's RuntimeService: pod sandboxes and
//! containers are created, started, stopped with a grace period, waited on and removed.
//!
//! Only wasmlet's own types cross it, all owned and serialisable, so that an
//! implementation could live in another process. The pod manager talks to
//! [`Runtimes`], which holds every implementation and is told per container which kind
//! runs it (from the image kind); nothing above this module names wasmtime or runc.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub mod cni;
#[cfg(test)]
mod conformance;
pub mod http;
pub mod linux;
pub mod log;
pub mod wasm;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {id}: {reason}")]
    Create { id: String, reason: String },
    #[error("the {runtime} runtime is not available: {why}")]
    Unavailable { runtime: &'static str, why: String },
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
    /// `hostPort`s of all the pod's containers.
    #[serde(default)]
    pub ports: Vec<cni::PortMapping>,
}

/// What a runtime made of a sandbox.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// The pod IP, when the runtime gave the pod a network.
    pub ip: Option<String>,
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
    /// Linux only: the working directory, `uid[:gid]`, the image's STOPSIGNAL and
    /// CPU limit and request in millicores.
    #[serde(default)]
    pub working_dir: Option<String>,
    #[serde(default)]
    pub user: Option<String>,
    #[serde(default)]
    pub stop_signal: Option<String>,
    #[serde(default)]
    pub cpu_limit_millis: Option<u64>,
    #[serde(default)]
    pub cpu_request_millis: Option<u64>,
    /// Linux: `securityContext` fields: a read-only root, whether privileges may be
    /// gained (`allowPrivilegeEscalation`, default false here) and `runAsNonRoot`.
    #[serde(default)]
    pub read_only_rootfs: bool,
    #[serde(default)]
    pub allow_privilege_escalation: bool,
    #[serde(default)]
    pub run_as_non_root: bool,
    /// The container's declared ports: a Wasm HTTP component serves on them.
    #[serde(default)]
    pub ports: Vec<ServePort>,
    /// How a Wasm HTTP component serves, and where its guest may connect.
    #[serde(default)]
    pub http: HttpOptions,
    /// The pod's network namespace, when it has one: a Wasm HTTP component listens on
    /// its ports there (the pod IP and the pod's localhost) instead of on the host.
    #[serde(default)]
    pub netns: Option<PathBuf>,
}

#[cfg(test)]
impl ContainerConfig {
    /// A container with every optional setting off, for tests to adjust.
    pub fn for_test(id: &str, artifact: Artifact, log_path: PathBuf) -> Self {
        ContainerConfig {
            id: id.into(),
            sandbox_id: "sandbox".into(),
            name: id.into(),
            artifact,
            args: Vec::new(),
            env: Vec::new(),
            mounts: Vec::new(),
            memory_limit: None,
            log_path,
            working_dir: None,
            user: None,
            stop_signal: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            read_only_rootfs: false,
            allow_privilege_escalation: false,
            run_as_non_root: false,
            ports: Vec::new(),
            http: HttpOptions::default(),
            netns: None,
        }
    }
}

/// Where a runtime reports what a guest was refused: (container id, reason, message).
/// The pod manager turns these into pod events.
pub type EventSink = Arc<dyn Fn(&str, &str, &str) + Send + Sync>;

/// A declared `containerPort`, and the `hostPort` that publishes it, if any.
#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct ServePort {
    pub container_port: u16,
    pub host_port: Option<u16>,
}

/// Per-pod limits of a Wasm HTTP component and its outbound grants (from the pod's
/// `wasmlet.dev/*` annotations).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct HttpOptions {
    /// A request's deadline, from arrival to the end of its response body.
    pub request_timeout_ms: u64,
    /// Requests handled at once; more get 503.
    pub max_concurrency: usize,
    /// `host:port` pairs (a `*` host matches any) the guest may send HTTP requests to.
    pub allow_outbound: Vec<String>,
}

impl Default for HttpOptions {
    fn default() -> Self {
        HttpOptions { request_timeout_ms: 30_000, max_concurrency: 256, allow_outbound: Vec::new() }
    }
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
    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus>;
    async fn remove_sandbox(&self, id: &str) -> Result<()>;
    async fn create_container(&self, config: ContainerConfig) -> Result<()>;
    async fn start_container(&self, id: &str) -> Result<()>;
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    async fn remove_container(&self, id: &str) -> Result<()>;
    async fn container_status(&self, id: &str) -> Result<ContainerState>;
    async fn wait_container(&self, id: &str) -> Result<ContainerState>;
    async fn exec(&self, id: &str, command: &[String]) -> Result<i32>;
}

/// Every runtime wasmlet has. Each call names the kind of the container it is about;
/// the Linux runtime may be missing (no runc, say), and then says why.
#[derive(Debug)]
pub struct Runtimes {
    pub wasm: wasm::WasmRuntime,
    pub linux: std::result::Result<linux::LinuxRuntime, String>,
}

macro_rules! dispatch {
    ($self:ident, $kind:expr, $r:ident => $e:expr) => {
        match $kind {
            RuntimeKind::Wasm => {
                let $r = &$self.wasm;
                $e
            }
            RuntimeKind::Linux => {
                let $r = $self.linux()?;
                $e
            }
        }
    };
}

#[allow(dead_code)] // `container_status` serves the conformance tests and `wasmlet exec`
impl Runtimes {
    pub fn linux(&self) -> Result<&linux::LinuxRuntime> {
        self.linux.as_ref().map_err(|why| Error::Unavailable { runtime: "linux", why: why.clone() })
    }
    pub async fn create_sandbox(&self, kind: RuntimeKind, config: &SandboxConfig) -> Result<SandboxStatus> {
        dispatch!(self, kind, r => r.create_sandbox(config).await)
    }
    pub async fn remove_sandbox(&self, kind: RuntimeKind, id: &str) -> Result<()> {
        dispatch!(self, kind, r => r.remove_sandbox(id).await)
    }
    pub async fn create_container(&self, kind: RuntimeKind, config: ContainerConfig) -> Result<()> {
        dispatch!(self, kind, r => r.create_container(config).await)
    }
    pub async fn start_container(&self, kind: RuntimeKind, id: &str) -> Result<()> {
        dispatch!(self, kind, r => r.start_container(id).await)
    }
    pub async fn stop_container(&self, kind: RuntimeKind, id: &str, grace: Duration) -> Result<()> {
        dispatch!(self, kind, r => r.stop_container(id, grace).await)
    }
    pub async fn remove_container(&self, kind: RuntimeKind, id: &str) -> Result<()> {
        dispatch!(self, kind, r => r.remove_container(id).await)
    }
    pub async fn container_status(&self, kind: RuntimeKind, id: &str) -> Result<ContainerState> {
        dispatch!(self, kind, r => r.container_status(id).await)
    }
    pub async fn wait_container(&self, kind: RuntimeKind, id: &str) -> Result<ContainerState> {
        dispatch!(self, kind, r => r.wait_container(id).await)
    }
    pub async fn exec(&self, kind: RuntimeKind, id: &str, command: &[String]) -> Result<i32> {
        dispatch!(self, kind, r => r.exec(id, command).await)
    }
    /// What a running container uses, when the runtime can tell.
    pub fn usage(&self, kind: RuntimeKind, id: &str) -> Option<Usage> {
        match kind {
            RuntimeKind::Wasm => self.wasm.usage(id),
            RuntimeKind::Linux => self.linux.as_ref().ok()?.usage(id),
        }
    }
}

/// What a running container uses: CPU time so far and memory now (the working set).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub cpu_ns: u64,
    pub memory_bytes: u64,
}

/// A container's meters, updated as it runs.
#[derive(Debug, Default)]
pub struct Meter {
    pub cpu_ns: std::sync::atomic::AtomicU64,
    pub memory_bytes: std::sync::atomic::AtomicU64,
}

impl Meter {
    pub fn usage(&self) -> Usage {
        use std::sync::atomic::Ordering::Relaxed;
        Usage { cpu_ns: self.cpu_ns.load(Relaxed), memory_bytes: self.memory_bytes.load(Relaxed) }
    }
}

/// A future whose polls are charged (thread CPU time) to a meter: what a Wasm guest
/// burns on the agent's threads.
pub struct Metered<F> {
    inner: std::pin::Pin<Box<F>>,
    meter: std::sync::Arc<Meter>,
}

impl<F> Metered<F> {
    pub fn new(inner: F, meter: std::sync::Arc<Meter>) -> Self {
        Metered { inner: Box::pin(inner), meter }
    }
}

fn thread_cpu_ns() -> u64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::ThreadCPUTime);
    (t.tv_sec as u64).saturating_mul(1_000_000_000).saturating_add(t.tv_nsec as u64)
}

impl<F: std::future::Future> std::future::Future for Metered<F> {
    type Output = F::Output;
    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<F::Output> {
        let start = thread_cpu_ns();
        let r = self.inner.as_mut().poll(cx);
        let spent = thread_cpu_ns().saturating_sub(start);
        self.meter.cpu_ns.fetch_add(spent, std::sync::atomic::Ordering::Relaxed);
        r
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
