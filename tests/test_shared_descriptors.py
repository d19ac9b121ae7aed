"""Two daemons in one process on one database: the second one going away must not drop the
first one's SQLite locks (POSIX locks belong to the process; closing any descriptor of a file drops
them all).  Seen as a SIGBUS in CI: a writer then found no other connection, truncated the -shm,
and the first daemon's memory map of it faulted."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from harness import DaemonThread, create_db
from walrewind.engine.errors import DaemonError, LeaseHeld
from walrewind.engine.sqlite.sharedfd import close_shared, open_shared

DMS_BYTE = 128  # SQLite's "dead man switch" byte in the -shm: every connection's process holds it shared

PROBE = """
import fcntl, os, struct, sys
fd = os.open(sys.argv[1], os.O_RDWR)
fmt = "hhqqi4x"
answer = fcntl.fcntl(fd, fcntl.F_GETLK, struct.pack(fmt, fcntl.F_WRLCK, os.SEEK_SET, int(sys.argv[2]), 1, 0))
kind, _whence, _start, _len, pid = struct.unpack(fmt, answer)
print(0 if kind == fcntl.F_UNLCK else pid)
"""


def holder_of_dms(shm: str) -> int:
    """The pid holding a lock on the -shm's DMS byte, seen from another process (0: nobody)."""
    out = subprocess.run([sys.executable, "-c", PROBE, shm, str(DMS_BYTE)], capture_output=True, text=True, check=True)
    return int(out.stdout)


def test_a_refused_second_daemon_leaves_the_first_ones_locks_alone(tmp_path):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "first")) as first:
        assert holder_of_dms(db + "-shm") == os.getpid()
        second = DaemonThread(db, replica, str(tmp_path / "second"))
        with pytest.raises(DaemonError) as refused:
            second.__enter__()
        second.thread.join(30)
        assert isinstance(refused.value.__cause__, LeaseHeld)
        # The second daemon opened and closed its descriptors on app.db and app.db-shm: our locks stay.
        assert holder_of_dms(db + "-shm") == os.getpid()
        assert first.ready.is_set() and not first.stopping


def test_shared_descriptors_are_reference_counted(tmp_path):
    path = tmp_path / "f"
    path.write_bytes(b"x" * 10)
    a = open_shared(str(path))
    b = open_shared(str(path))
    assert a == b
    close_shared(a)
    assert os.pread(b, 1, 0) == b"x"  # still open for the second user
    close_shared(b)
    with pytest.raises(OSError):
        os.fstat(b)
