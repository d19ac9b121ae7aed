"""A commit is stamped at the WAL write that carries its commit frame, before SQLite publishes it.

With ``synchronous=FULL`` a writer fsyncs its frames before it publishes the commit in the
wal-index, so the observer's look at the WAL write's file event used to find nothing and a second
look was needed (two wake-ups per commit).  Now that look also reads the frame headers past the
published end (``WalFile.peek_commit``); a commit frame found there is stamped at once.  Such an
observation only vouches for the transaction ending at exactly that frame with exactly that running
checksum: a writer that died before publishing leaves frames the next writer overwrites, and that
next transaction must never inherit the earlier time (it would be an extra transaction in a restore).
"""

from __future__ import annotations

import os
import sqlite3
import struct
import subprocess
import sys
import threading
import time

from harness import (
    DaemonThread,
    assert_one_record_per_commit,
    create_db,
    read_log,
    run_writer,
)
from walrewind.engine.daemon import clock
from walrewind.engine.daemon.observations import UNKNOWN_CHANGE, Observations
from walrewind.engine.daemon.observer import Observer
from walrewind.engine.daemon.stats import ReplicatorStats
from walrewind.engine.sqlite.shm import SHM_HEADER_BYTES, commit_fields
from walrewind.engine.sqlite.walfile import PEEK_FRAMES, WalFile


def _wal_with_commits(tmp_path, rows_per_txn: list[int]) -> tuple[str, list, sqlite3.Connection]:
    """A -wal holding one transaction per entry (stdlib sqlite3 only in this process; no checkpoint)."""
    db = str(tmp_path / "t.db")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    conn.execute("CREATE TABLE t(x BLOB)")
    for n in rows_per_txn:
        conn.execute("BEGIN")
        conn.executemany("INSERT INTO t VALUES (?)", [(b"x" * 3000,)] * n)
        conn.execute("COMMIT")
    txns = WalFile(db + "-wal").read(None).transactions  # the ground truth: chain-verified
    return db + "-wal", txns, conn  # open: closing the last connection would checkpoint the WAL away


def test_peek_finds_the_next_commit_frame_written_past_the_published_end(tmp_path):
    wal_path, txns, conn = _wal_with_commits(tmp_path, [1, 1, 30])
    try:
        wal = WalFile(wal_path)
        salts = wal.header().salts
        first, second, big = (t.end for t in txns[1:4])  # txns[0]: CREATE TABLE
        assert wal.peek_commit(salts, txns[0].end.frame, 4096) == (salts, first.frame, first.cksum)
        assert wal.peek_commit(salts, first.frame, 4096) == (salts, second.frame, second.cksum)
        # a transaction longer than the look-ahead (4 frames) is left to the wal-index (a later look)
        assert wal.peek_commit(salts, second.frame, 4096) == PEEK_FRAMES == 4
        assert wal.peek_commit(salts, second.frame, 4096, limit=64) == (salts, big.frame, big.cksum)
        assert wal.peek_commit(salts, big.frame, 4096) == 0  # nothing written past the end
        # the file's salts differ from the published ones: the writer restarted the WAL, look from frame 1
        other = struct.pack(">II", 1, 2)
        assert wal.peek_commit(other, big.frame, 4096)[1] == txns[0].end.frame
        wal.close()
        # no WAL written when the wal-index was built (zero salts, and its page size says 65536): the
        # file's own header gives the generation and the page size (the first commit after a start)
        assert wal.peek_commit(bytes(8), 0, 65536) == (salts, txns[0].end.frame, txns[0].end.cksum)
        # a transaction still being written (two of its frames so far): its next write is still to come
        partial = wal_path + ".partial"
        with open(wal_path, "rb") as src, open(partial, "wb") as dst:
            dst.write(src.read(32 + (second.frame + 2) * (24 + 4096)))
        part = WalFile(partial)
        assert part.peek_commit(salts, second.frame, 4096) == 2
        part.close()
    finally:
        conn.close()


def test_peek_checks_for_a_replaced_file_unless_told_the_look_just_saw_a_commit(tmp_path):
    """A look that just saw a commit published skips the peek's stat of the -wal's path (the next
    look checks); one that saw nothing new looks in a replaced file at once."""
    wal_path, txns, conn = _wal_with_commits(tmp_path, [1])
    other_dir = tmp_path / "other"
    other_dir.mkdir()
    other_wal, other_txns, other_conn = _wal_with_commits(other_dir, [1, 1])
    try:
        wal = WalFile(wal_path)
        salts, end = wal.header().salts, txns[-1].end.frame
        assert wal.peek_commit(salts, end, 4096) == 0  # (opens the descriptor: nothing past the end)
        with open(other_wal, "rb") as src, open(wal_path + ".new", "wb") as dst:
            dst.write(src.read())
        os.replace(wal_path + ".new", wal_path)  # the -wal replaced by one with more commits
        new_salts = WalFile(wal_path).header().salts
        first = other_txns[1].end  # the new file's first commit after its CREATE TABLE
        stale = wal.peek_commit(new_salts, other_txns[0].end.frame, 4096, recheck=False)  # the old file still:
        assert stale == 0 or stale[0] != new_salts  # evidence for no transaction of the new file
        assert wal.peek_commit(new_salts, other_txns[0].end.frame, 4096) == (new_salts, first.frame, first.cksum)
        wal.close()
    finally:
        conn.close()
        other_conn.close()


def test_an_unpublished_observation_stamps_only_its_own_transaction():
    seen = Observations()
    salts = struct.pack(">II", 7, 9)
    seen.add(salts, 10, 1_000, 5)  # published: commit boundary 10
    seen.add(salts, 12, 2_000, UNKNOWN_CHANGE, cksum=(1, 2))  # commit frame 12 written, not published
    seen.add(salts, 12, 3_000, 6)  # ... published one look later
    assert seen.stamp(7, 9, 12, 9_000, cksum=(1, 2)) == (2_000, False)
    other = Observations()
    for args, kw in (((salts, 12, 2_000, UNKNOWN_CHANGE), {"cksum": (1, 2)}), ((salts, 12, 3_000, 6), {})):
        other.add(*args, **kw)
    # another transaction reusing frame 12 (its first writer died unpublished): the later look stamps it
    assert other.stamp(7, 9, 12, 9_000, cksum=(3, 4)) == (3_000, False)
    # nor does it vouch for a shorter transaction that reused frames up to 11
    third = Observations()
    third.add(salts, 12, 2_000, UNKNOWN_CHANGE, cksum=(1, 2))
    assert third.stamp(7, 9, 11, 9_000, cksum=(5, 6)) == (9_000, True)
    # and SQLite's commit counter is never taken from it
    assert third.change_at(7, 9, 12) is None and third.first_seen_after(0) is None


def _shm_header(max_frame: int, salts: bytes, change: int = 1) -> bytes:
    """Wal-index header bytes: two equal copies (iVersion, unused, iChange, isInit, bigEndCksum,
    szPage, mxFrame, nPage, aFrameCksum, aSalt, aCksum), then nBackfill, read marks, lock bytes."""
    copy = struct.pack("=IIIBBHII8x8s8x", 3007000, 0, change, 1, 0, 4096, max_frame, 2, salts)
    return copy * 2 + bytes(SHM_HEADER_BYTES - 96)


class _OneEvent:
    """A waker that reports one WAL write, then sleeps until stopped."""

    def __init__(self, stop: threading.Event) -> None:
        self.stop, self.events = stop, 1

    def wait(self, timeout: float, changes: bool = True) -> bool:
        if changes and self.events:
            self.events -= 1
            return True
        self.stop.wait(timeout)
        return False

    def drain(self) -> bool:
        return False


def test_the_observer_stamps_a_commit_at_the_write_event_before_it_is_published(tmp_path):
    wal_path, txns, conn = _wal_with_commits(tmp_path, [1])
    try:
        wal = WalFile(wal_path)
        salts = wal.header().salts
        published, written = txns[0].end, txns[1].end  # SQLite has published only the CREATE TABLE
        raw = _shm_header(published.frame, salts)
        assert commit_fields(raw) == (1, published.frame, salts, 4096)
        index = type("Index", (), {"read_header": lambda self: raw, "writer_active": lambda self: True,
                                   "checkpointer_waiting": lambda self: False})()
        stop, stats = threading.Event(), ReplicatorStats()
        observer = Observer(index, _OneEvent(stop), stats, lambda: True, lambda: 0.02, 0.02, True, peek=wal.peek_commit)
        thread = threading.Thread(target=observer.run, args=(stop,))
        thread.start()
        try:
            for _ in range(200):
                if stats.unpublished_stamps:
                    break
                stop.wait(0.01)
        finally:
            stop.set()
            thread.join()
        assert stats.unpublished_stamps == 1
        at, late = observer.observations.stamp(written.salt1, written.salt2, written.frame, 1 << 62, written.cksum)
        assert not late and at < 1 << 62
        wal.close()
    finally:
        conn.close()


def test_stamps_of_a_fully_synced_writer_fall_inside_their_commits(tmp_path):
    """End to end, synchronous=FULL (the stdlib default): no stamp before its BEGIN, none after
    its COMMIT returned (plus scheduling slack), one record per commit."""
    db, replica, log = str(tmp_path / "app.db"), str(tmp_path / "replica"), str(tmp_path / "log")
    create_db(db)
    with DaemonThread(db, replica, str(tmp_path / "state"), upload_interval=0.1) as daemon:
        run_writer({"db": db, "log": log, "rate": 50, "txns": 40, "seed": 5, "checksums": True})
    txns, _ = read_log(log)
    points = assert_one_record_per_commit(replica, txns)  # also: no stamp before its BEGIN
    assert points.commits[-1] == 40  # (a commit that changed nothing has no record)
    # none long after its COMMIT returned (a loaded box may delay a few: they are flagged and counted)
    assert points.worst_lag_us(txns) < 200_000 or daemon.stats.uncertain_stamps, points.worst_lag_us(txns)


class _ShmHeaderOnly:
    """The wal-index as the reader's look sees it: the published header, nothing else."""

    def __init__(self, header) -> None:
        self._header = header

    def header(self):
        return self._header


def _reader_seeing(wal_path: str, txns: list, observations: Observations):
    """A Reader whose look (Reader.observe) finds the last of ``txns`` published; observe() uses
    only the wal-index header, the -wal, the observations and the stats."""
    from walrewind.engine.daemon.reader import Reader
    from walrewind.engine.sqlite.shm import ShmHeader

    end = txns[-1].end
    salts = struct.pack(">II", end.salt1, end.salt2)
    header = ShmHeader(len(txns), end.frame, 0, salts, 0, (), 4096)
    return Reader(None, None, ReplicatorStats(), None, _ShmHeaderOnly(header), WalFile(wal_path), None,
                  observations, lambda: False), end


def test_a_read_pass_lets_the_event_driven_observer_stamp_a_commit_it_saw_first(tmp_path):
    """The reader's look came first (the observer, woken by the same WAL write, waited for the
    GIL): the observer's look, a moment later, stamps the commit, certain.  Without an observer
    looking within the grace, the reader's own stamp is flagged late, as it always was."""
    wal_path, txns, conn = _wal_with_commits(tmp_path, [1, 1])
    try:
        seen = Observations()
        seen.event_driven, seen.looked_us = True, clock.now_us() - 60_000  # a quiet spell before this commit
        reader, end = _reader_seeing(wal_path, txns, seen)
        asked = threading.Event()
        last_write = reader.wal.last_write_us
        reader.wal.last_write_us = lambda: (asked.set(), last_write())[1]
        salts = struct.pack(">II", end.salt1, end.salt2)
        observer = threading.Thread(target=lambda: asked.wait(10) and seen.add(salts, end.frame, clock.now_us(), len(txns)))
        observer.start()
        os.utime(wal_path)  # written just now (a loaded box may take longer than the slack since the writes)
        reader.observe()
        observer.join()
        assert reader.stats.observer_waits == 1
        at, late = seen.stamp(end.salt1, end.salt2, end.frame, 1 << 62, end.cksum)
        assert not late and at < 1 << 62

        alone = Observations()
        alone.event_driven, alone.looked_us = True, clock.now_us() - 60_000
        reader, end = _reader_seeing(wal_path, txns, alone)
        os.utime(wal_path)
        reader.observe()  # nobody looks within the grace: a starved observer
        assert reader.stats.observer_waits == 0
        assert alone.stamp(end.salt1, end.salt2, end.frame, 1 << 62, end.cksum)[1] is True
    finally:
        conn.close()


def test_a_read_pass_does_not_wait_for_a_commit_written_long_ago(tmp_path):
    """The -wal was last written longer ago than the stamp slack: whoever looks now is late, so
    the reader stamps it at once, flagged (no grace: the observer would stamp it just as late)."""
    wal_path, txns, conn = _wal_with_commits(tmp_path, [1, 1])
    try:
        long_ago = clock.now_us() - 2_000_000
        os.utime(wal_path, ns=(long_ago * 1000, long_ago * 1000))
        seen = Observations()
        seen.event_driven, seen.looked_us = True, long_ago
        reader, end = _reader_seeing(wal_path, txns, seen)
        reader.observe()
        assert reader.stats.observer_waits == 0
        at, late = seen.stamp(end.salt1, end.salt2, end.frame, 1 << 62, end.cksum)
        assert late and at < 1 << 62
    finally:
        conn.close()


def test_the_first_commit_after_a_start_on_an_unwritten_wal_is_seen_at_its_write(tmp_path):
    """The daemon started on a database whose -wal was never written (the wal-index names no
    generation, and its page size reads 65536): the first commit's write event must find its
    commit frame (the WAL file's own header gives salts and page size), not leave it to the safety
    look seconds later (it once read the frames at a 64 KiB stride and took the commit frame for a
    transaction still being written)."""
    db = str(tmp_path / "app.db")
    create_db(db)
    with DaemonThread(db, str(tmp_path / "replica"), str(tmp_path / "state")) as daemon:
        stats = daemon.stats
        # a commit of two frames (a new table: the schema page and the table's), in another process
        code = ("import sqlite3, sys; c = sqlite3.connect(sys.argv[1], isolation_level=None); "
                "c.execute('BEGIN'); c.execute('CREATE TABLE t2(v)'); c.execute('INSERT INTO t2 VALUES (1)'); "
                "c.execute('COMMIT'); c.close()")
        subprocess.run([sys.executable, "-c", code, db], check=True)
        deadline = time.monotonic() + 3.0  # the safety look of a few databases comes after 5 s
        while stats.transactions < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert stats.transactions == 1 and stats.polled_stamps == 0 and stats.uncertain_stamps == 0
