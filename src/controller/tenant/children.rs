//! Steps: apply the objects inside the tenant's namespaces, and prune what the
//! tenant no longer wants.
//!
//! A child that fails to apply does not stop the others: a RoleBinding the
//! API server refuses must not keep the NetworkPolicies of the next namespace
//! from being healed. The failures, per kind, go to status (and the reconcile
//! is retried with backoff).

use std::collections::{BTreeMap, BTreeSet};

use kube::ResourceExt;
use kube::runtime::events::EventType;
use serde_json::Value;
use tracing::info;

use super::{Context, ObjectKey, namespaces};
use crate::apply::Outcome;
use crate::controller::error::{Error, Failed};
use crate::controller::events::event;
use crate::crd::tenant::{DeletionPolicy, Tenant};

/// What applying the children did.
#[derive(Debug, Default)]
pub struct Applied {
    /// Kinds that failed to apply, with the first failure of each.
    pub failed: BTreeMap<String, Failed>,
    /// Every child wanted (applied or not): never pruned.
    pub wanted: BTreeSet<ObjectKey>,
    /// The first failure: the reconcile's error (retried with backoff).
    pub error: Option<Error>,
}

/// Applies `values` (the desired children, namespaces excluded) that live in
/// the `ready` namespaces; only what differs from the cache is written.
pub(super) async fn apply(ctx: &Context, values: Vec<Value>, ready: &BTreeSet<String>) -> Applied {
    let mut out = Applied::default();
    for ns in ready {
        out.wanted.insert(ObjectKey::new("Namespace", "", ns));
    }
    for value in values {
        let key = ObjectKey::of(&value);
        if !ready.contains(&key.namespace) {
            continue;
        }
        let Some(kind) = ctx.cache.kinds.iter().find(|k| k.ar.kind == key.kind) else {
            continue;
        };
        out.wanted.insert(key.clone());
        let cached = ctx
            .cache
            .get_value(&kind.ar, Some(&key.namespace), &key.name);
        match ctx
            .applier
            .apply_seen(&kind.ar, value, cached.as_ref(), kind.seen_rv())
            .await
        {
            Ok(Outcome::Updated) => {
                info!(kind = %key.kind, namespace = %key.namespace, name = %key.name, "restored drifted object");
            }
            Ok(_) => {}
            Err(e) => {
                let e = Error::Apply(e);
                let failed = Failed::new(format!("apply {}", key.kind), &e);
                out.failed.entry(key.kind.clone()).or_insert(failed);
                out.error.get_or_insert(e);
            }
        }
    }
    out
}

/// Deletes (or releases, for namespaces under `Retain`) what `tenant` owns and
/// no longer wants. `names`: the spec's namespaces (one not yet ready is kept).
pub(super) async fn prune(
    ctx: &Context,
    tenant: &Tenant,
    names: &[String],
    wanted: &BTreeSet<ObjectKey>,
) -> Result<(), Error> {
    for (ar, obj) in ctx.cache.owned_by(&tenant.name_any()) {
        let key = ObjectKey::new(
            &ar.kind,
            &obj.namespace().unwrap_or_default(),
            &obj.name_any(),
        );
        let is_ns = ar.kind == "Namespace";
        let ns_pending = is_ns && names.contains(&key.name);
        if wanted.contains(&key) || ns_pending || obj.metadata.deletion_timestamp.is_some() {
            continue;
        }
        let ns = if is_ns { &key.name } else { &key.namespace };
        if namespaces::foreign(ctx, tenant, ns) {
            continue;
        }
        if !is_ns {
            ctx.applier.delete(&ar, &obj).await?;
            continue;
        }
        match tenant.spec.deletion_policy {
            DeletionPolicy::Delete => ctx.applier.delete(&ar, &obj).await?,
            DeletionPolicy::Retain => {
                namespaces::release(ctx, &obj, tenant.metadata.uid.as_deref()).await?
            }
        }
        super::publish(
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
    }
    Ok(())
}
