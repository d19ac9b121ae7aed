"""A restored database file moved forward transaction by transaction, and back again.

``walrewind bisect`` (bisect.py) looks at many states of one history.  Restoring each of them from
the snapshot would read and write the whole database per look; instead one verified restore
becomes the *base*, a probe applies the records after it in txid order (docs/FORMAT.md section 5:
entries with ``pgno <= db_pages`` are written, then the size becomes ``db_pages``), and when the
probe is over the new state either becomes the base (``commit``) or is undone (``rollback``).

Undoing is cheap because a probe saves every base page before it first changes or drops it (the
page's *pre-image*, appended to an undo file beside the database, so memory stays small whatever
the database size), and the base's size: a rollback cuts the file to that size and writes the
saved pages back.  Pages the probe added beyond the base's size need no saving; the cut removes
them.  Records reach the file in batches (``advance``): within a batch only the newest version of
a page is written, the smallest size reached is applied as one cut (what docs/FORMAT.md section 5
and replay.py's newest-first argument say the records amount to), and runs of consecutive pages
are read, saved and written with one system call each.

**Verified like a restore.**  ``base`` holds the per-page hashes of the committed state (the
whole-database checksum of docs/FORMAT.md section 4, kept per page by ``PageHashes``).  Applying a
record updates a copy of them with exactly the bytes written to the file and must reproduce the
record's recorded ``db_checksum``, so every state a query runs on carries the same proof a
restored file does.  Every pre-image read from the file is hashed and compared with the base's
hash of that page: a page left stale (a wrong rollback, anything else writing the file) is caught
as soon as a probe touches it, never silently queried.
"""

from __future__ import annotations

import os
from array import array
from typing import Iterable

from ..errors import ObjectCorrupt, VerificationFailed
from ..replica.format import RecordRef, record_pages
from ..sqlite.pagehash import PageHashes
from .pagesink import page_hashes

READ_PAGES = 256  # pages read or written back per system call when hashing, saving or undoing
WRITE_RUN = 512  # consecutive pages per pwritev (below IOV_MAX)
BATCH_PAGES = 8192  # staged pages written out together (32 MiB of 4 KiB pages)...
BATCH_BYTES = 64 << 20  # ...or as soon as they point into this much segment payload


class WorkingCopy:
    """The database file at ``path``, at transaction ``txid``; see the module docstring."""

    def __init__(self, path: str, page_size: int, hashes: PageHashes, txid: int, commit_us: int,
                 undo_path: str) -> None:
        self.path, self.page_size = path, page_size
        self.fd = os.open(path, os.O_RDWR)
        self.undo_fd = os.open(undo_path, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o600)
        self.undo_path = undo_path
        self.base = hashes  # the committed state's page hashes: they mirror the file
        self.base_txid, self.base_commit_us = txid, commit_us
        self._work: PageHashes | None = None  # the probe's hashes (None: no record applied since the base)
        self.txid, self.commit_us, self.flags = txid, commit_us, 0
        self._saved: set[int] = set()  # base pages whose pre-image is in the undo file
        self._pending: dict[int, memoryview] = {}  # staged newest page versions, not yet written
        self._refs: set[int] = set()  # segment payloads the staged pages point into
        self._pending_bytes = 0
        self._file_pages = self._cut = hashes.db_pages  # the file's size; the smallest size staged since
        self._undo: list[int] = []  # page numbers in undo-file order
        self.records_applied = 0
        self.pages_saved = 0

    @classmethod
    def from_restored(cls, path: str, page_size: int, checksum: int, txid: int, commit_us: int,
                      undo_path: str) -> "WorkingCopy":
        """Hash a freshly restored file once; its pages must XOR to the checksum the restore verified."""
        hashes = array("Q", [0])
        with open(path, "rb", buffering=0) as f:
            while chunk := f.read(READ_PAGES * page_size):
                if len(chunk) % page_size:
                    raise VerificationFailed(f"{path}: size is not a whole number of {page_size}-byte pages")
                hashes.extend(page_hashes(len(hashes), chunk, page_size))
        own = 0
        for h in hashes:
            own ^= h
        if own != checksum:
            raise VerificationFailed(f"{path}: pages have checksum {own:016x}, the restore verified {checksum:016x}")
        return cls(path, page_size, PageHashes(page_size, hashes, own), txid, commit_us, undo_path)

    # ------------------------------------------------------------------------------ state
    @property
    def hashes(self) -> PageHashes:
        return self._work if self._work is not None else self.base

    @property
    def checksum(self) -> int:
        return self.hashes.checksum

    @property
    def db_pages(self) -> int:
        return self.hashes.db_pages

    # ------------------------------------------------------------------------------ forward
    def advance(self, records: Iterable[tuple[RecordRef, memoryview, str]]) -> int:
        """Apply records in txid order (each verified); returns how many were applied.

        Each record is applied to the page hashes at once (its checksum is checked right there),
        but the file is written in batches: only the newest version of each page in a batch
        reaches the file, base pages are saved in runs before they change, and writes of
        consecutive pages go out in one call.  A batch ends every ``BATCH_PAGES`` staged pages or
        ``BATCH_BYTES`` of segment payload it refers to, so memory stays bounded.
        """
        n = 0
        for rec, raw, name in records:
            self.stage(rec, raw, name)
            n += 1
            if len(self._pending) >= BATCH_PAGES or self._pending_bytes >= BATCH_BYTES:
                self.flush()
        self.flush()
        return n

    def stage(self, rec: RecordRef, raw: memoryview, name: str) -> None:
        """Apply the next record (txid ``self.txid + 1``) of segment ``name`` to the hashes, check
        its checksum, and queue its pages for the file (``flush`` writes them)."""
        if rec.txid != self.txid + 1:
            raise ObjectCorrupt(f"{name}: history jumps from txid {self.txid} to {rec.txid}")
        if self._work is None:
            self._work = self.base.copy()
        new = rec.db_pages
        if new < self._work.db_pages:  # pages above the new size are gone, queued versions included
            self._cut = min(self._cut, new)
            for pgno in [p for p in self._pending if p > new]:
                del self._pending[pgno]
        pages = {pgno: data for pgno, data in record_pages(raw, rec, self.page_size) if 1 <= pgno <= new}
        got = self._work.apply(pages, new)  # type: ignore[arg-type]  (memoryviews hash like bytes)
        if got != rec.db_checksum:
            raise VerificationFailed(
                f"verification failed: {name}: the database after transaction {rec.txid} has checksum {got:016x}, "
                f"not the recorded {rec.db_checksum:016x}")
        self._pending.update(pages)
        if id(raw.obj) not in self._refs:
            self._refs.add(id(raw.obj))
            self._pending_bytes += len(raw)
        self.txid, self.commit_us, self.flags = rec.txid, rec.commit_ts_us, rec.flags
        self.records_applied += 1

    def flush(self) -> None:
        """Bring the file to the staged state: save what changes, cut, grow, write the pages."""
        if self._work is None:
            return
        ps, fd = self.page_size, self.fd
        final, cut, had = self._work.db_pages, self._cut, self._file_pages
        base_pages = self.base.db_pages
        changing = [p for p in self._pending if p <= base_pages and p not in self._saved]
        changing.extend(p for p in range(cut + 1, min(had, base_pages) + 1) if p not in self._saved)
        self._save(sorted(set(changing)))
        if cut < had:
            os.ftruncate(fd, cut * ps)
        if final != min(cut, had):
            os.ftruncate(fd, final * ps)  # pages not written below read back as zeros
        run: list[memoryview] = []
        first = prev = 0
        for pgno in sorted(self._pending):
            if run and (pgno != prev + 1 or len(run) >= WRITE_RUN):
                os.pwritev(fd, run, (first - 1) * ps)
                run = []
            if not run:
                first = pgno
            run.append(self._pending[pgno])
            prev = pgno
        if run:
            os.pwritev(fd, run, (first - 1) * ps)
        self._pending.clear()
        self._refs.clear()
        self._pending_bytes = 0
        self._cut = self._file_pages = final

    def _save(self, pgnos: list[int]) -> None:
        """Append the pre-images of base pages ``pgnos`` (sorted, unsaved) to the undo file, in runs,
        each checked against the base's hash: the file must still be the base there."""
        ps = self.page_size
        i = 0
        while i < len(pgnos):
            j = i
            while j + 1 < len(pgnos) and pgnos[j + 1] == pgnos[j] + 1 and j + 1 - i < READ_PAGES:
                j += 1
            lo, hi = pgnos[i], pgnos[j]
            data = os.pread(self.fd, (hi - lo + 1) * ps, (lo - 1) * ps)
            if len(data) != (hi - lo + 1) * ps:
                raise VerificationFailed(f"{self.path}: working copy is shorter than {hi} pages (changed under bisect?)")
            for k, h in enumerate(page_hashes(lo, data, ps)):
                if h != self.base.hashes[lo + k]:
                    raise VerificationFailed(
                        f"{self.path}: page {lo + k} of the working copy is not the page of txid {self.base_txid} "
                        "it should be (stale page or the file was changed under bisect); refusing to query it")
            os.write(self.undo_fd, data)
            self._undo.extend(range(lo, hi + 1))
            self._saved.update(range(lo, hi + 1))
            self.pages_saved += hi - lo + 1
            i = j + 1

    # ------------------------------------------------------------------------------ keep or undo
    def commit(self) -> None:
        """The current state becomes the base (the probe's result matched)."""
        self.flush()
        if self._work is not None:
            self.base, self._work = self._work, None
        self.base_txid, self.base_commit_us = self.txid, self.commit_us
        self._forget_undo()

    def rollback(self) -> None:
        """Back to the base: cut to its size, write the saved pre-images back."""
        ps = self.page_size
        self._pending.clear()
        self._refs.clear()
        self._pending_bytes = 0
        os.ftruncate(self.fd, self.base.db_pages * ps)
        self._cut = self._file_pages = self.base.db_pages
        off = 0
        while off < len(self._undo):
            batch = self._undo[off : off + READ_PAGES]
            data = os.pread(self.undo_fd, len(batch) * ps, off * ps)
            view = memoryview(data)
            i = 0
            while i < len(batch):  # runs of consecutive page numbers go back in one write
                j = i
                while j + 1 < len(batch) and batch[j + 1] == batch[j] + 1:
                    j += 1
                os.pwrite(self.fd, view[i * ps : (j + 1) * ps], (batch[i] - 1) * ps)
                i = j + 1
            off += len(batch)
        self._work = None
        self.txid, self.commit_us, self.flags = self.base_txid, self.base_commit_us, 0
        self._forget_undo()

    def _forget_undo(self) -> None:
        self._saved.clear()
        self._undo.clear()
        os.ftruncate(self.undo_fd, 0)
        os.lseek(self.undo_fd, 0, os.SEEK_SET)

    def close(self) -> None:
        for fd in (self.fd, self.undo_fd):
            os.close(fd)
