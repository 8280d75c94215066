//! Pods: the API server's defaults, then validation with kubectl-style field paths.
//! Which fields are honoured at all comes from [`super::support`].

use k8s_openapi::api::core::v1::{
    Container, DownwardAPIVolumeFile, KeyToPath, Lifecycle, LifecycleHandler, Pod, PodSpec, Probe,
};
use serde_json::Value;

use super::support::{self, Support};
use super::{FieldError, dns_label, one_of, parse_bytes, parse_millicores, validate_meta};

/// The defaults the API server applies at creation.
pub(super) fn default(pod: &mut Pod) {
    pod.metadata.namespace.get_or_insert_with(|| "default".into());
    let spec = pod.spec.get_or_insert_with(Default::default);
    spec.restart_policy.get_or_insert_with(|| "Always".into());
    spec.termination_grace_period_seconds.get_or_insert(30);
    spec.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    let host_network = spec.host_network == Some(true);
    let containers = spec.init_containers.iter_mut().flatten().chain(spec.containers.iter_mut());
    for c in containers {
        if c.image_pull_policy.is_none() {
            c.image_pull_policy = Some(default_pull_policy(c.image.as_deref().unwrap_or_default()).into());
        }
        c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
        c.termination_message_policy.get_or_insert_with(|| "File".into());
        for p in [&mut c.liveness_probe, &mut c.readiness_probe, &mut c.startup_probe].into_iter().flatten() {
            default_probe(p);
        }
        for h in c.lifecycle.iter_mut().flat_map(|l| [&mut l.post_start, &mut l.pre_stop]).flatten() {
            if let Some(g) = &mut h.http_get {
                g.path.get_or_insert_with(|| "/".into());
                g.scheme.get_or_insert_with(|| "HTTP".into());
            }
        }
        for p in c.ports.iter_mut().flatten() {
            p.protocol.get_or_insert_with(|| "TCP".into());
            if host_network && p.host_port.is_none() {
                // the API server's default: a host-network pod's port is its host port
                p.host_port = Some(p.container_port);
            }
        }
    }
    for v in spec.volumes.iter_mut().flatten() {
        if let Some(c) = &mut v.config_map {
            c.default_mode.get_or_insert(0o644);
        }
        if let Some(s) = &mut v.secret {
            s.default_mode.get_or_insert(0o644);
        }
        if let Some(d) = &mut v.downward_api {
            d.default_mode.get_or_insert(0o644);
        }
        if let Some(p) = &mut v.projected {
            p.default_mode.get_or_insert(0o644);
        }
    }
}

fn default_probe(p: &mut Probe) {
    p.initial_delay_seconds.get_or_insert(0);
    p.period_seconds.get_or_insert(10);
    p.timeout_seconds.get_or_insert(1);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(g) = &mut p.http_get {
        g.path.get_or_insert_with(|| "/".into());
        g.scheme.get_or_insert_with(|| "HTTP".into());
    }
}

/// `Always` for `:latest` or no tag (and no digest), `IfNotPresent` otherwise.
pub fn default_pull_policy(image: &str) -> &'static str {
    match image.parse::<registry_client::Reference>() {
        Ok(r) if r.is_latest() => "Always",
        _ => "IfNotPresent",
    }
}

fn forbid(field: String, why: &str) -> FieldError {
    FieldError::new(field, format!("Forbidden: {why}"))
}

/// Every set key of `value` (an object) must be honoured or without effect.
fn check_support(value: &Value, table_prefix: &str, field_prefix: &str, skip: &[&str]) -> Result<(), FieldError> {
    for (k, v) in value.as_object().into_iter().flatten() {
        if v.is_null() || skip.contains(&k.as_str()) {
            continue;
        }
        let field = format!("{field_prefix}.{k}");
        match support::lookup(&format!("{table_prefix}.{k}")) {
            Some(Support::Honoured(_) | Support::NoEffect(_)) => {}
            Some(Support::Rejected(why)) => return Err(forbid(field, why)),
            None => return Err(forbid(field, "not supported by wasmlet (see `wasmlet explain-support`)")),
        }
    }
    Ok(())
}

/// The one RuntimeClass handler this node has: the image kind picks Wasm or Linux.
pub const RUNTIME_CLASS: &str = "wasmlet";

pub(super) fn validate(pod: &Pod) -> Result<(), FieldError> {
    validate_in(pod, false)
}

/// As [`validate`]; `cluster` when an API server sent the pod, so that what needs one
/// (service-account tokens) is accepted.
pub(super) fn validate_in(pod: &Pod, cluster: bool) -> Result<(), FieldError> {
    validate_meta(&pod.metadata)?;
    super::annotations::http_options(pod.metadata.annotations.as_ref())?;
    let spec = pod.spec.as_ref().ok_or_else(|| FieldError::new("spec", "Required value"))?;
    let raw = serde_json::to_value(spec).expect("spec serialises");
    check_support(&raw, "spec", "spec", &[])?;
    check_support(&raw["securityContext"], "spec.securityContext", "spec.securityContext", &[])?;
    if spec.containers.is_empty() {
        return Err(FieldError::new("spec.containers", "Required value"));
    }
    one_of(
        "spec.restartPolicy",
        spec.restart_policy.as_deref().unwrap_or("Always"),
        &["Always", "OnFailure", "Never"],
    )?;
    if let Some(rc) = &spec.runtime_class_name {
        one_of("spec.runtimeClassName", rc, &[RUNTIME_CLASS])?;
    }
    if let Some(d) = spec.active_deadline_seconds
        && d < 1
    {
        return Err(FieldError::new("spec.activeDeadlineSeconds", format!("Invalid value: {d}: must be at least 1")));
    }
    if let Some(g) = spec.termination_grace_period_seconds
        && g < 0
    {
        return Err(FieldError::new("spec.terminationGracePeriodSeconds", format!("Invalid value: {g}: must be >= 0")));
    }
    for (i, r) in spec.image_pull_secrets.iter().flatten().enumerate() {
        let field = format!("spec.imagePullSecrets[{i}].name");
        if r.name.is_empty() {
            return Err(FieldError::new(field, "Required value"));
        }
        super::dns_subdomain(&r.name)
            .map_err(|m| FieldError::new(field, format!("Invalid value: {:?}: {m}", r.name)))?;
    }
    super::security::validate_pod(spec)?;
    let volumes = validate_volumes(spec, cluster)?;
    let mut names = std::collections::HashSet::new();
    let init =
        spec.init_containers.iter().flatten().enumerate().map(|(i, c)| (format!("spec.initContainers[{i}]"), c, true));
    let app = spec.containers.iter().enumerate().map(|(i, c)| (format!("spec.containers[{i}]"), c, false));
    for (path, c, is_init) in init.chain(app) {
        if !names.insert(c.name.as_str()) {
            return Err(FieldError::new(format!("{path}.name"), format!("Duplicate value: {:?}", c.name)));
        }
        let raw = serde_json::to_value(c).expect("container serialises");
        check_support(&raw, "spec.containers[]", &path, &[])?;
        check_support(
            &raw["securityContext"],
            "spec.containers[].securityContext",
            &format!("{path}.securityContext"),
            &[],
        )?;
        validate_container(c, &path, is_init, &volumes)?;
    }
    Ok(())
}

fn validate_container(c: &Container, path: &str, is_init: bool, volumes: &[String]) -> Result<(), FieldError> {
    let at = |f: &str| format!("{path}.{f}");
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
    let sidecar = match c.restart_policy.as_deref() {
        None => false,
        Some("Always") if is_init => true,
        Some(p) if is_init => {
            return Err(FieldError::new(
                at("restartPolicy"),
                format!("Unsupported value: {p:?}: supported values: \"Always\""),
            ));
        }
        Some(_) => {
            return Err(forbid(
                at("restartPolicy"),
                "container restart rules are not supported by wasmlet yet; only sidecars (init containers) may set it",
            ));
        }
    };
    if is_init && !sidecar {
        for (f, set) in [
            ("livenessProbe", c.liveness_probe.is_some()),
            ("readinessProbe", c.readiness_probe.is_some()),
            ("startupProbe", c.startup_probe.is_some()),
            ("lifecycle", c.lifecycle.is_some()),
        ] {
            if set {
                return Err(forbid(at(f), "may not be set for init containers without restartPolicy=Always"));
            }
        }
    }
    one_of(
        &at("terminationMessagePolicy"),
        c.termination_message_policy.as_deref().unwrap_or("File"),
        &["File", "FallbackToLogsOnError"],
    )?;
    let tmp = c.termination_message_path.as_deref().unwrap_or("/dev/termination-log");
    if !tmp.starts_with('/') || tmp.split('/').any(|s| s == "..") || tmp == "/" {
        return Err(FieldError::new(
            at("terminationMessagePath"),
            format!("Invalid value: {tmp:?}: must be an absolute file path"),
        ));
    }
    validate_env(c, &at)?;
    for (kind, list) in [
        ("limits", c.resources.as_ref().and_then(|r| r.limits.as_ref())),
        ("requests", c.resources.as_ref().and_then(|r| r.requests.as_ref())),
    ] {
        for (k, q) in list.into_iter().flatten() {
            let field = at(&format!("resources.{kind}.{k}"));
            let ok = match k.as_str() {
                "memory" | "ephemeral-storage" => parse_bytes(&q.0).is_some(),
                "cpu" => parse_millicores(&q.0).is_some(),
                _ => return Err(forbid(field, "only cpu, memory and ephemeral-storage are supported")),
            };
            if !ok {
                return Err(FieldError::new(
                    field,
                    format!("Invalid value: {:?}: must be a quantity such as 64Mi or 500m", q.0),
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
        if let Some(s) = m.sub_path.as_deref().filter(|s| !s.is_empty()) {
            relative_path(s).map_err(|e| FieldError::new(mat("subPath"), format!("Invalid value: {s:?}: {e}")))?;
        }
        if m.sub_path_expr.is_some() {
            return Err(forbid(mat("subPathExpr"), "not supported by wasmlet yet"));
        }
        if m.mount_propagation.as_deref().is_some_and(|p| p != "None") {
            return Err(forbid(mat("mountPropagation"), "only None is supported"));
        }
        if m.recursive_read_only.as_deref().is_some_and(|p| p != "Disabled") {
            return Err(forbid(mat("recursiveReadOnly"), "not supported by wasmlet yet"));
        }
    }
    let ports: Vec<&str> = c.ports.iter().flatten().filter_map(|p| p.name.as_deref()).collect();
    for (f, p, kind) in [
        ("livenessProbe", &c.liveness_probe, "liveness"),
        ("readinessProbe", &c.readiness_probe, "readiness"),
        ("startupProbe", &c.startup_probe, "startup"),
    ] {
        if let Some(p) = p {
            validate_probe(p, &at(f), kind, &ports)?;
        }
    }
    if let Some(l) = &c.lifecycle {
        validate_lifecycle(l, &at("lifecycle"), &ports)?;
    }
    Ok(())
}

fn validate_env(c: &Container, at: &dyn Fn(&str) -> String) -> Result<(), FieldError> {
    for (j, e) in c.env.iter().flatten().enumerate() {
        let eat = |f: &str| at(&format!("env[{j}].{f}"));
        if e.name.is_empty() {
            return Err(FieldError::new(eat("name"), "Required value"));
        }
        if e.name.contains('=') || !e.name.bytes().all(|b| (0x20..0x7f).contains(&b)) {
            return Err(FieldError::new(
                eat("name"),
                format!(
                    "Invalid value: {:?}: a valid environment variable name must consist only of printable ASCII characters other than '='",
                    e.name
                ),
            ));
        }
        let Some(from) = &e.value_from else { continue };
        if e.value.as_deref().is_some_and(|v| !v.is_empty()) {
            return Err(FieldError::new(
                eat("valueFrom"),
                "Invalid value: may not be specified when `value` is not empty",
            ));
        }
        let sources = [
            from.config_map_key_ref.is_some(),
            from.secret_key_ref.is_some(),
            from.field_ref.is_some(),
            from.resource_field_ref.is_some(),
        ];
        match sources.iter().filter(|s| **s).count() {
            1 => {}
            0 if from.file_key_ref.is_some() => {
                return Err(forbid(eat("valueFrom.fileKeyRef"), "not supported by wasmlet yet"));
            }
            0 => {
                return Err(FieldError::new(
                    eat("valueFrom"),
                    "Invalid value: must specify one of: `fieldRef`, `resourceFieldRef`, `configMapKeyRef` or `secretKeyRef`",
                ));
            }
            _ => {
                return Err(FieldError::new(
                    eat("valueFrom"),
                    "Invalid value: may not have more than one field specified at a time",
                ));
            }
        }
        if let Some(f) = &from.field_ref {
            field_path(&f.field_path, true).map_err(|m| {
                FieldError::new(
                    eat("valueFrom.fieldRef.fieldPath"),
                    format!("Unsupported value: {:?}: {m}", f.field_path),
                )
            })?;
        }
        if let Some(r) = &from.resource_field_ref {
            resource_path(&r.resource).map_err(|m| FieldError::new(eat("valueFrom.resourceFieldRef.resource"), m))?;
        }
        if let Some(r) = &from.config_map_key_ref
            && (r.name.is_empty() || r.key.is_empty())
        {
            return Err(FieldError::new(eat("valueFrom.configMapKeyRef"), "Required value: name and key"));
        }
        if let Some(r) = &from.secret_key_ref
            && (r.name.is_empty() || r.key.is_empty())
        {
            return Err(FieldError::new(eat("valueFrom.secretKeyRef"), "Required value: name and key"));
        }
    }
    for (j, e) in c.env_from.iter().flatten().enumerate() {
        let eat = at(&format!("envFrom[{j}]"));
        match (&e.config_map_ref, &e.secret_ref) {
            (Some(r), None) if !r.name.is_empty() => {}
            (None, Some(r)) if !r.name.is_empty() => {}
            (None, None) => {
                return Err(FieldError::new(eat, "Invalid value: must specify one of: `configMapRef` or `secretRef`"));
            }
            (Some(_), Some(_)) => {
                return Err(FieldError::new(
                    eat,
                    "Invalid value: may not have more than one field specified at a time",
                ));
            }
            _ => return Err(FieldError::new(format!("{eat}.name"), "Required value")),
        }
    }
    Ok(())
}

/// The downward API paths; `env` allows the pod-status and spec ones too.
pub fn field_path(p: &str, env: bool) -> Result<(), String> {
    let keyed = |prefix: &str| {
        p.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix("['"))
            .and_then(|r| r.strip_suffix("']"))
            .is_some_and(|k| !k.is_empty())
    };
    let meta = ["metadata.name", "metadata.namespace", "metadata.uid", "metadata.labels", "metadata.annotations"];
    let env_only = [
        "spec.nodeName",
        "spec.serviceAccountName",
        "status.hostIP",
        "status.hostIPs",
        "status.podIP",
        "status.podIPs",
    ];
    let whole_maps = ["metadata.labels", "metadata.annotations"];
    if (meta.contains(&p) && (!env || !whole_maps.contains(&p)))
        || keyed("metadata.labels")
        || keyed("metadata.annotations")
        || (env && env_only.contains(&p))
    {
        Ok(())
    } else {
        let mut all: Vec<&str> = meta.iter().copied().filter(|m| !env || !whole_maps.contains(m)).collect();
        all.push("metadata.labels['<KEY>']");
        all.push("metadata.annotations['<KEY>']");
        if env {
            all.extend(env_only);
        }
        Err(format!("supported values: {}", all.join(", ")))
    }
}

fn resource_path(r: &str) -> Result<(), String> {
    let ok = [
        "limits.cpu",
        "limits.memory",
        "limits.ephemeral-storage",
        "requests.cpu",
        "requests.memory",
        "requests.ephemeral-storage",
    ];
    if ok.contains(&r) { Ok(()) } else { Err(format!("Unsupported value: {r:?}: supported values: {}", ok.join(", "))) }
}

/// A relative path that stays below its root: no `..` element, not absolute.
pub fn relative_path(p: &str) -> Result<(), &'static str> {
    if p.starts_with('/') {
        return Err("must be a relative path");
    }
    if p.split('/').any(|s| s == "..") {
        return Err("must not contain '..'");
    }
    Ok(())
}

fn validate_probe(p: &Probe, path: &str, kind: &str, ports: &[&str]) -> Result<(), FieldError> {
    let handlers = [p.exec.is_some(), p.http_get.is_some(), p.tcp_socket.is_some(), p.grpc.is_some()];
    match handlers.iter().filter(|h| **h).count() {
        0 => return Err(FieldError::new(path.to_string(), "Required value: must specify a handler type")),
        1 => {}
        _ => return Err(FieldError::new(path.to_string(), "Forbidden: may not specify more than 1 handler type")),
    }
    if let Some(g) = &p.grpc
        && !(1..=65535).contains(&g.port)
    {
        return Err(FieldError::new(
            format!("{path}.grpc.port"),
            format!("Invalid value: {}: must be between 1 and 65535, inclusive", g.port),
        ));
    }
    for (f, v, min) in [
        ("initialDelaySeconds", p.initial_delay_seconds, 0),
        ("periodSeconds", p.period_seconds, 1),
        ("timeoutSeconds", p.timeout_seconds, 1),
        ("successThreshold", p.success_threshold, 1),
        ("failureThreshold", p.failure_threshold, 1),
    ] {
        if let Some(v) = v
            && v < min
        {
            return Err(FieldError::new(
                format!("{path}.{f}"),
                format!("Invalid value: {v}: must be greater than or equal to {min}"),
            ));
        }
    }
    if kind != "readiness" && p.success_threshold.is_some_and(|s| s != 1) {
        return Err(FieldError::new(format!("{path}.successThreshold"), "Invalid value: must be 1"));
    }
    if kind == "readiness" && p.termination_grace_period_seconds.is_some() {
        return Err(forbid(format!("{path}.terminationGracePeriodSeconds"), "may not be set for readiness probes"));
    }
    validate_handler(p.http_get.as_ref(), p.tcp_socket.as_ref().map(|t| &t.port), path, ports)
}

fn validate_handler(
    http: Option<&k8s_openapi::api::core::v1::HTTPGetAction>,
    tcp_port: Option<&k8s_openapi::apimachinery::pkg::util::intstr::IntOrString>,
    path: &str,
    ports: &[&str],
) -> Result<(), FieldError> {
    if let Some(h) = http {
        one_of(&format!("{path}.httpGet.scheme"), h.scheme.as_deref().unwrap_or("HTTP"), &["HTTP"])
            .map_err(|e| FieldError::new(e.field, format!("{} (HTTPS is not supported by wasmlet yet)", e.message)))?;
        port(&h.port, &format!("{path}.httpGet.port"), ports)?;
        if h.host.is_some() {
            return Err(forbid(
                format!("{path}.httpGet.host"),
                "not supported by wasmlet yet; the pod's address is used",
            ));
        }
    }
    if let Some(p) = tcp_port {
        port(p, &format!("{path}.tcpSocket.port"), ports)?;
    }
    Ok(())
}

fn port(
    p: &k8s_openapi::apimachinery::pkg::util::intstr::IntOrString,
    field: &str,
    ports: &[&str],
) -> Result<(), FieldError> {
    use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
    match p {
        IntOrString::Int(n) if (1..=65535).contains(n) => Ok(()),
        IntOrString::Int(n) => {
            Err(FieldError::new(field, format!("Invalid value: {n}: must be between 1 and 65535, inclusive")))
        }
        IntOrString::String(s) if ports.contains(&s.as_str()) => Ok(()),
        IntOrString::String(s) => match s.parse::<u16>() {
            Ok(n) if n > 0 => Ok(()),
            _ => Err(FieldError::new(
                field,
                format!("Invalid value: {s:?}: not a port number or a named port of this container"),
            )),
        },
    }
}

fn validate_lifecycle(l: &Lifecycle, path: &str, ports: &[&str]) -> Result<(), FieldError> {
    if l.stop_signal.is_some() {
        return Err(forbid(format!("{path}.stopSignal"), "not supported by wasmlet yet"));
    }
    for (f, h) in [("postStart", &l.post_start), ("preStop", &l.pre_stop)] {
        let Some(h) = h else { continue };
        let p = format!("{path}.{f}");
        validate_hook(h, &p, ports)?;
    }
    Ok(())
}

fn validate_hook(h: &LifecycleHandler, path: &str, ports: &[&str]) -> Result<(), FieldError> {
    if h.tcp_socket.is_some() {
        return Err(forbid(format!("{path}.tcpSocket"), "tcpSocket hooks are deprecated and not supported"));
    }
    let n = [h.exec.is_some(), h.http_get.is_some(), h.sleep.is_some()].iter().filter(|s| **s).count();
    match n {
        0 => return Err(FieldError::new(path.to_string(), "Required value: must specify a handler type")),
        1 => {}
        _ => return Err(FieldError::new(path.to_string(), "Forbidden: may not specify more than 1 handler type")),
    }
    if let Some(s) = &h.sleep
        && s.seconds < 0
    {
        return Err(FieldError::new(format!("{path}.sleep.seconds"), "Invalid value: must be >= 0"));
    }
    validate_handler(h.http_get.as_ref(), None, path, ports)
}

fn validate_items(items: Option<&Vec<KeyToPath>>, path: &str) -> Result<(), FieldError> {
    for (j, it) in items.into_iter().flatten().enumerate() {
        if it.key.is_empty() {
            return Err(FieldError::new(format!("{path}.items[{j}].key"), "Required value"));
        }
        item_path(&it.path, &format!("{path}.items[{j}].path"))?;
        mode(it.mode, &format!("{path}.items[{j}].mode"))?;
    }
    Ok(())
}

fn item_path(p: &str, field: &str) -> Result<(), FieldError> {
    if p.is_empty() {
        return Err(FieldError::new(field, "Required value"));
    }
    relative_path(p).map_err(|e| FieldError::new(field, format!("Invalid value: {p:?}: {e}")))?;
    if p.starts_with("..") {
        return Err(FieldError::new(field, format!("Invalid value: {p:?}: must not start with '..'")));
    }
    Ok(())
}

fn mode(m: Option<i32>, field: &str) -> Result<(), FieldError> {
    match m {
        Some(m) if !(0..=0o777).contains(&m) => Err(FieldError::new(
            field,
            format!("Invalid value: {m}: must be a number between 0 and 0777 (octal), both inclusive"),
        )),
        _ => Ok(()),
    }
}

fn validate_downward(items: Option<&Vec<DownwardAPIVolumeFile>>, path: &str) -> Result<(), FieldError> {
    for (j, f) in items.into_iter().flatten().enumerate() {
        let fat = format!("{path}.items[{j}]");
        item_path(&f.path, &format!("{fat}.path"))?;
        mode(f.mode, &format!("{fat}.mode"))?;
        match (&f.field_ref, &f.resource_field_ref) {
            (Some(r), None) => field_path(&r.field_path, false).map_err(|m| {
                FieldError::new(
                    format!("{fat}.fieldRef.fieldPath"),
                    format!("Unsupported value: {:?}: {m}", r.field_path),
                )
            })?,
            (None, Some(r)) => {
                resource_path(&r.resource)
                    .map_err(|m| FieldError::new(format!("{fat}.resourceFieldRef.resource"), m))?;
                if r.container_name.as_deref().unwrap_or_default().is_empty() {
                    return Err(FieldError::new(format!("{fat}.resourceFieldRef.containerName"), "Required value"));
                }
            }
            _ => {
                return Err(FieldError::new(
                    fat,
                    "Invalid value: must specify one of: `fieldRef` or `resourceFieldRef`",
                ));
            }
        }
    }
    Ok(())
}

/// Volume names, after checking each volume's source.
fn validate_volumes(spec: &PodSpec, cluster: bool) -> Result<Vec<String>, FieldError> {
    let mut names = Vec::new();
    for (i, v) in spec.volumes.iter().flatten().enumerate() {
        let at = format!("spec.volumes[{i}]");
        dns_label(&v.name)
            .map_err(|m| FieldError::new(format!("{at}.name"), format!("Invalid value: {:?}: {m}", v.name)))?;
        if names.contains(&v.name) {
            return Err(FieldError::new(format!("{at}.name"), format!("Duplicate value: {:?}", v.name)));
        }
        let raw = serde_json::to_value(v).expect("volume serialises");
        let kinds: Vec<&String> =
            raw.as_object().map(|o| o.keys().filter(|k| *k != "name").collect()).unwrap_or_default();
        match kinds.as_slice() {
            [_] => check_support(&raw, "spec.volumes[]", &at, &["name"])?,
            [] => return Err(FieldError::new(at, "Required value: must specify a volume type")),
            _ => return Err(FieldError::new(at, "Forbidden: may not specify more than 1 volume type")),
        }
        if let Some(h) = &v.host_path {
            if !h.path.starts_with('/') {
                return Err(FieldError::new(format!("{at}.hostPath.path"), "Invalid value: must be an absolute path"));
            }
            let types =
                ["", "DirectoryOrCreate", "Directory", "FileOrCreate", "File", "Socket", "CharDevice", "BlockDevice"];
            one_of(&format!("{at}.hostPath.type"), h.type_.as_deref().unwrap_or(""), &types)?;
        }
        if let Some(e) = &v.empty_dir {
            one_of(&format!("{at}.emptyDir.medium"), e.medium.as_deref().unwrap_or(""), &["", "Memory"])?;
            if let Some(q) = &e.size_limit
                && parse_bytes(&q.0).is_none()
            {
                return Err(FieldError::new(format!("{at}.emptyDir.sizeLimit"), format!("Invalid value: {:?}", q.0)));
            }
        }
        if let Some(c) = &v.config_map {
            if c.name.is_empty() {
                return Err(FieldError::new(format!("{at}.configMap.name"), "Required value"));
            }
            validate_items(c.items.as_ref(), &format!("{at}.configMap"))?;
            mode(c.default_mode, &format!("{at}.configMap.defaultMode"))?;
        }
        if let Some(s) = &v.secret {
            if s.secret_name.as_deref().unwrap_or_default().is_empty() {
                return Err(FieldError::new(format!("{at}.secret.secretName"), "Required value"));
            }
            validate_items(s.items.as_ref(), &format!("{at}.secret"))?;
            mode(s.default_mode, &format!("{at}.secret.defaultMode"))?;
        }
        if let Some(d) = &v.downward_api {
            validate_downward(d.items.as_ref(), &format!("{at}.downwardAPI"))?;
            mode(d.default_mode, &format!("{at}.downwardAPI.defaultMode"))?;
        }
        if let Some(p) = &v.projected {
            mode(p.default_mode, &format!("{at}.projected.defaultMode"))?;
            for (j, s) in p.sources.iter().flatten().enumerate() {
                let sat = format!("{at}.projected.sources[{j}]");
                if let Some(t) = &s.service_account_token {
                    if !cluster {
                        return Err(forbid(
                            format!("{sat}.serviceAccountToken"),
                            "local mode has no API server to issue tokens",
                        ));
                    }
                    item_path(&t.path, &format!("{sat}.serviceAccountToken.path"))?;
                    if let Some(e) = t.expiration_seconds
                        && !(600..=(1 << 32)).contains(&e)
                    {
                        return Err(FieldError::new(
                            format!("{sat}.serviceAccountToken.expirationSeconds"),
                            format!("Invalid value: {e}: may not specify a duration less than 10 minutes"),
                        ));
                    }
                    continue;
                }
                if s.cluster_trust_bundle.is_some() || s.pod_certificate.is_some() {
                    return Err(forbid(sat, "only configMap, secret and downwardAPI sources are supported"));
                }
                match (&s.config_map, &s.secret, &s.downward_api) {
                    (Some(c), None, None) => validate_items(c.items.as_ref(), &format!("{sat}.configMap"))?,
                    (None, Some(c), None) => validate_items(c.items.as_ref(), &format!("{sat}.secret"))?,
                    (None, None, Some(d)) => validate_downward(d.items.as_ref(), &format!("{sat}.downwardAPI"))?,
                    _ => return Err(FieldError::new(sat, "Invalid value: must specify exactly one source")),
                }
            }
        }
        names.push(v.name.clone());
    }
    Ok(names)
}
