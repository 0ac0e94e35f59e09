//! The object store: every object as `serde_json::Value`, one global
//! resourceVersion counter (like etcd), an event history for watch replay and
//! the write semantics the apiserver enforces (uid, generation, status
//! subresource, no-op writes, finalizers, deletion).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::hash::BuildHasher;
use std::sync::Arc;

use serde_json::{Map, Value, json};
use tokio::sync::{broadcast, watch};

use crate::error::ApiError;
use crate::registry::{Registry, ResourceType};
use crate::selectors::Selector;

mod apply;
mod gc;

/// Finalizer the apiserver puts on an owner deleted with `propagationPolicy: Foreground`.
const FOREGROUND: &str = "foregroundDeletion";

/// Identity of a stored object, independent of API version.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectKey {
    /// API group (empty for core).
    pub group: String,
    /// Plural resource name.
    pub plural: String,
    /// Namespace, `None` for cluster-scoped objects.
    pub namespace: Option<String>,
    /// Object name.
    pub name: String,
}

impl ObjectKey {
    pub(crate) fn new(group: &str, plural: &str, namespace: Option<&str>, name: &str) -> Self {
        Self {
            group: group.to_string(),
            plural: plural.to_string(),
            namespace: namespace.map(str::to_string),
            name: name.to_string(),
        }
    }

    fn namespace_key(name: &str) -> Self {
        Self::new("", "namespaces", None, name)
    }

    fn is_namespace(&self) -> bool {
        self.group.is_empty() && self.plural == "namespaces"
    }
}

/// Watch event types.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventType {
    /// `ADDED`
    Added,
    /// `MODIFIED`
    Modified,
    /// `DELETED`
    Deleted,
}

impl EventType {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Self::Added => "ADDED",
            Self::Modified => "MODIFIED",
            Self::Deleted => "DELETED",
        }
    }
}

/// One change, kept in the history and broadcast to open watches.
#[derive(Debug)]
pub(crate) struct StoredEvent {
    pub rv: u64,
    pub key: ObjectKey,
    pub etype: EventType,
    pub object: Value,
    /// The previous state for `Modified`, so selector-filtered watches can turn a
    /// change into ADDED/DELETED when the object starts/stops matching.
    pub old: Option<Value>,
}

/// `propagationPolicy` of a DELETE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Propagation {
    /// Dependents are deleted after the owner (the default).
    Background,
    /// Dependents are deleted before the owner: the owner keeps a
    /// `deletionTimestamp` and the `foregroundDeletion` finalizer until no
    /// dependent with `blockOwnerDeletion: true` is left.
    Foreground,
    /// Dependents keep living; their owner references are removed.
    Orphan,
}

/// Options from a DELETE body.
#[derive(Clone, Debug, Default)]
pub(crate) struct DeleteOptions {
    pub propagation: Option<Propagation>,
    pub precondition_uid: Option<String>,
    pub precondition_rv: Option<String>,
}

/// Outcome of a DELETE.
#[derive(Debug)]
pub(crate) enum Deleted {
    /// The object is gone; carries its final state.
    Removed(Value),
    /// The object still exists with a `deletionTimestamp` (finalizers pending).
    Marked(Value),
}

/// Which parts of the object a write may change.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum WriteMode {
    /// The main resource: `.status` is ignored for kinds with a status subresource.
    Main,
    /// The `/status` subresource: only `.status` changes.
    Status,
    /// A direct store write by a test (everything except immutable metadata).
    Full,
}

pub(crate) struct Store {
    pub registry: Registry,
    objects: BTreeMap<ObjectKey, Value>,
    rv: u64,
    history: VecDeque<Arc<StoredEvent>>,
    history_limit: usize,
    /// Watches from a resourceVersion below this get 410 Gone.
    compacted: u64,
    events_tx: broadcast::Sender<Arc<StoredEvent>>,
    /// Bumped to make every open watch end.
    pub close_tx: watch::Sender<u64>,
    /// The latest resourceVersion, for `wait_for` style helpers.
    pub rv_tx: watch::Sender<u64>,
    uid_seed: u64,
    uid_seq: u64,
    orphan_on_removal: HashSet<String>,
    /// Server-side apply ownership: uid -> manager (and scope) -> applied fields.
    apply_owners: HashMap<String, BTreeMap<String, BTreeSet<crate::patch::FieldPath>>>,
    pub require_namespaces: bool,
}

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

/// RFC 3339 timestamp with second precision, as the apiserver writes them.
pub(crate) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

pub(crate) fn meta_str<'a>(obj: &'a Value, field: &str) -> Option<&'a str> {
    obj.get("metadata")?.get(field)?.as_str()
}

fn meta_mut(obj: &mut Value) -> Option<&mut Map<String, Value>> {
    let map = obj.as_object_mut()?;
    let meta = map.entry("metadata").or_insert_with(|| json!({}));
    if !meta.is_object() {
        *meta = json!({});
    }
    meta.as_object_mut()
}

fn set_meta(obj: &mut Value, field: &str, value: Value) {
    if let Some(m) = meta_mut(obj) {
        m.insert(field.to_string(), value);
    }
}

fn remove_meta(obj: &mut Value, field: &str) {
    if let Some(m) = meta_mut(obj) {
        m.remove(field);
    }
}

pub(crate) fn finalizers(obj: &Value) -> Vec<String> {
    obj["metadata"]["finalizers"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|v| v.as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

fn is_deleting(obj: &Value) -> bool {
    obj["metadata"]["deletionTimestamp"].is_string()
}

/// The part of an object whose changes bump `metadata.generation`.
fn generation_part(obj: &Value) -> Value {
    let mut v = obj.clone();
    if let Some(m) = v.as_object_mut() {
        for k in ["metadata", "status", "apiVersion", "kind"] {
            m.remove(k);
        }
    }
    v
}

/// Drops what the apiserver would not persist: empty metadata collections,
/// nulls and managedFields.
fn normalize(obj: &mut Value) {
    if let Some(m) = meta_mut(obj) {
        m.remove("managedFields");
        m.retain(|_, v| match v {
            Value::Null => false,
            Value::Array(a) => !a.is_empty(),
            Value::Object(o) => !o.is_empty(),
            Value::String(s) => !s.is_empty(),
            _ => true,
        });
    }
}

/// Whether a group is one of Kubernetes' own (whose types are Go structs with
/// `omitempty` lists) rather than a custom resource's (stored as sent).
pub(crate) fn is_builtin_group(group: &str) -> bool {
    group.is_empty() || !group.contains('.') || group.ends_with(".k8s.io")
}

/// Removes empty lists, recursively: Go's `omitempty` on the built-in types'
/// slices means the apiserver never stores `ingress: []` or `policyTypes: []`.
fn drop_empty_lists(v: &mut Value) {
    match v {
        Value::Object(m) => {
            m.retain(|_, c| !c.as_array().is_some_and(Vec::is_empty));
            m.values_mut().for_each(drop_empty_lists);
        }
        Value::Array(a) => a.iter_mut().for_each(drop_empty_lists),
        _ => {}
    }
}

/// What the apiserver does to built-in kinds on every write, as the real one
/// does it (checked against kube-apiserver 1.34 in the e2e suite):
/// - empty lists under `spec` are dropped (Go `omitempty`);
/// - a namespace gets the immutable `kubernetes.io/metadata.name` label;
/// - a Secret's `stringData` is merged into `data` (base64) and dropped.
fn builtin_conversions(group: &str, plural: &str, obj: &mut Value) {
    if is_builtin_group(group)
        && let Some(spec) = obj.get_mut("spec")
    {
        drop_empty_lists(spec);
    }
    if group.is_empty() && plural == "namespaces" {
        if let Some(name) = meta_str(obj, "name").map(str::to_string)
            && let Some(m) = meta_mut(obj)
        {
            let labels = m.entry("labels").or_insert_with(|| json!({}));
            if let Some(l) = labels.as_object_mut() {
                l.insert("kubernetes.io/metadata.name".into(), name.into());
            }
        }
        return;
    }
    if !(group.is_empty() && plural == "secrets") {
        return;
    }
    let Some(map) = obj.as_object_mut() else {
        return;
    };
    let Some(Value::Object(string_data)) = map.remove("stringData") else {
        return;
    };
    let data = map.entry("data").or_insert_with(|| json!({}));
    if !data.is_object() {
        *data = json!({});
    }
    if let Some(data) = data.as_object_mut() {
        for (k, v) in string_data {
            let raw = match v {
                Value::String(s) => s.into_bytes(),
                other => other.to_string().into_bytes(),
            };
            if let Ok(encoded) = serde_json::to_value(k8s_openapi::ByteString(raw)) {
                data.insert(k, encoded);
            }
        }
    }
}

fn owner_uids(obj: &Value) -> impl Iterator<Item = &str> {
    obj["metadata"]["ownerReferences"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[])
        .iter()
        .filter_map(|r| r["uid"].as_str())
}

impl Store {
    pub fn new(history_limit: usize) -> Self {
        let (events_tx, _) = broadcast::channel(history_limit.max(1024));
        let (close_tx, _) = watch::channel(0);
        let (rv_tx, _) = watch::channel(0);
        let uid_seed = std::collections::hash_map::RandomState::new().hash_one(0u8);
        let mut s = Self {
            registry: Registry::with_builtins(),
            objects: BTreeMap::new(),
            rv: 0,
            history: VecDeque::new(),
            history_limit,
            compacted: 0,
            events_tx,
            close_tx,
            rv_tx,
            uid_seed,
            uid_seq: 0,
            orphan_on_removal: HashSet::new(),
            apply_owners: HashMap::new(),
            require_namespaces: true,
        };
        if let Some(rt) = s.registry.find("", "v1", "namespaces").cloned() {
            for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
                let _ = s.create(
                    &rt,
                    None,
                    json!({"metadata": {"name": ns}}),
                    WriteMode::Main,
                );
            }
        }
        s
    }

    /// The current (latest) resourceVersion.
    pub fn resource_version(&self) -> u64 {
        self.rv
    }

    fn new_uid(&mut self) -> String {
        self.uid_seq += 1;
        let x = splitmix(self.uid_seed ^ self.uid_seq);
        let y = splitmix(x);
        format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            x >> 32,
            (x >> 16) & 0xffff,
            x & 0xfff,
            (y >> 52) & 0xfff,
            y & 0xffff_ffff_ffff
        )
    }

    fn random_suffix(&mut self) -> String {
        const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
        self.uid_seq += 1;
        let mut x = splitmix(self.uid_seed ^ self.uid_seq.rotate_left(17));
        (0..5)
            .map(|_| {
                let c = ALPHABET[(x % ALPHABET.len() as u64) as usize] as char;
                x /= ALPHABET.len() as u64;
                c
            })
            .collect()
    }

    // ---- reads --------------------------------------------------------------

    pub fn get(&self, key: &ObjectKey) -> Option<&Value> {
        self.objects.get(key)
    }

    /// Objects of one resource (optionally in one namespace) matching `sel`,
    /// sorted by namespace and name.
    pub fn list(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        sel: &Selector,
    ) -> Vec<(ObjectKey, Value)> {
        self.objects
            .iter()
            .filter(|(k, v)| {
                k.group == group
                    && k.plural == plural
                    && (ns.is_none() || k.namespace.as_deref() == ns)
                    && sel.matches(v)
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Starts a watch: returns the events to replay (synthetic ADDED events for
    /// the current state when `from` is `None`), and a receiver for later events.
    #[allow(clippy::type_complexity)]
    pub fn watch_start(
        &self,
        group: &str,
        plural: &str,
        ns: Option<&str>,
        from: Option<u64>,
    ) -> Result<
        (
            Vec<Arc<StoredEvent>>,
            broadcast::Receiver<Arc<StoredEvent>>,
            u64,
        ),
        ApiError,
    > {
        let relevant = |k: &ObjectKey| {
            k.group == group && k.plural == plural && (ns.is_none() || k.namespace.as_deref() == ns)
        };
        let replay = match from {
            None => self
                .objects
                .iter()
                .filter(|(k, _)| relevant(k))
                .map(|(k, v)| {
                    Arc::new(StoredEvent {
                        rv: meta_str(v, "resourceVersion")
                            .and_then(|s| s.parse().ok())
                            .unwrap_or(0),
                        key: k.clone(),
                        etype: EventType::Added,
                        object: v.clone(),
                        old: None,
                    })
                })
                .collect(),
            Some(rv) if rv < self.compacted => {
                return Err(ApiError::gone(format!(
                    "too old resource version: {rv} ({})",
                    self.compacted
                )));
            }
            Some(rv) => self
                .history
                .iter()
                .filter(|e| e.rv > rv && relevant(&e.key))
                .cloned()
                .collect(),
        };
        Ok((
            replay,
            self.events_tx.subscribe(),
            from.unwrap_or(0).max(self.rv),
        ))
    }

    /// Drops the whole event history and expires every resourceVersion handed
    /// out so far: watches resuming from any of them get 410 Gone. The counter
    /// is bumped (without an event) so that a re-list returns a resourceVersion
    /// that can be watched from.
    pub fn compact(&mut self) {
        self.history.clear();
        self.rv += 1;
        self.compacted = self.rv;
        self.rv_tx.send_replace(self.rv);
    }

    // ---- low-level commits ------------------------------------------------------

    fn emit(&mut self, key: ObjectKey, etype: EventType, object: Value, old: Option<Value>) {
        let ev = Arc::new(StoredEvent {
            rv: self.rv,
            key,
            etype,
            object,
            old,
        });
        self.history.push_back(ev.clone());
        while self.history.len() > self.history_limit {
            if let Some(old) = self.history.pop_front() {
                self.compacted = old.rv;
            }
        }
        let _ = self.events_tx.send(ev);
        self.rv_tx.send_replace(self.rv);
    }

    /// Stores `obj` under `key` with a fresh resourceVersion and emits ADDED/MODIFIED.
    fn commit(&mut self, key: ObjectKey, mut obj: Value) -> Value {
        self.rv += 1;
        set_meta(
            &mut obj,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        let old = self.objects.insert(key.clone(), obj.clone());
        if key.group == "apiextensions.k8s.io" && key.plural == "customresourcedefinitions" {
            self.registry.register_crd(&obj);
        }
        let etype = if old.is_some() {
            EventType::Modified
        } else {
            EventType::Added
        };
        self.emit(key, etype, obj.clone(), old);
        obj
    }

    /// Removes the object for good (final state `obj`), emits DELETED, then
    /// garbage-collects dependents and finishes terminating namespaces.
    fn remove(&mut self, key: &ObjectKey, mut obj: Value) -> Value {
        if self.objects.remove(key).is_none() {
            return obj;
        }
        self.rv += 1;
        set_meta(
            &mut obj,
            "resourceVersion",
            Value::String(self.rv.to_string()),
        );
        self.emit(key.clone(), EventType::Deleted, obj.clone(), None);
        if let Some(uid) = meta_str(&obj, "uid").map(str::to_string) {
            self.apply_owners.remove(&uid);
            let orphan = self.orphan_on_removal.remove(&uid);
            self.collect_dependents(&uid, orphan);
        }
        let owners: Vec<String> = owner_uids(&obj).map(str::to_string).collect();
        for owner in owners {
            self.try_finish_foreground(&owner);
        }
        if let Some(ns) = &key.namespace {
            self.try_finish_namespace(ns);
        }
        obj
    }

    // ---- writes -------------------------------------------------------------------

    /// POST: creates an object. `Full` mode keeps `.status` even for kinds with a
    /// status subresource.
    pub fn create(
        &mut self,
        rt: &ResourceType,
        namespace: Option<&str>,
        mut obj: Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        let Some(map) = obj.as_object_mut() else {
            return Err(ApiError::bad_request("request body must be a JSON object"));
        };
        map.entry("apiVersion")
            .or_insert_with(|| rt.api_version().into());
        map.entry("kind").or_insert_with(|| rt.kind.clone().into());
        if rt.status_subresource && mode != WriteMode::Full {
            map.remove("status");
        }
        normalize(&mut obj);
        let name = match (meta_str(&obj, "name"), meta_str(&obj, "generateName")) {
            (Some(n), _) => n.to_string(),
            (None, Some(prefix)) => {
                let prefix = prefix.to_string();
                format!("{prefix}{}", self.random_suffix())
            }
            (None, None) => {
                return Err(ApiError::invalid(format!(
                    "{} \"\" is invalid: metadata.name: Required value: name or generateName is required",
                    rt.kind
                )));
            }
        };
        set_meta(&mut obj, "name", name.clone().into());
        builtin_conversions(&rt.group, &rt.plural, &mut obj);
        let ns = if rt.namespaced {
            let body_ns = meta_str(&obj, "namespace");
            let ns = match (namespace, body_ns) {
                (Some(p), Some(b)) if p != b => {
                    return Err(ApiError::bad_request(
                        "the namespace of the provided object does not match the namespace sent on the request",
                    ));
                }
                (Some(p), _) => p.to_string(),
                (None, Some(b)) => b.to_string(),
                (None, None) => return Err(ApiError::bad_request("a namespace is required")),
            };
            self.check_namespace_open(&ns)?;
            set_meta(&mut obj, "namespace", ns.clone().into());
            Some(ns)
        } else {
            remove_meta(&mut obj, "namespace");
            None
        };
        let key = ObjectKey::new(&rt.group, &rt.plural, ns.as_deref(), &name);
        if self.objects.contains_key(&key) {
            return Err(ApiError::already_exists(&rt.group, &rt.plural, &name));
        }
        let uid = self.new_uid();
        set_meta(&mut obj, "uid", uid.into());
        set_meta(&mut obj, "creationTimestamp", now_rfc3339().into());
        set_meta(&mut obj, "generation", 1.into());
        for f in [
            "deletionTimestamp",
            "deletionGracePeriodSeconds",
            "resourceVersion",
            "selfLink",
        ] {
            remove_meta(&mut obj, f);
        }
        if key.is_namespace() {
            obj["spec"]["finalizers"] = json!(["kubernetes"]);
            obj["status"]["phase"] = "Active".into();
        }
        if key.group == "apiextensions.k8s.io" && key.plural == "customresourcedefinitions" {
            let names = obj["spec"]["names"].clone();
            let now = now_rfc3339();
            obj["status"] = json!({
                "acceptedNames": names,
                "storedVersions": obj["spec"]["versions"].as_array().map(|vs| vs.iter().filter(|v| v["storage"].as_bool() == Some(true)).map(|v| v["name"].clone()).collect::<Vec<_>>()).unwrap_or_default(),
                "conditions": [
                    {"type": "NamesAccepted", "status": "True", "reason": "NoConflicts", "message": "no conflicts found", "lastTransitionTime": now},
                    {"type": "Established", "status": "True", "reason": "InitialNamesAccepted", "message": "the initial names have been accepted", "lastTransitionTime": now},
                ],
            });
        }
        Ok(self.commit(key, obj))
    }

    fn check_namespace_open(&self, ns: &str) -> Result<(), ApiError> {
        if !self.require_namespaces {
            return Ok(());
        }
        match self.objects.get(&ObjectKey::namespace_key(ns)) {
            None => Err(ApiError::not_found("", "namespaces", ns)),
            Some(n) if is_deleting(n) => Err(ApiError::forbidden(format!(
                "unable to create new content in namespace {ns} because it is being terminated"
            ))),
            Some(_) => Ok(()),
        }
    }

    /// PUT, or the result of a patch: replaces the object at `key` by `candidate`
    /// following the apiserver's update rules.
    pub fn update(
        &mut self,
        rt: &ResourceType,
        key: &ObjectKey,
        candidate: Value,
        mode: WriteMode,
    ) -> Result<Value, ApiError> {
        let Some(old) = self.objects.get(key).cloned() else {
            return Err(ApiError::not_found(&rt.group, &rt.plural, &key.name));
        };
        if !candidate.is_object() {
            return Err(ApiError::bad_request("request body must be a JSON object"));
        }
        if let Some(n) = meta_str(&candidate, "name")
            && n != key.name
        {
            return Err(ApiError::bad_request(format!(
                "the name of the object ({n}) does not match the name on the URL ({})",
                key.name
            )));
        }
        if let (Some(n), Some(ns)) = (meta_str(&candidate, "namespace"), &key.namespace)
            && n != ns
        {
            return Err(ApiError::bad_request(
                "the namespace of the provided object does not match the namespace sent on the request",
            ));
        }
        if let Some(uid) = meta_str(&candidate, "uid")
            && Some(uid) != meta_str(&old, "uid")
        {
            return Err(ApiError::conflict(
                &rt.group,
                &rt.plural,
                &key.name,
                &format!(
                    "Precondition failed: UID in precondition: {uid}, UID in object meta: {}",
                    meta_str(&old, "uid").unwrap_or("")
                ),
            ));
        }
        let old_rv = meta_str(&old, "resourceVersion").unwrap_or("").to_string();
        if let Some(rv) = meta_str(&candidate, "resourceVersion")
            && !rv.is_empty()
            && rv != old_rv
        {
            return Err(ApiError::stale(&rt.group, &rt.plural, &key.name));
        }

        let mut new = match mode {
            WriteMode::Status => {
                let mut n = old.clone();
                if let Some(m) = n.as_object_mut() {
                    match candidate.get("status") {
                        Some(s) if !s.is_null() => m.insert("status".into(), s.clone()),
                        _ => m.remove("status"),
                    };
                }
                n
            }
            WriteMode::Main | WriteMode::Full => {
                let mut n = candidate;
                if mode == WriteMode::Main
                    && rt.status_subresource
                    && let Some(m) = n.as_object_mut()
                {
                    match old.get("status") {
                        Some(s) => m.insert("status".into(), s.clone()),
                        None => m.remove("status"),
                    };
                }
                if let Some(m) = n.as_object_mut() {
                    for f in ["apiVersion", "kind"] {
                        if !m.contains_key(f)
                            && let Some(v) = old.get(f)
                        {
                            m.insert(f.into(), v.clone());
                        }
                    }
                }
                // Immutable / server-owned metadata.
                for f in [
                    "name",
                    "namespace",
                    "uid",
                    "creationTimestamp",
                    "deletionTimestamp",
                    "deletionGracePeriodSeconds",
                    "generation",
                ] {
                    match old["metadata"].get(f) {
                        Some(v) => set_meta(&mut n, f, v.clone()),
                        None => remove_meta(&mut n, f),
                    }
                }
                n
            }
        };
        normalize(&mut new);
        builtin_conversions(&rt.group, &rt.plural, &mut new);
        set_meta(&mut new, "resourceVersion", old_rv.into());

        if is_deleting(&old) {
            let before: HashSet<String> = finalizers(&old).into_iter().collect();
            if finalizers(&new).iter().any(|f| !before.contains(f)) {
                return Err(ApiError::invalid(format!(
                    "{} \"{}\" is invalid: metadata.finalizers: Forbidden: no new finalizers can be added if the object is being deleted",
                    rt.kind, key.name
                )));
            }
        }
        if generation_part(&new) != generation_part(&old) {
            let g = old["metadata"]["generation"].as_i64().unwrap_or(0) + 1;
            set_meta(&mut new, "generation", g.into());
        }
        if new == old {
            return Ok(old);
        }
        if is_deleting(&new) && finalizers(&new).is_empty() {
            if key.is_namespace() {
                let obj = self.commit(key.clone(), new);
                self.try_finish_namespace(&key.name);
                return Ok(self.objects.get(key).cloned().unwrap_or(obj));
            }
            return Ok(self.remove(key, new));
        }
        Ok(self.commit(key.clone(), new))
    }

    /// DELETE with preconditions and a propagation policy.
    pub fn delete(
        &mut self,
        rt: &ResourceType,
        key: &ObjectKey,
        opts: &DeleteOptions,
    ) -> Result<Deleted, ApiError> {
        let Some(obj) = self.objects.get(key) else {
            return Err(ApiError::not_found(&rt.group, &rt.plural, &key.name));
        };
        // As the API server words a failed precondition.
        for (field, label, want) in [
            ("uid", "UID", &opts.precondition_uid),
            ("resourceVersion", "ResourceVersion", &opts.precondition_rv),
        ] {
            if let Some(want) = want
                && meta_str(obj, field) != Some(want.as_str())
            {
                return Err(ApiError::conflict(
                    &rt.group,
                    &rt.plural,
                    &key.name,
                    &format!(
                        "Precondition failed: {label} in precondition: {want}, {label} in object meta: {}",
                        meta_str(obj, field).unwrap_or("")
                    ),
                ));
            }
        }
        Ok(self.delete_internal(key, opts.propagation.unwrap_or(Propagation::Background)))
    }

    /// Test helper: inserts or overwrites an object as another client would
    /// (status included), returning the stored object.
    pub fn put_direct(&mut self, rt: &ResourceType, obj: Value) -> Result<Value, ApiError> {
        let name = meta_str(&obj, "name")
            .ok_or_else(|| ApiError::bad_request("metadata.name is required"))?
            .to_string();
        let ns = if rt.namespaced {
            Some(meta_str(&obj, "namespace").unwrap_or("default").to_string())
        } else {
            None
        };
        let key = ObjectKey::new(&rt.group, &rt.plural, ns.as_deref(), &name);
        if self.objects.contains_key(&key) {
            let mut obj = obj;
            remove_meta(&mut obj, "resourceVersion");
            self.update(rt, &key, obj, WriteMode::Full)
        } else {
            self.create(rt, ns.as_deref(), obj, WriteMode::Full)
        }
    }
}
