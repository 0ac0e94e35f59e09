//! Pure comparison of a live object with a dry-run result: server noise left
//! out, one change per field, Secret values hidden.

use std::collections::BTreeSet;

use serde_json::Value;

use super::LAST_APPLIED;
use super::report::{Action, FieldChange};

/// Metadata the API server writes on every object: never part of a diff.
const SERVER_METADATA: &[&str] = &[
    "managedFields",
    "resourceVersion",
    "generation",
    "uid",
    "creationTimestamp",
    "selfLink",
    "deletionTimestamp",
    "deletionGracePeriodSeconds",
];
const HIDDEN: &str = "(hidden)";

/// An object without what the API server writes by itself: status,
/// managedFields, resourceVersion, generation, uid, creationTimestamp and the
/// last-applied annotation of client-side apply.
pub fn normalize(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("status");
        if let Some(meta) = map.get_mut("metadata").and_then(Value::as_object_mut) {
            for k in SERVER_METADATA {
                meta.remove(*k);
            }
            let empty = match meta.get_mut("annotations").and_then(Value::as_object_mut) {
                Some(a) => {
                    a.remove(LAST_APPLIED);
                    a.is_empty()
                }
                None => false,
            };
            if empty {
                meta.remove("annotations");
            }
        }
    }
    v
}

fn join(path: &str, key: &str) -> String {
    let simple = !key.is_empty()
        && key
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !key.starts_with(|c: char| c.is_ascii_digit());
    match (path.is_empty(), simple) {
        (true, true) => key.to_string(),
        (_, true) => format!("{path}.{key}"),
        (_, false) => format!("{path}[{key}]"),
    }
}

fn walk(path: &str, before: &Value, after: &Value, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(b), Value::Object(a)) => {
            let keys: BTreeSet<&String> = b.keys().chain(a.keys()).collect();
            for k in keys {
                let p = join(path, k);
                match (b.get(k), a.get(k)) {
                    (Some(x), Some(y)) => walk(&p, x, y, out),
                    (x, y) => out.push(FieldChange {
                        path: p,
                        before: x.cloned(),
                        after: y.cloned(),
                    }),
                }
            }
        }
        (Value::Array(b), Value::Array(a)) if b.len() == a.len() => {
            for (i, (x, y)) in b.iter().zip(a).enumerate() {
                walk(&format!("{path}[{i}]"), x, y, out);
            }
        }
        (b, a) if b == a => {}
        (b, a) => out.push(FieldChange {
            path: path.to_string(),
            before: Some(b.clone()),
            after: Some(a.clone()),
        }),
    }
}

/// The fields that differ between two objects (already normalized), sorted by
/// path. Lists of different lengths differ as a whole.
pub fn field_changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    walk("", before, after, &mut out);
    out
}

fn is_secret_data(path: &str) -> bool {
    ["data", "stringData"].iter().any(|k| {
        path.strip_prefix(k)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with(['.', '[']))
    })
}

/// Hides the values of a Secret's `data` and `stringData` (the path, which
/// names the key, stays).
pub fn mask(kind: &str, changes: &mut [FieldChange]) {
    if kind != "Secret" {
        return;
    }
    for c in changes.iter_mut().filter(|c| is_secret_data(&c.path)) {
        for v in [&mut c.before, &mut c.after].into_iter().flatten() {
            *v = Value::String(HIDDEN.into());
        }
    }
}

/// Created, changed (with the fields, Secret values hidden) or unchanged:
/// `live` is the object as it is, `dry_run` what the server answered to the
/// dry-run apply.
pub fn classify(kind: &str, live: Option<&Value>, dry_run: &Value) -> (Action, Vec<FieldChange>) {
    let Some(live) = live else {
        return (Action::Created, Vec::new());
    };
    let mut changes = field_changes(&normalize(live), &normalize(dry_run));
    mask(kind, &mut changes);
    if changes.is_empty() {
        (Action::Unchanged, changes)
    } else {
        (Action::Changed, changes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn server_noise_is_not_a_change() {
        let live = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "uid": "1", "resourceVersion": "5",
                "creationTimestamp": "2026-01-01T00:00:00Z", "generation": 1,
                "managedFields": [{"manager": "kubectl"}],
                "annotations": {LAST_APPLIED: "{}"}},
            "data": {"k": "v"},
        });
        let dry = json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "a", "namespace": "n", "uid": "1", "resourceVersion": "6",
                "managedFields": [{"manager": "palisade-diff"}]},
            "data": {"k": "v"}, "status": {"x": 1},
        });
        assert_eq!(
            classify("ConfigMap", Some(&live), &dry),
            (Action::Unchanged, vec![])
        );
        assert_eq!(classify("ConfigMap", None, &dry).0, Action::Created);
    }

    #[test]
    fn changes_name_each_field_added_removed_and_changed() {
        let before = json!({"metadata": {"labels": {"app.kubernetes.io/name": "x", "old": "1"}},
            "spec": {"hard": {"pods": "10"}, "list": [1, 2], "rules": [{"a": 1}]}});
        let after = json!({"metadata": {"labels": {"app.kubernetes.io/name": "y", "new": "2"}},
            "spec": {"hard": {"pods": "12"}, "list": [1, 2, 3], "rules": [{"a": 2}]}});
        let got = field_changes(&before, &after);
        let paths: Vec<(&str, bool, bool)> = got
            .iter()
            .map(|c| (c.path.as_str(), c.before.is_some(), c.after.is_some()))
            .collect();
        assert_eq!(
            paths,
            [
                ("metadata.labels[app.kubernetes.io/name]", true, true),
                ("metadata.labels.new", false, true),
                ("metadata.labels.old", true, false),
                ("spec.hard.pods", true, true),
                ("spec.list", true, true),
                ("spec.rules[0].a", true, true),
            ]
        );
        assert_eq!(got[3].after, Some(json!("12")));
    }

    #[test]
    fn secret_values_never_appear() {
        let live = json!({"kind": "Secret", "metadata": {"name": "s"},
            "data": {"password": "c2VjcmV0MQ=="}, "type": "Opaque"});
        let dry = json!({"kind": "Secret", "metadata": {"name": "s", "labels": {"a": "b"}},
            "data": {"password": "c2VjcmV0Mg==", "extra": "eA=="}, "type": "Opaque"});
        let (action, fields) = classify("Secret", Some(&live), &dry);
        assert_eq!(action, Action::Changed);
        let text = serde_json::to_string(&fields).expect("json");
        assert!(!text.contains("c2VjcmV0"), "{text}");
        assert!(!text.contains("eA=="), "{text}");
        assert!(text.contains("data.password") && text.contains("data.extra"));
        // Not a Secret: shown.
        let (_, fields) = classify("ConfigMap", Some(&live), &dry);
        assert!(
            serde_json::to_string(&fields)
                .expect("json")
                .contains("c2VjcmV0Mg==")
        );
        // A whole data map appearing is hidden too.
        let (_, fields) = classify(
            "Secret",
            Some(&json!({"metadata": {"name": "s"}})),
            &json!({"metadata": {"name": "s"}, "stringData": {"k": "v"}}),
        );
        assert_eq!(fields[0].after, Some(json!(HIDDEN)));
        assert!(!is_secret_data("dataset") && is_secret_data("data[a.b]"));
    }
}
