//! Roles and RoleBindings: one builder each, used for built-in roles, owner
//! bindings and (later) RolePolicy roles.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels;

/// `palisade:<role>`: the name of a Role (and its RoleBinding) in a tenant namespace.
pub fn role_name(role: &str) -> String {
    format!("{}{role}", crate::crd::role_policy::ROLE_NAME_PREFIX)
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

/// Name of [`operator_binding`].
pub const OPERATOR_BINDING: &str = "palisade:operator";

/// The RoleBinding Palisade grants itself in a namespace it manages: the
/// per-namespace ClusterRole `cluster_role` (see [`crate::operator_rbac`]) for
/// its ServiceAccount. Managed-by labelled (cached, drift healed) but not
/// tenant labelled: it is never pruned with a tenant's objects, it goes with
/// its namespace (deleted, or removed right before a release).
pub fn operator_binding(
    namespace: &str,
    cluster_role: &str,
    sa_namespace: &str,
    sa_name: &str,
) -> RoleBinding {
    let labels = BTreeMap::from([(
        labels::MANAGED_BY.to_string(),
        labels::MANAGED_BY_VALUE.to_string(),
    )]);
    RoleBinding {
        metadata: meta(OPERATOR_BINDING.to_string(), namespace, labels),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "ClusterRole".to_string(),
            name: cluster_role.to_string(),
        },
        subjects: Some(vec![subject(
            "ServiceAccount",
            sa_name,
            Some(sa_namespace),
            namespace,
        )]),
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

/// Every role of a tenant's RBAC plan in one namespace.
pub fn plan_roles(tenant: &str, namespace: &str, plan: &super::rolepolicy::RbacPlan) -> Vec<Role> {
    plan.roles
        .iter()
        .map(|(name, rules)| role(labels::managed(tenant), namespace, name, rules.clone()))
        .collect()
}

/// One RoleBinding per role with subjects, in one namespace. A ServiceAccount
/// subject without a namespace means the one in this namespace.
pub fn plan_bindings(
    tenant: &str,
    namespace: &str,
    plan: &super::rolepolicy::RbacPlan,
) -> Vec<RoleBinding> {
    plan.bindings
        .iter()
        .filter(|(_, subjects)| !subjects.is_empty())
        .map(|(role_name, subjects)| {
            let subjects = subjects
                .iter()
                .map(|(kind, name, ns)| subject(kind, name, ns.as_deref(), namespace))
                .collect();
            role_binding(labels::managed(tenant), namespace, role_name, subjects)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::role_policy::RESERVED_ROLE_NAMES;

    /// Every RBAC name Palisade gives its own objects in a tenant namespace is
    /// `palisade:<name>` of a reserved role name, so no RolePolicy can take it.
    #[test]
    fn palisades_own_rbac_names_are_reserved() {
        assert!(
            RESERVED_ROLE_NAMES
                .iter()
                .any(|r| role_name(r) == OPERATOR_BINDING),
            "{OPERATOR_BINDING} is not reserved"
        );
    }
}
