//! An in-process fake Kubernetes API server for controller tests.
//!
//! [`FakeApiServer`] is a [`tower::Service`] that [`kube::Client::new`] accepts
//! directly, so the real `kube::Api`, `kube::runtime::watcher`,
//! `metadata_watcher`, `Controller` and `finalizer` helper run against it with
//! no sockets and no cluster. It keeps objects as JSON, with one global
//! resourceVersion counter, watch history (410 Gone when compacted), the
//! status subresource, generation rules, finalizers, ownerReference garbage
//! collection, namespace cascade, label/field selectors, merge/JSON/apply
//! patches, fault injection and a request log.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::api::{Api, PostParams};
//! use palisade_testkit::FakeApiServer;
//!
//! let server = FakeApiServer::new();
//! let client = server.client();
//! let cms: Api<ConfigMap> = Api::namespaced(client, "default");
//! let mut cm = ConfigMap::default();
//! cm.metadata.name = Some("a".into());
//! cms.create(&PostParams::default(), &cm).await?;
//! assert!(server.get_json("configmaps", Some("default"), "a").is_some());
//! assert_eq!(server.writes(), 1);
//! # Ok(()) }
//! ```
//!
//! # What is emulated
//!
//! * Paths `/api/v1/...` and `/apis/{group}/{version}/...`, namespaced,
//!   cluster-scoped and all-namespaces collections, the `/status`
//!   subresource; `/api/v1/namespaces/{name}` is the Namespace itself.
//!   Discovery (`/api`, `/apis`, `/apis/{g}`, `/apis/{g}/{v}`, legacy and
//!   aggregated `apidiscovery.k8s.io/v2`) and `/version` come from the
//!   [`Registry`]; creating a `CustomResourceDefinition` registers its
//!   resource (and reports it `Established`).
//! * One global resourceVersion counter. list returns it in
//!   `metadata.resourceVersion` (with `limit`/`continue` paging); watch replays
//!   history after a resourceVersion, sends synthetic ADDED events for
//!   `resourceVersion=0`/absent, supports `sendInitialEvents` (streaming
//!   lists), BOOKMARKs (initially and every [`FakeApiServer::set_bookmark_interval`]),
//!   `timeoutSeconds`, selectors (an object leaving/entering the selector is
//!   DELETED/ADDED), and a 410 ERROR event for an expired resourceVersion.
//!   Metadata-only requests (`Accept: ...;as=PartialObjectMetadata[List]...`)
//!   get `PartialObjectMetadata[List]`.
//! * create (409 AlreadyExists, `generateName`, namespace must exist and not be
//!   terminating), get (404), replace (409 on a stale resourceVersion), delete
//!   (preconditions, propagation policies), deletecollection, and patches:
//!   merge, JSON patch (a `test` for `null` passes on an absent field, as
//!   kube's finalizer helper needs), strategic (as merge) and server-side
//!   apply (`fieldManager` required; create-or-merge; fields a manager applied
//!   before and no longer applies are removed unless another apply manager
//!   still applies them).
//! * Server-owned metadata (`uid`, `creationTimestamp`, `generation` bumped
//!   only when something outside `metadata`/`status` changes), the status
//!   subresource split, writes that change nothing keep the resourceVersion
//!   and emit no event, finalizers and `deletionTimestamp` (no new finalizers
//!   while deleting), ownerReference garbage collection (background,
//!   foreground with `blockOwnerDeletion`, orphan), namespace cascade.
//! * Fault injection ([`FakeApiServer::fail_next`], [`FakeApiServer::fail_when`])
//!   and a request log ([`FakeApiServer::log`], [`FakeApiServer::writes_since`]).
//!
//! # Known gaps versus a real apiserver
//!
//! No schema validation, defaulting, admission, RBAC or conversion between
//! versions (objects are stored once per group/plural; `apiVersion` is
//! rewritten to the requested version). Server-side apply ownership is
//! simplified: only apply managers own fields (plain updates don't take
//! ownership), lists are atomic, there are no apply conflicts (always `force`)
//! and `managedFields` is not exposed; strategic merge patches are plain merge patches (lists are
//! replaced, `$patch` directives ignored). List `resourceVersion`/
//! `resourceVersionMatch` always serve the latest state. Garbage collection and
//! the namespace cascade happen synchronously inside the DELETE (there is no
//! observable Terminating delay unless finalizers hold it). Field selectors
//! accept any dotted path. `dryRun` is rejected with 400. No pods/log, exec,
//! scale or other subresources besides `status`. `managedFields` are dropped.

mod error;
mod faults;
mod http;
mod log;
mod patch;
pub mod procfs;
mod registry;
mod selectors;
mod serve;
mod store;
mod watch;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll};
use std::time::Duration;

use serde::{Serialize, de::DeserializeOwned};
use serde_json::Value;

pub use crate::error::ApiError;
pub use crate::faults::{FaultId, RequestPredicate};
pub use crate::http::{BoxError, ResponseBody};
pub use crate::log::{LogMark, RequestRecord, Verb};
pub use crate::patch::PatchType;
pub use crate::registry::{Registry, ResourceType};
pub use crate::selectors::{FieldSelector, LabelSelector};
pub use crate::store::{EventType, ObjectKey, Propagation};

use crate::faults::Faults;
use crate::store::{DeleteOptions, Store, WriteMode};

/// Default number of events kept for watch replay.
pub const DEFAULT_HISTORY_LIMIT: usize = 10_000;

struct Inner {
    store: Mutex<Store>,
    log: Mutex<Vec<RequestRecord>>,
    seq: Mutex<u64>,
    faults: Mutex<Faults>,
    bookmark_interval: Mutex<Duration>,
    /// Delay before answering a write that succeeded (its watch events are
    /// sent at once): lets a test see events overtake responses.
    write_response_delay: Mutex<Duration>,
}

/// The fake API server. Cheap to clone; all clones share state.
#[derive(Clone)]
pub struct FakeApiServer {
    inner: Arc<Inner>,
}

impl Default for FakeApiServer {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for FakeApiServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeApiServer")
            .field("resource_version", &self.resource_version())
            .finish_non_exhaustive()
    }
}

/// Returned by the `wait_*` helpers when the condition did not hold in time.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WaitTimeout(pub Duration);

impl std::fmt::Display for WaitTimeout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "condition not met within {:?}", self.0)
    }
}

impl std::error::Error for WaitTimeout {}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl FakeApiServer {
    /// A server with the built-in resources registered and the `default`,
    /// `kube-system`, `kube-public` and `kube-node-lease` namespaces created.
    pub fn new() -> Self {
        Self::with_history_limit(DEFAULT_HISTORY_LIMIT)
    }

    /// Like [`FakeApiServer::new`], keeping at most `limit` events for watch
    /// replay; older resourceVersions get 410 Gone.
    pub fn with_history_limit(limit: usize) -> Self {
        Self {
            inner: Arc::new(Inner {
                store: Mutex::new(Store::new(limit.max(1))),
                log: Mutex::new(Vec::new()),
                seq: Mutex::new(0),
                faults: Mutex::new(Faults::default()),
                bookmark_interval: Mutex::new(Duration::from_secs(5)),
                write_response_delay: Mutex::new(Duration::ZERO),
            }),
        }
    }

    /// A `kube::Client` talking to this server (default namespace `default`).
    pub fn client(&self) -> kube::Client {
        kube::Client::new(self.clone(), "default")
    }

    pub(crate) fn with_store<R>(&self, f: impl FnOnce(&Store) -> R) -> R {
        f(&lock(&self.inner.store))
    }

    pub(crate) fn with_store_mut<R>(&self, f: impl FnOnce(&mut Store) -> R) -> R {
        f(&mut lock(&self.inner.store))
    }

    // ---- configuration -----------------------------------------------------------

    /// Registers (or replaces) a resource type.
    pub fn register(&self, rt: ResourceType) -> &Self {
        self.with_store_mut(|s| s.registry.register(rt));
        self
    }

    /// Registers the resource of a static kube type, e.g. a
    /// `#[derive(CustomResource)]` struct (with a status subresource).
    pub fn register_kind<K>(&self) -> &Self
    where
        K: kube::Resource<DynamicType = ()>,
        K::Scope: 'static,
    {
        self.register(ResourceType::of::<K>())
    }

    /// A snapshot of the registered resource types.
    pub fn registry(&self) -> Registry {
        self.with_store(|s| s.registry.clone())
    }

    /// Whether namespaced objects may only be created in existing,
    /// non-terminating namespaces (default `true`, like the real apiserver).
    pub fn set_require_namespaces(&self, require: bool) {
        self.with_store_mut(|s| s.require_namespaces = require);
    }

    /// How often idle watches with `allowWatchBookmarks` get a BOOKMARK (default 5s).
    pub fn set_bookmark_interval(&self, interval: Duration) {
        *lock(&self.inner.bookmark_interval) = interval;
    }

    pub(crate) fn bookmark_interval(&self) -> Duration {
        *lock(&self.inner.bookmark_interval)
    }

    // ---- store access ---------------------------------------------------------------

    /// The latest resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.with_store(Store::resource_version)
    }

    fn resolve(&self, resource: &str) -> Result<ResourceType, ApiError> {
        self.with_store(|s| s.registry.resolve(resource).cloned())
            .ok_or_else(|| ApiError::bad_request(format!("unknown resource {resource:?}")))
    }

    /// The resource type of `resource` and the store key of `name` in it.
    fn locate(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<(ResourceType, ObjectKey), ApiError> {
        let rt = self.resolve(resource)?;
        let key = key_of(&rt, namespace, name);
        Ok((rt, key))
    }

    /// An object by resource (`"configmaps"`, `"tenants.palisade.dev"`, or a
    /// plural unique across groups), namespace and name.
    pub fn get_json(&self, resource: &str, namespace: Option<&str>, name: &str) -> Option<Value> {
        let (_, key) = self.locate(resource, namespace, name).ok()?;
        self.with_store(|s| s.get(&key).cloned())
    }

    /// All objects of a resource, across namespaces, sorted by namespace/name.
    pub fn list_json(&self, resource: &str) -> Vec<Value> {
        self.list_json_in(resource, None)
    }

    /// All objects of a resource in one namespace (or all with `None`).
    pub fn list_json_in(&self, resource: &str, namespace: Option<&str>) -> Vec<Value> {
        let Ok(rt) = self.resolve(resource) else {
            return Vec::new();
        };
        self.with_store(|s| {
            s.list(&rt.group, &rt.plural, namespace, &Default::default())
                .into_iter()
                .map(|(_, v)| v)
                .collect()
        })
    }

    /// Inserts or overwrites an object as another client would (create or full
    /// update including `.status`), emitting watch events. Server-owned
    /// metadata (uid, creationTimestamp, generation, resourceVersion) is managed
    /// as usual; a namespaced object without `metadata.namespace` goes to `default`.
    pub fn put_json(&self, resource: &str, obj: Value) -> Result<Value, ApiError> {
        let rt = self.resolve(resource)?;
        self.with_store_mut(|s| s.put_direct(&rt, obj))
    }

    /// Deletes an object as another client would (finalizers respected,
    /// background garbage collection). Returns the object if it still exists
    /// (marked for deletion), `None` if it is gone.
    pub fn delete_direct(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let (rt, key) = self.locate(resource, namespace, name)?;
        match self.with_store_mut(|s| s.delete(&rt, &key, &DeleteOptions::default()))? {
            store::Deleted::Marked(v) => Ok(Some(v)),
            store::Deleted::Removed(_) => Ok(None),
        }
    }

    /// Removes all finalizers from an object (as the controller owning them
    /// would), which completes a pending deletion.
    pub fn clear_finalizers(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
    ) -> Result<Option<Value>, ApiError> {
        let (rt, key) = self.locate(resource, namespace, name)?;
        self.with_store_mut(|s| {
            let Some(mut obj) = s.get(&key).cloned() else {
                return Err(ApiError::not_found(&rt.group, &rt.plural, name));
            };
            if let Some(m) = obj["metadata"].as_object_mut() {
                m.remove("finalizers");
                m.remove("resourceVersion");
            }
            s.update(&rt, &key, obj, WriteMode::Full)?;
            Ok(s.get(&key).cloned())
        })
    }

    /// A typed object, if present.
    pub fn get<K>(&self, namespace: Option<&str>, name: &str) -> Option<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let rt = self.typed_rt::<K>()?;
        let key = key_of(&rt, namespace, name);
        let v = self.with_store(|s| s.get(&key).cloned())?;
        serde_json::from_value(v).ok()
    }

    /// All typed objects of a kind, across namespaces.
    pub fn list<K>(&self) -> Vec<K>
    where
        K: kube::Resource<DynamicType = ()> + DeserializeOwned,
    {
        let Some(rt) = self.typed_rt::<K>() else {
            return Vec::new();
        };
        self.with_store(|s| s.list(&rt.group, &rt.plural, None, &Default::default()))
            .into_iter()
            .filter_map(|(_, v)| serde_json::from_value(v).ok())
            .collect()
    }

    /// Inserts or overwrites a typed object (see [`FakeApiServer::put_json`]),
    /// registering its resource type if needed.
    pub fn put<K>(&self, obj: &K) -> Result<K, ApiError>
    where
        K: kube::Resource<DynamicType = ()> + Serialize + DeserializeOwned,
        K::Scope: 'static,
    {
        let rt = match self.typed_rt::<K>() {
            Some(rt) => rt,
            None => {
                let rt = ResourceType::of::<K>();
                self.register(rt.clone());
                rt
            }
        };
        let mut v = serde_json::to_value(obj).map_err(|e| ApiError::bad_request(e.to_string()))?;
        if let Some(m) = v.as_object_mut() {
            m.insert("apiVersion".into(), rt.api_version().into());
            m.insert("kind".into(), rt.kind.clone().into());
        }
        let stored = self.with_store_mut(|s| s.put_direct(&rt, v))?;
        serde_json::from_value(stored).map_err(|e| ApiError::bad_request(e.to_string()))
    }

    fn typed_rt<K: kube::Resource<DynamicType = ()>>(&self) -> Option<ResourceType> {
        self.with_store(|s| {
            s.registry
                .find_any_version(&K::group(&()), &K::plural(&()))
                .cloned()
        })
    }

    /// Drops the watch event history and expires every resourceVersion handed
    /// out so far (like an etcd compaction): watches resuming from one of them get
    /// a 410 Gone ERROR event, and kube's watcher re-lists. Open watches are not
    /// affected until they reconnect; see [`FakeApiServer::expire_watches`].
    pub fn compact_history(&self) {
        self.with_store_mut(Store::compact);
    }

    /// [`compact_history`](FakeApiServer::compact_history) then
    /// [`close_watches`](FakeApiServer::close_watches): every watcher
    /// reconnects, gets 410 Gone and re-lists.
    pub fn expire_watches(&self) {
        self.compact_history();
        self.close_watches();
    }

    /// Ends every open watch stream (clients reconnect from their last
    /// resourceVersion). Combine with [`FakeApiServer::compact_history`] to force re-lists.
    pub fn close_watches(&self) {
        self.with_store(|s| s.close_tx.send_modify(|v| *v += 1));
    }

    // ---- waiting ----------------------------------------------------------------------

    /// Waits until `cond(self)` holds, re-checking after every store change
    /// (and every 50ms), or fails after `timeout`.
    pub async fn wait_until(
        &self,
        timeout: Duration,
        mut cond: impl FnMut(&FakeApiServer) -> bool,
    ) -> Result<(), WaitTimeout> {
        let mut rx = self.with_store(|s| s.rv_tx.subscribe());
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if cond(self) {
                return Ok(());
            }
            if tokio::time::Instant::now() >= deadline {
                return Err(WaitTimeout(timeout));
            }
            let tick = tokio::time::Instant::now() + Duration::from_millis(50);
            let _ = tokio::time::timeout_at(tick.min(deadline), rx.changed()).await;
        }
    }

    /// Waits until the object exists and satisfies `pred`, returning it.
    pub async fn wait_for_json(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        timeout: Duration,
        mut pred: impl FnMut(&Value) -> bool,
    ) -> Result<Value, WaitTimeout> {
        let mut found = None;
        self.wait_until(timeout, |s| {
            found = s.get_json(resource, namespace, name).filter(|v| pred(v));
            found.is_some()
        })
        .await?;
        found.ok_or(WaitTimeout(timeout))
    }

    /// Waits until the object no longer exists.
    pub async fn wait_for_absent(
        &self,
        resource: &str,
        namespace: Option<&str>,
        name: &str,
        timeout: Duration,
    ) -> Result<(), WaitTimeout> {
        self.wait_until(timeout, |s| s.get_json(resource, namespace, name).is_none())
            .await
    }

    // ---- fault injection ------------------------------------------------------------

    /// The next `n` requests (of any kind) fail with `code`.
    pub fn fail_next(&self, n: usize, code: u16) -> Option<FaultId> {
        (n > 0).then(|| lock(&self.inner.faults).add(code, Some(n), Arc::new(|_| true)))
    }

    /// The next `n` write requests (create/update/patch/delete) fail with `code`.
    pub fn fail_next_writes(&self, n: usize, code: u16) -> Option<FaultId> {
        (n > 0).then(|| {
            lock(&self.inner.faults).add(code, Some(n), Arc::new(|r: &RequestRecord| r.is_write()))
        })
    }

    /// Requests matching `pred` fail with `code`, `times` times (`None`: until
    /// cleared). The predicate sees the routed request (verb, group, resource,
    /// namespace, name, subresource, patch type) with `code == 0`.
    pub fn fail_when(
        &self,
        code: u16,
        times: Option<usize>,
        pred: impl Fn(&RequestRecord) -> bool + Send + Sync + 'static,
    ) -> FaultId {
        lock(&self.inner.faults).add(code, times.map(|t| t.max(1)), Arc::new(pred))
    }

    /// Answers every write `delay` after it took effect (its watch events go
    /// out immediately), as a busy API server or a slow network can: watch
    /// events then overtake the responses of the writes that caused them.
    pub fn delay_write_responses(&self, delay: Duration) {
        *lock(&self.inner.write_response_delay) = delay;
    }

    /// Removes one fault rule.
    pub fn clear_fault(&self, id: FaultId) {
        lock(&self.inner.faults).remove(id);
    }

    /// Removes all fault rules.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    pub(crate) fn check_faults(&self, rec: &RequestRecord) -> Option<u16> {
        lock(&self.inner.faults).check(rec)
    }

    // ---- request log ---------------------------------------------------------------

    pub(crate) fn new_record(&self, method: &::http::Method, path: &str) -> RequestRecord {
        let seq = {
            let mut s = lock(&self.inner.seq);
            *s += 1;
            *s
        };
        RequestRecord {
            seq,
            verb: Verb::Other,
            method: method.to_string(),
            path: path.to_string(),
            group: String::new(),
            version: String::new(),
            resource: String::new(),
            namespace: None,
            name: None,
            subresource: None,
            patch_type: None,
            field_manager: None,
            code: 0,
            timestamp: chrono::Utc::now(),
        }
    }

    pub(crate) fn record(&self, rec: RequestRecord) {
        lock(&self.inner.log).push(rec);
    }

    /// Every request served since creation or the last [`FakeApiServer::reset_log`].
    pub fn log(&self) -> Vec<RequestRecord> {
        lock(&self.inner.log).clone()
    }

    /// Clears the request log.
    pub fn reset_log(&self) {
        lock(&self.inner.log).clear();
    }

    /// A position in the log; requests after it are returned by [`FakeApiServer::log_since`].
    pub fn mark(&self) -> LogMark {
        LogMark(*lock(&self.inner.seq))
    }

    /// Requests that arrived after `mark`.
    pub fn log_since(&self, mark: LogMark) -> Vec<RequestRecord> {
        lock(&self.inner.log)
            .iter()
            .filter(|r| r.seq > mark.0)
            .cloned()
            .collect()
    }

    /// Write requests (create/update/patch/delete/deletecollection, whatever
    /// their outcome) in the log.
    pub fn writes(&self) -> usize {
        lock(&self.inner.log)
            .iter()
            .filter(|r| r.is_write())
            .count()
    }

    /// Write requests after `mark`.
    pub fn writes_since(&self, mark: LogMark) -> usize {
        lock(&self.inner.log)
            .iter()
            .filter(|r| r.seq > mark.0 && r.is_write())
            .count()
    }

    /// The write requests in the log.
    pub fn write_log(&self) -> Vec<RequestRecord> {
        lock(&self.inner.log)
            .iter()
            .filter(|r| r.is_write())
            .cloned()
            .collect()
    }
}

impl<B> tower::Service<::http::Request<B>> for FakeApiServer
where
    B: http_body::Body<Data = bytes::Bytes> + Send + 'static,
    B::Error: std::fmt::Display,
{
    type Response = ::http::Response<ResponseBody>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: ::http::Request<B>) -> Self::Future {
        let server = self.clone();
        let write = !matches!(req.method(), &::http::Method::GET);
        Box::pin(async move {
            let response = http::handle(server.clone(), req).await;
            let delay = *lock(&server.inner.write_response_delay);
            if write && !delay.is_zero() && response.status().is_success() {
                tokio::time::sleep(delay).await;
            }
            Ok(response)
        })
    }
}

/// The store key of `name` of `rt` (`namespace` ignored for a cluster-scoped type).
fn key_of(rt: &ResourceType, namespace: Option<&str>, name: &str) -> ObjectKey {
    ObjectKey::new(
        &rt.group,
        &rt.plural,
        namespace.filter(|_| rt.namespaced),
        name,
    )
}
