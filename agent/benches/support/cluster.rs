//! What the cluster benches share: a watcher that times each pod from its creation
//! request to Running, as the Kubernetes pod-startup SLI's observer does, and the
//! percentiles.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::watcher;

pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    sorted[((sorted.len() as f64 * p).ceil() as usize).saturating_sub(1).min(sorted.len() - 1)]
}

pub fn running(p: &Pod) -> bool {
    let s = p.status.as_ref();
    s.and_then(|s| s.phase.as_deref()) == Some("Running")
        && s.and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| c.iter().all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())))
}

/// When each pod's creation was asked for, and how long after it a watcher saw it Running.
#[derive(Clone, Default)]
pub struct StartTimes {
    pub created: Arc<Mutex<HashMap<String, Instant>>>,
    pub seen: Arc<Mutex<HashMap<String, Duration>>>,
}

impl StartTimes {
    /// Watches `pods` in the background.
    pub fn watch(pods: Api<Pod>) -> StartTimes {
        let times = StartTimes::default();
        let t = times.clone();
        tokio::spawn(async move {
            let mut stream = watcher(pods, watcher::Config::default()).boxed();
            while let Some(ev) = stream.next().await {
                let Ok(watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = ev else { continue };
                let name = p.metadata.name.clone().unwrap_or_default();
                if running(&p)
                    && let Some(c) = t.created.lock().unwrap().get(&name)
                {
                    t.seen.lock().unwrap().entry(name).or_insert_with(|| c.elapsed());
                }
            }
        });
        times
    }

    pub fn created(&self, name: &str) {
        self.created.lock().unwrap().insert(name.to_string(), Instant::now());
    }

    pub fn running(&self) -> usize {
        self.seen.lock().unwrap().len()
    }

    pub fn is_running(&self, name: &str) -> bool {
        self.seen.lock().unwrap().contains_key(name)
    }

    /// Creation → Running in ms, sorted, the warm-up pod left out.
    pub fn latencies_ms(&self, warm_up: &str) -> Vec<f64> {
        let mut lat: Vec<f64> = self
            .seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(k, _)| *k != warm_up)
            .map(|(_, d)| d.as_secs_f64() * 1e3)
            .collect();
        lat.sort_by(|a, b| a.total_cmp(b));
        lat
    }
}

/// `serve` flags for a node named `node` on loopback, its kubelet API on a free port.
pub fn node_flags(kubeconfig: &std::path::Path, node: &str, port: u16, max_pods: usize) -> Vec<String> {
    let kubeconfig = kubeconfig.to_str().unwrap();
    let (port, max_pods) = (port.to_string(), max_pods.to_string());
    let flags = ["--kubeconfig", kubeconfig, "--node-name", node, "--node-ip", "127.0.0.1", "--address", "127.0.0.1"];
    // absolute thresholds: with the kubelet's percentages a node on a shared disk more
    // than 85 % full is in DiskPressure, tainted, and the scheduler places nothing on it
    let eviction = ["--eviction-hard", "memory.available<100Mi,nodefs.available<256Mi,imagefs.available<256Mi"];
    flags.into_iter().chain(["--port", &port, "--max-pods", &max_pods]).chain(eviction).map(String::from).collect()
}
