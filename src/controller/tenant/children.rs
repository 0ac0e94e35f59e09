//! Steps: apply the objects inside the tenant's namespaces, and prune what the
//! tenant no longer wants.
//!
//! A child that fails to apply does not stop the others: a RoleBinding the
//! API server refuses must not keep the NetworkPolicies of the next namespace
//! from being healed. The failures, per kind, go to status (and the reconcile
//! is retried with backoff).

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::events::EventType;
use serde_json::Value;
use tracing::{info, warn};

use super::error::{Error, Failed, kube_err};
use super::{Context, ObjectKey, namespaces};
use crate::apply::Outcome;
use crate::controller::events::event;
use crate::crd::tenant::Tenant;
use crate::resources::disposal::{self, Disposal, Wants};
use crate::resources::quota;

/// What applying the children did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Kinds that failed to apply, with the first failure of each.
    pub failed: BTreeMap<String, Failed>,
    /// Every child wanted (applied or not): never pruned.
    pub wanted: BTreeSet<ObjectKey>,
    /// The first failure: the reconcile's error (retried with backoff).
    pub error: Option<Error>,
    /// Objects that held content Palisade does not set (a rule or key someone
    /// added), put back to exactly the desired content, with the field
    /// managers that had changed them.
    pub reverted: Vec<(ObjectKey, Vec<String>)>,
    /// A Tenant-scoped budget was split from usage older than the API
    /// server's: nothing was raised; the split is made again shortly.
    pub quota_stale: bool,
}

impl Applied {
    /// Records that applying a `kind` failed: the first failure per kind for
    /// status, the first error of the step for the reconcile's result.
    fn fail(&mut self, kind: &str, e: Error) {
        let failed = Failed::new(format!("apply {kind}"), &e);
        self.failed.entry(kind.to_string()).or_insert(failed);
        self.error.get_or_insert(e);
    }
}

/// Kinds that isolate a namespace: in place before anyone is granted access.
const ISOLATION: &[&str] = &["NetworkPolicy", "ResourceQuota", "LimitRange"];
/// Kinds that grant access to a namespace.
const ACCESS: &[&str] = &["Role", "RoleBinding"];

/// Applies `values` (the desired children, namespaces excluded, isolation
/// kinds before access kinds, as [`crate::resources::TenantObjects::to_values`]
/// orders them) that live in the `ready` namespaces; only what differs from
/// the cache is written. Isolation before access: in a namespace where a
/// NetworkPolicy, the ResourceQuota or the LimitRange could not be applied,
/// no Role or RoleBinding is written (existing ones stay; the failure is in
/// status and the reconcile is retried).
pub(super) async fn apply(ctx: &Context, values: Vec<Value>, ready: &BTreeSet<String>) -> Applied {
    let mut out = Applied::default();
    let mut unisolated: BTreeSet<String> = BTreeSet::new();
    for ns in ready {
        out.wanted.insert(ObjectKey::new("Namespace", "", ns));
    }
    let raise_quotas = lower_quotas_first(ctx, &values, ready, &mut out).await;
    for value in values {
        let key = ObjectKey::of(&value);
        // Cluster-scoped children (the owners' ClusterRole and binding) have
        // no namespace to wait for.
        if !key.namespace.is_empty() && !ready.contains(&key.namespace) {
            continue;
        }
        let Some(kind) = ctx.cache.kinds.iter().find(|k| k.ar.kind == key.kind) else {
            continue;
        };
        out.wanted.insert(key.clone());
        if key.kind == "ResourceQuota" && !raise_quotas {
            continue;
        }
        if ACCESS.contains(&key.kind.as_str()) && unisolated.contains(&key.namespace) {
            warn!(kind = %key.kind, namespace = %key.namespace, name = %key.name, "not granted: the namespace's isolation is not in place");
            continue;
        }
        let namespace = (!key.namespace.is_empty()).then_some(key.namespace.as_str());
        let cached = ctx.cache.get_value(&kind.ar, namespace, &key.name);
        match ctx
            .applier
            .apply_seen(&kind.ar, value, cached.as_ref(), kind.seen_rv())
            .await
        {
            Ok(Outcome::Updated) => {
                info!(kind = %key.kind, namespace = %key.namespace, name = %key.name, "restored drifted object");
            }
            Ok(Outcome::Reverted { changed_by }) => {
                info!(kind = %key.kind, namespace = %key.namespace, name = %key.name, changed_by = ?changed_by, "removed content someone else added");
                out.reverted.push((key, changed_by));
            }
            Ok(_) => {}
            Err(e) => {
                if ISOLATION.contains(&key.kind.as_str()) {
                    unisolated.insert(key.namespace.clone());
                }
                out.fail(&key.kind, Error::Apply(e));
            }
        }
    }
    out
}

/// Writes every ResourceQuota limit that goes down before any that goes up
/// ([`quota::lowered_first`]), then reads the lowered quotas back: true when
/// the quotas may now be raised. False when a lowering failed (the failure
/// is in `out`) or a lowered namespace already uses more than its new limit
/// (the usage the split was computed from was stale: `out.quota_stale`, the
/// reconcile looks again in a second, with the usage the cache has by then).
/// A Tenant's budget is never open in two namespaces at once.
async fn lower_quotas_first(
    ctx: &Context,
    values: &[Value],
    ready: &BTreeSet<String>,
    out: &mut Applied,
) -> bool {
    let ar = ApiResource::erase::<ResourceQuota>(&());
    let Some(kind) = ctx.cache.kinds.iter().find(|k| k.ar == ar) else {
        return true;
    };
    let hard_of = |v: &Value| -> BTreeMap<String, Quantity> {
        serde_json::from_value(v.pointer("/spec/hard").cloned().unwrap_or_default())
            .unwrap_or_default()
    };
    let mut lowered = Vec::new();
    for value in values.iter().filter(|v| v["kind"] == "ResourceQuota") {
        let key = ObjectKey::of(value);
        if !ready.contains(&key.namespace) {
            continue;
        }
        // A new quota only limits: nothing to lower first.
        let Some(cached) = ctx.cache.get_value(&ar, Some(&key.namespace), &key.name) else {
            continue;
        };
        let Some(stage) = quota::lowered_first(&hard_of(&cached), &hard_of(value)) else {
            continue;
        };
        let mut staged = value.clone();
        staged["spec"]["hard"] = serde_json::json!(stage);
        if let Err(e) = ctx
            .applier
            .apply_seen(&ar, staged, Some(&cached), kind.seen_rv())
            .await
        {
            out.fail(&key.kind, Error::Apply(e));
            return false;
        }
        lowered.push((key, stage));
    }
    for (key, stage) in lowered {
        let api: Api<ResourceQuota> = Api::namespaced(ctx.client.clone(), &key.namespace);
        let used = match api.get(&key.name).await {
            Ok(q) => q.status.and_then(|s| s.used).unwrap_or_default(),
            Err(e) => {
                out.fail(&key.kind, kube_err("read back a lowered ResourceQuota")(e));
                return false;
            }
        };
        if quota::exceeds(&used, &stage) {
            info!(namespace = %key.namespace, "quota usage was newer than the cache: the budget is split again before any namespace gets more");
            out.quota_stale = true;
            return false;
        }
    }
    true
}

/// Deletes or releases what `tenant` owns and no longer wants, by the one
/// rule of [`disposal`] (`names`: the spec's namespaces; a namespace not yet
/// ready is kept). An Event per namespace that leaves.
pub(super) async fn prune(
    ctx: &Context,
    tenant: &Tenant,
    names: &[String],
    wanted: &BTreeSet<ObjectKey>,
) -> Result<(), Error> {
    let wants = Wants {
        objects: wanted,
        namespaces: names,
        policy: tenant.spec.deletion_policy,
    };
    for (key, what) in dispose_owned(ctx, tenant, &wants).await? {
        if key.kind != "Namespace" {
            continue;
        }
        super::publish(
            ctx,
            tenant,
            event(
                EventType::Normal,
                "NamespaceRemoved",
                "Prune",
                format!(
                    "namespace {} left the tenant: {}",
                    key.name,
                    what.describe()
                ),
            ),
        )
        .await;
    }
    Ok(())
}

/// Carries out [`disposal::plan`] for every object `tenant` owns (the
/// contents of a namespace before the namespace); returns what changed.
pub(super) async fn dispose_owned(
    ctx: &Context,
    tenant: &Tenant,
    wants: &Wants<'_>,
) -> Result<Vec<(ObjectKey, Disposal)>, Error> {
    let owned = ctx.cache.owned_by(&tenant.name_any());
    let ns_ar = namespaces::ns_ar();
    let namespace = |ns: &str| ctx.cache.get(&ns_ar, None, ns);
    let mut done = Vec::new();
    for (key, (ar, obj), what) in owned_disposals(owned, namespace, tenant.uid().as_deref(), wants)
    {
        match what {
            Disposal::Keep | Disposal::WithNamespace => {}
            Disposal::Delete => ctx.applier.delete(&ar, &obj).await?,
            Disposal::ReleaseNamespace => {
                namespaces::release(ctx, &obj, tenant.metadata.uid.as_deref()).await?
            }
            Disposal::ReleaseData => namespaces::release_data(ctx, &ar, &obj).await?,
        }
        if what.changes() {
            done.push((key, what));
        }
    }
    Ok(done)
}

/// The prune rule over what the managed cache holds for a tenant (pure):
/// `owned` as [`crate::controller::cache::ChildCache::owned_by`] lists it,
/// `namespace` the cached namespace of a name. `palisade diff` previews the
/// same [`disposal::plan`] from its own listing (see its agreement test).
pub(crate) fn owned_disposals<O: std::ops::Deref<Target = DynamicObject>>(
    owned: Vec<(ApiResource, O)>,
    namespace: impl Fn(&str) -> Option<O>,
    tenant_uid: Option<&str>,
    wants: &Wants<'_>,
) -> Vec<(ObjectKey, (ApiResource, O), Disposal)> {
    let mut facts = disposal::Namespaces::default();
    let owned: Vec<_> = owned
        .into_iter()
        .map(|(ar, obj)| {
            let key = ObjectKey::new(
                &ar.kind,
                &obj.namespace().unwrap_or_default(),
                &obj.name_any(),
            );
            let ns = disposal::namespace_of(&key);
            if let Some(found) = namespace(ns) {
                facts.note(ns, &found.metadata, tenant_uid);
            }
            let deleting = obj.metadata.deletion_timestamp.is_some();
            (key, deleting, (ar, obj))
        })
        .collect();
    disposal::plan(owned, &facts, wants)
}
