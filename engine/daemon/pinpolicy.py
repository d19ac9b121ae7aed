"""When the daemon holds a read transaction on the live database, and when it lets go.

A read transaction (engine/pin.py) keeps SQLite from restarting the WAL over frames we have not
read, but it also keeps the WAL from resetting at all and makes an application's blocking
checkpoints wait.  The policy:

* **pin before reading** (``the read stage's read_pass``): whenever SQLite has published frames we have
  not read, pin first (tens of microseconds), then read; never read unprotected.
* **hand over** after each read: a new read transaction at the current end, then the old one ends.
* **release** only when it buys something: we have read everything, and the app's checkpoints
  have backfilled all our pin allowed (so the WAL can reset), or nothing was committed for a
  while (so we stop probing locks every 2 ms).
* **yield** within milliseconds to an application checkpoint that waits for readers (it holds
  the write lock meanwhile, so nothing can be committed while we finish reading).
* **let go** when a writer faster than our read keeps us behind and the WAL passes
  ``max_wal_bytes``: the WAL stays bounded, and commits it overwrites before we read them are
  detected by SQLite's commit counter and shipped as a visible RESYNC.
* **daemon checkpoints** (opt-in ``checkpoint_frames``) for applications that disabled theirs.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Protocol

import apsw

from .. import defaults
from ..sqlite.pin import ReadPin
from ..sqlite.shm import ShmHeader, ShmObserver


class PinHost(Protocol):
    """What the pin policy is given (the daemon provides it; no import of the daemon here)."""

    db_path: str
    pin: ReadPin
    shm: ShmObserver
    stats: Any

    @property
    def page_size(self) -> int: ...

    @property
    def stopping(self) -> bool: ...

    @property
    def last_commit_mono(self) -> float: ...

    @property
    def commit_gap(self) -> float: ...

    def caught_up(self, hdr: ShmHeader) -> bool: ...

    def observe(self) -> ShmHeader | None: ...

    def tick(self) -> int: ...

    def read_pass(self) -> int: ...

    def hold_off(self) -> None: ...

log = logging.getLogger("walrewind.shipper")

RELEASE_FRAMES = 1000  # SQLite's default wal_autocheckpoint
IDLE_RELEASE_SECONDS = 1.0
# A process serving many databases (quick_release_gap): a pass that read commits the writer made
# at least this long after the ones before releases at once when caught up (see after_read).
QUICK_RELEASE_GAP_SECONDS = 0.5
CATCH_UP_SECONDS = 0.02  # quick extra reads to catch up with a busy writer when the WAL could reset
YIELD_MAX_SECONDS = 10.0
MAX_WAL_BYTES = defaults.MAX_WAL_MB << 20  # past this, a daemon that cannot keep up stops holding the WAL back
PROBE_INTERVAL = 0.005  # lock probing while we hold a pin: how fast a checkpointer gets its way
PROBE_INTERVAL_RELAXED = 0.02  # ... while no application has run a blocking checkpoint lately
FAST_PROBE_SECONDS = 600.0  # after yielding to a checkpointer, probe fast for this long
BARRIER_READS = 8  # a daemon checkpoint reads at most this many passes (READ_BATCH_BYTES each) under its barrier


class PinPolicy:
    def __init__(self, shipper: PinHost, checkpoint_frames: int = 0, max_wal_bytes: int = MAX_WAL_BYTES) -> None:
        self.shipper = shipper
        # Daemon-driven checkpoints: off by default (the application's own checkpoints bound the
        # WAL).  Only for applications that disabled theirs; see docs/DESIGN.md for the SQLite
        # < 3.51.3 WAL-reset bug this can expose in the application's own SQLite.
        self.checkpoint_frames = checkpoint_frames
        self.max_wal_bytes = max_wal_bytes  # 0: never let go
        self._checkpoint_conn: list[apsw.Connection] | None = None
        self._let_go = False
        self.quick_release_gap = 0.0  # > 0: release a slow writer's pin at once (docs/DESIGN.md §15)
        self.last_yield_mono = 0.0  # when we last stepped aside for a blocking checkpoint

    @property
    def pin(self) -> ReadPin:
        return self.shipper.pin

    @property
    def shm(self) -> ShmObserver:
        return self.shipper.shm

    @property
    def stats(self):
        return self.shipper.stats

    def close(self) -> None:
        for conn in self._checkpoint_conn or []:
            conn.close()

    def probe_interval(self) -> float:
        """How long a pinned, quiet observer sleeps before probing the lock bytes again.

        Every wake-up costs CPU, and only applications that run blocking checkpoints (RESTART,
        TRUNCATE: sqld, or an app calling wal_checkpoint itself) ever wait for our pin.  So the
        probe is fast (PROBE_INTERVAL) for a while after we last yielded to one, and relaxed
        (PROBE_INTERVAL_RELAXED) otherwise: the first blocking checkpoint of an application then
        waits at most that long, and every later one at most PROBE_INTERVAL.
        """
        if self.stats.yields and time.monotonic() - self.last_yield_mono < FAST_PROBE_SECONDS:
            return PROBE_INTERVAL
        return PROBE_INTERVAL_RELAXED

    def caught_up(self, hdr: ShmHeader) -> bool:
        """No commit SQLite counted that we have not read (the read stage decides)."""
        return self.shipper.caught_up(hdr)

    @property
    def letting_go(self) -> bool:
        """True while we deliberately read without a pin (see ``_wal_too_big``)."""
        return self._let_go

    @property
    def reads_unpinned(self) -> bool:
        """A slow writer in a process serving many databases (its last commits came at least
        ``quick_release_gap`` after the ones before): read its commits without a pin at all
        (Reader.tick's ``unpinned``), instead of taking one and releasing it in the same pass."""
        gap = self.quick_release_gap
        return bool(gap) and not self._let_go and self.shipper.commit_gap >= gap

    def after_read(self, read_now: int) -> None:
        if self.pin.active and self.shm.checkpointer_waiting():
            self.yield_to_checkpointer()
            return
        if not self.pin.active and not self.checkpoint_frames and self.reads_unpinned:
            return  # a slow writer read unpinned: no pin to release or take (the look below decides only that)
        # A fresh look, after the pass (and its spooling) and after the probe: it decides the
        # release, so it is not replaced by the pass's own looks.  The read stage records it
        # (stamps what was published while the pass spooled, when the observer has not yet).
        hdr = self.shipper.observe()
        if hdr is None:
            return
        caught_up = self.caught_up(hdr)
        snap = self.pin.header
        if self._let_go:
            if not caught_up:
                self.pin.release()  # a reconcile pins its snapshot and keeps it: not while letting go
                return
            log.info("caught up with the WAL again; holding it until read, as usual")
            self._let_go = False
        elif snap is not None and not caught_up and self._wal_too_big(hdr):
            return
        if snap is not None:
            # Release only when it buys something: the app's checkpoints have caught up with us
            # and the WAL is as long as SQLite's default autocheckpoint would let it grow (so it
            # can reset), or nothing has been committed for a while (so we stop probing).  Every
            # unpinned moment is a moment a checkpoint could race an unread commit.
            app_caught_up = snap.max_frame > 0 and hdr.salts == snap.salts and hdr.backfilled >= snap.max_frame
            idle = time.monotonic() - self.shipper.last_commit_mono > IDLE_RELEASE_SECONDS
            if self.quick_release_gap and self.shipper.commit_gap >= self.quick_release_gap:
                idle = True  # a slow writer: holding the pin till its next commit only costs probes
            resettable = app_caught_up and hdr.max_frame >= RELEASE_FRAMES
            if resettable and not caught_up:
                # A busy writer commits while we read: keep reading the last few commits for up to
                # CATCH_UP_SECONDS, so there is a moment we are caught up and can let the WAL
                # reset (else, under a writer committing every millisecond, it only grows: a
                # fixed 3 tries left a 60k-transaction burst's WAL at 494 MB).
                deadline = time.monotonic() + CATCH_UP_SECONDS
                while not caught_up and time.monotonic() < deadline:
                    self.shipper.tick()
                    hdr = self.shm.header() or hdr
                    caught_up = self.caught_up(hdr)
            if caught_up and (resettable or idle):
                self.pin.release()
                self.stats.releases += resettable  # idle releases recur at every poll: not counted
                if resettable:
                    self.shipper.hold_off()  # let the app's next checkpoint reset the WAL
            elif read_now and (hdr.salts, hdr.max_frame) != (snap.salts, snap.max_frame):
                # Hand over after every read, caught up or not, so the app's checkpoints can
                # backfill what we read (else, under a busy writer, the WAL only grows).  Behind,
                # only if something was committed since the old pin: the new read transaction
                # opens while the old one still holds its mark, and backfill cannot pass that
                # mark (a slot-0 pin blocks backfill altogether), so the WAL is then not fully
                # backfilled and the new pin gets a slot >= 1, which keeps the WAL from
                # restarting over frames we have not read.  (With nothing new since the old pin
                # and everything backfilled, the new pin could get slot 0: no hand-over then.
                # Nor when the pin already holds the snapshot we caught up with: the new one
                # would be the same.)  ``hdr`` was read before the new read transaction
                # begins: acquire() reads the header after it begins and takes the pin only
                # when the two agree.
                self.pin.acquire(self.shm, hdr)
        elif read_now and not self.reads_unpinned:  # (a writer that sped up is pinned from now on)
            self.pin.acquire(self.shm, hdr)
        if self.checkpoint_frames and hdr.max_frame - hdr.backfilled >= self.checkpoint_frames:
            # Caught up or not: the barrier below stops the writer and reads to the end first.
            # (Waiting for a pass that ends caught up let a writer committing every few ms grow
            # the WAL several times past checkpoint_frames: its commits land during our passes.)
            self._daemon_checkpoint()

    def _wal_too_big(self, hdr: ShmHeader) -> bool:
        """Let go of the WAL when we are behind and it has grown past max_wal_bytes (see __init__).

        Checked once per read batch (up to 64 MB), so the WAL can overshoot by about one batch
        plus what the writer adds while the app's checkpoint backfills it.  If the app does not
        checkpoint at all, letting go costs nothing.
        """
        wal_bytes = hdr.max_frame * (24 + self.shipper.page_size)
        if not self.max_wal_bytes or wal_bytes <= self.max_wal_bytes:
            return False
        log.warning(
            "the WAL reached %.0f MB while we were behind the writer (limit %.0f MB): letting it reset; "
            "commits it overwrites before we read them will be shipped as a RESYNC",
            wal_bytes / 1e6, self.max_wal_bytes / 1e6,
        )
        self.pin.release()
        self._let_go = True
        self.stats.wal_cap_releases += 1
        return True

    def _daemon_checkpoint(self) -> None:
        """Barrier checkpoint (explicit opt-in only): let the WAL reset even under constant writes.

        A plain PASSIVE checkpoint racing the app's commits rarely ends fully backfilled, so the
        WAL would never restart.  Instead: hold the write lock with BEGIN IMMEDIATE (no commit can
        land), read everything, drop our pin, checkpoint PASSIVE on a second connection, ROLLBACK.
        The app's next write then finds the WAL fully backfilled and restarts it.
        """
        if self._checkpoint_conn is None:
            self._checkpoint_conn = []
            for _ in range(2):
                conn = apsw.Connection(self.shipper.db_path)
                conn.config(apsw.SQLITE_DBCONFIG_NO_CKPT_ON_CLOSE, 1)
                conn.set_busy_timeout(100)
                conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()  # opens the WAL
                self._checkpoint_conn.append(conn)
        barrier, checkpointer = self._checkpoint_conn
        try:
            barrier.execute("BEGIN IMMEDIATE")
        except apsw.BusyError:
            return  # the app is writing; try again after its commit
        try:
            for _ in range(BARRIER_READS):  # (a pass reads at most READ_BATCH_BYTES)
                self.shipper.tick()
                hdr = self.shm.header()
                if hdr is not None and self.caught_up(hdr):
                    break
            else:
                return  # not read to the end: a checkpoint now could let the WAL reset over unread frames
            self.pin.release()
            _log_frames, done = checkpointer.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)  # never waits
            if done > 0:
                self.stats.daemon_checkpoints += 1
        finally:
            barrier.execute("ROLLBACK")

    def yield_to_checkpointer(self) -> None:
        """Another process is checkpointing and waiting for readers: copy to the end and step aside."""
        self.stats.yields += 1
        self.last_yield_mono = time.monotonic()
        self.shipper.tick()
        self.pin.release()
        deadline = time.monotonic() + YIELD_MAX_SECONDS
        while self.shm.checkpoint_running() and time.monotonic() < deadline and not self.shipper.stopping:
            time.sleep(0.001)
            # While the checkpointer holds the write lock nothing new appears and this neither
            # pins nor reads; once it lets go, new commits are pinned first, then read.
            self.shipper.read_pass()
