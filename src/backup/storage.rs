//! Where snapshots live: a filesystem directory or an S3 bucket + prefix.
//!
//! Large objects are written through an [`Upload`] (S3 multipart with bounded
//! concurrency, or a `.partial` file renamed into place) that is aborted on failure, so
//! an interrupted run leaves no orphaned multipart upload and no half object under the
//! final name. Small objects (manifests, verification records) are put whole.
//!
//! Every object name is checked ([`check_name`]): one path component of
//! `[A-Za-z0-9._-]`, never `..`, `/` or hidden, so nothing read from storage can point
//! outside it. Files are created 0600 (directories 0700), exclusively and without
//! following symlinks. Every upload this process starts is registered until its
//! snapshot is committed, so an interrupted run can remove what it left
//! ([`Storage::cleanup_interrupted`]).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use bytes::Bytes;
use tokio::io::AsyncReadExt;
use tokio::task::JoinSet;

use crate::crd::backup_schedule::ServerSideEncryption;

/// Errors of the storage backends.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    /// A filesystem operation failed.
    #[error("{op} {path}: {source}")]
    Fs {
        /// What was attempted.
        op: &'static str,
        /// On which path.
        path: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// An S3 call failed.
    #[error("S3 {op} s3://{bucket}/{key}: {message}")]
    S3 {
        /// Operation name.
        op: &'static str,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Error from the SDK, with its service code when there is one.
        message: String,
    },
    /// The object does not exist.
    #[error("object {0} not found")]
    NotFound(String),
    /// More parts than S3 allows.
    #[error("snapshot needs more than 10000 parts; raise the part size")]
    TooManyParts,
    /// An upload task panicked or was cancelled.
    #[error("upload task failed: {0}")]
    Task(String),
    /// An object name that is not a single safe path component.
    #[error("unsafe object name {0:?} refused")]
    UnsafeName(String),
}

impl StorageError {
    /// Short bounded reason.
    pub fn reason(&self) -> &'static str {
        match self {
            StorageError::Fs { .. } => "FilesystemError",
            StorageError::S3 { .. } => "S3Error",
            StorageError::NotFound(_) => "NotFound",
            StorageError::TooManyParts => "TooManyParts",
            StorageError::Task(_) => "UploadTaskFailed",
            StorageError::UnsafeName(_) => "UnsafeName",
        }
    }
}

fn fs_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| StorageError::Fs {
        op,
        path: path.display().to_string(),
        source,
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
        StorageError::S3 {
            op,
            bucket,
            key,
            message,
        }
    }
}

/// Checks that `name` is one safe path component: 1–255 of `[A-Za-z0-9._-]`, not
/// starting with `.` (so never `.`, `..`, hidden, absolute or nested).
pub fn check_name(name: &str) -> Result<(), StorageError> {
    let ok = !name.is_empty()
        && name.len() <= 255
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if ok {
        Ok(())
    } else {
        Err(StorageError::UnsafeName(name.chars().take(300).collect()))
    }
}

/// State of an object this process is writing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PendingState {
    /// Being written: the `.partial` file, or the S3 multipart upload with this id.
    Open(Option<String>),
    /// Stored under its final name, but its snapshot is not committed yet.
    Stored,
}

type Registry = Arc<Mutex<BTreeMap<String, PendingState>>>;

fn with_registry<T>(r: &Registry, f: impl FnOnce(&mut BTreeMap<String, PendingState>) -> T) -> T {
    let mut guard = r.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}

/// S3's limit on parts per multipart upload.
pub const MAX_PARTS: u32 = 10_000;
/// S3's largest part.
pub const MAX_PART_SIZE: usize = 5 << 30;
/// Parts uploaded at the configured size before parts start to grow.
pub const PARTS_BEFORE_GROWTH: u32 = 1_000;
/// How much each part after [`PARTS_BEFORE_GROWTH`] is larger than the one before.
pub const PART_GROWTH: usize = 256 << 10;

/// The size of each part of an upload: `base` for the first 1,000 parts (8 GB at the
/// default 8 MiB, so ordinary databases use fixed-size parts), then 256 KiB more per
/// part. 10,000 parts then hold more than 10 TB even from the 5 MiB minimum (the last
/// part is about 2.2 GiB, far below S3's 5 GiB), instead of 78 GiB at a fixed 8 MiB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PartPlan {
    /// Size of the first parts.
    pub base: usize,
    /// Whether parts grow (S3); a directory is written with fixed buffers.
    pub grows: bool,
}

impl PartPlan {
    /// Size of part `number` (1-based).
    pub fn size(&self, number: u32) -> usize {
        if !self.grows {
            return self.base;
        }
        let extra = number.saturating_sub(PARTS_BEFORE_GROWTH) as usize;
        self.base
            .saturating_add(extra.saturating_mul(PART_GROWTH))
            .min(MAX_PART_SIZE)
    }
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

/// A storage backend.
#[derive(Clone, Debug)]
pub enum Storage {
    /// A directory.
    Fs(FsStore),
    /// An S3 bucket and prefix.
    S3(S3Store),
}

/// A directory of snapshots.
#[derive(Clone, Debug)]
pub struct FsStore {
    dir: PathBuf,
    pending: Registry,
}

/// An S3 bucket + prefix.
#[derive(Clone)]
pub struct S3Store {
    client: Client,
    settings: S3Settings,
    pending: Registry,
}

impl std::fmt::Debug for S3Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("S3Store")
            .field("settings", &self.settings)
            .finish()
    }
}

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name relative to the prefix.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

impl Storage {
    /// A filesystem store (the directory is created when missing).
    pub async fn filesystem(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        let dir = dir.into();
        if tokio::fs::metadata(&dir).await.is_err() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .await
                .map_err(fs_err("create directory", &dir))?;
        }
        Ok(Storage::Fs(FsStore {
            dir,
            pending: Registry::default(),
        }))
    }

    /// An S3 store. Credentials default to the ambient AWS chain.
    pub async fn s3(mut settings: S3Settings) -> Result<Self, StorageError> {
        use aws_config::BehaviorVersion;
        use aws_config::retry::RetryConfig;
        use aws_config::timeout::TimeoutConfig;
        use aws_smithy_http_client::tls;

        if !settings.prefix.is_empty() && !settings.prefix.ends_with('/') {
            settings.prefix.push('/');
        }
        settings.part_size = settings.part_size.max(5 << 20);
        settings.concurrency = settings.concurrency.max(1);
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
            .request_checksum_calculation(
                aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired,
            )
            .response_checksum_validation(
                aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired,
            )
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
        Ok(Storage::S3(S3Store {
            client: Client::from_conf(conf.build()),
            settings,
            pending: Registry::default(),
        }))
    }

    /// Multipart part sizes (S3, growing) or the write buffer size (filesystem).
    pub fn part_plan(&self) -> PartPlan {
        match self {
            Storage::Fs(_) => PartPlan {
                base: 8 << 20,
                grows: false,
            },
            Storage::S3(s) => PartPlan {
                base: s.settings.part_size,
                grows: true,
            },
        }
    }

    /// Parallel uploads (1 for the filesystem).
    pub fn concurrency(&self) -> usize {
        match self {
            Storage::Fs(_) => 1,
            Storage::S3(s) => s.settings.concurrency,
        }
    }

    /// Human-readable location of an object (`s3://bucket/key` or a path).
    pub fn location(&self, name: &str) -> String {
        match self {
            Storage::Fs(f) => f.dir.join(name).display().to_string(),
            Storage::S3(s) => format!("s3://{}/{}{}", s.settings.bucket, s.settings.prefix, name),
        }
    }

    /// Object key (S3) or path (filesystem) of an object.
    pub fn key(&self, name: &str) -> String {
        match self {
            Storage::Fs(f) => f.dir.join(name).display().to_string(),
            Storage::S3(s) => format!("{}{}", s.settings.prefix, name),
        }
    }

    /// Starts writing a large object.
    pub async fn begin_upload(&self, name: &str) -> Result<Upload, StorageError> {
        check_name(name)?;
        match self {
            Storage::Fs(f) => {
                let final_path = f.dir.join(name);
                let partial = f.dir.join(format!("{name}.partial"));
                let file = create_exclusive(&partial).await?;
                with_registry(&f.pending, |r| {
                    r.insert(name.to_string(), PendingState::Open(None))
                });
                Ok(Upload::Fs {
                    file,
                    partial,
                    final_path,
                    registration: Registration {
                        registry: f.pending.clone(),
                        name: name.to_string(),
                    },
                })
            }
            Storage::S3(s) => {
                let key = format!("{}{}", s.settings.prefix, name);
                let mut req = s
                    .client
                    .create_multipart_upload()
                    .bucket(&s.settings.bucket)
                    .key(&key)
                    .content_type("application/octet-stream");
                req = apply_sse(req, &s.settings);
                let out = req.send().await.map_err(s3_err(
                    "CreateMultipartUpload",
                    &s.settings.bucket,
                    &key,
                ))?;
                let upload_id = out.upload_id().unwrap_or_default().to_string();
                with_registry(&s.pending, |r| {
                    r.insert(
                        name.to_string(),
                        PendingState::Open(Some(upload_id.clone())),
                    )
                });
                Ok(Upload::S3 {
                    registration: Registration {
                        registry: s.pending.clone(),
                        name: name.to_string(),
                    },
                    client: s.client.clone(),
                    bucket: s.settings.bucket.clone(),
                    key,
                    upload_id,
                    next_part: 1,
                    tasks: JoinSet::new(),
                    in_flight: 0,
                    budget: s.settings.part_size.saturating_mul(s.settings.concurrency),
                    parts: Vec::new(),
                    concurrency: s.settings.concurrency,
                })
            }
        }
    }

    /// Writes a small object whole (atomically on the filesystem).
    pub async fn put_small(&self, name: &str, body: Vec<u8>) -> Result<(), StorageError> {
        check_name(name)?;
        match self {
            Storage::Fs(f) => {
                let path = f.dir.join(name);
                let tmp = f.dir.join(format!("{name}.partial"));
                write_synced(&tmp, &body).await?;
                tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(fs_err("rename", &path))?;
                sync_dir(&f.dir).await
            }
            Storage::S3(s) => {
                let key = format!("{}{}", s.settings.prefix, name);
                let req = s
                    .client
                    .put_object()
                    .bucket(&s.settings.bucket)
                    .key(&key)
                    .content_type("application/json")
                    .body(ByteStream::from(body));
                let req = match s.settings.sse {
                    Some(sse) => {
                        let r = req.server_side_encryption(sdk_sse(sse));
                        match &s.settings.kms_key_id {
                            Some(k) => r.ssekms_key_id(k),
                            None => r,
                        }
                    }
                    None => req,
                };
                req.send()
                    .await
                    .map_err(s3_err("PutObject", &s.settings.bucket, &key))?;
                Ok(())
            }
        }
    }

    /// Reads a small object whole; `None` when it does not exist.
    pub async fn get_small(&self, name: &str) -> Result<Option<Vec<u8>>, StorageError> {
        match self.open(name).await {
            Ok(mut r) => {
                let mut out = Vec::new();
                while let Some(b) = r.next_chunk().await? {
                    out.extend_from_slice(&b);
                }
                Ok(Some(out))
            }
            Err(StorageError::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Opens an object for streaming reads.
    pub async fn open(&self, name: &str) -> Result<ObjectReader, StorageError> {
        check_name(name)?;
        match self {
            Storage::Fs(f) => {
                let path = f.dir.join(name);
                let opened = tokio::fs::OpenOptions::new()
                    .read(true)
                    .custom_flags(libc::O_NOFOLLOW)
                    .open(&path)
                    .await;
                match opened {
                    Ok(file) => Ok(ObjectReader::Fs { file, path }),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                        Err(StorageError::NotFound(path.display().to_string()))
                    }
                    Err(e) => Err(fs_err("open", &path)(e)),
                }
            }
            Storage::S3(s) => {
                let key = format!("{}{}", s.settings.prefix, name);
                let out = s
                    .client
                    .get_object()
                    .bucket(&s.settings.bucket)
                    .key(&key)
                    .send()
                    .await;
                match out {
                    Ok(o) => Ok(ObjectReader::S3 {
                        body: o.body,
                        bucket: s.settings.bucket.clone(),
                        key,
                    }),
                    Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Err(
                        StorageError::NotFound(format!("s3://{}/{key}", s.settings.bucket)),
                    ),
                    Err(e) => Err(s3_err("GetObject", &s.settings.bucket, &key)(e)),
                }
            }
        }
    }

    /// Lists objects directly under the prefix (names relative to it).
    pub async fn list(&self) -> Result<Vec<ObjectInfo>, StorageError> {
        match self {
            Storage::Fs(f) => {
                let mut out = Vec::new();
                let mut rd = tokio::fs::read_dir(&f.dir)
                    .await
                    .map_err(fs_err("list", &f.dir))?;
                while let Some(entry) = rd.next_entry().await.map_err(fs_err("list", &f.dir))? {
                    let meta = entry
                        .metadata()
                        .await
                        .map_err(fs_err("stat", &entry.path()))?;
                    if meta.is_file()
                        && let Ok(name) = entry.file_name().into_string()
                    {
                        out.push(ObjectInfo {
                            name,
                            size: meta.len(),
                        });
                    }
                }
                out.sort_by(|a, b| a.name.cmp(&b.name));
                Ok(out)
            }
            Storage::S3(s) => {
                let mut out = Vec::new();
                let mut pages = s
                    .client
                    .list_objects_v2()
                    .bucket(&s.settings.bucket)
                    .prefix(&s.settings.prefix)
                    .into_paginator()
                    .send();
                while let Some(page) = pages.next().await {
                    let page = page.map_err(s3_err(
                        "ListObjectsV2",
                        &s.settings.bucket,
                        &s.settings.prefix,
                    ))?;
                    for o in page.contents() {
                        let Some(name) = o.key().and_then(|k| k.strip_prefix(&s.settings.prefix))
                        else {
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
        }
    }

    /// Deletes an object (missing objects are not an error).
    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        match self {
            Storage::Fs(f) => {
                let path = f.dir.join(name);
                match tokio::fs::remove_file(&path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(fs_err("delete", &path)(e)),
                }
            }
            Storage::S3(s) => {
                let key = format!("{}{}", s.settings.prefix, name);
                s.client
                    .delete_object()
                    .bucket(&s.settings.bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(s3_err("DeleteObject", &s.settings.bucket, &key))?;
                Ok(())
            }
        }
    }

    fn registry(&self) -> &Registry {
        match self {
            Storage::Fs(f) => &f.pending,
            Storage::S3(s) => &s.pending,
        }
    }

    /// The snapshot that `name` belongs to is complete (its manifest is stored): an
    /// interruption from now on must not remove it.
    pub fn commit(&self, name: &str) {
        with_registry(self.registry(), |r| r.remove(name));
    }

    /// Removes everything this process started writing and did not commit: aborts open
    /// multipart uploads, deletes `.partial` files and objects stored without their
    /// manifest. Called on SIGTERM/SIGINT after the pipeline was dropped. Returns what
    /// it removed.
    pub async fn cleanup_interrupted(&self) -> Vec<String> {
        let pending = with_registry(self.registry(), std::mem::take);
        let mut removed = Vec::new();
        for (name, state) in pending {
            match (self, state) {
                (Storage::Fs(f), PendingState::Open(_)) => {
                    let partial = f.dir.join(format!("{name}.partial"));
                    if tokio::fs::remove_file(&partial).await.is_ok() {
                        removed.push(partial.display().to_string());
                    }
                }
                (Storage::S3(s), PendingState::Open(Some(upload_id))) => {
                    let key = format!("{}{}", s.settings.prefix, name);
                    abort_s3(&s.client, &s.settings.bucket, &key, &upload_id).await;
                    removed.push(format!(
                        "s3://{}/{key} (upload {upload_id})",
                        s.settings.bucket
                    ));
                }
                (_, PendingState::Open(None)) => {}
                (_, PendingState::Stored) => {
                    if self.delete(&name).await.is_ok() {
                        removed.push(self.location(&name));
                    }
                }
            }
        }
        removed
    }

    /// Removes leftovers of interrupted runs that started before `older_than`:
    /// `.partial` files in the directory, multipart uploads under the prefix (a store
    /// that cannot list them is logged and skipped). Returns what it removed.
    pub async fn remove_stale_uploads(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StorageError> {
        let mut removed = Vec::new();
        match self {
            Storage::Fs(f) => {
                let mut rd = tokio::fs::read_dir(&f.dir)
                    .await
                    .map_err(fs_err("list", &f.dir))?;
                while let Some(entry) = rd.next_entry().await.map_err(fs_err("list", &f.dir))? {
                    let Ok(name) = entry.file_name().into_string() else {
                        continue;
                    };
                    if !name.ends_with(".partial") {
                        continue;
                    }
                    let path = entry.path();
                    let Ok(meta) = tokio::fs::symlink_metadata(&path).await else {
                        continue;
                    };
                    let modified = meta
                        .modified()
                        .ok()
                        .map(chrono::DateTime::<chrono::Utc>::from);
                    if modified.is_some_and(|m| m < older_than) {
                        tokio::fs::remove_file(&path)
                            .await
                            .map_err(fs_err("delete", &path))?;
                        removed.push(path.display().to_string());
                    }
                }
            }
            Storage::S3(s) => {
                let listed = s
                    .client
                    .list_multipart_uploads()
                    .bucket(&s.settings.bucket)
                    .prefix(&s.settings.prefix)
                    .send()
                    .await;
                let out = match listed {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::warn!(
                            bucket = %s.settings.bucket,
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
                    let Some(name) = key.strip_prefix(&s.settings.prefix) else {
                        continue;
                    };
                    let initiated = u
                        .initiated()
                        .and_then(|t| chrono::DateTime::from_timestamp(t.secs(), 0));
                    if name.contains('/') || initiated.is_none_or(|t| t >= older_than) {
                        continue;
                    }
                    abort_s3(&s.client, &s.settings.bucket, key, id).await;
                    removed.push(format!("s3://{}/{key} (upload {id})", s.settings.bucket));
                }
            }
        }
        Ok(removed)
    }

    /// Multipart uploads still open under the prefix (should be none after any run).
    pub async fn open_multipart_uploads(&self) -> Result<Vec<String>, StorageError> {
        match self {
            Storage::Fs(f) => Ok(self
                .list()
                .await?
                .into_iter()
                .filter(|o| o.name.ends_with(".partial"))
                .map(|o| f.dir.join(o.name).display().to_string())
                .collect()),
            Storage::S3(s) => {
                let out = s
                    .client
                    .list_multipart_uploads()
                    .bucket(&s.settings.bucket)
                    .prefix(&s.settings.prefix)
                    .send()
                    .await
                    .map_err(s3_err(
                        "ListMultipartUploads",
                        &s.settings.bucket,
                        &s.settings.prefix,
                    ))?;
                Ok(out
                    .uploads()
                    .iter()
                    .filter_map(|u| u.key().map(str::to_string))
                    .collect())
            }
        }
    }
}

fn sdk_sse(sse: ServerSideEncryption) -> aws_sdk_s3::types::ServerSideEncryption {
    match sse {
        ServerSideEncryption::Aes256 => aws_sdk_s3::types::ServerSideEncryption::Aes256,
        ServerSideEncryption::AwsKms => aws_sdk_s3::types::ServerSideEncryption::AwsKms,
    }
}

fn apply_sse(
    req: aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder,
    settings: &S3Settings,
) -> aws_sdk_s3::operation::create_multipart_upload::builders::CreateMultipartUploadFluentBuilder {
    match settings.sse {
        Some(sse) => {
            let req = req.server_side_encryption(sdk_sse(sse));
            match &settings.kms_key_id {
                Some(k) => req.ssekms_key_id(k),
                None => req,
            }
        }
        None => req,
    }
}

/// Creates `path` 0600, exclusively and without following a symlink; a leftover file
/// (or symlink) of that name from an interrupted run is unlinked first.
async fn create_exclusive(path: &Path) -> Result<tokio::fs::File, StorageError> {
    let mut options = tokio::fs::OpenOptions::new();
    options
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW);
    let open = || options.open(path);
    match open().await {
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // Unlinks the entry itself, never a symlink's target.
            tokio::fs::remove_file(path)
                .await
                .map_err(fs_err("remove stale", path))?;
            open().await.map_err(fs_err("create", path))
        }
        other => other.map_err(fs_err("create", path)),
    }
}

async fn write_synced(path: &Path, body: &[u8]) -> Result<(), StorageError> {
    use tokio::io::AsyncWriteExt;
    let mut f = create_exclusive(path).await?;
    f.write_all(body).await.map_err(fs_err("write", path))?;
    f.sync_all().await.map_err(fs_err("sync", path))?;
    Ok(())
}

async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(fs_err("open", dir))?;
    d.sync_all().await.map_err(fs_err("sync", dir))
}

/// An upload's entry in its store's registry of objects being written.
pub struct Registration {
    registry: Registry,
    name: String,
}

impl Registration {
    fn stored(&self) {
        with_registry(&self.registry, |r| {
            r.insert(self.name.clone(), PendingState::Stored)
        });
    }

    fn forget(&self) {
        with_registry(&self.registry, |r| r.remove(&self.name));
    }
}

/// An object being written.
pub enum Upload {
    /// A `.partial` file renamed into place on `finish`.
    Fs {
        /// Entry in the store's registry.
        registration: Registration,
        /// Open file.
        file: tokio::fs::File,
        /// Temporary path.
        partial: PathBuf,
        /// Final path.
        final_path: PathBuf,
    },
    /// An S3 multipart upload.
    S3 {
        /// Entry in the store's registry.
        registration: Registration,
        /// Client.
        client: Client,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
        /// Multipart upload id.
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
    },
}

impl Upload {
    /// Appends a part. S3 parts (except the last) must be ≥ 5 MiB; waits while
    /// `concurrency` parts are already in flight (bounded memory).
    pub async fn write_part(&mut self, part: Bytes) -> Result<(), StorageError> {
        match self {
            Upload::Fs { file, partial, .. } => {
                use tokio::io::AsyncWriteExt;
                file.write_all(&part)
                    .await
                    .map_err(fs_err("write", partial))
            }
            Upload::S3 {
                client,
                bucket,
                key,
                upload_id,
                next_part,
                tasks,
                parts,
                concurrency,
                in_flight,
                budget,
                ..
            } => {
                while !tasks.is_empty()
                    && (tasks.len() >= *concurrency || *in_flight + part.len() > *budget)
                {
                    if let Some(done) = tasks.join_next().await {
                        let (p, len) = done.map_err(|e| StorageError::Task(e.to_string()))??;
                        *in_flight -= len;
                        parts.push(p);
                    }
                }
                if *next_part as u32 > MAX_PARTS {
                    return Err(StorageError::TooManyParts);
                }
                *in_flight += part.len();
                let number = *next_part;
                *next_part += 1;
                let (client, bucket, key, upload_id) = (
                    client.clone(),
                    bucket.clone(),
                    key.clone(),
                    upload_id.clone(),
                );
                tasks.spawn(async move {
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
                        // SigV4 signs the headers only (UNSIGNED-PAYLOAD): no SHA-256
                        // of every part on the client and again on the server; the
                        // manifest's SHA-256 covers the bytes end to end.
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
        }
    }

    /// Completes the object under its final name.
    pub async fn finish(self) -> Result<(), StorageError> {
        match self {
            Upload::Fs {
                mut file,
                partial,
                final_path,
                registration,
            } => {
                use tokio::io::AsyncWriteExt;
                file.flush().await.map_err(fs_err("write", &partial))?;
                file.sync_all().await.map_err(fs_err("sync", &partial))?;
                drop(file);
                tokio::fs::rename(&partial, &final_path)
                    .await
                    .map_err(fs_err("rename", &final_path))?;
                registration.stored();
                if let Some(dir) = final_path.parent() {
                    sync_dir(dir).await?;
                }
                Ok(())
            }
            Upload::S3 {
                registration,
                client,
                bucket,
                key,
                upload_id,
                mut tasks,
                mut parts,
                ..
            } => {
                let result: Result<(), StorageError> = async {
                    while let Some(done) = tasks.join_next().await {
                        parts.push(done.map_err(|e| StorageError::Task(e.to_string()))??.0);
                    }
                    parts.sort_by_key(|p| p.part_number());
                    client
                        .complete_multipart_upload()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .multipart_upload(
                            CompletedMultipartUpload::builder()
                                .set_parts(Some(parts))
                                .build(),
                        )
                        .send()
                        .await
                        .map_err(s3_err("CompleteMultipartUpload", &bucket, &key))?;
                    Ok(())
                }
                .await;
                if result.is_err() {
                    tasks.abort_all();
                    abort_s3(&client, &bucket, &key, &upload_id).await;
                    registration.forget();
                } else {
                    registration.stored();
                }
                result
            }
        }
    }

    /// Abandons the object: aborts the multipart upload or removes the partial file.
    pub async fn abort(self) {
        match self {
            Upload::Fs {
                file,
                partial,
                registration,
                ..
            } => {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
                registration.forget();
            }
            Upload::S3 {
                registration,
                client,
                bucket,
                key,
                upload_id,
                mut tasks,
                ..
            } => {
                tasks.abort_all();
                while tasks.join_next().await.is_some() {}
                abort_s3(&client, &bucket, &key, &upload_id).await;
                registration.forget();
            }
        }
    }
}

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

/// A streaming object reader.
pub enum ObjectReader {
    /// A file.
    Fs {
        /// Open file.
        file: tokio::fs::File,
        /// Its path.
        path: PathBuf,
    },
    /// An S3 response body.
    S3 {
        /// Body stream.
        body: ByteStream,
        /// Bucket.
        bucket: String,
        /// Key.
        key: String,
    },
}

impl ObjectReader {
    /// The next chunk of bytes, `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        match self {
            ObjectReader::Fs { file, path } => {
                let mut buf = vec![0u8; 1 << 20];
                let n = file.read(&mut buf).await.map_err(fs_err("read", path))?;
                if n == 0 {
                    return Ok(None);
                }
                buf.truncate(n);
                Ok(Some(Bytes::from(buf)))
            }
            ObjectReader::S3 { body, bucket, key } => match body.try_next().await {
                Ok(b) => Ok(b),
                Err(e) => Err(StorageError::S3 {
                    op: "GetObject body",
                    bucket: bucket.clone(),
                    key: key.clone(),
                    message: e.to_string(),
                }),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_single_safe_components() {
        for ok in [
            "a.snap",
            "20260101T000000Z-ab12.manifest.json",
            "x_y-z.verify.json",
        ] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "/etc/passwd",
            "a/b",
            ".hidden",
            "a\\b",
            "a b",
            "nul\0",
        ] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn ten_terabytes_fit_in_ten_thousand_growing_parts() {
        for base in [5usize << 20, 8 << 20, 64 << 20] {
            let plan = PartPlan { base, grows: true };
            let total: u128 = (1..=MAX_PARTS).map(|n| plan.size(n) as u128).sum();
            assert!(total >= 10_000_000_000_000, "{base}: {total}");
            assert_eq!(plan.size(1), base);
            assert_eq!(plan.size(PARTS_BEFORE_GROWTH), base);
            assert!(plan.size(MAX_PARTS) <= MAX_PART_SIZE);
            assert!(plan.size(PARTS_BEFORE_GROWTH + 1) > base);
        }
        // The old fixed 8 MiB: 78 GiB.
        let fixed = PartPlan {
            base: 8 << 20,
            grows: false,
        };
        let total: u64 = (1..=MAX_PARTS).map(|n| fixed.size(n) as u64).sum();
        assert_eq!(total, 10_000 * (8 << 20));
        // The largest part at the largest allowed base stays below S3's limit.
        let big = PartPlan {
            base: 64 << 20,
            grows: true,
        };
        assert!(big.size(MAX_PARTS) < MAX_PART_SIZE);
    }
}
