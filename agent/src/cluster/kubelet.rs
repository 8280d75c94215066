//! The kubelet API on :10250, over TLS, as the API server, metrics-server and Prometheus
//! reach it.
//!
//! Authentication: a client certificate that chains to the client CA (its CN is the
//! user, its Os the groups), or a bearer token the API server vouches for (TokenReview,
//! cached 2 minutes). Anything else is 401. Authorization: a SubjectAccessReview on
//! `nodes/<subresource>` named after this node, with the kubelet's mapping (`/stats` →
//! stats, `/metrics` → metrics, `/logs` → log, `/pods` → pods then proxy, everything
//! else → proxy) and the verb from the method; exec, attach, portForward and run always
//! need `create`. Allowed answers are cached 5 minutes, denials 30 s. 403 otherwise.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::{Api, PostParams};
use serde_json::{Value, json};

use super::ClusterConfig;
use super::pods::PodSync;
use crate::http::{ApiError, Body, full, json_response, parse_query};
use crate::pod::Manager;
use crate::time::rfc3339 as time;

const AUTHN_TTL: Duration = Duration::from_secs(120);
const ALLOWED_TTL: Duration = Duration::from_secs(300);
const DENIED_TTL: Duration = Duration::from_secs(30);

/// A caller, as authenticated.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

/// An authorization question: who, which verb, which `nodes` subresource.
type Decision = (User, String, String);

pub struct KubeletApi {
    client: kube::Client,
    mgr: Arc<Manager>,
    cfg: Arc<ClusterConfig>,
    sync: Arc<PodSync>,
    tokens: Mutex<HashMap<String, (Option<User>, Instant)>>,
    decisions: Mutex<HashMap<Decision, (bool, Instant)>>,
    started: chrono::DateTime<chrono::Utc>,
    /// Cumulative CPU readings, turned into `usageNanoCores`.
    rates: CpuRates,
}

/// How often CPU is read in the background, as cAdvisor's housekeeping: a first
/// scrape then already has a rate.
const HOUSEKEEPING: Duration = Duration::from_secs(10);

/// The last cumulative CPU reading of each node, pod and container, and the rate
/// between the last two: `usageNanoCores` in the summary, which `kubectl top` (through
/// metrics-server's summary source) shows.
#[derive(Default)]
struct CpuRates(Mutex<HashMap<String, CpuReading>>);

#[derive(Clone, Copy)]
struct CpuReading {
    at: Instant,
    cpu_ns: u64,
    nano_cores: Option<u64>,
}

impl CpuRates {
    /// Records `cpu_ns` for `key` at `now`, and gives the rate since the previous reading
    /// (one less than 1 s old keeps the rate it had; a counter that went back, a new
    /// container under an old key, starts again).
    fn rate(&self, key: &str, now: Instant, cpu_ns: u64) -> Option<u64> {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let reading = match m.get(key) {
            Some(r) if now.duration_since(r.at) < Duration::from_secs(1) => return r.nano_cores,
            Some(r) if cpu_ns >= r.cpu_ns => {
                let secs = now.duration_since(r.at).as_secs_f64();
                CpuReading { at: now, cpu_ns, nano_cores: Some(((cpu_ns - r.cpu_ns) as f64 / secs) as u64) }
            }
            _ => CpuReading { at: now, cpu_ns, nano_cores: None },
        };
        m.insert(key.to_string(), reading);
        reading.nano_cores
    }

    /// Forgets what was not read for 5 minutes (deleted pods).
    fn prune(&self, now: Instant) {
        let mut m = self.0.lock().unwrap_or_else(|e| e.into_inner());
        m.retain(|_, r| now.duration_since(r.at) < Duration::from_secs(300));
    }
}

impl std::fmt::Debug for KubeletApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubeletApi").finish_non_exhaustive()
    }
}

impl KubeletApi {
    pub fn new(client: kube::Client, mgr: Arc<Manager>, cfg: Arc<ClusterConfig>, sync: Arc<PodSync>) -> Arc<Self> {
        Arc::new(KubeletApi {
            client,
            mgr,
            cfg,
            sync,
            tokens: Mutex::new(HashMap::new()),
            decisions: Mutex::new(HashMap::new()),
            started: chrono::Utc::now(),
            rates: CpuRates::default(),
        })
    }

    /// Reads CPU every 10 s while the API runs.
    async fn housekeeping(api: std::sync::Weak<KubeletApi>) {
        loop {
            match api.upgrade() {
                Some(a) => {
                    a.summary();
                    a.rates.prune(Instant::now());
                }
                None => return,
            }
            tokio::time::sleep(HOUSEKEEPING).await;
        }
    }
}

/// The TLS configuration: our serving certificate; client certificates optional, and
/// checked against `client_ca` when given.
pub fn tls_config(client_ca: &[u8], (cert, key): &(String, String)) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(client_ca) {
        roots.add(c?)?;
    }
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(cert.as_bytes()).collect::<Result<_, _>>()?;
    let key = PrivateKeyDer::from_pem_slice(key.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// The user a verified client certificate names.
fn cert_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let groups = subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    Some(User { name, groups })
}

/// Serves until the process ends.
pub async fn serve(api: Arc<KubeletApi>, client_ca: &[u8], serving: (String, String)) -> anyhow::Result<()> {
    let tls = Arc::new(tls_config(client_ca, &serving)?);
    let addr = format!("{}:{}", api.cfg.kubelet_address, api.cfg.kubelet_port);
    let listener = tokio::net::TcpListener::bind(&addr)
        .await
        .map_err(|e| anyhow::anyhow!("binding the kubelet API on {addr}: {e}"))?;
    tracing::info!(%addr, "kubelet API listening");
    eprintln!("wasmlet: kubelet API on https://{addr}");
    tokio::spawn(KubeletApi::housekeeping(Arc::downgrade(&api)));
    let acceptor = tokio_rustls::TlsAcceptor::from(tls);
    let mut refusing = false;
    loop {
        let (tcp, _) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                if !std::mem::replace(&mut refusing, true) {
                    tracing::warn!(error = %e, "cannot accept connections; retrying");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        refusing = false;
        let (api, acceptor) = (api.clone(), acceptor.clone());
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(error = %e, "TLS handshake failed");
                    return;
                }
            };
            let user = tls.get_ref().1.peer_certificates().and_then(|c| c.first()).and_then(|c| cert_user(c.as_ref()));
            let service = hyper::service::service_fn(move |req| {
                let (api, user) = (api.clone(), user.clone());
                async move { Ok::<_, Infallible>(api.handle(user, req).await) }
            });
            let io = hyper_util::rt::TokioIo::new(tls);
            let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).with_upgrades().await;
        });
    }
}

fn text(code: StatusCode, body: impl Into<Bytes>) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "text/plain; charset=utf-8")
        .body(full(body.into()))
        .expect("response")
}

/// The authorization attributes of a request: verb and `nodes` subresources to try.
pub fn attributes(method: &Method, path: &str) -> (&'static str, Vec<&'static str>) {
    let first = path.trim_start_matches('/').split('/').next().unwrap_or("");
    let streaming = matches!(first, "exec" | "attach" | "portForward" | "run");
    let verb = if streaming {
        "create"
    } else {
        match *method {
            Method::POST => "create",
            Method::PUT => "update",
            Method::PATCH => "patch",
            Method::DELETE => "delete",
            _ => "get",
        }
    };
    let subresources = match first {
        "stats" => vec!["stats"],
        "metrics" => vec!["metrics"],
        "logs" => vec!["log"],
        "checkpoint" => vec!["checkpoint"],
        "pods" | "runningpods" => vec!["pods", "proxy"],
        "healthz" => vec!["healthz", "proxy"],
        "configz" => vec!["configz", "proxy"],
        _ => vec!["proxy"],
    };
    (verb, subresources)
}

impl KubeletApi {
    async fn handle(self: Arc<Self>, cert: Option<User>, req: Request<Incoming>) -> Response<Body> {
        let user = match self.authenticate(cert, &req).await {
            Some(u) => u,
            None => return text(StatusCode::UNAUTHORIZED, "Unauthorized"),
        };
        let path = req.uri().path().to_string();
        let (verb, subresources) = attributes(req.method(), &path);
        let mut allowed = false;
        for sub in &subresources {
            if self.authorize(&user, verb, sub).await {
                allowed = true;
                break;
            }
        }
        if !allowed {
            let sub = subresources.last().copied().unwrap_or("proxy");
            return text(
                StatusCode::FORBIDDEN,
                format!("Forbidden (user={}, verb={verb}, resource=nodes, subresource={sub})", user.name),
            );
        }
        match self.route(req).await {
            Ok(r) => r,
            Err(e) => text(e.status, e.message),
        }
    }

    async fn authenticate(&self, cert: Option<User>, req: &Request<Incoming>) -> Option<User> {
        let token = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(|t| t.trim().to_string());
        let Some(token) = token else { return cert };
        if let Some((user, at)) = self.tokens.lock().unwrap_or_else(|e| e.into_inner()).get(&token)
            && at.elapsed() < AUTHN_TTL
        {
            return user.clone();
        }
        let review =
            TokenReview { spec: TokenReviewSpec { token: token.clone(), ..Default::default() }, ..Default::default() };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let user = match api.create(&PostParams::default(), &review).await {
            Ok(r) => r
                .status
                .filter(|s| s.authenticated == Some(true))
                .and_then(|s| s.user)
                .map(|u| User { name: u.username.unwrap_or_default(), groups: u.groups.unwrap_or_default() }),
            Err(e) => {
                // not cached: the API server may be back in a moment
                tracing::warn!(error = %e, "TokenReview failed");
                return None;
            }
        };
        self.tokens.lock().unwrap_or_else(|e| e.into_inner()).insert(token, (user.clone(), Instant::now()));
        user
    }

    async fn authorize(&self, user: &User, verb: &str, subresource: &str) -> bool {
        let key = (user.clone(), verb.to_string(), subresource.to_string());
        if let Some((ok, at)) = self.decisions.lock().unwrap_or_else(|e| e.into_inner()).get(&key)
            && at.elapsed() < if *ok { ALLOWED_TTL } else { DENIED_TTL }
        {
            return *ok;
        }
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(user.name.clone()),
                groups: Some(user.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(verb.into()),
                    group: Some(String::new()),
                    resource: Some("nodes".into()),
                    subresource: Some(subresource.into()),
                    name: Some(self.cfg.node_name.clone()),
                    ..Default::default()
                }),
                ..Default::default()
            },
            ..Default::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        match api.create(&PostParams::default(), &review).await {
            Ok(r) => {
                let ok = r.status.is_some_and(|s| s.allowed);
                self.decisions.lock().unwrap_or_else(|e| e.into_inner()).insert(key, (ok, Instant::now()));
                ok
            }
            Err(e) => {
                tracing::warn!(error = %e, "SubjectAccessReview failed");
                false
            }
        }
    }

    async fn route(self: &Arc<Self>, req: Request<Incoming>) -> Result<Response<Body>, ApiError> {
        let path = req.uri().path().to_string();
        let query = parse_query(req.uri().query().unwrap_or(""));
        let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
        match (req.method().clone(), parts.as_slice()) {
            (Method::GET, ["healthz"]) | (Method::GET, ["healthz", "ping"]) => Ok(text(StatusCode::OK, "ok")),
            (Method::GET, ["pods"]) => {
                let ip = &self.cfg.node_ip;
                let items: Vec<Value> = self.mgr.list()?.iter().map(|r| crate::pod::view::pod_json(r, ip)).collect();
                Ok(json_response(
                    StatusCode::OK,
                    &json!({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": items}),
                ))
            }
            (Method::GET, ["containerLogs", ns, pod, container]) => {
                let mut q = query.clone();
                q.retain(|(k, _)| k != "container");
                q.push(("container".into(), container.to_string()));
                crate::http::logs::respond(self.mgr.clone(), ns, pod, &q).await
            }
            (Method::GET | Method::POST, ["exec", ns, pod, container] | ["exec", ns, pod, _, container]) => {
                let target = (ns.to_string(), pod.to_string(), container.to_string());
                super::streaming::exec(self.mgr.clone(), target, &query, req).await
            }
            (Method::GET | Method::POST, ["attach", ns, pod, container] | ["attach", ns, pod, _, container]) => {
                let target = (ns.to_string(), pod.to_string(), container.to_string());
                super::streaming::attach(self.mgr.clone(), target, &query, req).await
            }
            (Method::GET | Method::POST, ["portForward", ns, pod] | ["portForward", ns, pod, _]) => {
                super::streaming::port_forward(self.mgr.clone(), (ns.to_string(), pod.to_string()), req).await
            }
            (Method::GET, ["stats", "summary"]) => Ok(json_response(StatusCode::OK, &self.summary())),
            (Method::GET, ["metrics", "resource"]) => Ok(prometheus(self.resource_metrics())),
            (Method::GET, ["metrics", "cadvisor"]) => Ok(prometheus(self.cadvisor_metrics())),
            (Method::GET, ["metrics"]) => Ok(prometheus(self.metrics())),
            _ => Err(ApiError::new(StatusCode::NOT_FOUND, format!("404 page not found: {path}"))),
        }
    }

    /// `/stats/summary` (k8s.io/kubelet stats/v1alpha1): the node and each running pod.
    fn summary(&self) -> Value {
        let now = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        let host = host_usage();
        let fs = fs_stats(&self.cfg.state_dir, &now);
        let at = Instant::now();
        let mut pods = Vec::new();
        for rec in self.mgr.list().unwrap_or_default() {
            let mut containers = Vec::new();
            let (mut cpu, mut mem) = (0u64, 0u64);
            for (i, c) in rec.plan.containers.iter().enumerate() {
                let Some(u) = self.mgr.usage(&rec, i) else { continue };
                cpu += u.cpu_ns;
                mem += u.memory_bytes;
                let started = match &rec.status.containers[i].state {
                    crate::pod::state::State::Running { started_at } => time(*started_at),
                    _ => now.clone(),
                };
                let cores = self.rates.rate(&format!("{}/{}", rec.uid, c.name), at, u.cpu_ns);
                containers.push(json!({
                    "name": c.name, "startTime": started,
                    "cpu": {"time": now, "usageNanoCores": cores, "usageCoreNanoSeconds": u.cpu_ns},
                    "memory": {"time": now, "workingSetBytes": u.memory_bytes, "usageBytes": u.memory_bytes},
                }));
            }
            if containers.is_empty() {
                continue;
            }
            pods.push(json!({
                "podRef": {"name": rec.name(), "namespace": rec.namespace(), "uid": rec.uid},
                "startTime": time(rec.status.start_time.unwrap_or(rec.created_at)),
                "containers": containers,
                "cpu": {"time": now, "usageNanoCores": self.rates.rate(&rec.uid, at, cpu), "usageCoreNanoSeconds": cpu},
                "memory": {"time": now, "workingSetBytes": mem, "usageBytes": mem},
            }));
        }
        json!({
            "node": {
                "nodeName": self.cfg.node_name,
                "startTime": self.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                "cpu": {"time": now, "usageNanoCores": self.rates.rate("", at, host.cpu_ns), "usageCoreNanoSeconds": host.cpu_ns},
                "memory": {
                    "time": now, "availableBytes": host.available, "usageBytes": host.used,
                    "workingSetBytes": host.used, "rssBytes": self_rss(),
                },
                "fs": fs,
                "runtime": {"imageFs": fs},
                "rlimit": {"time": now, "maxpid": host.pid_max, "curproc": host.procs},
                "systemContainers": [{"name": "kubelet", "startTime": self.started.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
                    "memory": {"time": now, "rssBytes": self_rss(), "workingSetBytes": self_rss()}}],
            },
            "pods": pods,
        })
    }

    /// `/metrics/resource`: what metrics-server scrapes (`kubectl top`).
    fn resource_metrics(&self) -> String {
        let ms = chrono::Utc::now().timestamp_millis();
        let host = host_usage();
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, samples: Vec<(String, f64)>| {
            family(&mut out, (name, kind, help), samples, ms)
        };
        metric(
            "node_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the node in core-seconds",
            vec![(String::new(), host.cpu_ns as f64 / 1e9)],
        );
        metric(
            "node_memory_working_set_bytes",
            "gauge",
            "[STABLE] Current working set of the node in bytes",
            vec![(String::new(), host.used as f64)],
        );
        let (mut ccpu, mut cmem, mut cstart, mut pcpu, mut pmem) = (vec![], vec![], vec![], vec![], vec![]);
        for rec in self.mgr.list().unwrap_or_default() {
            let (mut cpu, mut mem, mut any) = (0u64, 0u64, false);
            for (i, c) in rec.plan.containers.iter().enumerate() {
                let Some(u) = self.mgr.usage(&rec, i) else { continue };
                any = true;
                cpu += u.cpu_ns;
                mem += u.memory_bytes;
                let labels =
                    format!("{{container=\"{}\",namespace=\"{}\",pod=\"{}\"}}", c.name, rec.namespace(), rec.name());
                ccpu.push((labels.clone(), u.cpu_ns as f64 / 1e9));
                cmem.push((labels.clone(), u.memory_bytes as f64));
                if let crate::pod::state::State::Running { started_at } = rec.status.containers[i].state {
                    cstart.push((labels, started_at as f64 / 1e3));
                }
            }
            if any {
                let labels = format!("{{namespace=\"{}\",pod=\"{}\"}}", rec.namespace(), rec.name());
                pcpu.push((labels.clone(), cpu as f64 / 1e9));
                pmem.push((labels, mem as f64));
            }
        }
        metric(
            "container_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the container in core-seconds",
            ccpu,
        );
        metric(
            "container_memory_working_set_bytes",
            "gauge",
            "[STABLE] Current working set of the container in bytes",
            cmem,
        );
        metric(
            "container_start_time_seconds",
            "gauge",
            "[STABLE] Start time of the container since unix epoch in seconds",
            cstart,
        );
        metric(
            "pod_cpu_usage_seconds_total",
            "counter",
            "[STABLE] Cumulative cpu time consumed by the pod in core-seconds",
            pcpu,
        );
        metric("pod_memory_working_set_bytes", "gauge", "[STABLE] Current working set of the pod in bytes", pmem);
        out.push_str("# HELP resource_scrape_error [STABLE] 1 if there was an error while getting container metrics, 0 otherwise\n# TYPE resource_scrape_error gauge\nresource_scrape_error 0\n");
        out
    }

    /// `/metrics/cadvisor`: cAdvisor's container series, as Prometheus scrapes them from
    /// the kubelet, with cAdvisor's labels (`id` is the cgroup-like path; the node is
    /// `id="/"`).
    fn cadvisor_metrics(&self) -> String {
        let ms = chrono::Utc::now().timestamp_millis();
        let host = host_usage();
        let root = "{container=\"\",id=\"/\",image=\"\",name=\"\",namespace=\"\",pod=\"\"}".to_string();
        let (mut cpu, mut ws, mut usage, mut start) = (
            vec![(root.clone(), host.cpu_ns as f64 / 1e9)],
            vec![(root.clone(), host.used as f64)],
            vec![(root, host.used as f64)],
            vec![],
        );
        for rec in self.mgr.list().unwrap_or_default() {
            for (i, c) in rec.plan.containers.iter().enumerate() {
                let Some(u) = self.mgr.usage(&rec, i) else { continue };
                let st = &rec.status.containers[i];
                let labels = format!(
                    "{{container=\"{c}\",id=\"/kubepods/pod{uid}/{c}\",image=\"{image}\",name=\"{uid}-{c}-{n}\",namespace=\"{ns}\",pod=\"{pod}\"}}",
                    c = c.name,
                    uid = rec.uid,
                    image = st.image,
                    n = st.instances,
                    ns = rec.namespace(),
                    pod = rec.name()
                );
                cpu.push((labels.clone(), u.cpu_ns as f64 / 1e9));
                ws.push((labels.clone(), u.memory_bytes as f64));
                usage.push((labels.clone(), u.memory_bytes as f64));
                if let crate::pod::state::State::Running { started_at } = st.state {
                    start.push((labels, started_at as f64 / 1e3));
                }
            }
        }
        let mut out = String::new();
        for (name, kind, help, samples) in [
            ("container_cpu_usage_seconds_total", "counter", "Cumulative cpu time consumed in seconds.", cpu),
            ("container_memory_working_set_bytes", "gauge", "Current working set in bytes.", ws),
            (
                "container_memory_usage_bytes",
                "gauge",
                "Current memory usage in bytes, including all memory regardless of when it was accessed",
                usage,
            ),
            (
                "container_start_time_seconds",
                "gauge",
                "Start time of the container since unix epoch in seconds.",
                start,
            ),
        ] {
            family(&mut out, (name, kind, help), samples, ms);
        }
        out
    }

    /// `/metrics`: the agent's own, with the kubelet's pod start SLI.
    fn metrics(&self) -> String {
        let totals = self.mgr.start_totals();
        let mut out = String::from(
            "# HELP kubelet_pod_start_sli_duration_seconds [BETA] Duration in seconds to start a pod, excluding time to pull images and run init containers, measured from pod creation timestamp to when all its containers are reported as started and observed via watch\n# TYPE kubelet_pod_start_sli_duration_seconds histogram\n",
        );
        for (b, n) in crate::pod::starts::SLI_BUCKETS.iter().zip(totals.buckets) {
            out.push_str(&format!("kubelet_pod_start_sli_duration_seconds_bucket{{le=\"{b}\"}} {n}\n"));
        }
        out.push_str(&format!("kubelet_pod_start_sli_duration_seconds_bucket{{le=\"+Inf\"}} {}\n", totals.count));
        out.push_str(&format!("kubelet_pod_start_sli_duration_seconds_sum {}\n", totals.sum));
        out.push_str(&format!("kubelet_pod_start_sli_duration_seconds_count {}\n", totals.count));
        let pods = self.mgr.list().unwrap_or_default();
        let running = pods.iter().filter(|r| r.status.phase == crate::pod::state::Phase::Running).count();
        let containers: usize = pods
            .iter()
            .map(|r| {
                r.status
                    .containers
                    .iter()
                    .filter(|c| matches!(c.state, crate::pod::state::State::Running { .. }))
                    .count()
            })
            .sum();
        out.push_str(&format!("# HELP kubelet_running_pods [ALPHA] Number of pods that have a running pod sandbox\n# TYPE kubelet_running_pods gauge\nkubelet_running_pods {running}\n"));
        out.push_str(&format!("# HELP kubelet_running_containers [ALPHA] Number of containers currently running\n# TYPE kubelet_running_containers gauge\nkubelet_running_containers{{container_state=\"running\"}} {containers}\n"));
        let connected = self.sync.connected.load(std::sync::atomic::Ordering::Relaxed);
        out.push_str(&format!("# HELP wasmlet_api_server_connected 1 while the pod watch is connected to the API server\n# TYPE wasmlet_api_server_connected gauge\nwasmlet_api_server_connected {}\n", u8::from(connected)));
        out
    }
}

/// One metric family in the Prometheus text format, each sample stamped `ms`.
fn family(out: &mut String, (name, kind, help): (&str, &str, &str), samples: Vec<(String, f64)>, ms: i64) {
    out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n"));
    for (labels, v) in samples {
        out.push_str(&format!("{name}{labels} {v} {ms}\n"));
    }
}

fn prometheus(body: String) -> Response<Body> {
    Response::builder().header("content-type", "text/plain; version=0.0.4").body(full(body)).expect("response")
}

struct Host {
    cpu_ns: u64,
    available: u64,
    used: u64,
    pid_max: u64,
    procs: u64,
}

fn host_usage() -> Host {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let jiffies: Vec<u64> =
        stat.lines().next().unwrap_or("").split_whitespace().skip(1).filter_map(|v| v.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal; USER_HZ is 100
    let busy: u64 = jiffies.iter().enumerate().filter(|(i, _)| *i != 3 && *i != 4 && *i < 8).map(|(_, v)| v).sum();
    let total = crate::node::meminfo("MemTotal").unwrap_or(0);
    let available = crate::node::meminfo("MemAvailable").unwrap_or(0);
    let (procs, pid_max) = crate::node::processes();
    let pid_max = pid_max.unwrap_or(0);
    Host { cpu_ns: busy * 10_000_000, available, used: total.saturating_sub(available), pid_max, procs }
}

fn self_rss() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4096)
}

fn fs_stats(dir: &std::path::Path, now: &str) -> Value {
    match rustix::fs::statvfs(dir) {
        Ok(s) => json!({
            "time": now,
            "availableBytes": s.f_bavail * s.f_frsize,
            "capacityBytes": s.f_blocks * s.f_frsize,
            "usedBytes": (s.f_blocks - s.f_bfree) * s.f_frsize,
            "inodesFree": s.f_ffree, "inodes": s.f_files, "inodesUsed": s.f_files - s.f_ffree,
        }),
        Err(_) => json!({"time": now}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu_rates_come_from_readings_at_least_a_second_apart() {
        let r = CpuRates::default();
        let t0 = Instant::now();
        assert_eq!(r.rate("c", t0, 1_000_000_000), None, "one reading is no rate");
        // half a core over 2 s
        assert_eq!(r.rate("c", t0 + Duration::from_secs(2), 2_000_000_000), Some(500_000_000));
        // a reading right after keeps the rate instead of dividing by a sliver of time
        assert_eq!(r.rate("c", t0 + Duration::from_millis(2100), 2_900_000_000), Some(500_000_000));
        // a counter that went back (a new container instance) starts again
        assert_eq!(r.rate("c", t0 + Duration::from_secs(4), 10), None);
        r.prune(t0 + Duration::from_secs(400));
        assert_eq!(r.rate("c", t0 + Duration::from_secs(401), 20), None, "forgotten");
    }

    #[test]
    fn paths_map_to_the_kubelets_authorization_attributes() {
        assert_eq!(attributes(&Method::GET, "/stats/summary"), ("get", vec!["stats"]));
        assert_eq!(attributes(&Method::GET, "/metrics/resource"), ("get", vec!["metrics"]));
        assert_eq!(attributes(&Method::GET, "/metrics/cadvisor"), ("get", vec!["metrics"]));
        assert_eq!(attributes(&Method::GET, "/logs/syslog"), ("get", vec!["log"]));
        assert_eq!(attributes(&Method::GET, "/containerLogs/default/p/c"), ("get", vec!["proxy"]));
        assert_eq!(attributes(&Method::GET, "/pods"), ("get", vec!["pods", "proxy"]));
        assert_eq!(attributes(&Method::GET, "/healthz"), ("get", vec!["healthz", "proxy"]));
        // a WebSocket upgrade arrives as GET; exec still needs create
        assert_eq!(attributes(&Method::GET, "/exec/default/p/c"), ("create", vec!["proxy"]));
        assert_eq!(attributes(&Method::POST, "/attach/default/p/c"), ("create", vec!["proxy"]));
        assert_eq!(attributes(&Method::POST, "/portForward/default/p"), ("create", vec!["proxy"]));
        assert_eq!(attributes(&Method::DELETE, "/pods"), ("delete", vec!["pods", "proxy"]));
    }
}
