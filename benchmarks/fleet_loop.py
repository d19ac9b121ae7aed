#!/usr/bin/env python
"""The fleet's loop alone (the main thread of a many-database daemon): CPU per second at N sqld
namespaces, without the 2,000 other threads of many_namespaces.py.

    .venv/bin/python benchmarks/fleet_loop.py [--namespaces 1000] [--written 100] [--seconds 20]
        [--runs 3] [--cprofile]

A sqld-layout data directory of N ready namespaces (a 100-byte WAL-mode SQLite header, empty
-wal and -shm, stats.json's id: what ``NamespaceWatcher`` looks at) and ``Fleet.run`` with each
member's worker replaced by a stand-in that is ready at once: its replicator has real
``ReplicatorStats`` and no threads.  Everything the fleet's thread does is real (the listing of
dbs/, the file checks, the health file, the heap trim); the workers' threads are not there.
``--written``: that many members' counters move every second (a commit read, then uploaded 0.3 s
later), as a 1 txn/s writer's would.  Printed: the fleet thread's CPU % of a core (its thread
clock) over ``--seconds`` after every member replicates, idle and writing, medians of
``--runs``; ``--cprofile`` prints the fleet thread's profile of the last run.  Why: in the full
benchmark the fleet loop is 1-3 % of a core among 2,000 threads, too small to resolve there.
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from _procwatch import profile_table as table  # noqa: E402
from walrewind.engine.daemon import fleet as fleet_module  # noqa: E402
from walrewind.engine.daemon import members as members_module  # noqa: E402
from walrewind.engine.daemon.health import HealthFile  # noqa: E402
from walrewind.engine.daemon.stats import ReplicatorStats  # noqa: E402
from walrewind.engine.workspace.config import SqldConfig  # noqa: E402

HEADER = b"SQLite format 3\x00" + b"\x10\x00\x02\x02" + bytes(80)  # page size 4096, WAL mode


def make_data_dir(data_dir: str, n: int) -> None:
    for i in range(n):
        d = os.path.join(data_dir, "dbs", f"ns{i:04d}")
        os.makedirs(d)
        with open(os.path.join(d, "data"), "wb") as f:
            f.write(HEADER + bytes(4096 - len(HEADER)))
        for suffix in ("-wal", "-shm"):
            open(os.path.join(d, "data" + suffix), "wb").close()
        with open(os.path.join(d, "stats.json"), "w") as f:
            json.dump({"id": str(uuid.UUID(int=i + 1, version=4))}, f)


class StandInReplicator:
    """What the fleet and samples.py read of a replicator, with no threads behind it."""

    def __init__(self) -> None:
        self.stats = ReplicatorStats()
        self.ready = threading.Event()
        self.ready.set()
        self.capturing = threading.Event()
        self.startup_done = True
        self.startup = None
        self.maintenance = None
        self.fatal = self.overflow = self.pending_snapshot = None
        self.pending_snapshot_ts = 0
        self.observations: list = []
        self.lag = 0.0

    def lag_seconds(self, now_us=None):
        return self.lag

    def phase_with(self, lag):
        return "replicating"

    def stop(self) -> None:
        pass


class StandInWorker:
    def __init__(self, db, takeover, wake, note, new_generation_reason=None) -> None:
        self.db, self.wake = db, wake
        self.replicator = StandInReplicator()
        self.error = None
        self.done = False
        self.ready = True
        self.offline = False
        self.transactions = self.uploaded_txid = 0

    def start(self) -> None:
        pass

    def stop(self) -> None:
        self.done = True
        self.wake.set()

    def join(self) -> None:
        pass


def write(fleet, written: int, stop: threading.Event) -> None:
    """Every second, each written member reads one commit and uploads it 0.3 s later."""
    while not stop.wait(0.7):
        rs = [m.worker.replicator for m in list(fleet._members.values())[:: max(1, len(fleet._members) // written)]
              if m.worker is not None][:written]
        for r in rs:
            r.stats.transactions += 1
            r.stats.last_txid += 1
            r.lag = 0.2
        if stop.wait(0.3):
            return
        for r in rs:
            r.stats.uploaded_txid = r.stats.last_txid
            r.stats.last_upload_us = time.time_ns() // 1000
            r.lag = 0.0


def one_run(a: argparse.Namespace, base: str, profile: bool) -> tuple[float, float, dict | None]:
    data_dir = os.path.join(base, "data")
    sqld = SqldConfig(data_dir=data_dir, replica=f"file://{base}/replica", state_dir=os.path.join(base, "state"))
    fleet = fleet_module.Fleet([], sqld=sqld, health=HealthFile(os.path.join(base, "fleets")))
    out: dict = {}
    prof = cProfile.Profile(time.thread_time) if profile else None

    def run() -> None:
        if prof is not None:
            prof.enable()
        try:
            fleet.run(install_signal_handlers=False)
        finally:
            if prof is not None:
                prof.disable()

    t = threading.Thread(target=run, name="fleet")
    t.start()
    deadline = time.monotonic() + 120
    while sum(m.state == "replicating" for m in list(fleet._members.values())) < a.namespaces:
        if time.monotonic() > deadline:
            raise SystemExit("the members did not all replicate")
        time.sleep(0.1)
    clock = time.pthread_getcpuclockid(t.ident)
    time.sleep(a.settle)
    for window in ("idle", "writing"):
        stop = threading.Event()
        writer = threading.Thread(target=write, args=(fleet, a.written, stop)) if window == "writing" else None
        if writer is not None:
            writer.start()
        c0, w0 = time.clock_gettime(clock), time.monotonic()
        if prof is not None and window == "idle":
            before = table(prof)
        time.sleep(a.seconds)
        out[window] = 100 * (time.clock_gettime(clock) - c0) / (time.monotonic() - w0)
        stop.set()
        if writer is not None:
            writer.join()
    rows = None
    if prof is not None:
        rows = {k: (c - before.get(k, (0, 0, 0))[0], i - before.get(k, (0, 0, 0))[1], tt - before.get(k, (0, 0, 0))[2])
                for k, (c, i, tt) in table(prof).items()}
    fleet.stop()
    t.join()
    return out["idle"], out["writing"], rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--namespaces", type=int, default=1000)
    ap.add_argument("--written", type=int, default=100)
    ap.add_argument("--seconds", type=float, default=20.0)
    ap.add_argument("--settle", type=float, default=3.0)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--cprofile", action="store_true", help="profile the fleet thread (the last run, both windows)")
    a = ap.parse_args()
    members_module.ThreadWorker = StandInWorker  # type: ignore[misc]
    fleet_module.ThreadWorker = StandInWorker  # type: ignore[misc]
    idle, writing = [], []
    for i in range(a.runs):
        base = tempfile.mkdtemp(prefix="walrewind-fleet-loop-")
        try:
            make_data_dir(os.path.join(base, "data"), a.namespaces)
            profile = a.cprofile and i == a.runs - 1
            x, y, rows = one_run(a, base, profile)
            idle.append(x)
            writing.append(y)
            print(f"run {i + 1}: fleet thread {x:.2f} % idle, {y:.2f} % writing", flush=True)
            if rows is not None:
                print("both windows, the fleet thread: inline s, cumulative s, calls")
                for key, (calls, inline, total) in sorted(rows.items(), key=lambda kv: -kv[1][1])[:30]:
                    print(f"{inline:8.3f} {total:8.3f} {calls:8d}  {key}")
        finally:
            shutil.rmtree(base, ignore_errors=True)
    print(f"fleet thread, {a.namespaces} namespaces ({a.written} written), medians of {a.runs}: "
          f"idle {statistics.median(idle):.2f} %, writing {statistics.median(writing):.2f} % of a core")


if __name__ == "__main__":
    main()
