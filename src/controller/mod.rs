//! The controllers: the only code (besides [`crate::apply`]) that calls the API.

pub mod backup_run;
pub mod backup_schedule;
pub mod cache;
pub mod events;
pub mod gc;
pub mod rolepolicy;
pub mod secrets;
pub mod tenant;
pub mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};

use crate::apply::{Applier, resource_version};
pub use cache::ChildCache;

/// Where "now" comes from; tests inject a manual clock.
pub trait Clock: Send + Sync {
    fn now(&self) -> Timestamp;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Timestamp {
        Timestamp::now()
    }
}

/// Per-object exponential backoff with jitter for failed reconciles.
#[derive(Debug, Clone)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self {
            base: Duration::from_millis(500),
            max: Duration::from_secs(300),
        }
    }
}

impl Backoff {
    /// Delay before retry number `failures` (1-based), with ±20% jitter.
    pub fn delay(&self, failures: u32, jitter: f64) -> Duration {
        let exp = self
            .base
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)));
        let capped = exp.min(self.max);
        capped.mul_f64(1.0 + 0.2 * (jitter.clamp(0.0, 1.0) * 2.0 - 1.0))
    }
}

/// Settings every controller shares.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Maximum reconciles running at once per controller.
    pub concurrency: u16,
    pub backoff: Backoff,
    /// Reporting controller name for Events.
    pub reporter: String,
    /// Instance (pod) name for Events.
    pub instance: Option<String>,
    /// Image of the BackupSchedule run Jobs (the only source of it: schedules cannot name one).
    pub job_image: String,
    /// The process-wide metrics (backup and restore-test gauges); `None` in
    /// tests that do not look at them.
    pub metrics: Option<Arc<crate::metrics::Metrics>>,
    /// Minimum age of a Secret's current version before `palisade.dev/rotate-now`
    /// replaces it (forced rotations of one Secret are at least this far apart).
    pub min_forced_rotation_interval: std::time::Duration,
    /// The ClusterRole Palisade binds to itself in each namespace it manages
    /// (see [`crate::operator_rbac`]).
    pub tenant_namespace_role: String,
    /// The ServiceAccount Palisade runs as, `(namespace, name)`: the subject
    /// of its RoleBinding in each managed namespace. `None`: asked from the API
    /// server (SelfSubjectReview) on first use; an identity that is not a
    /// ServiceAccount (a developer's kubeconfig) gets no binding and must hold
    /// the per-namespace powers itself.
    pub service_account: Option<(String, String)>,
    /// Kinds TTL garbage collection may delete, `(apiGroup, resource)`; the
    /// Helm value `rbac.garbageCollectionKinds` grants the same.
    pub gc_kinds: Vec<(String, String)>,
}

impl Settings {
    /// The Event recorder every controller of this process uses.
    pub fn recorder(&self, client: Client) -> Recorder {
        Recorder::new(
            client,
            Reporter {
                controller: self.reporter.clone(),
                instance: self.instance.clone(),
            },
        )
    }
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            concurrency: 16,
            backoff: Backoff::default(),
            reporter: "palisade".to_string(),
            instance: None,
            job_image: format!(
                "ghcr.io/palisade-dev/palisade:{}",
                env!("CARGO_PKG_VERSION")
            ),
            metrics: None,
            min_forced_rotation_interval: crate::resources::secrets::MIN_FORCED_ROTATION_INTERVAL,
            tenant_namespace_role: crate::operator_rbac::TENANT_NAMESPACE_ROLE.to_string(),
            service_account: None,
            gc_kinds: crate::operator_rbac::gc_default_kinds(),
        }
    }
}

/// Everything a reconcile needs.
pub struct Context {
    pub client: Client,
    pub applier: Applier,
    pub cache: ChildCache,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    /// Shared garbage collection watches (started per kind on first use).
    pub gc: gc::GcWatches,
    /// Prometheus metrics (a private set unless [`Context::with_metrics`] shares one).
    pub metrics: Arc<crate::metrics::Metrics>,
    failures: Mutex<HashMap<String, u32>>,
    /// The ServiceAccount this process runs as (resolved once).
    identity: tokio::sync::OnceCell<Option<(String, String)>>,
    /// resourceVersion of this process's last write to each Tenant (status,
    /// finalizer): their watch echoes need no reconcile.
    own_tenant_writes: Mutex<HashMap<String, OwnWrites>>,
    reconciles: std::sync::atomic::AtomicU64,
}

impl Context {
    pub fn new(
        client: Client,
        cache: ChildCache,
        clock: Arc<dyn Clock>,
        settings: Settings,
    ) -> Self {
        Self {
            applier: Applier::new(client.clone()),
            gc: gc::GcWatches::new(client.clone(), Some(cache.clone())),
            recorder: settings.recorder(client.clone()),
            client,
            cache,
            clock,
            settings,
            metrics: Default::default(),
            failures: Mutex::new(HashMap::new()),
            identity: tokio::sync::OnceCell::new(),
            own_tenant_writes: Mutex::new(HashMap::new()),
            reconciles: Default::default(),
        }
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

    /// Records this context's reconciles in `metrics` (the process-wide set).
    pub fn with_metrics(mut self, metrics: Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = metrics;
        self
    }

    /// Records a failure of `key` and returns how long to wait before retrying.
    pub fn backoff_for(&self, key: &str) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut m) => {
                let n = m.entry(key.to_string()).or_insert(0);
                *n += 1;
                *n
            }
            Err(_) => 1,
        };
        self.settings.backoff.delay(n, rand::random::<f64>())
    }

    /// Records the resourceVersion of our own write to a Tenant.
    pub fn note_tenant_write(&self, written: crate::crd::Tenant) {
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

    fn own_tenant(&self, name: &str) -> Option<Arc<crate::crd::Tenant>> {
        self.own_tenant_writes
            .lock()
            .ok()
            .and_then(|m| m.get(name)?.latest.clone())
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
    pub fn freshest(&self, tenant: Arc<crate::crd::Tenant>) -> Arc<crate::crd::Tenant> {
        let name = tenant.metadata.name.clone().unwrap_or_default();
        match self.own_tenant(&name) {
            Some(own) if resource_version(own.as_ref()) > resource_version(tenant.as_ref()) => own,
            _ => tenant,
        }
    }

    /// Forgets past failures of `key` after a successful reconcile.
    pub fn reset_backoff(&self, key: &str) {
        if let Ok(mut m) = self.failures.lock() {
            m.remove(key);
        }
    }

    /// Reconciles started by this context (for tests and benchmarks).
    pub fn reconciles(&self) -> u64 {
        self.reconciles.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn count_reconcile(&self) {
        self.reconciles
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

/// `(namespace, name)` of `system:serviceaccount:<namespace>:<name>`.
pub fn parse_service_account_user(user: &str) -> Option<(String, String)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| (ns.to_string(), name.to_string()))
}

/// This process's recent writes to one Tenant.
#[derive(Default)]
struct OwnWrites {
    /// resourceVersions of the last few writes (their watch echoes).
    rvs: Vec<u64>,
    /// The object as the last write returned it.
    latest: Option<Arc<crate::crd::Tenant>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_account_users_parse() {
        assert_eq!(
            parse_service_account_user("system:serviceaccount:palisade-system:palisade"),
            Some(("palisade-system".into(), "palisade".into()))
        );
        assert_eq!(parse_service_account_user("kubernetes-admin"), None);
        assert_eq!(parse_service_account_user("system:serviceaccount::x"), None);
        assert_eq!(
            parse_service_account_user("system:serviceaccount:a:b:c"),
            None
        );
    }

    #[test]
    fn backoff_grows_exponentially_and_caps() {
        let b = Backoff {
            base: Duration::from_secs(1),
            max: Duration::from_secs(60),
        };
        assert_eq!(b.delay(1, 0.5), Duration::from_secs(1));
        assert_eq!(b.delay(3, 0.5), Duration::from_secs(4));
        assert_eq!(b.delay(30, 0.5), Duration::from_secs(60));
        assert!(b.delay(3, 0.0) < Duration::from_secs(4));
        assert!(b.delay(3, 1.0) > Duration::from_secs(4));
    }
}
