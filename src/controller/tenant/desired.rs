//! Step: what the tenant should have, from the pure builders: its namespaces
//! and their contents, the RBAC its RolePolicies compile to, and (for a
//! `scope: Tenant` quota) the budget spread by each namespace's use.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::ResourceQuota;
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use kube::core::ApiResource;

use super::Context;
use crate::crd::tenant::{QuotaScope, QuotaStatus, Tenant};
use crate::quantity::Milli;
use crate::resources::TenantObjects;
use crate::resources::quota::{self, Usage};
use crate::resources::rolepolicy::{RbacPlan, plan_for};
use crate::resources::tenant::{self as builder, Valid};

/// The desired state of one tenant.
pub struct Desired {
    pub objects: TenantObjects,
    /// What the selecting RolePolicies contribute (roles, bindings, tokens).
    pub plan: RbacPlan,
    /// `status.quota` of a `scope: Tenant` quota.
    pub quota: Option<QuotaStatus>,
    /// The namespaces whose Secrets and ConfigMaps are to be watched
    /// ([`builder::secrets_watched`]).
    pub secrets_watched: BTreeSet<String>,
}

/// Builds the desired state of a validated tenant from the caches (quota
/// usage, RolePolicies).
pub(super) fn build(ctx: &Context, tenant: &Tenant, valid: &Valid, usable: &[String]) -> Desired {
    let usage = quota_usage(ctx, usable);
    let plan = plan_for(tenant, &ctx.policies());
    let holding = holding(ctx, tenant, usable);
    let objects = builder::objects(tenant, valid, &usage, &plan, &holding);
    let secrets_watched = builder::secrets_watched(&tenant.spec, &holding);
    let quota = tenant
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
    Desired {
        objects,
        plan,
        quota,
        secrets_watched,
    }
}

/// The tenant's namespaces that are watched and not yet seen empty of its
/// Secrets and ConfigMaps ([`builder::still_holds_data`], from the caches).
fn holding(ctx: &Context, tenant: &Tenant, namespaces: &[String]) -> BTreeSet<String> {
    let name = tenant.metadata.name.as_deref().unwrap_or_default();
    namespaces
        .iter()
        .filter(|ns| {
            let watched = ctx.cache.secrets_watched(ns) == Some(true);
            // Asked only of watched namespaces: an unlisted one wakes the
            // tenant when it lists.
            let held =
                (watched && ctx.cache.namespace_listed(ns)).then(|| ctx.cache.holds_data(name, ns));
            builder::still_holds_data(watched, held)
        })
        .cloned()
        .collect()
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
