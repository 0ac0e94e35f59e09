//! Prometheus metrics: one [`Metrics`] per process, shared by the controllers,
//! the API client layer and the admin server.
//!
//! Names are a contract with the chart's alerts and dashboards; they are listed
//! in [`NAMES`] and checked by `tests/runtime_admin.rs`.
//!
//! | name | type | labels |
//! |---|---|---|
//! | `palisade_reconciles_total` | counter | `controller` |
//! | `palisade_reconcile_errors_total` | counter | `controller`, `reason` |
//! | `palisade_reconcile_duration_seconds` | histogram | `controller` |
//! | `palisade_reconciles_in_flight` | gauge | `controller` |
//! | `palisade_writes_per_reconcile` | histogram | `controller` |
//! | `palisade_api_requests_total` | counter | `verb`, `result`, `resource` |
//! | `palisade_leader` | gauge | |
//! | `palisade_leadership_lost_total` | counter | |
//! | `palisade_tenants` | gauge | `ready` |
//! | `palisade_cached_objects` | gauge | |
//! | `palisade_cache_bytes` | gauge | |
//! | `palisade_backup_last_success_timestamp_seconds` | gauge | `namespace`, `schedule` |
//! | `palisade_backup_last_failure_timestamp_seconds` | gauge | `namespace`, `schedule` |
//! | `palisade_restore_test_last_success_timestamp_seconds` | gauge | `namespace`, `schedule` |
//! | `palisade_restore_test_last_result` | gauge | `namespace`, `schedule`, `result` |
//! | `palisade_secret_next_rotation_timestamp_seconds` | gauge | `tenant`, `namespace`, `secret` |

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use prometheus_client::encoding::{EncodeLabelSet, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Every metric name Palisade exports, as it appears in `/metrics`.
pub const NAMES: &[&str] = &[
    "palisade_reconciles_total",
    "palisade_reconcile_errors_total",
    "palisade_reconcile_duration_seconds",
    "palisade_reconciles_in_flight",
    "palisade_writes_per_reconcile",
    "palisade_api_requests_total",
    "palisade_leader",
    "palisade_leadership_lost_total",
    "palisade_tenants",
    "palisade_cached_objects",
    "palisade_cache_bytes",
    "palisade_backup_last_success_timestamp_seconds",
    "palisade_backup_last_failure_timestamp_seconds",
    "palisade_restore_test_last_success_timestamp_seconds",
    "palisade_restore_test_last_result",
    "palisade_secret_next_rotation_timestamp_seconds",
];

/// Possible values of the `result` label of `palisade_restore_test_last_result`.
pub const RESTORE_RESULTS: &[&str] = &["success", "failure"];

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ControllerLabels {
    pub controller: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    pub controller: String,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub verb: String,
    pub result: String,
    pub resource: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReadyLabels {
    pub ready: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ScheduleLabels {
    pub namespace: String,
    pub schedule: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RestoreResultLabels {
    pub namespace: String,
    pub schedule: String,
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SecretLabels {
    pub tenant: String,
    pub namespace: String,
    pub secret: String,
}

type TimestampGauge = Gauge<f64, AtomicU64>;

/// A family whose `# HELP`/`# TYPE` lines are exported even before its first
/// series, so dashboards, alerts and tests can rely on every name existing.
#[derive(Debug)]
struct Declared<M>(M);

impl<M: EncodeMetric> EncodeMetric for Declared<M> {
    fn encode(&self, encoder: MetricEncoder<'_>) -> Result<(), std::fmt::Error> {
        self.0.encode(encoder)
    }

    fn metric_type(&self) -> MetricType {
        self.0.metric_type()
    }

    fn is_empty(&self) -> bool {
        false
    }
}

fn duration_histogram() -> Histogram {
    Histogram::new([
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ])
}

fn writes_histogram() -> Histogram {
    Histogram::new([0.0, 1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0])
}

/// Counts Tenants by readiness at scrape time (set by the runtime once the
/// Tenant store exists).
pub type TenantCounter = Box<dyn Fn() -> (i64, i64) + Send + Sync>;

/// Reads (cached objects, their bytes) at scrape time.
pub type CacheCounter = TenantCounter;

/// Calls the scrape-time counter in `slot`, if one is installed.
fn scrape(slot: &Mutex<Option<TenantCounter>>, set: impl FnOnce((i64, i64))) {
    if let Ok(guard) = slot.lock()
        && let Some(count) = guard.as_ref()
    {
        set(count());
    }
}

/// All of Palisade's metrics and the registry that exports them.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<ControllerLabels, Counter>,
    reconcile_errors: Family<ErrorLabels, Counter>,
    reconcile_duration: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    in_flight: Family<ControllerLabels, Gauge>,
    writes_per_reconcile: Family<ControllerLabels, Histogram, fn() -> Histogram>,
    api_requests: Family<RequestLabels, Counter>,
    leader: Gauge,
    leadership_lost: Counter,
    tenants: Family<ReadyLabels, Gauge>,
    backup_last_success: Family<ScheduleLabels, TimestampGauge>,
    backup_last_failure: Family<ScheduleLabels, TimestampGauge>,
    restore_test_last_success: Family<ScheduleLabels, TimestampGauge>,
    restore_test_last_result: Family<RestoreResultLabels, Gauge>,
    secret_next_rotation: Family<SecretLabels, TimestampGauge>,
    /// The series of `secret_next_rotation` per tenant (to remove stale ones).
    secret_series: Mutex<HashMap<String, BTreeSet<(String, String)>>>,
    tenant_counter: Mutex<Option<TenantCounter>>,
    cached_objects: Gauge,
    cache_bytes: Gauge,
    cache_counter: Mutex<Option<CacheCounter>>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut m = Self {
            registry: Registry::default(),
            reconciles: Family::default(),
            reconcile_errors: Family::default(),
            reconcile_duration: Family::new_with_constructor(duration_histogram),
            in_flight: Family::default(),
            writes_per_reconcile: Family::new_with_constructor(writes_histogram),
            api_requests: Family::default(),
            leader: Gauge::default(),
            leadership_lost: Counter::default(),
            tenants: Family::default(),
            backup_last_success: Family::default(),
            backup_last_failure: Family::default(),
            restore_test_last_success: Family::default(),
            restore_test_last_result: Family::default(),
            secret_next_rotation: Family::default(),
            secret_series: Mutex::default(),
            tenant_counter: Mutex::new(None),
            cached_objects: Gauge::default(),
            cache_bytes: Gauge::default(),
            cache_counter: Mutex::new(None),
        };
        let r = &mut m.registry;
        // Counters get their `_total` suffix from the encoder.
        r.register(
            "palisade_reconciles",
            "Reconciles started, per controller",
            Declared(m.reconciles.clone()),
        );
        r.register(
            "palisade_reconcile_errors",
            "Failed reconciles, per controller and bounded reason",
            Declared(m.reconcile_errors.clone()),
        );
        r.register(
            "palisade_reconcile_duration_seconds",
            "Duration of one reconcile in seconds, per controller",
            Declared(m.reconcile_duration.clone()),
        );
        r.register(
            "palisade_reconciles_in_flight",
            "Reconciles running right now, per controller (bounded by --concurrency)",
            Declared(m.in_flight.clone()),
        );
        r.register(
            "palisade_writes_per_reconcile",
            "API writes of children made by one reconcile (0 on a converged resync)",
            Declared(m.writes_per_reconcile.clone()),
        );
        r.register(
            "palisade_api_requests",
            "Kubernetes API requests by verb, result (2xx, 4xx, 5xx, error) and resource",
            Declared(m.api_requests.clone()),
        );
        r.register(
            "palisade_leader",
            "1 while this replica holds the leader lease and runs the controllers",
            Declared(m.leader.clone()),
        );
        r.register(
            "palisade_leadership_lost",
            "Times this replica lost the leader lease (could not renew in time, or taken over) and stopped its controllers",
            Declared(m.leadership_lost.clone()),
        );
        r.register(
            "palisade_tenants",
            "Tenants by Ready condition (true, false)",
            Declared(m.tenants.clone()),
        );
        r.register(
            "palisade_cached_objects",
            "Objects held in the Tenant controller's child caches",
            Declared(m.cached_objects.clone()),
        );
        r.register(
            "palisade_cache_bytes",
            "Approximate heap bytes of the cached objects (compact JSON, keys, index)",
            Declared(m.cache_bytes.clone()),
        );
        r.register(
            "palisade_backup_last_success_timestamp_seconds",
            "Unix time of the last successful backup, per schedule",
            Declared(m.backup_last_success.clone()),
        );
        r.register(
            "palisade_backup_last_failure_timestamp_seconds",
            "Unix time of the last failed backup, per schedule",
            Declared(m.backup_last_failure.clone()),
        );
        r.register(
            "palisade_restore_test_last_success_timestamp_seconds",
            "Unix time of the last successful restore test, per schedule",
            Declared(m.restore_test_last_success.clone()),
        );
        r.register(
            "palisade_restore_test_last_result",
            "1 for the result of the last restore test (success or failure), 0 for the other",
            Declared(m.restore_test_last_result.clone()),
        );
        r.register(
            "palisade_secret_next_rotation_timestamp_seconds",
            "Unix time at which a rotated secret is next due, per secret",
            Declared(m.secret_next_rotation.clone()),
        );
        m
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> Result<String, std::fmt::Error> {
        self.refresh_tenants();
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry)?;
        Ok(out)
    }

    fn refresh_tenants(&self) {
        scrape(&self.tenant_counter, |(ready, not_ready)| {
            self.tenants
                .get_or_create(&ReadyLabels {
                    ready: "true".into(),
                })
                .set(ready);
            self.tenants
                .get_or_create(&ReadyLabels {
                    ready: "false".into(),
                })
                .set(not_ready);
        });
        scrape(&self.cache_counter, |(objects, bytes)| {
            self.cached_objects.set(objects);
            self.cache_bytes.set(bytes);
        });
    }

    /// Installs the function that reads (cached objects, bytes) at scrape time.
    pub fn set_cache_counter(&self, count: CacheCounter) {
        if let Ok(mut guard) = self.cache_counter.lock() {
            *guard = Some(count);
        }
    }

    /// Installs the function that counts Tenants (ready, not ready) at scrape time.
    pub fn set_tenant_counter(&self, count: TenantCounter) {
        if let Ok(mut guard) = self.tenant_counter.lock() {
            *guard = Some(count);
        }
    }

    /// Starts timing one reconcile of `controller`; the returned guard records
    /// count, duration, in-flight and writes when dropped. `writes` reads a
    /// monotonic counter of API writes (e.g. [`crate::apply::Applier::writes`]).
    pub fn reconcile(
        self: &Arc<Self>,
        controller: &str,
        writes: impl Fn() -> u64 + Send + 'static,
    ) -> ReconcileTimer {
        let labels = ControllerLabels {
            controller: controller.to_string(),
        };
        self.reconciles.get_or_create(&labels).inc();
        self.in_flight.get_or_create(&labels).inc();
        ReconcileTimer {
            metrics: self.clone(),
            writes_before: writes(),
            writes: Box::new(writes),
            labels,
            start: Instant::now(),
        }
    }

    /// Counts a failed reconcile with its bounded reason.
    pub fn reconcile_failure(&self, controller: &str, reason: &str) {
        self.reconcile_errors
            .get_or_create(&ErrorLabels {
                controller: controller.to_string(),
                reason: reason.to_string(),
            })
            .inc();
    }

    /// Counts one API request (see [`super::layers::ApiMetricsLayer`]).
    pub fn api_request(&self, verb: &str, resource: &str, result: &str) {
        self.api_requests
            .get_or_create(&RequestLabels {
                verb: verb.to_string(),
                result: result.to_string(),
                resource: resource.to_string(),
            })
            .inc();
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    pub fn leader(&self) -> bool {
        self.leader.get() == 1
    }

    /// Counts one lost leadership (the controllers were stopped).
    pub fn lost_leadership(&self) {
        self.leadership_lost.inc();
    }

    pub fn leadership_lost(&self) -> u64 {
        self.leadership_lost.get()
    }

    /// Last successful backup of `schedule` in `namespace` (unix seconds).
    pub fn set_backup_last_success(&self, namespace: &str, schedule: &str, unix_seconds: f64) {
        self.backup_last_success
            .get_or_create(&schedule_labels(namespace, schedule))
            .set(unix_seconds);
    }

    /// Last failed backup of `schedule` in `namespace` (unix seconds).
    pub fn set_backup_last_failure(&self, namespace: &str, schedule: &str, unix_seconds: f64) {
        self.backup_last_failure
            .get_or_create(&schedule_labels(namespace, schedule))
            .set(unix_seconds);
    }

    /// Records a restore test: its result, and the time when it succeeded.
    pub fn set_restore_test_result(
        &self,
        namespace: &str,
        schedule: &str,
        success: bool,
        unix_seconds: f64,
    ) {
        if success {
            self.restore_test_last_success
                .get_or_create(&schedule_labels(namespace, schedule))
                .set(unix_seconds);
        }
        let current = if success { "success" } else { "failure" };
        for result in RESTORE_RESULTS {
            self.restore_test_last_result
                .get_or_create(&RestoreResultLabels {
                    namespace: namespace.to_string(),
                    schedule: schedule.to_string(),
                    result: (*result).to_string(),
                })
                .set(i64::from(*result == current));
        }
    }

    /// Forgets every series of a deleted schedule.
    pub fn remove_schedule(&self, namespace: &str, schedule: &str) {
        let l = schedule_labels(namespace, schedule);
        self.backup_last_success.remove(&l);
        self.backup_last_failure.remove(&l);
        self.restore_test_last_success.remove(&l);
        for result in RESTORE_RESULTS {
            self.restore_test_last_result.remove(&RestoreResultLabels {
                namespace: namespace.to_string(),
                schedule: schedule.to_string(),
                result: (*result).to_string(),
            });
        }
    }

    /// When each rotated secret of `tenant` is next due, `(namespace, secret,
    /// unix seconds)`; the series of the tenant's secrets not listed (no longer
    /// managed, or the tenant is gone: an empty list) are removed.
    pub fn set_secret_rotations(&self, tenant: &str, due: &[(String, String, f64)]) {
        let labels = |namespace: &str, secret: &str| SecretLabels {
            tenant: tenant.to_string(),
            namespace: namespace.to_string(),
            secret: secret.to_string(),
        };
        for (namespace, secret, unix_seconds) in due {
            self.secret_next_rotation
                .get_or_create(&labels(namespace, secret))
                .set(*unix_seconds);
        }
        let now: BTreeSet<(String, String)> =
            due.iter().map(|(n, s, _)| (n.clone(), s.clone())).collect();
        let Ok(mut series) = self.secret_series.lock() else {
            return;
        };
        let before = if now.is_empty() {
            series.remove(tenant).unwrap_or_default()
        } else {
            series
                .insert(tenant.to_string(), now.clone())
                .unwrap_or_default()
        };
        for (namespace, secret) in before.difference(&now) {
            self.secret_next_rotation.remove(&labels(namespace, secret));
        }
    }
}

fn schedule_labels(namespace: &str, schedule: &str) -> ScheduleLabels {
    ScheduleLabels {
        namespace: namespace.to_string(),
        schedule: schedule.to_string(),
    }
}

/// Drop guard of one reconcile (the controller-rs pattern): records duration,
/// in-flight and writes however the reconcile ends, including cancellation.
pub struct ReconcileTimer {
    metrics: Arc<Metrics>,
    labels: ControllerLabels,
    start: Instant,
    writes_before: u64,
    writes: Box<dyn Fn() -> u64 + Send>,
}

impl Drop for ReconcileTimer {
    fn drop(&mut self) {
        let m = &self.metrics;
        m.reconcile_duration
            .get_or_create(&self.labels)
            .observe(self.start.elapsed().as_secs_f64());
        m.in_flight.get_or_create(&self.labels).dec();
        // Approximate under concurrency: the counter is shared by every reconcile
        // of the controller.
        let writes = (self.writes)().saturating_sub(self.writes_before);
        m.writes_per_reconcile
            .get_or_create(&self.labels)
            .observe(writes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_name_is_exported() {
        let m = Arc::new(Metrics::new());
        let text = m.encode().expect("encode");
        for name in NAMES {
            // OpenMetrics names a counter family without its `_total` suffix.
            let family = name.strip_suffix("_total").unwrap_or(name);
            assert!(
                text.contains(&format!("# TYPE {family} ")),
                "{name} missing from:\n{text}"
            );
        }
    }

    #[test]
    fn timer_records_on_drop() {
        let m = Arc::new(Metrics::new());
        let writes = Arc::new(AtomicU64::new(0));
        {
            let w = writes.clone();
            let _t = m.reconcile("tenant", move || {
                w.load(std::sync::atomic::Ordering::Relaxed)
            });
            writes.fetch_add(3, std::sync::atomic::Ordering::Relaxed);
        }
        m.reconcile_failure("tenant", "ApiError");
        let text = m.encode().expect("encode");
        assert!(text.contains("palisade_reconciles_total{controller=\"tenant\"} 1"));
        assert!(text.contains("palisade_reconciles_in_flight{controller=\"tenant\"} 0"));
        assert!(text.contains("palisade_writes_per_reconcile_sum{controller=\"tenant\"} 3.0"));
        assert!(text.contains(
            "palisade_reconcile_errors_total{controller=\"tenant\",reason=\"ApiError\"} 1"
        ));
        assert!(
            text.contains("palisade_reconcile_duration_seconds_count{controller=\"tenant\"} 1")
        );
    }

    #[test]
    fn restore_result_is_one_hot() {
        let m = Metrics::new();
        m.set_restore_test_result("db", "nightly", false, 10.0);
        m.set_restore_test_result("db", "nightly", true, 20.0);
        let text = m.encode().expect("encode");
        assert!(text.contains(
            "palisade_restore_test_last_result{namespace=\"db\",schedule=\"nightly\",result=\"success\"} 1"
        ));
        assert!(text.contains(
            "palisade_restore_test_last_result{namespace=\"db\",schedule=\"nightly\",result=\"failure\"} 0"
        ));
        assert!(text.contains(
            "palisade_restore_test_last_success_timestamp_seconds{namespace=\"db\",schedule=\"nightly\"} 20.0"
        ));
    }

    #[test]
    fn series_of_objects_that_are_gone_are_removed() {
        let m = Metrics::new();
        let due = |n: &str, s: &str| (n.to_string(), s.to_string(), 100.0);
        m.set_secret_rotations("acme", &[due("a", "one"), due("b", "two")]);
        m.set_secret_rotations("other", &[due("c", "three")]);
        m.set_secret_rotations("acme", &[due("a", "one")]);
        let text = m.encode().expect("encode");
        assert!(text.contains("secret=\"one\""), "{text}");
        assert!(!text.contains("secret=\"two\""), "{text}");
        m.set_secret_rotations("acme", &[]);
        let text = m.encode().expect("encode");
        assert!(!text.contains("tenant=\"acme\""), "{text}");
        assert!(text.contains("secret=\"three\""), "{text}");

        m.set_backup_last_success("db", "nightly", 1.0);
        m.set_restore_test_result("db", "nightly", true, 2.0);
        m.remove_schedule("db", "nightly");
        let text = m.encode().expect("encode");
        assert!(!text.contains("schedule=\"nightly\""), "{text}");
    }
}
