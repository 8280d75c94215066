//! This node as pods see it: its name, address and allocatable resources (the downward
//! API's unset limits, and admission).

/// Facts about the node, read once at start.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Node {
    pub name: String,
    /// The address other hosts reach this one at (`status.hostIP`).
    pub ip: String,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Free-able disk under the state directory.
    pub ephemeral_bytes: u64,
}

impl Node {
    /// Reads the host: hostname, the source address of the default route, CPUs the
    /// process may use, and MemTotal.
    pub fn detect(state_dir: &std::path::Path) -> Node {
        let name = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|h| h.trim().to_lowercase())
            .ok()
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".into());
        let cpus = std::thread::available_parallelism().map(|n| n.get() as u64).unwrap_or(1);
        let memory_bytes = meminfo("MemTotal").unwrap_or(0);
        let ephemeral_bytes = rustix::fs::statvfs(state_dir)
            .or_else(|_| rustix::fs::statvfs("/"))
            .map(|s| s.f_blocks * s.f_frsize)
            .unwrap_or(0);
        Node { name, ip: host_ip(), cpu_millis: cpus * 1000, memory_bytes, ephemeral_bytes }
    }
}

/// The local address of the default route, found by connecting (no packet is sent) a
/// UDP socket; loopback when the host has no route.
fn host_ip() -> String {
    let probe = || -> std::io::Result<std::net::IpAddr> {
        let s = std::net::UdpSocket::bind("0.0.0.0:0")?;
        s.connect("192.0.2.1:9")?;
        Ok(s.local_addr()?.ip())
    };
    probe().map(|ip| ip.to_string()).unwrap_or_else(|_| "127.0.0.1".into())
}

/// A `/proc/meminfo` figure (`MemTotal`, `MemAvailable`, …) in bytes.
pub fn meminfo(key: &str) -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let rest = text.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))?;
    rest.split_whitespace().next()?.parse::<u64>().ok().map(|kib| kib * 1024)
}

/// Processes on the host now, and the most there may be (`kernel.pid_max`).
pub fn processes() -> (u64, Option<u64>) {
    let count = std::fs::read_dir("/proc")
        .map(|d| d.filter_map(|e| e.ok()).filter(|e| e.file_name().to_string_lossy().parse::<u32>().is_ok()).count())
        .unwrap_or(0) as u64;
    let max = std::fs::read_to_string("/proc/sys/kernel/pid_max").ok().and_then(|s| s.trim().parse().ok());
    (count, max)
}

/// The Wasm instance pool: the slots reserved, and how many were asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pool {
    pub slots: u32,
    pub asked: u32,
}

/// How many pods this node takes (`pods` capacity and allocatable), and the limit that
/// set the number, named in refusals.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodCapacity {
    pub pods: u32,
    pub limit: String,
}

/// Memory mappings one pod may add to the agent: an idle Wasm guest adds five
/// (measured: linear memory, the rest of its slot, its image, instance and tables),
/// a request-per-instance HTTP component briefly more.
pub const MAPS_PER_POD: u64 = 8;
/// Mappings kept free for everything else the agent does.
const MAPS_RESERVE: u64 = 8192;
/// Memory budgeted per pod when counting how many fit (an idle Wasm pod takes about
/// 100 KiB of the agent; a Linux pod's container is charged to its own cgroup).
const MEMORY_PER_POD: u64 = 256 << 10;
/// Open files kept free for connections, pulls and the store; a pod that would leave
/// fewer is refused.
pub const FILES_RESERVE: u64 = 256;

/// The pods this machine can hold: the least of `--max-pods` (when given), the Wasm
/// instance pool, memory, and the memory mappings `vm.max_map_count` leaves beyond
/// those already in use (`maps_in_use`, read once the pool is reserved).
pub fn pod_capacity(max_pods: Option<u32>, pool: Pool, max_map_count: u64, maps_in_use: u64) -> PodCapacity {
    let by_maps = max_map_count.saturating_sub(maps_in_use + MAPS_RESERVE) / MAPS_PER_POD;
    let by_memory = meminfo("MemTotal").unwrap_or(u64::MAX) / MEMORY_PER_POD;
    let pool_limit = if pool.slots < pool.asked {
        format!(
            "the Wasm instance pool ({} slots: the most the address space holds of --max-wasm-instances {})",
            pool.slots, pool.asked
        )
    } else {
        format!("the Wasm instance pool (--max-wasm-instances {})", pool.slots)
    };
    let mut limits = vec![
        (u64::from(pool.slots), pool_limit),
        (by_maps, format!("memory mappings (vm.max_map_count {max_map_count}, {maps_in_use} in use)")),
        (by_memory, format!("memory ({} KiB per pod)", MEMORY_PER_POD >> 10)),
    ];
    if let Some(n) = max_pods {
        limits.insert(0, (u64::from(n), format!("--max-pods {n}")));
    }
    let (pods, limit) = limits.into_iter().min_by_key(|(n, _)| *n).expect("at least one limit");
    PodCapacity { pods: pods.min(u64::from(u32::MAX)) as u32, limit }
}

/// `vm.max_map_count`, and the mappings this process holds now.
pub fn map_counts() -> (u64, u64) {
    let max = std::fs::read_to_string("/proc/sys/vm/max_map_count").ok().and_then(|s| s.trim().parse().ok());
    let used = std::fs::read("/proc/self/maps").map(|b| b.iter().filter(|&&c| c == b'\n').count() as u64);
    (max.unwrap_or(65_530), used.unwrap_or(0))
}

/// Raises `vm.max_map_count` (as root; installers of search engines and databases do
/// the same) so that `pods` pods fit beside the `used` mappings. Returns the value in
/// force afterwards; says what to run when it cannot.
pub fn raise_max_map_count(pods: u64, (max, used): (u64, u64)) -> u64 {
    let needed = used + MAPS_RESERVE + pods * MAPS_PER_POD;
    if max >= needed {
        return max;
    }
    // a round figure, as distributions set it (1048576 on Fedora and Ubuntu)
    let want = needed.next_power_of_two().max(262_144);
    match std::fs::write("/proc/sys/vm/max_map_count", want.to_string()) {
        Ok(()) => {
            tracing::info!(from = max, to = want, "raised vm.max_map_count for the pod capacity");
            eprintln!("wasmlet: raised vm.max_map_count from {max} to {want} for {pods} pods");
            want
        }
        Err(e) => {
            tracing::warn!(error = %e, max, needed, "vm.max_map_count limits the pod capacity");
            eprintln!(
                "wasmlet: vm.max_map_count {max} limits this node's pods; `sysctl -w vm.max_map_count={want}` lifts it ({e})"
            );
            max
        }
    }
}

/// Open files, and the soft limit. Listing `/proc/self/fd` looks up every descriptor's
/// entry (a third of the agent's time in a stream of single-pod applies with 30,000 pods
/// live, by `perf`), so the count is taken at most once a second, unless the last one was
/// within [`FILES_RESERVE`] of the limit: a refusal is always made on a fresh count.
pub fn open_files() -> (u64, u64) {
    static LAST: std::sync::Mutex<Option<(std::time::Instant, u64)>> = std::sync::Mutex::new(None);
    let limit = rustix::process::getrlimit(rustix::process::Resource::Nofile).current.unwrap_or(u64::MAX);
    let mut last = LAST.lock().unwrap_or_else(|e| e.into_inner());
    if let Some((at, open)) = *last
        && at.elapsed() < std::time::Duration::from_secs(1)
        && open + FILES_RESERVE <= limit
    {
        return (open, limit);
    }
    let open = std::fs::read_dir("/proc/self/fd").map(|d| d.count() as u64).unwrap_or(0);
    *last = Some((std::time::Instant::now(), open));
    (open, limit)
}

/// What this node lets pods ask for: the kubelet's `--seccomp-default`,
/// `--allow-privileged` and `--allowed-unsafe-sysctls`, and which security modules the
/// host has.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// RuntimeDefault for containers whose spec names no seccomp profile.
    pub seccomp_default: bool,
    /// Where `Localhost` seccomp profiles are found (`localhostProfile` is relative).
    pub seccomp_profile_root: std::path::PathBuf,
    pub allow_privileged: bool,
    /// Names or `prefix*` patterns of unsafe (namespaced) sysctls pods may set.
    pub allowed_unsafe_sysctls: Vec<String>,
    /// AppArmor is enabled on the host.
    pub apparmor: bool,
    /// How many pods the node takes.
    pub capacity: PodCapacity,
    /// How big container logs grow (`--container-log-max-size`, `--container-log-max-files`).
    pub log: wasmlet_runtime::log::LogPolicy,
}

impl Policy {
    /// The kubelet's defaults, profiles under `STATE_DIR/seccomp`.
    pub fn new(state_dir: &std::path::Path) -> Policy {
        Policy {
            seccomp_default: false,
            seccomp_profile_root: state_dir.join("seccomp"),
            allow_privileged: true,
            allowed_unsafe_sysctls: Vec::new(),
            apparmor: std::fs::read_to_string("/sys/module/apparmor/parameters/enabled").is_ok_and(|v| v.trim() == "Y"),
            capacity: PodCapacity { pods: 110, limit: "the kubelet's default of 110".into() },
            log: wasmlet_runtime::log::LogPolicy::default(),
        }
    }
}

/// The sysctls the kubelet counts as safe: namespaced, and unable to affect other pods.
pub const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
    "net.ipv4.tcp_rmem",
    "net.ipv4.tcp_wmem",
];

/// The namespace a sysctl lives in (`Ipc` or `Net`), or None when it is node-wide and
/// no pod may set it.
pub fn sysctl_namespace(name: &str) -> Option<&'static str> {
    const IPC: &[&str] = &["kernel.shmall", "kernel.shmmax", "kernel.shmmni", "kernel.shm_rmid_forced", "kernel.sem"];
    if IPC.contains(&name) || name.starts_with("kernel.msg") || name.starts_with("fs.mqueue.") {
        Some("Ipc")
    } else if name.starts_with("net.") {
        Some("Net")
    } else {
        None
    }
}

/// A sysctl as the kernel names it under /proc/sys: `a/b.c` is written `a.b/c` too.
pub fn normalize_sysctl(name: &str) -> String {
    // the kubelet's rule: when the first separator is a slash, dots and slashes swap
    match name.find(['.', '/']) {
        Some(i) if name[i..].starts_with('/') => name
            .chars()
            .map(|c| match c {
                '/' => '.',
                '.' => '/',
                c => c,
            })
            .collect(),
        _ => name.into(),
    }
}

impl Policy {
    /// Why the node refuses sysctl `name` for a pod (with `host_network`/`host_ipc`),
    /// in the kubelet's words; None when it is allowed.
    pub fn refuse_sysctl(&self, name: &str, host_network: bool, host_ipc: bool) -> Option<String> {
        let name = normalize_sysctl(name);
        let allowed = SAFE_SYSCTLS.contains(&name.as_str())
            || self.allowed_unsafe_sysctls.iter().any(|p| match p.strip_suffix('*') {
                Some(prefix) => name.starts_with(prefix),
                None => *p == name,
            });
        if !allowed {
            return Some(format!("forbidden sysctl: {name:?} not allowlisted"));
        }
        match sysctl_namespace(&name) {
            None => Some(format!("forbidden sysctl: {name:?} is not namespaced")),
            Some("Net") if host_network => {
                Some(format!("forbidden sysctl: {name:?} not allowed with host net enabled"))
            }
            Some("Ipc") if host_ipc => Some(format!("forbidden sysctl: {name:?} not allowed with host ipc enabled")),
            Some(_) => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_follow_the_kubelets_rules() {
        let mut p = Policy::new(std::path::Path::new("/tmp"));
        assert_eq!(p.refuse_sysctl("net.ipv4.tcp_syncookies", false, false), None);
        assert_eq!(p.refuse_sysctl("net/ipv4/tcp_syncookies", false, false), None, "slashes are accepted");
        assert!(p.refuse_sysctl("net.core.somaxconn", false, false).unwrap().contains("not allowlisted"));
        assert!(p.refuse_sysctl("net.ipv4.tcp_syncookies", true, false).unwrap().contains("host net"));
        p.allowed_unsafe_sysctls = vec!["net.core.*".into(), "kernel.msgmax".into(), "vm.*".into()];
        assert_eq!(p.refuse_sysctl("net.core.somaxconn", false, false), None);
        assert_eq!(p.refuse_sysctl("kernel.msgmax", false, false), None);
        assert!(p.refuse_sysctl("kernel.msgmax", false, true).unwrap().contains("host ipc"));
        assert!(p.refuse_sysctl("vm.swappiness", false, false).unwrap().contains("not namespaced"));
    }

    #[test]
    fn the_pod_capacity_is_the_least_limit_and_names_it() {
        let c = pod_capacity(None, Pool { slots: 10_500, asked: 10_500 }, 1_048_576, 21_000);
        assert_eq!((c.pods, c.limit.as_str()), (10_500, "the Wasm instance pool (--max-wasm-instances 10500)"));
        let c = pod_capacity(Some(110), Pool { slots: 10_500, asked: 10_500 }, 1_048_576, 21_000);
        assert_eq!((c.pods, c.limit.as_str()), (110, "--max-pods 110"));
        // the default map count, most of it taken by the pool
        let c = pod_capacity(None, Pool { slots: 10_500, asked: 10_500 }, 65_530, 21_110);
        assert_eq!(c.pods as u64, (65_530 - 21_110 - MAPS_RESERVE) / MAPS_PER_POD);
        assert!(c.limit.starts_with("memory mappings (vm.max_map_count 65530"), "{}", c.limit);
        assert_eq!(
            pod_capacity(None, Pool { slots: 10, asked: 10 }, 1_000, 5_000).pods,
            0,
            "no room at all is a capacity of 0"
        );
        let c = pod_capacity(None, Pool { slots: 15_000, asked: 30_000 }, 1_048_576, 40_000);
        assert_eq!(c.pods, 15_000);
        assert!(c.limit.contains("15000 slots: the most the address space holds of --max-wasm-instances 30000"));
    }
}
