//! `wasmlet`: parse arguments, install logging, hand over to the subcommand.

use clap::Parser;

mod api;
mod cli;
mod cluster;
mod image;
mod node;
mod pod;
mod runtime;
mod spec;
mod store;
mod workload;

fn main() -> std::process::ExitCode {
    let args = cli::Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("WASMLET_LOG").unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    match cli::run(args) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
