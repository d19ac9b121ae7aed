"""The whole-database checksum recorded with every transaction.

``db_checksum = XOR over pages p in 1..n of H(p, page_p)`` where H is a 64-bit BLAKE2b keyed by
the page number.  XOR makes it incremental (a transaction touching k pages costs k hashes, not n)
while the page number in H makes moved or swapped pages count.  A restore recomputes it over the
file it wrote, so any missing, stale or misplaced page is caught before the file is handed over.
"""

from __future__ import annotations

import hashlib
import struct
import sys
from array import array
from typing import Iterable, Sequence, Tuple

_PERSON = struct.Struct("<Q")

PageChanges = Tuple[array, array]  # (pgnos array('I'), hashes array('Q')), in the order they were set


def new_changes() -> PageChanges:
    return array("I"), array("Q")


def page_hash(pgno: int, data: bytes) -> int:
    return int.from_bytes(hashlib.blake2b(data, digest_size=8, person=_PERSON.pack(pgno)).digest(), "little")


def checksum_pages(pages: Iterable[tuple[int, bytes]]) -> int:
    acc = 0
    for pgno, data in pages:
        acc ^= page_hash(pgno, data)
    return acc


def checksum_file(path: str, page_size: int, progress=None) -> int:
    """Checksum of a database file as it sits on disk (used to verify restores)."""
    acc = 0
    pgno = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(page_size * 256)
            if not chunk:
                break
            for off in range(0, len(chunk), page_size):
                pgno += 1
                acc ^= page_hash(pgno, chunk[off : off + page_size])
            if progress:
                progress(len(chunk))
    return acc


class PageHashes:
    """Per-page hashes of the replicated state, updated transaction by transaction."""

    def __init__(self, page_size: int, hashes: array | None = None, checksum: int = 0) -> None:
        self.page_size = page_size
        self.hashes = hashes if hashes is not None else array("Q", [0])  # index 0 unused
        self.checksum = checksum
        self._zero_page = bytes(page_size)

    @property
    def db_pages(self) -> int:
        return len(self.hashes) - 1

    def resize(self, db_pages: int) -> None:
        """Grow with zero pages (what a sparse extension reads back) or drop truncated pages."""
        current = self.db_pages
        if db_pages > current:
            for pgno in range(current + 1, db_pages + 1):
                h = page_hash(pgno, self._zero_page)
                self.hashes.append(h)
                self.checksum ^= h
        elif db_pages < current:
            for pgno in range(db_pages + 1, current + 1):
                self.checksum ^= self.hashes[pgno]
            del self.hashes[db_pages + 1 :]

    def set_page(self, pgno: int, data: bytes) -> None:
        if pgno > self.db_pages:
            self.resize(pgno)
        h = page_hash(pgno, data)
        self.checksum ^= self.hashes[pgno] ^ h
        self.hashes[pgno] = h

    def apply(self, pages: dict[int, bytes], db_pages: int, changes: PageChanges | None = None) -> int:
        """Apply one transaction; returns the database checksum after it.

        Pages the transaction appends are hashed once, with their content (growing through
        zero pages first would hash every new page twice: half the daemon's hashing under a
        growing database).  Only gaps it does not write read back as zero pages.

        ``changes``, when given, receives every (pgno, hash) set, appended pages first in
        ascending order: :meth:`apply_changes` replays them elsewhere without hashing a page
        again (the uploader's copy of the hashes, the hashes log).
        """
        current = self.db_pages
        pgnos, hashes = changes if changes is not None else (None, None)
        if db_pages > current:
            for pgno in range(current + 1, db_pages + 1):
                h = page_hash(pgno, pages.get(pgno, self._zero_page))
                self.hashes.append(h)
                self.checksum ^= h
                if pgnos is not None:
                    pgnos.append(pgno)
                    hashes.append(h)
        else:
            self.resize(db_pages)
            current = db_pages
        for pgno, data in pages.items():
            if pgno <= current:
                h = page_hash(pgno, data)
                self.checksum ^= self.hashes[pgno] ^ h
                self.hashes[pgno] = h
                if pgnos is not None:
                    pgnos.append(pgno)
                    hashes.append(h)
        return self.checksum

    def apply_changes(self, pgnos: Sequence[int], hashes: Sequence[int], db_pages: int) -> int:
        """Replay what :meth:`apply` recorded (or a net change, see ``net_changes``): truncate to
        ``db_pages`` if smaller, then set each page's hash, appending the pages past the end
        (they come in ascending order).  Returns the database checksum after it."""
        if db_pages < self.db_pages:
            self.resize(db_pages)
        table = self.hashes
        acc = self.checksum
        for pgno, h in zip(pgnos, hashes):
            if pgno < len(table):
                acc ^= table[pgno] ^ h
                table[pgno] = h
            elif pgno == len(table):
                table.append(h)
                acc ^= h
            else:
                raise ValueError(f"page {pgno} changed past the end ({len(table) - 1} pages) without the pages before it")
        self.checksum = acc
        if self.db_pages != db_pages:
            raise ValueError(f"page changes end at {self.db_pages} pages, the transaction at {db_pages}")
        return acc

    def net_changes(self, touched: Iterable[int]) -> PageChanges:
        """(pgnos, hashes) of the ``touched`` pages that exist now, ascending: applied to the
        state before those changes with :meth:`apply_changes`, they give this state."""
        pgnos, hashes = new_changes()
        table = self.hashes
        for pgno in sorted(touched):
            if pgno < len(table):
                pgnos.append(pgno)
                hashes.append(table[pgno])
        return pgnos, hashes

    def differs(self, pgno: int, data: bytes) -> bool:
        return pgno > self.db_pages or self.hashes[pgno] != page_hash(pgno, data)

    def copy(self) -> "PageHashes":
        return PageHashes(self.page_size, array("Q", self.hashes), self.checksum)

    def to_bytes(self) -> bytes:
        body = array("Q", self.hashes)
        if sys.byteorder == "big":
            body.byteswap()  # the file is little-endian everywhere
        return struct.pack("<IQ", self.page_size, self.checksum) + body.tobytes()

    @classmethod
    def from_bytes(cls, blob: bytes) -> "PageHashes":
        page_size, checksum = struct.unpack_from("<IQ", blob, 0)
        hashes = array("Q")
        hashes.frombytes(blob[12:])
        if sys.byteorder == "big":
            hashes.byteswap()
        return cls(page_size, hashes, checksum)
