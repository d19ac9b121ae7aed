"""Observe SQLite's wal-index (-shm) without taking part in its locking.

Two things are read here: the wal-index header (commit counter ``iChange``, ``mxFrame``, salts,
``nBackfill``) and whether *another process* holds the checkpoint or write lock bytes.  Both are
read through one descriptor that is opened once and never closed while SQLite connections of this
process are open: closing any descriptor of a file drops every POSIX lock the process holds on it,
SQLite's included.  ``F_GETLK`` only reports other processes' locks, so our own read lock never
shows up as a checkpointer.
"""

from __future__ import annotations

import fcntl
import functools
import os
import struct
from typing import NamedTuple

from .fds import close_shared, open_shared

WAL_WRITE_LOCK = 120
WAL_CKPT_LOCK = 121
WAL_RECOVER_LOCK = 122
SHM_HEADER_BYTES = 136
_FLOCK = "hhqqi4x"
_PROBE_WRITE = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, WAL_WRITE_LOCK, 1, 0)
_PROBE_CKPT = struct.pack(_FLOCK, fcntl.F_WRLCK, os.SEEK_SET, WAL_CKPT_LOCK, 1, 0)
_TYPE_BYTES = struct.calcsize("h")
_UNLOCKED = struct.pack("h", fcntl.F_UNLCK)


class ShmHeader(NamedTuple):
    """A wal-index header.  A named tuple: one is built at every observed commit (the observer's
    hot path), where a frozen dataclass's per-field ``object.__setattr__`` showed in profiles."""

    change: int  # iChange: incremented by every commit
    max_frame: int
    db_pages: int
    salts: bytes  # raw salt-1/salt-2 bytes, as in the WAL header
    backfilled: int  # nBackfill
    read_marks: tuple[int, ...]
    page_size: int

    @property
    def salt1(self) -> int:
        return int.from_bytes(self.salts[:4], "big")

    @property
    def salt2(self) -> int:
        return int.from_bytes(self.salts[4:], "big")


_FIRST_COPY = struct.Struct("=8xIBxHII8x8s")  # iChange, isInit, szPage, mxFrame, nPage, (cksum), salts
_BACKFILL_MARKS = struct.Struct("=6I")  # nBackfill, aReadMark[5] at offset 96
_N_PAGE = struct.Struct("=I")  # nPage at offset 20


def parse_shm_header(buf: bytes) -> ShmHeader | None:
    """Decode a consistent wal-index header; None when the two copies disagree or it is not built."""
    fields = commit_fields(buf)
    if fields is None:
        return None
    change, max_frame, salts, page_size = fields
    backfilled, *marks = _BACKFILL_MARKS.unpack_from(buf, 96)
    return ShmHeader(change, max_frame, _N_PAGE.unpack_from(buf, 20)[0], salts, backfilled, tuple(marks), page_size)


def commit_fields(buf: bytes) -> tuple[int, int, bytes, int] | None:
    """``(iChange, mxFrame, salts, page size)`` of a consistent header, or None when the two
    copies disagree or it is not built.

    The observer's parse, once per commit it sees: only what it records, no ShmHeader built.
    """
    if len(buf) < SHM_HEADER_BYTES or buf[0:48] != buf[48:96]:
        return None
    change, is_init, sz, max_frame, _n_page, salts = _FIRST_COPY.unpack_from(buf, 0)
    if not is_init:
        return None
    return change, max_frame, salts, ((sz & 0xFF00) | ((sz & 1) << 16)) or 65536


class ShmObserver:
    """Read-only window on ``<db>-shm``; must outlive every SQLite connection of this process."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd = open_shared(path)  # one descriptor per file per process (engine/sqlite/fds.py)
        self._last: tuple[bytes, ShmHeader | None] = (b"", None)  # one attribute: read by two threads
        # The raw header bytes, for the observer's look at every wake-up: a partial of os.pread
        # is called without a Python frame (each one costs microseconds on a cold cache).
        self.read_header = functools.partial(os.pread, self.fd, SHM_HEADER_BYTES, 0)

    def header(self, attempts: int = 50) -> ShmHeader | None:
        """The current wal-index header (a consistent copy), or None if none could be read.

        Called at every wake-up, so an unchanged header costs one pread and one compare.
        """
        for _ in range(attempts):
            raw = os.pread(self.fd, SHM_HEADER_BYTES, 0)
            last_raw, last = self._last
            if raw == last_raw:
                return last
            hdr = parse_shm_header(raw)
            if hdr is not None:
                self._last = (raw, hdr)
                return hdr
        return None

    def _held_by_other(self, probe: bytes) -> bool:
        # F_GETLK answers with the conflicting lock, or the probe with l_type F_UNLCK (the
        # first field).  Probes are packed once: this runs at most wake-ups of the observer.
        return fcntl.fcntl(self.fd, fcntl.F_GETLK, probe)[:_TYPE_BYTES] != _UNLOCKED

    def checkpointer_waiting(self) -> bool:
        """True while another process holds both the checkpoint and the write lock.

        That is what a FULL/RESTART/TRUNCATE checkpoint looks like while it waits for readers: it
        holds the write lock so no commit can land, and polls our read lock with its busy handler.
        """
        return self._held_by_other(_PROBE_CKPT) and self._held_by_other(_PROBE_WRITE)

    def writer_active(self) -> bool:
        """True while another process holds the write lock (a write transaction is under way)."""
        return self._held_by_other(_PROBE_WRITE)

    def checkpoint_running(self) -> bool:
        return self._held_by_other(_PROBE_CKPT)

    def close(self) -> None:
        close_shared(self.fd)
