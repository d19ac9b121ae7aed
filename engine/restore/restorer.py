"""Rebuild a database as of a moment (or a transaction) into a new file, and prove it is right.

One LIST plans the restore from key names (refusing up front a history with a hole or two
overlapping writers, planning.py).  Then everything the plan needs is fetched in parallel and
streamed (fetch.py): the segments newest-first, each verified by its digest on a download
thread, applied so that every page is written once, at its final version (replay.py explains
why that is exact); meanwhile the snapshot downloads as parallel ranged GETs and is then
streamed through its digest and zstd into the pages nothing newer supplied.  The recorded
database checksum is computed over the pages as they are written (pagesink.py), never by reading
the file back; then fsync, ``PRAGMA quick_check`` (``check``: "quick", "full" = integrity_check,
or "none"), and rename into place.  Memory is bounded by the download windows whatever the
database size.

Nothing is trusted before it is verified: the temporary file is renamed only after the snapshot's
digest, every segment's digest, the snapshot's own checksum and the target's recorded checksum
all matched.  A damaged snapshot is skipped: the restore re-plans from the newest older valid
snapshot and replays segments from there, and says which object it skipped and why.  Any other
corrupt, truncated or missing object aborts with a message naming it and the last point that can
still be restored, and nothing is left behind: never a silently wrong database.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

from ..errors import OutputExists, RestoreError, UsageError, VerificationFailed
from ..fsutil import fsync_dir
from ..replica.index import Replica
from ..storage import Storage
from ..timeparse import format_us
from .checks import CHECKS, run_check
from .planning import RestorePlan, plan_restore, window_text
from .replay import Progress, Replay, SnapshotDamaged, Vanished

__all__ = ["RestoreError", "RestorePlan", "RestoreResult", "Progress", "plan_restore", "restore", "window_text"]

MAX_RESTARTS = 2  # new plans after an object of the plan vanished (retention or compaction)
RESTART_NOTE = "the replica changed during the restore (retention or compaction); restarted with a new plan"


@dataclass
class RestoreResult:
    path: str
    txid: int
    commit_us: int
    db_pages: int
    page_size: int
    checksum: int
    quick_check: str  # the result of the SQLite check that ran ("ok"), or "not run" for check="none"
    seconds: float
    bytes_written: int
    segments_read: int
    notes: list[str]
    warnings: list[str]
    # False: a kept snapshot from before the transaction-exact window was restored, or the target
    # lies in a gap the daemon could not observe (a warning says which)
    exact: bool = True
    check: str = "quick"
    db_id: str | None = None
    skipped: dict[str, str] = field(default_factory=dict)  # damaged snapshot key -> why it was skipped
    stage_seconds: dict[str, float] = field(default_factory=dict)

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
            "check": self.check,
            "quick_check": self.quick_check,
            "seconds": round(self.seconds, 3),
            "segments_read": self.segments_read,
            "exact": self.exact,
            "notes": self.notes,
            "warnings": self.warnings,
            "skipped_snapshots": [{"key": k, "reason": v} for k, v in self.skipped.items()],
        }


def restore(
    storage: Storage,
    out_path: str,
    target_us: int | None = None,
    target_txid: int | None = None,
    force: bool = False,
    progress: Progress | None = None,
    replica: Replica | None = None,
    check: str = "quick",
) -> RestoreResult:
    """Restore to ``target_us`` / ``target_txid`` (the latest point if neither) into ``out_path``.

    ``progress(stage, done, total)`` is called with object bytes read out of the plan's total
    (stages "segments", "snapshot"), then ("check", 0, size) and ("check", size, size) around the
    SQLite check.  Retention and compaction delete objects while restores may be reading them:
    when an object of the plan has vanished, the replica is listed again and the restore starts
    over with a new plan for the same target (at most ``MAX_RESTARTS`` times).  A damaged snapshot
    is skipped (re-planned from an older one, see ``plan_restore(skip=...)``), as often as there
    are snapshots.  Any other error aborts.
    """
    if check not in CHECKS:
        raise UsageError(f"unknown check {check!r} (use {', '.join(CHECKS)})")
    started = time.monotonic()
    out_path = os.path.abspath(out_path)
    if os.path.exists(out_path) and not force:
        raise OutputExists(f"{out_path} already exists; choose a new file or pass --force to replace it")
    out_dir = os.path.dirname(out_path)
    if not os.path.isdir(out_dir):
        raise OutputExists(f"cannot restore into {out_path}: directory {out_dir} does not exist")
    replica = replica or Replica(storage)
    restarts = 0
    skipped: dict[str, str] = {}
    while True:
        plan = plan_restore(replica, target_us, target_txid, skip=skipped)
        if restarts:
            plan.notes.append(RESTART_NOTE + (f" ({restarts} times)" if restarts > 1 else ""))
        try:
            result = _restore_plan(storage, replica, plan, out_path, force, progress, check)
        except Vanished as exc:
            if restarts >= MAX_RESTARTS:
                raise exc.args[0] from None
            restarts += 1
            replica.refresh()
            continue
        except SnapshotDamaged as exc:
            skipped[exc.key] = exc.reason
            continue
        result.skipped = dict(skipped)
        result.warnings[:0] = [f"skipped damaged snapshot {storage.url}/{k}: {why}" for k, why in skipped.items()]
        result.seconds = time.monotonic() - started
        return result


def _restore_plan(storage: Storage, replica: Replica, plan: RestorePlan, out_path: str, force: bool,
                  progress: Progress | None, check: str) -> RestoreResult:
    """One attempt at ``plan`` into a temporary file next to ``out_path``, renamed when verified."""
    started = time.monotonic()
    directory = os.path.dirname(out_path)
    tmp = os.path.join(directory, f".{os.path.basename(out_path)}.walrewind-{os.urandom(4).hex()}.tmp")
    try:
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            outcome = Replay(storage, replica, plan, fd, progress).run()
            point = outcome.point
            if outcome.checksum != point.checksum:
                raise VerificationFailed(
                    f"verification failed: restored pages have checksum {outcome.checksum:016x}, not "
                    f"the recorded {point.checksum:016x} for txid {point.txid}; nothing was written to {out_path}"
                )
            mark = time.monotonic()
            os.ftruncate(fd, point.db_pages * outcome.page_size)
            os.fsync(fd)
            outcome.stage_seconds["fsync"] = time.monotonic() - mark
        finally:
            os.close(fd)
        size = point.db_pages * outcome.page_size
        mark = time.monotonic()
        if progress:
            progress("check", 0, size)
        verdict = run_check(tmp, check)
        if progress:
            progress("check", size, size)
        outcome.stage_seconds["check"] = time.monotonic() - mark
        if verdict not in ("ok", "not run"):
            name = "integrity_check" if check == "full" else "quick_check"
            raise RestoreError(f"PRAGMA {name} failed on the restored database: {verdict}")
        for suffix in ("-wal", "-shm"):
            if force and os.path.exists(out_path + suffix):
                os.unlink(out_path + suffix)
        os.replace(tmp, out_path)
        fsync_dir(directory)
    except BaseException:
        for path in (tmp, tmp + "-wal", tmp + "-shm"):
            if os.path.exists(path):
                os.unlink(path)
        raise
    return RestoreResult(
        out_path, point.txid, point.commit_us, point.db_pages, outcome.page_size, point.checksum, verdict,
        time.monotonic() - started, outcome.pages_written * outcome.page_size, outcome.segments_read,
        plan.notes, outcome.warnings, exact=plan.exact and not outcome.inexact, check=check, db_id=outcome.db_id,
        stage_seconds={k: round(v, 4) for k, v in outcome.stage_seconds.items()},
    )
