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
    Controller(Box<ControllerArgs>),
    /// Print the CustomResourceDefinitions (or write one file each with --dir).
    Crds {
        /// Write one YAML file per CRD into this directory instead of printing.
        #[arg(long)]
        dir: Option<PathBuf>,
        /// Also write the Markdown API reference (docs/API.md) generated from them.
        #[arg(long)]
        api_doc: Option<PathBuf>,
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
    /// Application tokens issued by Palisade.
    #[command(subcommand)]
    Token(TokenCommand),
    /// Print the version.
    Version,
}

/// `palisade token …`
#[derive(Debug, Subcommand)]
pub enum TokenCommand {
    /// Verify a token against a JWKS (e.g. the tenant's `<key>-jwks` ConfigMap's
    /// jwks.json) and print its claims; exits non-zero when it is not valid.
    Verify {
        /// JWKS file (RFC 7517 JSON).
        #[arg(long)]
        jwks: PathBuf,
        /// Expected audience (the `aud` claim); not checked when omitted.
        #[arg(long)]
        audience: Option<String>,
        /// The token, or `-` to read it from standard input (keeps it out of
        /// shell history and process listings).
        token: String,
    },
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
    pub log_format: crate::runtime::telemetry::LogFormat,
    /// Log filter (tracing `EnvFilter` syntax, e.g. `info,palisade=debug`).
    #[arg(long, env = "PALISADE_LOG", default_value = "info")]
    pub log_level: String,
    /// Image of the BackupSchedule run Jobs (default: the Palisade image of this version).
    #[arg(long, env = "PALISADE_JOB_IMAGE", default_value = concat!("ghcr.io/palisade-dev/palisade:", env!("CARGO_PKG_VERSION")))]
    pub job_image: String,
    /// Minimum time between forced rotations (`palisade.dev/rotate-now`) of one
    /// Secret: a request on a younger version waits until then.
    #[arg(long, env = "PALISADE_MIN_FORCED_ROTATION_INTERVAL", default_value = "10m", value_parser = parse_duration)]
    pub min_forced_rotation_interval: Duration,
    /// Pod name, for Events and leader election identity.
    #[arg(long, env = "POD_NAME")]
    pub pod_name: Option<String>,
    /// Namespace of the leader Lease (default: the client's namespace, i.e. the
    /// pod's own namespace in-cluster).
    #[arg(long, env = "POD_NAMESPACE")]
    pub pod_namespace: Option<String>,
    /// Elect a leader through a Lease so that only one replica runs the controllers.
    #[arg(long, env = "PALISADE_LEADER_ELECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub leader_election: bool,
    /// Name of the leader election Lease.
    #[arg(long, env = "PALISADE_LEASE_NAME", default_value = "palisade-leader")]
    pub lease_name: String,
    /// How long the leader Lease is valid after its last renewal; a standby takes
    /// over after this once the leader stops renewing.
    #[arg(long, env = "PALISADE_LEASE_DURATION", default_value = "15s", value_parser = parse_duration)]
    pub lease_duration: Duration,
    /// How long the leader keeps leading without a successful renewal before it
    /// stops its controllers and exits (must be shorter than --lease-duration).
    #[arg(long, env = "PALISADE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How often a standby tries to acquire the Lease (and the leader retries a
    /// failed renewal).
    #[arg(long, env = "PALISADE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "PALISADE_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: std::net::SocketAddr,
    /// Sustained Kubernetes API requests per second (0 = unlimited).
    #[arg(long, env = "PALISADE_KUBE_QPS", default_value_t = 50.0)]
    pub kube_qps: f64,
    /// Kubernetes API requests allowed in a burst above --kube-qps.
    #[arg(long, env = "PALISADE_KUBE_BURST", default_value_t = 100)]
    pub kube_burst: u32,
    /// How long a graceful shutdown waits for in-flight reconciles.
    #[arg(long, env = "PALISADE_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
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
            metrics: None,
            min_forced_rotation_interval: self.min_forced_rotation_interval,
        }
    }

    /// Runtime settings; `default_namespace` is the client's namespace, used
    /// for the Lease when --pod-namespace is not set.
    pub fn runtime_settings(&self, default_namespace: &str) -> crate::runtime::RuntimeSettings {
        let leader = self
            .leader_election
            .then(|| crate::runtime::leader::LeaseSettings {
                name: self.lease_name.clone(),
                namespace: self
                    .pod_namespace
                    .clone()
                    .unwrap_or_else(|| default_namespace.to_string()),
                identity: self.identity(),
                lease_duration: self.lease_duration,
                renew_deadline: self.renew_deadline,
                retry_period: self.retry_period,
            });
        crate::runtime::RuntimeSettings {
            controller: self.settings(),
            resync_interval: self.resync_interval,
            leader,
            shutdown_timeout: self.shutdown_timeout,
        }
    }

    /// Leader election identity: the pod name, or a random one outside a pod.
    fn identity(&self) -> String {
        self.pod_name
            .clone()
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| format!("palisade-{:08x}", rand::random::<u32>()))
    }
}
