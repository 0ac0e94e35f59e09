//! The `palisade` binary: parses the command line and hands each subcommand
//! to the module that owns it.

/// jemalloc: glibc malloc cost a quarter of the controller's CPU at scale.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;

use clap::Parser;
use palisade::config::{Cli, Command, TokenCommand};
use palisade::resources::{catalog, tokens};
use palisade::runtime::{process, telemetry};
use palisade::{backup, crdgen, diff, operator_rbac, render};

#[tokio::main]
async fn main() -> ExitCode {
    match run(Cli::parse()).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds { dir, api_doc } => crdgen::command(dir.as_deref(), api_doc.as_deref())?,
        Command::Render { files } => print!("{}", render::render_paths(&files)?),
        Command::Diff(args) => return Ok(diff::command(&args).await),
        Command::Permissions => print!("{}", catalog::describe()),
        Command::Rbac { yaml: true } => print!("{}", operator_rbac::to_kustomize_yaml()),
        Command::Rbac { yaml: false } => print!("{}", operator_rbac::to_json()),
        Command::Token(TokenCommand::Verify {
            jwks,
            audience,
            token,
        }) => return Ok(tokens::verify_command(&jwks, audience.as_deref(), &token)),
        Command::Version => println!("palisade {}", env!("CARGO_PKG_VERSION")),
        Command::Controller(args) => {
            let settings = |ns: &str| args.runtime_settings(ns);
            return Ok(process::controller(args.process(), settings).await?);
        }
        Command::Backup(args) => {
            telemetry::init_stderr()?;
            return backup::cli::run(*args).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}
