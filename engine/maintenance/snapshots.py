"""Build a new base snapshot from the replica itself, never touching the live database.

Restores read one snapshot plus the segments after it, so restore time grows with the history
since the last snapshot.  A new snapshot is made by restoring the replica to a transaction (which
verifies the recorded database checksum and runs quick_check) and storing that file as a
snapshot object at the same txid: no read of the live database, no lock on it.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass

from ..replica import layout
from ..replica.format import SnapshotWriter, read_snapshot
from ..replica.index import Replica
from ..restore.restorer import restore
from ..storage import Storage, put_file_immutable

PAGES_PER_CHUNK = 256


@dataclass
class SnapshotBuilt:
    key: str
    txid: int
    ts_us: int
    db_pages: int
    created: bool  # False when a snapshot at that txid already existed


def build_snapshot(storage: Storage, txid: int | None = None, workdir: str | None = None) -> SnapshotBuilt:
    """Snapshot the newest generation at ``txid`` (its latest transaction by default)."""
    replica = Replica(storage)
    if replica.empty:
        raise ValueError(f"{storage.url}: nothing to snapshot (no restorable history)")
    gen = replica.generations[-1]
    target = txid if txid is not None else gen.last_txid
    existing = [s for s in gen.snapshots if s.txid == target]
    if existing:
        snap = existing[0]
        return SnapshotBuilt(snap.key, snap.txid, snap.ts_us, 0, False)
    first_header, _ = read_snapshot(storage.get(gen.snapshots[0].key), gen.snapshots[0].key)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="walrewind-snapshot-") as tmp:
        db = os.path.join(tmp, "at.db")
        result = restore(storage, db, target_txid=target, replica=replica)
        header = {
            "db_id": first_header.get("db_id"),
            "generation": gen.id,
            "txid": result.txid,
            "ts_us": result.commit_us,
            "page_size": result.page_size,
            "page_count": result.db_pages,
            "db_checksum": f"{result.checksum:016x}",
        }
        path = os.path.join(tmp, "snapshot")
        writer = SnapshotWriter(path)
        with open(db, "rb") as f:
            while chunk := f.read(result.page_size * PAGES_PER_CHUNK):
                writer.add_pages(chunk)
        writer.finish(header)
        key = layout.SnapshotKey(gen.id, result.txid, result.commit_us).key
        created = put_file_immutable(storage, key, path)
    return SnapshotBuilt(key, result.txid, result.commit_us, result.db_pages, created)
