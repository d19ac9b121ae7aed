"""Read a snapshot object from a local file: verified first, then streamed page by page.

Restores download the snapshot into a temporary file (or read a local replica in place) and must
not hold the database in memory, so the checks of ``format._open_envelope`` are repeated here over
the file, and pages are decompressed from it as a stream.  Kept apart from restore.py so the
restore control flow stays readable.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
from typing import Callable, Iterator

from ..errors import ObjectCorrupt
from .format import FORMAT_VERSION, SNAPSHOT_MAGIC, iter_snapshot_pages

_PREFIX = struct.Struct("<4sHI")
_TRAILER = struct.Struct("<Q32s")


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
        raise ObjectCorrupt(f"{name}: object is truncated ({size} bytes)")
    with open(path, "rb") as f:
        magic, version, head_len = _PREFIX.unpack(f.read(_PREFIX.size))
        if magic != SNAPSHOT_MAGIC:
            raise ObjectCorrupt(f"{name}: not a walrewind snapshot (bad magic)")
        if version != FORMAT_VERSION:
            raise ObjectCorrupt(f"{name}: format version {version} is not supported (this build reads {FORMAT_VERSION})")
        f.seek(0)
        hasher = hashlib.blake2b(digest_size=32)
        remaining = size - 32
        while remaining:
            chunk = f.read(min(remaining, 8 << 20))
            if not chunk:
                raise ObjectCorrupt(f"{name}: object is truncated")
            hasher.update(chunk)
            remaining -= len(chunk)
        payload_len, digest = _TRAILER.unpack(os.pread(f.fileno(), _TRAILER.size, size - _TRAILER.size))
        if hasher.digest() != digest:
            raise ObjectCorrupt(f"{name}: checksum mismatch (object is corrupt or truncated)")
        start = _PREFIX.size + head_len
        if start + payload_len != size - _TRAILER.size:
            raise ObjectCorrupt(f"{name}: payload length does not match the object size")
        try:
            header = json.loads(os.pread(f.fileno(), head_len, _PREFIX.size))
        except ValueError as exc:
            raise ObjectCorrupt(f"{name}: unreadable header ({exc})") from None
    if not isinstance(header, dict) or any(not isinstance(header.get(k), int) for k in ("page_size", "page_count")):
        raise ObjectCorrupt(f"{name}: header lacks required fields page_size, page_count")
    page_size = header["page_size"]

    def pages() -> Iterator[tuple[int, bytes]]:
        with open(path, "rb") as f:
            stream = io.BufferedReader(_Payload(f, start, payload_len), 1 << 20)
            yield from iter_snapshot_pages(stream, page_size, header["page_count"], name)

    return header, pages
