//! The RolePolicy controller: validates each policy, works out which tenants it
//! applies to and what it contributes there, and reports it in status. The Roles
//! and RoleBindings themselves are written by the Tenant controller (the single
//! writer of tenant RBAC), which compiles every selecting policy
//! ([`crate::resources::rolepolicy::plan_for`]).

use std::sync::Arc;

use futures::StreamExt;
use kube::api::{Api, Patch, PatchParams};
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info_span, warn};

use super::{Backoff, Clock};
use crate::crd::condition::{Observed, merge_conditions, progress};
use crate::crd::role_policy::{RolePolicy, RolePolicyStatus, TenantBindingStatus};
use crate::crd::{ConditionStatus, Tenant};
use crate::resources::rolepolicy::{self as model, InvalidPolicy};

/// A failed status write (retried with backoff).
#[derive(Debug, thiserror::Error)]
#[error("updating RolePolicy status: {0}")]
pub struct Error(#[source] Box<kube::Error>);

impl Error {
    pub fn reason(&self) -> &'static str {
        "StatusUpdateFailed"
    }
}

/// What the RolePolicy controller needs.
pub struct PolicyContext {
    pub client: Client,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
    pub tenants: Store<Tenant>,
    pub policies: Store<RolePolicy>,
    pub backoff: Backoff,
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

async fn reconcile(policy: Arc<RolePolicy>, ctx: Arc<PolicyContext>) -> Result<Action, Error> {
    let name = policy.name_any();
    async {
        let all: Vec<RolePolicy> = ctx
            .policies
            .state()
            .iter()
            .map(|p| p.as_ref().clone())
            .collect();
        let tenants: Vec<Tenant> = ctx
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
            ctx.clock.now(),
        );
        if status == previous {
            return Ok(Action::await_change());
        }
        super::events::publish_transitions(
            &ctx.recorder,
            &policy.object_ref(&()),
            &previous.conditions,
            &status.conditions,
        )
        .await;
        let api: Api<RolePolicy> = Api::all(ctx.client.clone());
        api.patch_status(
            &name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map_err(|e| Error(Box::new(e)))?;
        Ok(Action::await_change())
    }
    .instrument(info_span!("reconcile", kind = "RolePolicy", name = %name))
    .await
}

fn error_policy(policy: Arc<RolePolicy>, error: &Error, ctx: Arc<PolicyContext>) -> Action {
    warn!(policy = %policy.name_any(), reason = error.reason(), error = %error, "reconcile failed");
    Action::requeue(ctx.backoff.delay(2, rand::random::<f64>()))
}

/// Runs the RolePolicy controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    clock: Arc<dyn Clock>,
    settings: super::Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let (tenants, writer) = reflector::store::<Tenant>();
    let tenant_stream = reflector::reflector(
        writer,
        watcher(
            Api::<Tenant>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    let controller = Controller::new(
        Api::<RolePolicy>::all(client.clone()),
        watcher::Config::default(),
    );
    let policies = controller.store();
    let all_policies = policies.clone();
    let ctx = Arc::new(PolicyContext {
        recorder: settings.recorder(client.clone()),
        client,
        clock,
        tenants,
        policies,
        backoff: settings.backoff.clone(),
    });
    controller
        .watches_stream(tenant_stream, move |_: Tenant| {
            // Tenant labels decide selection: re-evaluate every policy.
            all_policies
                .state()
                .iter()
                .map(|p| ObjectRef::from_obj(p.as_ref()))
                .collect::<Vec<_>>()
        })
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
