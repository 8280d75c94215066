//! Agent benchmarks, each beside its peer measured in the same run:
//!
//! - Wasm pod start with a cached image (accepted → Running, the agent's own
//!   `wasmlet_pod_start_duration_seconds`), over `START_PODS` pods (default 1,000),
//!   against `wasmtime run` of the same module as a process, from wasmtime's warm cache;
//! - agent RSS, open files and mappings per idle (sleeping) Wasm pod, and pod start
//!   p50/p99 with that many pods live (`DENSITY_PROBES` started one at a time, default
//!   200), at 1,000, 5,000, 10,000, 20,000 and 30,000 pods (`DENSITY`); then one pod
//!   past the pool, and what refused it;
//! - agent idle RSS; release binary size.
//!
//! The peer is wasmtime-cli 48 (`scripts/setup-bench.sh` installs it under
//! /opt/wasmtime-peer); `WASMTIME` overrides its path.

#[path = "../../registry-client/tests/all/common.rs"]
#[allow(dead_code)]
mod common;
mod support;

use std::process::{Child, Command};

use std::time::{Duration, Instant};
use support::{WASMLET, cli, pss_kib, rss_kib};

/// The pod start latencies (µs) the agent measured after the first `since` of them (it
/// keeps the last 65,536), and how many it measured in all.
fn starts_since(state: &std::path::Path, since: u64) -> (Vec<f64>, u64) {
    let (recent, total) = support::pod_starts(state);
    let new = (total.saturating_sub(since) as usize).min(recent.len());
    (recent[recent.len() - new..].to_vec(), total)
}

fn pods_yaml(prefix: &str, from: usize, to: usize, image: &str, args: &str) -> String {
    (from..to)
        .map(|i| format!("apiVersion: v1\nkind: Pod\nmetadata:\n  name: {prefix}{i}\nspec:\n  containers:\n  - name: app\n    image: {image}\n    args: {args}\n"))
        .collect::<Vec<_>>()
        .join("---\n")
}

fn apply(state: &std::path::Path, yaml: &str) {
    let f = state.join(format!("batch-{}.yaml", fastrand::u32(..)));
    std::fs::write(&f, yaml).unwrap();
    cli(state, &["apply", "-f", f.to_str().unwrap()]);
}

fn running(state: &std::path::Path) -> usize {
    let v: serde_json::Value = serde_json::from_str(&cli(state, &["get", "pods", "-o", "json"])).unwrap();
    v["items"]
        .as_array()
        .map(|a| a.iter().filter(|p| p["status"]["containerStatuses"][0]["state"]["running"].is_object()).count())
        .unwrap_or(0)
}

fn wait_running(state: &std::path::Path, n: usize) -> Duration {
    let t = Instant::now();
    while running(state) < n {
        assert!(t.elapsed() < Duration::from_secs(600), "pods did not all start");
        std::thread::sleep(Duration::from_millis(200));
    }
    t.elapsed()
}

/// Pods started one at a time at each density step, for its start latencies
/// (`DENSITY_PROBES`, default 200: the p99 of 200 is their third slowest, not the max).
fn probes() -> usize {
    std::env::var("DENSITY_PROBES").ok().and_then(|v| v.parse().ok()).filter(|&n| n > 0).unwrap_or(200)
}

fn pct(v: &[f64], p: f64) -> f64 {
    v[((v.len() as f64 * p).ceil() as usize).saturating_sub(1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

fn main() {
    let start_pods: usize = std::env::var("START_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let per_step = probes();
    let density: Vec<usize> = std::env::var("DENSITY")
        .unwrap_or_else(|_| "1000,5000,10000,20000,30000".into())
        .split(',')
        .filter_map(|v| v.parse().ok())
        .collect();
    let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "/opt/wasmtime-peer/bin/wasmtime".into());
    assert!(
        std::path::Path::new(&wasmtime).is_file(),
        "{wasmtime} is missing: run scripts/setup-bench.sh (builds wasmtime-cli 48)"
    );
    let reg = common::Registry::start();
    let sleep = common::wasm_app("sleep", "wasm32-wasip1");
    let image = format!("{}/bench/sleep:v1", reg.host);
    let state = tempfile::tempdir().unwrap();
    cli(state.path(), &["push", sleep.to_str().unwrap(), &image]);

    let size = std::fs::metadata(WASMLET).unwrap().len();
    // a pool of exactly the largest density step: the pod after it is refused
    let most = density.iter().copied().max().unwrap_or(0).max(2 * start_pods + 1 + per_step);
    let pool = most.to_string();
    let mut agent: Child = support::start_agent_with(state.path(), &["--max-wasm-instances", &pool]);
    std::thread::sleep(Duration::from_secs(1));
    let idle = rss_kib(agent.id());

    // warm-up: pull the image and compile it once; later starts are cached
    apply(state.path(), &pods_yaml("warm", 0, 1, &image, "[\"86400\"]"));
    wait_running(state.path(), 1);
    let (base, base_pss) = (rss_kib(agent.id()), pss_kib(agent.id()));
    assert_eq!(starts_since(state.path(), 0).1, 1, "the warm-up pod was timed");

    // pod start latency: START_PODS pods applied one at a time (no queueing)
    for i in 0..start_pods {
        apply(state.path(), &pods_yaml("s", i, i + 1, &image, "[\"86400\"]"));
    }
    wait_running(state.path(), start_pods + 1);
    let (samples, _) = starts_since(state.path(), 1);
    let mut one_by_one: Vec<f64> = samples.iter().map(|us| us / 1e6).collect();
    one_by_one.sort_by(|a, b| a.total_cmp(b));
    let (p50, p99) = (pct(&one_by_one, 0.5), pct(&one_by_one, 0.99));
    // throughput: a batch of START_PODS pods in one manifest
    let t = Instant::now();
    apply(state.path(), &pods_yaml("b", 0, start_pods, &image, "[\"86400\"]"));
    wait_running(state.path(), 2 * start_pods + 1);
    let batch = t.elapsed();

    // peer: `wasmtime run` of the same module as a process, with wasmtime's compile cache
    // warmed by one run first, so it too starts from cached code
    let peer_run = || {
        let t = Instant::now();
        let out = Command::new(&wasmtime).args(["run", "-C", "cache=y"]).arg(&sleep).arg("0").output().unwrap();
        assert!(out.status.success(), "wasmtime run: {}", String::from_utf8_lossy(&out.stderr));
        t.elapsed().as_secs_f64()
    };
    peer_run();
    let peer: Vec<f64> = (0..50).map(|_| peer_run()).collect();
    let peer_p50 = median(peer);

    println!("wasmlet agent benchmarks (wasmtime 48, release build, this machine, one run)");
    println!();
    println!("Wasm pod start, cached image, accepted → Running, {start_pods} pods applied one at a time:");
    println!("  wasmlet p50 {:>9.3} ms   p99 {:>9.3} ms   (targets: p50 ≤ 1 ms, p99 ≤ 5 ms)", p50 * 1e3, p99 * 1e3);
    println!(
        "  a batch of {start_pods} pods in one manifest: all Running after {:.2} s ({:.0} pods/s)",
        batch.as_secs_f64(),
        start_pods as f64 / batch.as_secs_f64()
    );
    println!(
        "  peer `wasmtime run -C cache=y` (a process, cached code, to exit) p50 {:.3} ms, median of 50",
        peer_p50 * 1e3
    );
    println!("  ratio peer p50 / wasmlet p50: {:.0}x", peer_p50 / p50);

    println!();
    println!("Agent memory:");
    println!("  idle RSS, no pods: {:.1} MiB", idle as f64 / 1024.0);
    let mut live = 2 * start_pods + 1;
    // open files and memory mappings of the agent: the limits that end density first
    let counts = |pid: u32| {
        let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map(|d| d.count()).unwrap_or(0);
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).map(|m| m.lines().count()).unwrap_or(0);
        (fds, maps)
    };
    let (fds0, maps0) = counts(agent.id());
    let mut rows = vec![(live, rss_kib(agent.id()), pss_kib(agent.id()), fds0, maps0, None)];
    for target in density.iter().copied() {
        if target < live + per_step {
            continue;
        }
        let bulk = target - per_step;
        for b in (live..bulk).step_by(500) {
            apply(state.path(), &pods_yaml("d", b, (b + 500).min(bulk), &image, "[\"86400\"]"));
        }
        wait_running(state.path(), bulk);
        // idle: past the agent's 30 s housekeeping, which returns the memory freed by
        // the burst (the applies, and this bench's own `get pods` of every pod) to the
        // system
        std::thread::sleep(Duration::from_secs(35));
        let (fds, maps) = counts(agent.id());
        let (rss, pss) = (rss_kib(agent.id()), pss_kib(agent.id()));
        // starts with this many pods live: `per_step` pods one at a time
        let before = starts_since(state.path(), 0).1;
        for i in 0..per_step {
            apply(state.path(), &pods_yaml(&format!("p{target}-"), i, i + 1, &image, "[\"86400\"]"));
        }
        wait_running(state.path(), target);
        let mut starts: Vec<f64> = starts_since(state.path(), before).0.iter().map(|us| us / 1e3).collect();
        starts.sort_by(|a, b| a.total_cmp(b));
        live = target;
        rows.push((bulk, rss, pss, fds, maps, Some((pct(&starts, 0.5), pct(&starts, 0.99)))));
    }
    println!(
        "  {:>8} {:>12} {:>14} {:>14} {:>9} {:>9} {:>16}   (targets ≤ 64 KiB per pod, start p99 ≤ 1 ms)",
        "pods", "agent RSS", "RSS per pod", "PSS per pod", "open fds", "mappings", "start p50/p99"
    );
    for (n, rss, pss, fds, maps, starts) in rows {
        let starts = starts.map_or("-".to_string(), |(p50, p99)| format!("{p50:.3}/{p99:.3} ms"));
        let per = |now: u64, then: u64| now.saturating_sub(then) as f64 / (n - 1) as f64;
        println!(
            "  {n:>8} {:>9.1} MiB {:>10.1} KiB {:>10.1} KiB {fds:>9} {maps:>9} {starts:>16}",
            rss as f64 / 1024.0,
            per(rss, base),
            per(pss, base_pss)
        );
    }
    // the node is full: one more pod, and what refused it
    apply(state.path(), &pods_yaml("over", 0, 1, &image, "[\"86400\"]"));
    let t = Instant::now();
    let refusal = loop {
        let p: serde_json::Value =
            serde_json::from_str(&cli(state.path(), &["get", "pods", "over0", "-o", "json"])).unwrap_or_default();
        let status = &p["status"];
        if status["phase"] == "Failed" || status["containerStatuses"][0]["state"]["running"].is_object() {
            break format!("{} {}: {}", status["phase"], status["reason"], status["message"]);
        }
        assert!(t.elapsed() < Duration::from_secs(60), "pod over0 neither refused nor running: {p}");
        std::thread::sleep(Duration::from_millis(200));
    };
    println!("  pod {} of a pool of {pool}: {refusal}", live + 1);
    println!();
    println!("Release binary: {:.1} MiB ({size} bytes)", size as f64 / (1 << 20) as f64);
    let _ = agent.kill();
    let _ = agent.wait();
}
