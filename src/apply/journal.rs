//! The journal of this process's own writes: the one place that decides
//! whether a watch event is the echo of a write Palisade made itself (and so
//! needs no reconcile), and whether an object the cache does not show yet was
//! written by us a moment ago (and so needs no second write).
//!
//! - [`Journal`]: children written through the [`super::Applier`] — the last
//!   resourceVersion and content hash written per object, and the writes in
//!   flight (a watch event can overtake the response of the write that caused
//!   it: [`Journal::settled`] waits for the answer before the event is judged).
//! - [`OwnWrites`]: a controller's own objects (the Tenant's finalizer and
//!   status writes): the last few resourceVersions written, and the latest
//!   copy, so a reconcile triggered before the cache caught up with our own
//!   status write does not compare against (and re-announce) stale status.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::DynamicObject;
use kube::core::ApiResource;
use kube::{Resource, ResourceExt};

use super::resource_version;

type Key = (String, String, String); // (apiVersion/kind, namespace, name)

fn key(ar: &ApiResource, ns: Option<&str>, name: &str) -> Key {
    (
        format!("{}/{}", ar.api_version, ar.kind),
        ns.unwrap_or_default().to_string(),
        name.to_string(),
    )
}

/// How long a watch event waits for this process's write of the same object
/// to be answered before it is treated as someone else's change.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(2);

/// What this process wrote through the Applier.
pub struct Journal {
    /// Objects written by this process whose watch event may not have reached the
    /// caches yet: (resourceVersion written, hash written). Prevents a second
    /// reconcile from re-applying an object the cache still shows as old.
    recent: Mutex<HashMap<Key, (u64, u64)>>,
    /// Writes sent and not yet answered, per object: a watch event for such an
    /// object may be the echo of the write, which is only known once it returns.
    in_flight: Mutex<HashMap<Key, u32>>,
    /// Bumped whenever a write is answered (see [`Journal::settled`]).
    answered: tokio::sync::watch::Sender<u64>,
    writes: AtomicU64,
}

impl Default for Journal {
    fn default() -> Self {
        Self {
            recent: Mutex::default(),
            in_flight: Mutex::default(),
            answered: tokio::sync::watch::Sender::new(0),
            writes: AtomicU64::new(0),
        }
    }
}

/// A write in flight; answered when dropped (after its result was recorded).
pub struct InFlight<'a> {
    journal: &'a Journal,
    key: Key,
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        if let Ok(mut m) = self.journal.in_flight.lock()
            && let Some(n) = m.get_mut(&self.key)
        {
            *n -= 1;
            if *n == 0 {
                m.remove(&self.key);
            }
        }
        self.journal
            .answered
            .send_modify(|n| *n = n.wrapping_add(1));
    }
}

impl Journal {
    /// Marks a write of `name` as in flight until the returned guard is
    /// dropped; drop it only after the write's result has been recorded.
    pub fn in_flight(&self, ar: &ApiResource, ns: Option<&str>, name: &str) -> InFlight<'_> {
        let key = key(ar, ns, name);
        if let Ok(mut m) = self.in_flight.lock() {
            *m.entry(key.clone()).or_insert(0) += 1;
        }
        InFlight { journal: self, key }
    }

    fn is_in_flight(&self, key: &Key) -> bool {
        self.in_flight.lock().is_ok_and(|m| m.contains_key(key))
    }

    /// Waits (at most 2 s) until no write of this process to `obj` is in
    /// flight, so that [`Journal::is_own_write`] (or [`OwnWrites::is_echo`])
    /// can recognise the echo instead of reconciling again for it.
    pub async fn settled(&self, ar: &ApiResource, ns: Option<&str>, name: &str) {
        let key = key(ar, ns, name);
        let mut answered = self.answered.subscribe();
        let wait = async {
            while self.is_in_flight(&key) {
                if answered.changed().await.is_err() {
                    return;
                }
            }
        };
        let _ = tokio::time::timeout(SETTLE_TIMEOUT, wait).await;
    }

    /// Writes made since this journal was created.
    pub fn writes(&self) -> u64 {
        self.writes.load(Ordering::Relaxed)
    }

    /// Counts a write whose result is not remembered (patches, deletes).
    pub(super) fn count(&self) {
        self.writes.fetch_add(1, Ordering::Relaxed);
    }

    /// Records a write: the version and content hash the server answered with.
    pub(super) fn remember(&self, ar: &ApiResource, obj: &DynamicObject, hash: u64) {
        self.count();
        if let Ok(mut m) = self.recent.lock() {
            if m.len() > 100_000 {
                m.clear();
            }
            m.insert(
                key(ar, obj.namespace().as_deref(), &obj.name_any()),
                (resource_version(obj).unwrap_or(0), hash),
            );
        }
    }

    /// The last write of an object: (resourceVersion, content hash).
    pub(super) fn recent_write(
        &self,
        ar: &ApiResource,
        ns: Option<&str>,
        name: &str,
    ) -> Option<(u64, u64)> {
        self.recent
            .lock()
            .ok()
            .and_then(|m| m.get(&key(ar, ns, name)).copied())
    }

    /// True when `obj` (from a watch event) is exactly the version this process
    /// last wrote: the echo of our own write, which needs no reconcile.
    pub fn is_own_write(&self, ar: &ApiResource, obj: &DynamicObject) -> bool {
        let rv = resource_version(obj).unwrap_or(0);
        rv != 0
            && self
                .recent_write(ar, obj.namespace().as_deref(), &obj.name_any())
                .is_some_and(|(written, _)| written == rv)
    }
}

/// True when `after` differs from `before` in what a controller's own write
/// to its object never changes but its reconcile decides from: the spec
/// (`generation`), a deletion, labels, annotations.
fn changed_by_others(before: &ObjectMeta, after: &ObjectMeta) -> bool {
    before.generation != after.generation
        || before.deletion_timestamp != after.deletion_timestamp
        || before.labels != after.labels
        || before.annotations != after.annotations
}

/// A controller's recent writes to its own objects (by name).
pub struct OwnWrites<K> {
    by_name: Mutex<HashMap<String, Written<K>>>,
}

struct Written<K> {
    /// resourceVersions of the last few writes (their watch echoes).
    rvs: Vec<u64>,
    /// The object as the last write returned it.
    latest: Option<Arc<K>>,
}

impl<K> Default for OwnWrites<K> {
    fn default() -> Self {
        Self {
            by_name: Mutex::default(),
        }
    }
}

impl<K: Resource> OwnWrites<K> {
    /// Records our own write of an object: `read` is the object the writer
    /// decided from, `written` the object as the server returned it.
    ///
    /// The written version's watch event is an echo only when nobody else
    /// changed the object in between: a write that changed nothing (a status
    /// already as wanted) answers with the object as it stands, and when
    /// someone else has just changed it (deleted it, edited its spec or
    /// annotations) that version is theirs, not ours. Its event must
    /// reconcile: treating it as an echo lost a Tenant's deletion (the
    /// finalizer was never removed) when a no-op status write crossed it.
    pub fn note(&self, read: &K, written: K) {
        if let Ok(mut m) = self.by_name.lock() {
            let entry = m
                .entry(written.meta().name.clone().unwrap_or_default())
                .or_insert_with(|| Written {
                    rvs: Vec::new(),
                    latest: None,
                });
            if let Some(rv) = resource_version(&written)
                .filter(|_| !changed_by_others(read.meta(), written.meta()))
            {
                // A reconcile writes the finalizer, then the status: both echo.
                entry.rvs.push(rv);
                let excess = entry.rvs.len().saturating_sub(4);
                entry.rvs.drain(..excess);
            }
            entry.latest = Some(Arc::new(written));
        }
    }

    /// True when a watch event of `name` at `resource_version` is the echo of
    /// one of our recent writes. Called after the store applied the event: once
    /// the store holds our latest write, the copy kept for
    /// [`OwnWrites::freshest`] is dropped (a thousand objects would otherwise
    /// be held twice).
    pub fn is_echo(&self, name: &str, resource_version: Option<&str>) -> bool {
        let Some(rv) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return false;
        };
        let Ok(mut m) = self.by_name.lock() else {
            return false;
        };
        let Some(w) = m.get_mut(name) else {
            return false;
        };
        if w.latest
            .as_deref()
            .and_then(super::resource_version)
            .is_some_and(|l| l <= rv)
        {
            w.latest = None;
        }
        w.rvs.contains(&rv)
    }

    /// The newer of `obj` (from the cache) and the copy this process last wrote.
    pub fn freshest(&self, obj: Arc<K>) -> Arc<K> {
        let name = obj.meta().name.clone().unwrap_or_default();
        let own = self
            .by_name
            .lock()
            .ok()
            .and_then(|m| m.get(&name)?.latest.clone());
        match own {
            Some(own) if resource_version(own.as_ref()) > resource_version(obj.as_ref()) => own,
            _ => obj,
        }
    }

    /// Forgets an object that is gone.
    pub fn forget(&self, name: &str) {
        if let Ok(mut m) = self.by_name.lock() {
            m.remove(name);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn cm(name: &str, rv: &str) -> ConfigMap {
        let mut c = ConfigMap::default();
        c.metadata.name = Some(name.into());
        c.metadata.resource_version = Some(rv.into());
        c
    }

    #[test]
    fn own_writes_are_echoes_and_the_freshest_copy_wins_until_cached() {
        let w = OwnWrites::<ConfigMap>::default();
        w.note(&cm("a", "4"), cm("a", "5"));
        w.note(&cm("a", "5"), cm("a", "7"));
        assert!(w.is_echo("a", Some("5")));
        assert!(!w.is_echo("a", Some("6")));
        assert!(!w.is_echo("b", Some("5")));
        // The cache is behind (rv 6): our rv-7 copy is fresher.
        let fresh = w.freshest(Arc::new(cm("a", "6")));
        assert_eq!(fresh.metadata.resource_version.as_deref(), Some("7"));
        // The store caught up: the copy is dropped, the cached object is used.
        assert!(w.is_echo("a", Some("7")));
        let fresh = w.freshest(Arc::new(cm("a", "7")));
        assert_eq!(fresh.metadata.resource_version.as_deref(), Some("7"));
        w.forget("a");
        assert!(!w.is_echo("a", Some("7")));
    }

    /// A status write that changed nothing answers with the object as it
    /// stands; when someone deleted (or edited) it just before, that version
    /// is theirs and its event must reconcile.
    #[test]
    fn a_write_answered_with_someone_elses_change_is_no_echo() {
        let w = OwnWrites::<ConfigMap>::default();
        let read = cm("a", "5");
        let others: [fn(&mut ObjectMeta); 4] = [
            |m| m.deletion_timestamp = Some(Time(k8s_openapi::jiff::Timestamp::UNIX_EPOCH)),
            |m| m.generation = Some(2),
            |m| m.labels = Some([("k".to_string(), "v".to_string())].into()),
            |m| m.annotations = Some([("k".to_string(), "v".to_string())].into()),
        ];
        for (i, change) in others.iter().enumerate() {
            let mut written = cm("a", &format!("{}", 6 + i));
            change(&mut written.metadata);
            w.note(&read, written);
            assert!(!w.is_echo("a", Some(&format!("{}", 6 + i))), "change {i}");
        }
        // Our own change (the finalizer, the status) is an echo.
        let mut written = cm("a", "20");
        written.metadata.finalizers = Some(vec!["f".into()]);
        w.note(&read, written);
        // Every answer is still the freshest copy for the next reconcile.
        let fresh = w.freshest(Arc::new(cm("a", "5")));
        assert_eq!(fresh.metadata.resource_version.as_deref(), Some("20"));
        assert!(w.is_echo("a", Some("20")));
    }
}
