"""Activity over the restorable window: transactions and pages changed per time bucket.

Read from the replica's transaction records (every segment in the range is downloaded and
verified), so it shows exactly what a restore can land on.  A burst of pages in one minute is
usually the bad ``DELETE`` or migration a user is looking for before choosing ``--timestamp``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from typing import Callable

from ..replica.format import FLAG_LATE, FLAG_RESYNC
from ..replica.index import Replica
from ..restore.restorer import restore
from ..sqlite.dbinfo import open_readonly

BUCKETS_US = {
    "second": 1_000_000,
    "minute": 60_000_000,
    "hour": 3_600_000_000,
    "day": 86_400_000_000,
}


@dataclass
class Bucket:
    start_us: int
    transactions: int = 0
    pages: int = 0
    first_txid: int = 0
    last_txid: int = 0
    last_commit_us: int = 0
    resyncs: int = 0
    late: int = 0
    snapshots: int = 0


@dataclass
class Gap:
    """A stretch of time the replica has no transaction-level record of: commits there were not
    observed (the daemon was down while the app checkpointed) and reached the replica folded into
    one RESYNC transaction at ``txid``."""

    txid: int
    from_us: int  # the last record before the gap
    to_us: int  # the RESYNC record


def build_timeline(
    replica: Replica,
    bucket_us: int,
    since_us: int | None = None,
    until_us: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
    gaps: list[Gap] | None = None,
) -> list[Bucket]:
    """Non-empty buckets in time order.  Snapshots (generation starts) count in their bucket too.
    RESYNC gaps met on the way are appended to ``gaps`` when given."""
    buckets: dict[int, Bucket] = {}

    def bucket(ts: int) -> Bucket:
        start = ts - ts % bucket_us
        return buckets.setdefault(start, Bucket(start))

    def wanted(first: int, last: int) -> bool:
        return (since_us is None or last >= since_us) and (until_us is None or first <= until_us)

    segments = [s for g in replica.generations for s in g.segments if wanted(s.first_ts_us, s.last_ts_us)]
    for gen in replica.generations:
        for snap in gen.snapshots:
            if wanted(snap.ts_us, snap.ts_us):
                b = bucket(snap.ts_us)
                b.snapshots += 1
                b.first_txid = b.first_txid or snap.txid
                b.last_txid = max(b.last_txid, snap.txid)
    previous_us = None
    for n, seg in enumerate(segments, 1):
        _header, records = replica.load_segment(seg)
        for rec in records:
            if rec.flags & FLAG_RESYNC and gaps is not None and previous_us is not None:
                gaps.append(Gap(rec.txid, previous_us, rec.commit_ts_us))
            previous_us = rec.commit_ts_us
            if not wanted(rec.commit_ts_us, rec.commit_ts_us):
                continue
            b = bucket(rec.commit_ts_us)
            b.transactions += 1
            b.pages += len(rec.pages)
            if not b.first_txid or rec.txid < b.first_txid:
                b.first_txid = rec.txid
            b.last_txid = max(b.last_txid, rec.txid)
            b.last_commit_us = max(b.last_commit_us, rec.commit_ts_us)
            b.resyncs += bool(rec.flags & FLAG_RESYNC)
            b.late += bool(rec.flags & FLAG_LATE)
        if progress:
            progress("segments", n, len(segments))
    return [buckets[k] for k in sorted(buckets)]


@dataclass
class TxnSummary:
    txid: int
    commit_us: int
    pages: int
    db_pages: int
    flags: int
    page_numbers: tuple[int, ...] = ()
    tables: tuple[str, ...] = ()  # filled by ``name_tables``

def transactions(
    replica: Replica, since_us: int | None = None, until_us: int | None = None,
    progress: Callable[[str, int, int], None] | None = None,
) -> list[TxnSummary]:
    """Every replicated transaction in the range, one row each (for picking an exact --txid)."""
    segments = [
        s for g in replica.generations for s in g.segments
        if (since_us is None or s.last_ts_us >= since_us) and (until_us is None or s.first_ts_us <= until_us)
    ]
    out = []
    for n, seg in enumerate(segments, 1):
        _header, records = replica.load_segment(seg)
        for rec in records:
            if (since_us is None or rec.commit_ts_us >= since_us) and (until_us is None or rec.commit_ts_us <= until_us):
                out.append(TxnSummary(rec.txid, rec.commit_ts_us, len(rec.pages), rec.db_pages, rec.flags,
                                      tuple(sorted(rec.pages))))
        if progress:
            progress("segments", n, len(segments))
    return out


FREE = "(free pages)"


def page_owners(db_path: str) -> dict[int, str]:
    """Page number -> the table a page belongs to (an index's, overflow or interior pages count
    for their table), from SQLite's dbstat of one database file."""
    conn = open_readonly(db_path)
    try:
        table_of = {name: tbl for name, tbl in conn.execute("SELECT name, tbl_name FROM sqlite_schema")}
        table_of["sqlite_schema"] = "sqlite_schema"
        return {pgno: table_of.get(name, name) for name, pgno in conn.execute("SELECT name, pageno FROM dbstat")}
    finally:
        conn.close()


def name_tables(rows: list[TxnSummary], owners: dict[int, str]) -> None:
    """Which tables each transaction touched, judged by who owns its pages in the database the
    owners were read from (a page that changed owners in between is attributed to the later one;
    a page nothing owns there is counted as free)."""
    for row in rows:
        row.tables = tuple(sorted({owners.get(pgno, FREE) for pgno in row.page_numbers}))


def tables_as_of(replica: Replica, txid: int, workdir: str | None = None) -> dict[int, str]:
    """``page_owners`` of the database restored (verified) at ``txid`` into a temporary file."""
    with tempfile.TemporaryDirectory(dir=workdir, prefix="walrewind-timeline-") as tmp:
        path = os.path.join(tmp, "at.db")
        restore(replica.storage, path, target_txid=txid, replica=replica, check="none")
        return page_owners(path)
