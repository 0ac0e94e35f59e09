//! BackupRun requests, handled by the BackupSchedule controller (a BackupRun
//! always belongs to one schedule). This file holds the pure decisions; the
//! controller applies them (status first, then the Job, so a retry converges on
//! the same Job).
//!
//! - A new BackupRun naming a schedule in its namespace is accepted when the
//!   schedule is valid: its Job is named after the minute the BackupRun was
//!   created (`<schedule>-<minute>`, `<schedule>-verify-<minute>`), exactly like a
//!   manual run, so retries, replicas and a scheduled run of the same minute share
//!   one Job. The BackupRun gets an ownerReference to the schedule (it goes with
//!   it).
//! - While the schedule is not Ready, the BackupRun waits (`Pending`, with the
//!   reason); a `RestoreTest` for a schedule without `spec.restoreTest` fails.
//! - The outcome of the Job is recorded once; finished BackupRuns beyond the
//!   newest [`HISTORY`] of the schedule are deleted.

use std::cmp::Reverse;

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use k8s_openapi::jiff::Timestamp;
use kube::{Resource, ResourceExt};
use serde_json::{Value, json};

use crate::crd::ConditionStatus;
use crate::crd::backup_run::{BackupRun, BackupRunPhase, BackupRunStatus, BackupRunType};
use crate::crd::backup_schedule::BackupSchedule;
use crate::crd::condition::{Observed, merge_conditions};
use crate::resources::backup_jobs::{self as jobs, RunKind};

/// The one condition of a BackupRun.
pub const COMPLETE: &str = "Complete";
/// Finished BackupRuns kept per schedule (newest first); older ones are deleted.
pub const HISTORY: usize = 5;
/// How long after accepting a run its Job may be missing from the cache (just
/// created, not seen yet) before the run is failed as "Job deleted".
pub const CREATE_GRACE_SECONDS: i64 = 120;

/// The run kind a BackupRun asks for.
pub fn kind_of(t: BackupRunType) -> RunKind {
    match t {
        BackupRunType::Backup => RunKind::Backup,
        BackupRunType::RestoreTest => RunKind::Verify,
    }
}

/// The Job of an accepted run, as the controller's cache shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobState {
    /// Not in the cache.
    Missing,
    Running,
    Succeeded {
        at: Option<Timestamp>,
    },
    Failed {
        at: Option<Timestamp>,
        reason: String,
        message: String,
    },
}

/// What to do for one BackupRun.
#[derive(Debug, Clone, PartialEq)]
pub struct Decision {
    /// The status to write (equal to the current one when only `create` is set).
    pub status: BackupRunStatus,
    /// Create (or re-create after a failed attempt) the run Job for this
    /// scheduled minute.
    pub create: Option<(RunKind, Timestamp)>,
    /// An Event on the BackupRun: (warning, reason, note).
    pub event: Option<(bool, &'static str, String)>,
}

fn to_time(t: Timestamp) -> Option<DateTime<Utc>> {
    DateTime::from_timestamp(t.as_second(), 0)
}

/// Ends a request: `phase` at `at` with `msg` in `next`; the Complete condition
/// (reason `reasons.0`) and the Event (reason `reasons.1`, a warning unless the
/// run succeeded).
fn end(
    next: &mut BackupRunStatus,
    phase: BackupRunPhase,
    at: Timestamp,
    reasons: (&'static str, &'static str),
    msg: String,
) -> (Observed, Option<(bool, &'static str, String)>) {
    let ok = phase == BackupRunPhase::Succeeded;
    next.phase = Some(phase);
    next.completion_time = to_time(at);
    next.message = Some(msg.clone());
    let observed = Observed::new(COMPLETE, ok, reasons.0, msg.clone());
    (observed, Some((!ok, reasons.1, msg)))
}

/// The minute a BackupRun's Job runs for: the minute it was created (so every
/// retry and replica names the same Job).
fn requested_minute(request: &BackupRun, now: Timestamp) -> i64 {
    request
        .metadata
        .creation_timestamp
        .as_ref()
        .map(|t| t.0)
        .unwrap_or(now)
        .as_second()
        .div_euclid(60)
}

/// Decides what one BackupRun of `schedule` needs now; `None` when nothing.
/// `startable` is `Err(why)` while the schedule is invalid.
pub fn decide(
    schedule: &str,
    restore_test_configured: bool,
    startable: Result<(), &str>,
    request: &BackupRun,
    job: impl Fn(&str) -> JobState,
    now: Timestamp,
) -> Option<Decision> {
    let prev = request.status.clone().unwrap_or_default();
    if prev.phase.is_some_and(BackupRunPhase::is_finished) {
        return None;
    }
    let kind = kind_of(request.spec.type_);
    let what = match kind {
        RunKind::Backup => "backup",
        RunKind::Verify => "restore test",
    };
    let mut next = prev.clone();
    let mut create = None;
    let mut event = None;
    let observed;
    match prev.job_name.clone() {
        None if kind == RunKind::Verify && !restore_test_configured => {
            let msg = format!(
                "BackupSchedule {schedule} has no spec.restoreTest, so it has no restore test to run; ask whoever manages the schedule to configure one, or request type Backup"
            );
            let reasons = ("RestoreTestNotConfigured", "RestoreTestNotConfigured");
            (observed, event) = end(&mut next, BackupRunPhase::Failed, now, reasons, msg);
        }
        None => match startable {
            Err(why) => {
                let msg = format!(
                    "waiting: BackupSchedule {schedule} is not Ready ({why}); the {what} starts once the schedule is fixed"
                );
                next.phase = Some(BackupRunPhase::Pending);
                if prev.message.as_deref() != Some(msg.as_str()) {
                    event = Some((true, "ScheduleNotReady", msg.clone()));
                }
                next.message = Some(msg.clone());
                observed =
                    Observed::new(COMPLETE, ConditionStatus::Unknown, "ScheduleNotReady", msg);
            }
            Ok(()) => {
                let minute = requested_minute(request, now);
                let name = jobs::job_name(schedule, kind, minute);
                let msg = format!("started {what} Job {name}");
                next.phase = Some(BackupRunPhase::Running);
                next.job_name = Some(name);
                next.start_time = to_time(now);
                next.message = Some(msg.clone());
                create = Timestamp::from_second(minute * 60)
                    .ok()
                    .map(|at| (kind, at));
                observed =
                    Observed::new(COMPLETE, ConditionStatus::Unknown, "Running", msg.clone());
                event = Some((false, "RunStarted", msg));
            }
        },
        Some(name) => match job(&name) {
            JobState::Running => {
                next.phase = Some(BackupRunPhase::Running);
                observed = Observed::new(
                    COMPLETE,
                    ConditionStatus::Unknown,
                    "Running",
                    format!("started {what} Job {name}"),
                );
            }
            JobState::Succeeded { at } => {
                let msg = format!(
                    "{what} Job {name} completed; its result is in BackupSchedule {schedule}'s status"
                );
                let (phase, at) = (BackupRunPhase::Succeeded, at.unwrap_or(now));
                (observed, event) = end(&mut next, phase, at, ("Succeeded", "RunSucceeded"), msg);
            }
            JobState::Failed {
                at,
                reason,
                message,
            } => {
                let msg = format!(
                    "{what} Job {name} failed ({reason}: {message}); see its Pod's log and BackupSchedule {schedule}'s status"
                );
                let (phase, at) = (BackupRunPhase::Failed, at.unwrap_or(now));
                (observed, event) = end(&mut next, phase, at, ("JobFailed", "RunFailed"), msg);
            }
            JobState::Missing => {
                let accepted = prev.start_time.map(|t| t.timestamp()).unwrap_or(i64::MIN);
                if now.as_second().saturating_sub(accepted) <= CREATE_GRACE_SECONDS {
                    // Accepted but the Job is not seen: the create failed or the
                    // cache lags. Creating again is idempotent (409).
                    let minute = requested_minute(request, now);
                    create = Timestamp::from_second(minute * 60)
                        .ok()
                        .map(|at| (kind, at));
                    observed = Observed::new(
                        COMPLETE,
                        ConditionStatus::Unknown,
                        "Running",
                        format!("started {what} Job {name}"),
                    );
                } else {
                    let msg = format!(
                        "{what} Job {name} no longer exists: it was deleted before it finished; create a new BackupRun to run again"
                    );
                    let reasons = ("JobMissing", "RunFailed");
                    (observed, event) = end(&mut next, BackupRunPhase::Failed, now, reasons, msg);
                }
            }
        },
    }
    next.conditions = merge_conditions(
        &prev.conditions,
        &[observed],
        request.metadata.generation,
        now,
    );
    if next == prev && create.is_none() {
        return None;
    }
    Some(Decision {
        status: next,
        create,
        event,
    })
}

/// The merge patch that adds the schedule to a BackupRun's ownerReferences (so the
/// API server's garbage collector deletes it with the schedule); `None` when it is
/// there.
pub fn owner_patch(request: &BackupRun, bs: &BackupSchedule) -> Option<Value> {
    let uid = bs.metadata.uid.clone()?;
    let mut refs = request.owner_references().to_vec();
    if refs.iter().any(|o| o.uid == uid) {
        return None;
    }
    refs.push(OwnerReference {
        api_version: BackupSchedule::api_version(&()).into_owned(),
        kind: BackupSchedule::kind(&()).into_owned(),
        name: bs.name_any(),
        uid,
        controller: None,
        block_owner_deletion: None,
    });
    Some(json!({"metadata": {"ownerReferences": refs}}))
}

/// The finished BackupRuns to delete: all but the newest `keep` (by completion,
/// then creation time).
pub fn expired(requests: &[std::sync::Arc<BackupRun>], keep: usize) -> Vec<&BackupRun> {
    let mut done: Vec<&BackupRun> = requests
        .iter()
        .map(|r| r.as_ref())
        .filter(|r| {
            r.status
                .as_ref()
                .and_then(|s| s.phase)
                .is_some_and(BackupRunPhase::is_finished)
        })
        .filter(|r| r.metadata.deletion_timestamp.is_none())
        .collect();
    done.sort_by_key(|r| {
        Reverse((
            r.status.as_ref().and_then(|s| s.completion_time),
            r.metadata.creation_timestamp.as_ref().map(|t| t.0),
            r.name_any(),
        ))
    });
    done.into_iter().skip(keep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::backup_run::BackupRunSpec;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(s: &str) -> Timestamp {
        s.parse().expect("time")
    }

    fn request(type_: BackupRunType, status: Option<BackupRunStatus>) -> BackupRun {
        let mut r = BackupRun::new(
            "now",
            BackupRunSpec {
                schedule_name: "orders".into(),
                type_,
            },
        );
        r.metadata.namespace = Some("team-a".into());
        r.metadata.creation_timestamp = Some(Time(at("2026-03-01T01:00:30Z")));
        r.status = status;
        r
    }

    fn missing(_: &str) -> JobState {
        JobState::Missing
    }

    /// [`decide`] for schedule `orders`, startable, with or without a restore test.
    fn decide_ok(
        restore_test: bool,
        request: &BackupRun,
        job: impl Fn(&str) -> JobState,
        now: Timestamp,
    ) -> Option<Decision> {
        decide("orders", restore_test, Ok(()), request, job, now)
    }

    #[test]
    fn a_new_request_claims_the_job_of_its_creation_minute() {
        let now = at("2026-03-01T01:02:00Z");
        let d = decide_ok(false, &request(BackupRunType::Backup, None), missing, now)
            .expect("decision");
        let minute = at("2026-03-01T01:00:00Z");
        assert_eq!(d.create, Some((RunKind::Backup, minute)));
        assert_eq!(d.status.phase, Some(BackupRunPhase::Running));
        assert_eq!(
            d.status.job_name.as_deref(),
            Some(jobs::job_name("orders", RunKind::Backup, minute.as_second() / 60).as_str())
        );
        assert_eq!(d.status.conditions[0].status, "Unknown");
        // The same request once accepted, Job seen running: nothing to do.
        let accepted = request(BackupRunType::Backup, Some(d.status.clone()));
        assert_eq!(
            decide_ok(false, &accepted, |_| JobState::Running, now),
            None
        );
        // Job not seen yet right after: create again (idempotent), no status write.
        let again = decide_ok(false, &accepted, missing, now).expect("retry");
        assert_eq!(again.status, d.status);
        assert_eq!(again.create, d.create);
        // Long gone: failed, with a reason.
        let later = at("2026-03-01T02:00:00Z");
        let gone = decide_ok(false, &accepted, missing, later).expect("gone");
        assert_eq!(gone.status.phase, Some(BackupRunPhase::Failed));
        assert_eq!(gone.status.conditions[0].reason, "JobMissing");
        assert!(gone.create.is_none());
    }

    #[test]
    fn outcomes_are_recorded_once() {
        let now = at("2026-03-01T01:02:00Z");
        let d = decide_ok(
            true,
            &request(BackupRunType::RestoreTest, None),
            missing,
            now,
        )
        .expect("decision");
        assert_eq!(d.create.map(|c| c.0), Some(RunKind::Verify));
        let accepted = request(BackupRunType::RestoreTest, Some(d.status));
        let ok = decide_ok(
            true,
            &accepted,
            |_| JobState::Succeeded { at: Some(now) },
            now,
        )
        .expect("done");
        assert_eq!(ok.status.phase, Some(BackupRunPhase::Succeeded));
        assert_eq!(ok.status.conditions[0].status, "True");
        let done = request(BackupRunType::RestoreTest, Some(ok.status));
        assert_eq!(decide_ok(true, &done, |_| JobState::Running, now), None);
        let failed = decide_ok(
            true,
            &accepted,
            |_| JobState::Failed {
                at: None,
                reason: "BackoffLimitExceeded".into(),
                message: "limit".into(),
            },
            now,
        )
        .expect("failed");
        assert_eq!(failed.status.phase, Some(BackupRunPhase::Failed));
        assert!(failed.event.as_ref().is_some_and(|e| e.0));
    }

    #[test]
    fn invalid_schedule_waits_and_missing_restore_test_fails() {
        let now = at("2026-03-01T01:02:00Z");
        let waiting = decide(
            "orders",
            false,
            Err("MissingSecret: secret db not found"),
            &request(BackupRunType::Backup, None),
            missing,
            now,
        )
        .expect("waiting");
        assert_eq!(waiting.status.phase, Some(BackupRunPhase::Pending));
        assert!(waiting.create.is_none());
        assert!(waiting.event.is_some());
        // Same situation again: no write, no second Event.
        let still = request(BackupRunType::Backup, Some(waiting.status));
        assert_eq!(
            decide(
                "orders",
                false,
                Err("MissingSecret: secret db not found"),
                &still,
                missing,
                now
            ),
            None
        );
        let refused = decide_ok(
            false,
            &request(BackupRunType::RestoreTest, None),
            missing,
            now,
        )
        .expect("refused");
        assert_eq!(refused.status.phase, Some(BackupRunPhase::Failed));
        assert_eq!(
            refused.status.conditions[0].reason,
            "RestoreTestNotConfigured"
        );
        assert!(refused.create.is_none());
    }

    #[test]
    fn history_keeps_the_newest_finished_runs() {
        let mut all = Vec::new();
        for i in 0..8 {
            let mut status = BackupRunStatus {
                phase: Some(if i == 7 {
                    BackupRunPhase::Running
                } else {
                    BackupRunPhase::Succeeded
                }),
                ..Default::default()
            };
            status.completion_time = DateTime::from_timestamp(1_000 + i, 0);
            let mut r = request(BackupRunType::Backup, Some(status));
            r.metadata.name = Some(format!("r{i}"));
            all.push(std::sync::Arc::new(r));
        }
        let gone: Vec<String> = expired(&all, 5).iter().map(|r| r.name_any()).collect();
        assert_eq!(gone, vec!["r1", "r0"]);
    }

    #[test]
    fn owner_reference_is_added_once() {
        let mut bs: BackupSchedule = serde_json::from_value(json!({
            "apiVersion": "palisade.dev/v1alpha1", "kind": "BackupSchedule",
            "metadata": {"name": "orders", "namespace": "team-a", "uid": "u-1"},
            "spec": {"postgres": {"host": "db", "database": "d", "user": "u"},
                     "destination": {"path": "/x"}}
        }))
        .expect("schedule");
        let mut r = request(BackupRunType::Backup, None);
        let patch = owner_patch(&r, &bs).expect("patch");
        assert_eq!(patch["metadata"]["ownerReferences"][0]["uid"], "u-1");
        r.metadata.owner_references =
            serde_json::from_value(patch["metadata"]["ownerReferences"].clone()).ok();
        assert_eq!(owner_patch(&r, &bs), None);
        bs.metadata.uid = None;
        assert_eq!(
            owner_patch(&request(BackupRunType::Backup, None), &bs),
            None
        );
    }
}
