//! The three Palisade kinds (group `palisade.dev`, version `v1alpha1`) and what they share.
//!
//! Nothing under `crd/` talks to the API server: these are plain data types whose
//! schemas become the CustomResourceDefinitions in `crds/`.

pub mod backup_schedule;
pub mod condition;
pub mod role_policy;
pub mod tenant;

pub use backup_schedule::{BackupSchedule, BackupScheduleSpec, BackupScheduleStatus};
pub use condition::{Condition, ConditionStatus};
pub use role_policy::{RolePolicy, RolePolicySpec, RolePolicyStatus};
pub use tenant::{Tenant, TenantSpec, TenantStatus};

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::CustomResourceExt;

/// The API group of every Palisade kind.
pub const GROUP: &str = "palisade.dev";
/// The served and stored version of every Palisade kind.
pub const VERSION: &str = "v1alpha1";

/// Every CRD Palisade serves, in a stable order (used by `palisade crds` and `crds/`).
pub fn all() -> Vec<CustomResourceDefinition> {
    vec![Tenant::crd(), RolePolicy::crd(), BackupSchedule::crd()]
}
