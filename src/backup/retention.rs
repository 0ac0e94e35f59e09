//! Retention: which snapshots `prune` keeps. Pure: takes the snapshots and `now`.
//!
//! Rules:
//! 1. With no count rule (`keepLast`/`keepDaily`/`keepWeekly`/`keepMonthly`) every
//!    snapshot is a candidate; otherwise a snapshot is a candidate when any count rule
//!    selects it (`keepLast N`: the newest N; `keepDaily N`: the newest snapshot of each
//!    of the newest N UTC days that have one; weekly by ISO week; monthly by month).
//! 2. `maxAge` removes candidates older than `now - maxAge`.
//! 3. The newest snapshot and the newest verified snapshot are always kept, and so are
//!    the snapshots named in `protect` (a run's own prune protects what it just wrote).
//! 4. A snapshot dated more than [`FUTURE_SKEW`] after `now` (a node with a bad
//!    clock) is flagged `future-dated`: kept, but never counted by a rule nor taken as
//!    the newest, so it cannot push newer snapshots out.

use std::collections::BTreeSet;
use std::time::Duration;

use chrono::{DateTime, Datelike, Utc};

/// What retention needs to know about a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Snapshot {
    /// Snapshot id.
    pub id: String,
    /// When it was taken.
    pub time: DateTime<Utc>,
    /// Whether its newest restore test passed.
    pub verified: bool,
}

/// Retention policy with a parsed `maxAge`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    /// Keep the newest N.
    pub keep_last: Option<u32>,
    /// Keep one per day for N days.
    pub keep_daily: Option<u32>,
    /// Keep one per ISO week for N weeks.
    pub keep_weekly: Option<u32>,
    /// Keep one per month for N months.
    pub keep_monthly: Option<u32>,
    /// Delete older than this.
    pub max_age: Option<Duration>,
}

/// Decision for one snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Decision {
    /// Snapshot id.
    pub id: String,
    /// Keep or delete.
    pub keep: bool,
    /// Why (`last`, `daily`, `weekly`, `monthly`, `all`, `newest`, `newest-verified`
    /// when kept; `max-age` or `unselected` when deleted).
    pub reasons: Vec<&'static str>,
}

/// How far into the future a snapshot's time may be (clock skew between nodes) before
/// it is flagged instead of trusted.
pub const FUTURE_SKEW: chrono::Duration = chrono::Duration::minutes(5);

/// Whether `time` lies more than [`FUTURE_SKEW`] after `now`.
pub fn is_future_dated(time: DateTime<Utc>, now: DateTime<Utc>) -> bool {
    now.checked_add_signed(FUTURE_SKEW)
        .is_some_and(|limit| time > limit)
}

/// Decides, newest first, which snapshots to keep. `protect` lists ids that are kept
/// whatever the rules say (reason `protected`).
pub fn select(
    snapshots: &[Snapshot],
    policy: &Policy,
    now: DateTime<Utc>,
    protect: &[&str],
) -> Vec<Decision> {
    let mut sorted: Vec<&Snapshot> = snapshots.iter().collect();
    sorted.sort_by(|a, b| b.time.cmp(&a.time).then_with(|| b.id.cmp(&a.id)));
    let (future, sorted): (Vec<&Snapshot>, Vec<&Snapshot>) = sorted
        .into_iter()
        .partition(|s| is_future_dated(s.time, now));
    let mut out: Vec<Decision> = future
        .iter()
        .map(|s| Decision {
            id: s.id.clone(),
            keep: true,
            reasons: vec!["future-dated"],
        })
        .collect();

    let any_count_rule = policy.keep_last.is_some()
        || policy.keep_daily.is_some()
        || policy.keep_weekly.is_some()
        || policy.keep_monthly.is_some();

    let mut reasons: Vec<Vec<&'static str>> = vec![Vec::new(); sorted.len()];
    if !any_count_rule {
        reasons.iter_mut().for_each(|r| r.push("all"));
    }
    if let Some(n) = policy.keep_last {
        for r in reasons.iter_mut().take(n as usize) {
            r.push("last");
        }
    }
    let mut bucketed =
        |n: Option<u32>, reason: &'static str, bucket: &dyn Fn(&DateTime<Utc>) -> (i32, u32)| {
            let Some(n) = n else { return };
            let mut seen = BTreeSet::new();
            for (i, s) in sorted.iter().enumerate() {
                if seen.len() >= n as usize {
                    break;
                }
                if seen.insert(bucket(&s.time)) {
                    reasons[i].push(reason);
                }
            }
        };
    bucketed(policy.keep_daily, "daily", &|t| (t.year(), t.ordinal()));
    bucketed(policy.keep_weekly, "weekly", &|t| {
        let w = t.iso_week();
        (w.year(), w.week())
    });
    bucketed(policy.keep_monthly, "monthly", &|t| (t.year(), t.month()));

    let cutoff = policy
        .max_age
        .and_then(|age| chrono::Duration::from_std(age).ok())
        .and_then(|age| now.checked_sub_signed(age));

    let newest_verified = sorted.iter().position(|s| s.verified);
    let present = sorted.iter().enumerate().map(|(i, s)| {
        let mut why = std::mem::take(&mut reasons[i]);
        let mut keep = !why.is_empty();
        if keep && cutoff.is_some_and(|c| s.time < c) {
            keep = false;
            why = vec!["max-age"];
        }
        if i == 0 {
            why.push("newest");
            keep = true;
        }
        if Some(i) == newest_verified {
            why.push("newest-verified");
            keep = true;
        }
        if protect.contains(&s.id.as_str()) {
            why.push("protected");
            keep = true;
        }
        if why.is_empty() {
            why.push("unselected");
        }
        if keep {
            why.retain(|r| *r != "max-age");
        }
        Decision {
            id: s.id.clone(),
            keep,
            reasons: why,
        }
    });
    out.extend(present);
    out
}

/// Parses durations like `90d`, `12h`, `1h30m`, `2w`, `45s` (units s, m, h, d, w).
pub fn parse_duration(s: &str) -> Option<Duration> {
    let s = s.trim();
    if s.is_empty() {
        return None;
    }
    let mut total: u64 = 0;
    let mut num: Option<u64> = None;
    for c in s.chars() {
        if let Some(d) = c.to_digit(10) {
            num = Some(
                num.unwrap_or(0)
                    .checked_mul(10)?
                    .checked_add(u64::from(d))?,
            );
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            'w' => 604_800,
            _ => return None,
        };
        total = total.checked_add(num.take()?.checked_mul(unit)?)?;
    }
    if num.is_some() {
        return None;
    }
    Some(Duration::from_secs(total))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(y: i32, m: u32, d: u32, h: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(y, m, d, h, 0, 0)
            .single()
            .expect("valid time")
    }

    fn snaps(times: &[(DateTime<Utc>, bool)]) -> Vec<Snapshot> {
        times
            .iter()
            .enumerate()
            .map(|(i, (t, v))| Snapshot {
                id: format!("s{i}"),
                time: *t,
                verified: *v,
            })
            .collect()
    }

    fn kept(d: &[Decision]) -> Vec<&str> {
        d.iter().filter(|d| d.keep).map(|d| d.id.as_str()).collect()
    }

    #[test]
    fn retention_table() {
        // Two snapshots a day over 2025-01-01 .. 2025-03-02 (hours 2 and 14), newest last.
        let mut times = Vec::new();
        let start = at(2025, 1, 1, 2);
        for day in 0..61 {
            for h in [0, 12] {
                times.push((
                    start + chrono::Duration::days(day) + chrono::Duration::hours(h),
                    false,
                ));
            }
        }
        let all = snaps(&times);
        let now = at(2025, 3, 2, 20);
        let n = all.len();
        let id = |i: usize| format!("s{i}");

        struct Case {
            name: &'static str,
            policy: Policy,
            expect_kept: usize,
            must_keep: Vec<String>,
            must_delete: Vec<String>,
        }
        let cases = vec![
            Case {
                name: "no rules keeps everything",
                policy: Policy::default(),
                expect_kept: n,
                must_keep: vec![id(0)],
                must_delete: vec![],
            },
            Case {
                name: "keepLast 3",
                policy: Policy {
                    keep_last: Some(3),
                    ..Policy::default()
                },
                expect_kept: 3,
                must_keep: vec![id(n - 1), id(n - 3)],
                must_delete: vec![id(n - 4)],
            },
            Case {
                name: "keepLast 0 still keeps the newest",
                policy: Policy {
                    keep_last: Some(0),
                    ..Policy::default()
                },
                expect_kept: 1,
                must_keep: vec![id(n - 1)],
                must_delete: vec![id(n - 2)],
            },
            Case {
                name: "keepDaily 7 keeps the evening snapshot of 7 days",
                policy: Policy {
                    keep_daily: Some(7),
                    ..Policy::default()
                },
                expect_kept: 7,
                must_keep: vec![id(n - 1), id(n - 3), id(n - 13)],
                must_delete: vec![id(n - 2), id(n - 15)],
            },
            Case {
                name: "keepMonthly 3: Mar, Feb, Jan (newest of each)",
                policy: Policy {
                    keep_monthly: Some(3),
                    ..Policy::default()
                },
                expect_kept: 3,
                // 2025-01-31 14:00 is index 61 (day 30, second)
                must_keep: vec![id(n - 1), id(61), id(2 * 58 + 1)],
                must_delete: vec![id(0)],
            },
            Case {
                name: "keepLast 2 + keepWeekly 2 overlap",
                policy: Policy {
                    keep_last: Some(2),
                    keep_weekly: Some(2),
                    ..Policy::default()
                },
                // newest two + the newest of the previous ISO week (Sun 2025-02-23 14:00)
                expect_kept: 3,
                must_keep: vec![id(n - 1), id(n - 2), id(2 * 53 + 1)],
                must_delete: vec![id(n - 3)],
            },
            Case {
                name: "maxAge only",
                policy: Policy {
                    max_age: parse_duration("3d"),
                    ..Policy::default()
                },
                // younger than 2025-02-27 20:00: Feb 28 x2, Mar 1 x2, Mar 2 x2
                expect_kept: 6,
                must_keep: vec![id(n - 6)],
                must_delete: vec![id(n - 7)],
            },
            Case {
                name: "maxAge caps keepMonthly",
                policy: Policy {
                    keep_monthly: Some(12),
                    max_age: parse_duration("20d"),
                    ..Policy::default()
                },
                expect_kept: 2,
                must_keep: vec![id(n - 1), id(2 * 58 + 1)],
                must_delete: vec![id(61)],
            },
        ];
        for c in cases {
            let d = select(&all, &c.policy, now, &[]);
            assert_eq!(d.len(), n, "{}", c.name);
            let k = kept(&d);
            assert_eq!(k.len(), c.expect_kept, "{}: kept {k:?}", c.name);
            for m in &c.must_keep {
                assert!(k.contains(&m.as_str()), "{}: {m} must be kept", c.name);
            }
            for m in &c.must_delete {
                assert!(!k.contains(&m.as_str()), "{}: {m} must be deleted", c.name);
            }
        }
    }

    #[test]
    fn newest_verified_is_never_deleted() {
        let t = at(2025, 1, 1, 0);
        let all = snaps(&[
            (t, true),
            (t + chrono::Duration::days(1), false),
            (t + chrono::Duration::days(2), false),
        ]);
        let policy = Policy {
            keep_last: Some(1),
            max_age: parse_duration("1d"),
            ..Policy::default()
        };
        let d = select(&all, &policy, t + chrono::Duration::days(30), &[]);
        assert_eq!(kept(&d), vec!["s2", "s0"]);
        let s0 = d.iter().find(|d| d.id == "s0").expect("s0");
        assert_eq!(s0.reasons, vec!["newest-verified"]);
        let s1 = d.iter().find(|d| d.id == "s1").expect("s1");
        assert_eq!(s1.reasons, vec!["unselected"]);
        assert!(select(&[], &policy, t, &[]).is_empty());
    }

    /// Issue #32, finding 1: one snapshot dated 2099 must not stay "newest" forever
    /// and push out every new one.
    #[test]
    fn a_future_dated_snapshot_is_flagged_and_never_pushes_out_new_ones() {
        let now = at(2026, 12, 7, 2);
        let all = vec![
            Snapshot {
                id: "bad-clock".into(),
                time: at(2099, 1, 1, 0),
                verified: false,
            },
            Snapshot {
                id: "yesterday".into(),
                time: now - chrono::Duration::days(1),
                verified: false,
            },
            Snapshot {
                id: "just-now".into(),
                time: now - chrono::Duration::minutes(1),
                verified: false,
            },
            // Within the allowed skew: an ordinary snapshot.
            Snapshot {
                id: "skewed".into(),
                time: now + chrono::Duration::minutes(2),
                verified: false,
            },
        ];
        let policy = Policy {
            keep_last: Some(1),
            ..Policy::default()
        };
        let d = select(&all, &policy, now, &[]);
        assert_eq!(kept(&d), vec!["bad-clock", "skewed"]);
        assert_eq!(d[0].reasons, vec!["future-dated"]);
        // A run's own prune keeps what it just wrote whatever the clocks say.
        let d = select(&all, &policy, now, &["just-now"]);
        assert_eq!(kept(&d), vec!["bad-clock", "skewed", "just-now"]);
        let just = d.iter().find(|d| d.id == "just-now").expect("just-now");
        assert_eq!(just.reasons, vec!["protected"]);
        assert!(is_future_dated(at(2099, 1, 1, 0), now));
        assert!(!is_future_dated(now + chrono::Duration::minutes(5), now));
    }

    #[test]
    fn durations() {
        for (s, secs) in [
            ("45s", Some(45)),
            ("1h30m", Some(5400)),
            ("90d", Some(7_776_000)),
            ("2w", Some(1_209_600)),
        ] {
            assert_eq!(parse_duration(s), secs.map(Duration::from_secs), "{s}");
        }
        for s in ["", "10", "d", "5x", "1.5h", "-1d"] {
            assert_eq!(parse_duration(s), None, "{s}");
        }
    }
}
