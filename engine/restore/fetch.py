"""Downloads for a restore: many requests in flight, bounded memory, results in the order used.

Two shapes, both over the plain Storage interface (``get`` and ``get_range``):

* ``OrderedChunks``: one large object (a snapshot) as consecutive ranges, ``window`` of them in
  flight or waiting at any time, yielded in object order.  A local replica is read in place.
* ``SegmentFetcher``: many small objects (segments) in the order they will be applied, at most
  ``max_ahead`` objects and ``max_bytes`` listed bytes ahead of the one being applied; each is
  downloaded *and verified* (envelope digest, and decompression when small) on the download
  thread, so digests of many segments are computed in parallel (hashlib and zstd release the GIL).

Memory is what the windows allow, whatever the object sizes: ``window * chunk`` for a snapshot,
``max_bytes`` (plus one object) of compressed segments, and small segments decoded ahead.
"""

from __future__ import annotations

import os
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Iterator

from ..errors import ObjectCorrupt
from ..replica import layout
from ..replica.format import SEGMENT_MAGIC, RecordRef, open_envelope, unpack_segment
from ..storage import Storage

CHUNK = 4 << 20  # one ranged GET of a snapshot
WINDOW = 6  # ranged GETs in flight or waiting to be consumed (24 MiB)
LOCAL_CHUNK = 4 << 20
SEGMENTS_AHEAD = 8
SEGMENT_BYTES_AHEAD = 32 << 20
DECODE_AHEAD_MAX = 2 << 20  # segments decompressing to at most this are decoded on the download thread


class OrderedChunks:
    """Consecutive ranges of ``key`` (``size`` bytes, from the LIST) in order, fetched in parallel."""

    def __init__(self, storage: Storage, key: str, size: int, name: str, chunk: int | None = None,
                 window: int | None = None) -> None:
        self.storage, self.key, self.size, self.name = storage, key, size, name
        self.chunk = chunk or CHUNK
        self.window = window or WINDOW
        self._pool: ThreadPoolExecutor | None = None
        self._pending: deque[tuple[int, int, Future]] = deque()
        self._next = 0
        self.local = storage.local_path(key)  # raises ObjectNotFound for a missing local object
        if self.local is not None:
            self.size = os.path.getsize(self.local)

    def start(self) -> "OrderedChunks":
        """Begin downloading (before the chunks are needed: the restore replays segments meanwhile)."""
        if self.local is None and self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=self.window, thread_name_prefix="walrewind-snapshot")
            self._fill()
        return self

    def _fill(self) -> None:
        while len(self._pending) < self.window and self._next < self.size:
            off, n = self._next, min(self.chunk, self.size - self._next)
            self._pending.append((off, n, self._pool.submit(self.storage.get_range, self.key, off, n)))  # type: ignore[union-attr]
            self._next += n

    def __iter__(self) -> Iterator[bytes]:
        if self.local is not None:
            with open(self.local, "rb", buffering=0) as f:
                while data := f.read(LOCAL_CHUNK):
                    yield data
            return
        self.start()
        while self._pending:
            off, n, future = self._pending.popleft()
            data = future.result()
            self._fill()
            if len(data) != n:
                raise ObjectCorrupt(f"{self.name}: object is truncated (listed as {self.size} bytes, ends at {off + len(data)})")
            yield data

    def close(self) -> None:
        for _off, _n, future in self._pending:
            future.cancel()
        self._pending.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None


@dataclass
class FetchedSegment:
    key: layout.SegmentKey
    header: dict
    payload: memoryview | None  # verified, still compressed (None once decoded)
    raw: bytes | None = None  # decompressed payload, when decoded
    records: list[RecordRef] | None = None
    size: int = 0

    def decode(self, name: str) -> None:
        if self.records is None:
            self.raw, self.records = unpack_segment(self.header, self.payload, name)  # type: ignore[arg-type]
            self.payload = None


def _fetch_segment(storage: Storage, seg: layout.SegmentKey) -> FetchedSegment:
    name = f"{storage.url}/{seg.key}"
    blob = storage.get(seg.key)
    header, payload = open_envelope(blob, SEGMENT_MAGIC, name)
    fetched = FetchedSegment(seg, header, payload, size=len(blob))
    if header["raw_length"] <= DECODE_AHEAD_MAX:
        fetched.decode(name)
    return fetched


class SegmentFetcher:
    """Download, verify (and decode small) segments ahead of use, yielded in ``order``."""

    def __init__(self, storage: Storage, order: list[layout.SegmentKey], sizes: dict[str, int],
                 max_ahead: int = SEGMENTS_AHEAD, max_bytes: int = SEGMENT_BYTES_AHEAD) -> None:
        self.storage = storage
        self.sizes = sizes
        self.max_ahead, self.max_bytes = max_ahead, max_bytes
        self._todo = deque(order)
        self._queue: deque[tuple[layout.SegmentKey, Future]] = deque()
        self._pool = ThreadPoolExecutor(max_workers=max_ahead, thread_name_prefix="walrewind-segments") if order else None

    def _fill(self) -> None:
        in_flight = sum(self.sizes.get(seg.key, 0) for seg, _ in self._queue)
        while self._todo and len(self._queue) < self.max_ahead:
            seg = self._todo[0]
            size = self.sizes.get(seg.key, 0)
            if self._queue and in_flight + size > self.max_bytes:
                return
            self._todo.popleft()
            in_flight += size
            self._queue.append((seg, self._pool.submit(_fetch_segment, self.storage, seg)))  # type: ignore[union-attr]

    def start(self) -> "SegmentFetcher":
        if self._pool is not None:
            self._fill()
        return self

    def __iter__(self) -> Iterator[tuple[layout.SegmentKey, Future]]:
        """(segment key, future of its FetchedSegment); the caller maps the future's errors."""
        self.start()
        while self._queue:
            seg, future = self._queue.popleft()
            try:
                future.result()
            except BaseException:
                pass  # the caller gets it from the future, with the segment's name
            self._fill()
            yield seg, future

    def close(self) -> None:
        for _seg, future in self._queue:
            future.cancel()
        self._queue.clear()
        self._todo.clear()
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
