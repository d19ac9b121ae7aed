"""Rebuild a database as of a moment (or a transaction) into a new file, and prove it is right.

Plan from key names only; download one snapshot plus the segments after it; keep only the last
version of every page up to the target (so each page is written exactly once); write to a temp
file next to the destination; fsync; recompute the whole-database checksum and compare it with the
one recorded for the target transaction; run ``PRAGMA quick_check``; then rename into place.  Any
mismatch or unreadable object aborts with a message naming the object, and nothing is left behind.
"""

from __future__ import annotations

import os
import secrets
import time
from dataclasses import dataclass, field
from typing import Callable

import apsw

from . import layout
from .dbhash import checksum_file
from .format import FLAG_LATE, FLAG_RESYNC, FormatError, read_snapshot
from .replica import Generation, Replica
from .storage import Storage, StorageError
from .timeparse import TimestampError, format_us

FUTURE_SLACK_US = 1_000_000

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
        gens = [g for g in replica.generations if g.first_txid <= target_txid <= g.last_txid]  # type: ignore[operator]
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
        return RestorePlan(gen, snapshot, segments, None, target_txid, notes)

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
        return RestorePlan(gen, snapshot, segments, target_us, None, notes)

    gen = replica.generations[-1]
    snapshot = gen.snapshots[-1]
    segments = [s for s in gen.segments if s.last_txid > snapshot.txid]
    complete = gen.complete_through_us
    notes.append(f"latest point; replica known complete through {format_us(complete)}")  # type: ignore[arg-type]
    return RestorePlan(gen, snapshot, segments, None, None, notes)


def _object_error(storage: Storage, key: str, exc: Exception, last_good: tuple[int, int] | None) -> RestoreError:
    hint = ""
    if last_good:
        hint = f"; the last point that can still be restored is txid {last_good[0]} ({format_us(last_good[1])}): use --txid {last_good[0]}"
    detail = str(exc)
    if key not in detail:
        detail = f"{storage.url}/{key}: {detail}"
    return RestoreError(f"cannot restore: {detail}{hint}")


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
    try:
        blob = storage.get(snap_key)
        header, pages = read_snapshot(blob, f"{storage.url}/{snap_key}")
    except (StorageError, FormatError) as exc:
        raise _object_error(storage, snap_key, exc, None) from None
    page_size = header["page_size"]
    final = (header["txid"], header["ts_us"], header["page_count"], int(header["db_checksum"], 16), 0)
    floor = header["page_count"]  # smallest size since the snapshot: snapshot pages above it are gone
    size = header["page_count"]
    overrides: dict[int, bytes] = {}
    warnings: list[str] = []
    segments_read = 0
    previous_ts = header["ts_us"]
    done = False
    for seg in plan.segments:
        if done:
            break
        try:
            _seg_header, records = replica.load_segment(seg)
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
            if rec.db_pages < size:
                # Pages beyond a shrink are gone: if the database grows again, a page that is not
                # rewritten reads back as zeros, never as its old content.
                for pgno in [p for p in overrides if p > rec.db_pages]:
                    del overrides[pgno]
                floor = min(floor, rec.db_pages)
            for pgno, data in rec.pages.items():
                if pgno <= rec.db_pages:
                    overrides[pgno] = data
            size = rec.db_pages
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
    directory = os.path.dirname(out_path) or "."
    tmp = os.path.join(directory, f".{os.path.basename(out_path)}.walrewind-{secrets.token_hex(4)}.tmp")
    try:
        written = 0
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            limit = min(floor, db_pages)
            try:
                for pgno, data in pages:
                    if pgno > limit:
                        continue
                    if pgno not in overrides:
                        os.pwrite(fd, data, (pgno - 1) * page_size)
                        written += 1
                    if progress and pgno % 4096 == 0:
                        progress("pages", pgno, header["page_count"])
            except FormatError as exc:
                raise _object_error(storage, snap_key, exc, None) from None
            for pgno in sorted(overrides):
                os.pwrite(fd, overrides[pgno], (pgno - 1) * page_size)
                written += 1
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
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except BaseException:
        for path in (tmp, tmp + "-wal", tmp + "-shm"):
            if os.path.exists(path):
                os.unlink(path)
        raise
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
