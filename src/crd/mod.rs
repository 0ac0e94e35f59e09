//! Palisade's custom resource kinds (group `palisade.dev`, version `v1alpha1`).
//!
//! Nothing under `crd/` talks to the API server: these are plain data types whose
//! schemas become the CustomResourceDefinitions.

pub mod backup_schedule;

pub use backup_schedule::{BackupSchedule, BackupScheduleSpec, BackupScheduleStatus};

/// The API group of every Palisade kind.
pub const GROUP: &str = "palisade.dev";
/// The served and stored version of every Palisade kind.
pub const VERSION: &str = "v1alpha1";
