//! An S3 (or S3-compatible) bucket and prefix: `destination.s3` or `--s3-bucket`.
//!
//! Large objects are multipart uploads with bounded concurrency and growing parts
//! ([`PartPlan`]); every failed or interrupted upload is aborted. Credentials come
//! from the AWS chain, `--s3-credentials-file`, or `--s3-credentials-dir` (the
//! Secret a Job mounts from `credentialsSecretRef`).

use std::path::PathBuf;
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::error::ProvideErrorMetadata;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use tokio::task::JoinSet;

use super::{
    Backend, BackendError, ChunkSource, DestinationArgs, JobMounts, Kind, MAX_PARTS, ObjectInfo,
    ObjectReader, PartPlan, Put, Registration, SecretMount, Storage, StorageError, Upload,
    UploadSink,
};
use crate::backup::secret_file::{read_secret_file, secret_string};
use crate::crd::backup_schedule::{
    Destination, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY, S3_SESSION_TOKEN, S3Destination,
    ServerSideEncryption,
};

/// S3 server-side encryption on the command line.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum SseArg {
    /// SSE-S3.
    #[value(name = "AES256")]
    Aes256,
    /// SSE-KMS.
    #[value(name = "aws:kms")]
    AwsKms,
}

/// The flags of an S3 destination (they override the config file's `s3`).
#[derive(clap::Args, Debug)]
#[group(skip)]
pub struct S3Args {
    /// Store snapshots in this S3 bucket.
    #[arg(long, global = true)]
    pub s3_bucket: Option<String>,
    /// S3 key prefix.
    #[arg(long, global = true)]
    pub s3_prefix: Option<String>,
    /// S3 region.
    #[arg(long, global = true)]
    pub s3_region: Option<String>,
    /// S3 endpoint URL (S3-compatible services).
    #[arg(long, global = true)]
    pub s3_endpoint: Option<String>,
    /// Path-style S3 addressing.
    #[arg(long, global = true)]
    pub s3_force_path_style: bool,
    /// S3 server-side encryption.
    #[arg(long, global = true, value_enum)]
    pub s3_sse: Option<SseArg>,
    /// KMS key for `--s3-sse aws:kms`.
    #[arg(long, global = true)]
    pub s3_kms_key_id: Option<String>,
    /// Directory with the files `AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY` and
    /// optionally `AWS_SESSION_TOKEN` (a mounted Secret with the keys a
    /// BackupSchedule's credentialsSecretRef defaults to; the older names
    /// `access-key-id`, `secret-access-key`, `session-token` are still read).
    /// Default: the AWS credential chain.
    #[arg(long, global = true, conflicts_with = "s3_credentials_file")]
    pub s3_credentials_dir: Option<PathBuf>,
    /// File with two lines: access key id, secret access key (and optionally a session
    /// token). Default: the AWS credential chain.
    #[arg(long, global = true)]
    pub s3_credentials_file: Option<PathBuf>,
    /// Size of the first 1,000 multipart parts in MiB (5–64; later parts grow).
    #[arg(long, global = true)]
    pub part_size_mib: Option<u32>,
    /// Parallel part uploads (1–16).
    #[arg(long, global = true)]
    pub upload_concurrency: Option<u32>,
    /// Attempts per S3 call (retries with exponential backoff).
    #[arg(long, global = true, default_value_t = 5)]
    pub s3_max_attempts: u32,
}

/// An S3 call that failed.
#[derive(Debug, thiserror::Error)]
#[error("S3 {op} s3://{bucket}/{key}: {message}")]
pub struct S3Error {
    /// Operation name.
    pub op: &'static str,
    /// Bucket.
    pub bucket: String,
    /// Key.
    pub key: String,
    /// Error from the SDK, with its service code when there is one.
    pub message: String,
}

impl BackendError for S3Error {
    fn reason(&self) -> &'static str {
        "S3Error"
    }
}

fn s3_err<E>(op: &'static str, bucket: &str, key: &str) -> impl FnOnce(E) -> StorageError
where
    E: std::error::Error + aws_sdk_s3::error::ProvideErrorMetadata + 'static,
{
    let bucket = bucket.to_string();
    let key = key.to_string();
    move |e| {
        let message = match (e.code(), e.message()) {
            (Some(code), Some(msg)) => format!("{code}: {msg}"),
            (Some(code), None) => code.to_string(),
            _ => aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
        };
        S3Error {
            op,
            bucket,
            key,
            message,
        }
        .into()
    }
}

/// How a store answered a create-only (`If-None-Match: *`) write that failed.
enum Conditional {
    /// The object exists: another writer was first.
    Refused,
    /// The store does not implement conditional writes (logged; the write is then made
    /// without the condition, unprotected as before).
    Unsupported,
    /// Any other failure.
    Other,
}

fn conditional(e: &impl ProvideErrorMetadata) -> Conditional {
    match e.code() {
        Some("PreconditionFailed") => Conditional::Refused,
        Some("NotImplemented") => {
            tracing::warn!(
                "the store does not implement conditional writes; writing without If-None-Match"
            );
            Conditional::Unsupported
        }
        _ => Conditional::Other,
    }
}

fn busy(bucket: &str, key: &str) -> StorageError {
    StorageError::Busy(format!("s3://{bucket}/{key}"))
}

fn cfg(msg: &str) -> StorageError {
    StorageError::Config(msg.to_string())
}

/// The S3 kind.
pub(super) struct S3;

impl Kind for S3 {
    fn key(&self, _ns: &str, d: &Destination) -> Option<String> {
        let s3 = d.s3.as_ref()?;
        let prefix = s3.prefix.trim_matches('/');
        Some(format!(
            "s3://{}/{}/{}",
            s3.endpoint
                .as_deref()
                .unwrap_or("aws")
                .trim_end_matches('/'),
            s3.bucket,
            prefix
        ))
    }

    fn job_mounts(&self, d: &Destination, out: &mut JobMounts) {
        let Some(c) =
            d.s3.as_ref()
                .and_then(|s| s.credentials_secret_ref.as_ref())
        else {
            return;
        };
        let mut items = vec![
            (c.access_key_id_key.clone(), S3_ACCESS_KEY_ID),
            (c.secret_access_key_key.clone(), S3_SECRET_ACCESS_KEY),
        ];
        if let Some(t) = &c.session_token_key {
            items.push((t.clone(), S3_SESSION_TOKEN));
        }
        out.secrets.push(SecretMount {
            volume: "s3-credentials",
            secret: c.name.clone(),
            items,
            flag: "--s3-credentials-dir",
            file: None,
        });
    }

    fn job_destination(&self, _d: &mut Destination) {}

    /// The endpoint's host and port; without `endpoint`, S3 is AWS: TCP 443
    /// to anywhere.
    fn job_egress(&self, d: &Destination) -> Vec<(String, u16)> {
        let Some(s3) = &d.s3 else {
            return Vec::new();
        };
        let endpoint = s3
            .endpoint
            .as_deref()
            .and_then(endpoint_host_port)
            .unwrap_or_else(|| (String::new(), 443));
        vec![endpoint]
    }

    fn named_by_flags(&self, args: &DestinationArgs) -> bool {
        args.s3.s3_bucket.is_some()
    }

    fn open<'a>(
        &'a self,
        args: &'a DestinationArgs,
        d: Option<&'a Destination>,
    ) -> BoxFuture<'a, Result<Option<Storage>, StorageError>> {
        async move {
            let Some(dest) = merged_destination(&args.s3, d)? else {
                return Ok(None);
            };
            let settings = settings(&args.s3, dest)?;
            Storage::s3(settings).await.map(Some)
        }
        .boxed()
    }
}

/// The config file's `s3` with the flags applied; `None` when neither names a bucket.
fn merged_destination(
    a: &S3Args,
    d: Option<&Destination>,
) -> Result<Option<S3Destination>, StorageError> {
    let base = d.and_then(|d| d.s3.clone());
    let mut d = match (&a.s3_bucket, base) {
        (Some(bucket), base) => {
            let mut d = base.unwrap_or(S3Destination {
                bucket: bucket.clone(),
                prefix: String::new(),
                region: None,
                endpoint: None,
                force_path_style: false,
                credentials_secret_ref: None,
                server_side_encryption: None,
                kms_key_id: None,
                part_size_mib: 8,
                concurrency: 4,
            });
            d.bucket = bucket.clone();
            d
        }
        (None, Some(base)) => base,
        (None, None) => return Ok(None),
    };
    if let Some(p) = &a.s3_prefix {
        d.prefix = p.clone();
    }
    d.region = a.s3_region.clone().or(d.region);
    d.endpoint = a.s3_endpoint.clone().or(d.endpoint);
    d.force_path_style |= a.s3_force_path_style;
    if let Some(sse) = a.s3_sse {
        d.server_side_encryption = Some(match sse {
            SseArg::Aes256 => ServerSideEncryption::Aes256,
            SseArg::AwsKms => ServerSideEncryption::AwsKms,
        });
    }
    d.kms_key_id = a.s3_kms_key_id.clone().or(d.kms_key_id);
    if d.kms_key_id.is_some() && d.server_side_encryption != Some(ServerSideEncryption::AwsKms) {
        return Err(cfg("a KMS key id needs server-side encryption aws:kms"));
    }
    Ok(Some(d))
}

/// Static credentials from `--s3-credentials-file` or `--s3-credentials-dir`;
/// `None`: the AWS chain.
fn credentials(a: &S3Args) -> Result<Option<(String, String, Option<String>)>, StorageError> {
    let read = |path: &std::path::Path, what: &str| -> Result<String, StorageError> {
        read_secret_file(path)
            .and_then(|b| secret_string(b, what))
            .map_err(|e| StorageError::Config(e.to_string()))
    };
    if let Some(p) = &a.s3_credentials_file {
        let text = read(p, "credentials file")?;
        let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
        return match (lines.next(), lines.next()) {
            (Some(id), Some(secret)) => Ok(Some((
                id.to_string(),
                secret.to_string(),
                lines.next().map(str::to_string),
            ))),
            _ => Err(cfg(
                "credentials file needs an access key id and a secret key line",
            )),
        };
    }
    let Some(dir) = &a.s3_credentials_dir else {
        return Ok(None);
    };
    // The one naming (S3_ACCESS_KEY_ID, ...), else the older file names of releases
    // before it.
    let file = |name: &'static str, legacy: &'static str| {
        if dir.join(name).exists() || !dir.join(legacy).exists() {
            name
        } else {
            legacy
        }
    };
    let token = file(S3_SESSION_TOKEN, "session-token");
    let id = file(S3_ACCESS_KEY_ID, "access-key-id");
    let secret = file(S3_SECRET_ACCESS_KEY, "secret-access-key");
    Ok(Some((
        read(&dir.join(id), id)?,
        read(&dir.join(secret), secret)?,
        if dir.join(token).exists() {
            Some(read(&dir.join(token), token)?)
        } else {
            None
        },
    )))
}

/// The settings of `d` with the flags' credentials, part size and concurrency.
fn settings(a: &S3Args, d: S3Destination) -> Result<S3Settings, StorageError> {
    let credentials = credentials(a)?;
    // The schema's bounds: they cap the memory in flight (see docs/BACKUP.md).
    let part_mib = a.part_size_mib.unwrap_or(d.part_size_mib);
    if !(5..=64).contains(&part_mib) {
        return Err(cfg(
            "part size must be 5-64 MiB (parts grow on their own past 1,000 parts)",
        ));
    }
    let concurrency = a.upload_concurrency.unwrap_or(d.concurrency);
    if !(1..=16).contains(&concurrency) {
        return Err(cfg("upload concurrency must be 1-16"));
    }
    Ok(S3Settings {
        bucket: d.bucket,
        prefix: d.prefix,
        region: d.region,
        endpoint: d.endpoint,
        force_path_style: d.force_path_style,
        credentials,
        sse: d.server_side_encryption,
        kms_key_id: d.kms_key_id,
        part_size: part_mib as usize * 1024 * 1024,
        concurrency: concurrency as usize,
        max_attempts: a.s3_max_attempts,
    })
}

/// S3 settings after secrets were resolved.
#[derive(Clone)]
pub struct S3Settings {
    /// Bucket.
    pub bucket: String,
    /// Key prefix (normalized to end with `/` unless empty).
    pub prefix: String,
    /// Region.
    pub region: Option<String>,
    /// Endpoint URL.
    pub endpoint: Option<String>,
    /// Path-style addressing.
    pub force_path_style: bool,
    /// Static credentials: access key id, secret access key, session token.
    pub credentials: Option<(String, String, Option<String>)>,
    /// Server-side encryption to request.
    pub sse: Option<ServerSideEncryption>,
    /// KMS key for `aws:kms`.
    pub kms_key_id: Option<String>,
    /// Multipart part size in bytes.
    pub part_size: usize,
    /// Parallel part uploads.
    pub concurrency: usize,
    /// Attempts per S3 call (standard retry with exponential backoff).
    pub max_attempts: u32,
}

impl std::fmt::Debug for S3Settings {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Settings")
            .field("bucket", &self.bucket)
            .field("prefix", &self.prefix)
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("force_path_style", &self.force_path_style)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<redacted>"),
            )
            .field("sse", &self.sse)
            .field("part_size", &self.part_size)
            .field("concurrency", &self.concurrency)
            .finish()
    }
}

impl Storage {
    /// An S3 store. Credentials default to the ambient AWS chain.
    pub async fn s3(mut settings: S3Settings) -> Result<Self, StorageError> {
        if !settings.prefix.is_empty() && !settings.prefix.ends_with('/') {
            settings.prefix.push('/');
        }
        settings.part_size = settings.part_size.max(5 << 20);
        settings.concurrency = settings.concurrency.max(1);
        Ok(Storage::new(S3Store {
            client: client(&settings).await,
            settings,
        }))
    }
}

async fn client(settings: &S3Settings) -> Client {
    use aws_config::BehaviorVersion;
    use aws_config::retry::RetryConfig;
    use aws_config::timeout::TimeoutConfig;
    use aws_smithy_http_client::tls;

    let http = aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::Ring,
        ))
        .build_https();
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).http_client(http);
    if let Some(region) = &settings.region {
        loader = loader.region(aws_config::Region::new(region.clone()));
    }
    if let Some((id, secret, token)) = &settings.credentials {
        loader = loader.credentials_provider(aws_credential_types::Credentials::new(
            id.clone(),
            secret.clone(),
            token.clone(),
            None,
            "palisade",
        ));
    }
    let shared = loader.load().await;
    // Integrity is end to end: one SHA-256 over the stored stream in the (signed)
    // manifest, checked with every GCM chunk tag on restore and verify. The SDK's
    // own per-request checksums (a CRC32 of every part, re-verified by the server)
    // would hash each byte a second time for nothing the manifest does not cover.
    let mut conf = aws_sdk_s3::config::Builder::from(&shared)
        .force_path_style(settings.force_path_style)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .retry_config(
            RetryConfig::standard()
                .with_max_attempts(settings.max_attempts.max(1))
                .with_initial_backoff(Duration::from_millis(200)),
        )
        .timeout_config(
            TimeoutConfig::builder()
                .connect_timeout(Duration::from_secs(10))
                .read_timeout(Duration::from_secs(120))
                .build(),
        );
    if shared.region().is_none() {
        conf = conf.region(aws_config::Region::new("us-east-1"));
    }
    if let Some(endpoint) = &settings.endpoint {
        conf = conf.endpoint_url(endpoint.clone());
    }
    Client::from_conf(conf.build())
}

/// An S3 bucket + prefix.
#[derive(Clone)]
struct S3Store {
    client: Client,
    settings: S3Settings,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("settings", &self.settings)
            .finish()
    }
}

fn sdk_sse(sse: ServerSideEncryption) -> aws_sdk_s3::types::ServerSideEncryption {
    match sse {
        ServerSideEncryption::Aes256 => aws_sdk_s3::types::ServerSideEncryption::Aes256,
        ServerSideEncryption::AwsKms => aws_sdk_s3::types::ServerSideEncryption::AwsKms,
    }
}

impl S3Store {
    fn object_key(&self, name: &str) -> String {
        format!("{}{}", self.settings.prefix, name)
    }

    /// The server-side encryption to request, and its KMS key.
    fn sse(&self) -> Option<(aws_sdk_s3::types::ServerSideEncryption, Option<&String>)> {
        self.settings
            .sse
            .map(|sse| (sdk_sse(sse), self.settings.kms_key_id.as_ref()))
    }

    async fn begin_upload(
        &self,
        name: &str,
        registration: Registration,
    ) -> Result<Upload, StorageError> {
        let s = &self.settings;
        let key = self.object_key(name);
        let mut req = self
            .client
            .create_multipart_upload()
            .bucket(&s.bucket)
            .key(&key)
            .content_type("application/octet-stream");
        if let Some((sse, kms)) = self.sse() {
            req = req
                .server_side_encryption(sse)
                .set_ssekms_key_id(kms.cloned());
        }
        let out = req
            .send()
            .await
            .map_err(s3_err("CreateMultipartUpload", &s.bucket, &key))?;
        let upload_id = out.upload_id().unwrap_or_default().to_string();
        registration.open(Some(upload_id.clone()));
        Ok(Upload(Box::new(S3Upload {
            registration,
            client: self.client.clone(),
            bucket: s.bucket.clone(),
            key,
            upload_id,
            next_part: 1,
            tasks: JoinSet::new(),
            in_flight: 0,
            budget: s.part_size.saturating_mul(s.concurrency),
            parts: Vec::new(),
            concurrency: s.concurrency,
        })))
    }

    async fn put_small(&self, name: &str, body: Vec<u8>, mode: Put) -> Result<(), StorageError> {
        let key = self.object_key(name);
        let put = |if_none_match: bool| {
            let mut req = self
                .client
                .put_object()
                .bucket(&self.settings.bucket)
                .key(&key)
                .content_type("application/json")
                .body(ByteStream::from(body.clone()))
                .set_if_none_match(if_none_match.then(|| "*".to_string()));
            if let Some((sse, kms)) = self.sse() {
                req = req
                    .server_side_encryption(sse)
                    .set_ssekms_key_id(kms.cloned());
            }
            req.send()
        };
        let bucket = &self.settings.bucket;
        match mode {
            Put::Replace => put(false).await.map(|_| ()),
            Put::CreateOnly => match put(true).await {
                Err(e) => match conditional(&e) {
                    Conditional::Refused => return Err(busy(bucket, &key)),
                    Conditional::Unsupported => put(false).await.map(|_| ()),
                    Conditional::Other => Err(e),
                },
                ok => ok.map(|_| ()),
            },
        }
        .map_err(s3_err("PutObject", bucket, &key))
    }

    async fn open(&self, name: &str) -> Result<ObjectReader, StorageError> {
        let bucket = &self.settings.bucket;
        let key = self.object_key(name);
        let out = self
            .client
            .get_object()
            .bucket(bucket)
            .key(&key)
            .send()
            .await;
        match out {
            Ok(o) => Ok(ObjectReader(Box::new(S3Reader {
                body: o.body,
                bucket: bucket.clone(),
                key,
            }))),
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => {
                Err(StorageError::NotFound(format!("s3://{bucket}/{key}")))
            }
            Err(e) => Err(s3_err("GetObject", bucket, &key)(e)),
        }
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>, StorageError> {
        let s = &self.settings;
        let mut out = Vec::new();
        let mut pages = self
            .client
            .list_objects_v2()
            .bucket(&s.bucket)
            .prefix(&s.prefix)
            .into_paginator()
            .send();
        while let Some(page) = pages.next().await {
            let page = page.map_err(s3_err("ListObjectsV2", &s.bucket, &s.prefix))?;
            for o in page.contents() {
                let Some(name) = o.key().and_then(|k| k.strip_prefix(&s.prefix)) else {
                    continue;
                };
                if name.contains('/') {
                    continue;
                }
                out.push(ObjectInfo {
                    name: name.to_string(),
                    size: o.size().unwrap_or(0).max(0) as u64,
                });
            }
        }
        Ok(out)
    }

    async fn delete(&self, name: &str) -> Result<(), StorageError> {
        let key = self.object_key(name);
        self.client
            .delete_object()
            .bucket(&self.settings.bucket)
            .key(&key)
            .send()
            .await
            .map_err(s3_err("DeleteObject", &self.settings.bucket, &key))?;
        Ok(())
    }

    async fn remove_stale_uploads(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StorageError> {
        let s = &self.settings;
        let mut removed = Vec::new();
        let listed = self
            .client
            .list_multipart_uploads()
            .bucket(&s.bucket)
            .prefix(&s.prefix)
            .send()
            .await;
        let out = match listed {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(
                    bucket = %s.bucket,
                    error = %aws_sdk_s3::error::DisplayErrorContext(&e),
                    "cannot list multipart uploads; stale uploads not cleaned"
                );
                return Ok(removed);
            }
        };
        for u in out.uploads() {
            let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                continue;
            };
            let Some(name) = key.strip_prefix(&s.prefix) else {
                continue;
            };
            let initiated = u
                .initiated()
                .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), 0));
            if name.contains('/') || initiated.is_none_or(|t| t >= older_than) {
                continue;
            }
            abort_s3(&self.client, &s.bucket, key, id).await;
            removed.push(format!("s3://{}/{key} (upload {id})", s.bucket));
        }
        Ok(removed)
    }
}

impl Backend for S3Store {
    fn part_plan(&self) -> PartPlan {
        PartPlan {
            base: self.settings.part_size,
            grows: true,
        }
    }

    fn location(&self, name: &str) -> String {
        format!("s3://{}/{}", self.settings.bucket, self.object_key(name))
    }

    fn key(&self, name: &str) -> String {
        self.object_key(name)
    }

    fn begin_upload<'a>(
        &'a self,
        name: &'a str,
        registration: Registration,
    ) -> BoxFuture<'a, Result<Upload, StorageError>> {
        S3Store::begin_upload(self, name, registration).boxed()
    }

    fn put_small<'a>(
        &'a self,
        name: &'a str,
        body: Vec<u8>,
        mode: Put,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        S3Store::put_small(self, name, body, mode).boxed()
    }

    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        S3Store::open(self, name).boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ObjectInfo>, StorageError>> {
        S3Store::list(self).boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        S3Store::delete(self, name).boxed()
    }

    fn remove_open<'a>(
        &'a self,
        name: &'a str,
        token: Option<String>,
    ) -> BoxFuture<'a, Option<String>> {
        async move {
            let upload_id = token?;
            let key = self.object_key(name);
            abort_s3(&self.client, &self.settings.bucket, &key, &upload_id).await;
            Some(format!(
                "s3://{}/{key} (upload {upload_id})",
                self.settings.bucket
            ))
        }
        .boxed()
    }

    fn remove_stale_uploads(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        S3Store::remove_stale_uploads(self, older_than).boxed()
    }
}

/// How long an aborted upload waits for its parts in flight.
const PARTS_DRAIN: std::time::Duration = std::time::Duration::from_secs(30);

async fn abort_s3(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    // The SDK retries transient failures; a final failure is logged, the caller's
    // error stays the one reported.
    if let Err(e) = client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        tracing::warn!(
            bucket,
            key,
            error = %aws_sdk_s3::error::DisplayErrorContext(&e),
            "could not abort multipart upload"
        );
    }
}

/// An S3 multipart upload.
struct S3Upload {
    registration: Registration,
    client: Client,
    bucket: String,
    key: String,
    upload_id: String,
    /// Next part number (1-based).
    next_part: i32,
    /// Parts in flight.
    tasks: JoinSet<Result<(CompletedPart, usize), StorageError>>,
    /// Bytes of the parts in flight.
    in_flight: usize,
    /// Most bytes in flight (`partSize × concurrency`); one part is always allowed,
    /// however large it has grown.
    budget: usize,
    /// Parts done.
    parts: Vec<CompletedPart>,
    /// Max parts in flight.
    concurrency: usize,
}

impl S3Upload {
    async fn write_part(&mut self, part: Bytes) -> Result<(), StorageError> {
        while !self.tasks.is_empty()
            && (self.tasks.len() >= self.concurrency || self.in_flight + part.len() > self.budget)
        {
            if let Some(done) = self.tasks.join_next().await {
                let (p, len) = done.map_err(|e| StorageError::Task(e.to_string()))??;
                self.in_flight -= len;
                self.parts.push(p);
            }
        }
        if self.next_part as u32 > MAX_PARTS {
            return Err(StorageError::TooManyParts);
        }
        self.in_flight += part.len();
        let number = self.next_part;
        self.next_part += 1;
        let (client, bucket, key, upload_id) = (
            self.client.clone(),
            self.bucket.clone(),
            self.key.clone(),
            self.upload_id.clone(),
        );
        self.tasks.spawn(async move {
            let size = part.len();
            let len = size as i64;
            let out = client
                .upload_part()
                .bucket(&bucket)
                .key(&key)
                .upload_id(&upload_id)
                .part_number(number)
                .content_length(len)
                .body(ByteStream::from(part))
                // SigV4 signs the headers only (UNSIGNED-PAYLOAD): no SHA-256 of every
                // part on the client and again on the server; the manifest's SHA-256
                // covers the bytes end to end.
                .customize()
                .disable_payload_signing()
                .send()
                .await
                .map_err(s3_err("UploadPart", &bucket, &key))?;
            Ok((
                CompletedPart::builder()
                    .part_number(number)
                    .set_e_tag(out.e_tag().map(str::to_string))
                    .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                    .build(),
                size,
            ))
        });
        Ok(())
    }

    async fn finish(mut self) -> Result<(), StorageError> {
        let result: Result<(), StorageError> = async {
            while let Some(done) = self.tasks.join_next().await {
                let part = done.map_err(|e| StorageError::Task(e.to_string()))??.0;
                self.parts.push(part);
            }
            let mut parts = std::mem::take(&mut self.parts);
            parts.sort_by_key(|p| p.part_number());
            let complete = |if_none_match: bool| {
                self.client
                    .complete_multipart_upload()
                    .bucket(&self.bucket)
                    .key(&self.key)
                    .upload_id(&self.upload_id)
                    .multipart_upload(
                        CompletedMultipartUpload::builder()
                            .set_parts(Some(parts.clone()))
                            .build(),
                    )
                    .set_if_none_match(if_none_match.then(|| "*".to_string()))
                    .send()
            };
            // Create-only (`If-None-Match: *`): of two runs writing one snapshot id at
            // once, the second to finish is refused instead of replacing the first's
            // data under its manifest. A store that does not implement conditional
            // writes gets the plain request (no protection, as before).
            match complete(true).await {
                Ok(_) => Ok(()),
                Err(e) => match conditional(&e) {
                    Conditional::Refused => return Err(busy(&self.bucket, &self.key)),
                    Conditional::Unsupported => complete(false).await.map(|_| ()),
                    Conditional::Other => Err(e),
                }
                .map_err(s3_err(
                    "CompleteMultipartUpload",
                    &self.bucket,
                    &self.key,
                )),
            }
        }
        .await;
        if result.is_err() {
            self.tasks.abort_all();
            abort_s3(&self.client, &self.bucket, &self.key, &self.upload_id).await;
            self.registration.forget();
        } else {
            self.registration.stored();
        }
        result
    }

    async fn abort(mut self) {
        // Parts in flight finish first: cancelling one on our side does not
        // stop the server, and a part that lands after the abort stays as an
        // orphan (S3 documents this race). A part that hangs is cut off.
        let drained = tokio::time::timeout(PARTS_DRAIN, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            self.tasks.abort_all();
            while self.tasks.join_next().await.is_some() {}
        }
        abort_s3(&self.client, &self.bucket, &self.key, &self.upload_id).await;
        self.registration.forget();
    }
}

impl UploadSink for S3Upload {
    fn write_part(&mut self, part: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        S3Upload::write_part(self, part).boxed()
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        S3Upload::finish(*self).boxed()
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        S3Upload::abort(*self).boxed()
    }
}

/// An S3 response body.
struct S3Reader {
    body: ByteStream,
    bucket: String,
    key: String,
}

impl ChunkSource for S3Reader {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, StorageError>> {
        async move {
            self.body.try_next().await.map_err(|e| {
                S3Error {
                    op: "GetObject body",
                    bucket: self.bucket.clone(),
                    key: self.key.clone(),
                    message: e.to_string(),
                }
                .into()
            })
        }
        .boxed()
    }
}

/// Host and port of an endpoint URL (`http://minio.storage:9000`,
/// `https://10.0.0.5`, `[fd00::1]:9000`); the scheme's port when none is given.
fn endpoint_host_port(endpoint: &str) -> Option<(String, u16)> {
    let (scheme, rest) = endpoint.split_once("://").unwrap_or(("https", endpoint));
    let authority = rest.split(['/', '?', '#']).next()?;
    let authority = authority.rsplit('@').next()?;
    let default = if scheme.eq_ignore_ascii_case("http") {
        80
    } else {
        443
    };
    let (host, port) = match authority.strip_prefix('[') {
        Some(v6) => {
            let (host, tail) = v6.split_once(']')?;
            (host, tail.strip_prefix(':'))
        }
        None => match authority.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (authority, None),
        },
    };
    let port = match port {
        Some(p) => p.parse().ok()?,
        None => default,
    };
    Some((host.to_string(), port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_parse_with_and_without_ports() {
        assert_eq!(
            endpoint_host_port("https://s3.example"),
            Some(("s3.example".into(), 443))
        );
        assert_eq!(
            endpoint_host_port("http://10.0.0.5/x"),
            Some(("10.0.0.5".into(), 80))
        );
        assert_eq!(
            endpoint_host_port("http://[fd00::1]:9000"),
            Some(("fd00::1".into(), 9000))
        );
        assert_eq!(
            endpoint_host_port("minio:9000"),
            Some(("minio".into(), 9000))
        );
        assert_eq!(endpoint_host_port("http://h:notaport"), None);
    }
}
