//! The one writer of children: server-side apply (field manager `palisade`),
//! create-if-absent for objects that must never be taken over, and deletes with
//! preconditions. Nothing else in Palisade writes a child object.
//!
//! Every applied object carries an annotation with a stable hash of what was
//! applied; an apply is skipped when the cached object still carries that hash
//! and still contains every desired field (so drift by someone else is healed,
//! and a resync of a converged tenant makes no write at all).

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

/// A failed write.
#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    #[error("{verb} {kind} {name}: {source}")]
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
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    Unchanged,
    Created,
    Updated,
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
    pub fn prepare(
        ar: &ApiResource,
        mut desired: Value,
    ) -> Result<(Value, u64, String, Option<String>), ApplyError> {
        let name = desired_name(&desired);
        let malformed = || ApplyError::Malformed {
            kind: ar.kind.clone(),
            name: name.clone(),
        };
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
        Ok((desired, hash, name, ns))
    }

    fn matches(
        &self,
        ar: &ApiResource,
        desired: &Value,
        hash: u64,
        name: &str,
        ns: Option<&str>,
        actual: &Value,
    ) -> bool {
        if actual.pointer("/metadata/deletionTimestamp").is_some() {
            return false;
        }
        if let Some((rv, h)) = self.journal.recent_write(ar, ns, name)
            && rv > value_rv(actual)
        {
            // Our own write has not reached the cache yet.
            return h == hash;
        }
        holds(actual, desired)
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
        let (desired, hash, name, ns) = Self::prepare(ar, desired)?;
        match actual {
            Some(actual) if self.matches(ar, &desired, hash, &name, ns.as_deref(), actual) => {
                return Ok(Outcome::Unchanged);
            }
            None if self
                .journal
                .recent_write(ar, ns.as_deref(), &name)
                .is_some_and(|(rv, h)| rv > cache_seen_rv && h == hash) =>
            {
                return Ok(Outcome::Unchanged);
            }
            _ => {}
        }
        let pp = PatchParams::apply(FIELD_MANAGER).force();
        let _in_flight = self.journal.in_flight(ar, ns.as_deref(), &name);
        let written = self
            .api(ar, ns.as_deref())
            .patch(&name, &pp, &Patch::Apply(&desired))
            .await
            .map_err(|source| ApplyError::Api {
                verb: "apply",
                kind: ar.kind.clone(),
                name: name.clone(),
                source: Box::new(source),
            })?;
        self.journal.remember(ar, &written, hash);
        Ok(if actual.is_some() {
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
        let (mut desired, hash, name, ns) = Self::prepare(ar, desired)?;
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
            serde_json::from_value(desired).map_err(|_| ApplyError::Malformed {
                kind: ar.kind.clone(),
                name: name.clone(),
            })?;
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
        let written = result.map_err(|source| ApplyError::Api {
            verb,
            kind: ar.kind.clone(),
            name,
            source: Box::new(source),
        })?;
        self.journal.remember(ar, &written, hash);
        Ok(written)
    }

    /// Merge-patches an object (used to release namespaces: drop Palisade's
    /// ownership label, mark them released).
    pub async fn merge_patch(
        &self,
        ar: &ApiResource,
        ns: Option<&str>,
        name: &str,
        patch: Value,
    ) -> Result<(), ApplyError> {
        self.api(ar, ns)
            .patch(name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|source| ApplyError::Api {
                verb: "patch",
                kind: ar.kind.clone(),
                name: name.to_string(),
                source: Box::new(source),
            })?;
        self.journal.count();
        Ok(())
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
            Err(source) => Err(ApplyError::Api {
                verb: "delete",
                kind: ar.kind.clone(),
                name,
                source: Box::new(source),
            }),
        }
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
    fn hash_is_stable_and_order_independent() {
        let a = json!({"b": 1, "a": [1, 2]});
        let b: Value = serde_json::from_str(r#"{"a":[1,2],"b":1}"#).expect("json");
        assert_eq!(stable_hash(&a), stable_hash(&b));
        assert_ne!(stable_hash(&a), stable_hash(&json!({"b": 2, "a": [1, 2]})));
    }
}
