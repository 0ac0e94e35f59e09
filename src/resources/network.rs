//! NetworkPolicies by intent: default-deny plus one allow policy per intent.

use std::collections::BTreeMap;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyIngressRule, NetworkPolicyPeer,
    NetworkPolicyPort, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::{Invalid, invalid, labels};
use crate::crd::tenant::NetworkSpec;

pub const DEFAULT_DENY: &str = "palisade-default-deny";
pub const ALLOW_INTRA_TENANT: &str = "palisade-allow-intra-tenant";
pub const ALLOW_DNS: &str = "palisade-allow-dns";
pub const ALLOW_FROM_NAMESPACES: &str = "palisade-allow-from-namespaces";
pub const ALLOW_EGRESS_CIDRS: &str = "palisade-allow-egress-cidrs";
pub const ALLOW_INTERNET_EGRESS: &str = "palisade-allow-internet-egress";

/// Private and link-local ranges kept closed by `allowInternetEgress`.
const PRIVATE_V4: &[&str] = &[
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
];
const PRIVATE_V6: &[&str] = &["fc00::/7", "fe80::/10"];

fn policy(
    tenant: &str,
    namespace: &str,
    name: &str,
    ingress: Option<Vec<NetworkPolicyIngressRule>>,
    egress: Option<Vec<NetworkPolicyEgressRule>>,
) -> NetworkPolicy {
    let mut types = Vec::new();
    if ingress.is_some() {
        types.push("Ingress".to_string());
    }
    if egress.is_some() {
        types.push("Egress".to_string());
    }
    // In the API server's normal form: it never stores empty rule lists (and an
    // apply that sends `ingress: []` is a change on every apply). policyTypes
    // alone says "deny all" for a direction without rules.
    let ingress = ingress.filter(|r| !r.is_empty());
    let egress = egress.filter(|r| !r.is_empty());
    NetworkPolicy {
        metadata: labels::managed_meta(tenant, namespace, name),
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector::default()),
            policy_types: Some(types),
            ingress,
            egress,
        }),
    }
}

/// The tenant's own namespaces: by the Tenant's uid, which release removes (a
/// released namespace, or one of an earlier Tenant of the same name, is no peer).
/// Offline (`palisade render` of a file without a uid) by name.
fn tenant_namespaces(tenant: &str, uid: Option<&str>) -> NetworkPolicyPeer {
    let (key, value) = match uid {
        Some(uid) => (labels::TENANT_UID, uid),
        None => (labels::TENANT, tenant),
    };
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(key.to_string(), value.to_string())])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

pub(crate) fn port(protocol: &str, number: i32) -> NetworkPolicyPort {
    NetworkPolicyPort {
        protocol: Some(protocol.to_string()),
        port: Some(IntOrString::Int(number)),
        end_port: None,
    }
}

fn ip_block(cidr: &str, except: &[String]) -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        ip_block: Some(IPBlock {
            cidr: cidr.to_string(),
            except: (!except.is_empty()).then(|| except.to_vec()),
        }),
        ..Default::default()
    }
}

/// The cluster DNS: pods `k8s-app: kube-dns` in namespace kube-system.
pub(crate) fn kube_dns_peer() -> NetworkPolicyPeer {
    NetworkPolicyPeer {
        namespace_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "kubernetes.io/metadata.name".to_string(),
                "kube-system".to_string(),
            )])),
            ..Default::default()
        }),
        pod_selector: Some(LabelSelector {
            match_labels: Some(BTreeMap::from([(
                "k8s-app".to_string(),
                "kube-dns".to_string(),
            )])),
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn check_cidr(field: &str, cidr: &str) -> Result<ipnet::IpNet, Invalid> {
    let net = cidr.parse::<ipnet::IpNet>().map_err(|_| {
        invalid(
            "InvalidCidr",
            field,
            format!("'{cidr}' is not a CIDR (expected e.g. 10.20.0.0/16 or 2001:db8::/32)"),
        )
    })?;
    if net.trunc() != net {
        return Err(invalid(
            "InvalidCidr",
            field,
            format!(
                "'{cidr}' has host bits set: the policy would open {} (write that if it is what you mean)",
                net.trunc()
            ),
        ));
    }
    Ok(net)
}

fn unrestricted(field: String, what: &str) -> Invalid {
    invalid(
        "UnrestrictedPeer",
        field,
        format!("{what}; if that is really intended, set spec.network.allowUnrestricted: true"),
    )
}

/// Every check the API server makes on the NetworkPolicies the intents
/// become (selector syntax, CIDRs, ports), and the intents that open a
/// tenant to everything, refused unless `allowUnrestricted` says so.
pub fn check(spec: &NetworkSpec) -> Result<(), Invalid> {
    for (i, sel) in spec.allow_from_namespaces.iter().enumerate() {
        let field = format!("spec.network.allowFromNamespaces[{i}]");
        labels::check_selector(&field, sel)
            .map_err(|m| invalid("InvalidSelector", field.clone(), m))?;
        if labels::selects_everything(sel) && !spec.allow_unrestricted {
            return Err(unrestricted(
                field,
                "an empty selector admits traffic from every namespace of the cluster",
            ));
        }
    }
    for (i, c) in spec.allow_egress_cidrs.iter().enumerate() {
        let field = format!("spec.network.allowEgressCidrs[{i}]");
        let net = check_cidr(&format!("{field}.cidr"), &c.cidr)?;
        if net.prefix_len() == 0 && !spec.allow_unrestricted {
            return Err(unrestricted(
                format!("{field}.cidr"),
                &format!(
                    "'{}' is every address, the cluster's private ranges included (allowInternetEgress opens the internet and keeps them closed)",
                    c.cidr
                ),
            ));
        }
        for (j, e) in c.except.iter().enumerate() {
            let inner = check_cidr(&format!("{field}.except[{j}]"), e)?;
            if !net.contains(&inner) || inner == net {
                return Err(invalid(
                    "InvalidCidr",
                    format!("{field}.except[{j}]"),
                    format!("'{e}' is not strictly inside '{}'", c.cidr),
                ));
            }
        }
        if let Some(j) = c.ports.iter().position(|p| *p == 0) {
            return Err(invalid(
                "InvalidPort",
                format!("{field}.ports[{j}]"),
                "0 is not a port (1-65535)",
            ));
        }
    }
    Ok(())
}

/// The NetworkPolicies for one tenant namespace, in a stable order.
pub fn policies(
    tenant: &str,
    tenant_uid: Option<&str>,
    namespace: &str,
    spec: &NetworkSpec,
) -> Vec<NetworkPolicy> {
    let mut out = vec![policy(
        tenant,
        namespace,
        DEFAULT_DENY,
        Some(vec![]),
        Some(vec![]),
    )];
    if spec.allow_intra_tenant {
        out.push(policy(
            tenant,
            namespace,
            ALLOW_INTRA_TENANT,
            Some(vec![NetworkPolicyIngressRule {
                from: Some(vec![tenant_namespaces(tenant, tenant_uid)]),
                ports: None,
            }]),
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![tenant_namespaces(tenant, tenant_uid)]),
                ports: None,
            }]),
        ));
    }
    if spec.allow_dns {
        let kube_dns = kube_dns_peer();
        out.push(policy(
            tenant,
            namespace,
            ALLOW_DNS,
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![kube_dns]),
                ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
            }]),
        ));
    }
    if !spec.allow_from_namespaces.is_empty() {
        let from = spec
            .allow_from_namespaces
            .iter()
            .map(|selector| NetworkPolicyPeer {
                namespace_selector: Some(selector.clone()),
                ..Default::default()
            })
            .collect();
        out.push(policy(
            tenant,
            namespace,
            ALLOW_FROM_NAMESPACES,
            Some(vec![NetworkPolicyIngressRule {
                from: Some(from),
                ports: None,
            }]),
            None,
        ));
    }
    if !spec.allow_egress_cidrs.is_empty() {
        let rules = spec
            .allow_egress_cidrs
            .iter()
            .map(|c| NetworkPolicyEgressRule {
                to: Some(vec![ip_block(&c.cidr, &c.except)]),
                ports: (!c.ports.is_empty())
                    .then(|| c.ports.iter().map(|p| port("TCP", i32::from(*p))).collect()),
            })
            .collect();
        out.push(policy(
            tenant,
            namespace,
            ALLOW_EGRESS_CIDRS,
            None,
            Some(rules),
        ));
    }
    if spec.allow_internet_egress {
        let private = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        out.push(policy(
            tenant,
            namespace,
            ALLOW_INTERNET_EGRESS,
            None,
            Some(vec![NetworkPolicyEgressRule {
                to: Some(vec![
                    ip_block("0.0.0.0/0", &private(PRIVATE_V4)),
                    ip_block("::/0", &private(PRIVATE_V6)),
                ]),
                ports: None,
            }]),
        ));
    }
    out
}
