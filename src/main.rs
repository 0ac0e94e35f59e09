/// jemalloc: glibc malloc cost a quarter of the controller's CPU at scale.
#[cfg(not(target_env = "msvc"))]
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use palisade::config::{Cli, Command, ControllerArgs, TokenCommand};
use palisade::controller::SystemClock;
use palisade::metrics::Metrics;
use palisade::resources::catalog;
use palisade::runtime::{
    self,
    admin::{AdminServer, Health},
    telemetry,
};
use tokio_util::sync::CancellationToken;

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
        Command::Crds { dir, api_doc } => {
            if let Some(path) = api_doc {
                std::fs::write(&path, palisade::apidoc::render(&palisade::crd::all()))
                    .with_context(|| format!("writing {}", path.display()))?;
            }
            let crds = palisade::crdgen::generate()?;
            match dir {
                Some(dir) => palisade::crdgen::write_dir(&dir, &crds)
                    .with_context(|| format!("writing {}", dir.display()))?,
                None => print!("{}", palisade::crdgen::to_stream(&crds)),
            }
        }
        Command::Render { files } => print!("{}", palisade::render::render_paths(&files)?),
        Command::Diff(args) => return Ok(palisade::diff::command(&args).await),
        Command::Permissions => print!("{}", catalog::describe()),
        Command::Rbac { yaml } => print!(
            "{}",
            if yaml {
                palisade::operator_rbac::to_kustomize_yaml()
            } else {
                palisade::operator_rbac::to_json()
            }
        ),
        Command::Token(TokenCommand::Verify {
            jwks,
            audience,
            token,
        }) => return verify_token(&jwks, audience.as_deref(), &token),
        Command::Version => println!("palisade {}", env!("CARGO_PKG_VERSION")),
        Command::Controller(args) => return controller(*args).await,
        Command::Backup(args) => {
            // Logs go to stderr (stdout carries the JSON result of
            // `--output json`), through the same redaction as the controller's.
            let filter = std::env::var("PALISADE_LOG").unwrap_or_else(|_| "warn".to_string());
            let subscriber = palisade::runtime::telemetry::subscriber(
                palisade::runtime::telemetry::LogFormat::Text,
                &filter,
                std::io::stderr,
            )?;
            tracing::subscriber::set_global_default(subscriber)
                .map_err(|_| anyhow::anyhow!("a tracing subscriber is already installed"))?;
            return palisade::backup::cli::run(*args).await;
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// `palisade token verify`: prints the claims of a valid token as JSON.
fn verify_token(
    jwks: &std::path::Path,
    audience: Option<&str>,
    token: &str,
) -> anyhow::Result<ExitCode> {
    let jwks =
        std::fs::read_to_string(jwks).with_context(|| format!("reading {}", jwks.display()))?;
    let token = if token == "-" {
        let mut buf = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut buf)
            .context("reading the token from stdin")?;
        buf.trim().to_string()
    } else {
        token.to_string()
    };
    match palisade::resources::tokens::verify(&token, &jwks, audience) {
        Ok(claims) => {
            println!("{}", serde_json::to_string_pretty(&claims)?);
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            eprintln!("invalid token: {e}");
            Ok(ExitCode::FAILURE)
        }
    }
}

async fn controller(args: ControllerArgs) -> anyhow::Result<ExitCode> {
    telemetry::init(args.log_format, &args.log_level)?;
    let metrics = Arc::new(Metrics::new());
    let config = kube::Config::infer()
        .await
        .context("loading the cluster config (kubeconfig or in-cluster)")?;
    let settings = args.runtime_settings(&config.default_namespace);
    if let Some(lease) = &settings.leader {
        lease.validate().map_err(anyhow::Error::msg)?;
    }
    let client =
        runtime::client::from_config(config, metrics.clone(), args.kube_qps, args.kube_burst)
            .context("building the Kubernetes client")?;
    let health = Health::default();
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let admin = AdminServer::bind(args.admin_addr)
        .await
        .with_context(|| format!("binding the admin server to {}", args.admin_addr))?;
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin.serve(health.clone(), metrics.clone(), admin_stop.clone()));
    tracing::info!(admin = %args.admin_addr, "palisade controller starting");
    let result = runtime::run(
        client,
        metrics,
        health,
        Arc::new(SystemClock),
        settings,
        shutdown,
    )
    .await;
    admin_stop.cancel();
    let _ = admin.await;
    match result {
        Ok(()) => {
            tracing::info!("palisade controller stopped");
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            tracing::error!(error = %e, "palisade controller stopped");
            Ok(ExitCode::FAILURE)
        }
    }
}

/// Cancels `shutdown` on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn on_signal(shutdown: CancellationToken) {
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
    tracing::info!("shutdown requested");
    shutdown.cancel();
}
