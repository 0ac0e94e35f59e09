//! The status a RolePolicy should have (pure): valid or not, in conflict or
//! not, and what it contributes to each tenant it selects.

use kube::ResourceExt;

use crate::crd::condition::{Observed, progress};
use crate::crd::role_policy::{RolePolicy, RolePolicyStatus, TenantBindingStatus};
use crate::crd::{ConditionStatus, Tenant};
use crate::resources::rolepolicy::{self as model, InvalidPolicy};

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
