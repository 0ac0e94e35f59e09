//! How an input document will really be applied, read from the live object,
//! so that the preview dry-runs the request the pipeline will send. A field or
//! list item that another field manager owns survives a server-side apply by
//! the wrong manager; previewing every input as one manager's apply therefore
//! showed namespaces as `unchanged` that the real apply removes.
//!
//! - no live object: created;
//! - a live object whose content an `Apply` entry of `managedFields` owns:
//!   server-side applied by that manager (the most recent such entry: Flux's
//!   `kustomize-controller`, Argo CD's `argocd-controller`, `kubectl`), with
//!   conflicts forced as GitOps controllers force them;
//! - otherwise: `kubectl apply` (client-side), the three-way merge kubectl
//!   sends: the file, plus a deletion of every field of the last-applied
//!   configuration (`kubectl.kubernetes.io/last-applied-configuration`) that
//!   the file no longer has. Without that annotation nothing is removed.
//!
//! `--field-manager` overrides the detection (a pipeline that takes over
//! from another): the input is then server-side applied by that manager.

use serde_json::Value;

use super::LAST_APPLIED;

/// The field manager of `kubectl apply` without `--server-side`.
pub const CLIENT_SIDE_MANAGER: &str = "kubectl-client-side-apply";
/// The manager a new object is previewed with (as `kubectl apply` creates it).
pub const CREATE_MANAGER: &str = "kubectl";

/// How one input document is applied.
#[derive(Debug, Clone, PartialEq)]
pub enum Mode {
    /// No live object: created.
    Create,
    /// `kubectl apply` (client-side); `original`: the last-applied
    /// configuration, when the live object records one.
    ClientSide { original: Option<Value> },
    /// Server-side apply by `manager`, conflicts forced; `detected`: read from
    /// `managedFields` (false: `--field-manager`).
    ServerSide { manager: String, detected: bool },
}

impl Mode {
    /// How the report names it.
    pub fn describe(&self) -> String {
        match self {
            Mode::Create => "as a new object".to_string(),
            Mode::ClientSide { original: Some(_) } => "as kubectl client-side apply".to_string(),
            Mode::ClientSide { original: None } => {
                "as kubectl client-side apply (no last-applied configuration: nothing is removed)"
                    .to_string()
            }
            Mode::ServerSide {
                manager,
                detected: true,
            } => format!("as server-side apply by {manager}"),
            Mode::ServerSide {
                manager,
                detected: false,
            } => format!("as server-side apply by {manager} (--field-manager)"),
        }
    }
}

/// The mode for an input whose live object is `live`; `field_manager`: the
/// `--field-manager` override.
pub fn detect(live: Option<&Value>, field_manager: Option<&str>) -> Mode {
    if let Some(manager) = field_manager {
        return Mode::ServerSide {
            manager: manager.to_string(),
            detected: false,
        };
    }
    let Some(live) = live else {
        return Mode::Create;
    };
    if let Some(manager) = server_side_applier(live) {
        return Mode::ServerSide {
            manager,
            detected: true,
        };
    }
    let original = live
        .pointer("/metadata/annotations")
        .and_then(|a| a.get(LAST_APPLIED))
        .and_then(Value::as_str)
        .and_then(|s| serde_json::from_str(s).ok());
    Mode::ClientSide { original }
}

/// The manager of the most recent `Apply` entry of `managedFields` that owns
/// content (a field outside metadata), on the main resource.
fn server_side_applier(live: &Value) -> Option<String> {
    let entries = live.pointer("/metadata/managedFields")?.as_array()?;
    entries
        .iter()
        .filter(|e| e.get("operation").and_then(Value::as_str) == Some("Apply"))
        .filter(|e| {
            e.get("subresource")
                .and_then(Value::as_str)
                .unwrap_or("")
                .is_empty()
        })
        .filter(|e| {
            e.get("fieldsV1")
                .and_then(Value::as_object)
                .is_some_and(|f| f.keys().any(|k| k != "f:metadata" && k != "."))
        })
        .max_by_key(|e| e.get("time").and_then(Value::as_str).unwrap_or(""))
        .and_then(|e| e.get("manager")?.as_str())
        .map(str::to_string)
}

/// The merge patch `kubectl apply` sends for the file `modified` over a live
/// object last applied as `original`: the file with the last-applied
/// annotation kubectl records, plus `null` for every field of `original` the
/// file no longer has (objects recursively; lists are values, as in a JSON
/// merge patch). Applied to the live object, it gives what kubectl's
/// `CreateThreeWayJSONMergePatch` gives: the file's fields set, the dropped
/// ones removed, fields only someone else set kept.
pub fn client_side_patch(original: Option<&Value>, modified: &Value) -> Value {
    let mut patch = modified.clone();
    let recorded = serde_json::to_string(modified).unwrap_or_default();
    if let Some(meta) = patch.get_mut("metadata").and_then(Value::as_object_mut) {
        let annotations = meta
            .entry("annotations")
            .or_insert_with(|| Value::Object(Default::default()));
        if let Some(a) = annotations.as_object_mut() {
            a.insert(LAST_APPLIED.to_string(), Value::String(recorded));
        }
    }
    if let Some(original) = original {
        add_deletions(original, &mut patch);
    }
    patch
}

fn add_deletions(original: &Value, patch: &mut Value) {
    let (Value::Object(o), Value::Object(p)) = (original, patch) else {
        return;
    };
    for (k, ov) in o {
        match p.get_mut(k) {
            Some(pv) => add_deletions(ov, pv),
            None => {
                p.insert(k.clone(), Value::Null);
            }
        }
    }
}

/// Whether a strategic merge patch is what kubectl sends for this API group
/// (the built-in kinds; custom resources take a JSON merge patch).
pub fn is_built_in(group: &str) -> bool {
    group.is_empty()
        || (group.ends_with(".k8s.io") && !group.ends_with(".x-k8s.io"))
        || matches!(
            group,
            "apps" | "batch" | "policy" | "autoscaling" | "extensions"
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn entry(manager: &str, op: &str, time: &str, fields: Value) -> Value {
        json!({"manager": manager, "operation": op, "time": time, "fieldsV1": fields})
    }

    /// Issue #29: the mode is read from the live object, as each tool leaves it.
    #[test]
    fn the_mode_follows_how_the_object_was_applied() {
        let spec = json!({"f:spec": {"f:namespaces": {}}});
        let with = |fields: Vec<Value>, annotations: Value| json!({"metadata": {"managedFields": fields, "annotations": annotations}});
        assert_eq!(detect(None, None), Mode::Create);
        // kubectl apply (client-side): the annotation, an Update entry.
        let csa = with(
            vec![entry(
                CLIENT_SIDE_MANAGER,
                "Update",
                "2026-01-01T00:00:00Z",
                spec.clone(),
            )],
            json!({LAST_APPLIED: "{\"spec\":{\"a\":1}}"}),
        );
        assert_eq!(
            detect(Some(&csa), None),
            Mode::ClientSide {
                original: Some(json!({"spec": {"a": 1}}))
            }
        );
        // Flux, then a hand edit by kubectl patch: still Flux's apply.
        let flux = with(
            vec![
                entry(
                    "kustomize-controller",
                    "Apply",
                    "2026-01-01T00:00:00Z",
                    spec.clone(),
                ),
                entry(
                    "kubectl-patch",
                    "Update",
                    "2026-01-02T00:00:00Z",
                    spec.clone(),
                ),
                entry(
                    "palisade",
                    "Update",
                    "2026-01-03T00:00:00Z",
                    json!({"f:status": {}}),
                ),
            ],
            json!({}),
        );
        assert_eq!(
            detect(Some(&flux), None),
            Mode::ServerSide {
                manager: "kustomize-controller".into(),
                detected: true
            }
        );
        // An Apply entry that owns only metadata (e.g. a label) is not the pipeline.
        let labels_only = with(
            vec![entry(
                "labeller",
                "Apply",
                "2026-01-05T00:00:00Z",
                json!({"f:metadata": {"f:labels": {}}}),
            )],
            json!({}),
        );
        assert_eq!(
            detect(Some(&labels_only), None),
            Mode::ClientSide { original: None }
        );
        // --field-manager overrides.
        assert_eq!(
            detect(Some(&csa), Some("argocd-controller")),
            Mode::ServerSide {
                manager: "argocd-controller".into(),
                detected: false
            }
        );
    }

    /// The patch removes what the file dropped, sets what it has, and leaves
    /// what only someone else set.
    #[test]
    fn client_side_patch_is_kubectls_three_way_merge() {
        let original = json!({"metadata": {"name": "t"}, "spec": {
            "namespaces": [{"name": "a"}, {"name": "b"}],
            "quota": {"hard": {"pods": "10", "services": "5"}}}});
        let modified = json!({"metadata": {"name": "t"}, "spec": {
            "namespaces": [{"name": "a"}],
            "quota": {"hard": {"pods": "20"}},
            "deletionPolicy": "Delete"}});
        let current = json!({"metadata": {"name": "t", "labels": {"x": "y"}}, "spec": {
            "namespaces": [{"name": "a"}, {"name": "b"}],
            "quota": {"hard": {"pods": "10", "services": "5", "cpu": "1"}},
            "cordoned": false}});
        let patch = client_side_patch(Some(&original), &modified);
        assert_eq!(patch["spec"]["quota"]["hard"]["services"], Value::Null);
        let mut result = current.clone();
        json_patch::merge(&mut result, &patch);
        assert_eq!(result["spec"]["namespaces"], json!([{"name": "a"}]));
        assert_eq!(
            result["spec"]["quota"]["hard"],
            json!({"pods": "20", "cpu": "1"}),
            "the dropped key goes, the one kubectl never applied stays"
        );
        assert_eq!(result["spec"]["deletionPolicy"], "Delete");
        assert_eq!(result["spec"]["cordoned"], false);
        assert_eq!(result["metadata"]["labels"]["x"], "y");
        let recorded: Value = serde_json::from_str(
            result["metadata"]["annotations"][LAST_APPLIED]
                .as_str()
                .expect("recorded"),
        )
        .expect("json");
        assert_eq!(recorded, modified);
        // Without a recorded original nothing is removed.
        let mut kept = current.clone();
        json_patch::merge(&mut kept, &client_side_patch(None, &modified));
        assert_eq!(kept["spec"]["quota"]["hard"]["services"], "5");
    }

    #[test]
    fn built_in_groups_take_a_strategic_merge_patch() {
        for g in [
            "",
            "apps",
            "batch",
            "networking.k8s.io",
            "rbac.authorization.k8s.io",
        ] {
            assert!(is_built_in(g), "{g}");
        }
        for g in ["palisade.dev", "cluster.x-k8s.io", "example.com"] {
            assert!(!is_built_in(g), "{g}");
        }
    }
}
