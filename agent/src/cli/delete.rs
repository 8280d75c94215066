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
}

pub async fn run(global: &Global, args: DeleteArgs) -> anyhow::Result<()> {
    super::ensure_pods(&args.resource)?;
    let client = global.client();
    for name in &args.names {
        client.send(Method::DELETE, &format!("/v1/pods/{}/{name}", args.namespace), Bytes::new()).await?;
        println!("pod \"{name}\" deleted");
    }
    Ok(())
}
