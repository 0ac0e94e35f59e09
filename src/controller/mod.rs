//! The controllers: the only code (besides [`crate::apply`]) that calls the API.

pub mod backup_schedule;
pub mod cache;
pub mod driver;
pub mod events;
pub mod rolepolicy;
pub mod tenant;

use std::time::Duration;

use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::runtime::events::Reporter;

use crate::controller::events::Recorder;

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

/// `d` shortened by a random part of up to half, so retries that failed
/// together do not come back together.
pub(crate) fn jittered(d: Duration) -> Duration {
    d.mul_f64(1.0 - rand::random::<f64>() / 2.0)
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
            min_forced_rotation_interval: crate::resources::secrets::MIN_FORCED_ROTATION_INTERVAL,
            tenant_namespace_role: crate::operator_rbac::TENANT_NAMESPACE_ROLE.to_string(),
            service_account: None,
            gc_kinds: crate::operator_rbac::gc_default_kinds(),
        }
    }
}

/// `(namespace, name)` of `system:serviceaccount:<namespace>:<name>`.
pub fn parse_service_account_user(user: &str) -> Option<(String, String)> {
    let rest = user.strip_prefix("system:serviceaccount:")?;
    let (ns, name) = rest.split_once(':')?;
    (!ns.is_empty() && !name.is_empty() && !name.contains(':'))
        .then(|| (ns.to_string(), name.to_string()))
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
