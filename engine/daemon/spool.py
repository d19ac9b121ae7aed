"""The daemon's local, fsynced memory: what it has read but not yet uploaded, and where it stands.

    <state>/state.json     generation, identity, the point of the hashes base (atomic replace)
    <state>/hashes-<txid>.bin  per-page hashes of the database at a point (named by state.json)
    <state>/hashes-<txid>.log  the pages each upload since changed, and the uploaded point after
                           it (hashlog.py): the newest point is state.json's or the log's last
    <state>/spool/*.log    transactions read since, appended by the tailing thread (fsynced by
                           the uploader's); named after the first txid they hold
    <state>/spool/*.sealed the same, left by a version that renamed files to seal them

Sealing cuts the file being appended to *by offset*: the bytes up to the seal are one
:class:`Piece`, uploaded as one segment, and the file is appended to on until it reaches
``ROLL_BYTES``; only then does the next append start a new file.  A new file per upload cost a
create, a directory fsync and an unlink per upload (~0.5 ms of CPU on ext4 here).  The pieces are
kept in memory (no directory listing per upload); at start every file in the spool is one piece,
and the records in it at or below the uploaded point (the uploaded prefix of a file that had
not rolled yet) are skipped by txid, as they always were after a crash.

Every spool record is ``length u32 | crc32 u32 | body`` (the body: spoolrecord.py, the WAL
position, the page hashes the transaction set, and the transaction).  A
kill -9 can leave a torn last record; replay stops at the first record whose CRC fails and
truncates the file there, so nothing after a tear is ever trusted.

The spool is bounded: an append that would take it past ``limit_bytes``, or leave less than
``min_free_bytes`` free on its filesystem (the application usually lives on the same disk), or
that fails with ENOSPC/EDQUOT, writes nothing (a partial write is cut off again) and raises
:class:`SpoolFull`.  The daemon then stops reading, says so loudly, and repairs the gap with a
visible LATE/RESYNC transaction once there is room again (docs/DESIGN.md, section 8).
"""

from __future__ import annotations

import dataclasses
import errno
import fcntl
import os
import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

from .. import defaults
from ..errors import DaemonError, StateLocked
from ..fsutil import atomic_write, fsync_dir
from ..replica.format import decode_txns
from ..sqlite.pagehash import PageChanges
from . import spoolfile
from .spoolrecord import Batch, RawSpooled, SpooledTxn, decode_body, encode_body  # noqa: F401  (SpooledTxn: part of this module's interface)
from .statefile import UploadedPoint

if TYPE_CHECKING:
    from .syncgroup import SyncGroup


DEFAULT_SPOOL_LIMIT = defaults.SPOOL_LIMIT_BYTES
DEFAULT_MIN_FREE = defaults.SPOOL_MIN_FREE_BYTES


class SpoolFull(DaemonError):
    """Nothing was appended: the spool is at its limit or the disk is (nearly) full."""


class SpoolCorrupted(DaemonError):
    """A failed append could not be cut off again; the file must not be appended to."""

FREE_RECHECK_SECONDS = 1.0
# A piece up to this size keeps its records in memory from append to upload (a slow writer's
# second: a few KB), instead of the uploader reading them back (an open and reads per upload);
# bounded so that 1,000 databases bursting at once hold at most this much each.
MEMORY_PIECE_BYTES = 64 << 10
ROLL_BYTES = 4 << 20  # a spool file is sealed for the last time (closed) once it is this large


@dataclass(frozen=True)
class Piece:
    """Sealed bytes ``[start, end)`` of a spool file: one segment's worth of records."""

    path: str
    start: int
    end: int
    memory: bytes | None = field(default=None, compare=False, repr=False)  # the same bytes, when kept

    @property
    def size(self) -> int:
        return self.end - self.start

    def records(self, repair: bool = True) -> Iterator["RawSpooled"]:
        if self.memory is not None:  # written by this process, durable in the file: not read back
            return spoolfile.iter_records(self.memory)
        return spoolfile.iter_raw(self.path, repair, self.start, self.end)


class StateDir(UploadedPoint):
    def __init__(
        self, path: str, limit_bytes: int = DEFAULT_SPOOL_LIMIT, min_free_bytes: int = DEFAULT_MIN_FREE
    ) -> None:
        self.path = os.path.abspath(path)
        self.spool_dir = os.path.join(self.path, "spool")
        os.makedirs(self.spool_dir, exist_ok=True)
        self.limit_bytes = limit_bytes
        self.min_free_bytes = min_free_bytes
        self._lock_fd: int | None = None
        self._lock = threading.Lock()
        self._current: tuple[str, int] | None = None  # (path, O_APPEND descriptor) being appended to
        self._current_size = 0
        self._sealed_at = 0  # the current file's bytes before this are in pieces (or uploaded)
        self._tail: list[bytes] | None = []  # the records since then, while they fit MEMORY_PIECE_BYTES
        self._tail_bytes = 0
        self._unnamed: str | None = None  # a file whose directory entry is not fsynced yet
        self._dirty = False  # the file being appended to has records not fsynced yet
        self._free, self._free_at = 0, -FREE_RECHECK_SECONDS  # free bytes on the spool's file system, when asked
        self._pieces = self._list_pieces()  # sealed, waiting for upload, in txid order
        self._pending = sum(p.size for p in self._pieces)  # bytes waiting, kept up to date without listing
        self._init_point()

    def lock(self) -> None:
        """Take the state directory for this process; a second daemon on it is refused.

        flock on a dedicated file (never on the database files, whose POSIX locks belong to SQLite).
        """
        fd = os.open(os.path.join(self.path, "lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise StateLocked(f"state directory {self.path} is in use by another walrewind daemon ({holder})") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"pid {os.getpid()} on {os.uname().nodename}".encode(), 0)
        self._lock_fd = fd

    def unlock(self) -> None:
        self._close_log()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def reset(self) -> None:
        """Forget everything (a new generation is starting)."""
        self._close_log()
        self._hash_base, self._saved_fixed = None, None
        for name in os.listdir(self.path):
            if name == "state.json" or (name.startswith("hashes") and name.endswith((".bin", ".log"))):
                os.unlink(os.path.join(self.path, name))
        with self._lock:
            if self._current is not None:
                os.close(self._current[1])
                self._current = None
            for name in os.listdir(self.spool_dir):
                os.unlink(os.path.join(self.spool_dir, name))
            self._pending = 0
            self._current_size = self._sealed_at = 0
            self._tail, self._tail_bytes = [], 0
            self._pieces = []
            self._unnamed = None

    # -- the spool ------------------------------------------------------------------------------
    def append(self, items: list[SpooledTxn], allow_over_limit: bool = False, sync: bool = True,
               changes: PageChanges | None = None) -> None:
        """Append ``items`` as one record (and fsync unless ``sync`` is False); called by the
        tailing thread after each read pass.

        The record is one batch (spoolrecord.py): the last position and commit counter among the
        items, the latest ``through``, and ``changes``, the net page hashes of the batch (a single
        item's own changes when not given).

        With ``sync=False`` the records are written but fsynced only by the next :meth:`flush`
        (or :meth:`seal`), both run by the uploader's thread (docs/DESIGN.md, "Grouped fsync").

        All or nothing: raises SpoolFull (nothing appended) when the limit or the free-space floor
        would be crossed or the disk is full.  ``allow_over_limit`` lets one write past the size
        limit (the repair record after an overflow, which would otherwise never fit); the
        free-space floor still applies.
        """
        if not items:
            return
        blob = self._encode(items, changes if changes is not None or len(items) > 1 else items[0].changes)
        with self._lock:
            self._check_room(len(blob), allow_over_limit)
            if self._current is None:
                name = os.path.join(self.spool_dir, f"{items[0].record.txid:016x}.log")
                fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
                self._current = (name, fd)
                self._current_size = self._sealed_at = os.fstat(fd).st_size
                self._tail, self._tail_bytes = [], 0
                self._unnamed = name  # its directory entry: fsynced by the next seal()
            name, fd = self._current
            start = os.fstat(fd).st_size
            if start != self._current_size:
                self._tail = None  # bytes we did not append (never expected): the piece is read from the file
            try:
                view = memoryview(blob)
                while view:
                    view = view[os.write(fd, view) :]
                if sync:
                    os.fsync(fd)
                    self._dirty = False
                else:
                    self._dirty = True
            except OSError as exc:
                self._cut(name, fd, start, exc)
                if exc.errno in (errno.ENOSPC, errno.EDQUOT):
                    raise SpoolFull(f"disk full while writing the spool file {name}: {exc.strerror}") from exc
                raise
            self._pending += len(blob)
            self._current_size = start + len(blob)
            if self._tail is not None and self._tail_bytes + len(blob) <= MEMORY_PIECE_BYTES:
                self._tail.append(blob)
                self._tail_bytes += len(blob)
            else:
                self._tail = None

    def _check_room(self, size: int, allow_over_limit: bool) -> None:
        if not allow_over_limit and self._pending + size > self.limit_bytes:
            raise SpoolFull(
                f"spool {self.spool_dir} is at its limit: {self._pending} bytes wait for upload and "
                f"{size} more would exceed {self.limit_bytes} bytes"
            )
        # The free space is asked at most once a second while well above the floor (a statvfs
        # per read pass was 2 % of the readers' CPU with 1,000 databases), every time near it.
        now = time.monotonic()
        if now >= self._free_at + FREE_RECHECK_SECONDS or self._free - size < 2 * self.min_free_bytes:
            st = os.statvfs(self.spool_dir)
            self._free, self._free_at = st.f_bavail * st.f_frsize, now
        free = self._free
        if free - size < self.min_free_bytes:
            raise SpoolFull(
                f"disk almost full: {free} bytes free on the filesystem of {self.spool_dir}; the spool "
                f"keeps at least {self.min_free_bytes} bytes free for the application"
            )
        self._free = free - size

    def has_room(self) -> bool:
        """Room to resume after SpoolFull, with hysteresis (a quarter of the limit, twice the floor)."""
        st = os.statvfs(self.spool_dir)
        free = st.f_bavail * st.f_frsize
        return self._pending <= self.limit_bytes * 3 // 4 and free >= 2 * self.min_free_bytes

    def remeasure(self) -> None:
        """Recount what waits (after replay has cut torn tails off the files found at start)."""
        with self._lock:
            pieces = []
            for p in self._pieces:
                try:
                    end = min(p.end, os.path.getsize(p.path))
                except FileNotFoundError:
                    continue
                if end > p.start:
                    pieces.append(Piece(p.path, p.start, end))
            self._pieces = pieces
            self._pending = sum(p.size for p in pieces) + self._unsealed()

    def _unsealed(self) -> int:
        return self._current_size - self._sealed_at if self._current is not None else 0

    @property
    def pending(self) -> int:
        """Bytes waiting for upload (sealed and being appended), tracked without listing."""
        return self._pending

    def current_bytes(self) -> int:
        """Bytes appended since the last seal (0 when none)."""
        with self._lock:
            return self._unsealed()

    def _cut(self, name: str, fd: int, start: int, exc: OSError) -> None:
        """Undo a failed append, so a later append never follows a torn record (replay would stop
        at the tear and silently drop everything after it).  Shrinking needs no space."""
        try:
            os.ftruncate(fd, start)
            os.fsync(fd)
        except OSError as cut_exc:
            os.close(fd)
            self._current = None
            raise SpoolCorrupted(
                f"could not cut off a failed write to {name} ({exc}; then {cut_exc}); the file's torn "
                "tail will be discarded at the next start, and the daemon repairs the gap there"
            ) from exc

    def flush(self) -> bool:
        """fdatasync what ``append(sync=False)`` wrote; True when there was something to sync.

        The fsync runs outside the lock, on a duplicate descriptor: an fsync can take hundreds of
        milliseconds on a busy disk, and the reading thread appends under the lock while it holds
        a read transaction that an application's checkpoint may be waiting for (sqld's writers
        give up after 100 ms).  Nothing on the reading thread may wait for a disk flush.
        """
        with self._lock:
            if not self._dirty or self._current is None:
                return False
            fd = os.dup(self._current[1])
            self._dirty = False
        try:
            os.fdatasync(fd)  # appends: the new size is data fdatasync flushes
        finally:
            os.close(fd)
        return True

    def seal(self, close: bool = False, group: "SyncGroup | None" = None) -> None:
        """Make what was appended since the last seal one piece, ready to be uploaded as a segment.

        The cut is an offset taken under the lock: the uploader reads a piece's bytes only, all
        written before the cut, so it never reads what the tailing thread is still appending.
        The file is closed (the next append starts a new one) once it holds ``ROLL_BYTES``, or
        with ``close``.  Before this returns the file is fsynced (only durable records are
        uploaded) and, the first time, the spool directory too (the file's name: made by
        append() on the reading thread, which never waits for a disk flush); both outside the
        lock (see ``flush``).  With ``group`` (an upload round of many databases) the flushes
        are the group's: it makes them before anything sealed here is uploaded.
        """
        with self._lock:
            current, dirty, unnamed = self._current, self._dirty, self._unnamed
            self._dirty, self._unnamed = False, None
            if current is None:
                return
            if self._current_size > self._sealed_at:
                memory = b"".join(self._tail) if self._tail is not None else None
                self._pieces.append(Piece(current[0], self._sealed_at, self._current_size, memory))
                self._sealed_at = self._current_size
            self._tail, self._tail_bytes = [], 0
            detach = close or self._current_size >= ROLL_BYTES
            if detach:
                self._current = None
                self._current_size = self._sealed_at = 0
                orphan = not any(p.path == current[0] for p in self._pieces)
            fd = current[1] if detach else os.dup(current[1])
        def unflushed() -> None:
            with self._lock:
                self._dirty = self._dirty or dirty
                if unnamed is not None and self._unnamed is None:
                    self._unnamed = unnamed

        try:
            if group is not None:
                if dirty:
                    group.add(fd)
                if unnamed is not None:
                    group.add_path(self.spool_dir)
                group.undo.append(unflushed)
            else:
                if dirty:
                    os.fdatasync(fd)  # appends: the new size is data fdatasync flushes
                if unnamed is not None:
                    fsync_dir(self.spool_dir)
        except BaseException:
            unflushed()
            raise
        finally:
            os.close(fd)
        if detach and orphan:
            os.unlink(current[0])  # every byte of it was uploaded

    def pending_head(self) -> tuple[str, int] | None:
        """(file, offset) where the oldest bytes waiting for upload start (for the lag probe)."""
        with self._lock:
            if self._pieces:
                return self._pieces[0].path, self._pieces[0].start
            if self._current is not None and self._current_size > self._sealed_at:
                return self._current[0], self._sealed_at
            return None

    @property
    def has_pieces(self) -> bool:
        """Anything sealed waits (read without the lock: a hint, see Uploader.round_ready)."""
        return bool(self._pieces)

    def sealed_files(self) -> list[Piece]:
        """The pieces waiting for upload, in txid order."""
        with self._lock:
            return list(self._pieces)

    def _list_pieces(self) -> list[Piece]:
        """Every spool file a previous run left is one piece (its uploaded records are skipped by
        txid); an empty one, created just before a crash, is removed."""
        pieces = []
        for name in sorted(n for n in os.listdir(self.spool_dir) if n.endswith((".log", ".sealed"))):
            path = os.path.join(self.spool_dir, name)
            size = os.path.getsize(path)
            if size:
                pieces.append(Piece(path, 0, size))
            else:
                os.unlink(path)
        return pieces

    def pending_bytes(self) -> int:
        """Bytes in the spool directory's files (uploaded prefixes included)."""
        total = 0
        for n in os.listdir(self.spool_dir):
            try:
                total += os.path.getsize(os.path.join(self.spool_dir, n))
            except FileNotFoundError:
                pass
        return total

    def remove(self, piece: Piece) -> None:
        """An uploaded piece: forgotten, and its file removed once nothing of it waits."""
        with self._lock:
            self._pieces.remove(piece)
            self._pending = max(0, self._pending - piece.size)
            done = (self._current is None or self._current[0] != piece.path) and not any(
                p.path == piece.path for p in self._pieces)
        if done:
            self.sync_log()  # the uploaded point past this file's records is durable first
            os.unlink(piece.path)
        # No directory fsync: a file that comes back after a crash holds only txids at or
        # below the uploaded point, which replay and upload skip (and then remove).

    def renumber(self, offset: int, page_size: int) -> None:
        """Add ``offset`` to every spooled record's txid (a generation begun without the replica
        moving past the txids the replica already holds: engine/daemon/startup.py).  Rare and
        small (what was spooled before the replica first answered, nothing of it uploaded);
        files are rewritten newest first, so a new name never meets one not yet rewritten, and
        each becomes one piece."""
        self.seal(close=True)
        with self._lock:
            paths = list(dict.fromkeys(p.path for p in self._pieces))
        for path in reversed(paths):
            out: list[bytes] = []
            first_txid = None
            for rec in self.iter_raw(path, repair=False):
                records = list(decode_txns(rec.raw, page_size, path))
                for record in records:
                    record.txid += offset
                batch = dataclasses.replace(rec.batch, first_txid=rec.batch.first_txid + offset)
                body = encode_body(batch, b"".join(record.encode() for record in records))
                out.append(spoolfile.frame(body))
                first_txid = batch.first_txid if first_txid is None else first_txid
            if first_txid is not None:
                atomic_write(os.path.join(self.spool_dir, f"{first_txid:016x}.log"), b"".join(out))
            os.unlink(path)
        fsync_dir(self.spool_dir)
        with self._lock:
            self._pieces = self._list_pieces()
        self.remeasure()

    @staticmethod
    def _encode(items: list[SpooledTxn], changes: PageChanges | None) -> bytes:
        first, last = items[0].record, items[-1].record
        position = next((i.position for i in reversed(items) if i.position is not None), None)
        change = next((i.change for i in reversed(items) if i.change is not None), None)
        batch = Batch(position, max(i.through_ts_us for i in items), change, changes, first.txid, len(items),
                      first.commit_ts_us, last.commit_ts_us, last.db_pages, last.db_checksum)
        body = encode_body(batch, b"".join(i.record.encode() for i in items))
        return spoolfile.frame(body)

    iter_raw = staticmethod(spoolfile.iter_raw)
    read_file = staticmethod(spoolfile.read_file)
