"""How far behind the replica is, and in which phase the daemon is, from what its stages know.

Lag is the age of the oldest commit that is not yet durable in the replica; 0 when caught up.
No stage knows it alone, so it is the oldest of:

* a new generation's base snapshot not uploaded yet (its moment: the whole database is owed);
* the oldest spooled record not uploaded (its stamp, read where the oldest waiting bytes of the
  spool start, ``StateDir.pending_head``; cached until the uploaded point moves);
* the oldest commit SQLite counted that is not spooled yet: the observer's first observation of a
  commit counter ahead of the reader's verified counter (``Observations.first_seen_after``);
* while the spool is full, the moment it filled (reading stopped then).

Phases (what ``walrewind status`` and ``walrewind_up{state}`` show): starting (before the tail
runs, or a new generation's base snapshot is still uploading), spooling (the replica is not
taking uploads, or the daemon started without it and has not taken its lease yet), behind (the
spool is full, or the lag exceeds BEHIND_SECONDS while the replica answers), fenced (another
daemon took the replica over; this one stops), replicating.

Everything here only reads; it runs on the metrics/health thread, never on the daemon's own.
"""

from __future__ import annotations

from typing import Any

from ..errors import LeaseError
from . import clock
from .spool import StateDir
from .spoolrecord import txn_spans

BEHIND_SECONDS = 10.0  # lag beyond this (plus a few upload intervals) while uploads work: behind


class LagProbe:
    def __init__(self, daemon: Any) -> None:
        self.daemon = daemon
        self._head: tuple[str, int, int] | None = None  # (spool file, uploaded txid, stamp) last found

    def oldest_pending_us(self) -> int | None:
        d = self.daemon
        found: list[int] = []
        snapshot_ts = getattr(d, "pending_snapshot_ts", None)
        if d.pending_snapshot is not None and snapshot_ts:
            found.append(snapshot_ts)
        elif snapshot_ts and not d.ready.is_set():
            found.append(snapshot_ts)  # started without the replica: the snapshot waits for it
        if d.overflow is not None and d.stats.spool_full_since_us:
            found.append(d.stats.spool_full_since_us)
        if d.stats.last_txid > d.stats.uploaded_txid:
            stamp = self._spooled_head()
            if stamp is not None:
                found.append(stamp)
        anchor = d.rs.anchor
        if anchor is not None:
            seen = d.observations.first_seen_after(anchor)
            if seen is not None:
                found.append(seen)
        return min(found) if found else None

    def _spooled_head(self) -> int | None:
        """Stamp of the first spooled record after the uploaded point (the oldest not uploaded)."""
        uploaded = self.daemon.stats.uploaded_txid
        head = self.daemon.state.pending_head()  # where the oldest waiting bytes start: no listing
        if head is None:
            return None
        path, start = head
        if self._head is not None and self._head[:2] == (path, uploaded):
            return self._head[2]
        try:
            for rec in StateDir.iter_raw(path, repair=False, start=start):
                if rec.last_txid > uploaded:  # a batch: the first of its transactions past the point
                    stamp = rec.batch.first_ts_us if rec.txid > uploaded else next(
                        ts for txid, ts, _start, _end in txn_spans(rec.raw, self.daemon.page_size)
                        if txid > uploaded)
                    self._head = (path, uploaded, stamp)
                    return stamp
        except (OSError, ValueError, StopIteration):  # uploaded and removed meanwhile, or being written
            pass
        return None

    def seconds(self, now_us: int | None = None) -> float | None:
        """The lag in seconds; None before the daemon has started tailing (unknown)."""
        if not self.daemon.capturing.is_set():
            return None
        oldest = self.oldest_pending_us()
        if oldest is None:
            return 0.0
        return max(0.0, ((now_us or clock.now_us()) - oldest) / 1e6)

    def phase(self, lag: float | None = None) -> str:
        """``lag``: ``seconds()`` if the caller has it (a health sample computes it anyway)."""
        d = self.daemon
        fatal = d.fatal
        if fatal is not None and (isinstance(fatal, LeaseError) or isinstance(fatal.__cause__, LeaseError)):
            return "fenced"
        if not d.capturing.is_set():
            return "starting"
        if not d.startup_done or d.stats.replica_unreachable_since_us:
            return "spooling"
        if d.overflow is not None:
            return "behind"
        if d.pending_snapshot is not None:
            return "starting"
        lag = self.seconds() if lag is None else lag
        if lag is not None and lag > BEHIND_SECONDS + 3 * d.upload_interval:
            return "behind"
        return "replicating"
