//! The manifest written beside every snapshot, and the verification record written by
//! restore tests. Both are JSON; a snapshot is listed as valid only once its manifest
//! exists, and the manifest is written last.
//!
//! With a key, both carry an HMAC-SHA256 (`mac`, under the key `macKeyId`) over every
//! other field, so nothing in them can be changed, moved to another id or forged by
//! someone who can write to the bucket but does not hold the key (see
//! `docs/BACKUP.md`, "Threat model").

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::format::EncryptionKey;
use crate::crd::backup_schedule::CheckResult;

/// Manifest format version (2: MAC, stream bound to the id).
pub const MANIFEST_VERSION: u32 = 2;

const MANIFEST_LABEL: &[u8] = b"palisade manifest v2\0";
const RECORD_LABEL: &[u8] = b"palisade verification record v2\0";

/// Why a manifest or verification record is not trusted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// It carries no MAC.
    #[error("carries no MAC (written without a key, or forged)")]
    Missing,
    /// Its MAC key is not among the configured keys.
    #[error("is authenticated with key {0:?}, which was not provided")]
    UnknownKey(String),
    /// The MAC does not match: a different key under the same id, a changed field, or
    /// a forged object.
    #[error(
        "has a MAC that does not verify under the given key of that id (the wrong key material for this id, or the object was modified or forged)"
    )]
    Invalid,
    /// It could not be serialized for checking.
    #[error("cannot be encoded: {0}")]
    Encoding(String),
}

/// Metadata that carries a MAC (`mac`, under `macKeyId`) over all its other fields.
trait Signed: Serialize + Clone {
    /// Domain separation: a record can never pass for a manifest, nor the reverse.
    const LABEL: &'static [u8];

    /// `(macKeyId, mac)`.
    fn mac_slots(&mut self) -> (&mut Option<String>, &mut Option<String>);

    /// The bytes the MAC covers: the label, then the compact JSON without `mac`.
    fn signing_input(&self) -> Result<Vec<u8>, AuthError> {
        let mut unsigned = self.clone();
        *unsigned.mac_slots().1 = None;
        let body = serde_json::to_vec(&unsigned).map_err(|e| AuthError::Encoding(e.to_string()))?;
        let mut data = Self::LABEL.to_vec();
        data.extend(body);
        Ok(data)
    }

    /// Signs every field, the key id included.
    fn sign_with(&mut self, key: &EncryptionKey) {
        *self.mac_slots().0 = Some(key.id().to_string());
        let mac = self.signing_input().ok().map(|d| key.mac(&d));
        *self.mac_slots().1 = mac;
    }

    /// Checks the MAC against `keys` (picked by `macKeyId`).
    fn check_mac(&self, keys: &[EncryptionKey]) -> Result<(), AuthError> {
        let mut copy = self.clone();
        let (kid, mac) = copy.mac_slots();
        let (Some(kid), Some(mac)) = (kid.as_deref(), mac.as_deref()) else {
            return Err(AuthError::Missing);
        };
        let key = keys
            .iter()
            .find(|k| k.id() == kid)
            .ok_or_else(|| AuthError::UnknownKey(kid.to_string()))?;
        if key.verify_mac(&self.signing_input()?, mac) {
            Ok(())
        } else {
            Err(AuthError::Invalid)
        }
    }
}

/// Object name of a snapshot's data.
pub fn data_name(id: &str) -> String {
    format!("{id}.snap")
}

/// Object name of a snapshot's manifest.
pub fn manifest_name(id: &str) -> String {
    format!("{id}.manifest.json")
}

/// The row-count key of table `name` in `schema`: `schema.table`, each part written
/// as is unless it contains `.` or `"`, then double-quoted (`"a.b".c`, `a."b.c"`), so
/// that no two tables share a key (issue #32). Plain names keep the keys manifests
/// always had.
pub fn table_key(schema: &str, name: &str) -> String {
    fn part(s: &str) -> String {
        if s.contains(['.', '"']) {
            format!("\"{}\"", s.replace('"', "\"\""))
        } else {
            s.to_string()
        }
    }
    format!("{}.{}", part(schema), part(name))
}

/// The key manifests written before issue #32 used (`schema.table`, as is), under
/// which `"a.b".c` and `a."b.c"` collide. Restore tests of those manifests compare
/// under it.
pub fn legacy_table_key(schema: &str, name: &str) -> String {
    format!("{schema}.{name}")
}

impl Manifest {
    /// The row-count key of a table in this manifest ([`table_key`], or
    /// [`legacy_table_key`] for a manifest written before issue #32, recognizable by
    /// its missing `database`).
    pub fn key_of(&self, schema: &str, name: &str) -> String {
        if self.database.is_some() {
            table_key(schema, name)
        } else {
            legacy_table_key(schema, name)
        }
    }
}

/// Name of the lock a run holds while it writes snapshot `id`.
pub fn lock_name(id: &str) -> String {
    format!("{id}.lock")
}

/// Object name of a snapshot's newest verification record.
pub fn verification_name(id: &str) -> String {
    format!("{id}.verify.json")
}

/// The snapshot id a manifest object name belongs to (only well-formed ids: 1–128 of
/// `[A-Za-z0-9._-]`, not starting with `.`).
pub fn id_from_manifest_name(name: &str) -> Option<&str> {
    name.strip_suffix(".manifest.json")
        .filter(|id| valid_id(id))
}

/// Whether `id` is a well-formed snapshot id: 1–128 of `[A-Za-z0-9._-]`, not starting
/// with `.` (so it is never a path, `..` or hidden).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 128
        && !id.starts_with('.')
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
}

/// Everything needed to trust, restore and check one snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Manifest {
    /// Manifest format version (2).
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
    /// The source database's encoding and locale (absent in manifests written before
    /// issue #32): `restore --create` and the restore test create their database with
    /// them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub database: Option<DatabaseInfo>,
    /// Key whose metadata MAC key signed this manifest (absent without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_key_id: Option<String>,
    /// Hex HMAC-SHA256 over every other field (absent without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Signed for Manifest {
    const LABEL: &'static [u8] = MANIFEST_LABEL;

    fn mac_slots(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.mac_key_id, &mut self.mac)
    }
}

impl Manifest {
    /// Signs every field (the key id included) with `key`.
    pub fn sign(&mut self, key: &EncryptionKey) {
        self.sign_with(key);
    }

    /// Checks the MAC against `keys` (picked by `macKeyId`).
    pub fn authenticate(&self, keys: &[EncryptionKey]) -> Result<(), AuthError> {
        self.check_mac(keys)
    }

    /// Sum of all row counts, saturating (a forged manifest must not overflow it).
    pub fn total_rows(&self) -> i64 {
        self.row_counts
            .values()
            .fold(0i64, |acc, n| acc.saturating_add(*n))
    }
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

/// Database-level properties of the source that a logical dump does not carry.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct DatabaseInfo {
    /// Server encoding (`UTF8`, `LATIN1`, `SQL_ASCII`, …).
    pub encoding: String,
    /// `LC_COLLATE`.
    pub collate: String,
    /// `LC_CTYPE`.
    pub ctype: String,
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
    /// The MAC of the manifest that was tested (binds the record to that manifest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest_mac: Option<String>,
    /// Key whose metadata MAC key signed this record (absent without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac_key_id: Option<String>,
    /// Hex HMAC-SHA256 over every other field (absent without a key).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl Signed for VerificationRecord {
    const LABEL: &'static [u8] = RECORD_LABEL;

    fn mac_slots(&mut self) -> (&mut Option<String>, &mut Option<String>) {
        (&mut self.mac_key_id, &mut self.mac)
    }
}

impl VerificationRecord {
    /// Signs every field with `key`. The duration is first rounded to milliseconds:
    /// serde_json reads back short decimals exactly, but not every shortest float
    /// representation, and the MAC must survive the JSON round trip.
    pub fn sign(&mut self, key: &EncryptionKey) {
        self.duration_seconds = (self.duration_seconds * 1000.0).round() / 1000.0;
        self.sign_with(key);
    }

    /// Checks the MAC against `keys` and that the record is about `manifest` (same id,
    /// same manifest MAC).
    pub fn authenticate_for(
        &self,
        manifest: &Manifest,
        keys: &[EncryptionKey],
    ) -> Result<(), AuthError> {
        self.check_mac(keys)?;
        if self.snapshot != manifest.id || self.manifest_mac != manifest.mac {
            return Err(AuthError::Invalid);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::format::test_key as key;

    fn sample() -> Manifest {
        Manifest {
            format_version: MANIFEST_VERSION,
            id: "day-2".into(),
            object: data_name("day-2"),
            source: Source {
                host: "db".into(),
                port: 5432,
                database: "app".into(),
                user: "backup".into(),
            },
            server_version: "15.14".into(),
            pg_dump_version: "pg_dump (PostgreSQL) 15.14".into(),
            started_at: "2026-03-02T02:00:00Z".parse().expect("time"),
            finished_at: "2026-03-02T02:00:09.123456789Z".parse().expect("time"),
            raw_bytes: 10,
            compressed_bytes: 5,
            stored_bytes: 100,
            sha256: "ab".repeat(32),
            compression: CompressionInfo {
                algorithm: "zstd".into(),
                level: 3,
            },
            encryption: EncryptionInfo {
                algorithm: "aes-256-gcm-chunked-v1".into(),
                key_id: Some("k1".into()),
                chunk_size: Some(1 << 20),
            },
            row_counts: [("public.a".to_string(), 3)].into(),
            database: Some(DatabaseInfo {
                encoding: "LATIN1".into(),
                collate: "C".into(),
                ctype: "C".into(),
            }),
            mac_key_id: None,
            mac: None,
        }
    }

    #[test]
    fn every_manifest_field_is_authenticated() {
        let keys = [key("k1")];
        assert_eq!(sample().authenticate(&keys), Err(AuthError::Missing));
        let mut m = sample();
        m.sign(&keys[0]);
        assert_eq!(m.authenticate(&keys), Ok(()));
        // Survives a JSON round trip (what storage does).
        let back: Manifest =
            serde_json::from_slice(&serde_json::to_vec_pretty(&m).expect("json")).expect("parse");
        assert_eq!(back.authenticate(&keys), Ok(()));
        assert_eq!(
            m.authenticate(&[key("k2")]),
            Err(AuthError::UnknownKey("k1".into()))
        );
        let edits: Vec<fn(&mut Manifest)> = vec![
            |m| m.id = "day-1".into(),
            |m| m.object = "../x".into(),
            |m| m.stored_bytes += 1,
            |m| m.sha256 = "cd".repeat(32),
            |m| m.started_at = "2099-01-01T00:00:00Z".parse().expect("t"),
            |m| m.finished_at = "2099-01-01T00:00:00Z".parse().expect("t"),
            |m| {
                m.row_counts.insert("public.a".into(), 4);
            },
            |m| m.encryption.algorithm = "none".into(),
            |m| m.encryption.key_id = None,
            |m| m.source.host = "evil".into(),
            |m| m.database = None,
        ];
        for edit in edits {
            let mut forged = m.clone();
            edit(&mut forged);
            assert_eq!(forged.authenticate(&keys), Err(AuthError::Invalid));
        }
        // Another key's MAC under the right key id is still invalid.
        let mut other = sample();
        other.sign(
            &EncryptionKey::new(
                b"another key, also 32 bytes long!".to_vec(),
                Some("k1".into()),
            )
            .expect("key"),
        );
        assert_eq!(other.authenticate(&keys), Err(AuthError::Invalid));
    }

    #[test]
    fn verification_records_are_bound_to_their_manifest() {
        let keys = [key("k1")];
        let mut m = sample();
        m.sign(&keys[0]);
        let mut r = VerificationRecord {
            snapshot: m.id.clone(),
            time: "2026-03-02T03:00:00Z".parse().expect("time"),
            passed: true,
            duration_seconds: 3.25,
            checks: vec![],
            row_count_mismatches: BTreeMap::new(),
            manifest_mac: m.mac.clone(),
            mac_key_id: None,
            mac: None,
        };
        assert_eq!(r.authenticate_for(&m, &keys), Err(AuthError::Missing));
        r.sign(&keys[0]);
        assert_eq!(r.authenticate_for(&m, &keys), Ok(()));
        // Any measured duration survives storage (a JSON round trip; serde_json reads
        // about one in seven of these back one bit off without the rounding in `sign`).
        for d in (0..200).map(|i| f64::from(i) * 0.000_012_345_678_9 + 1.0 / 3.0) {
            let mut timed = r.clone();
            timed.duration_seconds = d;
            timed.sign(&keys[0]);
            let back: VerificationRecord =
                serde_json::from_slice(&serde_json::to_vec_pretty(&timed).expect("json"))
                    .expect("parse");
            assert_eq!(back.authenticate_for(&m, &keys), Ok(()), "{d}");
        }
        let mut forged = r.clone();
        forged.passed = false;
        assert_eq!(forged.authenticate_for(&m, &keys), Err(AuthError::Invalid));
        // A genuine record of another snapshot does not vouch for this one.
        let mut m2 = sample();
        m2.id = "day-3".into();
        m2.object = data_name("day-3");
        m2.sign(&keys[0]);
        assert_eq!(r.authenticate_for(&m2, &keys), Err(AuthError::Invalid));
    }

    #[test]
    fn ids_from_names() {
        assert_eq!(id_from_manifest_name("a-1.manifest.json"), Some("a-1"));
        for bad in [
            "../x.manifest.json",
            "/etc/x.manifest.json",
            ".hidden.manifest.json",
            ".manifest.json",
            "a b.manifest.json",
        ] {
            assert_eq!(id_from_manifest_name(bad), None, "{bad}");
        }
    }

    #[test]
    fn table_keys_never_collide() {
        assert_eq!(table_key("public", "Weird Name"), "public.Weird Name");
        assert_eq!(table_key("a.b", "c"), "\"a.b\".c");
        assert_eq!(table_key("a", "b.c"), "a.\"b.c\"");
        assert_ne!(table_key("a.b", "c"), table_key("a", "b.c"));
        assert_eq!(table_key("x", "q\"t"), "x.\"q\"\"t\"");
        assert_ne!(table_key("a\".\"b", "c"), table_key("a", "b\".\"c"));
        // Manifests written before these keys compare under the old ones.
        let mut old = sample();
        assert_eq!(old.key_of("a.b", "c"), "\"a.b\".c");
        old.database = None;
        assert_eq!(old.key_of("a.b", "c"), "a.b.c");
    }

    #[test]
    fn total_rows_saturates() {
        let mut m = sample();
        m.row_counts = [("a".to_string(), i64::MAX), ("b".to_string(), i64::MAX)].into();
        assert_eq!(m.total_rows(), i64::MAX);
    }
}
