//! `BackupSchedule`: nightly PostgreSQL snapshots with periodic, automated restore tests.
//!
//! The snapshot engine's configuration file (`palisade backup run --config FILE`) has
//! exactly the shape of [`BackupScheduleSpec`], so the same YAML works in a cluster and
//! on a single VM.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Desired state of a BackupSchedule: what to dump, where to store it, how to protect
/// it, how long to keep it and how to prove that it restores.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    shortname = "bs",
    status = "BackupScheduleStatus",
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Last Backup","type":"date","jsonPath":".status.lastSuccessfulBackup.time"}"#,
    printcolumn = r#"{"name":"Last Restore Test","type":"string","jsonPath":".status.lastRestoreTest.result"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// When to take a snapshot, in cron syntax (five fields, e.g. `0 2 * * *` for 02:00
    /// every night), evaluated in `timeZone`. Ignored by the standalone CLI.
    #[serde(default = "default_schedule")]
    pub schedule: String,
    /// IANA time zone name the schedules are evaluated in (e.g. `Europe/Berlin`).
    /// Default: UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,
    /// When true, no new backup or restore-test runs are started; snapshots already
    /// taken are kept and retention still applies. Default: false.
    #[serde(default)]
    pub suspend: bool,
    /// What to do when a run is due while the previous one is still running:
    /// `Forbid` (skip the new run), `Allow` (run both) or `Replace` (stop the old one).
    /// Default: Forbid.
    #[serde(default)]
    pub concurrency_policy: ConcurrencyPolicy,
    /// How many seconds after its scheduled time a missed run may still start; a run
    /// that would start later is skipped and counted as missed. Default: no deadline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub starting_deadline_seconds: Option<i64>,
    /// The PostgreSQL database to snapshot.
    pub postgres: PostgresSource,
    /// Where snapshots and their manifests are stored: exactly one of `s3`,
    /// `persistentVolumeClaim` or `path`.
    pub destination: Destination,
    /// Client-side encryption of every snapshot (AES-256-GCM, authenticated chunks).
    /// When absent, snapshots are stored unencrypted and their manifests say so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub encryption: Option<Encryption>,
    /// Compression applied to the dump before encryption. Default: zstd level 3.
    #[serde(default)]
    pub compression: Compression,
    /// Which snapshots to keep. The newest snapshot that passed a restore test is never
    /// deleted. Default: keep everything.
    #[serde(default)]
    pub retention: Retention,
    /// Periodic restore test of the newest snapshot into a scratch database.
    /// When absent, no restore tests run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub restore_test: Option<RestoreTest>,
    /// How many finished successful run Jobs (per kind: backup, restore test) to keep.
    /// Default: 3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub successful_jobs_history_limit: Option<u32>,
    /// How many finished failed run Jobs (per kind: backup, restore test) to keep.
    /// Default: 1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub failed_jobs_history_limit: Option<u32>,
    /// Settings of the Jobs that run backups and restore tests. Ignored by the
    /// standalone CLI.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_template: Option<BackupJobTemplate>,
}

/// Settings of the run Jobs. The image and the ServiceAccount are not among them:
/// they come from the operator's configuration only (`--job-image`; the
/// namespace's `default` ServiceAccount, no token), so whoever edits a schedule
/// cannot choose the code that reads its Secrets.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupJobTemplate {
    /// Removed in issue #15: the run image is the operator's `--job-image` only.
    /// Not in the schema (the API server prunes it from stored objects); read only
    /// so that a configuration that still carries it is refused by name.
    #[serde(default, rename = "image", skip_serializing)]
    #[schemars(skip)]
    pub removed_image: Option<serde_json::Value>,
    /// Removed in issue #15: run pods use the namespace's `default`
    /// ServiceAccount without a token. Not in the schema, as `image`.
    #[serde(default, rename = "serviceAccountName", skip_serializing)]
    #[schemars(skip)]
    pub removed_service_account_name: Option<serde_json::Value>,
    /// Resource requests and limits of the run container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<k8s_openapi::api::core::v1::ResourceRequirements>,
    /// Node selector of the run pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<std::collections::BTreeMap<String, String>>,
    /// Tolerations of the run pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<k8s_openapi::api::core::v1::Toleration>>,
    /// Retries of a failed run pod. Default: 0 (a failed run is reported, the next
    /// scheduled run tries again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub backoff_limit: Option<i32>,
    /// Upper bound in seconds for a whole run. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1))]
    pub active_deadline_seconds: Option<i64>,
}

impl BackupScheduleSpec {
    /// Fields that are no longer part of the API but still present in this spec
    /// (an object stored before the schema dropped them, a configuration file),
    /// by their field path.
    pub fn removed_fields(&self) -> Vec<&'static str> {
        let mut out = Vec::new();
        if let Some(t) = &self.job_template {
            if t.removed_image.is_some() {
                out.push("spec.jobTemplate.image");
            }
            if t.removed_service_account_name.is_some() {
                out.push("spec.jobTemplate.serviceAccountName");
            }
        }
        out
    }
}

fn default_schedule() -> String {
    "0 2 * * *".to_string()
}

/// What to do with a run that is due while the previous one still runs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ConcurrencyPolicy {
    /// Run both.
    Allow,
    /// Skip the new run.
    #[default]
    Forbid,
    /// Stop the running one and start the new one.
    Replace,
}

/// Connection to a PostgreSQL server and database.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PostgresSource {
    /// Host name or IP address of the server (a Service name in the cluster).
    pub host: String,
    /// TCP port of the server. Default: 5432.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Name of the database to snapshot.
    pub database: String,
    /// Role to connect as; it must be able to read every table (e.g. `pg_read_all_data`).
    pub user: String,
    /// Secret (in the schedule's namespace) and key holding the role's password.
    /// Default: no password (trust or peer authentication).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// libpq `sslmode` for every connection: `disable`, `allow`, `prefer`, `require`,
    /// `verify-ca` or `verify-full`. Default: prefer.
    #[serde(default)]
    pub ssl_mode: SslMode,
    /// Secret (in the schedule's namespace) and key holding the PEM CA certificate the
    /// server's certificate must chain to. Needed for `verify-ca` and `verify-full`;
    /// with `require` it turns verification on (as libpq's `sslrootcert`). Also used
    /// for `restoreTest.target`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_secret_ref: Option<SecretKeyRef>,
}

fn default_pg_port() -> u16 {
    5432
}

/// libpq `sslmode`.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "kebab-case")]
pub enum SslMode {
    /// Never use TLS.
    Disable,
    /// Try without TLS first, then with TLS.
    Allow,
    /// Try TLS first, fall back to plain TCP.
    #[default]
    Prefer,
    /// Require TLS without checking the certificate.
    Require,
    /// Require TLS and a certificate signed by a trusted CA.
    VerifyCa,
    /// Require TLS, a trusted certificate and a matching host name.
    VerifyFull,
}

impl SslMode {
    /// The libpq spelling (`PGSSLMODE`).
    pub fn as_libpq(self) -> &'static str {
        match self {
            SslMode::Disable => "disable",
            SslMode::Allow => "allow",
            SslMode::Prefer => "prefer",
            SslMode::Require => "require",
            SslMode::VerifyCa => "verify-ca",
            SslMode::VerifyFull => "verify-full",
        }
    }
}

/// A reference to one key of a Secret in the same namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Name of the Secret.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Key inside the Secret's data.
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

/// Where snapshots are stored. Exactly one of `s3`, `persistentVolumeClaim`, `path`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "[has(self.s3), has(self.persistentVolumeClaim), has(self.path)].filter(x, x).size() == 1"
).message("exactly one of s3, persistentVolumeClaim or path must be set"))]
pub struct Destination {
    /// An S3 (or S3-compatible) bucket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3: Option<S3Destination>,
    /// A PersistentVolumeClaim in the schedule's namespace, mounted into the backup Job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistent_volume_claim: Option<PvcDestination>,
    /// A directory on the local filesystem (standalone CLI, or a volume already mounted
    /// into the Job). Snapshots go directly into this directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// An S3 bucket and prefix.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new(
    "!has(self.kmsKeyId) || (has(self.serverSideEncryption) && self.serverSideEncryption == 'aws:kms')"
).message("kmsKeyId is only allowed with serverSideEncryption: aws:kms"))]
pub struct S3Destination {
    /// Bucket name. The bucket must exist.
    pub bucket: String,
    /// Key prefix for snapshots, e.g. `prod/orders/` (a trailing `/` is added when
    /// missing). Default: the bucket root.
    #[serde(default)]
    pub prefix: String,
    /// AWS region (e.g. `eu-central-1`). Default: from the environment, else `us-east-1`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Endpoint URL of an S3-compatible service (MinIO, Ceph, …). Default: AWS.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Address buckets as `endpoint/bucket` instead of `bucket.endpoint`; most
    /// S3-compatible services need this. Default: false.
    #[serde(default)]
    pub force_path_style: bool,
    /// Secret holding static credentials. Default: the ambient AWS credential chain
    /// (environment, web identity / IRSA, instance profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<S3CredentialsSecretRef>,
    /// Server-side encryption requested for every object: `AES256` (SSE-S3) or
    /// `aws:kms` (SSE-KMS). Default: the bucket's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_side_encryption: Option<ServerSideEncryption>,
    /// KMS key id or ARN for `aws:kms`. Default: the account's `aws/s3` key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kms_key_id: Option<String>,
    /// Size in MiB of the first 1,000 multipart upload parts; later parts grow by
    /// 256 KiB each, so 10,000 parts hold more than 10 TB. Memory is about
    /// `partSizeMiB × (concurrency + 2)` (at most 1.1 GiB) while parts are that size;
    /// afterwards bytes in flight stay within `partSizeMiB × concurrency` (one part at
    /// least), plus two parts being assembled (≈ 7 GiB at 10 TB). Default: 8.
    #[serde(default = "default_part_size_mib")]
    #[schemars(range(min = 5, max = 64))]
    pub part_size_mib: u32,
    /// How many parts are uploaded in parallel. Default: 4.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 16))]
    pub concurrency: u32,
}

fn default_part_size_mib() -> u32 {
    8
}

fn default_concurrency() -> u32 {
    4
}

/// Keys of a Secret holding static S3 credentials.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct S3CredentialsSecretRef {
    /// Name of the Secret.
    pub name: String,
    /// Key holding the access key id. Default: `AWS_ACCESS_KEY_ID`.
    #[serde(default = "default_access_key_id_key")]
    pub access_key_id_key: String,
    /// Key holding the secret access key. Default: `AWS_SECRET_ACCESS_KEY`.
    #[serde(default = "default_secret_access_key_key")]
    pub secret_access_key_key: String,
    /// Key holding a session token, for temporary credentials. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_token_key: Option<String>,
}

/// The one naming of static S3 credentials, the AWS environment variable names:
/// the default keys of `credentialsSecretRef`, the files a backup Job mounts and
/// the files `palisade backup --s3-credentials-dir` reads, so one Secret serves
/// the controller and the CLI alike.
pub const S3_ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
/// See [`S3_ACCESS_KEY_ID`].
pub const S3_SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
/// See [`S3_ACCESS_KEY_ID`].
pub const S3_SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

fn default_access_key_id_key() -> String {
    S3_ACCESS_KEY_ID.to_string()
}

fn default_secret_access_key_key() -> String {
    S3_SECRET_ACCESS_KEY.to_string()
}

/// S3 server-side encryption mode.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum ServerSideEncryption {
    /// SSE-S3 with S3-managed keys.
    #[serde(rename = "AES256")]
    Aes256,
    /// SSE-KMS with a KMS key (`kmsKeyId`).
    #[serde(rename = "aws:kms")]
    AwsKms,
}

/// A PersistentVolumeClaim destination.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PvcDestination {
    /// Name of the PersistentVolumeClaim in the schedule's namespace.
    pub claim_name: String,
    /// Directory inside the volume. Default: the volume root.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sub_path: Option<String>,
}

/// Client-side encryption settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Encryption {
    /// Secret and key holding the encryption key material (any length ≥ 16 bytes; a
    /// per-snapshot AES-256 key is derived from it with HKDF-SHA256). Typically a
    /// Tenant-rotated `Random` secret.
    pub key_secret_ref: SecretKeyRef,
    /// Identifier of this key version, recorded in every snapshot header and manifest
    /// so that restores pick the right key after rotation. Default: a fingerprint
    /// derived from the key material.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
}

/// Compression settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Compression {
    /// Compression algorithm. Only `zstd` is supported. Default: zstd.
    #[serde(default)]
    pub algorithm: CompressionAlgorithm,
    /// zstd level: 1 (fastest) to 19 (smallest). Default: 3.
    #[serde(default = "default_compression_level")]
    #[schemars(range(min = 1, max = 19))]
    pub level: i32,
}

impl Default for Compression {
    fn default() -> Self {
        Compression {
            algorithm: CompressionAlgorithm::Zstd,
            level: default_compression_level(),
        }
    }
}

fn default_compression_level() -> i32 {
    3
}

/// Compression algorithm.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum CompressionAlgorithm {
    /// Zstandard.
    #[default]
    Zstd,
}

/// Retention policy. A snapshot is kept when any count rule selects it (with no count
/// rule, every snapshot is), unless it is older than `maxAge`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retention {
    /// Keep the newest N snapshots.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<u32>,
    /// Keep the newest snapshot of each of the last N days (UTC) that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_daily: Option<u32>,
    /// Keep the newest snapshot of each of the last N ISO weeks that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_weekly: Option<u32>,
    /// Keep the newest snapshot of each of the last N calendar months that have one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_monthly: Option<u32>,
    /// Delete snapshots older than this (e.g. `90d`, `12h`, `2w`; units s, m, h, d, w),
    /// even when a count rule would keep them. The newest snapshot and the newest
    /// snapshot that passed a restore test are always kept.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age: Option<String>,
}

/// Restore-test settings.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTest {
    /// When to run the restore test, in cron syntax (evaluated in `timeZone`).
    /// Default: every Sunday at 04:00.
    #[serde(default = "default_restore_schedule")]
    pub schedule: String,
    /// Server to restore into. Default: the source server (same host, port, user and
    /// password).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<RestoreTarget>,
    /// Name of the scratch database created for the test and always dropped
    /// afterwards. It must not be an existing database. Default: `palisade_restore_test`.
    #[serde(default = "default_scratch_database")]
    pub scratch_database: String,
    /// SQL checks run against the restored database; each must return one row with a
    /// single boolean `true`.
    #[serde(default)]
    pub checks: Vec<SqlCheck>,
    /// Compare every table's exact row count with the counts recorded in the snapshot
    /// manifest. Default: true.
    #[serde(default = "default_true")]
    pub compare_row_counts: bool,
    /// Upper bound for the whole test (restore + checks), e.g. `2h`. Default: `1h`.
    #[serde(default = "default_restore_timeout")]
    pub timeout: String,
}

fn default_restore_schedule() -> String {
    "0 4 * * 0".to_string()
}

fn default_scratch_database() -> String {
    "palisade_restore_test".to_string()
}

fn default_true() -> bool {
    true
}

fn default_restore_timeout() -> String {
    "1h".to_string()
}

/// A server a restore test restores into.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTarget {
    /// Host name or IP address of the server.
    pub host: String,
    /// TCP port. Default: 5432.
    #[serde(default = "default_pg_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: u16,
    /// Role to connect as; it needs `CREATEDB`.
    pub user: String,
    /// Secret and key holding the role's password. Default: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_secret_ref: Option<SecretKeyRef>,
    /// libpq `sslmode`. Default: prefer.
    #[serde(default)]
    pub ssl_mode: SslMode,
}

/// A named SQL check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SqlCheck {
    /// Short name shown in status and results.
    pub name: String,
    /// A query returning a single boolean; the check passes when it is `true`.
    pub sql: String,
}

/// Observed state of a BackupSchedule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// The `metadata.generation` this status was computed for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// `Ready`, `LastBackupSucceeded` and `LastRestoreTestSucceeded`.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// When the last backup run was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_schedule_time: Option<DateTime<Utc>>,
    /// When the next backup run is due.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_schedule_time: Option<DateTime<Utc>>,
    /// The newest snapshot that completed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_successful_backup: Option<BackupRecord>,
    /// The newest restore test.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_test: Option<RestoreTestRecord>,
    /// Number of snapshots currently stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u32>,
    /// Bytes stored by all snapshots (as stored: compressed and encrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
    /// Backup runs that failed in a row since the last success.
    #[serde(default)]
    pub consecutive_failures: u32,
    /// Scheduled time of the newest restore-test run that was started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_test_schedule_time: Option<DateTime<Utc>>,
    /// Scheduled time of the newest run that was skipped because it could not start
    /// within `startingDeadlineSeconds`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_missed_schedule_time: Option<DateTime<Utc>>,
    /// Name of the newest finished backup Job whose result is folded into this status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_backup_job: Option<String>,
    /// Name of the newest finished restore-test Job whose result is folded into this
    /// status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_restore_test_job: Option<String>,
}

/// A completed snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BackupRecord {
    /// Snapshot id.
    pub id: String,
    /// When the snapshot finished.
    pub time: DateTime<Utc>,
    /// Size of the stored object in bytes.
    pub bytes: u64,
    /// Wall-clock duration of the run, e.g. `83.2s`.
    pub duration: String,
    /// Hex SHA-256 of the stored object.
    pub sha256: String,
    /// Object key (S3) or file path of the stored snapshot.
    pub key: String,
}

/// A completed restore test.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RestoreTestRecord {
    /// When the test finished.
    pub time: DateTime<Utc>,
    /// Id of the snapshot that was restored.
    pub snapshot: String,
    /// `Passed` or `Failed`.
    pub result: RestoreTestResult,
    /// Wall-clock duration of the test, e.g. `41.0s`.
    pub duration: String,
    /// Result of each configured check and of the row-count comparison.
    #[serde(default)]
    pub checks: Vec<CheckResult>,
}

/// Outcome of a restore test.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum RestoreTestResult {
    /// Restore, checks and row counts all succeeded.
    Passed,
    /// Something failed; see `checks`.
    Failed,
}

/// Outcome of one check.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CheckResult {
    /// Check name (`rowCounts` for the row-count comparison).
    pub name: String,
    /// Whether it passed.
    pub passed: bool,
    /// Why it failed (bounded, never contains data values). Absent when it passed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_has_names_columns_and_rules() {
        let crd = serde_json::to_string(&BackupSchedule::crd()).expect("crd serializes");
        for needle in [
            "\"shortNames\":[\"bs\"]",
            "Last Restore Test",
            "exactly one of s3, persistentVolumeClaim or path",
            "kmsKeyId is only allowed",
            "\"x-kubernetes-list-type\":\"map\"",
        ] {
            assert!(crd.contains(needle), "missing {needle}");
        }
    }

    #[test]
    fn job_image_and_service_account_are_not_in_the_schema_but_refused_by_name() {
        let crd = serde_json::to_value(BackupSchedule::crd()).expect("crd");
        let tpl = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"]["properties"]
            ["jobTemplate"]["properties"];
        assert!(tpl.get("backoffLimit").is_some(), "{tpl}");
        assert!(tpl.get("image").is_none());
        assert!(tpl.get("serviceAccountName").is_none());
        let old = r#"
postgres: {host: db, database: app, user: backup}
destination: {path: /backups}
jobTemplate: {image: evil/image, serviceAccountName: cluster-reader, backoffLimit: 1}
"#;
        let spec: BackupScheduleSpec = serde_yaml::from_str(old).expect("parses");
        assert_eq!(
            spec.removed_fields(),
            vec![
                "spec.jobTemplate.image",
                "spec.jobTemplate.serviceAccountName"
            ]
        );
        // Never written back (the ConfigMap, status, render).
        let text = serde_yaml::to_string(&spec).expect("yaml");
        assert!(!text.contains("evil/image") && !text.contains("cluster-reader"));
    }

    #[test]
    fn config_file_shape_parses_with_defaults() {
        let yaml = r#"
postgres: {host: db, database: app, user: backup}
destination:
  s3: {bucket: b, serverSideEncryption: "aws:kms", kmsKeyId: k}
retention: {keepLast: 3, maxAge: 30d}
"#;
        let spec: BackupScheduleSpec = serde_yaml::from_str(yaml).expect("parses");
        assert_eq!(spec.postgres.port, 5432);
        assert_eq!(spec.compression.level, 3);
        assert_eq!(spec.concurrency_policy, ConcurrencyPolicy::Forbid);
        let s3 = spec.destination.s3.expect("s3");
        assert_eq!(
            s3.server_side_encryption,
            Some(ServerSideEncryption::AwsKms)
        );
        assert_eq!(s3.part_size_mib, 8);
    }
}
