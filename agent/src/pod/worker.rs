//! One task per pod: plan, act, wait for an exit, a timer or a deletion, repeat.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::state::{self, Action, Event, PullPolicy, Terminated};
use super::{Manager, Msg, PodRecord};
use crate::runtime::cni::PortMapping;
use crate::runtime::{Artifact, ContainerConfig, ContainerState, Mount, RuntimeKind, SandboxConfig, now_ms};

pub(super) async fn run(
    mgr: Arc<Manager>,
    mut rec: PodRecord,
    tx: mpsc::UnboundedSender<Msg>,
    mut rx: mpsc::UnboundedReceiver<Msg>,
) {
    let span =
        tracing::info_span!("pod_sync", pod.namespace = rec.namespace(), pod.name = rec.name(), pod.uid = %rec.uid);
    async move {
        if rec.deleting {
            stop_and_teardown(&mgr, &mut rec).await;
            return;
        }
        rec.runtimes.resize(rec.plan.containers.len(), None);
        // Linux containers adopted after an agent restart: wait on them again
        for (i, c) in rec.status.containers.iter().enumerate() {
            if matches!(c.state, state::State::Running { .. }) && rec.runtimes[i] == Some(RuntimeKind::Linux) {
                watch(&mgr, &rec, i, c.instances, &tx);
            }
        }
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
            save(&mgr, &rec);
            let mut wake: Option<u64> = None;
            let mut acted = false;
            for action in actions {
                match action {
                    Action::Pull(i) => {
                        pull(&mgr, &mut rec, i).await;
                        acted = true;
                    }
                    Action::Start(i) => {
                        start(&mgr, &mut rec, i, &tx).await;
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
                    exited(&mgr, &mut rec, container, instance, state).await
                }
                Some(Msg::Delete { done, grace }) => {
                    if let (Some(g), Some(spec)) = (grace, rec.pod.spec.as_mut()) {
                        spec.termination_grace_period_seconds = Some(g.max(0));
                    }
                    stop_and_teardown(&mgr, &mut rec).await;
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

fn save(mgr: &Manager, rec: &PodRecord) {
    if let Err(e) = mgr.save(rec) {
        tracing::error!(error = %e, "cannot save pod state");
    }
}

fn apply(rec: &mut PodRecord, event: Event) {
    let plan = rec.plan.clone();
    rec.status.apply(&plan, event);
}

async fn pull(mgr: &Manager, rec: &mut PodRecord, i: usize) {
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
    match mgr.images.pull(&reference, Default::default()).await {
        Ok(img) => {
            let msg =
                format!("Successfully pulled image \"{}\" in {:.3}s", spec.image, started.elapsed().as_secs_f64());
            mgr.event(rec, "Normal", "Pulled", &msg);
            apply(rec, Event::Pulled { container: i, image_id: img.image_id() });
        }
        Err(e) => {
            mgr.event(rec, "Warning", "Failed", &format!("Failed to pull image \"{}\": {e}", spec.image));
            apply(rec, Event::PullFailed { container: i, message: e.to_string(), at: now_ms() });
        }
    }
}

pub(super) fn container_id(uid: &str, name: &str, instance: u32) -> String {
    format!("{uid}-{name}-{instance}")
}

async fn start(mgr: &Manager, rec: &mut PodRecord, i: usize, tx: &mpsc::UnboundedSender<Msg>) {
    let t0 = std::time::Instant::now();
    let restarting = rec.status.containers[i].instances > 0;
    apply(rec, Event::Starting { container: i, at: now_ms() });
    save(mgr, rec);
    if restarting {
        // the new instance and the advanced back-off are durable before it runs
        let _ = mgr.store.flush().await;
    }
    let instance = rec.status.containers[i].instances;
    let spec = rec.pod.spec.clone().unwrap_or_default();
    let c = &spec.containers[i];
    let (kind, config) = match container_config(mgr, rec, c, instance) {
        Ok(cfg) => cfg,
        Err(message) => return start_failed(mgr, rec, i, "CreateContainerConfigError", message),
    };
    rec.runtimes[i] = Some(kind);
    if kind == RuntimeKind::Linux {
        let sandbox = SandboxConfig {
            id: rec.uid.clone(),
            namespace: rec.namespace().into(),
            name: rec.name().into(),
            hostname: rec.name().into(),
            ports: host_ports(&spec),
        };
        if !rec.network {
            // intent first: a crash in between leaves a sandbox that teardown removes
            rec.network = true;
            save(mgr, rec);
        }
        // made once (its network wired in the background while the container is
        // created); later calls find it
        if let Err(e) = mgr.runtime.create_sandbox(kind, &sandbox).await {
            mgr.event(rec, "Warning", "FailedCreatePodSandBox", &format!("Failed to create pod sandbox: {e}"));
            return start_failed(mgr, rec, i, "CreatePodSandboxError", e.to_string());
        }
    }
    let t_sandbox = t0.elapsed();
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
        rec.pod_ip = mgr.runtime.linux().ok().and_then(|l| l.sandbox_ip(&rec.uid));
    }
    apply(rec, Event::Started { container: i, at: now_ms() });
    if let Ok(r) = rec.plan.containers[i].image.parse() {
        mgr.images.touch(&r);
    }
    if kind == RuntimeKind::Linux {
        // a Linux container outlives the agent: its record must too, or a restarted
        // agent would start a second one beside it
        save(mgr, rec);
        let _ = mgr.store.flush().await;
    }
    tracing::debug!(
        container = %c.name,
        sandbox_us = t_sandbox.as_micros() as u64,
        created_us = t_created.as_micros() as u64,
        started_us = t_started.as_micros() as u64,
        flushed_us = t0.elapsed().as_micros() as u64,
        "container start phases (cumulative)"
    );
    if rec.status.containers.iter().all(|c| matches!(c.state, state::State::Running { .. })) {
        mgr.started(&rec.uid);
    }
    mgr.event(rec, "Normal", "Started", &format!("Started container {}", c.name));
    save(mgr, rec);
    watch(mgr, rec, i, instance, tx);
}

/// Reports the instance's exit to the worker.
fn watch(mgr: &Manager, rec: &PodRecord, i: usize, instance: u32, tx: &mpsc::UnboundedSender<Msg>) {
    let Some(kind) = rec.runtimes[i] else { return };
    let id = container_id(&rec.uid, &rec.plan.containers[i].name, instance);
    let (runtime, tx) = (mgr.runtime.clone(), tx.clone());
    tokio::spawn(async move {
        if let Ok(state) = runtime.wait_container(kind, &id).await {
            let _ = tx.send(Msg::Exited { container: i, instance, state });
        }
    });
}

/// Every container's `hostPort`s, for the pod's network.
fn host_ports(spec: &k8s_openapi::api::core::v1::PodSpec) -> Vec<PortMapping> {
    let ports = spec.containers.iter().flat_map(|c| c.ports.iter().flatten());
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

fn start_failed(mgr: &Manager, rec: &mut PodRecord, i: usize, reason: &str, message: String) {
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

async fn exited(mgr: &Manager, rec: &mut PodRecord, i: usize, instance: u32, state: ContainerState) {
    if rec.status.containers.get(i).is_none_or(|c| c.instances != instance) {
        return; // a stale report from an instance already replaced
    }
    let ContainerState::Exited { exit_code, reason, message, started_at, finished_at } = state else { return };
    let term = Terminated { exit_code, reason: reason.as_str().into(), message, started_at, finished_at };
    let name = rec.plan.containers[i].name.clone();
    if exit_code != 0 {
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
    save(mgr, rec);
    let _ = mgr.store.flush().await;
}

async fn stop_and_teardown(mgr: &Manager, rec: &mut PodRecord) {
    let grace = Duration::from_secs(
        rec.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64,
    );
    let mut stops = Vec::new();
    for (i, c) in rec.status.containers.clone().iter().enumerate() {
        let Some(kind) = rec.runtimes.get(i).copied().flatten() else { continue };
        if c.instances == 0 {
            continue;
        }
        let id = container_id(&rec.uid, &rec.plan.containers[i].name, c.instances);
        if matches!(c.state, state::State::Running { .. }) {
            mgr.event(rec, "Normal", "Killing", &format!("Stopping container {}", c.name));
        }
        let runtime = mgr.runtime.clone();
        // containers stop together, each within the grace period
        stops.push(tokio::spawn(async move {
            let _ = runtime.stop_container(kind, &id, grace).await;
            let _ = runtime.remove_container(kind, &id).await;
        }));
    }
    for s in stops {
        let _ = s.await;
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

/// The runtime's view of one container instance: which runtime, artifact, argv, env,
/// mounts, limits.
fn container_config(
    mgr: &Manager,
    rec: &PodRecord,
    c: &Container,
    instance: u32,
) -> Result<(RuntimeKind, ContainerConfig), String> {
    let reference: registry_client::Reference =
        c.image.as_deref().unwrap_or_default().parse().map_err(|e| format!("{e}"))?;
    let image = mgr.images.get(&reference).map_err(|e| e.to_string())?.ok_or("image is not pulled")?;
    let (kind, artifact) = match (image.wasm_blob(), &image.kind) {
        (Some((path, digest)), _) => (RuntimeKind::Wasm, Artifact::Wasm { path, digest: digest.to_string() }),
        (None, registry_client::ImageKind::Linux) => {
            let layers: Option<Vec<_>> =
                image.image.layers.iter().filter(|l| l.diff_id.is_some()).map(|l| l.unpacked.clone()).collect();
            let layers = layers.ok_or_else(|| {
                format!("image {} ({}) has a layer that is not unpacked", image.reference, image.digest)
            })?;
            (RuntimeKind::Linux, Artifact::Rootfs { layers })
        }
        (None, _) => {
            return Err(format!(
                "image {} ({}) keeps its Wasm module in a filesystem layer, which wasmlet does not run yet",
                image.reference, image.digest
            ));
        }
    };
    let cfg = image.image.config.config.clone().unwrap_or_default();
    let args = argv(c, cfg.entrypoint.as_deref(), cfg.cmd.as_deref());
    if kind == RuntimeKind::Linux
        && c.command.as_ref().is_none_or(|v| v.is_empty())
        && cfg.entrypoint.is_none()
        && cfg.cmd.is_none()
        && c.args.as_ref().is_none_or(|v| v.is_empty())
    {
        return Err(format!("no command specified: image {} has no ENTRYPOINT or CMD", image.reference));
    }
    let mut env: Vec<(String, String)> =
        cfg.env.iter().flatten().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.into(), v.into())).collect();
    for e in c.env.iter().flatten() {
        env.retain(|(k, _)| k != &e.name);
        env.push((e.name.clone(), e.value.clone().unwrap_or_default()));
    }
    let mounts = mounts(mgr, rec, c)?;
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
    let user = match (sc.and_then(|s| s.run_as_user), sc.and_then(|s| s.run_as_group)) {
        (Some(u), Some(g)) => Some(format!("{u}:{g}")),
        (Some(u), None) => Some(u.to_string()),
        (None, _) => cfg.user.clone().filter(|u| !u.is_empty()),
    };
    Ok((
        kind,
        ContainerConfig {
            id: container_id(&rec.uid, &c.name, instance),
            sandbox_id: rec.uid.clone(),
            name: c.name.clone(),
            artifact,
            args,
            env,
            mounts,
            memory_limit,
            log_path: mgr.log_path(rec, &c.name, instance),
            working_dir: c.working_dir.clone().or_else(|| cfg.working_dir.clone()).filter(|w| !w.is_empty()),
            user,
            stop_signal: cfg.stop_signal.clone(),
            cpu_limit_millis: millis(limits.and_then(|l| l.get("cpu"))),
            cpu_request_millis: millis(requests.and_then(|l| l.get("cpu"))),
        },
    ))
}

/// Kubernetes' rules: `command` replaces the image's ENTRYPOINT (and drops its CMD);
/// `args` replaces CMD. argv[0] of a Wasm artifact without either is the container name.
fn argv(c: &Container, entrypoint: Option<&[String]>, cmd: Option<&[String]>) -> Vec<String> {
    let (entry, default_args): (Vec<String>, Vec<String>) = match &c.command {
        Some(command) if !command.is_empty() => (command.clone(), Vec::new()),
        _ => (entrypoint.map(<[String]>::to_vec).unwrap_or_default(), cmd.map(<[String]>::to_vec).unwrap_or_default()),
    };
    let args = match &c.args {
        Some(a) if !a.is_empty() || c.command.is_some() => a.clone(),
        _ => default_args,
    };
    let mut argv = if entry.is_empty() { vec![c.name.clone()] } else { entry };
    argv.extend(args);
    argv
}

fn mounts(mgr: &Manager, rec: &PodRecord, c: &Container) -> Result<Vec<Mount>, String> {
    let volumes = rec.pod.spec.as_ref().and_then(|s| s.volumes.clone()).unwrap_or_default();
    let mut out = Vec::new();
    for m in c.volume_mounts.iter().flatten() {
        let v = volumes.iter().find(|v| v.name == m.name).ok_or_else(|| format!("volume {:?} not found", m.name))?;
        let host = if v.empty_dir.is_some() {
            let dir = mgr.pod_dir(&rec.uid).join("volumes").join(&v.name);
            std::fs::create_dir_all(&dir).map_err(|e| format!("emptyDir {}: {e}", v.name))?;
            dir
        } else if let Some(h) = &v.host_path {
            let path = std::path::PathBuf::from(&h.path);
            match h.type_.as_deref() {
                Some("DirectoryOrCreate") => {
                    std::fs::create_dir_all(&path).map_err(|e| format!("hostPath {}: {e}", h.path))?
                }
                _ if path.is_dir() => {}
                _ => return Err(format!("hostPath {} is not a directory", h.path)),
            }
            path
        } else {
            return Err(format!("volume {:?}: unsupported type", v.name));
        };
        out.push(Mount {
            host_path: host,
            container_path: m.mount_path.clone(),
            read_only: m.read_only.unwrap_or(false),
        });
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
        let v = |c: &Container, e: Option<&[String]>, d: Option<&[String]>| argv(c, e, d);
        assert_eq!(v(&container(None, None), Some(&ep), Some(&cmd)), ["/ep", "def"]);
        assert_eq!(v(&container(Some(&["/c"]), None), Some(&ep), Some(&cmd)), ["/c"]);
        assert_eq!(v(&container(None, Some(&["a"])), Some(&ep), Some(&cmd)), ["/ep", "a"]);
        assert_eq!(v(&container(Some(&["/c"]), Some(&["a"])), Some(&ep), Some(&cmd)), ["/c", "a"]);
        assert_eq!(v(&container(None, Some(&["x", "y"])), None, None), ["app", "x", "y"]);
    }
}
