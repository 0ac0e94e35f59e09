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
//!    each request needs ([`requests`]), and computes the desired
//!    status ([`status`]), the Events, the Jobs to prune and the next wake-up;
//! 4. [`execute`]: carries the plan out (create-only Jobs with deterministic
//!    names, so a retry or a second replica gets 409 and converges), writes the
//!    status only when it changed, and turns a failing step into `Ready=False`
//!    with that step's reason and a Warning Event before returning the error;
//! 5. requeue exactly at the plan's wake-up (the next due time).

mod error;
mod execute;
mod fold;
mod observe;
mod plan;
pub mod requests;
mod status;
mod validate;
pub mod waits;

use std::sync::Arc;

use futures::Stream;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;

use kube::Resource;
use kube::api::Api;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;

use super::driver::{self, Reconcile, Shared};
use crate::apply::Applier;
use crate::crd::backup_run::BackupRun;
use crate::crd::backup_schedule::BackupSchedule;
use crate::resources::backup_jobs::SCHEDULE_LABEL;
pub use error::{Error, Invalid};
pub use validate::destination_key;

/// Condition types.
pub const READY: &str = "Ready";
pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
pub const LAST_RESTORE_TEST_SUCCEEDED: &str = "LastRestoreTestSucceeded";

/// What the BackupSchedule controller needs.
pub struct BackupContext {
    pub shared: Shared,
    pub applier: Applier,
    pub schedules: Store<BackupSchedule>,
    pub jobs: Store<Job>,
    pub pods: Store<Pod>,
    /// BackupRun requests (every namespace).
    pub requests: Store<BackupRun>,
    /// Watches on the missing Secrets blocked schedules wait for.
    pub secret_waits: waits::SecretWaits,
}

/// The chassis fields (`client`, `recorder`, `clock`, `metrics`, `settings`)
/// read as the context's own.
impl std::ops::Deref for BackupContext {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.shared
    }
}

impl Reconcile for BackupContext {
    type Object = BackupSchedule;
    type Error = Error;
    const NAME: &'static str = "backupschedule";

    fn writes(&self) -> u64 {
        self.applier.writes()
    }

    /// A deleted schedule's backup and restore-test series go with it.
    fn forget(&self, namespace: Option<&str>, name: &str) {
        self.metrics
            .remove_schedule(namespace.unwrap_or_default(), name);
    }

    async fn reconcile(self: Arc<Self>, bs: Arc<BackupSchedule>) -> Result<Action, Error> {
        if bs.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let observed = observe::observe(&self, bs).await;
        let valid = validate::validate(&observed);
        let plan = plan::plan(&observed, &valid);
        execute::execute(&self, &observed, &plan).await?;
        Ok(driver::requeue_at(plan.wake, self.clock.now()))
    }
}

fn schedule_ref(o: &impl Resource) -> Option<ObjectRef<BackupSchedule>> {
    let name = o.meta().labels.as_ref()?.get(SCHEDULE_LABEL)?;
    Some(ObjectRef::new(name).within(o.meta().namespace.as_deref()?))
}

/// Runs the BackupSchedule controller until `shutdown` resolves.
pub async fn run(
    shared: Shared,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    run_with_resync(shared, futures::stream::pending(), shutdown).await
}

/// Like [`run`]; every item of `resync` reconciles every BackupSchedule (tests use it
/// after moving their clock; the runtime may use it for a periodic resync).
pub async fn run_with_resync(
    shared: Shared,
    resync: impl Stream<Item = ()> + Send + 'static,
    shutdown: impl std::future::Future<Output = ()> + Send + Sync + 'static,
) {
    let client = shared.client.clone();
    let selector = watcher::Config::default().labels(SCHEDULE_LABEL);
    let (jobs, job_stream) = driver::watch(Api::<Job>::all(client.clone()), selector.clone());
    let (pods, pod_stream) = driver::watch(Api::<Pod>::all(client.clone()), selector);
    let (requests, request_stream) = driver::watch(
        Api::<BackupRun>::all(client.clone()),
        watcher::Config::default(),
    );
    let (schedules, schedule_stream) = driver::watch(
        Api::<BackupSchedule>::all(client.clone()),
        watcher::Config::default(),
    );
    let (wake_tx, wake_rx) = tokio::sync::mpsc::unbounded_channel();
    let woken =
        futures::stream::unfold(
            wake_rx,
            |mut rx| async move { rx.recv().await.map(|r| (r, rx)) },
        );
    let controller = Controller::for_stream(schedule_stream, schedules.clone())
        .watches_stream(job_stream, |j: Job| schedule_ref(&j))
        .watches_stream(pod_stream, |p: Pod| schedule_ref(&p))
        .watches_stream(request_stream, |r: BackupRun| {
            Some(ObjectRef::new(&r.spec.schedule_name).within(r.metadata.namespace.as_deref()?))
        })
        .reconcile_all_on(resync)
        .reconcile_on(woken);
    let ctx = Arc::new(BackupContext {
        secret_waits: waits::SecretWaits::new(client.clone(), wake_tx),
        applier: Applier::new(client),
        shared,
        schedules,
        jobs,
        pods,
        requests,
    });
    driver::run(controller, ctx, shutdown).await;
}
