"""The daemon's local state directory: spool files with torn-tail repair, and the uploaded point."""

from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from walrewind.engine.daemon import spool
from walrewind.engine.daemon.spool import Piece, SpooledTxn, StateDir, atomic_write
from walrewind.engine.replica.format import TxnRecord
from walrewind.engine.sqlite.pagehash import PageHashes
from walrewind.engine.sqlite.walfile import WalPosition

PAGE = 512


def make_items(seed: int, count: int, first_txid: int = 1) -> list[SpooledTxn]:
    rng = random.Random(seed)
    items = []
    for i in range(count):
        pages = {rng.randrange(1, 50): rng.randbytes(PAGE) for _ in range(rng.randrange(0, 4))}
        record = TxnRecord(
            txid=first_txid + i,
            commit_ts_us=1_705_314_600_000_000 + i,
            db_pages=rng.randrange(1, 100),
            flags=rng.randrange(4),
            db_checksum=rng.getrandbits(64),
            pages=pages,
        )
        choice = rng.randrange(3)
        if choice == 0:
            pos = None
        else:
            pos = WalPosition(
                rng.getrandbits(32),
                rng.getrandbits(32),
                rng.randrange(1, 10_000),
                (rng.getrandbits(32), rng.getrandbits(32)) if choice == 2 else None,
                PAGE,
                rng.random() < 0.5,
            )
        items.append(SpooledTxn(record, pos, record.commit_ts_us + rng.randrange(1000)))
    return items


def same(got: list[SpooledTxn], items: list[SpooledTxn]) -> bool:
    """The same transactions; each append() is one batch record, whose position (the last one
    among its items) and latest ``through`` come back on its last transaction."""
    if [i.record for i in got] != [i.record for i in items]:
        return False
    for k, item in enumerate(got):
        if item.position is not None:
            last = next((i.position for i in reversed(items[: k + 1]) if i.position is not None), None)
            if item.position != last:
                return False
        if item.through_ts_us < items[k].through_ts_us:
            return False
    return True


def read_piece(piece: Piece) -> list[SpooledTxn]:
    return StateDir.read_file(piece.path, PAGE, start=piece.start, end=piece.end)


def spool_one_by_one(state: StateDir, items: list[SpooledTxn]) -> tuple[str, list[int]]:
    """Append each item separately; returns the file (closed) and the size after every record."""
    ends = []
    for item in items:
        state.append([item])
        ends.append(state.pending_bytes())  # the only file in the spool
    state.seal(close=True)
    (piece,) = state.sealed_files()
    return piece.path, ends


# ----------------------------------------------------------------------------- spool round trip


def test_append_seal_read_round_trip(tmp_path):
    state = StateDir(str(tmp_path / "state"))
    first, second, third = make_items(1, 3, 10), make_items(2, 4, 13), make_items(3, 2, 17)
    assert state.sealed_files() == []
    state.append([])  # nothing to do: no file is created
    assert os.listdir(state.spool_dir) == []
    state.append(first)
    state.append(second)
    # What is being appended is not offered for upload.
    assert state.sealed_files() == []
    assert state.pending_bytes() > 0
    state.seal()
    (p1,) = state.sealed_files()
    assert (p1.path, p1.start) == (os.path.join(state.spool_dir, f"{10:016x}.log"), 0)
    assert os.listdir(state.spool_dir) == [f"{10:016x}.log"]  # sealed by offset: no rename
    assert same(read_piece(p1), first + second)
    state.append(third)
    assert state.sealed_files() == [p1]
    state.seal()
    state.seal()  # sealing twice is harmless
    _, p2 = state.sealed_files()
    assert (p2.path, p2.start, p2.end) == (p1.path, p1.end, os.path.getsize(p1.path))  # the same file, cut on
    assert same(read_piece(p2), third)
    assert state.pending == state.pending_bytes() == p1.size + p2.size
    state.remove(p1)
    assert state.sealed_files() == [p2] and state.pending == p2.size
    state.remove(p2)
    assert os.listdir(state.spool_dir) == [f"{10:016x}.log"]  # still appended to (its start uploaded)
    assert state.pending == 0
    state.seal(close=True)  # closed with nothing left to upload: removed
    assert os.listdir(state.spool_dir) == []


def test_a_file_rolls_at_roll_bytes_and_goes_once_uploaded(tmp_path, monkeypatch):
    monkeypatch.setattr(spool, "ROLL_BYTES", 1)
    state = StateDir(str(tmp_path))
    state.append(make_items(1, 2, 1))
    state.seal()  # the file is full: closed, the next append starts another
    state.append(make_items(2, 2, 3))
    state.seal()
    p1, p2 = state.sealed_files()
    assert [os.path.basename(p.path) for p in (p1, p2)] == [f"{1:016x}.log", f"{3:016x}.log"]
    state.remove(p1)
    assert os.listdir(state.spool_dir) == [f"{3:016x}.log"]


def test_a_new_file_name_is_fsynced_once(tmp_path, monkeypatch):
    """The directory is fsynced at the first seal of a file (its name, made on the reading
    thread), not at every seal: the file's later pieces live under a name already durable."""
    synced: list[str] = []
    monkeypatch.setattr(spool, "fsync_dir", synced.append)
    state = StateDir(str(tmp_path))
    for k in range(4):
        state.append(make_items(k, 1, k + 1))
        state.seal()
    assert synced == [state.spool_dir]
    state.seal(close=True)
    state.append(make_items(9, 1, 5))
    state.seal()
    assert synced == [state.spool_dir, state.spool_dir]


def test_sealed_files_are_in_txid_order(tmp_path):
    state = StateDir(str(tmp_path))
    for first in (0x1F, 0x100, 0x2, 0xABC):
        state.append(make_items(first, 1, first))
        state.seal(close=True)
    names = [os.path.basename(p.path) for p in StateDir(str(tmp_path)).sealed_files()]
    assert names == [f"{t:016x}.log" for t in (0x2, 0x1F, 0x100, 0xABC)]


def test_reopening_the_state_dir_sees_sealed_files(tmp_path):
    state = StateDir(str(tmp_path / "s"))
    items = make_items(4, 5)
    state.append(items)
    state.seal()
    again = StateDir(str(tmp_path / "s"))
    (piece,) = again.sealed_files()
    assert same(read_piece(piece), items)


def test_files_left_by_a_previous_run_are_pieces_at_the_next_start(tmp_path):
    """A crash leaves the file being appended to (``.log``, possibly with an uploaded start),
    an older version's ``.sealed`` files, and maybe a file created just before the crash and
    still empty: each non-empty file is one piece, in txid order; the empty one goes."""
    old = StateDir(str(tmp_path / "s"))
    older, items = make_items(6, 2, first_txid=30), make_items(5, 3, first_txid=40)
    old.append(older)
    old.seal(close=True)
    sealed = os.path.join(old.spool_dir, f"{30:016x}.sealed")
    os.rename(os.path.join(old.spool_dir, f"{30:016x}.log"), sealed)  # as an older version named it
    old.append(items)  # the previous run died without sealing
    assert [p.path for p in old.sealed_files()] == [os.path.join(old.spool_dir, f"{30:016x}.log")]
    open(os.path.join(old.spool_dir, f"{99:016x}.log"), "wb").close()  # created, then the crash
    new = StateDir(str(tmp_path / "s"))
    p0, p1 = new.sealed_files()
    assert (p0.path, p1.path) == (sealed, os.path.join(new.spool_dir, f"{40:016x}.log"))
    assert same(read_piece(p0), older) and same(read_piece(p1), items)
    assert new.pending == p0.size + p1.size == new.pending_bytes()
    assert sorted(os.listdir(new.spool_dir)) == [f"{30:016x}.sealed", f"{40:016x}.log"]


@settings(max_examples=40, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), sizes=st.lists(st.integers(0, 4), min_size=1, max_size=4))
def test_spool_round_trip_property(seed, sizes):
    with tempfile.TemporaryDirectory() as d:
        state = StateDir(d)
        items = make_items(seed, sum(sizes), first_txid=seed % 1000 + 1)
        off = 0
        for n in sizes:
            state.append(items[off : off + n])
            off += n
        state.seal()
        files = state.sealed_files()
        if not items:
            assert files == []
            return
        assert len(files) == 1
        assert same(read_piece(files[0]), items)
        assert files[0].size == state.pending == state.pending_bytes()


# ----------------------------------------------------------------------------- torn tails


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), count=st.integers(1, 5), cut=st.floats(0, 1, exclude_max=True))
@example(seed=0, count=3, cut=0.999)
def test_truncated_tail_is_cut_at_the_last_whole_record(seed, count, cut):
    with tempfile.TemporaryDirectory() as d:
        state = StateDir(d)
        items = make_items(seed, count)
        path, ends = spool_one_by_one(state, items)
        length = int(cut * ends[-1])
        with open(path, "r+b") as f:
            f.truncate(length)
        whole = sum(1 for e in ends if e <= length)
        got = StateDir.read_file(path, PAGE)
        assert same(got, items[:whole])
        assert os.path.getsize(path) == (ends[whole - 1] if whole else 0)
        # Repaired: reading again changes nothing.
        assert same(StateDir.read_file(path, PAGE), items[:whole])
        assert os.path.getsize(path) == (ends[whole - 1] if whole else 0)


@pytest.mark.parametrize("missing", [1, 2, 3, 4, 7, 8, 9, 100])
def test_last_record_short_by_a_few_bytes(tmp_path, missing):
    state = StateDir(str(tmp_path))
    items = make_items(11, 4)
    path, ends = spool_one_by_one(state, items)
    with open(path, "r+b") as f:
        f.truncate(ends[-1] - missing)
    assert same(StateDir.read_file(path, PAGE), items[:3])
    assert os.path.getsize(path) == ends[2]


@settings(max_examples=80, deadline=None)
@given(seed=st.integers(min_value=0, max_value=2**32 - 1), junk=st.binary(min_size=1, max_size=600))
@example(seed=0, junk=b"\xff" * 8)
@example(seed=0, junk=b"\x05\x00\x00\x00\x00\x00\x00\x00abcde")
@example(seed=0, junk=b"\x00")
def test_junk_after_the_last_record_is_cut_off(seed, junk):
    with tempfile.TemporaryDirectory() as d:
        state = StateDir(d)
        items = make_items(seed, 3)
        path, ends = spool_one_by_one(state, items)
        with open(path, "ab") as f:
            f.write(junk)
        assert same(StateDir.read_file(path, PAGE), items)
        assert os.path.getsize(path) == ends[-1]


def test_flipped_byte_in_a_middle_record_drops_it_and_everything_after(tmp_path):
    state = StateDir(str(tmp_path))
    items = make_items(12, 5)
    path, ends = spool_one_by_one(state, items)
    raw = bytearray(Path(path).read_bytes())
    raw[ends[1] + 20] ^= 0x10  # inside the third record
    Path(path).write_bytes(raw)
    assert same(StateDir.read_file(path, PAGE), items[:2])
    assert os.path.getsize(path) == ends[1]


def test_read_without_repair_leaves_the_file_alone(tmp_path):
    state = StateDir(str(tmp_path))
    items = make_items(13, 3)
    path, ends = spool_one_by_one(state, items)
    with open(path, "ab") as f:
        f.write(b"torn!")
    assert same(StateDir.read_file(path, PAGE, repair=False), items)
    assert os.path.getsize(path) == ends[-1] + 5


def test_appending_after_a_repair_continues_cleanly(tmp_path):
    state = StateDir(str(tmp_path))
    items = make_items(14, 3, first_txid=1)
    path, ends = spool_one_by_one(state, items)
    with open(path, "r+b") as f:
        f.truncate(ends[-1] - 3)
    assert same(StateDir.read_file(path, PAGE), items[:2])
    more = make_items(15, 2, first_txid=3)  # the torn txid 3 is read again into a new file
    state.append(more)
    state.seal()
    state.remeasure()  # what replay does after its repairs
    first, second = state.sealed_files()
    assert (first.path, first.end) == (path, ends[1])
    assert same(read_piece(first), items[:2])
    assert same(read_piece(second), more)


@pytest.mark.parametrize("zeros", [8, 10, 4096])
def test_zero_filled_tail_is_cut_off(tmp_path, zeros):
    state = StateDir(str(tmp_path))
    items = make_items(16, 3)
    path, ends = spool_one_by_one(state, items)
    with open(path, "ab") as f:
        f.write(bytes(zeros))  # what a crash after the size grew but before the data landed leaves
    assert same(StateDir.read_file(path, PAGE), items)
    assert os.path.getsize(path) == ends[-1]


# ----------------------------------------------------------------------------- the uploaded point


def test_state_and_hashes_round_trip(tmp_path):
    state = StateDir(str(tmp_path / "st"))
    assert state.load_state() is None
    with pytest.raises(FileNotFoundError):
        state.load_hashes()
    hashes = PageHashes(PAGE)
    rng = random.Random(21)
    hashes.apply({p: rng.randbytes(PAGE) for p in range(1, 30)}, 30)
    pos = WalPosition(1, 2, 33, (4, 5), PAGE, False)
    doc = {"generation": "0000000000000001-abcdef01", "uploaded_txid": 77, "pos": pos.to_json(), "note": "ü"}
    state.save_state(doc, hashes)
    loaded_state = state.load_state()
    assert {k: v for k, v in loaded_state.items() if k != "hashes"} == doc
    # the hashes file is named after the point it belongs to, so state and hashes never disagree
    assert loaded_state["hashes"].startswith("hashes-")
    assert WalPosition.from_json(state.load_state()["pos"]) == pos
    loaded = state.load_hashes()
    assert loaded.page_size == PAGE
    assert loaded.checksum == hashes.checksum
    assert list(loaded.hashes) == list(hashes.hashes)
    # Overwrite with a newer point; no temporary files are left behind.
    hashes.apply({3: bytes(PAGE)}, 10)
    doc2 = dict(doc, uploaded_txid=78)
    state.save_state(doc2, hashes)
    assert {k: v for k, v in state.load_state().items() if k != "hashes"} == doc2
    assert state.load_hashes().checksum == hashes.checksum
    assert state.load_hashes().db_pages == 10
    assert sorted(os.listdir(state.path)) == [f"hashes-{78:016x}.bin", f"hashes-{78:016x}.log", "spool", "state.json"]
    # A fresh StateDir object reads the same.
    again = StateDir(state.path)
    assert again.load_state() == state.load_state()
    assert again.load_hashes().to_bytes() == hashes.to_bytes()


def test_reset_forgets_everything(tmp_path):
    state = StateDir(str(tmp_path))
    state.save_state({"txid": 1}, PageHashes(PAGE))
    state.append(make_items(30, 2))
    state.seal()
    state.reset()
    assert state.load_state() is None
    assert state.sealed_files() == []
    assert state.pending_bytes() == 0
    state.reset()  # idempotent


def test_atomic_write_replaces(tmp_path):
    target = tmp_path / "f.json"
    atomic_write(str(target), b"one")
    atomic_write(str(target), json.dumps({"a": 1}).encode())
    assert json.loads(target.read_bytes()) == {"a": 1}
    assert sorted(os.listdir(tmp_path)) == ["f.json"]


def test_renumber_moves_every_record_and_keeps_everything_else(tmp_path):
    """A generation begun without the replica moves past the replica's txids (startup.py)."""
    state = StateDir(str(tmp_path))
    first, second, third = make_items(31, 3, first_txid=1), make_items(32, 2, first_txid=4), make_items(33, 2, 6)
    state.append(first)
    state.seal(close=True)
    state.append(second)
    state.seal(close=True)
    state.append(third)  # still being appended to: sealed by renumber
    state.flush()
    # as spooled: one batch per append (its position, counter and net hashes go with its last one)
    want = [item for name in sorted(os.listdir(state.spool_dir))
            for item in StateDir.read_file(os.path.join(state.spool_dir, name), PAGE, repair=False)]
    state.renumber(100, PAGE)
    files = state.sealed_files()
    assert [os.path.basename(f.path) for f in files] == [f"{101:016x}.log", f"{104:016x}.log", f"{106:016x}.log"]
    got = [item for f in files for item in read_piece(f)]
    assert [i.record.txid for i in want] == [i.record.txid for i in first + second + third]
    assert [i.record.txid for i in got] == [i.record.txid + 100 for i in want]
    for a, b in zip(got, want):
        assert (a.record.pages, a.record.db_checksum, a.record.commit_ts_us, a.position, a.through_ts_us, a.change,
                a.changes) == (b.record.pages, b.record.db_checksum, b.record.commit_ts_us, b.position,
                               b.through_ts_us, b.change, b.changes)
    assert state.pending == state.pending_bytes() and not [n for n in os.listdir(state.spool_dir) if n.endswith(".tmp")]


def test_a_small_piece_keeps_its_records_in_memory_and_they_match_the_file(tmp_path, monkeypatch):
    """A piece up to MEMORY_PIECE_BYTES is uploaded from the bytes this process appended (no
    read back); they are exactly the file's records.  A bigger one, and every piece found at
    start, is read from the file."""
    from walrewind.engine.daemon import spool as spool_module

    state = StateDir(str(tmp_path / "s"))
    for n in range(3):
        state.append(make_items(80 + n, 1, first_txid=1 + n), sync=False)
    state.seal()
    small = state.sealed_files()[-1]
    assert small.memory is not None
    from_memory = [(r.batch, r.raw) for r in small.records()]
    from_file = [(r.batch, r.raw) for r in StateDir.iter_raw(small.path, start=small.start, end=small.end)]
    assert len(from_memory) == 3 and from_memory == from_file

    monkeypatch.setattr(spool_module, "MEMORY_PIECE_BYTES", 1)
    state.append(make_items(90, 2, first_txid=4), sync=False)
    state.seal()
    assert state.sealed_files()[-1].memory is None
    assert [p.memory for p in StateDir(str(tmp_path / "s2")).sealed_files()] == []
    state.unlock()
    again = StateDir(str(tmp_path / "s"))
    assert again.sealed_files() and all(p.memory is None for p in again.sealed_files())
