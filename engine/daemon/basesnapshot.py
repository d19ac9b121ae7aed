"""A new generation's base snapshot: every page of the live database as of one pinned point.

Written, compressed, to a local file under the read transaction that fixes the point (through
engine/sqlite/capture.py, which yields to an application checkpoint and starts over); the page
hashes of that state come out of the same pass.  The daemon keeps the read transaction after
this returns, so the WAL still holds every later commit while the snapshot is uploaded.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from ..replica import layout
from ..replica.format import SnapshotWriter
from ..sqlite.capture import PinnedReader
from ..sqlite.pagehash import PageHashes
from ..sqlite.shm import ShmHeader
from ..sqlite.walfile import WalPosition
from . import clock

log = logging.getLogger("walrewind.shipper")
PAGES_PER_WRITE = 256


@dataclass
class BaseSnapshot:
    snap: ShmHeader  # the wal-index header of the pinned point
    position: WalPosition
    page_size: int
    db_pages: int
    ts: int
    generation: str
    hashes: PageHashes
    writer: SnapshotWriter  # pages written; ``finish(header)`` completes the file
    header: dict


def write_base_snapshot(pinned_reader: PinnedReader, tmp: str, db_id: str, base_txid: int) -> BaseSnapshot:
    def write(snap, position, page_size, db_pages, pages) -> BaseSnapshot:
        ts = clock.now_us()
        generation = layout.new_generation_id(ts)
        hashes = PageHashes(page_size)
        header = {
            "db_id": db_id,
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
                if len(batch) == PAGES_PER_WRITE:
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
        return BaseSnapshot(snap, position, page_size, db_pages, ts, generation, hashes, writer, header)

    return pinned_reader.under_snapshot(write)
