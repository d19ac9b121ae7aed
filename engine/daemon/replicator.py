"""The replication daemon for one database: a pipeline that never loses or invents a commit.

    observe (observer.py, own thread) -> read (reader.py, this thread, pin policy: pinpolicy.py)
      -> spool (spool.py, fsynced in groups) -> upload (uploader.py, own thread or a shared pool) -> replica

Each stage hands work forward and never calls back; they share one ReplicationState (state.py)
owned here.  This module wires them: start-up (lock, lease, identity, a new generation's base
snapshot or the resume of a saved one), the read loop, a full spool, the final sync and stop.
docs/DESIGN.md gives the protocol and why each rule exists (pin before reading, commit-counter
accounting, RESYNC only when history was lost, yield to checkpointers within milliseconds).
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import time
import zlib
from typing import TYPE_CHECKING, Callable

from .. import defaults, logs
from ..errors import DaemonError, LeaseError, StoreUnreachable
from ..fsutil import atomic_write
from ..replica.lease import LEASE_SECONDS, Lease
from ..sqlite.capture import PinnedReader
from ..sqlite.fds import close_shared, open_shared
from ..sqlite.pin import ReadPin, open_readonly
from ..sqlite.shm import ShmHeader, ShmObserver
from ..sqlite.walfile import WalFile, WalPosition
from ..storage import Storage
from .hubobserver import HubObserving
from .inotifyhub import HubWaker
from .lag import LagProbe
from .maintenancepool import MaintenancePool, PooledMaintenance
from .observations import Observations
from .observer import MANY_SAFETY_SECONDS, Observer
from .overflow import enter_overflow, leave_overflow
from .pinpolicy import MAX_WAL_BYTES, QUICK_RELEASE_GAP_SECONDS, PinPolicy
from .prober import CheckpointProber
from .reader import Reader
from .spool import DEFAULT_MIN_FREE, DEFAULT_SPOOL_LIMIT, SpoolFull, StateDir
from .startup import Startup
from .state import ReplicationState, load_matching, save_uploaded
from .stats import ReplicatorStats
from .tailloop import (  # noqa: F401  (the loop's timings, importable from here as before)
    BURST_UPLOAD_BYTES,
    FINAL_SYNC_SECONDS,
    HOUSEKEEPING_SECONDS,
    IDLE_POLL,
    IDLE_WAIT_INOTIFY,
    READ_DEFER_SECONDS,
    final_read,
    read_beside,
    tail_loop,
)
from .uploader import Uploader
from .uploadloop import Pooled, UploadPool
from .vouch import refresh_tail
from .waker import Waker

if TYPE_CHECKING:  # the daemon runs maintenance only when given one: imported lazily
    from ..maintenance.scheduler import Maintenance

log = logging.getLogger("walrewind.shipper")

HEARTBEAT_SECONDS = defaults.HEARTBEAT_SECONDS
MAINTENANCE_JOIN_SECONDS = 30.0  # at stop, how long a running snapshot/prune/drill may finish
SHORT_GIL_SWITCH = 0.0005  # a few databases: the stages get the GIL within a fraction of a ms


def _through(owner: str, name: str) -> property:
    """A read-only attribute of one of the daemon's parts, seen on the daemon."""
    return property(lambda self: getattr(getattr(self, owner), name), doc=f"{owner}.{name}")


class Replicator:
    gil_switch_interval: float | None = SHORT_GIL_SWITCH  # None: leave it (fleet.prepare_process)
    # A process serving many databases (fleet.prepare_process): their wake-ups share one inotify
    # instance and dispatcher thread (inotifyhub.py), their timers are spread by a phase of their own.
    many_databases = False

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
        name: str | None = None,
        encryption_check: Callable[[], str | None] | None = None,
        new_generation_reason: str | None = None,
    ) -> None:
        self.db_path = os.path.abspath(db_path)
        self.name = name or os.path.basename(self.db_path)  # what log lines and metrics call it
        self.many = Replicator.many_databases
        # Where in their periods this database's timers fall (safety looks, heartbeats), in [0, 1):
        # spread by path, so the databases of a fleet started together do not all wake at once.
        self.phase_fraction = zlib.crc32(self.db_path.encode()) / 2**32
        # Checks the replica's encryption marker before anything is written (engine/storage/marker.py);
        # a message means: never append to the newest history, start a new generation (Startup).
        self.encryption_check = encryption_check
        self.new_generation_reason = new_generation_reason  # never continue the saved history: why
        self.storage = storage
        self.state = StateDir(state_dir or defaults.state_dir_for(self.db_path), spool_limit_bytes, spool_min_free_bytes)
        self.upload_interval = upload_interval
        self.heartbeat_interval = heartbeat_interval
        # Fencing (engine/replica/lease.py): ``takeover`` takes the lease from a daemon that still looks
        # alive (or adopts a replica written for this database from another path/host).
        self.takeover = takeover
        if heartbeat_interval * 2 > lease_seconds * 0.75:
            raise DaemonError(
                f"lease of {lease_seconds}s is too short for heartbeats every {heartbeat_interval}s "
                "(it must survive at least one missed heartbeat)"
            )
        self.lease = Lease(storage, self.state.path, self.db_path, lease_seconds)
        self.pin_policy = PinPolicy(self, checkpoint_frames, max_wal_bytes)
        if self.many:  # a slow writer's pin is released at once: not probed 50 times a second (§15)
            self.pin_policy.quick_release_gap = QUICK_RELEASE_GAP_SECONDS
        # Snapshots, retention, compaction, drills (engine/maintenance/scheduler.py) on their own thread once
        # the daemon is up; its status is saved as maintenance.json in the state directory.
        self.maintenance = maintenance
        self.stats = ReplicatorStats()
        self._stop = threading.Event()
        self._waker: Waker | HubWaker = HubWaker() if self.many else Waker()
        self._waker_lock = threading.Lock()  # stop() may come from any thread, even after run() ended
        self._waker_closed = False
        self.rs = ReplicationState()  # where the history stands: one object, passed to the stages
        self.reader: Reader | None = None  # the read stage, once the database is open
        self.observations = Observations()  # when each commit boundary was first seen
        self.observer: Observer | None = None  # the observe stage's thread, while running
        self._prober: CheckpointProber | None = None  # many databases: the shared one probes our lock bytes
        self.ready = threading.Event()  # the replica holds our base and we hold its lease
        self.capturing = threading.Event()  # tailing: every commit from now on reaches the spool
        self.pending_snapshot_ts = 0  # the moment of the newest base snapshot this daemon took
        self._lag = LagProbe(self)
        self.startup: Startup | None = None  # from run(): lease, identity, generation (with or without the store)
        self._reader_ident: int | None = None
        self._jobs: list = []  # work the uploader hands to the reading thread (startup.py)
        # Held by the reading thread while it is not waiting; taken (never waited for) by the
        # dispatcher's read of a slow writer's commit (tailloop.read_beside), whose failure is
        # kept here for the reading thread to raise.
        self.reading = threading.Lock()
        self.beside_error: BaseException | None = None
        self._burst = False  # a burst was being uploaded in short pieces (engine/daemon/tailloop.py)
        self._housekeeper: threading.Thread | PooledMaintenance | None = None
        self.fatal: BaseException | None = None  # set by the uploader: stop, do not upload more
        self.overflow: SpoolFull | None = None  # the spool is full: not reading until there is room
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
        self.pin = ReadPin(self.db_path)
        self.shm = ShmObserver(self.db_path + "-shm")
        self.db_fd = open_shared(self.db_path)
        self.wal, self.peek_wal = WalFile(self.db_path + "-wal"), WalFile(self.db_path + "-wal")  # (observer's own)
        self.pinned_reader = PinnedReader(self.pin, self.shm, self.wal, self.db_fd, self.stats)
        self.reader = Reader(self.rs, self.state, self.stats, self.pin, self.shm, self.wal, self.pinned_reader,
                             self.observations, lambda: self.pin_policy.letting_go, on_spooled=self.uploader.kick.set,
                             reads_unpinned=lambda: self.pin_policy.reads_unpinned)

    def _close(self) -> None:
        if self._prober is not None and self.observer is not None:
            self._prober.unwatch(self.observer, wait=True)  # no probe of descriptors about to close
        self.pin_policy.close()
        self.pin.close()
        for descriptor in (self.wal, self.peek_wal, self.shm):
            descriptor.close()
        close_shared(self.db_fd)
        self.state.unlock()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def stop(self) -> None:
        self._stop.set()
        self.uploader.soon.set()
        self.uploader.kick.set()
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

    # ------------------------------------------------------------------ start-up (engine/daemon/startup.py)
    def ensure_lease(self) -> None:
        """Before every upload: still ours?  (No request unless it had to be re-acquired.)"""
        if self.lease.ensure():
            self.stats.lease_epoch = self.lease.epoch or 0

    def save_state(self, txid: int, ts: int, position: WalPosition | None, change: int | None,
                   changes=None, first_txid: int | None = None) -> None:
        save_uploaded(self.state, self.rs, self.db_path, self.storage.url, txid, ts, position, change, changes,
                      first_txid)

    @property
    def startup_done(self) -> bool:
        """Lease, identity and generation settled with the replica: uploads may go."""
        return self.startup is None or self.startup.done

    def complete_startup(self) -> bool:
        return self.startup is None or self.startup.complete()

    def started(self) -> None:
        """The replica answered and the lease is ours: maintenance may touch it; ready once the
        base snapshot (if any) is in it."""
        if self._housekeeper is None and not self._stop.is_set():
            self._housekeeper = self._start_maintenance()
        if self.pending_snapshot is None:
            self.ready.set()

    def in_reader(self, job) -> bool:
        """Run ``job`` on the reading thread between two read passes (it owns the pin and the spool's
        appends); from another thread, wait for it.  False when the daemon stopped first."""
        if threading.get_ident() == self._reader_ident:
            job()
            return True
        done = threading.Event()
        self._jobs.append((job, done))
        observer = self.observer
        if observer is not None:
            with observer.cond:
                observer.cond.notify_all()
        while not done.wait(0.05):
            if self._stop.is_set():
                return False
        return True

    def refresh_tail(self) -> int:
        """Before a heartbeat (the uploader's thread): in a many-database process a quiet reader
        sleeps 2-4 minutes, and a heartbeat vouches only for what was checked.  Returns a time the
        next seal may vouch for beyond the reader's own, or 0 (vouch.py: a look from this thread,
        else a read pass on the reading thread)."""
        return refresh_tail(self)

    def _share_prober(self, observer: Observer) -> None:
        """Let the process's one prober thread probe our lock bytes while pinned (prober.py): the
        observer then sleeps until the -wal changes, instead of waking every 5-20 ms to probe."""
        prober = self._prober = CheckpointProber.shared()
        observer.self_probe = False
        # Watched quietly: the read loop nudges the prober only when it sleeps with the pin held
        # (tailloop.py); a pin taken and released within one read pass costs the prober nothing.
        self.pin.on_change = lambda pinned: prober.watch(observer, wake=False) if pinned else prober.unwatch(observer)
        if self.pin.active:
            prober.watch(observer)

    def _run_jobs(self) -> None:
        while self._jobs:
            job, done = self._jobs.pop(0)
            job()
            done.set()

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
    commit_gap = _through("reader", "commit_gap")

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

    # ------------------------------------------------------------------ uploading (engine/daemon/uploader.py)
    def upload_pending(self, final: bool = False) -> int:
        return self.uploader.upload_pending(final)

    def write_heartbeat(self) -> None:
        self.uploader.write_heartbeat()

    def backlog(self) -> dict:
        return self.uploader.backlog()

    # ------------------------------------------------------------------ how it is doing (metrics, status)
    def lag_seconds(self, now_us: int | None = None) -> float | None:
        """Age of the oldest commit not yet durable in the replica; 0 when caught up, None before
        the tail runs (engine/daemon/lag.py says where each part comes from).  Any thread."""
        return self._lag.seconds(now_us)

    @property
    def phase(self) -> str:
        """starting | spooling | behind | fenced | replicating (engine/daemon/lag.py)."""
        return self._lag.phase()

    def phase_with(self, lag: float | None) -> str:
        """``phase`` given ``lag_seconds()`` just taken (a health sample: the lag is not computed twice)."""
        return self._lag.phase(lag)

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        """Replicate until stop() (or SIGTERM/SIGINT via install_signal_handlers)."""
        logs.bind(self.name)  # this thread reads; its log lines name the database
        if Replicator.gil_switch_interval is not None:  # the tail loop must get the GIL within a fraction of a ms
            sys.setswitchinterval(Replicator.gil_switch_interval)
        try:
            self._open()
        except BaseException:
            self._close_waker()
            raise
        observer = None
        try:
            self._reader_ident = threading.get_ident()
            inotify = self._waker.watch(self.db_path)
            if not inotify:
                log.warning("inotify is not available; falling back to polling every %.0f ms", IDLE_POLL * 1000)
            safety = MANY_SAFETY_SECONDS * (1.0 + self.phase_fraction) if self.many else IDLE_WAIT_INOTIFY
            self.observer = Observer(self.shm, self._waker, self.stats, lambda: self.pin.active, self.pin_policy.probe_interval,
                                     IDLE_POLL, inotify, self.observations, safety_poll=safety,
                                     peek=self.peek_wal.peek_commit)
            if self.many and inotify:
                self._share_prober(self.observer)
            if self.pin_policy.checkpoint_frames:  # daemon checkpoints run after read passes: read sooner
                self.observer.backlog_frames = min(self.observer.backlog_frames, self.pin_policy.checkpoint_frames)
            observer = self._observe()
            # Observing starts before the base snapshot: the commits made while a big database is
            # captured (seconds) are read after it, and keep the times they were first seen.
            observer.start()
            self.startup = Startup(self, load_matching(self.state, self.db_path, self.storage.url))
            self.startup.begin()  # with the replica: as always; without it: capture now, check later
            # Many databases: each heartbeats at a phase of its own (they all start together).
            self.uploader.last_beat_mono = time.monotonic() - self.heartbeat_interval * self.phase_fraction * self.many
            uploader: threading.Thread | Pooled
            if self.many:  # a few shared threads run every database's upload steps (uploadloop.py)
                uploader = UploadPool.shared().add(self.uploader, self.name)
            else:
                uploader = threading.Thread(target=logs.bound_to(self.name, self.uploader.run), name="walrewind-uploader",
                                            daemon=True)
                uploader.start()
            if self.startup.done:
                self.started()  # ready now, or once the uploader has shipped the base snapshot
            self.capturing.set()
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
            self.state.flush()  # at stop the spool is made durable here, whatever the upload does
            self.pin.release()
            uploader.join()
            if self._housekeeper is not None:
                self._housekeeper.join(MAINTENANCE_JOIN_SECONDS)
                if self._housekeeper.is_alive():
                    log.warning("a maintenance task is still running; it is abandoned (its objects are create-only)")
            if self.fatal is not None:
                raise DaemonError(str(self.fatal)) from self.fatal
            try:
                if not self.startup.done:
                    try:
                        self.startup.complete()
                    except StoreUnreachable as exc:
                        raise self.startup.stopped_unreachable(exc) from exc
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
            if isinstance(self._housekeeper, PooledMaintenance):
                self._housekeeper.join(0)  # a failed start: leave the shared pool (a thread just ends)
            if observer is not None and observer.is_alive():  # the start-up failed: it was looking
                self._waker.wake()
                observer.join()
            self._close_waker()
            self._close()

    def _observe(self) -> threading.Thread | HubObserving:
        """The observer's driver: the inotify hub's dispatcher when this waker watches through it
        (a many process: no thread per database, hubobserver.py), else a thread of its own."""
        hub = self._waker.hub if isinstance(self._waker, HubWaker) else None
        if hub is not None and self.observer.inotify:
            self.observer.read_here = lambda: read_beside(self)
            return HubObserving(hub, self._waker, self.observer, self.name)
        return threading.Thread(target=logs.bound_to(self.name, self.observer.run), args=(self._stop,),
                                name="walrewind-observer", daemon=True)

    def _tail_loop(self) -> None:
        tail_loop(self)  # engine/daemon/tailloop.py

    def _final_read(self) -> None:
        final_read(self)

    def _start_maintenance(self) -> threading.Thread | PooledMaintenance | None:
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

        if self.many:  # a few shared threads run every database's maintenance (maintenancepool.py)
            return MaintenancePool.shared().add(self.name, self.maintenance, self._stop, save)
        thread = threading.Thread(
            target=logs.bound_to(self.name, self.maintenance.run_forever), args=(self._stop,), kwargs={"on_status": save},
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


