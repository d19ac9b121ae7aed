"""One spool record's body: a batch of consecutive transactions from one read pass.

    body = meta length u16 | meta | page changes | transactions

``transactions`` are ``TxnRecord.encode()`` bytes back to back, exactly as they go into a
segment's payload, so the uploader hands them to zstd as they are.  The binary meta (``_META``)
holds where the batch ends in the WAL, its ``through`` time, SQLite's commit counter after it, its
first txid and count, the first and last commit times, and the database's size and checksum
after its last transaction.  The page changes are the *net* page hashes the batch set (``n`` page
numbers u32, then ``n`` hashes u64; PageHashes.net_changes), computed by the reader when it hashed
the pages: the uploader replays them onto the replica-side hashes and the hashes log without
hashing a page again, and with one call per batch rather than per transaction (per-record work
was most of the uploader's CPU at 100 txn/s).

Records written by earlier versions carry a JSON meta (it starts with ``{``), one transaction,
and no page changes; they are still read (``changes`` is then None and the uploader hashes the
pages).
"""

from __future__ import annotations

import json
import struct
import sys
from array import array
from dataclasses import dataclass
from typing import Iterator

from ..replica.format import PGNO, TXN, TxnRecord
from ..sqlite.pagehash import PageChanges
from ..sqlite.walfile import WalPosition

_LEN = struct.Struct("<H")
# kind, flags, salt1, salt2, frame, cksum0, cksum1, page_size, through_ts_us, change, changes,
# first_txid, count, first_ts_us, last_ts_us, db_pages, db_checksum
_META = struct.Struct("<BBIIIIIIqIIQIqqIQ")
_KIND = 1
_HAS_POS, _HAS_CKSUM, _BIG_ENDIAN, _HAS_CHANGE, _HAS_CHANGES = 1, 2, 4, 8, 16
_SWAP = sys.byteorder == "big"  # the arrays are little-endian on disk


@dataclass
class Batch:
    """What a record's meta says about its transactions (and where they end in the WAL)."""

    position: WalPosition | None
    through_ts_us: int
    change: int | None
    changes: PageChanges | None  # net page hashes of the batch; None: not recorded (old record)
    first_txid: int
    count: int
    first_ts_us: int
    last_ts_us: int
    db_pages: int  # after the last transaction
    db_checksum: int  # after the last transaction


def encode_body(batch: Batch, txns: bytes) -> bytes:
    flags = 0
    s1 = s2 = frame = c0 = c1 = page_size = 0
    position = batch.position
    if position is not None:
        flags |= _HAS_POS | (_BIG_ENDIAN if position.big_endian else 0)
        s1, s2, frame, page_size = position.salt1, position.salt2, position.frame, position.page_size
        if position.cksum is not None:
            flags |= _HAS_CKSUM
            c0, c1 = position.cksum
    if batch.change is not None:
        flags |= _HAS_CHANGE
    if batch.changes is not None:
        flags |= _HAS_CHANGES
        pgnos, hashes = batch.changes
    else:
        pgnos, hashes = array("I"), array("Q")
    meta = _META.pack(_KIND, flags, s1, s2, frame, c0, c1, page_size, batch.through_ts_us, batch.change or 0,
                      len(pgnos), batch.first_txid, batch.count, batch.first_ts_us, batch.last_ts_us,
                      batch.db_pages, batch.db_checksum)
    if _SWAP:
        pgnos, hashes = array("I", pgnos), array("Q", hashes)
        pgnos.byteswap()
        hashes.byteswap()
    return b"".join((_LEN.pack(len(meta)), meta, pgnos.tobytes(), hashes.tobytes(), txns))


def decode_body(body: bytes) -> tuple[Batch, bytes]:
    """(batch, transaction bytes) of a record body (a batch, or an old JSON record)."""
    (meta_len,) = _LEN.unpack_from(body, 0)
    start = _LEN.size
    if meta_len and body[start] == 0x7B:  # "{": one transaction with a JSON meta, an earlier version
        doc = json.loads(body[start : start + meta_len])
        pos = WalPosition.from_json(doc["pos"]) if doc["pos"] else None
        raw = body[start + meta_len :]
        txid, ts, db_pages, _flags, _count, checksum = TXN.unpack_from(raw, 0)
        return Batch(pos, doc["through"], doc.get("change"), None, txid, 1, ts, ts, db_pages, checksum), raw
    if meta_len != _META.size or body[start] != _KIND:
        raise ValueError(f"unknown spool record (meta of {meta_len} bytes, kind {body[start]})")
    (_kind, flags, s1, s2, frame, c0, c1, page_size, through, change, n, first, count, first_ts, last_ts,
     db_pages, checksum) = _META.unpack_from(body, start)
    pos = None
    if flags & _HAS_POS:
        pos = WalPosition(s1, s2, frame, (c0, c1) if flags & _HAS_CKSUM else None, page_size,
                          bool(flags & _BIG_ENDIAN))
    off = start + meta_len
    changes = None
    if flags & _HAS_CHANGES:
        pgnos, hashes = array("I"), array("Q")
        pgnos.frombytes(body[off : off + 4 * n])
        hashes.frombytes(body[off + 4 * n : off + 12 * n])
        if _SWAP:
            pgnos.byteswap()
            hashes.byteswap()
        changes = (pgnos, hashes)
    batch = Batch(pos, through, change if flags & _HAS_CHANGE else None, changes, first, count, first_ts, last_ts,
                  db_pages, checksum)
    return batch, body[off + 12 * n :]


def txn_spans(txns: bytes, page_size: int) -> Iterator[tuple[int, int, int, int]]:
    """(txid, commit_ts_us, start, end) of each encoded transaction, reading headers only."""
    off, size = 0, len(txns)
    while off < size:
        txid, ts, _db_pages, _flags, count, _checksum = TXN.unpack_from(txns, off)
        end = off + TXN.size + count * (PGNO.size + page_size)
        yield txid, ts, off, end
        off = end


@dataclass
class RawSpooled:
    """A spool record with its transactions still encoded (``TxnRecord.encode()`` bytes)."""

    batch: Batch
    raw: bytes

    @property
    def txid(self) -> int:
        return self.batch.first_txid

    @property
    def last_txid(self) -> int:
        return self.batch.first_txid + self.batch.count - 1

    def after(self, txid: int, page_size: int) -> "RawSpooled":
        """The part of this batch after ``txid`` (which falls inside it), without net page
        changes (they describe the whole batch).  Uploads end at file boundaries, so this is only
        a defence."""
        spans = [sp for sp in txn_spans(self.raw, page_size) if sp[0] > txid]
        b = self.batch
        part = Batch(b.position, b.through_ts_us, b.change, None, spans[0][0], len(spans), spans[0][1], b.last_ts_us,
                     b.db_pages, b.db_checksum)
        return RawSpooled(part, self.raw[spans[0][2] :])


@dataclass
class SpooledTxn:
    record: TxnRecord
    position: WalPosition | None
    through_ts_us: int
    change: int | None = None  # SQLite's commit counter after this record, when it was verified
    changes: PageChanges | None = None  # the page hashes it set, as PageHashes.apply recorded them
