//! `wasmlet pull IMAGE`: the agent pulls; we draw a progress bar per blob.

use std::collections::HashMap;

use bytes::Bytes;
use clap::Args;
use http_body_util::BodyExt;
use hyper::Method;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use serde_json::Value;

use super::{Global, human_size};
use crate::http::escape;

#[derive(Debug, Args)]
pub struct PullArgs {
    /// Image reference, e.g. 127.0.0.1:5000/apps/hello:v1 or busybox.
    pub image: String,
    /// No progress bars.
    #[arg(short, long)]
    pub quiet: bool,
}

pub async fn run(global: &Global, args: PullArgs) -> anyhow::Result<()> {
    let path = format!("/v1/images/pull?image={}", escape(&args.image));
    let mut body = global.client().send(Method::POST, &path, Bytes::new()).await?.into_body();
    let multi = if args.quiet {
        MultiProgress::with_draw_target(indicatif::ProgressDrawTarget::hidden())
    } else {
        MultiProgress::new()
    };
    let style = ProgressStyle::with_template("{prefix:.bold} [{bar:30}] {bytes:>9}/{total_bytes:<9} {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let mut bars: HashMap<String, ProgressBar> = HashMap::new();
    let mut buf = Vec::new();
    while let Some(frame) = body.frame().await {
        let Ok(data) = frame?.into_data() else { continue };
        buf.extend_from_slice(&data);
        while let Some(i) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=i).collect();
            let v: Value = serde_json::from_slice(&line)?;
            if let Some(blobs) = v["resolved"].as_array() {
                for b in blobs {
                    let digest = b["digest"].as_str().unwrap_or_default().to_string();
                    let bar = multi.add(ProgressBar::new(b["size"].as_u64().unwrap_or(0)));
                    bar.set_style(style.clone());
                    bar.set_prefix(digest.get(7..19).unwrap_or_default().to_string());
                    bars.insert(digest, bar);
                }
            } else if let Some(b) = v.get("blob") {
                if let Some(bar) = bars.get(b["digest"].as_str().unwrap_or_default()) {
                    bar.set_position(b["done"].as_u64().unwrap_or(0));
                }
            } else if let Some(b) = v.get("done") {
                if let Some(bar) = bars.get(b["digest"].as_str().unwrap_or_default()) {
                    bar.set_position(b["total"].as_u64().unwrap_or(0));
                    bar.finish_with_message(if b["cached"] == true { "already present" } else { "done" });
                }
            } else if let Some(img) = v.get("image") {
                println!(
                    "pulled {} {} ({}, {})",
                    img["reference"].as_str().unwrap_or_default(),
                    img["digest"].as_str().unwrap_or_default(),
                    img["kind"].as_str().unwrap_or_default(),
                    human_size(img["size"].as_u64().unwrap_or(0))
                );
            } else if let Some(e) = v.get("error") {
                anyhow::bail!("{}", e.as_str().unwrap_or_default());
            }
        }
    }
    Ok(())
}
