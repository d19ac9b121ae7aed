"""Noticing that the database file under a running daemon is no longer the one it opened.

A backup moved over the live database, a deploy that replaces the file, a ``rm``: the daemon
keeps its descriptors on the old (deleted) files and would ship nothing more, silently.  The fleet
compares each database's file identity (device, inode, and whether it still holds a database)
with the one its daemon started on, once a second (a big fleet: 200 files a second, one ``stat``
each); on a change it says so loudly and restarts that
database's daemon with a reason to start a new generation from the new file (the state directory
stays; the saved history is never continued).  A `cp` over the live file keeps its inode and is
not seen here (SQLite itself cannot make sense of a file copied under its -wal).

``walrewind reseed`` uses the same restart: it leaves a request file in the daemon's state
directory and pokes the fleet (health.poke_reseed); a running fleet takes it within a second (a
fleet of more than 20 databases also opens 20 request files a second, for a request whose poke
did not reach it), a daemon that was not running at its start.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

RESEED_REQUEST = "reseed-requested"  # in a state directory: start a new generation from the live file
SQLITE_HEADER = 100


@dataclass(frozen=True)
class FileIdentity:
    device: int
    inode: int
    size: int

    @classmethod
    def of(cls, path: str) -> "FileIdentity | None":
        try:
            st = os.stat(path)
        except FileNotFoundError:
            return None
        return cls(st.st_dev, st.st_ino, st.st_size)


def same_file(before: FileIdentity | None, path: str) -> bool:
    """``path`` is surely the file the daemon opened (one ``stat``, no object made: a big fleet
    checks 200 files a second); False: ask ``changed`` why not (None: it may still be)."""
    try:
        st = os.stat(path)
    except OSError:
        return False
    return before is not None and changed(before, st, path) is None


def changed(before: FileIdentity | None, st: os.stat_result | None, path: str) -> str | None:
    """Why ``path`` (its ``os.stat``, taken by the caller; None: it does not exist) is not the file
    the daemon opened (``before``), or None when it still is."""
    if before is None:
        return None
    if st is None:
        return f"{path} was deleted"
    if st.st_ino != before.inode or st.st_dev != before.device:
        return f"{path} was replaced by another file (inode {before.inode} -> {st.st_ino})"
    if st.st_size < SQLITE_HEADER <= before.size:
        return f"{path} was truncated to {st.st_size} bytes"
    return None


def request_reseed(state_dir: str, reason: str) -> str:
    path = os.path.join(state_dir, RESEED_REQUEST)
    with open(path, "w") as f:
        f.write(reason + "\n")
    return path


def take_reseed_request(state_dir: str) -> str | None:
    """The reason of a pending ``walrewind reseed`` for this state directory (and clear it)."""
    path = os.path.join(state_dir, RESEED_REQUEST)
    try:
        with open(path) as f:
            reason = f.read().strip()
        os.unlink(path)
    except FileNotFoundError:
        return None
    return reason or "walrewind reseed"
