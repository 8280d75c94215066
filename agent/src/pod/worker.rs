//! One task per pod: plan, act, wait for an exit, a probe result, a timer or a
//! deletion, repeat.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;
use tracing::Instrument;

use super::probe::{self, Outcome};
use super::state::{self, Action, Event, PullPolicy, Role, Terminated};
use super::{Core, Msg, PodRecord, env, volume};
use wasmlet_runtime::{
    Artifact, Capabilities, ContainerConfig, ContainerState, Mount, PortMapping, RuntimeKind, SandboxConfig, Seccomp,
};

use crate::time::now_ms;

/// Probe tasks of the running instances, by container index.
type Probes = HashMap<usize, AbortHandle>;

/// The pod's worker: lives as long as the pod, so what it holds while idle is held by
/// every pod. The paths taken now and then (pull, start, exit, stop) are boxed while they
/// run rather than inlined into this future, which would make every idle pod carry the
/// largest of them (20 KiB).
pub(super) async fn run(
    mgr: Arc<Core>,
    mut rec: Box<PodRecord>,
    tx: mpsc::UnboundedSender<Msg>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let span =
        tracing::info_span!("pod_sync", pod.namespace = rec.namespace(), pod.name = rec.name(), pod.uid = %rec.uid);
    async move {
        // (the start's trace: from acceptance to the worker's first poll)
        tracing::debug!(
            queued_us = queued(&mgr, &rec.uid, std::time::Instant::now()).as_micros() as u64,
            "worker runs"
        );
        if rec.deleting {
            Box::pin(stop_and_teardown(&mgr, &mut rec)).await;
            return;
        }
        let mut probes = Probes::new();
        rec.runtimes.resize(rec.plan.containers.len(), None);
        // Linux containers adopted after an agent restart: wait on them and probe them again
        for i in 0..rec.status.containers.len() {
            let c = &rec.status.containers[i];
            if rec.linux_running(i) {
                let instance = c.instances;
                watch(&mgr, &rec, i, instance, &tx);
                start_probes(&mgr, &rec, i, instance, &tx, &mut probes);
            }
        }
        let mut stopping = false;
        loop {
            let actions = {
                let images = &mgr.images;
                let plan = rec.plan.clone();
                let present = |i: usize| {
                    plan.containers[i].image.parse().ok().and_then(|r| images.get(&r).ok().flatten()).is_some()
                };
                state::plan(&plan, &mut rec.status, now_ms(), present)
            };
            rec.status.phase = state::phase(&rec.plan, &rec.status).max_sticky(rec.status.phase);
            let mut wake: Option<u64> = None;
            if let Some(deadline) = deadline(&rec)
                && !rec.status.phase.is_terminal()
            {
                if now_ms() >= deadline {
                    let message = "Pod was active on the node longer than the specified deadline";
                    mgr.event(&rec, "Normal", "DeadlineExceeded", message);
                    apply(&mut rec, Event::Fail { reason: "DeadlineExceeded".into(), message: message.into() });
                    save(&mgr, &rec);
                    continue;
                }
                wake = Some(deadline);
            }
            save(&mgr, &rec);
            let finishing = rec.status.phase.is_terminal() || state::apps_done(&rec.plan, &rec.status);
            if finishing && !stopping && running(&rec).next().is_some() {
                // what still runs of a finished pod (sidecars once the apps are done, a
                // deadline's victims) stops; the phase is decided once it has
                stopping = true;
                let rec2 = rec.clone();
                let mgr2 = mgr.clone();
                tokio::spawn(async move { stop_all(&mgr2, &rec2, None).await });
            }
            let mut acted = false;
            for action in actions {
                match action {
                    Action::Pull(i) => {
                        Box::pin(pull(&mgr, &mut rec, i)).await;
                        acted = true;
                    }
                    Action::Start(i) => {
                        Box::pin(start(&mgr, &mut rec, i, &tx, &mut probes)).await;
                        acted = true;
                    }
                    Action::WakeAt(t) => wake = Some(wake.map_or(t, |w: u64| w.min(t))),
                }
            }
            if acted {
                continue;
            }
            let sleep = wake.map(|t| Duration::from_millis(t.saturating_sub(now_ms())));
            let msg = match sleep {
                Some(d) => match tokio::time::timeout(d, rx.recv()).await {
                    Ok(m) => m,
                    Err(_) => continue,
                },
                None => rx.recv().await,
            };
            match msg {
                Some(Msg::Exited { container, instance, state }) => {
                    if rec.status.containers.get(container).is_some_and(|c| c.instances == instance)
                        && let Some(p) = probes.remove(&container)
                    {
                        p.abort();
                    }
                    Box::pin(exited(&mgr, &mut rec, container, instance, *state)).await
                }
                Some(Msg::Probe { container, instance, outcome }) => {
                    probed(&mgr, &mut rec, container, instance, *outcome);
                }
                Some(Msg::ConfigChanged) => apply(&mut rec, Event::ConfigChanged),
                Some(Msg::Resave) => {
                    // the reopened database may lack what was written last
                    rec.saved.forget();
                    save(&mgr, &rec)
                }
                Some(Msg::Delete { done, grace }) => {
                    rec.deleting = true;
                    for (_, p) in probes.drain() {
                        p.abort();
                    }
                    if let (Some(g), Some(spec)) = (grace, rec.pod.spec.as_mut()) {
                        spec.termination_grace_period_seconds = Some(g.max(0));
                    }
                    Box::pin(stop_and_teardown(&mgr, &mut rec)).await;
                    let _ = done.send(());
                    return;
                }
                None => return,
            }
        }
    }
    .instrument(span)
    .await
}

trait Sticky {
    fn max_sticky(self, previous: Self) -> Self;
}

impl Sticky for state::Phase {
    /// Once terminal, a phase never changes.
    fn max_sticky(self, previous: Self) -> Self {
        if previous.is_terminal() { previous } else { self }
    }
}

/// When `activeDeadlineSeconds` runs out, counted from the pod's acceptance.
fn deadline(rec: &PodRecord) -> Option<u64> {
    let secs = rec.pod.spec.as_ref()?.active_deadline_seconds?;
    Some(rec.created_at + secs.max(0) as u64 * 1000)
}

fn running(rec: &PodRecord) -> impl Iterator<Item = usize> + '_ {
    rec.status
        .containers
        .iter()
        .enumerate()
        .filter(|(_, c)| matches!(c.state, state::State::Running { .. }))
        .map(|(i, _)| i)
}

fn save(mgr: &Core, rec: &PodRecord) {
    if let Err(e) = mgr.save(rec) {
        tracing::error!(error = %e, "cannot save pod state");
    }
}

/// Saves the record and makes it durable (flushed to disk).
async fn persist(mgr: &Core, rec: &PodRecord) -> Result<(), String> {
    mgr.save(rec).map_err(|e| e.to_string())?;
    mgr.store.flush().await.map_err(|e| format!("the pod's state could not be made durable: {e}"))
}

fn apply(rec: &mut PodRecord, event: Event) {
    let plan = rec.plan.clone();
    rec.status.apply(&plan, event);
}

async fn pull(mgr: &Core, rec: &mut PodRecord, i: usize) {
    let spec = rec.plan.containers[i].clone();
    let reference: registry_client::Reference = match spec.image.parse() {
        Ok(r) => r,
        Err(e) => {
            apply(rec, Event::PullFailed { container: i, message: e.to_string(), at: now_ms() });
            return;
        }
    };
    let stored = mgr.images.get(&reference).ok().flatten();
    if let (Some(img), true) = (&stored, spec.pull_policy != PullPolicy::Always) {
        mgr.event(rec, "Normal", "Pulled", &format!("Container image \"{}\" already present on machine", spec.image));
        apply(rec, Event::Pulled { container: i, image_id: img.image_id() });
        tracing::debug!(
            queued_us = queued(mgr, &rec.uid, std::time::Instant::now()).as_micros() as u64,
            "image present"
        );
        return;
    }
    if spec.pull_policy == PullPolicy::Never {
        apply(rec, Event::NeverPull { container: i });
        mgr.event(
            rec,
            "Warning",
            "ErrImageNeverPull",
            &format!("Container image \"{}\" is not present with pull policy of Never", spec.image),
        );
        return;
    }
    mgr.event(rec, "Normal", "Pulling", &format!("Pulling image \"{}\"", spec.image));
    let started = std::time::Instant::now();
    let (credentials, missing) = pull_credentials(mgr, rec, &reference);
    if !missing.is_empty() {
        let message = format!(
            "Unable to retrieve some image pull secrets ({}); attempting to pull the image may not succeed.",
            missing.join(", ")
        );
        mgr.event(rec, "Warning", "FailedToRetrieveImagePullSecret", &message);
    }
    // each matching credential in turn, the most specific first (as the kubelet
    // tries them); with none, the node's own credentials for that registry
    let mut result = None;
    for credential in credentials.iter().map(Some).chain(credentials.is_empty().then_some(None)) {
        let opts = registry_client::PullOptions { credential: credential.cloned(), ..Default::default() };
        let r = mgr.images.pull(&reference, opts).await;
        let unauthorized =
            matches!(&r, Err(crate::image::Error::Registry(registry_client::Error::Unauthorized { .. })));
        result = Some(r);
        if !unauthorized {
            break;
        }
    }
    match result.expect("at least one attempt") {
        Ok(img) => {
            let msg =
                format!("Successfully pulled image \"{}\" in {:.3}s", spec.image, started.elapsed().as_secs_f64());
            mgr.event(rec, "Normal", "Pulled", &msg);
            apply(rec, Event::Pulled { container: i, image_id: img.image_id() });
        }
        Err(e) => {
            mgr.event(rec, "Warning", "Failed", &format!("Failed to pull image \"{}\": {e}", spec.image));
            mgr.event(rec, "Warning", "Failed", "Error: ErrImagePull");
            apply(rec, Event::PullFailed { container: i, message: e.to_string(), at: now_ms() });
        }
    }
}

/// The credentials of the pod's imagePullSecrets whose registry key matches
/// `reference`, most specific first, and the names of secrets that are missing or
/// unreadable. A credential never goes to a registry its key does not name.
fn pull_credentials(
    mgr: &Core,
    rec: &PodRecord,
    reference: &registry_client::Reference,
) -> (Vec<registry_client::Credential>, Vec<String>) {
    use env::Objects as _;
    let mut found: Vec<(usize, registry_client::Credential)> = Vec::new();
    let mut missing = Vec::new();
    let names = rec.pod.spec.iter().flat_map(|s| s.image_pull_secrets.iter().flatten()).map(|r| r.name.clone());
    for name in names {
        let Some(secret) = mgr.secret(rec.namespace(), &name) else {
            missing.push(name);
            continue;
        };
        let key = match secret.type_.as_deref() {
            Some("kubernetes.io/dockerconfigjson") => ".dockerconfigjson",
            Some("kubernetes.io/dockercfg") => ".dockercfg",
            _ => {
                tracing::warn!(secret = %name, "an imagePullSecret must be of type kubernetes.io/dockerconfigjson or kubernetes.io/dockercfg");
                missing.push(name);
                continue;
            }
        };
        let data = secret.data.as_ref().and_then(|d| d.get(key));
        match data.map(|d| registry_client::pull_secret_entries(&d.0)) {
            Some(Ok(entries)) => {
                for (registry, credential) in entries {
                    if let Some(rank) = registry_client::key_matches(&registry, reference) {
                        found.push((rank, credential));
                    }
                }
            }
            Some(Err(e)) => {
                // the reason only: never the secret's content
                tracing::warn!(secret = %name, reason = %e, "unreadable imagePullSecret");
                missing.push(name);
            }
            None => missing.push(name),
        }
    }
    found.sort_by_key(|(rank, _)| std::cmp::Reverse(*rank));
    let mut out: Vec<registry_client::Credential> = Vec::new();
    for (_, c) in found {
        if !out.contains(&c) {
            out.push(c);
        }
    }
    (out, missing)
}

pub(super) fn container_id(uid: &str, name: &str, instance: u32) -> String {
    format!("{uid}-{name}-{instance}")
}

/// The container's configuration could not be built: it waits and is retried.
fn config_error(mgr: &Core, rec: &mut PodRecord, i: usize, e: volume::VolumeError) {
    let message = if e.event == "Failed" { format!("Error: {}", e.message) } else { e.message.clone() };
    mgr.event(rec, "Warning", e.event, &message);
    apply(rec, Event::ConfigError { container: i, reason: e.reason.into(), message: e.message, at: now_ms() });
    save(mgr, rec);
}

/// How long a pod accepted by this process waited from its acceptance to `t0`.
fn queued(mgr: &Core, uid: &str, t0: std::time::Instant) -> Duration {
    let accepted = mgr.accepted.lock().unwrap_or_else(|e| e.into_inner()).get(uid).copied();
    accepted.map_or(Duration::ZERO, |a| t0.saturating_duration_since(a))
}

fn config_failed(message: String) -> volume::VolumeError {
    volume::VolumeError { reason: "CreateContainerConfigError", event: "Failed", message }
}

async fn start(mgr: &Arc<Core>, rec: &mut PodRecord, i: usize, tx: &mpsc::UnboundedSender<Msg>, probes: &mut Probes) {
    let t0 = std::time::Instant::now();
    let Some(c) = rec.container(i).cloned() else { return };
    let image = match image_of(mgr, &c) {
        Ok(img) => img,
        Err(message) => return config_error(mgr, rec, i, config_failed(message)),
    };
    let kind = image.0;
    // a Wasm container that serves ports joins the pod network when the pod has one
    // (a Linux container among its images), as a container would share it
    let serves = kind == RuntimeKind::Wasm && c.ports.as_ref().is_some_and(|p| !p.is_empty());
    let joins = serves && mgr.runtime.has(RuntimeKind::Linux) && pod_has_linux(mgr, rec);
    let mut netns = None;
    let host_network = rec.pod.spec.as_ref().and_then(|s| s.host_network) == Some(true);
    if host_network && rec.pod_ip.is_none() {
        // a host-network pod's IP is the node's, as in Kubernetes
        rec.pod_ip = Some(mgr.node.ip.clone());
    }
    if kind == RuntimeKind::Linux || joins {
        let spec = rec.pod.spec.clone().unwrap_or_default();
        let sc = spec.security_context.as_ref();
        let sandbox = SandboxConfig {
            id: rec.uid.clone(),
            namespace: rec.namespace().into(),
            name: rec.name().into(),
            hostname: spec.hostname.clone().unwrap_or_else(|| rec.name().into()),
            // a host-network pod's ports are the host's own: nothing to map
            ports: if host_network { Vec::new() } else { host_ports(&spec) },
            host_network,
            host_pid: spec.host_pid == Some(true),
            host_ipc: spec.host_ipc == Some(true),
            user_ns: rec.userns.map(|host_id| wasmlet_runtime::IdMap { host_id, size: super::USERNS_SIZE }),
            sysctls: sc
                .and_then(|s| s.sysctls.as_ref())
                .into_iter()
                .flatten()
                .map(|s| (crate::node::normalize_sysctl(&s.name), s.value.clone()))
                .collect(),
        };
        if !rec.network {
            // intent first: a crash in between leaves a sandbox that teardown removes
            rec.network = true;
            save(mgr, rec);
        }
        // made once (its network wired in the background while the container is
        // created); later calls find it
        let made = match mgr.runtime.create_sandbox(RuntimeKind::Linux, &sandbox).await {
            Ok(status) => status,
            Err(e) => {
                mgr.event(rec, "Warning", "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e}"));
                apply(rec, Event::Starting { container: i, at: now_ms() });
                return start_failed(mgr, rec, i, "CreatePodSandboxError", e.to_string());
            }
        };
        netns = made.netns;
        if rec.pod_ip.is_none() {
            rec.pod_ip = made.ip;
        }
        // the network is wired in the background; wait for it only when the
        // container's environment needs the pod IP
        let wants_ip = c.env.iter().flatten().any(|e| {
            e.value_from
                .as_ref()
                .and_then(|f| f.field_ref.as_ref())
                .is_some_and(|f| f.field_path.starts_with("status.podIP"))
        });
        // (a Wasm server's probes and clients find it on the pod IP, so it waits too)
        if (wants_ip || joins) && rec.pod_ip.is_none() {
            match mgr.runtime.sandbox_status(RuntimeKind::Linux, &rec.uid).await {
                Ok(status) => rec.pod_ip = status.ip,
                Err(e) => {
                    apply(rec, Event::Starting { container: i, at: now_ms() });
                    return start_failed(mgr, rec, i, "CreatePodSandboxError", e.to_string());
                }
            }
        }
    }
    let t_sandbox = t0.elapsed();
    let instance = rec.status.containers[i].instances + 1;
    let mut config = match container_config(mgr, rec, &c, instance, image) {
        Ok(cfg) => cfg,
        Err(e) => return config_error(mgr, rec, i, e),
    };
    if joins {
        config.netns = netns;
    }
    let restarting = rec.status.containers[i].instances > 0;
    // which runtime runs it is on record with the start: a restarted agent asks it
    rec.runtimes[i] = Some(kind);
    apply(rec, Event::Starting { container: i, at: now_ms() });
    if !restarting {
        // a Linux container outlives the agent: a restarted one must know where to look
        // for it. A Wasm guest does not, and is saved running in a moment (a write of the
        // record fewer in every start)
        if kind == RuntimeKind::Linux {
            save(mgr, rec);
        }
    } else if let Err(e) = persist(mgr, rec).await {
        // the new instance and the advanced back-off are durable before it runs
        return start_failed(mgr, rec, i, "CreateContainerError", e);
    }
    let id = config.id.clone();
    if let Err(e) = mgr.runtime.create_container(kind, config).await {
        return start_failed(mgr, rec, i, "CreateContainerError", e.to_string());
    }
    mgr.event(rec, "Normal", "Created", &format!("Created container {}", c.name));
    let t_created = t0.elapsed();
    if let Err(e) = mgr.runtime.start_container(kind, &id).await {
        let _ = mgr.runtime.remove_container(kind, &id).await;
        return start_failed(mgr, rec, i, "RunContainerError", e.to_string());
    }
    let t_started = t0.elapsed();
    if kind == RuntimeKind::Linux && rec.pod_ip.is_none() {
        // the start waited for the network: its status has the IP now
        rec.pod_ip = mgr.runtime.sandbox_status(kind, &rec.uid).await.ok().and_then(|s| s.ip);
    }
    // postStart runs before the container counts as running; a failure kills it
    if let Some(h) = c.lifecycle.as_ref().and_then(|l| l.post_start.as_ref()) {
        let target = target(mgr, rec, kind, &id);
        let result = match probe::hook_handler(h, &c) {
            Ok(h) => probe::run(&h, &target, Duration::from_secs(grace_seconds(rec, None))).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            mgr.event(rec, "Warning", "FailedPostStartHook", &format!("PostStartHook failed: {e}"));
            let runtime = mgr.runtime.clone();
            let (kid, grace) = (id.clone(), Duration::from_secs(grace_seconds(rec, None)));
            tokio::spawn(async move {
                let _ = runtime.stop_container(kind, &kid, grace).await;
            });
        }
    }
    apply(rec, Event::Started { container: i, at: now_ms() });
    if let Ok(r) = rec.plan.containers[i].image.parse() {
        mgr.images.touch(&r);
    }
    // a Linux container outlives the agent: its record must too, or a restarted agent
    // would start a second one beside it; one no durable record names does not run
    if kind == RuntimeKind::Linux
        && let Err(e) = persist(mgr, rec).await
    {
        let _ = mgr.runtime.stop_container(kind, &id, Duration::ZERO).await;
        let _ = mgr.runtime.remove_container(kind, &id).await;
        return start_failed(mgr, rec, i, "RunContainerError", e);
    }
    tracing::debug!(
        container = %c.name,
        sandbox_us = t_sandbox.as_micros() as u64,
        created_us = t_created.as_micros() as u64,
        started_us = t_started.as_micros() as u64,
        flushed_us = t0.elapsed().as_micros() as u64,
        // from the pod's acceptance to this start (the worker's first passes, its pull step)
        queued_us = queued(mgr, &rec.uid, t0).as_micros() as u64,
        "container start phases (cumulative)"
    );
    if rec.status.containers.iter().all(|c| matches!(c.state, state::State::Running { .. })) {
        mgr.started(&rec.uid);
    }
    mgr.event(rec, "Normal", "Started", &format!("Started container {}", c.name));
    save(mgr, rec);
    watch(mgr, rec, i, instance, tx);
    start_probes(mgr, rec, i, instance, tx, probes);
}

/// Where handlers of this pod act: its IP, or loopback for a pod without one.
fn target(mgr: &Core, rec: &PodRecord, kind: RuntimeKind, id: &str) -> probe::Target {
    probe::Target {
        runtime: mgr.runtime.clone(),
        kind,
        id: id.to_string(),
        host: rec.pod_ip.clone().unwrap_or_else(|| "127.0.0.1".into()),
    }
}

/// Starts the probe loop of a running instance, if it has probes.
fn start_probes(
    mgr: &Core,
    rec: &PodRecord,
    i: usize,
    instance: u32,
    tx: &mpsc::UnboundedSender<Msg>,
    probes: &mut Probes,
) {
    let (Some(c), Some(kind)) = (rec.container(i), rec.runtimes[i]) else { return };
    let spec = |p: &Option<k8s_openapi::api::core::v1::Probe>| p.as_ref().map(|p| probe::Spec::new(p, c));
    let (startup, liveness, readiness) = (spec(&c.startup_probe), spec(&c.liveness_probe), spec(&c.readiness_probe));
    if startup.is_none() && liveness.is_none() && readiness.is_none() {
        return;
    }
    let (startup, liveness, readiness) = match (startup.transpose(), liveness.transpose(), readiness.transpose()) {
        (Ok(s), Ok(l), Ok(r)) => (s, l, r),
        (Err(e), _, _) | (_, Err(e), _) | (_, _, Err(e)) => {
            mgr.event(rec, "Warning", "Unhealthy", &format!("Probe cannot run: {e}"));
            return;
        }
    };
    let target = target(mgr, rec, kind, &container_id(&rec.uid, &c.name, instance));
    let tx = tx.clone();
    let task = tokio::spawn(probe::probe_loop(startup, liveness, readiness, target, move |outcome| {
        let _ = tx.send(Msg::Probe { container: i, instance, outcome: Box::new(outcome) });
    }));
    if let Some(old) = probes.insert(i, task.abort_handle()) {
        old.abort();
    }
}

/// A probe result for instance `instance` of container `i`.
fn probed(mgr: &Arc<Core>, rec: &mut PodRecord, i: usize, instance: u32, outcome: Outcome) {
    let current = rec
        .status
        .containers
        .get(i)
        .is_some_and(|c| c.instances == instance && matches!(c.state, state::State::Running { .. }));
    if !current {
        return;
    }
    let name = rec.plan.containers[i].name.clone();
    match outcome {
        Outcome::Failed { kind, message } => {
            mgr.event(rec, "Warning", "Unhealthy", &format!("{} probe failed: {message}", kind.title()));
        }
        Outcome::Ready(ready) => apply(rec, Event::Ready { container: i, ready }),
        Outcome::StartupPassed => apply(rec, Event::StartupPassed { container: i }),
        Outcome::Kill(kind) => {
            let what = match kind {
                probe::Kind::Startup => "startup",
                _ => "liveness",
            };
            mgr.event(rec, "Normal", "Killing", &format!("Container {name} failed {what} probe, will be restarted"));
            let probe_grace = rec.container(i).and_then(|c| match kind {
                probe::Kind::Startup => c.startup_probe.as_ref(),
                _ => c.liveness_probe.as_ref(),
            });
            let grace = grace_seconds(rec, probe_grace.and_then(|p| p.termination_grace_period_seconds));
            let (mgr, rec) = (mgr.clone(), rec.clone());
            tokio::spawn(async move { stop_one(&mgr, &rec, i, Duration::from_secs(grace)).await });
        }
    }
    save(mgr, rec);
}

/// The grace period: an override (a probe's), else the pod's.
fn grace_seconds(rec: &PodRecord, over: Option<i64>) -> u64 {
    over.or_else(|| rec.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds)).unwrap_or(30).max(0) as u64
}

/// Reports the instance's exit to the worker.
fn watch(mgr: &Core, rec: &PodRecord, i: usize, instance: u32, tx: &mpsc::UnboundedSender<Msg>) {
    let Some(kind) = rec.runtimes[i] else { return };
    let id = container_id(&rec.uid, &rec.plan.containers[i].name, instance);
    let (runtime, tx) = (mgr.runtime.clone(), tx.clone());
    tokio::spawn(async move {
        if let Ok(state) = runtime.wait_container(kind, &id).await {
            let _ = tx.send(Msg::Exited { container: i, instance, state: Box::new(state) });
        }
    });
}

/// Every container's `hostPort`s, for the pod's network.
fn host_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<PortMapping> {
    let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
    let ports = containers.flat_map(|c| c.ports.iter().flatten());
    ports
        .filter_map(|p| {
            let host_port = u16::try_from(p.host_port?).ok().filter(|&h| h > 0)?;
            Some(PortMapping {
                host_port,
                container_port: u16::try_from(p.container_port).ok()?,
                protocol: p.protocol.as_deref().unwrap_or("TCP").to_ascii_lowercase(),
                host_ip: p.host_ip.clone().filter(|h| !h.is_empty()),
            })
        })
        .collect()
}

fn start_failed(mgr: &Core, rec: &mut PodRecord, i: usize, reason: &str, message: String) {
    mgr.event(rec, "Warning", "Failed", &format!("Error: {reason}: {message}"));
    let now = now_ms();
    let term = Terminated {
        exit_code: 128,
        reason: "StartError".into(),
        message: format!("{reason}: {message}"),
        started_at: now,
        finished_at: now,
    };
    apply(rec, Event::Exited { container: i, term });
    save(mgr, rec);
}

async fn exited(mgr: &Core, rec: &mut PodRecord, i: usize, instance: u32, state: ContainerState) {
    if rec.status.containers.get(i).is_none_or(|c| c.instances != instance) {
        return; // a stale report from an instance already replaced
    }
    let ContainerState::Exited { exit_code, reason, message, started_at, finished_at } = state else { return };
    let name = rec.plan.containers[i].name.clone();
    let message = termination_message(mgr, rec, i, instance, exit_code).unwrap_or(message);
    let term = Terminated { exit_code, reason: reason.as_str().into(), message, started_at, finished_at };
    let restarts = rec.plan.containers[i].role == Role::Sidecar || rec.plan.restart_policy.restarts(exit_code);
    if exit_code != 0 && restarts && !rec.status.phase.is_terminal() {
        mgr.event(
            rec,
            "Warning",
            "BackOff",
            &format!("Back-off restarting failed container {name} in pod {}", rec.plan.pod),
        );
    }
    apply(rec, Event::Exited { container: i, term });
    if let Some(kind) = rec.runtimes[i] {
        let _ = mgr.runtime.remove_container(kind, &container_id(&rec.uid, &name, instance)).await;
    }
    if let Err(e) = persist(mgr, rec).await {
        tracing::error!(pod = %rec.key(), "{e}");
        mgr.event(rec, "Warning", "FailedToPersist", &e);
    }
}

/// The message of an ended instance: what it wrote to its termination-message file,
/// else (with `FallbackToLogsOnError` and a failure) the end of its log; at most
/// 4096 bytes. `None` leaves the runtime's message.
fn termination_message(mgr: &Core, rec: &PodRecord, i: usize, instance: u32, exit_code: i32) -> Option<String> {
    const MAX: usize = 4096;
    let c = rec.container(i)?;
    let kind = rec.runtimes.get(i).copied().flatten()?;
    let (_, file) = termination_paths(mgr, rec, c, instance, kind);
    let written = std::fs::read(&file).ok().filter(|b| !b.is_empty());
    if let Some(mut b) = written {
        b.truncate(MAX);
        return Some(String::from_utf8_lossy(&b).into_owned());
    }
    if c.termination_message_policy.as_deref() != Some("FallbackToLogsOnError") || exit_code == 0 {
        return None;
    }
    let log = std::fs::read(mgr.log_path(rec, &c.name, instance)).ok()?;
    let mut bytes = Vec::new();
    for line in wasmlet_runtime::log::records(&log) {
        bytes.extend_from_slice(line.line);
        if line.full {
            bytes.push(b'\n');
        }
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().collect();
    let mut tail = lines[lines.len().saturating_sub(80)..].join("\n");
    if tail.len() > 2048 {
        let mut cut = tail.len() - 2048;
        while !tail.is_char_boundary(cut) {
            cut += 1;
        }
        tail = tail[cut..].to_string();
    }
    (!tail.is_empty()).then_some(tail)
}

/// The API server's default `terminationMessagePath`.
const DEFAULT_TERMINATION_PATH: &str = "/dev/termination-log";

/// The host side of an instance's termination-message file: what is mounted (the
/// file for Linux, a directory holding it for Wasm, whose mounts are directories) and
/// the file itself.
fn termination_paths(
    mgr: &Core,
    rec: &PodRecord,
    c: &Container,
    instance: u32,
    kind: RuntimeKind,
) -> (PathBuf, PathBuf) {
    let base = mgr.pod_dir(&rec.uid).join("termination").join(format!("{}-{instance}", c.name));
    let path = c.termination_message_path.as_deref().unwrap_or(DEFAULT_TERMINATION_PATH);
    let file_name = path.rsplit('/').next().unwrap_or("termination-log");
    match kind {
        RuntimeKind::Linux => (base.clone(), base),
        RuntimeKind::Wasm => (base.clone(), base.join(file_name)),
    }
}

/// Stops one container: its preStop hook first (within the grace period), then the
/// stop signal with what is left of it (at least 2 s after a hook, as the kubelet).
async fn stop_one(mgr: &Core, rec: &PodRecord, i: usize, grace: Duration) {
    let (Some(c), Some(kind)) = (rec.container(i), rec.runtimes.get(i).copied().flatten()) else { return };
    let st = &rec.status.containers[i];
    if st.instances == 0 {
        return;
    }
    let id = container_id(&rec.uid, &c.name, st.instances);
    let mut remaining = grace;
    if matches!(st.state, state::State::Running { .. })
        && !grace.is_zero()
        && let Some(h) = c.lifecycle.as_ref().and_then(|l| l.pre_stop.as_ref())
    {
        let t0 = std::time::Instant::now();
        let result = match probe::hook_handler(h, c) {
            Ok(h) => probe::run(&h, &target(mgr, rec, kind, &id), grace).await,
            Err(e) => Err(e),
        };
        if let Err(e) = result {
            mgr.event_for(&rec.uid, &rec.key(), "Warning", "FailedPreStopHook", &format!("PreStopHook failed: {e}"));
        }
        remaining = grace.saturating_sub(t0.elapsed()).max(Duration::from_secs(2));
    }
    let _ = mgr.runtime.stop_container(kind, &id, remaining).await;
}

/// Stops every running container: app (and init) containers together, then sidecars
/// one by one in reverse order, as the kubelet does. `grace` overrides the pod's.
async fn stop_all(mgr: &Arc<Core>, rec: &PodRecord, grace: Option<u64>) {
    let grace = Duration::from_secs(grace.unwrap_or_else(|| grace_seconds(rec, None)));
    let running: Vec<usize> = running(rec).collect();
    for &i in &running {
        let name = &rec.plan.containers[i].name;
        mgr.event_for(&rec.uid, &rec.key(), "Normal", "Killing", &format!("Stopping container {name}"));
    }
    let (sidecars, others): (Vec<usize>, Vec<usize>) =
        running.into_iter().partition(|&i| rec.plan.containers[i].role == Role::Sidecar);
    let stops = others.into_iter().map(|i| stop_one(mgr, rec, i, grace));
    futures_util::future::join_all(stops).await;
    for i in sidecars.into_iter().rev() {
        stop_one(mgr, rec, i, grace).await;
    }
}

async fn stop_and_teardown(mgr: &Arc<Core>, rec: &mut PodRecord) {
    stop_all(mgr, rec, None).await;
    for (i, c) in rec.status.containers.iter().enumerate() {
        let Some(kind) = rec.runtimes.get(i).copied().flatten() else { continue };
        if c.instances > 0 {
            let _ = mgr.runtime.remove_container(kind, &container_id(&rec.uid, &c.name, c.instances)).await;
        }
    }
    if rec.network
        && let Err(e) = mgr.runtime.remove_sandbox(RuntimeKind::Linux, &rec.uid).await
    {
        tracing::warn!(error = %e, "cannot remove the pod sandbox");
    }
    if let Err(e) = mgr.teardown(rec).await {
        tracing::error!(error = %e, "cannot remove pod state");
    }
}

/// Whether any of the pod's containers has a Linux image already pulled (all app
/// images are pulled before the first app container starts).
fn pod_has_linux(mgr: &Core, rec: &PodRecord) -> bool {
    let spec = rec.pod.spec.as_ref();
    let all = spec.into_iter().flat_map(|s| s.init_containers.iter().flatten().chain(&s.containers));
    all.filter_map(|c| image_of(mgr, c).ok()).any(|(kind, ..)| kind == RuntimeKind::Linux)
}

/// Which runtime runs the container's image, what it runs and the image's config.
type ImageParts = (RuntimeKind, Artifact, registry_client::manifest::ContainerConfig, String);

fn image_of(mgr: &Core, c: &Container) -> Result<ImageParts, String> {
    let reference: registry_client::Reference =
        c.image.as_deref().unwrap_or_default().parse().map_err(|e| format!("{e}"))?;
    let image = mgr.images.get(&reference).map_err(|e| e.to_string())?.ok_or("image is not pulled")?;
    let (kind, artifact) = image.artifact()?;
    let cfg = image.image.config.config.clone().unwrap_or_default();
    Ok((kind, artifact, cfg, image.reference.to_string()))
}

/// The runtime's view of one container instance: argv, env, mounts, limits.
fn container_config(
    mgr: &Core,
    rec: &PodRecord,
    c: &Container,
    instance: u32,
    (kind, artifact, cfg, reference): ImageParts,
) -> Result<ContainerConfig, volume::VolumeError> {
    if kind == RuntimeKind::Linux
        && c.command.as_ref().is_none_or(|v| v.is_empty())
        && cfg.entrypoint.is_none()
        && cfg.cmd.is_none()
        && c.args.as_ref().is_none_or(|v| v.is_empty())
    {
        return Err(config_failed(format!("no command specified: image {reference} has no ENTRYPOINT or CMD")));
    }
    let pod_env = env::container_env(mgr, rec, c, &mgr.node).map_err(config_failed)?;
    let lookup = |n: &str| pod_env.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone());
    let expand = |v: &Option<Vec<String>>| v.as_ref().map(|v| v.iter().map(|a| env::expand(a, lookup)).collect());
    let expanded = Container { command: expand(&c.command), args: expand(&c.args), ..c.clone() };
    let args = argv(kind, &expanded, cfg.entrypoint.as_deref(), cfg.cmd.as_deref());
    let mut env: Vec<(String, String)> =
        cfg.env.iter().flatten().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
    for (k, v) in &pod_env {
        env.retain(|(n, _)| n != k);
        env.push((k.clone(), v.clone()));
    }
    let mut mounts = mounts(mgr, rec, c, kind)?;
    // the termination-message file, fresh for each instance. A Linux container always
    // has it (a file bind-mounted at its path). A Wasm guest sees it only when the
    // container names a path of its own: its directory would be a preopen, and a WASI
    // program given no volumes relies on having no preopens (fd 3 free).
    let tm = c.termination_message_path.clone().unwrap_or_else(|| DEFAULT_TERMINATION_PATH.into());
    if kind == RuntimeKind::Linux || tm != DEFAULT_TERMINATION_PATH {
        let (host, file) = termination_paths(mgr, rec, c, instance, kind);
        let made = std::fs::create_dir_all(file.parent().expect("has a parent"))
            .and_then(|_| std::fs::write(&file, b""))
            .and_then(|_| match rec.userns {
                // the pod's root writes it from inside its user namespace
                Some(base) => std::os::unix::fs::chown(&file, Some(base), Some(base)),
                None => Ok(()),
            });
        made.map_err(|e| config_failed(format!("termination message file {}: {e}", file.display())))?;
        let container_path = match kind {
            RuntimeKind::Linux => tm,
            RuntimeKind::Wasm => tm
                .rsplit_once('/')
                .map(|(d, _)| if d.is_empty() { "/".to_string() } else { d.to_string() })
                .unwrap_or_default(),
        };
        if !mounts.iter().any(|m| m.container_path == container_path) {
            mounts.push(Mount { host_path: host, container_path, read_only: false });
        }
    }
    let memory_limit = c
        .resources
        .as_ref()
        .and_then(|r| r.limits.as_ref())
        .and_then(|l| l.get("memory"))
        .and_then(|q| crate::spec::parse_bytes(&q.0));
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let millis = |q: Option<&k8s_openapi::apimachinery::pkg::api::resource::Quantity>| {
        q.and_then(|q| crate::spec::parse_millicores(&q.0))
    };
    let sc = c.security_context.as_ref();
    let psc = rec.pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let run_as_user = sc.and_then(|s| s.run_as_user).or_else(|| psc.and_then(|s| s.run_as_user));
    let run_as_group = sc.and_then(|s| s.run_as_group).or_else(|| psc.and_then(|s| s.run_as_group));
    let user = match (run_as_user, run_as_group) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, _) => cfg.user.clone().filter(|u| !u.is_empty()),
    };
    let non_root = sc.and_then(|s| s.run_as_non_root).or_else(|| psc.and_then(|s| s.run_as_non_root)) == Some(true);
    if non_root && kind == RuntimeKind::Linux && run_as_user == Some(0) {
        return Err(config_failed("container's runAsUser breaks non-root policy".into()));
    }
    let security = security(&mgr.policy, rec, c, kind).map_err(config_failed)?;
    Ok(ContainerConfig {
        id: container_id(&rec.uid, &c.name, instance),
        sandbox_id: rec.uid.clone(),
        name: c.name.clone(),
        artifact,
        args,
        env,
        mounts,
        memory_limit,
        log_path: mgr.log_path(rec, &c.name, instance),
        log: mgr.policy.log,
        working_dir: c.working_dir.clone().or_else(|| cfg.working_dir.clone()).filter(|w| !w.is_empty()),
        user,
        stop_signal: cfg.stop_signal.clone(),
        cpu_limit_millis: millis(limits.and_then(|l| l.get("cpu"))),
        cpu_request_millis: millis(requests.and_then(|l| l.get("cpu"))),
        read_only_rootfs: sc.and_then(|s| s.read_only_root_filesystem) == Some(true),
        allow_privilege_escalation: sc.and_then(|s| s.allow_privilege_escalation) == Some(true),
        run_as_non_root: non_root,
        seccomp: security.seccomp,
        capabilities: security.capabilities,
        privileged: security.privileged,
        supplemental_groups: security.groups,
        image_groups: security.image_groups,
        apparmor_profile: security.apparmor,
        proc_unmasked: sc.and_then(|s| s.proc_mount.as_deref()) == Some("Unmasked"),
        ports: c
            .ports
            .iter()
            .flatten()
            .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
            .filter_map(|p| {
                let container_port = u16::try_from(p.container_port).ok()?;
                Some(wasmlet_runtime::ServePort {
                    container_port,
                    host_port: p.host_port.and_then(|h| u16::try_from(h).ok()),
                })
            })
            .collect(),
        http: crate::spec::annotations::http_options(rec.pod.metadata.annotations.as_ref()).unwrap_or_default(),
        netns: None,
    })
}

/// What a container may do, from its securityContext and the pod's.
struct Security {
    seccomp: Seccomp,
    capabilities: Capabilities,
    privileged: bool,
    groups: Vec<u32>,
    image_groups: bool,
    apparmor: Option<String>,
}

/// The container's seccomp profile (its own, else the pod's, else the node's default),
/// capabilities, privilege, groups and AppArmor profile. A Wasm guest makes no
/// syscalls and holds no capabilities or uids, so what only takes away is accepted;
/// what would grant it host power is refused.
fn security(
    policy: &crate::node::Policy,
    rec: &PodRecord,
    c: &Container,
    kind: RuntimeKind,
) -> Result<Security, String> {
    let sc = c.security_context.as_ref();
    let psc = rec.pod.spec.as_ref().and_then(|s| s.security_context.as_ref());
    let privileged = sc.and_then(|s| s.privileged) == Some(true);
    let caps = sc.and_then(|s| s.capabilities.as_ref());
    let capabilities = Capabilities {
        add: caps.and_then(|c| c.add.clone()).unwrap_or_default(),
        drop: caps.and_then(|c| c.drop.clone()).unwrap_or_default(),
    };
    if kind == RuntimeKind::Wasm {
        if privileged {
            return Err(format!(
                "container {:?} is privileged: a Wasm guest cannot hold host privileges; run it as a Linux image",
                c.name
            ));
        }
        if !capabilities.add.is_empty() {
            return Err(format!(
                "container {:?} adds capabilities {:?}: a Wasm guest makes no system calls a capability could allow",
                c.name, capabilities.add
            ));
        }
    }
    let profile = sc.and_then(|s| s.seccomp_profile.as_ref()).or_else(|| psc.and_then(|s| s.seccomp_profile.as_ref()));
    let seccomp = match profile.map(|p| (p.type_.as_str(), p.localhost_profile.as_deref())) {
        Some(("RuntimeDefault", _)) => Seccomp::RuntimeDefault,
        Some(("Localhost", Some(path))) => Seccomp::Localhost(policy.seccomp_profile_root.join(path)),
        Some(_) => Seccomp::Unconfined,
        None if policy.seccomp_default => Seccomp::RuntimeDefault,
        None => Seccomp::Unconfined,
    };
    let apparmor =
        sc.and_then(|s| s.app_armor_profile.as_ref()).or_else(|| psc.and_then(|s| s.app_armor_profile.as_ref()));
    let apparmor = apparmor.filter(|p| p.type_ == "Localhost").and_then(|p| p.localhost_profile.clone());
    let mut groups: Vec<u32> = psc
        .and_then(|s| s.supplemental_groups.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|g| u32::try_from(*g).ok())
        .collect();
    groups.extend(psc.and_then(|s| s.fs_group).and_then(|g| u32::try_from(g).ok()));
    let image_groups = psc.and_then(|s| s.supplemental_groups_policy.as_deref()) != Some("Strict");
    Ok(Security { seccomp, capabilities, privileged, groups, image_groups, apparmor })
}

/// Kubernetes' rules: `command` replaces the image's ENTRYPOINT (and drops its CMD);
/// `args` replaces CMD. With no command and no ENTRYPOINT, a Linux container runs `args`
/// itself (`args: [sh, -c, ...]` in an image without ENTRYPOINT runs `sh`, as in
/// Kubernetes); a Wasm artifact has no program path, so its argv[0] is the container name
/// and `args` follow it.
fn argv(kind: RuntimeKind, c: &Container, entrypoint: Option<&[String]>, cmd: Option<&[String]>) -> Vec<String> {
    let (entry, default_args): (Vec<String>, Vec<String>) = match &c.command {
        Some(command) if !command.is_empty() => (command.clone(), Vec::new()),
        _ => (entrypoint.map(<[String]>::to_vec).unwrap_or_default(), cmd.map(<[String]>::to_vec).unwrap_or_default()),
    };
    let args = match &c.args {
        Some(a) if !a.is_empty() || c.command.is_some() => a.clone(),
        _ => default_args,
    };
    let mut argv = match kind {
        RuntimeKind::Wasm if entry.is_empty() => vec![c.name.clone()],
        _ => entry,
    };
    argv.extend(args);
    argv
}

/// The container's volume mounts on the host; volumes are made (or brought up to
/// date) here, before the container starts.
fn mounts(mgr: &Core, rec: &PodRecord, c: &Container, kind: RuntimeKind) -> Result<Vec<Mount>, volume::VolumeError> {
    let volumes = rec.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let root = mgr.pod_dir(&rec.uid).join("volumes");
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes
            .iter()
            .find(|v| v.name == m.name)
            .ok_or_else(|| config_failed(format!("volume {:?} not found", m.name)))?;
        let mut host = {
            let _guard = mgr.volume_lock.lock().unwrap_or_else(|e| e.into_inner());
            volume::setup(mgr, rec, &mgr.node, v, &root)?
        };
        if let Some(sub) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            host = volume::sub_path(&host, sub)?;
        }
        if kind == RuntimeKind::Wasm && !host.is_dir() {
            return Err(config_failed(format!(
                "volume {:?} at {}: Wasm containers can mount directories only, and {} is not one",
                m.name,
                m.mount_path,
                host.display()
            )));
        }
        // configMap, secret, downwardAPI and projected volumes are always read-only
        let read_only = m.read_only.unwrap_or(false) || volume::is_projected(v);
        out.push(Mount { host_path: host, container_path: m.mount_path.clone(), read_only });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn container(command: Option<&[&str]>, args: Option<&[&str]>) -> Container {
        Container {
            name: "app".into(),
            command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
            args: args.map(|c| c.iter().map(|s| s.to_string()).collect()),
            ..Default::default()
        }
    }

    #[test]
    fn argv_follows_the_kubernetes_table() {
        let ep = vec!["/ep".to_string()];
        let cmd = vec!["def".to_string()];
        for kind in [RuntimeKind::Linux, RuntimeKind::Wasm] {
            let v = |c: &Container, e: Option<&[String]>, d: Option<&[String]>| argv(kind, c, e, d);
            assert_eq!(v(&container(None, None), Some(&ep), Some(&cmd)), ["/ep", "def"]);
            assert_eq!(v(&container(Some(&["/c"]), None), Some(&ep), Some(&cmd)), ["/c"]);
            assert_eq!(v(&container(None, Some(&["a"])), Some(&ep), Some(&cmd)), ["/ep", "a"]);
            assert_eq!(v(&container(Some(&["/c"]), Some(&["a"])), Some(&ep), Some(&cmd)), ["/c", "a"]);
            assert_eq!(
                v(&container(None, Some(&["a"])), None, Some(&cmd)),
                v(&container(None, Some(&["a"])), None, None)
            );
        }
    }

    #[test]
    fn args_without_command_or_entrypoint_run_as_the_command_in_linux_only() {
        // the docs' counter pod: busybox (no ENTRYPOINT), `args: [/bin/sh, -c, ...]`
        let c = container(None, Some(&["/bin/sh", "-c", "echo hi"]));
        assert_eq!(argv(RuntimeKind::Linux, &c, None, Some(&["sh".into()])), ["/bin/sh", "-c", "echo hi"]);
        // a Wasm artifact has no program path: argv[0] is the container's name
        assert_eq!(argv(RuntimeKind::Wasm, &c, None, None), ["app", "/bin/sh", "-c", "echo hi"]);
        assert_eq!(argv(RuntimeKind::Wasm, &container(None, None), None, None), ["app"]);
    }
}
