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
            what: format!(
                "manifest {} (signed with key {}; keys given: {})",
                manifest::manifest_name(&m.id),
                m.mac_key_id
                    .as_deref()
                    .map_or("(none)".to_string(), |k| format!(
                        "{:?}",
                        pg::bounded(k, 64)
                    )),
                key_ids(keys)
            ),
            why,
        }),
    }
}

/// The ids of `keys`, for messages (`"v1", "v2"`).
pub fn key_ids(keys: &[EncryptionKey]) -> String {
    let ids: Vec<String> = keys.iter().map(|k| format!("{:?}", k.id())).collect();
    if ids.is_empty() {
        "(none)".into()
    } else {
        ids.join(", ")
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
            let future = listing.entries.iter().filter(|e| e.future_dated).count();
            match listing.entries.into_iter().find(|e| !e.future_dated) {
                Some(e) => Ok(e.manifest),
                None if future > 0 => Err(EngineError::NoSnapshot(format!(
                    "(only {future} future-dated snapshot(s), written with a wrong clock; name one with --snapshot)"
                ))),
                None if listing.rejected.is_empty() => {
                    Err(EngineError::NoSnapshot("(none stored)".into()))
                }
                None => {
                    let unauth: Vec<&Rejected> = listing
                        .rejected
                        .iter()
                        .filter(|r| r.reason == "Unauthenticated")
                        .collect();
                    let mut signed_with: Vec<String> = unauth
                        .iter()
                        .filter_map(|r| r.mac_key_id.as_deref())
                        .map(|k| format!("{:?}", pg::bounded(k, 64)))
                        .collect();
                    signed_with.sort();
                    signed_with.dedup();
                    Err(EngineError::NoSnapshot(if unauth.is_empty() {
                        format!(
                            "(none readable; {} rejected, see backup list)",
                            listing.rejected.len()
                        )
                    } else {
                        format!(
                            "(none authenticates under the given key(s) {}: {} manifest(s) are signed with key(s) {} and their MAC does not verify; give the key with that id and material, --key-file ID=PATH)",
                            key_ids(keys),
                            unauth.len(),
                            if signed_with.is_empty() {
                                "(none: unsigned)".to_string()
                            } else {
                                signed_with.join(", ")
                            }
                        )
                    }))
                }
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
    /// Dated more than [`retention::FUTURE_SKEW`] in the future (written with a wrong
    /// clock): listed last, flagged, never taken as the newest.
    pub future_dated: bool,
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
    /// The key id a rejected manifest says it is signed with (to name the key needed).
    pub mac_key_id: Option<String>,
}

/// What `list` found.
#[derive(Clone, Debug, Default)]
pub struct Listing {
    /// Trusted snapshots, newest first.
    pub entries: Vec<Entry>,
    /// Manifests and records that were ignored.
    pub rejected: Vec<Rejected>,
}

/// Every snapshot with a (with `keys`: authenticated) manifest, newest first (those
/// dated in the future last, flagged), plus what was rejected.
pub async fn list(storage: &Storage, keys: &[EncryptionKey]) -> Result<Listing, EngineError> {
    let now = Utc::now();
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
                mac_key_id: None,
            });
            continue;
        };
        let loaded = match load_manifest(storage, id).await {
            Ok(m) => match authenticate_manifest(&m, keys, false) {
                Ok(()) => Ok(m),
                Err(e) => Err((e, m.mac_key_id)),
            },
            Err(e) => Err((e, None)),
        };
        let manifest = match loaded {
            Ok(m) => m,
            Err((EngineError::NoSnapshot(_), _)) => continue,
            Err((e @ (EngineError::Storage(_) | EngineError::Pg(_)), _)) => return Err(e),
            Err((e, mac_key_id)) => {
                out.rejected.push(Rejected {
                    name: o.name.clone(),
                    reason: e.reason(),
                    message: e.to_string(),
                    mac_key_id,
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
                        mac_key_id: r.mac_key_id.clone(),
                    }),
                },
                _ => out.rejected.push(Rejected {
                    name: vname,
                    reason: "BadRecord",
                    message: "verification record is unreadable or about another snapshot".into(),
                    mac_key_id: None,
                }),
            }
        }
        let future_dated = retention::is_future_dated(manifest.started_at, now);
        out.entries.push(Entry {
            manifest,
            verification,
            future_dated,
        });
    }
    out.entries.sort_by(|a, b| {
        a.future_dated
            .cmp(&b.future_dated)
            .then_with(|| b.manifest.started_at.cmp(&a.manifest.started_at))
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

/// How `prune` runs.
#[derive(Clone, Debug)]
pub struct PruneOptions {
    /// The clock.
    pub now: DateTime<Utc>,
    /// Decide only; delete nothing.
    pub dry_run: bool,
    /// Snapshot ids kept whatever the policy says (a run's own prune: the snapshot it
    /// just wrote).
    pub protect: Vec<String>,
    /// Prune without a key although the store holds signed manifests (every manifest is
    /// then trusted, and a forged one can push real snapshots out).
    pub allow_unauthenticated: bool,
}

impl PruneOptions {
    /// Deletes at `now`, protects nothing, trusts unsigned stores only.
    pub fn at(now: DateTime<Utc>) -> Self {
        PruneOptions {
            now,
            dry_run: false,
            protect: Vec::new(),
            allow_unauthenticated: false,
        }
    }
}

/// Applies retention to the trusted snapshots. Deletes the manifest first (the snapshot
/// stops being valid), then the data and the verification record; then removes
/// leftovers of interrupted runs older than a day. Without keys on a store whose
/// manifests are signed it refuses (unless `allow_unauthenticated`): it could not tell
/// a forged manifest from a real one.
pub async fn prune(
    storage: &Storage,
    keys: &[EncryptionKey],
    policy: &Policy,
    opts: &PruneOptions,
) -> Result<PruneReport, EngineError> {
    let (now, dry_run) = (opts.now, opts.dry_run);
    let listing = list(storage, keys).await?;
    if keys.is_empty() && !opts.allow_unauthenticated {
        let signed: Vec<&str> = listing
            .entries
            .iter()
            .filter_map(|e| e.manifest.mac_key_id.as_deref())
            .collect();
        if let Some(kid) = signed.first() {
            return Err(EngineError::Invalid(format!(
                "this store is signed ({} manifest(s) signed with key {:?}); pass the key (--key-file) so that forged manifests are not trusted, or --allow-unauthenticated to prune trusting every manifest",
                signed.len(),
                pg::bounded(kid, 64)
            )));
        }
    }
    let snaps: Vec<retention::Snapshot> = listing
        .entries
        .iter()
        .map(|e| retention::Snapshot {
            id: e.manifest.id.clone(),
            time: e.manifest.started_at,
            verified: e.verification.as_ref().is_some_and(|v| v.passed),
        })
        .collect();
    let protect: Vec<&str> = opts.protect.iter().map(String::as_str).collect();
    let decisions = retention::select(&snaps, policy, now, &protect);
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
