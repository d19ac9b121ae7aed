"""_daemon_proc.py with the CPU time of each of the daemon's threads (and optionally a profile).

    WALREWIND_DAEMON_PROC=benchmarks/_daemon_profile.py daemon_bench.py steady --no-litestream
    PROF_MODE=cpu ...      # thread CPU only (no profiler overhead), printed as THREADCPU in the log
    PROF_OUT=/tmp/prof ... # else cProfile with a thread-CPU timer: /tmp/prof.observer, .reader, .uploader

py-spy counts a thread sleeping in epoll as busy; per-thread CPU time is what the cost is.
cProfile inflates many small calls (the observer) far more than a few big ones (zstd, hashing):
read its proportions within a thread, and THREADCPU for the split between threads.
"""

from __future__ import annotations

import atexit
import cProfile
import functools
import os
import runpy
import sys
import time

from walrewind.engine.daemon import observer, replicator, uploader

HERE = os.path.dirname(os.path.abspath(__file__))
PREFIX = os.environ.get("PROF_OUT", "/tmp/walrewind-prof")
CPU_ONLY = os.environ.get("PROF_MODE") == "cpu"
RESULTS: dict[str, float] = {}


def wrap(cls, name: str, label: str) -> None:
    orig = getattr(cls, name)

    @functools.wraps(orig)
    def run(self, *args, **kwargs):
        start = time.thread_time()
        profile = None if CPU_ONLY else cProfile.Profile(timer=time.thread_time)
        try:
            return orig(self, *args, **kwargs) if profile is None else profile.runcall(orig, self, *args, **kwargs)
        finally:
            RESULTS[label] = round(time.thread_time() - start, 3)
            if profile is not None:
                profile.dump_stats(f"{PREFIX}.{label}")

    setattr(cls, name, run)


wrap(observer.Observer, "run", "observer")
wrap(uploader.Uploader, "run", "uploader")
wrap(replicator.Replicator, "_tail_loop", "reader")
atexit.register(lambda: print("THREADCPU", RESULTS, file=sys.stderr))
runpy.run_path(os.path.join(HERE, "_daemon_proc.py"), run_name="__main__")
