#!/usr/bin/env python
"""Application checkpoints next to a replication daemon, and how big the -wal gets.

    python benchmarks/checkpoints.py                        # 30 s, sqld-style TRUNCATE every second
    python benchmarks/checkpoints.py --compare-litestream   # + the same with litestream
    python benchmarks/checkpoints.py --wal-growth           # default autocheckpoint, -wal size over 5 min
    python benchmarks/checkpoints.py --quick [...]          # short smoke run

Default mode: the writer runs at 100 txn/s for --duration seconds with busy_timeout 5000 ms and
calls PRAGMA wal_checkpoint(TRUNCATE) itself every second (what sqld does), (a) with no daemon,
(b) with walrewind attached, (c) with litestream attached.  Per run: checkpoints, how many
returned busy (SQLITE_BUSY: the WAL was not reset), median/max checkpoint duration, p50/p99 commit
latency (COMMIT end - BEGIN from the writer's log), and the p99 ratio (b)/(a) (and (c)/(a)).
Configurations are interleaved (a, b, c, a, b, c, ...) and medians over repeats are reported.

--wal-growth: no app checkpoints (SQLite's default autocheckpoint of 1000 pages), 100 txn/s; the
benchmark process samples the -wal file size with os.stat every 100 ms.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import time

from _common import (
    EXACT_MARGIN_US,
    DaemonLog,
    DaemonThread,
    Litestream,
    WalSampler,
    create_db,
    fmt,
    judge,
    litestream_version,
    log,
    med,
    pct,
    ratio,
    read_log,
    remove_db,
    report_anomalies,
    require_litestream,
    run_writer,
    table,
    table_state,
    workdir,
)
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

ANOMALIES: list[str] = []


def run_config(kind: str, d: str, cfg: dict, sample_wal: bool, verify_targets: int, seed: int) -> dict:
    """Run the writer with no daemon / walrewind / litestream; returns the writer's log and extras."""
    os.makedirs(d, exist_ok=True)
    db, rep, state, logp = (os.path.join(d, n) for n in ("app.db", "rep", "state", "writer.log"))
    create_db(db)
    extra: dict = {}
    sampler = WalSampler(db) if sample_wal else None
    wcfg = {"db": db, "log": logp, **cfg}
    if kind == "none":
        with sampler or _null():
            run_writer(wcfg, timeout=cfg["duration"] + 600)
    elif kind == "walrewind":
        with DaemonLog() as dlog, DaemonThread(db, rep, state, upload_interval=1.0) as sh:
            with sampler or _null():
                run_writer(wcfg, timeout=cfg["duration"] + 600)
            time.sleep(2.5)
        st = sh.stats
        if dlog.messages:
            ANOMALIES.append(f"walrewind {d}: daemon logged {dlog.summary()}")
        extra.update(resyncs=st.resyncs, yields=st.yields, releases=st.releases, shipped=st.transactions,
                     upload_errors=st.upload_errors)
        if st.resyncs or st.upload_errors:
            ANOMALIES.append(f"walrewind {d}: resyncs={st.resyncs} upload_errors={st.upload_errors} {st.last_error!r}")
    elif kind == "litestream":
        ls = Litestream(db, rep, interval=1.0).start()
        try:
            time.sleep(1.5)
            with sampler or _null():
                run_writer(wcfg, timeout=cfg["duration"] + 600)
            ls.wait_synced()
        finally:
            rc = ls.stop()
        if rc:
            ANOMALIES.append(f"litestream exited with {rc}; see {ls.log_path}")
        extra["ltx_files"] = len(ls.ltx_files(0))
        extra["log_tail"] = _tail(ls.log_path, 5)
    txns, ckpts = read_log(logp)
    lat = [(t["end"] - t["begin"]) / 1000 for t in txns[1:]]
    # the writer paces itself at start + i/rate: how late each COMMIT returned against that schedule
    # (this includes time the app spent blocked in its own checkpoints, which commit latency does not)
    t0 = txns[1]["begin"] if len(txns) > 1 else 0
    late = [max(0.0, (t["end"] - t0 - (t["i"] - 1) * 1e6 / cfg["rate"]) / 1000) for t in txns[1:]]
    span = (txns[-1]["end"] - t0) / 1e6 if len(txns) > 2 else float("nan")
    durs = [c["dur_us"] / 1000 for c in ckpts]
    out = {
        "kind": kind, "txns": len(txns) - 1, "ckpts": len(ckpts), "busy": sum(1 for c in ckpts if c["busy"]),
        "ckpt_med_ms": med(durs), "ckpt_max_ms": max(durs) if durs else float("nan"),
        "lat_p50_ms": pct(lat, 50), "lat_p99_ms": pct(lat, 99), "lat_max_ms": max(lat) if lat else float("nan"),
        "late_p99_ms": pct(late, 99), "txn_s": (len(txns) - 1) / span if span == span and span > 0 else float("nan"),
        **extra,
    }
    if sampler:
        s = sampler.samples
        out.update(wal_max_mb=max(s) / 1e6, wal_med_mb=med(s) / 1e6, wal_p99_mb=pct(s, 99) / 1e6,
                   wal_final_mb=s[-1] / 1e6, wal_samples=len(s))
    if kind == "walrewind":
        verify_walrewind(d, db, rep, txns, verify_targets, seed, cfg.get("checksums", False))
    shutil.rmtree(d)
    return out


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None


def _tail(path: str, n: int) -> list[str]:
    try:
        with open(path, errors="replace") as f:
            return [line.rstrip() for line in f.readlines()[-n:]]
    except FileNotFoundError:
        return []


def verify_walrewind(d: str, db: str, rep: str, txns: list[dict], targets: int, seed: int, sums: bool) -> None:
    """The latest restore equals the live database; random targets are exact (when checksummed)."""
    storage = open_storage(rep, create=False)
    out = os.path.join(d, "restored.db")
    restore(storage, out)
    got, want = table_state(out), table_state(db)
    if got != want:
        ANOMALIES.append(f"walrewind {d}: latest restore rows {got} != live database {want}")
    if not sums:
        return
    rng = random.Random(seed)
    for _ in range(targets):
        t = rng.randint(txns[1]["begin"], txns[-1]["end"])
        remove_db(out)
        try:
            res = restore(storage, out, target_us=t)
            v = judge(out, res.page_size, txns, txns[0]["checksum"], t, EXACT_MARGIN_US)
            if not v.exact:
                ANOMALIES.append(f"walrewind {d}: target {t} restored txn {v.restored_index}, allowed {v.allowed}")
        except Exception as exc:
            ANOMALIES.append(f"walrewind {d}: restore at {t} raised {type(exc).__name__}: {exc}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, help="seconds per run (default 30; --wal-growth 300; quick 10/20)")
    ap.add_argument("--repeats", type=int, help="runs per configuration (default 3, --wal-growth 1; quick 1)")
    ap.add_argument("--wal-growth", action="store_true", help="measure -wal size with default autocheckpoint")
    ap.add_argument("--compare-litestream", action="store_true")
    ap.add_argument("--no-verify", action="store_true", help="skip the walrewind restore checks after each run")
    ap.add_argument("--seed", type=int, default=77)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--json")
    a = ap.parse_args()
    if a.compare_litestream:
        require_litestream()
    duration = a.duration or ((20 if a.quick else 300) if a.wal_growth else (10 if a.quick else 30))
    repeats = a.repeats or (1 if a.quick or a.wal_growth else 3)
    kinds = ["none", "walrewind"] + (["litestream"] if a.compare_litestream else [])
    # Per-commit checksums serialize the whole database after every commit: fine for 30 s, but over
    # 5 minutes the growing database makes the writer fall behind 100 txn/s, so --wal-growth runs
    # without them (walrewind's latest restore is still compared with the live database).
    sums = not a.no_verify and not a.wal_growth
    cfg = {"rate": 100, "duration": duration, "seed": a.seed, "busy_timeout_ms": 5000, "checksums": sums}
    if not a.wal_growth:
        cfg["truncate_every"] = 1.0
    base = workdir("ckpt")
    mode = "wal-growth" if a.wal_growth else "truncate"
    log(f"scratch directory {base}; mode {mode}, {duration:g}s per run, {repeats} repeat(s), configs {kinds}")
    runs: dict[str, list[dict]] = {k: [] for k in kinds}
    try:
        for r in range(repeats):
            for k in kinds:
                res = run_config(k, os.path.join(base, f"{k}{r}"), cfg, a.wal_growth,
                                 0 if a.no_verify else 10, a.seed + r)
                runs[k].append(res)
                msg = (f"{k} #{r + 1}: {res['ckpts']} ckpts, {res['busy']} busy, ckpt med {res['ckpt_med_ms']:.1f} "
                       f"max {res['ckpt_max_ms']:.1f} ms; commit p50 {res['lat_p50_ms']:.2f} p99 {res['lat_p99_ms']:.2f} ms")
                if a.wal_growth:
                    msg += f"; wal max {res['wal_max_mb']:.2f} MB med {res['wal_med_mb']:.2f} MB"
                if k == "walrewind":
                    msg += f"; resyncs {res['resyncs']} yields {res['yields']}"
                log(msg)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    report(runs, kinds, a.wal_growth, duration, repeats)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"mode": mode, "runs": runs, "anomalies": ANOMALIES}, f, indent=1)


def report(runs: dict, kinds: list[str], wal_growth: bool, duration: float, repeats: int) -> None:
    names = {"none": "(a) no daemon", "walrewind": "(b) walrewind",
             "litestream": f"(c) litestream {litestream_version() or ''}".rstrip()}
    print()
    if wal_growth:
        print(f"-wal growth: default autocheckpoint, 100 txn/s, {duration:g}s, os.stat every 100 ms, "
              f"{repeats} run(s) per configuration (per-run values, then median)")
    else:
        print(f"app TRUNCATE checkpoints every 1 s, busy_timeout 5000 ms, 100 txn/s, {duration:g}s, "
              f"{repeats} run(s) per configuration (per-run values, then median)")
    headers = ["run", "txns", "txn/s", "ckpts", "busy", "ckpt med ms", "ckpt max ms", "commit p50 ms", "commit p99 ms",
               "commit max ms",
               "behind schedule p99 ms"]
    if wal_growth:
        headers += ["wal max MB", "wal median MB", "wal p99 MB"]
    rows = []
    keys = ["txns", "txn_s", "ckpts", "busy", "ckpt_med_ms", "ckpt_max_ms", "lat_p50_ms", "lat_p99_ms", "lat_max_ms",
            "late_p99_ms"]
    if wal_growth:
        keys += ["wal_max_mb", "wal_med_mb", "wal_p99_mb"]
    for k in kinds:
        for n, r in enumerate(runs[k]):
            rows.append([f"{names[k]} #{n + 1}"] + [fmt(r[key], 2) if isinstance(r[key], float) else r[key] for key in keys])
        if len(runs[k]) > 1:
            rows.append([f"{names[k]} median"] + [fmt(float(med(r[key] for r in runs[k])), 2) for key in keys])
    print(table(headers, rows))
    a = runs["none"]
    print()
    for k in kinds[1:]:
        b = runs[k]
        line = (f"{names[k]} / (a): commit p99 ratio {fmt(ratio(med(r['lat_p99_ms'] for r in b), med(r['lat_p99_ms'] for r in a)), 2)}"
                f", p50 ratio {fmt(ratio(med(r['lat_p50_ms'] for r in b), med(r['lat_p50_ms'] for r in a)), 2)}")
        if wal_growth:
            line += (f"; wal max ratio {fmt(ratio(med(r['wal_max_mb'] for r in b), med(r['wal_max_mb'] for r in a)), 2)}"
                     f", wal median ratio {fmt(ratio(med(r['wal_med_mb'] for r in b), med(r['wal_med_mb'] for r in a)), 2)}")
        else:
            line += (f"; busy checkpoints {sum(r['busy'] for r in b)}/{sum(r['ckpts'] for r in b)}"
                     f" vs (a) {sum(r['busy'] for r in a)}/{sum(r['ckpts'] for r in a)}")
        print(line)
    for r in runs.get("walrewind", []):
        print(f"walrewind daemon: resyncs={r['resyncs']} yields={r['yields']} releases={r['releases']} "
              f"upload_errors={r['upload_errors']} transactions shipped={r['shipped']}")
    report_anomalies(ANOMALIES, "no resyncs, no upload errors; walrewind restores after each run were exact")


if __name__ == "__main__":
    sys.exit(main())
