//! Our records as the Kubernetes API would show them: a `v1/Pod` with `status`.

use serde_json::{Value, json};

use crate::pod::PodRecord;
use crate::pod::state::{ContainerStatus, Phase, Role, State, Terminated};

use crate::time::rfc3339 as time;

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

fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>, since: u64) -> Value {
    json!({
        "type": kind, "status": if ok { "True" } else { "False" }, "reason": reason, "message": message,
        "lastTransitionTime": time(since),
    })
}

/// The pod object with its status.
pub fn pod(rec: &PodRecord) -> Value {
    let mut v = serde_json::to_value(&rec.pod).expect("pod serialises");
    v["apiVersion"] = json!("v1");
    v["kind"] = json!("Pod");
    v["metadata"]["creationTimestamp"] = json!(time(rec.created_at));
    if rec.deleting {
        v["metadata"]["deletionTimestamp"] = json!(time(crate::time::now_ms()));
    }
    let s = &rec.status;
    let terminal = s.phase.is_terminal();
    let roles: Vec<Role> = rec.plan.containers.iter().map(|c| c.role).collect();
    let pairs = || roles.iter().zip(&s.containers);
    // readiness counts app containers and sidecars
    let unready: Vec<&str> =
        pairs().filter(|(r, c)| **r != Role::Init && !c.ready).map(|(_, c)| c.name.as_str()).collect();
    let uninitialized: Vec<&str> = pairs()
        .filter(|(r, c)| match r {
            Role::Init => !matches!(&c.state, State::Terminated(t) if t.exit_code == 0),
            Role::Sidecar => !c.started,
            Role::App => false,
        })
        .map(|(_, c)| c.name.as_str())
        .collect();
    let initialized = s.initialized || uninitialized.is_empty();
    let ready = unready.is_empty() && !terminal;
    let not_ready = if terminal {
        (if s.phase == Phase::Succeeded { "PodCompleted" } else { "PodFailed" }).to_string()
    } else {
        "ContainersNotReady".into()
    };
    let message =
        (!terminal && !unready.is_empty()).then(|| format!("containers with unready status: [{}]", unready.join(" ")));
    let conditions = vec![
        condition("PodReadyToStartContainers", true, None, None, rec.created_at),
        condition(
            "Initialized",
            initialized,
            (!initialized).then_some("ContainersNotInitialized"),
            (!initialized).then(|| format!("containers with incomplete status: [{}]", uninitialized.join(" "))),
            rec.created_at,
        ),
        condition("Ready", ready, (!ready).then_some(not_ready.as_str()), message.clone(), rec.created_at),
        condition("ContainersReady", ready, (!ready).then_some(not_ready.as_str()), message, rec.created_at),
        condition("PodScheduled", true, None, None, rec.created_at),
    ];
    let statuses = |want: &dyn Fn(Role) -> bool| -> Vec<Value> {
        pairs().filter(|(r, _)| want(**r)).map(|(_, c)| container_status(c, &rec.uid)).collect()
    };
    let init = statuses(&|r| r != Role::App);
    v["status"] = json!({
        "phase": phase(s.phase),
        "reason": s.reason,
        "message": s.message,
        "conditions": conditions,
        "startTime": s.start_time.map(time),
        "podIP": rec.pod_ip,
        "podIPs": rec.pod_ip.as_ref().map(|ip| vec![json!({"ip": ip})]),
        "qosClass": crate::pod::qos_class(&rec.pod),
        "initContainerStatuses": (!init.is_empty()).then_some(init),
        "containerStatuses": statuses(&|r| r == Role::App),
    });
    v
}
