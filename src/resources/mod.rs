//! Pure builders: a spec in, the desired Kubernetes objects out. No client, no
//! clock reads; the controller and `palisade render` share every one of them.

pub mod admission;
pub mod backup_jobs;
pub mod backup_network;
pub mod catalog;
pub mod disposal;
pub mod gc;
pub mod grants;
pub mod keys;
pub mod labels;
pub mod network;
pub mod quota;
pub mod rbac;
pub mod rolepolicy;
pub mod secrets;
pub mod tenant;
pub mod tokens;

use k8s_openapi::api::core::v1::{LimitRange, Namespace, ResourceQuota};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};

/// Which object: kind, namespace (empty for cluster-scoped) and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    pub kind: String,
    pub namespace: String,
    pub name: String,
}

impl ObjectKey {
    pub fn new(kind: &str, namespace: &str, name: &str) -> Self {
        Self {
            kind: kind.to_string(),
            namespace: namespace.to_string(),
            name: name.to_string(),
        }
    }

    /// The key of a desired object (JSON).
    pub fn of(value: &serde_json::Value) -> Self {
        let s = |p: &str| {
            value
                .pointer(p)
                .and_then(serde_json::Value::as_str)
                .unwrap_or_default()
        };
        Self::new(s("/kind"), s("/metadata/namespace"), s("/metadata/name"))
    }
}

/// A spec that must not be applied, with the field at fault. One type for
/// every kind's validation (a Tenant's, a RolePolicy's).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field}: {message}")]
pub struct Invalid {
    /// CamelCase reason for the condition, Event and metric label.
    pub reason: &'static str,
    /// JSON path of the offending field or rule (e.g. `spec.roles[0].rules[1]`).
    pub field: String,
    /// What is wrong and how to fix it.
    pub message: String,
}

pub(crate) fn invalid(
    reason: &'static str,
    field: impl Into<String>,
    message: impl Into<String>,
) -> Invalid {
    Invalid {
        reason,
        field: field.into(),
        message: message.into(),
    }
}

/// Everything Palisade manages for one Tenant, by kind, in a stable order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TenantObjects {
    pub namespaces: Vec<Namespace>,
    pub network_policies: Vec<NetworkPolicy>,
    pub resource_quotas: Vec<ResourceQuota>,
    pub limit_ranges: Vec<LimitRange>,
    pub roles: Vec<Role>,
    pub role_bindings: Vec<RoleBinding>,
    /// The owners' cluster-wide grants (one each, when the tenant has owners).
    pub cluster_roles: Vec<ClusterRole>,
    pub cluster_role_bindings: Vec<ClusterRoleBinding>,
}

impl TenantObjects {
    /// Number of objects.
    pub fn len(&self) -> usize {
        self.namespaces.len()
            + self.network_policies.len()
            + self.resource_quotas.len()
            + self.limit_ranges.len()
            + self.roles.len()
            + self.role_bindings.len()
            + self.cluster_roles.len()
            + self.cluster_role_bindings.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Every object as JSON with apiVersion and kind, namespaces first (the order
    /// in which they can be applied).
    pub fn to_values(&self) -> Result<Vec<serde_json::Value>, serde_json::Error> {
        fn push<K: kube::Resource<DynamicType = ()> + serde::Serialize>(
            out: &mut Vec<serde_json::Value>,
            items: &[K],
        ) -> Result<(), serde_json::Error> {
            for item in items {
                let mut v = serde_json::to_value(item)?;
                if let Some(map) = v.as_object_mut() {
                    map.insert("apiVersion".into(), K::api_version(&()).into());
                    map.insert("kind".into(), K::kind(&()).into());
                }
                out.push(v);
            }
            Ok(())
        }
        let mut out = Vec::with_capacity(self.len());
        push(&mut out, &self.namespaces)?;
        push(&mut out, &self.resource_quotas)?;
        push(&mut out, &self.limit_ranges)?;
        push(&mut out, &self.network_policies)?;
        push(&mut out, &self.roles)?;
        push(&mut out, &self.role_bindings)?;
        push(&mut out, &self.cluster_roles)?;
        push(&mut out, &self.cluster_role_bindings)?;
        Ok(out)
    }
}

/// FNV-1a over the canonical JSON text (serde_json maps are sorted), so the
/// hash is stable across processes and versions.
pub fn stable_hash(value: &serde_json::Value) -> u64 {
    fnv1a(value.to_string().as_bytes())
}

/// FNV-1a (64 bit): a hash that is the same in every process and version.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf29ce484222325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}
