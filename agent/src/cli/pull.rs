//! `wasmlet pull IMAGE`: pull with a progress bar per blob.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use clap::Args;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use registry_client::{Progress, PullOptions};

use super::{Global, human_size, parse_creds};
use crate::image::ImageService;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. 127.0.0.1:5000/apps/hello:v1 or busybox.
    pub image: String,
    /// Credentials for the image's registry.
    #[arg(long, value_name = "USER:PASSWORD")]
    pub creds: Option<String>,
    /// Platform to pull from an index, e.g. linux/arm64 or wasip1/wasm.
    #[arg(long)]
    pub platform: Option<String>,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(global: &Global, args: PullArgs) -> anyhow::Result<()> {
    let service = ImageService::open(&global.state_dir, global.registry_config()?, global.keychain()?)?;
    let reference: registry_client::Reference = args.image.parse()?;
    let mut opts =
        PullOptions { credential: args.creds.as_deref().map(parse_creds).transpose()?, ..Default::default() };
    if let Some(p) = &args.platform {
        let parts: Vec<&str> = p.split('/').collect();
        anyhow::ensure!(parts.len() >= 2, "--platform {p:?}: expected OS/ARCH[/VARIANT]");
        opts.platforms = vec![registry_client::Platform::new(parts[0], parts[1], parts.get(2).copied())];
    }
    if !args.quiet {
        opts.progress = Some(progress_bars());
    }
    let record = service.pull(&reference, opts).await?;
    println!("pulled {} {} ({}, {})", record.reference, record.digest, record.kind_name(), human_size(record.size));
    Ok(())
}

/// One bar per blob; hidden automatically when stderr is not a terminal.
fn progress_bars() -> registry_client::ProgressFn {
    let multi = MultiProgress::new();
    let bars: Mutex<HashMap<String, ProgressBar>> = Mutex::new(HashMap::new());
    let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes:>9}/{total_bytes:<9} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    Arc::new(move |p| {
        let mut bars = bars.lock().unwrap_or_else(|e| e.into_inner());
        match p {
            Progress::Resolved { blobs, .. } => {
                for (digest, size) in blobs {
                    let bar = multi.add(ProgressBar::new(size));
                    bar.set_style(style.clone());
                    bar.set_prefix(digest.hex()[..12].to_string());
                    bars.insert(digest.to_string(), bar);
                }
            }
            Progress::Blob { digest, done, .. } => {
                if let Some(b) = bars.get(&digest.to_string()) {
                    b.set_position(done);
                }
            }
            Progress::BlobDone { digest, total, cached } => {
                if let Some(b) = bars.get(&digest.to_string()) {
                    b.set_position(total);
                    b.finish_with_message(if cached { "already present" } else { "done" });
                }
            }
            Progress::Unpacked { digest } => {
                if let Some(b) = bars.get(&digest.to_string()) {
                    b.set_message("unpacked");
                }
            }
        }
    })
}
