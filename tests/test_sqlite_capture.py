"""engine/sqlite/capture.py: reading the live database as of the pinned read transaction.

A capture (a generation's base snapshot, a reconcile) overlays the newest version of each page in
the -wal up to the snapshot on the database file.  It keeps where those versions lie, not the
pages, so its memory does not grow with the WAL (a WAL the app never checkpoints can be 1 GB).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tracemalloc
from types import SimpleNamespace

from harness import create_db, run_writer
from walrewind.engine.sqlite.capture import PinnedReader
from walrewind.engine.sqlite.pagehash import checksum_pages
from walrewind.engine.sqlite.pin import ReadPin
from walrewind.engine.sqlite.shm import ShmObserver
from walrewind.engine.sqlite.walfile import WalFile

LOGICAL_CHECKSUM = """
import sqlite3, sys
from walrewind.engine.sqlite.pagehash import checksum_pages
con = sqlite3.connect(sys.argv[1])
image = con.serialize()
ps = con.execute("pragma page_size").fetchone()[0]
print(f"{checksum_pages((i // ps + 1, image[i:i + ps]) for i in range(0, len(image), ps)):016x}")
"""


def test_a_capture_over_a_long_wal_is_exact_and_holds_offsets_not_pages(tmp_path):
    db = str(tmp_path / "app.db")
    create_db(db)
    # the writer is killed after its last commit, mid-transaction: its WAL (with an uncommitted
    # tail past the wal-index's mxFrame) and -shm stay, as after any crash of the application
    run_writer({"db": db, "txns": 400, "rate": 0, "row_bytes": 16000, "autocheckpoint": 0, "seed": 5,
                "die_at": 300, "log": os.devnull}, check=False)
    pin = ReadPin(db)
    shm = ShmObserver(db + "-shm")
    fd = os.open(db, os.O_RDONLY)
    try:
        wal_bytes = os.path.getsize(db + "-wal")
        assert wal_bytes > 12 << 20
        reader = PinnedReader(pin, shm, WalFile(db + "-wal"), fd, SimpleNamespace(yields=0))
        tracemalloc.start()
        try:
            snap, position, page_size, db_pages, pages = reader.capture()
            got = checksum_pages(pages())
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        assert position.frame == snap.max_frame > 0 and position.cksum is not None
        assert peak < 4 << 20, f"{peak} bytes traced over a {wal_bytes}-byte WAL"
        pin.release()
        want = subprocess.run([sys.executable, "-c", LOGICAL_CHECKSUM, db], capture_output=True, text=True,
                              check=True).stdout.strip()
        assert f"{got:016x}" == want  # the database as SQLite itself sees it (file + WAL)
    finally:
        pin.release()
        os.close(fd)
