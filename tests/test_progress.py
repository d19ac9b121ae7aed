"""cli/progress.py: a progress line on a terminal only, with bytes, MB/s and ETA."""

from __future__ import annotations

import io

from walrewind.cli.progress import ProgressBar, human_bytes, human_seconds, progress_bar


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_nothing_on_a_pipe():
    out = io.StringIO()
    assert progress_bar(True, stream=out) is None
    assert progress_bar(False, stream=Tty()) is None
    bar = ProgressBar(stream=out)
    bar("snapshot", 5, 10)
    bar.close()
    assert out.getvalue() == ""


def test_bytes_rate_and_eta_on_a_terminal():
    out, clock = Tty(), Clock()
    bar = ProgressBar(stream=out, clock=clock, delay=1.0)
    bar("segments", 0, 300_000_000)
    clock.now += 0.5
    bar("segments", 10_000_000, 300_000_000)
    assert out.getvalue() == ""  # nothing for the first second: short restores stay quiet
    clock.now += 1.5  # 2 s after the transfer began, 100 MB done: 50 MB/s, 4 s left
    bar("snapshot", 100_000_000, 300_000_000)
    line = out.getvalue().split("\r")[-1]
    assert "100.0 MB / 300.0 MB" in line and "50.0 MB/s" in line and "ETA 0:04" in line and "snapshot" in line
    clock.now += 0.01
    bar("snapshot", 101_000_000, 300_000_000)  # throttled
    assert out.getvalue().count("\r") == 1
    clock.now += 0.5
    bar("check", 0, 300_000_000)
    assert "checking the restored database (300.0 MB)" in out.getvalue().split("\r")[-1]
    bar.close()
    assert out.getvalue().endswith("\r") and out.getvalue().split("\r")[-2].strip() == ""


def test_formatting():
    assert human_bytes(999) == "999 B" and human_bytes(1_500_000) == "1.5 MB" and human_bytes(3.2e9) == "3.2 GB"
    assert human_seconds(5) == "0:05" and human_seconds(3725) == "1:02:05"
