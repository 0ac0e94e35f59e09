//! Step 2, validate (pure): whether the schedule can run, and its parsed cron
//! schedules when it can.
//!
//! The first problem wins, in this order: the backup cron expression and time
//! zone, the restore test's cron expression, fields the API no longer has, a
//! destination another (older) schedule already uses, a missing Secret or key.
//! An invalid schedule starts no runs and keeps its last good status; BackupRun
//! requests wait with the reason.

use std::sync::Arc;

use kube::ResourceExt;

use super::observe::Observed;
use crate::backup::schedule::Schedule;
use crate::crd::backup_schedule::{BackupSchedule, Destination};

use super::Invalid;

/// A schedule that can run: its parsed cron schedules.
#[derive(Debug, Clone)]
pub struct Valid {
    pub backup: Schedule,
    /// The restore test's, when `spec.restoreTest` is set.
    pub verify: Option<Schedule>,
}

/// Validates what `observed` shows.
pub fn validate(observed: &Observed) -> Result<Valid, Invalid> {
    let bs = &observed.schedule;
    let tz = bs.spec.time_zone.as_deref();
    let backup = Schedule::parse(&bs.spec.schedule, tz).map_err(|e| Invalid {
        reason: e.reason(),
        message: format!("spec.schedule/timeZone: {e}"),
    })?;
    let verify = match &bs.spec.restore_test {
        Some(rt) => Some(Schedule::parse(&rt.schedule, tz).map_err(|e| Invalid {
            reason: e.reason(),
            message: format!("spec.restoreTest.schedule: {e}"),
        })?),
        None => None,
    };
    if let Some(field) = bs.spec.removed_fields().first() {
        return Err(Invalid {
            reason: "RemovedField",
            message: format!(
                "{field} is no longer supported: run Jobs use the operator's image (--job-image, chart value controller.jobImage) and the namespace's default ServiceAccount without a token; remove the field"
            ),
        });
    }
    if let Some(owner) = destination_owner(bs, &observed.schedules) {
        return Err(Invalid {
            reason: "DestinationConflict",
            message: format!(
                "spec.destination is already used by BackupSchedule {owner}; give each schedule its own bucket prefix, claim subPath or path"
            ),
        });
    }
    observed.secrets.clone()?;
    Ok(Valid { backup, verify })
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

#[cfg(test)]
#[allow(clippy::type_complexity)] // case tables: one tuple per row reads best
mod tests {
    use super::super::observe::fixtures::*;
    use super::*;
    use serde_json::json;

    #[test]
    fn destinations_are_normalized() {
        let d: Destination =
            serde_yaml::from_str("s3: {bucket: b, prefix: /orders/}").expect("dest");
        let e: Destination = serde_yaml::from_str("s3: {bucket: b, prefix: orders}").expect("dest");
        assert_eq!(destination_key("a", &d), destination_key("b", &e));
        let p: Destination = serde_yaml::from_str("path: /data/").expect("dest");
        assert_ne!(destination_key("a", &p), destination_key("b", &p));
    }

    /// A schedule named `name` created at `created` that writes to `path`.
    fn other(name: &str, created: &str, path: &str) -> Arc<BackupSchedule> {
        let mut o = schedule(json!({"destination": {"path": path}}));
        o.metadata.name = Some(name.into());
        o.metadata.uid = Some(format!("uid-{name}"));
        o.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            at(created),
        ));
        Arc::new(o)
    }

    #[test]
    fn the_first_problem_wins() {
        let now = at("2026-03-02T00:00:00Z");
        let missing = missing_secret();
        // (spec, older schedules, secrets check) -> reason (None: valid)
        let cases: Vec<(
            serde_json::Value,
            Vec<Arc<BackupSchedule>>,
            bool,
            Option<&str>,
        )> = vec![
            (json!({}), vec![], true, None),
            (
                json!({"schedule": "every night"}),
                vec![],
                false,
                Some("InvalidSchedule"),
            ),
            (
                json!({"timeZone": "Mars/Olympus"}),
                vec![],
                true,
                Some("InvalidTimeZone"),
            ),
            (
                json!({"restoreTest": {"schedule": "0 4 * *"}}),
                vec![],
                true,
                Some("InvalidSchedule"),
            ),
            (
                json!({"jobTemplate": {"image": "evil/image:1"}}),
                vec![],
                false,
                Some("RemovedField"),
            ),
            (
                json!({}),
                vec![other("first", "2026-02-01T00:00:00Z", "/backups/orders/")],
                false,
                Some("DestinationConflict"),
            ),
            // A younger schedule on the same destination is the one in conflict.
            (
                json!({}),
                vec![other("later", "2026-03-01T00:00:01Z", "/backups/orders")],
                true,
                None,
            ),
            (json!({}), vec![], false, Some("SecretNotFound")),
        ];
        for (spec, others, secrets_ok, want) in cases {
            let mut obs = observed(schedule(spec.clone()), now, vec![]);
            obs.schedules.extend(others);
            if !secrets_ok {
                obs.secrets = Err(missing.clone());
            }
            let got = validate(&obs);
            assert_eq!(got.as_ref().err().map(|i| i.reason), want, "{spec}");
            if let Some(i) = got.as_ref().err() {
                assert_eq!(
                    i.fixed_by_spec_only(),
                    matches!(i.reason, "InvalidSchedule" | "InvalidTimeZone")
                );
            }
        }
        let conflict = {
            let mut obs = observed(schedule(json!({})), now, vec![]);
            obs.schedules
                .push(other("first", "2026-02-01T00:00:00Z", "/backups/orders"));
            validate(&obs).expect_err("conflict")
        };
        assert!(conflict.message.contains("team-a/first"), "{conflict:?}");
        let restore = validate(&observed(
            schedule(json!({"restoreTest": {"schedule": "0 4 * * 0"}})),
            now,
            vec![],
        ))
        .expect("valid");
        assert!(restore.verify.is_some());
    }
}
