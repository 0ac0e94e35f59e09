//! What is stored: loading a snapshot's manifest (checked names, then its MAC),
//! choosing the snapshot a restore or restore test reads ([`resolve`]), and
//! `backup list` / `backup prune`: the snapshots that exist (those with a manifest
//! that, with a key configured, authenticates), their verification state, and
//! retention. Anything that does not authenticate is reported, never trusted and never
//! deleted.

use chrono::{DateTime, Utc};

use super::destination::Storage;
use super::error::EngineError;
use super::format::EncryptionKey;
use super::manifest::{self, Manifest, VerificationRecord};
use super::pg;
use super::retention::{self, Decision, Policy};

/// Checks a snapshot id: 1–128 of `[A-Za-z0-9._-]`, not starting with `.`.
pub fn validate_id(id: &str) -> Result<(), EngineError> {
    if manifest::valid_id(id) {
        Ok(())
    } else {
        Err(EngineError::Invalid(
            "snapshot id must be 1-128 characters of [A-Za-z0-9._-], not starting with '.'".into(),
        ))
    }
}

/// Reads a snapshot's manifest and checks its names: the id is well formed and the
/// one in the file's own name, the object is exactly that id's data name. Does not
/// check the MAC (see [`load_trusted`]).
pub async fn load_manifest(storage: &Storage, id: &str) -> Result<Manifest, EngineError> {
    validate_id(id)?;
    let name = manifest::manifest_name(id);
    let body = storage
        .get_small(&name)
        .await?
        .ok_or_else(|| EngineError::NoSnapshot(id.to_string()))?;
    let m: Manifest = serde_json::from_slice(&body)
        .map_err(|e| EngineError::BadManifest(name.clone(), e.to_string()))?;
    if m.id != id || m.object != manifest::data_name(id) {
        return Err(EngineError::UnsafeName(format!(
            "manifest {name}: id {:?} / object {:?} (want {id:?} / {:?})",
            pg::bounded(&m.id, 140),
            pg::bounded(&m.object, 140),
            manifest::data_name(id)
        )));
    }
    Ok(m)
}

/// [`load_manifest`], then, when `keys` is not empty, its MAC. `allow_unauthenticated`
/// accepts a manifest without a MAC (format 1, written before manifests were signed);
/// an invalid MAC is never accepted.
pub async fn load_trusted(
    storage: &Storage,
    id: &str,
    keys: &[EncryptionKey],
    allow_unauthenticated: bool,
) -> Result<Manifest, EngineError> {
    let m = load_manifest(storage, id).await?;
    authenticate_manifest(&m, keys, allow_unauthenticated)?;
    Ok(m)
}

/// Checks a manifest's MAC when keys are configured.
pub fn authenticate_manifest(
    m: &Manifest,
    keys: &[EncryptionKey],
    allow_unauthenticated: bool,
) -> Result<(), EngineError> {
    if keys.is_empty() {
        return Ok(());
    }
    match m.authenticate(keys) {
        Ok(()) => Ok(()),
        Err(manifest::AuthError::Missing) if allow_unauthenticated => Ok(()),
        Err(why) => Err(EngineError::Unauthenticated {
            what: format!("manifest {}", manifest::manifest_name(&m.id)),
            why,
        }),
    }
}

/// Resolves `snapshot` (or the newest authenticated one) to its manifest. With keys,
/// only manifests whose MAC verifies are candidates (`allow_unauthenticated` admits a
/// MAC-less manifest only when it is named explicitly).
pub async fn resolve(
    storage: &Storage,
    snapshot: Option<&str>,
    keys: &[EncryptionKey],
    allow_unauthenticated: bool,
) -> Result<Manifest, EngineError> {
    match snapshot {
        Some(id) => load_trusted(storage, id, keys, allow_unauthenticated).await,
        None => {
            let listing = list(storage, keys).await?;
            match listing.entries.into_iter().next() {
                Some(e) => Ok(e.manifest),
                None if listing.rejected.is_empty() => {
                    Err(EngineError::NoSnapshot("(none stored)".into()))
                }
                None => Err(EngineError::NoSnapshot(format!(
                    "(none authenticated; {} rejected, see backup list)",
                    listing.rejected.len()
                ))),
            }
        }
    }
}

/// A stored snapshot and its newest verification record.
#[derive(Clone, Debug)]
pub struct Entry {
    /// Its manifest.
    pub manifest: Manifest,
    /// Its newest restore test, if any (with a key: only an authenticated one).
    pub verification: Option<VerificationRecord>,
}

/// An object under the destination that was not trusted, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejected {
    /// Object name.
    pub name: String,
    /// Bounded reason (`Unauthenticated`, `UnsafeName`, `BadManifest`, …).
    pub reason: &'static str,
    /// Human-readable detail.
    pub message: String,
}

/// What `list` found.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Trusted snapshots, newest first.
    pub entries: Vec<Entry>,
    /// Manifests and records that were ignored.
    pub rejected: Vec<Rejected>,
}

/// Every snapshot with a (with `keys`: authenticated) manifest, newest first, plus what
/// was rejected.
pub async fn list(storage: &Storage, keys: &[EncryptionKey]) -> Result<Listing, EngineError> {
    let objects = storage.list().await?;
    let mut out = Listing::default();
    for o in &objects {
        let Some(stem) = o.name.strip_suffix(".manifest.json") else {
            continue;
        };
        let Some(id) = manifest::id_from_manifest_name(&o.name) else {
            out.rejected.push(Rejected {
                name: o.name.clone(),
                reason: "UnsafeName",
                message: format!("{stem:?} is not a valid snapshot id"),
            });
            continue;
        };
        let manifest = match load_trusted(storage, id, keys, false).await {
            Ok(m) => m,
            Err(EngineError::NoSnapshot(_)) => continue,
            Err(e @ (EngineError::Storage(_) | EngineError::Pg(_))) => return Err(e),
            Err(e) => {
                out.rejected.push(Rejected {
                    name: o.name.clone(),
                    reason: e.reason(),
                    message: e.to_string(),
                });
                continue;
            }
        };
        let vname = manifest::verification_name(id);
        let mut verification = None;
        if objects.iter().any(|x| x.name == vname) {
            let record = storage
                .get_small(&vname)
                .await?
                .and_then(|b| serde_json::from_slice::<VerificationRecord>(&b).ok());
            match record {
                Some(r) if keys.is_empty() && r.snapshot == id => verification = Some(r),
                Some(r) if !keys.is_empty() => match r.authenticate_for(&manifest, keys) {
                    Ok(()) => verification = Some(r),
                    Err(why) => out.rejected.push(Rejected {
                        name: vname,
                        reason: "Unauthenticated",
                        message: format!("verification record {why}"),
                    }),
                },
                _ => out.rejected.push(Rejected {
                    name: vname,
                    reason: "BadRecord",
                    message: "verification record is unreadable or about another snapshot".into(),
                }),
            }
        }
        out.entries.push(Entry {
            manifest,
            verification,
        });
    }
    out.entries.sort_by(|a, b| {
        b.manifest
            .started_at
            .cmp(&a.manifest.started_at)
            .then_with(|| b.manifest.id.cmp(&a.manifest.id))
    });
    Ok(out)
}

/// Result of `backup prune`.
#[derive(Clone, Debug)]
pub struct PruneReport {
    /// Decision per snapshot, newest first.
    pub decisions: Vec<Decision>,
    /// Whether nothing was deleted on purpose.
    pub dry_run: bool,
    /// Objects that were not trusted (and so neither counted nor deleted).
    pub rejected: Vec<Rejected>,
    /// Leftovers of interrupted runs older than a day that were removed (`.partial`
    /// files, open multipart uploads).
    pub stale_removed: Vec<String>,
}

/// Applies retention to the trusted snapshots. Deletes the manifest first (the snapshot
/// stops being valid), then the data and the verification record; then removes
/// leftovers of interrupted runs older than a day.
pub async fn prune(
    storage: &Storage,
    keys: &[EncryptionKey],
    policy: &Policy,
    now: DateTime<Utc>,
    dry_run: bool,
) -> Result<PruneReport, EngineError> {
    let listing = list(storage, keys).await?;
    let snaps: Vec<retention::Snapshot> = listing
        .entries
        .iter()
        .map(|e| retention::Snapshot {
            id: e.manifest.id.clone(),
            time: e.manifest.started_at,
            verified: e.verification.as_ref().is_some_and(|v| v.passed),
        })
        .collect();
    let decisions = retention::select(&snaps, policy, now);
    let mut stale_removed = Vec::new();
    if !dry_run {
        for d in decisions.iter().filter(|d| !d.keep) {
            if !listing.entries.iter().any(|e| e.manifest.id == d.id) {
                continue;
            }
            // Names derived from the (validated) id, never read from the manifest.
            storage.delete(&manifest::manifest_name(&d.id)).await?;
            storage.delete(&manifest::data_name(&d.id)).await?;
            storage.delete(&manifest::verification_name(&d.id)).await?;
        }
        stale_removed = storage
            .remove_stale_uploads(now - chrono::Duration::days(1))
            .await?;
    }
    Ok(PruneReport {
        decisions,
        dry_run,
        rejected: listing.rejected,
        stale_removed,
    })
}
