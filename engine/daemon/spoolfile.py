"""Spool files on disk: records framed as ``length u32 | crc32 u32 | body`` (spool.py; the
hashes log, hashlog.py, frames its records the same way).

A kill -9 can leave a torn last record; readers stop at the first record whose length or CRC
does not hold and (when asked to repair) cut the file there, so nothing after a tear is ever
trusted.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Iterator

from ..replica.format import decode_txns
from .spoolrecord import RawSpooled, SpooledTxn, decode_body

_REC = struct.Struct("<II")
_MIN_BODY = struct.calcsize("<H")  # the smallest body: a meta length


def frame(body: bytes) -> bytes:
    return _REC.pack(len(body), zlib.crc32(body)) + body


def _intact(length: int, crc: int, body: bytes, min_body: int) -> bool:
    return length >= min_body and len(body) == length and zlib.crc32(body) == crc


def bodies(data: bytes, off: int, min_body: int = _MIN_BODY) -> Iterator[tuple[int, bytes]]:
    """(offset after it, body) of each intact record of ``data`` from ``off``, up to a tear."""
    while off + _REC.size <= len(data):
        length, crc = _REC.unpack_from(data, off)
        body = data[off + _REC.size : off + _REC.size + length]
        if not _intact(length, crc, body, min_body):
            return  # a torn or zero-filled tail (the file grew but the data never landed)
        off += _REC.size + length
        yield off, body


def iter_records(data: bytes) -> Iterator[RawSpooled]:
    """The records of a piece kept in memory (spool.Piece), as ``iter_raw`` yields them."""
    for _off, body in bodies(data, 0):
        yield RawSpooled(*decode_body(body))


def _cut(path: str, off: int) -> None:
    with open(path, "r+b") as f:
        f.truncate(off)
        os.fsync(f.fileno())


def iter_raw(path: str, repair: bool = True, start: int = 0, end: int | None = None) -> Iterator[RawSpooled]:
    """Every intact record of a spool file (of its bytes ``[start, end)``), one at a time,
    pages left encoded.

    Bounded memory for the uploader: one record is in memory at a time.  A torn tail is cut
    off (when ``repair``, and the range reaches the end of the file), as :func:`read_file` does.
    """
    off = start
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if end is None or end > size:
            end = size
        if start:
            f.seek(start)
        while off < end:
            head = f.read(_REC.size)
            if len(head) < _REC.size:
                break
            length, crc = _REC.unpack(head)
            if off + _REC.size + length > end:
                break
            body = f.read(length)
            if not _intact(length, crc, body, _MIN_BODY):
                break
            batch, raw = decode_body(body)
            yield RawSpooled(batch, raw)
            off += _REC.size + length
    if off < end == size and repair:
        _cut(path, off)


def read_file(path: str, page_size: int, repair: bool = True, start: int = 0,
              end: int | None = None) -> list[SpooledTxn]:
    """Every transaction of the intact records of a spool file (of its bytes ``[start,
    end)``); a torn tail is cut off (when ``repair``).  A batch's position, commit counter and
    net page changes go with its last transaction; every transaction of a batch gets its
    ``through``."""
    with open(path, "rb") as f:
        data = f.read() if end is None else f.read(end)
    out: list[SpooledTxn] = []
    off = start
    for off, body in bodies(data, start):  # off: where the intact records end
        batch, raw = decode_body(body)
        records = list(decode_txns(raw, page_size, path))
        for record in records[:-1]:
            out.append(SpooledTxn(record, None, batch.through_ts_us))
        out.append(SpooledTxn(records[-1], batch.position, batch.through_ts_us, batch.change, batch.changes))
    if off != len(data) and repair:
        _cut(path, off)
    return out
