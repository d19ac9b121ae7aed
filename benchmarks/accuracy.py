#!/usr/bin/env python
"""Point-in-time accuracy: is restore(T) exactly the database as it was at T?

    python benchmarks/accuracy.py                          # 60 s at 100 txn/s, 100 targets
    python benchmarks/accuracy.py --quick                  # 15 s, 30 targets
    python benchmarks/accuracy.py --compare-litestream     # + insert-only run for both tools

Part A (walrewind, the issue's test): the mixed workload of tests/writer.py at 100 txn/s with
whole-database checksums after every commit, daemon attached (upload interval 1 s).  Then N seeded
random targets between the first and the last commit, half on whole seconds and half fractional;
each is restored and judged by tests/harness.judge: exact = every transaction whose COMMIT
returned more than 5 ms before T is present, and none that began after T.

Part B (--compare-litestream): litestream adds its own tables (_litestream_seq, _litestream_lock) to
the database, so its restores can never match the writer's checksums.  Both tools therefore also
run an insert-only workload (one row per transaction, id == i, same seed, each on its own database
file), and restores are judged by row contents: max(id) of the restored table t is the transaction
it reached.  The same relative targets are used for both.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import random
import shutil
import sys
import time

from _common import (
    EXACT_MARGIN_US,
    INSERT_ONLY,
    DaemonLog,
    DaemonThread,
    Litestream,
    allowed_range,
    create_db,
    fmt,
    judge,
    litestream_restore,
    litestream_version,
    log,
    med,
    pct,
    read_log,
    remove_db,
    report_anomalies,
    require_litestream,
    rfc3339,
    run_writer,
    table,
    table_state,
    walrewind_visible_times,
    workdir,
)
from walrewind.engine.replica.index import Replica
from walrewind.engine.restore.restorer import restore
from walrewind.engine.storage import open_storage

ANOMALIES: list[str] = []


def make_targets(n: int, seed: int) -> list[tuple[float, bool]]:
    """(fraction of the first->last commit span, whole second?) pairs; half whole, half fractional."""
    rng = random.Random(seed)
    return [(rng.random(), k % 2 == 0) for k in range(n)]


def absolute(txns: list[dict], frac: float, whole: bool) -> int:
    first, last = txns[1]["begin"], txns[-1]["end"]
    t = int(first + frac * (last - first))
    if whole:
        t -= t % 1_000_000
        if t < first:
            t += 1_000_000
    return t


def distance(txns: list[dict], k: int | None, lo: int, hi: int, target: int) -> tuple[int | None, float | None]:
    """How far the restored state k is from the allowed range, in transactions and in ms."""
    if k is None:
        return None, None
    by_i = {t["i"]: t for t in txns}
    if lo <= k <= hi:
        return 0, 0.0
    if k < lo:  # missing transactions k+1..lo; the oldest of them committed this long before T
        return lo - k, (target - by_i[k + 1]["end"]) / 1000
    return k - hi, (by_i[k]["begin"] - target) / 1000  # holds a transaction that began after T


def summarize(name: str, verdicts: list[dict]) -> dict:
    n = len(verdicts)
    exact = sum(1 for v in verdicts if v["exact"])
    dtx = [v["dtx"] for v in verdicts if v["dtx"] is not None]
    dms = [v["dms"] for v in verdicts if v["dms"] is not None]
    bad_tx = [v["dtx"] for v in verdicts if not v["exact"] and v["dtx"] is not None]
    bad_ms = [v["dms"] for v in verdicts if not v["exact"] and v["dms"] is not None]
    whole = [v for v in verdicts if v["whole"]]
    frac = [v for v in verdicts if not v["whole"]]
    return {
        "tool": name, "n": n, "exact": exact, "pct": 100.0 * exact / n if n else float("nan"),
        "exact_whole": sum(v["exact"] for v in whole), "n_whole": len(whole),
        "exact_frac": sum(v["exact"] for v in frac), "n_frac": len(frac),
        "med_dtx": med(dtx), "med_dms": med(dms), "med_dtx_inexact": med(bad_tx), "med_dms_inexact": med(bad_ms),
        "med_dtx_frac": med(v["dtx"] for v in frac if v["dtx"] is not None),
        "med_dms_frac": med(v["dms"] for v in frac if v["dms"] is not None),
        "med_dtx_whole": med(v["dtx"] for v in whole if v["dtx"] is not None),
        "med_dms_whole": med(v["dms"] for v in whole if v["dms"] is not None),
        "max_dtx": max(dtx) if dtx else None, "errors": sum(1 for v in verdicts if v.get("error")),
    }


def observed_stamps(rep: str, txns: list[dict]) -> dict[int, int]:
    """writer index -> commit time walrewind stamped on it, matched by whole-database checksum.

    Records are walked in txid order and matched to the next writer transaction with the same
    checksum (transactions that changed nothing leave no WAL frame and get no record).
    """
    replica = Replica(open_storage(rep, create=False))
    stamps: dict[int, int] = {}
    j = 1
    for gen in replica.generations:
        for seg in gen.segments:
            for rec in replica.load_segment(seg)[1]:
                want = f"{rec.db_checksum:016x}"
                k = j
                while k < len(txns) and txns[k]["checksum"] != want:
                    k += 1
                if k == len(txns):
                    ANOMALIES.append(f"replica txid {rec.txid}: checksum {want} matches no later writer transaction")
                    continue
                stamps[txns[k]["i"]] = rec.commit_ts_us
                j = k + 1
    return stamps


def stamp_delays(txns: list[dict], stamps: dict[int, int], rep: str, margin_us: int = 5_000) -> dict:
    """How late walrewind observed each commit (stamp - COMMIT end), and what that costs.

    A target T is judged inexact when a transaction ended before T - 5 ms but was stamped after T,
    so every commit observed d > 5 ms late opens a window of d - 5 ms in which targets fail.
    """
    by_i = {t["i"]: t for t in txns}
    delays = sorted(((stamps[i] - by_i[i]["end"]), i) for i in stamps)
    ds = [d / 1000 for d, _ in delays]
    span = txns[-1]["end"] - txns[1]["begin"]
    # union of the failing windows (end + margin, stamp) over all transactions
    windows = sorted((by_i[i]["end"] + margin_us, stamps[i]) for i in stamps if stamps[i] - by_i[i]["end"] > margin_us)
    covered, cur_lo, cur_hi = 0, None, None
    for lo, hi in windows:
        if cur_hi is None or lo > cur_hi:
            if cur_hi is not None:
                covered += cur_hi - cur_lo
            cur_lo, cur_hi = lo, hi
        else:
            cur_hi = max(cur_hi, hi)
    if cur_hi is not None:
        covered += cur_hi - cur_lo
    # when did segment uploads become visible (ctime of the object)?  Late observations that
    # cluster around uploads point at the uploader thread starving the tail thread.
    uploads = sorted(ct for _f, _l, ct in walrewind_visible_times(rep)[1])

    def nearest_upload(us: int) -> float | None:
        k = bisect.bisect_left(uploads, us)
        cands = [uploads[x] - us for x in (k - 1, k) if 0 <= x < len(uploads)]
        return min(cands, key=abs) / 1000 if cands else None

    late = [(d, i) for d, i in delays if d > margin_us]
    near = [nearest_upload(by_i[i]["end"]) for _d, i in late]
    worst = [{"i": i, "end": by_i[i]["end"], "stamp": stamps[i], "delay_ms": d / 1000,
              "end_text": rfc3339(by_i[i]["end"]), "kind": by_i[i].get("kind"),
              "upload_visible_minus_end_ms": nearest_upload(by_i[i]["end"])} for d, i in delays[-10:]][::-1]
    return {
        "n": len(ds), "p50_ms": pct(ds, 50), "p99_ms": pct(ds, 99), "p999_ms": pct(ds, 99.9),
        "max_ms": ds[-1] if ds else float("nan"), "over_margin": sum(1 for d in ds if d > margin_us / 1000),
        "failing_fraction": covered / span if span > 0 else float("nan"), "worst": worst,
        "negative": sum(1 for d in ds if d < 0),
        "late_within_100ms_of_upload": sum(1 for x in near if x is not None and abs(x) <= 100),
        "late_upload_offsets_ms": near,
    }


def print_delays(name: str, dl: dict) -> None:
    log(f"  {name}: commit observed late by p50 {dl['p50_ms']:.2f} ms, p99 {dl['p99_ms']:.2f} ms, "
        f"max {dl['max_ms']:.1f} ms; {dl['over_margin']}/{dl['n']} commits > 5 ms late -> "
        f"{100 * dl['failing_fraction']:.2f}% of the timeline cannot restore exactly; "
        f"{dl['late_within_100ms_of_upload']}/{dl['over_margin']} late commits within 100 ms of a segment upload")


# ------------------------------------------------------------------------------------ runs
def walrewind_run(d: str, cfg: dict, interval: float) -> tuple[list[dict], str]:
    db, rep, state, logp = (os.path.join(d, n) for n in ("app.db", "rep", "state", "writer.log"))
    os.makedirs(d, exist_ok=True)
    create_db(db)
    with DaemonLog() as dlog, DaemonThread(db, rep, state, upload_interval=interval) as sh:
        run_writer({"db": db, "log": logp, **cfg}, timeout=cfg["duration"] + 600)
        time.sleep(2 * interval + 0.5)
    st = sh.stats
    if dlog.messages:
        ANOMALIES.append(f"walrewind run {d}: daemon logged {dlog.summary()}")
    log(f"  walrewind: {st.transactions} transactions shipped in {st.segments} segments, resyncs={st.resyncs}, "
        f"yields={st.yields}, releases={st.releases}, upload_errors={st.upload_errors}")
    if st.resyncs or st.upload_errors:
        ANOMALIES.append(f"walrewind run {d}: resyncs={st.resyncs} upload_errors={st.upload_errors} {st.last_error!r}")
    txns, _ = read_log(logp)
    return txns, rep


def litestream_run(d: str, cfg: dict, interval: float) -> tuple[list[dict], Litestream]:
    db, rep, logp = (os.path.join(d, n) for n in ("app.db", "rep", "writer.log"))
    os.makedirs(d, exist_ok=True)
    create_db(db)
    ls = Litestream(db, rep, interval=interval).start()
    try:
        time.sleep(1.5)
        run_writer({"db": db, "log": logp, **cfg}, timeout=cfg["duration"] + 600)
        ls.wait_synced()
    finally:
        rc = ls.stop()
    if rc:
        ANOMALIES.append(f"litestream exited with {rc}; see {ls.log_path}")
    log(f"  litestream: {len(ls.ltx_files(0))} L0 files")
    txns, _ = read_log(logp)
    return txns, ls


def judge_walrewind_checksums(d: str, txns: list[dict], rep: str, targets) -> list[dict]:
    storage = open_storage(rep, create=False)
    out = os.path.join(d, "restored.db")
    verdicts = []
    stamps = observed_stamps(rep, txns)
    by_i = {t["i"]: t for t in txns}
    sums = {t["i"]: t["checksum"] for t in txns}
    for n, (frac, whole) in enumerate(targets):
        t = absolute(txns, frac, whole)
        remove_db(out)
        entry = {"target": t, "target_text": rfc3339(t), "whole": whole}
        try:
            res = restore(storage, out, target_us=t)
            v = judge(out, res.page_size, txns, txns[0]["checksum"], t, EXACT_MARGIN_US)
            # Transactions that changed nothing share their predecessor's checksum, so a restored file
            # can equal several logged states: take the one nearest the allowed range (judge() says
            # exact when any of them is inside it).
            got = f"{res.checksum:016x}"
            matches = [k for k in [0] + [x["i"] for x in txns[1:]] if sums[k] == got]
            lo, hi = v.allowed
            k = min(matches, key=lambda m: 0 if lo <= m <= hi else min(abs(m - lo), abs(m - hi))) if matches else None
            if v.exact and k is not None and not lo <= k <= hi:
                k = next(m for m in matches if lo <= m <= hi)
            dtx, dms = distance(txns, k, lo, hi, t)
            entry.update(exact=v.exact, restored=k, allowed=list(v.allowed), dtx=dtx, dms=dms,
                         txid=res.txid, warnings=res.warnings)
            if v.restored_index is None:
                ANOMALIES.append(f"walrewind target {t} ({rfc3339(t)}): restored a state the writer never had")
        except Exception as exc:  # recorded and reported, never hidden
            entry.update(exact=False, restored=None, allowed=list(allowed_range(txns, t)), dtx=None, dms=None,
                         error=f"{type(exc).__name__}: {exc}")
            ANOMALIES.append(f"walrewind restore at {t} ({rfc3339(t)}) raised {entry['error']}")
        verdicts.append(entry)
        if not entry["exact"]:
            k, (lo, hi) = entry["restored"], entry["allowed"]
            why = ""
            if k is not None and k < lo:
                miss = [j for j in range(k + 1, lo + 1) if j in stamps]
                entry["missing"] = [{"i": j, "begin": by_i[j]["begin"], "end": by_i[j]["end"], "stamp": stamps[j],
                                     "ended_before_T_ms": (t - by_i[j]["end"]) / 1000,
                                     "stamped_after_T_ms": (stamps[j] - t) / 1000} for j in miss]
                why = "; ".join(f"txn {m['i']} COMMIT returned {m['ended_before_T_ms']:.2f} ms before T but was "
                                f"stamped {m['stamped_after_T_ms']:.2f} ms after T" for m in entry["missing"])
            log(f"  INEXACT walrewind #{n} T={t} ({rfc3339(t)}): restored {k} allowed {entry['allowed']} "
                f"{entry.get('error') or ''}{why}")
    remove_db(out)
    return verdicts


def judge_by_rows(d: str, txns: list[dict], targets, restore_fn, tool: str) -> list[dict]:
    """Insert-only workload: the restored max(id) is the transaction the restore reached."""
    out = os.path.join(d, "restored.db")
    verdicts = []
    for n, (frac, whole) in enumerate(targets):
        t = absolute(txns, frac, whole)
        remove_db(out)
        lo, hi = allowed_range(txns, t)
        entry = {"target": t, "target_text": rfc3339(t), "whole": whole, "allowed": [lo, hi]}
        try:
            restore_fn(out, t)
            count, top = table_state(out)
            if count != top:
                ANOMALIES.append(f"{tool} target {t}: restored count(*)={count} but max(id)={top}")
            dtx, dms = distance(txns, top, lo, hi, t)
            entry.update(exact=lo <= top <= hi, restored=top, dtx=dtx, dms=dms)
        except Exception as exc:
            entry.update(exact=False, restored=None, dtx=None, dms=None, error=f"{type(exc).__name__}: {exc}")
            ANOMALIES.append(f"{tool} restore at {t} ({rfc3339(t)}) failed: {entry['error'][:300]}")
        verdicts.append(entry)
    remove_db(out)
    return verdicts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--duration", type=float, help="seconds of writing (default 60; quick 15)")
    ap.add_argument("--targets", type=int, help="restore targets (default 100; quick 30)")
    ap.add_argument("--rate", type=float, default=100, help="transactions per second (default 100)")
    ap.add_argument("--seed", type=int, default=2024, help="workload and target seed")
    ap.add_argument("--upload-interval", type=float, default=1.0)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--compare-litestream", action="store_true")
    ap.add_argument("--skip-mixed", action="store_true", help="skip part A (only the insert-only comparison)")
    ap.add_argument("--json", help="write every target and verdict here")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    a = ap.parse_args()
    duration = a.duration or (15 if a.quick else 60)
    ntargets = a.targets or (30 if a.quick else 100)
    if a.compare_litestream:
        require_litestream()
    base = workdir("accuracy")
    log(f"scratch directory {base}; {duration:g}s at {a.rate:g} txn/s, {ntargets} targets, seed {a.seed}")
    targets = make_targets(ntargets, a.seed)
    summaries, details, delays = [], {}, {}
    try:
        if not a.skip_mixed:
            log("part A: walrewind, mixed workload with checksums")
            cfg = {"rate": a.rate, "duration": duration, "seed": a.seed, "checksums": True}
            d = os.path.join(base, "mixed")
            txns, rep = walrewind_run(d, cfg, a.upload_interval)
            log(f"  writer: {len(txns) - 1} transactions; restoring {ntargets} targets")
            v = judge_walrewind_checksums(d, txns, rep, targets)
            summaries.append(summarize("walrewind (mixed workload, checksum)", v))
            details["walrewind-mixed"] = v
            delays["walrewind (mixed workload)"] = stamp_delays(txns, observed_stamps(rep, txns), rep)
            print_delays("walrewind (mixed workload)", delays["walrewind (mixed workload)"])
            shutil.rmtree(d)
        if a.compare_litestream:
            cfg = {"rate": a.rate, "duration": duration, "seed": a.seed, "checksums": True, **INSERT_ONLY}
            log("part B: walrewind, insert-only workload")
            d = os.path.join(base, "wr-insert")
            txns, rep = walrewind_run(d, cfg, a.upload_interval)
            storage = open_storage(rep, create=False)
            v = judge_by_rows(d, txns, targets, lambda out, t: restore(storage, out, target_us=t), "walrewind")
            # the same restores judged by checksum too, as a cross-check of the row-based oracle
            vc = judge_walrewind_checksums(d, txns, rep, targets)
            delays["walrewind (insert-only)"] = stamp_delays(txns, observed_stamps(rep, txns), rep)
            print_delays("walrewind (insert-only)", delays["walrewind (insert-only)"])
            summaries.append(summarize("walrewind (insert-only, rows)", v))
            summaries.append(summarize("walrewind (insert-only, checksum)", vc))
            details["walrewind-insert"] = v
            shutil.rmtree(d)
            log("part B: litestream, insert-only workload")
            d = os.path.join(base, "ls-insert")
            txns_ls, ls = litestream_run(d, cfg, a.upload_interval)

            def ls_restore(out: str, t: int) -> None:
                _s, proc = litestream_restore(ls.url, out, timestamp_us=t)
                if proc.returncode != 0:
                    raise RuntimeError(proc.stderr.strip())

            v = judge_by_rows(d, txns_ls, targets, ls_restore, "litestream")
            summaries.append(summarize(f"litestream {litestream_version()} (insert-only, rows)", v))
            details["litestream-insert"] = v
            shutil.rmtree(d)
    finally:
        if not a.keep:
            shutil.rmtree(base, ignore_errors=True)
    rows = [[s["tool"], f"{s['exact']}/{s['n']}", fmt(s["pct"]), f"{s['exact_whole']}/{s['n_whole']}",
             f"{s['exact_frac']}/{s['n_frac']}", f"{fmt(s['med_dtx'])} / {fmt(s['med_dms'])}",
             f"{fmt(s['med_dtx_whole'])} / {fmt(s['med_dms_whole'])}", f"{fmt(s['med_dtx_frac'])} / {fmt(s['med_dms_frac'])}",
             f"{fmt(s['med_dtx_inexact'])} / {fmt(s['med_dms_inexact'])}", fmt(s["max_dtx"]), s["errors"]]
            for s in summaries]
    print(f"\npoint-in-time accuracy: {duration:g}s at {a.rate:g} txn/s, {ntargets} targets (seed {a.seed}), "
          f"upload/sync interval {a.upload_interval:g}s; exact = within harness.allowed_range (5 ms margin)")
    print(table(["restores", "exact", "%", "whole-s", "fractional", "median dist txn / ms", "whole-s only",
                 "fractional only", "inexact only", "max dist txn", "errors"], rows))
    print("distance = how far the restored state is from the allowed range: transactions missing (or extra), and how"
          " long before T the oldest missing one committed (or after T the newest extra one began)")
    if delays:
        print("\nwhy walrewind misses: commit observed late = daemon's commit stamp - writer's COMMIT end")
        print(table(["run", "commits", "p50 ms", "p99 ms", "p99.9 ms", "max ms", "> 5 ms late",
                     "of which <=100 ms from an upload", "timeline inexact %"],
                    [[k, dl["n"], fmt(dl["p50_ms"], 2), fmt(dl["p99_ms"], 2), fmt(dl["p999_ms"], 2), fmt(dl["max_ms"], 1),
                      dl["over_margin"], dl["late_within_100ms_of_upload"], fmt(100 * dl["failing_fraction"], 2)]
                     for k, dl in delays.items()]))
        for k, dl in delays.items():
            print(f"  {k}, latest observations: " + ", ".join(
                f"txn {w['i']} +{w['delay_ms']:.1f} ms at {w['end_text']}" for w in dl["worst"][:5]))
    bad = [(k, e) for k, vs in details.items() if k.startswith("walrewind") for e in vs if not e["exact"]]
    if bad:
        print("\ninexact walrewind restores (seed %d):" % a.seed)
        for k, e in bad:
            miss = "; ".join(f"txn {m['i']} ended {m['ended_before_T_ms']:.2f} ms before T, stamped "
                             f"{m['stamped_after_T_ms']:.2f} ms after T" for m in e.get("missing", []))
            print(f"  {k}: T={e['target']} ({e['target_text']}) restored {e['restored']} allowed {e['allowed']}"
                  f" {e.get('error') or ''}{miss}")
    report_anomalies(ANOMALIES, "no resyncs, no upload errors, no restore errors, every restored state existed")
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"summaries": summaries, "targets": details, "stamp_delays": delays, "anomalies": ANOMALIES},
                      f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
