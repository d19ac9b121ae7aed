"""The read stage's loop: when the reading thread reads, runs the pin policy, and sleeps.

One loop per database, on its replicator's thread (engine/daemon/replicator.py owns the parts it
uses: the observer, the reader, the pin and its policy, the spool).  Its sleeps are what a quiet
database costs: with file events, every commit writes the -wal and wakes the observer, which
wakes this loop; the timed passes are housekeeping (the pin's idle release) and a safety net.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..sqlite.walfile import MASK
from . import clock
from .pinpolicy import IDLE_RELEASE_SECONDS
from .spool import SpoolFull

Replicator = Any  # engine/daemon/replicator.Replicator (not imported: it imports this module)

log = logging.getLogger("walrewind.shipper")

IDLE_POLL = 0.25  # unpinned and quiet, without inotify: how often the observer and reader look
# ... with inotify (every commit writes the -wal and wakes the observer, which wakes the reader) only
# a safety net: timed wake-ups cost ~60-100 us each (100 idle databases: 7 % of a core at 0.25 s).
IDLE_WAIT_INOTIFY = 5.0
# While pinned, read what was observed at most this often (or half the upload interval) unless the
# observer reports a backlog (observer.BACKLOG_FRAMES): the pin keeps the frames.  DESIGN.md, 2.
READ_DEFER_SECONDS = 0.25
HOUSEKEEPING_SECONDS = 0.25  # while pinned and quiet, re-check the pin policy this often
# A many-database process (fleet.prepare_process), with file events: how long a quiet, unpinned
# reader sleeps when nothing wakes it (the observer does for every commit; the uploader asks for a
# pass before each heartbeat: Replicator.refresh_tail), times 1-2 by the database's phase.  The
# heartbeats' passes (every minute) already vouch for a quiet database: at 30-60 s these looks were
# another 22 wake-ups a second for 1,000 quiet namespaces.
READER_QUIET_SECONDS = 120.0
BURST_UPLOAD_BYTES = 1 << 20  # spooled since the last upload: a burst (a steady 100 txn/s spools ~0.5 MB/s)
QUIET_US = 50_000  # ... once the writer has been quiet this long, uploaded at once (noticed within this)
FINAL_SYNC_SECONDS = 30.0  # at stop, how long to keep reading a WAL we are behind on
# Unused this long (unpinned, or pinned and released without a hand-over: a slow writer in a
# process serving many databases), the pin's spare SQLite connection is closed until the next hand-over
# (ReadPin.shed; one always stays open): a quiet database holds one connection's page cache, not
# two (1,000 sqld namespaces).  A database with no commit since the daemon started sheds it as
# soon as its start-up pin ends.
PIN_SHED_SECONDS = 20.0


def tail_loop(d: Replicator) -> None:
    """The read stage: read what the observer saw, in batches, and apply the pin policy.

    Pinned, commits the observer reports are read at most every READ_DEFER_SECONDS (the pin keeps
    their frames; one pass and one hand-over serve several; the observer stamped them), every
    QUIET_US while a burst is spooled (so its end is seen and shipped at once).  A checkpointer
    waiting for our read transaction interrupts at once.  Unpinned, anything new is pinned
    first and read at once.  With nothing reported the loop still runs the pin policy
    every ``quiet_seconds`` (HOUSEKEEPING_SECONDS pinned, IDLE_WAIT_INOTIFY unpinned, IDLE_POLL
    without inotify).
    """
    ob = d.observer
    last_read = 0.0
    while not d._stop.is_set():
        with d.reading:  # (held for the turn, not for its wait: read_beside may read meanwhile)
            last_read, wait = _turn(d, ob, last_read)
        if wait is None:
            continue
        due, period = wait
        with ob.cond:
            if ob.checkpointer or d._stop.is_set() or d._jobs or d.beside_error is not None:
                continue
            if ob.new_commits:  # deferring: only a checkpointer, a backlog (or stop) wakes us early
                ob.reader_waiting_for_commits = False
                timeout = due - time.monotonic()
            else:
                ob.reader_waiting_for_commits = True
                timeout = period - (time.monotonic() - last_read)
            ob.cond.wait(max(0.0, timeout))


def _turn(d: Replicator, ob, last_read: float) -> tuple[float, tuple[float, float] | None]:
    """One turn of the loop short of its wait, ``d.reading`` held: (the last pass's time, None to
    turn again at once or (when a deferred read is due, the quiet period) for the wait)."""
    if d.beside_error is not None:
        raise d.beside_error  # (a read on the dispatcher failed: the database stops as if it failed here)
    if d._jobs:
        d._run_jobs()  # the uploader's start-up work (renumber, new generation)
    if d.overflow is not None:
        d._stop.wait(IDLE_POLL)
        d._leave_overflow()
        return last_read, None
    pinned = d.pin.active
    now = time.monotonic()
    burst = d._burst or d.state.current_bytes() >= BURST_UPLOAD_BYTES  # see its end within QUIET_US
    period = QUIET_US / 1e6 if burst else quiet_seconds(d, pinned, last_read)
    due = last_read + (min(READ_DEFER_SECONDS, d.upload_interval / 2, period) if pinned else 0.0)
    with ob.cond:  # (once per pass: what the observer reported, taken as this pass's)
        urgent, ob.checkpointer = ob.checkpointer, False
        pending, backlog = ob.new_commits, ob.backlog
        read = not (urgent and pinned) and ((pending and (now >= due or backlog)) or now - last_read >= period)
        if read:
            ob.new_commits = ob.backlog = False
    try:
        if urgent and pinned:
            d.pin_policy.yield_to_checkpointer()
            return time.monotonic(), None
        if read:
            last_read = now
            d.pin_policy.after_read(d.read_pass())
            after_pass(d, ob, now)
            return last_read, None
    except SpoolFull as exc:
        d._enter_overflow(exc)
        return last_read, None
    if d._prober is not None and d.pin.active:
        d._prober.nudge(ob)  # probed while we sleep pinned (a pin taken quietly: Replicator._share_prober)
    return last_read, (due, period)


def after_pass(d: Replicator, ob, now: float) -> None:
    """What follows every read pass, whichever thread made it: the spare connection shed, the
    position told to the observer, a burst's uploads paced."""
    if not d.pin.active and (now - d.pin.spare_used_mono >= PIN_SHED_SECONDS or not d.stats.transactions):
        d.pin.shed()  # (nothing committed since the start: 1,000 namespaces started together peaked here)
    pos = d.rs.pos
    ob.read_upto = (pos.salt1, pos.salt2, pos.frame) if pos is not None else None
    spooled = d.state.current_bytes()
    quiet = not ob.new_commits and clock.now_us() - d.stats.last_commit_us > QUIET_US
    if spooled >= 2 * BURST_UPLOAD_BYTES * max(1.0, d.upload_interval):
        d._burst = True  # a burst goes on: ship it in short uploads, the last one soon after
        d.uploader.soon.set()
    elif quiet and (d._burst or spooled >= BURST_UPLOAD_BYTES):
        d._burst = False  # a burst ended: ship its tail now, not at the next interval
        d.uploader.soon.set()


def read_beside(d: Replicator) -> bool:
    """The observer's look on the inotify dispatcher saw a slow writer's commit published: read it
    right there (Reader.read_slow_commit), instead of waking the database's reading thread for it.

    At 1,000 namespaces with 100 written at 1 txn/s, that wake-up (a thread of a thousand, on cold
    caches, taking the GIL from whoever holds it) and its loop were about a third of the reading
    threads' CPU.  Only while the reading thread is idle (``d.reading`` free, nothing it was asked
    to do) and only the reads it would make unpinned anyway; anything else (a burst, a pin, a
    restarted WAL, a count that does not add up) returns False and the reading thread is woken as
    before.  True: everything published was read and spooled.  A failure is the reading thread's
    to raise (the database stops and is retried, as if it had failed there).  Not before the
    reading thread's start-up is done (``capturing``: it sets the reader up without the lock), nor
    after the loop ended: its end waits for the dispatcher's step (HubObserving.join) and this
    runs inside one.
    """
    if not d.reading.acquire(blocking=False):
        return False
    try:
        if (not d.capturing.is_set() or d._stop.is_set() or d._jobs or d.overflow is not None or d._burst
                or d.beside_error is not None or d.pin_policy.checkpoint_frames):
            return False
        now = time.monotonic()
        try:
            read = d.reader.read_slow_commit()
            if read:
                d.stats.reads_beside += 1
                after_pass(d, d.observer, now)
        except SpoolFull as exc:
            d._enter_overflow(exc)
            return False  # (woken, the reading thread's turn waits for room)
        except Exception as exc:
            d.beside_error = exc
            return False
        return read is not None
    finally:
        d.reading.release()


def quiet_seconds(d: Replicator, pinned: bool, last_read: float) -> float:
    """How long after its last pass the loop runs the pin policy with nothing reported.

    Without file events (the observer may switch to polling while running: its
    MISSED_EVENTS_MAX), or with a few databases: HOUSEKEEPING_SECONDS pinned, IDLE_POLL or
    IDLE_WAIT_INOTIFY unpinned.  In a many-database process with file events, pinned: until the
    idle release is due (nothing else to do meanwhile: a waiting checkpointer is reported by the
    shared prober, new commits by the observer); unpinned: READER_QUIET_SECONDS, unless a
    hold-off, a WAL let go, or commits read but not yet vouched for need another look soon.
    """
    if not d.observer.inotify:
        return HOUSEKEEPING_SECONDS if pinned else IDLE_POLL
    if not d.many:
        return HOUSEKEEPING_SECONDS if pinned else IDLE_WAIT_INOTIFY
    if pinned:
        return max(HOUSEKEEPING_SECONDS, d.reader.last_commit_mono + IDLE_RELEASE_SECONDS + 0.01 - last_read)
    if d.reader.holding_off or d.reader.unverified or d.pin_policy.letting_go:
        return IDLE_POLL
    return READER_QUIET_SECONDS * (1.0 + d.phase_fraction)


def final_read(d: Replicator) -> None:
    """Read until caught up: a daemon that was behind has more than one read batch to go.

    Bounded by FINAL_SYNC_SECONDS, for a writer that keeps committing faster than we read;
    what is left then is read (or reconciled) by the next start.
    """
    start = time.monotonic()
    deadline = start + FINAL_SYNC_SECONDS
    d.reader.end_hold_off()
    while d.read_pass() and time.monotonic() < deadline:
        pass
    hdr = d.shm.header()
    if hdr is not None and not d.pin_policy.caught_up(hdr):
        behind = "an unknown number of"
        if d.rs.anchor is not None:
            behind = str(max(0, ((hdr.change - d.rs.anchor) & MASK) - len(d.reader.unverified)))
        log.warning("stopping %.1f s into the final sync with %s commits that SQLite counted not read yet; "
                    "the next start continues from where this one stopped", time.monotonic() - start, behind)
