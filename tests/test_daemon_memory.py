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
