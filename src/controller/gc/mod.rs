//! TTL garbage collection for the Tenant controller: resolves the kinds a
//! tenant's rules name through discovery, keeps one shared metadata-only watch
//! (with a reflector store) per kind in use, maps every change in a tenant
//! namespace to that tenant's reconcile, and deletes what
//! [`crate::resources::gc::select`] says is due.
//!
//! Watches:
//! - A kind is watched from the first reconcile of a tenant that names it, and
//!   the watch is shared by every tenant. Watches are metadata-only
//!   (`PartialObjectMetadata`), with `managedFields`, owner references and every
//!   annotation except Palisade's stripped before they reach the store, so
//!   thousands of objects cost a few hundred bytes each.
//! - A rule with `ageFrom: Completion` needs `status.completionTime`, which
//!   metadata watches do not carry. For such a kind (Jobs, or any custom "run"
//!   kind with `status.completionTime`) a full watch is started instead, and each
//!   object is reduced to the same slim metadata plus that one timestamp before
//!   it is stored. Only kinds a completion rule names pay for full objects on the
//!   wire; memory stays the same.
//! - Events of objects whose namespace carries a tenant's labels trigger that
//!   tenant's reconcile (through [`GcWatches::triggers`]). There is no periodic
//!   listing: the reconcile requeues exactly at the next expiry.
//!
//! Deletions go through [`crate::apply::Applier::delete`] (uid precondition,
//! Background propagation); a 409 (the object was replaced by one with the same
//! name) leaves the new object alone. A sliding one-minute window per tenant
//! enforces `maxDeletionsPerMinute`; the rest stays pending and requeues when the
//! window frees up.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::{FutureExt, Stream, StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, DynamicObject, ObjectMeta};
use kube::core::{ApiResource, PartialObjectMeta};
use kube::discovery::{Discovery, Scope, verbs};
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::{self, ObjectRef, Store, store::Writer};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use super::error::Error;
use super::tenant::Context;
use crate::crd::condition::Observed;
use crate::crd::tenant::{AgeFrom, GcStatus, Tenant};
use crate::resources::gc::{self as model, Candidate, KindKey};

/// The condition this module reports.
pub const CONDITION: &str = "GarbageCollected";

/// How long a reconcile waits for a newly started watch to list its kind.
const SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// At most one discovery refresh per this long (asked by unknown kinds).
const DISCOVERY_REFRESH: Duration = Duration::from_secs(30);
/// Recheck interval while a kind is unknown (a CRD may be installed later).
const UNKNOWN_RECHECK: Duration = Duration::from_secs(60);
/// Retry interval after a failed deletion.
const DELETE_RETRY: Duration = Duration::from_secs(30);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct WatchKey {
    group: String,
    kind: String,
    namespace: String,
    completion: bool,
}

struct KindWatch {
    store: Store<DynamicObject>,
    task: JoinHandle<()>,
}

/// GC state of one tenant, kept in memory between reconciles.
#[derive(Default)]
struct TenantState {
    window: model::RateWindow,
    deleted: u64,
    /// uids deleted by us whose removal the cache has not shown yet.
    in_flight: HashSet<String>,
    /// (uid, what) already reported by an Event (dry-run, invalid annotation).
    reported: HashSet<(String, String)>,
    /// The watches this tenant uses (one per kind and namespace).
    watches: HashSet<WatchKey>,
}

/// What discovery says about a kind name.
#[derive(Clone, Debug)]
enum Resolved {
    Found(ApiResource),
    Problem(String),
}

#[derive(Default)]
struct DiscoveryCache {
    discovery: Option<Discovery>,
    refreshed: Option<Instant>,
}

/// The shared GC watches of one controller process.
pub struct GcWatches {
    client: Client,
    namespaces: Option<super::ChildCache>,
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
    meta.owner_references = None;
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
    pub fn new(client: Client, namespaces: Option<super::ChildCache>) -> Self {
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
    fn use_watches(&self, tenant: &str, keys: HashSet<WatchKey>) {
        let old = {
            let mut tenants = lock(&self.tenants);
            let st = tenants.entry(tenant.to_string()).or_default();
            std::mem::replace(&mut st.watches, keys.clone())
        };
        self.stop_watches(old.difference(&keys));
    }

    /// Resolves kind names ('Kind', 'Kind.group', 'plural.group') through
    /// discovery, refreshing it (at most every 30 s) when a name is unknown.
    async fn resolve(&self, names: &BTreeSet<String>) -> Result<BTreeMap<String, Resolved>, Error> {
        let mut cache = self.discovery.lock().await;
        let stale = cache
            .refreshed
            .is_none_or(|t| t.elapsed() >= DISCOVERY_REFRESH);
        let needs_refresh = match &cache.discovery {
            None => true,
            Some(d) => {
                stale
                    && names
                        .iter()
                        .any(|n| matches!(resolve_in(d, n), Resolved::Problem(_)))
            }
        };
        if needs_refresh {
            let d = match Discovery::new(self.client.clone()).run_aggregated().await {
                Ok(d) => d,
                Err(e) => {
                    debug!(error = %e, "aggregated discovery failed; falling back");
                    Discovery::new(self.client.clone())
                        .run()
                        .await
                        .map_err(|source| Error::Kube {
                            action: "discovery",
                            source: Box::new(source),
                        })?
                }
            };
            cache.discovery = Some(d);
            cache.refreshed = Some(Instant::now());
        }
        let Some(d) = &cache.discovery else {
            return Ok(BTreeMap::new());
        };
        Ok(names
            .iter()
            .map(|n| (n.clone(), resolve_in(d, n)))
            .collect())
    }

    /// The store of a kind in one namespace, starting its watch if nobody
    /// watches it yet. Watches are per namespace: Palisade may list the
    /// allowed kinds only inside the namespaces it manages.
    fn store(&self, key: &WatchKey, ar: &ApiResource) -> Store<DynamicObject> {
        let (key, completion, ns) = (key.clone(), key.completion, key.namespace.clone());
        let mut watches = lock(&self.watches);
        if let Some(w) = watches.get(&key) {
            return w.store.clone();
        }
        let writer: Writer<DynamicObject> = Writer::new(ar.clone());
        let store = writer.as_reader();
        let api: Api<DynamicObject> = Api::namespaced_with(self.client.clone(), &ns, ar);
        let cfg = watcher::Config::default();
        let ar2 = ar.clone();
        let events: SlimEvents = if completion {
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
                Api::namespaced_with(self.client.clone(), &ns, ar);
            watcher(meta, cfg)
                .default_backoff()
                .map_ok(move |ev| map_event(ev, |o| slim(o.metadata, None, &ar2)))
                .boxed()
        };
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
        debug!(kind = %ar.kind, group = %ar.group, namespace = %ns, completion, "garbage collection watch started");
        watches.insert(
            key,
            KindWatch {
                store: store.clone(),
                task,
            },
        );
        store
    }
}

fn tenant_of_namespace(cache: Option<&super::ChildCache>, ns: &str) -> Option<String> {
    cache?.tenant_of(&ApiResource::erase::<Namespace>(&()), None, ns)
}

/// Resolves one kind name against a discovery snapshot.
fn resolve_in(d: &Discovery, name: &str) -> Resolved {
    let (base, group) = match name.split_once('.') {
        Some((b, g)) => (b, Some(g)),
        None => (name, None),
    };
    let mut found = Vec::new();
    for g in d.groups() {
        if group.is_some_and(|want| want != g.name()) {
            continue;
        }
        for (ar, caps) in g.recommended_resources() {
            if ar.kind.eq_ignore_ascii_case(base) || ar.plural.eq_ignore_ascii_case(base) {
                found.push((ar, caps));
            }
        }
    }
    let pick = if found.len() > 1 && group.is_none() {
        // A bare kind means the core group when it has one.
        match found.iter().position(|(ar, _)| ar.group.is_empty()) {
            Some(i) => Some(found.swap_remove(i)),
            None => {
                let groups: Vec<String> = found
                    .iter()
                    .map(|(ar, _)| format!("{}.{}", ar.kind, ar.group))
                    .collect();
                return Resolved::Problem(format!(
                    "kind {name} is ambiguous; write one of {}",
                    groups.join(", ")
                ));
            }
        }
    } else {
        found.into_iter().next()
    };
    let Some((ar, caps)) = pick else {
        return Resolved::Problem(format!("kind {name} is not served by the cluster"));
    };
    if caps.scope != Scope::Namespaced {
        return Resolved::Problem(format!(
            "kind {name} is cluster-scoped; only objects in tenant namespaces are collected"
        ));
    }
    for verb in [verbs::LIST, verbs::WATCH, verbs::DELETE] {
        if !caps.supports_operation(verb) {
            return Resolved::Problem(format!("kind {name} does not support {verb}"));
        }
    }
    Resolved::Found(ar)
}

fn candidate(key: &KindKey, obj: &DynamicObject) -> Option<Candidate> {
    let created = obj.metadata.creation_timestamp.as_ref()?.0;
    Some(Candidate {
        kind: key.clone(),
        namespace: obj.namespace()?,
        name: obj.name_any(),
        uid: obj.uid()?,
        labels: obj.labels().clone(),
        annotations: obj.annotations().clone(),
        created,
        completed: obj
            .data
            .pointer("/status/completionTime")
            .and_then(Value::as_str)
            .and_then(|s| s.parse().ok()),
        deleting: obj.metadata.deletion_timestamp.is_some(),
    })
}

/// What garbage collection concluded for one tenant.
pub struct Outcome {
    /// The `GarbageCollected` condition.
    pub observed: Observed,
    /// Counters for `status.garbageCollection` (None when GC is not configured).
    pub status: Option<GcStatus>,
    /// The next expiry (or retry): the controller requeues exactly then.
    pub next_deadline: Option<Timestamp>,
    /// False only for problems that make the tenant not Ready (unknown kinds,
    /// unusable rules).
    pub healthy: bool,
}

/// An Event; `about` (the object concerned) makes Events about different
/// objects distinct (the recorder folds Events with the same key into a series).
fn ev(
    type_: EventType,
    reason: &str,
    note: String,
    about: Option<k8s_openapi::api::core::v1::ObjectReference>,
) -> Event {
    Event {
        type_,
        reason: reason.to_string(),
        note: Some(note.chars().take(1000).collect()),
        action: "GarbageCollect".to_string(),
        secondary: about,
    }
}

async fn publish(ctx: &Context, on: &k8s_openapi::api::core::v1::ObjectReference, e: Event) {
    super::events::publish(&ctx.recorder, on, e).await;
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Collects what is due in `tenant`'s ready namespaces.
pub async fn reconcile(
    ctx: &Context,
    tenant: &Tenant,
    ready_ns: &BTreeSet<String>,
) -> Result<Outcome, Error> {
    let name = tenant.name_any();
    let Some(spec) = &tenant.spec.garbage_collection else {
        ctx.gc.forget(&name);
        return Ok(Outcome {
            observed: Observed::new(
                CONDITION,
                true,
                "NotConfigured",
                "spec.garbageCollection is not set",
            ),
            status: None,
            next_deadline: None,
            healthy: true,
        });
    };
    let previous = tenant
        .status
        .as_ref()
        .and_then(|s| s.garbage_collection.clone())
        .unwrap_or_default();
    if tenant.spec.cordoned {
        return Ok(Outcome {
            observed: Observed::new(
                CONDITION,
                true,
                "Cordoned",
                "tenant is cordoned: nothing is deleted",
            ),
            status: Some(previous),
            next_deadline: None,
            healthy: true,
        });
    }
    let now = ctx.clock.now();

    // Kinds: the rules', and the annotation kinds (explicit, or the defaults).
    let mut names: BTreeSet<String> = spec.rules.iter().flat_map(|r| r.kinds.clone()).collect();
    let explicit_annotation_kinds = !spec.annotation_kinds.is_empty();
    let annotation_names: BTreeSet<String> = if explicit_annotation_kinds {
        spec.annotation_kinds.iter().cloned().collect()
    } else {
        model::DEFAULT_ANNOTATION_KINDS
            .iter()
            .map(|s| s.to_string())
            .chain(names.iter().cloned())
            .collect()
    };
    let required: BTreeSet<String> = if explicit_annotation_kinds {
        names.union(&annotation_names).cloned().collect()
    } else {
        names.clone()
    };
    names.extend(annotation_names.iter().cloned());
    let resolved = ctx.gc.resolve(&names).await?;
    let mut problems: Vec<String> = Vec::new();
    let mut unknown_kind = false;
    let mut not_allowed = false;
    let mut ars: BTreeMap<String, ApiResource> = BTreeMap::new();
    let allowed = |ar: &ApiResource| {
        ctx.settings
            .gc_kinds
            .iter()
            .any(|(g, r)| *g == ar.group && *r == ar.plural)
    };
    for (n, r) in &resolved {
        match r {
            Resolved::Found(ar) if allowed(ar) => {
                ars.insert(n.clone(), ar.clone());
            }
            Resolved::Found(ar) if required.contains(n) => {
                not_allowed = true;
                problems.push(format!(
                    "kind {n} ({}) is not in the operator's garbage-collection allow-list; \
                     the platform team can add it (Helm value rbac.garbageCollectionKinds, which grants Palisade delete on it in tenant namespaces)",
                    if ar.group.is_empty() {
                        ar.plural.clone()
                    } else {
                        format!("{}.{}", ar.plural, ar.group)
                    }
                ));
            }
            Resolved::Found(_) => {}
            Resolved::Problem(p) if required.contains(n) => {
                unknown_kind = true;
                problems.push(p.clone());
            }
            Resolved::Problem(_) => {}
        }
    }
    let key_of = |n: &String| ars.get(n).map(|ar| model::kind_key(&ar.group, &ar.kind));

    // Rules over resolved kinds.
    let mut rules = Vec::new();
    for r in &spec.rules {
        let kinds: BTreeSet<KindKey> = r.kinds.iter().filter_map(key_of).collect();
        match model::Rule::compile(r, kinds) {
            Ok(rule) => rules.push(rule),
            Err(e) => {
                problems.push(e.to_string());
            }
        }
    }
    let annotation_kinds: BTreeSet<KindKey> = annotation_names.iter().filter_map(key_of).collect();

    // One watch per kind in use and namespace (full objects only where
    // completion is needed).
    let mut stores: Vec<(KindKey, ApiResource, Store<DynamicObject>)> = Vec::new();
    let mut keys: HashSet<WatchKey> = HashSet::new();
    let kinds: BTreeMap<KindKey, &ApiResource> = ars
        .values()
        .map(|ar| (model::kind_key(&ar.group, &ar.kind), ar))
        .collect();
    for (kind, ar) in kinds {
        let completion = rules
            .iter()
            .any(|r| r.age_from == AgeFrom::Completion && r.kinds.contains(&kind));
        for ns in ready_ns {
            let key = WatchKey {
                group: ar.group.clone(),
                kind: ar.kind.clone(),
                namespace: ns.clone(),
                completion,
            };
            stores.push((kind.clone(), ar.clone(), ctx.gc.store(&key, ar)));
            keys.insert(key);
        }
    }
    ctx.gc.use_watches(&name, keys);
    // Wait for the listings together (a new namespace's watches start now).
    let _ = tokio::time::timeout(
        SYNC_TIMEOUT,
        futures::future::join_all(stores.iter().map(|(_, _, s)| s.wait_until_ready())),
    )
    .await;
    let mut unsynced = false;
    let mut candidates = Vec::new();
    let mut objects: Vec<(ApiResource, Arc<DynamicObject>)> = Vec::new();
    for (key, ar, store) in &stores {
        if store
            .wait_until_ready()
            .now_or_never()
            .is_none_or(|r| r.is_err())
        {
            unsynced = true;
            continue;
        }
        for obj in store.state() {
            if !obj.namespace().is_some_and(|ns| ready_ns.contains(&ns)) {
                continue;
            }
            if let Some(c) = candidate(key, &obj) {
                candidates.push(c);
                objects.push((ar.clone(), obj));
            }
        }
    }
    let selection = model::select(&candidates, &rules, &annotation_kinds, ready_ns, now);

    // Bookkeeping under the lock: what is new to report, what may be deleted.
    let present: HashSet<&str> = candidates.iter().map(|c| c.uid.as_str()).collect();
    let (to_report, to_delete, pending_start) = {
        let mut tenants = lock(&ctx.gc.tenants);
        let st = tenants.entry(name.clone()).or_default();
        st.deleted = st.deleted.max(previous.deleted);
        st.in_flight.retain(|u| present.contains(u.as_str()));
        st.reported.retain(|(u, _)| present.contains(u.as_str()));
        let mut report = Vec::new();
        for inv in &selection.invalid {
            let c = &candidates[inv.index];
            let what = format!("invalid:{}={}", inv.annotation, inv.value);
            if st.reported.insert((c.uid.clone(), what)) {
                report.push((
                    inv.index,
                    ev(
                        EventType::Warning,
                        "InvalidAnnotation",
                        format!(
                            "{}: {}; ignored, and the object is not garbage collected until it is fixed",
                            inv.annotation, inv.message
                        ),
                        None,
                    ),
                    false,
                ));
            }
        }
        let due: Vec<&model::Due> = selection
            .due
            .iter()
            .filter(|d| !st.in_flight.contains(&candidates[d.index].uid))
            .collect();
        let mut delete = Vec::new();
        if spec.dry_run {
            for d in &due {
                let c = &candidates[d.index];
                if st.reported.insert((c.uid.clone(), "dry-run".into())) {
                    report.push((
                        d.index,
                        ev(
                            EventType::Normal,
                            "WouldDelete",
                            format!(
                                "dry run: would delete {} {}/{} ({})",
                                objects[d.index].0.kind, c.namespace, c.name, d.why
                            ),
                            Some(objects[d.index].1.object_ref(&objects[d.index].0)),
                        ),
                        true,
                    ));
                }
            }
        } else {
            let budget = st.window.budget(now, spec.max_deletions_per_minute);
            delete = due.iter().take(budget).map(|d| (*d).clone()).collect();
        }
        (report, delete, due.len())
    };

    let tenant_ref = tenant.object_ref(&());
    for (index, e, on_tenant) in to_report {
        if on_tenant {
            publish(ctx, &tenant_ref, e).await;
        } else {
            let (ar, obj) = &objects[index];
            publish(ctx, &obj.object_ref(ar), e).await;
        }
    }

    let mut deleted_now = 0u64;
    let mut failed = Vec::new();
    for d in &to_delete {
        let (ar, obj) = &objects[d.index];
        let c = &candidates[d.index];
        let what = format!("{} {}/{}", ar.kind, c.namespace, c.name);
        match ctx.applier.delete(ar, obj).await {
            Ok(()) => {
                deleted_now += 1;
                {
                    let mut tenants = lock(&ctx.gc.tenants);
                    let st = tenants.entry(name.clone()).or_default();
                    st.window.record(now);
                    st.deleted += 1;
                    st.in_flight.insert(c.uid.clone());
                }
                info!(tenant = %name, object = %what, why = %d.why, "garbage collected");
                publish(
                    ctx,
                    &tenant_ref,
                    ev(
                        EventType::Normal,
                        "ObjectDeleted",
                        format!("deleted {what} ({})", d.why),
                        Some(obj.object_ref(ar)),
                    ),
                )
                .await;
            }
            Err(e) if e.code() == Some(409) => {
                // Replaced by a new object with the same name: not ours to delete.
                info!(tenant = %name, object = %what, "object changed since it was seen; not deleted");
            }
            Err(e) => {
                warn!(tenant = %name, object = %what, reason = e.reason(), error = %e, "garbage collection delete failed");
                failed.push(format!("{what}: {}", e.reason()));
            }
        }
    }

    let (deleted_total, next_free) = {
        let mut tenants = lock(&ctx.gc.tenants);
        let st = tenants.entry(name.clone()).or_default();
        (st.deleted, st.window.next_free())
    };
    let pending = (pending_start as u64).saturating_sub(deleted_now);
    let rate_limited = !spec.dry_run && pending > failed.len() as u64;
    let mut next = selection.next_expiry;
    if rate_limited {
        next = earliest(next, next_free.or(Some(plus(now, Duration::from_secs(1)))));
    }
    if !failed.is_empty() {
        next = earliest(next, Some(plus(now, DELETE_RETRY)));
    }
    if !problems.is_empty() {
        next = earliest(next, Some(plus(now, UNKNOWN_RECHECK)));
    }
    if unsynced {
        next = earliest(next, Some(plus(now, Duration::from_secs(5))));
    }

    let healthy = problems.is_empty();
    let observed = if !problems.is_empty() {
        Observed::new(
            CONDITION,
            false,
            if unknown_kind {
                "UnknownKind"
            } else if not_allowed {
                "KindNotAllowed"
            } else {
                "InvalidRule"
            },
            problems.join("; "),
        )
    } else if !failed.is_empty() {
        Observed::new(
            CONDITION,
            false,
            "DeleteFailed",
            format!("could not delete {}", failed.join(", ")),
        )
    } else if spec.dry_run {
        Observed::new(
            CONDITION,
            true,
            "DryRun",
            format!("dry run: {pending} object(s) would be deleted"),
        )
    } else if rate_limited {
        Observed::new(
            CONDITION,
            true,
            "RateLimited",
            format!(
                "{pending} due object(s) wait for the deletion budget (maxDeletionsPerMinute: {})",
                spec.max_deletions_per_minute
            ),
        )
    } else {
        Observed::new(
            CONDITION,
            true,
            "Collected",
            "expired objects are deleted as they expire",
        )
    };
    Ok(Outcome {
        observed,
        status: Some(GcStatus {
            deleted: deleted_total,
            pending,
            next_expiry: selection.next_expiry.map(Time),
        }),
        next_deadline: next,
        healthy,
    })
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
}
