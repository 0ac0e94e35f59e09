//! `BackupRun`: a request to run one backup or one restore test of a
//! BackupSchedule now.
//!
//! Triggering a run is separate from editing the schedule: the schedule's spec
//! decides what the run Job mounts and where it connects, so whoever may change it
//! holds every Secret it references. A BackupRun names a schedule in its own
//! namespace and the kind of run, nothing else; a role can be granted `create` on
//! `backupruns` alone (the catalog's `backups:run`). The BackupSchedule controller
//! starts the run exactly as a scheduled one (deterministic Job name, same image,
//! same configuration), records the outcome in the BackupRun's status and deletes
//! finished BackupRuns beyond a short history.

use chrono::{DateTime, Utc};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A request to run one backup or restore test of a BackupSchedule in the same
/// namespace now. The spec is immutable: create another BackupRun to run again.
#[allow(clippy::duplicated_attributes)] // printcolumn(type_ = ...) repeats by design
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "BackupRun",
    namespaced,
    shortname = "br",
    category = "palisade",
    status = "BackupRunStatus",
    printcolumn(
        name = "Schedule",
        type_ = "string",
        json_path = ".spec.scheduleName",
        description = "The BackupSchedule to run"
    ),
    printcolumn(
        name = "Type",
        type_ = "string",
        json_path = ".spec.type",
        description = "Backup or RestoreTest"
    ),
    printcolumn(
        name = "Phase",
        type_ = "string",
        json_path = ".status.phase",
        description = "Pending, Running, Succeeded or Failed"
    ),
    printcolumn(
        name = "Job",
        type_ = "string",
        json_path = ".status.jobName",
        priority = 1,
        description = "The Job that runs it"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[x_kube(validation = Rule::new("self == oldSelf").message("spec is immutable: create a new BackupRun to run again"))]
#[serde(rename_all = "camelCase")]
pub struct BackupRunSpec {
    /// Name of the BackupSchedule (in this BackupRun's namespace) to run.
    #[schemars(
        length(min = 1, max = 253),
        regex(pattern = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
    )]
    pub schedule_name: String,
    /// What to run: `Backup` (a snapshot, then retention) or `RestoreTest` (restore
    /// the newest snapshot into the scratch database and run the checks; the
    /// schedule needs `spec.restoreTest`). Default: Backup.
    #[serde(default, rename = "type")]
    pub type_: BackupRunType,
}

/// The kinds of run a BackupSchedule has.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum BackupRunType {
    /// `palisade backup run` with the schedule's configuration (and retention).
    #[default]
    Backup,
    /// `palisade backup verify`: the schedule's restore test.
    RestoreTest,
}

/// Where a BackupRun is.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum BackupRunPhase {
    /// Accepted, its Job not created yet (or the schedule is not Ready).
    Pending,
    /// Its Job exists and has not finished.
    Running,
    /// Its Job completed.
    Succeeded,
    /// Its Job failed, or the run could not start (see `message`).
    Failed,
}

impl BackupRunPhase {
    /// Whether the run is over (nothing will change any more).
    pub fn is_finished(self) -> bool {
        matches!(self, BackupRunPhase::Succeeded | BackupRunPhase::Failed)
    }
}

/// Observed state of a BackupRun (written by the BackupSchedule controller only).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupRunStatus {
    /// `Pending`, `Running`, `Succeeded` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub phase: Option<BackupRunPhase>,
    /// `Complete`: True when the run succeeded, False when it failed or could not
    /// start, Unknown while it runs.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    #[schemars(length(max = 8))]
    pub conditions: Vec<Condition>,
    /// Name of the Job that runs it (`<schedule>-<unix-minute>` or
    /// `<schedule>-verify-<unix-minute>`; a scheduled run of the same minute is
    /// shared).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    pub job_name: Option<String>,
    /// When the controller accepted the run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<DateTime<Utc>>,
    /// When the run finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<DateTime<Utc>>,
    /// What happened, in one line (never contains secret values).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 1024))]
    pub message: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::CustomResourceExt;

    #[test]
    fn crd_is_namespaced_immutable_and_bounded() {
        let crd = BackupRun::crd();
        assert_eq!(crd.spec.scope, "Namespaced");
        let text = serde_json::to_string(&crd).expect("crd serializes");
        for needle in [
            "\"shortNames\":[\"br\"]",
            "self == oldSelf",
            "\"maxLength\":253",
            "\"enum\":[\"Backup\",\"RestoreTest\"]",
        ] {
            assert!(text.contains(needle), "missing {needle}: {text}");
        }
        let spec: BackupRunSpec =
            serde_json::from_value(serde_json::json!({"scheduleName": "orders"})).expect("spec");
        assert_eq!(spec.type_, BackupRunType::Backup);
    }
}
