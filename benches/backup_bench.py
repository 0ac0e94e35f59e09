#!/usr/bin/env python3
"""Snapshot engine benchmark (`make bench`).

Starts a throwaway PostgreSQL 15 and a local S3 server (s3s-fs, separate process),
generates a compressible (pgbench) and an incompressible (random md5 text) database of
about --size-gb each, and measures in the same run:

  backup:  pg_dump -Fc -Z0 > /dev/null      (the physical limit of a logical snapshot)
           pg_dump -Fc                      (PostgreSQL's default, gzip level 6)
           pg_dump -Fc -Z0 | zstd -1 > file (the hand pipeline)
           palisade backup run (zstd -1, AES-256-GCM, S3 multipart upload), with its
             per-stage profile (--profile); again with --compression-threads 0 (--mt-threads: one thread, the default before issue #18); and
             to a local directory instead of S3 (what the S3 hop costs)
  restore: palisade backup restore from S3, streamed and with --jobs 2
           pg_restore and pg_restore -j 2 of the local pg_dump -Fc -Z0 file
  context: pgBackRest full backup (zst, aes-256-cbc, local repo) and its restore, when
           the Debian package is installed or installable (--no-pgbackrest to skip)

printing wall time, output size and peak RSS (wait4 ru_maxrss: the largest process of
the command's tree, so for palisade it is max(palisade, pg_dump/pg_restore)), CPU
seconds of the tree, and the ratios the targets are stated in. Run as root (PostgreSQL
runs via runuser) or as a normal user.
"""

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time

PG_BIN = os.environ.get("PALISADE_PG_BIN", "/usr/lib/postgresql/15/bin")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    p = s.getsockname()[1]
    s.close()
    return p


def as_pg(cmd):
    if os.geteuid() == 0:
        return ["runuser", "-u", "postgres", "--"] + cmd
    return cmd


def machine_cpu():
    """CPU seconds the whole machine has spent busy (all cores; /proc/stat's user, nice,
    system, irq, softirq and steal), so a command's share includes the PostgreSQL server
    backends that work for it, which its own process tree does not."""
    with open("/proc/stat") as f:
        fields = f.readline().split()[1:]
    user, nice, system, _idle, _iowait, irq, softirq, steal = (int(x) for x in fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def run_measured(label, cmd, env=None, shell=False):
    """Run, returning its measurement (wall seconds, peak RSS MiB, CPU seconds of the
    command's tree and of the whole machine) and its stdout."""
    m0 = machine_cpu()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Read stdout/stderr fully (both are small), then reap with wait4 for rusage.
    stdout = p.stdout.read()
    stderr = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    measured = {"seconds": time.monotonic() - t0, "rssMiB": ru.ru_maxrss / 1024.0,
                "cpuSeconds": ru.ru_utime + ru.ru_stime, "machineCpuSeconds": machine_cpu() - m0}
    if p.returncode != 0:
        sys.stderr.write(f"{label} failed ({p.returncode}):\n{stderr.decode(errors='replace')}\n{stdout.decode(errors='replace')}\n")
        sys.exit(1)
    return measured, stdout


class Pg:
    def __init__(self, tmp):
        self.dir = os.path.join(tmp, "pg")
        os.makedirs(self.dir)
        if os.geteuid() == 0:
            subprocess.check_call(["chown", "-R", "postgres:postgres", self.dir])
        self.data = os.path.join(self.dir, "data")
        self.port = free_port()
        subprocess.check_call(as_pg([f"{PG_BIN}/initdb", "-D", self.data, "-U", "postgres",
                                     "--auth=trust", "-E", "UTF8", "--locale=C", "--no-sync"]),
                              stdout=subprocess.DEVNULL)
        opts = (f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off "
                "-c full_page_writes=off -c synchronous_commit=off -c shared_buffers=256MB "
                "-c maintenance_work_mem=256MB -c max_wal_size=4GB")
        subprocess.check_call(as_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-l",
                                     os.path.join(self.dir, "log"), "-o", opts, "-w", "start"]),
                              stdout=subprocess.DEVNULL)
        self.env = dict(os.environ, PGHOST="127.0.0.1", PGPORT=str(self.port), PGUSER="postgres")

    def psql(self, db, sql):
        return subprocess.check_output([f"{PG_BIN}/psql", "-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1",
                                        "-d", db, "-c", sql], env=self.env).decode().strip()

    def stop(self):
        subprocess.call(as_pg([f"{PG_BIN}/pg_ctl", "-D", self.data, "-m", "immediate", "stop"]),
                        stdout=subprocess.DEVNULL)


def generate(pg, variant, size_gb):
    db = f"bench_{variant}"
    pg.psql("postgres", f"CREATE DATABASE {db}")
    t0 = time.monotonic()
    if variant == "compressible":
        scale = max(1, int(round(70 * size_gb)))  # pgbench -s 70 ≈ 1 GB
        subprocess.check_call([f"{PG_BIN}/pgbench", "-i", "-q", "-s", str(scale), db], env=pg.env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    else:
        # Random hex text, the distribution of `md5(random()::text)` (4 bits of entropy per
        # byte), written by this process into COPY: about 10x faster than INSERT … md5().
        rows = int(8_000_000 * size_gb)  # ≈ 1.2 GiB per 8 M rows
        pg.psql(db, "CREATE TABLE noise (id bigint, a text, b text)")
        copy = subprocess.Popen([f"{PG_BIN}/psql", "-X", "-q", "-v", "ON_ERROR_STOP=1", "-d", db,
                                 "-c", "COPY noise FROM STDIN"], env=pg.env, stdin=subprocess.PIPE)
        batch = 10_000
        for lo in range(1, rows + 1, batch):
            n = min(batch, rows + 1 - lo)
            raw = os.urandom(48 * n).hex()
            copy.stdin.write("".join(f"{lo + i}\t{raw[96 * i:96 * i + 64]}\t{raw[96 * i + 64:96 * i + 96]}\n"
                                     for i in range(n)).encode())
        copy.stdin.close()
        if copy.wait() != 0:
            sys.exit("COPY into noise failed")
        pg.psql(db, "ALTER TABLE noise ADD PRIMARY KEY (id)")
        pg.psql(db, "VACUUM ANALYZE noise")
    size = int(pg.psql(db, f"SELECT pg_database_size('{db}')"))
    print(f"  generated {db}: {size / 2**20:.0f} MiB in {time.monotonic() - t0:.0f}s", flush=True)
    return db, size


PGBACKREST_CONF = """[global]
repo1-path={repo}
repo1-retention-full=1
compress-type=zst
compress-level=1
repo1-cipher-type=aes-256-cbc
repo1-cipher-pass={cipher}
start-fast=y
archive-check=n
log-level-console=warn
log-path={tmp}
lock-path={tmp}
spool-path={tmp}

[bench]
pg1-path={data}
pg1-port={port}
pg1-socket-path={sock}
"""


def pgbackrest_binary(allowed):
    """pgbackrest on PATH, installing the Debian package if missing (bench only)."""
    if not allowed:
        return None, "skipped (--no-pgbackrest)"
    found = shutil.which("pgbackrest")
    if found:
        return found, None
    if os.geteuid() == 0 and shutil.which("apt-get"):
        rc = subprocess.call(["apt-get", "install", "-y", "-q", "pgbackrest"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if rc != 0:
            subprocess.call(["apt-get", "update", "-q"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            rc = subprocess.call(["apt-get", "install", "-y", "-q", "pgbackrest"],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                 env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        found = shutil.which("pgbackrest")
        if found:
            return found, None
        return None, f"skipped: apt-get install pgbackrest failed ({rc})"
    return None, "skipped: pgbackrest is not installed and cannot be installed here (needs root + apt-get)"


def pgbackrest_rows(pg, tmp, binary, variant):
    """Full backup of the cluster (holding just this variant's database) and its restore."""
    base = os.path.join(tmp, f"pgbackrest-{variant}")
    repo, restore_dir = os.path.join(base, "repo"), os.path.join(base, "restore")
    os.makedirs(repo)
    conf = os.path.join(base, "pgbackrest.conf")
    with open(conf, "w") as f:
        f.write(PGBACKREST_CONF.format(repo=repo, cipher=os.urandom(16).hex(), tmp=base, data=pg.data,
                                       port=pg.port, sock=pg.dir))
    if os.geteuid() == 0:
        subprocess.check_call(["chown", "-R", "postgres:postgres", base])
    cmd = [binary, f"--config={conf}", "--stanza=bench"]
    subprocess.check_call(as_pg(cmd + ["stanza-create"]), stdout=subprocess.DEVNULL)
    out = {}
    out["pgbackrest_backup"], _ = run_measured("pgbackrest backup", as_pg(cmd + ["--type=full", "backup"]))
    out["pgbackrest_backup"]["bytes"] = sum(os.path.getsize(os.path.join(d, f))
                                            for d, _, fs in os.walk(os.path.join(repo, "backup")) for f in fs)
    os.makedirs(restore_dir)
    if os.geteuid() == 0:
        subprocess.check_call(["chown", "-R", "postgres:postgres", restore_dir])
    os.chmod(restore_dir, 0o700)
    out["pgbackrest_restore"], _ = run_measured("pgbackrest restore",
                                                as_pg(cmd + [f"--pg1-path={restore_dir}", "restore"]))
    shutil.rmtree(base, ignore_errors=True)
    return out


ROWS = [
    # key, label, kind (backup rows have an output size)
    ("pg_dump_Z0_null", "`pg_dump -Fc -Z0 > /dev/null`"),
    ("pg_dump_Fc", "`pg_dump -Fc`"),
    ("pg_dump_Z0_zstd1", "`pg_dump -Fc -Z0 \\| zstd -1 > file`"),
    ("palisade_run", "**palisade backup run** (S3)"),
    ("palisade_run_mt", "palisade backup run `--compression-threads {mt}` (S3)"),
    ("palisade_run_dir", "palisade backup run (`--dir`, no S3)"),
    ("pgbackrest_backup", "pgBackRest full backup (context)"),
    ("pg_restore_file", "`pg_restore` (local file)"),
    ("palisade_restore", "**palisade backup restore**"),
    ("pg_restore_j2", "`pg_restore -j 2` (local file)"),
    ("palisade_restore_j2", "palisade backup restore `--jobs 2`"),
    ("pgbackrest_restore", "pgBackRest restore (context)"),
]

# ratio key, numerator, denominator, what, target (ratio ≤ target), or None
def median_of(xs):
    """The measurement with the median wall time (the lower middle one of an even count)."""
    return sorted(xs, key=lambda x: x["seconds"])[(len(xs) - 1) // 2]


def paired_ratios(samples, a, b, what):
    """a ÷ b per round when both were measured every round (paired: same load), else the
    ratio of the medians."""
    xa, xb = samples[a], samples[b]
    if len(xa) == len(xb):
        return [x[what] / y[what] for x, y in zip(xa, xb)]
    return [median_of(xa)[what] / median_of(xb)[what]]


def ratio_rows(variant):
    dump_target = 1.05 if variant == "compressible" else 1.15
    return [
        ("run_vs_dump_null", "palisade_run", "pg_dump_Z0_null", "seconds",
         "run ÷ `pg_dump -Fc -Z0 > /dev/null` time", dump_target),
        ("run_vs_zstd_time", "palisade_run", "pg_dump_Z0_zstd1", "seconds",
         "run ÷ `pg_dump -Z0 \\| zstd -1` time", 0.9),
        ("run_vs_zstd_size", "palisade_run", "pg_dump_Z0_zstd1", "bytes",
         "run ÷ `zstd -1` output size", 1.05),
        ("run_mt_vs_dump_null", "palisade_run_mt", "pg_dump_Z0_null", "seconds",
         "run `--compression-threads {mt}` ÷ `-Z0 > /dev/null` time", None),
        ("run_dir_vs_dump_null", "palisade_run_dir", "pg_dump_Z0_null", "seconds",
         "run `--dir` ÷ `-Z0 > /dev/null` time", None),
        ("restore_vs_pg_restore_time", "palisade_restore", "pg_restore_file", "seconds",
         "restore ÷ `pg_restore` file time", 1.05),
        ("restore_j2_vs_pg_restore_j2_time", "palisade_restore_j2", "pg_restore_j2", "seconds",
         "restore `--jobs 2` ÷ `pg_restore -j 2` file time", None),
    ]


PROFILE_RUN = [
    ("dumpRead.wait", "compress thread blocked on pg_dump's pipe"),
    ("compress.threads", "zstd workers (number)"),
    ("compress.work", "in zstd (wall; with workers: handing them input)"),
    ("compress.cpu", "compress thread CPU"),
    ("seal.encrypt", "AES-256-GCM"),
    ("seal.hash", "SHA-256 of the stored stream"),
    ("seal.waitUpload", "seal blocked on upload slots"),
    ("upload.finish", "CompleteMultipartUpload"),
    ("rowCounts.wall", "exact row counts by `count(*)` beside the dump (before)"),
    ("rowCounts.stream", "row counts read from the dump stream (compress thread)"),
    ("rowCounts.sql", "`count(*)` after the dump, tables the stream did not count"),
    ("rowCounts.sqlTables", "tables counted with SQL (number)"),
    ("cpu.palisade", "palisade process CPU"),
    ("cpu.pgDump", "pg_dump CPU"),
    ("wall", "palisade wall"),
]
PROFILE_RESTORE = [
    ("download.wait", "decoder waiting for GetObject"),
    ("hash", "SHA-256"),
    ("decrypt", "AES-256-GCM open"),
    ("decompress", "unzstd"),
    ("write.wait", "blocked writing to pg_restore / spool"),
    ("decode.cpu", "decode thread CPU"),
    ("spool.wall", "`--jobs`: spool + verify"),
    ("pgRestore.wall", "`--jobs`: pg_restore -j"),
    ("wall", "palisade wall"),
]


def markdown(results):
    """The tables of docs/BACKUP.md's "Measured" section. With several rounds, times are
    medians with the range, ratios the median of the per-round ratios with their range."""
    vs = results["variants"]
    names = list(vs)
    mt = results.get("mtThreads", 1)  # runs before --mt-threads used one worker

    def spread(xs, fmt):
        return f" ({fmt.format(min(xs))}–{fmt.format(max(xs))})" if len(xs) > 1 else ""

    out = ["| variant | command | time s | CPU s | machine CPU s | output MiB | peak RSS MiB |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for v in names:
        first = True
        for k, label in ROWS:
            if k not in vs[v]:
                continue
            x = vs[v][k]
            head = f"{v} ({vs[v]['databaseBytes'] / 2**20:.0f} MiB)" if first else ""
            first = False
            size = f"{x['bytes'] / 2**20:.1f}" if "bytes" in x else "–"
            t = f"{x['seconds']:.2f}" + spread(x.get("samples", []), "{:.2f}")
            machine = f"{x['machineCpuSeconds']:.2f}" if "machineCpuSeconds" in x else "–"
            out.append(f"| {head} | {label.format(mt=mt)} | {t} | {x['cpuSeconds']:.2f} | {machine} | {size} "
                       f"| {x['rssMiB']:.1f} |")
    out += ["", "| ratio (target) | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
    for k, _, _, _, label, _ in ratio_rows(names[0]):
        if not all(k in vs[v]["ratios"] for v in names):
            continue
        cells = []
        for v in names:
            target = {r[0]: r[5] for r in ratio_rows(v)}[k]
            val = vs[v]["ratios"][k]
            mark = "" if target is None else (" ✓" if val <= target else " ✗")
            cells.append(f"{val:.3f}{mark}" + ("" if target is None else f" (≤ {target})")
                         + spread(vs[v].get("ratioSamples", {}).get(k, []), "{:.2f}"))
        out.append(f"| {label.format(mt=mt)} | " + " | ".join(cells) + " |")
    rss = [max(vs[v][k]["rssMiB"] for k, _ in ROWS if k.startswith("palisade") and k in vs[v]) for v in names]
    out.append("| peak RSS of palisade (≤ 128 MiB) | " + " | ".join(f"{x:.1f} MiB {'✓' if x <= 128 else '✗'}" for x in rss) + " |")
    for title, key, stages in (("run", "palisade_run", PROFILE_RUN), ("restore", "palisade_restore", PROFILE_RESTORE),
                               ("restore --jobs 2", "palisade_restore_j2", PROFILE_RESTORE)):
        if not all(key in vs[v] for v in names):
            continue
        out += ["", f"| profile: {title}, seconds | " + " | ".join(names) + " |", "|---|" + "---:|" * len(names)]
        for stage, what in stages:
            if not any(stage in vs[v][key]["profile"] for v in names):
                continue
            cells = [f"{vs[v][key]['profile'].get(stage, 0):.2f}" for v in names]
            out.append(f"| `{stage}` {what} | " + " | ".join(cells) + " |")
    return "\n".join(out) + "\n"


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--variants", default="compressible,incompressible")
    ap.add_argument("--repeat", type=int, default=1,
                    help="rounds of the compared commands (dump, hand pipeline, run; pg_restore, restore), "
                         "interleaved; medians and paired ratios are reported")
    ap.add_argument("--run-args", default="", help="extra flags for every `palisade backup run`")
    ap.add_argument("--mt-threads", type=int, default=0,
                    help="zstd workers of the --compression-threads row (the default run uses 2 on 2+ cores)")
    ap.add_argument("--skip", default="", help="comma list of once-only rows to leave out: "
                    "pg_dump_Fc, palisade_run_mt, palisade_run_dir, pgbackrest, jobs, restore (every restore row)")
    ap.add_argument("--palisade", default=os.path.join(TARGET, "release/palisade"))
    ap.add_argument("--s3-server", default=os.path.join(TARGET, "release/examples/backup_s3_server"))
    ap.add_argument("--no-pgbackrest", action="store_true", help="skip the pgBackRest context rows")
    ap.add_argument("--json", help="write results here")
    ap.add_argument("--markdown", help="write the tables of docs/BACKUP.md's Measured section here")
    ap.add_argument("--render", help="only render --markdown from this earlier --json")
    args = ap.parse_args()
    args.skip = set(filter(None, args.skip.split(",")))
    if args.render:
        with open(args.render) as f:
            text = markdown(json.load(f))
        if args.markdown:
            with open(args.markdown, "w") as f:
                f.write(text)
        else:
            print(text)
        return
    for tool in (args.palisade, args.s3_server, shutil.which("zstd")):
        if not tool or not os.path.exists(tool):
            sys.exit(f"missing {tool}: build with `cargo build --release --bin palisade --example backup_s3_server` and install zstd")
    pgbackrest, why_not = pgbackrest_binary(not args.no_pgbackrest)
    if why_not:
        print(f"pgBackRest rows {why_not}", flush=True)

    tmp = tempfile.mkdtemp(prefix="palisade-bench-", dir=os.environ.get("BENCH_TMP"))
    os.chmod(tmp, 0o755)
    pg = Pg(tmp)
    s3_root = os.path.join(tmp, "s3")
    os.makedirs(os.path.join(s3_root, "bench"))
    s3 = subprocess.Popen([args.s3_server, s3_root], stdout=subprocess.PIPE,
                          env=dict(os.environ, S3_ACCESS_KEY="bench", S3_SECRET_KEY="bench-secret"))
    endpoint = s3.stdout.readline().decode().strip().split()[-1]
    key_file = os.path.join(tmp, "key")
    with open(key_file, "wb") as f:
        f.write(os.urandom(32))
    penv = dict(pg.env, AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret",
                AWS_REGION="us-east-1", PALISADE_PG_BIN=PG_BIN)
    conn = ["--host", "127.0.0.1", "--port", str(pg.port), "--user", "postgres",
            "--sslmode", "disable", "--key-file", key_file, "--output", "json", "--quiet", "--profile"]
    s3_args = ["--s3-bucket", "bench", "--s3-endpoint", endpoint, "--s3-force-path-style"] + conn
    dir_store = os.path.join(tmp, "snapshots")
    results = {"sizeGb": args.size_gb, "repeat": args.repeat, "mtThreads": args.mt_threads, "cores": os.cpu_count(), "pgbackrest": why_not or "measured",
               "load": os.getloadavg(), "variants": {}}

    def palisade(label, argv):
        x, out = run_measured(label, [args.palisade, "backup"] + argv, env=penv)
        res = json.loads(out.decode().strip().splitlines()[-1])
        return dict(x, profile=res.get("profile", {}), **({"bytes": res["bytes"]} if "rawBytes" in res else {})), res

    try:
        for variant in args.variants.split(","):
            print(f"== {variant} (~{args.size_gb} GB, {args.repeat} round(s))", flush=True)
            db, dbsize = generate(pg, variant, args.size_gb)
            r = {"databaseBytes": dbsize}
            samples = {}  # key -> one measurement per round

            def keep(key, x):
                samples.setdefault(key, []).append(x)

            f_default = os.path.join(tmp, f"{db}.default.dump")
            f_z0 = os.path.join(tmp, f"{db}.z0.dump")
            f_zstd = os.path.join(tmp, f"{db}.z0.dump.zst")
            run = ["run", "--database", db, "--compression-level", "1"] + args.run_args.split()
            subprocess.call(["sync"])

            def dump_null():
                x, _ = run_measured("pg_dump -Z0 > /dev/null", f"{PG_BIN}/pg_dump -Fc -Z0 {db} > /dev/null",
                                    env=pg.env, shell=True)
                keep("pg_dump_Z0_null", x)

            def hand_pipeline():
                x, _ = run_measured("pg_dump -Z0 | zstd -1",
                                    f"{PG_BIN}/pg_dump -Fc -Z0 {db} | zstd -1 -q -f -o {f_zstd}",
                                    env=pg.env, shell=True)
                keep("pg_dump_Z0_zstd1", dict(x, bytes=os.path.getsize(f_zstd)))

            snapshots = []

            def engine_run():
                prefix = f"{db}-{len(snapshots)}"
                x, res = palisade("palisade backup run", run + ["--s3-prefix", prefix] + s3_args)
                keep("palisade_run", x)
                # Keep only the newest snapshot (the one restored below): disk, not time.
                for old, _ in snapshots:
                    shutil.rmtree(os.path.join(s3_root, "bench", old), ignore_errors=True)
                snapshots.append((prefix, res["id"]))

            # The commands the targets compare, interleaved round by round and in reversed
            # order every other round, so a change of load hits both sides of a ratio.
            trio = [dump_null, hand_pipeline, engine_run]
            for i in range(args.repeat):
                for step in (trio if i % 2 == 0 else trio[::-1]):
                    step()
            if "pg_dump_Fc" not in args.skip:
                x, _ = run_measured("pg_dump -Fc", [f"{PG_BIN}/pg_dump", "-Fc", "-f", f_default, db], env=pg.env)
                keep("pg_dump_Fc", dict(x, bytes=os.path.getsize(f_default)))
                os.remove(f_default)
            if "palisade_run_mt" not in args.skip:
                x, _ = palisade("palisade backup run -T",
                                run + ["--compression-threads", str(args.mt_threads), "--s3-prefix", f"{db}-mt"]
                                + s3_args)
                keep("palisade_run_mt", x)
                shutil.rmtree(os.path.join(s3_root, "bench", f"{db}-mt"), ignore_errors=True)
            if "palisade_run_dir" not in args.skip:
                x, _ = palisade("palisade backup run --dir", run + ["--dir", dir_store] + conn)
                keep("palisade_run_dir", x)
                shutil.rmtree(dir_store, ignore_errors=True)
            if pgbackrest and "pgbackrest" not in args.skip:
                for k, x in pgbackrest_rows(pg, tmp, pgbackrest, variant).items():
                    keep(k, x)
            # Restore baselines: pg_restore of a local uncompressed custom-format file.
            subprocess.check_call(f"zstd -d -q -f {f_zstd} -o {f_z0}", shell=True)
            os.remove(f_zstd)
            prefix, snapshot = snapshots[-1]
            restore = ["restore", "--database", db, "--s3-prefix", prefix, "--snapshot", snapshot,
                       "--target-database", f"{db}_r2", "--create"] + s3_args

            def pg_restore(key, extra):
                pg.psql("postgres", f"CREATE DATABASE {db}_r1")
                x, _ = run_measured(key, [f"{PG_BIN}/pg_restore", "-d", f"{db}_r1"] + extra + [f_z0], env=pg.env)
                keep(key, x)
                pg.psql("postgres", f"DROP DATABASE {db}_r1")

            def engine_restore(key, extra):
                x, _ = palisade(key, restore + extra)
                keep(key, x)
                pg.psql("postgres", f"DROP DATABASE {db}_r2")

            pair = [lambda: pg_restore("pg_restore_file", []), lambda: engine_restore("palisade_restore", [])]
            for i in range(0 if "restore" in args.skip else args.repeat):
                for step in (pair if i % 2 == 0 else pair[::-1]):
                    step()
            if not {"jobs", "restore"} & args.skip:
                pg_restore("pg_restore_j2", ["-j", "2"])
                engine_restore("palisade_restore_j2", ["--jobs", "2", "--scratch-dir", tmp])
            os.remove(f_z0)
            pg.psql("postgres", f"DROP DATABASE {db}")
            shutil.rmtree(os.path.join(s3_root, "bench", prefix), ignore_errors=True)
            for key, xs in samples.items():
                # Median wall time; peak RSS is the largest of any round.
                r[key] = dict(median_of(xs), samples=[x["seconds"] for x in xs],
                              rssMiB=max(x["rssMiB"] for x in xs))
            r["ratioSamples"] = {k: paired_ratios(samples, a, b, what) for k, a, b, what, _, _ in ratio_rows(variant)
                                 if a in samples and b in samples}
            r["ratios"] = {k: statistics.median(xs) for k, xs in r["ratioSamples"].items()}
            results["variants"][variant] = r
            print(f"  {'command':<22} {'time s':>8} {'cpu s':>7} {'machine':>8} {'output MiB':>11} {'peak RSS MiB':>13}")
            for k, _ in ROWS:
                if k not in r:
                    continue
                v = r[k]
                size = f"{v['bytes'] / 2**20:.1f}" if "bytes" in v else "-"
                print(f"  {k:<22} {v['seconds']:>8.2f} {v['cpuSeconds']:>7.2f} {v['machineCpuSeconds']:>8.2f} "
                      f"{size:>11} {v['rssMiB']:>13.1f}")
            for k, _, _, _, label, target in ratio_rows(variant):
                if k not in r["ratios"]:
                    continue
                mark = "" if target is None else (" ok" if r["ratios"][k] <= target else f" MISS (target {target})")
                spread = " ".join(f"{x:.3f}" for x in r["ratioSamples"][k])
                print(f"  ratio {k:<34} {r['ratios'][k]:.3f}{mark}  [{spread}]")
            for k in ("palisade_run", "palisade_run_mt", "palisade_restore", "palisade_restore_j2"):
                if k in r:
                    print(f"  profile {k}: " + ", ".join(f"{n} {x:.2f}" for n, x in sorted(r[k]["profile"].items())))
            results["loadEnd"] = os.getloadavg()
            if args.json:  # after each variant, so a late failure keeps what was measured
                with open(args.json, "w") as f:
                    json.dump(results, f, indent=2)
            sys.stdout.flush()
    finally:
        s3.kill()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    print(markdown(results))
    if args.markdown:
        with open(args.markdown, "w") as f:
            f.write(markdown(results))


if __name__ == "__main__":
    main()
