"""A many process runs every database's observer on the inotify hub's dispatcher thread.

No thread per database: the dispatcher makes a database's look right after it reads the WAL
write's event, and its timed looks (a ``synchronous=FULL`` commit's publication, the safety look)
are deadlines on the hub's heap (engine/daemon/hubobserver.py).  These tests pin down: commits
are stamped at their write event and the reader hears of their publication; after ``join()`` no
look of that database runs; a look the dispatcher made late after reading its event (busy with
other databases) stamps a commit it found published uncertain by that much; one database's failing look never
stops the others'.
"""

from __future__ import annotations

import sqlite3
import struct
import threading
import time

from harness import wait_until
from walrewind.engine.daemon import clock
from walrewind.engine.daemon.hubobserver import HubObserving
from walrewind.engine.daemon.inotifyhub import HubWaker, InotifyHub
from walrewind.engine.daemon.observer import Observer
from walrewind.engine.daemon.stats import ReplicatorStats
from walrewind.engine.sqlite.shm import SHM_HEADER_BYTES, ShmObserver
from walrewind.engine.sqlite.walfile import WalFile


def _open_writer(path: str) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")  # the commit frame is written (and fsynced) before it is published
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(x)")
    return conn


class _Database:
    """One database written by stdlib sqlite3 in this process, its observer driven by ``hub``."""

    def __init__(self, hub: InotifyHub, path: str) -> None:
        self.path, self.conn = path, _open_writer(path)
        self.shm, self.wal = ShmObserver(path + "-shm"), WalFile(path + "-wal")
        self.waker = HubWaker(hub)
        assert self.waker.watch(path)
        self.stats = ReplicatorStats()
        self.observer = Observer(self.shm, self.waker, self.stats, lambda: False, lambda: 0.02, 0.25, True,
                                 safety_poll=30.0, peek=self.wal.peek_commit)
        self.driven = HubObserving(hub, self.waker, self.observer, path)

    def commit(self, value: int) -> tuple[int, int, int]:
        self.conn.execute("INSERT INTO t VALUES (?)", (value,))
        end = self.wal.read(None).transactions[-1].end
        return end.salt1, end.salt2, end.frame

    def stamped(self, end: tuple[int, int, int]) -> bool:
        at, late = self.observer.observations.stamp(*end, 1 << 62)
        return at < 1 << 62 and not late

    def close(self) -> None:
        self.driven.join()
        self.waker.close()
        self.conn.close()
        self.shm.close()
        self.wal.close()


def test_the_dispatcher_stamps_each_commit_and_runs_no_thread_per_database(tmp_path):
    hub = InotifyHub()
    threads_before = threading.active_count()
    dbs = [_Database(hub, str(tmp_path / f"db{i}.db")) for i in range(3)]
    try:
        for d in dbs:
            d.driven.start()
        assert threading.active_count() == threads_before  # (the hub's one thread was started above)
        assert all(d.observer.observations.event_driven for d in dbs)
        for n in range(3):
            for d in dbs:
                d.observer.new_commits = False
                end = d.commit(n)
                # stamped at its WAL write (or its publication), not by the reader's fallback
                wait_until(lambda: d.stamped(end), 5, "the commit's stamp")
                # the reader hears of it once published: an event or the publication look
                wait_until(lambda: d.observer.new_commits, 5, "the reader's notification")
        assert all(d.stats.wake_changes >= 3 and not d.stats.uncertain_stamps for d in dbs)
        assert all(not d.stats.polled_stamps for d in dbs)  # found by events, never by a safety look
        # After join(), nothing of that database runs: the hub still reads its events (the waker
        # still watches), and dispatches them to nobody.
        gone = dbs[-1]
        gone.driven.join()
        assert not gone.driven.is_alive() and not gone.observer.observations.event_driven
        changes, events = gone.stats.wake_changes, hub.events
        gone.commit(99)
        wait_until(lambda: hub.events > events, 5, "the hub reading the write's events")
        assert gone.stats.wake_changes == changes
        # the others are still looked at
        d = dbs[0]
        end = d.commit(100)
        wait_until(lambda: d.stamped(end), 5, "a later commit's stamp")
    finally:
        for d in dbs:
            d.close()


class _Index:
    """A wal-index whose header shows commit boundary ``frame`` published."""

    def __init__(self) -> None:
        self.frame = 0

    def read_header(self) -> bytes:
        copy = struct.pack("=IIIBBHII8x8s8x", 3007000, 0, self.frame, 1, 0, 4096, self.frame, 2, b"saltsalt")
        return copy * 2 + bytes(SHM_HEADER_BYTES - 96)

    def writer_active(self) -> bool:
        return False

    def checkpointer_waiting(self) -> bool:
        return False


def test_a_look_made_late_after_its_event_was_read_stamps_uncertain():
    """The dispatcher read the event 20 ms before it got to this database's look (other
    databases' looks first): the commit may have been published that long before the look."""
    stats = ReplicatorStats()
    index = _Index()
    observer = Observer(index, HubWaker(), stats, lambda: False, lambda: 0.02, 0.25, True, safety_poll=30.0)
    salt1, salt2 = struct.unpack(">II", b"saltsalt")
    assert observer.plan() == (30.0, True)
    index.frame = 1
    observer.step(True, clock.now_us())  # looked at once: an ordinary stamp
    assert stats.uncertain_stamps == 0
    assert observer.observations.stamp(salt1, salt2, 1, 1 << 62) == (observer.observations.looked_us, False)
    assert observer.plan() == (30.0, True)
    index.frame = 2
    observer.step(True, clock.now_us() - 20_000)
    assert stats.uncertain_stamps == 1 and stats.max_stamp_gap_us >= 20_000
    at, late = observer.observations.stamp(salt1, salt2, 2, 1 << 62)
    assert late and at < 1 << 62  # the look's time, flagged as only an upper bound


class _Driven:
    def __init__(self, fail: bool = False) -> None:
        self.deadline, self.calls, self.fail = 0.0, 0, fail

    def on_change(self, woken_us: int) -> None:
        pass

    def on_deadline(self) -> None:
        self.calls += 1
        if self.fail:
            raise RuntimeError("a bug in one database's look")


def test_deadlines_run_in_order_a_failure_stops_no_one_and_unschedule_waits():
    hub = InotifyHub()
    bad, good, dropped, last = _Driven(fail=True), _Driven(), _Driven(), _Driven()
    now = time.monotonic()
    hub.schedule(bad, now + 0.01)
    hub.schedule(good, now + 0.02)
    hub.schedule(dropped, now + 0.03)
    hub.schedule(good, now + 0.04)  # rescheduled: the earlier deadline no longer counts
    hub.schedule(last, now + 0.06)
    hub.unschedule(dropped)
    wait_until(lambda: good.calls, 5, "the deadline after a failing one")
    assert bad.calls == 1 and time.monotonic() >= now + 0.04
    wait_until(lambda: last.calls, 5, "the last deadline")  # (deadlines run in order: all others are done)
    assert (bad.calls, good.calls, dropped.calls, last.calls) == (1, 1, 0, 1)


def test_rescheduling_does_not_grow_the_deadline_heap_without_bound():
    """Every commit moves its database's safety look (30-60 s away): the entries left behind are
    dropped once they outnumber the live ones, and the live deadline still runs."""
    hub = InotifyHub()
    drivens = [_Driven() for _ in range(10)]
    now = time.monotonic()
    for n in range(3000):
        for i, driven in enumerate(drivens):
            hub.schedule(driven, now + 3600 + n + i / 100)
    assert len(hub._timers) <= 2 * 4096
    soon = _Driven()
    hub.schedule(soon, time.monotonic() + 0.01)
    hub.schedule(drivens[0], time.monotonic() + 0.02)
    wait_until(lambda: drivens[0].calls, 5, "a rescheduled deadline")
    assert soon.calls == 1 and sum(d.calls for d in drivens) == 1
