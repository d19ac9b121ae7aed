"""The replica-side page hashes on disk: a base file plus an append-only log of changes.

    <state>/hashes-<txid>.bin   every page's hash at txid (PageHashes.to_bytes())
    <state>/hashes-<txid>.log   one record per upload after that txid: the pages it changed

Rewriting every hash at every upload cost the size of the database's hash table per upload:
~21 MB per second for a 10 GB database.  Now an upload appends only the pages it changed
(12 bytes each, fsynced), and the base is rewritten when the log has grown as large as the base
(at least ``MIN_COMPACT_BYTES``), so the bytes written stay proportional to the changes.

The log is also where the uploaded point advances (state version 2): each record carries the
point after its upload (commit time, WAL position, commit counter), so an upload costs one
append and one fdatasync, and state.json is only replaced when something else in it changes
(a new base, a new generation, an older state version).  The uploaded point is the newest of
state.json's and the last acceptable record's (:func:`newest_point`).

Crash safety (state.json names the base; the log belongs to it by name):

* an upload appends its record (fdatasync) only after the segment is in the replica, so a
  record never claims an upload that did not happen; a crash before the append leaves the
  older point, whose spool files are still there and are uploaded again (same history);
* a record carrying a point is accepted even past state.json's ``uploaded_txid``; an old record
  without one past it (a crash between the two writes of version 1) is ignored and cut off at
  load, and a torn record (CRC) ends the log;
* the log's directory entry is fsynced when the file is created (:meth:`StateDir._log_fd`);
* compaction writes a new base (atomic), then state.json naming it, then deletes the old base
  and log: a crash in between leaves state.json naming a complete old pair.

Every record carries the checksum after it; the load verifies each one.

    record = length u32 | crc32 u32 | first_txid u64 | last_txid u64 | db_pages u32 |
             checksum u64 | n u32 | n pgnos u32 | n hashes u64 [| point]   (little-endian)
    point  = version u8 (1) | flags u8 | uploaded_ts_us i64 | change i64
             [| salt1 u32 | salt2 u32 | frame i64 | cksum1 u32 | cksum2 u32 | page_size u32 | big_endian u8]
    flags: 1 uploaded_ts_us set, 2 change set, 4 position follows, 8 the position has a checksum

A record without the point (shorter body) is a version 1 record: it says nothing of the point.
"""

from __future__ import annotations

import os
import struct
import sys
from array import array

from ..errors import DaemonError
from ..sqlite.pagehash import PageChanges, PageHashes
from .spoolfile import bodies, frame

_HEAD = struct.Struct("<QQIQI")
_POINT = struct.Struct("<BBqq")
_POS = struct.Struct("<IIqIIIB")
_F_TS, _F_CHANGE, _F_POS, _F_CKSUM = 1, 2, 4, 8
POINT_KEYS = ("uploaded_txid", "uploaded_ts_us", "position", "change")  # the state.json keys a record carries
MIN_COMPACT_BYTES = 1 << 20
_SWAP = sys.byteorder == "big"


def base_name(txid: int) -> str:
    return f"hashes-{txid:016x}.bin"


def base_txid(name: str) -> int | None:
    """The txid a base file is named after (:func:`base_name`); None for an older single
    ``hashes.bin``."""
    if name.startswith("hashes-") and name.endswith(".bin"):
        return int(name[len("hashes-") : -len(".bin")], 16)
    return None


def log_name(base: str) -> str:
    return base[: -len(".bin")] + ".log"


def encode_point(point: dict) -> bytes:
    """The uploaded point (state.json's ``uploaded_ts_us``, ``change``, ``position``) in binary."""
    ts, change, pos = point.get("uploaded_ts_us"), point.get("change"), point.get("position")
    flags = (_F_TS if ts is not None else 0) | (_F_CHANGE if change is not None else 0)
    tail = b""
    if pos is not None:
        ck = pos.get("cksum")
        flags |= _F_POS | (_F_CKSUM if ck else 0)
        tail = _POS.pack(pos["salt1"], pos["salt2"], pos["frame"], *(ck if ck else (0, 0)), pos["page_size"],
                         1 if pos["big_endian"] else 0)
    return _POINT.pack(1, flags, ts or 0, change or 0) + tail


def decode_point(blob: bytes) -> dict | None:
    """The keys :func:`encode_point` was given (None: a record without a point, or a newer one)."""
    if len(blob) < _POINT.size or blob[0] != 1:
        return None
    _version, flags, ts, change = _POINT.unpack_from(blob, 0)
    point: dict = {}
    if flags & _F_TS:
        point["uploaded_ts_us"] = ts
    if flags & _F_CHANGE:
        point["change"] = change
    if flags & _F_POS:
        salt1, salt2, frame, ck1, ck2, page_size, big = _POS.unpack_from(blob, _POINT.size)
        point["position"] = {"salt1": salt1, "salt2": salt2, "frame": frame,
                             "cksum": [ck1, ck2] if flags & _F_CKSUM else None, "page_size": page_size,
                             "big_endian": bool(big)}
    elif "position" not in point:
        point["position"] = None
    return point


def encode(first_txid: int, last_txid: int, db_pages: int, checksum: int, changes: PageChanges,
           point: dict | None = None) -> bytes:
    """One record; with ``point`` (a state dict's point keys) it also advances the uploaded point."""
    pgnos, hashes = changes
    if _SWAP:
        pgnos, hashes = array("I", pgnos), array("Q", hashes)
        pgnos.byteswap()
        hashes.byteswap()
    body = _HEAD.pack(first_txid, last_txid, db_pages, checksum, len(pgnos)) + pgnos.tobytes() + hashes.tobytes()
    if point is not None:
        body += encode_point(point)
    return frame(body)


def write(fd: int, record: bytes, sync: bool = True) -> None:
    """Append one record to the open log and (``sync``) fdatasync it: an append's new size is
    data that fdatasync flushes.  The daemon appends without it and syncs before anything relies
    on the record being durable (statefile.UploadedPoint.sync_log, docs/DESIGN.md §5)."""
    view = memoryview(record)
    while view:
        view = view[os.write(fd, view) :]
    if sync:
        os.fdatasync(fd)


def _records(data: bytes, base_txid: int, saved_txid: int):
    """The log's acceptable records in order: intact (CRC), continuing the txids from
    ``base_txid``, and either carrying a point or not past ``saved_txid`` (state.json's point).
    Yields (offset after it, first, last, db_pages, checksum, n, body, point or None)."""
    at = base_txid
    for off, body in bodies(data, 0, _HEAD.size):
        first, last, db_pages, checksum, n = _HEAD.unpack_from(body, 0)
        point = decode_point(body[_HEAD.size + 12 * n :]) if len(body) > _HEAD.size + 12 * n else None
        if first != at + 1 or last < first or (point is None and last > saved_txid):
            return
        at = last
        yield off, first, last, db_pages, checksum, n, body, point


def newest_point(path: str, base_txid: int, saved_txid: int) -> dict | None:
    """The uploaded point of the log's last acceptable record past ``saved_txid`` (with
    ``uploaded_txid``), or None when state.json's is the newest."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    newest = None
    for _off, _first, last, _pages, _checksum, _n, _body, point in _records(data, base_txid, saved_txid):
        if point is not None and last > saved_txid:
            newest = dict(point, uploaded_txid=last)
    return newest


def replay(path: str, hashes: PageHashes, base_txid: int, through_txid: int, saved_txid: int | None = None) -> int:
    """Apply the log's records after ``base_txid`` up to ``through_txid`` onto ``hashes``.

    ``saved_txid`` is state.json's point (default ``through_txid``): records past it count only
    when they carry a point.  Returns the byte length of the part kept; what follows (records
    past ``through_txid``, a torn tail) is cut off, so the next append continues a clean log.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return 0
    off, at = 0, base_txid
    for end, first, last, db_pages, checksum, n, body, _point in _records(
            data, base_txid, through_txid if saved_txid is None else saved_txid):
        if at >= through_txid or last > through_txid:
            break
        pgnos, table = array("I"), array("Q")
        pgnos.frombytes(body[_HEAD.size : _HEAD.size + 4 * n])
        table.frombytes(body[_HEAD.size + 4 * n : _HEAD.size + 12 * n])
        if _SWAP:
            pgnos.byteswap()
            table.byteswap()
        try:
            hashes.apply_changes(pgnos, table, db_pages)
        except ValueError as exc:
            raise DaemonError(f"{path}: record for txids {first}-{last} does not apply ({exc})") from None
        if hashes.checksum != checksum:
            raise DaemonError(f"{path}: checksum mismatch after txid {last}; the state directory is damaged")
        at, off = last, end
    if at != through_txid:
        raise DaemonError(
            f"{path}: the page hashes end at txid {at} but state.json says {through_txid} was uploaded; "
            "the state directory is damaged (move it away to start a new generation)"
        )
    if off != len(data):
        with open(path, "r+b") as f:
            f.truncate(off)
            os.fsync(f.fileno())
    return off
