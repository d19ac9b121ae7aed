#!/usr/bin/env python
"""Does restore time stay flat as history grows?  Hours of 100 txn/s history, simulated in minutes.

    python benchmarks/history_growth.py                      # 10 h at 100 txn/s, 3 runs (~9 min, 2 cores)
    python benchmarks/history_growth.py --hours 2 --runs 3   # quicker
    python benchmarks/history_growth.py --compaction         # + 1 h back after engine/compaction

History is written straight into a local replica with the format encoders (tests/synth_history.py):
one segment per simulated second holding ``--rate`` transactions, each an in-place UPDATE of 1-3
pages (mean 1.8) of a real SQLite database (4 KiB pages, ``--pages`` initially, JSON-ish text rows
plus an index; a real INSERT of 20 rows every simulated minute grows it slowly), every record with
its correct database checksum, so every restore below is verified (checksum + quick_check).  The
maintenance scheduler (engine/maintenance/scheduler.py) runs on the simulated clock as history grows, with
its default policy (snapshot after 24 h or when the segments since the newest snapshot exceed 4x
its size, compressed) and retention (engine/maintenance/retention.prune, ``--keep-hours`` exact window, no
tiers) so the disk stays bounded; bytes written are counted before anything is pruned.

Measured at the 1-hour mark and at the end (medians of ``--runs``): restore latest (one sample,
and averaged over ``--points`` targets spread across the last ``--cycle-minutes``, because restore
cost is a sawtooth over the snapshot cycle, see ``restore_cycle``), restore to 1 h before latest
(averaged the same way), and at the 1 h mark a latest restore planned from the base snapshot only
(what restores would cost without periodic snapshots).  Restores read a local replica whose files
were just written (page cache warm), so times are CPU (decompress, apply, checksum, quick_check),
not network; per-object request latency (what compaction saves on S3) does not show here.
Peak disk is about 2 GB (retention keeps ``--keep-hours`` + 30 min grace of history).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import sys
import time

from _common import (  # (importing _common also puts tests/ on sys.path)
    fmt,
    log,
    med,
    table,
    workdir,
)
from synth_history import SyntheticHistory
from walrewind.engine.maintenance.scheduler import (
    DAY_US,
    HOUR_US,
    SECOND_US,
    Maintenance,
    MaintenancePolicy,
)
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import plan_restore, restore
from walrewind.engine.storage import open_storage


def restore_point(storage, out_dir: str, runs: int, expect: int | None, target_us: int | None) -> dict:
    """Median wall time of ``runs`` restores of one point (and what the plan reads)."""
    replica = Replica(storage)
    plan = plan_restore(replica, target_us=target_us)
    read_bytes = replica.sizes[plan.snapshot.key] + sum(replica.sizes[s.key] for s in plan.segments)
    times = []
    for n in range(runs):
        out = os.path.join(out_dir, f"r{n}.db")
        t0 = time.monotonic()
        res = restore(storage, out, target_us=target_us, replica=replica)
        times.append(time.monotonic() - t0)
        if expect is not None and res.checksum != expect:
            raise SystemExit(f"restore returned checksum {res.checksum:016x}, expected {expect:016x}")
        os.unlink(out)
    return {
        "s": med(times), "runs": times, "segments": len(plan.segments), "read_mb": read_bytes / 1e6,
        "snapshot_age_s": ((target_us or plan.generation.last_commit_us) - plan.snapshot.ts_us) / SECOND_US,
    }


def restore_base_only(storage, out_dir: str, expect: int) -> dict:
    """What restore latest would cost without periodic snapshots: plan from the generation's first
    snapshot only (one run: it is context, and it is slow)."""
    replica = Replica(storage)
    gen = replica.generations[-1]
    gen.snapshots = gen.snapshots[:1]
    plan = plan_restore(replica)
    out = os.path.join(out_dir, "base.db")
    t0 = time.monotonic()
    res = restore(storage, out, replica=replica)
    took = time.monotonic() - t0
    os.unlink(out)
    if res.checksum != expect:
        raise SystemExit(f"base-only restore returned checksum {res.checksum:016x}, expected {expect:016x}")
    return {"s": took, "segments": len(plan.segments), "snapshot_age_s": (gen.last_commit_us - plan.snapshot.ts_us) / SECOND_US,
            "read_mb": (replica.sizes[plan.snapshot.key] + sum(replica.sizes[x.key] for x in plan.segments)) / 1e6}


def restore_cycle(storage, out_dir: str, runs: int, end_us: int, points: int, span_us: int) -> dict:
    """Restore time averaged over the snapshot cycle.

    Restore cost is a sawtooth: it grows with the segments since the newest snapshot and drops when
    the scheduler takes the next one.  A single "latest" sample therefore mostly measures where in
    the cycle it landed.  Restoring ``points`` targets spread over the ``span_us`` before ``end_us``
    (at least one cycle) is what "restore latest at a random moment" costs; a target with snapshot
    age *a* reads exactly what a latest restore did when the newest snapshot was *a* old.
    """
    samples = [restore_point(storage, out_dir, runs, None, end_us - span_us * k // (points - 1)) for k in range(points)]
    return {
        "s": sum(p["s"] for p in samples) / len(samples),  # mean over the cycle of per-target medians
        "max_s": max(p["s"] for p in samples),
        "segments": sum(p["segments"] for p in samples) / len(samples),
        "read_mb": sum(p["read_mb"] for p in samples) / len(samples),
        "snapshot_age_s": sum(p["snapshot_age_s"] for p in samples) / len(samples),
        "samples": samples,
    }


def du(path: str) -> int:
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, files in os.walk(path) for f in files)


def run(args) -> dict:
    base = workdir("history")
    try:
        return _run(args, base)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _run(args, base: str) -> dict:
    storage = open_storage(os.path.join(base, "replica"))
    seconds = int(args.hours * 3600)
    real_now = time.time_ns() // 1000
    start = (real_now - seconds * SECOND_US - DAY_US) // SECOND_US * SECOND_US  # all history in the past
    t0 = time.monotonic()
    h = SyntheticHistory(storage, start, pages=args.pages, page_size=4096, seed=args.seed, rate=args.rate,
                         grow_every_s=60, grow_rows=20, workdir=base, durable=False)
    log(f"initial database: {h.db_pages} pages ({h.db_pages * 4096 / 1e6:.1f} MB), "
        f"snapshot {h.snapshot_bytes / 1e6:.1f} MB compressed, in {time.monotonic() - t0:.1f} s")
    keep_us = int(args.keep_hours * HOUR_US)
    prune = None
    if args.keep_hours > 0:
        from walrewind.engine.maintenance import retention

        policy = retention.RetentionPolicy(keep_us, keep_daily=0, keep_weekly=0, keep_monthly=0,
                                           grace_us=30 * 60 * SECOND_US)
        prune = lambda now: retention.prune(storage, policy, now)  # noqa: E731
    clock_now = [h.ts_us]
    m = Maintenance(storage, MaintenancePolicy.for_retention(keep_us if prune else None),
                    prune=prune, clock=lambda: clock_now[0], workdir=base)
    snapshot_bytes = h.snapshot_bytes  # written, including the initial one
    snapshot_times: list[int] = []
    prune_deleted = 0
    peak = 0
    points: dict[str, dict] = {}
    marks = sorted({min(3600, seconds), seconds})
    gen_started = time.monotonic()
    maint_s = 0.0
    for sec in range(1, seconds + 1):
        h.second()
        clock_now[0] = h.ts_us
        t = time.monotonic()
        for res in m.run_due(h.ts_us):
            if res.result not in ("ok", "PASSED"):
                raise SystemExit(f"maintenance {res.task} failed: {res.detail}")
            if res.task == "snapshot" and res.detail["created"]:
                snapshot_bytes += os.path.getsize(storage.local_path(res.detail["key"]))
                snapshot_times.append(h.ts_us)
            if res.task == "retention":
                prune_deleted += res.detail.get("bytes_deleted", 0)
        maint_s += time.monotonic() - t
        if sec % 600 == 0:
            peak = max(peak, du(storage.root))
            log(f"{sec / 3600:.2f} h simulated: {len(snapshot_times)} snapshots, replica {du(storage.root) / 1e9:.2f} GB, "
                f"{time.monotonic() - gen_started:.0f} s elapsed (maintenance {maint_s:.0f} s)")
        if sec in marks:
            label = f"{sec / 3600:g}h"
            out_dir = os.path.join(base, "out")
            os.makedirs(out_dir, exist_ok=True)
            log(f"measuring at {label}")
            span = max(int(args.cycle_minutes * 60 * SECOND_US), 2 * SECOND_US)
            point = {
                "latest": restore_point(storage, out_dir, args.runs, h.checksum, None),
                "cycle": restore_cycle(storage, out_dir, args.runs, h.ts_us, args.points, span),
            }
            if sec == marks[0] and not args.no_baseline:
                point["no_periodic_snapshots"] = restore_base_only(storage, out_dir, h.checksum)
            if sec >= 3600 + span // SECOND_US:
                point["1h_back"] = restore_cycle(storage, out_dir, args.runs, h.ts_us - HOUR_US, args.points, span)
            point["db_mb"] = h.db_pages * 4096 / 1e6
            points[label] = point
    elapsed = time.monotonic() - gen_started
    peak = max(peak, du(storage.root))
    if args.compaction and "1h_back" in points[f"{seconds / 3600:g}h"]:
        if importlib.util.find_spec("walrewind.engine.maintenance.compaction") is None:
            log("engine/maintenance/compaction.py is not there; --compaction skipped")
        else:
            from walrewind.engine.maintenance import compaction

            t = time.monotonic()
            rep = compaction.compact(storage, now_us=h.ts_us, workdir=base)
            log(f"compaction: {len(rep.merged)} merged segments in {time.monotonic() - t:.1f} s")
            out_dir = os.path.join(base, "out")
            points[f"{seconds / 3600:g}h"]["1h_back_compacted"] = restore_cycle(
                storage, out_dir, args.runs, h.ts_us - HOUR_US, args.points, span)
    txns = seconds * args.rate
    per_day = DAY_US / (seconds * SECOND_US)
    gaps = [b - a for a, b in zip([start] + snapshot_times, snapshot_times)]
    return {
        "config": vars(args),
        "points": points,
        "simulate_s": elapsed,
        "maintenance_s": maint_s,
        "snapshots": len(snapshot_times),
        "snapshot_gap_s": med(gaps) / SECOND_US if gaps else None,
        "segment_bytes": h.segment_bytes,
        "snapshot_bytes": snapshot_bytes,
        "bytes_per_txn": h.segment_bytes / txns,
        "segments_per_day_gb": h.segment_bytes * per_day / 1e9,
        "snapshots_per_day_gb": snapshot_bytes * per_day / 1e9,
        "pruned_gb": prune_deleted / 1e9,
        "peak_disk_gb": peak / 1e9,
        "final_db_mb": h.db_pages * 4096 / 1e6,
        "maintenance_status": m.status(),
    }


def report(res: dict) -> None:
    pts = res["points"]
    cfg = res["config"]
    labels = list(pts)
    first, last = pts[labels[0]], pts[labels[-1]]
    print(f"\nhistory growth: {cfg['hours']:g} h at {cfg['rate']} txn/s simulated in {res['simulate_s']:.0f} s "
          f"(maintenance {res['maintenance_s']:.0f} s); medians of {cfg['runs']} restores")
    rows = []
    names = {"latest": "latest (one sample)", "cycle": "latest, mean over cycle", "1h_back": "1 h back, mean over cycle",
             "1h_back_compacted": "1 h back, compacted", "no_periodic_snapshots": "latest, base snapshot only (1 run)"}
    for label in labels:
        p = pts[label]
        for kind in ("latest", "cycle", "1h_back", "1h_back_compacted", "no_periodic_snapshots"):
            if kind in p:
                r = p[kind]
                rows.append([f"after {label}: {names[kind]}", fmt(r["s"], 2), fmt(r.get("max_s"), 2), fmt(r["segments"], 0),
                             r["read_mb"], fmt(r["snapshot_age_s"], 0)])
    print(table(["restore", "seconds", "worst (s)", "segments", "MB read", "snapshot age (s)"], rows))
    print()
    summary = [
        ["restore latest, end vs 1 h mark (cycle means)", f"{(last['cycle']['s'] / first['cycle']['s'] - 1) * 100:+.0f} %",
         "must differ < 20 %"],
        ["  same, single samples at the marks", f"{(last['latest']['s'] / first['latest']['s'] - 1) * 100:+.0f} %",
         "phase-dependent"],
    ]
    if "1h_back" in last:
        summary.append(["restore 1 h back vs latest (end, cycle means)", f"{last['1h_back']['s'] / last['cycle']['s']:.2f}x",
                        "must be <= 2x"])
    if "1h_back_compacted" in last:
        summary.append(["  after compaction", f"{last['1h_back_compacted']['s'] / last['cycle']['s']:.2f}x", ""])
    summary += [
        ["snapshots taken by the scheduler", str(res["snapshots"]), f"median every {fmt(res['snapshot_gap_s'], 0)} s"],
        ["database size (MB), end", fmt(res["final_db_mb"]), ""],
        ["segment bytes per transaction (compressed)", fmt(res["bytes_per_txn"], 0), "raw ~7.4 KB: 1.8 x 4 KiB pages"],
        ["storage per retained day: segments (GB)", fmt(res["segments_per_day_gb"], 2), ""],
        ["storage per retained day: snapshots (GB)", fmt(res["snapshots_per_day_gb"], 2), ""],
        ["storage per retained day: total (GB)", fmt(res["segments_per_day_gb"] + res["snapshots_per_day_gb"], 2), ""],
        ["peak replica disk during the run (GB)", fmt(res["peak_disk_gb"], 2), f"retention pruned {fmt(res['pruned_gb'], 2)} GB"],
    ]
    print(table(["number", "value", "note"], summary))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--hours", type=float, default=10.0, help="simulated history (measured at 1 h and at the end)")
    ap.add_argument("--rate", type=int, default=100, help="transactions per simulated second")
    ap.add_argument("--runs", type=int, default=3, help="restores per measured point (median)")
    ap.add_argument("--pages", type=int, default=8192, help="initial database size in 4 KiB pages (8192 = 32 MB)")
    ap.add_argument("--keep-hours", type=float, default=1.5, help="retention (exact window) during the run; 0 = keep all")
    ap.add_argument("--points", type=int, default=8, help="targets per snapshot-cycle average")
    ap.add_argument("--cycle-minutes", type=float, default=6.0, help="span the cycle average covers (>= one snapshot cycle)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--compaction", action="store_true", help="also restore 1 h back after engine/compaction")
    ap.add_argument("--no-baseline", action="store_true", help="skip the base-snapshot-only restore at the 1 h mark")
    ap.add_argument("--json", help="write the raw numbers here")
    args = ap.parse_args()
    res = run(args)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=1, default=str)
    report(res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
