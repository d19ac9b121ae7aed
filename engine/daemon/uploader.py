"""Uploading, for one daemon: spool files become immutable segments, heartbeats vouch for them.

The tail thread only appends to the spool; this thread seals it every ``upload_interval``,
uploads each sealed file as one create-only segment in txid order, then advances the saved
"uploaded" point.  A replica that is unreachable only grows the spool (retried with backoff);
another writer in our replica path (a lost lease, a conflicting object) stops the daemon, because
uploading more could interleave two histories.
"""

from __future__ import annotations

import logging
import math
import os
import threading
import time
from array import array
from dataclasses import dataclass
from typing import Any

from ..errors import (
    DaemonError,
    LeaseError,
    ObjectConflict,
    StoreUnreachable,
)
from ..logs import brief
from ..replica import layout
from ..replica.format import SegmentWriter, decode_txns
from ..storage import put_file_immutable
from ..timeparse import format_us
from . import clock, segmentput
from .outage import Outage
from .spool import Piece
from .spoolrecord import txn_spans
from .stats import LAG_SAMPLES
from .uploadhost import UploadHost
from .uploadloop import Signal, run_on_own_thread

log = logging.getLogger("walrewind.shipper")

SEAL_MAX_BYTES = 16 << 20  # while a backlog waits, keep appending to one spool file up to this size
IN_MEMORY_BYTES = 4 << 20  # spool files up to this size become a segment in memory
SEGMENT_ZSTD_LEVEL = 1
FSYNC_SECONDS = 1.0  # spool records are fsynced at least this often (by this thread: see _wait)
UPLOAD_BACKOFF_MAX = 5.0  # seconds between upload attempts the replica refused although it answered
# An idle stage's heartbeat falls due on a grid of this (at most a twentieth of the interval): in a
# process serving many databases one wake-up of the upload pool then serves the heartbeats of
# every database due in that second (1,000 namespaces: ~17 a second, one pool wake-up each before).
HEARTBEAT_GRID = 1.0


@dataclass(eq=False)
class Segment:
    """A sealed piece of the spool made a segment, before and while it is uploaded."""

    piece: Piece
    key: str
    first_txid: int
    last_txid: int
    last_ts: int
    position: Any
    change: int | None
    stamps: array
    batches: list
    body: bytes | None = None  # in memory, or
    tmp: str | None = None  # ... in a staging file (a big piece)
    size: int = 0


class Uploader:
    """The daemon's upload thread; shares the tail's state through ``shipper``."""

    def __init__(self, shipper: UploadHost) -> None:
        self.shipper = shipper
        self.lock = threading.Lock()  # the tail takes it to rewind the spool (a full spool)
        self.sealed_through_us = 0  # everything committed before this was in a sealed file at the last seal
        self.last_beat_mono = time.monotonic()
        self._last_heartbeat_key: str | None = None
        self._last_heartbeat_ts = 0
        self._last_upload_mono = time.monotonic()
        self._last_attempt_mono = time.monotonic()  # the last round (paces uploads: one per interval)
        # Set by the reader when it spools and by stop(): with nothing spooled nothing runs until then.
        # (Signals: setting one wakes whatever runs this stage's steps, see uploadloop.py.)
        self.kick = Signal()
        self._hold_until: float | None = None  # an explicit wait (an outage's probe interval), see due()
        self._last_flush_mono = time.monotonic()
        self._backoff = 0.0
        self._next_attempt = 0.0  # monotonic time before which no full upload is tried (backing off)
        self.outage: Outage | None = None  # the replica is not taking uploads since ...
        # Set by the reader when a burst has just ended (a large spool file, the writer quiet):
        # upload now instead of at the next interval, so the burst's last commit is restorable
        # at once.  A steady writer never sets it (never quiet), nor a slow one (small files).
        self.soon = Signal()

    def upload_pending(self, final: bool = False, drain: bool = False, vouched: int = 0) -> int:
        """Upload every sealed spool file as one segment each, in order; returns how many.

        The file being appended to is sealed first, unless a backlog is already waiting (the
        replica was unreachable): then it keeps growing up to SEAL_MAX_BYTES, so a long outage
        drains as a few large segments instead of one per interval.  ``drain`` (the replica
        answers again) seals it anyway: the whole backlog goes now, not one interval later.  No
        LIST: the daemon knows what it wrote.  ``vouched``: a time before which everything
        committed was spooled, found since the reader's own (vouch.py, before a heartbeat).
        """
        if not self.shipper.startup_done:
            return 0  # nothing goes to a replica whose lease and identity were not checked
        with self.lock:
            self._upload_snapshot()
            if (final or drain or not self.shipper.state.sealed_files()
                    or self.shipper.state.current_bytes() >= SEAL_MAX_BYTES):
                through = max(self.shipper.spooled_through_us, vouched)
                self.shipper.state.seal()
                self.sealed_through_us = through
            uploaded = 0
            for piece in self.shipper.state.sealed_files():
                if self._upload_file(piece):
                    uploaded += 1
            return uploaded

    def _seal_if_full(self) -> None:
        """While nothing is uploaded, still cut the spool into SEAL_MAX_BYTES files: each becomes
        one segment, and a restore downloads whole segments (one file for an hour-long outage
        would be one multi-gigabyte object)."""
        with self.lock:
            if self.shipper.state.current_bytes() >= SEAL_MAX_BYTES:
                through = self.shipper.spooled_through_us
                self.shipper.state.seal()
                self.sealed_through_us = through

    def _upload_snapshot(self) -> None:
        """Ship a new generation's base snapshot first: no segment may precede it."""
        pending = self.shipper.pending_snapshot
        if pending is None:
            return
        key, path = pending
        self.shipper.ensure_lease()
        put_file_immutable(self.shipper.storage, key, path)
        self.shipper.stats.uploaded_bytes += os.path.getsize(path)
        self.shipper.stats.last_upload_us = clock.now_us()
        os.unlink(path)
        self.shipper.pending_snapshot = None
        self.shipper.ready.set()
        log.info("base snapshot %s uploaded", key)

    def _upload_file(self, piece: Piece) -> bool:
        """Upload one sealed piece of the spool as a segment and advance the saved point."""
        seg = self.segment(piece)
        if seg is None:
            return False
        if seg.tmp is None:
            self.put_segment(seg.key, seg.body)
        else:
            try:
                self.put_segment_file(seg.key, seg.tmp)
            finally:
                os.unlink(seg.tmp)
        self.uploaded(seg)
        return True

    def segment(self, piece: Piece) -> Segment | None:
        """Stream one sealed piece of the spool into a segment (None: nothing left in it to upload).

        One sequential pass over the file and one record (a read pass's batch) in memory at a
        time: its transactions are already encoded as a segment payload holds them, so they go
        to zstd as they are, into a file under the state directory that is uploaded from there.
        Each batch carries the net page hashes the reader computed (spoolrecord.py), so the
        uploaded hashes advance after the upload without hashing a page again, and only the
        pages this segment changed are appended to the hashes log (hashlog.py).
        """
        sh = self.shipper
        path = piece.path
        uploaded_txid = sh.stats.uploaded_txid
        # Small files are compressed in memory and sent from there; big ones (a backlog drained
        # after an outage, up to SEAL_MAX_BYTES) through a staging file.  zstd level 1: the
        # daemon's segments are written once per second on the application's machine (a third
        # faster than level 3); compaction re-compresses old ones.
        tmp = None if piece.size <= IN_MEMORY_BYTES else os.path.join(sh.state.path, "segment.tmp")
        writer = SegmentWriter(tmp, level=SEGMENT_ZSTD_LEVEL)
        first_txid = last_txid = None
        first_ts = last_ts = 0
        through = 0
        position = change = None
        batches: list = []  # (Batch, raw or None) replayed onto the uploaded hashes after the upload
        stamps = array("q")  # every transaction's commit time (upload lag samples)
        try:
            for rec in piece.records():
                if rec.last_txid <= uploaded_txid:
                    continue
                if rec.txid <= uploaded_txid:
                    rec = rec.after(uploaded_txid, sh.page_size)
                batch = rec.batch
                if first_txid is None:
                    if batch.first_txid != uploaded_txid + 1:
                        raise DaemonError(
                            f"spool file {path} starts at txid {batch.first_txid} but the replica ends at "
                            f"{uploaded_txid}; refusing to upload a history with a hole"
                        )
                    first_txid, first_ts = batch.first_txid, batch.first_ts_us
                elif batch.first_txid != last_txid + 1:
                    raise DaemonError(f"spool file {path}: txid {batch.first_txid} follows {last_txid}")
                last_txid, last_ts = rec.last_txid, batch.last_ts_us
                through = max(through, batch.through_ts_us)
                if batch.position is not None:
                    position = batch.position
                if batch.change is not None:
                    change = batch.change
                writer.add_record(rec.raw, batch.count)
                stamps.extend(ts for _txid, ts, _start, _end in txn_spans(rec.raw, sh.page_size))
                # An old record (no page hashes) keeps its transactions to hash them after the upload.
                batches.append((batch, rec.raw if batch.changes is None else None))
        except BaseException:
            writer.abort()
            raise
        if first_txid is None or last_txid is None:
            writer.abort()
            sh.state.remove(piece)
            return None
        sh.ensure_lease()
        key = layout.SegmentKey(sh.generation, first_txid, last_txid, first_ts, last_ts)
        header = {
            "db_id": sh.db_id,
            "generation": sh.generation,
            "page_size": sh.page_size,
            "first_txid": first_txid,
            "last_txid": last_txid,
            "through_ts_us": through,
            "lease_epoch": sh.lease.epoch,
        }
        seg = Segment(piece, key.key, first_txid, last_txid, last_ts, position, change, stamps, batches)
        if tmp is None:
            seg.body = writer.finish_bytes(header)
            seg.size = len(seg.body)
        else:
            writer.finish(header, fsync=False)  # a staging copy: the spool file stays until uploaded
            seg.tmp, seg.size = tmp, os.path.getsize(tmp)
        return seg

    def uploaded(self, seg: Segment) -> None:
        """The segment is durable in the replica: advance the hashes, the saved point, the stats."""
        sh = self.shipper
        now = clock.now_us()
        sh.stats.uploaded_transactions += len(seg.stamps)
        sh.stats.uploaded_bytes += seg.size
        sh.stats.last_upload_us = now
        net = self._advance_hashes(seg.piece.path, seg.batches)
        sh.stats.lag_samples_us.extend(now - ts for ts in seg.stamps[-LAG_SAMPLES:])
        sh.save_state(seg.last_txid, seg.last_ts, seg.position, seg.change, net, seg.first_txid)
        sh.state.remove(seg.piece)
        sh.stats.uploaded_txid = seg.last_txid
        sh.stats.uploaded_commit_us = seg.last_ts
        sh.stats.segments += 1
        sh.stats.backlog_bytes = sh.state.pending
        self._last_upload_mono = time.monotonic()

    def _advance_hashes(self, path: str, batches: list):
        """Move the uploaded hashes to the segment's end; returns its net page changes (None when
        an old record had to be hashed: the whole table is saved then)."""
        hashes = self.shipper.uploaded_hashes
        touched: set[int] = set()
        rehashed = False
        for batch, raw in batches:
            if raw is not None:
                rehashed = True
                for record in decode_txns(raw, self.shipper.page_size, path):
                    hashes.apply(record.pages, record.db_pages)
            else:
                try:
                    hashes.apply_changes(*batch.changes, batch.db_pages)
                except ValueError as exc:
                    raise DaemonError(f"spool file {path}: page changes do not apply ({exc})") from None
                touched.update(batch.changes[0])
            if hashes.checksum != batch.db_checksum:
                raise DaemonError(f"spool file {path}: page hashes disagree with txid "
                                  f"{batch.first_txid + batch.count - 1}'s checksum")
        return None if rehashed else hashes.net_changes(touched)

    def put_segment_file(self, key: str, path: str) -> None:
        segmentput.put_segment_file(self.shipper.storage, key, path)

    def put_segment(self, key: str, blob: bytes, already_tried: bool = False) -> None:
        segmentput.put_segment(self.shipper.storage, key, blob, already_tried)

    def write_heartbeat(self) -> None:
        """Renew the lease and, when the daemon can vouch for it, tell restores how complete the
        replica is: at most one PUT (plus the DELETE of the previous heartbeat and one GET that
        checks nobody took the lease over).

        A heartbeat ``<ts>-<txid>`` says: everything committed before ``ts`` is in the replica, the
        last being ``txid``.  ``ts`` is the time at the last seal up to which SQLite's commit
        counter matched what was spooled, so it is only written when nothing sealed is waiting and
        the tail is healthy (not stopped by a full spool, not stuck).  Otherwise the lease is
        renewed with an empty ``lease/renewals/`` object, which restores ignore.
        """
        sh = self.shipper
        with self.lock:
            sh.lease.check_fenced()
            through = self.sealed_through_us
            stale_after_us = int(max(10.0, 10 * sh.upload_interval) * 1_000_000)
            healthy = (
                sh.pending_snapshot is None
                and sh.overflow is None
                and not sh.state.sealed_files()
                and clock.now_us() - through < stale_after_us
                and through > self._last_heartbeat_ts
            )
            if healthy:
                # The previous heartbeat goes as this one is made (a rename in a file replica):
                # restores read the newest (and the highest txid), and retention keeps it.
                key = layout.HeartbeatKey(sh.generation, through, sh.stats.uploaded_txid).key
                sh.storage.replace_marker(self._last_heartbeat_key, key)
                self._last_heartbeat_key = key
                self._last_heartbeat_ts = through
                sh.lease.renewed(through)
                sh.stats.heartbeats += 1
            else:
                sh.lease.renew()
                sh.stats.lease_renewals += 1
            self.last_beat_mono = time.monotonic()

    def run(self) -> None:
        """The upload stage on a thread of its own (a process with a few databases; a process
        serving many runs every database's steps on a few shared threads: uploadloop.UploadPool)."""
        run_on_own_thread(self)

    def begin(self) -> None:
        """Before the first step: the base snapshot at once; started without the replica, the
        first look at it after a probe interval (engine/daemon/startup.py)."""
        if self.shipper.pending_snapshot is not None:
            self._hold_until = 0.0
        elif self.outage is not None:
            self._hold_until = time.monotonic() + self.outage.probe_interval()

    def due(self) -> float:
        """When the next step has something to do (monotonic), unless signalled sooner (``kick``:
        the reader spooled; ``soon``: a burst ended; both: stop).

        Upload every ``upload_interval`` while the spool holds something (a batch of commits per
        segment), fsyncing the spool at least every FSYNC_SECONDS meanwhile (never on the reading
        thread, which must stay free to step aside for a checkpointer: docs/DESIGN.md, "Grouped
        fsync"); while the replica is unreachable, ask it every few tenths of a second
        (engine/daemon/outage.py).  With nothing spooled: nothing until the reader spools or the
        next heartbeat is due (a database nobody writes costs no wake-up a second)."""
        if self.soon.is_set() or self.shipper.stopping:
            return 0.0
        if self._hold_until is not None:
            return min(self._hold_until, self._last_flush_mono + FSYNC_SECONDS)
        if not self._has_work():
            return self._beat_due()
        return min(self._last_attempt_mono + self.shipper.upload_interval, self._last_flush_mono + FSYNC_SECONDS)

    def _beat_due(self) -> float:
        interval = self.shipper.heartbeat_interval
        grid = min(HEARTBEAT_GRID, interval / 20)
        return math.ceil((self.last_beat_mono + interval) / grid) * grid

    def step(self) -> bool:
        """Do what is due now (an upload round, a heartbeat, a spool fsync, or nothing); False
        once this stage is done (stopping, or stopped by another writer in the replica path)."""
        sh = self.shipper
        if sh.stopping:
            return False
        now = time.monotonic()
        soon = self.soon.is_set()
        self.soon.clear()
        self.kick.clear()
        if self._hold_until is not None and not soon:
            if now < self._hold_until:
                return self._flush_if_due(now)
        elif not self._has_work():
            if now < self.last_beat_mono + sh.heartbeat_interval:
                return True  # kicked, but the spool was empty by the time we looked
        elif not soon and now < self._last_attempt_mono + sh.upload_interval:
            return self._flush_if_due(now)
        self._hold_until = None
        return self._round(now)

    def _flush_if_due(self, now: float) -> bool:
        if now >= self._last_flush_mono + FSYNC_SECONDS:
            self.shipper.state.flush()
            self._last_flush_mono = now
        return True

    def _round(self, now: float) -> bool:
        """One upload round: what is sealed and spooled, and a heartbeat when one is due."""
        sh = self.shipper
        if self.outage is not None:
            self._hold_until = now + self.outage.probe_interval()
            self._seal_if_full()
            if now < self._next_attempt or not self.outage.answers(sh.storage):
                return True
        try:
            if not sh.complete_startup():  # identity and lease, before the first upload
                return False  # stopping; the final sync completes it
            self._last_attempt_mono = self._last_flush_mono = time.monotonic()
            beat = time.monotonic() - self.last_beat_mono >= sh.heartbeat_interval
            # A quiet reader sleeps long: what vouches for "nothing unread" now (vouch.py).
            vouched = sh.refresh_tail() if beat else 0
            self.upload_pending(drain=self.outage is not None, vouched=vouched)
            if beat:
                self.write_heartbeat()
        except Exception as exc:
            return self.round_failed(exc)
        self.upload_ok()
        return True

    def round_failed(self, exc: Exception) -> bool:
        """An upload round failed; False when this stage must stop."""
        sh = self.shipper
        if isinstance(exc, (LeaseError, ObjectConflict, DaemonError)):
            # Someone else writes this replica path (or our spool is inconsistent): uploading
            # more could interleave two histories.  Stop; the spool keeps what was not uploaded.
            sh.fatal = exc
            sh.stats.last_error = str(exc)
            log.error("stopping: %s", exc, extra={"event": "fenced" if isinstance(exc, LeaseError) else "stopping"})
            sh.stop()
            return False
        self._failed(exc)  # keep spooling; retried once the replica answers
        self._hold_until = time.monotonic() + self.outage.probe_interval() if self.outage is not None else None
        return True

    def round_ready(self, now: float) -> bool:
        """True when the next step is nothing but the upload of what was spooled since the last
        one, to a store that lets the caller group its flushes (a round of many databases:
        uploadround.py).  Read without locks: the round checks again under them."""
        sh = self.shipper
        return (self._hold_until is None and self.outage is None and not sh.stopping and sh.startup_done
                and sh.pending_snapshot is None and sh.state.pending > 0 and not sh.state.has_pieces
                and now - self.last_beat_mono < sh.heartbeat_interval
                and (self.soon.is_set() or now >= self._last_attempt_mono + sh.upload_interval))

    @property
    def groupable(self) -> bool:
        """Its uploads can join a round of many databases (a store that stages puts)."""
        return getattr(self.shipper.storage, "stages_puts", False)

    def round_started(self) -> None:
        """A round took this stage's upload (what ``step`` would have done)."""
        self.soon.clear()
        self.kick.clear()
        self._last_attempt_mono = self._last_flush_mono = time.monotonic()

    def _has_work(self) -> bool:
        sh = self.shipper
        return sh.pending_snapshot is not None or sh.state.pending > 0

    def _failed(self, exc: Exception) -> None:
        """An upload failed: the start of an outage (one line), or more of one (a reminder a minute).

        The next full attempt waits for a probe to succeed.  When it fails although the probe
        succeeded (a store that answers a LIST but refuses uploads, or flaps), attempts back off
        (upload_interval doubling to UPLOAD_BACKOFF_MAX) instead of repeating at probe speed."""
        stats = self.shipper.stats
        stats.upload_errors += 1
        stats.last_error = brief(exc)
        if self.outage is None:
            self._backoff = 0.0
            self.outage = Outage(self.shipper)
            self.outage.began(exc)
            if not isinstance(exc, StoreUnreachable):
                self._backoff = self.shipper.upload_interval
        else:
            self._backoff = min(UPLOAD_BACKOFF_MAX, max(self.shipper.upload_interval, self._backoff * 2))
            self.outage.remind(exc)
        self._next_attempt = time.monotonic() + self._backoff

    def upload_ok(self) -> None:
        self._hold_until = None
        self._backoff = 0.0
        self._next_attempt = 0.0
        if self.outage is not None:
            self.outage.ended()
            self.outage = None

    def backlog(self) -> dict:
        """What is read but not yet in the replica (for status displays)."""
        return {
            "transactions": self.shipper.stats.backlog_txns,
            "bytes": self.shipper.stats.backlog_bytes,
            "oldest_unuploaded_after": format_us(self.shipper.stats.uploaded_commit_us) if self.shipper.stats.uploaded_commit_us else None,
            "replica_unreachable_since": (
                format_us(self.shipper.stats.replica_unreachable_since_us) if self.shipper.stats.replica_unreachable_since_us else None
            ),
            "spool_full": self.shipper.stats.spool_full,
            "last_error": self.shipper.stats.last_error,
        }
