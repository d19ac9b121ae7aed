"""The replication daemon for one database: tail the WAL, spool, upload, never lose or invent.

Protocol (see docs/DESIGN.md for the reasoning):

* **Read** committed frames straight from the -wal file as soon as inotify reports a write (or a
  fallback poll fires), and stamp each transaction with the time it was observed.
* **Pin** a read transaction before every read, so SQLite cannot restart or truncate the WAL
  under us; **yield** it within milliseconds when another process starts a blocking checkpoint
  (it holds the checkpoint and write locks, so no commit can land while we finish copying), and
  **release** it once the application's checkpoints have caught up with us so the WAL can reset
  (engine/pinpolicy.py).  The application never waits for its busy timeout and the WAL stays
  bounded.
* **Maintain** the replica on a side thread (engine/maintenance.py): periodic snapshots built from
  the replica, retention, compaction, restore drills.
* **Account** for every commit: SQLite increments the wal-index ``iChange`` counter once per
  commit.  Whenever we are caught up, the commits we read must equal its advance.  If they do not,
  history was lost (e.g. the daemon was down while the app checkpointed) and we **reconcile**:
  compare every page of the live database with the replica's state and ship the difference as a
  transaction flagged RESYNC.  Nothing is ever skipped silently.
* **Spool** each read pass (fsync) and **upload** one immutable segment per interval
  (engine/uploader.py).  While the
  replica is unreachable the spool grows (bounded; a full spool stops reading loudly and the gap is
  repaired visibly later) and is drained in order when it is back.
* **Fence**: a lease (engine/lease.py) makes sure only one daemon ships into a replica path, and
  only one database's history goes there.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from ..errors import DaemonError, ForeignReplica, LeaseError
from ..fsutil import atomic_write
from ..replica import layout
from ..replica.format import FLAG_LATE, FLAG_RESYNC, SnapshotWriter, TxnRecord
from ..replica.lease import LEASE_SECONDS, Lease, ReplicaScan, scan
from ..sqlite.capture import SnapshotReader
from ..sqlite.fds import close_shared, open_shared
from ..sqlite.pagehash import PageHashes
from ..sqlite.pin import ReadPin, open_readonly
from ..sqlite.shm import ShmHeader, ShmObserver
from ..sqlite.walfile import WalFile, WalPosition
from ..storage import Storage
from ..timeparse import format_us
from .observer import Observations, Observer
from .pinpolicy import MAX_WAL_BYTES, PinPolicy
from .spool import (
    DEFAULT_MIN_FREE,
    DEFAULT_SPOOL_LIMIT,
    SpooledTxn,
    SpoolFull,
    StateDir,
    default_state_dir,
)
from .uploader import Uploader
from .waker import Waker

if TYPE_CHECKING:  # the daemon runs maintenance only when given one: imported lazily
    from ..maintenance.scheduler import Maintenance

log = logging.getLogger("walrewind.shipper")

MASK = 0xFFFFFFFF
PROBE_INTERVAL = 0.005  # lock probing while we hold a pin: how fast a checkpointer gets its way
PROBE_INTERVAL_RELAXED = 0.02  # ... while no application has run a blocking checkpoint lately
FAST_PROBE_SECONDS = 600.0  # after yielding to a checkpointer, probe fast for this long
IDLE_POLL = 0.25  # fallback when inotify is quiet
READ_DEFER_SECONDS = 0.1  # while pinned, read what was observed at most this often
HOUSEKEEPING_SECONDS = 0.1  # while pinned and quiet, re-check the pin policy this often
FSYNC_SECONDS = 0.25  # spool records are fsynced at least this often (and before any unpin)
READ_BATCH_BYTES = 8 << 20  # per read pass: bounds the memory of a pass and the stamps' delay
UNVERIFIED_MAX_US = 5_000_000  # commits SQLite could not vouch for within this long force a reconcile
HEARTBEAT_SECONDS = 60.0
LAG_SAMPLES = 4096
STATE_VERSION = 1
OVERFLOW_CHECK_SECONDS = 1.0  # how often a full spool looks for room again
FINAL_SYNC_SECONDS = 30.0  # at stop, how long to keep reading a WAL we are behind on
MAINTENANCE_JOIN_SECONDS = 30.0  # at stop, how long a running snapshot/prune/drill may finish


def now_us() -> int:
    return time.time_ns() // 1000




@dataclass
class ShipperStats:
    transactions: int = 0
    wal_bytes: int = 0
    segments: int = 0
    resyncs: int = 0
    yields: int = 0
    releases: int = 0
    daemon_checkpoints: int = 0
    wal_cap_releases: int = 0  # times we let go of the WAL because we could not keep up (max_wal_bytes)
    last_txid: int = 0
    last_commit_us: int = 0
    uploaded_txid: int = 0
    uploaded_commit_us: int = 0
    # The most recent LAG_SAMPLES upload lags (fixed memory: a growing list was the daemon's
    # ~4 KB/s RSS drift at 100 txn/s).
    lag_samples_us: deque = field(default_factory=lambda: deque(maxlen=LAG_SAMPLES))
    upload_errors: int = 0
    last_error: str = ""
    # Backlog: read and spooled, not yet in the replica.  backlog_txns = last_txid - uploaded_txid.
    backlog_bytes: int = 0
    replica_unreachable_since_us: int = 0  # 0 while uploads succeed
    spool_full: bool = False
    spool_full_since_us: int = 0
    spool_full_events: int = 0
    heartbeats: int = 0
    # Wake-ups of the tail loop: a file change, a look-again for a commit being written, a timeout
    # (lock probe while pinned, fallback poll otherwise).  Each costs ~40 us of CPU on a small VM.
    wake_changes: int = 0
    wake_looks: int = 0
    wake_timeouts: int = 0
    uncertain_stamps: int = 0  # commits whose stamp may be late by more than 5 ms (see observer.py)
    max_stamp_gap_us: int = 0  # the largest such bound
    # Commits first seen by a timed wake-up (no file change woke us in time): their stamps may be
    # late by up to the probe/poll interval.  Logged when it happens; see docs/DESIGN.md.
    polled_stamps: int = 0
    lease_renewals: int = 0
    lease_epoch: int = 0

    @property
    def backlog_txns(self) -> int:
        return max(0, self.last_txid - self.uploaded_txid)


class Shipper:
    def __init__(
        self,
        db_path: str,
        storage: Storage,
        state_dir: str | None = None,
        upload_interval: float = 1.0,
        heartbeat_interval: float = HEARTBEAT_SECONDS,
        checkpoint_frames: int = 0,
        takeover: bool = False,
        lease_seconds: float = LEASE_SECONDS,
        spool_limit_bytes: int = DEFAULT_SPOOL_LIMIT,
        spool_min_free_bytes: int = DEFAULT_MIN_FREE,
        max_wal_bytes: int = MAX_WAL_BYTES,
        maintenance: Maintenance | None = None,
    ) -> None:
        self.db_path = os.path.abspath(db_path)
        self.storage = storage
        self.state = StateDir(state_dir or default_state_dir(self.db_path), spool_limit_bytes, spool_min_free_bytes)
        self.upload_interval = upload_interval
        self.heartbeat_interval = heartbeat_interval
        # Fencing (engine/lease.py): ``takeover`` takes the lease from a daemon that still looks
        # alive (or adopts a replica written for this database from another path/host).
        self.takeover = takeover
        if heartbeat_interval * 2 > lease_seconds * 0.75:
            raise DaemonError(
                f"lease of {lease_seconds}s is too short for heartbeats every {heartbeat_interval}s "
                "(it must survive at least one missed heartbeat)"
            )
        self.lease = Lease(storage, self.state.path, self.db_path, lease_seconds)
        self.pin_policy = PinPolicy(self, checkpoint_frames, max_wal_bytes)
        # Snapshots, retention, compaction, drills (engine/maintenance.py) on their own thread once
        # the daemon is up; its status is saved as maintenance.json in the state directory.
        self.maintenance = maintenance
        self.stats = ShipperStats()
        self._stop = threading.Event()
        self._waker = Waker()
        self._waker_lock = threading.Lock()  # stop() may come from any thread, even after run() ended
        self._waker_closed = False
        self.last_commit_mono = time.monotonic()
        self.unverified: list = []  # (WalTransaction, observed time) read but not yet vouched for
        self.observations = Observations()  # when each commit boundary was first seen
        self.observer: Observer | None = None  # the observe stage's thread, while running
        self.verified_pos: WalPosition | None = None
        self.anchor: int | None = None  # SQLite's commit counter at verified_pos
        self.ready = threading.Event()
        self.fatal: BaseException | None = None  # set by the uploader: stop, do not upload more
        self.overflow: SpoolFull | None = None  # the spool is full: not reading until there is room
        self._last_flush = time.monotonic()
        self._overflow_check = 0.0
        self.spooled_through_us = 0  # everything committed before this was spooled (tail thread)
        # (key, local file) of a new generation's base snapshot the uploader has not shipped yet
        self.pending_snapshot: tuple[str, str] | None = None
        self.uploader = Uploader(self)

    # ------------------------------------------------------------------ setup / teardown
    def _open(self) -> None:
        if not os.path.exists(self.db_path):
            raise DaemonError(f"{self.db_path}: database does not exist")
        probe = open_readonly(self.db_path)
        try:
            mode = probe.execute("PRAGMA journal_mode").fetchall()[0][0]
        finally:
            probe.close()
        if mode.lower() != "wal":
            raise DaemonError(
                f"{self.db_path}: database is in {mode!r} journal mode; walrewind needs WAL "
                "(run PRAGMA journal_mode=WAL once in your application)"
            )
        self.state.lock()
        # Order matters: SQLite connections first (they create the -shm), then our descriptors,
        # which stay open until every connection is closed (POSIX locks are per process).
        self.pin = ReadPin(self.db_path, before_release=self.state.flush)
        self.shm = ShmObserver(self.db_path + "-shm")
        self.db_fd = open_shared(self.db_path)
        self.wal = WalFile(self.db_path + "-wal")
        self.snapshots = SnapshotReader(self.pin, self.shm, self.wal, self.db_fd, self.stats)

    def _close(self) -> None:
        self.pin_policy.close()
        self.pin.close()
        self.wal.close()
        self.shm.close()
        close_shared(self.db_fd)
        self.state.unlock()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_for_stop(self, timeout: float) -> bool:
        return self._stop.wait(timeout)

    def stop(self) -> None:
        self._stop.set()
        with self._waker_lock:
            if not self._waker_closed:  # never write to a descriptor number that may be reused
                self._waker.wake()
        observer = self.observer
        if observer is not None:
            with observer.cond:
                observer.cond.notify_all()

    def _close_waker(self) -> None:
        with self._waker_lock:
            if not self._waker_closed:
                self._waker_closed = True
                self._waker.close()

    # ------------------------------------------------------------------ lease and identity
    def _load_matching_state(self) -> dict | None:
        """The state directory's saved point, if it is for this database and this replica."""
        saved = self.state.load_state()
        if not saved or saved.get("db_path") != self.db_path or saved.get("replica") != self.storage.url:
            return None
        if saved.get("version") != STATE_VERSION:
            raise DaemonError(
                f"state directory {self.state.path} has format version {saved.get('version')}; this build "
                f"reads version {STATE_VERSION} (use a matching walrewind or a fresh --state-dir)"
            )
        return saved

    def _acquire(self, saved: dict | None) -> ReplicaScan:
        """Start-up: one LIST of lease/ and of generations/, the identity check, then the lease."""
        found = scan(self.storage)
        self.lease.check_free(found, self.takeover)
        self.db_id = self._identity(saved, found)
        self.lease.acquire(found, self.db_id)
        self.stats.lease_epoch = self.lease.epoch or 0
        return found

    def _identity(self, saved: dict | None, found: ReplicaScan) -> str:
        """The db_id to ship under; refuses (ForeignReplica) to mix two databases in one path."""
        from ..replica.index import object_header

        holder = found.holder
        replica_id = holder.db_id if holder is not None and holder.db_id else None
        if replica_id is None and found.newest_snapshot is not None:
            # A replica written before leases existed: the snapshot header names the database.
            replica_id = object_header(self.storage, found.newest_snapshot.key).get("db_id")
        where = f" ({holder.db_path} on host {holder.host})" if holder is not None else ""
        if saved is not None:
            if replica_id and replica_id != saved["db_id"]:
                raise ForeignReplica(
                    f"{self.storage.url} holds the history of another database (db_id {replica_id}{where}), "
                    f"but the state directory {self.state.path} belongs to database {saved['db_id']}: refusing "
                    "to mix two databases' histories in one replica path (use another replica path)"
                )
            return saved["db_id"]
        if replica_id is None:
            return uuid.uuid4().hex
        if holder is None:
            log.warning("%s was written by an older walrewind (no lease records); continuing database %s",
                        self.storage.url, replica_id)
            return replica_id
        if (holder.host, holder.db_path) == (self.lease.host, self.db_path):
            return replica_id  # the same database file; only the daemon's local state is new
        if self.takeover:
            log.warning("adopting database identity %s of %s on %s for %s (--takeover)",
                        replica_id, holder.db_path, holder.host, self.db_path)
            return replica_id
        raise ForeignReplica(
            f"{self.storage.url} holds the history of database {holder.db_path} on host {holder.host} "
            f"(db_id {replica_id}); refusing to append the history of {self.db_path} on host "
            f"{self.lease.host} to it. Use another replica path, or pass --takeover if this is the same "
            "database moved to a new path or host"
        )

    def ensure_lease(self) -> None:
        """Before every upload: still ours?  (No request unless it had to be re-acquired.)"""
        if self.lease.ensure():
            self.stats.lease_epoch = self.lease.epoch or 0

    # ------------------------------------------------------------------ generations
    def _start_generation(self, found: ReplicaScan) -> None:
        """Begin a new history with a base snapshot (first run, or local state lost)."""
        self.state.reset()
        base_txid = found.max_txid + 1
        state_db_id = self.db_id
        tmp = os.path.join(self.state.path, "snapshot.tmp")

        def write_snapshot(snap, position, page_size, db_pages, pages):
            ts = now_us()
            generation = layout.new_generation_id(ts)
            hashes = PageHashes(page_size)
            header = {
                "db_id": state_db_id,
                "generation": generation,
                "txid": base_txid,
                "ts_us": ts,
                "page_size": page_size,
                "page_count": db_pages,
            }
            writer = SnapshotWriter(tmp)
            batch: list[bytes] = []
            try:
                for pgno, data in pages():
                    hashes.set_page(pgno, data)
                    batch.append(data)
                    if len(batch) == 256:
                        writer.add_pages(b"".join(batch))
                        batch.clear()
                        if pgno % 16384 == 0:
                            log.info("snapshot: %d of %d pages", pgno, db_pages)
            except BaseException:
                writer.abort()
                raise
            writer.add_pages(b"".join(batch))
            hashes.resize(db_pages)
            header["db_checksum"] = f"{hashes.checksum:016x}"
            return snap, position, page_size, db_pages, ts, generation, hashes, writer, header

        snap, position, page_size, db_pages, ts, generation, hashes, writer, header = self.snapshots.under_snapshot(
            write_snapshot
        )
        # The pin stays: its read transaction holds the WAL at exactly the snapshot's point, so
        # every commit after it is still in the WAL when the tail reads on from there, however
        # long the snapshot takes to upload.  (Releasing it here let the app's checkpoints
        # overwrite commits not yet read while a big snapshot uploaded: a RESYNC at every start
        # on a busy database.)  The uploader ships the snapshot before any segment.
        self.ensure_lease()  # a big snapshot can take longer than the lease
        header["lease_epoch"] = self.lease.epoch
        writer.finish(header)
        self.pending_snapshot = (layout.SnapshotKey(generation, base_txid, ts).key, tmp)
        self.generation = generation
        self.page_size = page_size
        self.pos = position
        self.hashes = hashes
        self.uploaded_hashes = hashes.copy()
        self.next_txid = base_txid + 1
        self.anchor = snap.change
        self.verified_pos = position
        self.unverified = []
        self.last_ts = ts
        self.save_state(base_txid, ts, position, snap.change)
        self.stats.last_txid = self.stats.uploaded_txid = base_txid
        self.stats.last_commit_us = self.stats.uploaded_commit_us = ts
        self.uploader.sealed_through_us = self.spooled_through_us = ts
        log.info("new generation %s: snapshot of %d pages at txid %d", generation, db_pages, base_txid)

    def save_state(self, txid: int, ts: int, position: WalPosition | None, change: int | None) -> None:
        self.state.save_state(
            {
                "version": STATE_VERSION,
                "db_path": self.db_path,
                "db_id": self.db_id,
                "replica": self.storage.url,
                "generation": self.generation,
                "page_size": self.page_size,
                "uploaded_txid": txid,
                "uploaded_ts_us": ts,
                "position": position.to_json() if position else None,
                "change": change,
            },
            self.uploaded_hashes,
        )
        self._uploaded_pos = position
        self._uploaded_change = change

    def _resume(self, saved: dict) -> None:
        """Continue the history of the state directory (which matches this database and replica)."""
        self.db_id = saved["db_id"]
        self.generation = saved["generation"]
        self.page_size = saved["page_size"]
        self.uploaded_hashes = self.state.load_hashes()
        self._uploaded_pos = WalPosition.from_json(saved["position"]) if saved["position"] else None
        self._uploaded_change = saved.get("change")
        self.stats.uploaded_txid = saved["uploaded_txid"]
        self.stats.uploaded_commit_us = saved["uploaded_ts_us"]
        self.uploader.sealed_through_us = self.spooled_through_us = saved["uploaded_ts_us"]
        # Replay what was read but not uploaded before the previous run ended.
        self._replay_spool()
        # Whatever happened while we were down, prove it or repair it before tailing again.  The
        # saved commit counter only proves continuity if the app kept the database open (the
        # wal-index survived); otherwise the counts disagree and we resync, never guess.
        self._reconcile(late=True)

    def _replay_spool(self) -> None:
        """Rebuild the in-memory state from what is durable: the uploaded point plus the spool.

        Used at start-up and when an append failed (spool full), so the tail continues exactly
        after the last record that is really on disk.
        """
        self.hashes = self.uploaded_hashes.copy()
        self.pos = self._uploaded_pos
        self.anchor = self._uploaded_change
        self.next_txid = self.stats.uploaded_txid + 1
        self.last_ts = self.stats.uploaded_commit_us
        self.state.seal()
        for path in self.state.sealed_files():
            for item in StateDir.read_file(path, self.page_size):
                if item.record.txid < self.next_txid:
                    continue
                if item.record.txid != self.next_txid:
                    raise DaemonError(
                        f"spool file {path}: expected txid {self.next_txid}, found {item.record.txid}; "
                        "the spool is inconsistent (refusing to ship a history with a hole)"
                    )
                self.hashes.apply(item.record.pages, item.record.db_pages)
                if self.hashes.checksum != item.record.db_checksum:
                    raise DaemonError(f"spool file {path}: checksum mismatch at txid {item.record.txid}")
                self.next_txid = item.record.txid + 1
                self.last_ts = item.record.commit_ts_us
                if item.position is not None:
                    self.pos = item.position
                if item.change is not None:
                    self.anchor = item.change
        self.state.remeasure()
        self.stats.backlog_bytes = self.state.pending
        self.stats.last_txid = self.next_txid - 1
        self.stats.last_commit_us = self.last_ts
        self.verified_pos = self.pos
        self.unverified = []

    def _spool(self, items: list[SpooledTxn], allow_over_limit: bool = False) -> None:
        # fsynced before the pin is released or handed over (ReadPin's before_release), before a
        # seal, and at least every FSYNC_SECONDS: see docs/DESIGN.md, "Grouped fsync".
        self.state.append(items, allow_over_limit, sync=False)
        self.stats.backlog_bytes = self.state.pending

    # ------------------------------------------------------------------ a full spool
    def _enter_overflow(self, exc: SpoolFull) -> None:
        """Stop reading; forget what was read but not durably spooled; say so loudly.

        Nothing is lost silently: SQLite's commit counter still vouches for every commit, so
        when there is room again ``_leave_overflow`` reconciles, and whatever the WAL no longer
        holds is shipped as a RESYNC (or, if provably complete, as LATE transactions).
        """
        self.pin.release()
        if self.overflow is None:
            self.stats.spool_full = True
            self.stats.spool_full_since_us = now_us()
            self.stats.spool_full_events += 1
            log.error(
                "SPOOL FULL: %s. Replication of new transactions is PAUSED (the application is not "
                "affected; the daemon stops reading its WAL). Nothing is lost silently: when there is "
                "room again the daemon compares the database with the replica and ships the difference "
                "as a flagged RESYNC/LATE transaction that restores report. Backlog: %d transactions "
                "not yet in %s. Free disk space, raise the spool limit, or make the replica reachable.",
                exc, self.stats.backlog_txns, self.storage.url,
            )
        self.overflow = exc
        self.stats.last_error = f"spool full: {exc}"
        with self.uploader.lock:  # the uploader must not move the uploaded point meanwhile
            self._replay_spool()
        self._overflow_check = time.monotonic()

    def _leave_overflow(self, force: bool = False) -> None:
        if not force and time.monotonic() - self._overflow_check < OVERFLOW_CHECK_SECONDS:
            return
        self._overflow_check = time.monotonic()
        if not self.state.has_room():
            return
        log.warning("spool has room again; reconciling with the live database")
        try:
            self._reconcile(late=True, allow_over_limit=True)
        except SpoolFull as exc:
            self._enter_overflow(exc)
            return
        log.warning("replication resumed after the spool was full since %s", format_us(self.stats.spool_full_since_us))
        self.overflow = None
        self.stats.spool_full = False

    # ------------------------------------------------------------------ reading
    def _emit(self, pages: dict[int, bytes], db_pages: int, ts: int, flags: int, position, change) -> SpooledTxn:
        ts = max(ts, self.last_ts)  # commit times never run backwards, even if the wall clock does
        checksum = self.hashes.apply(pages, db_pages)
        record = TxnRecord(self.next_txid, ts, db_pages, flags, checksum, pages)
        self.next_txid += 1
        self.last_ts = ts
        self.stats.transactions += 1
        self.stats.last_txid = record.txid
        self.stats.last_commit_us = ts
        return SpooledTxn(record, position, ts, change)

    def _reconcile(self, late: bool, allow_over_limit: bool = False) -> None:
        """Bring the replica's state to the live database's, proving continuity or marking a resync.

        Transactions still readable are kept as individual records only when SQLite's commit
        counter proves none is missing between them; otherwise their changes are folded into one
        RESYNC record, because a record built on top of a missing commit would describe a state
        the database never had.
        """
        def compare(snap, position, page_size, db_pages, pages):
            ts = now_us()
            kept = list(self.unverified)
            if self.pos is not None:
                for txn in self.wal.read(self.pos).transactions:
                    if (txn.end.salt1, txn.end.salt2) == (snap.salt1, snap.salt2) and txn.end.frame > snap.max_frame:
                        break
                    kept.append((txn, ts))
            if kept:
                last = kept[-1][0].end
                at_snapshot = (last.salt1, last.salt2, last.frame) == (snap.salt1, snap.salt2, snap.max_frame)
            else:
                at_snapshot = self.verified_pos is not None and self._matches(snap, self.verified_pos)
            proven = self.anchor is not None and at_snapshot and ((snap.change - self.anchor) & MASK) == len(kept)
            expected = self.hashes.copy()
            if proven:
                for txn, _ in kept:
                    expected.apply(txn.pages, txn.db_pages)
            diff = {pgno: data for pgno, data in pages() if expected.differs(pgno, data)}
            resize = db_pages != expected.db_pages
            return snap, position, db_pages, ts, kept, proven, diff, resize

        # The pin stays: it holds exactly the snapshot we are now positioned at.
        snap, position, db_pages, ts, kept, proven, diff, resize = self.snapshots.under_snapshot(compare)
        self.unverified = []
        items: list[SpooledTxn] = []
        if proven:
            flags = FLAG_LATE if late else 0
            for n, (txn, seen) in enumerate(kept):
                change = snap.change if n == len(kept) - 1 else None
                items.append(self._emit(txn.pages, txn.db_pages, ts if late else seen, flags, txn.end, change))
        elif kept:
            log.warning("%d transactions cannot be proven complete; folding them into a RESYNC", len(kept))
        if diff or resize or db_pages != self.hashes.db_pages:
            log.warning(
                "history gap detected: %d pages differ from the replica; shipping a RESYNC transaction", len(diff)
            )
            items.append(self._emit(diff, db_pages, ts, FLAG_RESYNC, position, snap.change))
            self.stats.resyncs += 1
        if items:
            items[-1].position = position
            items[-1].change = snap.change
        self.pos = self.verified_pos = position
        self._spool(items, allow_over_limit)
        self.anchor = snap.change

    @staticmethod
    def _matches(hdr: ShmHeader, pos: WalPosition) -> bool:
        return (hdr.salt1, hdr.salt2, hdr.max_frame) == (pos.salt1, pos.salt2, pos.frame)

    def read_pass(self) -> int:
        """One wake-up: read under a pin, or note that SQLite published nothing new.

        Unpinned, the wal-index decides: nothing past our position means nothing to read (and no
        pin: an idle daemon holds none, and the app's checkpoint after its next commit can then
        backfill everything, which is what lets the WAL reset).  Anything new: pin *first*, then
        read.  Reading unpinned left what the read had not reached yet unprotected for as long as
        the read took: a writer faster than our read could fill the WAL, checkpoint and restart it
        meanwhile, and the new generation overwrote the old one's unread tail.  (Letting go of a
        WAL we cannot keep up with reads unpinned on purpose, see engine/pinpolicy.py.)
        """
        if not self.pin.active and not self.pin_policy.letting_go:
            checked_us = now_us()
            hdr = self.shm.header()
            if hdr is not None and self.pin_policy.caught_up(hdr) and not self.unverified:
                if self.anchor is not None and hdr.change == self.anchor:
                    self.spooled_through_us = checked_us  # as tick() does when it finds nothing
                return 0
            self.pin.acquire(self.shm)
        return self.tick()

    def tick(self) -> int:
        """One read pass: read new commits, then spool those SQLite's commit counter vouches for.

        Returns how many transactions were read.
        """
        before = self.observe()
        published = (before.salts, before.max_frame) if before is not None else None
        result = self.wal.read(self.pos, max_bytes=READ_BATCH_BYTES, published=published)
        if result.generation == "new" and self.unverified and self.verified_pos is not None:
            # What we read past the last verified commit is gone from the WAL: SQLite never
            # published it (a writer died between writing its commit frame and updating the
            # wal-index) and the next writer reused those frames.  Forget it; read again.
            self.unverified = []
            self.pos = self.verified_pos
            result = self.wal.read(self.pos, max_bytes=READ_BATCH_BYTES, published=published)
        self.observe()  # commits published while we read get a stamp now, not after spooling
        ts = now_us()
        if result.transactions:
            self.last_commit_mono = time.monotonic()
        for txn in result.transactions:
            self.unverified.append((txn, self.observations.stamp(txn.end.salt1, txn.end.salt2, txn.end.frame, ts)))
            self.stats.wal_bytes += txn.frames * (24 + self.page_size)
        if result.position is not None and result.position.cksum is not None:
            if result.transactions or result.generation != "empty":
                self.pos = result.position
        checked_us = now_us()
        after = self.shm.header()
        # The header read *after* the WAL usually matches where we stopped; the one read before
        # always names a commit boundary we have read past (unless the WAL was reset meanwhile).
        if not self._verify(after) and not self._verify(before):
            self._verify_observed()
        if self.unverified and ts - self.unverified[0][1] > UNVERIFIED_MAX_US:
            log.warning("commits could not be accounted for in time; reconciling")
            self._reconcile(late=False)
        if not self.unverified and after is not None and self.anchor is not None and after.change == self.anchor:
            # SQLite had counted no commit we have not spooled when ``after`` was read: everything
            # committed before checked_us is in the spool (what heartbeats vouch for).
            self.spooled_through_us = checked_us
        return len(result.transactions)

    def _verify_observed(self) -> None:
        """Verify up to the last transaction read whose boundary an observation recorded.

        A read batch that stopped short of the wal-index's end (READ_BATCH_BYTES under a burst)
        matches neither header of its pass; without this, unverified transactions (with their
        pages) would pile up in memory until the writer paused.
        """
        for txn, _ in reversed(self.unverified):
            end = txn.end
            change = self.observations.change_at(end.salt1, end.salt2, end.frame)
            if change is not None:
                salts = end.salt1.to_bytes(4, "big") + end.salt2.to_bytes(4, "big")
                self._verify(ShmHeader(change, end.frame, 0, salts, 0, (), end.page_size))
                return

    def observe(self) -> ShmHeader | None:
        """Read the wal-index header and remember when each commit boundary was first seen.

        The time is taken *after* the header is read, so every commit the header shows had
        happened by then: a stamp never precedes its commit.
        """
        hdr = self.shm.header()
        if hdr is not None:
            self.observations.add(hdr.salts, hdr.max_frame, now_us(), hdr.change)
        return hdr

    def _verify(self, hdr: ShmHeader | None) -> bool:
        """Spool the read transactions up to ``hdr``'s commit boundary if the counts agree.

        SQLite increments the wal-index ``iChange`` once per commit.  If it advanced by exactly
        the number of commits we read up to that boundary, nothing was missed; otherwise history
        was lost and we reconcile.  Returns False when ``hdr`` is no boundary we know.
        """
        if hdr is None or self.anchor is None:
            return False
        if self.verified_pos is not None and self._matches(hdr, self.verified_pos):
            count = 0
        else:
            count = next((n + 1 for n, (txn, _) in enumerate(self.unverified) if self._matches(hdr, txn.end)), None)
            if count is None:
                return False
        advanced = (hdr.change - self.anchor) & MASK
        if advanced != count:
            log.warning("SQLite counted %d commits but %d were read: history was lost; reconciling", advanced, count)
            self._reconcile(late=False)
            return True
        if count:
            batch, self.unverified = self.unverified[:count], self.unverified[count:]
            items = [
                self._emit(txn.pages, txn.db_pages, seen, 0, txn.end, hdr.change if n == count - 1 else None)
                for n, (txn, seen) in enumerate(batch)
            ]
            self._spool(items)
            self.observe()
            self.verified_pos = batch[-1][0].end
        self.anchor = hdr.change
        return True

    # ------------------------------------------------------------------ uploading (engine/uploader.py)
    def upload_pending(self, final: bool = False) -> int:
        return self.uploader.upload_pending(final)

    def write_heartbeat(self) -> None:
        self.uploader.write_heartbeat()

    def backlog(self) -> dict:
        return self.uploader.backlog()

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Replicate until stop() (or SIGTERM/SIGINT via install_signal_handlers)."""
        sys.setswitchinterval(0.0005)  # the tail loop must get the GIL within a fraction of a ms
        try:
            self._open()
        except BaseException:
            self._close_waker()
            raise
        try:
            saved = self._load_matching_state()
            try:
                found = self._acquire(saved)
            except LeaseError as exc:
                raise DaemonError(str(exc)) from exc
            if saved is not None and saved["generation"] not in found.generations_with_snapshot:
                log.warning(
                    "generation %s of the saved state has no snapshot in %s (replica emptied or pruned?); "
                    "starting a new generation", saved["generation"], self.storage.url,
                )
                saved = None
            if saved is not None:
                try:
                    self._resume(saved)
                except SpoolFull as exc:
                    self._enter_overflow(exc)
            else:
                try:
                    self._start_generation(found)
                except LeaseError as exc:
                    raise DaemonError(str(exc)) from exc
            self.uploader.last_beat_mono = time.monotonic()
            inotify = self._waker.watch(self.db_path)
            if not inotify:
                log.warning("inotify is not available; falling back to polling every %.0f ms", IDLE_POLL * 1000)
            self.observer = Observer(self.shm, self._waker, self.stats, lambda: self.pin.active, self._probe_interval,
                                     IDLE_POLL, inotify, self.observations)
            observer = threading.Thread(target=self.observer.run, args=(self._stop,), name="walrewind-observer",
                                        daemon=True)
            observer.start()
            uploader = threading.Thread(target=self.uploader.run, name="walrewind-uploader", daemon=True)
            uploader.start()
            housekeeper = self._start_maintenance()
            if self.pending_snapshot is None:
                self.ready.set()  # else: once the uploader has shipped the base snapshot
            try:
                self._tail_loop()
            finally:
                self._stop.set()
                self._waker.wake()
                observer.join()
            # Final sync: everything committed up to now is read, spooled and uploaded.
            if self.fatal is None:
                try:
                    if self.overflow is not None:
                        self._leave_overflow(force=True)
                    if self.overflow is None:
                        self._final_read()
                except SpoolFull as exc:
                    self._enter_overflow(exc)
            self.pin.release()
            uploader.join()
            if housekeeper is not None:
                housekeeper.join(MAINTENANCE_JOIN_SECONDS)
                if housekeeper.is_alive():
                    log.warning("a maintenance task is still running; it is abandoned (its objects are create-only)")
            if self.fatal is not None:
                raise DaemonError(str(self.fatal)) from self.fatal
            try:
                self.upload_pending(final=True)
                self.write_heartbeat()
                self.uploader.upload_ok()
            except (LeaseError, DaemonError) as exc:
                raise DaemonError(str(exc)) from exc
            except Exception as exc:
                raise DaemonError(
                    f"final upload to {self.storage.url} failed ({exc}); {self.stats.backlog_txns} transactions "
                    f"stay in the spool {self.state.spool_dir} and are uploaded when the daemon starts again"
                ) from exc
            if self.overflow is not None:
                raise DaemonError(
                    f"stopped while the spool was full ({self.overflow}); the next start reconciles "
                    "with the database and ships any gap as a visible RESYNC"
                )
            self.lease.release()
        finally:
            self._stop.set()  # if the tail loop failed, the uploader must not go on alone
            self._close_waker()
            self._close()

    def _tail_loop(self) -> None:
        """The read stage: read what the observer saw, in batches, and apply the pin policy.

        Pinned, commits the observer reports are read at most every READ_DEFER_SECONDS (the pin
        keeps their frames; one read pass, one hand-over and one fsync then serve several
        commits; their stamps were taken by the observer as they happened).  A checkpointer
        waiting for our read transaction interrupts at once.  Unpinned, anything new is pinned
        first and read at once.  With nothing reported the loop still runs the pin policy
        every HOUSEKEEPING_SECONDS pinned (idle release) or IDLE_POLL unpinned.
        """
        ob = self.observer
        last_read = 0.0
        while not self._stop.is_set():
            if self.overflow is not None:
                self._stop.wait(IDLE_POLL)
                self._leave_overflow()
                continue
            with ob.cond:
                urgent, ob.checkpointer = ob.checkpointer, False
                pending = ob.new_commits
            pinned = self.pin.active
            now = time.monotonic()
            due = last_read + (READ_DEFER_SECONDS if pinned else 0.0)
            try:
                if urgent and pinned:
                    self.pin_policy.yield_to_checkpointer()
                    last_read = time.monotonic()
                    continue
                if (pending and now >= due) or now - last_read >= (HOUSEKEEPING_SECONDS if pinned else IDLE_POLL):
                    with ob.cond:
                        ob.new_commits = False
                    last_read = now
                    read_now = self.read_pass()
                    self.pin_policy.after_read(read_now)
                    if time.monotonic() - self._last_flush >= FSYNC_SECONDS:
                        self.state.flush()
                        self._last_flush = time.monotonic()
                    continue
            except SpoolFull as exc:
                self._enter_overflow(exc)
                continue
            with ob.cond:
                if ob.checkpointer or self._stop.is_set():
                    continue
                if ob.new_commits:  # deferring: only a checkpointer (or stop) wakes us early
                    ob.reader_waiting_for_commits = False
                    timeout = due - time.monotonic()
                else:
                    ob.reader_waiting_for_commits = True
                    timeout = (HOUSEKEEPING_SECONDS if pinned else IDLE_POLL) - (time.monotonic() - last_read)
                ob.cond.wait(max(0.0, timeout))

    def _probe_interval(self) -> float:
        """How long a pinned, quiet loop sleeps before probing the lock bytes again.

        Every wake-up costs CPU, and only applications that run blocking checkpoints (RESTART,
        TRUNCATE: sqld, or an app calling wal_checkpoint itself) ever wait for our pin.  So the
        probe is fast (PROBE_INTERVAL) for a while after we last yielded to one, and relaxed
        (PROBE_INTERVAL_RELAXED) otherwise: the first blocking checkpoint of an application then
        waits at most that long, and every later one at most PROBE_INTERVAL.
        """
        if self.stats.yields and time.monotonic() - self.pin_policy.last_yield_mono < FAST_PROBE_SECONDS:
            return PROBE_INTERVAL
        return PROBE_INTERVAL_RELAXED

    def _final_read(self) -> None:
        """Read until caught up: a daemon that was behind has more than one read batch to go.

        Bounded by FINAL_SYNC_SECONDS, for a writer that keeps committing faster than we read;
        what is left then is read (or reconciled) by the next start.
        """
        start = time.monotonic()
        deadline = start + FINAL_SYNC_SECONDS
        while self.read_pass() and time.monotonic() < deadline:
            pass
        hdr = self.shm.header()
        if hdr is not None and not self.pin_policy.caught_up(hdr):
            behind = "an unknown number of"
            if self.anchor is not None:
                behind = str(max(0, ((hdr.change - self.anchor) & MASK) - len(self.unverified)))
            log.warning("stopping %.1f s into the final sync with %s commits that SQLite counted not read yet; "
                        "the next start continues from where this one stopped", time.monotonic() - start, behind)

    def _start_maintenance(self) -> threading.Thread | None:
        if self.maintenance is None:
            return None
        if self.maintenance.workdir is None:
            # Snapshot builds and drills restore a whole database: the state directory is on the
            # daemon's own disk, while the system temp directory may be a small tmpfs.
            self.maintenance.workdir = self.state.path
        from ..maintenance.scheduler import STATUS_FILE

        path = os.path.join(self.state.path, STATUS_FILE)

        def save(status: dict) -> None:
            atomic_write(path, json.dumps(status, indent=1, sort_keys=True).encode())

        thread = threading.Thread(
            target=self.maintenance.run_forever, args=(self._stop,), kwargs={"on_status": save},
            name="walrewind-maintenance", daemon=True,
        )
        thread.start()
        return thread

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            log.info("signal %d: final sync and exit", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
