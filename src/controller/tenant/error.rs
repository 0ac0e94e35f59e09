//! The error of a Tenant reconcile step (namespaces, children, secrets, tokens,
//! garbage collection): one type, so the steps can live in their own files
//! without importing the Tenant controller that calls them.

use crate::apply::ApplyError;
use crate::controller::driver::Reason;

/// A reconcile step that failed; the reconcile is retried with backoff.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Apply(#[from] ApplyError),
    #[error("{action}: {}", crate::apply::api_message(source))]
    Kube {
        action: &'static str,
        #[source]
        source: Box<kube::Error>,
    },
    /// A desired object could not be turned into JSON (a bug, not the API).
    #[error("serializing {what}: {source}")]
    Serialize {
        what: &'static str,
        #[source]
        source: serde_json::Error,
    },
}

/// Bounded reason for conditions, Events and metric labels.
impl Reason for Error {
    fn reason(&self) -> &'static str {
        match self {
            Error::Apply(e) => e.reason(),
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(s) if s.code == 403 => "Forbidden",
                kube::Error::Api(s) if s.code >= 500 => "ServerError",
                _ => "ApiError",
            },
            Error::Serialize { .. } => "SerializeFailed",
        }
    }

    fn unavailable(&self) -> bool {
        match self {
            Error::Apply(e) => e.unavailable(),
            Error::Kube { source, .. } => crate::apply::unavailable(source),
            Error::Serialize { .. } => false,
        }
    }
}

impl Error {
    /// The HTTP status code, when the API server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            Error::Apply(e) => e.code(),
            Error::Kube { source, .. } => match source.as_ref() {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
            _ => None,
        }
    }
}

/// A step that failed, as status reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct Failed {
    /// The step, as people read it (`apply NetworkPolicy`, `rotate secrets`).
    pub step: String,
    /// Bounded reason ([`Error::reason`]).
    pub reason: &'static str,
    pub message: String,
}

impl Failed {
    pub fn new(step: impl Into<String>, error: &Error) -> Self {
        Self {
            step: step.into(),
            reason: error.reason(),
            message: error.to_string(),
        }
    }

    pub fn describe(&self) -> String {
        format!("{} failed: {}", self.step, self.message)
    }

    /// Needs a person (RBAC, admission, a rejected object) rather than a retry.
    pub fn stalls(&self) -> bool {
        matches!(
            self.reason,
            "Forbidden" | "Rejected" | "Malformed" | "SerializeFailed"
        )
    }
}

/// `map_err` for an API call: names the action in the message.
pub fn kube_err(action: &'static str) -> impl FnOnce(kube::Error) -> Error {
    move |source| Error::Kube {
        action,
        source: Box::new(source),
    }
}

/// `serde_json::to_value` that names what failed.
pub fn to_value<T: serde::Serialize>(
    what: &'static str,
    obj: &T,
) -> Result<serde_json::Value, Error> {
    serde_json::to_value(obj).map_err(|source| Error::Serialize { what, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16) -> Error {
        kube_err("get")(kube::Error::Api(
            kube::core::Status::failure("x", "y")
                .with_code(code)
                .boxed(),
        ))
    }

    #[test]
    fn reasons_are_bounded_by_status_code() {
        assert_eq!(api(403).reason(), "Forbidden");
        assert_eq!(api(500).reason(), "ServerError");
        assert_eq!(api(404).reason(), "ApiError");
        assert_eq!(api(403).code(), Some(403));
        let bad = serde_json::from_str::<serde_json::Value>("{").unwrap_err();
        assert_eq!(
            Error::Serialize {
                what: "namespace",
                source: bad
            }
            .reason(),
            "SerializeFailed"
        );
    }
}
