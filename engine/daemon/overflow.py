"""A full spool: stop reading loudly, and repair the gap visibly once there is room again.

The spool is bounded (engine/daemon/spool.py).  When an append does not fit, the read stage
stops: what was read but not durably spooled is forgotten (the state is replayed from disk),
and nothing is lost silently, because SQLite's commit counter still vouches for every commit.
When there is room again the reader reconciles with the live database: commits the WAL still
holds are shipped as LATE transactions, anything it no longer holds as one RESYNC.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

from ..timeparse import format_us
from . import clock
from .spool import SpoolFull

log = logging.getLogger("walrewind.shipper")

OVERFLOW_CHECK_SECONDS = 1.0  # how often a full spool looks for room again


class OverflowHost(Protocol):
    pin: Any
    stats: Any
    storage: Any
    state: Any
    reader: Any
    uploader: Any
    overflow: SpoolFull | None
    _overflow_check: float


def enter_overflow(daemon: OverflowHost, exc: SpoolFull) -> None:
    """Stop reading; forget what was read but not durably spooled; say so loudly.

    Nothing is lost silently: SQLite's commit counter still vouches for every commit, so
    when there is room again ``leave_overflow`` reconciles, and whatever the WAL no longer
    holds is shipped as a RESYNC (or, if provably complete, as LATE transactions).
    """
    daemon.pin.release()
    if daemon.overflow is None:
        daemon.stats.spool_full = True
        daemon.stats.spool_full_since_us = clock.now_us()
        daemon.stats.spool_full_events += 1
        log.error(
            "SPOOL FULL: %s. Replication of new transactions is PAUSED (the application is not "
            "affected; the daemon stops reading its WAL). Nothing is lost silently: when there is "
            "room again the daemon compares the database with the replica and ships the difference "
            "as a flagged RESYNC/LATE transaction that restores report. Backlog: %d transactions "
            "not yet in %s. Free disk space, raise the spool limit, or make the replica reachable.",
            exc, daemon.stats.backlog_txns, daemon.storage.url,
        )
    daemon.overflow = exc
    daemon.stats.last_error = f"spool full: {exc}"
    with daemon.uploader.lock:  # the uploader must not move the uploaded point meanwhile
        daemon.reader.replay_spool()
    daemon._overflow_check = time.monotonic()

def leave_overflow(daemon: OverflowHost, force: bool = False) -> None:
    if not force and time.monotonic() - daemon._overflow_check < OVERFLOW_CHECK_SECONDS:
        return
    daemon._overflow_check = time.monotonic()
    if not daemon.state.has_room():
        return
    log.warning("spool has room again; reconciling with the live database")
    try:
        daemon.reader.reconcile(late=True, allow_over_limit=True)
    except SpoolFull as exc:
        enter_overflow(daemon, exc)
        return
    log.warning("replication resumed after the spool was full since %s", format_us(daemon.stats.spool_full_since_us))
    daemon.overflow = None
    daemon.stats.spool_full = False
