//! The Tenant controller: namespaces, isolation, quotas and owner RBAC per
//! Tenant; drift healed through watches on every child kind; cleanup through a
//! finalizer according to `deletionPolicy`.
//!
//! Reconcile = observe (caches) → validate → desired (pure builders) → apply
//! (only what differs) → prune orphans → status (written only when it changed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use super::events::event;
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::api::rbac::v1::RoleBinding;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};
use tracing::{Instrument, info, info_span, warn};

use super::Context;
use super::cache::{ChildCache, ChildStream};
use crate::apply::{ApplyError, Outcome};
use crate::crd::condition::{Observed, merge_conditions, progress};
use crate::crd::tenant::{
    DeletionPolicy, NamespaceStatus, QuotaScope, QuotaStatus, Tenant, TenantStatus,
};
use crate::quantity::Milli;
use crate::resources::labels;
use crate::resources::quota::{self, Usage};
use crate::resources::rbac;
use crate::resources::tenant::{self as builder, InvalidTenant};

/// A reconcile that failed and will be retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    /// Validated before building, so only reachable if the two disagree.
    #[error(transparent)]
    Invalid(#[from] InvalidTenant),
    #[error("{action}: {source}")]
    Kube {
        action: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    /// The reconcile panicked (a bug): retried with backoff like any failure
    /// instead of taking the controller down.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

impl Error {
    /// Bounded reason for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Apply(e) => e.reason(),
            Error::Invalid(e) => e.reason,
            Error::Kube { .. } => "ApiError",
            Error::Panicked(_) => "Panic",
        }
    }
}

fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube {
        action,
        source: Box::new(source),
    }
}

fn ns_ar() -> ApiResource {
    ApiResource::erase::<Namespace>(&())
}

fn tenant_ar() -> ApiResource {
    ApiResource::erase::<Tenant>(&())
}

/// How a namespace the spec lists relates to this tenant.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum NsState {
    /// Not in the managed cache: create it (a 409 says it exists unmanaged,
    /// released, or was created meanwhile; it is then looked up).
    Unseen,
    /// Does not exist (looked up after a 409: deleted again meanwhile).
    Absent,
    /// Ours (or released by this same tenant earlier): apply.
    Owned,
    /// Being deleted.
    Terminating,
    /// Exists and belongs to someone else.
    Conflict(String),
}

/// The state of a namespace from the managed cache; `Unseen` when not cached.
/// New namespaces cost no read: the create that follows finds out whether
/// an unmanaged one exists.
fn cached_namespace(ctx: &Context, tenant: Who<'_>, name: &str) -> NsState {
    match ctx.cache.get(&ns_ar(), None, name) {
        Some(obj) => classify_namespace(tenant, name, &obj.metadata),
        None => NsState::Unseen,
    }
}

/// Reads a namespace that exists but is not in the managed cache.
async fn lookup_namespace(ctx: &Context, tenant: Who<'_>, name: &str) -> Result<NsState, Error> {
    let api: Api<Namespace> = Api::all(ctx.client.clone());
    Ok(
        match api
            .get_metadata_opt(name)
            .await
            .map_err(kube_err("get namespace"))?
        {
            Some(meta) => classify_namespace(tenant, name, &meta.metadata),
            None => NsState::Absent,
        },
    )
}

/// The Tenant a namespace is classified for: its name and (online) uid.
#[derive(Clone, Copy)]
pub(crate) struct Who<'a> {
    pub(crate) name: &'a str,
    pub(crate) uid: Option<&'a str>,
}

pub(crate) fn classify_namespace(
    tenant: Who<'_>,
    name: &str,
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> NsState {
    let lbls = meta.labels.clone().unwrap_or_default();
    let owner = lbls.get(labels::TENANT).cloned();
    let managed =
        lbls.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE);
    match owner.as_deref() {
        Some(t) if t == tenant.name => {
            if meta.deletion_timestamp.is_some() {
                return NsState::Terminating;
            }
            match builder::adoption(
                tenant.name,
                tenant.uid,
                name,
                &lbls,
                &meta.annotations.clone().unwrap_or_default(),
            ) {
                Ok(()) => NsState::Owned,
                Err(why) => NsState::Conflict(why),
            }
        }
        Some(other) if managed => NsState::Conflict(format!(
            "namespace {name} belongs to tenant {other}; remove it from this tenant's spec.namespaces or from tenant {other}"
        )),
        _ => NsState::Conflict(format!(
            "namespace {name} already exists and is not managed by Palisade; Palisade never takes over an existing namespace: pick another name, or delete the namespace if it is unused"
        )),
    }
}

async fn publish(ctx: &Context, tenant: &Tenant, ev: kube::runtime::events::Event) {
    super::events::publish(&ctx.recorder, &tenant.object_ref(&()), ev).await;
}

/// Writes the status if it differs from the current one; Events for every
/// condition that changed.
async fn update_status(
    ctx: &Context,
    tenant: &Tenant,
    mut status: TenantStatus,
    observed: Vec<Observed>,
) -> Result<(), Error> {
    let previous = tenant.status.clone().unwrap_or_default();
    let now = ctx.clock.now();
    status.conditions = merge_conditions(
        &previous.conditions,
        &observed,
        tenant.metadata.generation,
        now,
    );
    status.observed_generation = tenant.metadata.generation;
    if status == previous {
        return Ok(());
    }
    super::events::publish_transitions(
        &ctx.recorder,
        &tenant.object_ref(&()),
        &previous.conditions,
        &status.conditions,
    )
    .await;
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let _in_flight = ctx
        .applier
        .in_flight(&tenant_ar(), None, &tenant.name_any());
    let written = api
        .patch_status(
            &tenant.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(kube_err("update tenant status"))?;
    ctx.note_tenant_write(written);
    Ok(())
}

async fn ensure_finalizer(ctx: &Context, tenant: &Tenant) -> Result<(), Error> {
    if tenant
        .finalizers()
        .iter()
        .any(|f| f == labels::TENANT_FINALIZER)
    {
        return Ok(());
    }
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    let patch = if tenant.meta().finalizers.is_none() {
        json!([{ "op": "add", "path": "/metadata/finalizers", "value": [labels::TENANT_FINALIZER] }])
    } else {
        json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": labels::TENANT_FINALIZER }])
    };
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Kube {
        action: "build finalizer patch",
        source: Box::new(kube::Error::SerdeError(e)),
    })?;
    let _in_flight = ctx
        .applier
        .in_flight(&tenant_ar(), None, &tenant.name_any());
    let written = api
        .patch(
            &tenant.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
        .map_err(kube_err("add finalizer"))?;
    ctx.note_tenant_write(written);
    Ok(())
}

async fn remove_finalizer(ctx: &Context, tenant: &Tenant) -> Result<(), Error> {
    let current: Vec<String> = tenant.finalizers().to_vec();
    if !current.iter().any(|f| f == labels::TENANT_FINALIZER) {
        return Ok(());
    }
    let remaining: Vec<&String> = current
        .iter()
        .filter(|f| *f != labels::TENANT_FINALIZER)
        .collect();
    let patch = json!([
        { "op": "test", "path": "/metadata/finalizers", "value": current },
        { "op": "replace", "path": "/metadata/finalizers", "value": remaining },
    ]);
    let patch: json_patch::Patch = serde_json::from_value(patch).map_err(|e| Error::Kube {
        action: "build finalizer patch",
        source: Box::new(kube::Error::SerdeError(e)),
    })?;
    let api: Api<Tenant> = Api::all(ctx.client.clone());
    match api
        .patch(
            &tenant.name_any(),
            &PatchParams::default(),
            &Patch::<()>::Json(patch),
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
        Err(e) => Err(kube_err("remove finalizer")(e)),
    }
}

/// Creates (or heals) the RoleBinding that grants Palisade its powers in each
/// of `namespaces`; true when one was created now. Nothing when Palisade does
/// not run as a ServiceAccount (see [`Context::service_account`]).
async fn grant_self(ctx: &Context, namespaces: &BTreeSet<String>) -> Result<bool, Error> {
    if namespaces.is_empty() {
        return Ok(false);
    }
    let Some((sa_ns, sa_name)) = ctx.service_account().await else {
        return Ok(false);
    };
    let ar = ApiResource::erase::<RoleBinding>(&());
    let mut created = false;
    for ns in namespaces {
        let binding =
            rbac::operator_binding(ns, &ctx.settings.tenant_namespace_role, &sa_ns, &sa_name);
        let value = serde_json::to_value(&binding).map_err(|e| Error::Kube {
            action: "serialize rolebinding",
            source: Box::new(kube::Error::SerdeError(e)),
        })?;
        match ctx.cache.get_value(&ar, Some(ns), rbac::OPERATOR_BINDING) {
            // Created with POST: patching (server-side apply) needs the very
            // powers this binding grants.
            None => match ctx.applier.create(&ar, value).await {
                Ok(_) => created = true,
                Err(e) if e.code() == Some(409) => {}
                Err(e) => return Err(e.into()),
            },
            Some(cached) => {
                ctx.applier
                    .apply_seen(&ar, value, Some(&cached), ctx.cache.seen_rv(&ar))
                    .await?;
            }
        }
    }
    Ok(created)
}

/// Removes Palisade's own RoleBinding from a namespace it lets go of (while
/// the namespace is still managed: the admission policy admits nothing after).
async fn revoke_self(ctx: &Context, ns: &str) -> Result<(), Error> {
    let ar = ApiResource::erase::<RoleBinding>(&());
    if let Some(binding) = ctx.cache.get(&ar, Some(ns), rbac::OPERATOR_BINDING) {
        match ctx.applier.delete(&ar, &binding).await {
            Ok(()) => {}
            Err(e) if matches!(e.code(), Some(404 | 409)) => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// Whether `ns` is labelled with the uid of another Tenant (an earlier one of the
/// same name whose objects were left behind): its objects are not this Tenant's
/// to prune, release or delete.
fn foreign_namespace(ctx: &Context, tenant: &Tenant, ns: &str) -> bool {
    let (Some(uid), Some(obj)) = (
        tenant.metadata.uid.as_deref(),
        ctx.cache.get(&ns_ar(), None, ns),
    ) else {
        return false;
    };
    obj.labels()
        .get(labels::TENANT_UID)
        .is_some_and(|u| u != uid)
}

/// Marks a namespace as released: no longer managed (so never pruned), still
/// labelled with its tenant's name (for people), without the tenant's uid label
/// (so it is no peer of the tenant's network policy and no new Tenant of the same
/// name adopts it); the annotation `palisade.dev/released-by-uid` lets this same
/// Tenant adopt it again. Palisade's own RoleBinding in it goes first.
async fn release_namespace(
    ctx: &Context,
    ns: &DynamicObject,
    tenant_uid: Option<&str>,
) -> Result<(), Error> {
    let uid = ns
        .labels()
        .get(labels::TENANT_UID)
        .cloned()
        .or(tenant_uid.map(str::to_string));
    revoke_self(ctx, &ns.name_any()).await?;
    let mut patch = json!({ "metadata": { "labels": {
        labels::MANAGED_BY: null,
        labels::TENANT_UID: null,
        labels::RELEASED: "true",
    }}});
    if let Some(uid) = uid {
        patch["metadata"]["annotations"] = json!({ labels::RELEASED_BY_UID: uid });
    }
    ctx.applier
        .merge_patch(&ns_ar(), None, &ns.name_any(), patch)
        .await?;
    Ok(())
}

/// Removes what Palisade manages for a tenant, per `deletionPolicy`: all
/// namespaces (Delete), or only the policy objects, releasing the namespaces
/// (Retain). Idempotent; tolerates apply never having run.
async fn cleanup(ctx: &Context, tenant: &Tenant) -> Result<(), Error> {
    let name = tenant.name_any();
    let policy = tenant.spec.deletion_policy;
    for (ar, obj) in ctx.cache.owned_by(&name) {
        let is_ns = ar.kind == "Namespace";
        let ns = if is_ns {
            obj.name_any()
        } else {
            obj.namespace().unwrap_or_default()
        };
        if foreign_namespace(ctx, tenant, &ns) {
            continue;
        }
        match (is_ns, policy) {
            (true, DeletionPolicy::Delete) => ctx.applier.delete(&ar, &obj).await?,
            (true, DeletionPolicy::Retain) => {
                release_namespace(ctx, &obj, tenant.metadata.uid.as_deref()).await?
            }
            (false, _) => ctx.applier.delete(&ar, &obj).await?,
        }
    }
    info!(tenant = %name, ?policy, "tenant cleaned up");
    remove_finalizer(ctx, tenant).await
}

fn quota_usage(ctx: &Context, namespaces: &[String]) -> Usage {
    let ar = ApiResource::erase::<ResourceQuota>(&());
    let mut usage = Usage::new();
    for ns in namespaces {
        let Some(obj) = ctx.cache.get(&ar, Some(ns), quota::QUOTA_NAME) else {
            continue;
        };
        let used: Option<BTreeMap<String, Quantity>> = obj
            .data
            .pointer("/status/used")
            .and_then(|v| serde_json::from_value(v.clone()).ok());
        if let Some(used) = used {
            usage.insert(ns.clone(), used);
        }
    }
    usage
}

fn sum_usage(usage: &Usage, hard: &BTreeMap<String, Quantity>) -> BTreeMap<String, Quantity> {
    hard.keys()
        .map(|k| {
            let total: i128 = usage
                .values()
                .filter_map(|u| u.get(k))
                .filter_map(|q| Milli::parse(&q.0).ok())
                .map(|m| m.0)
                .sum();
            (k.clone(), Quantity(Milli(total).to_string()))
        })
        .collect()
}

async fn reconcile_invalid(
    ctx: &Context,
    tenant: &Tenant,
    invalid: InvalidTenant,
) -> Result<Action, Error> {
    warn!(tenant = %tenant.name_any(), reason = invalid.reason, field = %invalid.field, "invalid tenant spec");
    let message = format!("{}: {}", invalid.field, invalid.message);
    let status = TenantStatus {
        namespace_count: tenant
            .status
            .as_ref()
            .map(|s| s.namespace_count)
            .unwrap_or(0),
        namespaces: tenant
            .status
            .as_ref()
            .map(|s| s.namespaces.clone())
            .unwrap_or_default(),
        ..Default::default()
    };
    let ready = Observed::new("Ready", false, invalid.reason, message);
    let observed = vec![progress(&ready, true), Some(ready)]
        .into_iter()
        .flatten()
        .collect();
    update_status(ctx, tenant, status, observed).await?;
    Ok(Action::await_change())
}

/// One reconcile of one Tenant.
pub async fn reconcile(tenant: Arc<Tenant>, ctx: Arc<Context>) -> Result<Action, Error> {
    ctx.count_reconcile();
    let writes = ctx.clone();
    let _timer = ctx
        .metrics
        .reconcile("tenant", move || writes.applier.writes());
    let tenant = ctx.freshest(tenant);
    let name = tenant.name_any();
    let span = info_span!("reconcile", kind = "Tenant", name = %name);
    // kube polls every reconcile future inside the controller's one task, so
    // concurrent reconciles would share one core (and their JSON work with
    // it); each runs as its own task instead, aborted if the controller drops it.
    let mut task = {
        let ctx = ctx.clone();
        AbortOnDrop(tokio::spawn(
            async move { reconcile_inner(&tenant, &ctx).await }.instrument(span),
        ))
    };
    let result = match (&mut task.0).await {
        Ok(result) => result,
        Err(e) => Err(Error::Panicked(e.to_string())),
    };
    if result.is_ok() {
        ctx.reset_backoff(&name);
    }
    result
}

/// A spawned task that is aborted when its handle is dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn reconcile_inner(tenant: &Tenant, ctx: &Context) -> Result<Action, Error> {
    let name = tenant.name_any();
    // Decisions are made from the caches: never from half-listed ones (a
    // restarted controller would otherwise re-create what it cannot see yet).
    ctx.cache.wait_ready().await;
    if tenant.metadata.deletion_timestamp.is_some() {
        cleanup(ctx, tenant).await?;
        return Ok(Action::await_change());
    }
    ensure_finalizer(ctx, tenant).await?;
    if let Err(invalid) = builder::validate(&name, &tenant.spec) {
        return reconcile_invalid(ctx, tenant, invalid).await;
    }

    // Observe namespaces.
    let names = builder::namespace_names(&tenant.spec);
    let who = Who {
        name: &name,
        uid: tenant.metadata.uid.as_deref(),
    };
    let mut states = BTreeMap::new();
    for ns in &names {
        states.insert(ns.clone(), cached_namespace(ctx, who, ns));
    }
    let usable: Vec<String> = names
        .iter()
        .filter(|n| matches!(states[*n], NsState::Owned | NsState::Unseen))
        .cloned()
        .collect();

    // Desired state.
    let usage = quota_usage(ctx, &usable);
    let plan = rbac_plan(ctx, tenant);
    let desired = builder::build(tenant, &usage, &plan)?;

    // Apply: namespaces first (created, never taken over), then their contents.
    let ns_ar = ns_ar();
    let mut ns_status = Vec::new();
    let mut conflicts = Vec::new();
    let mut created_ns: BTreeSet<String> = BTreeSet::new();
    for ns in &desired.namespaces {
        let ns_name = ns.metadata.name.clone().unwrap_or_default();
        let value = serde_json::to_value(ns).map_err(|e| Error::Kube {
            action: "serialize namespace",
            source: Box::new(kube::Error::SerdeError(e)),
        })?;
        let mut created = false;
        if states[&ns_name] == NsState::Unseen {
            match ctx.applier.create(&ns_ar, value.clone()).await {
                Ok(_) => created = true,
                Err(e) if e.code() == Some(409) => {
                    let found = lookup_namespace(ctx, who, &ns_name).await?;
                    states.insert(ns_name.clone(), found);
                }
                Err(e) => return Err(e.into()),
            }
        }
        if created {
            created_ns.insert(ns_name.clone());
        }
        let (phase, message) = match &states[&ns_name] {
            _ if created => ("Ready", String::new()),
            NsState::Unseen | NsState::Absent => {
                // Existed a moment ago and is gone again: decide on the next pass.
                return Ok(Action::requeue(Duration::from_secs(1)));
            }
            NsState::Owned => {
                let cached = ctx.cache.get_value(&ns_ar, None, &ns_name);
                ctx.applier
                    .apply_seen(&ns_ar, value, cached.as_ref(), ctx.cache.seen_rv(&ns_ar))
                    .await?;
                ("Ready", String::new())
            }
            NsState::Terminating => (
                "Terminating",
                format!("namespace {ns_name} is being deleted; it is recreated once it is gone"),
            ),
            NsState::Conflict(msg) => {
                conflicts.push(msg.clone());
                ("Conflict", msg.clone())
            }
        };
        ns_status.push(NamespaceStatus {
            name: ns_name,
            phase: phase.to_string(),
            message,
        });
    }
    let ready_ns: BTreeSet<String> = ns_status
        .iter()
        .filter(|s| s.phase == "Ready")
        .map(|s| s.name.clone())
        .collect();

    // Palisade's powers inside a namespace come from the RoleBinding it
    // grants itself there (crate::operator_rbac): before anything else goes
    // in. A binding created now takes a moment to reach the API server's
    // authorizer and the namespace's Secret watch: the contents follow on the
    // next pass.
    if grant_self(ctx, &ready_ns).await? {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    // Secrets and ConfigMaps are watched per namespace: decide about them only
    // where that watch has listed (never re-create what is not seen yet), or
    // in a namespace created by this very pass (nothing of ours in it yet).
    let listed_ns: BTreeSet<String> = ready_ns
        .iter()
        .filter(|ns| created_ns.contains(*ns) || ctx.cache.namespace_listed(ns))
        .cloned()
        .collect();
    let waiting_for_listing = listed_ns.len() < ready_ns.len();

    // Everything inside the tenant's ready namespaces.
    let mut wanted: BTreeSet<(String, String, String)> = BTreeSet::new();
    for ns in &ready_ns {
        wanted.insert((ns_ar.kind.clone(), String::new(), ns.clone()));
    }
    let values = desired.to_values().map_err(|e| Error::Kube {
        action: "serialize",
        source: Box::new(kube::Error::SerdeError(e)),
    })?;
    let mut terminating = false;
    for value in values.into_iter().filter(|v| v["kind"] != "Namespace") {
        let ns = value
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        if !ready_ns.contains(&ns) {
            terminating |= states.get(&ns) == Some(&NsState::Terminating);
            continue;
        }
        let Some(kind) = ctx.cache.kinds.iter().find(|k| k.ar.kind == value["kind"]) else {
            continue;
        };
        let obj_name = value
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        wanted.insert((kind.ar.kind.clone(), ns.clone(), obj_name.clone()));
        let cached = ctx.cache.get_value(&kind.ar, Some(&ns), &obj_name);
        let outcome = ctx
            .applier
            .apply_seen(&kind.ar, value, cached.as_ref(), kind.seen_rv())
            .await?;
        if outcome == Outcome::Updated {
            info!(kind = %kind.ar.kind, namespace = %ns, name = %obj_name, "restored drifted object");
        }
    }

    // Rotated secrets and their JWKS.
    let secrets = super::secrets::reconcile(ctx, tenant, &listed_ns).await?;
    wanted.extend(secrets.wanted.iter().cloned());
    for st in &secrets.statuses {
        if let Some(next) = &st.next_rotation {
            ctx.metrics.set_secret_next_rotation(
                &name,
                &st.namespace,
                &st.name,
                next.0.as_second() as f64,
            );
        }
    }
    for note in &secrets.rotations {
        publish(
            ctx,
            tenant,
            event(EventType::Normal, "SecretRotated", "Rotate", note.clone()),
        )
        .await;
    }
    for note in &secrets.deferred {
        publish(
            ctx,
            tenant,
            event(
                EventType::Warning,
                "RotationDeferred",
                "Rotate",
                note.clone(),
            ),
        )
        .await;
    }

    // TTL garbage collection of objects in the tenant's namespaces.
    let gc = super::gc::reconcile(ctx, tenant, &listed_ns).await?;

    // Application tokens for RolePolicy bindings that ask for them.
    let tokens = super::tokens::reconcile(ctx, tenant, &listed_ns, &plan).await?;
    wanted.extend(tokens.wanted.iter().cloned());
    let tokens_ok = tokens
        .observed
        .as_ref()
        .is_none_or(|o| o.status == crate::crd::ConditionStatus::True);

    // Prune what this tenant no longer wants.
    for (ar, obj) in ctx.cache.owned_by(&name) {
        let key = (
            ar.kind.clone(),
            obj.namespace().unwrap_or_default(),
            obj.name_any(),
        );
        let ns_pending = ar.kind == "Namespace" && names.contains(&key.2);
        if wanted.contains(&key) || ns_pending || obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = if ar.kind == "Namespace" {
            &key.2
        } else {
            &key.1
        };
        if foreign_namespace(ctx, tenant, ns) {
            continue;
        }
        if ar.kind == "Namespace" {
            match tenant.spec.deletion_policy {
                DeletionPolicy::Delete => ctx.applier.delete(&ar, &obj).await?,
                DeletionPolicy::Retain => {
                    release_namespace(ctx, &obj, tenant.metadata.uid.as_deref()).await?
                }
            }
            publish(
                ctx,
                tenant,
                event(
                    EventType::Normal,
                    "NamespaceRemoved",
                    "Prune",
                    format!(
                        "namespace {} left the tenant ({:?})",
                        obj.name_any(),
                        tenant.spec.deletion_policy
                    ),
                ),
            )
            .await;
        } else {
            ctx.applier.delete(&ar, &obj).await?;
        }
    }

    // Status.
    let all_ready = conflicts.is_empty() && ready_ns.len() == names.len();
    let mut observed = Vec::new();
    observed.push(if !conflicts.is_empty() {
        Observed::new(
            "NamespacesReady",
            false,
            "NamespaceConflict",
            conflicts.join("; "),
        )
    } else if !all_ready {
        Observed::new(
            "NamespacesReady",
            false,
            "NamespaceTerminating",
            "a namespace is still being deleted; it is recreated once it is gone",
        )
    } else {
        Observed::new(
            "NamespacesReady",
            true,
            "NamespacesReady",
            format!("{} namespace(s) ready", names.len()),
        )
    });
    observed.push(Observed::new(
        "NetworkIsolated",
        all_ready,
        if all_ready {
            "DefaultDenyApplied"
        } else {
            "NamespacesNotReady"
        },
        if all_ready {
            "default-deny and allow policies are in place in every namespace".to_string()
        } else {
            "isolation is incomplete until every namespace is ready".to_string()
        },
    ));
    let has_quota = tenant.spec.quota.is_some() || tenant.spec.cordoned;
    observed.push(match (has_quota, all_ready) {
        (false, _) => Observed::new(
            "QuotaEnforced",
            true,
            "NoQuotaRequested",
            "spec.quota is not set",
        ),
        (true, true) => Observed::new(
            "QuotaEnforced",
            true,
            if tenant.spec.cordoned {
                "Cordoned"
            } else {
                "QuotaApplied"
            },
            if tenant.spec.cordoned {
                "tenant is cordoned: no new pods"
            } else {
                "ResourceQuota applied in every namespace"
            },
        ),
        (true, false) => Observed::new(
            "QuotaEnforced",
            false,
            "NamespacesNotReady",
            "quota is incomplete until every namespace is ready",
        ),
    });
    let secrets_ok = secrets.observed.status == crate::crd::ConditionStatus::True;
    let (ready_reason, ready_msg) = if !conflicts.is_empty() {
        ("NamespaceConflict", conflicts.join("; "))
    } else if all_ready && !secrets_ok {
        (
            secrets.observed.reason.as_str(),
            secrets.observed.message.clone(),
        )
    } else if all_ready && !gc.healthy {
        (gc.observed.reason.as_str(), gc.observed.message.clone())
    } else if let (true, false, Some(t)) = (all_ready, tokens_ok, &tokens.observed) {
        (t.reason.as_str(), t.message.clone())
    } else if !all_ready {
        (
            "NamespaceTerminating",
            "waiting for a namespace to finish deleting".to_string(),
        )
    } else if waiting_for_listing {
        (
            "NamespacesInitializing",
            "waiting for the Secret and ConfigMap watches of new namespaces".to_string(),
        )
    } else {
        ("Reconciled", "all tenant objects are in place".to_string())
    };
    let ready = Observed::new(
        "Ready",
        all_ready && secrets_ok && gc.healthy && tokens_ok && !waiting_for_listing,
        ready_reason.to_string(),
        ready_msg,
    );
    // In flight: a namespace still terminating, a key generation to retry.
    // Everything else that keeps a Tenant from Ready needs a human.
    let in_flight = matches!(
        ready_reason,
        "NamespaceTerminating" | "KeyGenerationFailed" | "NamespacesInitializing"
    );
    observed.extend(progress(&ready, !in_flight));
    observed.push(ready);
    observed.push(secrets.observed.clone());
    observed.push(gc.observed.clone());
    observed.extend(tokens.observed.clone());

    let quota_status = tenant
        .spec
        .quota
        .as_ref()
        .filter(|q| q.scope == QuotaScope::Tenant)
        .map(|q| {
            let hard = quota::tenant_hard(q);
            QuotaStatus {
                used: sum_usage(&usage, &hard),
                hard,
            }
        });
    let status = TenantStatus {
        namespace_count: ready_ns.len() as u32,
        namespaces: ns_status,
        quota: quota_status,
        secrets: secrets.statuses,
        garbage_collection: gc.status,
        ..tenant.status.clone().unwrap_or_default()
    };
    update_status(ctx, tenant, status, observed).await?;
    if waiting_for_listing {
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    if terminating {
        // Namespace deletion completes without an event for our label selector
        // only when the object is gone; poll gently meanwhile.
        return Ok(Action::requeue(Duration::from_secs(5)));
    }
    let deadline = secrets
        .next_deadline
        .into_iter()
        .chain(gc.next_deadline)
        .chain(tokens.next_deadline)
        .min();
    Ok(requeue_at(ctx, deadline))
}

/// Requeue exactly at the next deadline (a rotation), or wait for a change.
fn requeue_at(ctx: &Context, deadline: Option<k8s_openapi::jiff::Timestamp>) -> Action {
    match deadline {
        Some(at) => {
            let wait = at.duration_since(ctx.clock.now());
            // A deadline already past means "now"; never requeue with zero, which spins.
            let wait = Duration::try_from(wait)
                .unwrap_or_default()
                .max(Duration::from_millis(100));
            Action::requeue(wait)
        }
        None => Action::await_change(),
    }
}

/// Retry with per-object exponential backoff and jitter.
pub fn error_policy(tenant: Arc<Tenant>, error: &Error, ctx: Arc<Context>) -> Action {
    let delay = ctx.backoff_for(&tenant.name_any());
    ctx.metrics.reconcile_failure("tenant", error.reason());
    warn!(tenant = %tenant.name_any(), reason = error.reason(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// Builds the Tenant controller over `child_streams` (from [`ChildCache::new`]).
///
/// Watch events that are only the echo of this process's own writes (a
/// child it just applied, the Tenant status it just wrote) trigger nothing:
/// the reconcile that wrote them already saw that state.
pub fn controller(
    ctx: Arc<Context>,
    child_streams: Vec<(ApiResource, ChildStream)>,
) -> Controller<Tenant> {
    let tenants: Api<Tenant> = Api::all(ctx.client.clone());
    let (reader, writer) = kube::runtime::reflector::store::<Tenant>();
    let echo_ctx = ctx.clone();
    let tenant_stream = kube::runtime::reflector::reflector(
        writer,
        watcher(tenants, watcher::Config::default().any_semantic()).default_backoff(),
    )
    .touched_objects()
    .filter(move |res| {
        let ctx = echo_ctx.clone();
        let echo = res
            .as_ref()
            .ok()
            .map(|t| (t.name_any(), t.resource_version()));
        async move {
            let Some((name, rv)) = echo else { return true };
            ctx.applier.settled(&tenant_ar(), None, &name).await;
            !ctx.is_tenant_echo(&name, rv.as_deref())
        }
    });
    let mut c = Controller::for_stream(tenant_stream, reader).with_config(
        kube::runtime::controller::Config::default().concurrency(ctx.settings.concurrency),
    );
    let tenant_store = c.store();
    for (ar, stream) in child_streams {
        if ar.kind == super::cache::policy_kind().kind {
            // A policy can select any tenant (and stop selecting one): every
            // tenant re-derives its roles; a converged tenant writes nothing.
            let store = tenant_store.clone();
            c = c.watches_stream_with(
                stream,
                move |_: DynamicObject| {
                    store
                        .state()
                        .iter()
                        .map(|t| ObjectRef::from_obj(t.as_ref()))
                        .collect::<Vec<_>>()
                },
                ar,
            );
            continue;
        }
        let echo_ctx = ctx.clone();
        let kind = ar.clone();
        // Wait for our own write of the object to be answered (the event may
        // overtake it) so its echo is recognised below.
        let settle_ctx = ctx.clone();
        let settle_kind = ar.clone();
        let stream = stream.then(move |res| {
            let ctx = settle_ctx.clone();
            let kind = settle_kind.clone();
            async move {
                if let Ok(obj) = &res {
                    ctx.applier
                        .settled(&kind, obj.namespace().as_deref(), &obj.name_any())
                        .await;
                }
                res
            }
        });
        let store = tenant_store.clone();
        c = c.watches_stream_with(
            stream,
            move |obj: DynamicObject| {
                if echo_ctx.applier.is_own_write(&kind, &obj) {
                    return None;
                }
                let tenant = labels::tenant_of(obj.metadata.labels.as_ref())
                    .map(ObjectRef::<Tenant>::new)?;
                // Someone else's status write (the quota controller's) matters
                // only to a tenant budget, which spreads headroom by usage.
                if super::cache::is_status_only(&obj)
                    && !store.get(&tenant).is_some_and(|t| reads_child_status(&t))
                {
                    return None;
                }
                Some(tenant)
            },
            ar,
        );
    }
    c
}

/// Whether a tenant's desired state depends on its children's status: a
/// `scope: Tenant` quota spreads the budget by each namespace's usage.
fn reads_child_status(tenant: &Tenant) -> bool {
    tenant
        .spec
        .quota
        .as_ref()
        .is_some_and(|q| q.scope == crate::crd::tenant::QuotaScope::Tenant)
}

/// Runs the Tenant controller until `shutdown` resolves. Every item of
/// `resync` reconciles every Tenant (a converged tenant costs no write).
pub async fn run(
    ctx: Arc<Context>,
    child_streams: Vec<(ApiResource, ChildStream)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    resync: impl futures::Stream<Item = ()> + Send + 'static,
) {
    run_observed(ctx, child_streams, shutdown, resync, |_| {}).await;
}

/// Like [`run`]; `on_start` first gets the Tenant store (for readiness and the
/// Tenant gauges).
pub async fn run_observed(
    ctx: Arc<Context>,
    child_streams: Vec<(ApiResource, ChildStream)>,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
    resync: impl futures::Stream<Item = ()> + Send + 'static,
    on_start: impl FnOnce(kube::runtime::reflector::Store<Tenant>),
) {
    let c = controller(ctx.clone(), child_streams);
    on_start(c.store());
    c.reconcile_all_on(resync)
        .reconcile_on(ctx.gc.triggers())
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|res| async move {
            if let Err(e) = res {
                tracing::debug!(error = %e, "tenant controller event");
            }
        })
        .await;
}

/// The child caches of the Tenant controller plus the streams that fill them.
pub fn child_cache(client: &kube::Client) -> (ChildCache, Vec<(ApiResource, ChildStream)>) {
    let mut kinds = super::cache::tenant_child_kinds();
    kinds.push(super::cache::policy_kind());
    ChildCache::new(client, kinds)
}

/// The RBAC plan of a tenant from the cached RolePolicies.
fn rbac_plan(ctx: &Context, tenant: &Tenant) -> crate::resources::rolepolicy::RbacPlan {
    crate::resources::rolepolicy::plan_for(tenant, &ctx.cache.policies())
}
