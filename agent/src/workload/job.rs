//! The Job controller's decisions, as a pure function of the Job, the pods it owns and
//! the time: run up to `parallelism` pods until `completions` succeed, replace failed
//! pods after the upstream back-off (10 s doubling to 10 min), and fail the Job past
//! `backoffLimit` or `activeDeadlineSeconds`.

use k8s_openapi::api::batch::v1::{Job, JobCondition, JobStatus};

use super::{Owned, Step, time};

/// The upstream delay before a failed Job pod is replaced: 10 s × 2^(failures − 1),
/// at most 10 min.
pub fn backoff(failures: u32) -> u64 {
    if failures == 0 { 0 } else { (10_000u64 << (failures - 1).min(10)).min(600_000) }
}

use crate::time::from_k8s as millis;

/// The Job's finished condition (`Complete` or `Failed`), if it has one.
pub fn finished(status: &JobStatus) -> Option<&JobCondition> {
    status.conditions.iter().flatten().find(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
}

pub fn reconcile(j: &Job, pods: &[Owned], now: u64) -> Step<JobStatus> {
    let spec = j.spec.clone().unwrap_or_default();
    let name = j.metadata.name.clone().unwrap_or_default();
    let mut status = j.status.clone().unwrap_or_default();
    let mut step = Step::default();
    let live: Vec<&Owned> = pods.iter().filter(|p| !p.deleting).collect();
    let active: Vec<&Owned> = live.iter().copied().filter(|p| !p.terminal).collect();
    let succeeded: Vec<&Owned> = pods.iter().filter(|p| p.succeeded).collect();
    let failed: Vec<&Owned> = pods.iter().filter(|p| p.terminal && !p.succeeded).collect();
    let indexed = spec.completion_mode.as_deref() == Some("Indexed");
    let mut done_indexes: Vec<i32> = succeeded.iter().filter_map(|p| p.index).collect();
    done_indexes.sort_unstable();
    done_indexes.dedup();
    let succeeded_count = if indexed { done_indexes.len() } else { succeeded.len() };
    let count = |n: usize| Some(n as i32);
    status.succeeded = count(succeeded_count);
    status.failed = count(failed.len());
    status.active = count(active.len());
    status.ready = count(active.iter().filter(|p| p.ready_since.is_some()).count());
    status.terminating = count(pods.iter().filter(|p| p.deleting && !p.terminal).count());
    if indexed {
        status.completed_indexes = Some(ranges(&done_indexes));
    }

    if let Some(end) = finished(&status).cloned() {
        step.delete.extend(active.iter().map(|p| p.key.clone()));
        if let Some(ttl) = spec.ttl_seconds_after_finished {
            let at = end.last_transition_time.as_ref().map_or(now, millis) + u64::try_from(ttl).unwrap_or(0) * 1000;
            if now >= at {
                step.remove_object = true;
            } else {
                step.wake(at);
            }
        }
        step.status = status;
        return step;
    }
    if spec.suspend == Some(true) {
        step.delete.extend(active.iter().map(|p| p.key.clone()));
        set_condition(&mut status, "Suspended", "True", "JobSuspended", "Job suspended", now);
        status.start_time = None;
        step.status = status;
        return step;
    }
    if status.conditions.iter().flatten().any(|c| c.type_ == "Suspended" && c.status == "True") {
        set_condition(&mut status, "Suspended", "False", "JobResumed", "Job resumed", now);
    }
    let started = millis(status.start_time.get_or_insert_with(|| time(now)));

    // failure: past the back-off limit or the deadline
    let limit = spec.backoff_limit.unwrap_or(6).max(0) as usize;
    let on_failure = spec.template.spec.as_ref().and_then(|s| s.restart_policy.as_deref()) == Some("OnFailure");
    let restarts: u32 = active.iter().map(|p| p.restarts).sum();
    let past_restarts = on_failure && if limit == 0 { restarts > 0 } else { restarts as usize >= limit };
    let mut fail = None;
    if failed.len() > limit || past_restarts {
        fail = Some(("BackoffLimitExceeded", "Job has reached the specified backoff limit"));
    } else if let Some(d) = spec.active_deadline_seconds {
        let at = started + u64::try_from(d).unwrap_or(0) * 1000;
        if now >= at {
            fail = Some(("DeadlineExceeded", "Job was active longer than specified deadline"));
        } else {
            step.wake(at);
        }
    }
    if let Some((reason, message)) = fail {
        step.delete.extend(active.iter().map(|p| p.key.clone()));
        set_condition(&mut status, "FailureTarget", "True", reason, message, now);
        set_condition(&mut status, "Failed", "True", reason, message, now);
        step.event = Some(("Warning", reason.into(), message.into()));
        return finish(step, status, &spec, now);
    }

    // completion
    let parallelism = spec.parallelism.unwrap_or(1).max(0) as usize;
    let complete = match spec.completions {
        Some(c) => succeeded_count >= c.max(0) as usize,
        None => succeeded_count >= 1 && active.is_empty(),
    };
    if complete {
        step.delete.extend(active.iter().map(|p| p.key.clone()));
        status.completion_time = Some(time(now));
        set_condition(
            &mut status,
            "SuccessCriteriaMet",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        );
        set_condition(
            &mut status,
            "Complete",
            "True",
            "CompletionsReached",
            "Reached expected number of succeeded pods",
            now,
        );
        step.event = Some(("Normal", "Completed".into(), "Job completed".into()));
        return finish(step, status, &spec, now);
    }

    // how many should run
    let wanted = match spec.completions {
        Some(c) => parallelism.min((c.max(0) as usize).saturating_sub(succeeded_count)),
        None if succeeded_count > 0 => 0,
        None => parallelism,
    };
    if active.len() > wanted {
        let mut extra = active.clone();
        extra.sort_by_key(|p| (p.ready_since.is_some(), std::cmp::Reverse(p.created_at)));
        step.delete.extend(extra.iter().take(active.len() - wanted).map(|p| p.key.clone()));
    } else if active.len() < wanted {
        let last_failure = failed.iter().filter_map(|p| p.finished_at).max();
        let at = last_failure.map_or(0, |t| t + backoff(failed.len() as u32));
        if now < at {
            step.wake(at);
        } else if indexed {
            let running: Vec<i32> = active.iter().filter_map(|p| p.index).collect();
            let completions = spec.completions.unwrap_or(0);
            let free = (0..completions).filter(|i| !done_indexes.contains(i) && !running.contains(i));
            for i in free.take(wanted - active.len()) {
                step.create.push((format!("{name}-{i}-{}", super::suffix()), Some(i)));
            }
        } else {
            for _ in active.len()..wanted {
                step.create.push((format!("{name}-{}", super::suffix()), None));
            }
        }
    }
    step.status = status;
    step
}

fn finish(
    mut step: Step<JobStatus>,
    status: JobStatus,
    spec: &k8s_openapi::api::batch::v1::JobSpec,
    now: u64,
) -> Step<JobStatus> {
    if let Some(ttl) = spec.ttl_seconds_after_finished {
        step.wake(now + u64::try_from(ttl).unwrap_or(0) * 1000);
    }
    step.status = status;
    step
}

fn set_condition(status: &mut JobStatus, type_: &str, value: &str, reason: &str, message: &str, now: u64) {
    let conditions = status.conditions.get_or_insert_with(Vec::new);
    if let Some(c) = conditions.iter_mut().find(|c| c.type_ == type_) {
        if c.status != value {
            c.last_transition_time = Some(time(now));
        }
        c.status = value.into();
        c.reason = Some(reason.into());
        c.message = Some(message.into());
        c.last_probe_time = Some(time(now));
        return;
    }
    conditions.push(JobCondition {
        type_: type_.into(),
        status: value.into(),
        reason: Some(reason.into()),
        message: Some(message.into()),
        last_probe_time: Some(time(now)),
        last_transition_time: Some(time(now)),
    });
}

/// `0-2,5`: sorted indexes as the API shows `completedIndexes`.
fn ranges(indexes: &[i32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < indexes.len() {
        let start = indexes[i];
        while i + 1 < indexes.len() && indexes[i + 1] == indexes[i] + 1 {
            i += 1;
        }
        out.push(if indexes[i] == start { start.to_string() } else { format!("{start}-{}", indexes[i]) });
        i += 1;
    }
    out.join(",")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::{Object, parse};

    const JOB: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: batch\nspec:\n  completions: 4\n  parallelism: 2\n  backoffLimit: 2\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: app\n        image: 127.0.0.1:5000/apps/hello:v1\n";

    fn job(yaml: &str) -> Job {
        match parse(yaml).unwrap().remove(0) {
            Object::Job(j) => *j,
            _ => panic!(),
        }
    }

    fn done(key: &str, ok: bool, at: u64) -> Owned {
        Owned { key: key.into(), terminal: true, succeeded: ok, finished_at: Some(at), ..Owned::default() }
    }

    fn running(key: &str) -> Owned {
        Owned { key: key.into(), ..Owned::default() }
    }

    fn condition(s: &JobStatus, t: &str) -> Option<String> {
        s.conditions.iter().flatten().find(|c| c.type_ == t && c.status == "True").and_then(|c| c.reason.clone())
    }

    #[test]
    fn runs_parallelism_pods_until_completions_succeed() {
        let j = job(JOB);
        let step = reconcile(&j, &[], 0);
        assert_eq!(step.create.len(), 2);
        assert!(step.create.iter().all(|(n, i)| n.starts_with("batch-") && i.is_none()));
        let pods = [done("a", true, 1), done("b", true, 1), done("c", true, 2), running("d")];
        let step = reconcile(&j, &pods, 3);
        assert_eq!(step.create.len(), 0, "one left to succeed and it runs");
        assert_eq!((step.status.succeeded, step.status.active), (Some(3), Some(1)));
        let pods = [done("a", true, 1), done("b", true, 1), done("c", true, 2), done("d", true, 4)];
        let step = reconcile(&j, &pods, 5);
        assert_eq!(condition(&step.status, "Complete").as_deref(), Some("CompletionsReached"));
        assert!(step.status.completion_time.is_some());
    }

    #[test]
    fn failed_pods_are_replaced_after_the_back_off_then_the_job_fails() {
        let j = job(JOB);
        let pods = vec![done("a", false, 1000), running("b")];
        let step = reconcile(&j, &pods, 2000);
        assert!(step.create.is_empty());
        assert_eq!(step.wake_at, Some(11_000), "10 s after the failure");
        assert_eq!(reconcile(&j, &pods, 11_000).create.len(), 1);
        let pods = vec![done("a", false, 1000), done("b", false, 12_000), running("c")];
        assert_eq!(reconcile(&j, &pods, 20_000).wake_at, Some(32_000), "then 20 s");
        let pods = vec![done("a", false, 1), done("b", false, 2), done("c", false, 3), running("d")];
        let step = reconcile(&j, &pods, 4);
        assert_eq!(condition(&step.status, "Failed").as_deref(), Some("BackoffLimitExceeded"));
        assert_eq!(step.delete, vec!["d"], "what still runs is stopped");
        assert_eq!(backoff(7), 600_000, "at most 10 min");
    }

    #[test]
    fn on_failure_counts_container_restarts() {
        let j = job(&JOB.replace("restartPolicy: Never", "restartPolicy: OnFailure"));
        let pods = [Owned { restarts: 1, ..running("a") }, running("b")];
        assert!(condition(&reconcile(&j, &pods, 0).status, "Failed").is_none());
        let pods = [Owned { restarts: 1, ..running("a") }, Owned { restarts: 1, ..running("b") }];
        assert_eq!(condition(&reconcile(&j, &pods, 0).status, "Failed").as_deref(), Some("BackoffLimitExceeded"));
    }

    #[test]
    fn a_work_queue_completes_when_one_succeeds_and_the_rest_end() {
        let j = job(&JOB.replace("  completions: 4\n", ""));
        assert_eq!(j.spec.as_ref().unwrap().completions, None);
        assert_eq!(reconcile(&j, &[], 0).create.len(), 2);
        let step = reconcile(&j, &[done("a", true, 1), running("b")], 2);
        assert!(step.create.is_empty() && condition(&step.status, "Complete").is_none());
        let step = reconcile(&j, &[done("a", true, 1), done("b", true, 3)], 4);
        assert!(condition(&step.status, "Complete").is_some());
    }

    #[test]
    fn indexed_jobs_run_each_index_once() {
        let j = job(&JOB.replace("  completions: 4\n", "  completions: 3\n  completionMode: Indexed\n"));
        let step = reconcile(&j, &[], 0);
        assert_eq!(step.create.iter().map(|(_, i)| *i).collect::<Vec<_>>(), vec![Some(0), Some(1)]);
        let pods = [Owned { index: Some(0), ..done("a", true, 1) }, Owned { index: Some(1), ..running("b") }];
        let step = reconcile(&j, &pods, 2);
        assert_eq!(step.create.iter().map(|(_, i)| *i).collect::<Vec<_>>(), vec![Some(2)]);
        assert_eq!(step.status.completed_indexes.as_deref(), Some("0"));
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
    }

    #[test]
    fn deadline_suspend_and_ttl() {
        let j = job(&JOB.replace("  backoffLimit: 2\n", "  activeDeadlineSeconds: 5\n  ttlSecondsAfterFinished: 10\n"));
        let mut first = j.clone();
        first.status = Some(reconcile(&j, &[], 1000).status);
        let step = reconcile(&first, &[running("a")], 3000);
        assert_eq!(step.wake_at, Some(6000));
        let step = reconcile(&first, &[running("a")], 6000);
        assert_eq!(condition(&step.status, "Failed").as_deref(), Some("DeadlineExceeded"));
        let mut ended = first.clone();
        ended.status = Some(step.status);
        assert!(!reconcile(&ended, &[], 15_000).remove_object);
        assert!(reconcile(&ended, &[], 16_000).remove_object, "10 s after it ended");
        let suspended = job(&JOB.replace("  backoffLimit: 2\n", "  suspend: true\n"));
        let step = reconcile(&suspended, &[running("a")], 0);
        assert_eq!((step.create.len(), step.delete.clone()), (0, vec!["a".to_string()]));
        assert_eq!(condition(&step.status, "Suspended").as_deref(), Some("JobSuspended"));
    }
}
