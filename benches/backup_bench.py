#!/usr/bin/env python3
"""Snapshot engine benchmark (`make bench`).

Starts a throwaway PostgreSQL 15 and a local S3 server (s3s-fs, separate process),
generates a compressible (pgbench) and an incompressible (random md5 text) database of
about --size-gb each, and measures in the same run:

  backup:  palisade backup run (zstd -1, AES-256-GCM, S3 multipart upload)
           pg_dump -Fc                      (PostgreSQL's default, gzip level 6)
           pg_dump -Fc -Z0 | zstd -1 > file
  restore: palisade backup restore from S3
           pg_restore of the local pg_dump -Fc -Z0 file

printing wall time, output size and peak RSS (wait4 ru_maxrss: the largest process of
the command's tree, so for palisade it is max(palisade, pg_dump/pg_restore)), and the
ratios the targets are stated in. Run as root (PostgreSQL runs via runuser) or as a
normal user.
"""

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

PG_BIN = os.environ.get("PALISADE_PG_BIN", "/usr/lib/postgresql/15/bin")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


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


def run_measured(label, cmd, env=None, shell=False):
    """Run, returning (wall seconds, peak RSS MiB, stdout)."""
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, env=env, shell=shell, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    # Read stdout/stderr fully (both are small), then reap with wait4 for rusage.
    stdout = p.stdout.read()
    stderr = p.stderr.read()
    _, status, ru = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.stderr.write(f"{label} failed ({p.returncode}):\n{stderr.decode(errors='replace')}\n{stdout.decode(errors='replace')}\n")
        sys.exit(1)
    return wall, ru.ru_maxrss / 1024.0, stdout


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
        rows = int(8_000_000 * size_gb)  # ≈ 950 MB per 8 M rows
        pg.psql(db, "CREATE TABLE noise (id bigint PRIMARY KEY, a text, b text)")
        step = 1_000_000
        for lo in range(1, rows + 1, step):
            hi = min(rows, lo + step - 1)
            pg.psql(db, f"INSERT INTO noise SELECT g, md5(random()::text) || md5(random()::text), "
                        f"md5(random()::text) FROM generate_series({lo}, {hi}) g")
        pg.psql(db, "VACUUM ANALYZE noise")
    size = int(pg.psql(db, f"SELECT pg_database_size('{db}')"))
    print(f"  generated {db}: {size / 2**20:.0f} MiB in {time.monotonic() - t0:.0f}s", flush=True)
    return db, size


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--size-gb", type=float, default=1.0)
    ap.add_argument("--variants", default="compressible,incompressible")
    ap.add_argument("--palisade", default=os.path.join(ROOT, "target/release/palisade"))
    ap.add_argument("--s3-server", default=os.path.join(ROOT, "target/release/examples/backup_s3_server"))
    ap.add_argument("--json", help="write results here")
    args = ap.parse_args()
    for tool in (args.palisade, args.s3_server, shutil.which("zstd")):
        if not tool or not os.path.exists(tool):
            sys.exit(f"missing {tool}: build with `cargo build --release --bin palisade --example backup_s3_server` and install zstd")

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
    common = ["--s3-bucket", "bench", "--s3-endpoint", endpoint, "--s3-force-path-style",
              "--host", "127.0.0.1", "--port", str(pg.port), "--user", "postgres",
              "--sslmode", "disable", "--key-file", key_file, "--output", "json"]
    results = {}
    try:
        for variant in args.variants.split(","):
            print(f"== {variant} (~{args.size_gb} GB)", flush=True)
            db, dbsize = generate(pg, variant, args.size_gb)
            r = {"databaseBytes": dbsize}
            f_default = os.path.join(tmp, f"{db}.default.dump")
            f_z0 = os.path.join(tmp, f"{db}.z0.dump")
            f_zstd = os.path.join(tmp, f"{db}.z0.dump.zst")
            subprocess.call(["sync"])
            t, rss, _ = run_measured("pg_dump -Fc", [f"{PG_BIN}/pg_dump", "-Fc", "-f", f_default, db], env=pg.env)
            r["pg_dump_Fc"] = {"seconds": t, "bytes": os.path.getsize(f_default), "rssMiB": rss}
            t, rss, _ = run_measured("pg_dump -Z0 | zstd -1",
                                     f"{PG_BIN}/pg_dump -Fc -Z0 {db} | zstd -1 -q -o {f_zstd}",
                                     env=pg.env, shell=True)
            r["pg_dump_Z0_zstd1"] = {"seconds": t, "bytes": os.path.getsize(f_zstd), "rssMiB": rss}
            t, rss, out = run_measured("palisade backup run",
                                       [args.palisade, "backup", "run", "--database", db, "--s3-prefix", db,
                                        "--compression-level", "1", "--quiet"] + common, env=penv)
            res = json.loads(out.decode().strip().splitlines()[-1])
            r["palisade_run"] = {"seconds": t, "bytes": res["bytes"], "rssMiB": rss}
            os.remove(f_default)
            # Restore baseline: pg_restore of a local uncompressed custom-format file.
            subprocess.check_call(f"zstd -d -q -f {f_zstd} -o {f_z0}", shell=True)
            os.remove(f_zstd)
            pg.psql("postgres", f"CREATE DATABASE {db}_r1")
            t, rss, _ = run_measured("pg_restore", [f"{PG_BIN}/pg_restore", "-d", f"{db}_r1", f_z0], env=pg.env)
            r["pg_restore_file"] = {"seconds": t, "rssMiB": rss}
            os.remove(f_z0)
            pg.psql("postgres", f"DROP DATABASE {db}_r1")
            t, rss, _ = run_measured("palisade backup restore",
                                     [args.palisade, "backup", "restore", "--database", db, "--s3-prefix", db,
                                      "--target-database", f"{db}_r2", "--create", "--quiet"] + common, env=penv)
            r["palisade_restore"] = {"seconds": t, "rssMiB": rss}
            pg.psql("postgres", f"DROP DATABASE {db}_r2")
            pg.psql("postgres", f"DROP DATABASE {db}")
            shutil.rmtree(os.path.join(s3_root, "bench", db), ignore_errors=True)
            r["ratios"] = {
                "run_vs_zstd_time": r["palisade_run"]["seconds"] / r["pg_dump_Z0_zstd1"]["seconds"],
                "run_vs_pg_dump_Fc_time": r["palisade_run"]["seconds"] / r["pg_dump_Fc"]["seconds"],
                "run_vs_zstd_size": r["palisade_run"]["bytes"] / r["pg_dump_Z0_zstd1"]["bytes"],
                "restore_vs_pg_restore_time": r["palisade_restore"]["seconds"] / r["pg_restore_file"]["seconds"],
            }
            results[variant] = r
            print(f"  {'command':<34} {'time s':>8} {'output MiB':>11} {'peak RSS MiB':>13}")
            for k in ("pg_dump_Fc", "pg_dump_Z0_zstd1", "palisade_run", "pg_restore_file", "palisade_restore"):
                v = r[k]
                size = f"{v['bytes'] / 2**20:.1f}" if "bytes" in v else "-"
                print(f"  {k:<34} {v['seconds']:>8.2f} {size:>11} {v['rssMiB']:>13.1f}")
            for k, v in r["ratios"].items():
                print(f"  ratio {k:<28} {v:.3f}")
            sys.stdout.flush()
    finally:
        s3.kill()
        pg.stop()
        shutil.rmtree(tmp, ignore_errors=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"sizeGb": args.size_gb, "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
