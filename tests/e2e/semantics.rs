//! Kubernetes pod semantics through the real daemon, for Wasm and Linux pods:
//! ConfigMaps and Secrets as env and volumes (and their live updates), the downward
//! API, init containers and sidecars, probes, preStop, activeDeadlineSeconds,
//! termination messages, admission, QoS and the support table.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::Registry;
use crate::harness::{Agent, Apps, phase, push_busybox, state};

const CONFIG: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\ndata:\n  greeting: hello from a configmap\n  mode: fast\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: creds\nstringData:\n  token: s3cr3t\n";

fn pod(name: &str, restart: &str, body: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: demo\n    tier: web\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 2\n{body}"
    )
}

/// Polls `f` until it returns `Some`, for up to 30 s.
fn eventually<T>(what: &str, f: impl Fn() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn init_state(p: &Value, i: usize) -> (String, Value) {
    let st = &p["status"]["initContainerStatuses"][i]["state"];
    st.as_object().and_then(|o| o.iter().next()).map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default()
}

fn condition(p: &Value, kind: &str) -> String {
    let list = p["status"]["conditions"].as_array().cloned().unwrap_or_default();
    list.iter()
        .find(|c| c["type"] == kind)
        .map(|c| c["status"].as_str().unwrap_or_default().to_string())
        .unwrap_or_default()
}

fn events(agent: &Agent) -> String {
    agent.ok(&["get", "events"])
}

#[test]
fn wasm_env_comes_from_configmaps_secrets_and_the_downward_api() {
    let apps = Apps::push(&["hello", "cat"]);
    let agent = Agent::start();
    // a pod that refers to a ConfigMap not there yet waits, then starts once it is applied
    let body = format!(
        "  containers:\n  - name: app\n    image: {}\n    args: [\"$(GREETING)\", \"$$(GREETING)\", \"$(UNSET)\"]\n    resources:\n      limits:\n        memory: 64Mi\n    envFrom:\n    - configMapRef:\n        name: settings\n      prefix: CFG_\n    - secretRef:\n        name: absent\n        optional: true\n    env:\n    - name: GREETING\n      valueFrom:\n        configMapKeyRef:\n          name: settings\n          key: greeting\n    - name: TOKEN\n      valueFrom:\n        secretKeyRef:\n          name: creds\n          key: token\n    - name: POD\n      valueFrom:\n        fieldRef:\n          fieldPath: metadata.name\n    - name: TIER\n      valueFrom:\n        fieldRef:\n          fieldPath: metadata.labels['tier']\n    - name: MEM_MI\n      valueFrom:\n        resourceFieldRef:\n          resource: limits.memory\n          divisor: 1Mi\n    - name: COMBINED\n      value: \"$(POD)/$(TIER)\"\n    - name: MAYBE\n      valueFrom:\n        configMapKeyRef:\n          name: settings\n          key: nope\n          optional: true\n",
        apps.image("hello", "v1")
    );
    assert_eq!(agent.apply(&pod("env", "Never", &body)), "pod/env created\n");
    let p =
        agent.wait_pod("env", "CreateContainerConfigError", |p| state(p).1["reason"] == "CreateContainerConfigError");
    assert_eq!(phase(&p), "Pending");
    assert_eq!(state(&p).1["message"], "configmap \"settings\" not found");
    assert!(events(&agent).contains("Error: configmap \"settings\" not found"));
    assert_eq!(agent.apply(CONFIG), "configmap/settings created\nsecret/creds created\n");
    agent.wait_pod("env", "Succeeded", |p| phase(p) == "Succeeded");
    let logs = agent.ok(&["logs", "env"]);
    for want in [
        "arg[1]=hello from a configmap\n",
        "arg[2]=$(GREETING)\n",
        "arg[3]=$(UNSET)\n",
        "env CFG_greeting=hello from a configmap\n",
        "env CFG_mode=fast\n",
        "env TOKEN=s3cr3t\n",
        "env POD=env\n",
        "env TIER=web\n",
        "env MEM_MI=64\n",
        "env COMBINED=env/web\n",
    ] {
        assert!(logs.contains(want), "missing {want:?} in:\n{logs}");
    }
    assert!(!logs.contains("env MAYBE="), "an optional missing key sets nothing:\n{logs}");
    let cms = agent.ok(&["get", "configmaps"]);
    assert!(cms.contains("settings") && cms.contains("2"), "{cms}");
    assert!(!agent.ok(&["get", "secrets"]).contains("s3cr3t"), "get secrets never prints values");
    assert_eq!(agent.apply(CONFIG), "configmap/settings unchanged\nsecret/creds unchanged\n");
}

#[test]
fn wasm_volumes_show_configmaps_secrets_and_pod_labels() {
    let apps = Apps::push(&["cat"]);
    let agent = Agent::start();
    agent.apply(CONFIG);
    let body = format!(
        "  containers:\n  - name: app\n    image: {}\n    args: [\"/cfg/greeting\", \"/cfg/sub/mode\", \"/sec/token\", \"/all/labels\", \"/all/greeting\", \"/all/name\"]\n    volumeMounts:\n    - name: cfg\n      mountPath: /cfg\n    - name: sec\n      mountPath: /sec\n    - name: all\n      mountPath: /all\n  volumes:\n  - name: cfg\n    configMap:\n      name: settings\n      items:\n      - key: greeting\n        path: greeting\n      - key: mode\n        path: sub/mode\n  - name: sec\n    secret:\n      secretName: creds\n      defaultMode: 0400\n  - name: all\n    projected:\n      sources:\n      - configMap:\n          name: settings\n          items:\n          - key: greeting\n            path: greeting\n      - downwardAPI:\n          items:\n          - path: labels\n            fieldRef:\n              fieldPath: metadata.labels\n          - path: name\n            fieldRef:\n              fieldPath: metadata.name\n",
        apps.image("cat", "p2")
    );
    agent.apply(&pod("vols", "Never", &body));
    let p = agent.wait_pod("vols", "done", |p| phase(p) == "Succeeded" || phase(p) == "Failed");
    let logs = agent.ok(&["logs", "vols"]);
    assert_eq!(phase(&p), "Succeeded", "{logs}");
    // values end without a newline; the labels file has one line per label
    assert_eq!(logs, "hello from a configmapfasts3cr3tapp=\"demo\"\ntier=\"web\"\nhello from a configmapvols\n");
}

#[test]
fn linux_volumes_follow_configmap_updates_without_a_restart() {
    let registry = Registry::start();
    let image = push_busybox(&registry, "amd64", "latest");
    let agent = Agent::start();
    agent.apply(CONFIG);
    let host = tempfile::tempdir().unwrap();
    let body = format!(
        "  containers:\n  - name: app\n    image: {image}\n    command: [\"sh\", \"-c\", \"touch /cfg/x 2>/dev/null && echo WRITABLE; cat /pinned; echo; echo ip=$POD_IP; while true; do echo \\\"now=$(cat /cfg/greeting)\\\"; sleep 0.2; done\"]\n    env:\n    - name: POD_IP\n      valueFrom:\n        fieldRef:\n          fieldPath: status.podIP\n    volumeMounts:\n    - name: cfg\n      mountPath: /cfg\n    - name: cfg\n      mountPath: /pinned\n      subPath: mode\n    - name: host\n      mountPath: /host\n    - name: scratch\n      mountPath: /scratch\n      subPath: nested/dir\n  volumes:\n  - name: cfg\n    configMap:\n      name: settings\n  - name: host\n    hostPath:\n      path: {}\n      type: Directory\n  - name: scratch\n    emptyDir:\n      medium: Memory\n      sizeLimit: 1Mi\n",
        host.path().display()
    );
    agent.apply(&pod("live", "Always", &body));
    agent.wait_pod("live", "Running", |p| state(p).0 == "running");
    eventually("the first value", || agent.ok(&["logs", "live"]).contains("now=hello from a configmap").then_some(()));
    agent.apply(&CONFIG.replace("hello from a configmap", "updated in place").replace("fast", "slow"));
    let logs = eventually("the updated value", || {
        let l = agent.ok(&["logs", "live"]);
        l.contains("now=updated in place").then_some(l)
    });
    assert!(!logs.contains("WRITABLE"), "configMap volumes are read-only:\n{logs}");
    assert!(logs.starts_with("fast\n"), "a subPath mount keeps what it had:\n{logs}");
    let p = agent.pod("live");
    let ip = p["status"]["podIP"].as_str().unwrap_or_default().to_string();
    assert!(ip.starts_with("10.89.") && logs.contains(&format!("ip={ip}\n")), "status.podIP in env: {ip}\n{logs}");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0);
    // the Memory emptyDir is a tmpfs of sizeLimit; writing past it fails
    let out = agent.cli(&[
        "exec",
        "live",
        "--",
        "sh",
        "-c",
        "df -k /scratch | tail -1; dd if=/dev/zero of=/scratch/f bs=1k count=2048 2>&1; echo rc=$?",
    ]);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(text.contains("tmpfs") && text.contains(" 1024 "), "{text}");
    assert!(!text.contains("rc=0"), "{text}");
    // a hostPath of the wrong type keeps the pod waiting with FailedMount
    let bad = body.replace("type: Directory", "type: File").replace("name: live", "name: bad");
    agent.apply(&pod("bad", "Always", &bad));
    let p = agent.wait_pod("bad", "FailedMount", |p| {
        state(p).1["message"].as_str().unwrap_or_default().contains("is not a file")
    });
    assert_eq!(state(&p).1["reason"], "ContainerCreating");
    assert!(events(&agent).contains("FailedMount"));
}

#[test]
fn wasm_init_containers_run_in_order_and_sidecars_stop_after_the_app() {
    let apps = Apps::push(&["cat", "sleep", "exit"]);
    let agent = Agent::start();
    let body = format!(
        "  initContainers:\n  - name: write\n    image: {cat}\n    args: [\"--write\", \"/work/msg\", \"written by init\"]\n    volumeMounts:\n    - name: work\n      mountPath: /work\n  - name: side\n    image: {sleep}\n    restartPolicy: Always\n  containers:\n  - name: app\n    image: {cat}\n    args: [\"/work/msg\"]\n    volumeMounts:\n    - name: work\n      mountPath: /work\n  volumes:\n  - name: work\n    emptyDir: {{}}\n",
        cat = apps.image("cat", "v1"),
        sleep = apps.image("sleep", "v1"),
    );
    agent.apply(&pod("ordered", "Never", &body));
    let p = agent.wait_pod("ordered", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(agent.ok(&["logs", "ordered", "-c", "app"]), "written by init\n");
    let (k, t) = init_state(&p, 0);
    assert_eq!((k.as_str(), t["exitCode"].as_i64()), ("terminated", Some(0)));
    let app_started =
        p["status"]["containerStatuses"][0]["state"]["terminated"]["startedAt"].as_str().unwrap().to_string();
    assert!(t["finishedAt"].as_str().unwrap() <= app_started.as_str());
    // the sidecar is stopped once the app is done, and does not fail the pod; as the
    // kubelet, the pod is Succeeded only once its sidecar has stopped
    assert_eq!(init_state(&p, 1).0, "terminated", "Succeeded while the sidecar runs: {p}");
    assert_eq!(condition(&p, "Initialized"), "True");

    // a failing init container fails a Never pod; the app never starts
    let failing = format!(
        "  initContainers:\n  - name: check\n    image: {}\n    args: [\"4\"]\n  containers:\n  - name: app\n    image: {}\n",
        apps.image("exit", "v1"),
        apps.image("cat", "v1")
    );
    agent.apply(&pod("blocked", "Never", &failing));
    let p = agent.wait_pod("blocked", "Failed", |p| phase(p) == "Failed");
    assert_eq!(init_state(&p, 0).1["exitCode"], 4);
    assert_eq!(state(&p).1["reason"], "PodInitializing");
    let table = agent.ok(&["get", "pods", "blocked"]);
    assert!(table.contains("Init:Error"), "{table}");
    // with OnFailure it is retried with back-off instead
    agent.apply(&pod("retried", "OnFailure", &failing.replace("\"4\"", "\"5\"")));
    let p = agent.wait_pod("retried", "init restarted", |p| {
        p["status"]["initContainerStatuses"][0]["restartCount"].as_u64().unwrap_or(0) >= 1
    });
    assert_eq!(phase(&p), "Pending");
    assert_eq!(condition(&p, "Initialized"), "False");
}

#[test]
fn linux_probes_drive_readiness_and_restart_on_liveness() {
    let registry = Registry::start();
    let image = push_busybox(&registry, "amd64", "latest");
    let agent = Agent::start();
    let body = format!(
        "  containers:\n  - name: web\n    image: {image}\n    command: [\"sh\", \"-c\", \"mkdir -p /www && touch /tmp/alive /www/ready && exec httpd -f -p 8080 -h /www\"]\n    ports:\n    - name: http\n      containerPort: 8080\n    startupProbe:\n      tcpSocket:\n        port: 8080\n      periodSeconds: 1\n      failureThreshold: 10\n    readinessProbe:\n      httpGet:\n        path: /ready\n        port: http\n      periodSeconds: 1\n      failureThreshold: 1\n    livenessProbe:\n      exec:\n        command: [\"test\", \"-f\", \"/tmp/alive\"]\n      periodSeconds: 1\n      failureThreshold: 2\n"
    );
    agent.apply(&pod("probed", "Always", &body));
    let p = agent.wait_pod("probed", "ready", |p| p["status"]["containerStatuses"][0]["ready"] == true);
    assert_eq!(condition(&p, "Ready"), "True");
    assert_eq!(condition(&p, "ContainersReady"), "True");
    assert_eq!(p["status"]["containerStatuses"][0]["started"], true);
    // readiness failing only flips ready
    agent.ok(&["exec", "probed", "--", "rm", "/www/ready"]);
    let p = agent.wait_pod("probed", "unready", |p| p["status"]["containerStatuses"][0]["ready"] == false);
    assert_eq!(condition(&p, "Ready"), "False");
    assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "{}", events(&agent));
    assert!(events(&agent).contains("Readiness probe failed: HTTP probe failed with statuscode: 404"));
    // liveness failing restarts it
    agent.ok(&["exec", "probed", "--", "rm", "/tmp/alive"]);
    let p = agent.wait_pod("probed", "restarted and ready", |p| {
        let c = &p["status"]["containerStatuses"][0];
        c["restartCount"] == 1 && c["ready"] == true
    });
    assert_eq!(condition(&p, "Ready"), "True");
    let ev = events(&agent);
    assert!(ev.contains("Liveness probe failed"), "{ev}");
    assert!(ev.contains("Container web failed liveness probe, will be restarted"), "{ev}");
    let describe = agent.ok(&["describe", "pod", "probed"]);
    assert!(describe.contains("Liveness:") && describe.contains("exec [test -f /tmp/alive]"), "{describe}");
    assert!(describe.contains("QoS Class:      BestEffort"), "{describe}");
}

#[test]
fn termination_prestop_deadline_and_messages() {
    let registry = Registry::start();
    let image = push_busybox(&registry, "amd64", "latest");
    let apps = Apps::push(&["cat", "sleep"]);
    let agent = Agent::start();
    let host = tempfile::tempdir().unwrap();
    let hp = host.path().display();
    let linux = |name: &str, script: &str, extra: &str| {
        pod(
            name,
            "Never",
            &format!(
                "  containers:\n  - name: app\n    image: {image}\n    command: [\"sh\", \"-c\", {script:?}]\n{extra}"
            ),
        )
    };
    // termination messages: the file, the log fallback, and a Wasm guest's file
    agent.apply(&linux("msg", "printf 'custom message' > /dev/termination-log; exit 3", ""));
    agent.apply(&linux(
        "fallback",
        "echo first; echo oops; exit 2",
        "    terminationMessagePolicy: FallbackToLogsOnError\n",
    ));
    agent.apply(&pod(
        "wasm-msg",
        "Never",
        &format!(
            "  containers:\n  - name: app\n    image: {}\n    terminationMessagePath: /msg/termination-log\n    args: [\"--write\", \"/msg/termination-log\", \"wasm says bye\"]\n",
            apps.image("cat", "v1")
        ),
    ));
    // with the default path, a Wasm guest that has no volumes has no preopens at all
    agent.apply(&pod(
        "wasm-fds",
        "Never",
        &format!("  containers:\n  - name: app\n    image: {}\n    args: [\"--fds\"]\n", apps.image("cat", "v1")),
    ));
    let msg = |name: &str| {
        let p = agent.wait_pod(name, "ended", |p| state(p).0 == "terminated");
        state(&p).1["message"].as_str().unwrap_or_default().to_string()
    };
    assert_eq!(msg("msg"), "custom message");
    assert_eq!(msg("fallback"), "first\noops");
    assert_eq!(msg("wasm-msg"), "wasm says bye\n");
    msg("wasm-fds");
    let fds = agent.ok(&["logs", "wasm-fds"]);
    assert!(fds.starts_with("fd 3: closed\nfd 4: closed\n"), "fd 3 must be free: {fds}");

    // preStop runs before SIGTERM, inside the grace period
    let hook = format!(
        "    volumeMounts:\n    - name: host\n      mountPath: /host\n    lifecycle:\n      postStart:\n        exec:\n          command: [\"sh\", \"-c\", \"echo started > /host/poststart\"]\n      preStop:\n        exec:\n          command: [\"sh\", \"-c\", \"echo stopping > /host/prestop\"]\n  volumes:\n  - name: host\n    hostPath:\n      path: {hp}\n"
    );
    agent.apply(&linux(
        "hooked",
        "trap 'echo term >> /host/prestop; exit 0' TERM; while true; do sleep 0.1; done",
        &hook,
    ));
    agent.wait_pod("hooked", "Running", |p| state(p).0 == "running");
    // running is reported only after postStart returned
    assert_eq!(std::fs::read_to_string(host.path().join("poststart")).unwrap(), "started\n");
    agent.ok(&["delete", "pod", "hooked"]);
    let written = std::fs::read_to_string(host.path().join("prestop")).unwrap();
    assert_eq!(written, "stopping\nterm\n", "the hook ran, then SIGTERM");

    // activeDeadlineSeconds, for both runtimes
    agent.apply(
        &linux("late", "sleep 600", "")
            .replace("  restartPolicy: Never\n", "  restartPolicy: Never\n  activeDeadlineSeconds: 1\n"),
    );
    agent.apply(
        &pod(
            "wasm-late",
            "Always",
            &format!("  containers:\n  - name: app\n    image: {}\n", apps.image("sleep", "v1")),
        )
        .replace("  restartPolicy: Always\n", "  restartPolicy: Always\n  activeDeadlineSeconds: 1\n"),
    );
    for name in ["late", "wasm-late"] {
        let p = agent.wait_pod(name, "DeadlineExceeded", |p| phase(p) == "Failed");
        assert_eq!(p["status"]["reason"], "DeadlineExceeded");
        let p = agent.wait_pod(name, "killed", |p| state(p).0 == "terminated");
        assert_eq!(phase(&p), "Failed");
        assert!(agent.ok(&["get", "pods", name]).contains("DeadlineExceeded"));
    }
}

#[test]
fn admission_qos_and_the_support_table() {
    let apps = Apps::push(&["sleep"]);
    let agent = Agent::start();
    let resources = |cpu: &str, mem: &str| {
        format!(
            "  containers:\n  - name: app\n    image: {}\n    resources:\n      requests:\n        cpu: {cpu}\n        memory: {mem}\n      limits:\n        cpu: {cpu}\n        memory: {mem}\n",
            apps.image("sleep", "v1")
        )
    };
    agent.apply(&pod("huge", "Always", &resources("5000", "64Mi")));
    let p = agent.wait_pod("huge", "rejected", |p| phase(p) == "Failed");
    assert_eq!(p["status"]["reason"], "OutOfcpu");
    assert!(
        p["status"]["message"]
            .as_str()
            .unwrap()
            .starts_with("Pod was rejected: Node didn't have enough resource: cpu, requested: 5000000")
    );
    agent.apply(&pod("hungry", "Always", &resources("100m", "100Ei")));
    assert_eq!(agent.wait_pod("hungry", "rejected", |p| phase(p) == "Failed")["status"]["reason"], "OutOfmemory");
    agent.apply(&pod("fits", "Always", &resources("100m", "64Mi")));
    let p = agent.wait_pod("fits", "Running", |p| phase(p) == "Running");
    assert_eq!(p["status"]["qosClass"], "Guaranteed");
    let table = agent.ok(&["explain-support"]);
    assert!(table.contains("spec.initContainers") && table.contains("spec.hostNetwork"), "{table}");
    // a field wasmlet does not honour is refused with its path, nothing is applied
    let bad = pod("bad", "Always", &resources("100m", "64Mi"))
        .replace("  containers:", "  shareProcessNamespace: true\n  containers:");
    let path = agent.state_dir().join("bad.yaml");
    std::fs::write(&path, format!("{CONFIG}---\n{bad}")).unwrap();
    let out = agent.cli(&["apply", "-f", path.to_str().unwrap()]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("document 3: spec.shareProcessNamespace: Forbidden"), "{err}");
    assert!(agent.ok(&["get", "configmaps"]).is_empty(), "nothing of a refused file is applied");
}

/// grpcio's health server (`tests/fixtures/grpc_health_server.py`) on `port`; it answers
/// what `status` holds. Killed on drop.
struct GrpcHealth(std::process::Child);

impl GrpcHealth {
    fn start(port: u16, status: &std::path::Path) -> GrpcHealth {
        // Debian's interpreter, where python3-grpcio installs (not a pyenv shim on PATH)
        let python = std::path::PathBuf::from("/usr/bin/python3");
        assert!(python.is_file(), "/usr/bin/python3 is missing: install it with `apt-get install -y python3`");
        let ok = std::process::Command::new(&python).args(["-c", "import grpc"]).output().unwrap().status.success();
        assert!(ok, "python3's grpc module is missing: install it with `apt-get install -y python3-grpcio`");
        let script = crate::common::workspace_root().join("tests/fixtures/grpc_health_server.py");
        let child = std::process::Command::new(python)
            .arg(script)
            .arg(port.to_string())
            .arg(status)
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        crate::common::wait_until(Duration::from_secs(20), "the gRPC health server", || {
            std::net::TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        GrpcHealth(child)
    }
}

impl Drop for GrpcHealth {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn grpc_probes_follow_a_real_grpc_health_server() {
    let apps = Apps::push(&["sleep"]);
    let agent = Agent::start();
    let dir = tempfile::tempdir().unwrap();
    let status = dir.path().join("status");
    std::fs::write(&status, "SERVING").unwrap();
    let port = crate::common::free_port();
    let _server = GrpcHealth::start(port, &status);
    // a Wasm pod's probes reach the host's loopback, where the server listens
    let readiness = format!(
        "  containers:\n  - name: app\n    image: {}\n    readinessProbe:\n      grpc:\n        port: {port}\n      periodSeconds: 1\n      failureThreshold: 1\n",
        apps.image("sleep", "v1")
    );
    agent.apply(&pod("grpc-ready", "Always", &readiness));
    agent.wait_pod("grpc-ready", "Ready", |p| condition(p, "Ready") == "True");
    std::fs::write(&status, "NOT_SERVING").unwrap();
    agent.wait_pod("grpc-ready", "not Ready", |p| condition(p, "Ready") == "False");
    let ev = events(&agent);
    assert!(ev.contains("Unhealthy") && ev.contains("service unhealthy (responded with \"NOT_SERVING\")"), "{ev}");
    std::fs::write(&status, "SERVING").unwrap();
    agent.wait_pod("grpc-ready", "Ready again", |p| condition(p, "Ready") == "True");

    // an unknown service is an rpc error: liveness fails and the container restarts
    let liveness = format!(
        "  containers:\n  - name: app\n    image: {}\n    livenessProbe:\n      grpc:\n        port: {port}\n        service: payments\n      periodSeconds: 1\n      failureThreshold: 2\n",
        apps.image("sleep", "v1")
    );
    agent.apply(&pod("grpc-live", "Always", &liveness));
    agent.wait_pod("grpc-live", "a liveness restart", |p| crate::harness::restarts(p) >= 1);
    let ev = events(&agent);
    assert!(ev.contains("rpc error: code = NotFound desc = unknown service 'payments'"), "{ev}");
    assert!(ev.contains("failed liveness probe, will be restarted"), "{ev}");
}
