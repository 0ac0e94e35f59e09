//! PostgreSQL side of the engine: connections (tokio-postgres), the exported snapshot
//! and row counts, SQL checks, and the `pg_dump` / `pg_restore` child processes.
//!
//! Connection details reach the child processes only through `PG*` environment
//! variables, never argv, and no connection string carrying a password is ever built.
//!
//! TLS follows libpq's `sslmode` on the engine's own connection (rustls on ring):
//! `disable` plain; `allow`/`prefer` TLS when the server offers it, unverified (as
//! libpq); `require` TLS, verified against the CA when one is given (as libpq with a
//! root certificate), else unverified; `verify-ca` TLS and a chain to the CA;
//! `verify-full` also the host name. `pg_dump`/`pg_restore` get the same through
//! `PGSSLMODE` and `PGSSLROOTCERT`.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::{Client, NoTls};

use super::manifest::DatabaseInfo;
use crate::crd::backup_schedule::SslMode;

/// Errors of the PostgreSQL side.
#[derive(Debug, thiserror::Error)]
pub enum PgError {
    /// Could not connect.
    #[error("cannot connect to {target}: {message}")]
    Connect {
        /// host:port/database.
        target: String,
        /// Driver error (never contains the password).
        message: String,
    },
    /// A query failed.
    #[error("{what}: {message}")]
    Query {
        /// What was being done.
        what: &'static str,
        /// Server message.
        message: String,
    },
    /// A client program could not be started.
    #[error("cannot run {program}: {source}")]
    Spawn {
        /// Program path.
        program: String,
        /// OS error.
        source: std::io::Error,
    },
    /// A client program failed.
    #[error("{program} failed ({status}): {stderr}")]
    ChildFailed {
        /// Program name.
        program: &'static str,
        /// Exit status.
        status: String,
        /// Its stderr, redacted and bounded.
        stderr: String,
    },
    /// TLS cannot be set up (no or unreadable CA for verify-ca / verify-full).
    #[error("TLS: {0}")]
    Tls(String),
    /// Target database is not empty.
    #[error("database {0} is not empty (use --force to restore over it)")]
    NotEmpty(String),
}

impl PgError {
    /// Short bounded reason.
    pub fn reason(&self) -> &'static str {
        match self {
            PgError::Connect { .. } => "ConnectFailed",
            PgError::Query { .. } => "QueryFailed",
            PgError::Spawn { .. } => "ToolMissing",
            PgError::ChildFailed { program, .. } => match *program {
                "pg_dump" => "PgDumpFailed",
                "pg_restore" => "PgRestoreFailed",
                _ => "ToolFailed",
            },
            PgError::Tls(_) => "TlsError",
            PgError::NotEmpty(_) => "TargetNotEmpty",
        }
    }
}

/// Connection parameters. `Debug` redacts the password.
#[derive(Clone)]
pub struct PgConn {
    /// Host.
    pub host: String,
    /// Port.
    pub port: u16,
    /// Database.
    pub database: String,
    /// Role.
    pub user: String,
    /// Password, if any.
    pub password: Option<String>,
    /// libpq sslmode.
    pub ssl_mode: SslMode,
    /// PEM file of the CA(s) the server certificate must chain to (`sslrootcert`).
    pub ssl_root_cert: Option<PathBuf>,
}

impl std::fmt::Debug for PgConn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgConn")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ssl_mode", &self.ssl_mode)
            .field("ssl_root_cert", &self.ssl_root_cert)
            .finish()
    }
}

impl PgConn {
    /// The same server, another database.
    pub fn with_database(&self, database: &str) -> PgConn {
        PgConn {
            database: database.to_string(),
            ..self.clone()
        }
    }

    /// `host:port/database` for messages.
    pub fn target(&self) -> String {
        format!("{}:{}/{}", self.host, self.port, self.database)
    }

    /// Connects; the connection task runs on the current runtime.
    pub async fn connect(&self) -> Result<Client, PgError> {
        let mode = match self.ssl_mode {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Allow | SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            SslMode::Require | SslMode::VerifyCa | SslMode::VerifyFull => {
                tokio_postgres::config::SslMode::Require
            }
        };
        let mut cfg = tokio_postgres::Config::new();
        cfg.host(&self.host)
            .port(self.port)
            .dbname(&self.database)
            .user(&self.user)
            .ssl_mode(mode)
            .application_name("palisade-backup")
            .connect_timeout(std::time::Duration::from_secs(30));
        if let Some(p) = &self.password {
            cfg.password(p);
        }
        let connect_err = |e: tokio_postgres::Error| {
            // The driver's Display hides the cause (e.g. which certificate check failed).
            let mut message = e.to_string();
            if let Some(src) = std::error::Error::source(&e) {
                message.push_str(&format!(": {src}"));
            }
            PgError::Connect {
                target: self.target(),
                message: redact(&message, self.password.as_deref()),
            }
        };
        if self.ssl_mode == SslMode::Disable {
            connect_with(&cfg, NoTls).await.map_err(connect_err)
        } else {
            let tls = tokio_postgres_rustls::MakeRustlsConnect::new(self.tls_config()?);
            connect_with(&cfg, tls).await.map_err(connect_err)
        }
    }

    /// The rustls client configuration for this `sslmode` and CA.
    fn tls_config(&self) -> Result<rustls::ClientConfig, PgError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = match &self.ssl_root_cert {
            Some(path) => Some(load_roots(path)?),
            None => None,
        };
        let chain = match (self.ssl_mode, roots) {
            (SslMode::VerifyCa | SslMode::VerifyFull, None) => {
                return Err(PgError::Tls(format!(
                    "sslmode {} needs the CA certificate (--ssl-root-cert, or \
                     spec.postgres.caSecretRef in a BackupSchedule)",
                    self.ssl_mode.as_libpq()
                )));
            }
            (SslMode::Allow | SslMode::Prefer, _) | (SslMode::Require | SslMode::Disable, None) => {
                None
            }
            (_, Some(roots)) => Some(
                rustls::client::WebPkiServerVerifier::builder_with_provider(
                    Arc::new(roots),
                    provider.clone(),
                )
                .build()
                .map_err(|e| PgError::Tls(format!("CA certificate: {e}")))?,
            ),
        };
        let verifier = Arc::new(Verifier {
            signatures: provider.signature_verification_algorithms,
            chain,
            check_name: self.ssl_mode == SslMode::VerifyFull,
        });
        Ok(rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| PgError::Tls(e.to_string()))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth())
    }

    /// `PG*` variables for a child process.
    pub fn apply_env(&self, cmd: &mut Command) {
        for var in ["PGSERVICE", "PGOPTIONS", "PGCONNECT_TIMEOUT"] {
            cmd.env_remove(var);
        }
        cmd.env("PGHOST", &self.host)
            .env("PGPORT", self.port.to_string())
            .env("PGDATABASE", &self.database)
            .env("PGUSER", &self.user)
            .env("PGSSLMODE", self.ssl_mode.as_libpq())
            .env("PGAPPNAME", "palisade-backup");
        match &self.ssl_root_cert {
            Some(ca) => cmd.env("PGSSLROOTCERT", ca),
            None => cmd.env_remove("PGSSLROOTCERT"),
        };
        match &self.password {
            Some(p) => cmd.env("PGPASSWORD", p),
            None => cmd.env_remove("PGPASSWORD"),
        };
    }
}

/// Connects over `tls`; the connection task runs on the current runtime.
async fn connect_with<T>(
    cfg: &tokio_postgres::Config,
    tls: T,
) -> Result<Client, tokio_postgres::Error>
where
    T: tokio_postgres::tls::MakeTlsConnect<tokio_postgres::Socket>,
    T::Stream: Send + 'static,
    T::TlsConnect: Send,
    <T::TlsConnect as tokio_postgres::tls::TlsConnect<tokio_postgres::Socket>>::Future: Send,
{
    let (client, connection) = cfg.connect(tls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            tracing::debug!(error = %e, "postgres connection closed");
        }
    });
    Ok(client)
}

fn load_roots(path: &Path) -> Result<RootCertStore, PgError> {
    let mut roots = RootCertStore::empty();
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| PgError::Tls(format!("cannot read CA file {}: {e}", path.display())))?;
    for cert in certs {
        let cert =
            cert.map_err(|e| PgError::Tls(format!("invalid CA file {}: {e}", path.display())))?;
        roots
            .add(cert)
            .map_err(|e| PgError::Tls(format!("invalid CA in {}: {e}", path.display())))?;
    }
    if roots.is_empty() {
        return Err(PgError::Tls(format!(
            "no certificate in CA file {}",
            path.display()
        )));
    }
    Ok(roots)
}

/// The server certificate check: none without a CA chain (`allow` / `prefer` /
/// `require` without a CA: encrypted, any certificate, as libpq); with one, the chain
/// (`verify-ca`, and `require` with a CA) and the host name (`verify-full`). The
/// handshake signatures are verified either way.
#[derive(Debug)]
struct Verifier {
    signatures: rustls::crypto::WebPkiSupportedAlgorithms,
    chain: Option<Arc<rustls::client::WebPkiServerVerifier>>,
    check_name: bool,
}

impl ServerCertVerifier for Verifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let Some(chain) = &self.chain else {
            return Ok(ServerCertVerified::assertion());
        };
        match chain.verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now) {
            Err(rustls::Error::InvalidCertificate(
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. },
            )) if !self.check_name => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.signatures)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.signatures)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.signatures.supported_schemes()
    }
}

fn query_err(what: &'static str) -> impl FnOnce(tokio_postgres::Error) -> PgError {
    move |e| PgError::Query {
        what,
        message: e
            .as_db_error()
            .map(|d| d.message().to_string())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// Replaces the password (if it occurs) and bounds the length.
pub fn redact(text: &str, password: Option<&str>) -> String {
    let mut s = match password {
        Some(p) if !p.is_empty() => text.replace(p, "<redacted>"),
        _ => text.to_string(),
    };
    const MAX: usize = 2048;
    if s.len() > MAX {
        let mut cut = s.len() - MAX;
        while !s.is_char_boundary(cut) {
            cut += 1;
        }
        s = format!("…{}", &s[cut..]);
    }
    s.trim().to_string()
}

/// Quotes a libpq conninfo value (`'…'` with `\\` and `\'` escapes).
pub fn conninfo_quote(s: &str) -> String {
    format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Quotes an SQL identifier.
pub fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

const TABLES_SQL: &str = "SELECT n.nspname, c.relname FROM pg_class c \
     JOIN pg_namespace n ON n.oid = c.relnamespace \
     WHERE c.relkind = 'r' \
       AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
       AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%' \
       AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass \
                       AND d.objid = c.oid AND d.deptype = 'e') \
     ORDER BY 1, 2";

/// An ordinary user table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    pub schema: String,
    pub name: String,
}

impl Table {
    /// The key of its row count in a manifest ([`super::manifest::table_key`]).
    pub fn key(&self) -> String {
        super::manifest::table_key(&self.schema, &self.name)
    }
}

/// Every ordinary user table (not the catalogs', not an extension's), in name order.
pub async fn user_tables(client: &Client) -> Result<Vec<Table>, PgError> {
    let rows = client
        .query(TABLES_SQL, &[])
        .await
        .map_err(query_err("list tables"))?;
    Ok(rows
        .iter()
        .map(|row| Table {
            schema: row.get(0),
            name: row.get(1),
        })
        .collect())
}

/// Exact row count of one table, its own rows only (`ONLY`: an inheritance parent's
/// count must not include its children's rows, which pg_dump dumps with the children).
async fn count_rows(client: &Client, table: &Table) -> Result<i64, PgError> {
    let sql = format!(
        "SELECT count(*) FROM ONLY {}.{}",
        quote_ident(&table.schema),
        quote_ident(&table.name)
    );
    Ok(client
        .query_one(&sql, &[])
        .await
        .map_err(query_err("count rows"))?
        .get(0))
}

/// Exact row count of every ordinary user table, keyed by `key` (normally
/// [`Table::key`]).
pub async fn row_counts(
    client: &Client,
    key: &(dyn Fn(&Table) -> String + Sync),
) -> Result<BTreeMap<String, i64>, PgError> {
    let tables = user_tables(client).await?;
    Ok(complete_counts(client, &tables, BTreeMap::new(), key)
        .await?
        .0)
}

/// The row count of every table in `tables`, keyed by `key`: from `known` where it has
/// the table, else by `count(*)`. Returns the counts and how many needed `count(*)`.
pub async fn complete_counts(
    client: &Client,
    tables: &[Table],
    known: BTreeMap<String, i64>,
    key: &(dyn Fn(&Table) -> String + Sync),
) -> Result<(BTreeMap<String, i64>, usize), PgError> {
    let mut counts = BTreeMap::new();
    let mut counted = 0;
    for table in tables {
        let key = key(table);
        let n = match known.get(&key) {
            Some(&n) => n,
            None => {
                counted += 1;
                count_rows(client, table).await?
            }
        };
        counts.insert(key, n);
    }
    Ok((counts, counted))
}

/// About what `pg_dump -Z0` will write, for the progress ETA: the database's size less
/// its indexes (each dumped as one statement). Runs under a savepoint, so a failure
/// (only the estimate is lost) leaves the exported transaction usable.
pub async fn estimated_dump_bytes(client: &Client) -> Option<u64> {
    client
        .batch_execute("SAVEPOINT palisade_estimate")
        .await
        .ok()?;
    let row = client
        .query_one(
            "SELECT (pg_database_size(current_database()) - coalesce((SELECT \
             sum(pg_relation_size(oid)) FROM pg_class WHERE relkind = 'i'), 0))::bigint",
            &[],
        )
        .await;
    let undo = match row {
        Ok(_) => "RELEASE SAVEPOINT palisade_estimate",
        Err(_) => "ROLLBACK TO SAVEPOINT palisade_estimate",
    };
    client.batch_execute(undo).await.ok()?;
    let n: i64 = row.ok()?.get(0);
    u64::try_from(n).ok()
}

/// A read-only repeatable-read transaction that exported its snapshot. Keep it alive
/// until pg_dump has finished.
pub struct ExportedSnapshot {
    /// The connection holding the transaction open.
    pub client: Client,
    /// Snapshot name for `pg_dump --snapshot`.
    pub name: String,
    /// `SHOW server_version`.
    pub server_version: String,
}

/// Opens the transaction and exports its snapshot.
pub async fn export_snapshot(conn: &PgConn) -> Result<ExportedSnapshot, PgError> {
    let client = conn.connect().await?;
    client
        .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        .await
        .map_err(query_err("begin transaction"))?;
    let name: String = client
        .query_one("SELECT pg_export_snapshot()", &[])
        .await
        .map_err(query_err("export snapshot"))?
        .get(0);
    let server_version: String = client
        .query_one("SHOW server_version", &[])
        .await
        .map_err(query_err("server version"))?
        .get(0);
    Ok(ExportedSnapshot {
        client,
        name,
        server_version,
    })
}

/// Whether the database has any user relation.
pub async fn is_empty(client: &Client) -> Result<bool, PgError> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE c.relkind IN ('r','p','v','m','S','f') \
               AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
               AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp%'",
            &[],
        )
        .await
        .map_err(query_err("inspect target"))?
        .get(0);
    Ok(n == 0)
}

/// Whether a database exists.
pub async fn database_exists(client: &Client, name: &str) -> Result<bool, PgError> {
    let n: i64 = client
        .query_one(
            "SELECT count(*) FROM pg_database WHERE datname = $1",
            &[&name],
        )
        .await
        .map_err(query_err("look up database"))?
        .get(0);
    Ok(n > 0)
}

/// `CREATE DATABASE`, with the encoding and locale of `like` when given (from
/// `template0`, the only template that allows another encoding or locale).
pub async fn create_database(
    client: &Client,
    name: &str,
    like: Option<&DatabaseInfo>,
) -> Result<(), PgError> {
    let sql = match like {
        None => format!("CREATE DATABASE {}", quote_ident(name)),
        Some(d) => format!(
            "CREATE DATABASE {} TEMPLATE template0 ENCODING {} LC_COLLATE {} LC_CTYPE {}",
            quote_ident(name),
            quote_literal(&d.encoding),
            quote_literal(&d.collate),
            quote_literal(&d.ctype)
        ),
    };
    client
        .batch_execute(&sql)
        .await
        .map_err(query_err("create database"))
}

/// Quotes an SQL string literal.
pub fn quote_literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

/// The encoding and locale of the connected database.
pub async fn database_info(client: &Client) -> Result<DatabaseInfo, PgError> {
    let row = client
        .query_one(
            "SELECT pg_encoding_to_char(encoding)::text, datcollate::text, datctype::text \
             FROM pg_database WHERE datname = current_database()",
            &[],
        )
        .await
        .map_err(query_err("database encoding and locale"))?;
    Ok(DatabaseInfo {
        encoding: row.get(0),
        collate: row.get(1),
        ctype: row.get(2),
    })
}

/// `DROP DATABASE IF EXISTS … WITH (FORCE)`.
pub async fn drop_database(client: &Client, name: &str) -> Result<(), PgError> {
    client
        .batch_execute(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            quote_ident(name)
        ))
        .await
        .map_err(query_err("drop database"))
}

/// Runs a check: passes when the query returns a single `true`. A failure is described
/// generically (the SQLSTATE, never the server's message: it may quote the data, e.g.
/// `invalid input syntax for type integer: "123-45-6789"`, and the description ends
/// up in plaintext records, results and logs).
pub async fn run_check(client: &Client, sql: &str) -> Result<bool, String> {
    let rows = client.simple_query(sql).await.map_err(|e| match e.code() {
        Some(code) => format!(
            "query failed with SQLSTATE {} (message withheld: it may contain data)",
            code.code()
        ),
        None => "query failed (connection error)".to_string(),
    })?;
    let values: Vec<Option<String>> = rows
        .iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).map(str::to_string)),
            _ => None,
        })
        .collect();
    match values.as_slice() {
        [Some(v)] if v == "t" || v == "true" => Ok(true),
        [_] => Ok(false),
        other => Err(format!("expected one row, got {}", other.len())),
    }
}

/// Truncates to at most `max` bytes on a char boundary.
pub fn bounded(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_string();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

/// Locates a PostgreSQL client program: in `bin_dir` when given, else on `PATH`.
pub fn program(bin_dir: Option<&Path>, name: &str) -> PathBuf {
    match bin_dir {
        Some(d) => d.join(name),
        None => PathBuf::from(name),
    }
}

/// `pg_dump --version` (or `pg_restore --version`).
pub fn tool_version(program: &Path) -> Result<String, PgError> {
    let out = Command::new(program)
        .arg("--version")
        .output()
        .map_err(|source| PgError::Spawn {
            program: program.display().to_string(),
            source,
        })?;
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// Collects the tail of a child's stderr on a thread.
pub struct StderrTail(std::thread::JoinHandle<String>);

impl StderrTail {
    /// Starts draining `stderr`.
    pub fn spawn(mut stderr: impl Read + Send + 'static) -> Self {
        StderrTail(std::thread::spawn(move || {
            let mut keep: Vec<u8> = Vec::new();
            let mut buf = [0u8; 4096];
            loop {
                match stderr.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        keep.extend_from_slice(&buf[..n]);
                        if keep.len() > 16 * 1024 {
                            keep.drain(..keep.len() - 8 * 1024);
                        }
                    }
                }
            }
            String::from_utf8_lossy(&keep).into_owned()
        }))
    }

    /// The collected text, redacted.
    pub fn finish(self, password: Option<&str>) -> String {
        redact(&self.0.join().unwrap_or_default(), password)
    }
}

/// Spawns `pg_dump -Fc -Z0` of the exported snapshot, stdout piped.
pub fn spawn_pg_dump(
    bin: &Path,
    conn: &PgConn,
    snapshot: &str,
) -> Result<std::process::Child, PgError> {
    let mut cmd = Command::new(bin);
    cmd.args(["--format=custom", "--compress=0", "--no-password"])
        .arg(format!("--snapshot={snapshot}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    conn.apply_env(&mut cmd);
    cmd.spawn().map_err(|source| PgError::Spawn {
        program: bin.display().to_string(),
        source,
    })
}

/// What to do about a pg_restore failure, recognized from its stderr.
pub fn restore_hint(stderr: &str) -> Option<&'static str> {
    if stderr.contains("role \"") && stderr.contains("does not exist") {
        Some(
            "a role named in the snapshot is missing on the target (roles are not in a snapshot): create it first, or use --no-owner",
        )
    } else if stderr.contains("out of shared memory")
        || stderr.contains("max_locks_per_transaction")
    {
        Some(
            "one transaction ran out of lock slots (many large objects or tables): raise max_locks_per_transaction on the target, or use --jobs N",
        )
    } else {
        None
    }
}

/// How `pg_restore` runs.
#[derive(Clone, Copy, Debug, Default)]
pub struct RestoreArgs {
    /// Drop the archive's objects first (`--clean --if-exists`).
    pub clean: bool,
    /// `--no-owner --no-privileges`.
    pub no_owner: bool,
    /// Parallel jobs (`-j N`, needs an archive file); one transaction when `None`.
    pub jobs: Option<u32>,
}

/// Spawns `pg_restore` into `conn.database`, reading the archive from `file`, or from
/// stdin (piped) when `None`. Without `jobs` it runs as one transaction.
pub fn spawn_pg_restore(
    bin: &Path,
    conn: &PgConn,
    args: &RestoreArgs,
    file: Option<&Path>,
) -> Result<std::process::Child, PgError> {
    let mut cmd = Command::new(bin);
    cmd.args(["--no-password", "--exit-on-error"])
        .arg(format!(
            "--dbname=dbname={}",
            conninfo_quote(&conn.database)
        ))
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    match args.jobs {
        Some(n) => cmd.arg(format!("--jobs={}", n.max(1))),
        None => cmd.arg("--single-transaction"),
    };
    if args.clean {
        cmd.args(["--clean", "--if-exists"]);
    }
    if args.no_owner {
        cmd.args(["--no-owner", "--no-privileges"]);
    }
    match file {
        Some(f) => cmd.stdin(Stdio::null()).arg("--").arg(f),
        None => cmd.stdin(Stdio::piped()),
    };
    conn.apply_env(&mut cmd);
    cmd.spawn().map_err(|source| PgError::Spawn {
        program: bin.display().to_string(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_and_quoting() {
        assert_eq!(
            redact("auth failed for s3cret!", Some("s3cret")),
            "auth failed for <redacted>!"
        );
        assert_eq!(quote_ident("we\"ird"), "\"we\"\"ird\"");
        let c = PgConn {
            host: "h".into(),
            port: 1,
            database: "d".into(),
            user: "u".into(),
            password: Some("hunter2".into()),
            ssl_mode: SslMode::Prefer,
            ssl_root_cert: None,
        };
        assert!(!format!("{c:?}").contains("hunter2"));
        assert_eq!(bounded("héllo", 2), "h…");
    }
}
