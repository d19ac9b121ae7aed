"""Replica object formats: segments and snapshots in their checksummed envelope (docs/FORMAT.md)."""

from __future__ import annotations

import hashlib
import json
import os
import random
import struct
import tempfile
from pathlib import Path

import pytest
import zstandard
from hypothesis import example, given, settings
from hypothesis import strategies as st
from walrewind.engine.errors import ObjectCorrupt
from walrewind.engine.replica.format import (
    FORMAT_VERSION,
    SEGMENT_MAGIC,
    SNAPSHOT_MAGIC,
    SnapshotWriter,
    TxnRecord,
    decode_segment,
    encode_segment,
    read_snapshot,
)
from walrewind.engine.sqlite.pagehash import checksum_pages

PAGE = 512
U32 = st.integers(min_value=0, max_value=2**32 - 1)
U64 = st.integers(min_value=0, max_value=2**64 - 1)
I64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)


# ----------------------------------------------------------------------------- helpers


def envelope(magic: bytes, header, payload: bytes, version: int = FORMAT_VERSION, payload_len: int | None = None) -> bytes:
    """An object built straight from the documented layout (independent of format.py)."""
    head = json.dumps(header, sort_keys=True, separators=(",", ":")).encode()
    body = struct.pack("<4sHI", magic, version, len(head)) + head + payload
    body += struct.pack("<Q", len(payload) if payload_len is None else payload_len)
    return body + hashlib.blake2b(body, digest_size=32).digest()


def raw_txn(txid: int, pages: dict[int, bytes], ts: int = 0, db_pages: int = 1, flags: int = 0, ck: int = 0) -> bytes:
    out = struct.pack("<QqIIIQ", txid, ts, db_pages, flags, len(pages), ck)
    for pgno in sorted(pages):
        out += struct.pack("<I", pgno) + pages[pgno]
    return out


def zstd(data: bytes) -> bytes:
    return zstandard.ZstdCompressor(level=3).compress(data)


pages_512 = st.one_of(
    st.binary(min_size=PAGE, max_size=PAGE),
    st.binary(min_size=1, max_size=1).map(lambda b: b * PAGE),
)


@st.composite
def txn_records(draw, max_pages: int = 4):
    pgnos = draw(st.lists(st.integers(min_value=1, max_value=2**32 - 1), max_size=max_pages, unique=True))
    return TxnRecord(
        txid=draw(U64),
        commit_ts_us=draw(I64),
        db_pages=draw(U32),
        flags=draw(U32),
        db_checksum=draw(U64),
        pages={p: draw(pages_512) for p in pgnos},
    )


def sample_records(seed: int = 7, count: int = 5) -> list[TxnRecord]:
    rng = random.Random(seed)
    return [
        TxnRecord(
            txid=100 + i,
            commit_ts_us=1_705_314_600_000_000 + i * 1000,
            db_pages=10 + i,
            flags=i % 3,
            db_checksum=rng.getrandbits(64),
            pages={rng.randrange(1, 20): rng.randbytes(PAGE) for _ in range(rng.randrange(0, 4))},
        )
        for i in range(count)
    ]


HEADER = {"db_id": "db-1", "generation": "0000000000000001-00000001", "page_size": PAGE}
SAMPLE_SEGMENT = encode_segment(HEADER, sample_records())
NAME = "generations/0000000000000001-00000001/segments/some.seg"


# ----------------------------------------------------------------------------- segments


@settings(max_examples=100, deadline=None)
@given(records=st.lists(txn_records(), max_size=5), extra=st.dictionaries(st.sampled_from(["db_id", "note"]), st.text(max_size=8)))
def test_segment_round_trip(records, extra):
    header = dict(extra, page_size=PAGE)
    blob = encode_segment(header, records)
    got_header, got = decode_segment(blob, "seg")
    assert got == records
    assert got_header == dict(header, raw_length=sum(len(r.encode()) for r in records), txn_count=len(records))


def test_segment_layout_matches_the_spec():
    records = sample_records()
    raw = b"".join(raw_txn(r.txid, r.pages, r.commit_ts_us, r.db_pages, r.flags, r.db_checksum) for r in records)
    assert b"".join(r.encode() for r in records) == raw
    header = dict(HEADER, raw_length=len(raw), txn_count=len(records))
    # Decoding a hand-built object gives the records back...
    assert decode_segment(envelope(SEGMENT_MAGIC, header, zstd(raw)))[1] == records
    # ...and the writer's envelope is byte-identical apart from the compressor's output.
    ours = envelope(SEGMENT_MAGIC, header, zstd(raw))
    assert SAMPLE_SEGMENT == ours


def test_empty_segment_round_trip():
    header, records = decode_segment(encode_segment({"page_size": PAGE}, []))
    assert records == [] and header["txn_count"] == 0 and header["raw_length"] == 0


@settings(max_examples=300, deadline=None)
@given(position=st.integers(min_value=0, max_value=len(SAMPLE_SEGMENT) - 1), bit=st.integers(min_value=0, max_value=7))
@example(position=0, bit=0)
@example(position=4, bit=1)  # version
@example(position=6, bit=0)  # header length
@example(position=len(SAMPLE_SEGMENT) - 40, bit=0)  # payload length
@example(position=len(SAMPLE_SEGMENT) - 1, bit=7)  # digest
def test_any_flipped_bit_in_a_segment_is_caught(position, bit):
    blob = bytearray(SAMPLE_SEGMENT)
    blob[position] ^= 1 << bit
    with pytest.raises(ObjectCorrupt) as info:
        decode_segment(bytes(blob), NAME)
    assert str(info.value).startswith(NAME + ":")


@settings(max_examples=150, deadline=None)
@given(length=st.integers(min_value=0, max_value=len(SAMPLE_SEGMENT) - 1))
@example(length=0)
@example(length=1)
@example(length=10 + 40 - 1)
@example(length=len(SAMPLE_SEGMENT) - 1)
def test_any_truncation_of_a_segment_is_caught(length):
    with pytest.raises(ObjectCorrupt) as info:
        decode_segment(SAMPLE_SEGMENT[:length], NAME)
    assert NAME in str(info.value)


def test_short_object_says_truncated():
    with pytest.raises(ObjectCorrupt, match=r"^seg-x: object is truncated \(3 bytes\)$"):
        decode_segment(b"WRS", "seg-x")


def test_appended_bytes_are_caught():
    with pytest.raises(ObjectCorrupt, match="seg-y: checksum mismatch"):
        decode_segment(SAMPLE_SEGMENT + b"\x00", "seg-y")


def test_wrong_magic_messages():
    with pytest.raises(ObjectCorrupt, match=r"^a\.seg: not a walrewind segment \(bad magic\)$"):
        decode_segment(b"XXXX" + SAMPLE_SEGMENT[4:], "a.seg")
    snap = envelope(SNAPSHOT_MAGIC, {"page_size": PAGE, "page_count": 0}, zstd(b""))
    with pytest.raises(ObjectCorrupt, match=r"^b\.seg: not a walrewind segment \(bad magic\)$"):
        decode_segment(snap, "b.seg")
    with pytest.raises(ObjectCorrupt, match=r"^c\.snap: not a walrewind snapshot \(bad magic\)$"):
        read_snapshot(SAMPLE_SEGMENT, "c.snap")


@pytest.mark.parametrize("version", [0, 2, 65535])
def test_unsupported_version_message(version):
    blob = SAMPLE_SEGMENT[:4] + struct.pack("<H", version) + SAMPLE_SEGMENT[6:]
    with pytest.raises(ObjectCorrupt, match=rf"^v\.seg: format version {version} is not supported \(this build reads 1\)$"):
        decode_segment(blob, "v.seg")
    # A well-formed object of another version is refused the same way.
    with pytest.raises(ObjectCorrupt, match=f"format version {version} is not supported"):
        decode_segment(envelope(SEGMENT_MAGIC, HEADER, zstd(b""), version=version), "v.seg")


def test_digest_valid_but_inconsistent_objects_are_format_errors():
    records = sample_records()
    raw = b"".join(r.encode() for r in records)
    good = dict(HEADER, raw_length=len(raw), txn_count=len(records))
    cases = {
        "payload length does not match": envelope(SEGMENT_MAGIC, good, zstd(raw), payload_len=len(zstd(raw)) + 1),
        "cannot decompress payload": envelope(SEGMENT_MAGIC, good, b"not zstd at all"),
        "payload decompressed to": envelope(SEGMENT_MAGIC, dict(good, raw_length=len(raw) + 5), zstd(raw)),
        "holds 5 transactions, header says 6": envelope(SEGMENT_MAGIC, dict(good, txn_count=6), zstd(raw)),
        "truncated transaction header": envelope(
            SEGMENT_MAGIC, dict(good, raw_length=len(raw) + 3), zstd(raw + b"abc")
        ),
        "transaction 7 is truncated": envelope(
            SEGMENT_MAGIC,
            dict(good, raw_length=len(raw_txn(7, {1: bytes(PAGE)})) - 1, txn_count=1),
            zstd(raw_txn(7, {1: bytes(PAGE)})[:-1]),
        ),
    }
    for needle, blob in cases.items():
        with pytest.raises(ObjectCorrupt) as info:
            decode_segment(blob, "odd.seg")
        assert str(info.value).startswith("odd.seg: "), needle
        assert needle in str(info.value)
    # An unreadable JSON header.
    head = b"{not json"
    body = struct.pack("<4sHI", SEGMENT_MAGIC, 1, len(head)) + head + zstd(b"") + struct.pack("<Q", len(zstd(b"")))
    blob = body + hashlib.blake2b(body, digest_size=32).digest()
    with pytest.raises(ObjectCorrupt, match="^j.seg: unreadable header"):
        decode_segment(blob, "j.seg")


# ----------------------------------------------------------------------------- snapshots


def write_snapshot(path: Path, pages: list[bytes], header: dict, rng: random.Random, tail: bytes = b"") -> bytes:
    writer = SnapshotWriter(str(path))
    data = b"".join(pages) + tail
    off = 0
    while off < len(data):  # feed in arbitrary chunks, not page-aligned
        step = rng.choice([1, 100, PAGE, 3 * PAGE + 7, 70 * PAGE])
        writer.add_pages(data[off : off + step])
        off += step
    size = writer.finish(header)
    assert not os.path.exists(str(path) + ".payload"), "side file left behind"
    blob = path.read_bytes()
    assert size == len(blob)
    return blob


@settings(max_examples=30, deadline=None)
@given(count=st.integers(min_value=0, max_value=700), seed=st.integers(min_value=0, max_value=2**32 - 1))
@example(count=0, seed=0)
@example(count=256, seed=1)
@example(count=257, seed=2)
def test_snapshot_round_trip(count, seed):
    rng = random.Random(seed)
    pages = [rng.choice([bytes(PAGE), rng.randbytes(PAGE), bytes([rng.randrange(256)]) * PAGE]) for _ in range(count)]
    header = {"page_size": PAGE, "page_count": count, "txid": 42, "db_checksum": checksum_pages(enumerate(pages, 1))}
    with tempfile.TemporaryDirectory() as d:
        blob = write_snapshot(Path(d) / "x.snap", pages, header, rng)
    got_header, it = read_snapshot(blob, "x.snap")
    assert got_header == header
    got = list(it)
    assert [p for p, _ in got] == list(range(1, count + 1))
    assert [data for _, data in got] == pages
    assert checksum_pages(got) == header["db_checksum"]


SAMPLE_PAGES = [random.Random(3).randbytes(PAGE) for _ in range(20)]


def _sample_snapshot() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        return write_snapshot(Path(d) / "s.snap", SAMPLE_PAGES, {"page_size": PAGE, "page_count": 20}, random.Random(1))


SAMPLE_SNAPSHOT = _sample_snapshot()


@settings(max_examples=200, deadline=None)
@given(position=st.integers(min_value=0, max_value=len(SAMPLE_SNAPSHOT) - 1), bit=st.integers(min_value=0, max_value=7))
def test_any_flipped_bit_in_a_snapshot_is_caught_before_any_page(position, bit):
    blob = bytearray(SAMPLE_SNAPSHOT)
    blob[position] ^= 1 << bit
    with pytest.raises(ObjectCorrupt) as info:
        read_snapshot(bytes(blob), "s.snap")  # raised on open, not while iterating
    assert str(info.value).startswith("s.snap:")


@settings(max_examples=60, deadline=None)
@given(length=st.integers(min_value=0, max_value=len(SAMPLE_SNAPSHOT) - 1))
def test_any_truncation_of_a_snapshot_is_caught(length):
    with pytest.raises(ObjectCorrupt, match="s.snap"):
        read_snapshot(SAMPLE_SNAPSHOT[:length], "s.snap")


def test_snapshot_with_fewer_or_more_pages_than_its_header(tmp_path):
    rng = random.Random(5)
    for claimed in (19, 21, 0):
        blob = write_snapshot(tmp_path / f"{claimed}.snap", SAMPLE_PAGES, {"page_size": PAGE, "page_count": claimed}, rng)
        header, it = read_snapshot(blob, "n.snap")
        with pytest.raises(ObjectCorrupt, match=rf"^n\.snap: holds 20 pages, header says {claimed}$"):
            list(it)


def test_snapshot_payload_ending_inside_a_page(tmp_path):
    blob = write_snapshot(
        tmp_path / "p.snap", SAMPLE_PAGES, {"page_size": PAGE, "page_count": 20}, random.Random(6), tail=b"x" * 10
    )
    header, it = read_snapshot(blob, "p.snap")
    with pytest.raises(ObjectCorrupt, match=r"^p\.snap: payload ends inside a page$"):
        list(it)


def test_snapshot_with_undecodable_payload():
    blob = envelope(SNAPSHOT_MAGIC, {"page_size": PAGE, "page_count": 1}, b"\x28\xb5\x2f\xfd garbage" * 10)
    header, it = read_snapshot(blob, "z.snap")
    with pytest.raises(ObjectCorrupt, match=r"^z\.snap: cannot decompress payload"):
        list(it)


# ----------------------------------------------------------------------------- regressions (bugs found and fixed)


@pytest.mark.parametrize(
    "header",
    [{"page_size": PAGE, "txn_count": 0}, {"raw_length": 0, "txn_count": 0}, [1, 2]],
    ids=["no-raw_length", "no-page_size", "not-an-object"],
)
def test_segment_with_incomplete_header_is_a_format_error(header):
    with pytest.raises(ObjectCorrupt):
        decode_segment(envelope(SEGMENT_MAGIC, header, zstd(b"")), "h.seg")


def test_streamed_segment_decodes_like_an_encoded_one(tmp_path):
    """The daemon's uploader streams records into a file (SegmentWriter): same records, same header."""
    from walrewind.engine.replica.format import SegmentWriter

    records = sample_records()
    writer = SegmentWriter(str(tmp_path / "seg"))
    for rec in records:
        writer.add_record(rec.encode())
    writer.finish(HEADER)
    header, got = decode_segment((tmp_path / "seg").read_bytes())
    assert got == records
    assert header == dict(HEADER, raw_length=sum(len(r.encode()) for r in records), txn_count=len(records))
    assert not (tmp_path / "seg.payload").exists()


def test_a_reused_compressor_writes_the_same_segment_bytes():
    """The uploader's thread reuses its zstd compressor (one per upload was ~20 us of context
    set-up): the bytes stay those of a fresh one (a retried upload must be byte-identical),
    after an aborted writer too, and two writers open at once on one thread each get their own."""
    from walrewind.engine.replica import format as fmt
    from walrewind.engine.replica.format import SegmentWriter

    rng = random.Random(23)
    records = [rng.randbytes(rng.randrange(50, 3000)) + bytes(rng.randrange(0, 3000)) for _ in range(40)]

    def segment(records) -> bytes:
        writer = SegmentWriter(None, level=1)
        for raw in records:
            writer.add_record(raw)
        return writer.finish_bytes({"k": 1})

    fmt._COMPRESSORS.spare = None
    fresh = segment(records)
    assert segment(records) == fresh and fmt._COMPRESSORS.spare is not None
    aborted = SegmentWriter(None, level=1)
    aborted.add_record(records[0] * 200)  # past the batch size: handed to zstd, then abandoned
    aborted.abort()
    assert segment(records) == fresh
    one, two = SegmentWriter(None, level=1), SegmentWriter(None, level=1)
    for raw in records:
        one.add_record(raw)
        two.add_record(raw)
    assert one.finish_bytes({"k": 1}) == two.finish_bytes({"k": 1}) == fresh
