"""Read the live database exactly as of one pinned snapshot, without disturbing the application.

Used for the base snapshot of a generation and for reconciling after a gap.  Pages come from WAL
frames of the pinned generation up to the snapshot's mxFrame, else from the database file
through a descriptor the daemon opened once.  Under our read mark no checkpoint can write a newer
version of those file pages (a slot >= 1 mark stops backfill past it; a slot-0 reader stops
backfill altogether), so the result is page-exact for the snapshot.
"""

from __future__ import annotations

import os
import struct
import time
from typing import Callable, Iterator

from ..errors import WalrewindError
from .pin import ReadPin
from .shm import ShmHeader, ShmObserver
from .walfile import FRAME_HEADER_SIZE, WAL_HEADER_SIZE, WalFile, WalPosition

CAPTURE_ATTEMPTS = 5
YIELD_CHECK_PAGES = 512
YIELD_MAX_SECONDS = 10.0
OVERLAY_CHUNK_FRAMES = 256  # frames read at a time to find each page's newest version (1 MB at 4 KiB)

Pages = Callable[[], Iterator[tuple[int, bytes]]]


class CaptureFailed(WalrewindError):
    """The -wal does not hold what the wal-index vouches for (it cannot happen under our read mark)."""


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
        # pgno -> where its newest version up to the snapshot lies in the -wal: offsets, not pages,
        # so a capture over a WAL of any length holds 1-2 small ints per page, never the WAL itself
        overlay: dict[int, int] = {}
        position = WalPosition(snap.salt1, snap.salt2, snap.max_frame, None, page_size)
        header = self.wal.header()
        # A fully backfilled snapshot is all in the database file, which no checkpoint can write
        # while we read (read mark 0 blocks backfill; a higher mark blocks it past the snapshot).
        # Its frames are NOT ours to read: SQLite gives such a read transaction mark 0, which does
        # not stop the next writer from restarting the WAL over them (the overlay used to read the
        # overwritten pages lazily: a capture later than its snapshot, unnoticed).
        if header is not None and header.salts == snap.salts and snap.backfilled < snap.max_frame:
            position = WalPosition(header.salt1, header.salt2, 0, header.cksum, page_size, header.big_endian)
            # Frames 1..mxFrame are committed and vouched for by the wal-index, and our read mark
            # (>= 1: not all backfilled) keeps the writer from restarting the WAL over them while we
            # hold the pin.  Only up to the snapshot: what the writer appended since is not ours.
            frame_size = FRAME_HEADER_SIZE + page_size
            for first in range(0, snap.max_frame, OVERLAY_CHUNK_FRAMES):
                count = min(OVERLAY_CHUNK_FRAMES, snap.max_frame - first)
                buf = self.wal.read_at(WAL_HEADER_SIZE + first * frame_size, count * frame_size)
                if len(buf) < count * frame_size or buf[8:16] != snap.salts:
                    raise CaptureFailed(f"the -wal is shorter than the wal-index says ({snap.max_frame} frames)")
                for i in range(count):
                    overlay[int.from_bytes(buf[i * frame_size : i * frame_size + 4], "big")] = (
                        WAL_HEADER_SIZE + (first + i) * frame_size + FRAME_HEADER_SIZE)
                if first + count == snap.max_frame:  # the snapshot's own frame: its running checksum
                    cksum = struct.unpack_from(">2I", buf, (count - 1) * frame_size + 16)
                    position = WalPosition(snap.salt1, snap.salt2, snap.max_frame, cksum, page_size,
                                           header.big_endian)

        def pages() -> Iterator[tuple[int, bytes]]:
            for pgno in range(1, db_pages + 1):
                if self._yields and pgno % YIELD_CHECK_PAGES == 0 and self.shm.checkpointer_waiting():
                    raise CheckpointerWaiting()
                at = overlay.get(pgno)
                if at is not None:
                    data = self.wal.read_at(at, page_size)
                else:
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
