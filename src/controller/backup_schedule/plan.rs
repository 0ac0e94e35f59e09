//! Step 3, plan (pure): everything one reconcile of a BackupSchedule will do,
//! decided from what it observed and a clock value, before any write.
//!
//! A [`Plan`] holds, in the order [`super::execute`] carries them out: the
//! steps before the status write (apply the run ConfigMap and egress
//! NetworkPolicy, start manual runs and clear their annotations, stop and start
//! scheduled runs, answer BackupRun requests), the desired status, the Events
//! on the schedule, the finished Jobs beyond the history limits (deleted after
//! the status that folded them is written), the run metrics and the next
//! wake-up.
//!
//! The decisions themselves live where they are shared and tested:
//! [`crate::backup::schedule::decide`] (what is due for one kind of run),
//! [`super::requests`] (what a BackupRun request needs),
//! [`super::fold`] (finished runs into status), [`super::status`] (`Ready`).

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;

use serde_json::Value;

use super::Invalid;
use super::READY;
use super::fold::{self, Note, RunMetric};
use super::observe::{Finished, Observed, Run, folded_minute};
use super::requests::{self, JobState};
use super::status;
use super::validate::Valid;
use crate::backup::schedule::{self, Action as RunAction, DecisionInput, Schedule};
use crate::crd::Condition;
use crate::crd::backup_run::{BackupRun, BackupRunStatus};
use crate::crd::backup_schedule::{BackupSchedule, BackupScheduleStatus};
use crate::resources::backup_jobs::{
    self as jobs, RUN_NOW_ANNOTATION, RunKind, Trigger, VERIFY_NOW_ANNOTATION,
};

const DEFAULT_SUCCESSFUL_HISTORY: u32 = 3;
const DEFAULT_FAILED_HISTORY: u32 = 1;
/// How often a schedule blocked by something the controller does not watch (a
/// Secret, another schedule's destination) is checked again.
pub const RECHECK: Duration = Duration::from_secs(30);
/// How soon to look again for a finished run's result that is on its way.
pub const RESULT_POLL: Duration = Duration::from_secs(5);

/// A run Job to create (create-only: a 409 means it was started before, by this
/// or another replica).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewJob {
    pub kind: RunKind,
    pub scheduled: Timestamp,
    pub trigger: Trigger,
    /// Its deterministic name (`<schedule>-<unix minute>`).
    pub name: String,
    /// Published when the Job was created now (not when it existed).
    pub started: Option<Note>,
}

/// What one BackupRun request needs, in this order.
#[derive(Debug, Clone)]
pub struct RequestStep {
    pub request: Arc<BackupRun>,
    /// Adds the schedule to its ownerReferences (it goes with the schedule).
    pub owner_patch: Option<Value>,
    /// The status to write, when it changes.
    pub status: Option<BackupRunStatus>,
    pub create: Option<NewJob>,
    /// An Event on the request.
    pub event: Option<Note>,
}

/// One write of a plan.
#[derive(Debug, Clone)]
pub enum Step {
    /// Server-side apply the run configuration ConfigMap.
    ApplyConfigMap,
    /// Server-side apply the NetworkPolicy that lets run Pods reach PostgreSQL
    /// and the destination under the tenant's default-deny.
    ApplyEgressPolicy,
    CreateJob(NewJob),
    /// Stop an active run (`concurrencyPolicy: Replace`); `event` once it is.
    ReplaceJob {
        job: Arc<Job>,
        event: Note,
    },
    /// Remove the manual-trigger annotations that were acted on.
    ClearAnnotations(Vec<&'static str>),
    Request(RequestStep),
    /// A finished BackupRun beyond the history.
    DeleteRequest(Arc<BackupRun>),
    /// A finished Job beyond the history limits.
    PruneJob(Arc<Job>),
}

impl NewJob {
    /// See [`Step::failure`].
    pub fn failure(&self) -> (&'static str, String) {
        (
            "JobCreateFailed",
            format!("starting {} Job {}", label(self.kind), self.name),
        )
    }
}

impl RequestStep {
    /// See [`Step::failure`] (creating its Job fails as [`NewJob::failure`]).
    pub fn failure(&self) -> (&'static str, String) {
        (
            "BackupRunUpdateFailed",
            format!("updating BackupRun {}", self.request.name_any()),
        )
    }
}

impl Step {
    /// When this step fails: the bounded reason of `Ready=False` and of the
    /// Warning Event, and what was being done (the start of the message).
    pub fn failure(&self) -> (&'static str, String) {
        match self {
            Step::ApplyConfigMap => (
                "ConfigMapFailed",
                "applying the run configuration ConfigMap".into(),
            ),
            Step::ApplyEgressPolicy => (
                "NetworkPolicyFailed",
                "applying the run egress NetworkPolicy".into(),
            ),
            Step::CreateJob(new) => new.failure(),
            Step::ReplaceJob { job, .. } => (
                "JobDeleteFailed",
                format!(
                    "stopping Job {} (concurrencyPolicy Replace)",
                    job.name_any()
                ),
            ),
            Step::ClearAnnotations(_) => (
                "AnnotationUpdateFailed",
                "clearing the manual-run annotations".into(),
            ),
            Step::Request(r) => r.failure(),
            Step::DeleteRequest(r) => (
                "BackupRunUpdateFailed",
                format!("deleting finished BackupRun {}", r.name_any()),
            ),
            Step::PruneJob(job) => (
                "HistoryPruneFailed",
                format!(
                    "deleting finished Job {} beyond the history limit",
                    job.name_any()
                ),
            ),
        }
    }
}

/// Everything one reconcile does.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Carried out in order before the status write; the first failure stops.
    pub steps: Vec<Step>,
    /// The desired status (written when it differs from the stored one).
    pub status: BackupScheduleStatus,
    /// Events on the schedule, published after the status write.
    pub events: Vec<Note>,
    /// Finished Jobs beyond the history limits (only runs `status` folded),
    /// deleted after the status write.
    pub prune: Vec<Step>,
    pub metrics: Vec<RunMetric>,
    /// When to reconcile again (`None`: on the next change only).
    pub wake: Option<Timestamp>,
}

fn to_chrono(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), t.subsec_nanosecond().max(0) as u32)
}

fn from_chrono(t: DateTime<Utc>) -> Option<Timestamp> {
    Timestamp::from_second(t.timestamp()).ok()
}

fn label(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Backup => "backup",
        RunKind::Verify => "restore test",
    }
}

fn started_reason(kind: RunKind) -> &'static str {
    match kind {
        RunKind::Backup => "BackupStarted",
        RunKind::Verify => "RestoreTestStarted",
    }
}

/// Plans the reconcile of what `observed` shows, validated as `valid`.
pub fn plan(observed: &Observed, valid: &Result<Valid, Invalid>) -> Plan {
    let bs = &observed.schedule;
    let previous = observed.previous();
    let folded = fold::fold(observed);
    let mut status = folded.status;
    let mut steps = Vec::new();
    let mut events = folded.events;
    let mut notes = Vec::new();
    let mut next = Vec::new();
    match valid {
        Err(_) => status.next_schedule_time = None,
        Ok(v) => {
            steps.extend([Step::ApplyConfigMap, Step::ApplyEgressPolicy]);
            let (manual, manual_events) = manual_runs(observed);
            steps.extend(manual);
            events.extend(manual_events);
            for (kind, sched) in [
                (RunKind::Backup, Some(&v.backup)),
                (RunKind::Verify, v.verify.as_ref()),
            ] {
                let Some(sched) = sched else { continue };
                let k = decide_kind(observed, sched, kind, status);
                status = k.status;
                if kind == RunKind::Backup {
                    status.next_schedule_time = k.next.and_then(to_chrono);
                }
                steps.extend(k.steps);
                events.extend(k.events);
                notes.extend(k.note);
                next.extend(k.next);
            }
        }
    }
    let invalid = valid.as_ref().err();
    let ready = status::ready(
        invalid,
        &folded.conditions,
        bs.spec.suspend,
        status.next_schedule_time,
        &notes,
    );
    steps.extend(request_steps(observed, invalid));
    status.observed_generation = bs.metadata.generation;
    status.conditions = status::conditions(
        &previous.conditions,
        folded.conditions,
        ready,
        bs.metadata.generation,
        observed.now,
    );
    if status != previous && invalid.is_some() {
        events.extend(invalid_spec_event(&previous.conditions, &status.conditions));
    }
    Plan {
        prune: prune(bs, &observed.runs, &status),
        wake: wake(observed.now, next, invalid, folded.waiting),
        steps,
        status,
        events,
        metrics: folded.metrics,
    }
}

/// The Warning for an invalid spec, once per change of `Ready`'s status or
/// reason.
fn invalid_spec_event(previous: &[Condition], current: &[Condition]) -> Option<Note> {
    let c = current
        .iter()
        .find(|c| c.type_ == READY && c.status == "False")?;
    let before = previous.iter().find(|p| p.type_ == READY);
    before
        .is_none_or(|p| p.status != c.status || p.reason != c.reason)
        .then(|| Note::warning("InvalidSpec", format!("{}: {}", c.reason, c.message)))
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

/// What the cron schedule of one kind of run wants now.
struct KindPlan {
    status: BackupScheduleStatus,
    steps: Vec<Step>,
    events: Vec<Note>,
    /// Why a due run waits (goes into `Ready`'s message).
    note: Option<String>,
    next: Option<Timestamp>,
}

/// Decides what is due for `kind` (see [`schedule::decide`]) and records it in
/// `status` (started or missed: acted on either way).
fn decide_kind(
    observed: &Observed,
    sched: &Schedule,
    kind: RunKind,
    mut status: BackupScheduleStatus,
) -> KindPlan {
    let bs = &observed.schedule;
    let active: Vec<&Run> = observed
        .runs
        .iter()
        .filter(|r| r.kind == kind && r.is_active())
        .collect();
    let d = schedule::decide(&DecisionInput {
        schedule: sched,
        last_handled: last_handled(bs, &observed.runs, kind, &status),
        now: observed.now,
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
    let mut steps = Vec::new();
    let mut events = Vec::new();
    let mut note = None;
    match d.action {
        RunAction::Wait | RunAction::Suspended => {}
        RunAction::Start {
            scheduled,
            replace_active,
        } => {
            if replace_active {
                steps.extend(active.iter().map(|r| Step::ReplaceJob {
                    job: r.job.clone(),
                    event: Note::normal(
                        "RunReplaced",
                        format!("stopped {what} Job {} (concurrencyPolicy Replace)", r.name),
                    ),
                }));
            }
            let name = jobs::job_name(&bs.name_any(), kind, scheduled.as_second().div_euclid(60));
            let started = format!("started {what} Job {name} scheduled at {scheduled}{older}");
            steps.push(Step::CreateJob(NewJob {
                kind,
                scheduled,
                trigger: Trigger::Schedule,
                name,
                started: Some(Note::normal(started_reason(kind), started)),
            }));
            match kind {
                RunKind::Backup => status.last_schedule_time = to_chrono(scheduled),
                RunKind::Verify => status.last_restore_test_schedule_time = to_chrono(scheduled),
            }
        }
        RunAction::SkipActive { scheduled } => {
            let names: Vec<&str> = active.iter().map(|r| r.name.as_str()).collect();
            note = Some(format!(
                "the {what} scheduled at {scheduled} waits: Job {} is still running (concurrencyPolicy Forbid)",
                names.join(", ")
            ));
        }
        RunAction::SkipMissedDeadline { scheduled } => {
            let at = to_chrono(scheduled);
            if status.last_missed_schedule_time < at {
                status.last_missed_schedule_time = at;
                events.push(Note::warning(
                    "MissedSchedule",
                    format!(
                        "the {what} scheduled at {scheduled} was skipped: it could not start within startingDeadlineSeconds ({}s){older}",
                        bs.spec.starting_deadline_seconds.unwrap_or_default()
                    ),
                ));
            }
        }
    }
    KindPlan {
        status,
        steps,
        events,
        note,
        next: d.next,
    }
}

/// The runs the `run-now` / `verify-now` annotations ask for (at the current
/// minute), and the clearing of those annotations.
fn manual_runs(observed: &Observed) -> (Vec<Step>, Vec<Note>) {
    let bs = &observed.schedule;
    let ann = bs.metadata.annotations.clone().unwrap_or_default();
    let minute = Timestamp::from_second(observed.now.as_second().div_euclid(60) * 60)
        .unwrap_or(observed.now);
    let mut steps = Vec::new();
    let mut events = Vec::new();
    let mut clear = Vec::new();
    for (annotation, kind) in [
        (RUN_NOW_ANNOTATION, RunKind::Backup),
        (VERIFY_NOW_ANNOTATION, RunKind::Verify),
    ] {
        if !ann.contains_key(annotation) {
            continue;
        }
        if kind == RunKind::Verify && bs.spec.restore_test.is_none() {
            events.push(Note::warning(
                "RestoreTestNotConfigured",
                format!("{annotation} ignored: spec.restoreTest is not set"),
            ));
        } else {
            let name = jobs::job_name(&bs.name_any(), kind, minute.as_second().div_euclid(60));
            let started = format!(
                "started {} Job {name} on request ({annotation})",
                label(kind)
            );
            steps.push(Step::CreateJob(NewJob {
                kind,
                scheduled: minute,
                trigger: Trigger::Manual,
                name,
                started: Some(Note::normal(started_reason(kind), started)),
            }));
        }
        clear.push(annotation);
    }
    if !clear.is_empty() {
        steps.push(Step::ClearAnnotations(clear));
    }
    (steps, events)
}

/// What the schedule's BackupRun requests need (see [`requests::decide`]), then
/// the deletion of finished ones beyond [`requests::HISTORY`]. While the
/// schedule is `invalid` they wait with its reason.
fn request_steps(observed: &Observed, invalid: Option<&Invalid>) -> Vec<Step> {
    let bs = &observed.schedule;
    let name = bs.name_any();
    let why = invalid.map(|i| format!("{}: {}", i.reason, i.message));
    let startable = why.as_deref().map_or(Ok(()), Err);
    let job_state = |job: &str| match observed.runs.iter().find(|r| r.name == job) {
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
    let restore_test = bs.spec.restore_test.is_some();
    let mut steps: Vec<Step> = observed
        .requests
        .iter()
        .filter_map(|request| {
            let d = requests::decide(
                &name,
                restore_test,
                startable,
                request,
                job_state,
                observed.now,
            )?;
            Some(Step::Request(RequestStep {
                owner_patch: requests::owner_patch(request, bs),
                status: (request.status.as_ref() != Some(&d.status)).then_some(d.status),
                create: d.create.map(|(kind, scheduled)| NewJob {
                    kind,
                    scheduled,
                    trigger: Trigger::Manual,
                    name: jobs::job_name(&name, kind, scheduled.as_second().div_euclid(60)),
                    started: None,
                }),
                event: d.event.map(|(warning, reason, note)| match warning {
                    true => Note::warning(reason, note),
                    false => Note::normal(reason, note),
                }),
                request: request.clone(),
            }))
        })
        .collect();
    steps.extend(
        requests::expired(&observed.requests, requests::HISTORY)
            .into_iter()
            .map(|r| Step::DeleteRequest(Arc::new(r.clone()))),
    );
    steps
}

/// Finished Jobs beyond the history limits, newest kept, per kind and outcome;
/// only runs `status` has folded.
fn prune(bs: &BackupSchedule, runs: &[Run], status: &BackupScheduleStatus) -> Vec<Step> {
    let ok_limit = bs
        .spec
        .successful_jobs_history_limit
        .unwrap_or(DEFAULT_SUCCESSFUL_HISTORY) as usize;
    let failed_limit = bs
        .spec
        .failed_jobs_history_limit
        .unwrap_or(DEFAULT_FAILED_HISTORY) as usize;
    let mut out = Vec::new();
    for kind in [RunKind::Backup, RunKind::Verify] {
        let folded = folded_minute(status, kind);
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
            out.extend(
                done.into_iter()
                    .skip(limit)
                    .map(|r| Step::PruneJob(r.job.clone())),
            );
        }
    }
    out
}

/// The next wake-up: the next due time; sooner while a Secret or destination
/// blocks the schedule (unwatched) or a result is on its way.
fn wake(
    now: Timestamp,
    next: Vec<Timestamp>,
    invalid: Option<&Invalid>,
    waiting: bool,
) -> Option<Timestamp> {
    let after = |d: Duration| Timestamp::from_second(now.as_second() + d.as_secs() as i64).ok();
    let mut wake = next.into_iter().min();
    if invalid.is_some_and(|i| !i.fixed_by_spec_only()) {
        wake = after(RECHECK);
    }
    if waiting {
        wake = match (wake, after(RESULT_POLL)) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
    }
    wake
}

#[cfg(test)]
mod tests {
    use super::super::observe::fixtures::*;
    use super::super::observe::run_of;
    use super::super::validate::validate;
    use super::super::{LAST_BACKUP_SUCCEEDED, LAST_RESTORE_TEST_SUCCEEDED};
    use super::*;
    use crate::crd::condition::find;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    fn plan_of(obs: &Observed) -> Plan {
        plan(obs, &validate(obs))
    }

    fn ready(p: &Plan) -> &Condition {
        find(&p.status.conditions, READY).expect("Ready")
    }

    fn reasons(notes: &[Note]) -> Vec<&'static str> {
        notes.iter().map(|n| n.reason).collect()
    }

    /// The Jobs a plan creates, replaces and prunes, by (kind, trigger, scheduled).
    fn creates(p: &Plan) -> Vec<(RunKind, Trigger, Timestamp)> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::CreateJob(n) => Some((n.kind, n.trigger, n.scheduled)),
                Step::Request(r) => r.create.as_ref().map(|n| (n.kind, n.trigger, n.scheduled)),
                _ => None,
            })
            .collect()
    }

    fn replaced(p: &Plan) -> Vec<String> {
        p.steps
            .iter()
            .filter_map(|s| match s {
                Step::ReplaceJob { job, .. } => Some(job.name_any()),
                _ => None,
            })
            .collect()
    }

    fn pruned(p: &Plan) -> Vec<String> {
        p.prune
            .iter()
            .filter_map(|s| match s {
                Step::PruneJob(job) => Some(job.name_any()),
                _ => None,
            })
            .collect()
    }

    struct Case {
        name: &'static str,
        spec: serde_json::Value,
        now: &'static str,
        /// (kind, scheduled, finished) of the existing runs.
        runs: Vec<(RunKind, &'static str, Option<bool>)>,
        /// Scheduled runs to start: (kind, scheduled).
        start: Vec<(RunKind, &'static str)>,
        replace: usize,
        events: Vec<&'static str>,
        ready: (&'static str, &'static str),
        ready_says: &'static str,
        wake: Option<&'static str>,
    }

    /// A row's defaults: the daily 03:00 backup schedule, no runs, nothing
    /// started, replaced or reported, Ready=True (Scheduled).
    impl Default for Case {
        fn default() -> Self {
            Case {
                name: "",
                spec: json!({}),
                now: "",
                runs: vec![],
                start: vec![],
                replace: 0,
                events: vec![],
                ready: ("True", "Scheduled"),
                ready_says: "",
                wake: None,
            }
        }
    }

    #[test]
    fn scheduled_runs_table() {
        let backup = RunKind::Backup;
        let cases = vec![
            Case {
                name: "not due yet",
                now: "2026-03-01T02:59:00Z",
                ready_says: "next backup at 2026-03-01T03:00:00+00:00",
                wake: Some("2026-03-01T03:00:00Z"),
                ..Case::default()
            },
            Case {
                name: "due",
                now: "2026-03-01T03:00:05Z",
                start: vec![(backup, "2026-03-01T03:00:00Z")],
                ready_says: "next backup at 2026-03-02T03:00:00+00:00",
                wake: Some("2026-03-02T03:00:00Z"),
                ..Case::default()
            },
            Case {
                name: "started already (its Job says so)",
                now: "2026-03-01T03:00:30Z",
                runs: vec![(backup, "2026-03-01T03:00:00Z", None)],
                ready_says: "next backup at 2026-03-02T03:00:00+00:00",
                wake: Some("2026-03-02T03:00:00Z"),
                ..Case::default()
            },
            Case {
                name: "Forbid: due while the last one runs",
                spec: json!({"schedule": "*/5 * * * *"}),
                now: "2026-03-01T03:05:10Z",
                runs: vec![(backup, "2026-03-01T03:00:00Z", None)],
                ready_says: "waits: Job orders-29538900 is still running (concurrencyPolicy Forbid)",
                wake: Some("2026-03-01T03:10:00Z"),
                ..Case::default()
            },
            Case {
                name: "Forbid: the last one finished",
                spec: json!({"schedule": "*/5 * * * *"}),
                now: "2026-03-01T03:05:10Z",
                runs: vec![(backup, "2026-03-01T03:00:00Z", Some(true))],
                start: vec![(backup, "2026-03-01T03:05:00Z")],
                events: vec!["BackupSucceeded"],
                ready_says: "next backup at 2026-03-01T03:10:00+00:00",
                wake: Some("2026-03-01T03:10:00Z"),
                ..Case::default()
            },
            Case {
                name: "Replace stops the active run",
                spec: json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Replace"}),
                now: "2026-03-01T03:05:10Z",
                runs: vec![(backup, "2026-03-01T03:00:00Z", None)],
                start: vec![(backup, "2026-03-01T03:05:00Z")],
                replace: 1,
                ready_says: "next backup",
                wake: Some("2026-03-01T03:10:00Z"),
                ..Case::default()
            },
            Case {
                name: "Allow starts beside the active run",
                spec: json!({"schedule": "*/5 * * * *", "concurrencyPolicy": "Allow"}),
                now: "2026-03-01T03:05:10Z",
                runs: vec![(backup, "2026-03-01T03:00:00Z", None)],
                start: vec![(backup, "2026-03-01T03:05:00Z")],
                ready_says: "next backup",
                wake: Some("2026-03-01T03:10:00Z"),
                ..Case::default()
            },
            Case {
                name: "missed the starting deadline after downtime",
                spec: json!({"schedule": "*/10 * * * *", "startingDeadlineSeconds": 60}),
                now: "2026-03-01T00:35:00Z",
                events: vec!["MissedSchedule"],
                ready_says: "next backup at 2026-03-01T00:40:00+00:00",
                wake: Some("2026-03-01T00:40:00Z"),
                ..Case::default()
            },
            Case {
                name: "suspended",
                spec: json!({"suspend": true}),
                now: "2026-03-01T03:00:05Z",
                ready: ("True", "Suspended"),
                ready_says: "spec.suspend is true",
                wake: None,
                ..Case::default()
            },
            Case {
                name: "restore test after the snapshot",
                spec: json!({"restoreTest": {"schedule": "0 4 * * *"}}),
                now: "2026-03-01T04:00:10Z",
                runs: vec![(backup, "2026-03-01T03:00:00Z", Some(true))],
                start: vec![(RunKind::Verify, "2026-03-01T04:00:00Z")],
                events: vec!["BackupSucceeded"],
                ready_says: "next backup at 2026-03-02T03:00:00+00:00",
                wake: Some("2026-03-02T03:00:00Z"),
                ..Case::default()
            },
            Case {
                name: "a failed backup makes the schedule not Ready",
                now: "2026-03-01T03:30:00Z",
                runs: vec![(backup, "2026-03-01T03:00:00Z", Some(false))],
                events: vec!["BackupFailed"],
                ready: ("False", "BackupFailing"),
                ready_says: "(BackoffLimitExceeded)",
                wake: Some("2026-03-02T03:00:00Z"),
                ..Case::default()
            },
        ];
        for c in cases {
            let runs = c.runs.iter().map(|(k, t, f)| run(*k, at(t), *f)).collect();
            let mut obs = observed(schedule(c.spec.clone()), at(c.now), runs);
            for r in obs.runs.clone() {
                if r.finished == Some(Finished::Succeeded) && r.kind == RunKind::Backup {
                    obs.reports.insert(r.name.clone(), backup_ok("snap-1"));
                }
            }
            let p = plan_of(&obs);
            let want: Vec<_> = c
                .start
                .iter()
                .map(|(k, t)| (*k, Trigger::Schedule, at(t)))
                .collect();
            assert_eq!(creates(&p), want, "{}", c.name);
            assert_eq!(replaced(&p).len(), c.replace, "{}", c.name);
            let mut evs = reasons(&p.events);
            evs.sort();
            assert_eq!(evs, c.events, "{}", c.name);
            let r = ready(&p);
            assert_eq!(
                (r.status.as_str(), r.reason.as_str()),
                c.ready,
                "{}: {}",
                c.name,
                r.message
            );
            assert!(
                r.message.contains(c.ready_says),
                "{}: {}",
                c.name,
                r.message
            );
            assert_eq!(p.wake, c.wake.map(at), "{}", c.name);
            // A valid schedule always has its ConfigMap and egress policy applied.
            assert!(
                matches!(
                    p.steps[..2],
                    [Step::ApplyConfigMap, Step::ApplyEgressPolicy]
                ),
                "{}",
                c.name
            );
            assert_eq!(p.status.observed_generation, Some(1));
            for (kind, t) in &c.start {
                let field = match kind {
                    RunKind::Backup => p.status.last_schedule_time,
                    RunKind::Verify => p.status.last_restore_test_schedule_time,
                };
                assert_eq!(
                    field.map(|t| t.timestamp()),
                    Some(at(t).as_second()),
                    "{}",
                    c.name
                );
            }
        }
    }

    #[test]
    fn a_started_run_is_announced_only_when_created() {
        let obs = observed(schedule(json!({})), at("2026-03-01T03:00:05Z"), vec![]);
        let p = plan_of(&obs);
        let Some(Step::CreateJob(new)) = p.steps.get(2) else {
            panic!("no Job: {:?}", p.steps)
        };
        assert_eq!(new.name, "orders-29538900");
        let started = new.started.as_ref().expect("event");
        assert_eq!(started.reason, "BackupStarted");
        assert_eq!(
            started.note,
            "started backup Job orders-29538900 scheduled at 2026-03-01T03:00:00Z"
        );
        assert!(
            p.events.is_empty(),
            "published after creation: {:?}",
            p.events
        );
    }

    #[test]
    fn a_missed_run_is_reported_once() {
        let spec = json!({"schedule": "*/10 * * * *", "startingDeadlineSeconds": 60});
        let now = at("2026-03-01T00:35:00Z");
        let p = plan_of(&observed(schedule(spec.clone()), now, vec![]));
        assert_eq!(
            p.status.last_missed_schedule_time.map(|t| t.timestamp()),
            Some(at("2026-03-01T00:30:00Z").as_second())
        );
        assert!(
            p.events[0].note.contains("2 older missed run(s)"),
            "{:?}",
            p.events
        );
        let mut bs = schedule(spec);
        bs.status = Some(p.status.clone());
        let again = plan_of(&observed(bs, now, vec![]));
        assert!(again.events.is_empty(), "{:?}", again.events);
        assert_eq!(again.status, p.status);
    }

    #[test]
    fn manual_annotations_start_a_run_and_are_cleared() {
        let now = at("2026-03-01T02:17:42Z");
        let minute = at("2026-03-01T02:17:00Z");
        // (restoreTest set, annotations) -> (runs, warning)
        let cases = [
            (
                true,
                vec![RUN_NOW_ANNOTATION, VERIFY_NOW_ANNOTATION],
                vec![RunKind::Backup, RunKind::Verify],
                None,
            ),
            (
                false,
                vec![VERIFY_NOW_ANNOTATION],
                vec![],
                Some("RestoreTestNotConfigured"),
            ),
            (false, vec![RUN_NOW_ANNOTATION], vec![RunKind::Backup], None),
        ];
        for (restore_test, annotations, kinds, warning) in cases {
            let spec = match restore_test {
                true => json!({"restoreTest": {"schedule": "0 4 * * 0"}}),
                false => json!({}),
            };
            let mut bs = schedule(spec);
            bs.metadata.annotations = Some(
                annotations
                    .iter()
                    .map(|a| (a.to_string(), "true".to_string()))
                    .collect(),
            );
            let p = plan_of(&observed(bs, now, vec![]));
            let want: Vec<_> = kinds
                .iter()
                .map(|k| (*k, Trigger::Manual, minute))
                .collect();
            assert_eq!(creates(&p), want, "{annotations:?}");
            let cleared = p.steps.iter().find_map(|s| match s {
                Step::ClearAnnotations(a) => Some(a.clone()),
                _ => None,
            });
            assert_eq!(cleared, Some(annotations.clone()));
            assert_eq!(p.events.first().map(|e| e.reason), warning);
        }
    }

    fn request(name: &str, type_: &str, created: &str) -> Arc<BackupRun> {
        Arc::new(
            serde_json::from_value(json!({
                "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupRun",
                "metadata": {"name": name, "namespace": "team-a", "creationTimestamp": created},
                "spec": {"scheduleName": "orders", "type": type_},
            }))
            .expect("request"),
        )
    }

    #[test]
    fn backup_run_requests_start_or_wait() {
        let now = at("2026-03-01T02:17:42Z");
        let mut obs = observed(schedule(json!({})), now, vec![]);
        obs.requests = vec![request("now", "Backup", "2026-03-01T02:16:30Z")];
        let p = plan_of(&obs);
        assert_eq!(
            creates(&p),
            vec![(RunKind::Backup, Trigger::Manual, at("2026-03-01T02:16:00Z"))]
        );
        let Some(Step::Request(r)) = p.steps.last() else {
            panic!("{:?}", p.steps)
        };
        assert!(r.owner_patch.is_some());
        assert_eq!(
            r.status.as_ref().and_then(|s| s.job_name.as_deref()),
            Some("orders-29538856")
        );
        assert_eq!(r.event.as_ref().map(|e| e.reason), Some("RunStarted"));

        // An invalid schedule: the request waits with the reason; nothing is applied.
        obs.secrets = Err(Invalid {
            reason: "SecretNotFound",
            message: "Secret db does not exist".into(),
        });
        let p = plan_of(&obs);
        assert!(creates(&p).is_empty());
        let [Step::Request(r)] = &p.steps[..] else {
            panic!("{:?}", p.steps)
        };
        let status = r.status.as_ref().expect("status");
        assert!(
            status
                .message
                .as_deref()
                .is_some_and(|m| m.contains("SecretNotFound")),
            "{status:?}"
        );
    }

    #[test]
    fn finished_requests_beyond_the_history_are_deleted() {
        let now = at("2026-03-01T10:17:42Z");
        let mut obs = observed(schedule(json!({})), now, vec![]);
        obs.requests = (0..7)
            .map(|i| {
                let mut r =
                    (*request(&format!("r{i}"), "RestoreTest", "2026-03-01T10:00:00Z")).clone();
                r.status = Some(BackupRunStatus {
                    phase: Some(crate::crd::backup_run::BackupRunPhase::Failed),
                    completion_time: DateTime::from_timestamp(1_000 + i, 0),
                    ..Default::default()
                });
                Arc::new(r)
            })
            .collect();
        let p = plan_of(&obs);
        let deleted: Vec<String> = p
            .steps
            .iter()
            .filter_map(|s| match s {
                Step::DeleteRequest(r) => Some(r.name_any()),
                _ => None,
            })
            .collect();
        assert_eq!(deleted, vec!["r1", "r0"]);
    }

    #[test]
    fn history_is_pruned_once_folded() {
        let day = |d: u32| at(&format!("2026-03-0{d}T03:00:00Z"));
        // Successes on days 1, 2, 4 and 6 (6 not folded yet), failures on 3 and 5.
        let runs: Vec<Run> = [
            (1, true),
            (2, true),
            (3, false),
            (4, true),
            (5, false),
            (6, true),
        ]
        .into_iter()
        .map(|(d, ok)| run(RunKind::Backup, day(d), Some(ok)))
        .collect();
        let mut bs =
            schedule(json!({"successfulJobsHistoryLimit": 1, "failedJobsHistoryLimit": 1}));
        bs.status = Some(BackupScheduleStatus {
            last_backup_job: Some(runs[4].name.clone()),
            ..Default::default()
        });
        // Day 6 finished seconds ago and reported nothing yet: it waits.
        let now = Timestamp::from_second(day(6).as_second() + 70).expect("time");
        let p = plan_of(&observed(bs, now, runs.clone()));
        assert!(p.wake.is_some_and(|w| w.as_second() == now.as_second() + 5));
        let mut gone = pruned(&p);
        gone.sort();
        assert_eq!(
            gone,
            vec![
                runs[0].name.clone(),
                runs[1].name.clone(),
                runs[2].name.clone()
            ]
        );
        // Active runs and Jobs already being deleted are never pruned.
        let mut deleting = (*runs[0].job).clone();
        deleting.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(now));
        let mut with_active = vec![run_of(Arc::new(deleting)).expect("run")];
        with_active.push(run(RunKind::Backup, day(7), None));
        let mut bs = schedule(json!({"successfulJobsHistoryLimit": 0}));
        bs.status = Some(BackupScheduleStatus {
            last_backup_job: Some("orders-99999999".into()),
            ..Default::default()
        });
        assert!(pruned(&plan_of(&observed(bs, now, with_active))).is_empty());
    }

    #[test]
    fn invalid_specs_start_nothing_and_say_why_once() {
        let now = at("2026-03-01T03:00:05Z");
        // (spec, secrets) -> (reason, wake)
        let missing = missing_secret();
        let cases = [
            (
                json!({"schedule": "every night"}),
                Ok(()),
                "InvalidSchedule",
                None,
            ),
            (
                json!({"timeZone": "Mars/Olympus"}),
                Ok(()),
                "InvalidTimeZone",
                None,
            ),
            (
                json!({}),
                Err(missing),
                "SecretNotFound",
                Some("2026-03-01T03:00:35Z"),
            ),
            (
                json!({"jobTemplate": {"image": "x"}}),
                Ok(()),
                "RemovedField",
                Some("2026-03-01T03:00:35Z"),
            ),
        ];
        for (spec, secrets, reason, wake) in cases {
            let mut bs = schedule(spec);
            bs.metadata.annotations =
                Some([(RUN_NOW_ANNOTATION.to_string(), "x".to_string())].into());
            let mut obs = observed(bs, now, vec![]);
            obs.secrets = secrets;
            let p = plan_of(&obs);
            assert!(p.steps.is_empty(), "{reason}: {:?}", p.steps);
            let r = ready(&p);
            assert_eq!((r.status.as_str(), r.reason.as_str()), ("False", reason));
            assert!(
                r.message.ends_with("; no runs start until this is fixed"),
                "{}",
                r.message
            );
            assert!(find(&p.status.conditions, "Stalled").is_some());
            assert_eq!(p.status.next_schedule_time, None);
            assert_eq!(reasons(&p.events), vec!["InvalidSpec"]);
            assert_eq!(p.wake, wake.map(at), "{reason}");
            // Stored: the same reconcile again publishes nothing and writes nothing.
            let mut bs = (*obs.schedule).clone();
            bs.status = Some(p.status.clone());
            obs.schedule = Arc::new(bs);
            let again = plan_of(&obs);
            assert!(again.events.is_empty(), "{reason}");
            assert_eq!(again.status, p.status);
        }
    }

    #[test]
    fn a_result_on_its_way_wakes_the_controller_soon() {
        let r = run(RunKind::Backup, at("2026-03-01T03:00:00Z"), Some(true));
        let now = at("2026-03-01T03:01:10Z");
        let mut obs = observed(schedule(json!({})), now, vec![r.clone()]);
        let p = plan_of(&obs);
        assert_eq!(p.wake, Some(at("2026-03-01T03:01:15Z")));
        assert_eq!(p.status.last_backup_job, None);
        obs.reports.insert(r.name.clone(), backup_ok("snap-1"));
        let p = plan_of(&obs);
        assert_eq!(p.wake, Some(at("2026-03-02T03:00:00Z")));
        assert_eq!(p.metrics.len(), 1);
        let c = find(&p.status.conditions, LAST_BACKUP_SUCCEEDED).expect("condition");
        assert_eq!(c.status, "True");
        let t = find(&p.status.conditions, LAST_RESTORE_TEST_SUCCEEDED).expect("condition");
        assert_eq!(t.reason, "NotConfigured");
    }

    #[test]
    fn every_step_fails_with_its_own_reason() {
        let t = at("2026-03-01T03:00:00Z");
        let job = run(RunKind::Backup, t, Some(true)).job;
        let new = NewJob {
            kind: RunKind::Verify,
            scheduled: t,
            trigger: Trigger::Schedule,
            name: "orders-verify-1".into(),
            started: None,
        };
        let req = request("now", "Backup", "2026-03-01T03:00:00Z");
        let cases = [
            (Step::ApplyConfigMap, "ConfigMapFailed", "ConfigMap"),
            (
                Step::ApplyEgressPolicy,
                "NetworkPolicyFailed",
                "NetworkPolicy",
            ),
            (
                Step::CreateJob(new),
                "JobCreateFailed",
                "starting restore test Job orders-verify-1",
            ),
            (
                Step::ReplaceJob {
                    job: job.clone(),
                    event: Note::normal("RunReplaced", String::new()),
                },
                "JobDeleteFailed",
                "stopping Job orders-29538900",
            ),
            (
                Step::ClearAnnotations(vec![RUN_NOW_ANNOTATION]),
                "AnnotationUpdateFailed",
                "annotations",
            ),
            (
                Step::Request(RequestStep {
                    request: req.clone(),
                    owner_patch: None,
                    status: None,
                    create: None,
                    event: None,
                }),
                "BackupRunUpdateFailed",
                "updating BackupRun now",
            ),
            (
                Step::DeleteRequest(req),
                "BackupRunUpdateFailed",
                "deleting finished BackupRun now",
            ),
            (
                Step::PruneJob(job),
                "HistoryPruneFailed",
                "Job orders-29538900 beyond the history limit",
            ),
        ];
        for (step, reason, what) in cases {
            let (r, w) = step.failure();
            assert_eq!(r, reason);
            assert!(w.contains(what), "{w}");
        }
    }
}
