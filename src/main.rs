//! Palisade command line (minimal: the real clap `Cli` is assembled at merge time).
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser, Debug)]
#[command(
    name = "palisade",
    version,
    about = "Tenant isolation control plane for Kubernetes"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// PostgreSQL snapshots: run, restore, verify, list, prune.
    Backup(palisade::backup::cli::BackupArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    match Cli::parse().command {
        Command::Backup(args) => palisade::backup::cli::run(args).await,
    }
}
