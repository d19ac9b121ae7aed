#!/usr/bin/env python
"""What a quiet database's heartbeat costs in a many-databases process.

    .venv/bin/python benchmarks/heartbeat_cost.py [--dbs 100] [--interval 5] [--seconds 30] [--cprofile]

``--dbs`` library daemons (``Replicator``) in threads of this process, set up as a *many* process
(fleet.prepare_process(many=True): the shared upload pool, the quiet reader's long sleep), each
on a database nobody writes, with a file replica and heartbeats every ``--interval`` seconds (at
1,000 namespaces and the default 60 s, ~17 heartbeats a second; 100 databases every 5 s make 20).
Over ``--seconds`` after every daemon is up and has heartbeated once, prints the heartbeats
written, the CPU of the upload pool's threads and of the readers' threads (a heartbeat may ask
its reader for a pass) per heartbeat, and the whole process's.  ``--cprofile``: the pool's
threads under cProfile (thread-CPU clock) over the window, top functions.
"""

from __future__ import annotations

import argparse
import cProfile
import os
import shutil
import sqlite3
import tempfile
import threading
import time

from _procwatch import profile_table as table
from walrewind.engine.daemon import fleet
from walrewind.engine.daemon.replicator import Replicator
from walrewind.engine.daemon.uploadloop import UploadPool
from walrewind.engine.storage import open_storage


def thread_cpu(threads) -> float:
    total = 0.0
    for t in threads:
        try:
            total += time.clock_gettime(time.pthread_getcpuclockid(t.ident))
        except (OSError, TypeError):
            pass
    return total


ON_WINDOW: list = []  # callables run as the measured window starts (a wrapper's counters reset)


def diff(before: list[dict], after: list[dict]) -> dict:
    rows: dict = {}
    for b, a in zip(before, after):
        for key, (calls, inline, total) in a.items():
            c0, i0, t0 = b.get(key, (0, 0.0, 0.0))
            row = rows.setdefault(key, [0, 0.0, 0.0])
            row[0] += calls - c0
            row[1] += inline - i0
            row[2] += total - t0
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--dbs", type=int, default=100)
    ap.add_argument("--interval", type=float, default=5.0, help="heartbeat interval (s)")
    ap.add_argument("--seconds", type=float, default=30.0)
    ap.add_argument("--cprofile", action="store_true")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="walrewind-beat-", dir=os.environ.get("BENCH_TMP") or None)
    fleet.prepare_process(many=True)
    profiles: list[cProfile.Profile] = []
    if args.cprofile:
        original = UploadPool._run

        def run(self) -> None:
            profile = cProfile.Profile(time.thread_time)
            profiles.append(profile)
            profile.enable()
            original(self)

        UploadPool._run = run
    daemons, threads = [], []
    try:
        for i in range(args.dbs):
            db = os.path.join(tmp, f"db{i}", "app.db")
            os.makedirs(os.path.dirname(db))
            con = sqlite3.connect(db)
            con.execute("PRAGMA journal_mode=WAL")
            con.execute("CREATE TABLE t (x)")
            con.execute("INSERT INTO t VALUES (1)")
            con.commit()
            con.close()
            d = Replicator(db, open_storage(os.path.join(tmp, f"db{i}", "replica")),
                           state_dir=os.path.join(tmp, f"db{i}", "state"), heartbeat_interval=args.interval,
                           lease_seconds=max(30.0, args.interval * 4))
            t = threading.Thread(target=d.run, name=f"walrewind-db{i}", daemon=True)
            t.start()
            daemons.append(d)
            threads.append(t)
        for d in daemons:
            if not d.ready.wait(120):
                raise SystemExit("a daemon did not get ready")
        time.sleep(args.interval * 1.5)  # every phase has come round once
        pool = [t for t in threading.enumerate() if t.name == "walrewind-upload-pool"]
        beats0 = sum(d.stats.heartbeats + d.stats.lease_renewals for d in daemons)
        hb0 = sum(d.stats.heartbeats for d in daemons)
        shared = UploadPool.shared()
        w0, s0 = shared.waits, shared.steps
        p0, r0, c0 = thread_cpu(pool), thread_cpu(threads), time.process_time()
        for fn in ON_WINDOW:
            fn()
        marks = [table(p) for p in profiles]  # (profiles are per thread: diffed, never cleared)
        time.sleep(args.seconds)
        p1, r1, c1 = thread_cpu(pool), thread_cpu(threads), time.process_time()
        waits, steps = shared.waits - w0, shared.steps - s0
        rows = diff(marks, [table(p) for p in profiles])
        beats = sum(d.stats.heartbeats + d.stats.lease_renewals for d in daemons) - beats0
        hbs = sum(d.stats.heartbeats for d in daemons) - hb0
        print(f"{args.dbs} quiet databases, heartbeat every {args.interval} s, {args.seconds} s: "
              f"{beats} beats ({hbs} heartbeats, {beats - hbs} lease renewals), {beats / args.seconds:.1f}/s")
        per = max(1, beats)
        print(f"upload pool ({len(pool)} threads): {(p1 - p0) / args.seconds * 100:.2f} % of a core, "
              f"{(p1 - p0) / per * 1e6:.0f} us per beat; {steps} steps, {waits} sleeps of a worker")
        print(f"readers: {(r1 - r0) / args.seconds * 100:.2f} % of a core, {(r1 - r0) / per * 1e6:.0f} us per beat")
        print(f"process: {(c1 - c0) / args.seconds * 100:.2f} % of a core, {(c1 - c0) / per * 1e6:.0f} us per beat")
        print(f"at 1,000 namespaces (16.7 beats/s): pool {(p1 - p0) / per * 16.7 * 100:.2f} %, "
              f"readers {(r1 - r0) / per * 16.7 * 100:.2f} %, process {(c1 - c0) / per * 16.7 * 100:.2f} %")
        if profiles:
            print("cProfile of the pool's threads over the window (us per beat: inline, cumulative, calls)")
            for col, title in ((1, "inline"), (2, "cumulative")):
                print(f"-- by {title}")
                for key, r in sorted(rows.items(), key=lambda kv: -kv[1][col])[:25]:
                    print(f"{r[1] / per * 1e6:9.1f} {r[2] / per * 1e6:9.1f} {r[0]:7d}  {key}")
    finally:
        for d in daemons:
            d.stop()
        for t in threads:
            t.join(60)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
