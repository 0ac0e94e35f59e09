//! The chassis every controller runs on: one shared context and one driver.
//!
//! A kind supplies only its reconcile (the [`Reconcile`] trait); the driver gives
//! every kind the same
//! - per-object exponential backoff with jitter for failures (reset on success),
//! - reconcile count, duration, in-flight and error metrics (the error label is
//!   the kind's bounded `reason`),
//! - panic capture: each reconcile runs as its own task (kube polls every
//!   reconcile future inside the controller's one task, so concurrent reconciles
//!   would otherwise share one core), and a panic becomes a failure retried with
//!   backoff instead of taking the controller down,
//! - graceful shutdown (in-flight reconciles finish),
//! - forgetting an object once it is gone: its backoff entry and whatever the kind
//!   keeps about it ([`Reconcile::forget`], e.g. its metric series).
//!
//! Deletions reach the driver because the main watch triggers on every touched
//! object ([`watch`]): a reconcile requested for an object no longer in the store
//! is kube's `ObjectNotFound`, which is exactly "this object is gone".

use std::collections::HashMap;
use std::fmt::Debug;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::controller::events::Recorder;
use futures::{Stream, StreamExt};
use k8s_openapi::jiff::Timestamp;
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tracing::{Instrument, debug, info_span, warn};

use super::{Clock, Settings};
use crate::metrics::Metrics;

/// What every controller of this process shares.
#[derive(Clone)]
pub struct Shared {
    pub client: Client,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
    /// The process-wide metrics (a private set unless [`Shared::with_metrics`]).
    pub metrics: Arc<Metrics>,
    pub settings: Settings,
}

impl Shared {
    pub fn new(client: Client, clock: Arc<dyn Clock>, settings: Settings) -> Self {
        Self {
            recorder: settings.recorder(client.clone()),
            client,
            clock,
            metrics: Default::default(),
            settings,
        }
    }

    /// Records into `metrics` (the process-wide set) instead of a private one.
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.metrics = metrics;
        self
    }
}

/// A failure with a bounded reason: the metric label, log field, condition and
/// Event reason.
pub trait Reason {
    fn reason(&self) -> &'static str;

    /// The API server was unavailable ([`crate::apply::unavailable`]): the
    /// retry is not backed off past [`UNAVAILABLE_RETRY`].
    fn unavailable(&self) -> bool {
        false
    }
}

/// The longest retry of a reconcile that failed because the API server was
/// unavailable. Per-object backoff guards the API server against objects
/// that fail again and again; an outage is not one: every object failed
/// because of it, and doubling delays through a 20 s outage left Tenants
/// waiting up to 16 s more after it ended. Retries stay bounded by the
/// controller's concurrency and client rate limit; each is jittered.
pub const UNAVAILABLE_RETRY: Duration = Duration::from_secs(2);

/// One kind's reconcile, as the driver runs it. The chassis fields
/// ([`Shared`]) read as the context's own.
pub trait Reconcile: std::ops::Deref<Target = Shared> + Send + Sync + Sized + 'static {
    type Object: Resource<DynamicType = ()>
        + Clone
        + DeserializeOwned
        + Debug
        + Send
        + Sync
        + 'static;
    type Error: std::error::Error + Reason + Send + Sync + 'static;

    /// The metric label and log name of the kind (`tenant`, …).
    const NAME: &'static str;

    /// One reconcile of one object.
    fn reconcile(
        self: Arc<Self>,
        obj: Arc<Self::Object>,
    ) -> impl Future<Output = Result<Action, Self::Error>> + Send + 'static;

    /// Writes this controller has made so far (the writes-per-reconcile histogram).
    fn writes(&self) -> u64 {
        0
    }

    /// `obj` is gone: drop what is kept about it (metric series, caches).
    fn forget(&self, _namespace: Option<&str>, _name: &str) {}
}

/// A failed reconcile: the kind's error, or a panic.
#[derive(Debug, thiserror::Error)]
pub enum Failure<E: std::error::Error + 'static> {
    #[error(transparent)]
    Reconcile(E),
    /// A bug: retried with backoff like any failure.
    #[error("reconcile panicked: {0}")]
    Panicked(String),
}

/// The driver's state around one kind's reconcile.
pub struct Driver<R> {
    inner: Arc<R>,
    failures: Mutex<HashMap<String, u32>>,
}

fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

impl<R: Reconcile> Driver<R> {
    fn new(inner: Arc<R>) -> Self {
        Self {
            inner,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Records a failure of `key`; how long to wait before the retry.
    fn backoff_for(&self, key: &str) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut m) => {
                let n = m.entry(key.to_string()).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        self.inner.settings.backoff.delay(n, rand::random::<f64>())
    }

    fn reset(&self, key: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }

    fn forget(&self, namespace: Option<&str>, name: &str) {
        self.reset(&key(namespace, name));
        self.inner.forget(namespace, name);
    }
}

/// A spawned task that is aborted when its handle is dropped (the controller
/// dropped the reconcile: shutdown, or a newer request superseded it).
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn reconcile<R: Reconcile>(
    obj: Arc<R::Object>,
    driver: Arc<Driver<R>>,
) -> Result<Action, Failure<R::Error>> {
    let inner = driver.inner.clone();
    let writes = inner.clone();
    let _timer = inner.metrics.reconcile(R::NAME, move || writes.writes());
    let (namespace, name) = (obj.namespace(), obj.name_any());
    let span = info_span!("reconcile", kind = R::NAME, namespace = namespace.as_deref().unwrap_or_default(), name = %name);
    let mut task = AbortOnDrop(tokio::spawn(
        async move {
            debug!("reconcile started");
            let out = inner.reconcile(obj).await;
            debug!(ok = out.is_ok(), "reconcile finished");
            out
        }
        .instrument(span),
    ));
    let result = match (&mut task.0).await {
        Ok(Ok(action)) => Ok(action),
        Ok(Err(e)) => Err(Failure::Reconcile(e)),
        Err(e) => Err(Failure::Panicked(e.to_string())),
    };
    if result.is_ok() {
        driver.reset(&key(namespace.as_deref(), &name));
    }
    result
}

fn error_policy<R: Reconcile>(
    obj: Arc<R::Object>,
    error: &Failure<R::Error>,
    driver: Arc<Driver<R>>,
) -> Action {
    let (namespace, name) = (obj.namespace(), obj.name_any());
    let delay = driver.backoff_for(&key(namespace.as_deref(), &name));
    let delay = match error {
        Failure::Reconcile(e) if e.unavailable() && delay > UNAVAILABLE_RETRY => {
            crate::controller::jittered(UNAVAILABLE_RETRY)
        }
        _ => delay,
    };
    let reason = match error {
        Failure::Reconcile(e) => e.reason(),
        Failure::Panicked(_) => "Panic",
    };
    driver.inner.metrics.reconcile_failure(R::NAME, reason);
    warn!(kind = R::NAME, namespace = namespace.as_deref().unwrap_or_default(), %name, reason, error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

/// The store and trigger stream of a controller's own kind: every touched
/// object (deletions too, so the driver learns when one is gone).
pub fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
) -> (
    Store<K>,
    impl Stream<Item = Result<K, watcher::Error>> + Send + 'static,
)
where
    K: Resource<DynamicType = ()> + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
{
    let (reader, writer) = reflector::store::<K>();
    let stream =
        reflector::reflector(writer, watcher(api, config).default_backoff()).touched_objects();
    (reader, stream)
}

/// Runs `controller` with `inner`'s reconcile until `shutdown` resolves.
pub async fn run<R: Reconcile>(
    controller: Controller<R::Object>,
    inner: Arc<R>,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let concurrency = inner.settings.concurrency;
    let driver = Arc::new(Driver::new(inner));
    let forget = driver.clone();
    controller
        .with_config(controller::Config::default().concurrency(concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile::<R>, error_policy::<R>, driver)
        .for_each(move |res| {
            match res {
                Ok(_) => {}
                Err(controller::Error::ObjectNotFound(gone)) => {
                    forget.forget(gone.namespace.as_deref(), &gone.name);
                }
                // Reconcile failures were handled by the error policy.
                Err(e) => debug!(kind = R::NAME, error = %e, "controller event"),
            }
            async {}
        })
        .await;
}

/// Requeue exactly at `deadline` (a rotation, an expiry, a scheduled run), or
/// wait for a change. A deadline already past means "now" (at least 100 ms:
/// a zero requeue spins).
pub fn requeue_at(deadline: Option<Timestamp>, now: Timestamp) -> Action {
    match deadline {
        Some(at) => Action::requeue(
            Duration::try_from(at.duration_since(now))
                .unwrap_or_default()
                .max(Duration::from_millis(100)),
        ),
        None => Action::await_change(),
    }
}

/// Every object in `store`, cloned out of it.
pub fn cloned<K>(store: &Store<K>) -> Vec<K>
where
    K: Resource + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    store.state().iter().map(|o| o.as_ref().clone()).collect()
}

/// The reference of every object in `store` (a change that concerns them all).
pub fn all<K: Resource<DynamicType = ()> + Clone>(store: &Store<K>) -> Vec<ObjectRef<K>> {
    store
        .state()
        .iter()
        .map(|o| ObjectRef::from_obj(o.as_ref()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requeues_at_the_deadline_never_sooner_than_100ms() {
        let now = Timestamp::from_second(1_000).expect("ts");
        let at = |s| Some(Timestamp::from_second(s).expect("ts"));
        assert_eq!(
            requeue_at(at(1_060), now),
            Action::requeue(Duration::from_secs(60))
        );
        assert_eq!(
            requeue_at(at(900), now),
            Action::requeue(Duration::from_millis(100))
        );
        assert_eq!(requeue_at(None, now), Action::await_change());
    }

    #[test]
    fn keys_name_namespaced_and_cluster_objects_apart() {
        assert_eq!(key(Some("a"), "b"), "a/b");
        assert_eq!(key(None, "b"), "b");
    }
}
