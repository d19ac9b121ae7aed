"""Start-up: from a locked state directory to a tailing daemon, with the replica or without it.

Three things are decided by the replica before anything is uploaded to it: whether another
daemon holds the lease (fencing, engine/replica/lease.py), which database identity to ship
under (two databases never share a replica path, engine/daemon/identity.py), and whether the
saved history still exists there (otherwise a new generation).  With the store reachable, that
happens first, exactly as before: one LIST of ``lease/`` and ``generations/``, then the lease.

When the first LIST fails with :class:`StoreUnreachable`, the daemon starts anyway and captures
every commit into its spool; :meth:`Startup.complete` does the three checks once the store
answers (the uploader asks it before its first upload), and only then is anything uploaded:

* **With a saved state** (this database, this replica): it resumes from it as any start would
  (replays the spool, reconciles with the live database) and tails on with the saved txids.  If
  the replica turns out to lack the saved generation (emptied or pruned meanwhile), a new
  generation starts then, as a start with the store reachable would have decided; what was
  spooled for the old one is dropped, because the replica holds no base for it.
* **Without one** (first run, or the state directory was lost): it takes the base snapshot now
  (pages and page hashes; the header, which names the identity and the base txid, waits) and
  tails on with txids counted from a provisional base of 1.  When the store answers, the base
  becomes ``max txid in the replica + 1`` as always: the reading thread renumbers the spool
  (``StateDir.renumber``) between two read passes, and the snapshot's header is written.  Until
  then nothing is saved as the uploaded point: a daemon stopped before the store ever answered
  says so, and its next start takes a new base snapshot (the data itself is in it; only the
  moments between the two starts are not restorable).

Either way identity and fencing are checked before the first byte is uploaded, and a refusal
(another daemon holds the lease, another database's history) stops the daemon as it would have
at start, with its spool kept.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

from ..errors import DaemonError, LeaseError, StoreUnreachable
from ..logs import brief
from ..replica import layout
from ..replica.format import SnapshotWriter
from ..replica.lease import ReplicaScan, scan
from ..sqlite.walfile import WalPosition
from .basesnapshot import write_base_snapshot
from .identity import decide_db_id
from .outage import Outage
from .spool import SpoolFull
from .state import resume_from

log = logging.getLogger("walrewind.shipper")

PROVISIONAL_BASE_TXID = 1  # a generation started without the replica counts from here until it answers


@dataclass
class HeldSnapshot:
    """A base snapshot taken without the replica: pages written, header not yet."""

    writer: SnapshotWriter
    header: dict
    generation: str
    ts: int
    txid: int
    tmp: str
    position: WalPosition
    change: int


class Startup:
    def __init__(self, daemon: Any, saved: dict | None) -> None:
        self.d = daemon
        self.saved = saved
        self.done = False  # identity, lease and generation settled: uploads may go
        self.offline = False  # started without the replica
        self.held: HeldSnapshot | None = None
        self.found: ReplicaScan | None = None  # the start-up LIST, once the checks passed (lease taken)

    # ------------------------------------------------------------------ at start (reading thread)
    def begin(self) -> None:
        """Take the lease and resume or start a generation; without the replica, start anyway."""
        try:
            found = self._checks()
        except LeaseError as exc:
            raise DaemonError(str(exc)) from exc
        except StoreUnreachable as exc:
            self._begin_offline(exc)
            return
        saved = self.saved
        if self.d.new_generation_reason:  # never append to that history: a new generation, a fresh snapshot
            log.warning("%s", self.d.new_generation_reason)
            saved = None
        if saved is not None and saved["generation"] not in found.generations_with_snapshot:
            log.warning("generation %s of the saved state has no snapshot in %s (replica emptied or pruned?); "
                        "starting a new generation", saved["generation"], self.d.storage.url)
            saved = None
        if saved is not None:
            self._resume(saved)
        else:
            try:
                self.new_generation(found)
            except LeaseError as exc:
                raise DaemonError(str(exc)) from exc
        self.done = True

    def _begin_offline(self, exc: StoreUnreachable) -> None:
        d = self.d
        self.offline = True
        d.uploader.outage = Outage(d)
        d.uploader.outage.began(exc, at_start=True)
        if self.saved is not None:
            self._resume(self.saved)
        else:
            self.new_generation(None)

    def _checks(self) -> ReplicaScan:
        """One LIST of lease/ and generations/, fencing, identity, then the lease (create-only PUT)."""
        if self.found is not None:
            return self.found
        d = self.d
        if d.encryption_check is not None:  # the replica's encryption marker, before anything is written
            d.new_generation_reason = d.encryption_check() or d.new_generation_reason
            d.encryption_check = None
        found = scan(d.storage)
        d.lease.check_free(found, d.takeover)
        d.rs.db_id = decide_db_id(d.storage, d.state.path, d.db_path, d.lease.host, self.saved, found, d.takeover)
        d.lease.acquire(found, d.rs.db_id)
        d.stats.lease_epoch = d.lease.epoch or 0
        self.found = found
        return found

    def _resume(self, saved: dict) -> None:
        """Continue the history of the state directory (which matches this database and replica)."""
        d = self.d
        resume_from(d.rs, saved, d.state)
        d.stats.uploaded_txid = saved["uploaded_txid"]
        d.stats.uploaded_commit_us = saved["uploaded_ts_us"]
        d.uploader.sealed_through_us = d.reader.spooled_through_us = saved["uploaded_ts_us"]
        try:
            # Replay what was read but not uploaded before the previous run ended.
            d.reader.replay_spool()
            # Whatever happened while we were down, prove it or repair it before tailing again.
            # The saved commit counter only proves continuity if the app kept the database open
            # (the wal-index survived); otherwise the counts disagree and we resync, never guess.
            d.reader.reconcile(late=True)
        except SpoolFull as exc:
            d._enter_overflow(exc)

    def new_generation(self, found: ReplicaScan | None) -> None:
        """Begin a new history with a base snapshot (first run, local state lost, replica emptied).

        ``found`` None: the replica has not answered; the snapshot is held (see the module)."""
        d = self.d
        d.state.reset()
        base_txid = PROVISIONAL_BASE_TXID if found is None else found.max_txid + 1
        tmp = os.path.join(d.state.path, "snapshot.tmp")
        base = write_base_snapshot(d.pinned_reader, tmp, d.rs.db_id, base_txid)
        # The pin stays: its read transaction holds the WAL at exactly the snapshot's point, so
        # every commit after it is still in the WAL when the tail reads on from there, however
        # long the snapshot takes to upload.  (Releasing it here let the app's checkpoints
        # overwrite commits not yet read while a big snapshot uploaded: a RESYNC at every start
        # on a busy database.)  The uploader ships the snapshot before any segment.
        change = base.snap.change
        rs = d.rs
        rs.generation, rs.page_size = base.generation, base.page_size
        rs.pos = rs.verified_pos = base.position
        rs.hashes, rs.uploaded_hashes = base.hashes, base.hashes.copy()
        rs.next_txid, rs.anchor, rs.last_ts = base_txid + 1, change, base.ts
        d.reader.unverified = []
        d.pending_snapshot_ts = base.ts
        if found is None:
            self.held = HeldSnapshot(base.writer, base.header, base.generation, base.ts, base_txid, tmp,
                                     base.position, change)
            rs.uploaded_pos, rs.uploaded_change = base.position, change  # what a replay starts from
        else:
            d.ensure_lease()  # a big snapshot can take longer than the lease
            base.header["lease_epoch"] = d.lease.epoch
            base.writer.finish(base.header)
            d.pending_snapshot = (layout.SnapshotKey(base.generation, base_txid, base.ts).key, tmp)
            d.save_state(base_txid, base.ts, base.position, change)
        d.stats.last_txid = d.stats.uploaded_txid = base_txid
        d.stats.last_commit_us = d.stats.uploaded_commit_us = base.ts
        d.uploader.sealed_through_us = d.reader.spooled_through_us = base.ts
        log.info("new generation %s: snapshot of %d pages at txid %d%s", base.generation, base.db_pages, base_txid,
                 " (provisional: the replica has not answered yet)" if found is None else "")

    # ------------------------------------------------------------------ once the store answers
    def complete(self) -> bool:
        """The checks a start without the replica skipped, before the first upload.

        Raises StoreUnreachable while the store is down and LeaseError/ForeignReplica when it
        refuses us (the uploader stops the daemon then).  Returns False when the daemon stopped
        before the reading thread could renumber or restart (the final sync calls it again)."""
        if self.done:
            return True
        d = self.d
        found = self._checks()
        saved = self.saved
        if saved is not None:
            if d.rs.generation == saved["generation"] and d.new_generation_reason:
                log.warning("%s; the %d transactions spooled for the old generation are dropped",
                            d.new_generation_reason, d.stats.backlog_txns)
                if not d.in_reader(lambda: self.new_generation(found)):
                    return False
            elif d.rs.generation == saved["generation"] and saved["generation"] not in found.generations_with_snapshot:
                log.warning("generation %s of the saved state has no snapshot in %s (replica emptied or pruned?): "
                            "starting a new generation; the %d transactions spooled for it are dropped",
                            saved["generation"], d.storage.url, d.stats.backlog_txns)
                if not d.in_reader(lambda: self.new_generation(found)):
                    return False
        else:
            held = self.held
            assert held is not None
            base = found.max_txid + 1
            if held.txid != base:
                log.info("the replica holds txids up to %d: renumbering the provisional generation from %d",
                         found.max_txid, base)
                if not d.in_reader(lambda: self._renumber(base - held.txid)):
                    return False
            held.header.update(db_id=d.rs.db_id, txid=held.txid, lease_epoch=d.lease.epoch)
            held.writer.finish(held.header)
            d.pending_snapshot = (layout.SnapshotKey(held.generation, held.txid, held.ts).key, held.tmp)
            d.save_state(held.txid, held.ts, held.position, held.change)
            self.held = None
        self.done = True
        log.warning("replica %s answered: lease epoch %d, database %s; uploading what was captured meanwhile",
                    d.storage.url.split("?", 1)[0], d.lease.epoch or 0, d.rs.db_id, extra={"event": "lease_taken"})
        d.started()
        return True

    def _renumber(self, offset: int) -> None:
        """Move the provisional generation past the replica's txids (in the reading thread)."""
        d, held = self.d, self.held
        if held is None or offset == 0:
            return
        d.state.renumber(offset, d.rs.page_size)
        held.txid += offset
        d.rs.next_txid += offset
        d.stats.last_txid += offset
        d.stats.uploaded_txid += offset

    def stopped_unreachable(self, exc: BaseException) -> DaemonError:
        """The error a daemon stopped before the replica ever answered ends with: what is kept."""
        url = self.d.storage.url.split("?", 1)[0]
        if self.saved is not None:
            return DaemonError(
                f"stopped before {url} answered ({brief(exc)}): {self.d.stats.backlog_txns} transactions stay in the "
                f"spool {self.d.state.spool_dir}; the next start checks the lease and identity, then uploads them")
        return DaemonError(
            f"stopped before {url} answered ({brief(exc)}): it never held this database's base snapshot, so the "
            f"{self.d.stats.backlog_txns} transactions captured since the start cannot be uploaded without it; the "
            "next start takes a new base snapshot (the database is unaffected; the moments between these two "
            "starts are not restorable)")
