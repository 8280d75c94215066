//! wasmlet's container runtimes behind one interface, shaped after CRI's RuntimeService:
//! pod sandboxes and containers are created, started, stopped with a grace period,
//! waited on, listed, measured and removed, and commands run in them as exec sessions.
//!
//! Two implementations: [`wasm::WasmRuntime`] (wasmtime in-process, WASI p1 modules and
//! p2 components, `wasi:http` servers) and [`linux::LinuxRuntime`] (runc under conmon,
//! a CNI-wired network namespace per pod). With the `testing` feature, [`fake`] adds a
//! scripted one that records its calls.
//!
//! Only this crate's own types cross the interface, all owned and serialisable; it knows
//! nothing of Kubernetes objects or of where the agent keeps its state. [`Runtimes`]
//! holds one implementation per [`RuntimeKind`] and is told per call which one runs the
//! container (the agent decides from the image kind).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

mod cni;
#[cfg(test)]
mod conformance;
mod exec;
#[cfg(any(test, feature = "testing"))]
pub mod fake;
pub mod linux;
pub mod log;
mod meter;
pub mod wasm;

pub use cni::NetworkError;
pub use exec::{ExecSession, Resize, TerminalSize};
pub use meter::Usage;
pub(crate) use meter::{Meter, Metered};

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Why a runtime call failed. Causes are kept as sources; the agent maps these to pod
/// reasons and HTTP statuses in one place.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("container {0} not found")]
    NotFound(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error("the {runtime} runtime is not available: {source}")]
    Unavailable {
        runtime: RuntimeKind,
        #[source]
        source: Arc<Error>,
    },
    #[error("{what} is not supported by the {runtime} runtime")]
    Unsupported { what: &'static str, runtime: RuntimeKind },
    /// The container cannot run as configured; the source says which setting and why.
    #[error("container {id}: {source}")]
    InvalidConfig {
        id: String,
        #[source]
        source: ConfigError,
    },
    /// wasmtime could not compile, link or instantiate the guest.
    #[error("{id}: {context}: {message}")]
    Wasm { id: String, context: &'static str, message: String },
    /// runc or conmon failed; `message` is what it printed.
    #[error("container {id}: {tool}: {message}")]
    Tool { id: String, tool: &'static str, message: String },
    /// A required program is missing.
    #[error("{tool} not found ({path}): {source}; install it with `apt-get install {package}`", path = .path.display())]
    MissingTool {
        tool: &'static str,
        package: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// runc is older than the release that fixes a known container escape.
    #[error("{0}; pass --allow-vulnerable-runtime to run it anyway")]
    VulnerableRunc(String),
    /// The pod network could not be made, wired or found.
    #[error("pod network of sandbox {id}: {source}")]
    Network {
        id: String,
        #[source]
        source: Arc<NetworkError>,
    },
    #[error("{context}: {path}: {source}", path = .path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What in a container's configuration cannot be run.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("workingDir {cwd:?}: {why}")]
    WorkingDir { cwd: String, why: &'static str },
    #[error("user {0:?} is not in the image's /etc/passwd")]
    UnknownUser(String),
    #[error("group {0:?} is not in the image's /etc/group")]
    UnknownGroup(String),
    #[error("container has runAsNonRoot and image will run as root")]
    RunsAsRoot,
    #[error("{0} cannot be run by the {1} runtime")]
    WrongArtifact(&'static str, RuntimeKind),
    #[error("an HTTP component needs a containerPort to serve on")]
    NoPorts,
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: std::net::SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("mount {host} at {container}: {message}", host = .host.display())]
    Mount { host: PathBuf, container: String, message: String },
    #[error("capability {0:?} is not a Linux capability")]
    UnknownCapability(String),
    #[error("seccomp profile {path}: {message}", path = .path.display())]
    SeccompProfile { path: PathBuf, message: String },
    #[error("runtime spec: {0}")]
    Spec(#[from] oci_spec::OciSpecError),
}

fn yes() -> bool {
    true
}

/// A Linux container's seccomp filter (`securityContext.seccompProfile`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum Seccomp {
    /// No filter: the kubelet's default unless it runs with `--seccomp-default`.
    #[default]
    Unconfined,
    /// The runtime's default filter (see `linux::security`).
    RuntimeDefault,
    /// A profile file on the node, in OCI seccomp JSON.
    Localhost(PathBuf),
}

/// `securityContext.capabilities`: names as Kubernetes writes them, `ALL` allowed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Capabilities {
    #[serde(default)]
    pub add: Vec<String>,
    #[serde(default)]
    pub drop: Vec<String>,
}

/// Which implementation runs a container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuntimeKind {
    Wasm,
    Linux,
}

impl std::fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            RuntimeKind::Wasm => "wasm",
            RuntimeKind::Linux => "linux",
        })
    }
}

/// The pod-level environment containers share.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SandboxConfig {
    /// Pod UID.
    pub id: String,
    pub namespace: String,
    pub name: String,
    pub hostname: String,
    /// `hostPort`s of all the pod's containers.
    #[serde(default)]
    pub ports: Vec<PortMapping>,
    /// Linux: the pod shares the host's network (and UTS), PID or IPC namespace
    /// (`hostNetwork`, `hostPID`, `hostIPC`). A host-network pod gets no CNI wiring;
    /// its IP is the node's.
    #[serde(default)]
    pub host_network: bool,
    #[serde(default)]
    pub host_pid: bool,
    #[serde(default)]
    pub host_ipc: bool,
    /// Linux: the pod's own user namespace (`hostUsers: false`): its root is
    /// `host_id` on the host.
    #[serde(default)]
    pub user_ns: Option<IdMap>,
    /// Linux: namespaced sysctls the pod sets (`securityContext.sysctls`), already
    /// admitted by the node's policy.
    #[serde(default)]
    pub sysctls: Vec<(String, String)>,
}

/// A range of host uids and gids a pod's user namespace maps from 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IdMap {
    pub host_id: u32,
    pub size: u32,
}

/// A `hostPort` that publishes a pod's port on the node (CNI's `portMappings` form).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    /// `tcp` or `udp`.
    pub protocol: String,
    #[serde(default, rename = "hostIP", skip_serializing_if = "Option::is_none")]
    pub host_ip: Option<String>,
}

/// What a runtime made of a sandbox.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxStatus {
    /// The pod IP, when the runtime gave the pod a network and it is wired.
    pub ip: Option<String>,
    /// The pod's network namespace, when it has one: a Wasm server joins it.
    pub netns: Option<PathBuf>,
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
    /// How big the log may grow before it is rotated, and the free space it leaves.
    #[serde(default)]
    pub log: log::LogPolicy,
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
    /// Linux: the seccomp filter and the capabilities' `add` and `drop`.
    #[serde(default)]
    pub seccomp: Seccomp,
    #[serde(default)]
    pub capabilities: Capabilities,
    /// Linux: `privileged`: every capability, no seccomp filter, no masked paths, a
    /// writable `/sys` and the host's devices.
    #[serde(default)]
    pub privileged: bool,
    /// Linux: extra groups of the process (`supplementalGroups`, `fsGroup`)…
    #[serde(default)]
    pub supplemental_groups: Vec<u32>,
    /// …and whether the groups the image's `/etc/group` gives the user are added too
    /// (`supplementalGroupsPolicy: Merge`, the default) or not (`Strict`).
    #[serde(default = "yes")]
    pub image_groups: bool,
    /// Linux: `procMount: Unmasked` (only in a user namespace): no masked or read-only
    /// paths under /proc.
    #[serde(default)]
    pub proc_unmasked: bool,
    /// Linux: the AppArmor profile (loaded on the host) to run under, if any.
    #[serde(default)]
    pub apparmor_profile: Option<String>,
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

#[cfg(any(test, feature = "testing"))]
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
            log: log::LogPolicy::default(),
            working_dir: None,
            user: None,
            stop_signal: None,
            cpu_limit_millis: None,
            cpu_request_millis: None,
            read_only_rootfs: false,
            allow_privilege_escalation: false,
            run_as_non_root: false,
            seccomp: Seccomp::Unconfined,
            capabilities: Capabilities::default(),
            privileged: false,
            supplemental_groups: Vec::new(),
            image_groups: true,
            apparmor_profile: None,
            proc_unmasked: false,
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

/// New limits for a container that exists (CRI's UpdateContainerResources); `None`
/// leaves a limit as it is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Resources {
    /// Bytes.
    pub memory_limit: Option<u64>,
    pub cpu_limit_millis: Option<u64>,
    pub cpu_request_millis: Option<u64>,
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

/// Runtime-wide counters, for the agent's metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Metrics {
    /// HTTP requests refused with 503 for being over a container's in-flight cap.
    pub http_rejected: u64,
}

/// The verbs every implementation provides, after CRI's RuntimeService.
///
/// - `create_sandbox` is idempotent and may finish the pod network in the background;
///   `sandbox_status` waits for it and then reports the IP and namespace.
/// - `stop_container` ends the container within `grace`; `wait_container` resolves
///   when it has exited; `container_status` answers at once.
/// - `exec_sync` runs a command to its end (probes and hooks); `exec` opens a session
///   with its streams (kubectl exec and attach).
/// - `set_event_sink` says where guest refusals are reported as container events.
#[allow(async_fn_in_trait)]
pub trait Runtime {
    fn kind(&self) -> RuntimeKind;
    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus>;
    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus>;
    async fn remove_sandbox(&self, id: &str) -> Result<()>;
    async fn create_container(&self, config: ContainerConfig) -> Result<()>;
    async fn start_container(&self, id: &str) -> Result<()>;
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()>;
    async fn remove_container(&self, id: &str) -> Result<()>;
    async fn container_status(&self, id: &str) -> Result<ContainerState>;
    async fn wait_container(&self, id: &str) -> Result<ContainerState>;
    /// The ids of every container the runtime holds, running or not.
    fn list_containers(&self) -> Vec<String>;
    /// What a running container uses, when the runtime can tell.
    fn container_stats(&self, id: &str) -> Option<Usage>;
    async fn exec_sync(&self, id: &str, command: &[String]) -> Result<i32>;
    async fn exec(&self, id: &str, command: &[String], tty: bool) -> Result<ExecSession>;
    /// Closes the container's log file and opens its path anew (CRI's
    /// `ReopenContainerLog`: the caller has renamed the file to rotate it).
    async fn reopen_log(&self, id: &str) -> Result<()>;
    /// Changes the limits of a created or running container in place.
    async fn update_resources(&self, id: &str, resources: &Resources) -> Result<()>;
    fn set_event_sink(&self, sink: EventSink);
    fn metrics(&self) -> Metrics;
}

/// One of the implementations, behind the interface (as youki's `AnyCgroupManager`).
#[derive(Debug)]
pub struct AnyRuntime {
    inner: Any,
}

#[derive(Debug)]
enum Any {
    Wasm(wasm::WasmRuntime),
    Linux(linux::LinuxRuntime),
    #[cfg(any(test, feature = "testing"))]
    Fake(fake::FakeRuntime),
}

impl From<wasm::WasmRuntime> for AnyRuntime {
    fn from(r: wasm::WasmRuntime) -> Self {
        AnyRuntime { inner: Any::Wasm(r) }
    }
}

impl From<linux::LinuxRuntime> for AnyRuntime {
    fn from(r: linux::LinuxRuntime) -> Self {
        AnyRuntime { inner: Any::Linux(r) }
    }
}

#[cfg(any(test, feature = "testing"))]
impl From<fake::FakeRuntime> for AnyRuntime {
    fn from(r: fake::FakeRuntime) -> Self {
        AnyRuntime { inner: Any::Fake(r) }
    }
}

macro_rules! each {
    ($self:ident, $r:ident => $e:expr) => {
        match &$self.inner {
            Any::Wasm($r) => $e,
            Any::Linux($r) => $e,
            #[cfg(any(test, feature = "testing"))]
            Any::Fake($r) => $e,
        }
    };
}

impl Runtime for AnyRuntime {
    fn kind(&self) -> RuntimeKind {
        each!(self, r => r.kind())
    }
    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus> {
        each!(self, r => r.create_sandbox(config).await)
    }
    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        each!(self, r => r.sandbox_status(id).await)
    }
    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        each!(self, r => r.remove_sandbox(id).await)
    }
    async fn create_container(&self, config: ContainerConfig) -> Result<()> {
        each!(self, r => r.create_container(config).await)
    }
    async fn start_container(&self, id: &str) -> Result<()> {
        each!(self, r => r.start_container(id).await)
    }
    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        each!(self, r => r.stop_container(id, grace).await)
    }
    async fn remove_container(&self, id: &str) -> Result<()> {
        each!(self, r => r.remove_container(id).await)
    }
    async fn container_status(&self, id: &str) -> Result<ContainerState> {
        each!(self, r => r.container_status(id).await)
    }
    async fn wait_container(&self, id: &str) -> Result<ContainerState> {
        // boxed: a wait lasts as long as the container, and the largest runtime's wait
        // would otherwise be the size of every one
        each!(self, r => Box::pin(r.wait_container(id)).await)
    }
    fn list_containers(&self) -> Vec<String> {
        each!(self, r => r.list_containers())
    }
    fn container_stats(&self, id: &str) -> Option<Usage> {
        each!(self, r => r.container_stats(id))
    }
    async fn exec_sync(&self, id: &str, command: &[String]) -> Result<i32> {
        each!(self, r => r.exec_sync(id, command).await)
    }
    async fn exec(&self, id: &str, command: &[String], tty: bool) -> Result<ExecSession> {
        each!(self, r => r.exec(id, command, tty).await)
    }
    async fn reopen_log(&self, id: &str) -> Result<()> {
        each!(self, r => r.reopen_log(id).await)
    }
    async fn update_resources(&self, id: &str, resources: &Resources) -> Result<()> {
        each!(self, r => r.update_resources(id, resources).await)
    }
    fn set_event_sink(&self, sink: EventSink) {
        each!(self, r => r.set_event_sink(sink))
    }
    fn metrics(&self) -> Metrics {
        each!(self, r => r.metrics())
    }
}

/// Every runtime the node has, one per kind. A kind may be missing (no runc, say),
/// and then every call for it fails with [`Error::Unavailable`] saying why.
#[derive(Debug)]
pub struct Runtimes {
    wasm: AnyRuntime,
    linux: std::result::Result<AnyRuntime, Arc<Error>>,
}

impl Runtimes {
    pub fn new(wasm: wasm::WasmRuntime, linux: Result<linux::LinuxRuntime>) -> Self {
        Runtimes { wasm: wasm.into(), linux: linux.map(AnyRuntime::from).map_err(Arc::new) }
    }

    /// One fake runtime for both kinds: the calls of either are recorded in one place.
    #[cfg(any(test, feature = "testing"))]
    pub fn fake(fake: fake::FakeRuntime) -> Self {
        Runtimes { wasm: fake.clone().into(), linux: Ok(fake.into()) }
    }

    /// The runtime for `kind`, or why there is none.
    pub fn get(&self, kind: RuntimeKind) -> Result<&AnyRuntime> {
        match kind {
            RuntimeKind::Wasm => Ok(&self.wasm),
            RuntimeKind::Linux => {
                self.linux.as_ref().map_err(|e| Error::Unavailable { runtime: kind, source: e.clone() })
            }
        }
    }

    pub fn has(&self, kind: RuntimeKind) -> bool {
        self.get(kind).is_ok()
    }

    /// Every runtime that is available.
    pub fn available(&self) -> impl Iterator<Item = &AnyRuntime> {
        std::iter::once(&self.wasm).chain(self.linux.as_ref().ok())
    }

    /// Sets the event sink of every runtime.
    pub fn set_event_sink(&self, sink: EventSink) {
        for r in self.available() {
            r.set_event_sink(sink.clone());
        }
    }

    /// The runtimes' counters, summed.
    pub fn metrics(&self) -> Metrics {
        let mut m = Metrics::default();
        for r in self.available() {
            m.http_rejected += r.metrics().http_rejected;
        }
        m
    }

    pub async fn create_sandbox(&self, kind: RuntimeKind, config: &SandboxConfig) -> Result<SandboxStatus> {
        self.get(kind)?.create_sandbox(config).await
    }
    pub async fn sandbox_status(&self, kind: RuntimeKind, id: &str) -> Result<SandboxStatus> {
        self.get(kind)?.sandbox_status(id).await
    }
    pub async fn remove_sandbox(&self, kind: RuntimeKind, id: &str) -> Result<()> {
        self.get(kind)?.remove_sandbox(id).await
    }
    pub async fn create_container(&self, kind: RuntimeKind, config: ContainerConfig) -> Result<()> {
        self.get(kind)?.create_container(config).await
    }
    pub async fn start_container(&self, kind: RuntimeKind, id: &str) -> Result<()> {
        self.get(kind)?.start_container(id).await
    }
    pub async fn stop_container(&self, kind: RuntimeKind, id: &str, grace: Duration) -> Result<()> {
        self.get(kind)?.stop_container(id, grace).await
    }
    pub async fn remove_container(&self, kind: RuntimeKind, id: &str) -> Result<()> {
        self.get(kind)?.remove_container(id).await
    }
    pub async fn container_status(&self, kind: RuntimeKind, id: &str) -> Result<ContainerState> {
        self.get(kind)?.container_status(id).await
    }
    pub async fn wait_container(&self, kind: RuntimeKind, id: &str) -> Result<ContainerState> {
        self.get(kind)?.wait_container(id).await
    }
    pub async fn exec_sync(&self, kind: RuntimeKind, id: &str, command: &[String]) -> Result<i32> {
        self.get(kind)?.exec_sync(id, command).await
    }
    pub async fn exec(&self, kind: RuntimeKind, id: &str, command: &[String], tty: bool) -> Result<ExecSession> {
        self.get(kind)?.exec(id, command, tty).await
    }
    pub async fn reopen_log(&self, kind: RuntimeKind, id: &str) -> Result<()> {
        self.get(kind)?.reopen_log(id).await
    }
    pub async fn update_resources(&self, kind: RuntimeKind, id: &str, resources: &Resources) -> Result<()> {
        self.get(kind)?.update_resources(id, resources).await
    }
    pub fn container_stats(&self, kind: RuntimeKind, id: &str) -> Option<Usage> {
        self.get(kind).ok()?.container_stats(id)
    }
}

/// Unix milliseconds now.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}
