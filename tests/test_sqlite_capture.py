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


WRITE_AND_LEAVE = """
import os, sqlite3, sys
con = sqlite3.connect(sys.argv[1], isolation_level=None)
con.execute("PRAGMA journal_mode=WAL")
con.execute("PRAGMA wal_autocheckpoint=0")
con.execute("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY, v BLOB)")
con.execute("BEGIN")
for i in range(200):
    con.execute("INSERT OR REPLACE INTO t VALUES (?, ?)", (i, bytes([int(sys.argv[2])]) * 3000))
con.execute("COMMIT")
if sys.argv[3] == "checkpoint":
    assert con.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()[0] == 0
os._exit(0)  # no close: the -wal and the -shm stay as they are
"""
CONTENT = """
import hashlib, sqlite3, sys
con = sqlite3.connect(sys.argv[1])
print(hashlib.sha256(repr(con.execute("SELECT id, v FROM t ORDER BY id").fetchall()).encode()).hexdigest())
"""


def _py(code: str, *args: str) -> str:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, check=True).stdout.strip()


def test_a_capture_of_a_fully_backfilled_wal_reads_the_database_file_only(tmp_path):
    """A snapshot whose WAL is fully checkpointed gets read mark 0, which does not stop the next
    writer from restarting the WAL over those frames: the capture must not read them (it read
    pages the writer had since overwritten, later than the snapshot, and said nothing)."""
    db = str(tmp_path / "app.db")
    _py(WRITE_AND_LEAVE, db, "0", "no")
    pin = ReadPin(db)
    shm = ShmObserver(db + "-shm")
    fd = os.open(db, os.O_RDONLY)
    try:
        pin.acquire(shm)  # this process now has the database open: the -shm outlives the writers
        pin.release()
        _py(WRITE_AND_LEAVE, db, "1", "checkpoint")  # every frame backfilled
        reader = PinnedReader(pin, shm, WalFile(db + "-wal"), fd, SimpleNamespace(yields=0))
        snap, _position, page_size, db_pages, pages = reader.capture()
        assert snap.max_frame > 0 and snap.backfilled == snap.max_frame
        want = _py(CONTENT, db)
        _py(WRITE_AND_LEAVE, db, "2", "no")  # restarts the WAL (no reader past mark 0) over the same frames
        out = str(tmp_path / "captured.db")
        with open(out, "wb") as f:
            for _pgno, data in pages():
                f.write(data)
        assert _py(CONTENT, out) == want
    finally:
        pin.release()
        os.close(fd)
