//! A real Kubernetes control plane for the cluster tests: Debian's `etcd` 3.4 and
//! kube-apiserver, kube-controller-manager and kube-scheduler built from Debian's
//! `kubernetes` source package by `scripts/setup-kube.sh` (v1.20). Every component listens
//! on loopback only, on ports of its own, with a temp dir for etcd's data and the
//! certificates; nothing is shared between tests.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine;
use k8s_openapi::api::core::v1::ServiceAccount;
use kube::Api;
use kube_standin::auth::{Ca, User};

use crate::common::free_port;

/// Where `scripts/setup-kube.sh` puts the binaries (`WASMLET_KUBE_CACHE` moves it).
pub fn bin_dir() -> PathBuf {
    let cache = std::env::var_os("WASMLET_KUBE_CACHE").unwrap_or_else(|| "/var/cache/wasmlet/kubernetes".into());
    PathBuf::from(cache).join("bin")
}

pub fn require_kube(name: &str) -> PathBuf {
    let p = bin_dir().join(name);
    assert!(
        p.is_file(),
        "{} is missing: build the control plane with `scripts/setup-kube.sh` (`./dev test` runs it), \
         which builds it from Debian's kubernetes source package",
        p.display()
    );
    p
}

/// The control plane's `kubectl`, v1.20 like the server.
pub fn kubectl() -> PathBuf {
    require_kube("kubectl")
}

/// One running control plane.
pub struct ControlPlane {
    pub dir: tempfile::TempDir,
    pub ca: Ca,
    pub api_port: u16,
    etcd: Option<Child>,
    apiserver: Option<Child>,
    controller_manager: Option<Child>,
    scheduler: Option<Child>,
    /// Extra controller-manager flags (for shorter node-monitor periods).
    cm_flags: Vec<String>,
}

/// Bearer tokens the API server knows from its token file.
pub const ADMIN_TOKEN: &str = "admin-token-0123456789";
/// A bootstrap token (`id.secret`) for CSR bootstrap tests; its Secret is made by
/// [`ControlPlane::bootstrap_token`].
pub const BOOTSTRAP_TOKEN: &str = "abcdef.0123456789abcdef";

impl ControlPlane {
    pub async fn start() -> ControlPlane {
        Self::start_with(&[]).await
    }

    /// `cm_flags` go to the controller-manager (for example a shorter
    /// `--node-monitor-grace-period`).
    pub async fn start_with(cm_flags: &[&str]) -> ControlPlane {
        let etcd_bin = crate::common::require("etcd", "etcd-server");
        let dir = tempfile::tempdir().unwrap();
        let ca = Ca::new();
        let d = dir.path();
        let write = |name: &str, text: &str| {
            let p = d.join(name);
            std::fs::write(&p, text).unwrap();
            p
        };
        write("ca.crt", &ca.cert_pem);
        write("ca.key", &ca.key_pem);
        let (cert, key) = ca.server_cert(&["127.0.0.1", "localhost", "kubernetes", "kubernetes.default.svc"]);
        write("apiserver.crt", &cert);
        write("apiserver.key", &key);
        // the API server's identity toward kubelets: logs, exec, attach, port-forward
        let (cert, key) = ca.client_cert(&User::new("kube-apiserver-kubelet-client", &["system:masters"]));
        write("kubelet-client.crt", &cert);
        write("kubelet-client.key", &key);
        let sa = rcgen::KeyPair::generate().unwrap();
        write("sa.key", &sa.serialize_pem());
        write("sa.pub", &sa.public_key_pem());
        write(
            "tokens.csv",
            &format!(
                "{ADMIN_TOKEN},admin,admin,system:masters\n\
                 node-token-edge-1,system:node:edge-1,node-edge-1,system:nodes\n\
                 viewer-token,viewer,viewer\n\
                 nobody-token,nobody,nobody\n"
            ),
        );

        let etcd_port = free_port();
        let peer_port = free_port();
        let api_port = free_port();
        std::fs::create_dir_all(d.join("etcd")).unwrap();
        let etcd = Command::new(etcd_bin)
            .args(["--name", "default", "--data-dir"])
            .arg(d.join("etcd"))
            .arg(format!("--listen-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--advertise-client-urls=http://127.0.0.1:{etcd_port}"))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!("--initial-cluster=default=http://127.0.0.1:{peer_port}"))
            .stdout(Stdio::null())
            .stderr(log(d, "etcd.log"))
            .spawn()
            .unwrap();
        let mut cp = ControlPlane {
            dir,
            ca,
            api_port,
            etcd: Some(etcd),
            apiserver: None,
            controller_manager: None,
            scheduler: None,
            cm_flags: cm_flags.iter().map(|s| s.to_string()).collect(),
        };
        cp.etcd_port_file(etcd_port);
        cp.start_apiserver();
        cp.wait_ready(Duration::from_secs(60)).await;
        let admin_kc = cp.kubeconfig_token(ADMIN_TOKEN, api_port);
        std::fs::write(cp.path("admin.kubeconfig"), &admin_kc).unwrap();
        cp.start_controllers();
        // pods can be made only once the default service account has its token
        cp.wait_default_service_account().await;
        cp
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn etcd_port_file(&self, port: u16) {
        std::fs::write(self.path("etcd.port"), port.to_string()).unwrap();
    }

    fn start_apiserver(&mut self) {
        let d = self.dir.path();
        let etcd_port = std::fs::read_to_string(self.path("etcd.port")).unwrap();
        let f = |name: &str| d.join(name).display().to_string();
        let child = Command::new(require_kube("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{etcd_port}"))
            .args(["--bind-address=127.0.0.1", "--advertise-address=127.0.0.1", "--insecure-port=0"])
            .arg(format!("--secure-port={}", self.api_port))
            .arg(format!("--cert-dir={}", f("certs")))
            .arg(format!("--tls-cert-file={}", f("apiserver.crt")))
            .arg(format!("--tls-private-key-file={}", f("apiserver.key")))
            .arg(format!("--client-ca-file={}", f("ca.crt")))
            .arg(format!("--token-auth-file={}", f("tokens.csv")))
            .args(["--authorization-mode=Node,RBAC", "--enable-admission-plugins=NodeRestriction"])
            .args(["--enable-bootstrap-token-auth=true", "--allow-privileged=true"])
            .args(["--service-cluster-ip-range=10.96.0.0/16", "--endpoint-reconciler-type=none"])
            .arg("--service-account-issuer=https://kubernetes.default.svc")
            .arg(format!("--service-account-signing-key-file={}", f("sa.key")))
            .arg(format!("--service-account-key-file={}", f("sa.pub")))
            .arg(format!("--kubelet-client-certificate={}", f("kubelet-client.crt")))
            .arg(format!("--kubelet-client-key={}", f("kubelet-client.key")))
            .arg("--kubelet-preferred-address-types=InternalIP,Hostname")
            .stdout(Stdio::null())
            .stderr(log(d, "kube-apiserver.log"))
            .spawn()
            .unwrap();
        self.apiserver = Some(child);
    }

    fn start_controllers(&mut self) {
        let d = self.dir.path().to_path_buf();
        let f = |name: &str| d.join(name).display().to_string();
        let cm = Command::new(require_kube("kube-controller-manager"))
            .arg(format!("--kubeconfig={}", f("admin.kubeconfig")))
            .args(["--port=0", "--secure-port=0", "--bind-address=127.0.0.1", "--leader-elect=false"])
            .args(["--controllers=*,bootstrapsigner,tokencleaner", "--use-service-account-credentials=false"])
            .arg(format!("--root-ca-file={}", f("ca.crt")))
            .arg(format!("--service-account-private-key-file={}", f("sa.key")))
            .arg(format!("--cluster-signing-cert-file={}", f("ca.crt")))
            .arg(format!("--cluster-signing-key-file={}", f("ca.key")))
            .args(&self.cm_flags)
            .stdout(Stdio::null())
            .stderr(log(&d, "kube-controller-manager.log"))
            .spawn()
            .unwrap();
        let sched = Command::new(require_kube("kube-scheduler"))
            .arg(format!("--kubeconfig={}", f("admin.kubeconfig")))
            .args(["--port=0", "--secure-port=0", "--bind-address=127.0.0.1", "--leader-elect=false"])
            .stdout(Stdio::null())
            .stderr(log(&d, "kube-scheduler.log"))
            .spawn()
            .unwrap();
        self.controller_manager = Some(cm);
        self.scheduler = Some(sched);
    }

    pub fn url(&self) -> String {
        format!("https://127.0.0.1:{}", self.api_port)
    }

    /// Waits for `/readyz` (etcd reached, bootstrap controllers done).
    async fn wait_ready(&mut self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            let out = Command::new("curl")
                .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
                .arg(format!("Authorization: Bearer {ADMIN_TOKEN}"))
                .arg(format!("{}/readyz", self.url()))
                .output()
                .unwrap();
            if String::from_utf8_lossy(&out.stdout) == "200" {
                return;
            }
            if let Some(c) = self.apiserver.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                panic!("kube-apiserver exited ({status}):\n{}", self.log_tail("kube-apiserver.log", 30));
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready within {limit:?}:\n{}",
                self.log_tail("kube-apiserver.log", 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn wait_default_service_account(&self) {
        let sas: Api<ServiceAccount> = Api::namespaced(self.admin().await, "default");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(Some(sa)) = sas.get_opt("default").await
                && sa.secrets.as_ref().is_some_and(|s| !s.is_empty())
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "no token for the default service account within 60 s:\n{}",
                self.log_tail("kube-controller-manager.log", 30)
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub fn log_tail(&self, name: &str, n: usize) -> String {
        let text = std::fs::read_to_string(self.path(name)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Stops the API server alone (a lost control plane); etcd keeps the objects.
    pub fn stop_apiserver(&mut self) {
        kill(&mut self.apiserver);
    }

    /// Starts the API server again on the same port, and waits until it is ready.
    pub async fn restart_apiserver(&mut self) {
        kill(&mut self.apiserver);
        self.start_apiserver();
        self.wait_ready(Duration::from_secs(60)).await;
    }

    /// A kubeconfig with a client certificate for `user`, signed by the cluster CA, for
    /// the API server at loopback `port` (its own, or a [`Partition`]'s).
    pub fn kubeconfig_cert(&self, user: &User, port: u16) -> String {
        let (cert, key) = self.ca.client_cert(user);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.kubeconfig(
            port,
            &format!("    client-certificate-data: {}\n    client-key-data: {}\n", b64(&cert), b64(&key)),
        )
    }

    /// A kubeconfig that authenticates with a bearer token.
    pub fn kubeconfig_token(&self, token: &str, port: u16) -> String {
        self.kubeconfig(port, &format!("    token: {token}\n"))
    }

    fn kubeconfig(&self, port: u16, user: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.ca.cert_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: real\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n{user}contexts:\n- name: real\n  context:\n    cluster: real\n    user: user\ncurrent-context: real\n"
        )
    }

    pub fn admin_kubeconfig(&self) -> PathBuf {
        self.path("admin.kubeconfig")
    }

    pub async fn admin(&self) -> kube::Client {
        client(&self.kubeconfig_token(ADMIN_TOKEN, self.api_port)).await
    }

    /// `kubectl` as the cluster admin.
    pub fn kubectl(&self, args: &[&str]) -> std::process::Output {
        Command::new(kubectl()).arg("--kubeconfig").arg(self.admin_kubeconfig()).args(args).output().unwrap()
    }

    /// `kubectl` that must succeed; its stdout.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(out.status.success(), "kubectl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// `kubectl apply -f -` of `yaml`.
    pub fn apply(&self, yaml: &str) -> String {
        let mut child = Command::new(kubectl())
            .arg("--kubeconfig")
            .arg(self.admin_kubeconfig())
            .args(["apply", "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        std::io::Write::write_all(child.stdin.as_mut().unwrap(), yaml.as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "kubectl apply: {}\n{yaml}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    }

    /// RBAC: `subject` (`User:name` or `Group:name`) may use `verbs` on `resources`
    /// (for example `nodes/proxy`), cluster-wide.
    pub fn grant(&self, name: &str, subject: &str, verbs: &[&str], resources: &[&str]) {
        let (kind, who) = subject.split_once(':').unwrap();
        self.apply(&format!(
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {name}\nrules:\n- apiGroups: [\"\"]\n  resources: {resources:?}\n  verbs: {verbs:?}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: {name}\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: {name}\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: {kind}\n  name: {who}\n"
        ));
    }

    /// A bootstrap token Secret for [`BOOTSTRAP_TOKEN`], allowed to ask for node client
    /// certificates (the RBAC kubeadm sets up), with automatic approval of node CSRs.
    pub fn bootstrap_token(&self) {
        let (id, secret) = BOOTSTRAP_TOKEN.split_once('.').unwrap();
        self.apply(&format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: bootstrap-token-{id}\n  namespace: kube-system\ntype: bootstrap.kubernetes.io/token\nstringData:\n  token-id: {id}\n  token-secret: {secret}\n  usage-bootstrap-authentication: \"true\"\n  usage-bootstrap-signing: \"true\"\n  auth-extra-groups: system:bootstrappers:wasmlet\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: wasmlet-bootstrap\nroleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: system:node-bootstrapper\nsubjects:\n- apiGroup: rbac.authorization.k8s.io\n  kind: Group\n  name: system:bootstrappers\n"
        ));
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        kill(&mut self.scheduler);
        kill(&mut self.controller_manager);
        kill(&mut self.apiserver);
        kill(&mut self.etcd);
    }
}

fn kill(c: &mut Option<Child>) {
    if let Some(mut c) = c.take() {
        let _ = c.kill();
        let _ = c.wait();
    }
}

fn log(dir: &Path, name: &str) -> std::fs::File {
    std::fs::OpenOptions::new().create(true).append(true).open(dir.join(name)).unwrap()
}

pub async fn client(kubeconfig: &str) -> kube::Client {
    let kc = kube::config::Kubeconfig::from_yaml(kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await.unwrap();
    kube::Client::try_from(config).unwrap()
}

/// A TCP relay on loopback between the node and the API server: the node's only road to
/// it, which the test cuts as a network partition does. `cut` drops every packet to and
/// from the relay's port with iptables (established connections included, so TCP
/// retransmits and backs off as on a real network), the API server and the test's own
/// client staying up; `heal` removes the rules. Rules left by a failed test go with the
/// relay.
pub struct Partition {
    pub port: u16,
    task: tokio::task::JoinHandle<()>,
    cut: std::sync::Mutex<bool>,
}

impl Partition {
    pub async fn start(upstream: u16) -> Partition {
        crate::common::require("iptables", "iptables");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            while let Ok((mut down, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let Ok(mut up) = tokio::net::TcpStream::connect(("127.0.0.1", upstream)).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut down, &mut up).await;
                });
            }
        });
        Partition { port, task, cut: std::sync::Mutex::new(false) }
    }

    fn rules(&self, action: &str) {
        for dir in ["--dport", "--sport"] {
            let port = self.port.to_string();
            let args = [action, "INPUT", "-i", "lo", "-p", "tcp", dir, &port, "-j", "DROP"];
            let out = Command::new("iptables").args(args).output().unwrap();
            assert!(
                out.status.success() || action == "-D",
                "iptables {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }

    pub fn cut(&self) {
        self.rules("-I");
        *self.cut.lock().unwrap() = true;
    }

    pub fn heal(&self) {
        self.rules("-D");
        *self.cut.lock().unwrap() = false;
    }
}

impl Drop for Partition {
    fn drop(&mut self) {
        if *self.cut.lock().unwrap() {
            self.rules("-D");
        }
        self.task.abort();
    }
}
