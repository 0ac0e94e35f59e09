//! Issue #14, TLS: the engine's own connection honours `sslmode` (rustls), and
//! pg_dump / pg_restore get the same through `PGSSLMODE` / `PGSSLROOTCERT`. Against a
//! real PostgreSQL 15 started with `ssl = on`, a certificate generated here by openssl,
//! and a pg_hba.conf that rejects every connection without TLS.

#[path = "support/backup/mod.rs"]
mod backup_support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use backup_support::{PgServer, ServerTls, checksum, restore_options, seed};
use palisade::backup::destination::Storage;
use palisade::backup::engine::{self, Progress, RunOptions};
use palisade::backup::format::{DEFAULT_CHUNK_SIZE, EncryptionKey};
use palisade::backup::pg::PgConn;
use palisade::crd::backup_schedule::SslMode;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("run openssl (apt-get install openssl)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA (`<name>-ca.crt`) and, signed by it, a server certificate for 127.0.0.1 and
/// localhost only (`<name>-server.crt`, `<name>-server.key`).
fn make_ca_and_server(dir: &Path, name: &str) -> (PathBuf, PathBuf, PathBuf) {
    let f = |s: &str| format!("{name}-{s}");
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-subj",
            &format!("/CN={name} test CA"),
            "-keyout",
            &f("ca.key"),
            "-out",
            &f("ca.crt"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            "/CN=127.0.0.1",
            "-keyout",
            &f("server.key"),
            "-out",
            &f("server.csr"),
        ],
    );
    std::fs::write(
        dir.join(f("ext.cnf")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n\
         keyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &f("server.csr"),
            "-CA",
            &f("ca.crt"),
            "-CAkey",
            &f("ca.key"),
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            &f("ext.cnf"),
            "-out",
            &f("server.crt"),
        ],
    );
    (
        dir.join(f("ca.crt")),
        dir.join(f("server.crt")),
        dir.join(f("server.key")),
    )
}

fn conn(pg: &PgServer, host: &str, mode: SslMode, ca: Option<&Path>) -> PgConn {
    PgConn {
        host: host.into(),
        ssl_mode: mode,
        ssl_root_cert: ca.map(Path::to_path_buf),
        ..pg.conn("postgres")
    }
}

async fn uses_tls(c: &PgConn) -> Result<bool, String> {
    let client = c
        .connect()
        .await
        .map_err(|e| format!("{}: {e}", e.reason()))?;
    Ok(client
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await
        .map_err(|e| e.to_string())?
        .get(0))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sslmodes_against_a_tls_only_server() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (ca, cert, key) = make_ca_and_server(tmp.path(), "good");
    let (other_ca, _, _) = make_ca_and_server(tmp.path(), "other");
    let cert_pem = std::fs::read(&cert).expect("cert");
    let key_pem = std::fs::read(&key).expect("key");
    let Some(pg) = PgServer::start_tls(ServerTls {
        cert_pem: &cert_pem,
        key_pem: &key_pem,
    }) else {
        return;
    };
    let ca = ca.as_path();

    // The server refuses plaintext; `disable` fails, everything else is encrypted.
    let err = uses_tls(&conn(&pg, "127.0.0.1", SslMode::Disable, None))
        .await
        .expect_err("plaintext refused");
    assert!(err.contains("ConnectFailed"), "{err}");
    for (mode, ca) in [
        (SslMode::Prefer, None),
        (SslMode::Require, None),
        (SslMode::Require, Some(ca)),
        (SslMode::VerifyCa, Some(ca)),
        (SslMode::VerifyFull, Some(ca)),
    ] {
        let c = conn(&pg, "127.0.0.1", mode, ca);
        assert_eq!(uses_tls(&c).await, Ok(true), "{mode:?} {ca:?}");
    }

    // 127.0.0.2 is the same server, but not a name in its certificate.
    assert_eq!(
        uses_tls(&conn(&pg, "127.0.0.2", SslMode::VerifyCa, Some(ca))).await,
        Ok(true)
    );
    let err = uses_tls(&conn(&pg, "127.0.0.2", SslMode::VerifyFull, Some(ca)))
        .await
        .expect_err("wrong host name");
    assert!(
        err.contains("ConnectFailed") && err.contains("not valid for name"),
        "{err}"
    );

    // A certificate from another CA fails verify-ca and verify-full (and require with
    // that CA given), with a reason that says so.
    for mode in [SslMode::Require, SslMode::VerifyCa, SslMode::VerifyFull] {
        let err = uses_tls(&conn(&pg, "127.0.0.1", mode, Some(&other_ca)))
            .await
            .expect_err("unknown issuer");
        assert!(err.contains("UnknownIssuer"), "{mode:?}: {err}");
    }
    // verify-* without a CA is a configuration error, not a silent downgrade.
    let err = uses_tls(&conn(&pg, "127.0.0.1", SslMode::VerifyFull, None))
        .await
        .expect_err("no CA");
    assert!(err.starts_with("TlsError"), "{err}");

    // A full run and restore with verify-full: pg_dump and pg_restore connect with TLS
    // too (the server refuses anything else).
    pg.client("postgres")
        .await
        .batch_execute("CREATE DATABASE app")
        .await
        .expect("create");
    let src = PgConn {
        database: "app".into(),
        ..conn(&pg, "127.0.0.1", SslMode::VerifyFull, Some(ca))
    };
    let app = src.connect().await.expect("connect");
    seed(&app, 5_000).await;
    let expected = checksum(&app).await;
    let storage = Storage::filesystem(tmp.path().join("snapshots"))
        .await
        .expect("storage");
    let k = EncryptionKey::new(
        b"a key of at least sixteen bytes".to_vec(),
        Some("v1".into()),
    )
    .expect("key");
    let run = engine::run(
        &storage,
        &RunOptions {
            pg: src.clone(),
            pg_bin: Some(pg.bin.clone()),
            compression_level: 1,
            compression_threads: 0,
            key: Some(k.clone()),
            mac_key: None,
            chunk_size: DEFAULT_CHUNK_SIZE,
            id: Some("tls-1".into()),
        },
        Arc::new(Progress::default()),
    )
    .await
    .expect("run over TLS");
    assert_eq!(run.manifest.row_counts.get("shop.orders"), Some(&5_000));
    engine::restore(
        &storage,
        &restore_options(
            &pg,
            PgConn {
                database: "copy".into(),
                ..src.clone()
            },
            vec![k],
        ),
        Arc::new(Progress::default()),
    )
    .await
    .expect("restore over TLS");
    let copy = PgConn {
        database: "copy".into(),
        ..src
    };
    assert_eq!(
        checksum(&copy.connect().await.expect("connect")).await,
        expected
    );
}
