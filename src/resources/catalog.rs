//! The permission catalog: named, reviewed bundles of Kubernetes PolicyRules, and
//! the five built-in roles composed from them.
//!
//! This is the single source of truth for what a built-in role may do; the
//! catalog is versioned so that docs and reviews can refer to it
//! (`palisade permissions` prints it).

use k8s_openapi::api::rbac::v1::PolicyRule;

/// Bumped whenever a permission's rules change.
pub const CATALOG_VERSION: &str = "2026-11-29";

const READ: &[&str] = &["get", "list", "watch"];
const WRITE: &[&str] = &["create", "update", "patch", "delete", "deletecollection"];
/// A run request is created and read, never changed: its spec is immutable and its
/// status is the controller's.
const BACKUP_RUN: &[&str] = &["create", "get", "list", "watch"];

/// (apiGroups, resources, verbs) of one rule of a permission.
type Rule = (
    &'static [&'static str],
    &'static [&'static str],
    &'static [&'static str],
);

/// Requesting BackupRuns of a BackupSchedule that stays read-only: what both
/// backups:run and backups:restore grant (a restore test is a BackupRun too).
const RUN_REQUESTS: &[Rule] = &[
    (&["palisade.dev"], &["backupschedules"], READ),
    (&["palisade.dev"], &["backupruns"], BACKUP_RUN),
];

/// One named permission.
#[derive(Debug, Clone, Copy)]
pub struct Permission {
    pub name: &'static str,
    pub description: &'static str,
    pub rules: &'static [Rule],
}

const WORKLOAD_RESOURCES: &[(&[&str], &[&str])] = &[
    (
        &[""],
        &[
            "pods",
            "pods/log",
            "services",
            "endpoints",
            "serviceaccounts",
        ],
    ),
    (
        &["apps"],
        &["deployments", "statefulsets", "daemonsets", "replicasets"],
    ),
    (&["batch"], &["jobs", "cronjobs"]),
    (&["autoscaling"], &["horizontalpodautoscalers"]),
    (&["policy"], &["poddisruptionbudgets"]),
];

/// Every permission, sorted by name.
pub const PERMISSIONS: &[Permission] = &[
    Permission {
        name: "audit:read",
        description: "Read events, quotas, limits, roles, bindings and network policies (what an auditor needs; no secrets)",
        rules: &[
            (&[""], &["events", "resourcequotas", "limitranges"], READ),
            (&["events.k8s.io"], &["events"], READ),
            (
                &["rbac.authorization.k8s.io"],
                &["roles", "rolebindings"],
                READ,
            ),
            (&["networking.k8s.io"], &["networkpolicies"], READ),
        ],
    },
    Permission {
        name: "backups:read",
        description: "Read BackupSchedules, BackupRuns and the Jobs that run them",
        rules: &[
            (&["palisade.dev"], &["backupschedules", "backupruns"], READ),
            (&["batch"], &["jobs"], READ),
            (&[""], &["pods", "pods/log"], READ),
        ],
    },
    Permission {
        name: "backups:restore",
        description: "Request restore tests (a BackupRun of type RestoreTest) and read the BackupSchedule they test; restores into a live database are an admin's `palisade backup restore`, never an arbitrary Job",
        rules: RUN_REQUESTS,
    },
    Permission {
        name: "backups:run",
        description: "Trigger backups and restore tests: create a BackupRun naming a BackupSchedule (the schedule itself stays read-only)",
        rules: RUN_REQUESTS,
    },
    Permission {
        name: "config:read",
        description: "Read ConfigMaps",
        rules: &[(&[""], &["configmaps"], READ)],
    },
    Permission {
        name: "config:write",
        description: "Create, change and delete ConfigMaps",
        rules: &[(&[""], &["configmaps"], WRITE)],
    },
    Permission {
        name: "network:read",
        description: "Read Services, Ingresses and NetworkPolicies",
        rules: &[
            (&[""], &["services", "endpoints"], READ),
            (
                &["networking.k8s.io"],
                &["ingresses", "networkpolicies"],
                READ,
            ),
        ],
    },
    Permission {
        name: "network:write",
        description: "Create, change and delete Services and Ingresses (NetworkPolicies stay Palisade's)",
        rules: &[
            (&[""], &["services"], WRITE),
            (&["networking.k8s.io"], &["ingresses"], WRITE),
        ],
    },
    Permission {
        name: "secrets:read",
        description: "Read Secrets",
        rules: &[(&[""], &["secrets"], READ)],
    },
    Permission {
        name: "secrets:write",
        description: "Create, change and delete Secrets",
        rules: &[(&[""], &["secrets"], WRITE)],
    },
    Permission {
        name: "storage:read",
        description: "Read PersistentVolumeClaims",
        rules: &[(&[""], &["persistentvolumeclaims"], READ)],
    },
    Permission {
        name: "storage:write",
        description: "Create, change and delete PersistentVolumeClaims",
        rules: &[(&[""], &["persistentvolumeclaims"], WRITE)],
    },
    Permission {
        name: "workloads:exec",
        description: "Exec into, attach to and port-forward to pods",
        rules: &[(
            &[""],
            &["pods/exec", "pods/attach", "pods/portforward"],
            &["get", "create"],
        )],
    },
    Permission {
        name: "workloads:read",
        description: "Read pods (and their logs), services, deployments, statefulsets, daemonsets, jobs, cronjobs, autoscalers, disruption budgets",
        rules: &[],
    },
    Permission {
        name: "workloads:write",
        description: "Create, change and delete the workloads workloads:read covers",
        rules: &[],
    },
];

/// A built-in role and the permissions it is made of.
#[derive(Debug, Clone, Copy)]
pub struct BuiltinRole {
    pub name: &'static str,
    pub description: &'static str,
    /// The built-in role whose every permission this one has too.
    pub extends: Option<&'static str>,
    /// Its permissions beyond those of `extends`.
    pub permissions: &'static [&'static str],
}

impl BuiltinRole {
    /// Every permission of the role, those of the role it extends included,
    /// sorted.
    pub fn all_permissions(&self) -> Vec<&'static str> {
        let mut all = self
            .extends
            .and_then(builtin_role)
            .map(BuiltinRole::all_permissions)
            .unwrap_or_default();
        all.extend_from_slice(self.permissions);
        all.sort_unstable();
        all.dedup();
        all
    }
}

/// The five roles present in every tenant namespace.
pub const BUILTIN_ROLES: &[BuiltinRole] = &[
    BuiltinRole {
        name: "admin",
        description: "Tenant owner: everything editor can do, plus audit, backups and restores",
        extends: Some("editor"),
        permissions: &["audit:read", "backups:restore", "backups:run"],
    },
    BuiltinRole {
        name: "auditor",
        description: "Read everything but Secrets",
        extends: Some("viewer"),
        permissions: &["audit:read"],
    },
    BuiltinRole {
        name: "backup-operator",
        description: "Run backups, restore tests and restores; read workloads",
        extends: None,
        permissions: &[
            "backups:read",
            "backups:restore",
            "backups:run",
            "workloads:read",
        ],
    },
    BuiltinRole {
        name: "editor",
        description: "Deploy and operate workloads, config, secrets and storage",
        extends: Some("viewer"),
        permissions: &[
            "config:write",
            "network:write",
            "secrets:read",
            "secrets:write",
            "storage:write",
            "workloads:exec",
            "workloads:write",
        ],
    },
    BuiltinRole {
        name: "viewer",
        description: "Read workloads, config, network and storage (no Secrets)",
        extends: None,
        permissions: &[
            "backups:read",
            "config:read",
            "network:read",
            "storage:read",
            "workloads:read",
        ],
    },
];

/// Looks up a permission by name.
pub fn permission(name: &str) -> Option<&'static Permission> {
    PERMISSIONS.iter().find(|p| p.name == name)
}

/// Looks up a built-in role by name.
pub fn builtin_role(name: &str) -> Option<&'static BuiltinRole> {
    BUILTIN_ROLES.iter().find(|r| r.name == name)
}

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

fn rule(groups: &[&str], resources: &[&str], verbs: &[&str]) -> PolicyRule {
    PolicyRule {
        api_groups: Some(strings(groups)),
        resources: Some(strings(resources)),
        verbs: strings(verbs),
        ..Default::default()
    }
}

/// The PolicyRules one permission grants.
pub fn permission_rules(p: &Permission) -> Vec<PolicyRule> {
    let workload_verbs = match p.name {
        "workloads:read" => Some(READ),
        "workloads:write" => Some(WRITE),
        _ => None,
    };
    match workload_verbs {
        Some(verbs) => WORKLOAD_RESOURCES
            .iter()
            .map(|(groups, resources)| {
                // pods/log is read-only in Kubernetes; never ask for writes on it.
                let resources: Vec<&str> = resources
                    .iter()
                    .copied()
                    .filter(|r| verbs == READ || *r != "pods/log")
                    .collect();
                rule(groups, &resources, verbs)
            })
            .collect(),
        None => p.rules.iter().map(|(g, r, v)| rule(g, r, v)).collect(),
    }
}

/// The PolicyRules of a set of permissions, merged per (apiGroups, verbs) and
/// sorted, so the same set always yields the same Role.
pub fn rules_for<'a>(names: impl IntoIterator<Item = &'a str>) -> Result<Vec<PolicyRule>, String> {
    let mut rules = Vec::new();
    for name in names {
        let p = permission(name).ok_or_else(|| name.to_string())?;
        rules.extend(permission_rules(p));
    }
    Ok(normalize(rules))
}

/// Merges rules with the same groups, verbs and resourceNames; sorts resources
/// and rules; drops duplicates.
pub fn normalize(rules: Vec<PolicyRule>) -> Vec<PolicyRule> {
    use std::collections::BTreeMap;
    type Key = (Vec<String>, Vec<String>, Vec<String>);
    let mut merged: BTreeMap<Key, std::collections::BTreeSet<String>> = BTreeMap::new();
    let mut passthrough = Vec::new();
    for r in rules {
        if r.non_resource_urls.is_some() {
            passthrough.push(r);
            continue;
        }
        let mut verbs = r.verbs.clone();
        verbs.sort();
        verbs.dedup();
        let mut groups = r.api_groups.clone().unwrap_or_default();
        groups.sort();
        groups.dedup();
        let mut names = r.resource_names.clone().unwrap_or_default();
        names.sort();
        let entry = merged.entry((groups, verbs, names)).or_default();
        entry.extend(r.resources.unwrap_or_default());
    }
    let mut out: Vec<PolicyRule> = merged
        .into_iter()
        .map(|((groups, verbs, names), resources)| PolicyRule {
            api_groups: Some(groups),
            resources: Some(resources.into_iter().collect()),
            verbs,
            resource_names: (!names.is_empty()).then_some(names),
            non_resource_urls: None,
        })
        .collect();
    out.extend(passthrough);
    out
}

/// The catalog as text, for `palisade permissions`.
pub fn describe() -> String {
    use std::fmt::Write;
    let mut out = format!("# Palisade permission catalog {CATALOG_VERSION}\n\n## Permissions\n");
    for p in PERMISSIONS {
        let _ = writeln!(out, "\n{}: {}", p.name, p.description);
        for r in permission_rules(p) {
            let groups: Vec<String> = r
                .api_groups
                .unwrap_or_default()
                .iter()
                .map(|g| {
                    if g.is_empty() {
                        "core".to_string()
                    } else {
                        g.clone()
                    }
                })
                .collect();
            let _ = writeln!(
                out,
                "  - [{}] {} : {}",
                groups.join(","),
                r.resources.unwrap_or_default().join(","),
                r.verbs.join(",")
            );
        }
    }
    out.push_str("\n## Built-in roles\n");
    for r in BUILTIN_ROLES {
        let _ = writeln!(
            out,
            "\n{} ({}): {}",
            r.name,
            r.description,
            r.all_permissions().join(", ")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_role_composes_from_known_permissions() {
        for role in BUILTIN_ROLES {
            let rules = rules_for(role.all_permissions())
                .unwrap_or_else(|p| panic!("role {} names unknown permission {p}", role.name));
            assert!(!rules.is_empty(), "{} grants nothing", role.name);
        }
    }

    #[test]
    fn a_role_extends_a_builtin_role_and_has_its_every_permission() {
        for role in BUILTIN_ROLES {
            let Some(base) = role.extends else { continue };
            let base = builtin_role(base)
                .unwrap_or_else(|| panic!("{} extends unknown role {base}", role.name));
            assert!(
                base.extends != Some(role.name),
                "{} extends itself",
                role.name
            );
            let all = role.all_permissions();
            for p in base.all_permissions() {
                assert!(all.contains(&p), "{} lacks {p} of {}", role.name, base.name);
            }
        }
    }

    #[test]
    fn catalog_is_sorted_and_unique() {
        let names: Vec<_> = PERMISSIONS.iter().map(|p| p.name).collect();
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(names, sorted);
    }

    #[test]
    fn viewer_and_auditor_cannot_read_secrets() {
        for role in ["viewer", "auditor"] {
            let r = builtin_role(role).expect("builtin");
            let rules = rules_for(r.all_permissions()).expect("known");
            assert!(
                rules.iter().all(|rule| !rule
                    .resources
                    .iter()
                    .flatten()
                    .any(|res| res == "secrets")),
                "{role} must not see secrets"
            );
        }
    }

    #[test]
    fn no_builtin_grants_wildcards_or_escalation_verbs() {
        for role in BUILTIN_ROLES {
            for rule in rules_for(role.all_permissions()).expect("known") {
                for verb in &rule.verbs {
                    assert!(!["*", "escalate", "bind", "impersonate"].contains(&verb.as_str()));
                }
                assert!(!rule.resources.iter().flatten().any(|r| r == "*"));
            }
        }
    }

    /// Issue #15: a role that may run backups must not be able to choose what
    /// runs. Jobs and Pods are arbitrary code (any image, any Secret mounted), and
    /// a BackupSchedule's spec decides the run's Secrets, server and SQL.
    #[test]
    fn backups_permissions_never_create_jobs_or_pods_nor_change_schedules() {
        for p in PERMISSIONS
            .iter()
            .filter(|p| p.name.starts_with("backups:"))
        {
            for rule in permission_rules(p) {
                let resources = rule.resources.clone().unwrap_or_default();
                let writes = rule
                    .verbs
                    .iter()
                    .any(|v| WRITE.contains(&v.as_str()) || v == "*");
                for r in &resources {
                    let base = r.split('/').next().unwrap_or_default();
                    assert!(
                        !(writes
                            && ["jobs", "cronjobs", "pods", "backupschedules"].contains(&base)),
                        "{} grants {:?} on {r}",
                        p.name,
                        rule.verbs
                    );
                }
            }
        }
        // Whatever a built-in role is made of, `backups:*` alone never adds
        // `create` on Jobs or Pods: the roles without workloads:write have none.
        for role in BUILTIN_ROLES {
            let backups = role
                .all_permissions()
                .into_iter()
                .filter(|p| p.starts_with("backups:"));
            for rule in rules_for(backups).expect("known") {
                let creates = rule.verbs.iter().any(|v| v == "create");
                let workload = rule
                    .resources
                    .iter()
                    .flatten()
                    .any(|r| ["jobs", "pods", "cronjobs"].contains(&r.as_str()));
                assert!(!(creates && workload), "{}: {rule:?}", role.name);
            }
        }
        let backup_operator = builtin_role("backup-operator").expect("builtin");
        let rules = rules_for(backup_operator.all_permissions()).expect("known");
        let can = |resource: &str, verb: &str| {
            rules.iter().any(|r| {
                r.resources.iter().flatten().any(|x| x == resource)
                    && r.verbs.iter().any(|v| v == verb)
            })
        };
        assert!(can("backupruns", "create"));
        assert!(!can("backupschedules", "patch"));
        assert!(!can("jobs", "create"));
        assert!(!can("pods", "create"));
    }

    #[test]
    fn normalize_merges_and_is_deterministic() {
        let a = rules_for(["config:read", "secrets:read"]).expect("known");
        let b = rules_for(["secrets:read", "config:read"]).expect("known");
        assert_eq!(a, b);
        assert_eq!(a.len(), 1);
        assert_eq!(
            a[0].resources.as_deref(),
            Some(&["configmaps".to_string(), "secrets".to_string()][..])
        );
    }
}
