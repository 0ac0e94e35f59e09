//! Steps: apply the objects inside the tenant's namespaces, and prune what the
//! tenant no longer wants.
//!
//! A child that fails to apply does not stop the others: a RoleBinding the
//! API server refuses must not keep the NetworkPolicies of the next namespace
//! from being healed. The failures, per kind, go to status (and the reconcile
//! is retried with backoff).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use kube::runtime::events::EventType;
use serde_json::Value;
use tracing::{info, warn};

use super::error::{Error, Failed};
use super::{Context, ObjectKey, namespaces};
use crate::apply::Outcome;
use crate::controller::events::event;
use crate::crd::tenant::Tenant;
use crate::resources::disposal::{self, Disposal, Wants};

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
                let e = Error::Apply(e);
                let failed = Failed::new(format!("apply {}", key.kind), &e);
                out.failed.entry(key.kind.clone()).or_insert(failed);
                out.error.get_or_insert(e);
            }
        }
    }
    out
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
