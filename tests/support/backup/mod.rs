//! Test fixtures for the snapshot engine: a throwaway PostgreSQL 15 server and an
//! in-process S3 server (s3s-fs) on loopback.
//!
//! Without PostgreSQL binaries the tests skip with a printed reason, except under
//! `CI=true`, where they fail loudly.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use palisade::backup::engine::RestoreOptions;
use palisade::backup::format::EncryptionKey;
use palisade::backup::pg::PgConn;
use palisade::crd::backup_schedule::SslMode;

/// Password of the test superuser (scram-sha-256 authentication is on).
pub const PG_PASSWORD: &str = "test-Secret-pw-1";

fn pg_bin_dir() -> Option<PathBuf> {
    let candidates = [
        std::env::var_os("PALISADE_PG_BIN").map(PathBuf::from),
        Some(PathBuf::from("/usr/lib/postgresql/15/bin")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|d| d.join("initdb").exists())
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
        .unwrap_or(false)
}

/// A running throwaway PostgreSQL server.
pub struct PgServer {
    pub bin: PathBuf,
    pub port: u16,
    dir: tempfile::TempDir,
    root: bool,
    /// Started by [`PgServer::start_tls`]: only TLS connections are accepted.
    tls: bool,
}

/// A server certificate and key (PEM) for [`PgServer::start_tls`].
pub struct ServerTls<'a> {
    pub cert_pem: &'a [u8],
    pub key_pem: &'a [u8],
}

fn as_postgres(root: bool, program: &Path) -> Command {
    if root {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl PgServer {
    /// Starts a server, or returns `None` (printing why) when PostgreSQL is not
    /// installed outside CI. Under `CI=true` a missing installation panics.
    pub fn start() -> Option<PgServer> {
        Self::start_with(None)
    }

    /// Starts a server with `ssl = on` and the given certificate that refuses every
    /// connection without TLS (`hostnossl … reject`), also listening on 127.0.0.2 (an
    /// address the certificate may not name).
    pub fn start_tls(tls: ServerTls<'_>) -> Option<PgServer> {
        Self::start_with(Some(tls))
    }

    fn start_with(tls: Option<ServerTls<'_>>) -> Option<PgServer> {
        let Some(bin) = pg_bin_dir() else {
            let msg = "PostgreSQL 15 binaries not found (set PALISADE_PG_BIN or apt-get install postgresql-15)";
            if std::env::var("CI").as_deref() == Ok("true") {
                panic!("{msg}: required under CI=true");
            }
            eprintln!("SKIPPING: {msg}");
            return None;
        };
        let root = is_root();
        let dir = tempfile::Builder::new()
            .prefix("palisade-pg-")
            .tempdir()
            .expect("tempdir");
        let data = dir.path().join("data");
        let pwfile = dir.path().join("pw");
        std::fs::write(&pwfile, PG_PASSWORD).expect("pwfile");
        if let Some(t) = &tls {
            use std::os::unix::fs::PermissionsExt;
            std::fs::write(dir.path().join("server.crt"), t.cert_pem).expect("cert");
            let key = dir.path().join("server.key");
            std::fs::write(&key, t.key_pem).expect("key");
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600))
                .expect("chmod key");
        }
        if root {
            let ok = Command::new("chown")
                .args(["-R", "postgres:postgres"])
                .arg(dir.path())
                .status()
                .expect("chown")
                .success();
            assert!(ok, "chown to postgres failed");
        }
        let out = as_postgres(root, &bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(argv(
                "-U postgres --auth=scram-sha-256 -E UTF8 --no-sync --locale=C",
            ))
            .arg(format!("--pwfile={}", pwfile.display()))
            .output()
            .expect("run initdb");
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let port = free_port();
        let mut opts = format!(
            "-p {port} -k {} -c fsync=off -c full_page_writes=off -c synchronous_commit=off",
            dir.path().display()
        );
        if tls.is_some() {
            std::fs::write(
                data.join("pg_hba.conf"),
                "local all all scram-sha-256\n\
                 hostssl all all 127.0.0.0/8 scram-sha-256\n\
                 hostnossl all all 0.0.0.0/0 reject\n",
            )
            .expect("pg_hba.conf");
            opts.push_str(&format!(
                " -c listen_addresses=127.0.0.1,127.0.0.2 -c ssl=on -c ssl_cert_file={0}/server.crt -c ssl_key_file={0}/server.key",
                dir.path().display()
            ));
        } else {
            opts.push_str(" -c listen_addresses=127.0.0.1");
        }
        let out = as_postgres(root, &bin.join("pg_ctl"))
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("log"))
            .args(["-o", &opts, "-w", "-t", "60", "start"])
            .output()
            .expect("run pg_ctl");
        assert!(
            out.status.success(),
            "pg_ctl start failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            std::fs::read_to_string(dir.path().join("log")).unwrap_or_default()
        );
        Some(PgServer {
            bin,
            port,
            dir,
            root,
            tls: tls.is_some(),
        })
    }

    /// Connection parameters for `database` as the superuser.
    pub fn conn(&self, database: &str) -> PgConn {
        PgConn {
            host: "127.0.0.1".into(),
            port: self.port,
            database: database.into(),
            user: "postgres".into(),
            password: Some(PG_PASSWORD.into()),
            ssl_mode: if self.tls {
                SslMode::Require
            } else {
                SslMode::Disable
            },
            ssl_root_cert: None,
        }
    }

    /// A connected client.
    pub async fn client(&self, database: &str) -> tokio_postgres::Client {
        self.conn(database).connect().await.expect("connect")
    }

    /// Creates a database.
    pub async fn create_db(&self, name: &str) {
        self.client("postgres")
            .await
            .batch_execute(&format!("CREATE DATABASE \"{name}\""))
            .await
            .expect("create database");
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = as_postgres(self.root, &self.bin.join("pg_ctl"))
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .args(["-m", "immediate", "stop"])
            .output();
    }
}

/// Seeds `db` with a few tables (≈ `rows` rows in the big one, random-ish text so it
/// does not compress to nothing) and returns nothing; use [`checksum`] to compare.
pub async fn seed(client: &tokio_postgres::Client, rows: i64) {
    client
        .batch_execute(&format!(
            "CREATE SCHEMA shop;
             CREATE TABLE shop.customers (id bigint PRIMARY KEY, name text NOT NULL, email text);
             CREATE TABLE shop.orders (id bigint PRIMARY KEY, customer bigint REFERENCES shop.customers(id),
                                       total numeric(12,2), note text, created timestamptz);
             CREATE TABLE public.\"Weird Name\" (k int);
             CREATE TABLE public.empty (k int);
             CREATE INDEX ON shop.orders (customer);
             INSERT INTO shop.customers SELECT g, 'customer ' || g, 'c' || g || '@example.com'
               FROM generate_series(1, 1000) g;
             INSERT INTO shop.orders SELECT g, 1 + g % 1000, (g % 9973) / 7.0,
               md5(g::text) || md5((g * 7)::text), '2025-01-01'::timestamptz + g * interval '1 minute'
               FROM generate_series(1, {rows}) g;
             INSERT INTO public.\"Weird Name\" VALUES (1), (2), (3);"
        ))
        .await
        .expect("seed");
}

/// Order-independent content checksum of the seeded tables.
pub async fn checksum(client: &tokio_postgres::Client) -> String {
    client
        .query_one(
            "SELECT md5(
               (SELECT coalesce(string_agg(c::text, ',' ORDER BY id), '') FROM shop.customers c) ||
               (SELECT coalesce(string_agg(o::text, ',' ORDER BY id), '') FROM shop.orders o) ||
               (SELECT coalesce(string_agg(w::text, ',' ORDER BY k), '') FROM public.\"Weird Name\" w))",
            &[],
        )
        .await
        .expect("checksum")
        .get(0)
}

/// An in-process S3 server (s3s-fs) on 127.0.0.1 with SigV4 auth.
pub struct S3Server {
    pub endpoint: String,
    pub root: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

pub const S3_ACCESS_KEY: &str = "AKIAPALISADETEST";
pub const S3_SECRET_KEY: &str = "palisade-test-secret-key";

impl S3Server {
    /// Starts the server on the current runtime (use a multi-threaded test runtime).
    pub async fn start() -> S3Server {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder as ConnBuilder;
        use s3s::auth::SimpleAuth;
        use s3s::service::S3ServiceBuilder;

        let root = tempfile::Builder::new()
            .prefix("palisade-s3-")
            .tempdir()
            .expect("tempdir");
        let fs = s3s_fs::FileSystem::new(root.path()).expect("s3s-fs");
        let mut b = S3ServiceBuilder::new(fs);
        b.set_auth(SimpleAuth::from_single(S3_ACCESS_KEY, S3_SECRET_KEY));
        let service = b.build();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let task = tokio::spawn(async move {
            let http = ConnBuilder::new(TokioExecutor::new());
            loop {
                let Ok((socket, _)) = listener.accept().await else {
                    continue;
                };
                let conn = http
                    .serve_connection(TokioIo::new(socket), service.clone())
                    .into_owned();
                tokio::spawn(async move {
                    let _ = conn.await;
                });
            }
        });
        S3Server {
            endpoint: format!("http://{addr}"),
            root,
            task,
        }
    }

    /// Creates a bucket (a directory for s3s-fs).
    pub fn create_bucket(&self, name: &str) {
        std::fs::create_dir_all(self.root.path().join(name)).expect("bucket dir");
    }

    /// Part files of multipart uploads that were neither completed nor aborted
    /// (s3s-fs does not implement ListMultipartUploads; it keeps parts as
    /// `.upload_id-<id>.part-<n>` files in its root).
    pub fn open_upload_parts(&self) -> Vec<String> {
        std::fs::read_dir(self.root.path())
            .expect("read s3 root")
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| n.starts_with(".upload_id-"))
            .collect()
    }

    /// Settings for the engine.
    pub fn settings(
        &self,
        bucket: &str,
        prefix: &str,
    ) -> palisade::backup::destination::s3::S3Settings {
        palisade::backup::destination::s3::S3Settings {
            bucket: bucket.into(),
            prefix: prefix.into(),
            region: Some("us-east-1".into()),
            endpoint: Some(self.endpoint.clone()),
            force_path_style: true,
            credentials: Some((S3_ACCESS_KEY.into(), S3_SECRET_KEY.into(), None)),
            sse: None,
            kms_key_id: None,
            part_size: 5 << 20,
            concurrency: 3,
            max_attempts: 2,
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Options of a restore of the newest snapshot into `target` (created when missing)
/// with `pg`'s client programs and `keys`, nothing else asked for.
pub fn restore_options(pg: &PgServer, target: PgConn, keys: Vec<EncryptionKey>) -> RestoreOptions {
    RestoreOptions {
        target,
        pg_bin: Some(pg.bin.clone()),
        keys,
        snapshot: None,
        force: false,
        create: true,
        no_owner: false,
        allow_unencrypted: false,
        allow_unauthenticated: false,
        jobs: None,
        scratch_dir: None,
        allow_encoding_change: false,
    }
}

/// The words of a command line without quotes (`"run --database app"`), as
/// arguments.
pub fn argv(line: &str) -> Vec<&str> {
    line.split_whitespace().collect()
}

/// The run name every test command reports (`PALISADE_RUN`).
pub const TEST_RUN: &str = "test-run-1";

/// `palisade backup ARGS` connecting to `pg` as the superuser without TLS (password in
/// `PGPASSWORD`).
pub fn palisade_command(pg: &PgServer, args: &[&str]) -> Command {
    palisade_command_with(pg, &pg.bin, args)
}

/// [`palisade_command`] with the PostgreSQL client programs taken from `pg_bin`.
pub fn palisade_command_with(pg: &PgServer, pg_bin: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_palisade"));
    cmd.arg("backup")
        .args(args)
        .args(argv("--host 127.0.0.1 --user postgres --sslmode disable"))
        .args(["--port", &pg.port.to_string()])
        .arg("--pg-bin")
        .arg(pg_bin)
        .env("PGPASSWORD", PG_PASSWORD)
        .env("PALISADE_RUN", TEST_RUN);
    cmd
}

/// Runs `palisade backup ARGS --output json --dir DIR` against `pg` (superuser, no TLS)
/// and returns the process output and its parsed one-line JSON result. Fails the test
/// if the password shows up anywhere or the result exceeds 4 KiB.
pub fn cli(pg: &PgServer, dir: &Path, args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let out = palisade_command(pg, args)
        .args(["--output", "json", "--dir"])
        .arg(dir)
        .env_remove("PALISADE_BACKUP_KEY")
        .output()
        .expect("run palisade");
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        !stdout.contains(PG_PASSWORD)
            && !String::from_utf8_lossy(&out.stderr).contains(PG_PASSWORD)
    );
    let line = stdout.lines().last().unwrap_or("").to_string();
    assert!(line.len() < 4096, "JSON result too large: {}", line.len());
    let v: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {stdout} / {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out, v)
}
