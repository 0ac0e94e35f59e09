//! Caches of the children Palisade manages: one metadata-stripped reflector per
//! kind, filtered to objects labelled `app.kubernetes.io/managed-by=palisade`.

use std::sync::Arc;

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::resources::labels;

/// One cached kind.
#[derive(Clone)]
pub struct CachedKind {
    pub ar: ApiResource,
    pub store: Store<DynamicObject>,
    /// Highest resourceVersion this cache has applied from its watch.
    pub seen_rv: Arc<std::sync::atomic::AtomicU64>,
}

impl CachedKind {
    pub fn seen_rv(&self) -> u64 {
        self.seen_rv.load(std::sync::atomic::Ordering::Acquire)
    }
}

/// The caches of every child kind.
#[derive(Clone)]
pub struct ChildCache {
    pub kinds: Vec<CachedKind>,
    /// True once every store has its first full listing. One task waits on the
    /// stores and everyone else waits here: kube's `Store::wait_until_ready`
    /// keeps only the last poller's waker, so concurrent waiters on a store can
    /// sleep forever.
    ready: tokio::sync::watch::Receiver<bool>,
    /// tenant → the (kind index, namespace, name) of every cached object
    /// labelled for it, kept by the watch streams, so a reconcile finds its
    /// own children without scanning every cache (which made convergence
    /// quadratic in the number of tenants).
    index: Arc<std::sync::Mutex<TenantIndex>>,
}

type ObjKey = (usize, Option<String>, String);

/// Which cached objects belong to which tenant.
#[derive(Default)]
pub struct TenantIndex {
    by_tenant: std::collections::HashMap<String, std::collections::HashSet<ObjKey>>,
    tenant_of: std::collections::HashMap<ObjKey, String>,
}

impl TenantIndex {
    fn remove(&mut self, key: &ObjKey) {
        if let Some(t) = self.tenant_of.remove(key)
            && let Some(set) = self.by_tenant.get_mut(&t)
        {
            set.remove(key);
            if set.is_empty() {
                self.by_tenant.remove(&t);
            }
        }
    }

    fn apply(&mut self, kind: usize, obj: &DynamicObject) {
        let key = (kind, obj.namespace(), obj.name_any());
        self.remove(&key);
        if let Some(t) = labels::tenant_of(obj.metadata.labels.as_ref()) {
            self.by_tenant
                .entry(t.to_string())
                .or_default()
                .insert(key.clone());
            self.tenant_of.insert(key, t.to_string());
        }
    }

    fn clear_kind(&mut self, kind: usize) {
        let keys: Vec<ObjKey> = self
            .tenant_of
            .keys()
            .filter(|k| k.0 == kind)
            .cloned()
            .collect();
        for k in keys {
            self.remove(&k);
        }
    }
}

/// A watch stream of one child kind that keeps its cache up to date.
pub type ChildStream =
    std::pin::Pin<Box<dyn Stream<Item = Result<DynamicObject, watcher::Error>> + Send>>;

fn ar<K: Resource<DynamicType = ()>>() -> ApiResource {
    ApiResource::erase::<K>(&())
}

/// The kinds the Tenant controller manages.
pub fn tenant_child_kinds() -> Vec<ApiResource> {
    vec![
        ar::<Namespace>(),
        ar::<NetworkPolicy>(),
        ar::<ResourceQuota>(),
        ar::<LimitRange>(),
        ar::<Role>(),
        ar::<RoleBinding>(),
        ar::<Secret>(),
        ar::<ConfigMap>(),
    ]
}

/// RolePolicies, cached beside the children: every Tenant's roles depend on them.
pub fn policy_kind() -> ApiResource {
    ar::<crate::crd::RolePolicy>()
}

impl ChildCache {
    /// Every cached RolePolicy (empty when the cache does not hold them).
    pub fn policies(&self) -> Vec<crate::crd::RolePolicy> {
        let Some(kind) = self.kind(&policy_kind()) else {
            return Vec::new();
        };
        kind.store
            .state()
            .iter()
            .filter_map(|o| serde_json::to_value(o.as_ref()).ok())
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// Creates the caches and the watch streams that fill them. The streams must
    /// be polled (the controller does) for the caches to fill.
    pub fn new(
        client: &Client,
        kinds: Vec<ApiResource>,
    ) -> (Self, Vec<(ApiResource, ChildStream)>) {
        let mut cached = Vec::new();
        let mut streams = Vec::new();
        let index: Arc<std::sync::Mutex<TenantIndex>> = Arc::default();
        for (kind_idx, ar) in kinds.into_iter().enumerate() {
            let writer: Writer<DynamicObject> = Writer::new(ar.clone());
            let seen_rv = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let store = writer.as_reader();
            let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
            // Palisade's own policies are inputs, not children: watch them all.
            let cfg = if ar.kind == policy_kind().kind {
                watcher::Config::default()
            } else {
                watcher::Config::default().labels(labels::MANAGED_SELECTOR)
            };
            let stream = reflector::reflector(
                writer,
                watcher(api, cfg)
                    .default_backoff()
                    .modify(|o: &mut DynamicObject| {
                        o.managed_fields_mut().clear();
                    }),
            )
            .inspect({
                let index = index.clone();
                move |ev| {
                    let Ok(ev) = ev else { return };
                    let Ok(mut idx) = index.lock() else { return };
                    match ev {
                        watcher::Event::Apply(o) | watcher::Event::InitApply(o) => {
                            idx.apply(kind_idx, o)
                        }
                        watcher::Event::Delete(o) => {
                            idx.remove(&(kind_idx, o.namespace(), o.name_any()))
                        }
                        watcher::Event::Init => idx.clear_kind(kind_idx),
                        watcher::Event::InitDone => {}
                    }
                }
            })
            .touched_objects()
            .inspect({
                let seen = seen_rv.clone();
                move |o| {
                    let rv = o
                        .as_ref()
                        .ok()
                        .and_then(|o| o.resource_version())
                        .and_then(|v| v.parse::<u64>().ok());
                    if let Some(rv) = rv {
                        seen.fetch_max(rv, std::sync::atomic::Ordering::AcqRel);
                    }
                }
            })
            .boxed();
            cached.push(CachedKind {
                ar: ar.clone(),
                store,
                seen_rv,
            });
            streams.push((ar, stream as ChildStream));
        }
        let (ready_tx, ready) = tokio::sync::watch::channel(false);
        let stores: Vec<Store<DynamicObject>> = cached
            .iter()
            .map(|k: &CachedKind| k.store.clone())
            .collect();
        tokio::spawn(async move {
            for store in stores {
                // Only fails when the writer is dropped, i.e. at shutdown.
                if store.wait_until_ready().await.is_err() {
                    return;
                }
            }
            let _ = ready_tx.send(true);
        });
        (
            Self {
                kinds: cached,
                ready,
                index,
            },
            streams,
        )
    }

    /// The cache of one kind.
    pub fn kind(&self, ar: &ApiResource) -> Option<&CachedKind> {
        self.kinds
            .iter()
            .find(|k| k.ar.kind == ar.kind && k.ar.group == ar.group)
    }

    /// A cached object by kind, namespace and name.
    pub fn get(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<DynamicObject>> {
        let kind = self.kind(ar)?;
        let mut r = ObjectRef::new_with(name, ar.clone());
        if let Some(ns) = namespace {
            r = r.within(ns);
        }
        kind.store.get(&r)
    }

    /// Every cached object of every kind managed for `tenant`.
    pub fn owned_by(&self, tenant: &str) -> Vec<(ApiResource, Arc<DynamicObject>)> {
        let keys: Vec<ObjKey> = match self.index.lock() {
            Ok(idx) => idx
                .by_tenant
                .get(tenant)
                .map(|s| s.iter().cloned().collect())
                .unwrap_or_default(),
            Err(_) => Vec::new(),
        };
        let mut out: Vec<(ApiResource, Arc<DynamicObject>)> = keys
            .into_iter()
            .filter_map(|(kind, ns, name)| {
                let k = self.kinds.get(kind)?;
                let obj = self.get(&k.ar, ns.as_deref(), &name)?;
                // The store is the truth; the index only narrows the search.
                (labels::tenant_of(obj.metadata.labels.as_ref()) == Some(tenant))
                    .then(|| (k.ar.clone(), obj))
            })
            .collect();
        // Namespaces last: their contents are pruned before them.
        out.sort_by_key(|(ar, o)| (ar.kind == "Namespace", o.namespace(), o.name_any()));
        out
    }

    /// Highest resourceVersion the cache of `ar` has seen (0 when unknown).
    pub fn seen_rv(&self, ar: &ApiResource) -> u64 {
        self.kind(ar).map(CachedKind::seen_rv).unwrap_or(0)
    }

    /// Waits until every cache has received its first full listing.
    pub async fn wait_ready(&self) {
        let mut ready = self.ready.clone();
        // Err only when the waiting task ended without the caches syncing
        // (shutdown): nothing to wait for any more.
        let _ = ready.wait_for(|r| *r).await;
    }

    /// True once every cache has received its first full listing.
    pub fn is_ready(&self) -> bool {
        *self.ready.borrow()
    }

    /// Number of cached objects (for memory reporting).
    pub fn len(&self) -> usize {
        self.kinds.iter().map(|k| k.store.state().len()).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A cached object's name in `namespace/name` form (for messages).
    pub fn describe(obj: &DynamicObject) -> String {
        match obj.namespace() {
            Some(ns) => format!("{ns}/{}", obj.name_any()),
            None => obj.name_any(),
        }
    }
}
