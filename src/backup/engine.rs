//! The streaming pipelines.
//!
//! `run`:     pg_dump stdout ─▶ [compress thread: zstd] ─chunks▶ [seal thread: AES-GCM +
//!            SHA-256, assembles parts] ─parts▶ [async: multipart upload / file]
//! `restore`: [async: object reader] ─bytes▶ [decode thread: SHA-256, open, unzstd]
//!            ─▶ pg_restore stdin
//!
//! Every hop is a bounded channel, so memory is about
//! `chunk × 6 + part × (concurrency + 2)` whatever the database size.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdout};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::Utc;
use ring::digest::{Context, SHA256};
use tokio::sync::mpsc;

use super::catalog::{self, authenticate_manifest, load_manifest, validate_id};
use super::destination::{ObjectReader, PartPlan, Storage, StorageError};
use super::error::EngineError;
use super::format::{self, EncryptionKey, FormatError, Sealer};
use super::manifest::{self, CompressionInfo, EncryptionInfo, MANIFEST_VERSION, Manifest, Source};
use super::pg::{self, PgConn, PgError, StderrTail};
use super::profile::{self, Acc, Profile};
use super::rows::{RowCounter, Unreadable};

/// Live counters for progress display.
#[derive(Debug, Default)]
pub struct Progress {
    /// Bytes read from pg_dump / written to pg_restore.
    pub raw: AtomicU64,
    /// Bytes written to / read from storage.
    pub stored: AtomicU64,
    /// Expected total of `raw` (run: estimated from the database size; 0 when unknown)
    /// or of `stored` (restore: the snapshot's size).
    pub total: AtomicU64,
}

/// Options of `backup run`.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Source database.
    pub pg: PgConn,
    /// Directory of pg_dump/pg_restore; `PATH` when `None`.
    pub pg_bin: Option<PathBuf>,
    /// zstd level.
    pub compression_level: i32,
    /// zstd worker threads (0: compress on the pipeline's own thread).
    pub compression_threads: u32,
    /// Encryption key; unencrypted when `None`.
    pub key: Option<EncryptionKey>,
    /// Key that signs the manifest when `key` is `None` (`--no-encryption` with a key
    /// configured); `key` signs it otherwise.
    pub mac_key: Option<EncryptionKey>,
    /// Plaintext bytes per encrypted chunk.
    pub chunk_size: usize,
    /// Snapshot id; generated when `None`.
    pub id: Option<String>,
}

/// Result of `backup run`.
#[derive(Clone, Debug)]
pub struct RunReport {
    /// The manifest written.
    pub manifest: Manifest,
    /// Object key or path of the data.
    pub key: String,
    /// Wall-clock duration.
    pub duration: Duration,
    /// The snapshot already existed (a retried run with the same id).
    pub already_existed: bool,
    /// Seconds per stage and wait (empty when the snapshot already existed).
    pub profile: Profile,
}

/// A new id: `YYYYMMDDTHHMMSSZ-xxxx`.
pub fn new_id(now: chrono::DateTime<Utc>) -> String {
    use ring::rand::SecureRandom;
    let mut r = [0u8; 2];
    let _ = ring::rand::SystemRandom::new().fill(&mut r);
    format!("{}-{}", now.format("%Y%m%dT%H%M%SZ"), format::hex(&r))
}

/// Kills the child when dropped (cancellation, timeouts, early errors).
struct ChildGuard(Option<Child>);

impl ChildGuard {
    fn child(&mut self) -> Option<&mut Child> {
        self.0.as_mut()
    }

    /// The pipe `take` takes from `program`'s child, and the tail of its stderr.
    fn pipes<P>(
        &mut self,
        program: &str,
        take: impl FnOnce(&mut Child) -> Option<P>,
    ) -> Result<(P, StderrTail), EngineError> {
        let (pipe, stderr) = match self.child() {
            Some(c) => (take(c), c.stderr.take()),
            None => (None, None),
        };
        let (Some(pipe), Some(stderr)) = (pipe, stderr) else {
            return Err(EngineError::Pipe(format!("{program} pipes missing")));
        };
        Ok((pipe, StderrTail::spawn(stderr)))
    }

    fn kill(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
        }
    }

    async fn wait(&mut self) -> Result<std::process::ExitStatus, EngineError> {
        let mut child = self
            .0
            .take()
            .ok_or_else(|| EngineError::Pipe("child already waited for".into()))?;
        let (status, child) = tokio::task::spawn_blocking(move || (child.wait(), child))
            .await
            .map_err(|e| EngineError::Pipe(e.to_string()))?;
        self.0 = Some(child);
        let status = status.map_err(|e| EngineError::Pipe(e.to_string()))?;
        self.0 = None;
        Ok(status)
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Aborts a spawned task when dropped.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn closed() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "downstream stage stopped")
}

/// Collects compressed output into fixed-size chunks for the seal thread.
struct ChunkSink {
    tx: SyncSender<(Vec<u8>, bool)>,
    buf: Vec<u8>,
    chunk: usize,
    /// Time blocked handing chunks to the seal thread.
    wait: Acc,
}

impl Write for ChunkSink {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let room = self.chunk - self.buf.len();
        let n = room.min(data.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() == self.chunk {
            let full = std::mem::replace(&mut self.buf, Vec::with_capacity(self.chunk));
            let tx = &self.tx;
            self.wait
                .time(|| tx.send((full, false)))
                .map_err(|_| closed())?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The pipe capacity asked for (Linux's default is 64 KiB; 1 MiB is `pipe-max-size`'s
/// default), so pg_dump keeps writing while a read's worth is counted and compressed.
const PIPE_READ: usize = 1 << 20;

/// Bytes per read from pg_dump's stdout: zstd's own input block (`ZSTD_CStreamInSize`),
/// so what the row counter just read is still in the L2 cache when zstd reads it.
/// Reading 1 MiB at a time measured 9 % slower on compressible data (issue #18).
const READ_SIZE: usize = 128 << 10;

/// Raises the capacity of the pipe behind `fd` (best effort: the default still works).
fn widen_pipe(fd: &impl std::os::fd::AsRawFd) {
    // SAFETY: F_SETPIPE_SZ on a descriptor we own; it changes only the pipe's buffer
    // size and fails harmlessly on anything that is not a pipe.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_READ as libc::c_int);
    }
}

struct CompressStats {
    raw: u64,
    /// Blocked reading pg_dump's output (the dump is slower than everything after it).
    read_wait: Acc,
    /// In zstd, including `sink_wait`.
    compress: Acc,
    sink_wait: Acc,
    cpu: Duration,
    /// The row count of each table, read from the stream as it passed.
    rows: Result<BTreeMap<String, i64>, Unreadable>,
    /// In the row counter.
    count: Acc,
}

fn compress_stage(
    mut src: ChildStdout,
    level: i32,
    workers: u32,
    chunk: usize,
    tx: SyncSender<(Vec<u8>, bool)>,
    progress: Arc<Progress>,
) -> Result<CompressStats, EngineError> {
    let cpu0 = profile::thread_cpu();
    let sink = ChunkSink {
        tx,
        buf: Vec::with_capacity(chunk),
        chunk,
        wait: Acc::default(),
    };
    let mut enc = zstd::stream::write::Encoder::new(sink, level).map_err(EngineError::Zstd)?;
    enc.include_checksum(true).map_err(EngineError::Zstd)?;
    if workers > 0 {
        enc.multithread(workers).map_err(EngineError::Zstd)?;
    }
    widen_pipe(&src);
    let mut buf = vec![0u8; READ_SIZE];
    let (mut raw, mut read_wait, mut compress) = (0u64, Acc::default(), Acc::default());
    let (mut rows, mut count) = (RowCounter::new(), Acc::default());
    loop {
        let n = match read_wait.time(|| src.read(&mut buf)) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(EngineError::Pipe(format!("reading pg_dump output: {e}"))),
        };
        raw += n as u64;
        progress.raw.fetch_add(n as u64, Ordering::Relaxed);
        count.time(|| rows.feed(&buf[..n]));
        compress
            .time(|| enc.write_all(&buf[..n]))
            .map_err(EngineError::Zstd)?;
    }
    let mut sink = compress.time(|| enc.finish()).map_err(EngineError::Zstd)?;
    let tx = &sink.tx;
    let last = std::mem::take(&mut sink.buf);
    sink.wait
        .time(|| tx.send((last, true)))
        .map_err(|_| EngineError::Pipe("seal stage stopped".into()))?;
    Ok(CompressStats {
        raw,
        read_wait,
        compress,
        sink_wait: sink.wait,
        cpu: profile::thread_cpu().saturating_sub(cpu0),
        rows: rows.finish(),
        count,
    })
}

struct SealStats {
    compressed: u64,
    stored: u64,
    sha256: String,
    /// Waiting for the next compressed chunk.
    chunk_wait: Acc,
    encrypt: Acc,
    hash: Acc,
    /// Blocked handing parts to the upload (all upload slots busy).
    upload_wait: Acc,
    cpu: Duration,
}

fn seal_stage(
    rx: Receiver<(Vec<u8>, bool)>,
    mut sealer: Option<Sealer>,
    plan: PartPlan,
    tx: mpsc::Sender<Bytes>,
    progress: Arc<Progress>,
) -> Result<SealStats, EngineError> {
    let cpu0 = profile::thread_cpu();
    let (mut chunk_wait, mut encrypt, mut hash, mut upload_wait) = (
        Acc::default(),
        Acc::default(),
        Acc::default(),
        Acc::default(),
    );
    let mut hasher = Context::new(&SHA256);
    let slack = format::MAX_CHUNK_SIZE.min(4 << 20) + 64;
    // Part `number` (1-based) is shipped once it reaches `plan.size(number)`.
    let mut number: u32 = 1;
    let mut part: Vec<u8> = Vec::with_capacity(plan.size(number) + slack);
    if let Some(s) = &sealer {
        part.extend_from_slice(s.header());
    }
    let (mut compressed, mut stored, mut saw_last) = (0u64, 0u64, false);
    let mut ship = |part: &mut Vec<u8>, stored: &mut u64, next: u32| -> Result<(), EngineError> {
        hash.time(|| hasher.update(part));
        *stored += part.len() as u64;
        progress
            .stored
            .fetch_add(part.len() as u64, Ordering::Relaxed);
        let full = std::mem::replace(part, Vec::with_capacity(plan.size(next) + slack));
        upload_wait
            .time(|| tx.blocking_send(Bytes::from(full)))
            .map_err(|_| EngineError::Pipe("upload stage stopped".into()))
    };
    let mut rx = rx.iter();
    while let Some((chunk, last)) = chunk_wait.time(|| rx.next()) {
        compressed += chunk.len() as u64;
        encrypt.time(|| match sealer.as_mut() {
            Some(s) => s.seal_into(&chunk, last, &mut part),
            None => part.extend_from_slice(&chunk),
        });
        if part.len() >= plan.size(number) {
            number = number.saturating_add(1);
            ship(&mut part, &mut stored, number)?;
        }
        if last {
            saw_last = true;
            break;
        }
    }
    if !saw_last {
        return Err(EngineError::Pipe("compression stage stopped early".into()));
    }
    if !part.is_empty() || stored == 0 {
        ship(&mut part, &mut stored, number)?;
    }
    Ok(SealStats {
        compressed,
        stored,
        sha256: format::hex(hasher.finish().as_ref()),
        chunk_wait,
        encrypt,
        hash,
        upload_wait,
        cpu: profile::thread_cpu().saturating_sub(cpu0),
    })
}

fn join_err(e: tokio::task::JoinError) -> EngineError {
    EngineError::Pipe(format!("stage panicked or was cancelled: {e}"))
}

/// `backup run`: dump, compress, encrypt, store, then write the manifest.
pub async fn run(
    storage: &Storage,
    opts: &RunOptions,
    progress: Arc<Progress>,
) -> Result<RunReport, EngineError> {
    let t0 = Instant::now();
    let started_at = Utc::now();
    let id = match &opts.id {
        Some(id) => id.clone(),
        None => new_id(started_at),
    };
    validate_id(&id)?;
    // Held until the manifest is written: a second run with this id fails at once
    // instead of replacing the first one's files (directory stores; see BACKUP.md).
    let _lock = storage.lock(&manifest::lock_name(&id)).await?;
    let signer = opts.key.as_ref().or(opts.mac_key.as_ref());
    if let Ok(existing) = load_manifest(storage, &id).await {
        // A manifest someone else put under our id is not "our" snapshot.
        let keys: Vec<EncryptionKey> = signer.into_iter().cloned().collect();
        authenticate_manifest(&existing, &keys, false)?;
        // Nor is a snapshot of another database: a retry reuses only its own.
        let (was, now) = (&existing.source, &opts.pg);
        if (was.host.as_str(), was.port, was.database.as_str())
            != (now.host.as_str(), now.port, now.database.as_str())
        {
            return Err(EngineError::IdInUse {
                id,
                of: format!(
                    "{}:{}/{}",
                    pg::bounded(&was.host, 100),
                    was.port,
                    pg::bounded(&was.database, 100)
                ),
            });
        }
        return Ok(RunReport {
            key: storage.key(&existing.object),
            manifest: existing,
            duration: t0.elapsed(),
            already_existed: true,
            profile: Profile::new(),
        });
    }
    let dumped = dump_and_store(storage, opts, &id, progress).await?;
    let data_name = manifest::data_name(&id);
    let mut manifest = snapshot_manifest(opts, &id, started_at, &dumped);
    if let Some(k) = signer {
        manifest.sign(k);
    }
    let body = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| EngineError::BadManifest(id.clone(), e.to_string()))?;
    // Create-only: of two runs with this id (S3 has no lock), only one commits.
    if let Err(e) = storage.put_new(&manifest::manifest_name(&id), body).await {
        // Without a manifest the data is not a snapshot: remove it — unless another
        // run committed this id first; the data is then its to keep.
        if !matches!(e, StorageError::Busy(_)) {
            let _ = storage.delete(&data_name).await;
        }
        storage.commit(&data_name);
        return Err(e.into());
    }
    storage.commit(&data_name);
    let duration = t0.elapsed();
    Ok(RunReport {
        key: storage.key(&data_name),
        manifest,
        duration,
        already_existed: false,
        profile: run_profile(duration, &dumped, opts.compression_threads),
    })
}

/// What the dump stored, before its manifest is written.
struct Dumped {
    compressed: CompressStats,
    seal: SealStats,
    row_counts: BTreeMap<String, i64>,
    server_version: String,
    pg_dump_version: String,
    database: manifest::DatabaseInfo,
    chunk: usize,
    /// Waiting for a free upload slot.
    slot_wait: Acc,
    upload_finish: Duration,
    /// Counting rows with SQL after the dump, for the tables the stream did not count.
    counting_sql: Duration,
    /// How many tables that was.
    counted_by_sql: usize,
}

/// A running pg_dump of the exported snapshot, the transaction holding the snapshot
/// (open until the row counts are settled) and the tables to count.
struct Dump {
    child: ChildGuard,
    stdout: ChildStdout,
    stderr: StderrTail,
    exported: pg::ExportedSnapshot,
    tables: Vec<pg::Table>,
    pg_dump_version: String,
    database: manifest::DatabaseInfo,
}

/// Exports a snapshot, lists its tables and starts pg_dump on it.
async fn start_dump(opts: &RunOptions, progress: &Progress) -> Result<Dump, EngineError> {
    let pg_dump = pg::program(opts.pg_bin.as_deref(), "pg_dump");
    let pg_dump_version = pg::tool_version(&pg_dump)?;
    let exported = pg::export_snapshot(&opts.pg).await?;
    if let Some(n) = pg::estimated_dump_bytes(&exported.client).await {
        progress.total.store(n, Ordering::Relaxed);
    }
    let tables = pg::user_tables(&exported.client).await?;
    let database = pg::database_info(&exported.client).await?;

    let mut child = ChildGuard(Some(pg::spawn_pg_dump(&pg_dump, &opts.pg, &exported.name)?));
    let (stdout, stderr) = child.pipes("pg_dump", |c| c.stdout.take())?;
    Ok(Dump {
        child,
        stdout,
        stderr,
        exported,
        tables,
        pg_dump_version,
        database,
    })
}

/// The row count of every table in `tables`: from the dump's own stream, and with SQL
/// in the exported snapshot for any table the stream did not count (an archive the
/// counter does not understand). Returns the counts and how many needed SQL.
async fn settle_row_counts(
    exported: &pg::ExportedSnapshot,
    tables: &[pg::Table],
    streamed: Result<BTreeMap<String, i64>, Unreadable>,
) -> Result<(BTreeMap<String, i64>, usize), PgError> {
    let streamed = streamed.unwrap_or_else(|why| {
        tracing::warn!(reason = %why, "row counts not read from the dump; counting with SQL");
        BTreeMap::new()
    });
    pg::complete_counts(&exported.client, tables, streamed, &pg::Table::key).await
}

/// Streams pg_dump through the compress and seal stages into one upload of the data
/// object; on any failure the upload is aborted.
async fn dump_and_store(
    storage: &Storage,
    opts: &RunOptions,
    id: &str,
    progress: Arc<Progress>,
) -> Result<Dumped, EngineError> {
    let Dump {
        mut child,
        stdout,
        stderr,
        exported,
        tables,
        pg_dump_version,
        database,
    } = start_dump(opts, &progress).await?;
    let mut upload = storage.begin_upload(&manifest::data_name(id)).await?;

    let chunk = opts.chunk_size.clamp(4096, format::MAX_CHUNK_SIZE);
    let sealer = match &opts.key {
        Some(k) => Some(Sealer::new(k, chunk, id)?),
        None => None,
    };
    let plan = storage.part_plan();
    let (chunk_tx, chunk_rx) = sync_channel::<(Vec<u8>, bool)>(4);
    let (part_tx, mut part_rx) = mpsc::channel::<Bytes>(1);
    let (level, workers) = (opts.compression_level, opts.compression_threads);
    let p1 = progress.clone();
    let compress = tokio::task::spawn_blocking(move || {
        compress_stage(stdout, level, workers, chunk, chunk_tx, p1)
    });
    let p2 = progress.clone();
    let seal = tokio::task::spawn_blocking(move || seal_stage(chunk_rx, sealer, plan, part_tx, p2));

    let mut upload_result = Ok(());
    let mut slot_wait = Acc::default();
    while let Some(part) = part_rx.recv().await {
        let t = Instant::now();
        let written = upload.write_part(part).await;
        slot_wait.add_since(t);
        if let Err(e) = written {
            upload_result = Err(EngineError::from(e));
            break;
        }
    }
    drop(part_rx);
    let mut killed = false;
    if upload_result.is_err() {
        child.kill();
        killed = true;
    }
    let compress_result = compress.await.map_err(join_err)?;
    if compress_result.is_err() {
        child.kill();
        killed = true;
    }
    let seal_result = seal.await.map_err(join_err)?;
    let status = child.wait().await?;
    let stderr_text = stderr.finish(opts.pg.password.as_deref());

    // Precedence: the upload's error, then pg_dump's own failure, then the stages'.
    let outcome: Result<(CompressStats, SealStats), EngineError> = match upload_result {
        Err(e) => Err(e),
        Ok(()) if !status.success() && !killed => Err(PgError::ChildFailed {
            program: "pg_dump",
            status: status.to_string(),
            stderr: stderr_text,
        }
        .into()),
        Ok(()) => compress_result.and_then(|c| seal_result.map(|s| (c, s))),
    };
    let (mut compressed, seal) = match outcome {
        Ok(v) => v,
        Err(e) => {
            upload.abort().await;
            return Err(e);
        }
    };
    let counting = Instant::now();
    let streamed = std::mem::replace(&mut compressed.rows, Ok(BTreeMap::new()));
    let counted = settle_row_counts(&exported, &tables, streamed).await;
    let counting_sql = counting.elapsed();
    let _ = exported.client.batch_execute("COMMIT").await;
    let server_version = exported.server_version.clone();
    drop(exported);
    let (row_counts, counted_by_sql) = match counted {
        Ok(c) => c,
        Err(e) => {
            upload.abort().await;
            return Err(e.into());
        }
    };
    let finish_start = Instant::now();
    upload.finish().await?;
    Ok(Dumped {
        compressed,
        seal,
        row_counts,
        server_version,
        pg_dump_version,
        database,
        chunk,
        slot_wait,
        upload_finish: finish_start.elapsed(),
        counting_sql,
        counted_by_sql,
    })
}

/// The manifest of a stored dump (unsigned).
fn snapshot_manifest(
    opts: &RunOptions,
    id: &str,
    started_at: chrono::DateTime<Utc>,
    d: &Dumped,
) -> Manifest {
    Manifest {
        format_version: MANIFEST_VERSION,
        id: id.to_string(),
        object: manifest::data_name(id),
        source: Source {
            host: opts.pg.host.clone(),
            port: opts.pg.port,
            database: opts.pg.database.clone(),
            user: opts.pg.user.clone(),
        },
        server_version: d.server_version.clone(),
        pg_dump_version: d.pg_dump_version.clone(),
        started_at,
        finished_at: Utc::now(),
        raw_bytes: d.compressed.raw,
        compressed_bytes: d.seal.compressed,
        stored_bytes: d.seal.stored,
        sha256: d.seal.sha256.clone(),
        compression: CompressionInfo {
            algorithm: "zstd".into(),
            level: opts.compression_level,
        },
        encryption: match &opts.key {
            Some(k) => EncryptionInfo {
                algorithm: "aes-256-gcm-chunked-v1".into(),
                key_id: Some(k.id().to_string()),
                chunk_size: Some(d.chunk as u32),
            },
            None => EncryptionInfo {
                algorithm: "none".into(),
                key_id: None,
                chunk_size: None,
            },
        },
        row_counts: d.row_counts.clone(),
        database: Some(d.database.clone()),
        mac_key_id: None,
        mac: None,
    }
}

/// Seconds per stage and wait of a run (`--profile`).
fn run_profile(duration: Duration, d: &Dumped, threads: u32) -> Profile {
    let (compressed, seal) = (&d.compressed, &d.seal);
    let (cpu_self, cpu_children) = profile::process_cpu();
    let mut prof = Profile::new();
    profile::record(
        &mut prof,
        &[
            ("wall", duration.as_secs_f64()),
            ("cpu.palisade", cpu_self.as_secs_f64()),
            ("cpu.pgDump", cpu_children.as_secs_f64()),
            ("dumpRead.wait", compressed.read_wait.secs()),
            (
                "compress.work",
                (compressed.compress.0.saturating_sub(compressed.sink_wait.0)).as_secs_f64(),
            ),
            ("compress.waitSeal", compressed.sink_wait.secs()),
            ("compress.cpu", compressed.cpu.as_secs_f64()),
            ("seal.waitCompress", seal.chunk_wait.secs()),
            ("seal.encrypt", seal.encrypt.secs()),
            ("seal.hash", seal.hash.secs()),
            ("seal.waitUpload", seal.upload_wait.secs()),
            ("seal.cpu", seal.cpu.as_secs_f64()),
            ("upload.waitSlot", d.slot_wait.secs()),
            ("upload.finish", d.upload_finish.as_secs_f64()),
            ("compress.threads", f64::from(threads)),
            ("rowCounts.stream", compressed.count.secs()),
            ("rowCounts.sql", d.counting_sql.as_secs_f64()),
            ("rowCounts.sqlTables", d.counted_by_sql as f64),
        ],
    );
    prof
}

/// Options of `backup restore`.
#[derive(Clone, Debug)]
pub struct RestoreOptions {
    /// Target database.
    pub target: PgConn,
    /// Directory of pg_restore.
    pub pg_bin: Option<PathBuf>,
    /// Keys to decrypt with (picked by key id).
    pub keys: Vec<EncryptionKey>,
    /// Snapshot id; newest when `None`.
    pub snapshot: Option<String>,
    /// Restore over a non-empty database (`--clean --if-exists`).
    pub force: bool,
    /// Create the target database when missing.
    pub create: bool,
    /// Skip ownership and privileges (`--no-owner --no-privileges`).
    pub no_owner: bool,
    /// Restore an (authenticated) unencrypted snapshot although a key is configured.
    pub allow_unencrypted: bool,
    /// Accept a manifest without a MAC (format 1) when `snapshot` names it explicitly.
    pub allow_unauthenticated: bool,
    /// Parallel `pg_restore -j N` from a spool file instead of one streamed transaction.
    pub jobs: Option<u32>,
    /// Directory of the spool file for `jobs` (default: the temp directory).
    pub scratch_dir: Option<PathBuf>,
    /// Restore into an existing database whose encoding differs from the source's
    /// (characters the target encoding lacks are lost or refused).
    pub allow_encoding_change: bool,
}

/// Result of `backup restore`.
#[derive(Clone, Debug)]
pub struct RestoreReport {
    /// The manifest of the restored snapshot.
    pub manifest: Manifest,
    /// Wall-clock duration.
    pub duration: Duration,
    /// Seconds per stage and wait.
    pub profile: Profile,
}

/// `backup restore`.
pub async fn restore(
    storage: &Storage,
    opts: &RestoreOptions,
    progress: Arc<Progress>,
) -> Result<RestoreReport, EngineError> {
    let t0 = Instant::now();
    let manifest = resolve(storage, opts).await?;

    let admin = opts.target.with_database("postgres").connect().await?;
    let exists = pg::database_exists(&admin, &opts.target.database).await?;
    let mut clean = false;
    if !exists {
        if !opts.create {
            return Err(EngineError::Invalid(format!(
                "target database {} does not exist (use --create)",
                opts.target.database
            )));
        }
        pg::create_database(&admin, &opts.target.database, manifest.database.as_ref()).await?;
    } else {
        let client = opts.target.connect().await?;
        if let Some(source) = &manifest.database {
            let target = pg::database_info(&client).await?;
            if target.encoding != source.encoding && !opts.allow_encoding_change {
                return Err(EngineError::Invalid(format!(
                    "snapshot {} is of a {} database, target {} is {}: characters may be lost or refused; restore with --create into a new database (it gets the source's encoding and locale), or pass --allow-encoding-change",
                    manifest.id, source.encoding, opts.target.database, target.encoding
                )));
            }
        }
        if !pg::is_empty(&client).await? {
            if !opts.force {
                return Err(PgError::NotEmpty(opts.target.database.clone()).into());
            }
            clean = true;
        }
    }
    let restored = restore_into(storage, &manifest, opts, clean, progress).await;
    if restored.is_err() && !exists {
        // A failed `--create` leaves no empty (or half-restored) database behind.
        if let Err(e) = pg::drop_database(&admin, &opts.target.database).await {
            tracing::warn!(error = %e, "cannot drop the database this restore created");
        }
    }
    let profile = restored?;
    Ok(RestoreReport {
        manifest,
        duration: t0.elapsed(),
        profile,
    })
}

/// The manifest of the snapshot `opts` restore (`--snapshot`, else the newest), once it
/// is known that the keys can open it.
pub async fn resolve(storage: &Storage, opts: &RestoreOptions) -> Result<Manifest, EngineError> {
    let manifest = catalog::resolve(
        storage,
        opts.snapshot.as_deref(),
        &opts.keys,
        opts.allow_unauthenticated,
    )
    .await?;
    check_keys(&manifest, &opts.keys, opts.allow_unencrypted)?;
    Ok(manifest)
}

/// Fails early when the snapshot's key is not among `keys`, and refuses an unencrypted
/// snapshot while keys are configured unless `allow_unencrypted`.
fn check_keys(
    manifest: &Manifest,
    keys: &[EncryptionKey],
    allow_unencrypted: bool,
) -> Result<(), EngineError> {
    if !manifest.encryption.is_encrypted() {
        if !keys.is_empty() && !allow_unencrypted {
            return Err(EngineError::Unencrypted(manifest.id.clone()));
        }
        return Ok(());
    }
    let Some(kid) = &manifest.encryption.key_id else {
        return Err(EngineError::BadManifest(
            manifest::manifest_name(&manifest.id),
            "encrypted but no key id".into(),
        ));
    };
    if keys.is_empty() {
        return Err(EngineError::MissingKey(kid.clone()));
    }
    if !keys.iter().any(|k| k.id() == kid) {
        return Err(FormatError::UnknownKey(kid.clone()).into());
    }
    Ok(())
}

/// Reads bytes from the async reader task, hashing and counting them.
struct ChannelReader {
    rx: mpsc::Receiver<Result<Bytes, StorageError>>,
    cur: Bytes,
    hasher: Context,
    total: u64,
    progress: Arc<Progress>,
    /// Waiting for the download.
    wait: Acc,
    hash: Acc,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            let rx = &mut self.rx;
            match self.wait.time(|| rx.blocking_recv()) {
                None => return Ok(0),
                Some(Ok(b)) => {
                    let hasher = &mut self.hasher;
                    self.hash.time(|| hasher.update(&b));
                    self.total += b.len() as u64;
                    self.progress
                        .stored
                        .fetch_add(b.len() as u64, Ordering::Relaxed);
                    self.cur = b;
                }
                Some(Err(e)) => return Err(io::Error::other(e)),
            }
        }
        let n = out.len().min(self.cur.len());
        out[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

/// Counts (and times) bytes going to pg_restore or the spool file.
struct CountingWriter<W> {
    inner: W,
    /// What `inner` is, for errors (`pg_restore's input`, `spool file /path`).
    what: String,
    progress: Arc<Progress>,
    wait: Acc,
}

impl<W: Write> CountingWriter<W> {
    fn sink_error(&self, e: io::Error) -> io::Error {
        if e.kind() == io::ErrorKind::BrokenPipe {
            return e;
        }
        io::Error::other(SinkError {
            what: self.what.clone(),
            source: e,
        })
    }
}

impl<W: Write> Write for CountingWriter<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let inner = &mut self.inner;
        let n = match self.wait.time(|| inner.write(data)) {
            Ok(n) => n,
            Err(e) => return Err(self.sink_error(e)),
        };
        self.progress.raw.fetch_add(n as u64, Ordering::Relaxed);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush().map_err(|e| self.sink_error(e))
    }
}

/// Times the reads of the layer it wraps (decryption, including what it reads).
struct TimedReader<R> {
    inner: R,
    time: Acc,
}

impl<R: Read> Read for TimedReader<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        let inner = &mut self.inner;
        self.time.time(|| inner.read(out))
    }
}

/// A write to the restore's sink (pg_restore's stdin or the spool file) that failed,
/// told apart from decoding errors so that e.g. a full scratch directory is reported
/// as such, with its path, and not as a compression error.
#[derive(Debug, thiserror::Error)]
#[error("writing {what}: {source}")]
struct SinkError {
    what: String,
    source: io::Error,
}

/// The storage error somewhere in `e`'s chain (a download that failed mid-way is
/// wrapped by the decryption and decompression layers).
fn storage_cause<'a>(e: &'a (dyn std::error::Error + 'static)) -> Option<&'a StorageError> {
    let mut cur: Option<&'a (dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(s) = err.downcast_ref::<StorageError>() {
            return Some(s);
        }
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            cur = Some(inner);
            continue;
        }
        if let Some(FormatError::Io(io)) = err.downcast_ref::<FormatError>() {
            cur = Some(io);
            continue;
        }
        cur = err.source();
    }
    None
}

fn map_decode_error(e: io::Error) -> EngineError {
    if let Some(s) = storage_cause(&e) {
        return EngineError::Download(s.to_string());
    }
    if let Some(inner) = e.get_ref() {
        if let Some(w) = inner.downcast_ref::<SinkError>() {
            return EngineError::Scratch(w.to_string());
        }
        if let Some(f) = inner.downcast_ref::<FormatError>() {
            return EngineError::Format(match f {
                FormatError::Authentication(i) => FormatError::Authentication(*i),
                FormatError::Truncated => FormatError::Truncated,
                FormatError::TrailingData => FormatError::TrailingData,
                FormatError::BadFrame(i) => FormatError::BadFrame(*i),
                FormatError::WrongSnapshot { expected, found } => FormatError::WrongSnapshot {
                    expected: expected.clone(),
                    found: found.clone(),
                },
                FormatError::Unbound => FormatError::Unbound,
                _ => FormatError::BadHeader("invalid stream"),
            });
        }
        if let Some(s) = inner.downcast_ref::<StorageError>() {
            return EngineError::Pipe(s.to_string());
        }
    }
    EngineError::Zstd(e)
}

/// Decodes the stored stream into `sink` (pg_restore's stdin, or the spool file for
/// `--jobs`), then checks the object's size and SHA-256 against the manifest. On
/// error the sink is handed back unclosed, so that the caller can kill pg_restore
/// before its stdin closes (a bad stream is then never committed).
fn decode_stage<W: Write>(
    mut reader: ChannelReader,
    keys: Vec<EncryptionKey>,
    encrypted: bool,
    (sink, what): (W, String),
    manifest: &Manifest,
    progress: Arc<Progress>,
) -> (Result<Profile, EngineError>, Option<W>) {
    let cpu0 = profile::thread_cpu();
    let mut out = CountingWriter {
        what,
        inner: sink,
        progress,
        wait: Acc::default(),
    };
    let result = (|| -> Result<Profile, EngineError> {
        let (mut copy, decrypt) = {
            let plain: Box<dyn Read + '_> = if encrypted {
                Box::new(
                    format::OpenReader::new(
                        &mut reader,
                        &keys,
                        &manifest.id,
                        manifest.format_version < MANIFEST_VERSION,
                    )
                    .map_err(|e| match e {
                        FormatError::Io(io) => map_decode_error(io),
                        other => other.into(),
                    })?,
                )
            } else {
                Box::new(&mut reader)
            };
            let timed = TimedReader {
                inner: plain,
                time: Acc::default(),
            };
            let mut dec = zstd::stream::read::Decoder::new(timed).map_err(EngineError::Zstd)?;
            let mut copy = Acc::default();
            match copy.time(|| io::copy(&mut dec, &mut out)) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {
                    return Err(EngineError::Pipe("pg_restore stopped reading".into()));
                }
                Err(e) => return Err(map_decode_error(e)),
            }
            (copy, dec.get_ref().get_ref().time.0)
        };
        // Drain anything left (there should be nothing) so the hash covers the object.
        copy.time(|| io::copy(&mut reader, &mut io::sink()))
            .map_err(map_decode_error)?;
        if reader.total != manifest.stored_bytes {
            return Err(EngineError::Size {
                expected: manifest.stored_bytes,
                actual: reader.total,
            });
        }
        let actual = format::hex(reader.hasher.clone().finish().as_ref());
        if actual != manifest.sha256 {
            return Err(EngineError::Checksum {
                expected: manifest.sha256.clone(),
                actual,
            });
        }
        out.flush().map_err(map_decode_error)?;
        let below_decrypt = reader.wait.0 + reader.hash.0;
        let mut p = Profile::new();
        profile::record(
            &mut p,
            &[
                ("download.wait", reader.wait.secs()),
                ("hash", reader.hash.secs()),
                (
                    "decrypt",
                    decrypt.saturating_sub(below_decrypt).as_secs_f64(),
                ),
                (
                    "decompress",
                    copy.0
                        .saturating_sub(decrypt.max(below_decrypt) + out.wait.0)
                        .as_secs_f64(),
                ),
                ("write.wait", out.wait.secs()),
                (
                    "decode.cpu",
                    profile::thread_cpu().saturating_sub(cpu0).as_secs_f64(),
                ),
            ],
        );
        Ok(p)
    })();
    match result {
        Ok(p) => {
            drop(out);
            (Ok(p), None)
        }
        Err(e) => (Err(e), Some(out.inner)),
    }
}

/// The spool file of a `--jobs` restore: created 0600 and exclusively, removed when
/// dropped (success, failure or cancellation).
struct Spool(PathBuf);

impl Spool {
    fn create(dir: &std::path::Path, id: &str) -> Result<(Self, std::fs::File), EngineError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = dir.join(format!(
            ".palisade-restore-{id}-{}.dump",
            std::process::id()
        ));
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(|e| EngineError::Scratch(format!("spool file {}: {e}", path.display())))?;
        Ok((Spool(path), file))
    }
}

impl Drop for Spool {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn pg_restore_failed(status: std::process::ExitStatus, stderr: String) -> EngineError {
    let stderr = match pg::restore_hint(&stderr) {
        Some(hint) => format!("{stderr}\nwhat to do: {hint}"),
        None => stderr,
    };
    PgError::ChildFailed {
        program: "pg_restore",
        status: status.to_string(),
        stderr,
    }
    .into()
}

/// Restores the snapshot into `opts.target`: streamed into `pg_restore` (one
/// transaction), or with `opts.jobs` spooled to a scratch file, verified whole, then
/// `pg_restore -j N` (pg_restore needs a seekable archive to run in parallel).
pub(crate) async fn restore_into(
    storage: &Storage,
    manifest: &Manifest,
    opts: &RestoreOptions,
    clean: bool,
    progress: Arc<Progress>,
) -> Result<Profile, EngineError> {
    let t0 = Instant::now();
    progress
        .total
        .store(manifest.stored_bytes, Ordering::Relaxed);
    let object = storage.open(&manifest.object).await?;
    let (reader, _download) = download(object, progress.clone());
    let args = pg::RestoreArgs {
        clean,
        no_owner: opts.no_owner,
        jobs: opts.jobs,
    };
    let mut p = match opts.jobs {
        None => restore_streamed(reader, manifest, opts, &args, progress).await?,
        Some(_) => restore_spooled(reader, manifest, opts, &args, progress, t0).await?,
    };
    let (cpu_self, cpu_children) = profile::process_cpu();
    profile::record(
        &mut p,
        &[
            ("wall", t0.elapsed().as_secs_f64()),
            ("cpu.palisade", cpu_self.as_secs_f64()),
            ("cpu.pgRestore", cpu_children.as_secs_f64()),
        ],
    );
    Ok(p)
}

/// Streams `object` into a channel from an async task (stopped when the returned
/// guard drops) and reads it, hashed and counted, on the blocking side.
fn download(mut object: ObjectReader, progress: Arc<Progress>) -> (ChannelReader, AbortOnDrop<()>) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, StorageError>>(8);
    let task = AbortOnDrop(tokio::spawn(async move {
        loop {
            match object.next_chunk().await {
                Ok(Some(b)) => {
                    if tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                }
                Ok(None) => return,
                Err(e) => {
                    let _ = tx.send(Err(e)).await;
                    return;
                }
            }
        }
    }));
    let reader = ChannelReader {
        rx,
        cur: Bytes::new(),
        hasher: Context::new(&SHA256),
        total: 0,
        progress,
        wait: Acc::default(),
        hash: Acc::default(),
    };
    (reader, task)
}

/// [`decode_stage`] on a blocking thread.
async fn decode<W: Write + Send + 'static>(
    reader: ChannelReader,
    manifest: &Manifest,
    keys: &[EncryptionKey],
    sink: (W, String),
    progress: Arc<Progress>,
) -> Result<(Result<Profile, EngineError>, Option<W>), EngineError> {
    let (keys, encrypted, m) = (
        keys.to_vec(),
        manifest.encryption.is_encrypted(),
        manifest.clone(),
    );
    tokio::task::spawn_blocking(move || decode_stage(reader, keys, encrypted, sink, &m, progress))
        .await
        .map_err(join_err)
}

/// One transaction: the decoded stream goes straight into pg_restore's stdin, which is
/// killed before it sees EOF when the stream does not verify.
async fn restore_streamed(
    reader: ChannelReader,
    manifest: &Manifest,
    opts: &RestoreOptions,
    args: &pg::RestoreArgs,
    progress: Arc<Progress>,
) -> Result<Profile, EngineError> {
    let pg_restore = pg::program(opts.pg_bin.as_deref(), "pg_restore");
    let mut child = ChildGuard(Some(pg::spawn_pg_restore(
        &pg_restore,
        &opts.target,
        args,
        None,
    )?));
    let (stdin, stderr) = child.pipes("pg_restore", |c| c.stdin.take())?;
    let sink = (stdin, "pg_restore's input".to_string());
    let (decoded, stdin_left) = decode(reader, manifest, &opts.keys, sink, progress).await?;
    if decoded.is_err() {
        // Kill pg_restore before its stdin closes so a bad stream is never
        // committed.
        child.kill();
    }
    drop(stdin_left);
    let status = child.wait().await?;
    let stderr_text = stderr.finish(opts.target.password.as_deref());
    match decoded {
        Err(EngineError::Pipe(_)) if !status.success() => {
            Err(pg_restore_failed(status, stderr_text))
        }
        Err(e) => Err(e),
        Ok(_) if !status.success() => Err(pg_restore_failed(status, stderr_text)),
        Ok(p) => Ok(p),
    }
}

/// `--jobs`: the decoded archive is spooled and verified whole before `pg_restore -j`
/// reads it.
async fn restore_spooled(
    reader: ChannelReader,
    manifest: &Manifest,
    opts: &RestoreOptions,
    args: &pg::RestoreArgs,
    progress: Arc<Progress>,
    t0: Instant,
) -> Result<Profile, EngineError> {
    let pg_restore = pg::program(opts.pg_bin.as_deref(), "pg_restore");
    let dir = opts.scratch_dir.clone().unwrap_or_else(std::env::temp_dir);
    let (spool, file) = Spool::create(&dir, &manifest.id)?;
    let sink = io::BufWriter::with_capacity(1 << 20, file);
    let what = format!(
        "spool file {} (in --scratch-dir; is it full?)",
        spool.0.display()
    );
    let (decoded, _) = decode(reader, manifest, &opts.keys, (sink, what), progress).await?;
    // Nothing reaches PostgreSQL unless the whole object verified.
    let mut p = decoded?;
    let spooled = t0.elapsed();
    let mut child = ChildGuard(Some(pg::spawn_pg_restore(
        &pg_restore,
        &opts.target,
        args,
        Some(&spool.0),
    )?));
    let ((), stderr) = child.pipes("pg_restore", |_| Some(()))?;
    let status = child.wait().await?;
    drop(spool);
    let stderr_text = stderr.finish(opts.target.password.as_deref());
    if !status.success() {
        return Err(pg_restore_failed(status, stderr_text));
    }
    profile::record(
        &mut p,
        &[
            ("spool.wall", spooled.as_secs_f64()),
            ("pgRestore.wall", (t0.elapsed() - spooled).as_secs_f64()),
        ],
    );
    Ok(p)
}
