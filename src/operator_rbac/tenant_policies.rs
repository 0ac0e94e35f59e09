//! ValidatingAdmissionPolicies over tenant namespaces: rules for everyone's
//! requests there (tenant owners, editors, their controllers, Palisade
//! itself) that RBAC cannot express, because they depend on what an object
//! says rather than on who may write its kind.
//!
//! One table, [`tenant_policies`], rendered to both install paths like the
//! rest of this module: `palisade rbac` puts each row's spec into
//! `charts/palisade/files/rbac.json` (the chart's `templates/rbac.yaml`
//! prints it with `toYaml`) and `palisade rbac --yaml` prints the same
//! objects into `config/default/rbac.yaml`. The only value the two fill in
//! themselves is the operator's username, the CEL variable
//! `variables.operator` every policy gets ([`OPERATOR_VARIABLE`]);
//! `tests/manifests` checks that the chart and the kustomize base render
//! identical policies. A new rule is a new row: name suffix, resource rules,
//! match conditions, validations (`{expression, message}`).
//!
//! Every policy matches only namespaces labelled
//! `app.kubernetes.io/managed-by=palisade` and fails closed
//! (`failurePolicy: Fail`): a request the policy cannot evaluate is refused.
//! No webhook is involved; the API server evaluates the CEL itself.
//!
//! ## Backup egress only for backup pods
//! A BackupSchedule's NetworkPolicy `<schedule>-backup-egress`
//! ([`crate::resources::backup_network`]) selects pods by the label
//! [`SCHEDULE_LABEL`] (with `app.kubernetes.io/managed-by=palisade`, which
//! anyone may set). For a host name it allows TCP 5432 / 443 to any
//! destination, so a tenant pod carrying the label would get internet egress
//! despite `allowInternetEgress: false`. The `backup-labels-*` rows admit
//! the label only where Palisade puts it:
//! - **Pods**: only when the Job controller creates the pod
//!   ([`JOB_CONTROLLER_USERS`]) with a controlling ownerReference of kind Job.
//!   Later updates may keep the label as it was (the garbage collector and the
//!   Job controller update backup pods) but not add or change it, nor swap a
//!   labelled pod's container images, nor add ephemeral containers to it
//!   (either would run other code under the backup egress; the last is the
//!   `pods/ephemeralcontainers` subresource, a row of its own, since other
//!   subresources such as the kubelet's `pods/status` must never meet these
//!   policies).
//! - **Job pod templates**: only when Palisade's ServiceAccount creates the
//!   Job (the Job controller then creates the pods the Pod rule admits).
//! - **Every other pod template** (Deployments, ReplicaSets, StatefulSets,
//!   DaemonSets, ReplicationControllers, CronJobs, PodTemplates): never. The
//!   Pod rule alone would already refuse their pods; refusing the template
//!   tells the user at once instead of through a stuck ReplicaSet.
//!
//! Objects that carried the label before the policy was installed stay
//! updatable as long as the label stays as it was (so finalizers and scaling
//! keep working), but the Pod rule refuses any new pod they would create,
//! except the pods of Jobs.

use serde::Serialize;
use serde_json::{Value, json};

use crate::resources::backup_jobs::SCHEDULE_LABEL;
use crate::resources::labels::{MANAGED_BY, MANAGED_BY_VALUE};

/// The CEL variable holding the operator's username in every tenant policy;
/// the chart and [`super::to_kustomize_yaml`] define it, the rows use it.
pub const OPERATOR_VARIABLE: &str = "operator";

/// The usernames the Job controller creates pods with:
/// kube-controller-manager with `--use-service-account-credentials` (the
/// usual setup, and the e2e cluster's) acts as one ServiceAccount per
/// controller; without it, every controller is `system:kube-controller-manager`
/// (the ownerReference check then tells Job pods from the others).
pub const JOB_CONTROLLER_USERS: &[&str] = &[
    "system:serviceaccount:kube-system:job-controller",
    "system:kube-controller-manager",
];

/// The sentence every `backup-labels-*` refusal starts with.
pub fn backup_label_refusal() -> String {
    format!(
        "only Palisade's backup Jobs may label pods {SCHEDULE_LABEL}: the label opens the backup egress policy"
    )
}

/// What a policy matches: `operations` on `resources` of `api_groups`
/// (version v1; `matchPolicy: Equivalent`, the default, converts requests
/// made through other versions).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ResourceRule {
    pub api_groups: Vec<String>,
    pub api_versions: Vec<String>,
    pub operations: Vec<String>,
    pub resources: Vec<String>,
    pub scope: String,
}

fn rule(group: &str, resources: &[&str], operations: &[&str]) -> ResourceRule {
    ResourceRule {
        api_groups: vec![group.to_string()],
        api_versions: vec!["v1".to_string()],
        operations: operations.iter().map(|s| s.to_string()).collect(),
        resources: resources.iter().map(|s| s.to_string()).collect(),
        scope: "Namespaced".to_string(),
    }
}

/// A named CEL expression: a match condition or a variable.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Named {
    pub name: String,
    pub expression: String,
}

fn named(name: &str, expression: String) -> Named {
    Named {
        name: name.to_string(),
        expression,
    }
}

/// A rule and the message of its refusal; `reason` is the HTTP status
/// reason of the refusal (the API server's default, `Invalid`, is a 422).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub expression: String,
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<&'static str>,
}

fn validation(expression: String, message: String) -> Validation {
    Validation {
        expression,
        message,
        reason: None,
    }
}

/// A validation whose refusal is `403 Forbidden` (who may write what), not
/// `422 Invalid` (what an object may say).
fn forbidden(expression: String, message: String) -> Validation {
    Validation {
        reason: Some("Forbidden"),
        ..validation(expression, message)
    }
}

/// One ValidatingAdmissionPolicy over tenant namespaces, with its binding.
///
/// No row variables: the API server's type checker (v1.34, measured) does not
/// check variable expressions, only validations and match conditions, so the
/// rows spell their field paths out in the validations, where a wrong path
/// shows up in `status.typeChecking` (the e2e suite asserts there is none).
#[derive(Debug, Clone, PartialEq)]
pub struct TenantPolicy {
    /// The objects are named `<prefix>-<suffix>` (the chart's full name, or
    /// `palisade` in the kustomize base).
    pub name_suffix: &'static str,
    /// One line: what the policy guarantees (a comment in both manifests).
    pub why: String,
    pub resource_rules: Vec<ResourceRule>,
    pub match_conditions: Vec<Named>,
    pub validations: Vec<Validation>,
}

impl TenantPolicy {
    /// The policy's spec without `variables` (the chart and
    /// [`Self::objects`] add [`OPERATOR_VARIABLE`]).
    pub fn spec(&self) -> Value {
        let mut spec = json!({
            "failurePolicy": "Fail",
            "matchConstraints": {
                "namespaceSelector": {"matchLabels": {MANAGED_BY: MANAGED_BY_VALUE}},
                "resourceRules": self.resource_rules,
            },
            "validations": self.validations,
        });
        // A row over cluster-scoped objects (new namespaces) is not about
        // what happens inside tenant namespaces: every request it names.
        if self.resource_rules.iter().all(|r| r.scope == "Cluster") {
            spec["matchConstraints"]
                .as_object_mut()
                .map(|m| m.remove("namespaceSelector"));
        }
        if !self.match_conditions.is_empty() {
            spec["matchConditions"] = json!(self.match_conditions);
        }
        spec
    }

    /// The ValidatingAdmissionPolicy `<prefix>-<suffix>` and its binding, for
    /// the operator's username `operator`.
    pub fn objects(&self, prefix: &str, operator: &str) -> [Value; 2] {
        let name = format!("{prefix}-{}", self.name_suffix);
        let mut spec = self.spec();
        spec["variables"] = json!([operator_variable(operator)]);
        [
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicy",
                "metadata": {"name": name},
                "spec": spec,
            }),
            json!({
                "apiVersion": "admissionregistration.k8s.io/v1",
                "kind": "ValidatingAdmissionPolicyBinding",
                "metadata": {"name": name},
                "spec": {"policyName": name, "validationActions": ["Deny"]},
            }),
        ]
    }
}

/// `variables.operator`: the operator's username as a CEL string.
pub fn operator_variable(operator: &str) -> Named {
    named(OPERATOR_VARIABLE, format!("'{operator}'"))
}

/// `has(…)` for every step of `root.path` (`object`, `spec.template.metadata.labels`).
fn present(root: &str, path: &str) -> String {
    let mut at = root.to_string();
    let mut out = Vec::new();
    for step in path.split('.') {
        at = format!("{at}.{step}");
        out.push(format!("has({at})"));
    }
    out.join(" && ")
}

/// CEL: the pod labels at `root.labels` carry [`SCHEDULE_LABEL`].
fn labelled(root: &str, labels: &str) -> String {
    format!(
        "({} && '{SCHEDULE_LABEL}' in {root}.{labels})",
        present(root, labels)
    )
}

/// CEL: an UPDATE that leaves [`SCHEDULE_LABEL`] at `labels` as it was. Used
/// only after `labelled("object", labels)` held, so the new value exists.
fn kept(labels: &str) -> String {
    format!(
        "(request.operation == 'UPDATE' && {} && oldObject.{labels}['{SCHEDULE_LABEL}'] == object.{labels}['{SCHEDULE_LABEL}'])",
        labelled("oldObject", labels)
    )
}

const WRITE: &[&str] = &["CREATE", "UPDATE"];
const POD_LABELS: &str = "metadata.labels";

/// The Pod row.
fn backup_labels_pods() -> TenantPolicy {
    let refusal = backup_label_refusal();
    let jobs = JOB_CONTROLLER_USERS
        .iter()
        .map(|u| format!("'{u}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let new = labelled("object", POD_LABELS);
    let by_job_controller = format!(
        "(request.userInfo.username in [{jobs}] && has(object.metadata.ownerReferences) && object.metadata.ownerReferences.exists(r, has(r.controller) && r.controller && r.kind == 'Job' && r.apiVersion == 'batch/v1'))"
    );
    // Each container's name and image were there before (an update cannot
    // add containers; their images are the mutable part).
    let same = |list: &str| {
        format!(
            "(!has(object.spec.{list}) || object.spec.{list}.all(c, has(oldObject.spec.{list}) && oldObject.spec.{list}.exists(o, o.name == c.name && o.image == c.image)))"
        )
    };
    TenantPolicy {
        name_suffix: "backup-labels-pods",
        why: format!(
            "Only pods the Job controller creates for a Job may carry {SCHEDULE_LABEL} (the backup egress policy selects it); nobody adds or changes it later or swaps a labelled pod's images."
        ),
        resource_rules: vec![rule("", &["pods"], WRITE)],
        match_conditions: vec![],
        validations: vec![
            Validation {
                expression: format!("!{new} || {by_job_controller} || {}", kept(POD_LABELS)),
                message: format!(
                    "{refusal} (a pod may carry it only when the Job controller creates it for a Job; it cannot be added or changed later)"
                ),
                reason: None,
            },
            Validation {
                expression: format!(
                    "request.operation != 'UPDATE' || !{new} || ({} && {})",
                    same("containers"),
                    same("initContainers")
                ),
                message: format!(
                    "{refusal}, so the container images of a pod labelled {SCHEDULE_LABEL} cannot be changed"
                ),
                reason: None,
            },
        ],
    }
}

/// The ephemeral-container row: a debug container in a backup pod would run
/// anything under the backup egress.
fn backup_labels_ephemeral_containers() -> TenantPolicy {
    TenantPolicy {
        name_suffix: "backup-labels-ephemeral-containers",
        why: format!("Pods labelled {SCHEDULE_LABEL} get no ephemeral containers."),
        resource_rules: vec![rule("", &["pods/ephemeralcontainers"], &["UPDATE"])],
        match_conditions: vec![],
        validations: vec![Validation {
            expression: format!("!{}", labelled("object", POD_LABELS)),
            message: format!(
                "{}, so a pod labelled {SCHEDULE_LABEL} gets no ephemeral containers",
                backup_label_refusal()
            ),
            reason: None,
        }],
    }
}

/// A row for the pod templates at `template` (`spec.template`, …) of
/// `resource_rules`; `allowed` is the CEL condition under which a template may
/// newly carry the label (`false`: never), `which` ends the message.
fn backup_labels_template(
    name_suffix: &'static str,
    resource_rules: Vec<ResourceRule>,
    template: &str,
    allowed: &str,
    which: &str,
) -> TenantPolicy {
    let labels = format!("{template}.metadata.labels");
    TenantPolicy {
        name_suffix,
        why: format!(
            "Pod templates may not carry {SCHEDULE_LABEL} (the backup egress policy selects it): {which}."
        ),
        resource_rules,
        match_conditions: vec![],
        validations: vec![Validation {
            expression: format!(
                "!{} || {} || {allowed}",
                labelled("object", &labels),
                kept(&labels)
            ),
            message: format!("{} ({which})", backup_label_refusal()),
            reason: None,
        }],
    }
}

// --- Tenant settings: safe defaults a Tenant may loosen or narrow -----------
//
// Each Tenant setting reaches these rows as a label or annotation Palisade
// writes on the tenant's namespaces (`namespaceObject`, see
// `resources::admission`): a missing label keeps the safe default, a missing
// or empty annotation means "no allowlist".

/// CEL: the namespace carries label `key` = "true".
fn namespace_allows(key: &str) -> String {
    format!(
        "(has(namespaceObject.metadata.labels) && '{key}' in namespaceObject.metadata.labels && namespaceObject.metadata.labels['{key}'] == 'true')"
    )
}

/// CEL: the namespace carries a non-empty annotation `key` (an allowlist).
fn namespace_lists(key: &str) -> String {
    format!(
        "(has(namespaceObject.metadata.annotations) && '{key}' in namespaceObject.metadata.annotations && namespaceObject.metadata.annotations['{key}'] != '')"
    )
}

/// CEL: the entries of the allowlist annotation `key`.
fn namespace_list(key: &str) -> String {
    format!("namespaceObject.metadata.annotations['{key}'].split(',')")
}

/// CEL: `pred` (over `c`) holds for every container, init and ephemeral
/// container of the pod spec at `spec`.
fn every_container(spec: &str, pred: &str) -> String {
    format!(
        "{spec}.containers.all(c, {pred}) && (!has({spec}.initContainers) || {spec}.initContainers.all(c, {pred})) && (!has({spec}.ephemeralContainers) || {spec}.ephemeralContainers.all(c, {pred}))"
    )
}

/// What the image rows tell: the pull policy and the registries.
pub fn pull_policy_refusal() -> String {
    "imagePullPolicy must be Always on every container (init and ephemeral containers included) in tenant namespaces, so an image cached on a node never runs without its pull credentials: set spec.images.allowAnyPullPolicy: true on the Tenant to allow other pull policies".to_string()
}

pub fn registry_refusal() -> String {
    "every container image must come from a registry listed in the Tenant's spec.images.allowedRegistries (written '<registry>/<repository>'): add the registry there to allow it".to_string()
}

/// An image row for the pod spec at `pod_spec` (`object.spec`,
/// `object.spec.template.spec`, …) of `resource_rules`. On UPDATE of a
/// template (`template` set) only a changed template is checked, so objects
/// from before the policy stay updatable (scaling, relabelling) until their
/// pods change.
fn images_row(
    name_suffix: &'static str,
    resource_rules: Vec<ResourceRule>,
    pod_spec: &str,
    template: Option<&str>,
    which: &str,
) -> TenantPolicy {
    // Palisade's own writes pass: its backup Jobs pull Always anyway, and its
    // restart of a workload after a secret rotation (an annotation in the
    // template) must not depend on what the tenant's containers say.
    let unchanged = match template {
        Some(t) => format!(
            "request.userInfo.username == variables.{OPERATOR_VARIABLE} || (request.operation == 'UPDATE' && object.{t} == oldObject.{t}) || "
        ),
        None => format!("request.userInfo.username == variables.{OPERATOR_VARIABLE} || "),
    };
    let allow_any = namespace_allows(crate::resources::admission::ALLOW_ANY_PULL_POLICY);
    let registries = crate::resources::admission::ALLOWED_REGISTRIES;
    TenantPolicy {
        name_suffix,
        why: format!(
            "Every container of {which} pulls its image Always (unless the Tenant sets spec.images.allowAnyPullPolicy) from the Tenant's allowed registries (spec.images.allowedRegistries, when set)."
        ),
        resource_rules,
        match_conditions: vec![],
        validations: vec![
            validation(
                format!(
                    "{unchanged}{allow_any} || {}",
                    every_container(
                        pod_spec,
                        "has(c.imagePullPolicy) && c.imagePullPolicy == 'Always'"
                    )
                ),
                pull_policy_refusal(),
            ),
            validation(
                format!(
                    "{unchanged}!{} || {}",
                    namespace_lists(registries),
                    every_container(
                        pod_spec,
                        &format!(
                            "{}.exists(r, c.image.startsWith(r + '/'))",
                            namespace_list(registries)
                        )
                    )
                ),
                registry_refusal(),
            ),
        ],
    }
}

/// Service types beyond ClusterIP: NodePort and LoadBalancer open ports on
/// every node, which no NetworkPolicy guards.
fn service_types() -> TenantPolicy {
    use crate::resources::admission::{ALLOW_LOAD_BALANCER, ALLOW_NODE_PORT};
    // An update that keeps the type stays admitted: Services from before the
    // policy (or the Tenant's change) remain editable.
    let kept = "(request.operation == 'UPDATE' && has(oldObject.spec.type) && oldObject.spec.type == object.spec.type)";
    TenantPolicy {
        name_suffix: "service-types",
        why: "Services of type NodePort or LoadBalancer only where the Tenant allows them (spec.services).".to_string(),
        resource_rules: vec![rule("", &["services"], WRITE)],
        match_conditions: vec![],
        validations: vec![
            validation(
                format!(
                    "!has(object.spec.type) || object.spec.type != 'NodePort' || {kept} || {}",
                    namespace_allows(ALLOW_NODE_PORT)
                ),
                "Services of type NodePort are refused in tenant namespaces (a port on every node, which no NetworkPolicy guards): set spec.services.allowNodePort: true on the Tenant to allow them".to_string(),
            ),
            validation(
                format!(
                    "!has(object.spec.type) || object.spec.type != 'LoadBalancer' || {kept} || {}",
                    namespace_allows(ALLOW_LOAD_BALANCER)
                ),
                "Services of type LoadBalancer are refused in tenant namespaces (they expose the tenant outside the cluster and open node ports): set spec.services.allowLoadBalancer: true on the Tenant to allow them".to_string(),
            ),
        ],
    }
}

/// StorageClasses of PersistentVolumeClaims (`spec.storageClassName`, set at
/// creation only).
fn allowed_storage_classes() -> TenantPolicy {
    let key = crate::resources::admission::ALLOWED_STORAGE_CLASSES;
    TenantPolicy {
        name_suffix: "allowed-storage-classes",
        why: "PersistentVolumeClaims name a StorageClass of the Tenant's spec.allowedClasses.storage, when set.".to_string(),
        resource_rules: vec![rule("", &["persistentvolumeclaims"], &["CREATE"])],
        match_conditions: vec![],
        validations: vec![validation(
            format!(
                "!{} || (has(object.spec.storageClassName) && object.spec.storageClassName in {})",
                namespace_lists(key),
                namespace_list(key)
            ),
            "a PersistentVolumeClaim must name (storageClassName) a StorageClass listed in the Tenant's spec.allowedClasses.storage: add the class there to allow it".to_string(),
        )],
    }
}

/// IngressClasses of Ingresses (`spec.ingressClassName`, and the legacy
/// annotation, which must not name another class).
fn allowed_ingress_classes() -> TenantPolicy {
    let key = crate::resources::admission::ALLOWED_INGRESS_CLASSES;
    let legacy = "kubernetes.io/ingress.class";
    TenantPolicy {
        name_suffix: "allowed-ingress-classes",
        why: "Ingresses name an IngressClass of the Tenant's spec.allowedClasses.ingress, when set.".to_string(),
        resource_rules: vec![rule("networking.k8s.io", &["ingresses"], WRITE)],
        match_conditions: vec![],
        validations: vec![validation(
            format!(
                "!{} || (has(object.spec.ingressClassName) && object.spec.ingressClassName in {list} && (!has(object.metadata.annotations) || !('{legacy}' in object.metadata.annotations) || object.metadata.annotations['{legacy}'] in {list}))",
                namespace_lists(key),
                list = namespace_list(key)
            ),
            "an Ingress must name (ingressClassName) an IngressClass listed in the Tenant's spec.allowedClasses.ingress: add the class there to allow it".to_string(),
        )],
    }
}

// --- Palisade's own objects ------------------------------------------------------

/// Who may change Palisade's objects: the operator; the cluster's own
/// controllers and nodes (the namespace controller empties a deleted
/// namespace, the garbage collector follows ownerReferences, the Job
/// controller and the kubelet finish backup pods); and `system:masters`
/// (break glass: they could remove the policy anyway).
pub const CLUSTER_COMPONENTS: &str = "request.userInfo.username.startsWith('system:serviceaccount:kube-system:') || request.userInfo.username in ['system:kube-controller-manager', 'system:kube-scheduler'] || request.userInfo.groups.exists(g, g in ['system:masters', 'system:nodes'])";

fn privileged() -> String {
    format!("request.userInfo.username == variables.{OPERATOR_VARIABLE} || {CLUSTER_COMPONENTS}")
}

/// The sentence a refused change of Palisade's objects starts with.
pub fn managed_refusal() -> String {
    format!(
        "objects labelled {MANAGED_BY}={MANAGED_BY_VALUE} in tenant namespaces are Palisade's: only Palisade's ServiceAccount may change or delete them"
    )
}

/// `(has(object.F) == has(oldObject.F)) && (same value)`, for dynamic objects.
fn same_dyn(path: &str) -> String {
    format!(
        "(has(object.{path}) == has(oldObject.{path}) && (!has(object.{path}) || object.{path} == oldObject.{path}))"
    )
}

/// Palisade's objects (labelled managed-by=palisade) in tenant namespaces:
/// their isolation, quota, RBAC, rotated Secrets, backup Jobs. RBAC already
/// keeps most of them from tenants; this holds whatever a role grants (a
/// self-service RoleBinding or NetworkPolicy writer, a Secret writer).
fn managed_objects() -> TenantPolicy {
    let rotate = crate::resources::secrets::ROTATE_NOW;
    // The one change tenants may make: ask for a rotation now.
    let annotations_but_rotate = |a: &str, b: &str| {
        format!(
            "(!has({a}.metadata.annotations) || {a}.metadata.annotations.all(k, k == '{rotate}' || (has({b}.metadata.annotations) && k in {b}.metadata.annotations && {b}.metadata.annotations[k] == {a}.metadata.annotations[k])))"
        )
    };
    let rotate_now = format!(
        "(request.operation == 'UPDATE' && request.resource.group == '' && request.resource.resource == 'secrets' && {} && {} && {} && {} && {} && {} && {} && {})",
        same_dyn("metadata.labels"),
        same_dyn("metadata.ownerReferences"),
        same_dyn("metadata.finalizers"),
        same_dyn("data"),
        same_dyn("type"),
        same_dyn("immutable"),
        annotations_but_rotate("object", "oldObject"),
        annotations_but_rotate("oldObject", "object"),
    );
    TenantPolicy {
        name_suffix: "managed-objects",
        why: format!(
            "Only Palisade's ServiceAccount changes or deletes objects labelled {MANAGED_BY}={MANAGED_BY_VALUE} in tenant namespaces (tenants may only annotate a rotated Secret {rotate})."
        ),
        resource_rules: vec![ResourceRule {
            api_groups: vec!["*".to_string()],
            api_versions: vec!["*".to_string()],
            operations: vec!["UPDATE".to_string(), "DELETE".to_string()],
            resources: vec!["*".to_string()],
            scope: "Namespaced".to_string(),
        }],
        match_conditions: vec![named(
            "palisade-object",
            format!(
                "has(oldObject.metadata) && has(oldObject.metadata.labels) && '{MANAGED_BY}' in oldObject.metadata.labels && oldObject.metadata.labels['{MANAGED_BY}'] == '{MANAGED_BY_VALUE}'"
            ),
        )],
        validations: vec![forbidden(
            format!("{} || {rotate_now}", privileged()),
            format!(
                "{}; change the Tenant or RolePolicy instead (a rotated Secret takes only the annotation {rotate})",
                managed_refusal()
            ),
        )],
    }
}

// --- Self-service (spec.selfService) ------------------------------------------------

/// Subjects that stand for everyone: never bound in a tenant namespace.
const PUBLIC_SUBJECTS: &[&str] = &[
    "system:authenticated",
    "system:unauthenticated",
    "system:anonymous",
    "system:serviceaccounts",
];

/// What tenants' own RoleBindings may say (RBAC lets owners write them only
/// with spec.selfService.roleBindings, and `bind` only the catalog Roles by
/// name; without this row they could still bind any role whose permissions
/// they hold, ClusterRoles included).
fn self_service_role_bindings() -> TenantPolicy {
    let prefix = crate::crd::role_policy::ROLE_NAME_PREFIX;
    let public = PUBLIC_SUBJECTS
        .iter()
        .map(|s| format!("'{s}'"))
        .collect::<Vec<_>>()
        .join(", ");
    let p = privileged();
    TenantPolicy {
        name_suffix: "self-service-role-bindings",
        why: format!(
            "Tenants' RoleBindings bind only the tenant's catalog Roles ({prefix}<role>), never everyone, and never under Palisade's names."
        ),
        resource_rules: vec![rule("rbac.authorization.k8s.io", &["rolebindings"], WRITE)],
        match_conditions: vec![],
        validations: vec![
            forbidden(
                format!(
                    "{p} || (object.roleRef.kind == 'Role' && object.roleRef.name.startsWith('{prefix}'))"
                ),
                format!(
                    "a tenant RoleBinding may bind only a catalog Role of the tenant ('{prefix}<role>', e.g. {prefix}viewer), not a ClusterRole or another Role (self-service: the Tenant's spec.selfService.roleBindings; roles: the RolePolicies)"
                ),
            ),
            forbidden(
                format!("{p} || !object.metadata.name.startsWith('{prefix}')"),
                format!(
                    "RoleBinding names starting with '{prefix}' are Palisade's: name yours otherwise"
                ),
            ),
            forbidden(
                format!(
                    "{p} || !has(object.subjects) || object.subjects.all(s, !(s.name in [{public}]))"
                ),
                format!(
                    "a tenant RoleBinding may not bind a subject that stands for everyone ({})",
                    PUBLIC_SUBJECTS.join(", ")
                ),
            ),
        ],
    }
}

/// What tenants' own NetworkPolicies may say (RBAC lets owners write them
/// only with spec.selfService.networkPolicies): not Palisade's names or label,
/// so they never pose as (or get pruned as) Palisade's.
fn self_service_network_policies() -> TenantPolicy {
    let p = privileged();
    TenantPolicy {
        name_suffix: "self-service-network-policies",
        why: "Tenants' NetworkPolicies add allows under their own names; Palisade's names and label stay Palisade's.".to_string(),
        resource_rules: vec![rule("networking.k8s.io", &["networkpolicies"], WRITE)],
        match_conditions: vec![],
        validations: vec![forbidden(
            format!(
                "{p} || (!object.metadata.name.startsWith('palisade-') && !(has(object.metadata.labels) && '{MANAGED_BY}' in object.metadata.labels && object.metadata.labels['{MANAGED_BY}'] == '{MANAGED_BY_VALUE}'))"
            ),
            format!(
                "NetworkPolicies named 'palisade-*' or labelled {MANAGED_BY}={MANAGED_BY_VALUE} are Palisade's: name and label yours otherwise (self-service: the Tenant's spec.selfService.networkPolicies)"
            ),
        )],
    }
}

// --- Owners' own namespaces (spec.maxNamespaces) ----------------------------
//
// RBAC cannot say "create namespaces, but only these": the owners' ClusterRole
// (`resources::rbac::owner_cluster_role`) grants `create` on namespaces, and
// this row narrows it with the authorizer, so the decision stays in RBAC
// (who owns which Tenant, whether it has room) and in the API server.

/// The label a namespace names its Tenant with, in CEL.
fn tenant_label() -> String {
    format!(
        "object.metadata.labels['{}']",
        crate::resources::labels::TENANT
    )
}

fn namespace_create() -> TenantPolicy {
    use crate::resources::labels::TENANT;
    use crate::resources::rbac::{CREATE_NAMESPACES_VERB, OWNER_MARKER_RESOURCE};
    let p = privileged();
    let labelled = format!("(has(object.metadata.labels) && '{TENANT}' in object.metadata.labels)");
    let tenant = format!(
        "authorizer.group('palisade.dev').resource('tenants').name({})",
        tenant_label()
    );
    TenantPolicy {
        name_suffix: "namespace-create",
        why: format!(
            "Tenant owners create namespaces only for their own Tenant (spec.maxNamespaces), labelled {TENANT}=<tenant> and named '<tenant>-...', while it has room."
        ),
        resource_rules: vec![ResourceRule {
            scope: "Cluster".to_string(),
            ..rule("", &["namespaces"], &["CREATE"])
        }],
        match_conditions: vec![],
        validations: vec![
            forbidden(
                format!(
                    "{p} || {labelled} || !authorizer.group('palisade.dev').resource('{OWNER_MARKER_RESOURCE}').check('create').allowed() || authorizer.group('').resource('namespaces').check('delete').allowed()"
                ),
                format!(
                    "Tenant owners create namespaces only for their Tenant: label the namespace {TENANT}=<tenant> and name it '<tenant>-<name>'"
                ),
            ),
            forbidden(
                format!("{p} || !{labelled} || {tenant}.check('get').allowed()"),
                format!(
                    "only an owner of the Tenant the label {TENANT} names (its spec.owners) may create a namespace for it"
                ),
            ),
            forbidden(
                format!(
                    "{p} || !{labelled} || {tenant}.check('{CREATE_NAMESPACES_VERB}').allowed()"
                ),
                "the Tenant has no room for another namespace: its spec.maxNamespaces is not set or is reached (status.namespaces lists them); delete one, or have an administrator raise maxNamespaces".to_string(),
            ),
            validation(
                format!(
                    "{p} || !{labelled} || object.metadata.name.startsWith({} + '-')",
                    tenant_label()
                ),
                "a namespace created for a Tenant is named '<tenant>-<name>' (the Tenant's name, a dash, then any name)".to_string(),
            ),
            validation(
                format!(
                    "{p} || !{labelled} || (object.metadata.labels.all(k, k in ['{TENANT}', 'kubernetes.io/metadata.name']) && (!has(object.metadata.annotations) || object.metadata.annotations.all(k, !k.startsWith('palisade.dev/'))))"
                ),
                format!(
                    "a namespace created for a Tenant carries only the label {TENANT} and no palisade.dev/ annotations: Palisade adds its labels (Pod Security, isolation settings) when it adopts it"
                ),
            ),
        ],
    }
}

/// Writes of the workload kinds with a pod template at `spec.template`.
fn workload_rules() -> Vec<ResourceRule> {
    vec![
        rule(
            "apps",
            &["deployments", "replicasets", "statefulsets", "daemonsets"],
            WRITE,
        ),
        rule("batch", &["jobs"], WRITE),
        rule("", &["replicationcontrollers"], WRITE),
    ]
}

/// Every tenant-namespace policy, in the order both manifests list them.
pub fn tenant_policies() -> Vec<TenantPolicy> {
    vec![
        backup_labels_pods(),
        backup_labels_ephemeral_containers(),
        backup_labels_template(
            "backup-labels-workloads",
            workload_rules(),
            "spec.template",
            "(request.resource.group == 'batch' && request.resource.resource == 'jobs' && request.userInfo.username == variables.operator)",
            "only Palisade's ServiceAccount may create a Job whose pod template carries it; no other workload may",
        ),
        backup_labels_template(
            "backup-labels-cronjobs",
            vec![rule("batch", &["cronjobs"], WRITE)],
            "spec.jobTemplate.spec.template",
            "false",
            "Palisade creates its backup Jobs itself; no CronJob's job template may carry it",
        ),
        backup_labels_template(
            "backup-labels-podtemplates",
            vec![rule("", &["podtemplates"], WRITE)],
            "template",
            "false",
            "no PodTemplate may carry it",
        ),
        images_row(
            "images-pods",
            vec![
                rule("", &["pods"], &["CREATE"]),
                rule("", &["pods/ephemeralcontainers"], &["UPDATE"]),
            ],
            "object.spec",
            None,
            "a Pod",
        ),
        images_row(
            "images-workloads",
            workload_rules(),
            "object.spec.template.spec",
            Some("spec.template"),
            "a workload's pod template",
        ),
        images_row(
            "images-cronjobs",
            vec![rule("batch", &["cronjobs"], WRITE)],
            "object.spec.jobTemplate.spec.template.spec",
            Some("spec.jobTemplate"),
            "a CronJob's pod template",
        ),
        images_row(
            "images-podtemplates",
            vec![rule("", &["podtemplates"], WRITE)],
            "object.template.spec",
            Some("template"),
            "a PodTemplate",
        ),
        service_types(),
        allowed_storage_classes(),
        allowed_ingress_classes(),
        managed_objects(),
        self_service_role_bindings(),
        self_service_network_policies(),
        namespace_create(),
    ]
}

/// A row as `charts/palisade/files/rbac.json` holds it: the chart adds the
/// operator variable to `spec` and names the objects.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JsonTenantPolicy {
    name_suffix: &'static str,
    why: String,
    spec: Value,
}

pub fn json_rows() -> Vec<JsonTenantPolicy> {
    tenant_policies()
        .into_iter()
        .map(|p| JsonTenantPolicy {
            name_suffix: p.name_suffix,
            spec: p.spec(),
            why: p.why,
        })
        .collect()
}

/// The policies and bindings as YAML documents (each starting with `---`
/// and the policy's `why` as a comment), for the operator's username `operator`.
pub fn to_yaml(prefix: &str, operator: &str) -> String {
    let mut out = String::new();
    for p in tenant_policies() {
        out.push_str(&format!("---\n# {}\n", p.why));
        let [policy, binding] = p.objects(prefix, operator);
        out.push_str(&serde_yaml::to_string(&policy).unwrap_or_default());
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&binding).unwrap_or_default());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn backup_rows() -> Vec<TenantPolicy> {
        tenant_policies()
            .into_iter()
            .filter(|p| p.name_suffix.starts_with("backup-labels-"))
            .collect()
    }

    fn by_suffix(suffix: &str) -> TenantPolicy {
        tenant_policies()
            .into_iter()
            .find(|p| p.name_suffix == suffix)
            .expect("policy")
    }

    /// The CEL expression of validation `i` of the policy named by `suffix`.
    fn expression(suffix: &str, i: usize) -> String {
        by_suffix(suffix).validations[i].expression.clone()
    }

    fn resources(p: &TenantPolicy) -> Vec<(String, String)> {
        p.resource_rules
            .iter()
            .flat_map(|r| {
                r.api_groups
                    .iter()
                    .flat_map(move |g| r.resources.iter().map(move |res| (g.clone(), res.clone())))
            })
            .collect()
    }

    /// Pods and every built-in kind with a pod template are covered, each by
    /// exactly one policy, on create and update; of the subresources only
    /// `pods/ephemeralcontainers` (the kubelet's status writes must never
    /// meet these policies).
    #[test]
    fn pods_and_every_pod_template_kind_are_matched_once() {
        let mut all: Vec<(String, String)> = backup_rows().iter().flat_map(resources).collect();
        all.sort();
        let mut want: Vec<(String, String)> = [
            ("", "pods"),
            ("", "pods/ephemeralcontainers"),
            ("", "podtemplates"),
            ("", "replicationcontrollers"),
            ("apps", "daemonsets"),
            ("apps", "deployments"),
            ("apps", "replicasets"),
            ("apps", "statefulsets"),
            ("batch", "cronjobs"),
            ("batch", "jobs"),
        ]
        .iter()
        .map(|(g, r)| (g.to_string(), r.to_string()))
        .collect();
        want.sort();
        assert_eq!(all, want);
        // The image rows cover the same kinds (pods on create only: a pod's
        // images cannot change, and pods from before the policy stay editable).
        let mut images: Vec<(String, String)> = tenant_policies()
            .iter()
            .filter(|p| p.name_suffix.starts_with("images-"))
            .flat_map(resources)
            .collect();
        images.sort();
        assert_eq!(images, want);
        for p in backup_rows() {
            for r in &p.resource_rules {
                let ops = if r.resources == ["pods/ephemeralcontainers"] {
                    vec!["UPDATE"]
                } else {
                    vec!["CREATE", "UPDATE"]
                };
                assert_eq!(r.operations, ops, "{}", p.name_suffix);
                assert_eq!(r.api_versions, ["v1"]);
                assert_eq!(r.scope, "Namespaced");
            }
        }
    }

    /// The shape the API server gets: tenant namespaces only, fail closed,
    /// the operator variable, every message naming the label and why.
    #[test]
    fn policies_match_tenant_namespaces_fail_closed_and_explain() {
        let refusal = backup_label_refusal();
        assert_eq!(
            refusal,
            "only Palisade's backup Jobs may label pods palisade.dev/backup-schedule: the label opens the backup egress policy"
        );
        for p in tenant_policies() {
            let [policy, binding] = p.objects("palisade", "system:serviceaccount:ns:sa");
            let backup = p.name_suffix.starts_with("backup-labels-");
            let name = format!("palisade-{}", p.name_suffix);
            assert_eq!(policy["metadata"]["name"], name);
            let spec = &policy["spec"];
            assert_eq!(spec["failurePolicy"], "Fail");
            // Rows over tenant namespaces match only them; the one over new
            // namespaces (cluster-scoped) matches every such request.
            let cluster = p.resource_rules.iter().all(|r| r.scope == "Cluster");
            assert_eq!(cluster, p.name_suffix == "namespace-create");
            assert_eq!(
                spec["matchConstraints"]["namespaceSelector"],
                if cluster {
                    Value::Null
                } else {
                    json!({"matchLabels": {"app.kubernetes.io/managed-by": "palisade"}})
                }
            );
            assert_eq!(
                spec["variables"],
                json!([{"name": "operator", "expression": "'system:serviceaccount:ns:sa'"}])
            );
            let validations = spec["validations"].as_array().expect("validations");
            assert!(!validations.is_empty());
            for v in validations.iter().filter(|_| backup) {
                let message = v["message"].as_str().expect("message");
                assert!(message.starts_with(&refusal), "{message}");
                // Field paths live in the validations (type-checked), not in variables.
                let expression = v["expression"].as_str().expect("expression");
                assert!(expression.contains("in object."), "{expression}");
                assert!(
                    !expression.contains("variables.") || expression.contains("variables.operator")
                );
            }
            assert_eq!(binding["kind"], "ValidatingAdmissionPolicyBinding");
            assert_eq!(binding["spec"]["policyName"], name);
            assert_eq!(binding["spec"]["validationActions"], json!(["Deny"]));
        }
    }

    /// The label the policies guard is the one the backup egress policy
    /// selects pods by, and Palisade's Job template carries it.
    #[test]
    fn the_guarded_label_is_the_egress_selector() {
        let bs: crate::crd::BackupSchedule = serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "orders", "namespace": "acme", "uid": "u1"},
            "spec": {"schedule": "0 3 * * *",
                     "postgres": {"host": "db.example.com", "database": "d", "user": "u"},
                     "destination": {"s3": {"bucket": "b"}}}
        }))
        .expect("schedule");
        let np = crate::resources::backup_network::egress_policy(&bs);
        let selector = np
            .spec
            .and_then(|s| s.pod_selector)
            .and_then(|s| s.match_labels)
            .expect("selector");
        // Anyone may set the other selector label (managed-by): the guarded one
        // is what makes the selection Palisade's.
        assert!(selector.contains_key(SCHEDULE_LABEL), "{selector:?}");
        for p in backup_rows() {
            assert!(
                p.validations[0]
                    .expression
                    .contains(&format!("'{SCHEDULE_LABEL}' in object.")),
                "{}",
                p.validations[0].expression
            );
        }
    }

    #[test]
    fn who_may_set_the_label() {
        let pods = by_suffix("backup-labels-pods");
        let first = &pods.validations[0].expression;
        assert!(first.starts_with(
            "!(has(object.metadata) && has(object.metadata.labels) && 'palisade.dev/backup-schedule' in object.metadata.labels) || "
        ), "{first}");
        for user in JOB_CONTROLLER_USERS {
            assert!(first.contains(&format!("'{user}'")), "{first}");
        }
        assert!(first.contains("r.kind == 'Job'") && first.contains("r.controller"));
        assert!(first.contains("oldObject.metadata.labels['palisade.dev/backup-schedule'] == object.metadata.labels['palisade.dev/backup-schedule']"));
        let images = &pods.validations[1].expression;
        assert!(images.contains("o.image == c.image") && images.contains("initContainers"));
        let workloads = by_suffix("backup-labels-workloads");
        let v = &workloads.validations[0].expression;
        assert!(v.contains("request.userInfo.username == variables.operator"));
        assert!(v.contains("request.resource.resource == 'jobs'"));
        assert!(
            v.contains("'palisade.dev/backup-schedule' in object.spec.template.metadata.labels")
        );
        for never in ["backup-labels-cronjobs", "backup-labels-podtemplates"] {
            assert!(expression(never, 0).ends_with(" || false"));
        }
        assert!(
            expression("backup-labels-cronjobs", 0)
                .contains("in object.spec.jobTemplate.spec.template.metadata.labels")
        );
        assert!(
            expression("backup-labels-podtemplates", 0)
                .contains("in object.template.metadata.labels")
        );
        assert_eq!(
            expression("backup-labels-ephemeral-containers", 0),
            "!(has(object.metadata) && has(object.metadata.labels) && 'palisade.dev/backup-schedule' in object.metadata.labels)"
        );
    }

    #[test]
    fn yaml_has_a_policy_and_a_binding_per_row() {
        let yaml = to_yaml("palisade", "system:serviceaccount:ns:sa");
        let docs: Vec<Value> = serde_yaml::Deserializer::from_str(&yaml)
            .map(|d| serde::Deserialize::deserialize(d).expect("yaml"))
            .collect();
        let rows = tenant_policies();
        assert_eq!(docs.len(), 2 * rows.len());
        for (pair, row) in docs.chunks(2).zip(&rows) {
            assert_eq!(
                pair.to_vec(),
                row.objects("palisade", "system:serviceaccount:ns:sa")
                    .to_vec()
            );
        }
    }

    /// Every refusal of a Tenant setting names the Tenant field that allows
    /// it, and reads the label or annotation Palisade writes for that field.
    #[test]
    fn tenant_settings_name_their_field_and_read_their_namespace_key() {
        use crate::resources::admission::*;
        let cases: &[(&str, usize, &str, &str)] = &[
            (
                "service-types",
                0,
                "spec.services.allowNodePort",
                ALLOW_NODE_PORT,
            ),
            (
                "service-types",
                1,
                "spec.services.allowLoadBalancer",
                ALLOW_LOAD_BALANCER,
            ),
            (
                "images-pods",
                0,
                "spec.images.allowAnyPullPolicy",
                ALLOW_ANY_PULL_POLICY,
            ),
            (
                "images-pods",
                1,
                "spec.images.allowedRegistries",
                ALLOWED_REGISTRIES,
            ),
            (
                "allowed-storage-classes",
                0,
                "spec.allowedClasses.storage",
                ALLOWED_STORAGE_CLASSES,
            ),
            (
                "allowed-ingress-classes",
                0,
                "spec.allowedClasses.ingress",
                ALLOWED_INGRESS_CLASSES,
            ),
        ];
        for (suffix, i, field, key) in cases {
            let v = &by_suffix(suffix).validations[*i];
            assert!(v.message.contains(field), "{suffix}: {}", v.message);
            assert!(
                v.expression
                    .contains(&format!("'{key}' in namespaceObject.metadata.")),
                "{suffix}: {}",
                v.expression
            );
        }
        let pods = by_suffix("images-pods");
        for c in ["containers", "initContainers", "ephemeralContainers"] {
            assert!(
                pods.validations[0].expression.contains(&format!("object.spec.{c}.all(c, has(c.imagePullPolicy) && c.imagePullPolicy == 'Always')")),
                "{c}"
            );
        }
        assert!(
            pods.validations[1]
                .expression
                .contains("c.image.startsWith(r + '/')")
        );
        // Templates: only a changed template is checked on update.
        assert!(
            expression("images-workloads", 0)
                .starts_with("request.userInfo.username == variables.operator || (request.operation == 'UPDATE' && object.spec.template == oldObject.spec.template) || ")
        );
    }

    /// Palisade's objects: every namespaced kind, update and delete, whoever
    /// asks but the operator and the cluster's own components; refused as
    /// Forbidden (403, what MTB expects).
    #[test]
    fn palisades_objects_are_palisades() {
        let p = by_suffix("managed-objects");
        let r = &p.resource_rules[0];
        assert_eq!(
            (
                r.api_groups.clone(),
                r.resources.clone(),
                r.operations.clone()
            ),
            (
                vec!["*".to_string()],
                vec!["*".to_string()],
                vec!["UPDATE".to_string(), "DELETE".to_string()]
            )
        );
        assert!(
            p.match_conditions[0].expression.contains(
                "oldObject.metadata.labels['app.kubernetes.io/managed-by'] == 'palisade'"
            )
        );
        let v = &p.validations[0];
        assert_eq!(v.reason, Some("Forbidden"));
        assert!(v.message.starts_with(&managed_refusal()), "{}", v.message);
        assert!(
            v.expression
                .starts_with("request.userInfo.username == variables.operator || ")
        );
        assert!(v.expression.contains("'system:masters'"));
        assert!(v.expression.contains("k == 'palisade.dev/rotate-now'"));
        let spec = p.spec();
        assert_eq!(spec["validations"][0]["reason"], "Forbidden");
        assert!(
            by_suffix("service-types").spec()["validations"][0]
                .get("reason")
                .is_none()
        );
    }

    #[test]
    fn self_service_bindings_reach_only_catalog_roles() {
        let p = by_suffix("self-service-role-bindings");
        assert!(p.validations[0].expression.ends_with(
            "(object.roleRef.kind == 'Role' && object.roleRef.name.startsWith('palisade:'))"
        ));
        assert!(
            p.validations[2]
                .expression
                .contains("'system:authenticated'")
        );
        assert!(p.validations.iter().all(|v| v.reason == Some("Forbidden")));
        let np = by_suffix("self-service-network-policies");
        assert!(
            np.validations[0]
                .expression
                .contains("startsWith('palisade-')")
        );
        assert!(
            crate::resources::network::DEFAULT_DENY.starts_with("palisade-"),
            "Palisade's policy names are the ones refused"
        );
    }
}
