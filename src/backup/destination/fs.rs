//! A directory of snapshots: `destination.path` (a directory the CLI or the Job
//! already sees), `destination.persistentVolumeClaim` (mounted into the Job at
//! [`PVC_MOUNT`], then a path) or `--dir`.
//!
//! Files are created 0600 (directories 0700), exclusively and without following
//! symlinks; every object (data, manifest, verification record) is written to a
//! temporary name of its own (`<name>.<random>.partial`, see [`super::partial_name`]),
//! flushed, fsynced and renamed into place, so a failed write (ENOSPC) never replaces
//! what was there and two writers never share a temporary file. A run holds an
//! exclusive `flock` on `<id>.lock` ([`Storage::lock`]) while it writes a snapshot.

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{
    Backend, BackendError, ChunkSource, DestinationArgs, JobMounts, Kind, LockGuard, ObjectInfo,
    ObjectReader, PartPlan, Put, Registration, Storage, StorageError, Upload, UploadSink,
    VolumeMount,
};
use crate::crd::backup_schedule::Destination;

/// Where a `persistentVolumeClaim` destination is mounted in the Job.
pub const PVC_MOUNT: &str = "/var/lib/palisade/backups";

/// The flag of a directory destination.
#[derive(clap::Args, Debug)]
#[group(skip)]
pub struct FsArgs {
    /// Store snapshots in this directory.
    #[arg(long, global = true, conflicts_with = "s3_bucket")]
    pub dir: Option<PathBuf>,
}

/// A filesystem call that failed.
#[derive(Debug, thiserror::Error)]
#[error("{op} {path}: {source}")]
pub struct FsError {
    /// What was attempted.
    pub op: &'static str,
    /// On which path.
    pub path: String,
    /// The OS error.
    pub source: std::io::Error,
}

impl BackendError for FsError {
    fn reason(&self) -> &'static str {
        "FilesystemError"
    }
}

fn fs_err<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StorageError + 'a {
    move |source| {
        FsError {
            op,
            path: path.display().to_string(),
            source,
        }
        .into()
    }
}

/// The directory kind (`path`, `persistentVolumeClaim`, `--dir`).
pub(super) struct Fs;

impl Kind for Fs {
    fn key(&self, ns: &str, d: &Destination) -> Option<String> {
        if let Some(p) = &d.persistent_volume_claim {
            return Some(format!(
                "pvc://{ns}/{}/{}",
                p.claim_name,
                p.sub_path.as_deref().unwrap_or("").trim_matches('/')
            ));
        }
        d.path
            .as_ref()
            .map(|p| format!("path://{ns}/{}", p.trim_end_matches('/')))
    }

    fn job_mounts(&self, d: &Destination, out: &mut JobMounts) {
        if let Some(pvc) = &d.persistent_volume_claim {
            out.volumes.push(VolumeMount {
                volume: json!({
                    "name": "backups", "persistentVolumeClaim": {"claimName": pvc.claim_name},
                }),
                mount: json!({"name": "backups", "mountPath": PVC_MOUNT}),
            });
        }
    }

    fn job_destination(&self, d: &mut Destination) {
        if let Some(pvc) = d.persistent_volume_claim.take() {
            let path = match pvc.sub_path.as_deref().map(|p| p.trim_matches('/')) {
                Some(sub) if !sub.is_empty() => format!("{PVC_MOUNT}/{sub}"),
                _ => PVC_MOUNT.to_string(),
            };
            d.path = Some(path);
        }
    }

    fn named_by_flags(&self, args: &DestinationArgs) -> bool {
        args.fs.dir.is_some()
    }

    fn open<'a>(
        &'a self,
        args: &'a DestinationArgs,
        d: Option<&'a Destination>,
    ) -> BoxFuture<'a, Result<Option<Storage>, StorageError>> {
        async move {
            if let Some(dir) = &args.fs.dir {
                return Storage::filesystem(dir.clone()).await.map(Some);
            }
            if let Some(path) = d.and_then(|d| d.path.clone()) {
                return Storage::filesystem(path).await.map(Some);
            }
            if d.is_some_and(|d| d.persistent_volume_claim.is_some()) {
                return Err(StorageError::Config(
                    "persistentVolumeClaim destinations are mounted by the Job; outside Kubernetes use --dir".into(),
                ));
            }
            Ok(None)
        }
        .boxed()
    }
}

impl Storage {
    /// A filesystem store. The directory is created (0700) by the first write when
    /// missing, never by a read: a mistyped `--dir` given to `list`, `restore`,
    /// `verify` or `prune` fails instead of leaving an empty directory behind.
    pub async fn filesystem(dir: impl Into<PathBuf>) -> Result<Self, StorageError> {
        Ok(Storage::new(FsStore { dir: dir.into() }))
    }
}

/// A directory of snapshots.
#[derive(Clone, Debug)]
struct FsStore {
    dir: PathBuf,
}

impl FsStore {
    /// Creates the directory when missing (writes only).
    async fn ensure_dir(&self) -> Result<(), StorageError> {
        if tokio::fs::metadata(&self.dir).await.is_err() {
            tokio::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&self.dir)
                .await
                .map_err(fs_err("create directory", &self.dir))?;
        }
        Ok(())
    }

    async fn list(&self) -> Result<Vec<ObjectInfo>, StorageError> {
        let mut out = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(fs_err("list", &self.dir))?;
        while let Some(entry) = rd.next_entry().await.map_err(fs_err("list", &self.dir))? {
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

    async fn remove_stale_uploads(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StorageError> {
        let mut removed = Vec::new();
        let mut rd = tokio::fs::read_dir(&self.dir)
            .await
            .map_err(fs_err("list", &self.dir))?;
        while let Some(entry) = rd.next_entry().await.map_err(fs_err("list", &self.dir))? {
            let Ok(name) = entry.file_name().into_string() else {
                continue;
            };
            // Only this engine's own temporary files: never a foreign `*.partial`.
            if !super::is_partial_name(&name) {
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
        Ok(removed)
    }
}

impl Backend for FsStore {
    fn part_plan(&self) -> PartPlan {
        PartPlan {
            base: 8 << 20,
            grows: false,
        }
    }

    fn location(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn key(&self, name: &str) -> String {
        self.dir.join(name).display().to_string()
    }

    fn begin_upload<'a>(
        &'a self,
        name: &'a str,
        registration: Registration,
    ) -> BoxFuture<'a, Result<Upload, StorageError>> {
        async move {
            self.ensure_dir().await?;
            let final_path = self.dir.join(name);
            let partial_name = super::partial_name(name);
            let partial = self.dir.join(&partial_name);
            let file = create_exclusive(&partial).await?;
            registration.open(Some(partial_name));
            Ok(Upload(Box::new(FsUpload {
                file,
                partial,
                final_path,
                registration,
            })))
        }
        .boxed()
    }

    fn put_small<'a>(
        &'a self,
        name: &'a str,
        body: Vec<u8>,
        mode: Put,
    ) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            self.ensure_dir().await?;
            let path = self.dir.join(name);
            let tmp = self.dir.join(super::partial_name(name));
            if let Err(e) = write_synced(&tmp, &body).await {
                // The object under `name` (e.g. the previous record) stays as it was.
                let _ = tokio::fs::remove_file(&tmp).await;
                return Err(e);
            }
            let placed = match mode {
                Put::Replace => tokio::fs::rename(&tmp, &path)
                    .await
                    .map_err(fs_err("rename", &path)),
                // A hard link fails atomically when the name exists.
                Put::CreateOnly => match tokio::fs::hard_link(&tmp, &path).await {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        Err(StorageError::Busy(path.display().to_string()))
                    }
                    Err(e) => Err(fs_err("link", &path)(e)),
                },
            };
            if placed.is_err() || mode == Put::CreateOnly {
                let _ = tokio::fs::remove_file(&tmp).await;
            }
            placed?;
            sync_dir(&self.dir).await
        }
        .boxed()
    }

    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>> {
        async move {
            let path = self.dir.join(name);
            let opened = tokio::fs::OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .await;
            match opened {
                Ok(file) => Ok(ObjectReader(Box::new(FsReader { file, path }))),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    Err(StorageError::NotFound(path.display().to_string()))
                }
                Err(e) => Err(fs_err("open", &path)(e)),
            }
        }
        .boxed()
    }

    fn list(&self) -> BoxFuture<'_, Result<Vec<ObjectInfo>, StorageError>> {
        FsStore::list(self).boxed()
    }

    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StorageError>> {
        async move {
            let path = self.dir.join(name);
            match tokio::fs::remove_file(&path).await {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(fs_err("delete", &path)(e)),
            }
        }
        .boxed()
    }

    fn remove_open<'a>(
        &'a self,
        _name: &'a str,
        token: Option<String>,
    ) -> BoxFuture<'a, Option<String>> {
        async move {
            // The token is this upload's own temporary name.
            let partial = self.dir.join(token?);
            tokio::fs::remove_file(&partial)
                .await
                .ok()
                .map(|()| partial.display().to_string())
        }
        .boxed()
    }

    fn remove_stale_uploads(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>> {
        FsStore::remove_stale_uploads(self, older_than).boxed()
    }

    fn lock<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<LockGuard, StorageError>> {
        async move {
            self.ensure_dir().await?;
            let path = self.dir.join(name);
            let lock = tokio::task::spawn_blocking(move || lock_file(&path))
                .await
                .map_err(|e| StorageError::Task(e.to_string()))??;
            Ok(LockGuard(Some(Box::new(lock))))
        }
        .boxed()
    }
}

/// Creates `path` 0600, exclusively and without following a symlink. Temporary names
/// are random ([`super::partial_name`]), so an existing entry is never ours to unlink.
async fn create_exclusive(path: &Path) -> Result<tokio::fs::File, StorageError> {
    tokio::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .await
        .map_err(fs_err("create", path))
}

/// An exclusive `flock` on `<dir>/<name>`, released (and the file removed) on drop.
/// The kernel releases it when the process dies, so a crashed run never blocks the
/// next one.
struct FsLock {
    _file: std::fs::File,
    path: PathBuf,
}

impl Drop for FsLock {
    fn drop(&mut self) {
        // Unlink while still holding the lock; a waiter that opened the old file sees
        // that it is no longer the one at `path` and retries.
        let _ = std::fs::remove_file(&self.path);
    }
}

fn lock_file(path: &Path) -> Result<FsLock, StorageError> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
    for _ in 0..16 {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(path)
            .map_err(fs_err("create", path))?;
        // SAFETY: flock on a descriptor we own; it only takes an advisory lock.
        let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(StorageError::Busy(path.display().to_string()));
            }
            return Err(fs_err("lock", path)(e));
        }
        let held = file.metadata().map_err(fs_err("stat", path))?;
        match std::fs::symlink_metadata(path) {
            Ok(now) if now.dev() == held.dev() && now.ino() == held.ino() => {
                return Ok(FsLock {
                    _file: file,
                    path: path.to_path_buf(),
                });
            }
            // The holder removed it between our open and our lock: try again.
            _ => continue,
        }
    }
    Err(StorageError::Busy(path.display().to_string()))
}

/// Writes `body` to a new file and makes it durable. `flush` comes before `sync_all`:
/// tokio's `File` hands a write to a blocking thread and reports that write's error
/// only to the next write or flush (`sync_all` does not), so without it an ENOSPC
/// would be lost and an empty file renamed into place.
async fn write_synced(path: &Path, body: &[u8]) -> Result<(), StorageError> {
    let mut f = create_exclusive(path).await?;
    f.write_all(body).await.map_err(fs_err("write", path))?;
    f.flush().await.map_err(fs_err("write", path))?;
    f.sync_all().await.map_err(fs_err("sync", path))?;
    Ok(())
}

async fn sync_dir(dir: &Path) -> Result<(), StorageError> {
    let d = tokio::fs::File::open(dir)
        .await
        .map_err(fs_err("open", dir))?;
    d.sync_all().await.map_err(fs_err("sync", dir))
}

/// A `.partial` file renamed into place on `finish`.
struct FsUpload {
    registration: Registration,
    file: tokio::fs::File,
    partial: PathBuf,
    final_path: PathBuf,
}

impl UploadSink for FsUpload {
    fn write_part(&mut self, part: Bytes) -> BoxFuture<'_, Result<(), StorageError>> {
        async move {
            self.file
                .write_all(&part)
                .await
                .map_err(fs_err("write", &self.partial))
        }
        .boxed()
    }

    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>> {
        async move {
            let FsUpload {
                registration,
                mut file,
                partial,
                final_path,
            } = *self;
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
        .boxed()
    }

    fn abort(self: Box<Self>) -> BoxFuture<'static, ()> {
        async move {
            let FsUpload {
                registration,
                file,
                partial,
                ..
            } = *self;
            drop(file);
            let _ = tokio::fs::remove_file(&partial).await;
            registration.forget();
        }
        .boxed()
    }
}

/// A file being read.
struct FsReader {
    file: tokio::fs::File,
    path: PathBuf,
}

impl ChunkSource for FsReader {
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, StorageError>> {
        async move {
            let mut buf = vec![0u8; 1 << 20];
            let n = self
                .file
                .read(&mut buf)
                .await
                .map_err(fs_err("read", &self.path))?;
            if n == 0 {
                return Ok(None);
            }
            buf.truncate(n);
            Ok(Some(Bytes::from(buf)))
        }
        .boxed()
    }
}
