"""Rebuild a database as of a moment (or a transaction) into a new file, and prove it is right.

Plan from key names only (and refuse up front when the history the target needs has a hole or two
overlapping writers); download one snapshot (parallel ranged GETs into a temp file, verified by its
digest before a byte is used) while the segments after it are prefetched in parallel (a bounded
window); write the snapshot's pages, then apply every record in txid order with ``pwrite`` /
``ftruncate`` (memory stays bounded whatever the database or history size); fsync; recompute the
whole-database checksum and compare it with the one recorded for the target transaction; run
``PRAGMA quick_check``; then rename into place.  Any mismatch, unreadable, truncated or missing
object aborts with a message naming the object and the last point that can still be restored, and
nothing is left behind: never a silently wrong database.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import secrets
import struct
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Callable, Iterator

import apsw

from . import layout
from .dbhash import checksum_file
from .format import FLAG_LATE, FLAG_RESYNC, FORMAT_VERSION, SNAPSHOT_MAGIC, FormatError, iter_snapshot_pages
from .fsutil import fsync_dir
from .replica import Generation, Replica
from .storage import Storage, StorageError
from .timeparse import TimestampError, format_us

FUTURE_SLACK_US = 1_000_000
SEGMENT_PREFETCH = 8  # segments downloaded ahead of the one being applied ...
PREFETCH_BYTES = 32 << 20  # ... as long as they add up to at most this many (compressed) bytes
_PREFIX = struct.Struct("<4sHI")
_TRAILER = struct.Struct("<Q32s")

Progress = Callable[[str, int, int], None]


class RestoreError(Exception):
    """The restore cannot be done as asked; the message says why and what can be done instead."""


@dataclass
class RestorePlan:
    generation: Generation
    snapshot: layout.SnapshotKey
    segments: list[layout.SegmentKey]
    target_us: int | None
    target_txid: int | None
    notes: list[str] = field(default_factory=list)

    def describe(self) -> dict:
        return {
            "generation": self.generation.id,
            "snapshot": {"txid": self.snapshot.txid, "time": format_us(self.snapshot.ts_us), "key": self.snapshot.key},
            "segments": [s.key for s in self.segments],
            "target_time": format_us(self.target_us) if self.target_us is not None else None,
            "target_txid": self.target_txid,
            "notes": self.notes,
        }


@dataclass
class RestoreResult:
    path: str
    txid: int
    commit_us: int
    db_pages: int
    page_size: int
    checksum: int
    quick_check: str
    seconds: float
    bytes_written: int
    segments_read: int
    notes: list[str]
    warnings: list[str]

    def to_json(self) -> dict:
        return {
            "path": self.path,
            "txid": self.txid,
            "commit_time": format_us(self.commit_us),
            "db_pages": self.db_pages,
            "page_size": self.page_size,
            "size_bytes": self.db_pages * self.page_size,
            "checksum": f"{self.checksum:016x}",
            "verified": True,
            "quick_check": self.quick_check,
            "seconds": round(self.seconds, 3),
            "segments_read": self.segments_read,
            "notes": self.notes,
            "warnings": self.warnings,
        }


def window_text(replica: Replica) -> str:
    latest = replica.latest()
    return f"{format_us(replica.earliest_us())} to {format_us(latest[1])}" if latest else "empty"  # type: ignore[arg-type]


def plan_restore(
    replica: Replica, target_us: int | None = None, target_txid: int | None = None, now_us: int | None = None
) -> RestorePlan:
    if replica.empty:
        raise RestoreError(f"{replica.storage.url}: the replica holds no restorable history (no snapshot found)")
    now_us = now_us if now_us is not None else time.time_ns() // 1000
    latest_txid, latest_us = replica.latest()  # type: ignore[misc]
    notes: list[str] = []
    if target_txid is not None:
        gens = [
            g for g in replica.generations
            if g.first_txid <= target_txid <= max(g.last_txid, g.vouched_txid or 0)  # type: ignore[operator]
        ]
        if not gens:
            first = replica.generations[0].first_txid
            if target_txid < first:  # type: ignore[operator]
                raise RestoreError(f"Transaction {target_txid} is too old: earliest restorable transaction is {first}")
            if target_txid > latest_txid:
                raise RestoreError(
                    f"Transaction {target_txid} has not been replicated: newest replicated transaction is "
                    f"{latest_txid} ({format_us(latest_us)})"
                )
            raise RestoreError(f"Transaction {target_txid} falls between generations and cannot be restored")
        gen = gens[-1]
        snapshot = max((s for s in gen.snapshots if s.txid <= target_txid), key=lambda s: s.txid)
        segments = [s for s in gen.segments if s.last_txid > snapshot.txid and s.first_txid <= target_txid]
        return _checked(replica, RestorePlan(gen, snapshot, segments, None, target_txid, notes))

    if target_us is not None:
        if target_us > now_us + FUTURE_SLACK_US:
            raise TimestampError(f"Timestamp is in the future: {format_us(target_us)} (now is {format_us(now_us)})")
        earliest = replica.earliest_us()
        if target_us < earliest:  # type: ignore[operator]
            raise TimestampError(
                f"Timestamp too old: earliest restorable point is {format_us(earliest)} "  # type: ignore[arg-type]
                f"(restorable window: {window_text(replica)})"
            )
        gen = [g for g in replica.generations if g.start_us <= target_us][-1]  # type: ignore[operator]
        complete = gen.complete_through_us or gen.last_commit_us
        if target_us > gen.last_commit_us:  # type: ignore[operator]
            if gen is replica.generations[-1]:
                notes.append(
                    f"target is after the newest replicated transaction; restoring the newest "
                    f"(replica known complete through {format_us(complete)})"  # type: ignore[arg-type]
                )
                if target_us > complete:  # type: ignore[operator]
                    notes.append(
                        f"no record of the database between {format_us(complete)} and the target: "  # type: ignore[arg-type]
                        "the daemon may not have been running"
                    )
            else:
                notes.append(
                    f"the daemon's history has a break after {format_us(complete)} "  # type: ignore[arg-type]
                    "(a new generation started later); restoring the last point before the break"
                )
        snapshot = max((s for s in gen.snapshots if s.ts_us <= target_us), key=lambda s: s.txid)
        segments = [s for s in gen.segments if s.last_txid > snapshot.txid and s.first_ts_us <= target_us]
        # The first segment after the target is read too: if it starts with a RESYNC (or LATE)
        # record, the target lies in a gap the daemon could not observe, and the restore must say so.
        after = [s for s in gen.segments if s.last_txid > snapshot.txid and s.first_ts_us > target_us]
        segments += after[:1]
        return _checked(replica, RestorePlan(gen, snapshot, segments, target_us, None, notes))

    gen = replica.generations[-1]
    snapshot = gen.snapshots[-1]
    segments = [s for s in gen.segments if s.last_txid > snapshot.txid]
    complete = gen.complete_through_us
    notes.append(f"latest point; replica known complete through {format_us(complete)}")  # type: ignore[arg-type]
    return _checked(replica, RestorePlan(gen, snapshot, segments, None, None, notes))


def _hint(last_good: tuple[int, int | None] | None) -> str:
    if not last_good:
        return "; no earlier point of this history can be restored"
    txid, ts = last_good
    when = f" ({format_us(ts)})" if ts is not None else ""
    return f"; the last point that can still be restored is txid {txid}{when}: use --txid {txid}"


def _checked(replica: Replica, plan: RestorePlan) -> RestorePlan:
    """Refuse, before downloading anything, a plan whose history has a hole or two writers.

    Holes: a segment missing between two present ones, or after the last one when a heartbeat
    vouches for more.  Overlaps: two segments covering the same txids (two daemons in one path).
    Either would otherwise surface only as a checksum failure, or not at all for a target that
    happens to fall before the missing records' unknown commit times.
    """
    gen, snap, url = plan.generation, plan.snapshot, replica.storage.url
    planned = set(plan.segments)
    for a, b in gen.overlaps():
        if a in planned or b in planned:
            last = b.first_txid - 1
            raise RestoreError(
                f"cannot restore: generation {gen.id} in {url} holds overlapping segments {a.key} and {b.key} "
                f"(transactions {b.first_txid}..{min(a.last_txid, b.last_txid)} were written twice: two daemons "
                "shipped into one replica path); refusing to choose between two histories"
                + _hint((last, None) if last >= snap.txid else None)
            )
    expected, last_good = snap.txid + 1, (snap.txid, snap.ts_us)
    # For a time target, the segment read past the target (gap detection) is checked like the rest
    # of the generation below: a hole before it matters only if the target may need what is missing.
    core = [s for s in plan.segments if plan.target_us is None or s.first_ts_us <= plan.target_us]
    for seg in core:
        if seg.first_txid > expected:
            raise RestoreError(
                f"cannot restore: history jumps from txid {expected - 1} to {seg.first_txid}: the segment(s) "
                f"holding transactions {expected}..{seg.first_txid - 1} of generation {gen.id} are missing from "
                f"{url} (the next present segment is {seg.key})" + _hint(last_good)
            )
        if seg.last_txid >= expected:
            expected, last_good = seg.last_txid + 1, (seg.last_txid, seg.last_ts_us)
    later = [s for s in gen.segments if s.first_txid >= expected]
    hole: tuple[int, int] | None = None
    if later and later[0].first_txid > expected:
        hole = (expected, later[0].first_txid - 1)
    elif not later and (gen.vouched_txid or 0) >= expected:
        hole = (expected, gen.vouched_txid)  # type: ignore[assignment]
    if hole is not None:
        if plan.target_txid is not None:
            needed = plan.target_txid >= hole[0]
        elif plan.target_us is not None:
            needed = plan.target_us >= last_good[1]  # the missing records committed at or after it
        else:
            needed = True
        if needed:
            if later:
                what = f"history jumps from txid {hole[0] - 1} to {hole[1] + 1}"
                after = f" (the next present segment is {later[0].key})"
            else:
                what = f"history ends at txid {hole[0] - 1} but a heartbeat vouches for txid {hole[1]}"
                after = ""
            raise RestoreError(
                f"cannot restore: {what}: the segment(s) holding transactions {hole[0]}..{hole[1]} of generation "
                f"{gen.id} are missing from {url}{after}" + _hint(last_good)
            )
    return plan


def _object_error(storage: Storage, key: str, exc: Exception, last_good: tuple[int, int] | None) -> RestoreError:
    detail = str(exc)
    if key not in detail:
        detail = f"{storage.url}/{key}: {detail}"
    return RestoreError(f"cannot restore: {detail}" + _hint(last_good))


def _before_snapshot(replica: Replica, plan: RestorePlan) -> tuple[int, int] | None:
    """The newest point that does not need ``plan.snapshot`` (an older snapshot of the same
    generation, else the end of the previous generation)."""
    gen = plan.generation
    if any(s.txid < plan.snapshot.txid for s in gen.snapshots):
        return plan.snapshot.txid - 1, None  # type: ignore[return-value]
    before = [g for g in replica.generations if g.id < gen.id]
    if before:
        return before[-1].last_txid, before[-1].last_commit_us  # type: ignore[return-value]
    return None


class _Payload(io.RawIOBase):
    """Reads exactly ``length`` bytes of a file from ``offset`` (the zstd frame of a snapshot)."""

    def __init__(self, f, offset: int, length: int) -> None:
        self._f = f
        self._pos = offset
        self._end = offset + length

    def readable(self) -> bool:
        return True

    def readinto(self, buf) -> int:
        n = min(len(buf), self._end - self._pos)
        if n <= 0:
            return 0
        data = os.pread(self._f.fileno(), n, self._pos)
        buf[: len(data)] = data
        self._pos += len(data)
        return len(data)


def open_snapshot_file(path: str, name: str) -> tuple[dict, Callable[[], Iterator[tuple[int, bytes]]]]:
    """Verify a snapshot object stored in a file and return (header, page iterator factory).

    The same checks, in the same order, as ``format._open_envelope`` (docs/FORMAT.md section 2),
    but streaming: the digest is computed over the file before any payload byte is used, and pages
    are decompressed from the file, so memory does not grow with the database.
    """
    size = os.path.getsize(path)
    if size < _PREFIX.size + _TRAILER.size:
        raise FormatError(f"{name}: object is truncated ({size} bytes)")
    with open(path, "rb") as f:
        magic, version, head_len = _PREFIX.unpack(f.read(_PREFIX.size))
        if magic != SNAPSHOT_MAGIC:
            raise FormatError(f"{name}: not a walrewind snapshot (bad magic)")
        if version != FORMAT_VERSION:
            raise FormatError(f"{name}: format version {version} is not supported (this build reads {FORMAT_VERSION})")
        f.seek(0)
        hasher = hashlib.blake2b(digest_size=32)
        remaining = size - 32
        while remaining:
            chunk = f.read(min(remaining, 8 << 20))
            if not chunk:
                raise FormatError(f"{name}: object is truncated")
            hasher.update(chunk)
            remaining -= len(chunk)
        payload_len, digest = _TRAILER.unpack(os.pread(f.fileno(), _TRAILER.size, size - _TRAILER.size))
        if hasher.digest() != digest:
            raise FormatError(f"{name}: checksum mismatch (object is corrupt or truncated)")
        start = _PREFIX.size + head_len
        if start + payload_len != size - _TRAILER.size:
            raise FormatError(f"{name}: payload length does not match the object size")
        try:
            header = json.loads(os.pread(f.fileno(), head_len, _PREFIX.size))
        except ValueError as exc:
            raise FormatError(f"{name}: unreadable header ({exc})") from None
    if not isinstance(header, dict) or any(not isinstance(header.get(k), int) for k in ("page_size", "page_count")):
        raise FormatError(f"{name}: header lacks required fields page_size, page_count")
    page_size = header["page_size"]

    def pages() -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as f:
            stream = io.BufferedReader(_Payload(f, start, payload_len), 1 << 20)
            yield from iter_snapshot_pages(stream, page_size, header["page_count"], name)

    return header, pages


def restore(
    storage: Storage,
    out_path: str,
    target_us: int | None = None,
    target_txid: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    replica: Replica | None = None,
) -> RestoreResult:
    started = time.monotonic()
    out_path = os.path.abspath(out_path)
    if os.path.exists(out_path) and not force:
        raise RestoreError(f"{out_path} already exists; choose a new file or pass --force to replace it")
    replica = replica or Replica(storage)
    plan = plan_restore(replica, target_us, target_txid)
    snap_key = plan.snapshot.key
    directory = os.path.dirname(out_path) or "."
    token = secrets.token_hex(4)
    tmp = os.path.join(directory, f".{os.path.basename(out_path)}.walrewind-{token}.tmp")
    snap_tmp: str | None = None
    warnings: list[str] = []
    pool = ThreadPoolExecutor(max_workers=SEGMENT_PREFETCH, thread_name_prefix="walrewind-restore")
    queue: list[tuple[layout.SegmentKey, Future]] = []
    pending = iter(plan.segments)

    waiting: list[layout.SegmentKey] = []

    def prefetch() -> None:
        """Keep up to SEGMENT_PREFETCH segments (PREFETCH_BYTES, at least one) downloading."""
        in_flight = sum(replica.sizes.get(seg.key, 0) for seg, _ in queue)  # type: ignore[union-attr]
        while len(queue) < SEGMENT_PREFETCH:
            seg = waiting.pop() if waiting else next(pending, None)
            if seg is None:
                return
            size = replica.sizes.get(seg.key, 0)  # type: ignore[union-attr]
            if queue and in_flight + size > PREFETCH_BYTES:
                waiting.append(seg)
                return
            in_flight += size
            queue.append((seg, pool.submit(replica.load_segment, seg)))  # type: ignore[union-attr]

    try:
        prefetch()  # segments download while the snapshot does
        snap_name = f"{storage.url}/{snap_key}"
        try:
            snap_path = storage.local_path(snap_key)
            if snap_path is None:
                snap_tmp = os.path.join(directory, f".{os.path.basename(out_path)}.walrewind-{token}.snap")
                storage.get_to_file(snap_key, snap_tmp)
                snap_path = snap_tmp
            header, snapshot_pages = open_snapshot_file(snap_path, snap_name)
        except (StorageError, FormatError) as exc:
            raise _object_error(storage, snap_key, exc, _before_snapshot(replica, plan)) from None
        page_size = header["page_size"]
        db_id = header.get("db_id")
        final = (header["txid"], header["ts_us"], header["page_count"], int(header["db_checksum"], 16), 0)
        written = 0
        segments_read = 0
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            try:
                for pgno, data in snapshot_pages():
                    os.pwrite(fd, data, (pgno - 1) * page_size)
                    written += 1
                    if progress and pgno % 4096 == 0:
                        progress("pages", pgno, header["page_count"])
            except FormatError as exc:
                raise _object_error(storage, snap_key, exc, _before_snapshot(replica, plan)) from None
            if snap_tmp is not None:
                os.unlink(snap_tmp)
                snap_tmp = None
            size = header["page_count"]
            os.ftruncate(fd, size * page_size)
            previous_ts = header["ts_us"]
            done = False
            while queue and not done:
                seg, future = queue.pop(0)
                prefetch()
                try:
                    seg_header, records = future.result()
                    if seg_header.get("generation", plan.generation.id) != plan.generation.id or (
                        db_id and seg_header.get("db_id", db_id) != db_id
                    ):
                        raise FormatError(
                            f"{storage.url}/{seg.key}: belongs to generation {seg_header.get('generation')} of "
                            f"database {seg_header.get('db_id')}, not to generation {plan.generation.id} of {db_id}"
                        )
                    if records and (records[0].txid, records[-1].txid) != (seg.first_txid, seg.last_txid):
                        raise FormatError(
                            f"{storage.url}/{seg.key}: holds transactions {records[0].txid}..{records[-1].txid}, "
                            "not what its name says"
                        )
                except (StorageError, FormatError) as exc:
                    raise _object_error(storage, seg.key, exc, (final[0], final[1])) from None
                segments_read += 1
                if progress:
                    progress("segments", segments_read, len(plan.segments))
                for rec in records:
                    if rec.txid <= final[0]:
                        continue
                    if (target_txid is not None and rec.txid > target_txid) or (
                        target_us is not None and rec.commit_ts_us > target_us
                    ):
                        if target_us is not None and rec.flags & FLAG_RESYNC:
                            warnings.append(
                                f"the replica has no record of changes between {format_us(previous_ts)} and "
                                f"{format_us(rec.commit_ts_us)} (history gap, repaired by a resync at txid {rec.txid}); "
                                "restored the last point before the gap"
                            )
                        elif target_us is not None and rec.flags & FLAG_LATE:
                            warnings.append(
                                f"transaction {rec.txid} was read after a daemon restart: it committed between "
                                f"{format_us(previous_ts)} and {format_us(rec.commit_ts_us)}, so the target may be "
                                "missing it"
                            )
                        done = True
                        break
                    if rec.txid != final[0] + 1:
                        raise _object_error(
                            storage,
                            seg.key,
                            FormatError(f"{storage.url}/{seg.key}: history jumps from txid {final[0]} to {rec.txid}"),
                            (final[0], final[1]),
                        )
                    # docs/FORMAT.md section 5: pages beyond a shrink are gone (they read back as
                    # zeros if the database grows again); entries above db_pages are ignored.
                    if rec.db_pages < size:
                        os.ftruncate(fd, rec.db_pages * page_size)
                    for pgno, data in rec.pages.items():
                        if pgno <= rec.db_pages:
                            os.pwrite(fd, data, (pgno - 1) * page_size)
                            written += 1
                    size = rec.db_pages
                    os.ftruncate(fd, size * page_size)
                    final = (rec.txid, rec.commit_ts_us, rec.db_pages, rec.db_checksum, rec.flags)
                    previous_ts = rec.commit_ts_us
            if target_txid is not None and final[0] != target_txid:
                raise RestoreError(f"transaction {target_txid} was not found in {storage.url} (history ends at {final[0]})")
            if final[4] & FLAG_LATE:
                warnings.append(
                    f"transaction {final[0]} was read after a daemon restart; its commit time is known only as "
                    f"'at or before {format_us(final[1])}'"
                )
            db_pages = final[2]
            os.ftruncate(fd, db_pages * page_size)
            os.fsync(fd)
        finally:
            os.close(fd)
        actual = checksum_file(tmp, page_size)
        if actual != final[3]:
            raise RestoreError(
                f"verification failed: restored file checksum {actual:016x} does not match the recorded "
                f"{final[3]:016x} for txid {final[0]}; nothing was written to {out_path}"
            )
        quick = _quick_check(tmp)
        if quick != "ok":
            raise RestoreError(f"PRAGMA quick_check failed on the restored database: {quick}")
        for suffix in ("-wal", "-shm"):
            if os.path.exists(out_path + suffix) and force:
                os.unlink(out_path + suffix)
        os.replace(tmp, out_path)
        fsync_dir(directory)
    except BaseException:
        for path in (tmp, tmp + "-wal", tmp + "-shm", snap_tmp):
            if path and os.path.exists(path):
                os.unlink(path)
        raise
    finally:
        for _seg, future in queue:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    return RestoreResult(
        out_path,
        final[0],
        final[1],
        db_pages,
        page_size,
        final[3],
        quick,
        time.monotonic() - started,
        written * page_size,
        segments_read,
        plan.notes,
        warnings,
    )


def _quick_check(path: str) -> str:
    """quick_check without leaving -wal/-shm files behind or changing a byte of the file."""
    try:
        conn = apsw.Connection(f"file:{path}?immutable=1", flags=apsw.SQLITE_OPEN_READONLY | apsw.SQLITE_OPEN_URI)
        try:
            rows = [r[0] for r in conn.execute("PRAGMA quick_check")]
        finally:
            conn.close()
    except apsw.Error as exc:
        return f"{type(exc).__name__}: {exc}"
    return "ok" if rows == ["ok"] else "; ".join(map(str, rows[:5]))
