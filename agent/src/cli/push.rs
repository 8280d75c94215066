//! `wasmlet push FILE.wasm REF`: a module (wasip1) or component (wasip2) as a CNCF Wasm
//! artifact; `--layout DIR[:TAG]` pushes an image from an OCI image layout instead.

use std::path::PathBuf;

use anyhow::Context;
use clap::Args;

use super::{Global, parse_creds};

#[derive(Debug, Args)]
pub struct PushArgs {
    /// The .wasm file to push (or, with --layout, an OCI layout directory[:tag]).
    pub source: String,
    /// Target reference, e.g. 127.0.0.1:5000/apps/hello:v1.
    pub reference: String,
    /// SOURCE is an OCI image layout (`DIR` or `DIR:TAG`), pushed byte for byte.
    #[arg(long)]
    pub layout: bool,
    /// Credentials for the target registry.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
}

pub async fn run(global: &Global, args: PushArgs) -> anyhow::Result<()> {
    let target: registry_client::Reference = args.reference.parse()?;
    let creds = args.creds.as_deref().map(parse_creds).transpose()?;
    let scratch = std::env::temp_dir().join(format!("wasmlet-push-{}", std::process::id()));
    let store = std::sync::Arc::new(registry_client::Store::open(&scratch)?);
    let client = registry_client::Client::new(global.registry_config()?, global.keychain()?, store);
    let result = if args.layout {
        let (dir, tag) = match args.source.rsplit_once(':') {
            Some((d, t)) if !t.contains('/') => (d.to_string(), Some(t.to_string())),
            _ => (args.source.clone(), None),
        };
        client.push_layout(&PathBuf::from(dir), tag.as_deref(), &target, creds.as_ref()).await
    } else {
        client.push_wasm(&PathBuf::from(&args.source), &target, creds.as_ref()).await
    };
    let _ = std::fs::remove_dir_all(&scratch);
    let pushed = result.with_context(|| format!("pushing {} to {target}", args.source))?;
    println!("pushed {} ({} uploaded)", pushed.reference, super::human_size(pushed.uploaded));
    Ok(())
}
