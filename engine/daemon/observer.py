"""When each commit was first seen, independent of when its frames are read.

The wal-index header (salts, mxFrame) changes with every commit.  Each time the daemon looks at it
(every inotify wake-up, every read pass) it records ``(generation salts, mxFrame, time)``, the
time taken *after* the header was read.  A transaction read later, perhaps seconds later under a
burst, takes the time of the first observation whose mxFrame had reached its commit frame in the
same generation: the commit had happened by then (the stamp never precedes it), and it was seen
within one wake-up of happening.  Without a matching observation the reader's own time is used,
which is later still, so a lost observation makes a stamp late, never early.  A look may also
find a commit frame written but not yet published (``synchronous=FULL`` fsyncs in between): that
observation carries the frame's running checksum and stamps only the transaction ending there
with that checksum (``Observer._observe_unpublished``).

Memory is bounded: observations older than the last stamped commit are dropped, and at most
``MAX_OBSERVATIONS`` are kept (the oldest go first; their commits fall back to a later stamp).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from typing import Callable, Protocol

from . import clock

log = logging.getLogger("walrewind.observer")

MAX_OBSERVATIONS = 1 << 16
EXPECT_POLL = 0.002  # after a WAL write, how often to look for the commit in the wal-index
EXPECT_SECONDS = 0.05  # ... and for how long (a big transaction writes frames long before COMMIT)
STAMP_SLACK_US = 5_000  # a commit first seen more than this after the previous look: stamp uncertain
UNCERTAIN_LOG_SECONDS = 60.0  # at most one warning about uncertain stamps per minute
MISSED_EVENTS_MAX = 3  # commits in a row found by a timed look with no file event: inotify is not
# delivering this database's events (a bind mount, a network file system): poll it from then on
BACKLOG_FRAMES = 256  # frames the reader may fall behind before it is woken (see Observer)
FIRST_LOOK_MIN = 0.3  # below this hit rate the look at a WAL write is skipped (see run())
FIRST_LOOK_RETRY = 32  # ... but made again after this many skips, in case the writer changed
PUBLISH_POLL = 0.02  # a commit seen written but not yet published: when to look again, unless a file event comes first
UNKNOWN_CHANGE = -1  # the commit counter of an observation made before the commit was published


class Observations:
    def __init__(self, limit: int = MAX_OBSERVATIONS) -> None:
        # (salts as one key, mxFrame, time, iChange, uncertain, running checksum if seen unpublished):
        # one per commit boundary first seen, in time order
        self._seen: deque[tuple[int, int, int, int, bool, tuple[int, int] | None]] = deque()
        self.added = 0  # observations ever added (mark_uncertain counts from it)
        self.looked_us = 0  # when the observer last read the header (the reader's looks compare)
        self._limit = limit
        self._lock = threading.Lock()  # the observer thread adds, the reader stamps

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, salts: bytes, max_frame: int, at_us: int, change: int, uncertain: bool = False,
            cksum: tuple[int, int] | None = None) -> None:
        """Record a look that showed commit boundary ``max_frame``; ``uncertain``: the look came
        more than STAMP_SLACK_US after the one before it, so the commit may be that much older.

        ``cksum``: the look saw commit frame ``max_frame`` *written* but not yet published (see
        WalFile.peek_commit); its running checksum then identifies the transaction, and the
        observation stamps only the one ending at exactly that frame with exactly that checksum.
        ``change`` is UNKNOWN_CHANGE for those (SQLite counts the commit when it publishes it).
        """
        key = int.from_bytes(salts, "big")
        with self._lock:
            seen = self._seen
            if seen and seen[-1][0] == key and seen[-1][1] >= max_frame and (cksum is not None or seen[-1][5] is None):
                return  # nothing new since the last observation
            seen.append((key, max_frame, at_us, change, uncertain, cksum))
            self.added += 1
            if len(seen) > self._limit:
                seen.popleft()

    def mark_uncertain(self, since_added: int) -> None:
        """Every observation added after the count was ``since_added`` came after a gap."""
        with self._lock:
            seen = self._seen
            for i in range(1, min(self.added - since_added, len(seen)) + 1):
                key, max_frame, at_us, change, _uncertain, cksum = seen[-i]
                seen[-i] = (key, max_frame, at_us, change, True, cksum)

    def stamp(self, salt1: int, salt2: int, frame: int, fallback_us: int,
              cksum: tuple[int, int] | None = None) -> tuple[int, bool]:
        """When commit ``frame`` of generation (salt1, salt2) was first seen, and whether that
        time is only an upper bound (the look came after a gap; or no look showed it: the
        reader's time ``fallback_us``, late by an unknown amount).  ``cksum``: the running
        checksum after the transaction's commit frame (what a look at an unpublished commit
        frame must match)."""
        key = (salt1 << 32) | salt2
        with self._lock:
            seen = self._seen
            for i, (k, max_frame, at_us, _change, uncertain, seen_cksum) in enumerate(seen):
                if k != key or max_frame < frame:
                    continue
                if seen_cksum is not None and (max_frame != frame or seen_cksum != cksum):
                    continue  # a commit frame seen before it was published: evidence for that transaction only
                for _ in range(i):  # older ones only served commits already stamped
                    seen.popleft()
                return (at_us, uncertain) if at_us <= fallback_us else (fallback_us, True)
        return fallback_us, True

    def change_at(self, salt1: int, salt2: int, frame: int) -> int | None:
        """SQLite's commit counter when the wal-index ended exactly at this commit, if observed.

        Lets the reader account for a batch that ended short of the current end (a burst): the
        commits read up to an observed boundary must equal the counter's advance up to it.
        """
        key = (salt1 << 32) | salt2
        with self._lock:
            for k, max_frame, _at, change, _uncertain, _cksum in reversed(self._seen):
                if change == UNKNOWN_CHANGE:
                    continue
                if k == key and max_frame == frame:
                    return change
                if k == key and max_frame < frame:
                    return None
        return None

    def first_seen_after(self, change: int) -> int | None:
        """When a commit SQLite counted after counter value ``change`` was first seen (µs), if any
        observation shows one: the age of the oldest commit not yet read and spooled."""
        with self._lock:
            for _key, _max_frame, at_us, seen_change, _uncertain, _cksum in self._seen:
                if seen_change != UNKNOWN_CHANGE and 0 < ((seen_change - change) & 0xFFFFFFFF) < 0x80000000:  # ahead, modulo wrap-around
                    return at_us
        return None

    def clear(self) -> None:
        with self._lock:
            self._seen.clear()


class WalIndex(Protocol):
    """What the observer needs of the wal-index (engine/sqlite/shm.ShmObserver)."""

    def header(self): ...
    def writer_active(self) -> bool: ...
    def checkpointer_waiting(self) -> bool: ...


class FileWaker(Protocol):
    """What the observer needs of the file-change waker: engine/daemon/waker.Waker (its own inotify
    descriptor) or engine/daemon/inotifyhub.HubWaker (the process's shared one); it cannot tell."""

    def wait(self, timeout: float, changes: bool = True) -> bool: ...
    def drain(self) -> bool: ...
    def pending(self) -> bool: ...


class Observer:
    """The observe stage: its own thread, waking at every change of the WAL.

    It only looks (wal-index header, lock bytes) and records; it never reads frames.  So commits
    are stamped within a wake-up of being published however busy the reader is (a burst, a
    big fsync), and a checkpointer waiting for our read transaction is noticed within
    ``probe_interval()`` even while the reader works.  The reader is told through ``signal``:
    ``new_commits`` (something to read) and ``checkpointer`` (step aside now).

    With file events a quiet, unpinned observer looks only every ``safety_poll`` (a safety net:
    every commit writes the -wal, which wakes it); without them every ``idle_poll``.  Pinned, it
    probes the lock bytes every ``probe_interval()``, unless the process's shared prober
    (engine/daemon/prober.py) does that for it (``self_probe`` False: a process serving many
    databases).
    """

    def __init__(self, wal_index: WalIndex, waker: FileWaker, stats, pinned: Callable[[], bool],
                 probe_interval: Callable[[], float], idle_poll: float, inotify: bool,
                 observations: Observations | None = None, safety_poll: float | None = None,
                 peek: Callable[[bytes, int, int], tuple[bytes, int, tuple[int, int]] | None] | None = None) -> None:
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
        # The reader's position (salt1, salt2, frame), set after each of its passes; a commit this
        # many frames past it (or in another generation) is a backlog: the reader is woken even
        # while it defers, so a busy writer is read in batches of ~1 MB, not every 250 ms.
        self.read_upto: tuple[int, int, int] | None = None
        self.backlog_frames = BACKLOG_FRAMES
        self.backlog = False
        self._last_seen: tuple | None = None
        self._last_hdr = None  # the header object of our last look (ShmObserver caches by bytes)
        self._last_peek: tuple | None = None  # the last commit frame seen written before it was published
        self._first_look_hits = 1.0  # moving average: a look at a WAL write found its commit
        self._wakes_since_first_look = 0
        self._last_uncertain_log = 0.0
        self.uncertain_since_log = 0

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
            self.inotify = False
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

    def _observe_changed(self) -> bool:
        """Observe; True when the wal-index shows a commit boundary not seen before."""
        hdr = self.wal_index.header()
        self.observations.looked_us = looked = clock.now_us()
        if hdr is None or hdr is self._last_hdr:
            return False  # the very same header bytes as at our last look: nothing to record
        self._last_hdr = hdr
        seen = (hdr.change, hdr.salts, hdr.max_frame)
        if seen == self._last_seen:
            return False  # only read marks or nBackfill moved
        self._last_seen = seen
        self.observations.add(hdr.salts, hdr.max_frame, looked, hdr.change)
        return True

    def _observe_unpublished(self) -> bool:
        """Look for a commit frame written past the published end; True when one is new.

        At a WAL write's file event a writer with ``synchronous=FULL`` is usually fsyncing its
        frames and has not published the commit yet.  Its commit frame is on the file already:
        recording it now stamps the commit at this wake-up, where otherwise a second look
        (EXPECT_POLL later) was needed, which cost as much again per commit.  The stamp falls
        between the writer's COMMIT and its return.  Only the transaction that ends at exactly
        this frame with exactly this running checksum takes it (Observations.stamp): a writer
        that died before publishing leaves frames the next writer overwrites, and a torn read
        of a header being written never matches either.
        """
        hdr = self._last_hdr
        if hdr is None or self.peek is None:
            return False
        found = self.peek(hdr.salts, hdr.max_frame, hdr.page_size)
        if found is None or found == self._last_peek:
            return False
        self._last_peek = found
        salts, frame, cksum = found
        self.observations.add(salts, frame, clock.now_us(), UNKNOWN_CHANGE, cksum=cksum)
        self.stats.unpublished_stamps += 1
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
        hdr, upto = self._last_hdr, self.read_upto
        if hdr is None or upto is None:
            return 0
        if int.from_bytes(hdr.salts, "big") != (upto[0] << 32) | upto[1]:
            return 1 << 30
        return hdr.max_frame - upto[2]

    def run(self, stop: threading.Event) -> None:
        """Wake at each WAL write and stamp its commit; probe locks while pinned.

        Per commit at a steady rate this is one wake-up: the WAL write (inotify).  Its look finds
        the commit published (``synchronous=NORMAL``: SQLite publishes right after writing) or
        its commit frame written and not yet published (``FULL``: SQLite fsyncs first), which
        is stamped then (``_observe_unpublished``); the reader hears of it when it is published,
        at the next WAL write or ``PUBLISH_POLL`` later.  Only when neither shows (a transaction
        longer than the peek, or one still writing) does it look again every ``EXPECT_POLL``
        while the writer holds the write lock.  Each wake-up costs ~100-200 us of CPU on a small
        VM with a writer running (cold caches, a cross-CPU wake), and each extra system call
        after it some more, so a wake-up does as little as it can: drain the inotify events
        *before* looking (a commit published after the look has a writer holding the write lock,
        which the one probe after an observed commit sees), and the lock probe for a waiting
        checkpointer at most every ``probe_interval()``.
        """
        expect_until = 0.0  # the WAL was written but the wal-index showed no new commit yet
        publish_at = 0.0  # a commit seen written (stamped) but not published: look then, unless an event comes first
        next_probe = 0.0
        stats = self.stats
        while not stop.is_set():
            started = time.monotonic()
            added_before = self.observations.added
            expecting = expect_until > started
            last_look = False
            if expect_until and not expecting:
                # Still no commit after EXPECT_SECONDS: while the writer holds the write lock (a
                # slow fsync under load, a big transaction) its commit is still to come; keep
                # looking rather than wait for a timed look (its file events were drained).
                # Otherwise look once more now: it may have committed since the last look.
                expecting = self.wal_index.writer_active()
                expect_until = started + EXPECT_SECONDS if expecting else 0.0
                last_look = not expecting
            if last_look:
                woke = False
                timeout = 0.0
            elif expecting:
                timeout = EXPECT_POLL
                self.waker.wait(timeout, changes=False)
                stats.wake_looks += 1
                woke = False
            else:
                timeout = self._idle_timeout()
                if publish_at:
                    timeout = max(0.0, min(timeout, publish_at - started))
                woke = self.waker.wait(timeout)  # drains the file events it woke for
                if woke:
                    stats.wake_changes += 1
                elif publish_at and time.monotonic() >= publish_at:
                    expecting = True  # the look for a commit stamped already: not a timed discovery
                    stats.wake_looks += 1
                else:
                    stats.wake_timeouts += 1
                publish_at = 0.0
            now = time.monotonic()
            if woke or expecting:  # attentive: a commit published from now on is seen within EXPECT_POLL
                self.observations.looked_us = clock.now_us()
            overslept_us = 0 if woke else int((now - started - timeout) * 1e6)
            if stop.is_set():
                break
            if expecting or last_look:
                # The file changes so far belong to the commit we are looking for (or to one
                # already under way, whose writer holds the write lock: see below).
                if self.waker.drain() and last_look:
                    expect_until = now + EXPECT_SECONDS  # a transaction began after the probe
            elif woke and self._first_look_hits < FIRST_LOOK_MIN and self._wakes_since_first_look < FIRST_LOOK_RETRY:
                # A writer that fsyncs before publishing (synchronous=FULL) has never published
                # its commit yet when its WAL write wakes us: skip that look, look in EXPECT_POLL.
                self._wakes_since_first_look += 1
                expect_until = now + EXPECT_SECONDS
                continue
            first_look = self._last_seen is None  # the state at start: no commit just seen, no gap
            changed = self._observe_changed()
            written = woke and not expecting and self._observe_unpublished()
            if written:
                publish_at = now + PUBLISH_POLL  # then tell the reader (if no file event came first)
            if woke and not expecting:  # how often the look at a WAL write finds its commit
                self._first_look_hits += ((1.0 if changed or written else 0.0) - self._first_look_hits) / 8
                self._wakes_since_first_look = 0
            if changed:
                # Another write transaction already under way: keep looking for its commit (its
                # file events may have been drained above).  No writer now: look once more, for
                # a commit published between our look and the probe (its events were drained
                # too); any later one writes the WAL after the drain and wakes us.
                while True:
                    active = self.wal_index.writer_active()
                    if active or not self._observe_changed():
                        break
                expect_until = now + EXPECT_SECONDS if active and not written else 0.0
                timed = not woke and not expecting and not last_look  # not woken by a file change
                if timed and not first_look:
                    stats.polled_stamps += 1
                    self._uncertain(int(timeout * 1e6) + max(0, overslept_us), added_before)
                    self._timed_discovery()
                elif not timed:
                    self._missed_events = 0  # announced by its file event (directly or by the look after it)
                    if overslept_us > STAMP_SLACK_US and not first_look:
                        self._uncertain(overslept_us + int(timeout * 1e6), added_before)
                self._notify()
            elif written:
                expect_until = 0.0
            elif woke or expecting and not expect_until:
                expect_until = now + EXPECT_SECONDS  # (expecting: a stamped commit still unpublished)
            elif not self.inotify:
                self._notify()  # polling only: let the reader look for itself
            if self.self_probe and now >= next_probe and self.pinned():
                next_probe = now + self.probe_interval() - 0.001  # a timed wake-up always probes
                if self.wal_index.checkpointer_waiting():
                    self._notify(checkpointer=True)
            if self.uncertain_since_log and time.monotonic() - self._last_uncertain_log > UNCERTAIN_LOG_SECONDS:
                log.warning(
                    "%d commits were first seen more than %.0f ms after the previous look (largest gap %.0f ms): "
                    "their stamps may be that late (the daemon was starved of CPU or busy)",
                    self.uncertain_since_log, STAMP_SLACK_US / 1000, self.stats.max_stamp_gap_us / 1000,
                )
                self.uncertain_since_log = 0
                self._last_uncertain_log = time.monotonic()
