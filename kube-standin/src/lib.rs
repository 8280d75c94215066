//! A small stand-in for the Kubernetes API server, for wasmlet's cluster-mode tests and
//! benchmarks (no kube-apiserver can be installed from this machine's package sources).
//!
//! It speaks the real wire protocol to the real `kube` client, over TLS:
//! - create, get, list, watch, update, merge-patch and delete on the resources a kubelet
//!   uses (pods, nodes, leases, configmaps, secrets, events, services, namespaces,
//!   serviceaccounts, runtimeclasses, certificatesigningrequests);
//! - one resourceVersion counter; list returns it, watch replays from it, an old one gets
//!   410 Expired, and an update or patch carrying a stale one gets 409 Conflict;
//! - the `status` subresource (a status write cannot change the spec, and the main
//!   resource's write cannot change the status);
//! - graceful pod deletion: a bound, running pod gets `deletionTimestamp` and
//!   `deletionGracePeriodSeconds` first, and goes on a delete with grace 0;
//! - field selectors `spec.nodeName` and `metadata.name`, equality label selectors;
//! - authentication by client certificate (CN, O) or bearer token, 401 otherwise;
//!   authorization by the Node authorizer's rules for `system:node:<name>`, `system:masters`
//!   and explicit grants; `TokenReview` and `SubjectAccessReview` answered from the same;
//! - certificate signing requests, signed by the cluster CA once approved.
//!
//! Not here: strategic-merge and apply patches (415), admission plugins, defaulting beyond
//! what a node agent reads, pagination (`limit` is ignored; everything comes in one page).

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use base64::Engine;
use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use serde_json::{Value, json};

pub mod auth;
pub mod store;

use auth::Attributes;
pub use auth::{Ca, Grant, User};
use store::{Key, Store};

type Body = BoxBody<Bytes, Infallible>;

/// One kind of object the stand-in keeps.
struct Resource {
    group: &'static str,
    version: &'static str,
    plural: &'static str,
    kind: &'static str,
    namespaced: bool,
    status: bool,
}

const RESOURCES: &[Resource] = &[
    Resource { group: "", version: "v1", plural: "pods", kind: "Pod", namespaced: true, status: true },
    Resource { group: "", version: "v1", plural: "nodes", kind: "Node", namespaced: false, status: true },
    Resource { group: "", version: "v1", plural: "configmaps", kind: "ConfigMap", namespaced: true, status: false },
    Resource { group: "", version: "v1", plural: "secrets", kind: "Secret", namespaced: true, status: false },
    Resource { group: "", version: "v1", plural: "events", kind: "Event", namespaced: true, status: false },
    Resource { group: "", version: "v1", plural: "services", kind: "Service", namespaced: true, status: true },
    Resource { group: "", version: "v1", plural: "namespaces", kind: "Namespace", namespaced: false, status: true },
    Resource {
        group: "",
        version: "v1",
        plural: "serviceaccounts",
        kind: "ServiceAccount",
        namespaced: true,
        status: false,
    },
    Resource {
        group: "coordination.k8s.io",
        version: "v1",
        plural: "leases",
        kind: "Lease",
        namespaced: true,
        status: false,
    },
    Resource {
        group: "node.k8s.io",
        version: "v1",
        plural: "runtimeclasses",
        kind: "RuntimeClass",
        namespaced: false,
        status: false,
    },
    Resource {
        group: "certificates.k8s.io",
        version: "v1",
        plural: "certificatesigningrequests",
        kind: "CertificateSigningRequest",
        namespaced: false,
        status: true,
    },
    Resource {
        group: "authentication.k8s.io",
        version: "v1",
        plural: "tokenreviews",
        kind: "TokenReview",
        namespaced: false,
        status: false,
    },
    Resource {
        group: "authorization.k8s.io",
        version: "v1",
        plural: "subjectaccessreviews",
        kind: "SubjectAccessReview",
        namespaced: false,
        status: false,
    },
];

impl Resource {
    fn api_version(&self) -> String {
        if self.group.is_empty() { self.version.to_string() } else { format!("{}/{}", self.group, self.version) }
    }
}

/// What the server knows, shared by its connections.
struct State {
    store: Mutex<Store>,
    ca: Ca,
    tokens: Mutex<BTreeMap<String, User>>,
    grants: Mutex<Vec<Grant>>,
    requests: AtomicU64,
    /// Requests by `VERB resource[/subresource]`.
    by_kind: Mutex<BTreeMap<String, u64>>,
    /// Requests by authenticated user.
    by_user: Mutex<BTreeMap<String, u64>>,
}

/// A running stand-in. Stop and start it again to play a lost control plane; its objects
/// survive that.
pub struct ApiServer {
    state: Arc<State>,
    addr: SocketAddr,
    tls: Arc<rustls::ServerConfig>,
    accept: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl std::fmt::Debug for ApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiServer").field("addr", &self.addr).finish_non_exhaustive()
    }
}

/// The admin identity tests and benches use (`system:masters`).
pub const ADMIN_TOKEN: &str = "admin-token";

impl ApiServer {
    /// Starts serving on a free loopback port.
    pub async fn start() -> anyhow::Result<ApiServer> {
        let _ = rustls::crypto::ring::default_provider().install_default();
        let ca = Ca::new();
        let (cert, key) = ca.server_cert(&["127.0.0.1", "localhost", "kubernetes"]);
        let tls = Arc::new(server_tls(&ca.cert_pem, &cert, &key)?);
        let mut tokens = BTreeMap::new();
        tokens.insert(ADMIN_TOKEN.to_string(), User::new("admin", &["system:masters", "system:authenticated"]));
        let state = Arc::new(State {
            store: Mutex::new(Store::default()),
            ca,
            tokens: Mutex::new(tokens),
            grants: Mutex::new(Vec::new()),
            requests: AtomicU64::new(0),
            by_kind: Mutex::new(BTreeMap::new()),
            by_user: Mutex::new(BTreeMap::new()),
        });
        for ns in ["default", "kube-system", "kube-node-lease"] {
            let o = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": ns}});
            create_object(&state, &RESOURCES[6], "", o).expect("namespace");
        }
        let sa = json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": {"name": "default"}});
        create_object(&state, &RESOURCES[7], "default", sa).expect("service account");
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = ApiServer { state, addr, tls, accept: Mutex::new(None) };
        server.serve(listener);
        Ok(server)
    }

    fn serve(&self, listener: tokio::net::TcpListener) {
        let (state, tls) = (self.state.clone(), self.tls.clone());
        let task = tokio::spawn(async move {
            let acceptor = tokio_rustls::TlsAcceptor::from(tls);
            // the connections go when this task is aborted
            let mut conns = tokio::task::JoinSet::new();
            loop {
                let Ok((tcp, _)) = listener.accept().await else { continue };
                while conns.try_join_next().is_some() {}
                let (state, acceptor) = (state.clone(), acceptor.clone());
                conns.spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let user = tls
                        .get_ref()
                        .1
                        .peer_certificates()
                        .and_then(|c| c.first())
                        .and_then(|c| auth::cert_user(c.as_ref()));
                    let service = hyper::service::service_fn(move |req| {
                        let (state, user) = (state.clone(), user.clone());
                        async move { Ok::<_, Infallible>(handle(&state, user, req).await) }
                    });
                    let io = hyper_util::rt::TokioIo::new(tls);
                    let _ = hyper::server::conn::http1::Builder::new().serve_connection(io, service).await;
                });
            }
        });
        *self.accept.lock().unwrap() = Some(task);
    }

    /// Closes the listener and every connection (watches end mid-stream).
    pub fn stop(&self) {
        if let Some(t) = self.accept.lock().unwrap().take() {
            t.abort();
        }
    }

    /// Listens again on the same address, with the same objects.
    pub async fn restart(&self) -> anyhow::Result<()> {
        self.stop();
        let mut tries = 0;
        let listener = loop {
            match tokio::net::TcpListener::bind(self.addr).await {
                Ok(l) => break l,
                Err(e) if tries < 50 => {
                    tries += 1;
                    tracing::debug!(error = %e, "rebinding");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                }
                Err(e) => return Err(e.into()),
            }
        };
        self.serve(listener);
        Ok(())
    }

    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    pub fn ca(&self) -> &Ca {
        &self.state.ca
    }

    /// Lets `token` authenticate as `user`.
    pub fn add_token(&self, token: &str, user: User) {
        self.state.tokens.lock().unwrap().insert(token.into(), user);
    }

    pub fn grant(&self, grant: Grant) {
        self.state.grants.lock().unwrap().push(grant);
    }

    /// What the control plane does while a node cannot reach it: a pod created (and
    /// bound) or removed at once (a forced delete), straight in the store.
    pub fn create_direct(&self, plural: &str, namespace: &str, object: Value) -> Value {
        let r = RESOURCES.iter().find(|r| r.plural == plural).expect("a known resource");
        create_object(&self.state, r, namespace, object).unwrap_or_else(|_| panic!("creating a {plural}"))
    }

    pub fn remove_direct(&self, plural: &str, namespace: &str, name: &str) -> Option<Value> {
        let r = RESOURCES.iter().find(|r| r.plural == plural).expect("a known resource");
        self.state.store.lock().unwrap().remove(&key(r, namespace, name))
    }

    /// Requests served so far, and by `VERB resource`.
    pub fn requests(&self) -> (u64, BTreeMap<String, u64>) {
        (self.state.requests.load(Ordering::Relaxed), self.state.by_kind.lock().unwrap().clone())
    }

    /// Authenticated requests of one user so far.
    pub fn requests_of(&self, user: &str) -> u64 {
        self.state.by_user.lock().unwrap().get(user).copied().unwrap_or(0)
    }

    /// A kubeconfig that authenticates with a bearer token.
    pub fn kubeconfig_token(&self, token: &str) -> String {
        self.kubeconfig(&format!("    token: {token}\n"))
    }

    /// A kubeconfig with a client certificate for `user`, signed by the cluster CA.
    pub fn kubeconfig_cert(&self, user: &User) -> String {
        let (cert, key) = self.state.ca.client_cert(user);
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        self.kubeconfig(&format!("    client-certificate-data: {}\n    client-key-data: {}\n", b64(&cert), b64(&key)))
    }

    fn kubeconfig(&self, user: &str) -> String {
        let ca = base64::engine::general_purpose::STANDARD.encode(&self.state.ca.cert_pem);
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: standin\n  cluster:\n    server: {}\n    certificate-authority-data: {ca}\nusers:\n- name: user\n  user:\n{user}contexts:\n- name: standin\n  context:\n    cluster: standin\n    user: user\ncurrent-context: standin\n",
            self.url()
        )
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn server_tls(ca_pem: &str, cert_pem: &str, key_pem: &str) -> anyhow::Result<rustls::ServerConfig> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(CertificateDer::from_pem_slice(ca_pem.as_bytes())?)?;
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .allow_unauthenticated()
        .build()?;
    let certs = vec![CertificateDer::from_pem_slice(cert_pem.as_bytes())?];
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())?;
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(certs, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A `metav1.Status` failure, as the API server sends it.
#[derive(Debug)]
struct Failure {
    code: StatusCode,
    reason: &'static str,
    message: String,
}

impl Failure {
    fn response(self) -> Response<Body> {
        let body = json!({
            "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
            "message": self.message, "reason": self.reason, "code": self.code.as_u16(),
        });
        json_response(self.code, &body)
    }
}

fn status(code: StatusCode, reason: &'static str, message: &str) -> Failure {
    Failure { code, reason, message: message.to_string() }
}

fn json_response(code: StatusCode, v: &Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(v.to_string())).boxed())
        .expect("response")
}

/// A request's target, from its path.
#[derive(Clone)]
struct Target {
    resource: &'static Resource,
    namespace: String,
    name: String,
    subresource: String,
}

fn parse_path(path: &str) -> Option<Target> {
    let parts: Vec<&str> = path.trim_matches('/').split('/').collect();
    let (group, version, rest) = match parts.as_slice() {
        ["api", v, rest @ ..] => ("", *v, rest),
        ["apis", g, v, rest @ ..] => (*g, *v, rest),
        _ => return None,
    };
    let (namespace, rest) = match rest {
        ["namespaces", ns, rest @ ..] if !rest.is_empty() => (ns.to_string(), rest),
        _ => (String::new(), rest),
    };
    let (plural, name, sub) = match rest {
        [p] => (*p, "", ""),
        [p, n] => (*p, *n, ""),
        [p, n, s] => (*p, *n, *s),
        _ => return None,
    };
    let resource = RESOURCES.iter().find(|r| r.group == group && r.version == version && r.plural == plural)?;
    // a namespace by its name: /api/v1/namespaces/NAME
    let (namespace, name) =
        if plural == "namespaces" { (String::new(), name.to_string()) } else { (namespace, name.to_string()) };
    Some(Target { resource, namespace, name, subresource: sub.to_string() })
}

fn query(req: &Request<Incoming>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for pair in req.uri().query().unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        out.insert(decode(k), decode(v));
    }
    out
}

fn decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' if i + 2 < bytes.len() => {
                match u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or("zz"), 16) {
                    Ok(b) => {
                        out.push(b);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn authenticate(state: &State, cert_user: Option<User>, req: &Request<Incoming>) -> Option<User> {
    if let Some(token) =
        req.headers().get("authorization").and_then(|h| h.to_str().ok()).and_then(|h| h.strip_prefix("Bearer "))
    {
        return state.tokens.lock().unwrap().get(token.trim()).cloned();
    }
    cert_user
}

fn verb(method: &Method, name: &str, q: &BTreeMap<String, String>) -> &'static str {
    let watch = matches!(q.get("watch").map(String::as_str), Some("true" | "1"));
    match *method {
        Method::GET if name.is_empty() && watch => "watch",
        Method::GET if name.is_empty() => "list",
        Method::GET => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

async fn handle(state: &Arc<State>, cert_user: Option<User>, req: Request<Incoming>) -> Response<Body> {
    state.requests.fetch_add(1, Ordering::Relaxed);
    let Some(user) = authenticate(state, cert_user, &req) else {
        return status(StatusCode::UNAUTHORIZED, "Unauthorized", "Unauthorized").response();
    };
    *state.by_user.lock().unwrap().entry(user.name.clone()).or_default() += 1;
    let path = req.uri().path().to_string();
    if path == "/version" {
        return json_response(
            StatusCode::OK,
            &json!({"major": "1", "minor": "34", "gitVersion": "v1.34.0-standin", "platform": "linux/amd64"}),
        );
    }
    let Some(t) = parse_path(&path) else {
        return status(
            StatusCode::NOT_FOUND,
            "NotFound",
            &format!("the server could not find the requested resource ({path})"),
        )
        .response();
    };
    let q = query(&req);
    let verb = verb(req.method(), &t.name, &q);
    {
        let key = if t.subresource.is_empty() {
            format!("{} {}", verb.to_uppercase(), t.resource.plural)
        } else {
            format!("{} {}/{}", verb.to_uppercase(), t.resource.plural, t.subresource)
        };
        *state.by_kind.lock().unwrap().entry(key).or_default() += 1;
    }
    let field = selector(q.get("fieldSelector"));
    let attrs = Attributes {
        verb: verb.into(),
        resource: t.resource.plural.into(),
        subresource: t.subresource.clone(),
        namespace: t.namespace.clone(),
        name: t.name.clone(),
        field_name: field.get("metadata.name").cloned(),
    };
    let decision = {
        let store = state.store.lock().unwrap();
        auth::authorize(&user, &attrs, &state.grants.lock().unwrap(), &store)
    };
    if let Err(why) = decision {
        let group = t.resource.group;
        let what = if t.subresource.is_empty() {
            t.resource.plural.to_string()
        } else {
            format!("{}/{}", t.resource.plural, t.subresource)
        };
        let subject = if t.name.is_empty() { what.clone() } else { format!("{what} \"{}\"", t.name) };
        let scope = if t.namespace.is_empty() {
            "at the cluster scope".into()
        } else {
            format!("in the namespace \"{}\"", t.namespace)
        };
        let mut message = format!(
            "{subject} is forbidden: User \"{}\" cannot {verb} resource \"{what}\" in API group \"{group}\" {scope}",
            user.name
        );
        if !why.is_empty() {
            message.push_str(&format!(": {why}"));
        }
        return status(StatusCode::FORBIDDEN, "Forbidden", &message).response();
    }
    let content_type = req.headers().get("content-type").and_then(|h| h.to_str().ok()).unwrap_or("").to_string();
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(e) => return status(StatusCode::BAD_REQUEST, "BadRequest", &e.to_string()).response(),
    };
    let parsed = || -> Result<Value, Failure> {
        serde_json::from_slice(&body)
            .map_err(|e| status(StatusCode::BAD_REQUEST, "BadRequest", &format!("invalid JSON: {e}")))
    };
    let r = t.resource;
    let result = match (verb, r.plural) {
        ("create", "tokenreviews") => parsed().map(|v| token_review(state, v)),
        ("create", "serviceaccounts") if t.subresource == "token" => parsed().and_then(|v| token_request(state, &t, v)),
        ("create", "subjectaccessreviews") => parsed().map(|v| access_review(state, v)),
        ("create", _) => parsed().and_then(|mut v| {
            if r.plural == "certificatesigningrequests" {
                v["spec"]["username"] = json!(user.name);
                v["spec"]["groups"] = json!(user.groups);
            }
            create_object(state, r, &t.namespace, v).map(|o| (StatusCode::CREATED, o))
        }),
        ("get", _) => get_object(state, &t).map(|o| (StatusCode::OK, o)),
        ("list", _) => Ok((StatusCode::OK, list(state, &t, &field, &selector(q.get("labelSelector"))))),
        ("watch", _) => return watch(state, &t, field, selector(q.get("labelSelector")), &q),
        ("update", _) => parsed().and_then(|v| update(state, &t, v)).map(|o| (StatusCode::OK, o)),
        ("patch", _) => {
            if !content_type.starts_with("application/merge-patch+json") {
                return status(
                    StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    "UnsupportedMediaType",
                    &format!("the stand-in takes merge patches only, not {content_type}"),
                )
                .response();
            }
            parsed().and_then(|v| patch(state, &t, v)).map(|o| (StatusCode::OK, o))
        }
        ("delete", _) => {
            let opts: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let grace =
                q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()).or(opts["gracePeriodSeconds"].as_i64());
            delete(state, &t, grace, opts["preconditions"]["uid"].as_str()).map(|o| (StatusCode::OK, o))
        }
        _ => Err(status(StatusCode::METHOD_NOT_ALLOWED, "MethodNotAllowed", "method not allowed")),
    };
    match result {
        Ok((code, v)) => json_response(code, &v),
        Err(f) => f.response(),
    }
}

/// `k=v,k2=v2` (also `k==v`) into a map; other operators are not understood.
fn selector(s: Option<&String>) -> BTreeMap<String, String> {
    s.map(|s| {
        s.split(',')
            .filter_map(|p| {
                p.split_once('=').map(|(k, v)| (k.trim().to_string(), v.trim_start_matches('=').trim().to_string()))
            })
            .collect()
    })
    .unwrap_or_default()
}

fn matches(o: &Value, field: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    field.iter().all(|(k, v)| {
        let path = k.split('.').fold(o, |acc, p| &acc[p]);
        path.as_str().unwrap_or("") == v
    }) && labels.iter().all(|(k, v)| o["metadata"]["labels"][k].as_str() == Some(v))
}

fn now() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

fn uid() -> String {
    let mut b = [0u8; 16];
    fastrand::fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

fn not_found(r: &Resource, name: &str) -> Failure {
    let what = if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) };
    status(StatusCode::NOT_FOUND, "NotFound", &format!("{what} \"{name}\" not found"))
}

fn key(r: &Resource, namespace: &str, name: &str) -> Key {
    (r.plural.to_string(), if r.namespaced { namespace.to_string() } else { String::new() }, name.to_string())
}

fn create_object(state: &State, r: &Resource, namespace: &str, mut v: Value) -> Result<Value, Failure> {
    if v["metadata"]["name"].as_str().unwrap_or("").is_empty() {
        match v["metadata"]["generateName"].as_str() {
            Some(prefix) => {
                let suffix: String = (0..5).map(|_| fastrand::alphanumeric().to_ascii_lowercase()).collect();
                v["metadata"]["name"] = json!(format!("{prefix}{suffix}"));
            }
            None => {
                return Err(status(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "Invalid",
                    "metadata.name: Required value: name or generateName is required",
                ));
            }
        }
    }
    let name = v["metadata"]["name"].as_str().unwrap_or_default().to_string();
    if r.namespaced {
        let ns = if namespace.is_empty() {
            v["metadata"]["namespace"].as_str().unwrap_or("default").to_string()
        } else {
            namespace.to_string()
        };
        if v["metadata"]["namespace"].as_str().is_some_and(|n| n != ns) {
            return Err(status(
                StatusCode::BAD_REQUEST,
                "BadRequest",
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        v["metadata"]["namespace"] = json!(ns);
    }
    let k = key(r, v["metadata"]["namespace"].as_str().unwrap_or(""), &name);
    let mut store = state.store.lock().unwrap();
    if store.get(&k).is_some() {
        let what = if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) };
        return Err(status(StatusCode::CONFLICT, "AlreadyExists", &format!("{what} \"{name}\" already exists")));
    }
    v["apiVersion"] = json!(r.api_version());
    v["kind"] = json!(r.kind);
    v["metadata"]["uid"] = json!(uid());
    v["metadata"]["creationTimestamp"] = json!(now());
    if let Some(m) = v["metadata"].as_object_mut() {
        m.remove("resourceVersion");
        m.remove("deletionTimestamp");
    }
    if r.plural == "pods" {
        if v["status"]["phase"].is_null() {
            v["status"] = json!({"phase": "Pending"});
        }
        if v["spec"]["terminationGracePeriodSeconds"].is_null() {
            v["spec"]["terminationGracePeriodSeconds"] = json!(30);
        }
    }
    Ok(store.put(k, v, "ADDED"))
}

fn get_object(state: &State, t: &Target) -> Result<Value, Failure> {
    let store = state.store.lock().unwrap();
    store.get(&key(t.resource, &t.namespace, &t.name)).cloned().ok_or_else(|| not_found(t.resource, &t.name))
}

fn list(state: &State, t: &Target, field: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> Value {
    let store = state.store.lock().unwrap();
    let ns = (t.resource.namespaced && !t.namespace.is_empty()).then_some(t.namespace.as_str());
    let items: Vec<&Value> = store.iter(t.resource.plural, ns).filter(|o| matches(o, field, labels)).collect();
    json!({
        "kind": format!("{}List", t.resource.kind),
        "apiVersion": t.resource.api_version(),
        "metadata": {"resourceVersion": store.rv().to_string()},
        "items": items,
    })
}

fn conflict(r: &Resource, name: &str) -> Failure {
    let what = if r.group.is_empty() { r.plural.to_string() } else { format!("{}.{}", r.plural, r.group) };
    status(
        StatusCode::CONFLICT,
        "Conflict",
        &format!(
            "Operation cannot be fulfilled on {what} \"{name}\": the object has been modified; please apply your changes to the latest version and try again"
        ),
    )
}

/// Writes `new` over the stored object as the (sub)resource allows: a status write keeps
/// all but the status, a main write keeps the status of resources that have one. A
/// resourceVersion in `new` must be the stored one.
fn write(state: &State, t: &Target, mut new: Value, rv: Option<String>) -> Result<Value, Failure> {
    let r = t.resource;
    let k = key(r, &t.namespace, &t.name);
    let mut store = state.store.lock().unwrap();
    let Some(old) = store.get(&k).cloned() else { return Err(not_found(r, &t.name)) };
    if let Some(rv) = rv
        && !rv.is_empty()
        && old["metadata"]["resourceVersion"].as_str() != Some(rv.as_str())
    {
        return Err(conflict(r, &t.name));
    }
    match t.subresource.as_str() {
        "status" => {
            let mut merged = old.clone();
            merged["status"] = new["status"].take();
            new = merged;
        }
        "approval" => {
            let mut merged = old.clone();
            merged["status"]["conditions"] = new["status"]["conditions"].take();
            new = merged;
        }
        "" => {
            if r.status {
                new["status"] = old["status"].clone();
            }
            for f in
                ["uid", "creationTimestamp", "deletionTimestamp", "deletionGracePeriodSeconds", "namespace", "name"]
            {
                new["metadata"][f] = old["metadata"][f].clone();
            }
            if let Some(m) = new["metadata"].as_object_mut() {
                m.retain(|_, v| !v.is_null());
            }
        }
        s => return Err(status(StatusCode::NOT_FOUND, "NotFound", &format!("no subresource {s}"))),
    }
    new["apiVersion"] = json!(r.api_version());
    new["kind"] = json!(r.kind);
    if r.plural == "certificatesigningrequests" {
        sign_if_approved(state, &mut new);
    }
    if new == old {
        return Ok(old);
    }
    Ok(store.put(k, new, "MODIFIED"))
}

fn update(state: &State, t: &Target, v: Value) -> Result<Value, Failure> {
    let rv = v["metadata"]["resourceVersion"].as_str().map(str::to_string);
    write(state, t, v, rv)
}

fn patch(state: &State, t: &Target, p: Value) -> Result<Value, Failure> {
    let old = get_object(state, t)?;
    let rv = p["metadata"]["resourceVersion"].as_str().map(str::to_string);
    let mut merged = old.clone();
    merge_patch(&mut merged, &p);
    // the precondition is the patch's, not the merged object's
    merged["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"].clone();
    write(state, t, merged, rv)
}

/// RFC 7386.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(p) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = json!({});
    }
    let t = target.as_object_mut().expect("object");
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
        }
    }
}

fn delete(state: &State, t: &Target, grace: Option<i64>, uid: Option<&str>) -> Result<Value, Failure> {
    let r = t.resource;
    let k = key(r, &t.namespace, &t.name);
    let mut store = state.store.lock().unwrap();
    let Some(old) = store.get(&k).cloned() else { return Err(not_found(r, &t.name)) };
    if let Some(uid) = uid
        && old["metadata"]["uid"].as_str() != Some(uid)
    {
        return Err(status(
            StatusCode::CONFLICT,
            "Conflict",
            &format!("Precondition failed: UID in precondition: {uid}, UID in object meta: {}", old["metadata"]["uid"]),
        ));
    }
    if r.plural == "pods" {
        // the API server's graceful deletion: a pod on a node that has not ended is
        // marked, and its kubelet makes the final delete
        let phase = old["status"]["phase"].as_str().unwrap_or("");
        let bound = old["spec"]["nodeName"].as_str().is_some_and(|n| !n.is_empty());
        let grace = grace.or(old["spec"]["terminationGracePeriodSeconds"].as_i64()).unwrap_or(30).max(0);
        let current = old["metadata"]["deletionGracePeriodSeconds"].as_i64();
        if bound && grace > 0 && !matches!(phase, "Succeeded" | "Failed") {
            if current.is_some_and(|c| c <= grace) {
                return Ok(old);
            }
            let mut marked = old.clone();
            let at = chrono::Utc::now() + chrono::Duration::seconds(grace);
            marked["metadata"]["deletionTimestamp"] = json!(at.to_rfc3339_opts(chrono::SecondsFormat::Secs, true));
            marked["metadata"]["deletionGracePeriodSeconds"] = json!(grace);
            return Ok(store.put(k, marked, "MODIFIED"));
        }
    }
    Ok(store.remove(&k).expect("present"))
}

/// A TokenRequest: a new bearer token for the service account, which authenticates as
/// `system:serviceaccount:NS:NAME` from then on.
fn token_request(state: &State, t: &Target, mut v: Value) -> Result<(StatusCode, Value), Failure> {
    get_object(state, &Target { subresource: String::new(), ..t.clone() })?;
    let mut raw = [0u8; 16];
    fastrand::fill(&mut raw);
    let token: String = raw.iter().map(|b| format!("{b:02x}")).collect();
    let user = User {
        name: format!("system:serviceaccount:{}:{}", t.namespace, t.name),
        groups: vec![
            "system:serviceaccounts".into(),
            format!("system:serviceaccounts:{}", t.namespace),
            "system:authenticated".into(),
        ],
    };
    state.tokens.lock().unwrap().insert(token.clone(), user);
    let ttl = v["spec"]["expirationSeconds"].as_i64().unwrap_or(3600);
    let expires = chrono::Utc::now() + chrono::Duration::seconds(ttl);
    v["apiVersion"] = json!("authentication.k8s.io/v1");
    v["kind"] = json!("TokenRequest");
    v["status"] =
        json!({"token": token, "expirationTimestamp": expires.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)});
    Ok((StatusCode::CREATED, v))
}

fn token_review(state: &State, mut v: Value) -> (StatusCode, Value) {
    let token = v["spec"]["token"].as_str().unwrap_or("");
    let user = state.tokens.lock().unwrap().get(token).cloned();
    v["status"] = match user {
        Some(u) => json!({"authenticated": true, "user": {"username": u.name, "groups": u.groups}}),
        None => json!({"authenticated": false, "error": "invalid bearer token"}),
    };
    v["apiVersion"] = json!("authentication.k8s.io/v1");
    v["kind"] = json!("TokenReview");
    (StatusCode::CREATED, v)
}

fn access_review(state: &State, mut v: Value) -> (StatusCode, Value) {
    let spec = &v["spec"];
    let user = User {
        name: spec["user"].as_str().unwrap_or("").into(),
        groups: spec["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|g| g.as_str().map(str::to_string))
            .collect(),
    };
    let a = &spec["resourceAttributes"];
    let s = |f: &str| a[f].as_str().unwrap_or("").to_string();
    let attrs = Attributes {
        verb: s("verb"),
        resource: s("resource"),
        subresource: s("subresource"),
        namespace: s("namespace"),
        name: s("name"),
        field_name: None,
    };
    let allowed = {
        let store = state.store.lock().unwrap();
        auth::authorize(&user, &attrs, &state.grants.lock().unwrap(), &store).is_ok()
    };
    v["status"] = json!({"allowed": allowed, "reason": if allowed { "granted by the stand-in's rules" } else { "" }});
    v["apiVersion"] = json!("authorization.k8s.io/v1");
    v["kind"] = json!("SubjectAccessReview");
    (StatusCode::CREATED, v)
}

/// The signing controller: an approved request without a certificate gets one.
fn sign_if_approved(state: &State, csr: &mut Value) {
    let approved = csr["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Approved" && c["status"] == "True");
    if !approved || csr["status"]["certificate"].is_string() {
        return;
    }
    let b64 = base64::engine::general_purpose::STANDARD;
    let Some(pem) =
        csr["spec"]["request"].as_str().and_then(|r| b64.decode(r).ok()).and_then(|b| String::from_utf8(b).ok())
    else {
        return;
    };
    match state.ca.sign_request(&pem, csr["spec"]["signerName"].as_str().unwrap_or("")) {
        Ok(cert) => csr["status"]["certificate"] = json!(b64.encode(cert)),
        Err(e) => tracing::warn!(error = %e, "cannot sign the request"),
    }
}

fn watch(
    state: &Arc<State>,
    t: &Target,
    field: BTreeMap<String, String>,
    labels: BTreeMap<String, String>,
    q: &BTreeMap<String, String>,
) -> Response<Body> {
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(1024);
    let resource = t.resource.plural.to_string();
    let ns = (t.resource.namespaced && !t.namespace.is_empty()).then(|| t.namespace.clone());
    let wanted = move |c: &store::Change| {
        c.resource == resource
            && ns.as_deref().is_none_or(|n| c.object["metadata"]["namespace"] == n)
            && matches(&c.object, &field, &labels)
    };
    let line = |kind: &str, object: &Value| {
        Ok(Frame::data(Bytes::from(format!("{}\n", json!({"type": kind, "object": object})))))
    };
    let from = q.get("resourceVersion").cloned().unwrap_or_default();
    let timeout = q.get("timeoutSeconds").and_then(|s| s.parse::<u64>().ok()).unwrap_or(1800);
    let (backlog, mut changes, mut last) = {
        let store = state.store.lock().unwrap();
        let changes = store.changes.subscribe();
        let backlog: Result<Vec<store::Change>, ()> = if from.is_empty() || from == "0" {
            let ns = (t.resource.namespaced && !t.namespace.is_empty()).then_some(t.namespace.as_str());
            Ok(store
                .iter(t.resource.plural, ns)
                .map(|o| store::Change {
                    rv: store.rv(),
                    kind: "ADDED",
                    resource: t.resource.plural.into(),
                    object: o.clone(),
                })
                .collect())
        } else {
            match from.parse::<u64>().ok().and_then(|rv| store.since(rv)) {
                Some(c) => Ok(c),
                None => Err(()),
            }
        };
        (backlog, changes, store.rv())
    };
    if let Ok(from) = from.parse::<u64>()
        && from > 0
    {
        last = from;
    }
    tokio::spawn(async move {
        let backlog = match backlog {
            Ok(b) => b,
            Err(()) => {
                let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                    "message": "too old resource version", "reason": "Expired", "code": 410});
                let _ = tx.send(line("ERROR", &gone)).await;
                return;
            }
        };
        for c in backlog.iter().filter(|c| wanted(c)) {
            if tx.send(line(c.kind, &c.object)).await.is_err() {
                return;
            }
        }
        if let Some(c) = backlog.last() {
            last = last.max(c.rv);
        }
        let deadline = tokio::time::sleep(std::time::Duration::from_secs(timeout));
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                _ = &mut deadline => return,
                c = changes.recv() => match c {
                    Ok(c) if c.rv > last => {
                        last = c.rv;
                        if wanted(&c) && tx.send(line(c.kind, &c.object)).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        let gone = json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
                            "message": "watch fell behind", "reason": "Expired", "code": 410});
                        let _ = tx.send(line("ERROR", &gone)).await;
                        return;
                    }
                    Err(_) => return,
                },
            }
        }
    });
    let stream = futures_util::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|f| (f, rx)) });
    Response::builder()
        .status(StatusCode::OK)
        .header("content-type", "application/json")
        .body(BodyExt::boxed(StreamBody::new(stream)))
        .expect("response")
}
