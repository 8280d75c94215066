//! Wasm pods through the real daemon: start, logs, restart policies and back-off, exit
//! reasons, memory caps, stopping busy guests, fairness, mounts, validation.

use std::time::{Duration, Instant};

use crate::harness::{Agent, Apps, phase, pod_yaml, restarts, state};

#[test]
fn modules_and_components_run_with_args_env_and_cri_logs() {
    let apps = Apps::push(&["hello"]);
    let agent = Agent::start();
    for (pod, tag) in [("mod", "v1"), ("comp", "p2")] {
        let extra = "    args: [\"one\", \"two words\"]\n    env:\n    - name: GREETING\n      value: hi there\n";
        let out = agent.apply(&pod_yaml(pod, &apps.image("hello", tag), "Never", extra));
        assert_eq!(out, format!("pod/{pod} created\n"));
        let p = agent.wait_pod(pod, "Succeeded", |p| phase(p) == "Succeeded");
        let (kind, detail) = state(&p);
        assert_eq!(
            (kind.as_str(), detail["reason"].as_str(), detail["exitCode"].as_i64()),
            ("terminated", Some("Completed"), Some(0))
        );
        assert!(p["status"]["containerStatuses"][0]["imageID"].as_str().unwrap().contains("@sha256:"));
        let logs = agent.ok(&["logs", pod]);
        assert!(logs.contains("arg[0]=app\narg[1]=one\narg[2]=two words\n"), "{logs}");
        assert!(logs.contains("env GREETING=hi there\n"), "{logs}");
        assert!(!logs.contains("env HOME="), "the guest sees only the pod's environment: {logs}");
        // the file on disk is CRI format
        let state_dir = agent.state_dir().join("pods");
        let file = walk(&state_dir)
            .into_iter()
            .find(|f| {
                f.to_string_lossy().contains(&format!("{}/logs/app/1.log", p["metadata"]["uid"].as_str().unwrap()))
            })
            .unwrap();
        let first = std::fs::read_to_string(file).unwrap().lines().next().unwrap().to_string();
        let parts: Vec<&str> = first.splitn(4, ' ').collect();
        assert_eq!((parts[1], parts[2]), ("stdout", "F"), "{first}");
        assert!(parts[0].ends_with('Z') && parts[0].len() == 30, "RFC3339Nano timestamp: {first}");
    }
    let table = agent.ok(&["get", "pods"]);
    assert!(table.starts_with("NAME   READY   STATUS      RESTARTS   AGE\n"), "{table}");
    assert!(table.contains("comp   0/1     Completed   0"), "{table}");
}

fn walk(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() { out.extend(walk(&p)) } else { out.push(p) }
    }
    out
}

#[test]
fn restart_policies_exit_codes_and_reasons() {
    let apps = Apps::push(&["exit", "crash"]);
    let agent = Agent::start();
    let cases = [
        ("never-fail", "exit", "[\"3\"]", "Never", "Failed", "Error", 3),
        ("never-ok", "exit", "[\"0\"]", "Never", "Succeeded", "Completed", 0),
        ("onfailure-ok", "exit", "[\"0\"]", "OnFailure", "Succeeded", "Completed", 0),
        ("trap", "crash", "[]", "Never", "Failed", "Error", 134),
    ];
    for (name, app, args, policy, _, _, _) in cases {
        agent.apply(&pod_yaml(name, &apps.image(app, "v1"), policy, &format!("    args: {args}\n")));
    }
    for (name, _, _, _, want_phase, reason, code) in cases {
        let p = agent.wait_pod(name, want_phase, |p| phase(p) == want_phase);
        let (_, t) = state(&p);
        assert_eq!((t["reason"].as_str(), t["exitCode"].as_i64()), (Some(reason), Some(code)), "{name}");
        assert_eq!(restarts(&p), 0, "{name}");
    }
    let trap = agent.pod("trap");
    let msg = state(&trap).1["message"].as_str().unwrap_or_default().to_string();
    assert!(msg.contains("wasm trap") || msg.contains("unreachable"), "trap message: {msg}");
    assert!(agent.ok(&["logs", "trap"]).contains("about to crash"));
}

#[test]
fn crash_loop_restarts_at_once_then_backs_off_10s() {
    let apps = Apps::push(&["exit"]);
    let agent = Agent::start();
    agent.apply(&pod_yaml("loop", &apps.image("exit", "v1"), "Always", "    args: [\"7\"]\n"));
    let p = agent.wait_pod("loop", "CrashLoopBackOff", |p| state(p).1["reason"] == "CrashLoopBackOff");
    assert_eq!(restarts(&p), 1, "the first restart is immediate, the second waits");
    assert_eq!(phase(&p), "Running", "restartPolicy Always keeps the pod Running");
    let msg = state(&p).1["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with("back-off 10s restarting failed container=app pod=loop_default("), "{msg}");
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!((last["exitCode"].as_i64(), last["reason"].as_str()), (Some(7), Some("Error")));
    // 10 s later: the second restart, and the back-off doubles
    let started = Instant::now();
    // (until the second instance has run and ended, the waiting state still shows the
    // first back-off: wait for the doubled one)
    agent.wait_pod("loop", "second restart", |p| {
        restarts(p) == 2
            && state(p).1["reason"] == "CrashLoopBackOff"
            && state(p).1["message"].as_str().is_some_and(|m| m.starts_with("back-off 20s"))
    });
    assert!(started.elapsed() >= Duration::from_secs(8), "restarted after {:?}", started.elapsed());
    let prev = agent.ok(&["logs", "loop", "--previous"]);
    assert_eq!(prev, "exiting with 7\n");
    // the event is recorded beside the status, not atomically with it: poll briefly
    let deadline = Instant::now() + Duration::from_secs(5);
    let described = loop {
        let d = agent.ok(&["describe", "pod", "loop"]);
        if (d.contains("BackOff") && d.contains("(x3 over")) || Instant::now() > deadline {
            break d;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(described.contains("Restart Count:    2"), "{described}");
    assert!(
        described.contains("BackOff") && described.contains("(x3 over"),
        "three exits, three BackOff events: {described}"
    );
}

#[test]
fn memory_limit_ends_in_oomkilled() {
    let apps = Apps::push(&["hog"]);
    let agent = Agent::start();
    let extra = "    resources:\n      limits:\n        memory: 24Mi\n";
    agent.apply(&pod_yaml("hog", &apps.image("hog", "v1"), "Never", extra));
    let p = agent.wait_pod("hog", "OOMKilled", |p| phase(p) == "Failed");
    let (_, t) = state(&p);
    assert_eq!(t["reason"], "OOMKilled", "{t}");
    let logs = agent.ok(&["logs", "hog"]);
    let last = logs.lines().rfind(|l| l.starts_with("allocated")).unwrap_or_default();
    let mib: u32 = last.split_whitespace().nth(1).and_then(|n| n.parse().ok()).unwrap_or(0);
    assert!((16..=24).contains(&mib), "stopped near the 24 MiB limit, log says {last:?}");
}

#[test]
fn a_busy_loop_neither_starves_others_nor_resists_deletion() {
    let apps = Apps::push(&["spin", "hello"]);
    let agent = Agent::start();
    for i in 0..3 {
        agent.apply(&pod_yaml(&format!("spin{i}"), &apps.image("spin", "v1"), "Always", ""));
    }
    for i in 0..3 {
        agent.wait_pod(&format!("spin{i}"), "Running", |p| state(p).0 == "running");
    }
    let started = Instant::now();
    agent.apply(&pod_yaml("hello", &apps.image("hello", "v1"), "Never", ""));
    agent.wait_pod("hello", "Succeeded beside three spinning guests", |p| phase(p) == "Succeeded");
    assert!(started.elapsed() < Duration::from_secs(10), "hello took {:?} beside busy guests", started.elapsed());
    let started = Instant::now();
    agent.ok(&["delete", "pod", "spin0", "spin1", "spin2"]);
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "deleting spinning guests took {:?} (grace 30 s)",
        started.elapsed()
    );
    assert!(agent.pods().iter().all(|p| !p["metadata"]["name"].as_str().unwrap().starts_with("spin")));
}

#[test]
fn guests_reach_only_their_mounts() {
    let apps = Apps::push(&["cat"]);
    let agent = Agent::start();
    let data = tempfile::tempdir().unwrap();
    std::fs::write(data.path().join("msg.txt"), "mounted hello\n").unwrap();
    let extra = format!(
        "    args: [\"/data/msg.txt\", \"/etc/hostname\", \"/data/../../etc/passwd\"]\n    volumeMounts:\n    - name: data\n      mountPath: /data\n      readOnly: true\n  volumes:\n  - name: data\n    hostPath:\n      path: {}\n",
        data.path().display()
    );
    agent.apply(&pod_yaml("cat", &apps.image("cat", "v1"), "Never", &extra));
    let p = agent.wait_pod("cat", "done", |p| phase(p) == "Failed");
    assert_eq!(state(&p).1["exitCode"], 1, "reading outside the mount fails");
    let logs = agent.ok(&["logs", "cat"]);
    assert!(logs.contains("mounted hello"), "{logs}");
    assert!(logs.contains("cat: /etc/hostname:") && logs.contains("cat: /data/../../etc/passwd:"), "{logs}");
    assert!(!logs.contains("root:"), "host files leaked: {logs}");
}

#[test]
fn invalid_manifests_name_the_field_and_apply_nothing() {
    let apps = Apps::push(&["hello"]);
    let agent = Agent::start();
    let good = pod_yaml("good", &apps.image("hello", "v1"), "Never", "");
    let bad = pod_yaml("bad", "", "Never", "").replace("    image: \n", "");
    let path = agent.state_dir().join("two.yaml");
    std::fs::write(&path, format!("{good}---\n{bad}")).unwrap();
    let out = agent.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("document 2: spec.containers[0].image: Required value"), "{err}");
    assert!(agent.pods().is_empty(), "nothing was applied");
    let typo = good.replace("restartPolicy:", "restartPolicyy:");
    std::fs::write(&path, typo).unwrap();
    let err = String::from_utf8_lossy(&agent.cli(&["apply", "-f", path.to_str().unwrap()]).stderr).into_owned();
    assert!(err.contains("spec.restartPolicyy: unknown field"), "{err}");
    // applying the same manifest twice changes nothing
    std::fs::write(&path, &good).unwrap();
    assert_eq!(agent.ok(&["apply", "-f", path.to_str().unwrap()]), "pod/good created\n");
    assert_eq!(agent.ok(&["apply", "-f", path.to_str().unwrap()]), "pod/good unchanged\n");
}

#[test]
fn a_missing_image_goes_from_errimagepull_to_imagepullbackoff() {
    let apps = Apps::push(&["hello"]);
    let agent = Agent::start();
    agent.apply(&pod_yaml("ghost", &apps.image("nothing", "v1"), "Always", ""));
    let p = agent.wait_pod("ghost", "ImagePullBackOff", |p| state(p).1["reason"] == "ImagePullBackOff");
    assert_eq!(phase(&p), "Pending");
    let msg = state(&p).1["message"].as_str().unwrap().to_string();
    assert!(msg.starts_with("Back-off pulling image"), "{msg}");
    let described = agent.ok(&["describe", "pod", "ghost"]);
    assert!(described.contains("Failed to pull image") && described.contains("not found"), "{described}");
    let logs = agent.cli(&["logs", "ghost"]);
    assert!(String::from_utf8_lossy(&logs.stderr).contains("is waiting to start: ImagePullBackOff"));
}

#[test]
fn logs_tail_timestamps_and_follow() {
    let apps = Apps::push(&["hello", "sleep"]);
    let agent = Agent::start();
    agent.apply(&pod_yaml("h", &apps.image("hello", "v1"), "Never", "    args: [\"a\", \"b\", \"c\"]\n"));
    agent.wait_pod("h", "done", |p| phase(p) == "Succeeded");
    let all = agent.ok(&["logs", "h"]);
    let prev = agent.cli(&["logs", "h", "--previous"]);
    assert!(
        String::from_utf8_lossy(&prev.stderr).contains("previous terminated container \"app\" in pod \"h\" not found")
    );
    let tail = agent.ok(&["logs", "h", "--tail", "2"]);
    assert_eq!(
        tail,
        all.lines().rev().take(2).collect::<Vec<_>>().into_iter().rev().map(|l| format!("{l}\n")).collect::<String>()
    );
    let stamped = agent.ok(&["logs", "h", "--timestamps", "--tail", "1"]);
    let (ts, rest) = stamped.split_once(' ').unwrap();
    assert!(ts.ends_with('Z') && ts.contains('T'), "{stamped}");
    assert_eq!(format!("{rest}"), tail.lines().last().unwrap().to_string() + "\n");
    // -f streams until the container ends
    agent.apply(&pod_yaml("s", &apps.image("sleep", "v1"), "Never", "    args: [\"2\"]\n"));
    agent.wait_pod("s", "running", |p| state(p).0 == "running");
    let started = Instant::now();
    let followed = agent.ok(&["logs", "-f", "s"]);
    assert_eq!(followed, "sleeping 2s\nwoke up\n");
    assert!(started.elapsed() >= Duration::from_millis(500), "follow returned before the container ended");
}
