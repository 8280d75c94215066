//! The Linux runtime: runc containers on an overlayfs rootfs, each held by a `conmon`.
//!
//! - **Rootfs**: the image's unpacked layer directories are overlay lowerdirs (never
//!   written); each container gets its own upper and work directory.
//! - **Bundle**: `config.json` is built with `oci-spec` from the container config
//!   (argv, env, cwd, user, mounts, limits) and the pod sandbox (network namespace,
//!   `/etc/hosts`, `/etc/resolv.conf`, hostname).
//! - **Supervision**: `conmon` (CRI-O's and Podman's monitor) runs `runc create`, keeps
//!   the container's stdio, writes the CRI log and, when the process ends, its exit code
//!   to `exit/<id>`. It is a daemon of its own, so containers outlive the agent; all
//!   the agent keeps is the directory `containers/<id>/`, from which a restarted agent
//!   reads every container's state again.
//! - **Waiting** is a pidfd on the container's init process, then the exit file.
//! - **Stop** is the stop signal, the grace period, SIGKILL, then `runc delete` and the
//!   rootfs unmount.

use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use oci_spec::runtime::{
    LinuxBuilder, LinuxCpuBuilder, LinuxDeviceCgroupBuilder, LinuxMemoryBuilder, LinuxNamespaceBuilder,
    LinuxNamespaceType, LinuxResourcesBuilder, Mount as OciMount, MountBuilder, ProcessBuilder, RootBuilder, Spec,
    UserBuilder,
};
use serde::{Deserialize, Serialize};

mod pty;
mod security;
mod userns;

/// Where Debian's `containernetworking-plugins` puts the CNI plugins.
pub use crate::cni::DEFAULT_PLUGIN_DIR as DEFAULT_CNI_PLUGIN_DIR;

use crate::cni::{Network, NetworkConfig, NetworkError};
use crate::{
    Artifact, ConfigError, ContainerConfig, ContainerState, Error, EventSink, ExecSession, ExitReason, Metrics,
    PortMapping, Result, Runtime, RuntimeKind, SandboxConfig, SandboxStatus, Seccomp, TerminalSize, Usage, now_ms,
};

/// Whether `name` is a capability as a pod spec may name it (`NET_ADMIN`,
/// `CAP_NET_ADMIN` or `ALL`).
pub fn known_capability(name: &str) -> bool {
    name.trim().eq_ignore_ascii_case("ALL") || security::capability(name).is_ok()
}

/// Where the Linux runtime finds its tools and keeps its state.
#[derive(Clone, Debug)]
pub struct LinuxConfig {
    pub runc: PathBuf,
    pub conmon: PathBuf,
    /// `state/linux`: containers, sandboxes, runc's own state.
    pub dir: PathBuf,
    pub network: NetworkConfig,
    /// Run a runc older than the fixes named in [`check_runc_version`].
    pub allow_vulnerable_runtime: bool,
    /// How often running containers' logs are checked against their
    /// [`LogPolicy`](crate::log::LogPolicy) and rotated (the kubelet checks every 10 s).
    pub log_monitor_interval: Duration,
}

impl LinuxConfig {
    /// Defaults under the agent's state directory, tools from `PATH`.
    pub fn new(state_dir: &Path, subnet: &str) -> Self {
        let dir = state_dir.join("linux");
        LinuxConfig {
            runc: find_tool("runc"),
            conmon: find_tool("conmon"),
            network: NetworkConfig {
                plugin_dir: PathBuf::from(crate::cni::DEFAULT_PLUGIN_DIR),
                subnet: subnet.into(),
                bridge: "wasmlet0".into(),
                data_dir: dir.join("cni"),
                netns_dir: dir.join("netns"),
            },
            dir,
            allow_vulnerable_runtime: false,
            log_monitor_interval: Duration::from_secs(10),
        }
    }
}

fn find_tool(name: &str) -> PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin"])
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| PathBuf::from(name))
}

/// runc with the agent's state root; conmon beside it.
#[derive(Clone, Debug)]
pub struct LinuxRuntime {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    runc: PathBuf,
    conmon: PathBuf,
    /// runc's `--root`.
    runc_root: PathBuf,
    containers: PathBuf,
    sandboxes: PathBuf,
    network: Network,
    /// Sandboxes whose CNI ADD is still running, and its result (the pod IP).
    wiring: std::sync::Mutex<std::collections::HashMap<String, Wiring>>,
    log_monitor_interval: Duration,
    /// The log rotation task, started with the first container.
    log_monitor: std::sync::OnceLock<()>,
}

type Wiring =
    futures_util::future::Shared<futures_util::future::BoxFuture<'static, Result<Option<String>, Arc<NetworkError>>>>;

/// What is kept on disk about a container, beside its bundle.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct Meta {
    config: ContainerConfig,
    pid: i32,
    started_at: Option<u64>,
    /// The container's memory cgroup directory, read once it runs.
    memory_cgroup: Option<PathBuf>,
}

/// What is kept on disk about a pod sandbox.
#[derive(Clone, Debug, Serialize, Deserialize)]
struct SandboxRecord {
    config: SandboxConfig,
    /// None for a host-network pod.
    netns: Option<PathBuf>,
    ip: Option<String>,
    ports: Vec<PortMapping>,
    /// CNI's ADD completed.
    #[serde(default)]
    wired: bool,
}

impl LinuxRuntime {
    /// Checks runc, conmon and the CNI plugins; the error says what to install.
    pub fn new(config: LinuxConfig) -> Result<Self> {
        let version = std::process::Command::new(&config.runc).arg("--version").output().map_err(|source| {
            Error::MissingTool { tool: "runc", package: "runc", path: config.runc.clone(), source }
        })?;
        let version = String::from_utf8_lossy(&version.stdout).to_string();
        if let Err(why) = check_runc_version(&version) {
            if !config.allow_vulnerable_runtime {
                return Err(Error::VulnerableRunc(why));
            }
            tracing::warn!("{why}; running it because --allow-vulnerable-runtime was given");
        }
        std::process::Command::new(&config.conmon).arg("--version").output().map_err(|source| Error::MissingTool {
            tool: "conmon",
            package: "conmon",
            path: config.conmon.clone(),
            source,
        })?;
        let network = Network::new(config.network.clone())
            .map_err(|e| Error::Network { id: String::new(), source: Arc::new(e) })?;
        let inner = Inner {
            runc: config.runc,
            conmon: config.conmon,
            runc_root: config.dir.join("runc"),
            containers: config.dir.join("containers"),
            sandboxes: config.dir.join("sandboxes"),
            network,
            wiring: Default::default(),
            log_monitor_interval: config.log_monitor_interval,
            log_monitor: std::sync::OnceLock::new(),
        };
        for d in [&inner.runc_root, &inner.containers, &inner.sandboxes] {
            std::fs::create_dir_all(d).map_err(|e| io_err("state directory", d, e))?;
        }
        Ok(LinuxRuntime { inner: Arc::new(inner) })
    }

    /// Every container this runtime has a directory for.
    fn container_ids(&self) -> Vec<String> {
        let entries = std::fs::read_dir(&self.inner.containers).into_iter().flatten().flatten();
        entries.filter_map(|e| e.file_name().into_string().ok()).collect()
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.inner.containers.join(id)
    }

    /// Starts, once, the task that rotates running containers' logs: conmon writes
    /// them, so a full one is renamed (see [`crate::log::rotate`]) and conmon told to
    /// reopen its file, as CRI-O's `ReopenContainerLog` does.
    fn monitor_logs(&self) {
        self.inner.log_monitor.get_or_init(|| {
            let weak = Arc::downgrade(&self.inner);
            let every = self.inner.log_monitor_interval;
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let Some(inner) = weak.upgrade() else { return };
                    let rt = LinuxRuntime { inner };
                    let _ = tokio::task::spawn_blocking(move || rt.rotate_logs()).await;
                }
            });
        });
    }

    fn rotate_logs(&self) {
        for id in self.container_ids() {
            let Ok(meta) = self.meta(&id) else { continue };
            let (path, policy) = (&meta.config.log_path, meta.config.log);
            let dir = self.dir(&id);
            let ended = dir.join("state.json").exists() || dir.join("exit").join(&id).exists();
            if meta.started_at.is_none() || policy.max_size == 0 || ended {
                continue;
            }
            if std::fs::metadata(path).is_ok_and(|m| m.len() > policy.max_size) {
                let rotated = crate::log::rotate(path, &policy).and_then(|()| reopen_log(&dir));
                if let Err(e) = rotated {
                    tracing::warn!(container = %id, log = %path.display(), error = %e, "cannot rotate the log");
                }
            }
        }
    }

    /// A running container's CPU time and working set, from its cgroup.
    fn usage(&self, id: &str) -> Option<Usage> {
        let pid = self.meta(id).ok()?.pid;
        cgroup_usage(pid)
    }

    fn meta(&self, id: &str) -> Result<Meta> {
        let path = self.dir(id).join("meta.json");
        let bytes = std::fs::read(&path).map_err(|_| Error::NotFound(id.into()))?;
        serde_json::from_slice(&bytes).map_err(|e| io_err("container record", &path, std::io::Error::other(e)))
    }

    fn save_meta(&self, id: &str, meta: &Meta) -> Result<()> {
        let path = self.dir(id).join("meta.json");
        write_atomic(&path, &serde_json::to_vec(meta).unwrap_or_default())
            .map_err(|e| io_err("container record", &path, e))
    }

    fn sandbox(&self, id: &str) -> Option<SandboxRecord> {
        let bytes = std::fs::read(self.inner.sandboxes.join(format!("{id}.json"))).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    fn save_sandbox(&self, rec: &SandboxRecord) -> Result<()> {
        let path = self.inner.sandboxes.join(format!("{}.json", rec.config.id));
        write_atomic(&path, &serde_json::to_vec(rec).unwrap_or_default()).map_err(|e| io_err("sandbox", &path, e))
    }

    /// Waits for the sandbox's network (if it is still being wired); fails if wiring
    /// failed, in which case the sandbox is gone and the next create makes it anew.
    /// Where sandbox `id`'s user namespace is kept (`hostUsers: false`).
    fn userns_file(&self, id: &str) -> PathBuf {
        self.inner.sandboxes.join(format!("{id}.userns"))
    }

    /// A user-namespaced container's rootfs: each layer mounted idmapped into the pod's
    /// range under `DIR/lower`, the overlay over them at [`userns::container_dir`]
    /// with an upper directory the pod's root owns.
    fn userns_rootfs(&self, id: &str, dir: &Path, layers: &[PathBuf], sandbox: &str, map: crate::IdMap) -> Result<()> {
        let userns_file = self.userns_file(sandbox);
        let mut lowers = Vec::new();
        for (i, layer) in layers.iter().enumerate() {
            let target = dir.join("lower").join(i.to_string());
            std::fs::create_dir_all(&target).map_err(|e| io_err("container directory", &target, e))?;
            userns::idmapped_mount(layer, &target, &userns_file).map_err(|e| io_err("idmapped layer", layer, e))?;
            lowers.push(target);
        }
        for sub in ["upper", "work"] {
            let p = dir.join(sub);
            std::os::unix::fs::chown(&p, Some(map.host_id), Some(map.host_id)).map_err(|e| io_err("chown", &p, e))?;
        }
        use std::os::unix::fs::PermissionsExt;
        let base = Path::new(userns::DIR);
        std::fs::create_dir_all(base).map_err(|e| io_err("container directory", base, e))?;
        std::fs::set_permissions(base, std::fs::Permissions::from_mode(0o711))
            .map_err(|e| io_err("container directory", base, e))?;
        let own = userns::container_dir(id);
        let rootfs = own.join("rootfs");
        std::fs::create_dir_all(&rootfs).map_err(|e| io_err("container directory", &rootfs, e))?;
        std::os::unix::fs::chown(&own, Some(0), Some(map.host_id)).map_err(|e| io_err("chown", &own, e))?;
        std::fs::set_permissions(&own, std::fs::Permissions::from_mode(0o710))
            .map_err(|e| io_err("container directory", &own, e))?;
        mount_overlay(dir, &lowers, &rootfs).map_err(|e| io_err("overlay mount", &rootfs, e))
    }

    async fn wired(&self, id: &str) -> Result<()> {
        let pending = self.inner.wiring.lock().unwrap_or_else(|e| e.into_inner()).get(id).cloned();
        if let Some(w) = pending {
            let result = w.await;
            self.inner.wiring.lock().unwrap_or_else(|e| e.into_inner()).remove(id);
            result.map_err(|source| Error::Network { id: id.into(), source })?;
        }
        match self.sandbox(id) {
            Some(rec) if !rec.wired => Err(Error::Network { id: id.into(), source: Arc::new(NetworkError::NotWired) }),
            _ => Ok(()),
        }
    }

    /// Runs `runc ARGS` (about container `id`) to its end; its message if it fails.
    async fn runc(&self, id: &str, args: &[&str]) -> Result<std::process::Output> {
        let out = tokio::process::Command::new(&self.inner.runc)
            .arg("--root")
            .arg(&self.inner.runc_root)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| io_err("runc", &self.inner.runc, e))?;
        if out.status.success() {
            Ok(out)
        } else {
            Err(Error::Tool { id: id.into(), tool: "runc", message: runc_message(&out.stderr) })
        }
    }

    /// The final state, once the exit file is there: the code, and OOMKilled if the
    /// container's memory cgroup recorded an OOM kill. Saved, so that it survives the
    /// cgroup's removal.
    fn exited(&self, id: &str, meta: &Meta) -> Option<ContainerState> {
        let dir = self.dir(id);
        if let Ok(bytes) = std::fs::read(dir.join("state.json"))
            && let Ok(state) = serde_json::from_slice(&bytes)
        {
            return Some(state);
        }
        let exit_file = dir.join("exit").join(id);
        let text = std::fs::read_to_string(&exit_file).ok()?;
        let exit_code: i32 = text.trim().parse().ok()?;
        let finished_at = std::fs::metadata(&exit_file)
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map_or_else(now_ms, |d| d.as_millis() as u64);
        // conmon's marker, or the cgroup's own count (v1 `memory.oom_control`, v2 `memory.events`)
        let oom_killed = |cg: &PathBuf| {
            ["memory.oom_control", "memory.events"].iter().any(|f| {
                std::fs::read_to_string(cg.join(f))
                    .is_ok_and(|s| s.lines().any(|l| l.strip_prefix("oom_kill ").is_some_and(|n| n.trim() != "0")))
            })
        };
        let oom = dir.join("persist/oom").exists() || meta.memory_cgroup.as_ref().is_some_and(oom_killed);
        let reason = match (exit_code, oom) {
            (_, true) => ExitReason::OOMKilled,
            (0, _) => ExitReason::Completed,
            _ => ExitReason::Error,
        };
        let state = ContainerState::Exited {
            exit_code,
            reason,
            message: String::new(),
            started_at: meta.started_at.unwrap_or(finished_at),
            finished_at: finished_at.max(meta.started_at.unwrap_or(0)),
        };
        let _ = write_atomic(&dir.join("state.json"), &serde_json::to_vec(&state).unwrap_or_default());
        Some(state)
    }

    /// Waits for the container's exit up to `limit`.
    async fn wait_for(&self, id: &str, limit: Option<Duration>) -> Result<Option<ContainerState>> {
        let fut = self.wait_container(id);
        match limit {
            None => fut.await.map(Some),
            Some(d) => match tokio::time::timeout(d, fut).await {
                Ok(r) => r.map(Some),
                Err(_) => Ok(None),
            },
        }
    }

    /// A command in a running container, with its stdio piped (or on a terminal),
    /// through `runc exec` so the agent never joins the container's namespaces itself.
    async fn exec_session(&self, id: &str, command: &[String], tty: bool) -> Result<ExecSession> {
        let meta = self.meta(id)?;
        if meta.started_at.is_none() || self.exited(id, &meta).is_some() {
            return Err(Error::NotRunning(id.into()));
        }
        let mut cmd = tokio::process::Command::new(&self.inner.runc);
        cmd.arg("--root").arg(&self.inner.runc_root).arg("exec");
        let mut terminal = None;
        if tty {
            // runc in the foreground makes the container's terminal and copies it to its
            // own stdio, which is a terminal of ours; SIGWINCH makes it read a new size
            let (master, slave) = pty::open().map_err(|e| io_err("terminal", Path::new(id), e))?;
            let dup = |fd: &OwnedFd| fd.try_clone().map(Stdio::from).map_err(|e| io_err("terminal", Path::new(id), e));
            cmd.arg("--tty").stdin(dup(&slave)?).stdout(dup(&slave)?).stderr(Stdio::from(slave));
            terminal = Some(master);
        } else {
            cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        }
        cmd.arg(id).args(command).kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|e| io_err("runc exec", &self.inner.runc, e))?;
        let runc_pid = child.id().and_then(|p| rustix::process::Pid::from_raw(p as i32));
        let (stdin, stdout, stderr) = (child.stdin.take(), child.stdout.take(), child.stderr.take());
        let exit = async move {
            let status = child.wait().await?;
            Ok(status
                .code()
                .unwrap_or_else(|| 128 + std::os::unix::process::ExitStatusExt::signal(&status).unwrap_or(0)))
        };
        let Some(master) = terminal else {
            return Ok(ExecSession::new(
                stdin.map(|w| Box::pin(w) as _),
                stdout.map(|r| Box::pin(r) as _),
                stderr.map(|r| Box::pin(r) as _),
                exit,
            ));
        };
        // one non-blocking descriptor with separate read and write readiness: a read
        // waiting for output never holds up typed input
        let resize_fd = rustix::io::dup(&master).map_err(|e| io_err("terminal", Path::new(id), e.into()))?;
        let pty = pty::Pty::new(master).map_err(|e| io_err("terminal", Path::new(id), e))?;
        let resize = move |size: TerminalSize| {
            let ws = rustix::termios::Winsize { ws_row: size.rows, ws_col: size.cols, ws_xpixel: 0, ws_ypixel: 0 };
            let _ = rustix::termios::tcsetwinsize(&resize_fd, ws);
            if let Some(pid) = runc_pid {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::WINCH);
            }
        };
        Ok(ExecSession::new(Some(Box::pin(pty.clone())), Some(Box::pin(pty)), None, exit)
            .with_terminal(Box::new(resize)))
    }
}

impl Runtime for LinuxRuntime {
    fn kind(&self) -> RuntimeKind {
        RuntimeKind::Linux
    }

    /// Makes the pod's network namespace and its hosts, resolv.conf and hostname files,
    /// then wires the namespace (CNI ADD) in the background: containers are created
    /// meanwhile, and `start_container` waits for it. Idempotent: a sandbox already
    /// made (before an agent restart) is kept; one whose wiring failed is made anew.
    async fn create_sandbox(&self, config: &SandboxConfig) -> Result<SandboxStatus> {
        let pending = self.inner.wiring.lock().unwrap_or_else(|e| e.into_inner()).contains_key(&config.id);
        match self.sandbox(&config.id) {
            Some(rec) if rec.wired || pending => return Ok(SandboxStatus { ip: rec.ip, netns: rec.netns }),
            Some(_) => self.remove_sandbox(&config.id).await?,
            None => {}
        }
        let files = self.inner.sandboxes.join(&config.id);
        std::fs::create_dir_all(&files).map_err(|e| io_err("sandbox", &files, e))?;
        let fail = |e: NetworkError| {
            let _ = std::fs::remove_dir_all(&files);
            if config.user_ns.is_some() {
                userns::remove(&self.userns_file(&config.id));
            }
            Error::Network { id: config.id.clone(), source: Arc::new(e) }
        };
        let resolv = std::fs::read_to_string("/etc/resolv.conf").unwrap_or_default();
        if config.host_network {
            // the host's own files and name, as the kubelet gives a host-network pod
            let hosts = std::fs::read_to_string("/etc/hosts").unwrap_or_else(|_| hosts_file("localhost", None));
            let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
            for (name, text) in [("hosts", hosts), ("resolv.conf", resolv), ("hostname", hostname)] {
                let p = files.join(name);
                std::fs::write(&p, text).map_err(|e| io_err("sandbox file", &p, e))?;
            }
            let rec = SandboxRecord { config: config.clone(), netns: None, ip: None, ports: Vec::new(), wired: true };
            self.save_sandbox(&rec)?;
            return Ok(SandboxStatus { ip: None, netns: None });
        }
        if let Some(map) = &config.user_ns {
            // the pod's user namespace, and its network namespace owned by it
            let netns = self.inner.network.netns_path(&config.id);
            if let Err(e) = userns::create(map, &self.userns_file(&config.id), &netns) {
                let _ = std::fs::remove_dir_all(&files);
                return Err(io_err("user namespace", &self.userns_file(&config.id), e));
            }
        }
        let netns = self.inner.network.prepare(&config.id, &config.ports).map_err(fail)?;
        for (name, text) in [
            ("hosts", hosts_file(&config.hostname, None)),
            ("resolv.conf", resolv),
            ("hostname", format!("{}\n", config.hostname)),
        ] {
            let p = files.join(name);
            std::fs::write(&p, text).map_err(|e| io_err("sandbox file", &p, e))?;
            if let Some(map) = &config.user_ns {
                // the pod's root owns its files, as through the kubelet's idmapped mounts
                std::os::unix::fs::chown(&p, Some(map.host_id), Some(map.host_id))
                    .map_err(|e| io_err("sandbox file", &p, e))?;
            }
        }
        let netns_path = netns.clone();
        let rec = SandboxRecord {
            config: config.clone(),
            netns: Some(netns),
            ip: None,
            ports: config.ports.clone(),
            wired: false,
        };
        self.save_sandbox(&rec)?;
        let this = self.clone();
        let wiring: futures_util::future::BoxFuture<'static, _> = Box::pin(async move {
            let id = rec.config.id.clone();
            match this.inner.network.wire(&id, &rec.ports).await {
                Ok(ip) => {
                    // the bind-mounted file is rewritten in place: same inode
                    let hosts = this.inner.sandboxes.join(&id).join("hosts");
                    let _ = std::fs::write(&hosts, hosts_file(&rec.config.hostname, ip.as_deref()));
                    let rec = SandboxRecord { ip: ip.clone(), wired: true, ..rec };
                    if let Err(e) = this.save_sandbox(&rec) {
                        return Err(Arc::new(NetworkError::Namespace {
                            path: this.inner.sandboxes.join(&id),
                            source: std::io::Error::other(e.to_string()),
                        }));
                    }
                    Ok(ip)
                }
                Err(e) => {
                    let _ = std::fs::remove_dir_all(this.inner.sandboxes.join(&id));
                    let _ = std::fs::remove_file(this.inner.sandboxes.join(format!("{id}.json")));
                    Err(Arc::new(e))
                }
            }
        });
        let shared = futures_util::FutureExt::shared(wiring);
        tokio::spawn(shared.clone());
        self.inner.wiring.lock().unwrap_or_else(|e| e.into_inner()).insert(config.id.clone(), shared);
        Ok(SandboxStatus { ip: None, netns: Some(netns_path) })
    }

    /// Waits for the sandbox's network to be wired, then reports it.
    async fn sandbox_status(&self, id: &str) -> Result<SandboxStatus> {
        self.wired(id).await?;
        let rec = self.sandbox(id).ok_or_else(|| Error::NotFound(id.into()))?;
        Ok(SandboxStatus { ip: rec.ip, netns: rec.netns })
    }

    async fn remove_sandbox(&self, id: &str) -> Result<()> {
        let _ = self.wired(id).await; // never DEL while an ADD runs
        let Some(rec) = self.sandbox(id) else { return Ok(()) };
        if rec.netns.is_some()
            && let Err(e) = self.inner.network.detach(id, &rec.ports).await
        {
            tracing::warn!(sandbox = id, "{e}");
        }
        let _ = std::fs::remove_dir_all(self.inner.sandboxes.join(id));
        if rec.config.user_ns.is_some() {
            userns::remove(&self.userns_file(id));
        }
        let _ = std::fs::remove_file(self.inner.sandboxes.join(format!("{id}.json")));
        Ok(())
    }

    async fn create_container(&self, config: ContainerConfig) -> Result<()> {
        let id = config.id.clone();
        let Artifact::Rootfs { layers } = &config.artifact else {
            return Err(Error::InvalidConfig {
                id: config.id.clone(),
                source: ConfigError::WrongArtifact("a Wasm artifact", RuntimeKind::Linux),
            });
        };
        let dir = self.dir(&id);
        if dir.exists() {
            self.remove_container(&id).await?;
        }
        let sandbox = self.sandbox(&config.sandbox_id);
        let result = async {
            for sub in ["rootfs", "upper", "work", "exit", "persist", "sock", "empty"] {
                std::fs::create_dir_all(dir.join(sub)).map_err(|e| io_err("container directory", &dir, e))?;
            }
            match sandbox.as_ref().and_then(|s| s.config.user_ns.map(|m| (s, m))) {
                Some((sb, map)) => self.userns_rootfs(&id, &dir, layers, &sb.config.id, map)?,
                None => mount_overlay(&dir, layers, &dir.join("rootfs"))
                    .map_err(|e| io_err("overlay mount", &dir.join("rootfs"), e))?,
            }
            let spec = build_spec(&config, sandbox.as_ref().map(|s| (s, self.inner.sandboxes.join(&s.config.id))))
                .map_err(|source| Error::InvalidConfig { id: id.clone(), source })?;
            let bundle = dir.join("config.json");
            let json = serde_json::to_vec_pretty(&spec).map_err(|e| io_err("bundle", &bundle, e.into()))?;
            std::fs::write(&bundle, json).map_err(|e| io_err("bundle", &bundle, e))?;
            if let Some(parent) = config.log_path.parent() {
                std::fs::create_dir_all(parent).map_err(|e| io_err("log directory", parent, e))?;
            }
            let pid = self.spawn_conmon(&config, &dir).await?;
            self.save_meta(&id, &Meta { config: config.clone(), pid, started_at: None, memory_cgroup: None })
        }
        .await;
        if result.is_err() {
            let _ = self.remove_container(&id).await;
        }
        result
    }

    async fn start_container(&self, id: &str) -> Result<()> {
        let mut meta = self.meta(id)?;
        self.wired(&meta.config.sandbox_id).await?;
        let started_at = now_ms();
        self.runc(id, &["start", id]).await?;
        self.monitor_logs();
        meta.started_at = Some(started_at);
        meta.memory_cgroup = memory_cgroup(meta.pid);
        self.save_meta(id, &meta)
    }

    async fn stop_container(&self, id: &str, grace: Duration) -> Result<()> {
        let meta = self.meta(id)?;
        if self.exited(id, &meta).is_some() {
            return Ok(());
        }
        if meta.started_at.is_none() {
            // created, never started: nothing ran, delete takes it away
            let _ = self.runc(id, &["delete", "--force", id]).await;
            return Ok(());
        }
        let signal = meta.config.stop_signal.clone().unwrap_or_else(|| "TERM".into());
        let signal = signal.trim_start_matches("SIG").to_string();
        if !grace.is_zero()
            && self.runc(id, &["kill", id, &signal]).await.is_ok()
            && self.wait_for(id, Some(grace)).await?.is_some()
        {
            return Ok(());
        }
        let _ = self.runc(id, &["kill", id, "KILL"]).await;
        self.wait_for(id, Some(Duration::from_secs(10))).await?;
        Ok(())
    }

    /// Deletes the runc container, unmounts the rootfs and removes every file of it.
    async fn remove_container(&self, id: &str) -> Result<()> {
        let dir = self.dir(id);
        if !dir.exists() {
            return Ok(());
        }
        if let Err(e) = self.runc(id, &["delete", "--force", id]).await
            && !e.to_string().contains("does not exist")
        {
            tracing::warn!(container = id, "runc delete: {e}");
        }
        if let Ok(meta) = self.meta(id) {
            remove_pod_cgroups(&meta.config.sandbox_id);
        }
        let userns_dir = userns::container_dir(id);
        let mut mounts = vec![dir.join("rootfs"), userns_dir.join("rootfs")];
        // a user-namespaced container's idmapped layers: unmounted before anything is
        // deleted, or the removal would reach into the image's layers
        let lower = dir.join("lower");
        mounts.extend(std::fs::read_dir(&lower).into_iter().flatten().flatten().map(|e| e.path()));
        for m in &mounts {
            match rustix::mount::unmount(m, rustix::mount::UnmountFlags::DETACH) {
                Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
                Err(e) => return Err(io_err("unmount", m, e.into())),
            }
        }
        if userns_dir.exists() {
            std::fs::remove_dir_all(&userns_dir).map_err(|e| io_err("remove container", &userns_dir, e))?;
        }
        std::fs::remove_dir_all(&dir).map_err(|e| io_err("remove container", &dir, e))
    }

    async fn container_status(&self, id: &str) -> Result<ContainerState> {
        let meta = self.meta(id)?;
        if let Some(done) = self.exited(id, &meta) {
            return Ok(done);
        }
        Ok(match meta.started_at {
            None => ContainerState::Created,
            Some(started_at) => ContainerState::Running { started_at },
        })
    }

    /// A pidfd on the container's init says when it ends; conmon writes the exit file
    /// right after it reaps it.
    async fn wait_container(&self, id: &str) -> Result<ContainerState> {
        self.monitor_logs(); // a restarted agent waits on what runs without starting it
        loop {
            let meta = self.meta(id)?;
            if let Some(done) = self.exited(id, &meta) {
                return Ok(done);
            }
            if meta.started_at.is_none() {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
            let pid = rustix::process::Pid::from_raw(meta.pid);
            if let Some(fd) =
                pid.and_then(|p| rustix::process::pidfd_open(p, rustix::process::PidfdFlags::empty()).ok())
            {
                let fd = register(fd).map_err(|e| io_err("pidfd", Path::new(id), e))?;
                let _ = fd.readable().await;
            }
            // the process is gone; conmon records its status within moments
            for _ in 0..400 {
                if let Some(done) = self.exited(id, &self.meta(id)?) {
                    return Ok(done);
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            let now = now_ms();
            return Ok(ContainerState::Exited {
                exit_code: 255,
                reason: ExitReason::Error,
                message: "the container ended but its monitor recorded no exit status".into(),
                started_at: meta.started_at.unwrap_or(now),
                finished_at: now,
            });
        }
    }

    fn list_containers(&self) -> Vec<String> {
        self.container_ids()
    }

    fn container_stats(&self, id: &str) -> Option<Usage> {
        self.usage(id)
    }

    /// Runs the command to its end; its output is discarded.
    async fn exec_sync(&self, id: &str, command: &[String]) -> Result<i32> {
        let mut session = self.exec_session(id, command, false).await?;
        session.stdin = None;
        let drain = |r: Option<std::pin::Pin<Box<dyn tokio::io::AsyncRead + Send>>>| async move {
            if let Some(mut r) = r {
                let _ = tokio::io::copy(&mut r, &mut tokio::io::sink()).await;
            }
        };
        let (out, err) = (session.stdout.take(), session.stderr.take());
        tokio::join!(drain(out), drain(err));
        session.wait().await.map_err(|e| io_err("runc exec", &self.inner.runc, e))
    }

    async fn exec(&self, id: &str, command: &[String], tty: bool) -> Result<ExecSession> {
        self.exec_session(id, command, tty).await
    }

    /// conmon writes the log: it is told to reopen its file.
    async fn reopen_log(&self, id: &str) -> Result<()> {
        self.meta(id)?;
        let dir = self.dir(id);
        reopen_log(&dir).map_err(|e| io_err("reopen the container log", &dir, e))
    }

    /// `runc update`: the container's cgroup limits, in place.
    async fn update_resources(&self, id: &str, r: &crate::Resources) -> Result<()> {
        self.meta(id)?;
        let mut args = vec!["update".to_string()];
        if let Some(bytes) = r.memory_limit {
            args.push(format!("--memory={bytes}"));
        }
        if let Some(millis) = r.cpu_limit_millis {
            args.extend(["--cpu-period=100000".to_string(), format!("--cpu-quota={}", millis * 100)]);
        }
        if let Some(millis) = r.cpu_request_millis {
            args.push(format!("--cpu-share={}", (millis * 1024 / 1000).max(2)));
        }
        args.push(id.to_string());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.runc(id, &args).await.map(|_| ())
    }

    /// runc containers report nothing to the sink: their refusals are the kernel's.
    fn set_event_sink(&self, _sink: EventSink) {}

    fn metrics(&self) -> Metrics {
        Metrics::default()
    }
}

impl LinuxRuntime {
    #[allow(unsafe_code)]
    /// Starts conmon, which runs `runc create` and stays as the container's monitor.
    /// Returns the container's pid, or runc's error.
    async fn spawn_conmon(&self, config: &ContainerConfig, dir: &Path) -> Result<i32> {
        let conmon_failed = |message: String| Error::Tool { id: config.id.clone(), tool: "conmon", message };
        let (read, write) = std::io::pipe().map_err(|e| io_err("conmon sync pipe", dir, e))?;
        let write = OwnedFd::from(write);
        let mut cmd = tokio::process::Command::new(&self.inner.conmon);
        cmd.args(["--api-version", "1", "-c", &config.id, "-u", &config.id, "-n", &config.name])
            .arg("-r")
            .arg(&self.inner.runc)
            .arg(format!("--runtime-arg=--root={}", self.inner.runc_root.display()))
            .arg("-b")
            .arg(dir)
            .arg("-p")
            .arg(dir.join("pidfile"))
            .arg("-l")
            .arg(format!("k8s-file:{}", config.log_path.display()))
            .arg("--exit-dir")
            .arg(dir.join("exit"))
            .arg("--persist-dir")
            .arg(dir.join("persist"))
            .arg("--socket-dir-path")
            .arg(dir.join("sock"))
            .arg("--conmon-pidfile")
            .arg(dir.join("conmon.pid"))
            .args(["--log-level", "error"])
            .env_clear()
            .env("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
            .env("_OCI_SYNCPIPE", "3")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let raw = write.as_raw_fd();
        // SAFETY: between fork and exec only async-signal-safe calls (dup2, fcntl).
        unsafe {
            cmd.pre_exec(move || {
                let src = std::os::fd::BorrowedFd::borrow_raw(raw);
                if raw == 3 {
                    rustix::io::fcntl_setfd(src, rustix::io::FdFlags::empty())?;
                } else {
                    let mut target = OwnedFd::from_raw_fd(3);
                    let r = rustix::io::dup2(src, &mut target);
                    std::mem::forget(target);
                    r?;
                }
                Ok(())
            });
        }
        let child = cmd.spawn().map_err(|e| io_err("conmon", &self.inner.conmon, e))?;
        drop(write);
        let out = child.wait_with_output().await.map_err(|e| io_err("conmon", &self.inner.conmon, e))?;
        if !out.status.success() {
            return Err(conmon_failed(String::from_utf8_lossy(&out.stderr).trim().to_string()));
        }
        // conmon's daemon writes one JSON line: {"data": pid} or {"data": -1, "message": …}
        let line = tokio::task::spawn_blocking(move || {
            let mut read = read;
            let mut buf = Vec::new();
            let mut byte = [0u8; 1];
            while read.read(&mut byte).map(|n| n == 1).unwrap_or(false) && byte[0] != b'\n' {
                buf.push(byte[0]);
            }
            buf
        })
        .await
        .map_err(|e| conmon_failed(e.to_string()))?;
        #[derive(Deserialize)]
        struct Sync {
            data: i32,
            message: Option<String>,
        }
        let sync: Sync = serde_json::from_slice(&line).map_err(|_| {
            conmon_failed(format!("ended without creating the container: {}", String::from_utf8_lossy(&line)))
        })?;
        if sync.data <= 0 {
            let message = runc_message(sync.message.unwrap_or_default().as_bytes());
            return Err(Error::Tool { id: config.id.clone(), tool: "runc", message });
        }
        Ok(sync.data)
    }
}

/// The pod's `/etc/hosts`: localhost, and the pod's name on its IP once it has one.
/// Asks the conmon of the container in `dir` to reopen its log file: message 2 on its
/// control FIFO (conmon's `REOPEN_LOGS_EVENT`), as CRI-O writes it.
fn reopen_log(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut ctl = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(rustix::fs::OFlags::NONBLOCK.bits() as i32)
        .open(dir.join("ctl"))?;
    std::io::Write::write_all(&mut ctl, b"2 0 0\n")
}

fn hosts_file(hostname: &str, ip: Option<&str>) -> String {
    let mut hosts = String::from("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n");
    if let Some(ip) = ip {
        hosts.push_str(&format!("{ip}\t{hostname}\n"));
    }
    hosts
}

/// runc's messages are logrus lines; keep the `msg` part.
fn runc_message(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let msgs: Vec<String> = text
        .lines()
        .map(|l| match l.find("msg=\"") {
            Some(i) => l[i + 5..].trim_end_matches('"').replace("\\\"", "\"").to_string(),
            None => l.trim().to_string(),
        })
        .filter(|l| !l.is_empty())
        .collect();
    if msgs.is_empty() { "runc failed".into() } else { msgs.join("; ") }
}

/// runc fixes this agent requires: CVE-2024-21626 (1.1.12), CVE-2025-31133/-52565/
/// -52881 (1.2.8, 1.3.3, 1.4.0) and CVE-2026-41579 (1.3.6, 1.4.3).
pub fn check_runc_version(output: &str) -> std::result::Result<(), String> {
    let version = output
        .lines()
        .find_map(|l| l.strip_prefix("runc version "))
        .map(|v| v.split(['+', '-', '~']).next().unwrap_or(v).trim().to_string())
        .ok_or_else(|| format!("cannot read runc's version from {output:?}"))?;
    let parts: Vec<u32> = version.split('.').map(|p| p.parse().unwrap_or(0)).collect();
    let (major, minor, patch) =
        (parts.first().copied().unwrap_or(0), parts.get(1).copied().unwrap_or(0), parts.get(2).copied().unwrap_or(0));
    let fixed = match (major, minor) {
        (1, 0..=2) => false,
        (1, 3) => patch >= 6,
        (1, 4) => patch >= 3,
        _ => major >= 1,
    };
    if fixed {
        Ok(())
    } else {
        Err(format!(
            "runc {version} lacks the fixes for CVE-2024-21626, CVE-2025-31133, CVE-2025-52565, CVE-2025-52881 and \
             CVE-2026-41579 (needs 1.3.6, 1.4.3 or later)"
        ))
    }
}

/// Registers a pidfd with tokio's reactor; it reads as ready once the process ends.
#[allow(unsafe_code)]
fn register(fd: OwnedFd) -> std::io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: the descriptor is owned, moved in, and registered nowhere else; the
    // AsyncFd deregisters it before it is closed.
    unsafe { tokio::io::unix::AsyncFd::register(fd).map_err(std::io::Error::from) }
}

fn io_err(context: &str, path: &Path, source: std::io::Error) -> Error {
    Error::Io { context: context.into(), path: path.to_path_buf(), source }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// The image layers (top first) as lowerdirs, this container's upper and work dirs.
fn mount_overlay(dir: &Path, layers: &[PathBuf], target: &Path) -> std::io::Result<()> {
    let mut lower: Vec<String> = layers.iter().rev().map(|p| escape_overlay(&p.display().to_string())).collect();
    if lower.is_empty() {
        lower.push(escape_overlay(&dir.join("empty").display().to_string()));
    }
    let data = format!(
        "lowerdir={},upperdir={},workdir={}",
        lower.join(":"),
        escape_overlay(&dir.join("upper").display().to_string()),
        escape_overlay(&dir.join("work").display().to_string())
    );
    if data.len() >= 4096 {
        return Err(std::io::Error::other(format!("{} layers make the overlay options too long", layers.len())));
    }
    let data = std::ffi::CString::new(data).map_err(std::io::Error::other)?;
    rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())?;
    Ok(())
}

/// overlayfs splits its options on `,` and lowerdirs on `:`.
fn escape_overlay(path: &str) -> String {
    path.replace('\\', "\\\\").replace(',', "\\,").replace(':', "\\:")
}

/// The cgroup path a container of `sandbox` gets (runc puts a relative path under its
/// own cgroup, in each hierarchy).
fn cgroup_path(sandbox: &str, id: &str) -> PathBuf {
    PathBuf::from(format!("wasmlet/{sandbox}/{id}"))
}

/// Removes the pod's cgroup directory in every hierarchy once it is empty (runc removes
/// only the container's own); while other containers of the pod run, rmdir fails and
/// nothing changes.
fn remove_pod_cgroups(sandbox: &str) {
    for (_, dir) in cgroup_dirs("self") {
        let _ = std::fs::remove_dir(dir.join("wasmlet").join(sandbox));
    }
}

/// CPU time and working set of a process's cgroup: v1 `cpuacct.usage` and
/// `memory.usage_in_bytes` less `total_inactive_file`; v2 `cpu.stat` and `memory.current`
/// less `inactive_file` (the kubelet's working set).
fn cgroup_usage(pid: i32) -> Option<Usage> {
    let dirs = cgroup_dirs(&pid.to_string());
    let read = |p: PathBuf| std::fs::read_to_string(p).ok();
    let stat = |text: &str, key: &str| {
        text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ')?.trim().parse::<u64>().ok())
    };
    if pure_v2() {
        let dir = &dirs.iter().find(|(c, _)| c.is_empty())?.1;
        let cpu = read(dir.join("cpu.stat")).and_then(|t| stat(&t, "usage_usec")).unwrap_or(0) * 1000;
        let current: u64 = read(dir.join("memory.current"))?.trim().parse().ok()?;
        let inactive = read(dir.join("memory.stat")).and_then(|t| stat(&t, "inactive_file")).unwrap_or(0);
        return Some(Usage { cpu_ns: cpu, memory_bytes: current.saturating_sub(inactive) });
    }
    let dir = |name: &str| dirs.iter().find(|(c, _)| c.split(',').any(|c| c == name)).map(|(_, d)| d.clone());
    let cpu =
        dir("cpuacct").and_then(|d| read(d.join("cpuacct.usage"))).and_then(|t| t.trim().parse().ok()).unwrap_or(0);
    let mem = dir("memory")?;
    let usage: u64 = read(mem.join("memory.usage_in_bytes"))?.trim().parse().ok()?;
    let inactive = read(mem.join("memory.stat")).and_then(|t| stat(&t, "total_inactive_file")).unwrap_or(0);
    Some(Usage { cpu_ns: cpu, memory_bytes: usage.saturating_sub(inactive) })
}

/// `/sys/fs/cgroup/memory/<path>` (v1) or `/sys/fs/cgroup/<path>` (v2) of a process.
fn memory_cgroup(pid: i32) -> Option<PathBuf> {
    let dirs = cgroup_dirs(&pid.to_string());
    let v1 = dirs.iter().find(|(controllers, _)| controllers.split(',').any(|c| c == "memory"));
    let v2 = || dirs.iter().find(|(c, _)| c.is_empty()).filter(|_| pure_v2());
    v1.or_else(v2).map(|(_, dir)| dir.clone())
}

fn pure_v2() -> bool {
    Path::new("/sys/fs/cgroup/cgroup.controllers").exists()
}

/// Every cgroup hierarchy a process (`self` or a pid) is in: its controllers (empty for
/// v2) and its directory there, from `/proc/<p>/cgroup`.
fn cgroup_dirs(process: &str) -> Vec<(String, PathBuf)> {
    let text = std::fs::read_to_string(format!("/proc/{process}/cgroup")).unwrap_or_default();
    let v2_root = if pure_v2() { "/sys/fs/cgroup" } else { "/sys/fs/cgroup/unified" };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, ':');
            let (_, controllers, path) = (parts.next()?, parts.next()?, parts.next()?);
            let mount = if controllers.is_empty() {
                PathBuf::from(v2_root)
            } else {
                let name = controllers.trim_start_matches("name=");
                std::iter::once(name)
                    .chain(name.split(','))
                    .map(|c| Path::new("/sys/fs/cgroup").join(c))
                    .find(|p| p.is_dir())?
            };
            Some((controllers.to_string(), mount.join(path.trim_start_matches('/'))))
        })
        .collect()
}

/// A working directory runc may be given: absolute, normalised, not under /proc
/// (CVE-2024-21626 entered the host through `process.cwd`).
fn check_cwd(cwd: &str) -> std::result::Result<String, ConfigError> {
    let refuse = |why| Err(ConfigError::WorkingDir { cwd: cwd.into(), why });
    if !cwd.starts_with('/') {
        return refuse("must be an absolute path");
    }
    let parts: Vec<&str> = cwd.split('/').filter(|p| !p.is_empty() && *p != ".").collect();
    if parts.contains(&"..") {
        return refuse("must not contain '..'");
    }
    if parts.first() == Some(&"proc") {
        return refuse("must not be under /proc");
    }
    Ok(format!("/{}", parts.join("/")))
}

/// The image's USER (`user[:group]`, names or numbers) as uid and gid, the way the OCI
/// image spec says: names from the image's `/etc/passwd` and `/etc/group`; without a
/// group, the user's primary group there, else 0.
fn resolve_user(user: &str, layers: &[PathBuf]) -> std::result::Result<(u32, u32), ConfigError> {
    let (u, g) = user.split_once(':').unwrap_or((user, ""));
    let passwd = image_file(layers, "passwd").unwrap_or_default();
    let entries = |text: &str| -> Vec<Vec<String>> {
        text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(':').map(str::to_string).collect()).collect()
    };
    let users = entries(&passwd);
    let uid = match u {
        "" => 0,
        n => match n.parse::<u32>() {
            Ok(id) => id,
            Err(_) => users
                .iter()
                .find(|e| e.first().is_some_and(|name| name == n))
                .and_then(|e| e.get(2)?.parse().ok())
                .ok_or_else(|| ConfigError::UnknownUser(n.into()))?,
        },
    };
    let gid = match g {
        "" => users
            .iter()
            .find(|e| e.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(uid))
            .and_then(|e| e.get(3)?.parse().ok())
            .unwrap_or(0),
        n => match n.parse::<u32>() {
            Ok(id) => id,
            Err(_) => entries(&image_file(layers, "group").unwrap_or_default())
                .iter()
                .find(|e| e.first().is_some_and(|name| name == n))
                .and_then(|e| e.get(2)?.parse().ok())
                .ok_or_else(|| ConfigError::UnknownGroup(n.into()))?,
        },
    };
    Ok((uid, gid))
}

/// `/etc/NAME` as the image's layers (lowest first) make it, read without following any
/// symlink: the topmost regular file wins; a whiteout, an opaque `/etc` or a symlink
/// anywhere on the way ends the search.
fn image_file(layers: &[PathBuf], name: &str) -> Option<String> {
    use std::os::unix::fs::FileTypeExt;
    for layer in layers.iter().rev() {
        let etc = layer.join("etc");
        let Ok(meta) = std::fs::symlink_metadata(&etc) else { continue };
        if !meta.is_dir() {
            return None;
        }
        let file = etc.join(name);
        match std::fs::symlink_metadata(&file) {
            Ok(m) if m.is_file() && m.len() <= 1 << 20 => return std::fs::read_to_string(&file).ok(),
            Ok(m) if m.file_type().is_char_device() || !m.is_file() => return None,
            Ok(_) => return None,
            Err(_) => {}
        }
        let mut opaque = [0u8; 1];
        if rustix::fs::lgetxattr(&etc, "trusted.overlay.opaque", &mut opaque).is_ok_and(|n| n == 1 && opaque[0] == b'y')
        {
            return None;
        }
    }
    None
}

/// The groups the image's `/etc/group` lists user `uid` in, by its `/etc/passwd` name
/// (`supplementalGroupsPolicy: Merge`).
fn image_groups(layers: &[PathBuf], uid: u32) -> Vec<u32> {
    let entries = |text: String| -> Vec<Vec<String>> {
        text.lines().filter(|l| !l.starts_with('#')).map(|l| l.split(':').map(str::to_string).collect()).collect()
    };
    let users = entries(image_file(layers, "passwd").unwrap_or_default());
    let Some(name) = users
        .iter()
        .find(|e| e.get(2).and_then(|v| v.parse::<u32>().ok()) == Some(uid))
        .and_then(|e| e.first().cloned())
    else {
        return Vec::new();
    };
    entries(image_file(layers, "group").unwrap_or_default())
        .iter()
        .filter(|e| e.get(3).is_some_and(|members| members.split(',').any(|m| m.trim() == name)))
        .filter_map(|e| e.get(2)?.parse().ok())
        .collect()
}

/// The bundle's `config.json`. `sandbox` is the pod's record and the directory of its
/// hosts, resolv.conf and hostname files.
fn build_spec(
    c: &ContainerConfig,
    sandbox: Option<(&SandboxRecord, PathBuf)>,
) -> std::result::Result<Spec, ConfigError> {
    let e = ConfigError::Spec;
    let cwd = check_cwd(c.working_dir.as_deref().filter(|w| !w.is_empty()).unwrap_or("/"))?;
    let layers = match &c.artifact {
        Artifact::Rootfs { layers } => layers.as_slice(),
        Artifact::Wasm { .. } => &[],
    };
    let (uid, gid) = resolve_user(c.user.as_deref().unwrap_or(""), layers)?;
    if c.run_as_non_root && uid == 0 {
        // the kubelet's wording
        return Err(ConfigError::RunsAsRoot);
    }
    let host = sandbox.as_ref().map(|(sb, _)| (sb.config.host_network, sb.config.host_pid, sb.config.host_ipc));
    let (host_network, host_pid, host_ipc) = host.unwrap_or_default();
    let mut env: Vec<String> = Vec::new();
    if !c.env.iter().any(|(k, _)| k == "PATH") {
        env.push("PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    }
    if let Some((sb, files)) = &sandbox {
        let name = if sb.config.host_network {
            std::fs::read_to_string(files.join("hostname")).unwrap_or_default().trim().to_string()
        } else {
            sb.config.hostname.clone()
        };
        env.push(format!("HOSTNAME={name}"));
    }
    env.extend(c.env.iter().map(|(k, v)| format!("{k}={v}")));
    let mut caps = c.capabilities.clone();
    if c.privileged {
        caps.add = vec!["ALL".into()];
    }
    let capabilities = security::process_capabilities(&caps, uid)?;
    let seccomp = match &c.seccomp {
        _ if c.privileged => None,
        Seccomp::Unconfined => None,
        Seccomp::RuntimeDefault => Some(security::default_profile(&security::capability_set(&caps)?.0)),
        Seccomp::Localhost(path) => Some(security::localhost_profile(path)?),
    };
    let mut groups: Vec<u32> = c.supplemental_groups.clone();
    if c.image_groups {
        groups.extend(image_groups(layers, uid));
    }
    groups.retain(|g| *g != gid);
    groups.sort_unstable();
    groups.dedup();
    let user = UserBuilder::default().uid(uid).gid(gid).additional_gids(groups).build().map_err(e)?;
    let process = ProcessBuilder::default()
        .terminal(false)
        .args(c.args.clone())
        .env(env)
        .cwd(cwd)
        .user(user)
        .capabilities(capabilities)
        .no_new_privileges(!c.allow_privilege_escalation && !c.privileged)
        .build()
        .map_err(e)?;
    let mut process = process;
    process.set_apparmor_profile(c.apparmor_profile.clone());

    let mut mounts: Vec<OciMount> = oci_spec::runtime::get_default_mounts();
    if c.privileged {
        // a writable /sys (and cgroup tree), as for a privileged container elsewhere
        for m in &mut mounts {
            if m.destination().starts_with("/sys")
                && let Some(opts) = m.options().clone()
            {
                m.set_options(Some(opts.into_iter().map(|o| if o == "ro" { "rw".into() } else { o }).collect()));
            }
        }
    }
    let bind = |src: &Path, dst: &str, ro: bool| {
        let mut opts = vec!["rbind".to_string(), "rprivate".to_string()];
        opts.push(if ro { "ro" } else { "rw" }.into());
        MountBuilder::default().destination(dst).typ("bind").source(src).options(opts).build().map_err(e)
    };
    let own = |typ: LinuxNamespaceType| LinuxNamespaceBuilder::default().typ(typ).build().map_err(e);
    let mut namespaces = vec![own(LinuxNamespaceType::Mount)?];
    let user_ns = sandbox.as_ref().and_then(|(sb, files)| Some((sb.config.user_ns?, files)));
    if let Some((_, files)) = &user_ns {
        // the pod's user namespace (see `userns`), kept beside its files
        let file = files.with_file_name(format!("{}.userns", files.file_name().unwrap_or_default().to_string_lossy()));
        namespaces.push(LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::User).path(file).build().map_err(e)?);
    }
    if !host_pid {
        namespaces.push(own(LinuxNamespaceType::Pid)?);
    }
    if !host_ipc {
        namespaces.push(own(LinuxNamespaceType::Ipc)?);
    }
    if !host_network {
        // a host-network pod has the host's name too
        namespaces.push(own(LinuxNamespaceType::Uts)?);
        let mut net = LinuxNamespaceBuilder::default().typ(LinuxNamespaceType::Network);
        if let Some(path) = sandbox.as_ref().and_then(|(sb, _)| sb.netns.clone()) {
            net = net.path(path);
        }
        namespaces.push(net.build().map_err(e)?);
    }
    if let Some((_, files)) = &sandbox {
        for name in ["hosts", "resolv.conf", "hostname"] {
            mounts.push(bind(&files.join(name), &format!("/etc/{name}"), false)?);
        }
    }
    for m in &c.mounts {
        mounts.push(bind(&m.host_path, &m.container_path, m.read_only)?);
    }

    let mut resources = LinuxResourcesBuilder::default();
    if let Some(limit) = c.memory_limit {
        resources = resources.memory(LinuxMemoryBuilder::default().limit(limit as i64).build().map_err(e)?);
    }
    let mut cpu = LinuxCpuBuilder::default();
    if let Some(millis) = c.cpu_limit_millis {
        cpu = cpu.quota((millis * 100) as i64).period(100_000u64);
    }
    let shares = c.cpu_request_millis.map_or(2, |m| (m * 1024 / 1000).max(2));
    let mut unified = std::collections::HashMap::new();
    if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        // cgroup v2: the kubelet's own conversion (runc ≤ 1.1 uses an older one)
        let weight = 1 + ((shares.clamp(2, 262_144) - 2) * 9999) / 262_142;
        unified.insert("cpu.weight".to_string(), weight.to_string());
    } else {
        cpu = cpu.shares(shares);
    }
    resources = resources.cpu(cpu.build().map_err(e)?).unified(unified);
    let mut linux = LinuxBuilder::default()
        .namespaces(namespaces)
        .cgroups_path(cgroup_path(&c.sandbox_id, &c.id))
        .build()
        .map_err(e)?;
    if let Some((map, _)) = &user_ns {
        let ids = oci_spec::runtime::LinuxIdMappingBuilder::default()
            .container_id(0u32)
            .host_id(map.host_id)
            .size(map.size)
            .build()
            .map_err(e)?;
        linux.set_uid_mappings(Some(vec![ids]));
        linux.set_gid_mappings(Some(vec![ids]));
    }
    if c.privileged {
        // the host's devices, all of them usable
        resources =
            resources.devices(vec![LinuxDeviceCgroupBuilder::default().allow(true).access("rwm").build().map_err(e)?]);
        linux.set_devices(Some(security::host_devices()));
    }
    // set either way: oci-spec's default Linux section masks paths of its own accord
    if c.privileged || c.proc_unmasked {
        linux.set_masked_paths(Some(Vec::new()));
        linux.set_readonly_paths(Some(Vec::new()));
    } else {
        linux.set_masked_paths(Some(oci_spec::runtime::get_default_maskedpaths()));
        linux.set_readonly_paths(Some(oci_spec::runtime::get_default_readonly_paths()));
    }
    linux.set_resources(Some(resources.build().map_err(e)?));
    linux.set_seccomp(seccomp);
    if let Some((sb, _)) = &sandbox
        && !sb.config.sysctls.is_empty()
    {
        linux.set_sysctl(Some(sb.config.sysctls.iter().cloned().collect()));
    }

    let mut spec = Spec::default();
    spec.set_process(Some(process));
    // a user-namespaced rootfs is where the pod's root can reach it (see `userns`)
    let root = if user_ns.is_some() { userns::container_dir(&c.id).join("rootfs") } else { PathBuf::from("rootfs") };
    spec.set_root(Some(RootBuilder::default().path(root).readonly(c.read_only_rootfs).build().map_err(e)?));
    let hostname = match &sandbox {
        _ if host_network => None,
        Some((sb, _)) => Some(sb.config.hostname.clone()),
        None => Some(c.name.clone()),
    };
    spec.set_hostname(hostname);
    spec.set_mounts(Some(mounts));
    spec.set_linux(Some(linux));
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runc_versions() {
        assert!(check_runc_version("runc version 1.1.5+ds1\ncommit: x").is_err());
        assert!(check_runc_version("runc version 1.2.8").is_err());
        assert!(check_runc_version("runc version 1.3.6").is_ok());
        assert!(check_runc_version("runc version 1.4.2").is_err());
        assert!(check_runc_version("runc version 1.4.3").is_ok());
        assert!(check_runc_version("runc version 1.5.0-rc.3").is_ok());
        assert!(check_runc_version("nonsense").is_err());
    }

    #[test]
    fn working_dirs_are_checked() {
        assert_eq!(check_cwd("/app/./x/").unwrap(), "/app/x");
        assert!(check_cwd("/proc/self/fd/7").is_err());
        assert!(check_cwd("app").is_err());
        assert!(check_cwd("/a/../../etc").is_err());
    }

    #[test]
    fn users_resolve_through_the_image_files() {
        let dir = tempfile::tempdir().unwrap();
        let (lower, upper) = (dir.path().join("lower"), dir.path().join("upper"));
        std::fs::create_dir_all(lower.join("etc")).unwrap();
        std::fs::create_dir_all(upper.join("etc")).unwrap();
        std::fs::write(lower.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n").unwrap();
        std::fs::write(upper.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\nweb:x:33:34::/:/bin/sh\n").unwrap();
        std::fs::write(lower.join("etc/group"), "root:x:0:\nstaff:x:50:\n").unwrap();
        let layers = [lower.clone(), upper.clone()];
        assert_eq!(resolve_user("", &layers).unwrap(), (0, 0));
        assert_eq!(resolve_user("web", &layers).unwrap(), (33, 34), "the top layer's passwd wins");
        assert!(resolve_user("app", &layers).is_err(), "not in the topmost passwd");
        assert_eq!(resolve_user("33", &layers).unwrap(), (33, 34), "a uid's primary group");
        assert_eq!(resolve_user("4242", &layers).unwrap(), (4242, 0), "an unknown uid gets group 0");
        assert_eq!(resolve_user("web:staff", &layers).unwrap(), (33, 50));
        assert_eq!(resolve_user("1:2", &layers).unwrap(), (1, 2));
        assert!(resolve_user("web:nogroup", &layers).unwrap_err().to_string().contains("/etc/group"));
        // a symlinked passwd is never followed onto the host
        std::fs::remove_file(upper.join("etc/passwd")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", upper.join("etc/passwd")).unwrap();
        assert!(resolve_user("web", &layers).is_err());
    }

    #[test]
    fn merged_groups_come_from_the_image_group_file() {
        let dir = tempfile::tempdir().unwrap();
        let layer = dir.path().join("l");
        std::fs::create_dir_all(layer.join("etc")).unwrap();
        std::fs::write(layer.join("etc/passwd"), "root:x:0:0::/root:/bin/sh\napp:x:1000:1000::/:/bin/sh\n").unwrap();
        std::fs::write(
            layer.join("etc/group"),
            "# comment\nroot:x:0:\nwheel:x:10:root, app\nstaff:x:50:appx\naudio:x:63:app\nbad:x:nan:app\n",
        )
        .unwrap();
        let layers = [layer];
        assert_eq!(image_groups(&layers, 1000), vec![10, 63], "listed by name, not by prefix; bad gids skipped");
        assert_eq!(image_groups(&layers, 0), vec![10]);
        assert!(image_groups(&layers, 4242).is_empty(), "a uid the image does not name has none");
    }
}
