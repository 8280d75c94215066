//! A container's environment the way the kubelet builds it: `envFrom` sources in
//! order (later wins), then `env` entries, each value `$(VAR)`-expanded against what
//! came before; values from ConfigMaps, Secrets, the downward API and the container's
//! resources. A missing reference that is not `optional` is an error the pod waits on
//! (`CreateContainerConfigError`).

use k8s_openapi::api::core::v1::{ConfigMap, Container, Pod, Secret};

use super::PodRecord;
use crate::node::Node;

/// Where referenced objects come from.
pub trait Objects {
    fn config_map(&self, namespace: &str, name: &str) -> Option<ConfigMap>;
    fn secret(&self, namespace: &str, name: &str) -> Option<Secret>;
}

/// `$(VAR)` replaced by its value when `lookup` knows it, left as written when not;
/// `$$` is an escaped `$`.
pub fn expand(input: &str, lookup: impl Fn(&str) -> Option<String>) -> String {
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    while let Some(pos) = rest.find('$') {
        out.push_str(&rest[..pos]);
        let after = &rest[pos + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            out.push('$');
            rest = tail;
        } else if let Some(body) = after.strip_prefix('(')
            && let Some(end) = body.find(')')
        {
            let name = &body[..end];
            match lookup(name) {
                Some(v) => out.push_str(&v),
                None => out.push_str(&rest[pos..pos + 3 + end]),
            }
            rest = &body[end + 1..];
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// The variables the pod spec gives `c` (not the image's), in order, last one winning.
pub fn container_env(
    objects: &dyn Objects,
    rec: &PodRecord,
    c: &Container,
    node: &Node,
) -> Result<Vec<(String, String)>, String> {
    let ns = rec.namespace();
    let mut vars: Vec<(String, String)> = Vec::new();
    let set = |vars: &mut Vec<(String, String)>, k: String, v: String| {
        vars.retain(|(n, _)| n != &k);
        vars.push((k, v));
    };
    for from in c.env_from.iter().flatten() {
        let prefix = from.prefix.clone().unwrap_or_default();
        let entries: Vec<(String, String)> = if let Some(r) = &from.config_map_ref {
            match objects.config_map(ns, &r.name) {
                Some(cm) => cm.data.unwrap_or_default().into_iter().collect(),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("configmap \"{}\" not found", r.name)),
            }
        } else if let Some(r) = &from.secret_ref {
            match objects.secret(ns, &r.name) {
                Some(s) => s.data.unwrap_or_default().into_iter().map(|(k, v)| (k, lossy(&v.0))).collect(),
                None if r.optional == Some(true) => continue,
                None => return Err(format!("secret \"{}\" not found", r.name)),
            }
        } else {
            continue;
        };
        for (k, v) in entries {
            set(&mut vars, format!("{prefix}{k}"), v);
        }
    }
    for e in c.env.iter().flatten() {
        let value = match &e.value_from {
            None => {
                let known = vars.clone();
                expand(e.value.as_deref().unwrap_or_default(), |n| {
                    known.iter().rev().find(|(k, _)| k == n).map(|(_, v)| v.clone())
                })
            }
            Some(from) => {
                if let Some(r) = &from.config_map_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.config_map(ns, &r.name) {
                        Some(cm) => match cm.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => v.clone(),
                            None if optional => continue,
                            None => return Err(format!("couldn't find key {} in ConfigMap {ns}/{}", r.key, r.name)),
                        },
                        None if optional => continue,
                        None => return Err(format!("configmap \"{}\" not found", r.name)),
                    }
                } else if let Some(r) = &from.secret_key_ref {
                    let optional = r.optional == Some(true);
                    match objects.secret(ns, &r.name) {
                        Some(s) => match s.data.as_ref().and_then(|d| d.get(&r.key)) {
                            Some(v) => lossy(&v.0),
                            None if optional => continue,
                            None => return Err(format!("couldn't find key {} in Secret {ns}/{}", r.key, r.name)),
                        },
                        None if optional => continue,
                        None => return Err(format!("secret \"{}\" not found", r.name)),
                    }
                } else if let Some(f) = &from.field_ref {
                    field_value(&rec.pod, rec.pod_ip.as_deref(), node, &f.field_path)?
                } else if let Some(r) = &from.resource_field_ref {
                    let name = r.container_name.as_deref().filter(|n| !n.is_empty()).unwrap_or(&c.name);
                    let divisor = r.divisor.as_ref().map(|d| d.0.as_str());
                    resource_value(&rec.pod, name, &r.resource, divisor, node)?
                } else {
                    continue;
                }
            }
        };
        set(&mut vars, e.name.clone(), value);
    }
    Ok(vars)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A downward-API field of the pod.
pub fn field_value(pod: &Pod, pod_ip: Option<&str>, node: &Node, path: &str) -> Result<String, String> {
    let m = &pod.metadata;
    let keyed =
        |prefix: &str| path.strip_prefix(prefix).and_then(|r| r.strip_prefix("['")).and_then(|r| r.strip_suffix("']"));
    let spec = pod.spec.as_ref();
    Ok(match path {
        "metadata.name" => m.name.clone().unwrap_or_default(),
        "metadata.namespace" => m.namespace.clone().unwrap_or_else(|| "default".into()),
        "metadata.uid" => m.uid.clone().unwrap_or_default(),
        "metadata.labels" => map_lines(m.labels.as_ref()),
        "metadata.annotations" => map_lines(m.annotations.as_ref()),
        "spec.nodeName" => node.name.clone(),
        "spec.serviceAccountName" => spec
            .and_then(|s| s.service_account_name.clone().or_else(|| s.service_account.clone()))
            .unwrap_or_else(|| "default".into()),
        "status.podIP" | "status.podIPs" => pod_ip.unwrap_or_default().to_string(),
        "status.hostIP" | "status.hostIPs" => node.ip.clone(),
        _ => {
            if let Some(k) = keyed("metadata.labels") {
                m.labels.as_ref().and_then(|l| l.get(k)).cloned().unwrap_or_default()
            } else if let Some(k) = keyed("metadata.annotations") {
                m.annotations.as_ref().and_then(|l| l.get(k)).cloned().unwrap_or_default()
            } else {
                return Err(format!("unsupported fieldPath {path:?}"));
            }
        }
    })
}

/// Labels or annotations as a volume file shows them: `key="escaped value"` lines, sorted.
fn map_lines(map: Option<&std::collections::BTreeMap<String, String>>) -> String {
    map.into_iter()
        .flatten()
        .map(|(k, v)| format!("{k}={}\n", serde_json::to_string(v).expect("strings serialise")))
        .collect()
}

/// `limits.cpu` and friends of container `name`, divided by `divisor` and rounded up
/// as the kubelet does; an unset limit is the node's allocatable, an unset request the
/// limit (the API server's default) or zero.
pub fn resource_value(
    pod: &Pod,
    name: &str,
    resource: &str,
    divisor: Option<&str>,
    node: &Node,
) -> Result<String, String> {
    let spec = pod.spec.as_ref().ok_or("pod has no spec")?;
    let c = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .find(|c| c.name == name)
        .ok_or_else(|| format!("container {name} not found"))?;
    let (kind, what) = resource.split_once('.').ok_or_else(|| format!("unsupported resource {resource:?}"))?;
    let get = |list: Option<
        &std::collections::BTreeMap<String, k8s_openapi::apimachinery::pkg::api::resource::Quantity>,
    >| { list.and_then(|l| l.get(what)).map(|q| q.0.clone()) };
    let limits = c.resources.as_ref().and_then(|r| r.limits.as_ref());
    let requests = c.resources.as_ref().and_then(|r| r.requests.as_ref());
    let quantity = match kind {
        "limits" => get(limits),
        _ => get(requests).or_else(|| get(limits)),
    };
    if what == "cpu" {
        let millis = match quantity {
            Some(q) => crate::spec::parse_millicores(&q).ok_or_else(|| format!("bad quantity {q:?}"))?,
            None if kind == "limits" => node.cpu_millis,
            None => 0,
        };
        let d = crate::spec::parse_millicores(divisor.unwrap_or("1")).filter(|d| *d > 0).unwrap_or(1000);
        Ok(millis.div_ceil(d).to_string())
    } else {
        let bytes = match quantity {
            Some(q) => crate::spec::parse_bytes(&q).ok_or_else(|| format!("bad quantity {q:?}"))?,
            None if kind == "limits" && what == "memory" => node.memory_bytes,
            None if kind == "limits" => node.ephemeral_bytes,
            None => 0,
        };
        let d = crate::spec::parse_bytes(divisor.unwrap_or("1")).filter(|d| *d > 0).unwrap_or(1);
        Ok(bytes.div_ceil(d).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expansion_follows_the_kubelet() {
        let vars = |n: &str| match n {
            "A" => Some("1".to_string()),
            "B" => Some("$(A)".to_string()),
            _ => None,
        };
        assert_eq!(expand("x$(A)y", vars), "x1y");
        assert_eq!(expand("$(B)", vars), "$(A)", "values are not expanded twice");
        assert_eq!(expand("$(MISSING) stays", vars), "$(MISSING) stays");
        assert_eq!(expand("$$(A) escapes", vars), "$(A) escapes");
        assert_eq!(expand("cost $5 and $", vars), "cost $5 and $");
        assert_eq!(expand("$(unclosed", vars), "$(unclosed");
        assert_eq!(expand("é$(A)ü", vars), "é1ü");
    }

    #[test]
    fn resources_round_up_by_the_divisor() {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"cpu": "1500m", "memory": "64Mi"}, "requests": {"cpu": "250m"}}}]}
        }))
        .unwrap();
        let node = Node {
            name: "n".into(),
            ip: "10.0.0.1".into(),
            cpu_millis: 2000,
            memory_bytes: 1 << 30,
            ephemeral_bytes: 1 << 32,
        };
        assert_eq!(resource_value(&pod, "c", "limits.cpu", None, &node).unwrap(), "2");
        assert_eq!(resource_value(&pod, "c", "limits.cpu", Some("1m"), &node).unwrap(), "1500");
        assert_eq!(resource_value(&pod, "c", "requests.cpu", Some("1m"), &node).unwrap(), "250");
        assert_eq!(resource_value(&pod, "c", "limits.memory", Some("1Mi"), &node).unwrap(), "64");
        assert_eq!(
            resource_value(&pod, "c", "requests.memory", None, &node).unwrap(),
            "67108864",
            "request defaults to the limit"
        );
        assert_eq!(
            resource_value(&pod, "c", "limits.ephemeral-storage", Some("1Gi"), &node).unwrap(),
            "4",
            "unset limit: allocatable"
        );
    }
}
