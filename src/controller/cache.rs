//! Caches of the children Palisade manages, filtered to objects labelled
//! `app.kubernetes.io/managed-by=palisade`.
//!
//! Memory is the constraint at scale (a thousand tenants own ~25,000
//! children), so this is not kube's reflector `Store<DynamicObject>`, whose
//! entries hold a parsed JSON tree (several KiB per object) under a key that
//! repeats the whole `ApiResource`. Each object is kept as its compact JSON
//! text with managedFields and the last-applied annotation stripped, plus the
//! two facts read on every event (resourceVersion, owning tenant); it is
//! parsed only when a reconcile reads it. One lock guards the objects and the
//! tenant index together, so the two can never disagree.
//!
//! Secrets and ConfigMaps are watched per managed namespace (one watch each,
//! started when the namespace appears in the Namespace cache, stopped when it
//! leaves): Palisade holds no cluster-wide access to them (see
//! [`crate::operator_rbac`]). Only namespaces annotated
//! `palisade.dev/secrets-watched` other than `"false"` are watched: the
//! Tenant controller sets `"false"` where it generates nothing and holds
//! nothing, so a namespace without generated Secrets costs no watch, no list
//! and no connection. Every other kind is one cluster-wide, label-selected
//! watch.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use futures::{Stream, StreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, LimitRange, Namespace, ResourceQuota, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use kube::api::{Api, DynamicObject};
use kube::core::ApiResource;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};

use crate::apply::api_message;
use crate::resources::{labels, rbac};

/// Touched objects waiting for the controller, per kind.
const TRIGGER_BUFFER: usize = 1024;

/// Written by `kubectl apply`; can be as large as the object and is never read.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";

/// Marks a touched object (never a cached or written one) whose change was
/// its status alone, written by someone else: on a real cluster the quota
/// controller rewrites every ResourceQuota's status after it is created and on
/// every usage change. Only a reconcile that reads that status needs it.
const STATUS_ONLY: &str = "palisade.dev/status-only-change";

/// Whether a touched object from a child stream changed only in its status.
pub fn is_status_only(obj: &DynamicObject) -> bool {
    obj.annotations().contains_key(STATUS_ONLY)
}

/// The object as JSON without what changes on every write (resourceVersion)
/// and without its status.
fn without_status(mut v: serde_json::Value) -> serde_json::Value {
    if let Some(m) = v.as_object_mut() {
        m.remove("status");
        if let Some(meta) = m.get_mut("metadata").and_then(|x| x.as_object_mut()) {
            meta.remove("resourceVersion");
        }
    }
    v
}

/// An object's metadata; serde skips the rest without building it.
#[derive(serde::Deserialize)]
struct MetadataOnly {
    metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
}

/// The metadata of a cached entry (its JSON parsed for `metadata` only).
fn metadata_of(
    entry: &Entry,
) -> Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta> {
    serde_json::from_str::<MetadataOnly>(&entry.json)
        .ok()
        .map(|m| m.metadata)
}

/// One cached object.
struct Entry {
    /// The object as compact JSON.
    json: Box<str>,
    /// `palisade.dev/tenant` when the object is managed by Palisade.
    tenant: Option<Box<str>>,
    /// Namespaces: whether their Secrets and ConfigMaps are watched
    /// ([`labels::SECRETS_WATCHED`]); read on every Namespace event.
    secrets_watched: bool,
}

impl Entry {
    fn bytes(&self, key: &str) -> usize {
        // Heap text plus the map slot, the Arc and the index entry.
        self.json.len() + 2 * key.len() + self.tenant.as_ref().map_or(0, |t| t.len()) + 128
    }
}

/// `namespace/name`, or `name` for cluster-scoped objects.
fn key_of(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Every cached object, by kind, plus which belong to which tenant.
#[derive(Default)]
struct Inner {
    kinds: Vec<HashMap<Box<str>, Arc<Entry>>>,
    /// tenant → (kind index, key) of every object labelled for it, so a
    /// reconcile finds its own children without scanning every cache.
    by_tenant: HashMap<Box<str>, HashSet<(usize, Box<str>)>>,
    bytes: usize,
    /// Cluster-wide kinds that have received their first full listing.
    listed: HashSet<usize>,
}

impl Inner {
    fn unindex(&mut self, kind: usize, key: &str, entry: &Entry) {
        self.bytes = self.bytes.saturating_sub(entry.bytes(key));
        if let Some(t) = &entry.tenant
            && let Some(set) = self.by_tenant.get_mut(t)
        {
            set.remove(&(kind, Box::from(key)));
            if set.is_empty() {
                self.by_tenant.remove(t);
            }
        }
    }

    fn index(&mut self, kind: usize, key: &str, entry: &Entry) {
        self.bytes += entry.bytes(key);
        if let Some(t) = &entry.tenant {
            self.by_tenant
                .entry(t.clone())
                .or_default()
                .insert((kind, Box::from(key)));
        }
    }

    fn insert(&mut self, kind: usize, key: Box<str>, entry: Arc<Entry>) {
        self.remove(kind, &key);
        self.index(kind, &key, &entry);
        self.kinds[kind].insert(key, entry);
    }

    fn remove(&mut self, kind: usize, key: &str) {
        if let Some(old) = self.kinds[kind].remove(key) {
            self.unindex(kind, key, &old);
        }
    }

    /// Swaps in a listing of one namespace of a per-namespace kind.
    fn replace_namespace(
        &mut self,
        kind: usize,
        namespace: &str,
        objects: HashMap<Box<str>, Arc<Entry>>,
    ) {
        let prefix = format!("{namespace}/");
        let old: Vec<Box<str>> = self.kinds[kind]
            .keys()
            .filter(|k| k.starts_with(&prefix))
            .cloned()
            .collect();
        for key in old {
            self.remove(kind, &key);
        }
        for (key, entry) in objects {
            self.insert(kind, key, entry);
        }
    }

    fn replace_kind(&mut self, kind: usize, objects: HashMap<Box<str>, Arc<Entry>>) {
        self.listed.insert(kind);
        let old = std::mem::take(&mut self.kinds[kind]);
        for (key, entry) in &old {
            self.unindex(kind, key, entry);
        }
        for (key, entry) in &objects {
            self.index(kind, key, entry);
        }
        self.kinds[kind] = objects;
    }
}

/// One cached kind.
#[derive(Clone)]
pub struct CachedKind {
    pub ar: ApiResource,
    /// Highest resourceVersion this cache has applied from its watch.
    seen_rv: Arc<AtomicU64>,
}

impl CachedKind {
    pub fn seen_rv(&self) -> u64 {
        self.seen_rv.load(Ordering::Acquire)
    }
}

/// The caches of every child kind.
#[derive(Clone)]
pub struct ChildCache {
    pub kinds: Vec<CachedKind>,
    inner: Arc<RwLock<Inner>>,
    /// Number of kinds that have received their first full listing.
    synced: tokio::sync::watch::Receiver<usize>,
    /// Per-namespace kinds: the namespaces whose watch has listed.
    listed: Vec<Arc<Mutex<HashSet<String>>>>,
    /// Namespaces a reconcile found unlisted: their listing wakes the tenant.
    waiting: Arc<Mutex<HashSet<String>>>,
    /// Whether a namespace's Secrets and ConfigMaps are watched only once
    /// Palisade's own RoleBinding is in it (see [`ChildCache::grant_gate`]).
    gate: Arc<tokio::sync::watch::Sender<Option<bool>>>,
    /// How the watches fare (errors are kept here, never sent on).
    pub health: Arc<WatchHealth>,
}

/// The managed namespaces, each with whether Palisade's own RoleBinding
/// ([`rbac::OPERATOR_BINDING`]) is in it; `None` until both kinds listed.
type Managed = Option<Vec<(String, bool)>>;

/// The objects one child kind's watch touched (metadata only), for the
/// controller's triggers; the cache is kept by a task of its own.
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
        ar::<ClusterRole>(),
        ar::<ClusterRoleBinding>(),
        ar::<Secret>(),
        ar::<ConfigMap>(),
    ]
}

/// Cluster-scoped kinds among [`tenant_child_kinds`].
pub fn is_cluster_scoped(ar: &ApiResource) -> bool {
    matches!(
        (ar.group.as_str(), ar.kind.as_str()),
        ("", "Namespace")
            | (
                "rbac.authorization.k8s.io",
                "ClusterRole" | "ClusterRoleBinding"
            )
    )
}

/// Kinds watched per managed namespace rather than cluster-wide: tenant data
/// Palisade may read only inside the namespaces it manages.
pub fn is_watched_per_namespace(ar: &ApiResource) -> bool {
    ar.group.is_empty() && (ar.kind == "Secret" || ar.kind == "ConfigMap")
}

/// Reduces a watched object to what is cached: no managedFields, no
/// last-applied annotation, and no apiVersion/kind (the kind is the cache's;
/// the real API server sends them in watch events but not in the items of a
/// list, so keeping them would make listed and watched copies differ).
fn slim(mut obj: DynamicObject) -> DynamicObject {
    obj.types = None;
    obj.metadata.managed_fields = None;
    if let Some(a) = obj.metadata.annotations.as_mut() {
        a.remove(LAST_APPLIED);
    }
    obj
}

fn entry_of(obj: &DynamicObject) -> Option<(Box<str>, Arc<Entry>)> {
    let json = serde_json::to_string(obj).ok()?;
    let key = key_of(
        obj.metadata.namespace.as_deref(),
        obj.metadata.name.as_deref()?,
    );
    let tenant = labels::tenant_of(obj.metadata.labels.as_ref()).map(Box::from);
    Some((
        key.into_boxed_str(),
        Arc::new(Entry {
            json: json.into_boxed_str(),
            tenant,
            secrets_watched: labels::secrets_watched(obj.metadata.annotations.as_ref()),
        }),
    ))
}

/// Called after each change of one kind's cached set.
type OnChange = Box<dyn Fn(&Inner) + Send + Sync>;

/// The state one kind's stream keeps between events.
struct KindFeed {
    kind: usize,
    inner: Arc<RwLock<Inner>>,
    seen_rv: Arc<AtomicU64>,
    /// The one namespace this feed watches (per-namespace kinds), and the
    /// index of the Namespace kind (to name the namespace's tenant).
    namespace: Option<String>,
    namespace_kind: Option<usize>,
    /// Namespaces a reconcile is waiting for: their first listing wakes
    /// their tenant.
    wake_tenant: Option<Arc<Mutex<HashSet<String>>>>,
    /// Called after the first complete listing.
    on_first_listing: Option<Box<dyn FnOnce() + Send + Sync>>,
    /// Called after each change of the cached set of this kind (Namespaces:
    /// the per-namespace watches follow it).
    on_change: Option<OnChange>,
    /// Objects of a (re)listing in progress; swapped in at its end.
    listing: Option<HashMap<Box<str>, Arc<Entry>>>,
    health: Arc<WatchHealth>,
}

impl KindFeed {
    /// An object that maps to the tenant of `namespace` (labels only).
    fn tenant_trigger(&self, namespace: &str) -> Option<DynamicObject> {
        let inner = self.inner.read().ok()?;
        let tenant = inner
            .kinds
            .get(self.namespace_kind?)?
            .get(namespace)?
            .tenant
            .clone()?;
        Some(DynamicObject {
            types: None,
            metadata: kube::api::ObjectMeta {
                name: Some("namespace-listed".to_string()),
                namespace: Some(namespace.to_string()),
                labels: Some(labels::managed(&tenant)),
                ..Default::default()
            },
            data: serde_json::Value::Null,
        })
    }

    fn changed(&self, inner: &Inner) {
        if let Some(f) = &self.on_change {
            f(inner);
        }
    }

    fn note_rv(&self, obj: &DynamicObject) {
        if let Some(rv) = obj.resource_version().and_then(|v| v.parse::<u64>().ok()) {
            self.seen_rv.fetch_max(rv, Ordering::AcqRel);
        }
    }

    /// Applies one watch event to the cache; returns the object it touched.
    fn apply(&mut self, ev: watcher::Event<DynamicObject>) -> Option<DynamicObject> {
        match ev {
            watcher::Event::Init => {
                self.listing = Some(HashMap::new());
                None
            }
            watcher::Event::InitApply(obj) => {
                let obj = slim(obj);
                self.note_rv(&obj);
                if let Some((key, entry)) = entry_of(&obj) {
                    self.listing.get_or_insert_default().insert(key, entry);
                }
                Some(obj)
            }
            watcher::Event::InitDone => {
                let listed = self.listing.take().unwrap_or_default();
                if let Ok(mut inner) = self.inner.write() {
                    match &self.namespace {
                        Some(ns) => inner.replace_namespace(self.kind, ns, listed),
                        None => inner.replace_kind(self.kind, listed),
                    }
                    self.changed(&inner);
                }
                // A namespace's first listing wakes its tenant: the reconcile
                // that waited for it (never saw its Secrets) can go on.
                let waited = |ns: &str| {
                    self.wake_tenant
                        .as_ref()
                        .is_some_and(|w| w.lock().is_ok_and(|mut w| w.remove(ns)))
                };
                let wake = match (&self.namespace, self.on_first_listing.is_some()) {
                    (Some(ns), true) if waited(ns) => self.tenant_trigger(ns),
                    _ => None,
                };
                if let Some(first) = self.on_first_listing.take() {
                    first();
                }
                wake
            }
            watcher::Event::Apply(obj) => {
                let mut obj = slim(obj);
                self.note_rv(&obj);
                let mut status_only = false;
                if let Some((key, entry)) = entry_of(&obj)
                    && let Ok(mut inner) = self.inner.write()
                {
                    // Only objects with a status can change in status alone;
                    // the rest (most children) skip the two parses.
                    if obj.data.get("status").is_some()
                        && let Some(old) = inner.kinds[self.kind].get(&key)
                    {
                        let old: Option<serde_json::Value> = serde_json::from_str(&old.json).ok();
                        let new = serde_json::from_str(&entry.json).ok();
                        status_only =
                            old.is_some() && old.map(without_status) == new.map(without_status);
                    }
                    inner.insert(self.kind, key, entry);
                    self.changed(&inner);
                }
                if status_only {
                    obj.annotations_mut()
                        .insert(STATUS_ONLY.to_string(), String::new());
                }
                Some(obj)
            }
            watcher::Event::Delete(obj) => {
                self.note_rv(&obj);
                let key = key_of(obj.metadata.namespace.as_deref(), &obj.name_any());
                if let Ok(mut inner) = self.inner.write() {
                    inner.remove(self.kind, &key);
                    self.changed(&inner);
                }
                Some(obj)
            }
        }
    }
}

/// The API server's own words for a failed list or watch (never the client's
/// Debug dump of the response).
pub fn watch_message(e: &watcher::Error) -> String {
    match e {
        watcher::Error::InitialListFailed(e)
        | watcher::Error::WatchStartFailed(e)
        | watcher::Error::WatchFailed(e) => api_message(e),
        watcher::Error::WatchError(s) => format!("{} ({})", s.message, s.code),
        watcher::Error::NoResourceVersion => e.to_string(),
    }
}

/// Whether a watch error is routine: the server's watch cache moved on
/// (410 Gone), and the watcher lists again.
fn is_routine(e: &watcher::Error) -> bool {
    matches!(e, watcher::Error::WatchError(s) if s.code == 410)
}

/// How long a new namespace's watch may be refused before that is reported.
const BINDING_GRACE: std::time::Duration = std::time::Duration::from_secs(5);

/// The HTTP status the API server answered a failed list or watch with.
fn status_code(e: &watcher::Error) -> Option<u16> {
    match e {
        watcher::Error::InitialListFailed(kube::Error::Api(s))
        | watcher::Error::WatchStartFailed(kube::Error::Api(s))
        | watcher::Error::WatchFailed(kube::Error::Api(s)) => Some(s.code),
        watcher::Error::WatchError(s) => Some(s.code),
        _ => None,
    }
}

fn is_forbidden(e: &watcher::Error) -> bool {
    status_code(e) == Some(403)
}

/// Retry delays of a failing watch, on top of kube's own (which restarts at
/// under a second on every relist, so a 403 would be retried every second
/// forever). The cap bounds how long the API coming back (or a fixed
/// permission) goes unnoticed: the caches outlive leadership terms, so after
/// an outage they resume instead of being listed again, within seconds.
const RETRY_MIN: std::time::Duration = std::time::Duration::from_millis(500);
const RETRY_MAX: std::time::Duration = std::time::Duration::from_secs(2);

/// kube's retry of a cache's watch: [`RETRY_MIN`] doubling to [`RETRY_MAX`],
/// each delay jittered down by up to half so that hundreds of watches do not
/// retry in step. kube's default grows to 30 s: a watch that failed through
/// a 20 s outage could wait 15 s more before it looked again.
struct WatchRetry(std::time::Duration);

impl WatchRetry {
    fn new() -> Self {
        Self(RETRY_MIN)
    }
}

impl Iterator for WatchRetry {
    type Item = std::time::Duration;

    fn next(&mut self) -> Option<Self::Item> {
        let d = self.0;
        self.0 = (d * 2).min(RETRY_MAX);
        Some(crate::controller::jittered(d))
    }
}

impl kube::runtime::utils::Backoff for WatchRetry {
    fn reset(&mut self) {
        self.0 = RETRY_MIN;
    }
}

/// Waits (at most [`BINDING_GRACE`]) until this replica may list `api`'s
/// kind in its namespace. Palisade's RoleBinding in a new namespace reaches
/// the API server's authorizer a moment after it reaches the cache; a watch
/// started in between fails its first list with a 403, which kube's watcher
/// logs as a warning (alerts fire on those). A one-item list of our own is
/// the probe: its 403 is expected and not logged.
async fn authorized(api: &Api<DynamicObject>) {
    let started = std::time::Instant::now();
    let lp = kube::api::ListParams::default()
        .limit(1)
        .labels(labels::MANAGED_SELECTOR);
    while started.elapsed() < BINDING_GRACE {
        match api.list_metadata(&lp).await {
            Err(kube::Error::Api(s)) if s.code == 403 => {
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            }
            _ => return,
        }
    }
}

/// How the cache's watches fare: how many fail right now, and every error
/// by HTTP status (0: no status, e.g. a connection error) since start.
#[derive(Default)]
pub struct WatchHealth {
    failing: std::sync::atomic::AtomicI64,
    errors: Mutex<std::collections::BTreeMap<u16, u64>>,
}

impl WatchHealth {
    /// Watches failing now (each retrying).
    pub fn failing(&self) -> i64 {
        self.failing.load(Ordering::Relaxed)
    }

    /// Errors seen with HTTP status `code` since start.
    pub fn errors(&self, code: u16) -> u64 {
        self.errors
            .lock()
            .map(|m| m.get(&code).copied().unwrap_or(0))
            .unwrap_or(0)
    }

    fn count(&self, e: &watcher::Error) {
        let code = status_code(e).unwrap_or(0);
        if let Ok(mut m) = self.errors.lock() {
            *m.entry(code).or_default() += 1;
        }
    }
}

/// Marks one watch as failing while it lives (a watch stopped mid-failure,
/// its namespace gone, no longer counts).
struct Failing(Arc<WatchHealth>);

impl Failing {
    fn new(health: &Arc<WatchHealth>) -> Self {
        health.failing.fetch_add(1, Ordering::Relaxed);
        Self(health.clone())
    }
}

impl Drop for Failing {
    fn drop(&mut self) {
        self.0.failing.fetch_sub(1, Ordering::Relaxed);
    }
}

impl KindFeed {
    /// What this feed watches, for logs: `Secret in acme-dev`, `Namespace`.
    fn describe(&self, ar: &ApiResource) -> String {
        match &self.namespace {
            Some(ns) => format!("{} in {ns}", ar.kind),
            None => ar.kind.clone(),
        }
    }

    /// Applies a watch stream to the cache and forwards touched objects
    /// (metadata only) to the controller until either side ends.
    /// `on_first_error` runs once, on the first error of the stream.
    ///
    /// Errors stay here: they are logged (once per distinct message, then at
    /// debug until the watch recovers) and retried with a growing delay, and
    /// never reach the controller. kube's controller shares one peekable
    /// queue between its triggers and its error output, and a trigger stream
    /// that keeps failing (a namespace Palisade may not list) starves the
    /// Tenant watch behind it: a deleted Tenant went unnoticed for minutes.
    async fn pump(
        mut self,
        what: String,
        mut events: std::pin::Pin<
            Box<dyn Stream<Item = Result<watcher::Event<DynamicObject>, watcher::Error>> + Send>,
        >,
        tx: tokio::sync::mpsc::Sender<Result<DynamicObject, watcher::Error>>,
        mut on_first_error: Option<impl FnOnce()>,
    ) {
        let mut failing: Option<(String, Failing)> = None;
        let mut delay = RETRY_MIN;
        // A namespace's watch starts when Palisade's RoleBinding appears; the
        // API server's authorizer learns of the binding a moment later, so a
        // 403 right at the start is expected, not news.
        let started = std::time::Instant::now();
        let mut listed = false;
        loop {
            let ev = tokio::select! {
                () = tx.closed() => return,
                ev = events.next() => ev,
            };
            let touched = match ev {
                None => return,
                Some(Ok(ev)) => {
                    listed |= matches!(ev, watcher::Event::InitDone);
                    if !matches!(ev, watcher::Event::Init)
                        && let Some((was, _)) = failing.take()
                    {
                        tracing::info!(watch = %what, was = %was, "watch recovered");
                        delay = RETRY_MIN;
                    }
                    self.apply(ev).map(|mut o| {
                        o.data = serde_json::Value::Null;
                        o
                    })
                }
                Some(Err(e)) if is_routine(&e) => {
                    tracing::debug!(watch = %what, error = %watch_message(&e), "watch restarts");
                    None
                }
                Some(Err(e))
                    if self.namespace.is_some()
                        && !listed
                        && started.elapsed() < BINDING_GRACE
                        && is_forbidden(&e) =>
                {
                    tracing::debug!(watch = %what, "waiting for Palisade's RoleBinding to take effect");
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(std::time::Duration::from_millis(250)) => {}
                    }
                    None
                }
                Some(Err(e)) => {
                    if let Some(f) = on_first_error.take() {
                        f();
                    }
                    self.health.count(&e);
                    let message = watch_message(&e);
                    match &mut failing {
                        Some((was, _)) if *was == message => {
                            tracing::debug!(watch = %what, error = %message, retry_in = ?delay, "watch still failing");
                        }
                        Some((was, _)) => {
                            tracing::warn!(watch = %what, error = %message, retry_in = ?delay, "watch failing; retrying");
                            *was = message;
                        }
                        None => {
                            tracing::warn!(watch = %what, error = %message, retry_in = ?delay, "watch failing; retrying");
                            failing = Some((message, Failing::new(&self.health)));
                        }
                    }
                    tokio::select! {
                        () = tx.closed() => return,
                        () = tokio::time::sleep(delay) => {}
                    }
                    delay = (delay * 2).min(RETRY_MAX);
                    None
                }
            };
            if let Some(t) = touched
                && tx.send(Ok(t)).await.is_err()
            {
                return;
            }
        }
    }
}

/// The watches of one per-namespace kind: one per managed namespace.
struct PerNamespace {
    client: Client,
    ar: ApiResource,
    kind: usize,
    namespace_kind: usize,
    /// Namespaces a reconcile waits for (shared by every per-namespace kind).
    waiting: Arc<Mutex<HashSet<String>>>,
    inner: Arc<RwLock<Inner>>,
    seen_rv: Arc<AtomicU64>,
    synced: Arc<tokio::sync::watch::Sender<usize>>,
    listed: Arc<Mutex<HashSet<String>>>,
    tx: tokio::sync::mpsc::Sender<Result<DynamicObject, watcher::Error>>,
    health: Arc<WatchHealth>,
}

impl PerNamespace {
    /// Watches `namespace` on a task of its own; with `probe` (Palisade's
    /// RoleBinding there is new) only once [`authorized`] says it may.
    fn watch(
        &self,
        namespace: &str,
        probe: bool,
        settled: tokio::sync::mpsc::UnboundedSender<String>,
    ) -> tokio::task::JoinHandle<()> {
        let api: Api<DynamicObject> =
            Api::namespaced_with(self.client.clone(), namespace, &self.ar);
        let probed = probe.then(|| api.clone());
        let cfg = watcher::Config::default().labels(labels::MANAGED_SELECTOR);
        let (listed, ns) = (self.listed.clone(), namespace.to_string());
        let settled_err = settled.clone();
        let ns_err = ns.clone();
        let feed = KindFeed {
            kind: self.kind,
            inner: self.inner.clone(),
            seen_rv: self.seen_rv.clone(),
            namespace: Some(ns.clone()),
            namespace_kind: Some(self.namespace_kind),
            wake_tenant: Some(self.waiting.clone()),
            on_first_listing: Some(Box::new(move || {
                if let Ok(mut l) = listed.lock() {
                    l.insert(ns.clone());
                }
                let _ = settled.send(ns);
            })),
            on_change: None,
            listing: None,
            health: self.health.clone(),
        };
        let events = watcher(api, cfg).backoff(WatchRetry::new()).boxed();
        let what = feed.describe(&self.ar);
        let tx = self.tx.clone();
        tokio::spawn(async move {
            if let Some(api) = probed {
                authorized(&api).await;
            }
            feed.pump(
                what,
                events,
                tx,
                // A namespace that cannot be listed yet (its RoleBinding is not
                // in place) must not hold back the whole cache: it counts as
                // settled for startup, stays unlisted, and its watch keeps
                // retrying.
                Some(move || {
                    let _ = settled_err.send(ns_err);
                }),
            )
            .await;
        })
    }

    fn forget(&self, namespace: &str) {
        if let Ok(mut l) = self.listed.lock() {
            l.remove(namespace);
        }
        if let Ok(mut inner) = self.inner.write() {
            inner.replace_namespace(self.kind, namespace, HashMap::new());
        }
    }

    /// Follows the managed namespaces until the controller goes away. Under
    /// `gate` `Some(true)` (Palisade runs as a ServiceAccount) a namespace is
    /// watched once Palisade's RoleBinding is in it, so that a new namespace
    /// is not listed before it may be (a 403 on the happy path); `Some(false)`
    /// watches every managed namespace; `None` (not known yet) waits.
    async fn run(
        self,
        mut namespaces: tokio::sync::watch::Receiver<Managed>,
        mut gate: tokio::sync::watch::Receiver<Option<bool>>,
    ) {
        let (settled_tx, mut settled_rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        let mut watches: HashMap<String, tokio::task::JoinHandle<()>> = HashMap::new();
        let mut settled: HashSet<String> = HashSet::new();
        let mut reported = false;
        // The namespaces bound when this cache first saw them: their bindings
        // are long known to the authorizer. One bound later is probed first.
        let mut known: Option<HashSet<String>> = None;
        loop {
            let gate_now = *gate.borrow_and_update();
            let wanted: Option<Vec<String>> = match (&*namespaces.borrow_and_update(), gate_now) {
                (Some(managed), Some(gated)) => Some(
                    managed
                        .iter()
                        .filter(|(_, bound)| *bound || !gated)
                        .map(|(ns, _)| ns.clone())
                        .collect(),
                ),
                _ => None,
            };
            if let Some(names) = &wanted {
                let known = known.get_or_insert_with(|| names.iter().cloned().collect());
                let keep: HashSet<&str> = names.iter().map(String::as_str).collect();
                watches.retain(|ns, task| {
                    let kept = keep.contains(ns.as_str());
                    if !kept {
                        task.abort();
                        self.forget(ns);
                    }
                    kept
                });
                for ns in names {
                    if !watches.contains_key(ns) {
                        let probe = gate_now == Some(true) && !known.contains(ns);
                        watches.insert(ns.clone(), self.watch(ns, probe, settled_tx.clone()));
                    }
                }
                if !reported && names.iter().all(|n| settled.contains(n)) {
                    reported = true;
                    self.synced.send_modify(|n| *n += 1);
                }
            }
            tokio::select! {
                () = self.tx.closed() => break,
                changed = namespaces.changed() => if changed.is_err() { break },
                changed = gate.changed() => if changed.is_err() { break },
                Some(ns) = settled_rx.recv() => { settled.insert(ns); }
            }
        }
        for (_, task) in watches {
            task.abort();
        }
    }
}

/// The managed namespaces whose Secrets and ConfigMaps are watched
/// ([`labels::SECRETS_WATCHED`]) and whether Palisade's RoleBinding is in
/// each, once the Namespace kind (and the RoleBinding kind, when cached) have
/// listed.
fn managed_namespaces(
    inner: &Inner,
    namespace_kind: usize,
    binding_kind: Option<usize>,
) -> Managed {
    if !inner.listed.contains(&namespace_kind)
        || binding_kind.is_some_and(|k| !inner.listed.contains(&k))
    {
        return None;
    }
    let mut out: Vec<(String, bool)> = inner.kinds[namespace_kind]
        .iter()
        .filter(|(_, entry)| entry.secrets_watched)
        .map(|(ns, _)| {
            let bound = binding_kind.is_some_and(|k| {
                inner.kinds[k].contains_key(key_of(Some(ns), rbac::OPERATOR_BINDING).as_str())
            });
            (ns.to_string(), bound)
        })
        .collect();
    out.sort_unstable();
    Some(out)
}

impl ChildCache {
    /// Creates the caches and the watch streams that fill them. The streams must
    /// be polled (the controller does) for the caches to fill.
    pub fn new(
        client: &Client,
        kinds: Vec<ApiResource>,
    ) -> (Self, Vec<(ApiResource, ChildStream)>) {
        let inner = Arc::new(RwLock::new(Inner {
            kinds: vec![HashMap::new(); kinds.len()],
            ..Default::default()
        }));
        let (synced_tx, synced) = tokio::sync::watch::channel(0usize);
        let synced_tx = Arc::new(synced_tx);
        // The managed namespaces (None until listed), for per-namespace kinds.
        let ns_index = kinds
            .iter()
            .position(|k| k.kind == "Namespace" && k.group.is_empty());
        let binding_index = kinds
            .iter()
            .position(|k| k.kind == "RoleBinding" && k.group == "rbac.authorization.k8s.io");
        let (ns_tx, ns_rx) = tokio::sync::watch::channel::<Managed>(None);
        let ns_tx = Arc::new(ns_tx);
        let (gate_tx, gate_rx) = tokio::sync::watch::channel::<Option<bool>>(None);
        let health = Arc::new(WatchHealth::default());
        let mut cached = Vec::new();
        let mut streams = Vec::new();
        let mut listed = Vec::new();
        let waiting: Arc<Mutex<HashSet<String>>> = Arc::default();
        for (kind, ar) in kinds.into_iter().enumerate() {
            let seen_rv = Arc::new(AtomicU64::new(0));
            // Each kind's watch is parsed and cached on its own task (kube
            // would poll it inside the controller's one task, beside every
            // reconcile); the controller gets the touched objects' metadata.
            let (tx, rx) = tokio::sync::mpsc::channel(TRIGGER_BUFFER);
            if let (true, Some(namespace_kind)) = (is_watched_per_namespace(&ar), ns_index) {
                let namespaces = Arc::new(Mutex::new(HashSet::new()));
                listed.push(namespaces.clone());
                tokio::spawn(
                    PerNamespace {
                        client: client.clone(),
                        ar: ar.clone(),
                        kind,
                        namespace_kind,
                        waiting: waiting.clone(),
                        inner: inner.clone(),
                        seen_rv: seen_rv.clone(),
                        synced: synced_tx.clone(),
                        listed: namespaces,
                        tx,
                        health: health.clone(),
                    }
                    .run(ns_rx.clone(), gate_rx.clone()),
                );
            } else {
                let api: Api<DynamicObject> = Api::all_with(client.clone(), &ar);
                let cfg = watcher::Config::default().labels(labels::MANAGED_SELECTOR);
                let synced = synced_tx.clone();
                // Namespaces and Palisade's RoleBindings decide which
                // namespaces the per-namespace kinds watch.
                let on_change: Option<OnChange> = match ns_index {
                    Some(namespace_kind)
                        if kind == namespace_kind || Some(kind) == binding_index =>
                    {
                        let ns_tx = ns_tx.clone();
                        Some(Box::new(move |inner: &Inner| {
                            let managed = managed_namespaces(inner, namespace_kind, binding_index);
                            if managed.is_some() {
                                ns_tx.send_if_modified(|cur| {
                                    let changed = *cur != managed;
                                    if changed {
                                        cur.clone_from(&managed);
                                    }
                                    changed
                                });
                            }
                        }))
                    }
                    _ => None,
                };
                let feed = KindFeed {
                    kind,
                    inner: inner.clone(),
                    seen_rv: seen_rv.clone(),
                    namespace: None,
                    namespace_kind: None,
                    wake_tenant: None,
                    on_first_listing: Some(Box::new(move || synced.send_modify(|n| *n += 1))),
                    on_change,
                    listing: None,
                    health: health.clone(),
                };
                let events = watcher(api, cfg).backoff(WatchRetry::new()).boxed();
                tokio::spawn(feed.pump(ar.kind.clone(), events, tx, None::<fn()>));
            }
            cached.push(CachedKind {
                ar: ar.clone(),
                seen_rv,
            });
            streams.push((ar, trigger_stream(rx)));
        }
        (
            Self {
                kinds: cached,
                inner,
                synced,
                listed,
                waiting,
                gate: Arc::new(gate_tx),
                health,
            },
            streams,
        )
    }

    /// Says whether Palisade runs as a ServiceAccount that gets a RoleBinding
    /// in each tenant namespace: then a namespace's Secrets and ConfigMaps are
    /// watched once that binding is there. Until this is called the
    /// per-namespace watches wait (and the cache is not ready).
    pub fn grant_gate(&self, bound: bool) {
        self.gate.send_replace(Some(bound));
    }

    /// Whether the Secrets and ConfigMaps of the managed namespace `namespace`
    /// are watched, by its annotation; `None` when it is not cached.
    pub fn secrets_watched(&self, namespace: &str) -> Option<bool> {
        let kind = self.kind_index(&ar::<Namespace>())?;
        Some(self.entry(kind, namespace)?.secrets_watched)
    }

    /// Whether the cache holds a Secret or ConfigMap managed for `tenant` in
    /// `namespace` (true when the cache cannot be read: keep watching).
    pub fn holds_data(&self, tenant: &str, namespace: &str) -> bool {
        let Ok(inner) = self.inner.read() else {
            return true;
        };
        let prefix = format!("{namespace}/");
        inner.by_tenant.get(tenant).is_some_and(|set| {
            set.iter().any(|(kind, key)| {
                is_watched_per_namespace(&self.kinds[*kind].ar) && key.starts_with(&prefix)
            })
        })
    }

    /// True once every per-namespace kind has listed `namespace` (always true
    /// without per-namespace kinds): only then may a reconcile decide about
    /// Secrets and ConfigMaps there.
    /// When not, the namespace's listing will wake its tenant.
    pub fn namespace_listed(&self, namespace: &str) -> bool {
        let listed = self
            .listed
            .iter()
            .all(|l| l.lock().map(|l| l.contains(namespace)).unwrap_or(false));
        if !listed && let Ok(mut w) = self.waiting.lock() {
            w.insert(namespace.to_string());
        }
        listed
    }

    fn kind_index(&self, ar: &ApiResource) -> Option<usize> {
        self.kinds
            .iter()
            .position(|k| k.ar.kind == ar.kind && k.ar.group == ar.group)
    }

    /// The cache of one kind.
    pub fn kind(&self, ar: &ApiResource) -> Option<&CachedKind> {
        self.kind_index(ar).map(|i| &self.kinds[i])
    }

    fn entry(&self, kind: usize, key: &str) -> Option<Arc<Entry>> {
        self.inner.read().ok()?.kinds.get(kind)?.get(key).cloned()
    }

    /// A cached object by kind, namespace and name.
    pub fn get(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<Arc<DynamicObject>> {
        let entry = self.entry(self.kind_index(ar)?, &key_of(namespace, name))?;
        serde_json::from_str(&entry.json).ok().map(Arc::new)
    }

    /// A cached object as JSON (what the Applier compares desired state with).
    pub fn get_value(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<serde_json::Value> {
        let entry = self.entry(self.kind_index(ar)?, &key_of(namespace, name))?;
        serde_json::from_str(&entry.json).ok()
    }

    /// The tenant a cached object is managed for, without parsing it.
    pub fn tenant_of(
        &self,
        ar: &ApiResource,
        namespace: Option<&str>,
        name: &str,
    ) -> Option<String> {
        let entry = self.entry(self.kind_index(ar)?, &key_of(namespace, name))?;
        entry.tenant.as_deref().map(str::to_string)
    }

    /// The cached objects of kind `ar` managed for `tenant`, metadata only.
    pub fn owned_of_kind(&self, tenant: &str, ar: &ApiResource) -> Vec<kube::api::ObjectMeta> {
        let Some(kind) = self.kind_index(ar) else {
            return Vec::new();
        };
        self.tenant_entries(tenant, Some(kind))
            .into_iter()
            .filter_map(|(_, e)| metadata_of(&e))
            .collect()
    }

    /// The cached entries managed for `tenant` (of kind index `only`, or of
    /// every kind), taken under the lock; parsed by the caller outside it.
    fn tenant_entries(&self, tenant: &str, only: Option<usize>) -> Vec<(usize, Arc<Entry>)> {
        let Ok(inner) = self.inner.read() else {
            return Vec::new();
        };
        inner
            .by_tenant
            .get(tenant)
            .into_iter()
            .flatten()
            .filter(|(kind, _)| only.is_none_or(|o| o == *kind))
            .filter_map(|(kind, key)| Some((*kind, inner.kinds[*kind].get(key)?.clone())))
            .collect()
    }

    /// Every cached object of every kind managed for `tenant`, metadata only
    /// (`data` is null): enough to prune, delete with a uid precondition or
    /// release, without building every object's JSON tree.
    pub fn owned_by(&self, tenant: &str) -> Vec<(ApiResource, Arc<DynamicObject>)> {
        let mut out: Vec<(ApiResource, Arc<DynamicObject>)> = self
            .tenant_entries(tenant, None)
            .into_iter()
            .filter_map(|(kind, e)| {
                let ar = self.kinds[kind].ar.clone();
                let mut obj = DynamicObject::new("", &ar);
                obj.metadata = metadata_of(&e)?;
                Some((ar, Arc::new(obj)))
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
        let mut synced = self.synced.clone();
        let total = self.kinds.len();
        // Err only when every stream is gone (shutdown): nothing to wait for.
        let _ = synced.wait_for(|n| *n >= total).await;
    }

    /// True once every cache has received its first full listing.
    pub fn is_ready(&self) -> bool {
        *self.synced.borrow() >= self.kinds.len()
    }

    /// Number of cached objects.
    pub fn len(&self) -> usize {
        self.inner
            .read()
            .map(|i| i.kinds.iter().map(HashMap::len).sum())
            .unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Approximate heap bytes the cached objects take (text, keys, index).
    pub fn bytes(&self) -> usize {
        self.inner.read().map(|i| i.bytes).unwrap_or(0)
    }

    /// A cached object's name in `namespace/name` form (for messages).
    pub fn describe(obj: &DynamicObject) -> String {
        match obj.namespace() {
            Some(ns) => format!("{ns}/{}", obj.name_any()),
            None => obj.name_any(),
        }
    }
}

/// Keeps a [`ChildCache`]'s watch streams polled for the life of the
/// process and hands their triggers to whichever controller is attached:
/// a replica that loses its leadership term stops its controllers but keeps
/// its caches, so a new term starts on warm caches (no list of every
/// namespace's Secrets and ConfigMaps again) and triggers in between are
/// dropped (a new term reconciles every Tenant anyway).
pub struct Relay {
    slots: Vec<(ApiResource, Arc<Mutex<Option<TriggerSender>>>)>,
}

type TriggerSender = tokio::sync::mpsc::Sender<Result<DynamicObject, watcher::Error>>;

/// The controller's side of a kind's trigger channel.
fn trigger_stream(
    rx: tokio::sync::mpsc::Receiver<Result<DynamicObject, watcher::Error>>,
) -> ChildStream {
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|t| (t, rx)) }).boxed()
}

impl Relay {
    /// Takes over `streams` (from [`ChildCache::new`]); each is polled on a
    /// task of its own from now on.
    pub fn new(streams: Vec<(ApiResource, ChildStream)>) -> Self {
        let slots = streams
            .into_iter()
            .map(|(ar, mut stream)| {
                let slot: Arc<Mutex<Option<TriggerSender>>> = Arc::default();
                let to = slot.clone();
                tokio::spawn(async move {
                    while let Some(item) = stream.next().await {
                        let tx = to.lock().ok().and_then(|s| s.clone());
                        if let Some(tx) = tx {
                            // A closed receiver is a term that ended.
                            let _ = tx.send(item).await;
                        }
                    }
                });
                (ar, slot)
            })
            .collect();
        Self { slots }
    }

    /// Fresh trigger streams for a new controller; the previous ones end.
    pub fn attach(&self) -> Vec<(ApiResource, ChildStream)> {
        self.slots
            .iter()
            .map(|(ar, slot)| {
                let (tx, rx) = tokio::sync::mpsc::channel(TRIGGER_BUFFER);
                if let Ok(mut s) = slot.lock() {
                    *s = Some(tx);
                }
                (ar.clone(), trigger_stream(rx))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// A cache's watch looks again within 2 s however long it has failed,
    /// and after a success starts over at half a second.
    #[test]
    fn watch_retry_is_bounded_jittered_and_resets() {
        use kube::runtime::utils::Backoff;
        let mut r = WatchRetry::new();
        let delays: Vec<_> = (&mut r).take(8).collect();
        let nominal = [500, 1000, 2000, 2000, 2000, 2000, 2000, 2000];
        for (d, n) in delays.iter().zip(nominal) {
            let n = std::time::Duration::from_millis(n);
            assert!(*d <= n && *d >= n / 2, "{d:?} outside [{:?}, {n:?}]", n / 2);
        }
        r.reset();
        assert!(r.next().expect("delay") <= RETRY_MIN);
    }

    fn obj(ns: &str, name: &str, tenant: Option<&str>, rv: u64) -> DynamicObject {
        let mut labels = serde_json::Map::new();
        if let Some(t) = tenant {
            labels.insert(labels::MANAGED_BY.into(), labels::MANAGED_BY_VALUE.into());
            labels.insert(labels::TENANT.into(), t.into());
        }
        serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {
                "name": name, "namespace": ns, "resourceVersion": rv.to_string(),
                "labels": labels,
                "annotations": {LAST_APPLIED: "x".repeat(1000), "keep": "me"},
                "managedFields": [{"manager": "m", "operation": "Apply"}],
            },
            "data": {"k": "v"},
        }))
        .expect("object")
    }

    fn feed() -> (KindFeed, ChildCache) {
        let inner = Arc::new(RwLock::new(Inner {
            kinds: vec![HashMap::new()],
            ..Default::default()
        }));
        let (tx, synced) = tokio::sync::watch::channel(0usize);
        let cache = ChildCache {
            kinds: vec![CachedKind {
                ar: ar::<ConfigMap>(),
                seen_rv: Arc::default(),
            }],
            inner: inner.clone(),
            synced,
            listed: Vec::new(),
            waiting: Arc::default(),
            gate: Arc::new(tokio::sync::watch::channel(None).0),
            health: Arc::default(),
        };
        let tx = Arc::new(tx);
        let feed = KindFeed {
            kind: 0,
            inner,
            seen_rv: cache.kinds[0].seen_rv.clone(),
            namespace: None,
            namespace_kind: None,
            wake_tenant: None,
            on_first_listing: Some(Box::new(move || tx.send_modify(|n| *n += 1))),
            on_change: None,
            listing: None,
            health: Arc::default(),
        };
        (feed, cache)
    }

    #[test]
    fn a_namespace_listing_replaces_only_that_namespace() {
        let (mut feed, cache) = feed();
        feed.apply(watcher::Event::Apply(obj("a", "one", Some("t1"), 3)));
        feed.apply(watcher::Event::Apply(obj("b", "two", Some("t2"), 4)));
        feed.namespace = Some("a".into());
        feed.apply(watcher::Event::Init);
        feed.apply(watcher::Event::InitApply(obj("a", "three", Some("t1"), 5)));
        feed.apply(watcher::Event::InitDone);
        assert!(cache.get(&ar::<ConfigMap>(), Some("a"), "one").is_none());
        assert!(cache.get(&ar::<ConfigMap>(), Some("a"), "three").is_some());
        assert!(cache.get(&ar::<ConfigMap>(), Some("b"), "two").is_some());
        assert_eq!(cache.owned_by("t1").len(), 1);
        assert_eq!(cache.owned_by("t2").len(), 1);
    }

    #[test]
    fn listing_is_swapped_in_whole_and_marks_the_kind_synced() {
        let (mut feed, cache) = feed();
        feed.apply(watcher::Event::Init);
        feed.apply(watcher::Event::InitApply(obj("a", "one", Some("t1"), 5)));
        assert!(
            cache.is_empty(),
            "a listing is invisible until it is complete"
        );
        assert!(!cache.is_ready());
        feed.apply(watcher::Event::InitDone);
        assert!(cache.is_ready());
        assert_eq!(cache.len(), 1);
        assert_eq!(cache.seen_rv(&ar::<ConfigMap>()), 5);

        // A relist after a desync drops what is gone and re-indexes.
        feed.apply(watcher::Event::Init);
        feed.apply(watcher::Event::InitApply(obj("a", "two", Some("t2"), 7)));
        feed.apply(watcher::Event::InitDone);
        assert!(cache.get(&ar::<ConfigMap>(), Some("a"), "one").is_none());
        assert!(cache.owned_by("t1").is_empty());
        assert_eq!(cache.owned_by("t2").len(), 1);
    }

    #[test]
    fn objects_are_stripped_and_read_back_whole() {
        let (mut feed, cache) = feed();
        feed.apply(watcher::Event::Apply(obj("a", "one", Some("t1"), 3)));
        let got = cache
            .get(&ar::<ConfigMap>(), Some("a"), "one")
            .expect("cached");
        assert!(got.metadata.managed_fields.is_none());
        let annotations = got.metadata.annotations.clone().unwrap_or_default();
        assert!(!annotations.contains_key(LAST_APPLIED));
        assert_eq!(annotations.get("keep").map(String::as_str), Some("me"));
        assert_eq!(got.data["data"]["k"], "v");
        assert_eq!(
            cache
                .tenant_of(&ar::<ConfigMap>(), Some("a"), "one")
                .as_deref(),
            Some("t1")
        );
        // The stripped annotation is not paid for.
        assert!(cache.bytes() < 1000, "{} bytes", cache.bytes());
    }

    #[test]
    fn tenant_index_follows_relabels_and_deletes() {
        let (mut feed, cache) = feed();
        feed.apply(watcher::Event::Apply(obj("a", "one", Some("t1"), 3)));
        feed.apply(watcher::Event::Apply(obj("a", "two", Some("t1"), 4)));
        assert_eq!(cache.owned_by("t1").len(), 2);
        feed.apply(watcher::Event::Apply(obj("a", "one", Some("t2"), 5)));
        assert_eq!(cache.owned_by("t1").len(), 1);
        assert_eq!(cache.owned_by("t2").len(), 1);
        feed.apply(watcher::Event::Apply(obj("a", "two", None, 6)));
        assert!(cache.owned_by("t1").is_empty());
        let before = cache.bytes();
        feed.apply(watcher::Event::Delete(obj("a", "one", Some("t2"), 7)));
        assert!(cache.owned_by("t2").is_empty());
        assert_eq!(cache.len(), 1);
        assert!(cache.bytes() < before);
        // Re-applying the same object does not double its accounting.
        let one = cache.bytes();
        feed.apply(watcher::Event::Apply(obj("a", "two", None, 8)));
        assert_eq!(cache.bytes(), one);
    }
}
