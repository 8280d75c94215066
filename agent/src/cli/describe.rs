//! `wasmlet describe pod NAME`: the pod, its containers and its events, kubectl style.

use clap::Args;
use serde_json::Value;

use super::Global;
use super::get::{age_ms, parse_time, status};

#[derive(Debug, Args)]
pub struct DescribeArgs {
    /// Resource type: pod.
    pub resource: String,
    pub name: String,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

pub async fn run(global: &Global, args: DescribeArgs) -> anyhow::Result<()> {
    super::ensure_pods(&args.resource)?;
    let client = global.client();
    let p = client.get(&format!("/v1/pods/{}/{}", args.namespace, args.name)).await?;
    let events = client.get(&format!("/v1/pods/{}/{}/events", args.namespace, args.name)).await?;
    print!("{}", render(&p, &events));
    Ok(())
}

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("<none>")
}

pub fn render(p: &Value, events: &Value) -> String {
    let mut out = String::new();
    let mut line = |k: &str, v: &str| out.push_str(&format!("{:<16}{v}\n", format!("{k}:")));
    line("Name", s(&p["metadata"]["name"]));
    line("Namespace", s(&p["metadata"]["namespace"]));
    line("UID", s(&p["metadata"]["uid"]));
    line("Start Time", s(&p["status"]["startTime"]));
    line("Status", &status(p));
    line("Phase", s(&p["status"]["phase"]));
    if p["status"]["reason"].is_string() {
        line("Reason", s(&p["status"]["reason"]));
        line("Message", s(&p["status"]["message"]));
    }
    line("IP", s(&p["status"]["podIP"]));
    line("QoS Class", s(&p["status"]["qosClass"]));
    line("Restart Policy", s(&p["spec"]["restartPolicy"]));
    if p["spec"]["initContainers"].is_array() {
        out.push_str("Init Containers:\n");
        containers(&mut out, &p["spec"]["initContainers"], &p["status"]["initContainerStatuses"]);
    }
    out.push_str("Containers:\n");
    containers(&mut out, &p["spec"]["containers"], &p["status"]["containerStatuses"]);
    conditions_and_events(&mut out, p, events);
    out
}

/// One block per container: image, command, state, probes, environment, mounts.
fn containers(out: &mut String, specs: &Value, statuses: &Value) {
    let specs = specs.as_array().cloned().unwrap_or_default();
    let statuses = statuses.as_array().cloned().unwrap_or_default();
    for (c, st) in specs.iter().zip(statuses.iter().chain(std::iter::repeat(&Value::Null))) {
        out.push_str(&format!("  {}:\n", s(&c["name"])));
        let mut field = |k: &str, v: String| out.push_str(&format!("    {:<18}{v}\n", format!("{k}:")));
        field("Container ID", s(&st["containerID"]).into());
        field("Image", s(&c["image"]).into());
        field("Image ID", s(&st["imageID"]).into());
        if let Some(cmd) = c["command"].as_array() {
            field("Command", cmd.iter().map(|a| s(a).to_string()).collect::<Vec<_>>().join(" "));
        }
        if let Some(a) = c["args"].as_array() {
            field("Args", a.iter().map(|a| s(a).to_string()).collect::<Vec<_>>().join(" "));
        }
        out.push_str(&state("State", &st["state"]));
        if st["lastState"].as_object().is_some_and(|o| !o.is_empty()) {
            out.push_str(&state("Last State", &st["lastState"]));
        }
        let mut field = |k: &str, v: String| out.push_str(&format!("    {:<18}{v}\n", format!("{k}:")));
        field("Ready", st["ready"].as_bool().unwrap_or(false).to_string());
        field("Restart Count", st["restartCount"].as_u64().unwrap_or(0).to_string());
        if let Some(limits) = c["resources"]["limits"].as_object() {
            let l: Vec<String> = limits.iter().map(|(k, v)| format!("{k}: {}", s(v))).collect();
            field("Limits", l.join(", "));
        }
        let env: Vec<String> = c["env"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| format!("{}={}", s(&e["name"]), e["value"].as_str().unwrap_or("")))
            .collect();
        field("Environment", if env.is_empty() { "<none>".into() } else { env.join(", ") });
        let mounts: Vec<String> = c["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|m| {
                format!(
                    "{} from {} ({})",
                    s(&m["mountPath"]),
                    s(&m["name"]),
                    if m["readOnly"] == true { "ro" } else { "rw" }
                )
            })
            .collect();
        field("Mounts", if mounts.is_empty() { "<none>".into() } else { mounts.join(", ") });
        for (key, title) in
            [("livenessProbe", "Liveness"), ("readinessProbe", "Readiness"), ("startupProbe", "Startup")]
        {
            if c[key].is_object() {
                field(title, probe(&c[key]));
            }
        }
    }
}

/// kubectl's one-line probe summary: `http-get http://:8080/healthz delay=0s timeout=1s period=10s #success=1 #failure=3`.
fn probe(p: &Value) -> String {
    let how = if let Some(cmd) = p["exec"]["command"].as_array() {
        format!("exec [{}]", cmd.iter().map(|a| s(a).to_string()).collect::<Vec<_>>().join(" "))
    } else if p["httpGet"].is_object() {
        format!("http-get http://:{}{}", p["httpGet"]["port"], s(&p["httpGet"]["path"]))
    } else {
        format!("tcp-socket :{}", p["tcpSocket"]["port"])
    };
    format!(
        "{how} delay={}s timeout={}s period={}s #success={} #failure={}",
        p["initialDelaySeconds"], p["timeoutSeconds"], p["periodSeconds"], p["successThreshold"], p["failureThreshold"]
    )
    .replace('"', "")
}

fn conditions_and_events(out: &mut String, p: &Value, events: &Value) {
    out.push_str("Conditions:\n  Type                        Status\n");
    for c in p["status"]["conditions"].as_array().into_iter().flatten() {
        out.push_str(&format!("  {:<28}{}\n", s(&c["type"]), s(&c["status"])));
    }
    out.push_str("Events:\n");
    let events = events.as_array().cloned().unwrap_or_default();
    if events.is_empty() {
        out.push_str("  <none>\n");
    } else {
        let mut rows = vec![["Type", "Reason", "Age", "Message"].map(String::from).to_vec()];
        for e in events {
            let (last, first) = (e["last_seen"].as_u64().unwrap_or(0), e["first_seen"].as_u64().unwrap_or(0));
            let count = e["count"].as_u64().unwrap_or(1);
            let when =
                if count > 1 { format!("{} (x{count} over {})", age_ms(last), age_ms(first)) } else { age_ms(last) };
            rows.push(vec![s(&e["kind"]).into(), s(&e["reason"]).into(), when, s(&e["message"]).into()]);
        }
        let widths: Vec<usize> = (0..4).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
        for r in rows {
            out.push_str(&format!(
                "  {:<w0$}  {:<w1$}  {:<w2$}  {}\n",
                r[0],
                r[1],
                r[2],
                r[3],
                w0 = widths[0],
                w1 = widths[1],
                w2 = widths[2]
            ));
        }
    }
}

fn state(label: &str, st: &Value) -> String {
    let mut out = String::new();
    let (kind, detail) = match st.as_object().and_then(|o| o.iter().next()) {
        Some((k, v)) => (k.as_str(), v),
        None => return format!("    {:<18}{}\n", format!("{label}:"), "Waiting"),
    };
    let title = match kind {
        "running" => "Running",
        "terminated" => "Terminated",
        _ => "Waiting",
    };
    out.push_str(&format!("    {:<18}{title}\n", format!("{label}:")));
    for (k, name) in [
        ("reason", "Reason"),
        ("message", "Message"),
        ("exitCode", "Exit Code"),
        ("startedAt", "Started"),
        ("finishedAt", "Finished"),
    ] {
        if let Some(v) = detail.get(k).filter(|v| !v.is_null()) {
            let text = v.as_str().map(str::to_string).unwrap_or_else(|| v.to_string());
            let text = if k.ends_with("At") { parse_time(&text).map(|_| text.clone()).unwrap_or(text) } else { text };
            out.push_str(&format!("      {:<16}{text}\n", format!("{name}:")));
        }
    }
    out
}
