//! Roles and RoleBindings: one builder each, used for built-in roles, owner
//! bindings and (later) RolePolicy roles.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::catalog;
use super::labels;
use crate::crd::tenant::Owner;

/// `palisade:<role>`: the name of a Role (and its RoleBinding) in a tenant namespace.
pub fn role_name(role: &str) -> String {
    format!("palisade:{role}")
}

fn meta(name: String, namespace: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace: Some(namespace.to_string()),
        labels: Some(labels),
        ..Default::default()
    }
}

/// A Role `palisade:<role>` with the given rules.
pub fn role(
    labels: BTreeMap<String, String>,
    namespace: &str,
    role: &str,
    rules: Vec<PolicyRule>,
) -> Role {
    Role {
        metadata: meta(role_name(role), namespace, labels),
        rules: Some(rules),
    }
}

/// A RoleBinding `palisade:<role>` of the Role `palisade:<role>` to subjects.
pub fn role_binding(
    labels: BTreeMap<String, String>,
    namespace: &str,
    role: &str,
    subjects: Vec<Subject>,
) -> RoleBinding {
    RoleBinding {
        metadata: meta(role_name(role), namespace, labels),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "Role".to_string(),
            name: role_name(role),
        },
        subjects: Some(subjects),
    }
}

/// An RBAC subject; a ServiceAccount without a namespace lives in `namespace`.
pub fn subject(kind: &str, name: &str, sa_namespace: Option<&str>, namespace: &str) -> Subject {
    let is_sa = kind == "ServiceAccount";
    Subject {
        kind: kind.to_string(),
        name: name.to_string(),
        api_group: (!is_sa).then(|| "rbac.authorization.k8s.io".to_string()),
        namespace: is_sa.then(|| sa_namespace.unwrap_or(namespace).to_string()),
    }
}

/// The five built-in roles in one tenant namespace.
pub fn builtin_roles(tenant: &str, namespace: &str) -> Vec<Role> {
    catalog::BUILTIN_ROLES
        .iter()
        .map(|r| {
            // The catalog's own test proves every built-in composes from known permissions.
            let rules = catalog::rules_for(r.permissions.iter().copied()).unwrap_or_default();
            role(labels::managed(tenant), namespace, r.name, rules)
        })
        .collect()
}

/// Owners bound to the built-in admin role, or nothing when there are no owners.
pub fn owner_binding(tenant: &str, namespace: &str, owners: &[Owner]) -> Option<RoleBinding> {
    if owners.is_empty() {
        return None;
    }
    let mut owners = owners.to_vec();
    owners.sort();
    owners.dedup();
    let subjects = owners
        .iter()
        .map(|o| subject(o.kind.as_str(), &o.name, o.namespace.as_deref(), namespace))
        .collect();
    Some(role_binding(
        labels::managed(tenant),
        namespace,
        "admin",
        subjects,
    ))
}
