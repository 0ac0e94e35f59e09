//! The BackupSchedule controller: starts backup and restore-test runs as Jobs at
//! their scheduled minute, folds each finished run's JSON result (its termination
//! message) into status, and keeps a bounded history of finished Jobs.
//!
//! One reconcile is a pipeline of step files, each a plain function:
//!
//! 1. [`observe`]: the schedule, its run Jobs (with what their own Pods
//!    reported), its BackupRun requests, every schedule's destination, whether
//!    the referenced Secrets exist, and `now`, into one value;
//! 2. [`validate`] (pure): cron and time zone, removed fields, destination
//!    conflicts, Secrets;
//! 3. [`plan`] (pure, table-tested): folds finished runs into status
//!    ([`fold`]), decides what is due ([`crate::backup::schedule`]) and what
//!    each request needs ([`super::backup_run`]), and computes the desired
//!    status ([`status`]), the Events, the Jobs to prune and the next wake-up;
//! 4. [`execute`]: carries the plan out (create-only Jobs with deterministic
//!    names, so a retry or a second replica gets 409 and converges), writes the
//!    status only when it changed, and turns a failing step into `Ready=False`
//!    with that step's reason and a Warning Event before returning the error;
//! 5. requeue exactly at the plan's wake-up (the next due time).

mod execute;
mod fold;
mod observe;
mod plan;
mod status;
mod validate;

use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::Recorder;
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use tracing::{Instrument, info_span, warn};

use super::{Clock, Settings};
use crate::apply::{Applier, ApplyError};
use crate::crd::backup_run::BackupRun;
use crate::crd::backup_schedule::BackupSchedule;
use crate::resources::backup_jobs::SCHEDULE_LABEL;
pub use validate::destination_key;

/// Condition types.
pub const READY: &str = "Ready";
pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
pub const LAST_RESTORE_TEST_SUCCEEDED: &str = "LastRestoreTestSucceeded";

/// A failed reconcile (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{0}: {1}")]
    Kube(&'static str, #[source] Box<kube::Error>),
    #[error("building the configuration file: {0}")]
    Config(#[from] serde_yaml::Error),
    #[error("serializing {0}: {1}")]
    Serialize(&'static str, #[source] serde_json::Error),
}

impl Error {
    /// Bounded reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Apply(e) => e.reason(),
            Error::Kube(..) => "ApiError",
            Error::Config(_) => "InvalidConfig",
            Error::Serialize(..) => "SerializeFailed",
        }
    }
}

/// What the BackupSchedule controller needs.
pub struct BackupContext {
    pub client: Client,
    pub applier: Applier,
    pub recorder: Recorder,
    pub clock: Arc<dyn Clock>,
    pub settings: Settings,
    pub schedules: Store<BackupSchedule>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    /// BackupRun requests (every namespace).
    pub requests: Store<BackupRun>,
}

async fn reconcile(bs: Arc<BackupSchedule>, ctx: Arc<BackupContext>) -> Result<Action, Error> {
    let span = info_span!("reconcile", kind = "BackupSchedule",
        namespace = %bs.namespace().unwrap_or_default(), name = %bs.name_any());
    async move {
        if bs.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let observed = observe::observe(&ctx, bs).await;
        let valid = validate::validate(&observed);
        let plan = plan::plan(&observed, &valid);
        execute::execute(&ctx, &observed, &plan).await?;
        Ok(requeue(plan.wake, ctx.clock.now()))
    }
    .instrument(span)
    .await
}

/// Wakes up at `at` (at least 100 ms from `now`), or on the next change only.
fn requeue(at: Option<Timestamp>, now: Timestamp) -> Action {
    match at {
        Some(at) => Action::requeue(
            Duration::try_from(at.duration_since(now))
                .unwrap_or_default()
                .max(Duration::from_millis(100)),
        ),
        None => Action::await_change(),
    }
}

fn error_policy(bs: Arc<BackupSchedule>, error: &Error, ctx: Arc<BackupContext>) -> Action {
    warn!(
        namespace = bs.namespace().unwrap_or_default(),
        name = %bs.name_any(),
        reason = error.reason(),
        error = %error,
        "reconcile failed"
    );
    Action::requeue(ctx.settings.backoff.delay(2, rand::random::<f64>()))
}

fn schedule_ref(o: &impl Resource) -> Option<ObjectRef<BackupSchedule>> {
    let name = o.meta().labels.as_ref()?.get(SCHEDULE_LABEL)?;
    Some(ObjectRef::new(name).within(o.meta().namespace.as_deref()?))
}

/// Runs the BackupSchedule controller until `shutdown` resolves.
pub async fn run(
    client: Client,
    clock: Arc<dyn Clock>,
    settings: Settings,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with_resync(
        client,
        clock,
        settings,
        futures::stream::pending(),
        shutdown,
    )
    .await
}

/// Like [`run`]; every item of `resync` reconciles every BackupSchedule (tests use it
/// after moving their clock; the runtime may use it for a periodic resync).
pub async fn run_with_resync(
    client: Client,
    clock: Arc<dyn Clock>,
    settings: Settings,
    resync: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let selector = watcher::Config::default().labels(SCHEDULE_LABEL);
    let (jobs_store, jobs_writer) = reflector::store::<Job>();
    let job_stream = reflector::reflector(
        jobs_writer,
        watcher(Api::<Job>::all(client.clone()), selector.clone()).default_backoff(),
    )
    .touched_objects();
    let (pods_store, pods_writer) = reflector::store::<Pod>();
    let pod_stream = reflector::reflector(
        pods_writer,
        watcher(Api::<Pod>::all(client.clone()), selector).default_backoff(),
    )
    .touched_objects();
    let (requests_store, requests_writer) = reflector::store::<BackupRun>();
    let request_stream = reflector::reflector(
        requests_writer,
        watcher(
            Api::<BackupRun>::all(client.clone()),
            watcher::Config::default(),
        )
        .default_backoff(),
    )
    .touched_objects();
    let controller = Controller::new(
        Api::<BackupSchedule>::all(client.clone()),
        watcher::Config::default(),
    );
    let schedules = controller.store();
    let ctx = Arc::new(BackupContext {
        applier: Applier::new(client.clone()),
        recorder: settings.recorder(client.clone()),
        client,
        clock,
        schedules,
        jobs: jobs_store,
        pods: pods_store,
        requests: requests_store,
        settings: settings.clone(),
    });
    controller
        .watches_stream(job_stream, |j: Job| schedule_ref(&j))
        .watches_stream(pod_stream, |p: Pod| schedule_ref(&p))
        .watches_stream(request_stream, |r: BackupRun| {
            Some(ObjectRef::new(&r.spec.schedule_name).within(r.metadata.namespace.as_deref()?))
        })
        .reconcile_all_on(resync)
        .with_config(kube::runtime::controller::Config::default().concurrency(settings.concurrency))
        .graceful_shutdown_on(shutdown)
        .run(reconcile, error_policy, ctx)
        .for_each(|_| async {})
        .await;
}
