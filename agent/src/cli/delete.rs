//! `wasmlet delete pod NAME...`: stop within the grace period, then forget.

use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::Global;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Resource type: pod.
    pub resource: String,
    #[arg(required = true)]
    pub names: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Seconds to wait after SIGTERM before SIGKILL, instead of the pod's
    /// terminationGracePeriodSeconds (0: at once).
    #[arg(long)]
    pub grace_period: Option<u32>,
}

pub async fn run(global: &Global, args: DeleteArgs) -> anyhow::Result<()> {
    super::ensure_pods(&args.resource)?;
    let client = global.client();
    for name in &args.names {
        let mut path = format!("/v1/pods/{}/{name}", args.namespace);
        if let Some(g) = args.grace_period {
            path.push_str(&format!("?gracePeriodSeconds={g}"));
        }
        client.send(Method::DELETE, &path, Bytes::new()).await?;
        println!("pod \"{name}\" deleted");
    }
    Ok(())
}
