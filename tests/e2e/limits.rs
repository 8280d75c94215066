//! At the node's limits: a pod beyond its capacity is refused as the kubelet refuses it,
//! and running out of descriptors never ends the agent.

use std::time::{Duration, Instant};

use crate::harness::{Agent, Apps, Tmpfs, fill, phase, pod_yaml};

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

/// Waits up to `secs` for a pod to pass `check` (pull back-off runs 10 s, 20 s, ...).
fn wait_long(agent: &Agent, name: &str, secs: u64, check: impl Fn(&serde_json::Value) -> bool) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let p = agent.pod(name);
        if check(&p) {
            return p;
        }
        assert!(Instant::now() < deadline, "pod {name}: timed out; last seen:\n{}", p["status"]);
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn waiting_message(pod: &serde_json::Value) -> String {
    pod["status"]["containerStatuses"][0]["state"]["waiting"]["message"].as_str().unwrap_or_default().to_string()
}

#[test]
fn a_pull_that_would_fill_the_disk_fails_naming_the_image_and_gives_the_space_back() {
    let apps = Apps::push(&["sleep"]);
    // a Wasm module of 128 MiB (the sleep guest and a custom section of noise), and a
    // Linux image whose small layer unpacks to 160 MiB
    let big = tempfile::tempdir().unwrap();
    let module = big.path().join("big.wasm");
    {
        let mut bytes = std::fs::read(crate::common::wasm_app("sleep", "wasm32-wasip1")).unwrap();
        let noise: Vec<u8> = (0..128u64 << 20).map(|i| (i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 56) as u8).collect();
        let name = b"noise";
        let mut body = vec![name.len() as u8];
        body.extend_from_slice(name);
        body.extend_from_slice(&noise);
        bytes.push(0); // custom section
        let mut len = body.len() as u64;
        loop {
            let b = (len & 0x7f) as u8;
            len >>= 7;
            bytes.push(if len == 0 { b } else { b | 0x80 });
            if len == 0 {
                break;
            }
        }
        bytes.extend_from_slice(&body);
        std::fs::write(&module, bytes).unwrap();
    }
    let wasm_ref = format!("{}/apps/big:v1", apps.registry.host);
    let out = std::process::Command::new(crate::harness::WASMLET)
        .args(["push", module.to_str().unwrap(), &wasm_ref])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let linux_ref = crate::harness::push_busybox_with(&apps.registry, "zeros", &|rootfs| {
        let f = std::fs::File::create(rootfs.join("zeros")).unwrap();
        f.set_len(160 << 20).unwrap();
    });

    let state = tempfile::tempdir().unwrap();
    // room for both images once the filler goes (128 MiB, and 160 MiB unpacked)
    let disk = Tmpfs::mount(state.path(), "448m");
    let agent = Agent::start_in(state, &[]);
    agent.apply(&sleepers(&apps, &["steady"]));
    agent.wait_pod("steady", "Running", |p| phase(p) == "Running");
    let filler = agent.state_dir().join("filler");
    fill(&disk, &filler, 120 << 20);
    let before = disk.free();

    // the module does not fit above the 32 MiB a pull keeps free: refused before a byte
    agent.apply(&pod_yaml("big-wasm", &wasm_ref, "Always", "    args: [\"3600\"]\n"));
    let p = agent.wait_pod("big-wasm", "a failed pull", |p| waiting_message(p).contains("no space"));
    let message = waiting_message(&p);
    assert!(
        message.contains("no space for blob sha256:")
            && message.contains(&wasm_ref)
            && message.contains("are kept free"),
        "{message}"
    );
    // the layer fits compressed, and unpacking it stops when the disk gets near full
    agent.apply(&pod_yaml("big-linux", &linux_ref, "Always", "    command: [\"sleep\", \"3600\"]\n"));
    let p = agent.wait_pod("big-linux", "a failed pull", |p| waiting_message(p).contains("no space"));
    let message = waiting_message(&p);
    assert!(message.contains("no space for layer sha256:") && message.contains("are kept free"), "{message}");
    std::thread::sleep(Duration::from_secs(1));
    assert!(disk.free() + (2 << 20) >= before, "the failed pulls gave their space back: {} of {before}", disk.free());
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(agent.state_dir().join(dir))
            .map(|d| d.map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect())
            .unwrap_or_default()
    };
    assert_eq!(names("content/ingest"), Vec::<String>::new(), "partial downloads left");
    let partial_layers: Vec<String> = names("layers").into_iter().filter(|n| n.starts_with('.')).collect();
    assert_eq!(partial_layers, Vec::<String>::new(), "partial layers left");
    let steady = agent.pod("steady");
    assert_eq!((phase(&steady), crate::harness::restarts(&steady)), ("Running", 0));

    // space returns: both pulls go through on their next try
    std::fs::remove_file(&filler).unwrap();
    wait_long(&agent, "big-wasm", 120, |p| phase(p) == "Running");
    wait_long(&agent, "big-linux", 120, |p| phase(p) == "Running");
    drop(agent);
    drop(disk);
}

#[test]
fn a_disk_filled_from_outside_stops_state_writes_loses_nothing_and_writes_resume() {
    let apps = Apps::push(&["sleep"]);
    let state = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(state.path(), "128m");
    let mut agent = Agent::start_in(state, &[]);
    agent.apply(&sleepers(&apps, &["steady", "doomed"]));
    agent.wait_pod("steady", "Running", |p| phase(p) == "Running");
    agent.wait_pod("doomed", "Running", |p| phase(p) == "Running");

    // something else fills the disk to the last byte; a delete then cannot be stored
    let filler = agent.state_dir().join("filler");
    fill(&disk, &filler, 0);
    let out = agent.cli(&["delete", "pod", "doomed"]);
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "a delete stored on a full disk");
    assert!(err.contains("stopped writing after an I/O error") && err.contains("No space left on device"), "{err}");
    // the agent stays up and answers; what runs keeps running; new pods are refused clearly
    let steady = agent.pod("steady");
    assert_eq!((phase(&steady), crate::harness::restarts(&steady)), ("Running", 0));
    let late = sleepers(&apps, &["late"]);
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("late.yaml");
    std::fs::write(&manifest, &late).unwrap();
    let out = agent.cli(&["apply", "-f", manifest.to_str().unwrap()]);
    assert!(!out.status.success(), "a pod applied on a full disk");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("stopped writing") || err.contains("no space for new state"), "{err}");

    // space returns: the database is reopened, the delete and the apply go through
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let log = std::fs::read_to_string(agent.state_dir().join("serve.log")).unwrap();
        if log.contains("the state database was reopened") {
            break;
        }
        assert!(Instant::now() < deadline, "the database was not reopened:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    writes_go_through_and_last(&mut agent, |a| a.ok(&["apply", "-f", manifest.to_str().unwrap()]));
    drop(agent);
    drop(disk);
}

/// After a full disk: `doomed` is deleted and `late` applied (by `apply_late`), and all
/// of it is durable: after a kill -9 the agent finds exactly `late` and `steady`.
fn writes_go_through_and_last(agent: &mut Agent, apply_late: impl Fn(&Agent) -> String) {
    let _ = agent.cli(&["delete", "pod", "doomed"]);
    assert!(!agent.cli(&["get", "pods", "doomed"]).status.success(), "doomed is gone");
    apply_late(agent);
    agent.wait_pod("late", "Running", |p| phase(p) == "Running");
    agent.kill9();
    agent.restart();
    let names: std::collections::BTreeSet<String> =
        agent.pods().iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
    assert_eq!(names, ["late", "steady"].map(String::from).into());
    for name in ["late", "steady"] {
        agent.wait_pod(name, "Running", |p| phase(p) == "Running");
    }
}

/// sled 0.34 never finishes a failed write of a page larger than its log segments take
/// inline (128 KiB: a pod record that large, or a leaf of large ones), and its close
/// then waits forever. The agent must not hang with it: reads go on, writes are refused
/// naming the cure, and a restart reopens the database with everything acknowledged.
#[test]
fn a_state_database_wedged_by_a_failed_large_write_keeps_reading_and_a_restart_reopens_it() {
    let apps = Apps::push(&["sleep"]);
    let state = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(state.path(), "128m");
    let mut agent = Agent::start_in(state, &[]);
    let big = "x".repeat(200 << 10);
    let doomed = pod_yaml(
        "doomed",
        &apps.image("sleep", "v1"),
        "Always",
        &format!("    args: [\"3600\"]\n    env:\n    - name: BIG\n      value: {big}\n"),
    );
    agent.apply(&format!("{}\n---\n{doomed}", sleepers(&apps, &["steady"])));
    agent.wait_pod("steady", "Running", |p| phase(p) == "Running");
    agent.wait_pod("doomed", "Running", |p| phase(p) == "Running");

    // a full disk: the delete's write of the large record fails
    let filler = agent.state_dir().join("filler");
    fill(&disk, &filler, 0);
    let out = agent.cli(&["delete", "pod", "doomed"]);
    assert!(!out.status.success(), "a delete stored on a full disk");
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let log = std::fs::read_to_string(agent.state_dir().join("serve.log")).unwrap();
        if log.contains("cannot finish a write that failed") {
            break;
        }
        // (sled may also finish it after all: then the database is reopened)
        if log.contains("the state database was reopened") {
            break;
        }
        assert!(Instant::now() < deadline, "the database neither reopened nor was found wedged:\n{log}");
        std::thread::sleep(Duration::from_millis(200));
    }
    let log = std::fs::read_to_string(agent.state_dir().join("serve.log")).unwrap();
    if log.contains("cannot finish a write that failed") {
        // the agent answers: reads from what was stored, writes refused naming the restart
        let names: Vec<String> =
            agent.pods().iter().map(|p| p["metadata"]["name"].as_str().unwrap().to_string()).collect();
        assert!(names.contains(&"steady".to_string()), "{names:?}");
        assert_eq!(phase(&agent.pod("steady")), "Running");
        let out = agent.cli(&["delete", "pod", "doomed"]);
        let err = String::from_utf8_lossy(&out.stderr).to_string();
        assert!(!out.status.success() && err.contains("writes resume once the agent is restarted"), "{err}");
        agent.kill9();
        agent.restart();
    }
    // writes go through again: the delete, and a new pod; all of it durable
    writes_go_through_and_last(&mut agent, |a| a.apply(&sleepers(&apps, &["late"])));
    drop(agent);
    drop(disk);
}

/// The lines of every log file of a container instance, oldest file first (the
/// rotated ones by name, then the current one), each file's lines apart; `None` when a
/// rotation removed a file between listing the directory and reading it.
fn log_files(agent: &Agent, pod: &serde_json::Value) -> Option<Vec<Vec<String>>> {
    let dir = agent.state_dir().join("pods").join(pod["metadata"]["uid"].as_str().unwrap()).join("logs/app");
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().path()).collect();
    files.sort();
    files.rotate_left(1); // N.log sorts before N.log.<time>: it is the newest
    files
        .iter()
        .map(|f| {
            let bytes = match std::fs::read(f) {
                Ok(bytes) => bytes,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
                Err(e) => panic!("{}: {e}", f.display()),
            };
            assert!(bytes.is_empty() || bytes.ends_with(b"\n"), "{} ends mid-record", f.display());
            Some(wasmlet_runtime::log::records(&bytes).map(|r| String::from_utf8_lossy(r.line).into_owned()).collect())
        })
        .collect()
}

/// `line N xxx…` → N.
fn line_number(line: &str) -> Option<u64> {
    line.strip_prefix("line ")?.split(' ').next()?.parse().ok()
}

#[test]
fn container_logs_rotate_at_their_max_size_keeping_max_files_and_lose_no_line() {
    let apps = Apps::push(&["chatty"]);
    let busybox = crate::harness::push_busybox(&apps.registry, "amd64", "latest");
    let agent = Agent::start_with(&[
        "--container-log-max-size",
        "64Ki",
        "--container-log-max-files",
        "3",
        "--container-log-monitor-interval",
        "200ms",
    ]);
    // 3,000 lines of 100 bytes from each: about 390 KB of log, six times the limit
    agent.apply(&pod_yaml("wasm", &apps.image("chatty", "v1"), "Always", "    args: [\"3000\", \"100\", \"0\"]\n"));
    let script = "i=0; while [ $i -lt 3000 ]; do echo \"line $i $(printf '%090d' 0)\"; i=$((i+1)); \
                  [ $((i % 100)) -eq 0 ] && sleep 0.3; done; sleep 3600";
    agent.apply(&pod_yaml("linux", &busybox, "Always", &format!("    command: [\"sh\", \"-c\", {script:?}]\n")));
    for name in ["wasm", "linux"] {
        let deadline = Instant::now() + Duration::from_secs(60);
        let pod = loop {
            // in any of the files: the current one may have just been rotated
            let pod = agent.pod(name);
            let written = pod["metadata"]["uid"].is_string() && phase(&pod) == "Running";
            let files = if written { log_files(&agent, &pod) } else { None };
            if files.iter().flatten().flatten().any(|l| l.starts_with("line 2999 ")) {
                break pod;
            }
            assert!(Instant::now() < deadline, "{name} did not finish writing: {}", pod["status"]);
            std::thread::sleep(Duration::from_millis(200));
        };
        std::thread::sleep(Duration::from_millis(600)); // one more look by the monitor
        let files = log_files(&agent, &pod).expect("the logs still rotating 600 ms after the last line");
        assert_eq!(files.len(), 3, "{name}: the current file and two rotated ones");
        // the Wasm log rotates before a write would pass the limit; conmon's is looked
        // at every 200 ms, and a burst of 100 lines (13 KB) may land in between
        let bytes: Vec<usize> = files.iter().map(|f| f.iter().map(|l| l.len() + 37).sum()).collect();
        let bound = if name == "wasm" { 64 << 10 } else { (64 << 10) + (40 << 10) };
        assert!(bytes.iter().all(|&b| b <= bound), "{name}: {bytes:?}");
        // what is kept is the newest lines, in order, none lost at a rotation
        let numbers: Vec<u64> = files.iter().flatten().filter_map(|l| line_number(l)).collect();
        assert_eq!(numbers.last(), Some(&2999), "{name}");
        assert_eq!(numbers, (numbers[0]..3000).collect::<Vec<_>>(), "{name}: a line lost or repeated");
        // `logs` shows the current file only, as with the kubelet
        let shown = agent.ok(&["logs", name]);
        assert_eq!(shown.lines().collect::<Vec<_>>(), files[2], "{name}");
        assert_eq!(crate::harness::restarts(&agent.pod(name)), 0, "{name}");
    }
}

#[test]
fn a_container_writing_onto_a_full_disk_keeps_running_and_its_log_says_what_was_lost() {
    let apps = Apps::push(&["chatty"]);
    let state = tempfile::tempdir().unwrap();
    let disk = Tmpfs::mount(state.path(), "128m");
    let agent = Agent::start_in(state, &[]);
    // 50 lines a second, for ever; the guest panics if a write to stdout fails
    agent.apply(&pod_yaml("talker", &apps.image("chatty", "v1"), "Always", "    args: [\"0\", \"200\", \"20\"]\n"));
    agent.wait_pod("talker", "Running", |p| phase(p) == "Running");
    let filler = agent.state_dir().join("filler");
    // below the 16 MiB that logs leave for the node's state
    fill(&disk, &filler, 8 << 20);
    std::thread::sleep(Duration::from_secs(2));
    let uid = agent.pod("talker")["metadata"]["uid"].as_str().unwrap().to_string();
    let log = || agent.state_dir().join("pods").join(&uid).join("logs/app/1.log");
    let size = std::fs::metadata(log()).unwrap().len();
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(std::fs::metadata(log()).unwrap().len(), size, "the log stopped growing");
    let p = agent.pod("talker");
    assert_eq!((phase(&p), crate::harness::restarts(&p)), ("Running", 0), "{}", p["status"]);
    let before = agent.ok(&["logs", "talker"]);
    let last_before = before.lines().rev().find_map(line_number).unwrap();

    // space returns: the log goes on, first saying how much was dropped and why
    std::fs::remove_file(&filler).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let after = loop {
        let logs = agent.ok(&["logs", "talker"]);
        if logs.contains("of this container's output were dropped")
            && logs.lines().rev().find_map(line_number) > Some(last_before + 50)
        {
            break logs;
        }
        assert!(Instant::now() < deadline, "the log did not resume:\n{}", &logs[logs.len().saturating_sub(2000)..]);
        std::thread::sleep(Duration::from_millis(200));
    };
    let notice = after.lines().find(|l| l.contains("were dropped")).unwrap();
    assert!(
        notice.starts_with("wasmlet: ") && notice.contains("its log's filesystem has less than 16777216 bytes free"),
        "{notice}"
    );
    let lost: u64 = notice["wasmlet: ".len()..].split(' ').next().unwrap().parse().unwrap();
    assert!(lost > 10_000, "about 10 KB a second were dropped: {notice}");
    let p = agent.pod("talker");
    assert_eq!((phase(&p), crate::harness::restarts(&p)), ("Running", 0));
    drop(agent);
    drop(disk);
}
