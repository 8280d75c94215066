//! A conformance suite generic over [`Runtime`]: every implementation must pass it
//! (runwasi's `testing.rs` is the model). The Wasm runtime runs it below; the Linux
//! runtime will run the same functions.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::{Artifact, ContainerConfig, ContainerState, Error, ExitReason, Mount, Runtime, SandboxConfig};

fn config(id: &str, artifact: &Artifact, args: &[&str], dir: &Path) -> ContainerConfig {
    ContainerConfig {
        id: id.into(),
        sandbox_id: "sandbox".into(),
        name: id.into(),
        artifact: artifact.clone(),
        args: args.iter().map(|s| s.to_string()).collect(),
        env: vec![("KEY".into(), "value".into())],
        mounts: Vec::<Mount>::new(),
        memory_limit: None,
        log_path: dir.join(format!("{id}.log")),
    }
}

/// create → Created, start → Running, wait → Exited(0, Completed), remove → gone.
pub async fn lifecycle<R: Runtime>(rt: &R, hello: &Artifact, dir: &Path) {
    rt.create_sandbox(&SandboxConfig {
        id: "sandbox".into(),
        namespace: "ns".into(),
        name: "p".into(),
        hostname: "p".into(),
    })
    .await
    .unwrap();
    rt.create_container(config("life", hello, &["hello", "arg"], dir)).await.unwrap();
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
    rt.remove_sandbox("sandbox").await.unwrap();
}

/// A non-zero exit is `Error` with its code.
pub async fn exit_code<R: Runtime>(rt: &R, exit: &Artifact, dir: &Path) {
    rt.create_container(config("code", exit, &["exit", "42"], dir)).await.unwrap();
    rt.start_container("code").await.unwrap();
    let end = rt.wait_container("code").await.unwrap();
    assert!(matches!(end, ContainerState::Exited { exit_code: 42, reason: ExitReason::Error, .. }), "{end:?}");
}

/// A busy guest stops well within its grace period.
pub async fn stop_within_grace<R: Runtime>(rt: &R, spin: &Artifact, dir: &Path) {
    rt.create_container(config("spin", spin, &["spin"], dir)).await.unwrap();
    rt.start_container("spin").await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(matches!(rt.container_status("spin").await.unwrap(), ContainerState::Running { .. }));
    let t = Instant::now();
    rt.stop_container("spin", Duration::from_secs(2)).await.unwrap();
    assert!(t.elapsed() < Duration::from_secs(2), "stop took {:?}", t.elapsed());
    assert!(matches!(rt.container_status("spin").await.unwrap(), ContainerState::Exited { .. }));
}

/// Unknown ids are NotFound, not panics.
pub async fn unknown<R: Runtime>(rt: &R) {
    assert!(matches!(rt.container_status("nope").await, Err(Error::NotFound(_))));
    assert!(matches!(rt.start_container("nope").await, Err(Error::NotFound(_))));
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
    use crate::runtime::wasm::{WasmConfig, WasmRuntime};

    fn artifact(name: &str) -> Artifact {
        let path = app(name);
        let digest = registry_client::Digest::sha256_of(&std::fs::read(&path).unwrap()).to_string();
        Artifact::Wasm { path, digest }
    }

    fn runtime(cache: &Path) -> WasmRuntime {
        WasmRuntime::new(WasmConfig { max_instances: 16, ..WasmConfig::new(cache.to_path_buf()) }).unwrap()
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn wasm_runtime_conforms() {
        let dir = tempfile::tempdir().unwrap();
        let rt = runtime(&dir.path().join("cache"));
        lifecycle(&rt, &artifact("hello"), dir.path()).await;
        exit_code(&rt, &artifact("exit"), dir.path()).await;
        stop_within_grace(&rt, &artifact("spin"), dir.path()).await;
        unknown(&rt).await;
        assert!(matches!(rt.exec("code", &["x".into()]).await, Err(Error::Unsupported { .. })));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_first_starts_of_one_module_all_succeed() {
        let exit = artifact("exit");
        for round in 0..10 {
            let dir = tempfile::tempdir().unwrap();
            let rt = runtime(&dir.path().join("cache"));
            let creates = (0..8).map(|i| {
                let (rt, exit, dir) = (rt.clone(), exit.clone(), dir.path().to_path_buf());
                tokio::spawn(
                    async move { rt.create_container(config(&format!("c{i}"), &exit, &["exit", "3"], &dir)).await },
                )
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
        runtime(&cache).create_container(config("a", &hello, &["hello"], dir.path())).await.unwrap();
        let files: Vec<_> = std::fs::read_dir(&cache).unwrap().flatten().map(|e| e.path()).collect();
        assert_eq!(files.len(), 1, "one compiled artifact: {files:?}");
        let before = std::fs::metadata(&files[0]).unwrap().modified().unwrap();
        // a new engine (as after an agent restart) loads the cached code instead
        let started = Instant::now();
        runtime(&cache).create_container(config("b", &hello, &["hello"], dir.path())).await.unwrap();
        let elapsed = started.elapsed();
        assert_eq!(std::fs::metadata(&files[0]).unwrap().modified().unwrap(), before, "not recompiled");
        assert_eq!(std::fs::read_dir(&cache).unwrap().count(), 1);
        eprintln!("engine + cached load: {elapsed:?}");
    }
}
