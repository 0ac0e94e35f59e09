//! The one error type of the snapshot engine: run, restore, verify, list and prune
//! all fail with it. It lives apart from the pipelines (`engine`) so that the catalog
//! (which the pipelines use to find snapshots) can return it without importing them.

use std::io;
use std::time::Duration;

use super::destination::StorageError;
use super::format::FormatError;
use super::manifest;
use super::pg::PgError;

/// Errors of the engine (run, restore, verify, list, prune).
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// PostgreSQL side.
    #[error(transparent)]
    Pg(#[from] PgError),
    /// Storage backend.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// Snapshot format / decryption.
    #[error(transparent)]
    Format(#[from] FormatError),
    /// Compression or decompression.
    #[error("zstd: {0}")]
    Zstd(io::Error),
    /// Reading the snapshot from storage failed part way (a network or storage error,
    /// not a sign of corruption).
    #[error("reading the snapshot from storage failed (not corruption; retry): {0}")]
    Download(String),
    /// Writing the restore's scratch file (or pg_restore's input) failed.
    #[error("{0}")]
    Scratch(String),
    /// A pipe between stages broke.
    #[error("pipeline: {0}")]
    Pipe(String),
    /// The stored object's checksum differs from the manifest.
    #[error("checksum mismatch: manifest says {expected}, object has {actual}")]
    Checksum {
        /// From the manifest.
        expected: String,
        /// Computed.
        actual: String,
    },
    /// The stored object's size differs from the manifest.
    #[error("size mismatch: manifest says {expected} bytes, object has {actual}")]
    Size {
        /// From the manifest.
        expected: u64,
        /// Read.
        actual: u64,
    },
    /// No snapshot (or not the requested one).
    #[error("no snapshot {0}")]
    NoSnapshot(String),
    /// A manifest could not be parsed.
    #[error("manifest {0} is invalid: {1}")]
    BadManifest(String, String),
    /// Encrypted snapshot but no key given.
    #[error("snapshot is encrypted with key {0}; give its key with --key-file")]
    MissingKey(String),
    /// Metadata that does not authenticate under the configured keys.
    #[error("{what} {why}; refused (nothing restored, deleted or trusted)")]
    Unauthenticated {
        /// Which object.
        what: String,
        /// Why.
        why: manifest::AuthError,
    },
    /// A name read from storage that is not what it must be (path traversal, moved file).
    #[error("unsafe or mismatched name in {0}; refused")]
    UnsafeName(String),
    /// An unencrypted snapshot while a key is configured.
    #[error(
        "snapshot {0} is not encrypted although a key is configured; refused (use --allow-unencrypted to restore it anyway)"
    )]
    Unencrypted(String),
    /// `--id` names an existing snapshot of another source database.
    #[error(
        "snapshot id {id} is already used by a snapshot of {of}; nothing was backed up: choose another --id"
    )]
    IdInUse {
        /// The id.
        id: String,
        /// `host:port/database` of the existing snapshot.
        of: String,
    },
    /// SIGTERM / SIGINT.
    #[error("interrupted by {0}; child processes stopped, unfinished uploads removed")]
    Interrupted(&'static str),
    /// Invalid input.
    #[error("{0}")]
    Invalid(String),
    /// Timed out.
    #[error("timed out after {0:?}")]
    Timeout(Duration),
}

impl EngineError {
    /// Short bounded reason.
    pub fn reason(&self) -> &'static str {
        match self {
            EngineError::Pg(e) => e.reason(),
            EngineError::Storage(e) => e.reason(),
            EngineError::Format(e) => e.reason(),
            EngineError::Zstd(_) => "CompressionError",
            EngineError::Download(_) => "DownloadFailed",
            EngineError::Scratch(_) => "ScratchWriteFailed",
            EngineError::Pipe(_) => "PipelineError",
            EngineError::Checksum { .. } => "ChecksumMismatch",
            EngineError::Size { .. } => "SizeMismatch",
            EngineError::NoSnapshot(_) => "NoSnapshot",
            EngineError::BadManifest(..) => "BadManifest",
            EngineError::MissingKey(_) => "MissingKey",
            EngineError::Unauthenticated { .. } => "Unauthenticated",
            EngineError::UnsafeName(_) => "UnsafeName",
            EngineError::Unencrypted(_) => "Unencrypted",
            EngineError::IdInUse { .. } => "IdInUse",
            EngineError::Interrupted(_) => "Interrupted",
            EngineError::Invalid(_) => "InvalidArgument",
            EngineError::Timeout(_) => "Timeout",
        }
    }
}
