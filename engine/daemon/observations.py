"""When each commit boundary was first seen: the observations the reader stamps transactions with.

The wal-index header (salts, mxFrame) changes with every commit.  Each time the daemon looks at it
(every inotify wake-up, every read pass) it records ``(generation salts, mxFrame, time)``, the
time taken *after* the header was read.  A transaction read later, perhaps seconds later under a
burst, takes the time of the first observation whose mxFrame had reached its commit frame in the
same generation: the commit had happened by then (the stamp never precedes it), and it was seen
within one wake-up of happening.  Without a matching observation the reader's own time is used,
which is later still, so a lost observation makes a stamp late, never early.  A look may also
find a commit frame written but not yet published (``synchronous=FULL`` fsyncs in between): that
observation carries the frame's running checksum and stamps only the transaction ending there
with that checksum (engine/daemon/observer.py).

Memory is bounded: observations older than the last stamped commit are dropped, and at most
``MAX_OBSERVATIONS`` are kept (the oldest go first; their commits fall back to a later stamp).
"""

from __future__ import annotations

import threading
from collections import deque

MAX_OBSERVATIONS = 1 << 16
STAMP_SLACK_US = 5_000  # a commit first seen more than this after the previous look: stamp uncertain
UNKNOWN_CHANGE = -1  # the commit counter of an observation made before the commit was published


class Observations:
    def __init__(self, limit: int = MAX_OBSERVATIONS) -> None:
        # (salts as one key, mxFrame, time, iChange, uncertain, running checksum if seen unpublished):
        # one per commit boundary first seen, in time order
        self._seen: deque[tuple[int, int, int, int, bool, tuple[int, int] | None]] = deque()
        self.added = 0  # observations ever added (mark_uncertain counts from it)
        self.looked_us = 0  # when the observer last read the header (the reader's looks compare)
        # The observer is running on file events: every WAL write wakes it, so a commit the reader
        # sees first is about to be stamped by it (Reader.observe waits a moment for that).
        self.event_driven = False
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
            if seen and _covers(seen[-1], key, max_frame, cksum is not None):
                return  # nothing new since the last observation
            seen.append((key, max_frame, at_us, change, uncertain, cksum))
            self.added += 1
            if len(seen) > self._limit:
                seen.popleft()

    def knows(self, salts: bytes, max_frame: int) -> bool:
        """A published commit boundary at or past ``max_frame`` of this generation is recorded."""
        seen = self._seen
        last = seen[-1] if seen else None  # (one atomic read: the observer only appends)
        return last is not None and _covers(last, int.from_bytes(salts, "big"), max_frame, False)

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


def _covers(last: tuple, key: int, max_frame: int, unpublished: bool) -> bool:
    """Observation ``last`` already shows commit boundary ``max_frame`` of generation ``key``: a
    published one shows it either way, a frame seen written but unpublished only to its kind."""
    return last[0] == key and last[1] >= max_frame and (unpublished or last[5] is None)
