//! Labels and annotations Palisade puts on (and reads from) everything it manages.

use std::collections::BTreeMap;

/// `app.kubernetes.io/managed-by`, value [`MANAGED_BY_VALUE`], on every managed object.
pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY_VALUE: &str = "palisade";
/// The owning tenant's name, on every object managed for a tenant.
pub const TENANT: &str = "palisade.dev/tenant";
/// The owning Tenant's `metadata.uid`, on every namespace Palisade manages for it.
/// A name can be reused after its Tenant is deleted; a uid cannot: adoption of an
/// existing namespace and the intra-tenant NetworkPolicy both go by this label,
/// and release removes it.
pub const TENANT_UID: &str = "palisade.dev/tenant-uid";
/// Annotation release leaves on a namespace: the uid of the Tenant that released
/// it (so that Tenant, and only it, may adopt it again).
pub const RELEASED_BY_UID: &str = "palisade.dev/released-by-uid";
/// Set on namespaces that a tenant let go of under `deletionPolicy: Retain`.
pub const RELEASED: &str = "palisade.dev/released";
/// The field manager of every server-side apply Palisade makes.
pub const FIELD_MANAGER: &str = "palisade";
/// Finalizer on Tenants.
pub const TENANT_FINALIZER: &str = "palisade.dev/tenant-cleanup";
/// Label selector matching everything Palisade manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=palisade";

/// Label prefixes users may not set on tenant namespaces (Palisade owns them).
pub const RESERVED_LABEL_PREFIXES: &[&str] = &["palisade.dev/", "pod-security.kubernetes.io/"];

/// The labels every object managed for `tenant` carries.
pub fn managed(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (TENANT.to_string(), tenant.to_string()),
    ])
}

/// Selector for everything managed for `tenant`.
pub fn tenant_selector(tenant: &str) -> String {
    format!("{MANAGED_SELECTOR},{TENANT}={tenant}")
}

/// The tenant an object was managed for, if Palisade manages it.
pub fn tenant_of(labels: Option<&BTreeMap<String, String>>) -> Option<&str> {
    let labels = labels?;
    if labels.get(MANAGED_BY).map(String::as_str) != Some(MANAGED_BY_VALUE) {
        return None;
    }
    labels.get(TENANT).map(String::as_str)
}
