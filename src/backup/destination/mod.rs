//! Where snapshots live, one file per backend: [`fs`] (a directory, or a
//! PersistentVolumeClaim mounted into the Job as one) and [`s3`] (a bucket + prefix).
//!
//! A backend owns everything about its kind of destination, so that adding one is a
//! new file here plus its field in [`Destination`]:
//! - what names its place ([`key`]: two schedules writing the same place collide),
//! - what a backup Job needs to reach it ([`job_mounts`], [`job_destination`]),
//! - its command-line flags ([`DestinationArgs`]) and how flags and the config file
//!   open it ([`open`]),
//! - its object operations (the private `Backend` trait behind [`Storage`]).
//!
//! What every backend shares lives here: the object-name check, the registry of
//! objects being written, and the pipeline-facing [`Storage`], [`Upload`] and
//! [`ObjectReader`].
//!
//! Large objects are written through an [`Upload`] (S3 multipart with bounded
//! concurrency, or a `.partial` file renamed into place) that is aborted on failure, so
//! an interrupted run leaves no orphaned multipart upload and no half object under the
//! final name. Small objects (manifests, verification records) are put whole.
//!
//! Every object name is checked ([`check_name`]): one path component of
//! `[A-Za-z0-9._-]`, never `..`, `/` or hidden, so nothing read from storage can point
//! outside it. Every upload this process starts is registered until its snapshot is
//! committed, so an interrupted run can remove what it left
//! ([`Storage::cleanup_interrupted`]).

pub mod fs;
pub mod s3;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures::future::BoxFuture;
use serde_json::Value;

use crate::crd::backup_schedule::Destination;

/// Every backend, in precedence order: when flags or a config file name more than one
/// destination, the first one here wins (after a backend named on the command line).
/// Registering a backend: its `pub mod` line above, its entry here and its flags in
/// [`DestinationArgs`].
static KINDS: &[&dyn Kind] = &[&s3::S3, &fs::Fs];

/// The destination flags of `palisade backup …`, one group per backend.
#[derive(clap::Args, Debug)]
#[group(skip)]
pub struct DestinationArgs {
    // `--dir`.
    #[command(flatten)]
    pub fs: fs::FsArgs,
    // `--s3-*`.
    #[command(flatten)]
    pub s3: s3::S3Args,
}

/// Errors of the storage backends.
#[derive(Debug)]
pub enum StorageError {
    /// A backend's own failure (a filesystem call, an S3 request, …): its message,
    /// source and reason are the backend error's.
    Backend(Box<dyn BackendError>),
    /// The object does not exist.
    NotFound(String),
    /// More parts than S3 allows.
    TooManyParts,
    /// An upload task panicked or was cancelled.
    Task(String),
    /// An object name that is not a single safe path component.
    UnsafeName(String),
    /// Flags and config file do not describe a usable destination.
    Config(String),
    /// Another run with the same snapshot id holds its lock (directory), or stored its
    /// data first (S3: create-only completion refused).
    Busy(String),
}

impl std::fmt::Display for StorageError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            StorageError::Backend(e) => e.fmt(f),
            StorageError::NotFound(o) => write!(f, "object {o} not found"),
            StorageError::TooManyParts => {
                f.write_str("snapshot needs more than 10000 parts; raise the part size")
            }
            StorageError::Task(e) => write!(f, "upload task failed: {e}"),
            StorageError::UnsafeName(n) => write!(f, "unsafe object name {n:?} refused"),
            StorageError::Config(m) => f.write_str(m),
            StorageError::Busy(l) => write!(
                f,
                "another run with this snapshot id is in progress or stored it first ({l}); refused: use another id, or remove a leftover object of an interrupted run"
            ),
        }
    }
}

impl std::error::Error for StorageError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            // Transparent: the backend error's own source (e.g. the OS error).
            StorageError::Backend(e) => e.source(),
            _ => None,
        }
    }
}

impl StorageError {
    /// Short bounded reason.
    pub fn reason(&self) -> &'static str {
        match self {
            StorageError::Backend(e) => e.reason(),
            StorageError::NotFound(_) => "NotFound",
            StorageError::TooManyParts => "TooManyParts",
            StorageError::Task(_) => "UploadTaskFailed",
            StorageError::UnsafeName(_) => "UnsafeName",
            StorageError::Config(_) => "InvalidConfig",
            StorageError::Busy(_) => "Busy",
        }
    }
}

/// A backend's error type: its message, and a bounded reason for results and metrics.
pub trait BackendError: std::error::Error + Send + Sync + 'static {
    /// Short bounded reason (`FilesystemError`, `S3Error`, …).
    fn reason(&self) -> &'static str;
}

impl<E: BackendError> From<E> for StorageError {
    fn from(e: E) -> Self {
        StorageError::Backend(Box::new(e))
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

/// The temporary name an object is written under before it is renamed into place:
/// `<name>.<8 random hex>.partial`, unique per write, so that two writers of the same
/// name never share (or unlink) one temporary file.
pub fn partial_name(name: &str) -> String {
    use rand::Rng;
    format!("{name}.{:08x}.partial", rand::rng().random::<u32>())
}

/// Whether `name` is a temporary name made by [`partial_name`] (and so this engine's to
/// remove when stale); anything else ending in `.partial` is left alone.
pub fn is_partial_name(name: &str) -> bool {
    let Some(stem) = name.strip_suffix(".partial") else {
        return false;
    };
    let Some((object, token)) = stem.rsplit_once('.') else {
        return false;
    };
    token.len() == 8
        && token.bytes().all(|b| b.is_ascii_hexdigit())
        && check_name(object).is_ok()
        && [".snap", ".manifest.json", ".verify.json"]
            .iter()
            .any(|s| object.ends_with(s))
}

/// How a small object is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Replace what is there (verification records).
    Replace,
    /// Only if nothing is there (manifests): S3 `If-None-Match: *`, a hard link in a
    /// directory.
    CreateOnly,
}

/// An exclusive lock held by a run while it writes one snapshot ([`Storage::lock`]);
/// released when dropped. `None` where the backend has no lock (S3).
pub struct LockGuard(Option<Box<dyn Send + Sync>>);

impl LockGuard {
    /// Whether a lock is really held (false on backends without one).
    pub fn held(&self) -> bool {
        self.0.is_some()
    }
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

/// One listed object.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    /// Name relative to the prefix.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

// ---------------------------------------------------------------------------------
// Before anything is opened: the CRD's destination, the Job, the command line.
// ---------------------------------------------------------------------------------

/// One kind of destination, as the controller, the Job builder and the CLI see it.
trait Kind: Sync {
    /// Names the place `d` stores to (equal keys: the same place), `None` when `d` is
    /// not of this kind. `ns` is the schedule's namespace.
    fn key(&self, ns: &str, d: &Destination) -> Option<String>;
    /// Adds the Secret files and volumes a backup Job needs to reach `d`.
    fn job_mounts(&self, d: &Destination, out: &mut JobMounts);
    /// Rewrites `d` into what the Job's config file says (e.g. a PVC becomes the
    /// path it is mounted at).
    fn job_destination(&self, d: &mut Destination);
    /// The TCP endpoints a backup Job connects to for `d` (`(host, port)`; an
    /// empty host: any destination), which its egress NetworkPolicy allows.
    /// Nothing for a destination the Job mounts.
    fn job_egress(&self, _d: &Destination) -> Vec<(String, u16)> {
        Vec::new()
    }
    /// Whether the command line names this kind (it then wins over the config file).
    fn named_by_flags(&self, args: &DestinationArgs) -> bool;
    /// Opens the destination flags and config describe, `None` when they do not
    /// describe one of this kind.
    fn open<'a>(
        &'a self,
        args: &'a DestinationArgs,
        d: Option<&'a Destination>,
    ) -> BoxFuture<'a, Result<Option<Storage>, StorageError>>;
}

/// The key naming the place `d` stores to (the controller refuses a second schedule
/// with the same key): `s3://<endpoint|aws>/<bucket>/<prefix>`,
/// `pvc://<ns>/<claim>/<subPath>` or `path://<ns>/<path>`; `None` without a
/// destination.
pub fn key(ns: &str, d: &Destination) -> Option<String> {
    KINDS.iter().find_map(|k| k.key(ns, d))
}

/// A Secret a backup Job mounts for a destination, and the flag that receives it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretMount {
    /// Volume name (also the directory under the Job's secrets directory).
    pub volume: &'static str,
    /// Secret name.
    pub secret: String,
    /// `(key in the Secret, file name in the volume)`.
    pub items: Vec<(String, &'static str)>,
    /// The flag that takes the path.
    pub flag: &'static str,
    /// The file the flag names, or `None` when it takes the whole directory.
    pub file: Option<&'static str>,
}

/// A volume (other than Secrets) a backup Job mounts for a destination.
#[derive(Clone, Debug, PartialEq)]
pub struct VolumeMount {
    /// The pod's volume entry.
    pub volume: Value,
    /// The container's mount entry.
    pub mount: Value,
}

/// What a backup Job needs to reach a destination.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct JobMounts {
    /// Secrets mounted as files.
    pub secrets: Vec<SecretMount>,
    /// Other volumes.
    pub volumes: Vec<VolumeMount>,
}

/// The Secret files and volumes a backup Job mounts for `d`.
pub fn job_mounts(d: &Destination) -> JobMounts {
    let mut out = JobMounts::default();
    for k in KINDS {
        k.job_mounts(d, &mut out);
    }
    out
}

/// The TCP endpoints a backup Job connects to for `d`: `(host, port)`, an
/// empty host meaning any destination (see [`crate::resources::backup_network`]).
pub fn job_egress(d: &Destination) -> Vec<(String, u16)> {
    KINDS.iter().flat_map(|k| k.job_egress(d)).collect()
}

/// `d` as the Job's config file states it (mounted destinations become paths).
pub fn job_destination(d: &Destination) -> Destination {
    let mut d = d.clone();
    for k in KINDS {
        k.job_destination(&mut d);
    }
    d
}

/// Opens the destination: the backend the command line names (`--dir`,
/// `--s3-bucket`), else the config file's, each completed by the other's settings.
pub async fn open(
    args: &DestinationArgs,
    d: Option<&Destination>,
) -> Result<Storage, StorageError> {
    let named = KINDS.iter().find(|k| k.named_by_flags(args));
    for kind in named.into_iter().chain(KINDS) {
        if let Some(storage) = kind.open(args, d).await? {
            return Ok(storage);
        }
    }
    Err(StorageError::Config(
        "no destination: give --dir, --s3-bucket or a config file".into(),
    ))
}

// ---------------------------------------------------------------------------------
// After opening: objects.
// ---------------------------------------------------------------------------------

/// An opened backend's object operations. Names are checked by [`Storage`] first.
trait Backend: Send + Sync + std::fmt::Debug {
    /// Multipart part sizes (growing) or the write buffer size (fixed).
    fn part_plan(&self) -> PartPlan;
    /// Human-readable location of an object (`s3://bucket/key` or a path).
    fn location(&self, name: &str) -> String;
    /// Object key or path of an object.
    fn key(&self, name: &str) -> String;
    /// Starts writing a large object; calls `registration.open(..)` once started.
    fn begin_upload<'a>(
        &'a self,
        name: &'a str,
        registration: Registration,
    ) -> BoxFuture<'a, Result<Upload, StorageError>>;
    /// Writes a small object whole; with [`Put::CreateOnly`] fails
    /// [`StorageError::Busy`] when the object exists.
    fn put_small<'a>(
        &'a self,
        name: &'a str,
        body: Vec<u8>,
        mode: Put,
    ) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Opens an object for streaming reads ([`StorageError::NotFound`] when missing).
    fn open<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<ObjectReader, StorageError>>;
    /// Objects directly under the destination.
    fn list(&self) -> BoxFuture<'_, Result<Vec<ObjectInfo>, StorageError>>;
    /// Deletes an object (missing is not an error).
    fn delete<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<(), StorageError>>;
    /// Removes what an upload of `name` that is still open left (its `token`: see
    /// [`Registration::open`]); returns what it removed.
    fn remove_open<'a>(
        &'a self,
        name: &'a str,
        token: Option<String>,
    ) -> BoxFuture<'a, Option<String>>;
    /// Removes leftovers of interrupted runs started before `older_than`.
    fn remove_stale_uploads(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> BoxFuture<'_, Result<Vec<String>, StorageError>>;
    /// Takes the exclusive lock `name`, failing with [`StorageError::Busy`] at once when
    /// another process holds it. The default: no lock (see `docs/BACKUP.md`).
    fn lock<'a>(&'a self, _name: &'a str) -> BoxFuture<'a, Result<LockGuard, StorageError>> {
        Box::pin(async { Ok(LockGuard(None)) })
    }
}

/// State of an object this process is writing.
#[derive(Clone, Debug, PartialEq, Eq)]
enum PendingState {
    /// Being written; the backend's token for it (the S3 multipart upload id).
    Open(Option<String>),
    /// Stored under its final name, but its snapshot is not committed yet.
    Stored,
}

type Registry = Arc<Mutex<BTreeMap<String, PendingState>>>;

fn with_registry<T>(r: &Registry, f: impl FnOnce(&mut BTreeMap<String, PendingState>) -> T) -> T {
    let mut guard = r.lock().unwrap_or_else(|e| e.into_inner());
    f(&mut guard)
}

/// An upload's entry in its store's registry of objects being written.
pub struct Registration {
    registry: Registry,
    name: String,
}

impl Registration {
    /// The upload started; `token` is what [`Backend::remove_open`] needs to undo it.
    fn open(&self, token: Option<String>) {
        with_registry(&self.registry, |r| {
            r.insert(self.name.clone(), PendingState::Open(token))
        });
    }

    /// The object is stored under its final name.
    fn stored(&self) {
        with_registry(&self.registry, |r| {
            r.insert(self.name.clone(), PendingState::Stored)
        });
    }

    /// The upload was abandoned and cleaned up.
    fn forget(&self) {
        with_registry(&self.registry, |r| r.remove(&self.name));
    }
}

/// An opened destination.
#[derive(Clone, Debug)]
pub struct Storage {
    backend: Arc<dyn Backend>,
    pending: Registry,
}

impl Storage {
    fn new(backend: impl Backend + 'static) -> Self {
        Storage {
            backend: Arc::new(backend),
            pending: Registry::default(),
        }
    }

    /// Multipart part sizes (S3, growing) or the write buffer size (filesystem).
    pub fn part_plan(&self) -> PartPlan {
        self.backend.part_plan()
    }

    /// Human-readable location of an object (`s3://bucket/key` or a path).
    pub fn location(&self, name: &str) -> String {
        self.backend.location(name)
    }

    /// Object key (S3) or path (filesystem) of an object.
    pub fn key(&self, name: &str) -> String {
        self.backend.key(name)
    }

    /// Starts writing a large object.
    pub async fn begin_upload(&self, name: &str) -> Result<Upload, StorageError> {
        check_name(name)?;
        let registration = Registration {
            registry: self.pending.clone(),
            name: name.to_string(),
        };
        self.backend.begin_upload(name, registration).await
    }

    /// Writes a small object whole (atomically on the filesystem), replacing it.
    pub async fn put_small(&self, name: &str, body: Vec<u8>) -> Result<(), StorageError> {
        check_name(name)?;
        self.backend.put_small(name, body, Put::Replace).await
    }

    /// Writes a small object whole only if it does not exist yet ([`StorageError::Busy`]
    /// otherwise): a manifest, so that of two runs with one id only one commits.
    pub async fn put_new(&self, name: &str, body: Vec<u8>) -> Result<(), StorageError> {
        check_name(name)?;
        self.backend.put_small(name, body, Put::CreateOnly).await
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
        self.backend.open(name).await
    }

    /// Lists objects directly under the prefix (names relative to it).
    pub async fn list(&self) -> Result<Vec<ObjectInfo>, StorageError> {
        self.backend.list().await
    }

    /// Deletes an object (missing objects are not an error).
    pub async fn delete(&self, name: &str) -> Result<(), StorageError> {
        check_name(name)?;
        self.backend.delete(name).await
    }

    /// The snapshot that `name` belongs to is complete (its manifest is stored): an
    /// interruption from now on must not remove it.
    pub fn commit(&self, name: &str) {
        with_registry(&self.pending, |r| r.remove(name));
    }

    /// Removes everything this process started writing and did not commit: aborts open
    /// multipart uploads, deletes `.partial` files and objects stored without their
    /// manifest. Called on SIGTERM/SIGINT after the pipeline was dropped. Returns what
    /// it removed.
    pub async fn cleanup_interrupted(&self) -> Vec<String> {
        let pending = with_registry(&self.pending, std::mem::take);
        let mut removed = Vec::new();
        for (name, state) in pending {
            match state {
                PendingState::Open(token) => {
                    removed.extend(self.backend.remove_open(&name, token).await);
                }
                PendingState::Stored => {
                    if self.delete(&name).await.is_ok() {
                        removed.push(self.location(&name));
                    }
                }
            }
        }
        removed
    }

    /// Takes the exclusive lock `name` (one safe name, e.g. `<id>.lock`) for as long as
    /// the guard lives; [`StorageError::Busy`] when another process holds it.
    pub async fn lock(&self, name: &str) -> Result<LockGuard, StorageError> {
        check_name(name)?;
        self.backend.lock(name).await
    }

    /// Removes leftovers of interrupted runs that started before `older_than`:
    /// this engine's own `.partial` files in the directory, multipart uploads under the prefix (a store
    /// that cannot list them is logged and skipped). Returns what it removed.
    pub async fn remove_stale_uploads(
        &self,
        older_than: chrono::DateTime<chrono::Utc>,
    ) -> Result<Vec<String>, StorageError> {
        self.backend.remove_stale_uploads(older_than).await
    }
}

/// How a backend writes one large object.
trait UploadSink: Send {
    /// Appends a part.
    fn write_part(&mut self, part: Bytes) -> BoxFuture<'_, Result<(), StorageError>>;
    /// Completes the object under its final name.
    fn finish(self: Box<Self>) -> BoxFuture<'static, Result<(), StorageError>>;
    /// Abandons the object.
    fn abort(self: Box<Self>) -> BoxFuture<'static, ()>;
}

/// An object being written.
pub struct Upload(Box<dyn UploadSink>);

impl Upload {
    /// Appends a part. S3 parts (except the last) must be ≥ 5 MiB; waits while
    /// `concurrency` parts are already in flight (bounded memory).
    pub async fn write_part(&mut self, part: Bytes) -> Result<(), StorageError> {
        self.0.write_part(part).await
    }

    /// Completes the object under its final name.
    pub async fn finish(self) -> Result<(), StorageError> {
        self.0.finish().await
    }

    /// Abandons the object: aborts the multipart upload or removes the partial file.
    pub async fn abort(self) {
        self.0.abort().await
    }
}

/// How a backend streams one object.
trait ChunkSource: Send {
    /// The next chunk of bytes, `None` at the end.
    fn next_chunk(&mut self) -> BoxFuture<'_, Result<Option<Bytes>, StorageError>>;
}

/// A streaming object reader.
pub struct ObjectReader(Box<dyn ChunkSource>);

impl ObjectReader {
    /// The next chunk of bytes, `None` at the end.
    pub async fn next_chunk(&mut self) -> Result<Option<Bytes>, StorageError> {
        self.0.next_chunk().await
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

    /// Messages and reasons are what results, Events and metrics show: the same for
    /// a backend's error as before backends had their own types.
    #[test]
    fn errors_keep_their_messages_and_reasons() {
        use std::error::Error as _;
        let os = || std::io::Error::from_raw_os_error(2);
        let table: Vec<(StorageError, &str, &str)> = vec![
            (
                fs::FsError {
                    op: "create",
                    path: "/b/x.partial".into(),
                    source: os(),
                }
                .into(),
                "create /b/x.partial: No such file or directory (os error 2)",
                "FilesystemError",
            ),
            (
                s3::S3Error {
                    op: "PutObject",
                    bucket: "b".into(),
                    key: "p/x".into(),
                    message: "AccessDenied: no".into(),
                }
                .into(),
                "S3 PutObject s3://b/p/x: AccessDenied: no",
                "S3Error",
            ),
            (
                StorageError::NotFound("/b/x".into()),
                "object /b/x not found",
                "NotFound",
            ),
            (
                StorageError::TooManyParts,
                "snapshot needs more than 10000 parts; raise the part size",
                "TooManyParts",
            ),
            (
                StorageError::Task("panic".into()),
                "upload task failed: panic",
                "UploadTaskFailed",
            ),
            (
                StorageError::UnsafeName("../x".into()),
                "unsafe object name \"../x\" refused",
                "UnsafeName",
            ),
            (StorageError::Config("bad".into()), "bad", "InvalidConfig"),
        ];
        for (e, message, reason) in &table {
            assert_eq!(e.to_string(), *message);
            assert_eq!(e.reason(), *reason, "{message}");
        }
        // A filesystem error's source is the OS error, as before.
        assert!(
            table[0]
                .0
                .source()
                .is_some_and(|s| s.to_string().contains("os error 2"))
        );
        assert!(table[1].0.source().is_none());
    }

    /// Flags, config file, and the location of `n` or the error.
    type OpenCase<'a> = (Vec<&'a str>, Option<String>, Result<String, &'a str>);

    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        d: DestinationArgs,
    }

    /// Which backend flags and config open: a backend named on the command line, else
    /// the config's in registration order; the settings it is completed with.
    #[tokio::test]
    async fn open_picks_the_named_backend_then_the_config() {
        use clap::Parser;
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path().join("d");
        let dir = dir.to_str().expect("utf-8");
        let path_cfg = format!("path: {}/cfg", tmp.path().display());
        let s3 = "http://127.0.0.1:9/b/x";
        let table: Vec<OpenCase> = vec![
            (vec!["--dir", dir], None, Ok(format!("{dir}/n"))),
            (
                vec!["--dir", dir],
                Some("s3: {bucket: b}".into()),
                Ok(format!("{dir}/n")),
            ),
            (
                vec!["--s3-bucket", "b", "--s3-prefix", "x"],
                Some(path_cfg.clone()),
                Ok("s3://b/x/n".into()),
            ),
            (
                vec!["--s3-prefix", "x"],
                Some(format!(
                    "{{s3: {{bucket: b, endpoint: '{s3}'}}, {path_cfg}}}"
                )),
                Ok("s3://b/x/n".into()),
            ),
            (
                vec![],
                Some(format!(
                    "{{persistentVolumeClaim: {{claimName: c}}, {path_cfg}}}"
                )),
                Ok(format!("{}/cfg/n", tmp.path().display())),
            ),
            (
                vec![],
                Some("persistentVolumeClaim: {claimName: c}".into()),
                Err(
                    "persistentVolumeClaim destinations are mounted by the Job; outside Kubernetes use --dir",
                ),
            ),
            (
                vec!["--s3-prefix", "x"],
                None,
                Err("no destination: give --dir, --s3-bucket or a config file"),
            ),
            (
                vec!["--s3-bucket", "b", "--s3-kms-key-id", "k"],
                None,
                Err("a KMS key id needs server-side encryption aws:kms"),
            ),
            (
                vec!["--s3-bucket", "b", "--part-size-mib", "4"],
                None,
                Err("part size must be 5-64 MiB (parts grow on their own past 1,000 parts)"),
            ),
            (
                vec!["--s3-bucket", "b", "--upload-concurrency", "17"],
                None,
                Err("upload concurrency must be 1-16"),
            ),
        ];
        for (flags, config, want) in table {
            let args = ["t", "--s3-region", "us-east-1"]
                .into_iter()
                .chain(flags.iter().copied());
            let f = Flags::try_parse_from(args).expect("flags");
            let d = config.as_deref().map(dest);
            let got = open(&f.d, d.as_ref())
                .await
                .map(|s| s.location("n"))
                .map_err(|e| (e.to_string(), e.reason()));
            match (&got, &want) {
                (Ok(g), Ok(w)) => assert_eq!(g, w, "{flags:?} {config:?}"),
                (Err((g, reason)), Err(w)) => {
                    assert_eq!(g, w, "{flags:?} {config:?}");
                    assert_eq!(*reason, "InvalidConfig");
                }
                _ => panic!("{flags:?} {config:?}: got {got:?}, want {want:?}"),
            }
        }
        // --dir and --s3-bucket name two destinations.
        assert!(Flags::try_parse_from(["t", "--dir", dir, "--s3-bucket", "b"]).is_err());
    }

    fn dest(yaml: &str) -> Destination {
        serde_yaml::from_str(yaml).expect("destination")
    }

    /// The key scheme: one place, one key, whichever way it is spelled; the first
    /// registered kind wins when a (CLI) config names more than one.
    #[test]
    fn keys_name_the_place() {
        let table: &[(&str, &str, Option<&str>)] = &[
            (
                "s3: {bucket: b, prefix: /orders/}",
                "a",
                Some("s3://aws/b/orders"),
            ),
            (
                "s3: {bucket: b, prefix: orders}",
                "b",
                Some("s3://aws/b/orders"),
            ),
            ("s3: {bucket: b}", "a", Some("s3://aws/b/")),
            (
                "s3: {bucket: b, endpoint: 'http://minio:9000/', prefix: x/}",
                "a",
                Some("s3://http://minio:9000/b/x"),
            ),
            (
                "persistentVolumeClaim: {claimName: c, subPath: /orders/}",
                "ns",
                Some("pvc://ns/c/orders"),
            ),
            (
                "persistentVolumeClaim: {claimName: c}",
                "ns",
                Some("pvc://ns/c/"),
            ),
            ("path: /data/", "ns", Some("path://ns//data")),
            ("path: /data", "other", Some("path://other//data")),
            ("{}", "ns", None),
            ("{s3: {bucket: b}, path: /data}", "ns", Some("s3://aws/b/")),
            (
                "{persistentVolumeClaim: {claimName: c}, path: /data}",
                "ns",
                Some("pvc://ns/c/"),
            ),
        ];
        for (yaml, ns, want) in table {
            assert_eq!(key(ns, &dest(yaml)).as_deref(), *want, "{yaml} in {ns}");
        }
    }

    #[test]
    fn job_mounts_per_destination() {
        let none = job_mounts(&dest("s3: {bucket: b}"));
        assert_eq!(none, JobMounts::default());
        let s3 = job_mounts(&dest(
            "s3: {bucket: b, credentialsSecretRef: {name: c, sessionTokenKey: t}}",
        ));
        assert_eq!(
            s3.secrets,
            vec![SecretMount {
                volume: "s3-credentials",
                secret: "c".into(),
                items: vec![
                    ("AWS_ACCESS_KEY_ID".into(), "AWS_ACCESS_KEY_ID"),
                    ("AWS_SECRET_ACCESS_KEY".into(), "AWS_SECRET_ACCESS_KEY"),
                    ("t".into(), "AWS_SESSION_TOKEN"),
                ],
                flag: "--s3-credentials-dir",
                file: None,
            }]
        );
        assert!(s3.volumes.is_empty());
        let pvc = job_mounts(&dest("persistentVolumeClaim: {claimName: c, subPath: x}"));
        assert!(pvc.secrets.is_empty());
        assert_eq!(
            pvc.volumes,
            vec![VolumeMount {
                volume: serde_json::json!({"name": "backups", "persistentVolumeClaim": {"claimName": "c"}}),
                mount: serde_json::json!({"name": "backups", "mountPath": fs::PVC_MOUNT}),
            }]
        );
        assert_eq!(job_mounts(&dest("path: /data")), JobMounts::default());
    }

    #[test]
    fn job_destination_turns_mounts_into_paths() {
        let table: &[(&str, &str)] = &[
            (
                "persistentVolumeClaim: {claimName: c, subPath: /orders/}",
                "path: /var/lib/palisade/backups/orders\n",
            ),
            (
                "persistentVolumeClaim: {claimName: c, subPath: /}",
                "path: /var/lib/palisade/backups\n",
            ),
            (
                "persistentVolumeClaim: {claimName: c}",
                "path: /var/lib/palisade/backups\n",
            ),
            ("path: /data", "path: /data\n"),
        ];
        for (yaml, want) in table {
            let got = serde_yaml::to_string(&job_destination(&dest(yaml))).expect("yaml");
            assert_eq!(&got, want, "{yaml}");
        }
        let s3 = dest("s3: {bucket: b}");
        assert_eq!(job_destination(&s3), s3);
    }
}
