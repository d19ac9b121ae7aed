#!/usr/bin/env python
"""Restore time of a point one hour into the history, before and after compaction.

    python benchmarks/compaction_bench.py                 # 65 min of history at 100 txn/s, 3 runs
    python benchmarks/compaction_bench.py --quick         # 6 min of history (smoke run, ~1 min)

The history is synthetic (tests/synth_history.py build_history, seeded): one snapshot, then one
segment per second of 100 records, each rewriting 1-3 pages of 4 KiB (b-tree leaves of a real
database with JSON-ish rows), i.e.
what the daemon uploads at 100 txn/s with the default 1 s upload interval.  The target is the
last transaction of the first hour (``--minutes`` - 5 min after the snapshot, so 5 minutes of
uncompacted history follow it): the restore replays the whole hour from the snapshot.  Compaction
runs with ``--older-than 5m`` (default span: 1 UTC hour, size caps as shipped).

Each restore runs on a local replica (``file://``), and again through a wrapper that adds
``--latency-ms`` to every object read, a stand-in for an object store's per-request latency
(restores fetch up to 8 segments in parallel).  Medians of ``--runs`` runs.  Progress on stderr,
the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time

from _common import fmt, log, med, table, workdir
from synth_history import build_history  # tests/ is on sys.path via _common
from walrewind.engine.maintenance.compaction import compact
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import plan_restore, restore
from walrewind.engine.storage import open_storage
from walrewind.engine.storage.local import LocalStorage

MINUTE_US = 60_000_000


class SlowStorage(LocalStorage):
    """A local replica whose every read waits ``latency`` seconds first (like an S3 GET)."""

    def __init__(self, root: str, latency: float) -> None:
        super().__init__(root, create=False)
        self.latency = latency

    def get(self, key: str) -> bytes:
        time.sleep(self.latency)
        return super().get(key)

    def local_path(self, key: str) -> str | None:
        time.sleep(self.latency)
        return super().local_path(key)


def timed_restores(replica: str, target_txid: int, expect: int, runs: int, latency: float, scratch: str) -> list[float]:
    times = []
    for n in range(runs):
        storage = SlowStorage(replica, latency) if latency else open_storage(replica, create=False)
        out = os.path.join(scratch, f"r{n}.db")
        started = time.monotonic()
        result = restore(storage, out, target_txid=target_txid)
        times.append(time.monotonic() - started)
        assert result.checksum == expect, "restore did not reproduce the recorded checksum"
        os.unlink(out)
    return times


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=int, default=65, help="history length (the target is 5 min before its end)")
    ap.add_argument("--rate", type=int, default=100, help="transactions per second (one segment per second)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="per-read latency of the slow variant (0: skip it)")
    ap.add_argument("--quick", action="store_true", help="6 minutes of history, 1 run")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--seed", type=int, default=1)
    args = ap.parse_args()
    if args.quick:
        args.minutes, args.runs = 6, 1
    base = workdir("compaction")
    try:
        replica = os.path.join(base, "replica")
        log(f"building {args.minutes} min of history at {args.rate} txn/s ...")
        t0 = time.monotonic()
        hist = build_history(replica, seconds=args.minutes * 60, txn_per_segment=args.rate, seed=args.seed,
                             progress=lambda done, total: log(f"  {done}/{total} s of history written"))
        log(f"  built in {time.monotonic() - t0:.0f}s")
        end_us = hist.points[-1][1]
        target = [p for p in hist.points if p[1] <= end_us - 5 * MINUTE_US][-1]
        listed = Replica(open_storage(replica, create=False))
        plan = plan_restore(listed, target_txid=target[0])
        variants = [("local", 0.0)] + ([(f"+{args.latency_ms:g} ms/read", args.latency_ms / 1000)] if args.latency_ms else [])
        rows: list[list] = []
        raw: dict = {"minutes": args.minutes, "rate": args.rate, "target_txid": target[0], "runs": {}}
        before_objects = len(plan.segments)
        before_bytes = sum(listed.sizes.get(s.key, 0) for s in plan.segments)
        results: dict[tuple[str, str], list[float]] = {}
        for name, latency in variants:
            log(f"before compaction, {name}: restoring txid {target[0]} ({before_objects} segments) x{args.runs}")
            results[("before", name)] = timed_restores(replica, target[0], target[2], args.runs, latency, base)
        log("compacting (older than 5 min) ...")
        t0 = time.monotonic()
        report = compact(open_storage(replica, create=False), now_us=end_us + 1, compact_after_us=5 * MINUTE_US)
        compact_s = time.monotonic() - t0
        log(f"  {sum(len(s) for _k, s in report.merged)} -> {len(report.merged)} segments, "
            f"{report.bytes_before / 2**20:.0f} -> {report.bytes_after / 2**20:.0f} MiB in {compact_s:.0f}s")
        listed = Replica(open_storage(replica, create=False))
        plan = plan_restore(listed, target_txid=target[0])
        after_objects = len(plan.segments)
        after_bytes = sum(listed.sizes.get(s.key, 0) for s in plan.segments)
        for name, latency in variants:
            log(f"after compaction, {name}: restoring txid {target[0]} ({after_objects} segments) x{args.runs}")
            results[("after", name)] = timed_restores(replica, target[0], target[2], args.runs, latency, base)
        for name, _latency in variants:
            b, a = med(results[("before", name)]), med(results[("after", name)])
            rows.append([name, f"{before_objects} / {before_bytes / 2**20:.0f} MiB", fmt(b, 2),
                         f"{after_objects} / {after_bytes / 2**20:.0f} MiB", fmt(a, 2), fmt(b / a if a else None, 1)])
        raw["runs"] = {f"{k[0]} {k[1]}": v for k, v in results.items()}
        raw["compaction"] = dict(report.to_json(), seconds=compact_s)
        raw["compaction"].pop("merged")
        print(f"Restore of txid {target[0]} ({(target[1] - hist.snapshot_ts_us) / MINUTE_US:.0f} min of history "
              f"after the snapshot, {args.rate} txn/s, "
              f"{hist.segments} segments written), median of {args.runs} run(s), seconds:")
        print(table(["storage", "before: objects / size", "before s", "after: objects / size", "after s", "speed-up"], rows))
        print(f"Compaction: {sum(len(s) for _k, s in report.merged)} segments -> {len(report.merged)}, "
              f"{report.bytes_before / 2**20:.0f} MiB -> {report.bytes_after / 2**20:.0f} MiB, {compact_s:.1f}s")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(raw, f, indent=2)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
