//! The agent under test: `wasmlet serve` on a temp state dir, and the CLI against it.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::common::{Registry, wasm_app};

pub const WASMLET: &str = env!("CARGO_BIN_EXE_wasmlet");

/// A running `wasmlet serve`.
pub struct Agent {
    pub state: tempfile::TempDir,
    child: Option<Child>,
}

impl Agent {
    pub fn start() -> Agent {
        let state = tempfile::tempdir().unwrap();
        let mut a = Agent { state, child: None };
        a.restart();
        a
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// Starts (again) the daemon on the same state dir and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.state_dir().join("serve.log")).unwrap();
        let child = Command::new(WASMLET)
            .args(["--state-dir", self.state_dir().to_str().unwrap(), "serve", "--max-wasm-instances", "200"])
            .env("DOCKER_CONFIG", self.state_dir().join("no-docker-config"))
            .env("WASMLET_LOG", "wasmlet=info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap();
        self.child = Some(child);
        self.wait_ready();
    }

    pub fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let out = self.cli(&["get", "pods", "-o", "json"]);
            if out.status.success() {
                break;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.state_dir().join("serve.log")).unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(12).collect();
                panic!(
                    "the agent did not answer within 20 s: {}\nserve.log ends:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL, no cleanup.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn stop(&mut self) {
        self.kill9();
    }

    pub fn cli(&self, args: &[&str]) -> Output {
        Command::new(WASMLET).arg("--state-dir").arg(self.state_dir()).args(args).output().unwrap()
    }

    /// Runs the CLI and returns stdout, failing the test with stderr if it fails.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cli(args);
        assert!(out.status.success(), "wasmlet {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    pub fn apply(&self, yaml: &str) -> String {
        let path = self.state_dir().join(format!("manifest-{}.yaml", fastrand::u32(..)));
        std::fs::write(&path, yaml).unwrap();
        self.ok(&["apply", "-f", path.to_str().unwrap()])
    }

    pub fn pod(&self, name: &str) -> Value {
        serde_json::from_str(&self.ok(&["get", "pods", name, "-o", "json"])).unwrap()
    }

    pub fn pods(&self) -> Vec<Value> {
        let list: Value = serde_json::from_str(&self.ok(&["get", "pods", "-A", "-o", "json"])).unwrap();
        list["items"].as_array().cloned().unwrap_or_default()
    }

    /// Polls the pod until `check` holds; returns it.
    pub fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Value) -> bool) -> Value {
        let mut last = Value::Null;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            last = self.pod(name);
            if check(&last) {
                return last;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "pod {name}: timed out waiting for {what}; last seen:\n{}",
            serde_json::to_string_pretty(&last["status"]).unwrap()
        );
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The first container's state: ("waiting"|"running"|"terminated", details).
pub fn state(pod: &Value) -> (String, Value) {
    let st = &pod["status"]["containerStatuses"][0]["state"];
    st.as_object().and_then(|o| o.iter().next()).map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default()
}

pub fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

pub fn restarts(pod: &Value) -> u64 {
    pod["status"]["containerStatuses"][0]["restartCount"].as_u64().unwrap_or(0)
}

/// A registry holding every app of `wasm-apps/`: `apps/NAME:v1` (wasip1 module) and
/// `apps/NAME:p2` (wasip2 component).
pub struct Apps {
    pub registry: Registry,
}

impl Apps {
    pub fn push(names: &[&str]) -> Apps {
        let registry = Registry::start();
        for name in names {
            for (target, tag) in [("wasm32-wasip1", "v1"), ("wasm32-wasip2", "p2")] {
                let wasm = wasm_app(name, target);
                let r = format!("{}/apps/{name}:{tag}", registry.host);
                let out = Command::new(WASMLET).args(["push", wasm.to_str().unwrap(), &r]).output().unwrap();
                assert!(out.status.success(), "push {r}: {}", String::from_utf8_lossy(&out.stderr));
            }
        }
        Apps { registry }
    }

    pub fn image(&self, name: &str, tag: &str) -> String {
        format!("{}/apps/{name}:{tag}", self.registry.host)
    }
}

/// A one-container pod manifest.
pub fn pod_yaml(name: &str, image: &str, restart: &str, extra_container: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 30\n  containers:\n  - name: app\n    image: {image}\n{extra_container}"
    )
}
