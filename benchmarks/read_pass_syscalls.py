#!/usr/bin/env python
"""What one read pass costs: system calls and Python-level calls per pass, for a slow writer.

    .venv/bin/python benchmarks/read_pass_syscalls.py [--rate 1.25] [--seconds 24] [--strace] [--count]

One library daemon (``Replicator``, in a thread of this process, set up as a *many* process:
fleet.prepare_process(many=True), so a slow writer's pin is taken, read, verified, spooled and
released in one pass, as for issue 12's written namespaces) tails one database written by
tests/writer.py at ``--rate`` txn/s.  Over the write window it prints, per read pass that read
something (``Reader.read_pass`` returning > 0):

* the reader thread's CPU (thread CPU clock; take it from a run without ``--strace``/``--count``,
  which inflate it);
* ``--count``: the reader thread's calls of os.pread/os.stat/os.fstat/fcntl.fcntl made from Python
  and of ShmObserver.header, Reader.observe, Reader.caught_up, WalFile.read_at, ReadPin.acquire;
* ``--strace``: every system call of the reader thread (``strace -c -p TID``), SQLite's included
  (``STRACE_ARGS="-e trace=pread64,fcntl"``: each call listed instead, in the run's strace.txt).
"""

from __future__ import annotations

import argparse
import collections
import fcntl
import functools
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "tests"))

from walrewind.engine.daemon import fleet  # noqa: E402
from walrewind.engine.daemon.reader import Reader  # noqa: E402
from walrewind.engine.daemon.replicator import Replicator  # noqa: E402
from walrewind.engine.sqlite.pin import ReadPin  # noqa: E402
from walrewind.engine.sqlite.shm import ShmObserver  # noqa: E402
from walrewind.engine.sqlite.walfile import WalFile  # noqa: E402
from walrewind.engine.storage import open_storage  # noqa: E402

WRITER = os.path.join(ROOT, "tests", "writer.py")
COUNTS: collections.Counter = collections.Counter()
READER: list[int] = []  # the reader thread's ident, once known


def counted(name: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        if READER and threading.get_ident() == READER[0]:
            COUNTS[name] += 1
        return fn(*args, **kwargs)
    return wrapper


def instrument() -> None:
    for mod, name in ((os, "pread"), (os, "stat"), (os, "fstat"), (fcntl, "fcntl")):
        setattr(mod, name, counted(f"{mod.__name__}.{name}", getattr(mod, name)))
    for cls, name in ((ShmObserver, "header"), (Reader, "observe"), (Reader, "caught_up"), (WalFile, "read_at"),
                      (ReadPin, "acquire"), (Reader, "tick")):
        setattr(cls, name, counted(f"{cls.__name__}.{name}", getattr(cls, name)))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rate", type=float, default=1.25, help="writer txn/s (< 2: released in the pass, §15)")
    ap.add_argument("--seconds", type=float, default=24.0)
    ap.add_argument("--strace", action="store_true", help="count the reader thread's system calls with strace")
    ap.add_argument("--count", action="store_true", help="count Python-level calls on the reader thread")
    args = ap.parse_args()

    tmp = tempfile.mkdtemp(prefix="walrewind-readpass-")
    db = os.path.join(tmp, "app.db")
    subprocess.run([sys.executable, WRITER, json.dumps({"db": db, "txns": 1})], check=True)
    fleet.prepare_process(many=True)
    passes = [0, 0]  # read passes, of which read something

    original = Reader.read_pass

    def read_pass(self) -> int:
        n = original(self)
        passes[0] += 1
        passes[1] += n > 0
        return n

    Reader.read_pass = read_pass
    if args.count:
        instrument()
    daemon = Replicator(db, open_storage(os.path.join(tmp, "replica")), state_dir=os.path.join(tmp, "state"))
    thread = threading.Thread(target=daemon.run, name="walrewind-app.db")
    thread.start()
    if not daemon.ready.wait(60):
        raise SystemExit("the daemon did not get ready")
    READER.append(thread.ident)
    time.sleep(1.0)
    clock = time.pthread_getcpuclockid(thread.ident)
    strace = None
    if args.strace:
        out = os.path.join(tmp, "strace.txt")
        strace = subprocess.Popen(["strace", *os.environ.get("STRACE_ARGS", "-c").split(), "-o", out, "-p", str(thread.native_id)], stderr=subprocess.DEVNULL)
        time.sleep(0.5)
    writer = subprocess.Popen([sys.executable, WRITER, json.dumps({"db": db, "rate": args.rate, "duration": args.seconds})])
    COUNTS.clear()
    p0, cpu0 = list(passes), time.clock_gettime(clock)
    writer.wait()
    time.sleep(1.5)  # the last commit's pass
    p1, cpu1 = list(passes), time.clock_gettime(clock)
    counts = dict(COUNTS)
    if strace is not None:
        strace.send_signal(signal.SIGINT)
        strace.wait(30)
    daemon.stop()
    thread.join(60)
    reading = p1[1] - p0[1]
    print(f"read passes: {p1[0] - p0[0]} ({reading} read commits); "
          f"transactions: {daemon.stats.transactions}")
    if reading:
        cpu = cpu1 - cpu0
        print(f"reader thread CPU: {cpu * 1e3:.1f} ms, {cpu / reading * 1e6:.0f} us per reading pass"
              + (" (inflated by --count/--strace)" if args.count or args.strace else ""))
        for name, n in sorted(counts.items()):
            print(f"  {name:24s} {n:6d}  {n / reading:5.2f} per pass")
    if strace is not None:
        print(f"strace -c of the reader thread (per reading pass: calls / {reading}):")
        with open(out) as f:
            for line in f:
                fields = line.split()
                if len(fields) >= 5 and fields[3].isdigit() and reading:
                    print(f"  {fields[-1]:16s} {int(fields[3]):6d}  {int(fields[3]) / reading:5.2f} per pass")


if __name__ == "__main__":
    main()
