//! TTL garbage collection, the pure part: given the rules of a tenant, the
//! annotation settings, the metadata of candidate objects and `now`, decide what
//! is due (and why), what is invalid, and when the next object expires.
//!
//! No client and no clock: the controller (`crate::controller::gc`) feeds it
//! objects from its metadata caches and acts on the answer.
//!
//! Semantics:
//! - Only objects in the tenant's namespaces are considered (the caller passes
//!   them; anything else is ignored here too).
//! - Never candidates: objects Palisade itself manages (passed in by the
//!   controller by kind, namespace and name: its children, rotated Secrets, JWKS
//!   ConfigMaps, token Secrets, its own RoleBinding), objects with an
//!   ownerReference to a `palisade.dev` object (what BackupSchedules and
//!   BackupRuns own), and objects already being deleted. Labels do not protect:
//!   anyone who may write an object may label it `app.kubernetes.io/managed-by:
//!   palisade`.
//! - Annotations written on the object can only shorten its life, never exempt
//!   it from the Tenant's rules: an invalid `palisade.dev/ttl` or
//!   `palisade.dev/expires` counts as absent (and is reported), so the rules
//!   still apply to it.
//! - A rule covers its kinds and (optional) label selector. Its age is counted from
//!   `creationTimestamp`, or with `ageFrom: Completion` from `status.completionTime`
//!   (an object without one is still running and never due under that rule).
//!   `keepLast: N` keeps the N newest matching objects (by creationTimestamp,
//!   ties broken by name) per namespace; with no `maxAge` everything beyond them
//!   is due at once.
//! - Annotations (for the annotation kinds only): `palisade.dev/ttl` counts from
//!   creation, `palisade.dev/expires` is an RFC 3339 instant. The earliest of
//!   every applicable expiry wins, and is the reason reported.
//! - An object is due when its expiry is at or before `now` (exactly at the
//!   deadline, not one second later).

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use k8s_openapi::jiff::{SignedDuration, Timestamp};
use kube::core::{Selector, SelectorExt};

use crate::crd::tenant::{AgeFrom, GcRule};
use crate::duration;

/// Annotation: time to live from creation, as a duration (`90s`, `12h`, `7d`).
pub const TTL: &str = "palisade.dev/ttl";
/// Annotation: the RFC 3339 instant after which the object may be deleted.
pub const EXPIRES: &str = "palisade.dev/expires";

/// Kinds honouring the annotations when `annotationKinds` is empty (plus the
/// kinds the rules name).
pub const DEFAULT_ANNOTATION_KINDS: &[&str] = &[
    "ConfigMap",
    "Secret",
    "Job.batch",
    "PersistentVolumeClaim",
    "Pod",
];

/// A resolved kind, as `group/Kind` (`/ConfigMap`, `batch/Job`).
pub type KindKey = String;

/// The key of a kind.
pub fn kind_key(group: &str, kind: &str) -> KindKey {
    format!("{group}/{kind}")
}

/// What selection needs to know about one object.
#[derive(Clone, Debug, PartialEq)]
pub struct Candidate {
    pub kind: KindKey,
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    pub annotations: BTreeMap<String, String>,
    pub created: Timestamp,
    /// `status.completionTime`, when known (Jobs and similar "runs").
    pub completed: Option<Timestamp>,
    /// `metadata.deletionTimestamp` is set.
    pub deleting: bool,
    /// An ownerReference names a `palisade.dev` object (see [`palisade_owner`]).
    pub palisade_owned: bool,
}

/// Whether an ownerReference's `apiVersion` is of Palisade's API group: the
/// object belongs to a BackupSchedule, BackupRun or Tenant, whose controller
/// manages its life.
pub fn palisade_owner(api_version: &str) -> bool {
    api_version
        .split_once('/')
        .is_some_and(|(group, _)| group == crate::crd::GROUP)
}

/// An object Palisade itself writes in a tenant namespace: kind, namespace, name.
pub type ManagedKey = (KindKey, String, String);

/// A rule ready for selection: kinds resolved, durations and selector parsed.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub kinds: BTreeSet<KindKey>,
    pub selector: Option<Selector>,
    pub max_age: Option<Duration>,
    pub keep_last: Option<u32>,
    pub age_from: AgeFrom,
}

/// A rule that cannot be used.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("rule {rule}: {message}")]
pub struct InvalidRule {
    pub rule: String,
    pub message: String,
}

impl Rule {
    /// Compiles a spec rule over already-resolved kinds.
    pub fn compile(spec: &GcRule, kinds: BTreeSet<KindKey>) -> Result<Self, InvalidRule> {
        let invalid = |message: String| InvalidRule {
            rule: spec.name.clone(),
            message,
        };
        let max_age = spec
            .max_age
            .as_deref()
            .map(duration::parse)
            .transpose()
            .map_err(|e| invalid(e.to_string()))?;
        if max_age.is_none() && spec.keep_last.is_none() {
            return Err(invalid("a rule needs maxAge, keepLast or both".into()));
        }
        let selector = spec
            .selector
            .clone()
            .map(|s: LabelSelector| Selector::try_from(s))
            .transpose()
            .map_err(|e| invalid(format!("selector: {e}")))?;
        Ok(Self {
            name: spec.name.clone(),
            kinds,
            selector,
            max_age,
            keep_last: spec.keep_last,
            age_from: spec.age_from,
        })
    }

    fn covers(&self, c: &Candidate) -> bool {
        self.kinds.contains(&c.kind) && self.selector.as_ref().is_none_or(|s| s.matches(&c.labels))
    }
}

/// Why an object is (or will be) due.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Why {
    /// A rule's maxAge passed.
    MaxAge { rule: String, max_age: String },
    /// Beyond a rule's keepLast newest (no maxAge).
    KeepLast { rule: String, keep: u32 },
    /// The `palisade.dev/ttl` annotation.
    Ttl(String),
    /// The `palisade.dev/expires` annotation.
    Expires(String),
}

impl Why {
    /// Short label for Events: the rule name, or the annotation.
    pub fn source(&self) -> String {
        match self {
            Why::MaxAge { rule, .. } | Why::KeepLast { rule, .. } => format!("rule {rule}"),
            Why::Ttl(_) => format!("annotation {TTL}"),
            Why::Expires(_) => format!("annotation {EXPIRES}"),
        }
    }
}

impl std::fmt::Display for Why {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Why::MaxAge { rule, max_age } => write!(f, "rule {rule}: older than {max_age}"),
            Why::KeepLast { rule, keep } => {
                write!(f, "rule {rule}: not among the {keep} newest")
            }
            Why::Ttl(v) => write!(f, "annotation {TTL}={v}"),
            Why::Expires(v) => write!(f, "annotation {EXPIRES}={v}"),
        }
    }
}

/// An object due for deletion.
#[derive(Clone, Debug, PartialEq)]
pub struct Due {
    /// Index into the candidates.
    pub index: usize,
    /// When it became due.
    pub at: Timestamp,
    pub why: Why,
}

/// An annotation value that is not understood.
#[derive(Clone, Debug, PartialEq)]
pub struct InvalidAnnotation {
    pub index: usize,
    pub annotation: &'static str,
    pub value: String,
    pub message: String,
}

/// The outcome of selection.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Selection {
    /// Due objects, the longest overdue first.
    pub due: Vec<Due>,
    /// The earliest expiry still in the future.
    pub next_expiry: Option<Timestamp>,
    pub invalid: Vec<InvalidAnnotation>,
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// Whether an object may never be collected, whatever the rules say: being
/// deleted already, or managed by Palisade (in `managed`, or owned by a
/// `palisade.dev` object). Never because of a label or annotation the tenant
/// could write.
pub fn protected(c: &Candidate, managed: &BTreeSet<ManagedKey>) -> bool {
    c.deleting
        || c.palisade_owned
        || managed.contains(&(c.kind.clone(), c.namespace.clone(), c.name.clone()))
}

/// Selects what is due at `now`; `managed` is what Palisade itself writes in
/// the tenant's namespaces (never collected).
pub fn select(
    candidates: &[Candidate],
    rules: &[Rule],
    annotation_kinds: &BTreeSet<KindKey>,
    namespaces: &BTreeSet<String>,
    managed: &BTreeSet<ManagedKey>,
    now: Timestamp,
) -> Selection {
    let mut out = Selection::default();
    // Earliest expiry per candidate.
    let mut expiry: BTreeMap<usize, (Timestamp, Why)> = BTreeMap::new();
    let mut consider = |i: usize, at: Timestamp, why: Why| {
        let e = expiry.entry(i).or_insert_with(|| (at, why.clone()));
        if at < e.0 {
            *e = (at, why);
        }
    };
    let mut eligible = vec![false; candidates.len()];
    for (i, c) in candidates.iter().enumerate() {
        if !namespaces.contains(&c.namespace) || protected(c, managed) {
            continue;
        }
        // An invalid annotation is reported and counts as absent: the rules
        // still apply (a tenant-written value never exempts an object).
        if annotation_kinds.contains(&c.kind) {
            if let Some(v) = c.annotations.get(TTL) {
                match duration::parse_positive(v) {
                    Ok(d) => consider(i, plus(c.created, d), Why::Ttl(v.clone())),
                    Err(e) => {
                        out.invalid.push(InvalidAnnotation {
                            index: i,
                            annotation: TTL,
                            value: v.clone(),
                            message: e.to_string(),
                        });
                    }
                }
            }
            if let Some(v) = c.annotations.get(EXPIRES) {
                match v.trim().parse::<Timestamp>() {
                    Ok(at) => consider(i, at, Why::Expires(v.clone())),
                    Err(_) => {
                        out.invalid.push(InvalidAnnotation {
                            index: i,
                            annotation: EXPIRES,
                            value: v.clone(),
                            message: format!(
                                "'{v}' is not an RFC 3339 time (e.g. 2026-01-31T18:00:00Z)"
                            ),
                        });
                    }
                }
            }
        }
        eligible[i] = true;
    }
    for rule in rules {
        // Matching objects per namespace, newest first.
        let mut by_ns: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, c) in candidates.iter().enumerate() {
            if eligible[i] && rule.covers(c) {
                by_ns.entry(c.namespace.as_str()).or_default().push(i);
            }
        }
        for (_, mut members) in by_ns {
            members.sort_by(|&a, &b| {
                let (a, b) = (&candidates[a], &candidates[b]);
                b.created.cmp(&a.created).then_with(|| b.name.cmp(&a.name))
            });
            let keep = rule.keep_last.unwrap_or(0) as usize;
            for &i in members.iter().skip(keep) {
                let c = &candidates[i];
                let from = match rule.age_from {
                    AgeFrom::Creation => Some(c.created),
                    AgeFrom::Completion => c.completed,
                };
                let Some(from) = from else {
                    // Still running: never due under a completion rule.
                    continue;
                };
                match rule.max_age {
                    Some(age) => consider(
                        i,
                        plus(from, age),
                        Why::MaxAge {
                            rule: rule.name.clone(),
                            max_age: format_duration(age),
                        },
                    ),
                    None => consider(
                        i,
                        from,
                        Why::KeepLast {
                            rule: rule.name.clone(),
                            keep: rule.keep_last.unwrap_or(0),
                        },
                    ),
                }
            }
        }
    }
    for (i, (at, why)) in expiry {
        if !eligible[i] {
            continue;
        }
        if at <= now {
            out.due.push(Due { index: i, at, why });
        } else if out.next_expiry.is_none_or(|n| at < n) {
            out.next_expiry = Some(at);
        }
    }
    out.due.sort_by(|a, b| {
        a.at.cmp(&b.at)
            .then_with(|| candidates[a.index].name.cmp(&candidates[b.index].name))
    });
    out
}

/// A duration as users write them (`1h30m`, `7d`).
pub fn format_duration(d: Duration) -> String {
    let mut ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    for (unit, size) in [
        ("w", 604_800_000u128),
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
        ("ms", 1),
    ] {
        if ms >= size {
            out.push_str(&format!("{}{unit}", ms / size));
            ms %= size;
        }
    }
    out
}

/// Per-tenant deletion budget over a sliding minute.
#[derive(Clone, Debug, Default)]
pub struct RateWindow {
    times: std::collections::VecDeque<Timestamp>,
}

impl RateWindow {
    fn expire(&mut self, now: Timestamp) {
        let since = plus(now, Duration::ZERO)
            .checked_sub(SignedDuration::from_secs(60))
            .unwrap_or(Timestamp::MIN);
        while self.times.front().is_some_and(|t| *t <= since) {
            self.times.pop_front();
        }
    }

    /// Deletions still allowed at `now` under `per_minute`.
    pub fn budget(&mut self, now: Timestamp, per_minute: u32) -> usize {
        self.expire(now);
        (per_minute as usize).saturating_sub(self.times.len())
    }

    /// Records one deletion at `now`.
    pub fn record(&mut self, now: Timestamp) {
        self.times.push_back(now);
    }

    /// When the budget next grows (the oldest deletion leaves the window).
    pub fn next_free(&self) -> Option<Timestamp> {
        self.times
            .front()
            .map(|t| plus(*t, Duration::from_secs(60)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::resources::labels;

    static NONE_MANAGED: BTreeSet<ManagedKey> = BTreeSet::new();

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn obj(kind: &str, ns: &str, name: &str, created: i64) -> Candidate {
        Candidate {
            kind: kind.to_string(),
            namespace: ns.to_string(),
            name: name.to_string(),
            uid: format!("uid-{ns}-{name}"),
            labels: BTreeMap::new(),
            annotations: BTreeMap::new(),
            created: t(created),
            completed: None,
            deleting: false,
            palisade_owned: false,
        }
    }

    fn with_ann(mut c: Candidate, k: &str, v: &str) -> Candidate {
        c.annotations.insert(k.into(), v.into());
        c
    }

    fn with_label(mut c: Candidate, k: &str, v: &str) -> Candidate {
        c.labels.insert(k.into(), v.into());
        c
    }

    fn rule(yaml: &str, kinds: &[&str]) -> Rule {
        let spec: GcRule = serde_yaml::from_str(yaml).expect("rule yaml");
        Rule::compile(&spec, kinds.iter().map(|k| k.to_string()).collect()).expect("rule")
    }

    const CM: &str = "/ConfigMap";
    const JOB: &str = "batch/Job";

    fn ns(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    /// [`select`] by `rules` alone (no kind limits, nothing managed) in namespace
    /// `a`, at `now` seconds.
    fn select_by_rules(objs: &[Candidate], rules: &[Rule], now: i64) -> Selection {
        select(
            objs,
            rules,
            &BTreeSet::new(),
            &ns(&["a"]),
            &NONE_MANAGED,
            t(now),
        )
    }

    fn due_names(objs: &[Candidate], s: &Selection) -> Vec<String> {
        s.due.iter().map(|d| objs[d.index].name.clone()).collect()
    }

    #[test]
    fn max_age_is_due_exactly_at_the_deadline() {
        let objs = vec![obj(CM, "a", "x", 0)];
        let rules = vec![rule("{name: old, kinds: [ConfigMap], maxAge: 1h}", &[CM])];
        let table = [
            (3599, vec![], Some(t(3600))),
            (3600, vec!["x"], None),
            (9999, vec!["x"], None),
        ];
        for (now, due, next) in table {
            let s = select_by_rules(&objs, &rules, now);
            assert_eq!(due_names(&objs, &s), due, "now +{now}s");
            assert_eq!(s.next_expiry, next, "now +{now}s");
        }
        let s = select_by_rules(&objs, &rules, 3600);
        assert_eq!(
            s.due[0].why,
            Why::MaxAge {
                rule: "old".into(),
                max_age: "1h".into()
            }
        );
        assert_eq!(s.due[0].at, t(3600));
    }

    #[test]
    fn keep_last_keeps_the_newest_per_namespace() {
        let objs = vec![
            obj(CM, "a", "r1", 0),
            obj(CM, "a", "r2", 10),
            obj(CM, "a", "r3", 20),
            obj(CM, "a", "r4", 20), // same second as r3: the name breaks the tie
            obj(CM, "b", "r1", 0),
        ];
        let none = BTreeSet::new();
        let both = ns(&["a", "b"]);
        // keepLast alone: everything beyond the 2 newest is due now.
        let rules = vec![rule("{name: k, kinds: [ConfigMap], keepLast: 2}", &[CM])];
        let s = select(&objs, &rules, &none, &both, &NONE_MANAGED, t(30));
        assert_eq!(due_names(&objs, &s), vec!["r1", "r2"]);
        assert!(s.due.iter().all(|d| objs[d.index].namespace == "a"));
        // With maxAge: beyond the newest 2 and older than 15s.
        let rules = vec![rule(
            "{name: k, kinds: [ConfigMap], keepLast: 2, maxAge: 15s}",
            &[CM],
        )];
        let s = select(&objs, &rules, &none, &both, &NONE_MANAGED, t(20));
        assert_eq!(due_names(&objs, &s), vec!["r1"]);
        assert_eq!(s.next_expiry, Some(t(25)), "r2 expires at 10+15");
        // keepLast protects even past maxAge.
        let s = select(&objs, &rules, &none, &both, &NONE_MANAGED, t(10_000));
        assert_eq!(due_names(&objs, &s), vec!["r1", "r2"]);
    }

    #[test]
    fn annotations_ttl_and_expires_and_the_earliest_wins() {
        let objs = vec![
            with_ann(obj(CM, "a", "ttl", 0), TTL, "90s"),
            with_ann(obj(CM, "a", "exp", 0), EXPIRES, "2027-01-15T08:01:00Z"),
            with_ann(
                with_ann(obj(CM, "a", "both", 0), TTL, "1h"),
                EXPIRES,
                "2027-01-15T08:00:30Z",
            ),
            with_ann(obj(JOB, "a", "not-an-annotation-kind", 0), TTL, "1s"),
        ];
        let kinds: BTreeSet<KindKey> = [CM.to_string()].into();
        // t(0) = 2027-01-15T08:00:00Z
        let s = select(&objs, &[], &kinds, &ns(&["a"]), &NONE_MANAGED, t(30));
        assert_eq!(due_names(&objs, &s), vec!["both"]);
        assert_eq!(s.due[0].why, Why::Expires("2027-01-15T08:00:30Z".into()));
        assert_eq!(s.next_expiry, Some(t(60)));
        let s = select(&objs, &[], &kinds, &ns(&["a"]), &NONE_MANAGED, t(90));
        assert_eq!(due_names(&objs, &s), vec!["both", "exp", "ttl"]);
        assert_eq!(s.due[2].why, Why::Ttl("90s".into()));
    }

    /// Issue #30: an invalid annotation is reported and counts as absent: it
    /// never exempts the object from the Tenant's rules (nor deletes it alone).
    #[test]
    fn invalid_annotations_are_reported_and_count_as_absent() {
        let rules = vec![rule("{name: all, kinds: [ConfigMap], maxAge: 1h}", &[CM])];
        let kinds: BTreeSet<KindKey> = [CM.to_string()].into();
        let table = [
            (TTL, "soon"),
            (TTL, "abc"),
            (TTL, "1.5h"),
            (TTL, "0s"),
            (TTL, "-5m"),
            (EXPIRES, "tomorrow"),
            (EXPIRES, "2026-13-01T00:00:00Z"),
        ];
        for (ann, value) in table {
            let objs = vec![with_ann(obj(CM, "a", "x", 0), ann, value)];
            // Before the rule's maxAge: not due (the value deletes nothing by itself).
            let s = select(&objs, &rules, &kinds, &ns(&["a"]), &NONE_MANAGED, t(3599));
            assert!(s.due.is_empty(), "{ann}={value} deleted early");
            assert_eq!(s.next_expiry, Some(t(3600)), "{ann}={value}");
            assert_eq!(s.invalid.len(), 1, "{ann}={value}");
            assert_eq!(s.invalid[0].annotation, ann);
            assert_eq!(s.invalid[0].value, value);
            // At the rule's maxAge: due under the rule, as without the annotation.
            let s = select(&objs, &rules, &kinds, &ns(&["a"]), &NONE_MANAGED, t(3600));
            assert_eq!(due_names(&objs, &s), vec!["x"], "{ann}={value} exempted");
            assert_eq!(
                s.due[0].why,
                Why::MaxAge {
                    rule: "all".into(),
                    max_age: "1h".into()
                }
            );
        }
        // A valid annotation still shortens the life; a long one does not extend it.
        let objs = vec![
            with_ann(obj(CM, "a", "short", 0), TTL, "10m"),
            with_ann(obj(CM, "a", "long", 0), TTL, "30d"),
        ];
        let s = select(&objs, &rules, &kinds, &ns(&["a"]), &NONE_MANAGED, t(600));
        assert_eq!(due_names(&objs, &s), vec!["short"]);
        let s = select(&objs, &rules, &kinds, &ns(&["a"]), &NONE_MANAGED, t(3600));
        assert_eq!(due_names(&objs, &s), vec!["short", "long"]);
    }

    /// Issue #30: what Palisade really manages is protected (by name, or by a
    /// palisade.dev owner); a managed-by label, a tenant label or the former
    /// `palisade.dev/keep` annotation is not.
    #[test]
    fn protected_objects_and_other_namespaces_are_never_candidates() {
        let rules = vec![rule("{name: all, kinds: [ConfigMap], maxAge: 1s}", &[CM])];
        let kinds: BTreeSet<KindKey> = [CM.to_string()].into();
        let mut deleting = obj(CM, "a", "deleting", 0);
        deleting.deleting = true;
        let mut backup_config = obj(CM, "a", "nightly-config", 0);
        backup_config.palisade_owned = true;
        let objs = vec![
            with_ann(obj(CM, "a", "kept", 0), "palisade.dev/keep", "true"),
            with_label(obj(CM, "a", "labelled", 0), labels::MANAGED_BY, "palisade"),
            with_label(
                with_label(
                    obj(CM, "a", "tenant-labelled", 0),
                    labels::MANAGED_BY,
                    "palisade",
                ),
                labels::TENANT,
                "acme",
            ),
            obj(CM, "a", "key-jwks", 0),
            obj(CM, "b", "key-jwks", 0),
            backup_config,
            deleting,
            obj(CM, "other-tenant", "theirs", 0),
        ];
        let managed: BTreeSet<ManagedKey> =
            [(CM.to_string(), "a".to_string(), "key-jwks".to_string())].into();
        let s = select(&objs, &rules, &kinds, &ns(&["a", "b"]), &managed, t(100));
        assert_eq!(
            due_names(&objs, &s),
            vec!["kept", "key-jwks", "labelled", "tenant-labelled"]
        );
        assert_eq!(
            objs[s.due[1].index].namespace, "b",
            "a managed name is protected in its own namespace only"
        );
    }

    #[test]
    fn only_palisade_dev_owners_count() {
        assert!(palisade_owner("palisade.dev/v1alpha1"));
        for other in [
            "v1",
            "batch/v1",
            "palisade.dev",
            "palisade.dev.evil/v1",
            "x.palisade.dev/v1",
        ] {
            assert!(!palisade_owner(other), "{other}");
        }
    }

    #[test]
    fn selectors_and_kinds_limit_rules() {
        let rules = vec![rule(
            "{name: runs, kinds: [ConfigMap], maxAge: 1s, selector: {matchExpressions: [{key: kind, operator: In, values: [run]}]}}",
            &[CM],
        )];
        let objs = vec![
            with_label(obj(CM, "a", "run", 0), "kind", "run"),
            with_label(obj(CM, "a", "config", 0), "kind", "config"),
            with_label(obj(JOB, "a", "job", 0), "kind", "run"),
        ];
        let s = select_by_rules(&objs, &rules, 100);
        assert_eq!(due_names(&objs, &s), vec!["run"]);
    }

    #[test]
    fn completion_age_counts_from_completion_and_skips_running_jobs() {
        let rules = vec![rule(
            "{name: jobs, kinds: [Job], maxAge: 1h, ageFrom: Completion}",
            &[JOB],
        )];
        let mut done = obj(JOB, "a", "done", 0);
        done.completed = Some(t(1800));
        let running = obj(JOB, "a", "running", 0);
        let objs = vec![done, running];
        let s = select_by_rules(&objs, &rules, 3600);
        assert!(s.due.is_empty());
        assert_eq!(s.next_expiry, Some(t(5400)));
        let s = select_by_rules(&objs, &rules, 5400);
        assert_eq!(due_names(&objs, &s), vec!["done"]);
    }

    #[test]
    fn rate_window_slides_over_a_minute() {
        let mut w = RateWindow::default();
        assert_eq!(w.budget(t(0), 2), 2);
        w.record(t(0));
        w.record(t(1));
        assert_eq!(w.budget(t(59), 2), 0);
        assert_eq!(w.next_free(), Some(t(60)));
        assert_eq!(w.budget(t(60), 2), 1);
        assert_eq!(w.budget(t(61), 2), 2);
    }

    #[test]
    fn durations_format_like_the_spec() {
        assert_eq!(format_duration(Duration::from_secs(5400)), "1h30m");
        assert_eq!(format_duration(Duration::from_secs(7 * 86400)), "1w");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
    }
}
