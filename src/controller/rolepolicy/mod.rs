//! The RolePolicy controller: validates each policy, works out which tenants it
//! applies to and what it contributes there, and reports it in status. The Roles
//! and RoleBindings themselves are written by the Tenant controller (the single
//! writer of tenant RBAC), which compiles every selecting policy
//! ([`crate::resources::rolepolicy::plan_for`]).
//!
//! One file per part, as in every controller folder: [`error`] (the error
//! type), [`status`] (pure: the status a policy should have), this file (the
//! reconcile: write that status when it changed).

mod error;
mod status;

use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::driver::{self, Reconcile, Shared};
use crate::crd::Tenant;
use crate::crd::condition::merge_conditions;
use crate::crd::role_policy::RolePolicy;

pub use error::Error;
pub use status::desired_status;

/// What the RolePolicy controller needs.
pub struct PolicyContext {
    pub shared: Shared,
    pub tenants: Store<Tenant>,
    pub policies: Store<RolePolicy>,
}

impl std::ops::Deref for PolicyContext {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Reconcile for PolicyContext {
    type Object = RolePolicy;
    type Error = Error;
    const NAME: &'static str = "rolepolicy";

    async fn reconcile(self: Arc<Self>, policy: Arc<RolePolicy>) -> Result<Action, Error> {
        let all = driver::cloned(&self.policies);
        let tenants = driver::cloned(&self.tenants);
        let (mut status, observed) = desired_status(&policy, &all, &tenants);
        let previous = policy.status.clone().unwrap_or_default();
        status.observed_generation = policy.metadata.generation;
        status.conditions = merge_conditions(
            &previous.conditions,
            &observed,
            policy.metadata.generation,
            self.shared.clock.now(),
        );
        if status == previous {
            return Ok(Action::await_change());
        }
        super::events::publish_transitions(
            &self.shared.recorder,
            &policy.object_ref(&()),
            &previous.conditions,
            &status.conditions,
        )
        .await;
        let api: Api<RolePolicy> = Api::all(self.shared.client.clone());
        api.patch_status(
            &policy.name_any(),
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(|e| Error(Box::new(e)))?;
        Ok(Action::await_change())
    }
}

/// Runs the RolePolicy controller until `shutdown` resolves.
pub async fn run(
    shared: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.client.clone();
    let (tenants, tenant_stream) = driver::watch(
        Api::<Tenant>::all(client.clone()),
        watcher::Config::default(),
    );
    let (policies, policy_stream) =
        driver::watch(Api::<RolePolicy>::all(client), watcher::Config::default());
    let all_policies = policies.clone();
    let controller = Controller::for_stream(policy_stream, policies.clone())
        // Tenant labels decide selection: re-evaluate every policy.
        .watches_stream(tenant_stream, move |_: Tenant| driver::all(&all_policies));
    let ctx = Arc::new(PolicyContext {
        shared,
        tenants,
        policies,
    });
    driver::run(controller, ctx, shutdown).await;
}
