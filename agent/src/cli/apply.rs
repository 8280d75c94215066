//! `wasmlet apply -f FILE|-`: validate every document, then create or update the pods.

use std::io::Read;

use anyhow::Context;
use clap::Args;
use hyper::Method;

use super::Global;

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// Manifest file (multi-document YAML), or - for standard input.
    #[arg(short = 'f', long = "filename")]
    pub file: String,
}

pub fn read_manifest(file: &str) -> anyhow::Result<String> {
    if file == "-" {
        let mut s = String::new();
        std::io::stdin().read_to_string(&mut s).context("reading standard input")?;
        Ok(s)
    } else {
        std::fs::read_to_string(file).with_context(|| format!("reading {file}"))
    }
}

pub async fn run(global: &Global, args: ApplyArgs) -> anyhow::Result<()> {
    let text = read_manifest(&args.file)?;
    let applied = global
        .client()
        .json(Method::POST, "/v1/apply", text)
        .await
        .with_context(|| format!("error applying {}", args.file))?;
    print_applied(&applied);
    Ok(())
}

pub fn print_applied(applied: &serde_json::Value) {
    for a in applied.as_array().into_iter().flatten() {
        let key = a["pod"].as_str().unwrap_or_default();
        let name = key.rsplit('/').next().unwrap_or(key);
        let kind = a["kind"].as_str().unwrap_or("Pod").to_lowercase();
        println!("{kind}/{name} {}", a["action"].as_str().unwrap_or_default());
    }
}
