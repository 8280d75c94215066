//! Fixtures: the real registry, the wasm apps, a client on a temp store, tool checks.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use registry_client::{Client, Config, Keychain, Store};

/// Fails (never skips) when a tool the tests need is missing, saying how to install it.
pub fn require(program: &str, package: &str) -> PathBuf {
    let found = std::env::var_os("PATH")
        .into_iter()
        .flat_map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
        .map(|d| d.join(program))
        .find(|p| p.is_file());
    found.unwrap_or_else(|| {
        panic!("`{program}` is missing: install it with `apt-get install -y {package}` (or run `just setup`)")
    })
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Polls `check` until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A `docker-registry serve` on an ephemeral loopback port, storage in a temp dir.
pub struct Registry {
    pub host: String,
    child: Child,
    _dir: tempfile::TempDir,
}

pub const USER: &str = "regtest";
pub const PASSWORD: &str = "regtest-pass";

impl Registry {
    pub fn start() -> Registry {
        Self::start_with(false)
    }

    /// With htpasswd basic auth (bcrypt) for USER / PASSWORD.
    pub fn start_with_auth() -> Registry {
        Self::start_with(true)
    }

    fn start_with(auth: bool) -> Registry {
        let bin = require("docker-registry", "docker-registry");
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if auth {
            let htpasswd = require("htpasswd", "apache2-utils");
            let out = Command::new(htpasswd).args(["-Bbn", USER, PASSWORD]).output().unwrap();
            assert!(out.status.success(), "htpasswd failed");
            let file = dir.path().join("htpasswd");
            std::fs::write(&file, out.stdout).unwrap();
            config.push_str(&format!("auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n", file.display()));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = std::fs::File::create(dir.path().join("registry.log")).unwrap();
        let child = Command::new(bin).arg("serve").arg(&config_path).stdout(Stdio::null()).stderr(log).spawn().unwrap();
        let host = format!("127.0.0.1:{port}");
        wait_until(Duration::from_secs(20), "docker-registry to listen", || {
            std::net::TcpStream::connect(&host).is_ok()
        });
        Registry { host, child, _dir: dir }
    }

    pub fn reference(&self, repo_tag: &str) -> registry_client::Reference {
        format!("{}/{repo_tag}", self.host).parse().unwrap()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client with its own store in a temp dir.
pub struct TestClient {
    pub client: Client,
    pub dir: tempfile::TempDir,
}

impl TestClient {
    pub fn new() -> TestClient {
        Self::with(Config::default(), Keychain::new())
    }

    pub fn with(config: Config, keychain: Keychain) -> TestClient {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("store")).unwrap());
        TestClient { client: Client::new(config, keychain, store), dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// Builds `wasm-apps` once per test run and returns the path of `app` for `target`
/// (`wasm32-wasip1` or `wasm32-wasip2`).
pub fn wasm_app(app: &str, target: &str) -> PathBuf {
    static BUILT: OnceLock<()> = OnceLock::new();
    let dir = workspace_root().join("wasm-apps");
    BUILT.get_or_init(|| {
        for t in ["wasm32-wasip1", "wasm32-wasip2"] {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--quiet", "--release", "--target", t])
                .current_dir(&dir)
                .status()
                .unwrap();
            assert!(status.success(), "building wasm-apps for {t} failed: run `rustup target add {t}`");
        }
    });
    let path = dir.join("target").join(target).join("release").join(format!("{app}.wasm"));
    assert!(path.is_file(), "{} was not built", path.display());
    path
}

/// Runs a command, panicking with its stderr if it fails; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}
