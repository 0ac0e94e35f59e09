//! TTL garbage collection for the Tenant controller: resolves the kinds a
//! tenant's rules name through discovery, keeps one shared metadata-only watch
//! (with a reflector store) per kind in use, maps every change in a tenant
//! namespace to that tenant's reconcile, and deletes what
//! [`crate::resources::gc::select`] says is due.
//!
//! [`reconcile`] is a pipeline of named steps:
//! 1. `resolve_kinds`: the kinds the spec names, through discovery
//!    (`discovery`) and the operator's allow-list; rules compiled over them.
//! 2. `ensure_watches`: one shared watch per kind and tenant namespace
//!    (`watches`), waiting (bounded) for new ones to list.
//! 3. `Found::collect`: the candidates in the caches.
//! 4. [`crate::resources::gc::select`] (pure) decides what is due and why;
//!    `plan` turns that into Events to report and deletions within the budget.
//! 5. `report` and `delete_due` act on the plan.
//! 6. `status` computes the `GarbageCollected` condition and the next
//!    wake-up from what the steps found and did (pure).
//!
//! Events of objects whose namespace carries a tenant's labels trigger that
//! tenant's reconcile (through [`GcWatches::triggers`]). There is no periodic
//! listing: the reconcile requeues exactly at the next expiry.
//!
//! Deletions go through [`crate::apply::Applier::delete`] (uid precondition,
//! Background propagation); a 409 (the object was replaced by one with the same
//! name) leaves the new object alone. A sliding one-minute window per tenant
//! enforces `maxDeletionsPerMinute`; the rest stays pending and requeues when the
//! window frees up.

mod discovery;
mod status;
mod watches;

pub use watches::GcWatches;

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::Store;
use kube::{Resource, ResourceExt};
use serde_json::Value;
use tracing::{info, warn};

use super::{Context, ObjectKey};
use crate::controller::tenant::error::Error;
use crate::crd::condition::Observed;
use crate::crd::tenant::{AgeFrom, GarbageCollectionSpec, GcStatus, Tenant};
use crate::resources::gc::{self as model, Candidate, KindKey};
use status::{Problems, Tally};
use watches::{TenantState, WatchKey};

/// The condition this module reports.
pub const CONDITION: &str = "GarbageCollected";

/// How long a reconcile waits for a newly started watch to list its kind.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);

/// What garbage collection concluded for one tenant.
pub struct Outcome {
    /// The `GarbageCollected` condition.
    pub observed: Observed,
    /// Counters for `status.garbageCollection` (None when GC is not configured).
    pub status: Option<GcStatus>,
    /// The next expiry (or retry): the controller requeues exactly then.
    pub next_deadline: Option<Timestamp>,
    /// False only for problems that make the tenant not Ready (unknown kinds,
    /// unusable rules).
    pub healthy: bool,
}

impl Outcome {
    /// GC that does nothing (not configured, cordoned): healthy, no wake-up.
    fn idle(reason: &str, message: &str, status: Option<GcStatus>) -> Self {
        Self {
            observed: Observed::new(CONDITION, true, reason, message),
            status,
            next_deadline: None,
            healthy: true,
        }
    }
}

/// Collects what is due in `tenant`'s ready namespaces; `wanted` is what the
/// Tenant's other steps write there (never collected).
pub async fn reconcile(
    ctx: &Context,
    tenant: &Tenant,
    ready_ns: &BTreeSet<String>,
    wanted: &BTreeSet<ObjectKey>,
) -> Result<Outcome, Error> {
    let name = tenant.name_any();
    let Some(spec) = &tenant.spec.garbage_collection else {
        ctx.gc.forget(&name);
        let message = "spec.garbageCollection is not set";
        return Ok(Outcome::idle("NotConfigured", message, None));
    };
    let previous = tenant
        .status
        .as_ref()
        .and_then(|s| s.garbage_collection.clone())
        .unwrap_or_default();
    if tenant.spec.cordoned {
        let message = "tenant is cordoned: nothing is deleted";
        return Ok(Outcome::idle("Cordoned", message, Some(previous)));
    }
    let now = ctx.clock.now();

    let kinds = resolve_kinds(ctx, spec).await?;
    let stores = ensure_watches(&ctx.gc, &name, &kinds, ready_ns).await;
    let found = Found::collect(&stores, ready_ns);
    let selection = model::select(
        &found.candidates,
        &kinds.rules,
        &kinds.annotation_kinds,
        ready_ns,
        &managed(wanted, ready_ns),
        now,
    );
    let plan = ctx.gc.with_tenant(&name, |st| {
        plan(st, spec, previous.deleted, &found, &selection, now)
    });
    let tenant_ref = tenant.object_ref(&());
    report(ctx, &tenant_ref, &found, plan.reports).await;
    let (deleted, failed) = delete_due(ctx, &name, &tenant_ref, &found, &plan.delete, now).await;

    let tally = Tally {
        problems: kinds.problems,
        due: plan.due as u64,
        deleted,
        failed,
        dry_run: spec.dry_run,
        max_deletions_per_minute: spec.max_deletions_per_minute,
        unsynced: found.unsynced,
    };
    let (deleted_total, next_free) = ctx
        .gc
        .with_tenant(&name, |st| (st.deleted, st.window.next_free()));
    Ok(Outcome {
        observed: tally.condition(),
        status: Some(GcStatus {
            deleted: deleted_total,
            pending: tally.pending(),
            next_expiry: selection.next_expiry.map(Time),
        }),
        next_deadline: tally.next_deadline(now, selection.next_expiry, next_free),
        healthy: tally.problems.is_empty(),
    })
}

/// The kinds and rules one tenant's GC works with.
struct Kinds {
    /// Usable kinds (resolved and allowed), by the name the spec uses.
    resources: BTreeMap<String, ApiResource>,
    rules: Vec<model::Rule>,
    annotation_kinds: BTreeSet<KindKey>,
    problems: Problems,
}

/// Step 1: resolves the kinds `spec` names and compiles its rules over them.
async fn resolve_kinds(ctx: &Context, spec: &GarbageCollectionSpec) -> Result<Kinds, Error> {
    let wanted = discovery::wanted(spec);
    let resolved = ctx.gc.resolve(&wanted.all).await?;
    let (resources, mut problems) =
        discovery::classify(&resolved, &wanted.required, &ctx.settings.gc_kinds);
    let key_of = |n: &String| {
        resources
            .get(n)
            .map(|ar| model::kind_key(&ar.group, &ar.kind))
    };
    let mut rules = Vec::new();
    for r in &spec.rules {
        let kinds: BTreeSet<KindKey> = r.kinds.iter().filter_map(key_of).collect();
        match model::Rule::compile(r, kinds) {
            Ok(rule) => rules.push(rule),
            Err(e) => problems.invalid_rule(e.to_string()),
        }
    }
    let annotation_kinds = wanted.annotation.iter().filter_map(key_of).collect();
    Ok(Kinds {
        resources,
        rules,
        annotation_kinds,
        problems,
    })
}

/// What Palisade itself writes in the tenant's namespaces, as GC keys: what
/// the Tenant's steps want, and its own RoleBinding in each namespace.
fn managed(
    wanted: &BTreeSet<ObjectKey>,
    ready_ns: &BTreeSet<String>,
) -> BTreeSet<model::ManagedKey> {
    let key = |k: &ObjectKey| (managed_kind(&k.kind), k.namespace.clone(), k.name.clone());
    let operator = ready_ns.iter().map(|ns| {
        (
            managed_kind("RoleBinding"),
            ns.clone(),
            crate::resources::rbac::OPERATOR_BINDING.to_string(),
        )
    });
    wanted.iter().map(key).chain(operator).collect()
}

/// The GC kind key of a kind Palisade writes into tenant namespaces (its
/// `ObjectKey`s carry the kind only).
fn managed_kind(kind: &str) -> KindKey {
    let group = match kind {
        "NetworkPolicy" => "networking.k8s.io",
        "Role" | "RoleBinding" => "rbac.authorization.k8s.io",
        // Secret, ConfigMap, ResourceQuota, LimitRange, Namespace.
        _ => "",
    };
    model::kind_key(group, kind)
}

/// The cache of one kind in one namespace.
struct Watched {
    kind: KindKey,
    resource: ApiResource,
    store: Store<DynamicObject>,
}

/// Step 2: one watch per kind in use and namespace (full objects only where a
/// completion rule needs them); waits for the listings together, at most
/// [`SYNC_TIMEOUT`] (a new namespace's watches start now).
async fn ensure_watches(
    gc: &GcWatches,
    tenant: &str,
    kinds: &Kinds,
    ready_ns: &BTreeSet<String>,
) -> Vec<Watched> {
    let mut stores = Vec::new();
    let mut keys = HashSet::new();
    let by_key: BTreeMap<KindKey, &ApiResource> = kinds
        .resources
        .values()
        .map(|ar| (model::kind_key(&ar.group, &ar.kind), ar))
        .collect();
    for (kind, ar) in by_key {
        let completion = kinds
            .rules
            .iter()
            .any(|r| r.age_from == AgeFrom::Completion && r.kinds.contains(&kind));
        for ns in ready_ns {
            let key = WatchKey {
                group: ar.group.clone(),
                kind: ar.kind.clone(),
                namespace: ns.clone(),
                completion,
            };
            stores.push(Watched {
                kind: kind.clone(),
                resource: ar.clone(),
                store: gc.store(&key, ar),
            });
            keys.insert(key);
        }
    }
    gc.use_watches(tenant, keys);
    let _ = tokio::time::timeout(
        SYNC_TIMEOUT,
        futures::future::join_all(stores.iter().map(|w| w.store.wait_until_ready())),
    )
    .await;
    stores
}

/// The candidates in the caches; `objects[i]` is the object of `candidates[i]`.
struct Found {
    candidates: Vec<Candidate>,
    objects: Vec<(ApiResource, Arc<DynamicObject>)>,
    /// Some watch has not listed its kind yet (its objects are missing).
    unsynced: bool,
}

impl Found {
    /// Step 3: every object of the listed caches in a ready namespace.
    fn collect(stores: &[Watched], ready_ns: &BTreeSet<String>) -> Self {
        let mut found = Found {
            candidates: Vec::new(),
            objects: Vec::new(),
            unsynced: false,
        };
        for w in stores {
            if w.store
                .wait_until_ready()
                .now_or_never()
                .is_none_or(|r| r.is_err())
            {
                found.unsynced = true;
                continue;
            }
            for obj in w.store.state() {
                if !obj.namespace().is_some_and(|ns| ready_ns.contains(&ns)) {
                    continue;
                }
                if let Some(c) = candidate(&w.kind, &obj) {
                    found.candidates.push(c);
                    found.objects.push((w.resource.clone(), obj));
                }
            }
        }
        found
    }

    /// `Kind namespace/name` of candidate `i`, for logs and Events.
    fn describe(&self, i: usize) -> String {
        let c = &self.candidates[i];
        format!("{} {}/{}", self.objects[i].0.kind, c.namespace, c.name)
    }

    fn object_ref(&self, i: usize) -> ObjectReference {
        let (ar, obj) = &self.objects[i];
        obj.object_ref(ar)
    }
}

fn candidate(key: &KindKey, obj: &DynamicObject) -> Option<Candidate> {
    let created = obj.metadata.creation_timestamp.as_ref()?.0;
    Some(Candidate {
        kind: key.clone(),
        namespace: obj.namespace()?,
        name: obj.name_any(),
        uid: obj.uid()?,
        labels: obj.labels().clone(),
        annotations: obj.annotations().clone(),
        created,
        completed: obj
            .data
            .pointer("/status/completionTime")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
        deleting: obj.metadata.deletion_timestamp.is_some(),
        palisade_owned: obj
            .owner_references()
            .iter()
            .any(|o| model::palisade_owner(&o.api_version)),
    })
}

/// An Event to publish about candidate `index`: on the tenant (with the object
/// as related object) when `on_tenant`, else on the object itself.
struct Report {
    index: usize,
    event: Event,
    on_tenant: bool,
}

/// What this reconcile will do.
struct Plan {
    /// Events not reported before (invalid annotations, dry-run deletions).
    reports: Vec<Report>,
    /// Deletions within the budget.
    delete: Vec<model::Due>,
    /// Due objects not already being deleted by us.
    due: usize,
}

/// Step 4: the tenant's bookkeeping applied to the selection: what is new to
/// report, and what may be deleted within the budget (nothing in dry run).
fn plan(
    st: &mut TenantState,
    spec: &GarbageCollectionSpec,
    deleted_before: u64,
    found: &Found,
    selection: &model::Selection,
    now: Timestamp,
) -> Plan {
    let candidates = &found.candidates;
    let present: HashSet<&str> = candidates.iter().map(|c| c.uid.as_str()).collect();
    st.deleted = st.deleted.max(deleted_before);
    st.in_flight.retain(|u| present.contains(u.as_str()));
    st.reported.retain(|(u, _)| present.contains(u.as_str()));
    let mut reports = Vec::new();
    for inv in &selection.invalid {
        let what = format!("invalid:{}={}", inv.annotation, inv.value);
        if st
            .reported
            .insert((candidates[inv.index].uid.clone(), what))
        {
            let note = format!(
                "{}: {}; ignored (the Tenant's garbage collection rules still apply to the object)",
                inv.annotation, inv.message
            );
            reports.push(Report {
                index: inv.index,
                event: ev(EventType::Warning, "InvalidAnnotation", note, None),
                on_tenant: false,
            });
        }
    }
    let due: Vec<&model::Due> = selection
        .due
        .iter()
        .filter(|d| !st.in_flight.contains(&candidates[d.index].uid))
        .collect();
    let mut delete = Vec::new();
    if spec.dry_run {
        for d in &due {
            if st
                .reported
                .insert((candidates[d.index].uid.clone(), "dry-run".into()))
            {
                let note = format!(
                    "dry run: would delete {} ({})",
                    found.describe(d.index),
                    d.why
                );
                let about = Some(found.object_ref(d.index));
                reports.push(Report {
                    index: d.index,
                    event: ev(EventType::Normal, "WouldDelete", note, about),
                    on_tenant: true,
                });
            }
        }
    } else {
        let budget = st.window.budget(now, spec.max_deletions_per_minute);
        delete = due.iter().take(budget).map(|d| (*d).clone()).collect();
    }
    Plan {
        reports,
        delete,
        due: due.len(),
    }
}

/// Step 5a: publishes the planned Events.
async fn report(ctx: &Context, tenant_ref: &ObjectReference, found: &Found, reports: Vec<Report>) {
    for r in reports {
        if r.on_tenant {
            publish(ctx, tenant_ref, r.event).await;
        } else {
            publish(ctx, &found.object_ref(r.index), r.event).await;
        }
    }
}

/// Step 5b: deletes the planned objects; returns how many were deleted and the
/// failures (`Kind ns/name: reason`). A 409 (replaced by a new object with the
/// same name) is neither.
async fn delete_due(
    ctx: &Context,
    tenant: &str,
    tenant_ref: &ObjectReference,
    found: &Found,
    delete: &[model::Due],
    now: Timestamp,
) -> (u64, Vec<String>) {
    let mut deleted = 0u64;
    let mut failed = Vec::new();
    for d in delete {
        let (ar, obj) = &found.objects[d.index];
        let what = found.describe(d.index);
        match ctx.applier.delete(ar, obj).await {
            Ok(()) => {
                deleted += 1;
                ctx.gc.with_tenant(tenant, |st| {
                    st.window.record(now);
                    st.deleted += 1;
                    st.in_flight.insert(found.candidates[d.index].uid.clone());
                });
                info!(tenant = %tenant, object = %what, why = %d.why, "garbage collected");
                let note = format!("deleted {what} ({})", d.why);
                let about = Some(obj.object_ref(ar));
                let e = ev(EventType::Normal, "ObjectDeleted", note, about);
                publish(ctx, tenant_ref, e).await;
            }
            Err(e) if e.code() == Some(409) => {
                // Replaced by a new object with the same name: not ours to delete.
                info!(tenant = %tenant, object = %what, "object changed since it was seen; not deleted");
            }
            Err(e) => {
                warn!(tenant = %tenant, object = %what, reason = e.reason(), error = %e, "garbage collection delete failed");
                failed.push(format!("{what}: {}", e.reason()));
            }
        }
    }
    (deleted, failed)
}

/// An Event; `about` (the object concerned) makes Events about different
/// objects distinct (the recorder folds Events with the same key into a series).
fn ev(type_: EventType, reason: &str, note: String, about: Option<ObjectReference>) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "GarbageCollect".to_string(),
        secondary: about,
    }
}

async fn publish(ctx: &Context, on: &ObjectReference, e: Event) {
    crate::controller::events::publish(&ctx.recorder, on, e).await;
}
