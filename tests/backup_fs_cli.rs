//! The `palisade backup` command line with the filesystem backend against a real
//! PostgreSQL 15: encrypted and unencrypted round trips, JSON results, verify exit
//! codes, list and prune.

#[path = "support/backup/mod.rs"]
mod backup_support;

use std::process::Command;

use backup_support::{PG_PASSWORD, PgServer, checksum, cli as palisade, seed};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn filesystem_cli_round_trip_verify_list_prune() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_db("app").await;
    let app = pg.client("app").await;
    seed(&app, 20_000).await;
    let expected = checksum(&app).await;

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("snapshots");
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, "a-tenant-rotated-random-secret-value\n").expect("key");
    let key_arg = format!("v7={}", key_file.display());

    // Encrypted run.
    let (out, run) = palisade(
        &pg,
        &dir,
        &[
            "run",
            "--database",
            "app",
            "--key-file",
            &key_arg,
            "--compression-level",
            "1",
        ],
    );
    assert!(out.status.success(), "{run}");
    assert_eq!(run["ok"], true);
    assert_eq!(run["encrypted"], true);
    assert_eq!(run["keyId"], "v7");
    assert_eq!(run["tables"], 4);
    assert_eq!(run["rows"], 20_000 + 1000 + 3);
    let id = run["id"].as_str().expect("id").to_string();
    assert!(
        dir.join(format!("{id}.snap")).exists() && dir.join(format!("{id}.manifest.json")).exists()
    );

    // Restore into a new database, identical content.
    let (out, res) = palisade(
        &pg,
        &dir,
        &[
            "restore",
            "--database",
            "app",
            "--target-database",
            "copy",
            "--create",
            "--key-file",
            &key_arg,
        ],
    );
    assert!(out.status.success(), "{res}");
    assert_eq!(checksum(&pg.client("copy").await).await, expected);

    // Without the key: fails with a reason, exit code 1.
    let (out, res) = palisade(
        &pg,
        &dir,
        &[
            "restore",
            "--database",
            "app",
            "--target-database",
            "copy2",
            "--create",
        ],
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(res["reason"], "MissingKey");

    // Verify: passes; a false check fails with exit code 1.
    let (out, ver) = palisade(
        &pg,
        &dir,
        &[
            "verify",
            "--database",
            "app",
            "--key-file",
            &key_arg,
            "--check",
            "orders=SELECT count(*) > 0 FROM shop.orders",
        ],
    );
    assert!(out.status.success(), "{ver}");
    assert_eq!(ver["result"], "Passed");
    let (out, ver) = palisade(
        &pg,
        &dir,
        &[
            "verify",
            "--database",
            "app",
            "--key-file",
            &key_arg,
            "--check",
            "nope=SELECT false",
        ],
    );
    assert_eq!(out.status.code(), Some(1), "{ver}");
    assert_eq!(ver["result"], "Failed");
    // Passing again so it is the newest verified snapshot.
    let (out, _) = palisade(
        &pg,
        &dir,
        &["verify", "--database", "app", "--key-file", &key_arg],
    );
    assert!(out.status.success());

    // An unencrypted snapshot, round trip, then tamper with it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (out, plain) = palisade(&pg, &dir, &["run", "--database", "app", "--id", "plain-1"]);
    assert!(out.status.success(), "{plain}");
    assert_eq!(plain["encrypted"], false);
    let (out, res) = palisade(
        &pg,
        &dir,
        &[
            "restore",
            "--database",
            "app",
            "--snapshot",
            "plain-1",
            "--target-database",
            "copy3",
            "--create",
        ],
    );
    assert!(out.status.success(), "{res}");
    assert_eq!(checksum(&pg.client("copy3").await).await, expected);
    // Same id again: idempotent.
    let (out, again) = palisade(&pg, &dir, &["run", "--database", "app", "--id", "plain-1"]);
    assert!(out.status.success());
    assert_eq!(again["alreadyExisted"], true);
    let obj = dir.join("plain-1.snap");
    let mut bytes = std::fs::read(&obj).expect("read");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&obj, &bytes).expect("tamper");
    let (out, ver) = palisade(
        &pg,
        &dir,
        &["verify", "--database", "app", "--snapshot", "plain-1"],
    );
    assert_eq!(out.status.code(), Some(1), "{ver}");

    // List: newest first, verification state.
    let (out, list) = palisade(&pg, &dir, &["list", "--database", "app"]);
    assert!(out.status.success());
    let snaps = list["snapshots"].as_array().expect("snapshots");
    assert_eq!(snaps.len(), 2);
    assert_eq!(snaps[0]["id"], "plain-1");
    assert_eq!(snaps[0]["verified"], "failed");
    assert_eq!(snaps[1]["verified"], "passed");

    // Prune keepLast 1: the newest verified snapshot survives anyway.
    let (out, dry) = palisade(
        &pg,
        &dir,
        &[
            "prune",
            "--database",
            "app",
            "--keep-last",
            "1",
            "--dry-run",
        ],
    );
    assert!(out.status.success());
    assert_eq!(dry["deletedCount"], 0, "{dry}");
    let (out, pruned) = palisade(
        &pg,
        &dir,
        &[
            "prune",
            "--database",
            "app",
            "--keep-last",
            "0",
            "--max-age",
            "1s",
        ],
    );
    assert!(out.status.success(), "{pruned}");
    assert_eq!(
        pruned["deletedCount"], 0,
        "newest and newest verified are both kept: {pruned}"
    );

    // Once plain-1 is gone by hand-deleting its manifest, it is no longer listed.
    std::fs::remove_file(dir.join("plain-1.manifest.json")).expect("rm");
    let (_, list) = palisade(&pg, &dir, &["list", "--database", "app"]);
    assert_eq!(list["snapshots"].as_array().map(Vec::len), Some(1));

    // A config file shaped like BackupSchedule.spec.
    let cfg = tmp.path().join("schedule.yaml");
    std::fs::write(
        &cfg,
        format!(
            "postgres: {{host: 127.0.0.1, port: {}, database: app, user: postgres, sslMode: disable}}\n\
             destination: {{path: {}}}\ncompression: {{level: 5}}\nretention: {{keepLast: 1}}\n",
            pg.port,
            tmp.path().join("from-config").display()
        ),
    )
    .expect("config");
    let out = Command::new(env!("CARGO_BIN_EXE_palisade"))
        .args(["backup", "run", "--output", "json", "--config"])
        .arg(&cfg)
        .arg("--pg-bin")
        .arg(&pg.bin)
        .env("PGPASSWORD", PG_PASSWORD)
        .output()
        .expect("run");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        std::fs::read_dir(tmp.path().join("from-config"))
            .expect("dir")
            .count()
            >= 2
    );
}
