//! Our records as the Kubernetes API would show them: a `v1/Pod` with `status`.

use k8s_openapi::api::core::v1::{
    ContainerState, ContainerStateRunning, ContainerStateTerminated, ContainerStateWaiting,
    ContainerStatus as K8sContainerStatus, Pod, PodCondition, PodIP, PodStatus,
};

use crate::pod::PodRecord;
use crate::pod::state::{ContainerStatus, Phase, Role, State, Terminated};
use crate::time::to_k8s as time;

fn some_text(s: &str) -> Option<String> {
    (!s.is_empty()).then(|| s.to_string())
}

fn terminated(t: &Terminated) -> ContainerState {
    ContainerState {
        terminated: Some(ContainerStateTerminated {
            exit_code: t.exit_code,
            reason: Some(t.reason.clone()),
            message: some_text(&t.message),
            started_at: Some(time(t.started_at)),
            finished_at: Some(time(t.finished_at)),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn container_status(c: &ContainerStatus, uid: &str) -> K8sContainerStatus {
    let state = match &c.state {
        State::Waiting { reason, message } => ContainerState {
            waiting: Some(ContainerStateWaiting { reason: Some(reason.clone()), message: some_text(message) }),
            ..Default::default()
        },
        State::Running { started_at } => ContainerState {
            running: Some(ContainerStateRunning { started_at: Some(time(*started_at)) }),
            ..Default::default()
        },
        State::Terminated(t) => terminated(t),
    };
    K8sContainerStatus {
        name: c.name.clone(),
        image: c.image.clone(),
        image_id: c.image_id.clone().unwrap_or_default(),
        container_id: (c.instances > 0).then(|| format!("wasmlet://{uid}-{}-{}", c.name, c.instances)),
        state: Some(state),
        last_state: Some(c.last_state.as_ref().map(terminated).unwrap_or_default()),
        ready: c.ready,
        started: Some(c.started),
        restart_count: i32::try_from(c.restart_count).unwrap_or(i32::MAX),
        ..Default::default()
    }
}

fn phase(p: Phase) -> &'static str {
    match p {
        Phase::Pending => "Pending",
        Phase::Running => "Running",
        Phase::Succeeded => "Succeeded",
        Phase::Failed => "Failed",
    }
}

fn condition(kind: &str, ok: bool, reason: Option<&str>, message: Option<String>, since: u64) -> PodCondition {
    PodCondition {
        type_: kind.into(),
        status: (if ok { "True" } else { "False" }).into(),
        reason: reason.map(str::to_string),
        message,
        last_transition_time: Some(time(since)),
        ..Default::default()
    }
}

/// The pod as the API server would show it, as JSON (`apiVersion` and `kind` included).
pub fn pod_json(rec: &PodRecord, node_ip: &str) -> serde_json::Value {
    let mut pod = pod(rec);
    if let Some(status) = &mut pod.status {
        status.host_ip = Some(node_ip.into());
        status.host_ips = Some(vec![k8s_openapi::api::core::v1::HostIP { ip: node_ip.into() }]);
    }
    serde_json::to_value(pod).expect("a pod serialises")
}

/// The pod object with its status.
pub fn pod(rec: &PodRecord) -> Pod {
    let mut pod = rec.pod.clone();
    pod.metadata.creation_timestamp = Some(time(rec.created_at));
    if rec.deleting {
        pod.metadata.deletion_timestamp = Some(time(crate::time::now_ms()));
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
    let statuses = |want: &dyn Fn(Role) -> bool| -> Vec<K8sContainerStatus> {
        pairs().filter(|(r, _)| want(**r)).map(|(_, c)| container_status(c, &rec.uid)).collect()
    };
    let init = statuses(&|r| r != Role::App);
    pod.status = Some(PodStatus {
        phase: Some(phase(s.phase).into()),
        reason: s.reason.clone(),
        message: s.message.clone(),
        conditions: Some(conditions),
        start_time: s.start_time.map(time),
        pod_ip: rec.pod_ip.clone(),
        pod_ips: rec.pod_ip.as_ref().map(|ip| vec![PodIP { ip: ip.clone() }]),
        qos_class: Some(crate::pod::qos_class(&rec.pod).into()),
        init_container_statuses: (!init.is_empty()).then_some(init),
        container_statuses: Some(statuses(&|r| r == Role::App)),
        ..Default::default()
    });
    pod
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_new_pod_shows_as_the_api_server_would() {
        let yaml = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: p\nspec:\n  containers:\n  - name: c\n    image: x\n";
        let Some(crate::spec::Object::Pod(pod)) = crate::spec::parse(yaml).unwrap().pop() else { panic!() };
        let mut rec = super::super::apply::new_record(*pod);
        rec.pod_ip = Some("10.88.0.7".into());
        let v = super::pod_json(&rec, "192.0.2.1");
        assert_eq!((v["apiVersion"].as_str(), v["kind"].as_str()), (Some("v1"), Some("Pod")));
        let s = &v["status"];
        assert_eq!(s["phase"], "Pending");
        assert_eq!(s["qosClass"], "BestEffort");
        assert_eq!(s["podIPs"], serde_json::json!([{"ip": "10.88.0.7"}]));
        assert_eq!(s["hostIPs"], serde_json::json!([{"ip": "192.0.2.1"}]));
        assert_eq!(s["containerStatuses"][0]["state"]["waiting"]["reason"], "ContainerCreating");
        assert_eq!(s["containerStatuses"][0]["lastState"], serde_json::json!({}));
        assert!(s.get("reason").is_none() && s.get("initContainerStatuses").is_none(), "absent, not null: {s}");
        let ready = s["conditions"].as_array().unwrap().iter().find(|c| c["type"] == "Ready").unwrap();
        assert_eq!((ready["status"].as_str(), ready["reason"].as_str()), (Some("False"), Some("ContainersNotReady")));
        assert!(v["metadata"]["creationTimestamp"].as_str().unwrap().ends_with('Z'));
    }
}
