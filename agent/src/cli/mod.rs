//! The command line: global options and one module per subcommand.

use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

mod apply;
mod delete;
mod describe;
mod exec;
mod get;
mod images;
mod logs;
mod pull;
mod push;
mod run;
mod serve;

#[derive(Debug, Parser)]
#[command(name = "wasmlet", version, about = "A lightweight node agent for WebAssembly and Linux containers")]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Clone, Debug, Args)]
pub struct Global {
    /// Where wasmlet keeps its state (database, content store, layers, logs).
    #[arg(long, global = true, env = "WASMLET_STATE_DIR", default_value = "/var/lib/wasmlet")]
    pub state_dir: PathBuf,
    /// The agent's API socket (default: STATE_DIR/wasmlet.sock).
    #[arg(long, global = true, env = "WASMLET_SOCKET")]
    pub socket: Option<PathBuf>,
    /// A registry spoken to over plain HTTP (loopback registries always are). Repeatable.
    #[arg(long = "insecure-registry", global = true, value_name = "HOST[:PORT]")]
    pub insecure_registries: Vec<String>,
    /// Try MIRROR before REGISTRY, e.g. `docker.io=127.0.0.1:5000`. Repeatable.
    #[arg(long = "registry-mirror", global = true, value_name = "REGISTRY=MIRROR")]
    pub mirrors: Vec<String>,
    /// Credentials file (docker config.json format); default: $REGISTRY_AUTH_FILE,
    /// $DOCKER_CONFIG/config.json, ~/.docker/config.json.
    #[arg(long, global = true, value_name = "FILE")]
    pub authfile: Option<PathBuf>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the agent: the local API, the pods, the image store.
    Serve(Box<serve::ServeArgs>),
    /// Create or update Pods, ConfigMaps, Secrets, Deployments and Jobs from a manifest (multi-document YAML).
    Apply(apply::ApplyArgs),
    /// List pods, events, configmaps, secrets, deployments or jobs.
    Get(get::GetArgs),
    /// Show a pod in detail, with its events.
    Describe(describe::DescribeArgs),
    /// Print a container's logs.
    Logs(logs::LogsArgs),
    /// Run a command in a running Linux container; exits with its exit code.
    Exec(exec::ExecArgs),
    /// Delete pods, configmaps, secrets, deployments or jobs (with their pods).
    Delete(delete::DeleteArgs),
    /// Run a manifest in the foreground, like `podman kube play`; Ctrl-C cleans up.
    Run(run::RunArgs),
    /// Pull an image, with progress bars.
    Pull(pull::PullArgs),
    /// List pulled images, with size and last use.
    Images(images::ImagesArgs),
    /// Manage images: `wasmlet image prune`.
    Image(images::ImageArgs),
    /// Push a .wasm module or component (or an OCI layout) to a registry.
    Push(push::PushArgs),
    /// List the pod fields this node honours, ignores (scheduling) or rejects.
    ExplainSupport,
}

pub fn run(cli: Cli) -> anyhow::Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime")?;
    rt.block_on(async {
        let g = &cli.global;
        match cli.command {
            Command::Serve(args) => serve::run(g, *args).await,
            Command::Apply(args) => apply::run(g, args).await,
            Command::ExplainSupport => {
                print!("{}", crate::spec::support::render());
                Ok(())
            }
            Command::Get(args) => get::run(g, args).await,
            Command::Describe(args) => describe::run(g, args).await,
            Command::Logs(args) => logs::run(g, args).await,
            Command::Exec(args) => {
                let code = exec::run(g, args).await?;
                std::process::exit(code)
            }
            Command::Delete(args) => delete::run(g, args).await,
            Command::Run(args) => run::run(g, args).await,
            Command::Pull(args) => pull::run(g, args).await,
            Command::Images(args) => images::run(g, args).await,
            Command::Image(args) => images::image(g, args).await,
            Command::Push(args) => push::run(g, args).await,
        }
    })
}

impl Global {
    pub fn socket(&self) -> PathBuf {
        self.socket.clone().unwrap_or_else(|| self.state_dir.join("wasmlet.sock"))
    }

    pub fn client(&self) -> crate::api::client::Client {
        crate::api::client::Client::new(&self.socket())
    }

    /// Registry settings from the flags.
    pub fn registry_config(&self) -> anyhow::Result<registry_client::Config> {
        let mut config =
            registry_client::Config { insecure_hosts: self.insecure_registries.clone(), ..Default::default() };
        for m in &self.mirrors {
            let (registry, mirror) =
                m.split_once('=').with_context(|| format!("--registry-mirror {m:?}: expected REGISTRY=MIRROR"))?;
            config.mirrors.entry(registry.to_string()).or_default().push(mirror.to_string());
        }
        Ok(config)
    }

    pub fn keychain(&self) -> anyhow::Result<registry_client::Keychain> {
        Ok(match &self.authfile {
            Some(f) => registry_client::Keychain::from_file(f)?,
            None => registry_client::Keychain::from_env()?,
        })
    }
}

/// The only resource type so far: pods (`pods`, `pod`, `po`, as kubectl accepts).
pub fn ensure_pods(resource: &str) -> anyhow::Result<()> {
    anyhow::ensure!(matches!(resource, "pods" | "pod" | "po"), "the server doesn't have a resource type {resource:?}");
    Ok(())
}

/// `user:password` from a `--creds` flag.
pub fn parse_creds(creds: &str) -> anyhow::Result<registry_client::Credential> {
    let (user, pass) = creds.split_once(':').context("--creds: expected USER:PASSWORD")?;
    Ok(registry_client::Credential::new(user, pass))
}

/// `12.3 MB` style sizes.
pub fn human_size(bytes: u64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut v = bytes as f64;
    let mut i = 0;
    while v >= 1000.0 && i + 1 < units.len() {
        v /= 1000.0;
        i += 1;
    }
    if i == 0 { format!("{bytes} B") } else { format!("{v:.1} {}", units[i]) }
}
