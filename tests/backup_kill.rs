//! Issue #14, kill safety: the real `palisade backup run` binary is sent SIGTERM while
//! it is uploading (directory and S3 over HTTP). It must stop pg_dump, remove the
//! `.partial` file or abort the multipart upload, exit 143, and leave nothing listed;
//! what a SIGKILL leaves is removed by the next prune.

#[path = "support/backup/mod.rs"]
mod backup_support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use backup_support::{PgServer, S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, palisade_command, seed};

const DEADLINE: Duration = Duration::from_secs(120);

/// Pids of the direct children of `parent` whose command name is `comm`.
fn children_named(parent: u32, comm: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // "pid (comm) state ppid …"; comm may contain spaces, so split at the last ')'.
            let Some((head, tail)) = stat.rsplit_once(')') else {
                return false;
            };
            let name = head.split_once('(').map(|(_, n)| n).unwrap_or("");
            let ppid = tail.split_whitespace().nth(1).and_then(|p| p.parse().ok());
            name == comm && ppid == Some(parent)
        })
        .collect()
}

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| {
            // A zombie (Z) or dead (X) process is not running.
            let state = s
                .rsplit_once(')')
                .and_then(|(_, t)| t.split_whitespace().next());
            !matches!(state, Some("Z") | Some("X"))
        })
        .unwrap_or(false)
}

async fn wait_until(what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Starts `palisade backup run` slowly enough (zstd level 19) to be caught mid-upload.
fn spawn_run(pg: &PgServer, dest: &[&str]) -> Child {
    let mut args = vec!["run", "--output", "json", "--id", "killed"];
    args.extend(["--compression-level", "19", "--database", "app"]);
    args.extend(dest);
    palisade_command(pg, &args)
        .env(
            "PALISADE_BACKUP_KEY",
            "a-tenant-rotated-random-secret-value",
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn palisade")
}

/// Sends SIGTERM to `child` once `ready` holds and checks the process and its pg_dump
/// are gone; returns the one-line JSON result.
async fn terminate(mut child: Child, ready: impl FnMut() -> bool) -> serde_json::Value {
    wait_until("the upload to be under way", ready).await;
    let dumps = children_named(child.id(), "pg_dump");
    assert_eq!(dumps.len(), 1, "pg_dump runs as palisade's child");
    let ok = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill")
        .success();
    assert!(ok);
    let mut status = None;
    wait_until("palisade to exit", || {
        status = child.try_wait().expect("wait");
        status.is_some()
    })
    .await;
    let out = child.wait_with_output().expect("output");
    assert_eq!(
        status.and_then(|s| s.code()),
        Some(143),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for pid in dumps {
        assert!(!alive(pid), "pg_dump {pid} still running");
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON result");
    assert_eq!(v["ok"], false);
    assert_eq!(v["reason"], "Interrupted", "{v}");
    v
}

/// Bytes in the run's temporary data file (`killed.snap.<random>.partial`).
fn partial_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| {
            let n = e.file_name().to_string_lossy().to_string();
            n.starts_with("killed.snap.") && n.ends_with(".partial")
        })
        .filter_map(|e| e.metadata().ok())
        .map(|m| m.len())
        .sum()
}

async fn seeded() -> Option<PgServer> {
    let pg = PgServer::start()?;
    pg.create_db("app").await;
    seed(&pg.client("app").await, 300_000).await;
    Some(pg)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_upload_to_a_directory_leaves_nothing() {
    let Some(pg) = seeded().await else { return };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("snapshots");
    let dir_arg = dir.display().to_string();
    let child = spawn_run(&pg, &["--dir", &dir_arg]);
    terminate(child, || partial_bytes(&dir) > 0).await;
    let left: Vec<_> = std::fs::read_dir(&dir)
        .expect("dir")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
    let (out, list) = backup_support::cli(&pg, &dir, &["list", "--database", "app"]);
    assert!(out.status.success());
    assert_eq!(list["snapshots"], serde_json::json!([]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_upload_to_s3_aborts_the_multipart_upload() {
    let Some(pg) = seeded().await else { return };
    let s3 = S3Server::start().await;
    s3.create_bucket("snapshots");
    let tmp = tempfile::tempdir().expect("tempdir");
    let creds = tmp.path().join("creds");
    std::fs::write(&creds, format!("{S3_ACCESS_KEY}\n{S3_SECRET_KEY}\n")).expect("creds");
    let creds_arg = creds.display().to_string();
    let child = spawn_run(
        &pg,
        &[
            "--s3-bucket",
            "snapshots",
            "--s3-prefix",
            "prod",
            "--s3-endpoint",
            &s3.endpoint,
            "--s3-region",
            "us-east-1",
            "--s3-force-path-style",
            "--s3-credentials-file",
            &creds_arg,
            "--part-size-mib",
            "5",
        ],
    );
    terminate(child, || !s3.open_upload_parts().is_empty()).await;
    assert!(
        s3.open_upload_parts().is_empty(),
        "multipart upload left open: {:?}",
        s3.open_upload_parts()
    );
    let storage = palisade::backup::destination::Storage::s3(s3.settings("snapshots", "prod"))
        .await
        .expect("storage");
    assert_eq!(storage.list().await.expect("list"), vec![]);
}

/// What a SIGKILL leaves (no handler runs) is removed by the next prune once it is
/// older than a day; a fresh `.partial` (a run in progress) is left alone.
#[tokio::test]
async fn prune_removes_leftovers_older_than_a_day() {
    use palisade::backup::{catalog, destination::Storage, retention::Policy};
    let tmp = tempfile::tempdir().expect("tempdir");
    let storage = Storage::filesystem(tmp.path()).await.expect("storage");
    let old = tmp.path().join("crashed.snap.0badc0de.partial");
    let fresh = tmp.path().join("running.snap.12345678.partial");
    // Issue #32: `*.partial` files that this engine did not name are not its to delete.
    let foreign = tmp.path().join("someone-elses.partial");
    std::fs::write(&old, b"half a dump").expect("old");
    std::fs::write(&fresh, b"a dump in progress").expect("fresh");
    std::fs::write(&foreign, b"not ours").expect("foreign");
    for f in [&old, &foreign] {
        let ok = Command::new("touch")
            .args(["-d", "2 days ago"])
            .arg(f)
            .status()
            .expect("touch")
            .success();
        assert!(ok);
    }
    let now = chrono::Utc::now();
    let dry = catalog::PruneOptions {
        dry_run: true,
        ..catalog::PruneOptions::at(now)
    };
    let rep = catalog::prune(&storage, &[], &Policy::default(), &dry)
        .await
        .expect("dry run");
    assert!(
        rep.stale_removed.is_empty() && old.exists(),
        "a dry run removes nothing"
    );
    let rep = catalog::prune(
        &storage,
        &[],
        &Policy::default(),
        &catalog::PruneOptions::at(now),
    )
    .await
    .expect("prune");
    assert_eq!(rep.stale_removed, vec![old.display().to_string()]);
    assert!(!old.exists() && fresh.exists() && foreign.exists());
}
