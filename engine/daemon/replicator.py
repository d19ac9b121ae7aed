"""The replication daemon for one database: a pipeline that never loses or invents a commit.

    observe (observer.py, own thread) -> read (reader.py, this thread, pin policy: pinpolicy.py)
      -> spool (spool.py, fsynced in groups) -> upload (uploader.py, own thread) -> replica

Each stage hands work forward and never calls back; they share one ReplicationState (state.py)
owned here.  This module wires them: start-up (lock, lease, identity, a new generation's base
snapshot or the resume of a saved one), the read loop, a full spool, the final sync and stop.
docs/DESIGN.md gives the protocol and why each rule exists (pin before reading, hand over only
while the old read mark holds, commit-counter accounting, RESYNC only when history was lost,
yield to checkpointers within milliseconds).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
from typing import TYPE_CHECKING

from .. import defaults
from ..errors import DaemonError, LeaseError
from ..fsutil import atomic_write
from ..replica import layout
from ..replica.lease import LEASE_SECONDS, Lease, ReplicaScan, scan
from ..sqlite.capture import SnapshotReader
from ..sqlite.fds import close_shared, open_shared
from ..sqlite.pin import ReadPin, open_readonly
from ..sqlite.shm import ShmHeader, ShmObserver
from ..sqlite.walfile import WalFile, WalPosition
from ..storage import Storage
from .basesnapshot import write_base_snapshot
from .identity import decide_db_id
from .observer import Observations, Observer
from .overflow import enter_overflow, leave_overflow
from .pinpolicy import MAX_WAL_BYTES, PinPolicy
from .reader import Reader
from .spool import (
    DEFAULT_MIN_FREE,
    DEFAULT_SPOOL_LIMIT,
    SpoolFull,
    StateDir,
)
from .state import ReplicationState, load_matching, resume_from, save_uploaded
from .stats import ReplicatorStats, ShipperStats  # noqa: F401 (ShipperStats: the old name)
from .uploader import Uploader
from .waker import Waker

if TYPE_CHECKING:  # the daemon runs maintenance only when given one: imported lazily
    from ..maintenance.scheduler import Maintenance

log = logging.getLogger("walrewind.shipper")

MASK = 0xFFFFFFFF
IDLE_POLL = 0.25  # fallback when inotify is quiet
# While pinned, read what was observed at most this often (or half the upload interval), unless the
# observer reports a backlog (observer.BACKLOG_FRAMES): every pass costs a hand-over, header reads
# and an fsync, and the pin keeps the frames, stamped by the observer.  DESIGN.md section 2.
READ_DEFER_SECONDS = 0.25
HOUSEKEEPING_SECONDS = 0.25  # while pinned and quiet, re-check the pin policy this often
FSYNC_SECONDS = 0.25  # spool records are fsynced at least this often (and before any unpin)
HEARTBEAT_SECONDS = 60.0
FINAL_SYNC_SECONDS = 30.0  # at stop, how long to keep reading a WAL we are behind on
MAINTENANCE_JOIN_SECONDS = 30.0  # at stop, how long a running snapshot/prune/drill may finish


def _through(owner: str, name: str) -> property:
    """A read-only attribute of one of the daemon's parts, seen on the daemon."""
    return property(lambda self: getattr(getattr(self, owner), name), doc=f"{owner}.{name}")


class Replicator:
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
        self.state = StateDir(state_dir or defaults.state_dir_for(self.db_path), spool_limit_bytes, spool_min_free_bytes)
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
        self.stats = ReplicatorStats()
        self._stop = threading.Event()
        self._waker = Waker()
        self._waker_lock = threading.Lock()  # stop() may come from any thread, even after run() ended
        self._waker_closed = False
        self.rs = ReplicationState()  # where the history stands: one object, passed to the stages
        self.reader: Reader | None = None  # the read stage, once the database is open
        self.observations = Observations()  # when each commit boundary was first seen
        self.observer: Observer | None = None  # the observe stage's thread, while running
        self.ready = threading.Event()
        self.fatal: BaseException | None = None  # set by the uploader: stop, do not upload more
        self.overflow: SpoolFull | None = None  # the spool is full: not reading until there is room
        self._last_flush = time.monotonic()
        self._overflow_check = 0.0
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
        self.reader = Reader(self.rs, self.state, self.stats, self.pin, self.shm, self.wal, self.snapshots,
                             self.observations, lambda: self.pin_policy.letting_go)

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
    def _acquire(self, saved: dict | None) -> ReplicaScan:
        """Start-up: one LIST of lease/ and of generations/, the identity check, then the lease."""
        found = scan(self.storage)
        self.lease.check_free(found, self.takeover)
        self.rs.db_id = self._identity(saved, found)
        self.lease.acquire(found, self.rs.db_id)
        self.stats.lease_epoch = self.lease.epoch or 0
        return found

    def _identity(self, saved: dict | None, found: ReplicaScan) -> str:
        return decide_db_id(self.storage, self.state.path, self.db_path, self.lease.host, saved, found, self.takeover)

    def ensure_lease(self) -> None:
        """Before every upload: still ours?  (No request unless it had to be re-acquired.)"""
        if self.lease.ensure():
            self.stats.lease_epoch = self.lease.epoch or 0

    # ------------------------------------------------------------------ generations
    def _start_generation(self, found: ReplicaScan) -> None:
        """Begin a new history with a base snapshot (first run, or local state lost)."""
        self.state.reset()
        base_txid = found.max_txid + 1
        state_db_id = self.rs.db_id
        tmp = os.path.join(self.state.path, "snapshot.tmp")

        base = write_base_snapshot(self.snapshots, tmp, state_db_id, base_txid)
        snap, position, page_size, db_pages = base.snap, base.position, base.page_size, base.db_pages
        ts, generation, hashes, writer, header = base.ts, base.generation, base.hashes, base.writer, base.header
        # The pin stays: its read transaction holds the WAL at exactly the snapshot's point, so
        # every commit after it is still in the WAL when the tail reads on from there, however
        # long the snapshot takes to upload.  (Releasing it here let the app's checkpoints
        # overwrite commits not yet read while a big snapshot uploaded: a RESYNC at every start
        # on a busy database.)  The uploader ships the snapshot before any segment.
        self.ensure_lease()  # a big snapshot can take longer than the lease
        header["lease_epoch"] = self.lease.epoch
        writer.finish(header)
        self.pending_snapshot = (layout.SnapshotKey(generation, base_txid, ts).key, tmp)
        rs = self.rs
        rs.generation, rs.page_size = generation, page_size
        rs.pos = rs.verified_pos = position
        rs.hashes, rs.uploaded_hashes = hashes, hashes.copy()
        rs.next_txid, rs.anchor, rs.last_ts = base_txid + 1, snap.change, ts
        self.reader.unverified = []
        self.save_state(base_txid, ts, position, snap.change)
        self.stats.last_txid = self.stats.uploaded_txid = base_txid
        self.stats.last_commit_us = self.stats.uploaded_commit_us = ts
        self.uploader.sealed_through_us = self.reader.spooled_through_us = ts
        log.info("new generation %s: snapshot of %d pages at txid %d", generation, db_pages, base_txid)

    def save_state(self, txid: int, ts: int, position: WalPosition | None, change: int | None,
                   changes=None, first_txid: int | None = None) -> None:
        save_uploaded(self.state, self.rs, self.db_path, self.storage.url, txid, ts, position, change, changes,
                      first_txid)

    def _resume(self, saved: dict) -> None:
        """Continue the history of the state directory (which matches this database and replica)."""
        resume_from(self.rs, saved, self.state)
        self.stats.uploaded_txid = saved["uploaded_txid"]
        self.stats.uploaded_commit_us = saved["uploaded_ts_us"]
        self.uploader.sealed_through_us = self.reader.spooled_through_us = saved["uploaded_ts_us"]
        # Replay what was read but not uploaded before the previous run ended.
        self.reader.replay_spool()
        # Whatever happened while we were down, prove it or repair it before tailing again.  The
        # saved commit counter only proves continuity if the app kept the database open (the
        # wal-index survived); otherwise the counts disagree and we resync, never guess.
        self.reader.reconcile(late=True)

    # ------------------------------------------------------------------ a full spool
    def _enter_overflow(self, exc: SpoolFull) -> None:
        enter_overflow(self, exc)

    def _leave_overflow(self, force: bool = False) -> None:
        leave_overflow(self, force)

    # ------------------------------------------------------------------ the stages' view of the state
    # The pin policy and the uploader are given this object as their host (see PinHost and
    # UploadHost); these read through to the replication state and the read stage.
    pos = _through("rs", "pos")
    anchor = _through("rs", "anchor")
    generation = _through("rs", "generation")
    db_id = _through("rs", "db_id")
    page_size = _through("rs", "page_size")
    uploaded_hashes = _through("rs", "uploaded_hashes")
    unverified = _through("reader", "unverified")
    spooled_through_us = _through("reader", "spooled_through_us")
    last_commit_mono = _through("reader", "last_commit_mono")

    def caught_up(self, hdr: ShmHeader) -> bool:
        return self.reader.caught_up(hdr)

    def tick(self) -> int:
        return self.reader.tick()

    def read_pass(self) -> int:
        return self.reader.read_pass()

    def observe(self) -> ShmHeader | None:
        return self.reader.observe()

    def hold_off(self) -> None:
        self.reader.hold_off()

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
            saved = load_matching(self.state, self.db_path, self.storage.url)
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
            self.observer = Observer(self.shm, self._waker, self.stats, lambda: self.pin.active, self.pin_policy.probe_interval,
                                     IDLE_POLL, inotify, self.observations)
            if self.pin_policy.checkpoint_frames:  # daemon checkpoints run after read passes: read sooner
                self.observer.backlog_frames = min(self.observer.backlog_frames, self.pin_policy.checkpoint_frames)
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
                pending, backlog = ob.new_commits, ob.backlog
            pinned = self.pin.active
            now = time.monotonic()
            due = last_read + (min(READ_DEFER_SECONDS, self.upload_interval / 2) if pinned else 0.0)
            try:
                if urgent and pinned:
                    self.pin_policy.yield_to_checkpointer()
                    last_read = time.monotonic()
                    continue
                if (pending and (now >= due or backlog)) or now - last_read >= (HOUSEKEEPING_SECONDS if pinned else IDLE_POLL):
                    with ob.cond:
                        ob.new_commits = ob.backlog = False
                    last_read = now
                    read_now = self.read_pass()
                    self.pin_policy.after_read(read_now)
                    pos = self.rs.pos
                    ob.read_upto = (pos.salt1, pos.salt2, pos.frame) if pos is not None else None
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
                if ob.new_commits:  # deferring: only a checkpointer, a backlog (or stop) wakes us early
                    ob.reader_waiting_for_commits = False
                    timeout = due - time.monotonic()
                else:
                    ob.reader_waiting_for_commits = True
                    timeout = (HOUSEKEEPING_SECONDS if pinned else IDLE_POLL) - (time.monotonic() - last_read)
                ob.cond.wait(max(0.0, timeout))

    def _final_read(self) -> None:
        """Read until caught up: a daemon that was behind has more than one read batch to go.

        Bounded by FINAL_SYNC_SECONDS, for a writer that keeps committing faster than we read;
        what is left then is read (or reconciled) by the next start.
        """
        start = time.monotonic()
        deadline = start + FINAL_SYNC_SECONDS
        self.reader.end_hold_off()
        while self.read_pass() and time.monotonic() < deadline:
            pass
        hdr = self.shm.header()
        if hdr is not None and not self.pin_policy.caught_up(hdr):
            behind = "an unknown number of"
            if self.rs.anchor is not None:
                behind = str(max(0, ((hdr.change - self.rs.anchor) & MASK) - len(self.reader.unverified)))
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


Shipper = Replicator  # the old name (the CLI and tests construct it), until the lead's merge
