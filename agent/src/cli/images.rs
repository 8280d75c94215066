//! `wasmlet images`: what is in the local store.

use clap::Args;

use super::{Global, human_size};
use crate::image::ImageService;

#[derive(Debug, Args)]
pub struct ImagesArgs {
    /// Output format: table (default) or json.
    #[arg(short = 'o', long, default_value = "table")]
    pub output: String,
}

pub fn run(global: &Global, args: ImagesArgs) -> anyhow::Result<()> {
    let service = ImageService::open(&global.state_dir, global.registry_config()?, global.keychain()?)?;
    let images = service.list()?;
    match args.output.as_str() {
        "json" => println!("{}", serde_json::to_string_pretty(&images)?),
        "table" => {
            println!("{:<48} {:<10} {:<19} {:>10}", "IMAGE", "KIND", "DIGEST", "SIZE");
            for i in images {
                let digest = i.digest.to_string();
                println!("{:<48} {:<10} {:<19} {:>10}", i.reference, i.kind_name(), &digest[..19], human_size(i.size));
            }
        }
        other => anyhow::bail!("-o {other}: expected table or json"),
    }
    Ok(())
}
