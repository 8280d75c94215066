//! What the agent benchmarks share: the release `wasmlet` on a temp state dir, its CLI
//! and its memory.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const WASMLET: &str = env!("CARGO_BIN_EXE_wasmlet");

/// A `Key:  N kB` figure of a /proc file, in KiB (0 when missing).
fn proc_kib(path: &str, key: &str) -> u64 {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Proportional set size (KiB): resident memory with each shared page divided among
/// its mappings, as `smem` reports it.
#[allow(dead_code)]
pub fn pss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/smaps_rollup"), "Pss:")
}

/// The resident set of a process, in KiB.
pub fn rss_kib(pid: u32) -> u64 {
    proc_kib(&format!("/proc/{pid}/status"), "VmRSS:")
}

/// Runs the CLI against the agent of `state`; its stdout.
pub fn cli(state: &std::path::Path, args: &[&str]) -> String {
    let out = Command::new(WASMLET).arg("--state-dir").arg(state).args(args).output().unwrap();
    assert!(out.status.success(), "wasmlet {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

/// `wasmlet serve` on `state`, once it answers.
#[allow(dead_code)] // not every bench starts a plain agent
pub fn start_agent(state: &std::path::Path) -> Child {
    start_agent_with(state, &[])
}

/// `wasmlet serve FLAGS…` on `state`, once it answers.
pub fn start_agent_with(state: &std::path::Path, flags: &[&str]) -> Child {
    let agent = Command::new(WASMLET)
        .args(["--state-dir", state.to_str().unwrap(), "serve"])
        .args(flags)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let t = Instant::now();
    while Command::new(WASMLET)
        .args(["--state-dir", state.to_str().unwrap(), "get", "pods"])
        .output()
        .map(|o| !o.status.success())
        .unwrap_or(true)
    {
        assert!(t.elapsed() < Duration::from_secs(30), "the agent did not answer");
        std::thread::sleep(Duration::from_millis(20));
    }
    agent
}

/// The pod start latencies (µs) the agent measured, accepted → Running (it keeps the
/// last 65,536), and how many it measured in all.
#[allow(dead_code)] // not every bench reads them
pub fn pod_starts(state: &std::path::Path) -> (Vec<f64>, u64) {
    let sock = state.join("wasmlet.sock");
    let out = std::process::Command::new("curl")
        .args(["-s", "--unix-socket", sock.to_str().unwrap(), "http://wasmlet/v1/stats/pod-starts"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let recent = v["microseconds"].as_array().unwrap().iter().map(|x| x.as_f64().unwrap()).collect();
    (recent, v["total"].as_u64().unwrap())
}
