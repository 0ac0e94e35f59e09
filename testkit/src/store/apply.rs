//! Server-side apply: create-or-merge, plus a simplified field ownership so
//! that fields a manager applied before and no longer applies are removed
//! (unless another apply manager still applies them). There are no apply
//! conflicts: every apply behaves as if `force=true`.

use std::collections::BTreeSet;

use serde_json::Value;

use super::{ObjectKey, Store, WriteMode, meta_str};
use crate::error::ApiError;
use crate::patch::{self, FieldPath, PatchType};
use crate::registry::ResourceType;

/// Fields that identify the object and are never removed by apply.
fn protected(path: &[String]) -> bool {
    matches!(
        path.iter()
            .map(String::as_str)
            .collect::<Vec<_>>()
            .as_slice(),
        ["apiVersion"]
            | ["kind"]
            | [
                "metadata",
                "name" | "namespace" | "resourceVersion" | "uid",
                ..
            ]
    )
}

impl Store {
    /// Applies `config` for `manager` to the main resource or `/status`.
    /// Returns the HTTP code (201 when created) and the stored object.
    pub fn apply(
        &mut self,
        rt: &ResourceType,
        key: &ObjectKey,
        config: &Value,
        manager: &str,
        mode: WriteMode,
    ) -> Result<(u16, Value), ApiError> {
        let in_scope = |p: &FieldPath| {
            let is_status = p.first().is_some_and(|f| f == "status");
            match mode {
                WriteMode::Status => is_status,
                _ => !(rt.status_subresource && is_status),
            }
        };
        let owner_key = format!("{manager}\u{0}{}", mode == WriteMode::Status);
        let paths: BTreeSet<FieldPath> = patch::leaf_paths(config)
            .into_iter()
            .filter(|p| in_scope(p))
            .collect();

        let (code, stored) = match self.get(key).cloned() {
            Some(existing) => {
                let mut merged = patch::apply_patch(PatchType::Apply, &existing, config)?;
                let uid = meta_str(&existing, "uid").unwrap_or("").to_string();
                // The real apiserver records field ownership in managedFields:
                // an apply that takes ownership of different fields (the first
                // apply of an object created with POST, say) is a write even
                // when every value stays the same.
                let ownership_changed =
                    self.apply_owners.get(&uid).and_then(|o| o.get(&owner_key)) != Some(&paths);
                if let Some(owners) = self.apply_owners.get(&uid) {
                    let previous = owners.get(&owner_key).cloned().unwrap_or_default();
                    for p in previous.difference(&paths) {
                        let shared = owners.iter().any(|(m, set)| {
                            *m != owner_key && set.iter().any(|q| patch::within(q, p))
                        });
                        if !shared && !protected(p) && !paths.iter().any(|q| patch::within(q, p)) {
                            patch::remove_path(&mut merged, p);
                        }
                    }
                }
                let before = meta_str(&existing, "resourceVersion").map(str::to_string);
                let stored = self.update(rt, key, merged, mode)?;
                let unchanged = meta_str(&stored, "resourceVersion").map(str::to_string) == before;
                if unchanged && ownership_changed {
                    (200, self.commit(key.clone(), stored))
                } else {
                    (200, stored)
                }
            }
            None if mode == WriteMode::Status => {
                return Err(ApiError::not_found(&rt.group, &rt.plural, &key.name));
            }
            None => {
                let mut body = config.clone();
                match meta_str(&body, "name") {
                    None => body["metadata"]["name"] = key.name.clone().into(),
                    Some(n) if n != key.name => {
                        return Err(ApiError::bad_request(format!(
                            "the name of the object ({n}) does not match the name on the URL ({})",
                            key.name
                        )));
                    }
                    Some(_) => {}
                }
                (
                    201,
                    self.create(rt, key.namespace.as_deref(), body, WriteMode::Main)?,
                )
            }
        };
        if let Some(uid) = meta_str(&stored, "uid") {
            self.apply_owners
                .entry(uid.to_string())
                .or_default()
                .insert(owner_key, paths);
        }
        Ok((code, stored))
    }
}
