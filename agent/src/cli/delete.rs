//! `wasmlet delete pod|configmap|secret|deployment|job NAME...`: pods stop within
//! their grace period, then everything is forgotten. A Deployment's or Job's pods are
//! deleted with it.

use bytes::Bytes;
use clap::Args;
use hyper::Method;

use super::Global;

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Resource type: pod, configmap (cm), secret, deployment (deploy) or job.
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

/// The API group kubectl names a kind with (`deployment.apps "web" deleted`).
fn api_group(plural: &str) -> &'static str {
    match plural {
        "deployments" => "apps",
        "jobs" => "batch",
        _ => "",
    }
}

pub async fn run(global: &Global, args: DeleteArgs) -> anyhow::Result<()> {
    let client = global.client();
    let plural = match args.resource.as_str() {
        "configmap" | "configmaps" | "cm" => Some("configmaps"),
        "secret" | "secrets" => Some("secrets"),
        "deployment" | "deployments" | "deploy" => Some("deployments"),
        "job" | "jobs" => Some("jobs"),
        _ => None,
    };
    if let Some(plural) = plural {
        for name in &args.names {
            client.send(Method::DELETE, &format!("/v1/{plural}/{}/{name}", args.namespace), Bytes::new()).await?;
            let singular = plural.trim_end_matches('s');
            match api_group(plural) {
                "" => println!("{singular} \"{name}\" deleted"),
                group => println!("{singular}.{group} \"{name}\" deleted"),
            }
        }
        return Ok(());
    }
    super::ensure_pods(&args.resource)?;
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
