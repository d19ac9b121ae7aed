"""How each database of a running ``walrewind replicate`` is doing, for other commands to read.

A fleet (engine/daemon/fleet.py) rewrites ``<state root>/walrewind/fleets/<pid>.json`` whenever a
database changes state: starting, replicating, retrying after a failure (with the error, the
number of failures and when the next attempt is due), stopped.  ``db show`` reads it to say that
a database is failing, which the replica alone cannot tell.  A file whose process is gone is
stale and ignored (and removed when it is this host's).
"""

from __future__ import annotations

import json
import os
import socket

from .. import defaults
from ..fsutil import atomic_write


def fleets_dir(environ=None) -> str:
    return os.path.join(defaults.state_root(environ), "fleets")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class HealthFile:
    """This process's file; ``write`` replaces it atomically, ``remove`` at the end of the run."""

    def __init__(self, directory: str | None = None) -> None:
        self.directory = directory or fleets_dir()
        self.path = os.path.join(self.directory, f"{os.getpid()}.json")

    def write(self, databases: list[dict], started_us: int) -> None:
        os.makedirs(self.directory, exist_ok=True)
        doc = {"pid": os.getpid(), "host": socket.gethostname(), "started_us": started_us, "databases": databases}
        atomic_write(self.path, json.dumps(doc, indent=1).encode())

    def remove(self) -> None:
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass


def running_fleets(directory: str | None = None) -> list[dict]:
    """The documents of live fleets on this host."""
    directory = directory or fleets_dir()
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
                doc = json.loads(f.read())
            pid, host = int(doc["pid"]), doc["host"]
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if host != socket.gethostname():
            continue
        if _alive(pid):
            out.append(doc)
        else:
            try:
                os.unlink(path)
            except OSError:
                pass
    return out


def database_health(db_path: str, directory: str | None = None) -> dict | None:
    """The entry of a live fleet that replicates ``db_path`` (by real path), with its ``pid``."""
    real = os.path.realpath(db_path)
    for doc in running_fleets(directory):
        for entry in doc.get("databases", []):
            if isinstance(entry, dict) and os.path.realpath(str(entry.get("path", ""))) == real:
                return {**entry, "pid": doc["pid"]}
    return None
