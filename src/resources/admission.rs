//! What a Tenant allows beyond the safe defaults, as the API server's
//! admission policies read it.
//!
//! The ValidatingAdmissionPolicies of [`crate::operator_rbac::tenant_policies`]
//! run inside the API server (no webhook) and see, besides the request, the
//! namespace it lands in (`namespaceObject`). So each Tenant setting that
//! loosens a default, or narrows what is allowed, travels as a label or an
//! annotation Palisade writes on every namespace of the tenant:
//!
//! | Tenant field | on each tenant namespace |
//! |---|---|
//! | `spec.services.allowNodePort` | label [`ALLOW_NODE_PORT`]`: "true"` |
//! | `spec.services.allowLoadBalancer` | label [`ALLOW_LOAD_BALANCER`]`: "true"` |
//! | `spec.images.allowAnyPullPolicy` | label [`ALLOW_ANY_PULL_POLICY`]`: "true"` |
//! | `spec.images.allowedRegistries` | annotation [`ALLOWED_REGISTRIES`] (comma-separated) |
//! | `spec.allowedClasses.storage` | annotation [`ALLOWED_STORAGE_CLASSES`] (comma-separated) |
//! | `spec.allowedClasses.ingress` | annotation [`ALLOWED_INGRESS_CLASSES`] (comma-separated) |
//!
//! Why namespace metadata rather than a per-Tenant parameter object
//! (`paramKind`): tenants cannot write namespaces (no tenant role grants it,
//! and `spec.namespaces[].labels`/`annotations` may not use `palisade.dev/`),
//! Palisade already applies and heals every tenant namespace, and the policy
//! needs no binding per Tenant (a binding per Tenant would be a cluster-scoped
//! object the operator writes, which its RBAC deliberately does not allow).
//! Every key is always written (`"false"`, `""` for no allowlist): the
//! controller applies a namespace only when the desired metadata is not
//! already contained in it, so a key that merely disappeared from the desired
//! namespace would stay behind, and a Tenant could not take a setting back.
//! A missing label is the safe default (refused); a missing or empty
//! annotation is "no allowlist", as an empty list in the spec is.

use std::collections::BTreeMap;

use super::{Invalid, invalid, labels};
use crate::crd::tenant::TenantSpec;

/// Label: NodePort Services are allowed in this namespace.
pub const ALLOW_NODE_PORT: &str = "palisade.dev/allow-node-port";
/// Label: LoadBalancer Services are allowed in this namespace.
pub const ALLOW_LOAD_BALANCER: &str = "palisade.dev/allow-load-balancer";
/// Label: containers may use any imagePullPolicy in this namespace.
pub const ALLOW_ANY_PULL_POLICY: &str = "palisade.dev/allow-any-pull-policy";
/// Annotation: the registries images must come from, comma-separated.
pub const ALLOWED_REGISTRIES: &str = "palisade.dev/allowed-registries";
/// Annotation: the StorageClasses claims may name, comma-separated.
pub const ALLOWED_STORAGE_CLASSES: &str = "palisade.dev/allowed-storage-classes";
/// Annotation: the IngressClasses Ingresses may name, comma-separated.
pub const ALLOWED_INGRESS_CLASSES: &str = "palisade.dev/allowed-ingress-classes";

/// The labels and annotations of [`self`](self) for a tenant's namespaces.
pub fn namespace_metadata(
    spec: &TenantSpec,
) -> (BTreeMap<String, String>, BTreeMap<String, String>) {
    let mut l = BTreeMap::new();
    for (on, key) in [
        (spec.services.allow_node_port, ALLOW_NODE_PORT),
        (spec.services.allow_load_balancer, ALLOW_LOAD_BALANCER),
        (spec.images.allow_any_pull_policy, ALLOW_ANY_PULL_POLICY),
    ] {
        l.insert(key.to_string(), on.to_string());
    }
    let mut a = BTreeMap::new();
    for (list, key) in [
        (&spec.images.allowed_registries, ALLOWED_REGISTRIES),
        (&spec.allowed_classes.storage, ALLOWED_STORAGE_CLASSES),
        (&spec.allowed_classes.ingress, ALLOWED_INGRESS_CLASSES),
    ] {
        a.insert(key.to_string(), list.join(","));
    }
    (l, a)
}

/// A registry entry: `host[:port][/path]`, lowercase, no scheme, no tag.
fn is_registry(s: &str) -> bool {
    let (host_port, path) = match s.split_once('/') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let (host, port) = match host_port.split_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (host_port, None),
    };
    let port_ok =
        port.is_none_or(|p| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit()));
    let path_ok = path.is_none_or(|p| {
        p.split('/').all(|seg| {
            !seg.is_empty()
                && seg.bytes().all(|b| {
                    b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.' | b'_')
                })
                && seg.as_bytes()[0].is_ascii_alphanumeric()
                && seg.as_bytes()[seg.len() - 1].is_ascii_alphanumeric()
        })
    });
    s.len() <= 253 && labels::is_dns_subdomain(host) && port_ok && path_ok
}

/// `spec.images`, `spec.allowedClasses`: entries the policies can match (the
/// schema checks the same patterns; `render` and `diff` have no schema).
pub fn check(spec: &TenantSpec) -> Result<(), Invalid> {
    for (i, r) in spec.images.allowed_registries.iter().enumerate() {
        if !is_registry(r) {
            return Err(invalid(
                "InvalidRegistry",
                format!("spec.images.allowedRegistries[{i}]"),
                format!(
                    "'{r}' is not a registry: write '<host>[:port][/path]' in lowercase, without scheme or tag (e.g. registry.example.com, ghcr.io/acme)"
                ),
            ));
        }
    }
    for (field, list) in [
        ("spec.allowedClasses.storage", &spec.allowed_classes.storage),
        ("spec.allowedClasses.ingress", &spec.allowed_classes.ingress),
    ] {
        for (i, c) in list.iter().enumerate() {
            if !labels::is_dns_subdomain(c) {
                return Err(invalid(
                    "InvalidClassName",
                    format!("{field}[{i}]"),
                    format!("'{c}' is not a class name (a lowercase DNS subdomain)"),
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> TenantSpec {
        serde_json::from_value(v).expect("spec")
    }

    #[test]
    fn defaults_write_nothing_and_each_field_its_key() {
        let (l, a) = namespace_metadata(&TenantSpec::default());
        assert_eq!(l.len(), 3);
        assert!(l.values().all(|v| v == "false"), "{l:?}");
        assert_eq!(a.len(), 3);
        assert!(a.values().all(String::is_empty), "{a:?}");
        let s = spec(json!({
            "services": {"allowNodePort": true, "allowLoadBalancer": true},
            "images": {"allowAnyPullPolicy": true,
                       "allowedRegistries": ["registry.example.com", "ghcr.io/acme"]},
            "allowedClasses": {"storage": ["fast-ssd"], "ingress": ["nginx", "internal"]},
        }));
        let (l, a) = namespace_metadata(&s);
        assert_eq!(
            l.keys().map(String::as_str).collect::<Vec<_>>(),
            [ALLOW_ANY_PULL_POLICY, ALLOW_LOAD_BALANCER, ALLOW_NODE_PORT]
        );
        assert!(l.values().all(|v| v == "true"));
        assert_eq!(a[ALLOWED_REGISTRIES], "registry.example.com,ghcr.io/acme");
        assert_eq!(a[ALLOWED_STORAGE_CLASSES], "fast-ssd");
        assert_eq!(a[ALLOWED_INGRESS_CLASSES], "nginx,internal");
        // Every key is Palisade's: tenants cannot put them on a namespace.
        for k in l.keys().chain(a.keys()) {
            assert!(k.starts_with("palisade.dev/"), "{k}");
        }
    }

    #[test]
    fn registries_and_classes_are_checked() {
        for ok in [
            "registry.example.com",
            "ghcr.io/acme",
            "localhost:5000/team/app",
            "docker.io/library",
        ] {
            assert!(is_registry(ok), "{ok}");
        }
        for bad in [
            "",
            "https://ghcr.io",
            "ghcr.io/",
            "Ghcr.io",
            "ghcr.io/acme:1",
            "a,b",
            "ghcr.io:port",
            "ghcr.io//x",
        ] {
            assert!(!is_registry(bad), "{bad}");
        }
        let e = check(&spec(
            json!({"images": {"allowedRegistries": ["ok.io", "a,b"]}}),
        ))
        .expect_err("comma");
        assert_eq!(
            (e.reason, e.field.as_str()),
            ("InvalidRegistry", "spec.images.allowedRegistries[1]")
        );
        let e = check(&spec(json!({"allowedClasses": {"ingress": ["Nginx"]}}))).expect_err("case");
        assert_eq!(
            (e.reason, e.field.as_str()),
            ("InvalidClassName", "spec.allowedClasses.ingress[0]")
        );
        assert_eq!(
            check(&spec(json!({"allowedClasses": {"storage": ["fast-ssd"]}}))),
            Ok(())
        );
    }
}
