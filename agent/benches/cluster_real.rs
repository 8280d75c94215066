//! Cluster mode against the real control plane (kube-apiserver, controller-manager and
//! scheduler v1.20 from `scripts/setup-kube.sh`, etcd 3.4), the node reaching the API
//! server through a loopback relay the bench can cut:
//! - node Ready: from starting the agent to `Ready=True` in the API server;
//! - `REAL_PODS` Wasm pods (default 100) created at `REAL_RATE` per second (default 20)
//!   with `runtimeClassName: wasmlet` and no `nodeName`: creation → Running as a watcher
//!   sees it, through the real scheduler (p50/p99/max beside the pod-startup SLO,
//!   p99 ≤ 5 s);
//! - after the API server is stopped for 20 s and started again: the time from its
//!   `/readyz` to the node's Lease renewed and every pod Ready;
//! - after the node is cut off for `REAL_CUT` seconds (default 100, as in the partition
//!   that once left a node NotReady for minutes; iptables drops its packets, so TCP backs
//!   off as on a real network; the node controller marks it Unknown after 16 s here and
//!   its pods not Ready): the time from healing to node Ready and every pod Ready again
//!   (target ≤ 10 s).

#[path = "support/cluster.rs"]
mod cluster_support;
#[path = "../../registry-client/tests/all/common.rs"]
#[allow(dead_code)]
mod common;
#[path = "../../tests/e2e/control_plane.rs"]
#[allow(dead_code)]
mod control_plane;
mod support;

use std::time::{Duration, Instant};

use cluster_support::{StartTimes, node_flags, percentile};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use kube_standin::User;
use support::{cli, rss_kib, start_agent_with};

const NODE: &str = "bench-node";

fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

async fn node_ready(nodes: &Api<Node>) -> bool {
    let Ok(n) = nodes.get(NODE).await else { return false };
    n.status.and_then(|s| s.conditions).is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Polls until `check` holds; the time it took.
async fn until<F: std::future::Future<Output = bool>>(
    what: &str,
    limit: Duration,
    mut check: impl FnMut() -> F,
) -> Duration {
    let t = Instant::now();
    while !check().await {
        assert!(t.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    t.elapsed()
}

fn main() {
    let pods: usize = std::env::var("REAL_PODS").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let rate: f64 = std::env::var("REAL_RATE").ok().and_then(|v| v.parse().ok()).unwrap_or(20.0);
    let cut_for: u64 = std::env::var("REAL_CUT").ok().and_then(|v| v.parse().ok()).unwrap_or(100);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let reg = common::Registry::start();
    let sleep = common::wasm_app("sleep", "wasm32-wasip1");
    let image = format!("{}/bench/sleep:v1", reg.host);
    let state = tempfile::tempdir().unwrap();
    cli(state.path(), &["push", sleep.to_str().unwrap(), &image]);

    rt.block_on(async {
        let mut cp = control_plane::ControlPlane::start_with(&["--node-monitor-grace-period=16s", "--node-monitor-period=2s"]).await;
        let admin = cp.admin().await;
        let net = control_plane::Partition::start(cp.api_port).await;
        let rc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster/runtimeclass.yaml"));
        tokio::task::block_in_place(|| cp.apply(&rc.unwrap()));
        let kubeconfig = state.path().join("node.kubeconfig");
        let user = User::new(&format!("system:node:{NODE}"), &["system:nodes"]);
        std::fs::write(&kubeconfig, cp.kubeconfig_cert(&user, net.port)).unwrap();
        let flags = node_flags(&kubeconfig, NODE, common::free_port(), 1000);
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        let nodes: Api<Node> = Api::all(admin.clone());
        let t0 = Instant::now();
        let mut agent = tokio::task::block_in_place(|| start_agent_with(state.path(), &flags));
        until("node Ready", Duration::from_secs(60), || node_ready(&nodes)).await;
        let node_ready_in = t0.elapsed();

        let pod_api: Api<Pod> = Api::namespaced(admin.clone(), "default");
        let make = |name: &str| -> Pod {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name},
                "spec": {
                    "runtimeClassName": "wasmlet",
                    "containers": [{"name": "app", "image": image, "args": ["86400"]}],
                },
            }))
            .unwrap()
        };
        let times = StartTimes::watch(pod_api.clone());
        // warm-up: pull and compile once
        times.created("warm");
        pod_api.create(&PostParams::default(), &make("warm")).await.unwrap();
        until("the warm-up pod", Duration::from_secs(120), || {
            let times = times.clone();
            async move { times.is_running("warm") }
        })
        .await;

        let start = Instant::now();
        for i in 0..pods {
            let due = start + Duration::from_secs_f64(i as f64 / rate);
            tokio::time::sleep_until(due.into()).await;
            let (pod_api, times, pod) = (pod_api.clone(), times.clone(), make(&format!("p{i}")));
            tokio::spawn(async move {
                times.created(&format!("p{i}"));
                pod_api.create(&PostParams::default(), &pod).await.unwrap();
            });
        }
        until("every pod Running", Duration::from_secs(300), || {
            let times = times.clone();
            async move { times.running() > pods }
        })
        .await;
        let lat = times.latencies_ms("warm");
        let rss = rss_kib(agent.id());

        let all_ready = || {
            let pod_api = pod_api.clone();
            async move {
                let list = pod_api.list(&Default::default()).await;
                list.is_ok_and(|l| l.items.len() > pods && l.items.iter().all(ready))
            }
        };
        // the API server stopped for 20 s, then started again
        let leases: Api<Lease> = Api::namespaced(admin.clone(), "kube-node-lease");
        cp.stop_apiserver();
        tokio::time::sleep(Duration::from_secs(20)).await;
        cp.restart_apiserver().await;
        let back = jiff::Timestamp::now();
        let lease_in = until("the lease renewed", Duration::from_secs(60), || {
            let leases = leases.clone();
            async move {
                leases.get(NODE).await.ok().and_then(|l| l.spec?.renew_time).is_some_and(|t| t.0 > back)
            }
        })
        .await;
        let outage_in = lease_in + until("pods Ready after the outage", Duration::from_secs(60), all_ready).await;

        // cut off
        let cut_at = Instant::now();
        net.cut();
        until("the node Unknown", Duration::from_secs(60), || {
            let nodes = nodes.clone();
            async move { !node_ready(&nodes).await }
        })
        .await;
        until("pods marked not Ready", Duration::from_secs(60), || {
            let pod_api = pod_api.clone();
            async move { pod_api.list(&Default::default()).await.is_ok_and(|l| l.items.iter().any(|p| !ready(p))) }
        })
        .await;
        tokio::time::sleep(Duration::from_secs(cut_for).saturating_sub(cut_at.elapsed())).await;
        let healed = Instant::now();
        net.heal();
        until("node Ready after the partition", Duration::from_secs(120), || node_ready(&nodes)).await;
        let node_back = healed.elapsed();
        until("pods Ready after the partition", Duration::from_secs(120), all_ready).await;
        let partition_in = healed.elapsed();

        let version = std::fs::read_to_string(control_plane::bin_dir().join("VERSION")).unwrap_or_default();
        println!("Cluster mode against a real control plane ({}, etcd 3.4), {pods} Wasm pods:", version.trim());
        println!("  node Ready after the agent started: {:.2} s", node_ready_in.as_secs_f64());
        println!(
            "  creation → Running through the scheduler, {rate:.0} pods/s: p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms (SLO p99 ≤ 5,000 ms; p99/SLO {:.3})",
            percentile(&lat, 0.5),
            percentile(&lat, 0.99),
            lat[lat.len() - 1],
            percentile(&lat, 0.99) / 5000.0
        );
        println!(
            "  API server down 20 s: lease renewed {:.2} s and every pod Ready {:.2} s after it was ready again (target ≤ 10 s)",
            lease_in.as_secs_f64(),
            outage_in.as_secs_f64()
        );
        println!(
            "  cut off {cut_for} s (Unknown, pods not Ready): node Ready {:.2} s and every pod Ready {:.2} s after healing (target ≤ 10 s; ratio {:.2})",
            node_back.as_secs_f64(),
            partition_in.as_secs_f64(),
            partition_in.as_secs_f64() / 10.0
        );
        println!("  agent RSS with {} pods: {:.1} MiB", pods + 1, rss as f64 / 1024.0);
        let _ = agent.kill();
        let _ = agent.wait();
    });
}
