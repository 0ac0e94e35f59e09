//! Deletion and garbage collection: finalizer-aware deletion, ownerReference
//! cascades (background, foreground, orphan) and the namespace cascade.

use serde_json::{Value, json};

use super::{
    Deleted, FOREGROUND, ObjectKey, Propagation, Store, finalizers, is_deleting, meta_str,
    normalize, now_rfc3339, owner_uids, set_meta,
};

impl Store {
    /// Completes a foreground deletion of the object with `uid` once no
    /// dependent with `blockOwnerDeletion: true` is left: the
    /// `foregroundDeletion` finalizer is dropped (removing the object if it was
    /// the last finalizer).
    pub(super) fn try_finish_foreground(&mut self, uid: &str) {
        let Some((key, obj)) = self
            .objects
            .iter()
            .find(|(_, v)| {
                meta_str(v, "uid") == Some(uid) && finalizers(v).iter().any(|f| f == FOREGROUND)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
        else {
            return;
        };
        let blocked = self.objects.values().any(|v| {
            v["metadata"]["ownerReferences"]
                .as_array()
                .is_some_and(|refs| {
                    refs.iter().any(|r| {
                        r["uid"].as_str() == Some(uid)
                            && r["blockOwnerDeletion"].as_bool() == Some(true)
                    })
                })
        });
        if blocked {
            return;
        }
        let mut obj = obj;
        if let Some(fins) = obj["metadata"]["finalizers"].as_array_mut() {
            fins.retain(|f| f.as_str() != Some(FOREGROUND));
        }
        normalize(&mut obj);
        if finalizers(&obj).is_empty() {
            self.remove(&key, obj);
        } else {
            self.commit(key, obj);
        }
    }

    /// Garbage collection of objects owned by `uid`.
    pub(super) fn collect_dependents(&mut self, uid: &str, orphan: bool) {
        let dependents: Vec<ObjectKey> = self
            .objects
            .iter()
            .filter(|(_, v)| owner_uids(v).any(|u| u == uid))
            .map(|(k, _)| k.clone())
            .collect();
        for dep in dependents {
            if orphan {
                if let Some(mut obj) = self.objects.get(&dep).cloned() {
                    if let Some(refs) = obj["metadata"]["ownerReferences"].as_array_mut() {
                        refs.retain(|r| r["uid"].as_str() != Some(uid));
                    }
                    normalize(&mut obj);
                    self.commit(dep, obj);
                }
            } else {
                self.delete_internal(&dep, Propagation::Background);
            }
        }
    }

    /// Removes a terminating namespace once it is empty and has no finalizers.
    pub(super) fn try_finish_namespace(&mut self, ns: &str) -> Option<Value> {
        let key = ObjectKey::namespace_key(ns);
        let obj = self.objects.get(&key)?;
        if !is_deleting(obj)
            || !finalizers(obj).is_empty()
            || self
                .objects
                .keys()
                .any(|k| k.namespace.as_deref() == Some(ns))
        {
            return None;
        }
        let obj = obj.clone();
        Some(self.remove(&key, obj))
    }

    /// Deletion without preconditions (also used by garbage collection).
    pub fn delete_internal(&mut self, key: &ObjectKey, propagation: Propagation) -> Deleted {
        let Some(obj) = self.objects.get(key).cloned() else {
            return Deleted::Removed(Value::Null);
        };
        if key.is_namespace() {
            return self.delete_namespace(key, obj);
        }
        if is_deleting(&obj) {
            return Deleted::Marked(obj);
        }
        let uid = meta_str(&obj, "uid").unwrap_or("").to_string();
        if propagation == Propagation::Orphan {
            self.orphan_on_removal.insert(uid.clone());
        } else {
            self.orphan_on_removal.remove(&uid);
        }
        if propagation == Propagation::Foreground
            && self
                .objects
                .values()
                .any(|v| owner_uids(v).any(|u| u == uid))
        {
            // Foreground: the owner stays (deletionTimestamp + the
            // `foregroundDeletion` finalizer) until its blocking dependents are gone.
            let mut marked = obj;
            set_meta(&mut marked, "deletionTimestamp", now_rfc3339().into());
            set_meta(&mut marked, "deletionGracePeriodSeconds", 0.into());
            let mut fins = finalizers(&marked);
            fins.push(FOREGROUND.to_string());
            set_meta(&mut marked, "finalizers", json!(fins));
            let marked = self.commit(key.clone(), marked);
            self.collect_dependents(&uid, false);
            self.try_finish_foreground(&uid);
            return match self.objects.get(key) {
                Some(o) => Deleted::Marked(o.clone()),
                None => Deleted::Removed(marked),
            };
        }
        if finalizers(&obj).is_empty() {
            Deleted::Removed(self.remove(key, obj))
        } else {
            let mut marked = obj;
            set_meta(&mut marked, "deletionTimestamp", now_rfc3339().into());
            set_meta(&mut marked, "deletionGracePeriodSeconds", 0.into());
            Deleted::Marked(self.commit(key.clone(), marked))
        }
    }

    /// Namespace deletion: mark Terminating, delete the content (respecting its
    /// finalizers), and remove the namespace once it is empty.
    fn delete_namespace(&mut self, key: &ObjectKey, obj: Value) -> Deleted {
        if !is_deleting(&obj) {
            let mut marked = obj;
            set_meta(&mut marked, "deletionTimestamp", now_rfc3339().into());
            set_meta(&mut marked, "deletionGracePeriodSeconds", 0.into());
            marked["status"]["phase"] = "Terminating".into();
            self.commit(key.clone(), marked);
        }
        let content: Vec<ObjectKey> = self
            .objects
            .keys()
            .filter(|k| k.namespace.as_deref() == Some(key.name.as_str()))
            .cloned()
            .collect();
        for k in content {
            if self.objects.contains_key(&k) {
                self.delete_internal(&k, Propagation::Background);
            }
        }
        if let Some(removed) = self.try_finish_namespace(&key.name) {
            return Deleted::Removed(removed);
        }
        match self.objects.get(key) {
            Some(o) => Deleted::Marked(o.clone()),
            // Removed by the cascade itself (the last content object finished it).
            None => Deleted::Removed(json!({"metadata": {"name": key.name}})),
        }
    }
}
