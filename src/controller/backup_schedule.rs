//! The BackupSchedule controller: starts backup and restore-test runs as Jobs at
//! their scheduled minute, folds each finished run's JSON result (its termination
//! message) into status, and keeps a bounded history of finished Jobs.
//!
//! Pipeline per reconcile: observe (Jobs and Pods from label-selected caches) →
//! fold finished runs → validate (cron, time zone, Secrets, destination) → desired
//! (ConfigMap, due Jobs; pure builders in [`crate::resources::backup_jobs`] and
//! decisions in [`crate::backup::schedule`]) → create (create-only, deterministic
//! names: a retry or a second replica gets 409 and converges) → status → prune
//! history. It requeues exactly at the next due time.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Secret};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, DynamicObject, Patch, PatchParams};
use kube::core::ApiResource;
use kube::runtime::controller::{Action, Controller};
use kube::runtime::events::{EventType, Recorder};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use tracing::{Instrument, info_span, warn};

use super::{Clock, Settings};
use crate::apply::{Applier, ApplyError};
use crate::backup::format::EncryptionKey;
use crate::backup::result::{self, JobResult};
use crate::backup::schedule::{self, Action as RunAction, DecisionInput, Schedule};
use crate::crd::backup_run::BackupRun;
use crate::crd::backup_schedule::{BackupSchedule, BackupScheduleStatus, Destination};
use crate::crd::condition::{Observed, find, merge_conditions, progress};
use crate::crd::{Condition, ConditionStatus};
use crate::resources::backup_jobs::{
    self as jobs, RUN_KIND_LABEL, RUN_LABEL, RUN_NOW_ANNOTATION, RunKind, SCHEDULE_LABEL,
    SCHEDULED_TIME_ANNOTATION, TRIGGER_ANNOTATION, Trigger, VERIFY_NOW_ANNOTATION,
};
use crate::resources::backup_network;

/// Condition types.
pub const READY: &str = "Ready";
pub const LAST_BACKUP_SUCCEEDED: &str = "LastBackupSucceeded";
pub const LAST_RESTORE_TEST_SUCCEEDED: &str = "LastRestoreTestSucceeded";

const DEFAULT_SUCCESSFUL_HISTORY: u32 = 3;
const DEFAULT_FAILED_HISTORY: u32 = 1;
/// How long a finished Job's result may lag behind the Job (the Pod's watch event
/// arriving after the Job's) before the run is recorded without one.
const RESULT_GRACE_SECONDS: i64 = 60;
const RESULT_POLL: Duration = Duration::from_secs(5);

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

fn to_chrono(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

fn from_chrono(t: DateTime<Utc>) -> Option<Timestamp> {
    Timestamp::from_second(t.timestamp()).ok()
}

/// How a Job ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Finished {
    Succeeded,
    Failed { reason: String, message: String },
}

/// One run Job as the controller sees it.
#[derive(Debug, Clone)]
struct Run {
    name: String,
    kind: RunKind,
    trigger: Trigger,
    scheduled: Option<Timestamp>,
    /// The unix minute in the name (orders runs even when the Job is gone).
    minute: i64,
    finished: Option<Finished>,
    finished_at: Option<Timestamp>,
    job: Arc<Job>,
}

fn minute_of(name: &str) -> i64 {
    name.rsplit('-')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(i64::MIN)
}

fn run_of(job: Arc<Job>) -> Option<Run> {
    let labels = job.metadata.labels.as_ref()?;
    let kind = RunKind::from_label(labels.get(RUN_KIND_LABEL)?)?;
    let ann = job.metadata.annotations.clone().unwrap_or_default();
    let status = job.status.clone().unwrap_or_default();
    let mut finished = None;
    let mut transition = None;
    for c in status.conditions.unwrap_or_default() {
        if c.status != "True" {
            continue;
        }
        if matches!(c.type_.as_str(), "Complete" | "Failed") {
            transition = c.last_transition_time.map(|t| t.0);
        }
        match c.type_.as_str() {
            "Complete" => finished = Some(Finished::Succeeded),
            "Failed" => {
                finished = Some(Finished::Failed {
                    reason: c.reason.unwrap_or_else(|| "JobFailed".into()),
                    message: c.message.unwrap_or_default(),
                })
            }
            _ => {}
        }
    }
    let name = job.name_any();
    Some(Run {
        minute: minute_of(&name),
        name,
        kind,
        trigger: match ann.get(TRIGGER_ANNOTATION).map(String::as_str) {
            Some("manual") => Trigger::Manual,
            _ => Trigger::Schedule,
        },
        scheduled: ann
            .get(SCHEDULED_TIME_ANNOTATION)
            .and_then(|s| s.parse().ok()),
        finished_at: status.completion_time.map(|t| t.0).or(transition),
        finished,
        job,
    })
}

/// Whether `pod` was created by `job` itself: its controlling ownerReference is that
/// Job's UID. Anyone who can create Pods in the namespace can copy the labels; only the
/// Job controller sets this reference.
fn owned_by_job(pod: &Pod, job: &Job) -> bool {
    let Some(uid) = job.metadata.uid.as_deref() else {
        return false;
    };
    pod.owner_references().iter().any(|o| {
        o.controller == Some(true) && o.kind == "Job" && o.api_version == "batch/v1" && o.uid == uid
    })
}

/// The termination message of the run's own pod that holds a result, if any. Pods
/// that merely carry the run's label are ignored.
fn pod_message(pods: &Store<Pod>, ns: &str, job: &Job) -> Option<String> {
    let name = job.name_any();
    let mut best: Option<(Timestamp, String)> = None;
    for p in pods.state() {
        if p.namespace().as_deref() != Some(ns)
            || p.labels().get(RUN_LABEL) != Some(&name)
            || !owned_by_job(&p, job)
        {
            continue;
        }
        let statuses = p
            .status
            .as_ref()
            .and_then(|s| s.container_statuses.clone())
            .unwrap_or_default();
        for cs in statuses {
            let Some(t) = cs.state.and_then(|s| s.terminated) else {
                continue;
            };
            let Some(m) = t.message.filter(|m| result::parse(m).is_ok()) else {
                continue;
            };
            let at = t.finished_at.map(|f| f.0).unwrap_or(Timestamp::UNIX_EPOCH);
            if best.as_ref().is_none_or(|(b, _)| at >= *b) {
                best = Some((at, m));
            }
        }
    }
    best.map(|(_, m)| m)
}

/// Keys a run's result must be signed with: `None` when the schedule has no
/// encryption (results are trusted as the Job's own Pod reported them), else the
/// schedule's key (empty when it cannot be read: then no success is accepted).
async fn result_keys(ctx: &BackupContext, bs: &BackupSchedule) -> Option<Vec<EncryptionKey>> {
    let e = bs.spec.encryption.as_ref()?;
    let ns = bs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let secret = api.get_opt(&e.key_secret_ref.name).await.ok().flatten();
    let material = secret.and_then(|s| {
        s.data
            .and_then(|d| d.get(&e.key_secret_ref.key).map(|b| b.0.clone()))
            .or_else(|| {
                s.string_data
                    .and_then(|d| d.get(&e.key_secret_ref.key).map(|v| v.clone().into_bytes()))
            })
    });
    Some(
        material
            .and_then(|m| EncryptionKey::new(m, e.key_id.clone()).ok())
            .into_iter()
            .collect(),
    )
}

/// The run's result and, when it does not authenticate, why. An unauthenticated
/// success is dropped (it never counts); an unauthenticated failure is kept so the
/// failure stays visible.
fn run_result(
    ctx: &BackupContext,
    ns: &str,
    run: &Run,
    keys: Option<&[EncryptionKey]>,
) -> (Option<JobResult>, Option<result::ResultError>) {
    let Some(text) = pod_message(&ctx.pods, ns, &run.job) else {
        return (None, None);
    };
    let checked = match keys {
        None => result::parse_authenticated(&text, &[], &run.name),
        Some([]) => result::parse(&text).map(|r| {
            (
                r,
                Err(result::ResultError::Unauthenticated("key unavailable")),
            )
        }),
        Some(keys) => result::parse_authenticated(&text, keys, &run.name),
    };
    match checked {
        Err(_) => (None, None),
        Ok((r, Ok(()))) => (Some(r), None),
        Ok((r, Err(e))) if r.ok => (None, Some(e)),
        Ok((r, Err(e))) => (Some(r), Some(e)),
    }
}

/// A stable identity of where snapshots go (two schedules must not share one).
pub fn destination_key(ns: &str, d: &Destination) -> Option<String> {
    crate::backup::destination::key(ns, d)
}

/// The older schedule (by creation time, then namespace/name) that already uses
/// `bs`'s destination, if any.
fn destination_owner(bs: &BackupSchedule, all: &[Arc<BackupSchedule>]) -> Option<String> {
    let ns = bs.namespace().unwrap_or_default();
    let key = destination_key(&ns, &bs.spec.destination)?;
    let rank = |b: &BackupSchedule| {
        (
            b.metadata.creation_timestamp.as_ref().map(|t| t.0),
            b.namespace().unwrap_or_default(),
            b.name_any(),
        )
    };
    let mine = rank(bs);
    all.iter()
        .filter(|o| o.metadata.uid != bs.metadata.uid && o.metadata.deletion_timestamp.is_none())
        .filter(|o| {
            destination_key(&o.namespace().unwrap_or_default(), &o.spec.destination).as_deref()
                == Some(key.as_str())
        })
        .filter(|o| rank(o) < mine)
        .map(|o| format!("{}/{}", o.namespace().unwrap_or_default(), o.name_any()))
        .min()
}

/// Why the schedule cannot run (a condition reason and an actionable message).
struct Invalid {
    reason: &'static str,
    message: String,
}

/// How often a schedule blocked by something the controller does not watch (a
/// Secret, another schedule's destination) is checked again.
const RECHECK: Duration = Duration::from_secs(30);

/// The status as a merge patch: fields that became empty are removed explicitly
/// (they are skipped when serialized, and a merge patch keeps what it omits).
fn status_patch(
    status: &BackupScheduleStatus,
    previous: &BackupScheduleStatus,
) -> serde_json::Value {
    let mut new = serde_json::to_value(status).unwrap_or_default();
    if let (Some(new), Ok(serde_json::Value::Object(old))) =
        (new.as_object_mut(), serde_json::to_value(previous))
    {
        for k in old.keys() {
            new.entry(k.clone()).or_insert(serde_json::Value::Null);
        }
    }
    json!({ "status": new })
}

async fn check_secrets(ctx: &BackupContext, bs: &BackupSchedule) -> Result<(), Invalid> {
    let ns = bs.namespace().unwrap_or_default();
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), &ns);
    let mut seen: BTreeMap<String, Option<Secret>> = BTreeMap::new();
    for (name, key) in jobs::referenced_secret_keys(&bs.spec) {
        if !seen.contains_key(&name) {
            let got = api.get_opt(&name).await.map_err(|e| Invalid {
                reason: "SecretUnreadable",
                message: format!("cannot read Secret {ns}/{name}: {e}"),
            })?;
            seen.insert(name.clone(), got);
        }
        let Some(secret) = seen.get(&name).and_then(Option::as_ref) else {
            return Err(Invalid {
                reason: "SecretNotFound",
                message: format!(
                    "Secret {name} does not exist in namespace {ns}; create it or fix the reference in spec"
                ),
            });
        };
        let has_key = secret.data.as_ref().is_some_and(|d| d.contains_key(&key))
            || secret
                .string_data
                .as_ref()
                .is_some_and(|d| d.contains_key(&key));
        if !has_key {
            return Err(Invalid {
                reason: "SecretKeyMissing",
                message: format!(
                    "Secret {ns}/{name} has no key {key:?}; add it or fix the key in spec"
                ),
            });
        }
    }
    Ok(())
}

fn job_ar() -> ApiResource {
    ApiResource::erase::<Job>(&())
}

fn as_dynamic(job: &Job) -> Option<DynamicObject> {
    serde_json::to_value(job)
        .ok()
        .and_then(|v| serde_json::from_value(v).ok())
}

/// Creates a run Job; `Ok(false)` when it already exists (409: started before, by
/// this or another replica).
async fn create_run(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    kind: RunKind,
    scheduled: Timestamp,
    trigger: Trigger,
) -> Result<bool, Error> {
    let image = ctx.settings.job_image.clone();
    let desired = jobs::job(bs, kind, scheduled, trigger, &image);
    match ctx.applier.create(&job_ar(), desired).await {
        Ok(_) => Ok(true),
        Err(e) if e.code() == Some(409) => Ok(false),
        Err(e) => Err(e.into()),
    }
}

/// Events collected during a reconcile, published after the status write.
#[derive(Default)]
struct Events(Vec<(EventType, &'static str, String)>);

impl Events {
    fn normal(&mut self, reason: &'static str, note: String) {
        self.0.push((EventType::Normal, reason, note));
    }
    fn warning(&mut self, reason: &'static str, note: String) {
        self.0.push((EventType::Warning, reason, note));
    }
}

fn kept(conditions: &[Condition], type_: &'static str, default: Observed) -> Observed {
    match find(conditions, type_) {
        Some(c) => Observed::new(
            type_,
            match c.status.as_str() {
                "True" => ConditionStatus::True,
                "False" => ConditionStatus::False,
                _ => ConditionStatus::Unknown,
            },
            c.reason.clone(),
            c.message.clone(),
        ),
        None => default,
    }
}

/// Replaces the observation of one condition type.
fn replace_observed(observed: &mut Vec<Observed>, o: Observed) {
    observed.retain(|x| x.type_ != o.type_);
    observed.push(o);
}

/// Folds the newly finished runs of `kind` into `status`. Returns true when a
/// finished run's result has not arrived yet (look again shortly).
#[allow(clippy::too_many_arguments)]
fn fold_results(
    ctx: &BackupContext,
    ns: &str,
    schedule: &str,
    runs: &[Run],
    kind: RunKind,
    now: Timestamp,
    keys: Option<&[EncryptionKey]>,
    status: &mut BackupScheduleStatus,
    observed: &mut Vec<Observed>,
    events: &mut Events,
) -> bool {
    let marker = match kind {
        RunKind::Backup => status.last_backup_job.clone(),
        RunKind::Verify => status.last_restore_test_job.clone(),
    };
    let after = marker.as_deref().map(minute_of).unwrap_or(i64::MIN);
    let mut finished: Vec<&Run> = runs
        .iter()
        .filter(|r| r.kind == kind && r.finished.is_some() && r.minute > after)
        .collect();
    finished.sort_by_key(|r| r.minute);
    for run in finished {
        let (res, unauthenticated) = run_result(ctx, ns, run, keys);
        let age = now.as_second() - run.finished_at.map_or(0, |t| t.as_second());
        if res.is_none() && unauthenticated.is_none() && age < RESULT_GRACE_SECONDS {
            return true;
        }
        let logs = format!("kubectl logs -n {ns} job/{}", run.name);
        let ok = run.finished == Some(Finished::Succeeded)
            && unauthenticated.is_none()
            && res.as_ref().is_none_or(|r| r.ok);
        let finished_at = run.finished_at.unwrap_or(now).as_second() as f64;
        let metrics = ctx.settings.metrics.as_deref();
        let failure = || match (&run.finished, &res) {
            (_, None) if unauthenticated.is_some() => (
                "Unauthenticated".to_string(),
                format!(
                    "Job {}: {}",
                    run.name,
                    unauthenticated
                        .as_ref()
                        .map(ToString::to_string)
                        .unwrap_or_default()
                ),
            ),
            (_, Some(r)) if !r.ok => (
                r.reason.clone().unwrap_or_else(|| {
                    if r.op == "verify" {
                        "ChecksFailed".into()
                    } else {
                        "RunFailed".into()
                    }
                }),
                r.failure_summary(),
            ),
            (Some(Finished::Failed { reason, message }), _) => (
                reason.clone(),
                if message.is_empty() {
                    "the Job failed without a result".to_string()
                } else {
                    message.clone()
                },
            ),
            _ => ("RunFailed".to_string(), "failed".to_string()),
        };
        match kind {
            RunKind::Backup => {
                status.last_backup_job = Some(run.name.clone());
                if ok {
                    status.consecutive_failures = 0;
                    let record = res.as_ref().and_then(JobResult::backup_record);
                    if let Some(r) = &res {
                        status.snapshot_count = r.snapshot_count.or(status.snapshot_count);
                        status.total_bytes = r.total_bytes.or(status.total_bytes);
                    }
                    let msg = match &record {
                        Some(b) => format!(
                            "snapshot {} ({} bytes, {}) stored at {} by Job {}",
                            b.id, b.bytes, b.duration, b.key, run.name
                        ),
                        None => format!("Job {} succeeded but reported no result", run.name),
                    };
                    if record.is_some() {
                        status.last_successful_backup = record;
                    }
                    replace_observed(
                        observed,
                        Observed::new(LAST_BACKUP_SUCCEEDED, true, "Succeeded", msg.clone()),
                    );
                    if let Some(m) = metrics {
                        m.set_backup_last_success(ns, schedule, finished_at);
                    }
                    events.normal("BackupSucceeded", msg);
                } else {
                    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
                    let (reason, summary) = failure();
                    let msg = format!(
                        "backup Job {} failed ({reason}): {summary}; {} failure(s) in a row; see `{logs}`",
                        run.name, status.consecutive_failures
                    );
                    replace_observed(
                        observed,
                        Observed::new(LAST_BACKUP_SUCCEEDED, false, "BackupFailed", msg.clone()),
                    );
                    if let Some(m) = metrics {
                        m.set_backup_last_failure(ns, schedule, finished_at);
                    }
                    events.warning("BackupFailed", msg);
                }
            }
            RunKind::Verify => {
                status.last_restore_test_job = Some(run.name.clone());
                let record = res.as_ref().and_then(JobResult::restore_record);
                if record.is_some() {
                    status.last_restore_test = record.clone();
                }
                if ok {
                    let msg = match &record {
                        Some(t) => format!(
                            "snapshot {} restored and passed {} check(s) in {} (Job {})",
                            t.snapshot,
                            t.checks.len(),
                            t.duration,
                            run.name
                        ),
                        None => format!("Job {} succeeded but reported no result", run.name),
                    };
                    replace_observed(
                        observed,
                        Observed::new(LAST_RESTORE_TEST_SUCCEEDED, true, "Passed", msg.clone()),
                    );
                    if let Some(m) = metrics {
                        m.set_restore_test_result(ns, schedule, true, finished_at);
                    }
                    events.normal("RestoreTestPassed", msg);
                } else {
                    let (reason, summary) = failure();
                    let msg = format!(
                        "restore test Job {} failed ({reason}): {summary}; see `{logs}`",
                        run.name
                    );
                    replace_observed(
                        observed,
                        Observed::new(
                            LAST_RESTORE_TEST_SUCCEEDED,
                            false,
                            "RestoreTestFailed",
                            msg.clone(),
                        ),
                    );
                    if let Some(m) = metrics {
                        m.set_restore_test_result(ns, schedule, false, finished_at);
                    }
                    events.warning("RestoreTestFailed", msg);
                }
            }
        }
    }
    false
}

/// Newest scheduled time already acted on for `kind`.
fn last_handled(
    bs: &BackupSchedule,
    runs: &[Run],
    kind: RunKind,
    status: &BackupScheduleStatus,
) -> Timestamp {
    let marker = match kind {
        RunKind::Backup => status.last_schedule_time,
        RunKind::Verify => status.last_restore_test_schedule_time,
    };
    let created = bs
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(Timestamp::UNIX_EPOCH);
    [
        Some(created),
        marker.and_then(from_chrono),
        status.last_missed_schedule_time.and_then(from_chrono),
    ]
    .into_iter()
    .flatten()
    .chain(
        runs.iter()
            .filter(|r| r.kind == kind && r.trigger == Trigger::Schedule)
            .filter_map(|r| r.scheduled),
    )
    .max()
    .unwrap_or(created)
}

fn label(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Backup => "backup",
        RunKind::Verify => "restore test",
    }
}

/// Starts what is due for `kind`; returns the next due time.
#[allow(clippy::too_many_arguments)]
async fn schedule_kind(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    sched: &Schedule,
    kind: RunKind,
    runs: &[Run],
    now: Timestamp,
    status: &mut BackupScheduleStatus,
    events: &mut Events,
    notes: &mut Vec<String>,
) -> Result<Option<Timestamp>, Error> {
    let active: Vec<&Run> = runs
        .iter()
        .filter(|r| r.kind == kind && r.finished.is_none())
        .filter(|r| r.job.metadata.deletion_timestamp.is_none())
        .collect();
    let d = schedule::decide(&DecisionInput {
        schedule: sched,
        last_handled: last_handled(bs, runs, kind, status),
        now,
        suspend: bs.spec.suspend,
        starting_deadline_seconds: bs.spec.starting_deadline_seconds,
        concurrency: bs.spec.concurrency_policy,
        active_runs: active.len(),
    });
    let what = label(kind);
    let older = if d.skipped_older > 0 {
        format!("; {} older missed run(s) were not started", d.skipped_older)
    } else {
        String::new()
    };
    match d.action {
        RunAction::Wait | RunAction::Suspended => {}
        RunAction::Start {
            scheduled,
            replace_active,
        } => {
            if replace_active {
                for r in &active {
                    if let Some(obj) = as_dynamic(&r.job) {
                        ctx.applier.delete(&job_ar(), &obj).await?;
                        events.normal(
                            "RunReplaced",
                            format!("stopped {what} Job {} (concurrencyPolicy Replace)", r.name),
                        );
                    }
                }
            }
            let created = create_run(ctx, bs, kind, scheduled, Trigger::Schedule).await?;
            let name = jobs::job_name(&bs.name_any(), kind, scheduled.as_second().div_euclid(60));
            if created {
                events.normal(
                    match kind {
                        RunKind::Backup => "BackupStarted",
                        RunKind::Verify => "RestoreTestStarted",
                    },
                    format!("started {what} Job {name} scheduled at {scheduled}{older}"),
                );
            }
            match kind {
                RunKind::Backup => status.last_schedule_time = to_chrono(scheduled),
                RunKind::Verify => status.last_restore_test_schedule_time = to_chrono(scheduled),
            }
        }
        RunAction::SkipActive { scheduled } => {
            let names: Vec<&str> = active.iter().map(|r| r.name.as_str()).collect();
            notes.push(format!(
                "the {what} scheduled at {scheduled} waits: Job {} is still running (concurrencyPolicy Forbid)",
                names.join(", ")
            ));
        }
        RunAction::SkipMissedDeadline { scheduled } => {
            let at = to_chrono(scheduled);
            if status.last_missed_schedule_time < at {
                status.last_missed_schedule_time = at;
                events.warning(
                    "MissedSchedule",
                    format!(
                        "the {what} scheduled at {scheduled} was skipped: it could not start within startingDeadlineSeconds ({}s){older}",
                        bs.spec.starting_deadline_seconds.unwrap_or_default()
                    ),
                );
            }
        }
    }
    Ok(d.next)
}

async fn manual_runs(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    now: Timestamp,
    events: &mut Events,
) -> Result<(), Error> {
    let ann = bs.metadata.annotations.clone().unwrap_or_default();
    let mut clear = serde_json::Map::new();
    for (annotation, kind) in [
        (RUN_NOW_ANNOTATION, RunKind::Backup),
        (VERIFY_NOW_ANNOTATION, RunKind::Verify),
    ] {
        if !ann.contains_key(annotation) {
            continue;
        }
        if kind == RunKind::Verify && bs.spec.restore_test.is_none() {
            events.warning(
                "RestoreTestNotConfigured",
                format!("{annotation} ignored: spec.restoreTest is not set"),
            );
        } else {
            let minute = Timestamp::from_second(now.as_second().div_euclid(60) * 60).unwrap_or(now);
            if create_run(ctx, bs, kind, minute, Trigger::Manual).await? {
                events.normal(
                    match kind {
                        RunKind::Backup => "BackupStarted",
                        RunKind::Verify => "RestoreTestStarted",
                    },
                    format!(
                        "started {} Job {} on request ({annotation})",
                        label(kind),
                        jobs::job_name(&bs.name_any(), kind, minute.as_second().div_euclid(60))
                    ),
                );
            }
        }
        clear.insert(annotation.to_string(), serde_json::Value::Null);
    }
    if !clear.is_empty() {
        ctx.applier
            .merge_patch(
                &ApiResource::erase::<BackupSchedule>(&()),
                bs.namespace().as_deref(),
                &bs.name_any(),
                json!({"metadata": {"annotations": clear}}),
            )
            .await?;
    }
    Ok(())
}

/// Starts the runs that BackupRuns of this schedule request, records their
/// outcome in their status and deletes finished ones beyond the history (see
/// [`super::backup_run`]). `startable` is `Err(why)` while the schedule is invalid.
async fn run_requests(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    runs: &[Run],
    startable: Result<(), &str>,
    now: Timestamp,
) -> Result<(), Error> {
    use super::backup_run::{self as requests, JobState};
    let ns = bs.namespace().unwrap_or_default();
    let name = bs.name_any();
    let mine: Vec<Arc<BackupRun>> = ctx
        .requests
        .state()
        .into_iter()
        .filter(|r| r.namespace().as_deref() == Some(ns.as_str()))
        .filter(|r| r.spec.schedule_name == name)
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    if mine.is_empty() {
        return Ok(());
    }
    let job_state = |job: &str| match runs.iter().find(|r| r.name == job) {
        None => JobState::Missing,
        Some(r) => match &r.finished {
            None => JobState::Running,
            Some(Finished::Succeeded) => JobState::Succeeded { at: r.finished_at },
            Some(Finished::Failed { reason, message }) => JobState::Failed {
                at: r.finished_at,
                reason: reason.clone(),
                message: message.clone(),
            },
        },
    };
    let ar = ApiResource::erase::<BackupRun>(&());
    let api: Api<BackupRun> = Api::namespaced(ctx.client.clone(), &ns);
    for request in &mine {
        let Some(d) = requests::decide(
            &name,
            bs.spec.restore_test.is_some(),
            startable,
            request,
            job_state,
            now,
        ) else {
            continue;
        };
        let run_name = request.name_any();
        if let Some(patch) = requests::owner_patch(request, bs) {
            ctx.applier
                .merge_patch(&ar, Some(&ns), &run_name, patch)
                .await?;
        }
        if request.status.as_ref() != Some(&d.status) {
            api.patch_status(
                &run_name,
                &PatchParams::default(),
                &Patch::Merge(json!({ "status": d.status })),
            )
            .await
            .map_err(|e| Error::Kube("updating BackupRun status", Box::new(e)))?;
        }
        if let Some((kind, minute)) = d.create {
            create_run(ctx, bs, kind, minute, Trigger::Manual).await?;
        }
        if let Some((warning, reason, note)) = d.event {
            let type_ = if warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            super::events::publish(
                &ctx.recorder,
                &request.object_ref(&()),
                super::events::event(type_, reason, "Run", note),
            )
            .await;
        }
    }
    for old in requests::expired(&mine, requests::HISTORY) {
        if let Some(obj) = serde_json::to_value(old)
            .ok()
            .and_then(|v| serde_json::from_value::<DynamicObject>(v).ok())
        {
            ctx.applier.delete(&ar, &obj).await?;
        }
    }
    Ok(())
}

async fn ensure_config_map(ctx: &BackupContext, bs: &BackupSchedule) -> Result<(), Error> {
    let desired = jobs::config_map(bs)?;
    let name = jobs::config_map_name(&bs.name_any());
    apply_child::<ConfigMap>(
        ctx,
        bs,
        &name,
        desired,
        "reading the configuration ConfigMap",
    )
    .await
}

/// Applies the NetworkPolicy that lets the run Pods reach DNS, PostgreSQL and
/// S3 under the tenant's default-deny (owned by the schedule, so it goes with it).
async fn ensure_egress_policy(ctx: &BackupContext, bs: &BackupSchedule) -> Result<(), Error> {
    let desired = serde_json::to_value(backup_network::egress_policy(bs))
        .map_err(|e| Error::Serialize("the egress NetworkPolicy", e))?;
    let name = backup_network::egress_policy_name(&bs.name_any());
    apply_child::<NetworkPolicy>(ctx, bs, &name, desired, "reading the egress policy").await
}

/// Server-side applies one child of the schedule in its namespace, comparing
/// with what exists first (no write when nothing changed).
async fn apply_child<K: Resource<DynamicType = ()>>(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    name: &str,
    desired: serde_json::Value,
    reading: &'static str,
) -> Result<(), Error> {
    let ns = bs.namespace().unwrap_or_default();
    let ar = &ApiResource::erase::<K>(&());
    let api: Api<DynamicObject> = Api::namespaced_with(ctx.client.clone(), &ns, ar);
    let actual = api
        .get_opt(name)
        .await
        .map_err(|e| Error::Kube(reading, Box::new(e)))?
        .and_then(|o| serde_json::to_value(o).ok());
    ctx.applier.apply(ar, desired, actual.as_ref()).await?;
    Ok(())
}

/// Deletes finished Jobs beyond the history limits (only runs already folded into
/// status).
async fn prune_history(
    ctx: &BackupContext,
    bs: &BackupSchedule,
    runs: &[Run],
    status: &BackupScheduleStatus,
) -> Result<(), Error> {
    let ok_limit = bs
        .spec
        .successful_jobs_history_limit
        .unwrap_or(DEFAULT_SUCCESSFUL_HISTORY) as usize;
    let failed_limit = bs
        .spec
        .failed_jobs_history_limit
        .unwrap_or(DEFAULT_FAILED_HISTORY) as usize;
    for kind in [RunKind::Backup, RunKind::Verify] {
        let folded = match kind {
            RunKind::Backup => status.last_backup_job.as_deref(),
            RunKind::Verify => status.last_restore_test_job.as_deref(),
        }
        .map(minute_of)
        .unwrap_or(i64::MIN);
        for succeeded in [true, false] {
            let mut done: Vec<&Run> = runs
                .iter()
                .filter(|r| r.kind == kind && r.minute <= folded)
                .filter(|r| match &r.finished {
                    Some(Finished::Succeeded) => succeeded,
                    Some(Finished::Failed { .. }) => !succeeded,
                    None => false,
                })
                .filter(|r| r.job.metadata.deletion_timestamp.is_none())
                .collect();
            done.sort_by_key(|r| std::cmp::Reverse(r.minute));
            let limit = if succeeded { ok_limit } else { failed_limit };
            for r in done.into_iter().skip(limit) {
                if let Some(obj) = as_dynamic(&r.job) {
                    ctx.applier.delete(&job_ar(), &obj).await?;
                }
            }
        }
    }
    Ok(())
}

async fn reconcile(bs: Arc<BackupSchedule>, ctx: Arc<BackupContext>) -> Result<Action, Error> {
    let name = bs.name_any();
    let ns = bs.namespace().unwrap_or_default();
    async {
        if bs.metadata.deletion_timestamp.is_some() {
            return Ok(Action::await_change());
        }
        let now = ctx.clock.now();
        let previous = bs.status.clone().unwrap_or_default();
        let mut status = previous.clone();
        let mut events = Events::default();
        let uid = bs.metadata.uid.clone();
        let runs: Vec<Run> = ctx
            .jobs
            .state()
            .into_iter()
            .filter(|j| j.namespace().as_deref() == Some(ns.as_str()))
            .filter(|j| j.labels().get(SCHEDULE_LABEL) == Some(&name))
            .filter(|j| {
                j.owner_references()
                    .iter()
                    .any(|o| Some(&o.uid) == uid.as_ref())
            })
            .filter_map(run_of)
            .collect();

        // Results first: they are facts whatever the spec says now. With encryption
        // they must be signed with the schedule's key (read only when a run is due
        // to be folded).
        let marker = |m: &Option<String>| m.as_deref().map(minute_of).unwrap_or(i64::MIN);
        let unfolded = runs.iter().any(|r| {
            r.finished.is_some()
                && r.minute
                    > match r.kind {
                        RunKind::Backup => marker(&status.last_backup_job),
                        RunKind::Verify => marker(&status.last_restore_test_job),
                    }
        });
        let keys = if unfolded {
            result_keys(&ctx, &bs).await
        } else {
            None
        };
        let mut observed: Vec<Observed> = Vec::new();
        let mut waiting_for_results = false;
        for kind in [RunKind::Backup, RunKind::Verify] {
            waiting_for_results |= fold_results(
                &ctx,
                &ns,
                &name,
                &runs,
                kind,
                now,
                keys.as_deref(),
                &mut status,
                &mut observed,
                &mut events,
            );
        }
        if !observed.iter().any(|o| o.type_ == LAST_BACKUP_SUCCEEDED) {
            observed.push(kept(
                &previous.conditions,
                LAST_BACKUP_SUCCEEDED,
                Observed::new(
                    LAST_BACKUP_SUCCEEDED,
                    ConditionStatus::Unknown,
                    "NoRunYet",
                    "no backup run has finished yet",
                ),
            ));
        }
        if bs.spec.restore_test.is_none() {
            replace_observed(&mut observed, Observed::new(
                LAST_RESTORE_TEST_SUCCEEDED,
                ConditionStatus::Unknown,
                "NotConfigured",
                "spec.restoreTest is not set: snapshots are never test-restored",
            ));
        } else if !observed
            .iter()
            .any(|o| o.type_ == LAST_RESTORE_TEST_SUCCEEDED)
        {
            observed.push(kept(
                &previous.conditions,
                LAST_RESTORE_TEST_SUCCEEDED,
                Observed::new(
                    LAST_RESTORE_TEST_SUCCEEDED,
                    ConditionStatus::Unknown,
                    "NoRunYet",
                    "no restore test has finished yet",
                ),
            ));
        }

        // Validate: any problem stops new runs and keeps the last good status.
        let mut invalid: Option<Invalid> = None;
        let backup_schedule = Schedule::parse(&bs.spec.schedule, bs.spec.time_zone.as_deref())
            .map_err(|e| Invalid {
                reason: e.reason(),
                message: format!("spec.schedule/timeZone: {e}"),
            });
        let verify_schedule = match &bs.spec.restore_test {
            Some(rt) => Schedule::parse(&rt.schedule, bs.spec.time_zone.as_deref())
                .map(Some)
                .map_err(|e| Invalid {
                    reason: e.reason(),
                    message: format!("spec.restoreTest.schedule: {e}"),
                }),
            None => Ok(None),
        };
        let (backup_schedule, verify_schedule) = match (backup_schedule, verify_schedule) {
            (Ok(b), Ok(v)) => (Some(b), v),
            (Err(e), _) | (_, Err(e)) => {
                invalid = Some(e);
                (None, None)
            }
        };
        if invalid.is_none()
            && let Some(field) = bs.spec.removed_fields().first()
        {
            invalid = Some(Invalid {
                reason: "RemovedField",
                message: format!(
                    "{field} is no longer supported: run Jobs use the operator's image (--job-image, chart value controller.jobImage) and the namespace's default ServiceAccount without a token; remove the field"
                ),
            });
        }
        if invalid.is_none()
            && let Some(owner) = destination_owner(&bs, &ctx.schedules.state())
        {
            invalid = Some(Invalid {
                reason: "DestinationConflict",
                message: format!(
                    "spec.destination is already used by BackupSchedule {owner}; give each schedule its own bucket prefix, claim subPath or path"
                ),
            });
        }
        if invalid.is_none()
            && let Err(e) = check_secrets(&ctx, &bs).await
        {
            invalid = Some(e);
        }

        let mut next: Vec<Timestamp> = Vec::new();
        let mut notes: Vec<String> = Vec::new();
        let ready = match (&invalid, backup_schedule) {
            (Some(inv), _) => {
                status.next_schedule_time = None;
                Observed::new(
                    READY,
                    false,
                    inv.reason,
                    format!("{}; no runs start until this is fixed", inv.message),
                )
            }
            (None, Some(sched)) => {
                ensure_config_map(&ctx, &bs).await?;
                ensure_egress_policy(&ctx, &bs).await?;
                manual_runs(&ctx, &bs, now, &mut events).await?;
                let n = schedule_kind(
                    &ctx,
                    &bs,
                    &sched,
                    RunKind::Backup,
                    &runs,
                    now,
                    &mut status,
                    &mut events,
                    &mut notes,
                )
                .await?;
                status.next_schedule_time = n.and_then(to_chrono);
                next.extend(n);
                if let Some(vs) = &verify_schedule {
                    let v = schedule_kind(
                        &ctx,
                        &bs,
                        vs,
                        RunKind::Verify,
                        &runs,
                        now,
                        &mut status,
                        &mut events,
                        &mut notes,
                    )
                    .await?;
                    next.extend(v);
                }
                let cond = |t: &str| observed.iter().find(|o| o.type_ == t).cloned();
                let backup_failed = cond(LAST_BACKUP_SUCCEEDED)
                    .filter(|o| o.status == ConditionStatus::False);
                let test_failed = cond(LAST_RESTORE_TEST_SUCCEEDED)
                    .filter(|o| o.status == ConditionStatus::False);
                let suffix = if notes.is_empty() {
                    String::new()
                } else {
                    format!("; {}", notes.join("; "))
                };
                if let Some(f) = backup_failed {
                    Observed::new(READY, false, "BackupFailing", format!("{}{suffix}", f.message))
                } else if let Some(f) = test_failed {
                    Observed::new(
                        READY,
                        false,
                        "RestoreTestFailing",
                        format!("{}{suffix}", f.message),
                    )
                } else if bs.spec.suspend {
                    Observed::new(
                        READY,
                        true,
                        "Suspended",
                        "spec.suspend is true: no runs start; snapshots are kept",
                    )
                } else {
                    Observed::new(
                        READY,
                        true,
                        "Scheduled",
                        match status.next_schedule_time {
                            Some(t) => format!("next backup at {}{suffix}", t.to_rfc3339()),
                            None => format!("no further backup is due{suffix}"),
                        },
                    )
                }
            }
            (None, None) => Observed::new(READY, false, "InvalidSchedule", "no schedule"),
        };
        let why = invalid.as_ref().map(|i| format!("{}: {}", i.reason, i.message));
        run_requests(&ctx, &bs, &runs, why.as_deref().map_or(Ok(()), Err), now).await?;
        // Not ready means an invalid spec, a missing Secret, a destination
        // conflict or failing runs: each needs a human.
        observed.extend(progress(&ready, true));
        observed.push(ready);
        status.observed_generation = bs.metadata.generation;
        status.conditions =
            merge_conditions(&previous.conditions, &observed, bs.metadata.generation, now);

        if status != previous {
            for c in &status.conditions {
                let before = previous.conditions.iter().find(|p| p.type_ == c.type_);
                if c.type_ == READY
                    && c.status == "False"
                    && before.is_none_or(|p| p.status != c.status || p.reason != c.reason)
                    && invalid.is_some()
                {
                    events.warning("InvalidSpec", format!("{}: {}", c.reason, c.message));
                }
            }
            let api: Api<BackupSchedule> = Api::namespaced(ctx.client.clone(), &ns);
            api.patch_status(
                &name,
                &PatchParams::default(),
                &Patch::Merge(status_patch(&status, &previous)),
            )
            .await
            .map_err(|e| Error::Kube("updating BackupSchedule status", Box::new(e)))?;
        }
        let on = bs.object_ref(&());
        for (type_, reason, note) in events.0 {
            super::events::publish(
                &ctx.recorder,
                &on,
                super::events::event(type_, reason, "Run", note),
            )
            .await;
        }
        prune_history(&ctx, &bs, &runs, &status).await?;

        let mut wake = next.into_iter().min();
        if invalid
            .as_ref()
            .is_some_and(|i| !matches!(i.reason, "InvalidSchedule" | "InvalidTimeZone"))
        {
            wake = Timestamp::from_second(now.as_second() + RECHECK.as_secs() as i64).ok();
        }
        if waiting_for_results {
            let soon = Timestamp::from_second(now.as_second() + RESULT_POLL.as_secs() as i64).ok();
            wake = match (wake, soon) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            };
        }
        Ok(match wake {
            Some(at) => {
                let wait = Duration::try_from(at.duration_since(ctx.clock.now()))
                    .unwrap_or_default()
                    .max(Duration::from_millis(100));
                Action::requeue(wait)
            }
            None => Action::await_change(),
        })
    }
    .instrument(info_span!("reconcile", kind = "BackupSchedule", namespace = %ns, name = %name))
    .await
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn destinations_are_normalized() {
        let d: Destination =
            serde_yaml::from_str("s3: {bucket: b, prefix: /orders/}").expect("dest");
        let e: Destination = serde_yaml::from_str("s3: {bucket: b, prefix: orders}").expect("dest");
        assert_eq!(destination_key("a", &d), destination_key("b", &e));
        let p: Destination = serde_yaml::from_str("path: /data/").expect("dest");
        assert_ne!(destination_key("a", &p), destination_key("b", &p));
        assert_eq!(minute_of("orders-verify-29000000"), 29_000_000);
    }
}
