//! Snapshot engine against a real PostgreSQL 15 and an in-process S3 server: encrypted
//! round trip, restore tests that pass and fail, wrong keys, refusal to overwrite, and
//! a failing pg_dump that must leave nothing behind.

#[path = "support/backup/mod.rs"]
mod backup_support;

use std::sync::Arc;
use std::time::Duration;

use backup_support::{PgServer, S3Server, checksum, restore_options, seed};
use palisade::backup::catalog;
use palisade::backup::destination::Storage;
use palisade::backup::engine::{self, Progress, RestoreOptions, RunOptions};
use palisade::backup::format::{DEFAULT_CHUNK_SIZE, EncryptionKey};
use palisade::backup::manifest::{self, Manifest};
use palisade::backup::verify::{self, VerifyOptions};
use palisade::crd::backup_schedule::SqlCheck;

fn key(material: &str, id: &str) -> EncryptionKey {
    EncryptionKey::new(material.as_bytes().to_vec(), Some(id.into())).expect("key")
}

fn progress() -> Arc<Progress> {
    Arc::new(Progress::default())
}

/// Verifies the newest snapshot with `key` and no checks: the test fails in its
/// restore check, whose message this returns.
async fn failed_restore(storage: &Storage, pg: &PgServer, key: &EncryptionKey) -> String {
    let rep = verify::verify(storage, &verify_opts(pg, vec![key.clone()], vec![]))
        .await
        .expect("verify runs");
    assert!(!rep.record.passed);
    let restore = rep
        .record
        .checks
        .iter()
        .find(|c| c.name == "restore")
        .expect("restore check");
    assert!(!restore.passed, "{restore:?}");
    restore.message.clone().unwrap_or_default()
}

fn verify_opts(pg: &PgServer, keys: Vec<EncryptionKey>, checks: Vec<SqlCheck>) -> VerifyOptions {
    VerifyOptions {
        server: pg.conn("postgres"),
        scratch_database: "palisade_restore_test".into(),
        checks,
        no_owner: true,
        jobs: None,
        scratch_dir: None,
        compare_row_counts: true,
        timeout: Duration::from_secs(120),
        keys,
        pg_bin: Some(pg.bin.clone()),
        snapshot: None,
        allow_unencrypted: false,
        allow_unauthenticated: false,
    }
}

fn check(name: &str, sql: &str) -> SqlCheck {
    SqlCheck {
        name: name.into(),
        sql: sql.into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_encrypted_round_trip_verify_and_failures() {
    let Some(pg) = PgServer::start() else { return };
    let s3 = S3Server::start().await;
    s3.create_bucket("snapshots");
    let storage = Storage::s3(s3.settings("snapshots", "prod/app"))
        .await
        .expect("s3 storage");

    pg.create_db("app").await;
    let app = pg.client("app").await;
    seed(&app, 200_000).await;
    let expected = checksum(&app).await;

    let k1 = key("correct horse battery staple 0123456789", "v1");
    let run = engine::run(
        &storage,
        &RunOptions {
            pg: pg.conn("app"),
            pg_bin: Some(pg.bin.clone()),
            compression_level: 3,
            compression_threads: 0,
            key: Some(k1.clone()),
            mac_key: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            id: None,
        },
        progress(),
    )
    .await
    .expect("backup run");
    let m = &run.manifest;
    assert_eq!(m.encryption.key_id.as_deref(), Some("v1"));
    assert_eq!(m.row_counts.get("shop.orders"), Some(&200_000));
    assert_eq!(m.row_counts.get("public.Weird Name"), Some(&3));
    assert_eq!(m.row_counts.get("public.empty"), Some(&0));
    assert!(
        m.stored_bytes > 5 << 20,
        "want a multi-part upload, got {}",
        m.stored_bytes
    );
    assert!(m.server_version.starts_with("15"));
    assert!(run.key.starts_with("prod/app/"));
    assert!(s3.open_upload_parts().is_empty());

    // Round trip: restore into a new database, identical content.
    let restore_opts = |db: &str, keys: Vec<EncryptionKey>, force: bool| RestoreOptions {
        force,
        ..restore_options(&pg, pg.conn(db), keys)
    };
    engine::restore(
        &storage,
        &restore_opts("restored", vec![k1.clone()], false),
        progress(),
    )
    .await
    .expect("restore");
    assert_eq!(checksum(&pg.client("restored").await).await, expected);

    // Refuses to restore over a non-empty database unless forced.
    let err = engine::restore(
        &storage,
        &restore_opts("restored", vec![k1.clone()], false),
        progress(),
    )
    .await
    .expect_err("non-empty target");
    assert_eq!(err.reason(), "TargetNotEmpty");
    engine::restore(
        &storage,
        &restore_opts("restored", vec![k1.clone()], true),
        progress(),
    )
    .await
    .expect("forced restore");
    assert_eq!(checksum(&pg.client("restored").await).await, expected);

    // In parallel: spooled to the scratch directory, `pg_restore -j 2`, spool removed.
    let scratch = tempfile::tempdir().expect("scratch dir");
    let rep = engine::restore(
        &storage,
        &RestoreOptions {
            jobs: Some(2),
            scratch_dir: Some(scratch.path().to_path_buf()),
            ..restore_opts("restored_jobs", vec![k1.clone()], false)
        },
        progress(),
    )
    .await
    .expect("parallel restore");
    assert_eq!(checksum(&pg.client("restored_jobs").await).await, expected);
    assert_eq!(std::fs::read_dir(scratch.path()).expect("ls").count(), 0);
    for stage in [
        "spool.wall",
        "pgRestore.wall",
        "hash",
        "decrypt",
        "decode.cpu",
    ] {
        assert!(
            rep.profile.contains_key(stage),
            "{stage}: {:?}",
            rep.profile
        );
    }
    for stage in [
        "dumpRead.wait",
        "compress.cpu",
        "seal.encrypt",
        "seal.hash",
        "rowCounts.stream",
        "rowCounts.sqlTables",
    ] {
        assert!(
            run.profile.contains_key(stage),
            "{stage}: {:?}",
            run.profile
        );
    }

    // Wrong key material under the right id, a missing key, an unknown key id: the
    // manifest's MAC is checked first, so each is refused before the target is touched.
    let named = |db: &str, keys: Vec<EncryptionKey>| RestoreOptions {
        snapshot: Some(m.id.clone()),
        ..restore_opts(db, keys, false)
    };
    let wrong = key("not the right key material at all!!", "v1");
    let err = engine::restore(&storage, &named("wrongkey", vec![wrong]), progress())
        .await
        .expect_err("wrong key");
    assert_eq!(err.reason(), "Unauthenticated", "{err}");
    assert!(err.to_string().contains("does not verify"), "{err}");
    let err = engine::restore(&storage, &named("wrongkey", vec![]), progress())
        .await
        .expect_err("no key");
    assert_eq!(err.reason(), "MissingKey");
    let err = engine::restore(
        &storage,
        &named("wrongkey", vec![key("another key, 16+ bytes", "v2")]),
        progress(),
    )
    .await
    .expect_err("unknown key");
    assert_eq!(err.reason(), "Unauthenticated", "{err}");
    assert!(err.to_string().contains("\"v1\""), "{err}");
    assert!(
        !palisade::backup::pg::database_exists(&pg.client("postgres").await, "wrongkey")
            .await
            .expect("lookup"),
        "nothing restored"
    );

    // Restore test passes with true checks and exact row counts.
    let good_checks = vec![
        check(
            "has customers",
            "SELECT count(*) = 1000 FROM shop.customers",
        ),
        check(
            "fk intact",
            "SELECT NOT EXISTS (SELECT 1 FROM shop.orders o LEFT JOIN shop.customers c ON c.id = o.customer WHERE c.id IS NULL)",
        ),
    ];
    let rep = verify::verify(
        &storage,
        &verify_opts(&pg, vec![k1.clone()], good_checks.clone()),
    )
    .await
    .expect("verify runs");
    assert!(rep.record.passed, "{:?}", rep.record.checks);
    assert_eq!(rep.record.checks.len(), 4, "restore + 2 checks + rowCounts");
    let scratch_gone = !palisade::backup::pg::database_exists(
        &pg.client("postgres").await,
        "palisade_restore_test",
    )
    .await
    .expect("lookup");
    assert!(scratch_gone, "scratch database dropped");
    let listed = catalog::list(&storage, std::slice::from_ref(&k1))
        .await
        .expect("list")
        .entries;
    assert_eq!(listed.len(), 1);
    assert!(listed[0].verification.as_ref().is_some_and(|v| v.passed));

    // A wrong check fails the test.
    let rep = verify::verify(
        &storage,
        &verify_opts(
            &pg,
            vec![k1.clone()],
            vec![check(
                "impossible",
                "SELECT count(*) = 7 FROM shop.customers",
            )],
        ),
    )
    .await
    .expect("verify runs");
    assert!(!rep.record.passed);
    assert!(
        rep.record
            .checks
            .iter()
            .any(|c| c.name == "impossible" && !c.passed)
    );

    // A forged row count (the manifest expects one more order than the snapshot holds)
    // no longer authenticates: the restore test refuses the manifest and writes nothing.
    let mname = manifest::manifest_name(&m.id);
    let original = storage
        .get_small(&mname)
        .await
        .expect("get")
        .expect("manifest");
    let mut doctored: Manifest = serde_json::from_slice(&original).expect("parse");
    *doctored.row_counts.get_mut("shop.orders").expect("orders") += 1;
    storage
        .put_small(&mname, serde_json::to_vec(&doctored).expect("json"))
        .await
        .expect("put");
    let record_before = storage
        .get_small(&manifest::verification_name(&m.id))
        .await
        .expect("get");
    let err = verify::verify(&storage, &verify_opts(&pg, vec![k1.clone()], vec![]))
        .await
        .expect_err("forged manifest refused");
    assert_eq!(err.reason(), "NoSnapshot", "{err}");
    let err = verify::verify(
        &storage,
        &VerifyOptions {
            snapshot: Some(m.id.clone()),
            ..verify_opts(&pg, vec![k1.clone()], vec![])
        },
    )
    .await
    .expect_err("forged manifest refused");
    assert_eq!(err.reason(), "Unauthenticated", "{err}");
    assert_eq!(
        storage
            .get_small(&manifest::verification_name(&m.id))
            .await
            .expect("get"),
        record_before
    );
    storage
        .put_small(&mname, original)
        .await
        .expect("restore manifest");

    // Tampered object: one flipped byte in the middle.
    let object_path = s3.root.path().join("snapshots").join(&run.key);
    let pristine = std::fs::read(&object_path).expect("object file");
    let mut tampered = pristine.clone();
    let mid = tampered.len() / 2;
    tampered[mid] ^= 0x40;
    std::fs::write(&object_path, &tampered).expect("tamper");
    let msg = failed_restore(&storage, &pg, &k1).await;
    assert!(msg.contains("DecryptionFailed"), "{msg}");

    // Truncated object: the final chunk is gone.
    std::fs::write(&object_path, &pristine[..pristine.len() - 1000]).expect("truncate");
    let msg = failed_restore(&storage, &pg, &k1).await;
    assert!(
        msg.contains("Truncated") || msg.contains("SizeMismatch"),
        "{msg}"
    );

    // Back to pristine: passes again.
    std::fs::write(&object_path, &pristine).expect("untamper");
    let rep = verify::verify(&storage, &verify_opts(&pg, vec![k1.clone()], good_checks))
        .await
        .expect("verify runs");
    assert!(rep.record.passed, "{:?}", rep.record.checks);

    // A pg_dump that fails mid-stream: run fails, its stderr redacted, nothing listed,
    // no multipart upload left open.
    let fake = tempfile::tempdir().expect("tempdir");
    let script = fake.path().join("pg_dump");
    std::fs::write(
        &script,
        "#!/bin/sh\nif [ \"$1\" = --version ]; then echo 'pg_dump (PostgreSQL) 15.99'; exit 0; fi\n\
         head -c 7000000 /dev/urandom\necho \"pg_dump: error: password $PGPASSWORD rejected\" >&2\nexit 1\n",
    )
    .expect("script");
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    let err = engine::run(
        &storage,
        &RunOptions {
            pg: pg.conn("app"),
            pg_bin: Some(fake.path().to_path_buf()),
            compression_level: 1,
            compression_threads: 0,
            key: Some(k1.clone()),
            mac_key: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            id: Some("doomed".into()),
        },
        progress(),
    )
    .await
    .expect_err("pg_dump fails");
    assert_eq!(err.reason(), "PgDumpFailed");
    let text = err.to_string();
    assert!(
        text.contains("<redacted>") && !text.contains(backup_support::PG_PASSWORD),
        "{text}"
    );
    assert!(
        s3.open_upload_parts().is_empty(),
        "{:?}",
        s3.open_upload_parts()
    );
    assert!(
        storage
            .get_small(&manifest::manifest_name("doomed"))
            .await
            .expect("get")
            .is_none()
    );
    assert!(
        storage
            .get_small(&manifest::data_name("doomed"))
            .await
            .expect("get")
            .is_none()
    );
    assert_eq!(
        catalog::list(&storage, std::slice::from_ref(&k1))
            .await
            .expect("list")
            .entries
            .len(),
        1
    );
}
