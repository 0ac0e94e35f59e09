//! `RolePolicy`: one role catalog compiled to RBAC in every selected tenant
//! namespace and to scoped application tokens.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
#[allow(unused_imports)] // used inside the KubeSchema attributes
use kube::core::{ListMerge, Message, Rule};
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;
use super::tenant::SubjectKind;

/// Role names Palisade uses for its own RBAC in every tenant namespace (the
/// operator's RoleBinding `palisade:operator`): a RolePolicy may neither define
/// nor bind them. Refused at admission (a CEL rule on the names) and by
/// validation (`ReservedRoleName`), for render, diff and older objects.
pub const RESERVED_ROLE_NAMES: &[&str] = &["operator", "namespace-owner"];

/// Role `r` of a RolePolicy becomes the Role and RoleBinding
/// `palisade:<r>` in each tenant namespace.
pub const ROLE_NAME_PREFIX: &str = "palisade:";

/// The CEL rule refusing [`RESERVED_ROLE_NAMES`] on a role name.
fn not_reserved() -> Rule {
    let names: Vec<String> = RESERVED_ROLE_NAMES
        .iter()
        .map(|n| format!("'{n}'"))
        .collect();
    let own: Vec<String> = RESERVED_ROLE_NAMES
        .iter()
        .map(|n| format!("{ROLE_NAME_PREFIX}{n}"))
        .collect();
    Rule::new(format!("!(self in [{}])", names.join(", "))).message(Message::Message(format!(
        "reserved role name: Palisade uses {} for its own RBAC in every tenant namespace; choose another name",
        own.join(", ")
    )))
}

#[allow(clippy::duplicated_attributes)] // printcolumn(type_ = ...) repeats by design
/// A RolePolicy: roles built from Palisade's permission catalog (and raw rules),
/// bound to subjects in every namespace of the selected tenants.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "RolePolicy",
    shortname = "rp",
    category = "palisade",
    status = "RolePolicyStatus",
    printcolumn(
        name = "Valid",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Valid\")].status",
        description = "Whether the policy passed least-privilege validation"
    ),
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status",
        description = "Whether the policy is applied to every selected tenant"
    ),
    printcolumn(
        name = "Tenants",
        type_ = "integer",
        json_path = ".status.tenantCount",
        description = "Number of tenants the policy applies to"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.tenantSelector) && size(self.tenants) > 0)").message("use either tenantSelector or tenants, not both"))]
pub struct RolePolicySpec {
    /// Tenants selected by their labels. An empty selector selects every tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant_selector: Option<LabelSelector>,
    /// Tenants selected by name.
    #[serde(default)]
    pub tenants: Vec<String>,
    /// Role definitions: custom roles, or extensions of the built-in roles (admin,
    /// editor, viewer, auditor, backup-operator).
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 128))]
    pub roles: Vec<RoleDefinition>,
    /// Who gets which role in every namespace of every selected tenant.
    #[serde(default)]
    #[schemars(length(max = 128))]
    pub bindings: Vec<RoleBindingSpec>,
    /// Accept raw rules beyond the allowlist of namespaced resources Palisade
    /// knows to be safe for a tenant: wildcards, escalate, bind, impersonate and
    /// other special verbs (use, approve, mis-cased verbs), cluster-scoped or
    /// custom resources, serviceaccounts/token, changing or deleting Events,
    /// writes on the kinds Palisade manages (NetworkPolicies, ResourceQuotas,
    /// LimitRanges, Roles, RoleBindings) and on palisade.dev. Off by default;
    /// turn on only for a reviewed break-glass policy. Reserved role names stay
    /// refused.
    #[serde(default)]
    pub allow_privileged: bool,
}

/// A role: named permissions from the catalog, raw rules and application scopes.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RoleDefinition {
    /// Role name; becomes the Role 'palisade:<name>' in each tenant namespace.
    /// 'operator' is reserved (Palisade's own RoleBinding 'palisade:operator').
    #[x_kube(validation = not_reserved())]
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Named permissions from Palisade's catalog (see 'palisade permissions'),
    /// e.g. workloads:read, config:write, backups:run.
    #[serde(default)]
    pub permissions: Vec<String>,
    /// Raw Kubernetes PolicyRules for needs the catalog does not cover. Without
    /// allowPrivileged, each rule may grant only RBAC's lowercase resource verbs
    /// on namespaced resources Palisade knows to be safe (see allowPrivileged).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rules: Vec<PolicyRule>,
    /// Application scopes (e.g. vault:read, validator:run) written into the scope
    /// claim of tokens Palisade issues for this role.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes: Vec<String>,
}

/// A Kubernetes RBAC PolicyRule (namespaced resources only).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PolicyRule {
    /// API groups ('' for the core group).
    #[serde(default)]
    pub api_groups: Vec<String>,
    /// Resources (may include subresources, e.g. pods/log).
    #[serde(default)]
    pub resources: Vec<String>,
    /// Resource names the rule is restricted to; all when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_names: Vec<String>,
    /// Verbs (get, list, watch, create, update, patch, delete, deletecollection).
    #[schemars(length(min = 1))]
    pub verbs: Vec<String>,
}

/// Binds a role to subjects in every namespace of every selected tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.token) || self.subjects.all(s, s.kind == 'ServiceAccount')").message("token can only be requested for ServiceAccount subjects"))]
pub struct RoleBindingSpec {
    /// Role name: a built-in role or one defined in spec.roles ('operator' is
    /// reserved).
    #[x_kube(validation = not_reserved())]
    #[schemars(length(min = 1, max = 63))]
    pub role: String,
    /// Users, groups or service accounts. A ServiceAccount without a namespace
    /// means the one of that name in each tenant namespace.
    #[schemars(length(min = 1, max = 64))]
    pub subjects: Vec<Subject>,
    /// Issue a short-lived JWT for each ServiceAccount subject, signed with the
    /// tenant's JwtSigningKey, into the Secret '<serviceaccount>-palisade-token'.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token: Option<TokenSpec>,
}

/// An RBAC subject.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
pub struct Subject {
    /// User, Group or ServiceAccount.
    pub kind: SubjectKind,
    /// Subject name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a ServiceAccount; defaults to each tenant namespace in turn.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// An application token request.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TokenSpec {
    /// Token lifetime (max 24h). Default 15m. Re-issued at 2/3 of its lifetime.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub ttl: Option<String>,
    /// The aud claim; defaults to the tenant name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub audience: Option<String>,
    /// Name of the tenant JwtSigningKey secret to sign with; defaults to the
    /// tenant's only JwtSigningKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signing_key: Option<String>,
}

/// Observed state of a RolePolicy.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct RolePolicyStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready and Valid.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Number of tenants selected (printer column).
    #[serde(default)]
    pub tenant_count: u32,
    /// The last spec that passed validation, as JSON. While the current spec is
    /// invalid, this is what stays applied (nothing from an invalid spec is).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_valid_spec: Option<String>,
    /// Roles and bindings applied, per tenant.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["tenant".into()]))]
    pub tenants: Vec<TenantBindingStatus>,
}

/// What a RolePolicy applied to one tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantBindingStatus {
    /// Tenant name.
    pub tenant: String,
    /// Roles applied in each tenant namespace.
    pub roles: u32,
    /// RoleBindings applied in each tenant namespace.
    pub bindings: u32,
}
