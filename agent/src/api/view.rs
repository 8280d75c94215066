//! Our records as the Kubernetes API would show them: a `v1/Pod` with `status`.

use serde_json::{Value, json};

use crate::pod::PodRecord;
use crate::pod::state::{ContainerStatus, Phase, State, Terminated};

/// RFC 3339 with seconds, as the API server writes times.
fn time(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    chrono::DateTime::<chrono::Utc>::from(t).to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn terminated(t: &Terminated) -> Value {
    json!({"terminated": {
        "exitCode": t.exit_code, "reason": t.reason, "message": (!t.message.is_empty()).then_some(&t.message),
        "startedAt": time(t.started_at), "finishedAt": time(t.finished_at),
    }})
}

fn container_status(c: &ContainerStatus, uid: &str) -> Value {
    let state = match &c.state {
        State::Waiting { reason, message } => {
            json!({"waiting": {"reason": reason, "message": (!message.is_empty()).then_some(message)}})
        }
        State::Running { started_at } => json!({"running": {"startedAt": time(*started_at)}}),
        State::Terminated(t) => terminated(t),
    };
    json!({
        "name": c.name,
        "image": c.image,
        "imageID": c.image_id.clone().unwrap_or_default(),
        "containerID": (c.instances > 0).then(|| format!("wasmlet://{uid}-{}-{}", c.name, c.instances)),
        "state": state,
        "lastState": c.last_state.as_ref().map(terminated).unwrap_or_else(|| json!({})),
        "ready": c.ready,
        "started": c.started,
        "restartCount": c.restart_count,
    })
}

fn phase(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
    }
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, since: u64) -> Value {
    json!({"type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "lastTransitionTime": time(since)})
}

/// The pod object with its status.
pub fn pod(rec: &PodRecord) -> Value {
    let mut v = serde_json::to_value(&rec.pod).expect("pod serialises");
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Pod");
    v["metadata"]["creationTimestamp"] = json!(time(rec.created_at));
    if rec.deleting {
        v["metadata"]["deletionTimestamp"] = json!(time(crate::runtime::now_ms()));
    }
    let s = &rec.status;
    let all_ready = s.containers.iter().all(|c| c.ready);
    let terminal = s.phase.is_terminal();
    let not_ready = if terminal {
        Some(if s.phase == Phase::Succeeded { "PodCompleted" } else { "PodFailed" })
    } else {
        Some("ContainersNotReady")
    };
    let conditions = vec![
        condition("PodReadyToStartContainers", true, None, rec.created_at),
        condition("Initialized", true, None, rec.created_at),
        condition("Ready", all_ready, (!all_ready).then_some(not_ready).flatten(), rec.created_at),
        condition("ContainersReady", all_ready, (!all_ready).then_some(not_ready).flatten(), rec.created_at),
        condition("PodScheduled", true, None, rec.created_at),
    ];
    v["status"] = json!({
        "phase": phase(s.phase),
        "conditions": conditions,
        "startTime": s.start_time.map(time),
        "podIP": rec.pod_ip,
        "podIPs": rec.pod_ip.as_ref().map(|ip| vec![json!({"ip": ip})]),
        "containerStatuses": s.containers.iter().map(|c| container_status(c, &rec.uid)).collect::<Vec<_>>(),
    });
    v
}
