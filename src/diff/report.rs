//! The report of one diff: what would happen to each object, the findings,
//! and their text and JSON forms.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::EXIT_CHANGES;

/// What applying would do to one object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    Created,
    Changed,
    Pruned,
    /// Kept, no longer managed (`deletionPolicy: Retain`): a namespace and the
    /// data Palisade generated in it.
    Released,
    Unchanged,
}

impl Action {
    fn as_str(self) -> &'static str {
        match self {
            Action::Created => "created",
            Action::Changed => "changed",
            Action::Pruned => "pruned",
            Action::Released => "released",
            Action::Unchanged => "unchanged",
        }
    }
}

/// One field that would change; `before` absent = added, `after` absent = removed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FieldChange {
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// The verdict on one object.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ObjectDiff {
    pub action: Action,
    pub api_version: String,
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    pub name: String,
    /// `FILE#DOC` for an input document, `Tenant NAME` / `BackupSchedule NS/NAME`
    /// for what Palisade manages for it.
    pub source: String,
    /// For an input document: how it is applied (`as kubectl client-side
    /// apply`, `as server-side apply by kustomize-controller`, …), as read
    /// from the live object.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub applied_as: Option<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fields: Vec<FieldChange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

/// How serious a finding is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// The controller refuses the object (condition `Valid`/`Ready` False).
    Rejected,
    /// Privileged, and accepted only because of `allowPrivileged: true`.
    Allowed,
}

/// A problem in the input that the controllers would report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Finding {
    pub severity: Severity,
    pub kind: String,
    pub name: String,
    pub reason: String,
    pub field: String,
    pub message: String,
}

/// Everything `palisade diff` found.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    pub objects: Vec<ObjectDiff>,
    pub findings: Vec<Finding>,
}

impl Report {
    /// Objects of one action.
    pub fn count(&self, action: Action) -> usize {
        self.objects.iter().filter(|o| o.action == action).count()
    }

    /// True when applying would change something, or the controller would
    /// reject part of the input.
    pub fn would_change(&self) -> bool {
        self.objects.iter().any(|o| o.action != Action::Unchanged)
            || self
                .findings
                .iter()
                .any(|f| f.severity == Severity::Rejected)
    }

    pub fn exit_code(&self) -> u8 {
        if self.would_change() { EXIT_CHANGES } else { 0 }
    }

    fn summary(&self) -> String {
        let rejected = self
            .findings
            .iter()
            .filter(|f| f.severity == Severity::Rejected)
            .count();
        format!(
            "{} created, {} changed, {} pruned, {} released, {} unchanged; {} finding(s), {} rejected",
            self.count(Action::Created),
            self.count(Action::Changed),
            self.count(Action::Pruned),
            self.count(Action::Released),
            self.count(Action::Unchanged),
            self.findings.len(),
            rejected
        )
    }

    /// Human-readable report: one line per object, the changed fields under
    /// it, the findings, and a summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        for o in &self.objects {
            let ns = o
                .namespace
                .as_deref()
                .map(|n| format!("{n}/"))
                .unwrap_or_default();
            let how = o
                .applied_as
                .as_deref()
                .map(|a| format!(", {a}"))
                .unwrap_or_default();
            out.push_str(&format!(
                "{:<9} {} {ns}{} ({}{how})",
                o.action.as_str(),
                o.kind,
                o.name,
                o.source
            ));
            if let Some(note) = &o.note {
                out.push_str(&format!(": {note}"));
            }
            out.push('\n');
            for f in &o.fields {
                let line = match (&f.before, &f.after) {
                    (Some(b), Some(a)) => format!("~ {}: {} -> {}", f.path, show(b), show(a)),
                    (None, Some(a)) => format!("+ {}: {}", f.path, show(a)),
                    (Some(b), None) => format!("- {}: {}", f.path, show(b)),
                    (None, None) => format!("~ {}", f.path),
                };
                out.push_str(&format!("    {line}\n"));
            }
        }
        for f in &self.findings {
            let what = match f.severity {
                Severity::Rejected => "rejected: the controller will not apply it",
                Severity::Allowed => "allowed only by allowPrivileged: true",
            };
            out.push_str(&format!(
                "finding   {} {}: {} at {}: {} ({what})\n",
                f.kind, f.name, f.reason, f.field, f.message
            ));
        }
        out.push_str(&self.summary());
        out.push('\n');
        out
    }

    /// The report as JSON: `{objects, findings, summary, wouldChange}`.
    pub fn to_json(&self) -> Result<String, serde_json::Error> {
        let summary: BTreeMap<&str, usize> = [
            Action::Created,
            Action::Changed,
            Action::Pruned,
            Action::Released,
            Action::Unchanged,
        ]
        .into_iter()
        .map(|a| (a.as_str(), self.count(a)))
        .chain([("findings", self.findings.len())])
        .collect();
        serde_json::to_string_pretty(&serde_json::json!({
            "objects": self.objects,
            "findings": self.findings,
            "summary": summary,
            "wouldChange": self.would_change(),
        }))
    }
}

/// A value for one line of text output.
fn show(v: &Value) -> String {
    const MAX: usize = 160;
    let s = v.to_string();
    if s.chars().count() <= MAX {
        return s;
    }
    let cut: String = s.chars().take(MAX).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn exit_code_and_text() {
        let obj = |action| ObjectDiff {
            action,
            api_version: "v1".into(),
            kind: "ConfigMap".into(),
            namespace: Some("n".into()),
            name: "c".into(),
            source: "f.yaml#1".into(),
            applied_as: Some("as kubectl client-side apply".into()),
            fields: vec![FieldChange {
                path: "data.k".into(),
                before: Some(json!("1")),
                after: Some(json!("2")),
            }],
            note: None,
        };
        let mut r = Report {
            objects: vec![obj(Action::Unchanged)],
            findings: vec![],
        };
        assert_eq!(r.exit_code(), 0);
        r.findings.push(Finding {
            severity: Severity::Allowed,
            kind: "RolePolicy".into(),
            name: "p".into(),
            reason: "EscalationVerb".into(),
            field: "spec.roles[0].rules[0]".into(),
            message: "m".into(),
        });
        assert_eq!(r.exit_code(), 0, "an allowed finding changes nothing");
        r.findings[0].severity = Severity::Rejected;
        assert_eq!(r.exit_code(), 1);
        r.findings.clear();
        r.objects.push(obj(Action::Changed));
        assert_eq!(r.exit_code(), 1);
        let text = r.to_text();
        assert!(
            text.contains("changed   ConfigMap n/c (f.yaml#1, as kubectl client-side apply)\n    ~ data.k: \"1\" -> \"2\"\n"),
            "{text}"
        );
        assert!(text.ends_with(
            "0 created, 1 changed, 0 pruned, 0 released, 1 unchanged; 0 finding(s), 0 rejected\n"
        ));
        let json: Value = serde_json::from_str(&r.to_json().expect("json")).expect("parse");
        assert_eq!(json["wouldChange"], true);
        assert_eq!(json["summary"]["changed"], 1);
        assert_eq!(json["objects"][1]["action"], "changed");
    }
}
