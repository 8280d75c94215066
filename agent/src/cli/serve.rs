//! `wasmlet serve`: the daemon. Opens the state database, the image service and the
//! runtimes, resumes every stored pod and serves the local API until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use clap::Args;

use super::Global;
use crate::image::ImageService;
use crate::pod::Manager;
use wasmlet_runtime::Runtimes;
use wasmlet_runtime::linux::{LinuxConfig, LinuxRuntime};
use wasmlet_runtime::wasm::{WasmConfig, WasmRuntime};

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Live Wasm instances the pool has room for.
    #[arg(long, default_value_t = 10_500)]
    pub max_wasm_instances: u32,
    #[command(flatten)]
    pub runtime: RuntimeArgs,
    #[command(flatten)]
    pub cluster: ClusterArgs,
    #[command(flatten)]
    pub cri: CriArgs,
}

/// Container-runtime mode: serve CRI v1 to a kubelet or crictl.
#[derive(Clone, Debug, Args)]
pub struct CriArgs {
    /// Serve CRI v1 (RuntimeService and ImageService) on this unix socket; given
    /// without a path, on /run/wasmlet/cri.sock.
    #[arg(long, value_name = "PATH", num_args = 0..=1, default_missing_value = crate::cri::DEFAULT_SOCKET)]
    pub cri_socket: Option<std::path::PathBuf>,
    /// Where the CRI streaming server (Exec, Attach, PortForward URLs) listens; port 0
    /// picks a free one. The kubelet relays these streams, so loopback is enough.
    #[arg(long, default_value = "127.0.0.1:0", value_name = "IP:PORT")]
    pub cri_streaming_address: String,
}

/// Cluster mode: join a Kubernetes cluster as a node.
#[derive(Clone, Debug, Args)]
pub struct ClusterArgs {
    /// Join the cluster this kubeconfig points at, as a node (the node's own identity:
    /// a client certificate or token for `system:node:NAME`). With --bootstrap-kubeconfig,
    /// this is where the issued identity is written when the file does not exist.
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Get the node identity through a CertificateSigningRequest, with the bootstrap token
    /// of this kubeconfig, when --kubeconfig does not exist yet.
    #[arg(long, value_name = "FILE", requires = "kubeconfig")]
    pub bootstrap_kubeconfig: Option<std::path::PathBuf>,
    /// The Node's name (default: the hostname).
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The address the node reports and the API server dials (default: detected).
    #[arg(long, value_name = "IP")]
    pub node_ip: Option<String>,
    /// Where the kubelet API listens.
    #[arg(long, default_value = "0.0.0.0", value_name = "IP")]
    pub address: String,
    /// The kubelet API's port.
    #[arg(long, default_value_t = 10250)]
    pub port: u16,
    /// Extra node labels, KEY=VALUE, comma-separated or repeated.
    #[arg(long, value_delimiter = ',', value_name = "KEY=VALUE")]
    pub node_labels: Vec<String>,
    /// Taints the node registers with, KEY[=VALUE]:EFFECT; an empty value for none.
    #[arg(long, value_delimiter = ',', default_value = "wasmlet.dev/node=true:NoSchedule", value_name = "TAINT")]
    pub register_with_taints: Vec<String>,
    /// CA bundle for client certificates on the kubelet API (default: the cluster CA).
    #[arg(long, value_name = "FILE")]
    pub client_ca_file: Option<std::path::PathBuf>,
    /// Have the cluster sign the kubelet API's serving certificate (signer
    /// kubernetes.io/kubelet-serving; needs approval) instead of a self-signed one.
    #[arg(long)]
    pub rotate_server_certificates: bool,
    /// Pod status updates per second sent to the API server (events have a budget of
    /// the same size of their own). Higher than the kubelet's 50: a Wasm pod starts in
    /// a millisecond, so its status report is what a creation burst waits for…
    #[arg(long, default_value_t = 200)]
    pub kube_api_qps: u32,
    /// …and the burst above that.
    #[arg(long, default_value_t = 400)]
    pub kube_api_burst: u32,
    /// Hard eviction thresholds, SIGNAL<AMOUNT comma-separated, as the kubelet's: the
    /// node reports MemoryPressure, DiskPressure or PIDPressure below them (the control
    /// plane then taints it against new pods), and allocatable is capacity less them.
    /// Signals: memory.available, nodefs.available, nodefs.inodesFree, imagefs.available,
    /// imagefs.inodesFree (both filesystems are the state directory's), pid.available;
    /// amounts are quantities or percentages. Given at all, a signal left out has none.
    #[arg(long, default_value = crate::cluster::eviction::DEFAULT, value_name = "THRESHOLDS",
          value_parser = crate::cluster::eviction::Thresholds::parse)]
    pub eviction_hard: crate::cluster::eviction::Thresholds,
}

impl ClusterArgs {
    pub fn config(
        &self,
        state_dir: &std::path::Path,
        node: &crate::node::Node,
    ) -> anyhow::Result<Option<crate::cluster::ClusterConfig>> {
        let Some(kubeconfig) = &self.kubeconfig else { return Ok(None) };
        let mut labels = std::collections::BTreeMap::new();
        for l in &self.node_labels {
            let (k, v) = l.split_once('=').with_context(|| format!("--node-labels {l:?}: want KEY=VALUE"))?;
            labels.insert(k.to_string(), v.to_string());
        }
        let taints = self
            .register_with_taints
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| crate::cluster::node::parse_taint(t).map_err(anyhow::Error::msg))
            .collect::<anyhow::Result<Vec<_>>>()?;
        Ok(Some(crate::cluster::ClusterConfig {
            kubeconfig: kubeconfig.clone(),
            bootstrap_kubeconfig: self.bootstrap_kubeconfig.clone(),
            node_name: self.node_name.clone().unwrap_or_else(|| node.name.clone()),
            node_ip: self.node_ip.clone().unwrap_or_else(|| node.ip.clone()),
            kubelet_address: self.address.clone(),
            kubelet_port: self.port,
            labels,
            taints,
            state_dir: state_dir.to_path_buf(),
            client_ca: self.client_ca_file.clone(),
            serving_csr: self.rotate_server_certificates,
            qps: self.kube_api_qps,
            burst: self.kube_api_burst,
            eviction: self.eviction_hard,
        }))
    }
}

/// How Linux containers are run and networked.
#[derive(Clone, Debug, Args)]
pub struct RuntimeArgs {
    /// The most pods the node takes (capacity and allocatable `pods`). Default: what the
    /// machine allows (the Wasm pool, memory mappings, memory); a pod beyond it fails
    /// with `OutOfpods`.
    #[arg(long, value_name = "N")]
    pub max_pods: Option<u32>,
    /// The pod subnet, from which CNI's host-local gives each pod its IP.
    #[arg(long, default_value = "10.88.0.0/16", value_name = "CIDR")]
    pub pod_cidr: String,
    /// The host bridge pods are attached to (one per pod CIDR).
    #[arg(long, default_value = "wasmlet0", value_name = "NAME")]
    pub pod_bridge: String,
    /// Where CNI's host-local keeps its address leases (default: STATE_DIR/linux/cni).
    #[arg(long, value_name = "DIR")]
    pub cni_ipam_dir: Option<std::path::PathBuf>,
    /// runc binary (default: from PATH).
    #[arg(long, value_name = "PATH")]
    pub runc: Option<std::path::PathBuf>,
    /// conmon binary (default: from PATH).
    #[arg(long, value_name = "PATH")]
    pub conmon: Option<std::path::PathBuf>,
    /// Where the CNI plugins are.
    #[arg(long, default_value = wasmlet_runtime::linux::DEFAULT_CNI_PLUGIN_DIR, value_name = "DIR")]
    pub cni_plugin_dir: std::path::PathBuf,
    /// Run Linux containers with a runc that lacks known CVE fixes (such as Debian
    /// bookworm's 1.1.5). Without it such a runc is refused, and Linux pods wait.
    #[arg(long)]
    pub allow_vulnerable_runtime: bool,
    /// Run containers whose spec names no seccomp profile under RuntimeDefault instead
    /// of Unconfined (the kubelet's --seccomp-default).
    #[arg(long)]
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles are (default: STATE_DIR/seccomp, as the
    /// kubelet's /var/lib/kubelet/seccomp).
    #[arg(long, value_name = "DIR")]
    pub seccomp_profile_root: Option<std::path::PathBuf>,
    /// Whether pods may run privileged containers (--allow-privileged=false refuses them).
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    pub allow_privileged: bool,
    /// Unsafe sysctls (names, or patterns ending in `*`) pods may set beyond the safe
    /// set, comma-separated: `net.core.somaxconn,kernel.msg*`.
    #[arg(long, value_delimiter = ',', value_name = "NAMES")]
    pub allowed_unsafe_sysctls: Vec<String>,
    /// Disk usage (percent) of the state directory's filesystem above which unused
    /// images are removed, least recently used first…
    #[arg(long, default_value_t = 85, value_name = "PERCENT")]
    pub image_gc_high_threshold: u64,
    /// …until usage is below this.
    #[arg(long, default_value_t = 80, value_name = "PERCENT")]
    pub image_gc_low_threshold: u64,
    /// A container's log file is rotated when it would grow past this (the kubelet's
    /// `containerLogMaxSize`)…
    #[arg(long, default_value = "10Mi", value_name = "QUANTITY", value_parser = parse_log_size)]
    pub container_log_max_size: u64,
    /// …and this many files are kept per container, the current one included.
    #[arg(long, default_value_t = 5, value_name = "N", value_parser = clap::value_parser!(u32).range(2..))]
    pub container_log_max_files: u32,
    /// How often Linux containers' logs (written by conmon) are checked for rotation;
    /// Wasm containers' logs rotate as they are written.
    #[arg(long, default_value = "10s", value_name = "DURATION", value_parser = parse_interval)]
    pub container_log_monitor_interval: std::time::Duration,
}

fn parse_log_size(s: &str) -> Result<u64, String> {
    crate::spec::quantity::parse_bytes(s)
        .filter(|&n| n > 0)
        .ok_or_else(|| format!("{s:?} is not a size such as 10Mi or 500Ki"))
}

/// `10s`, `500ms`, `2m`: the unit is required here.
fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let bad = || format!("{s:?} is not a duration such as 10s or 500ms");
    if !s.ends_with(|c: char| c.is_ascii_alphabetic()) {
        return Err(bad());
    }
    crate::spec::annotations::duration_ms(s).filter(|&ms| ms > 0).map(std::time::Duration::from_millis).ok_or_else(bad)
}

/// Builds the agent's parts over `global.state_dir` and resumes its pods.
pub async fn start_agent(global: &Global, max_wasm_instances: u32, rt: &RuntimeArgs) -> anyhow::Result<Arc<Manager>> {
    raise_open_file_limit();
    let dir = &global.state_dir;
    std::fs::create_dir_all(dir).with_context(|| format!("creating the state directory {}", dir.display()))?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    let store = crate::store::Store::open(dir)
        .context("opening the state database (is another wasmlet using this --state-dir?)")?;
    let images = Arc::new(ImageService::open(dir, global.registry_config()?, global.keychain()?, store.clone())?);
    let wasm = WasmConfig { max_instances: max_wasm_instances, ..WasmConfig::new(dir.join("compiled")) };
    let mut linux = LinuxConfig::new(dir, &rt.pod_cidr);
    if let Some(p) = &rt.runc {
        linux.runc = p.clone();
    }
    if let Some(p) = &rt.conmon {
        linux.conmon = p.clone();
    }
    linux.network.plugin_dir = rt.cni_plugin_dir.clone();
    linux.network.bridge = rt.pod_bridge.clone();
    if let Some(d) = &rt.cni_ipam_dir {
        linux.network.data_dir = d.clone();
    }
    linux.allow_vulnerable_runtime = rt.allow_vulnerable_runtime;
    linux.log_monitor_interval = rt.container_log_monitor_interval;
    let linux = LinuxRuntime::new(linux);
    if let Err(why) = &linux {
        tracing::warn!("Linux containers are unavailable: {why}");
        eprintln!("wasmlet: Linux containers are unavailable: {why}");
    }
    let wasm = WasmRuntime::new(wasm)?;
    // the pool is reserved now: what is left of the mappings is what pods may use
    let pool = match wasm.pool() {
        Some(p) if p.slots < max_wasm_instances => {
            eprintln!("wasmlet: the address space holds a Wasm instance pool of {}, not {max_wasm_instances}", p.slots);
            crate::node::Pool { slots: p.slots, asked: max_wasm_instances }
        }
        Some(p) => {
            if p.memory < WasmConfig::new(Default::default()).max_memory {
                eprintln!(
                    "wasmlet: each of the {} Wasm instance slots reserves {} MiB, so that all fit: \
                     a guest's memory is capped there, and compiled code checks its bounds",
                    p.slots,
                    p.memory >> 20
                );
            }
            crate::node::Pool { slots: p.slots, asked: p.slots }
        }
        // on demand, each instance reserves its memory's range as a pooled slot would
        None => crate::node::Pool { slots: max_wasm_instances, asked: max_wasm_instances },
    };
    let runtime = Arc::new(Runtimes::new(wasm, linux));
    let wanted = rt.max_pods.unwrap_or(pool.slots).min(pool.slots);
    let (max_maps, used_maps) = crate::node::map_counts();
    let max_maps = crate::node::raise_max_map_count(u64::from(wanted), (max_maps, used_maps));
    let capacity = crate::node::pod_capacity(rt.max_pods, pool, max_maps, used_maps);
    tracing::info!(pods = capacity.pods, limit = %capacity.limit, "pod capacity");
    tracing::info!("runtime ready; resuming pods");
    let mut policy = crate::node::Policy::new(dir);
    policy.log.max_size = rt.container_log_max_size;
    policy.log.max_files = rt.container_log_max_files;
    // logs stop writing before the state database could run short
    policy.log.keep_free = crate::store::FREE_FLOOR / 4;
    policy.capacity = capacity;
    policy.seccomp_default = rt.seccomp_default;
    policy.allow_privileged = rt.allow_privileged;
    policy.allowed_unsafe_sysctls = rt.allowed_unsafe_sysctls.iter().filter(|s| !s.is_empty()).cloned().collect();
    if let Some(root) = &rt.seccomp_profile_root {
        policy.seccomp_profile_root = root.clone();
    }
    for s in &policy.allowed_unsafe_sysctls {
        let name = s.trim_end_matches('*');
        if crate::node::sysctl_namespace(name).is_none() && !s.ends_with('*') {
            anyhow::bail!(
                "--allowed-unsafe-sysctls {s:?}: not a namespaced sysctl (kernel.shm*, kernel.msg*, kernel.sem, fs.mqueue.*, net.*)"
            );
        }
    }
    let mgr = Manager::start(store, images, runtime, dir, policy).await?;
    crate::workload::start(&mgr);
    let (gc, thresholds) = (Arc::downgrade(&mgr), (rt.image_gc_high_threshold, rt.image_gc_low_threshold));
    tokio::spawn(async move {
        // the stored pods and resident memory after the last trim
        let mut trimmed = None;
        // image garbage collection under disk pressure, as the kubelet's (every 5 min there)
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(30));
        loop {
            tick.tick().await;
            let Some(mgr) = gc.upgrade() else { return };
            if let Err(e) = mgr.prune_images(Some(thresholds)).await {
                tracing::warn!(error = %e, "image garbage collection failed");
            }
            let pods = mgr.stored_pods();
            drop(mgr);
            // and memory freed by bursts (an apply of thousands of pods parses, saves
            // and answers them all at once) goes back to the system: glibc keeps freed
            // pages inside its arenas otherwise (3 KiB a pod after such a burst)
            let Some(resident) = resident_bytes() else { continue };
            if worth_trimming(trimmed, (pods, resident)) {
                let after = tokio::task::spawn_blocking(move || {
                    let t0 = std::time::Instant::now();
                    return_freed_memory();
                    let after = resident_bytes().unwrap_or(resident);
                    tracing::debug!(took_us = t0.elapsed().as_micros() as u64, before = resident, after, "malloc_trim");
                    after
                })
                .await
                .unwrap_or(resident);
                trimmed = Some((pods, after));
            }
        }
    });
    let watched = Arc::downgrade(&mgr);
    tokio::spawn(async move {
        // a state database stopped by an I/O error (a disk filled from outside) is
        // reopened as soon as space returns
        let mut tick = tokio::time::interval(std::time::Duration::from_secs(2));
        loop {
            tick.tick().await;
            let Some(mgr) = watched.upgrade() else { return };
            if let Err(e) = mgr.recover_store().await {
                tracing::warn!(error = %e, "cannot reopen the state database yet");
            }
        }
    });
    Ok(mgr)
}

/// Whether a burst may have left freed pages behind since the last trim (`then`: the
/// stored pods and resident bytes after it): memory grew, or pods came or went.
/// `malloc_trim` walks every arena's free chunks under the arena's lock and madvises
/// each one (milliseconds with thousands of pods, and starts wait on those locks), so an
/// agent that has been steady since does not pay for it.
fn worth_trimming(then: Option<(usize, u64)>, (pods, resident): (usize, u64)) -> bool {
    let Some((pods_then, resident_then)) = then else { return true };
    pods.abs_diff(pods_then) >= 64 || resident > resident_then + (resident_then / 16).max(8 << 20)
}

/// The agent's resident memory, from `/proc/self/statm`.
fn resident_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    Some(pages * page_size())
}

/// The page size, from libc (rustix's own reading of the auxiliary vector faults under
/// valgrind, which `scripts/startup-order.sh` runs the agent in).
fn page_size() -> u64 {
    // SAFETY: sysconf reads a constant of the C library and takes no pointer.
    #[allow(unsafe_code)]
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(size).ok().filter(|&s| s > 0).unwrap_or(4096)
}

/// Returns the free pages of every malloc arena to the system.
fn return_freed_memory() {
    // SAFETY: malloc_trim only walks glibc's own arenas under their locks, and takes
    // no pointer of ours.
    #[allow(unsafe_code)]
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Every container holds its log open: lift the soft limit on open files to the hard one.
fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current < limit.maximum {
        let raised = rustix::process::Rlimit { current: limit.maximum, maximum: limit.maximum };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %e, "cannot raise the open-file limit");
        }
    }
}

pub async fn run(global: &Global, args: ServeArgs) -> anyhow::Result<()> {
    // a bad cluster flag fails before anything starts
    let probe = crate::node::Node::detect(&global.state_dir);
    let cluster = args.cluster.config(&global.state_dir, &probe)?;
    let manager = start_agent(global, args.max_wasm_instances, &args.runtime).await?;
    let capacity = manager.pod_capacity();
    eprintln!("wasmlet: this node takes {} pods (set by {})", capacity.pods, capacity.limit);
    let socket = global.socket();
    tracing::info!(socket = %socket.display(), "serving");
    eprintln!("wasmlet: serving on {}", socket.display());
    let cri_mode = async {
        match &args.cri.cri_socket {
            Some(path) => {
                let cri = crate::cri::Cri::open(manager.clone(), &global.state_dir, &args.cri.cri_streaming_address)
                    .await
                    .context("starting the CRI server")?;
                eprintln!("wasmlet: serving CRI on {}", path.display());
                crate::cri::serve(path, cri).await.with_context(|| format!("serving CRI on {}", path.display()))
            }
            None => std::future::pending().await,
        }
    };
    let cluster_mode = async {
        match cluster {
            Some(cfg) => crate::cluster::run(manager.clone(), cfg).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = crate::api::serve(&socket, manager.clone()) => r.with_context(|| format!("serving on {}", socket.display()))?,
        r = cluster_mode => r.context("cluster mode")?,
        r = cri_mode => r?,
        _ = shutdown_signal() => eprintln!("wasmlet: shutting down"),
    }
    manager.release_secret_volumes();
    // the events still queued, and whatever sled has not yet made durable
    if let Err(e) = manager.flush().await {
        tracing::warn!(error = %e, "cannot flush state at shutdown");
    }
    let _ = std::fs::remove_file(&socket);
    if let Some(cri) = &args.cri.cri_socket {
        let _ = std::fs::remove_file(cri);
    }
    Ok(())
}

pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

#[cfg(test)]
mod tests {
    use super::worth_trimming;

    #[test]
    fn memory_is_trimmed_after_bursts_not_every_time() {
        const MI: u64 = 1 << 20;
        assert!(worth_trimming(None, (0, 10 * MI)), "the first time");
        assert!(!worth_trimming(Some((30_000, 1900 * MI)), (30_000, 1950 * MI)), "steady");
        assert!(worth_trimming(Some((30_000, 1900 * MI)), (30_000, 2100 * MI)), "grew by more than 1/16");
        assert!(worth_trimming(Some((30_000, 1900 * MI)), (29_000, 1900 * MI)), "pods went");
        assert!(worth_trimming(Some((0, 10 * MI)), (0, 19 * MI)), "grew by more than 8 MiB");
        assert!(!worth_trimming(Some((0, 10 * MI)), (10, 17 * MI)));
    }
}
