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
