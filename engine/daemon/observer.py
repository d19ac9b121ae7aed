"""When each commit was first seen, independent of when its frames are read.

The wal-index header (salts, mxFrame) changes with every commit.  Each time the daemon looks at it
(every inotify wake-up, every read pass) it records ``(generation salts, mxFrame, time)``, the
time taken *after* the header was read.  A transaction read later, perhaps seconds later under a
burst, takes the time of the first observation whose mxFrame had reached its commit frame in the
same generation: the commit had happened by then (the stamp never precedes it), and it was seen
within one wake-up of happening.  Without a matching observation the reader's own time is used,
which is later still, so a lost observation makes a stamp late, never early.

Memory is bounded: observations older than the last stamped commit are dropped, and at most
``MAX_OBSERVATIONS`` are kept (the oldest go first; their commits fall back to a later stamp).
"""

from __future__ import annotations

from collections import deque

MAX_OBSERVATIONS = 1 << 16


class Observations:
    def __init__(self, limit: int = MAX_OBSERVATIONS) -> None:
        # (salts as one int, mxFrame, time us, iChange): in time order
        self._seen: deque[tuple[int, int, int, int]] = deque()
        self._limit = limit
        self.polled = 0  # observations taken by a timed poll rather than a wake-up (stamp honesty)

    def __len__(self) -> int:
        return len(self._seen)

    def add(self, salts: bytes, max_frame: int, at_us: int, change: int) -> None:
        key = int.from_bytes(salts, "big")
        seen = self._seen
        if seen and seen[-1][0] == key and seen[-1][1] >= max_frame:
            return  # nothing new since the last observation
        seen.append((key, max_frame, at_us, change))
        if len(seen) > self._limit:
            seen.popleft()

    def stamp(self, salt1: int, salt2: int, frame: int, fallback_us: int) -> int:
        """The time of the first observation showing commit ``frame`` of generation (salt1, salt2)."""
        key = (salt1 << 32) | salt2
        seen = self._seen
        for i, (k, max_frame, at_us, _change) in enumerate(seen):
            if k == key and max_frame >= frame:
                for _ in range(i):  # older ones only served commits already stamped
                    seen.popleft()
                return min(at_us, fallback_us)
        return fallback_us

    def change_at(self, salt1: int, salt2: int, frame: int) -> int | None:
        """SQLite's commit counter when the wal-index ended exactly at this commit, if observed.

        Lets the reader account for a batch that ended short of the current end (a burst): the
        commits read up to an observed boundary must equal the counter's advance up to it.
        """
        key = (salt1 << 32) | salt2
        for k, max_frame, _at, change in reversed(self._seen):
            if k == key and max_frame == frame:
                return change
            if k == key and max_frame < frame:
                return None
        return None

    def clear(self) -> None:
        self._seen.clear()
