//! Leader election on a `coordination.k8s.io/v1` Lease.
//!
//! One replica holds the Lease and runs the controllers; the others retry every
//! `retry_period` and take over once the holder stops renewing
//! (`renewTime + lease_duration` has passed) or releases it. Every write is a
//! replace carrying the `resourceVersion` that was read, so two replicas racing
//! for the same Lease cannot both win: the loser gets a 409 and stays standby.
//!
//! The holder renews every `lease_duration / 3` (retrying every `retry_period`
//! after a failure); if it cannot renew within `renew_deadline` of its last
//! successful renewal it has lost leadership and must stop its controllers
//! before anyone else may take over (`renew_deadline < lease_duration` is what
//! guarantees two leaders never overlap, given roughly synchronized clocks).
//! On graceful shutdown the holder clears `holderIdentity`, so a standby takes
//! over within one retry period instead of waiting for expiry.
//!
//! Expiry is judged with the configured `lease_duration` (every replica runs the
//! same configuration), not the Lease's whole-second `leaseDurationSeconds`,
//! which is still written for humans and other tools.

use std::sync::Arc;
use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::api::{Api, ObjectMeta, PostParams};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::controller::Clock;

/// Where the Lease lives, who we are, and the timings.
#[derive(Debug, Clone)]
pub struct LeaseSettings {
    pub name: String,
    pub namespace: String,
    pub identity: String,
    /// How long a Lease is valid after its last renewal.
    pub lease_duration: Duration,
    /// How long the holder keeps leading without a successful renewal.
    pub renew_deadline: Duration,
    /// How often a standby retries (and a holder retries a failed renewal).
    pub retry_period: Duration,
}

impl LeaseSettings {
    /// Checks `retry_period < renew_deadline < lease_duration`.
    pub fn validate(&self) -> Result<(), String> {
        if self.retry_period.is_zero() {
            return Err("--retry-period must be positive".into());
        }
        if self.renew_deadline <= self.retry_period {
            return Err("--renew-deadline must be longer than --retry-period".into());
        }
        if self.lease_duration <= self.renew_deadline {
            return Err("--lease-duration must be longer than --renew-deadline".into());
        }
        if self.identity.is_empty() || self.name.is_empty() || self.namespace.is_empty() {
            return Err("leader election needs a lease name, namespace and identity".into());
        }
        Ok(())
    }

    fn renew_interval(&self) -> Duration {
        (self.lease_duration / 3).min(self.renew_deadline / 2)
    }
}

/// The outcome of one attempt to acquire or renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// We hold the Lease (just acquired or renewed).
    Leading,
    /// Someone else holds a valid Lease (or won a race for it).
    Standby { holder: String },
}

/// Why a leader stopped leading.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LostLeadership {
    #[error("the leader lease was taken over by {holder}")]
    TakenOver { holder: String },
    #[error("could not renew the leader lease within the renew deadline of {0:?}")]
    RenewDeadline(Duration),
}

/// Acquires, renews and releases the Lease.
pub struct LeaderElector {
    api: Api<Lease>,
    settings: LeaseSettings,
    clock: Arc<dyn Clock>,
}

fn micro(t: Timestamp) -> MicroTime {
    MicroTime(t)
}

fn whole_seconds(d: Duration) -> i32 {
    i32::try_from(d.as_millis().div_ceil(1000).max(1)).unwrap_or(i32::MAX)
}

impl LeaderElector {
    pub fn new(client: kube::Client, settings: LeaseSettings, clock: Arc<dyn Clock>) -> Self {
        Self {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            clock,
        }
    }

    pub fn settings(&self) -> &LeaseSettings {
        &self.settings
    }

    fn expired(&self, spec: &LeaseSpec, now: Timestamp) -> bool {
        let Some(MicroTime(renewed)) = spec.renew_time.clone().or(spec.acquire_time.clone()) else {
            return true;
        };
        let valid =
            SignedDuration::try_from(self.settings.lease_duration).unwrap_or(SignedDuration::MAX);
        renewed.checked_add(valid).is_ok_and(|until| until < now)
    }

    /// One attempt to acquire the Lease (free, expired, or already ours) or
    /// renew it. API errors other than a lost race are returned.
    pub async fn try_acquire_or_renew(&self) -> Result<Attempt, kube::Error> {
        let s = &self.settings;
        let now = self.clock.now();
        let Some(mut lease) = self.api.get_opt(&s.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(s.name.clone()),
                    namespace: Some(s.namespace.clone()),
                    ..Default::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(s.identity.clone()),
                    lease_duration_seconds: Some(whole_seconds(s.lease_duration)),
                    acquire_time: Some(micro(now)),
                    renew_time: Some(micro(now)),
                    lease_transitions: Some(0),
                    ..Default::default()
                }),
            };
            return match self.api.create(&PostParams::default(), &lease).await {
                Ok(_) => {
                    info!(lease = %s.name, identity = %s.identity, "acquired the leader lease (created)");
                    Ok(Attempt::Leading)
                }
                Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Standby {
                    holder: String::new(),
                }),
                Err(e) => Err(e),
            };
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let mine = holder.as_deref() == Some(s.identity.as_str());
        if let Some(holder) = &holder
            && !mine
            && !self.expired(&spec, now)
        {
            return Ok(Attempt::Standby {
                holder: holder.clone(),
            });
        }
        let transitions = spec.lease_transitions.unwrap_or(0);
        lease.spec = Some(LeaseSpec {
            holder_identity: Some(s.identity.clone()),
            lease_duration_seconds: Some(whole_seconds(s.lease_duration)),
            acquire_time: if mine {
                spec.acquire_time.clone()
            } else {
                Some(micro(now))
            },
            renew_time: Some(micro(now)),
            lease_transitions: Some(if mine {
                transitions
            } else {
                transitions.saturating_add(1)
            }),
            ..spec
        });
        // `lease.metadata.resourceVersion` is what we read: a concurrent writer makes this a 409.
        match self
            .api
            .replace(&s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                if mine {
                    debug!(lease = %s.name, "renewed the leader lease");
                } else {
                    info!(lease = %s.name, identity = %s.identity, previous = ?holder, "acquired the leader lease");
                }
                Ok(Attempt::Leading)
            }
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(Attempt::Standby {
                holder: holder.unwrap_or_default(),
            }),
            Err(e) => Err(e),
        }
    }

    /// Retries every `retry_period` until this replica holds the Lease (true)
    /// or `cancel` fires (false). `on_attempt` sees every outcome (for
    /// readiness: a standby that can read the Lease is healthy).
    pub async fn acquire(
        &self,
        cancel: &CancellationToken,
        mut on_attempt: impl FnMut(&Result<Attempt, kube::Error>),
    ) -> bool {
        let mut last_holder = None;
        loop {
            let attempt = tokio::select! {
                a = self.try_acquire_or_renew() => a,
                () = cancel.cancelled() => return false,
            };
            on_attempt(&attempt);
            match attempt {
                Ok(Attempt::Leading) => return true,
                Ok(Attempt::Standby { holder }) => {
                    if last_holder.as_ref() != Some(&holder) {
                        info!(lease = %self.settings.name, holder = %holder, "standing by: another replica leads");
                        last_holder = Some(holder);
                    }
                }
                Err(e) => {
                    warn!(lease = %self.settings.name, error = %e, "could not read or acquire the leader lease")
                }
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.retry_period) => {}
                () = cancel.cancelled() => return false,
            }
        }
    }

    /// Renews the Lease until leadership is lost, and says why. Meant to be
    /// raced against the controllers; dropping it just stops renewing.
    pub async fn hold(&self) -> LostLeadership {
        let s = &self.settings;
        let mut last_renewed = Instant::now();
        let mut wait = s.renew_interval();
        loop {
            tokio::time::sleep(wait).await;
            let left = s.renew_deadline.saturating_sub(last_renewed.elapsed());
            if left.is_zero() {
                return LostLeadership::RenewDeadline(s.renew_deadline);
            }
            // The Lease says `renewTime` = when the attempt began: count from
            // then, not from the answer, or a slow answer would stretch this
            // replica's term past what the others read in the Lease.
            let attempt = Instant::now();
            match tokio::time::timeout(left, self.try_acquire_or_renew()).await {
                Ok(Ok(Attempt::Leading)) => {
                    last_renewed = attempt;
                    wait = s.renew_interval();
                }
                Ok(Ok(Attempt::Standby { holder })) => {
                    return LostLeadership::TakenOver { holder };
                }
                Ok(Err(e)) => {
                    warn!(lease = %s.name, error = %e, "could not renew the leader lease; retrying");
                    wait = s.retry_period;
                }
                Err(_) => return LostLeadership::RenewDeadline(s.renew_deadline),
            }
        }
    }

    /// Gives the Lease up (clears `holderIdentity`) if we still hold it, so a
    /// standby takes over at its next retry.
    pub async fn release(&self) -> Result<(), kube::Error> {
        let s = &self.settings;
        let Some(mut lease) = self.api.get_opt(&s.name).await? else {
            return Ok(());
        };
        let mut spec = lease.spec.clone().unwrap_or_default();
        if spec.holder_identity.as_deref() != Some(s.identity.as_str()) {
            return Ok(());
        }
        let now = self.clock.now();
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        spec.renew_time = Some(micro(now));
        lease.spec = Some(spec);
        match self
            .api
            .replace(&s.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => {
                info!(lease = %s.name, identity = %s.identity, "released the leader lease");
                Ok(())
            }
            // Someone else wrote it since: it is not ours to release any more.
            Err(kube::Error::Api(e)) if e.code == 409 => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// The current holder, if any (for tests and diagnostics).
    pub async fn holder(&self) -> Result<Option<String>, kube::Error> {
        Ok(self
            .api
            .get_opt(&self.settings.name)
            .await?
            .and_then(|l| l.spec)
            .and_then(|s| s.holder_identity)
            .filter(|h| !h.is_empty()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> LeaseSettings {
        LeaseSettings {
            name: "palisade-leader".into(),
            namespace: "palisade".into(),
            identity: "a".into(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    #[test]
    fn validates_timing_order() {
        assert!(settings().validate().is_ok());
        let mut s = settings();
        s.renew_deadline = Duration::from_secs(15);
        assert!(s.validate().is_err());
        let mut s = settings();
        s.retry_period = Duration::from_secs(10);
        assert!(s.validate().is_err());
        let mut s = settings();
        s.identity = String::new();
        assert!(s.validate().is_err());
    }

    #[test]
    fn renews_well_before_the_deadline() {
        let s = settings();
        assert_eq!(s.renew_interval(), Duration::from_secs(5));
        assert_eq!(whole_seconds(Duration::from_millis(300)), 1);
        assert_eq!(whole_seconds(Duration::from_secs(15)), 15);
    }
}
