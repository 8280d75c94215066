//! The pods bound to this node: watched (`spec.nodeName=N`), run through the pod
//! manager with the ConfigMaps and Secrets they use, their status sent back, their
//! events recorded, and graceful deletion finished with the final delete.
//!
//! Status reporting is the kubelet's status manager in small: a change marks the pod
//! dirty; a reporter sends each dirty pod's status once (later changes in the same
//! moment ride along), through a token bucket and a bounded number of requests in
//! flight; what fails stays dirty and is sent again, and a resync every 10 s catches
//! anything that differs from what the API server was last told. Each batch is made
//! durable before it is sent, so a status the API server has seen survives a kill -9.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{ConfigMap, Event as KubeEvent, ObjectReference, Pod, Secret, ServiceAccount};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta, Time};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::watcher;
use serde_json::{Value, json};
use tokio::sync::{Notify, Semaphore};

use super::ClusterConfig;
use crate::pod::{Manager, PodRecord};
use crate::spec::Object;

/// How long the reporter waits for more changes before sending.
const BATCH: Duration = Duration::from_millis(10);
const RESYNC: Duration = Duration::from_secs(10);
/// How often referenced ConfigMaps and Secrets are read again (the kubelet's default
/// sync period is a minute).
const REFRESH: Duration = Duration::from_secs(30);
const IN_FLIGHT: usize = 32;

/// The component name events carry, as the kubelet's.
const SOURCE: &str = "kubelet";

pub struct PodSync {
    client: kube::Client,
    mgr: Arc<Manager>,
    cfg: Arc<ClusterConfig>,
    dirty: Mutex<BTreeSet<String>>,
    wake: Notify,
    /// The status last acknowledged by the API server, by pod key.
    sent: Mutex<HashMap<String, Value>>,
    /// What the API server last showed of each pod running here ([`summary`]), from the
    /// watch: compared with ours, so that a status changed by someone else (the node
    /// controller's NotReady during a partition) is put right.
    seen: Mutex<HashMap<String, Value>>,
    /// Pods whose deletion is under way (by uid).
    deleting: Mutex<HashSet<String>>,
    events: tokio::sync::mpsc::UnboundedSender<(String, crate::pod::Event)>,
    events_rx: Mutex<Option<tokio::sync::mpsc::UnboundedReceiver<(String, crate::pod::Event)>>>,
    limiter: Limiter,
    /// Events and the periodic re-reads of ConfigMaps and Secrets have their own budget:
    /// they must not hold up status updates.
    event_limiter: Limiter,
    /// Whether the watch is connected (for the kubelet API's healthz detail).
    pub connected: std::sync::atomic::AtomicBool,
    /// The API server answering again after failures, shared with the heartbeats: the
    /// watch stops backing off, or lists anew, when another loop gets through.
    pub reachable: super::node::Reachability,
    /// The resourceVersion of each pod status the API server acknowledged: a watch event
    /// older than it is our own past write, not someone else's change.
    acked: Mutex<HashMap<String, u64>>,
}

impl std::fmt::Debug for PodSync {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodSync").finish_non_exhaustive()
    }
}

impl crate::pod::Observer for PodSync {
    fn pod_changed(&self, key: &str) {
        self.dirty.lock().unwrap_or_else(|e| e.into_inner()).insert(key.to_string());
        self.wake.notify_one();
    }
    fn event(&self, uid: &str, event: &crate::pod::Event) {
        let _ = self.events.send((uid.to_string(), event.clone()));
    }
}

/// A token bucket: `qps` a second, up to `burst` at once.
#[derive(Debug)]
struct Limiter {
    qps: f64,
    burst: f64,
    state: Mutex<(f64, std::time::Instant)>,
}

impl Limiter {
    fn new(qps: u32, burst: u32) -> Limiter {
        let burst = burst.max(1) as f64;
        Limiter { qps: qps.max(1) as f64, burst, state: Mutex::new((burst, std::time::Instant::now())) }
    }
    async fn take(&self) {
        loop {
            let wait = {
                let mut s = self.state.lock().unwrap_or_else(|e| e.into_inner());
                let now = std::time::Instant::now();
                s.0 = (s.0 + now.duration_since(s.1).as_secs_f64() * self.qps).min(self.burst);
                s.1 = now;
                if s.0 >= 1.0 {
                    s.0 -= 1.0;
                    return;
                }
                Duration::from_secs_f64((1.0 - s.0) / self.qps)
            };
            tokio::time::sleep(wait).await;
        }
    }
}

/// The names of the ConfigMaps and Secrets a pod uses.
pub fn references(pod: &Pod) -> (BTreeSet<String>, BTreeSet<String>) {
    let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
    let Some(spec) = &pod.spec else { return (cms, secrets) };
    for v in spec.volumes.iter().flatten() {
        if let Some(c) = &v.config_map {
            cms.insert(c.name.clone());
        }
        if let Some(s) = v.secret.as_ref().and_then(|s| s.secret_name.clone()) {
            secrets.insert(s);
        }
        for s in v.projected.iter().flat_map(|p| p.sources.iter().flatten()) {
            if let Some(c) = &s.config_map {
                cms.insert(c.name.clone());
            }
            if let Some(c) = &s.secret {
                secrets.insert(c.name.clone());
            }
        }
    }
    for r in spec.image_pull_secrets.iter().flatten() {
        secrets.insert(r.name.clone());
    }
    for c in spec.containers.iter().chain(spec.init_containers.iter().flatten()) {
        for e in c.env.iter().flatten() {
            if let Some(r) = e.value_from.as_ref().and_then(|v| v.config_map_key_ref.as_ref()) {
                cms.insert(r.name.clone());
            }
            if let Some(r) = e.value_from.as_ref().and_then(|v| v.secret_key_ref.as_ref()) {
                secrets.insert(r.name.clone());
            }
        }
        for e in c.env_from.iter().flatten() {
            if let Some(r) = &e.config_map_ref {
                cms.insert(r.name.clone());
            }
            if let Some(r) = &e.secret_ref {
                secrets.insert(r.name.clone());
            }
        }
    }
    (cms, secrets)
}

/// When a stored service-account token is to be requested again.
const REFRESH_AFTER: &str = "wasmlet.dev/token-refresh-after";

/// The (audience, lifetime) of each service-account token a pod's volumes project.
pub fn token_sources(pod: &Pod) -> BTreeSet<(Option<String>, Option<i64>)> {
    let volumes = pod.spec.iter().flat_map(|s| s.volumes.iter().flatten());
    let sources = volumes.flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()));
    sources
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| (t.audience.clone(), t.expiration_seconds))
        .collect()
}

/// What of a pod status is compared with the API server's copy: the phase, each
/// condition's status and, per container, its state, readiness and restarts.
fn summary(status: &Value) -> Value {
    let conditions: BTreeMap<String, Value> = status["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|c| (c["type"].as_str().unwrap_or_default().to_string(), c["status"].clone()))
        .collect();
    let mut containers = BTreeMap::new();
    for list in ["initContainerStatuses", "containerStatuses"] {
        for c in status[list].as_array().into_iter().flatten() {
            let state = c["state"].as_object().and_then(|m| m.keys().next().cloned());
            containers.insert(
                c["name"].as_str().unwrap_or_default().to_string(),
                json!([state, c["ready"], c["restartCount"]]),
            );
        }
    }
    json!({"phase": status["phase"], "conditions": conditions, "containers": containers})
}

/// The pod watch's back-off after failures in a row: 800 ms doubling to 30 s with up to
/// 20 % jitter (client-go's reflector backs off the same way).
fn watch_backoff(failures: u32) -> Duration {
    let base = 800u64.saturating_mul(1 << failures.saturating_sub(1).min(6)).min(30_000);
    Duration::from_millis(base + fastrand::u64(..=base / 5))
}

fn clean_meta(m: &mut ObjectMeta) {
    m.managed_fields = None;
    m.resource_version = None;
}

impl PodSync {
    pub fn new(client: kube::Client, mgr: Arc<Manager>, cfg: Arc<ClusterConfig>) -> Arc<PodSync> {
        let (events, events_rx) = tokio::sync::mpsc::unbounded_channel();
        Arc::new(PodSync {
            client,
            mgr,
            limiter: Limiter::new(cfg.qps, cfg.burst),
            event_limiter: Limiter::new(cfg.qps, cfg.burst),
            cfg,
            dirty: Mutex::new(BTreeSet::new()),
            wake: Notify::new(),
            sent: Mutex::new(HashMap::new()),
            seen: Mutex::new(HashMap::new()),
            deleting: Mutex::new(HashSet::new()),
            events,
            events_rx: Mutex::new(Some(events_rx)),
            connected: std::sync::atomic::AtomicBool::new(false),
            reachable: super::node::Reachability::default(),
            acked: Mutex::new(HashMap::new()),
        })
    }

    /// Whether a stored pod came from the API server for this node.
    fn ours(&self, rec: &PodRecord) -> bool {
        rec.pod.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(self.cfg.node_name.as_str())
    }

    pub async fn run(self: Arc<Self>) {
        tokio::spawn(self.clone().report_loop());
        tokio::spawn(self.clone().event_loop());
        tokio::spawn(self.clone().refresh_loop());
        {
            // whatever was stored is reported again once the API server answers
            let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
            d.extend(self.mgr.list().unwrap_or_default().iter().filter(|r| self.ours(r)).map(|r| r.key()));
        }
        self.wake.notify_one();
        self.watch_loop().await;
    }

    async fn watch_loop(self: &Arc<Self>) {
        let api: Api<Pod> = Api::all(self.client.clone());
        let config = watcher::Config::default().fields(&format!("spec.nodeName={}", self.cfg.node_name));
        // no `default_backoff()`: kube-runtime resets it on the `Init` event that starts
        // every relist attempt, so a lost API server was retried every 0.8 s forever.
        // Only real progress (a completed list, a watch event) resets ours.
        let mut stream = watcher(api.clone(), config.clone()).boxed();
        let mut listed: HashSet<String> = HashSet::new();
        let mut failures = 0u32;
        let mut recovery = self.reachable.subscribe();
        loop {
            let first = tokio::select! {
                ev = stream.next() => match ev {
                    Some(ev) => ev,
                    None => return,
                },
                // the heartbeats answer again after failing: this watch may sit on a
                // connection the partition stalled, whose events would come only with
                // TCP's next retransmit; list and watch anew
                _ = recovery.changed() => {
                    recovery.borrow_and_update();
                    tracing::info!("the API server answers again; listing the node's pods anew");
                    stream = watcher(api.clone(), config.clone()).boxed();
                    continue;
                }
            };
            // take every event that is already here, to apply them in one batch
            let mut batch = vec![first];
            while let Some(Some(more)) = stream.next().now_or_never() {
                batch.push(more);
                if batch.len() >= 512 {
                    break;
                }
            }
            let mut apply = Vec::new();
            let mut failed = false;
            for ev in batch {
                match ev {
                    Ok(watcher::Event::Init) => listed.clear(),
                    Ok(watcher::Event::InitApply(p)) => {
                        listed.insert(p.metadata.uid.clone().unwrap_or_default());
                        apply.push(p);
                    }
                    Ok(watcher::Event::InitDone) => {
                        if failures > 0 {
                            tracing::info!("pod watch listed again after {failures} failures");
                            self.reachable.recovered();
                            recovery.borrow_and_update();
                        }
                        failures = 0;
                        self.connected.store(true, std::sync::atomic::Ordering::Relaxed);
                        self.flush(&mut apply).await;
                        self.forget_missing(&listed);
                        // the list holds the API server's view of every pod here: what
                        // differs from ours (a partition's NotReady) is sent again now
                        self.reconcile();
                    }
                    Ok(watcher::Event::Apply(p)) => {
                        failures = 0;
                        apply.push(p)
                    }
                    Ok(watcher::Event::Delete(p)) => {
                        failures = 0;
                        self.flush(&mut apply).await;
                        self.gone(p);
                    }
                    Err(e) => {
                        self.connected.store(false, std::sync::atomic::Ordering::Relaxed);
                        failures += 1;
                        failed = true;
                        super::node::log_failure("pod watch failed; retrying with back-off", &e, failures);
                    }
                }
            }
            self.flush(&mut apply).await;
            if failed {
                recovery.borrow_and_update();
                super::node::back_off(watch_backoff(failures), &mut recovery).await;
                recovery.borrow_and_update();
            }
        }
    }

    /// Starts, or keeps running, the given pods; pods marked for deletion are deleted.
    /// For pods already running here, the API server's status is kept to be compared
    /// with ours (see [`PodSync::reconcile`]).
    async fn flush(self: &Arc<Self>, pods: &mut Vec<Pod>) {
        let mut objects = Vec::new();
        let mut pending = Vec::new();
        for pod in pods.drain(..) {
            let key = crate::pod::key(
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default(),
            );
            let uid = pod.metadata.uid.clone().unwrap_or_default();
            if pod.metadata.deletion_timestamp.is_some() {
                self.delete(pod);
                continue;
            }
            let stored = self.mgr.get(&key).ok().flatten();
            if stored.as_ref().is_some_and(|r| r.uid == uid) {
                let theirs = summary(&serde_json::to_value(&pod.status).unwrap_or_default());
                // newer than our last acknowledged write, and not what we wrote: someone
                // else changed it (the node controller after a partition): send ours now
                let rv = pod.metadata.resource_version.as_deref().and_then(|v| v.parse::<u64>().ok());
                let acked = self.acked.lock().unwrap_or_else(|e| e.into_inner()).get(&key).copied();
                if rv.is_some_and(|rv| acked.is_none_or(|a| rv > a)) && self.drifted(&key, &theirs) {
                    self.resend(vec![key.clone()]);
                }
                self.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key, theirs);
                continue;
            }
            if pod.status.as_ref().and_then(|s| s.phase.as_deref()).is_some_and(|p| p == "Succeeded" || p == "Failed") {
                // it ended before (on this node, or refused): nothing to run again
                continue;
            }
            let value = serde_json::to_value(&pod).expect("pod serialises");
            match crate::spec::api_pod(value) {
                Ok(p) => {
                    objects.extend(self.dependencies(&p).await);
                    pending.push(Object::Pod(Box::new(p)));
                }
                Err(e) => self.refuse(&pod, &e.to_string()).await,
            }
        }
        if pending.is_empty() {
            return;
        }
        objects.extend(pending);
        if let Err(e) = self.mgr.apply(objects).await {
            tracing::warn!(error = %e, "cannot start the node's pods");
        }
    }

    /// The ConfigMaps and Secrets a pod uses, read with the node's identity; the stored
    /// copy stands when the API server cannot be reached.
    async fn dependencies(&self, pod: &Pod) -> Vec<Object> {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let (cms, secrets) = references(pod);
        let named = |names: BTreeSet<String>| names.into_iter().map(|n| (ns.clone(), n)).collect();
        let mut out = self.read_objects(named(cms), named(secrets), None).await;
        out.extend(self.tokens(pod).await);
        out
    }

    /// ConfigMaps and Secrets by (namespace, name), those that exist and can be read now,
    /// each read waiting its turn in `limiter` when one is given.
    async fn read_objects(
        &self,
        cms: BTreeSet<(String, String)>,
        secrets: BTreeSet<(String, String)>,
        limiter: Option<&Limiter>,
    ) -> Vec<Object> {
        let mut out = Vec::new();
        for (ns, name) in cms {
            if let Some(l) = limiter {
                l.take().await;
            }
            if let Some(mut c) = self.fetch::<ConfigMap>(&ns, &name).await {
                clean_meta(&mut c.metadata);
                out.push(Object::ConfigMap(c));
            }
        }
        for (ns, name) in secrets {
            if let Some(l) = limiter {
                l.take().await;
            }
            if let Some(mut s) = self.fetch::<Secret>(&ns, &name).await {
                clean_meta(&mut s.metadata);
                out.push(Object::Secret(s));
            }
        }
        out
    }

    /// The service-account tokens a pod's projected volumes ask for, each requested
    /// (TokenRequest, bound to the pod) when there is none yet or 80 % of its lifetime has
    /// passed, as the kubelet's token manager does. Kept as node-local Secrets.
    async fn tokens(&self, pod: &Pod) -> Vec<Object> {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let spec = pod.spec.clone().unwrap_or_default();
        let account = spec.service_account_name.clone().unwrap_or_else(|| "default".into());
        let mut out = Vec::new();
        for (audience, expiration) in token_sources(pod) {
            let name = crate::pod::volume::token_secret_name(&uid, audience.as_deref(), expiration);
            let stored = crate::pod::env::Objects::secret(&**self.mgr, &ns, &name);
            let due = stored
                .as_ref()
                .and_then(|s| s.metadata.annotations.as_ref()?.get(REFRESH_AFTER).cloned())
                .and_then(|t| chrono::DateTime::parse_from_rfc3339(&t).ok())
                .is_none_or(|t| t <= chrono::Utc::now());
            if !due {
                continue;
            }
            let request = TokenRequest {
                spec: Some(TokenRequestSpec {
                    audiences: audience.clone().map(|a| vec![a]),
                    expiration_seconds: expiration.or(Some(3600)),
                    bound_object_ref: Some(BoundObjectReference {
                        api_version: Some("v1".into()),
                        kind: Some("Pod".into()),
                        name: pod.metadata.name.clone(),
                        uid: Some(uid.clone()),
                    }),
                    ..Default::default()
                }),
                ..Default::default()
            };
            let api: Api<ServiceAccount> = Api::namespaced(self.client.clone(), &ns);
            let issued = match api.create_token_request(&account, &PostParams::default(), &request).await {
                Ok(r) => r.status,
                Err(e) => {
                    tracing::warn!(account = %account, error = %e, "cannot get a service-account token; keeping the stored one");
                    continue;
                }
            };
            let Some(token) = issued.and_then(|s| s.token) else { continue };
            let ttl = expiration.unwrap_or(3600);
            let refresh = chrono::Utc::now() + chrono::Duration::seconds(ttl * 8 / 10);
            let secret = Secret {
                metadata: ObjectMeta {
                    name: Some(name),
                    namespace: Some(ns.clone()),
                    annotations: Some(
                        [(REFRESH_AFTER.to_string(), refresh.to_rfc3339_opts(chrono::SecondsFormat::Secs, true))]
                            .into(),
                    ),
                    ..Default::default()
                },
                data: Some([("token".to_string(), k8s_openapi::ByteString(token.into_bytes()))].into()),
                type_: Some("wasmlet.dev/service-account-token".into()),
                ..Default::default()
            };
            out.push(Object::Secret(secret));
        }
        out
    }

    /// One object by name; `None` when it does not exist or cannot be read now (then the
    /// stored copy stands).
    async fn fetch<K>(&self, ns: &str, name: &str) -> Option<K>
    where
        K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>
            + Clone
            + serde::de::DeserializeOwned
            + std::fmt::Debug,
    {
        let api: Api<K> = Api::namespaced(self.client.clone(), ns);
        match api.get_opt(name).await {
            Ok(found) => found,
            Err(e) => {
                tracing::warn!(kind = %K::kind(&()), %name, error = %e, "cannot read an object; using the stored copy");
                None
            }
        }
    }

    /// A pod this node cannot run: Failed, with the reason, as the kubelet's admission
    /// refusals are.
    async fn refuse(&self, pod: &Pod, why: &str) {
        let (ns, name) =
            (pod.metadata.namespace.as_deref().unwrap_or("default"), pod.metadata.name.as_deref().unwrap_or(""));
        tracing::warn!(pod = %format!("{ns}/{name}"), reason = %why, "refusing a pod");
        let message = format!("Pod was rejected: {why}");
        let status = json!({
            "metadata": {"uid": pod.metadata.uid},
            "status": {"phase": "Failed", "reason": "UnsupportedPodSpec", "message": message},
        });
        let api: Api<Pod> = Api::namespaced(self.client.clone(), ns);
        self.limiter.take().await;
        if let Err(e) = api.patch_status(name, &PatchParams::default(), &Patch::Merge(&status)).await {
            tracing::warn!(error = %e, "cannot report a refused pod");
        }
        self.post_event(pod, "Warning", "UnsupportedPodSpec", &message, 1).await;
    }

    /// Graceful deletion: stop the containers within the grace period the API server set,
    /// then make the final delete (grace 0, on this pod's uid).
    fn delete(self: &Arc<Self>, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if !self.deleting.lock().unwrap_or_else(|e| e.into_inner()).insert(uid.clone()) {
            return;
        }
        let this = self.clone();
        tokio::spawn(async move {
            let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
            let name = pod.metadata.name.clone().unwrap_or_default();
            let key = crate::pod::key(&ns, &name);
            let grace = pod.metadata.deletion_grace_period_seconds;
            if this.mgr.get(&key).ok().flatten().is_some_and(|r| r.uid == uid) {
                match this.mgr.delete_with_grace(&key, grace).await {
                    Ok(()) | Err(crate::pod::Error::NotFound(_)) => {}
                    Err(e) => tracing::warn!(pod = %key, error = %e, "cannot stop a pod being deleted"),
                }
                this.forget_unused();
            }
            let api: Api<Pod> = Api::namespaced(this.client.clone(), &ns);
            let params = DeleteParams {
                grace_period_seconds: Some(0),
                preconditions: Some(Preconditions { uid: Some(uid.clone()), resource_version: None }),
                ..Default::default()
            };
            let mut attempt = 0;
            loop {
                this.limiter.take().await;
                match api.delete(&name, &params).await {
                    Ok(_) => break,
                    // gone already, or another pod of that name now
                    Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => break,
                    Err(e) => {
                        attempt += 1;
                        tracing::warn!(pod = %key, error = %e, attempt, "cannot make the final delete; retrying");
                        tokio::time::sleep(super::node::backoff(attempt)).await;
                    }
                }
            }
            this.forget(&key);
            this.deleting.lock().unwrap_or_else(|e| e.into_inner()).remove(&uid);
        });
    }

    /// Drops what is kept about a pod's reported status once it has left the node.
    fn forget(&self, key: &str) {
        self.sent.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        self.seen.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
        self.acked.lock().unwrap_or_else(|e| e.into_inner()).remove(key);
    }

    /// The pod is gone from the API server (a forced delete): stop it here too.
    fn gone(self: &Arc<Self>, pod: Pod) {
        let key = crate::pod::key(
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or_default(),
        );
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        if self.mgr.get(&key).ok().flatten().is_some_and(|r| r.uid == uid) {
            self.stop_locally(key);
        }
    }

    fn stop_locally(self: &Arc<Self>, key: String) {
        let this = self.clone();
        tokio::spawn(async move {
            // the kubelet's minimum for a forced deletion
            match this.mgr.delete_with_grace(&key, Some(1)).await {
                Ok(()) | Err(crate::pod::Error::NotFound(_)) => {}
                Err(e) => tracing::warn!(pod = %key, error = %e, "cannot stop a deleted pod"),
            }
            this.forget(&key);
            this.forget_unused();
        });
    }

    /// After a fresh list: pods this node runs that the API server no longer has (deleted
    /// while it was unreachable) are stopped.
    fn forget_missing(self: &Arc<Self>, listed: &HashSet<String>) {
        for rec in self.mgr.list().unwrap_or_default() {
            if self.ours(&rec) && !listed.contains(&rec.uid) && !rec.deleting {
                tracing::info!(pod = %rec.key(), "the pod is gone from the API server; stopping it");
                self.stop_locally(rec.key());
            }
        }
    }

    /// ConfigMaps and Secrets that no stored pod uses any more are removed from the node
    /// (a Secret is kept only while a pod here uses it).
    fn forget_unused(&self) {
        let pods = self.mgr.list().unwrap_or_default();
        let mut used: HashSet<String> = HashSet::new();
        for r in &pods {
            let (cms, secrets) = references(&r.pod);
            used.extend(cms.into_iter().map(|n| format!("ConfigMap/{}/{n}", r.namespace())));
            used.extend(secrets.into_iter().map(|n| format!("Secret/{}/{n}", r.namespace())));
            for (audience, expiration) in token_sources(&r.pod) {
                let name = crate::pod::volume::token_secret_name(&r.uid, audience.as_deref(), expiration);
                used.insert(format!("Secret/{}/{name}", r.namespace()));
            }
        }
        for kind in ["ConfigMap", "Secret"] {
            for o in self.mgr.objects(kind).unwrap_or_default() {
                let (ns, name) = (
                    o["metadata"]["namespace"].as_str().unwrap_or("default"),
                    o["metadata"]["name"].as_str().unwrap_or(""),
                );
                if !used.contains(&format!("{kind}/{ns}/{name}")) {
                    let (mgr, kind, ns, name) = (self.mgr.clone(), kind, ns.to_string(), name.to_string());
                    tokio::spawn(async move {
                        let _ = mgr.delete_object(kind, &ns, &name).await;
                    });
                }
            }
        }
    }

    /// ConfigMaps and Secrets of running pods are read again now and then, so that
    /// changes reach their volumes.
    async fn refresh_loop(self: Arc<Self>) {
        loop {
            tokio::time::sleep(REFRESH).await;
            // each object once, however many pods use it; each read waits its turn in the
            // bucket, so a thousand pods do not make a burst of reads
            let (mut cms, mut secrets) = (BTreeSet::new(), BTreeSet::new());
            let mut objects = Vec::new();
            for rec in self.mgr.list().unwrap_or_default().iter().filter(|r| self.ours(r) && !r.deleting) {
                let (c, s) = references(&rec.pod);
                cms.extend(c.into_iter().map(|n| (rec.namespace().to_string(), n)));
                secrets.extend(s.into_iter().map(|n| (rec.namespace().to_string(), n)));
                objects.extend(self.tokens(&rec.pod).await);
            }
            objects.extend(self.read_objects(cms, secrets, Some(&self.event_limiter)).await);
            if !objects.is_empty()
                && let Err(e) = self.mgr.apply(objects).await
            {
                tracing::warn!(error = %e, "cannot update ConfigMaps and Secrets");
            }
        }
    }

    /// Whether the API server's copy (`theirs`, a [`summary`]) differs from what the node
    /// last had acknowledged. A status the node has not sent yet is dirty anyway.
    fn drifted(&self, key: &str, theirs: &Value) -> bool {
        let sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        sent.get(key).is_some_and(|ours| summary(ours) != *theirs)
    }

    /// Marks for sending every pod whose status in the API server differs from ours,
    /// as the kubelet's status manager reconciles against the API server's copy.
    fn reconcile(&self) {
        let drifted: Vec<String> = {
            let seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
            seen.iter().filter(|(key, theirs)| self.drifted(key, theirs)).map(|(key, _)| key.clone()).collect()
        };
        if !drifted.is_empty() {
            tracing::info!(
                pods = drifted.len(),
                "pod statuses in the API server differ from the node's; sending them again"
            );
            self.resend(drifted);
        }
    }

    /// Sends these pods' statuses again, whatever was sent before.
    fn resend(&self, keys: Vec<String>) {
        let mut sent = self.sent.lock().unwrap_or_else(|e| e.into_inner());
        let mut dirty = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
        for key in keys {
            sent.remove(&key);
            dirty.insert(key);
        }
        drop((sent, dirty));
        self.wake.notify_one();
    }

    /// What the API server should show as the pod's status.
    fn status_of(&self, rec: &PodRecord) -> Value {
        let mut status = crate::pod::view::pod(rec).status.unwrap_or_default();
        status.host_ip = Some(self.cfg.node_ip.clone());
        status.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP { ip: self.cfg.node_ip.clone() }]);
        serde_json::to_value(status).expect("a status serialises")
    }

    async fn report_loop(self: Arc<Self>) {
        let slots = Arc::new(Semaphore::new(IN_FLIGHT));
        let mut resync = tokio::time::interval(RESYNC);
        loop {
            tokio::select! {
                _ = self.wake.notified() => tokio::time::sleep(BATCH).await,
                _ = resync.tick() => {
                    self.reconcile();
                    let mut d = self.dirty.lock().unwrap_or_else(|e| e.into_inner());
                    d.extend(self.mgr.list().unwrap_or_default().iter().filter(|r| self.ours(r)).map(|r| r.key()));
                }
            }
            let keys = std::mem::take(&mut *self.dirty.lock().unwrap_or_else(|e| e.into_inner()));
            // what the API server is told must survive a kill -9: a first Wasm start is
            // saved without a flush of its own, so the batch is made durable first
            // (one flush for every status in it)
            if !keys.is_empty()
                && let Err(e) = self.mgr.flush().await
            {
                tracing::warn!(error = %e, "cannot make the pod states durable; their statuses wait");
                self.dirty.lock().unwrap_or_else(|e| e.into_inner()).extend(keys);
                tokio::time::sleep(RESYNC).await;
                continue;
            }
            for key in keys {
                let Some(rec) = self.mgr.get(&key).ok().flatten() else { continue };
                if !self.ours(&rec) {
                    continue;
                }
                let status = self.status_of(&rec);
                if self.sent.lock().unwrap_or_else(|e| e.into_inner()).get(&key) == Some(&status) {
                    continue;
                }
                self.limiter.take().await;
                let permit = slots.clone().acquire_owned().await.expect("semaphore open");
                let this = self.clone();
                tokio::spawn(async move {
                    let _permit = permit;
                    let api: Api<Pod> = Api::namespaced(this.client.clone(), rec.namespace());
                    let patch = json!({"metadata": {"uid": rec.uid}, "status": status});
                    let (params, merge) = (PatchParams::default(), Patch::Merge(&patch));
                    let sent = api.patch_status(rec.name(), &params, &merge);
                    match tokio::time::timeout(super::node::REQUEST_TIMEOUT, sent).await.unwrap_or_else(|_| {
                        Err(kube::Error::Service(format!("no answer within {:?}", super::node::REQUEST_TIMEOUT).into()))
                    }) {
                        Ok(p) => {
                            if let Some(rv) = p.metadata.resource_version.as_deref().and_then(|v| v.parse().ok()) {
                                this.acked.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), rv);
                            }
                            this.seen.lock().unwrap_or_else(|e| e.into_inner()).insert(key.clone(), summary(&status));
                            this.sent.lock().unwrap_or_else(|e| e.into_inner()).insert(key, status);
                        }
                        // the pod is gone from the API server; the watch says so too
                        Err(kube::Error::Api(e)) if e.code == 404 => {}
                        Err(e) => {
                            tracing::debug!(pod = %key, error = %e, "cannot send the pod status; will retry");
                        }
                    }
                });
            }
        }
    }

    /// Pod events become Kubernetes Events (the upstream reasons, source `kubelet`).
    async fn event_loop(self: Arc<Self>) {
        let Some(mut rx) = self.events_rx.lock().unwrap_or_else(|e| e.into_inner()).take() else { return };
        while let Some((uid, e)) = rx.recv().await {
            if e.object.is_some() {
                continue;
            }
            let Some(rec) = self.mgr.get(&e.pod).ok().flatten() else { continue };
            if !self.ours(&rec) || rec.uid != uid {
                continue;
            }
            self.post_event(&rec.pod, &e.kind, &e.reason, &e.message, e.count).await;
        }
    }

    async fn post_event(&self, pod: &Pod, kind: &str, reason: &str, message: &str, count: u32) {
        let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
        let pod_name = pod.metadata.name.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        // one Event object per pod, reason and message; a repeat counts it up
        let digest = crc32fast::hash(format!("{uid}/{reason}/{message}").as_bytes());
        let name = format!("{pod_name}.{digest:08x}");
        let now = jiff::Timestamp::now();
        let api: Api<KubeEvent> = Api::namespaced(self.client.clone(), &ns);
        let event = KubeEvent {
            metadata: ObjectMeta { name: Some(name.clone()), namespace: Some(ns.clone()), ..Default::default() },
            involved_object: ObjectReference {
                api_version: Some("v1".into()),
                kind: Some("Pod".into()),
                name: Some(pod_name),
                namespace: Some(ns),
                uid: Some(uid),
                ..Default::default()
            },
            reason: Some(reason.into()),
            message: Some(message.into()),
            type_: Some(kind.into()),
            count: Some(count as i32),
            first_timestamp: Some(Time(now)),
            last_timestamp: Some(Time(now)),
            event_time: Some(MicroTime(now)),
            reporting_component: Some(SOURCE.into()),
            reporting_instance: Some(self.cfg.node_name.clone()),
            action: Some(reason.into()),
            source: Some(k8s_openapi::api::core::v1::EventSource {
                component: Some(SOURCE.into()),
                host: Some(self.cfg.node_name.clone()),
            }),
            ..Default::default()
        };
        self.event_limiter.take().await;
        let count_up = |old: i32| json!({"count": old.max(count as i32), "lastTimestamp": Time(now)});
        let result = if count > 1 {
            match api.patch(&name, &PatchParams::default(), &Patch::Merge(&count_up(count as i32))).await {
                // the API server does not have it: its first report was lost while the
                // API server was away, or the event expired (the API server's event TTL)
                Err(kube::Error::Api(e)) if e.code == 404 => {
                    api.create(&PostParams::default(), &event).await.map(|_| ())
                }
                r => r.map(|_| ()),
            }
        } else {
            match api.create(&PostParams::default(), &event).await {
                // the same event was recorded before (by this node before a restart):
                // it happened again, so count it up
                Err(kube::Error::Api(e)) if e.code == 409 => match api.get(&name).await {
                    Ok(old) => {
                        let patch = count_up(old.count.unwrap_or(1) + 1);
                        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)).await.map(|_| ())
                    }
                    Err(e) => Err(e),
                },
                r => r.map(|_| ()),
            }
        };
        if let Err(e) = result {
            tracing::debug!(error = %e, "cannot record an event");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_changed_by_the_node_controller_differs_from_ours() {
        let ours = json!({
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "a"}],
            "containerStatuses": [{"name": "app", "ready": true, "restartCount": 0, "state": {"running": {}}}],
        });
        // the API server's copy carries fields the node does not send, and other times
        let mut same = ours.clone();
        same["qosClass"] = json!("BestEffort");
        same["conditions"][0]["lastTransitionTime"] = json!("b");
        assert_eq!(summary(&ours), summary(&same));
        // the node controller's MarkPodsNotReady while the node was unreachable
        let mut marked = ours.clone();
        marked["conditions"][0]["status"] = json!("False");
        assert_ne!(summary(&ours), summary(&marked));
        let mut restarted = ours.clone();
        restarted["containerStatuses"][0]["restartCount"] = json!(1);
        assert_ne!(summary(&ours), summary(&restarted));
    }

    #[test]
    fn the_watch_backs_off_from_800ms_to_30s() {
        let base: Vec<u64> = (1..10).map(|f| watch_backoff(f).as_millis() as u64).collect();
        for (got, want) in base.iter().zip([800, 1600, 3200, 6400, 12800, 25600, 30000, 30000, 30000]) {
            assert!((want..=want + want / 5).contains(got), "{base:?}");
        }
    }
}
