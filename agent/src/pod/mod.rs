//! Pod lifecycle: [`state`] is the pure state machine; the [`Manager`] owns one worker
//! task per pod that drives it against the image service and the runtimes, and keeps
//! every record in the state database.
//!
//! Crash safety: a pod is acknowledged only after its record is flushed; intent is
//! written before acting (`deleting` before teardown, a new instance before a restart);
//! on start the manager re-reads every record, finishes interrupted deletions and marks
//! instances that were running when the agent died as lost, so they restart under the
//! pod's restart policy with `restartCount` and back-off kept.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::image::ImageService;
use crate::node::Node;
use crate::store::{Store, Table};
use wasmlet_runtime::{ContainerState, Runtime, RuntimeKind, Runtimes};

mod apply;
pub mod env;
mod events;
mod probe;
mod qos;
pub mod starts;
pub mod state;
pub mod view;
pub mod volume;
mod worker;

#[cfg(test)]
mod tests;

pub use events::Event;
pub use qos::{qos_class, requests};

use state::{Plan, PodStatus};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Store(#[from] crate::store::Error),
    #[error("pod {0} not found")]
    NotFound(String),
    #[error("image store: {0}")]
    Image(String),
    /// The object may not be applied as it is (a change to an immutable field).
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything stored about one pod.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PodRecord {
    pub uid: String,
    /// The manifest as applied, with the API server's defaults.
    pub pod: Pod,
    pub plan: Plan,
    pub status: PodStatus,
    /// Unix ms.
    pub created_at: u64,
    /// Deletion was asked for; the worker is (or was, before a crash) tearing down.
    pub deleting: bool,
    /// Which runtime runs each container, known once its image is pulled.
    #[serde(default)]
    pub runtimes: Vec<Option<RuntimeKind>>,
    /// The Linux runtime made the pod's network sandbox.
    #[serde(default)]
    pub network: bool,
    #[serde(default)]
    pub pod_ip: Option<String>,
    /// `hostUsers: false`: the first host uid/gid of the pod's range (its root).
    #[serde(default)]
    pub userns: Option<u32>,
    /// What this copy last wrote to the store, so that an unchanged record is not
    /// written again (not stored).
    #[serde(skip)]
    pub saved: SavedMark,
}

/// The hash of a record's last stored encoding (0: none); shared by the copy's clones,
/// which hold the same content until changed.
#[derive(Debug, Default)]
pub struct SavedMark(std::sync::atomic::AtomicU64);

impl Clone for SavedMark {
    fn clone(&self) -> Self {
        SavedMark(std::sync::atomic::AtomicU64::new(self.0.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

impl SavedMark {
    fn get(&self) -> u64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, hash: u64) {
        self.0.store(hash, std::sync::atomic::Ordering::Relaxed);
    }

    /// The next save writes whatever the record holds.
    pub fn forget(&self) {
        self.set(0);
    }
}

/// The ids each `hostUsers: false` pod gets, as the kubelet gives them.
pub const USERNS_SIZE: u32 = 65_536;

impl PodRecord {
    pub fn key(&self) -> String {
        key(self.namespace(), self.name())
    }
    pub fn namespace(&self) -> &str {
        self.pod.metadata.namespace.as_deref().unwrap_or("default")
    }
    pub fn name(&self) -> &str {
        self.pod.metadata.name.as_deref().unwrap_or_default()
    }
    /// Plan container `i` is a Linux container, running (or adopted as running).
    pub fn linux_running(&self, i: usize) -> bool {
        matches!(self.status.containers[i].state, state::State::Running { .. })
            && self.runtimes.get(i).copied().flatten() == Some(RuntimeKind::Linux)
    }

    /// The spec of plan container `i`: init containers first, then the app containers.
    pub fn container(&self, i: usize) -> Option<&Container> {
        let spec = self.pod.spec.as_ref()?;
        let init = spec.init_containers.as_deref().unwrap_or_default();
        if i < init.len() { init.get(i) } else { spec.containers.get(i - init.len()) }
    }
}

pub fn key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// What `apply` did with each object.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct Applied {
    #[serde(default = "pod_kind")]
    pub kind: String,
    /// `namespace/name`.
    pub pod: String,
    pub action: String,
}

fn pod_kind() -> String {
    "Pod".into()
}

/// What a pod's worker is told. Small: every pod's channel holds a block of 32 of them.
enum Msg {
    Exited {
        container: usize,
        instance: u32,
        state: Box<wasmlet_runtime::ContainerState>,
    },
    Delete {
        done: oneshot::Sender<()>,
        grace: Option<i64>,
    },
    Probe {
        container: usize,
        instance: u32,
        outcome: Box<probe::Outcome>,
    },
    /// A ConfigMap or Secret of the pod's namespace changed.
    ConfigChanged,
    /// The state database was reopened: write the pod's record again.
    Resave,
}

/// Why an exec could not start.
#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    /// No such pod or container, or it is not running.
    #[error("{0}")]
    Target(String),
    #[error(transparent)]
    Runtime(#[from] wasmlet_runtime::Error),
}

/// What a pod's worker needs, and nothing more: the stores, the runtimes, the node, the
/// pod directories, and where changes and events go. The [`Manager`] adds admission,
/// objects, workloads and images on top.
pub struct Core {
    store: Store,
    /// ConfigMaps, Secrets, Deployments and Jobs.
    objects: crate::objects::Objects,
    images: Arc<ImageService>,
    runtime: Arc<Runtimes>,
    pods_dir: PathBuf,
    workers: Mutex<HashMap<String, mpsc::UnboundedSender<Msg>>>,
    /// When each pod accepted by this process was stored, to time its start.
    accepted: Mutex<HashMap<String, std::time::Instant>>,
    /// Pod start latencies: accepted (stored) to every container running.
    starts: Mutex<starts::Starts>,
    node: Node,
    /// What pods may ask for (seccomp default, privileged, sysctls).
    policy: crate::node::Policy,
    /// First host ids of the user-namespace ranges pods hold.
    userns_ranges: Mutex<std::collections::BTreeSet<u32>>,
    /// Keys of the pods that hold the node (stored, not deleting, not finished): what
    /// the `pods` capacity counts, kept as records are saved.
    holding: Mutex<std::collections::HashSet<String>>,
    /// Volume files are written by one writer at a time (workers and updates).
    volume_lock: Mutex<()>,
    /// Wakes the Deployment and Job controller.
    workloads: tokio::sync::Notify,
    /// Pod keys by uid, for events the runtimes report by container id: every stored
    /// pod from its first save to its teardown.
    keys: Mutex<HashMap<String, String>>,
    /// How many stored pods' containers name each image (normalized reference): what
    /// image garbage collection keeps, without reading every pod record.
    image_refs: Mutex<HashMap<String, u32>>,
    /// Told of every change (cluster mode reports them to the API server).
    observer: std::sync::OnceLock<Arc<dyn Observer>>,
    /// The events recently recorded, to count repeats up, and those not yet written.
    event_log: events::Log,
}

/// Hears of pod changes and events as they are stored.
pub trait Observer: Send + Sync {
    /// The record of pod `key` changed or went away.
    fn pod_changed(&self, key: &str);
    /// An event was recorded (or counted up) for the pod with `uid`.
    fn event(&self, uid: &str, event: &Event);
}

impl env::Objects for Core {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap> {
        self.objects.get(namespace, name).ok().flatten()
    }
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret> {
        self.objects.get(namespace, name).ok().flatten()
    }
}

impl std::fmt::Debug for Core {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Core").finish_non_exhaustive()
    }
}

/// Runs the pods.
#[derive(Debug)]
pub struct Manager {
    core: Arc<Core>,
}

impl std::ops::Deref for Manager {
    type Target = Core;
    fn deref(&self) -> &Core {
        &self.core
    }
}

impl Core {
    /// Stores the record, unless it is what this copy of it stored last.
    fn save(&self, rec: &PodRecord) -> Result<()> {
        let key = rec.key();
        let mut last = rec.saved.get();
        if !self.store.put_changed(Table::Pods, &key, rec, &mut last)? {
            return Ok(());
        }
        rec.saved.set(last);
        self.track(rec);
        if let Some(o) = self.observer.get() {
            o.pod_changed(&key);
        }
        let mut holding = self.holding.lock().unwrap_or_else(|e| e.into_inner());
        if rec.deleting || rec.status.phase.is_terminal() {
            holding.remove(&key);
        } else {
            holding.insert(key);
        }
        drop(holding);
        if rec.pod.metadata.owner_references.is_some() {
            self.workloads.notify_one();
        }
        Ok(())
    }

    async fn teardown(&self, rec: &PodRecord) -> Result<()> {
        volume::unmount_all(&self.pod_dir(&rec.uid).join("volumes"));
        let _ = std::fs::remove_dir_all(self.pod_dir(&rec.uid));
        self.store.remove(Table::Pods, &rec.key())?;
        self.remove_events(&rec.uid)?;
        self.store.flush().await?;
        if let Some(base) = rec.userns {
            self.userns_ranges.lock().unwrap_or_else(|e| e.into_inner()).remove(&base);
        }
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(&rec.key());
        self.holding.lock().unwrap_or_else(|e| e.into_inner()).remove(&rec.key());
        self.untrack(rec);
        if rec.pod.metadata.owner_references.is_some() {
            self.workloads.notify_one();
        }
        if let Some(o) = self.observer.get() {
            o.pod_changed(&rec.key());
        }
        Ok(())
    }

    /// Notes a stored pod (once per uid): its key by uid, its images as in use.
    fn track(&self, rec: &PodRecord) {
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.contains_key(&rec.uid) {
            return;
        }
        keys.insert(rec.uid.clone(), rec.key());
        let mut refs = self.image_refs.lock().unwrap_or_else(|e| e.into_inner());
        for image in images_of(rec) {
            *refs.entry(image).or_default() += 1;
        }
    }

    /// Forgets a pod torn down (once, however often its teardown runs).
    fn untrack(&self, rec: &PodRecord) {
        self.accepted.lock().unwrap_or_else(|e| e.into_inner()).remove(&rec.uid);
        let mut keys = self.keys.lock().unwrap_or_else(|e| e.into_inner());
        if keys.remove(&rec.uid).is_none() {
            return;
        }
        let mut refs = self.image_refs.lock().unwrap_or_else(|e| e.into_inner());
        for image in images_of(rec) {
            if let Some(n) = refs.get_mut(&image) {
                *n -= 1;
                if *n == 0 {
                    refs.remove(&image);
                }
            }
        }
    }

    /// The images stored pods name, as image garbage collection compares them.
    fn images_in_use(&self) -> std::collections::HashSet<String> {
        self.image_refs.lock().unwrap_or_else(|e| e.into_inner()).keys().cloned().collect()
    }

    fn pod_dir(&self, uid: &str) -> PathBuf {
        self.pods_dir.join(uid)
    }

    /// Where a container instance's log is.
    pub fn log_path(&self, rec: &PodRecord, container: &str, instance: u32) -> PathBuf {
        self.pod_dir(&rec.uid).join("logs").join(container).join(format!("{instance}.log"))
    }

    /// Called when a pod first has every container running.
    fn started(&self, uid: &str) {
        if let Some(t) = self.accepted.lock().unwrap_or_else(|e| e.into_inner()).remove(uid) {
            self.starts.lock().unwrap_or_else(|e| e.into_inner()).record(t.elapsed());
        }
    }
}

/// A pod's containers' images, normalized as the image store names them.
/// Whether a runtime container id is one the CRI server made: 64 hex digits, as
/// containerd's and CRI-O's (a pod's are `<uid>-<name>-<instance>`).
pub fn is_cri_id(id: &str) -> bool {
    id.len() == 64 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

fn images_of(rec: &PodRecord) -> impl Iterator<Item = String> + '_ {
    rec.plan.containers.iter().filter_map(|c| c.image.parse::<registry_client::Reference>().ok().map(|r| r.to_string()))
}

impl Manager {
    /// Starts the manager and resumes every stored pod.
    pub async fn start(
        store: Store,
        images: Arc<ImageService>,
        runtime: Arc<Runtimes>,
        state_dir: &std::path::Path,
        policy: crate::node::Policy,
    ) -> Result<Arc<Self>> {
        let core = Arc::new(Core {
            objects: crate::objects::Objects::new(store.clone()),
            store,
            images,
            runtime,
            pods_dir: state_dir.join("pods"),
            workers: Mutex::new(HashMap::new()),
            accepted: Mutex::new(HashMap::new()),
            starts: Mutex::new(starts::Starts::default()),
            node: Node::detect(state_dir),
            policy,
            userns_ranges: Mutex::new(std::collections::BTreeSet::new()),
            holding: Mutex::new(std::collections::HashSet::new()),
            volume_lock: Mutex::new(()),
            workloads: tokio::sync::Notify::new(),
            keys: Mutex::new(HashMap::new()),
            image_refs: Mutex::new(HashMap::new()),
            observer: std::sync::OnceLock::new(),
            event_log: events::Log::default(),
        });
        tokio::spawn(events::write_in_background(Arc::downgrade(&core)));
        // refusals the Wasm runtime reports (a denied connect, say) become pod events
        let weak = Arc::downgrade(&core);
        core.runtime.set_event_sink(Arc::new(move |id: &str, reason: &str, message: &str| {
            if let Some(m) = weak.upgrade() {
                m.container_event(id, reason, message);
            }
        }));
        let mgr = Arc::new(Manager { core });
        let records: Vec<(String, PodRecord)> = mgr.store.scan(Table::Pods, "")?;
        let now = crate::time::now_ms();
        mgr.userns_ranges
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(records.iter().filter_map(|(_, r)| r.userns));
        let mut resumed = Vec::with_capacity(records.len());
        for (_, mut rec) in records {
            for i in 0..rec.status.containers.len() {
                if matches!(rec.status.containers[i].state, state::State::Running { .. }) {
                    mgr.recover(&mut rec, i, now).await;
                } else {
                    mgr.adopt_unrecorded(&mut rec, i).await;
                }
            }
            mgr.save(&rec)?;
            resumed.push(rec);
        }
        mgr.store.flush().await?;
        // orphans go before any worker runs: a worker starting a container again makes
        // one of the same id, which the sweep would otherwise take for the orphan
        mgr.remove_orphans().await;
        for rec in resumed {
            mgr.spawn(rec);
        }
        tracing::info!("pods resumed");
        Ok(mgr)
    }

    /// A free range of host ids for a `hostUsers: false` pod: the lowest multiple of
    /// 65,536 above the host's own first range, below 2^31. None when all are taken.
    pub(super) fn allocate_userns(&self) -> Option<u32> {
        let mut taken = self.userns_ranges.lock().unwrap_or_else(|e| e.into_inner());
        let base = (1..(1u32 << 31) / USERNS_SIZE).map(|k| k * USERNS_SIZE).find(|b| !taken.contains(b))?;
        taken.insert(base);
        Some(base)
    }

    /// A container that was running when the agent stopped: a Linux container whose
    /// monitor kept it running is adopted as it is, one that exited meanwhile is
    /// reported with its real exit status; anything else (every Wasm guest, which died
    /// with the agent) is lost and restarts under the pod's restart policy.
    async fn recover(&self, rec: &mut PodRecord, i: usize, now: u64) {
        let plan = rec.plan.clone();
        let name = plan.containers[i].name.clone();
        let instance = rec.status.containers[i].instances;
        if rec.runtimes.get(i).copied().flatten() == Some(RuntimeKind::Linux) {
            let id = worker::container_id(&rec.uid, &name, instance);
            match self.runtime.container_status(RuntimeKind::Linux, &id).await {
                Ok(ContainerState::Running { .. }) => {
                    tracing::info!(pod = %rec.key(), container = %name, "adopted a running container");
                    return;
                }
                Ok(exit @ ContainerState::Exited { .. }) => {
                    self.record_exit(rec, &plan, i, &id, exit).await;
                    return;
                }
                _ => {}
            }
        }
        rec.status.apply(&plan, state::Event::Lost { container: i, at: now });
        self.event(rec, "Warning", "Lost", &format!("Container {name} was running when the agent stopped"));
    }

    /// A Linux container runc started just before the agent died, before the record said
    /// it runs (the record names its instance as starting, or not yet even that): one
    /// still running is adopted, as the kubelet adopts what its runtime runs, rather than
    /// removed as an orphan and started again; one that exited meanwhile is reported
    /// with its real status. One that was created and never started is left to
    /// [`Self::remove_orphans`], and the worker starts the container again.
    async fn adopt_unrecorded(&self, rec: &mut PodRecord, i: usize) {
        if rec.runtimes.get(i).copied().flatten() == Some(RuntimeKind::Wasm) || !self.runtime.has(RuntimeKind::Linux) {
            return;
        }
        let plan = rec.plan.clone();
        let name = plan.containers[i].name.clone();
        let recorded = rec.status.containers[i].instances;
        for instance in [recorded, recorded + 1].into_iter().filter(|n| *n > 0) {
            let id = worker::container_id(&rec.uid, &name, instance);
            let Ok(found) = self.runtime.container_status(RuntimeKind::Linux, &id).await else { continue };
            if matches!(rec.status.containers[i].state, state::State::Terminated(_)) && instance == recorded {
                // its exit is on record already; only the container was left
                let _ = self.runtime.remove_container(RuntimeKind::Linux, &id).await;
                continue;
            }
            let start = |rec: &mut PodRecord, at: u64| {
                if instance > recorded {
                    rec.status.apply(&plan, state::Event::Starting { container: i, at });
                }
                rec.runtimes.resize(plan.containers.len(), None);
                rec.runtimes[i] = Some(RuntimeKind::Linux);
            };
            match found {
                ContainerState::Running { started_at } => {
                    start(rec, started_at);
                    rec.status.apply(&plan, state::Event::Started { container: i, at: started_at });
                    tracing::info!(pod = %rec.key(), container = %name, "adopted a container started before the agent stopped");
                    return;
                }
                exit @ ContainerState::Exited { started_at, .. } => {
                    start(rec, started_at);
                    self.record_exit(rec, &plan, i, &id, exit).await;
                    return;
                }
                ContainerState::Created => {}
            }
        }
    }

    /// A Linux container's exit, found after a restart, recorded; the container removed.
    async fn record_exit(&self, rec: &mut PodRecord, plan: &state::Plan, i: usize, id: &str, exit: ContainerState) {
        if let ContainerState::Exited { exit_code, reason, message, started_at, finished_at } = exit {
            let term =
                state::Terminated { exit_code, reason: reason.as_str().into(), message, started_at, finished_at };
            rec.status.apply(plan, state::Event::Exited { container: i, term });
        }
        let _ = self.runtime.remove_container(RuntimeKind::Linux, id).await;
    }

    /// Linux containers no stored pod runs (left by a crash between their creation and
    /// the record that names them) are stopped and removed.
    async fn remove_orphans(&self) {
        let Ok(linux) = self.runtime.get(RuntimeKind::Linux) else { return };
        let mut known = std::collections::HashSet::new();
        for rec in self.list().unwrap_or_default() {
            for (i, c) in rec.status.containers.iter().enumerate() {
                if matches!(c.state, state::State::Running { .. }) {
                    known.insert(worker::container_id(&rec.uid, &rec.plan.containers[i].name, c.instances));
                }
            }
        }
        for id in linux.list_containers() {
            // the CRI server's containers are its own to keep or sweep
            if !known.contains(&id) && !is_cri_id(&id) {
                tracing::warn!(container = %id, "removing a container no pod runs");
                let _ = self.runtime.stop_container(RuntimeKind::Linux, &id, std::time::Duration::ZERO).await;
                let _ = self.runtime.remove_container(RuntimeKind::Linux, &id).await;
            }
        }
    }

    /// Stored ConfigMaps (`kind` "ConfigMap"), Secrets, Deployments or Jobs, as API objects.
    pub fn objects(&self, kind: &str) -> Result<Vec<serde_json::Value>> {
        Ok(self.objects.list_json(kind)?)
    }

    /// Forgets a ConfigMap, Secret, Deployment or Job; false when there was none. The
    /// pods a Deployment or Job owns are deleted with it (each within its grace
    /// period), and this waits for them, as `kubectl delete --cascade=foreground` does.
    pub async fn delete_object(self: &Arc<Self>, kind: &str, namespace: &str, name: &str) -> Result<bool> {
        let Some(old) = self.objects.remove(kind, namespace, name)? else { return Ok(false) };
        self.store.flush().await?;
        if let Some(uid) = old["metadata"]["uid"].as_str() {
            self.remove_events(uid)?;
            let owned: Vec<String> = self
                .list()?
                .into_iter()
                .filter(|r| crate::spec::workload::controller_of(&r.pod).is_some_and(|o| o.uid == uid))
                .map(|r| r.key())
                .collect();
            let mut tasks = tokio::task::JoinSet::new();
            for key in owned {
                let mgr = self.clone();
                tasks.spawn(async move { mgr.delete(&key).await });
            }
            while let Some(done) = tasks.join_next().await {
                if let Ok(Err(e)) = done {
                    tracing::warn!(error = %e, "cannot delete an owned pod");
                }
            }
        }
        Ok(true)
    }

    /// Stored Deployments or Jobs, typed.
    pub fn workloads<K: crate::objects::Kind>(&self) -> Result<Vec<K>> {
        Ok(self.objects.list::<K>()?)
    }

    /// Writes a Deployment's or Job's status back (flushed by [`Manager::flush`]).
    pub(crate) fn put_workload<K: crate::objects::Kind>(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        object: &K,
    ) -> Result<()> {
        Ok(self.objects.update(object, meta)?)
    }

    /// Forgets a Deployment or Job (its pods are the caller's to delete).
    pub(crate) async fn remove_workload(
        &self,
        kind: &str,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    ) -> Result<()> {
        self.objects.remove(
            kind,
            meta.namespace.as_deref().unwrap_or("default"),
            meta.name.as_deref().unwrap_or_default(),
        )?;
        if let Some(uid) = &meta.uid {
            self.remove_events(uid)?;
        }
        self.store.flush().await?;
        Ok(())
    }

    pub(crate) async fn flush(&self) -> Result<()> {
        self.write_events();
        self.store.flush().await?;
        Ok(())
    }

    /// The controller's wake-up: resolves once a workload or an owned pod changed.
    /// Wakes the Deployment and Job controller.
    pub fn wake_workloads(&self) {
        self.workloads.notify_one();
    }

    pub(crate) fn workloads_changed(&self) -> tokio::sync::futures::Notified<'_> {
        self.workloads.notified()
    }

    /// Records an event for a Deployment or Job.
    pub(crate) fn workload_event(
        &self,
        meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
        kind: &str,
        type_: &str,
        reason: &str,
        message: &str,
    ) {
        let key = key(meta.namespace.as_deref().unwrap_or("default"), meta.name.as_deref().unwrap_or_default());
        let uid = meta.uid.clone().unwrap_or_default();
        self.record_event(&uid, &key, Some(kind.to_ascii_lowercase()), type_, reason, message);
    }

    /// Starts deleting a pod and returns at once; the pod is marked as going first.
    pub(crate) fn delete_in_background(self: &Arc<Self>, key: String) {
        let mgr = self.clone();
        tokio::spawn(async move {
            match mgr.delete(&key).await {
                Ok(()) | Err(Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(pod = %key, error = %e, "cannot delete pod"),
            }
        });
    }

    /// Stops a pod's containers within its grace period and forgets it. Waits until done.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.delete_with_grace(key, None).await
    }

    /// As [`Manager::delete`], with a grace period (seconds) that overrides the pod's.
    pub async fn delete_with_grace(&self, key: &str, grace: Option<i64>) -> Result<()> {
        let mut rec: PodRecord = self.store.get(Table::Pods, key)?.ok_or_else(|| Error::NotFound(key.into()))?;
        rec.deleting = true;
        if let (Some(g), Some(spec)) = (grace, rec.pod.spec.as_mut()) {
            spec.termination_grace_period_seconds = Some(g.max(0));
        }
        self.save(&rec)?;
        self.store.flush().await?;
        let worker = self.workers.lock().unwrap_or_else(|e| e.into_inner()).get(key).cloned();
        let (done, wait) = oneshot::channel();
        match worker {
            Some(tx) if tx.send(Msg::Delete { done, grace }).is_ok() => {
                let _ = wait.await;
            }
            _ => self.teardown(&rec).await?,
        }
        Ok(())
    }

    /// Reopens the state database if its writes stopped and space has returned, then
    /// has every pod write its record again (what was saved after the database's last
    /// flush before the error is not in it). Returns whether it reopened.
    pub async fn recover_store(&self) -> Result<bool> {
        if !self.store.recover().await? {
            return Ok(false);
        }
        // a worker that ended had torn its pod down, but the removal may not have reached
        // the disk before the error: do it again
        let ended: Vec<String> = {
            let workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
            for tx in workers.values() {
                let _ = tx.send(Msg::Resave);
            }
            workers.iter().filter(|(_, tx)| tx.is_closed()).map(|(k, _)| k.clone()).collect()
        };
        for key in ended {
            match self.store.get::<PodRecord>(Table::Pods, &key)? {
                Some(rec) => self.teardown(&rec).await?,
                None => drop(self.workers.lock().unwrap_or_else(|e| e.into_inner()).remove(&key)),
            }
        }
        self.store.flush().await?;
        Ok(true)
    }

    pub fn get(&self, key: &str) -> Result<Option<PodRecord>> {
        Ok(self.store.get(Table::Pods, key)?)
    }

    pub fn list(&self) -> Result<Vec<PodRecord>> {
        Ok(self.store.scan(Table::Pods, "")?.into_iter().map(|(_, r)| r).collect())
    }

    pub fn events(&self, uid_prefix: &str) -> Result<Vec<Event>> {
        self.write_events();
        Ok(self.store.scan(Table::Events, uid_prefix)?.into_iter().map(|(_, e)| e).collect())
    }

    /// Pod start latencies (accepted → all containers running): the most recent ones,
    /// oldest first, and how many there were in all.
    pub fn start_latencies(&self) -> (Vec<std::time::Duration>, u64) {
        let s = self.starts.lock().unwrap_or_else(|e| e.into_inner());
        (s.recent(), s.totals.count)
    }

    /// Pod start latencies since the agent started, as the kubelet's SLI histogram.
    pub fn start_totals(&self) -> starts::Totals {
        self.starts.lock().unwrap_or_else(|e| e.into_inner()).totals
    }

    pub fn runtimes(&self) -> &Arc<Runtimes> {
        &self.runtime
    }

    /// The running container `exec` goes to (the named one, or the pod's first): its
    /// runtime and id.
    pub fn exec_target(&self, key: &str, container: Option<&str>) -> Result<(RuntimeKind, String), String> {
        let rec = self.get(key).map_err(|e| e.to_string())?.ok_or_else(|| format!("pod {key} not found"))?;
        let i = match container {
            Some(name) => rec
                .plan
                .containers
                .iter()
                .position(|c| c.name == name)
                .ok_or_else(|| format!("container {name} is not valid for pod {}", rec.name()))?,
            None => 0,
        };
        let name = &rec.plan.containers[i].name;
        let c = &rec.status.containers[i];
        match rec.runtimes.get(i).copied().flatten() {
            Some(kind) if matches!(c.state, state::State::Running { .. }) => {
                Ok((kind, worker::container_id(&rec.uid, name, c.instances)))
            }
            _ => Err(format!("container {name} is not running")),
        }
    }

    /// Opens an exec session in a pod's running container; a runtime that cannot exec
    /// (a Wasm guest has no shell to run a command in) says so.
    pub async fn exec(
        &self,
        key: &str,
        container: Option<&str>,
        command: &[String],
        tty: bool,
    ) -> Result<wasmlet_runtime::ExecSession, ExecError> {
        let (kind, id) = self.exec_target(key, container).map_err(ExecError::Target)?;
        Ok(self.runtime.exec(kind, &id, command, tty).await?)
    }

    /// Removes images no pod uses; with `thresholds` (high, low disk usage in percent)
    /// only when usage is above high, and only until it is below low.
    pub async fn prune_images(&self, thresholds: Option<(u64, u64)>) -> Result<Vec<crate::image::ImageRecord>> {
        if let Some((high, _)) = thresholds
            && self.images.disk_usage_percent().is_none_or(|u| u <= high)
        {
            return Ok(Vec::new());
        }
        let in_use = self.images_in_use();
        let images = self.images.clone();
        let enough = move || match thresholds {
            Some((_, low)) => images.disk_usage_percent().is_none_or(|u| u < low),
            None => false,
        };
        let removed = self.images.prune(&in_use, enough).await.map_err(|e| Error::Image(e.to_string()))?;
        for r in &removed {
            tracing::info!(image = %r.reference, "image removed");
        }
        Ok(removed)
    }

    /// For an agent that stops: the Secret-bearing volumes of pods that stop with it
    /// (no Linux container of theirs runs on) are unmounted. A running Linux container
    /// keeps its own, as the kubelet leaves a running container's volumes mounted.
    pub fn release_secret_volumes(&self) {
        for rec in self.list().unwrap_or_default() {
            if !(0..rec.status.containers.len()).any(|i| rec.linux_running(i)) {
                volume::unmount_secrets(&rec, &self.pod_dir(&rec.uid).join("volumes"));
            }
        }
    }

    pub fn images(&self) -> &Arc<ImageService> {
        &self.images
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn policy(&self) -> &crate::node::Policy {
        &self.policy
    }

    /// Counts `reference` (normalized) as in use by one more container outside the
    /// pods (the CRI server's), so that image garbage collection keeps it…
    pub fn hold_image(&self, reference: &str) {
        *self.image_refs.lock().unwrap_or_else(|e| e.into_inner()).entry(reference.to_string()).or_default() += 1;
    }

    /// …and one fewer.
    pub fn release_image(&self, reference: &str) {
        let mut refs = self.image_refs.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(n) = refs.get_mut(reference) {
            *n -= 1;
            if *n == 0 {
                refs.remove(reference);
            }
        }
    }

    /// Whether a stored pod or a held container names the image.
    pub fn image_in_use(&self, reference: &str) -> bool {
        self.image_refs.lock().unwrap_or_else(|e| e.into_inner()).contains_key(reference)
    }

    /// What plan container `i` of a pod uses now, if it runs.
    pub fn usage(&self, rec: &PodRecord, i: usize) -> Option<wasmlet_runtime::Usage> {
        let kind = rec.runtimes.get(i).copied().flatten()?;
        let c = rec.status.containers.get(i)?;
        if !matches!(c.state, state::State::Running { .. }) {
            return None;
        }
        let id = worker::container_id(&rec.uid, &rec.plan.containers[i].name, c.instances);
        self.runtime.container_stats(kind, &id)
    }

    /// Sets the one observer of pod changes and events.
    pub fn observe(&self, observer: Arc<dyn Observer>) {
        let _ = self.observer.set(observer);
    }

    /// This node's facts.
    pub fn node(&self) -> &Node {
        &self.node
    }

    /// How many pods are stored, finished ones included.
    pub fn stored_pods(&self) -> usize {
        self.keys.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// How many pods the node takes, and what limits it.
    pub fn pod_capacity(&self) -> &crate::node::PodCapacity {
        &self.policy.capacity
    }

    fn spawn(&self, rec: PodRecord) {
        self.track(&rec);
        let (tx, rx) = mpsc::unbounded_channel();
        self.workers.lock().unwrap_or_else(|e| e.into_inner()).insert(rec.key(), tx.clone());
        let core = self.core.clone();
        tokio::spawn(worker::run(core, Box::new(rec), tx, rx));
    }
}
