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
        /// A YAML file or a directory of them (repeatable); `-` reads standard input.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// Show what applying the given resources would change in the cluster of the
    /// current kubeconfig (server-side dry-run): created, changed, pruned,
    /// unchanged, plus RolePolicy escalations. Exit code 0: no change, 1: changes, 2: error.
    Diff(DiffArgs),
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

/// Flags of `palisade diff`.
#[derive(Debug, Clone, Args)]
pub struct DiffArgs {
    /// A YAML file or a directory of them (repeatable; `-` reads standard input), as for `render` and
    /// `kubectl apply -f`; any kind, not only Palisade's.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// How the input is applied is read from each live object: created when
    /// absent; server-side applied by the manager of its `Apply` entry in
    /// `managedFields` (Flux's kustomize-controller, Argo CD's
    /// argocd-controller, `kubectl apply --server-side`), conflicts forced;
    /// otherwise `kubectl apply`'s three-way merge against the
    /// last-applied-configuration annotation. Pass a field manager only to
    /// override that, for a pipeline that will take over from another: the
    /// input is then server-side applied by it.
    #[arg(long)]
    pub field_manager: Option<String>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t = DiffOutput::Text)]
    pub output: DiffOutput,
}

/// Output of `palisade diff`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiffOutput {
    Text,
    Json,
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
    /// The ClusterRole Palisade binds to itself in each namespace it manages
    /// (the chart's `<fullname>-tenant-namespace`).
    #[arg(long, env = "PALISADE_TENANT_NAMESPACE_ROLE", default_value = crate::operator_rbac::TENANT_NAMESPACE_ROLE)]
    pub tenant_namespace_role: String,
    /// The ServiceAccount Palisade runs as, `namespace/name` (default: asked
    /// from the API server).
    #[arg(long, env = "PALISADE_SERVICE_ACCOUNT", value_parser = parse_namespaced_name)]
    pub service_account: Option<(String, String)>,
    /// Kinds TTL garbage collection may delete, comma-separated
    /// `apiGroup/resource` (core group: `/configmaps`); the RBAC must grant
    /// the same (Helm value `rbac.garbageCollectionKinds`). Empty: none.
    #[arg(long, env = "PALISADE_GC_KINDS", default_value = "/configmaps,/secrets,batch/jobs,/pods,/persistentvolumeclaims", value_parser = parse_gc_kinds)]
    pub gc_kinds: GcKinds,
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
    /// stops its controllers (must be shorter than --lease-duration, so they
    /// have stopped before another replica may take the Lease).
    #[arg(long, env = "PALISADE_RENEW_DEADLINE", default_value = "10s", value_parser = parse_duration)]
    pub renew_deadline: Duration,
    /// How often a standby tries to acquire the Lease (and the leader retries a
    /// failed renewal).
    #[arg(long, env = "PALISADE_RETRY_PERIOD", default_value = "2s", value_parser = parse_duration)]
    pub retry_period: Duration,
    /// After losing the leader Lease, exit (code 1, to be restarted) instead of
    /// stopping the controllers and campaigning again in this process. Off by
    /// default: with one replica, exit plus the kubelet's restart back-off is
    /// the slowest way back (docs/PERFORMANCE.md, "Faults").
    #[arg(long, env = "PALISADE_EXIT_ON_LOST_LEADERSHIP", default_value_t = false, action = clap::ArgAction::Set)]
    pub exit_on_lost_leadership: bool,
    /// Address of the admin server (/livez, /readyz, /metrics).
    #[arg(long, env = "PALISADE_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: std::net::SocketAddr,
    /// Sustained Kubernetes API requests per second (0 = unlimited). Paces
    /// gets, writes and watches; lists go at most 16 at a time instead, and
    /// the leader Lease has its own unpaced client. 200 converged 200 tenants
    /// within 12% of unlimited, with no request queued or refused by the API
    /// server's priority and fairness (docs/PERFORMANCE.md).
    #[arg(long, env = "PALISADE_KUBE_QPS", default_value_t = 200.0)]
    pub kube_qps: f64,
    /// Kubernetes API requests allowed in a burst above --kube-qps.
    #[arg(long, env = "PALISADE_KUBE_BURST", default_value_t = 400)]
    pub kube_burst: u32,
    /// Talk to the API server over HTTP/2 (the default), 90 requests or
    /// watches at most per connection (kube-apiserver allows 100 streams per
    /// connection by default), opening connections only as the streams in
    /// flight need: one for the cluster-wide watches and requests, one more
    /// per about 45 namespaces where Palisade generates Secrets.
    /// `--http2=false` speaks HTTP/1.1: one connection per watch, two per such
    /// namespace (docs/SCALING.md).
    #[arg(
        long,
        env = "PALISADE_HTTP2",
        default_value_t = true,
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        default_missing_value = "true"
    )]
    pub http2: bool,
    /// How long a graceful shutdown waits for in-flight reconciles.
    #[arg(long, env = "PALISADE_SHUTDOWN_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub shutdown_timeout: Duration,
    /// How long a leader may take to sync its caches (be ready) before it
    /// gives up: /livez fails, the Lease is released for a standby, and the
    /// process exits non-zero to be restarted (0 = wait forever).
    #[arg(long, env = "PALISADE_SYNC_TIMEOUT", default_value = "5m", value_parser = parse_duration)]
    pub sync_timeout: Duration,
}

/// The garbage-collection allow-list, `(apiGroup, resource)`.
#[derive(Debug, Clone, PartialEq)]
pub struct GcKinds(pub Vec<(String, String)>);

fn parse_gc_kinds(s: &str) -> Result<GcKinds, String> {
    let mut kinds = Vec::new();
    for item in s.split(',').map(str::trim).filter(|i| !i.is_empty()) {
        let (group, resource) = item.split_once('/').ok_or_else(|| {
            format!("{item:?}: write apiGroup/resource, e.g. batch/jobs or /configmaps for the core group")
        })?;
        if resource.is_empty() || resource.contains('/') || resource == "*" || group == "*" {
            return Err(format!(
                "{item:?}: name one resource of one group (no wildcards, no subresources)"
            ));
        }
        kinds.push((group.to_string(), resource.to_string()));
    }
    Ok(GcKinds(kinds))
}

fn parse_namespaced_name(s: &str) -> Result<(String, String), String> {
    match s.split_once('/') {
        Some((ns, name)) if !ns.is_empty() && !name.is_empty() && !name.contains('/') => {
            Ok((ns.to_string(), name.to_string()))
        }
        _ => Err(format!("{s:?}: write namespace/name")),
    }
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
            min_forced_rotation_interval: self.min_forced_rotation_interval,
            tenant_namespace_role: self.tenant_namespace_role.clone(),
            service_account: self.service_account.clone(),
            gc_kinds: self.gc_kinds.0.clone(),
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
            sync_timeout: self.sync_timeout,
            exit_on_lost_leadership: self.exit_on_lost_leadership,
        }
    }

    /// How the controller process logs, listens and talks to the API server.
    pub fn process(&self) -> crate::runtime::process::Process {
        crate::runtime::process::Process {
            log_format: self.log_format,
            log_level: self.log_level.clone(),
            admin_addr: self.admin_addr,
            kube_qps: self.kube_qps,
            kube_burst: self.kube_burst,
            http2: self.http2,
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

#[cfg(test)]
mod tests {
    use super::*;

    /// HTTP/2 is the default; `--http2` alone still means on, and
    /// `--http2=false` (or PALISADE_HTTP2=false) turns it off.
    #[test]
    fn http2_is_the_default_and_can_be_turned_off() {
        use clap::Parser;
        let http2 = |args: &[&str]| {
            let cli =
                Cli::try_parse_from(["palisade", "controller"].iter().chain(args)).expect("flags");
            match cli.command {
                Command::Controller(c) => c.http2,
                _ => unreachable!("parsed as controller"),
            }
        };
        assert!(http2(&[]));
        assert!(http2(&["--http2"]));
        assert!(http2(&["--http2=true"]));
        assert!(!http2(&["--http2=false"]));
        assert!(!http2(&["--http2", "false"]));
    }

    #[test]
    fn gc_kinds_parse_and_refuse_wildcards() {
        assert_eq!(
            parse_gc_kinds("/configmaps, batch/jobs,").unwrap(),
            GcKinds(vec![
                (String::new(), "configmaps".into()),
                ("batch".into(), "jobs".into())
            ])
        );
        assert_eq!(parse_gc_kinds("").unwrap(), GcKinds(Vec::new()));
        for bad in ["configmaps", "*/*", "/*", "/pods/log", "apps/"] {
            assert!(parse_gc_kinds(bad).is_err(), "{bad}");
        }
        assert_eq!(
            parse_namespaced_name("palisade-system/palisade").unwrap(),
            ("palisade-system".into(), "palisade".into())
        );
        assert!(parse_namespaced_name("palisade").is_err());
    }
}
