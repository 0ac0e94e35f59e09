//! The shared-watch manager: one watch (with a reflector store) per kind and
//! tenant namespace in use, shared by every tenant, started on first use and
//! stopped when no tenant uses it any more; every change in a tenant namespace
//! becomes a trigger for that tenant's reconcile.
//!
//! - Watches are metadata-only (`PartialObjectMetadata`), with `managedFields`,
//!   owner references (but those to `palisade.dev` objects, which protect the
//!   object), finalizers and every annotation except Palisade's stripped before
//!   they reach the store ([`slim`]), so thousands of objects cost a few
//!   hundred bytes each.
//! - A rule with `ageFrom: Completion` needs `status.completionTime`, which
//!   metadata watches do not carry. For such a kind (Jobs, or any custom "run"
//!   kind with `status.completionTime`) a full watch is started instead, and
//!   each object is reduced to the same slim metadata plus that one timestamp
//!   before it is stored. Only kinds a completion rule names pay for full
//!   objects on the wire; memory stays the same.
//! - Watches are per namespace: Palisade may list the allowed kinds only inside
//!   the namespaces it manages.
//!
//! The manager also keeps each tenant's GC bookkeeping between reconciles
//! ([`TenantState`]): it lives as long as the tenant's watches.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Mutex, MutexGuard, PoisonError};

use futures::{Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DynamicObject, ObjectMeta};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::debug;

use super::Error;
use super::discovery::{DiscoveryCache, Resolved};
use crate::controller::ChildCache;
use crate::crd::tenant::Tenant;
use crate::resources::gc as model;

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

/// One watch: a kind in one namespace, full objects when `completion`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub(super) struct WatchKey {
    pub group: String,
    pub kind: String,
    pub namespace: String,
    pub completion: bool,
}

struct KindWatch {
    store: Store<DynamicObject>,
    task: JoinHandle<()>,
}

/// GC state of one tenant, kept in memory between reconciles.
#[derive(Default)]
pub(super) struct TenantState {
    pub window: model::RateWindow,
    pub deleted: u64,
    /// uids deleted by us whose removal the cache has not shown yet.
    pub in_flight: HashSet<String>,
    /// (uid, what) already reported by an Event (dry-run, invalid annotation).
    pub reported: HashSet<(String, String)>,
    /// The watches this tenant uses (one per kind and namespace).
    watches: HashSet<WatchKey>,
}

/// The shared GC watches of one controller process.
pub struct GcWatches {
    client: Client,
    namespaces: Option<ChildCache>,
    discovery: tokio::sync::Mutex<DiscoveryCache>,
    watches: Mutex<HashMap<WatchKey, KindWatch>>,
    tenants: Mutex<HashMap<String, TenantState>>,
    tx: mpsc::UnboundedSender<String>,
    rx: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
}

impl Drop for GcWatches {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Reduces an object's metadata to what GC needs.
fn slim(mut meta: ObjectMeta, completed: Option<Value>, ar: &ApiResource) -> DynamicObject {
    meta.managed_fields = None;
    if let Some(refs) = meta.owner_references.as_mut() {
        refs.retain(|o| model::palisade_owner(&o.api_version));
        if refs.is_empty() {
            meta.owner_references = None;
        }
    }
    meta.finalizers = None;
    if let Some(a) = meta.annotations.as_mut() {
        a.retain(|k, _| k.starts_with("palisade.dev/"));
        if a.is_empty() {
            meta.annotations = None;
        }
    }
    let data = match completed {
        Some(t) => json!({ "status": { "completionTime": t } }),
        None => Value::Null,
    };
    DynamicObject {
        types: Some(kube::core::TypeMeta {
            api_version: ar.api_version.clone(),
            kind: ar.kind.clone(),
        }),
        metadata: meta,
        data,
    }
}

fn map_event<A, B>(ev: watcher::Event<A>, f: impl Fn(A) -> B) -> watcher::Event<B> {
    match ev {
        watcher::Event::Apply(a) => watcher::Event::Apply(f(a)),
        watcher::Event::Delete(a) => watcher::Event::Delete(f(a)),
        watcher::Event::Init => watcher::Event::Init,
        watcher::Event::InitApply(a) => watcher::Event::InitApply(f(a)),
        watcher::Event::InitDone => watcher::Event::InitDone,
    }
}

type SlimEvents = std::pin::Pin<
    Box<dyn Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send>,
>;

impl GcWatches {
    /// GC watches for `client`; `namespaces` is the managed-namespace cache used
    /// to map an object's namespace to its tenant.
    pub fn new(client: Client, namespaces: Option<ChildCache>) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        Self {
            client,
            namespaces,
            discovery: tokio::sync::Mutex::new(DiscoveryCache::default()),
            watches: Mutex::new(HashMap::new()),
            tenants: Mutex::new(HashMap::new()),
            tx,
            rx: Mutex::new(Some(rx)),
        }
    }

    /// Tenants to reconcile because an object in one of their namespaces
    /// changed. Can be taken once (by the controller); later calls get an empty
    /// stream.
    pub fn triggers(&self) -> impl Stream<Item = ObjectRef<Tenant>> + Send + 'static {
        let rx = lock(&self.rx).take();
        futures::stream::unfold(rx, |rx| async move {
            let mut rx = rx?;
            let name = rx.recv().await?;
            Some((ObjectRef::<Tenant>::new(&name), Some(rx)))
        })
    }

    /// Stops every watch (at shutdown).
    pub fn stop(&self) {
        for (_, w) in lock(&self.watches).drain() {
            w.task.abort();
        }
    }

    /// Kinds being watched (in any namespace), as `group/Kind` (with
    /// `+completion` for full watches).
    pub fn watched(&self) -> Vec<String> {
        let v: BTreeSet<String> = lock(&self.watches)
            .keys()
            .map(|k| {
                let base = model::kind_key(&k.group, &k.kind);
                if k.completion {
                    format!("{base}+completion")
                } else {
                    base
                }
            })
            .collect();
        v.into_iter().collect()
    }

    /// Number of objects held by the GC caches (for memory reporting).
    pub fn cached_objects(&self) -> usize {
        lock(&self.watches)
            .values()
            .map(|w| w.store.state().len())
            .sum()
    }

    /// Serialized size of every object the GC caches hold (for memory reporting).
    pub fn cached_bytes(&self) -> usize {
        lock(&self.watches)
            .values()
            .flat_map(|w| w.store.state())
            .map(|o| serde_json::to_vec(o.as_ref()).map(|v| v.len()).unwrap_or(0))
            .sum()
    }

    /// Resolves kind names through the shared discovery snapshot.
    pub(super) async fn resolve(
        &self,
        names: &BTreeSet<String>,
    ) -> Result<std::collections::BTreeMap<String, Resolved>, Error> {
        self.discovery
            .lock()
            .await
            .resolve(&self.client, names)
            .await
    }

    /// Runs `f` on `tenant`'s bookkeeping (created on first use).
    pub(super) fn with_tenant<R>(&self, tenant: &str, f: impl FnOnce(&mut TenantState) -> R) -> R {
        let mut tenants = lock(&self.tenants);
        f(tenants.entry(tenant.to_string()).or_default())
    }

    /// Drops `tenant`'s bookkeeping and stops the watches it used.
    pub(crate) fn forget(&self, tenant: &str) {
        let gone = lock(&self.tenants).remove(tenant);
        if let Some(st) = gone {
            self.stop_watches(st.watches.iter());
        }
    }

    fn stop_watches<'a>(&self, keys: impl Iterator<Item = &'a WatchKey>) {
        let mut watches = lock(&self.watches);
        for key in keys {
            if let Some(w) = watches.remove(key) {
                w.task.abort();
            }
        }
    }

    /// Records the watches `tenant` uses now and stops those it no longer uses.
    pub(super) fn use_watches(&self, tenant: &str, keys: HashSet<WatchKey>) {
        let old = self.with_tenant(tenant, |st| {
            std::mem::replace(&mut st.watches, keys.clone())
        });
        self.stop_watches(old.difference(&keys));
    }

    /// The store of a kind in one namespace, starting its watch if nobody
    /// watches it yet.
    pub(super) fn store(&self, key: &WatchKey, ar: &ApiResource) -> Store<DynamicObject> {
        let mut watches = lock(&self.watches);
        if let Some(w) = watches.get(key) {
            return w.store.clone();
        }
        let writer: Writer<DynamicObject> = Writer::new(ar.clone());
        let store = writer.as_reader();
        let events = self.slim_events(key, ar);
        let tx = self.tx.clone();
        let namespaces = self.namespaces.clone();
        let kind = ar.kind.clone();
        let task = tokio::spawn(async move {
            reflector::reflector(writer, events)
                .touched_objects()
                .for_each(|res| {
                    match res {
                        Ok(obj) => {
                            if let Some(t) = obj
                                .namespace()
                                .and_then(|ns| tenant_of_namespace(namespaces.as_ref(), &ns))
                            {
                                let _ = tx.send(t);
                            }
                        }
                        Err(e) => debug!(kind = %kind, error = %e, "gc watch"),
                    }
                    futures::future::ready(())
                })
                .await;
        });
        debug!(kind = %ar.kind, group = %ar.group, namespace = %key.namespace, completion = key.completion, "garbage collection watch started");
        watches.insert(
            key.clone(),
            KindWatch {
                store: store.clone(),
                task,
            },
        );
        store
    }

    /// The watch events of one kind in one namespace, slimmed: a metadata
    /// watch, or a full watch reduced to metadata plus `completionTime`.
    fn slim_events(&self, key: &WatchKey, ar: &ApiResource) -> SlimEvents {
        let cfg = watcher::Config::default();
        let ar2 = ar.clone();
        if key.completion {
            let api: Api<DynamicObject> =
                Api::namespaced_with(self.client.clone(), &key.namespace, ar);
            watcher(api, cfg)
                .default_backoff()
                .map_ok(move |ev| {
                    map_event(ev, |o: DynamicObject| {
                        let done = o.data.pointer("/status/completionTime").cloned();
                        slim(o.metadata, done, &ar2)
                    })
                })
                .boxed()
        } else {
            let meta: Api<PartialObjectMeta<DynamicObject>> =
                Api::namespaced_with(self.client.clone(), &key.namespace, ar);
            watcher(meta, cfg)
                .default_backoff()
                .map_ok(move |ev| map_event(ev, |o| slim(o.metadata, None, &ar2)))
                .boxed()
        }
    }
}

fn tenant_of_namespace(cache: Option<&ChildCache>, ns: &str) -> Option<String> {
    cache?.tenant_of(&ApiResource::erase::<Namespace>(&()), None, ns)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slim_keeps_only_what_gc_reads() {
        let ar = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let meta: ObjectMeta = serde_json::from_value(json!({
            "name": "x", "namespace": "a", "uid": "u",
            "labels": {"l": "1"},
            "annotations": {"palisade.dev/ttl": "1h", "kubectl.kubernetes.io/last-applied-configuration": "{...}"},
            "managedFields": [{"manager": "kubectl"}],
            "ownerReferences": [{"apiVersion": "v1", "kind": "X", "name": "o", "uid": "p"}],
        }))
        .expect("meta");
        let o = slim(meta, Some(json!("2027-01-01T00:00:00Z")), &ar);
        assert_eq!(o.annotations().len(), 1);
        assert!(o.metadata.managed_fields.is_none());
        assert!(o.metadata.owner_references.is_none());
        assert_eq!(o.labels().len(), 1);
        assert_eq!(o.data["status"]["completionTime"], "2027-01-01T00:00:00Z");
    }

    #[test]
    fn slim_keeps_palisade_owners_only() {
        let ar = ApiResource::erase::<k8s_openapi::api::core::v1::ConfigMap>(&());
        let meta: ObjectMeta = serde_json::from_value(json!({
            "name": "x", "namespace": "a", "uid": "u",
            "ownerReferences": [
                {"apiVersion": "v1", "kind": "X", "name": "o", "uid": "p"},
                {"apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule", "name": "s", "uid": "q"},
            ],
        }))
        .expect("meta");
        let o = slim(meta, None, &ar);
        let refs = o.metadata.owner_references.expect("palisade owner kept");
        assert_eq!(refs.len(), 1);
        assert_eq!(refs[0].kind, "BackupSchedule");
    }
}
