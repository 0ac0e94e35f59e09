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

/// A rule and the message of its refusal.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Validation {
    pub expression: String,
    pub message: String,
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
        }],
    }
}

/// Every tenant-namespace policy, in the order both manifests list them.
pub fn tenant_policies() -> Vec<TenantPolicy> {
    vec![
        backup_labels_pods(),
        backup_labels_ephemeral_containers(),
        backup_labels_template(
            "backup-labels-workloads",
            vec![
                rule(
                    "apps",
                    &["deployments", "replicasets", "statefulsets", "daemonsets"],
                    WRITE,
                ),
                rule("batch", &["jobs"], WRITE),
                rule("", &["replicationcontrollers"], WRITE),
            ],
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

    fn by_suffix(suffix: &str) -> TenantPolicy {
        tenant_policies()
            .into_iter()
            .find(|p| p.name_suffix == suffix)
            .expect("policy")
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
        let mut all: Vec<(String, String)> = tenant_policies().iter().flat_map(resources).collect();
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
        for p in tenant_policies() {
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
            let name = format!("palisade-{}", p.name_suffix);
            assert_eq!(policy["metadata"]["name"], name);
            let spec = &policy["spec"];
            assert_eq!(spec["failurePolicy"], "Fail");
            assert_eq!(
                spec["matchConstraints"]["namespaceSelector"],
                json!({"matchLabels": {"app.kubernetes.io/managed-by": "palisade"}})
            );
            assert_eq!(
                spec["variables"],
                json!([{"name": "operator", "expression": "'system:serviceaccount:ns:sa'"}])
            );
            let validations = spec["validations"].as_array().expect("validations");
            assert!(!validations.is_empty());
            for v in validations {
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
        for p in tenant_policies() {
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
            assert!(
                by_suffix(never).validations[0]
                    .expression
                    .ends_with(" || false")
            );
        }
        assert!(
            by_suffix("backup-labels-cronjobs").validations[0]
                .expression
                .contains("in object.spec.jobTemplate.spec.template.metadata.labels")
        );
        assert!(
            by_suffix("backup-labels-podtemplates").validations[0]
                .expression
                .contains("in object.template.metadata.labels")
        );
        assert_eq!(
            by_suffix("backup-labels-ephemeral-containers").validations[0].expression,
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
}
