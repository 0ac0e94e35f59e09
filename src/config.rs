//! Every command-line flag, with its environment fallback. Nothing else in
//! Palisade reads the environment.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// Palisade: tenant isolation control plane for Kubernetes.
#[derive(Debug, Parser)]
#[command(name = "palisade", version, about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the controllers against the cluster of the current kubeconfig (or in-cluster config).
    Controller(ControllerArgs),
    /// Print the CustomResourceDefinitions (or write one file each with --dir).
    Crds {
        /// Write one YAML file per CRD into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
    },
    /// Print, offline, every object Palisade would create for the given resources.
    Render {
        /// A YAML file or a directory of them (repeatable).
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// PostgreSQL snapshots: run, restore, verify, list, prune (works without Kubernetes).
    Backup(Box<crate::backup::cli::BackupArgs>),
    /// Print the permission catalog and the built-in roles.
    Permissions,
    /// Print the operator's own RBAC rules as JSON (or the kustomize RBAC with --yaml).
    Rbac {
        /// Print the kustomize base's ClusterRole, Role and bindings as YAML.
        #[arg(long)]
        yaml: bool,
    },
    /// Print the version.
    Version,
}

/// Flags of `palisade controller`.
#[derive(Debug, Clone, Args)]
pub struct ControllerArgs {
    /// Maximum reconciles running at once per controller.
    #[arg(long, env = "PALISADE_CONCURRENCY", default_value_t = 16)]
    pub concurrency: u16,
    /// First retry delay after a failed reconcile (doubles per failure, ±20% jitter).
    #[arg(long, env = "PALISADE_BACKOFF_BASE", default_value = "500ms", value_parser = parse_duration)]
    pub backoff_base: Duration,
    /// Longest retry delay after failed reconciles.
    #[arg(long, env = "PALISADE_BACKOFF_MAX", default_value = "5m", value_parser = parse_duration)]
    pub backoff_max: Duration,
    /// Reconcile every object this often as a safety net (0 = never; watches
    /// heal drift within seconds either way).
    #[arg(long, env = "PALISADE_RESYNC_INTERVAL", default_value = "10h", value_parser = parse_duration)]
    pub resync_interval: Duration,
    /// Log format: json or text.
    #[arg(long, env = "PALISADE_LOG_FORMAT", default_value = "json")]
    pub log_format: String,
    /// Image of the BackupSchedule run Jobs (default: the Palisade image of this version).
    #[arg(long, env = "PALISADE_JOB_IMAGE", default_value = concat!("ghcr.io/palisade-dev/palisade:", env!("CARGO_PKG_VERSION")))]
    pub job_image: String,
    /// Pod name, for Events and leader election identity.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    crate::duration::parse(s).map_err(|e| e.to_string())
}

impl ControllerArgs {
    pub fn settings(&self) -> crate::controller::Settings {
        crate::controller::Settings {
            concurrency: self.concurrency,
            backoff: crate::controller::Backoff {
                base: self.backoff_base,
                max: self.backoff_max,
            },
            reporter: "palisade".to_string(),
            instance: self.pod_name.clone(),
            job_image: self.job_image.clone(),
        }
    }
}
