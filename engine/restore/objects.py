"""Verify every object of a replica without restoring: ``walrewind ls --check``.

Each snapshot and segment is downloaded and its envelope checked exactly as a restore would
(magic, version, BLAKE2b digest, header fields, and for segments the records against the name),
in parallel; nothing is written anywhere: snapshots are streamed through their digest.  Cheaper than a drill
(no database is rebuilt, no checksum of a restored file), and it names every damaged object, where
a restore stops at the first one.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ObjectCorrupt, StorageError
from ..replica import layout
from ..replica.format import decode_segment
from ..replica.index import Replica
from ..replica.snapshotfile import SnapshotStream
from .fetch import OrderedChunks

WORKERS = 8
Progress = Callable[[str, int, int], None]


@dataclass
class CheckReport:
    objects: int = 0
    bytes: int = 0
    seconds: float = 0.0
    damaged: list[tuple[str, str]] = field(default_factory=list)  # (key, what is wrong)

    @property
    def ok(self) -> bool:
        return not self.damaged

    def to_json(self) -> dict:
        return {"ok": self.ok, "objects": self.objects, "bytes": self.bytes, "seconds": round(self.seconds, 3),
                "damaged": [{"key": k, "error": e} for k, e in self.damaged]}


def _check_segment(replica: Replica, seg: layout.SegmentKey) -> None:
    name = f"{replica.storage.url}/{seg.key}"
    header, records = decode_segment(replica.storage.get(seg.key), name)
    if header.get("generation", seg.generation) != seg.generation:
        raise ObjectCorrupt(f"{name}: belongs to generation {header.get('generation')}, not {seg.generation}")
    if records and (records[0].txid, records[-1].txid) != (seg.first_txid, seg.last_txid):
        raise ObjectCorrupt(f"{name}: holds transactions {records[0].txid}..{records[-1].txid}, not what its name says")
    if any(b.txid != a.txid + 1 for a, b in zip(records, records[1:])):
        raise ObjectCorrupt(f"{name}: its transactions are not consecutive")


def _check_snapshot(replica: Replica, snap: layout.SnapshotKey) -> None:
    """The snapshot streamed through its digest and decompressed page by page, never stored."""
    name = f"{replica.storage.url}/{snap.key}"
    chunks = OrderedChunks(replica.storage, snap.key, replica.sizes.get(snap.key, 0), name).start()
    stream = SnapshotStream(chunks, chunks.size, name)
    try:
        if stream.header.get("txid", snap.txid) != snap.txid:
            raise ObjectCorrupt(f"{name}: is a snapshot at txid {stream.header.get('txid')}, not {snap.txid}")
        for _ in stream.pages():  # the digest, trailer and page count are checked at the end
            pass
    finally:
        stream.close()
        chunks.close()


def snapshot_damage(replica: Replica, key: str) -> str | None:
    """What is wrong with snapshot ``key`` (None when it verifies), for retention's safety check."""
    snap = next((s for g in replica.generations for s in g.snapshots if s.key == key), None)
    if snap is None:
        return "not in the replica"
    try:
        _check_snapshot(replica, snap)
    except (ObjectCorrupt, StorageError) as exc:
        return str(exc)
    return None


def check_replica(replica: Replica, progress: Progress | None = None, workers: int = WORKERS) -> CheckReport:
    """Verify every snapshot and segment; returns what was damaged (or missing) by key."""
    started = time.monotonic()
    report = CheckReport()
    jobs: list[tuple[str, Callable[[], None]]] = []
    for gen in replica.generations:
        for snap in gen.snapshots:
            jobs.append((snap.key, lambda s=snap: _check_snapshot(replica, s)))
        for seg in gen.segments:
            jobs.append((seg.key, lambda s=seg: _check_segment(replica, s)))

    def run(job: tuple[str, Callable[[], None]]) -> tuple[str, str | None]:
        key, check = job
        try:
            check()
        except (ObjectCorrupt, StorageError) as exc:
            return key, str(exc)
        return key, None

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="walrewind-check") as pool:
        for n, (key, error) in enumerate(pool.map(run, jobs), 1):
            report.objects += 1
            report.bytes += replica.sizes.get(key, 0)
            if error is not None:
                report.damaged.append((key, error))
            if progress:
                progress("objects", n, len(jobs))
    report.seconds = time.monotonic() - started
    return report
