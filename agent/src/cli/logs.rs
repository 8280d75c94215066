//! `wasmlet logs POD [-c C] [-f] [--tail N] [--timestamps] [--previous]`.

use bytes::Bytes;
use clap::Args;
use http_body_util::BodyExt;
use hyper::Method;

use super::Global;
use crate::http::escape;

#[derive(Debug, Args)]
pub struct LogsArgs {
    pub pod: String,
    #[arg(short = 'c', long)]
    pub container: Option<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Keep streaming while the container runs.
    #[arg(short = 'f', long)]
    pub follow: bool,
    /// Only the last N lines.
    #[arg(long)]
    pub tail: Option<usize>,
    /// Prefix each line with its RFC 3339 timestamp.
    #[arg(long)]
    pub timestamps: bool,
    /// The previous (terminated) instance of the container.
    #[arg(short = 'p', long)]
    pub previous: bool,
}

pub async fn run(global: &Global, args: LogsArgs) -> anyhow::Result<()> {
    let mut q = format!("follow={}&timestamps={}&previous={}", args.follow, args.timestamps, args.previous);
    if let Some(c) = &args.container {
        q.push_str(&format!("&container={}", escape(c)));
    }
    if let Some(t) = args.tail {
        q.push_str(&format!("&tail={t}"));
    }
    let path = format!("/v1/pods/{}/{}/log?{q}", args.namespace, args.pod);
    let mut body = global.client().send(Method::GET, &path, Bytes::new()).await?.into_body();
    use std::io::Write;
    let mut stdout = std::io::stdout();
    while let Some(frame) = body.frame().await {
        if let Ok(data) = frame?.into_data() {
            stdout.write_all(&data)?;
            stdout.flush()?;
        }
    }
    Ok(())
}
