"""How a replicated database stands: restorable window, last shipped transaction, and lag.

Lag is measured, not guessed: the live database's whole-database checksum (the same function the
daemon records with every transaction) is compared with the one recorded for the replica's newest
transaction.  Equal means the replica holds the database's current state (lag 0), whatever
checkpoints happened since.  Different means the database has changes the replica does not have
yet; the lag is then the age of the replica's newest transaction, i.e. how much history would be
lost if the database disappeared right now.  Databases larger than ``MEASURE_LIMIT`` are not read
(the check reads every page) and their lag is reported as unknown.
"""

from __future__ import annotations

import os
import time

from ..replica.format import read_snapshot
from ..replica.index import Replica
from ..sqlite.dbinfo import open_readonly
from ..sqlite.pagehash import checksum_pages
from ..timeparse import format_us

MEASURE_LIMIT = 256 << 20


def _now_us() -> int:
    return time.time_ns() // 1000


def live_checksum(path: str) -> int:
    """Checksum of the database as a reader sees it now (WAL included), in one read transaction."""
    conn = open_readonly(path)
    try:
        page_size = conn.execute("PRAGMA page_size").fetchall()[0][0]
        image = conn.serialize("main") or b""
    finally:
        conn.close()
    return checksum_pages((i // page_size + 1, image[i : i + page_size]) for i in range(0, len(image), page_size))


def latest_checksum(replica: Replica) -> int | None:
    """The checksum recorded for the replica's newest transaction."""
    if replica.empty:
        return None
    gen = replica.generations[-1]
    snap = gen.snapshots[-1]
    if gen.segments and gen.segments[-1].last_txid >= snap.txid:  # a segment is small; a snapshot is the whole database
        _header, records = replica.load_segment(gen.segments[-1])
        return records[-1].db_checksum if records else None
    header, _pages = read_snapshot(replica.storage.get(snap.key), f"{replica.storage.url}/{snap.key}")
    return int(header["db_checksum"], 16)


def source_last_write_us(path: str) -> int | None:
    stamps = [os.stat(p).st_mtime_ns // 1000 for p in (path, path + "-wal") if os.path.exists(p)]
    return max(stamps) if stamps else None


def replication_status(db_path: str, replica: Replica, now_us: int | None = None, measure_limit: int = MEASURE_LIMIT) -> dict:
    """Plain data for ``db show`` (all times RFC 3339, durations in seconds)."""
    now = now_us if now_us is not None else _now_us()
    out: dict = {"replica": replica.storage.url, "restorable": not replica.empty}
    if replica.empty:
        out.update(earliest=None, latest=None, latest_txid=None, complete_through=None, transactions=0,
                   in_sync=None, lag_seconds=None, lag_note="the replica holds no restorable history yet")
        return out
    summary = replica.summary()
    latest_txid, latest_us = replica.latest()  # type: ignore[misc]
    out.update(
        earliest=summary["earliest"],
        latest=summary["latest"],
        latest_txid=latest_txid,
        complete_through=summary["complete_through"],
        transactions=summary["transactions"],
        generations=len(summary["generations"]),
        exact_from=summary["exact_from"],  # transaction-exact from here; before it, kept snapshots only
        snapshots_beyond_window=summary["snapshots_beyond_window"],
    )
    last_write = source_last_write_us(db_path)
    out["source_last_write"] = format_us(last_write) if last_write else None
    if not os.path.exists(db_path):
        out.update(in_sync=None, lag_seconds=None, lag_note=f"{db_path} does not exist")
        return out
    if os.path.getsize(db_path) + (os.path.getsize(db_path + "-wal") if os.path.exists(db_path + "-wal") else 0) > measure_limit:
        out.update(in_sync=None, lag_seconds=None,
                   lag_note=f"not measured (database larger than {measure_limit >> 20} MiB)")
        return out
    live = live_checksum(db_path)
    recorded = latest_checksum(replica)
    if live != recorded:
        # The daemon may have shipped a newer transaction since we listed: look once more.
        replica.refresh()
        latest_txid, latest_us = replica.latest()  # type: ignore[misc]
        recorded = latest_checksum(replica)
        out.update(latest=format_us(latest_us), latest_txid=latest_txid)
    if live == recorded:
        out.update(in_sync=True, lag_seconds=0.0, lag_note="the replica has the database's current state")
    else:
        out.update(
            in_sync=False,
            lag_seconds=round(max(0, now - latest_us) / 1e6, 3),
            lag_note=f"the database has changes after the newest replicated transaction (txid {latest_txid})",
        )
    return out
