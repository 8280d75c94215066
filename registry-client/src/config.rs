//! How the client reaches registries: mirrors, which hosts may be spoken to over plain
//! HTTP, time-outs, retries, concurrency and size limits.

use std::collections::HashMap;
use std::time::Duration;

use crate::platform::Platform;

/// Registry access settings. [`Config::default`] is safe: HTTPS everywhere except loopback.
#[derive(Clone, Debug)]
pub struct Config {
    /// Registry host → mirror hosts tried first, in order (e.g. `docker.io` → `127.0.0.1:5000`).
    /// The origin is tried last. Credentials are looked up for the host actually contacted.
    pub mirrors: HashMap<String, Vec<String>>,
    /// Hosts (`host` or `host:port`) that are spoken to over plain HTTP.
    pub insecure_hosts: Vec<String>,
    /// Whether loopback hosts (`localhost`, `127.0.0.0/8`, `[::1]`) use plain HTTP.
    pub insecure_loopback: bool,
    /// Blobs downloaded at once for one image.
    pub max_concurrent_downloads: usize,
    /// Layers unpacked at once when a pull also unpacks.
    pub max_concurrent_unpacks: usize,
    pub retry: Retry,
    /// A response that sends nothing for this long is a stall (and retried).
    pub read_timeout: Duration,
    pub connect_timeout: Duration,
    /// Largest manifest or index accepted (containerd uses 4 MiB).
    pub max_manifest_bytes: u64,
    /// Largest image config accepted.
    pub max_config_bytes: u64,
    /// The platform an image index is resolved for.
    pub platform: Platform,
    /// Token realms must be https unless the registry itself is plain HTTP.
    pub require_https_realm: bool,
    /// Bytes a pull leaves free on the filesystems it writes (the blob store and the
    /// unpacked layers): a blob or layer that would take one below it fails with
    /// [`Error::NoSpace`](crate::Error::NoSpace), and what it wrote is removed. 0: no check.
    pub keep_free: u64,
}

/// Exponential back-off with jitter for transient failures.
#[derive(Clone, Debug)]
pub struct Retry {
    /// Total tries, the first included.
    pub attempts: u32,
    pub initial: Duration,
    pub max: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry { attempts: 4, initial: Duration::from_millis(200), max: Duration::from_secs(5) }
    }
}

impl Retry {
    /// Delay before try number `attempt` (1-based, so the first retry is attempt 2):
    /// initial · 2^(attempt-2), capped, with ±25 % jitter.
    pub fn delay(&self, attempt: u32) -> Duration {
        let exp = attempt.saturating_sub(2).min(16);
        let base = self.initial.saturating_mul(1 << exp).min(self.max);
        let jitter = 0.75 + fastrand::f64() * 0.5;
        base.mul_f64(jitter)
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            mirrors: HashMap::new(),
            insecure_hosts: Vec::new(),
            insecure_loopback: true,
            max_concurrent_downloads: 3,
            max_concurrent_unpacks: 2,
            retry: Retry::default(),
            read_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
            max_manifest_bytes: 4 << 20,
            max_config_bytes: 8 << 20,
            platform: Platform::host(),
            require_https_realm: true,
            keep_free: 0,
        }
    }
}

impl Config {
    /// Whether `host` (maybe with a port) is spoken to over plain HTTP.
    pub fn is_plain_http(&self, host: &str) -> bool {
        if self.insecure_hosts.iter().any(|h| h == host || h == strip_port(host)) {
            return true;
        }
        self.insecure_loopback && is_loopback(strip_port(host))
    }

    /// The hosts to try for `registry`, mirrors first.
    pub fn endpoints(&self, registry: &str) -> Vec<String> {
        let mut hosts = self.mirrors.get(registry).cloned().unwrap_or_default();
        hosts.push(registry.to_string());
        hosts
    }
}

fn strip_port(host: &str) -> &str {
    if let Some(rest) = host.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match host.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => host,
    }
}

fn is_loopback(host: &str) -> bool {
    host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_http_only_for_loopback_and_listed_hosts() {
        let mut c = Config::default();
        assert!(c.is_plain_http("127.0.0.1:5000"));
        assert!(c.is_plain_http("localhost:1234"));
        assert!(c.is_plain_http("[::1]:5000"));
        assert!(!c.is_plain_http("docker.io"));
        assert!(!c.is_plain_http("10.0.0.1:5000"));
        c.insecure_hosts.push("reg.lan".into());
        assert!(c.is_plain_http("reg.lan:5000"));
        c.insecure_loopback = false;
        assert!(!c.is_plain_http("127.0.0.1:5000"));
    }

    #[test]
    fn mirrors_come_before_the_origin() {
        let mut c = Config::default();
        c.mirrors.insert("docker.io".into(), vec!["127.0.0.1:5000".into()]);
        assert_eq!(c.endpoints("docker.io"), ["127.0.0.1:5000", "docker.io"]);
        assert_eq!(c.endpoints("ghcr.io"), ["ghcr.io"]);
    }

    #[test]
    fn backoff_doubles_and_caps() {
        let r = Retry { attempts: 10, initial: Duration::from_millis(100), max: Duration::from_secs(1) };
        let d2 = r.delay(2).as_millis();
        let d4 = r.delay(4).as_millis();
        let d9 = r.delay(9).as_millis();
        assert!((75..=125).contains(&d2), "{d2}");
        assert!((300..=500).contains(&d4), "{d4}");
        assert!((750..=1250).contains(&d9), "{d9}");
    }
}
