//! Issue #14: an attacker who can write to the snapshot directory (or bucket) but does
//! not hold the key. Each attack from the issue is reproduced against a real PostgreSQL
//! 15 through the `palisade backup` command line, and must be refused with a clear
//! reason, with nothing restored and nothing deleted.

#[path = "support/backup/mod.rs"]
mod backup_support;

use std::os::unix::fs::DirBuilderExt;
use std::path::Path;

use backup_support::{PgServer, argv, cli, seed};
use serde_json::Value;

const KEY: &str = "a-tenant-rotated-random-secret-value";

struct Env {
    pg: PgServer,
    _tmp: tempfile::TempDir,
    dir: std::path::PathBuf,
    key_arg: String,
    outside: std::path::PathBuf,
}

async fn env() -> Option<Env> {
    let pg = PgServer::start()?;
    pg.create_db("app").await;
    seed(&pg.client("app").await, 2_000).await;
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path().join("snapshots");
    let outside = tmp.path().join("outside");
    std::fs::create_dir_all(&outside).expect("outside dir");
    let key_file = tmp.path().join("key");
    std::fs::write(&key_file, KEY).expect("key");
    Some(Env {
        key_arg: format!("v1={}", key_file.display()),
        pg,
        dir,
        outside,
        _tmp: tmp,
    })
}

impl Env {
    fn run(&self, args: &[&str]) -> (std::process::Output, Value) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--database", "app"]);
        cli(&self.pg, &self.dir, &all)
    }

    fn keyed(&self, args: &[&str]) -> (std::process::Output, Value) {
        let mut all: Vec<&str> = args.to_vec();
        all.extend(["--key-file", &self.key_arg]);
        self.run(&all)
    }

    fn manifest(&self, id: &str) -> Value {
        read_json(&self.dir.join(format!("{id}.manifest.json")))
    }

    fn put(&self, name: &str, v: &Value) {
        std::fs::write(
            self.dir.join(name),
            serde_json::to_vec_pretty(v).expect("json"),
        )
        .expect("plant");
    }

    async fn db_exists(&self, name: &str) -> bool {
        palisade::backup::pg::database_exists(&self.pg.client("postgres").await, name)
            .await
            .expect("lookup")
    }
}

fn read_json(p: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(p).expect("read")).expect("parse")
}

fn rejected_names(v: &Value) -> Vec<(String, String)> {
    v["rejected"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|r| {
                    (
                        r["name"].as_str().unwrap_or("").to_string(),
                        r["reason"].as_str().unwrap_or("").to_string(),
                    )
                })
                .collect()
        })
        .unwrap_or_default()
}

fn ids(list: &Value) -> Vec<String> {
    list["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| s["id"].as_str().unwrap_or("").to_string())
        .collect()
}

/// Attack 1: a planted plaintext snapshot whose manifest says `"algorithm":"none"`,
/// has no key id and starts in 2099. The restore test must not pick it, an explicit
/// restore must refuse it, and nothing of it reaches PostgreSQL.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn planted_plaintext_snapshot_is_never_restored() {
    let Some(e) = env().await else { return };
    let (out, real) = e.keyed(&["run", "--id", "real-1"]);
    assert!(out.status.success(), "{real}");
    // The result line is signed for its run (what the controller checks).
    let key =
        palisade::backup::format::EncryptionKey::new(KEY.into(), Some("v1".into())).expect("key");
    let (_, check) = palisade::backup::result::parse_authenticated(
        &real.to_string(),
        std::slice::from_ref(&key),
        backup_support::TEST_RUN,
    )
    .expect("result");
    assert_eq!(check, Ok(()), "{real}");

    // The attacker's snapshot: a genuine palisade plaintext dump of *their* database
    // (the real attack used an archive with COPY … TO PROGRAM), without a key.
    e.pg.create_db("evil").await;
    e.pg.client("evil")
        .await
        .batch_execute("CREATE TABLE pwned (x int); INSERT INTO pwned VALUES (1);")
        .await
        .expect("evil db");
    let (out, planted) = cli(
        &e.pg,
        &e.dir,
        &["run", "--database", "evil", "--id", "planted"],
    );
    assert!(out.status.success(), "{planted}");
    let mut m = e.manifest("planted");
    m["startedAt"] = Value::from("2099-01-01T00:00:00Z");
    assert_eq!(m["encryption"]["algorithm"], "none");
    assert!(m.get("mac").is_none());
    e.put("planted.manifest.json", &m);

    // Listed as rejected, not as a snapshot.
    let (out, list) = e.keyed(&["list"]);
    assert!(out.status.success(), "{list}");
    assert_eq!(ids(&list), vec!["real-1"]);
    assert!(
        rejected_names(&list).contains(&("planted.manifest.json".into(), "Unauthenticated".into())),
        "{list}"
    );

    // The restore test takes the newest *authenticated* snapshot.
    let (out, ver) = e.keyed(&["verify"]);
    assert!(out.status.success(), "{ver}");
    assert_eq!(ver["snapshot"], "real-1");

    // Asking for it by name: refused before touching the target.
    let (out, res) = e.keyed(&argv(
        "restore --snapshot planted --target-database victim --create",
    ));
    assert_eq!(out.status.code(), Some(1), "{res}");
    assert_eq!(res["reason"], "Unauthenticated", "{res}");
    assert!(!e.db_exists("victim").await, "nothing restored");
    let (out, ver) = e.keyed(&["verify", "--snapshot", "planted"]);
    assert_eq!(out.status.code(), Some(1), "{ver}");
    assert_eq!(ver["reason"], "Unauthenticated", "{ver}");
    // Even the explicit escape hatch for MAC-less (format 1) manifests does not admit
    // an unencrypted snapshot while a key is configured.
    let (out, res) = e.keyed(&argv(
        "restore --snapshot planted --allow-unauthenticated --target-database victim --create",
    ));
    assert_eq!(out.status.code(), Some(1), "{res}");
    assert_eq!(res["reason"], "Unencrypted", "{res}");
    assert!(!e.db_exists("victim").await, "nothing restored");

    // An unencrypted snapshot taken *with* the key configured is authenticated, but is
    // still refused unless asked for explicitly.
    let (out, plain) = e.keyed(&["run", "--id", "plain-1", "--no-encryption"]);
    assert!(out.status.success(), "{plain}");
    assert_eq!(plain["encrypted"], false);
    assert!(e.manifest("plain-1")["mac"].is_string());
    let (out, res) = e.keyed(&argv(
        "restore --snapshot plain-1 --target-database copy --create",
    ));
    assert_eq!(out.status.code(), Some(1), "{res}");
    assert_eq!(res["reason"], "Unencrypted", "{res}");
    assert!(!e.db_exists("copy").await);
    let (out, res) = e.keyed(&argv(
        "restore --snapshot plain-1 --allow-unencrypted --target-database copy --create",
    ));
    assert!(out.status.success(), "{res}");
}

/// Attack 2: `../` and absolute names in manifests. Nothing outside the directory is
/// read, written or deleted, by `verify` or `prune`, with or without a key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traversal_names_in_manifests_are_refused() {
    let Some(e) = env().await else { return };
    // Symlinks planted where the run writes its temporary files are not followed.
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&e.dir)
        .expect("dir");
    let planted_targets = [e.outside.join("target-1"), e.outside.join("target-2")];
    for (link, target) in ["real-1.snap.partial", "real-1.manifest.json.partial"]
        .iter()
        .zip(&planted_targets)
    {
        std::fs::write(target, "untouched").expect("target");
        std::os::unix::fs::symlink(target, e.dir.join(link)).expect("symlink");
    }
    let (out, real) = e.keyed(&["run", "--id", "real-1"]);
    assert!(out.status.success(), "{real}");
    let (out, ver) = e.keyed(&["verify"]);
    assert!(out.status.success(), "{ver}");
    let victim = e.outside.join("victim.txt");
    std::fs::write(&victim, "precious").expect("victim");
    let m = e.manifest("real-1");

    let mut relative = m.clone();
    relative["id"] = Value::from("evil-rel");
    relative["object"] = Value::from("../outside/victim.txt");
    e.put("evil-rel.manifest.json", &relative);
    let mut absolute = m.clone();
    absolute["id"] = Value::from("evil-abs");
    absolute["object"] = Value::from(victim.display().to_string());
    e.put("evil-abs.manifest.json", &absolute);
    let mut id_escape = m.clone();
    id_escape["id"] = Value::from("../outside/escape");
    e.put("evil-id.manifest.json", &id_escape);
    // A copy of a genuine manifest under another name is a name mismatch too.
    e.put("copied.manifest.json", &m);

    for keyed in [false, true] {
        let run = |args: &[&str]| if keyed { e.keyed(args) } else { e.run(args) };
        let (out, list) = run(&["list"]);
        assert!(out.status.success(), "{list}");
        assert_eq!(ids(&list), vec!["real-1"], "{list}");
        let rejected = rejected_names(&list);
        for name in [
            "evil-rel.manifest.json",
            "evil-abs.manifest.json",
            "evil-id.manifest.json",
            "copied.manifest.json",
        ] {
            assert!(
                rejected.contains(&(name.into(), "UnsafeName".into())),
                "{name}: {list}"
            );
        }
        for id in ["evil-rel", "evil-abs", "evil-id", "copied"] {
            let (out, ver) = run(&["verify", "--snapshot", id]);
            assert_eq!(out.status.code(), Some(1), "{ver}");
            assert_eq!(ver["reason"], "UnsafeName", "{id}: {ver}");
        }
        // Without the key the store's signatures cannot be checked: pruning anyway
        // must be asked for (#26), and still deletes nothing outside the directory.
        let (out, pruned) = run(&argv(
            "prune --keep-last 0 --max-age 1s --allow-unauthenticated",
        ));
        assert!(out.status.success(), "{pruned}");
    }
    assert_eq!(
        std::fs::read_to_string(&victim).expect("victim"),
        "precious"
    );
    for target in &planted_targets {
        assert_eq!(
            std::fs::read_to_string(target).expect("target"),
            "untouched"
        );
    }
    let mut outside: Vec<_> = std::fs::read_dir(&e.outside)
        .expect("outside")
        .map(|d| d.expect("entry").file_name())
        .collect();
    outside.sort();
    assert_eq!(
        outside,
        ["target-1", "target-2", "victim.txt"].map(std::ffi::OsString::from)
    );
    assert!(
        !e.dir
            .join("..")
            .join("outside")
            .join("escape.verify.json")
            .exists()
    );
    assert!(
        e.dir.join("real-1.snap").exists(),
        "the real snapshot is kept"
    );

    // Files 0600 in a 0700 directory.
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &Path| std::fs::metadata(p).expect("stat").permissions().mode() & 0o777;
    assert_eq!(mode(&e.dir), 0o700);
    for f in ["real-1.snap", "real-1.manifest.json", "real-1.verify.json"] {
        assert_eq!(mode(&e.dir.join(f)), 0o600, "{f}");
    }
}

/// Attack 3: rollback. Day 1's `.snap` copied over day 2's, with and without the
/// manifest's size and SHA-256 fixed up; a forged row count; a forged verification
/// record. Each is refused and nothing is restored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_snapshots_and_forged_metadata_are_refused() {
    let Some(e) = env().await else { return };
    let (out, r) = e.keyed(&["run", "--id", "day-1"]);
    assert!(out.status.success(), "{r}");
    e.pg.client("app")
        .await
        .batch_execute("INSERT INTO public.empty VALUES (42)")
        .await
        .expect("day 2 data");
    let (out, r) = e.keyed(&["run", "--id", "day-2"]);
    assert!(out.status.success(), "{r}");
    let day1 = std::fs::read(e.dir.join("day-1.snap")).expect("day 1");
    let day2 = std::fs::read(e.dir.join("day-2.snap")).expect("day 2");
    let m2 = e.manifest("day-2");

    // Swap only the data: the stream names day-1 in its authenticated header.
    std::fs::write(e.dir.join("day-2.snap"), &day1).expect("swap");
    let (out, res) = e.keyed(&argv(
        "restore --snapshot day-2 --target-database rolled-back --create",
    ));
    assert_eq!(out.status.code(), Some(1), "{res}");
    assert_eq!(res["reason"], "SnapshotMismatch", "{res}");
    // Nothing committed: the database the failed `--create` made is dropped again.
    assert!(!e.db_exists("rolled-back").await, "nothing committed");
    // The same through `--jobs`: the spooled archive is verified whole before
    // pg_restore sees it, and the spool file is removed.
    let scratch = e.dir.parent().expect("tmp").join("scratch");
    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&scratch)
        .expect("scratch dir");
    let scratch_arg = scratch.display().to_string();
    let (out, res) = e.keyed(&[
        "restore",
        "--snapshot",
        "day-2",
        "--target-database",
        "rolled-back-jobs",
        "--create",
        "--jobs",
        "2",
        "--scratch-dir",
        &scratch_arg,
    ]);
    assert_eq!(out.status.code(), Some(1), "{res}");
    assert_eq!(res["reason"], "SnapshotMismatch", "{res}");
    // Nothing committed: the database the failed `--create` made is dropped again.
    assert!(!e.db_exists("rolled-back-jobs").await, "nothing restored");
    assert_eq!(
        std::fs::read_dir(&scratch).expect("scratch").count(),
        0,
        "spool file removed"
    );
    let (out, ver) = e.keyed(&["verify", "--snapshot", "day-2"]);
    assert_eq!(out.status.code(), Some(1), "{ver}");
    assert_eq!(ver["result"], "Failed");
    assert!(
        ver["checks"].to_string().contains("SnapshotMismatch"),
        "{ver}"
    );

    // Swap the data and fix size and SHA-256 in the manifest: the MAC breaks.
    let mut fixed = m2.clone();
    fixed["storedBytes"] = Value::from(day1.len());
    fixed["sha256"] = e.manifest("day-1")["sha256"].clone();
    e.put("day-2.manifest.json", &fixed);
    let (out, ver) = e.keyed(&["verify", "--snapshot", "day-2"]);
    assert_eq!(out.status.code(), Some(1), "{ver}");
    assert_eq!(ver["reason"], "Unauthenticated", "{ver}");

    // Both files of day 1 copied under day 2's names: the id inside does not match.
    std::fs::copy(
        e.dir.join("day-1.manifest.json"),
        e.dir.join("day-2.manifest.json"),
    )
    .expect("copy");
    let (out, ver) = e.keyed(&["verify", "--snapshot", "day-2"]);
    assert_eq!(out.status.code(), Some(1), "{ver}");
    assert_eq!(ver["reason"], "UnsafeName", "{ver}");

    // Back to genuine day 2, then forge its row counts: refused.
    std::fs::write(e.dir.join("day-2.snap"), &day2).expect("unswap");
    let mut forged = m2.clone();
    forged["rowCounts"]["public.empty"] = Value::from(0);
    e.put("day-2.manifest.json", &forged);
    let (out, ver) = e.keyed(&["verify", "--snapshot", "day-2"]);
    assert_eq!(out.status.code(), Some(1), "{ver}");
    assert_eq!(ver["reason"], "Unauthenticated", "{ver}");
    // A row count that overflows when summed does not crash anything (no key: the
    // manifest is trusted, and the sum saturates).
    let mut huge = m2.clone();
    huge["rowCounts"]["a.a"] = Value::from(i64::MAX);
    huge["rowCounts"]["a.b"] = Value::from(i64::MAX);
    huge.as_object_mut().expect("object").remove("mac");
    e.put("day-2.manifest.json", &huge);
    let (out, r) = e.run(&["run", "--id", "day-2"]);
    assert!(out.status.success(), "{r}");
    assert_eq!(r["rows"], i64::MAX);
    e.put("day-2.manifest.json", &m2);

    // Forged verification records: a "passed" record for day 1 without a valid MAC,
    // and day 2's genuine record copied to day 1.
    let (out, ver) = e.keyed(&["verify", "--snapshot", "day-2"]);
    assert!(out.status.success(), "{ver}");
    let mut record = read_json(&e.dir.join("day-2.verify.json"));
    record["snapshot"] = Value::from("day-1");
    e.put("day-1.verify.json", &record);
    let (_, list) = e.keyed(&["list"]);
    let verified: Vec<(String, String)> = list["snapshots"]
        .as_array()
        .expect("snapshots")
        .iter()
        .map(|s| {
            (
                s["id"].as_str().unwrap_or("").to_string(),
                s["verified"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    assert_eq!(
        verified,
        vec![
            ("day-2".to_string(), "passed".to_string()),
            ("day-1".to_string(), "never".to_string())
        ]
    );
    assert!(
        rejected_names(&list).contains(&("day-1.verify.json".into(), "Unauthenticated".into())),
        "{list}"
    );
    std::fs::copy(
        e.dir.join("day-2.verify.json"),
        e.dir.join("day-1.verify.json"),
    )
    .expect("copy record");
    let (_, list) = e.keyed(&["list"]);
    assert!(
        rejected_names(&list).contains(&("day-1.verify.json".into(), "Unauthenticated".into())),
        "{list}"
    );
}

/// Attack 4: a forged "newest, verified" snapshot before `prune --keep-last 1`. The
/// forgery is ignored (and reported); the real newest snapshot is kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forged_newest_verified_snapshot_does_not_steer_prune() {
    let Some(e) = env().await else { return };
    for id in ["day-1", "day-2"] {
        let (out, r) = e.keyed(&["run", "--id", id]);
        assert!(out.status.success(), "{r}");
    }
    let mut forged = e.manifest("day-2");
    forged["id"] = Value::from("zz-forged");
    forged["object"] = Value::from("zz-forged.snap");
    forged["startedAt"] = Value::from("2099-01-01T00:00:00Z");
    e.put("zz-forged.manifest.json", &forged);
    std::fs::copy(e.dir.join("day-2.snap"), e.dir.join("zz-forged.snap")).expect("data");
    e.put(
        "zz-forged.verify.json",
        &serde_json::json!({"snapshot": "zz-forged", "time": "2099-01-01T01:00:00Z",
            "passed": true, "durationSeconds": 1.0, "checks": [],
            "macKeyId": "v1", "mac": "00".repeat(32)}),
    );
    let (out, pruned) = e.keyed(&["prune", "--keep-last", "1"]);
    assert!(out.status.success(), "{pruned}");
    assert_eq!(pruned["deleted"], serde_json::json!(["day-1"]), "{pruned}");
    assert!(
        rejected_names(&pruned)
            .contains(&("zz-forged.manifest.json".into(), "Unauthenticated".into())),
        "{pruned}"
    );
    for f in ["day-2.snap", "day-2.manifest.json"] {
        assert!(e.dir.join(f).exists(), "{f} kept");
    }
    // The forgery is not deleted either: unauthenticated objects are never acted on.
    assert!(e.dir.join("zz-forged.manifest.json").exists());
    let (_, list) = e.keyed(&["list"]);
    assert_eq!(ids(&list), vec!["day-2"]);
}
