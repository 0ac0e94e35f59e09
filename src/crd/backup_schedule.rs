//! `BackupSchedule`: placeholder until the snapshot engine branch lands with the
//! full kind (see DESIGN.md).

use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

use super::Condition;

/// Scheduled PostgreSQL snapshots with automated restore tests.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[kube(
    group = "palisade.dev",
    version = "v1alpha1",
    kind = "BackupSchedule",
    namespaced,
    shortname = "bs",
    category = "palisade",
    status = "BackupScheduleStatus",
    printcolumn(name = "Schedule", type_ = "string", json_path = ".spec.schedule")
)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleSpec {
    /// Cron schedule of snapshots.
    pub schedule: String,
}

/// Observed state of a BackupSchedule.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct BackupScheduleStatus {
    /// Ready, LastBackupSucceeded, LastRestoreTestSucceeded.
    #[serde(default)]
    #[x_kube(merge_strategy = ListMerge::Map(vec!["type".into()]))]
    pub conditions: Vec<Condition>,
}
