//! The `palisade backup` command line with the filesystem backend against a real
//! PostgreSQL 15: encrypted and unencrypted round trips, JSON results, verify exit
//! codes, list and prune.

#[path = "support/backup/mod.rs"]
mod backup_support;

use std::process::Command;

use backup_support::{PG_PASSWORD, PgServer, argv, checksum, cli as palisade, seed};

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
    // `palisade backup ARGS --key-file v7=KEY`.
    let keyed = |args: &[&str]| {
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--key-file", &key_arg]);
        palisade(&pg, &dir, &args)
    };
    let verify = |check: &str| keyed(&["verify", "--database", "app", "--check", check]);

    // Encrypted run.
    let (out, run) = keyed(&argv("run --database app --compression-level 1"));
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
    let (out, res) = keyed(&argv(
        "restore --database app --target-database copy --create",
    ));
    assert!(out.status.success(), "{res}");
    assert_eq!(checksum(&pg.client("copy").await).await, expected);

    // Without the key: fails with a reason, exit code 1.
    let (out, res) = palisade(
        &pg,
        &dir,
        &argv("restore --database app --target-database copy2 --create"),
    );
    assert_eq!(out.status.code(), Some(1));
    assert_eq!(res["reason"], "MissingKey");

    // Verify: passes; a false check fails with exit code 1.
    let (out, ver) = verify("orders=SELECT count(*) > 0 FROM shop.orders");
    assert!(out.status.success(), "{ver}");
    assert_eq!(ver["result"], "Passed");
    let (out, ver) = verify("nope=SELECT false");
    assert_eq!(out.status.code(), Some(1), "{ver}");
    assert_eq!(ver["result"], "Failed");
    // Passing again so it is the newest verified snapshot.
    let (out, _) = keyed(&["verify", "--database", "app"]);
    assert!(out.status.success());

    // An unencrypted snapshot, round trip, then tamper with it.
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let (out, plain) = palisade(&pg, &dir, &["run", "--database", "app", "--id", "plain-1"]);
    assert!(out.status.success(), "{plain}");
    assert_eq!(plain["encrypted"], false);
    let (out, res) = palisade(
        &pg,
        &dir,
        &argv("restore --database app --snapshot plain-1 --target-database copy3 --create"),
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
    // Without the key, a store with signed manifests is pruned only on request.
    let (out, dry) = palisade(
        &pg,
        &dir,
        &argv("prune --database app --keep-last 1 --dry-run --allow-unauthenticated"),
    );
    assert!(out.status.success());
    assert_eq!(dry["deletedCount"], 0, "{dry}");
    let (out, pruned) = palisade(
        &pg,
        &dir,
        &argv("prune --database app --keep-last 0 --max-age 1s --allow-unauthenticated"),
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

/// Tables whose COPY text is awkward to count: newlines, tabs, backslashes and a lone
/// `\.` inside values, NULLs, binary with newline bytes, no columns at all, no rows,
/// partitions, an unlogged table, quotes, dots and non-ASCII in names, a large object
/// (its bytes are not rows), and a table large enough to span many pipe reads.
async fn awkward_tables(client: &tokio_postgres::Client) {
    client
        .batch_execute(
            r#"CREATE SCHEMA "we.ird ""schema""";
             CREATE TABLE "we.ird ""schema""".t (a text, b bytea);
             INSERT INTO "we.ird ""schema""".t VALUES
               (E'line 1\nline 2\r\n', '\x0a0a0d0a'::bytea), (E'\\.', NULL), (E'\t\\\n.', '\x5c2e0a'),
               (NULL, NULL), ('', ''), (E'\\.\n\n\n', '\x');
             CREATE TABLE public.nocols ();
             INSERT INTO public.nocols SELECT FROM generate_series(1, 5);
             CREATE TABLE public.empty (k int);
             CREATE TABLE public.parted (k int, v text) PARTITION BY RANGE (k);
             CREATE TABLE public.parted_low PARTITION OF public.parted FOR VALUES FROM (0) TO (100);
             CREATE TABLE public.parted_high PARTITION OF public.parted FOR VALUES FROM (100) TO (1000000);
             INSERT INTO public.parted SELECT g, repeat(E'\n', g % 3) FROM generate_series(1, 5000) g;
             CREATE UNLOGGED TABLE public.scratch (k int);
             INSERT INTO public.scratch SELECT generate_series(1, 7);
             CREATE TABLE public."ünï ""côdé""" (x int);
             INSERT INTO public."ünï ""côdé""" VALUES (1), (2);
             CREATE TABLE public.big (id bigint, note text);
             INSERT INTO public.big SELECT g, md5(g::text) || E'\\n' || md5((g * 3)::text)
               FROM generate_series(1, 200000) g;
             SELECT lo_from_bytea(0, '\x0a0a0a0a'::bytea);"#,
        )
        .await
        .expect("awkward tables");
}

/// What `count(*)` says for every user table, keyed like a manifest.
async fn sql_counts(pg: &PgServer, db: &str) -> serde_json::Value {
    let client = pg.client(db).await;
    let rows = client
        .query(
            "SELECT n.nspname::text, c.relname::text, c.oid::regclass::text FROM pg_class c \
             JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' \
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')",
            &[],
        )
        .await
        .expect("tables");
    let mut counts = serde_json::Map::new();
    for row in rows {
        let (schema, name, rel): (String, String, String) = (row.get(0), row.get(1), row.get(2));
        let key = palisade::backup::manifest::table_key(&schema, &name);
        let n: i64 = client
            .query_one(&format!("SELECT count(*) FROM {rel}"), &[])
            .await
            .expect("count")
            .get(0);
        counts.insert(key, n.into());
    }
    serde_json::Value::Object(counts)
}

fn manifest_counts(dir: &std::path::Path, id: &str) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join(format!("{id}.manifest.json"))).expect("manifest");
    let m: serde_json::Value = serde_json::from_str(&text).expect("manifest JSON");
    m["rowCounts"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_counts_are_read_from_the_dump_and_match_count_star() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_db("awkward").await;
    awkward_tables(&pg.client("awkward").await).await;
    let expected = sql_counts(&pg, "awkward").await;
    assert_eq!(expected["\"we.ird \"\"schema\"\"\".t"], 6, "{expected}");
    assert_eq!(expected["public.nocols"], 5, "{expected}");
    assert_eq!(expected["public.big"], 200_000, "{expected}");

    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("snapshots");
    let (out, run) = palisade(
        &pg,
        &dir,
        &["run", "--database", "awkward", "--profile", "--id", "s1"],
    );
    assert!(out.status.success(), "{run}");
    assert_eq!(manifest_counts(&dir, "s1"), expected);
    // Every table was counted from the stream: no table needed SQL.
    assert_eq!(run["profile"]["rowCounts.sqlTables"], 0.0, "{run}");

    // The restore test compares the restored tables with these counts: it passes.
    let (out, ver) = palisade(&pg, &dir, &["verify", "--database", "awkward"]);
    assert!(out.status.success(), "{ver}");
    assert_eq!(ver["result"], "Passed", "{ver}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_archive_the_counter_cannot_read_is_counted_with_sql() {
    let Some(pg) = PgServer::start() else { return };
    pg.create_db("awkward").await;
    awkward_tables(&pg.client("awkward").await).await;
    let expected = sql_counts(&pg, "awkward").await;

    // A pg_dump that compresses its data (a later flag wins): the counter stops at the
    // header, and every table is counted with SQL in the same snapshot instead.
    let tmp = tempfile::tempdir().expect("tempdir");
    let bin = tmp.path().join("bin");
    std::fs::create_dir(&bin).expect("bin");
    let wrapper = bin.join("pg_dump");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec '{}' \"$@\" --compress=1\n",
            pg.bin.join("pg_dump").display()
        ),
    )
    .expect("wrapper");
    let mut perms = std::fs::metadata(&wrapper).expect("meta").permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o755);
    std::fs::set_permissions(&wrapper, perms).expect("chmod");
    let dir = tmp.path().join("snapshots");
    let out = backup_support::palisade_command_with(
        &pg,
        &bin,
        &["run", "--database", "awkward", "--profile", "--id", "s2"],
    )
    .args(["--output", "json", "--dir"])
    .arg(&dir)
    .output()
    .expect("run palisade");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}");
    let run: serde_json::Value =
        serde_json::from_str(stdout.lines().last().unwrap_or("")).expect("JSON result");
    assert_eq!(manifest_counts(&dir, "s2"), expected);
    let tables = expected.as_object().expect("object").len() as f64;
    assert_eq!(run["profile"]["rowCounts.sqlTables"], tables, "{run}");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("compressed data"),
        "the reason is logged: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}
