"""Synthetic replica history, written straight with the format encoders (no daemon, no real time).

Used by tests/test_maintenance_scheduler.py, tests/test_maintenance_compaction.py, benchmarks/history_growth.py and
benchmarks/compaction_bench.py to get hours of history in seconds.  The database is a real SQLite file image (built in memory with the stdlib sqlite3, never
a file, so no second SQLite library opens anything the daemon might): a table of JSON-ish text
rows with an index.  Transactions are in-place UPDATEs of a counter inside a row's text
("v=NNNNNNNN", same length), so every page image stays a valid b-tree page and restores pass
``quick_check`` / ``integrity_check``; every ``grow_every_s`` simulated seconds a real INSERT runs
on a deserialized copy and the changed pages become one transaction, so the database grows slowly.
Every record carries the correct whole-database checksum (engine/dbhash), so restores verify.
"""

from __future__ import annotations

import os
import random
import sqlite3
import tempfile
import uuid
from dataclasses import dataclass

from walrewind.engine.replica import layout
from walrewind.engine.replica.format import SnapshotWriter, TxnRecord, encode_segment
from walrewind.engine.sqlite.pagehash import PageHashes
from walrewind.engine.storage import (
    Storage,
    open_storage,
    put_file_immutable,
    put_immutable,
)

WORDS = (
    "order shipped pending paid refund customer invoice account alpha beta gamma delta north south "
    "east west green blue red amber priority normal low high express standard warehouse berlin paris "
    "london tokyo item quantity price discount coupon note gift review rating stock returned"
).split()
LEAF = 0x0D  # table b-tree leaf page type


def _body(rng: random.Random, n: int) -> str:
    words = " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40)))
    return (
        f'{{"id":{n},"user":{rng.randint(1, 5000)},"status":"{rng.choice(WORDS)}",'
        f'"amount":{rng.randint(1, 99999) / 100:.2f},"note":"{words}","v=00000000"}}'
    )


class SyntheticHistory:
    """One generation of synthetic history in ``storage``; call ``second()`` per simulated second."""

    def __init__(
        self,
        storage: Storage,
        start_us: int,
        pages: int = 256,
        page_size: int = 4096,
        seed: int = 0,
        rate: int = 100,
        grow_every_s: int = 60,
        grow_rows: int = 20,
        workdir: str = "/tmp",
        durable: bool = True,
    ) -> None:
        """``durable=False`` writes segments of a local replica without fsync (benchmark data
        generation only; the files are complete before anything reads them)."""
        self.storage = storage
        self.page_size = page_size
        self.rng = random.Random(seed)
        self.rate = rate
        self.grow_every_s = grow_every_s
        self.grow_rows = grow_rows
        self.db_id = uuid.UUID(int=self.rng.getrandbits(128)).hex
        self.generation = f"{start_us:016x}-{self.rng.getrandbits(32):08x}"
        self.rows = 0
        self.durable = durable
        conn = sqlite3.connect(":memory:")
        conn.execute(f"PRAGMA page_size={page_size}")
        conn.execute("CREATE TABLE orders(id INTEGER PRIMARY KEY, user INTEGER, body TEXT)")
        conn.execute("CREATE INDEX orders_user ON orders(user)")
        while conn.execute("PRAGMA page_count").fetchone()[0] < pages:
            self._insert(conn, 200)
        conn.commit()
        self.image = bytearray(conn.serialize())
        conn.close()
        self.hashes = PageHashes(page_size)
        for pgno in range(1, self.db_pages + 1):
            self.hashes.set_page(pgno, bytes(self._page(pgno)))
        self._scan_leaves()
        self.txid = 1
        self.ts_us = start_us
        self.seconds = 0
        self.segment_bytes = 0
        self.last_points: list[tuple[int, int, int]] = []  # (txid, commit_ts_us, db_checksum) of the last second
        self.snapshot_bytes = self._write_snapshot(workdir)

    # -------------------------------------------------------------------------- database image
    @property
    def db_pages(self) -> int:
        return len(self.image) // self.page_size

    @property
    def checksum(self) -> int:
        return self.hashes.checksum

    def _page(self, pgno: int) -> bytearray:
        off = (pgno - 1) * self.page_size
        return self.image[off : off + self.page_size]

    def _insert(self, conn: sqlite3.Connection, n: int) -> None:
        rows = []
        for _ in range(n):
            self.rows += 1
            rows.append((self.rows, self.rng.randint(1, 5000), _body(self.rng, self.rows)))
        conn.executemany("INSERT INTO orders VALUES (?, ?, ?)", rows)

    def _scan_leaves(self) -> None:
        ps = self.page_size
        self.leaves = [p for p in range(2, self.db_pages + 1) if self.image[(p - 1) * ps] == LEAF]
        # Updates favour recent rows: the newest 5 % of leaf pages take 70 % of page writes.
        self.hot = self.leaves[-max(1, len(self.leaves) // 20) :]

    def _write_snapshot(self, workdir: str) -> int:
        header = {
            "db_id": self.db_id, "generation": self.generation, "txid": self.txid, "ts_us": self.ts_us,
            "page_size": self.page_size, "page_count": self.db_pages, "db_checksum": f"{self.checksum:016x}",
            "lease_epoch": 1,
        }
        fd, path = tempfile.mkstemp(dir=workdir, prefix="synth-snap-")
        os.close(fd)
        try:
            writer = SnapshotWriter(path)
            writer.add_pages(bytes(self.image))
            size = writer.finish(header)
            put_file_immutable(self.storage, layout.SnapshotKey(self.generation, self.txid, self.ts_us).key, path)
        finally:
            os.unlink(path)
        return size

    # -------------------------------------------------------------------------- transactions
    def _update(self, txid: int, ts: int) -> TxnRecord:
        rng, ps = self.rng, self.page_size
        pages: dict[int, bytes] = {}
        for _ in range(rng.choice((1, 1, 2, 2, 3))):
            pgno = rng.choice(self.hot if rng.random() < 0.7 else self.leaves)
            off = (pgno - 1) * ps
            page = self.image[off : off + ps]
            i = page.find(b"v=", rng.randrange(ps))
            if i < 0 or i + 10 > ps:
                i = page.find(b"v=")
            if i < 0 or i + 10 > ps:
                continue
            page[i + 2 : i + 10] = b"%08d" % (txid % 100_000_000)
            self.image[off : off + ps] = page
            pages[pgno] = bytes(page)
        checksum = self.hashes.apply(pages, self.db_pages)
        return TxnRecord(txid, ts, self.db_pages, 0, checksum, pages)

    def _grow(self, txid: int, ts: int) -> TxnRecord:
        """A real INSERT of ``grow_rows`` rows; the pages SQLite changed become the record."""
        conn = sqlite3.connect(":memory:")
        conn.deserialize(bytes(self.image))
        self._insert(conn, self.grow_rows)
        conn.commit()
        new = conn.serialize()
        conn.close()
        ps, old = self.page_size, self.image
        pages = {}
        for off in range(0, len(new), ps):
            if new[off : off + ps] != old[off : off + ps]:
                pages[off // ps + 1] = new[off : off + ps]
        self.image = bytearray(new)
        checksum = self.hashes.apply(pages, self.db_pages)
        self._scan_leaves()
        return TxnRecord(txid, ts, self.db_pages, 0, checksum, pages)

    def second(self, txns: int | None = None) -> layout.SegmentKey:
        """Write one segment: the next simulated second's transactions (``rate`` by default)."""
        n = self.rate if txns is None else txns
        base = self.ts_us - self.ts_us % 1_000_000 + 1_000_000
        self.seconds += 1
        grow = self.grow_every_s and self.seconds % self.grow_every_s == 0
        records = []
        for j in range(n):
            self.txid += 1
            ts = base + j * (1_000_000 // max(n, 1))
            records.append(self._grow(self.txid, ts) if grow and j == 0 else self._update(self.txid, ts))
        self.ts_us = records[-1].commit_ts_us
        self.last_points = [(r.txid, r.commit_ts_us, r.db_checksum) for r in records]
        key = layout.SegmentKey(self.generation, records[0].txid, records[-1].txid, records[0].commit_ts_us, self.ts_us)
        header = {
            "db_id": self.db_id, "generation": self.generation, "page_size": self.page_size,
            "first_txid": key.first_txid, "last_txid": key.last_txid, "through_ts_us": self.ts_us, "lease_epoch": 1,
        }
        blob = encode_segment(header, records)
        if self.durable or not hasattr(self.storage, "root"):
            put_immutable(self.storage, key.key, blob)
        else:
            path = os.path.join(self.storage.root, *key.key.split("/"))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "xb") as f:
                f.write(blob)
        self.segment_bytes += len(blob)
        return key


@dataclass
class History:
    replica: str
    generation: str
    snapshot_txid: int
    snapshot_ts_us: int
    points: list[tuple[int, int, int]]  # (txid, commit_ts_us, db_checksum) of every record, in order
    segments: int


def build_history(
    replica: str,
    seconds: int,
    txn_per_segment: int = 100,
    start_us: int = 1_700_000_000_000_000,
    seed: int = 1,
    pages: int = 256,
    progress=None,
) -> History:
    """One snapshot at ``start_us``, then one segment per simulated second of ``txn_per_segment``
    records, remembering every record's (txid, time, checksum) so tests can restore each one."""
    with tempfile.TemporaryDirectory(prefix="walrewind-synth-") as tmp:
        history = SyntheticHistory(open_storage(replica), start_us, pages=pages, seed=seed, rate=txn_per_segment,
                                   grow_every_s=0, workdir=tmp)
    points: list[tuple[int, int, int]] = []
    for sec in range(seconds):
        history.second()
        points.extend(history.last_points)
        if progress and (sec + 1) % 300 == 0:
            progress(sec + 1, seconds)
    return History(replica, history.generation, 1, start_us, points, seconds)
