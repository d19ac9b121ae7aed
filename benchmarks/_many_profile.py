"""`walrewind` with every thread under cProfile (thread-CPU timer), for many_namespaces.py --cprofile.

    python benchmarks/_many_profile.py OUT walrewind-args...

py-spy cannot keep up with the 2,000 threads of a 1,000-namespace daemon (it recorded the shutdown
only).  Here each thread profiles itself from its start; SIGUSR1 takes a snapshot of every
thread's table (``getstats``, no disable), SIGUSR2 a second one and writes OUT: per kind of
thread (its name), the CPU seconds per function between the two (inline and cumulative), so
start-up and the idle window are left out.  cProfile inflates many small calls more than a few
big ones: read proportions within a kind.
"""

from __future__ import annotations

import cProfile
import os
import signal
import sys
import threading
import time

OUT = sys.argv[1]
PROFILES: list[tuple[threading.Thread, cProfile.Profile]] = []
MARK: dict[int, dict] = {}


def kind(name: str) -> str:
    if name in ("MainThread",) or not name.startswith("walrewind-"):
        return name
    fixed = ("walrewind-observer", "walrewind-upload-pool", "walrewind-inotify", "walrewind-prober",
             "walrewind-maintenance", "walrewind-uploader")
    return name if name in fixed else "walrewind-<db> (reader)"


def label(code) -> str:
    if isinstance(code, str):
        return code
    return f"{code.co_qualname} ({os.path.basename(code.co_filename)}:{code.co_firstlineno})"


def table(profile: cProfile.Profile) -> dict:
    return {label(e.code): (e.callcount, e.inlinetime, e.totaltime) for e in profile.getstats()}


def on_start(_sig, _frame) -> None:
    MARK.clear()
    for i, (_thread, profile) in enumerate(list(PROFILES)):
        MARK[i] = table(profile)


def on_end(_sig, _frame) -> None:
    by_kind: dict[str, dict[str, list[float]]] = {}
    for i, (thread, profile) in enumerate(list(PROFILES)):
        before = MARK.get(i, {})
        rows = by_kind.setdefault(kind(thread.name), {})
        for key, (calls, inline, total) in table(profile).items():
            c0, i0, t0 = before.get(key, (0, 0.0, 0.0))
            row = rows.setdefault(key, [0, 0.0, 0.0])
            row[0] += calls - c0
            row[1] += inline - i0
            row[2] += total - t0
    with open(OUT, "w") as f:
        for k, rows in sorted(by_kind.items(), key=lambda kv: -sum(r[1] for r in kv[1].values())):
            cpu = sum(r[1] for r in rows.values())
            f.write(f"== {k}: {cpu:.3f} s inline in all\n")
            for title, col in (("inline", 1), ("cumulative", 2)):
                f.write(f"-- by {title}\n")
                for key, r in sorted(rows.items(), key=lambda kv: -kv[1][col])[:40]:
                    if r[col] < 0.001:
                        break
                    f.write(f"{r[1]:9.3f} {r[2]:9.3f} {r[0]:9d}  {key}\n")


_run = threading.Thread.run


def run(self) -> None:
    profile = cProfile.Profile(time.thread_time)
    PROFILES.append((self, profile))
    profile.enable()
    try:
        _run(self)
    finally:
        profile.disable()


threading.Thread.run = run
signal.signal(signal.SIGUSR1, on_start)
signal.signal(signal.SIGUSR2, on_end)
main_profile = cProfile.Profile(time.thread_time)
PROFILES.append((threading.main_thread(), main_profile))
sys.argv = ["walrewind"] + sys.argv[2:]
from walrewind.cli.main import main  # noqa: E402

main_profile.enable()
main()
