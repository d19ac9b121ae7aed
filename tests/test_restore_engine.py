"""The restore engine against a reference: newest-first, write-once replay equals oldest-first replay.

Replicas here are written straight with the format encoders (random page contents, so restores run
with ``check="none"``: the recorded checksum is the oracle).  The histories shrink the database,
grow it again without rewriting pages (they must come back as zeros), carry page entries above
``db_pages`` (which must be ignored) and hold several snapshots; the expected bytes come from a
plain oldest-first application of docs/FORMAT.md section 5 in memory.
"""

from __future__ import annotations

import os
import random
import struct
import uuid

import pytest
from walrewind.engine.errors import ObjectCorrupt, RestoreError, UsageError
from walrewind.engine.replica import layout
from walrewind.engine.replica.format import SnapshotWriter, TxnRecord, encode_segment
from walrewind.engine.replica.index import Replica
from walrewind.engine.replica.snapshotfile import SnapshotStream
from walrewind.engine.restore.planning import plan_restore
from walrewind.engine.restore.restorer import restore
from walrewind.engine.sqlite.pagehash import checksum_pages
from walrewind.engine.storage import open_storage, put_file_immutable, put_immutable

PS = 512


class Model:
    """A database image changed record by record (the reference), written into a replica."""

    def __init__(self, root: str, seed: int, pages: int = 40) -> None:
        self.rng = random.Random(seed)
        self.storage = open_storage(root)
        self.root = root
        self.image = bytearray(self.rng.randbytes(pages * PS))
        self.db_id = uuid.UUID(int=self.rng.getrandbits(128)).hex
        self.gen = f"{1_700_000_000_000_000:016x}-{self.rng.getrandbits(32):08x}"
        self.txid, self.ts = 1, 1_700_000_000_000_000
        self.points: dict[int, tuple[bytes, int]] = {}  # txid -> (image, checksum)
        self.snapshot()

    @property
    def checksum(self) -> int:
        return checksum_pages((i // PS + 1, bytes(self.image[i : i + PS])) for i in range(0, len(self.image), PS))

    def snapshot(self) -> str:
        header = {"db_id": self.db_id, "generation": self.gen, "txid": self.txid, "ts_us": self.ts, "page_size": PS,
                  "page_count": len(self.image) // PS, "db_checksum": f"{self.checksum:016x}"}
        path = os.path.join(self.root, f"snap-{self.txid}.tmp")
        writer = SnapshotWriter(path)
        writer.add_pages(bytes(self.image))
        writer.finish(header)
        key = layout.SnapshotKey(self.gen, self.txid, self.ts).key
        put_file_immutable(self.storage, key, path)
        os.unlink(path)
        self.points[self.txid] = (bytes(self.image), self.checksum)
        return key

    def record(self) -> TxnRecord:
        rng = self.rng
        db_pages = len(self.image) // PS
        kind = rng.random()
        if kind < 0.15:
            new_pages = max(1, db_pages - rng.randint(1, 12))  # shrink
        elif kind < 0.35:
            new_pages = db_pages + rng.randint(1, 12)  # grow; some new pages never written
        else:
            new_pages = db_pages
        pages: dict[int, bytes] = {}
        for _ in range(rng.randint(0, 6)):
            pages[rng.randint(1, max(new_pages, db_pages) + 3)] = rng.randbytes(PS)  # may exceed db_pages
        # reference application (FORMAT.md section 5): entries above db_pages are ignored
        for pgno, data in pages.items():
            if pgno <= new_pages:
                if len(self.image) < pgno * PS:
                    self.image.extend(bytes(pgno * PS - len(self.image)))
                self.image[(pgno - 1) * PS : pgno * PS] = data
        del self.image[new_pages * PS :]
        self.image.extend(bytes(new_pages * PS - len(self.image)))
        self.txid += 1
        self.ts += rng.randint(1, 3000)
        rec = TxnRecord(self.txid, self.ts, new_pages, 0, self.checksum, pages)
        self.points[self.txid] = (bytes(self.image), rec.db_checksum)
        return rec

    def segment(self, n: int) -> None:
        records = [self.record() for _ in range(n)]
        key = layout.SegmentKey(self.gen, records[0].txid, records[-1].txid, records[0].commit_ts_us, records[-1].commit_ts_us)
        header = {"db_id": self.db_id, "generation": self.gen, "page_size": PS, "first_txid": key.first_txid,
                  "last_txid": key.last_txid, "through_ts_us": key.last_ts_us}
        put_immutable(self.storage, key.key, encode_segment(header, records))


def build(root: str, seed: int) -> Model:
    model = Model(root, seed)
    for n in range(12):
        model.segment(model.rng.randint(1, 8))
        if n in (4, 8):
            model.snapshot()
    return model


@pytest.mark.parametrize("seed", range(6))
def test_every_point_equals_the_reference_replay(tmp_path, seed):
    model = build(str(tmp_path / "replica"), seed)
    for txid, (image, checksum) in sorted(model.points.items()):
        out = str(tmp_path / f"r{txid}.db")
        result = restore(model.storage, out, target_txid=txid, check="none")
        assert (result.txid, result.checksum) == (txid, checksum)
        assert open(out, "rb").read() == image, f"txid {txid}"
        assert result.bytes_written <= len(image)  # every page written at most once
        assert result.quick_check == "not run"
        os.unlink(out)
    latest = str(tmp_path / "latest.db")
    result = restore(model.storage, latest, check="none")
    assert open(latest, "rb").read() == model.points[model.txid][0]


def test_time_targets_equal_the_reference(tmp_path):
    model = build(str(tmp_path / "replica"), 11)
    stamps = {}
    for seg in Replica(model.storage).generations[0].segments:
        stamps[seg.first_txid] = seg.first_ts_us
    for txid in sorted(stamps)[1:]:
        # the moment just before a segment starts restores the last transaction before it
        out = str(tmp_path / f"t{txid}.db")
        result = restore(model.storage, out, target_us=stamps[txid] - 1, check="none")
        assert result.txid == txid - 1
        assert open(out, "rb").read() == model.points[txid - 1][0]
        os.unlink(out)


def test_progress_reports_bytes_of_the_plan(tmp_path):
    model = build(str(tmp_path / "replica"), 3)
    replica = Replica(model.storage)
    plan = plan_restore(replica)
    total = replica.sizes[plan.snapshot.key] + sum(replica.sizes[s.key] for s in plan.segments)
    calls = []
    restore(model.storage, str(tmp_path / "p.db"), check="none", progress=lambda *a: calls.append(a))
    stages = [c[0] for c in calls]
    assert stages[0] == "segments" and "snapshot" in stages and stages[-1] == "check"
    transfer = [c for c in calls if c[0] != "check"]
    assert all(t == total for _s, _d, t in transfer) and transfer[-1][1] == total
    assert [d for _s, d, _t in transfer] == sorted(d for _s, d, _t in transfer)


def test_check_modes(tmp_path):
    model = build(str(tmp_path / "replica"), 4)
    with pytest.raises(UsageError, match="unknown check"):
        restore(model.storage, str(tmp_path / "x.db"), check="fast")
    # random pages are not a database: quick_check fails, and nothing is left behind
    with pytest.raises(RestoreError, match="quick_check failed"):
        restore(model.storage, str(tmp_path / "x.db"))
    with pytest.raises(RestoreError, match="integrity_check failed"):
        restore(model.storage, str(tmp_path / "x.db"), check="full")
    assert sorted(os.listdir(tmp_path)) == ["replica"]


def test_damaged_snapshot_falls_back_to_an_older_one(tmp_path):
    model = build(str(tmp_path / "replica"), 5)
    snaps = Replica(model.storage).generations[0].snapshots
    newest = snaps[-1]
    path = os.path.join(model.root, *newest.key.split("/"))
    data = bytearray(open(path, "rb").read())
    data[len(data) // 2] ^= 0x10
    open(path, "wb").write(bytes(data))
    out = str(tmp_path / "latest.db")
    result = restore(model.storage, out, check="none")
    assert (result.txid, open(out, "rb").read()) == (model.txid, model.points[model.txid][0])
    assert list(result.skipped) == [newest.key] and "checksum mismatch" in result.skipped[newest.key]
    assert any(newest.key in w for w in result.warnings) and any(newest.key in n for n in result.notes)
    # the snapshot's own point is still restorable, from the older snapshot plus segments
    again = restore(model.storage, str(tmp_path / "at.db"), target_txid=newest.txid, check="none")
    assert open(str(tmp_path / "at.db"), "rb").read() == model.points[newest.txid][0]
    assert again.skipped == {newest.key: result.skipped[newest.key]}
    # damage every snapshot: nothing to replay from, and the error names them
    for snap in snaps[:-1]:
        p = os.path.join(model.root, *snap.key.split("/"))
        open(p, "r+b").truncate(os.path.getsize(p) - 7)
    with pytest.raises(RestoreError) as err:
        restore(model.storage, str(tmp_path / "none.db"), check="none")
    assert all(s.key in str(err.value) for s in snaps) and "no older valid snapshot" in str(err.value)


def test_snapshot_inconsistent_with_its_name_is_skipped(tmp_path):
    model = build(str(tmp_path / "replica"), 6)
    gen = Replica(model.storage).generations[0]
    older, newest = gen.snapshots[-2], gen.snapshots[-1]
    # a valid object stored under the newest snapshot's name, but holding the older one's state
    src = os.path.join(model.root, *older.key.split("/"))
    dst = os.path.join(model.root, *newest.key.split("/"))
    os.replace(dst, dst + ".moved")
    with open(src, "rb") as f, open(dst, "wb") as g:
        g.write(f.read())
    result = restore(model.storage, str(tmp_path / "r.db"), check="none")
    assert result.checksum == model.points[model.txid][1]
    assert "not what its name says" in result.skipped[newest.key]


# ----------------------------------------------------------------------------- the stream reader
def _snapshot_object(tmp_path, pages: int, seed: int = 1) -> tuple[bytes, bytes]:
    rng = random.Random(seed)
    image = rng.randbytes(pages * PS)
    path = str(tmp_path / "s.snap")
    writer = SnapshotWriter(path)
    writer.add_pages(image)
    writer.finish({"page_size": PS, "page_count": pages, "txid": 1, "ts_us": 1, "db_checksum": "0" * 16})
    return open(path, "rb").read(), image


def _chunks(blob: bytes, rng: random.Random):
    off = 0
    while off < len(blob):
        n = rng.randint(1, 3000)
        yield blob[off : off + n]
        off += n


@pytest.mark.parametrize("seed", range(5))
def test_stream_reader_is_independent_of_chunk_boundaries(tmp_path, seed):
    blob, image = _snapshot_object(tmp_path, 37, seed)
    stream = SnapshotStream(_chunks(blob, random.Random(seed)), len(blob), "s.snap")
    got = b"".join(data for _first, data in stream.pages(PS * 3))
    assert got == image and stream.consumed == len(blob)


def test_stream_reader_catches_every_truncation_and_flip(tmp_path):
    blob, _image = _snapshot_object(tmp_path, 9)
    rng = random.Random(2)
    cases = [blob[:n] for n in sorted(rng.sample(range(len(blob)), 40))]
    for pos in rng.sample(range(len(blob)), 60):
        flipped = bytearray(blob)
        flipped[pos] ^= 1 << rng.randrange(8)
        cases.append(bytes(flipped))
    for case in cases:
        with pytest.raises(ObjectCorrupt, match="s.snap"):
            stream = SnapshotStream(_chunks(case, rng), len(blob), "s.snap")
            for _ in stream.pages(PS):
                pass


def test_stream_reader_prefers_the_digest_verdict(tmp_path):
    blob, _image = _snapshot_object(tmp_path, 64)
    damaged = bytearray(blob)
    damaged[len(blob) - 100] ^= 0xFF  # inside the zstd payload, near its end
    with pytest.raises(ObjectCorrupt, match="checksum mismatch"):
        for _ in SnapshotStream(iter([bytes(damaged)]), len(blob), "s.snap").pages():
            pass
    longer = blob + struct.pack("<I", 7)
    with pytest.raises(ObjectCorrupt, match="longer than listed"):
        for _ in SnapshotStream(iter([longer]), len(blob), "s.snap").pages():
            pass


def test_segments_of_another_database_are_refused(tmp_path):
    model = Model(str(tmp_path / "replica"), 9)
    model.segment(3)
    model.db_id = uuid.UUID(int=1).hex  # a second database writing into the same generation
    model.segment(3)
    gen = Replica(model.storage).generations[0]
    with pytest.raises(RestoreError, match=r"two databases wrote into one replica path") as err:
        restore(model.storage, str(tmp_path / "x.db"), check="none")
    assert gen.segments[0].key in str(err.value) and gen.segments[1].key in str(err.value)
    # a point before the foreign segment is still restorable
    assert restore(model.storage, str(tmp_path / "ok.db"), target_txid=4, check="none").checksum == model.points[4][1]
    assert sorted(os.listdir(tmp_path)) == ["ok.db", "replica"]
