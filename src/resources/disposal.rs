//! What becomes of an object a Tenant owns and no longer wants (pure). One
//! rule for the controller's prune (a namespace or object left the spec), its
//! cleanup (the Tenant is deleted) and `palisade diff`'s preview of both.
//!
//! - `deletionPolicy: Delete`: a namespace that leaves is deleted, and what is
//!   inside goes with it (no request per child: one namespace deletion, which
//!   the namespace controller carries out).
//! - `deletionPolicy: Retain`: a namespace that leaves is released. Palisade's
//!   policy objects in it (NetworkPolicies, ResourceQuota, LimitRange, Roles,
//!   RoleBindings) are deleted; the data it generated there (rotated Secrets
//!   with every kept version, JWKS ConfigMaps, token Secrets) stays with its
//!   values, labelled `palisade.dev/released=true` and no longer managed, so
//!   nothing rotates or prunes it. The same Tenant listing the namespace again
//!   adopts both back.
//! - An object the Tenant no longer wants in a namespace it keeps is deleted.
//! - Nothing in a namespace labelled with another Tenant's uid (an earlier
//!   Tenant of the same name) is touched, and nothing already being deleted.

use std::collections::BTreeSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::ObjectKey;
use crate::crd::tenant::DeletionPolicy;

/// What happens to one owned object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposal {
    /// Still wanted, already going, or not this Tenant's to touch.
    Keep,
    /// Deleted now.
    Delete,
    /// Goes with its namespace, which is being deleted: no request of its own.
    WithNamespace,
    /// A namespace let go of (Retain): labelled released, Palisade's own
    /// RoleBinding in it revoked.
    ReleaseNamespace,
    /// Data kept in a namespace let go of (Retain): labelled released, values
    /// untouched, never rotated again.
    ReleaseData,
}

impl Disposal {
    /// Whether this is a change (something is deleted or released).
    pub fn changes(self) -> bool {
        self != Disposal::Keep
    }

    /// How `palisade diff` and the Events describe it.
    pub fn describe(self) -> &'static str {
        match self {
            Disposal::Keep => "kept",
            Disposal::Delete => "deleted",
            Disposal::WithNamespace => "deleted with its namespace (deletionPolicy: Delete)",
            Disposal::ReleaseNamespace => {
                "released (deletionPolicy: Retain): kept with its data, no longer managed"
            }
            Disposal::ReleaseData => {
                "kept with its values (deletionPolicy: Retain), labelled released, no longer rotated"
            }
        }
    }
}

/// Kinds whose objects are tenant data that Retain keeps: what Palisade
/// generated and cannot generate again (random values, signing keys).
pub fn is_data(kind: &str) -> bool {
    matches!(kind, "Secret" | "ConfigMap")
}

/// Whether a namespace with these labels belongs to another Tenant than the
/// one of uid `tenant_uid` (an earlier Tenant of the same name left it
/// labelled with its own uid): nothing in it is this Tenant's to prune,
/// release or delete. Offline (no uid) nothing is foreign.
pub fn is_foreign(
    namespace_labels: &std::collections::BTreeMap<String, String>,
    tenant_uid: Option<&str>,
) -> bool {
    match (namespace_labels.get(super::labels::TENANT_UID), tenant_uid) {
        (Some(theirs), Some(ours)) => theirs != ours,
        _ => false,
    }
}

/// What the Tenant wants now.
pub struct Wants<'a> {
    /// Every object wanted (applied or not). Empty when the Tenant is deleted.
    pub objects: &'a BTreeSet<ObjectKey>,
    /// The namespaces of the spec (one not ready yet is kept). Empty when the
    /// Tenant is deleted.
    pub namespaces: &'a [String],
    pub policy: DeletionPolicy,
}

/// The disposal of one owned object; `deleting`: it, or the namespace it is
/// in, is already being deleted (it goes either way); `foreign`: its namespace
/// (or itself, for a namespace) is labelled with another Tenant's uid.
pub fn dispose(key: &ObjectKey, deleting: bool, foreign: bool, wants: &Wants<'_>) -> Disposal {
    let is_ns = key.kind == "Namespace";
    let ns = if is_ns { &key.name } else { &key.namespace };
    let listed = wants.namespaces.iter().any(|n| n == ns);
    if deleting || foreign || wants.objects.contains(key) || (is_ns && listed) {
        return Disposal::Keep;
    }
    // Cluster-scoped (the owners' ClusterRole and binding): no namespace to
    // go with, nothing to keep.
    if !is_ns && key.namespace.is_empty() {
        return Disposal::Delete;
    }
    match (is_ns, listed, wants.policy) {
        (true, _, DeletionPolicy::Delete) => Disposal::Delete,
        (true, _, DeletionPolicy::Retain) => Disposal::ReleaseNamespace,
        (false, true, _) => Disposal::Delete,
        (false, false, DeletionPolicy::Delete) => Disposal::WithNamespace,
        (false, false, DeletionPolicy::Retain) if is_data(&key.kind) => Disposal::ReleaseData,
        (false, false, DeletionPolicy::Retain) => Disposal::Delete,
    }
}

/// Objects in the order their disposals must run: everything inside a
/// namespace before the namespace itself (releasing a namespace revokes the
/// RoleBinding Palisade needs to act in it).
pub fn in_order<T>(mut items: Vec<(ObjectKey, T)>) -> Vec<(ObjectKey, T)> {
    items.sort_by_key(|(k, _)| k.kind == "Namespace");
    items
}

/// The namespace whose state decides an owned object's disposal: the one it
/// is in, or itself for a namespace.
pub fn namespace_of(key: &ObjectKey) -> &str {
    if key.kind == "Namespace" {
        &key.name
    } else {
        &key.namespace
    }
}

/// What the namespaces a Tenant's objects live in say about disposing of
/// them: which are being deleted (their contents go with them) and which are
/// labelled with another Tenant's uid (never touched). The controller fills it
/// from its cache, `palisade diff` from its listing: the same facts either way.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Namespaces {
    going: BTreeSet<String>,
    foreign: BTreeSet<String>,
}

impl Namespaces {
    /// Notes the namespace `name` (its metadata as cached or listed) for the
    /// Tenant of uid `tenant_uid`.
    pub fn note(&mut self, name: &str, meta: &ObjectMeta, tenant_uid: Option<&str>) {
        if meta.deletion_timestamp.is_some() {
            self.going.insert(name.to_string());
        }
        if meta
            .labels
            .as_ref()
            .is_some_and(|l| is_foreign(l, tenant_uid))
        {
            self.foreign.insert(name.to_string());
        }
    }

    /// Whether `ns` is being deleted.
    pub fn going(&self, ns: &str) -> bool {
        self.going.contains(ns)
    }

    /// Whether `ns` carries another Tenant's uid.
    pub fn foreign(&self, ns: &str) -> bool {
        self.foreign.contains(ns)
    }
}

/// The prune rule over everything a Tenant owns: each object (`deleting`: it
/// is being deleted itself) with its [`dispose`] verdict, in the order the
/// disposals must run ([`in_order`]). One function for the controller's prune
/// and cleanup and for `palisade diff`'s preview of them.
pub fn plan<T>(
    owned: Vec<(ObjectKey, bool, T)>,
    namespaces: &Namespaces,
    wants: &Wants<'_>,
) -> Vec<(ObjectKey, T, Disposal)> {
    let items = owned
        .into_iter()
        .map(|(key, deleting, item)| (key, (deleting, item)))
        .collect();
    in_order(items)
        .into_iter()
        .map(|(key, (deleting, item))| {
            let ns = namespace_of(&key);
            let going = deleting || namespaces.going(ns);
            let what = dispose(&key, going, namespaces.foreign(ns), wants);
            (key, item, what)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(kind: &str, ns: &str, name: &str) -> ObjectKey {
        ObjectKey::new(kind, ns, name)
    }

    /// The table of the issue "Fail closed": Retain keeps generated data, Delete
    /// lets the namespace take its contents, kept namespaces lose what is unwanted.
    #[test]
    fn every_case_of_the_rule() {
        let wanted: BTreeSet<ObjectKey> = [key("NetworkPolicy", "a", "keep")].into();
        let listed = ["a".to_string()];
        let none = BTreeSet::new();
        for (policy, k, deleting, foreign, tenant_deleted, want) in [
            // A namespace the spec lists, and what it still wants: kept.
            (
                DeletionPolicy::Delete,
                key("Namespace", "", "a"),
                false,
                false,
                false,
                Disposal::Keep,
            ),
            (
                DeletionPolicy::Delete,
                key("NetworkPolicy", "a", "keep"),
                false,
                false,
                false,
                Disposal::Keep,
            ),
            // Unwanted in a kept namespace: deleted, whatever the policy.
            (
                DeletionPolicy::Retain,
                key("NetworkPolicy", "a", "old"),
                false,
                false,
                false,
                Disposal::Delete,
            ),
            (
                DeletionPolicy::Retain,
                key("Secret", "a", "old"),
                false,
                false,
                false,
                Disposal::Delete,
            ),
            // A namespace that left: deleted or released.
            (
                DeletionPolicy::Delete,
                key("Namespace", "", "b"),
                false,
                false,
                false,
                Disposal::Delete,
            ),
            (
                DeletionPolicy::Retain,
                key("Namespace", "", "b"),
                false,
                false,
                false,
                Disposal::ReleaseNamespace,
            ),
            // Its contents: with the namespace, or policy deleted and data kept.
            (
                DeletionPolicy::Delete,
                key("Secret", "b", "db"),
                false,
                false,
                false,
                Disposal::WithNamespace,
            ),
            (
                DeletionPolicy::Delete,
                key("RoleBinding", "b", "x"),
                false,
                false,
                false,
                Disposal::WithNamespace,
            ),
            (
                DeletionPolicy::Retain,
                key("Secret", "b", "db"),
                false,
                false,
                false,
                Disposal::ReleaseData,
            ),
            (
                DeletionPolicy::Retain,
                key("ConfigMap", "b", "db-jwks"),
                false,
                false,
                false,
                Disposal::ReleaseData,
            ),
            (
                DeletionPolicy::Retain,
                key("ResourceQuota", "b", "q"),
                false,
                false,
                false,
                Disposal::Delete,
            ),
            // The Tenant deleted: nothing is wanted or listed.
            (
                DeletionPolicy::Retain,
                key("Namespace", "", "a"),
                false,
                false,
                true,
                Disposal::ReleaseNamespace,
            ),
            (
                DeletionPolicy::Retain,
                key("Secret", "a", "db"),
                false,
                false,
                true,
                Disposal::ReleaseData,
            ),
            (
                DeletionPolicy::Delete,
                key("NetworkPolicy", "a", "keep"),
                false,
                false,
                true,
                Disposal::WithNamespace,
            ),
            // Going already, or another Tenant's namespace: untouched.
            (
                DeletionPolicy::Delete,
                key("Namespace", "", "b"),
                true,
                false,
                false,
                Disposal::Keep,
            ),
            (
                DeletionPolicy::Delete,
                key("Secret", "b", "db"),
                false,
                true,
                false,
                Disposal::Keep,
            ),
            (
                DeletionPolicy::Retain,
                key("Namespace", "", "b"),
                false,
                true,
                false,
                Disposal::Keep,
            ),
        ] {
            let wants = if tenant_deleted {
                Wants {
                    objects: &none,
                    namespaces: &[],
                    policy,
                }
            } else {
                Wants {
                    objects: &wanted,
                    namespaces: &listed,
                    policy,
                }
            };
            assert_eq!(
                dispose(&k, deleting, foreign, &wants),
                want,
                "{policy:?} {k:?}"
            );
        }
    }

    #[test]
    fn foreign_goes_by_uid_and_never_offline() {
        let l = |uid: &str| {
            std::collections::BTreeMap::from([(
                crate::resources::labels::TENANT_UID.to_string(),
                uid.to_string(),
            )])
        };
        assert!(is_foreign(&l("old"), Some("new")));
        assert!(!is_foreign(&l("new"), Some("new")));
        assert!(!is_foreign(&Default::default(), Some("new")));
        assert!(!is_foreign(&l("old"), None));
    }

    #[test]
    fn namespaces_come_last() {
        let items = vec![
            (key("Namespace", "", "b"), ()),
            (key("Secret", "b", "s"), ()),
            (key("NetworkPolicy", "b", "p"), ()),
        ];
        let kinds: Vec<String> = in_order(items).into_iter().map(|(k, _)| k.kind).collect();
        assert_eq!(kinds, ["Secret", "NetworkPolicy", "Namespace"]);
    }
}
