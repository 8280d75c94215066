//! Deployments and Jobs in local mode: one controller task that makes, replaces and
//! deletes the pods they own, the way the Deployment/ReplicaSet and Job controllers of
//! the control plane do. The decisions are pure functions ([`deployment`], [`job`]) of
//! the object, its pods and the time; this module reads the state database, acts on
//! their steps and writes the objects' status.
//!
//! The controller wakes when a Deployment or Job is applied, when a pod it owns changes
//! (the pod manager tells it on every save of an owned pod), and at the times the
//! decisions ask for (back-offs, deadlines, minReadySeconds). Passes are serialised
//! and coalesced.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{EnvVar, EnvVarSource, ObjectFieldSelector, Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;

use crate::pod::state::{Phase, Role, State};
use crate::pod::{Manager, PodRecord};
use crate::spec::Object;
use crate::time::now_ms;

pub mod deployment;
pub mod job;

/// The label and annotation the Job controller puts on Indexed pods.
pub const COMPLETION_INDEX: &str = "batch.kubernetes.io/job-completion-index";

/// A pod as a controller sees it.
#[derive(Clone, Debug, Default)]
pub struct Owned {
    /// `namespace/name`.
    pub key: String,
    /// `pod-template-hash`.
    pub hash: Option<String>,
    /// The completion index of an Indexed Job's pod.
    pub index: Option<i32>,
    /// Phase Succeeded or Failed.
    pub terminal: bool,
    pub succeeded: bool,
    /// Since when the pod has been Ready, as this controller saw it (Unix ms).
    pub ready_since: Option<u64>,
    pub deleting: bool,
    pub created_at: u64,
    /// When a terminal pod's last container ended.
    pub finished_at: Option<u64>,
    /// Container restarts, summed.
    pub restarts: u32,
    /// A terminal pod's reason and message.
    pub failure: Option<(String, String)>,
}

/// What a controller pass decided for one object.
#[derive(Debug, Default)]
pub struct Step<S> {
    /// Pods to make: name and (Indexed Jobs) completion index.
    pub create: Vec<(String, Option<i32>)>,
    /// Pods to delete, by key.
    pub delete: Vec<String>,
    pub status: S,
    /// Run again at this time (Unix ms) even if nothing changes.
    pub wake_at: Option<u64>,
    /// The object's time is up (ttlSecondsAfterFinished): delete it and its pods.
    pub remove_object: bool,
    /// An event for the object: type, reason, message.
    pub event: Option<(&'static str, String, String)>,
}

impl<S> Step<S> {
    fn wake(&mut self, at: u64) {
        self.wake_at = Some(self.wake_at.map_or(at, |w| w.min(at)));
    }
}

pub use crate::time::to_k8s as time;

/// The characters Kubernetes uses for generated name suffixes and template hashes (no
/// vowels, no look-alikes).
const ALPHANUMS: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";

/// Five random characters, as `generateName` adds.
pub fn suffix() -> String {
    (0..5).map(|_| ALPHANUMS[fastrand::usize(..ALPHANUMS.len())] as char).collect()
}

/// The `pod-template-hash`: FNV-1a (32 bits) of the template, its decimal digits
/// mapped onto [`ALPHANUMS`], as the Deployment controller computes it.
pub fn template_hash(t: &PodTemplateSpec) -> String {
    let bytes = serde_json::to_vec(t).expect("templates serialise");
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h.to_string().bytes().map(|b| ALPHANUMS[usize::from(b) % ALPHANUMS.len()] as char).collect()
}

/// The controller's memory between passes.
#[derive(Default)]
struct Memory {
    /// When each owned pod was first seen Ready, by key.
    ready_since: HashMap<String, u64>,
    /// Deployments' replacement back-off, by uid.
    deployments: HashMap<String, deployment::Memory>,
    /// Pods this controller asked to delete, until they are gone.
    deleting: HashSet<String>,
}

/// A pod the API server scheduled here: local pods never carry a node name.
pub fn bound_by_api_server(pod: &Pod) -> bool {
    pod.spec.as_ref().is_some_and(|s| s.node_name.as_deref().is_some_and(|n| !n.is_empty()))
}

pub use crate::spec::workload::controller_of;

/// Starts the Deployment and Job controller beside the pod manager.
pub fn start(mgr: &Arc<Manager>) {
    tokio::spawn(run(mgr.clone()));
    mgr.wake_workloads();
}

/// Runs the controller until the process ends.
pub async fn run(mgr: Arc<Manager>) {
    let mut memory = Memory::default();
    let mut wake: Option<u64> = None;
    loop {
        let wait = mgr.workloads_changed();
        match wake {
            Some(t) => {
                let _ = tokio::time::timeout(Duration::from_millis(t.saturating_sub(now_ms())), wait).await;
            }
            None => wait.await,
        }
        // let a burst of pod updates land, then look once
        tokio::time::sleep(Duration::from_millis(20)).await;
        wake = match pass(&mgr, &mut memory).await {
            Ok(w) => w,
            Err(e) => {
                tracing::warn!(error = %e, "workload controller pass failed; retrying in 1 s");
                Some(now_ms() + 1000)
            }
        };
    }
}

async fn pass(mgr: &Arc<Manager>, memory: &mut Memory) -> crate::pod::Result<Option<u64>> {
    let now = now_ms();
    let deployments: Vec<Deployment> = mgr.workloads()?;
    let jobs: Vec<Job> = mgr.workloads()?;
    let records = mgr.list()?;
    let mut owned: HashMap<String, Vec<Owned>> = HashMap::new();
    let mut present = HashSet::new();
    for rec in &records {
        // a pod bound by an API server (`spec.nodeName`) belongs to that cluster's
        // controllers: its Job or ReplicaSet is not ours to know, and must not make
        // us take the pod for an orphan
        if bound_by_api_server(&rec.pod) {
            continue;
        }
        let Some(owner) = controller_of(&rec.pod) else { continue };
        present.insert(rec.key());
        owned.entry(owner.uid.clone()).or_default().push(observe(rec, memory, now));
    }
    memory.ready_since.retain(|k, _| present.contains(k));
    memory.deleting.retain(|k| present.contains(k));

    let mut wake: Option<u64> = None;
    let mut create: Vec<Object> = Vec::new();
    let mut delete: Vec<String> = Vec::new();
    let mut known = HashSet::new();
    for mut d in deployments {
        let uid = d.metadata.uid.clone().unwrap_or_default();
        known.insert(uid.clone());
        let pods = owned.remove(&uid).unwrap_or_default();
        let step = deployment::reconcile(&d, &pods, memory.deployments.entry(uid.clone()).or_default(), now);
        let spec = d.spec.clone();
        let hash = template_hash(&spec.template);
        let new_before = pods.iter().filter(|p| !p.deleting && !p.terminal && p.hash.as_ref() == Some(&hash)).count();
        if !step.create.is_empty() {
            let to = new_before + step.create.len();
            let message = format!("Scaled up replica set {}-{hash} to {to}", name(&d.metadata));
            mgr.workload_event(&d.metadata, "Deployment", "Normal", "ScalingReplicaSet", &message);
        }
        for (pod_name, _) in &step.create {
            let labels = BTreeMap::from([("pod-template-hash".to_string(), hash.clone())]);
            let owner = owner_ref("apps/v1", "Deployment", &d.metadata);
            create.push(Object::Pod(Box::new(pod_from(&spec.template, pod_name, &d.metadata, owner, labels))));
        }
        delete.extend(step.delete);
        wake = earliest(wake, step.wake_at);
        if d.status.as_ref() != Some(&step.status) {
            d.status = Some(step.status);
            mgr.put_workload(&d.metadata, &d)?;
        }
    }
    for mut j in jobs {
        let uid = j.metadata.uid.clone().unwrap_or_default();
        known.insert(uid.clone());
        let pods = owned.remove(&uid).unwrap_or_default();
        let step = job::reconcile(&j, &pods, now);
        if step.remove_object {
            tracing::info!(job = %name(&j.metadata), "ttlSecondsAfterFinished passed: deleting the Job");
            mgr.remove_workload("Job", &j.metadata).await?;
            delete.extend(pods.iter().map(|p| p.key.clone()));
            continue;
        }
        let spec = j.spec.clone().unwrap_or_default();
        for (pod_name, index) in &step.create {
            let owner = owner_ref("batch/v1", "Job", &j.metadata);
            let mut labels = BTreeMap::from([
                ("batch.kubernetes.io/controller-uid".to_string(), uid.clone()),
                ("batch.kubernetes.io/job-name".to_string(), name(&j.metadata)),
                ("controller-uid".to_string(), uid.clone()),
                ("job-name".to_string(), name(&j.metadata)),
            ]);
            if let Some(i) = index {
                labels.insert(COMPLETION_INDEX.into(), i.to_string());
            }
            let mut pod = pod_from(&spec.template, pod_name, &j.metadata, owner, labels);
            if let Some(i) = index {
                indexed(&mut pod, &name(&j.metadata), *i);
            }
            mgr.workload_event(&j.metadata, "Job", "Normal", "SuccessfulCreate", &format!("Created pod: {pod_name}"));
            create.push(Object::Pod(Box::new(pod)));
        }
        if let Some((kind, reason, message)) = &step.event
            && j.status.as_ref().and_then(job::finished).is_none()
        {
            mgr.workload_event(&j.metadata, "Job", kind, reason, message);
        }
        delete.extend(step.delete);
        wake = earliest(wake, step.wake_at);
        if j.status.as_ref() != Some(&step.status) {
            j.status = Some(step.status);
            mgr.put_workload(&j.metadata, &j)?;
        }
    }
    // pods whose owner is gone (deleted while the agent was down) go too, as the
    // garbage collector would take them
    for (uid, pods) in owned {
        if !known.contains(&uid) {
            delete.extend(pods.iter().filter(|p| !p.deleting).map(|p| p.key.clone()));
        }
    }
    mgr.flush().await?;
    if !create.is_empty() {
        mgr.apply(create).await?;
    }
    for key in delete {
        if memory.deleting.insert(key.clone()) {
            mgr.delete_in_background(key);
        }
    }
    Ok(wake)
}

fn earliest(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

fn name(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> String {
    m.name.clone().unwrap_or_default()
}

/// The pod as the controllers see it.
fn observe(rec: &PodRecord, memory: &mut Memory, now: u64) -> Owned {
    let s = &rec.status;
    let terminal = s.phase.is_terminal();
    let ready = !terminal
        && !rec.deleting
        && rec.plan.containers.iter().zip(&s.containers).all(|(p, c)| p.role == Role::Init || c.ready);
    let ready_since = if ready { Some(*memory.ready_since.entry(rec.key()).or_insert(now)) } else { None };
    if !ready {
        memory.ready_since.remove(&rec.key());
    }
    let finished_at = terminal.then(|| {
        s.containers
            .iter()
            .filter_map(|c| match &c.state {
                State::Terminated(t) => Some(t.finished_at),
                _ => None,
            })
            .max()
            .unwrap_or(now)
    });
    let failure = (s.phase == Phase::Failed).then(|| match (&s.reason, &s.message) {
        (Some(r), m) => (r.clone(), m.clone().unwrap_or_default()),
        _ => ("Error".into(), "a container failed".into()),
    });
    let labels = rec.pod.metadata.labels.as_ref();
    Owned {
        key: rec.key(),
        hash: labels.and_then(|l| l.get("pod-template-hash")).cloned(),
        index: labels.and_then(|l| l.get(COMPLETION_INDEX)).and_then(|i| i.parse().ok()),
        terminal,
        succeeded: s.phase == Phase::Succeeded,
        ready_since,
        deleting: rec.deleting || memory.deleting.contains(&rec.key()),
        created_at: rec.created_at,
        finished_at,
        restarts: s.containers.iter().map(|c| c.restart_count).sum(),
        failure,
    }
}

fn owner_ref(
    api_version: &str,
    kind: &str,
    m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> OwnerReference {
    OwnerReference {
        api_version: api_version.into(),
        kind: kind.into(),
        name: name(m),
        uid: m.uid.clone().unwrap_or_default(),
        controller: Some(true),
        block_owner_deletion: Some(true),
    }
}

/// A pod made from a template (already defaulted and validated with its owner).
fn pod_from(
    t: &PodTemplateSpec,
    pod_name: &str,
    owner_meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
    owner: OwnerReference,
    labels: BTreeMap<String, String>,
) -> Pod {
    let mut meta = t.metadata.clone().unwrap_or_default();
    meta.name = Some(pod_name.into());
    meta.namespace = owner_meta.namespace.clone();
    meta.generate_name = Some(format!("{}-", pod_name.rsplit_once('-').map_or(pod_name, |(p, _)| p)));
    meta.labels.get_or_insert_with(Default::default).extend(labels);
    meta.owner_references = Some(vec![owner]);
    Pod { metadata: meta, spec: t.spec.clone(), status: None }
}

/// What the Job controller adds to an Indexed Job's pod: the index annotation, the
/// `JOB_COMPLETION_INDEX` env var from it, and the hostname `<job>-<index>`.
fn indexed(pod: &mut Pod, job: &str, index: i32) {
    pod.metadata.annotations.get_or_insert_with(Default::default).insert(COMPLETION_INDEX.into(), index.to_string());
    let Some(spec) = pod.spec.as_mut() else { return };
    spec.hostname.get_or_insert_with(|| format!("{job}-{index}"));
    let var = EnvVar {
        name: "JOB_COMPLETION_INDEX".into(),
        value: None,
        value_from: Some(EnvVarSource {
            field_ref: Some(ObjectFieldSelector {
                api_version: Some("v1".into()),
                field_path: format!("metadata.annotations['{COMPLETION_INDEX}']"),
            }),
            ..Default::default()
        }),
    };
    for c in spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut()) {
        let env = c.env.get_or_insert_with(Vec::new);
        if !env.iter().any(|e| e.name == var.name) {
            env.insert(0, var.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_hashes_are_stable_and_look_like_upstream_ones() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "app", "image": "x/y:1"}]}
        }))
        .unwrap();
        let h = template_hash(&t);
        assert_eq!(h, template_hash(&t.clone()));
        assert!(h.len() >= 8 && h.bytes().all(|b| ALPHANUMS.contains(&b)), "{h}");
        let mut other = t.clone();
        other.spec.as_mut().unwrap().containers[0].image = Some("x/y:2".into());
        assert_ne!(h, template_hash(&other));
    }

    #[test]
    fn indexed_pods_get_the_index_env_and_hostname() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "job-2-abcde"},
            "spec": {"containers": [{"name": "app", "image": "x/y:1", "env": [{"name": "A", "value": "1"}]}]}
        }))
        .unwrap();
        indexed(&mut pod, "job", 2);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.hostname.as_deref(), Some("job-2"));
        let env = spec.containers[0].env.as_ref().unwrap();
        assert_eq!(env[0].name, "JOB_COMPLETION_INDEX");
        assert_eq!(pod.metadata.annotations.as_ref().unwrap()[COMPLETION_INDEX], "2");
    }
}
