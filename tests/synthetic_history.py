"""Build a replica directly with format.py: long histories in seconds, no daemon, no clock.

The database is a real SQLite file (so restores pass ``quick_check``) holding one large blob; its
overflow pages are opaque to SQLite apart from the 4-byte next-page pointer, so transactions can
rewrite the rest of 1-2 such pages with new (compressible, seeded) content and the file stays a
valid database.  Every record carries the correct incremental database checksum, so a restore
verifies exactly as it does for daemon-written history.  Used by tests/test_compaction.py and
benchmarks/compaction_bench.py.
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass

from walrewind.engine import layout
from walrewind.engine.dbhash import checksum_file, page_hash
from walrewind.engine.format import SnapshotWriter, TxnRecord, encode_segment
from walrewind.engine.storage import open_storage

PAGE_SIZE = 4096
_FILL = 0xAB


@dataclass
class History:
    replica: str
    generation: str
    snapshot_txid: int
    snapshot_ts_us: int
    points: list[tuple[int, int, int]]  # (txid, commit_ts_us, db_checksum) of every record, in order
    segments: int


def _base_db(path: str, blob_pages: int) -> None:
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=DELETE")
    conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, body BLOB)")
    conn.execute("INSERT INTO t VALUES (1, ?)", (bytes([_FILL]) * (blob_pages * (PAGE_SIZE - 4)),))
    conn.commit()
    conn.close()


def _vocabulary(rng: random.Random) -> list[bytes]:
    words = [bytes(rng.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rng.randint(3, 9))) for _ in range(400)]
    blocks = []
    for _ in range(64):
        text = b" ".join(rng.choice(words) for _ in range(900))
        blocks.append((text * 2)[: PAGE_SIZE - 4])
    return blocks


def build_history(
    replica: str,
    seconds: int,
    txn_per_segment: int = 100,
    start_us: int = 1_700_000_000_000_000,
    seed: int = 1,
    blob_pages: int = 1000,
    progress=None,
) -> History:
    """One snapshot at ``start_us``, then one segment per second of ``txn_per_segment`` records
    (evenly spaced commit times), each record rewriting 1-2 overflow pages."""
    rng = random.Random(seed)
    storage = open_storage(replica)
    gen = f"{start_us:016x}-{rng.getrandbits(32):08x}"
    db_id = uuid.UUID(int=rng.getrandbits(128)).hex
    with tempfile.TemporaryDirectory(prefix="walrewind-synth-") as tmp:
        db = os.path.join(tmp, "base.db")
        _base_db(db, blob_pages)
        pages: dict[int, bytes] = {}
        with open(db, "rb") as f:
            data = f.read()
        db_pages = len(data) // PAGE_SIZE
        for p in range(db_pages):
            pages[p + 1] = data[p * PAGE_SIZE : (p + 1) * PAGE_SIZE]
        overflow = [p for p, d in pages.items() if d[4:] == bytes([_FILL]) * (PAGE_SIZE - 4)]
        checksum = checksum_file(db, PAGE_SIZE)
        snap_txid = 1
        writer = SnapshotWriter(os.path.join(tmp, "snap"))
        writer.add_pages(data)
        writer.finish({
            "db_id": db_id, "generation": gen, "txid": snap_txid, "ts_us": start_us, "page_size": PAGE_SIZE,
            "page_count": db_pages, "db_checksum": f"{checksum:016x}", "lease_epoch": 1,
        })
        storage.put_file_if_absent(layout.SnapshotKey(gen, snap_txid, start_us).key, os.path.join(tmp, "snap"))
    hashes = {p: page_hash(p, d) for p, d in pages.items() if p in set(overflow)}
    blocks = _vocabulary(rng)
    points: list[tuple[int, int, int]] = []
    txid = snap_txid
    step = 1_000_000 // txn_per_segment
    for sec in range(seconds):
        records = []
        for n in range(txn_per_segment):
            txid += 1
            ts = start_us + sec * 1_000_000 + 1000 + n * step
            changed: dict[int, bytes] = {}
            for pgno in rng.sample(overflow, rng.choice((1, 2))):
                block = blocks[rng.randrange(len(blocks))]
                off = rng.randrange(0, len(block) - 64)
                body = block[:off] + rng.randbytes(16) + txid.to_bytes(8, "little") + block[off + 24 :]
                page = pages[pgno][:4] + body
                checksum ^= hashes[pgno]
                hashes[pgno] = page_hash(pgno, page)
                checksum ^= hashes[pgno]
                pages[pgno] = page
                changed[pgno] = page
            records.append(TxnRecord(txid, ts, db_pages, 0, checksum, changed))
            points.append((txid, ts, checksum))
        first, last = records[0], records[-1]
        key = layout.SegmentKey(gen, first.txid, last.txid, first.commit_ts_us, last.commit_ts_us)
        header = {"db_id": db_id, "generation": gen, "page_size": PAGE_SIZE, "first_txid": first.txid,
                  "last_txid": last.txid, "through_ts_us": last.commit_ts_us, "lease_epoch": 1}
        storage.put_if_absent(key.key, encode_segment(header, records))
        if progress and (sec + 1) % 300 == 0:
            progress(sec + 1, seconds)
    return History(replica, gen, snap_txid, start_us, points, seconds)
