//! The one-line JSON result of `palisade backup … --output json` (schema in
//! `docs/BACKUP.md`), parsed back into types. The CLI writes it to stdout and, with
//! `--termination-log`, to the container's termination message; the BackupSchedule
//! controller reads it from there with [`parse`]. One parser for both sides.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::crd::backup_schedule::{
    BackupRecord, CheckResult, RestoreTestRecord, RestoreTestResult,
};

/// Summary of the retention pass that `backup run --prune` ran after the snapshot.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "camelCase")]
pub struct PruneSummary {
    #[serde(default)]
    pub kept: u64,
    #[serde(default)]
    pub deleted_count: u64,
    /// Why pruning failed (the snapshot itself succeeded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// A parsed `--output json` result (every operation; fields depend on `op`).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct JobResult {
    /// `run`, `verify`, `prune`, `restore` or `list`.
    pub op: String,
    /// Whether the operation succeeded (for `verify`: the test passed).
    pub ok: bool,
    /// Bounded failure reason (e.g. `InvalidConfig`, `DumpFailed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Failure message (never contains secrets).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `run`: snapshot id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// `run`: object key or file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `run`: when the snapshot finished; `verify`: when the test finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<DateTime<Utc>>,
    /// `run`: stored bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes: Option<u64>,
    /// `run`: hex SHA-256 of the stored object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<f64>,
    /// `verify`: the snapshot that was restored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<String>,
    /// `verify`: `Passed` or `Failed`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<RestoreTestResult>,
    /// `verify`: per-check results.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub checks: Vec<CheckResult>,
    /// `run --prune`: the retention pass.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pruned: Option<PruneSummary>,
    /// `run --prune`: snapshots stored after pruning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_count: Option<u32>,
    /// `run --prune`: bytes stored by all snapshots after pruning.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub total_bytes: Option<u64>,
}

/// The text held no result.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no palisade backup JSON result in the output")]
pub struct NoResult;

/// Finds the result in `text`: the last line that is a JSON object with `op` and
/// `ok` (the termination message may be a log tail with other lines before it).
pub fn parse(text: &str) -> Result<JobResult, NoResult> {
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .find_map(|l| serde_json::from_str::<JobResult>(l).ok())
        .ok_or(NoResult)
}

fn duration(seconds: Option<f64>) -> String {
    format!("{:.1}s", seconds.unwrap_or(0.0))
}

impl JobResult {
    /// The snapshot a successful `run` took.
    pub fn backup_record(&self) -> Option<BackupRecord> {
        if self.op != "run" || !self.ok {
            return None;
        }
        Some(BackupRecord {
            id: self.id.clone()?,
            time: self.time?,
            bytes: self.bytes.unwrap_or(0),
            duration: duration(self.duration_seconds),
            sha256: self.sha256.clone().unwrap_or_default(),
            key: self.key.clone().unwrap_or_default(),
        })
    }

    /// The restore test a `verify` ran (passed or failed).
    pub fn restore_record(&self) -> Option<RestoreTestRecord> {
        if self.op != "verify" {
            return None;
        }
        Some(RestoreTestRecord {
            time: self.time?,
            snapshot: self.snapshot.clone().unwrap_or_default(),
            result: self.result.unwrap_or(if self.ok {
                RestoreTestResult::Passed
            } else {
                RestoreTestResult::Failed
            }),
            duration: duration(self.duration_seconds),
            checks: self.checks.clone(),
        })
    }

    /// A short, bounded human summary of a failure.
    pub fn failure_summary(&self) -> String {
        let mut s = match (&self.reason, &self.error) {
            (Some(r), Some(e)) => format!("{r}: {e}"),
            (Some(r), None) => r.clone(),
            (None, Some(e)) => e.clone(),
            (None, None) => {
                let failed: Vec<String> = self
                    .checks
                    .iter()
                    .filter(|c| !c.passed)
                    .map(|c| match &c.message {
                        Some(m) => format!("{} ({m})", c.name),
                        None => c.name.clone(),
                    })
                    .collect();
                if failed.is_empty() {
                    "failed".to_string()
                } else {
                    format!("failed checks: {}", failed.join(", "))
                }
            }
        };
        if s.len() > 400 {
            let mut end = 400;
            while !s.is_char_boundary(end) {
                end -= 1;
            }
            s.truncate(end);
            s.push('…');
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_run_verify_and_errors() {
        let run = r#"{"op":"run","ok":true,"id":"20260301T020000Z-ab12","key":"b/20260301T020000Z-ab12.pgsnap","time":"2026-03-01T02:00:05Z","bytes":1234,"rawBytes":9999,"sha256":"abc","durationSeconds":5.25,"encrypted":true,"keyId":"k1","tables":3,"rows":10,"alreadyExisted":false}"#;
        let r = parse(&format!("some log line\n{run}\n")).expect("result");
        let b = r.backup_record().expect("record");
        assert_eq!(b.id, "20260301T020000Z-ab12");
        assert_eq!(b.bytes, 1234);
        assert_eq!(b.duration, "5.2s");
        assert!(r.restore_record().is_none());

        let verify = r#"{"op":"verify","ok":false,"snapshot":"s1","time":"2026-03-01T04:00:00Z","result":"Failed","durationSeconds":3.0,"checks":[{"name":"rowCounts","passed":false,"message":"orders: 3 != 4"}]}"#;
        let r = parse(verify).expect("result");
        let t = r.restore_record().expect("record");
        assert_eq!(t.result, RestoreTestResult::Failed);
        assert_eq!(
            r.failure_summary(),
            "failed checks: rowCounts (orders: 3 != 4)"
        );

        let err = r#"{"op":"run","ok":false,"reason":"InvalidConfig","error":"no database"}"#;
        let r = parse(err).expect("result");
        assert!(r.backup_record().is_none());
        assert_eq!(r.failure_summary(), "InvalidConfig: no database");

        assert_eq!(parse("panic: boom\n"), Err(NoResult));
    }
}
