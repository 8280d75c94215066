//! `apply`: objects in, durably stored, pods admitted and started; and the records a new
//! pod, Deployment or Job gets.

use std::sync::Arc;

use k8s_openapi::api::core::v1::Pod;

use super::state::{ContainerPlan, Plan, PodStatus, PullPolicy, RestartPolicy, Role};
use super::{Applied, Error, Manager, Msg, PodRecord, Result, key, requests, state, volume};
use crate::spec::Object;
use crate::store::Table;

impl Manager {
    /// Accepts objects: ConfigMaps and Secrets first (a pod may refer to them), then
    /// Deployments and Jobs, then pods. Each is stored (durably) before this returns;
    /// pods are then started. An unchanged object is left alone; a changed pod is
    /// replaced, a changed ConfigMap or Secret reaches the volumes of running pods and
    /// wakes pods waiting for it, a changed Deployment rolls out. Nothing is stored if
    /// any object may not be applied.
    pub async fn apply(self: &Arc<Self>, objects: Vec<Object>) -> Result<Vec<Applied>> {
        // refused before anything is written, rather than half-stored on a full disk
        self.store.room()?;
        let mut out = Vec::new();
        let mut pods = Vec::new();
        let mut writes = Vec::new();
        for o in objects {
            let (kind, key) = (o.kind(), o.key());
            let value = match o {
                Object::Pod(p) => {
                    pods.push(*p);
                    continue;
                }
                Object::ConfigMap(c) => serde_json::to_value(c).expect("serialises"),
                Object::Secret(s) => serde_json::to_value(s).expect("serialises"),
                Object::Deployment(d) => serde_json::to_value(d).expect("serialises"),
                Object::Job(j) => serde_json::to_value(j).expect("serialises"),
            };
            let old = self.objects.get_json(kind, &key)?;
            let (action, value) = match kind {
                "Deployment" | "Job" => workload_revision(kind, &key, old, value)?,
                _ => match old {
                    Some(old) if old == value => ("unchanged", value),
                    Some(_) => ("configured", value),
                    None => ("created", value),
                },
            };
            writes.push((kind, key, action, value));
        }
        let mut changed_namespaces = std::collections::BTreeSet::new();
        let mut workloads = false;
        for (kind, key, action, value) in writes {
            if action != "unchanged" {
                self.objects.put_json(kind, &key, &value)?;
                match kind {
                    "Deployment" | "Job" => workloads = true,
                    _ => {
                        changed_namespaces.insert(key.split('/').next().unwrap_or("default").to_string());
                    }
                }
            }
            out.push(Applied { kind: kind.into(), pod: key, action: action.into() });
        }
        let mut fresh = Vec::new();
        // what admitted pods request, read only once a pod requests something
        let mut used: Option<(u64, u64)> = None;
        let files = crate::node::open_files();
        for pod in pods {
            let k = key(
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or_default(),
            );
            let existing: Option<PodRecord> = self.store.get(Table::Pods, &k)?;
            let action = match existing {
                Some(old) if same_manifest(&old.pod, &pod) && !old.deleting => {
                    out.push(Applied { kind: "Pod".into(), pod: k, action: "unchanged".into() });
                    continue;
                }
                Some(_) => {
                    self.delete(&k).await?;
                    "configured"
                }
                None => "created",
            };
            let mut rec = new_record(pod);
            let wants = requests(&rec.pod);
            let refusal = self.admit_pods(files).or_else(|| self.admit_security(&rec.pod));
            if let Some((reason, message)) = refusal {
                let fail = state::Event::Fail { reason: reason.clone(), message: message.clone() };
                rec.status.apply(&rec.plan.clone(), fail);
                self.event(&rec, "Warning", &reason, &message);
            } else if wants != (0, 0) {
                let u = match used {
                    Some(u) => u,
                    None => self.requested()?,
                };
                match self.admit(wants, u) {
                    Some((reason, message)) => {
                        let fail = state::Event::Fail { reason: reason.clone(), message: message.clone() };
                        rec.status.apply(&rec.plan.clone(), fail);
                        self.event(&rec, "Warning", &reason, &message);
                        used = Some(u);
                    }
                    None => used = Some((u.0.saturating_add(wants.0), u.1.saturating_add(wants.1))),
                }
            }
            let admitted = !rec.status.phase.is_terminal();
            if admitted && rec.pod.spec.as_ref().and_then(|s| s.host_users) == Some(false) {
                // the pod's own range of host ids, stored with it before it starts
                match self.allocate_userns() {
                    Some(base) => rec.userns = Some(base),
                    None => return Err(Error::Invalid("no free user namespace range left on this node".into())),
                }
            }
            self.save(&rec)?;
            fresh.push(rec);
            out.push(Applied { kind: "Pod".into(), pod: k, action: action.into() });
        }
        self.store.flush().await?;
        for ns in changed_namespaces {
            self.config_changed(&ns);
        }
        if workloads {
            self.workloads.notify_one();
        }
        let now = std::time::Instant::now();
        self.accepted.lock().unwrap_or_else(|e| e.into_inner()).extend(fresh.iter().map(|r| (r.uid.clone(), now)));
        for rec in fresh {
            self.spawn(rec);
        }
        Ok(out)
    }

    /// CPU (millicores) and memory (bytes) requested by the pods that hold the node.
    pub(super) fn requested(&self) -> Result<(u64, u64)> {
        let (mut cpu, mut mem) = (0u64, 0u64);
        for r in self.list()?.iter().filter(|r| !r.deleting && !r.status.phase.is_terminal()) {
            let (c, m) = requests(&r.pod);
            cpu = cpu.saturating_add(c);
            mem = mem.saturating_add(m);
        }
        Ok((cpu, mem))
    }

    /// The node's admission: a pod whose requests (CPU millicores, memory bytes) do not
    /// fit what is left of the allocatable (`used`: what admitted pods request) is
    /// refused with the kubelet's reason and message.
    pub(super) fn admit(&self, (cpu, mem): (u64, u64), (cpu_used, mem_used): (u64, u64)) -> Option<(String, String)> {
        for (name, want, used, capacity) in
            [("cpu", cpu, cpu_used, self.node.cpu_millis), ("memory", mem, mem_used, self.node.memory_bytes)]
        {
            if want > 0 && used.saturating_add(want) > capacity {
                return Some((
                    format!("OutOf{name}"),
                    format!(
                        "Pod was rejected: Node didn't have enough resource: {name}, requested: {want}, used: {used}, capacity: {capacity}"
                    ),
                ));
            }
        }
        None
    }

    /// The node's pod-count admission: a pod beyond the node's `pods` capacity, or one
    /// that would leave the agent short of open files, is refused with the kubelet's
    /// reason (`OutOfpods`) and a message naming the limit. `files`: the open files and
    /// their limit.
    pub(super) fn admit_pods(&self, (open, limit): (u64, u64)) -> Option<(String, String)> {
        let cap = &self.policy.capacity;
        let used = self.holding.lock().unwrap_or_else(|e| e.into_inner()).len();
        if used + 1 > cap.pods as usize {
            return Some((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods, requested: 1, used: {used}, capacity: {} (set by {})",
                    cap.pods, cap.limit
                ),
            ));
        }
        if open + crate::node::FILES_RESERVE > limit {
            return Some((
                "OutOfpods".into(),
                format!(
                    "Node didn't have enough resource: pods: the agent has {open} files open of its limit of {limit} (RLIMIT_NOFILE)"
                ),
            ));
        }
        None
    }

    /// The node's security admission, in the kubelet's reasons: privileged containers
    /// where they are not allowed, sysctls that are not allowlisted or not namespaced,
    /// and AppArmor or SELinux settings the host cannot enforce.
    pub(super) fn admit_security(&self, pod: &Pod) -> Option<(String, String)> {
        let spec = pod.spec.as_ref()?;
        let psc = spec.security_context.as_ref();
        let containers = spec.init_containers.iter().flatten().chain(&spec.containers);
        let reject = |reason: &str, message: String| Some((reason.to_string(), format!("Pod was rejected: {message}")));
        for c in containers.clone() {
            let sc = c.security_context.as_ref();
            if sc.and_then(|s| s.privileged) == Some(true) && !self.policy.allow_privileged {
                return reject(
                    "Forbidden",
                    format!(
                        "container {:?} is privileged, and this node does not allow privileged containers (--allow-privileged=false)",
                        c.name
                    ),
                );
            }
            let apparmor = sc
                .and_then(|s| s.app_armor_profile.as_ref())
                .or_else(|| psc.and_then(|s| s.app_armor_profile.as_ref()));
            if apparmor.is_some_and(|p| p.type_ == "Localhost") && !self.policy.apparmor {
                return reject("AppArmor", "Cannot enforce AppArmor: AppArmor is not enabled on the host".into());
            }
            let selinux =
                sc.and_then(|s| s.se_linux_options.as_ref()).or_else(|| psc.and_then(|s| s.se_linux_options.as_ref()));
            if selinux.is_some() && std::path::Path::new("/sys/fs/selinux/enforce").exists() {
                return reject(
                    "SELinux",
                    "SELinux labels are not applied by wasmlet, and this host enforces SELinux".into(),
                );
            }
        }
        let (host_network, host_ipc) = (spec.host_network == Some(true), spec.host_ipc == Some(true));
        for s in psc.and_then(|s| s.sysctls.as_ref()).into_iter().flatten() {
            if let Some(why) = self.policy.refuse_sysctl(&s.name, host_network, host_ipc) {
                return reject("SysctlForbidden", why);
            }
        }
        None
    }

    /// A ConfigMap or Secret of `namespace` changed: volumes that show it are
    /// rewritten (atomically) and waiting pods try again.
    pub(super) fn config_changed(&self, namespace: &str) {
        for rec in self.list().unwrap_or_default() {
            if rec.namespace() != namespace || rec.deleting || rec.status.phase.is_terminal() {
                continue;
            }
            let root = self.pod_dir(&rec.uid).join("volumes");
            for v in rec.pod.spec.iter().flat_map(|s| s.volumes.iter().flatten()) {
                if volume::is_projected(v) && root.join(&v.name).join("..data").exists() {
                    let _guard = self.volume_lock.lock().unwrap_or_else(|e| e.into_inner());
                    if let Err(e) = volume::setup(&*self.core, &rec, &self.node, v, &root) {
                        tracing::warn!(pod = %rec.key(), volume = %v.name, error = %e.message, "cannot update volume");
                    }
                }
            }
            if let Some(tx) = self.workers.lock().unwrap_or_else(|e| e.into_inner()).get(&rec.key()) {
                let _ = tx.send(Msg::ConfigChanged);
            }
        }
    }
}

/// A Deployment or Job as it is to be stored: a new one gets a uid, generation 1 and a
/// creation time; a changed one keeps them (generation + 1 when its spec changed) and
/// its status. A Job's pod template, completions and completion mode are immutable.
fn workload_revision(
    kind: &str,
    key: &str,
    old: Option<serde_json::Value>,
    mut new: serde_json::Value,
) -> Result<(&'static str, serde_json::Value)> {
    let Some(old) = old else {
        new["metadata"]["uid"] = new_uid().into();
        new["metadata"]["generation"] = 1.into();
        new["metadata"]["creationTimestamp"] =
            serde_json::to_value(crate::time::to_k8s(crate::time::now_ms())).expect("serialises");
        return Ok(("created", new));
    };
    let same_meta = ["labels", "annotations"].iter().all(|f| old["metadata"][f] == new["metadata"][f]);
    let same_spec = old["spec"] == new["spec"];
    if same_meta && same_spec {
        return Ok(("unchanged", old));
    }
    if kind == "Job" {
        for field in ["template", "completions", "completionMode"] {
            if old["spec"][field] != new["spec"][field] {
                let name = key.split_once('/').map_or(key, |(_, n)| n);
                return Err(Error::Invalid(format!(
                    "Job.batch {name:?} is invalid: spec.{field}: Invalid value: field is immutable"
                )));
            }
        }
    }
    for f in ["uid", "creationTimestamp"] {
        new["metadata"][f] = old["metadata"][f].clone();
    }
    let generation = old["metadata"]["generation"].as_i64().unwrap_or(1);
    new["metadata"]["generation"] = (if same_spec { generation } else { generation + 1 }).into();
    new["status"] = old["status"].clone();
    Ok(("configured", new))
}

/// Whether two manifests are the same apart from what wasmlet filled in (the uid). A
/// pod from an API server is the same pod while its uid is: the kubelet does not restart
/// a pod for a change of its labels or annotations.
fn same_manifest(stored: &Pod, applied: &Pod) -> bool {
    if applied.metadata.uid.is_some() {
        return stored.metadata.uid == applied.metadata.uid;
    }
    let mut stored = stored.clone();
    stored.metadata.uid = None;
    &stored == applied
}

pub(super) fn new_record(pod: Pod) -> PodRecord {
    let spec = pod.spec.clone().unwrap_or_default();
    let name = pod.metadata.name.clone().unwrap_or_default();
    let ns = pod.metadata.namespace.clone().unwrap_or_else(|| "default".into());
    // a pod from an API server keeps the uid it was given there
    let uid = pod.metadata.uid.clone().filter(|u| u.len() == 36 && u.is_ascii()).unwrap_or_else(new_uid);
    let plan = Plan {
        pod: format!("{name}_{ns}({uid})"),
        restart_policy: match spec.restart_policy.as_deref() {
            Some("OnFailure") => RestartPolicy::OnFailure,
            Some("Never") => RestartPolicy::Never,
            _ => RestartPolicy::Always,
        },
        containers: spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| (c, if c.restart_policy.as_deref() == Some("Always") { Role::Sidecar } else { Role::Init }))
            .chain(spec.containers.iter().map(|c| (c, Role::App)))
            .map(|(c, role)| ContainerPlan {
                name: c.name.clone(),
                image: c.image.clone().unwrap_or_default(),
                pull_policy: match c.image_pull_policy.as_deref() {
                    Some("Always") => PullPolicy::Always,
                    Some("Never") => PullPolicy::Never,
                    _ => PullPolicy::IfNotPresent,
                },
                role,
                readiness_probe: c.readiness_probe.is_some(),
                startup_probe: c.startup_probe.is_some(),
            })
            .collect(),
    };
    let mut pod = pod;
    pod.metadata.uid = Some(uid.clone());
    let status = PodStatus::new(&plan);
    PodRecord {
        uid,
        pod,
        status,
        created_at: crate::time::now_ms(),
        deleting: false,
        runtimes: vec![None; plan.containers.len()],
        plan,
        network: false,
        pod_ip: None,
        userns: None,
        saved: Default::default(),
    }
}

/// A random RFC 4122 version-4 UUID.
fn new_uid() -> String {
    let mut b = [0u8; 16];
    fastrand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex(&b);
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}
