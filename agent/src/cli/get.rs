//! `wasmlet get pods|events|configmaps|secrets|deployments|jobs [NAME] [-o wide|yaml|json]`.

use clap::Args;
use serde_json::Value;

use super::Global;

#[derive(Debug, Args)]
pub struct GetArgs {
    /// Resource type: pods (po), events (ev), configmaps (cm), secrets, deployments (deploy) or jobs.
    pub resource: String,
    /// A pod name (all pods if omitted).
    pub name: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// All namespaces.
    #[arg(short = 'A', long)]
    pub all_namespaces: bool,
    /// Output: wide, yaml or json (default: a table).
    #[arg(short = 'o', long)]
    pub output: Option<String>,
    /// Only objects whose labels match: `k=v`, `k!=v`, `k` or `!k`, comma-separated.
    #[arg(short = 'l', long)]
    pub selector: Option<String>,
}

/// Whether `labels` (a JSON object) satisfy a kubectl selector string.
fn selected(selector: Option<&str>, labels: &Value) -> bool {
    let Some(sel) = selector else { return true };
    // an invalid selector was refused before any listing
    let Ok(sel) = crate::spec::selector::parse(sel) else { return false };
    let labels = serde_json::from_value(labels.clone()).unwrap_or_default();
    crate::spec::selector::matches(&sel, &labels)
}

pub async fn run(global: &Global, args: GetArgs) -> anyhow::Result<()> {
    if let Some(sel) = &args.selector {
        crate::spec::selector::parse(sel).map_err(|e| anyhow::anyhow!("-l {sel:?}: {e}"))?;
    }
    match args.resource.as_str() {
        "events" | "event" | "ev" => return events(global, &args).await,
        "configmaps" | "configmap" | "cm" => return objects(global, &args, "configmaps").await,
        "secrets" | "secret" => return objects(global, &args, "secrets").await,
        "deployments" | "deployment" | "deploy" => return objects(global, &args, "deployments").await,
        "jobs" | "job" => return objects(global, &args, "jobs").await,
        _ => super::ensure_pods(&args.resource)?,
    }
    let client = global.client();
    let pods: Vec<Value> = match &args.name {
        Some(name) => vec![client.get(&format!("/v1/pods/{}/{name}", args.namespace)).await?],
        None => client
            .get("/v1/pods")
            .await?
            .as_array()
            .cloned()
            .unwrap_or_default()
            .into_iter()
            .filter(|p| args.all_namespaces || p["metadata"]["namespace"] == args.namespace.as_str())
            .filter(|p| selected(args.selector.as_deref(), &p["metadata"]["labels"]))
            .collect(),
    };
    // one pod by name prints the pod; otherwise a v1 List, as kubectl does
    let object = || match &args.name {
        Some(_) => pods[0].clone(),
        None => serde_json::json!({"apiVersion": "v1", "kind": "List", "items": pods}),
    };
    match args.output.as_deref() {
        Some("json") => println!("{}", serde_json::to_string_pretty(&object())?),
        Some("yaml") => print!("{}", serde_yaml_ng::to_string(&object())?),
        Some("wide") | None => table(&pods, args.output.is_some(), args.all_namespaces),
        Some(other) => anyhow::bail!(
            "unable to match a printer suitable for the output format {other:?}, allowed formats are: json,wide,yaml"
        ),
    }
    Ok(())
}

/// `get events`: the pods' events, oldest first, as kubectl prints them.
async fn events(global: &Global, args: &GetArgs) -> anyhow::Result<()> {
    let all = global.client().get("/v1/events").await?;
    let mut events: Vec<Value> = all
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|e| {
            let pod = e["pod"].as_str().unwrap_or_default();
            args.all_namespaces || pod.split('/').next() == Some(args.namespace.as_str())
        })
        .filter(|e| {
            args.name.as_deref().is_none_or(|n| e["pod"].as_str().unwrap_or_default().ends_with(&format!("/{n}")))
        })
        .collect();
    events.sort_by_key(|e| e["last_seen"].as_u64().unwrap_or(0));
    if matches!(args.output.as_deref(), Some("json")) {
        println!("{}", serde_json::to_string_pretty(&events)?);
        return Ok(());
    }
    if events.is_empty() {
        eprintln!("No events found");
        return Ok(());
    }
    let mut rows = vec![["LAST SEEN", "TYPE", "REASON", "OBJECT", "MESSAGE"].map(String::from).to_vec()];
    if args.all_namespaces {
        rows[0].insert(0, "NAMESPACE".into());
    }
    for e in events {
        let pod = e["pod"].as_str().unwrap_or_default();
        let (ns, name) = pod.split_once('/').unwrap_or(("default", pod));
        let count = e["count"].as_u64().unwrap_or(1);
        let seen = age_ms(e["last_seen"].as_u64().unwrap_or(0));
        let mut row = vec![
            if count > 1 {
                format!("{seen} (x{count} over {})", age_ms(e["first_seen"].as_u64().unwrap_or(0)))
            } else {
                seen
            },
            e["kind"].as_str().unwrap_or_default().into(),
            e["reason"].as_str().unwrap_or_default().into(),
            format!("{}/{name}", e["object"].as_str().unwrap_or("pod")),
            e["message"].as_str().unwrap_or_default().into(),
        ];
        if args.all_namespaces {
            row.insert(0, ns.into());
        }
        rows.push(row);
    }
    print_table(&rows);
    Ok(())
}

/// `get configmaps|secrets|deployments|jobs`: a row each, as kubectl prints them
/// (never a Secret's values).
async fn objects(global: &Global, args: &GetArgs, kind: &str) -> anyhow::Result<()> {
    let all = global.client().get(&format!("/v1/{kind}")).await?;
    let items: Vec<Value> = all
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|o| args.all_namespaces || o["metadata"]["namespace"] == args.namespace.as_str())
        .filter(|o| args.name.as_deref().is_none_or(|n| o["metadata"]["name"] == n))
        .filter(|o| selected(args.selector.as_deref(), &o["metadata"]["labels"]))
        .collect();
    if let Some(name) = &args.name
        && items.is_empty()
    {
        anyhow::bail!("{kind} \"{name}\" not found");
    }
    match args.output.as_deref() {
        Some("json") => {
            println!("{}", serde_json::to_string_pretty(&items)?);
            return Ok(());
        }
        Some("yaml") => {
            print!("{}", serde_yaml_ng::to_string(&items)?);
            return Ok(());
        }
        _ => {}
    }
    if items.is_empty() {
        eprintln!("No resources found");
        return Ok(());
    }
    let header: &[&str] = match kind {
        "secrets" => &["NAME", "TYPE", "DATA"],
        "deployments" => &["NAME", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"],
        "jobs" => &["NAME", "STATUS", "COMPLETIONS", "DURATION", "AGE"],
        _ => &["NAME", "DATA"],
    };
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    for o in items {
        let name = o["metadata"]["name"].as_str().unwrap_or_default().to_string();
        let created = age(o["metadata"]["creationTimestamp"].as_str().unwrap_or_default());
        let n = |v: &Value| v.as_i64().unwrap_or(0);
        let count = ["data", "binaryData"].iter().filter_map(|k| o[k].as_object()).map(|m| m.len()).sum::<usize>();
        rows.push(match kind {
            "secrets" => vec![name, o["type"].as_str().unwrap_or("Opaque").into(), count.to_string()],
            "deployments" => {
                let (spec, st) = (&o["spec"], &o["status"]);
                vec![
                    name,
                    format!("{}/{}", n(&st["readyReplicas"]), spec["replicas"].as_i64().unwrap_or(1)),
                    n(&st["updatedReplicas"]).to_string(),
                    n(&st["availableReplicas"]).to_string(),
                    created,
                ]
            }
            "jobs" => vec![name, job_status(&o), job_completions(&o), job_duration(&o), created],
            _ => vec![name, count.to_string()],
        });
    }
    print_table(&rows);
    Ok(())
}

/// kubectl's Job STATUS column.
fn job_status(job: &Value) -> String {
    let conditions = job["status"]["conditions"].as_array().cloned().unwrap_or_default();
    let holds = |t: &str| conditions.iter().any(|c| c["type"] == t && c["status"] == "True");
    let status = if holds("Complete") {
        "Complete"
    } else if holds("Failed") {
        "Failed"
    } else if holds("Suspended") {
        "Suspended"
    } else {
        "Running"
    };
    status.into()
}

/// `2/4`, or `1/1 of 3` for a work queue (parallelism 3, no completion count).
fn job_completions(job: &Value) -> String {
    let succeeded = job["status"]["succeeded"].as_i64().unwrap_or(0);
    match job["spec"]["completions"].as_i64() {
        Some(c) => format!("{succeeded}/{c}"),
        None => format!("{succeeded}/1 of {}", job["spec"]["parallelism"].as_i64().unwrap_or(1)),
    }
}

fn job_duration(job: &Value) -> String {
    let Some(start) = job["status"]["startTime"].as_str().and_then(parse_time) else { return String::new() };
    let end = job["status"]["completionTime"].as_str().and_then(parse_time).unwrap_or_else(crate::time::now_ms);
    age_ms(start + crate::time::now_ms().saturating_sub(end))
}

fn table(pods: &[Value], wide: bool, namespaces: bool) {
    if pods.is_empty() {
        eprintln!("No resources found");
        return;
    }
    let mut rows = vec![];
    let mut header = vec!["NAME", "READY", "STATUS", "RESTARTS", "AGE"];
    if namespaces {
        header.insert(0, "NAMESPACE");
    }
    if wide {
        header.extend(["IP", "NODE"]);
    }
    rows.push(header.iter().map(|s| s.to_string()).collect::<Vec<_>>());
    for p in pods {
        let mut row = vec![
            p["metadata"]["name"].as_str().unwrap_or_default().to_string(),
            ready(p),
            status(p),
            restarts(p),
            age(p["metadata"]["creationTimestamp"].as_str().unwrap_or_default()),
        ];
        if namespaces {
            row.insert(0, p["metadata"]["namespace"].as_str().unwrap_or_default().to_string());
        }
        if wide {
            row.push(p["status"]["podIP"].as_str().unwrap_or("<none>").to_string());
            row.push(p["spec"]["nodeName"].as_str().unwrap_or("<none>").to_string());
        }
        rows.push(row);
    }
    print_table(&rows);
}

pub fn print_table(rows: &[Vec<String>]) {
    let widths: Vec<usize> = (0..rows[0].len()).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        println!("{}", line.join("   ").trim_end());
    }
}

fn statuses(p: &Value) -> Vec<Value> {
    p["status"]["containerStatuses"].as_array().cloned().unwrap_or_default()
}

fn init_statuses(p: &Value) -> Vec<Value> {
    p["status"]["initContainerStatuses"].as_array().cloned().unwrap_or_default()
}

/// Whether init container `i` is a sidecar.
fn sidecar(p: &Value, i: usize) -> bool {
    p["spec"]["initContainers"][i]["restartPolicy"] == "Always"
}

/// Ready app containers and sidecars, over their number (kubectl counts sidecars).
fn ready(p: &Value) -> String {
    let init = init_statuses(p);
    let sidecars: Vec<&Value> = init.iter().enumerate().filter(|(i, _)| sidecar(p, *i)).map(|(_, c)| c).collect();
    let s = statuses(p);
    let all = s.iter().chain(sidecars.iter().copied());
    let ready = all.clone().filter(|c| c["ready"] == true).count();
    format!("{ready}/{}", all.count())
}

fn restarts(p: &Value) -> String {
    statuses(p)
        .iter()
        .chain(init_statuses(p).iter())
        .map(|c| c["restartCount"].as_u64().unwrap_or(0))
        .sum::<u64>()
        .to_string()
}

/// kubectl's `Init:1/2`, `Init:CrashLoopBackOff`, `Init:Error`, while init containers run.
fn init_status(p: &Value) -> Option<String> {
    let init = init_statuses(p);
    for (i, c) in init.iter().enumerate() {
        let t = &c["state"]["terminated"];
        if t["exitCode"] == 0 || (sidecar(p, i) && c["started"] == true) {
            continue;
        }
        if t.is_object() {
            return Some(format!(
                "Init:{}",
                t["reason"].as_str().map_or_else(|| format!("ExitCode:{}", t["exitCode"]), String::from)
            ));
        }
        if let Some(r) = c["state"]["waiting"]["reason"].as_str().filter(|r| *r != "PodInitializing") {
            return Some(format!("Init:{r}"));
        }
        return Some(format!("Init:{i}/{}", init.len()));
    }
    None
}

/// kubectl's STATUS: a container's waiting or terminated reason, else the phase; a
/// `Completed` container beside a running one shows `Running`, as kubectl does.
pub fn status(p: &Value) -> String {
    if p["metadata"]["deletionTimestamp"].is_string() {
        return "Terminating".into();
    }
    if let Some(r) = p["status"]["reason"].as_str() {
        return r.into();
    }
    if let Some(s) = init_status(p) {
        return s;
    }
    let mut reason = p["status"]["phase"].as_str().unwrap_or("Unknown").to_string();
    let mut running = false;
    for c in statuses(p) {
        if let Some(r) = c["state"]["waiting"]["reason"].as_str() {
            reason = r.into();
        } else if let Some(r) = c["state"]["terminated"]["reason"].as_str() {
            reason = r.into();
        } else if c["state"]["running"].is_object() && c["ready"] == true {
            running = true;
        }
    }
    if reason == "Completed" && running { "Running".into() } else { reason }
}

/// Age from an RFC 3339 timestamp, kubectl style.
pub fn age(ts: &str) -> String {
    parse_time(ts).map_or_else(|| "<unknown>".into(), age_ms)
}

/// Age since a Unix-ms time, kubectl style: `45s`, `3m12s`, `2h5m`, `3d`.
pub fn age_ms(since: u64) -> String {
    let s = crate::time::now_ms().saturating_sub(since) / 1000;
    match s {
        0..=119 => format!("{s}s"),
        120..=599 => format!("{}m{}s", s / 60, s % 60),
        600..=10_799 => format!("{}m", s / 60),
        10_800..=86_399 => format!("{}h{}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d", s / 86_400),
    }
}

/// `2026-11-22T03:13:00Z` → Unix ms.
pub use crate::time::parse_rfc3339 as parse_time;

#[cfg(test)]
mod tests {
    #[test]
    fn label_selectors_as_kubectl_reads_them() {
        let labels = serde_json::json!({"app": "web", "tier": "front"});
        let sel = |s: &str| super::selected(Some(s), &labels);
        assert!(sel("app=web") && sel("tier in (front)") && !sel("app!=web"));
        assert!(super::selected(None, &serde_json::Value::Null));
    }
}
