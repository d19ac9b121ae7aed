"""Executing one restore plan: segments newest-first, then the snapshot streamed, into one file.

**Why newest-first is exact.**  docs/FORMAT.md section 5 defines the result of applying records
r1..rn (ascending txid) to a snapshot: for every record, its page entries with ``pgno <=
db_pages`` are written, then the file is cut to ``db_pages``.  So page p of the result is

* the entry of the *newest* record r_i that has p, provided p <= db_pages of every record from
  r_i to r_n (a later cut below p discards it: pages that come back by growth are zero);
* else the snapshot's page p, provided p <= page_count and p <= db_pages of every record;
* else zero.

Walking the records from r_n down to r1 with ``limit`` = the smallest ``db_pages`` seen so far
(r_i's own included), the first entry for p with ``p <= limit`` is exactly the first case (the
limit only shrinks going back, so an entry excluded once stays excluded); ``PageBitmap`` skips
every older entry for p.  The snapshot then fills the unwritten pages ``<= min(page_count,
limit)``, and the pages left unwritten up to ``r_n.db_pages`` are zero in the freshly created,
truncated file.  Each page is therefore written once (superseded versions are never written at
all), and the database checksum is the XOR of what was written plus the zero pages' hashes.
tests/test_restore_engine.py checks this against a reference oldest-first replay on seeded
random histories with shrinks, regrowth and entries past ``db_pages``.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from ..errors import (
    ObjectCorrupt,
    ObjectNotFound,
    RestoreError,
    StorageError,
    WalrewindError,
)
from ..replica import layout
from ..replica.format import FLAG_LATE, FLAG_RESYNC, LATE_FLAGS, record_pages, why_late
from ..replica.index import Replica
from ..replica.snapshotfile import SnapshotStream
from ..storage import Storage
from ..timeparse import format_us
from .fetch import OrderedChunks, SegmentFetcher
from .pagesink import PageSink
from .planning import RestorePlan, object_error, point_before_snapshot

Progress = Callable[[str, int, int], None]
BLOCK = 1 << 20  # decompressed snapshot bytes handed to a page worker at a time
PAGE_WORKERS = 2
PROGRESS_EVERY = 4 << 20


class Vanished(WalrewindError):
    """An object of the plan was deleted after planning; ``args[0]`` is the error if no restart is left."""


class SnapshotDamaged(WalrewindError):
    """The plan's snapshot is unusable (``reason``); the restore re-plans from an older one."""

    def __init__(self, key: str, reason: str) -> None:
        super().__init__(f"{key}: {reason}")
        self.key, self.reason = key, reason


@dataclass
class Point:
    """The state the restore lands on."""

    txid: int
    commit_us: int
    db_pages: int
    checksum: int
    flags: int = 0


@dataclass
class Outcome:
    point: Point
    checksum: int  # of the pages written (plus the zero pages nothing supplied)
    page_size: int
    db_id: str | None
    pages_written: int
    segments_read: int
    warnings: list[str] = field(default_factory=list)
    stage_seconds: dict[str, float] = field(default_factory=dict)
    inexact: bool = False  # see Replay.inexact


def storage_failure(storage: Storage, key: str, exc: Exception, last_good: tuple[int, int | None] | None) -> Exception:
    """A missing object may mean the replica changed under us (restart with a new plan); any
    other failure aborts the restore with the object's name and the last restorable point."""
    error = object_error(storage, key, exc, last_good)  # type: ignore[arg-type]
    return Vanished(error) if isinstance(exc, (ObjectNotFound, FileNotFoundError)) else error


class Replay:
    """One attempt at ``plan`` into the open file ``fd``; ``run()`` returns an Outcome or raises
    RestoreError, Vanished or SnapshotDamaged.  The caller owns the file (fsync, rename, cleanup)."""

    def __init__(self, storage: Storage, replica: Replica, plan: RestorePlan, fd: int,
                 progress: Progress | None) -> None:
        self.storage, self.replica, self.plan, self.fd = storage, replica, plan, fd
        self.progress = progress
        self.target_us, self.target_txid = plan.target_us, plan.target_txid
        self.sink: PageSink | None = None
        self.db_ids: dict[str, str] = {}  # database id of the segments -> the first segment seen with it
        self.final: Point | None = None
        self.first_past = None  # the first record after the target (gap warnings)
        self.limit: int | None = None  # smallest db_pages from the newest applied record down
        self.expected: int | None = None  # txid the next (older) record to apply must have
        self.warnings: list[str] = []
        # True when the point restored may not be what the target asked for: the target lies in a
        # gap the daemon could not observe (RESYNC), or next to a commit time known only as a bound
        # (LATE).  The result then says "exact": false next to the warning that explains it.
        self.inexact = False
        self.stages: dict[str, float] = {}
        sizes = replica.sizes
        self.total = sizes.get(plan.snapshot.key, 0) + sum(sizes.get(s.key, 0) for s in plan.segments)
        self.done = 0
        self._reported = 0

    # ------------------------------------------------------------------------------ helpers
    def _name(self, key: str) -> str:
        return f"{self.storage.url}/{key}"

    def _tick(self, stage: str, n: int, force: bool = False) -> None:
        self.done += n
        if self.progress and (force or self.done - self._reported >= PROGRESS_EVERY):
            self._reported = self.done
            self.progress(stage, min(self.done, self.total), self.total)

    def _sink(self, page_size: int, what: str) -> PageSink:
        if self.sink is None:
            self.sink = PageSink(self.fd, page_size)
        elif self.sink.page_size != page_size:
            raise ObjectCorrupt(f"{what}: page size {page_size} differs from the rest of the plan ({self.sink.page_size})")
        return self.sink

    def _before(self, seg: layout.SegmentKey) -> tuple[int, int | None]:
        """The newest point before ``seg`` (the hint when ``seg`` cannot be read)."""
        earlier = [s for s in self.plan.segments if s.last_txid < seg.first_txid and s.last_txid > self.plan.snapshot.txid]
        if earlier:
            return earlier[-1].last_txid, earlier[-1].last_ts_us
        return self.plan.snapshot.txid, self.plan.snapshot.ts_us

    def _past(self, txid: int, ts: int) -> bool:
        return (self.target_txid is not None and txid > self.target_txid) or (
            self.target_us is not None and ts > self.target_us
        )

    # ------------------------------------------------------------------------------ run
    def run(self) -> Outcome:
        started = time.monotonic()
        snap_key = self.plan.snapshot.key
        try:
            chunks = OrderedChunks(self.storage, snap_key, self.replica.sizes.get(snap_key, 0), self._name(snap_key))
        except (StorageError, FileNotFoundError) as exc:
            raise storage_failure(self.storage, snap_key, exc, point_before_snapshot(self.replica, self.plan)) from None
        fetcher = SegmentFetcher(self.storage, list(reversed(self.plan.segments)), self.replica.sizes)
        try:
            fetcher.start()
            chunks.start()  # the snapshot downloads (a bounded window) while segments are applied
            segments_read = self._segments(fetcher)
            self.stages["segments"] = time.monotonic() - started
            mark = time.monotonic()
            header = self._snapshot(chunks)
            self.stages["snapshot"] = time.monotonic() - mark
        finally:
            fetcher.close()
            chunks.close()
            if self.sink is not None:
                self.sink.close()
        assert self.sink is not None and self.final is not None
        return Outcome(self.final, self.sink.checksum, self.sink.page_size, header.get("db_id"),
                       self.sink.pages_written, segments_read, self.warnings, self.stages, self.inexact)

    # ------------------------------------------------------------------------------ segments
    def _segments(self, fetcher: SegmentFetcher) -> int:
        read = 0
        for seg, future in fetcher:
            name = self._name(seg.key)
            try:
                fetched = future.result()
                fetched.decode(name)
                self._check_segment(seg, fetched.header, fetched.records, name)
                self._apply(seg, fetched.raw, fetched.records, fetched.header["page_size"], name)
            except (StorageError, ObjectCorrupt, FileNotFoundError) as exc:
                raise storage_failure(self.storage, seg.key, exc, self._before(seg)) from None
            read += 1
            self._tick("segments", fetched.size, force=True)
        if self.final is not None and self.expected != self.plan.snapshot.txid:
            first = self.plan.segments[0]
            raise object_error(self.storage, first.key, ObjectCorrupt(
                f"{self._name(first.key)}: history jumps from txid {self.plan.snapshot.txid} to {self.expected + 1}"),  # type: ignore[operator]
                (self.plan.snapshot.txid, self.plan.snapshot.ts_us))
        return read

    def _check_segment(self, seg: layout.SegmentKey, header: dict, records, name: str) -> None:
        gen = self.plan.generation.id
        if header.get("generation", gen) != gen:
            raise ObjectCorrupt(f"{name}: belongs to generation {header.get('generation')} of database "
                                f"{header.get('db_id')}, not to generation {gen}")
        db_id = header.get("db_id")
        if db_id:
            other = next((k for d, k in self.db_ids.items() if d != db_id), None)
            if other is not None:
                raise ObjectCorrupt(f"{name}: belongs to database {db_id}, but {self._name(other)} of the same "
                                    f"generation to another one: two databases wrote into one replica path")
            self.db_ids.setdefault(db_id, seg.key)
        if records and (records[0].txid, records[-1].txid) != (seg.first_txid, seg.last_txid):
            raise ObjectCorrupt(f"{name}: holds transactions {records[0].txid}..{records[-1].txid}, not what its name says")

    def _apply(self, seg: layout.SegmentKey, raw: bytes, records, page_size: int, name: str) -> None:
        """Apply one segment's records newest-first (see the module docstring)."""
        view = memoryview(raw)
        sink = self._sink(page_size, name)
        snap_txid = self.plan.snapshot.txid
        for rec in reversed(records):
            if rec.txid <= snap_txid:
                break
            if self._past(rec.txid, rec.commit_ts_us):
                if self.final is not None:
                    raise ObjectCorrupt(f"{name}: commit times go backwards at transaction {rec.txid}")
                self.first_past = rec
                continue
            if self.final is None:
                self.final = Point(rec.txid, rec.commit_ts_us, rec.db_pages, rec.db_checksum, rec.flags)
                os.ftruncate(self.fd, rec.db_pages * page_size)
            elif rec.txid != self.expected:
                raise ObjectCorrupt(f"{name}: history jumps from txid {rec.txid} to {self.expected + 1}")  # type: ignore[operator]
            self.expected = rec.txid - 1
            self.limit = rec.db_pages if self.limit is None else min(self.limit, rec.db_pages)
            sink.write_record_pages(record_pages(view, rec, page_size), self.limit)

    # ------------------------------------------------------------------------------ snapshot
    def _snapshot(self, chunks: OrderedChunks) -> dict:
        snap = self.plan.snapshot
        name = self._name(snap.key)
        stream = None
        try:
            stream = SnapshotStream(chunks, chunks.size, name)
            header = stream.header
            snap_sum = self._check_snapshot_header(header, name)
            sink = self._sink(header["page_size"], name)
            if self.final is None:
                self.final = Point(snap.txid, snap.ts_us, header["page_count"], snap_sum)
                os.ftruncate(self.fd, header["page_count"] * header["page_size"])
            limit = min(header["page_count"], self.limit if self.limit is not None else header["page_count"])
            own = self._stream_pages(stream, sink, limit)
            if own != snap_sum:
                raise ObjectCorrupt(f"{name}: its pages do not match its recorded checksum "
                                    f"({own:016x}, header says {snap_sum:016x})")
        except ObjectCorrupt as exc:
            reason = str(exc)
            reason = reason[len(name) + 2:] if reason.startswith(name + ": ") else reason
            raise SnapshotDamaged(snap.key, reason) from None
        except (StorageError, FileNotFoundError) as exc:
            raise storage_failure(self.storage, snap.key, exc, point_before_snapshot(self.replica, self.plan)) from None
        finally:
            if stream is not None:
                stream.close()
        self._finish_point(sink, limit)
        return header

    def _check_snapshot_header(self, header: dict, name: str) -> int:
        snap, gen = self.plan.snapshot, self.plan.generation.id
        if (header.get("txid"), header.get("ts_us")) != (snap.txid, snap.ts_us):
            raise ObjectCorrupt(f"{name}: header says txid {header.get('txid')} at {header.get('ts_us')}, "
                                "not what its name says")
        if header.get("generation", gen) != gen:
            raise ObjectCorrupt(f"{name}: belongs to generation {header.get('generation')}, not {gen}")
        db_id = header.get("db_id")
        if db_id and set(self.db_ids) - {db_id}:
            raise ObjectCorrupt(f"{name}: belongs to database {db_id}, its segments to {', '.join(sorted(self.db_ids))}")
        try:
            return int(header["db_checksum"], 16)
        except (KeyError, TypeError, ValueError):
            raise ObjectCorrupt(f"{name}: header has no valid db_checksum") from None

    def _stream_pages(self, stream: SnapshotStream, sink: PageSink, limit: int) -> int:
        """Decompress on this thread (zstd; the digest has a thread of its own) while
        ``PAGE_WORKERS`` threads hash and write pages: per-page hashing is the costliest step,
        and hashlib releases the GIL while it hashes a page, so two workers use two cores."""
        blocks: queue.Queue = queue.Queue(maxsize=2 * PAGE_WORKERS)
        lock = threading.Lock()
        state: dict = {"own": 0, "error": None}

        def worker() -> None:
            while (item := blocks.get()) is not None:
                if state["error"] is None:
                    try:
                        own = sink.write_block(item[0], item[1], limit)
                        with lock:
                            state["own"] ^= own
                    except BaseException as exc:  # reported by the main thread; keep draining
                        state["error"] = exc

        threads = [threading.Thread(target=worker, name=f"walrewind-pages-{n}", daemon=True) for n in range(PAGE_WORKERS)]
        for thread in threads:
            thread.start()
        consumed = 0
        try:
            for first, data in stream.pages(BLOCK):
                blocks.put((first, data))
                self._tick("snapshot", stream.consumed - consumed)
                consumed = stream.consumed
                if state["error"] is not None:
                    break
        finally:
            for _ in threads:
                blocks.put(None)
            for thread in threads:
                thread.join()
        if state["error"] is not None:
            raise state["error"]
        self._tick("snapshot", stream.consumed - consumed, force=True)
        return state["own"]

    def _finish_point(self, sink: PageSink, snap_limit: int) -> None:
        final = self.final
        assert final is not None
        sink.add_zero_pages(snap_limit + 1, final.db_pages)
        plan = self.plan
        if self.target_us is not None and self.first_past is not None:
            past, previous = self.first_past, final.commit_us
            if past.flags & FLAG_RESYNC:
                self.inexact = True
                self.warnings.append(
                    f"the replica has no record of changes between {format_us(previous)} and "
                    f"{format_us(past.commit_ts_us)} (history gap, repaired by a resync at txid {past.txid}); "
                    "restored the last point before the gap")
            elif past.flags & LATE_FLAGS:
                self.inexact = True
                self.warnings.append(
                    f"transaction {past.txid} {why_late(past.flags)}: it committed between {format_us(previous)} and "
                    f"{format_us(past.commit_ts_us)}, so the target may be missing it")
        if self.target_txid is not None and plan.exact and final.txid != self.target_txid:
            raise RestoreError(f"transaction {self.target_txid} was not found in {self.storage.url} "
                               f"(history ends at {final.txid})")
        if final.flags & FLAG_LATE and self.target_us is not None:
            self.inexact = True
        if final.flags & FLAG_LATE:
            self.warnings.append(f"transaction {final.txid} was read after a daemon restart; its commit time is "
                                 f"known only as 'at or before {format_us(final.commit_us)}'")
