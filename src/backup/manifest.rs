//! The manifest written beside every snapshot, and the verification record written by
//! restore tests. Both are JSON; a snapshot is listed as valid only once its manifest
//! exists, and the manifest is written last.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crd::backup_schedule::CheckResult;

/// Manifest format version.
pub const MANIFEST_VERSION: u32 = 1;

/// Object name of a snapshot's data.
pub fn data_name(id: &str) -> String {
    format!("{id}.snap")
}

/// Object name of a snapshot's manifest.
pub fn manifest_name(id: &str) -> String {
    format!("{id}.manifest.json")
}

/// Object name of a snapshot's newest verification record.
pub fn verification_name(id: &str) -> String {
    format!("{id}.verify.json")
}

/// The snapshot id a manifest object name belongs to.
pub fn id_from_manifest_name(name: &str) -> Option<&str> {
    name.strip_suffix(".manifest.json")
        .filter(|id| !id.is_empty() && !id.contains('/'))
}

/// Everything needed to trust, restore and check one snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Manifest format version (1).
    pub format_version: u32,
    /// Snapshot id.
    pub id: String,
    /// Object name of the data, relative to the destination prefix.
    pub object: String,
    /// Where the data came from (never contains a password).
    pub source: Source,
    /// `SHOW server_version` of the source server.
    pub server_version: String,
    /// `pg_dump --version`.
    pub pg_dump_version: String,
    /// When the dump started.
    pub started_at: DateTime<Utc>,
    /// When the snapshot was complete (object stored).
    pub finished_at: DateTime<Utc>,
    /// Bytes of the uncompressed `pg_dump -Fc -Z0` stream.
    pub raw_bytes: u64,
    /// Bytes after compression.
    pub compressed_bytes: u64,
    /// Bytes of the stored object (after encryption).
    pub stored_bytes: u64,
    /// Hex SHA-256 of the stored object.
    pub sha256: String,
    /// Compression used.
    pub compression: CompressionInfo,
    /// Client-side encryption used.
    pub encryption: EncryptionInfo,
    /// Exact row count of every table, keyed `schema.table`, counted in the same
    /// transaction snapshot that pg_dump dumped.
    pub row_counts: BTreeMap<String, i64>,
}

/// Source database of a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Source {
    /// Server host.
    pub host: String,
    /// Server port.
    pub port: u16,
    /// Database name.
    pub database: String,
    /// Role used.
    pub user: String,
}

/// Compression of a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct CompressionInfo {
    /// `zstd`.
    pub algorithm: String,
    /// zstd level.
    pub level: i32,
}

/// Encryption of a snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct EncryptionInfo {
    /// `aes-256-gcm-chunked-v1` or `none`.
    pub algorithm: String,
    /// Key id (absent when unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_id: Option<String>,
    /// Plaintext bytes per chunk (absent when unencrypted).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk_size: Option<u32>,
}

impl EncryptionInfo {
    /// Whether the snapshot is encrypted.
    pub fn is_encrypted(&self) -> bool {
        self.algorithm != "none"
    }
}

/// The outcome of one restore test, stored as `<id>.verify.json`.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct VerificationRecord {
    /// Snapshot id.
    pub snapshot: String,
    /// When the test finished.
    pub time: DateTime<Utc>,
    /// Whether restore, checks and row counts all passed.
    pub passed: bool,
    /// Wall-clock seconds.
    pub duration_seconds: f64,
    /// Results, the restore itself and the row-count comparison included.
    pub checks: Vec<CheckResult>,
    /// Tables whose counts differed: `schema.table` → (expected, actual; -1 = missing).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub row_count_mismatches: BTreeMap<String, (i64, i64)>,
}
