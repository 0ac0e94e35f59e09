//! Step: the Tenant's status, computed from what the other steps actually did
//! ([`compute`], pure and table-tested) and written only when it changed.
//!
//! A step that failed is in [`Facts::failed`]: `Ready` is False with that step's
//! reason, and a condition is True only for what was applied (NetworkPolicies
//! that failed to apply leave `NetworkIsolated` False, even if an earlier pass
//! had applied them).

use std::collections::BTreeMap;

use kube::Resource;
use kube::api::{Patch, PatchParams};
use serde_json::json;

use super::error::{Error, Failed};
use super::{Context, children, gc, namespaces, secrets, tokens};
use crate::crd::ConditionStatus;
use crate::crd::condition::{Observed, merge_conditions, progress};
use crate::crd::tenant::{QuotaStatus, Tenant, TenantStatus};
use crate::resources::tenant::InvalidTenant;

/// What one reconcile pass found and did; `None` for a step that did not run.
#[derive(Default)]
pub struct Facts {
    /// The spec's namespaces, then the owners' adopted ones.
    pub names: Vec<String>,
    /// Owners' namespaces not adopted, with why (reported as conflicts).
    pub refused_namespaces: Vec<(String, String)>,
    pub namespaces: Option<namespaces::Applied>,
    /// Some namespace's Secret/ConfigMap watch has not listed yet.
    pub waiting_for_listing: bool,
    pub children: Option<children::Applied>,
    pub secrets: Option<secrets::Outcome>,
    pub gc: Option<gc::Outcome>,
    pub tokens: Option<tokens::Outcome>,
    /// `scope: Tenant` quota: the budget and its use.
    pub quota: Option<QuotaStatus>,
    pub has_quota: bool,
    pub cordoned: bool,
    /// The step that stopped this pass.
    pub failed: Option<Failed>,
}

impl Facts {
    /// The earliest moment a step asked to decide again at (a rotation, a
    /// token renewal, an expiry), if any.
    pub fn next_deadline(&self) -> Option<k8s_openapi::jiff::Timestamp> {
        [
            self.secrets.as_ref().and_then(|s| s.next_deadline),
            self.tokens.as_ref().and_then(|t| t.next_deadline),
            self.gc.as_ref().and_then(|g| g.next_deadline),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    /// Child kinds that failed to apply, with why (the first failure of each).
    fn child_failures(&self) -> BTreeMap<&str, &Failed> {
        self.children
            .iter()
            .flat_map(|c| c.failed.iter().map(|(k, f)| (k.as_str(), f)))
            .collect()
    }
}

fn ns_condition(facts: &Facts, ns: &namespaces::Applied, all_ready: bool) -> Observed {
    if !ns.conflicts.is_empty() {
        Observed::new(
            "NamespacesReady",
            false,
            "NamespaceConflict",
            ns.conflicts.join("; "),
        )
    } else if !all_ready {
        Observed::new(
            "NamespacesReady",
            false,
            "NamespaceTerminating",
            "a namespace is still being deleted; it is recreated once it is gone",
        )
    } else {
        Observed::new(
            "NamespacesReady",
            true,
            "NamespacesReady",
            format!("{} namespace(s) ready", facts.names.len()),
        )
    }
}

/// `NetworkIsolated` / `QuotaEnforced`: True only when the kinds that carry it
/// were applied in every namespace this pass.
fn applied_condition(
    facts: &Facts,
    type_: &'static str,
    kinds: &[&str],
    all_ready: bool,
    ok: (&'static str, &str),
) -> Observed {
    let failures = facts.child_failures();
    if let Some(f) = kinds.iter().find_map(|k| failures.get(k)) {
        return Observed::new(type_, false, f.reason, f.describe());
    }
    if !all_ready {
        let what = if type_ == "NetworkIsolated" {
            "isolation"
        } else {
            "quota"
        };
        return Observed::new(
            type_,
            false,
            "NamespacesNotReady",
            format!("{what} is incomplete until every namespace is ready"),
        );
    }
    match (&facts.children, &facts.failed) {
        (Some(_), _) => Observed::new(type_, true, ok.0, ok.1),
        (None, Some(f)) => Observed::new(type_, false, f.reason, f.describe()),
        (None, None) => Observed::new(type_, false, "NotApplied", "not applied yet"),
    }
}

/// The status and conditions a pass observed (pure). `previous` supplies what
/// steps that did not run would otherwise report.
pub fn compute(previous: &TenantStatus, facts: &Facts) -> (TenantStatus, Vec<Observed>) {
    let mut observed = Vec::new();
    let ns = facts.namespaces.as_ref();
    let all_ready =
        ns.is_some_and(|n| n.conflicts.is_empty() && n.ready.len() == facts.names.len());
    match ns {
        Some(n) => observed.push(ns_condition(facts, n, all_ready)),
        None => {
            if let Some(f) = &facts.failed {
                observed.push(Observed::new(
                    "NamespacesReady",
                    false,
                    f.reason,
                    f.describe(),
                ));
            }
        }
    }
    observed.push(applied_condition(
        facts,
        "NetworkIsolated",
        &["NetworkPolicy"],
        all_ready,
        (
            "DefaultDenyApplied",
            "default-deny and allow policies are in place in every namespace",
        ),
    ));
    observed.push(if !facts.has_quota {
        Observed::new(
            "QuotaEnforced",
            true,
            "NoQuotaRequested",
            "spec.quota is not set",
        )
    } else if facts.cordoned {
        applied_condition(
            facts,
            "QuotaEnforced",
            &["ResourceQuota", "LimitRange"],
            all_ready,
            ("Cordoned", "tenant is cordoned: no new pods"),
        )
    } else {
        applied_condition(
            facts,
            "QuotaEnforced",
            &["ResourceQuota", "LimitRange"],
            all_ready,
            ("QuotaApplied", "ResourceQuota applied in every namespace"),
        )
    });
    let (ready, in_flight) = ready_condition(facts, all_ready);
    observed.extend(progress(&ready, !in_flight));
    observed.push(ready);
    observed.extend(facts.secrets.as_ref().map(|s| s.observed.clone()));
    observed.extend(facts.gc.as_ref().map(|g| g.observed.clone()));
    observed.extend(facts.tokens.as_ref().and_then(|t| t.observed.clone()));

    let status = TenantStatus {
        namespace_count: ns.map_or(previous.namespace_count, |n| n.ready.len() as u32),
        namespaces: ns.map_or_else(|| previous.namespaces.clone(), |n| n.statuses.clone()),
        quota: facts.quota.clone().or_else(|| {
            facts
                .namespaces
                .is_none()
                .then(|| previous.quota.clone())
                .flatten()
        }),
        secrets: facts
            .secrets
            .as_ref()
            .map_or_else(|| previous.secrets.clone(), |s| s.statuses.clone()),
        garbage_collection: match &facts.gc {
            Some(g) => g.status.clone(),
            None => previous.garbage_collection.clone(),
        },
        ..previous.clone()
    };
    (status, observed)
}

/// `Ready`: the first thing that keeps the tenant from it, in order of
/// importance, a failed step first of all; and whether that is in flight
/// (`Reconciling`: it resolves by itself) rather than stalled on a person.
fn ready_condition(facts: &Facts, all_ready: bool) -> (Observed, bool) {
    let failure = facts.failed.as_ref().or_else(|| {
        // Someone else's namespace outranks a child that failed to apply.
        (!has_conflicts(facts))
            .then(|| facts.child_failures().into_values().next())
            .flatten()
    });
    if let Some(f) = failure {
        return (
            Observed::new("Ready", false, f.reason, f.describe()),
            !f.stalls(),
        );
    }
    let ready = ready_unless_failed(facts, all_ready);
    let in_flight = matches!(
        ready.reason.as_str(),
        "NamespaceTerminating"
            | "KeyGenerationFailed"
            | "NamespacesInitializing"
            | "SecretsInProgress"
    );
    (ready, in_flight)
}

fn has_conflicts(facts: &Facts) -> bool {
    facts
        .namespaces
        .as_ref()
        .is_some_and(|n| !n.conflicts.is_empty())
}

fn ready_unless_failed(facts: &Facts, all_ready: bool) -> Observed {
    let not = |reason: &str, message: String| Observed::new("Ready", false, reason, message);
    if let Some(n) = facts
        .namespaces
        .as_ref()
        .filter(|n| !n.conflicts.is_empty())
    {
        return not("NamespaceConflict", n.conflicts.join("; "));
    }
    let unhealthy = |o: &Observed| o.status != ConditionStatus::True;
    if all_ready {
        if let Some(s) = facts.secrets.as_ref().filter(|s| unhealthy(&s.observed)) {
            return not(&s.observed.reason, s.observed.message.clone());
        }
        if let Some(g) = facts.gc.as_ref().filter(|g| !g.healthy) {
            return not(&g.observed.reason, g.observed.message.clone());
        }
        if let Some(t) = facts
            .tokens
            .as_ref()
            .and_then(|t| t.observed.as_ref())
            .filter(|o| unhealthy(o))
        {
            return not(&t.reason, t.message.clone());
        }
    } else {
        return not(
            "NamespaceTerminating",
            "waiting for a namespace to finish deleting".to_string(),
        );
    }
    if facts.waiting_for_listing {
        return not(
            "NamespacesInitializing",
            "waiting for the Secret and ConfigMap watches of new namespaces".to_string(),
        );
    }
    Observed::new(
        "Ready",
        true,
        "Reconciled",
        "all tenant objects are in place",
    )
}

/// Writes the status if it differs from the current one; Events for every
/// condition that changed.
pub(super) async fn write(
    ctx: &Context,
    tenant: &Tenant,
    mut status: TenantStatus,
    observed: Vec<Observed>,
) -> Result<(), Error> {
    let previous = tenant.status.clone().unwrap_or_default();
    status.conditions = merge_conditions(
        &previous.conditions,
        &observed,
        tenant.metadata.generation,
        ctx.clock.now(),
    );
    status.observed_generation = tenant.metadata.generation;
    if status == previous {
        return Ok(());
    }
    crate::controller::events::publish_transitions(
        &ctx.recorder,
        &tenant.object_ref(&()),
        &previous.conditions,
        &status.conditions,
    )
    .await;
    ctx.write_own(tenant, "update tenant status", |api, name| async move {
        let patch = Patch::Merge(json!({ "status": status }));
        api.patch_status(&name, &PatchParams::default(), &patch)
            .await
    })
    .await
}

/// The status of a Tenant whose spec is invalid: nothing is applied until it
/// is fixed; what was reported about its namespaces stays.
pub(super) fn invalid(tenant: &Tenant, invalid: &InvalidTenant) -> (TenantStatus, Vec<Observed>) {
    let previous = tenant.status.clone().unwrap_or_default();
    let status = TenantStatus {
        namespace_count: previous.namespace_count,
        namespaces: previous.namespaces,
        ..Default::default()
    };
    let message = format!("{}: {}", invalid.field, invalid.message);
    let ready = Observed::new("Ready", false, invalid.reason, message);
    let observed = progress(&ready, true).into_iter().chain([ready]).collect();
    (status, observed)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ns(ready: &[&str], conflicts: &[&str]) -> namespaces::Applied {
        namespaces::Applied {
            ready: ready.iter().map(|s| s.to_string()).collect(),
            conflicts: conflicts.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        }
    }

    fn facts(
        namespaces: Option<namespaces::Applied>,
        children: Option<children::Applied>,
    ) -> Facts {
        Facts {
            names: vec!["a".into(), "b".into()],
            namespaces,
            children,
            ..Default::default()
        }
    }

    fn failed_kind(kind: &str, reason: &'static str) -> children::Applied {
        children::Applied {
            failed: [(
                kind.to_string(),
                Failed {
                    step: format!("apply {kind}"),
                    reason,
                    message: "denied".into(),
                },
            )]
            .into(),
            ..Default::default()
        }
    }

    fn get<'a>(o: &'a [Observed], type_: &str) -> (&'a str, &'a str) {
        let c = o.iter().find(|c| c.type_ == type_).expect(type_);
        (c.status.as_str(), c.reason.as_str())
    }

    fn step_failure(reason: &'static str) -> Failed {
        Failed {
            step: "rotate secrets".into(),
            reason,
            message: "boom".into(),
        }
    }

    #[test]
    fn conditions_follow_what_was_applied() {
        let ok = || Some(children::Applied::default());
        let both = || Some(ns(&["a", "b"], &[]));
        // (facts, failed step, NetworkIsolated, QuotaEnforced (quota set), Ready, progress)
        type Want = (&'static str, &'static str);
        type Case = (Facts, Option<Failed>, Want, Want, Want, &'static str);
        let cases: Vec<Case> = vec![
            (
                facts(both(), ok()),
                None,
                ("True", "DefaultDenyApplied"),
                ("True", "QuotaApplied"),
                ("True", "Reconciled"),
                "",
            ),
            (
                facts(both(), Some(failed_kind("NetworkPolicy", "Forbidden"))),
                None,
                ("False", "Forbidden"),
                ("True", "QuotaApplied"),
                ("False", "Forbidden"),
                "Stalled",
            ),
            (
                facts(both(), Some(failed_kind("ResourceQuota", "ServerError"))),
                None,
                ("True", "DefaultDenyApplied"),
                ("False", "ServerError"),
                ("False", "ServerError"),
                "Reconciling",
            ),
            (
                facts(both(), Some(failed_kind("Role", "Forbidden"))),
                None,
                ("True", "DefaultDenyApplied"),
                ("True", "QuotaApplied"),
                ("False", "Forbidden"),
                "Stalled",
            ),
            // A later step failed: what was applied stays True, Ready says why.
            (
                facts(both(), ok()),
                Some(step_failure("ServerError")),
                ("True", "DefaultDenyApplied"),
                ("True", "QuotaApplied"),
                ("False", "ServerError"),
                "Reconciling",
            ),
            // The namespaces step failed: nothing is confirmed.
            (
                facts(None, None),
                Some(step_failure("Forbidden")),
                ("False", "NamespacesNotReady"),
                ("False", "NamespacesNotReady"),
                ("False", "Forbidden"),
                "Stalled",
            ),
            (
                facts(Some(ns(&["a"], &["b is someone else's"])), ok()),
                None,
                ("False", "NamespacesNotReady"),
                ("False", "NamespacesNotReady"),
                ("False", "NamespaceConflict"),
                "Stalled",
            ),
            (
                facts(Some(ns(&["a"], &[])), ok()),
                None,
                ("False", "NamespacesNotReady"),
                ("False", "NamespacesNotReady"),
                ("False", "NamespaceTerminating"),
                "Reconciling",
            ),
        ];
        for (i, (mut f, failed, net, quota, ready, progress)) in cases.into_iter().enumerate() {
            f.failed = failed;
            f.has_quota = true;
            let (_, o) = compute(&TenantStatus::default(), &f);
            assert_eq!(get(&o, "NetworkIsolated"), net, "case {i}");
            assert_eq!(get(&o, "QuotaEnforced"), quota, "case {i}");
            assert_eq!(get(&o, "Ready"), ready, "case {i}");
            let reported = ["Stalled", "Reconciling"]
                .into_iter()
                .find(|t| o.iter().any(|c| c.type_ == *t))
                .unwrap_or("");
            assert_eq!(reported, progress, "case {i}");
        }
    }

    #[test]
    fn waiting_for_watches_and_no_quota() {
        let mut f = facts(
            Some(ns(&["a", "b"], &[])),
            Some(children::Applied::default()),
        );
        f.waiting_for_listing = true;
        let (status, o) = compute(&TenantStatus::default(), &f);
        assert_eq!(get(&o, "Ready"), ("False", "NamespacesInitializing"));
        assert_eq!(get(&o, "QuotaEnforced"), ("True", "NoQuotaRequested"));
        assert_eq!(status.namespace_count, 2);
    }

    #[test]
    fn steps_that_did_not_run_keep_their_status() {
        let previous = TenantStatus {
            namespace_count: 2,
            secrets: vec![Default::default()],
            ..Default::default()
        };
        let mut f = facts(None, None);
        f.failed = Some(step_failure("ServerError"));
        let (status, o) = compute(&previous, &f);
        assert_eq!(status.namespace_count, 2);
        assert_eq!(status.secrets.len(), 1);
        assert!(!o.iter().any(|c| c.type_ == "SecretsRotated"));
        assert_eq!(get(&o, "NamespacesReady"), ("False", "ServerError"));
    }
}
