//! `palisade backup run|restore|verify|list|prune`: flags, the config file (shape of
//! `BackupSchedule.spec`), secrets from files or the environment, and text / JSON output.
//!
//! Secrets never come from argv: the PostgreSQL password from `--password-file` or
//! `PGPASSWORD`, the encryption key from `--key-file` or `PALISADE_BACKUP_KEY`, S3
//! credentials from the AWS chain (`AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`, web
//! identity, instance profile) or `--s3-credentials-file`.
//!
//! Exit codes: 0 success, 1 failure (including a failed restore test), 2 bad
//! configuration.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use serde_json::{Value, json};

use super::catalog;
use super::destination::{self, DestinationArgs, Storage, StorageError};
use super::engine::{self, Progress, RestoreOptions, RunOptions};
use super::error::EngineError;
use super::format::{self, EncryptionKey};
use super::pg::{self, PgConn};
use super::retention::{self, Policy};
use super::secret_file::{SecretFileError, read_secret_file, secret_string};
use super::verify::{self, VerifyOptions};
use crate::crd::backup_schedule::{
    BackupScheduleSpec, CheckResult, PostgresSource, Retention, SqlCheck, SslMode,
};

/// Largest `--output json` result (it becomes a Kubernetes termination message).
pub const MAX_JSON_RESULT: usize = 4000;

/// `palisade backup …`
#[derive(clap::Args, Debug)]
pub struct BackupArgs {
    /// What to do.
    #[command(subcommand)]
    pub command: BackupCommand,
    /// Options shared by every subcommand.
    #[command(flatten)]
    pub common: CommonArgs,
}

/// Output format.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// Human-readable lines.
    Text,
    /// One compact JSON object on stdout (< 4 KiB).
    Json,
}

/// `sslmode` on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SslArg {
    /// disable
    Disable,
    /// allow
    Allow,
    /// prefer
    Prefer,
    /// require
    Require,
    /// verify-ca
    VerifyCa,
    /// verify-full
    VerifyFull,
}

impl From<SslArg> for SslMode {
    fn from(a: SslArg) -> Self {
        match a {
            SslArg::Disable => SslMode::Disable,
            SslArg::Allow => SslMode::Allow,
            SslArg::Prefer => SslMode::Prefer,
            SslArg::Require => SslMode::Require,
            SslArg::VerifyCa => SslMode::VerifyCa,
            SslArg::VerifyFull => SslMode::VerifyFull,
        }
    }
}

/// Options shared by every subcommand (flags override the config file).
#[derive(clap::Args, Debug)]
pub struct CommonArgs {
    /// Config file (YAML or JSON) shaped like `BackupSchedule.spec`.
    #[arg(long, global = true, env = "PALISADE_BACKUP_CONFIG")]
    pub config: Option<PathBuf>,
    /// Output format.
    #[arg(long, global = true, value_enum, default_value_t = OutputFormat::Text)]
    pub output: OutputFormat,
    /// Where snapshots live (`--dir`, `--s3-*`): one group per backend.
    #[command(flatten)]
    pub destination: DestinationArgs,
    /// PostgreSQL host.
    #[arg(long, global = true)]
    pub host: Option<String>,
    /// PostgreSQL port.
    #[arg(long, global = true)]
    pub port: Option<u16>,
    /// Database.
    #[arg(long, global = true)]
    pub database: Option<String>,
    /// Role.
    #[arg(long, global = true)]
    pub user: Option<String>,
    /// File holding the password (default: `PGPASSWORD`).
    #[arg(long, global = true)]
    pub password_file: Option<PathBuf>,
    /// libpq sslmode.
    #[arg(long, global = true, value_enum)]
    pub sslmode: Option<SslArg>,
    /// PEM file with the CA certificate(s) the server's certificate must chain to
    /// (needed for verify-ca and verify-full; with require it turns verification on).
    #[arg(long, global = true, env = "PGSSLROOTCERT")]
    pub ssl_root_cert: Option<PathBuf>,
    /// Encryption key file (repeatable for restores after rotation; `ID=PATH` names the
    /// key id). The first one encrypts. Default: `PALISADE_BACKUP_KEY`.
    #[arg(long, global = true)]
    pub key_file: Vec<String>,
    /// Key id of the (first) key. Default: a fingerprint of the key.
    #[arg(long, global = true)]
    pub key_id: Option<String>,
    /// Directory of pg_dump / pg_restore (default: `PATH`).
    #[arg(long, global = true, env = "PALISADE_PG_BIN")]
    pub pg_bin: Option<PathBuf>,
    /// Never print progress.
    #[arg(long, global = true)]
    pub quiet: bool,
    /// Add `profile` to the result of `run` and `restore`: seconds per pipeline stage
    /// (work, waits, CPU), as `make bench-backup` reports them.
    #[arg(long, global = true)]
    pub profile: bool,
    /// Name of the run (the Job), recorded as `run` in the JSON result so that a
    /// signed result cannot be replayed for another run.
    #[arg(long, global = true, env = "PALISADE_RUN")]
    pub run_name: Option<String>,
    /// Also write the one-line JSON result to this file (in a Kubernetes Job:
    /// `/dev/termination-log`, so the controller reads it as the termination message).
    #[arg(long, global = true)]
    pub termination_log: Option<PathBuf>,
}

/// The subcommands.
#[derive(clap::Subcommand, Debug)]
pub enum BackupCommand {
    /// Take a snapshot.
    Run(RunArgs),
    /// Restore a snapshot into a database.
    Restore(RestoreArgs),
    /// Restore test into a scratch database.
    Verify(VerifyArgs),
    /// List snapshots and their verification state.
    List,
    /// Delete snapshots by retention.
    Prune(PruneArgs),
}

// Flags of `backup run` (no doc comment: it would replace the subcommand's about).
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// zstd level (1–19).
    #[arg(long)]
    pub compression_level: Option<i32>,
    /// zstd worker threads (0: compress on the pipeline's own thread). Default: 2 when
    /// the process may use two CPUs or more and the level is 9 or lower, else 0.
    #[arg(long, value_parser = clap::value_parser!(u32).range(0..=16))]
    pub compression_threads: Option<u32>,
    /// Snapshot id (default: `YYYYMMDDTHHMMSSZ-xxxx`). A run with the id of an
    /// existing snapshot reports it and does nothing.
    #[arg(long)]
    pub id: Option<String>,
    /// Store unencrypted even if a key is configured.
    #[arg(long)]
    pub no_encryption: bool,
    /// After a successful snapshot, delete snapshots by the config's retention
    /// (like `backup prune`; never the newest verified snapshot) and report it.
    #[arg(long)]
    pub prune: bool,
}

// Flags of `backup restore`.
#[derive(clap::Args, Debug)]
pub struct RestoreArgs {
    /// Snapshot id (default: newest).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Target database (default: `--database`).
    #[arg(long)]
    pub target_database: Option<String>,
    /// Target host (default: `--host`).
    #[arg(long)]
    pub target_host: Option<String>,
    /// Target port (default: `--port`).
    #[arg(long)]
    pub target_port: Option<u16>,
    /// Target role (default: `--user`).
    #[arg(long)]
    pub target_user: Option<String>,
    /// Target password file (default: the source password).
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// Restore over a non-empty database (drops the objects the snapshot contains).
    #[arg(long)]
    pub force: bool,
    /// Create the target database when it does not exist.
    #[arg(long)]
    pub create: bool,
    /// Skip ownership and privileges.
    #[arg(long)]
    pub no_owner: bool,
    /// With a key configured, also restore an unencrypted (but authenticated)
    /// snapshot.
    #[arg(long)]
    pub allow_unencrypted: bool,
    /// Accept the manifest named by `--snapshot` without a MAC (written before
    /// manifests were signed). Never accepts an invalid MAC.
    #[arg(long, requires = "snapshot")]
    pub allow_unauthenticated: bool,
    /// Restore with `pg_restore -j N`: the decrypted archive is first spooled to a
    /// file in `--scratch-dir` (as large as the uncompressed dump) and verified
    /// whole; not one transaction (a failure can leave a partial database).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: Option<u32>,
    /// Directory of the `--jobs` spool file (default: `TMPDIR`, else /tmp).
    #[arg(long, requires = "jobs")]
    pub scratch_dir: Option<PathBuf>,
    /// Restore into an existing database whose encoding differs from the source's.
    #[arg(long)]
    pub allow_encoding_change: bool,
}

// Flags of `backup verify`.
#[derive(clap::Args, Debug)]
pub struct VerifyArgs {
    /// Snapshot id (default: newest).
    #[arg(long)]
    pub snapshot: Option<String>,
    /// Scratch database (default from config, else `palisade_restore_test`).
    #[arg(long)]
    pub scratch_database: Option<String>,
    /// Extra check `NAME=SQL` (repeatable); SQL must return true.
    #[arg(long)]
    pub check: Vec<String>,
    /// Skip the row-count comparison.
    #[arg(long)]
    pub no_row_counts: bool,
    /// Time limit, e.g. `30m` (default from config, else `1h`).
    #[arg(long)]
    pub timeout: Option<String>,
    /// Password file for `restoreTest.target` (default: the source password).
    #[arg(long)]
    pub target_password_file: Option<PathBuf>,
    /// Test a restore without owners and privileges (`backup restore --no-owner`). By
    /// default the test restores exactly as `backup restore` does by default.
    #[arg(long)]
    pub no_owner: bool,
    /// Test a `pg_restore -j N` restore (`backup restore --jobs N`): not one
    /// transaction, so it needs no lock slot per object.
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=64))]
    pub jobs: Option<u32>,
    /// Directory of the `--jobs` spool file (default: `TMPDIR`, else /tmp).
    #[arg(long, requires = "jobs")]
    pub scratch_dir: Option<PathBuf>,
    /// With a key configured, also test an unencrypted (but authenticated) snapshot.
    #[arg(long)]
    pub allow_unencrypted: bool,
    /// Accept the manifest named by `--snapshot` without a MAC (written before
    /// manifests were signed). Never accepts an invalid MAC.
    #[arg(long, requires = "snapshot")]
    pub allow_unauthenticated: bool,
}

// Flags of `backup prune`.
#[derive(clap::Args, Debug)]
pub struct PruneArgs {
    /// Keep the newest N.
    #[arg(long)]
    pub keep_last: Option<u32>,
    /// Keep one per day for N days.
    #[arg(long)]
    pub keep_daily: Option<u32>,
    /// Keep one per ISO week for N weeks.
    #[arg(long)]
    pub keep_weekly: Option<u32>,
    /// Keep one per month for N months.
    #[arg(long)]
    pub keep_monthly: Option<u32>,
    /// Delete older than this (e.g. `90d`).
    #[arg(long)]
    pub max_age: Option<String>,
    /// Only show what would be deleted.
    #[arg(long)]
    pub dry_run: bool,
    /// Prune without a key although the store's manifests are signed (every manifest,
    /// a forged one too, is then trusted).
    #[arg(long)]
    pub allow_unauthenticated: bool,
}

impl BackupCommand {
    fn op(&self) -> &'static str {
        match self {
            BackupCommand::Run(_) => "run",
            BackupCommand::Restore(_) => "restore",
            BackupCommand::Verify(_) => "verify",
            BackupCommand::List => "list",
            BackupCommand::Prune(_) => "prune",
        }
    }
}

/// Configuration problems.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// Bad or missing configuration.
    #[error("{0}")]
    Config(String),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

impl CliError {
    /// Short bounded reason.
    pub fn reason(&self) -> &'static str {
        match self {
            CliError::Config(_) => "InvalidConfig",
            CliError::Engine(e) => e.reason(),
        }
    }
}

impl From<StorageError> for CliError {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Config(msg) => CliError::Config(msg),
            e => CliError::Engine(e.into()),
        }
    }
}

impl From<SecretFileError> for CliError {
    fn from(e: SecretFileError) -> Self {
        CliError::Config(e.to_string())
    }
}

fn cfg(msg: impl Into<String>) -> CliError {
    CliError::Config(msg.into())
}

fn load_spec(path: &Path) -> Result<BackupScheduleSpec, CliError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| cfg(format!("cannot read {}: {e}", path.display())))?;
    // YAML is a superset of JSON.
    serde_yaml::from_str(&text).map_err(|e| cfg(format!("invalid config {}: {e}", path.display())))
}

struct Resolved {
    spec: Option<BackupScheduleSpec>,
    storage: Storage,
    keys: Vec<EncryptionKey>,
}

fn pg_conn(common: &CommonArgs, spec: Option<&BackupScheduleSpec>) -> Result<PgConn, CliError> {
    let src: Option<&PostgresSource> = spec.map(|s| &s.postgres);
    let host = common
        .host
        .clone()
        .or_else(|| src.map(|s| s.host.clone()))
        .ok_or_else(|| cfg("no PostgreSQL host: give --host or a config file"))?;
    let database = common
        .database
        .clone()
        .or_else(|| src.map(|s| s.database.clone()))
        .ok_or_else(|| cfg("no database: give --database or a config file"))?;
    let user = common
        .user
        .clone()
        .or_else(|| src.map(|s| s.user.clone()))
        .or_else(|| std::env::var("PGUSER").ok())
        .ok_or_else(|| cfg("no role: give --user or a config file"))?;
    let password = match &common.password_file {
        Some(p) => Some(secret_string(read_secret_file(p)?, "password")?),
        None => std::env::var("PGPASSWORD").ok(),
    };
    Ok(PgConn {
        host,
        port: common.port.or(src.map(|s| s.port)).unwrap_or(5432),
        database,
        user,
        password,
        ssl_mode: common
            .sslmode
            .map(SslMode::from)
            .or(src.map(|s| s.ssl_mode))
            .unwrap_or_default(),
        ssl_root_cert: common.ssl_root_cert.clone(),
    })
}

fn parse_key_arg(arg: &str) -> (Option<String>, PathBuf) {
    match arg.split_once('=') {
        Some((id, path)) if !id.is_empty() && !id.contains('/') => {
            (Some(id.to_string()), PathBuf::from(path))
        }
        _ => (None, PathBuf::from(arg)),
    }
}

fn keys(
    common: &CommonArgs,
    spec: Option<&BackupScheduleSpec>,
) -> Result<Vec<EncryptionKey>, CliError> {
    let default_id = common.key_id.clone().or_else(|| {
        spec.and_then(|s| s.encryption.as_ref())
            .and_then(|e| e.key_id.clone())
    });
    let mut out = Vec::new();
    for (i, arg) in common.key_file.iter().enumerate() {
        let (id, path) = parse_key_arg(arg);
        let id = id.or(if i == 0 { default_id.clone() } else { None });
        let material = read_secret_file(&path)?;
        out.push(EncryptionKey::new(material, id).map_err(|e| cfg(e.to_string()))?);
    }
    if out.is_empty()
        && let Ok(k) = std::env::var("PALISADE_BACKUP_KEY")
    {
        out.push(EncryptionKey::new(k.into_bytes(), default_id).map_err(|e| cfg(e.to_string()))?);
    }
    if out.is_empty() && spec.is_some_and(|s| s.encryption.is_some()) {
        return Err(cfg(
            "the config asks for encryption: give the key with --key-file or PALISADE_BACKUP_KEY",
        ));
    }
    Ok(out)
}

async fn resolve(common: &CommonArgs) -> Result<Resolved, CliError> {
    let spec = match &common.config {
        Some(p) => Some(load_spec(p)?),
        None => None,
    };
    let storage =
        destination::open(&common.destination, spec.as_ref().map(|s| &s.destination)).await?;
    let keys = keys(common, spec.as_ref())?;
    Ok(Resolved {
        spec,
        storage,
        keys,
    })
}

fn policy(
    spec: Option<&Retention>,
    flags: [Option<u32>; 4],
    max_age: Option<&str>,
) -> Result<Policy, CliError> {
    let base = spec.cloned().unwrap_or_default();
    let max_age = max_age.map(str::to_string).or(base.max_age);
    Ok(Policy {
        keep_last: flags[0].or(base.keep_last),
        keep_daily: flags[1].or(base.keep_daily),
        keep_weekly: flags[2].or(base.keep_weekly),
        keep_monthly: flags[3].or(base.keep_monthly),
        max_age: match max_age {
            Some(s) => Some(
                retention::parse_duration(&s)
                    .ok_or_else(|| cfg(format!("invalid maxAge {s:?}")))?,
            ),
            None => None,
        },
    })
}

/// Progress is drawn only for people: text output, no `--quiet`, and stderr on a
/// terminal (a Job's stderr is a log file, JSON output is for programs).
fn progress_wanted(output: OutputFormat, quiet: bool, stderr_is_terminal: bool) -> bool {
    output == OutputFormat::Text && !quiet && stderr_is_terminal
}

/// Which counter the progress line measures against `Progress::total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Paced {
    /// `run`: dump bytes against the estimate from the database size.
    Dumped,
    /// `restore`: stored bytes read against the snapshot's size.
    Read,
}

/// One progress line: bytes so far, rate, and (with a known total) percent and ETA.
/// The estimate of a run can be exceeded: percent stops at 99 and the ETA at 0 until
/// the run ends.
fn progress_line(paced: Paced, raw: u64, stored: u64, total: u64, elapsed: Duration) -> String {
    let secs = elapsed.as_secs_f64().max(0.001);
    let done = match paced {
        Paced::Dumped => raw,
        Paced::Read => stored,
    };
    let rate = done as f64 / secs;
    let eta = if total > 0 && rate > 0.0 {
        let pct = (100.0 * done as f64 / total as f64).min(99.0);
        let left = total.saturating_sub(done) as f64 / rate;
        let est = if paced == Paced::Dumped { "~" } else { "" };
        format!(" of {est}{}, {pct:.0}%, ETA {}", mib(total), clock(left))
    } else {
        String::new()
    };
    let verb = match paced {
        Paced::Dumped => "dumped",
        Paced::Read => "read",
    };
    format!(
        "{} {verb}{eta} at {}/s ({} raw, {} stored)",
        mib(done),
        mib(rate as u64),
        mib(raw),
        mib(stored)
    )
}

/// `m:ss` (or `h:mm:ss`).
fn clock(secs: f64) -> String {
    let s = secs.max(0.0).round() as u64;
    if s >= 3600 {
        format!("{}:{:02}:{:02}", s / 3600, s / 60 % 60, s % 60)
    } else {
        format!("{}:{:02}", s / 60, s % 60)
    }
}

fn spawn_progress(
    progress: Arc<Progress>,
    enabled: bool,
    paced: Paced,
) -> Option<tokio::task::JoinHandle<()>> {
    if !enabled {
        return None;
    }
    Some(tokio::spawn(async move {
        let t0 = std::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let line = progress_line(
                paced,
                progress.raw.load(Ordering::Relaxed),
                progress.stored.load(Ordering::Relaxed),
                progress.total.load(Ordering::Relaxed),
                t0.elapsed(),
            );
            // Erase to the end of the line: the new text can be shorter.
            eprint!("\r  {line}\x1b[K");
        }
    }))
}

fn mib(b: u64) -> String {
    format!("{:.1} MiB", b as f64 / 1048576.0)
}

fn check_json(c: &CheckResult) -> Value {
    let mut v = json!({"name": pg::bounded(&c.name, 64), "passed": c.passed});
    if let Some(m) = &c.message {
        v["message"] = json!(pg::bounded(m, 200));
    }
    v
}

/// Serializes compactly and enforces [`MAX_JSON_RESULT`] by shedding list items.
pub fn compact_json(v: Value) -> String {
    compact_json_within(v, MAX_JSON_RESULT)
}

/// Room left for `run`, `macKeyId` and `mac` in a signed result.
const SIGNATURE_ROOM: usize = 256;

/// The result line: `run` (the Job's name, when known) added, compacted, and signed with
/// `signer` (the first configured key) so that the controller can authenticate it.
fn result_line(run: Option<&str>, mut v: Value, signer: Option<&EncryptionKey>) -> String {
    if let Some(run) = run {
        v["run"] = json!(pg::bounded(run, 63));
    }
    match signer {
        Some(key) => super::result::sign_line(
            &compact_json_within(v, MAX_JSON_RESULT - SIGNATURE_ROOM),
            key,
        ),
        None => compact_json(v),
    }
}

fn compact_json_within(mut v: Value, limit: usize) -> String {
    for _ in 0..100_000 {
        let s = v.to_string();
        if s.len() <= limit {
            return s;
        }
        // Drop passed checks first, then anything from the longest list.
        let mut shed = false;
        for field in ["checks", "deleted", "snapshots", "rejected"] {
            if let Some(list) = v.get_mut(field).and_then(Value::as_array_mut)
                && !list.is_empty()
            {
                let idx = list
                    .iter()
                    .position(|c| c.get("passed") == Some(&Value::Bool(true)))
                    .unwrap_or(list.len() - 1);
                list.remove(idx);
                let key = format!("{field}Omitted");
                let n = v.get(&key).and_then(Value::as_u64).unwrap_or(0) + 1;
                v[key] = json!(n);
                shed = true;
                break;
            }
        }
        if !shed {
            if let Some(e) = v.get("error").and_then(Value::as_str) {
                v["error"] = json!(pg::bounded(e, 500));
            }
            return v.to_string();
        }
    }
    v.to_string()
}

fn emit(
    common: &CommonArgs,
    signer: Option<&EncryptionKey>,
    json_value: Value,
    text: impl FnOnce() -> String,
) {
    let line = result_line(common.run_name.as_deref(), json_value, signer);
    write_termination_log(common.termination_log.as_deref(), &line);
    match common.output {
        OutputFormat::Json => println!("{line}"),
        OutputFormat::Text => println!("{}", text()),
    }
}

/// Best effort: a missing termination log must not fail the run itself.
fn write_termination_log(path: Option<&Path>, line: &str) {
    if let Some(p) = path
        && let Err(e) = std::fs::write(p, line)
    {
        eprintln!("cannot write termination log {}: {e}", p.display());
    }
}

/// Entry point of `palisade backup …`.
pub async fn run(args: BackupArgs) -> anyhow::Result<ExitCode> {
    let op = args.command.op();
    let output = args.common.output;
    let termination_log = args.common.termination_log.clone();
    let run_name = args.common.run_name.clone();
    match execute_until_signal(args).await {
        Ok(code) => Ok(code),
        Err(e) => {
            let code = match e {
                CliError::Config(_) | CliError::Engine(EngineError::Invalid(_)) => 2,
                CliError::Engine(EngineError::Interrupted("SIGTERM")) => 143,
                CliError::Engine(EngineError::Interrupted(_)) => 130,
                CliError::Engine(_) => 1,
            };
            // Unsigned: the keys may be what failed. The controller shows an
            // unauthenticated failure but never counts one as a success.
            let line = result_line(
                run_name.as_deref(),
                json!({
                    "op": op, "ok": false, "reason": e.reason(),
                    "error": pg::bounded(&e.to_string(), 1500),
                }),
                None,
            );
            write_termination_log(termination_log.as_deref(), &line);
            match output {
                OutputFormat::Json => println!("{line}"),
                OutputFormat::Text => eprintln!("backup {op} failed ({}): {e}", e.reason()),
            }
            Ok(ExitCode::from(code))
        }
    }
}

/// Waits for SIGTERM or SIGINT (a Job deadline, `concurrencyPolicy: Replace`, an
/// eviction, Ctrl-C). Never returns when the handlers cannot be installed.
async fn interrupted() -> &'static str {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => std::future::pending().await,
    }
}

/// Runs the command; on SIGTERM/SIGINT drops it (which kills pg_dump / pg_restore and
/// stops every stage), then aborts the multipart upload or removes the `.partial` file
/// and any object stored without its manifest.
async fn execute_until_signal(args: BackupArgs) -> Result<ExitCode, CliError> {
    let signal = interrupted();
    tokio::pin!(signal);
    let r = resolve(&args.common).await?;
    enum Outcome {
        Done(Result<ExitCode, CliError>),
        Signal(&'static str),
    }
    let outcome = {
        let work = execute(args, &r);
        tokio::pin!(work);
        tokio::select! {
            res = &mut work => Outcome::Done(res),
            sig = &mut signal => Outcome::Signal(sig),
        }
    };
    match outcome {
        Outcome::Done(res) => res,
        Outcome::Signal(sig) => {
            for removed in r.storage.cleanup_interrupted().await {
                tracing::info!(%removed, "removed after {sig}");
            }
            Err(EngineError::Interrupted(sig).into())
        }
    }
}

/// One subcommand on the resolved configuration: build its options (flags over the
/// config file), run it, report the result.
async fn execute(args: BackupArgs, r: &Resolved) -> Result<ExitCode, CliError> {
    let common = &args.common;
    let show_progress =
        progress_wanted(common.output, common.quiet, std::io::stderr().is_terminal());
    match args.command {
        BackupCommand::Run(a) => run_snapshot(common, r, a, show_progress).await,
        BackupCommand::Restore(a) => restore_snapshot(common, r, a, show_progress).await,
        BackupCommand::Verify(a) => verify_snapshot(common, r, a).await,
        BackupCommand::List => list_snapshots(common, r).await,
        BackupCommand::Prune(a) => prune_snapshots(common, r, a).await,
    }
}

/// Runs `work` with a progress line on stderr when `enabled`.
async fn with_progress<T, Fut>(
    enabled: bool,
    paced: Paced,
    work: impl FnOnce(Arc<Progress>) -> Fut,
) -> T
where
    Fut: std::future::Future<Output = T>,
{
    let progress = Arc::new(Progress::default());
    let ticker = spawn_progress(progress.clone(), enabled, paced);
    let result = work(progress).await;
    if let Some(t) = ticker {
        t.abort();
        eprintln!();
    }
    result
}

/// `backup run`: options → snapshot → (retention) → result.
async fn run_snapshot(
    common: &CommonArgs,
    r: &Resolved,
    a: RunArgs,
    show_progress: bool,
) -> Result<ExitCode, CliError> {
    let spec = r.spec.as_ref();
    let opts = run_options(common, r, &a)?;
    let rep = with_progress(show_progress, Paced::Dumped, |p| {
        engine::run(&r.storage, &opts, p)
    })
    .await?;
    let mut out = run_json(&rep, common.profile);
    if a.prune {
        prune_after_run(&r.storage, &r.keys, spec, &rep.manifest.id, &mut out).await;
    }
    emit(common, r.keys.first(), out, || run_text(&rep));
    Ok(ExitCode::SUCCESS)
}

fn run_options(common: &CommonArgs, r: &Resolved, a: &RunArgs) -> Result<RunOptions, CliError> {
    let spec = r.spec.as_ref();
    let level = a
        .compression_level
        .or(spec.map(|s| s.compression.level))
        .unwrap_or(3);
    if !(1..=19).contains(&level) {
        return Err(cfg("compression level must be 1-19"));
    }
    Ok(RunOptions {
        pg: pg_conn(common, spec)?,
        pg_bin: common.pg_bin.clone(),
        compression_level: level,
        compression_threads: a.compression_threads.unwrap_or_else(|| {
            let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
            super::budget::default_compression_threads(level, cpus)
        }),
        key: if a.no_encryption {
            None
        } else {
            r.keys.first().cloned()
        },
        mac_key: r.keys.first().cloned(),
        chunk_size: format::DEFAULT_CHUNK_SIZE,
        id: a.id.clone(),
    })
}

fn run_json(rep: &engine::RunReport, profile: bool) -> Value {
    let m = &rep.manifest;
    let mut out = json!({
        "op": "run", "ok": true, "id": m.id, "key": pg::bounded(&rep.key, 512),
        "time": m.finished_at, "bytes": m.stored_bytes, "rawBytes": m.raw_bytes,
        "sha256": m.sha256, "durationSeconds": round2(rep.duration.as_secs_f64()),
        "encrypted": m.encryption.is_encrypted(), "keyId": m.encryption.key_id,
        "tables": m.row_counts.len(), "rows": m.total_rows(),
        "alreadyExisted": rep.already_existed,
    });
    if profile {
        out["profile"] = json!(rep.profile);
    }
    out
}

fn run_text(rep: &engine::RunReport) -> String {
    let m = &rep.manifest;
    format!(
        "snapshot {} stored at {} ({} raw → {} stored, {} tables, {} rows, {}) in {:.1}s{}",
        m.id,
        rep.key,
        mib(m.raw_bytes),
        mib(m.stored_bytes),
        m.row_counts.len(),
        m.total_rows(),
        m.encryption
            .key_id
            .as_deref()
            .map_or("unencrypted".to_string(), |k| format!(
                "encrypted with key {k}"
            )),
        rep.duration.as_secs_f64(),
        if rep.already_existed {
            " (already existed)"
        } else {
            ""
        }
    )
}

/// `backup restore`: target (flags over the source connection) → restore → result.
async fn restore_snapshot(
    common: &CommonArgs,
    r: &Resolved,
    a: RestoreArgs,
    show_progress: bool,
) -> Result<ExitCode, CliError> {
    let mut target = pg_conn(common, r.spec.as_ref())?;
    if let Some(d) = a.target_database {
        target.database = d;
    }
    if let Some(h) = a.target_host {
        target.host = h;
    }
    if let Some(p) = a.target_port {
        target.port = p;
    }
    if let Some(u) = a.target_user {
        target.user = u;
    }
    if let Some(p) = a.target_password_file {
        target.password = Some(secret_string(read_secret_file(&p)?, "password")?);
    }
    let opts = RestoreOptions {
        target,
        pg_bin: common.pg_bin.clone(),
        keys: r.keys.clone(),
        snapshot: a.snapshot,
        force: a.force,
        create: a.create,
        no_owner: a.no_owner,
        allow_unencrypted: a.allow_unencrypted,
        allow_unauthenticated: a.allow_unauthenticated,
        jobs: a.jobs,
        scratch_dir: a.scratch_dir,
        allow_encoding_change: a.allow_encoding_change,
    };
    let rep = with_progress(show_progress, Paced::Read, |p| {
        engine::restore(&r.storage, &opts, p)
    })
    .await?;
    let mut out = json!({
        "op": "restore", "ok": true, "snapshot": rep.manifest.id,
        "database": opts.target.database, "bytes": rep.manifest.stored_bytes,
        "durationSeconds": round2(rep.duration.as_secs_f64()),
    });
    if common.profile {
        out["profile"] = json!(rep.profile);
    }
    emit(common, r.keys.first(), out, || {
        format!(
            "restored snapshot {} into {} in {:.1}s",
            rep.manifest.id,
            opts.target.target(),
            rep.duration.as_secs_f64()
        )
    });
    Ok(ExitCode::SUCCESS)
}

/// `backup verify`: options (flags over `restoreTest`) → restore test → result; exit
/// code 1 when the test failed.
async fn verify_snapshot(
    common: &CommonArgs,
    r: &Resolved,
    a: VerifyArgs,
) -> Result<ExitCode, CliError> {
    let opts = verify_options(common, r, a)?;
    let rep = verify::verify(&r.storage, &opts).await?;
    let rec = &rep.record;
    emit(
        common,
        r.keys.first(),
        json!({
            "op": "verify", "ok": rec.passed, "snapshot": rec.snapshot, "time": rec.time,
            "result": if rec.passed { "Passed" } else { "Failed" },
            "durationSeconds": round2(rec.duration_seconds),
            "checks": rec.checks.iter().map(check_json).collect::<Vec<_>>(),
        }),
        || verify_text(&rep),
    );
    Ok(if rec.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn verify_options(
    common: &CommonArgs,
    r: &Resolved,
    a: VerifyArgs,
) -> Result<VerifyOptions, CliError> {
    let spec = r.spec.as_ref();
    let rt = spec.and_then(|s| s.restore_test.as_ref());
    let mut server = pg_conn(common, spec)?;
    if let Some(t) = rt.and_then(|t| t.target.as_ref()) {
        server.host = t.host.clone();
        server.port = t.port;
        server.user = t.user.clone();
        server.ssl_mode = t.ssl_mode;
    }
    if let Some(p) = &a.target_password_file {
        server.password = Some(secret_string(read_secret_file(p)?, "password")?);
    }
    server.database = "postgres".into();
    let mut checks: Vec<SqlCheck> = rt.map(|t| t.checks.clone()).unwrap_or_default();
    for c in a.check {
        let (name, sql) = c
            .split_once('=')
            .ok_or_else(|| cfg(format!("--check needs NAME=SQL, got {c:?}")))?;
        checks.push(SqlCheck {
            name: name.trim().to_string(),
            sql: sql.to_string(),
        });
    }
    let timeout_s = a
        .timeout
        .or(rt.map(|t| t.timeout.clone()))
        .unwrap_or_else(|| "1h".into());
    Ok(VerifyOptions {
        server,
        scratch_database: a
            .scratch_database
            .or(rt.map(|t| t.scratch_database.clone()))
            .unwrap_or_else(|| "palisade_restore_test".into()),
        checks,
        no_owner: a.no_owner,
        jobs: a.jobs,
        scratch_dir: a.scratch_dir,
        compare_row_counts: !a.no_row_counts && rt.is_none_or(|t| t.compare_row_counts),
        timeout: retention::parse_duration(&timeout_s)
            .ok_or_else(|| cfg(format!("invalid timeout {timeout_s:?}")))?,
        keys: r.keys.clone(),
        pg_bin: common.pg_bin.clone(),
        snapshot: a.snapshot,
        allow_unencrypted: a.allow_unencrypted,
        allow_unauthenticated: a.allow_unauthenticated,
    })
}

fn verify_text(rep: &verify::VerifyReport) -> String {
    let rec = &rep.record;
    let mut s = format!(
        "restore test of {}: {} in {:.1}s (record: {})",
        rec.snapshot,
        if rec.passed { "PASSED" } else { "FAILED" },
        rec.duration_seconds,
        rep.location
    );
    for c in &rec.checks {
        s.push_str(&format!(
            "\n  {} {}{}",
            if c.passed { "ok  " } else { "FAIL" },
            c.name,
            c.message
                .as_deref()
                .map(|m| format!(": {m}"))
                .unwrap_or_default()
        ));
    }
    s
}

/// `backup list`.
async fn list_snapshots(common: &CommonArgs, r: &Resolved) -> Result<ExitCode, CliError> {
    let listing = catalog::list(&r.storage, &r.keys).await?;
    let rows: Vec<Value> = listing
        .entries
        .iter()
        .map(|e| {
            let mut row = json!({
                "id": e.manifest.id, "time": e.manifest.started_at,
                "bytes": e.manifest.stored_bytes,
                "encrypted": e.manifest.encryption.is_encrypted(),
                "verified": verified_state(e),
            });
            if e.future_dated {
                row["futureDated"] = json!(true);
            }
            row
        })
        .collect();
    emit(
        common,
        r.keys.first(),
        json!({"op": "list", "ok": true, "snapshots": rows,
               "rejected": rejected_json(&listing.rejected)}),
        || list_text(&listing),
    );
    Ok(ExitCode::SUCCESS)
}

fn list_text(listing: &catalog::Listing) -> String {
    let mut s = format!(
        "{:<28} {:<25} {:>12} {:<10} VERIFIED",
        "ID", "TIME", "BYTES", "ENCRYPTED"
    );
    for e in &listing.entries {
        s.push_str(&format!(
            "\n{:<28} {:<25} {:>12} {:<10} {}",
            e.manifest.id,
            e.manifest.started_at.format("%Y-%m-%dT%H:%M:%SZ"),
            e.manifest.stored_bytes,
            if e.manifest.encryption.is_encrypted() {
                "yes"
            } else {
                "no"
            },
            verified_state(e)
        ));
        if e.future_dated {
            s.push_str("  FUTURE-DATED (wrong clock? never taken as newest)");
        }
    }
    s.push_str(&rejected_text(&listing.rejected));
    s
}

/// `backup prune`: policy (flags over `retention`) → prune → result.
async fn prune_snapshots(
    common: &CommonArgs,
    r: &Resolved,
    a: PruneArgs,
) -> Result<ExitCode, CliError> {
    let policy = policy(
        r.spec.as_ref().map(|s| &s.retention),
        [a.keep_last, a.keep_daily, a.keep_weekly, a.keep_monthly],
        a.max_age.as_deref(),
    )?;
    let opts = catalog::PruneOptions {
        dry_run: a.dry_run,
        allow_unauthenticated: a.allow_unauthenticated,
        ..catalog::PruneOptions::at(chrono::Utc::now())
    };
    let rep = catalog::prune(&r.storage, &r.keys, &policy, &opts).await?;
    let deleted: Vec<&str> = rep
        .decisions
        .iter()
        .filter(|d| !d.keep)
        .map(|d| d.id.as_str())
        .collect();
    let mut out = json!({
        "op": "prune", "ok": true, "dryRun": rep.dry_run,
        "kept": rep.decisions.len() - deleted.len(),
        "deletedCount": deleted.len(), "deleted": deleted,
        "rejected": rejected_json(&rep.rejected),
        "staleRemoved": rep.stale_removed.len(),
    });
    let hint = other_key_hint(&rep.rejected, &r.keys);
    if let Some(h) = &hint {
        out["hint"] = json!(h);
    }
    emit(common, r.keys.first(), out, || {
        let mut text = prune_text(&rep, deleted.len());
        if let Some(h) = &hint {
            text.push_str(&format!("\nhint: {h}"));
        }
        text
    });
    Ok(ExitCode::SUCCESS)
}

fn prune_text(rep: &catalog::PruneReport, deleted: usize) -> String {
    let mut s = String::new();
    for d in &rep.decisions {
        s.push_str(&format!(
            "{} {} ({})\n",
            if d.keep {
                "keep  "
            } else if rep.dry_run {
                "would delete"
            } else {
                "delete"
            },
            d.id,
            d.reasons.join(", ")
        ));
    }
    s.push_str(&format!(
        "{} kept, {} {}",
        rep.decisions.len() - deleted,
        deleted,
        if rep.dry_run {
            "would be deleted (dry run)"
        } else {
            "deleted"
        }
    ));
    s.push_str(&rejected_text(&rep.rejected));
    s
}

/// `backup run --prune`: retention after a successful snapshot, which always keeps the
/// snapshot `written` (whatever other snapshots' clocks say). A failed prune is
/// reported in the result (`pruned.error`) but does not fail the snapshot.
async fn prune_after_run(
    storage: &Storage,
    keys: &[EncryptionKey],
    spec: Option<&BackupScheduleSpec>,
    written: &str,
    out: &mut Value,
) {
    let opts = catalog::PruneOptions {
        protect: vec![written.to_string()],
        ..catalog::PruneOptions::at(chrono::Utc::now())
    };
    let pruned = match policy(spec.map(|s| &s.retention), [None; 4], None) {
        Err(e) => json!({"error": pg::bounded(&e.to_string(), 300)}),
        Ok(policy) => match catalog::prune(storage, keys, &policy, &opts).await {
            Ok(rep) => {
                let deleted = rep.decisions.iter().filter(|d| !d.keep).count();
                json!({"kept": rep.decisions.len() - deleted, "deletedCount": deleted})
            }
            Err(e) => json!({"error": pg::bounded(&e.to_string(), 300)}),
        },
    };
    out["pruned"] = pruned;
    if let Ok(listing) = catalog::list(storage, keys).await {
        out["snapshotCount"] = json!(listing.entries.len());
        out["totalBytes"] = json!(
            listing
                .entries
                .iter()
                .fold(0u64, |acc, e| acc.saturating_add(e.manifest.stored_bytes))
        );
    }
}

/// After a key rotation, snapshots signed with an old key are rejected and so never
/// pruned: says which key ids they need.
fn other_key_hint(rejected: &[catalog::Rejected], keys: &[EncryptionKey]) -> Option<String> {
    let mut ids: Vec<&str> = rejected
        .iter()
        .filter(|r| r.reason == "Unauthenticated" && r.name.ends_with(".manifest.json"))
        .filter_map(|r| r.mac_key_id.as_deref())
        .filter(|id| !keys.iter().any(|k| k.id() == *id))
        .collect();
    let n = ids.len();
    ids.sort_unstable();
    ids.dedup();
    let first = ids.first()?;
    let ids: Vec<String> = ids
        .iter()
        .map(|i| format!("{:?}", pg::bounded(i, 64)))
        .collect();
    Some(format!(
        "{n} snapshot(s) signed with key(s) {} are neither counted nor pruned without that key: give it too (--key-file {}=PATH)",
        ids.join(", "),
        pg::bounded(first, 64)
    ))
}

/// Rejected objects for JSON results (bounded: at most 20, names and messages cut).
fn rejected_json(rejected: &[catalog::Rejected]) -> Value {
    Value::Array(
        rejected
            .iter()
            .take(20)
            .map(|r| {
                json!({"name": pg::bounded(&r.name, 140), "reason": r.reason,
                       "message": pg::bounded(&r.message, 200)})
            })
            .collect(),
    )
}

fn rejected_text(rejected: &[catalog::Rejected]) -> String {
    let mut s = String::new();
    for r in rejected {
        s.push_str(&format!(
            "\nIGNORED {} ({}): {}",
            pg::bounded(&r.name, 140),
            r.reason,
            pg::bounded(&r.message, 300)
        ));
    }
    s
}

fn verified_state(e: &catalog::Entry) -> &'static str {
    match &e.verification {
        Some(v) if v.passed => "passed",
        Some(_) => "failed",
        None => "never",
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_results_stay_small() {
        let checks: Vec<Value> = (0..200)
            .map(|i| json!({"name": format!("check-{i}"), "passed": i % 3 != 0, "message": "x".repeat(150)}))
            .collect();
        let s = compact_json(json!({"op": "verify", "ok": false, "checks": checks}));
        assert!(s.len() <= MAX_JSON_RESULT, "{}", s.len());
        let v: Value = serde_json::from_str(&s).expect("valid json");
        assert!(v["checksOmitted"].as_u64().expect("omitted") > 0);
        // Failed checks are kept in preference to passed ones.
        assert!(
            v["checks"]
                .as_array()
                .expect("checks")
                .iter()
                .all(|c| c["passed"] == false)
        );
    }

    #[test]
    fn key_args() {
        assert_eq!(
            parse_key_arg("v2=/keys/k"),
            (Some("v2".into()), PathBuf::from("/keys/k"))
        );
        assert_eq!(parse_key_arg("/a=b/k"), (None, PathBuf::from("/a=b/k")));
    }

    #[test]
    fn progress_only_for_text_on_a_terminal() {
        assert!(progress_wanted(OutputFormat::Text, false, true));
        // A Job's stderr is a log file, not a terminal.
        assert!(!progress_wanted(OutputFormat::Text, false, false));
        assert!(!progress_wanted(OutputFormat::Json, false, true));
        assert!(!progress_wanted(OutputFormat::Text, true, true));
    }

    #[test]
    fn progress_line_rate_percent_and_eta() {
        const M: u64 = 1 << 20;
        // run: 300 MiB dumped of ~1000 MiB in 10 s -> 30 MiB/s, 700 MiB left -> 23 s.
        assert_eq!(
            progress_line(
                Paced::Dumped,
                300 * M,
                50 * M,
                1000 * M,
                Duration::from_secs(10)
            ),
            "300.0 MiB dumped of ~1000.0 MiB, 30%, ETA 0:23 at 30.0 MiB/s \
             (300.0 MiB raw, 50.0 MiB stored)"
        );
        // restore paces on the stored bytes read; an hour and more shows hours.
        assert_eq!(
            progress_line(Paced::Read, 0, M, 10_000 * M, Duration::from_secs(1)),
            "1.0 MiB read of 10000.0 MiB, 0%, ETA 2:46:39 at 1.0 MiB/s \
             (0.0 MiB raw, 1.0 MiB stored)"
        );
        // The estimate was too low: never 100 % or a negative ETA before the end.
        assert_eq!(
            progress_line(
                Paced::Dumped,
                1200 * M,
                0,
                1000 * M,
                Duration::from_secs(12)
            ),
            "1200.0 MiB dumped of ~1000.0 MiB, 99%, ETA 0:00 at 100.0 MiB/s \
             (1200.0 MiB raw, 0.0 MiB stored)"
        );
        // Unknown total, or nothing yet: no percent, no ETA.
        assert_eq!(
            progress_line(Paced::Dumped, 5 * M, 0, 0, Duration::from_secs(1)),
            "5.0 MiB dumped at 5.0 MiB/s (5.0 MiB raw, 0.0 MiB stored)"
        );
        assert_eq!(
            progress_line(Paced::Read, 0, 0, 8 * M, Duration::ZERO),
            "0.0 MiB read at 0.0 MiB/s (0.0 MiB raw, 0.0 MiB stored)"
        );
    }
}
