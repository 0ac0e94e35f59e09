//! The resource registry: which `(group, version, plural)` triples exist, their
//! kind, scope and whether they have a status subresource. Discovery documents
//! are generated from it.

use serde_json::{Value, json};

/// One served resource type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ResourceType {
    /// API group, empty for the core group.
    pub group: String,
    /// API version, e.g. `v1`.
    pub version: String,
    /// Plural resource name used in URLs, e.g. `configmaps`.
    pub plural: String,
    /// Singular name (lower-case kind by default).
    pub singular: String,
    /// Kind, e.g. `ConfigMap`.
    pub kind: String,
    /// Whether objects live in namespaces.
    pub namespaced: bool,
    /// Whether the resource has a `/status` subresource: writes to the main
    /// resource then ignore `.status`, and writes to `/status` change only `.status`.
    pub status_subresource: bool,
}

impl ResourceType {
    /// A resource type without a status subresource.
    pub fn new(group: &str, version: &str, plural: &str, kind: &str, namespaced: bool) -> Self {
        Self {
            group: group.to_string(),
            version: version.to_string(),
            plural: plural.to_string(),
            singular: kind.to_ascii_lowercase(),
            kind: kind.to_string(),
            namespaced,
            status_subresource: false,
        }
    }

    /// Sets whether the resource has a status subresource.
    pub fn with_status(mut self, status_subresource: bool) -> Self {
        self.status_subresource = status_subresource;
        self
    }

    /// The resource type of a kube [`Resource`](kube::Resource) with a static type,
    /// e.g. a `#[derive(CustomResource)]` struct. Custom resources registered this
    /// way get a status subresource.
    pub fn of<K>() -> Self
    where
        K: kube::Resource<DynamicType = ()>,
        K::Scope: 'static,
    {
        let namespaced = std::any::TypeId::of::<K::Scope>()
            == std::any::TypeId::of::<k8s_openapi::NamespaceResourceScope>();
        Self::new(
            &K::group(&()),
            &K::version(&()),
            &K::plural(&()),
            &K::kind(&()),
            namespaced,
        )
        .with_status(true)
    }

    /// `apiVersion` string: `v1` or `group/version`.
    pub fn api_version(&self) -> String {
        if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        }
    }

    fn discovery_entries(&self) -> Vec<Value> {
        let mut out = vec![json!({
            "name": self.plural,
            "singularName": self.singular,
            "namespaced": self.namespaced,
            "kind": self.kind,
            "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
        })];
        if self.status_subresource {
            out.push(json!({
                "name": format!("{}/status", self.plural),
                "singularName": "",
                "namespaced": self.namespaced,
                "kind": self.kind,
                "verbs": ["get", "patch", "update"],
            }));
        }
        out
    }
}

/// The set of served resource types.
#[derive(Clone, Debug, Default)]
pub struct Registry {
    types: Vec<ResourceType>,
}

impl Registry {
    /// A registry with the built-in resources a tenant operator touches.
    pub fn with_builtins() -> Self {
        let mut r = Self::default();
        let t = ResourceType::new;
        for rt in [
            t("", "v1", "namespaces", "Namespace", false).with_status(true),
            t("", "v1", "configmaps", "ConfigMap", true),
            t("", "v1", "secrets", "Secret", true),
            t("", "v1", "serviceaccounts", "ServiceAccount", true),
            t("", "v1", "events", "Event", true),
            t("", "v1", "resourcequotas", "ResourceQuota", true).with_status(true),
            t("", "v1", "limitranges", "LimitRange", true),
            t(
                "",
                "v1",
                "persistentvolumeclaims",
                "PersistentVolumeClaim",
                true,
            )
            .with_status(true),
            t("", "v1", "pods", "Pod", true).with_status(true),
            t("", "v1", "services", "Service", true).with_status(true),
            t("", "v1", "nodes", "Node", false).with_status(true),
            t("events.k8s.io", "v1", "events", "Event", true),
            t(
                "networking.k8s.io",
                "v1",
                "networkpolicies",
                "NetworkPolicy",
                true,
            ),
            t("rbac.authorization.k8s.io", "v1", "roles", "Role", true),
            t(
                "rbac.authorization.k8s.io",
                "v1",
                "rolebindings",
                "RoleBinding",
                true,
            ),
            t(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterroles",
                "ClusterRole",
                false,
            ),
            t(
                "rbac.authorization.k8s.io",
                "v1",
                "clusterrolebindings",
                "ClusterRoleBinding",
                false,
            ),
            t("apps", "v1", "deployments", "Deployment", true).with_status(true),
            t("apps", "v1", "statefulsets", "StatefulSet", true).with_status(true),
            t("apps", "v1", "daemonsets", "DaemonSet", true).with_status(true),
            t("batch", "v1", "jobs", "Job", true).with_status(true),
            t("batch", "v1", "cronjobs", "CronJob", true).with_status(true),
            t("coordination.k8s.io", "v1", "leases", "Lease", true),
            t(
                "apiextensions.k8s.io",
                "v1",
                "customresourcedefinitions",
                "CustomResourceDefinition",
                false,
            )
            .with_status(true),
        ] {
            r.register(rt);
        }
        r
    }

    /// Adds (or replaces) a resource type.
    pub fn register(&mut self, rt: ResourceType) {
        self.types
            .retain(|t| !(t.group == rt.group && t.version == rt.version && t.plural == rt.plural));
        self.types.push(rt);
    }

    /// Looks a resource up by group, version and plural.
    pub fn find(&self, group: &str, version: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.version == version && t.plural == plural)
    }

    /// Looks a resource up by group and plural, any version.
    pub fn find_any_version(&self, group: &str, plural: &str) -> Option<&ResourceType> {
        self.types
            .iter()
            .find(|t| t.group == group && t.plural == plural)
    }

    /// Resolves `plural` (core group, or unique across groups) or `plural.group`.
    pub fn resolve(&self, resource: &str) -> Option<&ResourceType> {
        if let Some(rt) = self.find_any_version("", resource) {
            return Some(rt);
        }
        if let Some((plural, group)) = resource.split_once('.')
            && let Some(rt) = self.find_any_version(group, plural)
        {
            return Some(rt);
        }
        let mut it = self.types.iter().filter(|t| t.plural == resource);
        match (it.next(), it.next()) {
            (Some(rt), None) => Some(rt),
            _ => None,
        }
    }

    /// All registered types.
    pub fn types(&self) -> &[ResourceType] {
        &self.types
    }

    /// Registers the resource types declared by a `CustomResourceDefinition` object.
    pub(crate) fn register_crd(&mut self, crd: &Value) {
        let spec = &crd["spec"];
        let (Some(group), Some(plural), Some(kind)) = (
            spec["group"].as_str(),
            spec["names"]["plural"].as_str(),
            spec["names"]["kind"].as_str(),
        ) else {
            return;
        };
        let namespaced = spec["scope"].as_str() != Some("Cluster");
        let singular = spec["names"]["singular"]
            .as_str()
            .map(str::to_string)
            .unwrap_or_else(|| kind.to_ascii_lowercase());
        for v in spec["versions"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or(&[])
        {
            let Some(version) = v["name"].as_str() else {
                continue;
            };
            if v["served"].as_bool() == Some(false) {
                continue;
            }
            let mut rt = ResourceType::new(group, version, plural, kind, namespaced)
                .with_status(v["subresources"].get("status").is_some());
            rt.singular = singular.clone();
            self.register(rt);
        }
    }

    /// `/api` document.
    pub(crate) fn core_versions(&self) -> Value {
        json!({
            "kind": "APIVersions",
            "versions": ["v1"],
            "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": "127.0.0.1:6443"}],
        })
    }

    fn group_versions(&self, group: &str) -> Vec<String> {
        let mut versions: Vec<String> = Vec::new();
        for t in self.types.iter().filter(|t| t.group == group) {
            if !versions.contains(&t.version) {
                versions.push(t.version.clone());
            }
        }
        versions
    }

    fn group_doc(&self, group: &str) -> Value {
        let versions: Vec<Value> = self
            .group_versions(group)
            .into_iter()
            .map(|v| json!({"groupVersion": format!("{group}/{v}"), "version": v}))
            .collect();
        let preferred = versions.first().cloned().unwrap_or(Value::Null);
        json!({"name": group, "versions": versions, "preferredVersion": preferred})
    }

    /// `/apis` document.
    pub(crate) fn group_list(&self) -> Value {
        let mut groups: Vec<&str> = Vec::new();
        for t in self.types.iter().filter(|t| !t.group.is_empty()) {
            if !groups.contains(&t.group.as_str()) {
                groups.push(&t.group);
            }
        }
        let groups: Vec<Value> = groups.into_iter().map(|g| self.group_doc(g)).collect();
        json!({"kind": "APIGroupList", "apiVersion": "v1", "groups": groups})
    }

    /// `/apis/{group}` document, `None` if the group is unknown.
    pub(crate) fn group(&self, group: &str) -> Option<Value> {
        if self.types.iter().any(|t| t.group == group) {
            let mut doc = self.group_doc(group);
            if let Some(map) = doc.as_object_mut() {
                map.insert("kind".into(), "APIGroup".into());
                map.insert("apiVersion".into(), "v1".into());
            }
            Some(doc)
        } else {
            None
        }
    }

    /// Aggregated discovery (`apidiscovery.k8s.io/v2` `APIGroupDiscoveryList`)
    /// for the core group (`core == true`, served at `/api`) or all named groups
    /// (served at `/apis`).
    pub(crate) fn aggregated(&self, core: bool) -> Value {
        let mut groups: Vec<&str> = Vec::new();
        for t in &self.types {
            if t.group.is_empty() == core && !groups.contains(&t.group.as_str()) {
                groups.push(&t.group);
            }
        }
        let items: Vec<Value> = groups
            .into_iter()
            .map(|g| {
                let versions: Vec<Value> = self
                    .group_versions(g)
                    .into_iter()
                    .map(|v| {
                        let resources: Vec<Value> = self
                            .types
                            .iter()
                            .filter(|t| t.group == g && t.version == v)
                            .map(|t| {
                                let gvk = json!({"group": t.group, "version": t.version, "kind": t.kind});
                                let subresources: Vec<Value> = if t.status_subresource {
                                    vec![json!({"subresource": "status", "responseKind": gvk, "verbs": ["get", "patch", "update"]})]
                                } else {
                                    vec![]
                                };
                                json!({
                                    "resource": t.plural,
                                    "responseKind": gvk,
                                    "scope": if t.namespaced { "Namespaced" } else { "Cluster" },
                                    "singularResource": t.singular,
                                    "verbs": ["create", "delete", "deletecollection", "get", "list", "patch", "update", "watch"],
                                    "subresources": subresources,
                                })
                            })
                            .collect();
                        json!({"version": v, "resources": resources, "freshness": "Current"})
                    })
                    .collect();
                json!({"metadata": {"name": g}, "versions": versions})
            })
            .collect();
        json!({"kind": "APIGroupDiscoveryList", "apiVersion": "apidiscovery.k8s.io/v2", "metadata": {}, "items": items})
    }

    /// `/api/v1` or `/apis/{group}/{version}` document, `None` if unknown.
    pub(crate) fn resource_list(&self, group: &str, version: &str) -> Option<Value> {
        let resources: Vec<Value> = self
            .types
            .iter()
            .filter(|t| t.group == group && t.version == version)
            .flat_map(ResourceType::discovery_entries)
            .collect();
        if resources.is_empty() {
            return None;
        }
        let gv = if group.is_empty() {
            version.to_string()
        } else {
            format!("{group}/{version}")
        };
        Some(
            json!({"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}),
        )
    }
}
