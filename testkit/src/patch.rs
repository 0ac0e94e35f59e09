//! Patch application: JSON merge patch, JSON patch (RFC 6902), strategic
//! merge patch (approximated by a merge patch) and server-side apply
//! (approximated by create-or-merge).

use json_patch::PatchOperation;
use serde_json::Value;

use crate::error::ApiError;

/// The patch flavours selected by the request `Content-Type`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PatchType {
    /// `application/merge-patch+json`
    Merge,
    /// `application/json-patch+json`
    Json,
    /// `application/strategic-merge-patch+json` (treated as a merge patch)
    Strategic,
    /// `application/apply-patch+yaml` (server-side apply)
    Apply,
}

impl PatchType {
    /// Parses a `Content-Type` header value.
    pub fn from_content_type(ct: &str) -> Option<Self> {
        let base = ct.split(';').next().unwrap_or("").trim();
        match base {
            "application/merge-patch+json" => Some(Self::Merge),
            "application/json-patch+json" => Some(Self::Json),
            "application/strategic-merge-patch+json" => Some(Self::Strategic),
            "application/apply-patch+yaml" | "application/apply-patch+json" => Some(Self::Apply),
            _ => None,
        }
    }

    /// Short name used in the request log (`merge`, `json`, `strategic`, `apply`).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Merge => "merge",
            Self::Json => "json",
            Self::Strategic => "strategic",
            Self::Apply => "apply",
        }
    }
}

/// Parses the patch body: JSON for all types, YAML accepted for apply.
pub(crate) fn parse_body(pt: PatchType, body: &[u8]) -> Result<Value, ApiError> {
    match serde_json::from_slice(body) {
        Ok(v) => Ok(v),
        Err(e) if pt == PatchType::Apply => serde_yaml::from_slice(body)
            .map_err(|ye| ApiError::bad_request(format!("error decoding YAML: {ye} (json: {e})"))),
        Err(e) => Err(ApiError::bad_request(format!("error decoding patch: {e}"))),
    }
}

/// Applies a patch of the given type to `doc` (which is left untouched on error).
pub(crate) fn apply_patch(pt: PatchType, doc: &Value, patch: &Value) -> Result<Value, ApiError> {
    let mut out = doc.clone();
    match pt {
        PatchType::Merge | PatchType::Strategic | PatchType::Apply => {
            if !patch.is_object() {
                return Err(ApiError::bad_request("patch body must be a JSON object"));
            }
            json_patch::merge(&mut out, patch);
        }
        PatchType::Json => {
            let ops: Vec<PatchOperation> = serde_json::from_value(patch.clone())
                .map_err(|e| ApiError::bad_request(format!("invalid JSON patch: {e}")))?;
            for op in &ops {
                // The apiserver patches the JSON encoding of the object, in which
                // empty/absent fields are simply missing: a `test` for `null`
                // succeeds when the path is absent (kube's finalizer helper relies
                // on this for `/metadata/finalizers`).
                if let PatchOperation::Test(t) = op
                    && t.value.is_null()
                    && out.pointer(t.path.as_str()).is_none_or(Value::is_null)
                {
                    continue;
                }
                json_patch::patch(&mut out, std::slice::from_ref(op)).map_err(|e| {
                    ApiError::invalid(format!(
                        "the server rejected our request due to an error in our request: {e}"
                    ))
                })?;
            }
        }
    }
    Ok(out)
}

/// A JSON path: object keys from the root.
pub(crate) type FieldPath = Vec<String>;

/// The leaf fields set by an apply configuration: scalars, lists (atomic) and
/// empty maps. `null`s (deletions) are not owned.
pub(crate) fn leaf_paths(v: &Value) -> std::collections::BTreeSet<FieldPath> {
    fn walk(v: &Value, path: &mut FieldPath, out: &mut std::collections::BTreeSet<FieldPath>) {
        match v {
            Value::Null => {}
            Value::Object(m) if !m.is_empty() => {
                for (k, child) in m {
                    path.push(k.clone());
                    walk(child, path, out);
                    path.pop();
                }
            }
            _ => {
                out.insert(path.clone());
            }
        }
    }
    let mut out = std::collections::BTreeSet::new();
    walk(v, &mut Vec::new(), &mut out);
    out
}

/// Removes the field at `path` (if present), then any maps left empty by it.
pub(crate) fn remove_path(v: &mut Value, path: &[String]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Some(map) = v.as_object_mut() else { return };
    if rest.is_empty() {
        map.remove(first);
        return;
    }
    if let Some(child) = map.get_mut(first) {
        remove_path(child, rest);
        if child.as_object().is_some_and(serde_json::Map::is_empty) {
            map.remove(first);
        }
    }
}

/// Whether `path` is `field` itself or lies below it.
pub(crate) fn within(path: &[String], field: &[String]) -> bool {
    path.starts_with(field)
}

#[cfg(test)]
mod tests {
    #[test]
    fn leaf_paths_and_removal() {
        let v = json!({"a": {"b": 1, "c": [1], "d": {}}, "e": null});
        let paths: Vec<FieldPath> = leaf_paths(&v).into_iter().collect();
        let p = |s: &[&str]| s.iter().map(|x| x.to_string()).collect::<FieldPath>();
        assert_eq!(paths, [p(&["a", "b"]), p(&["a", "c"]), p(&["a", "d"])]);
        let mut w = json!({"a": {"b": 1}, "x": 2});
        remove_path(&mut w, &p(&["a", "b"]));
        assert_eq!(w, json!({"x": 2}));
        assert!(within(&p(&["a", "b"]), &p(&["a"])));
        assert!(!within(&p(&["a"]), &p(&["a", "b"])));
        assert!(!within(&p(&["a", "c"]), &p(&["a", "b"])));
    }

    use super::*;
    use serde_json::json;

    #[test]
    fn json_patch_test_null_on_absent_field() {
        let doc = json!({"metadata": {"name": "a"}});
        let p = json!([
            {"op": "test", "path": "/metadata/finalizers", "value": null},
            {"op": "add", "path": "/metadata/finalizers", "value": ["x"]},
        ]);
        let out = apply_patch(PatchType::Json, &doc, &p).unwrap();
        assert_eq!(out["metadata"]["finalizers"], json!(["x"]));
        // test against a present value still fails
        let p = json!([{"op": "test", "path": "/metadata/finalizers", "value": null}]);
        let err = apply_patch(PatchType::Json, &out, &p).unwrap_err();
        assert_eq!(err.code, 422);
    }

    #[test]
    fn merge_patch_deletes_nulls() {
        let doc = json!({"data": {"a": "1", "b": "2"}});
        let out = apply_patch(
            PatchType::Merge,
            &doc,
            &json!({"data": {"a": null, "c": "3"}}),
        )
        .unwrap();
        assert_eq!(out, json!({"data": {"b": "2", "c": "3"}}));
    }

    #[test]
    fn content_types() {
        assert_eq!(
            PatchType::from_content_type("application/apply-patch+yaml; charset=utf-8"),
            Some(PatchType::Apply)
        );
        assert_eq!(PatchType::from_content_type("text/plain"), None);
    }
}
