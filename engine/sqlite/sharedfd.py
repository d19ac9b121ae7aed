"""Descriptors on SQLite's own files that never drop SQLite's locks.

POSIX record locks belong to the process, not the descriptor: closing *any* descriptor of a file
drops every lock this process holds on it, SQLite's included.  If two daemons in one process watch
one database (the library used twice, or a second daemon refused by the lease while the first one
runs), the second closing its -shm descriptor would silently drop the first one's read locks; an
application opening the database next then finds no other connection and truncates the -shm under
the first daemon's memory map (SIGBUS).  So our raw descriptors on a database or its -shm are shared
per file and reference-counted: the file is closed only when the last user in this process lets go.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_open: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> [fd, users]
_by_fd: dict[int, tuple[int, int]] = {}


def open_shared(path: str) -> int:
    """A read-only descriptor on ``path``, shared with every other user of the same file.

    The file is looked up by ``stat`` first: opening (and later closing) a second descriptor on a
    file this process already has open would itself drop the locks."""
    with _lock:
        st = os.stat(path)
        entry = _open.get((st.st_dev, st.st_ino))
        if entry is not None:
            entry[1] += 1
            return entry[0]
        fd = os.open(path, os.O_RDONLY)
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        _open[key] = [fd, 1]
        _by_fd[fd] = key
        return fd


def close_shared(fd: int) -> None:
    """Let go of a descriptor from ``open_shared``; the file is closed when its last user leaves."""
    with _lock:
        key = _by_fd.get(fd)
        if key is None:
            os.close(fd)
            return
        entry = _open[key]
        entry[1] -= 1
        if entry[1] > 0:
            return
        del _open[key]
        del _by_fd[fd]
        os.close(fd)
