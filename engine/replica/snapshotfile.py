"""Read a snapshot object as it arrives: header first, pages as they decompress, digest at the end.

A restore must not hold the database in memory, and should not download a snapshot to a
temporary file only to read it back twice (once for the digest, once for the pages).  So the
object is consumed as an ordered stream of chunks (parallel ranged GETs, or reads of a local
file): every byte is fed to the BLAKE2b-256 digest as it passes, the zstd payload is
decompressed on the fly, and whole pages are handed out in blocks.  The checks of
``format._open_envelope`` (docs/FORMAT.md section 2) are all made, but the digest and the
trailer can only be compared once the last byte has arrived, so the pages handed out before that
are *unverified*: the caller writes them only into a temporary file that is deleted unless
``pages()`` ran to its end without raising (the restorer renames nothing before that).
"""

from __future__ import annotations

import hashlib
import json
import queue
import struct
import threading
from typing import Iterable, Iterator

import zstandard

from ..errors import ObjectCorrupt
from .format import FORMAT_VERSION, SNAPSHOT_MAGIC

_PREFIX = struct.Struct("<4sHI")
_TRAILER = struct.Struct("<Q32s")
_MIN_SIZE = _PREFIX.size + _TRAILER.size
_REQUIRED = ("page_size", "page_count")
BACKGROUND_HASH_MIN = 16 << 20  # objects at least this big are digested on a thread of their own


class _BackgroundHash(threading.Thread):
    """BLAKE2b-256 fed in order on its own thread (hashlib releases the GIL), so the digest of a
    large object runs beside its decompression instead of before it (it is the costliest step:
    ~300-550 MB/s on this class of machine, against ~1-2 GB/s for zstd)."""

    def __init__(self) -> None:
        super().__init__(name="walrewind-digest", daemon=True)
        self._hasher = hashlib.blake2b(digest_size=32)
        self._queue: queue.Queue = queue.Queue(maxsize=2)
        self.start()

    def run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._hasher.update(item)

    def update(self, data) -> None:
        self._queue.put(data)

    def digest(self) -> bytes:
        self.close()
        return self._hasher.digest()

    def close(self) -> None:
        if self.is_alive():
            self._queue.put(None)
            self.join()


class SnapshotStream:
    """A snapshot object of known ``size`` delivered as ordered ``chunks`` (bytes-like).

    ``header`` is parsed (and its required fields checked) on construction; ``pages(n)`` then
    yields ``(first_pgno, data)`` blocks of whole pages and, after the last one, checks the
    trailer, the digest and the page count, raising ObjectCorrupt naming the object.
    ``consumed`` counts object bytes taken from ``chunks`` (for progress).
    """

    def __init__(self, chunks: Iterable[bytes], size: int, name: str) -> None:
        self.name = name
        self.size = size
        self.consumed = 0
        self._chunks = iter(chunks)
        self._hasher = _BackgroundHash() if size >= BACKGROUND_HASH_MIN else hashlib.blake2b(digest_size=32)
        self._hash_end = size - 32  # the digest covers every byte before it
        self._buf = memoryview(b"")
        if size < _MIN_SIZE:
            raise ObjectCorrupt(f"{name}: object is truncated ({size} bytes)")
        magic, version, head_len = _PREFIX.unpack(self._take(_PREFIX.size))
        if magic != SNAPSHOT_MAGIC:
            raise ObjectCorrupt(f"{name}: not a walrewind snapshot (bad magic)")
        if version != FORMAT_VERSION:
            raise ObjectCorrupt(f"{name}: format version {version} is not supported (this build reads {FORMAT_VERSION})")
        if _PREFIX.size + head_len + _TRAILER.size > size:
            raise ObjectCorrupt(f"{name}: object is truncated (header runs past the end)")
        try:
            header = json.loads(self._take(head_len))
        except ValueError as exc:
            raise ObjectCorrupt(f"{name}: unreadable header ({exc})") from None
        if not isinstance(header, dict) or any(not isinstance(header.get(k), int) for k in _REQUIRED):
            raise ObjectCorrupt(f"{name}: header lacks required fields {', '.join(_REQUIRED)}")
        if header["page_size"] <= 0:
            raise ObjectCorrupt(f"{name}: invalid page size {header['page_size']}")
        self.header = header
        self._payload_total = size - _TRAILER.size - _PREFIX.size - head_len
        self._payload_left = self._payload_total

    def close(self) -> None:
        """Stop the digest thread (a stream abandoned after an error)."""
        if isinstance(self._hasher, _BackgroundHash):
            self._hasher.close()

    # ------------------------------------------------------------------------------ raw bytes
    def _next_chunk(self) -> bool:
        chunk = next(self._chunks, None)
        if chunk is None:
            return False
        view = memoryview(chunk)
        start = self.consumed
        self.consumed += len(view)
        if self.consumed > self.size:
            raise ObjectCorrupt(f"{self.name}: object is longer than listed ({self.size} bytes)")
        if start < self._hash_end:
            self._hasher.update(view[: self._hash_end - start])
        self._buf = view
        return True

    def _read(self, n: int) -> memoryview:
        """Up to ``n`` bytes (fewer only at the end of a chunk); empty at the end of the object."""
        if not self._buf and not self._next_chunk():
            return memoryview(b"")
        out, self._buf = self._buf[:n], self._buf[n:]
        return out

    def _take(self, n: int) -> bytes:
        parts = []
        while n:
            got = self._read(n)
            if not got:
                raise ObjectCorrupt(f"{self.name}: object is truncated (ended {n} bytes early)")
            parts.append(got)
            n -= len(got)
        return b"".join(parts)

    # ------------------------------------------------------------------------------ pages
    def pages(self, block_bytes: int = 1 << 20) -> Iterator[tuple[int, bytes]]:
        page_size = self.header["page_size"]
        page_count = self.header["page_count"]
        block = max(page_size, block_bytes - block_bytes % page_size)
        reader = zstandard.ZstdDecompressor().stream_reader(_Payload(self), read_size=1 << 20)
        pgno = 1
        carry = b""
        try:
            while True:
                data = reader.read(block)
                if not data:
                    break
                if carry:
                    data, carry = carry + data, b""
                whole = len(data) - len(data) % page_size
                if whole < len(data):
                    carry = data[whole:]
                    data = data[:whole]
                if data:
                    if pgno - 1 + whole // page_size > page_count:
                        raise ObjectCorrupt(f"{self.name}: holds more pages than its header says ({page_count})")
                    yield pgno, data
                    pgno += whole // page_size
        except zstandard.ZstdError as exc:
            self._blame_digest()
            raise ObjectCorrupt(f"{self.name}: cannot decompress payload ({exc})") from None
        except ObjectCorrupt:
            self._blame_digest()
            raise
        self._finish(pgno - 1, bool(carry))

    def _blame_digest(self) -> None:
        """After a payload error: read the rest, and report a digest mismatch if there is one
        (the usual cause, and the same message a whole-object reader gives)."""
        tail = bytes(self._buf[-32:])
        try:
            while self._next_chunk():
                tail = (tail + bytes(self._buf[-32:]))[-32:]
        except ObjectCorrupt:
            return
        if self.consumed != self.size:
            raise ObjectCorrupt(f"{self.name}: object is truncated ({self.consumed} of {self.size} bytes)") from None
        if self._hasher.digest() != tail:
            raise ObjectCorrupt(f"{self.name}: checksum mismatch (object is corrupt or truncated)") from None

    def _finish(self, pages: int, partial: bool) -> None:
        """Trailer, digest, sizes: the checks that need the whole object."""
        leftover = self._payload_left
        while self._payload_left:  # bytes after the zstd frame (or a cut one): hash them too
            got = self._read(self._payload_left)
            if not got:
                break  # the trailer read below reports the truncation
            self._payload_left -= len(got)
        payload_len, digest = _TRAILER.unpack(self._take(_TRAILER.size))
        if self._read(1) or self._next_chunk():
            raise ObjectCorrupt(f"{self.name}: object is longer than listed ({self.size} bytes)")
        if self._hasher.digest() != digest:
            raise ObjectCorrupt(f"{self.name}: checksum mismatch (object is corrupt or truncated)")
        if payload_len != self._payload_total:
            raise ObjectCorrupt(f"{self.name}: payload length does not match the object size")
        if leftover:
            raise ObjectCorrupt(f"{self.name}: {leftover} bytes after the end of the payload's zstd frame")
        if partial:
            raise ObjectCorrupt(f"{self.name}: payload ends inside a page")
        if pages != self.header["page_count"]:
            raise ObjectCorrupt(f"{self.name}: holds {pages} pages, header says {self.header['page_count']}")


class _Payload:
    """The zstd payload of a ``SnapshotStream`` as a source for ``stream_reader``: ``read(n)``
    returns views of the downloaded chunks, so no byte is copied before zstd reads it."""

    def __init__(self, stream: SnapshotStream) -> None:
        self._s = stream

    def read(self, n: int = -1) -> memoryview:
        s = self._s
        n = s._payload_left if n is None or n < 0 else min(n, s._payload_left)
        if n <= 0:
            return memoryview(b"")
        got = s._read(n)
        if not got:
            raise ObjectCorrupt(f"{s.name}: object is truncated (payload ends {s._payload_left} bytes early)")
        s._payload_left -= len(got)
        return got
