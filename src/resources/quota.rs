//! ResourceQuota and LimitRange per tenant namespace, and the spreading of a
//! tenant-wide budget (`scope: Tenant`) over its namespaces.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::{
    LimitRange, LimitRangeItem, LimitRangeSpec, ResourceQuota, ResourceQuotaSpec,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

use super::labels;
use super::{Invalid, invalid};
use crate::crd::tenant::{LimitsSpec, QuotaScope, QuotaSpec};
use crate::quantity::Milli;

pub const QUOTA_NAME: &str = "palisade-quota";
pub const LIMITS_NAME: &str = "palisade-limits";

/// Quota keys the API server counts in whole objects (`IsIntegerResourceName`;
/// extended resources and `count/…` are whole too, see [`is_integer_key`]).
const INTEGER_KEYS: &[&str] = &[
    "pods",
    "resourcequotas",
    "services",
    "replicationcontrollers",
    "secrets",
    "configmaps",
    "persistentvolumeclaims",
    "services.nodeports",
    "services.loadbalancers",
];

/// Unprefixed quota keys the API server knows (`IsStandardQuotaResourceName`),
/// besides [`INTEGER_KEYS`] and the hugepages ones.
const COMPUTE_KEYS: &[&str] = &[
    "cpu",
    "memory",
    "ephemeral-storage",
    "requests.cpu",
    "requests.memory",
    "requests.storage",
    "requests.ephemeral-storage",
    "limits.cpu",
    "limits.memory",
    "limits.ephemeral-storage",
];

/// Unprefixed resources a container LimitRange may name.
const CONTAINER_KEYS: &[&str] = &["cpu", "memory", "ephemeral-storage"];

/// Outside the `kubernetes.io/` namespace and qualified once prefixed with
/// `requests.` (`IsExtendedResourceName`): a device plugin's resource, or a
/// `count/…` or per-StorageClass quota key.
fn is_extended(key: &str) -> bool {
    key.contains('/')
        && !key.contains("kubernetes.io/")
        && !key.starts_with("requests.")
        && labels::is_qualified_name(&format!("requests.{key}"))
}

fn is_integer_key(key: &str) -> bool {
    INTEGER_KEYS.contains(&key) || is_extended(key)
}

fn is_quota_key(key: &str) -> bool {
    if !labels::is_qualified_name(key) {
        return false;
    }
    key.contains('/')
        || INTEGER_KEYS.contains(&key)
        || COMPUTE_KEYS.contains(&key)
        || ["hugepages-", "requests.hugepages-", "limits.hugepages-"]
            .iter()
            .any(|p| key.starts_with(p))
}

fn is_container_key(key: &str) -> bool {
    if !labels::is_qualified_name(key) {
        return false;
    }
    match key.contains('/') {
        false => CONTAINER_KEYS.contains(&key) || key.starts_with("hugepages-"),
        true => key.contains("kubernetes.io/") || is_extended(key),
    }
}

/// A quantity that is zero or more.
fn nonnegative(path: &str, q: &Quantity) -> Result<Milli, Invalid> {
    let value = Milli::parse(&q.0).map_err(|e| invalid("InvalidQuantity", path, e.to_string()))?;
    if value.is_negative() {
        return Err(invalid(
            "NegativeQuantity",
            path,
            format!(
                "'{}' is negative; quotas and limits must be zero or more",
                q.0
            ),
        ));
    }
    Ok(value)
}

/// Every check the API server makes on the ResourceQuota Palisade would
/// build, made before anything is applied: known or qualified keys,
/// quantities of zero or more, whole numbers for object counts.
pub fn check_quota(spec: &QuotaSpec) -> Result<(), Invalid> {
    for (key, q) in tenant_hard(spec) {
        let path = if spec.hard.contains_key(&key) {
            format!("spec.quota.hard[{key}]")
        } else {
            "spec.quota.storageClasses".to_string()
        };
        if !is_quota_key(&key) {
            return Err(invalid(
                "InvalidQuotaKey",
                path,
                format!(
                    "'{key}' is not a resource a ResourceQuota can limit (e.g. pods, requests.cpu, limits.memory, requests.storage, count/deployments.apps, <class>.storageclass.storage.k8s.io/requests.storage)"
                ),
            ));
        }
        let value = nonnegative(&path, &q)?;
        if is_integer_key(&key) && value.0 % 1000 != 0 {
            return Err(invalid(
                "InvalidQuantity",
                path,
                format!("'{}' is not a whole number; {key} counts objects", q.0),
            ));
        }
    }
    Ok(())
}

/// Every check the API server makes on the LimitRange Palisade would build,
/// on its defaulted form ([`effective_limits`]): container resources only,
/// quantities of zero or more, and min ≤ defaultRequest ≤ default ≤ max for
/// each resource.
pub fn check_limits(limits: &LimitsSpec) -> Result<(), Invalid> {
    let fields = [
        ("min", &limits.min),
        ("defaultRequest", &limits.default_request),
        ("default", &limits.default),
        ("max", &limits.max),
    ];
    for (name, map) in fields {
        for (key, q) in map {
            let path = format!("spec.limits.{name}[{key}]");
            if !is_container_key(key) {
                return Err(invalid(
                    "InvalidLimitKey",
                    path,
                    format!(
                        "'{key}' is not a container resource (cpu, memory, ephemeral-storage, hugepages-<size> or an extended resource)"
                    ),
                ));
            }
            nonnegative(&path, q)?;
        }
    }
    let e = effective_limits(limits);
    let order = [
        ("min", &e.min),
        ("defaultRequest", &e.default_request),
        ("default", &e.default),
        ("max", &e.max),
    ];
    let keys: BTreeSet<&String> = order.iter().flat_map(|(_, m)| m.keys()).collect();
    for key in keys {
        let set: Vec<(&str, &Quantity)> = order
            .iter()
            .filter_map(|(n, m)| m.get(key).map(|q| (*n, q)))
            .collect();
        for (i, (low_name, low)) in set.iter().enumerate() {
            for (high_name, high) in &set[i + 1..] {
                let (Ok(l), Ok(h)) = (Milli::parse(&low.0), Milli::parse(&high.0)) else {
                    continue;
                };
                if l > h {
                    let given =
                        |n: &str| fields.iter().any(|(f, m)| *f == n && m.contains_key(key));
                    let origin = |n: &str| if given(n) { "" } else { " (defaulted)" };
                    return Err(invalid(
                        "InvalidLimits",
                        format!("spec.limits.{high_name}[{key}]"),
                        format!(
                            "{low_name} {}{} is greater than {high_name} {}{}: limits must satisfy min <= defaultRequest <= default <= max (a missing default is taken from max, a missing defaultRequest from default, then min)",
                            low.0,
                            origin(low_name),
                            high.0,
                            origin(high_name)
                        ),
                    ));
                }
            }
        }
    }
    Ok(())
}

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

/// The first of two writes that move one namespace's quota from `current` to
/// `wanted` hard limits: every limit that goes down (or appears), none that
/// goes up; `None` when nothing goes down.
///
/// A `scope: Tenant` budget moves between namespaces: one namespace's limit
/// is raised by what another's is lowered. Raised first, both would admit
/// for a moment; lowered from a stale view of the usage, the namespace may
/// already hold more than its new limit. So every namespace is lowered first,
/// the lowered quotas' usage is read back ([`exceeds`]), and only then is
/// anything raised.
pub fn lowered_first(
    current: &BTreeMap<String, Quantity>,
    wanted: &BTreeMap<String, Quantity>,
) -> Option<BTreeMap<String, Quantity>> {
    let milli = |q: &Quantity| Milli::parse(&q.0).ok();
    let mut stage = current.clone();
    let mut lowered = false;
    for (resource, want) in wanted {
        let down = match current.get(resource) {
            None => true,
            Some(now) => matches!((milli(now), milli(want)), (Some(n), Some(w)) if w < n),
        };
        if down {
            stage.insert(resource.clone(), want.clone());
            lowered = true;
        }
    }
    lowered.then_some(stage)
}

/// True when a quota's `used` is over its `hard` for some resource: the
/// limits were lowered from a stale view of the usage.
pub fn exceeds(used: &BTreeMap<String, Quantity>, hard: &BTreeMap<String, Quantity>) -> bool {
    hard.iter().any(|(resource, limit)| {
        let used = used.get(resource).and_then(|q| Milli::parse(&q.0).ok());
        matches!((used, Milli::parse(&limit.0).ok()), (Some(u), Some(l)) if u > l)
    })
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
        metadata: labels::managed_meta(tenant, namespace, QUOTA_NAME),
        spec: Some(ResourceQuotaSpec {
            hard: Some(hard),
            ..Default::default()
        }),
        status: None,
    }
}

/// A container LimitRange item's four maps as the API server stores them:
/// `default` filled from `max`, then `defaultRequest` from `default`, then
/// from `min` (kube-apiserver's `SetDefaults_LimitRangeItem`). Palisade
/// applies, validates and compares this form, so what it checks is what the
/// admission plugin enforces, and a converged LimitRange is never seen as
/// drift.
pub fn effective_limits(limits: &LimitsSpec) -> LimitsSpec {
    let mut out = limits.clone();
    for (k, v) in &limits.max {
        out.default.entry(k.clone()).or_insert_with(|| v.clone());
    }
    let defaults = out.default.clone();
    for (k, v) in defaults.iter().chain(&limits.min) {
        out.default_request
            .entry(k.clone())
            .or_insert_with(|| v.clone());
    }
    out
}

/// The LimitRange for one namespace, in the API server's defaulted form
/// ([`effective_limits`]).
pub fn limit_range(tenant: &str, namespace: &str, limits: &LimitsSpec) -> LimitRange {
    let limits = effective_limits(limits);
    let opt = |m: &BTreeMap<String, Quantity>| (!m.is_empty()).then(|| m.clone());
    LimitRange {
        metadata: labels::managed_meta(tenant, namespace, LIMITS_NAME),
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

    fn hard(pairs: &[(&str, &str)]) -> BTreeMap<String, Quantity> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
            .collect()
    }

    /// Lowered now, raised later: a first write holds every limit that goes
    /// down (or appears) and keeps every one that goes up at its current value.
    #[test]
    fn quota_moves_lower_first_and_raise_after() {
        let current = hard(&[("pods", "2"), ("requests.cpu", "1"), ("services", "3")]);
        let wanted = hard(&[
            ("pods", "1"),
            ("requests.cpu", "1500m"),
            ("secrets", "4"),
            ("services", "3"),
        ]);
        assert_eq!(
            lowered_first(&current, &wanted),
            Some(hard(&[
                ("pods", "1"),
                ("requests.cpu", "1"),
                ("secrets", "4"),
                ("services", "3")
            ]))
        );
        // Only raises (or the same amount spelled otherwise): one write.
        assert_eq!(
            lowered_first(&current, &hard(&[("pods", "3"), ("requests.cpu", "1000m")])),
            None
        );
        assert_eq!(lowered_first(&current, &current), None);
    }

    #[test]
    fn usage_over_a_lowered_limit_is_seen() {
        let limit = hard(&[("pods", "1"), ("requests.cpu", "500m")]);
        assert!(exceeds(&hard(&[("pods", "2")]), &limit));
        assert!(exceeds(
            &hard(&[("pods", "1"), ("requests.cpu", "0.6")]),
            &limit
        ));
        assert!(!exceeds(
            &hard(&[("pods", "1"), ("requests.cpu", "500m")]),
            &limit
        ));
        assert!(!exceeds(&hard(&[("services", "9")]), &limit));
    }

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

    /// The API server's defaulting, as kube-apiserver v1.34 does it: max
    /// fills default, default then min fill defaultRequest; given values stay.
    #[test]
    fn limits_take_the_api_servers_defaulted_form() {
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
            pairs.iter().map(|(k, v)| (k.to_string(), q(v))).collect()
        };
        let spec = LimitsSpec {
            default: m(&[("cpu", "500m")]),
            default_request: m(&[("cpu", "100m")]),
            max: m(&[("cpu", "2"), ("memory", "1Gi")]),
            min: m(&[("ephemeral-storage", "1Mi")]),
        };
        let e = effective_limits(&spec);
        assert_eq!(e.default, m(&[("cpu", "500m"), ("memory", "1Gi")]));
        assert_eq!(
            e.default_request,
            m(&[
                ("cpu", "100m"),
                ("memory", "1Gi"),
                ("ephemeral-storage", "1Mi")
            ])
        );
        assert_eq!((e.max, e.min), (spec.max.clone(), spec.min.clone()));
        let lr = limit_range("acme", "acme-a", &spec);
        let item = &lr.spec.expect("spec").limits[0];
        assert_eq!(item.default.as_ref(), Some(&e.default));
        assert_eq!(item.default_request.as_ref(), Some(&e.default_request));
    }

    /// Issue #30: what kube-apiserver v1.34 refuses in a ResourceQuota or a
    /// LimitRange is refused here first, naming the field.
    #[test]
    fn quota_and_limits_are_checked_as_the_api_server_checks_them() {
        let quota = |pairs: &[(&str, &str)]| QuotaSpec {
            hard: pairs.iter().map(|(k, v)| (k.to_string(), q(v))).collect(),
            ..spec(QuotaScope::Namespace)
        };
        for ok in [
            vec![
                ("pods", "10"),
                ("requests.cpu", "1.5"),
                ("limits.memory", "2Gi"),
            ],
            vec![
                ("count/deployments.apps", "5"),
                ("requests.nvidia.com/gpu", "2"),
            ],
            vec![("services.nodeports", "0"), ("hugepages-2Mi", "1Gi")],
        ] {
            assert_eq!(check_quota(&quota(&ok)), Ok(()), "{ok:?}");
        }
        for (bad, reason, field) in [
            (("pods", "1.5"), "InvalidQuantity", "spec.quota.hard[pods]"),
            (
                ("services", "500m"),
                "InvalidQuantity",
                "spec.quota.hard[services]",
            ),
            (
                ("count/jobs.batch", "0.5"),
                "InvalidQuantity",
                "spec.quota.hard[count/jobs.batch]",
            ),
            (("podz", "1"), "InvalidQuotaKey", "spec.quota.hard[podz]"),
            (("pods", "-1"), "NegativeQuantity", "spec.quota.hard[pods]"),
            (("cpu", "lots"), "InvalidQuantity", "spec.quota.hard[cpu]"),
        ] {
            let e = check_quota(&quota(&[bad])).expect_err("refused");
            assert_eq!((e.reason, e.field.as_str()), (reason, field), "{bad:?}");
        }
        let m = |pairs: &[(&str, &str)]| -> BTreeMap<String, Quantity> {
            pairs.iter().map(|(k, v)| (k.to_string(), q(v))).collect()
        };
        let limits = |default: &[(&str, &str)],
                      request: &[(&str, &str)],
                      max: &[(&str, &str)],
                      min: &[(&str, &str)]| LimitsSpec {
            default: m(default),
            default_request: m(request),
            max: m(max),
            min: m(min),
        };
        assert_eq!(
            check_limits(&limits(
                &[("cpu", "500m")],
                &[("cpu", "100m")],
                &[("cpu", "1")],
                &[("cpu", "50m")]
            )),
            Ok(())
        );
        for (l, field) in [
            (
                limits(&[("cpu", "500m")], &[], &[("cpu", "200m")], &[]),
                "spec.limits.max[cpu]",
            ),
            (
                limits(&[("cpu", "100m")], &[("cpu", "200m")], &[], &[]),
                "spec.limits.default[cpu]",
            ),
            // min above max's defaulted default and request.
            (
                limits(&[], &[], &[("memory", "1Gi")], &[("memory", "2Gi")]),
                "spec.limits.defaultRequest[memory]",
            ),
        ] {
            let e = check_limits(&l).expect_err("refused");
            assert_eq!(
                (e.reason, e.field.as_str()),
                ("InvalidLimits", field),
                "{}",
                e.message
            );
        }
        let e = check_limits(&limits(&[("pods", "1")], &[], &[], &[])).expect_err("refused");
        assert_eq!(e.reason, "InvalidLimitKey");
    }

    #[test]
    fn cordoned_quota_allows_no_pods() {
        let rq = resource_quota("t", "t-a", BTreeMap::new(), true);
        assert_eq!(rq.spec.and_then(|s| s.hard).expect("hard")["pods"], q("0"));
    }
}
