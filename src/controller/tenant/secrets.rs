//! Secret rotation for the Tenant controller: creates and rotates the Secrets of
//! `spec.secrets[]`, publishes JWKS for JWT keys, restarts consumers, and
//! reports per-secret status. The state machine and layout are pure
//! ([`crate::resources::secrets`]); this module only observes and writes.
//!
//! Nothing here formats secret material: Events, status and errors carry names,
//! versions (`v<N>` or a key's public thumbprint) and timestamps only.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment, StatefulSet};
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference, Secret};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, ListParams};
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::info;

use super::error::{Error, kube_err};
use super::namespaces::{Unmanaged, adopt_released};
use super::{Context, ObjectKey};
use crate::crd::condition::Observed;
use crate::crd::tenant::{ManagedSecret, SecretStatus, SecretType, Tenant};
use crate::resources::secrets::{self as model, Decision, Reason};
use crate::resources::tenant::Valid;

/// What secret reconciliation concluded.
pub struct Outcome {
    pub observed: Observed,
    /// One entry per secret (see [`model::summarize`]).
    pub statuses: Vec<SecretStatus>,
    /// What each namespace holds (for the next-rotation gauges).
    pub reports: Vec<model::Report>,
    /// The earliest rotation deadline: the controller requeues exactly then.
    pub next_deadline: Option<Timestamp>,
    /// Every object this step wants kept (never pruned).
    pub wanted: BTreeSet<ObjectKey>,
    /// Rotations, for Events.
    pub rotations: Vec<Announcement>,
    /// Forced rotations that wait for the minimum interval (new ones only), for
    /// Warning Events.
    pub deferred: Vec<Announcement>,
    /// Secrets whose data was edited by hand and put back, for Warning Events.
    pub restored: Vec<Announcement>,
    /// Secrets left for the next pass (see [`WRITES_PER_PASS`]).
    pub remaining: usize,
}

/// Secrets one reconcile writes at most; the rest follow in the next pass,
/// right after the status says how far it got. A first reconcile at the
/// documented maxima (256 namespaces x 64 secrets) is 33 passes.
pub const WRITES_PER_PASS: usize = 500;

/// Rotations named in the log line of a pass.
const LOGGED: usize = 5;

/// Something that happened to one Secret, for an Event about it.
#[derive(Clone, Debug)]
pub struct Announcement {
    pub secret: ObjectReference,
    pub note: String,
}

/// The reference of a Secret, for Events about it (with the uid of a written
/// one: `kubectl describe secret` finds its Events by it).
fn secret_reference(
    namespace: &str,
    name: &str,
    written: Option<&DynamicObject>,
) -> ObjectReference {
    ObjectReference {
        api_version: Some("v1".into()),
        kind: Some("Secret".into()),
        namespace: Some(namespace.to_string()),
        name: Some(name.to_string()),
        uid: written.and_then(|o| o.uid()),
        resource_version: written.and_then(|o| o.resource_version()),
        ..Default::default()
    }
}

fn ar<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

fn to_value<T: serde::Serialize>(obj: &T) -> Result<Value, Error> {
    super::error::to_value("secret object", obj)
}

/// Problems that stop one secret in one namespace (reported, not retried).
enum Blocked {
    Conflict(String),
    Corrupt(String),
    KeyGeneration(String),
}

/// Reconciles every managed secret of `tenant` in its ready namespaces.
pub async fn reconcile(
    ctx: &Context,
    tenant: &Tenant,
    valid: &Valid,
    ready_ns: &BTreeSet<String>,
) -> Result<Outcome, Error> {
    let name = tenant.name_any();
    let now = ctx.clock.now();
    let mut out = Outcome {
        observed: Observed::new("SecretsRotated", true, "NoSecrets", "spec.secrets is empty"),
        statuses: Vec::new(),
        reports: Vec::new(),
        next_deadline: None,
        wanted: BTreeSet::new(),
        rotations: Vec::new(),
        deferred: Vec::new(),
        restored: Vec::new(),
        remaining: 0,
    };
    if tenant.spec.secrets.is_empty() {
        return Ok(out);
    }
    let mut blocked = Vec::new();
    let mut restarts: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
    for (spec, &every) in tenant.spec.secrets.iter().zip(valid.rotate_every()) {
        let namespaces: Vec<&String> = if spec.namespaces.is_empty() {
            ready_ns.iter().collect()
        } else {
            spec.namespaces
                .iter()
                .filter(|n| ready_ns.contains(*n))
                .collect()
        };
        for ns in namespaces {
            // Bounded work per pass: the status (Reconciling, counts) is
            // written between passes, not once at the end of thousands of
            // writes. What waits is wanted all the same (never pruned).
            if out.rotations.len() >= WRITES_PER_PASS {
                out.wanted.insert(ObjectKey::new("Secret", ns, &spec.name));
                if spec.type_ == SecretType::JwtSigningKey {
                    out.wanted.insert(ObjectKey::new(
                        "ConfigMap",
                        ns,
                        &model::jwks_name(&spec.name),
                    ));
                }
                out.remaining += 1;
                out.reports.push(model::Report {
                    name: spec.name.clone(),
                    namespace: ns.clone(),
                    message: Some("not written yet: the next pass writes it".to_string()),
                    ..Default::default()
                });
                continue;
            }
            match one(ctx, tenant, spec, ns, every, now, &mut out).await? {
                Ok(Some(version)) if spec.restart_workloads => {
                    restarts
                        .entry(ns.clone())
                        .or_default()
                        .push((spec.name.clone(), version));
                }
                Ok(_) => {}
                Err(b) => {
                    out.reports.push(model::Report {
                        name: spec.name.clone(),
                        namespace: ns.clone(),
                        message: Some(b.message().to_string()),
                        ..Default::default()
                    });
                    blocked.push(b);
                }
            }
        }
    }
    out.statuses = model::summarize(&tenant.spec.secrets, &out.reports);
    for (ns, rotated) in &restarts {
        restart_consumers(ctx, ns, rotated).await?;
    }
    out.observed = observed(blocked.first(), &out, tenant.spec.cordoned);
    log_rotations(&name, &out);
    Ok(out)
}

/// The `SecretsRotated` condition after a pass (pure): the first secret that
/// is blocked, else how far the pass got.
fn observed(blocked: Option<&Blocked>, out: &Outcome, cordoned: bool) -> Observed {
    match blocked {
        Some(Blocked::Conflict(m)) => {
            Observed::new("SecretsRotated", false, "SecretConflict", m.clone())
        }
        Some(Blocked::Corrupt(m)) => {
            Observed::new("SecretsRotated", false, "SecretCorrupt", m.clone())
        }
        Some(Blocked::KeyGeneration(m)) => {
            Observed::new("SecretsRotated", false, "KeyGenerationFailed", m.clone())
        }
        None if out.remaining > 0 => Observed::new(
            "SecretsRotated",
            false,
            "SecretsInProgress",
            format!(
                "{} secret(s) written in this pass, {} to go",
                out.rotations.len(),
                out.remaining
            ),
        ),
        None if cordoned => Observed::new(
            "SecretsRotated",
            true,
            "RotationPaused",
            "tenant is cordoned: secrets are not rotated",
        ),
        None => Observed::new(
            "SecretsRotated",
            true,
            "SecretsCurrent",
            format!(
                "{} secret(s) current in {} place(s)",
                out.statuses.len(),
                out.reports.len()
            ),
        ),
    }
}

/// Once per change: what rotated is said at INFO (and in Events); a pass that
/// changed nothing is debug.
fn log_rotations(name: &str, out: &Outcome) {
    if out.rotations.is_empty() {
        tracing::debug!(tenant = %name, secret_count = out.reports.len(), "secrets current");
    } else {
        // The first few by name; the Events and status have the rest.
        let rotated: Vec<&str> = out
            .rotations
            .iter()
            .take(LOGGED)
            .map(|a| a.note.as_str())
            .collect();
        info!(tenant = %name, secret_count = out.reports.len(), rotated_count = out.rotations.len(), ?rotated, "secrets rotated");
    }
}

/// One managed secret in one namespace: what the steps below work on.
struct Target<'a> {
    tenant: &'a Tenant,
    spec: &'a ManagedSecret,
    ns: &'a str,
    every: Duration,
    now: Timestamp,
}

impl Target<'_> {
    fn blocked_conflict(&self, kind: &str, name: &str) -> Blocked {
        let (ns, entry) = (self.ns, &self.spec.name);
        Blocked::Conflict(format!(
            "{kind} {ns}/{name} exists and is not managed by Palisade; it was not overwritten: rename spec.secrets entry '{entry}' or delete that {kind}"
        ))
    }

    fn corrupt(&self, why: impl std::fmt::Display) -> Blocked {
        Blocked::Corrupt(format!("Secret {}/{}: {why}", self.ns, self.spec.name))
    }
}

impl Blocked {
    fn message(&self) -> &str {
        match self {
            Blocked::Conflict(m) | Blocked::Corrupt(m) | Blocked::KeyGeneration(m) => m,
        }
    }
}

/// `Err(Blocked)` inside `Ok`: reported in status, not retried as a failure.
type Step<T> = Result<Result<T, Blocked>, Error>;

/// One secret in one namespace. `Ok(Ok(Some(version)))` when it was rotated.
async fn one(
    ctx: &Context,
    tenant: &Tenant,
    spec: &ManagedSecret,
    ns: &str,
    every: Duration,
    now: Timestamp,
    out: &mut Outcome,
) -> Step<Option<String>> {
    let t = Target {
        tenant,
        spec,
        ns,
        every,
        now,
    };
    // Wanted even when blocked below: a managed Secret is never pruned because
    // it could not be read.
    out.wanted.insert(ObjectKey::new("Secret", ns, &spec.name));
    if spec.type_ == SecretType::JwtSigningKey {
        let jwks = model::jwks_name(&spec.name);
        out.wanted.insert(ObjectKey::new("ConfigMap", ns, &jwks));
        let cm_ar = ar::<ConfigMap>();
        if ctx.cache.get(&cm_ar, Some(ns), &jwks).is_none()
            && let Unmanaged::Foreign =
                adopt_released(ctx, &tenant.name_any(), &cm_ar, ns, &jwks).await?
        {
            return Ok(Err(t.blocked_conflict("ConfigMap", &jwks)));
        }
    }
    let secret_ar = ar::<Secret>();
    let cached = match ctx.cache.get(&secret_ar, Some(ns), &spec.name) {
        Some(cached) => Some(cached),
        None => match adopt_released(ctx, &tenant.name_any(), &secret_ar, ns, &spec.name).await? {
            Unmanaged::Absent => None,
            Unmanaged::Adopted(obj) => Some(std::sync::Arc::new(*obj)),
            Unmanaged::Foreign => return Ok(Err(t.blocked_conflict("Secret", &spec.name))),
        },
    };
    let (state, force) = match current(&t, cached.as_deref())? {
        Ok(current) => current,
        Err(blocked) => return Ok(Err(blocked)),
    };
    let (force, message) = forced(ctx, &t, state.as_ref(), force, out);
    let decision = model::decide(state.as_ref(), every, now, force, tenant.spec.cordoned);
    let (state, rotated) = match write(ctx, &t, decision, state, cached.as_deref(), out).await? {
        Ok(written) => written,
        Err(blocked) => return Ok(Err(blocked)),
    };
    if spec.type_ == SecretType::JwtSigningKey {
        let keys = match model::public_keys(spec, &state) {
            Ok(k) => k,
            Err(e) => return Ok(Err(t.corrupt(e))),
        };
        publish_jwks(ctx, &tenant.name_any(), spec, ns, keys).await?;
    }
    report(&t, &state, message, out);
    Ok(Ok(rotated.filter(|_| decision != Decision::Create)))
}

/// The managed secret's current versions and whether a rotation is asked for
/// (`palisade.dev/rotate-now`); blocked when it cannot be read.
fn current(
    t: &Target<'_>,
    cached: Option<&DynamicObject>,
) -> Step<(Option<model::SecretState>, bool)> {
    let Some(obj) = cached else {
        return Ok(Ok((None, false)));
    };
    let Ok(secret) = serde_json::from_value::<Secret>(to_value(obj)?) else {
        let (ns, name) = (t.ns, &t.spec.name);
        return Ok(Err(Blocked::Corrupt(format!(
            "Secret {ns}/{name} cannot be read"
        ))));
    };
    Ok(match model::parse_state(t.spec, &secret) {
        Ok(state) => Ok((
            Some(state),
            obj.annotations().contains_key(model::ROTATE_NOW),
        )),
        Err(e) => Err(t.corrupt(format!(
            "{e}; it is left untouched so no version is lost: restore it or delete it to start over"
        ))),
    })
}

/// A forced rotation waits for the minimum interval (the annotation stays and
/// the tenant is requeued for then): whether to force now, and the message
/// for status while it waits (a Warning Event the first time).
fn forced(
    ctx: &Context,
    t: &Target<'_>,
    state: Option<&model::SecretState>,
    force: bool,
    out: &mut Outcome,
) -> (bool, Option<String>) {
    let (true, Some(st), false) = (force, state, t.tenant.spec.cordoned) else {
        return (force, None);
    };
    let min = ctx.settings.min_forced_rotation_interval;
    let Some(at) = model::forced_rotation_deferred(st, t.now, min) else {
        return (true, None);
    };
    let m = model::deferred_message(at, min);
    let before = t
        .tenant
        .status
        .as_ref()
        .and_then(|s| s.secrets.iter().find(|x| x.name == t.spec.name))
        .and_then(|x| x.pending.iter().find(|p| p.namespace == t.ns))
        .map(|p| p.message.as_str());
    if before != Some(m.as_str()) {
        out.deferred.push(Announcement {
            secret: secret_reference(t.ns, &t.spec.name, None),
            note: format!("Secret {}/{}: {m}", t.ns, t.spec.name),
        });
    }
    out.next_deadline = Some(out.next_deadline.map_or(at, |d| d.min(at)));
    (false, Some(m))
}

/// Carries out `decision`: a new version written (created, or replaced guarded
/// by the cached resourceVersion) and announced; the state now, and the new
/// version's id when there is one.
async fn write(
    ctx: &Context,
    t: &Target<'_>,
    decision: Decision,
    state: Option<model::SecretState>,
    cached: Option<&DynamicObject>,
    out: &mut Outcome,
) -> Step<(model::SecretState, Option<String>)> {
    if decision == Decision::Keep {
        let state = state.unwrap_or_default();
        if let Some(current) = cached {
            restore_data(ctx, t, &state, current, out).await?;
        }
        return Ok(Ok((state, None)));
    }
    let version = match new_version(t.spec, state.as_ref(), t.now).await {
        Ok(v) => v,
        Err(e) => {
            return Ok(Err(Blocked::KeyGeneration(format!(
                "Secret {}/{}: {e}",
                t.ns, t.spec.name
            ))));
        }
    };
    let id = version.meta.id.clone();
    let new_state = model::rotated(state, version, t.spec.keep_previous);
    let object = to_value(&model::secret_object(
        &t.tenant.name_any(),
        t.ns,
        t.spec,
        Some(&new_state),
        t.every,
    ))?;
    let secret_ar = ar::<Secret>();
    let written = match cached {
        Some(current) => ctx.applier.replace(&secret_ar, object, current).await?,
        None => ctx.applier.create(&secret_ar, object).await?,
    };
    let why = match decision {
        Decision::Rotate(Reason::Forced) => "forced by palisade.dev/rotate-now",
        Decision::Rotate(Reason::Due) => "rotateEvery elapsed",
        _ => "created",
    };
    out.rotations.push(Announcement {
        secret: secret_reference(t.ns, &t.spec.name, Some(&written)),
        note: format!(
            "Secret {}/{} is now at version {id} ({why})",
            t.ns, t.spec.name
        ),
    });
    Ok(Ok((new_state, Some(id))))
}

/// Puts a managed Secret's data back when it no longer matches its current
/// version: a `private.pem`, `kid` or `value` edited by hand (consumers read
/// those) would otherwise stay until the next rotation, up to `rotateEvery`.
/// The kept versions (`private.<id>.pem`) are the truth; they were read and
/// checked before this.
async fn restore_data(
    ctx: &Context,
    t: &Target<'_>,
    state: &model::SecretState,
    current: &DynamicObject,
    out: &mut Outcome,
) -> Result<(), Error> {
    let Some(version) = state.current() else {
        return Ok(());
    };
    // Exactly what this process last wrote: its data matches by construction
    // (the check costs a build and a comparison per Secret per pass).
    if ctx.applier.journal().is_own_write(&ar::<Secret>(), current) {
        return Ok(());
    }
    // A kept key that does not parse is reported as corrupt, never copied.
    if t.spec.type_ == SecretType::JwtSigningKey && model::public_keys(t.spec, state).is_err() {
        return Ok(());
    }
    let mut object = to_value(&model::secret_object(
        &t.tenant.name_any(),
        t.ns,
        t.spec,
        Some(state),
        t.every,
    ))?;
    if object.get("data") == current.data.get("data") {
        return Ok(());
    }
    // A forced rotation that waits keeps its request.
    if let Some(asked) = current.annotations().get(model::ROTATE_NOW) {
        object["metadata"]["annotations"][model::ROTATE_NOW] = asked.clone().into();
    }
    let written = ctx
        .applier
        .replace(&ar::<Secret>(), object, current)
        .await?;
    info!(namespace = %t.ns, secret_name = %t.spec.name, "restored a managed Secret's data");
    out.restored.push(Announcement {
        secret: secret_reference(t.ns, &t.spec.name, Some(&written)),
        note: format!(
            "Secret {}/{}: its data did not match its current version {} (a key, kid or value edited by hand); restored",
            t.ns, t.spec.name, version.meta.id
        ),
    });
    Ok(())
}

/// The secret's status entry and its next deadline.
fn report(t: &Target<'_>, state: &model::SecretState, message: Option<String>, out: &mut Outcome) {
    let next = if t.tenant.spec.cordoned {
        None
    } else {
        model::next_rotation(state, t.every)
    };
    if let Some(n) = next {
        out.next_deadline = Some(out.next_deadline.map_or(n, |d| d.min(n)));
    }
    let current = state.current();
    out.reports.push(model::Report {
        name: t.spec.name.clone(),
        namespace: t.ns.to_string(),
        version: current.map(|c| c.meta.id.clone()),
        rotated_at: current.map(|c| c.meta.created_at),
        next_rotation: next,
        message,
    });
}

/// [`model::new_version`] on the blocking thread pool: RSA key generation takes
/// from tens of milliseconds to seconds of CPU and must not stall the async
/// workers that run every other reconcile, watch and probe.
async fn new_version(
    spec: &ManagedSecret,
    previous: Option<&model::SecretState>,
    now: Timestamp,
) -> Result<model::Version, String> {
    let spec = spec.clone();
    let previous = previous.cloned();
    tokio::task::spawn_blocking(move || model::new_version(&spec, previous.as_ref(), now))
        .await
        .map_err(|e| format!("key generation did not finish: {e}"))?
        .map_err(|e| e.to_string())
}

/// Applies the JWKS ConfigMap (same reconcile as the Secret write).
async fn publish_jwks(
    ctx: &Context,
    tenant: &str,
    spec: &ManagedSecret,
    ns: &str,
    keys: Vec<Value>,
) -> Result<(), Error> {
    let cm_ar = ar::<ConfigMap>();
    let cached = ctx
        .cache
        .get_value(&cm_ar, Some(ns), &model::jwks_name(&spec.name));
    let cm = to_value(&model::jwks_configmap(tenant, ns, spec, keys))?;
    ctx.applier
        .apply_seen(&cm_ar, cm, cached.as_ref(), ctx.cache.seen_rv(&cm_ar))
        .await?;
    Ok(())
}

/// Rolls every Deployment, StatefulSet and DaemonSet in `ns` that uses one of
/// the rotated secrets, with one patch per workload whatever the number of
/// rotations (the pod-template annotation lists every secret version).
async fn restart_consumers(
    ctx: &Context,
    ns: &str,
    rotated: &[(String, String)],
) -> Result<usize, Error> {
    let mut restarted = 0;
    for kind in [ar::<Deployment>(), ar::<StatefulSet>(), ar::<DaemonSet>()] {
        let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, &kind);
        let list = api
            .list(&ListParams::default())
            .await
            .map_err(kube_err("list workloads"))?;
        for w in list.items {
            let pod_spec = &w.data["spec"]["template"]["spec"];
            let used: Vec<(String, String)> = rotated
                .iter()
                .filter(|(secret, _)| model::pod_spec_uses_secret(pod_spec, secret))
                .cloned()
                .collect();
            if used.is_empty() {
                continue;
            }
            let current = w.data["spec"]["template"]["metadata"]["annotations"]
                [model::RESTARTED_FOR]
                .as_str();
            let Some(value) = model::restarted_for(current, &used) else {
                continue;
            };
            let patch = json!({"spec": {"template": {"metadata": {"annotations": {model::RESTARTED_FOR: value}}}}});
            ctx.applier
                .merge_patch(&kind, Some(ns), &w.name_any(), patch)
                .await?;
            info!(kind = %kind.kind, namespace = %ns, name = %w.name_any(), "restarted secret consumer");
            restarted += 1;
        }
    }
    Ok(restarted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Issue #15: an RSA key is generated off the async workers. On a
    /// single-threaded runtime another task keeps running while it is made;
    /// generated inline, the ticker would not run once before it is done.
    #[tokio::test(flavor = "current_thread")]
    async fn key_generation_does_not_block_the_runtime() {
        let spec: ManagedSecret = serde_json::from_value(json!({
            "name": "signing", "type": "JwtSigningKey", "algorithm": "RS256",
            "rotateEvery": "30d"
        }))
        .expect("spec");
        let ticks = Arc::new(AtomicUsize::new(0));
        let t = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                t.fetch_add(1, Ordering::Relaxed);
                tokio::task::yield_now().await;
            }
        });
        let now = Timestamp::from_second(1_700_000_000).expect("time");
        let version = new_version(&spec, None, now).await.expect("key");
        let during = ticks.load(Ordering::Relaxed);
        ticker.abort();
        assert!(version.material.expose().contains("PRIVATE KEY"));
        assert!(
            during > 0,
            "the runtime was blocked while the key was generated"
        );
    }
}
