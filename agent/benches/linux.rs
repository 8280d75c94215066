//! Linux container start with a cached image, beside its peer measured in the same run:
//!
//! - wasmlet: apply → Running (the agent's own `wasmlet_pod_start_duration_seconds`:
//!   record stored, pod network by CNI, overlay rootfs, conmon + `runc create`,
//!   `runc start`, record flushed), over `LINUX_PODS` busybox pods (default 200) applied
//!   one at a time; and as many again under `seccompProfile: RuntimeDefault`,
//!   interleaved with them, so the filter's cost is measured against the same noise;
//! - peer: bare `runc run --detach` of an equivalent bundle (the same busybox rootfs and
//!   command, no network, no monitor), median over 50 runs.

#[path = "../../registry-client/tests/all/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;

use std::process::Command;
use std::time::Instant;

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

fn main() {
    let n: usize = std::env::var("LINUX_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(200);
    let registry = common::Registry::start();
    let image = harness::push_busybox(&registry, "amd64", "latest");
    let agent = harness::Agent::start();
    let pod_with = |name: &str, extra: &str| {
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n{extra}  containers:\n  - name: app\n    image: {image}\n    command: [\"sleep\", \"86400\"]\n"
        )
    };
    let pod = |name: &str| pod_with(name, "");
    let filtered = |name: &str| pod_with(name, "  securityContext:\n    seccompProfile:\n      type: RuntimeDefault\n");
    // warm-up: the pull and unpack happen here
    agent.apply(&pod("warm"));
    agent.wait_pod("warm", "running", |p| harness::state(p).0 == "running");
    // Unconfined and RuntimeDefault pods alternate: starts 1, 3, 5… and 2, 4, 6…
    for i in 0..n {
        for (name, manifest) in
            [(format!("c{i}"), pod(&format!("c{i}"))), (format!("s{i}"), filtered(&format!("s{i}")))]
        {
            agent.apply(&manifest);
            agent.wait_pod(&name, "running", |p| harness::state(p).0 == "running");
        }
    }
    let sock = agent.state_dir().join("wasmlet.sock");
    let out = Command::new("curl")
        .args(["-s", "--unix-socket", sock.to_str().unwrap(), "http://wasmlet/v1/stats/pod-starts"])
        .output()
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let all: Vec<f64> = v["microseconds"].as_array().unwrap()[1..].iter().map(|x| x.as_f64().unwrap() / 1e3).collect();
    let mut ours: Vec<f64> = all.iter().step_by(2).copied().collect();
    let mut seccomp: Vec<f64> = all.iter().skip(1).step_by(2).copied().collect();
    ours.sort_by(|a, b| a.total_cmp(b));
    seccomp.sort_by(|a, b| a.total_cmp(b));

    // peer: runc run --detach on a bundle over the same unpacked layer
    let layer = std::fs::read_dir(agent.state_dir().join("layers")).unwrap().flatten().next().unwrap().path();
    let dir = tempfile::tempdir().unwrap();
    let bundle = dir.path().join("bundle");
    std::fs::create_dir_all(&bundle).unwrap();
    let spec = Command::new("runc").args(["spec", "--bundle"]).arg(&bundle).status().unwrap();
    assert!(spec.success());
    let path = bundle.join("config.json");
    let mut config: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    config["process"]["terminal"] = false.into();
    config["process"]["args"] = serde_json::json!(["sleep", "86400"]);
    config["root"] = serde_json::json!({"path": layer, "readonly": true});
    std::fs::write(&path, config.to_string()).unwrap();
    let root = dir.path().join("runc");
    let mut peer = Vec::new();
    for i in 0..50 {
        let id = format!("peer{i}");
        let t = Instant::now();
        let st = Command::new("runc")
            .arg("--root")
            .arg(&root)
            .args(["run", "--detach", "--bundle"])
            .arg(&bundle)
            .arg(&id)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .unwrap();
        peer.push(t.elapsed().as_secs_f64() * 1e3);
        assert!(st.success(), "runc run failed");
        let _ = Command::new("runc").arg("--root").arg(&root).args(["delete", "--force", &id]).status();
    }
    peer.sort_by(|a, b| a.total_cmp(b));

    println!("Linux container start, cached image ({} pods applied one at a time):", ours.len());
    println!("  wasmlet apply → Running   p50 {:.1} ms  p99 {:.1} ms", pct(&ours, 0.5), pct(&ours, 0.99));
    println!("  peer bare `runc run -d`   p50 {:.1} ms  p99 {:.1} ms (50 runs)", pct(&peer, 0.5), pct(&peer, 0.99));
    println!(
        "  agent overhead over bare runc (p50): {:.1} ms; ratio {:.2}x",
        pct(&ours, 0.5) - pct(&peer, 0.5),
        pct(&ours, 0.5) / pct(&peer, 0.5)
    );
    println!(
        "  seccomp RuntimeDefault     p50 {:.1} ms  p99 {:.1} ms ({} pods, interleaved); ratio to Unconfined (p50) {:.2}x",
        pct(&seccomp, 0.5),
        pct(&seccomp, 0.99),
        seccomp.len(),
        pct(&seccomp, 0.5) / pct(&ours, 0.5)
    );
}
