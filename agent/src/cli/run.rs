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
    let mut offsets: HashMap<std::path::PathBuf, u64> = HashMap::new();
    let interrupted = tokio::select! {
        _ = super::serve::shutdown_signal() => true,
        _ = async {
            loop {
                let records: Vec<_> = keys.iter().filter_map(|k| mgr.get(k).ok().flatten()).collect();
                for rec in &records {
                    for c in &rec.status.containers {
                        for instance in 1..=c.instances {
                            print_new(&mgr.log_path(rec, &c.name, instance), &format!("{}/{}", rec.name(), c.name), &mut offsets);
                        }
                    }
                }
                if !records.is_empty() && records.iter().all(|r| r.status.phase.is_terminal()) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        } => false,
    };
    let failed = keys
        .iter()
        .filter_map(|k| mgr.get(k).ok().flatten())
        .filter(|r| r.status.phase == Phase::Failed)
        .map(|r| r.name().to_string())
        .collect::<Vec<_>>();
    if interrupted {
        eprintln!("stopping…");
    }
    for k in &keys {
        let _ = mgr.delete(k).await;
        eprintln!("pod/{} deleted", k.rsplit('/').next().unwrap_or(k));
    }
    anyhow::ensure!(failed.is_empty(), "pod(s) failed: {}", failed.join(", "));
    Ok(())
}

/// Prints the complete lines added to a CRI log since last time.
fn print_new(path: &std::path::Path, prefix: &str, offsets: &mut HashMap<std::path::PathBuf, u64>) {
    let Ok(mut f) = std::fs::File::open(path) else { return };
    let offset = offsets.entry(path.to_path_buf()).or_insert(0);
    if f.seek(SeekFrom::Start(*offset)).is_err() {
        return;
    }
    let mut text = String::new();
    let _ = f.read_to_string(&mut text);
    let complete = text.rfind('\n').map_or(0, |i| i + 1);
    *offset += complete as u64;
    let mut out = std::io::stdout().lock();
    for line in text[..complete].lines() {
        if let Some(r) = crate::runtime::log::parse(line) {
            let _ = writeln!(out, "[{prefix}] {}", r.line);
        }
    }
}
