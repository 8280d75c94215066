//! Cluster mode: wasmlet as a node of an existing Kubernetes cluster, like the kubelet.
//!
//! - [`node`]: the Node object, its Lease and its status;
//! - [`pods`]: the pods bound to the node, run through the pod manager, their status
//!   reported back, their ConfigMaps and Secrets fetched, graceful deletion;
//! - [`kubelet`]: the kubelet API on :10250 (TLS, authenticated and authorized through
//!   the API server) that `kubectl logs/exec/top` reach;
//! - [`certs`]: the node's client certificate bootstrap and its serving certificate.
//!
//! The pods and the objects they use are in sled, so an agent that starts while the API
//! server is unreachable runs what it knew; every loop here retries with back-off and
//! none of them stops a pod because the control plane is gone.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use k8s_openapi::api::core::v1::Taint;

use crate::pod::Manager;

pub mod certs;
pub mod eviction;
pub mod kubelet;
pub mod node;
pub mod pods;
pub mod streaming;
pub mod websocket;

/// The Kubernetes version this node reports: inside the version-skew window of current
/// API servers (a kubelet may be up to three minors older than its API server).
pub const KUBELET_VERSION: &str = "v1.34.0-wasmlet";

/// What cluster mode was started with.
#[derive(Clone, Debug)]
pub struct ClusterConfig {
    pub kubeconfig: PathBuf,
    pub bootstrap_kubeconfig: Option<PathBuf>,
    pub node_name: String,
    pub node_ip: String,
    pub kubelet_address: String,
    pub kubelet_port: u16,
    pub labels: std::collections::BTreeMap<String, String>,
    pub taints: Vec<Taint>,
    pub state_dir: PathBuf,
    /// CA bundle that client certificates on the kubelet API must chain to (default: the
    /// cluster CA of the kubeconfig).
    pub client_ca: Option<PathBuf>,
    /// Ask the cluster to sign the serving certificate (signer kubernetes.io/kubelet-serving)
    /// instead of signing one ourselves.
    pub serving_csr: bool,
    /// Status PATCHes per second, and the burst above it.
    pub qps: u32,
    pub burst: u32,
    /// `--eviction-hard`: the node's pressure conditions and allocatable follow them.
    pub eviction: eviction::Thresholds,
}

/// Joins the cluster and runs until the process ends. Everything that needs the API
/// server waits for it in the background: the node's pods run from the start.
pub async fn run(mgr: Arc<Manager>, cfg: ClusterConfig) -> anyhow::Result<()> {
    registry_client::install_crypto_provider();
    let cfg = Arc::new(cfg);
    let kubeconfig = certs::node_kubeconfig(&cfg).await?;
    let client = client(&kubeconfig).await?;
    let cluster_ca = certs::cluster_ca(&kubeconfig)?;
    let sync = pods::PodSync::new(client.clone(), mgr.clone(), cfg.clone());
    mgr.observe(sync.clone());
    tokio::spawn(sync.clone().run());
    let linux = mgr.runtimes().has(wasmlet_runtime::RuntimeKind::Linux);
    {
        let (client, mgr, cfg, sync) = (client.clone(), mgr.clone(), cfg.clone(), sync.clone());
        tokio::spawn(async move {
            let mut attempt = 0;
            let uid = loop {
                match node::register(&client, &mgr, &cfg, linux).await {
                    Ok(uid) => break uid,
                    Err(e) => {
                        attempt += 1;
                        tracing::warn!(error = %e, attempt, "cannot register the node; retrying");
                        tokio::time::sleep(node::backoff(attempt)).await;
                    }
                }
            };
            tokio::spawn(node::lease_loop(client.clone(), cfg.clone(), uid, sync.clone()));
            node::status_loop(client, mgr, cfg, sync).await;
        });
    }
    let serving = certs::serving_cert(&client, &cfg).await?;
    let client_ca = match &cfg.client_ca {
        Some(p) => std::fs::read(p).with_context(|| format!("reading --client-ca-file {}", p.display()))?,
        None => cluster_ca,
    };
    kubelet::serve(kubelet::KubeletApi::new(client, mgr, cfg.clone(), sync), &client_ca, serving).await
}

/// A client for the API server from a kubeconfig file.
pub async fn client(kubeconfig: &std::path::Path) -> anyhow::Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)
        .with_context(|| format!("reading the kubeconfig {}", kubeconfig.display()))?;
    let mut config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("loading the kubeconfig {}", kubeconfig.display()))?;
    // a lost control plane must not hang a call for long: the loops retry
    config.connect_timeout = Some(std::time::Duration::from_secs(5));
    config.read_timeout = Some(std::time::Duration::from_secs(300));
    config.write_timeout = Some(std::time::Duration::from_secs(10));
    kube::Client::try_from(config).context("building the Kubernetes client")
}
