//! The `GarbageCollected` condition and the next wake-up of one GC reconcile,
//! computed from what the reconcile found and did (pure: no client, no clock).
//!
//! The condition names the most pressing problem: configuration problems
//! (unknown kinds, kinds outside the allow-list, unusable rules) first, then
//! failed deletions, then the benign states (dry run, rate limited, collected).
//! The wake-up is the earliest of the next expiry and every retry a problem
//! asks for, so a healthy tenant is never woken on a blind timer.

use std::time::Duration;

use k8s_openapi::jiff::{SignedDuration, Timestamp};

use super::CONDITION;
use crate::crd::condition::Observed;

/// Recheck interval while a kind is unknown (a CRD may be installed later).
const UNKNOWN_RECHECK: Duration = Duration::from_secs(60);
/// Retry interval after a failed deletion.
const DELETE_RETRY: Duration = Duration::from_secs(30);
/// Retry interval while a watch has not listed its kind yet.
const UNSYNCED_RETRY: Duration = Duration::from_secs(5);
/// Retry interval when rate limited with no recorded deletion to wait for.
const RATE_RETRY: Duration = Duration::from_secs(1);

/// Configuration problems: they make the tenant not Ready.
#[derive(Clone, Debug, Default, PartialEq)]
pub(super) struct Problems {
    messages: Vec<String>,
    unknown_kind: bool,
    not_allowed: bool,
}

impl Problems {
    /// A required kind the cluster does not serve usably.
    pub fn unknown_kind(&mut self, message: String) {
        self.unknown_kind = true;
        self.messages.push(message);
    }

    /// A required kind outside the operator's allow-list.
    pub fn not_allowed(&mut self, message: String) {
        self.not_allowed = true;
        self.messages.push(message);
    }

    /// A rule that does not compile.
    pub fn invalid_rule(&mut self, message: String) {
        self.messages.push(message);
    }

    pub fn is_empty(&self) -> bool {
        self.messages.is_empty()
    }

    #[cfg(test)]
    pub fn messages(&self) -> &[String] {
        &self.messages
    }

    #[cfg(test)]
    pub fn has_unknown_kind(&self) -> bool {
        self.unknown_kind
    }

    #[cfg(test)]
    pub fn has_not_allowed(&self) -> bool {
        self.not_allowed
    }

    /// The condition reason: the most specific problem present.
    fn reason(&self) -> &'static str {
        if self.unknown_kind {
            "UnknownKind"
        } else if self.not_allowed {
            "KindNotAllowed"
        } else {
            "InvalidRule"
        }
    }
}

/// What one reconcile found and did.
#[derive(Debug, Default)]
pub(super) struct Tally {
    pub problems: Problems,
    /// Due objects not already being deleted by us.
    pub due: u64,
    /// Deleted by this reconcile.
    pub deleted: u64,
    /// Deletions that failed (`Kind ns/name: reason`).
    pub failed: Vec<String>,
    pub dry_run: bool,
    pub max_deletions_per_minute: u32,
    /// Some watch had not listed its kind in time.
    pub unsynced: bool,
}

impl Tally {
    /// Due objects still there after this reconcile.
    pub fn pending(&self) -> u64 {
        self.due.saturating_sub(self.deleted)
    }

    /// Whether due objects wait for the deletion budget.
    pub fn rate_limited(&self) -> bool {
        !self.dry_run && self.pending() > self.failed.len() as u64
    }

    /// The `GarbageCollected` condition.
    pub fn condition(&self) -> Observed {
        let pending = self.pending();
        if !self.problems.is_empty() {
            Observed::new(
                CONDITION,
                false,
                self.problems.reason(),
                self.problems.messages.join("; "),
            )
        } else if !self.failed.is_empty() {
            Observed::new(
                CONDITION,
                false,
                "DeleteFailed",
                format!("could not delete {}", self.failed.join(", ")),
            )
        } else if self.dry_run {
            Observed::new(
                CONDITION,
                true,
                "DryRun",
                format!("dry run: {pending} object(s) would be deleted"),
            )
        } else if self.rate_limited() {
            Observed::new(
                CONDITION,
                true,
                "RateLimited",
                format!(
                    "{pending} due object(s) wait for the deletion budget (maxDeletionsPerMinute: {})",
                    self.max_deletions_per_minute
                ),
            )
        } else {
            Observed::new(
                CONDITION,
                true,
                "Collected",
                "expired objects are deleted as they expire",
            )
        }
    }

    /// When to reconcile next: the next expiry, or earlier for a retry.
    /// `next_free` is when the deletion budget next grows.
    pub fn next_deadline(
        &self,
        now: Timestamp,
        next_expiry: Option<Timestamp>,
        next_free: Option<Timestamp>,
    ) -> Option<Timestamp> {
        let mut next = next_expiry;
        if self.rate_limited() {
            next = earliest(next, next_free.or(Some(plus(now, RATE_RETRY))));
        }
        if !self.failed.is_empty() {
            next = earliest(next, Some(plus(now, DELETE_RETRY)));
        }
        if !self.problems.is_empty() {
            next = earliest(next, Some(plus(now, UNKNOWN_RECHECK)));
        }
        if self.unsynced {
            next = earliest(next, Some(plus(now, UNSYNCED_RETRY)));
        }
        next
    }
}

fn plus(t: Timestamp, d: Duration) -> Timestamp {
    SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(t)
}

fn earliest(a: Option<Timestamp>, b: Option<Timestamp>) -> Option<Timestamp> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crd::condition::ConditionStatus;

    fn t(s: i64) -> Timestamp {
        Timestamp::from_second(1_800_000_000 + s).expect("time")
    }

    fn problems(unknown: bool, not_allowed: bool, invalid: bool) -> Problems {
        let mut p = Problems::default();
        if unknown {
            p.unknown_kind("kind X is not served by the cluster".into());
        }
        if not_allowed {
            p.not_allowed("kind Y is not in the allow-list".into());
        }
        if invalid {
            p.invalid_rule("rule r: bad".into());
        }
        p
    }

    fn tally(due: u64, deleted: u64, failed: usize, dry_run: bool) -> Tally {
        Tally {
            due,
            deleted,
            failed: (0..failed)
                .map(|i| format!("Pod a/p{i}: Forbidden"))
                .collect(),
            dry_run,
            max_deletions_per_minute: 10,
            ..Default::default()
        }
    }

    #[test]
    fn condition_table() {
        // (tally, status, reason, message contains)
        let cases: Vec<(Tally, bool, &str, &str)> = vec![
            (
                tally(0, 0, 0, false),
                true,
                "Collected",
                "deleted as they expire",
            ),
            (
                tally(3, 3, 0, false),
                true,
                "Collected",
                "deleted as they expire",
            ),
            (
                tally(5, 2, 0, false),
                true,
                "RateLimited",
                "3 due object(s)",
            ),
            (
                tally(4, 0, 0, true),
                true,
                "DryRun",
                "4 object(s) would be deleted",
            ),
            (
                tally(2, 1, 1, false),
                false,
                "DeleteFailed",
                "could not delete Pod a/p0",
            ),
            (
                Tally {
                    problems: problems(false, true, true),
                    ..tally(2, 1, 1, false)
                },
                false,
                "KindNotAllowed",
                "allow-list; rule r: bad",
            ),
            (
                Tally {
                    problems: problems(true, true, false),
                    ..Default::default()
                },
                false,
                "UnknownKind",
                "not served by the cluster; kind Y",
            ),
            (
                Tally {
                    problems: problems(false, false, true),
                    ..Default::default()
                },
                false,
                "InvalidRule",
                "rule r: bad",
            ),
        ];
        for (i, (tally, ok, reason, message)) in cases.into_iter().enumerate() {
            let c = tally.condition();
            assert_eq!(c.type_, CONDITION, "case {i}");
            assert_eq!(c.status, ConditionStatus::from(ok), "case {i}");
            assert_eq!(c.reason, reason, "case {i}");
            assert!(c.message.contains(message), "case {i}: {}", c.message);
        }
    }

    #[test]
    fn pending_and_rate_limit_table() {
        // (due, deleted, failed, dry run) -> (pending, rate limited)
        let cases = [
            ((0, 0, 0, false), (0, false)),
            ((5, 5, 0, false), (0, false)),
            ((5, 2, 0, false), (3, true)),
            ((5, 2, 3, false), (3, false)),
            ((5, 2, 2, false), (3, true)),
            ((5, 0, 0, true), (5, false)),
            ((1, 3, 0, false), (0, false)),
        ];
        for ((due, deleted, failed, dry), (pending, limited)) in cases {
            let t = tally(due, deleted, failed, dry);
            assert_eq!(t.pending(), pending, "{due} {deleted} {failed} {dry}");
            assert_eq!(t.rate_limited(), limited, "{due} {deleted} {failed} {dry}");
        }
    }

    #[test]
    fn next_deadline_table() {
        let now = t(0);
        // (tally, next expiry, next free) -> wake-up
        type Case = (
            Tally,
            Option<Timestamp>,
            Option<Timestamp>,
            Option<Timestamp>,
        );
        let cases: Vec<Case> = vec![
            (tally(0, 0, 0, false), None, None, None),
            (tally(0, 0, 0, false), Some(t(600)), None, Some(t(600))),
            // Rate limited: when the budget frees up, else in a second.
            (
                tally(5, 2, 0, false),
                Some(t(600)),
                Some(t(42)),
                Some(t(42)),
            ),
            (tally(5, 2, 0, false), Some(t(600)), None, Some(t(1))),
            (tally(5, 2, 0, false), Some(t(0)), Some(t(42)), Some(t(0))),
            // Dry run is never rate limited.
            (
                tally(5, 0, 0, true),
                Some(t(600)),
                Some(t(42)),
                Some(t(600)),
            ),
            // A failed delete retries in 30 s.
            (tally(1, 0, 1, false), Some(t(600)), None, Some(t(30))),
            (
                Tally {
                    problems: problems(true, false, false),
                    ..Default::default()
                },
                None,
                None,
                Some(t(60)),
            ),
            (
                Tally {
                    unsynced: true,
                    problems: problems(true, false, false),
                    ..tally(1, 0, 1, false)
                },
                Some(t(600)),
                None,
                Some(t(5)),
            ),
        ];
        for (i, (tally, expiry, free, want)) in cases.into_iter().enumerate() {
            assert_eq!(tally.next_deadline(now, expiry, free), want, "case {i}");
        }
    }
}
