//! The `palisade controller` process around [`super::run`]: logging, the
//! client, the admin server, and shutdown on SIGTERM/SIGINT.
//!
//! It takes plain values (not the clap flags) so the runtime does not depend
//! on `config`, which builds them: `ControllerArgs::process` and
//! `ControllerArgs::runtime_settings`.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::admin::{AdminServer, Health};
use super::telemetry::{self, LogFormat, TelemetryError};
use super::{RuntimeSettings, client};
use crate::controller::SystemClock;
use crate::metrics::Metrics;

/// How the process logs, listens and talks to the API server.
#[derive(Debug, Clone)]
pub struct Process {
    pub log_format: LogFormat,
    /// `EnvFilter` syntax.
    pub log_level: String,
    /// Address of the admin server (/livez, /readyz, /metrics).
    pub admin_addr: SocketAddr,
    pub kube_qps: f64,
    pub kube_burst: u32,
    /// HTTP/2 on as few connections as the streams need (see [`client::from_config`]).
    pub http2: bool,
}

/// Why the controller process could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Telemetry(#[from] TelemetryError),
    #[error("loading the cluster config (kubeconfig or in-cluster)")]
    Config(#[source] kube::config::InferConfigError),
    #[error("{0}")]
    Lease(String),
    #[error("building the Kubernetes client")]
    Client(#[source] kube::Error),
    #[error("binding the admin server to {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// Short, bounded reason.
    pub fn reason(&self) -> &'static str {
        match self {
            StartError::Telemetry(_) => "Telemetry",
            StartError::Config(_) => "ClusterConfig",
            StartError::Lease(_) => "LeaseSettings",
            StartError::Client(_) => "Client",
            StartError::Bind { .. } => "AdminBind",
        }
    }
}

/// Runs the controllers until shutdown (or, with `--exit-on-lost-leadership`,
/// lost leadership; or caches that never sync: exit code 1).
/// `settings` builds the runtime settings from the client's default namespace.
pub async fn controller(
    process: Process,
    settings: impl FnOnce(&str) -> RuntimeSettings,
) -> Result<ExitCode, StartError> {
    telemetry::init(process.log_format, &process.log_level)?;
    let metrics = Arc::new(Metrics::new());
    let config = kube::Config::infer().await.map_err(StartError::Config)?;
    let settings = settings(&config.default_namespace);
    if let Some(lease) = &settings.leader {
        lease.validate().map_err(StartError::Lease)?;
    }
    // The Lease gets its own client without the rate limit: a renewal must
    // never wait behind the controllers' writes.
    // Over HTTP/2 it also has its own connection: a renewal never waits for
    // a stream on a connection the watches fill.
    let lease = client::from_config(config.clone(), metrics.clone(), 0.0, 1, process.http2)
        .map_err(StartError::Client)?;
    let api = client::from_config(
        config,
        metrics.clone(),
        process.kube_qps,
        process.kube_burst,
        process.http2,
    )
    .map_err(StartError::Client)?;
    let clients = super::Clients { api, lease };
    let health = Health::default();
    let shutdown = CancellationToken::new();
    tokio::spawn(on_signal(shutdown.clone()));
    let addr = process.admin_addr;
    let admin = AdminServer::bind(addr)
        .await
        .map_err(|source| StartError::Bind { addr, source })?;
    // The address actually bound (`--admin-addr 127.0.0.1:0` picks a port).
    let bound = admin.local_addr().unwrap_or(addr);
    let admin_stop = CancellationToken::new();
    let admin = tokio::spawn(admin.serve(health.clone(), metrics.clone(), admin_stop.clone()));
    tracing::info!(admin = %bound, "palisade controller starting; /livez, /readyz and /metrics served");
    let result = super::run(
        clients,
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
