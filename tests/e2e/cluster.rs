//! Cluster mode: the real `wasmlet serve --kubeconfig` against the stand-in API server
//! (`kube-standin`: real TLS, real `kube` client wire protocol, list/watch with
//! resourceVersions, 409s, the status subresource, the Node authorizer), pods scheduled
//! to it through that API, and its kubelet API reached over TLS with curl and a SPDY
//! client.

use std::process::Command;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{ConfigMap, Event, Node, Pod, Secret};
use kube::api::{Api, DeleteParams, PostParams};
use kube_standin::{ADMIN_TOKEN, ApiServer, Grant, User};
use serde_json::{Value, json};

use crate::common::free_port;
use crate::harness::{Agent, Apps, push_busybox};

const NODE: &str = "edge-1";

struct Cluster {
    api: ApiServer,
    admin: kube::Client,
    agent: Option<Agent>,
    port: u16,
    dir: tempfile::TempDir,
}

async fn client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

impl Cluster {
    /// The stand-in, and an agent joined to it as `edge-1` with a client certificate.
    async fn start() -> Cluster {
        let api = ApiServer::start().await.unwrap();
        let admin = client(&api.kubeconfig_token(ADMIN_TOKEN)).await;
        let dir = tempfile::tempdir().unwrap();
        let kubeconfig = dir.path().join("node.kubeconfig");
        let node_user = User::new(&format!("system:node:{NODE}"), &["system:nodes", "system:authenticated"]);
        std::fs::write(&kubeconfig, api.kubeconfig_cert(&node_user)).unwrap();
        let port = free_port();
        let mut c = Cluster { api, admin, agent: None, port, dir };
        c.start_agent(&kubeconfig);
        c
    }

    fn start_agent(&mut self, kubeconfig: &std::path::Path) {
        let port = self.port.to_string();
        let flags = [
            "--kubeconfig",
            kubeconfig.to_str().unwrap(),
            "--node-name",
            NODE,
            "--node-ip",
            "127.0.0.1",
            "--address",
            "127.0.0.1",
            "--port",
            &port,
            "--node-labels",
            "site=lab",
        ];
        self.agent = Some(tokio::task::block_in_place(|| Agent::start_with(&flags)));
    }

    fn agent(&self) -> &Agent {
        self.agent.as_ref().unwrap()
    }

    /// The end of the agent's log, for failure messages.
    fn log(&self) -> String {
        let log = std::fs::read_to_string(self.agent().state_dir().join("serve.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
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
        let deadline = Instant::now() + Duration::from_secs(30);
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
        let (cert, key) = self.api.ca().client_cert(user);
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
    let kinds: Vec<(String, String)> =
        status.conditions.unwrap().iter().map(|c| (c.type_.clone(), c.status.clone())).collect();
    for want in [("Ready", "True"), ("MemoryPressure", "False"), ("DiskPressure", "False"), ("PIDPressure", "False")] {
        assert!(kinds.contains(&(want.0.into(), want.1.into())), "condition {want:?} missing from {kinds:?}");
    }
    let capacity = status.capacity.unwrap();
    assert_eq!(capacity["pods"].0, "110");
    assert!(capacity["memory"].0.ends_with("Ki") && capacity["cpu"].0.ends_with('m'));
    assert!(status.allocatable.unwrap().contains_key("ephemeral-storage"));
    let info = status.node_info.unwrap();
    assert!(info.container_runtime_version.starts_with("wasmlet://"), "{info:?}");
    assert!(!info.kernel_version.is_empty() && !info.boot_id.is_empty());
    assert_eq!(status.daemon_endpoints.unwrap().kubelet_endpoint.unwrap().port, c.port as i32);
    assert_eq!(status.addresses.unwrap()[0].address, "127.0.0.1");

    // the lease: held by the node, 40 s, renewed every 10 s
    let leases: Api<Lease> = Api::namespaced(c.admin.clone(), "kube-node-lease");
    let lease = leases.get(NODE).await.unwrap();
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
    let mut pod = wasm_pod("gvisor", &apps.image("sleep", "v1"), &[], "Always");
    pod["spec"]["runtimeClassName"] = json!("gvisor");
    c.create_pod(pod).await;
    let p = c.wait_pod("gvisor", "Failed", |p| phase(p) == "Failed").await;
    let st = p.status.unwrap();
    assert_eq!(st.reason.as_deref(), Some("UnsupportedPodSpec"));
    assert!(st.message.unwrap().contains("spec.runtimeClassName: Unsupported value: \"gvisor\""));
}
