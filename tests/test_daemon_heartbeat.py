"""What a heartbeat vouches for in a many-databases process, and what it costs.

A heartbeat ``<ts>-<txid>`` says: every commit SQLite had counted at ``ts`` is in the replica
(docs/DESIGN.md §10).  A quiet reader in a many process sleeps minutes, so before each heartbeat
the upload stage finds a fresh time to vouch for (engine/daemon/vouch.py): a look at the
wal-index from its own thread when the reader's state accounts for every commit counted there,
else a read pass on the reading thread.  These tests pin down: a quiet database's heartbeat is
fresh without waking its reader and replaces the previous heartbeat; a database whose reader has
not read a commit yet is never vouched for past it by the look, only after a pass has spooled it;
heartbeats fall due on a grid (one pool wake-up serves several databases).
"""

from __future__ import annotations

import sqlite3
import threading
import time
from types import SimpleNamespace

import pytest
from harness import DaemonThread, create_db, now_us, wait_until
from walrewind.engine.daemon import vouch
from walrewind.engine.daemon.uploader import HEARTBEAT_GRID, Uploader
from walrewind.engine.replica import layout
from walrewind.engine.storage import open_storage


def heartbeats(replica: str) -> list[layout.HeartbeatKey]:
    keys = [layout.parse_key(o.key) for o in open_storage(replica, create=False).list("generations/")]
    return [k for k in keys if isinstance(k, layout.HeartbeatKey)]


def app(db: str) -> sqlite3.Connection:
    """The application's connection, open while the daemon runs (as an app's would be)."""
    con = sqlite3.connect(db, isolation_level=None, check_same_thread=False)
    con.execute("CREATE TABLE IF NOT EXISTS beat (v)")
    return con


def commit(con: sqlite3.Connection, value: int) -> None:
    con.execute("INSERT INTO beat VALUES (?)", (value,))  # one transaction


def test_a_quiet_databases_heartbeat_is_fresh_without_waking_its_reader(tmp_path, many):
    """The look from the upload stage's thread vouches for "now" (the reader's own last check is
    older): no job for the reading thread; the heartbeat written says so and replaces the last."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    con = app(db)
    commit(con, 1)
    with DaemonThread(db, replica, str(tmp_path / "state"), heartbeat_interval=60, lease_seconds=600) as d:
        commit(con, 2)
        # (commit 2 lands in the start-up snapshot or after it, as txid 2: both are fine)
        wait_until(lambda: d.stats.uploaded_txid == d.stats.last_txid >= 1 and d.shm.header().change == d.rs.anchor,
                   30, "the first upload")
        hops = []
        in_reader = d.in_reader
        d.in_reader = lambda job: hops.append(job) or in_reader(job)
        for _ in range(3):  # (the first one is made, the others replace it)
            # The reader's own check is older than an upload interval (what a quiet one's is).
            wait_until(lambda: now_us() - d.spooled_through_us > 2 * d.upload_interval * 1e6, 10, "a quiet moment")
            own, asked, beats = d.spooled_through_us, now_us(), d.stats.heartbeats
            d.uploader.last_beat_mono -= 60  # due now
            d.uploader.kick.set()
            wait_until(lambda: d.stats.heartbeats > beats, 10, "the heartbeat")
            [beat] = heartbeats(replica)  # the previous one went as this one came
            assert beat.ts_us >= asked > own
            assert beat.txid == d.stats.uploaded_txid == d.stats.last_txid
        assert hops == []
    con.close()


def test_a_commit_the_reader_has_not_read_is_vouched_for_only_after_a_pass(tmp_path, many):
    """The reading thread busy elsewhere (a job holds it), a commit lands: the look from another
    thread finds SQLite's counter past the reader's anchor and vouches for nothing; the refresh
    then waits for a pass on the reading thread, after which the commit is spooled and the
    reader's own check (what the seal takes) comes after it."""
    db, replica = str(tmp_path / "app.db"), str(tmp_path / "replica")
    create_db(db)
    con = app(db)
    with DaemonThread(db, replica, str(tmp_path / "state"), heartbeat_interval=60, lease_seconds=600) as d:
        commit(con, 1)
        wait_until(lambda: d.stats.uploaded_txid == 1, 30, "the first upload")
        wait_until(lambda: now_us() - d.spooled_through_us > 2 * d.upload_interval * 1e6, 10, "a quiet moment")
        assert vouch.fresh_look(d) is not None  # nothing unread: the look vouches
        gate, inside = threading.Event(), threading.Event()
        blocker = threading.Thread(target=d.in_reader, args=(lambda: (inside.set(), gate.wait(30)),))
        blocker.start()
        assert inside.wait(30)
        spooled = d.stats.transactions
        commit(con, 2)
        committed = now_us()
        assert vouch.fresh_look(d) is None
        got: list[int] = []
        refresh = threading.Thread(target=lambda: got.append(d.refresh_tail()))
        refresh.start()
        wait_until(lambda: d._jobs, 10, "the refresh to ask the reading thread")  # (the look said no)
        assert d.spooled_through_us < committed and d.stats.transactions == spooled
        gate.set()
        refresh.join(30)
        blocker.join(30)
        assert got == [0]  # the reader's own check is what the seal takes
        assert d.stats.transactions == spooled + 1
        assert d.spooled_through_us > committed
    con.close()


def test_refresh_is_nothing_for_a_few_databases(tmp_path):
    """A few databases: their readers look every few seconds; the heartbeat takes that."""
    db = str(tmp_path / "app.db")
    create_db(db)
    with DaemonThread(db, str(tmp_path / "replica"), str(tmp_path / "state")) as d:
        d.in_reader = lambda job: pytest.fail("no pass asked for")
        assert d.refresh_tail() == 0


@pytest.mark.parametrize("interval", [60.0, 0.3])
def test_an_idle_stages_heartbeat_falls_due_on_a_grid(interval):
    """Databases whose heartbeats are due within the same grid step come due together (one
    wake-up of the upload pool), at most a grid step (a twentieth of the interval) late."""
    host = SimpleNamespace(pending_snapshot=None, state=SimpleNamespace(pending=0), heartbeat_interval=interval,
                           upload_interval=1.0, stopping=False, storage=None)
    grid = min(HEARTBEAT_GRID, interval / 20)
    dues = set()
    for n in range(20):
        up = Uploader(host)
        up.last_beat_mono = time.monotonic() + n * grid / 20  # twenty databases a moment apart
        due = up.due()
        assert up.last_beat_mono + interval <= due < up.last_beat_mono + interval + grid
        assert abs(due / grid - round(due / grid)) < 1e-6
        dues.add(due)
    assert len(dues) <= 2
