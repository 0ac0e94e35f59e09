//! Schedule decisions for `BackupSchedule` (pure: every function takes `now`).
//!
//! Cron expressions (five fields, or `@daily`-style nicknames) are evaluated in the
//! schedule's IANA time zone with the tz database bundled into the binary, so a
//! container without `/usr/share/zoneinfo` still evaluates `Europe/Berlin` correctly.
//!
//! Daylight saving time follows the wall clock: a 02:30 run on a spring-forward day
//! (when 02:30 does not exist) runs once, at the first instant after the gap; on a
//! fall-back day (when 01:30 happens twice) a 01:30 run runs once, at the first
//! 01:30.
//!
//! Missed runs are never piled up: only the newest due time is considered, and with
//! `startingDeadlineSeconds` a due time older than the deadline is skipped and
//! reported instead of started.

use croner::Cron;
use croner::parser::{CronParser, Seconds};
use jiff::Timestamp;
use jiff::tz::TimeZone;

use crate::crd::backup_schedule::ConcurrencyPolicy;

/// How many past due times are inspected before counting stops (bounds the work
/// after a long downtime of an every-minute schedule).
const MAX_MISSED_SCAN: u32 = 1000;

/// Why a schedule cannot be evaluated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    #[error("invalid cron expression {expr:?}: {message}")]
    InvalidSchedule { expr: String, message: String },
    #[error("unknown time zone {0:?}: use an IANA name such as Europe/Berlin or UTC")]
    InvalidTimeZone(String),
}

impl ScheduleError {
    /// Bounded reason for conditions and Events.
    pub fn reason(&self) -> &'static str {
        match self {
            ScheduleError::InvalidSchedule { .. } => "InvalidSchedule",
            ScheduleError::InvalidTimeZone(_) => "InvalidTimeZone",
        }
    }
}

/// A parsed cron expression bound to a time zone.
#[derive(Debug, Clone)]
pub struct Schedule {
    cron: Cron,
    tz: TimeZone,
}

/// Resolves an IANA time zone name (default UTC).
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, ScheduleError> {
    match name.map(str::trim).filter(|n| !n.is_empty()) {
        None => Ok(TimeZone::UTC),
        Some(n) => TimeZone::get(n).map_err(|_| ScheduleError::InvalidTimeZone(n.to_string())),
    }
}

impl Schedule {
    /// Parses a five-field cron expression (seconds are not allowed) in `tz`.
    pub fn parse(expr: &str, tz: Option<&str>) -> Result<Self, ScheduleError> {
        let tz = time_zone(tz)?;
        let cron = CronParser::builder()
            .seconds(Seconds::Disallowed)
            .build()
            .parse(expr.trim())
            .map_err(|e| ScheduleError::InvalidSchedule {
                expr: expr.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self { cron, tz })
    }

    /// The first due time strictly after `t`.
    pub fn next_after(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        let next = self.cron.find_next_occurrence(&z, false).ok()?;
        (next.timestamp() > t).then(|| next.timestamp())
    }

    /// The due times in `(after, until]`: the newest one and how many older ones
    /// there were (those are never started).
    pub fn due_between(&self, after: Timestamp, until: Timestamp) -> (Option<Timestamp>, u32) {
        let mut newest = None;
        let mut count = 0u32;
        let mut cursor = after;
        while let Some(t) = self.next_after(cursor) {
            if t > until {
                break;
            }
            count += 1;
            newest = Some(t);
            cursor = t;
            if count >= MAX_MISSED_SCAN {
                // Jump ahead: only the newest due time matters.
                if let Some(prev) = self.prev_at_or_before(until)
                    && prev > cursor
                {
                    newest = Some(prev);
                }
                break;
            }
        }
        (newest, count.saturating_sub(1))
    }

    fn prev_at_or_before(&self, t: Timestamp) -> Option<Timestamp> {
        let z = t.to_zoned(self.tz.clone());
        let prev = self.cron.find_previous_occurrence(&z, true).ok()?;
        Some(prev.timestamp())
    }
}

/// Inputs of one decision for one kind of run (backup or restore test).
#[derive(Debug, Clone)]
pub struct DecisionInput<'a> {
    pub schedule: &'a Schedule,
    /// Newest scheduled time already acted on (started or skipped), or the
    /// schedule's creation time.
    pub last_handled: Timestamp,
    pub now: Timestamp,
    pub suspend: bool,
    pub starting_deadline_seconds: Option<i64>,
    pub concurrency: ConcurrencyPolicy,
    /// Runs of this kind that have not finished.
    pub active_runs: usize,
}

/// What to do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing is due.
    Wait,
    /// Start the run scheduled at `scheduled`; with `replace_active` the running
    /// ones are stopped first (`Replace`).
    Start {
        scheduled: Timestamp,
        replace_active: bool,
    },
    /// A run is due but another one is active (`Forbid`): retry when it finishes.
    SkipActive { scheduled: Timestamp },
    /// The newest due run is past its starting deadline: record it as missed.
    SkipMissedDeadline { scheduled: Timestamp },
    /// Suspended: nothing starts.
    Suspended,
}

/// A decision: what to do now, how many older due times were dropped (never piled
/// up), and when to look again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub action: Action,
    /// Due times older than the one acted on that were skipped (downtime).
    pub skipped_older: u32,
    /// The next due time after `now` (`None` when suspended): requeue exactly then.
    pub next: Option<Timestamp>,
}

/// Decides what to start now (pure).
pub fn decide(input: &DecisionInput<'_>) -> Decision {
    if input.suspend {
        return Decision {
            action: Action::Suspended,
            skipped_older: 0,
            next: None,
        };
    }
    let next = input.schedule.next_after(input.now);
    let (due, skipped_older) = input.schedule.due_between(input.last_handled, input.now);
    let Some(scheduled) = due else {
        return Decision {
            action: Action::Wait,
            skipped_older: 0,
            next,
        };
    };
    let late = input.now.as_second() - scheduled.as_second();
    let action = match input.starting_deadline_seconds {
        Some(deadline) if late > deadline.max(0) => Action::SkipMissedDeadline { scheduled },
        _ if input.active_runs == 0 => Action::Start {
            scheduled,
            replace_active: false,
        },
        _ => match input.concurrency {
            ConcurrencyPolicy::Allow => Action::Start {
                scheduled,
                replace_active: false,
            },
            ConcurrencyPolicy::Replace => Action::Start {
                scheduled,
                replace_active: true,
            },
            ConcurrencyPolicy::Forbid => Action::SkipActive { scheduled },
        },
    };
    // A Forbid skip without a deadline is retried when the active run finishes
    // (its Job event wakes the controller); with a deadline, wake up when it ends.
    let next = match (&action, input.starting_deadline_seconds) {
        (Action::SkipActive { scheduled }, Some(d)) => {
            let expiry = Timestamp::from_second(scheduled.as_second() + d.max(0) + 1).ok();
            match (expiry, next) {
                (Some(e), Some(n)) => Some(e.min(n)),
                (e, n) => e.or(n),
            }
        }
        _ => next,
    };
    Decision {
        action,
        skipped_older,
        next,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().expect("timestamp")
    }

    fn runs(expr: &str, tz: &str, from: &str, to: &str) -> Vec<String> {
        let s = Schedule::parse(expr, Some(tz)).expect("schedule");
        let mut out = Vec::new();
        let mut t = ts(from);
        let end = ts(to);
        while let Some(n) = s.next_after(t) {
            if n > end {
                break;
            }
            out.push(n.to_string());
            t = n;
        }
        out
    }

    #[test]
    fn next_times_table() {
        let cases: &[(&str, &str, &str, &str, &[&str])] = &[
            (
                "0 2 * * *",
                "UTC",
                "2026-03-01T00:00:00Z",
                "2026-03-03T00:00:00Z",
                &["2026-03-01T02:00:00Z", "2026-03-02T02:00:00Z"],
            ),
            (
                "*/30 * * * *",
                "UTC",
                "2026-03-01T00:00:00Z",
                "2026-03-01T01:00:00Z",
                &["2026-03-01T00:30:00Z", "2026-03-01T01:00:00Z"],
            ),
            // Berlin is UTC+1 in winter.
            (
                "0 2 * * *",
                "Europe/Berlin",
                "2026-01-10T00:00:00Z",
                "2026-01-11T00:00:00Z",
                &["2026-01-10T01:00:00Z"],
            ),
            (
                "@daily",
                "UTC",
                "2026-01-10T00:00:00Z",
                "2026-01-11T00:00:00Z",
                &["2026-01-11T00:00:00Z"],
            ),
        ];
        for (expr, tz, from, to, want) in cases {
            assert_eq!(runs(expr, tz, from, to), *want, "{expr} in {tz}");
        }
    }

    #[test]
    fn dst_spring_forward_runs_once() {
        // 02:30 on the day 02:00-03:00 local is skipped: one run a day.
        let daily_0230 = |tz, from, to| runs("30 2 * * *", tz, from, to);
        // 2026-03-08: New York skips 02:00-03:00 local.
        let got = daily_0230(
            "America/New_York",
            "2026-03-07T12:00:00Z",
            "2026-03-09T12:00:00Z",
        );
        assert_eq!(got.len(), 2, "{got:?}");
        // 02:30 does not exist; the run happens once, at 03:00 EDT when the gap ends.
        assert_eq!(got[0], "2026-03-08T07:00:00Z");
        assert_eq!(got[1], "2026-03-09T06:30:00Z"); // 02:30 EDT
        // Europe: 2026-03-29 skips 02:00-03:00 in Berlin.
        let got = daily_0230(
            "Europe/Berlin",
            "2026-03-28T12:00:00Z",
            "2026-03-30T12:00:00Z",
        );
        assert_eq!(got.len(), 2, "{got:?}");
    }

    #[test]
    fn dst_fall_back_runs_once() {
        // 2026-11-01: New York repeats 01:00-02:00 local.
        let got = runs(
            "30 1 * * *",
            "America/New_York",
            "2026-10-31T12:00:00Z",
            "2026-11-02T12:00:00Z",
        );
        assert_eq!(
            got,
            ["2026-11-01T05:30:00Z", "2026-11-02T06:30:00Z"],
            "{got:?}"
        );
        // Asking again from inside the repeated hour does not find a second run.
        let s = Schedule::parse("30 1 * * *", Some("America/New_York")).expect("schedule");
        let next = s.next_after(ts("2026-11-01T06:10:00Z")).expect("next");
        assert_eq!(next.to_string(), "2026-11-02T06:30:00Z");
    }

    #[test]
    fn invalid_input_has_specific_reasons() {
        let e = Schedule::parse("not a cron", None).expect_err("invalid");
        assert_eq!(e.reason(), "InvalidSchedule");
        let e = Schedule::parse("0 2 * * *", Some("Mars/Olympus")).expect_err("invalid");
        assert_eq!(e.reason(), "InvalidTimeZone");
        assert!(
            Schedule::parse("0 0 2 * * *", None).is_err(),
            "seconds field"
        );
    }

    fn input<'a>(s: &'a Schedule, last: &str, now: &str) -> DecisionInput<'a> {
        DecisionInput {
            schedule: s,
            last_handled: ts(last),
            now: ts(now),
            suspend: false,
            starting_deadline_seconds: None,
            concurrency: ConcurrencyPolicy::Forbid,
            active_runs: 0,
        }
    }

    #[test]
    fn decision_table() {
        let s = Schedule::parse("0 2 * * *", None).expect("schedule");
        let start = |at: &str, replace| Action::Start {
            scheduled: ts(at),
            replace_active: replace,
        };
        #[derive(Clone, Copy)]
        struct Case {
            name: &'static str,
            last: &'static str,
            now: &'static str,
            suspend: bool,
            deadline: Option<i64>,
            policy: ConcurrencyPolicy,
            active: usize,
            action: Action,
            skipped: u32,
            next: Option<&'static str>,
        }
        let base = Case {
            name: "",
            last: "2026-03-01T02:00:00Z",
            now: "2026-03-01T12:00:00Z",
            suspend: false,
            deadline: None,
            policy: ConcurrencyPolicy::Forbid,
            active: 0,
            action: Action::Wait,
            skipped: 0,
            next: Some("2026-03-02T02:00:00Z"),
        };
        let cases = vec![
            Case {
                name: "nothing due",
                ..base
            },
            Case {
                name: "due at the minute",
                now: "2026-03-02T02:00:00Z",
                action: start("2026-03-02T02:00:00Z", false),
                next: Some("2026-03-03T02:00:00Z"),
                ..base
            },
            Case {
                name: "already handled",
                last: "2026-03-02T02:00:00Z",
                now: "2026-03-02T02:00:30Z",
                action: Action::Wait,
                next: Some("2026-03-03T02:00:00Z"),
                ..base
            },
            Case {
                name: "downtime: newest only, older ones skipped",
                now: "2026-03-05T03:00:00Z",
                action: start("2026-03-05T02:00:00Z", false),
                skipped: 3,
                next: Some("2026-03-06T02:00:00Z"),
                ..base
            },
            Case {
                name: "past the starting deadline",
                now: "2026-03-05T03:00:00Z",
                deadline: Some(600),
                action: Action::SkipMissedDeadline {
                    scheduled: ts("2026-03-05T02:00:00Z"),
                },
                skipped: 3,
                next: Some("2026-03-06T02:00:00Z"),
                ..base
            },
            Case {
                name: "within the starting deadline",
                now: "2026-03-02T02:05:00Z",
                deadline: Some(600),
                action: start("2026-03-02T02:00:00Z", false),
                next: Some("2026-03-03T02:00:00Z"),
                ..base
            },
            Case {
                name: "suspended",
                now: "2026-03-02T02:00:00Z",
                suspend: true,
                action: Action::Suspended,
                next: None,
                ..base
            },
            Case {
                name: "forbid while active",
                now: "2026-03-02T02:00:00Z",
                active: 1,
                action: Action::SkipActive {
                    scheduled: ts("2026-03-02T02:00:00Z"),
                },
                next: Some("2026-03-03T02:00:00Z"),
                ..base
            },
            Case {
                name: "forbid while active, wake at the deadline",
                now: "2026-03-02T02:00:00Z",
                active: 1,
                deadline: Some(60),
                action: Action::SkipActive {
                    scheduled: ts("2026-03-02T02:00:00Z"),
                },
                next: Some("2026-03-02T02:01:01Z"),
                ..base
            },
            Case {
                name: "replace while active",
                now: "2026-03-02T02:00:00Z",
                active: 1,
                policy: ConcurrencyPolicy::Replace,
                action: start("2026-03-02T02:00:00Z", true),
                next: Some("2026-03-03T02:00:00Z"),
                ..base
            },
            Case {
                name: "allow while active",
                now: "2026-03-02T02:00:00Z",
                active: 2,
                policy: ConcurrencyPolicy::Allow,
                action: start("2026-03-02T02:00:00Z", false),
                next: Some("2026-03-03T02:00:00Z"),
                ..base
            },
        ];
        for c in cases {
            let mut i = input(&s, c.last, c.now);
            i.suspend = c.suspend;
            i.starting_deadline_seconds = c.deadline;
            i.concurrency = c.policy;
            i.active_runs = c.active;
            let d = decide(&i);
            assert_eq!(d.action, c.action, "{}", c.name);
            assert_eq!(d.skipped_older, c.skipped, "{}", c.name);
            assert_eq!(d.next, c.next.map(ts), "{}", c.name);
        }
    }

    #[test]
    fn long_downtime_of_a_minutely_schedule_is_bounded() {
        let s = Schedule::parse("* * * * *", None).expect("schedule");
        let d = decide(&input(&s, "2026-01-01T00:00:00Z", "2026-03-01T00:00:30Z"));
        assert_eq!(
            d.action,
            Action::Start {
                scheduled: ts("2026-03-01T00:00:00Z"),
                replace_active: false
            }
        );
        assert!(d.skipped_older >= MAX_MISSED_SCAN - 1);
    }
}
