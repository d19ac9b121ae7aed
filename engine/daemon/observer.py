"""The observe stage: when each commit was first seen, independent of when its frames are read.

It looks at the wal-index (and the frame headers past its end) at every write to the -wal and
records what it saw in ``Observations`` (engine/daemon/observations.py), which the reader stamps
transactions with.  The looks are a state machine (``Observer.plan``/``Observer.step``) with two
drivers: a thread of its own waiting on the database's waker (``Observer.run``: a process with a
few databases), or the process's inotify dispatcher, which runs every database's steps itself
(engine/daemon/hubobserver.py: a process serving many).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Callable, Protocol

from ..sqlite.shm import commit_fields
from ..sqlite.walfile import PEEK_FRAMES
from . import clock
from .observations import STAMP_SLACK_US, UNKNOWN_CHANGE, Observations

log = logging.getLogger("walrewind.observer")

EXPECT_POLL = 0.002  # after a WAL write, how often to look for the commit in the wal-index
EXPECT_SECONDS = 0.05  # ... and for how long (a big transaction writes frames long before COMMIT)
UNCERTAIN_LOG_SECONDS = 60.0  # at most one warning about uncertain stamps per minute
MISSED_EVENTS_MAX = 3  # commits in a row found by a timed look with no file event: inotify is not
# delivering this database's events (a bind mount, a network file system): poll it from then on
BACKLOG_FRAMES = 256  # frames the reader may fall behind before it is woken (see Observer)
FIRST_LOOK_MIN = 0.3  # below this hit rate the look at a WAL write is skipped (see run())
FIRST_LOOK_RETRY = 32  # ... but made again after this many skips, in case the writer changed
# A process serving many databases: a quiet database's safety look (with file events) this often,
# times 1-2 by its phase.  Every commit writes the -wal and wakes its observer; the look only
# catches an event that never came (counted, flagged, and after MISSED_EVENTS_MAX a switch to
# polling).  Every 5-10 s it was 130 looks a second for 1,000 quiet namespaces: 2 % of a core.
MANY_SAFETY_SECONDS = 30.0
PUBLISH_POLL = 0.02  # a commit seen written but not yet published: when to look again, unless a file event comes first


class WalIndex(Protocol):
    """What the observer needs of the wal-index (engine/sqlite/shm.ShmObserver)."""

    def header(self): ...
    def read_header(self) -> bytes: ...  # the raw header bytes (shm.commit_fields parses them)
    def writer_active(self) -> bool: ...
    def checkpointer_waiting(self) -> bool: ...


class FileWaker(Protocol):
    """What the observer needs of the file-change waker: engine/daemon/waker.Waker (its own inotify
    descriptor) or engine/daemon/inotifyhub.HubWaker (the process's shared one); it cannot tell."""

    def wait(self, timeout: float, changes: bool = True) -> bool: ...
    def drain(self) -> bool: ...
    def pending(self) -> bool: ...


class Observer:
    """The observe stage: a look at every change of the WAL, made by its own thread (``run``) or by
    the inotify hub's dispatcher (engine/daemon/hubobserver.py), through ``plan``/``step``.

    It only looks (wal-index header, frame headers, lock bytes) and records; it never reads pages.  So commits
    are stamped within a wake-up of being published however busy the reader is (a burst, a
    big fsync), and a checkpointer waiting for our read transaction is noticed within
    ``probe_interval()`` even while the reader works.  The reader is told through ``signal``:
    ``new_commits`` (something to read) and ``checkpointer`` (step aside now).

    With file events a quiet, unpinned observer looks only every ``safety_poll`` (a safety net:
    every commit writes the -wal, which wakes it); without them every ``idle_poll``.  Pinned, it
    probes the lock bytes after ``probe_interval()`` without a WAL write (a waiting checkpointer
    holds the write lock: no commit lands meanwhile), unless the process's shared prober
    (engine/daemon/prober.py) does that for it (``self_probe`` False: a process serving many
    databases).
    """

    def __init__(self, wal_index: WalIndex, waker: FileWaker, stats, pinned: Callable[[], bool],
                 probe_interval: Callable[[], float], idle_poll: float, inotify: bool,
                 observations: Observations | None = None, safety_poll: float | None = None,
                 peek: Callable[..., tuple[bytes, int, tuple[int, int]] | int] | None = None) -> None:
        self.wal_index = wal_index
        self.peek = peek  # WalFile.peek_commit of the -wal, on a descriptor of this thread's own
        self.waker = waker
        self.stats = stats
        self.pinned = pinned
        self.probe_interval = probe_interval
        self.idle_poll = idle_poll  # how often to look without file events
        self.safety_poll = safety_poll if safety_poll is not None else idle_poll  # ... and with them
        self.inotify = inotify
        self._missed_events = 0  # commits in a row first seen by a timed look with no file event
        self.self_probe = True  # False: the shared prober probes our lock bytes while pinned
        self.observations = observations if observations is not None else Observations()
        self.cond = threading.Condition()
        self.new_commits = False  # a commit boundary observed that the reader has not taken
        self.checkpointer = False  # a blocking checkpoint waits for our read transaction
        self.reader_waiting_for_commits = True  # the reader wants to hear of every new commit
        # Reads what a look saw published, on the looking thread, instead of telling the reader;
        # False: it could not (tailloop.read_beside: the inotify dispatcher's looks).
        self.read_here: Callable[[], bool] | None = None
        # The reader's position (salt1, salt2, frame), set after each of its passes; a commit this
        # many frames past it (or in another generation) is a backlog: the reader is woken even
        # while it defers, so a busy writer is read in batches of ~1 MB, not every 250 ms.
        self.read_upto: tuple[int, int, int] | None = None
        self.backlog_frames = BACKLOG_FRAMES
        self.backlog = False
        self._last_seen: tuple | None = None  # (iChange, salts, mxFrame) last recorded
        self._cur: tuple[int, int, bytes, int] | None = None  # (iChange, mxFrame, salts, page size) last read
        self._raw = b""  # the wal-index header bytes _cur was read from
        self._last_uncertain_log = 0.0
        self.uncertain_since_log = 0
        # The looks' state between steps (plan() and step() run on one thread at a time: the
        # observer's own, or the hub's dispatcher).
        self._expect_until = 0.0  # the WAL was written but no commit seen yet: look again every EXPECT_POLL
        self._publish_at = 0.0  # a commit seen written (stamped) but not published: look then, unless an event comes first
        self._next_probe = 0.0
        self._hits, self._skipped = 1.0, 0  # how often a look at a WAL write finds something (moving average); looks skipped
        self._last_peek: tuple | None = None  # the last commit frame seen written before it was published
        self._started = self._timeout = 0.0  # when plan() planned the wait, and for how long
        self._changes = True  # ... whether a change of the -wal ends it
        self._expecting = self._last_look = False

    def _idle_timeout(self) -> float:
        if self.self_probe and self.pinned():
            return self.probe_interval()
        return self.safety_poll if self.inotify else self.idle_poll

    def _timed_discovery(self) -> None:
        """A commit was first seen by a timed look.  With file events that should not happen (the
        commit wrote the -wal after our last drain): if it keeps happening and no event is pending
        even now, this database's events are not delivered; poll it as without inotify, rather
        than stamp every commit up to ``safety_poll`` late."""
        if not self.inotify or self.waker.pending():  # its event was only late (not taken: it may be the next commit's)
            self._missed_events = 0
            return
        self._missed_events += 1
        if self._missed_events >= MISSED_EVENTS_MAX:
            self.inotify = self.observations.event_driven = False
            log.warning("%d commits in a row were found by a timed look, not announced by a file event: inotify "
                        "does not deliver this database's events; polling it every %.0f ms from now on",
                        self._missed_events, self.idle_poll * 1000)

    def probe_checkpointer(self) -> None:
        """Tell the reader when a blocking checkpoint waits for our pin (the shared prober's call)."""
        if self.wal_index.checkpointer_waiting():
            self._notify(checkpointer=True)

    def observe(self):
        """Read the wal-index header and remember when each commit boundary was first seen.

        The time is taken *after* the header is read, so every commit the header shows had
        happened by then: a stamp never precedes its commit.  Thread-safe (the reader calls it
        around its reads too).
        """
        hdr = self.wal_index.header()
        if hdr is not None:
            self.observations.add(hdr.salts, hdr.max_frame, clock.now_us(), hdr.change)
        return hdr

    def _header(self, raw: bytes, looked: int) -> bool:
        """Record what wal-index header bytes ``raw`` (read just before ``looked``) show, when they
        differ from the last look's; True when a commit boundary is new.

        Bytes torn by a concurrent update (the two copies differ) are read again; the time is then
        taken after the read that succeeded, so a stamp never precedes its commit.
        """
        fields = commit_fields(raw)
        for _ in range(50):
            if fields is not None:
                break
            raw = self.wal_index.read_header()
            looked = clock.now_us()
            fields = commit_fields(raw)
        else:
            self._raw = b""
            return False
        change, max_frame, salts, _page_size = fields
        self._cur, self._raw = fields, raw
        seen = (change, salts, max_frame)
        if seen == self._last_seen:
            return False  # only read marks or nBackfill moved
        self._last_seen = seen
        self.observations.add(salts, max_frame, looked, change)
        return True

    def _uncertain(self, bound_us: int, added_before: int) -> None:
        """A commit first seen by a timed look, or after the thread overslept: its stamp may be
        late by up to ``bound_us``.  Counted, logged at most once a minute, and its transactions
        flagged (FLAG_STAMP_LATE) so a restore near them says so."""
        self.observations.mark_uncertain(added_before)
        self.stats.uncertain_stamps += 1
        self.stats.max_stamp_gap_us = max(self.stats.max_stamp_gap_us, bound_us)
        self.uncertain_since_log += 1

    def _notify(self, checkpointer: bool = False) -> None:
        if not checkpointer and self.read_here is not None and self.read_here():
            return
        with self.cond:
            if checkpointer:
                self.checkpointer = True
                self.cond.notify_all()
            else:
                self.new_commits = True
                if self.reader_waiting_for_commits:
                    self.cond.notify_all()
                elif not self.backlog and self._behind() >= self.backlog_frames:
                    self.backlog = True
                    self.cond.notify_all()

    def _behind(self) -> int:
        """Frames published past the reader's position (a lot, in another generation)."""
        cur, upto = self._cur, self.read_upto
        if cur is None or upto is None:
            return 0
        if int.from_bytes(cur[2], "big") != (upto[0] << 32) | upto[1]:
            return 1 << 30
        return cur[1] - upto[2]

    def run(self, stop: threading.Event) -> None:
        """The observer's own thread (a process with a few databases): wait as ``plan()`` says,
        then ``step()``, until ``stop``."""
        self.observations.event_driven = self.inotify
        wait = self.waker.wait
        try:
            while not stop.is_set():
                timeout, changes = self.plan()
                if changes:
                    woke = wait(timeout)
                else:
                    if timeout:
                        wait(timeout, False)
                    woke = False
                if not woke and stop.is_set():
                    break
                self.step(woke)
        finally:
            self.observations.event_driven = False

    def plan(self) -> tuple[float, bool]:
        """The wait before the next look: how long, and whether a change of the -wal ends it.

        Waiting for changes: the timed wake-up is the safety look (or, pinned without the shared
        prober, the lock probe), or the look for a commit stamped written but not yet published
        (``PUBLISH_POLL``).  Not waiting for them: a look ``EXPECT_POLL`` after a WAL write whose
        commit was not found (the rest of that write's events are taken by the look's drain), or
        0 seconds: look now.
        """
        started = self._started = time.monotonic()
        self._last_look = False
        if not self._expect_until:
            timeout = self._idle_timeout()
            if self._publish_at:
                timeout = max(0.0, min(timeout, self._publish_at - started))
            self._timeout, self._changes = timeout, True
            return timeout, True
        expecting = self._expect_until > started
        if not expecting:
            # Still no commit after EXPECT_SECONDS: while the writer holds the write lock (a
            # slow fsync under load, a big transaction) its commit is still to come; keep
            # looking rather than wait for a timed look (its file events were drained).
            # Otherwise look once more now: it may have committed since the last look.
            expecting = self.wal_index.writer_active()
            self._expect_until = started + EXPECT_SECONDS if expecting else 0.0
            self._last_look = not expecting
        self._expecting = expecting
        self._timeout, self._changes = (0.0 if self._last_look else EXPECT_POLL), False
        return self._timeout, False

    def step(self, woke: bool, woken_us: int = 0) -> None:
        """The look the wait ``plan()`` asked for ended in: ``woke``, by a change of the -wal.

        ``woken_us``: when the driver learnt of that change (the dispatcher, engine/daemon/
        hubobserver.py); a look made more than STAMP_SLACK_US later (the dispatcher busy with
        other databases) stamps a commit it finds published uncertain, by that much.
        """
        stats = self.stats
        if self._changes:
            if woke:
                self._publish_at = 0.0
                self._on_wal_write(woken_us)
                return
            expecting = bool(self._publish_at) and time.monotonic() >= self._publish_at  # a look for a commit stamped already
            self._publish_at = 0.0
            if expecting:
                stats.wake_looks += 1
            else:
                stats.wake_timeouts += 1
        else:
            expecting = self._expecting
            if not self._last_look:
                stats.wake_looks += 1
        self._timed_look(expecting)

    def _on_wal_write(self, woken_us: int) -> None:
        """The event path: a WAL write, nothing expected; stamp its commit.

        Per commit at a steady rate this is one wake-up: the WAL write (inotify).  Its look finds
        the commit published (``synchronous=NORMAL``: SQLite publishes right after writing) or
        its commit frame written and not yet published (``FULL``: SQLite fsyncs first).  The
        latter is stamped then, with the frame's running checksum (WalFile.peek_commit): only
        the transaction ending at exactly that frame with exactly that checksum takes the time
        (Observations.stamp), so a writer that died before publishing, whose frames the next
        writer overwrites, or a torn read, never lends it.  The reader hears of the commit when
        it is published, at the next WAL write or ``PUBLISH_POLL`` later.

        A wake-up costs ~100-200 us of CPU on a small VM with a writer running (a cross-CPU wake,
        cold caches: every Python operation after it costs several times its warm cost), so this
        does only this: one header pread compared as raw bytes with the last one (parsed only
        when they differ), one pread of the frame headers past the published end, the reader's
        notification only when a commit was published and the reader does not know of new
        commits yet.  No lock probe: the events were drained *before* the look and the peek
        sees every frame written before that, so a transaction still being written (or not
        begun) writes the WAL again after the drain, and wakes us again.  Only a transaction
        longer than the peek (or a look without one) needs the timed looks every
        ``EXPECT_POLL`` while the writer holds the write lock.  Nor a checkpointer probe: a
        blocking checkpointer holds the write lock while it waits, so no WAL write wakes us
        then, and the timed wake-up (``probe_interval()`` at most after the last event) probes.
        """
        stats, obs, now_us, monotonic = self.stats, self.observations, clock.now_us, time.monotonic
        stats.wake_changes += 1
        if self._hits < FIRST_LOOK_MIN and self._skipped < FIRST_LOOK_RETRY:
            # A writer whose looks at its WAL writes keep finding nothing: look EXPECT_POLL later instead.
            self._skipped += 1
            obs.looked_us = now_us()
            self._expect_until = monotonic() + EXPECT_SECONDS
            return
        added_before = obs.added
        raw = self.wal_index.read_header()
        obs.looked_us = looked = now_us()
        changed = raw != self._raw and self._header(raw, looked)
        if changed and woken_us and looked - woken_us > STAMP_SLACK_US:
            # Published before our look, perhaps as long before as we took to get to it since
            # the event was read (the dispatcher's other looks): only an upper bound.  (A commit
            # the peek below finds still unpublished is stamped while committing: exact.)
            self._uncertain(looked - woken_us, added_before)
        cur, peek = self._cur, self.peek
        found = peek(cur[2], cur[1], cur[3], recheck=not changed) if cur is not None and peek is not None else None
        if found.__class__ is tuple:
            if found != self._last_peek:
                self._last_peek = found
                obs.add(found[0], found[1], now_us(), UNKNOWN_CHANGE, cksum=found[2])
                stats.unpublished_stamps += 1
                self._publish_at = monotonic() + PUBLISH_POLL
            elif not changed:  # stamped already, still not published
                self._publish_at = monotonic() + PUBLISH_POLL
            hit = True
        elif found is None or found == PEEK_FRAMES:  # no peek, or too long to tell: look again
            hit = changed
            if not changed or self.wal_index.writer_active():
                self._expect_until = monotonic() + EXPECT_SECONDS
            else:  # no writer now: one more look, for a commit published since ours
                raw = self.wal_index.read_header()
                if raw != self._raw and self._header(raw, now_us()):
                    self._expect_until = monotonic() + EXPECT_SECONDS  # (and yet another: keep looking)
        else:
            hit = changed or found > 0  # a transaction under way: its next write wakes us
        self._hits += ((1.0 if hit else 0.0) - self._hits) / 8
        self._skipped = 0
        if changed:
            self._missed_events = 0
            # The reader knows of new commits already and defers: only a backlog is news.
            # (Read without the lock: the reader clears new_commits before it reads the
            # wal-index, so a commit published before our look is read either way.)
            if not self.new_commits or self.reader_waiting_for_commits or (
                    not self.backlog and self._behind() >= self.backlog_frames):
                self._notify()

    def _timed_look(self, expecting: bool) -> None:
        """A look no file event asked for: EXPECT_POLL after one, or a timed (safety) look.

        A commit this finds that no event announced is counted and flagged (its stamp is late
        by up to the timeout); so is one found after the wait overslept its timeout by more
        than STAMP_SLACK_US.
        """
        started, timeout, last_look, expect_until = self._started, self._timeout, self._last_look, self._expect_until
        obs, stats = self.observations, self.stats
        now = time.monotonic()
        added_before = obs.added
        overslept_us = int((now - started - timeout) * 1e6)
        drained = False
        if expecting or last_look:
            obs.looked_us = clock.now_us()  # attentive: a commit published from now on is seen within EXPECT_POLL
            # The file changes so far belong to the commit we are looking for (or to one
            # already under way, whose writer holds the write lock: see below).
            drained = self.waker.drain()
            if drained and last_look:
                expect_until = now + EXPECT_SECONDS  # a transaction began after the probe
        first_look = self._last_seen is None  # the state at start: no commit just seen, no gap
        raw = self.wal_index.read_header()
        obs.looked_us = looked = clock.now_us()
        if raw != self._raw and self._header(raw, looked):
            active = False
            # Another write transaction already under way: keep looking for its commit (its
            # file events may have been drained above).  No writer now: look once more, for
            # a commit published between our look and the probe (its events were drained
            # too); any later one writes the WAL after the drain and wakes us.  Nothing
            # drained (the publication look after a commit stamped unpublished, a safety look),
            # every later write's event is still to come and wakes us: no probe, no second look.
            while drained or not self.inotify:
                active = self.wal_index.writer_active()
                if active:
                    break
                raw = self.wal_index.read_header()
                if raw == self._raw or not self._header(raw, clock.now_us()):
                    break
            expect_until = now + EXPECT_SECONDS if active else 0.0
            timed = not expecting and not last_look  # not woken by a file change
            if timed and not first_look:
                stats.polled_stamps += 1
                self._uncertain(int(timeout * 1e6) + max(0, overslept_us), added_before)
                self._timed_discovery()
            elif not timed:
                self._missed_events = 0  # announced by its file event (directly or by the look after it)
                if overslept_us > STAMP_SLACK_US and not first_look:
                    self._uncertain(overslept_us + int(timeout * 1e6), added_before)
            self._notify()
        elif expecting and not expect_until:
            expect_until = now + EXPECT_SECONDS  # (a stamped commit still unpublished)
        elif not self.inotify:
            self._notify()  # polling only: let the reader look for itself
        if self.self_probe and now >= self._next_probe and self.pinned():
            self._next_probe = now + self.probe_interval() - 0.001  # a timed wake-up always probes
            if self.wal_index.checkpointer_waiting():
                self._notify(checkpointer=True)
        if self.uncertain_since_log and time.monotonic() - self._last_uncertain_log > UNCERTAIN_LOG_SECONDS:
            log.warning(
                "%d commits were first seen more than %.0f ms after the previous look (largest gap %.0f ms): "
                "their stamps may be that late (the daemon was starved of CPU or busy)",
                self.uncertain_since_log, STAMP_SLACK_US / 1000, stats.max_stamp_gap_us / 1000,
            )
            self.uncertain_since_log = 0
            self._last_uncertain_log = time.monotonic()
        self._expect_until = expect_until
