"""Before a heartbeat: how recent a time the daemon can vouch for (``Replicator.refresh_tail``).

A heartbeat ``<ts>-<txid>`` says: every commit SQLite had counted at ``ts`` is in the replica
(docs/DESIGN.md §10).  The uploader takes ``ts`` from its last seal, i.e. from a time before which
everything committed had been spooled.  In a process serving many databases a quiet reader sleeps
2-4 minutes (tailloop.READER_QUIET_SECONDS), so its own last check is old when a heartbeat falls
due.  This finds a fresh one from the upload stage's thread, cheapest first:

1. The reader's own check (``Reader.spooled_through_us``) is younger than the upload interval (a
   database being written): nothing to do, the seal takes it as always.
2. A look from this thread: the time ``t``, *then* the wal-index header (one ``pread`` of the
   -shm; a consistent copy, ShmObserver.header), *then* the reader's state.  SQLite counts every
   commit in the header's ``iChange`` when it publishes it, so the header counts every commit made
   before ``t``.  The reader sets its anchor (``rs.anchor``) to the counter at the last commit it
   spooled only *after* that commit's record is appended (Reader._verify, reconcile, replay_spool),
   so an anchor equal to the header's counter means every commit counted there, hence every commit
   before ``t``, is in the spool.  The position and ``unverified`` are checked too, exactly as the
   reader's own quiet pass does (Reader.read_pass), read after the anchor: a pass running meanwhile
   on the reading thread can only make them disagree (no vouch), never make a stale anchor pass.
   No thread hop: at 1,000 namespaces the pass on the reading thread, and the upload thread
   waiting for it, were ~0.5 ms of CPU per heartbeat.
3. Otherwise (the reader is behind or in the middle of a pass, the spool is full, the header could
   not be read): one read pass on the reading thread, as before (``Replicator.in_reader``).  What
   it finds is the reader's own ``spooled_through_us``, which the seal takes.

A stale vouch only makes a heartbeat say less (``Uploader.write_heartbeat`` writes a lease renewal
instead of a heartbeat when the time is older than its staleness bound).
"""

from __future__ import annotations

from typing import Any

from . import clock
from .spool import SpoolFull

Replicator = Any  # engine/daemon/replicator.Replicator (not imported: it imports this module)


def fresh_look(d: Replicator) -> int | None:
    """Step 2: a time before which every commit is spooled, taken on this thread; None when the
    reader's state does not vouch for the header just read (then only a read pass can)."""
    reader = d.reader
    if reader is None or d.overflow is not None or d.stopping:
        return None
    t = clock.now_us()
    try:
        hdr = d.shm.header()
    except (OSError, ValueError):  # closed under us by a daemon that stopped
        return None
    if hdr is None:
        return None
    anchor = d.rs.anchor  # first: it moves only once what it counts is spooled
    if anchor is None or hdr.change != anchor:
        return None
    if reader.unverified or not reader.caught_up(hdr):
        return None
    return t


def refresh_tail(d: Replicator) -> int:
    """A time the next seal may take as "everything committed before it is spooled" beyond the
    reader's own (0: none, the reader's ``spooled_through_us`` is it).  Nothing to do for a few
    databases (their readers look every 5 s, IDLE_WAIT_INOTIFY)."""
    if not d.many:
        return 0
    if clock.now_us() - d.spooled_through_us < d.upload_interval * 1_000_000:
        return 0
    t = fresh_look(d)
    if t is not None:
        return t

    def job() -> None:
        if d.overflow is None and d.reader is not None:
            try:
                d.pin_policy.after_read(d.read_pass())  # as one pass of tailloop.py's loop
            except SpoolFull as exc:
                d._enter_overflow(exc)

    d.in_reader(job)
    return 0
