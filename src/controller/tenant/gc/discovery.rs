//! Which kinds a tenant's garbage collection names, and what the cluster
//! serves under those names.
//!
//! A tenant writes kinds as `Kind`, `Kind.group` or `plural.group`; discovery
//! turns them into [`ApiResource`]s. The discovery snapshot is shared by every
//! tenant and refreshed at most every 30 s, and only when a name is unknown (a
//! CRD installed after the operator started): a typo must not cost a discovery
//! round per reconcile.
//!
//! Not every resolvable kind may be collected: the operator's RBAC grants delete
//! only on the allow-list (`settings.gc_kinds`), and a kind the tenant requires
//! (a rule's kind, or an explicit annotation kind) that is unknown, ambiguous,
//! cluster-scoped or outside the allow-list makes GC unhealthy. The default
//! annotation kinds are best effort: a cluster without one of them is fine.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use kube::Client;
use kube::core::ApiResource;
use kube::discovery::{Discovery, Scope, verbs};
use tracing::debug;

use super::Error;
use super::status::Problems;
use crate::crd::tenant::GarbageCollectionSpec;
use crate::resources::gc as model;

/// At most one discovery refresh per this long (asked by unknown kinds).
const DISCOVERY_REFRESH: Duration = Duration::from_secs(30);

/// What discovery says about a kind name.
#[derive(Clone, Debug)]
pub(super) enum Resolved {
    Found(ApiResource),
    Problem(String),
}

/// The kind names one tenant's spec mentions.
#[derive(Debug, Default, PartialEq)]
pub(super) struct Wanted {
    /// Every name to resolve.
    pub all: BTreeSet<String>,
    /// The kinds honouring the TTL annotations.
    pub annotation: BTreeSet<String>,
    /// Names that must resolve (and be allowed) for GC to be healthy.
    pub required: BTreeSet<String>,
}

/// The kinds `spec` names: the rules', and the annotation kinds (explicit, or
/// the defaults plus the rules'). Explicit annotation kinds are required; the
/// defaults are not.
pub(super) fn wanted(spec: &GarbageCollectionSpec) -> Wanted {
    let rules: BTreeSet<String> = spec.rules.iter().flat_map(|r| r.kinds.clone()).collect();
    let explicit = !spec.annotation_kinds.is_empty();
    let annotation: BTreeSet<String> = if explicit {
        spec.annotation_kinds.iter().cloned().collect()
    } else {
        model::DEFAULT_ANNOTATION_KINDS
            .iter()
            .map(|s| s.to_string())
            .chain(rules.iter().cloned())
            .collect()
    };
    let required = if explicit {
        rules.union(&annotation).cloned().collect()
    } else {
        rules.clone()
    };
    Wanted {
        all: rules.union(&annotation).cloned().collect(),
        annotation,
        required,
    }
}

/// Splits resolved names into the usable kinds (resolved and allowed) and the
/// problems of required names. `allowed` is the allow-list as (group, plural).
pub(super) fn classify(
    resolved: &BTreeMap<String, Resolved>,
    required: &BTreeSet<String>,
    allowed: &[(String, String)],
) -> (BTreeMap<String, ApiResource>, Problems) {
    let is_allowed = |ar: &ApiResource| {
        allowed
            .iter()
            .any(|(g, r)| *g == ar.group && *r == ar.plural)
    };
    let mut usable = BTreeMap::new();
    let mut problems = Problems::default();
    for (n, r) in resolved {
        match r {
            Resolved::Found(ar) if is_allowed(ar) => {
                usable.insert(n.clone(), ar.clone());
            }
            Resolved::Found(ar) if required.contains(n) => problems.not_allowed(format!(
                "kind {n} ({}) is not in the operator's garbage-collection allow-list; \
                 the platform team can add it (Helm value rbac.garbageCollectionKinds, which grants Palisade delete on it in tenant namespaces)",
                if ar.group.is_empty() {
                    ar.plural.clone()
                } else {
                    format!("{}.{}", ar.plural, ar.group)
                }
            )),
            Resolved::Problem(p) if required.contains(n) => problems.unknown_kind(p.clone()),
            Resolved::Found(_) | Resolved::Problem(_) => {}
        }
    }
    (usable, problems)
}

/// The shared discovery snapshot.
#[derive(Default)]
pub(super) struct DiscoveryCache {
    discovery: Option<Discovery>,
    refreshed: Option<Instant>,
}

impl DiscoveryCache {
    /// Resolves kind names ('Kind', 'Kind.group', 'plural.group') through
    /// discovery, refreshing it (at most every 30 s) when a name is unknown.
    pub(super) async fn resolve(
        &mut self,
        client: &Client,
        names: &BTreeSet<String>,
    ) -> Result<BTreeMap<String, Resolved>, Error> {
        let stale = self
            .refreshed
            .is_none_or(|t| t.elapsed() >= DISCOVERY_REFRESH);
        let needs_refresh = match &self.discovery {
            None => true,
            Some(d) => {
                stale
                    && names
                        .iter()
                        .any(|n| matches!(resolve_in(d, n), Resolved::Problem(_)))
            }
        };
        if needs_refresh {
            self.discovery = Some(run(client).await?);
            self.refreshed = Some(Instant::now());
        }
        let Some(d) = &self.discovery else {
            return Ok(BTreeMap::new());
        };
        Ok(names
            .iter()
            .map(|n| (n.clone(), resolve_in(d, n)))
            .collect())
    }
}

/// One discovery round: aggregated when the server supports it.
async fn run(client: &Client) -> Result<Discovery, Error> {
    match Discovery::new(client.clone()).run_aggregated().await {
        Ok(d) => Ok(d),
        Err(e) => {
            debug!(error = %e, "aggregated discovery failed; falling back");
            Discovery::new(client.clone())
                .run()
                .await
                .map_err(|source| Error::Kube {
                    action: "discovery",
                    source: Box::new(source),
                })
        }
    }
}

/// Resolves one kind name against a discovery snapshot.
pub(super) fn resolve_in(d: &Discovery, name: &str) -> Resolved {
    let (base, group) = match name.split_once('.') {
        Some((b, g)) => (b, Some(g)),
        None => (name, None),
    };
    let mut found = Vec::new();
    for g in d.groups() {
        if group.is_some_and(|want| want != g.name()) {
            continue;
        }
        for (ar, caps) in g.recommended_resources() {
            if ar.kind.eq_ignore_ascii_case(base) || ar.plural.eq_ignore_ascii_case(base) {
                found.push((ar, caps));
            }
        }
    }
    let pick = if found.len() > 1 && group.is_none() {
        // A bare kind means the core group when it has one.
        match found.iter().position(|(ar, _)| ar.group.is_empty()) {
            Some(i) => Some(found.swap_remove(i)),
            None => {
                let groups: Vec<String> = found
                    .iter()
                    .map(|(ar, _)| format!("{}.{}", ar.kind, ar.group))
                    .collect();
                return Resolved::Problem(format!(
                    "kind {name} is ambiguous; write one of {}",
                    groups.join(", ")
                ));
            }
        }
    } else {
        found.into_iter().next()
    };
    let Some((ar, caps)) = pick else {
        return Resolved::Problem(format!("kind {name} is not served by the cluster"));
    };
    if caps.scope != Scope::Namespaced {
        return Resolved::Problem(format!(
            "kind {name} is cluster-scoped; only objects in tenant namespaces are collected"
        ));
    }
    for verb in [verbs::LIST, verbs::WATCH, verbs::DELETE] {
        if !caps.supports_operation(verb) {
            return Resolved::Problem(format!("kind {name} does not support {verb}"));
        }
    }
    Resolved::Found(ar)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::tenant::GcRule;

    fn set(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    fn spec(rule_kinds: &[&[&str]], annotation_kinds: &[&str]) -> GarbageCollectionSpec {
        GarbageCollectionSpec {
            rules: rule_kinds
                .iter()
                .map(|k| GcRule {
                    kinds: k.iter().map(|s| s.to_string()).collect(),
                    ..Default::default()
                })
                .collect(),
            annotation_kinds: annotation_kinds.iter().map(|s| s.to_string()).collect(),
            dry_run: false,
            max_deletions_per_minute: 60,
        }
    }

    #[test]
    fn wanted_kinds_table() {
        let defaults = set(&[
            "ConfigMap",
            "Secret",
            "Job.batch",
            "PersistentVolumeClaim",
            "Pod",
        ]);
        let with = |extra: &[&str]| {
            let mut s = defaults.clone();
            s.extend(set(extra));
            s
        };
        // (rule kinds, annotation kinds) -> (all, annotation, required)
        let cases: Vec<(Wanted, Wanted)> = vec![
            (
                wanted(&spec(&[], &[])),
                Wanted {
                    all: defaults.clone(),
                    annotation: defaults.clone(),
                    required: set(&[]),
                },
            ),
            (
                // Rule kinds join the default annotation kinds; only they are required.
                wanted(&spec(&[&["Job.batch", "Run.ci.example"]], &[])),
                Wanted {
                    all: with(&["Run.ci.example"]),
                    annotation: with(&["Run.ci.example"]),
                    required: set(&["Job.batch", "Run.ci.example"]),
                },
            ),
            (
                // Explicit annotation kinds replace the defaults and are required.
                wanted(&spec(&[&["Pod"]], &["Widget.example"])),
                Wanted {
                    all: set(&["Pod", "Widget.example"]),
                    annotation: set(&["Widget.example"]),
                    required: set(&["Pod", "Widget.example"]),
                },
            ),
            (
                wanted(&spec(&[&["Pod"], &["Pod", "Secret"]], &["Secret"])),
                Wanted {
                    all: set(&["Pod", "Secret"]),
                    annotation: set(&["Secret"]),
                    required: set(&["Pod", "Secret"]),
                },
            ),
        ];
        for (i, (got, want)) in cases.into_iter().enumerate() {
            assert_eq!(got, want, "case {i}");
        }
    }

    fn ar(group: &str, kind: &str, plural: &str) -> ApiResource {
        ApiResource {
            group: group.into(),
            version: "v1".into(),
            api_version: if group.is_empty() {
                "v1".into()
            } else {
                format!("{group}/v1")
            },
            kind: kind.into(),
            plural: plural.into(),
        }
    }

    #[test]
    fn classify_table() {
        let allowed = vec![
            (String::new(), "configmaps".to_string()),
            ("batch".to_string(), "jobs".to_string()),
        ];
        let resolved: BTreeMap<String, Resolved> = [
            (
                "ConfigMap",
                Resolved::Found(ar("", "ConfigMap", "configmaps")),
            ),
            ("Job.batch", Resolved::Found(ar("batch", "Job", "jobs"))),
            ("Pod", Resolved::Found(ar("", "Pod", "pods"))),
            ("Run.ci", Resolved::Found(ar("ci", "Run", "runs"))),
            (
                "Nope",
                Resolved::Problem("kind Nope is not served by the cluster".into()),
            ),
        ]
        .into_iter()
        .map(|(n, r)| (n.to_string(), r))
        .collect();
        // required -> (usable names, unknown, not allowed, problem count)
        type Case<'a> = (&'a [&'a str], &'a [&'a str], bool, bool, usize);
        let cases: &[Case] = &[
            (&[], &["ConfigMap", "Job.batch"], false, false, 0),
            (&["ConfigMap"], &["ConfigMap", "Job.batch"], false, false, 0),
            (&["Pod"], &["ConfigMap", "Job.batch"], false, true, 1),
            (&["Nope"], &["ConfigMap", "Job.batch"], true, false, 1),
            (
                &["Nope", "Pod", "Run.ci"],
                &["ConfigMap", "Job.batch"],
                true,
                true,
                3,
            ),
        ];
        for (required, usable, unknown, not_allowed, count) in cases {
            let (got, problems) = classify(&resolved, &set(required), &allowed);
            let names: Vec<&str> = got.keys().map(String::as_str).collect();
            assert_eq!(names, *usable, "usable for {required:?}");
            assert_eq!(
                problems.has_unknown_kind(),
                *unknown,
                "unknown for {required:?}"
            );
            assert_eq!(
                problems.has_not_allowed(),
                *not_allowed,
                "not allowed for {required:?}"
            );
            assert_eq!(
                problems.messages().len(),
                *count,
                "problems for {required:?}"
            );
        }
        let (_, problems) = classify(&resolved, &set(&["Pod", "Run.ci"]), &allowed);
        assert!(
            problems.messages()[0].contains("(pods)"),
            "{:?}",
            problems.messages()
        );
        assert!(
            problems.messages()[1].contains("(runs.ci)"),
            "{:?}",
            problems.messages()
        );
    }
}
