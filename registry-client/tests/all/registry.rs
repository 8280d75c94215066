//! Against a real `docker-registry`: push and pull of Wasm artifacts and Linux images,
//! platform selection, auth, mirrors, and cross-checks with skopeo and umoci.

use std::process::Command;
use std::sync::{Arc, Mutex};

use registry_client::{
    Config, Credential, Error, ImageKind, Keychain, Platform, Progress, PullOptions, Reference, UnpackOptions, WasmForm,
};
use serde_json::json;

use crate::common::{PASSWORD, Registry, TestClient, USER, require, rt, run, wasm_app};
use crate::layout::{Entry, Layout, busybox_layout, tar, tree, umoci_unpack};

#[test]
fn wasm_module_and_component_round_trip_in_cncf_form() {
    let reg = Registry::start();
    let t = TestClient::new();
    rt().block_on(async {
        for (target, os) in [("wasm32-wasip1", "wasip1"), ("wasm32-wasip2", "wasip2")] {
            let wasm = wasm_app("hello", target);
            let r = reg.reference(&format!("apps/hello:{os}"));
            let pushed = t.client.push_wasm(&wasm, &r, None).await.unwrap();
            assert!(pushed.uploaded > 0);
            let image = t.client.pull(&r, &PullOptions::default()).await.unwrap();
            assert_eq!(image.digest, pushed.digest, "pulled digest equals pushed digest");
            let ImageKind::Wasm { form, layer } = &image.kind else { panic!("not wasm: {:?}", image.kind) };
            assert_eq!(*form, WasmForm::Cncf);
            assert_eq!(image.config.os, os);
            assert_eq!(image.config.architecture, "wasm");
            assert_eq!(std::fs::read(&image.layers[0].blob).unwrap(), std::fs::read(&wasm).unwrap());
            assert_eq!(layer.media_type, "application/wasm");
            // pushing again is reproducible and uploads nothing: the registry has every blob
            let again = t.client.push_wasm(&wasm, &r, None).await.unwrap();
            assert_eq!((again.digest, again.uploaded), (pushed.digest.clone(), 0));
        }
    });
}

#[test]
fn skopeo_reads_back_what_we_push() {
    let skopeo = require("skopeo", "skopeo");
    let reg = Registry::start();
    let t = TestClient::new();
    let wasm = wasm_app("hello", "wasm32-wasip1");
    let r = reg.reference("apps/hello:v1");
    let pushed = rt().block_on(t.client.push_wasm(&wasm, &r, None)).unwrap();
    let raw = run(Command::new(&skopeo).args(["inspect", "--tls-verify=false", "--raw", &format!("docker://{r}")]));
    assert_eq!(registry_client::Digest::sha256_of(raw.as_bytes()), pushed.digest, "skopeo sees our exact manifest");
    let m: serde_json::Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(m["mediaType"], "application/vnd.oci.image.manifest.v1+json");
    assert_eq!(m["config"]["mediaType"], "application/vnd.wasm.config.v0+json");
    assert_eq!(m["layers"][0]["mediaType"], "application/wasm");
    assert_eq!(m["layers"][0]["annotations"]["org.opencontainers.image.title"], "hello.wasm");
    let cfg = run(Command::new(&skopeo).args([
        "inspect",
        "--tls-verify=false",
        "--raw",
        "--config",
        &format!("docker://{r}"),
    ]));
    let cfg: serde_json::Value = serde_json::from_str(&cfg).unwrap();
    assert_eq!(cfg["os"], "wasip1");
    assert_eq!(cfg["layerDigests"][0], m["layers"][0]["digest"]);
}

#[test]
fn busybox_pushed_by_skopeo_unpacks_to_the_same_tree_as_umoci() {
    let skopeo = require("skopeo", "skopeo");
    let reg = Registry::start();
    let t = TestClient::new();
    let layout = busybox_layout(t.dir.path());
    let image = format!("{}:latest", layout.display());
    let r = reg.reference("regtest/busybox:latest");
    run(Command::new(&skopeo).args([
        "copy",
        "-q",
        "--dest-tls-verify=false",
        &format!("oci:{image}"),
        &format!("docker://{r}"),
    ]));

    let pulled = rt().block_on(t.client.pull(&r, &PullOptions::default())).unwrap();
    assert_eq!(pulled.kind, ImageKind::Linux);
    assert_eq!(pulled.config.config.as_ref().unwrap().entrypoint.as_deref(), Some(&["/bin/sh".to_string()][..]));
    let ours = t.path("ours");
    std::fs::create_dir(&ours).unwrap();
    pulled.flatten(&ours, &UnpackOptions::default()).unwrap();
    let theirs = umoci_unpack(&image, &t.path("bundle-umoci"));
    let (a, b) = (tree(&ours), tree(&theirs));
    assert!(a.len() > 30, "busybox tree looks empty: {a:?}");
    assert_eq!(a, b, "our unpack differs from umoci's");
}

#[test]
fn layout_push_preserves_digests_and_whiteouts_apply() {
    let reg = Registry::start();
    let t = TestClient::new();
    let layout = Layout::new(&t.path("layout"));
    let lower = tar(&[
        Entry::Dir("a", 0o755),
        Entry::File("a/keep", b"keep", 0o644),
        Entry::File("a/gone", b"gone", 0o644),
        Entry::Dir("d", 0o755),
        Entry::File("d/old1", b"1", 0o644),
        Entry::File("d/old2", b"2", 0o600),
        Entry::File("setuid", b"#!", 0o4755),
    ]);
    let upper = tar(&[
        Entry::File("a/.wh.gone", b"", 0o644),
        Entry::File("d/new", b"new", 0o644),
        Entry::File("d/.wh..wh..opq", b"", 0o644),
        Entry::File("d/.wh..wh..opq", b"", 0o644),
        Entry::File("d/newer", b"newer", 0o644),
    ]);
    let manifest = layout.image(&[lower, upper], "linux", "amd64");
    let digest = manifest["digest"].as_str().unwrap().to_string();
    layout.tag(manifest, "v1");
    let r = reg.reference("layered/app:v1");
    rt().block_on(async {
        let pushed = t.client.push_layout(&layout.dir, Some("v1"), &r, None).await.unwrap();
        assert_eq!(pushed.digest.to_string(), digest, "manifest bytes pushed verbatim");
        let unpack_to = t.path("layers");
        let opts = PullOptions { unpack_to: Some(unpack_to.clone()), ..Default::default() };
        let image = t.client.pull(&r, &opts).await.unwrap();

        // flattened: whiteouts delete, opaque hides only the lower layer's entries
        let flat = t.path("flat");
        std::fs::create_dir(&flat).unwrap();
        image.flatten(&flat, &UnpackOptions::default()).unwrap();
        let names = |p: &str| {
            let mut v: Vec<String> = std::fs::read_dir(flat.join(p))
                .unwrap()
                .map(|e| e.unwrap().file_name().into_string().unwrap())
                .collect();
            v.sort();
            v
        };
        assert_eq!(names("a"), ["keep"]);
        assert_eq!(names("d"), ["new", "newer"]);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(flat.join("setuid")).unwrap().permissions().mode() & 0o7777, 0o4755);

        // overlay form: a 0/0 char device and the opaque xattr, one dir per diff id
        let upper_dir = image.layers[1].unpacked.clone().unwrap();
        assert!(upper_dir.starts_with(&unpack_to));
        use std::os::unix::fs::FileTypeExt;
        let wh = std::fs::symlink_metadata(upper_dir.join("a/gone")).unwrap();
        assert!(wh.file_type().is_char_device(), "whiteout is a char device");
        let opaque = rustix::fs::getxattr(upper_dir.join("d"), "trusted.overlay.opaque", &mut [0u8; 4]).unwrap();
        assert_eq!(opaque, 1);
        assert!(!upper_dir.join("d/.wh..wh..opq").exists());
    });
}

#[test]
fn index_platform_selection_prefers_host_then_wasm() {
    let reg = Registry::start();
    let t = TestClient::new();
    let layout = Layout::new(&t.path("layout"));
    let host = Platform::host();
    let linux = layout.image(&[tar(&[Entry::File("linux", b"l", 0o644)])], &host.os, &host.architecture);
    let wasm = layout.image(&[tar(&[Entry::File("app.wasm", b"\0asm\x01\0\0\0", 0o644)])], "wasip1", "wasm");
    let foreign = layout.image(&[tar(&[Entry::File("s390x", b"s", 0o644)])], "linux", "s390x");
    let (linux_digest, wasm_digest) = (linux["digest"].clone(), wasm["digest"].clone());
    let index = layout.index(vec![foreign.clone(), wasm, linux]);
    layout.tag(index, "multi");
    let only_foreign = layout.index(vec![foreign]);
    let r = reg.reference("multi/app:v1");
    let r2 = reg.reference("multi/foreign:v1");
    rt().block_on(async {
        t.client.push_layout(&layout.dir, Some("multi"), &r, None).await.unwrap();
        let image = t.client.pull(&r, &PullOptions::default()).await.unwrap();
        assert_eq!(json!(image.digest.to_string()), linux_digest);
        assert!(image.index_digest.is_some());
        let wasm_opts = PullOptions { platforms: vec![Platform::new("wasip1", "wasm", None)], ..Default::default() };
        let image = t.client.pull(&r, &wasm_opts).await.unwrap();
        assert_eq!(json!(image.digest.to_string()), wasm_digest);

        layout.tag(only_foreign, "foreign");
        t.client.push_layout(&layout.dir, Some("foreign"), &r2, None).await.unwrap();
        let err = t.client.pull(&r2, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("linux/s390x") && msg.contains(&r2.to_string()), "{msg}");
    });
}

#[test]
fn pull_by_digest_is_checked_and_unknown_digest_is_not_found() {
    let reg = Registry::start();
    let t = TestClient::new();
    let wasm = wasm_app("hello", "wasm32-wasip1");
    rt().block_on(async {
        let pushed = t.client.push_wasm(&wasm, &reg.reference("apps/pinned:v1"), None).await.unwrap();
        let by_digest: Reference = format!("{}/apps/pinned@{}", reg.host, pushed.digest).parse().unwrap();
        let image = t.client.pull(&by_digest, &PullOptions::default()).await.unwrap();
        assert_eq!(image.digest, pushed.digest);
        let missing: Reference = format!("{}/apps/pinned@sha256:{}", reg.host, "0".repeat(64)).parse().unwrap();
        let err = t.client.pull(&missing, &PullOptions::default()).await.unwrap_err();
        assert!(matches!(err, Error::NotFound { .. }), "{err}");
        assert!(!err.is_retryable());
        assert!(err.to_string().contains(&reg.host), "{err}");
    });
}

#[test]
fn basic_auth_from_docker_config_and_explicit_credentials() {
    let reg = Registry::start_with_auth();
    let wasm = wasm_app("hello", "wasm32-wasip1");
    let r = reg.reference("private/hello:v1");
    rt().block_on(async {
        // anonymous: refused, and the error names the registry
        let anon = TestClient::new();
        let err = anon.client.push_wasm(&wasm, &r, None).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

        // explicit credentials (what imagePullSecrets feed in)
        let cred = Credential::new(USER, PASSWORD);
        anon.client.push_wasm(&wasm, &r, Some(&cred)).await.unwrap();
        let wrong = Credential::new(USER, "wrong");
        let err =
            anon.client.pull(&r, &PullOptions { credential: Some(wrong), ..Default::default() }).await.unwrap_err();
        assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

        // docker config.json, keyed by host:port
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("config.json");
        use base64::Engine;
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASSWORD}"));
        std::fs::write(&config, json!({"auths": {reg.host.clone(): {"auth": auth}}}).to_string()).unwrap();
        let with_file = TestClient::with(Config::default(), Keychain::from_file(&config).unwrap());
        let image = with_file.client.pull(&r, &PullOptions::default()).await.unwrap();
        assert!(image.kind.is_wasm());

        // credentials for another host are not used here
        std::fs::write(&config, json!({"auths": {"127.0.0.1:1": {"auth": auth}}}).to_string()).unwrap();
        let other = TestClient::with(Config::default(), Keychain::from_file(&config).unwrap());
        assert!(other.client.pull(&r, &PullOptions::default()).await.is_err());
    });
}

#[test]
fn docker_hub_names_resolve_through_a_mirror() {
    let reg = Registry::start();
    let wasm = wasm_app("hello", "wasm32-wasip1");
    let mut config = Config::default();
    config.mirrors.insert("docker.io".into(), vec![reg.host.clone()]);
    let t = TestClient::with(config, Keychain::new());
    rt().block_on(async {
        t.client.push_wasm(&wasm, &reg.reference("library/hello:v1"), None).await.unwrap();
        let image = t.client.pull(&"hello:v1".parse().unwrap(), &PullOptions::default()).await.unwrap();
        assert_eq!(image.reference.to_string(), "docker.io/library/hello:v1");
        assert_eq!(image.source.registry(), reg.host);
    });
}

#[test]
fn concurrent_pulls_share_blobs_and_report_progress() {
    let reg = Registry::start();
    let t = TestClient::new();
    let layout = Layout::new(&t.path("layout"));
    let noise: Vec<u8> = (0..600_000).map(|_| fastrand::u8(..)).collect();
    let shared = tar(&[Entry::File("shared", &noise, 0o644)]);
    let a = layout.image(&[shared.clone(), tar(&[Entry::File("a", b"a", 0o644)])], "linux", "amd64");
    let b = layout.image(&[shared, tar(&[Entry::File("b", b"b", 0o644)])], "linux", "amd64");
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let progress: registry_client::ProgressFn = Arc::new(move |p| sink.lock().unwrap().push(p));
    let opts = PullOptions {
        progress: Some(progress),
        platforms: vec![Platform::new("linux", "amd64", None)],
        ..Default::default()
    };
    rt().block_on(async {
        layout.tag(a, "a");
        t.client.push_layout(&layout.dir, Some("a"), &reg.reference("share/a:v1"), None).await.unwrap();
        layout.tag(b, "b");
        t.client.push_layout(&layout.dir, Some("b"), &reg.reference("share/b:v1"), None).await.unwrap();
        let (ra, rb) = (reg.reference("share/a:v1"), reg.reference("share/b:v1"));
        let (ia, ib) = tokio::join!(t.client.pull(&ra, &opts), t.client.pull(&rb, &opts));
        let (ia, ib) = (ia.unwrap(), ib.unwrap());
        assert_eq!(ia.layers[0].blob, ib.layers[0].blob, "the shared layer is stored once");
    });
    let events = events.lock().unwrap();
    let resolved = events.iter().filter(|e| matches!(e, Progress::Resolved { .. })).count();
    let done: Vec<_> = events
        .iter()
        .filter_map(|e| match e {
            Progress::BlobDone { digest, cached, .. } => Some((digest.clone(), *cached)),
            _ => None,
        })
        .collect();
    assert_eq!(resolved, 2);
    assert_eq!(done.len(), 6, "config + 2 layers for each image: {done:?}");
    let shared_downloads = done.iter().filter(|(_, cached)| !cached).count();
    assert_eq!(shared_downloads, 5, "the shared layer was downloaded once, found cached once");
    assert!(events.iter().any(|e| matches!(e, Progress::Blob { .. })), "byte progress was reported");
}
