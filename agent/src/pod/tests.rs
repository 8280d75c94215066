//! Component tests of the pod manager and its workers against the fake runtime: no
//! registry, no runc, no Wasm build. Images are recorded in the store as if pulled; the
//! fake plays a script per container and records every call.

use std::sync::Arc;
use std::time::{Duration, Instant};

use registry_client::{Descriptor, Digest, ImageKind, Reference, WasmForm};
use wasmlet_runtime::Runtimes;
use wasmlet_runtime::fake::{Call, FakeRuntime, Step};

use super::state::{Phase, State};
use super::{Manager, PodRecord};
use crate::image::{ImageRecord, ImageService};
use crate::store::Store;

const WASM: &str = "registry.test/apps/wasm:v1";
const LINUX: &str = "registry.test/apps/linux:v1";

struct Rig {
    _dir: tempfile::TempDir,
    mgr: Arc<Manager>,
    fake: FakeRuntime,
}

fn descriptor(media_type: &str, bytes: &[u8]) -> Descriptor {
    Descriptor {
        media_type: media_type.into(),
        digest: Digest::sha256_of(bytes),
        size: bytes.len() as u64,
        platform: None,
        urls: None,
        annotations: None,
        artifact_type: None,
    }
}

/// An image record as a pull would leave it: a Wasm artifact's blob, or one unpacked layer.
fn image(dir: &std::path::Path, reference: &str, linux: bool) -> ImageRecord {
    let r: Reference = reference.parse().unwrap();
    let config = descriptor("application/vnd.oci.image.config.v1+json", reference.as_bytes());
    let blob = dir.join(format!("blob-{}", linux));
    std::fs::write(&blob, b"\0asm\x01\0\0\0").unwrap();
    let layer = descriptor(
        if linux { "application/vnd.oci.image.layer.v1.tar" } else { "application/wasm" },
        reference.as_bytes(),
    );
    let unpacked = dir.join(format!("layer-{}", linux));
    std::fs::create_dir_all(&unpacked).unwrap();
    let layers = vec![registry_client::Layer {
        descriptor: layer.clone(),
        diff_id: linux.then(|| layer.digest.clone()),
        blob,
        unpacked: linux.then_some(unpacked),
    }];
    let kind = if linux { ImageKind::Linux } else { ImageKind::Wasm { form: WasmForm::Cncf, layer: layer.clone() } };
    let manifest = registry_client::Manifest {
        schema_version: 2,
        media_type: None,
        artifact_type: None,
        config,
        layers: vec![layer],
        annotations: None,
    };
    let cfg = registry_client::ImageConfig {
        config: Some(registry_client::manifest::ContainerConfig {
            cmd: Some(vec!["serve".into()]),
            ..Default::default()
        }),
        ..Default::default()
    };
    let digest = Digest::sha256_of(format!("manifest {reference}").as_bytes());
    ImageRecord {
        reference: r.to_string(),
        digest: digest.clone(),
        kind: kind.clone(),
        size: 8,
        pulled_at: 0,
        last_used: None,
        image: registry_client::Image {
            reference: r.clone(),
            source: r,
            digest,
            index_digest: None,
            platform: None,
            manifest,
            config: cfg,
            kind,
            layers,
        },
    }
}

/// A manager over a fresh state directory, both images recorded, and the fake runtime.
async fn rig() -> Rig {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let mgr = start(dir.path(), &fake, true).await;
    Rig { _dir: dir, mgr, fake }
}

async fn start(dir: &std::path::Path, fake: &FakeRuntime, record_images: bool) -> Arc<Manager> {
    let store = Store::open(dir).unwrap();
    let images = ImageService::open(dir, Default::default(), registry_client::Keychain::new(), store.clone()).unwrap();
    if record_images {
        images.insert(&image(dir, WASM, false)).unwrap();
        images.insert(&image(dir, LINUX, true)).unwrap();
    }
    Manager::start(store, Arc::new(images), Arc::new(Runtimes::fake(fake.clone())), dir, crate::node::Policy::new(dir))
        .await
        .unwrap()
}

impl Rig {
    async fn apply(&self, yaml: &str) {
        self.mgr.apply(crate::spec::parse(yaml).unwrap()).await.unwrap();
    }

    /// Waits (up to 10 s) until the pod's record satisfies `done`.
    async fn until(&self, key: &str, what: &str, done: impl Fn(&PodRecord) -> bool) -> PodRecord {
        until(&self.mgr, key, what, done).await
    }

    fn reasons(&self, rec: &PodRecord) -> Vec<String> {
        self.mgr.events(&rec.uid).unwrap().into_iter().map(|e| e.reason).collect()
    }
}

async fn until(mgr: &Manager, key: &str, what: &str, done: impl Fn(&PodRecord) -> bool) -> PodRecord {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rec = mgr.get(key).unwrap();
        if let Some(rec) = rec.as_ref().filter(|r| done(r)) {
            return rec.clone();
        }
        assert!(Instant::now() < deadline, "{key}: not {what} in 10 s: {rec:#?}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn pod(name: &str, restart: &str, containers: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\nspec:\n  restartPolicy: {restart}\n  terminationGracePeriodSeconds: 5\n  containers:\n{containers}"
    )
}

fn container(name: &str, image: &str) -> String {
    format!("  - name: {name}\n    image: {image}\n    imagePullPolicy: IfNotPresent\n")
}

fn running(r: &PodRecord) -> bool {
    r.status.phase == Phase::Running && r.status.containers.iter().all(|c| matches!(c.state, State::Running { .. }))
}

fn terminated(r: &PodRecord, i: usize) -> Option<&super::state::Terminated> {
    match &r.status.containers[i].state {
        State::Terminated(t) => Some(t),
        _ => None,
    }
}

#[tokio::test]
async fn a_pod_starts_with_its_argv_and_runs() {
    let rig = rig().await;
    let c = format!("{}    args: [\"--port\", \"8080\"]\n", container("app", WASM));
    rig.apply(&pod("web", "Always", &c)).await;
    let rec = rig.until("default/web", "running", running).await;
    let creates: Vec<_> = rig.fake.calls().into_iter().filter(|c| matches!(c, Call::Create { .. })).collect();
    assert_eq!(creates.len(), 1, "{creates:?}");
    let Call::Create { name, args, .. } = &creates[0] else { unreachable!() };
    // args replace the image's CMD; a Wasm guest without an entrypoint gets its name as argv[0]
    assert_eq!((name.as_str(), args.as_slice()), ("app", &["app".to_string(), "--port".into(), "8080".into()][..]));
    assert!(rec.status.containers[0].ready);
    let reasons = rig.reasons(&rec);
    assert!(reasons.contains(&"Created".into()) && reasons.contains(&"Started".into()), "{reasons:?}");
}

#[tokio::test]
async fn a_crash_is_restarted_after_a_back_off_and_a_clean_exit_succeeds() {
    let rig = rig().await;
    rig.fake.script("crash", vec![Step::exit(3, Duration::from_millis(20))]);
    rig.apply(&pod("crashy", "Always", &container("crash", WASM))).await;
    let rec = rig
        .until(
            "default/crashy",
            "in back-off",
            |r| matches!(&r.status.containers[0].state, State::Waiting { reason, .. } if reason == "CrashLoopBackOff"),
        )
        .await;
    let last = rec.status.containers[0].last_state.as_ref().expect("the crash is the last state");
    assert_eq!((last.exit_code, last.reason.as_str()), (3, "Error"));
    // as the kubelet: the first restart is at once, the next after 10 s
    assert_eq!(rig.fake.starts("crash"), 2, "one immediate restart, then the 10 s back-off");
    assert_eq!(rec.status.containers[0].restart_count, 1);
    assert!(rig.reasons(&rec).contains(&"BackOff".into()));

    rig.fake.script("done", vec![Step::exit(0, Duration::from_millis(20))]);
    rig.apply(&pod("once", "OnFailure", &container("done", WASM))).await;
    let rec = rig.until("default/once", "succeeded", |r| r.status.phase == Phase::Succeeded).await;
    assert_eq!(terminated(&rec, 0).map(|t| t.reason.as_str()), Some("Completed"));
}

#[tokio::test]
async fn an_oom_kill_fails_a_never_restarted_pod() {
    let rig = rig().await;
    rig.fake.script("hog", vec![Step::oom(Duration::from_millis(20))]);
    rig.apply(&pod("hog", "Never", &container("hog", WASM))).await;
    let rec = rig.until("default/hog", "failed", |r| r.status.phase == Phase::Failed).await;
    let t = terminated(&rec, 0).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (137, "OOMKilled"));
    assert_eq!(rig.fake.starts("hog"), 1);
}

#[tokio::test]
async fn create_and_start_failures_are_start_errors_with_events() {
    let rig = rig().await;
    rig.fake.script("bad", vec![Step { fail_start: Some("no such binary".into()), ..Step::run() }]);
    rig.apply(&pod("bad", "Never", &container("bad", WASM))).await;
    let rec = rig.until("default/bad", "failed", |r| r.status.phase == Phase::Failed).await;
    let t = terminated(&rec, 0).expect("terminated");
    assert_eq!((t.exit_code, t.reason.as_str()), (128, "StartError"));
    assert!(t.message.contains("RunContainerError") && t.message.contains("no such binary"), "{t:?}");
    assert!(rig.fake.calls().contains(&Call::Remove(super::worker::container_id(&rec.uid, "bad", 1))));
    assert!(rig.reasons(&rec).contains(&"Failed".into()));
}

#[tokio::test]
async fn a_failing_liveness_probe_restarts_and_a_failing_readiness_probe_unreadies() {
    let rig = rig().await;
    rig.fake.exec_exit("dead", 1);
    rig.fake.exec_exit("unready", 1);
    let probe = |kind: &str, cmd: &str| {
        format!(
            "    {kind}:\n      exec:\n        command: [\"{cmd}\"]\n      periodSeconds: 1\n      failureThreshold: 1\n"
        )
    };
    let c = format!("{}{}", container("live", LINUX), probe("livenessProbe", "dead"))
        + &format!("{}{}", container("ready", LINUX), probe("readinessProbe", "unready"));
    rig.apply(&pod("probed", "Always", &c)).await;
    let rec = rig
        .until("default/probed", "restarted by its liveness probe", |r| r.status.containers[0].restart_count >= 1)
        .await;
    assert!(!rec.status.containers[1].ready, "a failing readiness probe leaves the container unready");
    assert!(matches!(rec.status.containers[1].state, State::Running { .. }), "readiness never restarts");
    let reasons = rig.reasons(&rec);
    assert!(reasons.contains(&"Unhealthy".into()) && reasons.contains(&"Killing".into()), "{reasons:?}");
    let calls = rig.fake.calls();
    assert!(calls.iter().any(|c| matches!(c, Call::Exec { command, .. } if command == &["dead".to_string()])));
}

#[tokio::test]
async fn deletion_gives_a_stubborn_container_its_grace_then_forgets_the_pod() {
    let rig = rig().await;
    rig.fake.script("stubborn", vec![Step { ignore_stop: true, ..Step::run() }]);
    rig.apply(&pod("slow", "Always", &container("stubborn", WASM))).await;
    let rec = rig.until("default/slow", "running", running).await;
    let t = Instant::now();
    rig.mgr.delete_with_grace("default/slow", Some(1)).await.unwrap();
    assert!(t.elapsed() >= Duration::from_secs(1), "the stop waited out the grace: {:?}", t.elapsed());
    assert!(t.elapsed() < Duration::from_secs(4), "and no longer: {:?}", t.elapsed());
    let id = super::worker::container_id(&rec.uid, "stubborn", 1);
    assert!(rig.fake.calls().contains(&Call::Stop { id: id.clone(), grace: Duration::from_secs(1) }));
    assert!(rig.fake.calls().contains(&Call::Remove(id)));
    assert!(rig.mgr.get("default/slow").unwrap().is_none());
    assert!(rig.fake.running().is_empty());
}

#[tokio::test]
async fn init_containers_run_first_and_sidecars_stop_when_the_app_is_done() {
    let rig = rig().await;
    let ms = Duration::from_millis(30);
    rig.fake.script("init", vec![Step::exit(0, ms)]);
    rig.fake.script("app", vec![Step::exit(0, Duration::from_millis(200))]);
    let yaml = pod("staged", "Never", &container("app", WASM)).replace(
        "  containers:\n",
        &format!(
            "  initContainers:\n{}{}    restartPolicy: Always\n  containers:\n",
            container("init", WASM),
            container("sidecar", WASM)
        ),
    );
    rig.apply(&yaml).await;
    let rec = rig.until("default/staged", "succeeded", |r| r.status.phase == Phase::Succeeded).await;
    let starts: Vec<String> = rig
        .fake
        .calls()
        .into_iter()
        .filter_map(|c| match c {
            Call::Start(id) => Some(id),
            _ => None,
        })
        .collect();
    let order: Vec<&str> = ["init", "sidecar", "app"]
        .iter()
        .map(|n| {
            let id = super::worker::container_id(&rec.uid, n, 1);
            assert!(starts.contains(&id), "{n} never started: {starts:?}");
            *n
        })
        .collect();
    let at = |n: &str| starts.iter().position(|s| s == &super::worker::container_id(&rec.uid, n, 1)).unwrap();
    assert!(at(order[0]) < at(order[1]) && at(order[1]) < at(order[2]), "{starts:?}");
    let sidecar = super::worker::container_id(&rec.uid, "sidecar", 1);
    assert!(rig.fake.calls().iter().any(|c| matches!(c, Call::Stop { id, .. } if id == &sidecar)), "sidecar stopped");
}

#[test]
fn after_a_crash_running_linux_containers_are_adopted_and_wasm_ones_restart() {
    let dir = tempfile::tempdir().unwrap();
    let fake = FakeRuntime::new();
    let containers = container("native", LINUX) + &container("guest", WASM);
    let first = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let uid = first.block_on(async {
        let mgr = start(dir.path(), &fake, true).await;
        mgr.apply(crate::spec::parse(&pod("mixed", "Always", &containers)).unwrap()).await.unwrap();
        until(&mgr, "default/mixed", "running", running).await.uid
    });
    // the agent dies: its tasks go with its runtime, the fake's containers stay (as
    // conmon keeps runc's); the guest is gone with the agent
    first.shutdown_timeout(Duration::from_secs(5));
    let guest = super::worker::container_id(&uid, "guest", 1);
    let native = super::worker::container_id(&uid, "native", 1);
    let second = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    second.block_on(async {
        let mgr = start(dir.path(), &fake, false).await;
        let rec =
            until(&mgr, "default/mixed", "running again", |r| running(r) && r.status.containers[1].restart_count == 1)
                .await;
        assert_eq!(rec.status.containers[0].restart_count, 0, "the Linux container was adopted, not restarted");
        assert_eq!(fake.starts("native"), 1);
        assert_eq!(fake.starts("guest"), 2);
        assert!(rec.status.containers[1].last_state.as_ref().is_some_and(|t| t.reason == super::state::LOST));
        let reasons: Vec<_> = mgr.events(&rec.uid).unwrap().into_iter().map(|e| e.reason).collect();
        assert!(reasons.contains(&"Lost".into()), "{reasons:?}");
        assert!(fake.running().contains(&native));
        let _ = guest;
    });
}

/// The agent dies after runc started a container and before the record said it runs
/// (it says the instance is starting, or, unflushed, nothing at all): the restarted agent
/// adopts the running container rather than killing it as an orphan and starting another.
#[test]
fn a_linux_container_started_just_before_a_crash_is_adopted() {
    for recorded_instances in [1, 0] {
        let dir = tempfile::tempdir().unwrap();
        let fake = FakeRuntime::new();
        let first = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        let uid = first.block_on(async {
            let mgr = start(dir.path(), &fake, true).await;
            mgr.apply(crate::spec::parse(&pod("late", "Always", &container("native", LINUX))).unwrap()).await.unwrap();
            until(&mgr, "default/late", "running", running).await.uid
        });
        first.shutdown_timeout(Duration::from_secs(5));
        // the record as the crash left it
        {
            let store = Store::open(dir.path()).unwrap();
            let mut rec: PodRecord = store.get(crate::store::Table::Pods, "default/late").unwrap().unwrap();
            let c = &mut rec.status.containers[0];
            c.state = State::Waiting { reason: "ContainerCreating".into(), message: String::new() };
            c.instances = recorded_instances;
            if recorded_instances == 0 {
                rec.runtimes.clear();
            }
            store.put(crate::store::Table::Pods, "default/late", &rec).unwrap();
            tokio::runtime::Runtime::new().unwrap().block_on(store.flush()).unwrap();
        }
        let native = super::worker::container_id(&uid, "native", 1);
        let second = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        second.block_on(async {
            let mgr = start(dir.path(), &fake, false).await;
            let rec = until(&mgr, "default/late", "running again", running).await;
            let c = &rec.status.containers[0];
            assert_eq!((c.restart_count, c.instances), (0, 1), "recorded {recorded_instances}: adopted, not restarted");
            assert_eq!(fake.starts("native"), 1, "recorded {recorded_instances}: started once");
            assert!(fake.running().contains(&native));
        });
    }
}

/// A pod's worker task lives as long as the pod: its future's size is memory every idle pod
/// holds, so the rarely taken paths (pull, start, stop) are boxed, not inlined into it.
#[tokio::test]
async fn an_idle_pod_worker_is_small() {
    let rig = rig().await;
    let pods = crate::spec::parse(&pod("small", "Always", &container("app", WASM))).unwrap();
    let Some(crate::spec::Object::Pod(p)) = pods.into_iter().next() else { panic!("not a pod") };
    let rec = super::apply::new_record(*p);
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let worker = super::worker::run(rig.mgr.core.clone(), Box::new(rec), tx, rx);
    let size = std::mem::size_of_val(&worker);
    eprintln!(
        "pod worker future: {size} bytes; record {}; pod {}; plan {}; status {}",
        std::mem::size_of::<PodRecord>(),
        std::mem::size_of::<k8s_openapi::api::core::v1::Pod>(),
        std::mem::size_of::<super::state::Plan>(),
        std::mem::size_of::<super::state::PodStatus>()
    );
    assert!(size <= 1024, "the pod worker's future is {size} bytes");
    // its channel allocates messages 32 at a time
    assert!(std::mem::size_of::<super::Msg>() <= 32, "a worker message is {} bytes", std::mem::size_of::<super::Msg>());
}

#[tokio::test]
async fn events_count_up_are_read_at_once_and_go_with_their_pod() {
    let rig = rig().await;
    let mgr = &rig.mgr;
    mgr.apply(crate::spec::parse(&pod("noisy", "Always", &container("app", WASM))).unwrap()).await.unwrap();
    let rec = until(mgr, "default/noisy", "running", running).await;
    for _ in 0..3 {
        mgr.event(&rec, "Warning", "Unhealthy", "Readiness probe failed");
    }
    // read straight after recording: what the background writer has not written yet
    // is written by the read
    let unhealthy = |mgr: &Manager| {
        let found: Vec<_> = mgr.events(&rec.uid).unwrap().into_iter().filter(|e| e.reason == "Unhealthy").collect();
        assert_eq!(found.len(), 1, "one event, counted up: {found:?}");
        found[0].clone()
    };
    let e = unhealthy(mgr);
    assert_eq!(e.count, 3);
    assert!(e.first_seen <= e.last_seen);
    let first_seen = e.first_seen;
    // the background writer writes them too, unasked
    mgr.event(&rec, "Warning", "Unhealthy", "Readiness probe failed");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !mgr.event_log_is_empty() {
        assert!(Instant::now() < deadline, "the queued event was never written");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(unhealthy(mgr).count, 4);
    // one no longer remembered (forgotten, or from before a restart) counts up the
    // stored one, so that counts go on across restarts
    mgr.forget_recent_events();
    mgr.event(&rec, "Warning", "Unhealthy", "Readiness probe failed");
    let e = unhealthy(mgr);
    assert_eq!((e.count, e.first_seen), (5, first_seen));
    mgr.delete("default/noisy").await.unwrap();
    assert!(mgr.events(&rec.uid).unwrap().is_empty(), "the pod's events go with it");
    assert!(mgr.events("").unwrap().iter().all(|e| e.pod != "default/noisy"));
}
