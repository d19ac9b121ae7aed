"""The read pin's connections: opened when needed, closed while a database is quiet (``shed``).

A process serving 1,000 sqld namespaces kept two read-only SQLite connections per namespace
open for good (page cache and schema: ~64 KiB each).  A pin now closes the spare one once
unpinned for a while and opens it again at the next hand-over; one always stays open (its lock
keeps an application's last close from deleting the -wal under us).  These tests pin down that a
shed pin takes the next read transaction at the current end of the WAL, never sheds while it
holds one, and that a daemon whose pin sheds between groups of commits still restores every
moment exactly.
"""

from __future__ import annotations

import os
import time

import apsw
from harness import DaemonThread, create_db, now_us
from walrewind.engine.daemon import tailloop
from walrewind.engine.restore.restorer import restore
from walrewind.engine.sqlite.pin import ReadPin
from walrewind.engine.sqlite.shm import ShmObserver
from walrewind.engine.storage import open_storage


def _writer(db: str) -> apsw.Connection:
    """An application connection from this process's own SQLite (apsw, like the daemon's)."""
    conn = apsw.Connection(db)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v TEXT)")
    return conn


def _commit(conn: apsw.Connection, n: int, tag: str) -> None:
    for i in range(n):
        with conn:
            conn.execute("INSERT INTO t(v) VALUES (?)", (f"{tag}-{i}",))


def test_a_shed_pin_keeps_one_connection_and_sees_the_next_commit(tmp_path):
    """The spare connection is closed; the one kept open holds the database's SHARED lock, so an
    application closing its last connection can neither checkpoint-and-delete the -wal nor
    rebuild the -shm under our descriptors: its next commit is still in the WAL for us."""
    db = str(tmp_path / "app.db")
    app = _writer(db)
    _commit(app, 3, "a")
    shm = ShmObserver(db + "-shm")
    pin = ReadPin(db)
    try:
        first = pin.acquire(shm)
        assert pin.shed() is False, "never while a read transaction is held"
        pin.release()
        before = len(apsw.connections())
        assert pin.shed() is True
        assert len(apsw.connections()) == before - 1, "one connection stays open"
        assert pin.shed() is False, "the spare is closed already"
        app.close()  # the application's last connection: it may not delete the -wal
        assert os.path.exists(db + "-wal")
        app = _writer(db)
        _commit(app, 2, "b")
        app.close()
        assert os.path.getsize(db + "-wal") > 0, "the new commits are in the WAL, not checkpointed away"
        again = pin.acquire(shm)
        assert again.max_frame > first.max_frame and again.change != first.change
        assert pin.connection.execute("SELECT count(*) FROM t").fetchall() == [(5,)]
        pin.acquire(shm)  # a hand-over opens the spare again
        assert pin.connection.execute("SELECT count(*) FROM t").fetchall() == [(5,)]
        assert pin.sheds == 1
    finally:
        pin.close()
        shm.close()
        app.close()


def test_a_pin_taken_and_released_without_hand_overs_leaves_its_spare_unused(tmp_path):
    """A slow writer's pin in a process serving many databases is taken and released in one pass
    per commit, never handed over: always the same connection.  The other one's last use is
    what the read loop sheds it by (tailloop.PIN_SHED_SECONDS), not the last release."""
    db = str(tmp_path / "app.db")
    app = _writer(db)
    shm = ShmObserver(db + "-shm")
    pin = ReadPin(db)
    try:
        opened = pin.spare_used_mono
        for i in range(3):
            _commit(app, 1, f"c{i}")
            pin.acquire(shm)
            pin.release()
        assert pin.released_mono > opened and pin.spare_used_mono == opened
        pin.acquire(shm)
        pin.acquire(shm)  # a hand-over: both connections in use
        pin.release()
        assert pin.spare_used_mono > opened
    finally:
        pin.close()
        shm.close()
        app.close()


def test_a_daemon_whose_pin_sheds_between_commits_restores_every_moment(tmp_path, monkeypatch):
    """Groups of commits with quiet gaps; every gap ends with one connection open (threshold 0
    here, 20 s in production): the spare shed, or never opened again (a group read in one pass
    at the pin's own snapshot needs no hand-over).  Each moment between groups restores to
    exactly the rows committed before it."""
    monkeypatch.setattr(tailloop, "PIN_SHED_SECONDS", 0.0)
    monkeypatch.setattr(tailloop, "IDLE_WAIT_INOTIFY", 0.2)  # the unpinned pass that sheds, sooner
    db = str(tmp_path / "app.db")
    create_db(db)
    app = _writer(db)
    moments: list[tuple[int, int]] = []  # (time, rows committed before it)
    with DaemonThread(db, str(tmp_path / "replica"), str(tmp_path / "state")) as shipper:
        for group in range(3):
            read = shipper.stats.transactions
            _commit(app, 4, f"g{group}")
            deadline = time.monotonic() + 30
            # read, then the idle release after 1 s, and one connection left open
            while shipper.stats.transactions < read + 4 or shipper.pin.active or shipper.pin.open_connections != 1:
                assert time.monotonic() < deadline, "the pin was never released and shed"
                time.sleep(0.02)
            moments.append((now_us(), 4 * (group + 1)))
        assert shipper.pin.sheds >= 1
    app.close()
    storage = open_storage(f"file://{tmp_path / 'replica'}")
    for i, (target, rows) in enumerate(moments):
        out = str(tmp_path / f"at{i}.db")
        restore(storage, out, target_us=target)
        conn = apsw.Connection(out)
        assert conn.execute("SELECT count(*) FROM t").fetchall() == [(rows,)]
        assert conn.execute("SELECT v FROM t ORDER BY id DESC LIMIT 1").fetchall() == [(f"g{i}-3",)]
        conn.close()
        os.unlink(out)
