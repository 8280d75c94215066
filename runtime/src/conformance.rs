//! A conformance suite generic over [`Runtime`]: every implementation must pass it
//! (runwasi's `testing.rs` is the model). Each runtime supplies the same programs in its
//! own form — a Wasm app from `wasm-apps/`, or a busybox command line on a rootfs — and
//! the cases below run them the same way.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::{Artifact, ContainerConfig, ContainerState, Error, ExitReason, Mount, Runtime, SandboxConfig};

/// One program for a runtime: what to run and its argv.
#[derive(Clone, Debug)]
pub struct Program {
    pub artifact: Artifact,
    pub args: Vec<String>,
}

/// The programs every runtime brings to the suite.
pub struct Programs {
    /// Prints `arg[1]=arg` and `env KEY=value` (its first argument and $KEY).
    pub hello: Program,
    /// Exits 42.
    pub exit42: Program,
    /// Runs until stopped, ignoring nothing.
    pub spin: Program,
    /// Allocates memory until it is killed.
    pub hog: Program,
    /// Writes `from-<id>` to `/data/out`.
    pub write: Program,
}

fn config(id: &str, p: &Program, dir: &Path) -> ContainerConfig {
    ContainerConfig {
        args: p.args.clone(),
        env: vec![("KEY".into(), "value".into())],
        ..ContainerConfig::for_test(id, p.artifact.clone(), dir.join(format!("{id}.log")))
    }
}

/// Runs every case.
pub async fn suite<R: Runtime>(rt: &R, p: &Programs, dir: &Path) {
    lifecycle(rt, &p.hello, dir).await;
    exit_code(rt, &p.exit42, dir).await;
    stop_within_grace(rt, &p.spin, dir).await;
    memory_limit(rt, &p.hog, dir).await;
    mounts(rt, &p.write, dir).await;
    listed_and_measured(rt, &p.spin, dir).await;
    unknown(rt).await;
}

/// A container is listed from create to remove; a running one has stats.
pub async fn listed_and_measured<R: Runtime>(rt: &R, spin: &Program, dir: &Path) {
    rt.create_container(config("listed", spin, dir)).await.unwrap();
    assert!(rt.list_containers().contains(&"listed".to_string()), "{:?}", rt.list_containers());
    rt.start_container("listed").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(rt.container_stats("listed").is_some(), "a running container has stats");
    rt.stop_container("listed", Duration::ZERO).await.unwrap();
    rt.remove_container("listed").await.unwrap();
    assert!(!rt.list_containers().contains(&"listed".to_string()));
}

/// create → Created, start → Running, wait → Exited(0, Completed), remove → gone.
pub async fn lifecycle<R: Runtime>(rt: &R, hello: &Program, dir: &Path) {
    let sandbox = SandboxConfig {
        id: format!("sandbox-{}", fastrand::u64(..)),
        namespace: "ns".into(),
        name: "p".into(),
        hostname: "p".into(),
        ..SandboxConfig::default()
    };
    let made = rt.create_sandbox(&sandbox).await.unwrap();
    let status = rt.sandbox_status(&sandbox.id).await.unwrap();
    assert_eq!(status.netns, made.netns, "the status names the sandbox's namespace");
    let mut c = config("life", hello, dir);
    c.sandbox_id = sandbox.id.clone();
    rt.create_container(c).await.unwrap();
    assert_eq!(rt.container_status("life").await.unwrap(), ContainerState::Created);
    rt.start_container("life").await.unwrap();
    let end = rt.wait_container("life").await.unwrap();
    let ContainerState::Exited { exit_code, reason, started_at, finished_at, .. } = end else { panic!("{end:?}") };
    assert_eq!((exit_code, reason), (0, ExitReason::Completed));
    assert!(finished_at >= started_at);
    let log = std::fs::read_to_string(dir.join("life.log")).unwrap();
    assert!(log.contains(" stdout F arg[1]=arg\n") && log.contains(" stdout F env KEY=value\n"), "{log}");
    rt.remove_container("life").await.unwrap();
    assert!(matches!(rt.container_status("life").await, Err(Error::NotFound(_))));
    rt.remove_sandbox(&sandbox.id).await.unwrap();
}

/// A non-zero exit is `Error` with its code.
pub async fn exit_code<R: Runtime>(rt: &R, exit: &Program, dir: &Path) {
    rt.create_container(config("code", exit, dir)).await.unwrap();
    rt.start_container("code").await.unwrap();
    let end = rt.wait_container("code").await.unwrap();
    assert!(matches!(end, ContainerState::Exited { exit_code: 42, reason: ExitReason::Error, .. }), "{end:?}");
    rt.remove_container("code").await.unwrap();
}

/// A busy program stops well within its grace period.
pub async fn stop_within_grace<R: Runtime>(rt: &R, spin: &Program, dir: &Path) {
    rt.create_container(config("spin", spin, dir)).await.unwrap();
    rt.start_container("spin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(rt.container_status("spin").await.unwrap(), ContainerState::Running { .. }));
    let t = Instant::now();
    rt.stop_container("spin", Duration::from_secs(2)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(3), "stop took {:?}", t.elapsed());
    assert!(matches!(rt.container_status("spin").await.unwrap(), ContainerState::Exited { .. }));
    rt.remove_container("spin").await.unwrap();
}

/// Past its memory limit a program ends as OOMKilled.
pub async fn memory_limit<R: Runtime>(rt: &R, hog: &Program, dir: &Path) {
    let mut c = config("hog", hog, dir);
    c.memory_limit = Some(32 << 20);
    rt.create_container(c).await.unwrap();
    rt.start_container("hog").await.unwrap();
    let end = tokio::time::timeout(Duration::from_secs(30), rt.wait_container("hog")).await.expect("hog ended");
    let end = end.unwrap();
    assert!(matches!(end, ContainerState::Exited { reason: ExitReason::OOMKilled, .. }), "{end:?}");
    rt.remove_container("hog").await.unwrap();
}

/// A mount is the host directory, writable.
pub async fn mounts<R: Runtime>(rt: &R, write: &Program, dir: &Path) {
    let data = dir.join("data");
    std::fs::create_dir_all(&data).unwrap();
    let mut c = config("writer", write, dir);
    c.mounts.push(Mount { host_path: data.clone(), container_path: "/data".into(), read_only: false });
    rt.create_container(c).await.unwrap();
    rt.start_container("writer").await.unwrap();
    let end = rt.wait_container("writer").await.unwrap();
    assert!(matches!(end, ContainerState::Exited { exit_code: 0, .. }), "{end:?}");
    assert_eq!(std::fs::read_to_string(data.join("out")).unwrap().trim(), "from-writer");
    rt.remove_container("writer").await.unwrap();
}

/// Unknown ids are NotFound, not panics.
pub async fn unknown<R: Runtime>(rt: &R) {
    assert!(matches!(rt.container_status("nope").await, Err(Error::NotFound(_))));
    assert!(matches!(rt.start_container("nope").await, Err(Error::NotFound(_))));
    assert!(rt.container_stats("nope").is_none());
}

/// A guest program built by `just wasm-apps`.
pub fn app(name: &str) -> PathBuf {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../wasm-apps/target/wasm32-wasip1/release")
        .join(format!("{name}.wasm"));
    assert!(p.is_file(), "{} is missing: run `just wasm-apps`", p.display());
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wasm::{WasmConfig, WasmRuntime};

    fn artifact(name: &str) -> Artifact {
        let path = app(name);
        let digest =
            format!("sha256:{}", hex::encode(<sha2::Sha256 as sha2::Digest>::digest(std::fs::read(&path).unwrap())));
        Artifact::Wasm { path, digest }
    }

    fn runtime(cache: &Path) -> WasmRuntime {
        WasmRuntime::new(WasmConfig { max_instances: 16, ..WasmConfig::new(cache.to_path_buf()) }).unwrap()
    }

    fn wasm(name: &str, args: &[&str]) -> Program {
        Program { artifact: artifact(name), args: args.iter().map(|s| s.to_string()).collect() }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wasm_runtime_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir.path().join("cache"));
        let programs = Programs {
            hello: wasm("hello", &["hello", "arg"]),
            exit42: wasm("exit", &["exit", "42"]),
            spin: wasm("spin", &["spin"]),
            hog: wasm("hog", &["hog"]),
            write: wasm("cat", &["cat", "--write", "/data/out", "from-writer"]),
        };
        suite(&rt, &programs, dir.path()).await;
        rt.create_container(config("x", &programs.spin, dir.path())).await.unwrap();
        assert!(matches!(rt.exec_sync("x", &["x".into()]).await, Err(Error::Unsupported { .. })));
        assert!(matches!(rt.exec("x", &["x".into()], true).await, Err(Error::Unsupported { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_starts_of_one_module_all_succeed() {
        let exit = artifact("exit");
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let rt = runtime(&dir.path().join("cache"));
            let creates = (0..8).map(|i| {
                let (rt, exit, dir) = (rt.clone(), exit.clone(), dir.path().to_path_buf());
                tokio::spawn(async move {
                    rt.create_container(config(
                        &format!("c{i}"),
                        &Program { artifact: exit, args: vec!["exit".into(), "3".into()] },
                        &dir,
                    ))
                    .await
                })
            });
            for c in creates.collect::<Vec<_>>() {
                c.await.unwrap().unwrap_or_else(|e| panic!("round {round}: a concurrent create failed: {e}"));
            }
            assert_eq!(
                std::fs::read_dir(dir.path().join("cache")).unwrap().count(),
                1,
                "compiled once, no temp files left"
            );
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_cached_start_never_compiles() {
        let dir = tempfile::tempdir().unwrap();
        let cache = dir.path().join("cache");
        let hello = artifact("hello");
        let hello = Program { artifact: hello, args: vec!["hello".into()] };
        runtime(&cache).create_container(config("a", &hello, dir.path())).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 1, "one compiled artifact: {files:?}");
        let before = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
        // a new engine (as after an agent restart) loads the cached code instead
        let started = Instant::now();
        runtime(&cache).create_container(config("b", &hello, dir.path())).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), before, "not recompiled");
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        eprintln!("engine + cached load: {elapsed:?}");
    }
}

#[cfg(test)]
mod linux_tests {
    use super::*;
    use crate::linux::{LinuxConfig, LinuxRuntime};

    /// A one-directory rootfs: static busybox and an `sh` link.
    fn busybox_rootfs(dir: &Path) -> PathBuf {
        let busybox = Path::new("/bin/busybox");
        assert!(busybox.is_file(), "/bin/busybox is missing: apt-get install busybox-static");
        let layer = dir.join("layer");
        std::fs::create_dir_all(layer.join("bin")).unwrap();
        for d in ["proc", "sys", "dev", "etc", "tmp", "data"] {
            std::fs::create_dir_all(layer.join(d)).unwrap();
        }
        std::fs::copy(busybox, layer.join("bin/busybox")).unwrap();
        std::os::unix::fs::symlink("busybox", layer.join("bin/sh")).unwrap();
        layer
    }

    fn sh(layer: &Path, script: &str) -> Program {
        Program {
            artifact: Artifact::Rootfs { layers: vec![layer.to_path_buf()] },
            args: vec!["/bin/sh".into(), "-c".into(), script.into(), "sh".into(), "arg".into()],
        }
    }

    pub fn linux_runtime(dir: &Path) -> LinuxRuntime {
        let mut config = LinuxConfig::new(dir, "10.89.0.0/16");
        // every test agent shares one bridge, subnet and address pool (host-local locks it)
        config.network.bridge = "wasmlet-test0".into();
        config.network.data_dir = PathBuf::from("/run/wasmlet-test-ipam");
        // Debian bookworm's runc 1.1.5 is what this machine has (see README)
        config.allow_vulnerable_runtime = true;
        LinuxRuntime::new(config).unwrap_or_else(|e| panic!("{e}; run scripts/setup.sh"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn linux_runtime_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let rt = linux_runtime(&dir.path().join("state"));
        let layer = busybox_rootfs(dir.path());
        let programs = Programs {
            hello: sh(&layer, "echo arg[1]=$1; echo env KEY=$KEY"),
            exit42: sh(&layer, "exit 42"),
            spin: sh(&layer, "trap 'exit 0' TERM; while :; do :; done"),
            hog: sh(&layer, "a=xxxxxxxxxxxxxxxx; while :; do a=$a$a; done"),
            write: sh(&layer, "echo from-$HOSTNAME-writer | sed s/^from-.*-writer/from-writer/ > /data/out"),
        };
        suite(&rt, &programs, dir.path()).await;

        // exec runs inside the container and returns the command's exit code
        rt.create_container(config("execd", &programs.spin, dir.path())).await.unwrap();
        rt.start_container("execd").await.unwrap();
        let command = ["/bin/sh".into(), "-c".into(), "test -f /bin/busybox && exit 7".into()];
        assert_eq!(rt.exec_sync("execd", &command).await.unwrap(), 7);
        // an exec session: its output on stdout, its input closed, its exit code at the end
        let echo = ["/bin/sh".into(), "-c".into(), "echo out; echo err >&2; exit 3".into()];
        let mut session = rt.exec("execd", &echo, false).await.unwrap();
        let (mut out, mut err) = (String::new(), String::new());
        use tokio::io::AsyncReadExt;
        session.stdout.take().unwrap().read_to_string(&mut out).await.unwrap();
        session.stderr.take().unwrap().read_to_string(&mut err).await.unwrap();
        assert_eq!((out.as_str(), err.as_str(), session.wait().await.unwrap()), ("out\n", "err\n", 3));
        rt.stop_container("execd", Duration::from_secs(5)).await.unwrap();
        rt.remove_container("execd").await.unwrap();
        let left: Vec<_> = std::fs::read_dir(dir.path().join("state/linux/containers")).unwrap().collect();
        assert!(left.is_empty(), "container directories left behind: {left:?}");
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        assert!(!mounts.contains(dir.path().to_str().unwrap()), "mounts left behind");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_refused_config_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let rt = linux_runtime(&dir.path().join("state"));
        let layer = busybox_rootfs(dir.path());
        let mut c = config("bad", &sh(&layer, "true"), dir.path());
        c.working_dir = Some("/proc/self/fd/7".into());
        let err = rt.create_container(c).await.unwrap_err().to_string();
        assert!(err.contains("must not be under /proc"), "{err}");
        let mut c = config("missing", &sh(&layer, "true"), dir.path());
        c.args = vec!["/no/such/program".into()];
        // runc refuses at create (exec of a missing file) or the start fails
        let created = rt.create_container(c).await;
        if created.is_ok() {
            let started = rt.start_container("missing").await;
            let end = rt.wait_container("missing").await.unwrap();
            assert!(started.is_err() || matches!(end, ContainerState::Exited { exit_code, .. } if exit_code != 0));
            rt.remove_container("missing").await.unwrap();
        }
        assert_eq!(std::fs::read_dir(dir.path().join("state/linux/containers")).unwrap().count(), 0);
    }
}

#[cfg(test)]
mod fake_tests {
    use super::*;
    use crate::fake::{Call, FakeRuntime, Step};

    fn program() -> Program {
        Program { artifact: Artifact::Wasm { path: "/fake".into(), digest: "sha256:fake".into() }, args: Vec::new() }
    }

    #[tokio::test]
    async fn fake_runtime_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::new();
        let ms = Duration::from_millis(20);
        rt.script(
            "life",
            vec![Step { stdout: vec!["arg[1]=arg".into(), "env KEY=value".into()], ..Step::exit(0, ms) }],
        );
        rt.script("code", vec![Step::exit(42, ms)]);
        rt.script("hog", vec![Step::oom(ms)]);
        rt.script(
            "writer",
            vec![Step { write: Some(("/data/out".into(), "from-writer".into())), ..Step::exit(0, ms) }],
        );
        let p = program();
        let programs = Programs { hello: p.clone(), exit42: p.clone(), spin: p.clone(), hog: p.clone(), write: p };
        suite(&rt, &programs, dir.path()).await;
        assert_eq!(rt.starts("life"), 1);
        assert!(rt.calls().contains(&Call::Start("spin".into())));
    }

    #[tokio::test]
    async fn fake_steps_follow_starts_and_stops_take_their_grace() {
        let dir = tempfile::tempdir().unwrap();
        let rt = FakeRuntime::new();
        rt.script("c", vec![Step::exit(1, Duration::ZERO), Step { ignore_stop: true, ..Step::run() }]);
        rt.create_container(config("c", &program(), dir.path())).await.unwrap();
        rt.start_container("c").await.unwrap();
        let end = rt.wait_container("c").await.unwrap();
        assert!(matches!(end, ContainerState::Exited { exit_code: 1, .. }), "{end:?}");
        rt.create_container(config("c", &program(), dir.path())).await.unwrap();
        rt.start_container("c").await.unwrap();
        let t = Instant::now();
        rt.stop_container("c", Duration::from_millis(200)).await.unwrap();
        assert!(t.elapsed() >= Duration::from_millis(200), "a stop-ignoring container takes its grace");
        assert!(matches!(rt.container_status("c").await.unwrap(), ContainerState::Exited { exit_code: 137, .. }));
    }
}
