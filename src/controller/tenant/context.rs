//! What a Tenant reconcile needs beyond the [`Shared`] chassis: the one writer
//! of children, the child caches, the garbage collection watches, and the
//! memory of this process's own Tenant writes (whose watch echoes need no
//! reconcile).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use kube::Client;

use crate::apply::{Applier, resource_version};
use crate::controller::driver::Shared;
use crate::controller::{ChildCache, Clock, Settings, gc, parse_service_account_user};
use crate::crd::Tenant;

/// The Tenant controller's context.
pub struct Context {
    pub shared: Shared,
    pub applier: Applier,
    pub cache: ChildCache,
    /// Shared garbage collection watches (started per kind on first use).
    pub gc: gc::GcWatches,
    /// The ServiceAccount this process runs as (resolved once).
    identity: tokio::sync::OnceCell<Option<(String, String)>>,
    /// resourceVersion of this process's last write to each Tenant (status,
    /// finalizer): their watch echoes need no reconcile.
    own_tenant_writes: Mutex<HashMap<String, OwnWrites>>,
    reconciles: std::sync::atomic::AtomicU64,
}

/// The chassis fields (`client`, `recorder`, `clock`, `metrics`, `settings`)
/// read as the context's own.
impl std::ops::Deref for Context {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Context {
    pub fn new(
        client: Client,
        cache: ChildCache,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self::with_shared(Shared::new(client, clock, settings), cache)
    }

    pub fn with_shared(shared: Shared, cache: ChildCache) -> Self {
        Self {
            applier: Applier::new(shared.client.clone()),
            gc: gc::GcWatches::new(shared.client.clone(), Some(cache.clone())),
            shared,
            cache,
            identity: tokio::sync::OnceCell::new(),
            own_tenant_writes: Mutex::new(HashMap::new()),
            reconciles: Default::default(),
        }
    }

    /// Records this context's reconciles in `metrics` (the process-wide set).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.shared.metrics = metrics;
        self
    }

    /// The ServiceAccount this process runs as, `(namespace, name)`: the
    /// setting, else what the API server says (SelfSubjectReview, once).
    /// `None` for an identity that is not a ServiceAccount, or when the server
    /// cannot tell (then a warning says to set it).
    pub async fn service_account(&self) -> Option<(String, String)> {
        if let Some(sa) = &self.settings.service_account {
            return Some(sa.clone());
        }
        self.identity
            .get_or_try_init(|| async {
                use k8s_openapi::api::authentication::v1::SelfSubjectReview;
                let api: kube::Api<SelfSubjectReview> = kube::Api::all(self.client.clone());
                let review = match api
                    .create(&Default::default(), &SelfSubjectReview::default())
                    .await
                {
                    Ok(r) => r,
                    Err(e) => {
                        // Asked once: a server that cannot answer (Kubernetes
                        // < 1.28) would be asked on every reconcile otherwise.
                        tracing::warn!(error = %e, "cannot ask the API server who Palisade is (SelfSubjectReview); set PALISADE_SERVICE_ACCOUNT=namespace/name to grant Palisade its per-namespace role");
                        return Ok::<_, ()>(None);
                    }
                };
                let user = review
                    .status
                    .and_then(|s| s.user_info)
                    .and_then(|u| u.username)
                    .unwrap_or_default();
                let sa = parse_service_account_user(&user);
                if sa.is_none() {
                    tracing::info!(%user, "not running as a ServiceAccount: no per-namespace RoleBinding; this identity must hold the per-namespace powers itself");
                }
                Ok::<_, ()>(sa)
            })
            .await
            .ok()
            .cloned()
            .flatten()
    }

    /// Records the resourceVersion of our own write to a Tenant.
    pub fn note_tenant_write(&self, written: Tenant) {
        if let Ok(mut m) = self.own_tenant_writes.lock() {
            let entry = m
                .entry(written.metadata.name.clone().unwrap_or_default())
                .or_default();
            if let Some(rv) = resource_version(&written) {
                // A reconcile writes the finalizer, then the status: both echo.
                entry.rvs.push(rv);
                let excess = entry.rvs.len().saturating_sub(4);
                entry.rvs.drain(..excess);
            }
            entry.latest = Some(Arc::new(written));
        }
    }

    fn own_tenant(&self, name: &str) -> Option<Arc<Tenant>> {
        self.own_tenant_writes
            .lock()
            .ok()
            .and_then(|m| m.get(name)?.latest.clone())
    }

    /// Forgets a Tenant that is gone: its remembered writes and metric series.
    pub fn forget_tenant(&self, name: &str) {
        if let Ok(mut m) = self.own_tenant_writes.lock() {
            m.remove(name);
        }
        self.metrics.set_secret_rotations(name, &[]);
        self.gc.forget(name);
    }

    /// True when a Tenant watch event is the echo of one of our own recent
    /// writes. Called after the Tenant store applied the event: once the store
    /// holds our latest write, the copy kept for [`Context::freshest`] is
    /// dropped (a thousand Tenants would otherwise be held twice).
    pub fn is_tenant_echo(&self, name: &str, resource_version: Option<&str>) -> bool {
        let Some(rv) = resource_version.and_then(|v| v.parse::<u64>().ok()) else {
            return false;
        };
        let Ok(mut m) = self.own_tenant_writes.lock() else {
            return false;
        };
        let Some(w) = m.get_mut(name) else {
            return false;
        };
        if w.latest
            .as_deref()
            .and_then(crate::apply::resource_version)
            .is_some_and(|l| l <= rv)
        {
            w.latest = None;
        }
        w.rvs.contains(&rv)
    }

    /// The newer of `tenant` (from the cache) and the Tenant this process last
    /// wrote: a reconcile triggered before the cache caught up with our own
    /// status write must not compare against (and re-announce) stale status.
    pub fn freshest(&self, tenant: Arc<Tenant>) -> Arc<Tenant> {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        match self.own_tenant(&name) {
            Some(own) if resource_version(own.as_ref()) > resource_version(tenant.as_ref()) => own,
            _ => tenant,
        }
    }

    /// Reconciles started by this context (for tests and benchmarks).
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub(super) fn count_reconcile(&self) {
        self.reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// This process's recent writes to one Tenant.
#[derive(Default)]
struct OwnWrites {
    /// resourceVersions of the last few writes (their watch echoes).
    rvs: Vec<u64>,
    /// The object as the last write returned it.
    latest: Option<Arc<Tenant>>,
}
