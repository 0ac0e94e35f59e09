//! `backup list` and `backup prune`: the snapshots that exist (those with a manifest),
//! their verification state, and retention.

use chrono::{DateTime, Utc};

use super::engine::EngineError;
use super::manifest::{self, Manifest, VerificationRecord};
use super::retention::{self, Decision, Policy};
use super::storage::Storage;

/// A stored snapshot and its newest verification record.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its newest restore test, if any.
    pub verification: Option<VerificationRecord>,
}

/// Every snapshot with a manifest, newest first.
pub async fn list(storage: &Storage) -> Result<Vec<Entry>, EngineError> {
    let objects = storage.list().await?;
    let mut entries = Vec::new();
    for o in &objects {
        let Some(id) = manifest::id_from_manifest_name(&o.name) else {
            continue;
        };
        let manifest = match super::engine::load_manifest(storage, id).await {
            Ok(m) => m,
            Err(EngineError::NoSnapshot(_)) => continue,
            Err(e) => return Err(e),
        };
        let vname = manifest::verification_name(id);
        let verification = if objects.iter().any(|x| x.name == vname) {
            storage
                .get_small(&vname)
                .await?
                .and_then(|b| serde_json::from_slice(&b).ok())
        } else {
            None
        };
        entries.push(Entry {
            manifest,
            verification,
        });
    }
    entries.sort_by(|a, b| {
        b.manifest
            .started_at
            .cmp(&a.manifest.started_at)
            .then_with(|| b.manifest.id.cmp(&a.manifest.id))
    });
    Ok(entries)
}

/// Result of `backup prune`.
#[derive(Clone, Debug)]
pub struct PruneReport {
    /// Decision per snapshot, newest first.
    pub decisions: Vec<Decision>,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
}

/// Applies retention. Deletes the manifest first (the snapshot stops being valid), then
/// the data and the verification record.
pub async fn prune(
    storage: &Storage,
    policy: &Policy,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, EngineError> {
    let entries = list(storage).await?;
    let snaps: Vec<retention::Snapshot> = entries
        .iter()
        .map(|e| retention::Snapshot {
            id: e.manifest.id.clone(),
            time: e.manifest.started_at,
            verified: e.verification.as_ref().is_some_and(|v| v.passed),
        })
        .collect();
    let decisions = retention::select(&snaps, policy, now);
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            let Some(e) = entries.iter().find(|e| e.manifest.id == d.id) else {
                continue;
            };
            storage.delete(&manifest::manifest_name(&d.id)).await?;
            storage.delete(&e.manifest.object).await?;
            storage.delete(&manifest::verification_name(&d.id)).await?;
        }
    }
    Ok(PruneReport { decisions, dry_run })
}
