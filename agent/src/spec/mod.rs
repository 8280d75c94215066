//! Manifests: multi-document YAML parsed into Kubernetes objects (Pods, ConfigMaps,
//! Secrets, Deployments, Jobs), defaulted as the API server would, and validated. Errors name the field
//! path the way kubectl does (`spec.containers[0].image: Required value`); one bad
//! document rejects the whole file.

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use serde_json::Value;

pub mod annotations;
mod pod;
pub(crate) mod quantity;
mod security;
pub mod selector;
pub mod support;
pub mod workload;

pub use quantity::{parse_bytes, parse_millicores};

/// A field error: the path and what is wrong with it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{prefix}{field}: {message}", prefix = doc_prefix(*.document))]
pub struct FieldError {
    /// Index of the YAML document (from 0), when the file has several.
    pub document: Option<usize>,
    pub field: String,
    pub message: String,
}

fn doc_prefix(document: Option<usize>) -> String {
    document.map(|d| format!("document {}: ", d + 1)).unwrap_or_default()
}

impl FieldError {
    fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        FieldError { document: None, field: field.into(), message: message.into() }
    }
}

/// One object of a manifest.
#[derive(Clone, Debug, PartialEq)]
pub enum Object {
    Pod(Box<Pod>),
    ConfigMap(ConfigMap),
    Secret(Secret),
    Deployment(Box<Deployment>),
    Job(Box<Job>),
}

impl Object {
    pub fn kind(&self) -> &'static str {
        match self {
            Object::Pod(_) => "Pod",
            Object::ConfigMap(_) => "ConfigMap",
            Object::Secret(_) => "Secret",
            Object::Deployment(_) => "Deployment",
            Object::Job(_) => "Job",
        }
    }
    pub fn metadata(&self) -> &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
        match self {
            Object::Pod(p) => &p.metadata,
            Object::ConfigMap(c) => &c.metadata,
            Object::Secret(s) => &s.metadata,
            Object::Deployment(d) => &d.metadata,
            Object::Job(j) => &j.metadata,
        }
    }
    /// `namespace/name`.
    pub fn key(&self) -> String {
        let m = self.metadata();
        format!("{}/{}", m.namespace.as_deref().unwrap_or("default"), m.name.as_deref().unwrap_or_default())
    }
}

/// The kinds `apply` takes, with their API versions.
const KINDS: &[(&str, &str)] =
    &[("Pod", "v1"), ("ConfigMap", "v1"), ("Secret", "v1"), ("Deployment", "apps/v1"), ("Job", "batch/v1")];

/// Parses every document of a manifest file into validated, defaulted objects.
pub fn parse(text: &str) -> Result<Vec<Object>, FieldError> {
    let mut objects = Vec::new();
    let docs = serde_yaml_ng::Deserializer::from_str(text);
    let multi = text.contains("\n---");
    for (i, doc) in docs.enumerate() {
        let at = |mut e: FieldError| {
            e.document = multi.then_some(i);
            e
        };
        let value: Value =
            serde::Deserialize::deserialize(doc).map_err(|e| at(FieldError::new("<yaml>", e.to_string())))?;
        if value.is_null() {
            continue;
        }
        let mut value = value;
        octal_modes(&mut value);
        objects.push(parse_object(value).map_err(at)?);
    }
    if objects.is_empty() {
        return Err(FieldError::new("<yaml>", "no objects found"));
    }
    Ok(objects)
}

/// `defaultMode: 0644` is octal in the YAML 1.1 kubectl reads; our YAML 1.2 parser
/// keeps such a scalar as the string "0644". File modes are made numbers again.
fn octal_modes(v: &mut Value) {
    match v {
        Value::Object(map) => {
            for (k, child) in map.iter_mut() {
                if (k == "defaultMode" || k == "mode")
                    && let Value::String(s) = child
                    && s.len() > 1
                    && s.starts_with('0')
                    && let Ok(n) = i64::from_str_radix(&s[1..], 8)
                {
                    *child = Value::from(n);
                } else {
                    octal_modes(child);
                }
            }
        }
        Value::Array(items) => items.iter_mut().for_each(octal_modes),
        _ => {}
    }
}

/// A pod as an API server returns it, defaulted and validated as `apply` does. Server-set
/// fields (status, resourceVersion, managed fields) are dropped first.
pub fn api_pod(mut value: Value) -> Result<Pod, FieldError> {
    if let Some(o) = value.as_object_mut() {
        o.remove("status");
        o.insert("apiVersion".into(), "v1".into());
        o.insert("kind".into(), "Pod".into());
    }
    if let Some(m) = value.get_mut("metadata").and_then(Value::as_object_mut) {
        for f in [
            "resourceVersion",
            "managedFields",
            "generation",
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "selfLink",
        ] {
            m.remove(f);
        }
    }
    let mut p: Pod = typed(&value)?;
    pod::default(&mut p);
    pod::validate_in(&p, true)?;
    Ok(p)
}

fn parse_object(value: Value) -> Result<Object, FieldError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if kind.is_empty() {
        return Err(FieldError::new("kind", "Required value"));
    }
    let Some((_, version)) = KINDS.iter().find(|(k, _)| *k == kind) else {
        let all = KINDS.iter().map(|(k, _)| format!("{k:?}")).collect::<Vec<_>>().join(", ");
        return Err(FieldError::new("kind", format!("Unsupported value: {kind:?}: supported values: {all}")));
    };
    if api != *version {
        return Err(FieldError::new(
            "apiVersion",
            format!("Unsupported value: {api:?}: supported values: {version:?}"),
        ));
    }
    match kind {
        "Deployment" => Ok(Object::Deployment(Box::new(workload::deployment(typed(&value)?)?))),
        "Job" => Ok(Object::Job(Box::new(workload::job(typed(&value)?)?))),
        "Pod" => {
            let mut p: Pod = typed(&value)?;
            pod::default(&mut p);
            pod::validate(&p)?;
            Ok(Object::Pod(Box::new(p)))
        }
        "ConfigMap" => {
            let mut c: ConfigMap = typed(&value)?;
            c.metadata.namespace.get_or_insert_with(|| "default".into());
            validate_meta(&c.metadata)?;
            let keys = c.data.iter().flatten().map(|(k, _)| ("data", k));
            let binary = c.binary_data.iter().flatten().map(|(k, _)| ("binaryData", k));
            let mut seen = std::collections::HashSet::new();
            for (field, k) in keys.chain(binary) {
                config_key(k).map_err(|m| FieldError::new(format!("{field}[{k}]"), m))?;
                if !seen.insert(k) {
                    return Err(FieldError::new(format!("{field}[{k}]"), "Invalid value: duplicate of key in data"));
                }
            }
            Ok(Object::ConfigMap(c))
        }
        _ => {
            let mut s: Secret = typed(&value)?;
            s.metadata.namespace.get_or_insert_with(|| "default".into());
            validate_meta(&s.metadata)?;
            // the API server folds stringData into data and never returns it
            let strings = s.string_data.take().unwrap_or_default();
            let data = s.data.get_or_insert_with(Default::default);
            for (k, v) in strings {
                data.insert(k, k8s_openapi::ByteString(v.into_bytes()));
            }
            for k in data.keys() {
                config_key(k).map_err(|m| FieldError::new(format!("data[{k}]"), m))?;
            }
            let t = s.type_.get_or_insert_with(|| "Opaque".into());
            if t == "kubernetes.io/dockerconfigjson" && !data.contains_key(".dockerconfigjson") {
                return Err(FieldError::new("data[.dockerconfigjson]", "Required value"));
            }
            Ok(Object::Secret(s))
        }
    }
}

/// The typed object, or the path of the first field that does not fit it (a wrong
/// type, or a key the API does not have).
fn typed<T: serde::de::DeserializeOwned + serde::Serialize>(value: &Value) -> Result<T, FieldError> {
    let t: T = serde_path_to_error::deserialize(value)
        .map_err(|e| FieldError::new(json_path(&e.path().to_string()), e.inner().to_string()))?;
    let round_trip = serde_json::to_value(&t).expect("objects serialise");
    if let Some(path) = unknown_field(value, &round_trip, String::new()) {
        return Err(FieldError::new(path, "unknown field"));
    }
    Ok(t)
}

fn validate_meta(m: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta) -> Result<(), FieldError> {
    let name = m.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(FieldError::new("metadata.name", "Required value: name or generateName is required"));
    }
    dns_subdomain(name).map_err(|m| FieldError::new("metadata.name", format!("Invalid value: {name:?}: {m}")))?;
    let ns = m.namespace.as_deref().unwrap_or("default");
    dns_label(ns).map_err(|m| FieldError::new("metadata.namespace", format!("Invalid value: {ns:?}: {m}")))
}

/// ConfigMap and Secret keys: `[-._a-zA-Z0-9]+`, at most 253, not `.` or `..`.
fn config_key(k: &str) -> Result<(), String> {
    let ok = !k.is_empty()
        && k.len() <= 253
        && k != "."
        && k != ".."
        && k.bytes().all(|b| b.is_ascii_alphanumeric() || b"-._".contains(&b));
    if ok {
        Ok(())
    } else {
        Err(format!(
            "Invalid value: {k:?}: a valid config key must consist of alphanumeric characters, '-', '_' or '.'"
        ))
    }
}

/// `spec.containers[0].image` from serde_path_to_error's `spec.containers[0].image`.
fn json_path(p: &str) -> String {
    if p == "." { String::new() } else { p.to_string() }
}

/// The first key present in `original` (and not null) but absent after a round trip
/// through the typed object: a field the API does not have.
fn unknown_field(original: &Value, typed: &Value, path: String) -> Option<String> {
    match (original, typed) {
        (Value::Object(o), Value::Object(t)) => o.iter().find_map(|(k, v)| {
            let p = if path.is_empty() { k.clone() } else { format!("{path}.{k}") };
            match t.get(k) {
                None if !v.is_null() => Some(p),
                None => None,
                Some(tv) => unknown_field(v, tv, p),
            }
        }),
        (Value::Array(o), Value::Array(t)) => {
            o.iter().zip(t).enumerate().find_map(|(i, (ov, tv))| unknown_field(ov, tv, format!("{path}[{i}]")))
        }
        _ => None,
    }
}

fn one_of(field: &str, value: &str, allowed: &[&str]) -> Result<(), FieldError> {
    if allowed.contains(&value) {
        return Ok(());
    }
    let list = allowed.iter().map(|a| format!("{a:?}")).collect::<Vec<_>>().join(", ");
    Err(FieldError::new(field, format!("Unsupported value: {value:?}: supported values: {list}")))
}

fn dns_label(s: &str) -> Result<(), String> {
    let ok = !s.is_empty()
        && s.len() <= 63
        && s.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-');
    if ok {
        Ok(())
    } else {
        Err("a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into())
    }
}

fn dns_subdomain(s: &str) -> Result<(), String> {
    if s.len() > 253 || s.split('.').any(|l| dns_label(l).is_err()) {
        return Err("a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = "apiVersion: v1\nkind: Pod\nmetadata:\n  name: hello\nspec:\n  containers:\n  - name: app\n    image: 127.0.0.1:5000/apps/hello:v1\n";

    fn pod(o: &Object) -> &Pod {
        match o {
            Object::Pod(p) => p,
            other => panic!("not a pod: {other:?}"),
        }
    }

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_applied() {
        let objects = parse(GOOD).unwrap();
        let pod = pod(&objects[0]);
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
        let latest = GOOD.replace("hello:v1", "hello");
        assert_eq!(
            super::tests::pod(&parse(&latest).unwrap()[0]).spec.as_ref().unwrap().containers[0]
                .image_pull_policy
                .as_deref(),
            Some("Always")
        );
    }

    #[test]
    fn errors_name_the_field_like_kubectl() {
        assert_eq!(
            err(&GOOD.replace("    image: 127.0.0.1:5000/apps/hello:v1\n", "")),
            "spec.containers[0].image: Required value"
        );
        assert_eq!(
            err(&GOOD.replace("  name: hello\n", "")),
            "metadata.name: Required value: name or generateName is required"
        );
        assert_eq!(err(&GOOD.replace("image:", "imagee:")), "spec.containers[0].imagee: unknown field");
        assert!(
            err(&GOOD.replace("kind: Pod", "kind: StatefulSet"))
                .starts_with("kind: Unsupported value: \"StatefulSet\"")
        );
        assert!(
            err(&format!("{GOOD}  restartPolicy: Sometimes\n"))
                .starts_with("spec.restartPolicy: Unsupported value: \"Sometimes\"")
        );
        assert_eq!(
            err(&format!("{GOOD}    livenessProbe:\n      initialDelaySeconds: 1\n")),
            "spec.containers[0].livenessProbe: Required value: must specify a handler type"
        );
        assert!(
            err(&format!("{GOOD}    livenessProbe:\n      grpc:\n        port: 0\n"))
                .starts_with("spec.containers[0].livenessProbe.grpc.port: Invalid value: 0")
        );
        assert!(
            err(&format!("{GOOD}    startupProbe:\n      tcpSocket:\n        port: 80\n      successThreshold: 2\n"))
                .starts_with("spec.containers[0].startupProbe.successThreshold: Invalid value")
        );
        assert!(
            err(&format!("{GOOD}    readinessProbe:\n      httpGet:\n        port: web\n"))
                .starts_with("spec.containers[0].readinessProbe.httpGet.port: Invalid value: \"web\"")
        );
        assert!(
            err(&format!("{GOOD}  hostNetwork: true\n  hostUsers: false\n"))
                .starts_with("spec.hostUsers: Forbidden: when `hostNetwork` is set")
        );
        assert!(
            err(&format!("{GOOD}    securityContext:\n      privileged: true\n  hostUsers: false\n"))
                .starts_with("spec.containers[0].securityContext.privileged: Forbidden")
        );
        assert!(
            err(&format!("{GOOD}    securityContext:\n      procMount: Unmasked\n"))
                .starts_with("spec.containers[0].securityContext.procMount: Forbidden")
        );
        assert!(
            err(&format!("{GOOD}    restartPolicy: Always\n"))
                .starts_with("spec.containers[0].restartPolicy: Forbidden")
        );
        let init = GOOD.replace("  containers:", "  initContainers:\n  - name: app\n    image: x/y:1\n  containers:");
        assert_eq!(err(&init), "spec.containers[0].name: Duplicate value: \"app\"");
        let env = format!(
            "{GOOD}    env:\n    - name: A\n      valueFrom:\n        fieldRef:\n          fieldPath: spec.hostname\n"
        );
        assert!(
            err(&env).starts_with("spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: Unsupported value"),
            "{}",
            err(&env)
        );
        let typed = err(&GOOD.replace("  containers:", "  terminationGracePeriodSeconds: soon\n  containers:"));
        assert!(typed.starts_with("spec.terminationGracePeriodSeconds: invalid type"), "{typed}");
        let mem = err(&format!("{GOOD}    resources:\n      limits:\n        memory: lots\n"));
        assert!(mem.starts_with("spec.containers[0].resources.limits.memory: Invalid value: \"lots\""), "{mem}");
    }

    #[test]
    fn one_bad_document_rejects_the_file_and_says_which() {
        let two = format!("{GOOD}---\n{}", GOOD.replace("name: app", "name: App"));
        let e = parse(&two).unwrap_err();
        assert_eq!(e.document, Some(1));
        assert!(e.to_string().starts_with("document 2: spec.containers[0].name: Invalid value: \"App\""), "{e}");
        assert_eq!(parse(&format!("{GOOD}---\n{}", GOOD.replace("hello\n", "hello2\n"))).unwrap().len(), 2);
    }

    #[test]
    fn volumes_must_exist_and_be_supported() {
        let with_mount = format!("{GOOD}    volumeMounts:\n    - name: data\n      mountPath: /data\n");
        assert_eq!(err(&with_mount), "spec.containers[0].volumeMounts[0].name: Not found: \"data\"");
        let ok = format!("{with_mount}  volumes:\n  - name: data\n    emptyDir: {{}}\n");
        parse(&ok).unwrap();
        let cm = format!("{with_mount}  volumes:\n  - name: data\n    configMap:\n      name: x\n");
        parse(&cm).unwrap();
        let nfs = format!("{with_mount}  volumes:\n  - name: data\n    nfs:\n      server: x\n      path: /\n");
        assert!(err(&nfs).starts_with("spec.volumes[0].nfs: Forbidden"));
        let up = format!("{with_mount}      subPath: ../x\n  volumes:\n  - name: data\n    emptyDir: {{}}\n");
        assert!(err(&up).starts_with("spec.containers[0].volumeMounts[0].subPath: Invalid value"), "{}", err(&up));
        let item = format!(
            "{with_mount}  volumes:\n  - name: data\n    secret:\n      secretName: s\n      items:\n      - key: k\n        path: ../k\n"
        );
        assert!(err(&item).starts_with("spec.volumes[0].secret.items[0].path: Invalid value"), "{}", err(&item));
    }

    #[test]
    fn octal_modes_read_as_kubectl_reads_them() {
        let mut v: Value = serde_yaml_ng::from_str("mode: 0400\nx:\n  defaultMode: 0644\n  mode: 420\n").unwrap();
        octal_modes(&mut v);
        assert_eq!(v, serde_json::json!({"mode": 0o400, "x": {"defaultMode": 0o644, "mode": 420}}));
    }

    #[test]
    fn config_maps_and_secrets_parse_with_the_api_server_rules() {
        let text = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cfg\ndata:\n  a.txt: one\n---\napiVersion: v1\nkind: Secret\nmetadata:\n  name: s\n  namespace: prod\ndata:\n  b64: aGk=\nstringData:\n  plain: there\n";
        let objects = parse(text).unwrap();
        assert_eq!(objects[0].key(), "default/cfg");
        let Object::Secret(s) = &objects[1] else { panic!() };
        assert_eq!(objects[1].key(), "prod/s");
        let data = s.data.as_ref().unwrap();
        assert_eq!((data["b64"].0.as_slice(), data["plain"].0.as_slice()), (&b"hi"[..], &b"there"[..]));
        assert!(s.string_data.is_none(), "stringData is folded into data");
        assert_eq!(s.type_.as_deref(), Some("Opaque"));
        let bad = text.replace("a.txt", "a/b");
        assert!(err(&bad).starts_with("document 1: data[a/b]: Invalid value"), "{}", err(&bad));
        let docker = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: s\ntype: kubernetes.io/dockerconfigjson\n";
        assert_eq!(err(docker), "data[.dockerconfigjson]: Required value");
    }
}
