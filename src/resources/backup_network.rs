//! The egress NetworkPolicy of a BackupSchedule's run Jobs, so backups work in
//! a tenant namespace under default-deny without hand-written CIDRs: DNS, the
//! PostgreSQL servers (source and restore target) and the endpoints the
//! destination names ([`destination::job_egress`]: each backend says its own),
//! each resolved from the spec.
//!
//! A literal IP address becomes an `ipBlock` (/32 or /128). A host name cannot
//! be resolved into a NetworkPolicy, so for it the rule allows its port to any
//! destination; to narrow that, add the server's CIDR to the Tenant's
//! `spec.network.allowEgressCidrs` and use the IP address in the schedule.
//!
//! Such a rule is internet egress for whatever the policy selects, so the
//! selector's [`SCHEDULE_LABEL`] is reserved for the run pods: the
//! `backup-labels-*` admission policies
//! ([`crate::operator_rbac::tenant_policies`]) refuse it on any other pod or
//! pod template in tenant namespaces.

use std::collections::BTreeMap;
use std::net::IpAddr;

use k8s_openapi::api::networking::v1::{
    IPBlock, NetworkPolicy, NetworkPolicyEgressRule, NetworkPolicyPeer, NetworkPolicySpec,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use kube::{Resource, ResourceExt};

use super::backup_jobs::SCHEDULE_LABEL;
use super::labels::{MANAGED_BY, MANAGED_BY_VALUE};
use super::network::{kube_dns_peer, port};
use crate::backup::destination;
use crate::crd::backup_schedule::BackupSchedule;

/// Name of the egress policy of a schedule's Jobs.
pub fn egress_policy_name(schedule: &str) -> String {
    format!("{schedule}-backup-egress")
}

/// The policy: applies to the schedule's run Pods only, egress only.
pub fn egress_policy(bs: &BackupSchedule) -> NetworkPolicy {
    let name = bs.name_any();
    let mut rules = vec![NetworkPolicyEgressRule {
        to: Some(vec![kube_dns_peer()]),
        ports: Some(vec![port("UDP", 53), port("TCP", 53)]),
    }];
    let pg = &bs.spec.postgres;
    rules.push(tcp_to(&pg.host, pg.port));
    if let Some(t) = bs
        .spec
        .restore_test
        .as_ref()
        .and_then(|r| r.target.as_ref())
    {
        rules.push(tcp_to(&t.host, t.port));
    }
    // The destination's own endpoints (S3's; none for a mounted one).
    for (host, port) in destination::job_egress(&bs.spec.destination) {
        rules.push(tcp_to(&host, port));
    }
    rules.dedup();
    let selector = BTreeMap::from([
        (MANAGED_BY.to_string(), MANAGED_BY_VALUE.to_string()),
        (SCHEDULE_LABEL.to_string(), name.clone()),
    ]);
    NetworkPolicy {
        metadata: ObjectMeta {
            name: Some(egress_policy_name(&name)),
            namespace: bs.namespace(),
            labels: Some(selector.clone()),
            owner_references: bs.controller_owner_ref(&()).map(|o| vec![o]),
            ..Default::default()
        },
        spec: Some(NetworkPolicySpec {
            pod_selector: Some(LabelSelector {
                match_labels: Some(selector),
                ..Default::default()
            }),
            policy_types: Some(vec!["Egress".to_string()]),
            egress: Some(rules),
            ingress: None,
        }),
    }
}

/// TCP `port` to `host`: an ipBlock for an IP address, any destination for a
/// name (or an empty host).
fn tcp_to(host: &str, number: u16) -> NetworkPolicyEgressRule {
    let to = host.parse::<IpAddr>().ok().map(|ip| {
        let bits = if ip.is_ipv4() { 32 } else { 128 };
        vec![NetworkPolicyPeer {
            ip_block: Some(IPBlock {
                cidr: format!("{ip}/{bits}"),
                except: None,
            }),
            ..Default::default()
        }]
    });
    NetworkPolicyEgressRule {
        to,
        ports: Some(vec![port("TCP", i32::from(number))]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn schedule(destination: serde_json::Value, restore: serde_json::Value) -> BackupSchedule {
        serde_json::from_value(serde_json::json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "orders", "namespace": "acme-prod", "uid": "u1"},
            "spec": {
                "postgres": {"host": "10.1.2.3", "port": 6432, "database": "orders", "user": "backup"},
                "destination": destination,
                "restoreTest": restore,
            }
        }))
        .expect("schedule")
    }

    fn summary(p: &NetworkPolicy) -> Vec<(Option<String>, i32)> {
        p.spec
            .as_ref()
            .and_then(|s| s.egress.clone())
            .unwrap_or_default()
            .iter()
            .flat_map(|r| {
                let cidr =
                    r.to.as_ref()
                        .and_then(|t| t[0].ip_block.as_ref())
                        .map(|b| b.cidr.clone());
                r.ports
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .map(move |p| {
                        let n = match p.port {
                            Some(
                                k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(n),
                            ) => n,
                            _ => 0,
                        };
                        (cidr.clone(), n)
                    })
            })
            .collect()
    }

    #[test]
    fn dns_postgres_restore_target_and_s3_endpoint_are_allowed() {
        let bs = schedule(
            serde_json::json!({"s3": {"bucket": "b", "endpoint": "http://minio.storage.svc:9000"}}),
            serde_json::json!({"target": {"host": "scratch-db", "port": 5433, "user": "u"}}),
        );
        let p = egress_policy(&bs);
        assert_eq!(p.metadata.name.as_deref(), Some("orders-backup-egress"));
        assert_eq!(p.metadata.namespace.as_deref(), Some("acme-prod"));
        assert!(p.metadata.owner_references.is_some());
        let selector = p
            .spec
            .as_ref()
            .and_then(|s| s.pod_selector.clone())
            .expect("selector");
        assert_eq!(
            selector
                .match_labels
                .expect("labels")
                .get(SCHEDULE_LABEL)
                .map(String::as_str),
            Some("orders")
        );
        assert_eq!(
            summary(&p),
            [
                (None, 53),
                (None, 53),
                (Some("10.1.2.3/32".to_string()), 6432),
                (None, 5433),
                (None, 9000)
            ]
        );
    }

    #[test]
    fn aws_s3_is_https_and_paths_need_no_rule() {
        let aws = schedule(
            serde_json::json!({"s3": {"bucket": "b"}}),
            serde_json::Value::Null,
        );
        assert_eq!(summary(&egress_policy(&aws)).last(), Some(&(None, 443)));
        let local = schedule(
            serde_json::json!({"path": "/backups"}),
            serde_json::Value::Null,
        );
        assert_eq!(summary(&egress_policy(&local)).len(), 3);
    }
}
