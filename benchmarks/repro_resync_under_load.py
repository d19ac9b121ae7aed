#!/usr/bin/env python
"""Reproduction: the daemon loses history (RESYNC) under a writer running flat out, while attached.

    python benchmarks/repro_resync_under_load.py [--runs 5] [--seconds 5]

Each run creates an empty database, attaches the daemon (in-process, upload interval 1 s), and
runs tests/writer.py as fast as it can (64 rows of 4000 random bytes per transaction, SQLite's
default autocheckpoint).  Nothing else touches the database and the daemon is never stopped, so
stats.resyncs should stay 0 and every commit should get its own txid.  The script prints, per run,
the resync count, how many txids the replica holds for how many commits, the largest -wal file seen
(and the same writer's without the daemon, first run), the writer's WAL throughput and the
daemon's warnings; it exits 1 if any run had a RESYNC.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time

from _common import (
    DaemonLog,
    DaemonThread,
    WalSampler,
    create_db,
    read_log,
    run_writer,
    workdir,
)

WORKLOAD = {"rate": 0, "row_bytes": 4000, "big_every": 1, "big_rows": 64, "seed": 101}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--seconds", type=float, default=5)
    a = ap.parse_args()
    bad = 0
    d = workdir("repro-base")
    db, logp = os.path.join(d, "app.db"), os.path.join(d, "writer.log")
    create_db(db)
    with WalSampler(db, period=0.01) as wal:
        run_writer({"db": db, "log": logp, "duration": a.seconds, **WORKLOAD})
    txns, _ = read_log(logp)
    print(f"without daemon: {len(txns) - 1} commits, max -wal {wal.max_mb:.1f} MB")
    shutil.rmtree(d)
    for n in range(a.runs):
        d = workdir("repro")
        db, rep, state, logp = (os.path.join(d, x) for x in ("app.db", "rep", "state", "writer.log"))
        create_db(db)
        with DaemonLog() as dlog, DaemonThread(db, rep, state, upload_interval=1.0) as sh:
            base = sh.stats.last_txid
            with WalSampler(db, period=0.01) as wal:
                run_writer({"db": db, "log": logp, "duration": a.seconds, **WORKLOAD})
            time.sleep(3)
        txns, _ = read_log(logp)
        st = sh.stats
        commits = len(txns) - 1
        mb_s = st.wal_bytes / 1e6 / a.seconds
        print(
            f"run {n + 1}: {commits} commits ({mb_s:.0f} MB/s of WAL), replica txids {st.last_txid - base}, "
            f"resyncs={st.resyncs}, max -wal {wal.max_mb:.1f} MB"
        )
        for _t, level, msg in dlog.messages:
            print(f"    {level}: {msg}")
        bad += st.resyncs > 0
        shutil.rmtree(d)
    print(f"{bad}/{a.runs} runs lost history while the daemon was attached")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
