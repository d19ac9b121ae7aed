"""Rows at a steady write rate: steady, truncate, soak (see README: compare.py)."""

from __future__ import annotations

import os
import statistics
import time

from _common import create_db, log, read_log, run_writer, start_writer
from _oracle import InsertOnly
from _run import Ctx, Session, steady_writer, wait_writer
from _s3 import now_us

ZERO = {"count": 0, "max_id": 0, "digest": 0}


def steady(ctx: Ctx, tool: str, run: int, truncate_every: float | None = None) -> dict:
    """100 txn/s of 5 x 200 B inserts for 30 s (20 s with the app TRUNCATE-checkpointing every 2 s)."""
    row = "truncate" if truncate_every else "steady"
    seconds = ctx.args.truncate_seconds if truncate_every else ctx.args.steady_seconds
    s = Session(ctx, tool, f"{row}-{tool}-{run}")
    try:
        create_db(s.db)
        ready_s = s.start()
        base_point = s.first_point()
        seed = ctx.seed + run
        cfg = steady_writer(s.db, s.logp, seed, duration=seconds)
        if truncate_every:
            cfg.update(truncate_every=truncate_every, busy_timeout_ms=5000)
        t0_us = now_us()
        cpu0 = s.tool.sampler.sample().cpu_s
        txns = s.run_writer(cfg, fast_after_s=seconds - 1.5)
        _t, ckpts = read_log(s.logp)
        n = len(txns) - 1
        s.oracle = InsertOnly(seed, 5, 200, txns, dict(ZERO))
        hint = base_point + n if (tool == "walrewind" and base_point is not None) else None
        rest = s.wait_restorable(hint_point=hint)
        end_us = rest["restorable_at_us"] or now_us()
        cpu = s.cpu_at(end_us) - cpu0
        stopped = s.stop()
        res = {
            "ready_s": ready_s, "txns": n, "writer_s": (txns[-1]["end"] - txns[1]["begin"]) / 1e6,
            "cpu_s": cpu, "cpu_window_s": (end_us - t0_us) / 1e6, "cpu_total_s": stopped.cpu_s,
            "peak_rss_mb": stopped.maxrss_mb, "restorable_s": rest["restorable_s"],
            "latest_exact": bool(rest["latest"] and rest["latest"]["exact"]),
        }
        if truncate_every:
            res["app_txn_s"] = n / max(1e-9, res["writer_s"])
            res["checkpoints"] = len(ckpts)
            res["checkpoints_busy"] = sum(1 for c in ckpts if c["busy"])
            res["checkpoint_max_ms"] = max((c["dur_us"] for c in ckpts), default=0) / 1000
        else:
            res["targets"] = s.judge_targets(ctx.args.targets, seed=ctx.seed * 31 + run)
        log(f"  {row} {tool}: CPU {cpu:.2f}s over {res['cpu_window_s']:.1f}s, peak RSS {res['peak_rss_mb']:.0f} MB, "
            f"restorable {rest['restorable_s']}s" + (f", exact {res['targets']['exact']}/{res['targets']['targets']}"
                                                    if "targets" in res else
                                                    f", app {res['app_txn_s']:.0f} txn/s, busy ckpts "
                                                    f"{res['checkpoints_busy']}/{res['checkpoints']}"))
        return res
    finally:
        s.stop_quietly()
        s.cleanup()


def truncate(ctx: Ctx, tool: str, run: int) -> dict:
    return steady(ctx, tool, run, truncate_every=2.0)


def soak(ctx: Ctx, tools: list[str], run: int) -> dict[str, dict]:
    """Both tools at once, each on its own fixed-size database (UPDATEs of 5 existing rows per
    transaction at 100 txn/s) for --soak-minutes: RSS after warm-up vs at the end."""
    seconds = ctx.args.soak_minutes * 60
    warm = min(60.0, seconds / 4)
    sessions = {t: Session(ctx, t, f"soak-{t}-{run}") for t in tools}
    writers = {}
    try:
        for t, s in sessions.items():
            # ~1.3 MB: 5000 rows of 200 B; the soak's UPDATEs keep it at that size
            run_writer({"db": s.db, "txns": 1000, "rate": 0, "big_every": 1, "big_rows": 5, "row_bytes": 200,
                        "seed": ctx.seed, "log": os.devnull})
            s.start()
            s.tool.sampler.period = 1.0
        t0 = time.monotonic()
        for t, s in sessions.items():
            writers[t] = start_writer(steady_writer(s.db, s.logp, ctx.seed + run, duration=seconds, big_updates=True))
        log(f"  soak: {len(tools)} tool(s) for {seconds / 60:.1f} min, warm-up {warm:.0f}s")
        for t, w in writers.items():
            wait_writer(w, f"soak {t}", timeout=seconds + 600)
        t_end = time.monotonic()
        out = {}
        for t, s in sessions.items():
            samples = s.tool.sampler.samples
            stopped = s.stop()
            warm_rss = statistics.median(s.tool.sampler.rss_between(t0 + warm - 5, t0 + warm + 5) or [float("nan")])
            end_rss = statistics.median(s.tool.sampler.rss_between(t_end - 10, t_end) or [float("nan")])
            after = [x for x in samples if t0 + warm <= x.t <= t_end]
            slope = _slope([(x.t, x.rss_mb) for x in after]) * 3600
            cpu = [x for x in samples if t0 <= x.t <= t_end]
            cpu_30 = (cpu[-1].cpu_s - cpu[0].cpu_s) / max(1e-9, cpu[-1].t - cpu[0].t) * 30 if len(cpu) > 1 else float("nan")
            txns, _ = read_log(s.logp)
            out[t] = {"rss_warm_mb": warm_rss, "rss_end_mb": end_rss, "drift_mb": end_rss - warm_rss,
                      "slope_mb_per_h": slope, "peak_rss_mb": stopped.maxrss_mb, "cpu_per_30s": cpu_30,
                      "txns": len(txns) - 1, "seconds": seconds, "warmup_s": warm}
            log(f"  soak {t}: RSS {warm_rss:.1f} MB at warm-up -> {end_rss:.1f} MB at the end "
                f"(drift {end_rss - warm_rss:+.1f} MB, slope {slope:+.1f} MB/h), CPU {cpu_30:.2f}s per 30 s")
        return out
    finally:
        for w in writers.values():
            if w.poll() is None:
                w.kill()
        for s in sessions.values():
            s.stop_quietly()
            s.cleanup()


def _slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope (y per x unit); NaN for fewer than 3 points."""
    if len(points) < 3:
        return float("nan")
    mx = statistics.fmean(p[0] for p in points)
    my = statistics.fmean(p[1] for p in points)
    den = sum((p[0] - mx) ** 2 for p in points)
    return sum((p[0] - mx) * (p[1] - my) for p in points) / den if den else float("nan")

