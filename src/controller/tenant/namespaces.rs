//! Step: the tenant's namespaces. Classified from the managed cache, created
//! (never taken over), healed; Palisade grants itself its per-namespace role in
//! each; a namespace that leaves the tenant is deleted or released.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::api::rbac::v1::RoleBinding;
use kube::ResourceExt;
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use serde_json::json;

use super::Context;
use super::error::{Error, kube_err, to_value};
use crate::crd::tenant::NamespaceStatus;
use crate::resources::labels;
use crate::resources::rbac;
use crate::resources::tenant::{NsState, Who, classify_namespace};

pub(super) fn ns_ar() -> ApiResource {
    ApiResource::erase::<Namespace>(&())
}

/// The state of a namespace from the managed cache; `Unseen` when not cached.
/// New namespaces cost no read: the create that follows finds out whether
/// an unmanaged one exists.
pub(super) fn cached(ctx: &Context, tenant: Who<'_>, name: &str) -> NsState {
    match ctx.cache.get(&ns_ar(), None, name) {
        Some(obj) => classify_namespace(tenant, name, &obj.metadata),
        None => NsState::Unseen,
    }
}

/// Reads a namespace that exists but is not in the managed cache.
async fn lookup(ctx: &Context, tenant: Who<'_>, name: &str) -> Result<NsState, Error> {
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

/// What the namespaces step found and did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Applied {
    /// One entry per namespace of the spec, in spec order.
    pub statuses: Vec<NamespaceStatus>,
    /// Why namespaces could not be used (someone else's, unmanaged).
    pub conflicts: Vec<String>,
    /// Namespaces that exist and are this tenant's.
    pub ready: BTreeSet<String>,
    /// Namespaces created by this pass.
    pub created: BTreeSet<String>,
    /// Namespaces still being deleted (recreated once gone).
    pub terminating: BTreeSet<String>,
}

impl Applied {
    /// Reports owners' namespaces that are not adopted (see
    /// [`crate::resources::tenant::owner_namespaces`]) as conflicts: someone
    /// must delete them or let the tenant have them.
    pub fn refuse(&mut self, refused: &[(String, String)]) {
        for (name, why) in refused {
            self.conflicts.push(why.clone());
            self.statuses.push(NamespaceStatus {
                name: name.clone(),
                phase: "Conflict".to_string(),
                message: why.clone(),
                created_by_owner: true,
            });
        }
    }
}

/// Creates or heals each desired namespace. `None`: a namespace vanished
/// between the cache and the create; decide on the next pass.
pub(super) async fn apply(
    ctx: &Context,
    who: Who<'_>,
    desired: &[Namespace],
    mut states: BTreeMap<String, NsState>,
) -> Result<Option<Applied>, Error> {
    let ar = ns_ar();
    let mut out = Applied::default();
    for ns in desired {
        let name = ns.metadata.name.clone().unwrap_or_default();
        let value = to_value("namespace", ns)?;
        let mut created = false;
        if states.get(&name) == Some(&NsState::Unseen) {
            match ctx.applier.create(&ar, value.clone()).await {
                Ok(_) => created = true,
                Err(e) if e.code() == Some(409) => {
                    let found = lookup(ctx, who, &name).await?;
                    states.insert(name.clone(), found);
                }
                Err(e) => return Err(e.into()),
            }
        }
        let (phase, message) = match states.get(&name).unwrap_or(&NsState::Unseen) {
            _ if created => {
                out.created.insert(name.clone());
                ("Ready", String::new())
            }
            // Existed a moment ago and is gone again.
            NsState::Unseen | NsState::Absent => return Ok(None),
            NsState::Owned => {
                let cached = ctx.cache.get_value(&ar, None, &name);
                ctx.applier
                    .apply_seen(&ar, value, cached.as_ref(), ctx.cache.seen_rv(&ar))
                    .await?;
                // Adopted back after a release (not in the managed cache
                // then): the release marks were written by a patch, which a
                // server-side apply does not take away.
                if cached.is_none_or(|c| c.pointer(RELEASED_LABEL).is_some()) {
                    unmark_released(ctx, &ar, None, &name).await?;
                }
                ("Ready", String::new())
            }
            NsState::Terminating => {
                out.terminating.insert(name.clone());
                (
                    "Terminating",
                    format!("namespace {name} is being deleted; it is recreated once it is gone"),
                )
            }
            NsState::Conflict(msg) => {
                out.conflicts.push(msg.clone());
                ("Conflict", msg.clone())
            }
        };
        if phase == "Ready" {
            out.ready.insert(name.clone());
        }
        let created_by_owner = ns
            .metadata
            .labels
            .as_ref()
            .is_some_and(|l| l.contains_key(labels::CREATED_BY_OWNER));
        out.statuses.push(NamespaceStatus {
            name,
            phase: phase.to_string(),
            message,
            created_by_owner,
        });
    }
    Ok(Some(out))
}

/// Creates (or heals) the RoleBinding that grants Palisade its powers in each
/// of `namespaces`; true when one was created now. Nothing when Palisade does
/// not run as a ServiceAccount (see [`Context::service_account`]).
pub(super) async fn grant_self(
    ctx: &Context,
    namespaces: &BTreeSet<String>,
) -> Result<bool, Error> {
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
        let value = to_value("rolebinding", &binding)?;
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

/// Keeps a Secret or ConfigMap Palisade generated in a namespace it lets go
/// of (Retain): values untouched, no longer managed (so no cache, rotation or
/// prune sees it), labelled released; its `palisade.dev/tenant` label stays,
/// so the same Tenant adopting the namespace again adopts it too
/// ([`adopt_released`]).
pub(super) async fn release_data(
    ctx: &Context,
    ar: &ApiResource,
    obj: &DynamicObject,
) -> Result<(), Error> {
    let patch = json!({ "metadata": { "labels": {
        labels::MANAGED_BY: null,
        labels::RELEASED: "true",
    }}});
    match ctx
        .applier
        .merge_patch(ar, obj.namespace().as_deref(), &obj.name_any(), patch)
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some(404) => Ok(()),
        Err(e) => Err(e.into()),
    }
}

/// An object of this name that Palisade does not manage, found in one of the
/// tenant's namespaces (the caches hold only managed objects).
pub(crate) enum Unmanaged {
    /// None.
    Absent,
    /// Released earlier by this Tenant (Retain) and now managed again, as returned
    /// by the write that adopted it.
    Adopted(Box<DynamicObject>),
    /// Someone else's: never overwritten.
    Foreign,
}

/// Looks up `name` in `ns` (a namespace of `tenant` that is ready, so ours by
/// uid); data this Tenant released there earlier is adopted back with its
/// values.
pub(crate) async fn adopt_released(
    ctx: &Context,
    tenant: &str,
    ar: &ApiResource,
    ns: &str,
    name: &str,
) -> Result<Unmanaged, Error> {
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), ns, ar);
    let Some(found) = api.get_metadata_opt(name).await.map_err(kube_err("get"))? else {
        return Ok(Unmanaged::Absent);
    };
    let l = found.labels();
    let released = l.get(labels::RELEASED).map(String::as_str) == Some("true")
        && l.get(labels::TENANT).map(String::as_str) == Some(tenant);
    if !released {
        return Ok(Unmanaged::Foreign);
    }
    let patch = json!({ "metadata": { "labels": {
        labels::MANAGED_BY: labels::MANAGED_BY_VALUE,
        labels::RELEASED: null,
    }}});
    let adopted = ctx.applier.merge_patch(ar, Some(ns), name, patch).await?;
    Ok(Unmanaged::Adopted(Box::new(adopted)))
}

/// JSON pointer of the released label in a cached object.
const RELEASED_LABEL: &str = "/metadata/labels/palisade.dev~1released";

/// Takes the marks of a release off an object adopted back.
async fn unmark_released(
    ctx: &Context,
    ar: &ApiResource,
    ns: Option<&str>,
    name: &str,
) -> Result<(), Error> {
    let patch = json!({ "metadata": {
        "labels": { labels::RELEASED: null },
        "annotations": { labels::RELEASED_BY_UID: null },
    }});
    ctx.applier.merge_patch(ar, ns, name, patch).await?;
    Ok(())
}

/// Marks a namespace as released: no longer managed (so never pruned), still
/// labelled with its tenant's name (for people), without the tenant's uid label
/// (so it is no peer of the tenant's network policy and no new Tenant of the same
/// name adopts it); the annotation `palisade.dev/released-by-uid` lets this same
/// Tenant adopt it again. Palisade's own RoleBinding in it goes first.
pub(super) async fn release(
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

/// The state of each of the spec's namespaces, from the managed cache.
pub(super) fn states(ctx: &Context, who: Who<'_>, names: &[String]) -> BTreeMap<String, NsState> {
    names
        .iter()
        .map(|n| (n.clone(), cached(ctx, who, n)))
        .collect()
}

/// The namespaces whose contents may be built: this tenant's, or not seen yet
/// (created by this pass).
pub(super) fn usable(states: &BTreeMap<String, NsState>) -> Vec<String> {
    states
        .iter()
        .filter(|(_, s)| matches!(s, NsState::Owned | NsState::Unseen))
        .map(|(n, _)| n.clone())
        .collect()
}

/// The ready namespaces where Secrets and ConfigMaps may be decided about:
/// those whose per-namespace watch has listed (never re-create what is not
/// seen yet); created by this very pass (nothing of ours in them yet); or
/// not watched and staying so (`palisade.dev/secrets-watched: "false"` is
/// only ever set on a namespace seen empty of ours, and nothing is generated
/// there until its watch has listed again).
pub(super) fn listed(
    ctx: &Context,
    ready: &BTreeSet<String>,
    created: &BTreeSet<String>,
    watched: &BTreeSet<String>,
) -> BTreeSet<String> {
    ready
        .iter()
        .filter(|ns| {
            created.contains(*ns)
                || (!watched.contains(*ns) && ctx.cache.secrets_watched(ns) == Some(false))
                || ctx.cache.namespace_listed(ns)
        })
        .cloned()
        .collect()
}
