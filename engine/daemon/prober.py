"""One thread that notices, for every pinned database of a many-database process, a checkpointer
waiting for us.

While the daemon holds a read transaction (the pin), an application's blocking checkpoint
(RESTART/TRUNCATE: sqld runs them on a timer) waits for it while holding the write lock; the
daemon steps aside within milliseconds once the lock bytes show it (engine/daemon/pinpolicy.py,
``yield_to_checkpointer``).  Nothing announces such a waiter (it makes no file event), so its lock
bytes are probed every ``probe_interval()`` (20 ms, 5 ms after a recent yield) while pinned.  A
database written once a second stays pinned, and its observer thread woke 50 times a second for
that probe alone: 100 such databases cost ~30 % of a core in thread wake-ups.  In a process
serving many databases (fleet.prepare_process) ONE thread probes every pinned database instead (a
probe is one or two ``fcntl(F_OFD_GETLK)`` calls, a few microseconds) and tells that database's
observer, which wakes its reader as before.  Probes fall on a grid of their interval (every
database probed every 20 ms is probed at the same multiples of 20 ms), so one wake-up serves them
all: 100 pinned databases cost 50 rounds a second, not one round per database and interval (20
sqld namespaces written at 1 txn/s: the prober took 2.2 % of a core with a round per probe).
Probes due within BATCH_SECONDS of each other still share one wake-up (a little early, never
late).  A process with a few databases keeps each observer's own probing: one thread fewer to hop
through.

A database is probed from the moment its pin is taken until it is released (``ReadPin``'s
``on_change``); ``unwatch(wait=True)`` returns only once no probe of it is running, so the
descriptors it probes can be closed right after.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from typing import Callable, Protocol

from .processwide import ProcessWide

log = logging.getLogger("walrewind.prober")

MAX_SLEEP = 1.0  # with nothing pinned the thread sleeps until a database is watched
# Probes due within this much of the earliest are made in the same round (a little early, never
# late): one wake-up serves many databases instead of one wake-up per database and interval.
BATCH_SECONDS = 0.004


def next_on_grid(now: float, interval: float) -> float:
    """The first multiple of ``interval`` more than BATCH_SECONDS after ``now`` (a probe made a
    little early in its batch is not repeated at once): at most interval + BATCH_SECONDS away."""
    return (math.floor((now + BATCH_SECONDS) / interval) + 1) * interval


class Probed(Protocol):
    """What the prober needs of a database's observer (engine/daemon/observer.Observer)."""

    probe_interval: Callable[[], float]

    def probe_checkpointer(self) -> None: ...


class CheckpointProber(ProcessWide):
    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._probing = threading.Lock()  # held while a round of probes runs (see unwatch)
        self._due: dict[Probed, float] = {}  # watched -> next probe (monotonic)
        self._wake_at = 0.0  # when the thread wakes next (0: it is running a round)
        self.probes = 0
        self.rounds = 0
        self._thread = threading.Thread(target=self._run, name="walrewind-prober", daemon=True)
        self._thread.start()

    def watch(self, observer: Probed, wake: bool = True) -> None:
        """Probe ``observer`` from the next round on its grid.  ``wake=False``: without waking
        this thread for it, if it sleeps past that round, until ``nudge``; a pin's read pass
        probes before it ends (pinpolicy.PinPolicy.after_read), and a database whose writer is
        slow releases its pin in that same pass (quick_release_gap): waking this thread for each
        such pin (100 a second with 100 such databases) would buy nothing."""
        with self._cond:
            at = next_on_grid(time.monotonic(), observer.probe_interval())
            self._due[observer] = at
            if wake and at < self._wake_at:
                self._cond.notify()

    def nudge(self, observer: Probed) -> None:
        """Make sure a watched ``observer``'s next probe is made when due (its reader, before it
        sleeps with the pin held)."""
        with self._cond:
            at = self._due.get(observer)
            if at is not None and at < self._wake_at:
                self._cond.notify()

    def unwatch(self, observer: Probed, wait: bool = False) -> None:
        """Probe ``observer`` no more; ``wait``: also for a round that took it before (its
        descriptors are about to be closed).  A pin's release does not wait: it may be stepping
        aside for a checkpointer, and a probe of an unpinned database is harmless."""
        with self._cond:
            self._due.pop(observer, None)
        if wait:
            with self._probing:
                pass

    @property
    def watched(self) -> int:
        with self._cond:
            return len(self._due)

    def _run(self) -> None:
        while True:
            with self._cond:
                now = time.monotonic()
                nxt = min(self._due.values(), default=now + MAX_SLEEP)
                if nxt > now:
                    self._wake_at = nxt
                    self._cond.wait(nxt - now)
                    continue
                self._wake_at = 0.0
                due = [ob for ob, at in self._due.items() if at <= now + BATCH_SECONDS]
            self.rounds += 1
            probed = []
            with self._probing:
                for ob in due:
                    # (A dict lookup is atomic: unwatched meanwhile means its descriptors may be
                    # closing once this round ends, see unwatch; no lock taken per probe.)
                    if ob not in self._due:
                        continue
                    try:
                        ob.probe_checkpointer()
                        interval = ob.probe_interval()
                    except Exception:  # a closed database, a bug: never stop probing the others
                        log.debug("probe failed", exc_info=True)
                        interval = MAX_SLEEP
                    probed.append((ob, interval))
            self.probes += len(probed)
            now = time.monotonic()
            with self._cond:
                for ob, interval in probed:
                    if ob in self._due:
                        self._due[ob] = next_on_grid(now, interval)
