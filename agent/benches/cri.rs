//! The CRI server's start path, beside wasmlet's own API in the same run: over
//! `CRI_PODS` pods each (default 200), one at a time, with cached images:
//!
//! - CRI: RunPodSandbox + CreateContainer + StartContainer, timed at the client (three
//!   gRPC calls over the unix socket; StartContainer returns with the container
//!   running), for a Wasm module in a `wasm`-handler sandbox (no network namespace), the
//!   same module in a default sandbox (a pod network by CNI), and busybox under runc;
//! - own API: the same pod applied, accepted → Running as the agent measures it
//!   (`/v1/stats/pod-starts`), for the Wasm module and for busybox.
//!
//! Each CRI sandbox is stopped and removed after its measurement (not timed), so that
//! the next start runs on an agent of the same size.

#[path = "../../registry-client/tests/all/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../../tests/e2e/cri_client.rs"]
#[allow(dead_code)]
mod cri_client;
#[path = "../../tests/e2e/harness.rs"]
#[allow(dead_code)]
mod harness;
#[allow(dead_code)]
mod support;

use std::collections::HashMap;
use std::time::Instant;

use k8s_cri::v1;

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.total_cmp(b));
    v
}

/// The agent's pod start latencies (ms) after the first `since` it measured.
fn starts_since(state: &std::path::Path, since: u64) -> Vec<f64> {
    let (recent, total) = support::pod_starts(state);
    let new = (total.saturating_sub(since) as usize).min(recent.len());
    recent[recent.len() - new..].iter().map(|us| us / 1e3).collect()
}

/// RunPodSandbox + CreateContainer + StartContainer, `n` times: client-side ms each.
fn cri_starts(cri: &cri_client::Cri, n: usize, tag: &str, handler: &str, image: &str, command: &[&str]) -> Vec<f64> {
    let logs = std::env::temp_dir().join(format!("wasmlet-cri-bench-{}", std::process::id()));
    std::fs::create_dir_all(&logs).unwrap();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let sb = v1::PodSandboxConfig {
            metadata: Some(v1::PodSandboxMetadata {
                name: format!("{tag}{i}"),
                uid: format!("{tag}-{i}"),
                namespace: "bench".into(),
                attempt: 0,
            }),
            log_directory: logs.join(format!("{tag}{i}")).display().to_string(),
            labels: HashMap::new(),
            ..Default::default()
        };
        let c = v1::ContainerConfig {
            metadata: Some(v1::ContainerMetadata { name: "app".into(), attempt: 0 }),
            image: Some(v1::ImageSpec { image: image.into(), ..Default::default() }),
            command: command.iter().map(|s| s.to_string()).collect(),
            log_path: "app/0.log".into(),
            ..Default::default()
        };
        let t = Instant::now();
        let id = cri.run_sandbox(sb.clone(), handler);
        let cid = cri.create(&id, &sb, c).unwrap();
        cri.start(&cid).unwrap();
        out.push(t.elapsed().as_secs_f64() * 1e3);
        cri.stop_sandbox(&id).unwrap();
        cri.remove_sandbox(&id).unwrap();
    }
    let _ = std::fs::remove_dir_all(&logs);
    sorted(out)
}

/// The same pod through the local API, one at a time: the agent's accepted → Running.
fn api_starts(agent: &harness::Agent, n: usize, tag: &str, image: &str, command: &str) -> Vec<f64> {
    let before = support::pod_starts(agent.state_dir()).1;
    for i in 0..n {
        let name = format!("{tag}{i}");
        agent.apply(&format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers:\n  - name: app\n    image: {image}\n{command}"
        ));
        agent.wait_pod(&name, "running", |p| harness::state(p).0 == "running");
        agent.ok(&["delete", "pod", &name]);
    }
    sorted(starts_since(agent.state_dir(), before))
}

fn row(what: &str, v: &[f64]) {
    println!("  {what:<44} p50 {:>7.3} ms  p99 {:>7.3} ms  ({} starts)", pct(v, 0.5), pct(v, 0.99), v.len());
}

fn main() {
    let n: usize = std::env::var("CRI_PODS").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(200);
    let apps = harness::Apps::push(&["sleep"]);
    let busybox = harness::push_busybox(&apps.registry, "amd64", "latest");
    let agent = cri_client::agent_with_cri(&[]);
    let cri = cri_client::Cri::connect(&agent);
    let wasm = apps.image("sleep", "v1");
    let wasm_id = cri.pull(&wasm);
    let bb_id = cri.pull(&busybox);
    // warm-up: the module compiled, the layers unpacked, the first network made
    cri_starts(&cri, 3, "warm-w", "wasm", &wasm_id, &[]);
    cri_starts(&cri, 3, "warm-l", "", &bb_id, &["sleep", "86400"]);

    let cri_wasm = cri_starts(&cri, n, "w", "wasm", &wasm_id, &[]);
    let api_wasm = api_starts(&agent, n, "aw", &wasm, "");
    let cri_wasm_net = cri_starts(&cri, n, "wn", "", &wasm_id, &[]);
    let cri_linux = cri_starts(&cri, n, "l", "", &bb_id, &["sleep", "86400"]);
    let api_linux = api_starts(&agent, n, "al", &busybox, "    command: [\"sleep\", \"86400\"]\n");

    println!("CRI start path, cached images, {n} pods each, one at a time:");
    row("Wasm   CRI RunPodSandbox+Create+Start (wasm)", &cri_wasm);
    row("Wasm   own API apply → Running", &api_wasm);
    println!("         ratio CRI / own API (p50) {:.2}x", pct(&cri_wasm, 0.5) / pct(&api_wasm, 0.5));
    row("Wasm   CRI, default handler (pod network)", &cri_wasm_net);
    row("busybox CRI RunPodSandbox+Create+Start", &cri_linux);
    row("busybox own API apply → Running", &api_linux);
    println!("         ratio CRI / own API (p50) {:.2}x", pct(&cri_linux, 0.5) / pct(&api_linux, 0.5));
    println!("  (CRI timed at the client over three gRPC calls; own API as the agent measures it, without the client)");
}
