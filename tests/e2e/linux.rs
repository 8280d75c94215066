//! Linux container pods through the real daemon, runc, conmon, overlayfs and the CNI
//! plugins: exit codes and back-off, SIGTERM and the grace period, OOM, the pod network
//! and hostPorts, surviving an agent kill -9, mixed Wasm + Linux pods, exec, errors.

use std::io::{Read, Write};
use std::time::{Duration, Instant};

use crate::common::{Registry, free_port};
use crate::harness::{Agent, Apps, container_state, phase, pod_yaml, push_busybox, restarts, state};

fn busybox() -> (Registry, String) {
    let registry = Registry::start();
    let image = push_busybox(&registry, "amd64", "latest");
    (registry, image)
}

/// A one-container busybox pod running `script` under `sh -c`.
fn sh_pod(name: &str, image: &str, restart: &str, grace: u32, script: &str, extra: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: {grace}\n  containers:\n  - name: app\n    image: {image}\n    command: [\"sh\", \"-c\", {script:?}]\n{extra}"
    )
}

fn http_get(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(s, "GET / HTTP/1.0\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

#[test]
fn exit_codes_restart_back_off_and_image_defaults() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    agent.apply(&sh_pod("fails", &image, "Always", 1, "echo try; exit 3", ""));
    let p = agent.wait_pod("fails", "two restarts", |p| restarts(p) >= 2);
    let last = &p["status"]["containerStatuses"][0]["lastState"]["terminated"];
    assert_eq!((last["exitCode"].as_i64(), last["reason"].as_str()), (Some(3), Some("Error")), "{last}");
    let p = agent.wait_pod("fails", "CrashLoopBackOff", |p| {
        let (k, d) = state(p);
        k == "waiting" && d["reason"] == "CrashLoopBackOff"
    });
    assert_eq!(phase(&p), "Running");
    assert_eq!(agent.ok(&["logs", "fails", "--previous"]), "try\n");

    // no command: the image's ENTRYPOINT and CMD
    agent.apply(&pod_yaml("defaults", &image, "OnFailure", ""));
    let p = agent.wait_pod("defaults", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(state(&p).1["exitCode"].as_i64(), Some(0));
    assert_eq!(agent.ok(&["logs", "defaults"]), "hello from busybox\n");
    // args replace CMD only
    agent.apply(&pod_yaml(
        "args",
        &image,
        "Never",
        "    args: [\"-c\", \"echo $0 in $(pwd); exit 9\"]\n    workingDir: /tmp\n",
    ));
    let p = agent.wait_pod("args", "Failed", |p| phase(p) == "Failed");
    assert_eq!(state(&p).1["exitCode"].as_i64(), Some(9));
    assert_eq!(agent.ok(&["logs", "args"]), "/bin/sh in /tmp\n");
    // runAsUser: the uid, and (no runAsGroup, no passwd entry) group 0
    let extra = "    securityContext:\n      runAsUser: 1000\n";
    agent.apply(&sh_pod("user", &image, "Never", 0, "echo $(id -u) $(id -g)", extra));
    agent.wait_pod("user", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(agent.ok(&["logs", "user"]), "1000 0\n");
}

#[test]
fn sigterm_is_handled_and_ignoring_it_costs_the_grace_period() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let handled = "trap 'echo got TERM; exit 0' TERM; echo ready; while :; do sleep 0.1; done";
    agent.apply(&sh_pod("polite", &image, "Always", 20, handled, ""));
    let ignored = "trap '' TERM; echo ready; while :; do sleep 0.1; done";
    agent.apply(&sh_pod("stubborn", &image, "Always", 2, ignored, ""));
    for pod in ["polite", "stubborn"] {
        agent.wait_pod(pod, "running", |p| state(p).0 == "running");
        crate::common::wait_until(Duration::from_secs(10), "ready", || agent.ok(&["logs", pod]).contains("ready"));
    }
    let uids: Vec<String> =
        agent.pods().iter().map(|p| p["metadata"]["uid"].as_str().unwrap_or_default().to_string()).collect();
    let t = Instant::now();
    agent.ok(&["delete", "pod", "polite"]);
    let polite = t.elapsed();
    assert!(polite < Duration::from_secs(10), "a container that exits on SIGTERM took {polite:?} (grace 20 s)");
    let t = Instant::now();
    agent.ok(&["delete", "pod", "stubborn"]);
    let stubborn = t.elapsed();
    assert!(
        stubborn >= Duration::from_secs(2) && stubborn < Duration::from_secs(15),
        "a container ignoring SIGTERM is killed after its 2 s grace period, took {stubborn:?}"
    );
    assert!(agent.pods().is_empty());
    let left = std::fs::read_dir(agent.state_dir().join("linux/containers")).unwrap().count();
    assert_eq!(left, 0, "container directories left behind");
    let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(!mounts.contains(agent.state_dir().to_str().unwrap()), "mounts left behind");
    for uid in &uids {
        let left = find_dir(std::path::Path::new("/sys/fs/cgroup"), uid, 6);
        assert!(left.is_none(), "cgroup left behind: {left:?}");
    }
}

/// A directory named `name` under `root`, at most `depth` levels down.
fn find_dir(root: &std::path::Path, name: &str, depth: usize) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(root).ok()?.flatten() {
        let path = entry.path();
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if entry.file_name() == name {
            return Some(path);
        }
        if depth > 0
            && let Some(found) = find_dir(&path, name, depth - 1)
        {
            return Some(found);
        }
    }
    None
}

#[test]
fn a_container_past_its_memory_limit_is_oom_killed() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let extra = "    resources:\n      limits:\n        memory: 32Mi\n";
    agent.apply(&sh_pod("hog", &image, "Never", 1, "a=xxxxxxxxxxxxxxxx; while :; do a=$a$a; done", extra));
    let p = agent.wait_pod("hog", "Failed", |p| phase(p) == "Failed");
    let (kind, detail) = state(&p);
    assert_eq!((kind.as_str(), detail["reason"].as_str()), ("terminated", Some("OOMKilled")), "{detail}");
    assert_eq!(detail["exitCode"].as_i64(), Some(137));
}

#[test]
fn pods_have_a_network_localhost_pod_ips_and_host_ports() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let port = free_port();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: server\n    image: {image}\n    command: [\"sh\", \"-c\", \"mkdir /www && echo served-by-web > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n    ports:\n    - containerPort: 8080\n      hostPort: {port}\n  - name: client\n    image: {image}\n    command: [\"sh\", \"-c\", \"until wget -q -O- http://127.0.0.1:8080/; do sleep 0.1; done; sleep 1000\"]\n"
    );
    agent.apply(&manifest);
    let p = agent.wait_pod("web", "both running", |p| {
        container_state(p, "server").0 == "running" && container_state(p, "client").0 == "running"
    });
    let ip = p["status"]["podIP"].as_str().expect("a pod IP").to_string();
    assert!(ip.starts_with("10.89."), "{ip}");
    assert!(agent.ok(&["get", "pods", "-o", "wide"]).contains(&ip));
    // /etc/hosts names the pod on its IP (written once CNI gave the IP)
    let hosts = agent.ok(&["exec", "web", "-c", "server", "--", "cat", "/etc/hosts"]);
    assert!(hosts.contains(&format!("{ip}\tweb\n")), "{hosts}");
    // containers of a pod share localhost
    crate::common::wait_until(Duration::from_secs(10), "client log", || {
        agent.ok(&["logs", "web", "-c", "client"]).contains("served-by-web")
    });
    // the hostPort, from the host
    let reply = http_get(&format!("127.0.0.1:{port}"));
    assert!(reply.contains("served-by-web"), "{reply}");
    // another pod reaches it by pod IP
    let script = format!("wget -q -O- http://{ip}:8080/");
    agent.apply(&sh_pod("peer", &image, "Never", 0, &script, ""));
    agent.wait_pod("peer", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(agent.ok(&["logs", "peer"]), "served-by-web\n");
    // a hostPort in use on the host: the pod waits with a reason
    let taken = std::net::TcpListener::bind("0.0.0.0:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let extra = format!("    ports:\n    - containerPort: 80\n      hostPort: {taken_port}\n");
    agent.apply(&sh_pod("clash", &image, "Always", 0, "sleep 1000", &extra));
    let p =
        agent.wait_pod("clash", "a start error", |p| restarts(p) >= 1 || state(p).0 == "waiting" && restarts(p) > 0);
    let text = p["status"]["containerStatuses"][0].to_string();
    assert!(text.contains("already in use"), "{text}");
    assert!(p["status"]["podIP"].is_null());
}

#[test]
fn containers_outlive_an_agent_kill_and_are_adopted() {
    let (_r, image) = busybox();
    let mut agent = Agent::start();
    agent.apply(&sh_pod("long", &image, "Always", 0, "echo started; sleep 1000", ""));
    agent.apply(&sh_pod("short", &image, "Never", 0, "sleep 2; exit 7", ""));
    let before = agent.wait_pod("long", "running", |p| state(p).0 == "running");
    agent.wait_pod("short", "running", |p| state(p).0 == "running");
    agent.kill9();
    std::thread::sleep(Duration::from_secs(3));
    agent.restart();
    let after = agent.pod("long");
    let events = agent.ok(&["describe", "pod", "long"]);
    assert_eq!(state(&after).0, "running", "{}\n{events}", after["status"]);
    assert_eq!(restarts(&after), 0, "adopted, not restarted");
    assert_eq!(state(&after).1["startedAt"], state(&before).1["startedAt"]);
    assert_eq!(
        after["status"]["containerStatuses"][0]["containerID"],
        before["status"]["containerStatuses"][0]["containerID"]
    );
    assert_eq!(agent.ok(&["logs", "long"]), "started\n");
    // exited while the agent was gone: its real exit code
    let p = agent.wait_pod("short", "Failed", |p| phase(p) == "Failed");
    assert_eq!(state(&p).1["exitCode"].as_i64(), Some(7), "{}", p["status"]);
    // and it still stops cleanly
    agent.ok(&["delete", "pod", "long"]);
}

#[test]
fn a_wasm_and_a_linux_container_share_an_empty_dir() {
    let apps = Apps::push(&["cat"]);
    let image = push_busybox(&apps.registry, "amd64", "latest");
    let agent = Agent::start();
    let manifest = format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: mixed\nspec:\n  restartPolicy: OnFailure\n  volumes:\n  - name: shared\n    emptyDir: {{}}\n  containers:\n  - name: wasm\n    image: {}\n    args: [\"--write\", \"/data/from-wasm\", \"hello from wasm\"]\n    volumeMounts:\n    - name: shared\n      mountPath: /data\n  - name: linux\n    image: {image}\n    command: [\"sh\", \"-c\", \"until [ -s /shared/from-wasm ]; do sleep 0.1; done; cat /shared/from-wasm; echo hello from linux > /shared/from-linux\"]\n    volumeMounts:\n    - name: shared\n      mountPath: /shared\n",
        apps.image("cat", "v1")
    );
    agent.apply(&manifest);
    agent.wait_pod("mixed", "Succeeded", |p| phase(p) == "Succeeded");
    assert_eq!(agent.ok(&["logs", "mixed", "-c", "linux"]), "hello from wasm\n");
    let uid = agent.pod("mixed")["metadata"]["uid"].as_str().unwrap().to_string();
    let dir = agent.state_dir().join("pods").join(uid).join("volumes/shared");
    assert_eq!(std::fs::read_to_string(dir.join("from-linux")).unwrap(), "hello from linux\n");
}

#[test]
fn exec_runs_in_the_container_with_stdin_and_a_terminal() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    agent.apply(&sh_pod("box", &image, "Always", 0, "echo inside > /tmp/marker; sleep 1000", ""));
    agent.wait_pod("box", "running", |p| state(p).0 == "running");
    crate::common::wait_until(Duration::from_secs(10), "the marker", || {
        agent.cli(&["exec", "box", "--", "test", "-f", "/tmp/marker"]).status.success()
    });
    let out = agent.cli(&["exec", "box", "--", "sh", "-c", "cat /tmp/marker; echo oops >&2; exit 42"]);
    assert_eq!(out.status.code(), Some(42));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "inside\n");
    assert_eq!(String::from_utf8_lossy(&out.stderr), "oops\n");
    // -i: stdin reaches the command
    let mut child = std::process::Command::new(crate::harness::WASMLET)
        .arg("--state-dir")
        .arg(agent.state_dir())
        .args(["exec", "-i", "box", "--", "sh", "-c", "tr a-z A-Z"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(b"piped through\n").unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!((out.status.code(), String::from_utf8_lossy(&out.stdout).as_ref()), (Some(0), "PIPED THROUGH\n"));
    // -t: the command has a terminal
    let out = agent.cli(&["exec", "-t", "box", "--", "sh", "-c", "test -t 0 && tty"]);
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("/dev/pts/"));
    // -i -t from a real terminal: the prompt comes, typed lines reach the shell while
    // it waits for them, and their output comes back
    let cmd = format!("{} --state-dir {} exec -i -t box -- sh", crate::harness::WASMLET, agent.state_dir().display());
    let session = crate::harness::Interactive::start(&cmd);
    session.expect("# ", "the shell's prompt");
    session.type_line("echo typed-$((6*7))");
    session.expect("typed-42", "the output of a typed command");
    session.type_line("exit 7");
    assert_eq!(session.wait(), Some(7), "the typed exit code; screen:\n{}", session.screen());
    // errors name what is wrong
    let out = agent.cli(&["exec", "box", "-c", "nope", "--", "true"]);
    assert!(String::from_utf8_lossy(&out.stderr).contains("container nope is not valid"), "{out:?}");
}

#[test]
fn wrong_platform_and_missing_runc_leave_the_pod_waiting_with_a_reason() {
    let registry = Registry::start();
    let arm = push_busybox(&registry, "arm64", "arm");
    let agent = Agent::start();
    agent.apply(&pod_yaml("arm", &arm, "Always", "    command: [\"true\"]\n"));
    let p = agent.wait_pod("arm", "a pull error", |p| {
        let (k, d) = state(p);
        k == "waiting" && matches!(d["reason"].as_str(), Some("ErrImagePull" | "ImagePullBackOff"))
    });
    assert!(state(&p).1["message"].as_str().unwrap_or_default().contains(&arm));
    let events = agent.ok(&["describe", "pod", "arm"]);
    assert!(events.contains("linux/arm64") && events.contains("sha256:"), "names the platform and digest: {events}");
    drop(agent);

    let image = push_busybox(&registry, "amd64", "latest");
    let agent = Agent::start_with(&["--runc", "/nonexistent/runc"]);
    agent.apply(&pod_yaml("norunc", &image, "Always", ""));
    let p = agent.wait_pod("norunc", "a start error", |p| restarts(p) >= 1);
    let text = p["status"]["containerStatuses"][0].to_string();
    assert!(text.contains("runc not found") && text.contains("apt-get install runc"), "{text}");
    assert_eq!(std::fs::read_dir(agent.state_dir()).unwrap().flatten().filter(|e| e.file_name() == "linux").count(), 0);
}

#[test]
fn images_show_size_and_last_use_and_unused_ones_are_pruned() {
    let apps = Apps::push(&["hello"]);
    let image = push_busybox(&apps.registry, "amd64", "latest");
    let mut agent = Agent::start();
    agent.ok(&["pull", &apps.image("hello", "v1")]);
    agent.apply(&sh_pod("user", &image, "Always", 0, "sleep 1000", ""));
    agent.wait_pod("user", "running", |p| state(p).0 == "running");
    let table = agent.ok(&["images"]);
    let row = |name: &str| table.lines().find(|l| l.contains(name)).unwrap_or_default().to_string();
    assert!(row("busybox").contains(" MB") && !row("busybox").ends_with("never"), "{table}");
    assert!(row("apps/hello").ends_with("never"), "{table}");
    let layers = || std::fs::read_dir(agent.state_dir().join("layers")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(layers(), 1);

    let out = agent.ok(&["image", "prune"]);
    assert!(out.contains("deleted: ") && out.contains("apps/hello:v1") && !out.contains("busybox"), "{out}");
    let table = agent.ok(&["images"]);
    assert!(!table.contains("apps/hello") && table.contains("busybox"), "{table}");
    // the pod's image goes once no pod uses it, with its unpacked layer
    agent.ok(&["delete", "pod", "user"]);
    agent.ok(&["image", "prune"]);
    assert!(!agent.ok(&["images"]).contains("busybox"));
    assert_eq!(layers(), 0, "unpacked layers removed");

    // under disk pressure (thresholds at 0 %) unused images go without being asked; a
    // finished pod still stored keeps its image, across a restart of the agent too
    agent.ok(&["pull", &apps.image("hello", "v1")]);
    agent.apply(&sh_pod("done", &image, "Never", 0, "true", ""));
    agent.wait_pod("done", "Succeeded", |p| phase(p) == "Succeeded");
    agent.flags = vec!["--image-gc-high-threshold".into(), "0".into(), "--image-gc-low-threshold".into(), "0".into()];
    agent.restart();
    crate::common::wait_until(Duration::from_secs(10), "disk-pressure GC", || {
        !agent.ok(&["images"]).contains("apps/hello")
    });
    assert!(agent.ok(&["images"]).contains("busybox"), "the finished pod's image is kept");
    agent.ok(&["delete", "pod", "done"]);
    crate::common::wait_until(Duration::from_secs(40), "GC of the deleted pod's image", || {
        !agent.ok(&["images"]).contains("busybox")
    });
}

/// `logs` gives back what the container wrote, byte for byte, as the kubelet does: bytes
/// that are not UTF-8, `\r\n`, an unfinished last line. (One stray byte used to turn
/// the whole log into an error, and stop `logs -f` for good.)
#[test]
fn logs_give_back_what_the_container_wrote_byte_for_byte() {
    let (_r, image) = busybox();
    let agent = Agent::start();
    let script = r"printf '\377\376 not UTF-8\r\nsecond\n'; printf unfinished";
    agent.apply(&sh_pod("bytes", &image, "Never", 1, script, ""));
    agent.wait_pod("bytes", "Succeeded", |p| phase(p) == "Succeeded");
    let out = agent.cli(&["logs", "bytes"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(out.stdout, b"\xff\xfe not UTF-8\r\nsecond\nunfinished", "{}", String::from_utf8_lossy(&out.stdout));
}
