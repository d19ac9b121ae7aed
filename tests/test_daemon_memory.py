"""The daemon's malloc tuning: applied once, trims at most once a period, off by request."""

from __future__ import annotations

import subprocess
import sys

from walrewind.engine.daemon import memory


def test_trimmer_trims_once_per_period():
    trimmer = memory.HeapTrimmer(period=60.0)
    start = trimmer._next - 60.0
    trimmer.tick(start + 1.0)
    assert trimmer.trims == 0
    trimmer.tick(start + 60.0)
    trimmer.tick(start + 61.0)
    expected = 1 if memory._glibc() is not None else 0
    assert trimmer.trims == expected
    trimmer.tick(start + 121.0)
    assert trimmer.trims == 2 * expected


def _in_fresh_process(code: str, tuning: str) -> str:
    env = {"PATH": "/usr/bin:/bin", "WALREWIND_MALLOC_TUNING": tuning}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout.strip()


def test_configure_applies_on_glibc_and_can_be_turned_off():
    code = "from walrewind.engine.daemon import memory; print(memory.configure(), memory.configure())"
    on = _in_fresh_process(code, "1")
    if memory._glibc() is None:  # not glibc: nothing to tune
        assert on == "False False"
    else:
        assert on == "True True"  # the second call is a no-op that still answers
    assert _in_fresh_process(code, "0") == "False False"


def test_small_sqlite_connections_only_when_none_is_open():
    """A many-database process gives SQLite connections no lookaside: refused (nothing changes)
    while a connection is open, applied once none is; a connection opened then costs SQLite
    less than a quarter of what it did."""
    code = """
import apsw
from walrewind.engine.daemon import memory
def cost():
    used = apsw.status(apsw.SQLITE_STATUS_MEMORY_USED)[0]
    conn = apsw.Connection(":memory:")
    return apsw.status(apsw.SQLITE_STATUS_MEMORY_USED)[0] - used, conn
before, open_one = cost()
refused = memory.small_sqlite_connections()
open_one.close()
applied = memory.small_sqlite_connections()
after, _ = cost()
print(refused, applied, after * 4 < before)
"""
    assert _in_fresh_process(code, "1") == "False True True"
