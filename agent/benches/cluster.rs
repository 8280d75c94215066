//! Cluster-mode benchmark: `CLUSTER_PODS` Wasm pods (default 1,000) bound to a wasmlet
//! node through the stand-in API server (`kube-standin`, real TLS and the `kube` client's
//! wire protocol), created by `CREATE_RATE` pods per second (default 100).
//!
//! Reported:
//! - creation → Running as a watcher of the API server sees it (the Kubernetes pod
//!   startup SLI: p99 ≤ 5 s; wasmlet's aim for Wasm pods: p99 ≤ 1 s), p50/p99/max;
//! - the node's API requests per pod (status patches, events, the watch, lease and node
//!   status, counted by the stand-in for the node's identity);
//! - the agent's RSS.
//!
//! No kubelet can run here, so the peer is the SLO, not a measured run.
//!
//! This bench keeps the stand-in (the tests and `cluster_real` use a real control plane)
//! because it counts the node's requests by identity, which the v1.20 API server does
//! not report, and takes 1,000 bound pods at 100/s without the scheduler in the way.

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../registry-client/tests/all/common.rs"]
#[allow(dead_code)]
mod common;
mod support;

use std::time::{Duration, Instant};

use cluster_support::{StartTimes, node_flags, percentile};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube_standin::{ADMIN_TOKEN, ApiServer, User};
use support::{WASMLET, cli, rss_kib, start_agent_with};

const NODE: &str = "bench-node";

fn main() {
    let pods: usize = std::env::var("CLUSTER_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let rate: f64 = std::env::var("CREATE_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(100.0);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let reg = common::Registry::start();
    let sleep = common::wasm_app("sleep", "wasm32-wasip1");
    let image = format!("{}/bench/sleep:v1", reg.host);
    let state = tempfile::tempdir().unwrap();
    cli(state.path(), &["push", sleep.to_str().unwrap(), &image]);

    rt.block_on(async {
        let api = ApiServer::start().await.unwrap();
        let kc = kube::config::Kubeconfig::from_yaml(&api.kubeconfig_token(ADMIN_TOKEN)).unwrap();
        let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
        let admin = kube::Client::try_from(config).unwrap();
        let kubeconfig = state.path().join("node.kubeconfig");
        let user = format!("system:node:{NODE}");
        std::fs::write(&kubeconfig, api.kubeconfig_cert(&User::new(&user, &["system:nodes"]))).unwrap();
        let flags = node_flags(&kubeconfig, NODE, common::free_port(), 20000);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let mut agent = tokio::task::block_in_place(|| start_agent_with(state.path(), &flags));
        // joined (node, lease, watch), no pods yet
        tokio::time::sleep(Duration::from_secs(2)).await;
        let joined_rss = rss_kib(agent.id());
        let pod_api: Api<Pod> = Api::namespaced(admin.clone(), "default");
        let make = |name: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {
                    "nodeName": NODE, "runtimeClassName": "wasmlet",
                    "containers": [{"name": "app", "image": image, "args": ["86400"]}],
                },
            }))
            .unwrap()
        };
        // the watcher that sees pods become Running, as the SLI's observer
        let times = StartTimes::watch(pod_api.clone());
        // warm-up: pull and compile once
        times.created("warm");
        pod_api.create(&PostParams::default(), &make("warm")).await.unwrap();
        let t = Instant::now();
        while !times.is_running("warm") {
            assert!(t.elapsed() < Duration::from_secs(120), "the warm-up pod did not run");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let before = api.requests_of(&user);
        let idle_rss = rss_kib(agent.id());

        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..pods {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (pod_api, times, pod) = (pod_api.clone(), times.clone(), make(&format!("p{i}")));
            tasks.spawn(async move {
                times.created(&format!("p{i}"));
                pod_api.create(&PostParams::default(), &pod).await.unwrap();
            });
        }
        while tasks.join_next().await.is_some() {}
        let created_in = start.elapsed();
        let t = Instant::now();
        while times.running() < pods + 1 {
            assert!(t.elapsed() < Duration::from_secs(600), "only {} pods were seen Running", times.running());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // count once the node has settled: its queued events and last patches sent (only
        // the heartbeats go on, a few in 2 s)
        let settle = Instant::now();
        loop {
            let a = api.requests_of(&user);
            tokio::time::sleep(Duration::from_secs(2)).await;
            if api.requests_of(&user) - a <= 3 || settle.elapsed() > Duration::from_secs(120) {
                break;
            }
        }
        let requests = api.requests_of(&user) - before;
        let rss = rss_kib(agent.id());
        let lat = times.latencies_ms("warm");
        println!(
            "Cluster mode, {pods} Wasm pods created at {rate:.0}/s ({:.1} s) through the stand-in API server:",
            created_in.as_secs_f64()
        );
        println!(
            "  creation → Running seen by a watcher: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (SLO p99 ≤ 5,000 ms; aim ≤ 1,000 ms; p99/aim {:.2})",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[lat.len() - 1],
            percentile(&lat, 0.99) / 1000.0
        );
        println!(
            "  node API requests: {requests} in all, {:.2} per pod (status patches, events, lease and node status)",
            requests as f64 / pods as f64
        );
        println!(
            "  agent RSS: {:.1} MiB joined with no pods, {:.1} MiB with one pod (its module compiled), {:.1} MiB with {} pods ({:.1} KiB per pod)",
            joined_rss as f64 / 1024.0,
            idle_rss as f64 / 1024.0,
            rss as f64 / 1024.0,
            pods + 1,
            (rss.saturating_sub(idle_rss)) as f64 / pods as f64
        );
        let _ = std::process::Command::new(WASMLET).arg("--version").output();
        let _ = agent.kill();
        let _ = agent.wait();
    });
}
