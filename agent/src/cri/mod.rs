//! The CRI server: wasmlet as the container runtime of a standard kubelet, or of
//! `crictl`. It serves CRI v1's `RuntimeService` and `ImageService` over gRPC on a unix
//! socket, as a thin adapter over the runtime interface and the image service the pod
//! manager uses: a container whose image is a Wasm artifact runs in-process, one whose
//! image is a filesystem image runs under runc, in one sandbox if need be.
//!
//! The kubelet owns the pods; this server keeps only CRI's own objects, sandboxes and
//! containers, in the state database (`Table::Cri`), so that after a restart the
//! kubelet's relist sees the same ones. A Linux container outlives the agent and is
//! adopted; a Wasm guest died with it and is reported exited, for the kubelet to restart.
//!
//! - `runtime.rs`: `RuntimeService` (sandboxes, containers, exec, stats, status);
//! - `images.rs`: `ImageService` over [`crate::image::ImageService`];
//! - `stream.rs`: the streaming server that Exec, Attach and PortForward return URLs of.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use k8s_cri::v1;
use serde::{Deserialize, Serialize};
use wasmlet_runtime::{ContainerState, RuntimeKind};

use crate::pod::Manager;
use crate::store::Table;

mod alpha;
mod authority;
mod images;
mod runtime;
mod stream;

/// Where `--cri-socket` listens when it is given without a path.
pub const DEFAULT_SOCKET: &str = "/run/wasmlet/cri.sock";

/// The runtime handlers a sandbox may name (a RuntimeClass's `handler`): the default
/// (`""`, or `wasmlet`) runs each container by its image's kind; `wasm` runs Wasm
/// artifacts only and gives the sandbox no network namespace (its HTTP components serve
/// on the host); `runc` runs filesystem images only.
pub const HANDLERS: &[&str] = &["wasmlet", "wasm", "runc"];

/// A pod sandbox as the kubelet asked for it, and what was made of it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct SandboxRecord {
    pub id: String,
    pub config: v1::PodSandboxConfig,
    pub handler: String,
    /// Unix nanoseconds, as CRI counts.
    pub created_at: i64,
    pub ready: bool,
    /// A Linux sandbox (network namespace, CNI) was made for it.
    pub network: bool,
    pub ip: Option<String>,
    pub netns: Option<PathBuf>,
}

/// A container: the kubelet's request, the runtime's configuration made of it, and
/// its state as last seen.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct ContainerRecord {
    pub id: String,
    pub sandbox_id: String,
    pub config: v1::ContainerConfig,
    pub kind: RuntimeKind,
    /// What the runtime was given, kept to create a Wasm guest again after a restart.
    pub runtime: wasmlet_runtime::ContainerConfig,
    /// The normalized reference the image was pulled as (held against image GC).
    pub image_ref: String,
    /// The image's id (its config digest) and `repo@digest`.
    pub image_id: String,
    pub repo_digest: String,
    pub created_at: i64,
    pub state: Phase,
    /// Resources as last set (created with, or by UpdateContainerResources).
    pub resources: Option<v1::LinuxContainerResources>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum Phase {
    Created,
    Running {
        started_at: i64,
    },
    Exited {
        started_at: i64,
        finished_at: i64,
        exit_code: i32,
        reason: String,
        message: String,
    },
    /// Lost: a record whose container the runtime no longer has, for a reason the
    /// record cannot tell.
    Unknown,
}

impl Phase {
    pub fn cri(&self) -> v1::ContainerState {
        match self {
            Phase::Created => v1::ContainerState::ContainerCreated,
            Phase::Running { .. } => v1::ContainerState::ContainerRunning,
            Phase::Exited { .. } => v1::ContainerState::ContainerExited,
            Phase::Unknown => v1::ContainerState::ContainerUnknown,
        }
    }

    /// The runtime's state, in CRI's terms (milliseconds to nanoseconds).
    fn from_runtime(s: &ContainerState) -> Phase {
        match s {
            ContainerState::Created => Phase::Created,
            ContainerState::Running { started_at } => Phase::Running { started_at: ms_to_ns(*started_at) },
            ContainerState::Exited { exit_code, reason, message, started_at, finished_at } => Phase::Exited {
                started_at: ms_to_ns(*started_at),
                finished_at: ms_to_ns(*finished_at),
                exit_code: *exit_code,
                reason: reason.as_str().to_string(),
                message: message.clone(),
            },
        }
    }
}

fn ms_to_ns(ms: u64) -> i64 {
    i64::try_from(ms).unwrap_or(i64::MAX).saturating_mul(1_000_000)
}

pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

/// A new sandbox or container id: 64 hex digits, as containerd's and CRI-O's (see
/// [`crate::pod::is_cri_id`]).
fn new_id() -> String {
    (0..4).map(|_| format!("{:016x}", fastrand::u64(..))).collect()
}

/// The CRI server's state, shared by its services and its streaming server.
#[derive(Debug)]
pub struct Cri {
    mgr: Arc<Manager>,
    /// Logs of containers whose sandbox names no log directory, and the like.
    dir: PathBuf,
    sandboxes: Mutex<HashMap<String, SandboxRecord>>,
    containers: Mutex<HashMap<String, ContainerRecord>>,
    streams: stream::Streams,
    /// The last CPU sample of each container (time ns, CPU ns), for `usage_nano_cores`.
    cpu_samples: Mutex<HashMap<String, (i64, u64)>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Cri {
    /// Reads the stored sandboxes and containers, brings them up to date with what the
    /// runtimes still run (adopting Linux containers, reporting lost Wasm guests as
    /// exited), removes the runtime containers no record names, and starts the
    /// streaming server on `streaming` (an `IP:PORT`; port 0 picks one).
    pub async fn open(mgr: Arc<Manager>, state_dir: &Path, streaming: &str) -> anyhow::Result<Arc<Cri>> {
        let dir = state_dir.join("cri");
        std::fs::create_dir_all(&dir)?;
        let streams = stream::Streams::bind(streaming).await?;
        let store = mgr.store();
        let sandboxes: HashMap<String, SandboxRecord> =
            store.scan::<SandboxRecord>(Table::Cri, "s/")?.into_iter().map(|(_, r)| (r.id.clone(), r)).collect();
        let containers: HashMap<String, ContainerRecord> =
            store.scan::<ContainerRecord>(Table::Cri, "c/")?.into_iter().map(|(_, r)| (r.id.clone(), r)).collect();
        let cri = Arc::new(Cri {
            mgr,
            dir,
            sandboxes: Mutex::new(sandboxes),
            containers: Mutex::new(containers),
            streams,
            cpu_samples: Mutex::default(),
        });
        cri.recover().await;
        stream::serve(cri.clone());
        Ok(cri)
    }

    async fn recover(self: &Arc<Self>) {
        let records: Vec<ContainerRecord> = lock(&self.containers).values().cloned().collect();
        for mut rec in records {
            self.mgr.hold_image(&rec.image_ref);
            let found = self.mgr.runtimes().container_status(rec.kind, &rec.id).await;
            let phase = match (&rec.state, found) {
                (_, Ok(s)) => Phase::from_runtime(&s),
                (Phase::Exited { .. }, Err(_)) => rec.state.clone(),
                (Phase::Created, Err(_)) if rec.kind == RuntimeKind::Wasm => {
                    // a guest created and not started: made again, to be started
                    match self.mgr.runtimes().create_container(rec.kind, rec.runtime.clone()).await {
                        Ok(()) => Phase::Created,
                        Err(_) => Phase::Unknown,
                    }
                }
                (Phase::Running { started_at }, Err(_)) => Phase::Exited {
                    started_at: *started_at,
                    finished_at: now_ns(),
                    exit_code: 255,
                    reason: "Error".into(),
                    message: match rec.kind {
                        RuntimeKind::Wasm => "the Wasm guest ended with the wasmlet process that ran it".into(),
                        RuntimeKind::Linux => "the container was gone when wasmlet restarted".into(),
                    },
                },
                (_, Err(_)) => Phase::Unknown,
            };
            let running = matches!(phase, Phase::Running { .. });
            if phase != rec.state {
                rec.state = phase;
                self.save_container(&rec);
                lock(&self.containers).insert(rec.id.clone(), rec.clone());
            }
            if running {
                self.watch(rec.kind, rec.id.clone());
            }
        }
        // Linux containers of ours that no record names: a crash between runc's
        // create and the record
        if let Ok(linux) = self.mgr.runtimes().get(RuntimeKind::Linux) {
            use wasmlet_runtime::Runtime;
            let known: std::collections::HashSet<String> = lock(&self.containers).keys().cloned().collect();
            for id in linux.list_containers() {
                if crate::pod::is_cri_id(&id) && !known.contains(&id) {
                    tracing::warn!(container = %id, "removing a CRI container no record names");
                    let _ = linux.stop_container(&id, std::time::Duration::ZERO).await;
                    let _ = linux.remove_container(&id).await;
                }
            }
        }
        let _ = self.mgr.store().flush().await;
    }

    /// Records the container's exit when it comes.
    fn watch(self: &Arc<Self>, kind: RuntimeKind, id: String) {
        let cri = Arc::downgrade(self);
        let runtimes = self.mgr.runtimes().clone();
        tokio::spawn(async move {
            let Ok(state) = runtimes.wait_container(kind, &id).await else { return };
            let Some(cri) = cri.upgrade() else { return };
            cri.settle(&id, &state).await;
        });
    }

    /// Brings the record of `id` to the runtime's `state`, durably.
    async fn settle(&self, id: &str, state: &ContainerState) {
        let phase = Phase::from_runtime(state);
        let changed = {
            let mut all = lock(&self.containers);
            match all.get_mut(id) {
                Some(rec) if rec.state != phase => {
                    rec.state = phase;
                    Some(rec.clone())
                }
                _ => None,
            }
        };
        if let Some(rec) = changed {
            self.save_container(&rec);
            let _ = self.mgr.store().flush().await;
        }
    }

    fn save_container(&self, rec: &ContainerRecord) {
        if let Err(e) = self.mgr.store().put(Table::Cri, &format!("c/{}", rec.id), rec) {
            tracing::warn!(container = %rec.id, error = %e, "cannot store the CRI container");
        }
    }

    fn save_sandbox(&self, rec: &SandboxRecord) -> Result<(), crate::store::Error> {
        self.mgr.store().put(Table::Cri, &format!("s/{}", rec.id), rec)
    }

    fn container(&self, id: &str) -> Option<ContainerRecord> {
        lock(&self.containers).get(id).cloned()
    }

    /// The container whose id is `id` or begins with it (crictl's short ids).
    fn find_container(&self, id: &str) -> Option<ContainerRecord> {
        by_id(&lock(&self.containers), id)
    }

    fn find_sandbox(&self, id: &str) -> Option<SandboxRecord> {
        by_id(&lock(&self.sandboxes), id)
    }

    /// The container a request names, or the status that says why there is none.
    fn container_named(&self, id: &str) -> Result<ContainerRecord, tonic::Status> {
        if id.is_empty() {
            return Err(tonic::Status::invalid_argument("container id is empty"));
        }
        self.find_container(id).ok_or_else(|| tonic::Status::not_found(format!("container {id} not found")))
    }

    fn sandbox_named(&self, id: &str) -> Result<SandboxRecord, tonic::Status> {
        if id.is_empty() {
            return Err(tonic::Status::invalid_argument("sandbox id is empty"));
        }
        self.find_sandbox(id).ok_or_else(|| tonic::Status::not_found(format!("sandbox {id} not found")))
    }

    /// Containers by CRI's filter fields: an id and a sandbox id (each a prefix), a
    /// state, labels that must all match.
    fn containers_where(
        &self,
        id: &str,
        sandbox: &str,
        state: Option<i32>,
        labels: &HashMap<String, String>,
    ) -> Vec<ContainerRecord> {
        let mut out: Vec<ContainerRecord> = lock(&self.containers)
            .values()
            .filter(|c| c.id.starts_with(id) && c.sandbox_id.starts_with(sandbox))
            .filter(|c| state.is_none_or(|s| c.state.cri() as i32 == s))
            .filter(|c| selected(&c.config.labels, labels))
            .cloned()
            .collect();
        out.sort_by_key(|c| c.created_at);
        out
    }

    /// Sandboxes by CRI's filter fields: an id prefix, a state, labels.
    fn sandboxes_where(&self, id: &str, state: Option<i32>, labels: &HashMap<String, String>) -> Vec<SandboxRecord> {
        let mut out: Vec<SandboxRecord> = lock(&self.sandboxes)
            .values()
            .filter(|s| s.id.starts_with(id))
            .filter(|s| state.is_none_or(|st| (if s.ready { 0 } else { 1 }) == st))
            .filter(|s| selected(&s.config.labels, labels))
            .cloned()
            .collect();
        out.sort_by_key(|s| s.created_at);
        out
    }
}

/// The record whose id is `id`, or the one record whose id begins with it.
fn by_id<T: Clone>(all: &HashMap<String, T>, id: &str) -> Option<T> {
    if let Some(found) = all.get(id) {
        return Some(found.clone());
    }
    let mut matches = all.iter().filter(|(k, _)| !id.is_empty() && k.starts_with(id));
    match (matches.next(), matches.next()) {
        (Some((_, found)), None) => Some(found.clone()),
        _ => None,
    }
}

/// Serves CRI on the unix socket at `path` (made root-only) until the server fails.
pub async fn serve(path: &Path, cri: Arc<Cri>) -> anyhow::Result<()> {
    use k8s_cri::v1::image_service_server::ImageServiceServer;
    use k8s_cri::v1::runtime_service_server::RuntimeServiceServer;
    use std::os::unix::fs::PermissionsExt;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e.into()),
        _ => {}
    }
    let listener = tokio::net::UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    let service = Service(cri);
    // the kubelet's own limit on CRI messages (a ListContainers of a full node)
    const MAX_MESSAGE: usize = 16 << 20;
    tonic::transport::Server::builder()
        .add_service(
            RuntimeServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            ImageServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        // kubelets before 1.23
        .add_service(
            k8s_cri::v1alpha2::runtime_service_server::RuntimeServiceServer::new(service.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(
            k8s_cri::v1alpha2::image_service_server::ImageServiceServer::new(service)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .serve_with_incoming(connections(listener))
        .await?;
    Ok(())
}

/// The socket's connections, each through the `:authority` relay (see `authority`). An
/// error accepting one (out of descriptors, say) is logged and the next one waited for.
fn connections(
    listener: tokio::net::UnixListener,
) -> impl tokio_stream::Stream<Item = Result<tokio::io::DuplexStream, std::io::Error>> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tokio::spawn(async move {
        loop {
            match listener.accept().await {
                Ok((stream, _)) => {
                    if tx.send(Ok(authority::relay(stream))).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a CRI connection");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
            }
        }
    });
    tokio_stream::wrappers::ReceiverStream::new(rx)
}

/// Both CRI services, over the shared state.
#[derive(Clone, Debug)]
struct Service(Arc<Cri>);

/// A runtime error as a gRPC status, with the code CRI clients act on.
fn status(e: wasmlet_runtime::Error) -> tonic::Status {
    use wasmlet_runtime::Error as E;
    let message = e.to_string();
    match e {
        E::NotFound(_) => tonic::Status::not_found(message),
        E::NotRunning(_) => tonic::Status::failed_precondition(message),
        E::Unsupported { .. } => tonic::Status::unimplemented(message),
        E::InvalidConfig { .. } => tonic::Status::invalid_argument(message),
        E::Unavailable { .. } | E::MissingTool { .. } | E::VulnerableRunc(_) => tonic::Status::unavailable(message),
        _ => tonic::Status::internal(message),
    }
}

fn store_status(e: crate::store::Error) -> tonic::Status {
    tonic::Status::unavailable(format!("the state database: {e}"))
}

/// Whether `labels` has every key and value of `selector`, as CRI's label filters.
fn selected(labels: &HashMap<String, String>, selector: &HashMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}
