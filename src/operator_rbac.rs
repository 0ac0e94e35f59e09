//! The operator's own RBAC: the single source of truth for what the
//! `palisade` ServiceAccount may do. `palisade rbac` prints it as JSON;
//! `make generate` writes that into `charts/palisade/files/rbac.json` (the Helm
//! chart renders its ClusterRole and leader-election Role from it) and
//! `config/default/rbac.yaml` (the kustomize base). Tests here and in
//! `tests/manifests/` fail when either copy drifts from this table.
//!
//! ## Granting the permission catalog: hold the verbs, no `escalate`/`bind`
//! Kubernetes lets a subject create a Role (or bind one) only if it already holds
//! every permission in it, or holds `escalate` (`bind`) on roles (rolebindings).
//! Palisade holds the catalog's verbs itself ([`Grant::Cluster`] rules with
//! "permission catalog" in their `why`). `escalate` + `bind` would let a
//! compromised operator write a Role with `*` on `*` in any namespace and bind
//! anyone (itself included) to `cluster-admin`: unbounded. Holding the verbs
//! bounds the operator by the reviewed catalog, the apiserver's escalation check
//! stays on as a second line of defence behind RolePolicy's own validation
//! (a custom `allowPrivileged` rule beyond the catalog is refused by the
//! apiserver and surfaces as a condition), and a test below fails the build
//! when the catalog grows past these rules.

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Serialize;

/// Where a rule is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Grant {
    /// The ClusterRole, always.
    Cluster,
    /// The ClusterRole, only while TTL garbage collection is enabled (chart value
    /// `rbac.garbageCollection`). The one broad rule.
    GarbageCollection,
    /// A Role in the operator's own namespace (leader election).
    ReleaseNamespace,
}

/// One rule and the reason Palisade needs it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    pub why: &'static str,
    pub grant: Grant,
}

const CHILD: &[&str] = &["get", "list", "watch", "create", "patch", "delete"];
const READ: &[&str] = &["get", "list", "watch"];
/// The catalog's write verbs (`resources::catalog`), plus reads.
const CATALOG_RW: &[&str] = &[
    "get",
    "list",
    "watch",
    "create",
    "update",
    "patch",
    "delete",
    "deletecollection",
];

/// Every rule, in the order the ClusterRole lists them.
pub const RULES: &[Rule] = &[
    // --- Palisade's own kinds -------------------------------------------------
    Rule {
        api_groups: &["palisade.dev"],
        resources: &["tenants", "rolepolicies", "backupschedules"],
        verbs: &["get", "list", "watch", "patch", "update"],
        why: "reconcile Palisade's kinds; patch adds and removes the cleanup finalizers",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["palisade.dev"],
        resources: &["backupruns"],
        verbs: CHILD,
        why: "start the runs tenants request, tie each BackupRun to its schedule (ownerReference) and delete finished ones beyond the history; create: the permission catalog's backups:run",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["palisade.dev"],
        resources: &[
            "tenants/status",
            "rolepolicies/status",
            "backupschedules/status",
            "backupruns/status",
        ],
        verbs: &["get", "patch", "update"],
        why: "report conditions, observedGeneration and progress in status",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["palisade.dev"],
        resources: &[
            "tenants/finalizers",
            "rolepolicies/finalizers",
            "backupschedules/finalizers",
        ],
        verbs: &["update"],
        why: "set ownerReferences with blockOwnerDeletion on children (OwnerReferencesPermissionEnforcement)",
        grant: Grant::Cluster,
    },
    // --- Tenant children --------------------------------------------------------
    Rule {
        api_groups: &[""],
        resources: &["namespaces"],
        verbs: CHILD,
        why: "create tenant namespaces with Pod Security labels, release or delete them (deletionPolicy)",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &["resourcequotas", "limitranges"],
        verbs: CHILD,
        why: "enforce tenant quotas and container limits; read quota usage for scope: Tenant",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: CHILD,
        why: "default-deny and per-intent NetworkPolicies in every tenant namespace",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["roles", "rolebindings"],
        verbs: CHILD,
        why: "the palisade:<role> Roles and RoleBindings of the built-in and RolePolicy roles (no escalate/bind: see permission catalog)",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &["secrets", "configmaps"],
        verbs: CATALOG_RW,
        why: "rotated Secrets, JWKS ConfigMaps and application tokens; also the permission catalog's secrets:* and config:*",
        grant: Grant::Cluster,
    },
    // --- Workloads: rollout restarts, backups, and the permission catalog -------
    Rule {
        api_groups: &["apps"],
        resources: &["deployments", "statefulsets", "daemonsets", "replicasets"],
        verbs: CATALOG_RW,
        why: "restart workloads that mount a rotated Secret (patch); also the permission catalog's workloads:*",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["batch"],
        resources: &["jobs", "cronjobs"],
        verbs: CATALOG_RW,
        why: "run backup and restore-test Jobs; also the permission catalog's workloads:* and backups:*",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &[
            "pods",
            "services",
            "endpoints",
            "serviceaccounts",
            "persistentvolumeclaims",
        ],
        verbs: CATALOG_RW,
        why: "read backup Job pods' termination messages (results); also the permission catalog's workloads:*, network:*, storage:*",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &["pods/log"],
        verbs: READ,
        why: "permission catalog: workloads:read, backups:read",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &["pods/exec", "pods/attach", "pods/portforward"],
        verbs: &["get", "create"],
        why: "permission catalog: workloads:exec (granted to tenant admins and editors; Palisade never execs itself)",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["autoscaling"],
        resources: &["horizontalpodautoscalers"],
        verbs: CATALOG_RW,
        why: "permission catalog: workloads:*",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["policy"],
        resources: &["poddisruptionbudgets"],
        verbs: CATALOG_RW,
        why: "permission catalog: workloads:*",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["ingresses"],
        verbs: CATALOG_RW,
        why: "permission catalog: network:*",
        grant: Grant::Cluster,
    },
    // --- Events -----------------------------------------------------------------
    Rule {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["get", "list", "watch", "create", "patch"],
        why: "record Events on Palisade's objects (create, patch to aggregate); read: permission catalog audit:read",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &["events"],
        verbs: READ,
        why: "permission catalog: audit:read",
        grant: Grant::Cluster,
    },
    // --- TTL garbage collection: the one broad rule -------------------------------
    Rule {
        api_groups: &["*"],
        resources: &["*"],
        verbs: &["get", "list", "watch", "delete"],
        why: "TTL garbage collection of any kind (custom resources too) in tenant namespaces: metadata-only list/watch and delete. \
              RBAC cannot scope a cluster-wide grant to tenant namespaces, so this is the one broad rule; \
              set rbac.garbageCollection=false (and run without GC) to drop it",
        grant: Grant::GarbageCollection,
    },
    // --- Leader election (Role in the release namespace) -------------------------
    Rule {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "create", "update", "patch"],
        why: "leader election: one active replica holds the palisade Lease",
        grant: Grant::ReleaseNamespace,
    },
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

impl Rule {
    pub fn policy_rule(&self) -> PolicyRule {
        PolicyRule {
            api_groups: Some(strings(self.api_groups)),
            resources: Some(strings(self.resources)),
            verbs: strings(self.verbs),
            ..Default::default()
        }
    }

    /// Whether this rule grants `verb` on `group`/`resource`.
    pub fn allows(&self, group: &str, resource: &str, verb: &str) -> bool {
        let any = |set: &[&str], v: &str| set.iter().any(|s| *s == "*" || *s == v);
        any(self.api_groups, group) && any(self.resources, resource) && any(self.verbs, verb)
    }
}

fn rules_of(grants: &[Grant]) -> Vec<PolicyRule> {
    RULES
        .iter()
        .filter(|r| grants.contains(&r.grant))
        .map(Rule::policy_rule)
        .collect()
}

/// The ClusterRole's rules, garbage collection included.
pub fn cluster_role_rules() -> Vec<PolicyRule> {
    rules_of(&[Grant::Cluster, Grant::GarbageCollection])
}

/// The ClusterRole's rules without the garbage-collection rule.
pub fn cluster_role_rules_without_gc() -> Vec<PolicyRule> {
    rules_of(&[Grant::Cluster])
}

/// The rules of the Role in the operator's own namespace.
pub fn release_namespace_rules() -> Vec<PolicyRule> {
    rules_of(&[Grant::ReleaseNamespace])
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRule {
    api_groups: &'static [&'static str],
    resources: &'static [&'static str],
    verbs: &'static [&'static str],
    why: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRbac {
    cluster_role: Vec<JsonRule>,
    garbage_collection: Vec<JsonRule>,
    release_namespace_role: Vec<JsonRule>,
}

/// The table as pretty JSON (`palisade rbac`, `charts/palisade/files/rbac.json`):
/// `{clusterRole, garbageCollection, releaseNamespaceRole}`, each a list of
/// `{apiGroups, resources, verbs, why}`.
pub fn to_json() -> String {
    let of = |g: Grant| {
        RULES
            .iter()
            .filter(|r| r.grant == g)
            .map(|r| JsonRule {
                api_groups: r.api_groups,
                resources: r.resources,
                verbs: r.verbs,
                why: r.why,
            })
            .collect()
    };
    let doc = JsonRbac {
        cluster_role: of(Grant::Cluster),
        garbage_collection: of(Grant::GarbageCollection),
        release_namespace_role: of(Grant::ReleaseNamespace),
    };
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

fn yaml_rule(out: &mut String, r: &Rule) {
    use std::fmt::Write;
    let list = |items: &[&str]| {
        items
            .iter()
            .map(|s| format!("\"{s}\""))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let _ = writeln!(out, "  # {}", r.why);
    let _ = writeln!(out, "  - apiGroups: [{}]", list(r.api_groups));
    let _ = writeln!(out, "    resources: [{}]", list(r.resources));
    let _ = writeln!(out, "    verbs: [{}]", list(r.verbs));
}

/// The kustomize base's RBAC (`config/default/rbac.yaml`): ClusterRole (GC
/// included), ClusterRoleBinding, and the leader-election Role and RoleBinding,
/// with a comment on every rule.
pub fn to_kustomize_yaml() -> String {
    let mut out = String::from(
        "# Generated by `make generate` from src/operator_rbac.rs (`palisade rbac --yaml`). Do not edit.\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: palisade\nrules:\n",
    );
    for r in RULES.iter().filter(|r| r.grant != Grant::ReleaseNamespace) {
        yaml_rule(&mut out, r);
    }
    out.push_str(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: palisade\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: palisade\n\
         subjects:\n  - kind: ServiceAccount\n    name: palisade\n    namespace: palisade-system\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: palisade-leader-election\nrules:\n",
    );
    for r in RULES.iter().filter(|r| r.grant == Grant::ReleaseNamespace) {
        yaml_rule(&mut out, r);
    }
    out.push_str(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: palisade-leader-election\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: palisade-leader-election\n\
         subjects:\n  - kind: ServiceAccount\n    name: palisade\n    namespace: palisade-system\n",
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::catalog;

    fn held(group: &str, resource: &str, verb: &str) -> bool {
        RULES
            .iter()
            .filter(|r| r.grant == Grant::Cluster)
            .any(|r| r.allows(group, resource, verb))
    }

    #[test]
    fn every_tenant_child_kind_is_fully_managed() {
        for ar in crate::controller::cache::tenant_child_kinds() {
            for verb in ["get", "list", "watch", "create", "patch", "delete"] {
                assert!(
                    held(&ar.group, &ar.plural, verb),
                    "operator RBAC lacks {verb} on {}/{}",
                    ar.group,
                    ar.plural
                );
            }
        }
    }

    #[test]
    fn palisade_kinds_status_finalizers_and_events() {
        for verb in ["get", "list", "watch", "patch"] {
            for kind in ["tenants", "rolepolicies", "backupschedules"] {
                assert!(held("palisade.dev", kind, verb), "{verb} {kind}");
            }
        }
        for sub in [
            "tenants/status",
            "rolepolicies/status",
            "backupschedules/status",
        ] {
            assert!(held("palisade.dev", sub, "patch"), "{sub}");
        }
        assert!(held("palisade.dev", "tenants/finalizers", "update"));
        assert!(held("events.k8s.io", "events", "create"));
        assert!(held("events.k8s.io", "events", "patch"));
    }

    #[test]
    fn upcoming_capabilities_are_granted() {
        for (g, r, v) in [
            ("apps", "deployments", "patch"),
            ("apps", "statefulsets", "patch"),
            ("apps", "daemonsets", "patch"),
            ("batch", "jobs", "create"),
            ("batch", "jobs", "delete"),
            ("", "pods", "list"),
            ("", "secrets", "create"),
            ("", "configmaps", "patch"),
        ] {
            assert!(held(g, r, v), "{v} {g}/{r}");
        }
        let lease = RULES
            .iter()
            .filter(|r| r.grant == Grant::ReleaseNamespace)
            .any(|r| r.allows("coordination.k8s.io", "leases", "update"));
        assert!(lease);
    }

    /// Kubernetes refuses to let Palisade create a Role granting what Palisade
    /// does not hold itself (we use no `escalate`): every built-in role must be
    /// covered by the always-on rules (GC off included).
    #[test]
    fn every_builtin_role_rule_is_held_by_the_operator() {
        for role in catalog::BUILTIN_ROLES {
            let rules = catalog::rules_for(role.permissions.iter().copied())
                .expect("catalog names resolve");
            for rule in rules {
                for g in rule.api_groups.as_deref().unwrap_or_default() {
                    for r in rule.resources.as_deref().unwrap_or_default() {
                        for v in &rule.verbs {
                            assert!(
                                held(g, r, v),
                                "built-in role {} grants {v} on {g}/{r}, which the operator does not hold",
                                role.name
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn no_escalate_bind_or_impersonate() {
        for r in RULES {
            for v in ["escalate", "bind", "impersonate", "*"] {
                assert!(!r.verbs.contains(&v), "{v} in {:?}", r.resources);
            }
        }
        let broad: Vec<_> = RULES
            .iter()
            .filter(|r| r.resources.contains(&"*"))
            .collect();
        assert_eq!(broad.len(), 1, "exactly one broad rule");
        assert_eq!(broad[0].grant, Grant::GarbageCollection);
        assert!(RULES.iter().all(|r| !r.why.is_empty()));
    }

    #[test]
    fn gc_switch_drops_only_the_broad_rule() {
        assert_eq!(
            cluster_role_rules().len(),
            cluster_role_rules_without_gc().len() + 1
        );
    }

    fn repo_file(path: &str) -> String {
        let full = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(path);
        std::fs::read_to_string(&full)
            .unwrap_or_else(|e| panic!("{}: {e}; run `make generate`", full.display()))
    }

    #[test]
    fn checked_in_copies_match_the_table() {
        assert_eq!(
            repo_file("charts/palisade/files/rbac.json"),
            to_json(),
            "charts/palisade/files/rbac.json is stale: run `make generate`"
        );
        assert_eq!(
            repo_file("config/default/rbac.yaml"),
            to_kustomize_yaml(),
            "config/default/rbac.yaml is stale: run `make generate`"
        );
    }
}
