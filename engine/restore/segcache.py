"""The records of one stretch of history, for a search that reads parts of it again and again.

A bisect applies the records of (base, probe] for every probe, and after a rollback a shorter
prefix of them again.  Downloading a segment per use would multiply the traffic by the number of
probes; holding every decoded segment would make memory grow with the history searched.  So:

* decoded segments (payload plus record index) stay in memory, least recently used dropped first,
  up to ``memory_bytes`` of decompressed payload (the one in use is always kept);
* an object downloaded from a remote replica is also kept as it came (compressed, digest
  included) in the work directory: a segment dropped from memory is read back from there and
  verified again (digest, decompression), never downloaded twice.  A local replica is read in place;
* segments are fetched ahead of use, in the order they will be applied, ``AHEAD`` at a time, and
  verified on the download threads (hashlib and zstd release the GIL), as a restore does.

Segments are chosen by txid from the generation's key names (engine/replica/index.py).  When one
vanishes (compaction merged it, so a covering segment exists), the replica is listed again and the
records are taken from what holds them now: records are identified by txid and verified by their
checksums as they are applied, so which object they come from does not matter.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict, deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

from ..errors import (
    HistoryGap,
    ObjectCorrupt,
    ObjectNotFound,
    RestoreError,
    StorageError,
)
from ..replica import layout
from ..replica.format import SEGMENT_MAGIC, RecordRef, open_envelope, unpack_segment
from ..replica.index import Generation, Replica
from ..storage import Storage

MEMORY_BYTES = 128 << 20  # decoded segments kept in memory
AHEAD = 6  # segments downloading or decoding ahead of the one being applied
MAX_RELISTS = 2  # new listings after a segment vanished, without progress in between


@dataclass
class Decoded:
    seg: layout.SegmentKey
    raw: memoryview
    records: list[RecordRef]
    name: str


class SegmentCache:
    """Records of generation ``generation_id`` by txid, each object downloaded at most once."""

    def __init__(self, storage: Storage, replica: Replica, generation_id: str, page_size: int | None,
                 work_dir: str, memory_bytes: int = MEMORY_BYTES, ahead: int = AHEAD) -> None:
        self.storage, self.replica, self.generation_id = storage, replica, generation_id
        self.page_size = page_size
        self.dir = os.path.join(work_dir, "segments")
        os.makedirs(self.dir, exist_ok=True)
        self.memory_bytes, self.ahead = memory_bytes, ahead
        self._memory: OrderedDict[str, Decoded] = OrderedDict()
        self._held = 0
        self._on_disk: set[str] = set()
        self._remote: bool | None = None  # whether objects must be downloaded (decided on the first one)
        self._pool = ThreadPoolExecutor(max_workers=ahead, thread_name_prefix="walrewind-bisect-segments")
        self._lock = threading.Lock()  # the counters and the set of kept copies, updated by pool threads
        self.downloads = 0  # objects fetched from the replica
        self.downloaded_bytes = 0
        self.loads = 0  # decodes (downloads plus re-reads of objects dropped from memory)

    # ------------------------------------------------------------------------------ choosing
    def generation(self) -> Generation:
        for gen in self.replica.generations:
            if gen.id == self.generation_id:
                return gen
        raise RestoreError(f"generation {self.generation_id} is no longer in {self.storage.url} "
                           "(retention removed it during the search)")

    def segments(self, first: int, last: int) -> list[layout.SegmentKey]:
        """The segments holding txids ``first..last`` in order; HistoryGap when some are missing."""
        gen = self.generation()
        out: list[layout.SegmentKey] = []
        expected = first
        for seg in gen.segments:
            if seg.last_txid < expected or expected > last:
                continue
            if seg.first_txid > expected:
                raise HistoryGap(
                    f"cannot search: history jumps from txid {expected - 1} to {seg.first_txid}: the segment(s) "
                    f"holding transactions {expected}..{seg.first_txid - 1} of generation {gen.id} are missing "
                    f"from {self.storage.url}")
            out.append(seg)
            expected = seg.last_txid + 1
        if expected <= last:
            raise HistoryGap(f"cannot search: generation {gen.id} in {self.storage.url} holds no segment with "
                             f"transactions {expected}..{last}")
        return out

    # ------------------------------------------------------------------------------ reading
    def records(self, first: int, last: int) -> Iterator[tuple[RecordRef, memoryview, str]]:
        """(record, decompressed payload, object name) for txids ``first..last`` in order."""
        relists = 0
        while first <= last:
            try:
                for rec, raw, name in self._records_once(first, last):
                    yield rec, raw, name
                    first, relists = rec.txid + 1, 0
            except (ObjectNotFound, FileNotFoundError):
                if relists >= MAX_RELISTS:
                    raise
                relists += 1
                self.replica.refresh()  # compaction replaced it, or retention removed it: look again

    def _records_once(self, first: int, last: int) -> Iterator[tuple[RecordRef, memoryview, str]]:
        pending: deque[tuple[layout.SegmentKey, Decoded | Future]] = deque()
        todo = deque(self.segments(first, last))
        try:
            while todo or pending:
                while todo and len(pending) < self.ahead:
                    seg = todo.popleft()
                    hit = self._memory.get(seg.key)
                    if hit is not None:
                        self._memory.move_to_end(seg.key)
                    pending.append((seg, hit if hit is not None else self._pool.submit(self._load, seg)))
                seg, item = pending.popleft()
                decoded = item.result() if isinstance(item, Future) else item
                self._keep(decoded)
                lo = max(first, seg.first_txid) - seg.first_txid
                hi = min(last, seg.last_txid) - seg.first_txid
                for rec in decoded.records[lo : hi + 1]:
                    yield rec, decoded.raw, decoded.name
        finally:
            for _seg, item in pending:
                if isinstance(item, Future):
                    item.cancel()

    def _keep(self, decoded: Decoded) -> None:
        key = decoded.seg.key
        if key not in self._memory:
            self._memory[key] = decoded
            self._held += len(decoded.raw)
        self._memory.move_to_end(key)
        while self._held > self.memory_bytes and len(self._memory) > 1:
            _key, old = self._memory.popitem(last=False)
            self._held -= len(old.raw)

    def _load(self, seg: layout.SegmentKey) -> Decoded:
        """Read (download once, or re-read the kept copy), verify and decode one segment (pool thread)."""
        name = f"{self.storage.url}/{seg.key}"
        copy = os.path.join(self.dir, os.path.basename(seg.key))
        with self._lock:
            kept = seg.key in self._on_disk
        if kept:
            with open(copy, "rb") as f:
                blob = f.read()
        else:
            if self._remote is None:
                try:
                    self._remote = self.storage.local_path(seg.key) is None
                except StorageError:
                    raise ObjectNotFound(f"{name}: not found") from None
            blob = self.storage.get(seg.key)
            if self._remote:
                with open(copy + ".tmp", "wb") as f:
                    f.write(blob)
                os.replace(copy + ".tmp", copy)
                with self._lock:
                    self.downloads += 1
                    self.downloaded_bytes += len(blob)
                    self._on_disk.add(seg.key)
        with self._lock:
            self.loads += 1
        header, payload = open_envelope(blob, SEGMENT_MAGIC, name)
        raw, records = unpack_segment(header, payload, name)
        self._check(seg, header, records, name)
        return Decoded(seg, memoryview(raw), records, name)

    def _check(self, seg: layout.SegmentKey, header: dict, records: list[RecordRef], name: str) -> None:
        if header.get("generation", self.generation_id) != self.generation_id:
            raise ObjectCorrupt(f"{name}: belongs to generation {header.get('generation')}, not {self.generation_id}")
        if self.page_size is not None and header["page_size"] != self.page_size:
            raise ObjectCorrupt(f"{name}: page size {header['page_size']} differs from the database's ({self.page_size})")
        txids = [r.txid for r in records]
        if txids != list(range(seg.first_txid, seg.last_txid + 1)):
            raise ObjectCorrupt(f"{name}: does not hold exactly transactions {seg.first_txid}..{seg.last_txid} "
                                "in order, as its name says")

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._memory.clear()
