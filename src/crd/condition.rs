//! The `metav1.Condition` list every Palisade status carries, and the one pure
//! function that updates it.

pub use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;

/// The three values of `Condition.status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}

impl ConditionStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionStatus::True => "True",
            ConditionStatus::False => "False",
            ConditionStatus::Unknown => "Unknown",
        }
    }
}

impl From<bool> for ConditionStatus {
    fn from(ok: bool) -> Self {
        if ok {
            ConditionStatus::True
        } else {
            ConditionStatus::False
        }
    }
}

/// What a reconcile concluded about one condition type; turned into a
/// `metav1.Condition` by [`merge_conditions`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub type_: &'static str,
    pub status: ConditionStatus,
    /// CamelCase, machine-readable, bounded set per controller.
    pub reason: String,
    /// For humans: what is wrong and how to fix it.
    pub message: String,
}

impl Observed {
    pub fn new(
        type_: &'static str,
        status: impl Into<ConditionStatus>,
        reason: impl Into<String>,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status: status.into(),
            reason: reason.into(),
            message: message.into(),
        }
    }
}

/// kstatus's `Reconciling`: the controller is still working towards the spec.
pub const RECONCILING: &str = "Reconciling";
/// kstatus's `Stalled`: progress needs a human (invalid spec, conflict, missing
/// Secret, failing runs).
pub const STALLED: &str = "Stalled";

/// The kstatus "abnormal-true" condition that goes with a `Ready` observation,
/// so Flux, `kubectl wait` and cli-utils read the object right: none when Ready
/// is True (both absent: settled, kstatus `Current`); `Stalled=True` when
/// `stalled` (kstatus `Failed`); else `Reconciling=True` (kstatus
/// `InProgress`). It carries Ready's reason and message. [`merge_conditions`]
/// drops either one from the previous list when it is not observed again.
pub fn progress(ready: &Observed, stalled: bool) -> Option<Observed> {
    if ready.status == ConditionStatus::True {
        return None;
    }
    let type_ = if stalled { STALLED } else { RECONCILING };
    Some(Observed::new(
        type_,
        true,
        ready.reason.clone(),
        ready.message.clone(),
    ))
}

/// Builds the new condition list from the previous one and what was observed now.
///
/// `lastTransitionTime` is kept unless the status of that condition flips, so an
/// unchanged observation yields an identical list (and the status write can be
/// skipped). Conditions not observed this time are kept as they were, except
/// `Reconciling` and `Stalled`, which kstatus wants absent once they no longer
/// hold (see [`progress`]); the result is sorted by type so the order never
/// causes a spurious diff.
pub fn merge_conditions(
    previous: &[Condition],
    observed: &[Observed],
    generation: Option<i64>,
    now: Timestamp,
) -> Vec<Condition> {
    let mut out: Vec<Condition> = previous
        .iter()
        .filter(|c| !observed.iter().any(|o| o.type_ == c.type_))
        .filter(|c| c.type_ != RECONCILING && c.type_ != STALLED)
        .cloned()
        .collect();
    for o in observed {
        let old = previous.iter().find(|c| c.type_ == o.type_);
        let last_transition_time = match old {
            Some(c) if c.status == o.status.as_str() => c.last_transition_time.clone(),
            _ => Time(now),
        };
        out.push(Condition {
            type_: o.type_.to_string(),
            status: o.status.as_str().to_string(),
            reason: o.reason.clone(),
            message: o.message.clone(),
            observed_generation: generation,
            last_transition_time,
        });
    }
    out.sort_by(|a, b| a.type_.cmp(&b.type_));
    out
}

/// The conditions worth an Event: those whose status or reason changed, and
/// those appearing for the first time as anything but True. A new object that
/// is healthy from its first reconcile says so in its status alone: Events are
/// for problems and changes, and an Event per healthy object would be a write
/// per Tenant (a thousand at install) that tells nobody anything.
pub fn transitions<'a>(
    previous: &'a [Condition],
    current: &'a [Condition],
) -> impl Iterator<Item = &'a Condition> {
    current.iter().filter(
        move |c| match previous.iter().find(|p| p.type_ == c.type_) {
            Some(p) => p.status != c.status || p.reason != c.reason,
            None => c.status != "True",
        },
    )
}

/// Finds a condition by type.
pub fn find<'a>(conditions: &'a [Condition], type_: &str) -> Option<&'a Condition> {
    conditions.iter().find(|c| c.type_ == type_)
}

/// True when the condition exists and its status is `True`.
pub fn is_true(conditions: &[Condition], type_: &str) -> bool {
    find(conditions, type_).is_some_and(|c| c.status == "True")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("valid time")
    }

    #[test]
    fn transition_time_kept_while_status_is_unchanged() {
        let first = merge_conditions(
            &[],
            &[Observed::new("Ready", true, "Reconciled", "all good")],
            Some(1),
            t(0),
        );
        let second = merge_conditions(
            &first,
            &[Observed::new("Ready", true, "Reconciled", "still good")],
            Some(2),
            t(60),
        );
        assert_eq!(second[0].last_transition_time, Time(t(0)));
        assert_eq!(second[0].message, "still good");
        assert_eq!(second[0].observed_generation, Some(2));
    }

    #[test]
    fn transition_time_moves_when_status_flips() {
        let first = merge_conditions(&[], &[Observed::new("Ready", true, "A", "")], None, t(0));
        let second = merge_conditions(
            &first,
            &[Observed::new("Ready", false, "B", "")],
            None,
            t(5),
        );
        assert_eq!(second[0].last_transition_time, Time(t(5)));
        assert_eq!(second[0].status, "False");
    }

    #[test]
    fn same_observation_gives_identical_list_sorted_by_type() {
        let obs = [
            Observed::new("Ready", true, "A", "m"),
            Observed::new("NamespacesReady", true, "B", "n"),
        ];
        let first = merge_conditions(&[], &obs, Some(3), t(0));
        let second = merge_conditions(&first, &obs, Some(3), t(100));
        assert_eq!(first, second);
        assert_eq!(first[0].type_, "NamespacesReady");
    }

    #[test]
    fn transitions_skip_healthy_newcomers() {
        let first = merge_conditions(
            &[],
            &[
                Observed::new("Ready", true, "A", ""),
                Observed::new("QuotaEnforced", true, "B", ""),
                Observed::new("SecretsRotated", false, "C", ""),
            ],
            None,
            t(0),
        );
        let types: Vec<_> = transitions(&[], &first).map(|c| c.type_.as_str()).collect();
        assert_eq!(types, ["SecretsRotated"]);
        let second = merge_conditions(
            &first,
            &[
                Observed::new("QuotaEnforced", false, "B2", ""),
                Observed::new("Ready", false, "A2", ""),
            ],
            None,
            t(1),
        );
        let types: Vec<_> = transitions(&first, &second)
            .map(|c| c.type_.as_str())
            .collect();
        assert_eq!(types, ["QuotaEnforced", "Ready"]);
        assert_eq!(transitions(&second, &second).count(), 0);
    }

    #[test]
    fn unobserved_conditions_are_kept() {
        let first = merge_conditions(
            &[],
            &[Observed::new("SecretsRotated", true, "A", "")],
            None,
            t(0),
        );
        let second = merge_conditions(&first, &[Observed::new("Ready", true, "B", "")], None, t(1));
        assert!(is_true(&second, "SecretsRotated"));
        assert!(is_true(&second, "Ready"));
    }

    #[test]
    fn progress_follows_ready_and_disappears_when_settled() {
        let failing = Observed::new("Ready", false, "InvalidCidr", "spec.network: bad");
        let stalled = progress(&failing, true).expect("stalled");
        assert_eq!(
            (stalled.type_, stalled.status),
            (STALLED, ConditionStatus::True)
        );
        assert_eq!(stalled.reason, "InvalidCidr");
        let busy = progress(&failing, false).expect("reconciling");
        assert_eq!(busy.type_, RECONCILING);
        let ok = Observed::new("Ready", true, "Reconciled", "");
        assert_eq!(progress(&ok, true), None);

        let first = merge_conditions(&[], &[failing.clone(), stalled], Some(1), t(0));
        assert!(is_true(&first, STALLED));
        // Fixed: Stalled is gone, not False.
        let second = merge_conditions(&first, &[ok], Some(2), t(1));
        assert!(find(&second, STALLED).is_none() && find(&second, RECONCILING).is_none());
        assert!(is_true(&second, "Ready"));
    }
}
