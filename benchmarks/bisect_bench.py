#!/usr/bin/env python
"""`walrewind bisect` against the same binary search done with one full restore per probe.

    python benchmarks/bisect_bench.py              # 30 MiB database, 10,000 transactions, 3 runs: ~3 min
    python benchmarks/bisect_bench.py --quick      # 4 MiB, 2,000 transactions, 1 run: ~15 s

The history is synthetic (tests/synth_history.py, seeded): one snapshot of a real database of
``--pages`` 4 KiB pages (JSON-ish rows in a b-tree with an index), then ``--txns`` transactions in
segments of ``--per-segment`` (one per second at 100 txn/s, what the daemon uploads by default),
each rewriting 1-3 leaf pages; transaction k writes the counter value k into a row.  The query,
``max(counter) >= K``, a full scan as a real "when did the total change" query is, turns true at
txid K, a seeded random transaction per run.

Both sides answer the same question with the same ``ceil(log2(n + 1))`` probes and the same query
per probe; they differ in how a probe's state is made:

* **bisect**: ``engine.restore.bisect`` (one verified restore, then a working copy moved forward
  and back by checksum-verified transactions; each segment read once);
* **restores**: ``restore(target_txid=mid)`` into a new file per probe (snapshot + segments,
  checksum, quick_check), as a user would script it with ``walrewind restore --txid``.

Each side runs on the local replica and again through a wrapper adding ``--latency-ms`` to every
object read (a stand-in for S3's per-request latency).  Wall and CPU seconds of the process (all
threads, getrusage), medians of ``--runs``.  Progress on stderr, the table on stdout.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import resource
import shutil
import sys
import time

from _common import fmt, log, med, table, workdir
from synth_history import build_history  # tests/ is on sys.path via _common
from walrewind.engine.restore.bisect import bisect, max_probes
from walrewind.engine.restore.probequery import run_query
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage
from walrewind.engine.storage.local import LocalStorage

QUERY = "SELECT max(CAST(substr(body, instr(body, 'v=') + 2, 8) AS INTEGER)) >= {k} FROM orders"


class SlowStorage(LocalStorage):
    """A local replica whose every read waits ``latency`` seconds first (like an S3 GET)."""

    def __init__(self, root: str, latency: float) -> None:
        super().__init__(root, create=False)
        self.latency = latency

    def get(self, key: str) -> bytes:
        time.sleep(self.latency)
        return super().get(key)

    def get_range(self, key: str, start: int, length: int) -> bytes:
        time.sleep(self.latency)
        return super().get_range(key, start, length)

    def local_path(self, key: str) -> str | None:
        time.sleep(self.latency)
        return super().local_path(key)


def cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def with_bisect(storage, k: int, scratch: str) -> dict:
    outcome = bisect(storage, QUERY.format(k=k), work_dir=scratch)
    assert outcome.txid == k, f"bisect named {outcome.txid}, expected {k}"
    return {"probes": len(outcome.probes), "restore_s": outcome.restore_seconds, "query_s": outcome.query_seconds,
            "records_applied": sum(p.records_applied for p in outcome.probes)}


def with_restores(storage, k: int, since: int, until: int, scratch: str) -> dict:
    """The same binary search, each probe a full restore to the probed txid."""
    out = os.path.join(scratch, "probe.db")
    restore(storage, out, target_txid=since)
    mark = time.monotonic()
    before = run_query(out, QUERY.format(k=k))
    query_s = time.monotonic() - mark
    os.unlink(out)
    lo, hi, probes, found = since, until + 1, 0, None
    while hi - lo > 1:
        mid = (lo + hi) // 2
        restore(storage, out, target_txid=mid)
        probes += 1
        mark = time.monotonic()
        same = run_query(out, QUERY.format(k=k)).same_as(before)
        query_s += time.monotonic() - mark
        if same:
            lo = mid
        else:
            hi = found = mid
        os.unlink(out)
    assert found == k, f"restores named {found}, expected {k}"
    return {"probes": probes, "query_s": query_s}


def measure(fn, *args) -> dict:
    wall, used = time.monotonic(), cpu()
    extra = fn(*args)
    return {"wall_s": time.monotonic() - wall, "cpu_s": cpu() - used, **extra}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pages", type=int, default=7680, help="database size in 4 KiB pages (7680 = 30 MiB)")
    ap.add_argument("--txns", type=int, default=10_000, help="transactions after the snapshot")
    ap.add_argument("--per-segment", type=int, default=100)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--latency-ms", type=float, default=20.0, help="per-read latency of the slow variant (0: skip it)")
    ap.add_argument("--quick", action="store_true", help="4 MiB, 2,000 transactions, 1 run")
    ap.add_argument("--json", help="write the raw numbers here")
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    if args.quick:
        args.pages, args.txns, args.runs = 1024, 2000, 1
    base = workdir("bisect")
    try:
        replica = os.path.join(base, "replica")
        log(f"building {args.txns} transactions on a {args.pages * 4096 / 2**20:.0f} MiB database ...")
        t0 = time.monotonic()
        hist = build_history(replica, seconds=args.txns // args.per_segment, txn_per_segment=args.per_segment,
                             seed=args.seed, pages=args.pages)
        since, until = hist.snapshot_txid, hist.points[-1][0]
        log(f"  built in {time.monotonic() - t0:.0f}s: txids {since}..{until}, {hist.segments} segments")
        rng = random.Random(args.seed)
        targets = [rng.randrange(since + 1, until + 1) for _ in range(args.runs)]
        variants = [("local", 0.0)] + ([(f"+{args.latency_ms:g} ms/read", args.latency_ms / 1000)]
                                       if args.latency_ms else [])
        raw: dict = {"pages": args.pages, "txns": until - since, "targets": targets, "runs": {}}
        rows = []
        for name, latency in variants:
            results: dict[str, list[dict]] = {"bisect": [], "restores": []}
            for n, k in enumerate(targets):
                order = ["bisect", "restores"] if n % 2 == 0 else ["restores", "bisect"]  # alternate who goes first
                for side in order:
                    storage = SlowStorage(replica, latency) if latency else open_storage(replica, create=False)
                    scratch = workdir("bisect-probe")
                    try:
                        if side == "bisect":
                            r = measure(with_bisect, storage, k, scratch)
                        else:
                            r = measure(with_restores, storage, k, since, until, scratch)
                    finally:
                        shutil.rmtree(scratch, ignore_errors=True)
                    log(f"{name} {side} K={k}: {r['wall_s']:.2f}s wall, {r['cpu_s']:.2f}s CPU, {r['probes']} probes")
                    results[side].append(r)
            raw["runs"][name] = results
            b, f = results["bisect"], results["restores"]
            bw, bc, fw, fc = (med([r[m] for r in rs]) for rs, m in ((b, "wall_s"), (b, "cpu_s"), (f, "wall_s"), (f, "cpu_s")))
            bq, fq = med([r["wall_s"] - r["query_s"] for r in b]), med([r["wall_s"] - r["query_s"] for r in f])
            rows.append([name, fmt(med([r["probes"] for r in b]), 0), fmt(bw, 2), fmt(bc, 2), fmt(fw, 2), fmt(fc, 2),
                         fmt(fw / bw, 1), fmt(fc / bc, 1), fmt(med([r["query_s"] for r in b]), 2), fmt(bq, 2),
                         fmt(fq, 2), fmt(fq / bq, 1)])
        print(f"bisect over {until - since} transactions on a {args.pages * 4096 / 2**20:.0f} MiB database "
              f"({hist.segments} segments, at most {max_probes(until - since)} probes), median of {args.runs} run(s):")
        print(table(["replica", "probes", "bisect wall s", "bisect CPU s", "restores wall s", "restores CPU s",
                     "wall x", "CPU x", "queries s", "bisect w/o queries s", "restores w/o queries s", "x"], rows))
        print("queries s: the query's own time (the same on both sides); 'w/o queries': wall time minus it")
        if args.json:
            with open(args.json, "w") as f:
                json.dump(raw, f, indent=2)
    finally:
        shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
