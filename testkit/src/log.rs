//! The request log: one [`RequestRecord`] per request served, for assertions
//! such as "a steady-state resync makes zero writes".

use crate::patch::PatchType;

/// The Kubernetes verb of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Verb {
    /// GET of one object.
    Get,
    /// GET of a collection.
    List,
    /// GET of a collection with `watch=true`.
    Watch,
    /// POST.
    Create,
    /// PUT.
    Update,
    /// PATCH (any patch type, including server-side apply).
    Patch,
    /// DELETE of one object.
    Delete,
    /// DELETE of a collection.
    DeleteCollection,
    /// Discovery, `/version` and unroutable requests.
    Other,
}

impl Verb {
    /// Whether the verb mutates state (create, update, patch, delete, deletecollection).
    pub fn is_write(self) -> bool {
        matches!(
            self,
            Self::Create | Self::Update | Self::Patch | Self::Delete | Self::DeleteCollection
        )
    }

    /// Lower-case Kubernetes verb name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "get",
            Self::List => "list",
            Self::Watch => "watch",
            Self::Create => "create",
            Self::Update => "update",
            Self::Patch => "patch",
            Self::Delete => "delete",
            Self::DeleteCollection => "deletecollection",
            Self::Other => "other",
        }
    }
}

/// One served request. Also the input of fault-injection predicates (with
/// `code == 0`, since the response is not known yet).
#[derive(Clone, Debug)]
pub struct RequestRecord {
    /// Sequence number since the server was created (not reset by `reset_log`).
    pub seq: u64,
    /// Kubernetes verb.
    pub verb: Verb,
    /// HTTP method.
    pub method: String,
    /// Request path without the query.
    pub path: String,
    /// API group (empty for core and for non-resource requests).
    pub group: String,
    /// API version.
    pub version: String,
    /// Plural resource name (empty for non-resource requests).
    pub resource: String,
    /// Namespace from the path.
    pub namespace: Option<String>,
    /// Object name from the path.
    pub name: Option<String>,
    /// Subresource, e.g. `status`.
    pub subresource: Option<String>,
    /// Patch type for PATCH requests.
    pub patch_type: Option<PatchType>,
    /// `fieldManager` query parameter.
    pub field_manager: Option<String>,
    /// HTTP response code (watches: the initial 200).
    pub code: u16,
    /// Wall-clock time the request arrived.
    pub timestamp: chrono::DateTime<chrono::Utc>,
}

impl RequestRecord {
    /// Whether the request was a write (see [`Verb::is_write`]).
    pub fn is_write(&self) -> bool {
        self.verb.is_write()
    }

    /// Whether the request was a write that succeeded (2xx).
    pub fn is_successful_write(&self) -> bool {
        self.verb.is_write() && (200..300).contains(&self.code)
    }
}

/// A position in the request log, from [`crate::FakeApiServer::mark`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct LogMark(pub(crate) u64);
