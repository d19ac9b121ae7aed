"""The file a restore writes: every page written at most once, checksummed as it is written.

Records are applied newest-first (restorer.py explains why that is exact), so the first version
of a page that reaches the file is its final one; ``PageBitmap`` remembers which pages are
already there (one bit per page: 32 KiB per GiB of 4 KiB pages).  The whole-database checksum
(docs/FORMAT.md section 4) is accumulated over exactly the bytes written, plus the all-zero pages
nothing supplies, so verifying a restore never reads the file back.  A background thread calls
``fdatasync`` every ``FLUSH_BYTES`` so write-back overlaps the download instead of all of it
waiting for the final ``fsync``.
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from functools import reduce
from operator import xor
from typing import Iterable

FLUSH_BYTES = 64 << 20
_PERSON = struct.Struct("<Q")


def page_hashes(first_pgno: int, data: bytes | memoryview, page_size: int) -> list[int]:
    """``pagehash.page_hash`` of each page of ``data`` (pages ``first_pgno``...), in order.

    One C call per page is the format's definition (the page number personalises the hash);
    hashlib releases the GIL while hashing a page of 2 KiB or more, so two threads overlap.
    """
    view = memoryview(data)
    blake2b, pack, from_bytes = hashlib.blake2b, _PERSON.pack, int.from_bytes
    return [
        from_bytes(blake2b(view[off : off + page_size], digest_size=8, person=pack(first_pgno + i)).digest(), "little")
        for i, off in enumerate(range(0, len(view), page_size))
    ]


class PageBitmap:
    """One bit per page number (1-based): set when the page's final version has been written."""

    def __init__(self, pages: int) -> None:
        self.bits = bytearray((pages + 8) // 8 + 1)

    def _grow(self, pgno: int) -> None:
        if pgno // 8 >= len(self.bits):
            self.bits.extend(bytes(pgno // 8 + 1 - len(self.bits)))

    def test_and_set(self, pgno: int) -> bool:
        """True if ``pgno`` was already set; sets it either way."""
        self._grow(pgno)
        byte, bit = pgno >> 3, 1 << (pgno & 7)
        was = self.bits[byte] & bit
        self.bits[byte] |= bit
        return bool(was)

    def is_set(self, pgno: int) -> bool:
        byte = pgno >> 3
        return byte < len(self.bits) and bool(self.bits[byte] & (1 << (pgno & 7)))

    def free_runs(self, lo: int, hi: int) -> list[tuple[int, int]]:
        """Maximal runs ``(a, b)`` of unset page numbers within ``lo..hi`` (inclusive)."""
        if hi < lo:
            return []
        first, last = lo >> 3, hi >> 3
        if first >= len(self.bits) or not any(self.bits[first : last + 1]):
            return [(lo, hi)]
        runs: list[tuple[int, int]] = []
        start = None
        for pgno in range(lo, hi + 1):
            if self.is_set(pgno):
                if start is not None:
                    runs.append((start, pgno - 1))
                    start = None
            elif start is None:
                start = pgno
        if start is not None:
            runs.append((start, hi))
        return runs


class _Flusher(threading.Thread):
    """``fdatasync`` in the background once enough has been written since the last one."""

    def __init__(self, fd: int, every: int) -> None:
        super().__init__(name="walrewind-flush", daemon=True)
        self.fd, self.every = fd, every
        self._cond = threading.Condition()
        self._pending = 0
        self._stopping = False
        self.error: OSError | None = None

    def wrote(self, n: int) -> None:
        with self._cond:
            self._pending += n
            if self._pending >= self.every:
                self._cond.notify()

    def run(self) -> None:
        while True:
            with self._cond:
                while not self._stopping and self._pending < self.every:
                    self._cond.wait()
                if self._stopping:
                    return
                self._pending = 0
            try:
                os.fdatasync(self.fd)
            except OSError as exc:  # the final fsync reports it again
                self.error = exc
                return

    def stop(self) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify()
        self.join()


class PageSink:
    """Pages into ``fd`` at ``(pgno - 1) * page_size``; ``checksum`` is the XOR of their hashes."""

    def __init__(self, fd: int, page_size: int, flush_bytes: int = FLUSH_BYTES) -> None:
        self.fd = fd
        self.page_size = page_size
        self.bitmap = PageBitmap(0)
        self.checksum = 0
        self.pages_written = 0
        self._lock = threading.Lock()  # checksum and counters: blocks may be written from two threads
        self._flusher = _Flusher(fd, flush_bytes) if flush_bytes else None
        if self._flusher is not None:
            self._flusher.start()

    def write_record_pages(self, pages: Iterable[tuple[int, memoryview]], limit: int) -> None:
        """A record's pages, newest record first: each page number at most once, never above
        ``limit`` (the smallest database size from this record to the target, see restorer.py)."""
        ps, fd = self.page_size, self.fd
        acc, n = 0, 0
        for pgno, data in pages:
            if pgno > limit or pgno < 1 or self.bitmap.test_and_set(pgno):
                continue
            os.pwrite(fd, data, (pgno - 1) * ps)
            acc ^= page_hashes(pgno, data, ps)[0]
            n += 1
        self._count(acc, n)

    def write_block(self, first_pgno: int, data: bytes, limit: int) -> int:
        """Pages ``first_pgno...`` of a snapshot: writes those not yet written and ``<= limit``;
        returns the XOR of the hashes of *all* of them (the snapshot's own checksum)."""
        ps = self.page_size
        hashes = page_hashes(first_pgno, data, ps)
        last = min(first_pgno + len(hashes) - 1, limit)
        acc, n = 0, 0
        view = memoryview(data)
        for a, b in self.bitmap.free_runs(first_pgno, last):
            os.pwrite(self.fd, view[(a - first_pgno) * ps : (b - first_pgno + 1) * ps], (a - 1) * ps)
            acc ^= reduce(xor, hashes[a - first_pgno : b - first_pgno + 1], 0)
            n += b - a + 1
        self._count(acc, n)
        return reduce(xor, hashes, 0)

    def _count(self, acc: int, n: int) -> None:
        with self._lock:
            self.checksum ^= acc
            self.pages_written += n
        if self._flusher is not None and n:
            self._flusher.wrote(n * self.page_size)

    def add_zero_pages(self, lo: int, hi: int) -> None:
        """Count the pages ``lo..hi`` that nothing wrote as all-zero pages (what the sparse file
        reads back: a database that shrank and grew again without rewriting them)."""
        zero = bytes(self.page_size)
        for pgno in range(lo, hi + 1):
            if not self.bitmap.is_set(pgno):
                self.checksum ^= page_hashes(pgno, zero, self.page_size)[0]

    def close(self) -> None:
        """Stop the background flusher (the caller then fsyncs and closes the file)."""
        if self._flusher is not None:
            self._flusher.stop()
            self._flusher = None
