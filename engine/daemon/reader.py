"""The read stage: committed transactions out of the WAL, accounted for, into the spool.

Reads under the pin (engine/sqlite/pin.py) what the observer saw committed, verifies every
batch against SQLite's commit counter (the wal-index ``iChange``: commits read must equal its
advance, or history was lost and is reconciled visibly), stamps each transaction with the time
the observer first saw it, and appends it to the spool.  It never uploads and never decides
about the pin: it is given the pin, the wal-index, the WAL, the replication state and the spool,
and the pin policy asks it to read (``tick``/``read_pass``) and whether it is caught up.
"""

from __future__ import annotations

import logging
import time
from typing import Callable

from ..errors import DaemonError
from ..replica.format import (
    FLAG_LATE,
    FLAG_RESYNC,
    FLAG_STAMP_LATE,
    TxnRecord,
    decode_txns,
)
from ..sqlite.capture import PinnedReader
from ..sqlite.pagehash import new_changes
from ..sqlite.pin import ReadPin
from ..sqlite.shm import ShmHeader, ShmObserver
from ..sqlite.walfile import MASK, WalFile, WalPosition
from . import clock
from .observations import STAMP_SLACK_US, Observations
from .spool import SpooledTxn, StateDir
from .state import ReplicationState
from .stats import ReplicatorStats

log = logging.getLogger("walrewind.shipper")

READ_BATCH_BYTES = 8 << 20  # per read pass: bounds the memory of a pass and the stamps' delay
UNVERIFIED_MAX_US = 5_000_000  # commits SQLite could not vouch for within this long force a reconcile
HOLD_OFF_SECONDS = 0.05  # after a release that lets the WAL reset, at most this long unpinned ...
HOLD_OFF_FRAMES = 256  # ... and at most this many frames of the same WAL generation
OBSERVER_GRACE = 0.005  # how long a read pass waits for the observer to stamp a commit it saw first
UNPINNED_MAX_FRAMES = 64  # a slow writer's new frames read without a pin at most (~0.3 ms of reading)


class Reader:
    def __init__(self, rs: ReplicationState, spool_dir: StateDir, stats: ReplicatorStats, pin: ReadPin,
                 shm: ShmObserver, wal: WalFile, pinned_reader: PinnedReader, observations: Observations,
                 letting_go: Callable[[], bool], on_spooled: Callable[[], None] | None = None,
                 reads_unpinned: Callable[[], bool] | None = None) -> None:
        self.rs = rs
        self.state = spool_dir
        self.stats = stats
        self.pin = pin
        self.shm = shm
        self.wal = wal
        self.pinned_reader = pinned_reader
        self.observations = observations
        self.on_spooled = on_spooled  # wakes the uploader, which sleeps while the spool is empty
        self.letting_go = letting_go  # the pin policy reads unpinned on purpose (a WAL too big)
        self.reads_unpinned = reads_unpinned or (lambda: False)  # ... or a slow writer's commits (see tick)
        self.unverified: list = []  # (WalTransaction, stamp, stamp only a bound) read but not yet vouched for
        self.last_commit_mono = time.monotonic()
        self.commit_gap = 0.0  # seconds between the last two passes that read commits
        self.spooled_through_us = 0  # everything committed before this was spooled
        self._hold: tuple[int, int, int, float] | None = None  # see hold_off()
        self._beside = False  # read_slow_commit() runs (on the thread whose looks stamp commits)

    def caught_up(self, hdr: ShmHeader) -> bool:
        """No commit SQLite counted that we have not read.

        Usually the wal-index ends exactly at our position.  After a RESTART or TRUNCATE
        checkpoint with no commit since, it names a new, empty generation (mxFrame 0, new salts)
        while our position is still the old generation's end: then SQLite's commit counter
        decides (unchanged since the last commit we verified: nothing new).
        """
        pos = self.rs.pos
        if pos is not None and (hdr.salt1, hdr.salt2, hdr.max_frame) == (pos.salt1, pos.salt2, pos.frame):
            return True
        return hdr.max_frame == 0 and self.rs.anchor is not None and not self.unverified and hdr.change == self.rs.anchor

    def observe(self, hdr: ShmHeader | None = None) -> ShmHeader | None:
        """Read the wal-index header and remember when each commit boundary was first seen.

        The time is taken *after* the header is read, so every commit the header shows had
        happened by then: a stamp never precedes its commit.  ``hdr``: a header this thread
        has just read (the pin's, read after its read transaction began), recorded instead of
        reading another.
        """
        if hdr is None:
            hdr = self.shm.header()
        if hdr is not None:
            obs = self.observations
            # A commit the observer has already recorded is not added again (checked here
            # without the observations' lock: add() checks again under it).
            if obs.knows(hdr.salts, hdr.max_frame):
                return hdr
            now = clock.now_us()
            # A commit the observer has not seen yet, long after its last look: the commit may be
            # as old as that look.
            late = now - obs.looked_us > STAMP_SLACK_US
            if late and obs.event_driven and self._observer_stamps(hdr, now):
                return hdr
            obs.add(hdr.salts, hdr.max_frame, now, hdr.change, uncertain=late)
        return hdr

    def _observer_stamps(self, hdr: ShmHeader, now_us: int) -> bool:
        """Give an event-driven observer a moment to record a commit we saw first.

        When the -wal was written just now, its write has just woken the observer, which may
        only be waiting for the GIL this thread holds (a switch comes every 5 ms) or for a
        core: its look comes within OBSERVER_GRACE and stamps the commit as it should.
        Stamping it here instead flagged it late by the whole quiet spell before it (a commit
        after a pause).  A -wal last written longer ago than STAMP_SLACK_US, or an observer
        that does not look within the grace, is a starved observer: then we stamp the commit,
        uncertain (the observer's event path cannot tell how long its wake-up took).
        """
        if self._beside:
            return False  # (the observer's looks run on this very thread: waiting cannot help)
        written = self.wal.last_write_us()
        if written is None or now_us - written > STAMP_SLACK_US:
            return False
        deadline = time.monotonic() + OBSERVER_GRACE
        while time.monotonic() < deadline:
            time.sleep(OBSERVER_GRACE / 10)  # (releases the GIL)
            if self.observations.knows(hdr.salts, hdr.max_frame):
                self.stats.observer_waits += 1
                return True
        return False

    def read_pass(self) -> int:
        """One wake-up: read under a pin, or note that SQLite published nothing new.

        Unpinned, the wal-index decides: nothing past our position means nothing to read (and no
        pin: an idle daemon holds none, and the app's checkpoint after its next commit can then
        backfill everything, which is what lets the WAL reset).  Anything new: pin *first*, then
        read.  Reading unpinned left what the read had not reached yet unprotected for as long as
        the read took: a writer faster than our read could fill the WAL, checkpoint and restart it
        meanwhile, and the new generation overwrote the old one's unread tail.  (Letting go of a
        WAL we cannot keep up with reads unpinned on purpose, see engine/daemon/pinpolicy.py.)
        """
        if not self.pin.active and not self.letting_go():
            checked_us = clock.now_us()
            hdr = self.shm.header()
            if hdr is not None and self.caught_up(hdr) and not self.unverified:
                if self.rs.anchor is not None and hdr.change == self.rs.anchor:
                    self.spooled_through_us = checked_us  # as tick() does when it finds nothing
                if self._hold is not None:
                    self._holding_off(hdr)  # ends once run out (a quiet loop polls while one lasts)
                return 0
            if hdr is not None and self._holding_off(hdr):
                return 0
            if hdr is not None and self.reads_unpinned() and self._few_new_frames(hdr):
                self.stats.unpinned_reads += 1
                read = self.tick(hdr, unpinned=True)
                if read is not None:
                    return read
                self.stats.unpinned_retries += 1
                hdr = None  # the WAL restarted while we read: read it the usual way, pinned
            # The pin's header was read after its read transaction began: it is the pass's
            # header from before the read (tick() would only read the same again).
            return self.tick(self.pin.acquire(self.shm, hdr))
        return self.tick()

    def read_slow_commit(self) -> int | None:
        """A slow writer's new commits, read unpinned off the reading thread (by the inotify
        dispatcher right after its look saw them: tailloop.read_beside); None: the reading thread
        must.  Only what ``read_pass`` reads unpinned anyway, with no pin, hold-off or unverified
        commit, and only if SQLite's counter accounts for every commit read (``clean``): it never
        leaves work behind nor reconciles (pinning, comparing the database: the reader's job)."""
        if self.pin.active or self.unverified or self._hold is not None or self.letting_go() or not self.reads_unpinned():
            return None
        hdr = self.shm.header()
        if hdr is None:
            return None
        if self.caught_up(hdr):
            return 0
        if not self._few_new_frames(hdr):
            return None
        self._beside = True
        try:
            read = self.tick(hdr, unpinned=True, clean=True)
        finally:
            self._beside = False
        self.stats.unpinned_reads += 1
        self.stats.unpinned_retries += read is None
        return read

    def _few_new_frames(self, hdr: ShmHeader) -> bool:
        """At most UNPINNED_MAX_FRAMES published past our position, in our generation: a read
        short enough to make unpinned (a slow writer's commit; see tick).  A burst is read under a
        pin: reading first lost commits to a fast writer that filled, checkpointed and restarted
        the WAL while a long read went on (docs/DESIGN.md §2)."""
        pos = self.rs.pos
        return (pos is not None and pos.cksum is not None and hdr.salt1 == pos.salt1 and hdr.salt2 == pos.salt2
                and 0 < hdr.max_frame - pos.frame <= UNPINNED_MAX_FRAMES)

    def hold_off(self) -> None:
        """Called when the pin is released so the WAL can reset (pinpolicy.py: caught up, the
        app's checkpoints caught up with us, the WAL >= RELEASE_FRAMES).

        For a moment the reader does not pin again for new commits *of the same WAL
        generation*: pinning at the first one (while the app's checkpoint after it still
        runs) took a read mark >= 1 that kept the WAL from restarting, so under a writer that
        never pauses the WAL only grew (529 MB in a 60k-transaction burst).  Nothing is at risk
        meanwhile: frames are only overwritten after a restart, which starts a new generation,
        and a commit of a new generation (seen by the observer within a look) ends the hold-off
        at once; then the old generation's unread tail is still on disk past the new frames and
        is read first (walfile.py), exactly as after any restart.  Bounded by HOLD_OFF_SECONDS
        and HOLD_OFF_FRAMES (an app whose checkpoint does not come reads as usual).
        """
        pos = self.rs.pos
        if pos is not None and pos.cksum is not None:
            self._hold = (pos.salt1, pos.salt2, pos.frame + HOLD_OFF_FRAMES, time.monotonic() + HOLD_OFF_SECONDS)

    def end_hold_off(self) -> None:
        self._hold = None

    @property
    def holding_off(self) -> bool:
        return self._hold is not None

    def _holding_off(self, hdr: ShmHeader) -> bool:
        hold = self._hold
        if hold is None:
            return False
        salt1, salt2, max_frame, deadline = hold
        if (hdr.salt1, hdr.salt2) == (salt1, salt2) and hdr.max_frame < max_frame and time.monotonic() < deadline:
            return True
        self._hold = None
        return False

    def tick(self, pinned_at: ShmHeader | None = None, unpinned: bool = False, clean: bool = False) -> int | None:
        """One read pass: read new commits, then spool those SQLite's commit counter vouches for.

        ``pinned_at``: the header ReadPin.acquire read just now, *after* the read transaction
        began (so it may stand for the header read before the WAL; one read before the pin
        may not: what it shows was not protected yet).  Returns how many transactions were read.

        ``unpinned``: a slow writer's commits in a process serving many databases
        (PinPolicy.reads_unpinned), read without a read transaction; ``pinned_at`` is then the
        header read just before, unpinned.  Its frames up to its mxFrame are committed, and
        nothing overwrites them but a writer after a WAL restart, which writes the new salts
        into the wal-index header *before* its first frame (walRestartHdr): so a header read
        after the frames that still names their generation vouches for them as a pin would
        (no checksum walk).  One that names another returns None with nothing changed (what was
        read may be torn): the caller reads again, pinned.  The pin bought no more than that:
        a slow writer's pin was taken for one pass and released in it (pinpolicy.py), and a
        commit checkpointed away before the pass is lost either way (and reconciled, visibly).
        ``clean`` (unpinned only): None too unless the commits read are exactly those SQLite's
        counter accounts for up to a header's boundary (all of them are spooled now).
        """
        before = self.observe(pinned_at)
        published = (before.salts, before.max_frame) if before is not None else None
        # Pinned (before was read after the pin was taken), the wal-index vouches for the frames
        # up to its mxFrame: no checksum walk for them (engine/sqlite/walfile.py, read()).
        vouched = self.pin.active or unpinned
        result = self.wal.read(self.rs.pos, max_bytes=READ_BATCH_BYTES, published=published, vouched=vouched)
        if unpinned:
            checked_us = clock.now_us()
            # The look after the read: the generation the frames were read in still stands.
            after = self.shm.header()
            if (before is None or after is None or after.salts != before.salts
                    or (result.generation == "new" and self.unverified)  # (the rarer case below: pinned)
                    or (clean and not self._accounts_for(result.transactions, after, before))):
                return None
            self.observe(after)
        else:
            if result.generation == "new" and self.unverified and self.rs.verified_pos is not None:
                # What we read past the last verified commit is gone from the WAL: SQLite never
                # published it (a writer died between writing its commit frame and updating the
                # wal-index) and the next writer reused those frames.  Forget it; read again.
                self.unverified = []
                self.rs.pos = self.rs.verified_pos
                result = self.wal.read(self.rs.pos, max_bytes=READ_BATCH_BYTES, published=published, vouched=vouched)
            checked_us = clock.now_us()
            # A second look, after the read: commits published while we read get a stamp now, not
            # after spooling; it is what verifies a scan that went past ``before``'s boundary (a WAL
            # restarted meanwhile is read from its frame 1) and what spooled_through_us relies on.
            after = self.observe()
        ts = clock.now_us()
        if result.transactions:
            now = time.monotonic()
            self.commit_gap, self.last_commit_mono = now - self.last_commit_mono, now
        for txn in result.transactions:
            end = txn.end
            self.unverified.append((txn, *self.observations.stamp(end.salt1, end.salt2, end.frame, ts, end.cksum)))
            self.stats.wal_bytes += txn.frames * (24 + self.rs.page_size)
        if result.position is not None and result.position.cksum is not None:
            if result.transactions or result.generation != "empty":
                self.rs.pos = result.position
        # The header read *after* the WAL usually matches where we stopped; the one read before
        # always names a commit boundary we have read past (unless the WAL was reset meanwhile).
        if not self._verify(after) and not self._verify(before):
            self._verify_observed()
        if self.unverified and ts - self.unverified[0][1] > UNVERIFIED_MAX_US:
            log.warning("commits could not be accounted for in time; reconciling")
            self.reconcile(late=False)
        if not self.unverified and after is not None and self.rs.anchor is not None and after.change == self.rs.anchor:
            # SQLite had counted no commit we have not spooled when ``after`` was read: everything
            # committed before checked_us is in the spool (what heartbeats vouch for).
            self.spooled_through_us = checked_us
        return len(result.transactions)

    def _accounts_for(self, txns: list, *hdrs: ShmHeader) -> bool:
        """``txns`` (read past our position, nothing unverified) end at one of ``hdrs``' commit
        boundaries, and SQLite's commit counter advanced there by exactly their number: _verify
        will spool them all, none is missing."""
        anchor = self.rs.anchor
        if anchor is None or not txns or self.unverified:
            return False
        end = txns[-1].end
        return any(self._matches(hdr, end) and ((hdr.change - anchor) & MASK) == len(txns) for hdr in hdrs)

    def _verify(self, hdr: ShmHeader | None) -> bool:
        """Spool the read transactions up to ``hdr``'s commit boundary if the counts agree.

        SQLite increments the wal-index ``iChange`` once per commit.  If it advanced by exactly
        the number of commits we read up to that boundary, nothing was missed; otherwise history
        was lost and we reconcile.  Returns False when ``hdr`` is no boundary we know.
        """
        if hdr is None or self.rs.anchor is None:
            return False
        if self.rs.verified_pos is not None and self._matches(hdr, self.rs.verified_pos):
            count = 0
        else:
            count = next((n + 1 for n, (txn, *_) in enumerate(self.unverified) if self._matches(hdr, txn.end)), None)
            if count is None:
                return False
        advanced = (hdr.change - self.rs.anchor) & MASK
        if advanced != count:
            log.warning("SQLite counted %d commits but %d were read: history was lost; reconciling", advanced, count)
            self.reconcile(late=False)
            return True
        if count:
            batch, self.unverified = self.unverified[:count], self.unverified[count:]
            items = [
                self._emit(txn.pages, txn.db_pages, seen, FLAG_STAMP_LATE if bound else 0, txn.end,
                           hdr.change if n == count - 1 else None)
                for n, (txn, seen, bound) in enumerate(batch)
            ]
            # (No look at the wal-index here: the pin policy's look right after the pass,
            # PinPolicy.after_read, stamps what was published while this spooled.)
            self.spool(items, changes=self._net(items))
            self.rs.verified_pos = batch[-1][0].end
        self.rs.anchor = hdr.change
        return True

    def _verify_observed(self) -> None:
        """Verify up to the last transaction read whose boundary an observation recorded.

        A read batch that stopped short of the wal-index's end (READ_BATCH_BYTES under a burst)
        matches neither header of its pass; without this, unverified transactions (with their
        pages) would pile up in memory until the writer paused.
        """
        for txn, *_ in reversed(self.unverified):
            end = txn.end
            change = self.observations.change_at(end.salt1, end.salt2, end.frame)
            if change is not None:
                salts = end.salt1.to_bytes(4, "big") + end.salt2.to_bytes(4, "big")
                self._verify(ShmHeader(change, end.frame, 0, salts, 0, (), end.page_size))
                return

    def _emit(self, pages: dict[int, bytes], db_pages: int, ts: int, flags: int, position, change) -> SpooledTxn:
        ts = max(ts, self.rs.last_ts)  # commit times never run backwards, even if the wall clock does
        changes = new_changes()  # spooled with the record: the uploader never hashes a page again
        checksum = self.rs.hashes.apply(pages, db_pages, changes)
        record = TxnRecord(self.rs.next_txid, ts, db_pages, flags, checksum, pages)
        self.rs.next_txid += 1
        self.rs.last_ts = ts
        self.stats.transactions += 1
        self.stats.last_txid = record.txid
        self.stats.last_commit_us = ts
        return SpooledTxn(record, position, ts, change, changes)

    def _net(self, items: list[SpooledTxn]):
        """The net page hashes ``items`` set (just emitted: the hashes are at their last)."""
        if len(items) == 1:
            return items[0].changes
        touched: set[int] = set()
        for item in items:
            touched.update(item.changes[0])
        return self.rs.hashes.net_changes(touched)

    def spool(self, items: list[SpooledTxn], allow_over_limit: bool = False, changes=None) -> None:
        # One record per pass (a batch), written now and fsynced by the uploader's thread (at
        # every seal and at least every uploader.FSYNC_SECONDS), never on this one: see
        # docs/DESIGN.md, "Grouped fsync".
        self.state.append(items, allow_over_limit, sync=False, changes=changes)
        if self.on_spooled is not None:
            self.on_spooled()
        self.stats.backlog_bytes = self.state.pending

    def replay_spool(self) -> None:
        """Rebuild the in-memory state from what is durable: the uploaded point plus the spool.

        Used at start-up and when an append failed (spool full), so the tail continues exactly
        after the last record that is really on disk.
        """
        self.rs.hashes = self.rs.uploaded_hashes.copy()
        self.rs.pos = self.rs.uploaded_pos
        self.rs.anchor = self.rs.uploaded_change
        self.rs.next_txid = self.stats.uploaded_txid + 1
        self.rs.last_ts = self.stats.uploaded_commit_us
        self.state.seal()
        for piece in self.state.sealed_files():
            path = piece.path
            for rec in piece.records():
                if rec.last_txid < self.rs.next_txid:
                    continue
                if rec.txid < self.rs.next_txid:
                    rec = rec.after(self.rs.next_txid - 1, self.rs.page_size)
                batch = rec.batch
                if rec.txid != self.rs.next_txid:
                    raise DaemonError(
                        f"spool file {path}: expected txid {self.rs.next_txid}, found {rec.txid}; "
                        "the spool is inconsistent (refusing to ship a history with a hole)"
                    )
                try:
                    if batch.changes is not None:
                        self.rs.hashes.apply_changes(*batch.changes, batch.db_pages)
                    else:
                        for record in decode_txns(rec.raw, self.rs.page_size, path):
                            self.rs.hashes.apply(record.pages, record.db_pages)
                except ValueError as exc:
                    raise DaemonError(f"spool file {path}: page changes do not apply at txid {rec.txid} ({exc})") from None
                if self.rs.hashes.checksum != batch.db_checksum:
                    raise DaemonError(f"spool file {path}: checksum mismatch at txid {rec.last_txid}")
                self.rs.next_txid = rec.last_txid + 1
                self.rs.last_ts = batch.last_ts_us
                if batch.position is not None:
                    self.rs.pos = batch.position
                if batch.change is not None:
                    self.rs.anchor = batch.change
        self.state.remeasure()
        self.stats.backlog_bytes = self.state.pending
        self.stats.last_txid = self.rs.next_txid - 1
        self.stats.last_commit_us = self.rs.last_ts
        self.rs.verified_pos = self.rs.pos
        self.unverified = []

    def reconcile(self, late: bool, allow_over_limit: bool = False) -> None:
        """Bring the replica's state to the live database's, proving continuity or marking a resync.

        Transactions still readable are kept as individual records only when SQLite's commit
        counter proves none is missing between them; otherwise their changes are folded into one
        RESYNC record, because a record built on top of a missing commit would describe a state
        the database never had.
        """
        def compare(snap, position, page_size, db_pages, pages):
            ts = clock.now_us()
            kept = list(self.unverified)
            if self.rs.pos is not None:
                for txn in self.wal.read(self.rs.pos, published=(snap.salts, snap.max_frame), vouched=True).transactions:
                    if (txn.end.salt1, txn.end.salt2) == (snap.salt1, snap.salt2) and txn.end.frame > snap.max_frame:
                        break
                    kept.append((txn, ts, True))  # never observed: stamped now, late
            if kept:
                last = kept[-1][0].end
                at_snapshot = (last.salt1, last.salt2, last.frame) == (snap.salt1, snap.salt2, snap.max_frame)
            else:
                at_snapshot = self.rs.verified_pos is not None and self._matches(snap, self.rs.verified_pos)
            proven = self.rs.anchor is not None and at_snapshot and ((snap.change - self.rs.anchor) & MASK) == len(kept)
            expected = self.rs.hashes.copy()
            if proven:
                for txn, *_ in kept:
                    expected.apply(txn.pages, txn.db_pages)
            diff = {pgno: data for pgno, data in pages() if expected.differs(pgno, data)}
            resize = db_pages != expected.db_pages
            return snap, position, db_pages, ts, kept, proven, diff, resize

        # The pin stays: it holds exactly the snapshot we are now positioned at.
        snap, position, db_pages, ts, kept, proven, diff, resize = self.pinned_reader.under_snapshot(compare)
        self.unverified = []
        items: list[SpooledTxn] = []
        if proven:
            for n, (txn, seen, bound) in enumerate(kept):
                change = snap.change if n == len(kept) - 1 else None
                flags = FLAG_LATE if late else FLAG_STAMP_LATE if bound else 0
                items.append(self._emit(txn.pages, txn.db_pages, ts if late else seen, flags, txn.end, change))
        elif kept:
            log.warning("%d transactions cannot be proven complete; folding them into a RESYNC", len(kept))
        if diff or resize or db_pages != self.rs.hashes.db_pages:
            log.warning(
                "history gap detected: %d pages differ from the replica; shipping a RESYNC transaction", len(diff)
            )
            items.append(self._emit(diff, db_pages, ts, FLAG_RESYNC, position, snap.change))
            self.stats.resyncs += 1
        if items:
            items[-1].position = position
            items[-1].change = snap.change
        self.rs.pos = self.rs.verified_pos = position
        self.spool(items, allow_over_limit, changes=self._net(items) if items else None)
        self.rs.anchor = snap.change

    @staticmethod
    def _matches(hdr: ShmHeader, pos: WalPosition) -> bool:
        return (hdr.salt1, hdr.salt2, hdr.max_frame) == (pos.salt1, pos.salt2, pos.frame)
