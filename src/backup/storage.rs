//! Where snapshots live: a filesystem directory or an S3 bucket + prefix.
//!
//! Large objects are written through an [`Upload`] (S3 multipart with bounded
//! concurrency, or a `.partial` file renamed into place) that is aborted on failure, so
//! an interrupted run leaves no orphaned multipart upload and no half object under the
//! final name. Small objects (manifests, verification records) are put whole.

use std::path::{Path, PathBuf};
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
}

/// An S3 bucket + prefix.
#[derive(Clone)]
pub struct S3Store {
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
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(fs_err("create directory", &dir))?;
        Ok(Storage::Fs(FsStore { dir }))
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
        let mut conf = aws_sdk_s3::config::Builder::from(&shared)
            .force_path_style(settings.force_path_style)
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
        }))
    }

    /// Multipart part size (S3) or write buffer size (filesystem), in bytes.
    pub fn part_size(&self) -> usize {
        match self {
            Storage::Fs(_) => 8 << 20,
            Storage::S3(s) => s.settings.part_size,
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
        match self {
            Storage::Fs(f) => {
                let final_path = f.dir.join(name);
                let partial = f.dir.join(format!("{name}.partial"));
                let file = tokio::fs::File::create(&partial)
                    .await
                    .map_err(fs_err("create", &partial))?;
                Ok(Upload::Fs {
                    file,
                    partial,
                    final_path,
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
                Ok(Upload::S3 {
                    client: s.client.clone(),
                    bucket: s.settings.bucket.clone(),
                    key,
                    upload_id,
                    next_part: 1,
                    tasks: JoinSet::new(),
                    parts: Vec::new(),
                    concurrency: s.settings.concurrency,
                })
            }
        }
    }

    /// Writes a small object whole (atomically on the filesystem).
    pub async fn put_small(&self, name: &str, body: Vec<u8>) -> Result<(), StorageError> {
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
        match self {
            Storage::Fs(f) => {
                let path = f.dir.join(name);
                match tokio::fs::File::open(&path).await {
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

async fn write_synced(path: &Path, body: &[u8]) -> Result<(), StorageError> {
    use tokio::io::AsyncWriteExt;
    let mut f = tokio::fs::File::create(path)
        .await
        .map_err(fs_err("create", path))?;
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

/// An object being written.
pub enum Upload {
    /// A `.partial` file renamed into place on `finish`.
    Fs {
        /// Open file.
        file: tokio::fs::File,
        /// Temporary path.
        partial: PathBuf,
        /// Final path.
        final_path: PathBuf,
    },
    /// An S3 multipart upload.
    S3 {
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
        tasks: JoinSet<Result<CompletedPart, StorageError>>,
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
            } => {
                while tasks.len() >= *concurrency {
                    if let Some(done) = tasks.join_next().await {
                        parts.push(done.map_err(|e| StorageError::Task(e.to_string()))??);
                    }
                }
                if *next_part > 10_000 {
                    return Err(StorageError::TooManyParts);
                }
                let number = *next_part;
                *next_part += 1;
                let (client, bucket, key, upload_id) = (
                    client.clone(),
                    bucket.clone(),
                    key.clone(),
                    upload_id.clone(),
                );
                tasks.spawn(async move {
                    let len = part.len() as i64;
                    let out = client
                        .upload_part()
                        .bucket(&bucket)
                        .key(&key)
                        .upload_id(&upload_id)
                        .part_number(number)
                        .content_length(len)
                        .body(ByteStream::from(part))
                        .send()
                        .await
                        .map_err(s3_err("UploadPart", &bucket, &key))?;
                    Ok(CompletedPart::builder()
                        .part_number(number)
                        .set_e_tag(out.e_tag().map(str::to_string))
                        .set_checksum_crc32(out.checksum_crc32().map(str::to_string))
                        .build())
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
            } => {
                use tokio::io::AsyncWriteExt;
                file.flush().await.map_err(fs_err("write", &partial))?;
                file.sync_all().await.map_err(fs_err("sync", &partial))?;
                drop(file);
                tokio::fs::rename(&partial, &final_path)
                    .await
                    .map_err(fs_err("rename", &final_path))?;
                if let Some(dir) = final_path.parent() {
                    sync_dir(dir).await?;
                }
                Ok(())
            }
            Upload::S3 {
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
                        parts.push(done.map_err(|e| StorageError::Task(e.to_string()))??);
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
                }
                result
            }
        }
    }

    /// Abandons the object: aborts the multipart upload or removes the partial file.
    pub async fn abort(self) {
        match self {
            Upload::Fs { file, partial, .. } => {
                drop(file);
                let _ = tokio::fs::remove_file(&partial).await;
            }
            Upload::S3 {
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
