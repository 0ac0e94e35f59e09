//! Validation of a Tenant spec and the objects it becomes.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::quota::{self, Usage};
use super::{TenantObjects, labels, network, rbac};
use crate::crd::tenant::{SecretType, SubjectKind, Tenant, TenantSpec};
use crate::duration;

/// A Tenant spec that cannot be reconciled, with the field at fault.
pub use super::Invalid as InvalidTenant;
use super::invalid;

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Namespaces no tenant may claim, whether or not they exist yet: the
/// cluster's own and Palisade's.
const RESERVED_NAMESPACES: &[&str] = &["default", "palisade-system"];
const RESERVED_NAMESPACE_PREFIX: &str = "kube-";

/// The longest rotation period accepted (ten years): anything longer is a typo,
/// and an unbounded one overflows time arithmetic.
const MAX_ROTATION: std::time::Duration = std::time::Duration::from_secs(3650 * 86_400);

/// A spec [`validate`] accepted, with what it parsed, so that no later step
/// checks or parses (and falls back) again. Only [`validate`] makes one:
/// [`objects`] takes it as the proof that the spec was checked.
#[derive(Debug, Clone, PartialEq)]
pub struct Valid {
    rotate_every: Vec<std::time::Duration>,
}

impl Valid {
    /// `spec.secrets[i].rotateEvery`, parsed, in spec order.
    pub fn rotate_every(&self) -> &[std::time::Duration] {
        &self.rotate_every
    }
}

/// Checks everything the schema cannot, and everything the API server will
/// check on the objects the spec becomes, so that an invalid spec changes
/// nothing (no child is applied until the whole spec is valid). The first
/// problem wins, one section of the spec after the other; a valid spec's
/// parsed values come back in [`Valid`]. `palisade render` and `palisade diff`
/// run the same checks.
pub fn validate(name: &str, spec: &TenantSpec) -> Result<Valid, InvalidTenant> {
    check_name(name)?;
    let listed = check_namespaces(name, spec)?;
    network::check(&spec.network)?;
    if let Some(q) = &spec.quota {
        quota::check_quota(q)?;
    }
    if let Some(l) = &spec.limits {
        quota::check_limits(l)?;
    }
    check_owners(spec)?;
    super::admission::check(spec)?;
    let rotate_every = check_secrets(spec, &listed)?;
    check_gc(spec)?;
    Ok(Valid { rotate_every })
}

fn check_name(name: &str) -> Result<(), InvalidTenant> {
    if is_dns_label(name) {
        return Ok(());
    }
    Err(invalid(
        "InvalidTenantName",
        "metadata.name",
        format!(
            "'{name}' is not a valid tenant name: it becomes a label value and a namespace prefix (lowercase letters, digits and '-', at most 63, no dots)"
        ),
    ))
}

/// `spec.namespaces`: names, reserved names, the prefix rule, duplicates, and
/// the extra labels and annotations (valid keys and values, none of
/// Palisade's). Returns the names.
fn check_namespaces<'a>(
    name: &str,
    spec: &'a TenantSpec,
) -> Result<BTreeSet<&'a str>, InvalidTenant> {
    let mut seen = BTreeSet::new();
    for (i, ns) in spec.namespaces.iter().enumerate() {
        let field = format!("spec.namespaces[{i}].name");
        if !is_dns_label(&ns.name) {
            return Err(invalid(
                "InvalidNamespaceName",
                field,
                format!(
                    "'{}' is not a valid namespace name (lowercase letters, digits and '-', at most 63)",
                    ns.name
                ),
            ));
        }
        if RESERVED_NAMESPACES.contains(&ns.name.as_str())
            || ns.name.starts_with(RESERVED_NAMESPACE_PREFIX)
        {
            return Err(invalid(
                "ReservedNamespace",
                field,
                format!(
                    "'{}' is reserved for the cluster or Palisade ('default', 'palisade-system', 'kube-*'); pick another name",
                    ns.name
                ),
            ));
        }
        if spec.force_tenant_prefix && !ns.name.starts_with(&format!("{name}-")) {
            return Err(invalid(
                "PrefixViolation",
                field,
                format!(
                    "'{}' must start with '{name}-' because forceTenantPrefix is set",
                    ns.name
                ),
            ));
        }
        if !seen.insert(ns.name.as_str()) {
            return Err(invalid(
                "DuplicateNamespace",
                field,
                format!("'{}' is listed twice", ns.name),
            ));
        }
        for (key, value) in &ns.labels {
            let field = format!("spec.namespaces[{i}].labels[{key}]");
            if labels::RESERVED_LABEL_PREFIXES
                .iter()
                .any(|p| key.starts_with(p))
                || key == labels::MANAGED_BY
            {
                return Err(invalid(
                    "ReservedLabel",
                    field,
                    format!("label '{key}' is managed by Palisade; remove it from the spec"),
                ));
            }
            if !labels::is_qualified_name(key) || !labels::is_label_value(value) {
                return Err(invalid(
                    "InvalidLabel",
                    field,
                    format!(
                        "'{key}: {value}' is not a valid label (key: [prefix/]name; value: at most 63 characters, alphanumerics, '-', '_', '.')"
                    ),
                ));
            }
        }
        if let Some(key) = ns
            .annotations
            .keys()
            .find(|k| k.starts_with(labels::PALISADE_PREFIX))
        {
            return Err(invalid(
                "ReservedAnnotation",
                format!("spec.namespaces[{i}].annotations[{key}]"),
                format!(
                    "annotation '{key}' is managed by Palisade (its admission policies read it); remove it from the spec"
                ),
            ));
        }
        if let Some(key) = ns
            .annotations
            .keys()
            .find(|k| !labels::is_qualified_name(k))
        {
            return Err(invalid(
                "InvalidAnnotation",
                format!("spec.namespaces[{i}].annotations[{key}]"),
                format!("'{key}' is not a valid annotation key ([prefix/]name)"),
            ));
        }
    }
    // Adopted owner namespaces stay when maxNamespaces is lowered below
    // them (never dropped): only the listed ones must fit.
    let listed = spec
        .namespaces
        .iter()
        .filter(|n| !n.created_by_owner)
        .count();
    if let Some(max) = spec.max_namespaces
        && (max as usize) < listed
    {
        return Err(invalid(
            "MaxNamespacesTooLow",
            "spec.maxNamespaces",
            format!(
                "maxNamespaces ({max}) is below the {listed} namespaces spec.namespaces lists: it counts them too; raise it or list fewer"
            ),
        ));
    }
    Ok(seen)
}

/// `spec.owners`: a namespace exactly for ServiceAccounts (a DNS label, like
/// every namespace name), valid ServiceAccount names, no subject that stands
/// for everyone.
fn check_owners(spec: &TenantSpec) -> Result<(), InvalidTenant> {
    for (i, o) in spec.owners.iter().enumerate() {
        if (o.kind == SubjectKind::ServiceAccount) != o.namespace.is_some() {
            return Err(invalid(
                "InvalidOwner",
                format!("spec.owners[{i}]"),
                "namespace is required for ServiceAccount owners and not allowed for users and groups",
            ));
        }
        if let Some(ns) = o.namespace.as_deref().filter(|ns| !is_dns_label(ns)) {
            return Err(invalid(
                "InvalidOwner",
                format!("spec.owners[{i}].namespace"),
                format!(
                    "'{ns}' is not a namespace name (lowercase letters, digits and '-', at most 63)"
                ),
            ));
        }
        if o.kind == SubjectKind::ServiceAccount && !labels::is_dns_subdomain(&o.name) {
            return Err(invalid(
                "InvalidOwner",
                format!("spec.owners[{i}].name"),
                format!(
                    "'{}' is not a ServiceAccount name (lowercase DNS subdomain)",
                    o.name
                ),
            ));
        }
        if super::rolepolicy::is_public_subject(o.kind, &o.name) {
            return Err(invalid(
                "PublicSubject",
                format!("spec.owners[{i}].name"),
                format!(
                    "{} '{}' stands for everyone: it cannot own a tenant",
                    o.kind.as_str(),
                    o.name
                ),
            ));
        }
    }
    Ok(())
}

/// `spec.secrets`: rotation periods (parsed and returned in spec order),
/// kept versions, algorithms, namespaces of the tenant, and names that fit
/// where they go (a 63-character label value).
fn check_secrets(
    spec: &TenantSpec,
    listed: &BTreeSet<&str>,
) -> Result<Vec<std::time::Duration>, InvalidTenant> {
    let mut rotate_every = Vec::with_capacity(spec.secrets.len());
    for (i, s) in spec.secrets.iter().enumerate() {
        let field = format!("spec.secrets[{i}]");
        if !labels::is_label_value(&s.name) || !labels::is_dns_subdomain(&s.name) {
            return Err(invalid(
                "InvalidSecretName",
                format!("{field}.name"),
                format!(
                    "'{}' cannot name a managed secret: at most 63 lowercase letters, digits, '-' and '.' (the name is also a label value)",
                    s.name
                ),
            ));
        }
        let every = duration::parse_positive(&s.rotate_every).map_err(|e| {
            invalid(
                "InvalidRotation",
                format!("{field}.rotateEvery"),
                e.to_string(),
            )
        })?;
        if every > MAX_ROTATION {
            return Err(invalid(
                "InvalidRotation",
                format!("{field}.rotateEvery"),
                format!("'{}' is longer than 3650d", s.rotate_every),
            ));
        }
        rotate_every.push(every);
        if s.keep_previous > 10 {
            return Err(invalid(
                "InvalidRotation",
                format!("{field}.keepPrevious"),
                format!("{} is out of range (0-10)", s.keep_previous),
            ));
        }
        if s.type_ == SecretType::JwtSigningKey && s.algorithm.is_none() {
            return Err(invalid(
                "UnknownAlgorithm",
                format!("{field}.algorithm"),
                "JwtSigningKey needs an algorithm: ES256, EdDSA or RS256",
            ));
        }
        for ns in &s.namespaces {
            if !listed.contains(ns.as_str()) {
                return Err(invalid(
                    "UnknownNamespace",
                    format!("{field}.namespaces"),
                    format!("'{ns}' is not one of the tenant's namespaces"),
                ));
            }
        }
    }
    Ok(rotate_every)
}

fn check_gc(spec: &TenantSpec) -> Result<(), InvalidTenant> {
    if let Some(gc) = &spec.garbage_collection {
        for (i, r) in gc.rules.iter().enumerate() {
            if let Some(age) = &r.max_age {
                duration::parse(age).map_err(|e| {
                    invalid(
                        "InvalidDuration",
                        format!("spec.garbageCollection.rules[{i}].maxAge"),
                        e.to_string(),
                    )
                })?;
            }
            if r.max_age.is_none() && r.keep_last.is_none() {
                return Err(invalid(
                    "InvalidGcRule",
                    format!("spec.garbageCollection.rules[{i}]"),
                    "a rule needs maxAge, keepLast or both",
                ));
            }
        }
    }
    Ok(())
}

/// Namespace names of the tenant, in spec order.
pub fn namespace_names(spec: &TenantSpec) -> Vec<String> {
    spec.namespaces.iter().map(|n| n.name.clone()).collect()
}

fn namespace(
    name: &str,
    uid: Option<&str>,
    spec: &TenantSpec,
    ns: &crate::crd::tenant::TenantNamespace,
    secrets_watched: bool,
) -> Namespace {
    let mut l: BTreeMap<String, String> = ns.labels.clone();
    l.extend(labels::managed(name));
    if ns.created_by_owner {
        l.insert(labels::CREATED_BY_OWNER.to_string(), "true".to_string());
    }
    if let Some(uid) = uid {
        l.insert(labels::TENANT_UID.to_string(), uid.to_string());
    }
    let level = spec.pod_security.as_str().to_string();
    for mode in ["enforce", "warn", "audit"] {
        l.insert(format!("pod-security.kubernetes.io/{mode}"), level.clone());
        l.insert(
            format!("pod-security.kubernetes.io/{mode}-version"),
            "latest".to_string(),
        );
    }
    let (settings, mut annotations) = super::admission::namespace_metadata(spec);
    l.extend(settings);
    annotations.extend(ns.annotations.clone());
    annotations.insert(
        labels::SECRETS_WATCHED.to_string(),
        secrets_watched.to_string(),
    );
    Namespace {
        metadata: ObjectMeta {
            name: Some(ns.name.clone()),
            labels: Some(l),
            annotations: Some(annotations),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Whether an existing namespace labelled with this tenant's name is this Tenant's
/// (`Ok`: manage it, adding what is missing) or not (`Err`: why, and how to fix
/// it). Names are reused, uids are not:
/// - its `palisade.dev/tenant-uid` is this Tenant's uid: ours;
/// - a different uid: another (earlier) Tenant of the same name: refused;
/// - no uid, still managed and not released: created by a Palisade from before
///   the uid label for this same live Tenant (a Tenant's namespaces are released
///   before the Tenant goes away): ours, the apply adds the label;
/// - no uid, never managed nor released: created with the tenant label by an
///   owner (`spec.maxNamespaces`; the namespace-create admission policy admits
///   the label only from the tenant's owners and administrators): ours;
/// - no uid, released by this very Tenant (`palisade.dev/released-by-uid`): ours
///   again (the same tenant listing a released namespace adopts it);
/// - otherwise (released by an earlier Tenant of the same name): refused.
///
/// Offline (`uid` unknown) only the name can be compared.
pub fn adoption(
    tenant: &str,
    uid: Option<&str>,
    namespace: &str,
    labels_: &BTreeMap<String, String>,
    annotations: &BTreeMap<String, String>,
) -> Result<(), String> {
    let Some(uid) = uid else {
        return Ok(());
    };
    let released = labels_.get(labels::RELEASED).map(String::as_str) == Some("true");
    let fix = format!(
        "to hand it to this Tenant, an administrator checks its contents and either deletes the namespace (Palisade then creates it afresh) or labels it deliberately: kubectl label namespace {namespace} {}={uid} --overwrite",
        labels::TENANT_UID
    );
    match labels_.get(labels::TENANT_UID).map(String::as_str) {
        Some(u) if u == uid => Ok(()),
        Some(other) => Err(format!(
            "namespace {namespace} belongs to another Tenant named {tenant} (uid {other}), not to this one (uid {uid}); {fix}"
        )),
        // Still managed (an older Palisade, before the uid label), or never
        // managed: created with the tenant label, which the namespace-create
        // admission policy admits only from the tenant's owners (and
        // administrators).
        None if !released => Ok(()),
        None if released
            && annotations.get(labels::RELEASED_BY_UID).map(String::as_str) == Some(uid) =>
        {
            Ok(())
        }
        None => Err(format!(
            "namespace {namespace} was released by an earlier Tenant named {tenant} and is not adopted by a new Tenant of the same name: its data is not this Tenant's; {fix}"
        )),
    }
}

/// The namespaces owners created for a tenant (`spec.maxNamespaces`), as
/// the controller and `palisade diff` both decide them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct OwnerNamespaces {
    /// Managed like the spec's namespaces: those adopted earlier (whatever
    /// maxNamespaces says now: an adopted namespace is never dropped), then
    /// new ones, oldest first, while the tenant has room.
    pub adopted: Vec<String>,
    /// Not adopted, each with why and how to fix it.
    pub refused: Vec<(String, String)>,
}

/// Decides which of `candidates` (every namespace labelled
/// `palisade.dev/tenant=<tenant>`, managed or not) are owner namespaces of
/// `tenant`. One is when it is not in the spec, not being deleted, not
/// released and not another Tenant's (uid), and either adopted before
/// (labelled [`labels::CREATED_BY_OWNER`] by Palisade) or never managed:
/// created with the tenant label, which the namespace-create admission
/// policy admits only from the tenant's owners (and administrators), only
/// named `<tenant>-…`.
pub fn owner_namespaces<'a>(
    tenant: Who<'_>,
    spec: &TenantSpec,
    candidates: impl IntoIterator<Item = &'a ObjectMeta>,
) -> OwnerNamespaces {
    let listed: BTreeSet<&str> = spec.namespaces.iter().map(|n| n.name.as_str()).collect();
    let mut adopted = Vec::new();
    let mut new: Vec<(
        Option<&k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
        String,
    )> = Vec::new();
    for meta in candidates {
        let Some(name) = meta.name.as_deref() else {
            continue;
        };
        let l = meta.labels.clone().unwrap_or_default();
        let is = |key: &str, value: &str| l.get(key).map(String::as_str) == Some(value);
        let foreign = tenant
            .uid
            .zip(l.get(labels::TENANT_UID))
            .is_some_and(|(uid, label)| uid != label);
        if !is(labels::TENANT, tenant.name)
            || listed.contains(name)
            || meta.deletion_timestamp.is_some()
            || is(labels::RELEASED, "true")
            || foreign
        {
            continue;
        }
        if is(labels::CREATED_BY_OWNER, "true") {
            adopted.push(name.to_string());
        } else if !l.contains_key(labels::MANAGED_BY) {
            new.push((meta.creation_timestamp.as_ref(), name.to_string()));
        }
    }
    adopted.sort();
    new.sort_by(|a, b| (a.0.map(|t| t.0), &a.1).cmp(&(b.0.map(|t| t.0), &b.1)));
    let mut out = OwnerNamespaces {
        adopted,
        refused: Vec::new(),
    };
    let prefix = format!("{}-", tenant.name);
    for (_, name) in new {
        let count = listed.len() + out.adopted.len();
        let refusal = match spec.max_namespaces {
            _ if !name.starts_with(&prefix) || !is_dns_label(&name) => Some(format!(
                "namespace {name} is labelled {}={} but an owner's namespace is named '{prefix}<name>': delete it and create it under that prefix",
                labels::TENANT,
                tenant.name
            )),
            None => Some(format!(
                "namespace {name} is labelled {}={} but the Tenant does not let owners create namespaces (spec.maxNamespaces is not set): delete it, or set maxNamespaces",
                labels::TENANT,
                tenant.name
            )),
            Some(max) if count >= max as usize => Some(format!(
                "namespace {name} is over the Tenant's spec.maxNamespaces ({max} in all, spec.namespaces included): delete it, or raise maxNamespaces"
            )),
            Some(_) => None,
        };
        match refusal {
            Some(why) => out.refused.push((name, why)),
            None => out.adopted.push(name),
        }
    }
    out
}

/// `tenant` with its adopted owner namespaces appended to `spec.namespaces`
/// (marked `created_by_owner`): what the builders, the prune rule and status
/// work from, the same way for spec and owner namespaces.
pub fn with_owner_namespaces(tenant: &Tenant, adopted: &[String]) -> Tenant {
    let mut out = tenant.clone();
    out.spec.namespaces.extend(
        adopted
            .iter()
            .map(|name| crate::crd::tenant::TenantNamespace {
                name: name.clone(),
                created_by_owner: true,
                ..Default::default()
            }),
    );
    out
}

/// Whether owners may create one more namespace: `spec.maxNamespaces` is set
/// and above the namespaces the tenant has (`spec` with its owner
/// namespaces, see [`with_owner_namespaces`]).
pub fn has_room(spec: &TenantSpec) -> bool {
    spec.max_namespaces
        .is_some_and(|max| spec.namespaces.len() < max as usize)
}

/// How a namespace the spec lists relates to a tenant.
#[derive(Debug, Clone, PartialEq)]
pub enum NsState {
    /// Not in the managed cache: create it (a 409 says it exists unmanaged,
    /// released, or was created meanwhile; it is then looked up).
    Unseen,
    /// Does not exist (looked up after a 409: deleted again meanwhile).
    Absent,
    /// Ours (or released by this same tenant earlier): apply.
    Owned,
    /// Being deleted.
    Terminating,
    /// Exists and belongs to someone else.
    Conflict(String),
}

/// The Tenant a namespace is classified for: its name and (online) uid.
#[derive(Clone, Copy)]
pub struct Who<'a> {
    pub name: &'a str,
    pub uid: Option<&'a str>,
}

/// Whose an existing namespace `name` (with metadata `meta`) is, for `tenant`.
pub fn classify_namespace(tenant: Who<'_>, name: &str, meta: &ObjectMeta) -> NsState {
    let lbls = meta.labels.clone().unwrap_or_default();
    let owner = lbls.get(labels::TENANT).cloned();
    let managed =
        lbls.get(labels::MANAGED_BY).map(String::as_str) == Some(labels::MANAGED_BY_VALUE);
    match owner.as_deref() {
        Some(t) if t == tenant.name => {
            if meta.deletion_timestamp.is_some() {
                return NsState::Terminating;
            }
            match adoption(
                tenant.name,
                tenant.uid,
                name,
                &lbls,
                &meta.annotations.clone().unwrap_or_default(),
            ) {
                Ok(()) => NsState::Owned,
                Err(why) => NsState::Conflict(why),
            }
        }
        Some(other) if managed => NsState::Conflict(format!(
            "namespace {name} belongs to tenant {other}; remove it from this tenant's spec.namespaces or from tenant {other}"
        )),
        _ => NsState::Conflict(format!(
            "namespace {name} already exists and is not managed by Palisade; Palisade never takes over an existing namespace: pick another name, or delete the namespace if it is unused"
        )),
    }
}

/// Whether Palisade must keep watching the Secrets and ConfigMaps of a tenant
/// namespace the spec puts none in ([`labels::SECRETS_WATCHED`]): while the
/// namespace is watched and its watch has not shown it empty of the tenant's
/// (`held`: `None` until it has listed). The prune that removes what is left
/// there can only see it through that watch; once it is empty, watching
/// stops. The controller answers from its caches, `palisade diff` from its
/// listing: the same rule.
pub fn still_holds_data(watched: bool, held: Option<bool>) -> bool {
    watched && held != Some(false)
}

/// The namespaces whose Secrets and ConfigMaps Palisade watches: those a
/// `spec.secrets[]` entry lands in (application tokens go only where a
/// signing key is), and those in `holding` (see [`still_holds_data`]).
pub fn secrets_watched(spec: &TenantSpec, holding: &BTreeSet<String>) -> BTreeSet<String> {
    namespace_names(spec)
        .into_iter()
        .filter(|ns| {
            holding.contains(ns) || spec.secrets.iter().any(|s| super::secrets::lands_in(s, ns))
        })
        .collect()
}

/// [`validate`], then [`objects`]: for callers that have not validated the
/// spec yet (tests, benchmarks). The controller, `render` and `diff` validate
/// once and call [`objects`].
pub fn build(
    tenant: &Tenant,
    usage: &Usage,
    plan: &super::rolepolicy::RbacPlan,
) -> Result<TenantObjects, InvalidTenant> {
    let name = tenant.metadata.name.as_deref().unwrap_or_default();
    let valid = validate(name, &tenant.spec)?;
    Ok(objects(tenant, &valid, usage, plan, &BTreeSet::new()))
}

/// The objects a Tenant becomes, its spec checked by [`validate`] (`_valid`).
/// `usage` is each namespace's current quota usage (only read for
/// `scope: Tenant`; empty offline); `holding` the namespaces that still
/// hold generated data the spec no longer puts there ([`still_holds_data`];
/// empty offline).
pub fn objects(
    tenant: &Tenant,
    _valid: &Valid,
    usage: &Usage,
    plan: &super::rolepolicy::RbacPlan,
    holding: &BTreeSet<String>,
) -> TenantObjects {
    let name = tenant.metadata.name.as_deref().unwrap_or_default();
    let spec = &tenant.spec;
    let names = namespace_names(spec);
    let watched = secrets_watched(spec, holding);
    let hard = spec
        .quota
        .as_ref()
        .map(|q| quota::namespace_hard(q, &names, usage));
    let mut out = TenantObjects::default();
    for ns in &spec.namespaces {
        let uid = tenant.metadata.uid.as_deref();
        out.namespaces
            .push(namespace(name, uid, spec, ns, watched.contains(&ns.name)));
        out.network_policies
            .extend(network::policies(name, uid, &ns.name, &spec.network));
        let ns_hard = hard.as_ref().and_then(|h| h.get(&ns.name).cloned());
        if ns_hard.is_some() || spec.cordoned {
            out.resource_quotas.push(quota::resource_quota(
                name,
                &ns.name,
                ns_hard.unwrap_or_default(),
                spec.cordoned,
            ));
        }
        if let Some(l) = &spec.limits {
            out.limit_ranges.push(quota::limit_range(name, &ns.name, l));
        }
        out.roles.extend(rbac::plan_roles(name, &ns.name, plan));
        out.role_bindings
            .extend(rbac::plan_bindings(name, &ns.name, plan));
        if ns.created_by_owner && !spec.owners.is_empty() {
            let (role, binding) =
                rbac::namespace_owner(name, &ns.name, owner_subjects(spec, &ns.name));
            out.roles.push(role);
            out.role_bindings.push(binding);
        }
    }
    if !spec.owners.is_empty() {
        let owner = kube::Resource::owner_ref(tenant, &());
        out.cluster_roles.push(rbac::owner_cluster_role(
            name,
            owner.clone(),
            spec.max_namespaces.is_some(),
            has_room(spec),
        ));
        out.cluster_role_bindings
            .push(rbac::owner_cluster_role_binding(
                name,
                owner,
                owner_subjects(spec, ""),
            ));
    }
    out
}

/// The tenant's owners as RBAC subjects (ServiceAccount owners name their
/// namespace; `namespace` is only the fallback of the subject builder).
fn owner_subjects(spec: &TenantSpec, namespace: &str) -> Vec<k8s_openapi::api::rbac::v1::Subject> {
    spec.owners
        .iter()
        .map(|o| rbac::subject(o.kind.as_str(), &o.name, o.namespace.as_deref(), namespace))
        .collect()
}

/// The Secrets and JWKS ConfigMaps of `spec.secrets[]` as `palisade render`
/// shows them: same builders as the controller, material redacted (it only
/// exists once the controller generates it) and empty key sets.
pub fn secret_previews(tenant: &Tenant, valid: &Valid) -> Vec<serde_json::Value> {
    use super::secrets;
    let name = tenant.metadata.name.as_deref().unwrap_or_default();
    let all = namespace_names(&tenant.spec);
    let mut out = Vec::new();
    for (spec, &every) in tenant.spec.secrets.iter().zip(valid.rotate_every()) {
        let namespaces = if spec.namespaces.is_empty() {
            &all
        } else {
            &spec.namespaces
        };
        for ns in namespaces {
            let mut secret = with_type(
                serde_json::to_value(secrets::secret_object(name, ns, spec, None, every)),
                "v1",
                "Secret",
            );
            // Show the placeholder as text, not base64.
            if let Some(map) = secret.as_mut().and_then(|v| v.as_object_mut())
                && let Some(serde_json::Value::Object(data)) = map.remove("data")
            {
                let text: serde_json::Map<String, serde_json::Value> = data
                    .keys()
                    .map(|k| (k.clone(), secrets::REDACTED.into()))
                    .collect();
                map.insert("stringData".into(), text.into());
            }
            let mut objects = vec![secret];
            if spec.type_ == SecretType::JwtSigningKey {
                objects.push(with_type(
                    serde_json::to_value(secrets::jwks_configmap(name, ns, spec, Vec::new())),
                    "v1",
                    "ConfigMap",
                ));
            }
            out.extend(objects.into_iter().flatten());
        }
    }
    out
}

fn with_type(
    v: Result<serde_json::Value, serde_json::Error>,
    api_version: &str,
    kind: &str,
) -> Option<serde_json::Value> {
    let mut v = v.ok()?;
    let map = v.as_object_mut()?;
    map.insert("apiVersion".into(), api_version.into());
    map.insert("kind".into(), kind.into());
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec(v: serde_json::Value) -> TenantSpec {
        serde_json::from_value(v).expect("spec")
    }

    fn reason(name: &str, v: serde_json::Value) -> (String, String) {
        let e = validate(name, &spec(v)).expect_err("invalid");
        (e.reason.to_string(), e.field.clone())
    }

    fn ns_meta(name: &str, labels_: &[(&str, &str)], created: i64) -> ObjectMeta {
        ObjectMeta {
            name: Some(name.to_string()),
            labels: Some(
                labels_
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect(),
            ),
            creation_timestamp: Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                jiff::Timestamp::from_second(created).expect("time"),
            )),
            ..Default::default()
        }
    }

    /// Which namespaces have their Secrets and ConfigMaps watched: where a
    /// secret lands (every namespace when it names none), and where some are
    /// still held; never elsewhere. Objects carry the decision as
    /// `palisade.dev/secrets-watched` on every namespace.
    #[test]
    fn secrets_are_watched_where_they_land_or_are_still_held() {
        let names = json!([{"name": "t-a"}, {"name": "t-b"}, {"name": "t-c"}]);
        let none = BTreeSet::new();
        let set = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let plain = spec(json!({"namespaces": names}));
        assert_eq!(secrets_watched(&plain, &none), set(&[]));
        assert_eq!(secrets_watched(&plain, &set(&["t-b"])), set(&["t-b"]));
        let one = spec(json!({"namespaces": names, "secrets": [
            {"name": "k", "type": "Random", "rotateEvery": "1h", "namespaces": ["t-a"]}]}));
        assert_eq!(secrets_watched(&one, &none), set(&["t-a"]));
        assert_eq!(secrets_watched(&one, &set(&["t-c"])), set(&["t-a", "t-c"]));
        let every = spec(json!({"namespaces": names, "secrets": [
            {"name": "k", "type": "Random", "rotateEvery": "1h"}]}));
        assert_eq!(secrets_watched(&every, &none), set(&["t-a", "t-b", "t-c"]));
        // Only namespaces of the tenant: a held name it no longer lists is not one.
        assert_eq!(secrets_watched(&plain, &set(&["gone"])), set(&[]));

        let tenant: Tenant = serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "t"}, "spec": one.clone()}))
        .expect("tenant");
        let valid = validate("t", &one).expect("valid");
        let objects = objects(&tenant, &valid, &Usage::new(), &Default::default(), &none);
        let marks: Vec<(String, String)> = objects
            .namespaces
            .iter()
            .map(|n| {
                let a = n.metadata.annotations.as_ref().expect("annotations");
                (
                    n.metadata.name.clone().unwrap_or_default(),
                    a[labels::SECRETS_WATCHED].clone(),
                )
            })
            .collect();
        assert_eq!(
            marks,
            [("t-a", "true"), ("t-b", "false"), ("t-c", "false")]
                .map(|(a, b)| (a.to_string(), b.to_string()))
        );
    }

    /// Watching stops only once the watch has shown a namespace empty of the
    /// tenant's Secrets and ConfigMaps; absent or any other value than
    /// "false" is watched.
    #[test]
    fn a_namespace_stays_watched_until_seen_empty() {
        assert!(still_holds_data(true, None));
        assert!(still_holds_data(true, Some(true)));
        assert!(!still_holds_data(true, Some(false)));
        assert!(!still_holds_data(false, None));
        assert!(!still_holds_data(false, Some(true)));
        let a = |v: &str| {
            Some(BTreeMap::from([(
                labels::SECRETS_WATCHED.to_string(),
                v.to_string(),
            )]))
        };
        assert!(labels::secrets_watched(None));
        assert!(labels::secrets_watched(Some(&BTreeMap::new())));
        assert!(labels::secrets_watched(a("true").as_ref()));
        assert!(labels::secrets_watched(a("yes").as_ref()));
        assert!(!labels::secrets_watched(a("false").as_ref()));
    }

    /// Issue #25 item 5: which namespaces labelled for a tenant are owners'
    /// namespaces it adopts, and which it refuses (with why).
    #[test]
    fn owner_namespaces_are_adopted_within_max_and_never_dropped() {
        let who = Who {
            name: "acme",
            uid: Some("u1"),
        };
        let t = (labels::TENANT, "acme");
        let managed = (labels::MANAGED_BY, labels::MANAGED_BY_VALUE);
        let adopted = (labels::CREATED_BY_OWNER, "true");
        let candidates = [
            // Listed in the spec: not an owner namespace.
            ns_meta("acme-prod", &[t, managed], 1),
            // Adopted earlier.
            ns_meta("acme-old", &[t, managed, adopted], 2),
            // New, oldest first.
            ns_meta("acme-b", &[t], 10),
            ns_meta("acme-a", &[t], 11),
            ns_meta("acme-c", &[t], 12),
            // Not named '<tenant>-...' (an administrator bypassed the policy).
            ns_meta("other-x", &[t], 3),
            // Another Tenant's (uid), released, or removed from the spec
            // (managed, no owner mark): none of these.
            ns_meta("acme-foreign", &[t, (labels::TENANT_UID, "u0")], 4),
            ns_meta("acme-released", &[t, (labels::RELEASED, "true")], 5),
            ns_meta("acme-removed", &[t, managed], 6),
            // Someone else's tenant.
            ns_meta("globex-x", &[(labels::TENANT, "globex")], 7),
        ];
        let s = spec(json!({"namespaces": [{"name": "acme-prod"}], "maxNamespaces": 4}));
        let out = owner_namespaces(who, &s, &candidates);
        assert_eq!(out.adopted, ["acme-old", "acme-b", "acme-a"]);
        let refused: Vec<&str> = out.refused.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(refused, ["other-x", "acme-c"]);
        assert!(
            out.refused[0].1.contains("'acme-<name>'"),
            "{:?}",
            out.refused
        );
        assert!(
            out.refused[1].1.contains("maxNamespaces (4"),
            "{:?}",
            out.refused
        );
        // Full now: no room for another.
        let full = with_owner_namespaces(&Tenant::new("acme", s.clone()), &out.adopted);
        assert!(!has_room(&full.spec));
        assert!(validate("acme", &full.spec).is_ok());
        // maxNamespaces unset (or lowered): adopted ones stay, new ones are refused.
        let off = spec(json!({"namespaces": [{"name": "acme-prod"}]}));
        let out = owner_namespaces(who, &off, &candidates);
        assert_eq!(out.adopted, ["acme-old"]);
        assert!(
            out.refused
                .iter()
                .any(|(n, why)| n == "acme-b" && why.contains("maxNamespaces is not set")),
            "{:?}",
            out.refused
        );
        let lowered = spec(json!({"namespaces": [{"name": "acme-prod"}], "maxNamespaces": 1}));
        let out = owner_namespaces(who, &lowered, &candidates);
        assert_eq!(out.adopted, ["acme-old"]);
        let kept = with_owner_namespaces(&Tenant::new("acme", lowered), &out.adopted);
        assert!(
            validate("acme", &kept.spec).is_ok(),
            "an adopted namespace never invalidates the spec"
        );
        // The spec itself must fit.
        assert_eq!(
            reason(
                "acme",
                json!({"namespaces": [{"name": "acme-a"}, {"name": "acme-b"}], "maxNamespaces": 1})
            ),
            ("MaxNamespacesTooLow".into(), "spec.maxNamespaces".into())
        );
    }

    /// Owner namespaces are built like listed ones, plus the mark and the
    /// owners' right to delete them; the owners' ClusterRole follows the room.
    #[test]
    fn owner_namespaces_get_the_delete_role_and_owners_a_cluster_role() {
        let s = spec(json!({
            "namespaces": [{"name": "acme-prod"}],
            "owners": [{"kind": "User", "name": "alice"}],
            "maxNamespaces": 3
        }));
        let tenant = with_owner_namespaces(&Tenant::new("acme", s), &["acme-x".to_string()]);
        let plan = super::super::rolepolicy::plan_for(&tenant, &[]);
        let out = build(&tenant, &Usage::new(), &plan).expect("valid");
        let marked: Vec<_> = out
            .namespaces
            .iter()
            .filter(|n| {
                n.metadata.labels.as_ref().is_some_and(|l| {
                    l.get(labels::CREATED_BY_OWNER).map(String::as_str) == Some("true")
                })
            })
            .filter_map(|n| n.metadata.name.clone())
            .collect();
        assert_eq!(marked, ["acme-x"]);
        let owner_role = rbac::role_name(rbac::NAMESPACE_OWNER_ROLE);
        let in_ns: Vec<_> = out
            .roles
            .iter()
            .filter(|r| r.metadata.name.as_deref() == Some(owner_role.as_str()))
            .filter_map(|r| r.metadata.namespace.clone())
            .collect();
        assert_eq!(in_ns, ["acme-x"], "only owner-created namespaces");
        let rule = &out
            .roles
            .iter()
            .find(|r| {
                r.metadata.namespace.as_deref() == Some("acme-x")
                    && r.metadata.name.as_deref() == Some(owner_role.as_str())
            })
            .expect("role")
            .rules
            .clone()
            .unwrap_or_default()[0];
        assert_eq!(
            rule.resource_names.as_deref(),
            Some(&["acme-x".to_string()][..])
        );
        assert_eq!(rule.verbs, ["get", "delete"]);
        // Room left (2 of 3): the verb the admission policy asks about.
        let verbs = |out: &TenantObjects| -> Vec<String> {
            out.cluster_roles[0]
                .rules
                .iter()
                .flatten()
                .flat_map(|r| r.verbs.clone())
                .collect()
        };
        assert_eq!(out.cluster_role_bindings.len(), 1);
        assert!(verbs(&out).contains(&rbac::CREATE_NAMESPACES_VERB.to_string()));
        let full = with_owner_namespaces(&tenant, &["acme-y".to_string()]);
        let out = build(&full, &Usage::new(), &plan).expect("valid");
        assert!(!verbs(&out).contains(&rbac::CREATE_NAMESPACES_VERB.to_string()));
        assert!(verbs(&out).contains(&"create".to_string()));
        // No maxNamespaces: owners only read their Tenant.
        let plain = Tenant::new(
            "acme",
            spec(json!({"owners": [{"kind": "User", "name": "alice"}]})),
        );
        let out = build(&plain, &Usage::new(), &plan).expect("valid");
        assert_eq!(verbs(&out), ["get", "list", "watch"]);
    }

    /// Issue #15: namespaces carry the Tenant's uid, and the intra-tenant policy
    /// admits peers by that uid (release removes it), not by the reusable name.
    #[test]
    fn namespaces_carry_the_tenant_uid_and_intra_tenant_peers_are_selected_by_it() {
        let tenant: Tenant = serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "Tenant",
            "metadata": {"name": "acme", "uid": "1111-2222"},
            "spec": {"namespaces": [{"name": "acme-a"}, {"name": "acme-b"}],
                     "network": {"allowIntraTenant": true}}
        }))
        .expect("tenant");
        let plan = super::super::rolepolicy::RbacPlan::default();
        let out = build(&tenant, &Usage::new(), &plan).expect("valid");
        for ns in &out.namespaces {
            let l = ns.metadata.labels.clone().unwrap_or_default();
            assert_eq!(
                l.get(labels::TENANT_UID).map(String::as_str),
                Some("1111-2222")
            );
            assert_eq!(l.get(labels::TENANT).map(String::as_str), Some("acme"));
        }
        let intra: Vec<_> = out
            .network_policies
            .iter()
            .filter(|p| {
                p.metadata.name.as_deref() == Some(super::super::network::ALLOW_INTRA_TENANT)
            })
            .collect();
        assert_eq!(intra.len(), 2);
        for p in intra {
            let v = serde_json::to_value(p).expect("json");
            let want = json!({"palisade.dev/tenant-uid": "1111-2222"});
            assert_eq!(
                v["spec"]["ingress"][0]["from"][0]["namespaceSelector"]["matchLabels"],
                want
            );
            assert_eq!(
                v["spec"]["egress"][0]["to"][0]["namespaceSelector"]["matchLabels"],
                want
            );
        }
    }

    /// Issue #15: a released namespace is not taken over by a new Tenant that
    /// reuses the name.
    #[test]
    fn adoption_goes_by_uid_not_by_name() {
        let l = |pairs: &[(&str, &str)]| -> BTreeMap<String, String> {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect()
        };
        let none = BTreeMap::new();
        let managed = [(labels::MANAGED_BY, "palisade"), (labels::TENANT, "acme")];
        // Ours, by uid.
        let ours = l(&[managed[0], managed[1], (labels::TENANT_UID, "new")]);
        assert_eq!(
            adoption("acme", Some("new"), "acme-a", &ours, &none),
            Ok(())
        );
        // Another Tenant of the same name.
        let err = adoption("acme", Some("other"), "acme-a", &ours, &none).expect_err("refused");
        assert!(
            err.contains("acme-a") && err.contains("uid new") && err.contains("kubectl label"),
            "{err}"
        );
        // Created by an older Palisade for this live tenant: migrated.
        assert_eq!(
            adoption("acme", Some("new"), "acme-a", &l(&managed), &none),
            Ok(())
        );
        // Released by the old tenant (release removed the uid label).
        let released = l(&[(labels::TENANT, "acme"), (labels::RELEASED, "true")]);
        let by_old = l(&[(labels::RELEASED_BY_UID, "old")]);
        let err = adoption("acme", Some("new"), "acme-a", &released, &by_old).expect_err("refused");
        assert!(err.contains("released by an earlier Tenant"), "{err}");
        assert!(adoption("acme", Some("new"), "acme-a", &released, &none).is_err());
        // Released by this same tenant (removed from its list, listed again).
        assert_eq!(
            adoption("acme", Some("old"), "acme-a", &released, &by_old),
            Ok(())
        );
        // Created with the tenant's label and never managed: an owner's
        // namespace (the namespace-create policy admits the label only from
        // the tenant's owners and administrators).
        assert_eq!(
            adoption(
                "acme",
                Some("new"),
                "acme-a",
                &l(&[(labels::TENANT, "acme")]),
                &none
            ),
            Ok(())
        );
    }

    #[test]
    fn names_ports_cidrs_subjects_and_rotations_are_checked() {
        let ok = json!({"namespaces": [{"name": "acme-a"}]});
        assert!(validate("acme", &spec(ok.clone())).is_ok());
        assert_eq!(
            reason(&"a".repeat(64), ok.clone()),
            ("InvalidTenantName".into(), "metadata.name".into())
        );
        assert_eq!(reason("acme.io", ok).0, "InvalidTenantName");
        for reserved in ["default", "kube-system", "kube-anything", "palisade-system"] {
            assert_eq!(
                reason("acme", json!({"namespaces": [{"name": reserved}]})),
                ("ReservedNamespace".into(), "spec.namespaces[0].name".into()),
                "{reserved}"
            );
        }
        let egress = |c: serde_json::Value| json!({"network": {"allowEgressCidrs": [c]}});
        assert_eq!(
            reason(
                "acme",
                egress(json!({"cidr": "10.0.0.0/8", "ports": [5432, 0]}))
            ),
            (
                "InvalidPort".into(),
                "spec.network.allowEgressCidrs[0].ports[1]".into()
            )
        );
        assert_eq!(
            reason(
                "acme",
                egress(json!({"cidr": "10.0.0.0/8", "except": ["10.0.0.0/8"]}))
            )
            .0,
            "InvalidCidr"
        );
        assert!(
            validate(
                "acme",
                &spec(egress(
                    json!({"cidr": "10.0.0.0/8", "except": ["10.1.0.0/16"]})
                ))
            )
            .is_ok()
        );
        for (kind, name) in [
            ("User", "system:anonymous"),
            ("Group", "system:unauthenticated"),
            ("Group", "system:authenticated"),
        ] {
            assert_eq!(
                reason("acme", json!({"owners": [{"kind": kind, "name": name}]})),
                ("PublicSubject".into(), "spec.owners[0].name".into())
            );
        }
        let secret = |every: &str| json!({"secrets": [{"name": "k", "type": "Random", "rotateEvery": every}]});
        assert!(validate("acme", &spec(secret("720h"))).is_ok());
        // Palisade's annotations (the admission settings among them) are
        // not the spec's to set on a namespace (#25).
        assert_eq!(
            reason(
                "acme",
                json!({"namespaces": [{"name": "acme-a", "annotations": {"palisade.dev/allowed-registries": ""}}]})
            ),
            (
                "ReservedAnnotation".to_string(),
                "spec.namespaces[0].annotations[palisade.dev/allowed-registries]".to_string()
            )
        );
        assert_eq!(
            reason(
                "acme",
                json!({"namespaces": [{"name": "acme-a", "labels": {"palisade.dev/allow-node-port": "true"}}]})
            )
            .0,
            "ReservedLabel"
        );
        assert_eq!(
            reason(
                "acme",
                json!({"images": {"allowedRegistries": ["https://x.io"]}})
            )
            .0,
            "InvalidRegistry"
        );
        assert_eq!(reason("acme", secret("3651d")).0, "InvalidRotation");
        assert_eq!(reason("acme", secret("420000w")).0, "InvalidRotation");
        // Overflowing u64 milliseconds is a parse error, not a panic.
        assert_eq!(
            reason("acme", secret("99999999999999999999w")).0,
            "InvalidRotation"
        );
    }
}
