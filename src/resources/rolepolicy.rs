//! RolePolicy compilation (pure): least-privilege validation, tenant selection,
//! and the deterministic merge of every policy selecting a tenant with the
//! built-in roles into one RBAC plan.
//!
//! ## Merge rule
//! Policies are applied in order of `(creationTimestamp, name)`. A role named
//! like a built-in (`admin`, `editor`, `viewer`, `auditor`, `backup-operator`)
//! *extends* it: the union of rules. A custom role name may be defined by one
//! policy only; a later policy defining it again differently is in conflict and
//! contributes nothing (its `Valid` condition says which policy owns the role).
//! Bindings of the same role are merged into one RoleBinding `palisade:<role>`
//! (owners of the tenant are always in `palisade:admin`). An invalid policy
//! contributes its last valid spec (kept in its status), or nothing.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::rbac::v1::PolicyRule as K8sPolicyRule;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::catalog;
use crate::crd::role_policy::{
    PolicyRule, RESERVED_ROLE_NAMES, ROLE_NAME_PREFIX, RolePolicySpec, Subject,
};
use crate::crd::tenant::Owner;
use crate::duration;

/// The maximum and default lifetime of application tokens.
pub const MAX_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(24 * 3600);
pub const DEFAULT_TOKEN_TTL: std::time::Duration = std::time::Duration::from_secs(15 * 60);

/// A policy that must not be applied, and why. Reasons: UnknownPermission,
/// ReservedRoleName, DuplicateRole, UnknownRole, PublicSubject, InvalidToken,
/// RoleConflict, and those of [`check_rule`] (see [`super::grants`]).
pub use super::Invalid as InvalidPolicy;
pub use super::grants::check_rule;
use super::invalid;

fn reserved(name: &str, field: String) -> Result<(), InvalidPolicy> {
    if RESERVED_ROLE_NAMES.contains(&name) {
        return Err(invalid(
            "ReservedRoleName",
            field,
            format!(
                "role name '{name}' is reserved: Palisade names its own RoleBinding '{ROLE_NAME_PREFIX}{name}' in every tenant namespace; choose another name"
            ),
        ));
    }
    Ok(())
}

/// Validates a policy; `defined_elsewhere` are role names other policies define
/// (bindings may refer to them).
pub fn validate(spec: &RolePolicySpec) -> Result<(), InvalidPolicy> {
    let mut names = BTreeSet::new();
    for (i, role) in spec.roles.iter().enumerate() {
        reserved(&role.name, format!("spec.roles[{i}].name"))?;
        if !names.insert(role.name.as_str()) {
            return Err(invalid(
                "DuplicateRole",
                format!("spec.roles[{i}].name"),
                format!("role '{}' is defined twice", role.name),
            ));
        }
        for (j, p) in role.permissions.iter().enumerate() {
            if catalog::permission(p).is_none() {
                return Err(invalid(
                    "UnknownPermission",
                    format!("spec.roles[{i}].permissions[{j}]"),
                    format!("'{p}' is not in the permission catalog (see `palisade permissions`)"),
                ));
            }
        }
        if !spec.allow_privileged {
            for (j, rule) in role.rules.iter().enumerate() {
                check_rule(rule, &format!("spec.roles[{i}].rules[{j}]"))?;
            }
        }
    }
    for (i, b) in spec.bindings.iter().enumerate() {
        reserved(&b.role, format!("spec.bindings[{i}].role"))?;
        if catalog::builtin_role(&b.role).is_none() && !names.contains(b.role.as_str()) {
            return Err(invalid(
                "UnknownRole",
                format!("spec.bindings[{i}].role"),
                format!(
                    "role '{}' is neither built in nor defined in spec.roles",
                    b.role
                ),
            ));
        }
        if !spec.allow_privileged
            && let Some(j) = b
                .subjects
                .iter()
                .position(|s| is_public_subject(s.kind, &s.name))
        {
            return Err(invalid(
                "PublicSubject",
                format!("spec.bindings[{i}].subjects[{j}].name"),
                format!(
                    "'{}' stands for everyone: binding it would open every selected tenant to it (allowPrivileged: true to insist)",
                    b.subjects[j].name
                ),
            ));
        }
        if let Some(t) = &b.token {
            let ttl = match &t.ttl {
                Some(s) => duration::parse_positive(s).map_err(|e| {
                    invalid(
                        "InvalidToken",
                        format!("spec.bindings[{i}].token.ttl"),
                        e.to_string(),
                    )
                })?,
                None => DEFAULT_TOKEN_TTL,
            };
            if ttl > MAX_TOKEN_TTL {
                return Err(invalid(
                    "InvalidToken",
                    format!("spec.bindings[{i}].token.ttl"),
                    "token lifetime is at most 24h",
                ));
            }
        }
    }
    Ok(())
}

/// Label selector matching (matchLabels and matchExpressions In, NotIn,
/// Exists, DoesNotExist).
pub fn selector_matches(selector: &LabelSelector, labels: &BTreeMap<String, String>) -> bool {
    let labels_ok = selector
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| labels.get(k) == Some(v));
    let exprs_ok = selector.match_expressions.iter().flatten().all(|e| {
        let values = e.values.clone().unwrap_or_default();
        match e.operator.as_str() {
            "In" => labels.get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => labels.get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => labels.contains_key(&e.key),
            "DoesNotExist" => !labels.contains_key(&e.key),
            _ => false,
        }
    });
    labels_ok && exprs_ok
}

/// Whether a policy selects a tenant.
pub fn selects(spec: &RolePolicySpec, tenant: &str, labels: &BTreeMap<String, String>) -> bool {
    if !spec.tenants.is_empty() {
        return spec.tenants.iter().any(|t| t == tenant);
    }
    spec.tenant_selector
        .as_ref()
        .is_some_and(|s| selector_matches(s, labels))
}

/// One policy as the compiler sees it: its name and the spec to apply (the
/// current one if valid, else the last valid one).
#[derive(Debug, Clone)]
pub struct PolicyInput<'a> {
    pub name: &'a str,
    pub spec: &'a RolePolicySpec,
}

/// A token a binding asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TokenRequest {
    pub policy: String,
    pub role: String,
    pub service_account: String,
    pub sa_namespace: Option<String>,
    pub ttl: std::time::Duration,
    pub audience: Option<String>,
    pub signing_key: Option<String>,
}

/// The RBAC of one tenant: roles (name → rules), bindings (role → subjects),
/// scopes per role, tokens, and per-policy problems.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RbacPlan {
    pub roles: BTreeMap<String, Vec<K8sPolicyRule>>,
    pub bindings: BTreeMap<String, Vec<(String, String, Option<String>)>>,
    pub scopes: BTreeMap<String, BTreeSet<String>>,
    pub tokens: Vec<TokenRequest>,
    /// policy name → why it contributed nothing to this tenant.
    pub conflicts: BTreeMap<String, InvalidPolicy>,
    /// policy name → (roles, bindings) it contributed.
    pub contributions: BTreeMap<String, (u32, u32)>,
}

fn to_k8s(rule: &PolicyRule) -> K8sPolicyRule {
    K8sPolicyRule {
        api_groups: Some(rule.api_groups.clone()),
        resources: Some(rule.resources.clone()),
        resource_names: (!rule.resource_names.is_empty()).then(|| rule.resource_names.clone()),
        verbs: rule.verbs.clone(),
        non_resource_urls: None,
    }
}

/// Compiles built-ins, owners and the given policies (already sorted by
/// `(creationTimestamp, name)`, already validated) into the RBAC plan of one
/// tenant.
pub fn compile(owners: &[Owner], policies: &[PolicyInput<'_>]) -> RbacPlan {
    let mut plan = RbacPlan::default();
    let mut rules: BTreeMap<String, Vec<K8sPolicyRule>> = BTreeMap::new();
    for r in catalog::BUILTIN_ROLES {
        rules.insert(
            r.name.to_string(),
            catalog::rules_for(r.all_permissions()).unwrap_or_default(),
        );
    }
    let mut custom_owner: BTreeMap<String, (String, Vec<K8sPolicyRule>, BTreeSet<String>)> =
        BTreeMap::new();
    let mut bindings: BTreeMap<String, BTreeSet<(String, String, Option<String>)>> =
        BTreeMap::new();
    for o in owners {
        bindings.entry("admin".into()).or_default().insert((
            o.kind.as_str().to_string(),
            o.name.clone(),
            o.namespace.clone(),
        ));
    }
    for p in policies {
        // Conflicts first: a policy contributes all or nothing.
        let mut role_rules = Vec::new();
        let mut conflict = None;
        for (i, role) in p.spec.roles.iter().enumerate() {
            let mut r: Vec<K8sPolicyRule> =
                catalog::rules_for(role.permissions.iter().map(String::as_str)).unwrap_or_default();
            r.extend(role.rules.iter().map(to_k8s));
            let r = catalog::normalize(r);
            let scopes: BTreeSet<String> = role.scopes.iter().cloned().collect();
            if catalog::builtin_role(&role.name).is_none()
                && let Some((owner, existing, existing_scopes)) = custom_owner.get(&role.name)
                && owner != p.name
                && (existing != &r || existing_scopes != &scopes)
            {
                conflict = Some(invalid(
                    "RoleConflict",
                    format!("spec.roles[{i}].name"),
                    format!(
                        "role '{}' is already defined differently by RolePolicy {owner}, which came first",
                        role.name
                    ),
                ));
                break;
            }
            role_rules.push((role.name.clone(), r, scopes));
        }
        if let Some(c) = conflict {
            plan.conflicts.insert(p.name.to_string(), c);
            continue;
        }
        let mut nroles = 0;
        for (name, r, scopes) in role_rules {
            if catalog::builtin_role(&name).is_none() {
                custom_owner
                    .entry(name.clone())
                    .or_insert_with(|| (p.name.to_string(), r.clone(), scopes.clone()));
            }
            let entry = rules.entry(name.clone()).or_default();
            entry.extend(r);
            *entry = catalog::normalize(std::mem::take(entry));
            plan.scopes.entry(name).or_default().extend(scopes);
            nroles += 1;
        }
        let mut nbindings = 0;
        for b in &p.spec.bindings {
            let set = bindings.entry(b.role.clone()).or_default();
            for s in &b.subjects {
                set.insert(subject_tuple(s));
                if let (Some(t), crate::crd::tenant::SubjectKind::ServiceAccount) =
                    (&b.token, s.kind)
                {
                    plan.tokens.push(TokenRequest {
                        policy: p.name.to_string(),
                        role: b.role.clone(),
                        service_account: s.name.clone(),
                        sa_namespace: s.namespace.clone(),
                        ttl: t
                            .ttl
                            .as_deref()
                            .and_then(|d| duration::parse_positive(d).ok())
                            .unwrap_or(DEFAULT_TOKEN_TTL),
                        audience: t.audience.clone(),
                        signing_key: t.signing_key.clone(),
                    });
                }
            }
            nbindings += 1;
        }
        plan.contributions
            .insert(p.name.to_string(), (nroles, nbindings));
    }
    plan.roles = rules;
    plan.bindings = bindings
        .into_iter()
        .map(|(k, v)| (k, v.into_iter().collect()))
        .collect();
    plan
}

/// The spec a policy contributes: the current one when valid, else the last
/// valid one recorded in its status, else nothing. The recorded one is
/// validated again: status is writable by whoever may write the status
/// subresource, so it is input like the spec, never trusted as Palisade's.
pub fn effective_spec(policy: &crate::crd::RolePolicy) -> Option<RolePolicySpec> {
    if validate(&policy.spec).is_ok() {
        return Some(policy.spec.clone());
    }
    let last = policy.status.as_ref()?.last_valid_spec.as_deref()?;
    serde_json::from_str::<RolePolicySpec>(last)
        .ok()
        .filter(|s| validate(s).is_ok())
}

/// The RBAC plan of `tenant` under `policies` (any order; sorted here by
/// `(creationTimestamp, name)`).
pub fn plan_for(tenant: &crate::crd::Tenant, policies: &[crate::crd::RolePolicy]) -> RbacPlan {
    let name = tenant.metadata.name.as_deref().unwrap_or_default();
    let labels = tenant.metadata.labels.clone().unwrap_or_default();
    let mut selected: Vec<(&crate::crd::RolePolicy, RolePolicySpec)> = policies
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| effective_spec(p).map(|s| (p, s)))
        .filter(|(_, s)| selects(s, name, &labels))
        .collect();
    selected.sort_by(|(a, _), (b, _)| {
        let key = |p: &crate::crd::RolePolicy| {
            (
                p.metadata.creation_timestamp.as_ref().map(|t| t.0),
                p.metadata.name.clone().unwrap_or_default(),
            )
        };
        key(a).cmp(&key(b))
    });
    let inputs: Vec<PolicyInput<'_>> = selected
        .iter()
        .map(|(p, s)| PolicyInput {
            name: p.metadata.name.as_deref().unwrap_or_default(),
            spec: s,
        })
        .collect();
    let mut plan = compile(&tenant.spec.owners, &inputs);
    let extra = self_service_rules(&tenant.spec.self_service, plan.roles.keys());
    if let Some(admin) = plan.roles.get_mut("admin")
        && !extra.is_empty()
    {
        admin.extend(extra);
    }
    plan
}

/// The writes self-service hands owners (what MTB's OPS-3/OPS-4 ask for).
pub const SELF_SERVICE_VERBS: &[&str] =
    &["create", "update", "patch", "delete", "deletecollection"];

/// What a Tenant's `spec.selfService` adds to its `admin` Role (the owners'):
/// NetworkPolicy writes; RoleBinding writes with `bind` on the tenant's own
/// Roles by name (`roles`: the plan's role names), so owners bind nothing
/// else (the `self-service-role-bindings` admission policy refuses
/// ClusterRoles they could otherwise bind by holding their permissions).
/// Palisade's own NetworkPolicies and RoleBindings stay Palisade's (the
/// `managed-objects` admission policy).
pub fn self_service_rules<'a>(
    spec: &crate::crd::tenant::SelfServiceSpec,
    roles: impl Iterator<Item = &'a String>,
) -> Vec<K8sPolicyRule> {
    let rule =
        |group: &str, resource: &str, verbs: &[&str], names: Option<Vec<String>>| K8sPolicyRule {
            api_groups: Some(vec![group.to_string()]),
            resources: Some(vec![resource.to_string()]),
            resource_names: names,
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            non_resource_urls: None,
        };
    let rbac = "rbac.authorization.k8s.io";
    let mut out = Vec::new();
    if spec.network_policies {
        out.push(rule(
            "networking.k8s.io",
            "networkpolicies",
            SELF_SERVICE_VERBS,
            None,
        ));
    }
    if spec.role_bindings {
        out.push(rule(rbac, "rolebindings", SELF_SERVICE_VERBS, None));
        let names: Vec<String> = roles.map(|r| format!("{ROLE_NAME_PREFIX}{r}")).collect();
        out.push(rule(rbac, "roles", &["bind"], Some(names)));
    }
    out
}

fn subject_tuple(s: &Subject) -> (String, String, Option<String>) {
    (
        s.kind.as_str().to_string(),
        s.name.clone(),
        s.namespace.clone(),
    )
}

/// Subjects that stand for everyone (or every workload): binding them to a
/// tenant role would open the tenant to the whole cluster or the internet.
pub fn is_public_subject(kind: crate::crd::tenant::SubjectKind, name: &str) -> bool {
    match kind {
        crate::crd::tenant::SubjectKind::User => name == "system:anonymous",
        crate::crd::tenant::SubjectKind::Group => matches!(
            name,
            "system:unauthenticated" | "system:authenticated" | "system:serviceaccounts"
        ),
        crate::crd::tenant::SubjectKind::ServiceAccount => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::role_policy::{RoleBindingSpec, RoleDefinition, TokenSpec};
    use crate::crd::tenant::SubjectKind;
    use crate::resources::grants::tests::rule;

    fn policy_with_rule(r: PolicyRule) -> RolePolicySpec {
        RolePolicySpec {
            roles: vec![RoleDefinition {
                name: "custom".into(),
                rules: vec![r],
                ..Default::default()
            }],
            ..Default::default()
        }
    }

    /// Issue #25: self-service adds to the owners' admin Role exactly the
    /// writes it names, and `bind` on the tenant's own Roles by name (custom
    /// RolePolicy roles included); nothing without it.
    #[test]
    fn self_service_extends_the_admin_role_only_when_asked() {
        let tenant = |self_service: serde_json::Value| -> crate::crd::Tenant {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": "acme"},
                "spec": {"owners": [{"kind": "User", "name": "alice"}], "selfService": self_service}
            }))
            .expect("tenant")
        };
        let policy: crate::crd::RolePolicy = serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy",
            "metadata": {"name": "p"},
            "spec": {"tenants": ["acme"], "roles": [{"name": "deployer", "permissions": ["workloads:write"]}]}
        }))
        .expect("policy");
        let writes = |plan: &RbacPlan, resource: &str| {
            plan.roles["admin"].iter().any(|r| {
                r.resources.as_deref() == Some(&[resource.to_string()][..])
                    && r.verbs.iter().any(|v| v == "create")
            })
        };
        let plain = plan_for(
            &tenant(serde_json::json!({})),
            std::slice::from_ref(&policy),
        );
        assert!(!writes(&plain, "networkpolicies") && !writes(&plain, "rolebindings"));
        assert!(
            plain
                .roles
                .values()
                .flatten()
                .all(|r| !r.verbs.iter().any(|v| v == "bind"))
        );
        let nps = plan_for(
            &tenant(serde_json::json!({"networkPolicies": true})),
            std::slice::from_ref(&policy),
        );
        assert!(writes(&nps, "networkpolicies") && !writes(&nps, "rolebindings"));
        let rbs = plan_for(
            &tenant(serde_json::json!({"roleBindings": true})),
            std::slice::from_ref(&policy),
        );
        assert!(writes(&rbs, "rolebindings") && !writes(&rbs, "networkpolicies"));
        let bind = rbs.roles["admin"]
            .iter()
            .find(|r| r.verbs == ["bind"])
            .expect("bind");
        assert_eq!(bind.resources.as_deref(), Some(&["roles".to_string()][..]));
        assert_eq!(
            bind.resource_names.clone().unwrap_or_default(),
            [
                "palisade:admin",
                "palisade:auditor",
                "palisade:backup-operator",
                "palisade:deployer",
                "palisade:editor",
                "palisade:viewer"
            ]
        );
        // Only the owners' role grows.
        for (name, rules) in &rbs.roles {
            if name != "admin" {
                assert_eq!(Some(rules), plain.roles.get(name), "{name}");
            }
        }
    }

    #[test]
    fn a_forged_last_valid_spec_is_validated_again() {
        let escalating = policy_with_rule(rule(&[""], &["secrets"], &["*"]));
        let policy = crate::crd::RolePolicy {
            metadata: Default::default(),
            spec: escalating.clone(),
            status: Some(crate::crd::RolePolicyStatus {
                last_valid_spec: Some(serde_json::to_string(&escalating).expect("json")),
                ..Default::default()
            }),
        };
        assert!(
            effective_spec(&policy).is_none(),
            "an escalating spec written into status grants nothing"
        );
    }

    #[test]
    fn public_subjects_are_refused_unless_privileged() {
        let mut spec: RolePolicySpec = serde_json::from_value(serde_json::json!({
            "bindings": [{"role": "viewer", "subjects": [
                {"kind": "User", "name": "alice"},
                {"kind": "Group", "name": "system:unauthenticated"}]}]
        }))
        .expect("spec");
        let e = validate(&spec).expect_err("public subject");
        assert_eq!(
            (e.reason, e.field.as_str()),
            ("PublicSubject", "spec.bindings[0].subjects[1].name")
        );
        spec.allow_privileged = true;
        assert!(validate(&spec).is_ok());
    }

    /// Every refused rule is refused with its reason, naming the rule, and
    /// accepted with allowPrivileged: the escalation patterns, then the refused
    /// rules of issue #30.
    #[test]
    fn refused_rules_name_their_reason_and_need_allow_privileged() {
        // (apiGroup, resource, verb, reason): one row a line.
        #[rustfmt::skip]
        let table = [
            ("", "pods", "*", "WildcardVerb"),
            ("", "*", "get", "WildcardResource"),
            ("*", "pods", "get", "WildcardResource"),
            ("rbac.authorization.k8s.io", "roles", "escalate", "EscalationVerb"),
            ("rbac.authorization.k8s.io", "rolebindings", "bind", "EscalationVerb"),
            ("", "serviceaccounts", "impersonate", "EscalationVerb"),
            ("", "nodes", "get", "ClusterScopedResource"),
            ("", "namespaces", "list", "ClusterScopedResource"),
            ("rbac.authorization.k8s.io", "clusterrolebindings", "create", "ClusterScopedResource"),
            ("palisade.dev", "backupschedules", "update", "PalisadeWrite"),
            ("palisade.dev", "tenants", "get", "ClusterScopedResource"),
            ("", "secrets", "*", "WildcardVerb"),
            // Issue #30.
            ("", "serviceaccounts/token", "create", "SensitiveResource"),
            ("", "configmaps", "CREATE", "UnknownVerb"),
            ("", "events", "delete", "SensitiveResource"),
            ("policy", "podsecuritypolicies", "use", "UnknownVerb"),
            ("admissionregistration.k8s.io", "validatingadmissionpolicybindings", "get", "ClusterScopedResource"),
            ("networking.k8s.io", "networkpolicies", "create", "ManagedKindWrite"),
            ("", "resourcequotas", "patch", "ManagedKindWrite"),
            ("", "limitranges", "delete", "ManagedKindWrite"),
            ("rbac.authorization.k8s.io", "roles", "update", "ManagedKindWrite"),
            ("rbac.authorization.k8s.io", "rolebindings", "create", "ManagedKindWrite"),
        ];
        for (group, resource, verb, reason) in table {
            let r = rule(&[group], &[resource], &[verb]);
            let e = validate(&policy_with_rule(r.clone())).expect_err(reason);
            assert_eq!(
                (e.reason, e.field.as_str()),
                (reason, "spec.roles[0].rules[0]"),
                "{r:?}"
            );
            let mut privileged = policy_with_rule(r);
            privileged.allow_privileged = true;
            assert!(
                validate(&privileged).is_ok(),
                "allowPrivileged accepts {reason}"
            );
        }
        assert!(
            validate(&policy_with_rule(rule(
                &["palisade.dev"],
                &["backupschedules"],
                &["get", "list"]
            )))
            .is_ok()
        );
        assert!(
            validate(&policy_with_rule(rule(
                &["apps"],
                &["deployments/scale"],
                &["patch"]
            )))
            .is_ok()
        );
    }

    /// Issue #30: a role named `operator` would become `palisade:operator`, the
    /// operator's own RoleBinding; refused whatever allowPrivileged says.
    #[test]
    fn reserved_role_names_are_refused_even_when_privileged() {
        let table = [
            (
                json_spec(
                    serde_json::json!({"roles": [{"name": "operator", "permissions": ["config:read"]}]}),
                ),
                "spec.roles[0].name",
            ),
            (
                json_spec(
                    serde_json::json!({"bindings": [{"role": "operator", "subjects": [{"kind": "User", "name": "a"}]}]}),
                ),
                "spec.bindings[0].role",
            ),
        ];
        for (mut spec, field) in table {
            for privileged in [false, true] {
                spec.allow_privileged = privileged;
                let e = validate(&spec).expect_err("reserved");
                assert_eq!((e.reason, e.field.as_str()), ("ReservedRoleName", field));
                assert!(e.message.contains("palisade:operator"), "{}", e.message);
            }
        }
        assert!(validate(&json_spec(serde_json::json!({"roles": [{"name": "operators", "permissions": ["config:read"]}]}))).is_ok());
    }

    fn json_spec(v: serde_json::Value) -> RolePolicySpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn unknown_permissions_roles_and_long_tokens_are_rejected() {
        let table = [
            (
                serde_json::json!({"roles": [{"name": "x", "permissions": ["pods:everything"]}]}),
                "UnknownPermission",
            ),
            (
                serde_json::json!({"bindings": [{"role": "ghost", "subjects": []}]}),
                "UnknownRole",
            ),
            (
                serde_json::json!({"bindings": [{"role": "viewer", "subjects": [], "token": {"ttl": "25h"}}]}),
                "InvalidToken",
            ),
        ];
        for (spec, reason) in table {
            assert_eq!(validate(&json_spec(spec)).expect_err(reason).reason, reason);
        }
    }

    fn sa(name: &str) -> Subject {
        Subject {
            kind: SubjectKind::ServiceAccount,
            name: name.into(),
            namespace: None,
        }
    }

    #[test]
    fn merge_is_deterministic_extends_builtins_and_rejects_later_conflicts() {
        let first = RolePolicySpec {
            roles: vec![
                RoleDefinition {
                    name: "deployer".into(),
                    permissions: vec!["workloads:write".into()],
                    scopes: vec!["deploy:run".into()],
                    ..Default::default()
                },
                RoleDefinition {
                    name: "viewer".into(),
                    permissions: vec!["secrets:read".into()],
                    ..Default::default()
                },
            ],
            bindings: vec![RoleBindingSpec {
                role: "deployer".into(),
                subjects: vec![sa("ci")],
                token: Some(TokenSpec::default()),
            }],
            ..Default::default()
        };
        let second = RolePolicySpec {
            roles: vec![RoleDefinition {
                name: "deployer".into(),
                permissions: vec!["config:write".into()],
                ..Default::default()
            }],
            bindings: vec![RoleBindingSpec {
                role: "viewer".into(),
                subjects: vec![sa("reader")],
                token: None,
            }],
            ..Default::default()
        };
        let owners = vec![Owner {
            kind: SubjectKind::User,
            name: "alice".into(),
            namespace: None,
        }];
        // The policies in this order of names: compile takes them as given.
        let in_order = |names: [&'static str; 2]| {
            let inputs = names.map(|name| PolicyInput {
                name,
                spec: if name == "a" { &first } else { &second },
            });
            compile(&owners, &inputs)
        };
        let plan = in_order(["a", "b"]);
        assert_eq!(plan.conflicts["b"].reason, "RoleConflict");
        assert!(
            !plan.contributions.contains_key("b"),
            "a conflicting policy contributes nothing"
        );
        assert!(
            !plan.bindings.contains_key("viewer"),
            "not even its bindings"
        );
        assert!(
            plan.roles["viewer"].iter().any(|r| r
                .resources
                .iter()
                .flatten()
                .any(|x| x == "secrets")),
            "built-in extended"
        );
        assert!(plan.roles.contains_key("deployer"));
        assert_eq!(
            plan.bindings["admin"],
            vec![("User".into(), "alice".into(), None)]
        );
        assert_eq!(plan.tokens.len(), 1);
        assert_eq!(plan.tokens[0].ttl, DEFAULT_TOKEN_TTL);
        assert_eq!(
            plan.scopes["deployer"],
            BTreeSet::from(["deploy:run".to_string()])
        );
        // Same inputs, same plan.
        let again = in_order(["a", "b"]);
        assert_eq!(plan, again);
        // In the other order, the other one wins.
        let swapped = in_order(["b", "a"]);
        assert_eq!(swapped.conflicts["a"].reason, "RoleConflict");
    }

    #[test]
    fn selection_by_name_or_labels() {
        let labels = BTreeMap::from([("tier".to_string(), "gold".to_string())]);
        let by_name = RolePolicySpec {
            tenants: vec!["acme".into()],
            ..Default::default()
        };
        assert!(selects(&by_name, "acme", &labels));
        assert!(!selects(&by_name, "other", &labels));
        let by_label = RolePolicySpec {
            tenant_selector: Some(LabelSelector {
                match_labels: Some(BTreeMap::from([("tier".into(), "gold".into())])),
                ..Default::default()
            }),
            ..Default::default()
        };
        assert!(selects(&by_label, "anything", &labels));
        assert!(!selects(&by_label, "anything", &BTreeMap::new()));
        assert!(
            !selects(&RolePolicySpec::default(), "acme", &labels),
            "no selector selects nothing"
        );
    }
}
