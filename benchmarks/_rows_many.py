"""The "many" row: N databases in one replicator, 10 % of them written at 1 txn/s (issue 12)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from _common import log, read_log
from _oracle import InsertOnly, digest_file
from _rows_steady import ZERO
from _run import Ctx
from _tools import TOOLS

HERE = os.path.dirname(os.path.abspath(__file__))


def _helper(cfg: dict, timeout: float) -> None:
    subprocess.run([sys.executable, os.path.join(HERE, "_many_writer.py"), json.dumps(cfg)], check=True, timeout=timeout)


def many(ctx: Ctx, tool: str, run: int) -> dict:
    n, seconds = ctx.args.many, ctx.args.many_seconds
    d = ctx.mkdir(f"many-{tool}-{run}")
    dbs = [os.path.join(d, "dbs", f"db{i:04d}.db") for i in range(n)]
    os.makedirs(os.path.dirname(dbs[0]))
    logdir = os.path.join(d, "logs")
    os.makedirs(logdir)
    written = list(range(0, n, 10))
    seed = ctx.seed + 300 + run
    _helper({"dbs": dbs, "create": True}, 600)
    t = TOOLS[tool](ctx.server, os.path.join(d, "tool"), f"many-{tool}-{run}-{os.getpid()}")
    stopped = None
    try:
        t.start(dbs)
        ready = t.wait_ready(timeout=1800)
        log(f"  many {tool}: {n} base snapshots listed {ready:.1f}s after start")
        t.watcher.period = 10.0  # only the readiness needed the listing
        s0 = t.sampler.sample()
        _helper({"dbs": dbs, "write": written, "rate": 1, "duration": seconds, "seed": seed, "logdir": logdir},
                seconds + 600)
        s1 = t.sampler.sample()
        alive = t.alive()
        stopped = t.stop()
        if stopped.rc != 0 or not alive:
            ctx.anomaly(f"many {tool}: exited with {stopped.rc} (alive at the end of the writes: {alive}): {t.log_tail(5)}")
        problems = t.log_problems()
        if problems:
            ctx.anomaly(f"many {tool}: {len(problems)} warning/error line(s), first: {problems[0][:300]}")
        checked = ok = 0
        for i in sorted({written[0], written[-1]}):
            txns, _ = read_log(os.path.join(logdir, f"db{i:04d}.log"))
            oracle = InsertOnly(seed + i, 5, 200, txns, dict(ZERO))
            out = os.path.join(d, "restored.db")
            timed = t.restore(i, out)
            verdict = oracle.judge(None, digest_file(out) if timed.rc == 0 else None, timed.stderr[-300:])
            checked += 1
            ok += verdict["exact"]
            if not verdict["exact"]:
                ctx.anomaly(f"many {tool}: latest restore of db{i:04d} is not its final state: {verdict}")
        res = {"dbs": n, "written": len(written), "ready_s": ready, "rss_end_mb": s1.rss_mb if s1 else float("nan"),
               "peak_rss_mb": stopped.maxrss_mb,
               "cpu_pct": 100 * (s1.cpu_s - s0.cpu_s) / (s1.t - s0.t) if s0 and s1 else float("nan"),
               "latest_ok": ok, "latest_checked": checked}
        log(f"  many {tool}: RSS {res['rss_end_mb']:.0f} MB (peak {res['peak_rss_mb']:.0f}), CPU {res['cpu_pct']:.1f} % "
            f"of a core while {len(written)} of {n} databases were written at 1 txn/s")
        return res
    finally:
        if stopped is None and t.proc is not None:
            t.stop()
        if not ctx.args.keep:
            ctx.server.delete_prefix(t.prefix)
            shutil.rmtree(d, ignore_errors=True)
