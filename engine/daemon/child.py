"""``replicate --exec CMD``: run the application as the daemon's child (Litestream's ``-exec``).

The child starts once every database replicates (its first commits are then already watched),
SIGTERM/SIGINT sent to walrewind go to the child instead of stopping replication, and when the
child exits walrewind does its final sync and exits with the child's exit code.  So a container or
systemd unit runs one command and its database is never left with unshipped commits at shutdown.
"""

from __future__ import annotations

import shlex
import signal
import subprocess

from ..errors import UsageError


class ChildApp:
    def __init__(self, command: str) -> None:
        self.argv = shlex.split(command)
        if not self.argv:
            raise UsageError("--exec needs a command")
        self.command = command
        self.proc: subprocess.Popen | None = None

    @property
    def started(self) -> bool:
        return self.proc is not None

    def start(self) -> int:
        try:
            # Its own process group: a Ctrl-C on the terminal reaches walrewind, which passes it on
            # once (otherwise the child would get it twice).
            self.proc = subprocess.Popen(self.argv, process_group=0)
        except OSError as exc:
            raise UsageError(f"--exec: cannot start {self.argv[0]!r}: {exc.strerror or exc}") from None
        return self.proc.pid

    def forward(self, signum: int) -> bool:
        """Send ``signum`` to the child; False when there is no running child to send it to."""
        if self.proc is None or self.proc.poll() is not None:
            return False
        self.proc.send_signal(signum)
        return True

    def exit_code(self) -> int | None:
        """The child's exit code once it has exited (a signal N as 128 + N, as shells report it)."""
        if self.proc is None:
            return None
        code = self.proc.poll()
        if code is None:
            return None
        return 128 - code if code < 0 else code

    def stop(self, timeout: float = 30.0) -> None:
        """At a shutdown not caused by the child (a database failed): stop it, then wait."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
