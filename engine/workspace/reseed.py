"""`walrewind reseed`: make the daemon begin a new generation from the live database file.

Why a user wants it: the database was changed behind the daemon's back in a way no WAL frame shows
(a file copied in while the daemon was stopped, a `VACUUM INTO` swapped in), or they simply want a
fresh base snapshot at a known point.  The history before stays in the replica, restorable.

How: a request file in the daemon's state directory (engine/daemon/dbwatch.py), and a poke file
beside the running fleet's health file (engine/daemon/health.py).  A running
`walrewind replicate` takes it within a second, does the final sync of what it read, and starts
the database again on a new generation; with no daemon running, the next start does.  The
command waits until the new generation's base snapshot is in the replica, so a script can go on
knowing that every later commit lands in it.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable

from ..daemon.dbwatch import RESEED_REQUEST, request_reseed
from ..daemon.health import poke_reseed
from ..errors import DaemonError
from ..replica.index import Replica
from ..storage import Storage
from .config import Config
from .marks import live_database
from .sources import Source

RESEED_TIMEOUT_SECONDS = 120.0  # a base snapshot of a big database takes a while to upload


@dataclass(frozen=True)
class Reseeded:
    path: str  # the live database
    daemon_pid: int | None  # the daemon that took the request (None: taken at the next start)
    old_generation: str | None
    new_generation: str | None  # None when no daemon runs (nothing happened yet)

    def to_json(self) -> dict:
        return {"database": self.path, "daemon_pid": self.daemon_pid, "old_generation": self.old_generation,
                "new_generation": self.new_generation, "pending": self.daemon_pid is None}


def _newest_generation(storage: Storage) -> str | None:
    gens = [g.id for g in Replica(storage).generations if g.snapshots]
    return max(gens) if gens else None


def reseed(source: Source, config: Config | None, *, reason: str = "walrewind reseed",
           timeout: float = RESEED_TIMEOUT_SECONDS, waiting: Callable[[str], None] | None = None) -> Reseeded:
    storage = source.storage()  # one client for the whole wait (an S3 one is costly to make)
    live = live_database(source, config, storage)
    old = _newest_generation(storage)
    os.makedirs(live.state_dir, mode=0o700, exist_ok=True)
    request = request_reseed(live.state_dir, reason)
    if live.daemon_pid is None:
        return Reseeded(live.path, None, old, None)
    try:
        poke_reseed(live.daemon_pid)  # a big fleet looks at once; else within its slow round of requests
    except OSError:
        pass
    if waiting is not None:
        waiting(f"asked walrewind daemon pid {live.daemon_pid} to start a new generation of {live.path} ...")
    deadline = time.monotonic() + timeout
    while os.path.exists(request):
        if time.monotonic() > deadline:
            os.unlink(request)
            raise DaemonError(
                f"walrewind daemon pid {live.daemon_pid} did not take the request within {timeout:g} s (only "
                f"`walrewind replicate` watches {os.path.join(live.state_dir, RESEED_REQUEST)}); nothing changed")
        time.sleep(0.1)  # polling another process's state: no event to wait on
    while (new := _newest_generation(storage)) == old:
        if time.monotonic() > deadline:
            raise DaemonError(f"walrewind daemon pid {live.daemon_pid} took the request but no new generation reached "
                              f"{source.display} within {timeout:g} s; see the daemon's log")
        time.sleep(0.25)
    return Reseeded(live.path, live.daemon_pid, old, new)
