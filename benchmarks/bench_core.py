#!/usr/bin/env python
"""Core numbers: ship throughput, commit->durable lag, restore throughput (optionally vs litestream).

    python benchmarks/bench_core.py --quick                       # ~1-2 min smoke run (64 MB)
    python benchmarks/bench_core.py                               # full: 320 MB, 3 repeats
    python benchmarks/bench_core.py --compare-litestream          # + litestream 0.5.17 columns

Everything runs on local disk with file:// replicas.  See benchmarks/README.md for what each number
means.  Progress goes to stderr, the result table to stdout.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import time

from _common import (
    INSERT_ONLY,
    DaemonLog,
    DaemonThread,
    Litestream,
    WalSampler,
    create_db,
    fmt,
    lag_from_visibility,
    litestream_covered,
    litestream_restore,
    litestream_version,
    log,
    med,
    now_us,
    pct,
    ratio,
    read_log,
    remove_db,
    report_anomalies,
    require_litestream,
    run_writer,
    start_writer,
    table,
    table_state,
    walrewind_visible_times,
    workdir,
)
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

ANOMALIES: list[str] = []


def note_stats(what: str, stats, dlog: "DaemonLog | None" = None) -> None:
    if stats.resyncs or stats.upload_errors:
        ANOMALIES.append(
            f"{what}: resyncs={stats.resyncs} upload_errors={stats.upload_errors} last_error={stats.last_error!r}"
        )
    if dlog is not None and dlog.messages:
        ANOMALIES.append(f"{what}: daemon logged {dlog.summary()}")


def wait_until(cond, timeout: float, what: str, step: float = 0.02) -> float:
    """Poll until cond() is true; returns the wall time (µs) it became true."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(step)
    return now_us()


def wait_idle(sh, settle: float = 1.5, timeout: float = 600) -> None:
    """Wait until the daemon has read nothing new for ``settle`` s and has uploaded all it read."""
    deadline = time.monotonic() + timeout
    last, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        cur = sh.stats.last_txid
        if cur != last:
            last, since = cur, time.monotonic()
        elif time.monotonic() - since >= settle and sh.stats.uploaded_txid >= cur:
            return
        time.sleep(0.05)
    raise TimeoutError("daemon did not go idle")


# ------------------------------------------------------------------------------------ ship
SHIP_WORKLOAD = {"rate": 0, "row_bytes": 4000, "big_every": 1, "big_rows": 64, "seed": 101}


def ship_run(base: str, seconds: float) -> dict:
    db, rep, state, logp = (os.path.join(base, n) for n in ("ship.db", "rep", "state", "ship.log"))
    create_db(db)
    with DaemonLog() as dlog, DaemonThread(db, rep, state, upload_interval=1.0) as sh:
        base_txid = sh.stats.last_txid
        with WalSampler(db) as wal_sampler:
            w = start_writer({"db": db, "log": logp, "duration": seconds, **SHIP_WORKLOAD})
            while w.poll() is None:
                time.sleep(0.02)
        if w.returncode:
            raise RuntimeError(f"writer failed: {w.stderr.read()}")
        txns, _ = read_log(logp)
        n = len(txns) - 1
        # Caught up = the daemon's last txid stopped moving (it may fold commits into a RESYNC, so
        # counting to n is not enough) and everything it read is uploaded.
        history = []  # (wall µs, last_txid, uploaded_txid)
        deadline = time.monotonic() + 600
        while True:
            history.append((now_us(), sh.stats.last_txid, sh.stats.uploaded_txid))
            final = history[-1][1]
            still = [h for h in history if h[1] == final]
            if final >= base_txid + n or (now_us() - still[0][0] > 2_000_000):
                if history[-1][2] >= final:
                    break
            if time.monotonic() > deadline:
                raise TimeoutError("daemon did not catch up within 600 s")
            time.sleep(0.02)
        t_read = next(h[0] for h in history if h[1] == final)
        t_up = next(h[0] for h in history if h[2] >= final)
        wal_bytes = sh.stats.wal_bytes
        stats = sh.stats
        wal_file_mb = os.path.getsize(db + "-wal") / 1e6
    note_stats("ship", stats, dlog)
    start, end = txns[1]["begin"], txns[-1]["end"]
    mb = wal_bytes / 1e6
    return {
        "txns": n,
        "wal_mb": mb,
        "writer_s": (end - start) / 1e6,
        "writer_mb_s": mb / ((end - start) / 1e6),
        "read_mb_s": mb / ((t_read - start) / 1e6),
        "durable_mb_s": mb / ((t_up - start) / 1e6),
        "read_behind_s": (t_read - end) / 1e6,
        "durable_behind_s": (t_up - end) / 1e6,
        "reconciles": dlog.count("reconciling"),
        "resyncs": stats.resyncs,
        "shipped_txns": stats.last_txid - base_txid,
        "wal_file_mb": wal_file_mb,
        "wal_max_mb": wal_sampler.max_mb,
    }


def writer_alone_run(base: str, seconds: float) -> dict:
    db, logp = os.path.join(base, "alone.db"), os.path.join(base, "alone.log")
    create_db(db)
    with WalSampler(db) as wal_sampler:
        run_writer({"db": db, "log": logp, "duration": seconds, **SHIP_WORKLOAD})
    txns, _ = read_log(logp)
    return {"txn_s": (len(txns) - 1) / ((txns[-1]["end"] - txns[1]["begin"]) / 1e6), "wal_max_mb": wal_sampler.max_mb}


# ------------------------------------------------------------------------------------ lag
LAG_WORKLOAD = {"rate": 100, "seed": 202, **INSERT_ONLY}


def lag_walrewind(base: str, interval: float, seconds: float) -> dict:
    db, rep, state, logp = (os.path.join(base, n) for n in ("lag.db", "rep", "state", "lag.log"))
    create_db(db)
    with DaemonLog() as dlog, DaemonThread(db, rep, state, upload_interval=interval) as sh:
        base_txid = sh.stats.last_txid
        run_writer({"db": db, "log": logp, "duration": seconds, **LAG_WORKLOAD})
        txns, _ = read_log(logp)
        n = len(txns) - 1
        wait_until(lambda: sh.stats.uploaded_txid >= base_txid + n, 120, "uploads to catch up")
        samples = list(sh.stats.lag_samples_us)
        stats = sh.stats
    note_stats(f"lag@{interval}", stats, dlog)
    snap_txid, segs = walrewind_visible_times(rep)
    ext = []
    if snap_txid is None or not segs or segs[-1][1] - snap_txid != n:
        ANOMALIES.append(f"lag@{interval}: replica txids do not map 1:1 to writer commits "
                         f"(snapshot {snap_txid}, last {segs[-1][1] if segs else None}, writer commits {n})")
    else:
        ext = lag_from_visibility(txns, [(last - snap_txid, ct) for _f, last, ct in segs])
    return {
        "stats_p50": pct(samples, 50) / 1000, "stats_p99": pct(samples, 99) / 1000,
        "vis_p50": pct(ext, 50) / 1000, "vis_p99": pct(ext, 99) / 1000,
        "n": len(samples), "segments": stats.segments,
    }


def lag_litestream(base: str, interval: float, seconds: float) -> dict:
    db, rep, logp = (os.path.join(base, n) for n in ("lag.db", "rep", "lag.log"))
    create_db(db)
    ls = Litestream(db, rep, interval=interval).start()
    try:
        time.sleep(max(1.0, 2 * interval))  # let the first sync after the snapshot settle
        run_writer({"db": db, "log": logp, "duration": seconds, **LAG_WORKLOAD})
        ls.wait_synced()
    finally:
        rc = ls.stop()
    if rc:
        ANOMALIES.append(f"litestream lag@{interval}: exit code {rc}")
    txns, _ = read_log(logp)
    covered = litestream_covered(ls, base)
    ext = lag_from_visibility(txns, covered)
    return {"vis_p50": pct(ext, 50) / 1000, "vis_p99": pct(ext, 99) / 1000, "n": len(ext), "files": len(covered)}


# ------------------------------------------------------------------------------------ restore
ROW_BYTES_BIG = 4000  # one row per 4 KiB page, random bytes: the pages barely compress
LATER = {"rate": 0, "seed": 303, "txns": 3000}


def build_big_db(path: str, size_mb: int) -> None:
    rows = size_mb * 1_000_000 // 4096
    per_txn = 1000
    run_writer({"db": path, "txns": math.ceil(rows / per_txn), "rate": 0, "row_bytes": ROW_BYTES_BIG,
                "big_every": 1, "big_rows": per_txn, "seed": 5}, timeout=3600)
    assert not os.path.exists(path + "-wal") or os.path.getsize(path + "-wal") == 0


def restore_walrewind(base: str, src: str, repeats: int) -> dict:
    d = os.path.join(base, "wr")
    os.makedirs(d)
    db, rep, state, logp = (os.path.join(d, n) for n in ("big.db", "rep", "state", "later.log"))
    shutil.copyfile(src, db)
    t0 = time.perf_counter()
    with DaemonLog() as dlog, DaemonThread(db, rep, state, upload_interval=1.0) as sh:
        snap_s = time.perf_counter() - t0
        log(f"  walrewind: base snapshot of {os.path.getsize(db) / 1e6:.0f} MB took {snap_s:.1f}s; later transactions")
        run_writer({"db": db, "log": logp, **LATER}, timeout=3600)
        txns, _ = read_log(logp)
        # some "transactions" of the mixed workload change nothing (UPDATE/DELETE of a deleted id):
        # SQLite writes no frame for them, so wait for the daemon to go quiet instead of counting
        wait_idle(sh)
        stats = sh.stats
    note_stats("restore-build", stats, dlog)
    expect = table_state(db)
    mid = txns[len(txns) // 2]
    storage = open_storage(rep, create=False)
    out = os.path.join(d, "out.db")
    res: dict = {"snapshot_s": snap_s, "segments": stats.segments, "later_txns": len(txns) - 1}
    for label, target in (("latest", None), ("middle", mid["end"] + 1)):
        secs, mbs = [], []
        for r in range(repeats):
            remove_db(out)
            t = time.perf_counter()
            result = restore(storage, out, target_us=target)
            s = time.perf_counter() - t
            size = result.db_pages * result.page_size
            secs.append(s)
            mbs.append(size / 1e6 / s)
            if label == "latest" and r == 0:
                got = table_state(out)
                if got != expect:
                    ANOMALIES.append(f"walrewind latest restore: rows {got} != live database {expect}")
            log(f"  walrewind restore {label} #{r + 1}: {size / 1e6:.0f} MB in {s:.2f}s = {size / 1e6 / s:.0f} MB/s")
        res[label] = {"s": med(secs), "mb_s": med(mbs), "mb": size / 1e6}
    remove_db(out)
    return res


def restore_litestream(base: str, src: str, repeats: int) -> dict:
    d = os.path.join(base, "ls")
    os.makedirs(d)
    db, rep, logp = (os.path.join(d, n) for n in ("big.db", "rep", "later.log"))
    shutil.copyfile(src, db)
    t0 = time.perf_counter()
    ls = Litestream(db, rep, interval=1.0)
    ls.start()
    try:
        # the first L0 file is the whole database; wait until litestream has finished writing it
        deadline = time.monotonic() + 900
        while "snapshot complete" not in open(ls.log_path, errors="replace").read():
            if time.monotonic() > deadline:
                raise RuntimeError("litestream snapshot did not complete")
            time.sleep(0.1)
        snap_s = time.perf_counter() - t0
        log(f"  litestream: base snapshot took {snap_s:.1f}s; later transactions")
        run_writer({"db": db, "log": logp, **LATER}, timeout=3600)
        ls.wait_synced(timeout=120)
    finally:
        rc = ls.stop()
    if rc:
        ANOMALIES.append(f"litestream restore-build: exit code {rc}")
    txns, _ = read_log(logp)
    expect = table_state(db)
    mid = txns[len(txns) // 2]
    out = os.path.join(d, "out.db")
    res: dict = {"snapshot_s": snap_s}
    for label, target, extra in (("latest", None, []), ("middle", mid["end"] + 1, []),
                                 ("latest+quick_check", None, ["-integrity-check", "quick"])):
        secs, mbs = [], []
        for r in range(repeats):
            s, proc = litestream_restore(ls.url, out, timestamp_us=target, extra=extra)
            if proc.returncode != 0:
                ANOMALIES.append(f"litestream restore {label} failed: {proc.stderr.strip()[:500]}")
                break
            size = os.path.getsize(out)
            secs.append(s)
            mbs.append(size / 1e6 / s)
            if label == "latest" and r == 0:
                got = table_state(out)
                if got != expect:
                    ANOMALIES.append(f"litestream latest restore: rows {got} != live database {expect}")
            log(f"  litestream restore {label} #{r + 1}: {size / 1e6:.0f} MB in {s:.2f}s = {size / 1e6 / s:.0f} MB/s")
        res[label] = {"s": med(secs), "mb_s": med(mbs)}
    remove_db(out)
    return res


# ------------------------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="short smoke run (64 MB, 1 repeat, short workloads)")
    ap.add_argument("--size-mb", type=int, help="database size for the restore benchmark (default 320; quick 64)")
    ap.add_argument("--repeats", type=int, help="runs per measurement, median reported (default 3; quick 1)")
    ap.add_argument("--ship-seconds", type=float, help="writer duration for ship throughput (default 15; quick 5)")
    ap.add_argument("--lag-seconds", type=float, help="writer duration per lag run (default 30; quick 8)")
    ap.add_argument("--compare-litestream", action="store_true", help="also measure litestream 0.5.x")
    ap.add_argument("--only", choices=["ship", "lag", "restore"], action="append", help="run only these parts")
    ap.add_argument("--json", help="also write the raw results here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args()
    size_mb = a.size_mb or (64 if a.quick else 320)
    repeats = a.repeats or (1 if a.quick else 3)
    ship_s = a.ship_seconds or (5 if a.quick else 15)
    lag_s = a.lag_seconds or (8 if a.quick else 30)
    parts = a.only or ["ship", "lag", "restore"]
    if a.compare_litestream:
        require_litestream()
    base = workdir("core")
    log(f"scratch directory {base}")
    results: dict = {"config": {"size_mb": size_mb, "repeats": repeats, "ship_seconds": ship_s, "lag_seconds": lag_s,
                                "litestream": litestream_version() if a.compare_litestream else None}}
    try:
        if "ship" in parts:
            runs, alone = [], []
            for r in range(repeats):
                d = os.path.join(base, f"ship{r}")
                os.makedirs(d)
                runs.append(ship_run(d, ship_s))
                alone.append(writer_alone_run(d, ship_s))
                log(f"ship #{r + 1}: {runs[-1]['wal_mb']:.0f} MB of WAL; read {runs[-1]['read_mb_s']:.1f} MB/s, "
                    f"durable {runs[-1]['durable_mb_s']:.1f} MB/s (writer alone {alone[-1]['txn_s']:.0f} txn/s); "
                    f"max -wal {runs[-1]['wal_max_mb']:.0f} MB (alone {alone[-1]['wal_max_mb']:.0f} MB); forced reconciles {runs[-1]['reconciles']}, "
                    f"RESYNCs {runs[-1]['resyncs']} ({runs[-1]['shipped_txns']} txids for {runs[-1]['txns']} commits)")
                shutil.rmtree(d)
            results["ship"] = {"runs": runs, "writer_alone": alone}
        if "lag" in parts:
            results["lag"] = {}
            for interval in (1.0, 0.2):
                wr, ls = [], []
                for r in range(repeats):
                    d = os.path.join(base, f"lagwr{interval}-{r}")
                    os.makedirs(d)
                    wr.append(lag_walrewind(d, interval, lag_s))
                    log(f"lag walrewind @{interval}s #{r + 1}: stats p50 {wr[-1]['stats_p50']:.0f} ms "
                        f"p99 {wr[-1]['stats_p99']:.0f} ms; visible p50 {wr[-1]['vis_p50']:.0f} p99 {wr[-1]['vis_p99']:.0f}")
                    shutil.rmtree(d)
                    if a.compare_litestream:
                        d = os.path.join(base, f"lagls{interval}-{r}")
                        os.makedirs(d)
                        ls.append(lag_litestream(d, interval, lag_s))
                        log(f"lag litestream @{interval}s #{r + 1}: visible p50 {ls[-1]['vis_p50']:.0f} ms "
                            f"p99 {ls[-1]['vis_p99']:.0f} ms ({ls[-1]['files']} L0 files)")
                        shutil.rmtree(d)
                results["lag"][str(interval)] = {"walrewind": wr, "litestream": ls}
        if "restore" in parts:
            src = os.path.join(base, "source.db")
            log(f"building a {size_mb} MB database")
            t = time.perf_counter()
            build_big_db(src, size_mb)
            log(f"  built {os.path.getsize(src) / 1e6:.0f} MB in {time.perf_counter() - t:.0f}s")
            results["restore"] = {"db_mb": os.path.getsize(src) / 1e6}
            results["restore"]["walrewind"] = restore_walrewind(base, src, repeats)
            shutil.rmtree(os.path.join(base, "wr"))
            if a.compare_litestream:
                results["restore"]["litestream"] = restore_litestream(base, src, repeats)
                shutil.rmtree(os.path.join(base, "ls"))
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    report(results, a.compare_litestream)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({**results, "anomalies": ANOMALIES}, f, indent=1)


def report(res: dict, compare: bool) -> None:
    cfg = res["config"]
    print(f"\nwalrewind core benchmark: {cfg['repeats']} repeat(s), medians"
          + (f"; compared with litestream {cfg['litestream']}" if compare else ""))
    rows = []
    if "ship" in res:
        runs = res["ship"]["runs"]
        rows.append(["ship throughput, read (MB/s of WAL)", med(r["read_mb_s"] for r in runs), None])
        rows.append(["ship throughput, durable (MB/s of WAL)", med(r["durable_mb_s"] for r in runs), None])
        rows.append(["  writer's own WAL rate with daemon (MB/s)", med(r["writer_mb_s"] for r in runs), None])
        rows.append(["  WAL shipped per run (MB)", med(r["wal_mb"] for r in runs), None])
        rows.append(["  read caught up after writer stopped (s)", med(r["read_behind_s"] for r in runs), None])
        rows.append(["  durable after writer stopped (s)", med(r["durable_behind_s"] for r in runs), None])
        rows.append(["  max -wal file size, alone / with daemon (MB)",
                     f"{med(r['wal_max_mb'] for r in res['ship']['writer_alone']):.0f} / "
                     f"{med(r['wal_max_mb'] for r in runs):.0f}", None])
        rows.append(["  forced reconciles / RESYNCs (all runs)",
                     f"{sum(r['reconciles'] for r in runs)} / {sum(r['resyncs'] for r in runs)}", None])
        rows.append(["  writer txn/s alone / with daemon",
                     f"{med(r['txn_s'] for r in res['ship']['writer_alone']):.0f} / "
                     f"{med(r['txns'] / r['writer_s'] for r in runs):.0f}", None])
    for interval, lag in res.get("lag", {}).items():
        wr, ls = lag["walrewind"], lag["litestream"]
        iv = f"{float(interval):g}s"
        rows.append([f"lag p50 @{iv}, daemon stats (ms)", med(r["stats_p50"] for r in wr), None])
        rows.append([f"lag p99 @{iv}, daemon stats (ms)", med(r["stats_p99"] for r in wr), None])
        rows.append([f"lag p50 @{iv}, COMMIT->object visible (ms)", med(r["vis_p50"] for r in wr),
                     med(r["vis_p50"] for r in ls) if ls else None])
        rows.append([f"lag p99 @{iv}, COMMIT->object visible (ms)", med(r["vis_p99"] for r in wr),
                     med(r["vis_p99"] for r in ls) if ls else None])
    if "restore" in res:
        r = res["restore"]
        wr, ls = r["walrewind"], r.get("litestream")
        rows.append([f"restore latest, {r['db_mb']:.0f} MB (MB/s)", wr["latest"]["mb_s"], ls["latest"]["mb_s"] if ls else None])
        rows.append(["restore middle point (MB/s)", wr["middle"]["mb_s"], ls["middle"]["mb_s"] if ls else None])
        rows.append(["restore latest (s)", wr["latest"]["s"], ls["latest"]["s"] if ls else None])
        rows.append(["restore middle point (s)", wr["middle"]["s"], ls["middle"]["s"] if ls else None])
        if ls and "latest+quick_check" in ls:
            rows.append(["restore latest, litestream -integrity-check quick (MB/s)", None,
                         ls["latest+quick_check"]["mb_s"]])
        rows.append(["time until the base snapshot is in the replica (s)", wr["snapshot_s"], ls["snapshot_s"] if ls else None])
    headers = ["metric", "walrewind"] + (["litestream", "ratio wr/ls"] if compare else [])
    out = []
    for name, a, b in rows:
        row = [name, a if isinstance(a, str) else fmt(a)]
        if compare:
            row += [fmt(b), fmt(ratio(a, b), 2) if not isinstance(a, str) and b is not None and a is not None else "-"]
        out.append(row)
    print(table(headers, out))
    report_anomalies(ANOMALIES, "no resyncs, no upload errors, latest restores equal the live databases")


if __name__ == "__main__":
    sys.exit(main())
