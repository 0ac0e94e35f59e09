//! Folding finished runs into status (pure; part of the plan).
//!
//! Each finished run is folded once, oldest first, per kind: its result (the
//! JSON its own Pod left as termination message, authenticated in
//! [`super::observe`]) becomes `lastSuccessfulBackup` / `lastRestoreTest`, the
//! `LastBackupSucceeded` / `LastRestoreTestSucceeded` condition, an Event and a
//! metric; `lastBackupJob` / `lastRestoreTestJob` mark how far folding got. A
//! finished Job whose result has not arrived yet (the Pod's watch event may lag
//! behind the Job's) is waited for up to [`RESULT_GRACE_SECONDS`], then folded
//! without one.

use super::observe::{Finished, Observed, Report, Run, folded_minute};
use super::status::kept;
use super::{LAST_BACKUP_SUCCEEDED, LAST_RESTORE_TEST_SUCCEEDED};
use crate::backup::result::JobResult;
use crate::crd::ConditionStatus;
use crate::crd::backup_schedule::BackupScheduleStatus;
use crate::crd::condition::Observed as Observation;
use crate::resources::backup_jobs::RunKind;
use kube::runtime::events::EventType;

/// An Event to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Note {
    pub type_: EventType,
    /// Bounded CamelCase reason.
    pub reason: &'static str,
    pub note: String,
}

impl Note {
    pub fn normal(reason: &'static str, note: String) -> Self {
        Self {
            type_: EventType::Normal,
            reason,
            note,
        }
    }

    pub fn warning(reason: &'static str, note: String) -> Self {
        Self {
            type_: EventType::Warning,
            reason,
            note,
        }
    }
}

/// A finished run, for the backup and restore-test gauges.
#[derive(Debug, Clone, PartialEq)]
pub struct RunMetric {
    pub kind: RunKind,
    pub ok: bool,
    /// Unix seconds.
    pub finished_at: f64,
}

/// How long a finished Job's result may lag behind the Job (the Pod's watch event
/// arriving after the Job's) before the run is recorded without one.
pub const RESULT_GRACE_SECONDS: i64 = 60;

/// What folding the newly finished runs gives.
#[derive(Debug, Clone, Default)]
pub struct Folded {
    /// The stored status with the runs folded in.
    pub status: BackupScheduleStatus,
    /// `LastBackupSucceeded` and `LastRestoreTestSucceeded`.
    pub conditions: Vec<Observation>,
    pub events: Vec<Note>,
    pub metrics: Vec<RunMetric>,
    /// A finished run's result has not arrived yet: look again shortly.
    pub waiting: bool,
}

/// Folds every finished run of `observed` that status does not hold yet.
pub fn fold(observed: &Observed) -> Folded {
    let previous = observed.previous();
    let mut out = Folded {
        status: previous.clone(),
        ..Folded::default()
    };
    for kind in [RunKind::Backup, RunKind::Verify] {
        out = fold_kind(observed, kind, out);
    }
    let has = |c: &[Observation], t: &str| c.iter().any(|o| o.type_ == t);
    if !has(&out.conditions, LAST_BACKUP_SUCCEEDED) {
        out.conditions.push(kept(
            &previous.conditions,
            LAST_BACKUP_SUCCEEDED,
            Observation::new(
                LAST_BACKUP_SUCCEEDED,
                ConditionStatus::Unknown,
                "NoRunYet",
                "no backup run has finished yet",
            ),
        ));
    }
    if observed.schedule.spec.restore_test.is_none() {
        out.conditions = with(
            out.conditions,
            Observation::new(
                LAST_RESTORE_TEST_SUCCEEDED,
                ConditionStatus::Unknown,
                "NotConfigured",
                "spec.restoreTest is not set: snapshots are never test-restored",
            ),
        );
    } else if !has(&out.conditions, LAST_RESTORE_TEST_SUCCEEDED) {
        out.conditions.push(kept(
            &previous.conditions,
            LAST_RESTORE_TEST_SUCCEEDED,
            Observation::new(
                LAST_RESTORE_TEST_SUCCEEDED,
                ConditionStatus::Unknown,
                "NoRunYet",
                "no restore test has finished yet",
            ),
        ));
    }
    out
}

/// `list` with `o` replacing the observation of its condition type.
fn with(mut list: Vec<Observation>, o: Observation) -> Vec<Observation> {
    list.retain(|x| x.type_ != o.type_);
    list.push(o);
    list
}

/// Folds the newly finished runs of `kind` into `out`, oldest first; stops at
/// the first one whose result is still on its way.
fn fold_kind(observed: &Observed, kind: RunKind, mut out: Folded) -> Folded {
    let after = folded_minute(&out.status, kind);
    let mut finished: Vec<&Run> = observed
        .runs
        .iter()
        .filter(|r| r.kind == kind && r.finished.is_some() && r.minute > after)
        .collect();
    finished.sort_by_key(|r| r.minute);
    for run in finished {
        let report = observed.reports.get(&run.name).cloned().unwrap_or_default();
        let age = observed.now.as_second() - run.finished_at.map_or(0, |t| t.as_second());
        if report.is_empty() && age < RESULT_GRACE_SECONDS {
            out.waiting = true;
            return out;
        }
        let ok = run.finished == Some(Finished::Succeeded)
            && report.unauthenticated.is_none()
            && report.result.as_ref().is_none_or(|r| r.ok);
        let done = Done {
            run,
            report: &report,
            ok,
            logs: format!("kubectl logs -n {} job/{}", observed.namespace(), run.name),
        };
        let (says, folded) = match kind {
            RunKind::Backup => (&BACKUP, done.fold_backup(&mut out.status)),
            RunKind::Verify => (&RESTORE_TEST, done.fold_verify(&mut out.status)),
        };
        let (condition, event) = match folded {
            Ok(msg) => (
                Observation::new(says.condition, true, says.succeeded, msg.clone()),
                Note::normal(says.succeeded_event, msg),
            ),
            Err(msg) => (
                Observation::new(says.condition, false, says.failed, msg.clone()),
                Note::warning(says.failed, msg),
            ),
        };
        out.conditions = with(out.conditions, condition);
        out.events.push(event);
        out.metrics.push(RunMetric {
            kind,
            ok,
            finished_at: run.finished_at.unwrap_or(observed.now).as_second() as f64,
        });
    }
    out
}

/// Why a run failed: (reason, summary), from the most specific source.
fn failure(run: &Run, report: &Report) -> (String, String) {
    match (&run.finished, &report.result) {
        (_, None) if report.unauthenticated.is_some() => (
            "Unauthenticated".to_string(),
            format!(
                "Job {}: {}",
                run.name,
                report
                    .unauthenticated
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
    }
}

/// What a folded run of one kind says: its condition type, and the reasons of a
/// failure (condition and Event) and of a success (condition, Event).
struct Says {
    condition: &'static str,
    failed: &'static str,
    succeeded: &'static str,
    succeeded_event: &'static str,
}

const BACKUP: Says = Says {
    condition: LAST_BACKUP_SUCCEEDED,
    failed: "BackupFailed",
    succeeded: "Succeeded",
    succeeded_event: "BackupSucceeded",
};

const RESTORE_TEST: Says = Says {
    condition: LAST_RESTORE_TEST_SUCCEEDED,
    failed: "RestoreTestFailed",
    succeeded: "Passed",
    succeeded_event: "RestoreTestPassed",
};

/// A finished run with its report, and the command that shows its logs.
struct Done<'a> {
    run: &'a Run,
    report: &'a Report,
    ok: bool,
    logs: String,
}

impl Done<'_> {
    /// Folds a backup run into `status`; the message of its success or failure.
    fn fold_backup(&self, status: &mut BackupScheduleStatus) -> Result<String, String> {
        let (run, report) = (self.run, self.report);
        status.last_backup_job = Some(run.name.clone());
        if !self.ok {
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            let (reason, summary) = failure(run, report);
            return Err(format!(
                "backup Job {} failed ({reason}): {summary}; {} failure(s) in a row; see `{}`",
                run.name, status.consecutive_failures, self.logs
            ));
        }
        status.consecutive_failures = 0;
        let record = report.result.as_ref().and_then(JobResult::backup_record);
        if let Some(r) = &report.result {
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
        Ok(msg)
    }

    /// Folds a restore-test run into `status`; the message of its success or failure.
    fn fold_verify(&self, status: &mut BackupScheduleStatus) -> Result<String, String> {
        let (run, report) = (self.run, self.report);
        status.last_restore_test_job = Some(run.name.clone());
        let record = report.result.as_ref().and_then(JobResult::restore_record);
        if record.is_some() {
            status.last_restore_test = record.clone();
        }
        if !self.ok {
            let (reason, summary) = failure(run, report);
            return Err(format!(
                "restore test Job {} failed ({reason}): {summary}; see `{}`",
                run.name, self.logs
            ));
        }
        Ok(match &record {
            Some(t) => format!(
                "snapshot {} restored and passed {} check(s) in {} (Job {})",
                t.snapshot,
                t.checks.len(),
                t.duration,
                run.name
            ),
            None => format!("Job {} succeeded but reported no result", run.name),
        })
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // case tables: one tuple per row reads best
mod tests {
    use super::super::observe::fixtures::*;
    use super::*;
    use crate::backup::result::ResultError;
    use k8s_openapi::jiff::Timestamp;
    use serde_json::json;

    const VERIFY_FAILED: &str = r#"{"op":"verify","ok":false,"snapshot":"snap-9","time":"2026-03-02T04:00:09Z","result":"Failed","durationSeconds":9.0,"checks":[{"name":"orders","passed":true},{"name":"rowCounts","passed":false,"message":"shop.orders: 10 rows, expected 11"}]}"#;
    const VERIFY_PASSED: &str = r#"{"op":"verify","ok":true,"snapshot":"snap-9","time":"2026-03-02T04:00:09Z","result":"Passed","durationSeconds":9.0,"checks":[{"name":"orders","passed":true}]}"#;
    const DUMP_FAILED: &str =
        r#"{"op":"run","ok":false,"reason":"DumpFailed","error":"pg_dump: connection refused"}"#;

    fn cond<'a>(f: &'a Folded, t: &str) -> &'a Observation {
        f.conditions
            .iter()
            .find(|o| o.type_ == t)
            .expect("condition")
    }

    #[test]
    fn finished_runs_fold_into_status() {
        let t = at("2026-03-02T03:00:00Z");
        let verify = at("2026-03-02T04:00:00Z");
        let unauthenticated = Report {
            result: None,
            unauthenticated: Some(ResultError::Unauthenticated("invalid MAC")),
        };
        // (kind, Job finished ok, report, seconds after the Job finished) ->
        // (condition type, status, reason, message contains, event reason)
        let cases: Vec<(
            RunKind,
            bool,
            Option<Report>,
            i64,
            &str,
            &str,
            &str,
            &str,
            &str,
        )> = vec![
            (
                RunKind::Backup,
                true,
                Some(backup_ok("snap-1")),
                0,
                LAST_BACKUP_SUCCEEDED,
                "True",
                "Succeeded",
                "snapshot snap-1 (4096 bytes",
                "BackupSucceeded",
            ),
            (
                RunKind::Backup,
                false,
                Some(reported(DUMP_FAILED)),
                0,
                LAST_BACKUP_SUCCEEDED,
                "False",
                "BackupFailed",
                "(DumpFailed): DumpFailed: pg_dump: connection refused; 1 failure(s) in a row; see `kubectl logs -n team-a job/orders-29540340`",
                "BackupFailed",
            ),
            (
                RunKind::Backup,
                true,
                Some(unauthenticated),
                0,
                LAST_BACKUP_SUCCEEDED,
                "False",
                "BackupFailed",
                "(Unauthenticated)",
                "BackupFailed",
            ),
            // No result after the grace period: the Job's own outcome.
            (
                RunKind::Backup,
                true,
                None,
                61,
                LAST_BACKUP_SUCCEEDED,
                "True",
                "Succeeded",
                "succeeded but reported no result",
                "BackupSucceeded",
            ),
            (
                RunKind::Backup,
                false,
                None,
                61,
                LAST_BACKUP_SUCCEEDED,
                "False",
                "BackupFailed",
                "(BackoffLimitExceeded): Job has reached the specified backoff limit",
                "BackupFailed",
            ),
            (
                RunKind::Verify,
                false,
                Some(reported(VERIFY_FAILED)),
                0,
                LAST_RESTORE_TEST_SUCCEEDED,
                "False",
                "RestoreTestFailed",
                "expected 11",
                "RestoreTestFailed",
            ),
            (
                RunKind::Verify,
                true,
                Some(reported(VERIFY_PASSED)),
                0,
                LAST_RESTORE_TEST_SUCCEEDED,
                "True",
                "Passed",
                "snapshot snap-9 restored and passed 1 check(s)",
                "RestoreTestPassed",
            ),
        ];
        for (kind, ok, report, after, type_, status, reason, text, event) in cases {
            let scheduled = if kind == RunKind::Backup { t } else { verify };
            let r = run(kind, scheduled, Some(ok));
            let end = r.finished_at.expect("finished");
            let now = Timestamp::from_second(end.as_second() + after).expect("time");
            let mut obs = observed(
                schedule(json!({"restoreTest": {"schedule": "0 4 * * 0"}})),
                now,
                vec![r.clone()],
            );
            if let Some(rep) = report {
                obs.reports.insert(r.name.clone(), rep);
            }
            let f = fold(&obs);
            let c = cond(&f, type_);
            assert_eq!(
                (c.status.as_str(), c.reason.as_str()),
                (status, reason),
                "{}",
                c.message
            );
            assert!(c.message.contains(text), "{text:?} not in {:?}", c.message);
            assert_eq!(f.events.len(), 1);
            assert_eq!(f.events[0].reason, event);
            assert_eq!(f.events[0].note, c.message);
            assert_eq!(
                f.metrics,
                vec![RunMetric {
                    kind,
                    ok: status == "True",
                    finished_at: end.as_second() as f64
                }]
            );
            assert!(!f.waiting);
            match kind {
                RunKind::Backup => {
                    assert_eq!(f.status.last_backup_job.as_deref(), Some(r.name.as_str()));
                    assert_eq!(f.status.consecutive_failures, u32::from(status == "False"));
                }
                RunKind::Verify => {
                    assert_eq!(
                        f.status.last_restore_test_job.as_deref(),
                        Some(r.name.as_str())
                    );
                    assert_eq!(
                        f.status
                            .last_restore_test
                            .as_ref()
                            .map(|t| t.snapshot.as_str()),
                        Some("snap-9")
                    );
                    // A failed restore test is not a failed backup.
                    assert_eq!(f.status.consecutive_failures, 0);
                }
            }
        }
    }

    #[test]
    fn a_success_records_the_snapshot_and_resets_failures() {
        let r = run(RunKind::Backup, at("2026-03-02T03:00:00Z"), Some(true));
        let mut bs = schedule(json!({}));
        bs.status = Some(BackupScheduleStatus {
            consecutive_failures: 4,
            ..Default::default()
        });
        let mut obs = observed(bs, at("2026-03-02T03:01:00Z"), vec![r.clone()]);
        obs.reports.insert(r.name.clone(), backup_ok("snap-7"));
        let f = fold(&obs);
        let rec = f.status.last_successful_backup.expect("record");
        assert_eq!(
            (rec.id.as_str(), rec.bytes, rec.sha256.as_str()),
            ("snap-7", 4096, "ab12")
        );
        assert_eq!(f.status.snapshot_count, Some(3));
        assert_eq!(f.status.total_bytes, Some(12288));
        assert_eq!(f.status.consecutive_failures, 0);
    }

    #[test]
    fn a_result_on_its_way_is_waited_for_and_later_runs_wait_behind_it() {
        let first = run(RunKind::Backup, at("2026-03-02T03:00:00Z"), Some(true));
        let second = run(RunKind::Backup, at("2026-03-03T03:00:00Z"), Some(true));
        let now = at("2026-03-03T03:01:30Z");
        let mut obs = observed(
            schedule(json!({})),
            now,
            vec![second.clone(), first.clone()],
        );
        // The first finished long ago without a result; the second's is on its way.
        let f = fold(&obs);
        assert!(f.waiting);
        assert_eq!(
            f.status.last_backup_job.as_deref(),
            Some(first.name.as_str())
        );
        assert_eq!(f.events.len(), 1);
        // Once it arrived, both are folded, oldest first.
        obs.reports.insert(second.name.clone(), backup_ok("snap-2"));
        let f = fold(&obs);
        assert!(!f.waiting);
        assert_eq!(
            f.status.last_backup_job.as_deref(),
            Some(second.name.as_str())
        );
        assert_eq!(f.events.len(), 2);
        assert!(f.events[1].note.contains("snap-2"));
        // Folded runs are never folded again.
        let mut bs = schedule(json!({}));
        bs.status = Some(f.status.clone());
        let again = fold(&observed(bs, now, vec![first, second]));
        assert!(again.events.is_empty() && again.metrics.is_empty());
        assert_eq!(again.status, f.status);
    }

    #[test]
    fn without_runs_the_conditions_say_so_or_stay() {
        let now = at("2026-03-02T00:00:00Z");
        let f = fold(&observed(schedule(json!({})), now, vec![]));
        assert_eq!(cond(&f, LAST_BACKUP_SUCCEEDED).reason, "NoRunYet");
        assert_eq!(
            cond(&f, LAST_RESTORE_TEST_SUCCEEDED).reason,
            "NotConfigured"
        );
        let f = fold(&observed(
            schedule(json!({"restoreTest": {"schedule": "0 4 * * 0"}})),
            now,
            vec![],
        ));
        assert_eq!(cond(&f, LAST_RESTORE_TEST_SUCCEEDED).reason, "NoRunYet");
        // What the last folded run said stays.
        let mut bs = schedule(json!({}));
        bs.status = Some(BackupScheduleStatus {
            conditions: crate::crd::condition::merge_conditions(
                &[],
                &[Observation::new(
                    LAST_BACKUP_SUCCEEDED,
                    false,
                    "BackupFailed",
                    "boom",
                )],
                Some(1),
                now,
            ),
            ..Default::default()
        });
        let f = fold(&observed(bs, now, vec![]));
        let c = cond(&f, LAST_BACKUP_SUCCEEDED);
        assert_eq!(
            (c.reason.as_str(), c.message.as_str()),
            ("BackupFailed", "boom")
        );
    }
}
