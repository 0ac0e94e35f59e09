//! Step: the Tenant's finalizer, and the cleanup it guards: what Palisade
//! manages for a deleted Tenant goes per `deletionPolicy` before the Tenant does.

use kube::api::{Api, Patch, PatchParams};
use kube::{Resource, ResourceExt};
use serde_json::json;
use tracing::info;

use super::Context;
use super::children;
use super::error::{Error, kube_err};
use crate::crd::tenant::Tenant;
use crate::resources::disposal::Wants;
use crate::resources::labels;

fn finalizer_patch(patch: serde_json::Value) -> Result<json_patch::Patch, Error> {
    serde_json::from_value(patch).map_err(|source| Error::Serialize {
        what: "finalizer patch",
        source,
    })
}

pub(super) async fn ensure_finalizer(ctx: &Context, tenant: &Tenant) -> Result<(), Error> {
    if tenant
        .finalizers()
        .iter()
        .any(|f| f == labels::TENANT_FINALIZER)
    {
        return Ok(());
    }
    let patch = if tenant.meta().finalizers.is_none() {
        json!([{ "op": "add", "path": "/metadata/finalizers", "value": [labels::TENANT_FINALIZER] }])
    } else {
        json!([{ "op": "add", "path": "/metadata/finalizers/-", "value": labels::TENANT_FINALIZER }])
    };
    let patch = finalizer_patch(patch)?;
    ctx.write_own(tenant, "add finalizer", |api, name| async move {
        api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch))
            .await
    })
    .await
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
    let patch = finalizer_patch(patch)?;
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

/// Removes what Palisade manages for a tenant, per `deletionPolicy` and the
/// rule of [`crate::resources::disposal`]: the namespaces (Delete: their
/// contents go with them), or Palisade's policy objects only, keeping the
/// generated data and releasing the namespaces (Retain). Idempotent;
/// tolerates apply never having run.
pub(super) async fn cleanup(ctx: &Context, tenant: &Tenant) -> Result<(), Error> {
    let policy = tenant.spec.deletion_policy;
    let nothing = Default::default();
    let wants = Wants {
        objects: &nothing,
        namespaces: &[],
        policy,
    };
    let done = children::dispose_owned(ctx, tenant, &wants).await?;
    info!(tenant = %tenant.name_any(), ?policy, changed = done.len(), "tenant cleaned up");
    remove_finalizer(ctx, tenant).await
}
