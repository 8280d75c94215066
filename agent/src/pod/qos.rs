//! What a pod requests, and its QoS class, as the kubelet reckons them.

use k8s_openapi::api::core::v1::{Container, Pod};

/// A pod's effective CPU (millicores) and memory (bytes) requests, as the scheduler
/// counts them: the larger of the app containers' and sidecars' sum and any init
/// container's; an unset request is the limit (the API server's default) or zero.
pub fn requests(pod: &Pod) -> (u64, u64) {
    let one = |c: &Container| {
        let r = c.resources.as_ref();
        let get = |what: &str| {
            r.and_then(|r| r.requests.as_ref())
                .and_then(|l| l.get(what))
                .or_else(|| r.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(what)))
        };
        (
            get("cpu").and_then(|q| crate::spec::parse_millicores(&q.0)).unwrap_or(0),
            get("memory").and_then(|q| crate::spec::parse_bytes(&q.0)).unwrap_or(0),
        )
    };
    let Some(spec) = pod.spec.as_ref() else { return (0, 0) };
    let init = spec.init_containers.iter().flatten();
    let long_running = init.clone().filter(|c| c.restart_policy.as_deref() == Some("Always")).chain(&spec.containers);
    let (mut cpu, mut mem) =
        long_running.map(one).fold((0u64, 0u64), |a, b| (a.0.saturating_add(b.0), a.1.saturating_add(b.1)));
    for c in init.filter(|c| c.restart_policy.as_deref() != Some("Always")) {
        let (c, m) = one(c);
        cpu = cpu.max(c);
        mem = mem.max(m);
    }
    (cpu, mem)
}

/// The QoS class: Guaranteed when every container's CPU and memory requests equal its
/// limits, BestEffort when nothing is requested or limited, else Burstable.
pub fn qos_class(pod: &Pod) -> &'static str {
    let Some(spec) = pod.spec.as_ref() else { return "BestEffort" };
    let all: Vec<&Container> = spec.init_containers.iter().flatten().chain(&spec.containers).collect();
    let any = all.iter().any(|c| {
        c.resources.as_ref().is_some_and(|r| {
            r.requests.as_ref().is_some_and(|m| m.keys().any(|k| k == "cpu" || k == "memory"))
                || r.limits.as_ref().is_some_and(|m| m.keys().any(|k| k == "cpu" || k == "memory"))
        })
    });
    if !any {
        return "BestEffort";
    }
    let guaranteed = all.iter().all(|c| {
        let r = c.resources.as_ref();
        ["cpu", "memory"].iter().all(|k| {
            let limit = r.and_then(|r| r.limits.as_ref()).and_then(|l| l.get(*k));
            let request = r.and_then(|r| r.requests.as_ref()).and_then(|l| l.get(*k)).or(limit);
            let (parse_l, parse_r) = match *k {
                "cpu" => (
                    limit.and_then(|q| crate::spec::parse_millicores(&q.0)),
                    request.and_then(|q| crate::spec::parse_millicores(&q.0)),
                ),
                _ => (
                    limit.and_then(|q| crate::spec::parse_bytes(&q.0)),
                    request.and_then(|q| crate::spec::parse_bytes(&q.0)),
                ),
            };
            parse_l.is_some() && parse_l == parse_r
        })
    });
    if guaranteed { "Guaranteed" } else { "Burstable" }
}
