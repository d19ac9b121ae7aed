"""`walrewind replicate` in its own process, its stderr read line by line as it comes.

Tests wait on the daemon's own event lines ("replicating NAME", "NAME: FAILED ...") instead of
sleeping; every wait has a timeout and fails with everything the daemon said so far.
"""

from __future__ import annotations

import os
import select
import signal
import subprocess
import sys
import time

WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]


class Daemon:
    def __init__(self, args: list[str], cwd, env: dict) -> None:
        self.proc = subprocess.Popen(WALREWIND + args, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE, start_new_session=True)
        self.lines: list[str] = []
        self.seen_at: list[float] = []  # monotonic time each line was read
        self._buf = b""  # read from the pipe, not yet a whole line (no buffered file object: select must see it all)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def _read_line(self, deadline: float, what: str) -> None:
        fd = self.proc.stderr.fileno()
        while b"\n" not in self._buf:
            ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
            assert ready, f"timed out waiting for {what}; the daemon said so far:\n{''.join(self.lines)}"
            chunk = os.read(fd, 65536)
            assert chunk, f"the daemon exited ({self.proc.wait()}) before {what}:\n{''.join(self.lines)}"
            self._buf += chunk
        line, self._buf = self._buf.split(b"\n", 1)
        self.lines.append(line.decode("utf-8", "replace") + "\n")
        self.seen_at.append(time.monotonic())

    def wait_for(self, text: str, timeout: float = 60.0, count: int = 1) -> float:
        """Read stderr until ``count`` lines contain ``text``; returns when the last one was read."""
        deadline = time.monotonic() + timeout
        while sum(text in line for line in self.lines) < count:
            self._read_line(deadline, f"{text!r} (x{count})")
        return [t for line, t in zip(self.lines, self.seen_at) if text in line][count - 1]

    def stop(self, timeout: float = 60.0) -> tuple[int, str, float]:
        """SIGTERM; (exit status, everything it said, seconds from the signal to its exit)."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        rest = self._buf + self.proc.stderr.read()
        self._buf = b""
        rc = self.proc.wait(timeout)
        took = time.monotonic() - started
        self.lines.append(rest.decode("utf-8", "replace"))
        return rc, "".join(self.lines), took

    def wait_exit(self, timeout: float = 60.0) -> tuple[int, str]:
        """Wait for it to exit on its own; (exit status, everything it said)."""
        rc = self.proc.wait(timeout)
        rest = self._buf + self.proc.stderr.read()
        self._buf = b""
        self.lines.append(rest.decode("utf-8", "replace"))
        return rc, "".join(self.lines)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(30)
