//! The agent under test: `wasmlet serve` on a temp state dir, and the CLI against it.

use std::io::Write;
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
    /// Extra `serve` flags.
    pub flags: Vec<String>,
}

/// The flags every test agent runs with: Debian bookworm's runc 1.1.5 (allowed
/// explicitly), and one test bridge, subnet and address pool that all test agents share
/// (host-local locks its pool), apart from a real wasmlet's `wasmlet0`.
pub const TEST_NETWORK: &[&str] = &[
    "--allow-vulnerable-runtime",
    "--pod-cidr",
    "10.89.0.0/16",
    "--pod-bridge",
    "wasmlet-test0",
    "--cni-ipam-dir",
    "/run/wasmlet-test-ipam",
];

impl Agent {
    pub fn start() -> Agent {
        Self::start_with(&[])
    }

    pub fn start_with(flags: &[&str]) -> Agent {
        Self::start_in(tempfile::tempdir().unwrap(), flags)
    }

    /// An agent on a state directory the test prepared (a small filesystem, say).
    pub fn start_in(state: tempfile::TempDir, flags: &[&str]) -> Agent {
        let mut a = Agent { state, child: None, flags: flags.iter().map(|s| s.to_string()).collect() };
        a.restart();
        a
    }

    pub fn state_dir(&self) -> &Path {
        self.state.path()
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the agent is running").id()
    }

    /// Starts (again) the daemon on the same state dir and waits until it answers.
    pub fn restart(&mut self) {
        self.stop();
        let log =
            std::fs::OpenOptions::new().create(true).append(true).open(self.state_dir().join("serve.log")).unwrap();
        let child = Command::new(WASMLET)
            .args(["--state-dir", self.state_dir().to_str().unwrap(), "serve"])
            // a small pool unless the test asks for another
            .args(if self.flags.iter().any(|f| f == "--max-wasm-instances") {
                &[][..]
            } else {
                &["--max-wasm-instances", "200"][..]
            })
            .args(TEST_NETWORK)
            .args(&self.flags)
            .env("DOCKER_CONFIG", self.state_dir().join("no-docker-config"))
            // WASMLET_TEST_LOG=wasmlet=debug for more when a test fails
            .env("WASMLET_LOG", std::env::var("WASMLET_TEST_LOG").unwrap_or_else(|_| "wasmlet=info".into()))
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

    /// SIGTERM, as systemd stops the service; waits for the exit.
    pub fn terminate(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = rustix::process::kill_process(
                rustix::process::Pid::from_raw(c.id() as i32).unwrap(),
                rustix::process::Signal::TERM,
            );
            let deadline = Instant::now() + Duration::from_secs(20);
            while c.try_wait().unwrap().is_none() {
                if Instant::now() > deadline {
                    let _ = c.kill();
                    panic!("the agent did not exit within 20 s of SIGTERM");
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// Mount points under the state dir, from /proc/self/mountinfo.
    pub fn mounts(&self) -> Vec<String> {
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let dir = self.state_dir().display().to_string();
        info.lines().filter_map(|l| l.split(' ').nth(4)).filter(|m| m.starts_with(&dir)).map(str::to_string).collect()
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
    /// Deletes every pod (their containers and networks outlive the agent otherwise),
    /// then stops the agent.
    fn drop(&mut self) {
        if self.child.is_some() {
            // owners first, or their controller makes the pods again
            for kind in ["deployments", "jobs"] {
                let out = self.cli(&["get", kind, "-A", "-o", "json"]);
                let items: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                for o in items.as_array().into_iter().flatten() {
                    let (ns, name) = (o["metadata"]["namespace"].as_str(), o["metadata"]["name"].as_str());
                    if let (Some(ns), Some(name)) = (ns, name) {
                        let _ = self.cli(&["delete", kind, name, "-n", ns]);
                    }
                }
            }
            // (no panic here: a panic while a failed test unwinds aborts, and the agent
            // would be left running)
            let out = self.cli(&["get", "pods", "-A", "-o", "json"]);
            let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
            for p in list["items"].as_array().into_iter().flatten() {
                let (ns, name) = (p["metadata"]["namespace"].as_str(), p["metadata"]["name"].as_str());
                if let (Some(ns), Some(name)) = (ns, name) {
                    let _ = self.cli(&["delete", "pod", name, "-n", ns, "--grace-period", "0"]);
                }
            }
        }
        self.stop();
    }
}

/// A busybox image (static busybox, every applet linked) built with umoci and pushed
/// to `registry` as `busybox:TAG`, for the given architecture.
pub fn push_busybox(registry: &Registry, arch: &str, tag: &str) -> String {
    push_busybox_image(registry, arch, tag, true, &|_| {})
}

/// busybox as [`push_busybox`] makes it, with what `extra` adds to its root filesystem.
pub fn push_busybox_with(registry: &Registry, tag: &str, extra: &dyn Fn(&Path)) -> String {
    push_busybox_image(registry, "amd64", tag, true, extra)
}

/// busybox as Docker Hub ships it: no ENTRYPOINT, `CMD ["sh"]`, for the pods people
/// copy from the Kubernetes documentation.
pub fn push_busybox_like_hub(registry: &Registry, tag: &str) -> String {
    push_busybox_image(registry, "amd64", tag, false, &|_| {})
}

fn push_busybox_image(registry: &Registry, arch: &str, tag: &str, entrypoint: bool, extra: &dyn Fn(&Path)) -> String {
    let umoci = crate::common::require("umoci", "umoci");
    let busybox = Path::new("/bin/busybox");
    assert!(busybox.is_file(), "/bin/busybox is missing: install it with `apt-get install -y busybox-static`");
    let dir = tempfile::tempdir().unwrap();
    let layout = dir.path().join("oci");
    let bundle = dir.path().join("bundle");
    let image = format!("{}:{tag}", layout.display());
    let run = |args: &[&str]| {
        let out = Command::new(&umoci).args(args).output().unwrap();
        assert!(out.status.success(), "umoci {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    };
    run(&["init", "--layout", layout.to_str().unwrap()]);
    run(&["new", "--image", &image]);
    run(&["unpack", "--image", &image, bundle.to_str().unwrap()]);
    let rootfs = bundle.join("rootfs");
    for d in ["bin", "sbin", "usr/bin", "usr/sbin", "etc", "tmp", "root", "proc", "sys", "dev"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    let applets = Command::new(busybox).arg("--list-full").output().unwrap().stdout;
    for applet in String::from_utf8(applets).unwrap().lines().filter(|a| *a != "bin/busybox") {
        let depth = Path::new(applet).parent().unwrap().components().count();
        let _ = std::os::unix::fs::symlink(format!("{}bin/busybox", "../".repeat(depth)), rootfs.join(applet));
    }
    std::fs::write(rootfs.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    // Debian's busybox-static leaves out the printenv applet Docker Hub's busybox has
    // (the docs' pods use it): a script that behaves the same
    let printenv = rootfs.join("usr/bin/printenv");
    if !printenv.exists() {
        use std::os::unix::fs::PermissionsExt;
        std::fs::write(
            &printenv,
            "#!/bin/sh\n[ $# -eq 0 ] && exec env\nrc=0\nfor v in \"$@\"; do\n  if env | grep -q \"^$v=\"; then env | sed -n \"s/^$v=//p\"; else rc=1; fi\ndone\nexit $rc\n",
        )
        .unwrap();
        std::fs::set_permissions(&printenv, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    extra(&rootfs);
    run(&["repack", "--image", &image, bundle.to_str().unwrap()]);
    if entrypoint {
        run(&["config", "--image", &image, "--os", "linux", "--architecture", arch, "--config.entrypoint", "/bin/sh"]);
        run(&["config", "--image", &image, "--config.cmd=-c", "--config.cmd=echo hello from busybox"]);
    } else {
        run(&["config", "--image", &image, "--os", "linux", "--architecture", arch, "--config.cmd=sh"]);
    }
    let target = format!("{}/busybox:{tag}", registry.host);
    let out = Command::new(WASMLET)
        .args(["push", "--layout", &format!("{}:{tag}", layout.display()), &target])
        .output()
        .unwrap();
    assert!(out.status.success(), "push {target}: {}", String::from_utf8_lossy(&out.stderr));
    target
}

/// The named container's state: ("waiting"|"running"|"terminated", details).
pub fn container_state(pod: &Value, name: &str) -> (String, Value) {
    let statuses = pod["status"]["containerStatuses"].as_array().cloned().unwrap_or_default();
    let c = statuses.iter().find(|c| c["name"] == name).cloned().unwrap_or_default();
    c["state"].as_object().and_then(|o| o.iter().next()).map(|(k, v)| (k.clone(), v.clone())).unwrap_or_default()
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

/// A command run on a real pseudo-terminal (util-linux `script`), typed into and read.
pub struct Interactive {
    child: std::sync::Mutex<std::process::Child>,
    input: std::sync::Mutex<std::process::ChildStdin>,
    screen: std::sync::Arc<std::sync::Mutex<Vec<u8>>>,
}

impl Interactive {
    pub fn start(command: &str) -> Interactive {
        let script = crate::common::require("script", "bsdutils");
        let mut child = std::process::Command::new(script)
            .args(["-q", "-f", "-e", "-c", command, "/dev/null"])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let input = child.stdin.take().unwrap();
        let mut out = child.stdout.take().unwrap();
        let screen = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let s = screen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = std::io::Read::read(&mut out, &mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        Interactive { child: child.into(), input: input.into(), screen }
    }

    pub fn screen(&self) -> String {
        String::from_utf8_lossy(&self.screen.lock().unwrap()).into_owned()
    }

    pub fn expect(&self, text: &str, what: &str) {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while !self.screen().contains(text) {
            assert!(
                std::time::Instant::now() < deadline,
                "no {what} ({text:?}) within 15 s; screen:\n{}",
                self.screen()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn type_line(&self, line: &str) {
        let mut input = self.input.lock().unwrap();
        input.write_all(format!("{line}\r").as_bytes()).unwrap();
        input.flush().unwrap();
    }

    pub fn wait(&self) -> Option<i32> {
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        let mut child = self.child.lock().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code();
            }
            if std::time::Instant::now() > deadline {
                let _ = child.kill();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// A tmpfs of `size` mounted on a directory, unmounted when dropped.
pub struct Tmpfs(std::path::PathBuf);

impl Tmpfs {
    pub fn mount(dir: &std::path::Path, size: &str) -> Tmpfs {
        let status = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir)
            .status()
            .expect("mount (util-linux) is needed");
        assert!(status.success(), "mounting a tmpfs on {} (the tests run as root)", dir.display());
        Tmpfs(dir.to_path_buf())
    }

    pub fn free(&self) -> u64 {
        let fs = rustix::fs::statvfs(&self.0).unwrap();
        fs.f_bavail * fs.f_frsize
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.0).status();
    }
}

/// Writes a filler file until the filesystem has at most `free` bytes free (0: until a
/// write fails for want of space).
pub fn fill(disk: &Tmpfs, filler: &std::path::Path, free: u64) {
    let mut f = std::fs::OpenOptions::new().create(true).append(true).open(filler).unwrap();
    let chunk = vec![0u8; 1 << 20];
    while disk.free() > free {
        let n = if free == 0 { chunk.len() } else { chunk.len().min((disk.free() - free) as usize) };
        if let Err(e) = f.write_all(&chunk[..n]) {
            assert!(free == 0 && e.raw_os_error() == Some(28), "filling the disk: {e}");
            break;
        }
    }
    let _ = f.sync_all();
}
