//! Labels and annotations Palisade puts on (and reads from) everything it manages.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

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
/// Set (`"true"`) by Palisade on a namespace an owner created for a Tenant
/// (`spec.maxNamespaces`) when it adopts it: such a namespace stays the
/// tenant's without being listed in `spec.namespaces`, and its owners may
/// delete it.
pub const CREATED_BY_OWNER: &str = "palisade.dev/created-by-owner";
/// Set on namespaces that a tenant let go of under `deletionPolicy: Retain`.
pub const RELEASED: &str = "palisade.dev/released";
/// Annotation on each tenant namespace: `"true"` while Palisade watches the
/// namespace's Secrets and ConfigMaps (it generates some there, or some of
/// its own are still there to prune), `"false"` when it holds none there and
/// watches none. Absent counts as `"true"` (namespaces from before the
/// annotation are watched until a reconcile has seen them empty). Two watches
/// per namespace are what a thousand tenants cost in connections and lists;
/// most namespaces hold no generated Secret.
pub const SECRETS_WATCHED: &str = "palisade.dev/secrets-watched";
/// The field manager of every server-side apply Palisade makes.
pub const FIELD_MANAGER: &str = "palisade";
/// Finalizer on Tenants.
pub const TENANT_FINALIZER: &str = "palisade.dev/tenant-cleanup";
/// Label selector matching everything Palisade manages.
pub const MANAGED_SELECTOR: &str = "app.kubernetes.io/managed-by=palisade";

/// Palisade's own label and annotation prefix.
pub const PALISADE_PREFIX: &str = "palisade.dev/";
/// Label prefixes users may not set on tenant namespaces (Palisade owns them).
pub const RESERVED_LABEL_PREFIXES: &[&str] = &["palisade.dev/", "pod-security.kubernetes.io/"];

/// The labels every object managed for `tenant` carries.
pub fn managed(tenant: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (TENANT.to_string(), tenant.to_string()),
    ])
}

/// The metadata of the object `name` managed for `tenant` in `namespace`.
pub fn managed_meta(tenant: &str, namespace: &str, name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.to_string()),
        namespace: Some(namespace.to_string()),
        labels: Some(managed(tenant)),
        ..Default::default()
    }
}

/// Whether a namespace with these annotations has its Secrets and ConfigMaps
/// watched ([`SECRETS_WATCHED`]): everything but an explicit `"false"`.
pub fn secrets_watched(annotations: Option<&BTreeMap<String, String>>) -> bool {
    annotations
        .and_then(|a| a.get(SECRETS_WATCHED))
        .is_none_or(|v| v != "false")
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

/// A DNS-1123 subdomain: lowercase alphanumerics, '-' and '.', at most 253,
/// starting and ending alphanumeric (a Secret's or a prefix's name).
pub fn is_dns_subdomain(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.split('.').all(|part| {
            !part.is_empty()
                && part
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !part.starts_with('-')
                && !part.ends_with('-')
        })
}

/// The name part of a qualified name: at most 63, alphanumeric at both ends,
/// '-', '_' and '.' inside.
fn is_qualified_part(s: &str) -> bool {
    let b = s.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.'))
}

/// A qualified name, `[prefix/]name` with a DNS-subdomain prefix: what the
/// API server accepts as a label or annotation key and as a resource name in
/// quotas and limits (`IsQualifiedName`).
pub fn is_qualified_name(s: &str) -> bool {
    match s.split_once('/') {
        Some((prefix, name)) => is_dns_subdomain(prefix) && is_qualified_part(name),
        None => is_qualified_part(s),
    }
}

/// A label value: empty, or a qualified name's name part (`IsValidLabelValue`).
pub fn is_label_value(s: &str) -> bool {
    s.is_empty() || is_qualified_part(s)
}

/// Checks a label selector the way the API server will when it is put into
/// a NetworkPolicy: keys are qualified names, values label values, `In` and
/// `NotIn` need values, `Exists` and `DoesNotExist` take none. `field` is its
/// JSON path; the first problem is the message.
pub fn check_selector(
    field: &str,
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> Result<(), String> {
    for (k, v) in sel.match_labels.iter().flatten() {
        if !is_qualified_name(k) {
            return Err(format!(
                "{field}.matchLabels: '{k}' is not a valid label key"
            ));
        }
        if !is_label_value(v) {
            return Err(format!(
                "{field}.matchLabels[{k}]: '{v}' is not a valid label value (at most 63 characters: alphanumerics, '-', '_', '.', starting and ending alphanumeric)"
            ));
        }
    }
    for (i, e) in sel.match_expressions.iter().flatten().enumerate() {
        let at = format!("{field}.matchExpressions[{i}]");
        if !is_qualified_name(&e.key) {
            return Err(format!("{at}.key: '{}' is not a valid label key", e.key));
        }
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" | "NotIn" if values.is_empty() => {
                return Err(format!(
                    "{at}: operator {} needs at least one value",
                    e.operator
                ));
            }
            "Exists" | "DoesNotExist" if !values.is_empty() => {
                return Err(format!("{at}: operator {} takes no values", e.operator));
            }
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => {
                return Err(format!(
                    "{at}.operator: '{other}' is not one of In, NotIn, Exists, DoesNotExist"
                ));
            }
        }
        if let Some(v) = values.iter().find(|v| !is_label_value(v)) {
            return Err(format!("{at}.values: '{v}' is not a valid label value"));
        }
    }
    Ok(())
}

/// Whether a selector selects everything (no labels, no expressions).
pub fn selects_everything(
    sel: &k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector,
) -> bool {
    sel.match_labels.as_ref().is_none_or(|m| m.is_empty())
        && sel.match_expressions.as_ref().is_none_or(|m| m.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

    #[test]
    fn names_and_values_follow_the_api_servers_rules() {
        for ok in ["a", "app.kubernetes.io/name", "example.com/a_b.c", "A1"] {
            assert!(is_qualified_name(ok), "{ok}");
        }
        for bad in ["", "-a", "a-", "a/b/c", "Exa mple/a", &"a".repeat(64), "/a"] {
            assert!(!is_qualified_name(bad), "{bad}");
        }
        assert!(is_label_value("") && is_label_value("v1.2_x"));
        assert!(!is_label_value("a b") && !is_label_value(&"a".repeat(64)));
        assert!(is_dns_subdomain("a.b-c") && !is_dns_subdomain("a..b") && !is_dns_subdomain("A"));
    }

    #[test]
    fn selectors_are_checked_like_the_api_server_does() {
        let sel = |v: serde_json::Value| -> LabelSelector {
            serde_json::from_value(v).expect("selector")
        };
        assert!(
            check_selector(
                "s",
                &sel(serde_json::json!({"matchLabels": {"team": "ingress"}}))
            )
            .is_ok()
        );
        assert!(
            check_selector(
                "s",
                &sel(serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists"}]}))
            )
            .is_ok()
        );
        for bad in [
            serde_json::json!({"matchLabels": {"bad key": "x"}}),
            serde_json::json!({"matchLabels": {"k": "bad value"}}),
            serde_json::json!({"matchExpressions": [{"key": "a", "operator": "In"}]}),
            serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]}),
            serde_json::json!({"matchExpressions": [{"key": "a", "operator": "Equals", "values": ["x"]}]}),
        ] {
            assert!(check_selector("s", &sel(bad.clone())).is_err(), "{bad}");
        }
        assert!(selects_everything(&LabelSelector::default()));
        assert!(!selects_everything(&sel(
            serde_json::json!({"matchLabels": {"a": "b"}})
        )));
    }
}
