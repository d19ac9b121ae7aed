"""Read the live database exactly as of one pinned snapshot, without disturbing the application.

Used for the base snapshot of a generation and for reconciling after a gap.  Pages come from WAL
frames of the pinned generation up to the snapshot's mxFrame, else from the database file
through a descriptor the daemon opened once.  Under our read mark no checkpoint can write a newer
version of those file pages (a slot >= 1 mark stops backfill past it; a slot-0 reader stops
backfill altogether), so the result is page-exact for the snapshot.
"""

from __future__ import annotations

import os
import time
from typing import Callable, Iterator

from ..errors import WalrewindError
from .pin import ReadPin
from .shm import ShmHeader, ShmObserver
from .walfile import WalFile, WalPosition

CAPTURE_ATTEMPTS = 5
YIELD_CHECK_PAGES = 512
YIELD_MAX_SECONDS = 10.0

Pages = Callable[[], Iterator[tuple[int, bytes]]]


class CheckpointerWaiting(WalrewindError):
    """Raised inside a full-database scan when an application checkpoint waits for our pin."""


class PinnedReader:
    def __init__(self, pin: ReadPin, shm: ShmObserver, wal: WalFile, db_fd: int, stats) -> None:
        self.pin = pin
        self.shm = shm
        self.wal = wal
        self.db_fd = db_fd
        self.stats = stats
        self._yields = True

    def capture(self) -> tuple[ShmHeader, WalPosition, int, int, Pages]:
        """Pin a snapshot; return (header, WAL position, page size, page count, page iterator).

        The iterator must be consumed while the pin is held.
        """
        snap = self.pin.acquire(self.shm)
        assert snap is not None
        page_size = self.pin.pragma("page_size")
        db_pages = self.pin.pragma("page_count")
        overlay: dict[int, bytes] = {}
        position = WalPosition(snap.salt1, snap.salt2, snap.max_frame, None, page_size)
        header = self.wal.header()
        if header is not None and header.salts == snap.salts:
            start = WalPosition(header.salt1, header.salt2, 0, header.cksum, page_size, header.big_endian)
            position = start if snap.max_frame == 0 else position
            # Only up to the snapshot: what the writer appended since is not ours to overlay, and
            # reading it would make a capture under a busy writer slower the longer the WAL is.
            for txn in self.wal.read(None, published=(snap.salts, snap.max_frame), vouched=True).transactions:
                if txn.end.frame > snap.max_frame:
                    break
                overlay.update(txn.pages)
                if txn.end.frame == snap.max_frame:
                    position = txn.end

        def pages() -> Iterator[tuple[int, bytes]]:
            for pgno in range(1, db_pages + 1):
                if self._yields and pgno % YIELD_CHECK_PAGES == 0 and self.shm.checkpointer_waiting():
                    raise CheckpointerWaiting()
                data = overlay.get(pgno)
                if data is None:
                    data = os.pread(self.db_fd, page_size, (pgno - 1) * page_size)
                    if len(data) < page_size:
                        data = data + bytes(page_size - len(data))
                yield pgno, data

        return snap, position, page_size, db_pages, pages

    def under_snapshot(self, work):
        """Run ``work(*capture())`` while pinned, starting over if an app checkpoint needs us gone.

        A full scan can take seconds; holding the pin that long would make an application's
        TRUNCATE checkpoint wait for its busy timeout.  The last attempt holds on regardless
        rather than never finishing.
        """
        for attempt in range(CAPTURE_ATTEMPTS):
            self._yields = attempt < CAPTURE_ATTEMPTS - 1
            try:
                return work(*self.capture())
            except CheckpointerWaiting:
                self.pin.release()
                self.stats.yields += 1
                deadline = time.monotonic() + YIELD_MAX_SECONDS
                while self.shm.checkpoint_running() and time.monotonic() < deadline:
                    time.sleep(0.001)
        raise AssertionError("unreachable: the last attempt never yields")
