//! The Wasm HTTP component benchmark, beside its peer measured in the same run:
//!
//! - requests per second and latency (p50, p99) of `http-hello` served by wasmlet, at 64
//!   connections on loopback, driven by `wrk` (Debian) for `SECS` seconds (default 10);
//! - the same component under `wasmtime serve -S cli` (wasmtime-cli 48, the peer), with
//!   its defaults and again with the pooling options wasmlet sets (memory and tables
//!   kept resident between instances, batched decommits);
//! - agent memory per idle HTTP pod with `HTTP_PODS` pods (default 1,000), each
//!   listening on a port of its own.
//!
//! Both servers share the machine's cores with wrk, so the ratio matters more than the
//! absolute rate.

#[path = "../../registry-client/tests/all/common.rs"]
#[allow(dead_code)]
mod common;
mod support;

use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};
use support::{cli, rss_kib, start_agent};

fn pod(name: &str, image: &str, port: u16) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  containers:\n  - name: app\n    image: {image}\n    ports:\n    - containerPort: {port}\n"
    )
}

fn wait_listening(port: u16) {
    let t = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(t.elapsed() < Duration::from_secs(600), "nothing listens on {port}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// (requests/s, p50 ms, p99 ms, non-2xx responses) from `wrk --latency`.
fn wrk(url: &str, secs: u64) -> (f64, f64, f64, u64) {
    let wrk = common::require("wrk", "wrk");
    let out =
        Command::new(wrk).args(["-t", "2", "-c", "64", "-d", &format!("{secs}s"), "--latency", url]).output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    let field = |prefix: &str| {
        text.lines()
            .find(|l| l.trim_start().starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1).map(str::to_string))
            .unwrap_or_else(|| panic!("wrk printed no {prefix:?}:\n{text}"))
    };
    let ms = |v: String| {
        let (n, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic()).unwrap_or(v.len()));
        let n: f64 = n.parse().unwrap_or(0.0);
        match unit {
            "us" => n / 1000.0,
            "s" => n * 1000.0,
            _ => n,
        }
    };
    let rps = field("Requests/sec:").parse().unwrap_or(0.0);
    let errors = text
        .lines()
        .find(|l| l.contains("Non-2xx or 3xx responses:"))
        .and_then(|l| l.rsplit(' ').next()?.parse().ok())
        .unwrap_or(0);
    (rps, ms(field("50%")), ms(field("99%")), errors)
}

fn main() {
    let secs: u64 = std::env::var("SECS").ok().and_then(|v| v.parse().ok()).unwrap_or(10);
    let pods: u16 = std::env::var("HTTP_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let wasmtime = std::env::var("WASMTIME").unwrap_or_else(|_| "/opt/wasmtime-peer/bin/wasmtime".into());
    assert!(
        std::path::Path::new(&wasmtime).is_file(),
        "{wasmtime} is missing: run scripts/setup-bench.sh (builds wasmtime-cli 48)"
    );
    let reg = common::Registry::start();
    let hello = common::wasm_app("http_hello", "wasm32-wasip2");
    let image = format!("{}/bench/http_hello:p2", reg.host);
    let state = tempfile::tempdir().unwrap();
    cli(state.path(), &["push", hello.to_str().unwrap(), &image]);

    let mut agent: Child = start_agent(state.path());
    let port = common::free_port();
    let f = state.path().join("hello.yaml");
    std::fs::write(&f, pod("hello", &image, port)).unwrap();
    cli(state.path(), &["apply", "-f", f.to_str().unwrap()]);
    wait_listening(port);
    std::thread::sleep(Duration::from_millis(500));
    let base = rss_kib(agent.id());

    // throughput and latency, wasmlet then the peer, same component, same load
    let _ = wrk(&format!("http://127.0.0.1:{port}/"), 2); // warm-up
    let ours = wrk(&format!("http://127.0.0.1:{port}/"), secs);
    let peer = |options: &[&str]| {
        let peer_port = common::free_port();
        let mut peer = Command::new(&wasmtime)
            .args(["serve", "-S", "cli", "--addr", &format!("127.0.0.1:{peer_port}")])
            .args(options)
            .arg(&hello)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        wait_listening(peer_port);
        let _ = wrk(&format!("http://127.0.0.1:{peer_port}/"), 2);
        let r = wrk(&format!("http://127.0.0.1:{peer_port}/"), secs);
        let _ = peer.kill();
        let _ = peer.wait();
        r
    };
    let theirs = peer(&[]);
    let tuned = peer(&[
        "-O",
        "pooling-allocator=y,pooling-memory-keep-resident=262144,pooling-table-keep-resident=65536,pooling-decommit-batch-size=16",
    ]);

    // density: idle HTTP pods, each listening on a port of its own
    let first = 40_000u16;
    let manifest: Vec<String> = (0..pods).map(|i| pod(&format!("idle{i}"), &image, first + i)).collect();
    let f = state.path().join("idle.yaml");
    std::fs::write(&f, manifest.join("---\n")).unwrap();
    cli(state.path(), &["apply", "-f", f.to_str().unwrap()]);
    for i in 0..pods {
        wait_listening(first + i);
    }
    std::thread::sleep(Duration::from_secs(2));
    let loaded = rss_kib(agent.id());

    println!("wasmlet HTTP component benchmark (wasmtime 48, release build, this machine, one run)");
    println!();
    println!("http-hello, wrk -t2 -c64 -d{secs}s on loopback (a fresh instance per request):");
    println!(
        "  wasmlet            {:>9.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   non-2xx {}",
        ours.0, ours.1, ours.2, ours.3
    );
    println!(
        "  wasmtime serve     {:>9.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   non-2xx {}",
        theirs.0, theirs.1, theirs.2, theirs.3
    );
    println!(
        "  wasmtime serve, tuned {:>7.0} req/s   p50 {:>7.3} ms   p99 {:>7.3} ms   non-2xx {}   (pooling, keep-resident, batched decommits)",
        tuned.0, tuned.1, tuned.2, tuned.3
    );
    println!(
        "  ratio wasmlet / wasmtime serve: {:.2} (defaults), {:.2} (tuned); target ≥ 0.9 and ≥ 30,000 req/s",
        ours.0 / theirs.0,
        ours.0 / tuned.0
    );
    println!();
    println!(
        "Idle HTTP pods: {pods} → agent RSS {:.1} MiB, {:.1} KiB per pod (target ≤ 256 KiB)",
        loaded as f64 / 1024.0,
        loaded.saturating_sub(base) as f64 / f64::from(pods)
    );
    let _ = agent.kill();
    let _ = agent.wait();
}
