"""Rows with big data: burst, start (on a ~300 MB database), restore (see README: compare.py)."""

from __future__ import annotations

import os
import shutil
import statistics
import time

from _common import WalSampler, create_db, log, read_log, start_writer
from _oracle import InsertOnly
from _rows_steady import ZERO
from _run import Ctx, Session, build_db, last_logged_index, steady_writer, wait_writer
from _s3 import now_us


def burst_writer(ctx: Ctx, db: str, logp: str, seed: int) -> dict:
    return {"db": db, "log": logp, "seed": seed, "rate": 0, "txns": ctx.args.burst_txns, "big_every": 1,
            "big_rows": 5, "row_bytes": 1000}


def burst(ctx: Ctx, tool: str, run: int) -> dict:
    """60k transactions of 5 x 1 KB inserts as fast as the app can (~300 MB)."""
    seed = ctx.seed + 100 + run
    if tool == "none":
        return _burst_alone(ctx, run, seed)
    s = Session(ctx, tool, f"burst-{tool}-{run}")
    try:
        create_db(s.db)
        s.start()
        base_point = s.first_point()
        cpu0 = s.tool.sampler.sample().cpu_s
        with WalSampler(s.db, period=0.01) as wal:
            txns = s.run_writer(burst_writer(ctx, s.db, s.logp, seed),
                                fast_from_index=max(1, ctx.args.burst_txns - 1000))
            n = len(txns) - 1
            s.oracle = InsertOnly(seed, 5, 1000, txns, dict(ZERO))
            hint = base_point + n if (tool == "walrewind" and base_point is not None) else None
            rest = s.wait_restorable(hint_point=hint)
        end_us = rest["restorable_at_us"] or now_us()
        cpu = s.cpu_at(end_us) - cpu0
        stopped = s.stop()
        res = _burst_common(txns, wal)
        res.update(cpu_s=cpu, cpu_total_s=stopped.cpu_s, peak_rss_mb=stopped.maxrss_mb,
                   restorable_s=rest["restorable_s"], latest_restore_s=rest["latest_restore_s"],
                   latest_exact=bool(rest["latest"] and rest["latest"]["exact"]))
        res["targets"] = s.judge_targets(ctx.args.burst_targets, seed=ctx.seed * 37 + run)
        if tool == "walrewind":
            res["resyncs"] = s.tool.resyncs(0)
        t = res["targets"]
        log(f"  burst {tool}: {n} txns in {res['writer_s']:.1f}s, peak RSS {res['peak_rss_mb']:.0f} MB, -wal peak "
            f"{res['wal_peak_mb']:.0f} MB, slowest commit {res['slowest_commit_ms']:.0f} ms, restorable "
            f"{res['restorable_s']}s, exact {t['exact']}/{t['targets']} (extra {t['extra']}, "
            f"max missing {t['max_missing_ms']:.0f} ms)")
        return res
    finally:
        s.stop_quietly()
        s.cleanup()


def _burst_common(txns: list[dict], wal: WalSampler) -> dict:
    commits = [t["end"] - t["begin"] for t in txns[1:]]
    return {"txns": len(txns) - 1, "writer_s": (txns[-1]["end"] - txns[1]["begin"]) / 1e6,
            "slowest_commit_ms": max(commits) / 1000, "commit_p99_ms": _pct(commits, 99) / 1000,
            "wal_peak_mb": wal.max_mb}


def _burst_alone(ctx: Ctx, run: int, seed: int) -> dict:
    """The same burst with no replicator: the app's own slowest commit and -wal peak."""
    d = ctx.mkdir(f"burst-none-{run}")
    db, logp = os.path.join(d, "app.db"), os.path.join(d, "app.log")
    try:
        create_db(db)
        with WalSampler(db, period=0.01) as wal:
            wait_writer(start_writer(burst_writer(ctx, db, logp, seed)), "burst alone")
        txns, _ = read_log(logp)
        res = _burst_common(txns, wal)
        log(f"  burst, no replicator: {res['txns']} txns in {res['writer_s']:.1f}s, slowest commit "
            f"{res['slowest_commit_ms']:.0f} ms, -wal peak {res['wal_peak_mb']:.0f} MB")
        return res
    finally:
        if not ctx.args.keep:
            shutil.rmtree(d, ignore_errors=True)


def _pct(values: list[int], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, int(round(p / 100 * (len(v) - 1))))] if v else float("nan")


def start(ctx: Ctx, tool: str, run: int) -> dict:
    """A ~300 MB database, the app already writing 100 txn/s, then the replicator starts."""
    src, base = build_db(ctx, "big", ctx.args.big_mb)
    seed = ctx.seed + 200 + run
    s = Session(ctx, tool, f"start-{tool}-{run}")
    lead, window = 2.0, ctx.args.start_window
    try:
        shutil.copyfile(src, s.db)
        proc = start_writer(steady_writer(s.db, s.logp, seed, duration=lead + window + 8))
        deadline = time.monotonic() + 60
        while last_logged_index(s.logp) < lead * 100 and time.monotonic() < deadline:
            time.sleep(0.02)  # the app is writing: what every user has when they first start a replicator
        t_start = now_us()
        s.tool.start([s.db])
        ready = s.tool.wait_ready()
        log(f"  start {tool}: base snapshot of {os.path.getsize(s.db) / 1e6:.0f} MB listed {ready:.1f}s after start")
        wait_writer(proc, "start writer", on_tick=lambda: None)
        s.tool.watcher.fast()
        txns, _ = read_log(s.logp)
        s.oracle = InsertOnly(seed, 5, 200, txns, base)
        rest = s.wait_restorable()
        stopped = s.stop()
        res = {"ready_s": ready, "restorable_s": rest["restorable_s"], "peak_rss_mb": stopped.maxrss_mb,
               "cpu_total_s": stopped.cpu_s, "latest_exact": bool(rest["latest"] and rest["latest"]["exact"])}
        # targets in the first seconds after the replicator started (from +lead: both tools need a
        # moment to open the database; their own start-up is not what this row measures)
        res["targets"] = s.judge_targets(ctx.args.start_targets, seed=ctx.seed * 41 + run,
                                         start_us=t_start + int(lead * 1e6),
                                         end_us=min(t_start + int((lead + window) * 1e6), txns[-1]["end"]))
        if tool == "walrewind":
            res["resyncs"] = s.tool.resyncs(0)
            res["lost_history_logs"] = sum("history was lost" in x or "RESYNC" in x for x in s.tool.log_problems())
        t = res["targets"]
        log(f"  start {tool}: RESYNCs {res.get('resyncs', '-')}, exact {t['exact']}/{t['targets']} "
            f"(max missing {t['max_missing_ms']:.0f} ms), peak RSS {res['peak_rss_mb']:.0f} MB")
        return res
    finally:
        s.stop_quietly()
        s.cleanup()


def restore(ctx: Ctx, tool: str, run: int) -> dict:
    """Restore latest of a ~3 MB and a ~300 MB incompressible database, process start included."""
    res: dict = {}
    for label, mb in (("small", ctx.args.small_mb), ("big", ctx.args.big_mb)):
        src, base = build_db(ctx, label, mb)
        s = Session(ctx, tool, f"restore-{label}-{tool}-{run}")
        try:
            shutil.copyfile(src, s.db)
            ready = s.start()
            stopped = s.stop()  # the replica holds the base snapshot: nothing else to wait for
            walls, rss, cpus = [], [], []
            for r in range(ctx.args.restores):
                restored, timed = s.restore()
                if restored is None or restored != base:
                    ctx.anomaly(f"{s.dir}: {tool} restore latest #{r + 1} of the {label} database is not the source "
                                f"(rc {timed.rc}: {timed.stderr.strip()[-300:]}; got {restored}, want {base})")
                    continue
                walls.append(timed.wall_s)
                rss.append(timed.maxrss_mb)
                cpus.append(timed.cpu_s)
                log(f"  restore {label} {tool} #{r + 1}: {os.path.getsize(s.out) / 1e6:.0f} MB in {timed.wall_s:.2f}s, "
                    f"peak RSS {timed.maxrss_mb:.0f} MB, CPU {timed.cpu_s:.2f}s")
            res[label] = {"mb": os.path.getsize(src) / 1e6, "ready_s": ready, "snapshot_rss_mb": stopped.maxrss_mb,
                          "walls": walls, "rss": rss, "cpus": cpus,
                          "wall_s": statistics.median(walls) if walls else float("nan"),
                          "peak_rss_mb": max(rss) if rss else float("nan")}
        finally:
            s.stop_quietly()
            s.cleanup()
    return res
