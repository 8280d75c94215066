//! `wasmlet run -f FILE`: like `podman kube play`. An embedded agent (its own state dir,
//! removed afterwards) applies the file, streams every container's log prefixed with
//! `pod/container`, and on Ctrl-C, or when every pod has finished, removes what it
//! started. Exits non-zero if a pod failed.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom, Write};
use std::time::Duration;

use anyhow::Context;
use clap::Args;

use super::Global;
use super::apply::read_manifest;
use crate::pod::state::Phase;

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Manifest file (multi-document YAML), or - for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
    #[command(flatten)]
    pub runtime: super::serve::RuntimeArgs,
}

pub async fn run(global: &Global, args: RunArgs) -> anyhow::Result<()> {
    let text = read_manifest(&args.file)?;
    let pods = crate::spec::parse(&text).with_context(|| format!("error validating {}", args.file))?;
    let dir = std::env::temp_dir().join(format!("wasmlet-run-{}", std::process::id()));
    let local = Global { state_dir: dir.clone(), ..global.clone() };
    let result = run_embedded(&local, &args.runtime, pods).await;
    let _ = std::fs::remove_dir_all(&dir);
    result
}

async fn run_embedded(
    global: &Global,
    runtime: &super::serve::RuntimeArgs,
    pods: Vec<crate::spec::Object>,
) -> anyhow::Result<()> {
    let mgr = super::serve::start_agent(global, 1_000, runtime).await?;
    let applied = mgr.apply(pods).await?;
    for a in &applied {
        eprintln!("{}/{} {}", a.kind.to_lowercase(), a.pod.rsplit('/').next().unwrap_or(&a.pod), a.action);
    }
    let keys: Vec<String> = applied.iter().filter(|a| a.kind == "Pod").map(|a| a.pod.clone()).collect();
    let workloads: Vec<(String, String)> = applied
        .iter()
        .filter(|a| a.kind == "Deployment" || a.kind == "Job")
        .map(|a| (a.kind.clone(), a.pod.clone()))
        .collect();
    // a Deployment runs until interrupted; pods and Jobs until they end
    let runs_forever = workloads.iter().any(|(kind, _)| kind == "Deployment");
    let jobs_done = |mgr: &crate::pod::Manager| {
        let jobs: Vec<k8s_openapi::api::batch::v1::Job> = mgr.workloads().unwrap_or_default();
        jobs.iter().all(|j| j.status.as_ref().and_then(crate::workload::job::finished).is_some())
    };
    let mut offsets: HashMap<std::path::PathBuf, u64> = HashMap::new();
    let interrupted = tokio::select! {
        _ = super::serve::shutdown_signal() => true,
        _ = async {
            loop {
                // every pod of this throwaway agent: the applied ones and those the
                // Deployments and Jobs made
                let records = mgr.list().unwrap_or_default();
                for rec in &records {
                    for c in &rec.status.containers {
                        for instance in 1..=c.instances {
                            print_new(&mgr.log_path(rec, &c.name, instance), &format!("{}/{}", rec.name(), c.name), &mut offsets);
                        }
                    }
                }
                let pods_done = keys
                    .iter()
                    .all(|k| records.iter().find(|r| &r.key() == k).is_none_or(|r| r.status.phase.is_terminal()));
                if !runs_forever && pods_done && jobs_done(&mgr) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } => false,
    };
    let mut failed = keys
        .iter()
        .filter_map(|k| mgr.get(k).ok().flatten())
        .filter(|r| r.status.phase == Phase::Failed)
        .map(|r| format!("pod/{}", r.name()))
        .collect::<Vec<_>>();
    let jobs: Vec<k8s_openapi::api::batch::v1::Job> = mgr.workloads().unwrap_or_default();
    for j in &jobs {
        if j.status.as_ref().and_then(crate::workload::job::finished).is_some_and(|c| c.type_ == "Failed") {
            failed.push(format!("job/{}", j.metadata.name.as_deref().unwrap_or_default()));
        }
    }
    if interrupted {
        eprintln!("stopping…");
    }
    for (kind, key) in &workloads {
        let (ns, name) = key.split_once('/').unwrap_or(("default", key));
        let _ = mgr.delete_object(kind, ns, name).await;
        eprintln!("{}/{name} deleted", kind.to_lowercase());
    }
    for k in &keys {
        let _ = mgr.delete(k).await;
        eprintln!("pod/{} deleted", k.rsplit('/').next().unwrap_or(k));
    }
    anyhow::ensure!(failed.is_empty(), "failed: {}", failed.join(", "));
    Ok(())
}

/// Prints the complete lines added to a CRI log since last time.
fn print_new(path: &std::path::Path, prefix: &str, offsets: &mut HashMap<std::path::PathBuf, u64>) {
    let Ok(mut f) = std::fs::File::open(path) else { return };
    let offset = offsets.entry(path.to_path_buf()).or_insert(0);
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return;
    }
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    let complete = bytes.iter().rposition(|&b| b == b'\n').map_or(0, |i| i + 1);
    *offset += complete as u64;
    let mut out = std::io::stdout().lock();
    for r in wasmlet_runtime::log::records(&bytes[..complete]) {
        let _ = out.write_all(format!("[{prefix}] ").as_bytes());
        let _ = out.write_all(r.line);
        let _ = out.write_all(b"\n");
    }
}
