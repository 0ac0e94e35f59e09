//! The errors of the BackupSchedule controller: why a schedule cannot run
//! (reported in status, not retried) and a failed reconcile (retried).

use crate::apply::ApplyError;

/// Why the schedule cannot run (a condition reason and an actionable message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Invalid {
    pub reason: &'static str,
    pub message: String,
}

impl Invalid {
    /// Whether only an edit of the spec can fix it (nothing to re-check until
    /// the schedule changes): a bad cron expression or time zone. A missing
    /// Secret or a destination conflict is fixed elsewhere, unwatched.
    pub fn fixed_by_spec_only(&self) -> bool {
        matches!(self.reason, "InvalidSchedule" | "InvalidTimeZone")
    }
}

/// A failed reconcile (retried with backoff).
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{}: {}", .0, crate::apply::api_message(.1))]
    Kube(&'static str, #[source] Box<kube::Error>),
    #[error("building the configuration file: {0}")]
    Config(#[from] serde_yaml::Error),
    #[error("serializing {0}: {1}")]
    Serialize(&'static str, #[source] serde_json::Error),
}

/// Bounded reason for logs and metrics.
impl crate::controller::driver::Reason for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Apply(e) => e.reason(),
            Error::Kube(..) => "ApiError",
            Error::Config(_) => "InvalidConfig",
            Error::Serialize(..) => "SerializeFailed",
        }
    }

    fn unavailable(&self) -> bool {
        match self {
            Error::Apply(e) => e.unavailable(),
            Error::Kube(_, e) => crate::apply::unavailable(e),
            Error::Config(_) | Error::Serialize(..) => false,
        }
    }
}
