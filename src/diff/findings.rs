//! The controllers' own verdicts on the input, as findings: RolePolicy
//! escalations, invalid Tenants.

use std::collections::BTreeMap;

use kube::ResourceExt;

use super::report::{Finding, Severity};
use crate::crd::{RolePolicy, Tenant};
use crate::resources::{Invalid, rolepolicy, tenant};

fn finding(severity: Severity, kind: &str, name: &str, e: Invalid) -> Finding {
    Finding {
        severity,
        kind: kind.to_string(),
        name: name.to_string(),
        reason: e.reason.to_string(),
        field: e.field,
        message: e.message,
    }
}

/// The RolePolicy controller's verdict on a policy: the first reason it would
/// reject it, or, for `allowPrivileged: true`, every rule that escalates
/// (accepted, but worth a reviewer's eye).
pub fn policy_findings(policy: &RolePolicy) -> Vec<Finding> {
    let name = policy.metadata.name.as_deref().unwrap_or_default();
    match rolepolicy::validate(&policy.spec) {
        Err(e) => vec![finding(Severity::Rejected, "RolePolicy", name, e)],
        Ok(()) if policy.spec.allow_privileged => {
            let mut out = Vec::new();
            for (i, role) in policy.spec.roles.iter().enumerate() {
                for (j, rule) in role.rules.iter().enumerate() {
                    if let Err(e) =
                        rolepolicy::check_rule(rule, &format!("spec.roles[{i}].rules[{j}]"))
                    {
                        out.push(finding(Severity::Allowed, "RolePolicy", name, e));
                    }
                }
            }
            out
        }
        Ok(_) => Vec::new(),
    }
}

/// The Tenant controller's verdict on a tenant spec: the proof that it is valid
/// (what the controller builds from), or the finding that it is rejected.
pub fn validate_tenant(t: &Tenant) -> Result<tenant::Valid, Box<Finding>> {
    let name = t.metadata.name.as_deref().unwrap_or_default();
    tenant::validate(name, &t.spec)
        .map_err(|e| Box::new(finding(Severity::Rejected, "Tenant", name, e)))
}

/// The RolePolicies a Tenant controller would see once the input is applied:
/// the cluster's, with those of the input in place of the same names (keeping
/// the live metadata, which orders policies, and status).
pub fn merged_policies(live: Vec<RolePolicy>, input: &[RolePolicy]) -> Vec<RolePolicy> {
    let mut by_name: BTreeMap<String, RolePolicy> =
        live.into_iter().map(|p| (p.name_any(), p)).collect();
    for p in input {
        let name = p.name_any();
        match by_name.get_mut(&name) {
            Some(existing) => existing.spec = p.spec.clone(),
            None => {
                by_name.insert(name, p.clone());
            }
        }
    }
    by_name.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn policy(v: Value) -> RolePolicy {
        serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "RolePolicy",
            "metadata": {"name": "p"}, "spec": v,
        }))
        .expect("policy")
    }

    #[test]
    fn escalations_are_findings_from_the_controllers_validation() {
        let rule = json!({"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "bind"]});
        let f = policy_findings(&policy(
            json!({"tenants": ["a"], "roles": [{"name": "r", "rules": [rule]}]}),
        ));
        assert_eq!(f.len(), 1);
        assert_eq!(
            (f[0].severity, f[0].reason.as_str(), f[0].field.as_str()),
            (
                Severity::Rejected,
                "EscalationVerb",
                "spec.roles[0].rules[0]"
            )
        );
        // allowPrivileged: accepted, each escalating rule still shown.
        let f = policy_findings(&policy(json!({"tenants": ["a"], "allowPrivileged": true,
            "roles": [{"name": "r", "rules": [rule, {"apiGroups": ["*"], "resources": ["*"], "verbs": ["get"]}]}]})));
        let got: Vec<_> = f.iter().map(|f| (f.severity, f.reason.as_str())).collect();
        assert_eq!(
            got,
            [
                (Severity::Allowed, "EscalationVerb"),
                (Severity::Allowed, "WildcardResource")
            ]
        );
        assert!(policy_findings(&policy(json!({"tenants": ["a"], "roles": [{"name": "r", "permissions": ["workloads:read"]}]}))).is_empty());
    }

    /// Issue #25: writes on each kind Palisade manages are `rejected` without
    /// allowPrivileged (a tenant could delete palisade-default-deny), and still
    /// listed with it: the same verdict as the RolePolicy controller's.
    #[test]
    fn writes_on_managed_kinds_are_rejected_findings() {
        for (group, resource, verb) in [
            ("networking.k8s.io", "networkpolicies", "delete"),
            ("", "resourcequotas", "update"),
            ("", "limitranges", "create"),
            ("rbac.authorization.k8s.io", "roles", "patch"),
            ("rbac.authorization.k8s.io", "rolebindings", "create"),
        ] {
            let rule =
                json!({"apiGroups": [group], "resources": [resource], "verbs": ["get", verb]});
            let f = policy_findings(&policy(
                json!({"tenants": ["a"], "roles": [{"name": "r", "rules": [rule.clone()]}]}),
            ));
            let got: Vec<_> = f.iter().map(|f| (f.severity, f.reason.as_str())).collect();
            assert_eq!(
                got,
                [(Severity::Rejected, "ManagedKindWrite")],
                "{resource}"
            );
            let f = policy_findings(&policy(json!({"tenants": ["a"], "allowPrivileged": true,
                "roles": [{"name": "r", "rules": [rule]}]})));
            let got: Vec<_> = f.iter().map(|f| (f.severity, f.reason.as_str())).collect();
            assert_eq!(got, [(Severity::Allowed, "ManagedKindWrite")], "{resource}");
        }
    }

    /// The one validation of a Tenant in `palisade diff`: the proof the builders
    /// take, or the controller's rejection as a finding.
    #[test]
    fn a_tenant_is_valid_or_a_rejected_finding() {
        let tenant = |name: &str| -> Tenant {
            serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
                "metadata": {"name": name},
                "spec": {"namespaces": [{"name": format!("{name}-prod")}]},
            }))
            .expect("tenant")
        };
        assert!(validate_tenant(&tenant("acme")).is_ok());
        let f = validate_tenant(&tenant("Acme")).expect_err("invalid name");
        assert_eq!(
            (
                f.severity,
                f.kind.as_str(),
                f.name.as_str(),
                f.reason.as_str()
            ),
            (Severity::Rejected, "Tenant", "Acme", "InvalidTenantName")
        );
    }

    #[test]
    fn input_policies_replace_live_specs_and_keep_their_order_keys() {
        let mut live = policy(json!({"tenants": ["a"]}));
        live.metadata.creation_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                k8s_openapi::jiff::Timestamp::UNIX_EPOCH,
            ));
        let input = policy(json!({"tenants": ["b"]}));
        let mut other = input.clone();
        other.metadata.name = Some("q".into());
        let merged = merged_policies(vec![live], &[input, other]);
        assert_eq!(merged.len(), 2);
        assert_eq!(merged[0].spec.tenants, ["b"]);
        assert!(merged[0].metadata.creation_timestamp.is_some());
    }
}
