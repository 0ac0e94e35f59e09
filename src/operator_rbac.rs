//! The operator's own RBAC: the single source of truth for what the
//! `palisade` ServiceAccount may do. `palisade rbac` prints it as JSON;
//! `make generate` writes that into `charts/palisade/files/rbac.json` (the Helm
//! chart renders its RBAC from it) and `config/default/rbac.yaml` (the
//! kustomize base). Tests here and in `tests/manifests/` fail when either copy
//! drifts from this table; the e2e suite installs the kustomize copy on a real
//! API server, asks it what the ServiceAccount may do, and runs every
//! controller test as that ServiceAccount.
//!
//! ## No cluster-wide power over tenant data or workloads
//! Three grants:
//! - **Cluster** (ClusterRole `palisade`): Palisade's own kinds; list/watch of
//!   the non-secret children its caches and watches need (namespaces, quotas,
//!   limits, network policies, roles and bindings, backup Jobs and Pods by
//!   label); creating namespaces and patching the ones it manages; creating
//!   RoleBindings plus `bind` on exactly one ClusterRole, the one below; Events.
//!   No Secrets, ConfigMaps, workload writes, exec or deletes anywhere.
//! - **TenantNamespace** (ClusterRole `palisade-tenant-namespace`), granted by
//!   Palisade to itself with the RoleBinding `palisade:operator` in each
//!   namespace it manages, created right after the namespace: the children it
//!   writes, the Secrets it rotates, the workloads it restarts, backup Jobs,
//!   deleting its own namespace, the garbage-collection kinds of the Helm
//!   allow-list, and the whole permission catalog (Kubernetes lets a subject
//!   create a Role only with permissions it holds where the Role lives; holding
//!   the catalog in tenant namespaces is what lets Palisade write the tenants'
//!   Roles without `escalate`).
//! - **ReleaseNamespace** (Role in the operator's namespace): leader election.
//!
//! RBAC cannot scope "create RoleBindings" to namespaces that do not exist
//! yet, so a stolen token could bind itself to `palisade-tenant-namespace` in
//! another namespace. The [`admission_policy`] (a ValidatingAdmissionPolicy,
//! installed with the RBAC) closes that: requests of the operator's
//! ServiceAccount that write namespaced objects are admitted only in
//! namespaces labelled `app.kubernetes.io/managed-by=palisade`, and it may
//! change or delete only namespaces that carry a `palisade.dev/tenant` label.
//!
//! The [`tenant_policies`] (also installed with the RBAC) apply to everyone's
//! requests in tenant namespaces, not to the operator's: they are where
//! rules about what tenants' objects may say live (e.g. only Palisade's backup
//! pods may carry the label the backup egress NetworkPolicy selects).

pub mod tenant_policies;

use k8s_openapi::api::rbac::v1::PolicyRule;
use serde::Serialize;

use crate::resources::catalog;

/// The ClusterRole Palisade binds to itself in every namespace it manages
/// (the chart names it `<release fullname>-tenant-namespace` and passes the
/// name in `PALISADE_TENANT_NAMESPACE_ROLE`).
pub const TENANT_NAMESPACE_ROLE: &str = "palisade-tenant-namespace";

/// The RoleBinding of [`TENANT_NAMESPACE_ROLE`] in each managed namespace.
pub const SELF_BINDING: &str = crate::resources::rbac::OPERATOR_BINDING;

/// Kinds TTL garbage collection may delete unless the Helm value
/// `rbac.garbageCollectionKinds` says otherwise: `(apiGroup, resource)`.
pub const GC_DEFAULT_KINDS: &[(&str, &str)] = &[
    ("", "configmaps"),
    ("", "secrets"),
    ("batch", "jobs"),
    ("", "pods"),
    ("", "persistentvolumeclaims"),
];

/// Verbs garbage collection needs on each allowed kind (metadata list/watch
/// and delete), in tenant namespaces only.
pub const GC_VERBS: &[&str] = &["get", "list", "watch", "delete"];

/// Where a rule is granted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum Grant {
    /// The ClusterRole `palisade`, cluster-wide.
    Cluster,
    /// The ClusterRole bound per managed namespace.
    TenantNamespace,
    /// A Role in the operator's own namespace (leader election).
    ReleaseNamespace,
}

/// One rule and the reason Palisade needs it.
#[derive(Debug, Clone, Copy)]
pub struct Rule {
    pub api_groups: &'static [&'static str],
    pub resources: &'static [&'static str],
    pub verbs: &'static [&'static str],
    /// Limits the rule to these object names (empty: any).
    pub resource_names: &'static [&'static str],
    pub why: &'static str,
    pub grant: Grant,
}

const READ: &[&str] = &["get", "list", "watch"];
const WRITE_CHILD: &[&str] = &["get", "create", "patch", "delete"];
const ALL: &[&str] = &[];

/// Every hand-written rule, in the order the roles list them. The tenant
/// namespace role adds the permission catalog ([`tenant_namespace_rules`]).
pub const RULES: &[Rule] = &[
    // --- Cluster: Palisade's own kinds ------------------------------------------
    Rule {
        api_groups: &["palisade.dev"],
        resources: &["tenants", "rolepolicies", "backupschedules"],
        verbs: &["get", "list", "watch", "patch", "update"],
        resource_names: ALL,
        why: "reconcile Palisade's kinds; patch adds and removes the cleanup finalizers",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["palisade.dev"],
        resources: &["backupruns"],
        verbs: READ,
        resource_names: ALL,
        why: "watch the BackupRuns tenants create (run requests); tying them to their schedule and deleting old ones is per namespace",
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
        resource_names: ALL,
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
        resource_names: ALL,
        why: "set ownerReferences with blockOwnerDeletion on children (OwnerReferencesPermissionEnforcement)",
        grant: Grant::Cluster,
    },
    // --- Cluster: what the caches watch and what bootstraps a namespace ---------
    Rule {
        api_groups: &[""],
        resources: &["namespaces"],
        verbs: &["get", "list", "watch", "create", "patch"],
        resource_names: ALL,
        why: "create tenant namespaces and keep their labels (the admission policy admits changes only to namespaces labelled palisade.dev/tenant); delete is granted per namespace",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &["resourcequotas", "limitranges"],
        verbs: READ,
        resource_names: ALL,
        why: "watch the quotas and limits Palisade manages (label-selected) and read quota usage for scope: Tenant; writes are per namespace",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: READ,
        resource_names: ALL,
        why: "watch the NetworkPolicies Palisade manages (label-selected); writes are per namespace",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["roles", "rolebindings"],
        verbs: READ,
        resource_names: ALL,
        why: "watch the Roles and RoleBindings Palisade manages (label-selected); writes are per namespace",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["rolebindings"],
        verbs: &["create"],
        resource_names: ALL,
        why: "create the RoleBinding palisade:operator in a namespace Palisade just created (RBAC cannot name namespaces that do not exist yet; the admission policy admits it only in managed namespaces)",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["clusterroles", "clusterrolebindings"],
        verbs: &["get", "list", "watch", "create", "patch", "delete"],
        resource_names: ALL,
        why: "each Tenant's owners' ClusterRole and ClusterRoleBinding palisade:owner:<tenant> (read their Tenant; with spec.maxNamespaces, create namespaces): the admission policy admits no other name, and RBAC lets Palisade grant only what it holds",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["palisade.dev"],
        resources: &["tenants"],
        verbs: &[crate::resources::rbac::CREATE_NAMESPACES_VERB],
        resource_names: ALL,
        why: "grant a tenant's owners the verb the namespace-create admission policy asks the authorizer about (not a Kubernetes verb: nothing else reads it)",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["palisade.dev"],
        resources: &[crate::resources::rbac::OWNER_MARKER_RESOURCE],
        verbs: &["create"],
        resource_names: ALL,
        why: "grant owners who may create namespaces the marker the namespace-create admission policy asks about (a resource that exists only to RBAC)",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["clusterroles"],
        verbs: &["bind"],
        resource_names: &[TENANT_NAMESPACE_ROLE],
        why: "bind only the per-namespace ClusterRole to itself (bind on no other role, no escalate)",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["batch"],
        resources: &["jobs"],
        verbs: READ,
        resource_names: ALL,
        why: "watch backup and restore-test Jobs (label-selected); creating and deleting them is per namespace",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &[""],
        resources: &["pods"],
        verbs: READ,
        resource_names: ALL,
        why: "watch backup Job Pods (label-selected) to read their results",
        grant: Grant::Cluster,
    },
    Rule {
        api_groups: &["events.k8s.io"],
        resources: &["events"],
        verbs: &["create", "patch"],
        resource_names: ALL,
        why: "record Events on Palisade's objects (create, patch to aggregate); Tenant Events land in the default namespace",
        grant: Grant::Cluster,
    },
    // --- TenantNamespace: bound by Palisade to itself in managed namespaces ------
    Rule {
        api_groups: &[""],
        resources: &["namespaces"],
        verbs: &["get", "patch", "delete"],
        resource_names: ALL,
        why: "delete a tenant namespace (deletionPolicy: Delete); a namespace is its own namespace to RBAC, so this reaches no other",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &[""],
        resources: &["resourcequotas", "limitranges"],
        verbs: WRITE_CHILD,
        resource_names: ALL,
        why: "enforce tenant quotas and container limits",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &["networking.k8s.io"],
        resources: &["networkpolicies"],
        verbs: WRITE_CHILD,
        resource_names: ALL,
        why: "default-deny and per-intent NetworkPolicies",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["roles", "rolebindings"],
        verbs: WRITE_CHILD,
        resource_names: ALL,
        why: "the palisade:<role> Roles and RoleBindings of the built-in and RolePolicy roles (within the catalog below)",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &["networking.k8s.io", "rbac.authorization.k8s.io"],
        resources: &["networkpolicies", "rolebindings"],
        verbs: crate::resources::rolepolicy::SELF_SERVICE_VERBS,
        resource_names: ALL,
        why: "self-service (a Tenant's spec.selfService): Palisade may put into an owner's Role only what it holds there",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &["rbac.authorization.k8s.io"],
        resources: &["roles"],
        verbs: &["bind"],
        resource_names: ALL,
        why: "self-service RoleBindings: owners get `bind` on the tenant's catalog Roles by name, which Palisade may grant only holding it",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &[""],
        resources: &["secrets", "configmaps"],
        verbs: &[
            "get", "list", "watch", "create", "update", "patch", "delete",
        ],
        resource_names: ALL,
        why: "rotated Secrets, JWKS ConfigMaps and application tokens (watched per namespace: no cluster-wide Secret access)",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &["apps"],
        resources: &["deployments", "statefulsets", "daemonsets"],
        verbs: &["get", "list", "patch"],
        resource_names: ALL,
        why: "restart workloads that mount a rotated Secret",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &["palisade.dev"],
        resources: &["backupruns"],
        verbs: &["get", "patch", "delete"],
        resource_names: ALL,
        why: "tie each BackupRun to its schedule (ownerReference) and delete finished ones beyond the history (creating them is the catalog's backups:run)",
        grant: Grant::TenantNamespace,
    },
    Rule {
        api_groups: &["batch"],
        resources: &["jobs"],
        verbs: &["get", "list", "watch", "create", "delete"],
        resource_names: ALL,
        why: "run backup and restore-test Jobs and delete finished ones past their history limit",
        grant: Grant::TenantNamespace,
    },
    // --- Leader election (Role in the release namespace) -------------------------
    Rule {
        api_groups: &["coordination.k8s.io"],
        resources: &["leases"],
        verbs: &["get", "create", "update", "patch"],
        resource_names: ALL,
        why: "leader election: one active replica holds the palisade Lease",
        grant: Grant::ReleaseNamespace,
    },
];

fn strings(items: &[&str]) -> Vec<String> {
    items.iter().map(|s| s.to_string()).collect()
}

/// A rule with its reason, as the manifests print it.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DocRule {
    pub api_groups: Vec<String>,
    pub resources: Vec<String>,
    pub verbs: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    pub why: String,
}

impl DocRule {
    fn of(r: &Rule) -> Self {
        Self {
            api_groups: strings(r.api_groups),
            resources: strings(r.resources),
            verbs: strings(r.verbs),
            resource_names: strings(r.resource_names),
            why: r.why.to_string(),
        }
    }

    fn from_policy(p: PolicyRule, why: String) -> Self {
        Self {
            api_groups: p.api_groups.unwrap_or_default(),
            resources: p.resources.unwrap_or_default(),
            verbs: p.verbs,
            resource_names: p.resource_names.unwrap_or_default(),
            why,
        }
    }

    /// Whether this rule grants `verb` on `group`/`resource` (any name).
    pub fn allows(&self, group: &str, resource: &str, verb: &str) -> bool {
        let any = |set: &[String], v: &str| set.iter().any(|s| s == "*" || s == v);
        any(&self.api_groups, group)
            && any(&self.resources, resource)
            && any(&self.verbs, verb)
            && self.resource_names.is_empty()
    }
}

fn hand_written(grant: Grant) -> Vec<DocRule> {
    RULES
        .iter()
        .filter(|r| r.grant == grant)
        .map(DocRule::of)
        .collect()
}

/// The rules of the ClusterRole `palisade` (cluster-wide).
pub fn cluster_rules() -> Vec<DocRule> {
    hand_written(Grant::Cluster)
}

/// The rules of the per-namespace ClusterRole without garbage collection:
/// Palisade's own needs, then the whole permission catalog.
pub fn tenant_namespace_rules() -> Vec<DocRule> {
    let mut rules = hand_written(Grant::TenantNamespace);
    let names: Vec<&str> = catalog::PERMISSIONS.iter().map(|p| p.name).collect();
    let catalog_rules = catalog::rules_for(names.iter().copied()).unwrap_or_default();
    rules.extend(catalog_rules.into_iter().map(|p| {
        DocRule::from_policy(
            p,
            format!(
                "permission catalog {}: Palisade may write a tenant Role only with permissions it holds in that namespace",
                catalog::CATALOG_VERSION
            ),
        )
    }));
    rules
}

/// One garbage-collection rule per allowed kind `(apiGroup, resource)`.
pub fn gc_rules(kinds: &[(String, String)]) -> Vec<DocRule> {
    kinds
        .iter()
        .map(|(group, resource)| DocRule {
            api_groups: vec![group.clone()],
            resources: vec![resource.clone()],
            verbs: strings(GC_VERBS),
            resource_names: Vec::new(),
            why: format!(
                "TTL garbage collection of {} (Helm value rbac.garbageCollectionKinds), in managed namespaces only",
                if group.is_empty() {
                    resource.clone()
                } else {
                    format!("{resource}.{group}")
                }
            ),
        })
        .collect()
}

/// The default garbage-collection kinds, owned.
pub fn gc_default_kinds() -> Vec<(String, String)> {
    GC_DEFAULT_KINDS
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect()
}

/// The rules of the Role in the operator's own namespace.
pub fn release_namespace_rules() -> Vec<DocRule> {
    hand_written(Grant::ReleaseNamespace)
}

/// The ValidatingAdmissionPolicy's validations, `(expression, message)`; the
/// chart and the kustomize base print them with the operator's username in
/// the match condition.
pub const ADMISSION_VALIDATIONS: &[(&str, &str)] = &[
    (
        "request.resource.resource in ['namespaces', 'clusterroles', 'clusterrolebindings'] || (namespaceObject != null && has(namespaceObject.metadata.labels) && 'app.kubernetes.io/managed-by' in namespaceObject.metadata.labels && namespaceObject.metadata.labels['app.kubernetes.io/managed-by'] == 'palisade')",
        "Palisade's ServiceAccount may write only inside namespaces it manages (labelled app.kubernetes.io/managed-by=palisade)",
    ),
    (
        "!(request.resource.resource in ['clusterroles', 'clusterrolebindings']) || (request.name.startsWith('palisade:owner:') && (request.resource.resource != 'clusterrolebindings' || request.operation == 'DELETE' || (object.roleRef.kind == 'ClusterRole' && object.roleRef.name == request.name)))",
        "Palisade's ServiceAccount may write only the ClusterRoles and ClusterRoleBindings of tenant owners (palisade:owner:<tenant>, each binding its own role)",
    ),
    (
        "request.resource.resource != 'namespaces' || request.operation == 'CREATE' || (has(oldObject.metadata.labels) && 'palisade.dev/tenant' in oldObject.metadata.labels)",
        "Palisade's ServiceAccount may change or delete only namespaces labelled palisade.dev/tenant (tenant namespaces)",
    ),
];

/// Kinds the admission policy leaves alone: Palisade's own kinds, Events (of
/// cluster-scoped Tenants, in `default`), the leader Lease and the
/// authentication/authorization reviews. `(apiGroups, resources)`.
pub const ADMISSION_EXCLUDED: &[(&[&str], &[&str])] = &[
    (&["palisade.dev"], &["*/*"]),
    (&["", "events.k8s.io"], &["events"]),
    (&["coordination.k8s.io"], &["leases"]),
    (&["authentication.k8s.io", "authorization.k8s.io"], &["*"]),
];

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonExcluded {
    api_groups: &'static [&'static str],
    resources: &'static [&'static str],
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonValidation {
    expression: &'static str,
    message: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonGcKind {
    api_group: &'static str,
    resource: &'static str,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonAdmission {
    validations: Vec<JsonValidation>,
    excluded: Vec<JsonExcluded>,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonRbac {
    cluster_role: Vec<DocRule>,
    tenant_namespace_role: Vec<DocRule>,
    garbage_collection_default_kinds: Vec<JsonGcKind>,
    release_namespace_role: Vec<DocRule>,
    admission_policy: JsonAdmission,
    tenant_policies: Vec<tenant_policies::JsonTenantPolicy>,
}

/// The table as pretty JSON (`palisade rbac`, `charts/palisade/files/rbac.json`):
/// `{clusterRole, tenantNamespaceRole, garbageCollectionDefaultKinds,
/// releaseNamespaceRole, admissionPolicy, tenantPolicies}`; rules are
/// `{apiGroups, resources, verbs, resourceNames?, why}`; tenant policies
/// `{nameSuffix, why, spec, variables}` (the chart adds the operator variable).
pub fn to_json() -> String {
    let doc = JsonRbac {
        cluster_role: cluster_rules(),
        tenant_namespace_role: tenant_namespace_rules(),
        garbage_collection_default_kinds: GC_DEFAULT_KINDS
            .iter()
            .map(|(g, r)| JsonGcKind {
                api_group: g,
                resource: r,
            })
            .collect(),
        release_namespace_role: release_namespace_rules(),
        admission_policy: JsonAdmission {
            validations: ADMISSION_VALIDATIONS
                .iter()
                .map(|(expression, message)| JsonValidation {
                    expression,
                    message,
                })
                .collect(),
            excluded: ADMISSION_EXCLUDED
                .iter()
                .map(|(api_groups, resources)| JsonExcluded {
                    api_groups,
                    resources,
                })
                .collect(),
        },
        tenant_policies: tenant_policies::json_rows(),
    };
    let mut s = serde_json::to_string_pretty(&doc).unwrap_or_default();
    s.push('\n');
    s
}

fn list(items: &[impl AsRef<str>]) -> String {
    items
        .iter()
        .map(|s| format!("\"{}\"", s.as_ref()))
        .collect::<Vec<_>>()
        .join(", ")
}

fn yaml_rules(out: &mut String, rules: &[DocRule]) {
    use std::fmt::Write;
    for r in rules {
        let _ = writeln!(out, "  # {}", r.why);
        let _ = writeln!(out, "  - apiGroups: [{}]", list(&r.api_groups));
        let _ = writeln!(out, "    resources: [{}]", list(&r.resources));
        let _ = writeln!(out, "    verbs: [{}]", list(&r.verbs));
        if !r.resource_names.is_empty() {
            let _ = writeln!(out, "    resourceNames: [{}]", list(&r.resource_names));
        }
    }
}

/// The operator's username on the API server.
pub fn service_account_user(namespace: &str, name: &str) -> String {
    format!("system:serviceaccount:{namespace}:{name}")
}

/// The kustomize base's RBAC (`config/default/rbac.yaml`), for the
/// ServiceAccount `palisade` in `palisade-system`: the two ClusterRoles and
/// the ClusterRoleBinding, the leader-election Role and RoleBinding, and the
/// admission policy with its binding, then the [`tenant_policies`] with theirs;
/// a comment on every rule.
pub fn to_kustomize_yaml() -> String {
    use std::fmt::Write;
    let mut out = String::from(
        "# Generated by `make generate` from src/operator_rbac.rs (`palisade rbac --yaml`). Do not edit.\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: palisade\nrules:\n",
    );
    yaml_rules(&mut out, &cluster_rules());
    let _ = write!(
        out,
        "---\n# Bound by Palisade to itself in each namespace it manages (RoleBinding {SELF_BINDING}).\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata:\n  name: {TENANT_NAMESPACE_ROLE}\nrules:\n"
    );
    let mut tenant = tenant_namespace_rules();
    tenant.extend(gc_rules(&gc_default_kinds()));
    yaml_rules(&mut out, &tenant);
    out.push_str(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata:\n  name: palisade\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: ClusterRole\n  name: palisade\n\
         subjects:\n  - kind: ServiceAccount\n    name: palisade\n    namespace: palisade-system\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: palisade-leader-election\nrules:\n",
    );
    yaml_rules(&mut out, &release_namespace_rules());
    out.push_str(
        "---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: palisade-leader-election\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: palisade-leader-election\n\
         subjects:\n  - kind: ServiceAccount\n    name: palisade\n    namespace: palisade-system\n",
    );
    let user = service_account_user("palisade-system", "palisade");
    out.push_str(&admission_policy("palisade", &user));
    out.push_str(&tenant_policies::to_yaml("palisade", &user));
    out
}

/// The ValidatingAdmissionPolicy (and its binding) named `name` that confines
/// the requests of `user` (the operator's ServiceAccount) to managed
/// namespaces, as YAML documents (each starting with `---`).
pub fn admission_policy(name: &str, user: &str) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = write!(
        out,
        "---\n# Confines the operator's ServiceAccount to the namespaces it manages (RBAC cannot).\n\
         apiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicy\nmetadata:\n  name: {name}-confinement\n\
         spec:\n  failurePolicy: Fail\n  matchConstraints:\n    resourceRules:\n\
         \x20     - apiGroups: [\"*\"]\n        apiVersions: [\"*\"]\n        operations: [\"CREATE\", \"UPDATE\", \"DELETE\"]\n\
         \x20       resources: [\"*/*\"]\n        scope: \"*\"\n    excludeResourceRules:\n"
    );
    for (groups, resources) in ADMISSION_EXCLUDED {
        let _ = write!(
            out,
            "      - apiGroups: [{}]\n        apiVersions: [\"*\"]\n        operations: [\"*\"]\n        resources: [{}]\n        scope: \"*\"\n",
            list(groups),
            list(resources)
        );
    }
    let _ = write!(
        out,
        "  matchConditions:\n    - name: palisade-service-account\n      expression: \"request.userInfo.username == '{user}'\"\n  validations:\n"
    );
    for (expression, message) in ADMISSION_VALIDATIONS {
        let _ = write!(
            out,
            "    - expression: {}\n      message: {}\n",
            serde_json::to_string(expression).unwrap_or_default(),
            serde_json::to_string(message).unwrap_or_default()
        );
    }
    let _ = write!(
        out,
        "---\napiVersion: admissionregistration.k8s.io/v1\nkind: ValidatingAdmissionPolicyBinding\nmetadata:\n  name: {name}-confinement\n\
         spec:\n  policyName: {name}-confinement\n  validationActions: [\"Deny\"]\n"
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held(rules: &[DocRule], group: &str, resource: &str, verb: &str) -> bool {
        rules.iter().any(|r| r.allows(group, resource, verb))
    }

    fn in_tenant_namespace() -> Vec<DocRule> {
        let mut rules = cluster_rules();
        rules.extend(tenant_namespace_rules());
        rules.extend(gc_rules(&gc_default_kinds()));
        rules
    }

    /// The rows of the review that found the operator cluster-admin in all but
    /// name: none may be held cluster-wide.
    #[test]
    fn nothing_sensitive_is_held_cluster_wide() {
        let cluster = cluster_rules();
        for (g, r, v) in [
            ("", "secrets", "get"),
            ("", "secrets", "list"),
            ("", "configmaps", "list"),
            ("", "configmaps", "delete"),
            ("", "pods", "create"),
            ("", "pods/exec", "create"),
            ("apps", "deployments", "delete"),
            ("apps", "deployments", "patch"),
            ("", "nodes/proxy", "get"),
            ("", "namespaces", "delete"),
            ("batch", "jobs", "create"),
            ("rbac.authorization.k8s.io", "roles", "create"),
            ("rbac.authorization.k8s.io", "rolebindings", "delete"),
        ] {
            assert!(!held(&cluster, g, r, v), "cluster-wide {v} on {g}/{r}");
        }
        for r in cluster_rules()
            .iter()
            .chain(&tenant_namespace_rules())
            .chain(&release_namespace_rules())
        {
            assert!(!r.resources.iter().any(|x| x == "*"), "{r:?}");
            assert!(!r.api_groups.iter().any(|x| x == "*"), "{r:?}");
            for v in ["escalate", "impersonate", "*"] {
                assert!(!r.verbs.iter().any(|x| x == v), "{v} in {r:?}");
            }
            if r.verbs.iter().any(|x| x == "bind") {
                // Cluster-wide: exactly the one ClusterRole; in tenant
                // namespaces: their Roles (all Palisade's), which self-service
                // owners get `bind` on by name.
                let tenant_roles = r.resources == ["roles"]
                    && tenant_namespace_rules().iter().any(|t| t == r)
                    && !cluster_rules().iter().any(|c| c == r);
                if !tenant_roles {
                    assert_eq!(r.resources, ["clusterroles"]);
                    assert_eq!(r.resource_names, [TENANT_NAMESPACE_ROLE]);
                }
            }
            assert!(!r.why.is_empty());
        }
    }

    #[test]
    fn every_tenant_child_kind_is_watched_and_written() {
        let cluster = cluster_rules();
        let tenant = in_tenant_namespace();
        for ar in crate::controller::cache::tenant_child_kinds() {
            let per_namespace = crate::controller::cache::is_watched_per_namespace(&ar);
            for verb in ["list", "watch"] {
                let rules = if per_namespace { &tenant } else { &cluster };
                assert!(
                    held(rules, &ar.group, &ar.plural, verb),
                    "{verb} on {}/{}",
                    ar.group,
                    ar.plural
                );
            }
            for verb in ["get", "create", "patch", "delete"] {
                assert!(
                    held(&tenant, &ar.group, &ar.plural, verb),
                    "{verb} on {}/{} in tenant namespaces",
                    ar.group,
                    ar.plural
                );
            }
        }
        // A brand-new namespace and the binding that grants the rest.
        assert!(held(&cluster, "", "namespaces", "create"));
        assert!(held(
            &cluster,
            "rbac.authorization.k8s.io",
            "rolebindings",
            "create"
        ));
    }

    #[test]
    fn palisade_kinds_status_finalizers_events_and_backups() {
        let cluster = cluster_rules();
        for verb in ["get", "list", "watch", "patch"] {
            for kind in ["tenants", "rolepolicies", "backupschedules"] {
                assert!(held(&cluster, "palisade.dev", kind, verb), "{verb} {kind}");
            }
        }
        for sub in [
            "tenants/status",
            "rolepolicies/status",
            "backupschedules/status",
        ] {
            assert!(held(&cluster, "palisade.dev", sub, "patch"), "{sub}");
        }
        assert!(held(
            &cluster,
            "palisade.dev",
            "tenants/finalizers",
            "update"
        ));
        assert!(held(&cluster, "events.k8s.io", "events", "create"));
        assert!(held(&cluster, "batch", "jobs", "watch"));
        assert!(held(&cluster, "", "pods", "watch"));
        let tenant = in_tenant_namespace();
        for (g, r, v) in [
            ("apps", "deployments", "patch"),
            ("apps", "statefulsets", "patch"),
            ("apps", "daemonsets", "patch"),
            ("batch", "jobs", "create"),
            ("batch", "jobs", "delete"),
            ("", "secrets", "create"),
            ("", "configmaps", "patch"),
            ("", "namespaces", "delete"),
        ] {
            assert!(held(&tenant, g, r, v), "{v} {g}/{r}");
        }
        assert!(release_namespace_rules().iter().any(|r| r.allows(
            "coordination.k8s.io",
            "leases",
            "update"
        )));
    }

    /// Kubernetes refuses to let Palisade write a Role granting what Palisade
    /// does not hold where the Role lives (no `escalate`): every permission of
    /// the catalog (so every built-in and custom role) must be held in tenant
    /// namespaces, garbage collection off.
    #[test]
    fn every_catalog_permission_is_held_in_tenant_namespaces() {
        let tenant = tenant_namespace_rules();
        for p in catalog::PERMISSIONS {
            for rule in catalog::permission_rules(p) {
                for g in rule.api_groups.as_deref().unwrap_or_default() {
                    for r in rule.resources.as_deref().unwrap_or_default() {
                        for v in &rule.verbs {
                            assert!(
                                held(&tenant, g, r, v),
                                "permission {} grants {v} on {g}/{r}, which the operator does not hold in tenant namespaces",
                                p.name
                            );
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn gc_rules_follow_the_allow_list() {
        let rules = gc_rules(&[("batch".into(), "jobs".into())]);
        assert_eq!(rules.len(), 1);
        assert!(rules[0].allows("batch", "jobs", "delete"));
        assert!(!rules[0].allows("", "pods", "delete"));
        assert!(gc_rules(&[]).is_empty());
    }

    #[test]
    fn admission_policy_names_the_user_and_every_validation() {
        let yaml = admission_policy("palisade", &service_account_user("ns", "sa"));
        assert!(yaml.contains("request.userInfo.username == 'system:serviceaccount:ns:sa'"));
        let docs: Vec<serde_json::Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        assert_eq!(docs.len(), 2);
        assert_eq!(
            docs[0]["spec"]["validations"].as_array().map(Vec::len),
            Some(ADMISSION_VALIDATIONS.len())
        );
        assert_eq!(docs[1]["spec"]["policyName"], "palisade-confinement");
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
