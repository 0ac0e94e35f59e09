//! The error of the RolePolicy controller.

/// A failed status write (retried with backoff).
#[derive(Debug, thiserror::Error)]
#[error("updating RolePolicy status: {}", crate::apply::api_message(.0))]
pub struct Error(#[source] pub(super) Box<kube::Error>);

impl crate::controller::driver::Reason for Error {
    fn reason(&self) -> &'static str {
        "StatusUpdateFailed"
    }
}
