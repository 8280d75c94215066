//! Pod manifests: multi-document YAML parsed into Kubernetes `Pod` objects, defaulted as
//! the API server would, and validated. Errors name the field path the way kubectl does
//! (`spec.containers[0].image: Required value`); one bad document rejects the whole file.

use k8s_openapi::api::core::v1::{Container, Pod};
use serde_json::Value;

mod quantity;

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

/// Fields that change behaviour and are not implemented yet: rejected, never ignored.
const NOT_YET: &[(&str, &str)] = &[
    ("spec.initContainers", "init containers"),
    ("spec.ephemeralContainers", "ephemeral containers"),
    ("spec.activeDeadlineSeconds", "activeDeadlineSeconds"),
    ("spec.hostNetwork", "hostNetwork"),
    ("spec.hostPID", "hostPID"),
    ("spec.hostIPC", "hostIPC"),
    ("spec.imagePullSecrets", "imagePullSecrets"),
    ("spec.readinessGates", "readiness gates"),
];
const CONTAINER_NOT_YET: &[&str] =
    &["livenessProbe", "readinessProbe", "startupProbe", "lifecycle", "envFrom", "stdin", "tty", "restartPolicy"];

/// Parses every document of a manifest file into validated, defaulted pods.
pub fn parse(text: &str) -> Result<Vec<Pod>, FieldError> {
    let mut pods = Vec::new();
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
        pods.push(parse_pod(value).map_err(at)?);
    }
    if pods.is_empty() {
        return Err(FieldError::new("<yaml>", "no objects found"));
    }
    Ok(pods)
}

fn parse_pod(value: Value) -> Result<Pod, FieldError> {
    let kind = value.get("kind").and_then(Value::as_str).unwrap_or_default();
    let api = value.get("apiVersion").and_then(Value::as_str).unwrap_or_default();
    if kind.is_empty() {
        return Err(FieldError::new("kind", "Required value"));
    }
    if kind != "Pod" {
        return Err(FieldError::new("kind", format!("Unsupported value: {kind:?}: supported values: \"Pod\"")));
    }
    if api != "v1" {
        return Err(FieldError::new("apiVersion", format!("Unsupported value: {api:?}: supported values: \"v1\"")));
    }
    let pod: Pod = serde_path_to_error::deserialize(&value)
        .map_err(|e| FieldError::new(json_path(&e.path().to_string()), e.inner().to_string()))?;
    let round_trip = serde_json::to_value(&pod).expect("pods serialise");
    if let Some(path) = unknown_field(&value, &round_trip, String::new()) {
        return Err(FieldError::new(path, "unknown field"));
    }
    let mut pod = pod;
    default(&mut pod);
    validate(&pod)?;
    Ok(pod)
}

/// `spec.containers[0].image` from serde_path_to_error's `spec.containers[0].image`.
fn json_path(p: &str) -> String {
    if p == "." { String::new() } else { p.to_string() }
}

/// The first key present in `original` (and not null) but absent after a round trip
/// through the typed Pod: a field the API does not have.
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

/// The defaults the API server applies at creation.
fn default(pod: &mut Pod) {
    pod.metadata.namespace.get_or_insert_with(|| "default".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    for c in &mut spec.containers {
        if c.image_pull_policy.is_none() {
            c.image_pull_policy = Some(default_pull_policy(c.image.as_deref().unwrap_or_default()).into());
        }
    }
}

/// `Always` for `:latest` or no tag (and no digest), `IfNotPresent` otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    match image.parse::<registry_client::Reference>() {
        Ok(r) if r.is_latest() => "Always",
        _ => "IfNotPresent",
    }
}

fn validate(pod: &Pod) -> Result<(), FieldError> {
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    if name.is_empty() {
        return Err(FieldError::new("metadata.name", "Required value: name or generateName is required"));
    }
    dns_subdomain(name).map_err(|m| FieldError::new("metadata.name", format!("Invalid value: {name:?}: {m}")))?;
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    dns_label(ns).map_err(|m| FieldError::new("metadata.namespace", format!("Invalid value: {ns:?}: {m}")))?;
    let spec = pod.spec.as_ref().ok_or_else(|| FieldError::new("spec", "Required value"))?;
    let raw = serde_json::to_value(spec).expect("spec serialises");
    for (field, what) in NOT_YET {
        let key = field.trim_start_matches("spec.");
        if raw.get(key).is_some_and(|v| !v.is_null() && v != &Value::Bool(false)) {
            return Err(FieldError::new(*field, format!("Forbidden: {what} are not supported by wasmlet yet")));
        }
    }
    if spec.containers.is_empty() {
        return Err(FieldError::new("spec.containers", "Required value"));
    }
    let policy = spec.restart_policy.as_deref().unwrap_or("Always");
    one_of("spec.restartPolicy", policy, &["Always", "OnFailure", "Never"])?;
    let volumes = validate_volumes(spec)?;
    let mut names = std::collections::HashSet::new();
    for (i, c) in spec.containers.iter().enumerate() {
        let at = |f: &str| format!("spec.containers[{i}].{f}");
        if !names.insert(c.name.as_str()) {
            return Err(FieldError::new(at("name"), format!("Duplicate value: {:?}", c.name)));
        }
        validate_container(c, &at, &volumes)?;
    }
    Ok(())
}

fn validate_container(c: &Container, at: &dyn Fn(&str) -> String, volumes: &[String]) -> Result<(), FieldError> {
    if c.name.is_empty() {
        return Err(FieldError::new(at("name"), "Required value"));
    }
    dns_label(&c.name).map_err(|m| FieldError::new(at("name"), format!("Invalid value: {:?}: {m}", c.name)))?;
    let image = c.image.as_deref().unwrap_or_default();
    if image.trim().is_empty() {
        return Err(FieldError::new(at("image"), "Required value"));
    }
    image
        .parse::<registry_client::Reference>()
        .map_err(|e| FieldError::new(at("image"), format!("Invalid value: {image:?}: {e}")))?;
    one_of(
        &at("imagePullPolicy"),
        c.image_pull_policy.as_deref().unwrap_or("IfNotPresent"),
        &["Always", "IfNotPresent", "Never"],
    )?;
    let raw = serde_json::to_value(c).expect("container serialises");
    for key in CONTAINER_NOT_YET {
        if raw.get(*key).is_some_and(|v| !v.is_null() && v != &Value::Bool(false)) {
            return Err(FieldError::new(at(key), "Forbidden: not supported by wasmlet yet"));
        }
    }
    for (j, e) in c.env.iter().flatten().enumerate() {
        if e.value_from.is_some() {
            return Err(FieldError::new(at(&format!("env[{j}].valueFrom")), "Forbidden: not supported by wasmlet yet"));
        }
        if e.name.is_empty() {
            return Err(FieldError::new(at(&format!("env[{j}].name")), "Required value"));
        }
    }
    if let Some(limits) = c.resources.as_ref().and_then(|r| r.limits.as_ref()) {
        for (k, q) in limits {
            if k == "memory" && parse_bytes(&q.0).is_none() {
                return Err(FieldError::new(
                    at("resources.limits.memory"),
                    format!("Invalid value: {:?}: must be a quantity such as 64Mi", q.0),
                ));
            }
        }
    }
    for (j, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mat = |f: &str| at(&format!("volumeMounts[{j}].{f}"));
        if !volumes.contains(&m.name) {
            return Err(FieldError::new(mat("name"), format!("Not found: {:?}", m.name)));
        }
        if !m.mount_path.starts_with('/') {
            return Err(FieldError::new(
                mat("mountPath"),
                format!("Invalid value: {:?}: must be an absolute path", m.mount_path),
            ));
        }
        if m.sub_path.as_deref().is_some_and(|s| !s.is_empty()) || m.sub_path_expr.is_some() {
            return Err(FieldError::new(mat("subPath"), "Forbidden: not supported by wasmlet yet"));
        }
    }
    Ok(())
}

/// Volume names; only emptyDir and hostPath so far.
fn validate_volumes(spec: &k8s_openapi::api::core::v1::PodSpec) -> Result<Vec<String>, FieldError> {
    let mut names = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        dns_label(&v.name).map_err(|m| {
            FieldError::new(format!("spec.volumes[{i}].name"), format!("Invalid value: {:?}: {m}", v.name))
        })?;
        if names.contains(&v.name) {
            return Err(FieldError::new(format!("spec.volumes[{i}].name"), format!("Duplicate value: {:?}", v.name)));
        }
        let raw = serde_json::to_value(v).expect("volume serialises");
        let kinds: Vec<&String> =
            raw.as_object().map(|o| o.keys().filter(|k| *k != "name").collect()).unwrap_or_default();
        match kinds.as_slice() {
            [k] if *k == "emptyDir" || *k == "hostPath" => {}
            [] => {
                return Err(FieldError::new(
                    format!("spec.volumes[{i}]"),
                    "Required value: must specify a volume type",
                ));
            }
            [k] => {
                return Err(FieldError::new(
                    format!("spec.volumes[{i}].{k}"),
                    "Forbidden: not supported by wasmlet yet (supported: emptyDir, hostPath)",
                ));
            }
            _ => {
                return Err(FieldError::new(
                    format!("spec.volumes[{i}]"),
                    "Forbidden: may not specify more than 1 volume type",
                ));
            }
        }
        if let Some(h) = &v.host_path
            && !h.path.starts_with('/')
        {
            return Err(FieldError::new(
                format!("spec.volumes[{i}].hostPath.path"),
                "Invalid value: must be an absolute path",
            ));
        }
        names.push(v.name.clone());
    }
    Ok(names)
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

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn defaults_are_applied() {
        let pod = &parse(GOOD).unwrap()[0];
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(pod.metadata.namespace.as_deref(), Some("default"));
        assert_eq!(spec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(spec.termination_grace_period_seconds, Some(30));
        assert_eq!(spec.containers[0].image_pull_policy.as_deref(), Some("IfNotPresent"));
        let latest = GOOD.replace("hello:v1", "hello");
        assert_eq!(
            parse(&latest).unwrap()[0].spec.as_ref().unwrap().containers[0].image_pull_policy.as_deref(),
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
            err(&GOOD.replace("kind: Pod", "kind: Deployment")).starts_with("kind: Unsupported value: \"Deployment\"")
        );
        assert!(
            err(&format!("{GOOD}  restartPolicy: Sometimes\n"))
                .starts_with("spec.restartPolicy: Unsupported value: \"Sometimes\"")
        );
        assert!(
            err(&format!("{GOOD}    livenessProbe:\n      tcpSocket:\n        port: 80\n"))
                .starts_with("spec.containers[0].livenessProbe: Forbidden")
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
        assert!(err(&cm).starts_with("spec.volumes[0].configMap: Forbidden"));
    }
}
