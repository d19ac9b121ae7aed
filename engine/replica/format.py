"""Binary formats of replica objects: segments (transactions) and snapshots (whole databases).

Both share one envelope, specified in docs/FORMAT.md:

    magic (4) | version u16 | header length u32 | header (UTF-8 JSON) | payload (zstd) |
    payload length u64 | BLAKE2b-256 of every byte before the digest (32)

The JSON header makes objects self-describing and easy to inspect; the trailing digest means a
flipped bit anywhere is caught before a single page is trusted.  Transaction records inside a
segment payload are little-endian binary (see ``TXN``).
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import struct
import threading
from dataclasses import dataclass
from typing import Iterator

import zstandard

from ..errors import ObjectCorrupt

SEGMENT_MAGIC = b"WRSG"
SNAPSHOT_MAGIC = b"WRSN"
FORMAT_VERSION = 1
_PREFIX = struct.Struct("<4sHI")
_TRAILER = struct.Struct("<Q32s")
TXN = struct.Struct("<QqIIIQ")  # txid, commit_ts_us, db_pages, flags, page_count, db_checksum
PGNO = struct.Struct("<I")
ZSTD_LEVEL = 3

_REQUIRED_SEGMENT = ("page_size", "raw_length", "txn_count")
_REQUIRED_SNAPSHOT = ("page_size", "page_count")

FLAG_RESYNC = 1  # history before this record was not observed; pages are the difference
FLAG_LATE = 2  # commit time is only bounded: observed after a daemon restart
# The daemon saw this commit late (starved of CPU, or only when it read the WAL): it committed after
# the previous transaction's commit time and at or before this record's.  Restores say so.
FLAG_STAMP_LATE = 4
LATE_FLAGS = FLAG_LATE | FLAG_STAMP_LATE  # either way, the commit time is an upper bound


def why_late(flags: int) -> str:
    """Why a record with one of LATE_FLAGS has only an upper bound for its commit time."""
    if flags & FLAG_LATE:
        return "was read after a daemon restart"
    return "was seen late by the daemon (starved of CPU, or found only when it read the WAL)"


@dataclass
class TxnRecord:
    txid: int
    commit_ts_us: int
    db_pages: int
    flags: int
    db_checksum: int
    pages: dict[int, bytes]

    def encode(self) -> bytes:
        parts = [TXN.pack(self.txid, self.commit_ts_us, self.db_pages, self.flags, len(self.pages), self.db_checksum)]
        for pgno in sorted(self.pages):
            parts.append(PGNO.pack(pgno))
            parts.append(self.pages[pgno])
        return b"".join(parts)


def decode_txns(raw: bytes, page_size: int, name: str = "segment") -> Iterator[TxnRecord]:
    view = memoryview(raw)
    off = 0
    while off < len(raw):
        if off + TXN.size > len(raw):
            raise ObjectCorrupt(f"{name}: truncated transaction header at byte {off}")
        txid, ts, db_pages, flags, count, checksum = TXN.unpack_from(view, off)
        off += TXN.size
        pages: dict[int, bytes] = {}
        need = count * (PGNO.size + page_size)
        if off + need > len(raw):
            raise ObjectCorrupt(f"{name}: transaction {txid} is truncated")
        for _ in range(count):
            (pgno,) = PGNO.unpack_from(view, off)
            off += PGNO.size
            pages[pgno] = bytes(view[off : off + page_size])
            off += page_size
        yield TxnRecord(txid, ts, db_pages, flags, checksum, pages)


def _envelope(magic: bytes, header: dict, payload: bytes) -> bytes:
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = _PREFIX.pack(magic, FORMAT_VERSION, len(head)) + head + payload
    body += struct.pack("<Q", len(payload))
    return body + hashlib.blake2b(body, digest_size=32).digest()


def _open_envelope(blob: bytes, magic: bytes, name: str) -> tuple[dict, memoryview]:
    if len(blob) < _PREFIX.size + _TRAILER.size:
        raise ObjectCorrupt(f"{name}: object is truncated ({len(blob)} bytes)")
    got_magic, version, head_len = _PREFIX.unpack_from(blob, 0)
    if got_magic != magic:
        raise ObjectCorrupt(f"{name}: not a walrewind {'segment' if magic == SEGMENT_MAGIC else 'snapshot'} (bad magic)")
    if version != FORMAT_VERSION:
        raise ObjectCorrupt(f"{name}: format version {version} is not supported (this build reads {FORMAT_VERSION})")
    digest = blob[-32:]
    if hashlib.blake2b(memoryview(blob)[:-32], digest_size=32).digest() != digest:
        raise ObjectCorrupt(f"{name}: checksum mismatch (object is corrupt or truncated)")
    (payload_len,) = struct.unpack_from("<Q", blob, len(blob) - _TRAILER.size)
    start = _PREFIX.size + head_len
    if start + payload_len != len(blob) - _TRAILER.size:
        raise ObjectCorrupt(f"{name}: payload length does not match the object size")
    try:
        header = json.loads(bytes(blob[_PREFIX.size : start]))
    except ValueError as exc:
        raise ObjectCorrupt(f"{name}: unreadable header ({exc})") from None
    required = _REQUIRED_SEGMENT if magic == SEGMENT_MAGIC else _REQUIRED_SNAPSHOT
    if not isinstance(header, dict) or any(not isinstance(header.get(k), int) for k in required):
        raise ObjectCorrupt(f"{name}: header lacks required fields {', '.join(required)}")
    return header, memoryview(blob)[start : start + payload_len]


def open_envelope(blob: bytes, magic: bytes, name: str) -> tuple[dict, memoryview]:
    """Verify an object held in memory (every check of docs/FORMAT.md section 2, digest first)
    and return (header, payload view).  Restores call it on download threads, so digests of
    many segments are computed in parallel (hashlib releases the GIL)."""
    return _open_envelope(blob, magic, name)


@dataclass(frozen=True)
class RecordRef:
    """One transaction record inside a decompressed segment payload, located but not copied.

    Restores apply records newest-first and write each page at most once, so most page entries
    are never touched; indexing the payload instead of building ``TxnRecord`` dicts avoids a
    copy of every page.
    """

    txid: int
    commit_ts_us: int
    db_pages: int
    flags: int
    db_checksum: int
    offset: int  # of the record's first page entry in the payload
    count: int  # page entries


def index_txns(raw: bytes | memoryview, page_size: int, name: str = "segment") -> list[RecordRef]:
    """Locate every record of a decompressed segment payload (same framing checks as ``decode_txns``)."""
    refs: list[RecordRef] = []
    size = len(raw)
    entry = PGNO.size + page_size
    off = 0
    while off < size:
        if off + TXN.size > size:
            raise ObjectCorrupt(f"{name}: truncated transaction header at byte {off}")
        txid, ts, db_pages, flags, count, checksum = TXN.unpack_from(raw, off)
        off += TXN.size
        if off + count * entry > size:
            raise ObjectCorrupt(f"{name}: transaction {txid} is truncated")
        refs.append(RecordRef(txid, ts, db_pages, flags, checksum, off, count))
        off += count * entry
    return refs


def record_pages(raw: memoryview, ref: RecordRef, page_size: int) -> Iterator[tuple[int, memoryview]]:
    """(pgno, page view) of one record's page entries, in the order they are stored."""
    off = ref.offset
    for _ in range(ref.count):
        (pgno,) = PGNO.unpack_from(raw, off)
        yield pgno, raw[off + PGNO.size : off + PGNO.size + page_size]
        off += PGNO.size + page_size


def _decompress_payload(header: dict, payload: bytes | memoryview, name: str) -> bytes:
    """A segment's records, decompressed and exactly as long as its header says."""
    try:
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=header["raw_length"])
    except zstandard.ZstdError as exc:
        raise ObjectCorrupt(f"{name}: cannot decompress payload ({exc})") from None
    if len(raw) != header["raw_length"]:
        raise ObjectCorrupt(f"{name}: payload decompressed to {len(raw)} bytes, header says {header['raw_length']}")
    return raw


def unpack_segment(header: dict, payload: bytes | memoryview, name: str) -> tuple[bytes, list[RecordRef]]:
    """Decompress a verified segment payload and index its records (counts and sizes checked)."""
    raw = _decompress_payload(header, payload, name)
    refs = index_txns(raw, header["page_size"], name)
    if len(refs) != header["txn_count"]:
        raise ObjectCorrupt(f"{name}: holds {len(refs)} transactions, header says {header['txn_count']}")
    return raw, refs


def encode_segment(header: dict, records: list[TxnRecord]) -> bytes:
    raw = b"".join(r.encode() for r in records)
    payload = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compress(raw)
    return _envelope(SEGMENT_MAGIC, dict(header, raw_length=len(raw), txn_count=len(records)), payload)


def decode_segment(blob: bytes, name: str = "segment") -> tuple[dict, list[TxnRecord]]:
    header, _raw, records = decode_segment_raw(blob, name)
    return header, records


def decode_segment_raw(blob: bytes, name: str = "segment") -> tuple[dict, bytes, list[TxnRecord]]:
    """Like :func:`decode_segment`, also returning the verified decompressed payload, so that
    compaction can concatenate records bit for bit instead of re-encoding them."""
    header, payload = _open_envelope(blob, SEGMENT_MAGIC, name)
    raw = _decompress_payload(header, payload, name)
    records = list(decode_txns(raw, header["page_size"], name))
    if len(records) != header["txn_count"]:
        raise ObjectCorrupt(f"{name}: holds {len(records)} transactions, header says {header['txn_count']}")
    return header, raw, records


class SnapshotWriter:
    """Stream a whole database into a snapshot file without holding it in memory.

    Pages are compressed into a side file first, because the header (which carries the database
    checksum) can only be written once every page has been seen; assembling costs one copy of
    the *compressed* bytes.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._payload_path = path + ".payload"
        self._payload = open(self._payload_path, "w+b")
        self._compressor = zstandard.ZstdCompressor(level=ZSTD_LEVEL).compressobj()
        self.payload_len = 0

    def add_pages(self, data: bytes) -> None:
        chunk = self._compressor.compress(data)
        if chunk:
            self._payload.write(chunk)

    def abort(self) -> None:
        self._payload.close()
        os.unlink(self._payload_path)

    def finish(self, header: dict) -> int:
        """Write the object to ``path`` (fsynced); returns its size."""
        self._payload.write(self._compressor.flush())
        self.payload_len = self._payload.tell()
        self._payload.seek(0)
        size = write_envelope_file(self.path, SNAPSHOT_MAGIC, header, self._payload, self.payload_len)
        self._payload.close()
        os.unlink(self._payload_path)
        return size


_COMPRESSORS = threading.local()


def _take_compressor(level: int) -> zstandard.ZstdCompressor:
    """A compressor for ``level``, this thread's spare if it has one (a ZstdCompressor allocates
    its context, hundreds of KiB, when made, and the daemon makes a segment per upload: 100 a
    second with 100 written sqld namespaces).  Reuse changes no byte: each compressobj() starts
    a new frame.  Taken, not shared: a second writer on the thread meanwhile makes its own."""
    spare = getattr(_COMPRESSORS, "spare", None)
    if spare is not None and spare[0] == level:
        _COMPRESSORS.spare = None
        return spare[1]
    return zstandard.ZstdCompressor(level=level)


def _give_back(level: int, compressor: zstandard.ZstdCompressor) -> None:
    _COMPRESSORS.spare = (level, compressor)


class SegmentWriter:
    """Stream encoded transaction records into a segment file in bounded memory.

    The daemon's uploader feeds it one spooled record at a time (``TxnRecord.encode()`` bytes),
    so a 16 MB spool file never exists in memory as records, raw payload and compressed blob at
    once.  The payload is one streamed zstd frame; decode_segment reads it like any other.
    """

    def __init__(self, path: str | None, level: int = ZSTD_LEVEL) -> None:
        """``path`` None: the payload stays in memory and :meth:`finish_bytes` returns the
        object (for small segments: no staging files).  ``level``: zstd's (any level decodes)."""
        self.path = path
        self._payload_path = path + ".payload" if path is not None else None
        self._payload = open(self._payload_path, "w+b") if self._payload_path else io.BytesIO()
        self._level, self._zstd = level, _take_compressor(level)
        self._compressor = self._zstd.compressobj()
        self.raw_length = 0
        self.count = 0
        self._pending: list[bytes] = []
        self._pending_bytes = 0

    def add_record(self, raw: bytes, count: int = 1) -> None:
        """Append encoded records (``count`` of them back to back in ``raw``)."""
        # Small records are handed to zstd in batches (a call per 1-2 page record was a third of
        # the uploader's compression time); the output is the same stream either way.
        self._pending.append(raw)
        self._pending_bytes += len(raw)
        if self._pending_bytes >= self.BATCH_BYTES:
            self._compress_pending()
        self.raw_length += len(raw)
        self.count += count

    BATCH_BYTES = 256 << 10

    def _compress_pending(self) -> None:
        if self._pending:
            chunk = self._compressor.compress(b"".join(self._pending))
            if chunk:
                self._payload.write(chunk)
            self._pending.clear()
            self._pending_bytes = 0

    def abort(self) -> None:
        _give_back(self._level, self._zstd)  # (its next compressobj() starts afresh)
        self._payload.close()
        if self._payload_path:
            os.unlink(self._payload_path)

    def finish_bytes(self, header: dict) -> bytes:
        """The whole segment object, built in memory (a writer made with ``path`` None)."""
        self._compress_pending()
        self._payload.write(self._compressor.flush())
        _give_back(self._level, self._zstd)
        full = dict(header, raw_length=self.raw_length, txn_count=self.count)
        return _envelope(SEGMENT_MAGIC, full, self._payload.getvalue())

    def finish(self, header: dict, fsync: bool = True) -> int:
        """Write the segment to ``path`` (fsynced unless ``fsync`` is False: a staging copy
        whose source stays on disk until it is uploaded); returns its size."""
        self._compress_pending()
        self._payload.write(self._compressor.flush())
        _give_back(self._level, self._zstd)
        payload_len = self._payload.tell()
        self._payload.seek(0)
        full = dict(header, raw_length=self.raw_length, txn_count=self.count)
        size = write_envelope_file(self.path, SEGMENT_MAGIC, full, self._payload, payload_len, fsync)
        self._payload.close()
        os.unlink(self._payload_path)
        return size


def write_envelope_file(path: str, magic: bytes, header: dict, payload, payload_len: int, fsync: bool = True) -> int:
    """Write an object (section 2 of docs/FORMAT.md) to ``path`` from a payload file object,
    streaming, and fsync it; the same bytes ``_envelope`` builds in memory.  Returns its size."""
    hasher = hashlib.blake2b(digest_size=32)
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    with open(path, "wb") as out:

        def emit(data: bytes) -> None:
            hasher.update(data)
            out.write(data)

        emit(_PREFIX.pack(magic, FORMAT_VERSION, len(head)) + head)
        while chunk := payload.read(1 << 20):
            emit(chunk)
        emit(struct.pack("<Q", payload_len))
        out.write(hasher.digest())
        out.flush()
        if fsync:
            os.fsync(out.fileno())
        return out.tell()


def iter_snapshot_pages(compressed, page_size: int, page_count: int, name: str) -> Iterator[tuple[int, bytes]]:
    """Decompress a snapshot payload stream into (pgno, page) pairs, checking the page count."""
    reader = zstandard.ZstdDecompressor().stream_reader(compressed)
    pgno = 0
    buf = b""
    try:
        while True:
            chunk = reader.read(page_size * 256)
            if not chunk:
                break
            buf += chunk
            whole = len(buf) - len(buf) % page_size
            for off in range(0, whole, page_size):
                pgno += 1
                yield pgno, buf[off : off + page_size]
            buf = buf[whole:]
    except zstandard.ZstdError as exc:
        raise ObjectCorrupt(f"{name}: cannot decompress payload ({exc})") from None
    if buf:
        raise ObjectCorrupt(f"{name}: payload ends inside a page")
    if pgno != page_count:
        raise ObjectCorrupt(f"{name}: holds {pgno} pages, header says {page_count}")


def read_snapshot(blob: bytes, name: str = "snapshot") -> tuple[dict, Iterator[tuple[int, bytes]]]:
    """Verify a snapshot object and iterate its pages as (pgno, data) in order."""
    header, payload = _open_envelope(blob, SNAPSHOT_MAGIC, name)
    page_size = header["page_size"]

    def pages() -> Iterator[tuple[int, bytes]]:
        yield from iter_snapshot_pages(io.BytesIO(payload), page_size, header["page_count"], name)

    return header, pages()
