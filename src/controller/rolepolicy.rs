//! The RolePolicy controller: validates each policy, works out which tenants it
//! applies to and what it contributes there, and reports it in status. The Roles
//! and RoleBindings themselves are written by the Tenant controller (the single
//! writer of tenant RBAC), which compiles every selecting policy
//! ([`crate::resources::rolepolicy::plan_for`]).

use std::sync::Arc;

use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::Store;
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::driver::{self, Reconcile, Shared};
use crate::crd::condition::{Observed, merge_conditions, progress};
use crate::crd::role_policy::{RolePolicy, RolePolicyStatus, TenantBindingStatus};
use crate::crd::{ConditionStatus, Tenant};
use crate::resources::rolepolicy::{self as model, InvalidPolicy};

/// A failed status write (retried with backoff).
#[derive(Debug, thiserror::Error)]
#[error("updating RolePolicy status: {}", crate::apply::api_message(.0))]
pub struct Error(#[source] Box<kube::Error>);

impl Error {
    pub fn reason(&self) -> &'static str {
        "StatusUpdateFailed"
    }
}

/// What the RolePolicy controller needs.
pub struct PolicyContext {
    pub shared: Shared,
    pub tenants: Store<Tenant>,
    pub policies: Store<RolePolicy>,
}

/// The status a policy should have (pure).
pub fn desired_status(
    policy: &RolePolicy,
    all: &[RolePolicy],
    tenants: &[Tenant],
) -> (RolePolicyStatus, Vec<Observed>) {
    let name = policy.name_any();
    let previous = policy.status.clone().unwrap_or_default();
    let validation = model::validate(&policy.spec);
    let mut status = RolePolicyStatus {
        last_valid_spec: match &validation {
            Ok(()) => serde_json::to_string(&policy.spec).ok(),
            Err(_) => previous.last_valid_spec.clone(),
        },
        ..Default::default()
    };
    let mut conflict: Option<InvalidPolicy> = None;
    if let Some(spec) = model::effective_spec(policy) {
        for t in tenants {
            let tname = t.name_any();
            if !model::selects(
                &spec,
                &tname,
                &t.metadata.labels.clone().unwrap_or_default(),
            ) {
                continue;
            }
            let plan = model::plan_for(t, all);
            if let Some(c) = plan.conflicts.get(&name) {
                conflict.get_or_insert_with(|| c.clone());
                continue;
            }
            let (roles, bindings) = plan.contributions.get(&name).copied().unwrap_or_default();
            status.tenants.push(TenantBindingStatus {
                tenant: tname,
                roles,
                bindings,
            });
        }
    }
    status.tenants.sort_by(|a, b| a.tenant.cmp(&b.tenant));
    status.tenant_count = status.tenants.len() as u32;
    let kept = if previous.last_valid_spec.is_some() {
        "the last valid version stays applied"
    } else {
        "nothing from it is applied"
    };
    let valid = match (&validation, &conflict) {
        (Err(e), _) => Observed::new(
            "Valid",
            false,
            e.reason,
            format!("{}: {}; {kept}", e.field, e.message),
        ),
        (Ok(()), Some(c)) => Observed::new(
            "Valid",
            false,
            c.reason,
            format!(
                "{}: {}; rename the role or merge the policies",
                c.field, c.message
            ),
        ),
        (Ok(()), None) => {
            Observed::new("Valid", true, "Valid", "passes least-privilege validation")
        }
    };
    let ready = if valid.status == ConditionStatus::True {
        Observed::new(
            "Ready",
            true,
            "Applied",
            format!("applied to {} tenant(s)", status.tenant_count),
        )
    } else {
        Observed::new("Ready", false, valid.reason.clone(), valid.message.clone())
    };
    // Not ready only when invalid or in conflict: a human must fix the spec.
    let stalled = progress(&ready, true);
    (
        status,
        [Some(valid), stalled, Some(ready)]
            .into_iter()
            .flatten()
            .collect(),
    )
}

impl Reconcile for PolicyContext {
    type Object = RolePolicy;
    type Error = Error;
    const NAME: &'static str = "rolepolicy";

    fn shared(&self) -> &Shared {
        &self.shared
    }

    fn reason(error: &Error) -> &'static str {
        error.reason()
    }

    async fn reconcile(self: Arc<Self>, policy: Arc<RolePolicy>) -> Result<Action, Error> {
        let all: Vec<RolePolicy> = self
            .policies
            .state()
            .iter()
            .map(|p| p.as_ref().clone())
            .collect();
        let tenants: Vec<Tenant> = self
            .tenants
            .state()
            .iter()
            .map(|t| t.as_ref().clone())
            .collect();
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
