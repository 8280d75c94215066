//! At the node's limits: a pod beyond its capacity is refused as the kubelet refuses it,
//! and running out of descriptors never ends the agent.

use std::time::{Duration, Instant};

use crate::harness::{Agent, Apps, phase, pod_yaml};

fn sleepers(apps: &Apps, names: &[&str]) -> String {
    names
        .iter()
        .map(|n| pod_yaml(n, &apps.image("sleep", "v1"), "Always", "    args: [\"3600\"]\n"))
        .collect::<Vec<_>>()
        .join("\n---\n")
}

#[test]
fn a_pod_beyond_the_node_capacity_fails_with_out_of_pods_and_the_others_keep_running() {
    let apps = Apps::push(&["sleep"]);
    let agent = Agent::start_with(&["--max-pods", "3"]);
    let log = std::fs::read_to_string(agent.state_dir().join("serve.log")).unwrap();
    assert!(log.contains("wasmlet: this node takes 3 pods (set by --max-pods 3)"), "{log}");

    // four in one file: the fourth does not fit
    agent.apply(&sleepers(&apps, &["a", "b", "c", "d"]));
    for name in ["a", "b", "c"] {
        agent.wait_pod(name, "Running", |p| phase(p) == "Running");
    }
    let d = agent.wait_pod("d", "Failed", |p| phase(p) == "Failed");
    assert_eq!(d["status"]["reason"], "OutOfpods", "{}", d["status"]);
    let message = d["status"]["message"].as_str().unwrap();
    assert!(
        message.starts_with("Node didn't have enough resource: pods, requested: 1, used: 3, capacity: 3")
            && message.contains("--max-pods 3"),
        "{message}"
    );
    // one more, alone, is refused the same way; the running ones are untouched
    agent.apply(&sleepers(&apps, &["e"]));
    let e = agent.wait_pod("e", "Failed", |p| phase(p) == "Failed");
    assert_eq!(e["status"]["reason"], "OutOfpods");
    let events = agent.ok(&["describe", "pod", "e"]);
    assert!(events.contains("OutOfpods"), "{events}");
    for name in ["a", "b", "c"] {
        let p = agent.pod(name);
        assert_eq!(phase(&p), "Running", "{name}");
        assert_eq!(p["status"]["containerStatuses"][0]["restartCount"], 0, "{name}");
    }

    // a refused pod holds no place: once one is deleted, a new pod fits
    agent.ok(&["delete", "pod", "a", "d", "e"]);
    agent.apply(&sleepers(&apps, &["f"]));
    agent.wait_pod("f", "Running", |p| phase(p) == "Running");
}

#[test]
fn running_out_of_descriptors_never_ends_the_agent() {
    let apps = Apps::push(&["sleep"]);
    let agent = Agent::start();
    agent.apply(&sleepers(&apps, &["steady"]));
    agent.wait_pod("steady", "Running", |p| phase(p) == "Running");

    // leave the agent a handful of descriptors (the soft limit; the hard one stays), then take them all with connections
    let open = std::fs::read_dir(format!("/proc/{}/fd", agent.pid())).unwrap().count();
    let limit = (open + 8).to_string();
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &agent.pid().to_string(), &format!("--nofile={limit}:")])
        .status()
        .expect("prlimit (util-linux) is needed: apt-get install util-linux");
    assert!(status.success());
    let socket = agent.state_dir().join("wasmlet.sock");
    let held: Vec<std::os::unix::net::UnixStream> =
        (0..64).filter_map(|_| std::os::unix::net::UnixStream::connect(&socket).ok()).collect();
    assert!(!held.is_empty());
    std::thread::sleep(Duration::from_millis(500));
    let log = std::fs::read_to_string(agent.state_dir().join("serve.log")).unwrap();
    assert_eq!(
        log.matches("cannot accept connections on").count(),
        1,
        "the agent says once that it cannot accept:\n{log}"
    );
    // a pod applied now cannot be, but the agent stays up and answers once they go
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    while !agent.cli(&["get", "pods"]).status.success() {
        assert!(Instant::now() < deadline, "the agent stopped answering");
        std::thread::sleep(Duration::from_millis(100));
    }
    let status = std::process::Command::new("prlimit")
        .args(["--pid", &agent.pid().to_string(), "--nofile=4096:"])
        .status()
        .unwrap();
    assert!(status.success());
    assert_eq!(phase(&agent.pod("steady")), "Running");
    agent.apply(&sleepers(&apps, &["later"]));
    agent.wait_pod("later", "Running", |p| phase(p) == "Running");
}

/// A tmpfs of `size` mounted on a directory, unmounted when dropped.
struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (util-linux) is needed");
        assert!(status.success(), "mounting a tmpfs on {} (the tests run as root)", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    fn free(&self) -> u64 {
        let fs = rustix::fs::statvfs(&self.0).unwrap();
        fs.f_bavail * fs.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

#[test]
fn a_full_disk_refuses_new_pods_keeps_the_running_ones_and_recovers() {
    let apps = Apps::push(&["sleep"]);
    let state = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(state.path(), "192m");
    let manifests = tempfile::tempdir().unwrap();
    let agent = Agent::start_in(state, &[]);
    agent.apply(&sleepers(&apps, &["steady"]));
    agent.wait_pod("steady", "Running", |p| phase(p) == "Running");

    // fill the state filesystem to 16 MiB short of full
    let filler = agent.state_dir().join("filler");
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&filler).unwrap();
        let chunk = vec![0u8; 1 << 20];
        while disk.free() > 16 << 20 {
            f.write_all(&chunk).unwrap();
        }
        f.sync_all().unwrap();
    }
    let late = manifests.path().join("late.yaml");
    std::fs::write(&late, sleepers(&apps, &["late"])).unwrap();
    let out = agent.cli(&["apply", "-f", late.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "a pod applied on a full disk: {}", String::from_utf8_lossy(&out.stdout));
    assert!(err.contains("no space for new state under") && err.contains("free some space"), "{err}");
    // nothing half-stored, nothing lost
    assert!(!agent.cli(&["get", "pods", "late"]).status.success(), "the refused pod is not there");
    let steady = agent.pod("steady");
    assert_eq!(
        (phase(&steady), steady["status"]["containerStatuses"][0]["restartCount"].as_u64()),
        ("Running", Some(0))
    );

    // space returns: the same apply goes through, and the state database still writes
    std::fs::remove_file(&filler).unwrap();
    agent.ok(&["apply", "-f", late.to_str().unwrap()]);
    agent.wait_pod("late", "Running", |p| phase(p) == "Running");
    agent.ok(&["delete", "pod", "steady"]);
    assert!(!agent.cli(&["get", "pods", "steady"]).status.success());
    drop(agent);
    drop(disk);
}
