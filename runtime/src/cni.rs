//! The pod network: one network namespace per pod, wired by CNI plugins.
//!
//! wasmlet makes the namespace itself (a thread `unshare`s a new one and bind-mounts it
//! to a file under the state directory), then runs the standard plugins the way a CNI
//! runtime does (the CNI spec, "Execution protocol"): `loopback` for `lo`, then the
//! shipped `wasmlet.conflist` chain — `bridge` with `host-local` addresses, then
//! `portmap` for `hostPort`s — each fed its network configuration on stdin with the
//! previous plugin's result. Nothing is masqueraded: traffic stays between the host and
//! the pods.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;

use crate::PortMapping;

/// The chain wasmlet ships; `@SUBNET@`, `@BRIDGE@` and `@DATADIR@` are filled in at start.
const CONFLIST: &str = include_str!("../cni/wasmlet.conflist");

/// Where Debian's `containernetworking-plugins` puts the plugins.
pub const DEFAULT_PLUGIN_DIR: &str = "/usr/lib/cni";

/// Why the pod network could not be made or taken down.
#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("wasmlet.conflist: {0}")]
    Conflist(#[source] serde_json::Error),
    #[error("CNI plugin {plugin} not found in {dir}: install it with `apt-get install containernetworking-plugins`", dir = .dir.display())]
    MissingPlugin { plugin: &'static str, dir: PathBuf },
    #[error("hostPort {port}/{protocol} is already in use on the host: {source}")]
    PortTaken {
        port: u16,
        protocol: String,
        #[source]
        source: std::io::Error,
    },
    #[error("network namespace {path}: {source}", path = .path.display())]
    Namespace {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin}: {source}")]
    Spawn {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    /// The plugin failed and said why (its `msg` and `details`, or its output).
    #[error("CNI {command} {plugin}: {message}")]
    Plugin { command: &'static str, plugin: String, message: String },
    #[error("the pod network was not set up")]
    NotWired,
    #[error("CNI {command} {plugin}: bad result: {source}")]
    BadResult {
        command: &'static str,
        plugin: String,
        #[source]
        source: serde_json::Error,
    },
}

type Result<T, E = NetworkError> = std::result::Result<T, E>;

/// How pods are networked.
#[derive(Clone, Debug)]
pub struct NetworkConfig {
    pub plugin_dir: PathBuf,
    /// The pod subnet, e.g. `10.88.0.0/16`.
    pub subnet: String,
    /// The host bridge the pods hang off (one subnet per bridge).
    pub bridge: String,
    /// `host-local`'s address records.
    pub data_dir: PathBuf,
    /// Where namespaces are bind-mounted.
    pub netns_dir: PathBuf,
}

#[derive(Debug)]
pub struct Network {
    config: NetworkConfig,
    chain: Value,
}

impl Network {
    pub fn new(config: NetworkConfig) -> Result<Self> {
        let text = CONFLIST
            .replace("@SUBNET@", &config.subnet)
            .replace("@BRIDGE@", &config.bridge)
            .replace("@DATADIR@", &config.data_dir.display().to_string());
        let chain: Value = serde_json::from_str(&text).map_err(NetworkError::Conflist)?;
        for plugin in ["loopback", "bridge", "host-local", "portmap"] {
            if !config.plugin_dir.join(plugin).is_file() {
                return Err(NetworkError::MissingPlugin { plugin, dir: config.plugin_dir.clone() });
            }
        }
        Ok(Network { config, chain })
    }

    pub(crate) fn netns_path(&self, pod: &str) -> PathBuf {
        self.config.netns_dir.join(pod)
    }

    /// Checks the host ports and makes the pod's namespace (or finds it made).
    pub fn prepare(&self, pod: &str, ports: &[PortMapping]) -> Result<PathBuf> {
        for p in ports {
            check_port_free(p)?;
        }
        let netns = self.netns_path(pod);
        if !netns.exists() {
            create_netns(&netns).map_err(|source| NetworkError::Namespace { path: netns.clone(), source })?;
        }
        Ok(netns)
    }

    /// Runs the chain's ADD in the prepared namespace; returns the pod IP. On failure
    /// the chain's DEL runs and the namespace is removed.
    pub async fn wire(&self, pod: &str, ports: &[PortMapping]) -> Result<Option<String>> {
        let netns = self.netns_path(pod);
        match self.add(pod, &netns, ports).await {
            Ok(ip) => Ok(ip),
            Err(e) => {
                let _ = self.detach(pod, ports).await;
                Err(e)
            }
        }
    }

    async fn add(&self, pod: &str, netns: &Path, ports: &[PortMapping]) -> Result<Option<String>> {
        // `lo` and `eth0` are independent: wire them at once
        let lo = json!({"cniVersion": self.chain["cniVersion"], "name": "lo", "type": "loopback"});
        let lo = self.exec("ADD", pod, netns, "lo", &lo);
        let chain = async {
            let mut prev: Option<Value> = None;
            for plugin in self.plugins(ports) {
                let conf = self.plugin_conf(plugin, ports, prev.as_ref());
                prev = Some(self.exec("ADD", pod, netns, "eth0", &conf).await?);
            }
            Ok::<_, NetworkError>(prev)
        };
        let (lo, prev) = tokio::join!(lo, chain);
        lo?;
        let prev = prev?;
        let ip = prev
            .as_ref()
            .and_then(|r| r["ips"].as_array().and_then(|ips| ips.first()).cloned())
            .and_then(|ip| ip["address"].as_str().map(|a| a.split('/').next().unwrap_or(a).to_string()));
        Ok(ip)
    }

    /// The chain's plugins; `portmap` only when there are ports to map.
    fn plugins<'a>(&'a self, ports: &'a [PortMapping]) -> impl DoubleEndedIterator<Item = &'a Value> + 'a {
        self.chain["plugins"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(move |p| !ports.is_empty() || p["capabilities"]["portMappings"] != Value::Bool(true))
    }

    /// Runs the chain's DEL (in reverse) and removes the namespace. Safe to repeat.
    pub async fn detach(&self, pod: &str, ports: &[PortMapping]) -> Result<()> {
        let netns = self.netns_path(pod);
        let mut first_error = None;
        let ns_arg = if netns.exists() { netns.clone() } else { PathBuf::new() };
        for plugin in self.plugins(ports).rev() {
            let conf = self.plugin_conf(plugin, ports, None);
            if let Err(e) = self.exec("DEL", pod, &ns_arg, "eth0", &conf).await {
                first_error.get_or_insert(e);
            }
        }
        if netns.exists() {
            let _ = rustix::mount::unmount(&netns, rustix::mount::UnmountFlags::DETACH);
            let _ = std::fs::remove_file(&netns);
        }
        first_error.map_or(Ok(()), Err)
    }

    fn plugin_conf(&self, plugin: &Value, ports: &[PortMapping], prev: Option<&Value>) -> Value {
        let mut conf = plugin.clone();
        conf["name"] = self.chain["name"].clone();
        conf["cniVersion"] = self.chain["cniVersion"].clone();
        if plugin["capabilities"]["portMappings"] == Value::Bool(true) {
            conf["runtimeConfig"] = json!({ "portMappings": ports });
        }
        if let Some(prev) = prev {
            conf["prevResult"] = prev.clone();
        }
        conf
    }

    async fn exec(&self, command: &'static str, pod: &str, netns: &Path, ifname: &str, conf: &Value) -> Result<Value> {
        let kind = conf["type"].as_str().unwrap_or_default();
        let mut child = tokio::process::Command::new(self.config.plugin_dir.join(kind))
            .env_clear()
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", pod)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", &self.config.plugin_dir)
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|source| NetworkError::Spawn { plugin: kind.into(), source })?;
        let input = serde_json::to_vec(conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input).await;
        }
        let out =
            child.wait_with_output().await.map_err(|source| NetworkError::Spawn { plugin: kind.into(), source })?;
        if !out.status.success() {
            // a plugin reports errors as {"code", "msg", "details"} on stdout
            let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
            let msg = err["msg"].as_str().map(str::to_string).unwrap_or_else(|| {
                String::from_utf8_lossy(if out.stdout.is_empty() { &out.stderr } else { &out.stdout })
                    .trim()
                    .to_string()
            });
            let details = err["details"].as_str().map(|d| format!(" ({d})")).unwrap_or_default();
            return Err(NetworkError::Plugin { command, plugin: kind.into(), message: format!("{msg}{details}") });
        }
        if out.stdout.is_empty() {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|source| NetworkError::BadResult {
            command,
            plugin: kind.into(),
            source,
        })
    }
}

/// Binding the port is the only way to know nothing on the host listens on it.
fn check_port_free(p: &PortMapping) -> Result<()> {
    let ip: IpAddr = p.host_ip.as_deref().and_then(|s| s.parse().ok()).unwrap_or(IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    let addr = SocketAddr::new(ip, p.host_port);
    let taken = |source| NetworkError::PortTaken { port: p.host_port, protocol: p.protocol.clone(), source };
    if p.protocol == "udp" {
        std::net::UdpSocket::bind(addr).map(drop).map_err(taken)
    } else {
        std::net::TcpListener::bind(addr).map(drop).map_err(taken)
    }
}

/// A new network namespace, kept alive by a bind mount on `path`.
#[allow(unsafe_code)]
fn create_netns(path: &Path) -> std::io::Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::File::create(path)?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> std::io::Result<()> {
        // SAFETY: only the network namespace is unshared, on a thread of our own that
        // ends right after; no file descriptor table is unshared.
        unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET)? };
        rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
        Ok(())
    })
    .join()
    .unwrap_or_else(|_| Err(std::io::Error::other("namespace thread panicked")));
    if made.is_err() {
        let _ = std::fs::remove_file(path);
    }
    made
}
