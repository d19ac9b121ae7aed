"""Which databases daemons on this machine replicate right now, config file or not.

A running daemon keeps one small JSON file in ``<state root>/walrewind/daemons/`` (the same root as
the default state directories): database path, state directory, replica (credentials stripped),
pid, host, start time.  ``restore`` and ``db create`` read it to refuse writing over a database
that is being replicated, and ``status`` to find daemons to report on.  A daemon killed with -9
leaves its file behind; readers treat a file whose process is gone as stale and remove it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import time
from dataclasses import asdict, dataclass

from ..fsutil import atomic_write


def registry_dir(environ=None) -> str:
    environ = os.environ if environ is None else environ
    base = environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return os.path.join(base, "walrewind", "daemons")


@dataclass(frozen=True)
class RunningDaemon:
    db_path: str
    state_dir: str
    replica: str  # credentials stripped
    pid: int
    host: str
    started_us: int

    @property
    def alive(self) -> bool:
        if self.host != socket.gethostname():
            return False  # another host's file on a shared home directory: not ours to judge
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True  # exists, owned by someone else
        return True


def _entry_path(db_path: str, directory: str) -> str:
    digest = hashlib.sha256(os.path.realpath(db_path).encode()).hexdigest()[:24]
    return os.path.join(directory, f"{digest}.json")


def register(db_path: str, state_dir: str, replica: str, directory: str | None = None) -> str:
    """Record this process as the daemon of ``db_path``; returns the file to pass to ``unregister``."""
    directory = directory or registry_dir()
    os.makedirs(directory, exist_ok=True)
    entry = RunningDaemon(os.path.realpath(db_path), os.path.abspath(state_dir), replica, os.getpid(),
                          socket.gethostname(), time.time_ns() // 1000)
    path = _entry_path(db_path, directory)
    atomic_write(path, json.dumps(asdict(entry), indent=1).encode())
    return path


def unregister(path: str) -> None:
    try:
        with open(path, "rb") as f:
            mine = json.loads(f.read()).get("pid") == os.getpid()
        if mine:
            os.unlink(path)
    except (OSError, ValueError):
        pass


def running(directory: str | None = None) -> list[RunningDaemon]:
    """Daemons registered on this machine whose process is alive (stale files are removed)."""
    directory = directory or registry_dir()
    try:
        names = sorted(os.listdir(directory))
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        if not name.endswith(".json"):
            continue
        path = os.path.join(directory, name)
        try:
            with open(path, "rb") as f:
                entry = RunningDaemon(**json.loads(f.read()))
        except (OSError, ValueError, TypeError):
            continue
        if entry.alive:
            out.append(entry)
        elif entry.host == socket.gethostname():
            try:
                os.unlink(path)
            except OSError:
                pass
    return out


def replicating(db_path: str, directory: str | None = None) -> RunningDaemon | None:
    """The live daemon replicating ``db_path`` (compared by real path), if any."""
    real = os.path.realpath(db_path)
    return next((d for d in running(directory) if d.db_path == real), None)
