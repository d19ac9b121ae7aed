"""Raw descriptors on a database or its -shm are shared per file within the process, so one user
closing its descriptor cannot drop another's SQLite locks (the scenario itself:
tests/test_daemon_restart.py::test_refused_second_daemon_in_one_process_leaves_the_first_ones_locks)."""

from __future__ import annotations

import os

import pytest
from walrewind.engine.sqlite.fds import close_shared, open_shared


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
