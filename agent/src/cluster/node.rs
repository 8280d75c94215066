//! The Node object and its heartbeats: registration, the Lease in `kube-node-lease`
//! (renewed every 10 s, 40 s duration) and the node status (computed every 10 s, sent
//! when it changes and at least every 5 minutes), as the kubelet does them (KEP-589).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::{
    ContainerImage, Node, NodeAddress, NodeCondition, NodeDaemonEndpoints, NodeSpec, NodeStatus, NodeSystemInfo, Taint,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, OwnerReference, Time};
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;

use super::ClusterConfig;
use super::eviction::{Observed, Pressure};
use super::pods::PodSync;
use crate::pod::Manager;

pub const LEASE_DURATION_SECONDS: i32 = 40;
const RENEW: Duration = Duration::from_secs(10);
const STATUS_EVERY: Duration = Duration::from_secs(10);
const STATUS_REPORT: Duration = Duration::from_secs(300);
/// How long one heartbeat request may take. A request on a connection that a partition
/// stalled waits for TCP's retransmits (tens of seconds once the network is back), so it
/// is given up and made again on a fresh connection, as the kubelet's heartbeat client
/// is bounded.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(3);

/// The API server answering again after failures, as a generation any loop (lease, node
/// status, pod watch) bumps when it gets through after failing, and every loop's back-off
/// waits on: the first to notice wakes the others, so that the node is Ready and its pods
/// converge within [`REQUEST_TIMEOUT`] + the 7 s back-off of the network's return.
#[derive(Debug)]
pub struct Reachability(tokio::sync::watch::Sender<u64>);

impl Default for Reachability {
    fn default() -> Self {
        Reachability(tokio::sync::watch::channel(0).0)
    }
}

impl Reachability {
    /// A loop got through after failing: tell the others.
    pub fn recovered(&self) {
        self.0.send_modify(|g| *g += 1);
    }

    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.0.subscribe()
    }
}

/// Sleeps `d` after a failure, or less: not at all if another loop got through since
/// this one last looked (`recovery` is marked at each attempt), else until one does.
pub async fn back_off(d: Duration, recovery: &mut tokio::sync::watch::Receiver<u64>) {
    if recovery.has_changed().unwrap_or(false) {
        return;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => {}
        _ = recovery.changed() => {}
    }
}

/// `f` bounded by [`REQUEST_TIMEOUT`]; a timeout is an error like any other.
pub async fn bounded<T, E: std::fmt::Display>(f: impl std::future::Future<Output = Result<T, E>>) -> Result<T, String> {
    match tokio::time::timeout(REQUEST_TIMEOUT, f).await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err(format!("no answer within {REQUEST_TIMEOUT:?}")),
    }
}

/// Back-off for heartbeats: 200 ms doubling to 7 s, as the kubelet's lease controller.
pub fn backoff(attempt: u32) -> Duration {
    Duration::from_millis(200u64.saturating_mul(1 << attempt.min(6))).min(Duration::from_secs(7))
}

/// The labels this node carries: the well-known ones and wasmlet's runtime labels.
pub fn labels(cfg: &ClusterConfig, linux: bool) -> BTreeMap<String, String> {
    let arch = arch();
    let arch = arch.as_str();
    let mut l = BTreeMap::new();
    for (k, v) in [
        ("kubernetes.io/hostname", cfg.node_name.as_str()),
        ("kubernetes.io/os", "linux"),
        ("kubernetes.io/arch", arch),
        ("beta.kubernetes.io/os", "linux"),
        ("beta.kubernetes.io/arch", arch),
        ("node.kubernetes.io/instance-type", "wasmlet"),
        ("wasmlet.dev/node", "true"),
        ("wasmlet.dev/runtime.wasm", "true"),
        ("wasmlet.dev/runtime.linux", if linux { "true" } else { "false" }),
    ] {
        l.insert(k.to_string(), v.to_string());
    }
    l.extend(cfg.labels.clone());
    l
}

/// `key[=value]:Effect` as `--register-with-taints` takes them.
pub fn parse_taint(s: &str) -> Result<Taint, String> {
    let (kv, effect) = s.rsplit_once(':').ok_or_else(|| format!("taint {s:?}: want key[=value]:Effect"))?;
    if !["NoSchedule", "PreferNoSchedule", "NoExecute"].contains(&effect) {
        return Err(format!("taint {s:?}: effect must be NoSchedule, PreferNoSchedule or NoExecute"));
    }
    let (key, value) = kv.split_once('=').map_or((kv, None), |(k, v)| (k, Some(v.to_string())));
    if key.is_empty() {
        return Err(format!("taint {s:?}: the key is empty"));
    }
    Ok(Taint { key: key.into(), value, effect: effect.into(), time_added: None })
}

fn quantity(s: impl Into<String>) -> Quantity {
    Quantity(s.into())
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).map(|s| s.trim().to_string()).unwrap_or_default()
}

fn os_image() -> String {
    read("/etc/os-release")
        .lines()
        .find_map(|l| l.strip_prefix("PRETTY_NAME="))
        .map(|v| v.trim_matches('"').to_string())
        .unwrap_or_else(|| "Linux".into())
}

/// What the node reports about itself that does not change while it runs.
pub fn system_info() -> NodeSystemInfo {
    let uname = rustix::system::uname();
    let machine_id = read("/etc/machine-id");
    let uuid = read("/sys/class/dmi/id/product_uuid");
    NodeSystemInfo {
        machine_id: machine_id.clone(),
        system_uuid: if uuid.is_empty() { machine_id } else { uuid },
        boot_id: read("/proc/sys/kernel/random/boot_id"),
        kernel_version: uname.release().to_string_lossy().into_owned(),
        os_image: os_image(),
        container_runtime_version: format!("wasmlet://{}", env!("CARGO_PKG_VERSION")),
        kubelet_version: super::KUBELET_VERSION.into(),
        kube_proxy_version: String::new(),
        operating_system: "linux".into(),
        architecture: arch(),
        ..Default::default()
    }
}

/// The machine's architecture in Go's words, as Kubernetes labels and nodeInfo use them.
fn arch() -> String {
    match std::env::consts::ARCH {
        "x86_64" => "amd64".into(),
        "aarch64" => "arm64".into(),
        a => a.into(),
    }
}

/// The pressure conditions on the host now, against the node's thresholds.
fn pressure(cfg: &ClusterConfig) -> Pressure {
    cfg.eviction.pressure(&Observed::read(&cfg.state_dir))
}

fn condition(kind: &str, status: bool, reason: &str, message: &str, now: &Time) -> NodeCondition {
    NodeCondition {
        type_: kind.into(),
        status: if status { "True" } else { "False" }.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_heartbeat_time: Some(now.clone()),
        last_transition_time: Some(now.clone()),
    }
}

/// The node's status: capacity and allocatable from the machine, conditions, addresses,
/// the kubelet endpoint. Transition times are the caller's to keep.
pub fn status(mgr: &Manager, cfg: &ClusterConfig, pressure: Pressure, ready: Result<(), String>) -> NodeStatus {
    let node = mgr.node();
    let now = Time(jiff::Timestamp::now());
    let pods = mgr.pod_capacity().pods.to_string();
    let capacity = BTreeMap::from([
        ("cpu".to_string(), quantity(format!("{}m", node.cpu_millis))),
        ("memory".to_string(), quantity(format!("{}Ki", node.memory_bytes / 1024))),
        ("ephemeral-storage".to_string(), quantity(format!("{}Ki", node.ephemeral_bytes / 1024))),
        ("pods".to_string(), quantity(pods.clone())),
    ]);
    let allocatable = BTreeMap::from([
        ("cpu".to_string(), quantity(format!("{}m", node.cpu_millis))),
        ("memory".to_string(), quantity(format!("{}Ki", cfg.eviction.allocatable_memory(node.memory_bytes) / 1024))),
        (
            "ephemeral-storage".to_string(),
            quantity(format!("{}Ki", cfg.eviction.allocatable_storage(node.ephemeral_bytes) / 1024)),
        ),
        ("pods".to_string(), quantity(pods)),
    ]);
    let conditions = vec![
        match &ready {
            Ok(()) => condition("Ready", true, "KubeletReady", "kubelet is posting ready status", &now),
            Err(why) => condition("Ready", false, "KubeletNotReady", why, &now),
        },
        if pressure.memory {
            condition(
                "MemoryPressure",
                true,
                "KubeletHasInsufficientMemory",
                "kubelet has insufficient memory available",
                &now,
            )
        } else {
            condition(
                "MemoryPressure",
                false,
                "KubeletHasSufficientMemory",
                "kubelet has sufficient memory available",
                &now,
            )
        },
        if pressure.disk {
            condition("DiskPressure", true, "KubeletHasDiskPressure", "kubelet has disk pressure", &now)
        } else {
            condition("DiskPressure", false, "KubeletHasNoDiskPressure", "kubelet has no disk pressure", &now)
        },
        if pressure.pid {
            condition("PIDPressure", true, "KubeletHasInsufficientPID", "kubelet has insufficient PID available", &now)
        } else {
            condition("PIDPressure", false, "KubeletHasSufficientPID", "kubelet has sufficient PID available", &now)
        },
    ];
    let mut addresses = vec![NodeAddress { type_: "InternalIP".into(), address: cfg.node_ip.clone() }];
    addresses.push(NodeAddress { type_: "Hostname".into(), address: cfg.node_name.clone() });
    NodeStatus {
        capacity: Some(capacity),
        allocatable: Some(allocatable),
        conditions: Some(conditions),
        addresses: Some(addresses),
        daemon_endpoints: Some(NodeDaemonEndpoints {
            kubelet_endpoint: Some(k8s_openapi::api::core::v1::DaemonEndpoint { port: cfg.kubelet_port as i32 }),
        }),
        node_info: Some(system_info()),
        images: Some(images(mgr)),
        ..Default::default()
    }
}

/// The kubelet's `--node-status-max-images` default.
const MAX_IMAGES: usize = 50;

/// `status.images`: the images on the node, largest first, each named by its digest
/// reference and its tag, as the kubelet lists them.
fn images(mgr: &Manager) -> Vec<ContainerImage> {
    let mut by_id: BTreeMap<String, ContainerImage> = BTreeMap::new();
    for r in mgr.images().list().unwrap_or_default() {
        let entry = by_id
            .entry(r.image_id())
            .or_insert_with(|| ContainerImage { names: Some(vec![r.image_id()]), size_bytes: Some(r.size as i64) });
        let names = entry.names.get_or_insert_with(Vec::new);
        if !names.contains(&r.reference) {
            names.push(r.reference.clone());
        }
    }
    let mut out: Vec<ContainerImage> = by_id.into_values().collect();
    out.sort_by_key(|i| std::cmp::Reverse(i.size_bytes));
    out.truncate(MAX_IMAGES);
    out
}

/// Whether `ours` says anything the API server's `theirs` does not, heartbeat and
/// transition times aside. Only the fields the node sets count; among conditions, only
/// the node's own types (another party's condition is left alone).
fn meaningful(ours: &NodeStatus, theirs: &NodeStatus) -> bool {
    let strip = |c: &NodeCondition| (c.type_.clone(), c.status.clone(), c.reason.clone(), c.message.clone());
    let ours_c: Vec<_> = ours.conditions.iter().flatten().map(strip).collect();
    let theirs_c: Vec<_> = ours
        .conditions
        .iter()
        .flatten()
        .map(|c| theirs.conditions.iter().flatten().find(|t| t.type_ == c.type_).map(strip))
        .collect();
    ours_c.into_iter().map(Some).ne(theirs_c)
        || !same_quantities(ours.capacity.as_ref(), theirs.capacity.as_ref())
        || !same_quantities(ours.allocatable.as_ref(), theirs.allocatable.as_ref())
        || ours.addresses != theirs.addresses
        || ours.daemon_endpoints != theirs.daemon_endpoints
        || ours.node_info != theirs.node_info
        || ours.images != theirs.images
}

/// Resource lists equal in value: the API server keeps quantities in canonical form
/// (`2000m` comes back as `2`, `25165824Ki` as `24Gi`).
fn same_quantities(a: Option<&BTreeMap<String, Quantity>>, b: Option<&BTreeMap<String, Quantity>>) -> bool {
    let value = |k: &str, q: &Quantity| {
        if k == "cpu" { crate::spec::parse_millicores(&q.0) } else { crate::spec::parse_bytes(&q.0) }
    };
    let (a, b) = (a.cloned().unwrap_or_default(), b.cloned().unwrap_or_default());
    a.len() == b.len()
        && a.iter().all(|(k, q)| b.get(k).is_some_and(|r| value(k, q) == value(k, r) && value(k, q).is_some()))
}

/// Keeps each condition's transition time while its status stays the same.
fn carry_transitions(new: &mut NodeStatus, old: &NodeStatus) {
    for c in new.conditions.iter_mut().flatten() {
        if let Some(o) = old.conditions.iter().flatten().find(|o| o.type_ == c.type_)
            && o.status == c.status
        {
            c.last_transition_time = o.last_transition_time.clone();
        }
    }
}

/// The Node object to create.
pub fn object(mgr: &Manager, cfg: &ClusterConfig, linux: bool) -> Node {
    Node {
        metadata: ObjectMeta {
            name: Some(cfg.node_name.clone()),
            labels: Some(labels(cfg, linux)),
            annotations: Some(BTreeMap::from([(
                "wasmlet.dev/version".to_string(),
                env!("CARGO_PKG_VERSION").to_string(),
            )])),
            ..Default::default()
        },
        spec: Some(NodeSpec { taints: Some(cfg.taints.clone()).filter(|t| !t.is_empty()), ..Default::default() }),
        status: Some(status(mgr, cfg, pressure(cfg), Ok(()))),
    }
}

/// Creates the Node, or brings an existing one's labels up to date. Returns its uid.
pub async fn register(client: &kube::Client, mgr: &Manager, cfg: &ClusterConfig, linux: bool) -> kube::Result<String> {
    let api: Api<Node> = Api::all(client.clone());
    let node = object(mgr, cfg, linux);
    let created = match api.create(&PostParams::default(), &node).await {
        Ok(n) => {
            tracing::info!(node = %cfg.node_name, "registered the node");
            n
        }
        Err(kube::Error::Api(e)) if e.code == 409 => {
            let patch = json!({"metadata": {"labels": node.metadata.labels}});
            let n = api.patch(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
            tracing::info!(node = %cfg.node_name, "the node was registered before; labels updated");
            n
        }
        Err(e) => return Err(e),
    };
    // the status is a subresource: creation does not set it
    let status = json!({"status": node.status});
    api.patch_status(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&status)).await?;
    Ok(created.metadata.uid.unwrap_or_default())
}

/// Renews the node's Lease every 10 s, creating it when missing. Failures are retried
/// with back-off and never stop the node's pods.
/// The first renewal after failures tells the other loops (the pod watch lists anew).
pub async fn lease_loop(client: kube::Client, cfg: Arc<ClusterConfig>, node_uid: String, sync: Arc<PodSync>) {
    let api: Api<Lease> = Api::namespaced(client, "kube-node-lease");
    let mut recovery = sync.reachable.subscribe();
    let mut failures = 0u32;
    loop {
        recovery.borrow_and_update();
        match bounded(renew(&api, &cfg, &node_uid)).await {
            Ok(()) => {
                if failures > 0 {
                    tracing::info!("lease renewed again after {failures} failures");
                    sync.reachable.recovered();
                    recovery.borrow_and_update();
                }
                failures = 0;
                tokio::time::sleep(RENEW).await;
            }
            Err(e) => {
                failures += 1;
                log_failure("cannot renew the node lease", &e, failures);
                back_off(backoff(failures.saturating_sub(5)), &mut recovery).await;
            }
        }
    }
}

async fn renew(api: &Api<Lease>, cfg: &ClusterConfig, node_uid: &str) -> kube::Result<()> {
    let now = MicroTime(jiff::Timestamp::now());
    match api.get_opt(&cfg.node_name).await? {
        Some(mut lease) => {
            let spec = lease.spec.get_or_insert_with(Default::default);
            spec.renew_time = Some(now);
            spec.holder_identity = Some(cfg.node_name.clone());
            spec.lease_duration_seconds = Some(LEASE_DURATION_SECONDS);
            // a stale resourceVersion gets 409: read again next round
            api.replace(&cfg.node_name, &PostParams::default(), &lease).await?;
        }
        None => {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(cfg.node_name.clone()),
                    namespace: Some("kube-node-lease".into()),
                    owner_references: (!node_uid.is_empty()).then(|| {
                        vec![OwnerReference {
                            api_version: "v1".into(),
                            kind: "Node".into(),
                            name: cfg.node_name.clone(),
                            uid: node_uid.into(),
                            ..Default::default()
                        }]
                    }),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(cfg.node_name.clone()),
                    lease_duration_seconds: Some(LEASE_DURATION_SECONDS),
                    renew_time: Some(now),
                    ..Default::default()
                }),
            };
            api.create(&PostParams::default(), &lease).await?;
        }
    }
    Ok(())
}

/// Every 10 s: reads the Node from the API server, computes the node's status, and
/// sends it when the API server's copy differs in anything but heartbeat times (the
/// node controller's `Unknown` after a partition, someone's patch) or 5 minutes passed,
/// as the kubelet's `tryUpdateNodeStatus` does. Node events follow each transition.
pub async fn status_loop(client: kube::Client, mgr: Arc<Manager>, cfg: Arc<ClusterConfig>, sync: Arc<PodSync>) {
    let api: Api<Node> = Api::all(client.clone());
    let mut recovery = sync.reachable.subscribe();
    let events = NodeEvents::new(client, &cfg);
    events.post("Normal", "Starting", "Starting wasmlet.");
    let mut reported: Option<NodeStatus> = None;
    let mut last_sent: Option<std::time::Instant> = None;
    let mut failures = 0u32;
    loop {
        recovery.borrow_and_update();
        let server = match bounded(api.get(&cfg.node_name)).await {
            Ok(n) => n.status.unwrap_or_default(),
            Err(e) => {
                failures += 1;
                log_failure("cannot read the node", &e, failures);
                back_off(backoff(failures), &mut recovery).await;
                continue;
            }
        };
        // the Wasm runtime is in-process: the agent running is the runtime ready
        let ready = Ok(());
        let mut now = status(&mgr, &cfg, pressure(&cfg), ready);
        carry_transitions(&mut now, &server);
        let due = meaningful(&now, &server) || last_sent.is_none_or(|t| t.elapsed() >= STATUS_REPORT);
        if due {
            let patch = json!({"status": now});
            if let Err(e) =
                bounded(api.patch_status(&cfg.node_name, &PatchParams::default(), &Patch::Merge(&patch))).await
            {
                failures += 1;
                log_failure("cannot update the node status", &e, failures);
                back_off(backoff(failures), &mut recovery).await;
                continue;
            }
            last_sent = Some(std::time::Instant::now());
        }
        if failures > 0 {
            tracing::info!("node status sent again after {failures} failures");
            sync.reachable.recovered();
            recovery.borrow_and_update();
        }
        failures = 0;
        for (reason, message) in transitions(reported.as_ref(), &now) {
            events.post("Normal", reason, &message);
        }
        reported = Some(now);
        tokio::time::sleep(STATUS_EVERY).await;
    }
}

/// The first failure of a run is a warning, then one line a minute at most (at the
/// 7 s back-off, every 8th), so an outage does not flood the log.
pub fn log_failure(what: &str, e: &dyn std::fmt::Display, failures: u32) {
    if failures == 1 || failures.is_multiple_of(8) {
        tracing::warn!(error = %e, failures, "{what}");
    } else {
        tracing::debug!(error = %e, failures, "{what}");
    }
}

/// The kubelet's node events for condition changes from `old` (none: just registered).
fn transitions(old: Option<&NodeStatus>, new: &NodeStatus) -> Vec<(&'static str, String)> {
    let get = |s: Option<&NodeStatus>, kind: &str| {
        s.and_then(|s| s.conditions.as_ref()).and_then(|c| c.iter().find(|c| c.type_ == kind)).map(|c| c.status.clone())
    };
    let mut out = Vec::new();
    for (kind, on_true, on_false) in [
        ("MemoryPressure", "NodeHasInsufficientMemory", "NodeHasSufficientMemory"),
        ("DiskPressure", "NodeHasDiskPressure", "NodeHasNoDiskPressure"),
        ("PIDPressure", "NodeHasInsufficientPID", "NodeHasSufficientPID"),
        ("Ready", "NodeReady", "NodeNotReady"),
    ] {
        let now = get(Some(new), kind);
        if now.is_some() && now != get(old, kind) {
            let reason = if now.as_deref() == Some("True") { on_true } else { on_false };
            let node = new.addresses.iter().flatten().find(|a| a.type_ == "Hostname").map(|a| a.address.as_str());
            out.push((reason, format!("Node {} status is now: {reason}", node.unwrap_or_default())));
        }
    }
    out
}

/// Events about the Node itself, with the kubelet's source and its convention that the
/// involved object's uid is the node's name. They are sent in order by a task of their
/// own, so a slow or lost API server never holds up the status loop; a failed create is
/// tried again as the kubelet's recorder does (12 tries, 10 s apart), and when more
/// than `QUEUE` wait, the newest are dropped.
struct NodeEvents {
    queue: tokio::sync::mpsc::Sender<k8s_openapi::api::core::v1::Event>,
    node: String,
}

impl NodeEvents {
    const QUEUE: usize = 64;
    const TRIES: u32 = 12;
    const RETRY: Duration = Duration::from_secs(10);

    fn new(client: kube::Client, cfg: &ClusterConfig) -> NodeEvents {
        let api: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client, "default");
        let (queue, mut events) = tokio::sync::mpsc::channel::<k8s_openapi::api::core::v1::Event>(Self::QUEUE);
        tokio::spawn(async move {
            while let Some(event) = events.recv().await {
                for attempt in 1..=Self::TRIES {
                    let error =
                        match tokio::time::timeout(REQUEST_TIMEOUT, api.create(&Default::default(), &event)).await {
                            Ok(Ok(_)) => break,
                            // made already by a try whose answer was lost
                            Ok(Err(kube::Error::Api(e))) if e.code == 409 => break,
                            Ok(Err(e)) => e.to_string(),
                            Err(_) => format!("no answer within {REQUEST_TIMEOUT:?}"),
                        };
                    tracing::debug!(%error, reason = ?event.reason, attempt, "cannot record the node event");
                    if attempt < Self::TRIES {
                        tokio::time::sleep(Self::RETRY).await;
                    }
                }
            }
        });
        NodeEvents { queue, node: cfg.node_name.clone() }
    }

    fn post(&self, kind: &str, reason: &str, message: &str) {
        let now = jiff::Timestamp::now();
        let name = format!("{}.{:x}", self.node, now.as_nanosecond());
        let event = k8s_openapi::api::core::v1::Event {
            metadata: ObjectMeta { name: Some(name), namespace: Some("default".into()), ..Default::default() },
            involved_object: k8s_openapi::api::core::v1::ObjectReference {
                kind: Some("Node".into()),
                name: Some(self.node.clone()),
                uid: Some(self.node.clone()),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            count: Some(1),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some("kubelet".into()),
                host: Some(self.node.clone()),
            }),
            reporting_component: Some("kubelet".into()),
            reporting_instance: Some(self.node.clone()),
            ..Default::default()
        };
        if self.queue.try_send(event).is_err() {
            tracing::debug!(reason, "node event dropped: too many wait to be sent");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taints_parse_as_the_kubelet_flag_takes_them() {
        let t = parse_taint("wasmlet.dev/agent=wasm:NoSchedule").unwrap();
        assert_eq!(
            (t.key.as_str(), t.value.as_deref(), t.effect.as_str()),
            ("wasmlet.dev/agent", Some("wasm"), "NoSchedule")
        );
        let t = parse_taint("edge:NoExecute").unwrap();
        assert_eq!((t.key.as_str(), t.value, t.effect.as_str()), ("edge", None, "NoExecute"));
        assert!(parse_taint("edge=x").unwrap_err().contains("want key[=value]:Effect"));
        assert!(parse_taint("edge=x:Sometimes").unwrap_err().contains("effect must be"));
    }

    #[tokio::test]
    async fn a_loop_that_gets_through_wakes_the_others_out_of_their_back_off() {
        let r = Reachability::default();
        let mut waiting = r.subscribe();
        waiting.borrow_and_update();
        let t = std::time::Instant::now();
        let sleeper = tokio::spawn(async move { back_off(Duration::from_secs(30), &mut waiting).await });
        tokio::time::sleep(Duration::from_millis(50)).await;
        r.recovered();
        sleeper.await.unwrap();
        assert!(t.elapsed() < Duration::from_secs(5), "woken, not 30 s: {:?}", t.elapsed());
        // a recovery between an attempt and its failure: no sleep at all
        let mut late = r.subscribe();
        late.borrow_and_update();
        r.recovered();
        let t = std::time::Instant::now();
        back_off(Duration::from_secs(30), &mut late).await;
        assert!(t.elapsed() < Duration::from_secs(1));
    }

    #[test]
    fn heartbeat_backoff_doubles_from_200ms_to_7s() {
        let d: Vec<u64> = (0..8).map(|a| backoff(a).as_millis() as u64).collect();
        assert_eq!(d, [200, 400, 800, 1600, 3200, 6400, 7000, 7000]);
    }

    #[test]
    fn only_meaningful_changes_resend_the_status() {
        let t = |s| Time(jiff::Timestamp::from_second(s).unwrap());
        let c = |status: &str, at| NodeCondition {
            type_: "Ready".into(),
            status: status.into(),
            last_heartbeat_time: Some(t(at)),
            last_transition_time: Some(t(at)),
            ..Default::default()
        };
        let a = NodeStatus { conditions: Some(vec![c("True", 1)]), ..Default::default() };
        let mut b = NodeStatus { conditions: Some(vec![c("True", 2)]), ..Default::default() };
        assert!(!meaningful(&a, &b));
        carry_transitions(&mut b, &a);
        assert_eq!(b.conditions.as_ref().unwrap()[0].last_transition_time, Some(t(1)));
        let mut f = NodeStatus { conditions: Some(vec![c("False", 3)]), ..Default::default() };
        assert!(meaningful(&a, &f));
        carry_transitions(&mut f, &a);
        assert_eq!(f.conditions.as_ref().unwrap()[0].last_transition_time, Some(t(3)));
    }

    #[test]
    fn the_api_servers_copy_is_what_the_status_is_compared_with() {
        let c = |kind: &str, status: &str| NodeCondition {
            type_: kind.into(),
            status: status.into(),
            ..Default::default()
        };
        let ours = NodeStatus { conditions: Some(vec![c("Ready", "True")]), ..Default::default() };
        // the node controller's Unknown after a partition, an admin's False: sent again
        let unknown = NodeStatus { conditions: Some(vec![c("Ready", "Unknown")]), ..Default::default() };
        assert!(meaningful(&ours, &unknown));
        assert!(meaningful(&ours, &NodeStatus::default()), "nothing there yet");
        // a condition another party owns, and fields the node does not set, are not ours
        let more = NodeStatus {
            conditions: Some(vec![c("NetworkUnavailable", "False"), c("Ready", "True")]),
            volumes_in_use: Some(vec!["v".into()]),
            ..Default::default()
        };
        assert!(!meaningful(&ours, &more));
        // quantities as the API server canonicalises them are the same values
        let q = |pairs: &[(&str, &str)]| Some(pairs.iter().map(|(k, v)| (k.to_string(), quantity(*v))).collect());
        let mine = NodeStatus { capacity: q(&[("cpu", "2000m"), ("memory", "25165824Ki")]), ..ours.clone() };
        let canonical = NodeStatus { capacity: q(&[("cpu", "2"), ("memory", "24Gi")]), ..ours.clone() };
        assert!(!meaningful(&mine, &canonical));
        let other = NodeStatus { capacity: q(&[("cpu", "2"), ("memory", "23Gi")]), ..ours };
        assert!(meaningful(&mine, &other));
    }

    #[test]
    fn node_events_follow_the_kubelets_reasons() {
        let c = |kind: &str, status: &str| NodeCondition {
            type_: kind.into(),
            status: status.into(),
            ..Default::default()
        };
        let with = |ready: &str| NodeStatus {
            conditions: Some(vec![c("MemoryPressure", "False"), c("Ready", ready)]),
            addresses: Some(vec![NodeAddress { type_: "Hostname".into(), address: "edge-1".into() }]),
            ..Default::default()
        };
        let first: Vec<_> = transitions(None, &with("True")).into_iter().map(|(r, _)| r).collect();
        assert_eq!(first, ["NodeHasSufficientMemory", "NodeReady"]);
        assert!(transitions(Some(&with("True")), &with("True")).is_empty());
        let down = transitions(Some(&with("True")), &with("False"));
        assert_eq!(down, [("NodeNotReady", "Node edge-1 status is now: NodeNotReady".to_string())]);
    }
}
