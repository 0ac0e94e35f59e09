//! The one-line JSON result of `palisade backup … --output json` (schema in
//! `docs/BACKUP.md`), parsed back into types. The CLI writes it to stdout and, with
//! `--termination-log`, to the container's termination message; the BackupSchedule
//! controller reads it from there with [`parse`]. One parser for both sides.
//!
//! With a key, the CLI signs the line ([`sign_line`]): `macKeyId` and `mac` (HMAC-SHA256
//! under the key's metadata MAC key, label `palisade job result v1`) over every other
//! field, `run` (the Job's name) included. The controller then accepts a successful
//! result only if it authenticates and names the Job it came from
//! ([`parse_authenticated`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::format::EncryptionKey;

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

const RESULT_LABEL: &[u8] = b"palisade job result v1\0";

fn last_result(text: &str) -> Option<(Value, JobResult)> {
    text.lines()
        .rev()
        .map(str::trim)
        .filter(|l| l.starts_with('{'))
        .find_map(|l| {
            let v: Value = serde_json::from_str(l).ok()?;
            let r = serde_json::from_value::<JobResult>(v.clone()).ok()?;
            Some((v, r))
        })
}

/// Finds the result in `text`: the last line that is a JSON object with `op` and
/// `ok` (the termination message may be a log tail with other lines before it).
pub fn parse(text: &str) -> Result<JobResult, NoResult> {
    last_result(text).map(|(_, r)| r).ok_or(NoResult)
}

/// The bytes a result's MAC covers: the label, then the compact JSON without `mac`
/// (object keys in serde_json's map order, which a parse and re-serialization keep).
fn signing_input(v: &Value) -> Option<Vec<u8>> {
    let mut unsigned = v.clone();
    unsigned.as_object_mut()?.remove("mac");
    let mut data = RESULT_LABEL.to_vec();
    data.extend(serde_json::to_vec(&unsigned).ok()?);
    Some(data)
}

/// Adds `macKeyId` and `mac` to a one-line JSON result (unchanged if it is not one).
pub fn sign_line(line: &str, key: &EncryptionKey) -> String {
    let Ok(mut v) = serde_json::from_str::<Value>(line) else {
        return line.to_string();
    };
    let Some(obj) = v.as_object_mut() else {
        return line.to_string();
    };
    obj.remove("mac");
    obj.insert("macKeyId".into(), Value::from(key.id()));
    let Some(data) = signing_input(&v) else {
        return line.to_string();
    };
    if let Some(obj) = v.as_object_mut() {
        obj.insert("mac".into(), Value::from(key.mac(&data)));
    }
    v.to_string()
}

/// Why a Job's result was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResultError {
    /// No result line.
    #[error(transparent)]
    Missing(#[from] NoResult),
    /// The result has no valid MAC under the schedule's key.
    #[error("the result is not authenticated ({0}); ignored")]
    Unauthenticated(&'static str),
    /// An authenticated result of another run (replayed).
    #[error("the result belongs to run {0:?}; ignored")]
    WrongRun(String),
}

impl ResultError {
    /// Short bounded reason.
    pub fn reason(&self) -> &'static str {
        match self {
            ResultError::Missing(_) => "NoResult",
            ResultError::Unauthenticated(_) => "Unauthenticated",
            ResultError::WrongRun(_) => "Unauthenticated",
        }
    }
}

/// Finds the result in `text` and, when `keys` is not empty, checks its MAC and that
/// its `run` is `run`. `Ok` carries whether it was authenticated; an unauthenticated
/// result is still returned so that failures stay visible, and it is the caller's
/// rule that it never counts as a success.
pub fn parse_authenticated(
    text: &str,
    keys: &[EncryptionKey],
    run: &str,
) -> Result<(JobResult, Result<(), ResultError>), NoResult> {
    let (v, r) = last_result(text).ok_or(NoResult)?;
    if keys.is_empty() {
        return Ok((r, Ok(())));
    }
    let check = (|| {
        let kid = v.get("macKeyId").and_then(Value::as_str);
        let mac = v.get("mac").and_then(Value::as_str);
        let (Some(kid), Some(mac)) = (kid, mac) else {
            return Err(ResultError::Unauthenticated("no MAC"));
        };
        let key = keys
            .iter()
            .find(|k| k.id() == kid)
            .ok_or(ResultError::Unauthenticated("unknown key"))?;
        let data = signing_input(&v).ok_or(ResultError::Unauthenticated("not an object"))?;
        if !key.verify_mac(&data, mac) {
            return Err(ResultError::Unauthenticated("invalid MAC"));
        }
        match v.get("run").and_then(Value::as_str) {
            Some(r) if r == run => Ok(()),
            other => Err(ResultError::WrongRun(other.unwrap_or("").to_string())),
        }
    })();
    Ok((r, check))
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

    #[test]
    fn signed_results() {
        let key = crate::backup::format::test_key("k1");
        let keys = [key.clone()];
        let line = r#"{"op":"run","ok":true,"run":"orders-29000000","id":"s1","time":"2026-03-01T02:00:05Z","bytes":1234,"durationSeconds":5.25}"#;
        let signed = sign_line(line, &key);
        assert!(signed.len() < line.len() + 120);
        let (r, check) = parse_authenticated(&format!("log\n{signed}\n"), &keys, "orders-29000000")
            .expect("result");
        assert_eq!(check, Ok(()));
        assert_eq!(r.id.as_deref(), Some("s1"));
        // No key configured: nothing to check.
        assert_eq!(parse_authenticated(line, &[], "x").expect("r").1, Ok(()));
        // Unsigned, altered, replayed from another run.
        let check = |text: &str| {
            parse_authenticated(text, &keys, "orders-29000000")
                .expect("r")
                .1
        };
        assert_eq!(check(line), Err(ResultError::Unauthenticated("no MAC")));
        let altered = signed.replace("\"bytes\":1234", "\"bytes\":1235");
        assert_eq!(
            check(&altered),
            Err(ResultError::Unauthenticated("invalid MAC"))
        );
        assert_eq!(
            parse_authenticated(&signed, &keys, "orders-29000060")
                .expect("r")
                .1,
            Err(ResultError::WrongRun("orders-29000000".into()))
        );
        let other =
            crate::backup::format::EncryptionKey::new(vec![9; 32], Some("k1".into())).expect("key");
        assert_eq!(
            check(&sign_line(line, &other)),
            Err(ResultError::Unauthenticated("invalid MAC"))
        );
    }
}
