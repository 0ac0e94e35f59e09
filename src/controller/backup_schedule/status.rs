//! The status of a BackupSchedule (pure): the `Ready` condition a plan
//! concludes, the status a failed step leaves behind, and the merge patch
//! that writes either.
//!
//! `Ready` is False when the spec is invalid (the validation's reason), when
//! the newest backup or restore test failed (`BackupFailing`,
//! `RestoreTestFailing`) or when a step of the reconcile failed (that step's
//! reason, see [`failed`]); else True (`Scheduled` or `Suspended`). Each False
//! goes with kstatus's `Stalled` or `Reconciling`
//! ([`crate::crd::condition::progress`]).

use chrono::{DateTime, Utc};
use serde_json::json;

use super::Invalid;
use super::READY;
use crate::crd::backup_schedule::BackupScheduleStatus;
use crate::crd::condition::{Observed, find, merge_conditions, progress};
use crate::crd::{Condition, ConditionStatus};
use k8s_openapi::jiff::Timestamp;

/// What the last folded run of a kind said, or `default` when no run has
/// been folded in this reconcile nor before.
pub fn kept(conditions: &[Condition], type_: &'static str, default: Observed) -> Observed {
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

/// The `Ready` condition of a reconcile whose steps all succeed. `runs` are the
/// `LastBackupSucceeded` and `LastRestoreTestSucceeded` observations; `notes`
/// say why a due run waits.
pub fn ready(
    invalid: Option<&Invalid>,
    runs: &[Observed],
    suspend: bool,
    next: Option<DateTime<Utc>>,
    notes: &[String],
) -> Observed {
    if let Some(inv) = invalid {
        return Observed::new(
            READY,
            false,
            inv.reason,
            format!("{}; no runs start until this is fixed", inv.message),
        );
    }
    let failed = |t: &str| {
        runs.iter()
            .find(|o| o.type_ == t && o.status == ConditionStatus::False)
    };
    let suffix = if notes.is_empty() {
        String::new()
    } else {
        format!("; {}", notes.join("; "))
    };
    if let Some(f) = failed(super::LAST_BACKUP_SUCCEEDED) {
        Observed::new(
            READY,
            false,
            "BackupFailing",
            format!("{}{suffix}", f.message),
        )
    } else if let Some(f) = failed(super::LAST_RESTORE_TEST_SUCCEEDED) {
        Observed::new(
            READY,
            false,
            "RestoreTestFailing",
            format!("{}{suffix}", f.message),
        )
    } else if suspend {
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
            match next {
                Some(t) => format!("next backup at {}{suffix}", t.to_rfc3339()),
                None => format!("no further backup is due{suffix}"),
            },
        )
    }
}

/// The condition list: `observed` (the runs' conditions), `ready` and its
/// kstatus companion, merged over `previous`. Not ready always needs a human
/// here (an invalid spec, a missing Secret, a destination conflict, failing
/// runs): `Stalled`.
pub fn conditions(
    previous: &[Condition],
    mut observed: Vec<Observed>,
    ready: Observed,
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    observed.extend(progress(&ready, true));
    observed.push(ready);
    merge_conditions(previous, &observed, generation, now)
}

/// Whether a failed step needs a human (kstatus `Stalled`: refused by RBAC or
/// by validation, or a spec that cannot be turned into objects) rather than a
/// retry (`Reconciling`: the API server failed or could not be reached). By
/// the error's bounded reason.
pub fn stalled(error_reason: &str) -> bool {
    matches!(
        error_reason,
        "Forbidden" | "Rejected" | "Malformed" | "InvalidConfig" | "SerializeFailed"
    )
}

/// The status after a step failed: `base` (what is stored) with `Ready=False`,
/// the step's bounded reason and `message`. Every other field stays as
/// stored, so nothing the failed step was meant to record (a started run, a
/// folded result) is recorded before it happened.
pub fn failed(
    base: &BackupScheduleStatus,
    reason: &'static str,
    message: String,
    stalled: bool,
    generation: Option<i64>,
    now: Timestamp,
) -> BackupScheduleStatus {
    let ready = Observed::new(READY, false, reason, message);
    let observed: Vec<Observed> = progress(&ready, stalled)
        .into_iter()
        .chain([ready])
        .collect();
    BackupScheduleStatus {
        observed_generation: generation,
        conditions: merge_conditions(&base.conditions, &observed, generation, now),
        ..base.clone()
    }
}

/// The status as a merge patch: fields that became empty are removed explicitly
/// (they are skipped when serialized, and a merge patch keeps what it omits).
pub fn patch(status: &BackupScheduleStatus, previous: &BackupScheduleStatus) -> serde_json::Value {
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

#[cfg(test)]
#[allow(clippy::type_complexity)] // case tables: one tuple per row reads best
mod tests {
    use super::super::{LAST_BACKUP_SUCCEEDED, LAST_RESTORE_TEST_SUCCEEDED};
    use super::*;
    use crate::crd::condition::{RECONCILING, STALLED};

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    #[test]
    fn ready_says_what_needs_attention_first() {
        let next = DateTime::from_timestamp(1_800_003_600, 0);
        let invalid = Invalid {
            reason: "SecretNotFound",
            message: "Secret db does not exist".into(),
        };
        let backup_failed = Observed::new(LAST_BACKUP_SUCCEEDED, false, "BackupFailed", "b");
        let test_failed =
            Observed::new(LAST_RESTORE_TEST_SUCCEEDED, false, "RestoreTestFailed", "r");
        let ok = Observed::new(LAST_BACKUP_SUCCEEDED, true, "Succeeded", "s");
        let waits = vec!["the backup waits".to_string()];
        // (invalid, runs, suspend, notes) -> (status, reason, message contains)
        let cases: Vec<(
            Option<&Invalid>,
            Vec<Observed>,
            bool,
            &[String],
            bool,
            &str,
            &str,
        )> = vec![
            (
                Some(&invalid),
                vec![backup_failed.clone()],
                false,
                &[],
                false,
                "SecretNotFound",
                "no runs start until this is fixed",
            ),
            (
                None,
                vec![test_failed.clone(), backup_failed.clone()],
                false,
                &waits,
                false,
                "BackupFailing",
                "b; the backup waits",
            ),
            (
                None,
                vec![ok.clone(), test_failed.clone()],
                true,
                &[],
                false,
                "RestoreTestFailing",
                "r",
            ),
            (
                None,
                vec![ok.clone()],
                true,
                &[],
                true,
                "Suspended",
                "spec.suspend is true",
            ),
            (
                None,
                vec![ok.clone()],
                false,
                &waits,
                true,
                "Scheduled",
                "next backup at 2027-01-15T09:00:00+00:00; the backup waits",
            ),
        ];
        for (inv, runs, suspend, notes, status, reason, text) in cases {
            let r = ready(inv, &runs, suspend, next, notes);
            assert_eq!(r.status, ConditionStatus::from(status), "{reason}");
            assert_eq!(r.reason, reason);
            assert!(r.message.contains(text), "{}", r.message);
        }
        let r = ready(None, &[], false, None, &[]);
        assert_eq!(r.message, "no further backup is due");
    }

    #[test]
    fn a_failed_step_sets_ready_false_and_keeps_the_rest() {
        let base = BackupScheduleStatus {
            conditions: conditions(
                &[],
                vec![],
                Observed::new(READY, true, "Scheduled", "next backup at …"),
                Some(1),
                t(0),
            ),
            last_backup_job: Some("orders-100".into()),
            consecutive_failures: 2,
            ..Default::default()
        };
        // (error reason) -> kstatus companion
        for (error_reason, companion) in [
            ("Forbidden", STALLED),
            ("Rejected", STALLED),
            ("InvalidConfig", STALLED),
            ("ServerError", RECONCILING),
            ("ApiError", RECONCILING),
            ("Conflict", RECONCILING),
        ] {
            let s = failed(
                &base,
                "JobCreateFailed",
                format!("starting Job x failed ({error_reason})"),
                stalled(error_reason),
                Some(2),
                t(60),
            );
            let r = find(&s.conditions, READY).expect("ready");
            assert_eq!(
                (r.status.as_str(), r.reason.as_str()),
                ("False", "JobCreateFailed")
            );
            assert_eq!(r.last_transition_time.0, t(60));
            let c = find(&s.conditions, companion).expect("companion");
            assert_eq!(c.status, "True", "{error_reason}");
            let other = if companion == STALLED {
                RECONCILING
            } else {
                STALLED
            };
            assert!(find(&s.conditions, other).is_none(), "{error_reason}");
            assert_eq!(s.last_backup_job, base.last_backup_job);
            assert_eq!(s.consecutive_failures, 2);
            assert_eq!(s.observed_generation, Some(2));
            // The same failure again changes nothing (no write, no second Event).
            let again = failed(
                &s,
                "JobCreateFailed",
                r.message.clone(),
                stalled(error_reason),
                Some(2),
                t(90),
            );
            assert_eq!(again, s);
        }
    }

    #[test]
    fn the_patch_removes_fields_that_became_empty() {
        let old = BackupScheduleStatus {
            next_schedule_time: DateTime::from_timestamp(1_800_000_000, 0),
            ..Default::default()
        };
        let p = patch(&BackupScheduleStatus::default(), &old);
        assert!(p["status"]["nextScheduleTime"].is_null());
        assert!(
            p["status"]
                .as_object()
                .expect("object")
                .contains_key("nextScheduleTime")
        );
        assert!(
            !p["status"]
                .as_object()
                .expect("object")
                .contains_key("lastScheduleTime")
        );
    }
}
