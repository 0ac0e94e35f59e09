//! `backup verify`, the restore test: restore into a scratch database exactly as
//! `backup restore` does by default (owners and privileges included, one transaction;
//! `--no-owner` and `--jobs` test those restores instead), run the checks, compare
//! every table's row count with the manifest, always drop the scratch database, and
//! store a verification record beside the snapshot.
//!
//! Each test uses a scratch database of its own (`<scratch>_<random>`), so concurrent
//! tests never drop each other's. The record is plaintext: it carries check names and
//! generic reasons only, never a server message that could quote the data.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;

use super::destination::Storage;
use super::engine::{self, Progress, RestoreOptions};
use super::error::EngineError;
use super::format::EncryptionKey;
use super::manifest::{self, Manifest, VerificationRecord};
use super::pg::{self, PgConn, PgError};
use crate::crd::backup_schedule::{CheckResult, SqlCheck};

const SCRATCH_COMMENT: &str = "palisade restore-test scratch database";

/// Options of `backup verify`.
#[derive(Clone, Debug)]
pub struct VerifyOptions {
    /// Server to restore into; `database` is the maintenance database (e.g. `postgres`).
    pub server: PgConn,
    /// Scratch database name prefix (a random suffix makes each test's own).
    pub scratch_database: String,
    /// Restore without owners and privileges, as `backup restore --no-owner` does.
    pub no_owner: bool,
    /// Restore with `pg_restore -j N`, as `backup restore --jobs N` does.
    pub jobs: Option<u32>,
    /// Directory of the spool file for `jobs`.
    pub scratch_dir: Option<std::path::PathBuf>,
    /// SQL checks.
    pub checks: Vec<SqlCheck>,
    /// Compare row counts with the manifest.
    pub compare_row_counts: bool,
    /// Upper bound for restore + checks.
    pub timeout: Duration,
    /// Decryption keys.
    pub keys: Vec<EncryptionKey>,
    /// Directory of pg_restore.
    pub pg_bin: Option<std::path::PathBuf>,
    /// Snapshot id; newest when `None`.
    pub snapshot: Option<String>,
    /// Test an (authenticated) unencrypted snapshot although a key is configured.
    pub allow_unencrypted: bool,
    /// Accept a manifest without a MAC (format 1) when `snapshot` names it explicitly.
    pub allow_unauthenticated: bool,
}

impl VerifyOptions {
    /// The restore this test runs: of `snapshot` into `target`, with the test's
    /// keys, binaries and restore settings.
    fn restore_options(&self, target: PgConn, snapshot: Option<String>) -> RestoreOptions {
        RestoreOptions {
            target,
            pg_bin: self.pg_bin.clone(),
            keys: self.keys.clone(),
            snapshot,
            force: false,
            create: false,
            no_owner: self.no_owner,
            allow_unencrypted: self.allow_unencrypted,
            allow_unauthenticated: self.allow_unauthenticated,
            jobs: self.jobs,
            scratch_dir: self.scratch_dir.clone(),
            allow_encoding_change: false,
        }
    }
}

/// Result of `backup verify`.
#[derive(Clone, Debug)]
pub struct VerifyReport {
    /// The record stored beside the snapshot.
    pub record: VerificationRecord,
    /// Where it was stored.
    pub location: String,
}

fn failed(name: &str, message: impl Into<String>) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        passed: false,
        message: Some(pg::bounded(&message.into(), 300)),
    }
}

fn passed(name: &str) -> CheckResult {
    CheckResult {
        name: name.to_string(),
        passed: true,
        message: None,
    }
}

/// What the record says about a failed restore: the reason and what to do, never
/// pg_restore's own output (it can quote rows, e.g. `COPY …, line 3: "…"`), which is
/// logged instead.
fn restore_failure(e: &EngineError) -> String {
    match e {
        EngineError::Pg(PgError::ChildFailed { stderr, status, .. }) => {
            tracing::warn!(%status, stderr = %stderr, "pg_restore failed in the restore test");
            match pg::restore_hint(stderr) {
                Some(hint) => format!("PgRestoreFailed: {hint}"),
                None => format!(
                    "PgRestoreFailed: pg_restore exited with {status}; its output is in this command's log (not stored here: it may quote data)"
                ),
            }
        }
        e => format!("{}: {e}", e.reason()),
    }
}

/// A scratch database name of its own: `<prefix>_<unix seconds>_<4 random hex>` (at
/// most 63 bytes; the prefix is cut to fit).
pub fn scratch_name(prefix: &str, now: chrono::DateTime<Utc>) -> String {
    use rand::Rng;
    let suffix = format!("_{}_{:04x}", now.timestamp(), rand::rng().random::<u16>());
    format!("{}{suffix}", cut(prefix, 63 - suffix.len()))
}

/// The longest prefix of `s` of at most `max` bytes (on a char boundary).
fn cut(s: &str, max: usize) -> &str {
    let mut end = s.len().min(max);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// When scratch database `name` (made by [`scratch_name`] with `prefix`) was created.
pub fn scratch_created(prefix: &str, name: &str) -> Option<chrono::DateTime<Utc>> {
    let mut parts = name.rsplitn(3, '_');
    let (hex, secs, head) = (parts.next()?, parts.next()?, parts.next()?);
    let suffix_len = name.len() - head.len();
    if hex.len() != 4
        || !hex.bytes().all(|b| b.is_ascii_hexdigit())
        || !secs.bytes().all(|b| b.is_ascii_digit())
        || head != cut(prefix, 63usize.saturating_sub(suffix_len))
    {
        return None;
    }
    chrono::DateTime::from_timestamp(secs.parse().ok()?, 0)
}

/// Drops scratch databases of this prefix that an interrupted restore test left: those
/// carrying Palisade's comment, created longer ago than any test may run. Concurrent
/// tests' databases are younger and stay.
async fn drop_stale_scratch(
    admin: &tokio_postgres::Client,
    prefix: &str,
    older_than: chrono::DateTime<Utc>,
) -> Result<(), EngineError> {
    let rows = admin
        .query(
            "SELECT datname::text FROM pg_database WHERE shobj_description(oid, 'pg_database') = $1",
            &[&SCRATCH_COMMENT],
        )
        .await
        .map_err(|e| EngineError::Pipe(format!("list scratch databases: {e}")))?;
    for row in rows {
        let name: String = row.get(0);
        if scratch_created(prefix, &name).is_some_and(|t| t < older_than) {
            pg::drop_database(admin, &name).await?;
        }
    }
    Ok(())
}

/// Compares counts; returns mismatches `table → (expected, actual)`, `-1` for missing.
pub fn compare_counts(
    expected: &BTreeMap<String, i64>,
    actual: &BTreeMap<String, i64>,
) -> BTreeMap<String, (i64, i64)> {
    let mut out = BTreeMap::new();
    for (t, e) in expected {
        let a = actual.get(t).copied().unwrap_or(-1);
        if a != *e {
            out.insert(t.clone(), (*e, a));
        }
    }
    for (t, a) in actual {
        if !expected.contains_key(t) {
            out.insert(t.clone(), (-1, *a));
        }
    }
    out
}

async fn test_in_scratch(
    storage: &Storage,
    manifest: &Manifest,
    opts: &VerifyOptions,
    results: &mut Vec<CheckResult>,
    mismatches: &mut BTreeMap<String, (i64, i64)>,
) -> Result<(), EngineError> {
    let scratch = opts.server.with_database(&opts.scratch_database);
    let ropts = opts.restore_options(scratch.clone(), Some(manifest.id.clone()));
    if let Err(e) = engine::restore_into(
        storage,
        manifest,
        &ropts,
        false,
        Arc::new(Progress::default()),
    )
    .await
    {
        results.push(failed("restore", restore_failure(&e)));
        return Ok(());
    }
    results.push(passed("restore"));
    let client = scratch.connect().await?;
    for check in &opts.checks {
        results.push(match pg::run_check(&client, &check.sql).await {
            Ok(true) => passed(&check.name),
            Ok(false) => failed(&check.name, "returned false"),
            Err(m) => failed(&check.name, m),
        });
    }
    if opts.compare_row_counts {
        let actual = pg::row_counts(&client, &|t: &pg::Table| {
            manifest.key_of(&t.schema, &t.name)
        })
        .await?;
        *mismatches = compare_counts(&manifest.row_counts, &actual);
        results.push(if mismatches.is_empty() {
            passed("rowCounts")
        } else {
            let list: Vec<String> = mismatches
                .iter()
                .take(5)
                .map(|(t, (e, a))| format!("{t}: expected {e}, found {a}"))
                .collect();
            failed(
                "rowCounts",
                format!("{} table(s) differ: {}", mismatches.len(), list.join("; ")),
            )
        });
    }
    Ok(())
}

/// Runs the restore test. `Err` only when the test could not be carried out at all
/// (e.g. no snapshot, server unreachable); a failed restore or check is `Ok` with
/// `record.passed == false`.
pub async fn verify(storage: &Storage, opts: &VerifyOptions) -> Result<VerifyReport, EngineError> {
    let t0 = Instant::now();
    let manifest = engine::resolve(
        storage,
        &opts.restore_options(opts.server.clone(), opts.snapshot.clone()),
    )
    .await?;
    let admin = opts.server.connect().await?;
    let now = Utc::now();
    let slack = chrono::Duration::from_std(opts.timeout)
        .unwrap_or(chrono::Duration::MAX)
        .checked_add(&chrono::Duration::hours(1))
        .unwrap_or(chrono::Duration::MAX);
    if let Some(cutoff) = now.checked_sub_signed(slack) {
        drop_stale_scratch(&admin, &opts.scratch_database, cutoff).await?;
    }
    let scratch_db = scratch_name(&opts.scratch_database, now);
    if scratch_db == opts.server.database {
        return Err(EngineError::Invalid(
            "the scratch database must differ from the maintenance database".into(),
        ));
    }
    if pg::database_exists(&admin, &scratch_db).await? {
        return Err(EngineError::Invalid(format!(
            "scratch database {scratch_db} already exists; refused"
        )));
    }
    // The source's encoding and locale, as `restore --create` uses them.
    pg::create_database(&admin, &scratch_db, manifest.database.as_ref()).await?;
    admin
        .batch_execute(&format!(
            "COMMENT ON DATABASE {} IS '{SCRATCH_COMMENT}'",
            pg::quote_ident(&scratch_db)
        ))
        .await
        .map_err(|e| EngineError::Pipe(format!("comment on scratch database: {e}")))?;
    let opts = &VerifyOptions {
        scratch_database: scratch_db,
        ..opts.clone()
    };

    let mut results = Vec::new();
    let mut mismatches = BTreeMap::new();
    let outcome = tokio::time::timeout(
        opts.timeout,
        test_in_scratch(storage, &manifest, opts, &mut results, &mut mismatches),
    )
    .await;
    // Whatever happened: drop the scratch database.
    let dropped = pg::drop_database(&admin, &opts.scratch_database).await;
    match outcome {
        Err(_) => results.push(failed("timeout", format!("exceeded {:?}", opts.timeout))),
        Ok(Err(e)) => results.push(failed("restoreTest", format!("{}: {e}", e.reason()))),
        Ok(Ok(())) => {}
    }
    if let Err(e) = dropped {
        results.push(failed("dropScratch", e.to_string()));
    }
    let mut record = VerificationRecord {
        snapshot: manifest.id.clone(),
        time: Utc::now(),
        passed: !results.is_empty() && results.iter().all(|r| r.passed),
        duration_seconds: t0.elapsed().as_secs_f64(),
        checks: results,
        row_count_mismatches: mismatches,
        manifest_mac: manifest.mac.clone(),
        mac_key_id: None,
        mac: None,
    };
    let signer = opts
        .keys
        .iter()
        .find(|k| manifest.mac_key_id.as_deref() == Some(k.id()))
        .or(opts.keys.first());
    if let Some(k) = signer {
        record.sign(k);
    }
    let name = manifest::verification_name(&manifest.id);
    let body = serde_json::to_vec_pretty(&record)
        .map_err(|e| EngineError::BadManifest(name.clone(), e.to_string()))?;
    storage.put_small(&name, body).await?;
    Ok(VerifyReport {
        location: storage.location(&name),
        record,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scratch_names_are_unique_bounded_and_dated() {
        let now: chrono::DateTime<Utc> = "2026-12-07T01:00:00Z".parse().expect("time");
        let a = scratch_name("palisade_restore_test", now);
        let b = scratch_name("palisade_restore_test", now);
        assert!(a.starts_with("palisade_restore_test_1796605200_"), "{a}");
        assert_eq!(scratch_created("palisade_restore_test", &a), Some(now));
        assert_eq!(
            scratch_created("palisade_restore_test", "palisade_restore_test"),
            None
        );
        assert_eq!(
            scratch_created("palisade_restore_test", "palisade_restore_test_x_zz"),
            None
        );
        let long = scratch_name(&"p".repeat(100), now);
        assert!(long.len() <= 63, "{long}");
        assert_eq!(scratch_created(&"p".repeat(100), &long), Some(now));
        assert_eq!(scratch_created("q", &long), None);
        // Random suffixes: two tests at the same second still differ (almost always).
        let distinct: std::collections::BTreeSet<String> =
            (0..20).map(|_| scratch_name("p", now)).collect();
        assert!(distinct.len() > 1 && a.len() == b.len());
    }

    #[test]
    fn count_comparison() {
        let e: BTreeMap<String, i64> =
            [("public.a".to_string(), 3), ("public.b".to_string(), 1)].into();
        let a: BTreeMap<String, i64> =
            [("public.a".to_string(), 2), ("public.c".to_string(), 0)].into();
        let m = compare_counts(&e, &a);
        assert_eq!(m.get("public.a"), Some(&(3, 2)));
        assert_eq!(m.get("public.b"), Some(&(1, -1)));
        assert_eq!(m.get("public.c"), Some(&(-1, 0)));
        assert!(compare_counts(&e, &e).is_empty());
    }
}
