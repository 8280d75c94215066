//! `wasmlet run -f`: an embedded agent, like `podman kube play`.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::harness::{Apps, WASMLET, pod_yaml};

#[test]
fn run_streams_logs_and_exits_when_pods_finish() {
    let apps = Apps::push(&["hello", "exit"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pods.yaml");
    let two = format!(
        "{}---\n{}",
        pod_yaml("hi", &apps.image("hello", "v1"), "Never", ""),
        pod_yaml("bye", &apps.image("exit", "v1"), "Never", "    args: [\"0\"]\n")
    );
    std::fs::write(&file, two).unwrap();
    let out = Command::new(WASMLET).args(["run", "-f", file.to_str().unwrap()]).output().unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stderr}");
    assert!(stdout.contains("[hi/app] hello from wasm (1 args)"), "{stdout}");
    assert!(stdout.contains("[bye/app] exiting with 0"), "{stdout}");
    assert!(stderr.contains("pod/hi created") && stderr.contains("pod/hi deleted"), "{stderr}");
    // a failing pod makes the command fail
    std::fs::write(&file, pod_yaml("bad", &apps.image("exit", "v1"), "Never", "    args: [\"4\"]\n")).unwrap();
    let out = Command::new(WASMLET).args(["run", "-f", file.to_str().unwrap()]).output().unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("failed: pod/bad"));
}

#[test]
fn ctrl_c_stops_and_removes_what_run_started() {
    let apps = Apps::push(&["sleep"]);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pod.yaml");
    std::fs::write(&file, pod_yaml("nap", &apps.image("sleep", "v1"), "Always", "")).unwrap();
    let mut child = Command::new(WASMLET)
        .args(["run", "-f", file.to_str().unwrap()])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    assert_eq!(lines.next().unwrap().unwrap(), "[nap/app] sleeping 86400s");
    let pid = child.id() as i32;
    let started = Instant::now();
    rustix::process::kill_process(rustix::process::Pid::from_raw(pid).unwrap(), rustix::process::Signal::INT).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("stopping") && stderr.contains("pod/nap deleted"), "{stderr}");
    assert!(out.status.success(), "{stderr}");
    let leftovers = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .flatten()
        .any(|e| e.file_name().to_string_lossy() == format!("wasmlet-run-{pid}"));
    assert!(!leftovers, "the embedded state dir was removed");
}
