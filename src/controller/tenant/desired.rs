//! Step: what the tenant should have, from the pure builders: its namespaces
//! and their contents, the RBAC its RolePolicies compile to, and (for a
//! `scope: Tenant` quota) the budget spread by each namespace's use.

use std::collections::BTreeMap;

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
}

/// Builds the desired state of a validated tenant from the caches (quota
/// usage, RolePolicies).
pub(super) fn build(ctx: &Context, tenant: &Tenant, valid: &Valid, usable: &[String]) -> Desired {
    let usage = quota_usage(ctx, usable);
    let plan = plan_for(tenant, &ctx.policies());
    let objects = builder::objects(tenant, valid, &usage, &plan);
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
    }
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
