//! What the raw `rules[]` of a RolePolicy may grant without `allowPrivileged`:
//! an allowlist, not a list of known dangers.
//!
//! Every rule is classified by (group, resource, subresource, verb). A grant
//! passes only when the resource is one Palisade knows to be namespaced and safe
//! to hand a tenant ([`SAFE`]) and the verb is one that resource allows there.
//! Everything else needs `allowPrivileged: true`: custom resources, resources of
//! any cluster-scoped group, subresources not listed (`serviceaccounts/token`,
//! `pods/proxy`, `*/status`), verbs that are not RBAC's eight resource verbs
//! (`use`, `approve`, or `CREATE`: RBAC matches verbs exactly, so a mis-cased
//! verb grants nothing and hides what was meant), and writes on the kinds
//! Palisade manages in every tenant namespace (NetworkPolicies, ResourceQuotas,
//! LimitRanges, Roles, RoleBindings) or on `palisade.dev`.
//!
//! The permission catalog ([`super::catalog`]) is trusted and not checked here,
//! but stays within this allowlist (a test says so), so a raw rule can always
//! ask for what a catalog permission grants.
//!
//! One guard: the RolePolicy controller (`Valid` condition), `palisade render`
//! and `palisade diff` all call [`check_rule`]. Reasons (bounded, used as the
//! condition reason and metric label): WildcardVerb, EscalationVerb,
//! UnknownVerb, WildcardResource, ClusterScopedResource, UnknownResource,
//! SensitiveResource, ManagedKindWrite, PalisadeWrite.

use super::{Invalid, invalid};
use crate::crd::role_policy::PolicyRule;

/// Reads.
const READ: &[&str] = &["get", "list", "watch"];
/// The verbs a `/scale` subresource serves.
const SCALE: &[&str] = &["get", "update", "patch"];
/// RBAC's resource verbs: reads and writes. Anything else is special.
const ALL: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];
/// Verbs that hand out privileges the holder was not given.
const ESCALATING: &[&str] = &["escalate", "bind", "impersonate"];

/// Why a verb on a known resource is refused: a bounded reason and the risk.
#[derive(Debug, Clone, Copy)]
struct Refusal {
    reason: &'static str,
    why: &'static str,
}

/// A verb the resource does not serve: the grant would do nothing, or
/// something other than the author thinks.
const UNSERVED: Refusal = Refusal {
    reason: "UnknownVerb",
    why: "Kubernetes does not serve that verb there; the rule would not mean what it says",
};
const MANAGED: Refusal = Refusal {
    reason: "ManagedKindWrite",
    why: "Palisade manages these in every tenant namespace (isolation, quota, RBAC): a tenant that may change them can lift its own limits",
};
const PALISADE: Refusal = Refusal {
    reason: "PalisadeWrite",
    why: "writes to palisade.dev resources would let tenants change their own isolation; use the backups:run permission to request backup runs (BackupRuns)",
};
const TOKEN: Refusal = Refusal {
    reason: "SensitiveResource",
    why: "creating a token for a ServiceAccount hands out that ServiceAccount's every right, including roles stronger than this one",
};
const EVENTS: Refusal = Refusal {
    reason: "SensitiveResource",
    why: "changing or deleting Events erases the record that auditors and alerts read",
};

/// A namespaced resource a tenant role may grant: the verbs it may grant on
/// it, and why any other verb is refused.
#[derive(Debug, Clone, Copy)]
struct Safe {
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    otherwise: Refusal,
}

const fn safe(
    group: &'static str,
    resource: &'static str,
    verbs: &'static [&'static str],
    otherwise: Refusal,
) -> Safe {
    Safe {
        group,
        resource,
        verbs,
        otherwise,
    }
}

/// The allowlist. A resource (or subresource) not here needs allowPrivileged.
const SAFE: &[Safe] = &[
    safe("", "pods", ALL, UNSERVED),
    safe("", "pods/log", READ, UNSERVED),
    safe("", "pods/exec", &["get", "create"], UNSERVED),
    safe("", "pods/attach", &["get", "create"], UNSERVED),
    safe("", "pods/portforward", &["get", "create"], UNSERVED),
    safe("", "pods/eviction", &["create"], UNSERVED),
    safe("", "services", ALL, UNSERVED),
    safe("", "endpoints", ALL, UNSERVED),
    safe("", "serviceaccounts", ALL, UNSERVED),
    safe("", "serviceaccounts/token", &[], TOKEN),
    safe("", "configmaps", ALL, UNSERVED),
    safe("", "secrets", ALL, UNSERVED),
    safe("", "persistentvolumeclaims", ALL, UNSERVED),
    safe("", "replicationcontrollers", ALL, UNSERVED),
    safe("", "replicationcontrollers/scale", SCALE, UNSERVED),
    safe("", "podtemplates", ALL, UNSERVED),
    safe("", "events", &["get", "list", "watch", "create"], EVENTS),
    safe("", "resourcequotas", READ, MANAGED),
    safe("", "limitranges", READ, MANAGED),
    safe("apps", "deployments", ALL, UNSERVED),
    safe("apps", "deployments/scale", SCALE, UNSERVED),
    safe("apps", "statefulsets", ALL, UNSERVED),
    safe("apps", "statefulsets/scale", SCALE, UNSERVED),
    safe("apps", "daemonsets", ALL, UNSERVED),
    safe("apps", "replicasets", ALL, UNSERVED),
    safe("apps", "replicasets/scale", SCALE, UNSERVED),
    safe("apps", "controllerrevisions", ALL, UNSERVED),
    safe("batch", "jobs", ALL, UNSERVED),
    safe("batch", "cronjobs", ALL, UNSERVED),
    safe("autoscaling", "horizontalpodautoscalers", ALL, UNSERVED),
    safe("policy", "poddisruptionbudgets", ALL, UNSERVED),
    safe("networking.k8s.io", "ingresses", ALL, UNSERVED),
    safe("networking.k8s.io", "networkpolicies", READ, MANAGED),
    safe("discovery.k8s.io", "endpointslices", ALL, UNSERVED),
    safe("coordination.k8s.io", "leases", ALL, UNSERVED),
    safe(
        "events.k8s.io",
        "events",
        &["get", "list", "watch", "create"],
        EVENTS,
    ),
    safe("rbac.authorization.k8s.io", "roles", READ, MANAGED),
    safe("rbac.authorization.k8s.io", "rolebindings", READ, MANAGED),
    safe(
        "authorization.k8s.io",
        "localsubjectaccessreviews",
        &["create"],
        UNSERVED,
    ),
    safe(crate::crd::GROUP, "backupschedules", READ, PALISADE),
    safe(crate::crd::GROUP, "backupruns", READ, PALISADE),
];

/// Groups whose resources are all cluster-scoped (or cluster-wide in effect).
const CLUSTER_GROUPS: &[&str] = &[
    "admissionregistration.k8s.io",
    "apiextensions.k8s.io",
    "apiregistration.k8s.io",
    "authentication.k8s.io",
    "certificates.k8s.io",
    "flowcontrol.apiserver.k8s.io",
    "internal.apiserver.k8s.io",
    "node.k8s.io",
    "scheduling.k8s.io",
    "storagemigration.k8s.io",
];

/// Cluster-scoped resources of other groups, by name (in any group: asking for
/// them names the wrong tool whatever the group). Only for a clearer message:
/// anything not in [`SAFE`] is refused anyway.
const CLUSTER_SCOPED: &[&str] = &[
    "namespaces",
    "nodes",
    "persistentvolumes",
    "componentstatuses",
    "clusterroles",
    "clusterrolebindings",
    "customresourcedefinitions",
    "storageclasses",
    "priorityclasses",
    "runtimeclasses",
    "mutatingwebhookconfigurations",
    "validatingwebhookconfigurations",
    "validatingadmissionpolicies",
    "validatingadmissionpolicybindings",
    "mutatingadmissionpolicies",
    "mutatingadmissionpolicybindings",
    "certificatesigningrequests",
    "apiservices",
    "tokenreviews",
    "subjectaccessreviews",
    "selfsubjectaccessreviews",
    "selfsubjectrulesreviews",
    "selfsubjectreviews",
    "volumeattachments",
    "volumeattributesclasses",
    "csidrivers",
    "csinodes",
    "ingressclasses",
    "ipaddresses",
    "servicecidrs",
    "podsecuritypolicies",
    "deviceclasses",
    "resourceslices",
    "tenants",
    "rolepolicies",
];

const HOW: &str = "set allowPrivileged: true if you really mean it";

/// `resource` in `group` as kubectl writes it: `pods/log`, `deployments.apps/scale`.
fn qualified(group: &str, resource: &str) -> String {
    let (base, sub) = match resource.split_once('/') {
        Some((b, s)) => (b, Some(s)),
        None => (resource, None),
    };
    let mut out = base.to_string();
    if !group.is_empty() {
        out.push('.');
        out.push_str(group);
    }
    if let Some(s) = sub {
        out.push('/');
        out.push_str(s);
    }
    out
}

fn lookup(group: &str, resource: &str) -> Option<&'static Safe> {
    SAFE.iter()
        .find(|s| s.group == group && s.resource == resource)
}

fn known_group(group: &str) -> bool {
    SAFE.iter().any(|s| s.group == group)
}

/// Checks one raw rule; `field` is its JSON path. The first problem found, in
/// this order: verbs, wildcards, cluster scope, then each resource in each of
/// the rule's groups.
pub fn check_rule(rule: &PolicyRule, field: &str) -> Result<(), Invalid> {
    check_verbs(rule, field)?;
    if rule
        .resources
        .iter()
        .any(|r| r == "*" || r.starts_with("*/"))
        || rule.api_groups.iter().any(|g| g == "*")
    {
        return Err(invalid(
            "WildcardResource",
            field,
            "'*' in resources or apiGroups grants everything, including what does not exist yet; list them",
        ));
    }
    for r in &rule.resources {
        let base = r.split('/').next().unwrap_or_default();
        let group = rule
            .api_groups
            .iter()
            .find(|g| CLUSTER_GROUPS.contains(&g.as_str()) || CLUSTER_SCOPED.contains(&base));
        if let Some(g) = group {
            return Err(invalid(
                "ClusterScopedResource",
                field,
                format!(
                    "'{}' is cluster-scoped (or cluster-wide in effect); tenant roles are namespaced: grant it with a ClusterRole outside Palisade, or {HOW}",
                    qualified(g, r)
                ),
            ));
        }
    }
    for r in &rule.resources {
        check_resource(rule, r, field)?;
    }
    Ok(())
}

fn check_verbs(rule: &PolicyRule, field: &str) -> Result<(), Invalid> {
    if rule.verbs.iter().any(|v| v == "*") {
        return Err(invalid(
            "WildcardVerb",
            field,
            "verbs: '*' grants every verb, including escalate and bind; list the verbs",
        ));
    }
    if let Some(v) = rule.verbs.iter().find(|v| ESCALATING.contains(&v.as_str())) {
        return Err(invalid(
            "EscalationVerb",
            field,
            format!("verb '{v}' lets the holder gain privileges it was not given; {HOW}"),
        ));
    }
    if let Some(v) = rule.verbs.iter().find(|v| !ALL.contains(&v.as_str())) {
        let lower = v.to_ascii_lowercase();
        let message = if ALL.contains(&lower.as_str()) {
            format!(
                "verb '{v}' is not '{lower}': RBAC matches verbs exactly, so it grants nothing; write '{lower}'"
            )
        } else {
            format!(
                "verb '{v}' is not one of {}: special verbs (use, approve, sign, …) grant powers beyond reading and writing; {HOW}",
                ALL.join(", ")
            )
        };
        return Err(invalid("UnknownVerb", field, message));
    }
    Ok(())
}

/// One resource in each of the rule's groups. A (group, resource) pair that
/// does not exist is fine when the resource exists in another of the rule's
/// groups (`apiGroups: ["", "apps"]`, `resources: [pods, deployments]`) and the
/// group is one Palisade knows: it grants nothing.
fn check_resource(rule: &PolicyRule, resource: &str, field: &str) -> Result<(), Invalid> {
    let unknown = |group: &str| {
        invalid(
            "UnknownResource",
            field,
            format!(
                "'{}' is not a resource Palisade knows to be namespaced and safe to grant a tenant (custom resources, subresources such as */status or */proxy, and misspellings included); check the name and apiGroups, or {HOW}",
                qualified(group, resource)
            ),
        )
    };
    let mut resolved = false;
    for g in &rule.api_groups {
        let Some(entry) = lookup(g, resource) else {
            continue;
        };
        resolved = true;
        if let Some(v) = rule
            .verbs
            .iter()
            .find(|v| !entry.verbs.contains(&v.as_str()))
        {
            let allowed = if entry.verbs.is_empty() {
                "none".to_string()
            } else {
                entry.verbs.join(", ")
            };
            return Err(invalid(
                entry.otherwise.reason,
                field,
                format!(
                    "'{v}' on '{}': {} (allowed without allowPrivileged: {allowed}); {HOW}",
                    qualified(g, resource),
                    entry.otherwise.why
                ),
            ));
        }
    }
    match rule
        .api_groups
        .iter()
        .find(|g| !resolved || (lookup(g, resource).is_none() && !known_group(g)))
    {
        Some(g) => Err(unknown(g)),
        None if !resolved => Err(unknown("")),
        None => Ok(()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A rule of `verbs` on `resources` in `groups` (tests of this module and of
    /// RolePolicy validation).
    pub(crate) fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
        PolicyRule {
            api_groups: groups.iter().map(|s| s.to_string()).collect(),
            resources: resources.iter().map(|s| s.to_string()).collect(),
            resource_names: vec![],
            verbs: verbs.iter().map(|s| s.to_string()).collect(),
        }
    }

    fn reason(r: &PolicyRule) -> Result<(), &'static str> {
        check_rule(r, "f").map_err(|e| e.reason)
    }

    /// Issue #30: each refused rule, and what is still fine.
    #[test]
    fn rules_are_classified_by_group_resource_subresource_and_verb() {
        let rbac = "rbac.authorization.k8s.io";
        type Case<'a> = (
            &'a [&'a str],
            &'a [&'a str],
            &'a [&'a str],
            Result<(), &'a str>,
        );
        let table: &[Case] = &[
            // Refused.
            (
                &[""],
                &["serviceaccounts/token"],
                &["create"],
                Err("SensitiveResource"),
            ),
            (&[""], &["configmaps"], &["CREATE"], Err("UnknownVerb")),
            (&[""], &["configmaps"], &["Get"], Err("UnknownVerb")),
            (&[""], &["events"], &["delete"], Err("SensitiveResource")),
            (
                &["events.k8s.io"],
                &["events"],
                &["patch"],
                Err("SensitiveResource"),
            ),
            (
                &["policy"],
                &["podsecuritypolicies"],
                &["use"],
                Err("UnknownVerb"),
            ),
            (
                &["policy"],
                &["podsecuritypolicies"],
                &["get"],
                Err("ClusterScopedResource"),
            ),
            (
                &["admissionregistration.k8s.io"],
                &["validatingadmissionpolicybindings"],
                &["get"],
                Err("ClusterScopedResource"),
            ),
            (
                &["admissionregistration.k8s.io"],
                &["somethingnew"],
                &["get"],
                Err("ClusterScopedResource"),
            ),
            (
                &[rbac],
                &["clusterroles"],
                &["get"],
                Err("ClusterScopedResource"),
            ),
            (
                &[""],
                &["namespaces"],
                &["get"],
                Err("ClusterScopedResource"),
            ),
            (
                &["networking.k8s.io"],
                &["networkpolicies"],
                &["delete"],
                Err("ManagedKindWrite"),
            ),
            (
                &[""],
                &["resourcequotas"],
                &["update"],
                Err("ManagedKindWrite"),
            ),
            (
                &[""],
                &["limitranges"],
                &["create"],
                Err("ManagedKindWrite"),
            ),
            (&[rbac], &["roles"], &["patch"], Err("ManagedKindWrite")),
            (
                &[rbac],
                &["rolebindings"],
                &["create"],
                Err("ManagedKindWrite"),
            ),
            (
                &[rbac],
                &["rolebindings"],
                &["deletecollection"],
                Err("ManagedKindWrite"),
            ),
            (
                &["palisade.dev"],
                &["backupruns"],
                &["create"],
                Err("PalisadeWrite"),
            ),
            (
                &["example.com"],
                &["widgets"],
                &["get"],
                Err("UnknownResource"),
            ),
            (
                &["", "example.com"],
                &["configmaps"],
                &["get"],
                Err("UnknownResource"),
            ),
            (&[""], &["pods/proxy"], &["get"], Err("UnknownResource")),
            (
                &["apps"],
                &["deployments/status"],
                &["patch"],
                Err("UnknownResource"),
            ),
            (&[""], &["deployments"], &["get"], Err("UnknownResource")),
            (&[], &["pods"], &["get"], Err("UnknownResource")),
            (&[""], &["pods/log"], &["delete"], Err("UnknownVerb")),
            (&[""], &["pods"], &["escalate"], Err("EscalationVerb")),
            (&[""], &["pods"], &["*"], Err("WildcardVerb")),
            (&["*"], &["pods"], &["get"], Err("WildcardResource")),
            (&[""], &["*/status"], &["get"], Err("WildcardResource")),
            // Fine.
            (&[""], &["serviceaccounts"], &["create", "delete"], Ok(())),
            (
                &[""],
                &["events"],
                &["get", "list", "watch", "create"],
                Ok(()),
            ),
            (
                &["networking.k8s.io"],
                &["networkpolicies"],
                &["get", "list"],
                Ok(()),
            ),
            (
                &[rbac],
                &["roles", "rolebindings"],
                &["get", "list", "watch"],
                Ok(()),
            ),
            (
                &["", "apps"],
                &["pods", "deployments"],
                &["get", "patch"],
                Ok(()),
            ),
            (&["apps"], &["deployments/scale"], &["patch"], Ok(())),
            (
                &["palisade.dev"],
                &["backupschedules"],
                &["get", "list"],
                Ok(()),
            ),
            (
                &["coordination.k8s.io"],
                &["leases"],
                &["create", "update"],
                Ok(()),
            ),
            (&[""], &[], &["get"], Ok(())),
        ];
        for (groups, resources, verbs, want) in table {
            let r = rule(groups, resources, verbs);
            assert_eq!(reason(&r), *want, "{groups:?} {resources:?} {verbs:?}");
        }
    }

    #[test]
    fn messages_say_what_is_wrong_and_how_to_fix_it() {
        let e = check_rule(
            &rule(&[""], &["serviceaccounts/token"], &["create"]),
            "spec.roles[0].rules[0]",
        )
        .expect_err("token");
        assert_eq!(e.field, "spec.roles[0].rules[0]");
        assert!(
            e.message.contains("'create' on 'serviceaccounts/token'"),
            "{}",
            e.message
        );
        assert!(e.message.ends_with(HOW), "{}", e.message);
        let e = check_rule(&rule(&[""], &["configmaps"], &["CREATE"]), "f").expect_err("case");
        assert!(e.message.contains("write 'create'"), "{}", e.message);
        let e = check_rule(&rule(&["example.com"], &["widgets"], &["get"]), "f").expect_err("crd");
        assert!(e.message.contains("'widgets.example.com'"), "{}", e.message);
        let e = check_rule(
            &rule(
                &["admissionregistration.k8s.io"],
                &["validatingadmissionpolicybindings"],
                &["get"],
            ),
            "f",
        )
        .expect_err("cluster");
        assert!(
            e.message
                .contains("'validatingadmissionpolicybindings.admissionregistration.k8s.io'"),
            "{}",
            e.message
        );
    }

    /// The catalog is trusted, but a raw rule can ask for whatever it grants
    /// (except creating BackupRuns, which is what the backups:* permissions are for).
    #[test]
    fn every_catalog_permission_is_within_the_allowlist() {
        for p in super::super::catalog::PERMISSIONS {
            for r in super::super::catalog::permission_rules(p) {
                let raw = PolicyRule {
                    api_groups: r.api_groups.clone().unwrap_or_default(),
                    resources: r.resources.clone().unwrap_or_default(),
                    resource_names: vec![],
                    verbs: r.verbs.clone(),
                };
                let got = reason(&raw);
                let backup_runs = raw.resources.iter().any(|x| x == "backupruns")
                    && raw.verbs.iter().any(|v| v == "create");
                if backup_runs {
                    assert_eq!(got, Err("PalisadeWrite"), "{}: {raw:?}", p.name);
                } else {
                    assert_eq!(got, Ok(()), "{}: {raw:?}", p.name);
                }
            }
        }
    }

    #[test]
    fn every_allowlisted_resource_is_namespaced_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for s in SAFE {
            assert!(seen.insert((s.group, s.resource)), "{} twice", s.resource);
            let base = s.resource.split('/').next().unwrap_or_default();
            assert!(!CLUSTER_SCOPED.contains(&base), "{}", s.resource);
            assert!(!CLUSTER_GROUPS.contains(&s.group), "{}", s.group);
            assert!(s.verbs.iter().all(|v| ALL.contains(v)), "{}", s.resource);
        }
    }
}
