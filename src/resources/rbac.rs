//! Roles and RoleBindings: one builder each, used for built-in roles, owner
//! bindings and (later) RolePolicy roles.

use std::collections::BTreeMap;

use k8s_openapi::api::rbac::v1::{
    ClusterRole, ClusterRoleBinding, PolicyRule, Role, RoleBinding, RoleRef, Subject,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

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

/// The role (`palisade:namespace-owner`) that lets a tenant's owners read
/// and delete a namespace they created (`spec.maxNamespaces`); to RBAC a
/// namespace is its own namespace, so a Role in it reaches no other.
pub const NAMESPACE_OWNER_ROLE: &str = "namespace-owner";

fn rule(group: &str, resources: &[&str], verbs: &[&str], names: &[&str]) -> PolicyRule {
    let strings = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    PolicyRule {
        api_groups: Some(strings(&[group])),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        resource_names: (!names.is_empty()).then(|| strings(names)),
        ..Default::default()
    }
}

/// The Role and RoleBinding [`NAMESPACE_OWNER_ROLE`] in the owner-created
/// namespace `namespace`, for `owners` (subjects).
pub fn namespace_owner(tenant: &str, namespace: &str, owners: Vec<Subject>) -> (Role, RoleBinding) {
    let rules = vec![rule("", &["namespaces"], &["get", "delete"], &[namespace])];
    (
        role(
            labels::managed(tenant),
            namespace,
            NAMESPACE_OWNER_ROLE,
            rules,
        ),
        role_binding(
            labels::managed(tenant),
            namespace,
            NAMESPACE_OWNER_ROLE,
            owners,
        ),
    )
}

/// The verb on `tenants/<name>` that the namespace-create admission policy
/// asks the authorizer about: held by the tenant's owners while the tenant
/// has room for another namespace (`spec.maxNamespaces`). Not a Kubernetes
/// verb: nothing but that policy reads it.
pub const CREATE_NAMESPACES_VERB: &str = "create-namespaces";

/// A resource that exists only to RBAC (`palisade.dev/tenantnamespaces`,
/// verb `create`): held, without names, by the owners of every Tenant that
/// lets them create namespaces. The namespace-create policy refuses a
/// namespace without the tenant label to a requester who holds it and may not
/// delete namespaces in general (an owner, not an administrator).
pub const OWNER_MARKER_RESOURCE: &str = "tenantnamespaces";

/// `palisade:owner:<tenant>`: the ClusterRole (and ClusterRoleBinding) of a
/// tenant's owners.
pub fn owner_cluster_role_name(tenant: &str) -> String {
    format!(
        "{}owner:{tenant}",
        crate::crd::role_policy::ROLE_NAME_PREFIX
    )
}

/// Metadata of the owners' cluster-scoped objects: owned by the Tenant
/// (`owner`, when its uid is known), so the garbage collector removes them
/// with it even when its finalizer was taken off by hand.
fn cluster_meta(tenant: &str, owner: Option<OwnerReference>) -> ObjectMeta {
    ObjectMeta {
        name: Some(owner_cluster_role_name(tenant)),
        labels: Some(labels::managed(tenant)),
        owner_references: owner.map(|o| vec![o]),
        ..Default::default()
    }
}

/// The cluster-wide grants of a tenant's owners: reading their Tenant; with
/// `spec.maxNamespaces` (`self_service`), creating namespaces, which the
/// namespace-create admission policy narrows to the tenant's own, while the
/// tenant has `room`.
pub fn owner_cluster_role(
    tenant: &str,
    owner: Option<OwnerReference>,
    self_service: bool,
    room: bool,
) -> ClusterRole {
    let mut rules = vec![rule(
        "palisade.dev",
        &["tenants"],
        &["get", "list", "watch"],
        &[tenant],
    )];
    if self_service {
        rules.push(rule("", &["namespaces"], &["create"], &[]));
        rules.push(rule(
            "palisade.dev",
            &[OWNER_MARKER_RESOURCE],
            &["create"],
            &[],
        ));
        if room {
            rules.push(rule(
                "palisade.dev",
                &["tenants"],
                &[CREATE_NAMESPACES_VERB],
                &[tenant],
            ));
        }
    }
    ClusterRole {
        metadata: cluster_meta(tenant, owner),
        rules: Some(rules),
        ..Default::default()
    }
}

/// The ClusterRoleBinding of [`owner_cluster_role`] to the tenant's owners.
pub fn owner_cluster_role_binding(
    tenant: &str,
    owner: Option<OwnerReference>,
    owners: Vec<Subject>,
) -> ClusterRoleBinding {
    let name = owner_cluster_role_name(tenant);
    ClusterRoleBinding {
        metadata: cluster_meta(tenant, owner),
        role_ref: RoleRef {
            api_group: "rbac.authorization.k8s.io".to_string(),
            kind: "ClusterRole".to_string(),
            name,
        },
        subjects: Some(owners),
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
