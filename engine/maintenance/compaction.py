"""Compaction: merge old, small segments of a generation into large ones, exact to the transaction.

The daemon uploads one segment per upload interval (3,600 an hour at the default 1 s), so a
restore of an older point spends most of its time on per-object requests.  Compaction rewrites
runs of old, consecutive segments into one segment per ``span_us`` of commit time (a UTC hour by
default), capped in size.  A merged segment is an ordinary segment (same key scheme, same
envelope) whose payload is the *bit-for-bit concatenation* of its sources' payloads: every
transaction record (txid, commit time, flags, db size, checksum, pages) is kept, in order, so
restores stay exact to the transaction and to the microsecond.

Safety, in order:

1. Each source is fully decoded (digest, sizes, record count) and checked against its key, its
   generation/database and its neighbours (consecutive txids) before a byte of it is reused; any
   failure aborts the whole run with a message naming the object, and nothing is deleted.
2. The merged object is created with a create-only write (its header is deterministic, so two
   runs produce identical bytes and a retry is a no-op), read back and decoded again, and its
   payload hash compared with the hash of the sources' payloads.
3. Only after *every* merged object of the run is created and verified are the sources deleted.
   An interrupted run leaves merged objects next to their sources: readers then use the
   covering segment (``replica.normalise_segments``), and the next run checks the leftovers
   byte for byte against it and deletes them.  Never neither, never a hole.

Merged runs never cross a snapshot (so a restore from a newer snapshot does not read older
records), a txid gap, or a ``span_us`` bucket; they hold at most ``max_bytes`` (compressed, from
the listing) and ``max_raw_bytes`` (decompressed) because restores decode a whole segment in
memory.  Run one compaction at a time per replica (the maintenance scheduler does).
"""

from __future__ import annotations

import hashlib
import os
import struct
import tempfile
import time
from dataclasses import dataclass, field
from typing import Callable

import zstandard

from ..errors import CompactionError, ObjectCorrupt, StorageError
from ..replica import layout
from ..replica.format import (
    SEGMENT_MAGIC,
    ZSTD_LEVEL,
    decode_segment_raw,
    write_envelope_file,
)
from ..replica.index import Generation, Replica
from ..storage import Storage, put_file_immutable

HOUR_US = 3_600_000_000
MAX_BYTES = 32 << 20  # compressed size of a merged segment (= the restore prefetch window)
# Decompressed size: a restore holds the segment being applied decoded (about twice this), so
# this bounds restore memory.  Measured at 100 txn/s: 16 MiB -> ~100 MB peak restore RSS and ~140
# objects an hour; 64 MiB -> ~240 MB and ~40 objects, and no faster (applying records dominates).
MAX_RAW_BYTES = 16 << 20
_TXN_HEAD = struct.Struct("<QqIIIQ")

Progress = Callable[[str, int, int], None]


@dataclass
class CompactionReport:
    merged: list[tuple[str, list[str]]]  # (merged segment key, source keys it replaces)
    bytes_before: int  # listed size of the sources
    bytes_after: int  # size of the merged objects (0 in a dry run: nothing is written)
    dry_run: bool
    finished: list[tuple[str, list[str]]] = field(default_factory=list)  # leftovers of an earlier run
    seconds: float = 0.0

    def to_json(self) -> dict:
        return {
            "dry_run": self.dry_run,
            "merged": [{"key": key, "sources": len(src), "source_keys": src} for key, src in self.merged],
            "segments_before": sum(len(src) for _key, src in self.merged),
            "segments_after": len(self.merged),
            "bytes_before": self.bytes_before,
            "bytes_after": None if self.dry_run else self.bytes_after,
            "leftovers_deleted": [{"key": key, "source_keys": src} for key, src in self.finished],
            "seconds": round(self.seconds, 3),
        }


def plan_groups(
    gen: Generation, now_us: int, compact_after_us: int, span_us: int, sizes: dict[str, int], max_bytes: int
) -> list[list[layout.SegmentKey]]:
    """Runs of at least two segments of ``gen`` to merge, from key names (and listed sizes) only.

    A segment is eligible when its last commit is older than ``now - compact_after``.  A run is
    cut at a txid gap, where the ``span_us`` bucket of the first commit changes, between segments
    on different sides of a snapshot, and before it would exceed ``max_bytes``.  A generation
    whose segments partially overlap (two writers) is not touched.
    """
    if gen.overlaps():
        return []  # two writers' histories: leave the evidence exactly as it is (restores refuse)
    cutoff = now_us - compact_after_us
    snap_txids = sorted(s.txid for s in gen.snapshots)
    groups: list[list[layout.SegmentKey]] = []
    run: list[layout.SegmentKey] = []
    run_bytes = 0

    def side(seg: layout.SegmentKey) -> int:  # how many snapshots come before its last record
        return sum(1 for t in snap_txids if t < seg.last_txid)

    def close() -> None:
        if len(run) >= 2:
            groups.append(list(run))
        run.clear()

    for seg in gen.segments:
        size = sizes.get(seg.key, 0)
        if seg.last_ts_us >= cutoff:
            close()
            continue
        if run:
            prev = run[-1]
            if (
                seg.first_txid != prev.last_txid + 1
                or seg.first_ts_us // span_us != run[0].first_ts_us // span_us
                or side(seg) != side(prev)
                or run_bytes + size > max_bytes
            ):
                close()
        if not run:
            run_bytes = 0
        run.append(seg)
        run_bytes += size
    close()
    return groups


def _assemble(raw_path: str, raw_len: int, header: dict, out_path: str) -> int:
    """Write a segment object (docs/FORMAT.md section 2) whose payload is the zstd frame of the
    file ``raw_path``, streaming; the frame carries its content size like the daemon's."""
    payload_path = out_path + ".zst"
    with open(raw_path, "rb") as src, open(payload_path, "wb") as dst:
        zstandard.ZstdCompressor(level=ZSTD_LEVEL).copy_stream(src, dst, size=raw_len)
    with open(payload_path, "rb") as payload:
        size = write_envelope_file(out_path, SEGMENT_MAGIC, header, payload, os.path.getsize(payload_path))
    os.unlink(payload_path)
    return size


def _record_offsets(raw: bytes, page_size: int) -> dict[int, int]:
    """txid -> byte offset of its record in a decoded payload (plus last txid + 1 -> the end)."""
    offsets: dict[int, int] = {}
    off, txid = 0, None
    while off < len(raw):
        txid, _ts, _pages, _flags, count, _sum = _TXN_HEAD.unpack_from(raw, off)
        offsets[txid] = off
        off += _TXN_HEAD.size + count * (4 + page_size)
    if txid is not None:
        offsets[txid + 1] = off
    return offsets


class _Compactor:
    def __init__(self, storage: Storage, workdir: str, max_raw_bytes: int, progress: Progress | None) -> None:
        self.storage = storage
        self.workdir = workdir
        self.max_raw_bytes = max_raw_bytes
        self.progress = progress
        self.done_segments = 0
        self.total_segments = 0

    def _name(self, key: str) -> str:
        return f"{self.storage.url}/{key}"

    def _load(self, seg: layout.SegmentKey) -> tuple[dict, bytes, list]:
        """Download and fully verify one segment; anything wrong is a CompactionError naming it."""
        name = self._name(seg.key)
        try:
            header, raw, records = decode_segment_raw(self.storage.get(seg.key), name)
        except (StorageError, ObjectCorrupt) as exc:
            text = str(exc) if seg.key in str(exc) else f"{name}: {exc}"
            raise CompactionError(f"compaction stopped, nothing was deleted: {text}") from None
        problem = None
        if header.get("generation", seg.generation) != seg.generation:
            problem = f"belongs to generation {header.get('generation')}"
        elif not records:
            problem = "holds no transactions"
        elif (records[0].txid, records[-1].txid, records[0].commit_ts_us, records[-1].commit_ts_us) != (
            seg.first_txid, seg.last_txid, seg.first_ts_us, seg.last_ts_us
        ):
            problem = "holds transactions that are not what its name says"
        elif any(b.txid != a.txid + 1 for a, b in zip(records, records[1:])):
            problem = "holds non-consecutive transactions"
        if problem:
            raise CompactionError(f"compaction stopped, nothing was deleted: {name}: {problem}")
        return header, raw, records

    def _tick(self) -> None:
        self.done_segments += 1
        if self.progress:
            self.progress("segments", self.done_segments, self.total_segments)

    def merge(self, group: list[layout.SegmentKey]) -> list[tuple[str, list[str], int]]:
        """Create and verify merged segment(s) for ``group``; returns (key, sources, size) each.

        Sources are streamed one at a time into a temporary payload file (memory stays at one
        source segment); the run is split further when it would exceed ``max_raw_bytes``."""
        out: list[tuple[str, list[str], int]] = []
        part: list[tuple[layout.SegmentKey, dict]] = []
        raw_path = os.path.join(self.workdir, "payload.raw")
        raw_file = open(raw_path, "wb")
        state = {"raw_len": 0, "count": 0, "hash": hashlib.blake2b(digest_size=32)}

        def flush() -> None:
            raw_file.flush()
            if len(part) >= 2:
                out.append(self._finish(part, raw_path, state["raw_len"], state["count"], state["hash"].digest()))
            part.clear()
            raw_file.seek(0)
            raw_file.truncate()
            state.update(raw_len=0, count=0, hash=hashlib.blake2b(digest_size=32))

        try:
            for seg in group:
                header, raw, records = self._load(seg)
                if part:
                    first = part[0][1]
                    if (header.get("db_id"), header["page_size"]) != (first.get("db_id"), first["page_size"]):
                        raise CompactionError(
                            f"compaction stopped, nothing was deleted: {self._name(seg.key)} has database "
                            f"{header.get('db_id')} / page size {header['page_size']}, unlike "
                            f"{self._name(part[0][0].key)} before it"
                        )
                    if state["raw_len"] + len(raw) > self.max_raw_bytes:
                        flush()
                raw_file.write(raw)
                state["hash"].update(raw)
                state["raw_len"] += len(raw)
                state["count"] += len(records)
                part.append((seg, header))
                del raw, records
                self._tick()
            flush()
        finally:
            raw_file.close()
            os.unlink(raw_path)
        return out

    def _finish(
        self, part: list[tuple[layout.SegmentKey, dict]], raw_path: str, raw_len: int, count: int, digest: bytes
    ) -> tuple[str, list[str], int]:
        first, last = part[0][0], part[-1][0]
        headers = [h for _s, h in part]
        key = layout.SegmentKey(first.generation, first.first_txid, last.last_txid, first.first_ts_us, last.last_ts_us)
        header = {
            "db_id": headers[0].get("db_id"),
            "generation": first.generation,
            "page_size": headers[0]["page_size"],
            "first_txid": first.first_txid,
            "last_txid": last.last_txid,
            "through_ts_us": max(h.get("through_ts_us", last.last_ts_us) for h in headers),
            "compacted_from": len(part),
            "raw_length": raw_len,
            "txn_count": count,
        }
        epochs = [h["lease_epoch"] for h in headers if isinstance(h.get("lease_epoch"), int)]
        if epochs:
            header["lease_epoch"] = max(epochs)
        if header["db_id"] is None:
            del header["db_id"]
        obj_path = os.path.join(self.workdir, "merged.seg")
        size = _assemble(raw_path, raw_len, header, obj_path)
        try:
            put_file_immutable(self.storage, key.key, obj_path)
        finally:
            os.unlink(obj_path)
        # Read it back: what is stored must decode and carry exactly the sources' bytes.
        name = self._name(key.key)
        try:
            _h, raw, records = decode_segment_raw(self.storage.get(key.key), name)
        except (StorageError, ObjectCorrupt) as exc:
            raise CompactionError(f"compaction stopped, nothing was deleted: merged segment failed to verify: {exc}")
        if hashlib.blake2b(raw, digest_size=32).digest() != digest or len(records) != count:
            raise CompactionError(
                f"compaction stopped, nothing was deleted: {name} does not hold its sources' records byte for byte"
            )
        return key.key, [s.key for s, _h in part], size

    def check_leftovers(self, cover: layout.SegmentKey, inner: list[layout.SegmentKey]) -> None:
        """Before deleting segments an earlier run left behind, prove ``cover`` holds each of them
        byte for byte (the earlier run may have stopped before its own check)."""
        name = self._name(cover.key)
        _h, raw, _records = self._load(cover)
        offsets = _record_offsets(raw, _h["page_size"])
        for seg in inner:
            _sh, sraw, _srec = self._load(seg)
            start, end = offsets.get(seg.first_txid), offsets.get(seg.last_txid + 1)
            if start is None or end is None or raw[start:end] != sraw:
                raise CompactionError(
                    f"compaction stopped, nothing was deleted: {self._name(seg.key)} is contained in {name} by "
                    "name but its records differ; not deleting either"
                )
            self._tick()


def _covering(gen: Generation, seg: layout.SegmentKey) -> layout.SegmentKey:
    return next(s for s in gen.segments if s.first_txid <= seg.first_txid and seg.last_txid <= s.last_txid)


def compact(
    storage: Storage,
    now_us: int | None = None,
    compact_after_us: int = HOUR_US,
    span_us: int = HOUR_US,
    dry_run: bool = False,
    progress: Progress | None = None,
    max_bytes: int = MAX_BYTES,
    max_raw_bytes: int = MAX_RAW_BYTES,
    workdir: str | None = None,
) -> CompactionReport:
    """Merge every generation's segments older than ``now - compact_after_us`` (see module doc).

    Also finishes an interrupted earlier run (segments contained in a merged one are checked
    against it and deleted).  A dry run lists and plans only: no object is read or written.
    """
    started = time.monotonic()
    now = now_us if now_us is not None else time.time_ns() // 1000
    replica = Replica(storage)
    plans: list[tuple[Generation, list[list[layout.SegmentKey]]]] = []
    for gen in replica.generations:
        plans.append((gen, plan_groups(gen, now, compact_after_us, span_us, replica.sizes, max_bytes)))
    leftovers: list[tuple[layout.SegmentKey, list[layout.SegmentKey]]] = []
    for gen in replica.generations:
        by_cover: dict[layout.SegmentKey, list[layout.SegmentKey]] = {}
        for seg in gen.superseded:
            by_cover.setdefault(_covering(gen, seg), []).append(seg)
        leftovers.extend(by_cover.items())
    report = CompactionReport([], 0, 0, dry_run)
    if dry_run:
        for _gen, groups in plans:
            for g in groups:
                key = layout.SegmentKey(g[0].generation, g[0].first_txid, g[-1].last_txid, g[0].first_ts_us, g[-1].last_ts_us)
                report.merged.append((key.key, [s.key for s in g]))
                report.bytes_before += sum(replica.sizes.get(s.key, 0) for s in g)
        report.finished = [(c.key, [s.key for s in inner]) for c, inner in leftovers]
        report.seconds = time.monotonic() - started
        return report
    with tempfile.TemporaryDirectory(prefix="walrewind-compact-", dir=workdir) as tmp:
        worker = _Compactor(storage, tmp, max_raw_bytes, progress)
        worker.total_segments = sum(len(g) for _gen, groups in plans for g in groups)
        worker.total_segments += sum(len(inner) for _c, inner in leftovers)
        for cover, inner in leftovers:
            worker.check_leftovers(cover, inner)
            report.finished.append((cover.key, [s.key for s in inner]))
        for _gen, groups in plans:
            for group in groups:
                for key, sources, size in worker.merge(group):
                    report.merged.append((key, sources))
                    report.bytes_before += sum(replica.sizes.get(k, 0) for k in sources)
                    report.bytes_after += size
    # Everything is created and verified: only now delete (sources are still listed by readers
    # as contained in a merged segment, so they are ignored even before this point).
    doomed = [k for _key, src in report.finished + report.merged for k in src]
    for n, key in enumerate(doomed, 1):
        storage.delete(key)
        if progress:
            progress("deleted", n, len(doomed))
    report.seconds = time.monotonic() - started
    return report
