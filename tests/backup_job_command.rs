//! Runs the exact command line of the BackupSchedule run Jobs locally against a real
//! PostgreSQL 15 — args from the built Job, the config file from the built ConfigMap,
//! Secrets written as their volumes would mount them — and feeds the output and the
//! termination log through the parser the controller uses.
//!
//! Only the mount root differs: every absolute path the Job uses (`/etc/palisade/…`,
//! `/var/lib/palisade/backups`, `/dev/termination-log`) is placed under a temporary
//! directory, as a container runtime would place it under the container's root.

#[path = "support/backup/mod.rs"]
mod backup_support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use backup_support::{PG_PASSWORD, PgServer, S3_ACCESS_KEY, S3_SECRET_KEY, S3Server, seed};
use palisade::backup::result::{self, JobResult};
use palisade::crd::BackupSchedule;
use palisade::crd::backup_schedule::RestoreTestResult;
use palisade::resources::backup_jobs::{self, RunKind, Trigger};
use serde_json::{Value, json};

const KEY: &str = "a-tenant-rotated-random-secret-value";

/// Secret name → key → value, as they would exist in the namespace.
fn secrets() -> BTreeMap<&'static str, BTreeMap<&'static str, &'static str>> {
    BTreeMap::from([
        ("db", BTreeMap::from([("password", PG_PASSWORD)])),
        ("backup-key", BTreeMap::from([("key", KEY)])),
        (
            "s3",
            BTreeMap::from([
                ("AWS_ACCESS_KEY_ID", S3_ACCESS_KEY),
                ("AWS_SECRET_ACCESS_KEY", S3_SECRET_KEY),
            ]),
        ),
    ])
}

fn schedule(pg: &PgServer, destination: Value) -> BackupSchedule {
    serde_json::from_value(json!({
        "apiVersion": "palisade.dev/v1alpha1",
        "kind": "BackupSchedule",
        "metadata": {"name": "orders", "namespace": "team-a", "uid": "u-1"},
        "spec": {
            "postgres": {"host": "127.0.0.1", "port": pg.port, "database": "app", "user": "postgres",
                         "sslMode": "disable", "passwordSecretRef": {"name": "db", "key": "password"}},
            "destination": destination,
            "encryption": {"keySecretRef": {"name": "backup-key", "key": "key"}, "keyId": "v1"},
            "compression": {"level": 1},
            "retention": {"keepLast": 1},
            "restoreTest": {"scratchDatabase": "scratch",
                            "target": {"host": "127.0.0.1", "port": pg.port, "user": "postgres", "sslMode": "disable",
                                       "passwordSecretRef": {"name": "db", "key": "password"}},
                            "checks": [{"name": "has-orders", "sql": "select count(*) > 0 from shop.orders"}]},
        },
    }))
    .expect("schedule")
}

/// Maps a container path to the local root.
fn local(root: &Path, p: &str) -> PathBuf {
    root.join(p.trim_start_matches('/'))
}

/// Materializes the Job's volumes under `root` as the kubelet would mount them and
/// returns its command line with container paths mapped under `root`.
fn materialize(root: &Path, bs: &BackupSchedule, job: &Value) -> Vec<String> {
    let pod = &job["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let cm = backup_jobs::config_map(bs).expect("config map");
    let remap = |s: &str| -> String {
        for prefix in ["/etc/palisade", "/var/lib/palisade", "/dev/termination-log"] {
            if let Some(rest) = s.strip_prefix(prefix) {
                return local(root, &format!("{prefix}{rest}"))
                    .display()
                    .to_string();
            }
        }
        s.to_string()
    };
    let volumes = pod["volumes"].as_array().expect("volumes");
    for m in container["volumeMounts"].as_array().expect("mounts") {
        let v = volumes
            .iter()
            .find(|v| v["name"] == m["name"])
            .expect("volume of mount");
        let target = local(root, m["mountPath"].as_str().expect("mountPath"));
        if let Some(sub) = m["subPath"].as_str() {
            // The ConfigMap file (config paths mapped like the args).
            let text = cm["data"][sub].as_str().expect("config data");
            let text = text.replace("/var/lib/palisade", &remap("/var/lib/palisade"));
            std::fs::create_dir_all(target.parent().expect("parent")).expect("mkdir");
            std::fs::write(&target, text).expect("config file");
        } else if let Some(secret) = v.get("secret") {
            std::fs::create_dir_all(&target).expect("mkdir");
            let data = &secrets()[secret["secretName"].as_str().expect("secretName")];
            for item in secret["items"].as_array().expect("items") {
                let value = data[item["key"].as_str().expect("key")];
                std::fs::write(target.join(item["path"].as_str().expect("path")), value)
                    .expect("secret file");
            }
        } else {
            std::fs::create_dir_all(&target).expect("mkdir");
        }
    }
    std::fs::create_dir_all(local(root, "/dev")).expect("dev");
    let mut argv: Vec<String> = container["command"]
        .as_array()
        .expect("command")
        .iter()
        .chain(container["args"].as_array().expect("args"))
        .map(|a| remap(a.as_str().expect("arg")))
        .collect();
    assert_eq!(argv.remove(0), "palisade");
    argv
}

/// Runs one Job's command; returns the parsed stdout and termination log results.
fn run_job(pg: &PgServer, root: &Path, bs: &BackupSchedule, kind: RunKind) -> JobResult {
    let at = k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).expect("time");
    let job = backup_jobs::job(bs, kind, at, Trigger::Schedule, "img");
    let args = materialize(root, bs, &job);
    let text = serde_json::to_string(&job).expect("job json");
    assert!(!text.contains(PG_PASSWORD) && !text.contains(KEY) && !text.contains(S3_SECRET_KEY));
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(&args)
        // The image has pg_dump/pg_restore on PATH; locally they live here.
        .env("PALISADE_PG_BIN", &pg.bin)
        .env_remove("PGPASSWORD")
        .env_remove("PALISADE_BACKUP_KEY")
        .env_remove("AWS_ACCESS_KEY_ID")
        .env_remove("AWS_SECRET_ACCESS_KEY")
        .output()
        .expect("run palisade");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!stdout.contains(PG_PASSWORD) && !stderr.contains(PG_PASSWORD));
    let from_stdout = result::parse(&stdout)
        .unwrap_or_else(|_| panic!("no result on stdout: {stdout} / {stderr}"));
    let message =
        std::fs::read_to_string(local(root, "/dev/termination-log")).expect("termination log");
    assert!(message.len() <= 4096, "termination message too large");
    let from_log = result::parse(&message).expect("result in termination log");
    assert_eq!(from_stdout, from_log);
    assert!(out.status.success(), "{kind:?} failed: {stdout} / {stderr}");
    from_log
}

async fn backup_and_verify(pg: &PgServer, destination: Value) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let bs = schedule(pg, destination);

    let run = run_job(pg, tmp.path(), &bs, RunKind::Backup);
    assert_eq!(run.op, "run");
    let record = run.backup_record().expect("backup record");
    assert!(record.bytes > 0 && !record.sha256.is_empty());
    assert_eq!(run.pruned.as_ref().map(|p| p.deleted_count), Some(0));
    assert_eq!(run.snapshot_count, Some(1));

    // A second run; retention (keepLast: 1) prunes the first after it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let run2 = run_job(pg, tmp.path(), &bs, RunKind::Backup);
    assert_ne!(run2.id, run.id);
    assert_eq!(run2.snapshot_count, Some(1), "{run2:?}");
    assert_eq!(run2.pruned.as_ref().map(|p| p.deleted_count), Some(1));

    let verify = run_job(pg, tmp.path(), &bs, RunKind::Verify);
    let test = verify.restore_record().expect("restore record");
    assert_eq!(test.result, RestoreTestResult::Passed, "{verify:?}");
    assert_eq!(Some(test.snapshot.clone()), run2.id);
    assert!(
        test.checks
            .iter()
            .any(|c| c.name == "has-orders" && c.passed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_command_line_with_a_volume_destination() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_db("app").await;
    seed(&pg.client("app").await, 2_000).await;
    backup_and_verify(
        &pg,
        json!({"persistentVolumeClaim": {"claimName": "backups", "subPath": "orders"}}),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn job_command_line_with_an_s3_destination() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_db("app").await;
    seed(&pg.client("app").await, 2_000).await;
    let s3 = S3Server::start().await;
    s3.create_bucket("backups");
    backup_and_verify(
        &pg,
        json!({"s3": {"bucket": "backups", "prefix": "orders/", "region": "us-east-1",
                      "endpoint": s3.endpoint, "forcePathStyle": true,
                      "credentialsSecretRef": {"name": "s3"}}}),
    )
    .await;
}
