"""An upload round: the uploads of many databases due at once, with their flushes shared.

In a process serving many databases (a sqld data directory) the upload pool (uploadloop.py)
runs every database's upload steps, on a grid of ``ROUND_GRID`` seconds, so that the databases
written at a slow steady rate come due together.  Uploaded one by one, each database's upload
flushes three times: its spool file (before anything of it is uploaded), the new segment file
(before it is named), the segment's directory (before the hashes log may say it is uploaded).
With 100 namespaces written at 1 txn/s that was 300 flushes a second, most of the pool's CPU.
A round does the same in phases, each phase's flushes made by one ``SyncGroup.sync()`` (a
``syncfs`` per file system, syncgroup.py):

1. every database: seal its spool (flush deferred), build its segment, write it to an unnamed
   file in the replica (``LocalStorage.stage_if_absent``; not flushed, not named);
2. one sync: every spool and every segment's bytes are durable;
3. every database: name its segment (``linkat``; create-only as before);
4. one sync: every name is durable;
5. every database: advance its hashes, append the uploaded point to its hashes log, forget
   the piece.

The crash argument is the one-by-one upload's, phase for phase: a segment is named only after
its spool records and its own bytes are durable (2 before 3), and the hashes log says
"uploaded" only after the name is durable (4 before 5).  A crash between 3 and 4 may leave a
named segment whose name, or the log's point past it, is lost: the start replays the durable
spool, uploads the same records again, and finds either no object or the same one (the
identical-object check of ``segmentput``), as after a crash in the middle of a single upload.

One database's failure in a phase fails only that database's upload (it retries through its
ordinary steps); a failed sync fails every upload that depended on it, and the spools it would
have flushed are marked unflushed again.  Only stores that can stage a put take part (a plain
file replica: ``Storage.stages_puts``); an S3 PUT is durable when it returns and gains nothing
from a round, and an encrypted replica seals every object through its wrapper.
"""

from __future__ import annotations

import contextlib
import os
import threading
from typing import Any, Protocol

from .. import logs
from ..errors import WalrewindError
from . import segmentput
from .syncgroup import SyncGroup

ROUND_GRID = 0.1  # seconds: a many-database process's uploads fall due on this grid
ROUND_MIN = 3  # fewer databases due together upload one by one (their own flushes)


class RoundStage(Protocol):
    """What a round uses of a database's upload stage (engine/daemon/uploader.Uploader)."""

    lock: threading.Lock
    shipper: Any
    soon: Any
    sealed_through_us: int

    def round_started(self) -> None: ...

    def segment(self, piece: Any) -> Any: ...  # Segment | None

    def uploaded(self, segment: Any) -> None: ...

    def upload_ok(self) -> None: ...

    def round_failed(self, exc: Exception) -> bool: ...


class _Entry:
    """One database's part of a round."""

    __slots__ = ("stage", "name", "segment", "staged", "locked", "more")

    def __init__(self, stage: RoundStage, name: str) -> None:
        self.stage, self.name = stage, name
        self.segment: Any = None  # uploader.Segment
        self.staged = None  # LocalStorage StagedPut
        self.locked = False
        self.more = True  # what step() would have returned


def run_round(stages: list[tuple[RoundStage, str]]) -> list[bool]:
    """Upload for every ``(stage, name)`` given (each ``round_ready``); returns, per stage, what
    its ``step()`` would have (False: the stage is done)."""
    entries = [_Entry(stage, name) for stage, name in stages]
    spools_and_data = SyncGroup()
    names = SyncGroup()
    live: list[_Entry] = []
    try:
        for e in entries:
            if _guard(e, _prepare, e, spools_and_data) and e.locked:  # (not locked: nothing to upload)
                live.append(e)
        live = _sync_or_fail(live, spools_and_data)
        for e in live:
            _guard(e, _name, e, names)
        live = [e for e in live if e.locked]
        live = _sync_or_fail(live, names)
        for e in live:
            _guard(e, _finish, e)
    finally:
        spools_and_data.close()
        names.close()
        for e in entries:
            _release(e)
    return [e.more for e in entries]


def _guard(e: _Entry, fn, *args) -> bool:
    """Run one database's phase; a failure ends that database's part of the round."""
    logs.bind(e.name)
    try:
        fn(*args)
        return True
    except _NotPlain:
        _release(e)
        e.stage.soon.set()  # its next step, right after the round, uploads what waits
        return False
    except Exception as exc:
        e.more = e.stage.round_failed(exc)
        _release(e)
        return False
    finally:
        logs.bind(None)


def _sync_or_fail(live: list[_Entry], group: SyncGroup) -> list[_Entry]:
    try:
        group.sync()
    except OSError as exc:
        for e in live:
            _guard(e, _raise, exc)
        return []
    return live


def _raise(exc: Exception) -> None:
    raise exc


def _prepare(e: _Entry, group: SyncGroup) -> None:
    """Phase 1: seal (flush deferred to ``group``), build the segment, stage it unflushed."""
    up = e.stage
    up.round_started()
    up.lock.acquire()
    e.locked = True
    sh = up.shipper
    through = sh.spooled_through_us
    sh.state.seal(group=group)
    up.sealed_through_us = through
    pieces = sh.state.sealed_files()
    if len(pieces) != 1:  # (an earlier failed attempt left one: the ordinary step uploads them)
        raise _NotPlain()
    e.segment = up.segment(pieces[0])
    if e.segment is None:
        _release(e)
        up.upload_ok()
        return
    if e.segment.body is not None:
        e.staged = sh.storage.stage_if_absent(e.segment.key, e.segment.body)
        if e.staged is not None:
            group.add(e.staged.fd)


def _name(e: _Entry, group: SyncGroup) -> None:
    """Phase 3: name the segment (or upload it, when it could not be staged)."""
    seg, storage = e.segment, e.stage.shipper.storage
    if seg is None:
        return
    if e.staged is None:
        if seg.tmp is None:
            segmentput.put_segment(storage, seg.key, seg.body)
        else:
            try:
                segmentput.put_segment_file(storage, seg.key, seg.tmp)
            finally:
                os.unlink(seg.tmp)
        return
    if e.staged.link():
        group.add(e.staged.dfd)
    else:  # the key exists: the same history (a retry after a crash) or a conflict
        segmentput.put_segment(storage, seg.key, seg.body, already_tried=True)


def _finish(e: _Entry) -> None:
    """Phase 5: the segment is durable and named: advance the point."""
    if e.segment is not None:
        e.stage.uploaded(e.segment)
        e.stage.upload_ok()


def _release(e: _Entry) -> None:
    if e.staged is not None:
        e.staged.close()
        e.staged = None
    if e.segment is not None and e.segment.tmp is not None:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(e.segment.tmp)  # a big piece's staging copy, when the round ended before _name
    if e.locked:
        e.locked = False
        e.stage.lock.release()


class _NotPlain(WalrewindError):
    """Not an ordinary upload after all; the database's next step does it (not a failure)."""
