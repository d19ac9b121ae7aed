"""Build a new base snapshot from the replica itself, never touching the live database.

Restores read one snapshot plus the segments after it, so restore time grows with the history
since the last snapshot.  A new snapshot is made by restoring the replica to a transaction (which
verifies the recorded database checksum and runs quick_check) and storing that file as a
snapshot object at the same txid: no read of the live database, no lock on it.  A damaged newer
snapshot is skipped by the restore (it replays from an older valid one), so a new valid snapshot
can still be built; ``SnapshotBuilt.skipped`` names what was skipped.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field

from ..replica import layout
from ..replica.format import SnapshotWriter
from ..replica.index import Replica
from ..restore.restorer import Progress, restore
from ..storage import Storage, put_file_immutable

PAGES_PER_CHUNK = 256


@dataclass
class SnapshotBuilt:
    key: str
    txid: int
    ts_us: int
    db_pages: int
    created: bool  # False when a snapshot at that txid already existed
    skipped: dict[str, str] = field(default_factory=dict)  # damaged snapshots the restore skipped


def build_snapshot(storage: Storage, txid: int | None = None, workdir: str | None = None,
                   progress: Progress | None = None) -> SnapshotBuilt:
    """Snapshot the newest generation at ``txid`` (its latest transaction by default).

    ``progress(stage, done, total)`` sees the restore's stages, then "compress" (database bytes)
    and "upload" (0 of the object's size, then all of it: uploads report no progress of their own).
    """
    replica = Replica(storage)
    if replica.empty:
        raise ValueError(f"{storage.url}: nothing to snapshot (no restorable history)")
    gen = replica.generations[-1]
    target = txid if txid is not None else gen.last_txid
    existing = [s for s in gen.snapshots if s.txid == target]
    if existing:
        snap = existing[0]
        return SnapshotBuilt(snap.key, snap.txid, snap.ts_us, 0, False)
    with tempfile.TemporaryDirectory(dir=workdir, prefix="walrewind-snapshot-") as tmp:
        db = os.path.join(tmp, "at.db")
        result = restore(storage, db, target_txid=target, replica=replica, progress=progress)
        header = {
            "db_id": result.db_id,
            "generation": gen.id,
            "txid": result.txid,
            "ts_us": result.commit_us,
            "page_size": result.page_size,
            "page_count": result.db_pages,
            "db_checksum": f"{result.checksum:016x}",
        }
        path = os.path.join(tmp, "snapshot")
        writer = SnapshotWriter(path)
        size, done = result.db_pages * result.page_size, 0
        with open(db, "rb") as f:
            while chunk := f.read(result.page_size * PAGES_PER_CHUNK):
                writer.add_pages(chunk)
                done += len(chunk)
                if progress and (done % (16 << 20) < len(chunk) or done == size):
                    progress("compress", done, size)
        object_size = writer.finish(header)
        key = layout.SnapshotKey(gen.id, result.txid, result.commit_us).key
        if progress:
            progress("upload", 0, object_size)
        created = put_file_immutable(storage, key, path)
        if progress:
            progress("upload", object_size, object_size)
    return SnapshotBuilt(key, result.txid, result.commit_us, result.db_pages, created, dict(result.skipped))
