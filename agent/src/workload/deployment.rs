//! The Deployment controller's decisions, as a pure function of the Deployment, the
//! pods it owns and the time. A template change rolls the pods out (RollingUpdate with
//! maxSurge/maxUnavailable, or Recreate); a replica count change scales them.
//! Wasmlet keeps no ReplicaSet objects: pods carry `pod-template-hash` and are owned by
//! the Deployment itself.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition, DeploymentStatus};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Owned, Step, template_hash, time};
use crate::spec::workload::scaled;

/// What the controller remembers about a Deployment between passes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Memory {
    /// Terminal pods replaced in a row with no pod becoming available in between.
    pub failures: u32,
    /// When the last terminal pod was replaced (Unix ms).
    pub replaced_at: u64,
}

/// Delay before replacing a pod that ended (rejected at admission, say): none for the
/// first, then 10 s doubling to 5 min, so that a pod that cannot run is not re-made in
/// a loop.
fn replace_delay(failures: u32) -> u64 {
    if failures == 0 { 0 } else { (10_000u64 << (failures - 1).min(5)).min(300_000) }
}

pub fn reconcile(d: &Deployment, pods: &[Owned], memory: &mut Memory, now: u64) -> Step<DeploymentStatus> {
    let spec = d.spec.clone();
    let name = d.metadata.name.clone().unwrap_or_default();
    let replicas = spec.replicas.unwrap_or(1).max(0) as usize;
    let hash = template_hash(&spec.template);
    let min_ready = u64::try_from(spec.min_ready_seconds.unwrap_or(0)).unwrap_or(0) * 1000;
    let available = |p: &Owned| p.ready_since.is_some_and(|t| now >= t + min_ready);
    let mut step = Step::default();

    let live: Vec<&Owned> = pods.iter().filter(|p| !p.deleting).collect();
    if live.iter().any(|p| available(p)) {
        memory.failures = 0;
    }
    // terminal pods are replaced, with a back-off
    let mut failure = None;
    for p in live.iter().filter(|p| p.terminal) {
        failure = Some(p.failure.clone().unwrap_or_else(|| ("PodFailed".into(), String::new())));
        let at = memory.replaced_at + replace_delay(memory.failures);
        if now >= at {
            step.delete.push(p.key.clone());
            memory.failures += 1;
            memory.replaced_at = now;
        } else {
            step.wake(at);
        }
    }
    let waiting_to_replace = live.iter().any(|p| p.terminal && !step.delete.contains(&p.key));
    let active: Vec<&Owned> = live.iter().copied().filter(|p| !p.terminal).collect();
    let (new, old): (Vec<&Owned>, Vec<&Owned>) = active.iter().partition(|p| p.hash.as_deref() == Some(hash.as_str()));
    let mut creates = 0usize;

    let recreate = spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate");
    if recreate {
        step.delete.extend(old.iter().map(|p| p.key.clone()));
        // new pods only once every old one is gone
        let old_left = pods.iter().any(|p| p.hash.as_deref() != Some(hash.as_str()) && !p.terminal);
        if !old_left && new.len() < replicas && !waiting_to_replace {
            creates = replicas - new.len();
        }
        step.delete.extend(surplus(&new, replicas, &available));
    } else {
        let ru = spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
        let pct = || IntOrString::String("25%".into());
        let surge = scaled(&ru.max_surge.unwrap_or_else(pct), replicas as i32, true).max(0) as usize;
        let mut unavailable = scaled(&ru.max_unavailable.unwrap_or_else(pct), replicas as i32, false).max(0) as usize;
        if surge == 0 && unavailable == 0 {
            unavailable = 1;
        }
        if old.is_empty() {
            if new.len() < replicas && !waiting_to_replace {
                creates = replicas - new.len();
            }
            step.delete.extend(surplus(&new, replicas, &available));
        } else {
            let total = new.len() + old.len();
            let max_total = replicas + surge;
            if new.len() < replicas && total < max_total {
                creates = (max_total - total).min(replicas - new.len());
            }
            // old pods go while enough pods stay available; unavailable ones first
            let min_available = replicas.saturating_sub(unavailable);
            let new_unavailable = new.iter().filter(|p| !available(p)).count() + creates;
            let mut can = (total + creates).saturating_sub(min_available + new_unavailable);
            let mut ranked = old.clone();
            rank_for_deletion(&mut ranked, &available);
            let mut available_now = active.iter().filter(|p| available(p)).count();
            for p in ranked {
                if can == 0 {
                    break;
                }
                if available(p) {
                    if available_now <= min_available {
                        break;
                    }
                    available_now -= 1;
                }
                step.delete.push(p.key.clone());
                can -= 1;
            }
            step.delete.extend(surplus(&new, replicas, &available));
        }
    }
    step.create = (0..creates).map(|_| (format!("{name}-{hash}-{}", super::suffix()), None)).collect();

    // pods waiting out minReadySeconds become available later
    for p in &active {
        if let Some(t) = p.ready_since
            && now < t + min_ready
        {
            step.wake(t + min_ready);
        }
    }
    step.status = status(d, &active, &hash, replicas, &available, failure, now, &mut step.wake_at);
    step
}

/// Pods beyond `replicas`, the least useful first: not ready, then ready for the
/// shortest time, then the newest.
fn surplus(pods: &[&Owned], replicas: usize, available: &dyn Fn(&Owned) -> bool) -> Vec<String> {
    let mut ranked = pods.to_vec();
    rank_for_deletion(&mut ranked, available);
    ranked.iter().take(pods.len().saturating_sub(replicas)).map(|p| p.key.clone()).collect()
}

fn rank_for_deletion(pods: &mut [&Owned], available: &dyn Fn(&Owned) -> bool) {
    pods.sort_by_key(|p| {
        (
            available(p),
            p.ready_since.is_some(),
            std::cmp::Reverse(p.ready_since.unwrap_or(0)),
            std::cmp::Reverse(p.created_at),
        )
    });
}

#[allow(clippy::too_many_arguments)]
fn status(
    d: &Deployment,
    active: &[&Owned],
    hash: &str,
    replicas: usize,
    available: &dyn Fn(&Owned) -> bool,
    failure: Option<(String, String)>,
    now: u64,
    wake_at: &mut Option<u64>,
) -> DeploymentStatus {
    let spec = d.spec.clone();
    let name = d.metadata.name.clone().unwrap_or_default();
    let previous = d.status.clone().unwrap_or_default();
    let updated = active.iter().filter(|p| p.hash.as_deref() == Some(hash)).count();
    let ready = active.iter().filter(|p| p.ready_since.is_some()).count();
    let avail = active.iter().filter(|p| available(p)).count();
    let ru = spec.strategy.as_ref().and_then(|s| s.rolling_update.clone()).unwrap_or_default();
    let unavailable_allowed = if spec.strategy.as_ref().and_then(|s| s.type_.as_deref()) == Some("Recreate") {
        replicas
    } else {
        scaled(&ru.max_unavailable.unwrap_or(IntOrString::String("25%".into())), replicas as i32, false).max(0) as usize
    };
    let count = |n: usize| Some(n as i32);
    let mut s = DeploymentStatus {
        replicas: count(active.len()),
        updated_replicas: count(updated),
        ready_replicas: count(ready),
        available_replicas: count(avail),
        unavailable_replicas: count(replicas.saturating_sub(avail)),
        observed_generation: d.metadata.generation,
        ..Default::default()
    };
    let counts_changed = (s.replicas, s.updated_replicas, s.ready_replicas, s.available_replicas)
        != (previous.replicas, previous.updated_replicas, previous.ready_replicas, previous.available_replicas)
        || s.observed_generation != previous.observed_generation;
    let old_condition = |t: &str| previous.conditions.iter().flatten().find(|c| c.type_.as_deref() == Some(t)).cloned();
    let condition = |t: &str, ok: bool, reason: &str, message: String, progress: bool| {
        let old = old_condition(t);
        let status = if ok { "True" } else { "False" };
        let same =
            old.as_ref().is_some_and(|o| o.status.as_deref() == Some(status) && o.reason.as_deref() == Some(reason));
        let transition =
            old.as_ref().filter(|_| same).and_then(|o| o.last_transition_time.clone()).unwrap_or(time(now));
        let update = match old.as_ref().filter(|_| same && !progress) {
            Some(o) => o.last_update_time.clone(),
            None => Some(time(now)),
        };
        DeploymentCondition {
            type_: Some(t.into()),
            status: Some(status.into()),
            reason: Some(reason.into()),
            message: Some(message),
            last_transition_time: Some(transition),
            last_update_time: update,
        }
    };
    let minimum = avail >= replicas.saturating_sub(unavailable_allowed);
    let mut conditions = vec![if minimum {
        condition("Available", true, "MinimumReplicasAvailable", "Deployment has minimum availability.".into(), false)
    } else {
        condition(
            "Available",
            false,
            "MinimumReplicasUnavailable",
            "Deployment does not have minimum availability.".into(),
            false,
        )
    }];
    let set = format!("{name}-{hash}");
    let complete = updated == replicas && avail == replicas && active.len() == replicas;
    let progressing = if complete {
        condition(
            "Progressing",
            true,
            "NewReplicaSetAvailable",
            format!("ReplicaSet \"{set}\" has successfully progressed."),
            false,
        )
    } else {
        let last_progress = old_condition("Progressing")
            .filter(|_| !counts_changed)
            .and_then(|c| c.last_update_time)
            .map_or(now, |t| crate::time::from_k8s(&t));
        let deadline =
            last_progress + u64::try_from(spec.progress_deadline_seconds.unwrap_or(600)).unwrap_or(600) * 1000;
        if now >= deadline {
            condition(
                "Progressing",
                false,
                "ProgressDeadlineExceeded",
                format!("ReplicaSet \"{set}\" has timed out progressing."),
                false,
            )
        } else {
            *wake_at = Some(wake_at.map_or(deadline, |w| w.min(deadline)));
            condition(
                "Progressing",
                true,
                "ReplicaSetUpdated",
                format!("ReplicaSet \"{set}\" is progressing."),
                counts_changed,
            )
        }
    };
    conditions.push(progressing);
    if let Some((reason, message)) = failure {
        let text = if message.is_empty() { reason.clone() } else { format!("{reason}: {message}") };
        conditions.push(condition("ReplicaFailure", true, "FailedCreate", text, false));
    }
    s.conditions = Some(conditions);
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Object, parse};

    const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\n  generation: 1\nspec:\n  replicas: 4\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: app\n        image: 127.0.0.1:5000/apps/hello:v1\n";

    fn deployment(yaml: &str) -> Deployment {
        match parse(yaml).unwrap().remove(0) {
            Object::Deployment(d) => *d,
            _ => panic!(),
        }
    }

    fn pod(key: &str, hash: &str, ready_since: Option<u64>) -> Owned {
        Owned { key: key.into(), hash: Some(hash.into()), ready_since, ..Owned::default() }
    }

    #[test]
    fn scales_up_and_down() {
        let d = deployment(DEPLOY);
        let hash = template_hash(&d.spec.template);
        let step = reconcile(&d, &[], &mut Memory::default(), 1000);
        assert_eq!(step.create.len(), 4);
        assert!(step.create.iter().all(|(n, _)| n.starts_with(&format!("web-{hash}-"))));
        let pods: Vec<Owned> = (0..6).map(|i| pod(&format!("p{i}"), &hash, (i < 4).then_some(0))).collect();
        let step = reconcile(&d, &pods, &mut Memory::default(), 1000);
        assert!(step.create.is_empty());
        assert_eq!(step.delete, vec!["p4", "p5"], "the unready pods go first");
        let status = reconcile(&d, &pods[..4], &mut Memory::default(), 1000).status;
        assert_eq!((status.ready_replicas, status.available_replicas), (Some(4), Some(4)));
        let progressing =
            status.conditions.unwrap().into_iter().find(|c| c.type_.as_deref() == Some("Progressing")).unwrap();
        assert_eq!(progressing.reason.as_deref(), Some("NewReplicaSetAvailable"));
    }

    #[test]
    fn a_rolling_update_keeps_three_of_four_available_and_surges_by_one() {
        let d = deployment(DEPLOY);
        let hash = template_hash(&d.spec.template);
        // four old, ready pods: 25% of 4 is one surge pod and one unavailable pod
        let mut pods: Vec<Owned> = (0..4).map(|i| pod(&format!("old{i}"), "oldhash", Some(0))).collect();
        let step = reconcile(&d, &pods, &mut Memory::default(), 1000);
        assert_eq!(step.create.len(), 1, "maxSurge 1");
        assert_eq!(step.delete.len(), 1, "maxUnavailable 1");
        // the surge pod exists but is not ready: nothing more may go
        pods.retain(|p| p.key != step.delete[0]);
        pods.push(pod("new0", &hash, None));
        let step = reconcile(&d, &pods, &mut Memory::default(), 1000);
        assert_eq!((step.create.len(), step.delete.len()), (1, 0));
        pods.push(pod("new1", &hash, None));
        let step = reconcile(&d, &pods, &mut Memory::default(), 1000);
        assert_eq!((step.create.len(), step.delete.len()), (0, 0), "3 available is the floor");
        // new0 ready: one more old pod may go
        pods.iter_mut().find(|p| p.key == "new0").unwrap().ready_since = Some(500);
        let step = reconcile(&d, &pods, &mut Memory::default(), 1000);
        assert_eq!(step.delete.len(), 1);
        assert!(step.delete[0].starts_with("old"));
    }

    #[test]
    fn recreate_waits_for_the_old_pods_to_be_gone() {
        let d = deployment(&DEPLOY.replace("  selector:", "  strategy:\n    type: Recreate\n  selector:"));
        let mut pods: Vec<Owned> = (0..2).map(|i| pod(&format!("old{i}"), "oldhash", Some(0))).collect();
        let step = reconcile(&d, &pods, &mut Memory::default(), 1000);
        assert_eq!((step.create.len(), step.delete.len()), (0, 2));
        pods.iter_mut().for_each(|p| p.deleting = true);
        assert!(reconcile(&d, &pods, &mut Memory::default(), 1000).create.is_empty(), "old pods still terminating");
        assert_eq!(reconcile(&d, &[], &mut Memory::default(), 1000).create.len(), 4);
    }

    #[test]
    fn min_ready_seconds_delays_availability() {
        let d = deployment(&DEPLOY.replace("  replicas: 4\n", "  replicas: 1\n  minReadySeconds: 5\n"));
        let hash = template_hash(&d.spec.template);
        let pods = [pod("p", &hash, Some(1000))];
        let step = reconcile(&d, &pods, &mut Memory::default(), 2000);
        assert_eq!(step.status.available_replicas, Some(0));
        assert_eq!(step.wake_at, Some(6000));
        assert_eq!(reconcile(&d, &pods, &mut Memory::default(), 6000).status.available_replicas, Some(1));
    }

    #[test]
    fn ended_pods_are_replaced_with_a_back_off() {
        let d = deployment(&DEPLOY.replace("replicas: 4", "replicas: 1"));
        let hash = template_hash(&d.spec.template);
        let mut memory = Memory::default();
        let failed = |key: &str| Owned {
            terminal: true,
            failure: Some(("OutOfmemory".into(), "Pod was rejected".into())),
            ..pod(key, &hash, None)
        };
        let step = reconcile(&d, &[failed("a")], &mut memory, 1000);
        assert_eq!((step.delete.clone(), step.create.len()), (vec!["a".to_string()], 1), "the first at once");
        let step = reconcile(&d, &[failed("b")], &mut memory, 2000);
        assert_eq!((step.delete.len(), step.create.len(), step.wake_at.is_some()), (0, 0, true));
        let failure =
            step.status.conditions.unwrap().into_iter().find(|c| c.type_.as_deref() == Some("ReplicaFailure")).unwrap();
        assert_eq!(failure.message.as_deref(), Some("OutOfmemory: Pod was rejected"));
        let step = reconcile(&d, &[failed("b")], &mut memory, 11_000);
        assert_eq!((step.delete.len(), step.create.len()), (1, 1), "10 s later");
        assert_eq!(memory.failures, 2);
    }

    #[test]
    fn progress_deadline_turns_progressing_false() {
        let d = deployment(&DEPLOY.replace("  replicas: 4\n", "  replicas: 1\n  progressDeadlineSeconds: 30\n"));
        let hash = template_hash(&d.spec.template);
        let pods = [pod("p", &hash, None)];
        let mut d2 = d.clone();
        d2.status = Some(reconcile(&d, &pods, &mut Memory::default(), 1000).status);
        let later = reconcile(&d2, &pods, &mut Memory::default(), 31_000).status;
        let c = later.conditions.unwrap().into_iter().find(|c| c.type_.as_deref() == Some("Progressing")).unwrap();
        assert_eq!((c.status.as_deref().unwrap(), c.reason.as_deref()), ("False", Some("ProgressDeadlineExceeded")));
    }
}
