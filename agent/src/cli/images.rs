//! `wasmlet images`: what the agent has pulled.

use clap::Args;

use super::{Global, human_size};

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format: table (default) or json.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
}

pub async fn run(global: &Global, args: ImagesArgs) -> anyhow::Result<()> {
    let images = global.client().get("/v1/images").await?;
    match args.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&images)?),
        "table" => {
            let mut rows = vec![["IMAGE", "KIND", "DIGEST", "SIZE", "PULLED", "LAST USED"].map(String::from).to_vec()];
            for i in images.as_array().into_iter().flatten() {
                let digest = i["digest"].as_str().unwrap_or_default();
                rows.push(vec![
                    i["reference"].as_str().unwrap_or_default().to_string(),
                    i["kind"].as_str().unwrap_or_default().to_string(),
                    digest.get(..19).unwrap_or(digest).to_string(),
                    human_size(i["size"].as_u64().unwrap_or(0)),
                    super::get::age_ms(i["pulledAt"].as_u64().unwrap_or(0)),
                    i["lastUsed"].as_u64().map_or_else(|| "never".into(), super::get::age_ms),
                ]);
            }
            super::get::print_table(&rows);
        }
        other => anyhow::bail!("-o {other}: expected table or json"),
    }
    Ok(())
}

#[derive(Debug, Args)]
pub struct ImageArgs {
    #[command(subcommand)]
    pub command: ImageCommand,
}

#[derive(Debug, clap::Subcommand)]
pub enum ImageCommand {
    /// Remove every image no pod uses, with the blobs and layers only it had.
    Prune,
}

pub async fn image(global: &Global, args: ImageArgs) -> anyhow::Result<()> {
    match args.command {
        ImageCommand::Prune => {
            let removed = global.client().json(hyper::Method::POST, "/v1/images/prune", bytes::Bytes::new()).await?;
            let mut total = 0;
            for i in removed.as_array().into_iter().flatten() {
                println!("deleted: {}", i["reference"].as_str().unwrap_or_default());
                total += i["size"].as_u64().unwrap_or(0);
            }
            println!("Total reclaimed space: {}", human_size(total));
        }
    }
    Ok(())
}
