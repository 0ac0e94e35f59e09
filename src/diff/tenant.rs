//! What the Tenant controller would apply, generate and prune for an input
//! Tenant: the same builders, namespace states and disposal rule.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, ListParams};
use kube::core::ApiResource;
use serde_json::Value;

use super::{Action, DiffError, Differ, Finding, How, Severity, Target, api_err, ar_of, ser_err};
use crate::apply::Applier;
use crate::crd::{RolePolicy, Tenant};
use crate::resources::disposal::{self, Disposal, Wants};
use crate::resources::labels;
use crate::resources::quota::{QUOTA_NAME, Usage};
use crate::resources::rolepolicy::RbacPlan;
use crate::resources::tenant::{NsState, Valid, Who, classify_namespace};
use crate::resources::{ObjectKey, rolepolicy, tenant, tokens};

/// One Tenant's preview: what its phases share.
struct Preview<'a> {
    t: &'a Tenant,
    name: String,
    /// How the report names where a child comes from.
    source: String,
    /// The namespaces of the spec.
    names: Vec<String>,
    states: BTreeMap<String, NsState>,
    live: Listed,
    /// Every child the controller would want (never pruned).
    wanted: BTreeSet<ObjectKey>,
}

impl Differ {
    /// What the Tenant controller would apply and prune for `t`, phase by
    /// phase as the controller decides: the children as they are, the
    /// desired ones (the same builders), the generated ones, then the prune
    /// rule ([`disposal::plan`]). `valid` is the proof that `t` was
    /// validated once ([`super::validate_tenant`]), as the controller's
    /// builders take it.
    pub(super) async fn tenant_children(
        &mut self,
        t: &Tenant,
        valid: &Valid,
        policies: &[RolePolicy],
    ) -> Result<(), DiffError> {
        let name = t.name_any();
        let t = &self.with_owner_namespaces(t).await?;
        let (live, scan) = self.list_children(t).await?;
        let usage = self.quota_usage(&scan).await?;
        let plan = rolepolicy::plan_for(t, policies);
        let holding = live.holding(&tenant::namespace_names(&t.spec));
        let values = tenant::objects(t, valid, &usage, &plan, &holding)
            .to_values()
            .map_err(ser_err("tenant objects"))?;
        let names = tenant::namespace_names(&t.spec);
        let states = self.namespace_states(t, &names).await?;
        let mut p = Preview {
            t,
            source: format!("Tenant {name}"),
            name,
            names,
            states,
            live,
            wanted: BTreeSet::new(),
        };
        let kinds = crate::controller::cache::tenant_child_kinds();
        for value in values {
            let Some(ar) = kinds.iter().find(|k| value["kind"] == k.kind.as_str()) else {
                continue;
            };
            if let Some(key) = self.desired_child(&p, ar, value).await? {
                p.wanted.insert(key);
            }
        }
        self.generated_children(&mut p, valid, &plan);
        self.prune_preview(&p);
        Ok(())
    }

    /// `t` with the namespaces its owners created (spec.maxNamespaces),
    /// decided as the controller decides them: adopted ones are the tenant's
    /// like the listed ones (applied, never pruned).
    async fn with_owner_namespaces(&self, t: &Tenant) -> Result<Tenant, DiffError> {
        let name = t.name_any();
        let labelled = self
            .api(&ar_of::<Namespace>(), None)
            .list_metadata(&ListParams::default().labels(&format!("{}={name}", labels::TENANT)))
            .await
            .map_err(api_err("list", "Namespace", &name))?;
        let owner = tenant::owner_namespaces(
            Who {
                name: &name,
                uid: t.metadata.uid.as_deref(),
            },
            &t.spec,
            labelled.items.iter().map(|n| &n.metadata),
        );
        Ok(tenant::with_owner_namespaces(t, &owner.adopted))
    }

    /// The tenant's children as they are, read as narrowly as the controller
    /// reads them: its namespaces (labelled or listed), then every kind
    /// inside them; metadata only, so no Secret value is ever read. Also the
    /// namespaces scanned.
    async fn list_children(&self, t: &Tenant) -> Result<(Listed, BTreeSet<String>), DiffError> {
        let name = t.name_any();
        let selector = ListParams::default().labels(&labels::tenant_selector(&name));
        let mut live = Listed::default();
        let mut scan: BTreeSet<String> = tenant::namespace_names(&t.spec).into_iter().collect();
        let mut child_kinds = crate::controller::cache::tenant_child_kinds();
        child_kinds.sort_by_key(|ar| ar.kind != "Namespace"); // namespaces first
        for ar in child_kinds {
            let namespaces: Vec<Option<String>> =
                if crate::controller::cache::is_cluster_scoped(&ar) {
                    vec![None]
                } else {
                    scan.iter().cloned().map(Some).collect()
                };
            for ns in namespaces {
                // Where the controller watches no Secrets and ConfigMaps, it
                // sees none: neither does its preview.
                if crate::controller::cache::is_watched_per_namespace(&ar)
                    && ns
                        .as_ref()
                        .is_some_and(|ns| !live.secrets_watched.contains(ns))
                {
                    continue;
                }
                let list = self
                    .api(&ar, ns.as_deref())
                    .list_metadata(&selector)
                    .await
                    .map_err(api_err("list", &ar.kind, &name))?;
                for o in list.items {
                    if ar.kind == "Namespace" {
                        scan.insert(o.name_any());
                    }
                    live.add(&ar, &o.metadata, t.metadata.uid.as_deref());
                }
            }
        }
        Ok((live, scan))
    }

    /// Quota usage of `namespaces`, for `scope: Tenant` budgets.
    async fn quota_usage(&self, namespaces: &BTreeSet<String>) -> Result<Usage, DiffError> {
        let quota_ar = ar_of::<k8s_openapi::api::core::v1::ResourceQuota>();
        let mut usage = Usage::new();
        for ns in namespaces {
            let Some(q) = self
                .api(&quota_ar, Some(ns))
                .get_opt(QUOTA_NAME)
                .await
                .map_err(api_err("get", "ResourceQuota", QUOTA_NAME))?
            else {
                continue;
            };
            if let Some(used) = q
                .data
                .pointer("/status/used")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
            {
                usage.insert(ns.clone(), used);
            }
        }
        Ok(usage)
    }

    /// The state of each of the spec's namespaces, by the controller's rule
    /// ([`classify_namespace`]).
    async fn namespace_states(
        &self,
        t: &Tenant,
        names: &[String],
    ) -> Result<BTreeMap<String, NsState>, DiffError> {
        let name = t.name_any();
        let ns_api: Api<Namespace> = Api::all(self.client.clone());
        let mut states: BTreeMap<String, NsState> = BTreeMap::new();
        for ns in names {
            let state =
                match ns_api
                    .get_metadata_opt(ns)
                    .await
                    .map_err(api_err("get", "Namespace", ns))?
                {
                    Some(meta) => classify_namespace(
                        Who {
                            name: &name,
                            uid: t.metadata.uid.as_deref(),
                        },
                        ns,
                        &meta.metadata,
                    ),
                    None => NsState::Absent,
                };
            states.insert(ns.clone(), state);
        }
        Ok(states)
    }

    /// One desired child (namespaces included): created, compared, or left
    /// out where its namespace is someone else's (a finding for the
    /// namespace itself); its key when the controller would want it.
    async fn desired_child(
        &mut self,
        p: &Preview<'_>,
        ar: &ApiResource,
        value: Value,
    ) -> Result<Option<ObjectKey>, DiffError> {
        let key = ObjectKey::of(&value);
        let is_ns = key.kind == "Namespace";
        let ns = disposal::namespace_of(&key).to_string();
        let state = if !is_ns && ns.is_empty() {
            // Cluster-scoped (the owners' ClusterRole): compared with what is there.
            NsState::Owned
        } else {
            p.states.get(&ns).cloned().unwrap_or(NsState::Absent)
        };
        match (&state, is_ns) {
            (NsState::Conflict(msg), true) => {
                self.report.findings.push(Finding {
                    severity: Severity::Rejected,
                    kind: "Tenant".into(),
                    name: p.name.clone(),
                    reason: "NamespaceConflict".into(),
                    field: "spec.namespaces".into(),
                    message: msg.clone(),
                });
                return Ok(None);
            }
            (NsState::Conflict(_), false) => return Ok(None),
            (NsState::Terminating, true) => {
                let t = Target {
                    ar,
                    namespace: None,
                    name: ns.clone(),
                    value: Value::Null,
                    how: How::Child,
                    source: p.source.clone(),
                };
                self.push(
                    &t,
                    Action::Created,
                    Vec::new(),
                    Some("being deleted; created again once it is gone".into()),
                );
                return Ok(None);
            }
            _ => {}
        }
        let new_namespace = matches!(
            state,
            NsState::Absent | NsState::Terminating | NsState::Unseen
        );
        let (child_ns, child_name) = if is_ns && new_namespace {
            // Created, never applied over an existing one.
            let n = Applier::prepare(ar, value)
                .map_err(|e| {
                    DiffError::Serialize(format!("a Namespace built for {}: {e}", p.source))
                })?
                .name;
            let t = Target {
                ar,
                namespace: None,
                name: n.clone(),
                value: Value::Null,
                how: How::Child,
                source: p.source.clone(),
            };
            self.push(&t, Action::Created, Vec::new(), None);
            (String::new(), n)
        } else {
            self.child(ar, value, &p.source, new_namespace).await?
        };
        Ok(Some(ObjectKey::new(&key.kind, &child_ns, &child_name)))
    }

    /// The children whose content the controller generates: rotated Secrets
    /// and their JWKS, and the application tokens of RolePolicy bindings.
    fn generated_children(&mut self, p: &mut Preview<'_>, valid: &Valid, plan: &RbacPlan) {
        let kinds = crate::controller::cache::tenant_child_kinds();
        let ready = |ns: &str| !matches!(p.states.get(ns), Some(NsState::Conflict(_)));
        // Rotated secrets and their JWKS.
        for preview in tenant::secret_previews(p.t, valid) {
            let key = ObjectKey::of(&preview);
            let Some(ar) = kinds.iter().find(|k| k.kind == key.kind) else {
                continue;
            };
            if !ready(&key.namespace) {
                continue;
            }
            let found = p.live.exists(&key);
            self.generated(ar, &key.namespace, &key.name, found, &p.source);
            p.wanted.insert(key);
        }
        // Application tokens of RolePolicy bindings, where the tenant's signing
        // key is published (elsewhere the controller reports TokenBlocked).
        let secret_ar = ar_of::<k8s_openapi::api::core::v1::Secret>();
        for req in &plan.tokens {
            let Some(key) = tokens::signing_key(&p.t.spec, req) else {
                continue;
            };
            for ns in p
                .names
                .iter()
                .filter(|ns| req.sa_namespace.as_ref().is_none_or(|n| n == *ns))
                .filter(|ns| ready(ns) && crate::resources::secrets::lands_in(key, ns))
            {
                let key = ObjectKey::new("Secret", ns, &tokens::secret_name(&req.service_account));
                let found = p.live.exists(&key);
                self.generated(&secret_ar, ns, &key.name, found, &p.source);
                p.wanted.insert(key);
            }
        }
    }

    /// What the controller would prune and release: [`disposal::plan`] over
    /// the listed children.
    fn prune_preview(&mut self, p: &Preview<'_>) {
        // Prune and release: the controller's rule.
        let wants = Wants {
            objects: &p.wanted,
            namespaces: &p.names,
            policy: p.t.spec.deletion_policy,
        };
        for (key, ar, what) in p.live.prune_preview(&wants) {
            let action = match what {
                Disposal::Keep => continue,
                Disposal::Delete | Disposal::WithNamespace => Action::Pruned,
                Disposal::ReleaseNamespace | Disposal::ReleaseData => Action::Released,
            };
            let note = (what != Disposal::Delete).then(|| what.describe().to_string());
            let t = Target {
                ar,
                namespace: (!key.namespace.is_empty()).then(|| key.namespace.clone()),
                name: key.name.clone(),
                value: Value::Null,
                how: How::Child,
                source: p.source.clone(),
            };
            self.push(&t, action, Vec::new(), note);
        }
    }
}

/// A tenant's children as `palisade diff` lists them (metadata only: each
/// one's key, kind and whether it is being deleted), and what their
/// namespaces say.
#[derive(Default)]
struct Listed {
    children: Vec<(ObjectKey, ApiResource, bool)>,
    namespaces: disposal::Namespaces,
    /// The listed namespaces whose Secrets and ConfigMaps the controller
    /// watches ([`labels::secrets_watched`]).
    secrets_watched: BTreeSet<String>,
}

impl Listed {
    /// One listed object of kind `ar`.
    fn add(&mut self, ar: &ApiResource, meta: &ObjectMeta, tenant_uid: Option<&str>) {
        let name = meta.name.clone().unwrap_or_default();
        if ar.kind == "Namespace" {
            self.namespaces.note(&name, meta, tenant_uid);
            if labels::secrets_watched(meta.annotations.as_ref()) {
                self.secrets_watched.insert(name.clone());
            }
        }
        let key = ObjectKey::new(
            &ar.kind,
            meta.namespace.as_deref().unwrap_or_default(),
            &name,
        );
        self.children
            .push((key, ar.clone(), meta.deletion_timestamp.is_some()));
    }

    fn exists(&self, key: &ObjectKey) -> bool {
        self.children.iter().any(|(k, _, _)| k == key)
    }

    /// Of `names`, the namespaces the controller keeps watching for the
    /// Secrets and ConfigMaps left in them ([`tenant::still_holds_data`]:
    /// this listing is complete, so it has always "listed").
    fn holding(&self, names: &[String]) -> BTreeSet<String> {
        names
            .iter()
            .filter(|ns| {
                let held = self.children.iter().any(|(k, ar, _)| {
                    k.namespace == **ns && crate::controller::cache::is_watched_per_namespace(ar)
                });
                tenant::still_holds_data(self.secrets_watched.contains(*ns), Some(held))
            })
            .cloned()
            .collect()
    }

    /// What the controller's prune would do to each listed child, by
    /// [`disposal::plan`].
    fn prune_preview(&self, wants: &Wants<'_>) -> Vec<(ObjectKey, &ApiResource, Disposal)> {
        let owned = self
            .children
            .iter()
            .map(|(key, ar, deleting)| (key.clone(), *deleting, ar))
            .collect();
        disposal::plan(owned, &self.namespaces, wants)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use kube::api::DynamicObject;
    use serde_json::json;

    use super::*;
    use crate::controller::tenant::owned_disposals;
    use crate::crd::tenant::DeletionPolicy;

    fn object(ar: &ApiResource, ns: &str, name: &str, meta: Value) -> DynamicObject {
        let mut v = json!({"apiVersion": ar.api_version, "kind": ar.kind, "metadata": meta});
        v["metadata"]["name"] = name.into();
        if !ns.is_empty() {
            v["metadata"]["namespace"] = ns.into();
        }
        serde_json::from_value(v).expect("object")
    }

    /// `palisade diff` previews exactly the prunes and releases the
    /// controller makes, from the same world: its metadata listing on one
    /// side, the controller's cache on the other. Namespace `c` is labelled
    /// with another Tenant's uid (never touched), `d` is being deleted.
    #[test]
    fn diff_and_controller_prune_alike() {
        let ns_ar = ar_of::<Namespace>();
        let np = ar_of::<k8s_openapi::api::networking::v1::NetworkPolicy>();
        let secret = ar_of::<k8s_openapi::api::core::v1::Secret>();
        let uid = |u: &str| json!({"labels": {"palisade.dev/tenant": "acme", "palisade.dev/tenant-uid": u}});
        let going = json!({"deletionTimestamp": "2026-01-01T00:00:00Z",
            "labels": {"palisade.dev/tenant": "acme", "palisade.dev/tenant-uid": "u1"}});
        let world: Vec<(ApiResource, DynamicObject)> = vec![
            (ns_ar.clone(), object(&ns_ar, "", "a", uid("u1"))),
            (ns_ar.clone(), object(&ns_ar, "", "b", uid("u1"))),
            (ns_ar.clone(), object(&ns_ar, "", "c", uid("u0"))),
            (ns_ar.clone(), object(&ns_ar, "", "d", going)),
            (np.clone(), object(&np, "a", "keep", json!({}))),
            (np.clone(), object(&np, "a", "old", json!({}))),
            (np.clone(), object(&np, "b", "x", json!({}))),
            (np.clone(), object(&np, "c", "x", json!({}))),
            (secret.clone(), object(&secret, "b", "db", json!({}))),
            (secret.clone(), object(&secret, "c", "db", json!({}))),
            (secret.clone(), object(&secret, "d", "db", json!({}))),
        ];
        let wanted: BTreeSet<ObjectKey> = [ObjectKey::new("NetworkPolicy", "a", "keep")].into();
        let names = ["a".to_string()];
        for policy in [DeletionPolicy::Delete, DeletionPolicy::Retain] {
            let wants = Wants {
                objects: &wanted,
                namespaces: &names,
                policy,
            };
            let mut listed = Listed::default();
            for (ar, o) in &world {
                listed.add(ar, &o.metadata, Some("u1"));
            }
            let diff: Vec<(ObjectKey, Disposal)> = listed
                .prune_preview(&wants)
                .into_iter()
                .map(|(k, _, d)| (k, d))
                .collect();
            let cache: Vec<(ApiResource, Arc<DynamicObject>)> = world
                .iter()
                .map(|(ar, o)| (ar.clone(), Arc::new(o.clone())))
                .collect();
            let namespace = |n: &str| {
                cache
                    .iter()
                    .find(|(ar, o)| ar.kind == "Namespace" && o.name_any() == n)
                    .map(|(_, o)| o.clone())
            };
            let controller: Vec<(ObjectKey, Disposal)> =
                owned_disposals(cache.clone(), namespace, Some("u1"), &wants)
                    .into_iter()
                    .map(|(k, _, d)| (k, d))
                    .collect();
            assert_eq!(diff, controller, "{policy:?}");
            let changes: Vec<(String, Disposal)> = diff
                .iter()
                .filter(|(_, d)| d.changes())
                .map(|(k, d)| (format!("{}/{}/{}", k.kind, k.namespace, k.name), *d))
                .collect();
            let expected = match policy {
                DeletionPolicy::Delete => vec![
                    ("NetworkPolicy/a/old".to_string(), Disposal::Delete),
                    ("NetworkPolicy/b/x".to_string(), Disposal::WithNamespace),
                    ("Secret/b/db".to_string(), Disposal::WithNamespace),
                    ("Namespace//b".to_string(), Disposal::Delete),
                ],
                DeletionPolicy::Retain => vec![
                    ("NetworkPolicy/a/old".to_string(), Disposal::Delete),
                    ("NetworkPolicy/b/x".to_string(), Disposal::Delete),
                    ("Secret/b/db".to_string(), Disposal::ReleaseData),
                    ("Namespace//b".to_string(), Disposal::ReleaseNamespace),
                ],
            };
            assert_eq!(changes, expected, "{policy:?}: c is foreign, d is going");
        }
    }
}
