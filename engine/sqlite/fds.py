"""Descriptors of the database and -shm files, shared by everything in this process.

POSIX record locks belong to the process: closing *any* descriptor of a file drops every lock
the process holds on it, SQLite's included.  Two daemons in one process on one database (a
takeover, a refused start, tests; later one process serving many databases) would each open and
close their own descriptors, and the first to stop would silently drop the other's SQLite locks;
an application could then rebuild the -shm under the other's mapping (SIGBUS) or checkpoint past
its read transaction.  So raw descriptors of these files are opened once per file and
reference-counted: the real close happens when the last user lets go.
"""

from __future__ import annotations

import os
import threading

_lock = threading.Lock()
_by_inode: dict[tuple[int, int], list[int]] = {}  # (dev, ino) -> [fd, users, duplicates kept open...]
_by_fd: dict[int, tuple[int, int]] = {}


def open_shared(path: str) -> int:
    """A read-only descriptor of ``path``, shared with other users in this process."""
    st = os.stat(path)
    key = (st.st_dev, st.st_ino)
    with _lock:
        entry = _by_inode.get(key)
        if entry is not None:
            entry[1] += 1
            return entry[0]
        fd = os.open(path, os.O_RDONLY)
        real = os.fstat(fd)
        if (real.st_dev, real.st_ino) != key:  # replaced between stat and open: key by what we got
            key = (real.st_dev, real.st_ino)
            entry = _by_inode.get(key)
            if entry is not None:
                # Closing this duplicate now would drop the process's locks on that file (any
                # close does, whatever else stays open): keep it until the file's last user leaves.
                entry.append(fd)
                entry[1] += 1
                return entry[0]
        _by_inode[key] = [fd, 1]
        _by_fd[fd] = key
        return fd


def close_shared(fd: int) -> None:
    """Let go of a descriptor from :func:`open_shared`; closed when its last user lets go."""
    with _lock:
        key = _by_fd.get(fd)
        if key is None:
            os.close(fd)
            return
        entry = _by_inode[key]
        entry[1] -= 1
        if entry[1] == 0:
            del _by_inode[key]
            del _by_fd[fd]
            for each in (fd, *entry[2:]):
                os.close(each)
