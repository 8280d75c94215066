//! Deployments, Jobs and imagePullSecrets through the real daemon: the controller
//! makes, rolls out, replaces and deletes real pods (Wasm and Linux), and a pull secret
//! opens a real registry that asks for credentials.

use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::Value;

use crate::common::{PASSWORD, Registry, USER};
use crate::harness::{Agent, Apps, WASMLET, phase, push_busybox, state};

fn deployment(name: &str, replicas: u32, image: &str, version: &str) -> String {
    format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: {name}\nspec:\n  replicas: {replicas}\n  selector:\n    matchLabels:\n      app: {name}\n  template:\n    metadata:\n      labels:\n        app: {name}\n    spec:\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        image: {image}\n        env:\n        - name: VERSION\n          value: \"{version}\"\n"
    )
}

fn job(name: &str, spec: &str, image: &str, args: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\nspec:\n{spec}  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers:\n      - name: app\n        image: {image}\n        args: {args}\n"
    )
}

/// Pods whose controlling owner is `kind`/`name`.
fn owned(agent: &Agent, kind: &str, name: &str) -> Vec<Value> {
    agent
        .pods()
        .into_iter()
        .filter(|p| {
            p["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|o| o.iter().any(|r| r["kind"] == kind && r["name"] == name && r["controller"] == true))
        })
        .collect()
}

fn object(agent: &Agent, kind: &str, name: &str) -> Value {
    let all: Value = serde_json::from_str(&agent.ok(&["get", kind, "-o", "json"])).unwrap();
    all.as_array().into_iter().flatten().find(|o| o["metadata"]["name"] == name).cloned().unwrap_or_default()
}

fn running(pods: &[Value]) -> usize {
    pods.iter().filter(|p| phase(p) == "Running" && p["metadata"]["deletionTimestamp"].is_null()).count()
}

fn hash(p: &Value) -> String {
    p["metadata"]["labels"]["pod-template-hash"].as_str().unwrap_or_default().to_string()
}

fn name(p: &Value) -> String {
    p["metadata"]["name"].as_str().unwrap_or_default().to_string()
}

fn job_condition(j: &Value) -> Option<(String, String)> {
    j["status"]["conditions"].as_array().into_iter().flatten().find_map(|c| {
        (["Complete", "Failed"].contains(&c["type"].as_str().unwrap_or_default()) && c["status"] == "True")
            .then(|| (c["type"].as_str().unwrap().to_string(), c["reason"].as_str().unwrap_or_default().to_string()))
    })
}

/// Polls `f` until it returns `Some`, for up to `secs`.
fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out after {secs} s waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn a_wasm_deployment_scales_replaces_pods_and_rolls_out_without_losing_availability() {
    let apps = Apps::push(&["sleep"]);
    let agent = Agent::start();
    let image = apps.image("sleep", "v1");
    assert_eq!(agent.apply(&deployment("web", 3, &image, "1")), "deployment/web created\n");
    let pods = eventually(30, "3 running replicas", || {
        let pods = owned(&agent, "Deployment", "web");
        (running(&pods) == 3 && pods.len() == 3).then_some(pods)
    });
    let first_hash = hash(&pods[0]);
    for p in &pods {
        let n = name(p);
        let parts: Vec<&str> = n.split('-').collect();
        assert_eq!((parts.len(), parts[0], parts[1], parts[2].len()), (3, "web", first_hash.as_str(), 5), "{n}");
        assert_eq!(p["metadata"]["labels"]["app"], "web");
    }
    let table = eventually(10, "READY 3/3", || {
        let t = agent.ok(&["get", "deployments"]);
        t.contains("3/3").then_some(t)
    });
    assert!(table.starts_with("NAME") && table.contains("UP-TO-DATE") && table.contains("web"), "{table}");
    assert_eq!(agent.apply(&deployment("web", 3, &image, "1")), "deployment/web unchanged\n");

    // a deleted pod is replaced
    let victim = name(&pods[0]);
    agent.ok(&["delete", "pod", &victim]);
    eventually(30, "a replacement pod", || {
        let pods = owned(&agent, "Deployment", "web");
        (running(&pods) == 3 && pods.iter().all(|p| name(p) != victim)).then_some(())
    });

    // scaling up and down
    assert_eq!(agent.apply(&deployment("web", 5, &image, "1")), "deployment/web configured\n");
    eventually(30, "5 replicas", || (running(&owned(&agent, "Deployment", "web")) == 5).then_some(()));
    agent.apply(&deployment("web", 2, &image, "1"));
    eventually(30, "2 replicas", || (owned(&agent, "Deployment", "web").len() == 2).then_some(()));

    // a template change rolls out: with 2 replicas, 25% means one surge pod and no
    // unavailable one, so two pods run throughout
    agent.apply(&deployment("web", 2, &image, "2"));
    let mut lowest = usize::MAX;
    let rolled = eventually(60, "the rollout", || {
        let pods = owned(&agent, "Deployment", "web");
        lowest = lowest.min(running(&pods));
        let done = pods.len() == 2 && running(&pods) == 2 && pods.iter().all(|p| hash(p) != first_hash);
        done.then_some(pods)
    });
    assert!(lowest >= 2, "availability fell to {lowest} running pods during the rollout");
    assert_eq!(hash(&rolled[0]), hash(&rolled[1]));
    assert_eq!(rolled[0]["spec"]["containers"][0]["env"][0]["value"], "2");
    let d = eventually(10, "the status to catch up", || {
        let d = object(&agent, "deployments", "web");
        (d["status"]["updatedReplicas"] == 2 && d["status"]["availableReplicas"] == 2).then_some(d)
    });
    assert_eq!(d["metadata"]["generation"], 4, "created, scaled twice, changed");
    assert_eq!(d["status"]["observedGeneration"], 4);
    let conditions = d["status"]["conditions"].as_array().unwrap();
    assert!(conditions.iter().any(|c| c["type"] == "Available" && c["status"] == "True"), "{conditions:?}");
    let events = agent.ok(&["get", "events"]);
    assert!(events.contains("deployment/web") && events.contains("ScalingReplicaSet"), "{events}");

    // deleting the Deployment deletes its pods
    assert_eq!(agent.ok(&["delete", "deployment", "web"]), "deployment.apps \"web\" deleted\n");
    assert!(owned(&agent, "Deployment", "web").is_empty());
    std::thread::sleep(Duration::from_millis(300));
    assert!(agent.pods().is_empty(), "no pod comes back once its Deployment is gone");
}

#[test]
fn wasm_jobs_honour_completions_parallelism_backoff_limit_and_indexes() {
    let apps = Apps::push(&["exit", "hello"]);
    let agent = Agent::start();

    // four completions, two at a time
    let ok = job("ok", "  completions: 4\n  parallelism: 2\n", &apps.image("exit", "v1"), "[\"0\"]");
    assert_eq!(agent.apply(&ok), "job/ok created\n");
    let mut most = 0;
    eventually(60, "the Job to complete", || {
        let active = owned(&agent, "Job", "ok").iter().filter(|p| !["Succeeded", "Failed"].contains(&phase(p))).count();
        most = most.max(active);
        job_condition(&object(&agent, "jobs", "ok")).filter(|(t, _)| t == "Complete")
    });
    assert!(most <= 2, "{most} pods ran at once with parallelism 2");
    let pods = owned(&agent, "Job", "ok");
    assert_eq!(pods.len(), 4, "completed pods stay, for their logs");
    assert!(pods.iter().all(|p| phase(p) == "Succeeded"));
    assert!(pods.iter().all(|p| p["metadata"]["labels"]["job-name"] == "ok"));
    let table = agent.ok(&["get", "jobs"]);
    assert!(table.contains("Complete") && table.contains("4/4"), "{table}");
    // a Job's template is immutable
    let changed = ok.replace("[\"0\"]", "[\"1\"]");
    let path = agent.state_dir().join("changed.yaml");
    std::fs::write(&path, changed).unwrap();
    let out = agent.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("spec.template") && err.contains("field is immutable"), "{err}");

    // failures: the pod is replaced after the 10 s back-off, then the Job fails
    let bad = job("bad", "  backoffLimit: 1\n", &apps.image("exit", "v1"), "[\"3\"]");
    agent.apply(&bad);
    let (_, reason) = eventually(60, "the Job to fail", || {
        job_condition(&object(&agent, "jobs", "bad")).filter(|(t, _)| t == "Failed")
    });
    assert_eq!(reason, "BackoffLimitExceeded");
    let mut pods = owned(&agent, "Job", "bad");
    assert_eq!(pods.len(), 2, "the first try and one retry");
    assert!(pods.iter().all(|p| phase(p) == "Failed"));
    pods.sort_by_key(|p| p["metadata"]["creationTimestamp"].as_str().unwrap_or_default().to_string());
    let ended = state(&pods[0]).1["finishedAt"].as_str().unwrap().to_string();
    let retried = pods[1]["metadata"]["creationTimestamp"].as_str().unwrap().to_string();
    let secs = |t: &str| chrono::DateTime::parse_from_rfc3339(t).unwrap().timestamp();
    assert!(secs(&retried) - secs(&ended) >= 9, "retried {retried}, {ended} + 10 s back-off");
    let table = agent.ok(&["get", "jobs"]);
    assert!(table.lines().any(|l| l.starts_with("bad") && l.contains("Failed") && l.contains("0/1")), "{table}");

    // an Indexed Job: each pod sees its index
    let indexed = job(
        "idx",
        "  completions: 3\n  parallelism: 3\n  completionMode: Indexed\n  ttlSecondsAfterFinished: 3\n",
        &apps.image("hello", "v1"),
        "[]",
    );
    agent.apply(&indexed);
    let done = eventually(60, "the Indexed Job", || {
        let j = object(&agent, "jobs", "idx");
        job_condition(&j).map(|_| j)
    });
    assert_eq!(done["status"]["completedIndexes"], "0-2");
    let mut seen: Vec<String> = owned(&agent, "Job", "idx")
        .iter()
        .map(|p| {
            let logs = agent.ok(&["logs", &name(p)]);
            let index = p["metadata"]["annotations"]["batch.kubernetes.io/job-completion-index"].as_str().unwrap();
            assert!(logs.contains(&format!("env JOB_COMPLETION_INDEX={index}\n")), "{logs}");
            assert!(name(p).starts_with(&format!("idx-{index}-")));
            index.to_string()
        })
        .collect();
    seen.sort();
    assert_eq!(seen, ["0", "1", "2"]);
    // ttlSecondsAfterFinished: the Job and its pods go
    eventually(30, "the TTL to remove the Job", || {
        (object(&agent, "jobs", "idx").is_null() && owned(&agent, "Job", "idx").is_empty()).then_some(())
    });
}

#[test]
fn linux_deployments_and_jobs_run_busybox() {
    let registry = Registry::start();
    let image = push_busybox(&registry, "amd64", "latest");
    let agent = Agent::start();
    let d = deployment("box", 2, &image, "1").replace(
        "        env:\n",
        "        command: [\"/bin/sh\", \"-c\", \"echo version $VERSION; exec sleep 3600\"]\n        env:\n",
    );
    agent.apply(&d);
    let first = eventually(60, "2 busybox replicas", || {
        let pods = owned(&agent, "Deployment", "box");
        (running(&pods) == 2).then_some(pods)
    });
    agent.apply(&d.replace("value: \"1\"", "value: \"2\""));
    let rolled = eventually(90, "the busybox rollout", || {
        let pods = owned(&agent, "Deployment", "box");
        let done = pods.len() == 2 && running(&pods) == 2 && pods.iter().all(|p| hash(p) != hash(&first[0]));
        done.then_some(pods)
    });
    let logs = eventually(10, "the new pod's log", || {
        let l = agent.ok(&["logs", &name(&rolled[0])]);
        (!l.is_empty()).then_some(l)
    });
    assert_eq!(logs, "version 2\n");
    let j = job("count", "  completions: 2\n  parallelism: 2\n", &image, "[\"-c\", \"echo done\"]");
    agent.apply(&j);
    eventually(60, "the busybox Job", || {
        job_condition(&object(&agent, "jobs", "count")).filter(|(t, _)| t == "Complete")
    });
    agent.ok(&["delete", "deployment", "box"]);
    agent.ok(&["delete", "job", "count"]);
    assert!(agent.pods().is_empty());
    eventually(10, "no container monitor left", || {
        let ps = std::process::Command::new("ps").args(["-eo", "args"]).output().unwrap();
        let out = String::from_utf8_lossy(&ps.stdout).to_string();
        (!out.lines().any(|l| l.starts_with("conmon") && l.contains(agent.state_dir().to_str().unwrap()))).then_some(())
    });
}

#[test]
fn image_pull_secrets_open_their_registry_only() {
    let registry = Registry::start_with_auth();
    let image = format!("{}/private/hello:v1", registry.host);
    let wasm = crate::common::wasm_app("hello", "wasm32-wasip1");
    let out = std::process::Command::new(WASMLET)
        .args(["push", "--creds", &format!("{USER}:{PASSWORD}"), wasm.to_str().unwrap(), &image])
        .output()
        .unwrap();
    assert!(out.status.success(), "push: {}", String::from_utf8_lossy(&out.stderr));
    let agent = Agent::start();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
    let config = |host: &str| {
        let json = format!(r#"{{"auths":{{"{host}":{{"auth":"{auth}"}}}}}}"#);
        base64::engine::general_purpose::STANDARD.encode(json)
    };
    let secrets = format!(
        "apiVersion: v1\nkind: Secret\nmetadata:\n  name: good\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: elsewhere\ntype: kubernetes.io/dockerconfigjson\ndata:\n  .dockerconfigjson: {}\n",
        config(&registry.host),
        // the same host on another port is another registry
        config("127.0.0.1:1"),
    );
    agent.apply(&secrets);
    let pod = |name: &str, secrets: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: Never\n{secrets}  containers:\n  - name: app\n    image: {image}\n"
        )
    };
    let waiting = |p: &Value| {
        let (s, d) = state(p);
        s == "waiting" && ["ErrImagePull", "ImagePullBackOff"].contains(&d["reason"].as_str().unwrap_or_default())
    };
    agent.apply(&pod("anonymous", ""));
    agent.apply(&pod("wrong", "  imagePullSecrets:\n  - name: elsewhere\n"));
    for name in ["anonymous", "wrong"] {
        agent.wait_pod(name, "a refused pull", waiting);
        let events = agent.ok(&["get", "events"]);
        let failed = events.lines().find(|l| l.contains(&format!("pod/{name} ")) && l.contains("Failed to pull image"));
        assert!(failed.is_some_and(|l| l.to_lowercase().contains("unauthorized")), "{name}: {events}");
    }
    agent.apply(&pod("private", "  imagePullSecrets:\n  - name: absent\n  - name: elsewhere\n  - name: good\n"));
    agent.wait_pod("private", "the pull with the secret", |p| phase(p) == "Succeeded");
    assert!(agent.ok(&["logs", "private"]).starts_with("hello from wasm"));
    let events = agent.ok(&["get", "events"]);
    assert!(
        events.contains("FailedToRetrieveImagePullSecret")
            && events.contains("Unable to retrieve some image pull secrets (absent)"),
        "{events}"
    );
    assert!(!events.contains(PASSWORD) && !events.contains(&auth), "no credential in events");
    let bad = pod("bad", "  imagePullSecrets:\n  - name: \"\"\n");
    let path = agent.state_dir().join("bad.yaml");
    std::fs::write(&path, bad).unwrap();
    let out = agent.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("spec.imagePullSecrets[0].name: Required value"));
}
