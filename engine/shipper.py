"""The replication daemon for one database: tail the WAL, spool, upload, never lose or invent.

Protocol (see docs/DESIGN.md for the reasoning):

* **Read** committed frames straight from the -wal file as soon as inotify reports a write (or a
  fallback poll fires), and stamp each transaction with the time it was observed.
* **Pin** a read transaction while there is unread history, so SQLite cannot restart or truncate
  the WAL under us; **yield** it within milliseconds when another process starts a blocking
  checkpoint (it holds the checkpoint and write locks, so no commit can land while we finish
  copying), and **release** it once the application's checkpoints have caught up with us so the
  WAL can reset.  The application never waits for its busy timeout and the WAL stays bounded.
* **Account** for every commit: SQLite increments the wal-index ``iChange`` counter once per
  commit.  Whenever we are caught up, the commits we read must equal its advance.  If they do not,
  history was lost (e.g. the daemon was down while the app checkpointed) and we **reconcile**:
  compare every page of the live database with the replica's state and ship the difference as a
  transaction flagged RESYNC.  Nothing is ever skipped silently.
* **Spool** each read pass (fsync) and **upload** one immutable segment per interval.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import threading
import time
import uuid

from dataclasses import dataclass, field

import apsw

from . import layout
from .dbhash import PageHashes
from .format import FLAG_LATE, FLAG_RESYNC, SnapshotWriter, TxnRecord, encode_segment
from .capture import SnapshotReader
from .pin import ReadPin, open_readonly
from .shm import ShmHeader, ShmObserver
from .spool import SpooledTxn, StateDir
from .storage import Storage, put_file_immutable, put_immutable
from .walfile import WalFile, WalPosition

log = logging.getLogger("walrewind.shipper")

MASK = 0xFFFFFFFF
PROBE_INTERVAL = 0.002  # lock probing while we hold a pin: how fast a checkpointer gets its way
IDLE_POLL = 0.25  # fallback when inotify is quiet
RELEASE_FRAMES = 1000  # SQLite's default wal_autocheckpoint
IDLE_RELEASE_SECONDS = 1.0
YIELD_MAX_SECONDS = 10.0
READ_BATCH_BYTES = 64 << 20
UNVERIFIED_MAX_US = 5_000_000  # commits SQLite could not vouch for within this long force a reconcile
HEARTBEAT_SECONDS = 60.0
STATE_VERSION = 1


def now_us() -> int:
    return time.time_ns() // 1000


class ShipperError(Exception):
    pass


@dataclass
class ShipperStats:
    transactions: int = 0
    wal_bytes: int = 0
    segments: int = 0
    resyncs: int = 0
    yields: int = 0
    releases: int = 0
    daemon_checkpoints: int = 0
    last_txid: int = 0
    last_commit_us: int = 0
    uploaded_txid: int = 0
    uploaded_commit_us: int = 0
    lag_samples_us: list[int] = field(default_factory=list)
    upload_errors: int = 0
    last_error: str = ""


def default_state_dir(db_path: str) -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    safe = os.path.abspath(db_path).strip("/").replace("/", "__")
    return os.path.join(base, "walrewind", safe)


class Shipper:
    def __init__(
        self,
        db_path: str,
        storage: Storage,
        state_dir: str | None = None,
        upload_interval: float = 1.0,
        heartbeat_interval: float = HEARTBEAT_SECONDS,
        checkpoint_frames: int = 0,
    ) -> None:
        self.db_path = os.path.abspath(db_path)
        self.storage = storage
        self.state = StateDir(state_dir or default_state_dir(self.db_path))
        self.upload_interval = upload_interval
        self.heartbeat_interval = heartbeat_interval
        # Daemon-driven checkpoints: off by default (the application's own checkpoints bound the
        # WAL).  Only for applications that disabled theirs; see docs/DESIGN.md for the SQLite
        # < 3.51.3 WAL-reset bug this can expose in the application's own SQLite.
        self.checkpoint_frames = checkpoint_frames
        self._checkpoint_conn = None
        self.stats = ShipperStats()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._upload_lock = threading.Lock()
        self._observer = None
        self._last_heartbeat_key: str | None = None
        self._last_upload_mono = time.monotonic()
        self._last_commit_mono = time.monotonic()
        self.unverified: list = []  # (WalTransaction, observed time) read but not yet vouched for
        self.verified_pos: WalPosition | None = None
        self.anchor: int | None = None  # SQLite's commit counter at verified_pos
        self.ready = threading.Event()

    # ------------------------------------------------------------------ setup / teardown
    def _open(self) -> None:
        if not os.path.exists(self.db_path):
            raise ShipperError(f"{self.db_path}: database does not exist")
        probe = open_readonly(self.db_path)
        try:
            mode = probe.execute("PRAGMA journal_mode").fetchall()[0][0]
        finally:
            probe.close()
        if mode.lower() != "wal":
            raise ShipperError(
                f"{self.db_path}: database is in {mode!r} journal mode; walrewind needs WAL "
                "(run PRAGMA journal_mode=WAL once in your application)"
            )
        self.state.lock()
        # Order matters: SQLite connections first (they create the -shm), then our descriptors,
        # which stay open until every connection is closed (POSIX locks are per process).
        self.pin = ReadPin(self.db_path)
        self.shm = ShmObserver(self.db_path + "-shm")
        self.db_fd = os.open(self.db_path, os.O_RDONLY)
        self.wal = WalFile(self.db_path + "-wal")
        self.snapshots = SnapshotReader(self.pin, self.shm, self.wal, self.db_fd, self.stats)

    def _close(self) -> None:
        for conn in self._checkpoint_conn or []:
            conn.close()
        self.pin.close()
        self.wal.close()
        self.shm.close()
        os.close(self.db_fd)
        self.state.unlock()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()

    # ------------------------------------------------------------------ generations
    def _start_generation(self) -> None:
        """Begin a new history with a base snapshot (first run, or local state lost)."""
        self.state.reset()
        base_txid = self._replica_max_txid() + 1
        state_db_id = self._replica_db_id() or uuid.uuid4().hex
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
            writer.finish(header)
            return snap, position, page_size, db_pages, ts, generation, hashes

        snap, position, page_size, db_pages, ts, generation, hashes = self.snapshots.under_snapshot(write_snapshot)
        self.pin.release()
        key = layout.SnapshotKey(generation, base_txid, ts).key
        put_file_immutable(self.storage, key, tmp)
        os.unlink(tmp)
        self.db_id = state_db_id
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
        self._save_state(base_txid, ts, position, snap.change)
        self.stats.last_txid = self.stats.uploaded_txid = base_txid
        self.stats.last_commit_us = self.stats.uploaded_commit_us = ts
        log.info("new generation %s: snapshot of %d pages at txid %d", generation, db_pages, base_txid)

    def _replica_max_txid(self) -> int:
        best = 0
        for info in self.storage.list("generations/"):
            parsed = layout.parse_key(info.key)
            if isinstance(parsed, layout.SegmentKey):
                best = max(best, parsed.last_txid)
            elif isinstance(parsed, (layout.SnapshotKey, layout.HeartbeatKey)):
                best = max(best, parsed.txid)
        return best

    def _replica_db_id(self) -> str | None:
        from .replica import Replica

        try:
            return Replica(self.storage).db_id()
        except Exception:  # an empty replica has no identity yet
            return None

    def _save_state(self, txid: int, ts: int, position: WalPosition | None, change: int | None) -> None:
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

    def _resume(self) -> bool:
        """Continue a history from the state directory; False when there is none to continue."""
        saved = self.state.load_state()
        if not saved or saved.get("db_path") != self.db_path or saved.get("replica") != self.storage.url:
            return False
        if saved.get("version") != STATE_VERSION:
            raise ShipperError(
                f"state directory {self.state.path} has format version {saved.get('version')}; this build "
                f"reads version {STATE_VERSION} (use a matching walrewind or a fresh --state-dir)"
            )
        self.db_id = saved["db_id"]
        self.generation = saved["generation"]
        self.page_size = saved["page_size"]
        self.uploaded_hashes = self.state.load_hashes()
        self.hashes = self.uploaded_hashes.copy()
        self.pos = WalPosition.from_json(saved["position"]) if saved["position"] else None
        self.next_txid = saved["uploaded_txid"] + 1
        self.last_ts = saved["uploaded_ts_us"]
        self.anchor = saved.get("change")
        self.stats.uploaded_txid = saved["uploaded_txid"]
        self.stats.uploaded_commit_us = saved["uploaded_ts_us"]
        # Replay what was read but not uploaded before the previous run ended.
        self.state.seal()
        for path in self.state.sealed_files():
            for item in StateDir.read_file(path, self.page_size):
                if item.record.txid < self.next_txid:
                    continue
                self.hashes.apply(item.record.pages, item.record.db_pages)
                if self.hashes.checksum != item.record.db_checksum:
                    raise ShipperError(f"spool file {path}: checksum mismatch at txid {item.record.txid}")
                self.next_txid = item.record.txid + 1
                self.last_ts = item.record.commit_ts_us
                if item.position is not None:
                    self.pos = item.position
                if item.change is not None:
                    self.anchor = item.change
        self.stats.last_txid = self.next_txid - 1
        self.stats.last_commit_us = self.last_ts
        self.verified_pos = self.pos
        self.unverified = []
        # Whatever happened while we were down, prove it or repair it before tailing again.  The
        # saved commit counter only proves continuity if the app kept the database open (the
        # wal-index survived); otherwise the counts disagree and we resync, never guess.
        self._reconcile(late=True)
        return True

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

    def _reconcile(self, late: bool) -> None:
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

        snap, position, db_pages, ts, kept, proven, diff, resize = self.snapshots.under_snapshot(compare)
        self.pin.release()
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
        self.state.append(items)
        self.anchor = snap.change

    @staticmethod
    def _matches(hdr: ShmHeader, pos: WalPosition) -> bool:
        return (hdr.salt1, hdr.salt2, hdr.max_frame) == (pos.salt1, pos.salt2, pos.frame)

    def tick(self) -> int:
        """One read pass: read new commits, then spool those SQLite's commit counter vouches for.

        Returns how many transactions were read.
        """
        before = self.shm.header()
        result = self.wal.read(self.pos, max_bytes=READ_BATCH_BYTES)
        if result.generation == "new" and self.unverified and self.verified_pos is not None:
            # What we read past the last verified commit is gone from the WAL: SQLite never
            # published it (a writer died between writing its commit frame and updating the
            # wal-index) and the next writer reused those frames.  Forget it; read again.
            self.unverified = []
            self.pos = self.verified_pos
            result = self.wal.read(self.pos, max_bytes=READ_BATCH_BYTES)
        ts = now_us()
        if result.transactions:
            self._last_commit_mono = time.monotonic()
        for txn in result.transactions:
            self.unverified.append((txn, ts))
            self.stats.wal_bytes += txn.frames * (24 + self.page_size)
        if result.position is not None and result.position.cksum is not None:
            if result.transactions or result.generation != "empty":
                self.pos = result.position
        after = self.shm.header()
        # The header read *after* the WAL usually matches where we stopped; the one read before
        # always names a commit boundary we have read past (unless the WAL was reset meanwhile).
        if not self._verify(after):
            self._verify(before)
        if self.unverified and ts - self.unverified[0][1] > UNVERIFIED_MAX_US:
            log.warning("commits could not be accounted for in time; reconciling")
            self._reconcile(late=False)
        return len(result.transactions)

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
            self.state.append(items)
            self.verified_pos = batch[-1][0].end
        self.anchor = hdr.change
        return True

    # ------------------------------------------------------------------ pin policy
    def _caught_up(self, hdr: ShmHeader) -> bool:
        pos = self.pos
        return pos is not None and (hdr.salt1, hdr.salt2, hdr.max_frame) == (pos.salt1, pos.salt2, pos.frame)

    def _manage_pin(self, read_now: int) -> None:
        if self.pin.active and self.shm.checkpointer_waiting():
            self._yield_to_checkpointer()
            return
        hdr = self.shm.header()
        if hdr is None:
            return
        caught_up = self._caught_up(hdr)
        snap = self.pin.snapshot
        if snap is not None:
            # Release only when it buys something: the app's checkpoints have caught up with us
            # and the WAL is as long as SQLite's default autocheckpoint would let it grow (so it
            # can reset), or nothing has been committed for a while (so we stop probing).  Every
            # unpinned moment is a moment a checkpoint could race an unread commit.
            app_caught_up = snap.max_frame > 0 and hdr.salts == snap.salts and hdr.backfilled >= snap.max_frame
            idle = time.monotonic() - self._last_commit_mono > IDLE_RELEASE_SECONDS
            if caught_up and ((app_caught_up and hdr.max_frame >= RELEASE_FRAMES) or idle):
                self.pin.release()
                self.stats.releases += 1
            elif read_now:
                self.pin.acquire(self.shm)
        elif read_now:
            self.pin.acquire(self.shm)
        if self.checkpoint_frames and caught_up and hdr.max_frame - hdr.backfilled >= self.checkpoint_frames:
            self._daemon_checkpoint()

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
                conn = apsw.Connection(self.db_path)
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
            self.tick()
            self.pin.release()
            _log_frames, done = checkpointer.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)  # never waits
            if done > 0:
                self.stats.daemon_checkpoints += 1
        finally:
            barrier.execute("ROLLBACK")

    def _yield_to_checkpointer(self) -> None:
        """Another process is checkpointing and waiting for readers: copy to the end and step aside."""
        self.stats.yields += 1
        self.tick()
        self.pin.release()
        deadline = time.monotonic() + YIELD_MAX_SECONDS
        while self.shm.checkpoint_running() and time.monotonic() < deadline and not self._stop.is_set():
            time.sleep(0.001)
            self.tick()
        self.tick()

    # ------------------------------------------------------------------ uploading
    def upload_pending(self, final: bool = False) -> int:
        """Seal the spool file and upload every sealed file as one segment each, in order."""
        with self._upload_lock:
            self.state.seal()
            uploaded = 0
            for path in self.state.sealed_files():
                items = StateDir.read_file(path, self.page_size)
                items = [i for i in items if i.record.txid > self.stats.uploaded_txid]
                if not items:
                    self.state.remove(path)
                    continue
                first, last = items[0].record, items[-1].record
                key = layout.SegmentKey(self.generation, first.txid, last.txid, first.commit_ts_us, last.commit_ts_us)
                blob = encode_segment(
                    {
                        "db_id": self.db_id,
                        "generation": self.generation,
                        "page_size": self.page_size,
                        "first_txid": first.txid,
                        "last_txid": last.txid,
                        "through_ts_us": max(i.through_ts_us for i in items),
                    },
                    [i.record for i in items],
                )
                put_immutable(self.storage, key.key, blob)
                for item in items:
                    self.uploaded_hashes.apply(item.record.pages, item.record.db_pages)
                position = next((i.position for i in reversed(items) if i.position is not None), None)
                change = next((i.change for i in reversed(items) if i.change is not None), None)
                self._save_state(last.txid, last.commit_ts_us, position, change)
                self.state.remove(path)
                self.stats.uploaded_txid = last.txid
                self.stats.uploaded_commit_us = last.commit_ts_us
                self.stats.segments += 1
                now = now_us()
                self.stats.lag_samples_us.extend(now - i.record.commit_ts_us for i in items)
                del self.stats.lag_samples_us[:-100000]
                self._last_upload_mono = time.monotonic()
                uploaded += 1
            return uploaded

    def write_heartbeat(self) -> None:
        """Record that the replica is complete up to now (restores use it to say how fresh they are).

        Only the newest heartbeat matters, so the previous one is deleted; the daemon remembers
        its key instead of listing (no LIST on the sync path).
        """
        with self._upload_lock:
            key = layout.HeartbeatKey(self.generation, now_us(), self.stats.uploaded_txid).key
            put_immutable(self.storage, key, b"")
            if self._last_heartbeat_key:
                self.storage.delete(self._last_heartbeat_key)
            self._last_heartbeat_key = key
            self._last_upload_mono = time.monotonic()

    def _uploader(self) -> None:
        while not self._stop.wait(self.upload_interval):
            try:
                if self.upload_pending() == 0 and time.monotonic() - self._last_upload_mono > self.heartbeat_interval:
                    self.write_heartbeat()
            except Exception as exc:  # keep spooling; the next interval retries
                self.stats.upload_errors += 1
                self.stats.last_error = str(exc)
                log.error("upload failed (will retry): %s", exc)

    # ------------------------------------------------------------------ main loop
    def _start_watching(self) -> None:
        from watchdog.events import FileSystemEventHandler
        from watchdog.observers import Observer

        targets = {self.db_path, self.db_path + "-wal"}
        wake = self._wake

        class Handler(FileSystemEventHandler):
            def on_any_event(self, event):  # noqa: D401 - watchdog callback
                if event.src_path in targets:
                    wake.set()

        self._observer = Observer()
        self._observer.schedule(Handler(), os.path.dirname(self.db_path), recursive=False)
        self._observer.start()

    def run(self) -> None:
        """Replicate until stop() (or SIGTERM/SIGINT via install_signal_handlers)."""
        sys.setswitchinterval(0.0005)  # the tail loop must get the GIL within a fraction of a ms
        self._open()
        try:
            self._last_upload_mono = time.monotonic()
            if not self._resume():
                self._start_generation()
            self._start_watching()
            uploader = threading.Thread(target=self._uploader, name="walrewind-uploader", daemon=True)
            uploader.start()
            self.ready.set()
            while not self._stop.is_set():
                self._wake.wait(PROBE_INTERVAL if self.pin.active else IDLE_POLL)
                self._wake.clear()
                read_now = self.tick()
                self._manage_pin(read_now)
            # Final sync: everything committed up to now is read, spooled and uploaded.
            self.tick()
            self.pin.release()
            uploader.join()
            self.upload_pending(final=True)
            self.write_heartbeat()
        finally:
            if self._observer is not None:
                self._observer.stop()
                self._observer.join()
            self._close()

    def install_signal_handlers(self) -> None:
        def handler(signum, frame):
            log.info("signal %d: final sync and exit", signum)
            self.stop()

        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
