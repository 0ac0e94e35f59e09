//! The production runtime around the controllers: leader election, the admin
//! server (health and metrics), client layers (QPS/burst, request metrics),
//! telemetry with redaction, and graceful shutdown.
//!
//! [`run`] is what `palisade controller` does after parsing its flags and
//! building the client; tests run it twice against one in-process API server.

pub mod admin;
pub mod client;
pub mod leader;
pub mod process;
pub mod redact;
pub mod telemetry;

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use futures::stream::BoxStream;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::controller::cache::{ChildCache, ChildStream, Relay};
use crate::controller::driver::Shared;
use crate::controller::tenant::{self, Context};
use crate::controller::{Clock, Settings};
use crate::metrics::Metrics;
use admin::Health;
use leader::{LeaderElector, LeaseSettings, LostLeadership};

/// How the runtime runs the controllers.
#[derive(Debug, Clone)]
pub struct RuntimeSettings {
    pub controller: Settings,
    /// Reconcile every object this often (zero: never).
    pub resync_interval: Duration,
    /// `None` runs the controllers at once (a single replica).
    pub leader: Option<LeaseSettings>,
    /// How long a graceful shutdown waits for in-flight reconciles.
    pub shutdown_timeout: Duration,
    /// How long the caches may take to sync once leading; past it the
    /// replica is not live, gives its Lease up and stops (zero: no limit).
    pub sync_timeout: Duration,
    /// After losing leadership (the Lease could not be renewed in time, or
    /// was taken over): stop and return the error (the process exits and is
    /// restarted) instead of stopping the controllers and campaigning again
    /// in-process (the default).
    pub exit_on_lost_leadership: bool,
}

/// The clients the runtime uses: one for the controllers (rate-limited),
/// one for the leader Lease, which must never queue behind bulk work: a
/// renewal that waits for reconcile writes to drain can miss the renew
/// deadline of a perfectly healthy leader.
#[derive(Clone)]
pub struct Clients {
    pub api: kube::Client,
    pub lease: kube::Client,
}

/// One client for both (tests, and a client without a rate limit).
impl From<kube::Client> for Clients {
    fn from(client: kube::Client) -> Self {
        Self {
            api: client.clone(),
            lease: client,
        }
    }
}

/// Why the runtime stopped other than by a requested shutdown.
#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    /// The controllers were stopped and `exit_on_lost_leadership` is set: the
    /// process should exit non-zero and be restarted as a standby.
    #[error(transparent)]
    LostLeadership(#[from] LostLeadership),
    /// The caches did not sync in time (the API server refuses a list, or
    /// never answers): the replica gave its Lease up for a standby.
    #[error(
        "the caches did not sync within {0:?}; gave up leadership (check the operator's RBAC and the API server)"
    )]
    NotSynced(Duration),
}

/// A tick every `interval` (never when zero): a safety net that re-checks every
/// object; watches already heal drift within seconds.
pub fn resync_ticks(interval: Duration) -> BoxStream<'static, ()> {
    if interval.is_zero() {
        return futures::stream::pending().boxed();
    }
    futures::stream::unfold(
        tokio::time::interval_at(tokio::time::Instant::now() + interval, interval),
        |mut t| async move {
            t.tick().await;
            Some(((), t))
        },
    )
    .boxed()
}

/// Standby until this replica leads (if leader election is on), then runs the
/// controllers until `shutdown` fires (then drains in-flight reconciles,
/// releases the Lease and returns `Ok`) or leadership is lost. Losing it
/// stops the controllers at once (before the Lease could pass to another
/// replica: `renew_deadline < lease_duration`); then the replica stands by
/// and campaigns again in this process, with its caches kept and no backoff
/// left over, or with `exit_on_lost_leadership` returns the error.
pub async fn run(
    clients: impl Into<Clients>,
    metrics: Arc<Metrics>,
    health: Health,
    clock: Arc<dyn Clock>,
    settings: RuntimeSettings,
    shutdown: CancellationToken,
) -> Result<(), RuntimeError> {
    let clients = clients.into();
    metrics.set_leader(false);
    let elector = settings
        .leader
        .clone()
        .map(|l| LeaderElector::new(clients.lease.clone(), l, clock.clone()));
    let mut api = Api {
        client: clients.api.clone(),
        caches: None,
    };
    loop {
        if let Some(elector) = &elector {
            let h = health.clone();
            let acquired = elector
                .acquire(&shutdown, |attempt| h.set_ready(attempt.is_ok()))
                .await;
            if !acquired {
                health.set_ready(false);
                return Ok(());
            }
            // Not ready again until the caches have synced.
            health.set_ready(false);
        }
        let led = lead(
            &mut api,
            &metrics,
            &health,
            &clock,
            &settings,
            &shutdown,
            elector.as_ref(),
        )
        .await;
        match led {
            Err(RuntimeError::LostLeadership(lost)) if !settings.exit_on_lost_leadership => {
                metrics.lost_leadership();
                warn!(error = %lost, "lost leadership: controllers stopped; standing by and campaigning again");
            }
            Err(e) => {
                health.set_live(false);
                return Err(e);
            }
            Ok(()) => return Ok(()),
        }
    }
}

/// The Tenant gauges (Ready and not) from the controller's Tenant store.
fn count_tenants(metrics: &Metrics, store: kube::runtime::reflector::Store<crate::crd::Tenant>) {
    metrics.set_tenant_counter(Box::new(move || {
        let tenants = store.state();
        let ready = tenants
            .iter()
            .filter(|t| {
                t.status
                    .as_ref()
                    .is_some_and(|s| crate::crd::condition::is_true(&s.conditions, "Ready"))
            })
            .count();
        let ready = i64::try_from(ready).unwrap_or(i64::MAX);
        let all = i64::try_from(tenants.len()).unwrap_or(i64::MAX);
        (ready, all - ready)
    }));
}

/// Marks the replica ready once the Tenant store and every cache have
/// listed; past `sync_timeout` (unless zero) it is no longer live and
/// `unsynced` fires (the leader gives up).
async fn await_sync(
    store: kube::runtime::reflector::Store<crate::crd::Tenant>,
    ctx: Arc<Context>,
    health: Health,
    sync_timeout: Duration,
    unsynced: CancellationToken,
) {
    // The Controller waits on this store too, and kube's
    // `wait_until_ready` wakes only its last poller: ask again
    // every 200ms rather than sleep on a wake-up that may go to the
    // Controller instead.
    loop {
        match tokio::time::timeout(Duration::from_millis(200), store.wait_until_ready()).await {
            Ok(Ok(())) => break,
            Ok(Err(_)) => return,
            Err(_) => continue,
        }
    }
    let synced = async {
        ctx.wait_ready().await;
    };
    if sync_timeout.is_zero() {
        synced.await;
    } else if tokio::time::timeout(sync_timeout, synced).await.is_err() {
        error!(timeout = ?sync_timeout, "caches did not sync in time: not live, giving up leadership");
        health.set_live(false);
        unsynced.cancel();
        return;
    }
    info!(objects = ctx.cache.len(), "caches synced; ready");
    health.set_ready(true);
}

/// The controllers' API client and the child caches, once a first term has
/// started them: kept across terms (see [`Relay`]).
struct Api {
    client: kube::Client,
    caches: Option<(ChildCache, Relay)>,
}

impl Api {
    /// The child caches and fresh trigger streams for a new term.
    fn term_caches(&mut self) -> (ChildCache, Vec<(kube::core::ApiResource, ChildStream)>) {
        let client = &self.client;
        let (cache, relay) = self.caches.get_or_insert_with(|| {
            let (cache, streams) = tenant::child_cache(client);
            (cache, Relay::new(streams))
        });
        (cache.clone(), relay.attach())
    }
}

/// One term as leader (or the only replica): the controllers run until
/// `shutdown` or until leadership is lost; they have stopped when this returns.
async fn lead(
    api: &mut Api,
    metrics: &Arc<Metrics>,
    health: &Health,
    clock: &Arc<dyn Clock>,
    settings: &RuntimeSettings,
    shutdown: &CancellationToken,
    elector: Option<&LeaderElector>,
) -> Result<(), RuntimeError> {
    metrics.set_leader(true);
    info!(
        warm_caches = api.caches.is_some(),
        "leading: starting the controllers"
    );
    let client = api.client.clone();
    let (cache, streams) = api.term_caches();
    let counted = cache.clone();
    metrics.set_cache_counter(Box::new(move || {
        let objects = i64::try_from(counted.len()).unwrap_or(i64::MAX);
        let bytes = i64::try_from(counted.bytes()).unwrap_or(i64::MAX);
        (objects, bytes)
    }));
    let shared = Shared::new(client.clone(), clock.clone(), settings.controller.clone())
        .with_metrics(metrics.clone());
    let ctx = Arc::new(Context::with_shared(shared.clone(), cache.clone()));
    let stop = shutdown.child_token();
    let stop_signal = stop.clone();
    let (policy_stop, backup_stop) = (stop.clone(), stop.clone());
    let policies =
        crate::controller::rolepolicy::run(
            shared.clone(),
            async move { policy_stop.cancelled().await },
        );
    let backups =
        crate::controller::backup_schedule::run(
            shared,
            async move { backup_stop.cancelled().await },
        );
    let readiness: Arc<std::sync::Mutex<Option<tokio::task::JoinHandle<()>>>> = Arc::default();
    // Fired when the caches miss the sync deadline.
    let unsynced = CancellationToken::new();
    let (unsynced_signal, sync_timeout) = (unsynced.clone(), settings.sync_timeout);
    let readiness_slot = readiness.clone();
    let (h, m) = (health.clone(), metrics.clone());
    let ready_ctx = ctx.clone();
    let controllers = tenant::run_observed(
        ctx,
        streams,
        async move { stop_signal.cancelled().await },
        resync_ticks(settings.resync_interval),
        move |store| {
            count_tenants(&m, store.clone());
            let task = tokio::spawn(await_sync(
                store,
                ready_ctx,
                h,
                sync_timeout,
                unsynced_signal,
            ));
            if let Ok(mut slot) = readiness_slot.lock() {
                *slot = Some(task);
            }
        },
    );
    // The three controllers share the stop signal; all run while leading.
    let controllers = async move {
        futures::future::join3(controllers, policies, backups).await;
    };
    let timeout = settings.shutdown_timeout;
    let drained = async {
        tokio::select! {
            () = controllers => {}
            () = async { shutdown.cancelled().await; tokio::time::sleep(timeout).await } => {
                warn!(?timeout, "shutdown: gave up waiting for in-flight reconciles");
            }
        }
    };
    let unsynced_wait = unsynced.clone();
    let drained = async move {
        tokio::select! {
            () = drained => false,
            () = unsynced_wait.cancelled() => true,
        }
    };
    let (lost, gave_up) = match elector {
        Some(elector) => tokio::select! {
            gave_up = drained => (None, gave_up),
            lost = elector.hold() => (Some(lost), false),
        },
        None => (None, drained.await),
    };
    // The controllers have finished (or their future was dropped above).
    stop.cancel();
    if let Ok(mut slot) = readiness.lock()
        && let Some(task) = slot.take()
    {
        task.abort();
    }
    health.set_ready(false);
    metrics.set_leader(false);
    if let Some(lost) = lost {
        error!(error = %lost, "lost leadership: controllers stopped");
        return Err(lost.into());
    }
    if let Some(elector) = elector
        && let Err(e) = elector.release().await
    {
        warn!(error = %e, "could not release the leader lease; a standby takes over when it expires");
    }
    if gave_up {
        return Err(RuntimeError::NotSynced(settings.sync_timeout));
    }
    info!("controllers stopped");
    Ok(())
}
