use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use palisade::config::{Cli, Command, ControllerArgs};
use palisade::controller::{Context, SystemClock, tenant};
use palisade::resources::catalog;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Crds { dir } => {
            let crds = palisade::crdgen::generate()?;
            match dir {
                Some(dir) => palisade::crdgen::write_dir(&dir, &crds)
                    .with_context(|| format!("writing {}", dir.display()))?,
                None => print!("{}", palisade::crdgen::to_stream(&crds)),
            }
        }
        Command::Render { files } => print!("{}", palisade::render::render_paths(&files)?),
        Command::Permissions => print!("{}", catalog::describe()),
        Command::Rbac { yaml } => print!(
            "{}",
            if yaml {
                palisade::operator_rbac::to_kustomize_yaml()
            } else {
                palisade::operator_rbac::to_json()
            }
        ),
        Command::Version => println!("palisade {}", env!("CARGO_PKG_VERSION")),
        Command::Controller(args) => controller(args).await?,
        Command::Backup(args) => {
            // Logs go to stderr: stdout carries the JSON result (`--output json`).
            tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
                .with_writer(std::io::stderr)
                .init();
            return palisade::backup::cli::run(*args).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn init_tracing(format: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("PALISADE_LOG")
        .unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter);
    if format == "text" {
        builder.init();
    } else {
        builder
            .json()
            .flatten_event(true)
            .with_current_span(true)
            .init();
    }
}

/// A tick every `interval` (never when zero): a safety net that re-checks every
/// object; watches already heal drift within seconds.
fn resync_ticks(interval: std::time::Duration) -> futures::stream::BoxStream<'static, ()> {
    use futures::StreamExt;
    if interval.is_zero() {
        return futures::stream::pending().boxed();
    }
    futures::stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval),
        |mut t| async move {
            t.tick().await;
            Some(((), t))
        },
    )
    .boxed()
}

async fn controller(args: ControllerArgs) -> anyhow::Result<()> {
    init_tracing(&args.log_format);
    let client = kube::Client::try_default()
        .await
        .context("connecting to the cluster (kubeconfig or in-cluster config)")?;
    let (cache, streams) = tenant::child_cache(&client);
    let ctx = Arc::new(Context::new(
        client,
        cache,
        Arc::new(SystemClock),
        args.settings(),
    ));
    let shutdown = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    tracing::info!("palisade controller starting");
    let resync = resync_ticks(args.resync_interval);
    tenant::run(ctx, streams, shutdown, resync).await;
    tracing::info!("palisade controller stopped");
    Ok(())
}
