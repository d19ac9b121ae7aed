"""What runs the upload stage's steps: a thread per database, or a few threads for many.

The upload stage (uploader.py) is a sequence of steps: ``step()`` does what is due and
``due()`` says when the next has something to do, unless a ``Signal`` (the reader spooled, a
burst ended, stop) comes first.  A process with a few databases gives each its own thread that
sleeps until then (``run_on_own_thread``).  A process serving a sqld data directory has a
database per tenant, and 1,000 upload threads, each woken by its reader once a second, made
the process a convoy of threads waiting for the GIL (1,000 namespaces, 100 written at 1 txn/s:
the upload threads used 50 % of a core for what cost 27 % with 100 namespaces).  There
``UploadPool`` runs every database's steps on a few shared threads, each step when it is due,
one step of a database at a time.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import threading
import time
from typing import Callable, Protocol

from .. import logs
from .processwide import ProcessWide
from .uploadround import ROUND_GRID, ROUND_MIN, run_round

log = logging.getLogger("walrewind.shipper")

UPLOADERS_PER_WORKER = 125  # S3 PUTs take ~5-20 ms: a worker keeps up with ~100 a second
MIN_WORKERS = 2
MAX_WORKERS = 8


class Signal:
    """A flag that, when set, wakes whatever runs the stage's steps (``threading.Event``'s
    ``set``/``is_set``/``clear``, without a waiter of its own)."""

    __slots__ = ("_flag", "wake")

    def __init__(self) -> None:
        self._flag = False
        self.wake: Callable[[], None] = _nothing

    def set(self) -> None:
        self._flag = True
        self.wake()

    def is_set(self) -> bool:
        return self._flag

    def clear(self) -> None:
        self._flag = False


def _nothing() -> None:
    pass


class Steps(Protocol):
    """The upload stage as its runners see it (engine/daemon/uploader.Uploader)."""

    kick: Signal
    soon: Signal

    def begin(self) -> None: ...

    def due(self) -> float: ...

    def step(self) -> bool: ...

    @property
    def groupable(self) -> bool: ...

    def round_ready(self, now: float) -> bool: ...


def run_on_own_thread(stage: Steps) -> None:
    """Run ``stage``'s steps on this thread until it is done."""
    cond = threading.Condition()
    signalled = [False]

    def wake() -> None:
        with cond:
            signalled[0] = True
            cond.notify()

    stage.kick.wake = stage.soon.wake = wake
    stage.begin()
    while stage.step():
        with cond:
            if not signalled[0]:
                cond.wait(max(0.0, stage.due() - time.monotonic()))
            signalled[0] = False


class Pooled:
    """One database's upload stage in the pool; ``join()`` as for the thread it replaces."""

    def __init__(self, pool: UploadPool, stage: Steps, name: str) -> None:
        self.pool = pool
        self.stage = stage
        self.name = name
        self.seq = 0  # the pool's heap entry for it that counts (older ones are skipped); -1: none
        self.at = 0.0  # ... and when it is due
        self.running = False
        self.rerun = False  # signalled while a step ran: look again right after it
        self.done = False
        self.groupable = stage.groupable  # its uploads can join a round (uploadround.py)

    def join(self, timeout: float | None = None) -> None:
        with self.pool.cond:
            self.pool.cond.wait_for(lambda: self.done, timeout)

    def is_alive(self) -> bool:
        with self.pool.cond:
            return not self.done


class UploadPool(ProcessWide):
    """Every database's upload steps on a few worker threads, each step when it is due.

    One worker at a time (the *leader*) sleeps until the earliest step is due; the others wait
    untimed on ``cond`` until the leader takes a step and hands the lead on: two sleeps per step.
    (When every worker slept until the same earliest time, each due step woke all of them and
    all but one went back to sleep: ~4-5 per step, a fifth of the pool's CPU with 1,000
    namespaces.)  A step scheduled before the one the leader sleeps for wakes the leader alone;
    one scheduled while no worker leads, a follower.
    """

    def __init__(self, min_workers: int = MIN_WORKERS) -> None:
        lock = threading.Lock()
        self.cond = threading.Condition(lock)  # followers (and join) wait here
        self._lead = threading.Condition(lock)  # the leader waits here
        self._leading = False
        self._heap: list[tuple[float, int, Pooled]] = []
        self._order = itertools.count()
        self._members = 0
        self._threads: list[threading.Thread] = []
        self.steps = 0
        self.waits = 0
        self.rounds = 0
        self._min_workers = min_workers
        with self.cond:
            self._grow()

    def _grow(self) -> None:
        """Called with the lock held: one worker per UPLOADERS_PER_WORKER members, within bounds."""
        want = min(MAX_WORKERS, max(self._min_workers, -(-self._members // UPLOADERS_PER_WORKER)))
        while len(self._threads) < want:
            thread = threading.Thread(target=self._run, name="walrewind-upload-pool", daemon=True)
            self._threads.append(thread)
            thread.start()

    def add(self, stage: Steps, name: str) -> Pooled:
        member = Pooled(self, stage, name)
        stage.kick.wake = stage.soon.wake = lambda: self._signalled(member)
        stage.begin()
        with self.cond:
            self._members += 1
            self._grow()
            self._schedule(member, stage.due())
        return member

    def _schedule(self, member: Pooled, at: float) -> None:
        """(Lock held.)  Run ``member``'s next step at ``at`` (on the round grid, when it can
        join one: databases written at a slow rate come due together); replaces its earlier
        entry."""
        if at > 0 and member.groupable:
            at = math.ceil(at / ROUND_GRID) * ROUND_GRID
        member.seq = next(self._order)
        member.at = at
        heapq.heappush(self._heap, (at, member.seq, member))
        if self._heap[0][2] is member:
            (self._lead if self._leading else self.cond).notify()

    def _signalled(self, member: Pooled) -> None:
        with self.cond:
            if member.done:
                return
            if member.running:
                member.rerun = True
                return
            at = member.stage.due()
            if member.seq < 0 or at < member.at:  # (a reader's kick while its step is already due then: nothing)
                self._schedule(member, at)

    def _next(self) -> Pooled:
        """(Lock held.)  The member whose step is due first, once it is due."""
        while True:
            while self._heap and self._heap[0][2].seq != self._heap[0][1]:
                heapq.heappop(self._heap)  # replaced by a later entry
            wait = None
            if self._heap:
                at, _seq, member = self._heap[0]
                wait = at - time.monotonic()
                if wait <= 0:
                    heapq.heappop(self._heap)
                    member.seq = -1
                    if not self._leading and self._heap:
                        # A follower takes the lead: this worker's step may be long (an S3 PUT
                        # retried), and no database's step may wait for another's.
                        self.cond.notify()
                    return member
            self.waits += 1
            if self._leading:
                self.cond.wait()
                continue
            self._leading = True
            try:
                self._lead.wait(wait)
            finally:
                self._leading = False

    def _due_together(self, first: Pooled) -> tuple[list[Pooled], bool]:
        """(Lock held.)  ``first``, and when its step is a plain upload that can join a round
        (then True), every other member due now whose step is one too."""
        now = time.monotonic()
        if not (first.groupable and first.stage.round_ready(now)):
            return [first], False
        together, others = [first], []
        while self._heap and self._heap[0][0] <= now:
            entry = heapq.heappop(self._heap)
            member = entry[2]
            if member.seq != entry[1]:
                continue
            if member.groupable and member.stage.round_ready(now):
                member.seq = -1
                together.append(member)
            else:
                others.append(entry)
        for entry in others:
            heapq.heappush(self._heap, entry)
        return together, True

    def _run(self) -> None:
        while True:
            with self.cond:
                members, plain = self._due_together(self._next())
                for member in members:
                    member.running = True
                    member.rerun = False
            if plain and len(members) >= ROUND_MIN:
                self.rounds += 1
                self.steps += len(members)
                try:
                    results = run_round([(m.stage, m.name) for m in members])
                except Exception:  # a bug: these databases' uploads stop, the others go on
                    log.exception("upload round failed")
                    results = [False] * len(members)
            else:
                results = [self._step(member) for member in members]
            with self.cond:
                for member, more in zip(members, results):
                    member.running = False
                    if not more:
                        member.done = True
                        self._members -= 1
                        self.cond.notify_all()
                    else:
                        self._schedule(member, 0.0 if member.rerun else member.stage.due())

    def _step(self, member: Pooled) -> bool:
        self.steps += 1
        logs.bind(member.name)
        try:
            return member.stage.step()
        except Exception:  # a bug: that database's uploads stop, the others go on
            log.exception("upload step failed")
            return False
        finally:
            logs.bind(None)
