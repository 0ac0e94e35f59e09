//! `Tenant`: one customer or team, reconciled into isolated, protected namespaces.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, Time};
#[allow(unused_imports)] // used inside the KubeSchema attributes
use kube::core::{ListMerge, Rule};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::Condition;

/// What a Tenant's name must look like: a DNS label (it becomes a label value
/// and the prefix of the tenant's namespaces).
pub const NAME_PATTERN: &str = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

/// A Tenant: the namespaces of one customer or team, and everything that isolates
/// and protects them (Pod Security, default-deny networking, quotas, limits, owner
/// RBAC, rotated secrets, TTL garbage collection).
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "Tenant",
    shortname = "tn",
    category = "palisade",
    status = "TenantStatus",
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status", description = "Whether every part of the tenant is in place"),
    printcolumn(name = "Reason", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].reason", priority = 1, description = "Why the tenant is (not) ready"),
    printcolumn(name = "Namespaces", type_ = "integer", json_path = ".status.namespaceCount", description = "Number of namespaces the tenant owns"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    validation = Rule::new("!self.spec.forceTenantPrefix || self.spec.namespaces.all(n, n.name.startsWith(self.metadata.name + '-'))").message("spec.forceTenantPrefix is set: every namespace name must start with '<tenant name>-'")
)]
#[serde(rename_all = "camelCase")]
pub struct TenantSpec {
    /// Namespaces that belong to this tenant. Palisade creates them, labels them
    /// and keeps every isolation object inside them. A namespace removed from this
    /// list is deleted or released according to deletionPolicy.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 256))]
    pub namespaces: Vec<TenantNamespace>,

    /// Require every namespace name to start with '<tenant>-'. Recommended on
    /// shared clusters so tenants cannot claim each other's names.
    #[serde(default)]
    pub force_tenant_prefix: bool,

    /// Owner self-service namespaces: when set, the tenant's owners may create
    /// namespaces themselves (`kubectl create namespace <tenant>-<name>` with
    /// the label palisade.dev/tenant=<tenant>), up to this many namespaces in
    /// all (spec.namespaces included). Palisade adopts each within seconds
    /// (isolation, quota share, RoleBindings) and lists it in status; owners
    /// may delete the namespaces they created. Unset: only spec.namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 256))]
    pub max_namespaces: Option<u32>,

    /// Pod Security Standard enforced (and warned and audited) in every tenant
    /// namespace. Default: restricted.
    #[serde(default)]
    pub pod_security: PodSecurityLevel,

    /// Network isolation. Every tenant namespace always gets default-deny ingress
    /// and egress policies; the fields here open what the tenant needs, by intent.
    #[serde(default)]
    pub network: NetworkSpec,

    /// Storage and compute quota, as a ResourceQuota in every tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaSpec>,

    /// Container limits, as a LimitRange in every tenant namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limits: Option<LimitsSpec>,

    /// Users, groups and service accounts bound to the built-in 'admin' role in
    /// every tenant namespace.
    #[serde(default)]
    #[schemars(length(max = 64))]
    pub owners: Vec<Owner>,

    /// Secrets Palisade generates and rotates in the tenant's namespaces.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 64))]
    pub secrets: Vec<ManagedSecret>,

    /// TTL garbage collection of old objects in the tenant's namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_collection: Option<GarbageCollectionSpec>,

    /// What happens to the namespaces when the Tenant is deleted or a namespace
    /// is removed from spec.namespaces. Delete: the namespaces are deleted, and
    /// everything in them with them. Retain (default): the namespaces are kept
    /// (labelled palisade.dev/released=true); Palisade's policy objects
    /// (NetworkPolicies, ResourceQuota, LimitRange, Roles, RoleBindings) are
    /// removed; the Secrets and JWKS ConfigMaps it generated stay with their
    /// values, labelled palisade.dev/released=true and no longer rotated (the same
    /// Tenant listing the namespace again adopts them back).
    #[serde(default)]
    pub deletion_policy: DeletionPolicy,

    /// Freeze the tenant without deleting anything: new pods are refused (quota
    /// pods: 0) and secrets are not rotated. Existing pods keep running.
    #[serde(default)]
    pub cordoned: bool,

    /// Service types beyond ClusterIP. NodePort and LoadBalancer Services are
    /// refused in the tenant's namespaces unless allowed here.
    #[serde(default, skip_serializing_if = "is_default")]
    pub services: ServicesSpec,

    /// Container images: imagePullPolicy Always is required on every container
    /// (init and ephemeral too) unless allowAnyPullPolicy is set, and images may
    /// be restricted to a list of registries.
    #[serde(default, skip_serializing_if = "is_default")]
    pub images: ImagesSpec,

    /// StorageClasses and IngressClasses the tenant may use (every class when a
    /// list is empty).
    #[serde(default, skip_serializing_if = "is_default")]
    pub allowed_classes: AllowedClassesSpec,

    /// What the tenant's owners may manage themselves in the tenant's namespaces
    /// (off by default: Palisade manages NetworkPolicies and RoleBindings).
    #[serde(default, skip_serializing_if = "is_default")]
    pub self_service: SelfServiceSpec,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// Service types the tenant may create. Enforced in the API server by the
/// ValidatingAdmissionPolicy `palisade-service-types`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ServicesSpec {
    /// Allow Services of type NodePort (a port on every node, which no
    /// NetworkPolicy guards and tenants would compete for).
    #[serde(default)]
    pub allow_node_port: bool,
    /// Allow Services of type LoadBalancer (which also open node ports unless
    /// allocateLoadBalancerNodePorts is false).
    #[serde(default)]
    pub allow_load_balancer: bool,
}

/// Container image rules. Enforced in the API server by the
/// ValidatingAdmissionPolicies `palisade-image-pull-policy` and
/// `palisade-image-registries`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct ImagesSpec {
    /// Accept any imagePullPolicy. By default every container (init and
    /// ephemeral containers too, and pod templates) must say imagePullPolicy:
    /// Always, so a private image cached on a node is pulled again with the
    /// credentials of whoever runs it, never reused by another tenant.
    #[serde(default)]
    pub allow_any_pull_policy: bool,
    /// Registries images must come from, as '<host>[:port][/path]' (e.g.
    /// registry.example.com, ghcr.io/acme). An image is allowed when it starts
    /// with '<entry>/'; write images fully qualified (docker.io/library/nginx,
    /// not nginx). Every registry when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(inner(
        length(min = 1, max = 253),
        regex(
            pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?(:[0-9]{1,5})?(/[a-z0-9]([-a-z0-9._]*[a-z0-9])?)*$"
        )
    ))]
    pub allowed_registries: Vec<String>,
}

/// Classes the tenant may use. Enforced in the API server by the
/// ValidatingAdmissionPolicy `palisade-allowed-classes`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct AllowedClassesSpec {
    /// StorageClasses PersistentVolumeClaims may name (storageClassName). When
    /// set, a claim must name one of them. Every class when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(inner(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ))]
    pub storage: Vec<String>,
    /// IngressClasses Ingresses may name (ingressClassName). When set, an
    /// Ingress must name one of them. Every class when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 32))]
    #[schemars(inner(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    ))]
    pub ingress: Vec<String>,
}

/// Self-service for the tenant's owners (the subjects of spec.owners).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SelfServiceSpec {
    /// Owners may create, change and delete their own NetworkPolicies (to add
    /// allows). Palisade's policies, default-deny included, stay Palisade's:
    /// nobody else may change or delete them.
    #[serde(default)]
    pub network_policies: bool,
    /// Owners may create, change and delete RoleBindings to the tenant's
    /// catalog roles (the Roles 'palisade:<role>' Palisade writes), and to
    /// nothing else. Roles stay Palisade's.
    #[serde(default)]
    pub role_bindings: bool,
}

/// One tenant namespace.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantNamespace {
    /// Namespace name (a DNS-1123 label).
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Extra labels for the namespace. Labels under palisade.dev/ and
    /// pod-security.kubernetes.io/ are reserved and rejected.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Extra annotations for the namespace.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub annotations: BTreeMap<String, String>,
    /// Created by an owner (spec.maxNamespaces) and adopted, not listed in
    /// the spec: never read from or written to the API (see
    /// `resources::tenant::with_owner_namespaces`).
    #[serde(skip)]
    #[schemars(skip)]
    pub created_by_owner: bool,
}

/// A Pod Security Standard level.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PodSecurityLevel {
    #[default]
    Restricted,
    Baseline,
    Privileged,
}

impl PodSecurityLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            PodSecurityLevel::Restricted => "restricted",
            PodSecurityLevel::Baseline => "baseline",
            PodSecurityLevel::Privileged => "privileged",
        }
    }
}

/// Network intents. Each intent that is on becomes one NetworkPolicy named after it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("(has(self.allowUnrestricted) && self.allowUnrestricted) || !has(self.allowFromNamespaces) || self.allowFromNamespaces.all(s, (has(s.matchLabels) && size(s.matchLabels) > 0) || (has(s.matchExpressions) && size(s.matchExpressions) > 0))").message("an empty allowFromNamespaces selector admits every namespace of the cluster: set allowUnrestricted: true if that is intended"))]
#[x_kube(validation = Rule::new("(has(self.allowUnrestricted) && self.allowUnrestricted) || !has(self.allowEgressCidrs) || self.allowEgressCidrs.all(c, !(c.cidr in ['0.0.0.0/0', '::/0']))").message("an allowEgressCidrs entry of 0.0.0.0/0 or ::/0 opens every address, private ranges included: use allowInternetEgress, or set allowUnrestricted: true if that is intended"))]
pub struct NetworkSpec {
    /// Allow traffic between all namespaces of this tenant (ingress from and egress
    /// to pods in the tenant's namespaces). Default: true.
    #[serde(default = "yes")]
    pub allow_intra_tenant: bool,
    /// Allow DNS lookups (UDP and TCP 53) to kube-dns in kube-system. Default: true.
    #[serde(default = "yes")]
    pub allow_dns: bool,
    /// Allow ingress from namespaces matching any of these selectors (for example
    /// the ingress controller's or the monitoring namespace).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub allow_from_namespaces: Vec<LabelSelector>,
    /// Allow egress to these CIDRs (for example a managed database or object store).
    #[serde(default)]
    #[schemars(length(max = 32))]
    pub allow_egress_cidrs: Vec<EgressCidr>,
    /// Allow egress to the public internet (0.0.0.0/0 and ::/0 except the private
    /// ranges 10/8, 172.16/12, 192.168/16, fc00::/7, so cluster-internal traffic
    /// stays denied).
    #[serde(default)]
    pub allow_internet_egress: bool,
    /// Accept the intents that open the tenant to everything: an
    /// allowFromNamespaces selector that matches every namespace (`{}`), and
    /// allowEgressCidrs of 0.0.0.0/0 or ::/0 (every address, the cluster's
    /// private ranges included, which allowInternetEgress keeps closed). Off by
    /// default: without it such a spec is refused (Ready=False, UnrestrictedPeer).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_unrestricted: bool,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        Self {
            allow_intra_tenant: true,
            allow_dns: true,
            allow_from_namespaces: Vec::new(),
            allow_egress_cidrs: Vec::new(),
            allow_internet_egress: false,
            allow_unrestricted: false,
        }
    }
}

fn yes() -> bool {
    true
}

/// An egress destination by CIDR, optionally restricted to ports.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct EgressCidr {
    /// Destination in CIDR notation, IPv4 or IPv6 (e.g. 10.20.0.0/16).
    #[schemars(length(min = 3, max = 43))]
    pub cidr: String,
    /// Sub-ranges of cidr that stay denied.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub except: Vec<String>,
    /// TCP ports allowed to that destination; all ports when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

/// Quota scope.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum QuotaScope {
    /// hard applies to each namespace on its own.
    #[default]
    Namespace,
    /// hard is a budget for the whole tenant: Palisade spreads the unused headroom
    /// over the namespaces and reports aggregate usage in status.
    Tenant,
}

/// Storage and compute quota.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaSpec {
    /// Whether hard limits are per namespace (default) or a budget for the tenant.
    #[serde(default)]
    pub scope: QuotaScope,
    /// Hard limits, as in ResourceQuota.spec.hard (e.g. requests.cpu: "4",
    /// limits.memory: 16Gi, pods: "50", requests.storage: 100Gi,
    /// persistentvolumeclaims: "10"). Values must not be negative.
    #[serde(default)]
    pub hard: BTreeMap<String, Quantity>,
    /// Per-StorageClass limits (become
    /// <class>.storageclass.storage.k8s.io/requests.storage and
    /// .../persistentvolumeclaims).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["storageClass".into()]))]
    pub storage_classes: Vec<StorageClassQuota>,
}

/// Quota for one StorageClass.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct StorageClassQuota {
    /// StorageClass name.
    #[schemars(length(min = 1, max = 253))]
    pub storage_class: String,
    /// Total storage requested by PVCs of this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub requests_storage: Option<Quantity>,
    /// Number of PVCs of this class.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub persistentvolumeclaims: Option<Quantity>,
}

/// Container defaults and bounds (a LimitRange of type Container).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct LimitsSpec {
    /// Default limits for containers that set none (e.g. cpu: 500m, memory: 512Mi).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default: BTreeMap<String, Quantity>,
    /// Default requests for containers that set none.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub default_request: BTreeMap<String, Quantity>,
    /// Maximum a container may ask for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub max: BTreeMap<String, Quantity>,
    /// Minimum a container must ask for.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub min: BTreeMap<String, Quantity>,
}

/// A tenant owner, bound to the built-in admin role in every tenant namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.kind == 'ServiceAccount' ? has(self.namespace) : !has(self.namespace)").message("namespace is required for ServiceAccount owners and not allowed otherwise"))]
pub struct Owner {
    /// User, Group or ServiceAccount.
    pub kind: SubjectKind,
    /// The user, group or service account name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    /// Namespace of a ServiceAccount owner.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// Kind of an RBAC subject.
#[derive(
    JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord,
)]
pub enum SubjectKind {
    User,
    Group,
    ServiceAccount,
}

impl SubjectKind {
    pub fn as_str(self) -> &'static str {
        match self {
            SubjectKind::User => "User",
            SubjectKind::Group => "Group",
            SubjectKind::ServiceAccount => "ServiceAccount",
        }
    }
}

/// A Secret Palisade generates and rotates.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.type != 'JwtSigningKey' || has(self.algorithm)").message("algorithm is required for type JwtSigningKey"))]
#[x_kube(validation = Rule::new("self.type == oldSelf.type").message("type is immutable: remove the secret and add it under a new name"))]
pub struct ManagedSecret {
    /// Name of the Secret (and of the '<name>-jwks' ConfigMap for JWT keys). At
    /// most 63 characters: the name is also a label value on what Palisade makes.
    #[schemars(
        length(min = 1, max = 63),
        regex(pattern = r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")
    )]
    pub name: String,
    /// Random (a random string) or JwtSigningKey (a private key with a JWKS).
    #[serde(rename = "type")]
    pub type_: SecretType,
    /// Length of a Random value, in characters. Default 32.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 16, max = 4096))]
    pub length: Option<u32>,
    /// Alphabet of a Random value. Default Alphanumeric.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alphabet: Option<Alphabet>,
    /// Signing algorithm of a JwtSigningKey.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub algorithm: Option<JwtAlgorithm>,
    /// How often to rotate, as a duration (e.g. 720h, 30d, 90m). Must be positive.
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub rotate_every: String,
    /// How many previous versions stay valid after a rotation (0-10). Default 1.
    #[serde(default = "one")]
    #[schemars(range(min = 0, max = 10))]
    pub keep_previous: u32,
    /// Restart Deployments, StatefulSets and DaemonSets that mount or reference
    /// the Secret after a rotation (debounced).
    #[serde(default)]
    pub restart_workloads: bool,
    /// Namespaces to create the Secret in; all tenant namespaces when empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub namespaces: Vec<String>,
}

fn one() -> u32 {
    1
}

/// Kind of generated secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum SecretType {
    Random,
    JwtSigningKey,
}

/// Alphabet of a Random secret.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Alphabet {
    /// A-Z, a-z, 0-9.
    #[default]
    Alphanumeric,
    /// 0-9, a-f.
    Hex,
    /// URL-safe base64 characters (A-Z, a-z, 0-9, '-', '_').
    Base64Url,
    /// Printable ASCII without space and quotes.
    Ascii,
}

/// JWT signing algorithm.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum JwtAlgorithm {
    ES256,
    EdDSA,
    RS256,
}

/// TTL garbage collection settings.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GarbageCollectionSpec {
    /// Report what would be deleted (status and Events) without deleting anything.
    #[serde(default)]
    pub dry_run: bool,
    /// Rules selecting objects to delete after an age. What Palisade itself
    /// writes in the tenant's namespaces, and what a palisade.dev object owns, is
    /// never deleted; labels (managed-by included) do not protect an object.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    #[schemars(length(max = 32))]
    pub rules: Vec<GcRule>,
    /// Kinds whose objects honour the palisade.dev/ttl and palisade.dev/expires
    /// annotations, as 'kind', 'kind.group' or 'plural.group'. Default: the kinds
    /// named by the rules plus ConfigMap, Secret, Job, PersistentVolumeClaim, Pod.
    /// An annotation can only shorten an object's life: an invalid value counts
    /// as absent (a Warning Event says so) and the rules still apply.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub annotation_kinds: Vec<String>,
    /// At most this many deletions per minute for the tenant. Default 60.
    #[serde(default = "sixty")]
    #[schemars(range(min = 1, max = 10000))]
    pub max_deletions_per_minute: u32,
}

fn sixty() -> u32 {
    60
}

/// One garbage collection rule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("has(self.maxAge) || has(self.keepLast)").message("a rule needs maxAge, keepLast or both"))]
pub struct GcRule {
    /// Rule name, used in Events and status.
    #[schemars(length(min = 1, max = 63))]
    pub name: String,
    /// Kinds the rule applies to, as 'kind' (core or unambiguous), 'kind.group'
    /// or 'plural.group' (e.g. Job, jobs.batch, Run.ci.example.com).
    #[schemars(length(min = 1))]
    pub kinds: Vec<String>,
    /// Only objects whose labels match.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<LabelSelector>,
    /// Delete objects older than this duration (e.g. 168h, 7d).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^([0-9]+(ms|s|m|h|d|w))+$"))]
    pub max_age: Option<String>,
    /// Keep the N newest matching objects per namespace even past maxAge; with no
    /// maxAge, everything beyond the N newest is deleted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub keep_last: Option<u32>,
    /// Measure age from creation (default) or, for Jobs, from completion.
    #[serde(default)]
    pub age_from: AgeFrom,
}

/// Where an object's age is measured from.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum AgeFrom {
    #[default]
    Creation,
    Completion,
}

/// What happens to namespaces when they leave the tenant.
#[derive(JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum DeletionPolicy {
    /// Delete the namespaces and everything in them.
    Delete,
    /// Keep the namespaces, labelled as released; remove only Palisade's policy objects.
    #[default]
    Retain,
}

/// Observed state of a Tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct TenantStatus {
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready, NamespacesReady, NetworkIsolated, QuotaEnforced, SecretsRotated,
    /// GarbageCollected.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
    /// Number of namespaces the tenant owns (printer column).
    #[serde(default)]
    pub namespace_count: u32,
    /// State of each namespace.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["name".into()]))]
    pub namespaces: Vec<NamespaceStatus>,
    /// State of each managed secret (one entry per spec.secrets entry,
    /// whatever the number of namespaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 64))]
    pub secrets: Vec<SecretStatus>,
    /// Aggregate quota usage (scope: Tenant only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<QuotaStatus>,
    /// Garbage collection counters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub garbage_collection: Option<GcStatus>,
}

/// State of one tenant namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct NamespaceStatus {
    /// Namespace name.
    pub name: String,
    /// Ready, Conflict (exists and is not this tenant's), Terminating, or Pending.
    pub phase: String,
    /// Details for a phase other than Ready.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Created by an owner (spec.maxNamespaces), not listed in spec.namespaces;
    /// owners may delete it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub created_by_owner: bool,
}

/// State of one managed secret across the tenant's namespaces: counts, and
/// only the namespaces where it is not current (bounded at any size).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretStatus {
    /// Secret name (as in spec.secrets).
    pub name: String,
    /// Namespaces that should hold it.
    #[serde(default)]
    pub namespaces: u32,
    /// Of those, the namespaces where it is current: written, readable, and no
    /// requested rotation waiting.
    #[serde(default)]
    pub current: u32,
    /// The version every namespace is at ('v<N>' for Random secrets), when
    /// they agree; absent otherwise (JWT kids differ per namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// When the oldest current version was created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotated_at: Option<Time>,
    /// When the next rotation is due (the earliest across namespaces).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_rotation: Option<Time>,
    /// Namespaces where it is not current, and why (e.g. a
    /// `palisade.dev/rotate-now` that waits for the minimum interval between
    /// forced rotations): the first ten; `namespaces - current` counts them all.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10))]
    pub pending: Vec<SecretPending>,
}

/// Why a managed secret is not current in one namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecretPending {
    /// The namespace.
    pub namespace: String,
    /// Why.
    #[schemars(length(max = 1024))]
    pub message: String,
}

/// Aggregate quota usage for scope: Tenant.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct QuotaStatus {
    /// The tenant budget.
    #[serde(default)]
    pub hard: BTreeMap<String, Quantity>,
    /// Usage summed over all tenant namespaces.
    #[serde(default)]
    pub used: BTreeMap<String, Quantity>,
}

/// Garbage collection counters.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct GcStatus {
    /// Objects deleted since the Tenant was created.
    #[serde(default)]
    pub deleted: u64,
    /// Objects due (or, in dryRun, that would be deleted) and not yet deleted.
    #[serde(default)]
    pub pending: u64,
    /// When the next object expires (null when nothing is scheduled; written as
    /// null so a merge patch clears an expiry that no longer exists).
    #[serde(default)]
    pub next_expiry: Option<Time>,
}
