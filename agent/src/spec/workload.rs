//! Deployments and Jobs: the API server's defaults and validation. Their pod template
//! is defaulted and validated as a pod, with errors under `spec.template`.

use k8s_openapi::api::apps::v1::{Deployment, DeploymentStrategy, RollingUpdateDeployment};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use serde_json::Value;

use super::support::{self, Support};
use super::{FieldError, one_of, pod, validate_meta};

pub(super) fn deployment(mut d: Deployment) -> Result<Deployment, FieldError> {
    d.metadata.namespace.get_or_insert_with(|| "default".into());
    validate_meta(&d.metadata)?;
    let spec = &mut d.spec;
    check_fields(&serde_json::to_value(&*spec).expect("serialises"), "Deployment")?;
    let replicas = *spec.replicas.get_or_insert(1);
    non_negative("spec.replicas", replicas.into())?;
    non_negative("spec.minReadySeconds", spec.min_ready_seconds.unwrap_or(0).into())?;
    spec.revision_history_limit.get_or_insert(10);
    let deadline = *spec.progress_deadline_seconds.get_or_insert(600);
    if deadline <= spec.min_ready_seconds.unwrap_or(0) {
        return Err(FieldError::new(
            "spec.progressDeadlineSeconds",
            format!("Invalid value: {deadline}: must be greater than minReadySeconds"),
        ));
    }
    let strategy = spec.strategy.get_or_insert_with(DeploymentStrategy::default);
    let kind = strategy.type_.get_or_insert_with(|| "RollingUpdate".into()).clone();
    one_of("spec.strategy.type", &kind, &["Recreate", "RollingUpdate"])?;
    if kind == "Recreate" {
        if strategy.rolling_update.is_some() {
            return Err(FieldError::new(
                "spec.strategy.rollingUpdate",
                "Forbidden: may not be specified when strategy `type` is 'Recreate'",
            ));
        }
    } else {
        let ru = strategy.rolling_update.get_or_insert_with(RollingUpdateDeployment::default);
        let surge = ru.max_surge.get_or_insert(IntOrString::String("25%".into())).clone();
        let unavailable = ru.max_unavailable.get_or_insert(IntOrString::String("25%".into())).clone();
        let s = int_or_percent("spec.strategy.rollingUpdate.maxSurge", &surge)?;
        let u = int_or_percent("spec.strategy.rollingUpdate.maxUnavailable", &unavailable)?;
        if matches!(unavailable, IntOrString::String(_)) && u > 100 {
            return Err(FieldError::new(
                "spec.strategy.rollingUpdate.maxUnavailable",
                format!("Invalid value: {:?}: must not be greater than 100%", show(&unavailable)),
            ));
        }
        if s == 0 && u == 0 {
            return Err(FieldError::new(
                "spec.strategy.rollingUpdate.maxUnavailable",
                format!("Invalid value: {}: may not be 0 when `maxSurge` is 0", show(&unavailable)),
            ));
        }
    }
    selector(&spec.selector, "spec.selector")?;
    let labels = spec.template.metadata.as_ref().and_then(|m| m.labels.clone()).unwrap_or_default();
    if !matches(&spec.selector, &labels) {
        return Err(FieldError::new(
            "spec.template.metadata.labels",
            format!("Invalid value: {labels:?}: `selector` does not match template `labels`"),
        ));
    }
    let namespace = d.metadata.namespace.clone();
    template(&mut d.spec.template, namespace, &["Always"])?;
    Ok(d)
}

pub(super) fn job(mut j: Job) -> Result<Job, FieldError> {
    j.metadata.namespace.get_or_insert_with(|| "default".into());
    validate_meta(&j.metadata)?;
    let spec = j.spec.as_mut().ok_or_else(|| FieldError::new("spec", "Required value"))?;
    check_fields(&serde_json::to_value(&*spec).expect("serialises"), "Job")?;
    if spec.completions.is_none() && spec.parallelism.is_none() {
        spec.completions = Some(1);
    }
    let parallelism = *spec.parallelism.get_or_insert(1);
    non_negative("spec.parallelism", parallelism.into())?;
    if let Some(c) = spec.completions {
        non_negative("spec.completions", c.into())?;
    }
    non_negative("spec.backoffLimit", (*spec.backoff_limit.get_or_insert(6)).into())?;
    if let Some(t) = spec.ttl_seconds_after_finished {
        non_negative("spec.ttlSecondsAfterFinished", t.into())?;
    }
    if let Some(d) = spec.active_deadline_seconds
        && d < 1
    {
        return Err(FieldError::new("spec.activeDeadlineSeconds", format!("Invalid value: {d}: must be at least 1")));
    }
    let mode = spec.completion_mode.get_or_insert_with(|| "NonIndexed".into()).clone();
    one_of("spec.completionMode", &mode, &["NonIndexed", "Indexed"])?;
    if mode == "Indexed" && spec.completions.is_none() {
        return Err(FieldError::new("spec.completions", "Required value: when completion mode is Indexed"));
    }
    spec.suspend.get_or_insert(false);
    let replacement = spec.pod_replacement_policy.get_or_insert_with(|| "TerminatingOrFailed".into()).clone();
    one_of("spec.podReplacementPolicy", &replacement, &["TerminatingOrFailed"])?;
    let namespace = j.metadata.namespace.clone();
    let spec = j.spec.as_mut().expect("checked above");
    template(&mut spec.template, namespace, &["OnFailure", "Never"])?;
    Ok(j)
}

/// The fields of a Deployment or Job spec, against the support table.
fn check_fields(spec: &Value, kind: &str) -> Result<(), FieldError> {
    for (k, v) in spec.as_object().into_iter().flatten() {
        if v.is_null() || k == "template" {
            continue;
        }
        match support::lookup(&format!("{kind}.spec.{k}")) {
            Some(Support::Honoured(_) | Support::NoEffect(_)) => {}
            Some(Support::Rejected(why)) => {
                return Err(FieldError::new(format!("spec.{k}"), format!("Forbidden: {why}")));
            }
            None => {
                return Err(FieldError::new(
                    format!("spec.{k}"),
                    "Forbidden: not supported by wasmlet (see `wasmlet explain-support`)",
                ));
            }
        }
    }
    Ok(())
}

/// Defaults and validates a pod template as the pod it will make.
fn template(t: &mut PodTemplateSpec, namespace: Option<String>, restart: &[&str]) -> Result<(), FieldError> {
    let mut meta = t.metadata.clone().unwrap_or_default();
    if meta.name.is_some() || meta.namespace.as_ref().is_some_and(|n| Some(n) != namespace.as_ref()) {
        return Err(FieldError::new("spec.template.metadata", "Forbidden: name and namespace come from the owner"));
    }
    meta.name = Some("template".into());
    meta.namespace = namespace;
    let mut p = Pod { metadata: meta, spec: Some(t.spec.clone().unwrap_or_default()), status: None };
    if t.spec.as_ref().and_then(|s| s.restart_policy.as_ref()).is_none() && !restart.contains(&"Always") {
        // the API server defaults Always, which a Job then refuses
        return Err(FieldError::new(
            "spec.template.spec.restartPolicy",
            format!("Required value: supported values: {}", quoted(restart)),
        ));
    }
    pod::default(&mut p);
    pod::validate(&p).map_err(|mut e| {
        e.field = format!("spec.template.{}", e.field);
        e
    })?;
    let policy = p.spec.as_ref().and_then(|s| s.restart_policy.clone()).unwrap_or_default();
    one_of("spec.template.spec.restartPolicy", &policy, restart)?;
    t.spec = p.spec;
    Ok(())
}

fn quoted(values: &[&str]) -> String {
    values.iter().map(|v| format!("{v:?}")).collect::<Vec<_>>().join(", ")
}

fn non_negative(field: &str, n: i64) -> Result<(), FieldError> {
    if n < 0 {
        return Err(FieldError::new(field, format!("Invalid value: {n}: must be greater than or equal to 0")));
    }
    Ok(())
}

fn show(v: &IntOrString) -> String {
    match v {
        IntOrString::Int(i) => i.to_string(),
        IntOrString::String(s) => s.clone(),
    }
}

/// The number or percentage of an `IntOrString`, checked.
fn int_or_percent(field: &str, v: &IntOrString) -> Result<i64, FieldError> {
    let bad = |m: &str| FieldError::new(field, format!("Invalid value: {:?}: {m}", show(v)));
    let n = match v {
        IntOrString::Int(i) => i64::from(*i),
        IntOrString::String(s) => s
            .strip_suffix('%')
            .and_then(|p| p.parse::<i64>().ok())
            .ok_or_else(|| bad("a valid percent string must be a numeric string followed by an ending '%'"))?,
    };
    if n < 0 {
        return Err(bad("must be greater than or equal to 0"));
    }
    Ok(n)
}

/// `value` resolved against `total`: a count, or a percentage rounded up or down.
pub fn scaled(value: &IntOrString, total: i32, round_up: bool) -> i32 {
    match value {
        IntOrString::Int(i) => *i,
        IntOrString::String(s) => {
            let p = s.trim_end_matches('%').parse::<i64>().unwrap_or(0);
            let n = i64::from(total) * p;
            (if round_up { (n + 99) / 100 } else { n / 100 }) as i32
        }
    }
}

fn selector(s: &LabelSelector, field: &str) -> Result<(), FieldError> {
    let empty = s.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && s.match_expressions.as_ref().is_none_or(|e| e.is_empty());
    if empty {
        return Err(FieldError::new(field, "Required value"));
    }
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        one_of(&format!("{at}.operator"), &e.operator, &["In", "NotIn", "Exists", "DoesNotExist"])?;
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        let wants_values = matches!(e.operator.as_str(), "In" | "NotIn");
        if has_values != wants_values {
            let m = if wants_values {
                "Required value: must be specified when `operator` is 'In' or 'NotIn'"
            } else {
                "Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            };
            return Err(FieldError::new(format!("{at}.values"), m));
        }
    }
    Ok(())
}

pub use super::selector::matches;

/// The controlling owner of a pod, if a Deployment or Job.
pub fn controller_of(
    pod: &k8s_openapi::api::core::v1::Pod,
) -> Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference> {
    pod.metadata
        .owner_references
        .iter()
        .flatten()
        .find(|o| o.controller == Some(true) && (o.kind == "Deployment" || o.kind == "Job"))
}

#[cfg(test)]
mod tests {
    use super::super::{Object, parse};
    use super::*;

    const DEPLOY: &str = "apiVersion: apps/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  replicas: 3\n  selector:\n    matchLabels:\n      app: web\n  template:\n    metadata:\n      labels:\n        app: web\n    spec:\n      containers:\n      - name: app\n        image: 127.0.0.1:5000/apps/hello:v1\n";
    const JOB: &str = "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: batch\nspec:\n  template:\n    spec:\n      restartPolicy: Never\n      containers:\n      - name: app\n        image: 127.0.0.1:5000/apps/hello:v1\n";

    fn err(yaml: &str) -> String {
        parse(yaml).unwrap_err().to_string()
    }

    #[test]
    fn deployments_get_the_api_server_defaults() {
        let Object::Deployment(d) = &parse(DEPLOY).unwrap()[0] else { panic!() };
        let spec = &d.spec;
        let ru = spec.strategy.as_ref().unwrap().rolling_update.as_ref().unwrap();
        assert_eq!(ru.max_surge, Some(IntOrString::String("25%".into())));
        assert_eq!(spec.progress_deadline_seconds, Some(600));
        let tspec = spec.template.spec.as_ref().unwrap();
        assert_eq!(tspec.restart_policy.as_deref(), Some("Always"));
        assert_eq!(tspec.containers[0].termination_message_path.as_deref(), Some("/dev/termination-log"));
    }

    #[test]
    fn deployment_errors_name_the_field() {
        assert!(
            err(&DEPLOY.replace("      labels:\n        app: web\n", "      labels:\n        app: other\n"))
                .starts_with("spec.template.metadata.labels: Invalid value")
        );
        assert_eq!(
            err(&DEPLOY.replace("image: 127", "imag: 127")),
            "spec.template.spec.containers[0].imag: unknown field"
        );
        assert_eq!(
            err(&DEPLOY.replace("        image: 127.0.0.1:5000/apps/hello:v1\n", "")),
            "spec.template.spec.containers[0].image: Required value"
        );
        assert!(
            err(&DEPLOY.replace("    spec:\n", "    spec:\n      restartPolicy: Never\n"))
                .starts_with("spec.template.spec.restartPolicy: Unsupported value: \"Never\"")
        );
        assert!(err(&DEPLOY.replace("replicas: 3", "replicas: -1")).starts_with("spec.replicas: Invalid value: -1"));
        let zero = DEPLOY.replace(
            "  selector:",
            "  strategy:\n    rollingUpdate:\n      maxSurge: 0\n      maxUnavailable: 0\n  selector:",
        );
        assert!(err(&zero).contains("may not be 0 when `maxSurge` is 0"), "{}", err(&zero));
        assert!(err(&DEPLOY.replace("replicas: 3", "paused: true")).starts_with("spec.paused: Forbidden"));
        assert!(err(&DEPLOY.replace("apps/v1", "v1")).starts_with("apiVersion: Unsupported value: \"v1\""));
    }

    #[test]
    fn jobs_get_the_api_server_defaults_and_checks() {
        let Object::Job(j) = &parse(JOB).unwrap()[0] else { panic!() };
        let spec = j.spec.as_ref().unwrap();
        assert_eq!((spec.completions, spec.parallelism, spec.backoff_limit), (Some(1), Some(1), Some(6)));
        assert_eq!(spec.completion_mode.as_deref(), Some("NonIndexed"));
        let queue = JOB.replace("spec:\n  template", "spec:\n  parallelism: 3\n  template");
        let Object::Job(j) = &parse(&queue).unwrap()[0] else { panic!() };
        assert_eq!(j.spec.as_ref().unwrap().completions, None, "a work queue has no completion count");
        assert!(
            err(&JOB.replace("      restartPolicy: Never\n", ""))
                .starts_with("spec.template.spec.restartPolicy: Required value")
        );
        assert!(
            err(&JOB.replace("restartPolicy: Never", "restartPolicy: Always"))
                .starts_with("spec.template.spec.restartPolicy: Unsupported value: \"Always\"")
        );
        let indexed = JOB.replace(
            "spec:\n  template",
            "spec:\n  completionMode: Indexed\n  completions: null\n  parallelism: 2\n  template",
        );
        assert_eq!(err(&indexed), "spec.completions: Required value: when completion mode is Indexed");
        assert!(
            err(&JOB.replace("spec:\n  template", "spec:\n  podFailurePolicy:\n    rules: []\n  template"))
                .starts_with("spec.podFailurePolicy: Forbidden")
        );
    }

    #[test]
    fn surge_and_unavailable_round_as_upstream() {
        let pct = IntOrString::String("25%".into());
        assert_eq!((scaled(&pct, 3, true), scaled(&pct, 3, false)), (1, 0));
        assert_eq!((scaled(&pct, 10, true), scaled(&pct, 10, false)), (3, 2));
        assert_eq!(scaled(&IntOrString::Int(2), 10, true), 2);
    }
}
