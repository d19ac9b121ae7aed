"""SQLite's commit counter of a live database, read from outside without disturbing anyone.

``walrewind mark`` needs the wal-index header's ``iChange`` (incremented by every commit, see
shm.py) at the moment it is called.  Reading it is a ``pread`` of the -shm file's first bytes;
the danger is the descriptor.  POSIX record locks belong to the process, and closing *any*
descriptor of a file drops every lock the process holds on it, SQLite's included
(/work/shared/notes/wal-tailing.md).  ``mark`` runs in the CLI (no SQLite connection: a
descriptor opened and closed there is harmless) but also through the Python API, possibly inside
the application itself, or next to a daemon thread.  So:

1. if this process already holds a descriptor of the -shm (SQLite's own, or the daemon's shared
   one), read through it and close nothing;
2. else, if it holds a descriptor of the database or its -wal (a SQLite connection that may map
   the -shm any moment), read in a short-lived child process, which has no locks to lose;
3. else open, read and close here, through engine/sqlite/fds.py (shared with any daemon started
   later in this process, which then keeps it open).

Nothing is ever written, and no SQLite library opens the file.
"""

from __future__ import annotations

import os
import subprocess
import sys

from ..errors import MarkError
from .fds import close_shared, open_shared
from .shm import SHM_HEADER_BYTES, ShmHeader, parse_shm_header

ATTEMPTS = 200  # the two header copies disagree only while a commit is publishing: retry

# The child's whole program: read the header until both copies agree, print it in hex.
_CHILD = (
    "import os,sys\n"
    "fd=os.open(sys.argv[1],os.O_RDONLY)\n"
    "for _ in range(int(sys.argv[2])):\n"
    "    b=os.pread(fd,int(sys.argv[3]),0)\n"
    "    if b[0:48]==b[48:96]:break\n"
    "sys.stdout.write(b.hex())\n"
)


def _identity(path: str) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    return st.st_dev, st.st_ino


def _own_descriptors() -> dict[tuple[int, int], int] | None:
    """(dev, inode) -> a descriptor of this process; None where /proc/self/fd is unavailable."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return None
    out: dict[tuple[int, int], int] = {}
    for name in names:
        try:
            st = os.fstat(int(name))
        except (OSError, ValueError):
            continue  # the directory listing's own descriptor, already closed
        out.setdefault((st.st_dev, st.st_ino), int(name))
    return out


def _read_through(fd: int) -> ShmHeader | None:
    for _ in range(ATTEMPTS):
        hdr = parse_shm_header(os.pread(fd, SHM_HEADER_BYTES, 0))
        if hdr is not None:
            return hdr
    return None


def _read_in_child(shm_path: str) -> ShmHeader | None:
    res = subprocess.run([sys.executable, "-I", "-S", "-c", _CHILD, shm_path, str(ATTEMPTS), str(SHM_HEADER_BYTES)],
                         capture_output=True, text=True, timeout=30)
    if res.returncode != 0:
        raise MarkError(f"cannot read {shm_path}: {res.stderr.strip().splitlines()[-1] if res.stderr.strip() else res.returncode}")
    return parse_shm_header(bytes.fromhex(res.stdout.strip()))


def read_header(db_path: str) -> ShmHeader:
    """The wal-index header of ``db_path`` as it is now (a consistent copy)."""
    shm_path = db_path + "-shm"
    shm = _identity(shm_path)
    if shm is None:
        raise MarkError(
            f"cannot read SQLite's commit counter: {shm_path} does not exist, so nothing has {db_path} open "
            "in WAL mode (is `walrewind replicate` running for it?)"
        )
    mine = _own_descriptors()
    if mine is None:
        hdr = _read_in_child(shm_path)
    elif shm in mine:
        hdr = _read_through(mine[shm])
    elif any(ident in mine for ident in (_identity(db_path), _identity(db_path + "-wal")) if ident is not None):
        hdr = _read_in_child(shm_path)
    else:
        fd = open_shared(shm_path)
        try:
            hdr = _read_through(fd)
        finally:
            close_shared(fd)
    if hdr is None:
        raise MarkError(f"cannot read SQLite's commit counter: the wal-index header of {shm_path} is not built "
                        "or kept changing; try again")
    return hdr


def commit_counter(db_path: str) -> int:
    """SQLite's commit counter (``iChange``) of ``db_path`` now: every commit published before
    this call is counted, none that publishes after it returns."""
    return read_header(db_path).change
