//! ResourceQuota and LimitRange per tenant namespace, and the spreading of a
//! tenant-wide budget (`scope: Tenant`) over its namespaces.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

use super::labels;
use crate::crd::tenant::{LimitsSpec, QuotaScope, QuotaSpec};
use crate::quantity::Milli;

pub const QUOTA_NAME: &str = "palisade-quota";
pub const LIMITS_NAME: &str = "palisade-limits";

/// Per-namespace usage, as reported by each namespace's ResourceQuota status.
pub type Usage = BTreeMap<String, BTreeMap<String, Quantity>>;

/// The `hard` map of the tenant spec, with per-StorageClass limits expanded.
/// Quantities are assumed valid (checked by validation first).
pub fn tenant_hard(spec: &QuotaSpec) -> BTreeMap<String, Quantity> {
    let mut hard = spec.hard.clone();
    for sc in &spec.storage_classes {
        let prefix = format!("{}.storageclass.storage.k8s.io", sc.storage_class);
        if let Some(q) = &sc.requests_storage {
            hard.insert(format!("{prefix}/requests.storage"), q.clone());
        }
        if let Some(q) = &sc.persistentvolumeclaims {
            hard.insert(format!("{prefix}/persistentvolumeclaims"), q.clone());
        }
    }
    hard
}

/// Hard limits for each namespace. With `scope: Namespace` every namespace gets
/// the tenant's `hard`. With `scope: Tenant` the budget is shared: each
/// namespace gets what it uses now plus an equal share of the unused headroom,
/// so the sum never exceeds the budget and no namespace is squeezed below its
/// current usage. The remainder of the division is handed out one unit at a
/// time (busiest namespace first, then by name), so while usage is within the
/// budget every unit of it is available somewhere: sum(hard) == budget.
pub fn namespace_hard(
    spec: &QuotaSpec,
    namespaces: &[String],
    usage: &Usage,
) -> BTreeMap<String, BTreeMap<String, Quantity>> {
    let hard = tenant_hard(spec);
    let mut out: BTreeMap<String, BTreeMap<String, Quantity>> = BTreeMap::new();
    for ns in namespaces {
        out.insert(ns.clone(), BTreeMap::new());
    }
    if namespaces.is_empty() {
        return out;
    }
    for (resource, budget) in &hard {
        if spec.scope == QuotaScope::Namespace {
            for ns in namespaces {
                out.entry(ns.clone())
                    .or_default()
                    .insert(resource.clone(), budget.clone());
            }
            continue;
        }
        let budget = Milli::parse(&budget.0).map(|m| m.0).unwrap_or(0);
        let used_of = |ns: &String| -> i128 {
            usage
                .get(ns)
                .and_then(|u| u.get(resource))
                .and_then(|q| Milli::parse(&q.0).ok())
                .map(|m| m.0.max(0))
                .unwrap_or(0)
        };
        let used_total: i128 = namespaces.iter().map(used_of).sum();
        let headroom = (budget - used_total).max(0);
        let n = namespaces.len() as i128;
        // Count-like resources (pods, services, ...) must stay whole numbers.
        let whole = !resource.contains("cpu")
            && !resource.contains("memory")
            && !resource.contains("storage");
        let unit = if whole { 1000 } else { 1 };
        let share = headroom / n / unit * unit;
        let extra = remainder_units(namespaces, &used_of, (headroom - share * n) / unit);
        for ns in namespaces {
            let bonus = if extra.contains(ns) { unit } else { 0 };
            let value = Milli(used_of(ns) + share + bonus);
            out.entry(ns.clone())
                .or_default()
                .insert(resource.clone(), Quantity(value.to_string()));
        }
    }
    out
}

/// The namespaces that get one more unit each: `count` of them (fewer than
/// there are namespaces), the busiest first, then by name. Deterministic for a
/// given usage, and it favours the namespace that is asking for capacity.
fn remainder_units<'a>(
    namespaces: &'a [String],
    used_of: &dyn Fn(&String) -> i128,
    count: i128,
) -> BTreeSet<&'a String> {
    let mut order: Vec<&String> = namespaces.iter().collect();
    order.sort_by(|a, b| used_of(b).cmp(&used_of(a)).then_with(|| a.cmp(b)));
    let count = usize::try_from(count.max(0)).unwrap_or(0);
    order.into_iter().take(count).collect()
}

/// The ResourceQuota for one namespace. Cordoned tenants get `pods: 0`.
pub fn resource_quota(
    tenant: &str,
    namespace: &str,
    hard: BTreeMap<String, Quantity>,
    cordoned: bool,
) -> ResourceQuota {
    let mut hard = hard;
    if cordoned {
        hard.insert("pods".to_string(), Quantity("0".to_string()));
    }
    ResourceQuota {
        metadata: ObjectMeta {
            name: Some(QUOTA_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels::managed(tenant)),
            ..Default::default()
        },
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        status: None,
    }
}

/// The LimitRange for one namespace.
pub fn limit_range(tenant: &str, namespace: &str, limits: &LimitsSpec) -> LimitRange {
    let opt = |m: &BTreeMap<String, Quantity>| (!m.is_empty()).then(|| m.clone());
    LimitRange {
        metadata: ObjectMeta {
            name: Some(LIMITS_NAME.to_string()),
            namespace: Some(namespace.to_string()),
            labels: Some(labels::managed(tenant)),
            ..Default::default()
        },
        spec: Some(LimitRangeSpec {
            limits: vec![LimitRangeItem {
                type_: "Container".to_string(),
                default: opt(&limits.default),
                default_request: opt(&limits.default_request),
                max: opt(&limits.max),
                min: opt(&limits.min),
                max_limit_request_ratio: None,
            }],
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(s: &str) -> Quantity {
        Quantity(s.to_string())
    }

    fn spec(scope: QuotaScope) -> QuotaSpec {
        QuotaSpec {
            scope,
            hard: BTreeMap::from([
                ("requests.cpu".to_string(), q("4")),
                ("pods".to_string(), q("10")),
            ]),
            storage_classes: vec![],
        }
    }

    #[test]
    fn namespace_scope_copies_hard() {
        let ns = vec!["a".to_string(), "b".to_string()];
        let out = namespace_hard(&spec(QuotaScope::Namespace), &ns, &Usage::new());
        assert_eq!(out["a"]["requests.cpu"], q("4"));
        assert_eq!(out["b"]["pods"], q("10"));
    }

    #[test]
    fn tenant_scope_spreads_headroom_and_never_exceeds_budget() {
        let ns = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let usage = Usage::from([(
            "a".to_string(),
            BTreeMap::from([
                ("requests.cpu".to_string(), q("1")),
                ("pods".to_string(), q("4")),
            ]),
        )]);
        let out = namespace_hard(&spec(QuotaScope::Tenant), &ns, &usage);
        // cpu: headroom 3 → 1 each; a keeps its 1 used.
        assert_eq!(out["a"]["requests.cpu"], q("2"));
        assert_eq!(out["b"]["requests.cpu"], q("1"));
        // pods: headroom 6 → 2 each (whole numbers).
        assert_eq!(out["a"]["pods"], q("6"));
        assert_eq!(out["c"]["pods"], q("2"));
        let total: i128 = ns
            .iter()
            .map(|n| Milli::parse(&out[n]["pods"].0).expect("quantity").0)
            .sum();
        assert!(total <= 10_000);
    }

    fn milli_sum(out: &BTreeMap<String, BTreeMap<String, Quantity>>, resource: &str) -> i128 {
        out.values()
            .map(|h| Milli::parse(&h[resource].0).expect("quantity").0)
            .sum()
    }

    #[test]
    fn tenant_scope_hands_out_the_remainder_so_no_unit_is_stranded() {
        // The case: 8 of 10 pods used over three namespaces. Rounding
        // each share down left hard == used everywhere; now the last two pods
        // go to the busiest namespaces (ties by name).
        let ns = vec!["a".to_string(), "b".to_string(), "c".to_string()];
        let usage = Usage::from([
            (
                "a".to_string(),
                BTreeMap::from([("pods".to_string(), q("3"))]),
            ),
            (
                "b".to_string(),
                BTreeMap::from([("pods".to_string(), q("3"))]),
            ),
            (
                "c".to_string(),
                BTreeMap::from([("pods".to_string(), q("2"))]),
            ),
        ]);
        let mut quota = spec(QuotaScope::Tenant);
        quota.hard.insert("requests.cpu".to_string(), q("1"));
        let out = namespace_hard(&quota, &ns, &usage);
        assert_eq!(out["a"]["pods"], q("4"));
        assert_eq!(out["b"]["pods"], q("4"));
        assert_eq!(out["c"]["pods"], q("2"));
        // cpu 1000m over three idle namespaces: 334m + 333m + 333m.
        assert_eq!(out["a"]["requests.cpu"], q("334m"));
        assert_eq!(out["b"]["requests.cpu"], q("333m"));
        assert_eq!(out["c"]["requests.cpu"], q("333m"));
        assert_eq!(milli_sum(&out, "pods"), 10_000);
        assert_eq!(milli_sum(&out, "requests.cpu"), 1_000);
    }

    #[test]
    fn tenant_scope_sum_equals_budget_for_odd_remainders() {
        for n in 1..=7usize {
            let ns: Vec<String> = (0..n).map(|i| format!("ns{i}")).collect();
            for budget in [1i128, 2, 5, 10, 11, 13, 97] {
                for used_first in 0..=budget {
                    let mut quota = spec(QuotaScope::Tenant);
                    quota.hard = BTreeMap::from([
                        ("pods".to_string(), q(&budget.to_string())),
                        ("limits.memory".to_string(), q(&format!("{budget}Mi"))),
                        ("requests.cpu".to_string(), q(&format!("{budget}m"))),
                    ]);
                    let usage = Usage::from([(
                        "ns0".to_string(),
                        BTreeMap::from([("pods".to_string(), q(&used_first.to_string()))]),
                    )]);
                    let out = namespace_hard(&quota, &ns, &usage);
                    assert_eq!(milli_sum(&out, "pods"), budget * 1000, "n={n} b={budget}");
                    assert_eq!(milli_sum(&out, "requests.cpu"), budget, "n={n} b={budget}");
                    assert_eq!(
                        milli_sum(&out, "limits.memory"),
                        budget * 1024 * 1024 * 1000,
                        "n={n} b={budget}"
                    );
                    assert!(Milli::parse(&out["ns0"]["pods"].0).expect("q").0 >= used_first * 1000);
                    // Same input, same answer.
                    assert_eq!(out, namespace_hard(&quota, &ns, &usage));
                }
            }
        }
    }

    #[test]
    fn tenant_scope_over_budget_gives_no_headroom() {
        let ns = vec!["a".to_string(), "b".to_string()];
        let usage = Usage::from([(
            "a".to_string(),
            BTreeMap::from([("pods".to_string(), q("12"))]),
        )]);
        let out = namespace_hard(&spec(QuotaScope::Tenant), &ns, &usage);
        assert_eq!(out["a"]["pods"], q("12"));
        assert_eq!(out["b"]["pods"], q("0"));
    }

    #[test]
    fn cordoned_quota_allows_no_pods() {
        let rq = resource_quota("t", "t-a", BTreeMap::new(), true);
        assert_eq!(rq.spec.and_then(|s| s.hard).expect("hard")["pods"], q("0"));
    }
}
