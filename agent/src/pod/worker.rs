//! One task per pod: plan, act, wait for an exit, a timer or a deletion, repeat.

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Container;
use tokio::sync::mpsc;
use tracing::Instrument;

use super::state::{self, Action, Event, PullPolicy, Terminated};
use super::{Manager, Msg, PodRecord};
use crate::runtime::{Artifact, ContainerConfig, ContainerState, Mount, SandboxConfig, now_ms};

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
        let sandbox = SandboxConfig {
            id: rec.uid.clone(),
            namespace: rec.namespace().into(),
            name: rec.name().into(),
            hostname: rec.name().into(),
        };
        if let Err(e) = mgr.runtime.create_sandbox(&sandbox).await {
            mgr.event(&rec, "Warning", "FailedCreatePodSandBox", &e.to_string());
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
                Some(Msg::Delete { done }) => {
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

fn container_id(uid: &str, name: &str, instance: u32) -> String {
    format!("{uid}-{name}-{instance}")
}

async fn start(mgr: &Manager, rec: &mut PodRecord, i: usize, tx: &mpsc::UnboundedSender<Msg>) {
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
    let config = match container_config(mgr, rec, c, instance) {
        Ok(cfg) => cfg,
        Err(message) => return start_failed(mgr, rec, i, "CreateContainerConfigError", message),
    };
    let id = config.id.clone();
    if let Err(e) = mgr.runtime.create_container(config).await {
        return start_failed(mgr, rec, i, "CreateContainerError", e.to_string());
    }
    mgr.event(rec, "Normal", "Created", &format!("Created container {}", c.name));
    if let Err(e) = mgr.runtime.start_container(&id).await {
        return start_failed(mgr, rec, i, "RunContainerError", e.to_string());
    }
    apply(rec, Event::Started { container: i, at: now_ms() });
    if rec.status.containers.iter().all(|c| matches!(c.state, state::State::Running { .. })) {
        mgr.started(&rec.uid);
    }
    mgr.event(rec, "Normal", "Started", &format!("Started container {}", c.name));
    save(mgr, rec);
    let (runtime, tx) = (mgr.runtime.clone(), tx.clone());
    tokio::spawn(async move {
        if let Ok(state) = runtime.wait_container(&id).await {
            let _ = tx.send(Msg::Exited { container: i, instance, state });
        }
    });
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
    let _ = mgr.runtime.remove_container(&container_id(&rec.uid, &name, instance)).await;
    save(mgr, rec);
    let _ = mgr.store.flush().await;
}

async fn stop_and_teardown(mgr: &Manager, rec: &mut PodRecord) {
    let grace = Duration::from_secs(
        rec.pod.spec.as_ref().and_then(|s| s.termination_grace_period_seconds).unwrap_or(30).max(0) as u64,
    );
    for (i, c) in rec.status.containers.clone().iter().enumerate() {
        if c.instances == 0 {
            continue;
        }
        let id = container_id(&rec.uid, &rec.plan.containers[i].name, c.instances);
        if matches!(c.state, state::State::Running { .. }) {
            mgr.event(rec, "Normal", "Killing", &format!("Stopping container {}", c.name));
        }
        let _ = mgr.runtime.stop_container(&id, grace).await;
        let _ = mgr.runtime.remove_container(&id).await;
    }
    let _ = mgr.runtime.remove_sandbox(&rec.uid).await;
    if let Err(e) = mgr.teardown(rec).await {
        tracing::error!(error = %e, "cannot remove pod state");
    }
}

/// The runtime's view of one container instance: artifact, argv, env, mounts, limits.
fn container_config(mgr: &Manager, rec: &PodRecord, c: &Container, instance: u32) -> Result<ContainerConfig, String> {
    let reference: registry_client::Reference =
        c.image.as_deref().unwrap_or_default().parse().map_err(|e| format!("{e}"))?;
    let image = mgr.images.get(&reference).map_err(|e| e.to_string())?.ok_or("image is not pulled")?;
    let artifact = match image.wasm_blob() {
        Some((path, digest)) => Artifact::Wasm { path, digest: digest.to_string() },
        None => {
            return Err(format!(
                "image {} is a {} image; this node runs Wasm images only so far",
                image.reference,
                image.kind_name()
            ));
        }
    };
    let cfg = image.image.config.config.clone().unwrap_or_default();
    let args = argv(c, cfg.entrypoint.as_deref(), cfg.cmd.as_deref());
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
    })
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
