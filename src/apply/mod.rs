//! The one writer of children: server-side apply (field manager `palisade`),
//! create-if-absent for objects that must never be taken over, and deletes with
//! preconditions. Nothing else in Palisade writes a child object.
//!
//! Every applied object carries an annotation with a stable hash of what was
//! applied; an apply is skipped when the cached object still holds exactly the
//! desired content (so a resync of a converged tenant makes no write at all).
//!
//! Drift is healed whole. A field someone else changed comes back with the
//! next server-side apply; but a field someone else *added* (a rule appended
//! to `palisade-default-deny`, a key added to a quota's `hard`) belongs to that
//! other field manager, and no apply by Palisade removes it. So for every kind
//! but Namespace (whose content is its metadata) the content of the live object
//! (every top-level field but `metadata` and `status`) must equal the desired
//! content, not merely contain it; when it holds more, [`Applier::apply_seen`]
//! reads the object and sends a JSON patch from it to the desired content,
//! guarded by its resourceVersion, and reports the managers that had changed
//! it ([`Outcome::Reverted`]).

use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams, Preconditions};
use kube::core::ApiResource;
use kube::{Client, ResourceExt};
use serde_json::Value;

pub mod journal;

pub use journal::{InFlight, Journal, OwnWrites};

use crate::quantity::same_quantity;
use crate::resources::labels::FIELD_MANAGER;

/// Annotation holding the hash of the last applied desired state.
pub const APPLIED_HASH: &str = "palisade.dev/applied-hash";

/// A kube client error as people read it: the API server's own message and
/// code (`ResourceQuota "q" is invalid: spec.hard[pods]: Invalid value: "1.5":
/// must be an integer (422)`), never the client's Debug dump of the Status.
pub fn api_message(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) if !s.message.is_empty() => format!("{} ({})", s.message, s.code),
        kube::Error::Api(s) => format!("{} ({})", s.reason, s.code),
        other => other.to_string(),
    }
}

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{verb} {kind} {name}: {}", api_message(source))]
    Api {
        verb: &'static str,
        kind: String,
        name: String,
        #[source]
        source: Box<kube::Error>,
    },
    #[error("{kind} {name}: desired object is not a JSON object with metadata.name")]
    Malformed { kind: String, name: String },
}

impl ApplyError {
    /// `verb` on `name` of `ar`'s kind failed at the API server.
    fn api(ar: &ApiResource, name: &str, verb: &'static str) -> impl FnOnce(kube::Error) -> Self {
        move |source| ApplyError::Api {
            verb,
            kind: ar.kind.clone(),
            name: name.to_string(),
            source: Box::new(source),
        }
    }

    /// `name` of `ar`'s kind is not an object this module can send.
    fn malformed(ar: &ApiResource, name: &str) -> Self {
        ApplyError::Malformed {
            kind: ar.kind.clone(),
            name: name.to_string(),
        }
    }
}

/// Whether `e` says the API server (or etcd behind it) was unavailable
/// rather than that the request was wrong: no connection, a broken stream,
/// 429 or a 5xx. Such a failure ends when the server is back, not when the
/// object changes.
pub fn unavailable(e: &kube::Error) -> bool {
    match e {
        kube::Error::Api(s) => s.code == 429 || s.code >= 500,
        kube::Error::HyperError(_)
        | kube::Error::Service(_)
        | kube::Error::ReadEvents(_)
        | kube::Error::HttpError(_) => true,
        _ => false,
    }
}

impl ApplyError {
    /// Bounded reason for conditions, Events and metric labels.
    pub fn reason(&self) -> &'static str {
        match self {
            ApplyError::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(s) if s.code == 403 => "Forbidden",
                kube::Error::Api(s) if s.code == 409 => "Conflict",
                kube::Error::Api(s) if s.code == 422 || s.code == 400 => "Rejected",
                kube::Error::Api(s) if s.code >= 500 => "ServerError",
                _ => "ApiError",
            },
            ApplyError::Malformed { .. } => "Malformed",
        }
    }

    /// Whether the API server was unavailable ([`unavailable`]).
    pub fn unavailable(&self) -> bool {
        matches!(self, ApplyError::Api { source, .. } if unavailable(source))
    }

    /// The HTTP status code, when the API server answered.
    pub fn code(&self) -> Option<u16> {
        match self {
            ApplyError::Api { source, .. } => match source.as_ref() {
                kube::Error::Api(s) => Some(s.code),
                _ => None,
            },
            _ => None,
        }
    }
}

/// What an apply did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Created,
    Updated,
    /// The live object held content Palisade does not set (fields another
    /// manager added); it was put back to exactly the desired content.
    /// `changed_by`: the field managers other than Palisade that owned fields
    /// of the live object, most recent first (empty when none is recorded).
    Reverted {
        changed_by: Vec<String>,
    },
}

/// The apply path, shared by every controller.
pub struct Applier {
    client: Client,
    /// What this process wrote (echo suppression, writes not cached yet).
    journal: Journal,
}

use crate::resources::stable_hash;

/// True when the object `actual` (of the kind `desired` is) holds every field of
/// `desired`, as [`contains`] decides, `apiVersion` and `kind` aside: caches
/// and list responses carry no type metadata, and the kind is known already.
pub fn holds(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (Value::Object(a), Value::Object(d)) => d
            .iter()
            .filter(|(k, _)| *k != "apiVersion" && *k != "kind")
            .all(|(k, dv)| match a.get(k) {
                Some(av) => contains(av, dv),
                None => is_empty(dv),
            }),
        _ => contains(actual, desired),
    }
}

/// Whether a top-level field is an object's content (what [`widened`]
/// compares), rather than its type, metadata or status.
fn is_content(key: &str) -> bool {
    !matches!(key, "apiVersion" | "kind" | "metadata" | "status")
}

/// Whether Palisade owns the whole content of objects of this kind. Not a
/// Namespace's: its `spec.finalizers` are the API server's, and what Palisade
/// sets on a namespace is metadata (labels).
pub fn owns_content(ar: &ApiResource) -> bool {
    !(ar.group.is_empty() && ar.kind == "Namespace")
}

/// True when the content of `actual` (every top-level field but type,
/// metadata and status) holds something `desired` does not: a rule, key,
/// list item or field another manager added, which a server-side apply would
/// leave in place. A value that merely differs (a quota raised by hand, a
/// field the spec changed) is not a widening: Palisade's forced apply owns
/// that field and sets it back. Empty collections count as absent, so the
/// API server's normal form is not a widening. The builders emit the fields
/// the server would default (a LimitRange's default requests, a port's
/// protocol), so that a converged object is never widened.
pub fn widened(actual: &Value, desired: &Value) -> bool {
    let (Some(a), Some(d)) = (actual.as_object(), desired.as_object()) else {
        return false;
    };
    a.iter()
        .filter(|(k, _)| is_content(k))
        .any(|(k, av)| match d.get(k) {
            Some(dv) => holds_more(av, dv),
            None => !is_empty(av),
        })
}

/// Whether `live` has a key or list item that `desired` lacks, at any depth.
fn holds_more(live: &Value, desired: &Value) -> bool {
    match (live, desired) {
        (Value::Object(l), Value::Object(d)) => l.iter().any(|(k, lv)| match d.get(k) {
            Some(dv) => holds_more(lv, dv),
            None => !is_empty(lv),
        }),
        (Value::Array(l), Value::Array(d)) => {
            l.len() > d.len() || l.iter().zip(d).any(|(lv, dv)| holds_more(lv, dv))
        }
        // A collection where a scalar (or nothing) is wanted.
        (Value::Object(_) | Value::Array(_), _) => !is_empty(live),
        _ => false,
    }
}

/// `live` with its content replaced by the content of `desired` (fields
/// absent from `desired` removed) and the desired labels and annotations set;
/// everything else of `live` (other labels, owner references, finalizers)
/// stays. What a whole-object heal writes and what `palisade diff` previews.
pub fn reverted(live: &Value, desired: &Value) -> Value {
    let mut out = live.clone();
    let (Some(o), Some(d)) = (out.as_object_mut(), desired.as_object()) else {
        return out;
    };
    o.retain(|k, _| !is_content(k));
    for (k, v) in d.iter().filter(|(k, _)| is_content(k)) {
        o.insert(k.clone(), v.clone());
    }
    let meta = o
        .entry("metadata")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(meta) = meta.as_object_mut() {
        meta.remove("managedFields");
        for field in ["labels", "annotations"] {
            let Some(want) = desired
                .pointer(&format!("/metadata/{field}"))
                .and_then(Value::as_object)
            else {
                continue;
            };
            let have = meta
                .entry(field)
                .or_insert_with(|| Value::Object(Default::default()));
            if let Some(have) = have.as_object_mut() {
                for (k, v) in want {
                    have.insert(k.clone(), v.clone());
                }
            }
        }
    }
    out
}

/// The JSON patch that takes `live` to [`reverted`]`(live, desired)`,
/// conditional on `live`'s resourceVersion (a patch that sets it is refused
/// with 409 when the object changed meanwhile).
pub fn revert_patch(live: &Value, desired: &Value) -> Result<json_patch::Patch, serde_json::Error> {
    let guard = serde_json::json!([{
        "op": "replace",
        "path": "/metadata/resourceVersion",
        "value": live.pointer("/metadata/resourceVersion"),
    }]);
    let mut patch: json_patch::Patch = serde_json::from_value(guard)?;
    patch
        .0
        .extend(json_patch::diff(live, &reverted(live, desired)).0);
    Ok(patch)
}

/// The field managers other than Palisade recorded in `live`'s
/// managedFields (status writers aside), most recent first.
pub fn other_managers(live: &Value) -> Vec<String> {
    let mut entries: Vec<(&str, &str)> = live
        .pointer("/metadata/managedFields")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|e| {
            e.get("subresource")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        })
        .filter_map(|e| {
            let manager = e.get("manager").and_then(Value::as_str)?;
            let time = e.get("time").and_then(Value::as_str).unwrap_or("");
            (manager != FIELD_MANAGER).then_some((time, manager))
        })
        .collect();
    entries.sort_by(|a, b| b.0.cmp(a.0));
    let mut out: Vec<String> = Vec::new();
    for (_, m) in entries {
        if !out.iter().any(|o| o == m) {
            out.push(m.to_string());
        }
    }
    out
}

/// What the API server does not store (null, empty lists and maps).
fn is_empty(v: &Value) -> bool {
    v.is_null()
        || v.as_object().is_some_and(|o| o.is_empty())
        || v.as_array().is_some_and(|v| v.is_empty())
}

/// True when every field of `desired` is present in `actual` with the same value
/// (quantities compared by value). Extra fields in `actual` (status, defaults,
/// fields of other managers) are ignored.
pub fn contains(actual: &Value, desired: &Value) -> bool {
    match (actual, desired) {
        (Value::Object(a), Value::Object(d)) => d.iter().all(|(k, dv)| match a.get(k) {
            Some(av) => contains(av, dv),
            None => is_empty(dv),
        }),
        (Value::Array(a), Value::Array(d)) => {
            a.len() == d.len() && a.iter().zip(d).all(|(av, dv)| contains(av, dv))
        }
        (Value::String(a), Value::String(d)) => a == d || same_quantity(a, d),
        (Value::Number(a), Value::String(d)) | (Value::String(d), Value::Number(a)) => {
            same_quantity(&a.to_string(), d)
        }
        (a, d) => a == d,
    }
}

/// An object's resourceVersion as a number (the API server's are; the
/// in-process one's too), for telling newer from older writes.
pub fn resource_version<K: kube::Resource>(obj: &K) -> Option<u64> {
    obj.meta()
        .resource_version
        .as_deref()
        .and_then(|rv| rv.parse().ok())
}

fn value_rv(obj: &Value) -> u64 {
    obj.pointer("/metadata/resourceVersion")
        .and_then(Value::as_str)
        .and_then(|rv| rv.parse().ok())
        .unwrap_or(0)
}

impl Applier {
    pub fn new(client: Client) -> Self {
        Self {
            client,
            journal: Journal::default(),
        }
    }

    /// The journal of this applier's writes (echo suppression).
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Writes made through this applier since it was created.
    pub fn writes(&self) -> u64 {
        self.journal.writes()
    }

    fn api(&self, ar: &ApiResource, ns: Option<&str>) -> Api<DynamicObject> {
        match ns {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, ar),
            None => Api::all_with(self.client.clone(), ar),
        }
    }

    /// `desired` as every write sends it: with apiVersion and kind of `ar` and
    /// the [`APPLIED_HASH`] annotation; also its hash, name and namespace.
    /// (`palisade diff` dry-runs exactly this.)
    pub fn prepare(ar: &ApiResource, mut desired: Value) -> Result<Prepared, ApplyError> {
        let name = desired_name(&desired);
        let malformed = || ApplyError::malformed(ar, &name);
        if name.is_empty() {
            return Err(malformed());
        }
        let ns = desired
            .pointer("/metadata/namespace")
            .and_then(Value::as_str)
            .map(str::to_string);
        let obj = desired.as_object_mut().ok_or_else(malformed)?;
        obj.insert("apiVersion".into(), ar.api_version.clone().into());
        obj.insert("kind".into(), ar.kind.clone().into());
        let hash = stable_hash(&desired);
        let annotations = desired
            .pointer_mut("/metadata")
            .and_then(Value::as_object_mut)
            .ok_or_else(malformed)?
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(APPLIED_HASH.into(), format!("{hash:016x}").into());
        }
        Ok(Prepared {
            desired,
            hash,
            name,
            ns,
        })
    }

    fn matches(&self, ar: &ApiResource, p: &Prepared, actual: &Value) -> bool {
        if actual.pointer("/metadata/deletionTimestamp").is_some() {
            return false;
        }
        if let Some((rv, h)) = self.journal.recent_write(ar, p.ns(), &p.name)
            && rv > value_rv(actual)
        {
            // Our own write has not reached the cache yet.
            return h == p.hash;
        }
        holds(actual, &p.desired) && !(owns_content(ar) && widened(actual, &p.desired))
    }

    /// Server-side applies `desired` unless `actual` (the object as JSON, from
    /// a cache or a read) already matches it.
    pub async fn apply(
        &self,
        ar: &ApiResource,
        desired: Value,
        actual: Option<&Value>,
    ) -> Result<Outcome, ApplyError> {
        self.apply_seen(ar, desired, actual, u64::MAX).await
    }

    /// Like [`Applier::apply`], for a cache that has seen watch events up to
    /// `cache_seen_rv`: an object absent from it that this process wrote, with
    /// the same content, at a later resourceVersion is only not cached *yet*
    /// (no second write); one the cache saw go away is written again.
    pub async fn apply_seen(
        &self,
        ar: &ApiResource,
        desired: Value,
        actual: Option<&Value>,
        cache_seen_rv: u64,
    ) -> Result<Outcome, ApplyError> {
        let p = Self::prepare(ar, desired)?;
        match actual {
            Some(actual) if self.matches(ar, &p, actual) => {
                return Ok(Outcome::Unchanged);
            }
            Some(actual) if owns_content(ar) && widened(actual, &p.desired) => {
                return self.revert(ar, &p).await;
            }
            None if self
                .journal
                .recent_write(ar, p.ns(), &p.name)
                .is_some_and(|(rv, h)| rv > cache_seen_rv && h == p.hash) =>
            {
                return Ok(Outcome::Unchanged);
            }
            _ => {}
        }
        self.server_side_apply(ar, &p, actual.is_some()).await
    }

    /// Puts the live object back to exactly `desired`'s content: reads it
    /// (managedFields say who changed it), then sends the JSON patch from it
    /// to [`reverted`], guarded by its resourceVersion (a 409 means someone
    /// wrote in between: the reconcile is retried from fresh state). If the
    /// live object turns out not to be widened after all (the cache was
    /// behind), nothing is sent here and the caller's apply goes on.
    async fn revert(&self, ar: &ApiResource, p: &Prepared) -> Result<Outcome, ApplyError> {
        let (name, ns) = (p.name.as_str(), p.ns());
        let api = self.api(ar, ns);
        let live = match api
            .get_opt(name)
            .await
            .map_err(ApplyError::api(ar, name, "get"))?
        {
            Some(live) => {
                serde_json::to_value(live).map_err(|_| ApplyError::malformed(ar, name))?
            }
            None => return self.server_side_apply(ar, p, false).await,
        };
        if !widened(&live, &p.desired) {
            return self.server_side_apply(ar, p, true).await;
        }
        let changed_by = other_managers(&live);
        let patch = revert_patch(&live, &p.desired).map_err(|_| ApplyError::malformed(ar, name))?;
        let pp = PatchParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let _in_flight = self.journal.in_flight(ar, ns, name);
        let written = api
            .patch(name, &pp, &Patch::<()>::Json(patch))
            .await
            .map_err(ApplyError::api(ar, name, "revert"))?;
        self.journal.remember(ar, &written, p.hash);
        Ok(Outcome::Reverted { changed_by })
    }

    /// The server-side apply of a prepared `desired` (forced: Palisade's
    /// fields are Palisade's).
    async fn server_side_apply(
        &self,
        ar: &ApiResource,
        p: &Prepared,
        existed: bool,
    ) -> Result<Outcome, ApplyError> {
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let _in_flight = self.journal.in_flight(ar, p.ns(), &p.name);
        let written = self
            .api(ar, p.ns())
            .patch(&p.name, &pp, &Patch::Apply(&p.desired))
            .await
            .map_err(ApplyError::api(ar, &p.name, "apply"))?;
        self.journal.remember(ar, &written, p.hash);
        Ok(if existed {
            Outcome::Updated
        } else {
            Outcome::Created
        })
    }

    /// Creates `desired`; never touches an existing object (409 is returned as an
    /// error for the caller to inspect). Used where taking over an object that
    /// someone else owns would be wrong (namespaces).
    pub async fn create(
        &self,
        ar: &ApiResource,
        desired: Value,
    ) -> Result<DynamicObject, ApplyError> {
        self.post_or_put(ar, desired, None).await
    }

    /// Replaces a whole object, guarded by the resourceVersion of `current` (a
    /// 409 means someone wrote in between: the caller retries from fresh state).
    /// Used where a write must be atomic and must drop fields other clients set
    /// (a secret rotation clears the rotate-now annotation in the same write).
    pub async fn replace(
        &self,
        ar: &ApiResource,
        desired: Value,
        current: &DynamicObject,
    ) -> Result<DynamicObject, ApplyError> {
        self.post_or_put(ar, desired, Some(current)).await
    }

    /// Create (no `current`) or resourceVersion-guarded replace of `current`.
    async fn post_or_put(
        &self,
        ar: &ApiResource,
        desired: Value,
        current: Option<&DynamicObject>,
    ) -> Result<DynamicObject, ApplyError> {
        let Prepared {
            mut desired,
            hash,
            name,
            ns,
        } = Self::prepare(ar, desired)?;
        if let Some(current) = current
            && let Some(meta) = desired
                .pointer_mut("/metadata")
                .and_then(Value::as_object_mut)
        {
            meta.insert(
                "resourceVersion".into(),
                current.resource_version().unwrap_or_default().into(),
            );
        }
        let obj: DynamicObject =
            serde_json::from_value(desired).map_err(|_| ApplyError::malformed(ar, &name))?;
        let pp = PostParams {
            field_manager: Some(FIELD_MANAGER.to_string()),
            ..Default::default()
        };
        let api = self.api(ar, ns.as_deref());
        let _in_flight = self.journal.in_flight(ar, ns.as_deref(), &name);
        let (verb, result) = match current {
            None => ("create", api.create(&pp, &obj).await),
            Some(_) => ("replace", api.replace(&name, &pp, &obj).await),
        };
        let written = result.map_err(ApplyError::api(ar, &name, verb))?;
        self.journal.remember(ar, &written, hash);
        Ok(written)
    }

    /// Merge-patches an object (used to release namespaces and the data in
    /// them, and to adopt that data back); returns the object written.
    pub async fn merge_patch(
        &self,
        ar: &ApiResource,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<DynamicObject, ApplyError> {
        let written = self
            .api(ar, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(ApplyError::api(ar, name, "patch"))?;
        self.journal.count();
        Ok(written)
    }

    /// Deletes an object if it is still the one we saw (uid precondition), in the
    /// background. A 404 counts as done.
    pub async fn delete(&self, ar: &ApiResource, obj: &DynamicObject) -> Result<(), ApplyError> {
        let name = obj.name_any();
        let dp = DeleteParams {
            preconditions: obj.uid().map(|uid| Preconditions {
                uid: Some(uid),
                resource_version: None,
            }),
            propagation_policy: Some(kube::api::PropagationPolicy::Background),
            ..Default::default()
        };
        self.journal.count();
        match self
            .api(ar, obj.namespace().as_deref())
            .delete(&name, &dp)
            .await
        {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(s)) if s.code == 404 => Ok(()),
            Err(source) => Err(ApplyError::api(ar, &name, "delete")(source)),
        }
    }
}

/// A desired object as every write sends it ([`Applier::prepare`]).
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The object, with apiVersion, kind and the [`APPLIED_HASH`] annotation.
    pub desired: Value,
    /// Its [`stable_hash`] (the value of the annotation).
    pub hash: u64,
    pub name: String,
    /// `None` for a cluster-scoped object.
    pub ns: Option<String>,
}

impl Prepared {
    fn ns(&self) -> Option<&str> {
        self.ns.as_deref()
    }
}

fn desired_name(v: &Value) -> String {
    v.pointer("/metadata/name")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn contains_ignores_extra_fields_and_compares_quantities() {
        let actual = json!({"metadata": {"name": "a", "uid": "1", "labels": {"x": "1", "y": "2"}}, "spec": {"hard": {"cpu": "1"}}, "status": {}});
        assert!(contains(
            &actual,
            &json!({"metadata": {"labels": {"x": "1"}}, "spec": {"hard": {"cpu": "1000m"}}})
        ));
        assert!(!contains(
            &actual,
            &json!({"metadata": {"labels": {"x": "2"}}})
        ));
        assert!(!contains(
            &actual,
            &json!({"spec": {"hard": {"memory": "1Gi"}}})
        ));
    }

    #[test]
    fn contains_compares_lists_by_length_and_order() {
        let actual = json!({"l": [{"a": 1, "b": 2}, {"a": 3}]});
        assert!(contains(&actual, &json!({"l": [{"a": 1}, {"a": 3}]})));
        assert!(!contains(&actual, &json!({"l": [{"a": 1}]})));
        assert!(!contains(&actual, &json!({"l": [{"a": 3}, {"a": 1}]})));
    }

    #[test]
    fn type_metadata_is_not_compared() {
        // A listed object (no apiVersion/kind, as the real API server lists
        // built-in kinds) holds the desired object of its kind.
        let listed = json!({"metadata": {"name": "a", "labels": {"x": "1"}}});
        let desired = json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "a", "labels": {"x": "1"}}});
        assert!(holds(&listed, &desired));
        assert!(!holds(
            &listed,
            &json!({"kind": "Namespace", "metadata": {"labels": {"x": "2"}}})
        ));
    }

    #[test]
    fn empty_desired_collections_match_absent_fields() {
        let actual = json!({"spec": {}});
        assert!(contains(
            &actual,
            &json!({"spec": {"ingress": [], "x": {}}})
        ));
    }

    #[test]
    fn api_errors_read_as_the_servers_message() {
        let status = kube::core::Status::failure(
            "ResourceQuota \"q\" is invalid: spec.hard[pods]: Invalid value: \"1.5\": must be an integer",
            "Invalid",
        )
        .with_code(422);
        let e = ApplyError::Api {
            verb: "apply",
            kind: "ResourceQuota".into(),
            name: "q".into(),
            source: Box::new(kube::Error::Api(status.boxed())),
        };
        assert_eq!(
            e.to_string(),
            "apply ResourceQuota q: ResourceQuota \"q\" is invalid: spec.hard[pods]: Invalid value: \"1.5\": must be an integer (422)"
        );
        assert!(!e.to_string().contains("Status {"));
    }

    /// Issue #30: a rule appended to the default-deny policy, a key added to a
    /// quota: content Palisade does not set is drift, and the heal takes the
    /// object back to exactly the desired content, keeping foreign metadata.
    #[test]
    fn added_content_is_widening_and_reverted_whole() {
        let desired = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "palisade-default-deny", "labels": {"app.kubernetes.io/managed-by": "palisade"}},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"]}});
        let live = json!({"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicy",
            "metadata": {"name": "palisade-default-deny", "resourceVersion": "7",
                "labels": {"app.kubernetes.io/managed-by": "palisade", "team": "x"},
                "managedFields": [
                    {"manager": "palisade", "operation": "Apply", "time": "2026-01-01T00:00:00Z"},
                    {"manager": "kubectl-patch", "operation": "Update", "time": "2026-01-02T00:00:00Z"},
                    {"manager": "kube-controller-manager", "operation": "Update", "subresource": "status", "time": "2026-01-03T00:00:00Z"}]},
            "spec": {"podSelector": {}, "policyTypes": ["Ingress", "Egress"], "ingress": [{}], "egress": [{}]}});
        assert!(holds(&live, &desired), "contains every desired field");
        assert!(widened(&live, &desired), "but also rules nobody asked for");
        assert_eq!(other_managers(&live), ["kubectl-patch"]);
        let healed = reverted(&live, &desired);
        assert_eq!(healed["spec"], desired["spec"]);
        assert_eq!(healed["metadata"]["labels"]["team"], "x");
        assert!(healed["metadata"].get("managedFields").is_none());
        assert!(!widened(&healed, &desired));
        // The patch is guarded by the resourceVersion it was computed from.
        let patch =
            serde_json::to_value(revert_patch(&live, &desired).expect("patch")).expect("json");
        assert_eq!(
            patch[0],
            json!({"op": "replace", "path": "/metadata/resourceVersion", "value": "7"})
        );
        // A key added to a quota's hard; the server's normal form is no widening.
        let want = json!({"spec": {"hard": {"pods": "10", "requests.cpu": "2"}}});
        assert!(widened(
            &json!({"spec": {"hard": {"pods": "10", "requests.cpu": "2", "services": "50"}}}),
            &want
        ));
        assert!(!widened(
            &json!({"spec": {"hard": {"pods": "10", "requests.cpu": "2000m"}}, "status": {"used": {"pods": "1"}}}),
            &want
        ));
        // A value that differs (the spec changed, or a hand edit) is not added
        // content: the forced apply sets it back, and no DriftReverted Event
        // blames an edit of the Tenant on someone else.
        assert!(!widened(
            &json!({"spec": {"hard": {"pods": "11", "requests.cpu": "2"}}}),
            &want
        ));
        // A list grown by one item.
        let want = json!({"rules": [{"verbs": ["get"]}]});
        assert!(widened(
            &json!({"rules": [{"verbs": ["get"]}, {"verbs": ["delete"]}]}),
            &want
        ));
        assert!(widened(
            &json!({"rules": [{"verbs": ["get", "delete"]}]}),
            &want
        ));
        assert!(!widened(
            &json!({"rules": [{"verbs": ["get"]}], "metadata": {"x": 1}}),
            &want
        ));
    }

    #[test]
    fn hash_is_stable_and_order_independent() {
        let a = json!({"b": 1, "a": [1, 2]});
        let b: Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).expect("json");
        assert_eq!(stable_hash(&a), stable_hash(&b));
        assert_ne!(stable_hash(&a), stable_hash(&json!({"b": 2, "a": [1, 2]})));
    }
}
