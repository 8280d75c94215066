//! Who is calling, and what they may do: a cluster CA that signs client certificates
//! (CN = user, O = groups, as the API server reads them), static bearer tokens, RBAC-like
//! grants, and the Node authorizer's rules for `system:node:<name>`.

use rcgen::{BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, SanType};
use serde_json::Value;

use crate::store::Store;

/// An authenticated caller.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub groups: Vec<String>,
}

impl User {
    pub fn new(name: &str, groups: &[&str]) -> User {
        User { name: name.into(), groups: groups.iter().map(|g| g.to_string()).collect() }
    }
    fn is(&self, who: &str) -> bool {
        self.name == who || self.groups.iter().any(|g| g == who)
    }
    /// `N` when this is the node identity `system:node:N` in group `system:nodes`.
    pub fn node(&self) -> Option<&str> {
        self.name.strip_prefix("system:node:").filter(|_| self.is("system:nodes"))
    }
}

/// A permission: `who` (a user or group name) may use `verbs` on `resource`
/// (`resource/subresource`; `*` for any).
#[derive(Clone, Debug)]
pub struct Grant {
    pub who: String,
    pub verbs: Vec<String>,
    pub resources: Vec<String>,
}

impl Grant {
    pub fn new(who: &str, verbs: &[&str], resources: &[&str]) -> Grant {
        Grant {
            who: who.into(),
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// What a request asks to do.
#[derive(Clone, Debug, Default)]
pub struct Attributes {
    pub verb: String,
    pub resource: String,
    pub subresource: String,
    pub namespace: String,
    pub name: String,
    /// `metadata.name=` of a list or watch, which the Node authorizer accepts as a get.
    pub field_name: Option<String>,
}

impl Attributes {
    fn full(&self) -> String {
        if self.subresource.is_empty() {
            self.resource.clone()
        } else {
            format!("{}/{}", self.resource, self.subresource)
        }
    }
}

/// The cluster's certificate authority.
#[derive(Debug)]
pub struct Ca {
    pub cert_pem: String,
    /// The CA's private key (PKCS#8 PEM), for a real controller-manager's CSR signer.
    pub key_pem: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Ca {
    pub fn new() -> Ca {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, "kubernetes");
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        let cert = params.self_signed(&key).expect("self-signed CA");
        Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem(), issuer: Issuer::new(params, key) }
    }

    /// A client certificate for `user` (PEM certificate, PEM key).
    pub fn client_cert(&self, user: &User) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let params = client_params(user);
        let cert = params.signed_by(&key, &self.issuer).expect("signs");
        (cert.pem(), key.serialize_pem())
    }

    /// A serving certificate for these names and IP addresses.
    pub fn server_cert(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("key");
        let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
        params.distinguished_name.push(DnType::CommonName, names.first().copied().unwrap_or("localhost"));
        params.subject_alt_names = names.iter().map(|n| san(n)).collect();
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        let cert = params.signed_by(&key, &self.issuer).expect("signs");
        (cert.pem(), key.serialize_pem())
    }

    /// Signs a PEM certificate request as the CSR signer `signer` would: the subject is
    /// kept, the usages follow the signer.
    pub fn sign_request(&self, csr_pem: &str, signer: &str) -> Result<String, String> {
        let mut req = rcgen::CertificateSigningRequestParams::from_pem(csr_pem).map_err(|e| e.to_string())?;
        req.params.is_ca = IsCa::NoCa;
        req.params.extended_key_usages = if signer == "kubernetes.io/kubelet-serving" {
            vec![ExtendedKeyUsagePurpose::ServerAuth]
        } else {
            vec![ExtendedKeyUsagePurpose::ClientAuth]
        };
        req.params.not_before = rcgen::date_time_ymd(2020, 1, 1);
        req.params.not_after = rcgen::date_time_ymd(2100, 1, 1);
        req.signed_by(&self.issuer).map(|c| c.pem()).map_err(|e| e.to_string())
    }
}

impl Default for Ca {
    fn default() -> Self {
        Ca::new()
    }
}

fn san(n: &str) -> SanType {
    match n.parse::<std::net::IpAddr>() {
        Ok(ip) => SanType::IpAddress(ip),
        Err(_) => SanType::DnsName(n.try_into().expect("DNS name")),
    }
}

fn client_params(user: &User) -> CertificateParams {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("params");
    params.distinguished_name.push(DnType::CommonName, user.name.as_str());
    // rcgen keeps one value per attribute type: the first group goes in the certificate
    // (`system:authenticated` is added to every authenticated user anyway)
    if let Some(g) = user.groups.iter().find(|g| *g != "system:authenticated") {
        params.distinguished_name.push(DnType::OrganizationName, g.as_str());
    }
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    params
}

/// The user a verified client certificate names: CN and every O.
pub fn cert_user(der: &[u8]) -> Option<User> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let name = subject.iter_common_name().next()?.as_str().ok()?.to_string();
    let mut groups: Vec<String> =
        subject.iter_organization().filter_map(|o| o.as_str().ok().map(str::to_string)).collect();
    groups.push("system:authenticated".into());
    Some(User { name, groups })
}

/// Decides requests: `system:masters` may do anything; nodes get the Node authorizer's
/// rules (with `pods`, the store, to find what a node's pods refer to); everyone else
/// what the grants say.
pub fn authorize(user: &User, a: &Attributes, grants: &[Grant], store: &Store) -> Result<(), String> {
    if user.is("system:masters") {
        return Ok(());
    }
    if let Some(node) = user.node()
        && let Some(decision) = node_rule(node, a, store)
    {
        return decision;
    }
    if user.is("system:bootstrappers")
        && a.resource == "certificatesigningrequests"
        && ["create", "get", "list", "watch"].contains(&a.verb.as_str())
    {
        return Ok(());
    }
    let full = a.full();
    let granted = grants.iter().any(|g| {
        user.is(&g.who)
            && g.verbs.iter().any(|v| v == "*" || *v == a.verb)
            && g.resources.iter().any(|r| r == "*" || *r == full)
    });
    if granted { Ok(()) } else { Err(String::new()) }
}

/// The Node authorizer and NodeRestriction for node `node`: `None` when they have no
/// opinion (the grants decide).
fn node_rule(node: &str, a: &Attributes, store: &Store) -> Option<Result<(), String>> {
    let verb = a.verb.as_str();
    let read = matches!(verb, "get" | "list" | "watch");
    let own = a.name == node;
    let deny = |why: &str| Some(Err(why.to_string()));
    match (a.resource.as_str(), a.subresource.as_str()) {
        ("nodes", "") if read => Some(Ok(())),
        ("nodes", "" | "status") if verb == "create" || own => Some(Ok(())),
        ("nodes", _) => deny(&format!("node '{node}' cannot modify node '{}'", a.name)),
        ("leases", "") if a.namespace == "kube-node-lease" && (own || verb == "create") => Some(Ok(())),
        ("leases", _) => deny(&format!("node '{node}' cannot modify lease '{}'", a.name)),
        ("pods", "") if read => Some(Ok(())),
        ("pods", "status") | ("pods", "") if matches!(verb, "update" | "patch" | "delete") => {
            if bound(store, &a.namespace, &a.name) == Some(node) {
                Some(Ok(()))
            } else {
                deny(&format!("node '{node}' can only modify pods bound to it"))
            }
        }
        ("pods", _) => deny("nodes may not create pods here"),
        ("configmaps" | "secrets" | "persistentvolumeclaims", "") => {
            let name = if verb == "get" { Some(a.name.as_str()) } else { a.field_name.as_deref() };
            match name {
                Some(name) if read && referenced(store, node, &a.resource, &a.namespace, name) => Some(Ok(())),
                _ => deny(&format!("no relationship found between node '{node}' and this object")),
            }
        }
        ("serviceaccounts", "token") if verb == "create" => {
            // only for the service accounts of pods bound to the node
            let used = store.iter("pods", Some(&a.namespace)).any(|p| {
                p["spec"]["nodeName"] == node && p["spec"]["serviceAccountName"].as_str().unwrap_or("default") == a.name
            });
            if used {
                Some(Ok(()))
            } else {
                deny(&format!("no relationship found between node '{node}' and this object"))
            }
        }
        ("events", "") if matches!(verb, "create" | "update" | "patch") => Some(Ok(())),
        ("tokenreviews" | "subjectaccessreviews", "") if verb == "create" => Some(Ok(())),
        ("certificatesigningrequests", "") if matches!(verb, "create" | "get" | "list" | "watch") => Some(Ok(())),
        ("runtimeclasses" | "services" | "namespaces", "") if read => Some(Ok(())),
        _ => None,
    }
}

/// The node a pod is bound to.
fn bound<'a>(store: &'a Store, namespace: &str, name: &str) -> Option<&'a str> {
    store.get(&("pods".into(), namespace.into(), name.into())).and_then(|p| p["spec"]["nodeName"].as_str())
}

/// Whether a pod bound to `node` refers to the object: volumes (projected too), env,
/// envFrom and imagePullSecrets.
fn referenced(store: &Store, node: &str, resource: &str, namespace: &str, name: &str) -> bool {
    let (volume_key, ref_key) = match resource {
        "configmaps" => ("configMap", "configMapKeyRef"),
        "secrets" => ("secret", "secretKeyRef"),
        _ => ("persistentVolumeClaim", ""),
    };
    let volume_name = |v: &Value| -> Option<String> {
        let v = &v[volume_key];
        v["name"].as_str().or(v["secretName"].as_str()).or(v["claimName"].as_str()).map(str::to_string)
    };
    store.iter("pods", Some(namespace)).filter(|p| p["spec"]["nodeName"] == node).any(|p| {
        let spec = &p["spec"];
        let mut names = Vec::new();
        for v in spec["volumes"].as_array().into_iter().flatten() {
            names.extend(volume_name(v));
            for s in v["projected"]["sources"].as_array().into_iter().flatten() {
                names.extend(volume_name(s));
            }
        }
        if resource == "secrets" {
            for s in spec["imagePullSecrets"].as_array().into_iter().flatten() {
                names.extend(s["name"].as_str().map(str::to_string));
            }
        }
        let containers = ["containers", "initContainers"].into_iter().flat_map(|k| spec[k].as_array()).flatten();
        for c in containers {
            for e in c["env"].as_array().into_iter().flatten() {
                names.extend(e["valueFrom"][ref_key]["name"].as_str().map(str::to_string));
            }
            let from_key = if resource == "secrets" { "secretRef" } else { "configMapRef" };
            for e in c["envFrom"].as_array().into_iter().flatten() {
                names.extend(e[from_key]["name"].as_str().map(str::to_string));
            }
        }
        names.iter().any(|n| n == name)
    })
}
