//! Cluster mode: the real `wasmlet serve --kubeconfig` joined to a real control plane
//! (kube-apiserver, controller-manager and scheduler v1.20 with etcd, see
//! `control_plane.rs`): registration, the Lease, pods bound by `nodeName` and placed by
//! the real scheduler, the real ReplicaSet and Job controllers, ConfigMaps, Secrets and
//! service-account tokens, deletion, the kubelet API reached over TLS with curl, a SPDY
//! client and kubectl through the API server, and the control plane's loss.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube_standin::User;
use serde_json::{Value, json};

use crate::common::free_port;
use crate::control_plane::{BOOTSTRAP_TOKEN, ControlPlane, Partition};
use crate::harness::{Agent, Apps, Tmpfs, fill, push_busybox};

const NODE: &str = "edge-1";

struct Cluster {
    api: ControlPlane,
    /// The node's only road to the API server, to cut as a partition.
    net: Partition,
    admin: kube::Client,
    agent: Option<Agent>,
    port: u16,
    dir: tempfile::TempDir,
}

/// The hard eviction thresholds the tests' nodes run with, unless a test gives its own.
/// With the kubelet's defaults a node on one disk is in DiskPressure below 15 % free
/// (`imagefs.available`), and the disks of the shared machines the tests run on are
/// often fuller than that: the control plane would taint the node and the scheduler keep
/// every pod away, as it did in one CI run. Pressure itself is tested on a tmpfs.
const TEST_EVICTION: &str = "memory.available<100Mi,nodefs.available<256Mi,imagefs.available<256Mi";

/// `serve` flags for a node named `edge-1` on loopback, its kubelet API on `port`.
fn node_flags(kubeconfig: &std::path::Path, port: u16, extra: &[&str]) -> Vec<String> {
    let mut flags: Vec<String> = ["--kubeconfig", kubeconfig.to_str().unwrap(), "--node-name", NODE]
        .into_iter()
        .chain(["--node-ip", "127.0.0.1", "--address", "127.0.0.1", "--port"])
        .map(String::from)
        .collect();
    flags.push(port.to_string());
    if !extra.contains(&"--eviction-hard") {
        flags.extend(["--eviction-hard".to_string(), TEST_EVICTION.to_string()]);
    }
    flags.extend(extra.iter().map(|s| s.to_string()));
    flags
}

impl Cluster {
    /// A control plane, and an agent joined to it as `edge-1` with a client certificate.
    async fn start() -> Cluster {
        Self::start_as(false, &[]).await
    }

    /// With `token`, the node's kubeconfig holds a bearer token for `system:node:edge-1`
    /// instead of a client certificate. `cm_flags` go to the controller-manager.
    async fn start_as(token: bool, cm_flags: &[&str]) -> Cluster {
        Self::start_in(token, cm_flags, tempfile::tempdir().unwrap(), &[]).await
    }

    /// The agent on the state directory the test prepared, with `flags` added.
    async fn start_in(token: bool, cm_flags: &[&str], state: tempfile::TempDir, flags: &[&str]) -> Cluster {
        let api = ControlPlane::start_with(cm_flags).await;
        let admin = api.admin().await;
        let net = Partition::start(api.api_port).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("node.kubeconfig");
        let node_user = User::new(&format!("system:node:{NODE}"), &["system:nodes"]);
        if token {
            std::fs::write(&kubeconfig, api.kubeconfig_token("node-token-edge-1", net.port)).unwrap();
        } else {
            std::fs::write(&kubeconfig, api.kubeconfig_cert(&node_user, net.port)).unwrap();
        }
        // the RuntimeClass users apply from examples/ (the test pods name it)
        let rc = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../examples/cluster/runtimeclass.yaml"));
        tokio::task::block_in_place(|| api.apply(&rc.unwrap()));
        let port = free_port();
        let mut c = Cluster { api, net, admin, agent: None, port, dir };
        let flags = node_flags(&kubeconfig, c.port, &[&["--node-labels", "site=lab"], flags].concat());
        let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
        c.agent = Some(tokio::task::block_in_place(|| Agent::start_in(state, &flags)));
        c
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    /// The end of the agent's log, for failure messages.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.agent().state_dir().join("serve.log")).unwrap_or_default();
        let lines = std::env::var("WASMLET_TEST_LOG_LINES").ok().and_then(|n| n.parse().ok()).unwrap_or(30);
        let tail: Vec<&str> = log.lines().rev().take(lines).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// `kubectl` as the admin; its stdout, failing the test on an error.
    fn kubectl(&self, args: &[&str]) -> String {
        tokio::task::block_in_place(|| self.api.kubectl_ok(args))
    }

    /// Waits until the node's Ready condition in the API server is `status`.
    async fn wait_node_ready(&self, status: &str, limit: Duration) -> Duration {
        let t0 = Instant::now();
        let nodes: Api<Node> = Api::all(self.admin.clone());
        loop {
            if let Ok(Some(n)) = nodes.get_opt(NODE).await
                && node_condition(&n, "Ready").as_deref() == Some(status)
            {
                return t0.elapsed();
            }
            assert!(t0.elapsed() < limit, "the node's Ready is not {status} within {limit:?}:\n{}", self.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn pods(&self) -> Api<Pod> {
        Api::namespaced(self.admin.clone(), "default")
    }

    /// Creates a pod bound to the node (as the scheduler's binding would).
    async fn create_pod(&self, pod: Value) -> Pod {
        let mut pod = pod;
        pod["spec"]["nodeName"] = json!(NODE);
        let pod: Pod = serde_json::from_value(pod).unwrap();
        self.pods().create(&PostParams::default(), &pod).await.unwrap()
    }

    /// Polls the pod in the API server until `check` holds.
    async fn wait_pod(&self, name: &str, what: &str, check: impl Fn(&Pod) -> bool) -> Pod {
        self.wait_pod_for(name, what, Duration::from_secs(60), check).await
    }

    async fn wait_pod_for(&self, name: &str, what: &str, limit: Duration, check: impl Fn(&Pod) -> bool) -> Pod {
        let deadline = Instant::now() + limit;
        let mut last = None;
        while Instant::now() < deadline {
            if let Ok(Some(p)) = self.pods().get_opt(name).await {
                if check(&p) {
                    return p;
                }
                last = Some(p);
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        panic!(
            "pod {name}: timed out waiting for {what}; last seen in the API: {:#?}\nagent log:\n{}",
            last.map(|p| p.status),
            self.log()
        );
    }

    /// A client-certificate pair signed by the cluster CA, written to files.
    fn cert_files(&self, user: &User) -> (String, String) {
        let (cert, key) = self.api.ca.client_cert(user);
        let n = fastrand::u32(..);
        let (c, k) = (self.dir.path().join(format!("{n}.crt")), self.dir.path().join(format!("{n}.key")));
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        (c.display().to_string(), k.display().to_string())
    }

    /// GET on the kubelet API with curl: (status, body).
    fn kubelet_get(&self, path: &str, auth: &[&str]) -> (u16, String) {
        let url = format!("https://127.0.0.1:{}{path}", self.port);
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "20", "-w", "\n%{http_code}"])
            .args(auth)
            .arg(&url)
            .output()
            .expect("curl runs: apt-get install -y curl");
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        tokio::task::block_in_place(|| drop(self.agent.take()));
    }
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        && p.status
            .as_ref()
            .and_then(|s| s.container_statuses.as_ref())
            .is_some_and(|c| c.iter().all(|c| c.state.as_ref().is_some_and(|s| s.running.is_some())))
}

fn node_condition(n: &Node, kind: &str) -> Option<String> {
    let conditions = n.status.as_ref()?.conditions.as_ref()?;
    conditions.iter().find(|c| c.type_ == kind).map(|c| c.status.clone())
}

fn pod_ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn phase(p: &Pod) -> &str {
    p.status.as_ref().and_then(|s| s.phase.as_deref()).unwrap_or("")
}

fn wasm_pod(name: &str, image: &str, args: &[&str], restart: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "restartPolicy": restart,
            "runtimeClassName": "wasmlet",
            "tolerations": [{"key": "wasmlet.dev/node", "operator": "Exists", "effect": "NoSchedule"}],
            "containers": [{"name": "app", "image": image, "args": args}],
        },
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn joins_as_a_node_runs_bound_pods_and_deletes_them_gracefully() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["sleep", "cat"]));
    let c = Cluster::start().await;
    let nodes: Api<Node> = Api::all(c.admin.clone());

    // registration: labels, taint, capacity, conditions, nodeInfo, addresses, port
    let deadline = Instant::now() + Duration::from_secs(20);
    let node = loop {
        if let Ok(Some(n)) = nodes.get_opt(NODE).await
            && n.status.as_ref().and_then(|s| s.conditions.as_ref()).is_some()
        {
            break n;
        }
        assert!(Instant::now() < deadline, "the node did not register with its status within 20 s:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let labels = node.metadata.labels.clone().unwrap();
    assert_eq!(labels["kubernetes.io/hostname"], NODE);
    assert_eq!(labels["kubernetes.io/os"], "linux");
    assert_eq!(labels["wasmlet.dev/runtime.wasm"], "true");
    assert_eq!(labels["site"], "lab");
    let taints = node.spec.as_ref().unwrap().taints.clone().unwrap();
    assert_eq!((taints[0].key.as_str(), taints[0].effect.as_str()), ("wasmlet.dev/node", "NoSchedule"));
    let status = node.status.clone().unwrap();
    // the pressure conditions report this machine as it is (a full disk is DiskPressure
    // here too), with the kubelet's reason for each value
    let conditions = status.conditions.unwrap();
    let reasons: Vec<(String, String, String)> =
        conditions.iter().map(|c| (c.type_.clone(), c.status.clone(), c.reason.clone().unwrap_or_default())).collect();
    let ready = ("Ready".to_string(), "True".to_string(), "KubeletReady".to_string());
    assert!(reasons.contains(&ready), "{reasons:?}");
    for (kind, no, yes) in [
        ("MemoryPressure", "KubeletHasSufficientMemory", "KubeletHasInsufficientMemory"),
        ("DiskPressure", "KubeletHasNoDiskPressure", "KubeletHasDiskPressure"),
        ("PIDPressure", "KubeletHasSufficientPID", "KubeletHasInsufficientPID"),
    ] {
        let c = reasons.iter().find(|c| c.0 == kind).unwrap_or_else(|| panic!("no {kind} in {reasons:?}"));
        let want = if c.1 == "True" { yes } else { no };
        assert_eq!(c.2, want, "{kind}: {reasons:?}");
    }
    let capacity = status.capacity.unwrap();
    // the machine's capacity as the agent found it (here the test agents' Wasm pool of
    // 200), not the kubelet's fixed 110
    let log = std::fs::read_to_string(c.agent().state_dir().join("serve.log")).unwrap();
    let said = log.lines().find_map(|l| l.strip_prefix("wasmlet: this node takes ")?.split(' ').next());
    assert_eq!((Some(capacity["pods"].0.as_str()), said), (Some("200"), Some("200")), "{log}");
    // (the API server keeps quantities canonical: 2000m reads back as 2)
    let cpu = capacity["cpu"].0.trim_end_matches('m');
    assert!(cpu.parse::<u64>().is_ok_and(|c| c > 0), "{capacity:?}");
    assert!(!capacity["memory"].0.is_empty(), "{capacity:?}");
    assert!(status.allocatable.unwrap().contains_key("ephemeral-storage"));
    let info = status.node_info.unwrap();
    assert!(info.container_runtime_version.starts_with("wasmlet://"), "{info:?}");
    assert!(!info.kernel_version.is_empty() && !info.boot_id.is_empty());
    assert_eq!(status.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, c.port as i32);
    assert_eq!(status.addresses.unwrap()[0].address, "127.0.0.1");

    // the lease: held by the node, 40 s, renewed every 10 s
    let leases: Api<Lease> = Api::namespaced(c.admin.clone(), "kube-node-lease");
    let deadline = Instant::now() + Duration::from_secs(10);
    let lease = loop {
        // created once the node is registered
        if let Some(l) = leases.get_opt(NODE).await.unwrap() {
            break l;
        }
        assert!(Instant::now() < deadline, "no lease within 10 s of registration");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let spec = lease.spec.clone().unwrap();
    assert_eq!((spec.holder_identity.as_deref(), spec.lease_duration_seconds), (Some(NODE), Some(40)));
    assert_eq!(lease.metadata.owner_references.unwrap()[0].kind, "Node");

    // a pod bound to the node, with a ConfigMap and a Secret
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "greeting"}, "data": {"text": "hello from the API server\n"}});
    cms.create(&PostParams::default(), &serde_json::from_value(cm).unwrap()).await.unwrap();
    let secrets: Api<Secret> = Api::namespaced(c.admin.clone(), "default");
    let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "token"}, "stringData": {"value": "s3cret\n"}});
    let mut s: Secret = serde_json::from_value(s).unwrap();
    s.data = Some([("value".to_string(), k8s_openapi::ByteString(b"s3cret\n".to_vec()))].into());
    s.string_data = None;
    secrets.create(&PostParams::default(), &s).await.unwrap();
    let mut reader = wasm_pod("reader", &apps.image("cat", "v1"), &["/cfg/text", "/sec/value"], "Never");
    reader["spec"]["volumes"] = json!([
        {"name": "cfg", "configMap": {"name": "greeting"}},
        {"name": "sec", "secret": {"secretName": "token"}},
    ]);
    reader["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "cfg", "mountPath": "/cfg"}, {"name": "sec", "mountPath": "/sec"}]);
    c.create_pod(reader).await;
    let sleeper = c.create_pod(wasm_pod("sleeper", &apps.image("sleep", "v1"), &["3600"], "Always")).await;

    let done = c.wait_pod("reader", "Succeeded", |p| phase(p) == "Succeeded").await;
    let term = done.status.unwrap().container_statuses.unwrap()[0].state.clone().unwrap().terminated.unwrap();
    assert_eq!(term.exit_code, 0);
    let p = c.wait_pod("sleeper", "Running", running).await;
    let st = p.status.clone().unwrap();
    assert_eq!(st.host_ip.as_deref(), Some("127.0.0.1"));
    assert!(st.conditions.unwrap().iter().any(|c| c.type_ == "Ready" && c.status == "True"));
    assert_eq!(p.metadata.uid, sleeper.metadata.uid);

    // the agent runs the pod under the API server's uid, and read both objects
    let local = tokio::task::block_in_place(|| c.agent().pod("sleeper"));
    assert_eq!(local["metadata"]["uid"].as_str(), sleeper.metadata.uid.as_deref());
    let logs = tokio::task::block_in_place(|| c.agent().ok(&["logs", "reader"]));
    assert_eq!(logs, "hello from the API server\ns3cret\n");

    // events, with the kubelet's reasons
    let events: Api<Event> = Api::namespaced(c.admin.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&Default::default()).await.unwrap();
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.involved_object.name.as_deref() == Some("sleeper"))
            .filter_map(|e| e.reason.clone())
            .collect();
        if ["Pulled", "Created", "Started"].iter().all(|r| reasons.iter().any(|x| x == r)) {
            break;
        }
        assert!(Instant::now() < deadline, "events for sleeper: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // node events with the kubelet's reasons, and the images the node holds
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let list = events.list(&Default::default()).await.unwrap();
        let reasons: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.involved_object.kind.as_deref() == Some("Node"))
            .filter_map(|e| e.reason.clone())
            .collect();
        if ["Starting", "NodeReady", "NodeHasSufficientPID"].iter().all(|r| reasons.iter().any(|x| x == r)) {
            break;
        }
        assert!(Instant::now() < deadline, "node events: {reasons:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let images = nodes.get(NODE).await.unwrap().status.unwrap().images.unwrap_or_default();
        let names: Vec<String> = images.iter().flat_map(|i| i.names.clone().unwrap_or_default()).collect();
        if names.iter().any(|n| n == &apps.image("cat", "v1")) && names.iter().any(|n| n.contains("@sha256:")) {
            assert!(images.iter().all(|i| i.size_bytes.unwrap_or(0) > 0), "{images:?}");
            break;
        }
        assert!(Instant::now() < deadline, "status.images: {names:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // graceful deletion: marked by the API server, stopped here, then the final delete
    let t0 = Instant::now();
    c.pods().delete("sleeper", &DeleteParams::default()).await.unwrap();
    let marked = c.pods().get_opt("sleeper").await.unwrap();
    if let Some(m) = marked {
        assert!(m.metadata.deletion_timestamp.is_some(), "a bound pod is marked first");
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.pods().get_opt("sleeper").await.unwrap().is_some() {
        assert!(Instant::now() < deadline, "the node did not make the final delete");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("graceful deletion took {:?}", t0.elapsed());
    let local = tokio::task::block_in_place(|| c.agent().cli(&["get", "pods", "sleeper"]));
    assert!(!local.status.success(), "the pod is gone from the node too");

    // the Secret goes from the node once no pod there uses it
    c.pods().delete("reader", &DeleteParams::default()).await.unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let secrets = tokio::task::block_in_place(|| c.agent().ok(&["get", "secrets", "-o", "json"]));
        let v: Value = serde_json::from_str(&secrets).unwrap_or(Value::Null);
        let n = v.as_array().map(|a| a.len()).or(v["items"].as_array().map(|a| a.len())).unwrap_or(0);
        if n == 0 && c.pods().get_opt("reader").await.unwrap().is_none() {
            break;
        }
        assert!(Instant::now() < deadline, "the node still keeps the Secret: {secrets}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // the lease is renewed (every 10 s)
    let first = spec.renew_time.unwrap().0;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let now = leases.get(NODE).await.unwrap().spec.unwrap().renew_time.unwrap().0;
        if now > first {
            break;
        }
        assert!(Instant::now() < deadline, "the lease was not renewed within 15 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pod_the_node_cannot_run_fails_with_the_field_named() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["sleep"]));
    let c = Cluster::start().await;
    // a RuntimeClass the cluster has (its admission refuses unknown ones), not wasmlet's
    c.api.apply("apiVersion: node.k8s.io/v1\nkind: RuntimeClass\nmetadata:\n  name: gvisor\nhandler: runsc\n");
    let mut pod = wasm_pod("gvisor", &apps.image("sleep", "v1"), &[], "Always");
    pod["spec"]["runtimeClassName"] = json!("gvisor");
    c.create_pod(pod).await;
    let p = c.wait_pod("gvisor", "Failed", |p| phase(p) == "Failed").await;
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("UnsupportedPodSpec"));
    assert!(st.message.unwrap().contains("spec.runtimeClassName: Unsupported value: \"gvisor\""));
}

/// Accepts any server certificate, as `curl -k` does (the kubelet's is self-signed).
#[derive(Debug)]
struct AnyServer(std::sync::Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for AnyServer {
    fn verify_server_cert(
        &self,
        _: &rustls_pki_types::CertificateDer<'_>,
        _: &[rustls_pki_types::CertificateDer<'_>],
        _: &rustls_pki_types::ServerName<'_>,
        _: &[u8],
        _: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        m: &[u8],
        c: &rustls_pki_types::CertificateDer<'_>,
        d: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(m, c, d, &self.0.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What a SPDY exec returned: stdout, stderr, and the error stream's status.
#[derive(Debug, Default)]
struct ExecResult {
    status: u16,
    stdout: String,
    stderr: String,
    error: String,
}

/// `kubectl exec` as the API server does it toward a kubelet: an upgrade to SPDY/3.1 with
/// `v4.channel.k8s.io`, then error, stdin, stdout and stderr streams.
async fn spdy_exec(port: u16, path: &str, cert: (&str, &str), stdin: &[u8]) -> ExecResult {
    spdy_session(port, path, cert, Some(stdin), None).await
}

/// `kubectl exec -it` sets the terminal size on the resize stream first.
const RESIZE: &[u8] = br#"{"Width":100,"Height":40}"#;

/// A SPDY session as `kubectl exec` (stdin `Some`) or `kubectl attach` (`None`) opens it;
/// with `until`, the client hangs up once stdout holds that text.
async fn spdy_session(
    port: u16,
    path: &str,
    cert: (&str, &str),
    stdin: Option<&[u8]>,
    until: Option<&str>,
) -> ExecResult {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (status, mut tls, refusal) = upgrade(port, path, cert, "v4.channel.k8s.io").await;
    let mut result = ExecResult { status, error: refusal, ..Default::default() };
    if status != 101 {
        return result;
    }
    let mut codec = spdy::Codec::new();
    let tty = path.contains("tty=1");
    let streams = [(1u32, "error"), (3, "stdin"), (5, "stdout"), (7, "stderr"), (9, "resize")];
    let wanted = |id: u32| match id {
        3 => stdin.is_some(),
        7 => !tty,
        9 => tty,
        _ => true,
    };
    for (id, kind) in streams.into_iter().filter(|(id, _)| wanted(*id)) {
        let f = spdy::Frame::SynStream {
            id,
            associated: 0,
            priority: 0,
            flags: 0,
            headers: vec![("streamtype".into(), kind.into())],
        };
        tls.write_all(&codec.encode(&f)).await.unwrap();
    }
    if tty {
        tls.write_all(&codec.encode(&spdy::Frame::Data { id: 9, flags: 0, data: RESIZE.to_vec() })).await.unwrap();
    }
    if let Some(stdin) = stdin {
        tls.write_all(&codec.encode(&spdy::Frame::Data { id: 3, flags: 0, data: stdin.to_vec() })).await.unwrap();
        tls.write_all(&codec.encode(&spdy::Frame::Data { id: 3, flags: spdy::FLAG_FIN, data: vec![] })).await.unwrap();
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 16 * 1024];
    let deadline = Instant::now() + Duration::from_secs(20);
    'read: loop {
        let n = match tokio::time::timeout(Duration::from_secs(20), tls.read(&mut chunk)).await {
            Ok(Ok(n)) => n,
            _ => 0,
        };
        if n == 0 || Instant::now() > deadline {
            break;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some((f, used)) = codec.decode(&buf).unwrap() {
            buf.drain(..used);
            match f {
                spdy::Frame::Data { id: 1, data, .. } => result.error.push_str(&String::from_utf8_lossy(&data)),
                spdy::Frame::Data { id: 5, data, .. } => result.stdout.push_str(&String::from_utf8_lossy(&data)),
                spdy::Frame::Data { id: 7, data, .. } => result.stderr.push_str(&String::from_utf8_lossy(&data)),
                spdy::Frame::GoAway { .. } => break 'read,
                _ => {}
            }
        }
        if until.is_some_and(|u| result.stdout.contains(u)) {
            break;
        }
    }
    result
}

type Tls = tokio_rustls::client::TlsStream<tokio::net::TcpStream>;

/// Connects to the kubelet API with a client certificate and asks to upgrade `path` to
/// SPDY/3.1 with `protocol`: the status, the stream, and the body of a refusal.
async fn upgrade(port: u16, path: &str, cert: (&str, &str), protocol: &str) -> (u16, Tls, String) {
    use rustls_pki_types::pem::PemObject;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let certs: Vec<_> = rustls_pki_types::CertificateDer::pem_file_iter(cert.0).unwrap().map(|c| c.unwrap()).collect();
    let key = rustls_pki_types::PrivateKeyDer::from_pem_file(cert.1).unwrap();
    let config = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(std::sync::Arc::new(AnyServer(provider)))
        .with_client_auth_cert(certs, key)
        .unwrap();
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let name = rustls_pki_types::ServerName::try_from("127.0.0.1").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(std::sync::Arc::new(config)).connect(name, tcp).await.unwrap();
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\nX-Stream-Protocol-Version: {protocol}\r\nContent-Length: 0\r\n\r\n"
    );
    tls.write_all(req.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if tls.read(&mut byte).await.unwrap() == 0 {
            break;
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let mut refusal = String::new();
    if status != 101 {
        let mut rest = vec![0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(2), tls.read(&mut rest))
            .await
            .ok()
            .and_then(|r| r.ok())
            .unwrap_or(0);
        refusal = String::from_utf8_lossy(&rest[..n]).to_string();
    }
    (status, tls, refusal)
}

/// `kubectl port-forward`'s traffic for one connection: error and data streams for
/// `target`, `request` sent, then what came back on each until both ended.
async fn port_forward(port: u16, pod: &str, cert: (&str, &str), target: u16, request: &[u8]) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let (status, mut tls, refusal) =
        upgrade(port, &format!("/portForward/default/{pod}"), cert, "portforward.k8s.io").await;
    assert_eq!(status, 101, "{refusal}");
    let mut codec = spdy::Codec::new();
    for (id, kind) in [(1u32, "error"), (3, "data")] {
        let headers = vec![
            ("streamtype".into(), kind.into()),
            ("port".into(), target.to_string()),
            ("requestid".into(), "0".into()),
        ];
        let f = spdy::Frame::SynStream { id, associated: 0, priority: 0, flags: 0, headers };
        tls.write_all(&codec.encode(&f)).await.unwrap();
    }
    tls.write_all(&codec.encode(&spdy::Frame::Data { id: 3, flags: 0, data: request.to_vec() })).await.unwrap();
    tls.write_all(&codec.encode(&spdy::Frame::Data { id: 3, flags: spdy::FLAG_FIN, data: vec![] })).await.unwrap();
    let (mut data, mut error, mut ended) = (String::new(), String::new(), 0);
    let (mut buf, mut chunk) = (Vec::new(), vec![0u8; 16 * 1024]);
    while ended < 2 {
        let n = match tokio::time::timeout(Duration::from_secs(10), tls.read(&mut chunk)).await {
            Ok(Ok(n)) if n > 0 => n,
            _ => break,
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some((f, used)) = codec.decode(&buf).unwrap() {
            buf.drain(..used);
            if let spdy::Frame::Data { id, flags, data: bytes } = f {
                let text = String::from_utf8_lossy(&bytes).to_string();
                if id == 3 {
                    data.push_str(&text)
                } else {
                    error.push_str(&text)
                }
                ended += usize::from(flags & spdy::FLAG_FIN != 0);
            }
        }
    }
    (data, error)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_api_serves_logs_exec_and_stats_to_authorized_callers_only() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["hello"]));
    let busybox = tokio::task::block_in_place(|| push_busybox(&apps.registry, "amd64", "latest"));
    let c = Cluster::start().await;
    // who may do what on nodes/*, answered through SubjectAccessReview
    // (viewer-token and nobody-token are in the API server's token file)
    c.api.grant("viewer", "User:viewer", &["get"], &["nodes/proxy", "nodes/stats", "nodes/metrics", "nodes/pods"]);
    let operator = User::new("operator", &["ops"]);
    c.api.grant("ops", "Group:ops", &["get", "create"], &["nodes/proxy"]);
    let apiserver = User::new("kube-apiserver-kubelet-client", &["system:masters"]);

    let mut hello = wasm_pod("hello", &apps.image("hello", "v1"), &["one", "two"], "Never");
    hello["spec"]["containers"][0]["env"] = json!([{"name": "GREETING", "value": "hi"}]);
    c.create_pod(hello).await;
    let shell = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "shell"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "sh", "image": busybox, "command": ["sleep", "3600"]}],
        },
    });
    c.create_pod(shell).await;
    let ticker = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "ticker"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "t", "image": busybox, "command": ["sh", "-c", "while true; do echo tick; echo tock >&2; sleep 0.2; done"]}],
        },
    });
    c.create_pod(ticker).await;
    let web = json!({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "web"},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [{"name": "httpd", "image": busybox, "command": ["sh", "-c",
                "mkdir -p /www && echo through-port-forward > /www/index.html && exec httpd -f -p 8080 -h /www"]}],
        },
    });
    c.create_pod(web).await;
    c.wait_pod("ticker", "Running", running).await;
    c.wait_pod("web", "Running", running).await;
    c.wait_pod("hello", "Succeeded", |p| phase(p) == "Succeeded").await;
    c.wait_pod("shell", "Running", running).await;

    // anonymous: 401; an unknown token: 401
    let (code, body) = c.kubelet_get("/pods", &[]);
    assert_eq!((code, body.as_str()), (401, "Unauthorized"));
    let (code, _) = c.kubelet_get("/pods", &["-H", "Authorization: Bearer not-a-token"]);
    assert_eq!(code, 401);
    // a valid identity without rights: 403 naming the attributes
    let (code, body) = c.kubelet_get("/containerLogs/default/hello/app", &["-H", "Authorization: Bearer nobody-token"]);
    assert_eq!(code, 403);
    assert_eq!(body, "Forbidden (user=nobody, verb=get, resource=nodes, subresource=proxy)");
    // a certificate from another CA is refused at the handshake
    let stranger = kube_standin::Ca::new();
    let (cert, key) = stranger.client_cert(&apiserver);
    let (cp, kp) = (c.dir.path().join("stranger.crt"), c.dir.path().join("stranger.key"));
    std::fs::write(&cp, cert).unwrap();
    std::fs::write(&kp, key).unwrap();
    let (code, _) = c.kubelet_get("/pods", &["--cert", cp.to_str().unwrap(), "--key", kp.to_str().unwrap()]);
    assert_eq!(code, 0, "no HTTP answer without a trusted certificate");

    // logs with a token (TokenReview) and with options
    let viewer = ["-H", "Authorization: Bearer viewer-token"];
    let (code, logs) = c.kubelet_get("/containerLogs/default/hello/app", &viewer);
    assert_eq!(code, 200, "{logs}");
    assert!(logs.starts_with("hello from wasm (3 args)\narg[0]="), "{logs}");
    assert!(logs.contains("env GREETING=hi\n"), "{logs}");
    let (_, tail) = c.kubelet_get("/containerLogs/default/hello/app?tailLines=1&timestamps=true", &viewer);
    assert_eq!(tail.lines().count(), 1, "{tail}");
    assert!(tail.split(' ').next().unwrap().parse::<chrono::DateTime<chrono::FixedOffset>>().is_ok(), "{tail}");
    let (_, recent) = c.kubelet_get("/containerLogs/default/hello/app?sinceSeconds=3600", &viewer);
    assert_eq!(recent, logs);
    let (code, _) = c.kubelet_get("/containerLogs/default/hello/app?previous=true", &viewer);
    assert_eq!(code, 400);
    let (code, pods) = c.kubelet_get("/pods", &viewer);
    assert_eq!(code, 200);
    let pods: Value = serde_json::from_str(&pods).unwrap();
    assert_eq!(pods["kind"], "PodList");
    assert_eq!(pods["items"].as_array().unwrap().len(), 4);

    // exec: the viewer may get but not create
    let (vc, vk) = c.cert_files(&User::new("viewer", &["system:authenticated"]));
    let cmd = "/exec/default/shell/sh?command=sh&command=-c&command=cat%3B+echo+err+%3E%262%3B+exit+3&input=1&output=1&error=1";
    let denied = spdy_exec(c.port, cmd, (&vc, &vk), b"").await;
    assert_eq!(denied.status, 403);
    assert!(
        denied.error.contains("Forbidden (user=viewer, verb=create, resource=nodes, subresource=proxy)"),
        "{denied:?}"
    );
    // the operator (client certificate, create on nodes/proxy) and the API server may
    for user in [&operator, &apiserver] {
        let (cp, kp) = c.cert_files(user);
        let r = spdy_exec(c.port, cmd, (&cp, &kp), b"ping\n").await;
        assert_eq!(r.status, 101, "{r:?}");
        assert_eq!(r.stdout, "ping\n", "{r:?}");
        assert_eq!(r.stderr, "err\n", "{r:?}");
        let status: Value = serde_json::from_str(&r.error).unwrap();
        assert_eq!(status["reason"], "NonZeroExitCode");
        assert_eq!(status["details"]["causes"][0]["message"], "3");
    }
    let (cp, kp) = c.cert_files(&apiserver);
    let ok = spdy_exec(c.port, "/exec/default/shell/sh?command=true&output=1&error=1", (&cp, &kp), b"").await;
    let status: Value = serde_json::from_str(&ok.error).unwrap();
    assert_eq!(status["status"], "Success");
    // a terminal, sized through the resize stream (kubectl exec -it)
    let tty =
        "/exec/default/shell/sh?command=sh&command=-c&command=sleep+0.3%3B+stty+size%3B+tty&input=1&output=1&tty=1";
    let r = spdy_exec(c.port, tty, (&cp, &kp), b"").await;
    assert!(r.stdout.contains("40 100"), "{r:?}");
    assert!(r.stdout.contains("/dev/pts/"), "{r:?}");

    // attach: the container's output from now on, on stdout and stderr
    let attach = "/attach/default/ticker/t?output=1&error=1";
    let denied = spdy_session(c.port, attach, (&vc, &vk), None, None).await;
    assert_eq!(denied.status, 403, "attach needs create too");
    let r = spdy_session(c.port, attach, (&cp, &kp), None, Some("tick\ntick\n")).await;
    assert_eq!(r.status, 101, "{r:?}");
    assert!(r.stdout.starts_with("tick\ntick\n") && r.stderr.starts_with("tock\n"), "{r:?}");
    let stdin = spdy_session(c.port, "/attach/default/ticker/t?input=1&output=1", (&cp, &kp), None, None).await;
    assert_eq!(stdin.status, 400, "there is no stdin to attach to: {stdin:?}");

    // port-forward: a connection to the pod's port, and a refused one told on the error stream
    let request = b"GET /index.html HTTP/1.0\r\n\r\n";
    let deadline = Instant::now() + Duration::from_secs(10);
    let (page, error) = loop {
        let (page, error) = port_forward(c.port, "web", (&cp, &kp), 8080, request).await;
        if page.contains("through-port-forward") || Instant::now() > deadline {
            break (page, error);
        }
        tokio::time::sleep(Duration::from_millis(200)).await; // httpd may not listen yet
    };
    assert!(page.starts_with("HTTP/1.") && page.contains("through-port-forward"), "{page:?} {error:?}");
    let (nothing, error) = port_forward(c.port, "web", (&cp, &kp), 9, request).await;
    assert!(nothing.is_empty() && error.contains("error forwarding port 9 to pod"), "{error}");

    // stats and metrics, as metrics-server and Prometheus read them
    // usageNanoCores is a rate: it needs two readings a second apart (the agent reads
    // every 10 s by itself; a scrape is a reading too)
    let (code, _) = c.kubelet_get("/stats/summary", &viewer);
    assert_eq!(code, 200);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (code, summary) = c.kubelet_get("/stats/summary", &viewer);
    assert_eq!(code, 200);
    let summary: Value = serde_json::from_str(&summary).unwrap();
    assert_eq!(summary["node"]["nodeName"], NODE);
    assert!(summary["node"]["memory"]["workingSetBytes"].as_u64().unwrap() > 0);
    let shell_stats = summary["pods"].as_array().unwrap().iter().find(|p| p["podRef"]["name"] == "shell").cloned();
    let shell_stats = shell_stats.expect("the running pod has stats");
    assert!(shell_stats["containers"][0]["memory"]["workingSetBytes"].as_u64().unwrap() > 0, "{shell_stats}");
    assert!(summary["node"]["cpu"]["usageNanoCores"].as_u64().is_some(), "{}", summary["node"]);
    assert!(shell_stats["containers"][0]["cpu"]["usageNanoCores"].as_u64().is_some(), "{shell_stats}");
    assert!(shell_stats["cpu"]["usageNanoCores"].as_u64().is_some(), "{shell_stats}");
    let (code, cadvisor) = c.kubelet_get("/metrics/cadvisor", &viewer);
    assert_eq!(code, 200);
    assert!(cadvisor.contains("container_cpu_usage_seconds_total{container=\"\",id=\"/\""), "{cadvisor}");
    assert!(cadvisor.contains("container_memory_working_set_bytes{container=\"sh\""), "{cadvisor}");
    let (_, resource) = c.kubelet_get("/metrics/resource", &viewer);
    assert!(resource.contains("node_cpu_usage_seconds_total "), "{resource}");
    assert!(
        resource.contains("container_memory_working_set_bytes{container=\"sh\",namespace=\"default\",pod=\"shell\"}")
    );
    let (_, metrics) = c.kubelet_get("/metrics", &viewer);
    assert!(metrics.contains("kubelet_pod_start_sli_duration_seconds_bucket{le=\"0.5\"}"), "{metrics}");
    assert!(metrics.contains("kubelet_pod_start_sli_duration_seconds_count 4"), "{metrics}");
    assert!(metrics.contains("wasmlet_api_server_connected 1"));
    for name in ["shell", "ticker", "web"] {
        c.pods().delete(name, &DeleteParams::default()).await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pods_keep_running_without_the_api_server_or_cut_off_from_it_and_converge() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["sleep"]));
    let mut c = Cluster::start_as(false, &["--node-monitor-grace-period=16s", "--node-monitor-period=2s"]).await;
    c.create_pod(wasm_pod("stays", &apps.image("sleep", "v1"), &["3600"], "Always")).await;
    c.create_pod(wasm_pod("goes", &apps.image("sleep", "v1"), &["3600"], "Always")).await;
    c.wait_pod("stays", "Running", running).await;
    c.wait_pod("goes", "Running", running).await;

    // the API server is gone: the node's pods keep running
    let log_before = std::fs::read_to_string(c.agent().state_dir().join("serve.log")).unwrap().len();
    c.api.stop_apiserver();
    tokio::time::sleep(Duration::from_secs(8)).await;
    // retries back off and are logged once, then once a minute: a line per loop (lease,
    // node status, watch; the 30 s re-read of the pods' Secret if it falls in the window),
    // not one per retry (the watch alone used to log ~10 in 8 s)
    let log = std::fs::read_to_string(c.agent().state_dir().join("serve.log")).unwrap();
    let noisy: Vec<&str> = log[log_before..].lines().filter(|l| l.contains("WARN") || l.contains("ERROR")).collect();
    assert!(noisy.len() <= 8, "{} warnings in 8 s of outage:\n{}", noisy.len(), noisy.join("\n"));
    let watch_retries = noisy.iter().filter(|l| l.contains("pod watch failed")).count();
    assert!(watch_retries <= 1, "the watch's failures are logged once: {noisy:?}");
    for name in ["stays", "goes"] {
        let p = tokio::task::block_in_place(|| c.agent().pod(name));
        assert_eq!(p["status"]["phase"], "Running", "{name} while the API server is away");
    }
    // back: the statuses are the node's again within 10 s
    let back = Instant::now();
    c.api.restart_apiserver().await;
    let restarted = back.elapsed();
    c.wait_pod_for("stays", "Running and Ready", Duration::from_secs(10), |p| running(p) && pod_ready(p)).await;
    c.wait_node_ready("True", Duration::from_secs(10)).await;
    eprintln!("converged {:?} after the API server was ready again", back.elapsed() - restarted);

    // the node cut off from a running API server for longer than the node monitor's
    // grace period (16 s here): the node controller marks it Unknown and its pods not
    // Ready; meanwhile one pod is force-deleted and one is made for the node
    c.net.cut();
    let unknown = c.wait_node_ready("Unknown", Duration::from_secs(60)).await;
    eprintln!("the node controller marked the node Unknown {unknown:?} into the partition");
    c.wait_pod("stays", "NotReady by the node controller", |p| !pod_ready(p)).await;
    c.pods().delete("goes", &DeleteParams { grace_period_seconds: Some(0), ..Default::default() }).await.unwrap();
    c.create_pod(wasm_pod("fresh", &apps.image("sleep", "v1"), &["3600"], "Always")).await;
    for name in ["stays", "goes"] {
        let p = tokio::task::block_in_place(|| c.agent().pod(name));
        assert_eq!(p["status"]["phase"], "Running", "{name} while cut off");
    }
    // healed: within 10 s the node is Ready, its pods Ready, the new pod runs and the
    // deleted one is stopped
    let healed = Instant::now();
    c.net.heal();
    let ready = c.wait_node_ready("True", Duration::from_secs(10)).await;
    c.wait_pod_for("stays", "Ready again", Duration::from_secs(10), pod_ready).await;
    c.wait_pod_for("fresh", "Running", Duration::from_secs(10), running).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let gone = !tokio::task::block_in_place(|| c.agent().cli(&["get", "pods", "goes"])).status.success();
        if gone {
            break;
        }
        assert!(Instant::now() < deadline, "the pod deleted meanwhile still runs:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!("after the partition: node Ready in {ready:?}, all converged in {:?}", healed.elapsed());
    let p = c.pods().get("stays").await.unwrap();
    assert!(running(&p) && pod_ready(&p));
    let restarts = p.status.unwrap().container_statuses.unwrap()[0].restart_count;
    assert_eq!(restarts, 0, "the control plane's absence restarted nothing");

    // an admin's patch that says the node is not Ready is put right at the next status
    // round (every 10 s; 15 s allows for a loaded machine)
    let patch = json!({"status": {"conditions": [{"type": "Ready", "status": "False", "reason": "AdminSaysSo"}]}});
    let nodes: Api<Node> = Api::all(c.admin.clone());
    nodes.patch_status(NODE, &Default::default(), &kube::api::Patch::Strategic(&patch)).await.unwrap();
    let corrected = c.wait_node_ready("True", Duration::from_secs(15)).await;
    eprintln!("an admin's Ready=False was put right in {corrected:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_agent_started_offline_runs_its_pods_with_their_last_configmaps() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["hello", "sleep"]));
    // this node authenticates with a token
    let mut c = Cluster::start_as(true, &[]).await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), "default");
    let cm =
        json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "settings"}, "data": {"mode": "edge"}});
    cms.create(&PostParams::default(), &serde_json::from_value(cm).unwrap()).await.unwrap();
    // hello prints its environment and exits; Always restarts it
    let mut pod = wasm_pod("printer", &apps.image("hello", "v1"), &[], "Always");
    pod["spec"]["containers"][0]["env"] =
        json!([{"name": "MODE", "valueFrom": {"configMapKeyRef": {"name": "settings", "key": "mode"}}}]);
    c.create_pod(pod).await;
    c.create_pod(wasm_pod("long", &apps.image("sleep", "v1"), &["3600"], "Always")).await;
    c.wait_pod("long", "Running", running).await;
    c.wait_pod("printer", "a first run", |p| {
        p.status.as_ref().and_then(|s| s.container_statuses.as_ref()).is_some_and(|c| c[0].restart_count >= 1)
    })
    .await;

    // the machine goes down, and comes back with no control plane
    let kubeconfig = c.dir.path().join("node.kubeconfig");
    let mut agent = c.agent.take().unwrap();
    tokio::task::block_in_place(|| agent.kill9());
    c.api.stop_apiserver();
    tokio::task::block_in_place(|| agent.restart());
    c.agent = Some(agent);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let long = tokio::task::block_in_place(|| c.agent().pod("long"));
        let logs = tokio::task::block_in_place(|| c.agent().cli(&["logs", "printer"]));
        let logs = String::from_utf8_lossy(&logs.stdout).to_string();
        if long["status"]["phase"] == "Running" && logs.contains("env MODE=edge") {
            break;
        }
        assert!(Instant::now() < deadline, "offline, the pods did not run again:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let _ = kubeconfig;
    // the control plane returns: the statuses converge
    c.api.restart_apiserver().await;
    let long_uid = tokio::task::block_in_place(|| c.agent().pod("long"))["metadata"]["uid"].clone();
    let p = c
        .wait_pod("long", "Running after the restart", |p| {
            running(p) && p.status.as_ref().unwrap().container_statuses.as_ref().unwrap()[0].restart_count >= 1
        })
        .await;
    assert_eq!(json!(p.metadata.uid), long_uid);
}

/// Approves every pending CertificateSigningRequest, as `kubectl certificate approve`.
async fn approve_pending(admin: &kube::Client) -> Vec<String> {
    use k8s_openapi::api::certificates::v1::CertificateSigningRequest;
    let api: Api<CertificateSigningRequest> = Api::all(admin.clone());
    let mut approved = Vec::new();
    for csr in api.list(&Default::default()).await.unwrap().items {
        let pending = csr.status.as_ref().and_then(|s| s.conditions.as_ref()).is_none_or(|c| c.is_empty());
        if pending {
            let name = csr.metadata.name.clone().unwrap();
            let patch = json!({"status": {"conditions": [
                {"type": "Approved", "status": "True", "reason": "TestApproved", "message": "approved by the test"}
            ]}});
            api.patch_approval(&name, &Default::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
            approved.push(format!("{} {}", csr.spec.signer_name, csr.spec.username.unwrap_or_default()));
        }
    }
    approved
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_node_bootstraps_its_identity_and_serving_certificate_through_csrs() {
    let api = ControlPlane::start().await;
    let admin = api.admin().await;
    // a bootstrap token that may ask for node client certificates, as kubeadm makes it
    tokio::task::block_in_place(|| api.bootstrap_token());
    let dir = tempfile::tempdir().unwrap();
    let bootstrap = dir.path().join("bootstrap.kubeconfig");
    std::fs::write(&bootstrap, api.kubeconfig_token(BOOTSTRAP_TOKEN, api.api_port)).unwrap();
    let kubeconfig = dir.path().join("node.kubeconfig");
    let port = free_port();
    let extra = ["--bootstrap-kubeconfig", bootstrap.to_str().unwrap(), "--rotate-server-certificates"];
    let flags = node_flags(&kubeconfig, port, &extra);
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let agent = tokio::task::block_in_place(|| Agent::start_with(&flags));
    let nodes: Api<Node> = Api::all(admin.clone());
    let mut approved = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(30);
    while approved.len() < 2 || nodes.get_opt(NODE).await.unwrap().is_none() {
        approved.extend(approve_pending(&admin).await);
        assert!(Instant::now() < deadline, "bootstrap did not finish; approved {approved:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    approved.sort();
    assert_eq!(
        approved,
        [
            "kubernetes.io/kube-apiserver-client-kubelet system:bootstrap:abcdef".to_string(),
            format!("kubernetes.io/kubelet-serving system:node:{NODE}"),
        ]
    );
    // the issued identity was written, root-only
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(std::fs::metadata(&kubeconfig).unwrap().permissions().mode() & 0o777, 0o600);
    let key = agent.state_dir().join("pki/kubelet-client.key");
    assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    // the kubelet API now presents the cluster-signed certificate: curl trusts it by the CA
    let ca = dir.path().join("ca.crt");
    std::fs::write(&ca, &api.ca.cert_pem).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let out = Command::new("curl")
            .args(["-s", "--cacert", ca.to_str().unwrap(), "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("https://127.0.0.1:{port}/healthz"))
            .output()
            .unwrap();
        if String::from_utf8_lossy(&out.stdout) == "401" {
            break;
        }
        assert!(Instant::now() < deadline, "the kubelet API does not serve the signed certificate");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::task::block_in_place(|| drop(agent));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn service_account_tokens_are_requested_bound_to_the_pod_and_mounted() {
    use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
    let apps = tokio::task::block_in_place(|| Apps::push(&["cat", "sleep"]));
    let c = Cluster::start().await;
    // kube-root-ca.crt is published in every namespace by the controller-manager
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(30);
    while cms.get_opt("kube-root-ca.crt").await.unwrap().is_none() {
        assert!(Instant::now() < deadline, "no kube-root-ca.crt ConfigMap");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the volume the API server's ServiceAccount admission adds to every pod
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    let files = [format!("{dir}/token"), format!("{dir}/namespace"), format!("{dir}/ca.crt")];
    let args: Vec<&str> = files.iter().map(String::as_str).collect();
    let mut pod = wasm_pod("api-client", &apps.image("cat", "v1"), &args, "Never");
    pod["spec"]["serviceAccountName"] = json!("default");
    pod["spec"]["volumes"] = json!([{"name": "kube-api-access-x7k2p", "projected": {"defaultMode": 420, "sources": [
        {"serviceAccountToken": {"expirationSeconds": 3607, "path": "token"}},
        {"configMap": {"name": "kube-root-ca.crt", "items": [{"key": "ca.crt", "path": "ca.crt"}]}},
        {"downwardAPI": {"items": [{"path": "namespace", "fieldRef": {"apiVersion": "v1", "fieldPath": "metadata.namespace"}}]}},
    ]}}]);
    pod["spec"]["containers"][0]["volumeMounts"] =
        json!([{"name": "kube-api-access-x7k2p", "mountPath": dir, "readOnly": true}]);
    c.create_pod(pod.clone()).await;
    c.wait_pod("api-client", "Succeeded", |p| phase(p) == "Succeeded").await;
    let out = tokio::task::block_in_place(|| c.agent().ok(&["logs", "api-client"]));
    // the token (a JWT, no newline), the namespace, the cluster CA
    let at = out.find("default-----BEGIN CERTIFICATE-----").unwrap_or_else(|| panic!("{out}"));
    let token = &out[..at];
    assert_eq!(token.split('.').count(), 3, "a JWT: {token}");
    // the API server knows the token as the pod's service account
    let reviews: Api<TokenReview> = Api::all(c.admin.clone());
    let review =
        TokenReview { spec: TokenReviewSpec { token: token.to_string(), ..Default::default() }, ..Default::default() };
    let r = reviews.create(&PostParams::default(), &review).await.unwrap();
    let user = r.status.unwrap().user.unwrap();
    assert_eq!(user.username.as_deref(), Some("system:serviceaccount:default:default"));
    // and the token goes from the node with the pod
    c.pods().delete("api-client", &DeleteParams::default()).await.unwrap();
    let mut holder = pod.clone();
    holder["metadata"]["name"] = json!("holder");
    holder["spec"]["containers"][0]["image"] = json!(apps.image("sleep", "v1"));
    holder["spec"]["containers"][0]["args"] = json!(["3600"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let secrets = tokio::task::block_in_place(|| c.agent().ok(&["get", "secrets", "-o", "json"]));
        if !secrets.contains("wasmlet-sa-token") {
            break;
        }
        assert!(Instant::now() < deadline, "the token is still on the node");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // a running pod's token is on tmpfs; an agent that stops unmounts it
    c.create_pod(holder).await;
    c.wait_pod("holder", "Running", running).await;
    let mounts = tokio::task::block_in_place(|| c.agent().mounts());
    assert!(mounts.iter().any(|m| m.ends_with("/volumes/kube-api-access-x7k2p")), "{mounts:?}");
    let mut c = c;
    let mut agent = c.agent.take().unwrap();
    tokio::task::block_in_place(|| agent.terminate());
    let left = agent.mounts();
    assert!(left.is_empty(), "mounted after the agent stopped: {left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn configmap_changes_in_the_api_server_reach_running_pods() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["sleep"]));
    let c = Cluster::start().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.admin.clone(), "default");
    let cm = json!({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "live"}, "data": {"level": "one"}});
    cms.create(&PostParams::default(), &serde_json::from_value(cm).unwrap()).await.unwrap();
    let mut pod = wasm_pod("watcher", &apps.image("sleep", "v1"), &["3600"], "Always");
    pod["spec"]["volumes"] = json!([{"name": "cfg", "configMap": {"name": "live"}}]);
    pod["spec"]["containers"][0]["volumeMounts"] = json!([{"name": "cfg", "mountPath": "/cfg"}]);
    let created = c.create_pod(pod).await;
    c.wait_pod("watcher", "Running", running).await;
    let uid = created.metadata.uid.unwrap();
    let file = c.agent().state_dir().join(format!("pods/{uid}/volumes/cfg/level"));
    assert_eq!(std::fs::read_to_string(&file).unwrap(), "one");
    let patch = json!({"data": {"level": "two"}});
    cms.patch("live", &Default::default(), &kube::api::Patch::Merge(&patch)).await.unwrap();
    // the node reads its pods' objects again every 30 s
    let deadline = Instant::now() + Duration::from_secs(45);
    while std::fs::read_to_string(&file).unwrap_or_default() != "two" {
        assert!(Instant::now() < deadline, "the change did not reach the volume in 45 s:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let p = c.pods().get("watcher").await.unwrap();
    assert_eq!(p.status.unwrap().container_statuses.unwrap()[0].restart_count, 0, "updated in place");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_real_scheduler_and_controllers_run_deployments_and_jobs_here_and_kubectl_reaches_them() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["sleep", "hello"]));
    let busybox = tokio::task::block_in_place(|| push_busybox(&apps.registry, "amd64", "latest"));
    let c = Cluster::start().await;
    let ready_after = c.wait_node_ready("True", Duration::from_secs(30)).await;
    eprintln!("node Ready {ready_after:?} after the control plane was up and the agent answered");
    // the RuntimeClass (applied by Cluster::start from examples/): its admission adds
    // the toleration and node selector, and the real scheduler places the pods here
    c.api.apply(&format!(
        "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: sleepers\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: sleepers\n  template:\n    metadata:\n      labels:\n        app: sleepers\n    spec:\n      runtimeClassName: wasmlet\n      containers:\n      - name: app\n        image: {}\n        args: [\"3600\"]\n",
        apps.image("sleep", "v1")
    ));
    // a Job through the real Job controller: its pods must run to completion here
    c.api.apply(&format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: greeter\nspec:\n  completions: 2\n  parallelism: 2\n  backoffLimit: 0\n  template:\n    spec:\n      runtimeClassName: wasmlet\n      restartPolicy: Never\n      containers:\n      - name: app\n        image: {}\n        args: [\"from-a-job\"]\n",
        apps.image("hello", "v1")
    ));
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let d: Value = serde_json::from_str(&c.kubectl(&["get", "deployment", "sleepers", "-o", "json"])).unwrap();
        let j: Value = serde_json::from_str(&c.kubectl(&["get", "job", "greeter", "-o", "json"])).unwrap();
        let available = d["status"]["availableReplicas"].as_i64() == Some(3);
        let complete = j["status"]["succeeded"].as_i64() == Some(2);
        if available && complete {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "deployment {} job {}\n{}\nthe node: {}\n{}",
            d["status"],
            j["status"],
            c.kubectl(&["get", "pods", "-o", "wide"]),
            c.kubectl(&["get", "node", NODE, "-o", "jsonpath={.spec.taints} {.status.conditions}"]),
            c.kubectl(&["get", "events", "--field-selector", "reason=FailedScheduling"]),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let wide = c.kubectl(&["get", "pods", "-l", "app=sleepers", "-o", "wide"]);
    assert_eq!(wide.matches(NODE).count(), 3, "the scheduler placed them here: {wide}");
    // the Job's pods stay as they ended: Succeeded, with their logs, none killed
    let logs = c.kubectl(&["logs", "job/greeter"]);
    assert!(logs.starts_with("hello from wasm") && logs.contains("from-a-job"), "{logs}");
    let job_pods: Value =
        serde_json::from_str(&c.kubectl(&["get", "pods", "-l", "job-name=greeter", "-o", "json"])).unwrap();
    let items = job_pods["items"].as_array().unwrap();
    assert_eq!(items.len(), 2, "no extra pods were made for killed ones: {job_pods}");
    assert!(items.iter().all(|p| p["status"]["phase"] == "Succeeded"), "{job_pods}");

    // a Linux pod placed by the scheduler (it tolerates the taint), reached by kubectl
    // logs and exec through the API server; its imageID names the digest
    c.api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: shell\nspec:\n  terminationGracePeriodSeconds: 1\n  tolerations:\n  - key: wasmlet.dev/node\n    operator: Exists\n  containers:\n  - name: sh\n    image: {busybox}\n    command: [\"sh\", \"-c\", \"echo started; printf no-newline-at-the-end; exec sleep 3600\"]\n"
    ));
    let p = c.wait_pod("shell", "Running", running).await;
    let image_id = p.status.unwrap().container_statuses.unwrap()[0].image_id.clone();
    assert!(image_id.contains("@sha256:"), "imageID {image_id:?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let logs = c.kubectl(&["logs", "shell"]);
        if logs == "started\nno-newline-at-the-end" {
            break;
        }
        assert!(Instant::now() < deadline, "kubectl logs: {logs:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let out = c.kubectl(&["exec", "shell", "--", "sh", "-c", "echo $((6*7)) from $(hostname)"]);
    assert_eq!(out, "42 from shell\n");
    let out = tokio::task::block_in_place(|| c.api.kubectl(&["exec", "shell", "--", "sh", "-c", "exit 3"]));
    assert_eq!(out.status.code(), Some(3), "{}", String::from_utf8_lossy(&out.stderr));
    // `kubectl exec -it` from a real terminal, through the API server: typed lines reach
    // the shell and their output comes back
    let cmd = format!(
        "{} --kubeconfig {} exec -it shell -- sh",
        crate::control_plane::kubectl().display(),
        c.api.admin_kubeconfig().display()
    );
    tokio::task::block_in_place(|| {
        let session = crate::harness::Interactive::start(&cmd);
        session.expect("# ", "the shell's prompt");
        session.type_line("echo typed-$((6*7))");
        session.expect("typed-42", "the output of a typed command");
        session.type_line("exit 5");
        assert_eq!(session.wait(), Some(5), "screen:\n{}", session.screen());
    });

    // kubectl attach through the API server: the container's output from now on
    c.api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: ticker\nspec:\n  terminationGracePeriodSeconds: 1\n  tolerations:\n  - key: wasmlet.dev/node\n    operator: Exists\n  containers:\n  - name: t\n    image: {busybox}\n    command: [\"sh\", \"-c\", \"while true; do echo tick; sleep 0.2; done\"]\n"
    ));
    c.wait_pod("ticker", "Running", running).await;
    let mut attach = std::process::Command::new(crate::control_plane::kubectl())
        .arg("--kubeconfig")
        .arg(c.api.admin_kubeconfig())
        .args(["attach", "ticker", "-c", "t"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let _ = attach.kill();
    let out = attach.wait_with_output().unwrap();
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(seen.matches("tick\n").count() >= 3, "kubectl attach showed: {seen:?}");

    // an ended Linux container (pull policy Always, for :latest) still names its image
    c.api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: once\nspec:\n  restartPolicy: Never\n  tolerations:\n  - key: wasmlet.dev/node\n    operator: Exists\n  containers:\n  - name: c\n    image: {busybox}\n    command: [\"true\"]\n"
    ));
    let p = c.wait_pod("once", "Succeeded", |p| phase(p) == "Succeeded").await;
    let image_id = p.status.unwrap().container_statuses.unwrap()[0].image_id.clone();
    assert!(image_id.contains("@sha256:"), "imageID of an exited container {image_id:?}");
    // the kubelet API through the API server's node proxy, as `kubectl top` and
    // dashboards reach it
    let raw = c.kubectl(&["get", "--raw", &format!("/api/v1/nodes/{NODE}/proxy/stats/summary")]);
    let summary: Value = serde_json::from_str(&raw).unwrap();
    assert_eq!(summary["node"]["nodeName"], NODE);
    // kubectl port-forward through the API server to busybox httpd in a Linux pod
    c.api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: web\nspec:\n  terminationGracePeriodSeconds: 1\n  tolerations:\n  - key: wasmlet.dev/node\n    operator: Exists\n  containers:\n  - name: httpd\n    image: {busybox}\n    command: [\"sh\", \"-c\", \"mkdir -p /www && echo via-kubectl > /www/index.html && exec httpd -f -p 8080 -h /www\"]\n"
    ));
    c.wait_pod("web", "Running", running).await;
    let local = free_port();
    let mut pf = std::process::Command::new(crate::control_plane::kubectl())
        .arg("--kubeconfig")
        .arg(c.api.admin_kubeconfig())
        .args(["port-forward", "pod/web", &format!("{local}:8080")])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let page = loop {
        let out = Command::new("curl")
            .args(["-s", "--max-time", "5"])
            .arg(format!("http://127.0.0.1:{local}/"))
            .output()
            .unwrap();
        let page = String::from_utf8_lossy(&out.stdout).to_string();
        if page.contains("via-kubectl") || Instant::now() > deadline {
            break page;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let _ = pf.kill();
    let _ = pf.wait();
    assert_eq!(page, "via-kubectl\n");

    // scaled down by the real ReplicaSet controller: the surplus pods stop here
    c.kubectl(&["scale", "deployment", "sleepers", "--replicas=1"]);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let local: Value =
            serde_json::from_str(&tokio::task::block_in_place(|| c.agent().ok(&["get", "pods", "-o", "json"])))
                .unwrap();
        let n = local["items"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["metadata"]["name"].as_str().unwrap().starts_with("sleepers-"))
            .count();
        if n == 1 {
            break;
        }
        assert!(Instant::now() < deadline, "{n} sleepers still on the node");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The node's DiskPressure as the kubelet's defaults have it, on a state directory the
/// test fills: the real node lifecycle controller taints the node, the real scheduler
/// keeps a new pod away, and both undo it once the space is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn disk_pressure_taints_the_node_against_new_pods_until_space_returns() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["sleep"]));
    let state = tempfile::tempdir().unwrap();
    // 1 GiB: imagefs.available<15% trips at 153 MiB free, well above the 64 MiB the
    // agent keeps for its own state
    let disk = Tmpfs::mount(state.path(), "1g");
    let kubelet_defaults = "memory.available<100Mi,nodefs.available<10%,nodefs.inodesFree<5%,imagefs.available<15%";
    let c = Cluster::start_in(false, &[], state, &["--eviction-hard", kubelet_defaults]).await;
    c.wait_node_ready("True", Duration::from_secs(30)).await;
    let nodes: Api<Node> = Api::all(c.admin.clone());
    let wait_node = |what: &'static str, check: fn(&Node) -> bool| {
        let nodes = nodes.clone();
        async move {
            let deadline = Instant::now() + Duration::from_secs(45);
            loop {
                let n = nodes.get(NODE).await.unwrap();
                if check(&n) {
                    return n;
                }
                assert!(Instant::now() < deadline, "the node is not {what} within 45 s: {:?}", n.status);
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    };
    fn tainted(n: &Node) -> bool {
        n.spec
            .as_ref()
            .and_then(|s| s.taints.as_ref())
            .is_some_and(|t| t.iter().any(|t| t.key == "node.kubernetes.io/disk-pressure" && t.effect == "NoSchedule"))
    }
    assert_eq!(node_condition(&wait_node("registered", |_| true).await, "DiskPressure").as_deref(), Some("False"));

    // 100 MiB left of 1 GiB
    let filler = c.agent().state_dir().join("filler");
    tokio::task::block_in_place(|| fill(&disk, &filler, 100 << 20));
    let n = wait_node("in DiskPressure", |n| node_condition(n, "DiskPressure").as_deref() == Some("True")).await;
    let cond = n.status.unwrap().conditions.unwrap().into_iter().find(|c| c.type_ == "DiskPressure").unwrap();
    assert_eq!(cond.reason.as_deref(), Some("KubeletHasDiskPressure"));
    wait_node("tainted node.kubernetes.io/disk-pressure:NoSchedule", tainted).await;
    // the event is recorded on its own, after the status: it may come a moment later
    let events: Api<Event> = Api::namespaced(c.admin.clone(), "default");
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let node_events = events.list(&Default::default()).await.unwrap();
        if node_events.items.iter().any(|e| e.reason.as_deref() == Some("NodeHasDiskPressure")) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no NodeHasDiskPressure event within 15 s: {:?}",
            node_events.items.iter().map(|e| e.reason.clone()).collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // a new pod is kept away, naming the taint
    c.api.apply(&format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: waits\nspec:\n  runtimeClassName: wasmlet\n  containers:\n  - name: app\n    image: {}\n    args: [\"3600\"]\n",
        apps.image("sleep", "v1")
    ));
    let deadline = Instant::now() + Duration::from_secs(45);
    loop {
        let list = events.list(&Default::default()).await.unwrap();
        let failed = list.items.iter().find(|e| {
            e.involved_object.name.as_deref() == Some("waits") && e.reason.as_deref() == Some("FailedScheduling")
        });
        if let Some(e) = failed {
            assert!(e.message.as_deref().unwrap_or("").contains("disk-pressure"), "{:?}", e.message);
            break;
        }
        assert!(Instant::now() < deadline, "no FailedScheduling for the pod:\n{}", c.kubectl(&["get", "events"]));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let p = c.pods().get("waits").await.unwrap();
    assert_eq!(p.spec.unwrap().node_name, None, "not placed while the node is under pressure");

    // the space comes back: the condition, the taint and the pod follow
    std::fs::remove_file(&filler).unwrap();
    wait_node("out of DiskPressure", |n| node_condition(n, "DiskPressure").as_deref() == Some("False")).await;
    wait_node("untainted", |n| !tainted(n)).await;
    c.wait_pod_for("waits", "Running once the taint is gone", Duration::from_secs(90), running).await;
    drop(c);
    drop(disk);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn repeated_events_are_counted_up_and_made_again_when_the_api_server_lost_them() {
    let apps = tokio::task::block_in_place(|| Apps::push(&["sleep"]));
    let c = Cluster::start().await;
    // a readiness probe that fails every second: the same Warning again and again
    let mut pod = wasm_pod("unready", &apps.image("sleep", "v1"), &["3600"], "Always");
    pod["spec"]["containers"][0]["readinessProbe"] = json!({"tcpSocket": {"port": 1}, "periodSeconds": 1});
    c.create_pod(pod).await;
    let events: Api<Event> = Api::namespaced(c.admin.clone(), "default");
    let unhealthy = || async {
        let list = events.list(&Default::default()).await.unwrap();
        list.items
            .into_iter()
            .find(|e| e.involved_object.name.as_deref() == Some("unready") && e.reason.as_deref() == Some("Unhealthy"))
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if unhealthy().await.is_some_and(|e| e.count.unwrap_or(0) >= 3) {
            break;
        }
        assert!(Instant::now() < deadline, "no counted-up Unhealthy event:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // the API server loses them (as its event TTL does): the next repeat makes it again
    c.kubectl(&["delete", "events", "--all"]);
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some(e) = unhealthy().await {
            assert!(e.count.unwrap_or(0) > 1, "made again with the count the node has: {e:?}");
            break;
        }
        assert!(Instant::now() < deadline, "the lost event was not made again:\n{}", c.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
