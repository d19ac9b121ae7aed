"""One spool record's body: where it came from in the WAL, and the page hashes it set.

    body = meta length u16 | meta | page changes | transaction (``TxnRecord.encode()``)

The meta is binary (``_META``: WAL position, ``through`` time, SQLite's commit counter, the
number of page changes), followed by the page changes the reader computed when it applied the
transaction to its page hashes: ``n`` page numbers (u32) then ``n`` hashes (u64).  The uploader
replays those onto the replica-side hashes and the hashes log without hashing a page again (it
used to decode every record and hash every page a second time: a third of its CPU).

Records written by earlier versions carry a JSON meta (it starts with ``{``) and no page
changes; they are still read (``changes`` is then None and the uploader hashes the pages).
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from dataclasses import dataclass

from ..sqlite.pagehash import PageChanges
from ..sqlite.walfile import WalPosition

_LEN = struct.Struct("<H")
# kind, flags, salt1, salt2, frame, cksum0, cksum1, page_size, through_ts_us, change, changes
_META = struct.Struct("<BBIIIIIIqII")
_KIND = 1
_HAS_POS, _HAS_CKSUM, _BIG_ENDIAN, _HAS_CHANGE = 1, 2, 4, 8
_SWAP = sys.byteorder == "big"  # the arrays are little-endian on disk


@dataclass
class Meta:
    position: WalPosition | None
    through_ts_us: int
    change: int | None
    changes: PageChanges | None  # None: an old record (no page changes recorded)


def encode_body(position: WalPosition | None, through_ts_us: int, change: int | None,
                changes: PageChanges | None, txn_raw: bytes) -> bytes:
    flags = 0
    s1 = s2 = frame = c0 = c1 = page_size = 0
    if position is not None:
        flags |= _HAS_POS | (_BIG_ENDIAN if position.big_endian else 0)
        s1, s2, frame, page_size = position.salt1, position.salt2, position.frame, position.page_size
        if position.cksum is not None:
            flags |= _HAS_CKSUM
            c0, c1 = position.cksum
    if change is not None:
        flags |= _HAS_CHANGE
    pgnos, hashes = changes if changes is not None else (array("I"), array("Q"))
    meta = _META.pack(_KIND, flags, s1, s2, frame, c0, c1, page_size, through_ts_us, change or 0, len(pgnos))
    if _SWAP:
        pgnos, hashes = array("I", pgnos), array("Q", hashes)
        pgnos.byteswap()
        hashes.byteswap()
    return b"".join((_LEN.pack(len(meta)), meta, pgnos.tobytes(), hashes.tobytes(), txn_raw))


def decode_body(body: bytes | memoryview) -> tuple[Meta, bytes]:
    """(meta, transaction bytes) of a record body (new binary or old JSON meta)."""
    (meta_len,) = _LEN.unpack_from(body, 0)
    start = _LEN.size
    if meta_len and body[start] == 0x7B:  # "{": a JSON meta of an earlier version
        doc = json.loads(bytes(body[start : start + meta_len]))
        pos = WalPosition.from_json(doc["pos"]) if doc["pos"] else None
        return Meta(pos, doc["through"], doc.get("change"), None), bytes(body[start + meta_len :])
    kind, flags, s1, s2, frame, c0, c1, page_size, through, change, n = _META.unpack_from(body, start)
    if kind != _KIND or meta_len != _META.size:
        raise ValueError(f"unknown spool record kind {kind}")
    pos = None
    if flags & _HAS_POS:
        pos = WalPosition(s1, s2, frame, (c0, c1) if flags & _HAS_CKSUM else None, page_size,
                          bool(flags & _BIG_ENDIAN))
    off = start + meta_len
    pgnos, hashes = array("I"), array("Q")
    pgnos.frombytes(bytes(body[off : off + 4 * n]))
    hashes.frombytes(bytes(body[off + 4 * n : off + 12 * n]))
    if _SWAP:
        pgnos.byteswap()
        hashes.byteswap()
    return Meta(pos, through, change if flags & _HAS_CHANGE else None, (pgnos, hashes)), bytes(body[off + 12 * n :])
