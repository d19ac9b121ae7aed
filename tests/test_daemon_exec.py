"""`replicate --exec CMD`: the application as the daemon's child (Litestream's -exec)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap

import pytest
from harness import create_db
from walrewind.engine.replica.index import Replica
from walrewind.engine.storage import open_storage

WALREWIND = [sys.executable, "-c", "from walrewind.cli.main import main; main()"]

APP = textwrap.dedent("""
    import signal, sqlite3, sys, time
    db, rows, code = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    stop = []
    signal.signal(signal.SIGTERM, lambda *a: stop.append(1))
    c = sqlite3.connect(db, isolation_level=None)
    for i in range(rows):
        c.execute("INSERT INTO t(id, k, v) VALUES (?, ?, ?)", (10_000 + i, i, b"x"))
    print("app: wrote", rows, flush=True)
    if code == 99:                      # wait for SIGTERM, then write one last row and exit 0
        while not stop:
            time.sleep(0.01)
        c.execute("INSERT INTO t(id, k, v) VALUES (?, ?, ?)", (99_999, 0, b"last"))
        code = 0
    c.close()
    sys.exit(code)
""")


def _run(tmp_path, rows: int, code: int, **popen):
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    app = tmp_path / "app.py"
    app.write_text(APP)
    cmd = f"{sys.executable} {app} {db} {rows} {code}"
    proc = subprocess.Popen(WALREWIND + ["replicate", db, replica, "--state-dir", str(tmp_path / "state"),
                                         "--upload-interval", "0.1", "--exec", cmd],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)
    return proc, db, replica


def _latest_rows(replica: str, tmp_path) -> int:
    from walrewind.engine.restore.restorer import restore

    out = str(tmp_path / "latest.db")
    restore(open_storage(replica, create=False), out)
    import apsw

    conn = apsw.Connection(out, flags=apsw.SQLITE_OPEN_READONLY)
    try:
        return conn.execute("SELECT count(*) FROM t").fetchall()[0][0]
    finally:
        conn.close()


def test_exec_child_exit_0_means_final_sync_and_exit_0(tmp_path):
    proc, _db, replica = _run(tmp_path, 50, 0)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "app: wrote 50" in out and "exited with 0: final sync" in err
    assert _latest_rows(replica, tmp_path) == 50  # the child's last commit is in the replica
    assert Replica(open_storage(replica, create=False)).latest() is not None


@pytest.mark.slow
def test_exec_child_exit_code_becomes_the_exit_code(tmp_path):
    proc, _db, replica = _run(tmp_path, 5, 3)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 3, err
    assert _latest_rows(replica, tmp_path) == 5


@pytest.mark.slow
def test_sigterm_goes_to_the_child_and_its_last_write_is_shipped(tmp_path):
    proc, _db, replica = _run(tmp_path, 10, 99)
    assert proc.stdout.readline().startswith("app: wrote 10")
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert "passed on to" in err
    assert _latest_rows(replica, tmp_path) == 11  # the row written after the signal is replicated
    assert os.path.exists(replica)
