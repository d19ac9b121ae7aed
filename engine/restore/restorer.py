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

import os
import secrets
import time
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Callable

import apsw

from ..errors import (
    ObjectCorrupt,
    ObjectNotFound,
    OutputExists,
    RestoreError,
    StorageError,
    VerificationFailed,
    WalrewindError,
)
from ..fsutil import fsync_dir
from ..replica import layout
from ..replica.format import FLAG_LATE, FLAG_RESYNC, decode_segment
from ..replica.index import Replica
from ..replica.snapshotfile import open_snapshot_file
from ..sqlite.pagehash import checksum_file
from ..storage import Storage
from ..timeparse import format_us
from .planning import (
    RestorePlan,
    object_error,
    plan_restore,
    point_before_snapshot,
    window_text,
)

__all__ = ["RestoreError", "RestorePlan", "RestoreResult", "plan_restore", "restore", "window_text"]

SEGMENT_PREFETCH = 8  # segments downloaded ahead of the one being applied ...
PREFETCH_BYTES = 32 << 20  # ... as long as they add up to at most this many (compressed) bytes
MAX_RESTARTS = 2  # new plans after an object of the plan vanished (retention or compaction)
RESTART_NOTE = "the replica changed during the restore (retention or compaction); restarted with a new plan"

Progress = Callable[[str, int, int], None]


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
    exact: bool = True  # False: restored a kept snapshot from before the transaction-exact window

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
            "exact": self.exact,
            "notes": self.notes,
            "warnings": self.warnings,
        }


class _Vanished(WalrewindError):
    """An object of the plan was deleted after planning; ``args[0]`` is the error if no restart is left."""


def _storage_failure(storage: Storage, key: str, exc: Exception, last_good: tuple[int, int] | None) -> Exception:
    """The error for an object that could not be read: a missing one may mean the replica changed
    under us (restart with a new plan), anything else aborts the restore."""
    error = object_error(storage, key, exc, last_good)
    return _Vanished(error) if isinstance(exc, (ObjectNotFound, FileNotFoundError)) else error


def restore(
    storage: Storage,
    out_path: str,
    target_us: int | None = None,
    target_txid: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    replica: Replica | None = None,
) -> RestoreResult:
    """Restore to ``target_us`` / ``target_txid`` (the latest point if neither) into ``out_path``.

    Retention and compaction delete objects while restores may be reading them.  When an object
    of the plan has vanished, the replica is listed again and the restore starts over with a new
    plan for the same target (at most ``MAX_RESTARTS`` times): a compaction's merged segment, or
    the next generation, holds the same history.  Any other error aborts as before.
    """
    started = time.monotonic()
    out_path = os.path.abspath(out_path)
    if os.path.exists(out_path) and not force:
        raise OutputExists(f"{out_path} already exists; choose a new file or pass --force to replace it")
    out_dir = os.path.dirname(os.path.abspath(out_path))
    if not os.path.isdir(out_dir):
        raise OutputExists(f"cannot restore into {out_path}: directory {out_dir} does not exist")
    replica = replica or Replica(storage)
    restarts = 0
    while True:
        plan = plan_restore(replica, target_us, target_txid)
        if restarts:
            plan.notes.append(RESTART_NOTE + (f" ({restarts} times)" if restarts > 1 else ""))
        try:
            result = _restore_plan(storage, replica, plan, out_path, target_us, target_txid, force, progress)
        except _Vanished as exc:
            if restarts >= MAX_RESTARTS:
                raise exc.args[0] from None
            restarts += 1
            replica.refresh()
            continue
        result.seconds = time.monotonic() - started
        return result


def _restore_plan(storage: Storage, replica: Replica, plan: RestorePlan, out_path: str, target_us: int | None,
                  target_txid: int | None, force: bool, progress: Progress | None) -> RestoreResult:
    """One attempt at executing ``plan``; raises _Vanished when one of its objects is gone."""
    started = time.monotonic()
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
            # Download only: decoding here would hold up to SEGMENT_PREFETCH decoded segments at
            # once, and a compacted segment decodes to ~30x its compressed size.
            queue.append((seg, pool.submit(storage.get, seg.key)))

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
        except (StorageError, ObjectCorrupt) as exc:
            raise _storage_failure(storage, snap_key, exc, point_before_snapshot(replica, plan)) from None
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
            except (ObjectCorrupt, FileNotFoundError) as exc:
                raise _storage_failure(storage, snap_key, exc, point_before_snapshot(replica, plan)) from None
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
                    seg_header, records = decode_segment(future.result(), f"{storage.url}/{seg.key}")
                    if seg_header.get("generation", plan.generation.id) != plan.generation.id or (
                        db_id and seg_header.get("db_id", db_id) != db_id
                    ):
                        raise ObjectCorrupt(
                            f"{storage.url}/{seg.key}: belongs to generation {seg_header.get('generation')} of "
                            f"database {seg_header.get('db_id')}, not to generation {plan.generation.id} of {db_id}"
                        )
                    if records and (records[0].txid, records[-1].txid) != (seg.first_txid, seg.last_txid):
                        raise ObjectCorrupt(
                            f"{storage.url}/{seg.key}: holds transactions {records[0].txid}..{records[-1].txid}, "
                            "not what its name says"
                        )
                except (StorageError, ObjectCorrupt) as exc:
                    raise _storage_failure(storage, seg.key, exc, (final[0], final[1])) from None
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
                        raise object_error(
                            storage,
                            seg.key,
                            ObjectCorrupt(f"{storage.url}/{seg.key}: history jumps from txid {final[0]} to {rec.txid}"),
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
            if target_txid is not None and plan.exact and final[0] != target_txid:
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
            raise VerificationFailed(
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
        exact=plan.exact,
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
